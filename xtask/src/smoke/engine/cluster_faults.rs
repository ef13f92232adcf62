//! The faults a podman cluster's members can be put through: SIGKILL, SIGSTOP and SIGCONT of a
//! container, packets cut, lost or queued in a member's own network namespace
//! (`faults/netfilter.rs`), a small data disk (`faults/disk.rs`). In: a member's index. Out:
//! the fault in place until healed, resumed or started again.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::cluster::Cluster;
use super::podman::podman;
use crate::smoke::faults::{disk, netfilter};

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

    /// Member `i`'s peer traffic with both others dropped both ways (clients still reach it:
    /// they come from the network's gateway through the published ports).
    pub(crate) fn cut_off(&self, i: usize) -> Result<()> {
        let peers = self.peer_ips(i)?;
        self.in_netns(i, |ns| ns.cut_off(&peers))
    }

    /// Packets from member `from` to member `i` dropped at random with `probability`.
    pub(crate) fn lose(&self, from: usize, i: usize, probability: &str) -> Result<()> {
        let from = self.ip(from)?;
        self.in_netns(i, |ns| ns.lose_from(&from, probability))
    }

    /// Member `i`'s TCP packets to its peers handed to the netfilter queue `queue` of its
    /// namespace.
    pub(crate) fn queue_peer_traffic(&self, i: usize, queue: &str) -> Result<()> {
        let peers = self.peer_ips(i)?;
        self.in_netns(i, |ns| ns.queue_to(&peers, queue))
    }

    /// Removes every rule a fault added in member `i`'s namespace.
    pub(crate) fn heal(&self, i: usize) -> Result<()> {
        self.in_netns(i, netfilter::heal)
    }

    /// SIGKILL to member `i`'s etcd, and wait until its container has exited.
    pub(crate) fn kill(&self, i: usize) -> Result<()> {
        podman(&["kill", "-s", "KILL", &self.nodes[i].container])?;
        let _ = podman(&["wait", &self.nodes[i].container]);
        Ok(())
    }

    /// SIGSTOP to member `i`'s etcd.
    pub(crate) fn pause(&self, i: usize) -> Result<()> {
        podman(&["kill", "--signal", "STOP", &self.nodes[i].container]).map(|_| ())
    }

    /// SIGCONT to member `i`'s etcd.
    pub(crate) fn resume(&self, i: usize) -> Result<()> {
        podman(&["kill", "--signal", "CONT", &self.nodes[i].container]).map(|_| ())
    }

    /// Member `i`'s data directory on a tmpfs of `bytes` mounted on the host for the run (it
    /// outlives the container, unlike a podman tmpfs volume; unmounted after the containers are
    /// gone), owned by the image's etcd user. Before the cluster starts.
    pub(crate) fn small_disk(&mut self, i: usize, bytes: u64) -> Result<PathBuf> {
        let mnt = self.out.join(format!("disk{}", i + 1));
        disk::mount_small(&mnt, bytes, self.uid, self.gid)?;
        self.res.mounts.push(mnt.clone());
        self.nodes[i].volume = mnt.display().to_string();
        Ok(mnt)
    }
}
