//! The suite's runner: every test binary that cargo builds, run side by side.
//! In: the workspace. Out: each binary's output in `target/ci-logs/<name>.log`, a line as each
//! one finishes, the whole log of every binary that failed, a table of wall and CPU times, and
//! the closing line `ci: N passed, M failed`.
//!
//! Why side by side: most of the suite waits (containers starting, a cluster electing, systemd
//! booting in nspawn, qemu), and one binary after another, as `cargo test` runs them, leaves the
//! cores idle. The tests use names, networks, ports and directories of their own, so binaries
//! share nothing but the host; what several need once (the real etcd 3.4.9 built from source)
//! is built once under a lock (`xtask/tests/common/mod.rs`).
//!
//! The binaries inherit `cargo xtask ci`'s environment, so a variable under which a check would
//! pass without checking ([`REFUSED_ENV`], e.g. `UPDATE_GOLDEN`) stops the run before anything.
//!
//! Before all of it, [`preflight`] prints the facts of this host the suite's proof depends on
//! (OS, architecture, cgroup layout, dockerd) and a WARNING naming each way the host differs from
//! [`PROVEN_HOST`], the only host the suite has passed on. It warns and never fails the run.
//!
//! Longer than 600 lines: the host preflight (the section `the host the suite is proven on`) was
//! added here while ARCHITECTURE.md's code map could not change; it belongs in a `ci/host.rs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One test executable cargo built: the library's unit tests, the binary's, or one file of
/// `xtask/tests/`.
#[derive(Debug, Clone)]
pub struct TestBinary {
    /// `xtask-lib`, `xtask-bin`, or the integration test's name (`smoke`).
    pub name: String,
    pub path: PathBuf,
}

/// Builds every test target of the workspace (`cargo test --no-run`) and returns the
/// executables. Cargo's progress and diagnostics go to stderr as usual.
pub fn build(cargo: &str, root: &Path) -> Result<Vec<TestBinary>> {
    // Not with the variables `cargo xtask` itself was started with: the build would differ from
    // the user's `cargo xtask` (a rebuild of ring and all above it, and again at the README
    // recipes' first `cargo xtask`).
    let out = crate::util::as_from_a_shell(&mut Command::new(cargo))
        .args(["test", "--workspace", "--no-run", "--message-format=json-render-diagnostics"])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {cargo} test --no-run"))?;
    if !out.status.success() {
        bail!("the tests do not compile (see above)");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bins = test_binaries(&stdout)?;
    if bins.is_empty() {
        bail!("cargo built no test binary: nothing would be tested");
    }
    Ok(bins)
}

/// The test executables among cargo's JSON messages (one a line).
pub fn test_binaries(messages: &str) -> Result<Vec<TestBinary>> {
    let mut bins = Vec::new();
    for line in messages.lines().filter(|l| l.starts_with('{')) {
        let msg: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("cargo printed a message that is not JSON: {line}"))?;
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let Some(path) = msg["executable"].as_str() else { continue };
        let target = msg["target"]["name"].as_str().unwrap_or("?");
        let kind = msg["target"]["kind"][0].as_str().unwrap_or("?");
        let name = match kind {
            "lib" | "bin" => format!("{target}-{kind}"),
            _ => target.to_string(),
        };
        bins.push(TestBinary { name, path: PathBuf::from(path) });
    }
    Ok(bins)
}

/// How one binary ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub seconds: f64,
    /// Exited 0 (and was not stopped for running too long).
    pub success: bool,
    /// Stopped after the time-out.
    pub timed_out: bool,
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// CPU seconds (user + system) of the binary and the processes it waited for (tools it ran;
    /// not containers, whose processes belong to podman's conmon).
    pub cpu_seconds: f64,
    pub log: PathBuf,
}

/// Reaps `child` if it has ended: its exit status and the CPU seconds it and its waited-for
/// descendants used. `None` while it runs.
fn reap(child: &Child) -> Result<Option<(std::process::ExitStatus, f64)>> {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 only writes into both out-parameters.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not reaped yet (reap is called until it returns Some).
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
    match r {
        0 => Ok(None),
        r if r == pid => {
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            Ok(Some((std::process::ExitStatus::from_raw(status), secs(usage.ru_utime) + secs(usage.ru_stime))))
        }
        _ => Err(std::io::Error::last_os_error()).context("wait4"),
    }
}

/// Sums libtest's `test result:` lines in `log`: (passed, failed, ignored).
pub fn count_results(log: &str) -> (u64, u64, u64) {
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    for line in log.lines().filter_map(|l| l.trim().strip_prefix("test result: ")) {
        for part in line.split(['.', ';']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next()) {
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    "ignored" => ignored += n,
                    _ => {}
                }
            }
        }
    }
    (passed, failed, ignored)
}

/// The variables `cargo xtask ci` refuses to run under, with what each would do to the tests
/// (which inherit its environment): each would let a check pass without checking what it names.
pub const REFUSED_ENV: &[(&str, &str)] = &[
    (
        super::UPDATE_GOLDEN_ENV,
        "every golden-file comparison would rewrite its file and pass, so they would check nothing. \
         To refresh the golden files: `UPDATE_GOLDEN=1 cargo test -p xtask --test render --test portable`, \
         review `git diff xtask/tests/golden`, then run `cargo xtask ci` without it",
    ),
    ("XTASK_DEFINITION", "the tests would check that definition rather than images/etcd.toml"),
    (
        "XTASK_ETCD_MIRRORS",
        "every fetch of the tests would also try those mirrors, off loopback: a download a test breaks on \
         purpose could be served from there",
    ),
];

/// An error naming every variable of [`REFUSED_ENV`] that `get` finds set, and why it is refused.
pub fn refuse_environment(get: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<()> {
    let set: Vec<&(&str, &str)> = REFUSED_ENV.iter().filter(|(name, _)| get(name).is_some()).collect();
    if !set.is_empty() {
        let why: Vec<String> = set.iter().map(|(name, why)| format!("  {name} is set: {why}\n")).collect();
        let unset: String = set.iter().map(|(name, _)| format!("-u {name} ")).collect();
        bail!(
            "cargo xtask ci will not run: the tests inherit its environment, and\n{}Run `env {unset}cargo xtask ci`.",
            why.concat()
        );
    }
    Ok(())
}

/// What every binary of a run gets.
pub struct RunSpec<'a> {
    /// Arguments for every binary (a test name filter, libtest flags).
    pub args: &'a [String],
    pub envs: &'a [(String, String)],
    /// The working directory cargo would give them: the package's directory.
    pub cwd: &'a Path,
    pub logs: &'a Path,
    /// A binary still running after this is stopped and counts as failed.
    pub timeout: Duration,
    /// How often the binaries still running are listed.
    pub heartbeat: Duration,
}

struct Running {
    name: String,
    child: Child,
    started: Instant,
    log: PathBuf,
}

/// Starts `cmd` with stdout and stderr both going to the new file `log`, and no stdin.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child> {
    let file = fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = file.try_clone().with_context(|| format!("cannot reopen {}", log.display()))?;
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null()).stdout(file).stderr(err).spawn().with_context(|| format!("cannot start {program}"))
}

/// Prints the whole of `log` between two rules that name `what`.
pub fn print_log(what: &str, log: &Path) {
    let text = fs::read_to_string(log).unwrap_or_else(|e| format!("(cannot read {}: {e})", log.display()));
    eprintln!("\n======== {what}: its output ({}) ========", log.display());
    eprintln!("{text}");
    eprintln!("======== end of {what} ========");
}

/// Starts every binary at once and waits for all of them (each at most `spec.timeout`).
pub fn run_all(bins: &[TestBinary], spec: &RunSpec<'_>) -> Result<Vec<Outcome>> {
    fs::create_dir_all(spec.logs).with_context(|| format!("cannot create {}", spec.logs.display()))?;
    let mut running = Vec::new();
    for bin in bins {
        let log = spec.logs.join(format!("{}.log", bin.name));
        let child = spawn_logged(
            Command::new(&bin.path)
                // What passing tests printed stays in the log too (timings, what was built).
                .arg("--show-output")
                .args(spec.args)
                .envs(spec.envs.iter().map(|(k, v)| (k, v)))
                .current_dir(spec.cwd),
            &log,
        )?;
        running.push(Running { name: bin.name.clone(), child, started: Instant::now(), log });
    }
    eprintln!(
        "ci: running {} test binaries side by side (logs in {}): {}",
        running.len(),
        spec.logs.display(),
        running.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    let mut done = Vec::new();
    let mut last_beat = Instant::now();
    while !running.is_empty() {
        let mut i = 0;
        while i < running.len() {
            let r = &mut running[i];
            let timed_out = r.started.elapsed() > spec.timeout;
            if timed_out {
                // Its own cleanup does not run; say so, with the log.
                let _ = r.child.kill();
            }
            let mut ended = reap(&r.child).with_context(|| format!("cannot wait for the test binary {}", r.name))?;
            while timed_out && ended.is_none() {
                std::thread::sleep(Duration::from_millis(50));
                ended = reap(&r.child).with_context(|| format!("cannot wait for {}", r.name))?;
            }
            let Some((status, cpu_seconds)) = ended else {
                i += 1;
                continue;
            };
            let r = running.remove(i);
            let text = fs::read_to_string(&r.log).unwrap_or_default();
            let (passed, failed, ignored) = count_results(&text);
            let outcome = Outcome {
                name: r.name,
                seconds: r.started.elapsed().as_secs_f64(),
                success: status.success() && !timed_out,
                timed_out,
                passed,
                failed,
                ignored,
                cpu_seconds,
                log: r.log,
            };
            eprintln!(
                "ci: {} {} in {:.0} s: {} passed, {} failed{}",
                if outcome.success { "PASS" } else { "FAIL" },
                outcome.name,
                outcome.seconds,
                outcome.passed,
                outcome.failed,
                if timed_out {
                    format!(" (stopped after {} s)", spec.timeout.as_secs())
                } else if !status.success() && failed == 0 {
                    format!(" (exited with {status})")
                } else {
                    String::new()
                }
            );
            done.push(outcome);
        }
        if !running.is_empty() && last_beat.elapsed() >= spec.heartbeat {
            last_beat = Instant::now();
            let list: Vec<String> =
                running.iter().map(|r| format!("{} ({:.0} s)", r.name, r.started.elapsed().as_secs_f64())).collect();
            eprintln!("ci: still running: {}", list.join(", "));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(done)
}

/// Prints the whole log of every binary that failed, then the wall and CPU times, longest first.
pub fn report(outcomes: &[Outcome]) {
    for o in outcomes.iter().filter(|o| !o.success) {
        print_log(&format!("{} FAILED", o.name), &o.log);
    }
    let mut by_time: Vec<&Outcome> = outcomes.iter().collect();
    by_time.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    eprintln!("\nci: test binaries by wall time (they ran side by side), with the CPU time each used:");
    for o in by_time {
        eprintln!(
            "ci:   {:>6.1} s  {:>6.1} s CPU  {:<12} {:>4} passed {:>3} failed {:>3} ignored  {}",
            o.seconds,
            o.cpu_seconds,
            o.name,
            o.passed,
            o.failed,
            o.ignored,
            if o.success { "ok" } else { "FAILED" }
        );
    }
}

// ---------------------------------------------------------------------------------------------
// the host the suite is proven on

/// The host the suite has run on and passed, and so the only one its proof covers (README,
/// "Which hosts the suite is proven on"): Debian 12 (bookworm), amd64, hybrid cgroups (v1
/// controllers and a unified hierarchy), Debian's docker.io 20.10 as the dockerd on PATH.
/// [`preflight`] compares this host with it at the start of `cargo xtask ci`, and names every
/// difference with what is known to break there.
pub const PROVEN_HOST: ProvenHost = ProvenHost {
    os_id: "debian",
    os_version_id: "12",
    arch: "amd64",
    cgroups: CgroupLayout::Hybrid,
    docker_release: "20.10",
    docker_build: "+dfsg",
};

/// The facts of a host the suite's proof depends on, as [`PROVEN_HOST`] holds them.
#[derive(Debug, Clone, Copy)]
pub struct ProvenHost {
    /// `ID` and `VERSION_ID` of `/etc/os-release`.
    pub os_id: &'static str,
    pub os_version_id: &'static str,
    /// Debian's name of the architecture.
    pub arch: &'static str,
    pub cgroups: CgroupLayout,
    /// The Docker release of every dockerd on PATH (`dockerd --version`)...
    pub docker_release: &'static str,
    /// ...and the mark of Debian's build in its version (`20.10.24+dfsg1`).
    pub docker_build: &'static str,
}

/// The same facts of this host ([`host_facts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    /// `ID` and `VERSION_ID` of `/etc/os-release`, empty when absent.
    pub os_id: String,
    pub os_version_id: String,
    pub arch: String,
    pub cgroups: CgroupLayout,
    /// Every dockerd on PATH (the first is the one the docker test uses), with the version its
    /// `--version` says.
    pub dockerds: Vec<(String, Option<String>)>,
}

/// The layout of the host's cgroups, as `/proc/self/mountinfo` shows `/sys/fs/cgroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupLayout {
    /// v1 hierarchies only: a tmpfs of them, no unified one.
    V1,
    /// v1 controllers in a tmpfs, and the unified (v2) hierarchy at `/sys/fs/cgroup/unified`.
    Hybrid,
    /// The unified hierarchy alone, mounted at `/sys/fs/cgroup` (cgroup2fs).
    V2,
    /// Nothing mounted at `/sys/fs/cgroup`.
    Unmounted,
}

impl CgroupLayout {
    fn name(self) -> &'static str {
        match self {
            CgroupLayout::V1 => "v1",
            CgroupLayout::Hybrid => "hybrid",
            CgroupLayout::V2 => "v2",
            CgroupLayout::Unmounted => "none",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            CgroupLayout::V1 => "v1 (v1 hierarchies only)",
            CgroupLayout::Hybrid => "hybrid (v1 controllers, the unified hierarchy at /sys/fs/cgroup/unified)",
            CgroupLayout::V2 => "v2 (the unified hierarchy only, at /sys/fs/cgroup)",
            CgroupLayout::Unmounted => "none (nothing mounted at /sys/fs/cgroup)",
        }
    }
}

/// `ID` and `VERSION_ID` of an os-release file's text, unquoted (empty when absent).
pub fn os_release(text: &str) -> (String, String) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
            .unwrap_or_default()
    };
    (field("ID"), field("VERSION_ID"))
}

/// Debian's name of a Rust architecture name (`std::env::consts::ARCH`).
pub fn debian_arch(rust_arch: &str) -> String {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64el",
        other => other,
    }
    .to_string()
}

/// The cgroup layout a `/proc/self/mountinfo` text shows: `/sys/fs/cgroup` a cgroup2 mount is
/// v2; a tmpfs there with a cgroup2 mount at `/sys/fs/cgroup/unified` is hybrid; any other
/// mount there is v1. The last mount at a point is the one seen.
pub fn cgroup_layout(mountinfo: &str) -> CgroupLayout {
    let fstype_at = |point: &str| {
        mountinfo.lines().rev().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (pre.split_whitespace().nth(4)? == point).then(|| post.split_whitespace().next())?
        })
    };
    match (fstype_at("/sys/fs/cgroup"), fstype_at("/sys/fs/cgroup/unified")) {
        (None, _) => CgroupLayout::Unmounted,
        (Some("cgroup2"), _) => CgroupLayout::V2,
        (Some(_), Some("cgroup2")) => CgroupLayout::Hybrid,
        (Some(_), _) => CgroupLayout::V1,
    }
}

/// The version in `dockerd --version`'s output (`Docker version 20.10.24+dfsg1, build 5d6db84`).
pub fn docker_version(output: &str) -> Option<String> {
    let v = output.trim().strip_prefix("Docker version ")?.split(',').next()?.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// Each way `host` differs from `proven`, with what is known to break there; empty on the
/// proven host. No dockerd on PATH is no difference: the install step brings docker.io.
pub fn differences(host: &HostFacts, proven: &ProvenHost) -> Vec<String> {
    let mut out = Vec::new();
    let (id, version) = (host.os_id.as_str(), host.os_version_id.as_str());
    if (id, version) != (proven.os_id, proven.os_version_id) {
        let mut why = format!(
            "OS {id} {version}, not {} {}: ci/debian-packages.txt names Debian 12's packages, and another release's \
             names and versions differ (the docker test needs Debian 12's docker.io 20.10)",
            proven.os_id, proven.os_version_id
        );
        if id != "debian" {
            why += "; the nspawn tests build a Debian root with mmdebstrap from the host's first apt mirror, no \
                    Debian one here (set XTASK_DEBIAN_MIRROR to one, with debian-archive-keyring installed)";
        }
        out.push(why);
    }
    if host.arch != proven.arch {
        out.push(format!(
            "architecture {}, not {}: the suite has never run on it, so what breaks there is not known (the arm64 \
             image is proven only under qemu on amd64)",
            host.arch, proven.arch
        ));
    }
    if host.cgroups != proven.cgroups {
        let why = match host.cgroups {
            CgroupLayout::V2 => {
                "podman runs without --runtime runc (xtask/src/image/podman.rs), systemd-nspawn machines get \
                 cgroups in the unified hierarchy only, dockerd runs on cgroup v2: the suite has run none of this"
            }
            CgroupLayout::V1 => "systemd-nspawn machines get cgroups in systemd's v1 hierarchy only: never run",
            CgroupLayout::Hybrid => "the suite has never run on it",
            CgroupLayout::Unmounted => "podman, docker and systemd-nspawn cannot start containers or machines here",
        };
        out.push(format!("cgroups {}, not {}: {why}", host.cgroups.name(), proven.cgroups.name()));
    }
    let release = proven.docker_release;
    for (i, (path, version)) in host.dockerds.iter().enumerate() {
        // The docker test uses the first dockerd on PATH.
        let used = if i == 0 { "the docker test uses it (the first on PATH)" } else { "it is not the first on PATH" };
        match version {
            None => out.push(format!(
                "dockerd {path} does not say its version (`--version`); {used}, and needs Docker {release}"
            )),
            Some(v) if !v.starts_with(&format!("{release}.")) => out.push(format!(
                "dockerd {path} is Docker {v}, not {release}; {used}, and fails on any Docker but {release} (Docker 25 \
                 and later read index.json and would load an archive without manifest.json); apt's docker.io, \
                 installed beside it, conflicts with the packages that brought it"
            )),
            Some(v) if !v.contains(proven.docker_build) => out.push(format!(
                "dockerd {path} is Docker {v}, a {release} but not Debian's build; {used}: it accepts any {release}, \
                 but the suite has never run with this one"
            )),
            Some(_) => {}
        }
    }
    out
}

/// What [`preflight`] prints: a line for each fact of `host`, then, when it differs from
/// `proven`, a WARNING block naming each difference.
pub fn preflight_text(host: &HostFacts, proven: &ProvenHost) -> String {
    let or_unknown = |s: &str| if s.is_empty() { "unknown".to_string() } else { s.to_string() };
    let mut lines = vec![
        format!("OS {} {} (/etc/os-release ID, VERSION_ID)", or_unknown(&host.os_id), or_unknown(&host.os_version_id)),
        format!("architecture {}", host.arch),
        format!("cgroups {}", host.cgroups.describe()),
    ];
    if host.dockerds.is_empty() {
        lines.push("dockerd: none on PATH".to_string());
    }
    for (path, version) in &host.dockerds {
        lines.push(format!("dockerd {path}: Docker {}", version.as_deref().unwrap_or("of no version it says")));
    }
    let mut text: String = lines.iter().map(|l| format!("ci: host: {l}\n")).collect();
    let proven_set = format!(
        "{} {}, {}, {} cgroups, Debian's docker.io {}",
        proven.os_id,
        proven.os_version_id,
        proven.arch,
        proven.cgroups.name(),
        proven.docker_release
    );
    let diffs = differences(host, proven);
    if diffs.is_empty() {
        return text + &format!("ci: host: the host the suite is proven on ({proven_set})\n");
    }
    let rule = format!("ci: {}\n", "=".repeat(96));
    text += &rule;
    text += &format!(
        "ci: WARNING: the suite is proven only on {proven_set} (README, \"Which hosts the suite is proven on\").\n\
         ci: WARNING: this host differs in {} way(s), each known to break or never run:\n",
        diffs.len()
    );
    for d in diffs {
        text += &format!("ci: WARNING:  - {d}\n");
    }
    text += "ci: WARNING: a failure below may be this host's, not the code's. The run goes on.\n";
    text + &rule
}

/// This host's facts: `/etc/os-release`, the architecture `cargo xtask` was built for (natively,
/// by cargo), `/proc/self/mountinfo`, and every dockerd on PATH (`--version`).
pub fn host_facts() -> HostFacts {
    let os = fs::read_to_string("/etc/os-release").or_else(|_| fs::read_to_string("/usr/lib/os-release"));
    let (os_id, os_version_id) = os_release(&os.unwrap_or_default());
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let (mut seen, mut dockerds) = (Vec::new(), Vec::new());
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dockerd in std::env::split_paths(&path).map(|dir| dir.join("dockerd")) {
        // /sbin and /usr/sbin are one directory on a merged-/usr system: each program once.
        let Ok(real) = fs::canonicalize(&dockerd) else { continue };
        if !real.is_file() || seen.contains(&real) {
            continue;
        }
        seen.push(real);
        let out = Command::new(&dockerd).arg("--version").output();
        let version = out.ok().and_then(|o| docker_version(&String::from_utf8_lossy(&o.stdout)));
        dockerds.push((dockerd.display().to_string(), version));
    }
    HostFacts {
        os_id,
        os_version_id,
        arch: debian_arch(std::env::consts::ARCH),
        cgroups: cgroup_layout(&mountinfo),
        dockerds,
    }
}

/// Prints this host's facts the suite's proof depends on, one line each, and a WARNING block
/// naming each way it differs from [`PROVEN_HOST`]. It never fails the run: a check that cannot
/// run here fails by itself, with its reason.
pub fn preflight() {
    eprint!("{}", preflight_text(&host_facts(), &PROVEN_HOST));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This host's facts as the proven host gives them.
    fn proven() -> HostFacts {
        HostFacts {
            os_id: "debian".into(),
            os_version_id: "12".into(),
            arch: "amd64".into(),
            cgroups: CgroupLayout::Hybrid,
            dockerds: vec![("/usr/sbin/dockerd".into(), Some("20.10.24+dfsg1".into()))],
        }
    }

    #[test]
    fn os_release_gives_id_and_version_id_unquoted() {
        let debian =
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nID=debian\n";
        assert_eq!(os_release(debian), ("debian".into(), "12".into()));
        let ubuntu = "ID_LIKE=debian\nVERSION_ID=\"24.04\"\nID=ubuntu\n";
        assert_eq!(os_release(ubuntu), ("ubuntu".into(), "24.04".into()));
        assert_eq!(os_release("ID=debian\n"), ("debian".into(), String::new()), "Debian testing has no VERSION_ID");
        assert_eq!(debian_arch("x86_64"), "amd64");
        assert_eq!(debian_arch("aarch64"), "arm64");
    }

    #[test]
    fn cgroup_layouts_are_told_apart_by_their_mounts() {
        let tmpfs = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n";
        let v1 = format!("{tmpfs}32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n");
        let hybrid = format!("{v1}41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n");
        let v2 = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup_layout(&hybrid), CgroupLayout::Hybrid);
        assert_eq!(cgroup_layout(&v1), CgroupLayout::V1);
        assert_eq!(cgroup_layout(v2), CgroupLayout::V2);
        assert_eq!(cgroup_layout(&format!("{tmpfs}{v2}")), CgroupLayout::V2, "the last mount at a point is seen");
        assert_eq!(cgroup_layout("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"), CgroupLayout::Unmounted);
    }

    #[test]
    fn docker_versions_are_read_from_dockerd_version() {
        assert_eq!(docker_version("Docker version 20.10.24+dfsg1, build 5d6db84\n").as_deref(), Some("20.10.24+dfsg1"));
        assert_eq!(docker_version("Docker version 28.0.4, build 6430e49").as_deref(), Some("28.0.4"));
        assert_eq!(docker_version("dockerd: unknown flag"), None);
    }

    /// The proven host has no difference; each kind of difference is named with what breaks.
    #[test]
    fn each_difference_from_the_proven_host_is_named_with_what_breaks() {
        assert_eq!(differences(&proven(), &PROVEN_HOST), Vec::<String>::new());
        let differ = |change: &dyn Fn(&mut HostFacts)| {
            let mut host = proven();
            change(&mut host);
            differences(&host, &PROVEN_HOST)
        };
        let one = |change: &dyn Fn(&mut HostFacts), want: &[&str]| {
            let diffs = differ(change);
            assert_eq!(diffs.len(), 1, "one difference naming {want:?} expected: {diffs:#?}");
            for w in want {
                assert!(diffs[0].contains(w), "{w:?} missing: {}", diffs[0]);
            }
        };
        let ubuntu = |h: &mut HostFacts| (h.os_id, h.os_version_id) = ("ubuntu".into(), "24.04".into());
        one(
            &ubuntu,
            &["OS ubuntu 24.04, not debian 12", "ci/debian-packages.txt", "mmdebstrap", "XTASK_DEBIAN_MIRROR"],
        );
        let trixie = |h: &mut HostFacts| h.os_version_id = "13".into();
        one(&trixie, &["OS debian 13, not debian 12", "names and versions differ"]);
        assert!(!differ(&trixie)[0].contains("XTASK_DEBIAN_MIRROR"), "a Debian host's first mirror is Debian's");
        one(&|h| h.arch = "arm64".into(), &["architecture arm64, not amd64: the suite has never run on it"]);
        one(&|h| h.cgroups = CgroupLayout::V2, &["cgroups v2, not hybrid", "--runtime runc", "unified hierarchy only"]);
        one(&|h| h.cgroups = CgroupLayout::V1, &["cgroups v1, not hybrid", "never run"]);
        one(&|h| h.cgroups = CgroupLayout::Unmounted, &["cgroups none, not hybrid", "cannot start"]);
        let docker = |v: Option<&'static str>| move |h: &mut HostFacts| h.dockerds[0].1 = v.map(str::to_string);
        let first = "the docker test uses it (the first on PATH)";
        let new = ["dockerd /usr/sbin/dockerd is Docker 28.0.4, not 20.10", first, "fails on any Docker but 20.10"];
        one(&docker(Some("28.0.4")), &[new.as_slice(), &["docker.io, installed beside it, conflicts"]].concat());
        one(&docker(None), &["/usr/sbin/dockerd does not say its version", first, "needs Docker 20.10"]);
        one(&docker(Some("20.10.24")), &["a 20.10 but not Debian's build", first, "never run with this one"]);
        let second = |h: &mut HostFacts| h.dockerds.push(("/usr/local/bin/dockerd".into(), Some("28.0.4".into())));
        one(&second, &["/usr/local/bin/dockerd is Docker 28.0.4, not 20.10; it is not the first on PATH"]);
        assert!(differ(&|h| h.dockerds.clear()).is_empty(), "no dockerd yet: the install step brings docker.io");
    }

    #[test]
    fn the_preflight_prints_each_fact_and_warns_loudly_off_the_proven_host() {
        let fine = preflight_text(&proven(), &PROVEN_HOST);
        assert!(!fine.contains("WARNING"), "{fine}");
        for line in [
            "ci: host: OS debian 12 (/etc/os-release ID, VERSION_ID)\n",
            "ci: host: architecture amd64\n",
            "ci: host: cgroups hybrid (v1 controllers, the unified hierarchy at /sys/fs/cgroup/unified)\n",
            "ci: host: dockerd /usr/sbin/dockerd: Docker 20.10.24+dfsg1\n",
            "ci: host: the host the suite is proven on (debian 12, amd64, hybrid cgroups, Debian's docker.io 20.10)\n",
        ] {
            assert!(fine.contains(line), "{line:?} missing:\n{fine}");
        }
        // GitHub's arm64 Ubuntu runner, as the issue lists it.
        let runner = HostFacts {
            os_id: "ubuntu".into(),
            os_version_id: "24.04".into(),
            arch: "arm64".into(),
            cgroups: CgroupLayout::V2,
            dockerds: vec![("/usr/bin/dockerd".into(), Some("28.0.4".into()))],
        };
        let warned = preflight_text(&runner, &PROVEN_HOST);
        assert!(
            warned.contains(
                "ci: WARNING: the suite is proven only on debian 12, amd64, hybrid cgroups, Debian's docker.io 20.10 \
                 (README, \"Which hosts the suite is proven on\").\nci: WARNING: this host differs in 4 way(s)"
            ),
            "{warned}"
        );
        for d in differences(&runner, &PROVEN_HOST) {
            assert!(warned.contains(&format!("ci: WARNING:  - {d}\n")), "{d} missing:\n{warned}");
        }
        assert!(warned.contains("The run goes on."), "{warned}");
    }

    #[test]
    fn results_are_summed_over_every_binary_line() {
        let log = "running 3 tests\ntest a ... ok\n\
                   test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
                   test result: FAILED. 10 passed; 3 failed; 0 ignored; 0 measured; 2 filtered out; finished in 1.2s\n";
        assert_eq!(count_results(log), (12, 3, 1));
        assert_eq!(count_results("thread 'main' panicked"), (0, 0, 0));
    }

    #[test]
    fn test_executables_are_named_by_target_and_kind() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"name":"xtask","kind":["lib"]},"profile":{"test":true},"executable":"/t/deps/xtask-1"}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"xtask","kind":["lib"]},"profile":{"test":false},"executable":null}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"xtask","kind":["bin"]},"profile":{"test":false},"executable":"/t/xtask"}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"smoke","kind":["test"]},"profile":{"test":true},"executable":"/t/deps/smoke-2"}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        let bins = test_binaries(&messages).unwrap();
        let names: Vec<(&str, &str)> = bins.iter().map(|b| (b.name.as_str(), b.path.to_str().unwrap())).collect();
        assert_eq!(names, [("xtask-lib", "/t/deps/xtask-1"), ("smoke", "/t/deps/smoke-2")]);
        assert!(test_binaries("{not json").is_err());
    }

    #[test]
    fn binaries_run_side_by_side_and_a_slow_one_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            // Made executable by `install`, a process of its own: no write handle of ours can
            // leak into a child forked meanwhile and make exec fail with ETXTBSY.
            let (src, p) = (dir.path().join(format!("{name}.sh")), dir.path().join(name));
            fs::write(&src, format!("#!/bin/sh\n{body}\n")).unwrap();
            assert!(Command::new("install").args(["-m", "755"]).arg(&src).arg(&p).status().unwrap().success());
            TestBinary { name: name.into(), path: p }
        };
        let bins = [
            script("a", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; echo 'test result: ok. 2 passed; 0 failed; 0 ignored;'"),
            script("b", "sleep 1; echo \"$GREETING from $(pwd)\"; echo 'test result: FAILED. 1 passed; 1 failed; 0 ignored;'; exit 101"),
            script("slow", "sleep 30"),
        ];
        let logs = dir.path().join("logs");
        let spec = RunSpec {
            args: &[],
            envs: &[("GREETING".into(), "hello".into())],
            cwd: dir.path(),
            logs: &logs,
            timeout: Duration::from_secs(3),
            heartbeat: Duration::from_secs(1),
        };
        let t = Instant::now();
        let mut out = run_all(&bins, &spec).unwrap();
        // Side by side: two short binaries and a 3 s time-out take about 3 s, not 5.
        assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
        out.sort_by(|x, y| x.name.cmp(&y.name));
        let summary: Vec<(&str, bool, bool, u64, u64)> =
            out.iter().map(|o| (o.name.as_str(), o.success, o.timed_out, o.passed, o.failed)).collect();
        assert_eq!(summary, [("a", true, false, 2, 0), ("b", false, false, 1, 1), ("slow", false, true, 0, 0)]);
        // a counted in the shell: its CPU time is measured; the others slept.
        assert!(out[0].cpu_seconds > 0.02, "{:?}", out[0]);
        assert!(out[1..].iter().all(|o| o.cpu_seconds < 0.5), "{out:?}");
        let b_log = fs::read_to_string(logs.join("b.log")).unwrap();
        assert!(b_log.contains(&format!("hello from {}", dir.path().display())), "{b_log}");
    }

    /// A variable that would let the tests pass without checking stops `cargo xtask ci`, named
    /// with its reason; none set, it runs.
    #[test]
    fn ci_refuses_variables_that_would_make_checks_pass_unchecked() {
        refuse_environment(|_| None).unwrap();
        let err = format!(
            "{:#}",
            refuse_environment(|n| (n == "UPDATE_GOLDEN").then(|| "1".into()))
                .expect_err("UPDATE_GOLDEN=1 must stop cargo xtask ci")
        );
        assert!(err.contains("UPDATE_GOLDEN is set: every golden-file comparison would rewrite"), "{err}");
        assert!(err.contains("`env -u UPDATE_GOLDEN cargo xtask ci`") && !err.contains("XTASK_DEFINITION"), "{err}");
        for (name, _) in REFUSED_ENV {
            let err = refuse_environment(|n| (n == *name).then(|| "".into()))
                .expect_err(&format!("{name}, set even empty, must stop cargo xtask ci"))
                .to_string();
            assert!(err.contains(&format!("{name} is set")), "{err}");
        }
    }
}
