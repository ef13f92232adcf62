//! Is what the clients saw linearizable? A Wing-Gong-Lowe checker (with the memoization of
//! Horn and Kroening, "Faster linearizability checking via P-compositionality", 2015) for a
//! key-value store seen as one register per key: linearizability is local (P-compositional), so
//! each key's operations are checked alone. In: every client operation with its invoke and return
//! time, its result, and no return time for a write whose outcome is unknown (failed or timed
//! out: it may or may not have taken effect, at any time after its invocation). Out: a
//! [`Verdict`] with, for a violation, the key, how far the search got and the operation it could
//! not place, with the operations around it.
//!
//! Also here: revisions must never go backwards for a client (each answer carries the store's
//! revision; a linearizable store never shows a client an older one after a newer one).
//!
//! Why our own: `stateright`'s `LinearizabilityTester` searches without memoization and blows up
//! on histories of thousands of operations; `todc-utils` (0.1.1, 2023) has a WGL checker but
//! answers only yes or no (no violating operations to report), has no bound on its search, and
//! panics on a malformed history. This one is bounded (`max_steps`) and explains itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use super::history::{Action, Op};

/// A key's operations that no sequential order explains.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub key: String,
    /// The key's operations, and how many the deepest partial order placed.
    pub ops: usize,
    pub placed: usize,
    /// The operation that could not be placed next, and what the register held then.
    pub blocked: Op,
    pub register: Option<String>,
    /// The operations whose interval overlaps the blocked one's (up to 10).
    pub around: Vec<Op>,
}

/// The checker's answer for a whole history.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub ops: usize,
    pub keys: usize,
    pub unknown_writes: usize,
    pub steps: u64,
    pub millis: f64,
    /// The first key (in key order) whose history is not linearizable.
    pub violation: Option<Violation>,
    /// A key whose search went past the step bound: no verdict for it.
    pub gave_up: Option<String>,
}

impl Verdict {
    pub fn summary(&self) -> String {
        let head = format!(
            "{} operations on {} keys ({} writes of unknown outcome) checked in {:.0} ms, {} search steps",
            self.ops, self.keys, self.unknown_writes, self.millis, self.steps
        );
        match (&self.violation, &self.gave_up) {
            (Some(v), _) => format!(
                "NOT linearizable: {head}; key {}: no order explains its {} operations (the deepest placed {}); \
                 cannot place {} while the register holds {:?}",
                v.key,
                v.ops,
                v.placed,
                describe(&v.blocked),
                v.register
            ),
            (None, Some(key)) => format!("no verdict: {head}; key {key} exceeded the search bound"),
            (None, None) => format!("linearizable: {head}"),
        }
    }
}

/// "client 3 read \"v7\" [1200..1450 us]".
pub fn describe(op: &Op) -> String {
    let what = match &op.action {
        Action::Write(v) => format!("write {v:?}"),
        Action::Read(Some(v)) => format!("read {v:?}"),
        Action::Read(None) => "read (absent)".into(),
    };
    let end = op.return_us.map_or("unknown outcome".to_string(), |r| format!("{r} us"));
    format!("client {} {what} [{} us .. {end}]", op.client, op.invoke_us)
}

/// Checks every key of `history`; each key's search is bounded by `max_steps`.
pub fn check(history: &[Op], max_steps: u64) -> Verdict {
    let started = Instant::now();
    // A write of unknown outcome whose value nobody read can always be placed after everything
    // else (its interval never ends): leaving it out changes no verdict, and spares the search
    // one pending operation each (retries under a long outage make hundreds).
    let read: HashSet<(&str, &str)> = history
        .iter()
        .filter_map(|o| match &o.action {
            Action::Read(Some(v)) => Some((o.key.as_str(), v.as_str())),
            _ => None,
        })
        .collect();
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        if let (Action::Write(v), None) = (&op.action, op.return_us) {
            if !read.contains(&(op.key.as_str(), v.as_str())) {
                continue;
            }
        }
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut verdict = Verdict {
        ops: history.len(),
        keys: by_key.len(),
        unknown_writes: history.iter().filter(|o| o.return_us.is_none()).count(),
        steps: 0,
        millis: 0.0,
        violation: None,
        gave_up: None,
    };
    for (key, ops) in by_key {
        let (steps, outcome) = check_key(&ops, max_steps);
        verdict.steps += steps;
        match outcome {
            KeyOutcome::Linearizable => {}
            KeyOutcome::GaveUp => {
                verdict.gave_up.get_or_insert_with(|| key.to_string());
            }
            KeyOutcome::Violation { placed, blocked, register } => {
                let b = ops[blocked];
                let end = |o: &Op| o.return_us.unwrap_or(u64::MAX);
                let around = ops
                    .iter()
                    .filter(|o| **o != b && o.invoke_us <= end(b) && b.invoke_us <= end(o))
                    .take(10)
                    .map(|o| (*o).clone())
                    .collect();
                verdict.violation = Some(Violation {
                    key: key.to_string(),
                    ops: ops.len(),
                    placed,
                    blocked: b.clone(),
                    register,
                    around,
                });
                break;
            }
        }
    }
    verdict.millis = started.elapsed().as_secs_f64() * 1000.0;
    verdict
}

enum KeyOutcome {
    Linearizable,
    GaveUp,
    /// `blocked` indexes the key's operations; `register` is the value it held then.
    Violation {
        placed: usize,
        blocked: usize,
        register: Option<String>,
    },
}

/// One event of a key's history: an operation's call or its return.
struct Event {
    op: usize,
    is_return: bool,
    /// For a call: the index of its return event.
    partner: usize,
}

/// WGL on one key. The events (calls and returns, by time; at equal times calls first, so that
/// touching intervals count as concurrent) form a doubly linked list; an operation is placed
/// ("lifted" out of the list) when the register allows it and the pair (placed set, register)
/// is new; reaching a return whose call is still in the list means the last placement was wrong:
/// undo it and try the next call.
fn check_key<'a>(ops: &[&'a Op], max_steps: u64) -> (u64, KeyOutcome) {
    // Registers hold value ids (None: absent); values are interned.
    let mut ids: HashMap<&'a str, u32> = HashMap::new();
    let mut values: Vec<&'a str> = Vec::new();
    // Per operation: is it a write, and the value it writes or read.
    let mut actions: Vec<(bool, Option<u32>)> = Vec::with_capacity(ops.len());
    for o in ops {
        let (is_write, v) = match &o.action {
            Action::Write(v) => (true, Some(v.as_str())),
            Action::Read(v) => (false, v.as_deref()),
        };
        let id = v.map(|v| {
            *ids.entry(v).or_insert_with(|| {
                values.push(v);
                values.len() as u32 - 1
            })
        });
        actions.push((is_write, id));
    }

    // Events in time order; index 0 is the list head (a sentinel).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, o) in ops.iter().enumerate() {
        order.push((o.invoke_us, false, i));
        order.push((o.return_us.unwrap_or(u64::MAX), true, i));
    }
    order.sort();
    let n = order.len();
    let mut events: Vec<Event> = Vec::with_capacity(n + 1);
    events.push(Event { op: usize::MAX, is_return: false, partner: 0 });
    let mut return_at = vec![0usize; ops.len()];
    for (k, (_, is_return, op)) in order.iter().enumerate() {
        if *is_return {
            return_at[*op] = k + 1;
        }
        events.push(Event { op: *op, is_return: *is_return, partner: 0 });
    }
    for e in events.iter_mut().skip(1) {
        if !e.is_return {
            e.partner = return_at[e.op];
        }
    }
    // next/prev over 0..=n; n + 1 is the tail sentinel.
    let tail = n + 1;
    let mut next: Vec<usize> = (1..=n + 1).chain([tail]).collect();
    let mut prev: Vec<usize> = [0].into_iter().chain(0..=n).collect();
    let unlink = |e: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, q) = (prev[e], next[e]);
        next[p] = q;
        prev[q] = p;
    };
    let relink = |e: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, q) = (prev[e], next[e]);
        next[p] = e;
        prev[q] = e;
    };

    let words = ops.len().div_ceil(64);
    let mut placed = vec![0u64; words];
    let mut register: Option<u32> = None;
    let mut cache: HashSet<(Vec<u64>, Option<u32>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u32>)> = Vec::new();
    let mut deepest: Option<(usize, usize, Option<u32>)> = None;
    let mut steps = 0u64;
    let mut e = next[0];
    while next[0] != tail {
        steps += 1;
        if steps > max_steps {
            return (steps, KeyOutcome::GaveUp);
        }
        let ev = &events[e];
        if !ev.is_return {
            let (is_write, value) = actions[ev.op];
            let allowed = is_write || value == register;
            if allowed {
                let after = if is_write { value } else { register };
                placed[ev.op / 64] |= 1 << (ev.op % 64);
                if cache.insert((placed.clone(), after)) {
                    stack.push((e, register));
                    register = after;
                    unlink(e, &mut next, &mut prev);
                    unlink(ev.partner, &mut next, &mut prev);
                    e = next[0];
                    continue;
                }
                placed[ev.op / 64] &= !(1 << (ev.op % 64));
            }
            e = next[e];
        } else {
            // This operation had to be placed before its return, and could not be.
            if deepest.is_none_or(|(depth, _, _)| stack.len() >= depth) {
                deepest = Some((stack.len(), ev.op, register));
            }
            let Some((call, before)) = stack.pop() else {
                let (depth, blocked, held) = deepest.unwrap_or((0, ev.op, register));
                let register = held.map(|id| values[id as usize].to_string());
                return (steps, KeyOutcome::Violation { placed: depth, blocked, register });
            };
            let op = events[call].op;
            relink(events[call].partner, &mut next, &mut prev);
            relink(call, &mut next, &mut prev);
            placed[op / 64] &= !(1 << (op % 64));
            register = before;
            e = next[call];
        }
    }
    (steps, KeyOutcome::Linearizable)
}

/// Each client's answers, in the order it got them, carry revisions that never go backwards.
/// Returns how many answers were compared, or the first regression.
pub fn revisions_never_go_back(history: &[Op]) -> Result<usize, String> {
    let mut by_client: BTreeMap<usize, Vec<&Op>> = BTreeMap::new();
    for op in history.iter().filter(|o| o.return_us.is_some() && o.revision.is_some()) {
        by_client.entry(op.client).or_default().push(op);
    }
    let mut compared = 0;
    for ops in by_client.values_mut() {
        ops.sort_by_key(|o| o.return_us);
        for pair in ops.windows(2) {
            compared += 1;
            let (a, b) = (pair[0], pair[1]);
            if b.revision < a.revision {
                return Err(format!(
                    "revision went back from {:?} to {:?}: {} then {}",
                    a.revision,
                    b.revision,
                    describe(a),
                    describe(b)
                ));
            }
        }
    }
    Ok(compared)
}

/// How many search steps one key may take: far above what the smoke load's histories need
/// (thousands of operations per key check in well under a million), low enough to end in
/// seconds on a pathological one.
pub const MAX_STEPS: u64 = 20_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn w(client: usize, v: &str, from: u64, to: u64) -> Op {
        Op {
            client,
            key: "k".into(),
            action: Action::Write(v.into()),
            invoke_us: from,
            return_us: Some(to),
            revision: None,
        }
    }
    /// A write of unknown outcome.
    fn wu(client: usize, v: &str, from: u64) -> Op {
        Op { return_us: None, ..w(client, v, from, 0) }
    }
    fn r(client: usize, v: Option<&str>, from: u64, to: u64) -> Op {
        Op {
            client,
            key: "k".into(),
            action: Action::Read(v.map(String::from)),
            invoke_us: from,
            return_us: Some(to),
            revision: None,
        }
    }
    fn ok(h: &[Op]) -> bool {
        let v = check(h, 1_000_000);
        assert!(v.gave_up.is_none());
        v.violation.is_none()
    }

    #[test]
    fn sequential_and_concurrent_histories_pass() {
        assert!(ok(&[r(0, None, 0, 1), w(0, "a", 2, 3), r(1, Some("a"), 4, 5)]));
        // Concurrent writes may take effect in either order; reads during them see either.
        assert!(ok(&[
            w(0, "a", 0, 10),
            w(1, "b", 0, 10),
            r(2, Some("b"), 1, 2),
            r(2, Some("a"), 3, 4),
            r(3, Some("a"), 11, 12)
        ]));
        // Touching intervals are concurrent.
        assert!(ok(&[w(0, "a", 0, 5), r(1, None, 5, 6)]));
        assert!(ok(&[]));
    }

    #[test]
    fn the_classic_violations_are_found() {
        // Stale read: b is acknowledged, a later read sees a.
        let stale = [w(0, "a", 0, 1), w(0, "b", 2, 3), r(1, Some("a"), 4, 5)];
        let v = check(&stale, 1_000).violation.expect("stale read");
        assert_eq!(v.blocked.action, Action::Read(Some("a".into())));
        assert_eq!(v.register.as_deref(), Some("b"));
        // Lost write: acknowledged, then the key reads as absent.
        assert!(!ok(&[w(0, "a", 0, 1), r(1, None, 2, 3)]));
        // Reordered writes: a before b in real time, reads see b then a.
        assert!(!ok(&[w(0, "a", 0, 1), w(1, "b", 2, 3), r(2, Some("b"), 4, 5), r(2, Some("a"), 6, 7)]));
        // A value nobody wrote.
        assert!(!ok(&[w(0, "a", 0, 1), r(1, Some("z"), 2, 3)]));
        // A read that sees a write not yet invoked.
        assert!(!ok(&[r(1, Some("a"), 0, 1), w(0, "a", 2, 3)]));
    }

    #[test]
    fn a_write_of_unknown_outcome_may_or_may_not_have_happened_but_not_both() {
        assert!(ok(&[wu(0, "a", 0), r(1, None, 5, 6)]));
        assert!(ok(&[wu(0, "a", 0), r(1, Some("a"), 5, 6)]));
        assert!(ok(&[wu(0, "a", 0), r(1, None, 5, 6), r(1, Some("a"), 7, 8)]));
        // Seen, then gone again, with nothing else written: not explainable.
        assert!(!ok(&[wu(0, "a", 0), r(1, Some("a"), 5, 6), r(1, None, 7, 8)]));
        // A retried write: the failed attempt and the retry both took effect around another write.
        assert!(ok(&[
            wu(0, "a", 0),
            w(1, "b", 3, 4),
            w(0, "a", 5, 6),
            r(2, Some("a"), 1, 2),
            r(2, Some("b"), 4, 5),
            r(2, Some("a"), 7, 8)
        ]));
    }

    #[test]
    fn keys_are_independent_and_the_verdict_names_the_bad_one() {
        let mut h = vec![w(0, "a", 0, 1), r(1, Some("a"), 2, 3)];
        let mut other = vec![w(0, "x", 0, 1), r(1, None, 2, 3)];
        for o in &mut other {
            o.key = "j".into();
        }
        h.extend(other);
        let v = check(&h, 1_000);
        assert_eq!((v.ops, v.keys), (4, 2));
        let bad = v.violation.as_ref().expect("key j lost its write");
        assert_eq!(bad.key, "j");
        assert!(v.summary().starts_with("NOT linearizable") && v.summary().contains("key j"), "{}", v.summary());
    }

    #[test]
    fn a_long_concurrent_history_is_checked_within_the_bound() {
        // 12 clients, 4000 operations on one key, writes and reads overlapping in windows.
        let mut h = Vec::new();
        let mut last = None::<String>;
        for i in 0..4000u64 {
            let client = (i % 12) as usize;
            let t = i * 10;
            if i % 3 == 0 {
                let v = format!("v{i}");
                h.push(w(client, &v, t, t + 25));
                last = Some(v);
            } else {
                // A read overlapping the last write sees it (its effect point is at its invoke).
                h.push(r(client, last.as_deref(), t + 1, t + 30));
            }
        }
        let v = check(&h, 5_000_000);
        assert!(v.violation.is_none() && v.gave_up.is_none(), "{}", v.summary());
        // And the step bound is a bound.
        assert!(check(&h, 100).gave_up.is_some());
    }

    #[test]
    fn revisions_going_back_are_found() {
        let mut a = w(0, "a", 0, 1);
        a.revision = Some(7);
        let mut b = r(0, Some("a"), 2, 3);
        b.revision = Some(7);
        let mut c = r(0, Some("a"), 4, 5);
        c.revision = Some(6);
        assert_eq!(revisions_never_go_back(&[a.clone(), b.clone()]), Ok(1));
        let err = revisions_never_go_back(&[a, b, c]).unwrap_err();
        assert!(err.contains("from Some(7) to Some(6)"), "{err}");
    }
}
