//! Revocation: the record of revoked certificates (`revoked.json`) in, two CRLs out
//! (`crl.pem`, signed by the CA of servers and clients, for `--client-crl-file`;
//! `peer-crl.pem`, signed by the peer CA, or by the one CA when it is shared, for
//! `--peer-crl-file`), copied into every `nodes/<node>/` so that they travel with the
//! certificates. `cargo xtask pki revoke` ([`revoke`]) adds a serial; issuing, `renew` and every
//! rotation step keep the CRLs present, signed by the CA that signs in that phase and fresh.
//!
//! Why two files: etcd 3.4.9 (`pkg/transport/listener_tls.go`, `checkCRL`) re-reads the file at
//! every handshake and compares serial numbers only: it checks neither the CRL's signature, nor
//! its issuer, nor its next-update. One file per listener keeps each CRL a standard one (every
//! serial issued by its signer) while etcd refuses what it lists on the right port.
//!
//! Why at the root and not in `ca/`: a CA directory is replaced whole by `--force` and by a
//! rotation's drop step; the record and the CRLs outlive it. Serials of a CA set aside stay
//! listed (random 16-byte serials: they never match another certificate).

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::cert::{self, LeafRequest, SigningCa};
use super::{ensure_leaf, load_or_create_cas, require_cas, stored_spec};
use crate::pki::layout::{read_opt, Action, IssueReport, PkiLayout, CERT_MODE};
use crate::pki::profiles::Profiles;
use crate::pki::rotation::Cas;
use crate::util::AtomicBatch;

/// The CRL of the CA that issues servers and clients (`--client-crl-file`).
pub const CRL: &str = "crl.pem";
/// The CRL of the peer CA (`--peer-crl-file`).
pub const PEER_CRL: &str = "peer-crl.pem";
/// The record of every revocation, kept so that re-signing never forgets a serial.
pub const REVOKED: &str = "revoked.json";
/// A CRL's validity (this-update to next-update). Issuing (`pki --cluster`), `renew` and `revoke`
/// re-sign it when less than half is left, well before `pki check` warns (`--warn-days`, 30 by
/// default) or fails (past).
pub const CRL_DAYS: i64 = 90;

/// Which CA issued a revoked certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Signer {
    /// `ca/`: servers and clients (and peers when the CA is shared).
    Ca,
    /// `peer-ca/`.
    PeerCa,
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Lowercase hex, as [`cert::CertInfo::serial`].
    pub serial: String,
    pub signer: Signer,
    /// The certificate's path in the PKI when it was revoked, e.g. `clients/alice/client.crt`.
    pub path: String,
    pub subject: String,
    pub reason: Reason,
    /// Unix seconds.
    pub revoked_at: i64,
}

/// Why a certificate is revoked (RFC 5280 reason codes etcd's operators need).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    KeyCompromise,
    Superseded,
    CessationOfOperation,
    AffiliationChanged,
    Unspecified,
}

impl Reason {
    fn code(self) -> RevocationReason {
        match self {
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
            Reason::AffiliationChanged => RevocationReason::AffiliationChanged,
            Reason::Unspecified => RevocationReason::Unspecified,
        }
    }
}

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Client(String),
    Server(String),
    Peer(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Client(n) => write!(f, "client {n:?}"),
            Target::Server(n) => write!(f, "server certificate of node {n:?}"),
            Target::Peer(n) => write!(f, "peer certificate of node {n:?}"),
        }
    }
}

/// Reads `revoked.json` (absent: nothing revoked).
pub fn read_record(layout: &PkiLayout) -> Result<Vec<Revoked>> {
    let path = layout.root.join(REVOKED);
    match read_opt(&path)? {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(&text).with_context(|| {
            format!("{}: not a list of revocations ({{serial, signer, path, subject, reason, revoked_at}}); restore it from a backup of the PKI directory", path.display())
        }),
    }
}

/// What a CRL file says, read back.
#[derive(Debug, Clone)]
pub struct CrlInfo {
    pub issuer: String,
    pub this_update: i64,
    pub next_update: Option<i64>,
    /// Lowercase hex serials.
    pub serials: BTreeSet<String>,
    /// Whether its signature verifies with the given CA (None: no CA given).
    pub signed_by_ca: Option<bool>,
}

/// Parses a PEM CRL; `ca`, when given, is the CA whose signature it must carry.
pub fn read_crl(pem: &str, ca: Option<&cert::CertInfo>) -> Result<CrlInfo> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| anyhow!("not PEM: {e}"))?;
    if block.label != "X509 CRL" {
        bail!("a PEM block {:?}, not \"X509 CRL\"", block.label);
    }
    let (_, crl) = x509_parser::parse_x509_crl(&block.contents).map_err(|e| anyhow!("not a CRL: {e}"))?;
    let signed_by_ca = match ca {
        None => None,
        Some(ca) => {
            use x509_parser::prelude::FromDer;
            let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&ca.spki)
                .map_err(|e| anyhow!("the CA's public key is unreadable: {e}"))?;
            Some(crl.issuer().to_string() == ca.subject && crl.verify_signature(&spki).is_ok())
        }
    };
    Ok(CrlInfo {
        issuer: crl.issuer().to_string(),
        this_update: crl.last_update().timestamp(),
        next_update: crl.next_update().map(|t| t.timestamp()),
        serials: crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().iter().map(|b| format!("{b:02x}")).collect())
            .collect(),
        signed_by_ca,
    })
}

/// A CRL signed by `ca` listing `entries`, valid from now for [`CRL_DAYS`].
pub fn sign_crl(ca: &SigningCa, entries: &[&Revoked]) -> Result<String> {
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let mut revoked_certs = Vec::new();
    for e in entries {
        let bytes =
            hex_bytes(&e.serial).with_context(|| format!("serial {:?} of {} in {REVOKED}", e.serial, e.path))?;
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&bytes),
            revocation_time: OffsetDateTime::from_unix_timestamp(e.revoked_at).unwrap_or(now),
            reason_code: Some(e.reason.code()),
            invalidity_date: None,
        });
    }
    // The CRL number only grows: milliseconds since the epoch.
    let number = (now.unix_timestamp_nanos() / 1_000_000) as u64;
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(5),
        next_update: now + time::Duration::days(CRL_DAYS),
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&ca.issuer).map_err(|e| anyhow!("cannot sign a CRL with {}: {e}", ca.info.subject))?;
    crl.pem().map_err(|e| anyhow!("cannot encode a CRL as PEM: {e}"))
}

fn hex_bytes(s: &str) -> Result<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        bail!("not an even number of hex digits");
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("not hex")).collect()
}

/// Makes `crl.pem` and `peer-crl.pem` at the root and in every node's directory hold a CRL that
/// lists exactly the recorded serials of its signer, signed by the CA that signs now, with at
/// least half its validity left; re-signs otherwise. `renew` does not re-sign a CRL that is still
/// good: the files an operator must copy out stay the leaves.
pub(in crate::pki) fn ensure_crls(
    layout: &PkiLayout,
    nodes: &[String],
    cas: &Cas,
    record: &[Revoked],
    report: &mut IssueReport,
    batch: &mut AtomicBatch,
) -> Result<()> {
    let peer_signer = if cas.peer.is_some() { Signer::PeerCa } else { Signer::Ca };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut client_pem = String::new();
    for (file, ca, signer) in [(CRL, &cas.ca, Signer::Ca), (PEER_CRL, cas.peer(), peer_signer)] {
        let entries: Vec<&Revoked> = record.iter().filter(|r| r.signer == signer).collect();
        let want: BTreeSet<String> = entries.iter().map(|r| r.serial.clone()).collect();
        let path = layout.root.join(file);
        let existing = read_opt(&path)?;
        let why = match &existing {
            None => None,
            Some(pem) => match read_crl(pem, Some(&ca.info)) {
                Err(e) => Some(format!("unreadable ({e:#})")),
                Ok(info) if info.signed_by_ca != Some(true) => Some("not signed by the CA that signs now".into()),
                Ok(info) if info.serials != want => Some("its serials differ from revoked.json".into()),
                Ok(info) if info.next_update.unwrap_or(0) - now < CRL_DAYS * 86_400 / 2 => {
                    Some("less than half its validity left".into())
                }
                Ok(_) => None,
            },
        };
        // The shared CA: one CRL, written twice.
        let pem = match (&existing, &why) {
            (Some(pem), None) => {
                report.push(layout, &path, Action::Kept);
                pem.clone()
            }
            _ if file == PEER_CRL && peer_signer == Signer::Ca && !client_pem.is_empty() => client_pem.clone(),
            _ => sign_crl(ca, &entries)?,
        };
        if existing.as_deref() != Some(pem.as_str()) {
            batch.write(&path, pem.as_bytes(), CERT_MODE)?;
            report.push(layout, &path, if why.is_some() { Action::Updated } else { Action::Created });
        }
        for node in nodes {
            super::write_if_changed(layout, report, batch, &layout.node_dir(node).join(file), &pem, CERT_MODE)?;
        }
        if file == CRL {
            client_pem = pem;
        }
    }
    Ok(())
}

/// Revoke one certificate without a new CA: its serial joins revoked.json and the CRL of the
/// CA that issued it (crl.pem: servers and clients, for --client-crl-file; peer-crl.pem: peers,
/// for --peer-crl-file), re-signed for 90 days and copied into every nodes/<node>/; then the
/// certificate is reissued (new key, new serial) unless --no-reissue. Copy each node's
/// crl.pem and peer-crl.pem into place (write beside, rename): a host bundle's etcd reads them
/// at the next handshake, no restart; the portable unit (LoadCredential=) needs a rolling
/// restart. Revoking an already revoked serial changes nothing.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// A PKI directory made by `cargo xtask pki`
    pub dir: PathBuf,
    /// Revoke this client identity's certificate (clients/NAME/client.crt)
    #[arg(long, value_name = "NAME", conflicts_with_all = ["node", "kind"], required_unless_present = "node")]
    pub client: Option<String>,
    /// Revoke a certificate of this node (with --kind)
    #[arg(long, value_name = "NAME", requires = "kind")]
    pub node: Option<String>,
    /// Which certificate of --node: server (nodes/NAME/server.crt) or peer (nodes/NAME/peer.crt)
    #[arg(long, value_enum, value_name = "KIND")]
    pub kind: Option<RevokeKind>,
    /// The reason recorded in the CRL
    #[arg(long, value_enum, value_name = "REASON", default_value = "key-compromise")]
    pub reason: Reason,
    /// Only when the certificate has this serial (hex, as `openssl x509 -noout -serial`), or
    /// it is already revoked: makes a scripted re-run a no-op instead of revoking the
    /// reissued certificate
    #[arg(long, value_name = "HEX")]
    pub serial: Option<String>,
    /// Do not reissue the revoked certificate (the identity is retired)
    #[arg(long)]
    pub no_reissue: bool,
}

/// Which certificate of a node `pki revoke --node` revokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RevokeKind {
    Server,
    Peer,
}

impl RevokeArgs {
    pub fn run(self, profiles: &Profiles) -> Result<()> {
        let RevokeArgs { dir, client, node, kind, reason, serial, no_reissue } = self;
        let target = match (client, node, kind) {
            (Some(id), _, _) => Target::Client(id),
            (None, Some(n), Some(RevokeKind::Server)) => Target::Server(n),
            (None, Some(n), Some(RevokeKind::Peer)) => Target::Peer(n),
            _ => bail!("say what to revoke: --client NAME, or --node NAME --kind server|peer"),
        };
        let report = revoke(&dir, profiles, &target, reason, no_reissue, serial.as_deref())
            .with_context(|| format!("cannot revoke the {target} in {}", dir.display()))?;
        print!("{report}");
        println!(
            "{}: copy every nodes/<node>/crl.pem and peer-crl.pem into place (host bundle: no restart; portable unit: restart node by node){}",
            dir.display(),
            if no_reissue { "" } else { ", and any reissued certificate to its owner" }
        );
        Ok(())
    }
}

/// Revokes `target`'s current certificate: its serial joins `revoked.json` and the CRL of the
/// CA that issued it (re-signed, copied into every node directory), and, unless `no_reissue`,
/// the certificate is reissued (new key, new serial). Revoking a certificate that is already
/// revoked changes nothing (with `--no-reissue` twice, or `expect_serial` of one done before).
pub fn revoke(
    out: &std::path::Path,
    profiles: &Profiles,
    target: &Target,
    reason: Reason,
    no_reissue: bool,
    expect_serial: Option<&str>,
) -> Result<IssueReport> {
    let layout = PkiLayout::new(out);
    let spec = stored_spec(&layout, "revoke")?;
    let spec_path = layout.cluster_toml();
    let (stem, shared_or_peer): (PathBuf, bool) = match target {
        Target::Client(id) => {
            if !spec.clients.contains(id) {
                bail!(
                    "--client {id:?} is not a client of {}: choose one of {}",
                    spec_path.display(),
                    spec.clients.join(", ")
                );
            }
            (layout.client_dir(id).join("client"), false)
        }
        Target::Server(n) | Target::Peer(n) => {
            if spec.node(n).is_none() {
                let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
                bail!("--node {n:?} is not a node of {}: choose one of {}", spec_path.display(), names.join(", "));
            }
            let peer = matches!(target, Target::Peer(_));
            (layout.node_dir(n).join(if peer { "peer" } else { "server" }), peer)
        }
    };
    let cert_path = stem.with_extension("crt");
    let rel = cert_path.strip_prefix(&layout.root).unwrap_or(&cert_path).display().to_string();
    let pem = read_opt(&cert_path)?.with_context(|| {
        format!("{}: no such certificate, nothing to revoke ({target}); issue it with `cargo xtask pki --cluster FILE --out {}`", cert_path.display(), layout.root.display())
    })?;
    let info = cert::first_cert(&pem).with_context(|| format!("cannot read {}", cert_path.display()))?;
    require_cas(&layout, profiles, "revoke signs the CRL with the CA")?;
    let mut report = IssueReport::default();
    let mut batch = AtomicBatch::new();
    let cas = load_or_create_cas(&spec, profiles, &layout, false, &mut report, &mut batch)?;
    report.lines.clear();
    let mut record = read_record(&layout)?;
    let serial = match expect_serial {
        Some(s) => s.to_ascii_lowercase().replace(':', ""),
        None => info.serial.clone(),
    };
    let already = record.iter().any(|r| r.serial == serial);
    if !already && serial != info.serial {
        bail!(
            "--serial {serial}: {} holds serial {}, and {serial} is not in {REVOKED}; check the serial (`openssl x509 -in {} -noout -serial`)",
            cert_path.display(),
            info.serial,
            cert_path.display()
        );
    }
    if already {
        report.push(&layout, &cert_path, Action::Note(format!("serial {serial} is already revoked: nothing to do")));
    } else {
        let signer = if shared_or_peer && cas.peer.is_some() { Signer::PeerCa } else { Signer::Ca };
        let signing = if signer == Signer::PeerCa { cas.peer() } else { &cas.ca };
        if info.verify_issued_by(&signing.info).is_err() {
            report.push(
                &layout,
                &cert_path,
                Action::Note(format!(
                    "not issued by the CA that signs now ({}); revoked all the same",
                    signing.info.subject
                )),
            );
        }
        record.push(Revoked {
            serial: serial.clone(),
            signer,
            path: rel.clone(),
            subject: info.subject.clone(),
            reason,
            revoked_at: OffsetDateTime::now_utc().unix_timestamp(),
        });
        let text = serde_json::to_string_pretty(&record).context("cannot serialize revoked.json")? + "\n";
        batch.write(&layout.root.join(REVOKED), text.as_bytes(), CERT_MODE)?;
        report.push(&layout, &cert_path, Action::Note(format!("serial {serial} revoked ({reason:?})")));
        if !no_reissue {
            let req = match target {
                Target::Client(id) => LeafRequest::new(id, Default::default(), &profiles.client),
                Target::Server(n) | Target::Peer(n) => {
                    let node = spec.node(n).with_context(|| format!("node {n:?} vanished from the description"))?;
                    if shared_or_peer {
                        LeafRequest::new(profiles.peer_common_name(n), node.sans(), &profiles.peer)
                    } else {
                        LeafRequest::new(n, node.sans(), &profiles.server)
                    }
                }
            };
            ensure_leaf(&layout, &stem, &req, signing, true, &mut report, &mut batch)?;
        }
    }
    // From the record in memory: revoked.json on disk changes only when the batch commits.
    let nodes: Vec<String> = spec.nodes.iter().map(|n| n.name.clone()).collect();
    ensure_crls(&layout, &nodes, &cas, &record, &mut report, &mut batch)?;
    batch.commit()?;
    Ok(report)
}

/// What `pki check` found in the CRLs.
#[derive(Debug, Clone, Default)]
pub struct CrlCheck {
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    /// One line per CRL and per serial it lists.
    pub lines: Vec<String>,
}

/// A day as `pki check` prints it (`2027-03-05`).
pub fn date(ts: i64) -> String {
    match OffsetDateTime::from_unix_timestamp(ts) {
        Ok(t) => format!("{:04}-{:02}-{:02}", t.year(), t.month() as u8, t.day()),
        Err(_) => ts.to_string(),
    }
}

/// `pki check` on a directory made by `cargo xtask pki`: each CRL (root and node copies) must be
/// readable, signed by a CA of the PKI, list every recorded serial of its signer, and have a
/// next-update in the future (a problem once past; a warning within `warn_days`). etcd itself
/// ignores next-update, so this check is the only thing that watches it.
pub(in crate::pki) fn check_crls(layout: &PkiLayout, now: i64, warn_days: i64) -> CrlCheck {
    let mut report = CrlCheck::default();
    let record = match read_record(layout) {
        Ok(r) => r,
        Err(e) => {
            report.problems.push(format!("{e:#}"));
            return report;
        }
    };
    let dir = layout.root.display().to_string();
    let rel = |p: &std::path::Path| p.strip_prefix(&layout.root).unwrap_or(p).display().to_string();
    let peer_dir = if layout.peer_ca_dir().join(crate::pki::layout::CA_CERT).is_file() {
        layout.peer_ca_dir()
    } else {
        layout.ca_dir()
    };
    let shared = peer_dir == layout.ca_dir();
    for (file, signer, ca_dir) in [(CRL, Signer::Ca, layout.ca_dir()), (PEER_CRL, Signer::PeerCa, peer_dir)] {
        let path = layout.root.join(file);
        let Some(pem) = read_opt(&path).ok().flatten() else {
            report.problems.push(format!(
                "{file}: missing: etcd's --{}-crl-file names it; create it with `cargo xtask pki --cluster {dir}/cluster.toml --out {dir}`",
                if signer == Signer::Ca { "client" } else { "peer" },
            ));
            continue;
        };
        // Signed by the CA, or by the next one while a rotation is under way.
        let cas: Vec<_> = [ca_dir.clone(), PkiLayout::next_dir(&ca_dir)]
            .iter()
            .filter_map(|d| read_opt(&d.join(crate::pki::layout::CA_CERT)).ok().flatten())
            .filter_map(|p| cert::first_cert(&p).ok())
            .collect();
        let signed = cas.iter().any(|ca| matches!(read_crl(&pem, Some(ca)), Ok(i) if i.signed_by_ca == Some(true)));
        let info = match read_crl(&pem, None) {
            Ok(i) => i,
            Err(e) => {
                report.problems.push(format!("{file}: unreadable CRL: {e:#}"));
                continue;
            }
        };
        if !signed {
            report.warnings.push(format!("{file}: not signed by {}/ nor its next CA (etcd compares serials only; `cargo xtask pki --cluster DIR/cluster.toml --out DIR` re-signs it)", rel(&ca_dir)));
        }
        let listed = |s: &str| info.serials.contains(s);
        for r in record.iter().filter(|r| r.signer == signer || (shared && r.signer == Signer::Ca)) {
            if !listed(&r.serial) {
                report.problems.push(format!("{file}: does not list serial {} ({}) of revoked.json: re-sign with `cargo xtask pki --cluster DIR/cluster.toml --out DIR`", r.serial, r.path));
            }
        }
        match info.next_update {
            None => report.problems.push(format!("{file}: no next-update: re-sign it with `cargo xtask pki --cluster {dir}/cluster.toml --out {dir}`")),
            Some(t) if t <= now => report.problems.push(format!(
                "{file}: next-update {} is past: re-sign it with `cargo xtask pki --cluster {dir}/cluster.toml --out {dir}` and copy it to the nodes",
                date(t),
            )),
            Some(t) if (t - now) / 86_400 < warn_days => report.warnings.push(format!(
                "{file}: next-update in {} days (less than --warn-days {warn_days}): re-sign it with `cargo xtask pki --cluster {dir}/cluster.toml --out {dir}`",
                (t - now) / 86_400,
            )),
            Some(_) => {}
        }
        report.lines.push(format!(
            "{file}: issuer {}, next-update {}, {} revoked serial(s)",
            info.issuer,
            info.next_update.map(date).unwrap_or_else(|| "none".into()),
            info.serials.len()
        ));
        for s in &info.serials {
            let what = record
                .iter()
                .find(|r| &r.serial == s)
                .map(|r| format!("{} ({})", r.path, r.subject))
                .unwrap_or_else(|| "not in revoked.json".into());
            report.lines.push(format!("{file}: revoked {s} {what}"));
        }
        // Node copies: what etcd reads.
        if let Ok(entries) = std::fs::read_dir(layout.nodes_dir()) {
            for node in entries.filter_map(|e| e.ok()) {
                let copy = node.path().join(file);
                if read_opt(&copy).ok().flatten().as_deref() != Some(pem.as_str()) {
                    report.problems.push(format!("{}: differs from {file} (or is missing): re-sign with `cargo xtask pki --cluster DIR/cluster.toml --out DIR`", rel(&copy)));
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::cluster::ClusterSpec;
    use std::process::Command;

    const SPEC: &str = r#"
name = "t"
clients = ["etcdctl", "other"]
[[nodes]]
name = "a"
ips = ["10.9.0.1"]
"#;

    fn openssl_text(path: &std::path::Path) -> String {
        let out = Command::new("openssl").args(["crl", "-noout", "-text", "-in"]).arg(path).output().unwrap();
        assert!(out.status.success(), "openssl crl: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn issue_makes_empty_crls_and_revoke_lists_the_serial_for_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let profiles = Profiles::default();
        let spec = ClusterSpec::from_toml(SPEC, "t.toml").unwrap();
        super::super::issue(&spec, &profiles, &out, false).unwrap();
        let empty = openssl_text(&out.join("nodes/a/crl.pem"));
        assert!(empty.contains("Issuer: CN = t etcd CA") && empty.contains("No Revoked Certificates"), "{empty}");
        assert!(empty.contains("Next Update:"), "{empty}");
        let peer = openssl_text(&out.join("nodes/a/peer-crl.pem"));
        assert!(peer.contains("Issuer: CN = t etcd peer CA"), "{peer}");

        let old = cert::first_cert(&fs_read(&out.join("clients/etcdctl/client.crt"))).unwrap();
        let other = fs_read(&out.join("clients/other/client.crt"));
        revoke(&out, &profiles, &Target::Client("etcdctl".into()), Reason::KeyCompromise, false, None).unwrap();
        let text = openssl_text(&out.join("nodes/a/crl.pem"));
        assert!(text.contains(&format!("Serial Number: {}", old.serial.to_uppercase())), "{text}");
        assert!(text.contains("Key Compromise"), "{text}");
        // Signed by the CA, with a next-update, the serial listed (read back as etcd would).
        let ca = cert::first_cert(&fs_read(&out.join("ca/ca.crt"))).unwrap();
        let info = read_crl(&fs_read(&out.join("crl.pem")), Some(&ca)).unwrap();
        assert_eq!(info.signed_by_ca, Some(true));
        assert!(info.serials.contains(&old.serial));
        let left = info.next_update.unwrap() - OffsetDateTime::now_utc().unix_timestamp();
        assert!((CRL_DAYS * 86_400 - 60..=CRL_DAYS * 86_400).contains(&left), "{left}");
        // Reissued, the other client untouched, the peer CRL still empty.
        let new = cert::first_cert(&fs_read(&out.join("clients/etcdctl/client.crt"))).unwrap();
        assert_ne!(new.serial, old.serial);
        assert_eq!(fs_read(&out.join("clients/other/client.crt")), other);
        assert!(openssl_text(&out.join("nodes/a/peer-crl.pem")).contains("No Revoked Certificates"));
        // A rerun of issue keeps the CRL as it is.
        let report = super::super::issue(&spec, &profiles, &out, false).unwrap();
        assert_eq!(report.action_of("crl.pem"), Some(&Action::Kept), "{report}");
    }

    fn fs_read(p: &std::path::Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }
}
