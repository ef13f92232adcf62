//! `cargo xtask publish` for real: a registry on loopback (Debian's `docker-registry`, started
//! here with its storage in a temp directory), the image pushed with every architecture under
//! the etcd version tag, its index read back with skopeo, pulled with podman and run.
//! In: Debian's etcd (`--source distro`, the official locations disabled). The registry
//! process and the pulled image are removed at the end, on failure too.

mod common;
use common::{ok, require, run, XTASK};

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The registry child process: killed and reaped on drop.
struct Registry {
    child: Child,
    addr: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `docker-registry` on a free loopback port with its storage under `dir`.
fn start_registry(dir: &Path) -> Registry {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.join("config.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.join("storage").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("registry.log")).unwrap())
        .spawn()
        .expect("docker-registry starts");
    let reg = Registry { child, addr };
    let t = Instant::now();
    loop {
        if ureq::get(&format!("http://{}/v2/", reg.addr)).call().is_ok() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "the registry did not answer on {} within 15 s", reg.addr);
        std::thread::sleep(Duration::from_millis(100));
    }
    reg
}

/// A podman image this test pulled, removed on drop.
struct PodmanImage(String);

impl Drop for PodmanImage {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

fn publish(registry: &str, images: &Path) -> Output {
    run(Command::new(XTASK)
        .args(["publish", "--insecure", "--source", "distro", "--registry", registry, "--out"])
        .arg(images)
        .env("XTASK_NO_OFFICIAL", "1"))
}

#[test]
fn publish_pushes_every_arch_and_the_image_pulls_back_and_runs() {
    for tool in ["docker-registry", "skopeo", "podman"] {
        require(tool);
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = start_registry(tmp.path());
    let repo = format!("xtask-test-{}/etcd", std::process::id());
    let dest = format!("{}/{repo}", reg.addr);

    let t = Instant::now();
    let out = publish(&dest, &tmp.path().join("images"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "publish failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("publish (build + push) took {:.1} s", t.elapsed().as_secs_f64());
    let pushed = stdout.lines().find_map(|l| l.strip_prefix("pushed ")).expect("a `pushed REF@DIGEST` line");
    let (reference, digest) = pushed.split_once('@').unwrap();
    let version = reference.rsplit_once(':').unwrap().1;
    assert!(version.starts_with("3.4."), "tagged with the etcd version: {reference}");

    // The registry holds the multi-arch index we built, digest for digest.
    let raw = ok(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}")));
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    let mut arches: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    arches.sort();
    assert_eq!(arches, ["amd64", "arm64"]);
    let local = fs::read_dir(tmp.path().join("images")).unwrap().filter_map(|e| {
        let p = e.unwrap().path();
        let name = p.file_name()?.to_string_lossy().into_owned();
        (name == format!("etcd-{version}.inputs.json")).then(|| fs::read_to_string(&p).unwrap())
    });
    let stamp: serde_json::Value =
        serde_json::from_str(&local.into_iter().next().expect("the multi-arch build record")).unwrap();
    assert_eq!(stamp["digest"], digest);

    // Pulled back with podman (this machine's architecture) and run.
    let _image = PodmanImage(reference.to_string());
    ok(Command::new("podman").args(["pull", "-q", "--tls-verify=false", reference]));
    let mut args = vec!["run".to_string(), "--rm".into()];
    args.extend(xtask::image::podman::run_args().unwrap());
    args.extend([reference.to_string(), "--version".into()]);
    let v = ok(Command::new("podman").args(&args));
    assert!(v.contains(&format!("etcd Version: {version}")), "{v}");

    // Publishing again is idempotent: the same digest.
    let again = publish(&dest, &tmp.path().join("images"));
    assert!(again.status.success(), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stdout).contains(pushed), "{again:?}");
}

#[test]
fn bad_destinations_fail_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    // A malformed --registry is refused before anything is built.
    let out = publish("127.0.0.1:5000/Etcd:latest", tmp.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--registry") && err.contains("leave out the tag"), "{err}");
    assert!(fs::read_dir(tmp.path()).unwrap().next().is_none(), "nothing was built");

    // Nothing listening: the error names the destination and what to check.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = publish(&format!("127.0.0.1:{port}/etcd"), &tmp.path().join("images"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("cannot push to 127.0.0.1:{port}/etcd:")) && err.contains("reachable"), "{err}");
}

/// The package lists of the Debian suite that serves etcd's upgrade target (trixie), for this
/// machine's architecture: xtask's own verified apt path, private lists beside its etcd cache.
fn trixie_apt() -> xtask::acquire::distro::Apt {
    let def = xtask::definition::Definition::load_default().unwrap();
    let suite = def.debian_suite(&def.upgrade.as_ref().unwrap().to).unwrap();
    let arch = xtask::util::Arch::host().unwrap();
    xtask::acquire::distro::Apt::new(arch, &suite, &xtask::util::target_dir().join("etcd")).unwrap()
}

/// cosign, the sigstore project's own verifier: Debian trixie's package (Debian 12 has none),
/// fetched with xtask's verified apt path (private package lists, sum checked against apt's
/// signed index) into target/tools/cosign/. Its binary needs nothing but libc.
fn cosign() -> std::path::PathBuf {
    use xtask::acquire::distro;
    let apt = trixie_apt();
    let cand = distro::candidate(&apt, "cosign").unwrap();
    let dir = xtask::util::target_dir().join("tools/cosign").join(&cand.version);
    let bin = dir.join("cosign");
    if !bin.exists() {
        fs::create_dir_all(&dir).unwrap();
        let deb = distro::ensure_deb(&apt, &cand, &dir).unwrap();
        assert_eq!(distro::extract_binaries(&deb, &["cosign"], &dir).unwrap(), ["cosign"]);
    }
    bin
}

/// skopeo from Debian trixie (1.18, containers/image 5.34), with the trixie libraries it needs
/// in a sysroot of its own: containers/image's policy engine, podman's, with sigstore enabled.
/// Debian 12's skopeo and podman are built with sigstore disabled ("Debian-local change:
/// sigstore disabled") and refuse every sigstore-signed image.
fn policy_skopeo() -> Command {
    use xtask::acquire::distro;
    let apt = trixie_apt();
    let arch = apt.arch;
    let cand = distro::candidate(&apt, "skopeo").unwrap();
    let dir = xtask::util::target_dir().join("tools/skopeo").join(&cand.version);
    let (bin, sysroot) = (dir.join("skopeo"), dir.join("sysroot"));
    if !bin.exists() {
        let staged = dir.with_extension("partial");
        let _ = fs::remove_dir_all(&staged);
        fs::create_dir_all(staged.join("sysroot")).unwrap();
        // skopeo's Depends in trixie, and libgpgme's (base-files: the merged-/usr links).
        for pkg in ["base-files", "libc6", "libgpgme11t64", "libassuan9", "libgpg-error0", "libsqlite3-0"] {
            let c = distro::candidate(&apt, pkg).unwrap();
            let deb = distro::ensure_deb(&apt, &c, &staged).unwrap();
            distro::extract_libraries(&deb, &staged.join("sysroot")).unwrap();
            distro::extract_merged_usr_links(&deb, &staged.join("sysroot")).unwrap();
        }
        let deb = distro::ensure_deb(&apt, &cand, &staged).unwrap();
        assert_eq!(distro::extract_binaries(&deb, &["skopeo"], &staged).unwrap(), ["skopeo"]);
        fs::rename(&staged, &dir).unwrap();
    }
    xtask::image::elf::loader_command(&sysroot, &bin, arch).unwrap()
}

/// `skopeo copy` of `reference` under `policy` (and `registries_d`, which says where sigstore
/// signatures live): what `podman pull` decides with the same files.
fn policy_pull(policy: &Path, registries_d: &Path, reference: &str, dest: &Path) -> Output {
    let _ = fs::remove_dir_all(dest);
    run(policy_skopeo()
        .args(["copy", "--src-tls-verify=false", "--policy"])
        .arg(policy)
        .arg("--registries.d")
        .arg(registries_d)
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dest.display())))
}

/// `cosign verify` of `reference` with `key` against the loopback registry (no transparency
/// log: the signatures are key-based and offline).
fn cosign_verify(key: &Path, reference: &str) -> Output {
    run(Command::new(cosign())
        .args(["verify", "--insecure-ignore-tlog", "--allow-http-registry", "--key"])
        .arg(key)
        .arg(reference))
}

fn keygen(dir: &Path, passphrase: &str) -> Output {
    run(Command::new(XTASK).args(["keygen", "--out"]).arg(dir).env("XTASK_SIGN_PASSPHRASE", passphrase))
}

#[test]
fn signed_images_verify_with_cosign_and_the_policy_engine_and_nothing_else_does() {
    for tool in ["docker-registry", "skopeo"] {
        require(tool);
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = start_registry(tmp.path());
    let images = tmp.path().join("images");

    // A key pair; the passphrase comes from the environment, never a flag; no overwrite.
    let keys = tmp.path().join("keys");
    let out = keygen(&keys, "correct horse");
    assert!(out.status.success(), "{out:?}");
    let (key, public) = (keys.join("cosign.key"), keys.join("cosign.pub"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let before = fs::read(&key).unwrap();
    let again = keygen(&keys, "other");
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("never overwritten"));
    assert_eq!(fs::read(&key).unwrap(), before);
    // cosign reads our encrypted private key as its own: the same public key.
    let derived =
        ok(Command::new(cosign()).args(["public-key", "--key"]).arg(&key).env("COSIGN_PASSWORD", "correct horse"));
    assert_eq!(derived, fs::read_to_string(&public).unwrap());

    // Signed on push: the index and each architecture's image.
    let dest = format!("{}/etcd", reg.addr);
    let t = Instant::now();
    let out = run(Command::new(XTASK)
        .args(["publish", "--insecure", "--source", "distro", "--registry", &dest, "--sign-key"])
        .arg(&key)
        .arg("--out")
        .arg(&images)
        .env("XTASK_NO_OFFICIAL", "1")
        .env("XTASK_SIGN_PASSPHRASE", "correct horse"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "publish --sign-key failed:\n{stdout}\n{stderr}");
    eprintln!("publish --sign-key (build + push + sign) took {:.1} s", t.elapsed().as_secs_f64());
    for l in stderr.lines().filter(|l| l.starts_with("publish: signed")) {
        eprintln!("{l}");
    }
    let pushed = stdout.lines().find_map(|l| l.strip_prefix("pushed ")).unwrap().to_string();
    let (reference, digest) = pushed.split_once('@').unwrap();
    let raw = ok(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}")));
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let arch_digests: Vec<String> =
        index["manifests"].as_array().unwrap().iter().map(|m| m["digest"].as_str().unwrap().to_string()).collect();
    assert_eq!(stderr.matches("publish: signed").count(), 1 + arch_digests.len(), "{stderr}");

    // cosign verifies the tag, the index by digest and every architecture by digest.
    let repo = reference.rsplit_once(':').unwrap().0;
    let mut refs = vec![reference.to_string(), format!("{repo}@{digest}")];
    refs.extend(arch_digests.iter().map(|d| format!("{repo}@{d}")));
    for r in &refs {
        let t = Instant::now();
        let v = cosign_verify(&public, r);
        assert!(v.status.success(), "{r}: {}", String::from_utf8_lossy(&v.stderr));
        let claims: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
        assert_eq!(claims[0]["critical"]["identity"]["docker-reference"], reference, "{r}");
        eprintln!("cosign verify {r}: {:.2} s", t.elapsed().as_secs_f64());
    }

    // The policy users put into /etc/containers (README): our key, for every repository of the
    // registry, under the name signed for; signatures as registry attachments.
    let policy = tmp.path().join("policy.json");
    let public_s = public.display().to_string();
    fs::write(
        &policy,
        serde_json::json!({
            "default": [{ "type": "reject" }],
            "transports": { "docker": { reg.addr.as_str(): [{
                "type": "sigstoreSigned",
                "keyPath": public_s,
                "signedIdentity": { "type": "matchRepoDigestOrExact" },
            }] } },
        })
        .to_string(),
    )
    .unwrap();
    let registries_d = tmp.path().join("registries.d");
    fs::create_dir_all(&registries_d).unwrap();
    fs::write(
        registries_d.join("etcd.yaml"),
        format!("docker:\n  {}:\n    use-sigstore-attachments: true\n", reg.addr),
    )
    .unwrap();
    let pulled = tmp.path().join("pulled");
    let refused = |reference: &str, why: &str| {
        let out = policy_pull(&policy, &registries_d, reference, &pulled);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{reference} was accepted");
        assert!(err.contains(why), "{reference}: expected {why:?}:\n{err}");
        eprintln!("refused {reference}: {}", err.trim().lines().last().unwrap_or_default());
    };
    for r in [reference.to_string(), format!("{repo}@{}", arch_digests[0])] {
        let t = Instant::now();
        let out = policy_pull(&policy, &registries_d, &r, &pulled);
        assert!(out.status.success(), "{r} under the policy: {}", String::from_utf8_lossy(&out.stderr));
        eprintln!("policy accepts {r} ({:.2} s)", t.elapsed().as_secs_f64());
    }
    // Re-tagged in the same repository: the signature is there, but for another name.
    let retagged = format!("{repo}:retagged");
    ok(Command::new("skopeo")
        .args(["copy", "--all", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("docker://{retagged}")));
    refused(&retagged, "Signature for identity");

    // Refused: an image nobody signed, an image signed by another key, a manifest altered
    // after signing (pushed over the signed tag).
    let unsigned = format!("{}/unsigned", reg.addr);
    assert!(publish(&unsigned, &images).status.success());
    let version = reference.rsplit_once(':').unwrap().1;
    let v = cosign_verify(&public, &format!("{unsigned}:{version}"));
    assert!(!v.status.success());
    assert!(String::from_utf8_lossy(&v.stderr).contains("no signatures found"), "{v:?}");
    refused(&format!("{unsigned}:{version}"), "A signature was required, but no signature exists");

    let other_keys = tmp.path().join("other-keys");
    assert!(keygen(&other_keys, "other").status.success());
    let other = format!("{}/other", reg.addr);
    // This one takes its key from the environment, as the release workflow does with a secret.
    let out = run(Command::new(XTASK)
        .args(["publish", "--insecure", "--source", "distro", "--registry", &other, "--sign-key", "env:OTHER_KEY"])
        .arg("--out")
        .arg(&images)
        .env("XTASK_NO_OFFICIAL", "1")
        .env("OTHER_KEY", fs::read_to_string(other_keys.join("cosign.key")).unwrap())
        .env("XTASK_SIGN_PASSPHRASE", "other"));
    assert!(out.status.success(), "{out:?}");
    let v = cosign_verify(&public, &format!("{other}:{version}"));
    assert!(!v.status.success());
    assert!(String::from_utf8_lossy(&v.stderr).contains("no matching signatures"), "{v:?}");
    let v = cosign_verify(&other_keys.join("cosign.pub"), &format!("{other}:{version}"));
    assert!(v.status.success(), "the other key verifies its own image: {v:?}");
    refused(&format!("{other}:{version}"), "cryptographic signature verification failed");

    // The first architecture's manifest with one annotation added, pushed over the signed tag.
    let first = &arch_digests[0];
    let manifest = ok(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{repo}@{first}")));
    let mut m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    m["annotations"] = serde_json::json!({ "altered": "yes" });
    let altered = serde_json::to_vec(&m).unwrap();
    let url = format!("http://{}/v2/{}/manifests/{version}", reg.addr, repo.split_once('/').unwrap().1);
    ureq::put(&url).header("Content-Type", "application/vnd.oci.image.manifest.v1+json").send(&altered[..]).unwrap();
    let v = cosign_verify(&public, reference);
    assert!(!v.status.success(), "an altered manifest verified: {v:?}");
    assert!(String::from_utf8_lossy(&v.stderr).contains("no signatures found"), "{v:?}");
    refused(reference, "A signature was required, but no signature exists");

    // A wrong passphrase is said before anything is pushed.
    let out = run(Command::new(XTASK)
        .args([
            "publish",
            "--insecure",
            "--source",
            "distro",
            "--registry",
            &format!("{}/never", reg.addr),
            "--sign-key",
        ])
        .arg(&key)
        .arg("--out")
        .arg(&images)
        .env("XTASK_NO_OFFICIAL", "1")
        .env("XTASK_SIGN_PASSPHRASE", "wrong"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"), "{out:?}");
    let tags = ureq::get(&format!("http://{}/v2/never/tags/list", reg.addr)).call();
    assert!(tags.is_err(), "nothing was pushed to never/");
}
