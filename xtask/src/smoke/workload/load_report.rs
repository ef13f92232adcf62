//! What the client load saw ([`LoadReport`]): its figures per phase, the failures and retries
//! it quotes, and per epoch (a restore starts a new one) the history, watches and acknowledged
//! keys the verdict judges. In: nothing (data the load fills). Out: the types `load.rs` returns
//! and `report/` keeps.

use std::collections::BTreeMap;

use serde::Serialize;

use super::timeline::{Mark, Sample, Second};
use crate::smoke::verify::history::{Op, WatchLog};

/// One failed request or retried attempt, with when it happened and why.
#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    /// Seconds since the load started.
    pub at_s: f64,
    pub phase: String,
    pub what: String,
    pub reason: String,
}

/// What the load saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub seconds: f64,
    pub requests: u64,
    pub writes: u64,
    pub reads: u64,
    /// Requests that failed on every endpoint until their deadline.
    pub failed: u64,
    /// Attempts that failed and were retried on another endpoint (not failures of the request).
    pub retries: u64,
    pub worst_latency_ms: f64,
    pub rate_per_s: f64,
    /// Failed requests, per phase of the scenario they gave up in.
    pub failed_by_phase: BTreeMap<String, u64>,
    /// Per phase of the scenario: its length and the requests started in it.
    pub phases: BTreeMap<String, PhaseStats>,
    pub failures: Vec<Incident>,
    pub retried: Vec<Incident>,
    /// Retried attempts by what went wrong (see [`cause`]).
    pub retried_by_cause: BTreeMap<String, u64>,
    /// Whether a bound (count or time) stopped the load before the scenario did.
    pub bounded_stop: bool,
    /// The last epoch's acknowledged keys (earlier epochs' are checked where they end).
    #[serde(skip)]
    pub acknowledged: BTreeMap<String, String>,
    /// Every attempt of every epoch (saved beside the report on a violation).
    #[serde(skip)]
    pub history: Vec<Op>,
    /// The last epoch's watchers, one per endpoint.
    pub watches: Vec<WatchLog>,
    /// Per epoch (one unless the scenario restored the store): what the verdict judges apart.
    pub epochs: Vec<EpochReport>,
    pub acknowledged_writes: usize,
    /// Every finished request, for the timeline.
    #[serde(skip)]
    pub samples: Vec<Sample>,
    /// Second by second (report.html's pictures).
    pub timeline: Vec<Second>,
    /// When each phase began.
    pub marks: Vec<Mark>,
}

/// What one epoch of the load saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EpochReport {
    pub name: String,
    /// Where its keys are.
    pub prefix: String,
    /// Seconds since the load started when it began.
    pub started_s: f64,
    /// Every attempt made in it (each write with its value, revision and ack time, or no ack
    /// when its outcome is unknown).
    #[serde(skip)]
    pub history: Vec<Op>,
    /// Its watchers, one per endpoint, each from the revision it first opened a stream at.
    pub watches: Vec<WatchLog>,
    #[serde(skip)]
    pub acknowledged: BTreeMap<String, String>,
    pub acknowledged_writes: usize,
}

/// One phase's length (summed over its occurrences) and the requests started in it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseStats {
    pub seconds: f64,
    pub requests: u64,
    /// Requests that gave up in the phase (wherever they started).
    pub failed: u64,
    /// The longest a request started in the phase took, retries included: what a client with
    /// failover waited at worst.
    pub worst_latency_ms: f64,
    /// The latencies of the requests started in the phase, summed: with `requests`, the mean.
    pub latency_sum_ms: f64,
}

impl PhaseStats {
    /// Requests per second over the phase.
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The mean latency of the phase's requests.
    pub fn mean_latency_ms(&self) -> f64 {
        if self.requests > 0 {
            self.latency_sum_ms / self.requests as f64
        } else {
            0.0
        }
    }
}

impl LoadReport {
    /// Requests per second over the phases not in `except`.
    pub fn rate_except(&self, except: &[&str]) -> f64 {
        let (mut secs, mut reqs) = (0.0, 0u64);
        for (name, p) in &self.phases {
            if !except.contains(&name.as_str()) {
                secs += p.seconds;
                reqs += p.requests;
            }
        }
        if secs > 0.0 {
            reqs as f64 / secs
        } else {
            0.0
        }
    }
}
