//! Booted systemd machines for `smoke --engine systemd`: Debian 12 guests under
//! `systemd-nspawn --boot`, each on a writable overlay of one cached root file system, on a
//! bridge inside a network namespace of the run's own. In: a cluster's node names and addresses.
//! Out: running machines that commands can be run in ([`Machine::sh`]), powered off, rebooted
//! and destroyed; all of it undone when dropped.
//!
//! Nothing touches the host's network: the bridge, the machines' veth ends and the address the
//! run's clients use all live in the namespace ([`Netns`]); clients reach the machines by
//! entering it (`nsenter --net=`, or [`Netns::enter`] for a thread of this process).
//! Commands run in a guest through `nsenter` into its init's namespaces, so the host needs no
//! systemd-machined.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::util::{on_path, stdout_of, tail, target_dir};

use super::nspawn_host::Cgroups;
pub use super::nspawn_host::LoopNodes;
use crate::smoke::local::enter_netns;

/// The Debian release the machines run, and what they need beyond minbase: systemd as init,
/// dbus for `systemctl`, systemd-container for `portablectl`, rsync and openssh-client for the
/// backups' ship step (INSTALL.md asks the operator for both).
pub const SUITE: &str = "bookworm";
pub const INCLUDE: &str = "systemd,systemd-sysv,dbus,systemd-container,rsync,openssh-client";
/// A machine's boot (to `systemctl is-system-running` answering running or degraded).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// Any one command in a machine, unless it says otherwise.
const COMMAND_TIMEOUT_S: u32 = 60;
/// An orderly power-off before nspawn is killed.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);

/// The Debian mirror mmdebstrap uses: `XTASK_DEBIAN_MIRROR`, else the first main archive the
/// host's apt is configured with (deb822 `URIs:` or one-line `deb URL SUITE` sources).
pub fn debian_mirror() -> Result<String> {
    if let Ok(m) = std::env::var("XTASK_DEBIAN_MIRROR") {
        return Ok(m);
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more.into_iter().filter(|p| p.extension().is_some_and(|e| e == "sources" || e == "list")));
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else { continue };
        for line in text.lines().map(str::trim) {
            let uri = if let Some(uris) = line.strip_prefix("URIs:") {
                uris.split_whitespace().next()
            } else if line.starts_with("deb ") {
                line.split_whitespace().find(|w| w.starts_with("http"))
            } else {
                None
            };
            if let Some(uri) = uri.filter(|u| !u.trim_end_matches('/').ends_with("-security")) {
                return Ok(uri.trim_end_matches('/').to_string());
            }
        }
    }
    bail!("no Debian mirror in /etc/apt/sources.list(.d): set XTASK_DEBIAN_MIRROR to one")
}

/// A minimal Debian with systemd, made once with mmdebstrap and reused:
/// `target/nspawn/debian-<suite>-<key>/`, keyed by what mmdebstrap is asked for. Built beside
/// and renamed when complete, so an interrupted build leaves no half root.
pub fn cached_rootfs() -> Result<PathBuf> {
    let mirror = debian_mirror()?;
    let recipe = format!("mmdebstrap {SUITE} minbase {INCLUDE} {mirror}");
    let key: String = Sha256::digest(recipe.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect();
    let base = target_dir().join("nspawn");
    let dest = base.join(format!("debian-{SUITE}-{key}"));
    if dest.join("usr/lib/systemd/systemd").is_file() {
        return Ok(dest);
    }
    if !on_path("mmdebstrap") {
        bail!(
            "the machines' root file system is made by mmdebstrap, which is not installed: apt-get install mmdebstrap"
        );
    }
    fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    // One maker at a time (the portable test and the systemd engine may ask at once); whoever
    // waited finds it made.
    let lock_path = base.join(".mmdebstrap.lock");
    let lock = fs::File::create(&lock_path).with_context(|| format!("cannot create {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("cannot lock {}", lock_path.display()))?;
    if dest.join("usr/lib/systemd/systemd").is_file() {
        return Ok(dest);
    }
    let tmp = base.join(format!(".debian-{SUITE}-{key}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let started = Instant::now();
    eprintln!("machines: mmdebstrap {SUITE} from {mirror} (once, cached in {})", dest.display());
    let out = Command::new("mmdebstrap")
        .args(["--quiet", "--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
        .arg(&tmp)
        .arg(&mirror)
        .output()
        .context("cannot run mmdebstrap")?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&tmp);
        bail!(
            "mmdebstrap {SUITE} failed (set XTASK_DEBIAN_MIRROR to a reachable mirror):\n{}",
            tail(&String::from_utf8_lossy(&out.stderr), 12)
        );
    }
    fs::rename(&tmp, &dest).with_context(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))?;
    eprintln!("machines: root file system made in {:.0} s", started.elapsed().as_secs_f64());
    Ok(dest)
}

/// A network namespace of the run's own with one bridge; deleted (with everything in it) when
/// dropped.
pub struct Netns {
    pub name: String,
    pub bridge: String,
    keep: bool,
}

impl Netns {
    /// `ip netns add NAME`, loopback up, bridge `BRIDGE` up with `address/prefix` (the address
    /// the run's clients use inside the namespace).
    pub fn create(name: &str, bridge: &str, address: Ipv4Addr, prefix: u8) -> Result<Netns> {
        if !on_path("ip") {
            bail!("the machines' network namespace needs ip (apt-get install iproute2)");
        }
        // A namespace of an interrupted run with the same name goes first.
        if Path::new("/run/netns").join(name).exists() {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
        stdout_of(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("cannot create the network namespace {name}"))?;
        let ns = Netns { name: name.to_string(), bridge: bridge.to_string(), keep: false };
        let cidr = format!("{address}/{prefix}");
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", bridge, "type", "bridge"],
            vec!["addr", "add", &cidr, "dev", bridge],
            vec!["link", "set", bridge, "up"],
        ] {
            stdout_of(Command::new("ip").arg("-n").arg(name).args(&args))
                .with_context(|| format!("cannot set up the bridge {bridge} in the network namespace {name}"))?;
        }
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `program` run inside the namespace (`nsenter --net=`; not `ip netns exec`, which remounts
    /// /sys and leaves systemd-nspawn without a cgroup hierarchy).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        cmd
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    pub fn run_inside<R: Send>(&self, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                enter_netns(&path)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("a thread in the network namespace panicked")))
        })
    }

    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = stdout_of(Command::new("ip").args(["netns", "delete", &self.name])) {
            eprintln!("machines: cannot delete the network namespace {}: {e:#}", self.name);
        }
    }
}

/// One machine: its overlay (`dir/upper`, `dir/work`, mounted at `dir/root`), its nspawn
/// process and the pid of its init.
pub struct Machine {
    pub name: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub dir: PathBuf,
    lower: PathBuf,
    netns: PathBuf,
    bridge: String,
    binds: Vec<String>,
    child: Option<Child>,
    leader: Option<u32>,
    mounted: bool,
    /// Destroyed: nothing of it is left, and its directory may already be a new machine's.
    gone: bool,
    cgroups: Cgroups,
    keep: bool,
    boots: u32,
}

impl Machine {
    /// Mounts a fresh overlay of `lower` at `dir/root` and configures it as the machine
    /// `name`: its hostname, and systemd-networkd (enabled, with wait-online) giving `host0`
    /// the static `ip/prefix`.
    pub fn create(lower: &Path, dir: &Path, name: &str, ip: Ipv4Addr, prefix: u8, netns: &Netns) -> Result<Machine> {
        if dir.exists() {
            let _ = Command::new("umount").arg(dir.join("root")).output();
            fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        for d in ["upper", "work", "root"] {
            fs::create_dir_all(dir.join(d)).with_context(|| format!("cannot create {}", dir.join(d).display()))?;
        }
        let mut m = Machine {
            name: name.to_string(),
            ip,
            prefix,
            dir: dir.to_path_buf(),
            lower: lower.to_path_buf(),
            netns: netns.path(),
            bridge: netns.bridge.clone(),
            binds: Vec::new(),
            child: None,
            leader: None,
            mounted: false,
            gone: false,
            cgroups: Cgroups::default(),
            keep: false,
            boots: 0,
        };
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        stdout_of(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(dir.join("root")))
            .with_context(|| format!("{name}: cannot mount the machine's overlay at {}", dir.join("root").display()))?;
        m.mounted = true;
        m.cgroups = Cgroups::create(dir, &format!("{}-{name}", netns.name))?;
        let network = format!(
            "# Written by cargo xtask smoke --engine systemd: the machine's address on the run's bridge.\n\
             [Match]\nName=host0\n\n[Network]\nAddress={ip}/{prefix}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        );
        m.write("etc/systemd/network/10-host0.network", network.as_bytes(), 0o644)?;
        m.write("etc/hostname", format!("{name}\n").as_bytes(), 0o644)?;
        for (wants, unit) in [
            ("multi-user.target.wants", "systemd-networkd.service"),
            ("sockets.target.wants", "systemd-networkd.socket"),
            ("network-online.target.wants", "systemd-networkd-wait-online.service"),
        ] {
            let link = m.root().join("etc/systemd/system").join(wants).join(unit);
            fs::create_dir_all(link.parent().unwrap_or(&m.dir))?;
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(format!("/lib/systemd/system/{unit}"), &link)
                .with_context(|| format!("{name}: cannot enable {unit}"))?;
        }
        Ok(m)
    }

    /// The machine's root as the host sees it.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Writes a file into the machine (`path` relative to its root), parents created.
    pub fn write(&self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let dest = self.root().join(path.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).with_context(|| format!("{}: cannot create /{path}'s directory", self.name))?;
        }
        fs::write(&dest, data).with_context(|| format!("{}: cannot write /{path}", self.name))?;
        fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        Ok(())
    }

    /// Copies a host file into the machine.
    pub fn copy_in(&self, from: &Path, to: &str, mode: u32) -> Result<()> {
        let data = fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
        self.write(to, &data, mode)
    }

    /// Extra nspawn arguments for every boot (device binds).
    pub fn set_binds(&mut self, binds: Vec<String>) {
        self.binds = binds;
    }

    /// Boots the machine and waits until its systemd is up (running or degraded).
    pub fn boot(&mut self) -> Result<f64> {
        if self.child.is_some() {
            bail!("{} is already running", self.name);
        }
        self.boots += 1;
        let started = Instant::now();
        let console = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("console.log"))
            .with_context(|| format!("{}: cannot open its console log", self.name))?;
        self.cgroups.clear();
        // Each machine in cgroups of its own: with --keep-unit nspawn puts the guest under its
        // own cgroup, and two guests sharing one would manage each other's units.
        let child = Command::new("sh")
            .arg("-c")
            .arg(self.cgroups.join_script())
            .arg("sh")
            .arg("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg("systemd-nspawn")
            .args(["--quiet", "--boot", "--register=no", "--keep-unit", "--console=pipe"])
            .arg(format!("--machine={}", self.name))
            .arg(format!("--network-bridge={}", self.bridge))
            .arg("-D")
            .arg(self.root())
            .args(&self.binds)
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .spawn()
            .with_context(|| {
                format!("{}: cannot start systemd-nspawn (apt-get install systemd-container)", self.name)
            })?;
        self.child = Some(child);
        self.leader = None;
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                bail!("{} did not boot: systemd-nspawn exited ({status}):\n{}", self.name, self.console_tail(15));
            }
            if self.leader.is_none() {
                self.leader = self.find_leader();
            }
            if self.leader.is_some() {
                if let Ok(out) = self.sh("systemctl is-system-running") {
                    let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    if state == "running" || state == "degraded" {
                        return Ok(started.elapsed().as_secs_f64());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not finish booting within {} s:\n{}",
                    self.name,
                    BOOT_TIMEOUT.as_secs(),
                    self.console_tail(15)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The pid of the machine's init: the child of nspawn that is pid 1 in its own namespace.
    fn find_leader(&self) -> Option<u32> {
        let nspawn = self.child.as_ref()?.id();
        let mut frontier = vec![nspawn];
        // nspawn's own children, and theirs, until one is the namespace's pid 1.
        for _ in 0..3 {
            let mut next = Vec::new();
            for p in &frontier {
                let children = fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
                for c in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
                    let status = fs::read_to_string(format!("/proc/{c}/status")).unwrap_or_default();
                    let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap_or_default();
                    if nspid.split_whitespace().last() == Some("1") && nspid.split_whitespace().count() > 1 {
                        return Some(c);
                    }
                    next.push(c);
                }
            }
            frontier = next;
        }
        None
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `sh -c script` inside the machine, as root, in all its namespaces; its output, whatever
    /// the exit status.
    pub fn sh(&self, script: &str) -> Result<Output> {
        self.sh_timeout(script, COMMAND_TIMEOUT_S)
    }

    /// Like [`Machine::sh`], killed after `seconds` (exit status 124, as `timeout` gives).
    pub fn sh_timeout(&self, script: &str, seconds: u32) -> Result<Output> {
        let leader = self.leader.with_context(|| format!("{} is not running", self.name))?;
        Command::new("timeout")
            .args(["--kill-after=5", &seconds.to_string(), "nsenter"])
            .args(["--target", &leader.to_string(), "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup"])
            .args(["--", "/bin/sh", "-c", script])
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("{}: cannot run a command in it (nsenter)", self.name))
    }

    /// Like [`Machine::sh`]; its stdout when it succeeded, else an error with its output and the
    /// end of etcd's journal in the machine.
    pub fn sh_ok(&self, script: &str) -> Result<String> {
        let out = self.sh(script)?;
        if !out.status.success() {
            bail!(
                "{}: `{}` failed ({}):\n{}{}\n  journalctl -u etcd:\n{}",
                self.name,
                script.lines().next().unwrap_or_default(),
                out.status,
                tail(&String::from_utf8_lossy(&out.stdout), 6),
                tail(&String::from_utf8_lossy(&out.stderr), 8),
                self.journal("etcd.service", 10)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The last `lines` of a unit's journal in the machine, indented (empty when unreadable).
    pub fn journal(&self, unit: &str, lines: usize) -> String {
        self.sh(&format!("journalctl --no-pager -o short-precise -n {lines} -u {unit}"))
            .map(|o| tail(&String::from_utf8_lossy(&o.stdout), lines))
            .unwrap_or_default()
    }

    pub fn console_tail(&self, lines: usize) -> String {
        tail(&fs::read_to_string(self.dir.join("console.log")).unwrap_or_default(), lines)
    }

    /// Powers the machine off (nspawn's SIGTERM asks the guest's systemd for an orderly
    /// shutdown), then kills nspawn if it has not exited in time. Only our own child is
    /// signalled.
    pub fn poweroff(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        self.leader = None;
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + POWEROFF_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("{} did not power off within {} s; killed", self.name, POWEROFF_TIMEOUT.as_secs())
    }

    /// `systemctl reboot` in the machine: its nspawn exits (status 133, as under
    /// systemd-nspawn@.service, whose unit restarts it), and the machine is booted again.
    /// Returns the seconds from the reboot command to the guest's systemd being up.
    pub fn reboot(&mut self) -> Result<f64> {
        let started = Instant::now();
        let _ = self.sh("systemctl reboot --no-block");
        let deadline = Instant::now() + POWEROFF_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                if status.code() != Some(133) {
                    eprintln!("machines: {} exited with {status} on reboot (133 expected)", self.name);
                }
                break;
            }
            if Instant::now() > deadline {
                self.poweroff()?;
                bail!("{} did not go down for its reboot within {} s", self.name, POWEROFF_TIMEOUT.as_secs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child = None;
        self.leader = None;
        self.boot()?;
        Ok(started.elapsed().as_secs_f64())
    }

    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// The pid of the machine's init, for `--keep`.
    pub fn leader_pid(&self) -> Option<u32> {
        self.leader
    }

    /// The pid of the machine's systemd-nspawn, for `--keep`.
    pub fn nspawn_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The cgroups made for the machine, for `--keep`.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroups.dirs.clone()
    }

    /// Powers off, unmounts and removes the machine's files.
    pub fn destroy(&mut self) -> Result<()> {
        let off = self.poweroff();
        self.cgroups.remove();
        if self.mounted {
            // The guest may still hold the mount for a moment after nspawn exits.
            let mut last = None;
            for _ in 0..20 {
                match stdout_of(Command::new("umount").arg(self.root())) {
                    Ok(_) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            if let Some(e) = last {
                return Err(e.context(format!("{}: cannot unmount {}", self.name, self.root().display())));
            }
            self.mounted = false;
        }
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir).with_context(|| format!("cannot remove {}", self.dir.display()))?;
        }
        self.gone = true;
        off
    }

    /// The cached root file system this machine is an overlay of.
    pub fn lower(&self) -> &Path {
        &self.lower
    }

    pub fn boots(&self) -> u32 {
        self.boots
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.keep || self.gone {
            return;
        }
        if let Err(e) = self.destroy() {
            eprintln!("machines: {e:#}");
        }
    }
}
