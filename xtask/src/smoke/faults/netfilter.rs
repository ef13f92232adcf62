//! Packet faults inside a member's own network namespace: the host's iptables run there with
//! `nsenter -t PID -n` (the image stays as it is, the host's firewall is not touched). In: the
//! pid of a process in the member's namespace (its name for messages) and the peers' addresses.
//! Out: the rules in place until [`heal`] flushes them.

use std::process::Command;

use anyhow::{Context, Result};

use crate::util::stdout_of;

/// A member's network namespace, by the pid of a process in it.
pub struct Namespace<'a> {
    pub pid: &'a str,
    /// The member as messages name it (its container, its machine).
    pub who: &'a str,
}

impl Namespace<'_> {
    /// One iptables command in the namespace (waiting up to 5 s for the xtables lock).
    pub fn iptables(&self, rule: &[&str]) -> Result<()> {
        stdout_of(Command::new("nsenter").args(["-t", self.pid, "-n", "iptables", "-w", "5"]).args(rule))
            .with_context(|| format!("iptables {} in {}'s network namespace", rule.join(" "), self.who))?;
        Ok(())
    }

    /// Every packet to and from `peers` dropped (clients reach the member from elsewhere).
    pub fn cut_off(&self, peers: &[String]) -> Result<()> {
        for ip in peers {
            self.iptables(&["-A", "INPUT", "-s", ip, "-j", "DROP"])?;
            self.iptables(&["-A", "OUTPUT", "-d", ip, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Packets from `from` dropped at random with `probability` (e.g. "0.4"): one-way loss.
    pub fn lose_from(&self, from: &str, probability: &str) -> Result<()> {
        self.iptables(&[
            "-A",
            "INPUT",
            "-s",
            from,
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            probability,
            "-j",
            "DROP",
        ])
    }

    /// Every TCP packet to `peers` handed to the netfilter queue `queue` (served by
    /// `xtask delay-packets`, see `netdelay.rs`; bypassed when nothing serves it).
    pub fn queue_to(&self, peers: &[String], queue: &str) -> Result<()> {
        for ip in peers {
            self.iptables(&[
                "-A",
                "OUTPUT",
                "-d",
                ip,
                "-p",
                "tcp",
                "-j",
                "NFQUEUE",
                "--queue-num",
                queue,
                "--queue-bypass",
            ])?;
        }
        Ok(())
    }
}

/// Removes every rule a fault added in the namespace.
pub fn heal(ns: &Namespace<'_>) -> Result<()> {
    ns.iptables(&["-F", "INPUT"])?;
    ns.iptables(&["-F", "OUTPUT"])
}
