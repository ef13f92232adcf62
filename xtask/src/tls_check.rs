//! `cargo xtask tls-check HOST:PORT`: what a running etcd member (ours, or one set up by hand)
//! offers, scanned by testssl.sh (Debian's `testssl.sh`, a scanner this project did not write),
//! and judged against the TLS policy of `systemd/release-lines.toml`: no protocol below TLS 1.2,
//! every TLS 1.2 suite ECDHE with AES-GCM or ChaCha20-Poly1305 (no CBC, nothing without forward
//! secrecy), no curve under 256 bits, no key under 2048 (RSA) or 256 (EC) bits.
//! In: an address. Out: the findings, testssl.sh's JSON (with `--json`), non-zero exit on any
//! violation. The smoke test runs the same scan on a member's client and peer ports.
//!
//! testssl.sh 3.0 cannot present a client certificate; it needs none: etcd picks the protocol
//! and the cipher suite in its ServerHello, before it asks for the client's certificate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::util::{on_path, tail};

/// Scan a running etcd member's TLS port and judge it against the project's TLS policy
///
/// Runs testssl.sh (apt-get install testssl.sh) against HOST:PORT: protocols, cipher suites per
/// protocol, forward secrecy and curves, the server certificate's key. Prints what the member
/// offers and every finding against the policy (the one `render`, `k8s`, the portable service
/// and the smoke clusters configure: systemd/release-lines.toml, tls); exits non-zero on any.
/// No client certificate is needed: the suite is chosen before etcd asks for one.
#[derive(Debug, clap::Args)]
#[command(long_about)]
pub struct TlsCheck {
    /// The member's client or peer address, e.g. 10.0.1.204:2379 or 127.0.0.1:2380
    #[arg(value_name = "HOST:PORT")]
    pub target: String,
    /// Also keep testssl.sh's JSON findings in FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// The cluster's CA bundle, so that the certificate's chain of trust is judged too
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
}

impl TlsCheck {
    pub fn run(self) -> Result<()> {
        let scan = scan(&self.target, self.cacert.as_deref(), self.json.as_deref())?;
        println!("{}", scan.summary());
        if !scan.violations.is_empty() {
            bail!(
                "{}: {} finding(s) against the TLS policy:\n  {}",
                self.target,
                scan.violations.len(),
                scan.violations.join("\n  ")
            );
        }
        println!("{}: meets the TLS policy", self.target);
        Ok(())
    }
}

/// What a scan found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scan {
    pub target: String,
    pub seconds: f64,
    /// Protocol -> testssl.sh's finding ("offered", "not offered").
    pub protocols: BTreeMap<String, String>,
    /// The suites offered, per protocol ("TLS 1.2" -> OpenSSL names).
    pub suites: BTreeMap<String, Vec<String>>,
    pub curves: Vec<String>,
    pub key: String,
    /// testssl.sh's own findings by severity (all of them, INFO and OK included).
    pub severities: BTreeMap<String, usize>,
    /// What breaks the policy, each quoting testssl.sh.
    pub violations: Vec<String>,
    /// testssl.sh's WARN findings (a timeout, a missing engine), quoted when the scan is incomplete.
    pub warnings: Vec<String>,
}

impl Scan {
    pub fn summary(&self) -> String {
        let offered: Vec<&str> =
            self.protocols.iter().filter(|(_, f)| f.starts_with("offered")).map(|(p, _)| p.as_str()).collect();
        let mut out = format!("{}: protocols {}", self.target, offered.join(", "));
        for (proto, suites) in &self.suites {
            out += &format!("; {proto}: {}", suites.join(" "));
        }
        out += &format!("; curves {}; key {}", self.curves.join(" "), self.key);
        let sev: Vec<String> = self.severities.iter().map(|(s, n)| format!("{n} {s}")).collect();
        out += &format!("; testssl.sh findings by severity: {} ({:.0} s)", sev.join(", "), self.seconds);
        out
    }
}

/// Curves that give at least 128-bit security.
const STRONG_CURVES: [&str; 6] = ["prime256v1", "secp384r1", "secp521r1", "X25519", "X448", "brainpoolP256r1"];

/// Scans `target` with testssl.sh and judges the findings; the JSON is kept at `json` if given.
pub fn scan(target: &str, cacert: Option<&Path>, json: Option<&Path>) -> Result<Scan> {
    if !target.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
        bail!("{target:?} is not HOST:PORT (e.g. 127.0.0.1:2379)");
    }
    if !on_path("testssl") {
        bail!("tls-check runs testssl.sh, which is not installed: apt-get install testssl.sh");
    }
    if let Some(ca) = cacert.filter(|ca| !ca.is_file()) {
        bail!("--cacert {}: no such file (the cluster's CA bundle, e.g. <pki>/nodes/<node>/ca.crt)", ca.display());
    }
    let dir = crate::util::target_dir().join("tls-check");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let out = dir.join(format!("scan-{}-{}.json", std::process::id(), target.replace([':', '/', '[', ']'], "_")));
    let _ = std::fs::remove_file(&out);
    let started = Instant::now();
    let mut cmd = Command::new("testssl");
    // Generous timeouts: an answering server never waits for them, and on a loaded host a
    // handshake that takes 5 s would leave whole sections (the suites, the key) unscanned.
    cmd.args(["--quiet", "--warnings", "off", "--color", "0", "--nodns", "none", "--connect-timeout", "15"])
        .args(["--openssl-timeout", "20", "-p", "-s", "-f", "-E", "-S", "--jsonfile"])
        .arg(&out);
    if let Some(ca) = cacert {
        cmd.arg("--add-ca").arg(ca);
    }
    let run = cmd.arg(target).output().context("cannot run testssl")?;
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    let findings: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
    if findings.iter().all(|f| f["id"] != "TLS1_2") {
        bail!(
            "testssl.sh could not scan {target} ({}):\n{}",
            run.status,
            tail(&(String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr)), 8)
        );
    }
    if let Some(path) = json {
        crate::util::write_atomic(path, text.as_bytes(), 0o644)?;
    }
    let mut scan = judge(target, &findings);
    scan.seconds = started.elapsed().as_secs_f64();
    Ok(scan)
}

/// The policy applied to testssl.sh's flat JSON findings.
pub fn judge(target: &str, findings: &[serde_json::Value]) -> Scan {
    let mut scan = Scan { target: target.to_string(), ..Default::default() };
    for f in findings {
        let (id, finding) = (f["id"].as_str().unwrap_or_default(), f["finding"].as_str().unwrap_or_default().trim());
        *scan.severities.entry(f["severity"].as_str().unwrap_or("?").to_string()).or_default() += 1;
        if f["severity"] == "WARN" {
            scan.warnings.push(format!("{id}: {finding}"));
        }
        match id {
            "SSLv2" | "SSLv3" | "TLS1" | "TLS1_1" | "TLS1_2" | "TLS1_3" => {
                let name = id.replace("TLS1_", "TLS 1.").replace("TLS1", "TLS 1.0");
                if !finding.starts_with("not offered") && matches!(id, "SSLv2" | "SSLv3" | "TLS1" | "TLS1_1") {
                    scan.violations.push(format!("{name} is {finding} (only TLS 1.2 and 1.3 may be)"));
                }
                scan.protocols.insert(name, finding.to_string());
            }
            "cipherlist_NULL"
            | "cipherlist_aNULL"
            | "cipherlist_EXPORT"
            | "cipherlist_LOW"
            | "cipherlist_3DES_IDEA"
            | "cipherlist_AVERAGE"
                if !finding.starts_with("not offered") =>
            {
                let what = id.trim_start_matches("cipherlist_");
                scan.violations.push(format!("{what} ciphers (testssl.sh's category, CBC among them) are {finding}"));
            }
            "PFS_ECDHE_curves" => {
                scan.curves = finding.split_whitespace().map(String::from).collect();
                for c in &scan.curves {
                    if !STRONG_CURVES.contains(&c.as_str()) {
                        scan.violations.push(format!("weak curve offered: {c}"));
                    }
                }
            }
            "cert_keySize" => {
                scan.key = finding.to_string();
                let mut words = finding.split_whitespace();
                let (kind, bits) = (words.next().unwrap_or_default(), words.next().and_then(|b| b.parse::<u32>().ok()));
                let enough = match (kind, bits) {
                    ("RSA", Some(b)) => b >= 2048,
                    ("EC", Some(b)) => b >= 256,
                    _ => false,
                };
                if !enough {
                    scan.violations.push(format!("server key {finding}: at least RSA 2048 or EC 256 bits"));
                }
            }
            _ if id.starts_with("cipher-tls") || id.starts_with("cipher-ssl") => {
                // "TLS 1.2   xc00a   ECDHE-ECDSA-AES256-SHA   ECDH 253   AES   256   TLS_ECDHE_..."
                let words: Vec<&str> = finding.split_whitespace().collect();
                let proto = words.iter().take(2).copied().collect::<Vec<_>>().join(" ");
                let name = words.get(3).copied().unwrap_or_default().to_string();
                let kx = words.get(4).copied().unwrap_or_default();
                let aead = name.contains("GCM") || name.contains("CHACHA20") || name.contains("POLY1305");
                if proto != "TLS 1.3" && (!aead || !kx.starts_with("ECDH")) {
                    scan.violations.push(format!("{proto} suite {name} ({kx}): not ECDHE with an AEAD cipher"));
                }
                scan.suites.entry(proto).or_default().push(name);
            }
            _ => {}
        }
    }
    for wanted in ["TLS 1.2", "TLS 1.0", "TLS 1.1"] {
        if !scan.protocols.contains_key(wanted) {
            scan.violations.push(format!("testssl.sh reported nothing about {wanted}"));
        }
    }
    let incomplete = |what: &str| {
        format!(
            "testssl.sh reported {what}: an incomplete scan, judged as failed (its warnings: {}); on a loaded host, \
             scan again",
            if scan.warnings.is_empty() { "none".to_string() } else { scan.warnings.join("; ") }
        )
    };
    let mut missing = Vec::new();
    if scan.key.is_empty() {
        missing.push(incomplete("no server key size"));
    }
    let tls12 = scan.protocols.get("TLS 1.2").is_some_and(|f| f.starts_with("offered"));
    if tls12 && !scan.suites.contains_key("TLS 1.2") {
        missing.push(incomplete("TLS 1.2 offered but not one of its suites"));
    }
    scan.violations.extend(missing);
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn finding(id: &str, severity: &str, finding: &str) -> serde_json::Value {
        json!({"id": id, "severity": severity, "finding": finding})
    }

    fn good() -> Vec<serde_json::Value> {
        vec![
            finding("SSLv3", "OK", "not offered"),
            finding("TLS1", "INFO", "not offered"),
            finding("TLS1_1", "INFO", "not offered"),
            finding("TLS1_2", "OK", "offered"),
            finding("TLS1_3", "OK", "offered with final"),
            finding("cipherlist_AVERAGE", "INFO", "not offered"),
            finding("PFS_ECDHE_curves", "OK", "prime256v1 secp384r1 X25519"),
            finding("cert_keySize", "OK", "EC 256 bits"),
            finding("cipher-tls1_2_xc02b", "INFO", "TLS 1.2   xc02b   ECDHE-ECDSA-AES128-GCM-SHA256     ECDH 253   AESGCM   128   TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
            finding("cipher-tls1_3_x1301", "INFO", "TLS 1.3   x1301   TLS_AES_128_GCM_SHA256    ECDH 253   AESGCM   128   TLS_AES_128_GCM_SHA256"),
        ]
    }

    #[test]
    fn the_policy_passes_aead_ecdhe_and_names_every_violation() {
        let scan = judge("x:1", &good());
        assert_eq!(scan.violations, Vec::<String>::new());
        assert_eq!(scan.suites["TLS 1.2"], ["ECDHE-ECDSA-AES128-GCM-SHA256"]);
        assert_eq!(scan.severities["OK"], 5);

        let mut bad = good();
        bad.push(finding(
            "cipher-tls1_2_xc009",
            "INFO",
            "TLS 1.2   xc009   ECDHE-ECDSA-AES128-SHA   ECDH 253   AES   128   TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
        ));
        bad.push(finding(
            "cipher-tls1_2_x9c",
            "INFO",
            "TLS 1.2   x9c   AES128-GCM-SHA256   RSA   AESGCM   128   TLS_RSA_WITH_AES_128_GCM_SHA256",
        ));
        bad[2] = finding("TLS1_1", "LOW", "offered (deprecated)");
        bad[5] = finding("cipherlist_AVERAGE", "LOW", "offered");
        bad[6] = finding("PFS_ECDHE_curves", "OK", "secp224r1 prime256v1");
        bad[7] = finding("cert_keySize", "MEDIUM", "RSA 1024 bits");
        let v = judge("x:1", &bad).violations.join("\n");
        for want in [
            "ECDHE-ECDSA-AES128-SHA",
            "AES128-GCM-SHA256 (RSA)",
            "TLS 1.1 is offered",
            "AVERAGE",
            "secp224r1",
            "RSA 1024",
        ] {
            assert!(v.contains(want), "{want} missing from:\n{v}");
        }
    }

    #[test]
    fn an_empty_scan_is_not_a_pass() {
        let v = judge("x:1", &[]).violations.join("\n");
        assert!(v.contains("nothing about TLS 1.2") && v.contains("no server key"), "{v}");
    }

    #[test]
    fn a_scan_cut_short_by_timeouts_is_not_a_pass() {
        // What a starved host gave once: protocols and curves, no suite, no key, a timeout warning.
        let mut cut: Vec<serde_json::Value> = good()
            .into_iter()
            .filter(|f| !f["id"].as_str().unwrap().starts_with("cipher-") && f["id"] != "cert_keySize")
            .collect();
        cut.push(finding("scanProblem", "WARN", "openssl s_client connect problem (timeout)"));
        let v = judge("x:1", &cut).violations.join("\n");
        assert!(v.contains("TLS 1.2 offered but not one of its suites") && v.contains("no server key size"), "{v}");
        assert!(v.contains("incomplete scan") && v.contains("scanProblem: openssl s_client connect problem"), "{v}");
    }
}
