//! Engines: what runs the three members of a cluster. In: a cluster description, its PKI and
//! etcd (an image, or binaries and bundles). Out: running members behind one interface,
//! [`Members`] (start, stop, kill, pause and resume, cut off and heal, etcdctl, curl and the
//! member's log), which says which [`Capability`] it lacks; everything they made removed when
//! dropped.
//!
//! `cluster.rs` runs them with `podman run` (`podman.rs` tracks and removes the containers,
//! volumes and network; `cluster_members.rs` puts them through faults), `kube.rs` with
//! `podman kube play` of the static pods, `hosts.rs` on three booted Debian machines
//! (`machines.rs`: systemd-nspawn and the run's network namespace; `nspawn_host.rs`: what
//! booting needs of the host); `restored.rs` a one-member etcd on loopback from a snapshot.

pub mod cluster;
pub mod cluster_members;
pub mod hosts;
pub mod kube;
pub mod machines;
pub mod nspawn_host;
pub mod podman;
pub mod restored;

pub use hosts::Form;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::pki::cluster::ClusterSpec;
use crate::pki::layout::PkiLayout;
use crate::smoke::local::{enter_netns, Interrupt};

/// What runs the cluster's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// `podman run` with the node's configuration (every scenario)
    #[value(alias = "podman")]
    Run,
    /// `podman kube play` of the static pods `cargo xtask k8s` renders (the basic scenario)
    Kube,
    /// three Debian 12 machines booted with systemd-nspawn, set up from `render`'s bundles
    /// (`--form portable|host|both`; every scenario but http-to-tls and drills)
    Systemd,
}

impl Engine {
    /// The flag's value: `run`, `kube`, `systemd` (also the report's `engine`).
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Run => "run",
            Engine::Kube => "kube",
            Engine::Systemd => "systemd",
        }
    }

    /// What runs the members, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Engine::Run => "podman run",
            Engine::Kube => "podman kube play of the rendered static pods",
            Engine::Systemd => "three systemd machines",
        }
    }

    /// Whether this engine's members can be put through `what`.
    pub fn can(self, what: Capability) -> bool {
        use Capability::*;
        match self {
            Engine::Run => true,
            // A static pod's container is restarted by podman when killed; the manifests are
            // played as rendered, and fix the members' configuration.
            Engine::Kube => matches!(what, StopStart),
            // systemd restarts a killed etcd (Restart=on-failure); the day-2 steps are the
            // node's INSTALL.md blocks (the ways back after a lost quorum among them); a
            // machine's network and disk are its own.
            Engine::Systemd => matches!(what, StopStart | Reconfigure | Restore),
        }
    }
}

/// etcdctl (`cmd`, running `program`, or `nsenter` into a namespace with it) against `endpoints`
/// with the operator's identity in `client` (none: plain http), API version 3 and a 2 s dial
/// timeout, then `args`: its output.
pub(crate) fn run_etcdctl(
    mut cmd: Command,
    program: &Path,
    endpoints: &[String],
    client: Option<&Path>,
    args: &[&str],
) -> Result<Output> {
    cmd.env_clear().env("ETCDCTL_API", "3").arg(format!("--endpoints={}", endpoints.join(",")));
    if let Some(client) = client {
        cmd.arg(format!("--cacert={}", client.join("ca.crt").display()))
            .arg(format!("--cert={}", client.join("client.crt").display()))
            .arg(format!("--key={}", client.join("client.key").display()));
    }
    cmd.arg("--dial-timeout=2s").args(args).output().with_context(|| format!("cannot run {}", program.display()))
}

/// What a scenario may need of the members beyond running them and asking them with etcdctl; an
/// engine says which it can do ([`Engine::can`]), and a scenario that needs one its engine lacks
/// is refused before anything starts, naming both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Stop a member and start it again on its data.
    StopStart,
    /// SIGKILL a member's etcd and find it down until it is started again.
    KillStaysDown,
    /// SIGSTOP and SIGCONT a member's etcd.
    Pause,
    /// Cut a member off from its peers, drop or delay its packets, in its own network namespace.
    CutOff,
    /// Run a member on a data disk of its own: small, filled from outside, slowed down.
    OwnDisk,
    /// Change a member's certificates, configuration or release while the cluster runs.
    Reconfigure,
    /// Run the members at each stage of the switch from plain http to mutual TLS.
    TlsStages,
    /// Destroy members with their data and bring the cluster back from a survivor or a snapshot.
    Restore,
}

impl Capability {
    /// The capability as a name, and what it is: for the refusal's message.
    pub fn describe(self) -> (&'static str, &'static str) {
        match self {
            Capability::StopStart => ("stop-start", "stop a member and start it again on its data"),
            Capability::KillStaysDown => ("kill", "SIGKILL a member's etcd and keep it down until started"),
            Capability::Pause => ("pause", "SIGSTOP and SIGCONT a member's etcd"),
            Capability::CutOff => ("cut-off", "cut a member off from its peers in its own network namespace"),
            Capability::OwnDisk => ("own-disk", "run a member on a data disk of its own (small, filled, slowed)"),
            Capability::Reconfigure => {
                ("reconfigure", "change a member's certificates, configuration or release while the cluster runs")
            }
            Capability::TlsStages => ("tls-stages", "run the members at each stage of the switch from http to TLS"),
            Capability::Restore => {
                ("restore", "destroy members with their data and bring them back from a survivor or a snapshot")
            }
        }
    }
}

/// What a scenario asks of the three members, whatever runs them. Members are numbered in the
/// cluster description's order.
pub(crate) trait Members {
    /// Which engine runs them.
    fn kind(&self) -> Engine;

    /// Whether they can be put through `what`.
    fn can(&self, what: Capability) -> bool {
        self.kind().can(what)
    }

    /// Ctrl-C: long waits poll it and give up.
    fn interrupt(&self) -> &Interrupt;

    /// The description's name of member `i`.
    fn name(&self, i: usize) -> &str;

    /// How many members there are.
    fn len(&self) -> usize;

    /// Where the run's files go (beside the report).
    fn out(&self) -> &Path;

    /// The cluster description the members were made from.
    fn spec(&self) -> &ClusterSpec;

    /// The run's PKI, and an unrelated one (its client certificate is of another CA).
    fn pki(&self) -> &PkiLayout;
    fn rogue_pki(&self) -> &PkiLayout;

    /// The operator's identity (`ca.crt`, `client.crt`, `client.key`) as the clients read it.
    fn client_dir(&self) -> PathBuf;

    /// Member `i`'s client and peer URLs as the clients reach them.
    fn client_url(&self, i: usize) -> String;
    fn peer_url(&self, i: usize) -> String;

    /// The endpoints the client load starts with.
    fn load_endpoints(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.client_url(i)).collect()
    }

    /// The network namespace the clients must be in to reach the members (`None`: the host's).
    fn client_netns(&self) -> Option<PathBuf>;

    /// The host's etcdctl of the members' release, with the operator's identity, against the
    /// members `nodes`, from where the clients are.
    fn etcdctl(&self, nodes: &[usize], args: &[&str]) -> Result<Output>;

    /// The same etcdctl with another identity's files (`ca.crt`, `client.crt`, `client.key`).
    fn etcdctl_as(&self, client: &Path, nodes: &[usize], args: &[&str]) -> Result<Output>;

    /// The host's etcdctl binary of the members' release (for commands that run it themselves).
    fn etcdctl_program(&self) -> PathBuf;

    /// Runs this program (`cargo xtask ARGS`, as an operator types a runbook's command) from
    /// where the clients are; its output, or an error quoting it.
    fn xtask(&self, args: &[String]) -> Result<String> {
        let exe = std::env::current_exe().context("cannot find this program")?;
        let mut cmd = match self.client_netns() {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd.args(args).output().with_context(|| format!("cannot run {}", exe.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("`cargo xtask {}` failed:\n{}", args.join(" "), text.trim());
        }
        Ok(text)
    }

    /// Waits until the members `nodes` answer `endpoint health`; the error says why not, with
    /// what the members logged.
    fn wait_healthy(&self, nodes: &[usize], timeout: Duration) -> Result<()>;

    /// Member `i`'s etcd log so far (a container's output, a unit's journal).
    fn log(&self, i: usize) -> Result<String>;

    /// What [`Members::log`] is, in a check's reason.
    fn log_name(&self) -> &'static str;

    /// Stops member `i` (its data kept) / starts it again.
    fn stop(&mut self, i: usize) -> Result<()>;
    fn start(&mut self, i: usize) -> Result<()>;

    /// Starts the members `which` again, side by side where the engine can.
    fn start_many(&mut self, which: &[usize]) -> Result<()> {
        which.iter().try_for_each(|i| self.start(*i))
    }

    /// SIGKILL to member `i`'s etcd (with [`Capability::KillStaysDown`] it stays down until
    /// started; else the engine restarts it).
    fn kill(&mut self, i: usize) -> Result<()>;

    /// SIGSTOP and SIGCONT to member `i`'s etcd.
    fn pause(&mut self, _i: usize) -> Result<()> {
        Err(self.cannot(Capability::Pause))
    }
    fn resume(&mut self, _i: usize) -> Result<()> {
        Err(self.cannot(Capability::Pause))
    }

    /// Member `i` cut off from its peers / every such rule removed again.
    fn cut_off(&mut self, _i: usize) -> Result<()> {
        Err(self.cannot(Capability::CutOff))
    }
    fn heal(&mut self, _i: usize) -> Result<()> {
        Err(self.cannot(Capability::CutOff))
    }

    /// A share (`probability`, e.g. "0.4") of `from`'s packets to `to` dropped, till `heal(to)`.
    fn lose_packets(&mut self, _from: usize, _to: usize, _probability: &str) -> Result<()> {
        Err(self.cannot(Capability::CutOff))
    }

    /// Every packet member `i` sends its peers held `ms` for `hold`; what was held, in words.
    fn delay_peers(&mut self, _i: usize, _ms: u64, _hold: Duration) -> Result<String> {
        Err(self.cannot(Capability::CutOff))
    }

    /// Member `i`'s writes to its data disk held to `iops` a second, or released (`None`).
    fn throttle_disk(&mut self, _i: usize, _iops: Option<u32>) -> Result<()> {
        Err(self.cannot(Capability::OwnDisk))
    }

    /// The error for a capability this engine lacks.
    fn cannot(&self, what: Capability) -> anyhow::Error {
        let (name, does) = what.describe();
        anyhow!("{} cannot {does} ({name})", self.kind().describe())
    }

    /// Like [`Members::etcdctl`], its stdout when it succeeded, else an error with its stderr.
    fn etcdctl_ok(&self, nodes: &[usize], args: &[&str]) -> Result<String> {
        let out = self.etcdctl(nodes, args)?;
        if !out.status.success() {
            bail!("etcdctl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `program` run where the clients are.
    fn client_command(&self, program: &str) -> Command {
        match self.client_netns() {
            None => Command::new(program),
            Some(ns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net={}", ns.display())).arg("--").arg(program);
                cmd
            }
        }
    }

    /// curl from where the clients are, with a 5 s bound.
    fn curl(&self, args: &[String]) -> Result<Output> {
        self.client_command("curl").args(["-sS", "--max-time", "5"]).args(args).output().context("cannot run curl")
    }

    /// curl's arguments for the operator's identity (CA, certificate, key).
    fn client_tls_args(&self) -> Vec<String> {
        let dir = self.client_dir();
        [("--cacert", "ca.crt"), ("--cert", "client.crt"), ("--key", "client.key")]
            .iter()
            .flat_map(|(flag, file)| [flag.to_string(), dir.join(file).display().to_string()])
            .collect()
    }

    /// Runs `f` (a client of this process: the gateway, the load) where the clients are.
    fn as_client<R: Send>(&self, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
        let Some(ns) = self.client_netns() else { return f() };
        std::thread::scope(|s| {
            s.spawn(move || {
                enter_netns(&ns)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(anyhow!("a thread in the network namespace panicked")))
        })
    }
}
