//! `cargo xtask ci`: what `.ci/run` runs.
//! In: a checkout on a Debian/Ubuntu machine. Out: the tools the suite needs installed (as root,
//! from `ci/debian-packages.txt`) or named, then every test run; non-zero exit on any failure.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::project_root;

/// Install what the test suite needs (apt-get, when root) and run every test
#[derive(Debug, clap::Args)]
pub struct Ci {
    /// Only check and install the tools, do not run the tests
    #[arg(long)]
    pub deps_only: bool,
    /// Extra arguments passed to `cargo test` (e.g. a test name filter)
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

impl Ci {
    pub fn run(self) -> Result<()> {
        let root = project_root();
        ensure_tools(&root.join("ci/debian-packages.txt"))?;
        if self.deps_only {
            return Ok(());
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(&self.cargo_test_args)
            // The suite never contacts the official download locations: only loopback and the
            // package registries.
            .env("XTASK_NO_OFFICIAL", "1")
            .status()
            .context("cannot run cargo test")?;
        if !status.success() {
            bail!("the test suite failed ({status})");
        }
        Ok(())
    }
}

/// The package names of the packages file (one a line, `#` starts a comment).
pub fn read_packages(path: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
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

pub fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
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
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get: this needs a Debian or Ubuntu machine")?;
    if !status.success() {
        bail!("`apt-get {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_package_list_parses_and_names_the_container_tools() {
        let pkgs = read_packages(&project_root().join("ci/debian-packages.txt")).unwrap();
        for p in ["podman", "runc", "umoci", "squashfs-tools", "golang-go", "openssl"] {
            assert!(pkgs.iter().any(|c| c == p), "{p} missing");
        }
        // On this machine the suite has run its install step: nothing may be missing.
        assert_eq!(not_installed(&["dpkg".to_string()]), Vec::<String>::new());
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
