//! `--scenario auth`, the same on every engine that runs it: least privilege turned on under the
//! client load. The load runs as the description's least-privileged writer (a client `[access]`
//! gives `readwrite` on prefixes: `kube-apiserver` on `/registry/`), over gRPC, under its
//! prefix, from the start. Then, while it runs: `cargo xtask auth apply` (the runbook, as a
//! user types it) enables auth; `auth check` finds nothing to change; every identity is tried
//! call by call against what its grant allows, each refusal with etcd's reason; the operator's
//! identity (the backup's) still takes a snapshot; a client certificate is revoked and refused
//! at its next handshake once the engine has put the new CRL in place, while its reissued
//! certificate works; every leaf renewed (the load's among them) and delivered the engine's
//! way; the engine's further day-2 steps with auth on (podman: a CA rotation and the rolling
//! upgrade; the systemd machines: the rolling upgrade), after which `auth check` and every
//! identity's calls are tried again (users and roles live in the data); the load's rate and
//! latency with auth off and on, side by side. No request
//! of the load may fail. Last, `etcdctl auth disable` (root), so that the machines of the
//! systemd engine serve the scenarios after it as before.
//! In: a running cluster, its description's `[access]`, the engine's way to deliver a CRL.
//! Out: checks and timings.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::auth::roles::Grant;
use crate::smoke::engine::Members;
use crate::smoke::scenarios::run::{LoadAs, Run};
use crate::smoke::workload::load::Transport;

/// The load's phases: auth off, the runbook running, auth on.
pub(crate) const AUTH_OFF: &str = "auth off";
const APPLYING: &str = "auth apply";
const AUTH_ON: &str = "auth on";
const REVOKED: &str = "after a revocation";
const RENEWED: &str = "pki renew with auth on";
const AFTER_DAY2: &str = "auth checked again";
/// How long the load runs in each of the phases compared.
const SIDE_BY_SIDE: Duration = Duration::from_secs(6);

/// The description's least-privileged writer and the prefix its load writes under.
fn writer(access: &crate::auth::roles::Access) -> Option<(String, String)> {
    access.grants.iter().find_map(|(name, g)| match g {
        Grant::Keys { readwrite, .. } => readwrite.first().map(|p| (name.clone(), format!("{p}smoke-load/"))),
        _ => None,
    })
}

impl<E: Members> Run<E> {
    /// Sets the load up as the description's least-privileged writer, over gRPC: before the
    /// cluster's load starts.
    pub(crate) fn load_as_least_privileged(&mut self) -> Result<()> {
        let access = self.spec().access.clone().with_context(|| {
            format!("the auth scenario needs an [access] section in the cluster file ({})", self.spec().name)
        })?;
        let (client, prefix) = writer(&access).context(
            "the auth scenario needs a client [access] gives readwrite on a prefix (the load runs as it), e.g. \
             kube-apiserver = { readwrite = [\"/registry/\"] }",
        )?;
        if !crate::smoke::workload::client::GRPC_BUILT {
            bail!("the auth scenario needs the gRPC client: this xtask was built without --features grpc");
        }
        self.load_as = LoadAs { client: Some(client), transport: Transport::Grpc, prefix };
        Ok(())
    }

    /// The auth steps, with the cluster healthy and the load running as
    /// [`Run::load_as_least_privileged`] set it. `deliver` gives the members the PKI's current
    /// files (certificates and CRLs) the way the engine's runbook does, and says how.
    pub(crate) fn auth_steps(
        &mut self,
        cluster_file: &Path,
        deliver: &mut dyn FnMut(&mut Self, &str) -> Result<String>,
        more: &mut dyn FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let access = self.spec().access.clone().context("no [access]")?;
        self.phase(AUTH_OFF);
        std::thread::sleep(SIDE_BY_SIDE);

        // The runbook, as docs/least-privilege.md gives it.
        self.phase(APPLYING);
        let t = Instant::now();
        let pki = self.pki().root.clone();
        let target = vec![
            "--cluster".to_string(),
            cluster_file.display().to_string(),
            "--pki".into(),
            pki.display().to_string(),
            "--endpoints".into(),
            self.load_endpoints().join(","),
            "--etcdctl".into(),
            self.etcdctl_program().display().to_string(),
        ];
        let with = |cmd: &[&str]| -> Vec<String> { cmd.iter().map(|s| s.to_string()).chain(target.clone()).collect() };
        let applied = self.xtask(&with(&["auth", "apply"]));
        let ok = applied.is_ok();
        let done = |text: &str| text.lines().filter(|l| l.starts_with("done: ")).count();
        self.record(
            "auth apply (the runbook) while the load runs",
            t,
            applied.map(|text| {
                format!("{} changes, auth enabled last, in {:.2} s", done(&text), t.elapsed().as_secs_f64())
            }),
        );
        if !ok {
            return Ok(());
        }
        self.phase(AUTH_ON);
        std::thread::sleep(SIDE_BY_SIDE);
        let t = Instant::now();
        let checked = self.xtask(&with(&["auth", "check"]));
        self.record(
            "auth check: the cluster holds the file's users and roles",
            t,
            checked.map(|t| t.trim().to_string()),
        );

        let t = Instant::now();
        let calls = self.calls_by_identity(&access);
        self.record("each identity does what its grant allows and is refused the rest, with etcd's reason", t, calls);

        let t = Instant::now();
        let snap = self.out().join("auth-snapshot.db");
        let r = self
            .etcdctl_ok(&[0], &["snapshot", "save", "--command-timeout=60s", &snap.display().to_string()])
            .and_then(|_| {
                let size = std::fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);
                if size < 10_000 {
                    bail!("the snapshot has {size} bytes");
                }
                Ok(format!("{size} bytes, taken with the operator's identity (the backup's) with auth on"))
            });
        self.record("the backup's identity still takes a snapshot", t, r);

        let t = Instant::now();
        let r = self.revoke_under_load(&access, deliver);
        self.record("a revoked client is refused at its next handshake; everyone else goes on", t, r);

        let t = Instant::now();
        let r = self.renew_under_auth(deliver);
        self.record("pki renew with auth on: every leaf reissued, the load takes its new certificate", t, r);

        // The engine's further day-2 steps with auth on (podman: the CA rotation and the rolling
        // upgrade); the users and roles live in the data and must come through them.
        let before = self.checks.len();
        more(self)?;
        if self.checks.len() > before {
            let t = Instant::now();
            self.phase(AFTER_DAY2);
            let r = self.xtask(&with(&["auth", "check"])).and_then(|checked| {
                let calls = self.calls_by_identity(&access)?;
                Ok(format!("{}; {calls}", checked.trim()))
            });
            self.record("after them: the users and roles are all there, each identity's calls as before", t, r);
        }

        let t = Instant::now();
        let r = self.side_by_side();
        self.record("the load's throughput with auth on is within 10% of auth off", t, r);

        let t = Instant::now();
        self.phase("auth disable");
        let r = self
            .etcdctl_ok(&[0], &["auth", "disable"])
            .map(|_| "auth off again for the scenarios after this one".into());
        self.record("auth disable (root)", t, r);
        Ok(())
    }

    /// One of the engines' further steps with auth on: the rolling upgrade `from` -> `to` done
    /// the engine's way (`upgrade`), then every member and the cluster version checked on the
    /// new release; one check.
    pub(crate) fn upgrade_with_auth_on(
        &mut self,
        from: &str,
        to: &str,
        upgrade: impl FnOnce(&mut Self) -> Result<String>,
    ) {
        let t = Instant::now();
        let r = upgrade(self).and_then(|done| Ok(format!("{done}; {}", self.check_upgraded(to)?)));
        self.record(&format!("rolling upgrade {from} -> {to} with auth on"), t, r);
    }

    /// Each identity of `[access]`, call by call: a root identity lists users; a keyed one
    /// writes and reads under its prefixes and is refused a key outside them, a snapshot and
    /// the user list; one without a user is refused keys but answers `endpoint health`.
    fn calls_by_identity(&self, access: &crate::auth::roles::Access) -> Result<String> {
        let mut notes = Vec::new();
        let mut wrong = Vec::new();
        let snap = self.out().join("refused.db").display().to_string();
        for (name, grant) in &access.grants {
            let dir = self.pki().client_dir(name);
            let mut calls: Vec<(Vec<String>, bool)> = Vec::new();
            let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            match grant {
                Grant::Root => {
                    calls.push((v(&["user", "list"]), true));
                    calls.push((v(&["put", "/xtask-smoke-outside", "x"]), true));
                }
                Grant::Keys { read, readwrite } => {
                    for p in readwrite {
                        calls.push((v(&["put", &format!("{p}xtask-smoke-check"), "x"]), true));
                    }
                    for p in read.iter().chain(readwrite) {
                        calls.push((v(&["get", &format!("{p}xtask-smoke-check")]), true));
                    }
                    calls.push((v(&["get", "/xtask-smoke-outside"]), false));
                    calls.push((v(&["put", "/xtask-smoke-outside", "y"]), false));
                    calls.push((v(&["snapshot", "save", "--command-timeout=10s", &snap]), false));
                    calls.push((v(&["user", "list"]), false));
                }
                Grant::None => {
                    calls.push((v(&["get", "/xtask-smoke-outside"]), false));
                    calls.push((v(&["put", "/xtask-smoke-outside", "z"]), false));
                    calls.push((v(&["endpoint", "health"]), true));
                }
            }
            let mut n = 0;
            for (args, allowed) in &calls {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = self.etcdctl_as(&dir, &[0], &a)?;
                let err = String::from_utf8_lossy(&out.stderr);
                let reason = err.lines().find(|l| l.contains("Error") || l.contains("rpc error")).unwrap_or(err.trim());
                let refused_by_auth =
                    ["permission denied", "user name not found", "user not found"].iter().any(|r| reason.contains(r));
                match (allowed, out.status.success()) {
                    (true, true) => {}
                    (false, false) if refused_by_auth => {}
                    (true, false) => wrong.push(format!("{name}: `{}` refused: {reason}", args.join(" "))),
                    (false, true) => wrong.push(format!("{name}: `{}` allowed", args.join(" "))),
                    (false, false) => {
                        wrong.push(format!("{name}: `{}` refused, not by etcd's auth: {reason}", args.join(" ")))
                    }
                }
                n += 1;
            }
            notes.push(format!("{name} {n} calls"));
        }
        if !wrong.is_empty() {
            bail!("{}", wrong.join("; "));
        }
        Ok(format!("as the grants say: {}", notes.join(", ")))
    }

    /// Revokes a client without a user (`healthcheck` if there is one) and reissues it; the
    /// engine puts the CRLs in place; the old certificate is refused, the new one works.
    fn revoke_under_load(
        &mut self,
        access: &crate::auth::roles::Access,
        deliver: &mut dyn FnMut(&mut Self, &str) -> Result<String>,
    ) -> Result<String> {
        let scrape = self.spec().monitoring.as_ref().map(|m| m.scrape_client.clone());
        let victim = access
            .grants
            .iter()
            .filter(|(n, g)| **g == Grant::None && Some(*n) != scrape.as_ref())
            .map(|(n, _)| n.clone())
            .min_by_key(|n| n != "healthcheck")
            .context("no client without a user (other than the scrape client) to revoke")?;
        let old = self.out().join(format!("revoked-{victim}"));
        let dir = self.pki().client_dir(&victim);
        std::fs::create_dir_all(&old).with_context(|| format!("cannot create {}", old.display()))?;
        for f in ["ca.crt", "client.crt", "client.key"] {
            std::fs::copy(dir.join(f), old.join(f)).with_context(|| format!("cannot copy {f} of {victim}"))?;
        }
        self.phase(REVOKED);
        let t = Instant::now();
        let pki = self.pki().root.display().to_string();
        self.xtask(&["pki".into(), "revoke".into(), pki, "--client".into(), victim.clone()])?;
        let how = deliver(self, "revoke")?;
        let placed = t.elapsed().as_secs_f64();
        let out = self.etcdctl_as(&old, &[0, 1, 2], &["endpoint", "health", "--command-timeout=2s"])?;
        let refused_s = t.elapsed().as_secs_f64();
        if out.status.success() {
            bail!("{victim}'s revoked certificate still works after the CRLs were put in place ({how})");
        }
        let fresh = self.etcdctl_as(&dir, &[0, 1, 2], &["endpoint", "health"])?;
        if !fresh.status.success() {
            bail!("{victim}'s reissued certificate is refused: {}", String::from_utf8_lossy(&fresh.stderr).trim());
        }
        std::thread::sleep(Duration::from_secs(2));
        Ok(format!(
            "{victim} revoked and reissued; CRLs {how} {placed:.1} s after `pki revoke` began; its old certificate refused by \
             all three members ({refused_s:.1} s from the start), the reissued one accepted"
        ))
    }

    /// `pki renew` of every leaf (the load's identity among them) with auth on, delivered the
    /// engine's way: users and roles are keyed by CN, so the load goes on with its new
    /// certificate; the phase's requests, none failed.
    fn renew_under_auth(&mut self, deliver: &mut dyn FnMut(&mut Self, &str) -> Result<String>) -> Result<String> {
        self.phase(RENEWED);
        let t = Instant::now();
        let totals = || self.load.as_ref().map(|l| l.totals()).unwrap_or_default();
        let before = totals();
        let pki = self.pki().root.display().to_string();
        self.xtask(&["pki".into(), "renew".into(), pki])?;
        let how = deliver(self, "renew")?;
        let delivered = t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(3));
        let after = self.load.as_ref().map(|l| l.totals()).unwrap_or_default();
        let (requests, failed) = (after.0 - before.0, after.1 - before.1);
        if failed > 0 || requests == 0 {
            bail!("{requests} requests during the renewal and 3 s after it, {failed} failed");
        }
        Ok(format!(
            "files {how} {delivered:.1} s after `pki renew` began; {requests} requests of the load meanwhile and 3 s \
             after (as its identity, renewed too), 0 failed"
        ))
    }

    /// The load's rate and latency in the phases with auth off and on.
    fn side_by_side(&mut self) -> Result<String> {
        let Some(load) = &self.load else { bail!("no load") };
        let (off, on) = (load.phase_stats(AUTH_OFF), load.phase_stats(AUTH_ON));
        if off.requests == 0 || on.requests == 0 {
            bail!("no requests to compare: {} with auth off, {} with auth on", off.requests, on.requests);
        }
        let ratio = on.rate() / off.rate();
        // `auth_...` on podman, `host_auth_...` and `portable_auth_...` on the machines.
        let key = |what: &str| format!("{}_{what}", self.name.replace('/', "_"));
        self.timings.insert(key("off_rate"), off.rate());
        self.timings.insert(key("on_rate"), on.rate());
        self.timings.insert(key("off_mean_latency_ms"), off.mean_latency_ms());
        self.timings.insert(key("on_mean_latency_ms"), on.mean_latency_ms());
        let text = format!(
            "auth off {:.0} requests/s (mean {:.1} ms, worst {:.0} ms, {} failed); auth on {:.0}/s (mean {:.1} ms, worst {:.0} ms, {} \
             failed): {ratio:.2}x; the load is paced at 120 requests/s, so the latency is the sensitive figure",
            off.rate(),
            off.mean_latency_ms(),
            off.worst_latency_ms,
            off.failed,
            on.rate(),
            on.mean_latency_ms(),
            on.worst_latency_ms,
            on.failed
        );
        if !(0.9..=1.1).contains(&ratio) {
            bail!("{text}");
        }
        Ok(text)
    }
}
