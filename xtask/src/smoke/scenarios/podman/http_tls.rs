//! The `http-to-tls` scenario: a cluster born on plain http (as the tutorial's first unit runs it)
//! switched to mutual TLS member by member, under the client load, without a restart of the whole
//! cluster, without removing a data directory and with the member IDs unchanged.
//!
//! The order that keeps a quorum able to talk at every step (the README's runbook explains it):
//! 1. every member in turn: clients on http and https on the same port (etcd tells them apart by
//!    the first byte), peers still on http but with the peer certificates;
//! 2. the clients (the load, etcdctl) move to https;
//! 3. every member in turn: `member update` of its peer URL to https, then restarted with its peer
//!    listener on https. Between the two, the others cannot reach it, which one member at a time
//!    a quorum survives; they reach the others at http or https as the membership advertises,
//!    having the peer certificates since step 1;
//! 4. every member in turn: https only.
//!
//! In: a fresh podman cluster, its configuration staged to plain http. Out: its checks.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::render::config::{staged_env, TlsStage};
use crate::smoke::engine::cluster::Cluster;
use crate::smoke::engine::Members;
use crate::smoke::scenarios::run::Run;

impl Run<Cluster> {
    pub(super) fn http_to_tls(&mut self) -> Result<()> {
        let tls: Vec<BTreeMap<String, String>> = self.nodes.iter().map(|n| n.env.clone()).collect();
        for (n, env) in self.nodes.iter_mut().zip(&tls) {
            n.env = staged_env(env, TlsStage::Plain);
            n.plain = true;
        }
        self.plain_clients = true;
        if !self.start_cluster()? {
            return Ok(());
        }
        let before = match self.member_ids() {
            Ok(ids) => ids,
            Err(e) => {
                self.record("plain http cluster: members and their IDs", Instant::now(), Err(e));
                return Ok(());
            }
        };
        self.etcdctl_ok(&[0], &["put", "smoke/born-on-http", "kept"])?;
        let ok = self
            .run_check("switch to mutual TLS: clients on both, peers one by one (member update), http off", |c| {
                c.switch_to_tls(&tls, &before)
            });
        if ok {
            self.run_check("after the switch: https only on both ports, IDs unchanged, data kept", |c| {
                c.check_tls_only(&before)
            });
        }
        Ok(())
    }

    /// Member name -> ID (hex), from `member list`.
    fn member_ids(&self) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for m in &self.members(&[0, 2])? {
            let id = m["ID"].as_u64().context("a member without an ID")?;
            out.insert(m["name"].as_str().unwrap_or_default().to_string(), format!("{id:x}"));
        }
        if out.len() != 3 {
            bail!("{} members listed, expected 3: {out:?}", out.len());
        }
        Ok(out)
    }

    fn switch_to_tls(&mut self, tls: &[BTreeMap<String, String>], ids: &BTreeMap<String, String>) -> Result<String> {
        let mut notes = Vec::new();
        let mut step = |run: &mut Run<Cluster>, what: &str, stage: TlsStage| -> Result<()> {
            let mut times = Vec::new();
            for (i, final_env) in tls.iter().enumerate() {
                let name = run.nodes[i].spec.name.clone();
                if stage == TlsStage::Peers {
                    run.phase(&format!("member update {name} to https"));
                    let url = final_env["ETCD_INITIAL_ADVERTISE_PEER_URLS"].clone();
                    let id = ids.get(&name).with_context(|| format!("no ID for {name}"))?;
                    run.etcdctl_ok(&[0, 1, 2], &["member", "update", id, &format!("--peer-urls={url}")])?;
                }
                run.phase(&format!("{what}: {name}"));
                // etcdctl's gRPC is unreliable on plain http once a port serves both (3.4's
                // connection multiplexer may hand it to the TLS side): it uses https from here.
                run.nodes[i].plain = false;
                let s = run.recreate_member(i, staged_env(final_env, stage), None)?;
                times.push(format!("{name} {s:.2} s"));
            }
            notes.push(format!("{what} ({})", times.join(", ")));
            Ok(())
        };
        step(self, "clients on http and https", TlsStage::Clients)?;
        // The load moves too: from now on everything is mutual TLS.
        self.plain_clients = false;
        let https: Vec<String> = self.nodes.iter().map(|n| format!("https://127.0.0.1:{}", n.client_port)).collect();
        if let Some(l) = &self.load {
            l.set_endpoints(https);
        }
        self.phase("clients on https");
        self.wait_healthy(&[0, 1, 2], std::time::Duration::from_secs(30)).context("over https")?;
        step(self, "peers on https", TlsStage::Peers)?;
        step(self, "https only", TlsStage::Tls)?;
        self.phase("mutual TLS");
        Ok(notes.join("; "))
    }

    fn check_tls_only(&mut self, before: &BTreeMap<String, String>) -> Result<String> {
        let after = self.member_ids()?;
        if &after != before {
            bail!("member IDs changed: before {before:?}, after {after:?}");
        }
        for m in &self.members(&[0, 2])? {
            for key in ["peerURLs", "clientURLs"] {
                let urls: Vec<&str> = m[key]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|u| u.as_str())
                    .collect();
                if urls.is_empty() || urls.iter().any(|u| !u.starts_with("https://")) {
                    bail!("{} advertises {key} {urls:?}", m["name"]);
                }
            }
        }
        let kept = self.etcdctl_ok(&[2], &["get", "--print-value-only", "--consistency=l", "smoke/born-on-http"])?;
        if kept.trim() != "kept" {
            bail!("smoke/born-on-http is {:?} after the switch", kept.trim());
        }
        let mut refused = Vec::new();
        for (i, n) in self.nodes.clone().iter().enumerate() {
            for (port, what) in [(n.client_port, "client"), (n.peer_port, "peer")] {
                let before = self.plain_rejections(i)?;
                let url = format!("http://127.0.0.1:{port}/version");
                let out = self.curl(std::slice::from_ref(&url))?;
                if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("etcdserver") {
                    bail!(
                        "{} answered plain http on its {what} port: {}",
                        n.spec.name,
                        String::from_utf8_lossy(&out.stdout)
                    );
                }
                // The server's reason, as it logged it.
                let deadline = Instant::now() + std::time::Duration::from_secs(3);
                loop {
                    if self.plain_rejections(i)? > before {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("{}: plain http on the {what} port failed, but etcd logged no TLS refusal", n.spec.name);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                refused.push(format!("{} {what}", n.spec.name));
            }
        }
        Ok(format!(
            "member IDs unchanged ({}); every peer and client URL https; the key written on http kept; plain http \
             refused (\"first record does not look like a TLS handshake\") on {}",
            after.values().cloned().collect::<Vec<_>>().join(", "),
            refused.join(", ")
        ))
    }

    /// How many times node `i` logged refusing plain http on a TLS port.
    fn plain_rejections(&self, i: usize) -> Result<usize> {
        Ok(self.logs(i, &[])?.lines().filter(|l| l.contains("first record does not look like a TLS handshake")).count())
    }
}
