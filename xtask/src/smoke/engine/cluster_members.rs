//! A podman cluster as [`Members`]: stopped and started, SIGKILLed, SIGSTOPped and SIGCONTed
//! containers, a member's packets cut off, lost or queued in its own network namespace
//! (`faults/netfilter.rs`), a small data disk (`faults/disk.rs`); and what only podman's
//! members go through (a container replaced, lost with its volume, made anew, a node restored
//! from a snapshot). In: a member's index. Out: the member in its new state, the fault in place
//! until healed, resumed or started again.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use super::cluster::{chown_tree, Cluster, PKI_MOUNT};
use super::podman::{label, podman, podman_checked, resource_name};
use super::run_etcdctl;
use super::{Engine, Members};
use crate::pki::cluster::{ClusterSpec, NodeSpec};
use crate::pki::layout::PkiLayout;
use crate::render::config::{node_env, PkiFacts, TargetPaths};
use crate::smoke::faults::netdelay::Delayer;
use crate::smoke::faults::{disk, netfilter};
use crate::smoke::local::free_port;
use crate::smoke::local::Interrupt;

impl Cluster {
    /// The process id of member `i`'s etcd (its container's init) on the host.
    pub(crate) fn pid(&self, i: usize) -> Result<String> {
        let pid = podman(&["inspect", "--format", "{{.State.Pid}}", &self.nodes[i].container])?;
        let pid = pid.trim().to_string();
        if pid.is_empty() || pid == "0" {
            bail!("{} is not running", self.nodes[i].container);
        }
        Ok(pid)
    }

    /// Member `i`'s address on the run's network.
    pub(crate) fn ip(&self, i: usize) -> Result<String> {
        Ok(crate::render::config::primary_ip(&self.nodes[i].spec)?.to_string())
    }

    /// The addresses of member `i`'s peers.
    fn peer_ips(&self, i: usize) -> Result<Vec<String>> {
        (0..self.nodes.len()).filter(|o| *o != i).map(|o| self.ip(o)).collect()
    }

    /// Runs `f` on member `i`'s network namespace.
    fn in_netns<T>(&self, i: usize, f: impl FnOnce(&netfilter::Namespace<'_>) -> Result<T>) -> Result<T> {
        let pid = self.pid(i)?;
        f(&netfilter::Namespace { pid: &pid, who: &self.nodes[i].container })
    }

    /// Packets from member `from` to member `i` dropped at random with `probability`.
    pub(crate) fn lose(&self, from: usize, i: usize, probability: &str) -> Result<()> {
        let from = self.ip(from)?;
        self.in_netns(i, |ns| ns.lose_from(&from, probability))
    }

    /// Where member `i`'s disk of its own is mounted.
    fn disk_dir(&self, i: usize) -> PathBuf {
        self.out.join(format!("disk{}", i + 1))
    }

    /// Member `i`'s peer packets held `ms` ms for `hold` (netem's delay: its TCP packets to its
    /// peers queued to `xtask delay-packets` in its namespace), then the rules removed. The
    /// delayer, still sending what it holds (for [`Delayer::finish`]), and how long it held.
    pub(crate) fn hold_peer_traffic(&mut self, i: usize, ms: u64, hold: Duration) -> Result<(Delayer, Duration)> {
        let serve = hold + Duration::from_millis(ms) + Duration::from_secs(1);
        let delayer = Delayer::start(&self.pid(i)?, DELAY_QUEUE, ms, serve)?;
        let t = std::time::Instant::now();
        let peers = self.peer_ips(i)?;
        let queued = self.in_netns(i, |ns| ns.queue_to(&peers, DELAY_QUEUE));
        let queued = queued.map(|_| std::thread::sleep(hold.saturating_sub(t.elapsed())));
        let healed = self.heal(i);
        let lasted = t.elapsed();
        queued.and(healed).map(|_| (delayer, lasted))
    }

    /// Member `i`'s data directory on a disk of its own: ext4 of `bytes` on a loop device,
    /// mounted on the host for the run (it outlives the container; released after the
    /// containers are gone), owned by the image's etcd user. Before the cluster starts.
    pub(crate) fn own_disk(&mut self, i: usize, bytes: u64) -> Result<PathBuf> {
        let mnt = self.disk_dir(i);
        let d = disk::mount_loop(&mnt, bytes, self.uid, self.gid)?;
        self.res.disks.push(d);
        self.nodes[i].volume = mnt.display().to_string();
        Ok(mnt)
    }
}

/// A podman cluster behind the engines' interface (`podman run`, or `kube play` once the
/// static pods are rendered).
impl Members for Cluster {
    fn kind(&self) -> Engine {
        if self.kube_manifests.is_some() {
            Engine::Kube
        } else {
            Engine::Run
        }
    }
    fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }
    fn name(&self, i: usize) -> &str {
        &self.nodes[i].spec.name
    }
    fn len(&self) -> usize {
        self.nodes.len()
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
        self.client.clone()
    }
    fn client_url(&self, i: usize) -> String {
        Cluster::client_url(self, i)
    }
    fn peer_url(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.nodes[i].peer_port)
    }
    fn load_endpoints(&self) -> Vec<String> {
        let scheme = if self.plain_clients { "http" } else { "https" };
        self.nodes.iter().map(|n| format!("{scheme}://127.0.0.1:{}", n.client_port)).collect()
    }
    fn client_netns(&self) -> Option<PathBuf> {
        None
    }
    fn etcdctl(&self, nodes: &[usize], args: &[&str]) -> Result<Output> {
        Cluster::etcdctl(self, nodes, args)
    }
    fn etcdctl_as(&self, client: &Path, nodes: &[usize], args: &[&str]) -> Result<Output> {
        let endpoints: Vec<String> =
            nodes.iter().map(|i| format!("https://127.0.0.1:{}", self.nodes[*i].client_port)).collect();
        run_etcdctl(Command::new(&self.etcdctl), &self.etcdctl, &endpoints, Some(client), args)
    }
    fn etcdctl_program(&self) -> PathBuf {
        self.etcdctl.clone()
    }
    fn wait_healthy(&self, nodes: &[usize], timeout: Duration) -> Result<()> {
        Cluster::wait_healthy(self, nodes, timeout)
    }
    fn log(&self, i: usize) -> Result<String> {
        self.logs(i, &[])
    }
    fn log_name(&self) -> &'static str {
        "etcd's log"
    }
    fn stop(&mut self, i: usize) -> Result<()> {
        podman(&["stop", "-t", "5", &self.nodes[i].container]).map(|_| ())
    }
    fn start(&mut self, i: usize) -> Result<()> {
        let container = &self.nodes[i].container;
        let Err(e) = podman(&["start", container]) else { return Ok(()) };
        // A pod of `kube play` whose only container exited may stop its infra container too
        // (podman 4.3 then refuses to start the container alone, exit 125): start the pod.
        let pod = podman(&["inspect", "--format", "{{.Pod}}", container]).unwrap_or_default();
        if pod.trim().is_empty() {
            return Err(e);
        }
        podman(&["pod", "start", pod.trim()]).map(|_| ()).with_context(|| format!("after {e:#}"))
    }
    /// SIGKILL, and wait until the container has exited.
    fn kill(&mut self, i: usize) -> Result<()> {
        podman(&["kill", "-s", "KILL", &self.nodes[i].container])?;
        let _ = podman(&["wait", &self.nodes[i].container]);
        Ok(())
    }
    fn pause(&mut self, i: usize) -> Result<()> {
        podman(&["kill", "--signal", "STOP", &self.nodes[i].container]).map(|_| ())
    }
    fn resume(&mut self, i: usize) -> Result<()> {
        podman(&["kill", "--signal", "CONT", &self.nodes[i].container]).map(|_| ())
    }
    /// Its peer traffic with both others dropped both ways (clients still reach it: they come
    /// from the network's gateway through the published ports).
    fn cut_off(&mut self, i: usize) -> Result<()> {
        let peers = self.peer_ips(i)?;
        self.in_netns(i, |ns| ns.cut_off(&peers))
    }
    fn heal(&mut self, i: usize) -> Result<()> {
        self.in_netns(i, netfilter::heal)
    }
    fn lose_packets(&mut self, from: usize, to: usize, probability: &str) -> Result<()> {
        self.lose(from, to, probability)
    }
    fn delay_peers(&mut self, i: usize, ms: u64, hold: Duration) -> Result<String> {
        self.hold_peer_traffic(i, ms, hold)?.0.finish()
    }
    /// Its writes to its own disk ([`Cluster::own_disk`]) limited by the kernel's block-I/O
    /// throttle on its container's cgroup.
    fn throttle_disk(&mut self, i: usize, iops: Option<u32>) -> Result<()> {
        let mnt = self.disk_dir(i);
        let d = self.res.disks.iter().find(|d| d.dir == mnt).with_context(|| {
            format!("{} has no disk of its own to slow down (own_disk before the start)", self.nodes[i].spec.name)
        })?;
        disk::throttle_writes(&self.pid(i)?, &d.numbers, iops).with_context(|| {
            format!("cannot throttle the writes of {} to {}", self.nodes[i].container, d.device.display())
        })
    }
}

/// The netfilter queue a peer delay uses (queues belong to a member's network namespace).
const DELAY_QUEUE: &str = "7";

/// What only podman's members go through: a member's container replaced, lost with its volume,
/// made anew, restored from a snapshot beside the others; and what the host sees of them.
impl Cluster {
    /// Replaces member `i`'s container by one with `env` (and `image`, when given) on the same
    /// volume, certificates and address.
    pub(crate) fn recreate(&mut self, i: usize, env: BTreeMap<String, String>, image: Option<&str>) -> Result<()> {
        let container = self.nodes[i].container.clone();
        podman(&["stop", "-t", "10", &container])?;
        podman(&["rm", &container])?;
        self.nodes[i].env = env;
        if let Some(image) = image {
            self.nodes[i].image = image.to_string();
        }
        let args = self.container_args(&self.nodes[i])?;
        podman_checked(&args)
            .with_context(|| format!("cannot start {} on {}", self.nodes[i].spec.name, self.nodes[i].image))?;
        Ok(())
    }

    /// Member `i` lost for good: its container and its volume removed.
    pub(crate) fn destroy(&mut self, i: usize) -> Result<()> {
        podman(&["rm", "-f", "-t", "0", &self.nodes[i].container])?;
        podman(&["volume", "rm", "-f", &self.nodes[i].volume]).map(|_| ())
    }

    /// Member `i` made anew: an empty volume, and a container with its configuration now.
    pub(crate) fn create(&mut self, i: usize) -> Result<()> {
        podman(&["volume", "create", "--label", &label(&self.spec.name), &self.nodes[i].volume])?;
        let args = self.container_args(&self.nodes[i])?;
        podman_checked(&args).with_context(|| format!("cannot start the new {}", self.nodes[i].spec.name)).map(|_| ())
    }

    /// `/proc/PID/status` of member `i`'s etcd, as the host sees it.
    pub(crate) fn process_status(&self, i: usize) -> Result<String> {
        let pid = self.pid(i)?;
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read the status of {}'s etcd (pid {pid})", self.nodes[i].container))
    }

    /// Member `i`'s data directory on the host (its volume's mount point, or the kube engine's
    /// hostPath).
    pub(crate) fn data_dir(&self, i: usize) -> Result<PathBuf> {
        let n = &self.nodes[i];
        Ok(match &n.host_data {
            Some(dir) => dir.clone(),
            None => PathBuf::from(podman(&["volume", "inspect", "--format", "{{.Mountpoint}}", &n.volume])?.trim()),
        })
    }

    /// A fresh single node restored from `snap` into `data` (the host's etcdctl, `snapshot
    /// restore`; owned by the etcd uid, 0700) on the next address of the network, serving with
    /// node 1's certificates (clients reach it on loopback, which they cover): its published
    /// client port. Removed with the cluster.
    pub(crate) fn run_restored(&mut self, snap: &Path, data: &Path) -> Result<u16> {
        let first = match crate::render::config::primary_ip(&self.nodes[0].spec)? {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(_) => bail!("IPv4 only"),
        };
        let ip: IpAddr = format!("{}.{}.{}.{}", first[0], first[1], first[2], first[3].wrapping_add(3)).parse()?;
        let node = NodeSpec { name: "restored".into(), ips: vec![ip], dns: Vec::new(), kube_dns: Vec::new() };
        let facts = PkiFacts::read(&self.pki.root)?;
        let single = ClusterSpec { token: None, clients: Vec::new(), nodes: vec![node.clone()], ..self.spec.clone() };
        let env = node_env(&single, &node, &facts, &TargetPaths::standard(), &self.etcd_version)?;
        let out = Command::new(&self.etcdctl)
            .env_clear()
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore", &snap.to_string_lossy()])
            .arg(format!("--data-dir={}", data.display()))
            .arg("--name=restored")
            .arg(format!("--initial-cluster={}", env["ETCD_INITIAL_CLUSTER"]))
            .arg(format!("--initial-advertise-peer-urls={}", env["ETCD_INITIAL_ADVERTISE_PEER_URLS"]))
            .arg(format!("--initial-cluster-token={}", facts.token))
            .output()
            .context("cannot run etcdctl snapshot restore")?;
        if !out.status.success() {
            bail!("snapshot restore failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        chown_tree(data, self.uid, self.gid)?;
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))?;
        let container = resource_name(&self.spec.name, "restored");
        let port = free_port()?;
        let extra = vec![
            "-v".into(),
            format!("{}:/var/lib/etcd", data.display()),
            "-v".into(),
            format!("{}:{PKI_MOUNT}:ro", self.mounts.join(&self.nodes[0].spec.name).display()),
            "-p".into(),
            format!("127.0.0.1:{port}:2379"),
        ];
        let args = self.run_command(&container, &ip.to_string(), extra, &env, &self.tag);
        podman_checked(&args).context("cannot start the restored node")?;
        self.res.containers.push(container);
        Ok(port)
    }
}

/// What a snapshot file is, as `etcdctl snapshot status -w json` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotStatus {
    pub hash: u64,
    pub revision: i64,
    pub total_keys: u64,
    pub total_size: u64,
}

/// Disaster recovery on podman's members: a snapshot taken with the image's etcdctl and copied
/// out, checked with the image's etcdctl, and members restored from one.
impl Cluster {
    /// `etcdctl snapshot save` inside member `i`'s container (the image's etcdctl, against its
    /// own endpoint, into the container's `/tmp`, a tmpfs), copied out to `dest` with `podman
    /// cp`; `dest` is root's, 0600 (it holds every key of the cluster).
    pub(crate) fn snapshot_save_in_image(&self, i: usize, dest: &Path) -> Result<()> {
        let name = dest.file_name().context("a snapshot file needs a name")?.to_string_lossy().to_string();
        let inside = format!("/tmp/{name}");
        self.exec_etcdctl(i, &["snapshot", "save", "--command-timeout=60s", &inside])?;
        let container = &self.nodes[i].container;
        let parent = dest.parent().context("a snapshot file needs a directory")?;
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        podman(&["cp", &format!("{container}:{inside}"), &dest.to_string_lossy()])
            .with_context(|| format!("cannot copy {inside} out of {container}"))?;
        std::os::unix::fs::chown(dest, Some(0), Some(0)).with_context(|| format!("cannot chown {}", dest.display()))?;
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o600))?;
        Ok(())
    }

    /// `etcdctl snapshot status -w json` of the host's file `snap` by the image's etcdctl (a
    /// container of its own without network, the file mounted read-only): an error naming the
    /// file and what to do when etcdctl cannot read it (truncated, not a snapshot).
    pub(crate) fn snapshot_status(&self, snap: &Path) -> Result<SnapshotStatus> {
        let mut args: Vec<String> = ["run", "--rm", "--network", "none", "--user", "0:0", "--entrypoint", "etcdctl"]
            .into_iter()
            .map(String::from)
            .collect();
        args.extend(super::cluster::hardening_args());
        args.extend(["-v".into(), format!("{}:/backup/snapshot.db:ro", snap.display())]);
        args.extend(self.run_args.iter().cloned());
        args.extend([self.tag.clone(), "snapshot".into(), "status".into(), "/backup/snapshot.db".into()]);
        args.extend(["-w".into(), "json".into()]);
        let out = super::podman::podman_output(&args)?;
        if !out.status.success() {
            bail!(
                "{}: etcdctl snapshot status cannot read it ({}): it is not a whole snapshot; do not restore it, take \
                 the previous good one from the backup host (or a new backup)",
                snap.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{}: snapshot status printed no JSON", snap.display()))?;
        let num =
            |k: &str| v[k].as_u64().with_context(|| format!("{}: snapshot status has no {k}: {v}", snap.display()));
        Ok(SnapshotStatus {
            hash: num("hash")?,
            revision: i64::try_from(num("revision")?).context("revision out of range")?,
            total_keys: num("totalKey")?,
            total_size: num("totalSize")?,
        })
    }

    /// Member `i` restored from `snap` (the host's etcdctl of the same release, `snapshot
    /// restore` with its name, address and the cluster's three peer URLs, and `token`, a new
    /// cluster token) into a fresh volume, then its container started with the same
    /// certificates and flags (the new token). Refused while a container of that name exists
    /// (a member still running, or stopped but not removed: its data would be in the way), and
    /// while its volume exists. The restore goes to a directory beside in the volume and is
    /// moved into place only once whole: a failed restore leaves no data that looks good.
    pub(crate) fn restore_member(&mut self, i: usize, snap: &Path, token: &str) -> Result<()> {
        let (name, container, volume) =
            (self.nodes[i].spec.name.clone(), self.nodes[i].container.clone(), self.nodes[i].volume.clone());
        if podman(&["container", "exists", &container]).is_ok() {
            let state = self.state(i).unwrap_or_default();
            bail!(
                "refusing to restore {name}: its container {container} still exists ({state}); a member that still \
                 runs would serve its old data beside the restored ones: stop and remove it first (podman rm -f \
                 {container}), and its volume (podman volume rm {volume})"
            );
        }
        if podman(&["volume", "exists", &volume]).is_ok() {
            bail!("refusing to restore {name}: its volume {volume} still exists; remove it first (podman volume rm {volume})");
        }
        podman(&["volume", "create", "--label", &label(&self.spec.name), &volume])?;
        let mountpoint = PathBuf::from(podman(&["volume", "inspect", "--format", "{{.Mountpoint}}", &volume])?.trim());
        let staging = mountpoint.join("restoring");
        let facts = PkiFacts::read(&self.pki.root)?;
        let mut env = node_env(&self.spec, &self.nodes[i].spec, &facts, &TargetPaths::standard(), &self.etcd_version)?;
        env.insert("ETCD_INITIAL_CLUSTER_TOKEN".into(), token.to_string());
        env.insert("ETCD_INITIAL_CLUSTER_STATE".into(), "new".into());
        let restored = restore_to(&self.etcdctl, snap, &staging, &name, &env);
        if let Err(e) = restored {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        std::fs::rename(staging.join("member"), mountpoint.join("member"))
            .with_context(|| format!("cannot move the restored data into {}", mountpoint.display()))?;
        std::fs::remove_dir_all(&staging).with_context(|| format!("cannot remove {}", staging.display()))?;
        chown_tree(&mountpoint, self.uid, self.gid)?;
        self.nodes[i].env = env;
        let args = self.container_args(&self.nodes[i])?;
        podman_checked(&args).with_context(|| format!("cannot start the restored {name}"))?;
        Ok(())
    }
}

/// `etcdctl snapshot restore SNAP --data-dir DATA` for the member `name` of the cluster `env`
/// describes (its `ETCD_INITIAL_*`); an error names the file and the member.
pub(crate) fn restore_to(
    etcdctl: &Path,
    snap: &Path,
    data: &Path,
    name: &str,
    env: &BTreeMap<String, String>,
) -> Result<()> {
    let get = |k: &str| env.get(k).with_context(|| format!("the configuration of {name} has no {k}"));
    if data.exists() {
        bail!("{}: cannot restore {name} into it: it exists; restore only into a new directory", data.display());
    }
    let out = Command::new(etcdctl)
        .env_clear()
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore", &snap.to_string_lossy()])
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--name={name}"))
        .arg(format!("--initial-cluster={}", get("ETCD_INITIAL_CLUSTER")?))
        .arg(format!("--initial-advertise-peer-urls={}", get("ETCD_INITIAL_ADVERTISE_PEER_URLS")?))
        .arg(format!("--initial-cluster-token={}", get("ETCD_INITIAL_CLUSTER_TOKEN")?))
        .output()
        .with_context(|| format!("cannot run {}", etcdctl.display()))?;
    if !out.status.success() {
        // What etcdctl wrote before it failed is not a member's data: removed.
        let _ = std::fs::remove_dir_all(data);
        bail!(
            "{}: snapshot restore for {name} failed ({}); nothing was restored: check it with `etcdctl snapshot \
             status` and take the previous good snapshot",
            snap.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
