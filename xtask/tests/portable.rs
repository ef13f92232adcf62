//! `cargo xtask portable` end to end, and both bundles under a real systemd.
//!
//! 1. The units and os-release of the image match their golden files (refresh with
//!    `UPDATE_GOLDEN=1 cargo test --test portable`).
//! 2. The real binary builds the image twice from Debian's etcd (`--source distro`): the
//!    directory image has every mount point, the libraries of the dynamic etcd (its ELF
//!    interpreter, libc and every other `DT_NEEDED`, read from the ELF; a static etcd must have
//!    no PT_INTERP and need nothing) and no file owned by anyone but root in the `.raw`; the two
//!    `.raw` files are byte-identical.
//! 3. A minimal Debian (mmdebstrap, cached under `target/nspawn/`) boots in systemd-nspawn
//!    with its own loopback network only, on a throw-away overlay of the cached root. A oneshot
//!    unit inside first attaches the squashfs `.raw` of the real etcd v3.4.9 (built from source,
//!    `portable --source build`) with `portablectl attach --now`, gives it the host side
//!    rendered by `cargo xtask render` for a one-node cluster on 127.0.0.2, and checks that
//!    etcd.service is active, runs as a non-root uid and answers `etcdctl endpoint health` over
//!    TLS with a client certificate, as etcd 3.4.9 (that etcd, built from source, is static).
//!    Then the same with the directory image of Debian's etcd, plus a backup snapshot; it
//!    detaches, installs the host bundle of the same node with Debian's binaries (sysusers,
//!    tmpfiles, the unit) and checks the same. A backup is judged by etcd's own tools, never by
//!    its size: `etcdctl snapshot status` must read it (at least the revision of a key put just
//!    before) and `snapshot restore` must accept it (its integrity hash). In both forms
//!    `etcd-defrag.service` must defragment the member, and the portable image's timer must
//!    carry the node's own time from the host side's drop-in. It writes
//!    `key=value` results into a bound directory and powers off. The boot is bounded (180 s); on
//!    timeout only the nspawn process this test started is stopped.
//!
//! Nothing is skipped silently: not root, no systemd-nspawn, no loop devices make the test fail
//! with the reason, unless `cargo xtask ci --allow-omission nspawn` (or `loop-devices`) allowed
//! leaving that part out. Loop devices are made to work first: `/dev/loop-control` and the node
//! of the next free loop device are created with mknod when missing (a container without udev),
//! and the `.raw` is attached once on the host to prove it. They are bound into the guest; the
//! guest's systemd removes loop device nodes it sees go away, and those are the host's: the test
//! records them before the boot and recreates any that vanished.

mod common;
use common::{golden, omission, text, xtask_ok as ok};

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xtask::smoke::machines::LoopNodes;

/// The one image directory (`etcd_<version>`) in `out`.
fn image_dir(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().unwrap().to_string_lossy().starts_with("etcd_"))
        .collect();
    assert_eq!(dirs.len(), 1, "one image directory expected in {}: {dirs:?}", out.display());
    dirs[0].clone()
}

/// Checks that the image directory `dir` holds what its binary `bin` needs at run time, read from
/// the ELF: for a dynamic binary (PT_INTERP) the interpreter, libc and every `DT_NEEDED` library
/// (and theirs), each where the loader of the binary's architecture looks; a binary without
/// PT_INTERP must name no library at all, i.e. be static indeed. Returns whether it is dynamic.
fn runtime_in_image(dir: &Path, bin: &str) -> bool {
    use xtask::image::elf;
    use xtask::util::Arch;
    let info = elf::read(&dir.join(bin)).unwrap();
    let arch = [Arch::Amd64, Arch::Arm64, Arch::Ppc64le, Arch::S390x]
        .into_iter()
        .find(|a| a.elf_machine() == info.machine)
        .unwrap_or_else(|| panic!("{bin} is for ELF machine {}, no architecture of ours", info.machine));
    let Some(interp) = &info.interp else {
        assert!(
            info.needed.is_empty(),
            "{bin} has no ELF interpreter (PT_INTERP) yet needs {:?}: it is not static and cannot start",
            info.needed
        );
        return false;
    };
    assert!(
        dir.join(interp.trim_start_matches('/')).is_file(),
        "the interpreter {interp} of {bin} is not in the image"
    );
    assert!(info.needed.iter().any(|l| l == "libc.so.6"), "{bin} is dynamic but needs no libc.so.6: {:?}", info.needed);
    let provided = Path::new(interp).file_name().unwrap().to_string_lossy().into_owned();
    let mut seen = std::collections::BTreeSet::from([provided]);
    let mut queue = vec![(bin.to_string(), info)];
    while let Some((who, info)) = queue.pop() {
        for lib in &info.needed {
            if !seen.insert(lib.clone()) {
                continue;
            }
            let dirs: Vec<String> = info.runpath.iter().cloned().chain(elf::default_search_dirs(arch)).collect();
            let found = dirs
                .iter()
                .map(|d| dir.join(d.trim_start_matches('/')).join(lib))
                .find(|p| p.is_file())
                .unwrap_or_else(|| panic!("{lib} (DT_NEEDED of {who}) is not in the image; searched {dirs:?}"));
            let li = elf::read(&found).unwrap();
            assert_eq!(li.machine, info.machine, "{} is for another machine than {who}", found.display());
            queue.push((lib.clone(), li));
        }
    }
    true
}

fn build(out: &Path) -> PathBuf {
    ok(&["portable", "--source", "distro", "--out", out.to_str().unwrap()]);
    image_dir(out)
}

#[test]
fn units_and_os_release_match_golden_files() {
    for (name, text) in xtask::portable::units(&Default::default()).unwrap() {
        golden(&format!("portable/{name}"), &text);
    }
    golden("portable/os-release", &xtask::portable::os_release("3.4.9").unwrap());
    let units = xtask::portable::units(&Default::default()).unwrap();
    let etcd = &units.iter().find(|(n, _)| n == "etcd.service").unwrap().1;
    // One source of truth: every TLS file variable of node_env is a flag on ExecStart, loaded
    // as a credential of the same name.
    for (key, file) in xtask::render::config::TLS_FILES {
        let flag = xtask::render::config::flag_of(key).unwrap();
        assert!(etcd.contains(&format!("{flag}=${{CREDENTIALS_DIRECTORY}}/{file}")), "{flag} missing");
        assert!(etcd.contains(&format!("LoadCredential={file}:/etc/etcd/pki/{file}")), "{file} missing");
    }
    for line in
        ["DynamicUser=yes", "StateDirectory=etcd", "StateDirectoryMode=0700", "EnvironmentFile=/etc/etcd/etcd.conf"]
    {
        assert!(etcd.lines().any(|l| l == line), "{line} missing");
    }
}

#[test]
fn builds_a_complete_image_and_a_reproducible_raw() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let started = Instant::now();
    let dir = build(&a);
    println!("portable build: {:.1} s", started.elapsed().as_secs_f64());
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let version = name.strip_prefix("etcd_").unwrap();

    for mount in ["proc", "sys", "dev", "run", "tmp", "var/tmp", "var/lib/etcd", "var/lib/etcd-backup"] {
        assert!(dir.join(mount).is_dir(), "mount point /{mount} missing");
    }
    for empty in ["etc/resolv.conf", "etc/machine-id"] {
        assert_eq!(fs::metadata(dir.join(empty)).unwrap().len(), 0, "/{empty}");
    }
    for unit in xtask::portable::UNITS {
        assert!(dir.join("usr/lib/systemd/system").join(unit).is_file(), "{unit} missing");
    }
    let os_release = fs::read_to_string(dir.join("usr/lib/os-release")).unwrap();
    for line in ["ID=etcd", &format!("VERSION_ID={version}"), "PORTABLE_PREFIXES=etcd"] {
        assert!(os_release.lines().any(|l| l == line), "{line} missing from os-release:\n{os_release}");
    }
    assert!(os_release.contains("PORTABLE_PRETTY_NAME="));
    // Debian's etcd is dynamic: its interpreter, libc and every other library it needs come
    // along (a static etcd would need none, and must then be static indeed).
    let dynamic = runtime_in_image(&dir, "usr/bin/etcd");
    println!("Debian's etcd is {}", if dynamic { "dynamic" } else { "static" });
    assert_eq!(fs::metadata(dir.join("usr/bin/etcd")).unwrap().permissions().mode() & 0o777, 0o755);

    // Everything in the squashfs is root's, and it holds what the directory holds.
    let raw = a.join(format!("{name}.raw"));
    let out =
        Command::new("unsquashfs").arg("-lln").arg(&raw).output().expect("unsquashfs is installed (squashfs-tools)");
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    for line in listing.lines().filter(|l| l.starts_with(['d', '-', 'l'])) {
        let owner = line.split_whitespace().nth(1).unwrap();
        assert_eq!(owner, "0/0", "not root-owned: {line}");
    }
    assert!(listing.contains("squashfs-root/usr/lib/systemd/system/etcd.service"));
    assert!(listing.contains("2023-11-14"), "timestamps are SOURCE_DATE_EPOCH (2023-11-14):\n{listing}");

    // A second build elsewhere gives the same bytes.
    build(&b);
    let (ra, rb) = (fs::read(&raw).unwrap(), fs::read(b.join(format!("{name}.raw"))).unwrap());
    assert!(ra == rb, "the .raw image is not reproducible");
    let names: Vec<String> =
        fs::read_dir(&a).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "leftovers: {names:?}");
}

// ---------------------------------------------------------------------------------------------
// Under a real systemd.

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// The machines' root file system of `smoke --engine systemd` (mmdebstrap, cached in
/// `target/nspawn/`): one cache for both.
fn cached_rootfs() -> PathBuf {
    xtask::smoke::machines::cached_rootfs().expect("the cached Debian root file system")
}

/// Runs inside the guest. `/xtask/params` names the image; results go to /xtask-result/status.
const CHECK_SCRIPT: &str = r#"#!/bin/sh
# The checks of tests/portable.rs, inside the booted guest.
R=/xtask-result
exec >"$R/log" 2>&1
set -x
. /xtask/params
step() { echo "$1=$2" >>"$R/status"; }
health() {
    for i in $(seq 1 20); do
        if "$@" endpoint health; then echo yes; return; fi
        sleep 1
    done
    echo no
}
uid_of() { awk '/^Uid:/ {print $2}' "/proc/$(systemctl show -P MainPID "$1")/status"; }
# The checked snapshot starts etcd-backup-ship.service (OnSuccess=): how its run after the
# journal's cursor $1 ended (the unit is unloaded once it ran, so its journal tells).
# `portablectl attach --now` starts the timer's service at once: let that run finish first, or
# `systemctl start` would only wait for it instead of taking a snapshot of its own.
ship_mark() {
    for i in $(seq 1 50); do
        systemctl show -P ActiveState etcd-backup.service etcd-backup-ship.service \
            | grep -qxE 'active|activating|deactivating' || break
        sleep 0.2
    done
    journalctl -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p'
}
shipped() {
    for i in $(seq 1 50); do
        j="$(journalctl --after-cursor "$1" -u etcd-backup-ship.service --no-pager -o cat | tr '\n' ' ')"
        case "$j" in
            *"Deactivated successfully"*) echo yes; return ;;
            *"Failed with result"*) echo "no: $j"; return ;;
        esac
        sleep 0.2
    done
    echo "no: etcd-backup-ship.service did not finish: $j"
}
# A backup is judged by etcd's own tools, not by its size: `snapshot status` (hash, revision,
# keys; JSON on one line) and a restore, which checks the hash `snapshot save` appended.
judge_snapshot() {  # NAME ETCDCTL FILE
    st="$("$2" snapshot status "$3" -w json 2>&1)" || st="exit $?: $(printf '%s\n' "$st" | head -n 2)"
    step "$1-snapshot-status" "$(printf '%s' "$st" | tr '\n' ' ')"
    rm -rf "/tmp/restore-$1"
    "$2" snapshot restore "$3" --data-dir "/tmp/restore-$1"; step "$1-snapshot-restore" $?
}
IMG="/xtask-image/$IMAGE"
CLIENT="--endpoints=https://127.0.0.1:2379 --cacert=/etc/etcd/etcdctl/ca.crt --cert=/etc/etcd/etcdctl/client.crt --key=/etc/etcd/etcdctl/client.key"

# (0) The squashfs image of etcd 3.4.9 built from source, when loop devices were passed in.
if [ "$RAW" = yes ]; then
    RAWCTL="/xtask-raw/$RAW_IMAGE/usr/bin/etcdctl"
    tar -xpf "/xtask-render/$NODE.portable.tar" -C / --no-same-owner --no-overwrite-dir
    portablectl attach --now --runtime "/xtask-raw/$RAW_IMAGE.raw"; step raw-attach $?
    step raw-active "$(systemctl is-active etcd.service)"
    step raw-uid "$(uid_of etcd.service)"
    step raw-health "$(health "$RAWCTL" $CLIENT)"
    step raw-version "$("$RAWCTL" $CLIENT endpoint status | cut -d, -f3 | tr -d ' ')"
    journalctl -u etcd.service --no-pager | tail -20
    portablectl detach --now --runtime "$RAW_IMAGE"; step raw-detach $?
    rm -rf /etc/etcd /var/lib/etcd /var/lib/private/etcd
fi

# (1) The portable image, with the host side rendered for the node.
tar -xpf "/xtask-render/$NODE.portable.tar" -C / --no-same-owner --no-overwrite-dir
portablectl attach --now --runtime "$IMG"; step portable-attach $?
step portable-active "$(systemctl is-active etcd.service)"
step portable-uid "$(uid_of etcd.service)"
step portable-health "$(health "$IMG/usr/bin/etcdctl" $CLIENT)"
step portable-probe "$("$IMG/usr/bin/etcdctl" $CLIENT put xtask-backup-probe yes -w json | tr -d '\n')"
BEFORE=$(ship_mark); systemctl start etcd-backup.service; step portable-backup $?
step portable-ship "$(shipped "$BEFORE")"
SNAP=$(ls -1 /var/lib/private/etcd-backup/snapshot-*.db | tail -n 1)
step portable-snapshot "$(test -s "$SNAP" && echo yes || echo no)"
judge_snapshot portable "$IMG/usr/bin/etcdctl" "$SNAP"
systemctl start etcd-defrag.service; step portable-defrag $?
step portable-defrag-dropins "$(systemctl show -P DropInPaths etcd-defrag.timer)"
step portable-defrag-timer "$(systemctl show -P TimersCalendar etcd-defrag.timer)"
journalctl -u etcd.service -u etcd-backup.service -u etcd-backup-ship.service -u etcd-defrag.service --no-pager | tail -30
portablectl detach --now --runtime "$IMAGE"; step portable-detach $?
step portable-gone "$(systemctl is-active etcd.service)"
rm -rf /etc/etcd /var/lib/etcd /var/lib/private/etcd

# (2) The host bundle of the same node.
install -m 0755 "$IMG/usr/bin/etcd" "$IMG/usr/bin/etcdctl" /usr/local/bin/
tar -xpf "/xtask-render/$NODE.tar" -C / --no-same-owner --no-overwrite-dir; step host-untar $?
systemd-sysusers && systemd-tmpfiles --create etcd.conf; step host-setup $?
step host-key-mode "$(stat -c '%a %U:%G' /etc/etcd/pki/server.key)"
systemctl daemon-reload
systemctl start etcd.service; step host-start $?
step host-active "$(systemctl is-active etcd.service)"
step host-uid "$(uid_of etcd.service)"
step host-user "$(id -u etcd)"
step host-data-mode "$(stat -c '%a %U' /var/lib/etcd)"
step host-health "$(set -a; . /etc/etcd/etcdctl.env; set +a; health etcdctl)"
step host-probe "$(set -a; . /etc/etcd/etcdctl.env; set +a; etcdctl put xtask-backup-probe yes -w json | tr -d '\n')"
BEFORE=$(ship_mark); systemctl start etcd-backup.service; step host-backup $?
step host-ship "$(shipped "$BEFORE")"
step host-snapshot "$(ls /var/backups/etcd/snapshot-*.db >/dev/null 2>&1 && echo yes || echo no)"
judge_snapshot host /usr/local/bin/etcdctl "$(ls /var/backups/etcd/snapshot-*.db | head -n 1)"
systemctl start etcd-defrag.service; step host-defrag $?
step host-defrag-timer "$(systemctl show -P TimersCalendar etcd-defrag.timer)"
journalctl -u etcd.service -u etcd-backup.service -u etcd-backup-ship.service -u etcd-defrag.service --no-pager | tail -30
step done yes
systemctl poweroff --no-block
"#;

const CHECK_SERVICE: &str = "[Unit]
Description=xtask test: portable image and host bundle
After=multi-user.target dbus.service
Wants=dbus.service

[Service]
Type=oneshot
ExecStart=/xtask/check.sh
";

const CHECK_TARGET: &str = "[Unit]
Description=xtask test boot
Requires=multi-user.target
Wants=xtask-check.service
After=multi-user.target
AllowIsolate=yes
";

/// Runs a command; Err(what it printed) unless it succeeds.
fn try_run(cmd: &mut Command) -> Result<String, String> {
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Ok(out) => Err(format!("{cmd:?} failed ({}): {}", out.status, text(&out).trim())),
        Err(e) => Err(format!("cannot run {cmd:?}: {e}")),
    }
}

/// Makes sure this host can give the guest a loop device for `raw`: `/dev/loop-control`, and
/// nodes for the next free loop devices, created with mknod when missing (a container without
/// udev has the kernel's devices but not their nodes). Proves it by attaching `raw` read-only
/// once and detaching it. Err(reason) when this machine cannot.
fn prepare_loop_devices(raw: &Path) -> Result<(), String> {
    // The nodes, made as `smoke --engine systemd` makes them.
    LoopNodes::prepare(3).map_err(|e| format!("{e:#}"))?;
    let dev = try_run(Command::new("losetup").args(["-f", "--show", "-r"]).arg(raw))
        .map_err(|e| format!("the loop devices do not work here: {e}"))?;
    try_run(Command::new("losetup").args(["-d", &dev]))?;
    Ok(())
}

/// Waits for `child` up to `limit`; on timeout asks nspawn for an orderly shutdown (SIGTERM),
/// then kills it. Only this child is ever signalled.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if started.elapsed() > limit {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let grace = Instant::now();
            while grace.elapsed() < Duration::from_secs(20) {
                if child.try_wait().unwrap().is_some() {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn portable_image_and_host_bundle_run_under_systemd_in_nspawn() {
    if !xtask::util::is_root() {
        omission("nspawn", "not root: booting systemd in systemd-nspawn (and mmdebstrap) needs root");
        return;
    }
    for (tool, package) in [("systemd-nspawn", "systemd-container"), ("mmdebstrap", "mmdebstrap")] {
        if !xtask::util::on_path(tool) {
            omission("nspawn", &format!("{tool} is not installed (Debian: {package}; `cargo xtask ci` installs it)"));
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let started = Instant::now();
    let rootfs = cached_rootfs();

    // The real etcd 3.4.9 as a squashfs image (and its directory, for its etcdctl), Debian's etcd
    // as a directory image, and the host side of a one-node cluster on the guest's loopback.
    common::build_etcd_349(&[common::host_arch()]);
    let raw_out = t.join("raw");
    ok(&["portable", "--source", "build", "--out", raw_out.to_str().unwrap()]);
    let raw_image = image_dir(&raw_out).file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(raw_image, "etcd_3.4.9");
    // Built from source with CGO_ENABLED=0: static indeed, nothing to carry.
    assert!(!runtime_in_image(&raw_out.join(&raw_image), "usr/bin/etcd"), "etcd 3.4.9 built from source is dynamic");
    let raw_path = raw_out.join(format!("{raw_image}.raw"));
    assert!(raw_path.is_file(), "{} missing", raw_path.display());
    let image_out = t.join("image");
    fs::create_dir_all(&image_out).unwrap();
    ok(&["portable", "--source", "distro", "--no-raw", "--out", image_out.to_str().unwrap()]);
    let image = image_dir(&image_out).file_name().unwrap().to_string_lossy().into_owned();
    let cluster = t.join("one.toml");
    fs::write(&cluster, "name = \"nspawn\"\nclients = [\"etcdctl\"]\ntuning = \"small\"\n[[nodes]]\nname = \"node1\"\nips = [\"127.0.0.2\"]\n").unwrap();
    let render = t.join("render");
    ok(&[
        "render",
        "--cluster",
        cluster.to_str().unwrap(),
        "--pki",
        t.join("pki").to_str().unwrap(),
        "--out",
        render.to_str().unwrap(),
    ]);

    let xt = t.join("xtask");
    let result = t.join("result");
    fs::create_dir_all(&xt).unwrap();
    fs::create_dir_all(&result).unwrap();
    fs::write(xt.join("check.sh"), CHECK_SCRIPT).unwrap();
    fs::set_permissions(xt.join("check.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(xt.join("xtask-check.service"), CHECK_SERVICE).unwrap();
    fs::write(xt.join("xtask-check.target"), CHECK_TARGET).unwrap();
    let raw = match prepare_loop_devices(&raw_path) {
        Ok(()) => true,
        Err(reason) => {
            omission("loop-devices", &format!("the portable .raw image cannot be attached under nspawn: {reason}"));
            false
        }
    };
    // Recorded after the nodes were made: every one of them is bound in, and restored if the
    // guest removes it.
    let loops = LoopNodes::record();
    fs::write(
        xt.join("params"),
        format!("IMAGE={image}\nRAW_IMAGE={raw_image}\nNODE=node1\nRAW={}\n", if raw { "yes" } else { "no" }),
    )
    .unwrap();
    println!("nspawn test: root file system, builds and render: {:.1} s", started.elapsed().as_secs_f64());

    let bind = |flag: &str, from: &Path, to: &str| format!("--{flag}={}:{to}", from.display());
    let console = fs::File::create(t.join("console.log")).unwrap();
    let started = Instant::now();
    let mut child = Command::new("systemd-nspawn")
        .args(["-q", "-b", "--volatile=overlay", "--register=no", "--keep-unit", "--console=pipe", "--private-network"])
        .arg("-D")
        .arg(&rootfs)
        .arg(bind("bind-ro", &xt, "/xtask"))
        .arg(bind("bind-ro", &image_out, "/xtask-image"))
        .arg(bind("bind-ro", &raw_out, "/xtask-raw"))
        .arg(bind("bind-ro", &render, "/xtask-render"))
        .arg(bind("bind", &result, "/xtask-result"))
        .arg(bind("bind-ro", &xt.join("xtask-check.service"), "/etc/systemd/system/xtask-check.service"))
        .arg(bind("bind-ro", &xt.join("xtask-check.target"), "/etc/systemd/system/xtask-check.target"))
        .args(if raw { loops.bind_args() } else { Vec::new() })
        .args(["--", "--unit=xtask-check.target"])
        .stdin(Stdio::null())
        .stdout(console.try_clone().unwrap())
        .stderr(console)
        .spawn()
        .expect("systemd-nspawn is installed (Debian: systemd-container)");
    let status = wait_bounded(&mut child, BOOT_TIMEOUT);
    loops.restore();
    println!("nspawn boot, checks and poweroff: {:.1} s", started.elapsed().as_secs_f64());

    let mut log = String::new();
    let _ = fs::File::open(result.join("log")).map(|mut f| f.read_to_string(&mut log));
    let console = fs::read_to_string(t.join("console.log")).unwrap_or_default();
    let status_text = fs::read_to_string(result.join("status")).unwrap_or_default();
    let diag = format!("--- status\n{status_text}--- guest log\n{log}\n--- console\n{console}");
    assert!(status.is_some(), "the guest did not power off within {BOOT_TIMEOUT:?}\n{diag}");
    let left = common::mount_points_under(&rootfs);
    assert!(left.is_empty(), "mounts left behind: {left:?}");

    let get = |key: &str| {
        status_text
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .unwrap_or_else(|| panic!("no {key} in the results\n{diag}"))
            .to_string()
    };
    println!("{status_text}");
    assert_eq!(get("done"), "yes", "{diag}");
    // (0) the .raw of etcd 3.4.9
    if raw {
        assert_eq!(get("raw-attach"), "0", "{diag}");
        assert_eq!(get("raw-active"), "active", "{diag}");
        let uid: u32 = get("raw-uid").parse().unwrap_or(0);
        assert!(uid != 0, "the portable etcd 3.4.9 runs as root\n{diag}");
        assert_eq!(get("raw-health"), "yes", "{diag}");
        assert_eq!(get("raw-version"), "3.4.9", "{diag}");
        assert_eq!(get("raw-detach"), "0", "{diag}");
        let raw_path = raw_path.display().to_string();
        let losetup = Command::new("losetup").arg("-a").output().map(|o| text(&o)).unwrap_or_default();
        assert!(!losetup.contains(&raw_path), "loop device left attached: {losetup}");
    }
    // (1) portable
    assert_eq!(get("portable-attach"), "0", "{diag}");
    assert_eq!(get("portable-active"), "active", "{diag}");
    let uid: u32 = get("portable-uid").parse().unwrap_or(0);
    assert!(uid != 0, "the portable etcd runs as root\n{diag}");
    assert_eq!(get("portable-health"), "yes", "{diag}");
    assert_eq!(get("portable-backup"), "0", "{diag}");
    assert_eq!(get("portable-ship"), "yes", "{diag}");
    assert_eq!(get("portable-snapshot"), "yes", "{diag}");
    judge_snapshot(&get, "portable", &diag);
    // The defragmentation service of the image defragments the member; its timer has the
    // node's time from the host side's drop-in.
    assert_eq!(get("portable-defrag"), "0", "{diag}");
    assert!(
        get("portable-defrag-dropins").contains("/etc/systemd/system/etcd-defrag.timer.d/schedule.conf"),
        "the node's schedule is not applied to the attached timer\n{diag}"
    );
    assert!(get("portable-defrag-timer").contains("OnCalendar=*-*-* 05:10:00"), "{diag}");
    assert_eq!(get("portable-detach"), "0", "{diag}");
    assert_ne!(get("portable-gone"), "active", "{diag}");
    // (2) host bundle
    assert_eq!(get("host-setup"), "0", "{diag}");
    assert_eq!(get("host-key-mode"), "440 root:etcd", "{diag}");
    assert_eq!(get("host-start"), "0", "{diag}");
    assert_eq!(get("host-active"), "active", "{diag}");
    assert_eq!(get("host-uid"), get("host-user"), "etcd.service does not run as the etcd user\n{diag}");
    assert_ne!(get("host-uid"), "0", "{diag}");
    assert_eq!(get("host-data-mode"), "700 etcd", "{diag}");
    assert_eq!(get("host-health"), "yes", "{diag}");
    assert_eq!(get("host-backup"), "0", "{diag}");
    assert_eq!(get("host-ship"), "yes", "{diag}");
    assert_eq!(get("host-snapshot"), "yes", "{diag}");
    judge_snapshot(&get, "host", &diag);
    assert_eq!(get("host-defrag"), "0", "{diag}");
    assert!(get("host-defrag-timer").contains("OnCalendar=*-*-* 05:10:00"), "{diag}");
}

/// The backup of `form` holds the cluster: `etcdctl snapshot status` reads it (a hash, at least
/// the revision of the key put just before the backup, keys), and `snapshot restore` accepted it
/// (its integrity hash matched).
fn judge_snapshot(get: &dyn Fn(&str) -> String, form: &str, diag: &str) {
    let json = |key: &str| -> serde_json::Value {
        let raw = get(key);
        serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{key}: not etcdctl's JSON ({e}): {raw}\n{diag}"))
    };
    let probe = json(&format!("{form}-probe"))["header"]["revision"].as_u64().unwrap_or(0);
    assert!(probe > 0, "{form}: the key put before the backup has no revision\n{diag}");
    let status = json(&format!("{form}-snapshot-status"));
    let field = |name: &str| status[name].as_u64().unwrap_or(0);
    assert!(
        field("revision") >= probe && field("totalKey") > 0 && field("hash") != 0,
        "{form}: the snapshot is not the cluster's (status {status}; the key put before it is at revision {probe})\n{diag}"
    );
    assert_eq!(
        get(&format!("{form}-snapshot-restore")),
        "0",
        "{form}: etcdctl snapshot restore refused the backup\n{diag}"
    );
}
