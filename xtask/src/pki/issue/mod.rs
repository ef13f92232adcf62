//! Issuing: a [`ClusterSpec`] and [`Profiles`] in, a complete certificate directory out (layout
//! in [`PkiLayout`]). Idempotent: the CAs are reused and never overwritten (only `--force`
//! replaces one, keeping the old one aside), leaves are kept while they match the description
//! and are issued by the current CA, and only what is missing or stale is (re)issued.
//!
//! Every file is written to a temporary name and renamed; a new CA directory is staged whole
//! and renamed into place. Keys are 0600, directories 0700, certificates 0644. While a CA
//! rotation is under way, `rotation.rs` says which CAs sign and what the trust files hold.

pub mod cert;
pub mod crl;
pub mod layout;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use self::cert::{LeafRequest, SigningCa};
use super::cluster::{check_client_not_reserved, ClusterSpec};
use super::layout::{
    ensure_dir, read_opt, Action, IssueReport, PkiLayout, CA_CERT, CA_KEY, CERT_MODE, DIR_MODE, KEY_MODE, PEER_CA_CERT,
};
use super::profiles::{CaProfile, Profiles};
use super::rotation::{self as rotate, Cas, RotatePhase};
use crate::util::{AtomicBatch, StagingDir};

/// Writes `data` in `batch` unless the file already holds exactly it; reports what happened.
fn write_if_changed(
    layout: &PkiLayout,
    report: &mut IssueReport,
    batch: &mut AtomicBatch,
    path: &Path,
    data: &str,
    mode: u32,
) -> Result<()> {
    let old = read_opt(path)?;
    if old.as_deref() == Some(data) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set mode of {}", path.display()))?;
        return Ok(());
    }
    batch.write(path, data.as_bytes(), mode)?;
    report.push(layout, path, if old.is_some() { Action::Updated } else { Action::Created });
    Ok(())
}

/// The first free `<dir>.old-N` (N from 1): where a replaced CA is kept.
pub(in crate::pki) fn free_old_name(dir: &Path) -> Result<PathBuf> {
    (1..10_000)
        .map(|n| {
            dir.with_file_name(format!("{}.old-{n}", dir.file_name().map(|s| s.to_string_lossy()).unwrap_or_default()))
        })
        .find(|p| !p.exists())
        .with_context(|| {
            format!("no free name to set {} aside: remove old *.old-N copies you no longer need", dir.display())
        })
}

/// Loads the CA in `dir`, or creates it when absent. An existing CA is never overwritten: with
/// `force` it is moved aside to `<dir>.old-N` first.
pub(in crate::pki) fn ensure_ca(
    layout: &PkiLayout,
    dir: &Path,
    cn: &str,
    profile: &CaProfile,
    force: bool,
    report: &mut IssueReport,
    batch: &mut AtomicBatch,
) -> Result<SigningCa> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    let cert = read_opt(&cert_path)?;
    let key = read_opt(&key_path)?;
    let mut replaced = None;
    if dir.exists() {
        if force {
            let old = free_old_name(dir)?;
            fs::rename(dir, &old)
                .with_context(|| format!("cannot move {} aside to {}", dir.display(), old.display()))?;
            replaced = Some(old.strip_prefix(&layout.root).unwrap_or(&old).display().to_string());
        } else {
            match (cert, key) {
                (Some(cert), Some(key)) => {
                    let ca = SigningCa::load(&cert, &key, &dir.display().to_string())?;
                    let now = now_unix();
                    if ca.info.not_after <= now {
                        bail!(
                            "the CA {} expired; pass --force to set it aside and create a new one (every certificate is then reissued)",
                            cert_path.display()
                        );
                    }
                    report.push(layout, &cert_path, Action::Kept);
                    if ca.info.key_algorithm != Some(profile.algorithm) {
                        report.push(
                            layout,
                            &cert_path,
                            Action::Note(format!(
                                "the CA key is {}, the profile says {}; the existing CA is kept (use --force to replace it)",
                                ca.info.key_text, profile.algorithm
                            )),
                        );
                    }
                    return Ok(ca);
                }
                (Some(_), None) => bail!(
                    "{} exists but {} is missing: restore the key, or pass --force to set the CA aside and create a new one",
                    cert_path.display(),
                    key_path.display()
                ),
                (None, Some(_)) => bail!(
                    "{} exists but {} is missing: restore the certificate, or pass --force to set the CA aside and create a new one",
                    key_path.display(),
                    cert_path.display()
                ),
                (None, None) => bail!(
                    "{} exists but holds no CA ({CA_CERT}, {CA_KEY}): remove the directory, or pass --force to set it aside",
                    dir.display()
                ),
            }
        }
    }
    let issued = cert::new_ca(cn, profile)?;
    // The key and certificate appear together, as one directory, when `batch` is committed.
    let staged = StagingDir::beside(dir)?;
    batch.write(&staged.path().join(CA_KEY), issued.key_pem.as_bytes(), KEY_MODE)?;
    batch.write(&staged.path().join(CA_CERT), issued.cert_pem.as_bytes(), CERT_MODE)?;
    fs::set_permissions(staged.path(), fs::Permissions::from_mode(DIR_MODE))
        .with_context(|| format!("cannot set mode of {}", staged.path().display()))?;
    batch.replace_dir(staged, dir);
    report.push(
        layout,
        &cert_path,
        match replaced {
            Some(old) => Action::Replaced { old },
            None => Action::Issued,
        },
    );
    SigningCa::load(&issued.cert_pem, &issued.key_pem, &dir.display().to_string())
}

/// The current time in unix seconds: used only to refuse an expired CA and to reissue an
/// expired leaf.
fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Keeps the certificate `<stem>.crt` (+ `<stem>.key`) when it fulfils `req` and is issued by
/// `ca`; otherwise issues a new one with a new key, written in `batch`.
fn ensure_leaf(
    layout: &PkiLayout,
    stem: &Path,
    req: &LeafRequest,
    ca: &SigningCa,
    renew: bool,
    report: &mut IssueReport,
    batch: &mut AtomicBatch,
) -> Result<()> {
    let with_ext = |ext: &str| {
        let mut p = stem.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    let (cert_path, key_path) = (with_ext(".crt"), with_ext(".key"));
    let why = match (read_opt(&cert_path)?, read_opt(&key_path)?) {
        (Some(cert_pem), Some(key_pem)) => {
            let mut why = Vec::new();
            match cert::first_cert(&cert_pem) {
                Err(e) => why.push(format!("unreadable ({e:#})")),
                Ok(info) => {
                    if let Err(e) = info.verify_issued_by(&ca.info) {
                        why.push(format!("not issued by the current CA: {e}"));
                    }
                    why.extend(req.mismatches(&info));
                    if info.not_after <= now_unix() {
                        why.push("expired".into());
                    }
                    match cert::key_matches(&key_pem, &info) {
                        Ok(true) => {}
                        Ok(false) => why.push(format!("{} does not belong to it", key_path.display())),
                        Err(e) => why.push(format!("{} is unreadable ({e:#})", key_path.display())),
                    }
                }
            }
            if renew {
                why.push("renewal requested".into());
            }
            Some(why)
        }
        (Some(_), None) => Some(vec![format!("{} is missing", key_path.display())]),
        (None, Some(_)) => Some(vec![format!("{} is missing", cert_path.display())]),
        (None, None) => None,
    };
    let action = match why {
        Some(why) if why.is_empty() => {
            for (path, mode) in [(&key_path, KEY_MODE), (&cert_path, CERT_MODE)] {
                fs::set_permissions(path, fs::Permissions::from_mode(mode))
                    .with_context(|| format!("cannot set mode of {}", path.display()))?;
            }
            report.push(layout, &cert_path, Action::Kept);
            return Ok(());
        }
        Some(why) => Action::Reissued(why.join("; ")),
        None => Action::Issued,
    };
    let issued = cert::issue_leaf(req, &ca.issuer)?;
    // Key first (the batch renames in order): if we stop in between, the next run sees a key
    // that does not match and reissues.
    batch.write(&key_path, issued.key_pem.as_bytes(), KEY_MODE)?;
    batch.write(&cert_path, issued.cert_pem.as_bytes(), CERT_MODE)?;
    report.push(layout, &cert_path, action);
    Ok(())
}

/// Which leaves a run (re)issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::pki) enum Scope<'a> {
    /// Issue what is missing or stale.
    Reconcile,
    /// Reissue every leaf, or only those of one node.
    Renew(Option<&'a str>),
}

pub(in crate::pki) fn run_leaves(
    spec: &ClusterSpec,
    profiles: &Profiles,
    layout: &PkiLayout,
    cas: &Cas,
    scope: Scope<'_>,
    report: &mut IssueReport,
    batch: &mut AtomicBatch,
) -> Result<()> {
    ensure_dir(&layout.nodes_dir())?;
    ensure_dir(&layout.clients_dir())?;
    for node in &spec.nodes {
        let renew = match scope {
            Scope::Reconcile => false,
            Scope::Renew(None) => true,
            Scope::Renew(Some(only)) => only == node.name,
        };
        let dir = layout.node_dir(&node.name);
        ensure_dir(&dir)?;
        let sans = node.sans();
        let server = LeafRequest::new(&node.name, sans.clone(), &profiles.server);
        let peer = LeafRequest::new(profiles.peer_common_name(&node.name), sans, &profiles.peer);
        ensure_leaf(layout, &dir.join("server"), &server, &cas.ca, renew, report, batch)?;
        ensure_leaf(layout, &dir.join("peer"), &peer, cas.peer(), renew, report, batch)?;
        write_if_changed(layout, report, batch, &dir.join(CA_CERT), &cas.trust, CERT_MODE)?;
        write_if_changed(layout, report, batch, &dir.join(PEER_CA_CERT), &cas.peer_trust, CERT_MODE)?;
    }
    for id in &spec.clients {
        let renew = matches!(scope, Scope::Renew(None));
        let dir = layout.client_dir(id);
        ensure_dir(&dir)?;
        let req = LeafRequest::new(id, Default::default(), &profiles.client);
        ensure_leaf(layout, &dir.join("client"), &req, &cas.ca, renew, report, batch)?;
        write_if_changed(layout, report, batch, &dir.join(CA_CERT), &cas.trust, CERT_MODE)?;
    }
    // The CRLs exist from the start (empty), so etcd's configuration never changes on a revocation.
    let nodes: Vec<String> = spec.nodes.iter().map(|n| n.name.clone()).collect();
    crl::ensure_crls(layout, &nodes, cas, &crl::read_record(layout)?, report, batch)?;
    // Directories of nodes or clients no longer described are left alone, but said.
    for (parent, known) in [
        (layout.nodes_dir(), spec.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>()),
        (layout.clients_dir(), spec.clients.clone()),
    ] {
        let mut entries: Vec<_> = fs::read_dir(&parent)
            .with_context(|| format!("cannot list {}", parent.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && !known.contains(n))
            .collect();
        entries.sort();
        for name in entries {
            report.push(
                layout,
                &parent.join(&name),
                Action::Note("not in the description; left in place, remove it by hand".into()),
            );
        }
    }
    Ok(())
}

fn load_or_create_cas(
    spec: &ClusterSpec,
    profiles: &Profiles,
    layout: &PkiLayout,
    force: bool,
    report: &mut IssueReport,
    batch: &mut AtomicBatch,
) -> Result<Cas> {
    if let Some(state) = rotate::rotation_state(&layout.root)? {
        if state.phase != RotatePhase::Done {
            if force {
                bail!(
                    "a CA rotation is in progress in {} (phase {}): --force would replace the CAs under it; finish the rotation first ({})",
                    layout.root.display(),
                    state.phase,
                    state.phase.next_step()
                );
            }
            return rotate::cas_in_rotation(profiles, layout, &state, report);
        }
    }
    let ca =
        ensure_ca(layout, &layout.ca_dir(), &format!("{} etcd CA", spec.name), &profiles.ca, force, report, batch)?;
    let peer = if profiles.ca.separate_peer_ca {
        Some(ensure_ca(
            layout,
            &layout.peer_ca_dir(),
            &format!("{} etcd peer CA", spec.name),
            &profiles.ca,
            force,
            report,
            batch,
        )?)
    } else {
        if layout.peer_ca_dir().exists() {
            report.push(
                layout,
                &layout.peer_ca_dir(),
                Action::Note(
                    "unused: the profiles share one CA (separate_peer_ca = false); peers are now issued by ca/".into(),
                ),
            );
        }
        None
    };
    Ok(Cas::single(ca, peer))
}

pub(in crate::pki) fn write_manifest(
    spec: &ClusterSpec,
    profiles: &Profiles,
    layout: &PkiLayout,
    report: &mut IssueReport,
    batch: &mut AtomicBatch,
) -> Result<()> {
    let manifest = serde_json::json!({
        "cluster": spec.name,
        "peer_ca": if profiles.ca.separate_peer_ca { "separate" } else { "shared" },
        "peer_cert_allowed_cn": if profiles.ca.separate_peer_ca { None } else { Some(&profiles.ca.peer_common_name) },
        "nodes": spec.nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
        "clients": spec.clients,
    });
    let text = serde_json::to_string_pretty(&manifest).context("cannot serialize manifest.json")? + "\n";
    write_if_changed(layout, report, batch, &layout.manifest(), &text, CERT_MODE)?;
    write_if_changed(layout, report, batch, &layout.cluster_toml(), &spec.to_toml()?, CERT_MODE)
}

/// Issues (or completes) the PKI of `spec` in `out`. See [`PkiLayout`] for what goes where.
///
/// `force` replaces the CAs (the old ones are moved to `ca.old-N/`, `peer-ca.old-N/`) and so
/// reissues every leaf; it is the only way an existing CA is ever replaced.
pub fn issue(spec: &ClusterSpec, profiles: &Profiles, out: &Path, force: bool) -> Result<IssueReport> {
    if !profiles.ca.separate_peer_ca {
        check_client_not_reserved(spec, &profiles.ca.peer_common_name)?;
    }
    let layout = PkiLayout::new(out);
    ensure_dir(out)?;
    let mut report = IssueReport::default();
    // Everything is written into one batch and made durable and visible together at the end.
    let mut batch = AtomicBatch::new();
    let cas = load_or_create_cas(spec, profiles, &layout, force, &mut report, &mut batch)?;

    // The token: the description's when it has one, else the stored one, else a new random one.
    let token = match (&spec.token, read_opt(&layout.token())?) {
        (Some(t), _) => t.clone(),
        (None, Some(stored)) if !stored.trim().is_empty() => stored.trim().to_string(),
        (None, _) => cert::random_bytes(16).iter().map(|b| format!("{b:02x}")).collect(),
    };
    write_if_changed(&layout, &mut report, &mut batch, &layout.token(), &format!("{token}\n"), KEY_MODE)?;
    report.token = token;

    run_leaves(spec, profiles, &layout, &cas, Scope::Reconcile, &mut report, &mut batch)?;
    write_manifest(spec, profiles, &layout, &mut report, &mut batch)?;
    ensure_backup_keys(spec, &layout, &mut report, &mut batch)?;
    batch.commit()?;
    Ok(report)
}

/// Each node's ssh key for shipping its snapshots to the backup host (`[backup]`): made once
/// (an Ed25519 key in OpenSSH's format, `backup/<node>/id_ed25519` and `.pub`), kept
/// afterwards, like a CA: the backup host's `authorized_keys` lists it.
/// They go into the issuing run's batch: one more fsync each would double its time.
fn ensure_backup_keys(
    spec: &ClusterSpec,
    layout: &PkiLayout,
    report: &mut IssueReport,
    batch: &mut AtomicBatch,
) -> Result<()> {
    for node in &spec.nodes {
        let (key_path, pub_path) = layout.backup_key(&node.name);
        if key_path.is_file() && pub_path.is_file() {
            report.push(layout, &key_path, Action::Kept);
            continue;
        }
        for dir in [key_path.parent(), key_path.parent().and_then(Path::parent)].into_iter().flatten().rev() {
            ensure_dir(dir)?;
        }
        let mut key = ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519)
            .context("cannot make an Ed25519 key for the backups")?;
        key.set_comment(format!("etcd-backup@{}/{}", spec.name, node.name));
        let private = key.to_openssh(ssh_key::LineEnding::LF).context("cannot write the backup key")?;
        let public = key.public_key().to_openssh().context("cannot write the backup key's public half")?;
        batch.write(&key_path, private.as_bytes(), KEY_MODE)?;
        batch.write(&pub_path, format!("{public}\n").as_bytes(), CERT_MODE)?;
        report.push(layout, &key_path, Action::Created);
    }
    Ok(())
}

/// Reissues leaves under the existing CAs of the PKI in `out`, for the description stored
/// there (`cluster.toml`): every leaf, or only the server and peer certificates of `node`.
///
/// Every reissued leaf gets a new key and a new random serial number; the report has one
/// `REISSUED` line per certificate. During a CA rotation the leaves are signed by the CA that
/// signs in that phase (the old one until the reissue step, the new one after) and the trust
/// bundles are kept.
pub fn renew(out: &Path, profiles: &Profiles, node: Option<&str>) -> Result<IssueReport> {
    let layout = PkiLayout::new(out);
    let spec = stored_spec(&layout, "renew")?;
    let spec_path = layout.cluster_toml();
    if let Some(name) = node {
        if spec.node(name).is_none() {
            let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
            bail!("--node {name:?} is not a node of {}: choose one of {}", spec_path.display(), names.join(", "));
        }
    }
    let mut report = IssueReport::default();
    require_cas(&layout, profiles, "renew reissues under the existing CA")?;
    let mut batch = AtomicBatch::new();
    let cas = load_or_create_cas(&spec, profiles, &layout, false, &mut report, &mut batch)?;
    report.token = read_opt(&layout.token())?.map(|t| t.trim().to_string()).unwrap_or_default();
    run_leaves(&spec, profiles, &layout, &cas, Scope::Renew(node), &mut report, &mut batch)?;
    write_manifest(&spec, profiles, &layout, &mut report, &mut batch)?;
    batch.commit()?;
    Ok(report)
}

/// The description stored in a PKI directory (`cluster.toml`); `what` names the command in the
/// message when the directory was not made by `cargo xtask pki`.
pub(in crate::pki) fn stored_spec(layout: &PkiLayout, what: &str) -> Result<ClusterSpec> {
    let spec_path = layout.cluster_toml();
    if !spec_path.is_file() {
        bail!(
            "{} is missing: {what} works on a directory made by `cargo xtask pki`; issue it with `cargo xtask pki --cluster FILE --out {}`",
            spec_path.display(),
            layout.root.display()
        );
    }
    ClusterSpec::load(&spec_path)
}

/// Fails unless the CA directories the profiles need hold a certificate and a key.
pub(in crate::pki) fn require_cas(layout: &PkiLayout, profiles: &Profiles, why: &str) -> Result<()> {
    if let Some(state) = rotate::rotation_state(&layout.root)? {
        if state.phase == RotatePhase::Dropping {
            bail!("{}: {}", layout.rotation().display(), state.phase.next_step());
        }
    }
    for dir in [layout.ca_dir()].into_iter().chain(profiles.ca.separate_peer_ca.then(|| layout.peer_ca_dir())) {
        if !dir.join(CA_CERT).is_file() || !dir.join(CA_KEY).is_file() {
            bail!(
                "{} has no {CA_CERT} and {CA_KEY}: {why}; run `cargo xtask pki --cluster FILE --out {}` first",
                dir.display(),
                layout.root.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
name = "t"
clients = ["etcdctl"]
[[nodes]]
name = "a"
ips = ["10.9.0.1"]
"#;

    #[test]
    fn rerun_keeps_everything_and_a_san_change_reissues_one_node() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let profiles = Profiles::default();
        let spec = ClusterSpec::from_toml(SPEC, "t.toml").unwrap();
        let first = issue(&spec, &profiles, &out, false).unwrap();
        assert_eq!(first.action_of("nodes/a/server.crt"), Some(&Action::Issued));
        assert_eq!(first.issued().count(), 5, "{first}");
        assert_eq!(first.token.len(), 32);
        let ca = fs::read(out.join("ca/ca.crt")).unwrap();

        let second = issue(&spec, &profiles, &out, false).unwrap();
        assert_eq!(second.issued().count(), 0, "{second}");
        assert_eq!(second.token, first.token);
        assert_eq!(fs::read(out.join("ca/ca.crt")).unwrap(), ca);

        let moved = ClusterSpec::from_toml(&SPEC.replace("10.9.0.1", "10.9.0.2"), "t.toml").unwrap();
        let third = issue(&moved, &profiles, &out, false).unwrap();
        match third.action_of("nodes/a/server.crt") {
            Some(Action::Reissued(why)) => {
                assert!(why.contains("+IP:10.9.0.2") && why.contains("-IP:10.9.0.1"), "{why}")
            }
            other => panic!("server.crt not reissued: {other:?}"),
        }
        assert_eq!(third.action_of("clients/etcdctl/client.crt"), Some(&Action::Kept));
        assert_eq!(fs::read(out.join("ca/ca.crt")).unwrap(), ca);
    }

    #[test]
    fn a_half_ca_is_refused_and_force_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let profiles = Profiles::default();
        let spec = ClusterSpec::from_toml(SPEC, "t.toml").unwrap();
        issue(&spec, &profiles, &out, false).unwrap();
        let key = fs::read(out.join("ca/ca.key")).unwrap();
        fs::remove_file(out.join("ca/ca.crt")).unwrap();
        let msg = format!("{:#}", issue(&spec, &profiles, &out, false).unwrap_err());
        assert!(msg.contains("--force"), "{msg}");
        assert_eq!(fs::read(out.join("ca/ca.key")).unwrap(), key, "the CA key was touched");

        let report = issue(&spec, &profiles, &out, true).unwrap();
        assert!(matches!(report.action_of("ca/ca.crt"), Some(Action::Replaced { .. })), "{report}");
        assert_eq!(fs::read(out.join("ca.old-1/ca.key")).unwrap(), key);
        assert!(matches!(report.action_of("nodes/a/server.crt"), Some(Action::Reissued(_))));
    }

    #[test]
    fn shared_ca_puts_the_allowed_cn_on_peers() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let mut profiles = Profiles::default();
        profiles.ca.separate_peer_ca = false;
        let spec = ClusterSpec::from_toml(SPEC, "t.toml").unwrap();
        issue(&spec, &profiles, &out, false).unwrap();
        assert!(!out.join("peer-ca").exists());
        let peer = cert::first_cert(&fs::read_to_string(out.join("nodes/a/peer.crt")).unwrap()).unwrap();
        assert_eq!(peer.subject_cn.as_deref(), Some("etcd-peer"));
        let manifest = fs::read_to_string(out.join("manifest.json")).unwrap();
        assert!(manifest.contains("\"peer_cert_allowed_cn\": \"etcd-peer\""), "{manifest}");
        let bad = ClusterSpec::from_toml(&SPEC.replace("[\"etcdctl\"]", "[\"etcd-peer\"]"), "t.toml").unwrap();
        assert!(issue(&bad, &profiles, &dir.path().join("x"), false).is_err());
    }
}
