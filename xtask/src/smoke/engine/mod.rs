//! Engines: what runs the three members of a cluster. In: a cluster description, its PKI and
//! etcd (an image, or binaries and bundles). Out: running members that can be started,
//! stopped, killed and asked with etcdctl; everything they made removed when dropped.
//!
//! `cluster.rs` runs them with `podman run` (`podman.rs` tracks and removes the containers,
//! volumes and network; `cluster_faults.rs` puts them through faults), `kube.rs` with `podman kube play` of the static pods, `hosts.rs` on
//! three booted Debian machines (`machines.rs`: systemd-nspawn and the run's network namespace;
//! `nspawn_host.rs`: what booting needs of the host).

pub mod cluster;
pub mod cluster_faults;
pub mod hosts;
pub mod kube;
pub mod machines;
pub mod nspawn_host;
pub mod podman;

pub use hosts::Form;

use crate::smoke::local::Interrupt;

/// What a scenario asks of the members, whatever runs them.
pub(crate) trait Members {
    /// Ctrl-C: long waits poll it and give up.
    fn interrupt(&self) -> &Interrupt;
}

impl Members for cluster::Cluster {
    fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }
}

impl Members for hosts::Hosts {
    fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }
}

/// What runs the cluster's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// `podman run` with the node's configuration (every scenario)
    #[value(alias = "podman")]
    Run,
    /// `podman kube play` of the static pods `cargo xtask k8s` renders (the basic scenario)
    Kube,
    /// three Debian 12 machines booted with systemd-nspawn, set up from `render`'s bundles
    /// (`--form portable|host|both`; every scenario but http-to-tls)
    Systemd,
}
