//! The TLS policy can fail: the real etcd v3.4.9, started on loopback with exactly the
//! configuration `cargo xtask render` writes for a node, and once more with that configuration
//! minus the policy (no `ETCD_CIPHER_SUITES`, as render wrote before the policy and as the
//! tutorial runs etcd), is scanned by `cargo xtask tls-check` (testssl.sh). Without the policy the
//! scan must fail and name the CBC suites etcd then accepts; with it the scan must pass and the
//! TLS 1.2 suites must be exactly the policy's.

mod common;
use common::{build_etcd_349, etcd_349_dir, host_arch, require, run, text, xtask_ok, XTASK};

use std::collections::BTreeMap;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

const CLUSTER: &str = r#"
name = "tlspolicy"
clients = ["etcdctl"]

[[nodes]]
name = "t1"
ips = ["10.77.9.1"]
"#;

/// A port nobody listens on now (the kernel's pick, released at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `KEY=value` lines of an env file, comments skipped.
fn env_file(path: &Path) -> BTreeMap<String, String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// etcd killed when the test ends, however it ends.
struct Etcd(Child);
impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts etcd 3.4.9 with the rendered node configuration `env`, moved to loopback ports and to
/// `dir`; returns it with its client address once that accepts connections (bounded wait).
fn start(env: &BTreeMap<String, String>, pki: &Path, dir: &Path) -> (Etcd, String) {
    let (client, peer) = (free_port(), free_port());
    let mut env = env.clone();
    for v in env.values_mut() {
        *v = v.replace("/etc/etcd/pki/", &format!("{}/", pki.display()));
    }
    let client_url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("https://127.0.0.1:{peer}");
    for (k, v) in [
        ("ETCD_LISTEN_CLIENT_URLS", client_url.clone()),
        ("ETCD_ADVERTISE_CLIENT_URLS", client_url),
        ("ETCD_LISTEN_PEER_URLS", peer_url.clone()),
        ("ETCD_INITIAL_ADVERTISE_PEER_URLS", peer_url.clone()),
        ("ETCD_INITIAL_CLUSTER", format!("t1={peer_url}")),
        ("ETCD_LISTEN_METRICS_URLS", format!("http://127.0.0.1:{}", free_port())),
        ("ETCD_DATA_DIR", dir.join("data").display().to_string()),
    ] {
        assert!(env.contains_key(k), "render no longer writes {k}: adapt this test");
        env.insert(k.to_string(), v);
    }
    let log = fs::File::create(dir.join("etcd.log")).unwrap();
    let child = Command::new(etcd_349_dir(host_arch()).join("etcd"))
        .env_clear()
        .envs(&env)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let etcd = Etcd(child);
    let addr = format!("127.0.0.1:{client}");
    let t = Instant::now();
    while TcpStream::connect(&addr).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "etcd did not listen on {addr} within 30 s:\n{}",
            fs::read_to_string(dir.join("etcd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (etcd, addr)
}

#[test]
fn a_member_without_the_policy_fails_the_scan_and_the_rendered_one_passes() {
    require("testssl");
    build_etcd_349(&[host_arch()]);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fs::write(d.join("cluster.toml"), CLUSTER).unwrap();
    let out = d.join("render");
    xtask_ok(&[
        "render",
        "--cluster",
        d.join("cluster.toml").to_str().unwrap(),
        "--pki",
        d.join("pki").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--etcd-version",
        "3.4.9",
    ]);
    let rendered = env_file(&out.join("t1/etc/etcd/etcd.conf"));
    let suites = rendered.get("ETCD_CIPHER_SUITES").expect("render writes ETCD_CIPHER_SUITES").clone();
    let mut without = rendered.clone();
    without.remove("ETCD_CIPHER_SUITES");
    let pki = out.join("t1/etc/etcd/pki");
    let ca = pki.join("ca.crt");

    let (with_dir, without_dir) = (d.join("with"), d.join("without"));
    fs::create_dir_all(&with_dir).unwrap();
    fs::create_dir_all(&without_dir).unwrap();
    let (_a, with_addr) = start(&rendered, &pki, &with_dir);
    let (_b, without_addr) = start(&without, &pki, &without_dir);

    // Both scans at once: each takes 10-25 s.
    let scan = |addr: String, json: std::path::PathBuf| {
        let ca = ca.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let out = run(Command::new(XTASK).args([
                "tls-check",
                &addr,
                "--cacert",
                ca.to_str().unwrap(),
                "--json",
                json.to_str().unwrap(),
            ]));
            eprintln!("tls-check {addr}: {:.1} s", t.elapsed().as_secs_f64());
            out
        })
    };
    let with = scan(with_addr.clone(), d.join("with.json"));
    let without = scan(without_addr.clone(), d.join("without.json"));
    let (mut with, mut without) = (with.join().unwrap(), without.join().unwrap());
    // tls-check judges a scan testssl.sh cut short (its own timeouts, on a loaded host) as
    // failed and says to scan again: once, alone, as its message says.
    let cut_short = |o: &Output| text(o).contains("an incomplete scan");
    if cut_short(&with) {
        eprintln!("the scan of {with_addr} was cut short: scanning again");
        with = scan(with_addr.clone(), d.join("with.json")).join().unwrap();
    }
    if cut_short(&without) {
        eprintln!("the scan of {without_addr} was cut short: scanning again");
        without = scan(without_addr.clone(), d.join("without.json")).join().unwrap();
    }

    let bad = text(&without);
    eprintln!("without the policy:\n{bad}");
    eprintln!("with the policy:\n{}", text(&with));
    assert!(!without.status.success(), "the scan of etcd without the policy passed:\n{bad}");
    assert!(bad.contains("finding(s) against the TLS policy"), "{bad}");
    for cbc in ["ECDHE-ECDSA-AES128-SHA ", "ECDHE-ECDSA-AES256-SHA "] {
        assert!(
            bad.lines().any(|l| l.contains(&format!("TLS 1.2 suite {cbc}")) && l.contains("not ECDHE with an AEAD")),
            "the CBC suite {cbc}is not named:\n{bad}"
        );
    }
    assert!(fs::read_to_string(d.join("without.json")).unwrap().contains("cipher-tls1_2"), "no JSON kept");

    let good = text(&with);
    assert!(with.status.success(), "the scan of etcd with the rendered policy failed:\n{good}");
    assert!(good.contains(&format!("{with_addr}: meets the TLS policy")), "{good}");
    // Every TLS 1.2 suite offered is one of the policy's (OpenSSL names of the Go names).
    // The summary line reads "...; TLS 1.2: A B C; TLS 1.3: ...; curves ...".
    let offered: Vec<&str> =
        good.split("; ").filter_map(|part| part.strip_prefix("TLS 1.2: ")).flat_map(|s| s.split_whitespace()).collect();
    assert!(!offered.is_empty(), "no TLS 1.2 suites in the summary:\n{good}");
    for s in &offered {
        let go = format!(
            "TLS_ECDHE_{}_WITH_{}",
            if s.contains("ECDSA") { "ECDSA" } else { "RSA" },
            s.trim_start_matches("ECDHE-ECDSA-")
                .trim_start_matches("ECDHE-RSA-")
                .replace("AES128-GCM", "AES_128_GCM")
                .replace("AES256-GCM", "AES_256_GCM")
                .replace("CHACHA20-POLY1305", "CHACHA20_POLY1305")
                .replace('-', "_")
        );
        assert!(suites.split(',').any(|p| p == go), "{s} ({go}) is offered but not in the policy {suites}");
    }
}
