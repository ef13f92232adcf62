//! `smoke --engine systemd`: the tutorial's cluster as it runs in production, three systemd
//! hosts. Three Debian 12 machines (`machines.rs`) named and addressed after the cluster file's
//! nodes, each set up from what `cargo xtask render` writes for it, in one of two forms:
//! `portable` (`<node>.portable.tar` unpacked at `/`, the image installed into
//! `/var/lib/portables/`, `portablectl attach --enable --profile=etcd`, etcd started) or `host` (the etcd binaries installed and `<node>.INSTALL.md`'s steps
//! run). Both run the install block of the node's own INSTALL.md, verbatim, in the machine.
//! In: a cluster description, etcd (acquired like every stage does). Out: checks and timings
//! for the report (`hosts_checks.rs` has the checks).

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::acquire::Acquired;
use crate::pki::cluster::ClusterSpec;
use crate::pki::issue::issue;
use crate::pki::layout::PkiLayout;
use crate::pki::profiles::Profiles;
use crate::util::{display_rel, each_in_thread, tail};

use super::machines::{cached_rootfs, LoopNodes, Machine, Netns};
use super::{run_etcdctl, Engine, Members};
use crate::smoke::local::Interrupt;

/// What one run of a machine's backup units did ([`Hosts::backup_now`]).
pub(crate) struct BackupRun {
    /// The ship step's journal (its own lines and systemd's).
    pub journal: String,
    /// Seconds to take and check the snapshot, then to keep and ship it.
    pub take_s: f64,
    pub ship_s: f64,
}

/// How the machines run etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Form {
    /// The portable service: etcd_<version>.raw installed in /var/lib/portables, attached by name
    /// with `portablectl attach --enable --profile=etcd`, then started (not `--now`: that would
    /// also run a backup at once)
    Portable,
    /// The host bundle: the binaries in /usr/local/bin and the node's INSTALL.md
    Host,
    /// Both, one after the other, each on fresh machines
    Both,
}

impl Form {
    pub fn as_str(self) -> &'static str {
        match self {
            Form::Portable => "portable",
            Form::Host => "host",
            Form::Both => "both",
        }
    }

    pub fn expand(self) -> Vec<Form> {
        match self {
            Form::Both => vec![Form::Portable, Form::Host],
            f => vec![f],
        }
    }
}

/// Where the machines keep what the run copies in, and where the INSTALL.md steps run.
const INSTALL_DIR: &str = "/root/etcd-install";
/// From the last machine's boot to 3/3 healthy.
pub(crate) const HEALTHY_TIMEOUT: Duration = Duration::from_secs(90);
/// One install block in a machine (it blocks until etcd is ready, which needs a quorum).
const INSTALL_TIMEOUT_S: u32 = 150;

/// What the machines of one form are made from.
pub(crate) struct Inputs<'a> {
    pub spec: &'a ClusterSpec,
    pub cluster_file: &'a Path,
    pub acquired: &'a Acquired,
    /// `etcd_<version>.raw` (portable form).
    pub raw: Option<&'a Path>,
    pub version: &'a str,
}

/// Three machines of one form, their PKI and rendered bundles, the clients' view of them.
/// Field order is drop order: the machines, then their namespace.
pub(crate) struct Hosts {
    pub form: Form,
    pub spec: ClusterSpec,
    pub cluster_file: PathBuf,
    pub arch: crate::util::Arch,
    pub version: String,
    pub out: PathBuf,
    pub render: PathBuf,
    pub pki: PkiLayout,
    pub rogue: PkiLayout,
    pub etcdctl: PathBuf,
    pub raw: Option<PathBuf>,
    pub acquired_dir: PathBuf,
    pub interrupt: Interrupt,
    pub machines: Vec<Machine>,
    pub loops: Option<LoopNodes>,
    pub netns: Netns,
}

/// The IPv4 address and prefix (/24) of every node, and a free one in the same /24 for the
/// bridge (the clients' address); an error naming the node when they cannot be given to
/// machines on one bridge.
pub(crate) fn addressing(spec: &ClusterSpec, file: &Path) -> Result<(Vec<Ipv4Addr>, Ipv4Addr)> {
    let mut ips = Vec::new();
    for n in &spec.nodes {
        match crate::render::config::primary_ip(n)? {
            IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_unspecified() && !v4.is_multicast() => ips.push(v4),
            ip => bail!(
                "{}: node {}: field ips: {ip} cannot be given to a machine on the run's bridge; use a private \
                 IPv4 address (e.g. 10.89.77.11)",
                file.display(),
                n.name
            ),
        }
    }
    let net = |ip: &Ipv4Addr| [ip.octets()[0], ip.octets()[1], ip.octets()[2]];
    if let Some((i, _)) = ips.iter().enumerate().find(|(_, ip)| net(ip) != net(&ips[0])) {
        bail!(
            "{}: node {}: field ips: {} is not in {}.0/24 with node {}'s address: the machines share one bridge and \
             one /24",
            file.display(),
            spec.nodes[i].name,
            ips[i],
            net(&ips[0]).map(|o| o.to_string()).join("."),
            spec.nodes[0].name
        );
    }
    let n = net(&ips[0]);
    let bridge = (1..=254u8)
        .rev()
        .map(|last| Ipv4Addr::new(n[0], n[1], n[2], last))
        .find(|a| !ips.contains(a))
        .context("no free address in the nodes' /24 for the bridge")?;
    Ok((ips, bridge))
}

impl Hosts {
    /// Renders the cluster for `form` (PKI issued into `out/pki`), makes the run's network
    /// namespace and three machines, copies each its bundle, and boots them (not yet etcd).
    pub(crate) fn prepare(inputs: &Inputs<'_>, form: Form, out: &Path, interrupt: Interrupt) -> Result<Hosts> {
        let (ips, bridge_ip) = addressing(inputs.spec, inputs.cluster_file)?;
        if out.exists() {
            fs::remove_dir_all(out).with_context(|| format!("cannot clear {}", out.display()))?;
        }
        fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let pki = PkiLayout::new(out.join("pki"));
        let render = out.join("render");
        crate::render::render(&crate::render::Render {
            input: crate::render::ClusterArgs {
                cluster: inputs.cluster_file.to_path_buf(),
                pki: Some(pki.root.clone()),
                tuning_presets: None,
                arch: Some(inputs.acquired.provenance.arch),
                etcd_version: Some(inputs.version.to_string()),
            },
            out: Some(render.clone()),
            client: None,
            tls_stage: crate::render::config::TlsStage::Tls,
        })
        .context("cannot render the machines' bundles")?;
        let rogue = PkiLayout::new(out.join("rogue-pki"));
        issue(inputs.spec, &Profiles::load(&Profiles::default_path())?, &rogue.root, false)
            .context("cannot issue the second (rogue) PKI")?;

        let rootfs = cached_rootfs()?;
        let ns_name = format!("xtask-sd-{}-{}", std::process::id(), form.as_str());
        let netns = Netns::create(&ns_name, "br0", bridge_ip, 24)?;
        let loops = match form {
            // Each machine attaches one image (two during an upgrade's reattach).
            Form::Portable => Some(LoopNodes::prepare(8).context("the portable form needs loop devices")?),
            _ => None,
        };
        let mut hosts = Hosts {
            form,
            spec: inputs.spec.clone(),
            cluster_file: inputs.cluster_file.to_path_buf(),
            arch: inputs.acquired.provenance.arch,
            version: inputs.version.to_string(),
            out: out.to_path_buf(),
            render,
            pki,
            rogue,
            etcdctl: inputs.acquired.binary("etcdctl"),
            raw: inputs.raw.map(Path::to_path_buf),
            acquired_dir: inputs.acquired.dir.clone(),
            interrupt,
            machines: Vec::new(),
            loops,
            netns,
        };
        for (n, ip) in inputs.spec.nodes.iter().zip(ips) {
            let m = Machine::create(&rootfs, &out.join("machines").join(&n.name), &n.name, ip, 24, &hosts.netns)?;
            hosts.machines.push(m);
        }
        for i in 0..hosts.machines.len() {
            hosts.provision(i)?;
        }
        Ok(hosts)
    }

    /// Copies machine `i` what its form's INSTALL.md block needs into [`INSTALL_DIR`].
    pub(crate) fn provision(&mut self, i: usize) -> Result<()> {
        let node = self.spec.nodes[i].name.clone();
        let m = &self.machines[i];
        m.copy_in(&self.render.join(format!("{node}.INSTALL.md")), &format!("{INSTALL_DIR}/{node}.INSTALL.md"), 0o644)?;
        match self.form {
            Form::Portable => {
                let raw = self.raw.as_ref().context("the portable form has no .raw image")?;
                let name = raw.file_name().context("the .raw image has no name")?.to_string_lossy().into_owned();
                m.copy_in(
                    &self.render.join(format!("{node}.portable.tar")),
                    &format!("{INSTALL_DIR}/{node}.portable.tar"),
                    0o600,
                )?;
                m.copy_in(raw, &format!("{INSTALL_DIR}/{name}"), 0o644)?;
            }
            _ => {
                m.copy_in(&self.render.join(format!("{node}.tar")), &format!("{INSTALL_DIR}/{node}.tar"), 0o600)?;
                for bin in ["etcd", "etcdctl"] {
                    m.copy_in(&self.acquired_dir.join(bin), &format!("{INSTALL_DIR}/{bin}"), 0o755)?;
                }
            }
        }
        if let Some(loops) = &self.loops {
            self.machines[i].set_binds(loops.bind_args());
        }
        Ok(())
    }

    /// Boots machines `which` side by side; the seconds each took.
    pub(crate) fn boot(&mut self, which: &[usize]) -> Result<Vec<f64>> {
        if let Some(loops) = &self.loops {
            loops.restore();
        }
        let mut picked: Vec<(usize, &mut Machine)> =
            self.machines.iter_mut().enumerate().filter(|(i, _)| which.contains(i)).collect();
        let results: Vec<Result<f64>> = std::thread::scope(|s| {
            let handles: Vec<_> = picked.iter_mut().map(|(_, m)| s.spawn(move || m.boot())).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a boot panicked")))).collect()
        });
        results.into_iter().collect()
    }

    /// The node's INSTALL.md block of this form (`systemctl enable --now` for host, `portablectl
    /// attach` for portable), as written.
    pub(crate) fn install_block(&self, i: usize) -> Result<String> {
        let marker = match self.form {
            Form::Portable => "portablectl attach",
            _ => "systemctl enable --now",
        };
        self.block(i, marker)
    }

    /// Node `i`'s install steps with `join` (INSTALL.md's lines that make the member join an
    /// existing cluster) right after the tar is unpacked, as INSTALL.md says to run them.
    pub(crate) fn install_joining(&self, i: usize, join: &str) -> Result<String> {
        let mut script = String::new();
        let mut inserted = false;
        for line in self.install_block(i)?.lines() {
            script.push_str(line);
            script.push('\n');
            if !inserted && line.trim_start().starts_with("tar -xpf") {
                script.push_str(join);
                inserted = true;
            }
        }
        if !inserted {
            bail!("{}'s INSTALL.md install steps unpack no tar", self.spec.nodes[i].name);
        }
        Ok(script)
    }

    /// The ```sh block of node `i`'s INSTALL.md that contains `marker`, as written.
    pub(crate) fn block(&self, i: usize, marker: &str) -> Result<String> {
        let path = self.render.join(format!("{}.INSTALL.md", self.spec.nodes[i].name));
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        crate::render::host::sh_blocks(&text)
            .into_iter()
            .find(|b| b.contains(marker))
            .with_context(|| format!("{}: no ```sh block with `{marker}`", path.display()))
    }

    /// Runs every machine's install block at once (the first member waits for a quorum).
    pub(crate) fn install_all(&self) -> Result<()> {
        let blocks: Vec<String> = (0..self.machines.len()).map(|i| self.install_block(i)).collect::<Result<_>>()?;
        let results = each_in_thread(&self.machines, "an install", |i, m| {
            let script = format!("cd {INSTALL_DIR} && set -ex\n{}", blocks[i]);
            let out = m.sh_timeout(&script, INSTALL_TIMEOUT_S)?;
            if !out.status.success() {
                bail!(
                    "{}: the INSTALL.md steps failed ({}):\n{}\n  journalctl -u etcd:\n{}",
                    m.name,
                    out.status,
                    tail(&String::from_utf8_lossy(&out.stderr), 12),
                    m.journal("etcd.service", 15)
                );
            }
            Ok(())
        });
        results.into_iter().collect()
    }

    /// `etcdctl snapshot status` of a snapshot file on this host (the members' release): its
    /// revision and key count; an error naming the file when etcdctl cannot read it.
    pub(crate) fn snapshot_status(&self, path: &Path) -> Result<(i64, u64)> {
        let out = Command::new(&self.etcdctl)
            .env_clear()
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "status", "-w", "json"])
            .arg(path)
            .output()
            .with_context(|| format!("cannot run {}", self.etcdctl.display()))?;
        if !out.status.success() {
            bail!(
                "{}: etcdctl snapshot status cannot read it ({}): not a whole snapshot; take the previous good one",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{}: snapshot status printed no JSON", path.display()))?;
        let revision = v["revision"].as_i64().with_context(|| format!("{}: no revision in {v}", path.display()))?;
        Ok((revision, v["totalKey"].as_u64().unwrap_or(0)))
    }

    /// Machine `i`'s backup units, started as its timer starts them: `systemctl start
    /// etcd-backup.service` (it returns once the snapshot is taken and checked), then the ship
    /// step it starts (`OnSuccess=`), read from its journal (the unit is unloaded once it ran).
    /// A run the member's own timer started (its minute may come during a run) is let finish
    /// first: `systemctl start` would only wait for it, and its lines would be before ours.
    pub(crate) fn backup_now(&self, i: usize) -> Result<BackupRun> {
        let m = &self.machines[i];
        m.sh_ok(
            "for n in $(seq 150); do systemctl show -P ActiveState etcd-backup.service etcd-backup-ship.service \
             | grep -qxE 'active|activating|deactivating' || exit 0; sleep 0.2; done; \
             echo 'a backup started by the timer is still running after 30 s' >&2; exit 1",
        )?;
        let cursor =
            m.sh_ok("journalctl -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p'")?.trim().to_string();
        let t = Instant::now();
        m.sh_ok("systemctl start etcd-backup.service")
            .with_context(|| format!("{}: etcd-backup.service:\n{}", m.name, m.journal("etcd-backup.service", 10)))?;
        let take_s = t.elapsed().as_secs_f64();
        let ship = format!("journalctl --after-cursor '{cursor}' -u etcd-backup-ship.service --no-pager -o cat");
        loop {
            self.interrupt.check()?;
            let journal = m.sh_ok(&ship)?;
            if journal.contains("Failed with result") {
                bail!("{}: etcd-backup-ship.service failed:\n{journal}", m.name);
            }
            if journal.contains("Deactivated successfully") {
                return Ok(BackupRun { journal, take_s, ship_s: t.elapsed().as_secs_f64() - take_s });
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("{}: etcd-backup-ship.service did not finish within 30 s:\n{journal}", m.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The host's etcdctl, inside the run's namespace, with the operator's client certificate,
    /// against the members `nodes`.
    pub(crate) fn etcdctl(&self, nodes: &[usize], args: &[&str]) -> Result<Output> {
        let endpoints: Vec<String> = nodes.iter().map(|i| self.endpoint(*i)).collect();
        let client = self.pki.client_dir("etcdctl");
        run_etcdctl(self.netns.command(&self.etcdctl), &self.etcdctl, &endpoints, Some(&client), args)
    }

    pub(crate) fn endpoint(&self, i: usize) -> String {
        format!("https://{}:2379", self.machines[i].ip)
    }

    /// Waits until `nodes` answer `endpoint health`; the error quotes etcdctl and the journal of
    /// each node that is not healthy.
    pub(crate) fn wait_healthy(&self, nodes: &[usize], timeout: Duration) -> Result<f64> {
        let t = Instant::now();
        let deadline = t + timeout;
        loop {
            self.interrupt.check()?;
            let out = self.etcdctl(nodes, &["endpoint", "health", "--command-timeout=1s"])?;
            let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
            let healthy = text.lines().filter(|l| l.contains("is healthy")).count();
            if out.status.success() && healthy == nodes.len() {
                return Ok(t.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                let mut why = format!("not healthy after {} s: {}", timeout.as_secs(), text.trim());
                for i in nodes {
                    let ep = self.endpoint(*i);
                    if !text.lines().any(|l| l.contains(&ep) && l.contains("is healthy")) {
                        why += &format!(
                            "\n  {} (journalctl -u etcd):\n{}",
                            self.machines[*i].name,
                            self.machines[*i].journal("etcd.service", 10)
                        );
                    }
                }
                bail!(why);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Keeps each machine's etcd journal and console beside the report.
    pub(crate) fn record_logs(&self) {
        for m in &self.machines {
            let journal = m
                .sh("journalctl --no-pager -o short-precise -u etcd.service -u etcd-backup.service")
                .map(|o| o.stdout)
                .unwrap_or_default();
            let _ = crate::util::write_atomic(&self.out.join(format!("{}.journal.log", m.name)), &journal, 0o644);
        }
    }

    pub(crate) fn print_how_to_reach(&self) {
        let client = self.pki.client_dir("etcdctl");
        let endpoints: Vec<String> = (0..self.machines.len()).map(|i| self.endpoint(i)).collect();
        println!(
            "\nThe machines are still running (--keep), in the network namespace {}. Reach them with:",
            self.netns.name
        );
        println!(
            "  nsenter --net={} {} --endpoints={} --cacert={} --cert={} --key={} endpoint health",
            self.netns.path().display(),
            display_rel(&self.etcdctl),
            endpoints.join(","),
            display_rel(&client.join("ca.crt")),
            display_rel(&client.join("client.crt")),
            display_rel(&client.join("client.key"))
        );
        for m in &self.machines {
            if let Some(pid) = m.leader_pid() {
                println!("  a shell on {}: nsenter -t {pid} -a /bin/bash", m.name);
            }
        }
        println!("Remove them with (as root):");
        for m in &self.machines {
            let cgroups: Vec<String> = m.cgroup_dirs().iter().map(|d| d.display().to_string()).collect();
            println!(
                "  kill -TERM {}; sleep 5; umount {}; find {} -depth -type d -exec rmdir {{}} \\;{}",
                m.nspawn_pid().map(|p| p.to_string()).unwrap_or_default(),
                m.root().display(),
                cgroups.join(" "),
                if cgroups.iter().any(|c| c.contains("/cgroup2/")) {
                    format!("; umount {}", m.dir.join("cgroup2").display())
                } else {
                    String::new()
                }
            );
        }
        println!("  ip netns delete {}", self.netns.name);
    }

    pub(crate) fn keep(&mut self) {
        for m in &mut self.machines {
            m.keep();
        }
        self.netns.keep();
    }
}

/// The systemd machines behind the engines' interface: a member stopped is its machine powered
/// off, started is the machine booted (etcd is enabled), killed is etcd SIGKILLed (systemd
/// restarts it).
impl Members for Hosts {
    fn kind(&self) -> Engine {
        Engine::Systemd
    }
    fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }
    fn name(&self, i: usize) -> &str {
        &self.spec.nodes[i].name
    }
    fn len(&self) -> usize {
        self.machines.len()
    }
    fn out(&self) -> &Path {
        &self.out
    }
    fn spec(&self) -> &ClusterSpec {
        &self.spec
    }
    fn pki(&self) -> &PkiLayout {
        &self.pki
    }
    fn rogue_pki(&self) -> &PkiLayout {
        &self.rogue
    }
    fn client_dir(&self) -> PathBuf {
        self.pki.client_dir("etcdctl")
    }
    fn client_url(&self, i: usize) -> String {
        self.endpoint(i)
    }
    fn peer_url(&self, i: usize) -> String {
        format!("https://{}:2380", self.machines[i].ip)
    }
    fn client_netns(&self) -> Option<PathBuf> {
        Some(self.netns.path())
    }
    fn etcdctl(&self, nodes: &[usize], args: &[&str]) -> Result<Output> {
        Hosts::etcdctl(self, nodes, args)
    }
    fn etcdctl_as(&self, client: &Path, nodes: &[usize], args: &[&str]) -> Result<Output> {
        let endpoints: Vec<String> = nodes.iter().map(|i| self.endpoint(*i)).collect();
        run_etcdctl(self.netns.command(&self.etcdctl), &self.etcdctl, &endpoints, Some(client), args)
    }
    fn etcdctl_program(&self) -> PathBuf {
        self.etcdctl.clone()
    }
    fn wait_healthy(&self, nodes: &[usize], timeout: Duration) -> Result<()> {
        Hosts::wait_healthy(self, nodes, timeout).map(|_| ())
    }
    fn log(&self, i: usize) -> Result<String> {
        self.machines[i].sh_ok("journalctl --no-pager -o cat -u etcd.service")
    }
    fn log_name(&self) -> &'static str {
        "etcd's journal"
    }
    fn stop(&mut self, i: usize) -> Result<()> {
        self.machines[i].poweroff()
    }
    fn start(&mut self, i: usize) -> Result<()> {
        self.boot(&[i]).map(|_| ())
    }
    fn start_many(&mut self, which: &[usize]) -> Result<()> {
        self.boot(which).map(|_| ())
    }
    fn kill(&mut self, i: usize) -> Result<()> {
        self.machines[i].sh_ok("systemctl kill --signal=SIGKILL etcd.service").map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_fit_one_bridge() {
        let file = Path::new("c.toml");
        let spec = |ips: [&str; 3]| {
            let mut text = String::from("name = \"t\"\nclients = [\"etcdctl\"]\n");
            for (i, ip) in ips.iter().enumerate() {
                text += &format!("[[nodes]]\nname = \"n{i}\"\nips = [\"{ip}\"]\n");
            }
            ClusterSpec::from_toml(&text, "c.toml").unwrap()
        };
        let (ips, bridge) = addressing(&spec(["10.1.2.3", "10.1.2.4", "10.1.2.254"]), file).unwrap();
        assert_eq!(ips.len(), 3);
        assert_eq!(bridge, Ipv4Addr::new(10, 1, 2, 253));
        let err = format!("{:#}", addressing(&spec(["10.1.2.3", "10.1.3.4", "10.1.2.5"]), file).unwrap_err());
        assert!(err.contains("node n1") && err.contains("field ips") && err.contains("10.1.3.4"), "{err}");
        let err = format!("{:#}", addressing(&spec(["127.0.0.2", "10.1.3.4", "10.1.2.5"]), file).unwrap_err());
        assert!(err.contains("node n0") && err.contains("127.0.0.2"), "{err}");
    }
}
