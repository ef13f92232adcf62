//! The podman resources of one smoke run, and their removal.
//! In: names of containers, volumes and the network as they are created. Out: nothing left
//! behind when the run ends, whether it passed, failed or was interrupted (unless `--keep`).

use std::process::{Command, Output};

use anyhow::{Context, Result};

/// Every resource of a smoke run carries this label, its value the cluster's name, so that the
/// leftovers of a killed run of that cluster are found, and runs of other clusters side by side
/// are left alone.
pub const LABEL_KEY: &str = "xtask.smoke";

/// The label of the resources of cluster `cluster`'s runs.
pub fn label(cluster: &str) -> String {
    format!("{LABEL_KEY}={cluster}")
}

/// The name of a resource of cluster `cluster`'s runs: `xtask-smoke-<cluster>-<what>`.
pub fn resource_name(cluster: &str, what: &str) -> String {
    format!("xtask-smoke-{cluster}-{what}")
}

/// The name of the pod `podman kube play` makes for a node of `cluster`.
pub fn pod_name(cluster: &str, node: &str) -> String {
    resource_name(cluster, node)
}

/// The name podman gives the etcd container of that pod.
pub fn pod_container_name(cluster: &str, node: &str) -> String {
    format!("{}-etcd", pod_name(cluster, node))
}

/// Runs `podman ARGS`; returns the output whether or not it succeeded.
pub fn podman_output(args: &[String]) -> Result<Output> {
    Command::new("podman").args(args).output().context("cannot run podman (install it: apt-get install podman)")
}

/// Runs `podman ARGS` and returns its stdout, or an error carrying its stderr.
pub fn podman(args: &[&str]) -> Result<String> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    podman_checked(&args)
}

pub fn podman_checked(args: &[String]) -> Result<String> {
    crate::util::stdout_of(Command::new("podman").args(args))
}

/// What a run created; removed on drop unless kept.
pub struct Resources {
    /// Pods of `podman kube play` (removed with their containers).
    pub pods: Vec<String>,
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
    pub networks: Vec<String>,
    /// Loop-device disks made for the run (the drills' data disk of its own): unmounted and
    /// detached after the containers that use them are gone.
    pub disks: Vec<crate::smoke::faults::disk::LoopDisk>,
    pub keep: bool,
}

impl Resources {
    pub fn new(keep: bool) -> Self {
        Resources {
            pods: Vec::new(),
            containers: Vec::new(),
            volumes: Vec::new(),
            networks: Vec::new(),
            disks: Vec::new(),
            keep,
        }
    }

    /// Removes everything an earlier run of cluster `cluster` could not clean up (killed with
    /// SIGKILL).
    pub fn remove_leftovers(cluster: &str) -> Result<()> {
        let filter = format!("label={}", label(cluster));
        let pods = podman(&["pod", "ps", "-q", "--filter", &filter])?;
        for id in pods.split_whitespace() {
            eprintln!("smoke: removing pod {id} left by an earlier run");
            let _ = podman(&["pod", "rm", "-f", "-t", "0", id]);
        }
        let containers = podman(&["ps", "-a", "-q", "--filter", &filter])?;
        for id in containers.split_whitespace() {
            eprintln!("smoke: removing container {id} left by an earlier run");
            let _ = podman(&["rm", "-f", "-t", "0", id]);
        }
        let volumes = podman(&["volume", "ls", "-q", "--filter", &filter])?;
        for v in volumes.split_whitespace() {
            eprintln!("smoke: removing volume {v} left by an earlier run");
            let _ = podman(&["volume", "rm", "-f", v]);
        }
        let networks = podman(&["network", "ls", "-q", "--filter", &filter])?;
        for n in networks.split_whitespace() {
            eprintln!("smoke: removing network {n} left by an earlier run");
            let _ = podman(&["network", "rm", "-f", n]);
        }
        Ok(())
    }

    pub fn cleanup(&mut self) {
        for p in self.pods.drain(..).rev() {
            let _ = podman(&["pod", "rm", "-f", "-t", "0", &p]);
        }
        for c in self.containers.drain(..).rev() {
            let _ = podman(&["rm", "-f", "-t", "0", &c]);
        }
        for d in self.disks.drain(..).rev() {
            crate::smoke::faults::disk::release(&d.dir, &d.image);
        }
        for v in self.volumes.drain(..) {
            let _ = podman(&["volume", "rm", "-f", &v]);
        }
        for n in self.networks.drain(..) {
            let _ = podman(&["network", "rm", "-f", &n]);
        }
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        if !self.keep {
            self.cleanup();
        }
    }
}
