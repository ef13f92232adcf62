//! The scenarios on podman: each on a fresh cluster of three containers (`podman run`, every
//! scenario) or of the static pods played with `podman kube play` (the basic one), one after
//! another, then one report. In: the options. Out: `report.json` and `report.html`; nothing
//! left running unless `--keep`.

mod basic;
mod day2;
mod disaster;
mod drills;
mod http_tls;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::definition::Definition;
use crate::image::{self, BuildArgs};
use crate::smoke::engine::cluster::Cluster;
use crate::smoke::engine::kube;
use crate::smoke::engine::podman::Resources;
use crate::smoke::engine::Engine;
use crate::smoke::local::Interrupt;
use crate::smoke::report::{finish_report, Outcome, Report};
use crate::smoke::scenarios::run::Run;
use crate::smoke::scenarios::{Options, ScenarioName};
use crate::util::Arch;

/// Every scenario asked for, each on a fresh cluster, and the report.
pub fn run(opts: &Options, scenarios: &[ScenarioName]) -> Result<()> {
    preflight()?;
    if opts.engine == Engine::Kube && !crate::util::on_path("catatonit") {
        bail!(
            "--engine kube: podman's pods need catatonit (their pause process), which is not installed: \
             apt-get install catatonit"
        );
    }
    let interrupt = Interrupt::install()?;
    Resources::remove_leftovers(&opts.spec.name)?;

    // The image, built (or found up to date) and loaded.
    let def = Definition::load_default()?;
    let host = Arch::host().context("this machine's architecture has no etcd build")?;
    let args = BuildArgs {
        arches: vec![host],
        all_arches: false,
        out: None,
        load: false,
        source: opts.source.clone(),
        etcd_dir: Vec::new(),
        force: false,
        version: opts.etcd_version.clone(),
    };
    let built = image::build_images(&def, &args)?;
    let built = built.first().context("the image stage built nothing")?;
    let tag = image::podman::load(&built.archive)?;
    let spec_img = def.image.as_ref().context("the image definition has no [image] section")?;
    let (uid, gid) = spec_img.run_as_ids()?;
    let etcd_version = built.stamp.reference.rsplit(':').next().unwrap_or_default().to_string();
    eprintln!("smoke: image {tag} (etcd runs as {uid}:{gid})");

    // The upgrade is checked and its image built before anything is started.
    // The auth scenario upgrades too, with auth on.
    let upgrade = match scenarios.iter().any(|s| matches!(s, ScenarioName::Upgrade | ScenarioName::Auth)) {
        true => Some(day2::prepare_upgrade(&def, &etcd_version, opts.upgrade_to.as_deref())?),
        false => None,
    };

    let mut checks = Vec::new();
    let mut timings = BTreeMap::new();
    let mut reports = Vec::new();
    let mut result = Ok(());
    for (i, name) in scenarios.iter().enumerate() {
        let t = Instant::now();
        let keep = opts.keep && i + 1 == scenarios.len();
        let dir = opts.out.join(name.as_str());
        eprintln!("smoke: scenario {}", name.as_str());
        let mut cluster = Cluster::prepare(&opts.spec, &dir, &tag, &etcd_version, uid, gid, keep, interrupt.clone())?;
        if opts.engine == Engine::Kube {
            cluster.render_static_pods(&opts.cluster_path, &format!("{tag}@{}", built.stamp.digest))?;
        }
        let mut run = Run::new(cluster, *name, name.as_str().to_string());
        let r = match name {
            ScenarioName::Basic => run.basic(),
            ScenarioName::RotateCerts => run.rotate_certs(),
            ScenarioName::ReplaceMember => run.replace_member(),
            ScenarioName::Upgrade => match &upgrade {
                Some(u) => run.upgrade(u),
                None => Err(anyhow::anyhow!("the upgrade was not prepared")),
            },
            ScenarioName::HttpToTls => run.http_to_tls(),
            ScenarioName::Drills => run.drills(),
            ScenarioName::Disaster => run.disaster(),
            ScenarioName::Auth => match &upgrade {
                Some(u) => run.auth(&opts.cluster_path, u),
                None => Err(anyhow::anyhow!("the upgrade was not prepared")),
            },
            ScenarioName::Soak => match &opts.soak {
                Some(plan) => run.soak_run(plan),
                None => Err(anyhow::anyhow!("the soak was not planned")),
            },
            ScenarioName::All => Ok(()),
        };
        // A scenario that ended in an error (Ctrl-C among them) leaves its load unjudged.
        if r.is_ok() {
            run.finish_podman_load();
        }
        if run.failed() {
            run.record_logs();
        }
        let seconds = t.elapsed().as_secs_f64();
        timings.extend(run.timings.iter().map(|(k, v)| (k.clone(), *v)));
        timings.insert(format!("{}_total", name.as_str()), seconds);
        checks.extend(run.checks.iter().cloned());
        reports.push(run.take_report(seconds));
        if keep {
            run.print_how_to_reach();
        }
        drop(run);
        if let Err(e) = r {
            result = Err(e);
            break;
        }
    }
    timings.insert("total".into(), opts.started.elapsed().as_secs_f64());
    let report = Report {
        image: tag.clone(),
        engine: format!("{:?}", opts.engine).to_lowercase(),
        kube_play_adaptations: match opts.engine {
            Engine::Kube => kube::ADAPTATIONS.iter().map(|s| s.to_string()).collect(),
            Engine::Run | Engine::Systemd => Vec::new(),
        },
        forms: Vec::new(),
        etcd_version,
        cluster: opts.spec.name.clone(),
        passed: checks.iter().filter(|c| c.outcome == Outcome::Pass).count(),
        failed: checks.iter().filter(|c| c.outcome == Outcome::Fail).count(),
        scenarios: reports,
        checks,
        timings,
    };
    finish_report(&report, &opts.out, result)
}

fn preflight() -> Result<()> {
    for tool in ["podman", "curl"] {
        if !crate::util::on_path(tool) {
            bail!("the smoke test needs {tool}: install it (apt-get install {tool}) or run `cargo xtask ci --deps-only` as root");
        }
    }
    if !crate::util::is_root() {
        bail!("the smoke test runs rootful podman containers with static IPs and must run as root");
    }
    Ok(())
}
