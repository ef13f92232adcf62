//! Verification: the verdict over what the clients saw, Jepsen's checker. In: the load's
//! history (every operation with its invoke and return time, result and revision) and every
//! watcher's events. Out: a summary, or the violation that fails the run.
//!
//! Pure and unit-tested: nothing here runs a process or touches a network; `history.rs` holds
//! the types the recorders (`workload/`) fill, `linearizable.rs` the Wing-Gong-Lowe search per
//! key and the revision order per client, `watch.rs` the watch guarantees, `restored.rs` a
//! restored keyspace held to one revision of the history.

pub mod history;
pub mod linearizable;
pub mod restored;
pub mod watch;

use history::{Op, WatchLog};

/// The name of the check in the smoke report.
pub const CHECK_NAME: &str = "client history: linearizable per key, revisions never go back, watches complete";

/// The check of a load's history: linearizable per key, no client shown a revision older than
/// one it saw before, and the watches complete. `Ok` with a summary, or `Err` with the reason
/// (the violating operations quoted); the caller keeps the history beside the report then.
pub fn judge(history: &[Op], watches: &[WatchLog]) -> Result<String, String> {
    let verdict = linearizable::check(history, linearizable::MAX_STEPS);
    let revisions = linearizable::revisions_never_go_back(history);
    let watched = watch::judge(watches, history);
    if verdict.violation.is_none() && verdict.gave_up.is_none() {
        if let (Ok(compared), Ok(watched)) = (&revisions, &watched) {
            return Ok(format!(
                "{}; revisions never went back ({compared} answers in client order); {watched}",
                verdict.summary()
            ));
        }
    }
    let mut why = verdict.summary();
    if let Some(v) = &verdict.violation {
        let around: Vec<String> = v.around.iter().map(linearizable::describe).collect();
        why.push_str(&format!("; concurrent with it: {}", around.join("; ")));
    }
    if let Err(e) = revisions {
        why.push_str(&format!("; {e}"));
    }
    if let Err(e) = watched {
        why.push_str(&format!("; watch: {e}"));
    }
    Err(why)
}
