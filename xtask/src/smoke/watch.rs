//! One watcher per member, beside the client load: each follows the load's keys through etcd's
//! JSON gateway (`/v3/watch`, a stream of JSON messages) on its own member, and resumes from the
//! revision after its last event whenever the stream ends: a member stopped, cut off or
//! restarted, and also every [`CONNECTION`] on purpose, so that resuming is exercised all the
//! time. The check ([`judge`]) holds each watcher to etcd's watch guarantees: events ordered by
//! revision, none twice, none missing (every acknowledged write of the load in the watched
//! range is there, with its value), and every watcher saw the same events.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Serialize;

use super::gateway::{decode, int64 as int, prefix_end, Identity};
use super::history::{Action, Op};

/// How long one watch stream lives before the watcher resumes on a new one (also the longest a
/// watcher takes to notice the load stopped).
const CONNECTION: Duration = Duration::from_secs(2);

/// One event a watcher received.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Event {
    pub revision: i64,
    pub key: String,
    pub value: String,
}

/// What one watcher saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatchLog {
    /// Which endpoint (member) it watched.
    pub member: usize,
    /// The revision its first stream started after.
    pub base: Option<i64>,
    #[serde(skip)]
    pub events: Vec<Event>,
    pub event_count: usize,
    /// Streams opened (the first, then one per resumption).
    pub streams: u64,
    /// Attempts that failed to open a stream (the member down or unreachable).
    pub failed_attempts: u64,
    /// etcd canceled the watch because the revision to resume from was compacted.
    pub compacted: Option<i64>,
    pub last_error: Option<String>,
}

impl WatchLog {
    fn last(&self) -> Option<i64> {
        self.events.last().map(|e| e.revision).or(self.base)
    }
}

/// Runs until `stop`: watches `prefix` on `endpoints[member]` (re-read for every stream, as the
/// load switches endpoints), appending to `log`.
pub(super) fn watcher(
    member: usize,
    identity: &Identity,
    prefix: &str,
    endpoints: &Mutex<Vec<String>>,
    stop: &AtomicBool,
    log: &Mutex<WatchLog>,
) {
    let end = prefix_end(prefix);
    while !stop.load(Ordering::SeqCst) {
        let Some(endpoint) = endpoints.lock().ok().and_then(|e| e.get(member).cloned()) else { return };
        let resume = log.lock().ok().and_then(|l| l.last());
        let mut create = serde_json::json!({"key": B64.encode(prefix), "range_end": B64.encode(&end)});
        if let Some(rev) = resume {
            create["start_revision"] = serde_json::json!((rev + 1).to_string());
        }
        let opened = stream(identity, &endpoint, serde_json::json!({ "create_request": create }));
        let reader = match opened {
            Ok(r) => r,
            Err(e) => {
                if let Ok(mut l) = log.lock() {
                    l.failed_attempts += 1;
                    l.last_error = Some(e);
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        if let Ok(mut l) = log.lock() {
            l.streams += 1;
        }
        for message in serde_json::Deserializer::from_reader(reader).into_iter::<serde_json::Value>() {
            // The stream's time budget ends it with an error: resume on a new one.
            let Ok(message) = message else { break };
            let result = &message["result"];
            let Ok(mut l) = log.lock() else { return };
            if result["created"] == true && l.base.is_none() {
                l.base = int(&result["header"]["revision"]);
            }
            if result["canceled"] == true {
                l.compacted = int(&result["compact_revision"]).or(Some(0));
                l.last_error = result["cancel_reason"].as_str().map(String::from);
                return;
            }
            for ev in result["events"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let kv = &ev["kv"];
                let (Some(revision), Some(key)) = (int(&kv["mod_revision"]), text(&kv["key"])) else { continue };
                l.events.push(Event { revision, key, value: text(&kv["value"]).unwrap_or_default() });
            }
            l.event_count = l.events.len();
        }
    }
}

/// Opens a watch stream with its time budget; the reader yields the gateway's JSON messages.
fn stream(identity: &Identity, endpoint: &str, body: serde_json::Value) -> Result<impl std::io::Read, String> {
    let tls = identity.tls_config().map_err(|e| format!("{e:#}"))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(Duration::from_secs(1)))
        .timeout_recv_response(Some(CONNECTION))
        .timeout_recv_body(Some(CONNECTION))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{endpoint}/v3/watch");
    let resp =
        agent.post(&url).content_type("application/json").send(body.to_string()).map_err(|e| format!("{url}: {e}"))?;
    if resp.status().as_u16() != 200 {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    Ok(resp.into_body().into_reader())
}

fn text(v: &serde_json::Value) -> Option<String> {
    v.as_str()?;
    decode(Some(v)).ok()
}

/// Each watcher's events in revision order, each once; every acknowledged write of `history`
/// in its watched range present with its value; all watchers agreeing on their common range.
/// A watcher that never opened a stream (its member away or a learner, which serves no watch,
/// for the whole load) is named, not failed; at least one watcher must have watched.
pub fn judge(all: &[WatchLog], history: &[Op]) -> Result<String, String> {
    // Each watcher that opened a stream, with the revision it started from.
    let watches: Vec<(&WatchLog, i64)> = all.iter().filter_map(|w| Some((w, w.base?))).collect();
    let idle: Vec<&WatchLog> = all.iter().filter(|w| w.base.is_none()).collect();
    if watches.is_empty() {
        let why: Vec<String> = idle.iter().filter_map(|w| w.last_error.clone()).collect();
        return Err(format!("no watcher opened a stream: {}", why.join("; ")));
    }
    let acked: Vec<Event> = history
        .iter()
        .filter_map(|o| match (&o.action, o.return_us, o.revision) {
            (Action::Write(v), Some(_), Some(revision)) => {
                Some(Event { revision, key: o.key.clone(), value: v.clone() })
            }
            _ => None,
        })
        .collect();
    let mut checked = 0usize;
    for &(w, base) in &watches {
        let who = format!("the watcher of member {}", w.member + 1);
        if let Some(rev) = w.compacted {
            return Err(format!("{who}: etcd canceled its watch (compacted at {rev}: {:?})", w.last_error));
        }
        if let Some(pair) = w.events.windows(2).find(|p| p[1].revision <= p[0].revision) {
            return Err(format!(
                "{who}: revision {} ({}) after {} ({}): out of order or twice",
                pair[1].revision, pair[1].key, pair[0].revision, pair[0].key
            ));
        }
        let last = w.last().unwrap_or(base);
        let seen: BTreeSet<&Event> = w.events.iter().collect();
        let missing: Vec<&Event> =
            acked.iter().filter(|e| e.revision > base && e.revision <= last && !seen.contains(e)).collect();
        if let Some(first) = missing.first() {
            return Err(format!(
                "{who}: {} acknowledged write(s) between revisions {base} and {last} never arrived, first {} = {:?} \
                 at revision {}",
                missing.len(),
                first.key,
                first.value,
                first.revision
            ));
        }
        checked += acked.iter().filter(|e| e.revision > base && e.revision <= last).count();
    }
    // Every watcher saw the same events where their ranges overlap.
    let from = watches.iter().map(|(_, base)| *base).max().unwrap_or(0);
    let to = watches.iter().filter_map(|(w, _)| w.last()).min().unwrap_or(0);
    let range = |w: &WatchLog| -> BTreeMap<i64, (String, String)> {
        w.events
            .iter()
            .filter(|e| e.revision > from && e.revision <= to)
            .map(|e| (e.revision, (e.key.clone(), e.value.clone())))
            .collect()
    };
    let (one, _) = watches[0];
    let first = range(one);
    for (w, _) in &watches[1..] {
        let other = range(w);
        if other != first {
            let differ = first.keys().chain(other.keys()).find(|r| first.get(r) != other.get(r)).copied();
            return Err(format!(
                "the watchers of members {} and {} disagree between revisions {from} and {to}, first at {differ:?}",
                one.member + 1,
                w.member + 1
            ));
        }
    }
    let streams: u64 = watches.iter().map(|(w, _)| w.streams).sum();
    let events: Vec<String> = watches.iter().map(|(w, _)| w.events.len().to_string()).collect();
    let mut summary = format!(
        "{} watchers ({} events each, {streams} streams: each resumed from its last revision), in order, none twice, \
         {checked} acknowledged writes found, the same events between revisions {from} and {to}",
        watches.len(),
        events.join("/")
    );
    for w in &idle {
        summary.push_str(&format!(
            "; member {}'s watcher opened no stream while the load ran (away or a learner: {})",
            w.member + 1,
            w.last_error.as_deref().unwrap_or("no error")
        ));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(revision: i64, key: &str, value: &str) -> Event {
        Event { revision, key: key.into(), value: value.into() }
    }
    fn acked(revision: i64, key: &str, value: &str) -> Op {
        Op {
            client: 0,
            key: key.into(),
            action: Action::Write(value.into()),
            invoke_us: 0,
            return_us: Some(1),
            revision: Some(revision),
        }
    }
    fn log(member: usize, base: i64, events: Vec<Event>) -> WatchLog {
        WatchLog { member, base: Some(base), event_count: events.len(), events, streams: 1, ..Default::default() }
    }

    #[test]
    fn complete_ordered_agreeing_watches_pass() {
        let h = [acked(5, "a", "1"), acked(6, "b", "2")];
        let w = [log(0, 4, vec![ev(5, "a", "1"), ev(6, "b", "2")]), log(1, 4, vec![ev(5, "a", "1")])];
        let ok = judge(&w, &h).unwrap();
        assert!(ok.contains("2 watchers") && ok.contains("3 acknowledged"), "{ok}");
    }

    #[test]
    fn missing_duplicated_reordered_and_diverging_events_fail() {
        let h = [acked(5, "a", "1"), acked(6, "b", "2"), acked(7, "c", "3")];
        let full = vec![ev(5, "a", "1"), ev(6, "b", "2"), ev(7, "c", "3")];
        let missing = judge(&[log(0, 4, vec![ev(5, "a", "1"), ev(7, "c", "3")])], &h).unwrap_err();
        assert!(missing.contains("never arrived") && missing.contains("b"), "{missing}");
        let twice = judge(&[log(0, 4, vec![ev(5, "a", "1"), ev(5, "a", "1"), ev(6, "b", "2")])], &h).unwrap_err();
        assert!(twice.contains("out of order or twice"), "{twice}");
        let reordered = judge(&[log(0, 4, vec![ev(6, "b", "2"), ev(5, "a", "1")])], &h).unwrap_err();
        assert!(reordered.contains("out of order"), "{reordered}");
        let wrong_value = judge(&[log(0, 4, vec![ev(5, "a", "1"), ev(6, "b", "x"), ev(7, "c", "3")])], &h).unwrap_err();
        assert!(wrong_value.contains("never arrived"), "{wrong_value}");
        // An unacknowledged write (its outcome unknown) seen by one watcher only.
        let mut other = full.clone();
        other.push(ev(8, "d", "4"));
        let mut mine = full.clone();
        mine.push(ev(8, "d", "5"));
        let diverge = judge(&[log(0, 4, other), log(1, 4, mine)], &h).unwrap_err();
        assert!(diverge.contains("disagree") && diverge.contains("Some(8)"), "{diverge}");
        let mut compacted = log(0, 4, full);
        compacted.compacted = Some(6);
        assert!(judge(&[compacted], &h).unwrap_err().contains("compacted"));
        let never = WatchLog { last_error: Some("connection refused".into()), ..Default::default() };
        assert!(judge(std::slice::from_ref(&never), &h).unwrap_err().contains("connection refused"));
        // Named, not failed, beside one that watched.
        let fine = judge(&[log(0, 4, vec![ev(5, "a", "1"), ev(6, "b", "2"), ev(7, "c", "3")]), never], &h).unwrap();
        assert!(fine.contains("1 watchers") && fine.contains("opened no stream"), "{fine}");
    }
}
