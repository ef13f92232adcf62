//! `cargo xtask render` end to end: the real binary renders the golden cluster
//! (`tests/golden/cluster.toml`) into a temporary directory; the text it writes must match the
//! golden files (refresh them with `UPDATE_GOLDEN=1 cargo test --test render`), the tarball must
//! be root-owned, sorted and reproducible, every unit (host bundle and portable image) must pass
//! `systemd-analyze verify`, and `systemd-analyze security` must rate etcd.service at most 2.0
//! where the tutorial's unit is UNSAFE. Then one thing is broken at a time (an unknown tuning
//! preset, no clients) and render must say which field is wrong.

mod common;
use common::{golden, golden_dir, text, xtask_fails as fails, xtask_ok as ok};

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn render_golden(tmp: &Path) -> PathBuf {
    let cluster = golden_dir().join("cluster.toml");
    let out = tmp.join("out");
    ok(&[
        "render",
        "--cluster",
        cluster.to_str().unwrap(),
        "--pki",
        tmp.join("pki").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        // The golden files are amd64's, whatever this machine is.
        "--arch",
        "amd64",
    ]);
    out
}

/// `(path, mode, uid, gid)` of every entry of a tar archive, in archive order.
fn tar_listing(path: &Path) -> Vec<(String, u32, u64, u64, u64)> {
    let mut ar = tar::Archive::new(fs::File::open(path).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path().unwrap().display().to_string(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.mtime().unwrap(),
            )
        })
        .collect()
}

#[test]
fn render_writes_the_golden_bundles_and_a_reproducible_root_owned_tarball() {
    let tmp = tempfile::tempdir().unwrap();
    let out = render_golden(tmp.path());
    let m1 = out.join("m1");
    for (file, name) in [
        ("etc/etcd/etcd.conf", "render/m1/etc/etcd/etcd.conf"),
        ("etc/etcd/etcdctl.env", "render/m1/etc/etcd/etcdctl.env"),
        ("etc/systemd/system/etcd.service", "render/m1/etc/systemd/system/etcd.service"),
        ("etc/systemd/system/etcd-backup.service", "render/m1/etc/systemd/system/etcd-backup.service"),
        ("etc/systemd/system/etcd-backup.timer", "render/m1/etc/systemd/system/etcd-backup.timer"),
        ("etc/systemd/system/etcd-defrag.service", "render/m1/etc/systemd/system/etcd-defrag.service"),
        ("etc/systemd/system/etcd-defrag.timer", "render/m1/etc/systemd/system/etcd-defrag.timer"),
        ("etc/etcd/etcd-defrag.env", "render/m1/etc/etcd/etcd-defrag.env"),
        ("usr/lib/sysusers.d/etcd.conf", "render/m1/usr/lib/sysusers.d/etcd.conf"),
        ("usr/lib/tmpfiles.d/etcd.conf", "render/m1/usr/lib/tmpfiles.d/etcd.conf"),
    ] {
        golden(name, &fs::read_to_string(m1.join(file)).unwrap());
    }
    golden(
        "render/m1.portable/etc/etcd/etcd.conf",
        &fs::read_to_string(out.join("m1.portable/etc/etcd/etcd.conf")).unwrap(),
    );
    golden("render/m1/etc/etcd/etcd-backup.env", &fs::read_to_string(m1.join("etc/etcd/etcd-backup.env")).unwrap());
    golden("render/m3/etc/etcd/etcd-backup.env", &fs::read_to_string(out.join("m3/etc/etcd/etcd-backup.env")).unwrap());
    golden("render/m1.INSTALL.md", &fs::read_to_string(out.join("m1.INSTALL.md")).unwrap());
    golden(
        "render/m1.portable/etc/systemd/system/etcd-defrag.timer.d/schedule.conf",
        &fs::read_to_string(out.join("m1.portable/etc/systemd/system/etcd-defrag.timer.d/schedule.conf")).unwrap(),
    );

    // Defragmentation: each member at its own time, the same in both forms (no two members of
    // the cluster at once), and only its own member (its loopback client URL).
    let calendar = |text: &str| -> Vec<String> {
        text.lines().filter_map(|l| l.strip_prefix("OnCalendar=")).filter(|v| !v.is_empty()).map(String::from).collect()
    };
    let mut times = Vec::new();
    for node in ["m1", "m2", "m3"] {
        let host = calendar(&fs::read_to_string(out.join(node).join("etc/systemd/system/etcd-defrag.timer")).unwrap());
        let dropin = out.join(format!("{node}.portable/etc/systemd/system/etcd-defrag.timer.d/schedule.conf"));
        assert_eq!(host, calendar(&fs::read_to_string(dropin).unwrap()), "{node}: host and portable differ");
        assert_eq!(host.len(), 1, "{node}: {host:?}");
        times.extend(host);
        let env = fs::read_to_string(out.join(node).join("etc/etcd/etcd-defrag.env")).unwrap();
        let conf = fs::read_to_string(out.join(node).join("etc/etcd/etcd.conf")).unwrap();
        let endpoint = env.lines().find_map(|l| l.strip_prefix("ETCDCTL_ENDPOINTS=")).unwrap();
        assert!(endpoint.contains("127.0.0.1") || endpoint.contains("[::1]"), "{node}: {endpoint}");
        assert!(!endpoint.contains(','), "{node}: one member only: {endpoint}");
        assert!(conf.lines().any(|l| l.starts_with("ETCD_LISTEN_CLIENT_URLS=") && l.contains(endpoint)), "{node}");
    }
    assert_eq!(times, ["*-*-* 05:10:00", "*-*-* 05:30:00", "*-*-* 05:50:00"]);
    // The IPv6 member listens on its address and ::1.
    golden("render/m3/etc/etcd/etcd.conf", &fs::read_to_string(out.join("m3/etc/etcd/etcd.conf")).unwrap());

    // The tuning preset and the TLS files: in the host file, and only flags in the portable one.
    let host = fs::read_to_string(m1.join("etc/etcd/etcd.conf")).unwrap();
    let portable = fs::read_to_string(out.join("m1.portable/etc/etcd/etcd.conf")).unwrap();
    for line in [
        "ETCD_HEARTBEAT_INTERVAL=150",
        "ETCD_ELECTION_TIMEOUT=1500",
        "GOMAXPROCS=8",
        "ETCD_QUOTA_BACKEND_BYTES=8589934592",
    ] {
        assert!(host.contains(line) && portable.contains(line), "{line} missing");
    }
    assert!(host.contains("ETCD_KEY_FILE=/etc/etcd/pki/server.key"));
    assert!(!portable.contains("_FILE="), "the portable env file must leave the TLS files to the unit:\n{portable}");

    // What the CRLs say, for node exporter, in both forms: each CRL's next-update as openssl
    // reads it from the bundle's own copy, and no serial listed yet.
    for tree in [m1.clone(), out.join("m1.portable")] {
        let facts = fs::read_to_string(tree.join("var/lib/prometheus/node-exporter/etcd-crl.prom")).unwrap();
        for (crl, file) in [("client", "crl.pem"), ("peer", "peer-crl.pem")] {
            let labels = format!("{{cluster=\"golden\",member=\"m1\",crl=\"{crl}\"}}");
            let value = |metric: &str| {
                let prefix = format!("{metric}{labels} ");
                facts.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {prefix}in:\n{facts}"))
            };
            assert_eq!(value("etcd_crl_revoked_certificates"), "0");
            let openssl = Command::new("openssl")
                .args(["crl", "-noout", "-nextupdate", "-in"])
                .arg(tree.join("etc/etcd/pki").join(file))
                .output()
                .unwrap();
            let date = Command::new("date")
                .args([
                    "-u",
                    "-d",
                    &format!("@{}", value("etcd_crl_next_update_timestamp_seconds")),
                    "+%b %e %H:%M:%S %Y GMT",
                ])
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&openssl.stdout).trim(),
                format!("nextUpdate={}", String::from_utf8_lossy(&date.stdout).trim()),
                "{crl}:\n{facts}"
            );
        }
    }

    // Keys: only root reads them in the bundle; tmpfiles.d hands them to the etcd group.
    for key in ["etc/etcd/pki/server.key", "etc/etcd/pki/peer.key", "etc/etcd/etcdctl/client.key"] {
        assert_eq!(fs::metadata(m1.join(key)).unwrap().permissions().mode() & 0o777, 0o400, "{key}");
    }
    let tmpfiles = fs::read_to_string(m1.join("usr/lib/tmpfiles.d/etcd.conf")).unwrap();
    assert!(tmpfiles.contains("z /etc/etcd/pki/server.key 0440 root etcd"));
    assert!(tmpfiles.contains("d /var/lib/etcd 0700 etcd etcd"));
    // The node's certificates are its own.
    assert_eq!(
        fs::read(m1.join("etc/etcd/pki/server.crt")).unwrap(),
        fs::read(tmp.path().join("pki/nodes/m1/server.crt")).unwrap()
    );

    // The tarball: sorted, numeric root owner, mtime = SOURCE_DATE_EPOCH, same files as the tree.
    let listing = tar_listing(&out.join("m1.tar"));
    let paths: Vec<&str> = listing.iter().map(|e| e.0.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort_by_key(|p| p.trim_end_matches('/'));
    assert_eq!(paths, sorted, "entries are sorted by path, each directory before its content");
    assert!(listing.iter().all(|e| e.2 == 0 && e.3 == 0 && e.4 == 1_700_000_000), "{listing:?}");
    assert!(paths.contains(&"etc/systemd/system/etcd.service"));
    assert!(
        !paths.iter().any(|p| *p == "etc/" || *p == "usr/"),
        "host directories must not be in the tarball: {paths:?}"
    );
    let key = listing.iter().find(|e| e.0 == "etc/etcd/pki/server.key").unwrap();
    assert_eq!(key.1 & 0o777, 0o400);
    assert_eq!(fs::metadata(out.join("m1.tar")).unwrap().permissions().mode() & 0o777, 0o600);

    // Rendering again (same PKI) gives the same bytes, and leaves no staging directory behind.
    let first = fs::read(out.join("m1.tar")).unwrap();
    render_golden(tmp.path());
    assert_eq!(first, fs::read(out.join("m1.tar")).unwrap(), "the tarball is not reproducible");
    let names: Vec<String> =
        fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "leftovers: {names:?}");
}

/// A root for `systemd-analyze verify --root`: the host's system units (targets the units
/// name), the units under test in /etc/systemd/system, and executables at the paths they run.
fn verify_root(dir: &Path, units: &[(String, String)], executables: &[&str]) {
    let sys = dir.join("usr/lib/systemd/system");
    fs::create_dir_all(&sys).unwrap();
    for entry in fs::read_dir("/usr/lib/systemd/system").unwrap() {
        let entry = entry.unwrap();
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        if meta.is_file() {
            fs::copy(entry.path(), sys.join(entry.file_name())).unwrap();
        } else if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path()).unwrap(), sys.join(entry.file_name())).unwrap();
        }
    }
    let etc = dir.join("etc/systemd/system");
    fs::create_dir_all(&etc).unwrap();
    for (name, text) in units {
        fs::create_dir_all(etc.join(name).parent().unwrap()).unwrap();
        fs::write(etc.join(name), text).unwrap();
    }
    for exe in executables {
        let p = dir.join(exe.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::copy("/bin/true", &p).unwrap();
    }
}

/// `systemd-analyze verify` of the units in a verify root; any message is a failure.
fn verify(dir: &Path, units: &[(String, String)]) {
    // Drop-ins (`NAME.d/FILE.conf`) are read with their unit, not verified on their own.
    let names: Vec<String> =
        units.iter().filter(|(n, _)| !n.contains(".d/")).map(|(n, _)| format!("etc/systemd/system/{n}")).collect();
    let out = Command::new("systemd-analyze")
        .arg(format!("--root={}", dir.display()))
        .arg("verify")
        .args(&names)
        .output()
        .expect("systemd-analyze is installed (Debian: systemd)");
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify {names:?}:\n{}",
        text(&out)
    );
}

/// The overall exposure `systemd-analyze security --offline=yes` gives a unit file.
fn exposure(unit: &Path) -> (f64, String) {
    let out = Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(unit).output().unwrap();
    let all = text(&out);
    let line = all
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{all}"))
        .to_string();
    let score: f64 = line.split(':').nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    (score, line.trim().to_string())
}

#[test]
fn arm64_hosts_of_etcd_3_4_get_etcd_unsupported_arch_and_3_5_does_not() {
    // etcd 3.4 exits 1 on arm64 without it (etcdmain's checkSupportArch); which versions and
    // architectures need it is data (etcd.supported_arches of images/etcd.toml).
    let tmp = tempfile::tempdir().unwrap();
    let cluster = golden_dir().join("cluster.toml");
    let conf = |version: &str, arch: &str| {
        let out = tmp.path().join(format!("out-{version}-{arch}"));
        ok(&[
            "render",
            "--cluster",
            cluster.to_str().unwrap(),
            "--pki",
            tmp.path().join("pki").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--arch",
            arch,
            "--etcd-version",
            version,
        ]);
        fs::read_to_string(out.join("m1/etc/etcd/etcd.conf")).unwrap()
    };
    assert!(conf("3.4.9", "arm64").lines().any(|l| l == "ETCD_UNSUPPORTED_ARCH=arm64"));
    assert!(!conf("3.4.9", "amd64").contains("ETCD_UNSUPPORTED_ARCH"));
    assert!(!conf("3.5.16", "arm64").contains("ETCD_UNSUPPORTED_ARCH"));
    assert!(conf("3.4.9", "s390x").lines().any(|l| l == "ETCD_UNSUPPORTED_ARCH=s390x"));
    let msg = fails(&["render", "--cluster", cluster.to_str().unwrap(), "--etcd-version", "3.9.0"]);
    assert!(msg.contains("etcd.supported_arches") && msg.contains("3.9"), "{msg}");
}

#[test]
fn every_unit_verifies_and_etcd_service_is_hardened() {
    let tmp = tempfile::tempdir().unwrap();
    let out = render_golden(tmp.path());
    let sys = out.join("m1/etc/systemd/system");
    let host_units: Vec<(String, String)> =
        ["etcd.service", "etcd-backup.service", "etcd-backup.timer", "etcd-defrag.service", "etcd-defrag.timer"]
            .iter()
            .map(|n| (n.to_string(), fs::read_to_string(sys.join(n)).unwrap()))
            .collect();
    let host_root = tmp.path().join("host-root");
    verify_root(
        &host_root,
        &host_units,
        &["/usr/local/bin/etcd", "/usr/local/bin/etcdctl", "/bin/sh", "/usr/bin/find"],
    );
    verify(&host_root, &host_units);

    // The image's units with the node's drop-in for the defragmentation timer, as on the host.
    let mut portable_units = xtask::portable::units(&Default::default()).unwrap();
    let dropin = "etcd-defrag.timer.d/schedule.conf";
    let schedule = fs::read_to_string(out.join("m2.portable/etc/systemd/system").join(dropin)).unwrap();
    portable_units.push((dropin.to_string(), schedule));
    let portable_root = tmp.path().join("portable-root");
    verify_root(&portable_root, &portable_units, &["/usr/bin/etcd", "/usr/bin/etcdctl"]);
    verify(&portable_root, &portable_units);

    let (ours, ours_line) = exposure(&sys.join("etcd.service"));
    let (portable, portable_line) = exposure(&portable_root.join("etc/systemd/system/etcd.service"));
    let tutorial_unit = tmp.path().join("tutorial/etcd.service");
    fs::create_dir_all(tutorial_unit.parent().unwrap()).unwrap();
    fs::copy(golden_dir().join("tutorial-etcd.service"), &tutorial_unit).unwrap();
    let (tutorial, tutorial_line) = exposure(&tutorial_unit);
    println!("host bundle:     {ours_line}");
    println!("portable image:  {portable_line}");
    println!("tutorial's unit: {tutorial_line}");
    assert!(ours <= 2.0, "host etcd.service: {ours_line}");
    assert!(portable <= 2.0, "portable etcd.service: {portable_line}");
    assert!(tutorial >= 9.0, "the tutorial's unit should be rated UNSAFE: {tutorial_line}");
    let (backup, backup_line) = exposure(&sys.join("etcd-backup.service"));
    println!("host bundle:     {backup_line}");
    assert!(backup <= 2.0, "{backup_line}");
    for root in [&host_root, &portable_root] {
        let (defrag, defrag_line) = exposure(&root.join("etc/systemd/system/etcd-defrag.service"));
        println!("{}: {defrag_line}", root.file_name().unwrap().to_string_lossy());
        assert!(defrag <= 2.0, "{defrag_line}");
    }
    // systemd finds the drop-in where the host side puts it: the timer runs at m2's time, not
    // the image's (the nspawn test of tests/portable.rs sees it on the attached unit).
    let out = Command::new("systemd-analyze")
        .arg(format!("--root={}", portable_root.display()))
        .args(["cat-config", "systemd/system/etcd-defrag.timer"])
        .output()
        .unwrap();
    let config = text(&out);
    assert!(out.status.success() && config.contains(dropin), "{config}");
    assert!(config.trim_end().ends_with("OnCalendar=*-*-* 05:30:00"), "{config}");

    // Break one thing: a unit with a typo in a key is reported.
    let mut broken = host_units.clone();
    broken[0].1 = broken[0].1.replace("ProtectSystem=strict", "ProtectSytem=strict");
    let broken_root = tmp.path().join("broken-root");
    verify_root(&broken_root, &broken, &["/usr/local/bin/etcd", "/usr/local/bin/etcdctl", "/bin/sh", "/usr/bin/find"]);
    let out = Command::new("systemd-analyze")
        .arg(format!("--root={}", broken_root.display()))
        .args(["verify", "etc/systemd/system/etcd.service"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("ProtectSytem"), "{}", text(&out));
}

#[test]
fn bad_choices_name_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fs::read_to_string(golden_dir().join("cluster.toml")).unwrap();
    let write = |name: &str, text: String| {
        let p = tmp.path().join(name);
        fs::write(&p, text).unwrap();
        p
    };
    let pki = tmp.path().join("pki");
    let out = tmp.path().join("out");
    let run = |cluster: &Path| {
        fails(&[
            "render",
            "--cluster",
            cluster.to_str().unwrap(),
            "--pki",
            pki.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };

    let huge = write("huge.toml", base.replace("tuning = \"large\"", "tuning = \"huge\""));
    let msg = run(&huge);
    assert!(msg.contains("huge.toml: tuning") && msg.contains("small"), "{msg}");

    let no_clients = write("noclients.toml", base.replace("clients = [\"backup\", \"etcdctl\"]", "clients = []"));
    let msg = run(&no_clients);
    // The file's own name says "clients" too: judge the error with the file name taken out. It
    // names the file, then the field and what is wrong with it, then the fix.
    let path = no_clients.display().to_string();
    let error = msg.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line:\n{msg}"));
    assert!(error.contains(&format!("{path}: ")), "the error does not name the file {path}: {error}");
    let said = error.replace(&path, "FILE");
    assert!(said.contains("FILE: clients: empty"), "the error does not name the field `clients`: {said}");
    assert!(said.contains("add e.g. clients = [\"etcdctl\"]"), "the error does not name the fix: {said}");

    // A compaction policy etcd would misread: a bare number is hours to etcd.
    let bare = write("bare.toml", format!("{base}\n[compaction]\nmode = \"periodic\"\nretention = 30\n"));
    let msg = run(&bare);
    let error = msg.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line:\n{msg}"));
    let said = error.replace(&bare.display().to_string(), "FILE");
    assert!(said.contains("FILE: compaction.retention: 30 has no unit") && said.contains("\"30m\""), "{said}");

    let msg = fails(&[
        "render",
        "--cluster",
        golden_dir().join("cluster.toml").to_str().unwrap(),
        "--pki",
        pki.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--client",
        "nobody",
    ]);
    assert!(msg.contains("--client nobody"), "{msg}");
    // Nothing half-written.
    assert!(!out.exists());
}

#[test]
fn the_readme_host_steps_are_the_install_md_steps_the_smoke_engine_runs() {
    let root = common::root();
    let page = common::doc("docs/systemd-hosts.md");
    let section = xtask::render::host::sh_blocks(&page);
    let template = |version: &str| {
        fs::read_to_string(root.join("systemd/host/INSTALL.md.in"))
            .unwrap()
            .replace("@NODE@", "master1")
            .replace("@VERSION@", version)
            .replace("@PEER_URL@", "https://10.0.1.204:2380")
    };
    for (marker, version) in [
        ("systemctl enable --now", "3.4.9"),
        ("portablectl attach", "3.4.9"),
        ("etcd-renew", "3.4.9"),
        ("LoadCredential= copies", "3.4.9"),
        ("# the new binary", "3.5.16"),
        ("portablectl reattach", "3.5.16"),
        ("etcdctl member remove", "3.4.9"),
        ("ETCD_INITIAL_CLUSTER_STATE=existing", "3.4.9"),
        ("etcdctl member promote", "3.4.9"),
    ] {
        let install = xtask::render::host::sh_blocks(&template(version));
        let ours = install.iter().find(|b| b.contains(marker)).unwrap_or_else(|| panic!("INSTALL.md: {marker}"));
        let readme_block = section.iter().find(|b| b.contains(marker)).unwrap_or_else(|| panic!("README: {marker}"));
        assert_eq!(readme_block, ours, "the README's block with `{marker}` differs from INSTALL.md.in's");
    }
}

#[test]
fn sh_blocks_are_read_as_written() {
    let md = "text\n```sh\na\nb\n```\nmore\n```\nnot sh\n```\n```sh\nc\n```\n";
    assert_eq!(xtask::render::host::sh_blocks(md), vec!["a\nb\n".to_string(), "c\n".to_string()]);
}
