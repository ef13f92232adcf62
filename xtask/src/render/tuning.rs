//! Tuning presets: `systemd/tuning.toml` (one preset per row of the tutorial's hardware table)
//! and a preset name from the cluster description in; the `ETCD_*` and `GOMAXPROCS` variables
//! of that preset out, added to each node's environment file.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::template::systemd_dir;

/// One row of the hardware table, as etcd settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// The workload the row describes (clients, requests/s, data, machine type).
    pub description: String,
    /// `GOMAXPROCS`: the vCPUs of the row's machine type.
    pub gomaxprocs: u32,
    /// `--quota-backend-bytes`.
    pub quota_backend_bytes: u64,
    /// `--snapshot-count`.
    pub snapshot_count: u64,
    /// `--heartbeat-interval` in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// `--election-timeout` in milliseconds.
    pub election_timeout_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    presets: BTreeMap<String, Preset>,
}

/// The presets of a tuning file, checked.
#[derive(Debug, Clone)]
pub struct Presets {
    pub path: PathBuf,
    pub presets: BTreeMap<String, Preset>,
}

/// etcd's limits: it warns above 8 GiB and refuses an election timeout below 5 heartbeats
/// or above 50 s.
const MAX_QUOTA: u64 = 8 << 30;

impl Presets {
    pub fn default_path() -> PathBuf {
        systemd_dir().join("tuning.toml")
    }

    pub fn load(path: &Path) -> Result<Presets> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read tuning presets {}: restore it from git", path.display()))?;
        let raw: RawFile =
            toml::from_str(&text).with_context(|| format!("{}: invalid tuning presets", path.display()))?;
        for (name, p) in &raw.presets {
            let at = |field: &str| format!("{}: presets.{name}.{field}", path.display());
            if p.gomaxprocs == 0 {
                bail!("{}: must be at least 1 (the vCPUs of the machine type)", at("gomaxprocs"));
            }
            if p.quota_backend_bytes == 0 || p.quota_backend_bytes > MAX_QUOTA {
                bail!(
                    "{}: {} is outside 1..=8 GiB (8589934592), the range etcd supports well",
                    at("quota_backend_bytes"),
                    p.quota_backend_bytes
                );
            }
            if p.snapshot_count == 0 {
                bail!("{}: must be at least 1", at("snapshot_count"));
            }
            if p.heartbeat_interval_ms == 0 {
                bail!("{}: must be at least 1 ms", at("heartbeat_interval_ms"));
            }
            if p.election_timeout_ms < 5 * p.heartbeat_interval_ms || p.election_timeout_ms > 50_000 {
                bail!(
                    "{}: {} ms must be at least 5 heartbeats ({} ms) and at most 50000 ms, or etcd refuses to start",
                    at("election_timeout_ms"),
                    p.election_timeout_ms,
                    5 * p.heartbeat_interval_ms
                );
            }
        }
        if raw.presets.is_empty() {
            bail!("{}: no [presets.NAME] tables: add at least one", path.display());
        }
        Ok(Presets { path: path.to_path_buf(), presets: raw.presets })
    }

    /// The preset `name` chosen in `cluster` (named in the message when it is unknown).
    pub fn get(&self, name: &str, cluster: &Path) -> Result<&Preset> {
        self.presets.get(name).with_context(|| {
            format!(
                "{}: tuning: no preset {name:?} in {}: use one of {}",
                cluster.display(),
                self.path.display(),
                self.presets.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
            )
        })
    }
}

impl Preset {
    /// The preset's variables, sorted by name.
    pub fn env(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("ETCD_ELECTION_TIMEOUT".to_string(), self.election_timeout_ms.to_string()),
            ("ETCD_HEARTBEAT_INTERVAL".to_string(), self.heartbeat_interval_ms.to_string()),
            ("ETCD_QUOTA_BACKEND_BYTES".to_string(), self.quota_backend_bytes.to_string()),
            ("ETCD_SNAPSHOT_COUNT".to_string(), self.snapshot_count.to_string()),
            ("GOMAXPROCS".to_string(), self.gomaxprocs.to_string()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_presets_follow_the_hardware_table() {
        let p = Presets::load(&Presets::default_path()).unwrap();
        let names: Vec<&str> = p.presets.keys().map(String::as_str).collect();
        assert_eq!(names, ["large", "medium", "small", "xlarge"]);
        let cpus: Vec<u32> = ["small", "medium", "large", "xlarge"].iter().map(|n| p.presets[*n].gomaxprocs).collect();
        assert_eq!(cpus, [2, 4, 8, 16]);
        assert_eq!(p.presets["medium"].env()["ETCD_QUOTA_BACKEND_BYTES"], "4294967296");
        let err = format!("{:#}", p.get("huge", Path::new("c.toml")).unwrap_err());
        assert!(err.contains("c.toml: tuning") && err.contains("small"), "{err}");
    }

    #[test]
    fn an_election_timeout_etcd_would_refuse_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        let text = "[presets.x]\ndescription='x'\ngomaxprocs=1\nquota_backend_bytes=1\nsnapshot_count=1\nheartbeat_interval_ms=100\nelection_timeout_ms=400\n";
        fs::write(&path, text).unwrap();
        let err = format!("{:#}", Presets::load(&path).unwrap_err());
        assert!(err.contains("presets.x.election_timeout_ms"), "{err}");
    }
}
