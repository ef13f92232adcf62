//! CA rotation on a running cluster, in three steps, each idempotent; a PKI directory and a step
//! in, an [`IssueReport`] out. etcd reads its trust files (`--trusted-ca-file`,
//! `--peer-trusted-ca-file`) only when it starts, but its leaf certificates on every new TLS
//! handshake; so the trust files change only in steps followed by a rolling restart, and the
//! leaves only in the step that needs none:
//!
//! 1. [`RotateStep::Add`]: a new CA is created in `ca.next/` (and a new peer CA in
//!    `peer-ca.next/` when peers have their own CA); every trust file (each node's `ca.crt` and
//!    `peer-ca.crt`, each client's `ca.crt`) becomes a bundle of the old and the new CA. Leaves
//!    are not touched. Then restart the nodes one at a time, so each trusts both CAs.
//! 2. [`RotateStep::Reissue`]: every leaf (server, peer, client) is reissued under the new CAs;
//!    the bundles stay. No restart: etcd serves the new certificates on new connections.
//! 3. [`RotateStep::Drop`]: the old CA directories are moved aside to `ca.old-N/` and
//!    `peer-ca.old-N/` (keys included: a CA key is never deleted), the new ones become `ca/` and
//!    `peer-ca/`, and every trust file holds the new CA alone. Then restart the nodes one at a
//!    time again: after that a certificate of the old CA is refused.
//!
//! The state lives in `rotation.json` in the PKI directory (written atomically, before the
//! files it governs change): `phase` is `added`, `reissued`, `dropping` (the drop step began and
//! did not finish: run it again) or `done`. A step already done does nothing new; a step whose
//! predecessor is not done is refused, naming the step that comes next. While a rotation is in
//! progress, `cargo xtask pki --cluster` and `pki renew` sign with the CA of the phase (old until
//! the reissue step, new from it on) and write the bundles, not single CAs; `--force` is refused.
//!
//! The state itself (`rotation.json`, the CAs of each phase) is `rotation.rs`.

pub mod rotation;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::cert::{first_cert, SigningCa};
use super::issue::{ensure_ca, free_old_name, require_cas, run_leaves, stored_spec, write_manifest, Scope};
use super::layout::{read_opt, Action, IssueReport, PkiLayout, CA_CERT};
use super::profiles::Profiles;
use super::rotation::{cas_in_rotation, load_existing, now_unix, write_state, CaId, Cas, RotatedCa};
pub use super::rotation::{rotation_state, RotatePhase, RotationState, ROTATION_FORMAT};
use crate::util::{AtomicBatch, Sha256Hex};

/// One step of a CA rotation (`cargo xtask pki rotate-ca DIR --step STEP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RotateStep {
    /// Create the new CA(s) and make every trust file a bundle of old + new; then restart
    /// the nodes one at a time
    #[value(alias = "begin")]
    Add,
    /// Reissue every leaf under the new CA(s); no restart needed
    Reissue,
    /// Keep the old CA(s) aside as ca.old-N/, make the new ones ca/ and peer-ca/, trust only
    /// them; then restart the nodes one at a time
    #[value(alias = "finish")]
    Drop,
}

impl fmt::Display for RotateStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RotateStep::Add => "add",
            RotateStep::Reissue => "reissue",
            RotateStep::Drop => "drop",
        })
    }
}

/// The common name of the CA that replaces `old`: the base name with the next generation
/// number (`demo etcd CA` -> `demo etcd CA 2` -> `demo etcd CA 3`), so the two CAs in a bundle
/// have different subjects.
fn next_common_name(base: &str, old: &SigningCa) -> String {
    let generation = old
        .info
        .subject_cn
        .as_deref()
        .and_then(|cn| cn.strip_prefix(base))
        .and_then(|rest| rest.strip_prefix(' '))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(1);
    format!("{base} {}", generation + 1)
}

/// Runs one step of a CA rotation on the PKI directory `dir` (made by `cargo xtask pki`; its
/// `cluster.toml` says which leaves exist). See the module documentation for the steps.
///
/// A step already done does nothing new (and says so); a step out of order is an error naming
/// the step that comes next. The report lists every file written, the CAs created or set
/// aside, and a `rotation.json` note with the phase and the next step.
pub fn rotate_ca(dir: &Path, profiles: &Profiles, step: RotateStep) -> Result<IssueReport> {
    let layout = PkiLayout::new(dir);
    let spec = stored_spec(&layout, "rotate-ca")?;
    let state = rotation_state(dir)?;
    let state_path = layout.rotation();
    let token = read_opt(&layout.token())?.map(|t| t.trim().to_string()).unwrap_or_default();
    let mut report = IssueReport { token, ..Default::default() };
    let nothing = |report: &mut IssueReport, why: String| {
        report.push(&layout, &state_path, Action::Note(why));
    };
    match (step, state) {
        (RotateStep::Add, None) => begin(&layout, &spec, profiles, &mut report)?,
        (RotateStep::Add, Some(s)) if s.phase == RotatePhase::Done => begin(&layout, &spec, profiles, &mut report)?,
        (RotateStep::Add, Some(s)) if s.phase == RotatePhase::Added => {
            // Done already; repeat only what an interrupted run may have left undone.
            nothing(&mut report, "the add step is done already; making sure every trust file holds old + new".into());
            let cas = cas_in_rotation(profiles, &layout, &s, &mut report)?;
            reconcile_leaves(&spec, profiles, &layout, &cas, &mut report)?;
            report.push(&layout, &state_path, Action::Note(s.summary()));
        }
        (RotateStep::Add, Some(s)) => nothing(&mut report, format!("the add step is done already; {}", s.summary())),
        (RotateStep::Reissue | RotateStep::Drop, None) => bail!(
            "no CA rotation in progress in {} (no {}): the first step is `cargo xtask pki rotate-ca {} --step add`",
            dir.display(),
            state_path.display(),
            dir.display()
        ),
        (RotateStep::Reissue, Some(mut s)) => match s.phase {
            RotatePhase::Added | RotatePhase::Reissued => {
                if s.phase == RotatePhase::Added {
                    s.phase = RotatePhase::Reissued;
                    write_state(&layout, &mut s, &mut report)?;
                } else {
                    nothing(&mut report, "the reissue step is done already; reissuing only leaves not issued by the new CA".into());
                }
                let cas = cas_in_rotation(profiles, &layout, &s, &mut report)?;
                reconcile_leaves(&spec, profiles, &layout, &cas, &mut report)?;
                report.push(&layout, &state_path, Action::Note(s.summary()));
            }
            RotatePhase::Dropping => bail!("{}: {}", state_path.display(), s.phase.next_step()),
            RotatePhase::Done => nothing(&mut report, format!("the rotation is finished, nothing to reissue; {}", s.summary())),
        },
        (RotateStep::Drop, Some(s)) => match s.phase {
            RotatePhase::Added => bail!(
                "{}: the leaves are still issued by the old CA, dropping it now would break every connection; \
                 the next step is `cargo xtask pki rotate-ca {} --step reissue` (after the rolling restart that follows add)",
                state_path.display(),
                dir.display()
            ),
            RotatePhase::Reissued | RotatePhase::Dropping => finish(&layout, &spec, profiles, s, &mut report)?,
            RotatePhase::Done => nothing(&mut report, format!("the drop step is done already; {}", s.summary())),
        },
    }
    Ok(report)
}

fn begin(
    layout: &PkiLayout,
    spec: &super::cluster::ClusterSpec,
    profiles: &Profiles,
    report: &mut IssueReport,
) -> Result<()> {
    require_cas(layout, profiles, "a rotation replaces an existing CA")?;
    let mut roles = vec![(layout.ca_dir(), format!("{} etcd CA", spec.name))];
    if profiles.ca.separate_peer_ca {
        roles.push((layout.peer_ca_dir(), format!("{} etcd peer CA", spec.name)));
    }
    let mut cas = Vec::new();
    let mut pairs = Vec::new();
    for (dir, base) in roles {
        let mut batch = AtomicBatch::new();
        let old = ensure_ca(layout, &dir, &base, &profiles.ca, false, report, &mut batch)?;
        // Reused when an interrupted add step created it already.
        let next = PkiLayout::next_dir(&dir);
        let new = ensure_ca(layout, &next, &next_common_name(&base, &old), &profiles.ca, false, report, &mut batch)?;
        // Committed before the state names it: cas_in_rotation reads both CAs back from disk.
        batch.commit()?;
        if new.info.der == old.info.der {
            bail!(
                "{} holds the same CA as {}: remove the copy {} (never the original)",
                next.display(),
                dir.display(),
                next.display()
            );
        }
        cas.push(RotatedCa {
            dir: rel_name(&dir),
            next: rel_name(&next),
            old: CaId::of(&old),
            new: CaId::of(&new),
            kept_as: None,
        });
        pairs.push((old, new));
    }
    let now = now_unix();
    let mut state =
        RotationState { format: ROTATION_FORMAT, phase: RotatePhase::Added, started_unix: now, updated_unix: now, cas };
    write_state(layout, &mut state, report)?;
    let leaves = cas_in_rotation(profiles, layout, &state, &mut IssueReport::default())?;
    let mut batch = AtomicBatch::new();
    run_leaves(spec, profiles, layout, &leaves, Scope::Reconcile, report, &mut batch)?;
    write_manifest(spec, profiles, layout, report, &mut batch)?;
    batch.commit()?;
    Ok(())
}

/// Issues what is missing or stale under `cas`, durable before it returns.
fn reconcile_leaves(
    spec: &super::cluster::ClusterSpec,
    profiles: &Profiles,
    layout: &PkiLayout,
    cas: &Cas,
    report: &mut IssueReport,
) -> Result<()> {
    let mut batch = AtomicBatch::new();
    run_leaves(spec, profiles, layout, cas, Scope::Reconcile, report, &mut batch)?;
    batch.commit()
}

fn rel_name(dir: &Path) -> String {
    dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

fn finish(
    layout: &PkiLayout,
    spec: &super::cluster::ClusterSpec,
    profiles: &Profiles,
    mut state: RotationState,
    report: &mut IssueReport,
) -> Result<()> {
    let state_path = layout.rotation();
    if state.phase == RotatePhase::Reissued {
        // A leaf still issued by the old CA (restored from a copy, or a reissue step that was
        // interrupted) would be refused once the old CA is gone: reissue it under the new one.
        let cas = cas_in_rotation(profiles, layout, &state, &mut IssueReport::default())?;
        reconcile_leaves(spec, profiles, layout, &cas, report)?;
        state.phase = RotatePhase::Dropping;
        write_state(layout, &mut state, report)?;
    } else {
        report.push(layout, &state_path, Action::Note("resuming an interrupted drop step".into()));
    }
    let mut new_cas = Vec::new();
    for c in &mut state.cas {
        let (cur, next) = (layout.root.join(&c.dir), layout.root.join(&c.next));
        if next.exists() {
            if cur.exists() {
                let ca = load_existing(&cur, &state_path)?;
                if !c.old.matches(&ca) {
                    bail!(
                        "{}/{CA_CERT} is not the old CA {} recorded (serial {}); nothing was moved: put the old CA back in {}",
                        cur.display(),
                        state_path.display(),
                        c.old.serial,
                        cur.display()
                    );
                }
                let aside = free_old_name(&cur)?;
                fs::rename(&cur, &aside)
                    .with_context(|| format!("cannot move {} aside to {}", cur.display(), aside.display()))?;
            }
            fs::rename(&next, &cur).with_context(|| {
                format!(
                    "cannot move {} to {}: move it by hand, then run the drop step again",
                    next.display(),
                    cur.display()
                )
            })?;
        }
        let ca = load_existing(&cur, &state_path)?;
        if !c.new.matches(&ca) {
            bail!(
                "{}/{CA_CERT} is not the new CA {} recorded (serial {}) and {} is gone: restore the new CA into {}",
                cur.display(),
                state_path.display(),
                c.new.serial,
                next.display(),
                cur.display()
            );
        }
        let kept = find_kept(&cur, &c.old)?;
        let old_name = kept.as_deref().map(rel_name);
        report.push(
            layout,
            &cur.join(CA_CERT),
            match &old_name {
                Some(old) => Action::Replaced { old: old.clone() },
                None => {
                    Action::Note(format!("the old CA (serial {}) is not among the *.old-N directories", c.old.serial))
                }
            },
        );
        c.kept_as = old_name;
        new_cas.push(ca);
    }
    let mut new_cas = new_cas.into_iter();
    let Some(ca) = new_cas.next() else {
        bail!("{}: no CA listed", state_path.display());
    };
    let cas = Cas::single(ca, new_cas.next());
    reconcile_leaves(spec, profiles, layout, &cas, report)?;
    state.phase = RotatePhase::Done;
    write_state(layout, &mut state, report)?;
    Ok(())
}

/// The `<dir>.old-N` directory that holds the CA `id`, if any.
fn find_kept(dir: &Path, id: &CaId) -> Result<Option<PathBuf>> {
    let Some(parent) = dir.parent() else { return Ok(None) };
    let prefix = format!("{}.old-", rel_name(dir));
    let mut found = Vec::new();
    for entry in fs::read_dir(parent).with_context(|| format!("cannot list {}", parent.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", parent.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix(&prefix).and_then(|n| n.parse::<u64>().ok()) else { continue };
        let Some(pem) = read_opt(&entry.path().join(CA_CERT))? else { continue };
        if first_cert(&pem).map(|info| Sha256Hex::of_bytes(&info.der).to_string() == id.sha256).unwrap_or(false) {
            found.push((n, entry.path()));
        }
    }
    found.sort();
    Ok(found.pop().map(|(_, p)| p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::cluster::ClusterSpec;
    use crate::pki::issue::issue;

    const SPEC: &str = r#"
name = "t"
clients = ["etcdctl"]
[[nodes]]
name = "a"
ips = ["10.9.0.1"]
"#;

    fn cn(path: &Path) -> Vec<String> {
        crate::pki::cert::parse_certs(&fs::read_to_string(path).unwrap())
            .unwrap()
            .into_iter()
            .map(|c| c.subject_cn.unwrap_or_default())
            .collect()
    }

    #[test]
    fn a_shared_ca_rotates_alone_and_steps_are_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let mut profiles = Profiles::default();
        profiles.ca.separate_peer_ca = false;
        let spec = ClusterSpec::from_toml(SPEC, "t.toml").unwrap();
        issue(&spec, &profiles, &out, false).unwrap();
        let msg = format!("{:#}", rotate_ca(&out, &profiles, RotateStep::Drop).unwrap_err());
        assert!(msg.contains("--step add"), "{msg}");

        let added = rotate_ca(&out, &profiles, RotateStep::Add).unwrap();
        assert_eq!(added.action_of("ca.next/ca.crt"), Some(&Action::Issued), "{added}");
        assert!(!out.join("peer-ca.next").exists());
        for f in ["nodes/a/ca.crt", "nodes/a/peer-ca.crt", "clients/etcdctl/ca.crt"] {
            assert_eq!(cn(&out.join(f)), ["t etcd CA", "t etcd CA 2"], "{f}");
        }
        let msg = format!("{:#}", rotate_ca(&out, &profiles, RotateStep::Drop).unwrap_err());
        assert!(msg.contains("--step reissue"), "{msg}");
        // The profiles must not change under a rotation.
        let msg = format!("{:#}", rotate_ca(&out, &Profiles::default(), RotateStep::Reissue).unwrap_err());
        assert!(msg.contains("separate_peer_ca"), "{msg}");
        // --force is refused.
        let msg = format!("{:#}", issue(&spec, &profiles, &out, true).unwrap_err());
        assert!(msg.contains("rotation is in progress"), "{msg}");

        rotate_ca(&out, &profiles, RotateStep::Reissue).unwrap();
        assert_eq!(cn(&out.join("nodes/a/peer.crt")), ["etcd-peer"]);
        let peer = first_cert(&fs::read_to_string(out.join("nodes/a/peer.crt")).unwrap()).unwrap();
        assert_eq!(peer.issuer_cn.as_deref(), Some("t etcd CA 2"));
        let dropped = rotate_ca(&out, &profiles, RotateStep::Drop).unwrap();
        assert_eq!(dropped.action_of("ca/ca.crt"), Some(&Action::Replaced { old: "ca.old-1".into() }), "{dropped}");
        assert_eq!(cn(&out.join("nodes/a/peer-ca.crt")), ["t etcd CA 2"]);
        let state = rotation_state(&out).unwrap().unwrap();
        assert_eq!(state.phase, RotatePhase::Done);
        assert_eq!(state.cas.len(), 1);
        assert_eq!(state.cas[0].kept_as.as_deref(), Some("ca.old-1"));

        // A second rotation counts on.
        rotate_ca(&out, &profiles, RotateStep::Add).unwrap();
        assert_eq!(cn(&out.join("nodes/a/ca.crt")), ["t etcd CA 2", "t etcd CA 3"]);
    }

    #[test]
    fn an_interrupted_drop_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let profiles = Profiles::default();
        let spec = ClusterSpec::from_toml(SPEC, "t.toml").unwrap();
        issue(&spec, &profiles, &out, false).unwrap();
        let old_key = fs::read(out.join("ca/ca.key")).unwrap();
        rotate_ca(&out, &profiles, RotateStep::Add).unwrap();
        rotate_ca(&out, &profiles, RotateStep::Reissue).unwrap();
        let new_key = fs::read(out.join("ca.next/ca.key")).unwrap();
        // Simulate a drop that stopped after moving the old CA aside.
        let mut state = rotation_state(&out).unwrap().unwrap();
        state.phase = RotatePhase::Dropping;
        write_state(&PkiLayout::new(&out), &mut state, &mut IssueReport::default()).unwrap();
        fs::rename(out.join("ca"), out.join("ca.old-1")).unwrap();
        let msg = format!("{:#}", issue(&spec, &profiles, &out, false).unwrap_err());
        assert!(msg.contains("--step drop"), "{msg}");
        assert!(!out.join("ca").exists(), "issue created a CA during an interrupted drop");

        let report = rotate_ca(&out, &profiles, RotateStep::Drop).unwrap();
        assert_eq!(report.action_of("ca/ca.crt"), Some(&Action::Replaced { old: "ca.old-1".into() }), "{report}");
        assert_eq!(fs::read(out.join("ca.old-1/ca.key")).unwrap(), old_key);
        assert_eq!(fs::read(out.join("ca/ca.key")).unwrap(), new_key);
        assert_eq!(cn(&out.join("nodes/a/ca.crt")), ["t etcd CA 2"]);
        assert_eq!(cn(&out.join("nodes/a/peer-ca.crt")), ["t etcd peer CA 2"]);
        assert!(out.join("peer-ca.old-1/ca.key").is_file());
        assert_eq!(rotation_state(&out).unwrap().unwrap().phase, RotatePhase::Done);
        // Issuing afterwards keeps everything.
        assert_eq!(issue(&spec, &profiles, &out, false).unwrap().issued().count(), 0);
    }
}
