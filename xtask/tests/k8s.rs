//! `cargo xtask k8s` end to end: the real binary renders the tutorial's cluster (static pods and
//! StatefulSet), `--validate` checks them against two Kubernetes versions' OpenAPI schemas with
//! the pinned kubernetes-validate, offline; a broken manifest must fail that same check. The
//! static pods must carry exactly the flags of the host bundle (`render`), the output must be
//! reproducible, and the StatefulSet's names must agree with its certificates (read by openssl)
//! and with each other. `smoke --engine kube` runs the static pods in podman: here, and not in
//! tests/smoke.rs, whose one binary of clusters taking turns is the suite's longest (840 s of a
//! 16.5-minute fresh-clone run): beside it, this cluster of its own (`smoke-kube`, 10.89.74.0/24)
//! costs the suite no wall time.

mod common;
use common::{ok, smoke_cluster, xtask_fails as fails, xtask_ok};

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const IMAGE: &str = "registry.example.org/etcd@sha256:0e86d4693efc1f9d29cc5bfca948d9c2eb57d6d8d8528a99920a30ba111eccaa";

fn render_k8s(tmp: &Path, out: &str, validate: bool) -> (PathBuf, String) {
    let cluster = common::root().join("clusters/tutorial.toml");
    let out = tmp.join(out);
    let pki = tmp.join("pki");
    let mut args = vec![
        "k8s",
        "--cluster",
        cluster.to_str().unwrap(),
        "--pki",
        pki.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--image",
        IMAGE,
        "--arch",
        "amd64",
    ];
    if validate {
        args.push("--validate");
    }
    let stdout = xtask_ok(&args);
    (out, stdout)
}

/// Every file under `dir` with its bytes and mode, by relative path.
fn tree(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    common::files_under(dir)
        .into_iter()
        .map(|(rel, p)| (rel, (fs::read(&p).unwrap(), fs::metadata(&p).unwrap().permissions().mode() & 0o7777)))
        .collect()
}

fn docs(path: &Path) -> Vec<serde_json::Value> {
    let text = fs::read_to_string(path).unwrap();
    text.split("\n---\n").map(|d| serde_yaml_ng::from_str(d).unwrap()).collect()
}

fn of_kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[test]
fn static_pods_carry_the_host_bundles_flags_validate_and_reproduce() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, stdout) = render_k8s(tmp.path(), "a", true);
    assert!(stdout.contains("5 manifest file(s) valid for Kubernetes 1.35.0 and 1.37.0"), "{stdout}");

    // One source of truth: the static pod's flags are the host bundle's etcd.conf, flag by flag.
    let bundles = tmp.path().join("render");
    xtask_ok(&[
        "render",
        "--cluster",
        common::root().join("clusters/tutorial.toml").to_str().unwrap(),
        "--pki",
        tmp.path().join("pki").to_str().unwrap(),
        "--out",
        bundles.to_str().unwrap(),
        "--arch",
        "amd64",
    ]);
    for node in ["master1", "master2", "master3"] {
        let pod = &docs(&out.join(node).join("etc/kubernetes/manifests/etcd.yaml"))[0];
        let conf = fs::read_to_string(bundles.join(node).join("etc/etcd/etcd.conf")).unwrap();
        let mut want = Vec::new();
        let mut want_env = Vec::new();
        for line in conf.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let (k, v) = line.split_once('=').unwrap();
            match k.strip_prefix("ETCD_") {
                Some(rest) => want.push(format!("--{}={v}", rest.to_lowercase().replace('_', "-"))),
                None => want_env.push((k.to_string(), v.to_string())),
            }
        }
        want.sort();
        let c = &pod["spec"]["containers"][0];
        let mut args = strings(&c["args"]);
        args.sort();
        assert_eq!(args, want, "{node}");
        let env: Vec<(String, String)> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(env, want_env, "{node}: GOMAXPROCS of the medium preset");
        // The hardening the issue asks for, as Kubernetes reads it.
        let sc = &pod["spec"]["securityContext"];
        assert_eq!((sc["runAsUser"].as_u64(), sc["runAsGroup"].as_u64()), (Some(10001), Some(10001)));
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        let csc = &c["securityContext"];
        assert_eq!(csc["readOnlyRootFilesystem"], true);
        assert_eq!(csc["allowPrivilegeEscalation"], false);
        assert_eq!(strings(&csc["capabilities"]["drop"]), ["ALL"]);
        assert_eq!(pod["spec"]["priorityClassName"], "system-node-critical");
        assert_eq!(pod["spec"]["hostNetwork"], true);
        assert_eq!(c["image"], IMAGE);
        for probe in ["livenessProbe", "startupProbe"] {
            let get = &c[probe]["httpGet"];
            assert_eq!((get["host"].as_str(), get["port"].as_u64()), (Some("127.0.0.1"), Some(2381)), "{probe}");
            assert_eq!(get["path"], "/health", "3.4's health path");
        }
        // Probes on loopback over http; Prometheus on the node's address over mutual TLS
        // (the description's [monitoring]).
        assert!(
            want.iter().any(|f| f.starts_with("--listen-metrics-urls=http://127.0.0.1:2381,https://10.0.1.")
                && f.ends_with(":2381")),
            "{want:?}"
        );
        // Requests and limits from the medium preset (4 CPUs, 4 GiB quota).
        assert_eq!(c["resources"]["requests"]["cpu"], "4");
        assert_eq!(c["resources"]["requests"]["memory"], "4Gi");
        assert_eq!(c["resources"]["limits"]["memory"], "8Gi");
        // hostPath volumes at the host bundle's paths.
        let paths: Vec<&str> = pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["hostPath"]["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["/var/lib/etcd", "/etc/etcd/pki"]);
        // The node's tarball: certificates root-owned, keys 0400, tmpfiles hands them to gid 10001.
        let tarball = out.join(format!("{node}.tar"));
        let tmpfiles = String::from_utf8(common::tar_member(&tarball, "usr/lib/tmpfiles.d/etcd.conf")).unwrap();
        assert!(tmpfiles.contains("d /var/lib/etcd 0700 10001 10001 -"), "{tmpfiles}");
        assert!(tmpfiles.contains("z /etc/etcd/pki/server.key 0440 root 10001 -"), "{tmpfiles}");
        let mut ar = tar::Archive::new(fs::File::open(&tarball).unwrap());
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            if e.path().unwrap().to_string_lossy().ends_with(".key") {
                assert_eq!(h.mode().unwrap() & 0o777, 0o400);
            }
        }
    }

    // Same inputs, same bytes.
    let (again, _) = render_k8s(tmp.path(), "b", false);
    let (first, second) = (tree(&out), tree(&again));
    assert_eq!(first.keys().collect::<Vec<_>>(), second.keys().collect::<Vec<_>>());
    for (path, content) in &first {
        assert!(second[path] == *content, "{path} differs between two renders");
    }
    assert_eq!(first["statefulset/secret.yaml"].1, 0o600, "the Secret holds keys");
}

#[test]
fn a_broken_manifest_fails_validation_naming_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, _) = render_k8s(tmp.path(), "a", false);
    let good = out.join("statefulset/etcd.yaml");
    let versions: Vec<String> = xtask::k8s::VALIDATE_VERSIONS.iter().map(|s| s.to_string()).collect();
    xtask::k8s::validate(std::slice::from_ref(&good), &versions).expect("the rendered StatefulSet is valid");
    for (what, from, to) in [
        ("an unknown field", "runAsUser:", "runAsUsr:"),
        ("a wrong type", "replicas: 3", "replicas: three"),
        ("a misspelt kind", "kind: StatefulSet", "kind: StatefulSets"),
    ] {
        let text = fs::read_to_string(&good).unwrap();
        assert!(text.contains(from), "{from}");
        let broken = tmp.path().join(format!("broken-{}.yaml", what.replace(' ', "-")));
        fs::write(&broken, text.replacen(from, to, 1)).unwrap();
        let err = format!("{:#}", xtask::k8s::validate(std::slice::from_ref(&broken), &versions).unwrap_err());
        assert!(err.contains(broken.to_str().unwrap()), "{what}: {err}");
        assert!(err.contains("1 of 1 manifest"), "{what}: {err}");
    }
    let static_pod = out.join("master1/etc/kubernetes/manifests/etcd.yaml");
    let text = fs::read_to_string(&static_pod).unwrap();
    let broken = tmp.path().join("broken-pod.yaml");
    fs::write(&broken, text.replacen("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: yes please", 1)).unwrap();
    let err = format!("{:#}", xtask::k8s::validate(&[broken], &versions).unwrap_err());
    assert!(err.contains("readOnlyRootFilesystem"), "{err}");
}

#[test]
fn the_statefulsets_names_agree_with_its_certificates_and_each_other() {
    common::require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let (out, _) = render_k8s(tmp.path(), "a", false);
    let docs = docs(&out.join("statefulset/etcd.yaml"));
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Service", "Service", "PodDisruptionBudget", "NetworkPolicy", "StatefulSet"]);
    let sts = of_kind(&docs, "StatefulSet");
    assert_eq!(sts["metadata"]["namespace"], "etcd");
    assert_eq!(sts["spec"]["serviceName"], "tutorial-peer");
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(docs[0]["metadata"]["name"], "tutorial-peer");
    assert_eq!(docs[0]["spec"]["clusterIP"], "None");
    assert_eq!(docs[0]["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(of_kind(&docs, "PodDisruptionBudget")["spec"]["maxUnavailable"], 1);
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["fsGroup"], 10001);
    assert_eq!(pod["enableServiceLinks"], false);
    assert_eq!(
        pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"],
        "kubernetes.io/hostname"
    );
    let args = strings(&pod["containers"][0]["args"]);
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("no --{name}"))
            .to_string()
    };
    // The tutorial's [compaction], as for the hosts and static pods.
    assert_eq!((flag("auto-compaction-mode"), flag("auto-compaction-retention")), ("periodic".into(), "1h".into()));
    // Peer URLs consistent across members: the initial cluster lists, for each pod, exactly the
    // URL that pod advertises, and each is a DNS name of that member's certificates.
    let initial: Vec<(String, String)> = flag("initial-cluster")
        .split(',')
        .map(|m| {
            let (n, u) = m.split_once('=').unwrap();
            (n.to_string(), u.to_string())
        })
        .collect();
    assert_eq!(initial.len(), 3);
    let secret = &docs_secret(&out)["data"];
    let pki = tmp.path().join("pki");
    for (i, (name, url)) in initial.iter().enumerate() {
        assert_eq!(name, &format!("tutorial-{i}"));
        assert_eq!(&flag("initial-advertise-peer-urls").replace("$(POD_NAME)", name), url);
        assert_eq!(flag("name").replace("$(POD_NAME)", name), *name);
        let host = url.trim_start_matches("https://").trim_end_matches(":2380");
        assert_eq!(host, format!("tutorial-{i}.tutorial-peer.etcd.svc.cluster.local"));
        let client_host = flag("advertise-client-urls").replace("$(POD_NAME)", name);
        assert_eq!(client_host, format!("https://{host}:2379"));
        // The Secret carries member i's own files, as the PKI issued them for node i.
        let node = ["master1", "master2", "master3"][i];
        for file in ["server.crt", "peer.crt", "server.key", "peer.key", "ca.crt", "peer-ca.crt"] {
            use base64::Engine as _;
            let data = base64::engine::general_purpose::STANDARD
                .decode(secret[format!("{name}.{file}")].as_str().unwrap())
                .unwrap();
            assert_eq!(data, fs::read(pki.join("nodes").join(node).join(file)).unwrap(), "{name}.{file}");
        }
        for cert in ["server.crt", "peer.crt"] {
            let path = pki.join("nodes").join(node).join(cert);
            let sans = ok(Command::new("openssl").args(["x509", "-noout", "-ext", "subjectAltName", "-in"]).arg(&path));
            for want in
                [host.to_string(), "tutorial.etcd.svc.cluster.local".to_string(), "tutorial.etcd.svc".to_string()]
            {
                assert!(sans.contains(&format!("DNS:{want}")), "{node} {cert}: {want} missing: {sans}");
            }
            for other in (0..3).filter(|j| *j != i) {
                assert!(!sans.contains(&format!("tutorial-{other}.")), "{node} {cert} names another pod: {sans}");
            }
        }
    }
    // Each pod mounts its own files under its name, where its flags look.
    let items = pod["volumes"][0]["secret"]["items"].as_array().unwrap();
    // Six TLS files and the two CRLs (`pki revoke`) per pod.
    assert_eq!(items.len(), 24);
    assert!(items.iter().any(|it| it["key"] == "tutorial-1.crl.pem" && it["path"] == "tutorial-1/crl.pem"));
    assert_eq!(flag("peer-crl-file"), "/etc/etcd/pki/$(POD_NAME)/peer-crl.pem");
    assert!(items.iter().any(|it| it["key"] == "tutorial-2.server.key" && it["path"] == "tutorial-2/server.key"));
    assert_eq!(flag("key-file"), "/etc/etcd/pki/$(POD_NAME)/server.key");
    let env = pod["containers"][0]["env"].as_array().unwrap();
    assert_eq!(env[0]["name"], "POD_NAME", "defined before the flags that expand it");
    assert_eq!(env[1]["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");

    // Metrics: plain http on the pod's address for the kubelet's probes, which the
    // NetworkPolicy leaves to the pod's node (every port but that one is listed); mutual TLS on
    // a port of its own for Prometheus ([monitoring] of the tutorial's file), whose scrape
    // configuration names each pod by the DNS name its certificate carries.
    assert_eq!(flag("listen-metrics-urls"), "http://$(POD_IP):2381,https://$(POD_IP):2382");
    let ports: Vec<(String, u64)> = pod["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["containerPort"].as_u64().unwrap()))
        .collect();
    assert!(ports.contains(&("metrics".into(), 2381)) && ports.contains(&("metrics-tls".into(), 2382)), "{ports:?}");
    for probe in ["livenessProbe", "startupProbe"] {
        assert_eq!(pod["containers"][0][probe]["httpGet"]["port"], 2381, "{probe}");
    }
    let policy = &of_kind(&docs, "NetworkPolicy")["spec"];
    assert_eq!(policy["podSelector"], sts["spec"]["selector"]);
    assert_eq!(strings(&policy["policyTypes"]), ["Ingress"]);
    assert_eq!(policy["ingress"].as_array().unwrap().len(), 1);
    assert!(policy["ingress"][0].get("from").is_none(), "the TLS ports are open to every source");
    let open: Vec<String> =
        policy["ingress"][0]["ports"].as_array().unwrap().iter().map(|p| p["port"].to_string()).collect();
    assert_eq!(open, ["\"client\"", "\"peer\"", "\"metrics-tls\""]);
    let scrape = fs::read_to_string(out.join("statefulset/monitoring/prometheus.yml")).unwrap();
    for i in 0..3 {
        let host = format!("tutorial-{i}.tutorial-peer.etcd.svc.cluster.local");
        assert!(scrape.contains(&format!("- {host}:2382")) && scrape.contains(&format!("- {host}:2379")), "{scrape}");
    }
    assert!(out.join("statefulset/monitoring/etcd-tutorial/client.key").is_file());
    // The static pods run with the host bundles' flags: the same scrape configuration as render's.
    let hosts = fs::read_to_string(out.join("monitoring/prometheus.yml")).unwrap();
    assert!(hosts.contains("- 10.0.1.204:2381"), "{hosts}");
}

fn docs_secret(out: &Path) -> serde_json::Value {
    let d = docs(&out.join("statefulset/secret.yaml"));
    assert_eq!(d[0]["kind"], "Secret");
    d[0].clone()
}

#[test]
fn without_a_kubernetes_section_only_static_pods_are_rendered_and_bad_input_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let smoke = common::root().join("clusters/smoke.toml");
    let pki = tmp.path().join("pki");
    let args = ["k8s", "--cluster", smoke.to_str().unwrap(), "--pki", pki.to_str().unwrap(), "--out"];
    let mut a = args.to_vec();
    a.push(out.to_str().unwrap());
    let output = common::xtask(&a);
    assert!(output.status.success(), "{}", common::text(&output));
    assert!(common::text(&output).contains("no [kubernetes] section"), "{}", common::text(&output));
    assert!(out.join("etcd1/etc/kubernetes/manifests/etcd.yaml").is_file());
    assert!(!out.join("statefulset").exists());

    let bad = tmp.path().join("bad.toml");
    let text = fs::read_to_string(common::root().join("clusters/tutorial.toml")).unwrap();
    fs::write(&bad, text.replace("namespace = \"etcd\"", "namespace = \"Etcd_NS\"")).unwrap();
    let mut a = vec!["k8s", "--cluster", bad.to_str().unwrap(), "--out"];
    let out2 = tmp.path().join("out2");
    a.push(out2.to_str().unwrap());
    let err = fails(&a);
    assert!(err.contains("bad.toml") && err.contains("kubernetes.namespace"), "{err}");
    assert!(!out2.exists(), "nothing half-written");
}

#[test]
fn the_kube_engine_plays_the_rendered_static_pods() {
    let tmp = tempfile::tempdir().unwrap();
    common::build_etcd_349(&[common::host_arch()]);
    let cluster = smoke_cluster::cluster_of_its_own(tmp.path(), "smoke-kube", 74);

    // The static pods of `cargo xtask k8s`, run by podman's Kubernetes engine: the basic checks
    // pass against them, and the played copies differ from the rendered manifests only where the
    // report says.
    let kube_dir = tmp.path().join("kube");
    let out = smoke_cluster::xtask()
        .args(["smoke", "--engine", "kube", "--source", "build", "--out", kube_dir.to_str().unwrap()])
        .arg("--cluster")
        .arg(&cluster)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "smoke --engine kube failed:\n{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kube_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["engine"], "kube");
    assert_eq!(report["image"], "localhost/etcd:3.4.9", "{report:#}");
    assert_eq!(report["kube_play_adaptations"].as_array().unwrap().len(), 6);
    let checks = report["checks"].as_array().unwrap();
    // The basic checks, compaction and defragmentation among them (the static pods' flags).
    assert_eq!(checks.len(), 15, "{report:#}");
    assert!(checks.iter().all(|c| c["outcome"] == "PASS"), "{report:#}");
    for node in ["etcd1", "etcd2", "etcd3"] {
        let read = |p: std::path::PathBuf| -> serde_json::Value {
            serde_yaml_ng::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
        };
        let rendered = read(kube_dir.join("basic/k8s").join(node).join("etc/kubernetes/manifests/etcd.yaml"));
        let played = read(kube_dir.join("basic/kube-play").join(format!("{node}.yaml")));
        let (r, p) = (&rendered["spec"]["containers"][0], &played["spec"]["containers"][0]);
        for field in ["image", "command", "args", "env", "securityContext", "resources"] {
            assert_eq!(r[field], p[field], "{node}: {field}");
        }
        assert!(r["image"].as_str().unwrap().starts_with("localhost/etcd:3.4.9@sha256:"), "by digest");
        assert_eq!(rendered["spec"]["securityContext"], played["spec"]["securityContext"], "{node}");
    }
    smoke_cluster::nothing_left("smoke-kube");
}
