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

/// A soak to run: its seed (printed at the start and in the report), length and schedule.
#[derive(Debug, Clone)]
pub struct SoakPlan {
    pub seed: u64,
    pub duration_s: f64,
    pub profile: Profile,
    pub faults: Vec<Fault>,
}

/// The load's phase between faults.
const QUIET: &str = "quiet";

impl<E: Members> Run<E> {
    /// Runs the schedule with the cluster healthy and the load running.
    pub(crate) fn soak(&mut self, plan: &SoakPlan) -> Result<()> {
        eprintln!(
            "smoke: soak: seed {}, {:.0} s, {} faults (replay: --scenario soak --seed {} --duration {:.0}s)",
            plan.seed,
            plan.duration_s,
            plan.faults.len(),
            plan.seed,
            plan.duration_s
        );
        self.timings.insert("soak_seed".into(), plan.seed as f64);
        let started = Instant::now();
        let term_before = self.leader()?.term;
        let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
        let t = Instant::now();
        let mut applied = Vec::new();
        let mut outcome = Ok(());
        self.phase(QUIET);
        for (n, f) in plan.faults.iter().enumerate() {
            let wait = f.at_s - started.elapsed().as_secs_f64();
            if wait > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(wait));
            }
            match self.apply(n, f) {
                Ok(what) => {
                    *by_kind.entry(f.kind.as_str()).or_default() += 1;
                    applied.push(what);
                }
                Err(e) => {
                    let what = format!("{} {} at {:.1} s", f.kind.as_str(), f.target.as_str(), f.at_s);
                    outcome = Err(e.context(format!("fault {n} ({what}) of seed {}", plan.seed)));
                    break;
                }
            }
        }
        let rest = plan.duration_s - started.elapsed().as_secs_f64();
        if outcome.is_ok() && rest > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(rest));
        }
        let elections = self.leader().map(|l| l.term.saturating_sub(term_before)).unwrap_or(0);
        for (k, v) in &by_kind {
            self.timings.insert(format!("soak_faults_{}", k.replace('-', "_")), *v as f64);
        }
        self.timings.insert("soak_elections".into(), elections as f64);
        let kinds: Vec<String> = by_kind.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let r = outcome.map(|_| {
            format!(
                "seed {}: {} faults applied and healed ({}), all three healthy and hashkv equal after each; {elections} \
                 elections; {:.0} s",
                plan.seed,
                applied.len(),
                kinds.join(", "),
                started.elapsed().as_secs_f64()
            )
        });
        self.record("soak: every fault of the seed's schedule applied, healed, the members equal after each", t, r);
        Ok(())
    }

    /// Applies fault `n`, holds it, heals it, waits for 3/3 healthy and equal hashes; what was
    /// done, in words.
    fn apply(&mut self, n: usize, f: &Fault) -> Result<String> {
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
        let window = if f.kind.breaks_quorum() {
            NO_QUORUM.to_string()
        } else {
            format!("fault {n}: {} {} {name}", f.kind.as_str(), f.target.as_str())
        };
        self.phase(&window);
        let what = match f.kind {
            Kind::Partition => {
                self.cut_off(i)?;
                std::thread::sleep(hold);
                self.heal(i)?;
                format!("{name} cut off {:.1} s", f.hold_s)
            }
            Kind::Pause => {
                self.pause(i)?;
                std::thread::sleep(hold);
                self.resume(i)?;
                format!("{name} paused {:.1} s", f.hold_s)
            }
            Kind::Kill => {
                self.kill(i)?;
                std::thread::sleep(hold);
                self.start(i)?;
                format!("{name} killed, started after {:.1} s", f.hold_s)
            }
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
            Kind::QuorumLoss => {
                let two = [follower, other];
                for m in two {
                    self.stop(m)?;
                }
                std::thread::sleep(hold);
                self.start_many(&two)?;
                format!("{} and {} stopped {:.1} s", self.name(follower), self.name(other), f.hold_s)
            }
        };
        self.phase(QUIET);
        self.wait_healthy(&[0, 1, 2], SETTLE).with_context(|| format!("after {what}"))?;
        self.hashkv_equal().with_context(|| format!("after {what}"))?;
        Ok(what)
    }
}
