//! Inspecting a certificate directory: a directory in (made by this stage, or by other tools,
//! e.g. the tutorial's cfssl files `ca.pem`, `server.pem`/`server-key.pem`, `peer.pem` or
//! `member.pem`, `client.pem`), a [`CheckReport`] out: a table of every certificate and the
//! problems found. Nothing is written.
//!
//! Problems (each makes `cargo xtask pki check` exit non-zero): unreadable files, expired or
//! not yet valid certificates, certificates expiring within `warn_days`, a leaf no CA in the
//! directory verifies, a key that does not belong to its certificate, a server or peer
//! certificate without `serverAuth` + `clientAuth`, a client certificate without `clientAuth`,
//! a CA without `keyCertSign`, and, given a description, drift: a missing or extra node or
//! client, a CN or SAN set that differs from the description.
//!
//! Kinds are taken from file names (`server*`, `peer*`/`member*`, `client*`, any CA by its basic
//! constraints) and, for other names, from the extended key usages. A leaf is verified against
//! the trust file etcd verifies it with when its directory has one (`peer*` against
//! `peer-ca.crt`, `server*` and `client*` against `ca.crt`), else against the CA certificates in
//! its own directory when there are any, else against every CA found. A trust file may be a
//! bundle of several CAs (as during a CA rotation): a leaf verifies when any of them issued it.
//!
//! In a directory made by `cargo xtask pki`, every trust file must also hold exactly the CAs the
//! PKI trusts: `ca/` (and `peer-ca/`), plus `ca.next/` (and `peer-ca.next/`) while a CA rotation
//! is under way; the rotation's phase (`rotation.json`) is reported, and the CRLs (`crl.rs`) read.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::cert::{self, CertInfo};
use super::cluster::{ClusterSpec, San};
use super::layout::{PkiLayout, CA_CERT, PEER_CA_CERT};
use super::profiles::Profiles;
use super::rotation::{rotation_state, RotatePhase};
use crate::util::Sha256Hex;

/// What `check` compares against.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Certificates expiring within this many days are problems.
    pub warn_days: i64,
    /// When given, drift against this description is checked.
    pub cluster: Option<ClusterSpec>,
    pub profiles: Profiles,
    /// The current time (unix seconds).
    pub now: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ca,
    Server,
    Peer,
    Client,
    Leaf,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Ca => "ca",
            Kind::Server => "server",
            Kind::Peer => "peer",
            Kind::Client => "client",
            Kind::Leaf => "leaf",
        })
    }
}

/// One certificate found.
#[derive(Debug, Clone)]
pub struct Row {
    /// Path relative to the checked directory (`#N` appended for the N-th block of a bundle).
    pub file: String,
    pub kind: Kind,
    pub info: CertInfo,
    /// Problems of this certificate (empty: fine).
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

/// The result of a check.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub rows: Vec<Row>,
    /// Problems not tied to one certificate (drift, unreadable files).
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub now: i64,
    /// The CA rotation state of a directory made by `cargo xtask pki`, one line, when it has a
    /// `rotation.json`.
    pub rotation: Option<String>,
    pub crl: super::issue::crl::CrlCheck,
}

impl CheckReport {
    pub fn problem_count(&self) -> usize {
        self.problems.len() + self.crl.problems.len() + self.rows.iter().map(|r| r.problems.len()).sum::<usize>()
    }
    /// Every problem, prefixed with its file.
    pub fn all_problems(&self) -> Vec<String> {
        let mut out: Vec<String> =
            self.rows.iter().flat_map(|r| r.problems.iter().map(move |p| format!("{}: {p}", r.file))).collect();
        out.extend(self.problems.iter().chain(&self.crl.problems).cloned());
        out
    }
}

struct Found {
    file: String,
    dir: PathBuf,
    path: PathBuf,
    info: CertInfo,
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // Hidden entries are staging areas; `*.old-N` are CAs set aside by --force.
        if name.starts_with('.') || name.contains(".old-") {
            continue;
        }
        if path.is_dir() {
            if depth > 0 {
                walk(&path, depth - 1, out)?;
            }
        } else if [".crt", ".pem", ".cer"].iter().any(|ext| name.ends_with(ext)) && !name.ends_with("-key.pem") {
            out.push(path);
        }
    }
    Ok(())
}

fn kind_of(file_stem: &str, info: &CertInfo) -> Kind {
    if info.is_ca {
        return Kind::Ca;
    }
    let stem = file_stem.to_ascii_lowercase();
    if stem.starts_with("server") {
        Kind::Server
    } else if stem.starts_with("peer") || stem.starts_with("member") {
        Kind::Peer
    } else if stem.starts_with("client") {
        Kind::Client
    } else if info.server_auth && !info.client_auth {
        Kind::Server
    } else if info.client_auth && !info.server_auth {
        Kind::Client
    } else {
        Kind::Leaf
    }
}

/// The key file next to a certificate: `x.crt` -> `x.key`, `x.pem` -> `x-key.pem`.
fn key_path_for(cert: &Path) -> Option<PathBuf> {
    let name = cert.file_name()?.to_string_lossy().into_owned();
    let candidates = if let Some(stem) = name.strip_suffix(".pem") {
        vec![format!("{stem}-key.pem"), format!("{stem}.key")]
    } else if let Some(stem) = name.strip_suffix(".crt").or_else(|| name.strip_suffix(".cer")) {
        vec![format!("{stem}.key"), format!("{stem}-key.pem")]
    } else {
        vec![]
    };
    candidates.into_iter().map(|c| cert.with_file_name(c)).find(|p| p.is_file())
}

/// Inspects every certificate under `dir`.
pub fn check(dir: &Path, opts: &CheckOptions) -> Result<CheckReport> {
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory: pass the directory that holds the certificates", dir.display());
    }
    let mut report = CheckReport { now: opts.now, ..Default::default() };
    let mut files = Vec::new();
    walk(dir, 3, &mut files)?;
    // Shallow files first, so a CA is listed under its own directory rather than a copy.
    files.sort_by_key(|p| (p.components().count(), p.clone()));
    let mut found = Vec::new();
    for path in files {
        let rel = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                report.problems.push(format!("{rel}: cannot read: {e}"));
                continue;
            }
        };
        if !text.contains("-----BEGIN CERTIFICATE-----") {
            continue; // a key, a CSR or something else
        }
        match cert::parse_certs(&text) {
            Ok(certs) => {
                let many = certs.len() > 1;
                for (i, info) in certs.into_iter().enumerate() {
                    let file = if many { format!("{rel}#{}", i + 1) } else { rel.clone() };
                    let parent = path.parent().unwrap_or(dir).to_path_buf();
                    found.push(Found { file, dir: parent, path: path.clone(), info });
                }
            }
            Err(e) => report.problems.push(format!("{rel}: unreadable certificate: {e:#}")),
        }
    }
    if found.is_empty() {
        report.problems.push(format!("{}: no certificates found (looked for *.crt, *.pem, *.cer)", dir.display()));
    }

    // CA certificates appear several times (copies in every node directory): list each once.
    let mut seen_ca = BTreeSet::new();
    let cas: Vec<&Found> = found.iter().filter(|f| f.info.is_ca).collect();
    for f in &found {
        let stem = f.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let kind = kind_of(&stem, &f.info);
        if kind == Kind::Ca && !seen_ca.insert(f.info.der.clone()) {
            continue;
        }
        let mut row = Row { file: f.file.clone(), kind, info: f.info.clone(), problems: vec![], warnings: vec![] };
        check_one(f, &cas, opts, &mut row);
        report.rows.push(row);
    }

    let layout = PkiLayout::new(dir);
    if layout.is_ours() {
        trust_files(&layout, &opts.profiles, &mut report);
        report.crl = super::issue::crl::check_crls(&layout, opts.now, opts.warn_days);
    }
    if let Some(spec) = &opts.cluster {
        if layout.nodes_dir().is_dir() {
            drift(spec, &opts.profiles, &layout, &report.rows.clone(), &mut report);
        } else {
            report.warnings.push(format!(
                "drift against the description is checked only in directories made by `cargo xtask pki` (with nodes/<name>/); {} is not one",
                dir.display()
            ));
        }
    }
    Ok(report)
}

fn check_one(f: &Found, cas: &[&Found], opts: &CheckOptions, row: &mut Row) {
    let info = &f.info;
    let days = info.days_left(opts.now);
    if info.not_after <= opts.now {
        row.problems.push(format!("expired {} days ago", -days));
    } else if days < opts.warn_days {
        row.problems.push(format!("expires in {days} days (less than --warn-days {}): renew it", opts.warn_days));
    }
    if info.not_before > opts.now {
        row.problems.push("not valid yet (not-before is in the future: check the clocks)".into());
    }

    // Chain.
    if info.is_ca {
        if info.has_key_usage && !info.key_cert_sign {
            row.problems.push("CA without keyCertSign: it cannot issue certificates".into());
        }
        if info.self_issued {
            if let Err(e) = info.verify_issued_by(info) {
                row.problems.push(format!("self-signature does not verify: {e}"));
            }
        } else if !cas.iter().any(|ca| info.verify_issued_by(&ca.info).is_ok()) {
            row.problems.push(format!("intermediate CA: its issuer {:?} is not in the directory", info.issuer));
        }
    } else {
        let trust_file = match row.kind {
            Kind::Peer => Some(f.dir.join(PEER_CA_CERT)),
            Kind::Server | Kind::Client => Some(f.dir.join(CA_CERT)),
            _ => None,
        }
        .filter(|p| p.is_file() && *p != f.path);
        let local: Vec<&&Found> = match &trust_file {
            Some(trust) => cas.iter().filter(|ca| ca.path == *trust).collect(),
            None => cas.iter().filter(|ca| ca.dir == f.dir).collect(),
        };
        let candidates: Vec<&&Found> = if local.is_empty() { cas.iter().collect() } else { local };
        match candidates.iter().find(|ca| info.verify_issued_by(&ca.info).is_ok()) {
            Some(ca) => {
                if ca.info.not_after <= opts.now {
                    row.problems.push(format!("its CA {} has expired", ca.file));
                }
            }
            None => {
                let tried: Vec<&str> = candidates.iter().map(|c| c.file.as_str()).collect();
                let why = candidates
                    .iter()
                    .find(|c| c.info.subject == info.issuer)
                    .and_then(|c| info.verify_issued_by(&c.info).err())
                    .unwrap_or_else(|| format!("its issuer {:?} is not among them", info.issuer));
                if tried.is_empty() {
                    row.problems.push("chain does not verify: no CA certificate in the directory".into());
                } else {
                    row.problems.push(format!("chain does not verify against {}: {why}", tried.join(", ")));
                }
            }
        }
        if info.has_basic_constraints && info.path_len.is_some() {
            row.warnings.push("leaf with a path length constraint".into());
        }
    }

    // Usages per kind.
    // Exactly the loopback names a node's certificate lacks, as `DNS:`/`IP:` SANs.
    let loopback = [San::Dns("localhost".into()), San::Ip(IpAddr::from([127, 0, 0, 1]))];
    let loopback_missing: Vec<String> =
        loopback.iter().filter(|want| !info.sans.contains(want)).map(|s| s.to_string()).collect();
    match row.kind {
        Kind::Server => {
            if !info.client_auth {
                row.problems.push(format!(
                    "server certificate without clientAuth ({}): etcd 3.4's gateway presents it to its own client port, \
                     so with --client-cert-auth every /v3 JSON call fails (\"incompatible key usage\"); reissue it with serverAuth + clientAuth",
                    info.usages_text()
                ));
            }
            if !info.server_auth {
                row.problems.push(format!("server certificate without serverAuth ({})", info.usages_text()));
            }
        }
        Kind::Peer => {
            if !(info.server_auth && info.client_auth) {
                row.problems.push(format!(
                    "peer certificate with {}: members are server and client of each other, it needs serverAuth + clientAuth",
                    info.usages_text()
                ));
            }
        }
        Kind::Client => {
            if !info.client_auth {
                row.problems.push(format!("client certificate without clientAuth ({})", info.usages_text()));
            }
        }
        Kind::Ca | Kind::Leaf => {}
    }
    if matches!(row.kind, Kind::Server | Kind::Peer) {
        if info.sans.is_empty() {
            row.problems.push("no subject alternative names: TLS clients cannot match it to any address".into());
        } else if !loopback_missing.is_empty() {
            row.warnings.push(format!(
                "SANs lack {}: etcdctl on the node and published ports reach it through loopback",
                loopback_missing.join(" and ")
            ));
        }
    }
    if info.sans.contains(&San::Dns(String::new())) {
        row.warnings.push(
            "SANs hold an empty DNS name (DNS:), what cfssl writes for \"hosts\": [\"\"]: it names nothing; \
             leave it out when the certificate is next issued"
                .into(),
        );
    }

    // Key.
    match key_path_for(&f.path) {
        Some(key) => {
            let key_name = key.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match fs::read_to_string(&key).map_err(anyhow::Error::from).and_then(|k| cert::key_matches(&k, info)) {
                Ok(true) => {}
                Ok(false) => row.problems.push(format!("{key_name} does not belong to this certificate")),
                Err(e) => row.problems.push(format!("{key_name} cannot be read: {e:#}")),
            }
            if let Ok(meta) = fs::metadata(&key) {
                if meta.permissions().mode() & 0o007 != 0 {
                    row.warnings.push(format!("{key_name} is readable by others: chmod 600 (or 440 root:etcd)"));
                }
            }
        }
        None if !info.is_ca => row.problems.push("no key next to it (looked for <name>.key and <name>-key.pem)".into()),
        None => {}
    }
}

/// The CAs (DER SHA-256, and a name for messages) a CA directory holds, in order.
fn ca_ids(path: &Path) -> std::result::Result<Vec<(String, String)>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = cert::parse_certs(&text).map_err(|e| format!("{}: {e:#}", path.display()))?;
    Ok(certs
        .into_iter()
        .map(|c| {
            let name = format!("{} (serial {})", c.subject_cn.clone().unwrap_or(c.subject.clone()), c.serial);
            (Sha256Hex::of_bytes(&c.der).to_string(), name)
        })
        .collect())
}

/// In a directory made by `cargo xtask pki`: the rotation state, and whether every trust file
/// holds exactly the CAs of the current phase.
fn trust_files(layout: &PkiLayout, profiles: &Profiles, report: &mut CheckReport) {
    let rel = |p: &Path| p.strip_prefix(&layout.root).unwrap_or(p).display().to_string();
    let state = match rotation_state(&layout.root) {
        Ok(s) => s,
        Err(e) => {
            report.problems.push(format!("{e:#}"));
            return;
        }
    };
    let phase = state.as_ref().map(|s| s.phase);
    if let Some(s) = &state {
        report.rotation = Some(s.summary());
    }
    if phase == Some(RotatePhase::Dropping) {
        report.problems.push(format!("{}: {}", rel(&layout.rotation()), RotatePhase::Dropping.next_step()));
        return;
    }
    let rotating = phase.is_some_and(RotatePhase::in_progress);
    // Shared or separate peer CA: as the rotation, else the manifest, else the profiles say.
    let manifest_shared = fs::read_to_string(layout.manifest())
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("peer_ca").and_then(|p| p.as_str()).map(|p| p == "shared"));
    let shared = match &state {
        Some(s) if rotating => s.cas.len() == 1,
        _ => manifest_shared.unwrap_or(!profiles.ca.separate_peer_ca),
    };
    let wanted = |ca_dir: PathBuf| -> std::result::Result<Vec<(String, String)>, String> {
        let mut out = ca_ids(&ca_dir.join(CA_CERT))?;
        if rotating {
            out.extend(ca_ids(&PkiLayout::next_dir(&ca_dir).join(CA_CERT))?);
        }
        Ok(out)
    };
    let fix = if rotating {
        "run the current step of the rotation again (`cargo xtask pki rotate-ca DIR --step ...`)"
    } else {
        "run `cargo xtask pki --cluster FILE --out DIR` to rewrite it"
    };
    let (ca, peer) =
        match (wanted(layout.ca_dir()), wanted(if shared { layout.ca_dir() } else { layout.peer_ca_dir() })) {
            (Ok(ca), Ok(peer)) => (ca, peer),
            (Err(e), _) | (_, Err(e)) => {
                report.problems.push(format!("{e}: the PKI's CA is unreadable"));
                return;
            }
        };
    let mut files = Vec::new();
    for (parent, names) in [(layout.nodes_dir(), &[CA_CERT, PEER_CA_CERT][..]), (layout.clients_dir(), &[CA_CERT][..])]
    {
        let Ok(entries) = fs::read_dir(&parent) else { continue };
        let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
        dirs.retain(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')));
        dirs.sort();
        for d in dirs {
            for name in names {
                files.push((d.join(name), if *name == PEER_CA_CERT { &peer } else { &ca }));
            }
        }
    }
    for (path, want) in files {
        if !path.is_file() {
            continue; // the drift check reports missing nodes and clients
        }
        let got = match ca_ids(&path) {
            Ok(got) => got,
            Err(e) => {
                report.problems.push(e);
                continue;
            }
        };
        let ids = |v: &[(String, String)]| v.iter().map(|(h, _)| h.clone()).collect::<BTreeSet<_>>();
        if ids(&got) != ids(want) {
            let names = |v: &[(String, String)]| v.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>().join(", ");
            report.problems.push(format!(
                "{}: trusts [{}], the PKI wants [{}]{}; {fix}",
                rel(&path),
                names(&got),
                names(want),
                match phase {
                    Some(p) if rotating => format!(" (CA rotation phase {p})"),
                    _ => String::new(),
                }
            ));
        }
    }
}

fn drift(spec: &ClusterSpec, profiles: &Profiles, layout: &PkiLayout, rows: &[Row], report: &mut CheckReport) {
    let row_at = |rel: &str| rows.iter().find(|r| r.file == rel);
    let fix = "run `cargo xtask pki --cluster FILE --out DIR` to reconcile";
    for node in &spec.nodes {
        let want_sans: BTreeSet<San> = node.sans();
        for (file, cn) in [("server.crt", node.name.as_str()), ("peer.crt", profiles.peer_common_name(&node.name))] {
            let rel = format!("nodes/{}/{file}", node.name);
            match row_at(&rel) {
                None => {
                    report.problems.push(format!("{rel}: missing for node {:?} of the description; {fix}", node.name))
                }
                Some(row) => {
                    if row.info.subject_cn.as_deref() != Some(cn) {
                        report.problems.push(format!(
                            "{rel}: drift: CN is {:?}, the description wants {cn:?}; {fix}",
                            row.info.subject_cn.as_deref().unwrap_or("")
                        ));
                    }
                    if row.info.sans != want_sans {
                        let plus: Vec<String> = want_sans.difference(&row.info.sans).map(|s| format!("+{s}")).collect();
                        let minus: Vec<String> =
                            row.info.sans.difference(&want_sans).map(|s| format!("-{s}")).collect();
                        report.problems.push(format!(
                            "{rel}: drift: SANs differ from the description ({}); {fix}",
                            plus.into_iter().chain(minus).collect::<Vec<_>>().join(" ")
                        ));
                    }
                }
            }
        }
    }
    for id in &spec.clients {
        let rel = format!("clients/{id}/client.crt");
        match row_at(&rel) {
            None => report.problems.push(format!("{rel}: missing for client {id:?} of the description; {fix}")),
            Some(row) if row.info.subject_cn.as_deref() != Some(id.as_str()) => report.problems.push(format!(
                "{rel}: drift: CN is {:?}, the description wants {id:?}; {fix}",
                row.info.subject_cn.as_deref().unwrap_or("")
            )),
            Some(_) => {}
        }
    }
    let list = |dir: PathBuf| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.retain(|n| !n.starts_with('.'));
        names.sort();
        names
    };
    for name in list(layout.nodes_dir()) {
        if spec.node(&name).is_none() {
            report
                .problems
                .push(format!("nodes/{name}: drift: not a node of the description; remove it or add the node"));
        }
    }
    for name in list(layout.clients_dir()) {
        if !spec.clients.contains(&name) {
            report
                .problems
                .push(format!("clients/{name}: drift: not a client of the description; remove it or add the client"));
        }
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = ["STATUS", "KIND", "FILE", "SUBJECT", "SANS", "NOT AFTER", "DAYS", "KEY", "ISSUER"];
        let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
        for r in &self.rows {
            let status = if !r.problems.is_empty() {
                "FAIL"
            } else if !r.warnings.is_empty() {
                "warn"
            } else {
                "ok"
            };
            let sans: Vec<String> = r.info.sans.iter().map(|s| s.to_string()).collect();
            table.push(vec![
                status.into(),
                r.kind.to_string(),
                r.file.clone(),
                r.info.subject_cn.clone().unwrap_or_else(|| r.info.subject.clone()),
                if sans.is_empty() { "-".into() } else { sans.join(",") },
                super::issue::crl::date(r.info.not_after),
                r.info.days_left(self.now).to_string(),
                r.info.key_text.clone(),
                r.info.issuer_cn.clone().unwrap_or_else(|| r.info.issuer.clone()),
            ]);
        }
        let widths: Vec<usize> =
            (0..header.len()).map(|i| table.iter().map(|row| row[i].chars().count()).max().unwrap_or(0)).collect();
        for row in &table {
            let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            writeln!(f, "{}", line.join("  ").trim_end())?;
        }
        for r in &self.rows {
            for w in &r.warnings {
                writeln!(f, "warning: {}: {w}", r.file)?;
            }
        }
        for w in self.warnings.iter().chain(&self.crl.warnings) {
            writeln!(f, "warning: {w}")?;
        }
        if let Some(r) = &self.rotation {
            writeln!(f, "rotation: {r}")?;
        }
        self.crl.lines.iter().try_for_each(|l| writeln!(f, "crl: {l}"))?;
        for p in self.all_problems() {
            writeln!(f, "PROBLEM: {p}")?;
        }
        Ok(())
    }
}
