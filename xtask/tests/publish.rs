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
