//! Where everything lives in a PKI directory ([`PkiLayout`]: file names, modes), and the report
//! of what a command did to its files ([`IssueReport`]). In: the directory's root. Out: paths,
//! and the lines `cargo xtask pki` prints. Issuing (`issue.rs`), the CA rotation's state
//! (`rotation.rs`) and its steps (`rotate.rs`) all write through these.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::pki::cluster::ClusterSpec;

/// Mode of private keys and of the token.
pub const KEY_MODE: u32 = 0o600;
/// Mode of certificates and public metadata.
pub const CERT_MODE: u32 = 0o644;
/// Mode of every directory of the PKI.
pub const DIR_MODE: u32 = 0o700;

/// Where everything lives in a PKI directory (`target/pki/<cluster>/` by default):
///
/// ```text
/// ca/ca.crt, ca/ca.key              the cluster CA: issues server and client certificates
/// peer-ca/ca.crt, peer-ca/ca.key    the peer CA (when profiles say separate_peer_ca = true)
/// ca.old-N/, peer-ca.old-N/         CAs set aside by --force or by a rotation's drop step
/// ca.next/, peer-ca.next/           the new CAs while a CA rotation is in progress
/// rotation.json                     the state of the current (or last) CA rotation
/// nodes/<node>/                     exactly what one node needs; mount it at /etc/etcd/pki
///     server.crt, server.key        --cert-file, --key-file (client port)
///     peer.crt, peer.key            --peer-cert-file, --peer-key-file
///     ca.crt                        --trusted-ca-file (verifies clients)
///     peer-ca.crt                   --peer-trusted-ca-file (verifies peers; the same CA as
///                                   ca.crt when one CA is shared)
/// clients/<identity>/               one client identity (CN = identity)
///     client.crt, client.key, ca.crt   --cert, --key, --cacert of etcdctl
/// backup/<node>/                    node's ssh key for shipping its snapshots (never mounted
///     id_ed25519, id_ed25519.pub    into etcd's container: the backup units read it)
/// token                             the initial-cluster token (from the description, or random)
/// cluster.toml                      the description these certificates were issued for
/// manifest.json                     cluster name, CA mode, peer CN to allow, nodes, clients
/// ```
///
/// Every trust file (`ca.crt`, `peer-ca.crt` of nodes and clients) holds one CA certificate,
/// except during a CA rotation (see `rotate.rs`): from its add step to its drop step it
/// is a bundle of the old and the new CA, in that order. File names never change.
///
/// With one CA shared by peers and clients, every peer certificate carries the CN
/// `ca.peer_common_name` of the profiles and nodes must run etcd with
/// `--peer-cert-allowed-cn=<that CN>`; `manifest.json` records it as `peer_cert_allowed_cn`.
#[derive(Debug, Clone)]
pub struct PkiLayout {
    pub root: PathBuf,
}

pub const SERVER_CERT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";
pub const PEER_CERT: &str = "peer.crt";
pub const PEER_KEY: &str = "peer.key";
pub const CLIENT_CERT: &str = "client.crt";
pub const CLIENT_KEY: &str = "client.key";
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const PEER_CA_CERT: &str = "peer-ca.crt";
/// A node's ssh key for its backups (beside it, `.pub`).
pub const BACKUP_KEY: &str = "id_ed25519";

impl PkiLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PkiLayout { root: root.into() }
    }
    /// `target/pki/<cluster>`.
    pub fn default_for(spec: &ClusterSpec) -> Self {
        PkiLayout::new(crate::util::target_dir().join("pki").join(&spec.name))
    }
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }
    pub fn peer_ca_dir(&self) -> PathBuf {
        self.root.join("peer-ca")
    }
    pub fn nodes_dir(&self) -> PathBuf {
        self.root.join("nodes")
    }
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.nodes_dir().join(node)
    }
    pub fn clients_dir(&self) -> PathBuf {
        self.root.join("clients")
    }
    pub fn client_dir(&self, id: &str) -> PathBuf {
        self.clients_dir().join(id)
    }
    /// Node `node`'s ssh key for shipping its snapshots (OpenSSH format), and its public half.
    pub fn backup_key(&self, node: &str) -> (PathBuf, PathBuf) {
        let dir = self.root.join("backup").join(node);
        (dir.join(BACKUP_KEY), dir.join(format!("{BACKUP_KEY}.pub")))
    }
    pub fn token(&self) -> PathBuf {
        self.root.join("token")
    }
    pub fn cluster_toml(&self) -> PathBuf {
        self.root.join("cluster.toml")
    }
    pub fn manifest(&self) -> PathBuf {
        self.root.join("manifest.json")
    }
    /// Where a CA rotation keeps the new CA of `ca_dir` until its drop step: `ca.next/`.
    pub fn next_dir(ca_dir: &Path) -> PathBuf {
        ca_dir.with_file_name(format!("{}.next", ca_dir.file_name().map(|s| s.to_string_lossy()).unwrap_or_default()))
    }
    /// The state of the current or last CA rotation.
    pub fn rotation(&self) -> PathBuf {
        self.root.join("rotation.json")
    }
    /// Whether `root` looks like a directory this stage made.
    pub fn is_ours(&self) -> bool {
        self.ca_dir().join(CA_CERT).is_file() && self.nodes_dir().is_dir()
    }
}

/// What happened to one file or directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new certificate (and key) was issued where there was none.
    Issued,
    /// A file other than a certificate (CA copy, token, metadata) was written for the first time.
    Created,
    Kept,
    Reissued(String),
    Updated,
    /// A CA was replaced by `--force`; the old one is kept at the given path.
    Replaced {
        old: String,
    },
    Note(String),
}

/// One line of an [`IssueReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportLine {
    /// Path relative to the PKI directory.
    pub path: String,
    pub action: Action,
}

/// What `issue` or `renew` did, file by file.
#[derive(Debug, Clone, Default)]
pub struct IssueReport {
    pub lines: Vec<ReportLine>,
    /// The initial-cluster token in force.
    pub token: String,
}

impl IssueReport {
    pub(in crate::pki) fn push(&mut self, layout: &PkiLayout, path: &Path, action: Action) {
        let path = path.strip_prefix(&layout.root).unwrap_or(path).display().to_string();
        self.lines.push(ReportLine { path, action });
    }
    /// Lines for files that were (re)issued.
    pub fn issued(&self) -> impl Iterator<Item = &ReportLine> {
        self.lines.iter().filter(|l| matches!(l.action, Action::Issued | Action::Reissued(_) | Action::Replaced { .. }))
    }
    pub fn action_of(&self, path: &str) -> Option<&Action> {
        self.lines.iter().rev().find(|l| l.path == path).map(|l| &l.action)
    }
}

impl fmt::Display for IssueReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            match &line.action {
                Action::Issued => writeln!(f, "issued    {}", line.path)?,
                Action::Created => writeln!(f, "created   {}", line.path)?,
                Action::Kept => writeln!(f, "kept      {}", line.path)?,
                Action::Updated => writeln!(f, "updated   {}", line.path)?,
                Action::Reissued(why) => writeln!(f, "REISSUED  {}: {why}", line.path)?,
                Action::Replaced { old } => writeln!(f, "REPLACED  {} (the old CA is kept in {old})", line.path)?,
                Action::Note(msg) => writeln!(f, "note      {}: {msg}", line.path)?,
            }
        }
        Ok(())
    }
}

pub(in crate::pki) fn ensure_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))
        .with_context(|| format!("cannot set mode 0700 on {}", path.display()))
}

pub(in crate::pki) fn read_opt(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}
