//! What the scenarios ask Prometheus about the members: started beside them once they are
//! healthy, whether the alert meant for each fault fires and resolves, whether the probes see
//! renewed certificates, and what fired during a CA rotation. In: a run whose description has
//! `[monitoring]` (on podman: Prometheus reaches the members' addresses from the host). Out:
//! notes for the checks; none without Prometheus.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::render::monitoring;
use crate::smoke::engine::Members;
use crate::smoke::scenarios::run::Run;
use crate::smoke::workload::prometheus::{
    expiry_gained, expiry_moved, unix_now, Prometheus, ALERT_BOUND, EXPIRY, PROBED, SCALE,
};

impl<E: Members> Run<E> {
    /// Starts Prometheus on this cluster (the rendered configuration, time compressed) and
    /// waits (bounded) until it has scraped all three members with the scrape client.
    pub(crate) fn start_prometheus(&mut self) -> Result<String> {
        let p = Prometheus::start(&self.out().join("prometheus"), self.spec(), &self.pki().root)?;
        let t = Instant::now();
        let (up, _) = self.poll(
            "Prometheus did not scrape all three members",
            Duration::from_secs(30),
            Duration::from_millis(250),
            |_| {
                let up = p.targets_up()?;
                let members = up.get(crate::render::monitoring::JOB).copied().unwrap_or_default();
                let probes = p.query(PROBED)?;
                Ok(if members == (3, 3) && probes.len() == 3 && probes.values().all(|v| *v == 1.0) {
                    Ok(members)
                } else {
                    Err(format!("{members:?} of the members' targets up, TLS probes {probes:?}"))
                })
            },
        )?;
        let expiry = p.query(EXPIRY)?;
        let days = expiry.values().fold(f64::INFINITY, |a, b| a.min(*b)) - unix_now();
        // An alert that found no series at Prometheus's first evaluations (the probes had not
        // run yet) is pending until the next one: give the rules an evaluation or two.
        let quiet = match p.wait(&monitoring::alert_names(), false, Duration::from_secs(10)) {
            Ok(_) => Vec::new(),
            Err(_) => p.alerts()?,
        };
        let note = format!(
            "{}/{} members scraped over https with the scrape client's certificate and their client ports probed by \
             the blackbox exporter after {:.1} s (rules {}x time compressed); earliest certificate expiry the probes \
             see: in {:.0} days; alerts on a healthy cluster: {}",
            up.0,
            up.1,
            t.elapsed().as_secs_f64(),
            SCALE,
            days / 86400.0,
            if quiet.is_empty() {
                "none".to_string()
            } else {
                quiet.iter().map(|a| a.name.clone()).collect::<Vec<_>>().join(", ")
            }
        );
        self.prometheus = Some(p);
        Ok(note)
    }

    /// With Prometheus watching: each member's certificate expiry as its TLS probe sees it.
    pub(crate) fn probed_expiry(&self) -> Option<Result<BTreeMap<String, f64>>> {
        self.prometheus.as_ref().map(|p| p.query(EXPIRY))
    }

    /// With Prometheus watching: waits (bounded) until every member's probed expiry is later than
    /// in `before` (renewed certificates served), and checks the expiry alert stays quiet.
    pub(crate) fn probed_expiry_moved(&self, before: &BTreeMap<String, f64>) -> Option<Result<String>> {
        let p = self.prometheus.as_ref()?;
        let t = Instant::now();
        Some((|| {
            let (after, _) = self.poll(
                "the TLS probes did not see the renewed certificates",
                ALERT_BOUND,
                Duration::from_millis(250),
                |_| {
                    let now = p.query(EXPIRY)?;
                    let moved = expiry_moved(before, &now);
                    Ok(if moved { Ok(now) } else { Err(format!("before {before:?}, now {now:?}")) })
                },
            )?;
            let expiring: Vec<String> =
                p.alerts()?.into_iter().filter(|a| a.name == "etcdCertificateExpiresSoon").map(|a| a.state).collect();
            if !expiring.is_empty() {
                bail!("etcdCertificateExpiresSoon is {} after the renewal", expiring.join(", "));
            }
            Ok(format!(
                "the TLS probes saw the new dates {:.1} s after the renewal ({}); etcdCertificateExpiresSoon quiet",
                t.elapsed().as_secs_f64(),
                expiry_gained(before, &after)
            ))
        })())
    }

    /// With Prometheus watching: hands it the scrape client's current files, as the operator
    /// does on the Prometheus host after each step of a CA rotation, and waits (bounded) until
    /// it has scraped all three members with them; the seconds that took.
    pub(crate) fn prometheus_restage(&self) -> Result<Option<f64>> {
        let (Some(p), Some(m)) = (&self.prometheus, &self.spec().monitoring) else { return Ok(None) };
        p.take_certs(&self.pki().client_dir(&m.scrape_client))?;
        let (t, since) = (Instant::now(), unix_now());
        let sel = format!("job=\"{}\"", monitoring::JOB);
        let fresh = format!("count((up{{{sel}}} == 1) and (timestamp(up{{{sel}}}) > {since:.3}))");
        self.poll(
            "Prometheus did not scrape all three members with the new files",
            ALERT_BOUND,
            Duration::from_millis(250),
            |_| {
                let n = p.query(&fresh)?.values().next().copied().unwrap_or(0.0);
                Ok(if n == 3.0 { Ok(()) } else { Err(format!("{n} of 3 members scraped since the files changed")) })
            },
        )?;
        Ok(Some(t.elapsed().as_secs_f64()))
    }

    /// With Prometheus watching, after a CA rotation that began at `since` with the probes
    /// seeing the expiry dates `before`: waits (bounded) until all three members are scraped and
    /// probed under the new CA with later dates, then asks Prometheus which alerts fired during
    /// the rotation: a certificate as expiring fails it. The member alerts are not judged: with
    /// time compressed 60 times, three restarts in a row are a quarter of an hour of a member
    /// down, and a scrape gap as one restart ends and the next begins is minutes of two (the
    /// quorum is judged by the client load instead: no request may fail in this scenario).
    /// `steps` says how soon Prometheus scraped all three with the files of each step (their
    /// TLS checked as they changed).
    pub(crate) fn monitoring_after_rotation(
        &self,
        before: &BTreeMap<String, f64>,
        since: Instant,
        steps: &[String],
    ) -> Option<Result<String>> {
        let p = self.prometheus.as_ref()?;
        let t = Instant::now();
        Some((|| {
            let (after, _) = self.poll(
                "Prometheus did not scrape and probe every member under the new CA",
                ALERT_BOUND,
                Duration::from_millis(250),
                |_| {
                    let up = p.targets_up()?.get(monitoring::JOB).copied().unwrap_or_default();
                    let probes = p.query(PROBED)?;
                    let now = p.query(EXPIRY)?;
                    let moved = expiry_moved(before, &now);
                    Ok(if up == (3, 3) && probes.values().filter(|v| **v == 1.0).count() == 3 && moved {
                        Ok(now)
                    } else {
                        Err(format!("{up:?} members up, probes {probes:?}, expiry before {before:?}, now {now:?}"))
                    })
                },
            )?;
            let window = since.elapsed().as_secs() + 2;
            let fired =
                p.query_by(&format!("max_over_time(ALERTS{{alertstate=\"firing\"}}[{window}s])"), "alertname")?;
            let forbidden = ["etcdCertificateExpiresSoon"];
            let bad: Vec<&String> = fired.keys().filter(|a| forbidden.contains(&a.as_str())).collect();
            if !bad.is_empty() {
                bail!("during the CA rotation {bad:?} fired (all alerts that fired: {:?})", fired.keys());
            }
            let others = if fired.is_empty() {
                "none".to_string()
            } else {
                format!(
                    "{} (the rolling restarts, with time compressed)",
                    fired.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            };
            Ok(format!(
                "its files copied to Prometheus at each step, no reload: all three scraped with them after {}; \
                 scraped and probed under the new CA {:.1} s after the last restart ({}); fired during the \
                 {window} s of the rotation: {others}; never {}",
                steps.join(", "),
                t.elapsed().as_secs_f64(),
                expiry_gained(before, &after),
                forbidden.join(", ")
            ))
        })())
    }

    /// With Prometheus watching: that none of `names` is pending or firing now.
    pub(crate) fn alerts_quiet(&self, names: &[&str]) -> Option<Result<String>> {
        let p = self.prometheus.as_ref()?;
        Some(p.alerts().and_then(|now| {
            let loud: Vec<String> = now
                .iter()
                .filter(|a| names.contains(&a.name.as_str()))
                .map(|a| format!("{} ({})", a.name, a.state))
                .collect();
            if loud.is_empty() {
                Ok(format!("quiet: {}", names.join(", ")))
            } else {
                bail!("{} should be quiet now", loud.join(", "))
            }
        }))
    }

    /// With Prometheus watching: waits (bounded) for `names` to fire, counting from `since`
    /// (when the fault was injected); a note with each one's time, or why not.
    pub(crate) fn alerts_fire(&self, names: &[&str], since: Instant) -> Option<Result<String>> {
        self.alerts_wait(names, true, since)
    }

    /// With Prometheus watching: waits (bounded) for `names` to resolve, counting from `since`.
    pub(crate) fn alerts_resolve(&self, names: &[&str], since: Instant) -> Option<Result<String>> {
        self.alerts_wait(names, false, since)
    }

    fn alerts_wait(&self, names: &[&str], firing: bool, since: Instant) -> Option<Result<String>> {
        let p = self.prometheus.as_ref()?;
        let before = since.elapsed().as_secs_f64();
        Some(p.wait(names, firing, ALERT_BOUND).map(|took| {
            let each: Vec<String> = names.iter().zip(took).map(|(n, s)| format!("{n} {:.1} s", before + s)).collect();
            let what = if firing { "fired after the fault" } else { "resolved after the heal" };
            format!("{what}: {}", each.join(", "))
        }))
    }

    /// Records the check `name` from the alert waits' notes (none without Prometheus).
    pub(crate) fn record_alerts(&mut self, name: &str, since: Instant, alerts: Vec<Result<String>>) {
        if !alerts.is_empty() {
            let result = alerts.into_iter().collect::<Result<Vec<_>>>().map(|v| v.join("; "));
            self.record(name, since, result);
        }
    }
}
