//! podman, adapted to the host. In: the host's cgroup layout and resource limits. Out: the
//! extra `podman run` arguments that make containers start here, each adaptation logged.
//!
//! - On a cgroup v1 or hybrid host crun fails ("cgroups in hybrid mode not supported"):
//!   use `--runtime runc` when runc is installed.
//! - podman asks for rlimits above the host's hard limits and fails with EPERM: pass
//!   `--ulimit nofile=N:N --ulimit nproc=N:N` with N the hard limit, so a container never
//!   asks for more than the host allows. For nproc, podman also lowers its own hard limit to
//!   `kernel.pid_max` when that is smaller (measured: hard 96364, pid_max 32768 -> anything
//!   above 32768 fails), so N is the smaller of the two.
//!
//! Also: loading an oci-archive (`podman load`), used by `cargo xtask image --load`.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::util::on_path;

/// podman's own defaults for a rootful container; the host's hard limit is used when lower.
const PODMAN_NOFILE: u64 = 1_048_576;
const PODMAN_NPROC: u64 = 4_194_304;

/// Whether podman is installed.
pub fn available() -> bool {
    on_path("podman")
}

/// The hard limit `name` (a row of `/proc/self/limits`, e.g. "Max open files"); `None` = unlimited.
fn hard_limit(limits: &str, name: &str) -> Result<Option<u64>> {
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .with_context(|| format!("/proc/self/limits has no {name:?} row"))?;
    let fields: Vec<&str> = line[name.len()..].split_whitespace().collect();
    match fields.get(1) {
        Some(&"unlimited") => Ok(None),
        Some(v) => Ok(Some(v.parse().with_context(|| format!("hard limit {v:?} of {name:?} is not a number"))?)),
        None => bail!("cannot read the hard limit of {name:?} from /proc/self/limits"),
    }
}

/// Whether the host runs a pure cgroup v2 hierarchy (then crun works).
fn cgroup_v2_only() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Extra arguments for `podman run` on this host; every adaptation is logged on stderr.
pub fn run_args() -> Result<Vec<String>> {
    let mut args = Vec::new();
    if !cgroup_v2_only() {
        if on_path("runc") {
            eprintln!(
                "note: podman: this host has cgroup v1/hybrid, which crun does not support; adding --runtime runc"
            );
            args.extend(["--runtime".to_string(), "runc".to_string()]);
        } else {
            eprintln!("warning: podman: this host has cgroup v1/hybrid and runc is not installed; containers may fail to start (install runc)");
        }
    }
    let limits = fs::read_to_string("/proc/self/limits").context("cannot read /proc/self/limits")?;
    let pid_max: Option<u64> = fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse().ok());
    for (name, row, default) in [("nofile", "Max open files", PODMAN_NOFILE), ("nproc", "Max processes", PODMAN_NPROC)]
    {
        let hard = hard_limit(&limits, row)?;
        let (n, why) = match (name, hard, pid_max) {
            ("nproc", Some(h), Some(p)) if p < h => {
                (p, format!("kernel.pid_max={p} (below the hard limit {h}, and podman caps itself there)"))
            }
            ("nproc", None, Some(p)) => (p, format!("kernel.pid_max={p}")),
            (_, Some(h), _) => (h, format!("host hard limit {h}")),
            _ => continue,
        };
        if n < default {
            eprintln!(
                "note: podman: {name}: {why} is below podman's default {default}; adding --ulimit {name}={n}:{n}"
            );
            args.extend(["--ulimit".to_string(), format!("{name}={n}:{n}")]);
        }
    }
    Ok(args)
}

/// The host adaptation of [`run_args`] as a `containers.conf`, for podman commands that take no
/// `--runtime` or `--ulimit` (`podman kube play`): pass its path in `CONTAINERS_CONF`.
pub fn containers_conf(run_args: &[String]) -> String {
    let mut ulimits = Vec::new();
    let mut runtime = None;
    let mut it = run_args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ulimit" => ulimits.extend(it.next().map(|v| format!("{v:?}"))),
            "--runtime" => runtime = it.next(),
            _ => {}
        }
    }
    let mut out = String::from("# The host adaptation `cargo xtask smoke` worked out (see its log).\n[containers]\n");
    out.push_str(&format!("default_ulimits = [{}]\n", ulimits.join(", ")));
    if let Some(r) = runtime {
        out.push_str(&format!("\n[engine]\nruntime = {r:?}\n"));
    }
    out
}

/// `podman load -i ARCHIVE`; returns the name podman gave the image.
pub fn load(archive: &Path) -> Result<String> {
    let sh = Shell::new().context("cannot start a shell")?;
    let out = cmd!(sh, "podman load -i {archive}")
        .quiet()
        .read()
        .with_context(|| format!("podman load -i {} failed", archive.display()))?;
    out.lines()
        .filter_map(|l| l.strip_prefix("Loaded image:").or_else(|| l.strip_prefix("Loaded image(s):")))
        .map(|s| s.trim().to_string())
        .next_back()
        .with_context(|| format!("podman load printed no image name: {out}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max processes             96364                96364                processes \n\
Max open files            1024                 20000                files     \n\
Max locked memory         unlimited            unlimited            bytes     \n";

    #[test]
    fn the_adaptation_reads_as_a_containers_conf() {
        let args: Vec<String> =
            ["--runtime", "runc", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let conf = containers_conf(&args);
        assert!(conf.contains("default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]"), "{conf}");
        assert!(conf.contains("[engine]\nruntime = \"runc\""), "{conf}");
        let parsed: toml::Value = toml::from_str(&conf).unwrap();
        assert_eq!(parsed["engine"]["runtime"].as_str(), Some("runc"));
        assert!(!containers_conf(&[]).contains("[engine]"));
    }

    #[test]
    fn hard_limits_are_read() {
        assert_eq!(hard_limit(LIMITS, "Max open files").unwrap(), Some(20000));
        assert_eq!(hard_limit(LIMITS, "Max processes").unwrap(), Some(96364));
        assert_eq!(hard_limit(LIMITS, "Max locked memory").unwrap(), None);
        assert!(hard_limit(LIMITS, "Max cpu").is_err());
    }

    /// The host's hard limit as bash's `ulimit -H` reports it (`flag`: `-n` open files, `-u`
    /// processes), read apart from `run_args` and its parser; `None` = unlimited.
    fn shell_hard_limit(flag: &str) -> Option<u64> {
        let out = std::process::Command::new("bash").args(["-c", &format!("ulimit -H {flag}")]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(out.status.success(), "bash -c 'ulimit -H {flag}' failed: {}", String::from_utf8_lossy(&out.stderr));
        match text.as_str() {
            "unlimited" => None,
            n => Some(n.parse().unwrap_or_else(|_| panic!("ulimit -H {flag} printed {n:?}"))),
        }
    }

    /// The values of every `--ulimit NAME=SOFT:HARD` in `args`.
    fn ulimits_for(args: &[String], name: &str) -> Vec<(u64, u64)> {
        args.windows(2)
            .filter(|w| w[0] == "--ulimit")
            .filter_map(|w| w[1].strip_prefix(&format!("{name}=")))
            .map(|v| {
                let (soft, hard) = v.split_once(':').unwrap_or_else(|| panic!("--ulimit {name}={v}: not SOFT:HARD"));
                (soft.parse().unwrap(), hard.parse().unwrap())
            })
            .collect()
    }

    /// Where podman's default would ask for more than this host allows, `run_args` lowers it to
    /// what the host allows (the hard limit as the shell reads it, and for processes
    /// `kernel.pid_max` too); where the default fits, it leaves it alone.
    #[test]
    fn run_args_never_exceed_host_limits() {
        let args = run_args().unwrap();
        let pid_max: u64 = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
        for (name, flag, podman_default, kernel_cap) in
            [("nofile", "-n", PODMAN_NOFILE, None), ("nproc", "-u", PODMAN_NPROC, Some(pid_max))]
        {
            let hard = shell_hard_limit(flag);
            let allowed = [hard, kernel_cap].into_iter().flatten().min();
            let given = ulimits_for(&args, name);
            match allowed {
                Some(allowed) if allowed < podman_default => {
                    assert_eq!(
                        given.len(),
                        1,
                        "podman's default {name} {podman_default} is above what this host allows ({allowed}: hard \
                         limit {hard:?}, kernel cap {kernel_cap:?}), so exactly one --ulimit {name} must lower it; \
                         run_args gave {args:?}"
                    );
                    let (soft, hard_given) = given[0];
                    assert!(
                        soft <= allowed && hard_given <= allowed,
                        "--ulimit {name}={soft}:{hard_given} exceeds what this host allows ({allowed}); run_args gave {args:?}"
                    );
                    assert_eq!(
                        (soft, hard_given),
                        (allowed, allowed),
                        "--ulimit {name} should give the container all the host allows"
                    );
                }
                _ => assert!(
                    given.is_empty(),
                    "podman's default {name} {podman_default} fits under this host's limit ({allowed:?}): no \
                     --ulimit {name} is needed, run_args gave {args:?}"
                ),
            }
        }
    }
}
