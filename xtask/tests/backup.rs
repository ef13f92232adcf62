//! The backups' way off the host, proven with the real pieces: an etcd v3.4.9 member (built from
//! source) configured by `render`'s host bundle, the snapshot unit's own ExecStart= and
//! ExecStartPost= lines, the rendered ship script, and a real OpenSSH server set up as
//! docs/systemd-hosts.md says (its backup-host block run verbatim: the user, the directories,
//! the rendered `authorized_keys` with rrsync), reached by rsync over ssh with the pinned host key.
//!
//! Everything runs in a network and mount namespace of the test's own: the tutorial's addresses
//! on its loopback interface, `/etc` and `/usr/local` as overlays, `/srv`, `/home`, `/var/backups` and
//! node exporter's textfile directory on the test's directories (nothing of the host changes).
//! Then, one after another: good snapshots shipped (and the oldest beyond `keep` deleted on both
//! sides), a truncated snapshot refused by the check, a backup host whose key is not the pinned
//! one, a backup host that is down, and one whose disk is full: each fails the ship step with its
//! reason, and deletes nothing.
//!
//! Needs root, ip, unshare, sshd, ssh, ssh-keygen, rsync, rrsync, useradd and etcd v3.4.9
//! (`$XTASK_TEST_ETCD_GIT`, see `common`).

mod common;
use common::namespace_lab::{self, Lab};
use common::{ok, root, XTASK};

use std::fs;
use std::process::Command;

/// The lines of `key=` in a unit, continuation lines joined, `$$` unescaped.
fn exec_lines(unit: &str, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in unit.lines() {
        if let Some(c) = current.as_mut() {
            c.push_str(line.trim_end_matches('\\'));
            if !line.ends_with('\\') {
                out.extend(current.take());
            }
            continue;
        }
        if let Some(v) = line.strip_prefix(&format!("{key}=")) {
            if line.ends_with('\\') {
                current = Some(v.trim_end_matches('\\').to_string());
            } else {
                out.push(v.to_string());
            }
        }
    }
    out.iter().map(|l| l.replace("$$", "$")).collect()
}

/// The ```sh block of docs/systemd-hosts.md that sets up the backup host.
fn backup_host_block() -> String {
    let page = common::doc("docs/systemd-hosts.md");
    xtask::render::host::sh_blocks(&page)
        .into_iter()
        .find(|b| b.contains("useradd") && b.contains("authorized_keys"))
        .expect("docs/systemd-hosts.md has no block that sets up the backup host")
}

#[test]
fn snapshots_reach_a_real_backup_host_and_a_bad_one_deletes_nothing() {
    let (tmp, bin) =
        namespace_lab::with_etcd_349(&["ip", "unshare", "sshd", "ssh", "ssh-keygen", "rsync", "rrsync", "useradd"]);
    let t = tmp.path();

    // The backup host's own key, pinned in the cluster file as the docs say.
    ok(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "backup-host", "-f"])
        .arg(t.join("hostkey")));
    let host_key = fs::read_to_string(t.join("hostkey.pub")).unwrap();
    let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
    let tutorial = fs::read_to_string(root().join("clusters/tutorial.toml")).unwrap();
    let cluster = t.join("backuptest.toml");
    fs::write(
        &cluster,
        format!(
            "{}\n[backup]\ninterval = \"1h\"\nkeep = 2\ntarget = \"etcd-backup@10.0.1.10:/srv/etcd-backups\"\nhost_key = \"{}\"\n",
            tutorial,
            host_key.join(" ")
        ),
    )
    .unwrap();
    let render = t.join("render");
    ok(Command::new(XTASK)
        .args(["render", "--cluster"])
        .arg(&cluster)
        .arg("--pki")
        .arg(t.join("pki"))
        .arg("--out")
        .arg(&render)
        .current_dir(root()));
    let unit = fs::read_to_string(render.join("master1/etc/systemd/system/etcd-backup.service")).unwrap();
    let (start, post) = (exec_lines(&unit, "ExecStart"), exec_lines(&unit, "ExecStartPost"));
    assert_eq!((start.len(), post.len()), (1, 1), "etcd-backup.service: {unit}");
    assert!(unit.contains("OnSuccess=etcd-backup-ship.service"), "{unit}");
    let ship_unit = fs::read_to_string(render.join("master1/etc/systemd/system/etcd-backup-ship.service")).unwrap();
    let ship = exec_lines(&ship_unit, "ExecStart");
    assert_eq!(ship, ["/usr/local/lib/etcd/etcd-backup-ship"], "{ship_unit}");

    let recipe = t.join("backup-host.sh");
    fs::write(&recipe, backup_host_block()).unwrap();
    fs::write(
        t.join("sshd_config"),
        format!(
            "ListenAddress 10.0.1.10:22\nHostKey {}\nPidFile none\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nAuthorizedKeysFile .ssh/authorized_keys\n",
            t.join("hostkey").display()
        ),
    )
    .unwrap();
    let lab = Lab::new(t);
    for d in ["srv", "home", "backups", "textfiles", "data"] {
        fs::create_dir_all(t.join(d)).unwrap();
    }
    fs::set_permissions(t.join("data"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let body = format!(
        r#"mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -m 0755 /run/sshd
mount --bind $T/srv /srv
mount --bind $T/home /home
mount --bind $T/backups /var/backups
mkdir -p /var/lib/prometheus && mount --bind $T/textfiles /var/lib/prometheus
mkdir -p /var/lib/prometheus/node-exporter
set +e

# The backup host, as docs/systemd-hosts.md says, with render's authorized_keys (apt waits for
# dpkg's lock: another test's recipe may be installing at the same time).
(cd {render}/backup-host && APT_CONFIG={apt} bash -euo pipefail $T/backup-host.sh) || {{ echo RECIPE-FAILED; exit 1; }}
/usr/sbin/sshd -D -e -f $T/sshd_config 2> $T/sshd.log &
SSHD=$!

# The member: the host bundle's files (INSTALL.md's tar), etcd alone in its cluster.
install -m 0755 {bin}/etcd {bin}/etcdctl /usr/local/bin/
tar -xpf {render}/master1.tar -C / --no-same-owner --no-overwrite-dir etc usr/local
install -d -m 0700 /var/backups/etcd
env -i $(grep -v '^#' /etc/etcd/etcd.conf | sed 's|/var/lib/etcd|'$T/data'|') \
    ETCD_INITIAL_CLUSTER=master1=https://10.0.1.204:2380 {bin}/etcd > $T/etcd.log 2>&1 &
ETCD=$!
set -a; . /etc/etcd/etcdctl.env; set +a; ETCDCTL_ENDPOINTS=https://127.0.0.1:2379
export PATH={bin}:$PATH
for i in $(seq 100); do etcdctl endpoint health && break; sleep 0.2; done
for i in $(seq 50); do etcdctl put key$i value$i >/dev/null; done

# The units' own command lines (etcd-backup.service, then OnSuccess= etcd-backup-ship.service),
# each with only what systemd gives it: its EnvironmentFile= and its credentials.
run_unit() {{
    env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin CREDENTIALS_DIRECTORY=/etc/etcd/etcdctl \
        bash -c 'set -a; . /etc/etcd/etcd-backup.env; set +a; eval "$1"' unit "$1"
}}
snapshot() {{ run_unit '{start}' && run_unit '{post}'; }}
ship() {{ run_unit '{ship}'; }}
listing() {{ ls -1 /srv/etcd-backups/tutorial/master1 | tr '\n' ' '; echo; }}
result() {{ echo "$1 $2" >> $T/results; }}

for n in 1 2 3; do
    snapshot; s=$?; ship; result good-$n "$s $? $(listing)"
    sleep 1.1
done
cp /var/lib/prometheus/node-exporter/etcd-backup.prom $T/metric.prom
ls -1 /var/backups/etcd > $T/local-after-good

# A truncated snapshot: `snapshot status` may still read it (it did, for a cut at half), the
# ship step refuses it by the SHA-256 etcdctl appended.
run_unit '{start}'
head -c $(( $(stat -c %s /var/backups/etcd/new.db) / 2 )) /var/backups/etcd/new.db > /var/backups/etcd/cut
mv /var/backups/etcd/cut /var/backups/etcd/new.db
run_unit '{post}'; status=$?
ship 2> $T/truncated.err; result truncated "$status $? $(listing)"

# A backup host whose key is not the one pinned.
cp /etc/etcd/backup/known_hosts $T/known_hosts.good
ssh-keygen -q -t ed25519 -N '' -f $T/otherkey
echo "10.0.1.10 $(cut -d' ' -f1,2 $T/otherkey.pub)" > /etc/etcd/backup/known_hosts
snapshot; ship 2> $T/wrong-key.err; result wrong-key "$? $(listing)"
cp $T/known_hosts.good /etc/etcd/backup/known_hosts

# The backup host down.
kill $SSHD; wait $SSHD
snapshot; ship 2> $T/down.err; result down "$? $(listing)"

# The backup host's disk full: room for what it has and half a snapshot more.
/usr/sbin/sshd -D -e -f $T/sshd_config 2>> $T/sshd.log &
SSHD=$!
sleep 0.5
d=/srv/etcd-backups/tutorial/master1
mkdir -p $T/keep && cp -a $d/. $T/keep/
used=$(du -sb $d | cut -f1); snap=$(ls -1 $d | head -n1); size=$(stat -c %s $d/$snap)
mount -t tmpfs -o size=$(( (used + size / 2) / 4096 * 4096 + 4096 )),mode=0700 tmpfs $d
cp -a $T/keep/. $d/ && chown -R etcd-backup:etcd-backup $d
snapshot; ship 2> $T/full.err; result full "$? $(listing) | $(ls -1a $d | tr '\n' ' ')"
ls -1 /var/backups/etcd > $T/local-after-faults
cp /var/lib/prometheus/node-exporter/etcd-backup.prom $T/metric-after.prom
kill $SSHD $ETCD
"#,
        render = render.display(),
        bin = bin.display(),
        start = start[0].replace('\'', "'\\''"),
        post = post[0].replace('\'', "'\\''"),
        ship = ship[0],
        apt = common::apt_config_waiting_for_the_lock(t).display(),
    );
    let out = lab.run(&format!("{}{body}", lab.prelude(&["10.0.1.204", "10.0.1.10"])), 300, &["sshd.log"]);
    let diag = format!("{out:?}\n{}", lab.logs(&["sshd.log"]));
    let result = |name: &str| lab.result(name);
    let is_snapshot = |n: &String| n.starts_with("snapshot-") && n.ends_with("Z.db");
    // Good runs: checked, shipped; never more than keep = 2 on the backup host.
    for (n, want) in [(1, 1), (2, 2), (3, 2)] {
        let r = result(&format!("good-{n}"));
        assert_eq!(&r[..2], ["0", "0"], "good run {n}: {r:?}\n{diag}");
        assert_eq!(r[2..].iter().filter(|f| is_snapshot(f)).count(), want, "good run {n}: {r:?}\n{diag}");
        assert_eq!(r.len() - 2, want, "good run {n} left other files on the backup host: {r:?}\n{diag}");
    }
    let shipped: Vec<String> = result("good-3")[2..].to_vec();
    // The copies are the member's snapshots, byte for byte, and etcd's check passes on them.
    let local_good = fs::read_to_string(t.join("local-after-good")).unwrap();
    assert_eq!(local_good.lines().collect::<Vec<_>>(), shipped, "{diag}");
    for name in &shipped {
        let there = fs::read(t.join("srv/etcd-backups/tutorial/master1").join(name)).unwrap();
        assert_eq!(there, fs::read(t.join("backups/etcd").join(name)).unwrap(), "{name} differs");
        let status = ok(Command::new(bin.join("etcdctl"))
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "status", "-w", "json"])
            .arg(t.join("srv/etcd-backups/tutorial/master1").join(name)));
        let v: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert!(v["revision"].as_i64().unwrap() >= 51 && v["totalKey"].as_i64().unwrap() >= 50, "{name}: {status}");
    }
    // The metric for etcdBackupStale: now, the interval, the size.
    let metric = fs::read_to_string(t.join("metric.prom")).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64;
    let value = |m: &str, name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(&format!("{name}{{cluster=\"tutorial\",member=\"master1\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {m}"))
    };
    assert!((now - value(&metric, "etcd_backup_last_success_timestamp_seconds")).abs() < 300.0, "{metric}");
    assert_eq!(value(&metric, "etcd_backup_interval_seconds"), 3600.0, "{metric}");
    assert!(value(&metric, "etcd_backup_last_size_bytes") > 4096.0, "{metric}");

    // A truncated snapshot: whatever `snapshot status` said of it (r[0]), the ship step refuses
    // it by its SHA-256; nothing on the backup host changed.
    let r = result("truncated");
    let err = fs::read_to_string(t.join("truncated.err")).unwrap_or_default();
    assert_ne!(r[1], "0", "the ship step took a truncated snapshot\n{diag}");
    assert!(err.contains("does not match the SHA-256"), "{err}\n{diag}");
    assert_eq!(r[2..], shipped, "{diag}");
    // Each fault: the ship step fails with its reason and deletes nothing, there or here.
    for (fault, file, says) in [
        ("wrong-key", "wrong-key.err", "Host key verification failed"),
        ("down", "down.err", "could not copy"),
        ("full", "full.err", "No space left on device"),
    ] {
        let r = result(fault);
        let err = fs::read_to_string(t.join(file)).unwrap_or_default();
        assert_ne!(r[0], "0", "{fault}: the ship step succeeded\n{diag}");
        assert!(err.contains(says), "{fault}: the ship step's message lacks {says:?}: {err}\n{diag}");
        assert_eq!(r[1..3], shipped[..], "{fault}: the backup host's snapshots changed: {r:?}\n{diag}");
    }
    // The full disk kept no partial file under a temporary name either.
    let full = result("full");
    let after_bar: Vec<&String> = full.iter().skip_while(|w| *w != "|").skip(1).collect();
    assert!(
        after_bar.iter().all(|f| f.as_str() == "." || f.as_str() == ".." || shipped.contains(f)),
        "a partial file stayed on the full backup host: {after_bar:?}\n{diag}"
    );
    // The member kept every snapshot the failed runs took (3 faults), deleted none.
    let local = fs::read_to_string(t.join("local-after-faults")).unwrap();
    let local: Vec<&str> = local.lines().filter(|l| l.starts_with("snapshot-")).collect();
    assert!(shipped.iter().all(|s| local.contains(&s.as_str())), "{local:?}");
    assert_eq!(local.len(), shipped.len() + 3, "{local:?}\n{diag}");
    // And the metric still says when the last good one was shipped.
    assert_eq!(fs::read_to_string(t.join("metric-after.prom")).unwrap(), metric);
}
