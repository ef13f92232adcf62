//! Docker loads and runs our single-architecture oci-archive as it is: `docker load -i
//! target/images/etcd-3.4.9-linux-<arch>.tar` with Docker 20.10 (Debian 12's docker.io), which
//! reads only Docker's `manifest.json` of the archive, never `index.json`. Then what Docker made of
//! it is compared with the OCI config we wrote (image ID = config digest, user, labels, layers),
//! `docker save` gives back the same config and layers, and the image serves etcd under Docker
//! with a read-only root, no capabilities, no-new-privileges and no network, as uid 10001.
//!
//! The test runs its own dockerd in a temporary directory (data root, exec root, socket,
//! pidfile, daemon.json and trust key all there) with no iptables rules, no bridge and no
//! masquerading: nothing on the host's network changes, and the host's Docker, if any, is never
//! used. dockerd starts its own containerd under that exec root. The guard [`Dockerd`] removes every
//! container, stops that dockerd by its process id (SIGTERM, then SIGKILL after 20 s) and removes
//! the directory, also when the test fails; the test then checks that no process of that daemon
//! (containerd, shims) and no mount under the directory is left.
//!
//! Host adaptation, measured on a cgroup v1/hybrid host where podman needs `--runtime runc` and
//! explicit `--ulimit`s (`xtask::image::podman::run_args()`): Docker needs neither. Its default
//! runtime is runc already (checked below), and without `--default-ulimit` Docker asks for no
//! rlimits at all: a container inherits the daemon's, which are this test's, so it can never ask
//! for more than the host's hard limits (podman fails because it asks for its own defaults).
//!
//! Needs root, dockerd, docker, containerd (`apt-get install docker.io`), and builds etcd v3.4.9
//! from source (`$XTASK_TEST_ETCD_GIT`, see `common`); a missing piece fails the test, and so
//! does a dockerd that is not Docker 20.10 (its `--version` and the running daemon's version are
//! both checked): a Docker 25 or later reads `index.json` and would load an archive without
//! `manifest.json`.

mod common;
use common::dockerd::{programs, Dockerd};
use common::{root, run, tar_member, text, XTASK};

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The name `cargo xtask image` gives the pinned version.
const IMAGE: &str = "localhost/etcd:3.4.9";
const VERSION: &str = "3.4.9";
/// The image's etcd user.
const ETCD_UID: u32 = 10001;
const CONTAINER: &str = "etcd-docker-test";
const ENDPOINT: &str = "http://127.0.0.1:2379";

// ---------------------------------------------------------------------------------------------
// archives

fn tar_names(archive: &Path) -> Vec<String> {
    let mut a = tar::Archive::new(fs::File::open(archive).unwrap());
    a.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect()
}

/// `sha256:<hex>` of every member of a tar file, in one pass.
fn tar_digests(archive: &Path) -> HashMap<String, String> {
    use sha2::Digest;
    let mut a = tar::Archive::new(fs::File::open(archive).unwrap());
    let mut sums = HashMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut h = sha2::Sha256::new();
        std::io::copy(&mut e, &mut h).unwrap();
        sums.insert(name, format!("sha256:{}", hex(&h.finalize())));
    }
    sums
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn json(bytes: &[u8], what: &str) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{what} is not JSON: {e}"))
}

/// The config digest (`sha256:<hex>`) and the config of our single-architecture archive.
fn oci_config(archive: &Path) -> (String, serde_json::Value) {
    let blob = |digest: &serde_json::Value| {
        let d = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
        tar_member(archive, &format!("blobs/sha256/{d}"))
    };
    let index = json(&tar_member(archive, "index.json"), "index.json");
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{} is not a single-architecture archive: {index:#}", archive.display());
    let manifest = json(&blob(&manifests[0]["digest"]), "the image manifest");
    let digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let config = json(&blob(&manifest["config"]["digest"]), "the image config");
    (digest, config)
}

// ---------------------------------------------------------------------------------------------
// the test

/// Bakes the image with `cargo xtask image --source build`; returns the archive.
fn bake() -> PathBuf {
    let arch = common::host_arch();
    common::build_etcd_349(&[arch]);
    let t = Instant::now();
    let out =
        run(Command::new(XTASK).args(["image", "--source", "build"]).current_dir(root()).env("XTASK_NO_OFFICIAL", "1"));
    assert!(out.status.success(), "xtask image --source build failed:\n{}", text(&out));
    eprintln!("docker: image baked in {:.1} s", t.elapsed().as_secs_f64());
    let archive = xtask::util::target_dir().join(format!("images/etcd-{VERSION}-linux-{arch}.tar"));
    assert!(archive.is_file(), "xtask image did not write {}:\n{}", archive.display(), text(&out));
    archive
}

/// `docker exec CONTAINER etcdctl --endpoints ENDPOINT ARGS`.
fn etcdctl(d: &Dockerd, args: &[&str]) -> Output {
    let mut all =
        vec!["exec", CONTAINER, "etcdctl", "--endpoints", ENDPOINT, "--dial-timeout", "2s", "--command-timeout", "5s"];
    all.extend_from_slice(args);
    d.docker(&all)
}

fn etcdctl_ok(d: &Dockerd, args: &[&str]) -> String {
    let out = etcdctl(d, args);
    if !out.status.success() {
        d.fail(&format!("etcdctl {args:?} failed:\n{}", text(&out)));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails unless `version` (as `what` reports it) is a Docker 20.10.
fn assert_docker_20_10(version: &str, what: &str) {
    let mut parts = version.split(['.', '+', '-']).map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().flatten(), parts.next().flatten());
    assert!(
        major.is_some_and(|m| m < 25),
        "{what} says Docker {version:?}: this test needs a Docker before 25, which reads only \
         manifest.json of an archive (Debian 12's docker.io 20.10 first on PATH)"
    );
    assert_eq!(
        (major, minor),
        (Some(20), Some(10)),
        "{what} says Docker {version:?}, not the 20.10 this test is about (Debian 12's docker.io first on PATH)"
    );
}

#[test]
fn docker_20_10_loads_our_archive_and_runs_etcd_from_it() {
    assert!(
        xtask::util::is_root(),
        "this test starts its own dockerd (a root daemon, with its own data root and socket): run it as root"
    );
    let (dockerd_bin, client) = programs();
    // The Docker this test is about: 20.10, which reads only Docker's manifest.json of an
    // archive (Docker 25 and later read index.json, and would pass without manifest.json).
    let program = common::dockerd::docker_version(&dockerd_bin).unwrap_or_default();
    assert_docker_20_10(&program, &format!("{} --version", dockerd_bin.display()));
    let archive = bake();
    let (config_digest, config) = oci_config(&archive);

    let mut d = Dockerd::start(&dockerd_bin, client);
    // And the daemon that answers is that Docker (it does the load).
    let server = d.ok(&["version", "--format", "{{.Server.Version}}"]);
    assert_docker_20_10(server.trim(), "the daemon's `docker version` (Server.Version)");
    let info = d.ok(&["info", "--format", "{{.DefaultRuntime}} cgroup v{{.CgroupVersion}} {{.Driver}}"]);
    eprintln!("docker: daemon: runtime {}", info.trim());
    assert!(info.starts_with("runc "), "Docker's default runtime is not runc here: {info}");

    // 3. docker load, our archive as it is.
    let t = Instant::now();
    let load = d.docker(&["load", "-i", archive.to_str().unwrap()]);
    let load_s = t.elapsed().as_secs_f64();
    if !load.status.success() {
        d.fail(&format!(
            "docker load -i {} failed (Docker 20.10 reads only Docker's manifest.json; the archive has {:?}):\n{}",
            archive.display(),
            tar_names(&archive).iter().filter(|n| !n.starts_with("blobs/")).collect::<Vec<_>>(),
            text(&load)
        ));
    }
    let loaded = String::from_utf8_lossy(&load.stdout).into_owned();
    assert!(loaded.lines().any(|l| l.trim() == format!("Loaded image: {IMAGE}")), "docker load printed:\n{loaded}");
    eprintln!("docker: docker load -i {}: {load_s:.2} s", archive.file_name().unwrap().to_string_lossy());

    // 4. What Docker made of it is what our config says.
    let inspect = d.ok(&["image", "inspect", IMAGE]);
    let inspect = &json(inspect.as_bytes(), "docker image inspect")[0];
    assert_eq!(inspect["Id"].as_str(), Some(config_digest.as_str()), "Docker's image ID is not our config digest");
    let ours = &config["config"];
    let user = ours["User"].as_str().unwrap_or_default();
    assert!(user == ETCD_UID.to_string() || user.starts_with(&format!("{ETCD_UID}:")), "our config's user: {user:?}");
    for key in ["User", "Labels", "Env", "Entrypoint", "Cmd", "WorkingDir", "ExposedPorts", "Volumes", "StopSignal"] {
        if let Some(want) = ours.get(key) {
            assert_eq!(&inspect["Config"][key], want, "docker inspect's .Config.{key} differs from our config's");
        }
    }
    assert_eq!(inspect["Config"]["Labels"]["org.opencontainers.image.version"], VERSION);
    assert_eq!(inspect["RootFS"]["Layers"], config["rootfs"]["diff_ids"], ".RootFS.Layers are not our diff_ids");
    assert_eq!(inspect["Architecture"], config["architecture"]);
    assert_eq!(inspect["Os"], config["os"]);
    assert_eq!(inspect["RepoTags"], serde_json::json!([IMAGE]));

    // 5. docker save gives back the same config and layers.
    let saved = d.path.join("saved.tar");
    d.ok(&["save", IMAGE, "-o", saved.to_str().unwrap()]);
    let manifest = json(&tar_member(&saved, "manifest.json"), "saved manifest.json");
    let manifest = &manifest.as_array().expect("manifest.json is a list")[..];
    assert_eq!(manifest.len(), 1, "docker save wrote {manifest:?}");
    let sums = tar_digests(&saved);
    let entry = &manifest[0];
    let saved_config = entry["Config"].as_str().unwrap();
    assert_eq!(sums.get(saved_config), Some(&config_digest), "docker save's config {saved_config} is not ours");
    let layers: Vec<&str> = entry["Layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    let diff_ids: Vec<&str> = layers.iter().map(|l| sums[*l].as_str()).collect();
    assert_eq!(serde_json::json!(diff_ids), config["rootfs"]["diff_ids"], "docker save's layers are not our diff_ids");
    assert_eq!(entry["RepoTags"], serde_json::json!([IMAGE]));

    // 6. It serves etcd: read-only root, no capabilities, no network.
    let t = Instant::now();
    d.ok(&[
        "run",
        "-d",
        "--name",
        CONTAINER,
        "--network",
        "none",
        "--user",
        &ETCD_UID.to_string(),
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        IMAGE,
        "--data-dir",
        "/var/lib/etcd",
        "--listen-client-urls",
        ENDPOINT,
        "--advertise-client-urls",
        ENDPOINT,
    ]);
    loop {
        let out = etcdctl(&d, &["endpoint", "health"]);
        if out.status.success() {
            break;
        }
        let running = d.docker(&["inspect", "--format", "{{.State.Running}}", CONTAINER]);
        if String::from_utf8_lossy(&running.stdout).trim() != "true" {
            d.fail(&format!("{CONTAINER} stopped before it served:\n{}", text(&out)));
        }
        if t.elapsed() > Duration::from_secs(60) {
            d.fail(&format!("{CONTAINER} did not serve within 60 s:\n{}", text(&out)));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let serve_s = t.elapsed().as_secs_f64();
    eprintln!("docker: docker run -> etcd healthy: {serve_s:.2} s");
    etcdctl_ok(&d, &["put", "k", "v"]);
    assert_eq!(etcdctl_ok(&d, &["get", "k", "--print-value-only"]).trim(), "v");
    // etcdctl 3.4 prints the health on stderr.
    let health = etcdctl(&d, &["endpoint", "health"]);
    assert!(
        health.status.success() && text(&health).contains(&format!("{ENDPOINT} is healthy")),
        "endpoint health printed:\n{}",
        text(&health)
    );

    // 7. etcd runs as uid 10001 (its status on the host, through the pid Docker reports).
    let pid = d.ok(&["inspect", "--format", "{{.State.Pid}}", CONTAINER]).trim().to_string();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids: Vec<&str> = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().collect();
    let want = ETCD_UID.to_string();
    assert_eq!(uids, [want.as_str(); 4], "etcd (pid {pid}) runs with uids (real, effective, saved, fs) {uids:?}");
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv0 = String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap()).into_owned();
    assert_eq!(serde_json::json!(argv0), ours["Entrypoint"][0], "pid {pid} is not the image's entrypoint");

    eprintln!("docker: times: load {load_s:.2} s, first serve {serve_s:.2} s");
    if let Err(e) = d.shut_down() {
        panic!("this test's dockerd did not shut down cleanly:\n{e}");
    }
}
