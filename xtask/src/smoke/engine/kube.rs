//! `cargo xtask smoke --engine kube`: the static pods `cargo xtask k8s` renders, run by podman's
//! Kubernetes engine (`podman kube play`) instead of `podman run`, then the basic checks.
//!
//! podman is not a kubelet, and three "control-plane hosts" share this machine, so each node's
//! manifest is played from a copy with [`ADAPTATIONS`] applied; the rendered manifest itself
//! stays valid Kubernetes (the k8s tests validate it) and everything else in it (image by digest,
//! command, every flag, user and group, read-only root, dropped capabilities, no privilege
//! escalation, seccomp, resources, hostPath volumes) is played as written.
//!
//! In: a prepared [`Cluster`], the cluster description and the image by digest. Out: the
//! rendered static pods in `k8s/`, the played copies in `kube-play/`, three pods running.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::cluster::{stable_mac, Cluster, CLIENT_MOUNT};
use crate::k8s::{self, STATIC_POD_PATH};
use crate::util::{each_in_thread, write_atomic};

/// How the played copy differs from the rendered static pod, and why.
pub const ADAPTATIONS: [&str; 6] = [
    "metadata.name etcd -> xtask-smoke-<cluster>-<node>: the kubelet suffixes the node name; three pods share one \
     podman",
    "hostNetwork dropped: each pod gets its node's address on the test's podman network instead \
     (kube play --network --ip, and --mac-address so a restarted pod keeps its MAC)",
    "hostPath paths -> this run's directories (data dir 0700 and certificates owned by the etcd uid)",
    "livenessProbe and startupProbe dropped: podman 4.3 turns an httpGet probe into a curl healthcheck run \
     inside the container, and the image has neither curl nor a shell",
    "ports 2379 and 2380 published on 127.0.0.1 (hostPort, hostIP), and the operator's client certificate \
     mounted: the checks reach members as with `podman run`",
    "podman's host adaptation (OCI runtime, ulimits) through CONTAINERS_CONF: kube play takes no --runtime or --ulimit",
];

/// Where a node's volumes are on this machine, and where the checks reach it.
pub struct Played<'a> {
    pub pod: &'a str,
    /// The cluster's name: the value of the resources' label.
    pub cluster: &'a str,
    pub data: &'a Path,
    pub pki: &'a Path,
    pub client: &'a Path,
    pub client_port: u16,
    pub peer_port: u16,
}

/// The rendered static pod `pod`, adapted for `podman kube play` ([`ADAPTATIONS`]).
pub fn adapt(mut pod: Value, to: &Played<'_>) -> Result<Value> {
    pod["metadata"]["name"] = json!(to.pod);
    pod["metadata"]["labels"][super::podman::LABEL_KEY] = json!(to.cluster);
    let spec = pod["spec"].as_object_mut().context("the static pod has no spec")?;
    spec.remove("hostNetwork");
    let path_of = |name: &str| match name {
        "etcd-data" => Ok(to.data),
        "etcd-certs" => Ok(to.pki),
        other => bail!("the static pod has a volume {other:?} this test does not know"),
    };
    let volumes = spec.get_mut("volumes").and_then(Value::as_array_mut).context("the static pod has no volumes")?;
    for v in volumes.iter_mut() {
        let name = v["name"].as_str().unwrap_or_default().to_string();
        v["hostPath"]["path"] = json!(path_of(&name)?.display().to_string());
        v["hostPath"]["type"] = json!("Directory");
    }
    volumes.push(
        json!({ "name": "client", "hostPath": { "path": to.client.display().to_string(), "type": "Directory" } }),
    );
    let containers =
        spec.get_mut("containers").and_then(Value::as_array_mut).context("the static pod has no containers")?;
    let etcd = containers.first_mut().context("the static pod has no container")?;
    let c = etcd.as_object_mut().context("the container is not an object")?;
    c.remove("livenessProbe");
    c.remove("startupProbe");
    c.insert(
        "ports".into(),
        json!([
            { "containerPort": 2379, "hostPort": to.client_port, "hostIP": "127.0.0.1" },
            { "containerPort": 2380, "hostPort": to.peer_port, "hostIP": "127.0.0.1" },
        ]),
    );
    c.get_mut("volumeMounts")
        .and_then(Value::as_array_mut)
        .context("the container has no volumeMounts")?
        .push(json!({ "name": "client", "mountPath": CLIENT_MOUNT, "readOnly": true }));
    Ok(pod)
}

impl Cluster {
    /// Renders the static pods with `cargo xtask k8s` (this run's PKI, the image by digest).
    pub(crate) fn render_static_pods(&mut self, cluster: &Path, image: &str) -> Result<()> {
        let out = self.out.join("k8s");
        let args = k8s::K8s {
            input: crate::render::ClusterArgs {
                cluster: cluster.to_path_buf(),
                pki: Some(self.pki.root.clone()),
                tuning_presets: None,
                arch: None,
                etcd_version: Some(self.etcd_version.clone()),
            },
            out: Some(out.clone()),
            image: Some(image.to_string()),
            validate: false,
            kube_version: Vec::new(),
        };
        k8s::render(&args).context("cannot render the static pods")?;
        for line in ADAPTATIONS {
            eprintln!("smoke: kube play adaptation: {line}");
        }
        self.kube_manifests = Some(out);
        Ok(())
    }

    /// Plays every node's adapted static pod, all at once, on the run's network.
    pub(crate) fn play_all(&mut self) -> Result<()> {
        let rendered = self.kube_manifests.clone().context("the static pods were not rendered")?;
        let conf = self.out.join("containers.conf");
        write_atomic(&conf, crate::image::podman::containers_conf(&self.run_args).as_bytes(), 0o644)?;
        let played_dir = self.out.join("kube-play");
        fs::create_dir_all(&played_dir).with_context(|| format!("cannot create {}", played_dir.display()))?;
        let mut plays = Vec::new();
        for i in 0..self.nodes.len() {
            let n = self.nodes[i].clone();
            let data = self.out.join("data").join(&n.spec.name);
            if data.exists() {
                fs::remove_dir_all(&data).with_context(|| format!("cannot clear {}", data.display()))?;
            }
            // What the static pod's tmpfiles.d rule does on a host.
            fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
            std::os::unix::fs::chown(&data, Some(self.uid), Some(self.gid))
                .with_context(|| format!("cannot chown {}", data.display()))?;
            fs::set_permissions(&data, fs::Permissions::from_mode(0o700))?;
            let manifest = rendered.join(&n.spec.name).join(STATIC_POD_PATH);
            let text = fs::read_to_string(&manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
            let pod: Value = serde_yaml_ng::from_str(&text)
                .with_context(|| format!("{}: not a YAML manifest", manifest.display()))?;
            let pod_name = super::podman::pod_name(&self.spec.name, &n.spec.name);
            let played = adapt(
                pod,
                &Played {
                    pod: &pod_name,
                    cluster: &self.spec.name,
                    data: &data,
                    pki: &self.mounts.join(&n.spec.name),
                    client: &self.client,
                    client_port: n.client_port,
                    peer_port: n.peer_port,
                },
            )?;
            let file = played_dir.join(format!("{}.yaml", n.spec.name));
            write_atomic(&file, k8s::manifests::to_yaml("", &[played])?.as_bytes(), 0o644)?;
            let ip = crate::render::config::primary_ip(&n.spec)?;
            plays.push((pod_name, file, ip));
            self.nodes[i].host_data = Some(data);
        }
        let network = self.network.clone();
        let results = each_in_thread(&plays, "podman kube play", |_, (_, file, ip)| {
            let args: Vec<String> = vec![
                "kube".into(),
                "play".into(),
                "--network".into(),
                network.clone(),
                "--ip".into(),
                ip.to_string(),
                "--mac-address".into(),
                stable_mac(ip),
                file.display().to_string(),
            ];
            kube_play(&args, &conf)
        });
        for ((pod, _, _), result) in plays.into_iter().zip(results) {
            // Registered even on failure: a half-created pod is removed too.
            self.res.pods.push(pod.clone());
            result.with_context(|| format!("cannot play the pod {pod}"))?;
        }
        Ok(())
    }
}

/// `podman kube play` with the host adaptation in `conf`.
fn kube_play(args: &[String], conf: &PathBuf) -> Result<String> {
    crate::util::stdout_of(Command::new("podman").args(args).env("CONTAINERS_CONF", conf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_played_copy_changes_only_what_podman_needs() {
        let pod = json!({
            "metadata": { "name": "etcd", "namespace": "kube-system", "labels": { "component": "etcd" } },
            "spec": {
                "hostNetwork": true,
                "containers": [{
                    "name": "etcd", "args": ["--name=a"], "livenessProbe": {}, "startupProbe": {},
                    "volumeMounts": [{ "name": "etcd-data", "mountPath": "/var/lib/etcd" }],
                }],
                "volumes": [
                    { "name": "etcd-data", "hostPath": { "path": "/var/lib/etcd", "type": "DirectoryOrCreate" } },
                    { "name": "etcd-certs", "hostPath": { "path": "/etc/etcd/pki", "type": "Directory" } },
                ],
            },
        });
        let played = adapt(
            pod.clone(),
            &Played {
                pod: "xtask-smoke-a",
                cluster: "c",
                data: Path::new("/d"),
                pki: Path::new("/p"),
                client: Path::new("/c"),
                client_port: 1,
                peer_port: 2,
            },
        )
        .unwrap();
        assert_eq!(played["metadata"]["name"], "xtask-smoke-a");
        assert_eq!(played["metadata"]["labels"]["xtask.smoke"], "c");
        assert!(played["spec"].get("hostNetwork").is_none());
        let c = &played["spec"]["containers"][0];
        assert!(c.get("livenessProbe").is_none() && c.get("startupProbe").is_none());
        assert_eq!(c["args"], pod["spec"]["containers"][0]["args"]);
        assert_eq!(played["spec"]["volumes"][0]["hostPath"]["path"], "/d");
        assert_eq!(played["spec"]["volumes"][1]["hostPath"]["path"], "/p");
        assert_eq!(c["ports"][0]["hostPort"], 1);
        let mut unknown = pod;
        unknown["spec"]["volumes"][0]["name"] = json!("other");
        let err = adapt(
            unknown,
            &Played {
                pod: "p",
                cluster: "c",
                data: Path::new("/d"),
                pki: Path::new("/p"),
                client: Path::new("/c"),
                client_port: 1,
                peer_port: 2,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("other"), "{err}");
    }
}
