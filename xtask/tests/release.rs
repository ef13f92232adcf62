//! `cargo xtask release` for real: the real binary, the real `sha256sum`, the SPDX reference
//! validator (`pyspdxtools`, installed from `ci/pypi-packages.txt`). The workflows that publish
//! it are linted in tests/workflows.rs.
//!
//! 1. The release of the real etcd v3.4.9, built from source for amd64 and arm64
//!    (`--source build`): complete, `sha256sum -c` clean, provenance `build`/3.4.9, valid SBOMs,
//!    and `ETCD_UNSUPPORTED_ARCH=arm64` in the arm64 image config only.
//! 2. The release of Debian's etcd (`--source distro`, the offline fallback), whatever version
//!    apt offers: complete, checksummed, reproducible, valid SBOMs, arm64 libraries from the
//!    acquired sysroot.
//! 3. The arm64 3.4.9 image run under qemu (binfmt_misc, registered by the test) as an etcd
//!    server that the host's etcdctl writes to and reads from through a published loopback port.
//!    Where qemu cannot be set up the test fails with the reason, unless
//!    `cargo xtask ci --allow-omission qemu` allowed leaving it out.
//!
//! Every podman object and binfmt entry a test creates is removed afterwards.

mod common;
use common::{ok, omission, pypi_tool, require, run, tar_member, XTASK};

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use xtask::util::{project_root, Sha256Hex};

const EPOCH: &str = "1700000000";

fn xtask() -> Command {
    let mut c = Command::new(XTASK);
    c.env("XTASK_NO_OFFICIAL", "1").env("SOURCE_DATE_EPOCH", EPOCH);
    c
}

/// `cargo xtask release --source SOURCE --out OUT`, returning `OUT/<version>/`.
fn release(source: &str, out: &Path) -> PathBuf {
    let t = Instant::now();
    let stdout = ok(xtask().args(["release", "--source", source, "--out"]).arg(out));
    eprintln!("release --source {source} into {} took {:.1} s", out.display(), t.elapsed().as_secs_f64());
    let line = stdout.lines().find(|l| l.starts_with("release ")).expect("a `release V -> DIR` line");
    let version = line.split_whitespace().nth(1).unwrap();
    out.join(version)
}

/// `SHA256SUMS` of a release has a line for every file but itself and `sha256sum -c --strict`
/// passes; returns its text.
fn sums_cover_every_other_file(dir: &Path, want: &BTreeSet<String>) -> String {
    let sums = fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), want.len() - 1, "{sums}");
    ok(Command::new("sha256sum").args(["-c", "--strict", "SHA256SUMS"]).current_dir(dir));
    sums
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn blob(archive: &Path, digest: &serde_json::Value) -> Vec<u8> {
    let d = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
    tar_member(archive, &format!("blobs/sha256/{d}"))
}

/// The manifest and the image config of a one-architecture oci-archive.
fn manifest_and_config(archive: &Path) -> (serde_json::Value, serde_json::Value) {
    let index: serde_json::Value = serde_json::from_slice(&tar_member(archive, "index.json")).unwrap();
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(1), "{}: {index}", archive.display());
    let manifest: serde_json::Value = serde_json::from_slice(&blob(archive, &index["manifests"][0]["digest"])).unwrap();
    let config: serde_json::Value = serde_json::from_slice(&blob(archive, &manifest["config"]["digest"])).unwrap();
    (manifest, config)
}

/// The `Env` of an image config, as `KEY=VALUE` strings.
fn config_env(config: &serde_json::Value) -> Vec<String> {
    config["config"]["Env"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The files a release of `version` for amd64 and arm64 holds.
fn release_files(version: &str) -> BTreeSet<String> {
    let mut want =
        BTreeSet::from(["SHA256SUMS".to_string(), format!("etcd-{version}.tar"), format!("etcd_{version}.raw")]);
    want.insert("RELEASE-NOTES.md".to_string());
    for arch in ["amd64", "arm64"] {
        for ext in ["tar", "provenance.json", "spdx.json"] {
            want.insert(format!("etcd-{version}-linux-{arch}.{ext}"));
        }
    }
    want
}

fn file_names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// What apt installs here as `etcd-server`: its Debian version (e.g. `3.4.23-4+b4`) and the
/// upstream version inside (`3.4.23`), asked from apt rather than assumed.
fn apt_etcd_server() -> (String, String) {
    let policy = ok(Command::new("apt-cache").args(["policy", "etcd-server"]));
    let candidate = policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|c| c.trim().to_string())
        .filter(|c| c != "(none)" && !c.is_empty())
        .unwrap_or_else(|| panic!("apt offers no etcd-server: run `apt-get update` (cargo xtask ci does)\n{policy}"));
    let no_epoch = candidate.split_once(':').map_or(candidate.as_str(), |(_, v)| v);
    let no_revision = no_epoch.rsplit_once('-').map_or(no_epoch, |(v, _)| v);
    let upstream = no_revision.split(['+', '~']).next().unwrap().to_string();
    (candidate, upstream)
}

#[test]
fn release_of_349_built_from_source_for_amd64_and_arm64() {
    common::build_etcd_349(&["amd64", "arm64"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = release("build", tmp.path());
    assert_eq!(dir.file_name().unwrap(), "3.4.9", "the release carries the version built");
    let want = release_files("3.4.9");
    assert_eq!(file_names(&dir), want);
    sums_cover_every_other_file(&dir, &want);
    // The release note states every advisory affecting 3.4.9 and what fixes it.
    let notes = fs::read_to_string(dir.join("RELEASE-NOTES.md")).unwrap();
    for cve in
        ["CVE-2020-15106", "CVE-2020-15112", "CVE-2020-15113", "CVE-2020-15114", "CVE-2020-15115", "CVE-2020-15136"]
    {
        let line = notes.lines().find(|l| l.contains(cve)).unwrap_or_else(|| panic!("{cve} missing:\n{notes}"));
        assert!(line.contains("Fixed in 3.4.10."), "{line}");
    }
    // Docker's manifest.json in each architecture's archive (docker load before Docker 25), not
    // in the multi-arch one, which Docker cannot load.
    let docker_index = |name: &str| -> Option<String> {
        common::tar_member_opt(&dir.join(name), "manifest.json").map(|b| String::from_utf8(b).unwrap())
    };
    for arch in ["amd64", "arm64"] {
        let text = docker_index(&format!("etcd-3.4.9-linux-{arch}.tar")).expect("manifest.json in the archive");
        assert!(text.contains(r#""RepoTags":["localhost/etcd:3.4.9"]"#), "{arch}: {text}");
    }
    assert!(docker_index("etcd-3.4.9.tar").is_none(), "the multi-arch archive has a manifest.json");

    let (validator, pythonpath) = pypi_tool("pyspdxtools");
    for arch in ["amd64", "arm64"] {
        let stem = format!("etcd-3.4.9-linux-{arch}");
        // Where it came from: the source build of v3.4.9, as build-etcd recorded it.
        let prov = json(&dir.join(format!("{stem}.provenance.json")));
        assert_eq!(prov["source"], "build", "{arch}: {prov}");
        assert_eq!(prov["version"], "3.4.9", "{arch}: {prov}");
        assert_eq!(prov["arch"], arch);
        let origin = prov["origin"].as_str().unwrap();
        assert!(origin.starts_with("git:") && origin.ends_with(common::ETCD_349_COMMIT), "{arch}: {origin}");
        assert_eq!(prov["files"]["etcd"], json(&common::etcd_349_dir(arch).join("provenance.json"))["files"]["etcd"]);

        // The SBOM is valid and names the binary of the provenance.
        let path = dir.join(format!("{stem}.spdx.json"));
        ok(Command::new(&validator).arg("-i").arg(&path).env("PYTHONPATH", &pythonpath));
        let doc = json(&path);
        let etcd = doc["packages"].as_array().unwrap().iter().find(|p| p["SPDXID"] == "SPDXRef-Binary-etcd").unwrap();
        assert_eq!(etcd["versionInfo"], "3.4.9");
        assert_eq!(etcd["checksums"][0]["checksumValue"], prov["files"]["etcd"]);
        // The advisories that affect 3.4.9, as security references of the binary.
        let advisories: BTreeSet<&str> = etcd["externalRefs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["referenceCategory"] == "SECURITY" && r["referenceType"] == "advisory")
            .map(|r| r["referenceLocator"].as_str().unwrap())
            .collect();
        assert!(advisories.len() >= 6, "{arch}: {advisories:?}");
        assert!(advisories.iter().all(|u| u.starts_with("https://") && u.contains("GHSA-")), "{advisories:?}");

        // The image: valid, of this architecture, and it starts on it. etcd 3.4 exits at once on
        // arm64 unless ETCD_UNSUPPORTED_ARCH=arm64 is set; amd64 needs nothing. No ETCD_* variable
        // that a flag could conflict with.
        let archive = dir.join(format!("{stem}.tar"));
        ok(Command::new(XTASK).args(["image", "verify"]).arg(&archive));
        let (_, config) = manifest_and_config(&archive);
        assert_eq!(config["architecture"], arch);
        let env = config_env(&config);
        let unsupported: Vec<&String> = env.iter().filter(|e| e.starts_with("ETCD_UNSUPPORTED_ARCH=")).collect();
        match arch {
            "arm64" => assert_eq!(unsupported, ["ETCD_UNSUPPORTED_ARCH=arm64"], "{env:?}"),
            _ => assert!(unsupported.is_empty(), "{arch} needs no ETCD_UNSUPPORTED_ARCH: {env:?}"),
        }
        assert!(!env.iter().any(|e| e.starts_with("ETCD_DATA_DIR=")), "{env:?}");
    }

    // The multi-arch archive: an image index of exactly the two per-arch manifests.
    let multi = dir.join("etcd-3.4.9.tar");
    let top: serde_json::Value = serde_json::from_slice(&tar_member(&multi, "index.json")).unwrap();
    let index: serde_json::Value = serde_json::from_slice(&blob(&multi, &top["manifests"][0]["digest"])).unwrap();
    let listed: BTreeSet<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["platform"]["architecture"].as_str().unwrap().into(), m["digest"].as_str().unwrap().into()))
        .collect();
    let per_arch: BTreeSet<(String, String)> = ["amd64", "arm64"]
        .map(|arch| {
            let archive = dir.join(format!("etcd-3.4.9-linux-{arch}.tar"));
            let i: serde_json::Value = serde_json::from_slice(&tar_member(&archive, "index.json")).unwrap();
            (arch.to_string(), i["manifests"][0]["digest"].as_str().unwrap().to_string())
        })
        .into();
    assert_eq!(listed, per_arch, "{index}");

    // The portable image is this machine's etcd 3.4.9.
    let unit = ok(Command::new("unsquashfs")
        .arg("-cat")
        .arg(dir.join("etcd_3.4.9.raw"))
        .arg("usr/lib/systemd/system/etcd.service"));
    assert!(unit.contains("ExecStart=/usr/bin/etcd"), "{unit}");
    let host_needs = common::host_arch() != "amd64";
    assert_eq!(unit.contains("Environment=ETCD_UNSUPPORTED_ARCH="), host_needs, "{unit}");
}

#[test]
fn release_of_debians_etcd_is_complete_checksummed_reproducible_and_its_sboms_are_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = release("distro", &tmp.path().join("a"));
    let version = dir.file_name().unwrap().to_string_lossy().into_owned();
    // The version apt offers, whatever it is, and recorded as Debian's.
    let (debian_version, upstream) = apt_etcd_server();
    assert_eq!(version, upstream, "the release carries the version Debian ships ({debian_version})");
    let prov_amd64 = json(&dir.join(format!("etcd-{version}-linux-amd64.provenance.json")));
    assert_eq!(prov_amd64["source"], "distro", "the tests take Debian's etcd");
    assert_eq!(prov_amd64["version"], upstream.as_str());
    let origin = prov_amd64["origin"].as_str().unwrap();
    assert!(origin.contains(&format!("etcd-server:amd64={debian_version}")), "{origin}");

    // Exactly the documented files, nothing half-written beside them.
    let want = release_files(&version);
    assert_eq!(file_names(&dir), want);
    let beside: Vec<String> = fs::read_dir(tmp.path().join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(beside.iter().filter(|n| !n.starts_with(".build")).count(), 1, "{beside:?}");

    // sha256sum -c passes and covers every other file.
    let sums = sums_cover_every_other_file(&dir, &want);

    // Every SBOM passes the SPDX reference validator and says what is inside.
    let (validator, pythonpath) = pypi_tool("pyspdxtools");
    for arch in ["amd64", "arm64"] {
        let stem = format!("etcd-{version}-linux-{arch}");
        let path = dir.join(format!("{stem}.spdx.json"));
        ok(Command::new(&validator).arg("-i").arg(&path).env("PYTHONPATH", &pythonpath));
        let doc = json(&path);
        let prov = json(&dir.join(format!("{stem}.provenance.json")));
        assert_eq!(doc["spdxVersion"], "SPDX-2.3");
        assert_eq!(doc["creationInfo"]["created"], "2023-11-14T22:13:20Z", "created is SOURCE_DATE_EPOCH");
        assert!(doc["documentNamespace"].as_str().unwrap().starts_with("urn:uuid:"));
        let pkgs = doc["packages"].as_array().unwrap();
        let pkg = |id: &str| pkgs.iter().find(|p| p["SPDXID"] == id).unwrap_or_else(|| panic!("{id} in {path:?}"));
        let image = pkg("SPDXRef-Image");
        let archive_sum = Sha256Hex::of_file(&dir.join(format!("{stem}.tar"))).unwrap().to_string();
        assert_eq!(image["checksums"][0]["checksumValue"], archive_sum.as_str());
        assert_eq!(image["primaryPackagePurpose"], "CONTAINER");
        let etcd = pkg("SPDXRef-Binary-etcd");
        assert_eq!(etcd["versionInfo"], version.as_str());
        assert_eq!(etcd["licenseDeclared"], "Apache-2.0");
        assert_eq!(etcd["checksums"][0]["algorithm"], "SHA256");
        assert_eq!(etcd["checksums"][0]["checksumValue"], prov["files"]["etcd"]);
        let debs = prov["artifacts"].as_object().unwrap();
        for (name, sum) in debs {
            let a = pkgs.iter().find(|p| p["name"] == name.as_str()).unwrap_or_else(|| panic!("{name} in {path:?}"));
            assert_eq!(&a["checksums"][0]["checksumValue"], sum);
        }
        let libc = pkgs.iter().any(|p| p["name"].as_str().is_some_and(|n| n.ends_with("/libc.so.6")));
        assert!(libc, "Debian's etcd is dynamic: the SBOM lists the C library copied in ({arch})");
    }

    // The arm64 image carries arm64 code: its C library from the acquired sysroot, exactly the
    // bytes acquire verified, and its config says arm64.
    let arm = dir.join(format!("etcd-{version}-linux-arm64.tar"));
    ok(Command::new(XTASK).args(["image", "verify"]).arg(&arm));
    let (manifest, config) = manifest_and_config(&arm);
    assert_eq!(config["architecture"], "arm64");
    let base = blob(&arm, &manifest["layers"][0]["digest"]);
    let mut layer = tar::Archive::new(flate2::read::GzDecoder::new(&base[..]));
    let prov_arm = json(&dir.join(format!("etcd-{version}-linux-arm64.provenance.json")));
    let mut from_sysroot = 0;
    for e in layer.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        if !e.header().entry_type().is_file() || !(path.starts_with("lib") || path.starts_with("usr/lib")) {
            continue;
        }
        let mut v = Vec::new();
        e.read_to_end(&mut v).unwrap();
        assert_eq!(&v[18..20], &183u16.to_le_bytes(), "/{path} is an aarch64 ELF file");
        let sum = Sha256Hex::of_bytes(&v).to_string();
        let recorded =
            prov_arm["files"].as_object().unwrap().iter().any(|(k, s)| k.starts_with("sysroot/") && s == sum.as_str());
        assert!(recorded, "/{path} is a file of the acquired sysroot");
        from_sysroot += 1;
    }
    assert!(from_sysroot >= 2, "the arm64 image has its interpreter and libc ({from_sysroot} files)");

    // Reproducible: a second release from scratch gives the same bytes, file for file.
    let again = release("distro", &tmp.path().join("b"));
    assert_eq!(fs::read_to_string(again.join("SHA256SUMS")).unwrap(), sums, "two releases differ");
    // A rerun over an existing release reuses the built images and changes nothing.
    let rerun = release("distro", &tmp.path().join("a"));
    assert_eq!(fs::read_to_string(rerun.join("SHA256SUMS")).unwrap(), sums);

    // Anyone can rebuild it from its provenance and compare, file by file...
    let work = tmp.path().join("verify");
    let verified = ok(xtask().args(["release", "verify"]).arg(&dir).arg("--work").arg(&work));
    assert!(verified.contains("files are byte for byte what a rebuild gives"), "{verified}");
    // ...and one flipped byte in an image blob is named, with its blob.
    let archive = again.join(format!("etcd-{version}-linux-amd64.tar"));
    let (blob, offset) = {
        let mut ar = tar::Archive::new(fs::File::open(&archive).unwrap());
        let e = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().starts_with("blobs/sha256") && e.header().size().unwrap() > 4096)
            .unwrap();
        (e.path().unwrap().display().to_string(), e.raw_file_position() + 1000)
    };
    let mut bytes = fs::read(&archive).unwrap();
    bytes[offset as usize] ^= 1;
    fs::write(&archive, bytes).unwrap();
    let out = run(xtask().args(["release", "verify"]).arg(&again).arg("--work").arg(&work));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    let line = format!("DIFFERS etcd-{version}-linux-amd64.tar: bytes differ, in {blob}");
    assert!(text.contains(&line), "{line} missing:\n{text}");
    assert!(text.contains("1 file differs"), "{text}");

    // Break one byte of a download: sha256sum -c catches it.
    let spdx = dir.join(format!("etcd-{version}-linux-amd64.spdx.json"));
    let mut bytes = fs::read(&spdx).unwrap();
    bytes[10] ^= 1;
    fs::write(&spdx, bytes).unwrap();
    let out = run(Command::new("sha256sum").args(["-c", "SHA256SUMS"]).current_dir(&dir));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("spdx.json: FAILED"), "{out:?}");
}

/// The qemu-aarch64 binfmt_misc entry, held while a test uses it. Test processes may run at the
/// same time: each user holds a shared lock on `target/.qemu-binfmt.lock`; the entry is removed
/// on drop when a test registered it (`target/.qemu-binfmt.registered`) and no one else holds
/// the lock. An entry the machine had before is left alone.
struct Binfmt {
    lock: Option<fs::File>,
    entry: PathBuf,
    marker: PathBuf,
}

impl Drop for Binfmt {
    fn drop(&mut self) {
        let Some(lock) = self.lock.take() else { return };
        let _ = lock.unlock();
        if lock.try_lock().is_ok() && self.marker.exists() {
            let _ = fs::write(&self.entry, "-1");
            let _ = fs::remove_file(&self.marker);
            eprintln!("removed the binfmt_misc entry {}", self.entry.display());
        }
    }
}

/// A podman image this test created, removed on drop.
struct PodmanImage(String);

impl Drop for PodmanImage {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

/// A podman container this test created, removed (with its anonymous volumes) on drop.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", "-v", "-t", "0", &self.0]).output();
    }
}

/// Makes aarch64 binaries run here through qemu-user-static and binfmt_misc (mounting
/// binfmt_misc and registering Debian's rule when needed; nothing on an arm64 machine).
/// Err(reason) when this machine does not allow it.
fn register_qemu_aarch64() -> Result<Binfmt, String> {
    let binfmt = Path::new("/proc/sys/fs/binfmt_misc");
    let entry = binfmt.join("qemu-aarch64");
    let target = xtask::util::target_dir();
    let marker = target.join(".qemu-binfmt.registered");
    if common::host_arch() == "arm64" {
        return Ok(Binfmt { lock: None, entry, marker });
    }
    if !xtask::util::is_root() {
        return Err("not root: registering qemu with binfmt_misc needs root".into());
    }
    // Debian's rule (qemu-user-static ships it for systemd-binfmt), else one for the plain binary.
    let debian_rule = fs::read_to_string("/usr/lib/binfmt.d/qemu-aarch64.conf")
        .ok()
        .filter(|r| r.split(':').nth(6).is_some_and(|interp| Path::new(interp).is_file()));
    let rule = match debian_rule {
        Some(r) => r.trim().to_string(),
        None if Path::new("/usr/bin/qemu-aarch64-static").is_file() => {
            // The ELF header of an aarch64 executable; F: the interpreter is opened now, so it
            // also works inside containers.
            let magic = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00";
            let mask = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff";
            format!(":qemu-aarch64:M::{magic}:{mask}:/usr/bin/qemu-aarch64-static:F")
        }
        None => return Err("qemu-user-static is not installed (Debian: apt-get install qemu-user-static)".into()),
    };
    if !binfmt.join("register").exists() {
        let out = Command::new("mount")
            .args(["-t", "binfmt_misc", "binfmt_misc"])
            .arg(binfmt)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "binfmt_misc is not mounted and cannot be mounted here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        eprintln!("mounted binfmt_misc on {}", binfmt.display());
    }
    fs::create_dir_all(&target).unwrap();
    let lock = fs::File::create(target.join(".qemu-binfmt.lock")).unwrap();
    // Check and register under the exclusive lock, then keep a shared one while in use. Another
    // process may remove the entry between the two: then check again.
    for _ in 0..5 {
        lock.lock().unwrap();
        match fs::read_to_string(&entry) {
            Ok(state) => {
                if !state.starts_with("enabled") {
                    return Err(format!("{} exists but is not enabled: {state}", entry.display()));
                }
                if !state.lines().any(|l| l.starts_with("flags:") && l.contains('F')) {
                    return Err(format!("{} lacks the F flag, so containers cannot use it: {state}", entry.display()));
                }
            }
            Err(_) => {
                fs::write(binfmt.join("register"), &rule)
                    .map_err(|e| format!("binfmt_misc refused the registration of {rule:?}: {e}"))?;
                fs::write(&marker, "registered by the release tests; removed by the last one\n").unwrap();
                eprintln!("registered qemu-aarch64 with binfmt_misc: {rule}");
            }
        }
        lock.unlock().unwrap();
        lock.lock_shared().unwrap();
        if entry.exists() {
            return Ok(Binfmt { lock: Some(lock), entry, marker });
        }
        lock.unlock().unwrap();
    }
    Err(format!("{} vanished five times while being registered", entry.display()))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn arm64_349_image_serves_etcd_clients_under_qemu() {
    common::build_etcd_349(&["amd64", "arm64"]);
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(xtask().args(["image", "--arch", "arm64", "--source", "build", "--out"]).arg(tmp.path()));
    let archive = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("archive "))
        .map(|p| if Path::new(p).is_absolute() { PathBuf::from(p) } else { project_root().join(p) })
        .expect("an archive line");
    let _binfmt = match register_qemu_aarch64() {
        Ok(b) => b,
        Err(reason) => {
            omission("qemu", &format!("the arm64 image cannot run under emulation here: {reason}"));
            return;
        }
    };
    require("podman");
    require("skopeo");
    let tag = format!("xtask-release-qemu-{}", std::process::id());
    let image = format!("localhost/{tag}:3.4.9");
    let _image = PodmanImage(image.clone());
    ok(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("containers-storage:{image}")));

    // One etcd server, plain http, its client port published on loopback only.
    let port = free_port();
    let _container = Container(tag.clone());
    let mut args: Vec<String> =
        ["run", "-d", "--name", &tag, "--arch", "arm64", "--pull", "never"].map(String::from).into();
    args.extend(xtask::image::podman::run_args().unwrap());
    args.extend(["-p".to_string(), format!("127.0.0.1:{port}:2379"), image.clone()]);
    args.extend([
        "--name=qemu".to_string(),
        "--data-dir=/var/lib/etcd".into(),
        "--listen-client-urls=http://0.0.0.0:2379".into(),
        format!("--advertise-client-urls=http://127.0.0.1:{port}"),
    ]);
    let etcdctl = common::etcd_349_dir(common::host_arch()).join("etcdctl");
    let ctl = |a: &[&str]| {
        run(Command::new(&etcdctl)
            .args([&format!("--endpoints=http://127.0.0.1:{port}"), "--dial-timeout=2s", "--command-timeout=5s"])
            .args(a))
    };
    let started = Instant::now();
    ok(Command::new("podman").args(&args));
    let logs = || text_of(&run(Command::new("podman").args(["logs", &tag])));
    loop {
        let put = ctl(&["put", "xtask/qemu", "served-by-arm64"]);
        if put.status.success() {
            break;
        }
        let state = ok(Command::new("podman").args(["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", &tag]));
        assert!(state.starts_with("running"), "the arm64 etcd stopped ({}):\n{}", state.trim(), logs());
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the arm64 etcd did not answer within 180 s: {}\n{}",
            text_of(&put),
            logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let secs = started.elapsed().as_secs_f64();
    let how = if common::host_arch() == "arm64" { "natively" } else { "under qemu" };
    eprintln!("arm64 server start {how}: {secs:.1} s (podman run to the first successful put)");

    let get = ctl(&["get", "xtask/qemu", "--print-value-only"]);
    assert!(get.status.success(), "{}", text_of(&get));
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "served-by-arm64");
    let status =
        ok(Command::new(&etcdctl).arg(format!("--endpoints=http://127.0.0.1:{port}")).args(["endpoint", "status"]));
    assert!(status.contains(", 3.4.9,"), "the server is etcd 3.4.9: {status}");

    // It runs arm64 code: the binary says so, and it needed ETCD_UNSUPPORTED_ARCH to start.
    let version = ok(Command::new("podman").args(["exec", &tag, "etcd", "--version"]));
    assert!(version.contains("etcd Version: 3.4.9"), "{version}");
    assert!(version.contains(&format!("Git SHA: {}", common::ETCD_349_GITSHA)), "{version}");
    assert!(version.contains("linux/arm64"), "it ran arm64 code: {version}");
    let logs = logs();
    assert!(
        logs.contains("running etcd on unsupported architecture \"arm64\" since ETCD_UNSUPPORTED_ARCH is set"),
        "etcd 3.4 starts on arm64 only with ETCD_UNSUPPORTED_ARCH=arm64, from the image config:\n{logs}"
    );
}

fn text_of(out: &std::process::Output) -> String {
    common::text(out)
}
