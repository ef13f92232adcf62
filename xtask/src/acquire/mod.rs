//! Acquire stage: the only stage that touches the network.
//! In: an image definition (version, arches, mirrors) and the pinned sums.
//! Out: `target/etcd/<version>/<arch>/{etcd,etcdctl[,etcdutl],provenance.json}`, verified.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::util::{Arch, Sha256Hex};

/// Acquire etcd for a version and architecture, verified against pinned SHA-256 sums.
#[derive(Debug, clap::Args)]
pub struct Fetch {}

impl Fetch {
    pub fn run(self) -> Result<()> {
        bail!("not implemented yet")
    }
}

/// Where a set of etcd binaries came from: written as `provenance.json` beside them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// `tarball` (official location or a mirror), `distro` (Debian packages) or `build` (from source).
    pub source: SourceKind,
    /// The etcd version actually inside (for `distro`, the package's upstream version).
    pub version: String,
    pub arch: Arch,
    /// The URL the tarball came from, the package names and versions, or the git source.
    pub origin: String,
    /// SHA-256 of the verified artifact (tarball or .deb files, in origin order).
    pub artifacts: BTreeMap<String, Sha256Hex>,
    /// SHA-256 of each binary in this directory.
    pub files: BTreeMap<String, Sha256Hex>,
    /// What `etcd --version` printed, when the architecture runs here.
    pub reported_version: Option<String>,
    /// Free-form notes (for builds: go version, flags, git sha).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Tarball,
    Distro,
    Build,
}

/// A verified set of etcd binaries on disk.
#[derive(Debug, Clone)]
pub struct Acquired {
    /// `target/etcd/<version>/<arch>/`
    pub dir: PathBuf,
    pub provenance: Provenance,
}

impl Acquired {
    pub fn binary(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Where etcd may come from (`--source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SourcePolicy {
    /// Download locations first; if all are unreachable and the definition allows it, Debian's packages.
    #[default]
    Auto,
    /// Only the download locations (mirrors, then official).
    Tarball,
    /// Only Debian's etcd-server/etcd-client packages.
    Distro,
    /// Only what `cargo xtask build-etcd` produced.
    Build,
}

/// How to acquire, beyond what the definition says.
#[derive(Debug, Clone, Default)]
pub struct AcquireOptions {
    pub version: Option<String>,
    pub mirrors: Vec<String>,
    pub checksums: Option<PathBuf>,
    pub source: SourcePolicy,
    /// Output root instead of `target/etcd`.
    pub out_root: Option<PathBuf>,
}

/// Makes sure verified binaries for `arch` are on disk (downloading only when the cache
/// lacks them) and returns where they are.
pub fn ensure(def: &crate::definition::Definition, arch: Arch, opts: &AcquireOptions) -> Result<Acquired> {
    let _ = (def, arch, opts);
    bail!("not implemented yet")
}
