//! A dockerd of the test's own, isolated from the host's: data root, exec root, socket, pidfile,
//! daemon.json and trust key in a temporary directory; no iptables rules, no bridge, no
//! masquerading, so nothing on the host's network changes and the host's Docker, if any, is never
//! used. [`Dockerd`] removes every container, stops that dockerd by its process id (SIGTERM, then
//! SIGKILL after 20 s) and removes the directory, also when a test fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{run, text};

/// Unix socket paths are limited to 108 bytes (`sun_path`); the longest dockerd and containerd
/// create under the directory is this one.
const LONGEST_SOCKET: &str = "exec/containerd/containerd.sock.ttrpc";

// ---------------------------------------------------------------------------------------------
// the programs

/// Every `name` on PATH, in PATH order.
pub fn on_path_all(name: &str) -> Vec<PathBuf> {
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

pub fn same_file(a: &Path, b: &Path) -> bool {
    matches!((fs::canonicalize(a), fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
}

pub fn missing(what: &str) -> ! {
    panic!("{what}: this test needs Docker's daemon and client and containerd (apt-get install docker.io; `cargo xtask ci` installs it, ci/debian-packages.txt)")
}

/// The version in `Docker version 20.10.24+dfsg1, build 297e128`.
pub fn docker_version(program: &Path) -> Option<String> {
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
pub fn programs() -> (PathBuf, PathBuf) {
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
pub struct Dockerd {
    child: Option<Child>,
    client: PathBuf,
    dir: Option<tempfile::TempDir>,
    /// The directory's path, kept after `dir` is gone (for the checks of what is left).
    pub path: PathBuf,
}

impl Dockerd {
    /// Starts dockerd in a new temporary directory and waits until it answers (60 s).
    pub fn start(dockerd: &Path, client: PathBuf) -> Dockerd {
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

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.path.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!("----- dockerd log (last 60 lines) -----\n{}", lines[lines.len().saturating_sub(60)..].join("\n"))
    }

    pub fn wait_ready(&mut self) {
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

    /// The environment that points a shell's `docker` at this daemon, with this daemon's client
    /// first on PATH (through a directory holding only a link to it): for commands run as a user
    /// would type them.
    pub fn shell_env(&self) -> Vec<(String, String)> {
        let bin = self.path.join("bin");
        let link = bin.join("docker");
        if !link.exists() {
            fs::create_dir_all(&bin).unwrap();
            std::os::unix::fs::symlink(&self.client, &link).unwrap();
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![bin];
        dirs.extend(std::env::split_paths(&path));
        vec![
            ("DOCKER_HOST".into(), format!("unix://{}", self.path.join("docker.sock").display())),
            ("DOCKER_CONFIG".into(), self.path.join("client").display().to_string()),
            ("PATH".into(), std::env::join_paths(dirs).unwrap().to_string_lossy().into_owned()),
        ]
    }

    /// `docker -H unix://<dir>/docker.sock ARGS` with a client configuration of its own.
    pub fn docker(&self, args: &[&str]) -> Output {
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
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        if !out.status.success() {
            self.fail(&format!("docker {args:?} failed:\n{}", text(&out)));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Fails the test with `msg`, the container's log (when there is one) and dockerd's.
    pub fn fail(&self, msg: &str) -> ! {
        let mut all = msg.to_string();
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let logs = self.docker(&["logs", "--tail", "40", id]);
            all += &format!("\n----- docker logs --tail 40 {id} -----\n{}", text(&logs));
        }
        panic!("{all}\n{}", self.log_tail());
    }

    /// Removes every container, stops dockerd by its pid, checks that nothing of it is left and
    /// removes the directory. Idempotent. Err: what went wrong (the directory is then kept when
    /// something is still mounted under it).
    pub fn shut_down(&mut self) -> Result<(), String> {
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
        // dockerd leaves the nsfs mounts of its network sandboxes behind (exec/netns/default once
        // a container had a network of its own): ours, under our directory, so unmounted here.
        for m in self.mounts_left().iter().filter(|m| m.contains("/exec/netns/")) {
            let _ = Command::new("umount").arg(m).status();
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
    pub fn ours(&self, pid: &str) -> bool {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&cmdline).contains(self.path.to_str().unwrap())
    }

    /// Processes whose command line names this daemon's directory (dockerd, containerd, shims).
    pub fn processes_left(&self) -> Vec<String> {
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
    pub fn mounts_left(&self) -> Vec<String> {
        super::mount_points_under(&self.path)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            eprintln!("warning: stopping this test's dockerd:\n{e}");
        }
    }
}
