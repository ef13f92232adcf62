//! etcd versions: the form of one (`MAJOR.MINOR.PATCH`), its release line, their order, and
//! which step from one release to another etcd supports.
//! In: version strings, and the releases a definition forbids. Out: checked values, or an error
//! naming the version and what to write instead.
//!
//! Both the image definition (which checks that its own `[upgrade]` target is allowed) and the
//! upgrade policy of `upgrade.rs` (which the smoke test asks before an upgrade) use these.
//!
//! etcd supports upgrading a cluster one minor version at a time (3.4 -> 3.5, never 3.4 -> 3.6),
//! within one major version, and never downgrading; patch upgrades within a release line are
//! always possible. Releases a definition forbids (e.g. 3.5.0-3.5.2) are refused as targets.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// An etcd version as released: `MAJOR.MINOR.PATCH` with an optional `-suffix`, no leading `v`.
pub fn check_version(v: &str) -> Result<()> {
    let core = v.split('-').next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    if let Some(rest) = v.strip_prefix('v') {
        bail!("version {v:?} must not start with 'v': write {rest:?}");
    }
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        bail!("version {v:?} is not of the form MAJOR.MINOR.PATCH (e.g. 3.4.9)");
    }
    if !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
        bail!("version {v:?} contains characters other than letters, digits, '.' and '-'");
    }
    Ok(())
}

/// The release line of a version: `3.5.16` -> `3.5` (MAJOR.MINOR).
pub fn release_line(version: &str) -> String {
    let core = version.split('-').next().unwrap_or(version);
    core.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// `3.5.16` -> (3, 5, 16); `3.5.0-rc.1` -> (3, 5, 0). None when it is not MAJOR.MINOR.PATCH.
pub fn version_triple(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.split('-').next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let triple = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(triple)
}

/// `[[upgrade.forbidden]]`: the releases `from` to `to` (inclusive, one release line) and why.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForbiddenRange {
    pub from: String,
    pub to: String,
    pub reason: String,
}

impl ForbiddenRange {
    /// Whether `version` lies in this range (suffixes such as `-rc.0` count as their release).
    pub fn contains(&self, version: &str) -> bool {
        match (version_triple(version), version_triple(&self.from), version_triple(&self.to)) {
            (Some(v), Some(from), Some(to)) => from <= v && v <= to,
            _ => false,
        }
    }
}

/// Checks that a running cluster of etcd `from` may be upgraded to etcd `to`: the same major
/// version, later than `from`, at most one minor version ahead, and not in `forbidden` (the
/// `[[upgrade.forbidden]]` of the definition `file`, which the messages name).
pub fn check_upgrade_step(from: &str, to: &str, forbidden: &[ForbiddenRange], file: &Path) -> Result<()> {
    check_version(from).with_context(|| format!("the running version {from:?}"))?;
    check_version(to).with_context(|| format!("the target version {to:?}"))?;
    let (Some(f), Some(t)) = (version_triple(from), version_triple(to)) else {
        bail!("cannot compare etcd {from} with {to}: give versions as MAJOR.MINOR.PATCH");
    };
    if f == t {
        bail!(
            "etcd {from} -> {to} is no upgrade: the cluster already runs that release; \
             pick a later one (upgrade.to in {})",
            file.display()
        );
    }
    if f.0 != t.0 {
        bail!(
            "etcd {from} -> {to} crosses major versions ({} -> {}), which etcd does not support: \
             stay within etcd {}.x",
            f.0,
            t.0,
            f.0
        );
    }
    if t < f {
        bail!(
            "etcd {from} -> {to} is a downgrade, which this product does not perform: \
             a cluster only moves to later releases (restore a snapshot taken before the upgrade to go back)"
        );
    }
    if t.1 > f.1 + 1 {
        bail!(
            "etcd {from} -> {to} skips a minor version: etcd upgrades one minor version at a time; \
             upgrade the cluster to {}.{}.x first, then to {to}",
            f.0,
            f.1 + 1
        );
    }
    if let Some(range) = forbidden.iter().find(|r| r.contains(to)) {
        bail!(
            "etcd {to} is a forbidden upgrade target ({}..{} in upgrade.forbidden of {}): {}",
            range.from,
            range.to,
            file.display(),
            range.reason
        );
    }
    Ok(())
}
