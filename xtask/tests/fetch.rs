//! `cargo xtask fetch` against real HTTP on loopback: a server in this test serves a real etcd
//! (Debian's binaries, repacked in the official tarball layout) well, badly, or not at all.
//!
//! Longer than 600 lines: one test binary for `cargo xtask fetch`: the loopback server and its
//! failure modes are the fixture every test here shares.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

/// The etcd version Debian ships, asked from apt (never assumed: it changes with the release).
fn version() -> &'static str {
    common::debian_etcd_version()
}

/// This machine's architecture (Debian's binaries run here) and another one (they do not).
fn host() -> &'static str {
    common::host_arch()
}

fn foreign() -> &'static str {
    if host() == "arm64" {
        "amd64"
    } else {
        "arm64"
    }
}

/// The official tarball name of that version.
fn tarball_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| format!("etcd-v{}-linux-{}.tar.gz", version(), host()))
}

fn xtask(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(args).env("XTASK_NO_OFFICIAL", "1").env_remove("XTASK_ETCD_MIRRORS");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("xtask runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target")
}

/// A real etcd tarball in the official layout, built once from Debian's verified binaries.
fn tarball() -> &'static (Vec<u8>, String) {
    static TARBALL_BYTES: OnceLock<(Vec<u8>, String)> = OnceLock::new();
    TARBALL_BYTES.get_or_init(|| {
        let root = target().join("test-cache/etcd");
        let out = xtask(&["fetch", "--source", "distro", "--arch", host(), "--out-root", root.to_str().unwrap()], &[]);
        assert!(out.status.success(), "fetching Debian's etcd failed: {}", stderr(&out));
        let bin = root.join(version()).join(host());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        {
            let mut tar = tar::Builder::new(&mut gz);
            for (name, data) in [
                ("etcd", fs::read(bin.join("etcd")).unwrap()),
                ("etcdctl", fs::read(bin.join("etcdctl")).unwrap()),
                ("README.md", b"etcd\n".to_vec()),
            ] {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o755);
                h.set_cksum();
                tar.append_data(&mut h, format!("etcd-v{}-linux-{}/{name}", version(), host()), &data[..]).unwrap();
            }
            tar.finish().unwrap();
        }
        let bytes = gz.finish().unwrap();
        let sum = sha256_hex(&bytes);
        (bytes, sum)
    })
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// A loopback HTTP server. The first path segment chooses the behaviour.
struct Server {
    base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let h = hits.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let h = h.clone();
                thread::spawn(move || serve(stream, h));
            }
        });
        Server { base, hits }
    }

    fn url(&self, mode: &str) -> String {
        format!("{}/{mode}", self.base)
    }

    fn hits(&self, mode: &str) -> usize {
        *self.hits.lock().unwrap().get(mode).unwrap_or(&0)
    }
}

fn serve(mut stream: TcpStream, hits: Arc<Mutex<HashMap<String, usize>>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mode = path.trim_start_matches('/').split('/').next().unwrap_or("").to_string();
    *hits.lock().unwrap().entry(mode.clone()).or_default() += 1;
    let (body, _) = tarball();
    let ok = |len: usize| format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
    if !path.ends_with(&format!("/v{}/{}", version(), tarball_name())) {
        let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    match mode.as_str() {
        "good" => {
            let _ = stream.write_all(ok(body.len()).as_bytes());
            let _ = stream.write_all(body);
        }
        "bad" => {
            let mut evil = body.clone();
            let mid = evil.len() / 2;
            evil[mid] ^= 0xff;
            let _ = stream.write_all(ok(evil.len()).as_bytes());
            let _ = stream.write_all(&evil);
        }
        "truncated" => {
            let _ = stream.write_all(ok(body.len()).as_bytes());
            let _ = stream.write_all(&body[..body.len() / 2]);
        }
        "stall" => {
            let _ = stream.write_all(ok(body.len()).as_bytes());
            let _ = stream.write_all(&body[..1000]);
            thread::sleep(Duration::from_secs(20));
        }
        "error" => {
            let _ =
                stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
        _ => {
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    }
}

/// A pinned sums file holding the test tarball's real sum.
fn checksums(dir: &Path) -> PathBuf {
    let (_, sum) = tarball();
    let path = dir.join("sums");
    fs::write(&path, format!("{sum}  {}\n", tarball_name())).unwrap();
    path
}

fn fetch_args<'a>(out_root: &'a str, sums: &'a str, mirrors: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["fetch", "--etcd-version", version(), "--arch", host(), "--source", "tarball"];
    args.extend(["--checksums", sums, "--out-root", out_root]);
    for m in mirrors {
        args.extend(["--mirror", *m]);
    }
    args
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn downloads_verifies_records_provenance_and_then_uses_the_cache() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("etcd");
    let sums = checksums(tmp.path());
    let good = server.url("good");
    let args = fetch_args(root.to_str().unwrap(), sums.to_str().unwrap(), &[&good]);

    let out = xtask(&args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("25%") && err.contains("received"), "plain progress lines expected off a terminal: {err}");
    // Shipping a version with published advisories is never silent.
    let advisories = xtask::advisories::load(&xtask::advisories::default_path()).unwrap();
    match xtask::advisories::warning(&advisories, version()) {
        Some(w) => assert!(err.contains(&format!("warning: {w}")), "the advisories of {}:\n{err}", version()),
        None => assert!(!err.contains("security advisor"), "{err}"),
    }
    let dir = root.join(version()).join(host());
    let prov: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("provenance.json")).unwrap()).unwrap();
    assert_eq!(prov["source"], "tarball");
    assert_eq!(prov["version"], version());
    assert_eq!(prov["reported_version"], version());
    assert_eq!(prov["origin"], format!("{good}/v{}/{}", version(), tarball_name()));
    assert_eq!(prov["artifacts"][tarball_name()], tarball().1.as_str());
    assert_eq!(prov["files"]["etcd"].as_str().unwrap(), sha256_hex(&fs::read(dir.join("etcd")).unwrap()));
    assert_eq!(server.hits("good"), 1);

    // Again: no network I/O at all.
    let out = xtask(&args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("up to date"), "{}", stderr(&out));
    assert_eq!(server.hits("good"), 1);

    // Output removed, cache kept: re-extracted from the verified cache, still no network.
    fs::remove_dir_all(&dir).unwrap();
    let out = xtask(&args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.hits("good"), 1);
    assert!(dir.join("etcd").exists());

    // A binary tampered with after verification is noticed and replaced from the cache.
    let etcdctl_before = fs::read(dir.join("etcdctl")).unwrap();
    fs::write(dir.join("etcdctl"), b"tampered").unwrap();
    let out = xtask(&args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Replaced by the verified binary itself: its sum is the one provenance.json records.
    let prov: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("provenance.json")).unwrap()).unwrap();
    let recorded = prov["files"]["etcdctl"].as_str().expect("provenance.json records etcdctl's sum");
    assert_eq!(
        sha256_hex(&fs::read(dir.join("etcdctl")).unwrap()),
        recorded,
        "the tampered etcdctl was replaced by something else than the verified binary:\n{}",
        stderr(&out)
    );
    assert_eq!(recorded, sha256_hex(&etcdctl_before), "provenance.json records another etcdctl than the verified one");
    assert_eq!(server.hits("good"), 1);
}

#[test]
fn a_mismatch_is_final_names_both_sums_and_leaves_nothing() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("etcd");
    let sums = checksums(tmp.path());
    let (bad, good) = (server.url("bad"), server.url("good"));
    let out = xtask(&fetch_args(root.to_str().unwrap(), sums.to_str().unwrap(), &[&bad, &good]), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("mismatch") && err.contains(&format!("{bad}/v{}/{}", version(), tarball_name())), "{err}");
    assert!(err.contains(&tarball().1), "expected sum named: {err}");
    let mut evil = tarball().0.clone();
    let mid = evil.len() / 2;
    evil[mid] ^= 0xff;
    assert!(err.contains(&sha256_hex(&evil)), "actual sum named: {err}");
    assert_eq!(server.hits("good"), 0, "no other source may be tried after a mismatch");
    assert_eq!(tree(&root), vec!["cache".to_string()], "nothing but the empty cache dir may remain");
}

#[test]
fn each_unreachable_source_gives_a_clear_error_and_leaves_nothing() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let sums = checksums(tmp.path());
    let refused = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let cases = [
        (server.url("missing"), "404"),
        (server.url("error"), "503"),
        (server.url("truncated"), "truncated"),
        (refused, "connection failed"),
        (server.url("stall"), "stalled"),
        (format!("file://{}/nowhere", tmp.path().display()), "cannot open"),
    ];
    for (i, (url, reason)) in cases.iter().enumerate() {
        let root = tmp.path().join(format!("etcd{i}"));
        let out = xtask(
            &fetch_args(root.to_str().unwrap(), sums.to_str().unwrap(), &[url]),
            &[("XTASK_READ_TIMEOUT", "1"), ("XTASK_CONNECT_TIMEOUT", "2")],
        );
        let err = stderr(&out);
        assert!(!out.status.success(), "{url} must fail");
        assert!(err.contains(reason) && err.contains(url.as_str()), "{url}: expected {reason:?} in: {err}");
        assert!(err.contains("no download location"), "{err}");
        assert_eq!(tree(&root), vec!["cache".to_string()], "{url} left files behind");
    }

    // A network failure moves on to the next source, which then delivers.
    let root = tmp.path().join("etcd-next");
    let (missing, truncated, good) = (server.url("missing"), server.url("truncated"), server.url("good"));
    let out = xtask(&fetch_args(root.to_str().unwrap(), sums.to_str().unwrap(), &[&missing, &truncated, &good]), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.hits("good"), 1);
}

#[test]
fn file_mirrors_work() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = tmp.path().join("mirror");
    fs::create_dir_all(mirror.join(format!("v{}", version()))).unwrap();
    fs::write(mirror.join(format!("v{}/{}", version(), tarball_name())), &tarball().0).unwrap();
    let sums = checksums(tmp.path());
    let root = tmp.path().join("etcd");
    let url = format!("file://{}", mirror.display());
    let out = xtask(&fetch_args(root.to_str().unwrap(), sums.to_str().unwrap(), &[&url]), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(root.join(version()).join(host()).join("etcdctl").exists());
}

#[test]
fn an_unpinned_version_is_refused_before_any_download() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let sums = tmp.path().join("empty");
    fs::write(&sums, "").unwrap();
    let root = tmp.path().join("etcd");
    let good = server.url("good");
    let out = xtask(&fetch_args(root.to_str().unwrap(), sums.to_str().unwrap(), &[&good]), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no pinned SHA-256") && err.contains("SHA256SUMS"), "{err}");
    assert_eq!(server.hits("good"), 0);

    // The shipped pins refuse an unknown release too.
    let out =
        xtask(&["fetch", "--etcd-version", "3.4.99", "--arch", host(), "--out-root", root.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&format!("etcd-v3.4.99-linux-{}.tar.gz", host())), "{}", stderr(&out));
}

#[test]
fn a_name_that_does_not_resolve_is_a_network_error() {
    // Inside a fresh network namespace nothing can be resolved or reached, and nothing leaves it.
    let tmp = tempfile::tempdir().unwrap();
    let sums = checksums(tmp.path());
    let root = tmp.path().join("etcd");
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--", env!("CARGO_BIN_EXE_xtask")]);
    cmd.args(fetch_args(root.to_str().unwrap(), sums.to_str().unwrap(), &["http://etcd-mirror.example.com"]));
    cmd.env("XTASK_NO_OFFICIAL", "1").env("XTASK_CONNECT_TIMEOUT", "3");
    let out = cmd.output().expect("unshare runs (util-linux; needs root)");
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("name resolution failed") || err.contains("connection failed"), "{err}");
    assert!(err.contains("etcd-mirror.example.com"), "{err}");
    assert_eq!(tree(&root), vec!["cache".to_string()]);
}

#[test]
fn auto_falls_back_to_debian_only_when_unreachable_and_allowed() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    checksums(tmp.path()); // the definitions below point at it as "sums"
    let missing = server.url("missing");
    let root = tmp.path().join("etcd");
    let def = |allow: bool| {
        let p = tmp.path().join(format!("def-{allow}.toml"));
        fs::write(
            &p,
            format!(
                "[etcd]\nversion = \"{}\"\narches = [\"{}\"]\nchecksums = \"sums\"\nallow_distro_fallback = {allow}\n[etcd.supported_arches]\n\"3.4\" = [\"amd64\", \"ppc64le\"]\n[etcd.debian_suites]\n\"3.4\" = \"host\"\n",
                version(),
                host()
            ),
        )
        .unwrap();
        p
    };
    let run = |allow: bool, source: &str| {
        let d = def(allow);
        xtask(
            &[
                "fetch",
                "--definition",
                d.to_str().unwrap(),
                "--source",
                source,
                "--mirror",
                &missing,
                "--out-root",
                root.to_str().unwrap(),
            ],
            &[],
        )
    };
    let out = run(false, "auto");
    assert!(!out.status.success(), "fallback must be opt-in: {}", stderr(&out));
    let out = run(true, "tarball");
    assert!(!out.status.success(), "--source tarball never falls back: {}", stderr(&out));

    let out = run(true, "auto");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("WARNING: falling back to Debian"), "{}", stderr(&out));
    let installed = String::from_utf8_lossy(&out.stdout);
    assert!(installed.contains("(distro)"), "{installed}");
    let prov: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(root.join(version()).join(host()).join("provenance.json")).unwrap())
            .unwrap();
    assert_eq!(prov["source"], "distro");
    assert!(prov["origin"].as_str().unwrap().starts_with(&format!("debian:etcd-server:{}=", host())));

    // The fallback is remembered: the next run does no network I/O and says so loudly.
    let hits = server.hits("missing");
    let out = run(true, "auto");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("earlier fallback"), "{}", stderr(&out));
    assert_eq!(server.hits("missing"), hits, "a remembered fallback must not touch the network");

    // Fetching the pinned tarball ends it.
    let good = server.url("good");
    let d = def(true);
    let out = xtask(
        &[
            "fetch",
            "--definition",
            d.to_str().unwrap(),
            "--source",
            "tarball",
            "--mirror",
            &good,
            "--out-root",
            root.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(true, "auto");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("(tarball)"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("fallback"), "{}", stderr(&out));

    // A mismatch never falls back, whatever the definition allows.
    let bad = server.url("bad");
    let d = def(true);
    let out = xtask(
        &[
            "fetch",
            "--definition",
            d.to_str().unwrap(),
            "--mirror",
            &bad,
            "--out-root",
            tmp.path().join("e2").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(!stderr(&out).contains("falling back"), "{}", stderr(&out));
}

#[test]
fn help_explains_the_sources() {
    let out = xtask(&["fetch", "--help"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["--mirror", "--checksums", "--source", "--no-official", "cache", "mismatch"] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
}

#[test]
fn a_foreign_architecture_comes_from_debian_with_its_c_library() {
    // Private apt lists for the foreign architecture (the host's apt configuration is left alone).
    let root = target().join("test-cache/etcd");
    let out = xtask(&["fetch", "--source", "distro", "--arch", foreign(), "--out-root", root.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = root.join(version()).join(foreign());
    let head = fs::read(dir.join("etcd")).unwrap();
    assert_eq!(&head[..4], b"\x7fELF");
    // The foreign architecture's ELF machine, C library and loader (arm64 on an amd64 host, amd64
    // on an arm64 one).
    let (machine, triplet, loader) = match foreign() {
        "arm64" => (183, "aarch64-linux-gnu", "lib/ld-linux-aarch64.so.1"),
        "amd64" => (62, "x86_64-linux-gnu", "lib64/ld-linux-x86-64.so.2"),
        other => panic!("no ELF facts for {other}: add them"),
    };
    assert_eq!(u16::from_le_bytes([head[18], head[19]]), machine, "an {} binary", foreign());
    let prov: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("provenance.json")).unwrap()).unwrap();
    assert_eq!(prov["source"], "distro");
    assert_eq!(prov["reported_version"], serde_json::Value::Null, "the foreign architecture does not run here");
    assert!(prov["origin"].as_str().unwrap().contains(&format!("debian:libc6:{}=", foreign())));
    let libc = format!("sysroot/lib/{triplet}/libc.so.6");
    assert_eq!(prov["files"][&libc].as_str().unwrap(), sha256_hex(&fs::read(dir.join(&libc)).unwrap()));
    assert!(dir.join("sysroot").join(loader).exists(), "the ELF interpreter's path: sysroot/{loader}");
}

#[test]
fn concurrent_fetches_of_a_foreign_architecture_share_one_apt_update() {
    // Two processes at once on a fresh root: one updates the private lists, the other waits.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("etcd");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["fetch", "--source", "distro", "--arch", foreign(), "--out-root", root.to_str().unwrap()])
            .env("XTASK_NO_OFFICIAL", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let mut logs = Vec::new();
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        logs.push(format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out)));
    }
    assert!(root.join(version()).join(foreign()).join("etcd").exists());
    // Exactly one of them ran `apt-get update`: the line xtask prints before each update.
    let updates: usize = logs
        .iter()
        .map(|log| log.lines().filter(|l| l.starts_with("apt-get update (private package lists")).count())
        .sum();
    assert_eq!(updates, 1, "the two fetches ran {updates} apt-get update(s), not one:\n{}", logs.join("\n---\n"));
}

#[test]
fn binaries_on_disk_and_a_local_tarball_are_sources_too() {
    let (bytes, _) = tarball();
    let tmp = tempfile::tempdir().unwrap();
    let bin = target().join("test-cache/etcd").join(version()).join(host());
    let root = tmp.path().join("etcd");
    let root_s = root.to_str().unwrap();

    // dir:PATH — the version is what the binary reports; provenance names the directory.
    let src = format!("dir:{}", bin.display());
    let out = xtask(&["fetch", "--arch", host(), "--source", &src, "--out-root", root_s], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let prov: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(root.join(version()).join(host()).join("provenance.json")).unwrap())
            .unwrap();
    assert_eq!(prov["source"], "dir");
    assert_eq!(prov["origin"], format!("dir:{}", fs::canonicalize(&bin).unwrap().display()));
    assert_eq!(prov["reported_version"], version());
    let half = tmp.path().join("half");
    fs::create_dir(&half).unwrap();
    fs::copy(bin.join("etcd"), half.join("etcd")).unwrap();
    let out =
        xtask(&["fetch", "--arch", host(), "--source", &format!("dir:{}", half.display()), "--out-root", root_s], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("etcdctl is missing"), "{}", stderr(&out));

    // tarball:PATH — verified against the pins like a download.
    let sums = checksums(tmp.path());
    let file = tmp.path().join(tarball_name());
    fs::write(&file, bytes).unwrap();
    let root2 = tmp.path().join("etcd2");
    let args = |src: &str| {
        xtask(
            &[
                "fetch",
                "--etcd-version",
                version(),
                "--arch",
                host(),
                "--source",
                src,
                "--checksums",
                sums.to_str().unwrap(),
                "--out-root",
                root2.to_str().unwrap(),
            ],
            &[],
        )
    };
    let out = args(&format!("tarball:{}", file.display()));
    assert!(out.status.success(), "{}", stderr(&out));
    let prov: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(root2.join(version()).join(host()).join("provenance.json")).unwrap())
            .unwrap();
    assert_eq!(prov["source"], "tarball");
    assert!(prov["origin"].as_str().unwrap().starts_with("file:"));

    let evil = tmp.path().join("evil").join(tarball_name());
    fs::create_dir_all(evil.parent().unwrap()).unwrap();
    let mut changed = bytes.clone();
    changed[100] ^= 1;
    fs::write(&evil, &changed).unwrap();
    fs::remove_dir_all(&root2).unwrap();
    let out = args(&format!("tarball:{}", evil.display()));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("mismatch"), "{}", stderr(&out));
    assert_eq!(tree(&root2), vec!["cache".to_string()]);

    // An unknown source lists the choices.
    let out = xtask(&["fetch", "--source", "ftp"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("dir:PATH") && stderr(&out).contains("tarball:PATH"), "{}", stderr(&out));
}

/// The release `smoke --scenario upgrade` moves a cluster to (`upgrade.to` of images/etcd.toml):
/// it must be available offline, from the Debian suite the definition assigns to its line.
fn upgrade_target() -> String {
    let def = xtask::definition::Definition::load(&common::root().join("images/etcd.toml")).unwrap();
    xtask::upgrade::target(&def).unwrap()
}

#[test]
fn the_upgrade_target_comes_from_its_debian_suite_with_that_suites_c_library() {
    // Debian 13 (trixie) ships etcd 3.5 built against glibc 2.41, newer than many build hosts':
    // the binaries come with trixie's C library in sysroot/ and run through its ELF interpreter.
    let to = upgrade_target();
    let root = target().join("test-cache/etcd");
    let root_s = root.to_str().unwrap();
    let dir = root.join(&to).join(host());
    // Private package lists and verified .debs are reused; the output is made anew each run, so
    // that extraction and the version check through the sysroot always run.
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_file(root.join(&to).join(format!("{}.fallback", host())));
    let t = std::time::Instant::now();
    let out =
        xtask(&["fetch", "--etcd-version", &to, "--source", "debian", "--arch", host(), "--out-root", root_s], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    eprintln!("fetch --etcd-version {to} --source debian: {:.1} s", t.elapsed().as_secs_f64());
    let prov: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("provenance.json")).unwrap()).unwrap();
    assert_eq!(prov["source"], "distro");
    assert_eq!(prov["version"], to.as_str());
    assert_eq!(prov["reported_version"], to.as_str(), "etcd --version, run through the sysroot's interpreter");
    let origin = prov["origin"].as_str().unwrap();
    assert!(origin.contains(&format!("debian:etcd-server:{}={to}-", host())), "{origin}");
    assert!(origin.contains(&format!("debian:libc6:{}=", host())), "{origin}");
    for name in ["etcd", "etcdctl", "etcdutl"] {
        assert_eq!(prov["files"][name].as_str().unwrap(), sha256_hex(&fs::read(dir.join(name)).unwrap()), "{name}");
    }
    let sysroot = dir.join("sysroot");
    let interp = xtask::image::elf::read(&dir.join("etcd")).unwrap().interp.expect("Debian's etcd is dynamic");
    assert!(sysroot.join(interp.trim_start_matches('/')).exists(), "{interp} in the sysroot");
    let libc = prov["files"]
        .as_object()
        .unwrap()
        .keys()
        .find(|k| k.starts_with("sysroot/") && k.ends_with("/libc.so.6"))
        .unwrap_or_else(|| panic!("no libc.so.6 recorded: {prov}"))
        .clone();
    assert_eq!(prov["files"][&libc].as_str().unwrap(), sha256_hex(&fs::read(dir.join(&libc)).unwrap()));

    // Every binary runs here through the sysroot (never against the host's C library).
    let got = xtask::acquire::Acquired::open(&dir).unwrap();
    for (name, arg, want) in [
        ("etcd", "--version", "etcd Version: "),
        ("etcdctl", "version", "etcdctl version: "),
        ("etcdutl", "version", "etcdutl version: "),
    ] {
        let text = common::ok(got.command(name).unwrap().arg(arg));
        assert!(text.contains(&format!("{want}{to}")), "{name} {arg}: {text}");
    }

    // Again: up to date, verified by hash.
    let out =
        xtask(&["fetch", "--etcd-version", &to, "--source", "debian", "--arch", host(), "--out-root", root_s], &[]);
    assert!(out.status.success() && stderr(&out).contains("up to date"), "{}", stderr(&out));

    // `auto` with no download location reachable falls back to the same suite, loudly.
    let server = Server::start();
    let missing = server.url("missing");
    let out =
        xtask(&["fetch", "--etcd-version", &to, "--arch", host(), "--mirror", &missing, "--out-root", root_s], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("WARNING: falling back to Debian"), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("etcd {to} {} (distro)", host())));
    assert_eq!(server.hits("missing"), 1, "the pinned official tarball is tried first");
}

#[test]
fn a_release_line_is_never_served_by_another_lines_suite() {
    let tmp = tempfile::tempdir().unwrap();
    let root = target().join("test-cache/etcd");
    let root_s = root.to_str().unwrap();
    let def = |suites: &str| {
        let p = tmp.path().join(format!("def-{}.toml", suites.len()));
        fs::write(
            &p,
            format!(
                "[etcd]\nversion = \"3.4.9\"\narches = [\"{}\"]\nchecksums = \"sums\"\n[etcd.debian_suites]\n{suites}",
                host()
            ),
        )
        .unwrap();
        p
    };
    let fetch = |d: &Path, version: &str| {
        let d = d.to_str().unwrap();
        let args = ["fetch", "--definition", d, "--etcd-version", version, "--source", "debian", "--arch", host()];
        xtask(&[&args[..], &["--out-root", root_s]].concat(), &[])
    };

    // 3.4 asked for, but the definition points its line at trixie (3.5): refused.
    let d = def("\"3.4\" = \"trixie\"\n");
    let out = fetch(&d, "3.4.9");
    assert!(!out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("not a 3.4.x release") && err.contains("etcd.debian_suites.\"3.4\""), "{err}");
    assert!(err.contains("trixie"), "{err}");

    // 3.5 asked for, but its line points at the host's suite (3.4 here): refused.
    let d = def("\"3.5\" = \"host\"\n");
    let out = fetch(&d, &upgrade_target());
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a 3.5.x release"), "{}", stderr(&out));

    // A line without a suite is an error naming the field, never a guess.
    let out = fetch(&d, "3.6.0");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("etcd.debian_suites has no entry for etcd 3.6"), "{}", stderr(&out));

    // A suite that is no codename is refused when the definition is read.
    let d = def("\"3.5\" = \"stable\"\n");
    let out = fetch(&d, "3.5.16");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("etcd.debian_suites") && stderr(&out).contains("codename"), "{}", stderr(&out));
}
