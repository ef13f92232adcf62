//! What every engine's recovery reads of the members, and how a restore is judged: each
//! member's `endpoint status` and the leader they agree on, a member's revision once it stays
//! put, `endpoint hashkv` equal on all three, the restored keys held to the load's history at
//! one revision (`verify::restored`), and the figures (RTO, writes lost) in the report's
//! timings. In: any engine's running members and their load. Out: values and verdicts for the
//! drills and the disaster scenario of each engine.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::smoke::engine::Members;
use crate::smoke::scenarios::run::Run;
use crate::smoke::verify::restored::{self, Loss, Restored};

/// Bound of the waits for a new leader and for health after a heal.
pub(crate) const SETTLE: Duration = Duration::from_secs(30);

/// The member that leads: its node index, the raft term, its member ID.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Leader {
    pub(crate) index: usize,
    pub(crate) term: u64,
    pub(crate) member: u64,
}

/// What `etcdctl endpoint status` says of one member.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    pub(crate) member: u64,
    pub(crate) leader: u64,
    pub(crate) term: u64,
    pub(crate) db_size: u64,
    pub(crate) revision: i64,
}

impl<E: Members> Run<E> {
    /// Every member's status, asked of each member alone (a cut-off one answers for itself).
    pub(crate) fn statuses(&self, nodes: &[usize]) -> Vec<Option<Status>> {
        nodes
            .iter()
            .map(|i| {
                let out = self.etcdctl(&[*i], &["endpoint", "status", "-w", "json", "--command-timeout=1s"]).ok()?;
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                let s = &v.as_array()?.first()?["Status"];
                Some(Status {
                    member: s["header"]["member_id"].as_u64()?,
                    leader: s["leader"].as_u64()?,
                    term: s["raftTerm"].as_u64()?,
                    db_size: s["dbSize"].as_u64()?,
                    revision: s["header"]["revision"].as_i64()?,
                })
            })
            .collect()
    }

    /// The node that leads now (all answering members agree), with the raft term.
    pub(crate) fn leader(&self) -> Result<Leader> {
        let (found, _) = self.poll("the members agreed on no leader", SETTLE, Duration::from_millis(100), |c| {
            let all = c.statuses(&[0, 1, 2]);
            let leaders: BTreeSet<u64> = all.iter().flatten().map(|s| s.leader).collect();
            let Some(&leader) = leaders.iter().next().filter(|_| leaders.len() == 1 && leader_known(&all)) else {
                return Ok(Err(format!("leaders seen: {leaders:?}")));
            };
            let index = all.iter().position(|s| s.as_ref().is_some_and(|s| s.member == leader));
            let term = all.iter().flatten().map(|s| s.term).max().unwrap_or(0);
            Ok(index
                .map(|index| Leader { index, term, member: leader })
                .ok_or_else(|| "the leader is not one of the three".to_string()))
        })?;
        Ok(found)
    }

    /// Member `i`'s revision once it stays the same for a second (bounded).
    pub(crate) fn stable_revision(&self, i: usize) -> Result<i64> {
        let mut last = None;
        for _ in 0..10 {
            // Without a quorum it has no leader, and `endpoint status` says so (no `leader`).
            let out = self.etcdctl(&[i], &["endpoint", "status", "-w", "json", "--command-timeout=1s"])?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let now = v[0]["Status"]["header"]["revision"].as_i64();
            if now.is_some() && now == last {
                return now.context("no revision");
            }
            last = now;
            std::thread::sleep(Duration::from_secs(1));
        }
        last.with_context(|| format!("{} answered no endpoint status", self.name(i)))
    }

    /// `endpoint hashkv` of the three members at the first one's current revision, equal
    /// (retried while a member has not applied it yet).
    pub(crate) fn hashkv_equal(&self) -> Result<String> {
        let (found, _) =
            self.poll("endpoint hashkv was not equal", Duration::from_secs(15), Duration::from_millis(300), |c| {
                let Some(rev) = c.statuses(&[0]).first().cloned().flatten().map(|s| s.revision) else {
                    return Ok(Err("no revision".into()));
                };
                let out = c.etcdctl(&[0, 1, 2], &["endpoint", "hashkv", &format!("--rev={rev}"), "-w", "json"])?;
                let v: serde_json::Value = match serde_json::from_slice(&out.stdout) {
                    Ok(v) => v,
                    Err(_) => return Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_string())),
                };
                let hashes: Vec<u64> = v
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|h| h["HashKV"]["hash"].as_u64())
                    .collect();
                Ok(match hashes.len() == 3 && hashes.iter().all(|h| *h == hashes[0]) {
                    true => Ok(format!("endpoint hashkv equal on all three at revision {rev} ({:x})", hashes[0])),
                    false => {
                        let said = String::from_utf8_lossy(&out.stderr);
                        let why = said.lines().find(|l| l.contains("rror")).unwrap_or_default().trim().to_string();
                        Err(format!("hashes at {rev}: {hashes:x?} {why}"))
                    }
                })
            })?;
        Ok(found)
    }

    /// [`Run::judge_restore`] of every epoch before `epochs` at revision `r`, one note each
    /// into `notes`; the writes lost over all of them (first and last ack times spanning all).
    pub(crate) fn judge_epochs(&self, epochs: usize, r: i64, notes: &mut Vec<String>) -> Result<Loss> {
        let mut lost = Loss::default();
        for epoch in 0..epochs {
            let loss = self.judge_restore(epoch, r)?;
            notes.push(format!("epoch {epoch}: {}", loss.summary(r)));
            lost.lost += loss.lost;
            lost.first_lost_s = match (lost.first_lost_s, loss.first_lost_s) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            lost.last_lost_s = match (lost.last_lost_s, loss.last_lost_s) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(lost)
    }

    /// The keys of the load's epoch `epoch` as the restored cluster holds them, held to the
    /// store at revision `r` (`verify::restored`).
    pub(crate) fn judge_restore(&self, epoch: usize, r: i64) -> Result<Loss> {
        let (prefix, history) = self
            .load
            .as_ref()
            .and_then(|l| l.epoch_history(epoch))
            .with_context(|| format!("the load has no epoch {epoch}"))?;
        let first = self.load.as_ref().and_then(|l| l.epoch_history(0)).map(|(p, _)| p).unwrap_or_default();
        let keys = self.read_keys(&prefix)?;
        // The first epoch's prefix holds the later ones' (`<prefix>eN/`): not its keys.
        let later = format!("{first}e");
        let keys: BTreeMap<String, Restored> =
            keys.into_iter().filter(|(k, _)| epoch > 0 || !k.starts_with(&later)).collect();
        restored::judge(&history, &keys, r).map_err(|e| anyhow::anyhow!("epoch {epoch} ({prefix}): {e}"))
    }

    /// Every key under `prefix` with its value and `mod_revision`
    /// (`etcdctl get --prefix -w json`).
    pub(crate) fn read_keys(&self, prefix: &str) -> Result<BTreeMap<String, Restored>> {
        let text = self.etcdctl_ok(&[0, 1, 2], &["get", "--prefix", prefix, "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&text).context("etcdctl get printed no JSON")?;
        let decode = |x: &serde_json::Value| -> Result<String> {
            let raw = B64.decode(x.as_str().unwrap_or_default()).context("not base64")?;
            Ok(String::from_utf8_lossy(&raw).into_owned())
        };
        let mut out = BTreeMap::new();
        for kv in v["kvs"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let mod_revision = kv["mod_revision"].as_i64().context("a key without mod_revision")?;
            out.insert(decode(&kv["key"])?, Restored { value: decode(&kv["value"])?, mod_revision });
        }
        Ok(out)
    }

    pub(crate) fn record_rto(&mut self, path: &str, rto: f64, loss: &Loss, failed: u64) {
        self.timings.insert(format!("disaster_{path}_rto_s"), rto);
        self.timings.insert(format!("disaster_{path}_lost_writes"), loss.lost as f64);
        self.timings.insert(format!("disaster_{path}_lost_span_s"), loss.span_s());
        self.timings.insert(format!("disaster_{path}_failed_requests"), failed as f64);
        eprintln!(
            "smoke: disaster: {path} path: RTO {rto:.1} s, {} acknowledged writes lost over {:.1} s, {failed} requests \
             failed during the restore",
            loss.lost,
            loss.span_s()
        );
    }
}

pub(crate) fn leader_known(all: &[Option<Status>]) -> bool {
    all.iter().flatten().all(|s| s.leader != 0)
}
