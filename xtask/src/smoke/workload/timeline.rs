//! What the load saw, second by second: requests finished, failed and retried, and latency
//! percentiles, with the scenario's steps marked; the data of report.html's pictures (also in
//! report.json as each scenario's `load.timeline` and `load.marks`).
//! In: the finished requests ([`Sample`]). Out: one [`Second`] per second of the load.

use serde::Serialize;

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the load started, when the request finished.
    pub end_s: f64,
    pub latency_ms: f64,
    pub failed: bool,
    /// Attempts retried on another endpoint before it finished.
    pub retries: u32,
}

/// One second of the load.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Second {
    /// Seconds since the load started (this second is `[t, t+1)`).
    pub t: u32,
    pub requests: u32,
    pub failed: u32,
    pub retries: u32,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// A step of the scenario (the load's phase) and when it began.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mark {
    pub at_s: f64,
    pub phase: String,
}

/// The samples per second, every second from 0 to the last one (empty seconds included:
/// a stall shows as a gap to zero).
pub fn per_second(samples: &[Sample]) -> Vec<Second> {
    let last = samples.iter().map(|s| s.end_s.max(0.0) as u32).max();
    let Some(last) = last else { return Vec::new() };
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); last as usize + 1];
    let mut out: Vec<Second> = (0..=last).map(|t| Second { t, ..Second::default() }).collect();
    for s in samples {
        let i = s.end_s.max(0.0) as usize;
        out[i].requests += 1;
        out[i].failed += u32::from(s.failed);
        out[i].retries += s.retries;
        latencies[i].push(s.latency_ms);
    }
    for (second, mut l) in out.iter_mut().zip(latencies) {
        l.sort_by(f64::total_cmp);
        second.p50_ms = percentile(&l, 0.50);
        second.p99_ms = percentile(&l, 0.99);
    }
    out
}

/// The nearest-rank percentile of sorted values (0 for none).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(end_s: f64, latency_ms: f64, failed: bool, retries: u32) -> Sample {
        Sample { end_s, latency_ms, failed, retries }
    }

    #[test]
    fn seconds_count_requests_failures_retries_and_percentiles() {
        let mut samples: Vec<Sample> = (1..=100).map(|i| s(0.5, i as f64, false, 0)).collect();
        samples.push(s(2.2, 4000.0, true, 3));
        let secs = per_second(&samples);
        assert_eq!(secs.len(), 3, "second 1 is empty and still there");
        assert_eq!((secs[0].requests, secs[0].p50_ms, secs[0].p99_ms), (100, 50.0, 99.0));
        assert_eq!(secs[1], Second { t: 1, ..Second::default() });
        assert_eq!((secs[2].requests, secs[2].failed, secs[2].retries, secs[2].p99_ms), (1, 1, 3, 4000.0));
        assert!(per_second(&[]).is_empty());
    }
}
