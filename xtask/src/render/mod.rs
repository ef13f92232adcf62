//! Node configuration and per-node host bundles: `cargo xtask render --cluster FILE`.
//! In: a cluster description (`clusters/*.toml`, with its tuning choice), its PKI (issued or
//! brought up to date on the way, like `cargo xtask pki`), the unit templates and tuning
//! presets in `systemd/`, SOURCE_DATE_EPOCH. Out: `target/render/<cluster>/`, staged whole and
//! renamed into place (layout in [`Render`]).
//!
//! Modules: `config` (every etcd flag, as `ETCD_*` variables), `tuning` (the presets),
//! `template` (reading and filling `systemd/`), `host` (the per-node trees and tarballs),
//! `monitoring` (Prometheus rules).

pub mod config;
pub mod host;
pub mod monitoring;
pub mod template;
pub mod tuning;

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::definition::Definition;
use crate::pki::cluster::ClusterSpec;
use crate::pki::issue::issue;
use crate::pki::layout::PkiLayout;
use crate::pki::Profiles;
use crate::util::{display_rel, source_date_epoch, target_dir, Arch, StagingDir};
use config::PkiFacts;
use host::{pick_client, render_node, write_node, ClusterInputs};
use tuning::Presets;

/// Render per-node host bundles: the files etcd needs on each member, laid out as they land
/// on the host, and a tarball of each.
///
/// The PKI is issued first when missing, or brought up to date (like `cargo xtask pki`: kept
/// where it matches). Output, per node, in OUT (default target/render/<cluster>/):
///   <node>/                 etc/etcd/etcd.conf (ETCD_* + tuning), etc/etcd/pki/, etc/etcd/etcdctl.env
///                           and etc/etcd/etcdctl/ (operator's client certificate),
///                           etc/systemd/system/etcd.service, etcd-backup.{service,timer}
///                           (a checked snapshot every [backup] interval at its own time),
///                           etcd-backup-ship.service and usr/local/lib/etcd/etcd-backup-ship
///                           (keeps and ships it with rsync over ssh), etc/etcd/backup/ (the
///                           node's ssh key, the backup host's pinned key),
///                           etcd-defrag.{service,timer} (this member only, at its own time),
///                           usr/lib/sysusers.d/etcd.conf, usr/lib/tmpfiles.d/etcd.conf
///   <node>.tar              that tree, owned by root, to unpack at / on the host
///   <node>.portable/, .tar  the host side of the portable service (`cargo xtask portable`)
///   <node>.INSTALL.md       the steps on the host
///   monitoring/             etcd-rules.yml: Prometheus alerting and recording rules; with the
///                           description's [monitoring]: prometheus.yml (scrape jobs),
///                           blackbox.yml (TLS probes) and etcd-<cluster>/ (the scrape client's
///                           certificate) (docs/monitoring.md)
///   backup-host/            with a [backup] target: authorized_keys for the backup host
///                           (each member's key, confined to its directory by rrsync)
#[derive(Debug, clap::Args)]
#[command(long_about, verbatim_doc_comment)]
pub struct Render {
    #[command(flatten)]
    pub input: ClusterArgs,
    /// Output directory [default: target/render/<cluster name>/]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Client identity whose certificate etcdctl and the backup use [default: etcdctl, or the
    /// first client of the description]
    #[arg(long, value_name = "ID")]
    pub client: Option<String>,
    /// The step of switching a running plain-http cluster to mutual TLS whose etcd.conf to write
    /// (docs/day-2.md: "Switch a plain-http cluster to mutual TLS"): plain (http only, no
    /// certificates), clients (clients on http and https, peers on http with their
    /// certificates), peers (as clients, this node's peers on https), tls (mutual TLS only)
    #[arg(long, value_enum, value_name = "STAGE", default_value = "tls")]
    pub tls_stage: config::TlsStage,
}

impl Render {
    pub fn run(self) -> Result<()> {
        let out = render(&self)?;
        println!("{}: bundles written; see <node>.INSTALL.md", display_rel(&out));
        Ok(())
    }
}

/// What every stage that renders a cluster's configuration (`render`, `k8s`) starts from: the
/// definition, the target architecture and etcd version, the described cluster, its tuning
/// preset, its PKI (issued or brought up to date) and the PKI's facts.
pub struct Prepared {
    pub def: Definition,
    pub arch: Arch,
    pub version: String,
    pub runtime_env: std::collections::BTreeMap<String, String>,
    pub described: crate::pki::cluster::DescribedCluster,
    /// The chosen preset and its name.
    pub tuning: Option<(String, tuning::Preset)>,
    pub pki: PkiLayout,
    pub facts: PkiFacts,
}

impl Prepared {
    pub fn spec(&self) -> &ClusterSpec {
        &self.described.spec
    }

    pub fn tuning(&self) -> Option<(&str, &tuning::Preset)> {
        self.tuning.as_ref().map(|(n, p)| (n.as_str(), p))
    }
}

/// What every command that renders a cluster's configuration (`render`, `k8s`) is given.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Cluster description (TOML), e.g. clusters/tutorial.toml
    #[arg(long, value_name = "FILE")]
    pub cluster: PathBuf,
    /// PKI directory to use (issued or updated there) [default: target/pki/<cluster name>/]
    #[arg(long, value_name = "DIR")]
    pub pki: Option<PathBuf>,
    /// Tuning presets [default: systemd/tuning.toml]
    #[arg(long, value_name = "FILE")]
    pub tuning_presets: Option<PathBuf>,
    /// Architecture of the nodes: etcd versions that do not support it get ETCD_UNSUPPORTED_ARCH
    /// (etcd.supported_arches of images/etcd.toml) [default: this machine's]
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<Arch>,
    /// etcd version the nodes run [default: etcd.version of images/etcd.toml]
    #[arg(long, value_name = "V")]
    pub etcd_version: Option<String>,
}

/// Loads and checks everything a cluster's rendering needs, issuing its PKI on the way.
pub fn prepare(args: &ClusterArgs) -> Result<Prepared> {
    let cluster = args.cluster.as_path();
    let def = Definition::load_default()?;
    let arch = match args.arch {
        Some(a) => a,
        None => Arch::host().context("this machine's architecture has no etcd build: pass --arch")?,
    };
    let version = args.etcd_version.clone().unwrap_or_else(|| def.etcd.version.clone());
    let runtime_env = def.runtime_env(&version, arch).context("--etcd-version / --arch")?;
    let described = ClusterSpec::load_described(cluster)?;
    let spec = &described.spec;
    for w in spec.warnings() {
        eprintln!("warning: {}: {w}", cluster.display());
    }
    let presets_path = args.tuning_presets.clone().unwrap_or_else(Presets::default_path);
    let presets = Presets::load(&presets_path)?;
    let tuning = match &described.tuning {
        Some(name) => Some((name.clone(), presets.get(name, cluster)?.clone())),
        None => None,
    };
    let pki = args.pki.clone().map(PkiLayout::new).unwrap_or_else(|| PkiLayout::default_for(spec));
    let profiles = Profiles::load(&Profiles::default_path())?;
    let report = issue(spec, &profiles, &pki.root, false)
        .with_context(|| format!("cannot issue the PKI of {} into {}", cluster.display(), pki.root.display()))?;
    let issued = report.issued().count();
    if issued > 0 {
        eprintln!("pki {}: {issued} certificate(s) issued", display_rel(&pki.root));
    }
    let facts = PkiFacts::read(&pki.root)?;
    Ok(Prepared { def, arch, version, runtime_env, described, tuning, pki, facts })
}

/// Renders every node of `args.input.cluster`; returns the output directory.
pub fn render(args: &Render) -> Result<PathBuf> {
    let prepared = prepare(&args.input)?;
    let spec = prepared.spec();
    let client = pick_client(spec, args.client.as_deref(), &args.input.cluster)?;
    let (pki, facts, version, runtime_env) = (&prepared.pki, &prepared.facts, &prepared.version, &prepared.runtime_env);
    let tuning = prepared.tuning();

    let out = args.out.clone().unwrap_or_else(|| default_out(spec));
    let epoch = source_date_epoch()?;
    let staged = StagingDir::private_beside(&out)?;
    let inputs = ClusterInputs {
        spec,
        tuning,
        pki,
        facts,
        client,
        runtime_env,
        etcd_version: version,
        tls_stage: args.tls_stage,
    };
    for node in &spec.nodes {
        let bundle = render_node(&inputs, node).with_context(|| format!("cannot render node {}", node.name))?;
        write_node(&bundle, staged.path(), epoch)?;
        println!("{}: {}", node.name, display_rel(&out.join(&node.name)));
    }
    monitoring::write(staged.path(), spec, &inputs.pki.root)?;
    println!("monitoring: {}", display_rel(&out.join(monitoring::DIR)));
    if let Some(keys) = host::backup_authorized_keys(spec, pki)? {
        crate::util::write_atomic(&staged.path().join(BACKUP_HOST_KEYS), keys.as_bytes(), 0o644)?;
        println!("backup host: {}", display_rel(&out.join(BACKUP_HOST_KEYS)));
    }
    staged.commit(&out)?;
    Ok(out)
}

/// The backup host's `authorized_keys` under the output, with a `[backup]` target.
pub const BACKUP_HOST_KEYS: &str = "backup-host/authorized_keys";

/// The default output directory of a cluster's bundles.
pub fn default_out(spec: &ClusterSpec) -> PathBuf {
    target_dir().join("render").join(&spec.name)
}
