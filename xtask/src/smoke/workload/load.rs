//! The client load every smoke scenario runs: writes and linearizable reads against all three
//! endpoints through etcd's JSON gateway (`/v3/kv/put`, `/v3/kv/range`), over mutual TLS.
//! In: the endpoints and the client identity's files (CA bundle, certificate, key). Out: a
//! [`LoadReport`]: requests, failures (each with its phase and reason), retries, the worst
//! latency, and every key whose write was acknowledged, so the scenario can check it is there.
//!
//! It behaves like a client that knows all endpoints and retries: a request goes to its worker's
//! own endpoint first and, on any error, to the next one, until it succeeds or its deadline
//! passes; only then is it counted as failed. An endpoint that failed an attempt is passed over
//! for a second by every worker, as a client's balancer would. A write that failed may still have been committed
//! (its outcome is unknown), so only acknowledged keys are checked afterwards.
//!
//! The identity is re-read when one of its files changes, like etcd re-reads its leaf
//! certificates: the scenarios rotate certificates under a running load.
//!
//! A load has epochs ([`Load::epoch`]): a disaster recovery may take the store back to an
//! earlier revision, so the history after it is judged apart from the one before. Each epoch
//! writes under a prefix of its own, has its own history, watchers and acknowledged keys; a
//! request of an ended epoch gives up at its next attempt. Scenarios without a restore have one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

pub use super::client::{Client, Transport};
pub use super::gateway::{Gateway, Identity};
pub use super::load_report::{EpochReport, Incident, LoadReport, PhaseStats};
use super::timeline::{per_second, Mark, Sample};
use crate::smoke::local::enter_netns;
use crate::smoke::verify::history::{Action, Op, WatchLog};

/// Workers per endpoint: requests wait for their answer (a put waits for a quorum's fsync), so
/// one worker alone cannot keep up the rate.
const WORKERS_PER_ENDPOINT: usize = 4;
/// Requests per second each worker aims at (twelve workers: 120 requests/s in all, so that the
/// rate stays above 50/s over a scenario even though requests stall while a quorum is lost).
const PER_WORKER_RATE: f64 = 10.0;
/// How long one attempt may take before the next endpoint is tried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a request may keep retrying before it counts as failed.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Failures and retries quoted in the report (all are counted).
const QUOTED: usize = 20;

/// What went wrong with an attempt, in a few words: the classes the report counts.
fn cause(reason: &str) -> String {
    let lower = reason.to_lowercase();
    if lower.contains("connection refused") {
        "connection refused (the member is not listening)".into()
    } else if lower.contains("connection reset")
        || lower.contains("broken pipe")
        || lower.contains("unexpected eof")
        || lower.contains("peer disconnected")
    {
        "connection closed (the member stopped mid-request)".into()
    } else if lower.contains("timed out") || lower.contains("timeout") {
        "timed out".into()
    } else if let Some(i) = reason.find("HTTP ") {
        // "HTTP 503: etcdserver: leader changed" -> the status and etcd's message.
        reason[i..].chars().take(80).collect()
    } else {
        reason.chars().take(80).collect()
    }
}

/// Whether a failed write certainly did not take effect: the connection was refused (nothing
/// was sent), or etcd refused it for its quota (NOSPACE: rejected before the proposal, or at
/// apply time while the alarm is raised). Any other failure leaves its outcome unknown.
fn refused_before_effect(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}").to_lowercase();
    text.contains("connection refused") || text.contains("database space exceeded")
}

/// How long an endpoint that failed an attempt is passed over, as a client's balancer does: a
/// stopped member's published port may swallow a SYN until the connect timeout.
const AVOID_FAILED: Duration = Duration::from_millis(1000);

struct Shared {
    /// The endpoints, switchable while the load runs (from http to https).
    endpoints: Mutex<Vec<String>>,
    /// Per endpoint: passed over until then (its last attempt failed).
    avoid_until: Mutex<Vec<Option<Instant>>>,
    report: Mutex<LoadReport>,
    phase: Mutex<String>,
    /// When the current phase began.
    phase_started: Mutex<Instant>,
    stop: AtomicBool,
    started: Instant,
    /// Per endpoint and per epoch, what its watcher saw.
    watches: Vec<Mutex<Vec<WatchLog>>>,
    /// The current epoch's index and key prefix.
    epoch: Mutex<(usize, String)>,
    /// The run's prefix; epoch N > 0 writes under `<run prefix>e<N>/`.
    run_prefix: String,
}

impl Shared {
    /// Microseconds since the load started: the history's clock.
    fn micros(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn phase(&self) -> String {
        self.phase.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The current epoch and its prefix.
    fn epoch(&self) -> (usize, String) {
        self.epoch.lock().map(|e| e.clone()).unwrap_or_else(|_| (0, self.run_prefix.clone()))
    }

    /// The first endpoint from `start` (round) that is not being passed over; `start`'s own
    /// when all are.
    fn pick(&self, start: usize, n: usize) -> usize {
        let now = Instant::now();
        let Ok(avoid) = self.avoid_until.lock() else { return start % n };
        (0..n).map(|k| (start + k) % n).find(|i| avoid[*i].is_none_or(|t| t <= now)).unwrap_or(start % n)
    }

    fn avoid(&self, i: usize) {
        if let Ok(mut avoid) = self.avoid_until.lock() {
            avoid[i] = Some(Instant::now() + AVOID_FAILED);
        }
    }

    /// Adds the time since the current phase began to its total.
    fn close_phase(&self) {
        let (Ok(p), Ok(mut started), Ok(mut r)) = (self.phase.lock(), self.phase_started.lock(), self.report.lock())
        else {
            return;
        };
        r.phases.entry(p.clone()).or_default().seconds += started.elapsed().as_secs_f64();
        *started = Instant::now();
    }
}

/// A running load; [`Load::finish`] stops it and returns the report.
pub struct Load {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// Bounds of one load run.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_requests: u64,
    pub max_duration: Duration,
}

impl Load {
    /// Starts the workers (three per endpoint, each preferring its own); keys go under `prefix`.
    /// With `netns`, every worker's sockets are in that network namespace (the systemd
    /// engine's machines are reachable only from there).
    pub fn start(
        endpoints: Vec<String>,
        identity: Identity,
        transport: Transport,
        prefix: &str,
        bounds: Bounds,
        netns: Option<PathBuf>,
    ) -> Result<Load> {
        if endpoints.is_empty() {
            bail!("the client load needs at least one endpoint");
        }
        // Fail early and clearly when the identity or the transport is unusable.
        Client::new(transport, &identity, ATTEMPT_TIMEOUT)?;
        // Keys of this load only: scenarios on the same machines (the systemd engine) run one
        // load after another, and a key an earlier load wrote would start the history with a
        // value this one never wrote.
        let run = SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let run_prefix = format!("{prefix}{run:x}/");
        let first = EpochReport { name: FIRST_EPOCH.into(), prefix: run_prefix.clone(), ..Default::default() };
        let shared = Arc::new(Shared {
            report: Mutex::new(LoadReport { epochs: vec![first], ..LoadReport::default() }),
            avoid_until: Mutex::new(vec![None; endpoints.len()]),
            endpoints: Mutex::new(endpoints.clone()),
            phase: Mutex::new("start".into()),
            phase_started: Mutex::new(Instant::now()),
            stop: AtomicBool::new(false),
            started: Instant::now(),
            watches: (0..endpoints.len()).map(|_| Mutex::new(Vec::new())).collect(),
            epoch: Mutex::new((0, run_prefix.clone())),
            run_prefix,
        });
        let count = endpoints.len() * WORKERS_PER_ENDPOINT;
        let per_worker = bounds.max_requests / count as u64;
        let mut workers = Vec::new();
        for w in 0..count {
            let shared = shared.clone();
            let identity = identity.clone();
            let bounds = Bounds { max_requests: per_worker, max_duration: bounds.max_duration };
            let netns = netns.clone();
            workers.push(std::thread::spawn(move || {
                if let Some(Err(e)) = netns.map(|ns| enter_netns(&ns)) {
                    // No request can be made: the load reports no progress and fails.
                    eprintln!("smoke: load worker {w}: {e:#}");
                    return;
                }
                worker(w, &identity, transport, bounds, &shared)
            }));
        }
        for member in 0..endpoints.len() {
            let (shared, identity, netns) = (shared.clone(), identity.clone(), netns.clone());
            workers.push(std::thread::spawn(move || {
                if let Some(Err(e)) = netns.map(|ns| enter_netns(&ns)) {
                    eprintln!("smoke: watcher {member}: {e:#}");
                    return;
                }
                super::watch::watcher(
                    member,
                    &identity,
                    transport,
                    &shared.epoch,
                    &shared.endpoints,
                    &shared.stop,
                    &shared.watches[member],
                )
            }));
        }
        Ok(Load { shared, workers })
    }

    /// Switches every worker to `endpoints` (the same members, e.g. at https instead of http)
    /// from its next attempt on.
    pub fn set_endpoints(&self, endpoints: Vec<String>) {
        if let Ok(mut e) = self.shared.endpoints.lock() {
            *e = endpoints;
        }
    }

    /// The figures so far of the phase `name` (requests still running are not in them).
    /// Requests finished so far and how many of them failed.
    pub fn totals(&self) -> (u64, u64) {
        self.shared.report.lock().map(|r| (r.requests, r.failed)).unwrap_or_default()
    }

    pub fn phase_stats(&self, name: &str) -> PhaseStats {
        self.shared.report.lock().ok().and_then(|r| r.phases.get(name).cloned()).unwrap_or_default()
    }

    /// How far each watcher has seen (the revision of its last event, or the one its first
    /// stream started after), by member; `None` before its first stream. A compaction up to
    /// the least of them cancels no watcher when it resumes.
    pub fn watched(&self) -> Vec<Option<i64>> {
        let (epoch, _) = self.shared.epoch();
        self.shared.watches.iter().map(|w| w.lock().ok().and_then(|w| w.get(epoch).and_then(WatchLog::last))).collect()
    }

    /// Starts a new epoch named `name`: new requests write under a prefix of their own, a
    /// request of the old epoch still retrying gives up at its next attempt (a write's outcome
    /// stays unknown, a read is left out), each watcher starts over on the new prefix from the
    /// then current revision. Returns the new prefix.
    pub fn epoch(&self, name: &str) -> String {
        let started_s = self.shared.started.elapsed().as_secs_f64();
        let Ok(mut epoch) = self.shared.epoch.lock() else { return self.shared.run_prefix.clone() };
        let index = epoch.0 + 1;
        let prefix = format!("{}e{index}/", self.shared.run_prefix);
        if let Ok(mut r) = self.shared.report.lock() {
            r.epochs.push(EpochReport { name: name.into(), prefix: prefix.clone(), started_s, ..Default::default() });
        }
        *epoch = (index, prefix.clone());
        prefix
    }

    /// The history so far of the epoch `index` (0: the first), and its prefix.
    pub fn epoch_history(&self, index: usize) -> Option<(String, Vec<Op>)> {
        let r = self.shared.report.lock().ok()?;
        r.epochs.get(index).map(|e| (e.prefix.clone(), e.history.clone()))
    }

    /// The number of the current epoch (0: the first).
    pub fn current_epoch(&self) -> usize {
        self.shared.epoch().0
    }

    /// Names the scenario's current step; failures are reported per phase.
    pub fn phase(&self, name: &str) {
        self.shared.close_phase();
        if let Ok(mut r) = self.shared.report.lock() {
            r.marks.push(Mark { at_s: self.shared.started.elapsed().as_secs_f64(), phase: name.to_string() });
        }
        if let Ok(mut p) = self.shared.phase.lock() {
            *p = name.to_string();
        }
    }

    /// Stops the workers (each finishes its request in flight) and returns what they saw.
    pub fn finish(self) -> LoadReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            let _ = w.join();
        }
        let shared = self.shared;
        shared.close_phase();
        let mut report = shared.report.lock().map(|r| r.clone()).unwrap_or_default();
        report.seconds = shared.started.elapsed().as_secs_f64();
        report.rate_per_s = if report.seconds > 0.0 { report.requests as f64 / report.seconds } else { 0.0 };
        let logs: Vec<Vec<WatchLog>> = shared.watches.iter().filter_map(|w| w.lock().ok().map(|w| w.clone())).collect();
        for (index, epoch) in report.epochs.iter_mut().enumerate() {
            epoch.watches = logs.iter().filter_map(|l| l.get(index).cloned()).collect();
            epoch.acknowledged_writes = epoch.acknowledged.len();
        }
        report.history = report.epochs.iter().flat_map(|e| e.history.iter().cloned()).collect();
        if let Some(last) = report.epochs.last() {
            report.acknowledged = last.acknowledged.clone();
            report.watches = last.watches.clone();
        }
        report.acknowledged_writes = report.acknowledged.len();
        report.timeline = per_second(&report.samples);
        report
    }
}

/// What a request of the load does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    OwnWrite,
    OwnRead,
    SharedWrite,
    SharedRead,
}

/// The keys every worker writes and reads, under the load's prefix: few, so that writes
/// overlap and reads race them.
const SHARED: &str = "shared/";
const SHARED_KEYS: u64 = 4;

/// The name of a load's first epoch.
pub const FIRST_EPOCH: &str = "before";

fn worker(w: usize, identity: &Identity, transport: Transport, bounds: Bounds, shared: &Shared) {
    let (mut epoch, mut base) = shared.epoch();
    let mut prefix = format!("{base}{w}/");
    let interval = Duration::from_secs_f64(1.0 / PER_WORKER_RATE);
    let mut client: Option<(Vec<Option<SystemTime>>, Client)> = None;
    let mut seq = 0u64;
    let mut last_acked: Option<(String, String)> = None;
    let mut next = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        if seq >= bounds.max_requests || shared.started.elapsed() >= bounds.max_duration {
            if let Ok(mut r) = shared.report.lock() {
                r.bounded_stop = true;
            }
            break;
        }
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += interval;
        seq += 1;
        // A new epoch: keys under its prefix, nothing read back of the old one.
        let now_epoch = shared.epoch();
        if now_epoch.0 != epoch {
            (epoch, base) = now_epoch;
            prefix = format!("{base}{w}/");
            last_acked = None;
        }
        // Four kinds of request in turn: a write to a key of the worker's own, a read of its
        // last acknowledged one, a write and a read of a key every worker shares (values unique
        // per request), so that the history has concurrent writes and reads to check.
        let kind = match seq % 4 {
            1 => Kind::OwnWrite,
            2 if last_acked.is_some() => Kind::OwnRead,
            2 => Kind::OwnWrite,
            3 => Kind::SharedWrite,
            _ => Kind::SharedRead,
        };
        let read = matches!(kind, Kind::OwnRead | Kind::SharedRead);
        let key = match kind {
            Kind::OwnWrite => format!("{prefix}{seq:06}"),
            Kind::OwnRead => last_acked.as_ref().map(|(k, _)| k.clone()).unwrap_or_default(),
            Kind::SharedWrite => format!("{base}{SHARED}{}", (seq / 4 + w as u64) % SHARED_KEYS),
            Kind::SharedRead => format!("{base}{SHARED}{}", (seq / 4 + w as u64 + 1) % SHARED_KEYS),
        };
        let value = format!("w{w}-{seq}");
        let t = Instant::now();
        // A request counts in the phase it started in; a failure is charged to the phase it
        // gave up in (a request in flight when a quorum was lost fails because of that step).
        let phase = shared.phase();
        let deadline = t + REQUEST_DEADLINE;
        let mut attempt = 0usize;
        let outcome: Result<()> = loop {
            // The identity is reloaded when its files changed (as etcd does with its own).
            let stamp = identity.stamp();
            if client.as_ref().is_none_or(|(s, _)| *s != stamp) {
                match Client::new(transport, identity, ATTEMPT_TIMEOUT) {
                    Ok(g) => client = Some((stamp, g)),
                    Err(e) => {
                        // Files mid-rewrite: try again shortly.
                        if Instant::now() > deadline {
                            break Err(e);
                        }
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                }
            }
            let Some((_, gw)) = client.as_ref() else { continue };
            let endpoints = shared.endpoints.lock().map(|e| e.clone()).unwrap_or_default();
            let index = shared.pick(w + attempt, endpoints.len());
            let endpoint = &endpoints[index];
            // Every attempt goes into the history: a write that failed may still take effect
            // (its outcome is unknown), a read that failed says nothing and is left out.
            let invoke_us = shared.micros();
            let record = |action: Action, done: bool, revision: Option<i64>| {
                let op = Op {
                    client: w,
                    key: key.clone(),
                    action,
                    invoke_us,
                    return_us: done.then(|| shared.micros()),
                    revision,
                };
                if let Ok(mut r) = shared.report.lock() {
                    if let Some(e) = r.epochs.get_mut(epoch) {
                        e.history.push(op);
                    }
                }
            };
            // Err((e, retry)): retry on another endpoint, or not (the answer itself is wrong).
            let result: Result<(), (anyhow::Error, bool)> = if read {
                match gw.get_at(endpoint, &key) {
                    Ok((got, revision)) => {
                        record(Action::Read(got.clone()), true, revision);
                        match (&kind, last_acked.as_ref()) {
                            (Kind::OwnRead, Some((k, want))) if got.as_ref() != Some(want) => Err((
                                anyhow::anyhow!(
                                    "linearizable read of acknowledged {k} via {endpoint} returned {got:?}, not {want:?}"
                                ),
                                false,
                            )),
                            _ => Ok(()),
                        }
                    }
                    Err(e) => Err((e, true)),
                }
            } else {
                match gw.put(endpoint, &key, &value) {
                    Ok(revision) => {
                        record(Action::Write(value.clone()), true, revision);
                        Ok(())
                    }
                    Err(e) => {
                        // Refused before it could take effect: not an unknown outcome.
                        if !refused_before_effect(&e) {
                            record(Action::Write(value.clone()), false, None);
                        }
                        Err((e, true))
                    }
                }
            };
            match result {
                Ok(()) => break Ok(()),
                Err((e, false)) => break Err(e),
                Err((e, true)) => {
                    let incident = Incident {
                        at_s: shared.started.elapsed().as_secs_f64(),
                        phase: phase.clone(),
                        what: if read { format!("read via {endpoint}") } else { format!("write {key} via {endpoint}") },
                        reason: format!("{e:#}"),
                    };
                    shared.avoid(index);
                    if Instant::now() + Duration::from_millis(100) > deadline {
                        break Err(e);
                    }
                    // Its epoch ended (the store is being restored): no attempt on the new one.
                    if shared.epoch().0 != epoch {
                        break Err(e.context("given up: its epoch ended (a restore began)"));
                    }
                    if let Ok(mut r) = shared.report.lock() {
                        r.retries += 1;
                        *r.retried_by_cause.entry(cause(&incident.reason)).or_default() += 1;
                        if r.retried.len() < QUOTED {
                            r.retried.push(incident);
                        }
                    }
                    attempt += 1;
                    // Every endpoint tried once: back off a little before the next round.
                    if attempt.is_multiple_of(endpoints.len()) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        };
        let latency = t.elapsed().as_secs_f64() * 1000.0;
        let end_s = shared.started.elapsed().as_secs_f64();
        // Before the report's lock: `Load::phase` takes the phase's lock first.
        let end_phase = shared.phase();
        let Ok(mut r) = shared.report.lock() else { break };
        let retries = u32::try_from(attempt).unwrap_or(u32::MAX);
        r.samples.push(Sample { end_s, latency_ms: latency, failed: outcome.is_err(), retries });
        r.requests += 1;
        let stats = r.phases.entry(phase.clone()).or_default();
        stats.requests += 1;
        stats.latency_sum_ms += latency;
        stats.worst_latency_ms = stats.worst_latency_ms.max(latency);
        if outcome.is_err() {
            r.phases.entry(end_phase.clone()).or_default().failed += 1;
        }
        if read {
            r.reads += 1;
        } else {
            r.writes += 1;
        }
        r.worst_latency_ms = r.worst_latency_ms.max(latency);
        match outcome {
            Ok(()) => {
                if kind == Kind::OwnWrite {
                    if let Some(e) = r.epochs.get_mut(epoch) {
                        e.acknowledged.insert(key.clone(), value.clone());
                    }
                    last_acked = Some((key, value));
                }
            }
            Err(e) => {
                r.failed += 1;
                *r.failed_by_phase.entry(end_phase.clone()).or_default() += 1;
                if r.failures.len() < QUOTED {
                    r.failures.push(Incident {
                        at_s: end_s,
                        phase: end_phase,
                        what: if read { "read".into() } else { format!("write {key} (outcome unknown)") },
                        reason: format!("{e:#}"),
                    });
                }
            }
        }
        // Behind schedule (a slow request): do not burst to catch up.
        if next < Instant::now() {
            next = Instant::now();
        }
    }
}

/// Checks that every acknowledged key is in the cluster with its value, reading through
/// `endpoint` with `identity`. Returns how many were checked.
pub fn verify_acknowledged(
    report: &LoadReport,
    endpoint: &str,
    identity: &Identity,
    transport: Transport,
    prefix: &str,
) -> Result<usize> {
    let gw = Client::new(transport, identity, Duration::from_secs(10))?;
    let present = gw.range_prefix(endpoint, prefix).context("cannot read back the load's keys")?;
    let mut missing = Vec::new();
    for (k, v) in &report.acknowledged {
        match present.get(k) {
            Some(got) if got == v => {}
            Some(got) => missing.push(format!("{k} is {got:?}, acknowledged {v:?}")),
            None => missing.push(format!("{k} is missing")),
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} of {} acknowledged writes are not in the cluster: {}",
            missing.len(),
            report.acknowledged.len(),
            missing.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        );
    }
    Ok(report.acknowledged.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_before_effect_leave_a_write_out_of_the_history() {
        let nospace = anyhow::anyhow!("HTTP 429: etcdserver: mvcc: database space exceeded");
        let refused = anyhow::anyhow!("io: Connection refused (os error 111)").context("PUT https://127.0.0.1:1");
        assert!(refused_before_effect(&nospace) && refused_before_effect(&refused));
        for unknown in ["timeout: global", "HTTP 503: etcdserver: leader changed", "connection reset by peer"] {
            assert!(!refused_before_effect(&anyhow::anyhow!(unknown)), "{unknown}");
        }
    }
}
