//! Least privilege against the real etcd v3.4.9 (built from source): member master1 runs from
//! `render`'s host bundle (unpacked over `/etc` and `/usr/local` as INSTALL.md says) on the
//! tutorial's address, on the loopback interface of a network and mount namespace of the test's
//! own.
//!
//! `cargo xtask auth check` names what differs from `clusters/tutorial.toml`'s `[access]`;
//! `auth apply --dry-run` changes nothing; `auth apply` makes the cluster match and enables auth
//! with etcdctl's identity writing all along (0 failed requests); a second apply changes
//! nothing. Then every identity of the tutorial tries every operation of the permission table
//! of docs/least-privilege.md, and each cell of that table must be what etcd did, with etcd's
//! reason for each refusal. Users and roles then survive `pki renew`, a CA rotation and a restore
//! from a snapshot (the check passes after each). Last, the file changes (kube-apiserver read-only, then "none") and
//! apply follows it: a role the file no longer gives is revoked, then deleted with its user.
//!
//! Needs root, ip, unshare, curl and etcd v3.4.9 (`$XTASK_TEST_ETCD_GIT`, see `common`).

mod common;
use common::namespace_lab::{self, Lab};
use common::{ok, root, XTASK};

use std::fs;
use std::process::Command;

/// The operations of the table, in its column order: the words of the table's header, and the
/// shell that tries one as identity `$ID` (`as_id` runs etcdctl with its certificate).
const OPS: &[(&str, &str)] = &[
    ("put `/registry/…`", "as_id put /registry/pods/p1 v"),
    ("get `/registry/…`", "as_id get /registry/pods/p1"),
    ("put `compact_rev_key`", "as_id put compact_rev_key 1"),
    ("put `/other`", "as_id put /other v"),
    ("get `/other`", "as_id get /other"),
    ("snapshot", "as_id snapshot save $T/snap-$ID.db"),
    ("defragment", "as_id defrag"),
    ("member list", "as_id member list"),
    ("compact", "as_id compact $(REV)"),
    ("lease grant", "as_id lease grant 60"),
    ("alarm disarm", "as_id alarm disarm"),
    ("user list", "as_id user list"),
    ("endpoint health", "as_id endpoint health"),
    ("`/health`", "curl -sf --cacert $C/ca.crt --cert $C/client.crt --key $C/client.key https://10.0.1.204:2379/health"),
    ("`/metrics`", "curl -sf -o /dev/null --cacert $C/ca.crt --cert $C/client.crt --key $C/client.key https://10.0.1.204:2381/metrics"),
];

const IDS: &[&str] = &["etcdctl", "kube-apiserver", "healthcheck", "prometheus"];

#[test]
fn auth_apply_gives_each_identity_what_the_file_says_and_nothing_more() {
    let (tmp, bin) = namespace_lab::with_etcd_349(&["ip", "unshare", "curl"]);
    let t = tmp.path();
    let pki = t.join("pki");
    let render = t.join("render");
    let cluster = t.join("tutorial.toml");
    let tutorial = fs::read_to_string(root().join("clusters/tutorial.toml")).unwrap();
    fs::write(&cluster, &tutorial).unwrap();
    let grant = "kube-apiserver = { readwrite = [\"/registry/\", \"compact_rev_key\"] }";
    assert!(tutorial.contains(grant), "clusters/tutorial.toml no longer holds {grant}");
    fs::write(t.join("read-only.toml"), tutorial.replace(grant, "kube-apiserver = { read = [\"/registry/\"] }"))
        .unwrap();
    fs::write(t.join("none.toml"), tutorial.replace(grant, "kube-apiserver = \"none\"")).unwrap();
    ok(Command::new(XTASK)
        .arg("render")
        .arg("--cluster")
        .arg(&cluster)
        .arg("--pki")
        .arg(&pki)
        .arg("--out")
        .arg(&render));
    let lab = Lab::new(t);
    fs::create_dir_all(t.join("data1")).unwrap();
    fs::set_permissions(t.join("data1"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let ops: String = OPS.iter().enumerate().map(|(i, (_, sh))| format!("    try {i} {sh}\n")).collect();
    let body = format!(
        r#"trap 'kill $E1 2>/dev/null' EXIT
E1=
tar -xpf {render}/master1.tar -C / --no-same-owner --no-overwrite-dir etc usr/local
DATA=$T/data1
start1() {{
    env -i $(grep -v '^#' /etc/etcd/etcd.conf | sed 's|/var/lib/etcd|'$DATA'|') \
        ETCD_INITIAL_CLUSTER=master1=https://10.0.1.204:2380 {bin}/etcd >> $T/etcd1.log 2>&1 &
    E1=$!
}}
start1
set -a; . /etc/etcd/etcdctl.env; set +a
export ETCDCTL_ENDPOINTS=https://10.0.1.204:2379 PATH={bin}:$PATH
for i in $(seq 60); do etcdctl --command-timeout=1s endpoint health && break; sleep 0.5; done
etcdctl endpoint health
AUTH="--pki {pki} --endpoints https://10.0.1.204:2379"
set +e
{xtask} auth check --cluster $T/tutorial.toml $AUTH > $T/check-before.out 2>&1; echo "check-before $?" >> $T/results
{xtask} auth apply --dry-run --cluster $T/tutorial.toml $AUTH > $T/dry-run.out 2>&1; echo "dry-run $?" >> $T/results
{xtask} auth check --cluster $T/tutorial.toml $AUTH > $T/check-dry.out 2>&1; echo "check-dry $?" >> $T/results

# etcdctl's identity writes all along, one connection per request.
( n=0; f=0; while [ ! -e $T/stop ]; do n=$((n+1)); etcdctl put load $n >/dev/null 2>>$T/load.err || f=$((f+1)); done
  echo "load $n $f" >> $T/results ) &
LOAD=$!
sleep 1
{xtask} auth apply --cluster $T/tutorial.toml $AUTH > $T/apply.out 2>&1; echo "apply $?" >> $T/results
sleep 1
touch $T/stop; wait $LOAD
{xtask} auth check --cluster $T/tutorial.toml $AUTH > $T/check-after.out 2>&1; echo "check-after $?" >> $T/results
{xtask} auth apply --cluster $T/tutorial.toml $AUTH > $T/apply-again.out 2>&1; echo "apply-again $?" >> $T/results

# Every identity, every operation of the table; etcdctl's bundle settings left out, so that
# each call carries only the identity's own certificate.
unset ETCDCTL_CERT ETCDCTL_KEY ETCDCTL_CACERT
as_id() {{ etcdctl --dial-timeout=2s --command-timeout=5s --cacert $C/ca.crt --cert $C/client.crt --key $C/client.key "$@"; }}
try() {{ n=$1; shift; "$@" > $T/op.out 2> $T/op.err; rc=$?
    echo "op $ID $n $rc $( (grep -m1 '^Error' $T/op.err || tail -n1 $T/op.err) | head -c 300)" >> $T/results; }}
# A revision not compacted yet, written by the root identity.
REV() {{ C={pki}/clients/etcdctl as_id put rev x -w json | grep -o '"revision":[0-9]*' | cut -d: -f2; }}
set +x
for ID in {ids}; do
    C={pki}/clients/$ID
{ops}done

set -x
# Users and roles live in etcd's data: they survive renewed certificates (no restart), a CA
# rotation (two restarts), and a restore from a snapshot.
put_pki() {{
    N={pki}/nodes/master1
    install -m 0644 $N/ca.crt $N/peer-ca.crt $N/server.crt $N/peer.crt $N/crl.pem $N/peer-crl.pem /etc/etcd/pki/
    install -m 0400 $N/server.key $N/peer.key /etc/etcd/pki/
}}
wait_up() {{ for i in $(seq 60); do C={pki}/clients/etcdctl as_id --command-timeout=1s endpoint health > /dev/null 2>&1 && return 0; sleep 0.5; done; return 1; }}
restart1() {{ kill $E1; wait $E1; start1; wait_up; echo "up $1 $?" >> $T/results; }}
kept() {{ ID=kube-apiserver C={pki}/clients/kube-apiserver try $1-put as_id put /registry/pods/$1 v
         ID=kube-apiserver C={pki}/clients/kube-apiserver try $1-other as_id get /other
         {xtask} auth check --cluster $T/tutorial.toml $AUTH > $T/check-$1.out 2>&1; echo "check-$1 $?" >> $T/results; }}
{xtask} pki renew {pki} > $T/lifecycle.out 2>&1; put_pki
kept renewed
for step in add reissue drop; do
    {xtask} pki rotate-ca {pki} --step $step >> $T/lifecycle.out 2>&1; put_pki
    [ $step = reissue ] || restart1 $step
done
kept rotated
C={pki}/clients/etcdctl as_id snapshot save $T/before-restore.db > /dev/null 2>&1
kill $E1; wait $E1
etcdctl snapshot restore $T/before-restore.db --name master1 --data-dir $T/restored \
    --initial-cluster master1=https://10.0.1.204:2380 --initial-advertise-peer-urls https://10.0.1.204:2380 >> $T/lifecycle.out 2>&1
DATA=$T/restored; start1; wait_up; echo "up restored $?" >> $T/results
kept restored
# The file changes: kube-apiserver read-only, then nothing at all.
export ID=kube-apiserver C={pki}/clients/kube-apiserver
{xtask} auth apply --cluster $T/read-only.toml $AUTH > $T/apply-ro.out 2>&1; echo "apply-ro $?" >> $T/results
try ro-put as_id put /registry/pods/p2 v
try ro-get as_id get /registry/pods/p1
{xtask} auth apply --cluster $T/none.toml $AUTH > $T/apply-none.out 2>&1; echo "apply-none $?" >> $T/results
C={pki}/clients/etcdctl as_id user list > $T/users-none.out 2>&1
C={pki}/clients/etcdctl as_id role list > $T/roles-none.out 2>&1
try none-get as_id get /registry/pods/p1
{xtask} auth check --cluster $T/none.toml $AUTH > $T/check-none.out 2>&1; echo "check-none $?" >> $T/results
"#,
        render = render.display(),
        bin = bin.display(),
        pki = pki.display(),
        xtask = XTASK,
        ids = IDS.join(" "),
    );
    lab.run(&format!("{}{body}", lab.prelude(&["10.0.1.204"])), 300, &["etcd1.log", "apply.out"]);
    let read = |f: &str| lab.read(f);
    let results = read("results");
    let diag = lab.logs(&["etcd1.log", "apply.out"]);
    let result = |name: &str| lab.result(name);
    // Before: every difference named, nothing changed by the dry run.
    let before = read("check-before.out");
    assert_eq!(result("check-before"), ["1"], "{before}\n{diag}");
    for words in [
        "differs: role kube-apiserver: missing, add it",
        "differs: role kube-apiserver: lacks readwrite /registry/*, grant it",
        "differs: user etcdctl: lacks role root, grant it",
        "differs: user root: missing",
        "differs: auth: off, enable it",
    ] {
        assert!(before.contains(words), "check before apply does not say {words:?}:\n{before}");
    }
    assert!(!before.contains("prometheus") && !before.contains("healthcheck"), "users for \"none\":\n{before}");
    assert_eq!(result("dry-run"), ["0"], "{}", read("dry-run.out"));
    assert_eq!(read("check-dry.out"), before, "the dry run changed the cluster");
    // Apply under load, then idempotent.
    assert_eq!(result("apply"), ["0"], "{diag}");
    let load = result("load");
    let (sent, failed): (u64, u64) = (load[0].parse().unwrap(), load[1].parse().unwrap());
    println!("auth enabled by `auth apply` while etcdctl's identity wrote: {sent} requests, {failed} failed");
    assert!(sent > 5, "too few requests to prove anything: {sent}\n{diag}");
    assert_eq!(failed, 0, "a request failed while auth was enabled:\n{}\n{diag}", read("load.err"));
    assert_eq!(result("check-after"), ["0"], "{}", read("check-after.out"));
    assert_eq!(result("apply-again"), ["0"], "{}", read("apply-again.out"));
    assert!(read("apply-again.out").contains("nothing to change"), "{}", read("apply-again.out"));

    // The permission table: each cell is what etcd did.
    let table = permission_table();
    let mut wrong = Vec::new();
    for id in IDS {
        let row = table.iter().find(|(name, _)| name == id).unwrap_or_else(|| panic!("the table has no row {id}"));
        for (i, (op, _)) in OPS.iter().enumerate() {
            let got = result(&format!("op {id} {i}"));
            let cell = &row.1[i];
            let allowed = cell.starts_with("yes");
            let did = got[0] == "0";
            let reason = got[1..].join(" ");
            println!("{id:>15} | {op:<24} | {:<3} | {reason}", if did { "yes" } else { "no" });
            if allowed != did {
                wrong.push(format!(
                    "{id}, {op}: the table says {cell:?}, etcd {}: {reason}",
                    if did { "allowed it" } else { "refused" }
                ));
            } else if !did
                && !["permission denied", "user not found", "user name not found"].iter().any(|r| reason.contains(r))
            {
                wrong.push(format!("{id}, {op}: refused, but not by etcd's auth: {reason}"));
            }
        }
    }
    assert!(wrong.is_empty(), "docs/least-privilege.md's table is not what etcd does:\n{}", wrong.join("\n"));
    // The backup's snapshot, taken as etcdctl's identity, is whole.
    assert!(fs::metadata(t.join("snap-etcdctl.db")).map(|m| m.len() > 10_000).unwrap_or(false), "{diag}");

    // Renewal, CA rotation and a restore keep users and roles.
    for (stage, what) in
        [("renewed", "after `pki renew`"), ("rotated", "after a CA rotation"), ("restored", "after a restore")]
    {
        assert_eq!(
            result(&format!("op kube-apiserver {stage}-put"))[0],
            "0",
            "{what}, kube-apiserver cannot write its keys:\n{results}\n{diag}\n{}",
            read("lifecycle.out")
        );
        let other = result(&format!("op kube-apiserver {stage}-other"));
        assert!(
            other[0] != "0" && other.join(" ").contains("permission denied"),
            "{what}, kube-apiserver reads outside its prefix:\n{results}"
        );
        assert_eq!(result(&format!("check-{stage}")), ["0"], "{what}: {}", read(&format!("check-{stage}.out")));
    }
    for stage in ["add", "drop", "restored"] {
        assert_eq!(
            result(&format!("up {stage}")),
            ["0"],
            "etcd did not come back ({stage}):\n{diag}\n{}",
            read("lifecycle.out")
        );
    }

    // The file changed: read-only, then none.
    assert_eq!(result("apply-ro"), ["0"], "{}", read("apply-ro.out"));
    let ro = read("apply-ro.out");
    assert!(ro.contains("done: role kube-apiserver: lacks read /registry/*, grant it"), "{ro}");
    assert!(ro.contains("done: role kube-apiserver: has readwrite compact_rev_key*"), "{ro}");
    assert_ne!(result("op kube-apiserver ro-put")[0], "0", "a read-only identity wrote:\n{results}");
    assert_eq!(result("op kube-apiserver ro-get")[0], "0", "a read-only identity could not read:\n{results}");
    assert_eq!(result("apply-none"), ["0"], "{}", read("apply-none.out"));
    let none = read("apply-none.out");
    assert!(none.contains("done: user kube-apiserver: not in the file, delete it"), "{none}");
    assert!(none.contains("done: role kube-apiserver: not in the file, delete it"), "{none}");
    assert!(!read("users-none.out").contains("kube-apiserver"), "{}", read("users-none.out"));
    assert!(!read("roles-none.out").contains("kube-apiserver"), "{}", read("roles-none.out"));
    assert_ne!(result("op kube-apiserver none-get")[0], "0", "an identity without a user read:\n{results}");
    assert_eq!(result("check-none"), ["0"], "{}", read("check-none.out"));
}

/// docs/least-privilege.md's permission table: (identity, cells) per row; the header's
/// operations must be [`OPS`]'s, in order.
fn permission_table() -> Vec<(String, Vec<String>)> {
    let page = common::doc("docs/least-privilege.md");
    let rows: Vec<Vec<String>> = page
        .lines()
        .skip_while(|l| !l.starts_with("| identity |"))
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect())
        .collect();
    assert!(rows.len() > 2, "docs/least-privilege.md has no table starting with `| identity |`");
    let header: Vec<&str> = rows[0][1..].iter().map(String::as_str).collect();
    let ops: Vec<&str> = OPS.iter().map(|(h, _)| *h).collect();
    assert_eq!(header, ops, "the table's columns are not the operations this test tries");
    rows[2..].iter().map(|r| (r[0].trim_matches('`').to_string(), r[1..].to_vec())).collect()
}
