//! One scenario's run on an engine: the members, and what the scenario records of them. In: an
//! engine's running members. Out: the checks (each PASS or FAIL with its reason, as it happens),
//! the timings, each member's time to healthy again, the load and Prometheus beside the members,
//! and the load's report once finished: what `report/` keeps of the scenario.
//!
//! A `Run<E>` derefs to its members, so a scenario's step reads `self.etcdctl_ok(...)` on any
//! engine and `self.nodes[...]` on podman's.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::ScenarioName;
use crate::smoke::engine::Members;
use crate::smoke::report::{record_check, Check, Outcome, ScenarioReport};
use crate::smoke::workload::load::{Load, LoadReport, Transport};
use crate::smoke::workload::prometheus::Prometheus;

/// A scenario's run on the members `E`.
pub(crate) struct Run<E> {
    /// The client load beside the members (field order is drop order: the load and
    /// Prometheus go before the members).
    pub load: Option<Load>,
    /// Debian's Prometheus scraping the members (descriptions with `[monitoring]`, podman
    /// engine, basic, rotate-certs and drills scenarios), started once the cluster is healthy.
    pub prometheus: Option<Prometheus>,
    pub members: E,
    pub scenario: ScenarioName,
    /// The scenario's name in the report: `basic`, or `portable/basic` on the systemd machines.
    pub name: String,
    pub checks: Vec<Check>,
    pub timings: BTreeMap<String, f64>,
    /// Seconds from a member's restart (or replacement) to 3/3 healthy, in the order they happened.
    pub member_healthy: Vec<(String, f64)>,
    pub load_report: Option<LoadReport>,
    /// Who the client load is and how it speaks (the operator over the gateway unless a
    /// scenario says otherwise).
    pub load_as: LoadAs,
}

/// Where the load's keys go.
pub(crate) const LOAD_PREFIX: &str = "load/";

/// The client load's identity, transport and key prefix.
#[derive(Debug, Clone)]
pub(crate) struct LoadAs {
    /// A client of the description; `None`: the operator's identity ([`Members::client_dir`]).
    pub client: Option<String>,
    pub transport: Transport,
    pub prefix: String,
}

impl Default for LoadAs {
    fn default() -> Self {
        LoadAs { client: None, transport: Transport::Gateway, prefix: LOAD_PREFIX.into() }
    }
}

impl<E> Deref for Run<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.members
    }
}

impl<E> DerefMut for Run<E> {
    fn deref_mut(&mut self) -> &mut E {
        &mut self.members
    }
}

impl<E> Run<E> {
    pub fn new(members: E, scenario: ScenarioName, name: String) -> Self {
        Run {
            load: None,
            prometheus: None,
            members,
            scenario,
            name,
            checks: Vec::new(),
            timings: BTreeMap::new(),
            load_as: LoadAs::default(),
            member_healthy: Vec::new(),
            load_report: None,
        }
    }

    /// The next scenario on the same members (the systemd machines run them one after another).
    pub fn next_scenario(&mut self, scenario: ScenarioName, name: String) {
        self.scenario = scenario;
        self.name = name;
    }

    /// Runs one check, timed, and records it; true when it passed.
    pub fn run_check(&mut self, name: &str, check: impl FnOnce(&mut Self) -> Result<String>) -> bool {
        let started = Instant::now();
        let result = check(self);
        let passed = result.is_ok();
        self.record(name, started, result);
        passed
    }

    /// Records the check `name` that began at `started` (printed as it happens).
    pub fn record(&mut self, name: &str, started: Instant, result: Result<String>) {
        record_check(&mut self.checks, &self.name, name, started, result);
    }

    /// Whether a check of this run failed so far.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.outcome == Outcome::Fail)
    }

    /// Names the scenario's current step: the load's failures are reported per phase.
    pub fn phase(&self, name: &str) {
        if let Some(l) = &self.load {
            l.phase(name);
        }
        eprintln!("smoke: {}: {name}", self.name);
    }

    /// What the report keeps of the scenario so far (its load report and members' times are
    /// taken: the next scenario on the same members starts without them).
    pub fn take_report(&mut self, seconds: f64) -> ScenarioReport {
        ScenarioReport {
            name: self.name.clone(),
            seconds,
            load: self.load_report.take(),
            member_healthy_s: std::mem::take(&mut self.member_healthy),
        }
    }
}

impl<E: Members> Run<E> {
    /// Repeats `attempt` every `every` until it gives `Ok(value)` or `timeout` passes; an
    /// `Err(reason)` means "not yet", an error of the attempt itself ends the polling. The error
    /// after the timeout says `what` and the last reason. Returns the value and the attempts made.
    pub fn poll<T>(
        &self,
        what: &str,
        timeout: Duration,
        every: Duration,
        mut attempt: impl FnMut(&Self) -> Result<std::result::Result<T, String>>,
    ) -> Result<(T, u32)> {
        let deadline = Instant::now() + timeout;
        let mut tries = 0;
        loop {
            self.interrupt().check()?;
            tries += 1;
            match attempt(self)? {
                Ok(v) => return Ok((v, tries)),
                Err(why) if Instant::now() > deadline => bail!("{what} within {} s: {why}", timeout.as_secs()),
                Err(_) => std::thread::sleep(every),
            }
        }
    }
}
