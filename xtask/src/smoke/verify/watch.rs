//! The watch check: each watcher's events held to etcd's watch guarantees. In: what every
//! watcher saw ([`WatchLog`]) and the load's history. Out: a summary, or the first broken
//! guarantee: events ordered by revision, none twice, none missing (every acknowledged write of
//! the load in the watched range is there, with its value), and every watcher saw the same
//! events. Pure: no process, no network.

use std::collections::{BTreeMap, BTreeSet};

use super::history::{Action, Event, Op, WatchLog};

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
