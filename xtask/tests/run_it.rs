//! The README's "Run it" section, proven. Every block marked `<!-- recipe: NAME -->` runs verbatim
//! with `bash -euo pipefail` from the repository root (the recipes use paths relative to it and
//! write under `target/run-it/`), in README order, each followed by checks of what it should have
//! done: etcd healthy through etcdctl with the client certificate, a write read back through
//! another node, the data in its volume (0700, uid 10001), the health check healthy, the error a
//! key of the wrong owner gives; the Docker blocks against a dockerd of the test's own
//! (`common::dockerd`: Debian's docker.io, isolated from the host's), with Docker's image ID,
//! user, data volume and the node's uid checked; then the day-2 runbooks on the three-node cluster (upgrade to
//! 3.5, renew, CA rotation, replace a member, defragment one member at a time), each followed
//! by the data and membership it must leave, and the space runbooks on a member of their own (the NOSPACE alarm raised and cleared,
//! a full data disk on a tmpfs filled and freed), and the disaster-recovery runbooks (a snapshot shipped with rsync over ssh to
//! a backup host of the test's own, the survivor path, the snapshot path). Not from the README, the same image also runs as a three-node
//! mutual-TLS cluster configured only by `ETCD_*` variables, and as one node configured by a
//! mounted `--config-file`.
//!
//! The one adaptation to this machine, which leaves every recipe's text alone: podman reads a
//! containers.conf named by `CONTAINERS_CONF` with the runtime and rlimits that
//! `xtask::image::podman::run_args()` works out for `cargo xtask smoke` (runc on a cgroup v1
//! host, rlimits at or below the hard limits). The recipes otherwise get the environment of the
//! shell that ran `cargo test`, without the variables cargo sets for test processes (see
//! `xtask::util::set_by_cargo_for_a_crate`).
//!
//! Needs root, podman, bash, cargo, cfssl, curl, tar, docker.io (dockerd, docker,
//! containerd), openssh-server, openssh-client and rsync; a missing one fails the test.
//! The image is etcd v3.4.9 built from source (`$XTASK_TEST_ETCD_GIT`, see `common`). Everything
//! created (containers, volumes, networks, `target/run-it/`) is removed at the start (leftovers of
//! an interrupted run), at the end and on failure.
//!
//! Longer than 600 lines: the README's recipes run in order against one podman network, each
//! followed by its checks; they depend on each other, so they stay in one file.

mod common;
use common::{require, root, run, text, XTASK};

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What `cargo xtask image --load` gives a user with the pinned version.
const IMAGE: &str = "localhost/etcd:3.4.9";
/// The image's etcd user.
const ETCD_UID: u32 = 10001;

/// The recipes the README must have, in this order; each has its checks below.
const RECIPES: &[&str] = &[
    "single-node",
    "three-nodes",
    "cfssl-stand-in",
    "byo-pki",
    "wrong-owner",
    "etcdctl",
    "health-check",
    "docker-node",
    "docker-cleanup",
    "upgrade",
    "renew",
    "rotate-ca",
    "replace-member",
    "defrag",
    "nospace",
    "nospace-runbook",
    "disk-full",
    "http-to-tls",
    "backup-offhost",
    "restore-survivor",
    "restore-snapshot",
    "cleanup",
];

/// Recipes of the README that other tests run verbatim, each beside what it needs.
const RUN_ELSEWHERE: &[(&str, &str)] = &[("prometheus-host", "xtask/tests/monitoring.rs")];

/// The release the upgrade runbook moves the three-node cluster to (`upgrade.to`).
const UPGRADED: &str = "localhost/etcd:3.5.16";

/// What the README's recipes create (the cleanup recipe must remove all of it).
const README_CONTAINERS: &[&str] =
    &["demo0", "demo1", "demo2", "demo3", "demo4", "demo5", "plain1", "plain2", "plain3"];
/// The small file system the space recipes mount for demo5's data.
const README_MOUNT: &str = "target/run-it/demo5-data";
const README_VOLUMES: &[&str] = &[
    "demo0-data",
    "demo1-data",
    "demo2-data",
    "demo3-data",
    "demo4-data",
    "plain1-data",
    "plain2-data",
    "plain3-data",
];
const README_NETWORK: &str = "etcd-demo";
const README_DIR: &str = "target/run-it";

/// What etcd 3.4.9 prints when it cannot read its key (the README quotes it).
const KEY_ERROR: &str = "etcdmain: open /etc/etcd/pki/server.key: permission denied";
/// ... and when the mounted directory itself is root's 0700.
const DIR_ERROR: &str = "etcdmain: open /etc/etcd/pki/server.crt: permission denied";

// ---------------------------------------------------------------------------------------------
// podman, adapted to this machine through CONTAINERS_CONF only

/// A containers.conf with what `run_args()` would add to `podman run` here.
fn containers_conf() -> &'static Path {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        let args = xtask::image::podman::run_args().expect("detect podman's adaptation to this host");
        let mut runtime = None;
        let mut ulimits = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let v = it.next().unwrap_or_else(|| panic!("run_args() gave {a} without a value: {args:?}"));
            match a.as_str() {
                "--runtime" => runtime = Some(v.clone()),
                "--ulimit" => ulimits.push(format!("{v:?}")),
                _ => panic!("run_args() gave {a} {v}, which this test cannot put in a containers.conf"),
            }
        }
        let mut conf = String::from("# Written by xtask/tests/run_it.rs: podman's adaptation to this host.\n");
        conf += &format!("[containers]\ndefault_ulimits = [{}]\n", ulimits.join(", "));
        if let Some(r) = runtime {
            conf += &format!("\n[engine]\nruntime = {r:?}\n");
        }
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run_it-containers.conf");
        fs::write(&path, &conf).unwrap();
        eprintln!("run_it: CONTAINERS_CONF={}:\n{conf}", path.display());
        path
    })
}

fn podman(args: &[&str]) -> Output {
    run(Command::new("podman").args(args).env("CONTAINERS_CONF", containers_conf()))
}

/// `podman ARGS` that must succeed; its stdout. On failure, also the logs of `logs_of`.
fn podman_ok(args: &[&str], logs_of: &[&str]) -> String {
    let out = podman(args);
    if !out.status.success() {
        fail(&format!("podman {args:?} failed:\n{}", text(&out)), logs_of);
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails the test with `msg` and the last lines of each container's log.
fn fail(msg: &str, logs_of: &[&str]) -> ! {
    let mut all = msg.to_string();
    for c in logs_of {
        let out = podman(&["logs", "--tail", "40", c]);
        all += &format!("\n----- podman logs --tail 40 {c} -----\n{}", text(&out));
    }
    panic!("{all}");
}

/// Removes containers (with their anonymous volumes), volumes, networks and directories; missing
/// ones are fine. Used at the start (leftovers) and on drop (end of test and failures).
struct Cleanup {
    containers: Vec<String>,
    volumes: Vec<String>,
    networks: Vec<String>,
    /// Unmounted (when mounted) before `dirs` are removed.
    mounts: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Cleanup {
    /// The containers `nodes`, their volumes `<node>-data` and the network `network`.
    fn nodes(nodes: &[&str], network: &str) -> Cleanup {
        Cleanup {
            containers: nodes.iter().map(|s| s.to_string()).collect(),
            volumes: nodes.iter().map(|n| format!("{n}-data")).collect(),
            networks: vec![network.to_string()],
            mounts: Vec::new(),
            dirs: Vec::new(),
        }
    }

    fn run(&self) {
        for c in &self.containers {
            let _ = podman(&["rm", "-f", "-v", "-t", "0", c]);
        }
        for v in &self.volumes {
            let _ = podman(&["volume", "rm", "-f", v]);
        }
        for n in &self.networks {
            let _ = podman(&["network", "rm", "-f", n]);
        }
        for m in &self.mounts {
            // An error here: it was not mounted.
            let _ = Command::new("umount").arg(m).output();
        }
        for d in &self.dirs {
            let _ = fs::remove_dir_all(d);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.run();
    }
}

/// `podman container|volume|network exists NAME`.
fn exists(kind: &str, name: &str) -> bool {
    podman(&[kind, "exists", name]).status.success()
}

// ---------------------------------------------------------------------------------------------
// the image

/// Builds etcd v3.4.9 from source, bakes and loads the image, and checks that a container starts
/// with the CONTAINERS_CONF adaptation. Once per test process.
fn image() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        assert!(xtask::util::is_root(), "this test runs rootful podman with static IPs: run it as root");
        for tool in ["podman", "bash", "cargo", "cfssl", "cfssljson", "curl", "tar"] {
            require(tool);
        }
        common::build_etcd_349(&[common::host_arch()]);
        let t = Instant::now();
        let out = run(Command::new(XTASK)
            .args(["image", "--source", "build", "--load"])
            .current_dir(root())
            .env("XTASK_NO_OFFICIAL", "1")
            .env("CONTAINERS_CONF", containers_conf()));
        let all = text(&out);
        assert!(out.status.success(), "xtask image --source build --load failed:\n{all}");
        assert!(all.contains(IMAGE), "xtask image --load did not load {IMAGE}:\n{all}");
        eprintln!("run_it: image {IMAGE} built and loaded in {:.1} s", t.elapsed().as_secs_f64());
        let version = podman_ok(&["run", "--rm", "--network", "none", IMAGE, "--version"], &[]);
        assert!(version.contains("etcd Version: 3.4.9"), "{IMAGE} --version printed:\n{version}");
    });
}

// ---------------------------------------------------------------------------------------------
// etcd checks

/// etcdctl's TLS flags for certificate files inside the container.
struct Tls {
    ca: &'static str,
    cert: &'static str,
    key: &'static str,
}

const PKI_TLS: Tls =
    Tls { ca: "/etc/etcd/pki/ca.crt", cert: "/etc/etcd/pki/client.crt", key: "/etc/etcd/pki/client.key" };
const CFSSL_TLS: Tls =
    Tls { ca: "/etc/etcd/pki/ca.pem", cert: "/etc/etcd/pki/client.pem", key: "/etc/etcd/pki/client-key.pem" };

/// `podman exec CONTAINER etcdctl --endpoints E <tls> ARGS`.
fn etcdctl(container: &str, endpoints: &str, tls: &Tls, args: &[&str]) -> Output {
    let mut all = vec![
        "exec",
        container,
        "etcdctl",
        "--endpoints",
        endpoints,
        "--cacert",
        tls.ca,
        "--cert",
        tls.cert,
        "--key",
        tls.key,
        "--dial-timeout",
        "2s",
        "--command-timeout",
        "5s",
    ];
    all.extend_from_slice(args);
    podman(&all)
}

/// Waits until every endpoint is healthy (etcdctl with the client certificate, from inside
/// `container`); fails with the logs of `nodes` when a node stops or after 45 s.
fn wait_healthy(container: &str, endpoints: &str, tls: &Tls, nodes: &[&str]) {
    let t = Instant::now();
    loop {
        let out = etcdctl(container, endpoints, tls, &["endpoint", "health"]);
        if out.status.success() {
            eprintln!("run_it: {endpoints} healthy after {:.1} s", t.elapsed().as_secs_f64());
            return;
        }
        for n in nodes {
            let running = podman(&["inspect", "--format", "{{.State.Running}}", n]);
            if String::from_utf8_lossy(&running.stdout).trim() != "true" {
                fail(&format!("{n} is not running (waiting for {endpoints}):\n{}", text(&out)), nodes);
            }
        }
        if t.elapsed() > Duration::from_secs(45) {
            fail(&format!("{endpoints} not healthy after 45 s:\n{}", text(&out)), nodes);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A write through `(writer, endpoint)` read back, linearizably, through `(reader, endpoint)`.
fn put_get(writer: (&str, &str), reader: (&str, &str), tls: &Tls, key: &str, nodes: &[&str]) {
    let value = format!("value-of-{key}");
    let out = etcdctl(writer.0, writer.1, tls, &["put", key, &value]);
    if !out.status.success() || !text(&out).contains("OK") {
        fail(&format!("put {key} through {} failed:\n{}", writer.1, text(&out)), nodes);
    }
    let out = etcdctl(reader.0, reader.1, tls, &["get", key, "--print-value-only"]);
    if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() != value {
        fail(&format!("get {key} through {} did not return {value:?}:\n{}", reader.1, text(&out)), nodes);
    }
}

/// The volume holds etcd's data (`member/`) in a directory of mode 0700 owned by the etcd uid.
fn check_volume(volume: &str, nodes: &[&str]) {
    let mountpoint = podman_ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", volume], nodes);
    let dir = Path::new(mountpoint.trim());
    let meta = fs::metadata(dir).unwrap_or_else(|e| fail(&format!("{volume}: {}: {e}", dir.display()), nodes));
    if meta.mode() & 0o7777 != 0o700 || meta.uid() != ETCD_UID {
        fail(
            &format!(
                "{volume}: {} has mode {:o} uid {}, want 0700 uid {ETCD_UID}",
                dir.display(),
                meta.mode() & 0o7777,
                meta.uid()
            ),
            nodes,
        );
    }
    if !dir.join("member/wal").is_dir() || !dir.join("member/snap/db").is_file() {
        fail(&format!("{volume}: no etcd data (member/wal, member/snap/db) in {}", dir.display()), nodes);
    }
}

/// Copies a node's certificate directory (plus the client certificate) for the etcd uid: the
/// directory 0700, keys 0600, everything owned by 10001.
fn stage_for_etcd(node_dir: &Path, client_dir: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    let mut files: Vec<PathBuf> = fs::read_dir(node_dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.extend([client_dir.join("client.crt"), client_dir.join("client.key")]);
    for f in files {
        let to = dest.join(f.file_name().unwrap());
        fs::copy(&f, &to).unwrap();
        std::os::unix::fs::chown(&to, Some(ETCD_UID), Some(ETCD_UID)).unwrap();
    }
    std::os::unix::fs::chown(dest, Some(ETCD_UID), Some(ETCD_UID)).unwrap();
    fs::set_permissions(dest, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
}

/// `xtask pki --cluster FILE --out DIR` for a description written to `dir`.
fn issue_pki(dir: &Path, cluster_toml: &str) -> PathBuf {
    let file = dir.join("cluster.toml");
    fs::write(&file, cluster_toml).unwrap();
    let out_dir = dir.join("pki");
    let out = run(Command::new(XTASK).arg("pki").arg("--cluster").arg(&file).arg("--out").arg(&out_dir));
    assert!(out.status.success(), "xtask pki failed:\n{}", text(&out));
    out_dir
}

// ---------------------------------------------------------------------------------------------
// the README

struct Recipe {
    name: String,
    text: String,
}

/// Every fenced block right after a `<!-- recipe: NAME -->` line, verbatim.
fn recipes(readme: &str) -> Vec<Recipe> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.trim().strip_prefix("<!-- recipe:").and_then(|r| r.strip_suffix("-->")) else {
            continue;
        };
        let name = name.trim().to_string();
        let fence = lines.get(i + 1).copied().unwrap_or_default();
        assert!(fence.starts_with("```"), "README.md line {}: recipe {name} is not followed by a code fence", i + 1);
        let body: Vec<&str> = lines[i + 2..].iter().take_while(|l| !l.starts_with("```")).copied().collect();
        assert!(lines.len() > i + 2 + body.len(), "README.md: recipe {name} has no closing fence");
        found.push(Recipe { name, text: body.join("\n") + "\n" });
    }
    found
}

/// Runs a recipe verbatim with `bash -euo pipefail` from the repository root, in the environment
/// of the shell that ran `cargo test` plus CONTAINERS_CONF; returns all it printed. On failure:
/// its output and the logs of `nodes`.
fn run_recipe(r: &Recipe, nodes: &[&str]) -> String {
    run_recipe_env(r, nodes, &[])
}

/// [`run_recipe`] with more environment (e.g. `DOCKER_HOST` of the test's own dockerd).
fn run_recipe_env(r: &Recipe, nodes: &[&str], env: &[(String, String)]) -> String {
    let t = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", &r.text]).current_dir(root()).env("CONTAINERS_CONF", containers_conf());
    xtask::util::as_from_a_shell(&mut cmd);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let out = run(&mut cmd);
    let all = text(&out);
    if !out.status.success() {
        fail(&format!("recipe {} failed ({}):\n{}\n----- output -----\n{all}", r.name, out.status, r.text), nodes);
    }
    eprintln!("run_it: recipe {} ran in {:.1} s", r.name, t.elapsed().as_secs_f64());
    all
}

fn readme_cleanup() -> Cleanup {
    Cleanup {
        containers: README_CONTAINERS.iter().map(|s| s.to_string()).collect(),
        volumes: README_VOLUMES.iter().map(|s| s.to_string()).collect(),
        networks: vec![README_NETWORK.to_string()],
        mounts: vec![root().join(README_MOUNT)],
        dirs: vec![root().join(README_DIR)],
    }
}

#[test]
fn readme_run_it_recipes_work_verbatim() {
    image();
    let started = Instant::now();
    let readme = common::docs_text();
    let found = recipes(&readme);
    let names: Vec<&str> =
        found.iter().map(|r| r.name.as_str()).filter(|n| !RUN_ELSEWHERE.iter().any(|(o, _)| o == n)).collect();
    assert_eq!(
        names, RECIPES,
        "the recipes of the README and docs/ (<!-- recipe: NAME --> blocks) are not the ones this test checks"
    );
    let recipe = |name: &str| found.iter().find(|r| r.name == name).unwrap();
    for quote in [KEY_ERROR, DIR_ERROR] {
        assert!(readme.contains(quote), "the docs do not quote etcd's error {quote:?}");
    }
    let guard = readme_cleanup();
    guard.run();

    // One node with TLS.
    let demo0 = ["demo0"];
    run_recipe(recipe("single-node"), &demo0);
    wait_healthy("demo0", "https://10.89.79.10:2379", &PKI_TLS, &demo0);
    put_get(("demo0", "https://10.89.79.10:2379"), ("demo0", "https://127.0.0.1:2379"), &PKI_TLS, "single", &demo0);
    check_volume("demo0-data", &demo0);
    // What the recipe's `--cipher-suites` gives, scanned by testssl.sh while the next recipes run.
    let scan = std::thread::spawn(|| run(Command::new(XTASK).args(["tls-check", "10.89.79.10:2379"])));

    // Three nodes with the tutorial's flags.
    let cluster = ["demo1", "demo2", "demo3"];
    let all3 = "https://10.89.79.11:2379,https://10.89.79.12:2379,https://10.89.79.13:2379";
    run_recipe(recipe("three-nodes"), &cluster);
    wait_healthy("demo1", all3, &PKI_TLS, &cluster);
    let members = etcdctl("demo2", "https://10.89.79.12:2379", &PKI_TLS, &["member", "list"]);
    let started_members =
        String::from_utf8_lossy(&members.stdout).lines().filter(|l| l.contains(", started, ")).count();
    if started_members != 3 {
        fail(&format!("member list does not show 3 started members:\n{}", text(&members)), &cluster);
    }
    put_get(("demo1", "https://10.89.79.11:2379"), ("demo3", "https://10.89.79.13:2379"), &PKI_TLS, "three", &cluster);
    for v in ["demo1-data", "demo2-data", "demo3-data"] {
        check_volume(v, &cluster);
    }
    let scan = scan.join().unwrap();
    if !scan.status.success() {
        fail(&format!("the single-node recipe's etcd fails the TLS policy:\n{}", text(&scan)), &demo0);
    }
    eprintln!("run_it: {}", text(&scan).trim());

    // Bring your own PKI: cfssl's names.
    run_recipe(recipe("cfssl-stand-in"), &[]);
    for f in ["ca.pem", "server.pem", "server-key.pem", "peer.pem", "peer-key.pem", "client.pem", "client-key.pem"] {
        assert!(root().join(README_DIR).join("cfssl").join(f).is_file(), "cfssl-stand-in made no {f}");
    }
    let demo4 = ["demo4"];
    run_recipe(recipe("byo-pki"), &demo4);
    wait_healthy("demo4", "https://10.89.79.14:2379", &CFSSL_TLS, &demo4);
    put_get(("demo4", "https://10.89.79.14:2379"), ("demo4", "https://127.0.0.1:2379"), &CFSSL_TLS, "byo", &demo4);
    check_volume("demo4-data", &demo4);

    // A key etcd cannot read: the error the README quotes.
    let out = run_recipe(recipe("wrong-owner"), &[]);
    assert!(out.contains(KEY_ERROR), "wrong-owner: etcd did not print {KEY_ERROR:?}:\n{out}");
    assert!(out.contains("etcd exited with status 1"), "wrong-owner: etcd did not exit with status 1:\n{out}");
    // And the README's claim about mounting pki's own (root, 0700) output directory.
    let node_dir = root().join(README_DIR).join("single/nodes/demo0");
    let out = podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &format!("{}:/etc/etcd/pki:ro", node_dir.display()),
        IMAGE,
        "--listen-client-urls",
        "https://127.0.0.1:2379",
        "--advertise-client-urls",
        "https://127.0.0.1:2379",
        "--cert-file",
        "/etc/etcd/pki/server.crt",
        "--key-file",
        "/etc/etcd/pki/server.key",
    ]);
    assert!(!out.status.success(), "etcd started with root's 0700 certificate directory:\n{}", text(&out));
    assert!(
        text(&out).contains(DIR_ERROR),
        "root's certificate directory: etcd did not print {DIR_ERROR:?}:\n{}",
        text(&out)
    );

    // etcdctl inside the containers, curl from the host.
    let out = run_recipe(recipe("etcdctl"), &cluster);
    for ip in ["10.89.79.11", "10.89.79.12", "10.89.79.13"] {
        assert!(out.contains(&format!("https://{ip}:2379 is healthy")), "etcdctl recipe: {ip} not healthy:\n{out}");
    }
    assert!(out.lines().any(|l| l.trim() == "hello"), "etcdctl recipe: the get did not print hello:\n{out}");
    assert!(out.contains(r#""health":"true""#), "etcdctl recipe: curl /health did not answer healthy:\n{out}");
    let got = etcdctl("demo2", "https://10.89.79.12:2379", &PKI_TLS, &["get", "greeting", "--print-value-only"]);
    if String::from_utf8_lossy(&got.stdout).trim() != "hello" {
        fail(&format!("greeting is not hello on demo2:\n{}", text(&got)), &cluster);
    }

    // The health check.
    let out = run_recipe(recipe("health-check"), &demo0);
    assert!(out.contains("demo0: healthy") && out.contains("(healthy)"), "health-check recipe:\n{out}");
    let status = podman_ok(&["inspect", "--format", "{{.State.Health.Status}}", "demo0"], &demo0);
    assert_eq!(status.trim(), "healthy", "demo0's health status");

    // Docker (Debian's docker.io, a daemon of this test's own): our archive loads as it is, and
    // the node serves as the etcd uid.
    let (dockerd, client) = common::dockerd::programs();
    let docker = common::dockerd::Dockerd::start(&dockerd, client);
    let out = run_recipe_env(recipe("docker-node"), &[], &docker.shell_env());
    assert!(out.contains("Loaded image: localhost/etcd:3.4.9"), "docker-node recipe:\n{out}");
    assert!(out.contains("https://127.0.0.1:2379 is healthy") && out.contains("OK"), "docker-node recipe:\n{out}");
    let layout = root().join(format!("target/images/etcd-3.4.9-linux-{}", common::host_arch()));
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_hex = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(manifest_hex)).unwrap()).unwrap();
    let id = docker.ok(&["image", "inspect", "--format", "{{.Id}}", IMAGE]);
    assert_eq!(id.trim(), manifest["config"]["digest"].as_str().unwrap(), "Docker's image ID is not our config digest");
    let user = docker.ok(&["inspect", "--format", "{{.Config.User}}", "demo-docker"]);
    assert_eq!(user.trim(), "10001:10001");
    let pid = docker.ok(&["inspect", "--format", "{{.State.Pid}}", "demo-docker"]);
    let status = fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert!(uids.split_whitespace().skip(1).all(|u| u == ETCD_UID.to_string()), "etcd under Docker: {uids}");
    let got = docker.ok(&[
        "exec",
        "demo-docker",
        "etcdctl",
        "--endpoints",
        "https://127.0.0.1:2379",
        "--cacert",
        PKI_TLS.ca,
        "--cert",
        PKI_TLS.cert,
        "--key",
        PKI_TLS.key,
        "get",
        "from-docker",
        "--print-value-only",
    ]);
    assert_eq!(got.trim(), "yes");
    let volume = docker.ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", "demo-docker-data"]);
    let meta = fs::metadata(volume.trim()).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o700, ETCD_UID), "Docker's data volume");
    run_recipe_env(recipe("docker-cleanup"), &[], &docker.shell_env());
    assert_eq!(docker.ok(&["ps", "-aq"]).trim(), "", "docker-cleanup left a container");
    assert!(!docker.ok(&["volume", "ls", "-q"]).contains("demo-docker-data"), "docker-cleanup left the volume");
    let mut docker = docker;
    if let Err(e) = docker.shut_down() {
        panic!("this test's dockerd did not shut down cleanly:\n{e}");
    }

    // Day-2: the runbooks on the three-node cluster, which keeps its data through all of them.
    let greeting = |node: &str, ip: &str| {
        let got = etcdctl(node, &format!("https://{ip}:2379"), &PKI_TLS, &["get", "greeting", "--print-value-only"]);
        if String::from_utf8_lossy(&got.stdout).trim() != "hello" {
            fail(&format!("greeting is not hello on {node}:\n{}", text(&got)), &cluster);
        }
    };
    let out = run_recipe(recipe("upgrade"), &cluster);
    for (node, ip) in [("demo1", "10.89.79.11"), ("demo2", "10.89.79.12"), ("demo3", "10.89.79.13")] {
        let image = podman_ok(&["inspect", "--format", "{{.ImageName}}", node], &cluster);
        assert_eq!(image.trim(), UPGRADED, "{node} after the upgrade runbook");
        let status = etcdctl(node, &format!("https://{ip}:2379"), &PKI_TLS, &["endpoint", "status", "-w", "json"]);
        assert!(text(&status).contains(r#""version":"3.5.16""#), "{node} after the upgrade:\n{}", text(&status));
        greeting(node, ip);
    }
    assert!(out.contains(r#""etcdcluster":"3.5.0""#), "upgrade recipe: the cluster version is not 3.5:\n{out}");
    let snapshot = root().join(README_DIR).join("before-upgrade.db");
    assert!(fs::metadata(&snapshot).map(|m| m.len() > 0).unwrap_or(false), "no snapshot kept before the upgrade");
    put_get(
        ("demo1", "https://10.89.79.11:2379"),
        ("demo3", "https://10.89.79.13:2379"),
        &PKI_TLS,
        "upgraded",
        &cluster,
    );

    let out = run_recipe(recipe("renew"), &cluster);
    assert_eq!(out.matches("serves the renewed certificate").count(), 3, "renew recipe:\n{out}");
    put_get(
        ("demo2", "https://10.89.79.12:2379"),
        ("demo1", "https://10.89.79.11:2379"),
        &PKI_TLS,
        "renewed",
        &cluster,
    );

    let out = run_recipe(recipe("rotate-ca"), &cluster);
    assert!(!out.contains("was accepted"), "rotate-ca recipe:\n{out}");
    let rotation = fs::read_to_string(root().join(README_DIR).join("demo/rotation.json")).unwrap();
    assert!(rotation.contains(r#""phase": "done""#), "rotation.json after the runbook:\n{rotation}");
    assert!(root().join(README_DIR).join("demo/ca.old-1/ca.key").is_file(), "the old CA's key was not kept");
    put_get(
        ("demo3", "https://10.89.79.13:2379"),
        ("demo2", "https://10.89.79.12:2379"),
        &PKI_TLS,
        "rotated",
        &cluster,
    );

    let before = etcdctl("demo1", "https://10.89.79.11:2379", &PKI_TLS, &["member", "list"]);
    let old_id = String::from_utf8_lossy(&before.stdout)
        .lines()
        .find(|l| l.contains(", demo2, "))
        .and_then(|l| l.split(',').next())
        .map(str::to_string)
        .unwrap_or_else(|| fail(&format!("demo2 is not a member:\n{}", text(&before)), &cluster));
    run_recipe(recipe("replace-member"), &cluster);
    wait_healthy("demo1", all3, &PKI_TLS, &cluster);
    let after = etcdctl("demo2", "https://10.89.79.12:2379", &PKI_TLS, &["member", "list"]);
    let list = String::from_utf8_lossy(&after.stdout).to_string();
    assert_eq!(list.lines().filter(|l| l.contains(", started, ") && l.ends_with(", false")).count(), 3, "{list}");
    assert!(!list.contains(&old_id), "the lost member's ID {old_id} is still listed:\n{list}");
    greeting("demo2", "10.89.79.12");
    put_get(
        ("demo2", "https://10.89.79.12:2379"),
        ("demo3", "https://10.89.79.13:2379"),
        &PKI_TLS,
        "replaced",
        &cluster,
    );

    // Defragmentation by hand, as each host's etcd-defrag.timer does: one member at a time, each
    // alone; the data stays.
    let out = run_recipe(recipe("defrag"), &cluster);
    assert_eq!(
        out.matches("Finished defragmenting etcd member[https://127.0.0.1:2379]").count(),
        3,
        "defrag recipe:\n{out}"
    );
    assert!(out.contains("DB SIZE"), "defrag recipe: no status table:\n{out}");
    greeting("demo1", "10.89.79.11");
    put_get(
        ("demo3", "https://10.89.79.13:2379"),
        ("demo1", "https://10.89.79.11:2379"),
        &PKI_TLS,
        "defragmented",
        &cluster,
    );

    // The space incidents on demo5: the NOSPACE alarm raised by the quota and cleared by the
    // runbook, then its data disk filled and freed, its data kept.
    let demo5 = ["demo5"];
    let out = run_recipe(recipe("nospace"), &demo5);
    assert!(out.contains("mvcc: database space exceeded"), "nospace recipe: no alarm:\n{out}");
    let out = run_recipe(recipe("nospace-runbook"), &demo5);
    assert!(out.contains("alarm:NOSPACE") && out.lines().any(|l| l.trim() == "yes"), "nospace-runbook:\n{out}");
    let alarms = podman_ok(
        &[
            "exec",
            "demo5",
            "etcdctl",
            "--endpoints",
            "https://127.0.0.1:2379",
            "--cacert",
            "/etc/etcd/pki/ca.crt",
            "--cert",
            "/etc/etcd/pki/client.crt",
            "--key",
            "/etc/etcd/pki/client.key",
            "alarm",
            "list",
        ],
        &demo5,
    );
    assert_eq!(alarms.trim(), "", "alarms left after the runbook");
    let out = run_recipe(recipe("disk-full"), &demo5);
    assert!(out.contains("no space left on device"), "disk-full recipe: etcd did not fail on the full disk:\n{out}");
    assert!(out.lines().any(|l| l.trim() == "yes"), "disk-full recipe: data after the restart:\n{out}");

    // A cluster born on plain http, switched to mutual TLS: the same members, https everywhere,
    // the key written on http still there, the data in the same volumes.
    let plain = ["plain1", "plain2", "plain3"];
    run_recipe(recipe("http-to-tls"), &plain);
    let ids = |list: &str| -> Vec<String> {
        let mut v: Vec<String> =
            list.lines().filter_map(|l| l.split(',').next()).map(|s| s.trim().to_string()).collect();
        v.sort();
        v
    };
    let before = fs::read_to_string(root().join(README_DIR).join("plain-members-before.txt")).unwrap();
    let after = etcdctl("plain2", "https://10.89.79.22:2379", &PKI_TLS, &["member", "list"]);
    let after = String::from_utf8_lossy(&after.stdout).to_string();
    assert_eq!(ids(&before).len(), 3, "{before}");
    assert_eq!(ids(&after), ids(&before), "member IDs changed:\nbefore\n{before}\nafter\n{after}");
    assert!(before.contains("http://") && !before.contains("https://"), "born on http:\n{before}");
    assert!(!after.contains("http://") && after.matches("https://").count() == 6, "after the switch:\n{after}");
    let got = etcdctl("plain3", "https://10.89.79.23:2379", &PKI_TLS, &["get", "born-on", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "http", "{}", text(&got));
    for v in ["plain1-data", "plain2-data", "plain3-data"] {
        check_volume(v, &plain);
    }

    disaster_recovery(&found, &cluster);

    // Clean up: nothing of the README's is left.
    run_recipe(recipe("cleanup"), &[]);
    for c in README_CONTAINERS {
        assert!(!exists("container", c), "cleanup recipe left container {c}");
    }
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&*root().join(README_MOUNT).to_string_lossy()),
        "cleanup recipe left {README_MOUNT} mounted"
    );
    for v in README_VOLUMES {
        assert!(!exists("volume", v), "cleanup recipe left volume {v}");
    }
    assert!(!exists("network", README_NETWORK), "cleanup recipe left network {README_NETWORK}");
    assert!(!root().join(README_DIR).exists(), "cleanup recipe left {README_DIR}");
    drop(guard);
    eprintln!("run_it: README recipes and checks: {:.1} s", started.elapsed().as_secs_f64());
}

/// The disaster-recovery runbooks on the three-node cluster (on 3.5.16 by now), against a backup
/// host of the test's own (`xtask::smoke::backup_host`: Debian's sshd on loopback, the node's key
/// forced to rrsync), whose address, port, key and known_hosts the recipes get as an operator
/// sets them: the snapshot shipped and readable there; the survivor path back to three started
/// voting members with equal hashes and every key; the snapshot path back to the snapshot's
/// revision, the keys written after the backup gone and those before it there.
fn disaster_recovery(found: &[Recipe], cluster: &[&str]) {
    use xtask::smoke::backup_host::{keygen, public_key, BackupHost};
    let recipe = |name: &str| found.iter().find(|r| r.name == name).unwrap();
    let all3 = "https://10.89.79.11:2379,https://10.89.79.12:2379,https://10.89.79.13:2379";
    let tmp = tempfile::tempdir().unwrap();
    // The demo's node key, made as an operator makes one (the demo has no `cargo xtask pki`).
    let key = tmp.path().join("id_ed25519");
    keygen(&key, "backup@demo1").unwrap();
    let host = BackupHost::start(
        &tmp.path().join("host"),
        "127.0.0.1".parse().unwrap(),
        None,
        None,
        &[public_key(&key).unwrap()],
    )
    .unwrap();
    let known = tmp.path().join("known_hosts");
    fs::write(&known, host.known_hosts_line() + "\n").unwrap();
    let env: Vec<(String, String)> = [
        ("BACKUP_HOST", host.addr().to_string()),
        ("BACKUP_PORT", host.port().to_string()),
        ("BACKUP_KEY", key.display().to_string()),
        ("BACKUP_KNOWN_HOSTS", known.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let ctl = |args: &[&str]| -> String {
        let out = etcdctl("demo1", all3, &PKI_TLS, args);
        if !out.status.success() {
            fail(&format!("etcdctl {args:?} failed:\n{}", text(&out)), cluster);
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let get = |key: &str| ctl(&["get", key, "--print-value-only"]).trim().to_string();
    let hashes_equal = |after: &str| {
        let v: serde_json::Value = serde_json::from_str(&ctl(&["endpoint", "hashkv", "-w", "json"])).unwrap();
        let hashes: Vec<u64> = v.as_array().unwrap().iter().map(|h| h["HashKV"]["hash"].as_u64().unwrap()).collect();
        assert!(hashes.len() == 3 && hashes.iter().all(|h| *h == hashes[0]), "{after}: hashkv {hashes:?}");
    };
    let voting = |after: &str| {
        let list = ctl(&["member", "list"]);
        let started = list.lines().filter(|l| l.contains(", started, ") && l.ends_with(", false")).count();
        assert_eq!(started, 3, "{after}: not three started voting members:\n{list}");
    };

    ctl(&["put", "before-backup", "kept"]);
    let out = run_recipe_env(recipe("backup-offhost"), cluster, &env);
    let shipped: Vec<String> = fs::read_dir(host.storage())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("demo-demo1-") && n.ends_with(".db"))
        .collect();
    assert_eq!(shipped.len(), 1, "backup-offhost shipped {shipped:?}:\n{out}");
    let name = &shipped[0];
    let recorded = fs::read_to_string(host.storage().join(format!("{name}.status.json"))).unwrap();
    let recorded: serde_json::Value = serde_json::from_str(&recorded).unwrap();
    let status = podman_ok(
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            "0:0",
            "-v",
            &format!("{}:/backups:ro", host.storage().display()),
            "--entrypoint",
            "etcdctl",
            UPGRADED,
            "snapshot",
            "status",
            &format!("/backups/{name}"),
            "-w",
            "json",
        ],
        cluster,
    );
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status, recorded, "the shipped snapshot's status is not the one shipped with it");
    let revision = status["revision"].as_i64().unwrap();
    ctl(&["put", "after-backup", "lost-by-the-snapshot-path"]);

    let out = run_recipe(recipe("restore-survivor"), cluster);
    assert!(!out.contains("a write without a quorum succeeded"), "{out}");
    wait_healthy("demo1", all3, &PKI_TLS, cluster);
    voting("restore-survivor");
    hashes_equal("restore-survivor");
    assert_eq!(get("before-backup"), "kept");
    assert_eq!(get("after-backup"), "lost-by-the-snapshot-path", "the survivor path lost a write");
    assert_eq!(get("greeting"), "hello");

    let out = run_recipe_env(recipe("restore-snapshot"), cluster, &env);
    assert!(out.contains(&format!("restoring {name}")), "restore-snapshot did not take {name}:\n{out}");
    wait_healthy("demo1", all3, &PKI_TLS, cluster);
    voting("restore-snapshot");
    hashes_equal("restore-snapshot");
    let v: serde_json::Value = serde_json::from_str(&ctl(&["endpoint", "status", "-w", "json"])).unwrap();
    let revisions: Vec<i64> =
        v.as_array().unwrap().iter().map(|s| s["Status"]["header"]["revision"].as_i64().unwrap()).collect();
    assert_eq!(revisions, [revision; 3], "the revision is not back at the snapshot's");
    assert_eq!(get("after-backup"), "", "a key written after the backup survived the snapshot path");
    assert_eq!(get("before-backup"), "kept");
    assert_eq!(get("greeting"), "hello");
    drop(host);
}

// ---------------------------------------------------------------------------------------------
// not from the README: the same cluster configured by ETCD_* variables, one node by a config file

#[test]
fn three_node_tls_cluster_from_etcd_variables_only() {
    image();
    let started = Instant::now();
    let nodes = ["runit-env1", "runit-env2", "runit-env3"];
    let ips = ["10.89.81.11", "10.89.81.12", "10.89.81.13"];
    let guard = Cleanup::nodes(&nodes, "runit-env");
    guard.run();
    let tmp = tempfile::tempdir().unwrap();
    let pki = issue_pki(
        tmp.path(),
        "name = \"env\"\nclients = [\"etcdctl\"]\n\n[[nodes]]\nname = \"env1\"\nips = [\"10.89.81.11\"]\n\n\
         [[nodes]]\nname = \"env2\"\nips = [\"10.89.81.12\"]\n\n[[nodes]]\nname = \"env3\"\nips = [\"10.89.81.13\"]\n",
    );
    let token = fs::read_to_string(pki.join("token")).unwrap();
    let cluster = (1..=3).map(|i| format!("env{i}=https://{}:2380", ips[i - 1])).collect::<Vec<_>>().join(",");
    podman_ok(&["network", "create", "--subnet", "10.89.81.0/24", "runit-env"], &[]);
    for i in 0..3 {
        let name = format!("env{}", i + 1);
        let ip = ips[i];
        let stage = tmp.path().join(format!("{name}-pki"));
        stage_for_etcd(&pki.join("nodes").join(&name), &pki.join("clients/etcdctl"), &stage);
        let env = [
            format!("ETCD_NAME={name}"),
            "ETCD_DATA_DIR=/var/lib/etcd".into(),
            format!("ETCD_INITIAL_ADVERTISE_PEER_URLS=https://{ip}:2380"),
            format!("ETCD_LISTEN_PEER_URLS=https://{ip}:2380"),
            format!("ETCD_ADVERTISE_CLIENT_URLS=https://{ip}:2379"),
            format!("ETCD_LISTEN_CLIENT_URLS=https://127.0.0.1:2379,https://{ip}:2379"),
            "ETCD_LISTEN_METRICS_URLS=http://127.0.0.1:2381".into(),
            format!("ETCD_INITIAL_CLUSTER={cluster}"),
            "ETCD_INITIAL_CLUSTER_STATE=new".into(),
            format!("ETCD_INITIAL_CLUSTER_TOKEN={}", token.trim()),
            "ETCD_CLIENT_CERT_AUTH=true".into(),
            "ETCD_TRUSTED_CA_FILE=/etc/etcd/pki/ca.crt".into(),
            "ETCD_CERT_FILE=/etc/etcd/pki/server.crt".into(),
            "ETCD_KEY_FILE=/etc/etcd/pki/server.key".into(),
            "ETCD_PEER_CLIENT_CERT_AUTH=true".into(),
            "ETCD_PEER_TRUSTED_CA_FILE=/etc/etcd/pki/peer-ca.crt".into(),
            "ETCD_PEER_CERT_FILE=/etc/etcd/pki/peer.crt".into(),
            "ETCD_PEER_KEY_FILE=/etc/etcd/pki/peer.key".into(),
        ];
        let volume = format!("{}-data:/var/lib/etcd", nodes[i]);
        let mount = format!("{}:/etc/etcd/pki:ro", stage.display());
        let mut args = vec![
            "run",
            "-d",
            "--name",
            nodes[i],
            "--hostname",
            &name,
            "--network",
            "runit-env",
            "--ip",
            ip,
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "-v",
            &volume,
            "-v",
            &mount,
        ];
        for e in &env {
            args.extend(["--env", e.as_str()]);
        }
        args.push(IMAGE); // and no etcd flag at all
        podman_ok(&args, &nodes);
    }
    wait_healthy(
        "runit-env1",
        "https://10.89.81.11:2379,https://10.89.81.12:2379,https://10.89.81.13:2379",
        &PKI_TLS,
        &nodes,
    );
    put_get(
        ("runit-env1", "https://10.89.81.11:2379"),
        ("runit-env3", "https://10.89.81.13:2379"),
        &PKI_TLS,
        "env",
        &nodes,
    );
    for n in nodes {
        check_volume(&format!("{n}-data"), &nodes);
    }
    drop(guard);
    eprintln!("run_it: ETCD_* cluster: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn single_tls_node_from_a_config_file() {
    image();
    let started = Instant::now();
    let node = ["runit-conf"];
    let guard = Cleanup::nodes(&node, "runit-conf");
    guard.run();
    let tmp = tempfile::tempdir().unwrap();
    let pki = issue_pki(
        tmp.path(),
        "name = \"conf\"\nclients = [\"etcdctl\"]\n\n[[nodes]]\nname = \"conf0\"\nips = [\"10.89.82.10\"]\n",
    );
    let stage = tmp.path().join("conf0-pki");
    stage_for_etcd(&pki.join("nodes/conf0"), &pki.join("clients/etcdctl"), &stage);
    // The keys of etcd 3.4's etcd.conf.yml.sample.
    let yaml = "name: conf0\n\
data-dir: /var/lib/etcd\n\
listen-client-urls: https://127.0.0.1:2379,https://10.89.82.10:2379\n\
advertise-client-urls: https://10.89.82.10:2379\n\
listen-peer-urls: https://10.89.82.10:2380\n\
initial-advertise-peer-urls: https://10.89.82.10:2380\n\
initial-cluster: conf0=https://10.89.82.10:2380\n\
initial-cluster-state: new\n\
initial-cluster-token: run-it-conf\n\
client-transport-security:\n  cert-file: /etc/etcd/pki/server.crt\n  key-file: /etc/etcd/pki/server.key\n  \
client-cert-auth: true\n  trusted-ca-file: /etc/etcd/pki/ca.crt\n\
peer-transport-security:\n  cert-file: /etc/etcd/pki/peer.crt\n  key-file: /etc/etcd/pki/peer.key\n  \
client-cert-auth: true\n  trusted-ca-file: /etc/etcd/pki/peer-ca.crt\n";
    let conf = tmp.path().join("etcd.conf.yml");
    fs::write(&conf, yaml).unwrap();
    podman_ok(&["network", "create", "--subnet", "10.89.82.0/24", "runit-conf"], &[]);
    podman_ok(
        &[
            "run",
            "-d",
            "--name",
            "runit-conf",
            "--hostname",
            "conf0",
            "--network",
            "runit-conf",
            "--ip",
            "10.89.82.10",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "-v",
            "runit-conf-data:/var/lib/etcd",
            "-v",
            &format!("{}:/etc/etcd/pki:ro", stage.display()),
            "-v",
            &format!("{}:/etc/etcd/etcd.conf.yml:ro", conf.display()),
            IMAGE,
            "--config-file",
            "/etc/etcd/etcd.conf.yml",
        ],
        &node,
    );
    wait_healthy("runit-conf", "https://10.89.82.10:2379", &PKI_TLS, &node);
    put_get(
        ("runit-conf", "https://10.89.82.10:2379"),
        ("runit-conf", "https://127.0.0.1:2379"),
        &PKI_TLS,
        "conf",
        &node,
    );
    check_volume("runit-conf-data", &node);
    // The config file was what configured it: the member's name and client URL come from it.
    let members = etcdctl("runit-conf", "https://127.0.0.1:2379", &PKI_TLS, &["member", "list"]);
    let list = String::from_utf8_lossy(&members.stdout);
    if !list.contains(", conf0, https://10.89.82.10:2380, https://10.89.82.10:2379") {
        fail(&format!("member list does not show the config file's member:\n{}", text(&members)), &node);
    }
    drop(guard);
    eprintln!("run_it: --config-file node: {:.1} s", started.elapsed().as_secs_f64());
}

/// Every `podman run -d` / `docker run -d` of etcd in a recipe, with its recipe's name, the
/// command's lines joined, the etcd version of its image, and the recipe's `SUITES=` line.
fn etcd_runs(readme: &str) -> Vec<(String, String, String, Option<String>)> {
    let mut out = Vec::new();
    for r in recipes(readme) {
        let lines: Vec<&str> = r.text.lines().collect();
        let suites = lines.iter().find_map(|l| l.strip_prefix("SUITES=")).map(str::to_string);
        let mut i = 0;
        while i < lines.len() {
            if !(lines[i].contains("podman run -d") || lines[i].contains("docker run -d")) {
                i += 1;
                continue;
            }
            let start = i;
            while lines[i].trim_end().ends_with('\\') && i + 1 < lines.len() {
                i += 1;
            }
            let command = lines[start..=i].join("\n");
            i += 1;
            if let Some(version) = command.split_whitespace().find_map(|w| w.strip_prefix("localhost/etcd:")) {
                out.push((r.name.clone(), command.clone(), version.to_string(), suites.clone()));
            }
        }
    }
    out
}

/// Every `podman run` / `docker run` of etcd in a recipe that requires client certificates also
/// takes the TLS policy of `systemd/release-lines.toml`: `--cipher-suites "$SUITES"` with the
/// recipe's `SUITES=` line holding exactly the policy's suites, and `--tls-min-version` where the
/// image's release has it. (The recipes themselves run in the test above, and a scan checks one.)
#[test]
fn every_tls_recipe_runs_etcd_with_the_tls_policy() {
    let mut checked = 0;
    for (name, command, version, suites) in etcd_runs(&common::docs_text()) {
        if !command.contains("--client-cert-auth") {
            continue;
        }
        let policy = xtask::render::config::release_line_settings(&version).unwrap().tls;
        let env = policy.env(&version).unwrap();
        assert_eq!(
            suites.as_deref(),
            Some(env["ETCD_CIPHER_SUITES"].as_str()),
            "recipe {name}: its SUITES= line is not the policy of systemd/release-lines.toml"
        );
        assert!(
            command.contains("--cipher-suites \"$SUITES\""),
            "recipe {name}: etcd without --cipher-suites:\n{command}"
        );
        match env.get("ETCD_TLS_MIN_VERSION") {
            Some(min) => assert!(
                command.contains(&format!("--tls-min-version {min}")),
                "recipe {name}: etcd {version} without --tls-min-version {min}:\n{command}"
            ),
            None => assert!(
                !command.contains("--tls-min-version"),
                "recipe {name}: etcd {version} has no --tls-min-version"
            ),
        }
        checked += 1;
    }
    // single-node, three-nodes, byo-pki, docker-node, upgrade, replace-member, nospace,
    // restore-survivor, restore-snapshot
    assert_eq!(checked, 9, "the README should run etcd with client certificates in nine recipes");
}

/// Every etcd a recipe leaves running compacts its history as a cluster file does by default
/// (`[compaction]` absent: periodic, one hour kept): etcd 3.4 alone keeps every revision, and a
/// reader who copies a recipe gets a cluster that would grow until the NOSPACE alarm otherwise.
#[test]
fn every_recipe_that_runs_etcd_compacts_as_a_cluster_file_does_by_default() {
    let policy = xtask::pki::compaction::Compaction::default().env();
    let flags: Vec<String> =
        policy.iter().map(|(key, value)| format!("{} {value}", xtask::render::config::flag_of(key).unwrap())).collect();
    assert_eq!(flags.len(), 2, "{flags:?}");
    // A run from a rendered etcd.conf (`--env-file`, http-to-tls) has it from `render`.
    let runs: Vec<_> = etcd_runs(&common::docs_text()).into_iter().filter(|r| !r.1.contains("--env-file")).collect();
    for (name, command, _, _) in &runs {
        for flag in &flags {
            assert!(command.contains(flag.as_str()), "recipe {name}: etcd without `{flag}`:\n{command}");
        }
    }
    assert_eq!(runs.len(), 9, "{:?}", runs.iter().map(|r| &r.0).collect::<Vec<_>>());
}
