//! The cluster description's `[backup]`: how often each member snapshots itself, how many
//! snapshots are kept, and the host off the cluster they are shipped to. In: the section as
//! written, or nothing. Out: a checked [`Backup`], which `render/` turns into each host's
//! backup timer (its own minute: [`Backup::on_calendar`]), the ship step's settings and the
//! pinned host key.
//!
//! ```toml
//! [backup]
//! interval = "1h"     # how often each member takes, checks and ships a snapshot: minutes
//!                     # ("15m") dividing an hour, or hours ("6h") dividing a day; default 1h
//! keep = 24           # snapshots kept per member, on the host and on the backup host
//! target = "etcd-backup@10.0.1.10:/srv/etcd-backups"  # rsync over ssh: USER@HOST:DIR
//! # port = 22
//! host_key = "ssh-ed25519 AAAAC3Nza..."  # the backup host's key (ssh-keyscan -t ed25519 HOST)
//! ```
//!
//! Without a `target` the snapshots stay on each host and die with it: allowed, with a warning
//! ([`Backup::warning`]). With one, `host_key` is required: the ship step trusts that key and no
//! other (no trust on first use). Refused, naming the file, the field and the fix: an interval
//! of zero, without a unit, or that does not divide an hour or a day (the timer would drift
//! against the clock); `keep = 0`; a target that is not `USER@HOST:/absolute/dir`; a host key
//! that is not one line of `TYPE BASE64` whose blob names the same type.

use serde::{Deserialize, Serialize};

/// A checked `[backup]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backup {
    /// The interval as written (`"1h"`, `"15m"`).
    pub interval: String,
    /// The interval in seconds.
    pub interval_s: u64,
    /// Snapshots kept per member, on the host and off it.
    pub keep: u32,
    /// Where the snapshots go; `None`: they stay on each host.
    pub target: Option<Target>,
}

/// The backup host, reached with rsync over ssh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    pub user: String,
    pub host: String,
    /// The directory on the backup host; each member's snapshots go to `DIR/<cluster>/<node>/`.
    pub dir: String,
    pub port: u16,
    /// The backup host's public key, `TYPE BASE64` (a comment after it is dropped).
    pub host_key: String,
}

impl Target {
    /// The member's directory on the backup host.
    pub fn member_dir(&self, cluster: &str, node: &str) -> String {
        format!("{}/{cluster}/{node}", self.dir.trim_end_matches('/'))
    }

    /// The `known_hosts` line that pins the backup host's key (`[HOST]:PORT` when the port
    /// is not 22, as ssh looks it up).
    pub fn known_hosts_line(&self) -> String {
        let host = match self.port {
            22 => self.host.clone(),
            p => format!("[{}]:{p}", self.host),
        };
        format!("{host} {}\n", self.host_key)
    }
}

/// The interval without a `[backup]` section (and without `interval` in it).
pub const DEFAULT_INTERVAL: &str = "1h";
/// Snapshots kept without `keep`: a day of hourly ones.
pub const DEFAULT_KEEP: u32 = 24;

impl Default for Backup {
    fn default() -> Self {
        Backup { interval: DEFAULT_INTERVAL.into(), interval_s: 3600, keep: DEFAULT_KEEP, target: None }
    }
}

/// The section as written; checked into a [`Backup`] by [`Backup::check`].
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackup {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keep: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host_key: Option<String>,
}

const INTERVALS: &str =
    "minutes that divide an hour (\"5m\", \"15m\", \"30m\") or hours that divide a day (\"1h\", \"6h\", \"24h\")";

/// The key types ssh accepts as host keys, as the first word of a public key.
const KEY_TYPES: [&str; 6] =
    ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "rsa-sha2-512", "ssh-rsa"];

impl Backup {
    /// Checks the section as written (`None`: absent, [`Backup::default`]). An error is the
    /// field (`backup.interval`, ...) and what is wrong with it, with the fix.
    pub fn check(raw: Option<&RawBackup>) -> Result<Backup, (&'static str, String)> {
        let Some(raw) = raw else { return Ok(Backup::default()) };
        let (interval, interval_s) = match &raw.interval {
            None => (DEFAULT_INTERVAL.to_string(), 3600),
            Some(toml::Value::String(s)) => (s.clone(), interval_seconds(s).map_err(|m| ("backup.interval", m))?),
            Some(toml::Value::Integer(n)) => {
                return Err((
                    "backup.interval",
                    format!("{n} has no unit: write it with one, such as \"{n}m\" or \"{n}h\" ({INTERVALS})"),
                ))
            }
            Some(v) => return Err(("backup.interval", format!("{v} is not an interval: use {INTERVALS}"))),
        };
        let keep = match &raw.keep {
            None => DEFAULT_KEEP,
            Some(toml::Value::Integer(n)) if *n >= 1 && *n <= 10_000 => *n as u32,
            Some(toml::Value::Integer(0)) => {
                return Err((
                    "backup.keep",
                    "0 would delete every snapshot after taking it: keep at least 1 (24 hourly ones are a day)".into(),
                ))
            }
            Some(v) => {
                return Err((
                    "backup.keep",
                    format!("{v} is not a count of snapshots from 1 to 10000: write e.g. keep = 24"),
                ))
            }
        };
        let port = match &raw.port {
            None => 22,
            Some(toml::Value::Integer(n)) if (1..=65535).contains(n) => *n as u16,
            Some(v) => return Err(("backup.port", format!("{v} is not a TCP port: write a number from 1 to 65535"))),
        };
        let target = match (&raw.target, &raw.host_key) {
            (None, None) if raw.port.is_none() => None,
            (None, _) => {
                return Err((
                    "backup.target",
                    "missing, but port or host_key is given: add target = \"USER@HOST:/DIR\" (the backup host), or remove them"
                        .into(),
                ))
            }
            (Some(t), None) => {
                return Err((
                    "backup.host_key",
                    format!(
                        "missing: the ship step trusts only a pinned key of {t:?}; add the backup host's public key, as \
                         `ssh-keyscan -t ed25519 HOST` prints it after the host name (host_key = \"ssh-ed25519 AAAA...\")"
                    ),
                ))
            }
            (Some(t), Some(k)) => {
                let (user, host, dir) = parse_target(t).map_err(|m| ("backup.target", m))?;
                let host_key = parse_host_key(k).map_err(|m| ("backup.host_key", m))?;
                Some(Target { user, host, dir, port, host_key })
            }
        };
        Ok(Backup { interval, interval_s, keep, target })
    }

    /// The section as it would be written (for the PKI's stored copy of the description).
    pub fn raw(&self) -> RawBackup {
        RawBackup {
            interval: Some(toml::Value::String(self.interval.clone())),
            keep: Some(toml::Value::Integer(i64::from(self.keep))),
            target: self.target.as_ref().map(|t| format!("{}@{}:{}", t.user, t.host, t.dir)),
            port: self.target.as_ref().filter(|t| t.port != 22).map(|t| toml::Value::Integer(i64::from(t.port))),
            host_key: self.target.as_ref().map(|t| t.host_key.clone()),
        }
    }

    /// Allowed but probably wrong: snapshots that never leave their host.
    pub fn warning(&self) -> Option<String> {
        self.target.is_none().then(|| {
            "[backup] has no target: each member's snapshots stay on its own host and are lost with it; add target \
             and host_key (a backup host reached with rsync over ssh)"
                .to_string()
        })
    }

    /// When member `i` of `n` takes its snapshot (`OnCalendar=` of etcd-backup.timer): every
    /// interval, the members spread evenly over it (with an hourly interval and three members
    /// at :00, :20 and :40), so that a snapshot of the cluster is at most interval / n old.
    pub fn on_calendar(&self, i: usize, n: usize) -> String {
        let offset_s = self.interval_s * i as u64 / n.max(1) as u64;
        if self.interval_s < 3600 {
            let step = self.interval_s / 60;
            format!("*-*-* *:{:02}/{step}:{:02}", offset_s / 60, offset_s % 60)
        } else {
            let step = self.interval_s / 3600;
            format!("*-*-* {:02}/{step}:{:02}:{:02}", offset_s / 3600, offset_s % 3600 / 60, offset_s % 60)
        }
    }
}

/// Seconds of an interval written `Nm` or `Nh` that divides an hour or a day.
fn interval_seconds(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not an interval: use {INTERVALS}"))?;
    if n == 0 {
        return Err(format!("{s:?} is zero: the timer would never fire; use {INTERVALS}"));
    }
    match unit {
        "m" | "min" if 60u64.is_multiple_of(n) && n < 60 => Ok(n * 60),
        "m" | "min" if n.is_multiple_of(60) => interval_seconds(&format!("{}h", n / 60)),
        "h" if 24u64.is_multiple_of(n) => Ok(n * 3600),
        "" => Err(format!("{s:?} has no unit: write \"{n}m\" or \"{n}h\" ({INTERVALS})")),
        "m" | "min" | "h" => {
            Err(format!("{s:?} does not divide an hour or a day, so the members' times would drift: use {INTERVALS}"))
        }
        _ => Err(format!("{s:?} has an unknown unit: use {INTERVALS}")),
    }
}

/// `USER@HOST:/DIR` split, each part checked.
fn parse_target(t: &str) -> Result<(String, String, String), String> {
    let form = "write USER@HOST:/DIR, e.g. \"etcd-backup@10.0.1.10:/srv/etcd-backups\"";
    let (user, rest) = t.split_once('@').ok_or_else(|| format!("{t:?} names no user: {form}"))?;
    let (host, dir) = rest.split_once(':').ok_or_else(|| format!("{t:?} names no directory: {form}"))?;
    let user_ok = !user.is_empty()
        && user.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && !user.starts_with('-');
    if !user_ok {
        return Err(format!(
            "{t:?}: the user {user:?} is not a login name (lowercase letters, digits, _ and -): {form}"
        ));
    }
    let host_ok = host.parse::<std::net::Ipv4Addr>().is_ok()
        || (!host.is_empty()
            && !host.starts_with(['-', '.'])
            && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
    if !host_ok {
        return Err(format!("{t:?}: the host {host:?} is not an IPv4 address or a DNS name: {form}"));
    }
    let dir_ok = dir.starts_with('/')
        && dir.len() > 1
        && !dir.split('/').any(|p| p == "..")
        && !dir.chars().any(|c| c.is_whitespace() || c.is_control() || "'\"\\$`;&|*?".contains(c));
    if !dir_ok {
        return Err(format!(
            "{t:?}: the directory {dir:?} must be absolute, not the root, without .., white space, quotes or shell \
             characters: {form}"
        ));
    }
    Ok((user.to_string(), host.to_string(), dir.to_string()))
}

/// `TYPE BASE64 [comment]` checked: a known type, valid base64 whose blob starts with the
/// same type name. Returns `TYPE BASE64`.
fn parse_host_key(k: &str) -> Result<String, String> {
    let how = "paste the key as `ssh-keyscan -t ed25519 HOST` prints it after the host name (ssh-ed25519 AAAA...)";
    if k.contains('\n') {
        return Err(format!("{k:?} has more than one line: {how}"));
    }
    let mut words = k.split_whitespace();
    let (Some(kind), Some(b64)) = (words.next(), words.next()) else {
        return Err(format!("{k:?} is not TYPE BASE64: {how}"));
    };
    if !KEY_TYPES.contains(&kind) {
        return Err(format!("{kind:?} is not an ssh host key type (one of {}): {how}", KEY_TYPES.join(", ")));
    }
    use base64::Engine as _;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("{kind} {b64:.12}... is not base64 ({e}): {how}"))?;
    // The blob starts with the key type as an SSH string: a 32-bit length, then the name.
    let named = blob
        .get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|n| blob.get(4..4 + n))
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .ok_or_else(|| format!("{kind} {b64:.12}... is too short to be a public key: {how}"))?;
    // ssh-rsa blobs carry "ssh-rsa" whatever signature algorithm names them.
    if named != kind && !(kind == "rsa-sha2-512" && named == "ssh-rsa") {
        return Err(format!("the key is of type {named}, not {kind}: {how}"));
    }
    Ok(format!("{kind} {b64}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFuUeKAAsrQNfEFLGdb7xHppiJhpLMOvGQhXi2aCc11t";

    fn check(text: &str) -> Result<Backup, (&'static str, String)> {
        let raw: RawBackup = toml::from_str(text).expect("toml");
        Backup::check(Some(&raw))
    }

    #[test]
    fn defaults_are_hourly_a_day_kept_and_local_with_a_warning() {
        let b = Backup::check(None).unwrap();
        assert_eq!((b.interval_s, b.keep, b.target.is_none()), (3600, 24, true));
        assert!(b.warning().unwrap().contains("lost with it"));
        assert_eq!(check("").unwrap(), b);
    }

    #[test]
    fn a_target_is_split_and_pinned() {
        let b = check(&format!("interval = \"15m\"\nkeep = 4\ntarget = \"backup@10.0.1.10:/srv/etcd\"\nport = 2222\nhost_key = \"{KEY} root@b\"")).unwrap();
        assert_eq!((b.interval_s, b.keep), (900, 4));
        let t = b.target.as_ref().unwrap();
        assert_eq!(
            (t.user.as_str(), t.host.as_str(), t.dir.as_str(), t.port),
            ("backup", "10.0.1.10", "/srv/etcd", 2222)
        );
        assert_eq!(t.known_hosts_line(), format!("[10.0.1.10]:2222 {KEY}\n"));
        assert_eq!(t.member_dir("tutorial", "master1"), "/srv/etcd/tutorial/master1");
        assert!(b.warning().is_none());
        let again: RawBackup = toml::from_str(&toml::to_string(&b.raw()).unwrap()).unwrap();
        assert_eq!(Backup::check(Some(&again)).unwrap(), b);
    }

    #[test]
    fn each_member_has_its_own_time_in_the_interval() {
        let hourly = Backup::default();
        let times: Vec<String> = (0..3).map(|i| hourly.on_calendar(i, 3)).collect();
        assert_eq!(times, ["*-*-* 00/1:00:00", "*-*-* 00/1:20:00", "*-*-* 00/1:40:00"]);
        let quarter = check("interval = \"15m\"").unwrap();
        assert_eq!(quarter.on_calendar(1, 3), "*-*-* *:05/15:00");
        let six = check("interval = \"6h\"").unwrap();
        assert_eq!(six.on_calendar(2, 3), "*-*-* 04/6:00:00");
        let one = check("interval = \"1m\"").unwrap();
        assert_eq!(one.on_calendar(1, 3), "*-*-* *:00/1:20");
        assert_eq!(check("interval = \"120m\"").unwrap().interval_s, 7200);
    }

    #[test]
    fn what_a_timer_or_ssh_would_misread_is_refused_naming_the_field_and_fix() {
        for (text, field, says) in [
            ("interval = \"0m\"", "backup.interval", "zero"),
            ("interval = 15", "backup.interval", "no unit"),
            ("interval = \"15\"", "backup.interval", "no unit"),
            ("interval = \"7m\"", "backup.interval", "drift"),
            ("interval = \"5h\"", "backup.interval", "drift"),
            ("interval = \"1d\"", "backup.interval", "unknown unit"),
            ("keep = 0", "backup.keep", "at least 1"),
            ("keep = -2", "backup.keep", "keep = 24"),
            ("target = \"10.0.0.1:/srv\"", "backup.host_key", "ssh-keyscan"),
            ("port = 22", "backup.target", "add target"),
            ("port = 0\ntarget = \"b@h:/d\"", "backup.port", "1 to 65535"),
        ] {
            let (f, m) = check(text).unwrap_err();
            assert_eq!(f, field, "{text}: {m}");
            assert!(m.contains(says), "{text}: {m}");
        }
        for (target, says) in [
            ("10.0.0.1:/srv", "no user"),
            ("b@10.0.0.1", "no directory"),
            ("B@h:/srv", "login name"),
            ("b@h:srv", "absolute"),
            ("b@h:/", "absolute"),
            ("b@h:/srv/../etc", "absolute"),
            ("b@h:/srv dir", "white space"),
            ("b@-oProxyCommand=x:/srv", "not an IPv4"),
        ] {
            let (f, m) = check(&format!("target = \"{target}\"\nhost_key = \"{KEY}\"")).unwrap_err();
            assert_eq!(f, "backup.target", "{target}: {m}");
            assert!(m.contains(says), "{target}: {m}");
        }
        for (key, says) in [
            ("AAAAC3NzaC1lZDI1NTE5", "not TYPE BASE64"),
            ("ssh-dss AAAAB3NzaC1kc3M=", "not an ssh host key type"),
            ("ssh-ed25519 AAAA!!!", "not base64"),
            ("ssh-ed25519 AAAA", "too short"),
            ("ecdsa-sha2-nistp256 AAAAC3NzaC1lZDI1NTE5AAAAIFuUeKAAsrQNfEFLGdb7xHppiJhpLMOvGQhXi2aCc11t", "not ecdsa"),
        ] {
            let (f, m) = check(&format!("target = \"b@h:/srv\"\nhost_key = \"{key}\"")).unwrap_err();
            assert_eq!(f, "backup.host_key", "{key}: {m}");
            assert!(m.contains(says), "{key}: {m}");
        }
        assert!(toml::from_str::<RawBackup>("every = \"1h\"").is_err());
    }
}
