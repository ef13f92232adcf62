//! The Kubernetes objects of a cluster, as JSON values (serialised to YAML by the caller).
//! In: the cluster description, its PKI facts, the tuning preset, the image. Out: a static pod
//! per node (kubeadm's stacked etcd, but non-root with a separate peer CA) and a StatefulSet
//! with its Services, PodDisruptionBudget, NetworkPolicy and certificate Secret.
//!
//! Every etcd flag comes from [`config::member_env`] (the code behind host bundles) plus the
//! tuning preset; nothing here decides how etcd runs, only how Kubernetes runs it.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};

use crate::pki::cluster::{ClusterSpec, KubeNames, NodeSpec};
use crate::pki::layout::PkiLayout;
use crate::render::config::{
    self, Addressing, PkiFacts, TargetPaths, CLIENT_PORT, METRICS_PORT, METRICS_TLS_PORT_POD, PEER_PORT, TLS_FILES,
};
use crate::render::tuning::Preset;

/// etcd's default backend quota (2 GiB), used when no tuning preset is chosen.
const DEFAULT_QUOTA: u64 = 2 << 30;

/// What every object of a cluster shares.
pub struct Inputs<'a> {
    pub spec: &'a ClusterSpec,
    pub facts: &'a PkiFacts,
    /// The chosen preset and its name.
    pub tuning: Option<(&'a str, &'a Preset)>,
    /// What etcd needs to start on the nodes' architecture (`ETCD_UNSUPPORTED_ARCH`), or nothing.
    pub runtime_env: &'a BTreeMap<String, String>,
    /// The etcd version the image holds: its release line decides flags and probe paths.
    pub version: &'a str,
    pub image: &'a str,
    /// The image's etcd user and group.
    pub uid: u32,
    pub gid: u32,
}

/// The labels every object carries, and the selector of the StatefulSet's pods.
fn labels(spec: &ClusterSpec) -> Value {
    json!({ "app.kubernetes.io/name": "etcd", "app.kubernetes.io/instance": spec.name })
}

/// `4Gi`, `512Mi`, or bytes: a Kubernetes quantity.
pub fn quantity(bytes: u64) -> String {
    if bytes > 0 && bytes.is_multiple_of(1 << 30) {
        format!("{}Gi", bytes >> 30)
    } else if bytes > 0 && bytes.is_multiple_of(1 << 20) {
        format!("{}Mi", bytes >> 20)
    } else {
        bytes.to_string()
    }
}

/// Requests and limits from the tuning preset: the CPUs it was sized for and its backend quota
/// (the database is memory-mapped, so its size is what stays resident), limited at twice that
/// for the raft log, snapshots and the Go heap. No CPU limit: throttling stalls heartbeats and
/// GOMAXPROCS already caps etcd. Without a preset, kubeadm's requests and no limits.
pub fn resources(tuning: Option<(&str, &Preset)>) -> Value {
    match tuning {
        Some((_, p)) => json!({
            "requests": { "cpu": p.gomaxprocs.to_string(), "memory": quantity(p.quota_backend_bytes) },
            "limits": { "memory": quantity(2 * p.quota_backend_bytes) },
        }),
        None => json!({ "requests": { "cpu": "100m", "memory": "100Mi" } }),
    }
}

/// The container's arguments and environment: every `ETCD_*` setting of `env` as a flag
/// (sorted), everything else (GOMAXPROCS, and `runtime_env`, which etcd reads only from the
/// environment) as variables after `first_env`.
fn args_and_env(
    env: &BTreeMap<String, String>,
    runtime_env: &BTreeMap<String, String>,
    first_env: Vec<Value>,
) -> (Vec<String>, Vec<Value>) {
    let mut args = Vec::new();
    let mut vars = first_env;
    for (k, v) in env {
        match config::flag_of(k) {
            Some(flag) if !runtime_env.contains_key(k) => args.push(format!("{flag}={v}")),
            _ => vars.push(json!({ "name": k, "value": v })),
        }
    }
    (args, vars)
}

/// The container-level hardening both kinds share.
fn container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": { "drop": ["ALL"] },
        "runAsNonRoot": true,
    })
}

/// kubeadm's probes of etcd, on the plain-http metrics listener: liveness every 10 s, 8
/// failures allowed; startup for up to 4 minutes (24 x 10 s).
fn probes(version: &str, host: Option<&str>) -> Result<(Value, Value)> {
    let health = config::release_line_settings(version)?.health;
    let get = |path: &str| {
        let mut g = json!({ "path": path, "port": METRICS_PORT, "scheme": "HTTP" });
        if let Some(h) = host {
            g["host"] = json!(h);
        }
        g
    };
    let liveness = json!({
        "httpGet": get(&health.liveness),
        "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 15, "failureThreshold": 8,
    });
    let startup = json!({
        "httpGet": get(&health.startup),
        "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 15, "failureThreshold": 24,
    });
    Ok((liveness, startup))
}

/// The environment of a member with the tuning preset.
fn with_tuning(mut env: BTreeMap<String, String>, inputs: &Inputs<'_>) -> BTreeMap<String, String> {
    if let Some((_, p)) = inputs.tuning {
        env.extend(p.env());
    }
    env.extend(inputs.runtime_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The static pod of `node`, for `/etc/kubernetes/manifests/etcd.yaml` on that host: host
/// network, the node's flags, hostPath volumes at the host bundle's paths.
pub fn static_pod(inputs: &Inputs<'_>, node: &NodeSpec) -> Result<Value> {
    let paths = TargetPaths::standard();
    let env = config::node_env(inputs.spec, node, inputs.facts, &paths, inputs.version)?;
    let advertise = env.get("ETCD_ADVERTISE_CLIENT_URLS").cloned().unwrap_or_default();
    let env = with_tuning(env, inputs);
    let (args, vars) = args_and_env(&env, inputs.runtime_env, Vec::new());
    let (liveness, startup) = probes(inputs.version, Some("127.0.0.1"))?;
    let mut container = json!({
        "name": "etcd",
        "image": inputs.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/usr/local/bin/etcd"],
        "args": args,
        "resources": resources(inputs.tuning),
        "securityContext": container_security(),
        "livenessProbe": liveness,
        "startupProbe": startup,
        "volumeMounts": [
            { "name": "etcd-data", "mountPath": paths.data_dir },
            { "name": "etcd-certs", "mountPath": paths.pki_dir, "readOnly": true },
        ],
    });
    if !vars.is_empty() {
        container["env"] = json!(vars);
    }
    let mut labels = labels(inputs.spec);
    labels["component"] = json!("etcd");
    labels["tier"] = json!("control-plane");
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "etcd",
            "namespace": "kube-system",
            "labels": labels,
            // What kubeadm records, so that its tooling finds the member's client URL.
            "annotations": { "kubeadm.kubernetes.io/etcd.advertise-client-urls": advertise },
        },
        "spec": {
            "hostNetwork": true,
            "priorityClassName": "system-node-critical",
            "enableServiceLinks": false,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": inputs.uid,
                "runAsGroup": inputs.gid,
                "seccompProfile": { "type": "RuntimeDefault" },
            },
            "containers": [container],
            "volumes": [
                { "name": "etcd-data", "hostPath": { "path": paths.data_dir, "type": "DirectoryOrCreate" } },
                { "name": "etcd-certs", "hostPath": { "path": paths.pki_dir, "type": "Directory" } },
            ],
        },
    }))
}

/// How member pods of the StatefulSet are addressed: by their names, which Kubernetes expands.
pub fn statefulset_addressing(spec: &ClusterSpec, k: &KubeNames) -> Addressing {
    Addressing {
        name: "$(POD_NAME)".into(),
        listen: "$(POD_IP)".into(),
        advertise: format!("$(POD_NAME).{}.{}.svc.{}", k.peer_service(), k.namespace, k.cluster_domain),
        loopback: "127.0.0.1".into(),
        // The kubelet probes the pod's address, not its loopback (the NetworkPolicy keeps
        // everyone but the pod's node out); Prometheus scrapes another port over mutual TLS.
        metrics: "$(POD_IP)".into(),
        metrics_tls: spec.monitoring.as_ref().map(|_| ("$(POD_IP)".to_string(), METRICS_TLS_PORT_POD)),
        initial_cluster: (0..spec.nodes.len()).map(|i| (k.pod(i), k.pod_fqdn(i))).collect(),
    }
}

/// Where a StatefulSet pod finds its data (a subdirectory etcd creates 0700 in the volume,
/// whose root belongs to fsGroup) and its own certificates in the Secret volume.
pub fn statefulset_paths() -> TargetPaths {
    TargetPaths { data_dir: "/var/lib/etcd/data".into(), pki_dir: "/etc/etcd/pki/$(POD_NAME)".into() }
}

/// The Secret's key of member `i`'s `file`.
fn secret_key(k: &KubeNames, i: usize, file: &str) -> String {
    format!("{}.{file}", k.pod(i))
}

/// The headless and client Services, the PodDisruptionBudget, the NetworkPolicy and the
/// StatefulSet.
pub fn statefulset(inputs: &Inputs<'_>, k: &KubeNames) -> Result<Vec<Value>> {
    let spec = inputs.spec;
    let labels = labels(spec);
    let meta = |name: String| json!({ "name": name, "namespace": k.namespace, "labels": labels });
    let env = config::member_env(
        &statefulset_addressing(spec, k),
        &spec.compaction,
        inputs.facts,
        &statefulset_paths(),
        inputs.version,
    )?;
    let env = with_tuning(env, inputs);
    let field = |name: &str, path: &str| json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": path } } });
    // Defined first: the flags refer to them as $(POD_NAME) and $(POD_IP).
    let pod_vars = vec![field("POD_NAME", "metadata.name"), field("POD_IP", "status.podIP")];
    let (args, vars) = args_and_env(&env, inputs.runtime_env, pod_vars);
    let (liveness, startup) = probes(inputs.version, None)?;
    let quota = inputs.tuning.map(|(_, p)| p.quota_backend_bytes).unwrap_or(DEFAULT_QUOTA);
    let items: Vec<Value> = (0..spec.nodes.len())
        .flat_map(|i| {
            TLS_FILES
                .iter()
                .map(move |(_, file)| json!({ "key": secret_key(k, i, file), "path": format!("{}/{file}", k.pod(i)) }))
        })
        .collect();
    let mut ports = vec![
        json!({ "name": "client", "containerPort": CLIENT_PORT }),
        json!({ "name": "peer", "containerPort": PEER_PORT }),
        json!({ "name": "metrics", "containerPort": METRICS_PORT }),
    ];
    if spec.monitoring.is_some() {
        ports.push(json!({ "name": "metrics-tls", "containerPort": METRICS_TLS_PORT_POD }));
    }
    // Open to all: the ports that want a certificate of the cluster's CAs. The plain-http
    // metrics port is not listed, so only the pod's own node (its kubelet's probes) reaches it:
    // Kubernetes always lets a node's traffic into its pods.
    let open: Vec<Value> = ports
        .iter()
        .filter(|p| p["name"] != "metrics")
        .map(|p| json!({ "protocol": "TCP", "port": p["name"] }))
        .collect();
    let container = json!({
        "name": "etcd",
        "image": inputs.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/usr/local/bin/etcd"],
        "args": args,
        "env": vars,
        "ports": ports,
        "resources": resources(inputs.tuning),
        "securityContext": container_security(),
        "livenessProbe": liveness,
        "startupProbe": startup,
        "volumeMounts": [
            { "name": "data", "mountPath": "/var/lib/etcd" },
            { "name": "certs", "mountPath": "/etc/etcd/pki", "readOnly": true },
        ],
    });
    let peer_service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(k.peer_service()),
        "spec": {
            "clusterIP": "None",
            // Members must find each other before any of them is ready.
            "publishNotReadyAddresses": true,
            "selector": labels,
            "ports": [
                { "name": "peer", "port": PEER_PORT, "targetPort": "peer" },
                { "name": "client", "port": CLIENT_PORT, "targetPort": "client" },
            ],
        },
    });
    let client_service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(k.name.clone()),
        "spec": {
            "selector": labels,
            "ports": [{ "name": "client", "port": CLIENT_PORT, "targetPort": "client" }],
        },
    });
    let pdb = json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(k.name.clone()),
        "spec": { "maxUnavailable": 1, "selector": { "matchLabels": labels } },
    });
    let policy = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(k.name.clone()),
        "spec": {
            "podSelector": { "matchLabels": labels },
            "policyTypes": ["Ingress"],
            "ingress": [{ "ports": open }],
        },
    });
    let statefulset = json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(k.name.clone()),
        "spec": {
            "serviceName": k.peer_service(),
            "replicas": spec.nodes.len(),
            // All members of a new cluster must start together to elect a leader.
            "podManagementPolicy": "Parallel",
            "selector": { "matchLabels": labels },
            "updateStrategy": { "type": "RollingUpdate" },
            "template": {
                "metadata": { "labels": labels },
                "spec": {
                    // A Service named etcd would otherwise put ETCD_PORT and friends into the
                    // environment, which etcd reads as (unknown) settings.
                    "enableServiceLinks": false,
                    "affinity": { "podAntiAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": [
                        { "labelSelector": { "matchLabels": labels }, "topologyKey": "kubernetes.io/hostname" },
                    ] } },
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": inputs.uid,
                        "runAsGroup": inputs.gid,
                        "fsGroup": inputs.gid,
                        "seccompProfile": { "type": "RuntimeDefault" },
                    },
                    "containers": [container],
                    "volumes": [{
                        "name": "certs",
                        // 0440 (octal), group fsGroup: readable by etcd's group only.
                        "secret": { "secretName": format!("{}-tls", k.name), "defaultMode": 0o440, "items": items },
                    }],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": { "name": "data", "labels": labels },
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": { "requests": { "storage": quantity(2 * quota) } },
                },
            }],
        },
    });
    Ok(vec![peer_service, client_service, pdb, policy, statefulset])
}

/// The Secret with every member's certificates and keys (`<pod>.<file>`), from the PKI.
pub fn secret(inputs: &Inputs<'_>, k: &KubeNames, pki: &PkiLayout) -> Result<Value> {
    let mut data = serde_json::Map::new();
    for (i, node) in inputs.spec.nodes.iter().enumerate() {
        let dir = pki.node_dir(&node.name);
        for (_, file) in TLS_FILES {
            let path = dir.join(file);
            let bytes = std::fs::read(&path).with_context(|| {
                format!("cannot read {}: issue the PKI with `cargo xtask pki --cluster FILE`", path.display())
            })?;
            data.insert(secret_key(k, i, file), json!(base64::engine::general_purpose::STANDARD.encode(bytes)));
        }
    }
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": format!("{}-tls", k.name), "namespace": k.namespace, "labels": labels(inputs.spec) },
        "type": "Opaque",
        "data": data,
    }))
}

/// Documents as one YAML stream, after a comment header.
pub fn to_yaml(header: &str, docs: &[Value]) -> Result<String> {
    let mut out = String::new();
    for line in header.lines() {
        out.push_str(&format!("# {line}\n").replace("# \n", "#\n"));
    }
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(doc).context("cannot write a manifest as YAML")?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_exact() {
        assert_eq!(quantity(4 << 30), "4Gi");
        assert_eq!(quantity(100 << 20), "100Mi");
        assert_eq!(quantity(1000), "1000");
    }

    #[test]
    fn etcd_settings_become_flags_and_the_rest_variables() {
        let env = BTreeMap::from([
            ("ETCD_NAME".to_string(), "a".to_string()),
            ("GOMAXPROCS".to_string(), "4".to_string()),
            ("ETCD_UNSUPPORTED_ARCH".to_string(), "arm64".to_string()),
        ]);
        let runtime = BTreeMap::from([("ETCD_UNSUPPORTED_ARCH".to_string(), "arm64".to_string())]);
        let (args, vars) = args_and_env(&env, &runtime, Vec::new());
        assert_eq!(args, ["--name=a"]);
        let names: Vec<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
        assert_eq!(names, ["ETCD_UNSUPPORTED_ARCH", "GOMAXPROCS"]);
    }
}
