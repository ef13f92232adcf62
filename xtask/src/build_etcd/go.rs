//! The Go toolchain: which `go` runs, its version, and what `go env` says the build passes on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::tail;

use super::*;

/// A Go release: `1.19.8`, `1.14` (patch 0), `1.21rc2` (pre-releases count as their release).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct GoVersion {
    pub(super) major: u32,
    pub(super) minor: u32,
    pub(super) patch: u32,
}

impl GoVersion {
    pub(super) fn parse(s: &str) -> Option<GoVersion> {
        let s = s.trim().trim_start_matches("go");
        let mut nums = [0u32; 3];
        let mut count = 0;
        for (i, part) in s.split('.').take(3).enumerate() {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            if digits.is_empty() {
                break;
            }
            nums[i] = digits.parse().ok()?;
            count = i + 1;
            if digits.len() != part.len() {
                break;
            }
        }
        (count >= 2).then_some(GoVersion { major: nums[0], minor: nums[1], patch: nums[2] })
    }

    pub(super) const fn at_least(self, major: u32, minor: u32) -> bool {
        self.major > major || (self.major == major && self.minor >= minor)
    }
}

impl std::fmt::Display for GoVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The `go` command and what `go version` says about it.
pub(super) struct Go {
    pub(super) cmd: PathBuf,
    /// `go1.19.8`, as printed.
    pub(super) raw: String,
    pub(super) version: GoVersion,
}

/// What `go env` reports, read once; the build passes these on.
pub(super) struct GoEnv {
    pub(super) goflags: String,
    pub(super) goproxy: String,
}

impl Go {
    pub(super) fn probe(cmd: &Path) -> Result<Go> {
        // A relative path with a slash must not be re-resolved against the build directory.
        let cmd = match cmd.components().count() > 1 && cmd.is_relative() {
            true => std::env::current_dir().context("cannot read the current directory")?.join(cmd),
            false => cmd.to_path_buf(),
        };
        let out = Command::new(&cmd).arg("version").stdin(Stdio::null()).output().map_err(|err| {
            anyhow::anyhow!(
                "cannot run Go ({}): {err}; install Go (Debian: apt-get install golang-go) or pass --go PATH",
                cmd.display()
            )
        })?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("`{} version` failed ({}): {}", cmd.display(), out.status, tail(&combined(&out), 5));
        }
        let (raw, version) = parse_go_version_output(&text).with_context(|| {
            format!(
                "`{} version` printed {:?}, not `go version goX.Y...`: is --go really Go?",
                cmd.display(),
                text.trim()
            )
        })?;
        Ok(Go { cmd, raw, version })
    }

    /// Refuses a Go older than the tree asks for (`go` directives, GOPATH/module minimums).
    pub(super) fn check_for(&self, layout: &Layout) -> Result<()> {
        let (floor, why) = match layout.mode {
            // Vendor directories in GOPATH mode: Go 1.6.
            Mode::Gopath => (GoVersion { major: 1, minor: 6, patch: 0 }, "GOPATH mode with vendor/".to_string()),
            Mode::Module => (GoVersion { major: 1, minor: 11, patch: 0 }, "Go modules".to_string()),
        };
        let (need, why) = match &layout.go_directive {
            Some((v, file)) if *v > floor => (*v, format!("{file} says `go {}.{}`", v.major, v.minor)),
            _ => (floor, why),
        };
        if self.version < need {
            bail!(
                "{} is too old for this tree: {why}, which needs Go {}.{} or newer; install a newer Go and pass --go PATH",
                self.raw,
                need.major,
                need.minor
            );
        }
        Ok(())
    }

    pub(super) fn env(&self) -> Result<GoEnv> {
        let out = Command::new(&self.cmd)
            .args(["env", "GOFLAGS", "GOPROXY"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {} env", self.cmd.display()))?;
        if !out.status.success() {
            bail!("`go env` failed ({}): {}; check GOFLAGS and the go env file", out.status, tail(&combined(&out), 5));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        Ok(GoEnv {
            goflags: lines.next().unwrap_or("").trim().to_string(),
            goproxy: lines.next().unwrap_or("").trim().to_string(),
        })
    }
}

/// `go version go1.19.8 linux/amd64` (or `go version devel go1.22-abc ...`) -> ("go1.19.8", 1.19.8).
pub(super) fn parse_go_version_output(text: &str) -> Option<(String, GoVersion)> {
    let line = text.lines().find(|l| l.starts_with("go version "))?;
    let word = line.split_whitespace().skip(2).find(|w| w.starts_with("go1") || w.starts_with("go2"))?;
    let word = word.split('-').next().unwrap_or(word);
    Some((word.to_string(), GoVersion::parse(word)?))
}

/// GOFLAGS without the module-only flags, which GOPATH mode rejects.
pub(super) fn strip_module_flags(goflags: &str) -> (String, Vec<String>) {
    let (keep, dropped): (Vec<&str>, Vec<&str>) = goflags.split_whitespace().partition(|f| {
        !["-mod", "--mod", "-modfile", "--modfile", "-modcacherw", "--modcacherw"]
            .contains(&f.split('=').next().unwrap_or(f))
    });
    (keep.join(" "), dropped.into_iter().map(str::to_string).collect())
}
