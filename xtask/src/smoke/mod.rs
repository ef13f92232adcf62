//! Smoke stage: `cargo xtask smoke` proves the baked image on a three-node mutual-TLS cluster.
//! In: the image (built or reused), a cluster description (`clusters/smoke.toml`), a throwaway
//! PKI issued for it. Out: `target/smoke/report.json` and a summary, every check PASS or FAIL
//! with its reason; non-zero exit on any FAIL. Nothing is left running unless `--keep`.
//!
//! The etcd configuration of every container comes from [`crate::render::config::node_env`],
//! the same code that writes host bundles: there is no second flag list here.
//!
//! Rooms, by concern (after etcd's `tests/robustness` and Jepsen): `engine/` runs the members
//! (podman containers, `kube play` pods, booted systemd machines); `workload/` is what clients
//! do beside them (the load through the JSON gateway, a watcher per member, Prometheus);
//! `faults/` what goes wrong on purpose; `verify/` the verdict over the recorded history (pure);
//! `report/` what is kept of a run; `scenarios/` which of them go together, and the only room
//! that combines the others. This file is the command: its flags, typed once, handed over.

mod engine;
mod faults;
mod local;
mod report;
mod scenarios;
mod verify;
mod workload;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::pki::cluster::ClusterSpec;
use crate::util::{project_root, target_dir};
pub use engine::{machines, Engine, Form};
pub use faults::netdelay;
pub use scenarios::ScenarioName;
pub use verify::linearizable;
pub use workload::backup_host;

/// Start a three-node mutual-TLS etcd cluster from the baked image in podman, prove it under a
/// client load, and remove it again.
///
/// Scenarios (each on a fresh cluster, with a client load of writes and linearizable reads
/// against all three endpoints throughout, and every acknowledged write checked at the end):
/// basic (health, linearizable reads, the JSON gateway, refused connections, non-root and no
/// capabilities, faults, backup and restore); upgrade (a rolling upgrade to the release in
/// images/etcd.toml [upgrade]); rotate-certs (`pki renew` of every leaf, then a CA rotation with
/// rolling restarts); replace-member (node 2's volume destroyed, the member replaced through a
/// learner); all (those four, the default); http-to-tls (a cluster born on plain http switched to
/// mutual TLS member by member, without losing data or member IDs; not part of all, for time);
/// drills (partitions, one-way packet loss and pauses of a follower and of the leader, inside the
/// members' own network namespaces, a NOSPACE alarm with etcd's runbook, and a member's data disk
/// filled from outside, then freed, then slowed to 4 writes a second until the fsync and commit
/// alerts fire; not part of all); disaster (a snapshot taken with the image's
/// etcdctl and shipped with rsync over ssh to a backup host of the run's own; two members lost
/// and the leader forced into a new cluster, the others added back as learners; then all three
/// lost and the newest good snapshot restored on all three; after each, hashkv, the keys held to
/// one revision of the load's history, the writes lost and the RTO; not part of all); auth
/// (the load as the cluster file's least-privileged writer over gRPC, etcd's auth turned on by
/// `cargo xtask auth apply` under it, each identity tried call by call, a client revoked and
/// refused, throughput with auth off and on, then with auth on a CA rotation and the rolling
/// upgrade; builds and runs xtask-grpc; not part of all); soak
/// (faults drawn from --seed for --duration: partitions, pauses, kills of the leader or a
/// follower, one-way packet loss, peer delay, a slow disk, leadership moved, compaction and
/// defragmentation, and with --profile any two members stopped at once; after each, 3/3
/// healthy and hashkv equal; --plan prints the schedule and starts nothing; its directory keeps
/// soak.json, which --replay DIR runs again; not part of all).
///
/// --engine kube plays the static pods of `cargo xtask k8s` with `podman kube play` instead
/// (basic scenario; the few adaptations podman needs are printed and go into the report).
///
/// --engine systemd runs the cluster the way the tutorial's master1..3 do: three Debian 12
/// machines booted with systemd-nspawn (a cached mmdebstrap root, one overlay each), named and
/// addressed after the cluster file's nodes, on a bridge inside a network namespace of the
/// run's own (the host's network is not touched; the load and etcdctl reach the machines from
/// inside it). Each machine gets its bundle from `cargo xtask render` and runs its
/// <node>.INSTALL.md block verbatim: --form portable attaches etcd_<version>.raw with
/// portablectl, --form host installs the binaries and the hardened unit; both (the default)
/// runs one after the other. Checks: health, replication, mutual-TLS refusals with etcd's
/// reason from the journal, non-root without capabilities (/proc in the machine),
/// `systemd-analyze security`, machines powered off and booted again, etcd SIGKILLed, a machine
/// rebooted, the backup timer's snapshot restored. Then, on the same machines, the day-2 steps of
/// each node's INSTALL.md under the load: rotate-certs (the renewal), replace-member (machine 3
/// destroyed, a fresh one added as a learner), upgrade (portablectl reattach, or the new binary);
/// --scenario basic runs the basic checks only.
#[derive(Debug, clap::Args)]
#[command(long_about)]
pub struct Smoke {
    /// Scenario to run (repeatable)
    #[arg(long, value_enum, value_name = "NAME", default_values_t = [ScenarioName::All])]
    pub scenario: Vec<ScenarioName>,
    /// The version the upgrade scenario moves the cluster to [default: upgrade.to of images/etcd.toml]
    #[arg(long, value_name = "V")]
    pub upgrade_to: Option<String>,
    /// The etcd version the cluster runs [default: etcd.version of images/etcd.toml], e.g.
    /// 3.5.16 to run the drills on the release the upgrade moves to
    #[arg(long, value_name = "V")]
    pub etcd_version: Option<String>,
    /// What runs the members: run (`podman run`) or kube (`podman kube play` of the static pods
    /// `cargo xtask k8s` renders; the basic scenario only)
    #[arg(long, value_enum, value_name = "ENGINE", default_value = "run")]
    pub engine: Engine,
    /// With --engine systemd: how the machines run etcd (portable: `portablectl attach` of the
    /// .raw image; host: the host bundle and binaries; both: one after the other)
    #[arg(long, value_enum, value_name = "FORM", default_value = "both")]
    pub form: Form,
    /// Leave the cluster running and print how to reach it with etcdctl
    #[arg(long)]
    pub keep: bool,
    /// Cluster description (three nodes with static IPs on the network the test creates)
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// Where etcd comes from when the image has to be built
    #[arg(long, default_value_t, value_name = "SOURCE")]
    pub source: crate::acquire::SourcePolicy,
    /// Output directory [default: target/smoke]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// With --scenario soak: how long it runs (90s, 30m, 2h) [default: 60s]
    #[arg(long, value_name = "D", value_parser = faults::plan::parse_duration)]
    pub duration: Option<f64>,
    /// With --scenario soak: the seed of its schedule (the same seed, duration and profile give
    /// the same schedule) [default: drawn from the clock, printed]
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// With --scenario soak: quorum-safe (one member out at a time; no request may fail) or any
    /// (also two members at once; requests may fail inside those windows)
    #[arg(long, value_enum, value_name = "PROFILE", default_value = "quorum-safe")]
    pub profile: faults::plan::Profile,
    /// With --scenario soak: print the schedule (time, fault, target, hold; one line each) and
    /// start nothing
    #[arg(long)]
    pub plan: bool,
    /// Run a soak's schedule again: DIR is the directory of its run (target/smoke/soak), which
    /// holds soak.json (seed, schedule, the etcd release it ran on: used unless --etcd-version
    /// says otherwise); implies --scenario soak. Give the replay another --out than the run it
    /// replays (it refuses to write over it)
    #[arg(long, value_name = "DIR")]
    pub replay: Option<PathBuf>,
}

/// The scenarios, in the order `all` runs them.
impl Smoke {
    pub fn run(mut self) -> Result<()> {
        if self.replay.is_some() {
            if self.scenario == [ScenarioName::All] {
                self.scenario = vec![ScenarioName::Soak];
            } else if !self.scenario.contains(&ScenarioName::Soak) {
                bail!("--replay runs a soak again: add --scenario soak, or leave --scenario out");
            }
        }
        let soak = self.soak_plan()?;
        if let (None, Some(p)) = (&self.etcd_version, &soak) {
            self.etcd_version = p.etcd_version.clone();
        }
        if self.plan {
            let Some(p) = &soak else {
                bail!("--plan prints a soak's schedule: add --scenario soak");
            };
            print!("{}", faults::plan::render(p.seed, p.duration_s, p.profile, &p.faults));
            return Ok(());
        }
        if self.scenario.contains(&ScenarioName::Auth) && !workload::client::GRPC_BUILT {
            return rerun_with_grpc();
        }
        let started = Instant::now();
        let out = self.out.clone().unwrap_or_else(|| target_dir().join("smoke"));
        // Absolute: podman takes a relative `-v dir:...` for the name of a volume.
        let out = std::path::absolute(&out).with_context(|| format!("--out {}", out.display()))?;
        if let Some(dir) = &self.replay {
            // The run writes its soak's directory anew: never over the failure it replays.
            let into = out.join(ScenarioName::Soak.as_str());
            let same = |a: &std::path::Path, b: &std::path::Path| match (a.canonicalize(), b.canonicalize()) {
                (Ok(a), Ok(b)) => a == b || a.starts_with(&b) || b.starts_with(&a),
                _ => false,
            };
            if same(dir, &into) {
                bail!(
                    "--replay {}: this run would write over it ({}): give the replay another --out, e.g. --out target/smoke-replay",
                    dir.display(),
                    into.display()
                );
            }
        }
        let cluster_path = self.cluster.clone().unwrap_or_else(|| project_root().join("clusters/smoke.toml"));
        let spec = ClusterSpec::load(&cluster_path)?;
        if spec.nodes.len() != 3 {
            bail!("{}: field nodes must list exactly three nodes for the smoke test", cluster_path.display());
        }
        scenarios::run(&scenarios::Options {
            scenarios: self.scenario,
            upgrade_to: self.upgrade_to,
            etcd_version: self.etcd_version,
            engine: self.engine,
            form: self.form,
            keep: self.keep,
            cluster_path,
            spec,
            source: self.source,
            out,
            started,
            soak,
        })
    }

    /// The soak's schedule when `--scenario soak` is asked for; its flags refused without it.
    fn soak_plan(&self) -> Result<Option<scenarios::soak::SoakPlan>> {
        if !self.scenario.contains(&ScenarioName::Soak) {
            if self.duration.is_some() || self.seed.is_some() || self.profile != faults::plan::Profile::QuorumSafe {
                bail!("--duration, --seed and --profile are for --scenario soak: add it, or leave them out");
            }
            return Ok(None);
        }
        if let Some(dir) = &self.replay {
            if self.duration.is_some() || self.seed.is_some() || self.profile != faults::plan::Profile::QuorumSafe {
                bail!("--replay takes the seed, duration, profile and schedule from {}: leave --seed, --duration and --profile out", dir.display());
            }
            let plan = scenarios::soak::SoakPlan::load(dir)?;
            eprintln!("smoke: replaying seed {} ({} faults) from {}", plan.seed, plan.faults.len(), dir.display());
            return Ok(Some(plan));
        }
        let seed = self.seed.unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            faults::plan::SplitMix64::new(now.as_nanos() as u64).next_u64() % 1_000_000_000
        });
        let duration_s = self.duration.unwrap_or(60.0);
        let faults = faults::plan::plan(seed, duration_s, self.profile);
        Ok(Some(scenarios::soak::SoakPlan { seed, duration_s, profile: self.profile, faults, etcd_version: None }))
    }
}

/// `--scenario auth` needs the load over gRPC, which the default build leaves out (so that the
/// first `cargo xtask image` does not compile it): builds this program with `--features grpc`
/// and runs the same command with it. Its build needs `protoc` (Debian's protobuf-compiler).
fn rerun_with_grpc() -> Result<()> {
    if !crate::util::on_path("protoc") {
        bail!(
            "--scenario auth runs the load over gRPC, whose client is built with protoc, which is not installed: \
             apt-get install protobuf-compiler (or run `cargo xtask ci --deps-only` as root)"
        );
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("smoke: --scenario auth needs the gRPC client: building xtask-grpc (xtask with --features grpc)");
    let t = Instant::now();
    let built = crate::util::as_from_a_shell(&mut std::process::Command::new(&cargo))
        .current_dir(project_root())
        .args(["build", "--quiet", "--package", "xtask", "--features", "grpc", "--bin", "xtask-grpc"])
        .status()
        .context("cannot run cargo to build xtask-grpc")?;
    if !built.success() {
        bail!("cannot build xtask-grpc ({built}): see cargo's messages above");
    }
    eprintln!("smoke: xtask-grpc ready in {:.1} s; running the same command with it", t.elapsed().as_secs_f64());
    let exe = target_dir().join("debug/xtask-grpc");
    let status = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .status()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    if !status.success() {
        bail!("the smoke test failed (xtask-grpc: {status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::ci::module_graph::{graph, read_crate};

    /// The room of a file under `smoke/` (`engine`, ..., `local` for `local.rs`), or none.
    fn room(rel: &str) -> Option<&str> {
        let rest = rel.strip_prefix("smoke/")?;
        Some(rest.split_once('/').map_or(rest.trim_end_matches(".rs"), |(room, _)| room))
    }

    /// Each room depends only on the rooms below it: the engines, the faults and the checkers
    /// know no scenario, the checkers know nothing else at all, and only `scenarios/` combines.
    #[test]
    fn the_rooms_depend_only_on_the_rooms_below_them() {
        let below: BTreeMap<&str, &[&str]> = BTreeMap::from([
            ("local", &[][..]),
            ("verify", &[][..]),
            ("faults", &["local"][..]),
            ("engine", &["local", "faults"][..]),
            ("workload", &["local", "verify"][..]),
            ("report", &["workload", "verify"][..]),
        ]);
        let files = read_crate(&crate::util::project_root().join("xtask/src")).unwrap();
        let mut wrong = Vec::new();
        for (file, deps) in graph(&files) {
            let Some(allowed) = room(&file).and_then(|r| below.get(r).map(|b| (r, b))) else { continue };
            for dep in deps.iter().filter_map(|d| room(d).map(|r| (d, r))) {
                if dep.1 != allowed.0 && !allowed.1.contains(&dep.1) {
                    wrong.push(format!("{file} -> {}", dep.0));
                }
            }
        }
        assert!(wrong.is_empty(), "dependencies against the rooms' order:\n  {}", wrong.join("\n  "));
    }

    /// The words that would mean a room does what it must not, by room: `verify/` is pure
    /// (history in, verdict out: no process, file or socket); `report/` writes its two files
    /// and runs nothing; `scenarios/` runs no process of its own: every command goes through
    /// an engine (its etcdctl, curl and openssl from where the clients are, a member's shell).
    #[test]
    fn the_rooms_do_only_what_they_may() {
        let forbidden: [(&str, &[&str]); 3] = [
            ("smoke/verify/", &["std::process", "Command", "std::fs", "std::net", "write_atomic", "ureq", "File::"]),
            ("smoke/report/", &["std::process", "Command", "std::net", "ureq", "setns", "nsenter"]),
            ("smoke/scenarios/", &["Command::new", "podman(", "podman_checked", "setns", "nsenter"]),
        ];
        let files = read_crate(&crate::util::project_root().join("xtask/src")).unwrap();
        for (room, words) in forbidden {
            let mine: Vec<_> = files.iter().filter(|(rel, _)| rel.starts_with(room)).collect();
            assert!(mine.len() >= 2, "{room}: {mine:?}");
            for (rel, text) in mine {
                let code = crate::ci::module_graph::strip(text);
                for w in words {
                    assert!(!code.contains(w), "{rel} uses {w}: not in {room}");
                }
            }
        }
    }
}
