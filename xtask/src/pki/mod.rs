//! PKI stage: a cluster description (`clusters/*.toml`) and the certificate profiles
//! (`pki/profiles.toml`) in; a complete certificate directory out (`target/pki/<cluster>/`,
//! layout in [`PkiLayout`]): CAs, per-node server and peer certificates, per-identity client
//! certificates, each node's directory holding exactly what that node needs.
//!
//! - `cargo xtask pki --cluster FILE [--out DIR] [--force]`: [`issue`]
//! - `cargo xtask pki check DIR [--cluster FILE] [--warn-days N]`: [`check::check`]
//! - `cargo xtask pki renew DIR [--node NAME]`: [`renew`]
//! - `cargo xtask pki rotate-ca DIR --step add|reissue|drop`: [`rotate_ca`]
//! - `cargo xtask pki revoke DIR --client NAME | --node NAME --kind server|peer`: [`issue::crl::revoke`]
//! - `cargo xtask pki bench [--cluster FILE] [--runs N] [--dir DIR]`: [`bench::bench`]
//!
//! Modules: `cluster` (the description, reused by later stages), `compaction` (its
//! `[compaction]` policy), `profiles`, `cert` (issuing and reading certificates), `issue` (the
//! idempotent issuing run and the layout), `rotate` (CA rotation in three steps, state in
//! `rotation.json`), `check`, `bench` (timing against the tutorial's cfssl procedure).

pub mod backup;
pub mod bench;
pub mod check;
pub mod cluster;
pub mod compaction;
pub mod issue;
pub mod profiles;
pub mod rotate;

pub use issue::{cert, layout};
pub use rotate::rotation;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

pub use cluster::{ClusterSpec, NodeSpec, San};
pub use issue::{issue, renew};
pub use layout::{Action, IssueReport, PkiLayout};
pub use profiles::Profiles;
pub use rotate::{rotate_ca, RotateStep};
pub use rotation::{rotation_state, RotatePhase, RotationState};

/// Issue or inspect the certificates of an etcd cluster.
///
/// Without a subcommand: issue the PKI described by --cluster into --out (default
/// target/pki/<cluster name>/). Reruns are safe: existing CAs are reused and never overwritten,
/// certificates that still match the description are kept, new nodes get only their own
/// certificates, and a certificate whose SANs changed is reissued (the output says so).
///
/// Output: ca/ and peer-ca/ (the CAs), nodes/<node>/{server,peer}.{crt,key}, ca.crt,
/// peer-ca.crt (mount it at /etc/etcd/pki), clients/<id>/client.{crt,key}, ca.crt, token
/// (the initial-cluster token), cluster.toml and manifest.json. Keys 0600, directories 0700.
///
/// Leaves on a running cluster: `pki renew DIR` reissues every leaf (new keys, new serials)
/// under the same CAs. etcd re-reads its certificate and key files on every new TLS
/// handshake, so copying the new files to the nodes and clients is enough: no restart.
///
/// CAs on a running cluster: etcd reads its trust files (ca.crt, peer-ca.crt) only at start,
/// so `pki rotate-ca DIR --step STEP` replaces the CA (and the peer CA) in three steps, each
/// safe to re-run; a step out of order is refused and the message names the next one.
///
/// Step 1, --step add: new CAs in ca.next/ and peer-ca.next/; every ca.crt and peer-ca.crt (nodes
/// and clients) becomes a bundle of old + new CA. Copy them out, then restart etcd node by node.
///
/// Step 2, --step reissue: every server, peer and client certificate is reissued under the new
/// CAs; bundles unchanged. Copy them out; no restart: new connections use the new certificates.
///
/// Step 3, --step drop: the old CAs move to ca.old-N/ and peer-ca.old-N/ (keys kept), the new ones
/// become ca/ and peer-ca/, every trust file holds only the new CA. Copy them out, then restart
/// etcd node by node again; from then on a certificate of the old CA is refused.
///
/// The state is in DIR/rotation.json; `pki check DIR` reports it. During a rotation, issuing
/// and `renew` sign with the CA of the phase (old before reissue, new from it on) and keep the
/// bundles; --force is refused.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, long_about)]
pub struct PkiCmd {
    #[command(subcommand)]
    sub: Option<PkiSub>,

    /// Cluster description (TOML) to issue certificates for, e.g. clusters/tutorial.toml
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,

    /// Output directory [default: target/pki/<cluster name>/]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Replace the existing CA(s) with new ones and reissue every certificate; the old CA is
    /// kept aside as ca.old-N/ (the only way a CA is ever replaced)
    #[arg(long)]
    force: bool,

    /// Certificate profiles (key algorithms, lifetimes, usages) [default: pki/profiles.toml]
    #[arg(long, value_name = "FILE", global = true)]
    profiles: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum PkiSub {
    /// Print every certificate (kind, subject, SANs, not-after, days left, issuer) and verify
    /// chains, key/certificate pairs, usages and drift; exit non-zero on any problem.
    /// Works on directories made by other tools too (e.g. cfssl's ca.pem, server.pem, server-key.pem).
    Check {
        /// Directory holding the certificates
        dir: PathBuf,
        /// Also check drift against this cluster description (missing or extra nodes and
        /// clients, changed SANs or CNs)
        #[arg(long, value_name = "FILE")]
        cluster: Option<PathBuf>,
        /// Treat certificates expiring within this many days as problems
        #[arg(long, value_name = "N", default_value_t = 30)]
        warn_days: u32,
    },
    /// Reissue every leaf certificate (servers, peers, clients; new keys and serials) under the
    /// existing CA(s), for the description stored in DIR/cluster.toml; no etcd restart needed.
    /// During a CA rotation: under the CA of its phase, keeping the bundles
    Renew {
        /// A PKI directory made by `cargo xtask pki`
        dir: PathBuf,
        /// Only reissue this node's server and peer certificates
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
    },
    /// One step of a CA rotation on a running cluster: add (new CAs, trust files become old + new
    /// bundles; then restart etcd node by node), reissue (every leaf under the new CAs; no
    /// restart), drop (old CAs kept aside as ca.old-N/, trust files hold only the new CAs; then
    /// restart etcd node by node). Each step is safe to re-run; out of order is refused.
    RotateCa {
        /// A PKI directory made by `cargo xtask pki`
        dir: PathBuf,
        /// The step to run (begin is an alias of add, finish of drop)
        #[arg(long, value_enum, value_name = "STEP")]
        step: RotateStep,
    },
    Revoke(issue::crl::RevokeArgs),
    /// Time issuing the full certificate set of a cluster (median of --runs fresh runs) and, when
    /// cfssl is installed (Debian's golang-cfssl), the tutorial's cfssl procedure for the same
    /// set in the same run; print both and the ratio ours/cfssl against the goal (at most 0.1x).
    Bench {
        /// Cluster description [default: clusters/tutorial.toml]
        #[arg(long, value_name = "FILE")]
        cluster: Option<PathBuf>,
        /// Runs per side; the median is reported
        #[arg(long, value_name = "N", default_value_t = 5)]
        runs: usize,
        /// Work in fresh directories under DIR [default: target/pki-bench]; a tmpfs leaves the
        /// disk's flush out (ours flushes what it writes, cfssljson does not)
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

impl PkiCmd {
    pub fn run(self) -> Result<()> {
        let profiles_path = self.profiles.clone().unwrap_or_else(Profiles::default_path);
        let profiles = Profiles::load(&profiles_path)?;
        for w in profiles.warnings() {
            eprintln!("warning: {}: {w}", profiles_path.display());
        }
        match self.sub {
            None => {
                let Some(cluster) = self.cluster else {
                    bail!("no cluster description: pass --cluster FILE (e.g. --cluster clusters/tutorial.toml), or use `pki check DIR` / `pki renew DIR`");
                };
                let spec = ClusterSpec::load(&cluster)?;
                for w in spec.warnings() {
                    eprintln!("warning: {}: {w}", cluster.display());
                }
                let out = self.out.unwrap_or_else(|| PkiLayout::default_for(&spec).root);
                let report = issue(&spec, &profiles, &out, self.force)
                    .with_context(|| format!("cannot issue the PKI of {} into {}", cluster.display(), out.display()))?;
                print!("{report}");
                let n = report.issued().count();
                println!(
                    "{}: {n} certificate(s) issued, the rest kept; initial-cluster token in {}",
                    out.display(),
                    PkiLayout::new(&out).token().display()
                );
                Ok(())
            }
            Some(PkiSub::Check { dir, cluster, warn_days }) => {
                let cluster = match cluster {
                    Some(path) => Some(ClusterSpec::load(&path)?),
                    None => None,
                };
                let opts = check::CheckOptions {
                    warn_days: i64::from(warn_days),
                    cluster,
                    profiles,
                    now: time::OffsetDateTime::now_utc().unix_timestamp(),
                };
                let report = check::check(&dir, &opts)?;
                print!("{report}");
                let problems = report.problem_count();
                if problems > 0 {
                    bail!("{problems} problem(s) in {}: see PROBLEM lines above", dir.display());
                }
                println!("{}: {} certificate(s), no problems", dir.display(), report.rows.len());
                Ok(())
            }
            Some(PkiSub::Renew { dir, node }) => {
                let report = renew(&dir, &profiles, node.as_deref())
                    .with_context(|| format!("cannot renew the certificates in {}", dir.display()))?;
                print!("{report}");
                println!("{}: {} certificate(s) reissued", dir.display(), report.issued().count());
                if let Some(state) = rotation_state(&dir)?.filter(|s| s.phase.in_progress()) {
                    println!("{}: {}", dir.display(), state.summary());
                }
                Ok(())
            }
            Some(PkiSub::RotateCa { dir, step }) => {
                let report = rotate_ca(&dir, &profiles, step)
                    .with_context(|| format!("cannot run the {step} step of the CA rotation in {}", dir.display()))?;
                print!("{report}");
                let state = rotation_state(&dir)?;
                println!(
                    "{}: {step} step: {} certificate(s) issued or reissued; phase {}; next: {}",
                    dir.display(),
                    report.issued().count(),
                    state.as_ref().map(|s| s.phase.to_string()).unwrap_or_else(|| "none".into()),
                    state.as_ref().map(|s| s.phase.next_step()).unwrap_or("nothing")
                );
                Ok(())
            }
            Some(PkiSub::Revoke(args)) => args.run(&profiles),
            Some(PkiSub::Bench { cluster, runs, dir }) => {
                let cluster = cluster.unwrap_or_else(|| crate::util::project_root().join("clusters/tutorial.toml"));
                let spec = ClusterSpec::load(&cluster)?;
                let report = bench::bench(&spec, &profiles, runs, &dir.unwrap_or_else(bench::default_dir))
                    .with_context(|| format!("cannot benchmark issuing the PKI of {}", cluster.display()))?;
                print!("{report}");
                Ok(())
            }
        }
    }
}
