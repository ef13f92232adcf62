//! `--scenario soak`: minutes of faults drawn from a seed (`faults/plan.rs`) under the client
//! load, written once over `Members`. Each fault is applied when its time comes, held, healed;
//! then all three members must be healthy and `endpoint hashkv` equal before the next. Each
//! fault's window is a phase of the load named after it; the profile says in which windows a
//! request may fail (`quorum-safe`: none at all). The history of the whole run is judged at the
//! end, as in every scenario. In: running members, their load, the schedule. Out: the checks
//! and the figures (faults by kind, elections, failures inside and outside quorum-breaking
//! windows) in the report's timings.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::recovery::SETTLE;
use super::NO_QUORUM;
use crate::smoke::engine::Members;
use crate::smoke::faults::plan::{Fault, Kind, Profile, Target};
use crate::smoke::scenarios::run::Run;

/// A soak to run: its seed (printed at the start and in the report), length and schedule. Kept
/// as `soak.json` in the scenario's directory, beside the members' logs and (when a check
/// failed) the history: `--replay DIR` runs the same schedule again from it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoakPlan {
    pub seed: u64,
    pub duration_s: f64,
    pub profile: Profile,
    pub faults: Vec<Fault>,
    /// The etcd release it ran on (written by the run; none in a plan not yet run).
    #[serde(default)]
    pub etcd_version: Option<String>,
}

/// The file of a soak's plan in its directory.
pub const PLAN_FILE: &str = "soak.json";

impl SoakPlan {
    /// The plan kept in `dir` (a soak's directory, or the `soak.json` in it), for `--replay`.
    pub fn load(dir: &std::path::Path) -> Result<SoakPlan> {
        let file = if dir.is_dir() { dir.join(PLAN_FILE) } else { dir.to_path_buf() };
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "--replay {}: cannot read {}: give the directory of a soak's run (it holds {PLAN_FILE})",
                dir.display(),
                file.display()
            )
        })?;
        let plan: SoakPlan = serde_json::from_str(&text).with_context(|| {
            format!("{}: not a soak plan ({{seed, duration_s, profile, faults, etcd_version}})", file.display())
        })?;
        if plan.faults.is_empty() {
            bail!("{}: field faults is empty: nothing to replay", file.display());
        }
        for (n, f) in plan.faults.iter().enumerate() {
            let fits = match f.kind {
                Kind::OneWayLoss => (1..=100).contains(&f.level),
                Kind::PeerDelay | Kind::SlowDisk => f.level >= 1,
                _ => true,
            };
            if f.kind.breaks_quorum() && plan.profile == Profile::QuorumSafe {
                bail!(
                    "{}: faults[{n}] is a {} in a quorum-safe plan: set profile to \"any\", or remove the fault",
                    file.display(),
                    f.kind.as_str()
                );
            }
            if !fits || !(0.0..=plan.duration_s).contains(&f.at_s) || f.hold_s < 0.0 {
                bail!(
                    "{}: faults[{n}] ({} at {} s, hold {} s, level {}) cannot run: its time must lie within duration_s, its \
                     hold be positive, and its level be 1-100 (% lost) or at least 1 (ms of delay, writes a second)",
                    file.display(),
                    f.kind.as_str(),
                    f.at_s,
                    f.hold_s,
                    f.level
                );
            }
        }
        Ok(plan)
    }
}

/// The load's phase between faults.
const QUIET: &str = "quiet";

impl<E: Members> Run<E> {
    /// Runs the schedule with the cluster healthy and the load running.
    pub(crate) fn soak(&mut self, plan: &SoakPlan, etcd_version: &str) -> Result<()> {
        let kept = SoakPlan { etcd_version: Some(etcd_version.to_string()), ..plan.clone() };
        let json = serde_json::to_vec_pretty(&kept).context("cannot write the soak's plan as JSON")?;
        crate::util::write_atomic(&self.out().join(PLAN_FILE), &json, 0o644)?;
        let text = crate::smoke::faults::plan::render(plan.seed, plan.duration_s, plan.profile, &plan.faults);
        crate::util::write_atomic(&self.out().join("plan.txt"), text.as_bytes(), 0o644)?;
        eprintln!(
            "smoke: soak: seed {}, {:.0} s, {} faults on etcd {etcd_version} (replay: --replay {})",
            plan.seed,
            plan.duration_s,
            plan.faults.len(),
            self.out().display()
        );
        self.timings.insert("soak_seed".into(), plan.seed as f64);
        let started = Instant::now();
        let term_before = self.leader()?.term;
        let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
        let mut outcome = Ok(());
        self.phase(QUIET);
        let mut n = 0;
        while n < plan.faults.len() {
            let f = &plan.faults[n];
            // A fault held within this one, on its member (the schedule says so).
            let inner = plan.faults.get(n + 1).filter(|g| g.within_previous);
            let wait = f.at_s - started.elapsed().as_secs_f64();
            if wait > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(wait));
            }
            if let Err(e) = self.apply(n, f, inner) {
                let what = format!("{} {} at {:.1} s", f.kind.as_str(), f.target.as_str(), f.at_s);
                outcome = Err(e.context(format!(
                    "fault {n} ({what}) of seed {} (again: cargo xtask smoke --replay {} --out OTHER_DIR)",
                    plan.seed,
                    self.out().display()
                )));
                break;
            }
            for g in std::iter::once(f).chain(inner) {
                *by_kind.entry(g.kind.as_str()).or_default() += 1;
            }
            n += 1 + usize::from(inner.is_some());
        }
        let rest = plan.duration_s - started.elapsed().as_secs_f64();
        if outcome.is_ok() && rest > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(rest));
        }
        // A load that ran out of its bounds leaves the rest of the soak unobserved: a failure.
        if let (Ok(()), Some(load)) = (&outcome, &self.load) {
            let (before, _) = load.totals();
            std::thread::sleep(Duration::from_secs(2));
            let (after, _) = load.totals();
            if after == before {
                outcome = Err(anyhow::anyhow!(
                    "the client load made no request in the soak's last 2 s ({before} in all): it stopped before the \
                     soak ended, so the soak's end went unobserved"
                ));
            }
        }
        let elections = self.leader().map(|l| l.term.saturating_sub(term_before)).unwrap_or(0);
        for (k, v) in &by_kind {
            self.timings.insert(format!("soak_faults_{}", k.replace('-', "_")), *v as f64);
        }
        self.timings.insert("soak_elections".into(), elections as f64);
        let kinds: Vec<String> = by_kind.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let r = outcome.map(|_| {
            format!(
                "seed {}: {} faults applied and healed ({}; {} of them within another, on its member), all three \
                 healthy and hashkv equal after each; {elections} elections; {:.0} s",
                plan.seed,
                by_kind.values().sum::<usize>(),
                kinds.join(", "),
                plan.faults.iter().filter(|f| f.within_previous).count(),
                started.elapsed().as_secs_f64()
            )
        });
        self.record(
            "soak: every fault of the seed's schedule applied, healed, the members equal after each",
            started,
            r,
        );
        Ok(())
    }

    /// Applies fault `n` (and `inner`, held within it on the same member), holds it, heals it,
    /// waits for 3/3 healthy and equal hashes; what was done, in words.
    fn apply(&mut self, n: usize, f: &Fault, inner: Option<&Fault>) -> Result<String> {
        let statuses = self.statuses(&[0, 1, 2]);
        let leader = self.leader()?;
        let follower = (leader.index + 1) % 3;
        let other = (leader.index + 2) % 3;
        let i = match f.target {
            Target::Leader => leader.index,
            _ => follower,
        };
        let name = self.name(i).to_string();
        let hold = Duration::from_secs_f64(f.hold_s);
        let window = |g: &Fault, k: usize| match g.kind.breaks_quorum() {
            true => NO_QUORUM.to_string(),
            false => format!("fault {k}: {} {} {name}", g.kind.as_str(), g.target.as_str()),
        };
        self.phase(&window(f, n));
        let what = match f.kind {
            Kind::LeaderTransfer => {
                let to = statuses
                    .get(follower)
                    .and_then(|s| s.as_ref())
                    .map(|s| s.member)
                    .context("no status of the follower to move the leadership to")?;
                self.etcdctl_ok(&[leader.index], &["move-leader", &format!("{to:x}")])?;
                format!("leadership moved from {name} to {}", self.name(follower))
            }
            Kind::CompactDefrag => {
                let upto = self.load.as_ref().and_then(|l| l.watched().into_iter().min().flatten());
                let compacted = match upto {
                    Some(rev) if rev > 1 => {
                        let out = self.etcdctl(&[0, 1, 2], &["compact", &rev.to_string()])?;
                        let err = String::from_utf8_lossy(&out.stderr);
                        if !out.status.success() && !err.contains("has been compacted") {
                            bail!("compact {rev}: {}", err.trim());
                        }
                        format!("compacted to {rev}")
                    }
                    _ => "nothing to compact yet".into(),
                };
                for m in 0..3 {
                    self.etcdctl_ok(&[m], &["defrag", "--command-timeout=30s"])?;
                }
                format!("{compacted}, each member defragmented")
            }
            Kind::PeerDelay => {
                let seen = self.delay_peers(i, f.level.into(), hold)?;
                format!("{name}'s peer traffic held {} ms for {:.1} s ({seen})", f.level, f.hold_s)
            }
            Kind::OneWayLoss => {
                self.lose_packets(leader.index, follower, &format!("{:.2}", f.level as f64 / 100.0))?;
                std::thread::sleep(hold);
                self.heal(follower)?;
                format!("{}% of {name}'s packets to {} dropped {:.1} s", f.level, self.name(follower), f.hold_s)
            }
            Kind::QuorumLoss => {
                let two = [follower, other];
                for m in two {
                    self.stop(m)?;
                }
                std::thread::sleep(hold);
                self.start_many(&two)?;
                format!("{} and {} stopped {:.1} s", self.name(follower), self.name(other), f.hold_s)
            }
            Kind::Partition | Kind::Pause | Kind::Kill | Kind::SlowDisk => {
                let t = Instant::now();
                self.begin(f, i)?;
                let mut nested = String::new();
                if let Some(g) = inner {
                    std::thread::sleep(Duration::from_secs_f64((g.at_s - f.at_s).max(0.0)));
                    self.phase(&window(g, n + 1));
                    self.begin(g, i)?;
                    std::thread::sleep(Duration::from_secs_f64(g.hold_s));
                    self.end(g, i)?;
                    self.phase(&window(f, n));
                    nested = format!(", and within it {} {:.1} s", describe(g), g.hold_s);
                }
                std::thread::sleep(hold.saturating_sub(t.elapsed()));
                self.end(f, i)?;
                format!("{name} {} {:.1} s{nested}", describe(f), f.hold_s)
            }
        };
        self.phase(QUIET);
        self.wait_healthy(&[0, 1, 2], SETTLE).with_context(|| format!("after {what}"))?;
        self.hashkv_equal().with_context(|| format!("after {what}"))?;
        Ok(what)
    }

    /// Puts member `i` in fault `f` (a kind that lasts until [`Run::end`]).
    fn begin(&mut self, f: &Fault, i: usize) -> Result<()> {
        match f.kind {
            Kind::Partition => self.cut_off(i),
            Kind::Pause => self.pause(i),
            Kind::Kill => self.kill(i),
            Kind::SlowDisk => self.throttle_disk(i, Some(f.level)),
            other => bail!("{} is not held on one member", other.as_str()),
        }
    }

    /// Ends fault `f` on member `i`.
    fn end(&mut self, f: &Fault, i: usize) -> Result<()> {
        match f.kind {
            Kind::Partition => self.heal(i),
            Kind::Pause => self.resume(i),
            Kind::Kill => self.start(i),
            Kind::SlowDisk => self.throttle_disk(i, None),
            other => bail!("{} is not held on one member", other.as_str()),
        }
    }
}

/// What a fault held on one member does to it, in words.
fn describe(f: &Fault) -> String {
    match f.kind {
        Kind::Partition => "cut off".into(),
        Kind::Pause => "paused".into(),
        Kind::Kill => "killed, started again after".into(),
        Kind::SlowDisk => format!("with its disk held to {} writes/s", f.level),
        other => other.as_str().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smoke::faults::plan::plan;

    #[test]
    fn a_kept_plan_is_read_back_and_a_broken_one_is_refused_naming_the_fault() {
        let dir = tempfile::tempdir().unwrap();
        let faults = plan(42, 120.0, Profile::QuorumSafe);
        let kept = SoakPlan {
            seed: 42,
            duration_s: 120.0,
            profile: Profile::QuorumSafe,
            faults,
            etcd_version: Some("3.4.9".into()),
        };
        std::fs::write(dir.path().join(PLAN_FILE), serde_json::to_vec(&kept).unwrap()).unwrap();
        let back = SoakPlan::load(dir.path()).unwrap();
        assert_eq!(
            (back.seed, back.faults.len(), back.etcd_version.as_deref()),
            (42, kept.faults.len(), Some("3.4.9"))
        );

        let mut broken = kept.clone();
        let n = broken.faults.iter().position(|f| f.kind == Kind::SlowDisk).unwrap_or(0);
        broken.faults[n] = Fault { kind: Kind::SlowDisk, level: 0, ..broken.faults[n].clone() };
        std::fs::write(dir.path().join(PLAN_FILE), serde_json::to_vec(&broken).unwrap()).unwrap();
        let err = format!("{:#}", SoakPlan::load(dir.path()).unwrap_err());
        assert!(err.contains(&format!("faults[{n}]")) && err.contains("slow-disk") && err.contains("level 0"), "{err}");

        let err = format!("{:#}", SoakPlan::load(&dir.path().join("nothing")).unwrap_err());
        assert!(err.contains("give the directory of a soak's run"), "{err}");
        std::fs::write(dir.path().join(PLAN_FILE), "{\"seed\": 1}").unwrap();
        let err = format!("{:#}", SoakPlan::load(dir.path()).unwrap_err());
        assert!(err.contains("not a soak plan"), "{err}");
    }
}
