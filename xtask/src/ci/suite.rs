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
//! Before all of it, `host::preflight` prints the facts of this host the suite's proof depends on.

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

#[cfg(test)]
mod tests {
    use super::*;
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
