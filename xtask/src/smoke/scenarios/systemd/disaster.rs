//! `--scenario disaster` on the machines: the two ways back from a lost quorum, under the client
//! load, as each node's INSTALL.md says ("Bring the cluster back after it lost its quorum"),
//! its blocks run verbatim in the machines. The backups are the rendered units' own: each
//! member's `etcd-backup.service` takes and checks a snapshot, its `etcd-backup-ship.service`
//! ships it with rsync over ssh to a backup host of the run's own (sshd in the run's network
//! namespace, with render's `authorized_keys`: each member's key confined to its directory by
//! rrsync). Then:
//!
//! - the survivor path: two machines destroyed with their disks (writes refused), the leader
//!   forced into a one-member cluster (`ETCD_FORCE_NEW_CLUSTER`, once, by a runtime drop-in),
//!   the others booted fresh, added back as learners one at a time and promoted; where etcd
//!   panics on the forced start (before 3.4.14, once a learner was added since the member's last
//!   raft snapshot: etcd issue 12285), INSTALL.md's fallback instead: the leader's database as it
//!   stopped, restored on all three. Either way it must lose nothing;
//! - the snapshot path: a new backup by the units under load, writes going on, all three
//!   machines destroyed; the newest good snapshot on the backup host checked and copied to three
//!   fresh machines, restored there with a new cluster token; it loses the writes acknowledged
//!   after the snapshot's revision, and those only.
//!
//! After each, what `recovery.rs` judges on every engine: `endpoint hashkv` equal, the keys held
//! to the load's history at one revision, the RTO (from the decision to restore to 3/3 healthy
//! and a write taken) and the writes lost. In: a form's machines, rendered with a `[backup]`
//! target on the backup host. Out: the checks, and the figures in the report's timings.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::LOAD_BOUNDS;
use crate::smoke::engine::hosts::{Form, Hosts, HEALTHY_TIMEOUT};
use crate::smoke::engine::machines::Machine;
use crate::smoke::engine::Members;
use crate::smoke::scenarios::run::Run;
use crate::smoke::scenarios::ScenarioName;
use crate::smoke::workload::backup_host::BackupHost;
use crate::util::{each_in_thread, tail};

/// How long writes go on after the second backups before all three machines are destroyed.
const WRITES_AFTER_BACKUP: Duration = Duration::from_secs(3);
/// The RTO goal of each path (issue 35).
const RTO_GOAL_S: f64 = 60.0;
/// What etcd before 3.4.14 logs when its forced start meets a learner's configuration change
/// (etcd issue 12285; capnslog and zap loggers).
const LEARNER_PANIC: [&str; 2] =
    ["ConfChange Type should be either ConfChangeAddNode or ConfChangeRemoveNode", "unknown ConfChange Type"];
/// One restore block in a machine (it waits for a quorum when etcd starts).
const RESTORE_TIMEOUT_S: u32 = 150;

/// One snapshot on the backup host: what `etcdctl snapshot status` says of it, and its size.
struct Shipped {
    revision: i64,
    bytes: u64,
}

impl Run<Hosts> {
    /// The disaster scenario on this form's machines, with `backups` the backup host their
    /// bundles ship to.
    pub(super) fn disaster(&mut self, backups: &BackupHost) -> Result<()> {
        let name = format!("{}/disaster", self.form.as_str());
        self.next_scenario(ScenarioName::Disaster, name);
        self.start_load(LOAD_BOUNDS)?;
        std::thread::sleep(Duration::from_secs(1));
        // The survivor path needs no backup (it comes back from the survivor's data); the
        // snapshot path's backups, by every member's units, prove the shipping.
        let ok = self.run_check("survivor path: two machines lost, the cluster back from the leader's data", |h| {
            h.survivor_path()
        });
        if ok {
            self.run_check("snapshot path: all three machines lost, the newest good snapshot restored on three", |h| {
                h.snapshot_path(backups)
            });
        }
        self.finish_load(0, None);
        Ok(())
    }

    /// Every member's backup units, as the timer starts them: the snapshot taken and checked
    /// (`systemctl start etcd-backup.service` returns when both are done), then the ship step
    /// (started by `OnSuccess=`, read from its journal). Each snapshot is then found on the
    /// backup host and read there by `etcdctl snapshot status`. Figures under
    /// `disaster_<which>_backup_*`.
    fn backup_all(&mut self, backups: &BackupHost, which: &str) -> Result<(String, Vec<Shipped>)> {
        let mut notes = Vec::new();
        let mut shipped = Vec::new();
        let (mut take_s, mut ship_s) = (0.0f64, 0.0f64);
        for i in 0..self.machines.len() {
            let node = self.spec.nodes[i].name.clone();
            let (line, take, ship) = self.backup_unit(i)?;
            take_s = take_s.max(take);
            ship_s = ship_s.max(ship);
            let name = line
                .split_whitespace()
                .find_map(|w| w.rsplit(['/', ':']).next().filter(|n| n.starts_with("snapshot-") && n.ends_with(".db")))
                .with_context(|| format!("{node}: the ship step named no snapshot: {line}"))?
                .to_string();
            let path = backups.storage().join(&self.spec.name).join(&node).join(&name);
            let (revision, keys) = self.snapshot_status(&path)?;
            let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            notes.push(format!("{node}: {name} ({bytes} bytes, revision {revision}, {keys} keys)"));
            shipped.push(Shipped { revision, bytes });
        }
        let bytes = shipped.iter().map(|s| s.bytes).max().unwrap_or(0);
        let revision = shipped.iter().map(|s| s.revision).max().unwrap_or(0);
        for (k, v) in
            [("bytes", bytes as f64), ("take_check_s", take_s), ("ship_s", ship_s), ("revision", revision as f64)]
        {
            self.timings.insert(format!("disaster_{which}_backup_{k}"), v);
        }
        Ok((
            format!(
                "on the backup host, read by etcdctl snapshot status: {}; taken and checked in at most {take_s:.2} s, \
                 shipped in at most {ship_s:.2} s; writes go on",
                notes.join("; ")
            ),
            shipped,
        ))
    }

    /// Machine `i`'s backup units ([`Hosts::backup_now`]): the ship step's line naming the
    /// snapshot it shipped, the seconds to take and check it, the seconds to ship it.
    fn backup_unit(&self, i: usize) -> Result<(String, f64, f64)> {
        let run = self.backup_now(i)?;
        let line = run
            .journal
            .lines()
            .find(|l| l.starts_with("etcd-backup-ship: shipped to"))
            .with_context(|| format!("{}: the ship step shipped nothing:\n{}", self.machines[i].name, run.journal))?
            .to_string();
        Ok((line, run.take_s, run.ship_s))
    }

    /// Machine `i` destroyed with its disk, and a fresh one made from the cached root in its
    /// place with its bundle copied in (not booted).
    fn replace_machine(&mut self, i: usize) -> Result<()> {
        let node = self.spec.nodes[i].name.clone();
        self.machines[i].destroy()?;
        let (ip, dir) = (self.machines[i].ip, self.machines[i].dir.clone());
        let rootfs = self.machines[i].lower().to_path_buf();
        self.machines[i] = Machine::create(&rootfs, &dir, &node, ip, 24, &self.netns)?;
        self.provision(i)
    }

    /// The ```sh block of node `i`'s INSTALL.md that contains every one of `markers` and none
    /// of `not`.
    fn block_with(&self, i: usize, markers: &[&str], not: &[&str]) -> Result<String> {
        let path = self.render.join(format!("{}.INSTALL.md", self.spec.nodes[i].name));
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        crate::render::host::sh_blocks(&text)
            .into_iter()
            .find(|b| markers.iter().all(|m| b.contains(m)) && !not.iter().any(|m| b.contains(m)))
            .with_context(|| format!("{}: no ```sh block with {markers:?} and without {not:?}", path.display()))
    }

    /// Runs `script` in machine `i` from the install directory, bounded; an error with its
    /// output and etcd's journal.
    fn run_in(&self, i: usize, script: &str, what: &str) -> Result<String> {
        let m = &self.machines[i];
        let out = m.sh_timeout(&format!("cd /root/etcd-install && set -ex\n{script}"), RESTORE_TIMEOUT_S)?;
        if !out.status.success() {
            bail!(
                "{}: {what} failed ({}):\n{}\n  journalctl -u etcd:\n{}",
                m.name,
                out.status,
                tail(&String::from_utf8_lossy(&out.stderr), 12),
                m.journal("etcd.service", 15)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The survivor path, with the leader as the survivor.
    fn survivor_path(&mut self) -> Result<String> {
        let s = self.leader()?.index;
        let lost: Vec<usize> = (0..3).filter(|i| *i != s).collect();
        let survivor = self.spec.nodes[s].name.clone();
        self.phase("survivor path: two machines lost");
        for i in &lost {
            self.replace_machine(*i)?;
        }
        let out = self.etcdctl(&[s], &["put", "--command-timeout=3s", "smoke/two-lost", "unknown"])?;
        if out.status.success() {
            bail!("a write with two of three members lost succeeded");
        }
        let refused = String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().trim().to_string();
        let r = self.stable_revision(s)?;
        // The decision to restore.
        let t = Instant::now();
        let before = self.load.as_ref().map(|l| l.current_epoch()).unwrap_or(0);
        if let Some(l) = &self.load {
            l.epoch("between: after the survivor path");
        }
        self.phase("survivor path: restore");
        let force = self.block_with(s, &["ETCD_FORCE_NEW_CLUSTER=true"], &[])?;
        let mut notes =
            vec![format!("{survivor} (the leader) survives; writes refused with two machines lost ({refused})")];
        match self.run_in(s, &force, "the forced start (INSTALL.md)") {
            Ok(_) => {
                self.wait_healthy(&[s], HEALTHY_TIMEOUT)
                    .with_context(|| format!("{survivor} after the forced start"))?;
                notes.push(format!(
                    "forced into a one-member cluster at revision {r} in {:.1} s",
                    t.elapsed().as_secs_f64()
                ));
                let mut voting = vec![s];
                for j in lost {
                    notes.push(self.add_back(j, s, &voting)?);
                    voting.push(j);
                }
            }
            // etcd before 3.4.14 panics on the forced start once a learner was added since the
            // member's last raft snapshot (etcd issue 12285): INSTALL.md's way around it, the
            // member's database as it stopped, restored on all three.
            Err(e) if LEARNER_PANIC.iter().any(|p| format!("{e:#}").contains(p)) || self.panicked(s) => {
                let db = match self.form {
                    Form::Portable => "cp /var/lib/private/etcd/member/snap/db /root/etcd-restore.db",
                    _ => "cp /var/lib/etcd/member/snap/db /root/etcd-restore.db",
                };
                let fallback = self.block_with(s, &[db], &[])?;
                self.run_in(s, &fallback, "the fallback: the survivor's database (INSTALL.md)")?;
                let db = self.machines[s].root().join("root/etcd-restore.db");
                let copy = self.out.join("survivor-db").join("etcd-restore.db");
                fs::create_dir_all(copy.parent().context("a directory")?)
                    .with_context(|| format!("cannot create {}", copy.display()))?;
                fs::copy(&db, &copy).with_context(|| format!("cannot copy {} out of {survivor}", db.display()))?;
                notes.push(format!(
                    "etcd {} panicked on the forced start (a learner had been added since its last raft snapshot: \
                     etcd issue 12285, fixed in 3.4.14), so INSTALL.md's fallback: {survivor}'s database as it \
                     stopped ({} bytes), restored on all three with SKIP_HASH_CHECK=yes",
                    self.version,
                    fs::metadata(&copy).map(|m| m.len()).unwrap_or(0)
                ));
                self.restore_all(&copy, &lost, true)?;
            }
            Err(e) => return Err(e),
        }
        self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT)?;
        self.put_soon("smoke/after-survivor", "ok", 15)?;
        let rto = t.elapsed().as_secs_f64();
        self.phase("after the survivor path");
        let failed = self.load.as_ref().map(|l| l.phase_stats("survivor path: restore").failed).unwrap_or(0);
        let members = self.members(&[0, 1, 2])?;
        let started = members.iter().filter(|m| m["isLearner"].as_bool() != Some(true) && m["name"] != "").count();
        if members.len() != 3 || started != 3 {
            bail!("after the survivor path: {} members, {started} started voting ones: {members:?}", members.len());
        }
        notes.push(self.hashkv_equal()?);
        let loss = self.judge_restore(before, r)?;
        if loss.lost > 0 {
            bail!("the survivor was the leader, in sync, yet {} acknowledged writes are lost", loss.lost);
        }
        notes.push(loss.summary(r));
        let path = format!("{}_survivor", self.form.as_str());
        self.record_rto(&path, rto, &loss, failed);
        notes.push(format!("RTO {rto:.1} s (goal {RTO_GOAL_S} s); {failed} requests failed during the restore"));
        if rto > RTO_GOAL_S {
            bail!("RTO {rto:.1} s above the goal of {RTO_GOAL_S} s: {}", notes.join("; "));
        }
        Ok(notes.join("; "))
    }

    /// Lost member `j` back on its fresh machine: `member add --learner` on the survivor `s`
    /// (the host form: INSTALL.md's block there; the portable form's operator runs it from a
    /// workstation, this namespace), the machine booted and installed joining the cluster as
    /// `member add` printed it, then promoted once caught up.
    fn add_back(&mut self, j: usize, s: usize, voting: &[usize]) -> Result<String> {
        let node = self.spec.nodes[j].name.clone();
        self.phase(&format!("survivor path: {node} added as a learner"));
        let added = match self.form {
            Form::Portable => self.add_learner(&node, &self.peer_url(j), voting)?,
            _ => {
                let add = self.block_with(j, &["etcdctl member add"], &["member remove"])?;
                self.run_in(s, &add, "member add (INSTALL.md)")?
            }
        };
        let initial = added
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
            .map(|v| v.trim_matches('"').to_string())
            .with_context(|| format!("member add printed no ETCD_INITIAL_CLUSTER: {added}"))?;
        self.boot(&[j])?;
        let join = self.block_with(j, &["ETCD_INITIAL_CLUSTER=$ETCD_INITIAL_CLUSTER"], &[])?;
        // INSTALL.md: its install steps, with the join line after the tar is unpacked, and the
        // value `member add` printed, as the operator pastes it.
        let script = format!("export ETCD_INITIAL_CLUSTER='{initial}'\n{}", self.install_joining(j, &join)?);
        self.phase(&format!("survivor path: {node} joining"));
        self.run_in(j, &script, "the install steps joining the cluster")?;
        self.phase(&format!("survivor path: {node} promoted"));
        let tries = match self.form {
            Form::Portable => {
                let id = format!("{:x}", self.member_id(&node, voting)?);
                self.promote(&id, voting, Duration::from_secs(60))?
            }
            _ => {
                let promote = self.block(j, "etcdctl member promote")?;
                self.run_in(s, &promote, "member promote (INSTALL.md)")?;
                1
            }
        };
        Ok(format!("{node} booted fresh, added back as a learner, joined with {initial}, promoted ({tries} tries)"))
    }

    /// The snapshot path: new backups by the units under load, writes going on, all three
    /// machines lost; the newest good snapshot on the backup host restored on three fresh ones.
    fn snapshot_path(&mut self, backups: &BackupHost) -> Result<String> {
        self.phase("snapshot path: backups");
        let which = format!("{}_second", self.form.as_str());
        let (why, _) = self.backup_all(backups, &which)?;
        let mut notes = vec![why];
        std::thread::sleep(WRITES_AFTER_BACKUP);
        self.phase("snapshot path: all three machines lost");
        for i in 0..3 {
            self.replace_machine(i)?;
        }
        // The decision to restore.
        let t = Instant::now();
        let epochs = self.load.as_ref().map(|l| l.current_epoch() + 1).unwrap_or(0);
        if let Some(l) = &self.load {
            l.epoch("after: restored from the snapshot");
        }
        self.phase("snapshot path: restore");
        let (snap, r) = self.newest_good(backups)?;
        self.restore_all(&snap, &[0, 1, 2], false)?;
        self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT).context("after the restore")?;
        self.put_soon("smoke/after-snapshot", "ok", 15)?;
        let rto = t.elapsed().as_secs_f64();
        self.phase("after the snapshot path");
        let failed = self.load.as_ref().map(|l| l.phase_stats("snapshot path: restore").failed).unwrap_or(0);
        notes.push(format!(
            "{} (revision {r}) checked, copied to three fresh machines and restored there by INSTALL.md's block",
            snap.display()
        ));
        let members = self.members(&[0, 1, 2])?;
        if members.len() != 3 || members.iter().any(|m| m["isLearner"].as_bool() == Some(true)) {
            bail!("after the restore: {members:?}");
        }
        notes.push(self.hashkv_equal()?);
        let lost = self.judge_epochs(epochs, r, &mut notes)?;
        let path = format!("{}_snapshot", self.form.as_str());
        self.record_rto(&path, rto, &lost, failed);
        notes.push(format!(
            "lost {} acknowledged writes over {:.1} s (after the snapshot's revision); RTO {rto:.1} s (goal \
             {RTO_GOAL_S} s); {failed} requests failed during the restore; clients see new member IDs and the \
             revision back at {r}",
            lost.lost,
            lost.span_s()
        ));
        if rto > RTO_GOAL_S {
            bail!("RTO {rto:.1} s above the goal of {RTO_GOAL_S} s: {}", notes.join("; "));
        }
        Ok(notes.join("; "))
    }

    /// Every member restored from `snap` by INSTALL.md's block of its form, side by side (the
    /// first waits for a quorum): the machines `fresh` booted and installed up to starting
    /// etcd first, the others as they are; `skip_hash` for a copy of a member's database (no
    /// hash appended).
    fn restore_all(&mut self, snap: &Path, fresh: &[usize], skip_hash: bool) -> Result<()> {
        self.boot(fresh)?;
        let mut scripts = Vec::new();
        for i in 0..3 {
            self.machines[i].copy_in(snap, "/root/etcd-restore.db", 0o600)?;
            let restore = self.restore_block(i)?;
            let mut script = String::new();
            if skip_hash {
                script.push_str("export SKIP_HASH_CHECK=yes\n");
            }
            if fresh.contains(&i) {
                script.push_str(&self.install_until_start(i)?);
            }
            script.push_str(&restore);
            scripts.push(script);
        }
        let results = each_in_thread(&self.machines, "a restore", |i, m| {
            let out = m.sh_timeout(&format!("cd /root/etcd-install && set -ex\n{}", scripts[i]), RESTORE_TIMEOUT_S)?;
            if !out.status.success() {
                bail!(
                    "{}: the restore steps failed ({}):\n{}\n  journalctl -u etcd:\n{}",
                    m.name,
                    out.status,
                    tail(&String::from_utf8_lossy(&out.stderr), 12),
                    m.journal("etcd.service", 15)
                );
            }
            Ok(())
        });
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    }

    /// Whether member `i`'s etcd panicked the way etcd issue 12285 does (its journal).
    fn panicked(&self, i: usize) -> bool {
        let journal = self.machines[i].journal("etcd.service", 200);
        LEARNER_PANIC.iter().any(|p| journal.contains(p))
    }

    /// The newest snapshot of any member on the backup host (names sort by time) that
    /// `etcdctl snapshot status` reads, and its revision; older ones are tried when a newer one
    /// fails (each failure named).
    fn newest_good(&self, backups: &BackupHost) -> Result<(PathBuf, i64)> {
        let mut found = Vec::new();
        for node in &self.spec.nodes {
            let dir = backups.storage().join(&self.spec.name).join(&node.name);
            for e in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
                let path = e?.path();
                let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                if name.starts_with("snapshot-") && name.ends_with("Z.db") {
                    found.push((name, path));
                }
            }
        }
        found.sort();
        let mut refused = Vec::new();
        for (_, path) in found.into_iter().rev() {
            match self.snapshot_status(&path) {
                Ok((revision, _)) => return Ok((path, revision)),
                Err(e) => refused.push(format!("{e:#}")),
            }
        }
        bail!("no good snapshot of cluster {} on the backup host: {}", self.spec.name, refused.join("; "))
    }

    /// Node `i`'s install steps up to starting etcd: a fresh machine needs its files, user and
    /// directories before the restore block, which starts etcd.
    fn install_until_start(&self, i: usize) -> Result<String> {
        let install = self.install_block(i)?;
        let start = match self.form {
            Form::Portable => "systemctl start",
            _ => "systemctl enable --now",
        };
        let before: Vec<&str> = install.lines().take_while(|l| !l.trim_start().starts_with(start)).collect();
        if before.len() == install.lines().count() {
            bail!("{}'s INSTALL.md install steps do not start etcd with `{start}`", self.spec.nodes[i].name);
        }
        Ok(before.join("\n") + "\n")
    }

    /// INSTALL.md's restore block of node `i`'s form (it starts etcd).
    fn restore_block(&self, i: usize) -> Result<String> {
        match self.form {
            Form::Portable => self.block_with(i, &["systemd-run", "snapshot restore"], &[]),
            _ => self.block_with(i, &["chown -R etcd:etcd /var/lib/etcd"], &[]),
        }
    }
}
