//! A soak's schedule, drawn from a seed: which fault, on which member, when, for how long. The
//! same seed, duration and profile give the same schedule on any machine and in any later
//! version of this file that keeps [`SplitMix64`] and the draw order (a schedule printed in a
//! report can be replayed from its seed). In: seed, duration, profile. Out: the faults, and
//! their text (`--plan`), one line each. Which member "the leader" is gets resolved when the
//! fault is applied.
//!
//! `quorum-safe` takes at most one member out at a time (faults overlap only on one member: a
//! pause, a partition or a slow disk held within another of them), so a majority stays up and
//! no request may fail; `any` also draws `quorum-loss` windows (two members stopped at once),
//! inside which requests may fail.

use std::fmt;

/// The faults a soak draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The member cut off from its peers (both directions), then healed.
    Partition,
    /// The member's etcd SIGSTOPped, then continued.
    Pause,
    /// The member's etcd SIGKILLed, then started again on its data.
    Kill,
    /// The leadership moved to another member (`etcdctl move-leader`).
    LeaderTransfer,
    /// The history compacted up to what every watcher has seen, each member defragmented in
    /// turn.
    CompactDefrag,
    /// Two members stopped at once (`any` only): the quorum is lost, then regained.
    QuorumLoss,
    /// A share of the leader's packets to a follower dropped (one way), then healed.
    OneWayLoss,
    /// Every packet the member sends its peers held a while (netem's delay), then healed.
    PeerDelay,
    /// The member's writes to its data disk held to a few a second (the kernel's block-I/O
    /// throttle), then released.
    SlowDisk,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Partition => "partition",
            Kind::Pause => "pause",
            Kind::Kill => "kill",
            Kind::LeaderTransfer => "leader-transfer",
            Kind::CompactDefrag => "compact-defrag",
            Kind::QuorumLoss => "quorum-loss",
            Kind::OneWayLoss => "one-way-loss",
            Kind::PeerDelay => "peer-delay",
            Kind::SlowDisk => "slow-disk",
        }
    }

    /// Whether its window may take the quorum away (requests may fail inside it).
    pub fn breaks_quorum(self) -> bool {
        self == Kind::QuorumLoss
    }
}

/// Which member a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Leader,
    Follower,
    /// Every member (compaction and defragmentation).
    All,
    /// Two followers (quorum loss).
    TwoFollowers,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Leader => "leader",
            Target::Follower => "follower",
            Target::All => "all",
            Target::TwoFollowers => "two-followers",
        }
    }
}

/// How much a schedule may take away at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// At most one member out at a time: a majority stays up.
    #[default]
    QuorumSafe,
    /// Also two members at once: the quorum is lost in those windows.
    Any,
}

/// One fault of the schedule.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Seconds from the soak's start.
    pub at_s: f64,
    pub kind: Kind,
    pub target: Target,
    /// How long it is held before it is healed (0 for an instant one: a transfer).
    pub hold_s: f64,
    /// How hard, for the kinds that have a degree (0 for the others): percent of packets lost,
    /// milliseconds of delay, writes a second the disk takes.
    pub level: u32,
    /// Held within the fault before it, on the same member (it starts after that one and ends
    /// before it): faults overlap only so, which keeps a majority up.
    #[serde(default)]
    pub within_previous: bool,
}

impl Fault {
    /// The degree in words, with its unit ("" for kinds without one).
    pub fn level_text(&self) -> String {
        match self.kind {
            Kind::OneWayLoss => format!("{}% lost", self.level),
            Kind::PeerDelay => format!("{} ms", self.level),
            Kind::SlowDisk => format!("{} writes/s", self.level),
            _ => String::new(),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>7.1} s  {:<16} {:<14} hold {:.1} s",
            self.at_s,
            self.kind.as_str(),
            self.target.as_str(),
            self.hold_s
        )?;
        match self.level_text() {
            t if t.is_empty() => {}
            t => write!(f, "  {t}")?,
        }
        if self.within_previous {
            write!(f, "  (within the fault before, on its member)")?;
        }
        Ok(())
    }
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a 64-bit state and a fixed output function, so a
/// seed's stream never changes with a dependency's version. Written here for that reason.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `[lo, hi)` with a tenth of a second's resolution.
    fn seconds(&mut self, lo: f64, hi: f64) -> f64 {
        let tenths = ((hi - lo) * 10.0) as u64;
        lo + (self.next_u64() % tenths.max(1)) as f64 / 10.0
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next_u64() % from.len() as u64) as usize]
    }
}

/// The quiet time before the first fault and after each heal, and how long faults are held.
const GAP_S: (f64, f64) = (3.0, 8.0);
const HOLD_S: (f64, f64) = (2.0, 6.0);
/// The degrees drawn: packets lost (percent), peer delay (ms: under a heartbeat, a few, twice
/// etcd's default election timeout), writes a second of a slow disk (each fsync then waits
/// for several: far past the fsync alert's 0.5 s at 4).
const LOSS_PERCENT: [u32; 3] = [20, 40, 70];
const DELAY_MS: [u32; 3] = [50, 400, 2000];
const DISK_IOPS: [u32; 2] = [4, 20];
/// A fault is drawn only if it and the gap after it end before the soak does.
const TAIL_S: f64 = 5.0;

/// The schedule of `duration_s` seconds for `seed` under `profile`: faults one after another
/// (never overlapping), each after a quiet gap.
pub fn plan(seed: u64, duration_s: f64, profile: Profile) -> Vec<Fault> {
    let mut rng = SplitMix64::new(seed);
    let mut kinds = vec![
        Kind::Partition,
        Kind::Pause,
        Kind::Kill,
        Kind::LeaderTransfer,
        Kind::CompactDefrag,
        Kind::OneWayLoss,
        Kind::PeerDelay,
        Kind::SlowDisk,
    ];
    if profile == Profile::Any {
        kinds.push(Kind::QuorumLoss);
    }
    let mut out = Vec::new();
    let mut t = 0.0;
    // Times kept to tenths of a second, as drawn (no sums' rounding noise in soak.json).
    let tenths = |x: f64| (x * 10.0).round() / 10.0;
    loop {
        t = tenths(t + rng.seconds(GAP_S.0, GAP_S.1));
        let kind = rng.pick(&kinds);
        let target = match kind {
            Kind::CompactDefrag => Target::All,
            Kind::QuorumLoss => Target::TwoFollowers,
            // The leader's packets to one follower (the leader's heartbeats and appends).
            Kind::LeaderTransfer | Kind::OneWayLoss => Target::Leader,
            _ => rng.pick(&[Target::Leader, Target::Follower]),
        };
        let hold_s = match kind {
            Kind::LeaderTransfer | Kind::CompactDefrag => 0.0,
            _ => rng.seconds(HOLD_S.0, HOLD_S.1),
        };
        let level = match kind {
            Kind::OneWayLoss => rng.pick(&LOSS_PERCENT),
            Kind::PeerDelay => rng.pick(&DELAY_MS),
            Kind::SlowDisk => rng.pick(&DISK_IOPS),
            _ => 0,
        };
        if t + hold_s + TAIL_S > duration_s {
            return out;
        }
        out.push(Fault { at_s: t, kind, target, hold_s, level, within_previous: false });
        // One in three of the faults that hold a member has another within it, on that member.
        if NESTS.contains(&kind) && hold_s >= 3.0 && rng.next_u64().is_multiple_of(3) {
            let others: Vec<Kind> = NESTS.iter().copied().filter(|k| *k != kind).collect();
            let inner = rng.pick(&others);
            let at_s = tenths(t + rng.seconds(0.5, hold_s - 1.5));
            let inner_hold = rng.seconds(1.0, t + hold_s - at_s - 0.3);
            let level = if inner == Kind::SlowDisk { rng.pick(&DISK_IOPS) } else { 0 };
            out.push(Fault { at_s, kind: inner, target, hold_s: inner_hold, level, within_previous: true });
        }
        t = tenths(t + hold_s);
    }
}

/// The kinds that may hold a member while another of them does too (each undone on its own:
/// one netfilter fault at a time, since a heal removes every rule of the member's namespace).
const NESTS: [Kind; 3] = [Kind::Partition, Kind::Pause, Kind::SlowDisk];

/// `--plan`'s text: the seed and profile, then one line per fault.
pub fn render(seed: u64, duration_s: f64, profile: Profile, faults: &[Fault]) -> String {
    let mut s = format!(
        "soak: seed {seed}, {duration_s:.0} s, profile {}, {} faults\n",
        match profile {
            Profile::QuorumSafe => "quorum-safe",
            Profile::Any => "any",
        },
        faults.len()
    );
    for f in faults {
        s.push_str(&format!("{f}\n"));
    }
    s
}

/// A duration as the flags take it: `90s`, `30m`, `2h`, or seconds.
pub fn parse_duration(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("{text:?} is not a duration: write e.g. 90s, 30m or 2h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use s, m or h")),
    };
    if secs < 20 {
        return Err(format!("{text:?}: a soak needs at least 20 s (one fault and the quiet around it)"));
    }
    Ok(secs as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_its_schedule_and_another_seed_another() {
        let a = plan(42, 1800.0, Profile::QuorumSafe);
        assert_eq!(a, plan(42, 1800.0, Profile::QuorumSafe));
        assert_ne!(a, plan(43, 1800.0, Profile::QuorumSafe));
        // SplitMix64's first outputs for seed 0 as published with the algorithm.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn quorum_safe_never_overlaps_and_never_loses_the_quorum() {
        for seed in 0..50 {
            let faults = plan(seed, 600.0, Profile::QuorumSafe);
            assert!(faults.len() >= 20, "seed {seed}: {}", faults.len());
            for w in faults.windows(2) {
                if w[1].within_previous {
                    // Nested: on the same member, inside the one before, of another kind.
                    let (outer, inner) = (&w[0], &w[1]);
                    assert!(!outer.within_previous && outer.target == inner.target && outer.kind != inner.kind);
                    assert!(outer.at_s < inner.at_s && inner.at_s + inner.hold_s <= outer.at_s + outer.hold_s);
                    assert!(NESTS.contains(&outer.kind) && NESTS.contains(&inner.kind), "{w:?}");
                } else {
                    let before = if w[0].within_previous { 0.0 } else { GAP_S.0 };
                    assert!(w[0].at_s + w[0].hold_s + before <= w[1].at_s + 1e-9, "seed {seed}: {w:?}");
                }
            }
            assert!(faults.iter().all(|f| !f.kind.breaks_quorum()), "seed {seed}");
            let last = faults.last().unwrap();
            assert!(last.at_s + last.hold_s + TAIL_S <= 600.0);
            for f in faults.iter().filter(|f| !f.within_previous) {
                assert!((HOLD_S.0..HOLD_S.1).contains(&f.hold_s) || f.hold_s == 0.0, "{f}");
            }
        }
    }

    #[test]
    fn a_long_schedule_has_every_kind_and_any_adds_quorum_loss() {
        let kinds = |p| plan(7, 1800.0, p).iter().map(|f| f.kind).collect::<std::collections::BTreeSet<_>>();
        assert_eq!(kinds(Profile::QuorumSafe).len(), 8);
        assert!(kinds(Profile::Any).contains(&Kind::QuorumLoss));
        assert!(plan(7, 1800.0, Profile::QuorumSafe).iter().any(|f| f.within_previous), "no fault within another");
    }

    #[test]
    fn a_plan_reads_back_as_written() {
        let faults = plan(3, 600.0, Profile::Any);
        let json = serde_json::to_string(&faults).unwrap();
        let back: Vec<Fault> = serde_json::from_str(&json).unwrap();
        assert_eq!(render(3, 600.0, Profile::Any, &back), render(3, 600.0, Profile::Any, &faults));
        assert!(back.iter().zip(&faults).all(|(a, b)| (a.at_s - b.at_s).abs() < 1e-9 && a.kind == b.kind));
        assert!(json.contains("\"kind\":\"slow-disk\"") || json.contains("\"kind\":\"pause\""), "{json}");
    }

    #[test]
    fn durations_are_read_with_their_unit_or_refused() {
        assert_eq!(parse_duration("90s"), Ok(90.0));
        assert_eq!(parse_duration("30m"), Ok(1800.0));
        assert_eq!(parse_duration("2h"), Ok(7200.0));
        assert_eq!(parse_duration("60"), Ok(60.0));
        assert!(parse_duration("5s").unwrap_err().contains("at least 20 s"));
        assert!(parse_duration("3d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn the_plan_prints_one_line_per_fault() {
        let faults = plan(1, 120.0, Profile::QuorumSafe);
        let text = render(1, 120.0, Profile::QuorumSafe, &faults);
        assert_eq!(text.lines().count(), faults.len() + 1);
        assert!(text.starts_with("soak: seed 1, 120 s, profile quorum-safe"), "{text}");
    }
}
