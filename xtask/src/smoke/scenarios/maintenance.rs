//! Compaction and defragmentation, under the client load, written once over [`Members`]: the
//! routine a standalone cluster needs to stay below its quota. In: a [`Run`] of any engine with
//! its load running, and how the engine defragments one member (podman: etcdctl against that
//! member alone, as its timer's service does; systemd: the rendered `etcd-defrag.service`).
//! Out: the check's reason (the policy etcd started with, the database sizes before and after
//! on every member, what the load saw meanwhile) and its figures in the run's timings.
//!
//! The history is compacted as etcd's periodic compactor does (to a revision it recorded
//! earlier), by `etcdctl compact`, not by waiting for the cluster file's period: an hour in the
//! tutorial's file, and a period of seconds would compact away what the load's watchers still
//! need after a member was down for longer (their check would fail for the wrong reason).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::run::Run;
use crate::pki::compaction::go_duration_ns;
use crate::smoke::engine::Members;
use crate::smoke::workload::load::{Gateway, Identity};

/// The check, by name (the report's contract with its readers).
pub(crate) const COMPACTION: &str =
    "compaction and defragmentation under load: the cluster file's policy in etcd's log, history compacted, \
     one member defragmented at a time, databases smaller";
/// The load's phase while the database is grown, compacted and defragmented: no request may
/// fail in it.
pub(crate) const PHASE: &str = "compaction and defragmentation";
/// The key the check grows the database with, overwritten by [`GROW_WRITES`] values of 1 MiB
/// (history only compaction frees, the way a controller that rewrites an object fills a real
/// cluster).
const GROW_KEY: &str = "smoke/compaction";
const GROW_WRITES: usize = 16;
const MIB: f64 = 1024.0 * 1024.0;

/// The database of one member, as `etcdctl endpoint status` reports it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DbSize {
    /// The file (`dbSize`): what the quota counts.
    pub total: u64,
    /// What holds data (`dbSizeInUse`); the rest is free pages only a defragmentation returns.
    pub in_use: u64,
}

/// The `auto-compaction-mode` and `auto-compaction-retention` of the last `starting an etcd
/// server` line in a member's log (etcd's zap logger), if there is one.
pub(crate) fn started_with(log: &str) -> Option<(String, String)> {
    let line = log.lines().rev().find(|l| l.contains("starting an etcd server"))?;
    let v: serde_json::Value = serde_json::from_str(&line[line.find('{')?..]).ok()?;
    Some((v["auto-compaction-mode"].as_str()?.to_string(), v["auto-compaction-retention"].as_str()?.to_string()))
}

impl<E: Members> Run<E> {
    /// Member `i`'s database, asked through it alone.
    pub(crate) fn db_size(&self, i: usize) -> Result<DbSize> {
        let out = self.etcdctl_ok(&[i], &["endpoint", "status", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("endpoint status printed no JSON")?;
        let s = &v[0]["Status"];
        let field = |name: &str| s[name].as_u64().with_context(|| format!("endpoint status without {name}: {out}"));
        Ok(DbSize { total: field("dbSize")?, in_use: field("dbSizeInUse")? })
    }

    /// Every member runs with the cluster file's compaction policy (its start in its log); the
    /// database is grown by [`GROW_WRITES`] MiB of history, compacted to the revision after
    /// them once every watcher of the load has seen past it (what etcd's periodic compactor
    /// does, with the time since as its period), and defragmented one member at a time with
    /// `defragment`, each after every member answered healthy (as the timer's service checks).
    /// Every member's database must shrink by at least half of what was written, no request of
    /// the load may fail meanwhile, and no alert may fire (with Prometheus watching). Timings:
    /// `<prefix>defrag_db_mib_before`, `..._after` (the largest member), `<prefix>defrag_s` (the
    /// defragmentations), `<prefix>compaction_and_defrag_s` (the whole step).
    pub(crate) fn compact_and_defragment(
        &mut self,
        prefix: &str,
        defragment: impl Fn(&Self, usize) -> Result<String>,
    ) -> Result<String> {
        let n = self.len();
        let policy = self.spec().compaction.clone();
        for i in 0..n {
            let log = self.log(i)?;
            let (mode, retention) = started_with(&log).with_context(|| {
                format!(
                    "{}: no `starting an etcd server` line with its compaction in its {}",
                    self.name(i),
                    self.log_name()
                )
            })?;
            if mode != policy.mode() || go_duration_ns(&retention).ok() != Some(policy.retention_ns()) {
                bail!(
                    "{} started with auto-compaction {mode} {retention}, but the cluster file says {}",
                    self.name(i),
                    policy.describe()
                );
            }
        }
        let mut notes = vec![format!("all {n} members started with the cluster file's policy ({})", policy.describe())];

        self.phase(PHASE);
        let t = Instant::now();
        let endpoint = self.client_url(0);
        let identity = Identity::in_dir(&self.client_dir());
        let big = "c".repeat(1024 * 1024);
        let (first, last) = self.as_client(|| {
            let gw = Gateway::new(&identity, Duration::from_secs(10))?;
            let mut first = None;
            for _ in 0..GROW_WRITES {
                let rev = gw.put(&endpoint, GROW_KEY, &big)?;
                first = first.or(rev);
            }
            let last = gw.put(&endpoint, GROW_KEY, "small")?;
            Ok((first.context("a put without a revision")?, last.context("a put without a revision")?))
        })?;
        let before = (0..n).map(|i| self.db_size(i)).collect::<Result<Vec<_>>>()?;
        let grown = t.elapsed().as_secs_f64();

        // etcd's periodic compactor compacts to a revision it recorded a period ago; here the
        // period is the time until every watcher of the load has seen past `last`, so that none
        // of them finds its next revision compacted.
        let mut waited = 0.0;
        if let Some(load) = &self.load {
            let w = Instant::now();
            self.poll(
                "the load's watchers did not see past the grown history",
                Duration::from_secs(15),
                Duration::from_millis(50),
                |_| {
                    let seen = load.watched();
                    Ok(match seen.iter().all(|r| r.is_some_and(|r| r >= last)) {
                        true => Ok(()),
                        false => Err(format!("watchers at {seen:?}, the history ends at {last}")),
                    })
                },
            )?;
            waited = w.elapsed().as_secs_f64();
        }
        self.etcdctl_ok(&[0], &["compact", &last.to_string(), "--physical"])?;
        let old = self.etcdctl(&[0], &["get", GROW_KEY, &format!("--rev={first}")])?;
        let said = String::from_utf8_lossy(&old.stderr).trim().to_string();
        if old.status.success() || !said.contains("compacted") {
            bail!("after compacting to {last}, revision {first} is still there ({said:?})");
        }
        notes.push(format!(
            "{GROW_WRITES} x 1 MiB written to {GROW_KEY} in {grown:.1} s; compacted to revision {last} once the \
             watchers had seen it ({waited:.1} s); revision {first} is gone (\"{}\")",
            said.rsplit(": ").next().unwrap_or(&said)
        ));

        let (mut took, mut defrag_s) = (Vec::new(), 0.0);
        for i in 0..n {
            self.wait_healthy(&(0..n).collect::<Vec<_>>(), Duration::from_secs(30))
                .with_context(|| format!("before defragmenting {}", self.name(i)))?;
            let d = Instant::now();
            let said = defragment(self, i).with_context(|| format!("defragmenting {}", self.name(i)))?;
            if i == 0 {
                notes.push(format!("{}'s defragmentation said {:?}", self.name(i), said.trim()));
            }
            let s = d.elapsed().as_secs_f64();
            took.push(format!("{} {s:.2} s", self.name(i)));
            defrag_s += s;
        }
        let after = (0..n).map(|i| self.db_size(i)).collect::<Result<Vec<_>>>()?;
        let defragmented = t.elapsed().as_secs_f64();
        self.timings.insert(format!("{prefix}defrag_s"), defrag_s);
        self.timings.insert(format!("{prefix}compaction_and_defrag_s"), defragmented);
        let mib = |s: &[DbSize], f: fn(&DbSize) -> u64| {
            s.iter().map(|d| format!("{:.1}", f(d) as f64 / MIB)).collect::<Vec<_>>().join("/")
        };
        let largest = |s: &[DbSize]| s.iter().map(|d| d.total).max().unwrap_or(0) as f64 / MIB;
        self.timings.insert(format!("{prefix}defrag_db_mib_before"), largest(&before));
        self.timings.insert(format!("{prefix}defrag_db_mib_after"), largest(&after));
        notes.push(format!(
            "defragmented one at a time: {}; database MiB (file, in use) before {} ({}), after {} ({})",
            took.join(", "),
            mib(&before, |d| d.total),
            mib(&before, |d| d.in_use),
            mib(&after, |d| d.total),
            mib(&after, |d| d.in_use),
        ));
        let freed = (GROW_WRITES as u64 * 1024 * 1024) / 2;
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            if a.total + freed > b.total {
                bail!(
                    "{}'s database did not shrink by {} MiB: {:.1} MiB before, {:.1} MiB after ({})",
                    self.name(i),
                    freed as f64 / MIB,
                    b.total as f64 / MIB,
                    a.total as f64 / MIB,
                    notes.join("; ")
                );
            }
        }

        let stats = self.load.as_ref().map(|l| l.phase_stats(PHASE)).unwrap_or_default();
        notes.push(format!(
            "meanwhile ({defragmented:.1} s) the load made {} requests, {} failed, worst latency {:.0} ms",
            stats.requests, stats.failed, stats.worst_latency_ms
        ));
        if stats.failed > 0 {
            bail!("requests failed: {}", notes.join("; "));
        }
        if let Some(quiet) = self.alerts_quiet(&crate::render::monitoring::alert_names()) {
            quiet.map_err(|e| anyhow::anyhow!("{e:#}: {}", notes.join("; ")))?;
            notes.push("Prometheus: no alert pending or firing".into());
        }
        self.phase("after defragmentation");
        Ok(notes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_is_read_from_the_last_start_in_the_log() {
        let start = |mode: &str, retention: &str| {
            format!(
                "{{\"level\":\"info\",\"msg\":\"starting an etcd server\",\"auto-compaction-mode\":\"{mode}\",\
                 \"auto-compaction-retention\":\"{retention}\",\"auto-compaction-interval\":\"{retention}\"}}"
            )
        };
        let journal = format!(
            "Dec 05 05:00:00 etcd1 etcd[7]: {}\nother\nDec 05 05:01:00 etcd1 etcd[9]: {}\n",
            start("periodic", "0s"),
            start("periodic", "1h0m0s")
        );
        assert_eq!(started_with(&journal), Some(("periodic".into(), "1h0m0s".into())));
        assert_eq!(started_with("capnslog: etcdserver: name = etcd1"), None);
        // What etcd logs is what the cluster file's policy holds.
        let policy = crate::pki::compaction::Compaction::default();
        assert_eq!(go_duration_ns("1h0m0s").ok(), Some(policy.retention_ns()));
    }
}
