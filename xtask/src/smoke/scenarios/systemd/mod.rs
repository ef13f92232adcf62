//! `--engine systemd`: for each form, three fresh machines (`engine/hosts.rs`), the basic checks
//! (`basic.rs`) and the day-2 scenarios asked for (`day2.rs`) on the same machines, one report. The upgrade target is checked and acquired before anything boots.
//! In: the options. Out: `report.json` and `report.html`.

mod basic;
mod day2;
mod disaster;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::definition::Definition;
use crate::pki::cluster::ClusterSpec;
use crate::smoke::engine::hosts::{self, Form};
use crate::smoke::local::Interrupt;
use crate::smoke::report::{finish_report, Outcome, Report};
use crate::smoke::scenarios::run::Run;
use crate::smoke::scenarios::{Options, ScenarioName};
use crate::smoke::workload::backup_host::BackupHost;
use crate::smoke::workload::load::Bounds;
use crate::util::{display_rel, source_date_epoch, Arch};

/// The load's bounds on the machines: every scenario of a form runs on the same machines, one
/// load after another.
const LOAD_BOUNDS: Bounds = Bounds { max_requests: 200_000, max_duration: Duration::from_secs(1200) };

/// `--engine systemd`: each form on three fresh machines, the basic checks, one report.
pub fn run(opts: &Options, scenarios: &[ScenarioName]) -> Result<()> {
    let (spec, cluster_path, out, started) =
        (&opts.spec, opts.cluster_path.as_path(), opts.out.as_path(), opts.started);
    // On systemd every scenario runs on the same machines, after the basic checks.
    let asked = scenarios;
    if opts.etcd_version.is_some() {
        bail!("--etcd-version is for --engine run; --engine systemd runs etcd.version of images/etcd.toml");
    }
    hosts::addressing(spec, cluster_path)?;
    preflight_systemd()?;
    let interrupt = Interrupt::install()?;
    let def = Definition::load_default()?;
    let host = Arch::host().context("this machine's architecture has no etcd build")?;
    let acquire = crate::acquire::AcquireOptions { source: opts.source.clone(), ..Default::default() };
    let acquired = crate::acquire::ensure(&def, host, &acquire)?;
    let version = acquired.provenance.version.clone();
    let forms = opts.form.expand();
    let raw = match forms.contains(&Form::Portable) {
        true => {
            let env = def.runtime_env(&version, host)?;
            let built =
                crate::portable::build(&acquired, &out.join("portable-image"), source_date_epoch()?, true, &env)?;
            Some(built.raw.context("the portable build made no .raw")?)
        }
        false => None,
    };
    // The auth scenario upgrades with auth on, unless the upgrade scenario does it after it.
    let upgrade = match asked.iter().any(|s| matches!(s, ScenarioName::Upgrade | ScenarioName::Auth)) {
        true => Some(prepare_upgrade(opts, &def, &version, &forms)?),
        false => None,
    };
    let (mut checks, mut timings, mut reports) = (Vec::new(), BTreeMap::new(), Vec::new());
    let mut result = Ok(());
    for (i, form) in forms.iter().enumerate() {
        let t = Instant::now();
        eprintln!("smoke: systemd machines, form {}", form.as_str());
        // The disaster scenario ships to a backup host of the run's own: the cluster file with
        // a [backup] target on it, its host key made (and pinned) before anything is rendered.
        let backup_dir = out.join(format!("backup-host-{}", form.as_str()));
        let with_backup = match asked.contains(&ScenarioName::Disaster) {
            true => Some(with_backup_host(
                spec,
                cluster_path,
                &backup_dir,
                &out.join(format!("cluster-{}.toml", form.as_str())),
            )?),
            false => None,
        };
        let (spec, cluster_file) = match &with_backup {
            Some((s, f)) => (s, f.as_path()),
            None => (spec, cluster_path),
        };
        let inputs = hosts::Inputs { spec, cluster_file, acquired: &acquired, raw: raw.as_deref(), version: &version };
        let machines = match hosts::Hosts::prepare(
            &inputs,
            *form,
            &out.join(format!("systemd-{}", form.as_str())),
            interrupt.clone(),
        ) {
            Ok(h) => h,
            Err(e) => {
                result = Err(e.context(format!("cannot prepare the {} machines", form.as_str())));
                break;
            }
        };
        let backups = match &with_backup {
            Some(_) => match start_backup_host(&machines, &backup_dir) {
                Ok(b) => Some(b),
                Err(e) => {
                    result = Err(e.context("cannot start the backup host"));
                    break;
                }
            },
            None => None,
        };
        let mut hosts = Run::new(machines, ScenarioName::Basic, format!("{}/basic", form.as_str()));
        let mut r = hosts.basic();
        reports.push(hosts.take_report(t.elapsed().as_secs_f64()));
        // The upgrade last: the other scenarios make fresh machines from the bundles of the
        // release the run started with, which cannot join a cluster already on the next one.
        let mut day2s: Vec<ScenarioName> = asked.iter().copied().filter(|s| *s != ScenarioName::Basic).collect();
        // So is the auth scenario when it upgrades (the upgrade scenario not asked for).
        let auth_upgrades = !asked.contains(&ScenarioName::Upgrade);
        day2s.sort_by_key(|s| match s {
            ScenarioName::Upgrade => 2,
            ScenarioName::Auth if auth_upgrades => 1,
            _ => 0,
        });
        for day2 in &day2s {
            if r.is_err() || hosts.failed() {
                break;
            }
            let t = Instant::now();
            r = match day2 {
                ScenarioName::RotateCerts => hosts.renew(),
                ScenarioName::ReplaceMember => hosts.replace_member(),
                ScenarioName::Auth => hosts.auth(upgrade.as_ref().filter(|_| auth_upgrades)),
                ScenarioName::Disaster => match &backups {
                    Some(b) => hosts.disaster(b),
                    None => Err(anyhow::anyhow!("the backup host was not started")),
                },
                ScenarioName::Upgrade => match &upgrade {
                    Some(u) => hosts.upgrade(u),
                    None => Err(anyhow::anyhow!("the upgrade was not prepared")),
                },
                _ => Ok(()),
            };
            reports.push(hosts.take_report(t.elapsed().as_secs_f64()));
        }
        let seconds = t.elapsed().as_secs_f64();
        timings.extend(hosts.timings.iter().map(|(k, v)| (k.clone(), *v)));
        timings.insert(format!("{}_total", form.as_str()), seconds);
        checks.extend(hosts.checks.iter().cloned());
        if opts.keep && i + 1 == forms.len() {
            hosts.keep();
            hosts.print_how_to_reach();
        }
        drop(hosts);
        if let Err(e) = r {
            result = Err(e);
            break;
        }
    }
    timings.insert("total".into(), started.elapsed().as_secs_f64());
    let mut image = Vec::new();
    if let Some(raw) = &raw {
        image.push(raw.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    }
    if forms.contains(&Form::Host) {
        image.push(format!("host bundles with etcd {version} from {}", display_rel(&acquired.dir)));
    }
    let report = Report {
        image: image.join(", "),
        engine: "systemd".into(),
        kube_play_adaptations: Vec::new(),
        forms: forms.iter().map(|f| f.as_str().to_string()).collect(),
        etcd_version: version,
        cluster: spec.name.clone(),
        passed: checks.iter().filter(|c| c.outcome == Outcome::Pass).count(),
        failed: checks.iter().filter(|c| c.outcome == Outcome::Fail).count(),
        scenarios: reports,
        checks,
        timings,
    };
    finish_report(&report, out, result)
}

/// The cluster file `cluster` with a `[backup]` target on the backup host made in `dir`: the
/// bridge's address in the run's namespace, port 22, the host's storage directory, its host key
/// pinned (made now); the interval and keep of the file's own `[backup]` kept. Written to
/// `to`; each member's directory made on the backup host. Returns the description and the file.
fn with_backup_host(spec: &ClusterSpec, cluster: &Path, dir: &Path, to: &Path) -> Result<(ClusterSpec, PathBuf)> {
    let (_, bridge) = hosts::addressing(spec, cluster)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let host_key = BackupHost::host_key_of(dir)?;
    let storage = BackupHost::storage_of(dir);
    for node in &spec.nodes {
        let d = storage.join(&spec.name).join(&node.name);
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let text = std::fs::read_to_string(cluster).with_context(|| format!("cannot read {}", cluster.display()))?;
    let mut doc: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not TOML", cluster.display()))?;
    let mut backup = match doc.remove("backup") {
        Some(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    backup.insert("target".into(), toml::Value::String(format!("root@{bridge}:{}", storage.display())));
    backup.insert("port".into(), toml::Value::Integer(22));
    backup.insert("host_key".into(), toml::Value::String(host_key));
    doc.insert("backup".into(), toml::Value::Table(backup));
    let text = toml::to_string(&doc).context("cannot write the cluster file with its backup host")?;
    crate::util::write_atomic(to, text.as_bytes(), 0o644)?;
    let spec = ClusterSpec::load(to)?;
    Ok((spec, to.to_path_buf()))
}

/// The backup host of `with_backup_host`, started in the machines' namespace on the bridge's
/// address with the `authorized_keys` render wrote for it.
fn start_backup_host(hosts: &hosts::Hosts, dir: &Path) -> Result<BackupHost> {
    let keys_file = hosts.render.join(crate::render::BACKUP_HOST_KEYS);
    let keys = std::fs::read_to_string(&keys_file).with_context(|| format!("cannot read {}", keys_file.display()))?;
    let (_, bridge) = hosts::addressing(&hosts.spec, &hosts.cluster_file)?;
    BackupHost::start_with_keys(dir, bridge.into(), Some(22), Some(&hosts.netns.path()), &keys)
}

/// The systemd machines' upgrade target: checked against the upgrade policy, its binaries
/// acquired and (portable form) its image built, before any machine boots.
fn prepare_upgrade(opts: &Options, def: &Definition, from: &str, forms: &[Form]) -> Result<day2::UpgradeTarget> {
    let out = opts.out.as_path();
    let to = match &opts.upgrade_to {
        Some(v) => v.clone(),
        None => crate::upgrade::target(def)?,
    };
    crate::upgrade::check_upgrade(def, from, &to)
        .with_context(|| format!("the upgrade scenario cannot upgrade etcd {from} to {to}"))?;
    let host = Arch::host().context("this machine's architecture has no etcd build")?;
    let acquire = crate::acquire::AcquireOptions { version: Some(to.clone()), ..Default::default() };
    let acquired = crate::acquire::ensure(def, host, &acquire).with_context(|| format!("cannot acquire etcd {to}"))?;
    if acquired.provenance.version != to {
        bail!("etcd {to} was asked for the upgrade, {} was acquired", acquired.provenance.version);
    }
    let raw = match forms.contains(&Form::Portable) {
        true => {
            let env = def.runtime_env(&to, host)?;
            let dir = out.join(format!("portable-image-{to}"));
            let built = crate::portable::build(&acquired, &dir, source_date_epoch()?, true, &env)?;
            Some(built.raw.context("the portable build made no .raw")?)
        }
        false => None,
    };
    Ok(day2::UpgradeTarget { from: from.to_string(), to, acquired_dir: acquired.dir.clone(), raw })
}

/// What `--engine systemd` needs of this host; the error says what is missing and how to get it.
fn preflight_systemd() -> Result<()> {
    if !crate::util::is_root() {
        bail!("--engine systemd boots machines with systemd-nspawn, makes a network namespace and mounts overlays: run it as root");
    }
    for (tool, package) in [
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
        ("curl", "curl"),
        ("timeout", "coreutils"),
    ] {
        if !crate::util::on_path(tool) {
            bail!("--engine systemd needs {tool}: apt-get install {package} (or `cargo xtask ci --deps-only` as root)");
        }
    }
    Ok(())
}
