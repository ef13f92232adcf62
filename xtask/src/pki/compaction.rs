//! The cluster description's `[compaction]`: how etcd compacts its key-value history by itself.
//! In: the section as written (`mode`, `retention`), or nothing. Out: a checked [`Compaction`]
//! and the `ETCD_AUTO_COMPACTION_*` variables it becomes ([`Compaction::env`]), which
//! `render/config.rs` adds to every member's configuration.
//!
//! ```toml
//! [compaction]
//! mode = "periodic"   # keep the history of the last `retention`; or "revision", or "off"
//! retention = "1h"    # periodic: a duration with its unit ("30m", "1h", "2h30m");
//!                     # revision: a count of revisions (retention = 10000)
//! ```
//!
//! etcd 3.4 keeps every revision until something compacts it (`--auto-compaction-retention`
//! defaults to 0: never), so a cluster nobody compacts grows until the NOSPACE alarm. Without the
//! section a cluster compacts periodically, keeping one hour ([`Compaction::default`]; why, in
//! docs/artifacts.md). `mode = "off"` is for a cluster whose one client compacts it itself, as
//! Kubernetes' API server does every five minutes.
//!
//! Refused, naming the file, the field and the fix: what etcd would refuse (an unknown mode, a
//! malformed or negative retention) and what it would read otherwise than meant: a retention of
//! zero (etcd turns compaction off), a bare number as a period (etcd reads `1` as one hour), a
//! duration as a count (etcd reads `"1h"` in revision mode as 3,600,000,000,000 revisions), a
//! retention given with `mode = "off"`, or none with the other modes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How etcd compacts its history: `--auto-compaction-mode` and `--auto-compaction-retention`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Compaction {
    /// Keep the revisions of the last `retention` (a Go duration as written, e.g. `1h`).
    Periodic { retention: String },
    /// Keep the last `retention` revisions (etcd 3.4 looks every five minutes).
    Revision { retention: u64 },
    /// etcd compacts nothing by itself (a client such as Kubernetes' API server does).
    Off,
}

/// The period kept without a `[compaction]` section.
pub const DEFAULT_RETENTION: &str = "1h";

/// Below this a periodic retention draws a warning: a watcher disconnected for longer must
/// list everything again (Kubernetes' API server compacts every five minutes).
const SHORT_PERIOD_NS: u128 = 5 * 60 * 1_000_000_000;

impl Default for Compaction {
    fn default() -> Self {
        Compaction::Periodic { retention: DEFAULT_RETENTION.to_string() }
    }
}

/// The section as written; checked into a [`Compaction`] by [`Compaction::check`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompaction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retention: Option<toml::Value>,
}

const MODES: &str = "use \"periodic\" (with retention = \"1h\"), \"revision\" (with retention = 10000) or \"off\"";

impl Compaction {
    /// Checks the section as written (`None`: the section is absent, [`Compaction::default`]).
    /// An error is the field (`compaction.mode`, `compaction.retention`) and what is wrong with
    /// it, with the fix.
    pub fn check(raw: Option<&RawCompaction>) -> Result<Compaction, (&'static str, String)> {
        let Some(raw) = raw else { return Ok(Compaction::default()) };
        let Some(mode) = raw.mode.as_deref() else {
            return Err(("compaction.mode", format!("missing: {MODES}")));
        };
        let retention = raw.retention.as_ref();
        let field = "compaction.retention";
        match mode {
            "off" => match retention {
                None => Ok(Compaction::Off),
                Some(v) => Err((
                    field,
                    format!("{v} is given with mode = \"off\", which compacts nothing: remove it, or choose a mode"),
                )),
            },
            "periodic" => match retention {
                None => Err((field, format!("missing: periodic compaction needs a period, such as \"{DEFAULT_RETENTION}\""))),
                Some(toml::Value::String(s)) => {
                    let ns = go_duration_ns(s).map_err(|m| (field, m))?;
                    if ns == 0 {
                        return Err((
                            field,
                            format!("{s:?} is zero, which etcd takes for \"never compact\": write mode = \"off\" if that is meant, or a period such as \"{DEFAULT_RETENTION}\""),
                        ));
                    }
                    Ok(Compaction::Periodic { retention: s.clone() })
                }
                Some(toml::Value::Integer(n)) => Err((
                    field,
                    format!("{n} has no unit, and etcd would read a bare {n} as {n} hour(s): write the unit, such as \"{n}h\" or \"{n}m\""),
                )),
                Some(v) => Err((field, format!("{v} is not a period: write a duration with its unit, such as \"{DEFAULT_RETENTION}\""))),
            },
            "revision" => match retention {
                None => Err((field, "missing: revision compaction needs the count of revisions to keep, such as retention = 10000".into())),
                Some(toml::Value::Integer(n)) if *n > 0 => Ok(Compaction::Revision { retention: *n as u64 }),
                Some(toml::Value::Integer(0)) => Err((
                    field,
                    "0 is taken by etcd for \"never compact\": write mode = \"off\" if that is meant, or a count such as 10000".into(),
                )),
                Some(toml::Value::Integer(n)) => Err((
                    field,
                    format!("{n} is negative: write the count of revisions to keep, such as 10000"),
                )),
                Some(toml::Value::String(s)) if s.trim().parse::<i64>().is_ok() => Err((
                    field,
                    format!("{s:?} is text: write the count as a number, retention = {}", s.trim()),
                )),
                Some(v) => Err((
                    field,
                    format!("{v} is not a count of revisions (etcd would read a duration as nanoseconds, i.e. that many revisions): write a number such as 10000, or use mode = \"periodic\" for a period"),
                )),
            },
            other => Err(("compaction.mode", format!("{other:?} is not a compaction mode: {MODES}"))),
        }
    }

    /// The variables of the policy: `ETCD_AUTO_COMPACTION_MODE` and `..._RETENTION`, or none for
    /// `off` (etcd's own default compacts nothing).
    pub fn env(&self) -> BTreeMap<String, String> {
        let (mode, retention) = match self {
            Compaction::Periodic { retention } => ("periodic", retention.clone()),
            Compaction::Revision { retention } => ("revision", retention.to_string()),
            Compaction::Off => return BTreeMap::new(),
        };
        BTreeMap::from([
            ("ETCD_AUTO_COMPACTION_MODE".to_string(), mode.to_string()),
            ("ETCD_AUTO_COMPACTION_RETENTION".to_string(), retention),
        ])
    }

    /// The mode as etcd names it (`off`: etcd's default flag value, `periodic`, with nothing kept).
    pub fn mode(&self) -> &'static str {
        match self {
            Compaction::Periodic { .. } | Compaction::Off => "periodic",
            Compaction::Revision { .. } => "revision",
        }
    }

    /// The retention as etcd holds it, in nanoseconds: a period's length, a revision count taken
    /// as nanoseconds (etcd keeps both in one `time.Duration`), 0 for off. What etcd logs as
    /// `auto-compaction-retention` at start, read back by [`go_duration_ns`].
    pub fn retention_ns(&self) -> u128 {
        match self {
            Compaction::Periodic { retention } => go_duration_ns(retention).unwrap_or(0),
            Compaction::Revision { retention } => u128::from(*retention),
            Compaction::Off => 0,
        }
    }

    /// The policy in words, for messages: `periodic, keeping 1h`.
    pub fn describe(&self) -> String {
        match self {
            Compaction::Periodic { retention } => format!("periodic, keeping {retention}"),
            Compaction::Revision { retention } => format!("revision, keeping {retention} revisions"),
            Compaction::Off => "off".to_string(),
        }
    }

    /// A sentence when the policy is allowed but probably wrong.
    pub fn warning(&self) -> Option<String> {
        match self {
            Compaction::Periodic { retention } if go_duration_ns(retention).unwrap_or(0) < SHORT_PERIOD_NS => {
                Some(format!(
                    "compaction.retention {retention:?} is shorter than 5 minutes: a watcher disconnected for longer \
                     must list everything again (Kubernetes' API server compacts every 5 minutes)"
                ))
            }
            _ => None,
        }
    }

    /// The section as the description file writes it.
    pub fn raw(&self) -> RawCompaction {
        let (mode, retention) = match self {
            Compaction::Periodic { retention } => ("periodic", Some(toml::Value::String(retention.clone()))),
            Compaction::Revision { retention } => ("revision", Some(toml::Value::Integer(*retention as i64))),
            Compaction::Off => ("off", None),
        };
        RawCompaction { mode: Some(mode.to_string()), retention }
    }
}

/// A duration as Go's `time.ParseDuration` reads it, in nanoseconds: one or more numbers (with
/// an optional fraction), each with its unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), e.g. `1h`,
/// `2h30m`, `1.5h`, `1h0m0s`. Stricter than Go: no sign, and every number has its digits on both
/// sides of a point. The error says what is wrong and how to write it.
pub fn go_duration_ns(s: &str) -> Result<u128, String> {
    let fix = "write a number and its unit (h, m, s, ms, us, ns), such as \"1h\", \"30m\" or \"2h30m\"";
    if s.starts_with('-') {
        return Err(format!("{s:?} is negative: {fix}"));
    }
    if s.is_empty() {
        return Err(format!("the retention is empty: {fix}"));
    }
    let bad = || format!("{s:?} is not a duration: {fix}");
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" if number == s => return Err(format!("{s:?} has no unit: {fix}")),
            _ => return Err(bad()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() || (number.contains('.') && fraction.is_empty()) {
            return Err(bad());
        }
        let whole: u128 = whole.parse().map_err(|_| bad())?;
        let mut part = whole.checked_mul(scale).ok_or_else(bad)?;
        let mut place = scale;
        for d in fraction.chars() {
            place /= 10;
            part += u128::from(d.to_digit(10).ok_or_else(bad)?) * place;
        }
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = tail;
    }
    if total > i64::MAX as u128 {
        return Err(format!("{s:?} is longer than etcd can hold (Go's durations end at about 2562047h): {fix}"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Compaction, (&'static str, String)> {
        let raw: RawCompaction = toml::from_str(text).unwrap();
        Compaction::check(Some(&raw))
    }

    #[test]
    fn go_durations_are_read_as_go_reads_them() {
        for (text, ns) in [
            ("1h", 3_600_000_000_000u128),
            ("30m", 1_800_000_000_000),
            ("2h30m", 9_000_000_000_000),
            ("1.5h", 5_400_000_000_000),
            ("1h0m0s", 3_600_000_000_000),
            ("90s", 90_000_000_000),
            ("250ms", 250_000_000),
            ("10\u{b5}s", 10_000),
            ("10us", 10_000),
            ("7ns", 7),
            ("0s", 0),
        ] {
            assert_eq!(go_duration_ns(text), Ok(ns), "{text}");
        }
        for (text, why) in [
            ("1", "has no unit"),
            ("-5m", "negative"),
            ("1 hour", "not a duration"),
            ("1d", "not a duration"),
            ("1hm", "not a duration"),
            (".5h", "not a duration"),
            ("1.h", "not a duration"),
            ("h", "not a duration"),
            ("", "empty"),
            ("3000000h", "longer than etcd can hold"),
        ] {
            let err = go_duration_ns(text).unwrap_err();
            assert!(err.contains(why) && err.contains("such as \"1h\""), "{text}: {err}");
        }
    }

    #[test]
    fn no_section_compacts_every_hour_and_each_mode_becomes_etcds_flags() {
        let default = Compaction::check(None).unwrap();
        assert_eq!(default, Compaction::Periodic { retention: "1h".into() });
        let env = default.env();
        assert_eq!(env["ETCD_AUTO_COMPACTION_MODE"], "periodic");
        assert_eq!(env["ETCD_AUTO_COMPACTION_RETENTION"], "1h");
        assert_eq!(default.retention_ns(), 3_600_000_000_000);
        assert_eq!(default.warning(), None);

        let revision = check("mode = \"revision\"\nretention = 10000").unwrap();
        assert_eq!(revision.env()["ETCD_AUTO_COMPACTION_MODE"], "revision");
        assert_eq!(revision.env()["ETCD_AUTO_COMPACTION_RETENTION"], "10000");
        // etcd holds a count as a time.Duration and logs 10000 as 10µs.
        assert_eq!(revision.retention_ns(), go_duration_ns("10\u{b5}s").unwrap());

        let off = check("mode = \"off\"").unwrap();
        assert!(off.env().is_empty(), "off leaves etcd's default, which compacts nothing");
        assert_eq!(off.retention_ns(), 0);

        let short = check("mode = \"periodic\"\nretention = \"30s\"").unwrap();
        assert!(short.warning().unwrap().contains("shorter than 5 minutes"));
        for policy in [default, revision, off, short] {
            let text = toml::to_string(&policy.raw()).unwrap();
            assert_eq!(check(&text).unwrap(), policy, "{text}");
        }
    }

    #[test]
    fn what_etcd_would_refuse_or_misread_names_the_field_and_the_fix() {
        for (text, field, words) in [
            ("mode = \"hourly\"", "compaction.mode", &["\"hourly\" is not a compaction mode", "\"periodic\""][..]),
            ("retention = \"1h\"", "compaction.mode", &["missing", "\"periodic\""]),
            ("mode = \"periodic\"", "compaction.retention", &["missing", "\"1h\""]),
            ("mode = \"periodic\"\nretention = \"0s\"", "compaction.retention", &["zero", "mode = \"off\""]),
            ("mode = \"periodic\"\nretention = \"-1h\"", "compaction.retention", &["negative", "such as \"1h\""]),
            ("mode = \"periodic\"\nretention = \"1 hour\"", "compaction.retention", &["not a duration", "\"30m\""]),
            ("mode = \"periodic\"\nretention = 2", "compaction.retention", &["bare 2 as 2 hour(s)", "\"2h\""]),
            ("mode = \"periodic\"\nretention = true", "compaction.retention", &["not a period", "\"1h\""]),
            ("mode = \"revision\"", "compaction.retention", &["missing", "10000"]),
            ("mode = \"revision\"\nretention = -5", "compaction.retention", &["-5 is negative", "10000"]),
            ("mode = \"revision\"\nretention = 0", "compaction.retention", &["never compact", "mode = \"off\""]),
            ("mode = \"revision\"\nretention = \"1h\"", "compaction.retention", &["not a count", "10000"]),
            ("mode = \"revision\"\nretention = \"500\"", "compaction.retention", &["is text", "retention = 500"]),
            ("mode = \"off\"\nretention = \"1h\"", "compaction.retention", &["mode = \"off\"", "remove it"]),
        ] {
            let (got, msg) = check(text).unwrap_err();
            assert_eq!(got, field, "{text}: {msg}");
            for w in words {
                assert!(msg.contains(w), "{text}: {msg:?} lacks {w:?}");
            }
        }
        let unknown = toml::from_str::<RawCompaction>("mode = \"off\"\ninterval = \"1h\"").unwrap_err();
        assert!(unknown.to_string().contains("interval"), "{unknown}");
    }
}
