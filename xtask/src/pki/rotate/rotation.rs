//! The state of a CA rotation: `rotation.json` in the PKI directory (its phase and the CAs it
//! rotates), and which CAs sign and what every trust file holds while it is under way ([`Cas`]).
//! In: a PKI directory. Out: the state read and checked, or written atomically; the CAs of the
//! phase. Issuing (`issue.rs`) asks it which CAs sign; the rotation's steps (`rotate.rs`) move
//! it from phase to phase.

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::pki::cert::SigningCa;
use crate::pki::layout::{read_opt, Action, IssueReport, PkiLayout, CA_CERT, CA_KEY, CERT_MODE};
use crate::pki::profiles::Profiles;
use crate::util::{write_atomic, Sha256Hex};

/// Version of the `rotation.json` format.
pub const ROTATION_FORMAT: u32 = 1;

/// Where a rotation stands (`phase` in `rotation.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotatePhase {
    /// The new CAs exist and every trust file holds old + new; leaves are still the old CA's.
    Added,
    /// Every leaf is issued by the new CAs; trust files still hold old + new.
    Reissued,
    /// The drop step began and did not finish; run it again.
    Dropping,
    /// The last rotation finished: the new CAs are `ca/` and `peer-ca/`, and alone trusted.
    Done,
}

impl fmt::Display for RotatePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RotatePhase::Added => "added",
            RotatePhase::Reissued => "reissued",
            RotatePhase::Dropping => "dropping",
            RotatePhase::Done => "done",
        })
    }
}

impl RotatePhase {
    /// What the operator does next, one sentence.
    pub fn next_step(self) -> &'static str {
        match self {
            RotatePhase::Added => {
                "copy the trust files (ca.crt, peer-ca.crt) to every node and client, restart the etcd nodes one at a time so each loads the old + new bundles, then run `cargo xtask pki rotate-ca DIR --step reissue`"
            }
            RotatePhase::Reissued => {
                "no restart needed (etcd serves the new certificates on new connections); copy the new leaves to every node and client, then run `cargo xtask pki rotate-ca DIR --step drop`"
            }
            RotatePhase::Dropping => "the drop step was interrupted: run `cargo xtask pki rotate-ca DIR --step drop` again",
            RotatePhase::Done => {
                "copy the trust files (ca.crt, peer-ca.crt) to every node and client and restart the etcd nodes one at a time so each forgets the old CA (if not done yet); the rotation is finished"
            }
        }
    }
    /// Whether a rotation is under way (every phase but `done`).
    pub fn in_progress(self) -> bool {
        self != RotatePhase::Done
    }
}

/// A CA identified in `rotation.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaId {
    pub subject: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// SHA-256 of the certificate's DER, lowercase hex.
    pub sha256: String,
}

impl CaId {
    pub(in crate::pki) fn of(ca: &SigningCa) -> CaId {
        CaId {
            subject: ca.info.subject.clone(),
            serial: ca.info.serial.clone(),
            sha256: Sha256Hex::of_bytes(&ca.info.der).to_string(),
        }
    }
    pub(in crate::pki) fn matches(&self, ca: &SigningCa) -> bool {
        Sha256Hex::of_bytes(&ca.info.der).to_string() == self.sha256
    }
}

/// One CA being rotated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotatedCa {
    /// The CA directory, relative to the PKI directory: `ca` or `peer-ca`.
    pub dir: String,
    /// Where the new CA waits until the drop step: `ca.next` or `peer-ca.next`.
    pub next: String,
    pub old: CaId,
    pub new: CaId,
    /// Where the drop step put the old CA (`ca.old-N`), once it did.
    pub kept_as: Option<String>,
}

/// `rotation.json`: the state of the current or last CA rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationState {
    /// [`ROTATION_FORMAT`].
    pub format: u32,
    pub phase: RotatePhase,
    /// Unix seconds when the add step created the state, and when it last changed.
    pub started_unix: i64,
    pub updated_unix: i64,
    /// `ca` first, then `peer-ca` when peers have their own CA.
    pub cas: Vec<RotatedCa>,
}

impl RotationState {
    /// One line for reports: the phase and what comes next.
    pub fn summary(&self) -> String {
        let dirs: Vec<String> = self
            .cas
            .iter()
            .map(|c| match (&c.kept_as, self.phase) {
                (Some(old), RotatePhase::Done) => format!("{}/ is the new CA, the old one is kept in {old}/", c.dir),
                _ => format!("{}/ old, {}/ new", c.dir, c.next),
            })
            .collect();
        format!("CA rotation phase {} ({}); next: {}", self.phase, dirs.join("; "), self.phase.next_step())
    }
}

pub(in crate::pki) fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Reads `rotation.json` of the PKI directory `dir`; `None` when there is none.
pub fn rotation_state(dir: &Path) -> Result<Option<RotationState>> {
    let path = PkiLayout::new(dir).rotation();
    let Some(text) = read_opt(&path)? else {
        return Ok(None);
    };
    let state: RotationState = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a CA rotation state: restore it from a backup (it is rewritten by `cargo xtask pki rotate-ca`)",
            path.display()
        )
    })?;
    if state.format != ROTATION_FORMAT {
        bail!("{}: format {} is not {ROTATION_FORMAT}: use the xtask that wrote it", path.display(), state.format);
    }
    let known = [("ca", "ca.next"), ("peer-ca", "peer-ca.next")];
    if state.cas.is_empty()
        || state.cas.iter().enumerate().any(|(i, c)| known.get(i) != Some(&(c.dir.as_str(), c.next.as_str())))
    {
        bail!(
            "{}: cas must list {{dir = \"ca\", next = \"ca.next\"}} and optionally {{dir = \"peer-ca\", next = \"peer-ca.next\"}}, in that order: restore it from a backup",
            path.display()
        );
    }
    Ok(Some(state))
}

pub(in crate::pki) fn write_state(
    layout: &PkiLayout,
    state: &mut RotationState,
    report: &mut IssueReport,
) -> Result<()> {
    state.updated_unix = now_unix();
    let text = serde_json::to_string_pretty(state).context("cannot serialize rotation.json")? + "\n";
    write_atomic(&layout.rotation(), text.as_bytes(), CERT_MODE)?;
    report.push(layout, &layout.rotation(), Action::Note(state.summary()));
    Ok(())
}

/// Loads the CA in `dir`, which must exist (a rotation never creates one outside its add step).
pub(in crate::pki) fn load_existing(dir: &Path, state_path: &Path) -> Result<SigningCa> {
    let cert = read_opt(&dir.join(CA_CERT))?;
    let key = read_opt(&dir.join(CA_KEY))?;
    match (cert, key) {
        (Some(cert), Some(key)) => SigningCa::load(&cert, &key, &dir.display().to_string()),
        _ => bail!(
            "{} lacks {CA_CERT} or {CA_KEY} although {} says a CA rotation uses it: restore the directory from a backup (a CA is never recreated)",
            dir.display(),
            state_path.display()
        ),
    }
}

fn bundle(old: &SigningCa, new: &SigningCa) -> String {
    let mut out = String::new();
    for pem in [&old.cert_pem, &new.cert_pem] {
        out.push_str(pem);
        if !pem.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// The CAs of a rotation in phase `added` or `reissued`: signing with the old CAs before the
/// reissue step and the new ones from it on; trust files hold old + new.
pub(in crate::pki) fn cas_in_rotation(
    profiles: &Profiles,
    layout: &PkiLayout,
    state: &RotationState,
    report: &mut IssueReport,
) -> Result<Cas> {
    let state_path = layout.rotation();
    if state.phase == RotatePhase::Dropping {
        bail!("{}: {}", state_path.display(), RotatePhase::Dropping.next_step());
    }
    if !state.phase.in_progress() {
        bail!("{}: the rotation is finished", state_path.display());
    }
    if profiles.ca.separate_peer_ca != (state.cas.len() == 2) {
        bail!(
            "{} rotates {} CA(s) but the profiles say separate_peer_ca = {}: finish the rotation with the profiles it began with, then change them",
            state_path.display(),
            state.cas.len(),
            profiles.ca.separate_peer_ca
        );
    }
    let mut pairs = Vec::new();
    for c in &state.cas {
        let (old_dir, new_dir) = (layout.root.join(&c.dir), layout.root.join(&c.next));
        let old = load_existing(&old_dir, &state_path)?;
        let new = load_existing(&new_dir, &state_path)?;
        for (ca, id, dir) in [(&old, &c.old, &old_dir), (&new, &c.new, &new_dir)] {
            if !id.matches(ca) {
                bail!(
                    "{}/{CA_CERT} is not the CA {} recorded (serial {}): restore the directory, or restore {} from the same backup",
                    dir.display(),
                    state_path.display(),
                    id.serial,
                    state_path.display()
                );
            }
        }
        report.push(layout, &old_dir.join(CA_CERT), Action::Kept);
        report.push(layout, &new_dir.join(CA_CERT), Action::Kept);
        pairs.push((old, new));
    }
    let mut pairs = pairs.into_iter();
    let Some((old, new)) = pairs.next() else {
        bail!("{}: no CA listed", state_path.display());
    };
    let trust = bundle(&old, &new);
    let peer_pair = pairs.next();
    let peer_trust = peer_pair.as_ref().map(|(o, n)| bundle(o, n)).unwrap_or_else(|| trust.clone());
    let new_signs = state.phase == RotatePhase::Reissued;
    let pick = |(old, new): (SigningCa, SigningCa)| if new_signs { new } else { old };
    Ok(Cas { ca: pick((old, new)), peer: peer_pair.map(pick), trust, peer_trust })
}

/// The CAs a run signs with, and what the trust files must hold.
pub(in crate::pki) struct Cas {
    /// Signs server and client certificates.
    pub ca: SigningCa,
    /// Signs peer certificates (`None`: `ca` does).
    pub peer: Option<SigningCa>,
    /// The content of every `ca.crt` (nodes and clients): one CA, or old + new during a rotation.
    pub trust: String,
    /// The content of every node's `peer-ca.crt`.
    pub peer_trust: String,
}

impl Cas {
    /// No rotation: each trust file holds the one CA that signs.
    pub fn single(ca: SigningCa, peer: Option<SigningCa>) -> Cas {
        let trust = ca.cert_pem.clone();
        let peer_trust = peer.as_ref().unwrap_or(&ca).cert_pem.clone();
        Cas { ca, peer, trust, peer_trust }
    }
    pub(in crate::pki) fn peer(&self) -> &SigningCa {
        self.peer.as_ref().unwrap_or(&self.ca)
    }
}
