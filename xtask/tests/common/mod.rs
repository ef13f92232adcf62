//! What the integration tests share: running the real `xtask` binary and other programs,
//! requiring tools, and golden files. Each test file includes it with `mod common;` and uses a
//! part of it.
#![allow(dead_code)]

pub mod dockerd;
pub mod namespace_lab;
pub mod report_page;
pub mod smoke_cluster;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The pages of `docs/`, in the order of the README's contents list (the recipes run in it).
pub const DOC_PAGES: &[&str] = &[
    "docs/run-the-image.md",
    "docs/day-2.md",
    "docs/systemd-hosts.md",
    "docs/kubernetes.md",
    "docs/monitoring.md",
    "docs/least-privilege.md",
    "docs/artifacts.md",
    "docs/proving-ground.md",
    "docs/releases.md",
    "docs/commands.md",
];

/// One page of the docs (`README.md` or `docs/PAGE.md`), read from the repository.
pub fn doc(page: &str) -> String {
    fs::read_to_string(root().join(page)).unwrap_or_else(|e| panic!("cannot read {page}: {e}"))
}

/// The README and every page of `docs/`, in reading order, as one text: what the recipe tests
/// search, wherever a recipe lives.
pub fn docs_text() -> String {
    let mut all = doc("README.md");
    for page in DOC_PAGES {
        all.push('\n');
        all.push_str(&doc(page));
    }
    all
}

/// Runs a command to its end; panics only when it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails the test, saying how to install it, when `tool` is not on PATH.
pub fn require(tool: &str) {
    assert!(
        xtask::util::on_path(tool),
        "{tool} is not installed; `cargo xtask ci` installs it (ci/debian-packages.txt)"
    );
}

/// `xtask ARGS` from the workspace root, never contacting the official download locations, with a
/// fixed SOURCE_DATE_EPOCH.
pub fn xtask(args: &[&str]) -> Output {
    run(Command::new(XTASK)
        .args(args)
        .current_dir(root())
        .env("XTASK_NO_OFFICIAL", "1")
        .env("SOURCE_DATE_EPOCH", "1700000000"))
}

/// stdout and stderr together.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `xtask ARGS` that must succeed; returns all it printed.
pub fn xtask_ok(args: &[&str]) -> String {
    let out = xtask(args);
    assert!(out.status.success(), "xtask {args:?} failed:\n{}", text(&out));
    text(&out)
}

/// `xtask ARGS` that must fail; returns all it printed.
pub fn xtask_fails(args: &[&str]) -> String {
    let out = xtask(args);
    assert!(!out.status.success(), "xtask {args:?} should have failed:\n{}", text(&out));
    text(&out)
}

/// Where golden files live.
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `actual` with `xtask/tests/golden/<name>`, or rewrites it with UPDATE_GOLDEN=1
/// (`xtask::ci::UPDATE_GOLDEN_ENV`). Rewriting is a developer's act: on a CI machine (`CI` set,
/// as GitHub Actions sets it) UPDATE_GOLDEN fails the test, and `cargo xtask ci` refuses to run
/// under it, so that no stray variable turns the comparisons into rewrites that pass.
pub fn golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    let update = xtask::ci::UPDATE_GOLDEN_ENV;
    if std::env::var_os(update).is_some() {
        let ci = std::env::var("CI").unwrap_or_default();
        assert!(
            ci.is_empty() || ci == "false" || ci == "0",
            "{update} is set on a CI machine (CI={ci}): golden files are refreshed by a developer, who \
             reviews the diff; here they are compared. Unset {update}."
        );
        if fs::read_to_string(&path).ok().as_deref() != Some(actual) {
            eprintln!("{update}: rewrote {} (review the diff)", path.display());
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, actual).unwrap();
        }
        return;
    }
    let want = fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("golden file {} is missing: run {update}=1 cargo test", path.display()));
    assert_eq!(actual, want, "{name} differs from its golden file; if the change is intended: {update}=1 cargo test");
}

/// The commit of etcd's tag v3.4.9, and the Git SHA its binaries report.
pub const ETCD_349_COMMIT: &str = "54ba9589114fc3fa5cc36c313550b3c0c0938c91";
pub const ETCD_349_GITSHA: &str = "54ba95891";

/// Where the real etcd v3.4.9 source comes from: `$XTASK_TEST_ETCD_GIT` (`.ci/run` points it at
/// a shallow clone when the machine has one), else etcd's public repository.
pub fn etcd_git() -> String {
    std::env::var("XTASK_TEST_ETCD_GIT")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "https://github.com/etcd-io/etcd.git".to_string())
}

/// Builds the real etcd v3.4.9 with `cargo xtask build-etcd` for `arches` into
/// `target/etcd/3.4.9/<arch>/`, the layout `--source build` reads. Serialised across threads and
/// test processes by a lock file (build-etcd's work directories are shared); a build already
/// there is reused (build-etcd says "up to date"). One architecture per turn of the lock, so that
/// a test waiting for one architecture does not wait for another's build as well.
/// Returns what build-etcd printed.
pub fn build_etcd_349(arches: &[&str]) -> String {
    let target = root().join("target");
    fs::create_dir_all(&target).unwrap();
    let mut all = String::new();
    for arch in arches {
        let lock = fs::File::create(target.join(".build-etcd-349.lock")).unwrap();
        lock.lock().expect("lock target/.build-etcd-349.lock");
        let args = ["build-etcd", "--git", &etcd_git(), "--ref", "v3.4.9", "--arch", arch].map(String::from);
        let t = std::time::Instant::now();
        // Nine test binaries wait for this build under the lock while the rest of the suite runs
        // beside them: as root (CI), it runs ahead of them (nice -10).
        let mut cmd = Command::new(XTASK);
        if xtask::util::is_root() {
            cmd = Command::new("nice");
            cmd.args(["-n", "-10", XTASK]);
        }
        let out = run(cmd.args(&args).current_dir(root()).env_remove("GOFLAGS").env("GOPROXY", "off"));
        let text = text(&out);
        assert!(out.status.success(), "xtask {args:?} failed:\n{text}");
        eprintln!("build-etcd 3.4.9 {arch}: {:.1} s", t.elapsed().as_secs_f64());
        all.push_str(&text);
    }
    all
}

/// `target/etcd/3.4.9/<arch>/`, built by [`build_etcd_349`].
pub fn etcd_349_dir(arch: &str) -> PathBuf {
    root().join("target/etcd/3.4.9").join(arch)
}

/// This machine's architecture under etcd's name.
pub fn host_arch() -> &'static str {
    xtask::util::Arch::host().expect("an architecture etcd is built for").as_str()
}

/// Whether `cargo xtask ci --allow-omission NAME` allowed leaving the check NAME out
/// (`XTASK_ALLOW_OMISSIONS`, names separated by commas). NAME must be one of
/// `xtask::ci::OMISSIONS`.
pub fn omission_allowed(name: &str) -> bool {
    assert!(
        xtask::ci::OMISSIONS.iter().any(|(n, _)| *n == name),
        "unknown omission {name:?}: add it to xtask::ci::OMISSIONS (and so to `cargo xtask ci --help`)"
    );
    std::env::var(xtask::ci::ALLOW_OMISSIONS_ENV).unwrap_or_default().split([',', ' ']).any(|n| n == name)
}

/// A check that cannot run on this machine. Fails the test with `reason`, unless the omission
/// NAME was allowed (`cargo xtask ci --allow-omission NAME`); then the omission is printed and
/// appended to `target/ci-omissions.txt`, which `cargo xtask ci` lists at the end of its run, and
/// the caller leaves the check out.
pub fn omission(name: &str, reason: &str) {
    if !omission_allowed(name) {
        panic!(
            "{reason}\nThis check must run. If this machine really cannot run it, \
             `cargo xtask ci --allow-omission {name}` leaves it out and lists it at the end of the run."
        );
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let line = format!("{name}: {}::{test}: {}", env!("CARGO_CRATE_NAME"), reason.replace('\n', " / "));
    eprintln!("OMITTED (allowed by --allow-omission {name}) {line}");
    let path = xtask::ci::omissions_file();
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap();
    }
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot record the omission in {}: {e}", path.display()));
    std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()).unwrap();
}

/// The upstream version of Debian's etcd (`3.4.23` of `3.4.23-4+b4`), asked from apt, so that no
/// test depends on the version the distribution ships today.
pub fn debian_etcd_version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        let policy = ok(Command::new("apt-cache").args(["policy", "etcd-server"]));
        let candidate = policy
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate:"))
            .map(str::trim)
            .filter(|c| !c.is_empty() && *c != "(none)")
            .unwrap_or_else(|| panic!("apt knows no etcd-server (run apt-get update):\n{policy}"));
        let upstream = candidate.split_once(':').map_or(candidate, |(_, v)| v);
        upstream.split(['-', '+', '~']).next().unwrap_or(upstream).to_string()
    })
}

/// The bytes of the member `name` of the tar file `archive`, if it has one.
pub fn tar_member_opt(archive: &Path, name: &str) -> Option<Vec<u8>> {
    let mut a = tar::Archive::new(fs::File::open(archive).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == name {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            return Some(v);
        }
    }
    None
}

/// The bytes of the member `name` of the tar file `archive`.
pub fn tar_member(archive: &Path, name: &str) -> Vec<u8> {
    tar_member_opt(archive, name).unwrap_or_else(|| panic!("{name} is not in {}", archive.display()))
}

/// Every regular file under `dir`, by its path relative to `dir`.
pub fn files_under(dir: &Path) -> std::collections::BTreeMap<String, PathBuf> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot read {}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string(), p);
            }
        }
    }
    out
}

/// The mount points at or under `dir`, from this process's mount table. Only the mount point
/// (the fifth field) counts: another test's overlay whose lower layer is `dir` is not a mount of
/// `dir`'s, and tests run side by side.
pub fn mount_points_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m == dir || m.starts_with(&format!("{dir}/")))
        .map(str::to_string)
        .collect()
}

/// An apt configuration (for `APT_CONFIG`) that waits up to five minutes for dpkg's lock instead
/// of failing at once: the docs' recipes that `apt-get install` run side by side in the suite
/// (each installs what is already there, but apt takes the lock all the same). The one
/// adaptation those tests make to a recipe's environment; its text stays as written.
pub fn apt_config_waiting_for_the_lock(dir: &std::path::Path) -> PathBuf {
    let file = dir.join("apt-wait-for-lock.conf");
    fs::write(&file, "DPkg::Lock::Timeout \"300\";\n").unwrap();
    file
}

/// The PyPI tools of ci/pypi-packages.txt, installed once per test process.
pub fn pypi_tool(cmd: &str) -> (PathBuf, PathBuf) {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        xtask::ci::ensure_pypi_tools(&root().join("ci/pypi-packages.txt")).expect("the PyPI tools install")
    });
    let bin = xtask::ci::pypi_tool(cmd).unwrap_or_else(|| panic!("{cmd} is not in ci/pypi-packages.txt"));
    (bin, xtask::ci::pypi_dir())
}
