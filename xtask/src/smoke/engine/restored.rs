//! A throwaway one-member etcd on this machine's loopback, restored from a snapshot: the proof
//! that a backup holds the data. In: the acquired etcd and etcdctl, a snapshot file, a data
//! directory to restore into. Out: the value of a key read from it; the etcd stopped again.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::acquire::Acquired;
use crate::smoke::local::{free_port, KillOnDrop};

/// `etcdctl snapshot restore` of `snap` into `data`, an etcd started on it on loopback (plain
/// http, ports of its own), and `key` read from it; the etcd is stopped again.
pub(crate) fn restore_and_read(
    acquired: &Acquired,
    snap: &std::path::Path,
    data: &std::path::Path,
    key: &str,
) -> Result<String> {
    let (client, peer) = (free_port()?, free_port()?);
    let peer_url = format!("http://127.0.0.1:{peer}");
    let client_url = format!("http://127.0.0.1:{client}");
    let cluster = format!("restored={peer_url}");
    let out = acquired
        .command("etcdctl")?
        .env_clear()
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(snap)
        .arg(format!("--data-dir={}", data.display()))
        .args([
            "--name=restored",
            &format!("--initial-cluster={cluster}"),
            &format!("--initial-advertise-peer-urls={peer_url}"),
        ])
        .output()
        .context("cannot run etcdctl snapshot restore")?;
    if !out.status.success() {
        bail!("snapshot restore failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let log = std::fs::File::create(data.with_extension("log"))?;
    let child = acquired
        .command("etcd")?
        .env_clear()
        .args(["--name=restored", &format!("--data-dir={}", data.display())])
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster={cluster}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start etcd on the restored data")?;
    let _guard = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = acquired
            .command("etcdctl")?
            .env_clear()
            .env("ETCDCTL_API", "3")
            .args([&format!("--endpoints={client_url}"), "--command-timeout=2s", "get", "--print-value-only", key])
            .output()
            .context("cannot run etcdctl")?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        if Instant::now() > deadline {
            bail!("the restored etcd did not answer within 30 s: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
