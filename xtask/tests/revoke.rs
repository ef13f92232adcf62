//! Revocation against the real etcd v3.4.9 (built from source): member master1 runs from
//! `render`'s host bundle (its tarball unpacked over `/etc` and `/usr/local` as INSTALL.md says,
//! the rendered `etcd.conf` as its environment), master2 from its own bundle unpacked in a test
//! directory; both on the tutorial's addresses on the loopback interface of a network and mount
//! namespace of the test's own (nothing of the host changes).
//!
//! A client certificate (`healthcheck`) works; `cargo xtask pki revoke` and the new `crl.pem`
//! renamed into `/etc/etcd/pki/` as docs/day-2.md says, and the very next connection with it is
//! refused, without a restart, etcd's log saying "certificate serial ... revoked", while
//! `etcdctl`'s identity writes all along without one failure. Then master2's peer certificate is
//! revoked: once master2 dials again (it restarts), master1 refuses it on the peer port.
//!
//! Needs root, ip, unshare and etcd v3.4.9 (`$XTASK_TEST_ETCD_GIT`, see `common`).

mod common;
use common::namespace_lab::{self, Lab};
use common::{ok, root, XTASK};

use std::fs;
use std::process::Command;

#[test]
fn a_revoked_certificate_is_refused_at_the_next_handshake_without_a_restart() {
    let (tmp, bin) = namespace_lab::with_etcd_349(&["ip", "unshare"]);
    let t = tmp.path();
    let pki = t.join("pki");
    let render = t.join("render");
    ok(Command::new(XTASK)
        .args(["render", "--cluster", "clusters/tutorial.toml", "--pki"])
        .arg(&pki)
        .arg("--out")
        .arg(&render)
        .current_dir(root()));
    let lab = Lab::new(t);
    for d in ["data1", "data2", "m2", "old"] {
        fs::create_dir_all(t.join(d)).unwrap();
    }
    for d in ["data1", "data2"] {
        fs::set_permissions(t.join(d), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    }
    let body = format!(
        r#"# etcd checks a peer's source address against its certificate: each member dials the other from
# its own address (on one loopback the kernel would pick the destination's).
ip route replace local 10.0.1.204 dev lo table local src 10.0.1.67
ip route replace local 10.0.1.67 dev lo table local src 10.0.1.204
trap 'kill $E1 $E2 2>/dev/null' EXIT
E1=; E2=
tar -xpf {render}/master1.tar -C / --no-same-owner --no-overwrite-dir etc usr/local
tar -xpf {render}/master2.tar -C $T/m2 --no-same-owner etc
CLUSTER=master1=https://10.0.1.204:2380,master2=https://10.0.1.67:2380
# master1: the host bundle as installed. master2: its bundle's files where they were unpacked,
# without the loopback client and metrics listeners master1 holds.
env -i $(grep -v '^#' /etc/etcd/etcd.conf | sed 's|/var/lib/etcd|'$T/data1'|') \
    ETCD_INITIAL_CLUSTER=$CLUSTER {bin}/etcd > $T/etcd1.log 2>&1 &
E1=$!
start2() {{
    env -i $(grep -v '^#' $T/m2/etc/etcd/etcd.conf | sed -e 's|/var/lib/etcd|'$T/data2'|' \
        -e 's|/etc/etcd/pki|'$T/m2/etc/etcd/pki'|' -e 's|,https://127.0.0.1:2379||' -e 's|127.0.0.1:2381|127.0.0.1:2391|') \
        ETCD_INITIAL_CLUSTER=$CLUSTER {bin}/etcd >> $T/etcd2.log 2>&1 &
    E2=$!
}}
start2
set -a; . /etc/etcd/etcdctl.env; set +a
export ETCDCTL_ENDPOINTS=https://10.0.1.204:2379 PATH={bin}:$PATH
for i in $(seq 60); do etcdctl --command-timeout=1s endpoint health --cluster && break; sleep 0.5; done
etcdctl endpoint health --cluster
C={pki}/clients/healthcheck
cp $C/client.crt $C/client.key $T/old/
# etcdctl 3.4 refuses a flag that its environment also sets: the bundle's ETCDCTL_* left out.
as_healthcheck() {{ env -u ETCDCTL_CERT -u ETCDCTL_KEY -u ETCDCTL_CACERT etcdctl --cert $T/old/client.crt --key $T/old/client.key --cacert $C/ca.crt "$@"; }}
set +e
as_healthcheck put before-revoke 1; echo "before $?" >> $T/results

# etcdctl's identity writes all along (one connection per request: each is a new handshake).
( n=0; f=0; while [ ! -e $T/stop ]; do n=$((n+1)); etcdctl put load $n >/dev/null 2>>$T/load.err || f=$((f+1)); done
  echo "load $n $f" >> $T/results ) &
LOAD=$!
sleep 1

# The runbook: revoke, then rename the node's new CRL into place. No restart.
start=$(date +%s%N)
{xtask} pki revoke {pki} --client healthcheck > $T/revoke.out 2>&1; echo "revoke $?" >> $T/results
install -m 0644 {pki}/nodes/master1/crl.pem /etc/etcd/pki/.crl.pem.new
mv /etc/etcd/pki/.crl.pem.new /etc/etcd/pki/crl.pem
placed=$(date +%s%N)
as_healthcheck --dial-timeout=1s --command-timeout=1s put after-revoke 1 2> $T/refused.err; rc=$?
end=$(date +%s%N)
# When etcd refused it, by its log's clock (milliseconds).
rej=$(grep -m1 'certificate serial .* revoked' $T/etcd1.log | sed 's/.*"ts":"\([^"]*\)".*/\1/')
rejected=$(date -d "$rej" +%s%N)
echo "after $rc $(( (placed - start) / 1000000 )) $(( (end - placed) / 1000000 )) $(( (rejected - placed) / 1000000 ))" >> $T/results
# The reissued certificate works.
env -u ETCDCTL_CERT -u ETCDCTL_KEY -u ETCDCTL_CACERT etcdctl --cert $C/client.crt --key $C/client.key --cacert $C/ca.crt put reissued 1; echo "reissued $?" >> $T/results
sleep 1
touch $T/stop; wait $LOAD
echo "pid1 $(kill -0 $E1 && echo same)" >> $T/results
stat -c %s /etc/etcd/pki/crl.pem > $T/crl-size

# A peer: master2's peer certificate revoked, master1's peer-crl.pem renamed into place; when
# master2 dials again (it restarts), master1 refuses it.
{xtask} pki revoke {pki} --node master2 --kind peer --no-reissue > $T/revoke-peer.out 2>&1; echo "revoke-peer $?" >> $T/results
install -m 0644 {pki}/nodes/master1/peer-crl.pem /etc/etcd/pki/.peer-crl.pem.new
mv /etc/etcd/pki/.peer-crl.pem.new /etc/etcd/pki/peer-crl.pem
kill $E2; wait $E2
start2
S=$(grep -o 'serial [0-9a-f]* revoked' $T/revoke-peer.out | cut -d' ' -f2)
for i in $(seq 50); do grep -q "serial $S revoked" $T/etcd1.log && break; sleep 0.2; done
"#,
        render = render.display(),
        bin = bin.display(),
        pki = pki.display(),
        xtask = XTASK,
    );
    let out =
        lab.run(&format!("{}{body}", lab.prelude(&["10.0.1.204", "10.0.1.67"])), 180, &["etcd1.log", "revoke.out"]);
    let read = |f: &str| lab.read(f);
    let diag = format!("{out:?}\n{}", lab.logs(&["etcd1.log", "revoke.out"]));
    let result = |name: &str| lab.result(name);
    assert_eq!(result("before"), ["0"], "healthcheck's certificate did not work before:\n{diag}");
    assert_eq!(result("revoke"), ["0"], "{diag}");
    let after = result("after");
    assert_ne!(after[0], "0", "the revoked certificate still worked:\n{}\n{diag}", read("refused.err"));
    println!(
        "revoke to refusal: {} ms for `pki revoke` and the CRL renamed into place; etcd refused the next handshake {} ms after the rename (etcdctl reported it after its 1 s timeouts: {} ms)",
        after[1], after[3], after[2]
    );
    println!("crl.pem with one revoked serial: {} bytes", read("crl-size").trim());
    // etcd says why.
    let etcd1 = read("etcd1.log");
    assert!(
        etcd1
            .lines()
            .any(|l| l.contains("rejected connection") && l.contains("certificate serial") && l.contains("revoked")),
        "etcd's log does not say the certificate is revoked:\n{diag}"
    );
    assert_eq!(result("reissued"), ["0"], "the reissued certificate does not work:\n{diag}");
    assert_eq!(result("pid1"), ["same"], "master1 did not keep running:\n{diag}");
    let load = result("load");
    let (sent, failed): (u64, u64) = (load[0].parse().unwrap(), load[1].parse().unwrap());
    println!("etcdctl's identity meanwhile: {sent} requests, {failed} failed");
    assert!(sent > 5, "too few requests to prove anything: {sent}\n{diag}");
    assert_eq!(failed, 0, "another identity failed:\n{}\n{diag}", read("load.err"));
    // The peer.
    assert_eq!(result("revoke-peer"), ["0"], "{}\n{diag}", read("revoke-peer.out"));
    let serial = read("revoke-peer.out")
        .split_whitespace()
        .skip_while(|w| *w != "serial")
        .nth(1)
        .map(String::from)
        .unwrap_or_else(|| panic!("no serial in revoke's output:\n{}", read("revoke-peer.out")));
    assert!(
        read("etcd1.log").lines().any(|l| l.contains("rejected connection") && l.contains(&serial)),
        "master1 did not refuse master2's revoked peer certificate (serial {serial}):\n{diag}"
    );
}
