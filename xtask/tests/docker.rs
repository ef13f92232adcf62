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
//! from source (`$XTASK_TEST_ETCD_GIT`, see `common`); a missing piece fails the test.

mod common;
use common::{root, run, text, XTASK};

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The name `cargo xtask image` gives the pinned version.
const IMAGE: &str = "localhost/etcd:3.4.9";
const VERSION: &str = "3.4.9";
/// The image's etcd user.
const ETCD_UID: u32 = 10001;
const CONTAINER: &str = "etcd-docker-test";
const ENDPOINT: &str = "http://127.0.0.1:2379";
/// Unix socket paths are limited to 108 bytes (`sun_path`); the longest dockerd and containerd
/// create under the directory is this one.
const LONGEST_SOCKET: &str = "exec/containerd/containerd.sock.ttrpc";

// ---------------------------------------------------------------------------------------------
// the programs

/// Every `name` on PATH, in PATH order.
fn on_path_all(name: &str) -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut found: Vec<PathBuf> = Vec::new();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() && !found.iter().any(|f| same_file(f, &p)) {
            found.push(p);
        }
    }
    found
}

fn same_file(a: &Path, b: &Path) -> bool {
    matches!((fs::canonicalize(a), fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
}

fn missing(what: &str) -> ! {
    panic!("{what}: this test needs Docker's daemon and client and containerd (apt-get install docker.io; `cargo xtask ci` installs it, ci/debian-packages.txt)")
}

/// The version in `Docker version 20.10.24+dfsg1, build 297e128`.
fn docker_version(program: &Path) -> Option<String> {
    let out = Command::new(program).arg("--version").output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let v = s.trim().strip_prefix("Docker version ")?.split(',').next()?.trim().to_string();
    Some(v).filter(|v| !v.is_empty())
}

/// dockerd (the first on PATH) and the client of its release. Not simply the first `docker` on
/// PATH: a machine may have another client first (one here is a 28.2 client in /usr/local/bin),
/// and not dockerd's sibling either: Debian ships dockerd in /usr/sbin and docker in /usr/bin. So
/// the client is the first `docker` on PATH whose `--version` names dockerd's version (Debian's
/// two binaries differ only in their build ids).
fn programs() -> (PathBuf, PathBuf) {
    let dockerd = on_path_all("dockerd").into_iter().next().unwrap_or_else(|| missing("dockerd is not on PATH"));
    if on_path_all("containerd").is_empty() {
        missing("containerd is not on PATH");
    }
    let want = docker_version(&dockerd)
        .unwrap_or_else(|| panic!("{} --version does not say `Docker version V, ...`", dockerd.display()));
    let clients = on_path_all("docker");
    if clients.is_empty() {
        missing("docker (the client) is not on PATH");
    }
    let found: Vec<(PathBuf, Option<String>)> = clients.into_iter().map(|c| (c.clone(), docker_version(&c))).collect();
    let client = found.iter().find(|(_, v)| v.as_deref() == Some(want.as_str())).map(|(c, _)| c.clone());
    let client = client.unwrap_or_else(|| {
        missing(&format!(
            "no docker client of dockerd's version {want} ({}) on PATH; found {found:?}",
            dockerd.display()
        ))
    });
    eprintln!("docker: dockerd {} and client {} (Docker {want})", dockerd.display(), client.display());
    (dockerd, client)
}

// ---------------------------------------------------------------------------------------------
// the daemon

/// This test's own dockerd, stopped by its process id on drop.
struct Dockerd {
    child: Option<Child>,
    client: PathBuf,
    dir: Option<tempfile::TempDir>,
    /// The directory's path, kept after `dir` is gone (for the checks of what is left).
    path: PathBuf,
}

impl Dockerd {
    /// Starts dockerd in a new temporary directory and waits until it answers (60 s).
    fn start(dockerd: &Path, client: PathBuf) -> Dockerd {
        let dir = tempfile::Builder::new().prefix("etcd-dockerd-").tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let longest = path.join(LONGEST_SOCKET);
        assert!(
            longest.as_os_str().len() < 100,
            "{} is too long for a unix socket (108 bytes at most): set TMPDIR to a shorter directory",
            longest.display()
        );
        for d in ["data", "exec", "client"] {
            fs::create_dir(path.join(d)).unwrap();
        }
        // Our own daemon.json, so that the host's /etc/docker/daemon.json does not apply, and
        // our own trust key: 20.10 otherwise creates /etc/docker/key.json.
        let config = serde_json::json!({ "deprecated-key-path": path.join("key.json") });
        fs::write(path.join("daemon.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let log = fs::File::create(path.join("dockerd.log")).unwrap();
        let p = |name: &str| path.join(name).into_os_string().into_string().unwrap();
        let mut cmd = Command::new(dockerd);
        cmd.arg("--config-file")
            .arg(p("daemon.json"))
            .arg("--data-root")
            .arg(p("data"))
            .arg("--exec-root")
            .arg(p("exec"))
            .arg("-H")
            .arg(format!("unix://{}", p("docker.sock")))
            .arg("--pidfile")
            .arg(p("docker.pid"))
            .args(["--iptables=false", "--ip6tables=false", "--ip-masq=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let t = Instant::now();
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut d = Dockerd { child: Some(child), client, dir: Some(dir), path };
        d.wait_ready();
        eprintln!("docker: dockerd (pid {}) answered after {:.1} s", d.pid(), t.elapsed().as_secs_f64());
        let pidfile = fs::read_to_string(d.path.join("docker.pid")).unwrap_or_default();
        assert_eq!(pidfile.trim(), d.pid().to_string(), "the daemon answering is not the dockerd this test started");
        d
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.path.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!("----- dockerd log (last 60 lines) -----\n{}", lines[lines.len().saturating_sub(60)..].join("\n"))
    }

    fn wait_ready(&mut self) {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("dockerd exited ({status}) before it answered:\n{}", self.log_tail());
            }
            let out = self.docker(&["version", "--format", "{{.Server.Version}}"]);
            if out.status.success() {
                return;
            }
            if t.elapsed() > Duration::from_secs(60) {
                panic!("dockerd did not answer within 60 s:\n{}\n{}", text(&out), self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `docker -H unix://<dir>/docker.sock ARGS` with a client configuration of its own.
    fn docker(&self, args: &[&str]) -> Output {
        run(Command::new(&self.client)
            .arg("-H")
            .arg(format!("unix://{}", self.path.join("docker.sock").display()))
            .args(args)
            .env("DOCKER_CONFIG", self.path.join("client"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH"))
    }

    /// `docker ARGS` that must succeed; its stdout. On failure, the container's and dockerd's logs.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        if !out.status.success() {
            self.fail(&format!("docker {args:?} failed:\n{}", text(&out)));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Fails the test with `msg`, the container's log (when there is one) and dockerd's.
    fn fail(&self, msg: &str) -> ! {
        let logs = self.docker(&["logs", "--tail", "40", CONTAINER]);
        panic!("{msg}\n----- docker logs --tail 40 {CONTAINER} -----\n{}\n{}", text(&logs), self.log_tail());
    }

    /// Removes every container, stops dockerd by its pid, checks that nothing of it is left and
    /// removes the directory. Idempotent. Err: what went wrong (the directory is then kept when
    /// something is still mounted under it).
    fn shut_down(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let mut problems = Vec::new();
        let pid = child.id();
        // Containers first: their shims (containerd-shim-runc-v2) outlive dockerd otherwise.
        if child.try_wait().ok().flatten().is_none() {
            let ps = self.docker(&["ps", "-aq"]);
            let ids: Vec<String> = String::from_utf8_lossy(&ps.stdout).split_whitespace().map(str::to_string).collect();
            if !ps.status.success() {
                problems.push(format!("docker ps -aq failed: {}", text(&ps)));
            } else if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids.iter().map(String::as_str));
                let rm = self.docker(&args);
                if !rm.status.success() {
                    problems.push(format!("docker {args:?} failed: {}", text(&rm)));
                }
            }
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            let t = Instant::now();
            while child.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if child.try_wait().ok().flatten().is_none() {
            problems.push(format!("dockerd (pid {pid}) did not stop within 20 s of SIGTERM: SIGKILL"));
            let _ = child.kill();
            // The containerd it started would be left: stop that one too, by the pid it
            // recorded, once its command line shows it is this daemon's.
            let pidfile = self.path.join("exec/containerd/containerd.pid");
            if let Ok(p) = fs::read_to_string(&pidfile) {
                let p = p.trim().to_string();
                if self.ours(&p) {
                    let _ = Command::new("kill").args(["-KILL", &p]).status();
                }
            }
        }
        let _ = child.wait();
        // dockerd stops its containerd before it exits; give stragglers a few seconds.
        let t = Instant::now();
        let mut processes = self.processes_left();
        while !processes.is_empty() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(200));
            processes = self.processes_left();
        }
        if !processes.is_empty() {
            problems.push(format!("processes of this dockerd are still running: {processes:#?}"));
        }
        let mounts = self.mounts_left();
        if !mounts.is_empty() {
            problems.push(format!("still mounted: {mounts:#?}"));
        }
        if let Some(dir) = self.dir.take() {
            if mounts.is_empty() {
                if let Err(e) = dir.close() {
                    problems.push(format!("cannot remove {}: {e}", self.path.display()));
                }
            } else {
                problems.push(format!("{} is kept, because of the mounts", dir.keep().display()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("{}\n{}", problems.join("\n"), self.log_tail()))
        }
    }

    /// Whether process `pid`'s command line names this daemon's directory.
    fn ours(&self, pid: &str) -> bool {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&cmdline).contains(self.path.to_str().unwrap())
    }

    /// Processes whose command line names this daemon's directory (dockerd, containerd, shims).
    fn processes_left(&self) -> Vec<String> {
        let mut left = Vec::new();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.chars().all(|c| c.is_ascii_digit()) && self.ours(&name) {
                let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
                left.push(format!("{name}: {}", String::from_utf8_lossy(&cmdline).replace('\0', " ")));
            }
        }
        left
    }

    /// Mount points under this daemon's directory.
    fn mounts_left(&self) -> Vec<String> {
        let dir = self.path.to_str().unwrap();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(dir))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            eprintln!("warning: stopping this test's dockerd:\n{e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// archives

/// The member `name` of a tar file.
fn tar_member(archive: &Path, name: &str) -> Vec<u8> {
    let mut a = tar::Archive::new(fs::File::open(archive).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == name {
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            return v;
        }
    }
    panic!("{name} is not in {}", archive.display())
}

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

#[test]
fn docker_20_10_loads_our_archive_and_runs_etcd_from_it() {
    assert!(
        xtask::util::is_root(),
        "this test starts its own dockerd (a root daemon, with its own data root and socket): run it as root"
    );
    let (dockerd_bin, client) = programs();
    let archive = bake();
    let (config_digest, config) = oci_config(&archive);

    let mut d = Dockerd::start(&dockerd_bin, client);
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
