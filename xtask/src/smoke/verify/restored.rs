//! The check of a restored keyspace against what the clients saw: after a disaster recovery,
//! the load's keys must be the store's state at one revision R (a snapshot's revision, or the
//! survivor's when it was forced into a new cluster). In: an epoch's history (every write with
//! its value, revision and ack time, or no return when its outcome is unknown), the keys read
//! back from the restored cluster (value and `mod_revision`) and R. Out: what was lost (the
//! acknowledged writes after R and the seconds they span), or the violation naming the keys.
//! Pure: no process, no network.

use std::collections::BTreeMap;

use super::history::{Action, Op};

/// One key as the restored cluster holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub value: String,
    pub mod_revision: i64,
}

/// What a restore to revision R kept and lost of an epoch's acknowledged writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loss {
    /// Acknowledged writes at or before R (each present, or overwritten by a later write at or
    /// before R).
    pub kept: usize,
    /// Acknowledged writes after R: gone, as a restore to R must lose them.
    pub lost: usize,
    /// Ack time (seconds since the load started) of the first and last lost write.
    pub first_lost_s: Option<f64>,
    pub last_lost_s: Option<f64>,
    /// Keys read back.
    pub keys: usize,
}

impl Loss {
    /// The seconds the lost writes were acknowledged over (0 when none was lost).
    pub fn span_s(&self) -> f64 {
        match (self.first_lost_s, self.last_lost_s) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        }
    }

    /// For a check's reason.
    pub fn summary(&self, revision: i64) -> String {
        let lost = match (self.first_lost_s, self.last_lost_s) {
            (Some(a), Some(b)) => format!(
                "{} acknowledged writes after it lost, acknowledged from {a:.1} s to {b:.1} s of the load ({:.1} s)",
                self.lost,
                self.span_s()
            ),
            _ => "no acknowledged write lost".into(),
        };
        format!(
            "{} keys: the store at revision {revision} exactly ({} acknowledged writes at or before it there); {lost}",
            self.keys, self.kept
        )
    }
}

/// Whether `restored` is the store's state at revision `revision` for the keys of `history`:
/// every key's value is one the history wrote to it (with the revision the write was
/// acknowledged at, when it was), none changed after `revision`, and every key's last
/// acknowledged write at or before `revision` is there (or a write of unknown outcome that
/// followed it, still at or before `revision`). The caller reads back only the epoch's keys.
pub fn judge(history: &[Op], restored: &BTreeMap<String, Restored>, revision: i64) -> Result<Loss, String> {
    // Per key and value: the write, with its revision when acknowledged (values are unique).
    let mut writes: BTreeMap<(&str, &str), Option<(i64, u64)>> = BTreeMap::new();
    for op in history {
        if let Action::Write(v) = &op.action {
            let acked = match (op.return_us, op.revision) {
                (Some(at), Some(rev)) => Some((rev, at)),
                _ => None,
            };
            writes.insert((op.key.as_str(), v.as_str()), acked);
        }
    }
    let mut violations = Vec::new();
    for (key, kv) in restored {
        if kv.mod_revision > revision {
            violations.push(format!("{key} was changed at revision {} after {revision}", kv.mod_revision));
            continue;
        }
        match writes.get(&(key.as_str(), kv.value.as_str())) {
            None => violations.push(format!("{key} = {:?}, a value no client wrote to it", kv.value)),
            Some(Some((rev, _))) if *rev != kv.mod_revision => violations.push(format!(
                "{key} = {:?} at revision {}, acknowledged at revision {rev}",
                kv.value, kv.mod_revision
            )),
            Some(_) => {}
        }
    }
    // Each key's last acknowledged write at or before R must be there (or overwritten since by
    // a write of unknown outcome, at or before R: checked above).
    let mut last: BTreeMap<&str, (i64, &str)> = BTreeMap::new();
    let mut loss = Loss { keys: restored.len(), ..Loss::default() };
    for ((key, value), acked) in &writes {
        let Some((rev, at)) = acked else { continue };
        if *rev > revision {
            loss.lost += 1;
            let s = *at as f64 / 1e6;
            loss.first_lost_s = Some(loss.first_lost_s.map_or(s, |f: f64| f.min(s)));
            loss.last_lost_s = Some(loss.last_lost_s.map_or(s, |l: f64| l.max(s)));
            continue;
        }
        loss.kept += 1;
        if last.get(key).is_none_or(|(r, _)| r < rev) {
            last.insert(key, (*rev, value));
        }
    }
    for (key, (rev, value)) in last {
        match restored.get(key) {
            None => violations.push(format!("{key} is missing: {value:?} was acknowledged at revision {rev}")),
            Some(kv) if kv.mod_revision < rev => violations.push(format!(
                "{key} = {:?} at revision {}, older than {value:?} acknowledged at revision {rev}",
                kv.value, kv.mod_revision
            )),
            Some(_) => {}
        }
    }
    if violations.is_empty() {
        return Ok(loss);
    }
    Err(format!(
        "the restored keys are not the store at revision {revision}: {} violation(s): {}",
        violations.len(),
        violations.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
    ))
}

/// Whether `snapshot` (a file `etcdctl snapshot save` wrote) ends with the SHA-256 of what
/// precedes it, as etcdctl appends it: a truncated or damaged snapshot does not, although
/// `etcdctl snapshot status` may still read it (3.4.9 read one cut in half).
pub fn checksum_matches(snapshot: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let Some(split) = snapshot.len().checked_sub(32).filter(|n| *n > 0) else { return false };
    let (db, sum) = snapshot.split_at(split);
    Sha256::digest(db).as_slice() == sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_holds_its_own_checksum_and_a_cut_one_does_not() {
        use sha2::{Digest, Sha256};
        let db = vec![7u8; 8192];
        let mut snap = db.clone();
        snap.extend_from_slice(&Sha256::digest(&db));
        assert!(checksum_matches(&snap));
        assert!(!checksum_matches(&snap[..snap.len() / 2]));
        let mut flipped = snap.clone();
        flipped[100] ^= 1;
        assert!(!checksum_matches(&flipped));
        assert!(!checksum_matches(&db) && !checksum_matches(&[]) && !checksum_matches(&snap[8192..]));
    }

    fn write(key: &str, value: &str, revision: Option<i64>, at_s: u64) -> Op {
        Op {
            client: 0,
            key: key.into(),
            action: Action::Write(value.into()),
            invoke_us: at_s * 1_000_000 - 1,
            return_us: revision.map(|_| at_s * 1_000_000),
            revision,
        }
    }
    fn kv(value: &str, mod_revision: i64) -> Restored {
        Restored { value: value.into(), mod_revision }
    }
    fn keys(list: &[(&str, Restored)]) -> BTreeMap<String, Restored> {
        list.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    /// Own keys a, b, c at revisions 5, 6, 9; a shared key s written at 7 and 8; an unknown
    /// write to s.
    fn history() -> Vec<Op> {
        vec![
            write("a", "1", Some(5), 1),
            write("b", "2", Some(6), 2),
            write("s", "x", Some(7), 3),
            write("s", "y", Some(8), 4),
            write("s", "u", None, 4),
            write("c", "3", Some(9), 5),
            write("d", "4", Some(10), 7),
        ]
    }

    #[test]
    fn the_state_at_r_passes_and_the_writes_after_it_are_the_loss() {
        let at8 = keys(&[("a", kv("1", 5)), ("b", kv("2", 6)), ("s", kv("y", 8))]);
        let loss = judge(&history(), &at8, 8).unwrap();
        assert_eq!((loss.kept, loss.lost, loss.keys), (4, 2, 3));
        assert_eq!((loss.first_lost_s, loss.last_lost_s), (Some(5.0), Some(7.0)));
        assert_eq!(loss.span_s(), 2.0);
        assert!(loss.summary(8).contains("2 acknowledged writes after it lost"), "{}", loss.summary(8));
        // Everything kept: nothing lost, a survivor in sync.
        let all =
            keys(&[("a", kv("1", 5)), ("b", kv("2", 6)), ("s", kv("y", 8)), ("c", kv("3", 9)), ("d", kv("4", 10))]);
        let loss = judge(&history(), &all, 10).unwrap();
        assert_eq!((loss.lost, loss.span_s()), (0, 0.0));
        assert!(loss.summary(10).contains("no acknowledged write lost"));
        // A write of unknown outcome that landed after the last acknowledged one, before R.
        let unknown = keys(&[("a", kv("1", 5)), ("b", kv("2", 6)), ("s", kv("u", 9))]);
        assert!(judge(&history(), &unknown, 9).is_err(), "c at 9 acknowledged, missing");
        let unknown = keys(&[("a", kv("1", 5)), ("b", kv("2", 6)), ("s", kv("u", 8))]);
        assert_eq!(judge(&history(), &unknown, 8).unwrap().lost, 2);
    }

    #[test]
    fn a_keyspace_that_is_no_single_revision_fails_naming_the_keys() {
        // b lost although acknowledged before R.
        let missing = keys(&[("a", kv("1", 5)), ("s", kv("y", 8))]);
        let e = judge(&history(), &missing, 8).unwrap_err();
        assert!(e.contains("b is missing") && e.contains("revision 6"), "{e}");
        // c (revision 9) present in a restore to 8: a write after R.
        let after = keys(&[("a", kv("1", 5)), ("b", kv("2", 6)), ("s", kv("y", 8)), ("c", kv("3", 9))]);
        let e = judge(&history(), &after, 8).unwrap_err();
        assert!(e.contains("c was changed at revision 9 after 8"), "{e}");
        // The shared key at an older value than its last acknowledged write before R.
        let stale = keys(&[("a", kv("1", 5)), ("b", kv("2", 6)), ("s", kv("x", 7))]);
        let e = judge(&history(), &stale, 8).unwrap_err();
        assert!(e.contains("s = \"x\" at revision 7, older than \"y\""), "{e}");
        // A value nobody wrote, and a value at another revision than its acknowledgement.
        let foreign = keys(&[("a", kv("zzz", 5)), ("b", kv("2", 4)), ("s", kv("y", 8))]);
        let e = judge(&history(), &foreign, 8).unwrap_err();
        assert!(e.contains("a value no client wrote") && e.contains("acknowledged at revision 6"), "{e}");
    }
}
