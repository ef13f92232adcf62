//! End-to-end tests of `cargo xtask image`: the real binary, real etcd, real umoci and podman.
//! In: Debian's etcd-server/etcd-client packages (fetched once with `apt-get download` into a
//! cache under the target directory), the shipped image definition. Out: assertions about the
//! bytes, the layer tree, the config, and a container that runs and becomes healthy.
//! Every podman object a test creates has a unique name and is removed afterwards.
//!
//! Longer than 600 lines: one test binary for `cargo xtask image`: its fixtures (a fake etcd, the
//! podman helpers) serve every check, and apart they would be built twice.

mod common;
use common::{ok, require, run, XTASK};

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use xtask::acquire::{Provenance, SourceKind};
use xtask::util::{Arch, Sha256Hex};

fn cache_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Debian's etcd binaries (this machine's architecture) with a provenance.json, laid out like `cargo xtask fetch`
/// output, cached under the target directory. (Once `cargo xtask fetch --source distro` works,
/// this can call it instead.)
fn debian_etcd() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = cache_root().join(format!("debian-etcd-{}", Arch::host().unwrap()));
        if dir.join("provenance.json").is_file() {
            return dir;
        }
        require("apt-get");
        require("dpkg-deb");
        let work = cache_root().join(format!("debian-etcd-work-{}", std::process::id()));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).unwrap();
        ok(Command::new("apt-get").args(["download", "etcd-server", "etcd-client"]).current_dir(&work));
        let mut debs: Vec<PathBuf> = fs::read_dir(&work)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        debs.sort();
        assert_eq!(debs.len(), 2, "{debs:?}");
        let mut artifacts = BTreeMap::new();
        let mut version = String::new();
        for deb in &debs {
            ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(work.join("x")));
            artifacts.insert(deb.file_name().unwrap().to_string_lossy().into_owned(), Sha256Hex::of_file(deb).unwrap());
            let v = ok(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Version"));
            // 3.4.23-4+b4 -> 3.4.23
            version = v.trim().split(['-', '+', '~']).next().unwrap().to_string();
        }
        let staged = work.join("out");
        fs::create_dir_all(&staged).unwrap();
        let mut files = BTreeMap::new();
        for name in ["etcd", "etcdctl"] {
            fs::copy(work.join("x/usr/bin").join(name), staged.join(name)).unwrap();
            files.insert(name.to_string(), Sha256Hex::of_file(&staged.join(name)).unwrap());
        }
        let prov = Provenance {
            source: SourceKind::Distro,
            version,
            arch: Arch::host().unwrap(),
            origin: "Debian packages etcd-server, etcd-client (apt-get download)".into(),
            artifacts,
            files,
            reported_version: None,
            details: BTreeMap::new(),
        };
        fs::write(staged.join("provenance.json"), serde_json::to_vec_pretty(&prov).unwrap()).unwrap();
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&staged, &dir).unwrap();
        let _ = fs::remove_dir_all(&work);
        dir
    })
}

fn version() -> String {
    let p: Provenance = serde_json::from_slice(&fs::read(debian_etcd().join("provenance.json")).unwrap()).unwrap();
    p.version
}

/// Where glibc's ELF interpreter of `arch` is (its PT_INTERP), relative to the image's root.
fn expected_loader(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "lib64/ld-linux-x86-64.so.2",
        Arch::Arm64 => "lib/ld-linux-aarch64.so.1",
        Arch::Ppc64le => "lib64/ld64.so.2",
        Arch::S390x => "lib/ld64.so.1",
    }
}

/// `xtask image` with the Debian binaries into `out`.
fn bake(out: &Path, epoch: &str) -> String {
    ok(Command::new(XTASK)
        .args(["image", "--etcd-dir"])
        .arg(debian_etcd())
        .arg("--out")
        .arg(out)
        .env("SOURCE_DATE_EPOCH", epoch))
}

fn stem() -> String {
    format!("etcd-{}-linux-{}", version(), Arch::host().unwrap())
}

/// Every file under `dir` with its bytes' hash, relative paths.
fn tree_hashes(dir: &Path) -> BTreeMap<String, Sha256Hex> {
    common::files_under(dir).into_iter().map(|(rel, p)| (rel, Sha256Hex::of_file(&p).unwrap())).collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &serde_json::Value) -> PathBuf {
    layout.join("blobs/sha256").join(digest.as_str().unwrap().strip_prefix("sha256:").unwrap())
}

/// (manifest, config) of the single image in a layout.
fn manifest_and_config(layout: &Path) -> (serde_json::Value, serde_json::Value) {
    let index = json(&layout.join("index.json"));
    let m = json(&blob(layout, &index["manifests"][0]["digest"]));
    let c = json(&blob(layout, &m["config"]["digest"]));
    (m, c)
}

#[test]
fn builds_are_byte_identical_and_rebuilds_are_no_ops() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let out_a = bake(&a, "1700000000");
    assert!(out_a.contains("built") && out_a.contains("digest  sha256:") && out_a.contains("archive "), "{out_a}");
    bake(&b, "1700000000");
    let (ta, tb) = (tree_hashes(&a), tree_hashes(&b));
    assert_eq!(ta, tb, "two builds differ");
    assert!(ta.contains_key(&format!("{}.tar", stem())));

    // Same inputs: nothing is rewritten.
    let again = bake(&a, "1700000000");
    assert!(again.contains("up to date"), "{again}");
    assert_eq!(tree_hashes(&a), ta);

    // Another epoch is another input: every timestamp moves, so the digests do.
    let other = bake(&a, "0");
    assert!(other.contains("built"), "{other}");
    assert_ne!(tree_hashes(&a), ta);
    let (_, config) = manifest_and_config(&a.join(stem()));
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    // No temp files or staging directories are left behind.
    let names: Vec<String> =
        fs::read_dir(&a).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn umoci_and_our_verify_accept_it_and_both_catch_a_corrupt_blob() {
    require("umoci");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    bake(&out, "0");
    let layout = out.join(stem());
    let archive = out.join(format!("{}.tar", stem()));
    let image = format!("{}:localhost/etcd:{}", layout.display(), version());

    ok(Command::new("umoci").args(["unpack", "--rootless", "--image", &image]).arg(tmp.path().join("bundle")));
    let rootfs = tmp.path().join("bundle/rootfs");
    assert!(rootfs.join("usr/local/bin/etcd").is_file());
    assert!(rootfs.join("etc/passwd").is_file());
    ok(Command::new(XTASK).args(["image", "verify"]).arg(&layout));
    let v = ok(Command::new(XTASK).args(["image", "verify"]).arg(&archive));
    assert!(v.contains("ok:") && v.contains(&format!("localhost/etcd:{}", version())), "{v}");

    // Flip one byte in the middle of the biggest layer of a copy of the layout.
    let broken = tmp.path().join("broken");
    fs::create_dir_all(broken.join("blobs/sha256")).unwrap();
    for name in ["index.json", "oci-layout"] {
        fs::copy(layout.join(name), broken.join(name)).unwrap();
    }
    let mut biggest = (0u64, PathBuf::new());
    for e in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let p = e.unwrap().path();
        let n = fs::metadata(&p).unwrap().len();
        let dest = broken.join("blobs/sha256").join(p.file_name().unwrap());
        fs::copy(&p, &dest).unwrap();
        if n > biggest.0 {
            biggest = (n, dest);
        }
    }
    let mut bytes = fs::read(&biggest.1).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&biggest.1, &bytes).unwrap();

    let image = format!("{}:localhost/etcd:{}", broken.display(), version());
    let u =
        run(Command::new("umoci").args(["unpack", "--rootless", "--image", &image]).arg(tmp.path().join("bundle2")));
    assert!(!u.status.success(), "umoci accepted a corrupt blob");
    let o = run(Command::new(XTASK).args(["image", "verify"]).arg(&broken));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("corrupt"), "{err}");
    assert!(err.contains(&biggest.1.file_name().unwrap().to_string_lossy().into_owned()), "{err}");

    // Docker's index beside OCI's: the same config, the layers in the same order, the full name.
    let docker: serde_json::Value = {
        let f = fs::File::open(&archive).unwrap();
        let mut ar = tar::Archive::new(f);
        let mut e =
            ar.entries().unwrap().map(|e| e.unwrap()).find(|e| e.path().unwrap().ends_with("manifest.json")).unwrap();
        serde_json::from_reader(&mut e).unwrap()
    };
    let (m, _) = manifest_and_config(&layout);
    let path =
        |d: &serde_json::Value| format!("blobs/sha256/{}", d["digest"].as_str().unwrap().trim_start_matches("sha256:"));
    assert_eq!(docker[0]["Config"], path(&m["config"]));
    let layers: Vec<String> = m["layers"].as_array().unwrap().iter().map(path).collect();
    assert_eq!(docker[0]["Layers"], serde_json::json!(layers));
    assert_eq!(docker[0]["RepoTags"], serde_json::json!([format!("localhost/etcd:{}", version())]));
    // An archive whose manifest.json disagrees (layers swapped) fails verification, named.
    let swapped = tmp.path().join("swapped.tar");
    {
        let mut b = tar::Builder::new(fs::File::create(&swapped).unwrap());
        let mut ar = tar::Archive::new(fs::File::open(&archive).unwrap());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut h = e.header().clone();
            if e.path().unwrap().ends_with("manifest.json") {
                let mut bad = docker.clone();
                bad[0]["Layers"].as_array_mut().unwrap().reverse();
                let data = serde_json::to_vec(&bad).unwrap();
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, &data[..]).unwrap();
            } else {
                b.append(&h, &mut e).unwrap();
            }
        }
        b.finish().unwrap();
    }
    let o = run(Command::new(XTASK).args(["image", "verify"]).arg(&swapped));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("manifest.json") && err.contains("disagrees"), "{err}");

    // The same corruption inside an archive.
    let mut ar = fs::read(&archive).unwrap();
    let at = ar.len() / 2;
    ar[at] ^= 0x55;
    let bad_archive = tmp.path().join("bad.tar");
    fs::write(&bad_archive, ar).unwrap();
    let o = run(Command::new(XTASK).args(["image", "verify"]).arg(&bad_archive));
    assert!(!o.status.success(), "verify accepted a corrupt archive");
}

#[test]
fn layer_tree_and_config_are_hardened_and_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    bake(&out, "1234567890");
    let layout = out.join(stem());
    let (manifest, config) = manifest_and_config(&layout);

    // Every entry of every layer.
    let mut entries: BTreeMap<String, (u32, u64, u64, tar::EntryType, u64)> = BTreeMap::new();
    let mut passwd = String::new();
    for l in manifest["layers"].as_array().unwrap() {
        assert_eq!(l["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
        let f = fs::File::open(blob(&layout, &l["digest"])).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let path = String::from_utf8(e.path_bytes().to_vec()).unwrap();
            assert_eq!(h.mtime().unwrap(), 1234567890, "{path}");
            assert!(h.username_bytes().is_none_or(|u| u.is_empty()), "{path} carries a user name");
            let mode = h.mode().unwrap();
            assert_eq!(mode & 0o6000, 0, "{path} is setuid/setgid");
            if path != "tmp/" {
                assert_eq!(mode & 0o002, 0, "{path} is world-writable");
            }
            if path == "etc/passwd" {
                e.read_to_string(&mut passwd).unwrap();
            }
            let prev = entries
                .insert(path.clone(), (mode, h.uid().unwrap(), h.gid().unwrap(), h.entry_type(), h.size().unwrap()));
            if let Some(p) = prev {
                assert!(p.3.is_dir(), "{path} is in two layers");
            }
        }
    }
    let get = |p: &str| entries.get(p).unwrap_or_else(|| panic!("{p} missing from the image: {:?}", entries.keys()));
    assert_eq!(get("var/lib/etcd/").0, 0o700);
    assert_eq!((get("var/lib/etcd/").1, get("var/lib/etcd/").2), (10001, 10001));
    assert_eq!((get("etc/etcd/pki/").0, get("etc/etcd/pki/").1), (0o700, 10001));
    assert_eq!((get("tmp/").0, get("tmp/").1), (0o1777, 0));
    for bin in ["usr/local/bin/etcd", "usr/local/bin/etcdctl"] {
        assert_eq!((get(bin).0, get(bin).1, get(bin).2), (0o755, 0, 0), "{bin}");
    }
    // Debian's etcd is dynamic: its interpreter and libc are in the image, as regular files,
    // where the loader of the image's architecture is (whatever this machine is).
    let arch: Arch = config["architecture"].as_str().unwrap().parse().unwrap();
    let loader = expected_loader(arch);
    let etcd = xtask::image::elf::read(&debian_etcd().join("etcd")).unwrap();
    assert_eq!(etcd.machine, arch.elf_machine(), "the image says {arch}, its etcd is ELF machine {}", etcd.machine);
    assert_eq!(etcd.interp.as_deref(), Some(format!("/{loader}").as_str()), "etcd's PT_INTERP ({arch})");
    assert!(get(loader).3.is_file(), "{loader} is not a regular file");
    assert!(entries.keys().any(|k| k.ends_with("/libc.so.6")), "{:?}", entries.keys());
    for f in ["etc/group", "etc/nsswitch.conf", "etc/passwd"] {
        assert_eq!(get(f).0, 0o644, "{f}");
    }
    // Every parent directory is explicit, and comes before its children.
    for p in entries.keys() {
        let trimmed = p.trim_end_matches('/');
        if let Some((parent, _)) = trimmed.rsplit_once('/') {
            assert!(entries.contains_key(&format!("{parent}/")), "parent of {p} missing");
        }
    }
    assert!(passwd.contains("etcd:x:10001:10001:"), "{passwd}");
    assert!(passwd.lines().all(|l| l.ends_with(":/usr/sbin/nologin")), "{passwd}");
    assert!(passwd.starts_with("root:x:0:0:") && passwd.contains("nobody:x:65534:"), "{passwd}");

    // Config.
    let c = &config["config"];
    assert_eq!(c["User"], "10001:10001");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/usr/local/bin/etcd"]));
    assert!(c["ExposedPorts"].get("2379/tcp").is_some() && c["ExposedPorts"].get("2380/tcp").is_some());
    assert!(c["Volumes"].get("/var/lib/etcd").is_some());
    assert_eq!(c["WorkingDir"], "/var/lib/etcd");
    let env: Vec<&str> = c["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    // No flag's ETCD_* variable: etcd 3.4 refuses a flag whose variable is also set, so any would
    // break users who pass that flag (`podman run IMAGE --data-dir ...`). Only what the
    // architecture needs (ETCD_UNSUPPORTED_ARCH, from etcd.supported_arches) may be there.
    assert!(env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");
    let def = xtask::definition::Definition::load_default().unwrap();
    let needed: Vec<String> =
        def.runtime_env(&version(), arch).unwrap().iter().map(|(k, v)| format!("{k}={v}")).collect();
    let etcd_vars: Vec<String> = env.iter().filter(|e| e.starts_with("ETCD_")).map(|e| e.to_string()).collect();
    assert_eq!(etcd_vars, needed, "{env:?}");
    assert_eq!(config["history"].as_array().unwrap().len(), manifest["layers"].as_array().unwrap().len());
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), manifest["layers"].as_array().unwrap().len());
    let v = version();
    for (k, want) in
        [("version", v.as_str()), ("created", "2009-02-13T23:31:30Z"), ("title", "etcd"), ("licenses", "Apache-2.0")]
    {
        let key = format!("org.opencontainers.image.{k}");
        assert_eq!(c["Labels"][&key], want, "label {key}");
        assert_eq!(manifest["annotations"][&key], want, "annotation {key}");
    }
    for k in ["revision", "source", "description"] {
        assert!(c["Labels"][&format!("org.opencontainers.image.{k}")].is_string(), "label {k}");
    }
    let index = json(&layout.join("index.json"));
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        format!("localhost/etcd:{v}")
    );
}

/// A minimal static ELF64 executable header for `machine`: enough for the engine, not to run.
fn fake_static_elf(machine: u16, salt: u8) -> Vec<u8> {
    let mut b = vec![0u8; 128];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2;
    b[5] = 1;
    b[6] = 1;
    b[16..18].copy_from_slice(&2u16.to_le_bytes());
    b[18..20].copy_from_slice(&machine.to_le_bytes());
    b[52..54].copy_from_slice(&64u16.to_le_bytes());
    b[54..56].copy_from_slice(&56u16.to_le_bytes());
    b[100] = salt;
    b
}

fn fake_etcd_dir(root: &Path, arch: Arch) -> PathBuf {
    let dir = root.join(arch.as_str());
    fs::create_dir_all(&dir).unwrap();
    let mut files = BTreeMap::new();
    for (i, name) in ["etcd", "etcdctl", "etcdutl"].iter().enumerate() {
        fs::write(dir.join(name), fake_static_elf(arch.elf_machine(), i as u8)).unwrap();
        files.insert(name.to_string(), Sha256Hex::of_file(&dir.join(name)).unwrap());
    }
    let prov = Provenance {
        source: SourceKind::Tarball,
        version: "3.5.1".into(),
        arch,
        origin: "test".into(),
        artifacts: BTreeMap::new(),
        files,
        reported_version: None,
        details: BTreeMap::new(),
    };
    fs::write(dir.join("provenance.json"), serde_json::to_vec(&prov).unwrap()).unwrap();
    dir
}

#[test]
fn several_arches_give_a_multi_arch_index_and_static_builds_get_no_libraries() {
    let tmp = tempfile::tempdir().unwrap();
    let amd = fake_etcd_dir(tmp.path(), Arch::Amd64);
    let arm = fake_etcd_dir(tmp.path(), Arch::Arm64);
    let out = tmp.path().join("out");
    let o = ok(Command::new(XTASK)
        .args(["image", "--etcd-dir"])
        .arg(&amd)
        .arg("--etcd-dir")
        .arg(&arm)
        .arg("--out")
        .arg(&out));
    assert!(o.contains("multi-arch index"), "{o}");
    for stem in ["etcd-3.5.1-linux-amd64", "etcd-3.5.1-linux-arm64", "etcd-3.5.1"] {
        ok(Command::new(XTASK).args(["image", "verify"]).arg(out.join(format!("{stem}.tar"))));
    }
    // Single-arch archives keep exactly one manifest (podman load rejects two).
    let single = json(&out.join("etcd-3.5.1-linux-arm64/index.json"));
    assert_eq!(single["manifests"].as_array().unwrap().len(), 1);
    // Docker's manifest.json is in each single-arch archive, and only there: Docker before 25
    // cannot load a multi-arch archive whatever it contains.
    let names = |stem: &str| -> Vec<String> {
        let f = fs::File::open(out.join(format!("{stem}.tar"))).unwrap();
        tar::Archive::new(f).entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect()
    };
    assert!(names("etcd-3.5.1-linux-arm64").contains(&"manifest.json".to_string()));
    assert!(!names("etcd-3.5.1").contains(&"manifest.json".to_string()));
    let multi = out.join("etcd-3.5.1");
    let top = json(&multi.join("index.json"));
    assert_eq!(top["manifests"][0]["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(top["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "localhost/etcd:3.5.1");
    let inner = json(&blob(&multi, &top["manifests"][0]["digest"]));
    let arches: Vec<&str> = inner["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(arches, ["amd64", "arm64"]);

    // Static binaries: base layer has no interpreter or libraries; etcdutl (optional) is shipped.
    let (m, _) = manifest_and_config(&out.join("etcd-3.5.1-linux-arm64"));
    let mut paths = Vec::new();
    for l in m["layers"].as_array().unwrap() {
        let f = fs::File::open(blob(&out.join("etcd-3.5.1-linux-arm64"), &l["digest"])).unwrap();
        for e in tar::Archive::new(flate2::read::GzDecoder::new(f)).entries().unwrap() {
            paths.push(String::from_utf8(e.unwrap().path_bytes().to_vec()).unwrap());
        }
    }
    assert!(paths.iter().all(|p| !p.starts_with("lib")), "{paths:?}");
    assert!(paths.contains(&"usr/local/bin/etcdutl".to_string()), "{paths:?}");

    // Binaries for the wrong machine are refused.
    let wrong = tmp.path().join("wrong");
    fs::create_dir_all(&wrong).unwrap();
    let mut prov: Provenance = serde_json::from_slice(&fs::read(arm.join("provenance.json")).unwrap()).unwrap();
    prov.arch = Arch::Amd64;
    for n in ["etcd", "etcdctl", "etcdutl"] {
        fs::copy(arm.join(n), wrong.join(n)).unwrap();
    }
    fs::write(wrong.join("provenance.json"), serde_json::to_vec(&prov).unwrap()).unwrap();
    let o = run(Command::new(XTASK).args(["image", "--etcd-dir"]).arg(&wrong).arg("--out").arg(tmp.path().join("w")));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("not amd64"), "{err}");
    assert!(!tmp.path().join("w/etcd-3.5.1-linux-amd64.tar").exists());
}

#[test]
fn definition_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let shipped = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/etcd.toml")).unwrap();
    let amd = fake_etcd_dir(tmp.path(), Arch::Amd64);
    for (i, (from, to, want)) in [
        ("gzip_level = 1", "gzip_level = 1\nflavour = \"x\"", vec!["unknown field", "flavour"]),
        ("path = \"/etc/etcd/pki\"", "path = \"/etc/../../host\"", vec!["image.dirs[1]", "outside the image"]),
        ("path = \"/etc/etcd/pki\"", "path = \"etc/etcd/pki\"", vec!["image.dirs[1]", "not absolute"]),
        ("mode = \"1777\"", "mode = \"17777\"", vec!["mode", "7777"]),
        ("mode = \"1777\"", "mode = \"0777\"", vec!["/tmp", "sticky"]),
        ("run_as = \"etcd\"", "run_as = \"root\"", vec!["image.run_as", "non-root"]),
    ]
    .into_iter()
    .enumerate()
    {
        assert!(shipped.contains(from), "{from}");
        let def = tmp.path().join(format!("bad{i}.toml"));
        fs::write(&def, shipped.replacen(from, to, 1)).unwrap();
        let o = run(Command::new(XTASK)
            .args(["image", "--etcd-dir"])
            .arg(&amd)
            .arg("--out")
            .arg(tmp.path().join("out"))
            .env("XTASK_DEFINITION", &def));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{to}: accepted");
        assert!(err.contains(&format!("bad{i}.toml")), "{err}");
        for w in want {
            assert!(err.contains(w), "{to}: {w:?} not in {err}");
        }
        assert!(!tmp.path().join("out").exists(), "a failed definition left output behind");
    }
}

/// Removes podman objects when the test ends, however it ends.
struct PodmanCleanup {
    containers: Vec<String>,
    volumes: Vec<String>,
    images: Vec<String>,
}

impl Drop for PodmanCleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("podman").args(["rm", "-f", "-t", "0", c]).output();
        }
        for v in &self.volumes {
            let _ = Command::new("podman").args(["volume", "rm", "-f", v]).output();
        }
        for i in &self.images {
            let _ = Command::new("podman").args(["rmi", "-f", i]).output();
        }
    }
}

#[test]
fn podman_loads_and_runs_it_as_etcd_read_only_and_healthy() {
    require("podman");
    let tmp = tempfile::tempdir().unwrap();
    let unique = format!("xtask-test-{}", std::process::id());
    // A copy of the shipped definition that names the image uniquely.
    let shipped = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/etcd.toml")).unwrap();
    let def = tmp.path().join("etcd.toml");
    fs::write(&def, shipped.replacen("name = \"localhost/etcd\"", &format!("name = \"localhost/{unique}\""), 1))
        .unwrap();
    let image = format!("localhost/{unique}:{}", version());
    let mut cleanup = PodmanCleanup { containers: vec![], volumes: vec![], images: vec![image.clone()] };

    let out = ok(Command::new(XTASK)
        .args(["image", "--load", "--etcd-dir"])
        .arg(debian_etcd())
        .arg("--out")
        .arg(tmp.path().join("out"))
        .env("XTASK_DEFINITION", &def));
    assert!(out.contains(&format!("loaded {image}")), "{out}");

    let adapted = xtask::image::podman::run_args().unwrap();
    let version_out = ok(Command::new("podman")
        .args(["run", "--rm", "--network", "none"])
        .args(&adapted)
        .arg(&image)
        .arg("--version"));
    assert!(version_out.contains(&format!("etcd Version: {}", version())), "{version_out}");

    let name = format!("{unique}-node");
    let volume = format!("{unique}-data");
    cleanup.containers.push(name.clone());
    cleanup.volumes.push(volume.clone());
    // Removing the container first frees the volume.
    ok(Command::new("podman").args(["volume", "create", &volume]));
    ok(Command::new("podman")
        .args(["run", "-d", "--name", &name, "--read-only", "--cap-drop=ALL", "--network", "none"])
        .args(["-v", &format!("{volume}:/var/lib/etcd")])
        .args(&adapted)
        .arg(&image)
        .args([
            "--name",
            "n1",
            "--listen-client-urls",
            "http://127.0.0.1:2379",
            "--advertise-client-urls",
            "http://127.0.0.1:2379",
        ]));

    let etcdctl = |args: &[&str]| {
        run(Command::new("podman")
            .args(["exec", &name, "/usr/local/bin/etcdctl", "--endpoints", "http://127.0.0.1:2379"])
            .args(args))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = etcdctl(&["endpoint", "health"]);
        // etcdctl 3.4 reports health on stderr.
        let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        if o.status.success() && said.contains("is healthy") {
            break;
        }
        if Instant::now() > deadline {
            let logs = run(Command::new("podman").args(["logs", &name]));
            panic!(
                "etcd did not become healthy: {}{}\nlogs:\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let put = etcdctl(&["put", "k", "v"]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));

    // The process runs as the etcd uid, seen from the host.
    let pid = ok(Command::new("podman").args(["inspect", "-f", "{{.State.Pid}}", &name]));
    let status = fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid_line.split_whitespace().skip(1).all(|u| u == "10001"), "{uid_line}");
    let gid_line = status.lines().find(|l| l.starts_with("Gid:")).unwrap();
    assert!(gid_line.split_whitespace().skip(1).all(|g| g == "10001"), "{gid_line}");
    drop(cleanup);
    let left = ok(Command::new("podman").args(["images", "-q", &image]));
    assert!(left.trim().is_empty(), "image {image} was not removed");
}

/// Streaming: baking a 256 MiB binary does not hold it in memory.
#[test]
fn memory_stays_flat_with_a_big_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fake_etcd_dir(tmp.path(), Arch::Amd64);
    // Grow etcd to 256 MiB (sparse, so cheap to create) and record its new sum.
    let big = dir.join("etcd");
    let f = fs::OpenOptions::new().append(true).open(&big).unwrap();
    f.set_len(256 << 20).unwrap();
    drop(f);
    let mut prov: Provenance = serde_json::from_slice(&fs::read(dir.join("provenance.json")).unwrap()).unwrap();
    prov.files.insert("etcd".into(), Sha256Hex::of_file(&big).unwrap());
    fs::write(dir.join("provenance.json"), serde_json::to_vec(&prov).unwrap()).unwrap();

    let mut child = Command::new(XTASK)
        .args(["image", "--etcd-dir"])
        .arg(&dir)
        .arg("--out")
        .arg(tmp.path().join("out"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Ok(text) = fs::read_to_string(&status_path) {
            if let Some(kib) = text.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1))
            {
                peak_kib = peak_kib.max(kib.parse().unwrap_or(0));
            }
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success());
    eprintln!("peak resident memory: {peak_kib} KiB");
    assert!(peak_kib > 0, "could not read the peak memory");
    assert!(
        peak_kib < 64 * 1024,
        "peak resident memory {peak_kib} KiB for a 256 MiB binary: something buffers whole files"
    );
}
