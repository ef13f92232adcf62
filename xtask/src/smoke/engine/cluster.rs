//! The cluster a smoke scenario runs: three etcd nodes of the baked image on a podman network
//! (or the static pods of `cargo xtask k8s`, `kube.rs`), their throwaway PKI, and what every
//! scenario does to it: start, stop, restart, ask etcdctl and curl from the host and etcdctl
//! inside, poll, read logs. In: a cluster description and the image. Out: a running cluster,
//! removed when dropped (unless kept).

use std::collections::BTreeMap;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::image;
use crate::pki::cluster::{ClusterSpec, NodeSpec};
use crate::pki::issue::issue;
use crate::pki::layout::PkiLayout;
use crate::pki::profiles::Profiles;
use crate::render::config::{node_env, PkiFacts, TargetPaths};
use crate::util::{display_rel, each_in_thread, target_dir, write_atomic, Arch};

use super::podman::{label, podman, podman_checked, podman_output, resource_name, Resources};
use super::run_etcdctl;
use crate::smoke::local::{free_port, Interrupt};

/// Where the node's PKI directory and the operator's client identity are mounted.
pub const PKI_MOUNT: &str = "/etc/etcd/pki";
pub const CLIENT_MOUNT: &str = "/etc/etcd/client";

/// One node as started.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) spec: NodeSpec,
    pub(crate) container: String,
    pub(crate) volume: String,
    /// Published loopback ports of the client and peer ports.
    pub(crate) client_port: u16,
    pub(crate) peer_port: u16,
    pub(crate) env: BTreeMap<String, String>,
    /// The image the node runs (the upgrade swaps it).
    pub(crate) image: String,
    /// Its client port speaks plain http only (http-to-tls): etcdctl reaches it without TLS.
    pub(crate) plain: bool,
    /// The data directory on this machine when it is a hostPath (kube engine), not `volume`.
    pub(crate) host_data: Option<PathBuf>,
}

pub(crate) struct Cluster {
    pub(crate) spec: ClusterSpec,
    pub(crate) etcd_version: String,
    pub(crate) out: PathBuf,
    pub(crate) tag: String,
    pub(crate) network: String,
    pub(crate) nodes: Vec<Node>,
    pub(crate) pki: PkiLayout,
    pub(crate) rogue: PkiLayout,
    /// The operator identity, staged for the host's etcdctl and curl.
    pub(crate) client: PathBuf,
    pub(crate) etcdctl: PathBuf,
    pub(crate) mounts: PathBuf,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) run_args: Vec<String>,
    pub(crate) res: Resources,
    pub(crate) interrupt: Interrupt,
    /// Clients (the load, and etcdctl for nodes without TLS) talk plain http: the http-to-tls
    /// scenario's first steps.
    pub(crate) plain_clients: bool,
    /// The static pods `cargo xtask k8s` rendered for this run (kube engine), else none.
    pub(crate) kube_manifests: Option<PathBuf>,
}

impl Cluster {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prepare(
        spec: &ClusterSpec,
        out: &Path,
        tag: &str,
        etcd_version: &str,
        uid: u32,
        gid: u32,
        keep: bool,
        interrupt: Interrupt,
    ) -> Result<Cluster> {
        // A throwaway PKI for this run, and a second, unrelated one for the "wrong CA" check.
        fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        for d in ["pki", "rogue-pki", "mounts", "backup", "old-client"] {
            let p = out.join(d);
            if p.exists() {
                fs::remove_dir_all(&p).with_context(|| format!("cannot clear {}", p.display()))?;
            }
        }
        let profiles = Profiles::load(&Profiles::default_path())?;
        let pki = PkiLayout::new(out.join("pki"));
        issue(spec, &profiles, &pki.root, false).context("cannot issue the smoke PKI")?;
        let rogue = PkiLayout::new(out.join("rogue-pki"));
        issue(spec, &profiles, &rogue.root, false).context("cannot issue the second (rogue) PKI")?;
        let facts = PkiFacts::read(&pki.root)?;

        // Keys readable by the etcd uid only: copies owned by it, 0400 in 0500 directories.
        let mounts = out.join("mounts");
        let client = mounts.join("client");
        stage_dir(&pki.client_dir("etcdctl"), &client, uid, gid)?;
        let ip = crate::render::config::primary_ip(&spec.nodes[0])?;
        let subnet = match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                format!("{}.{}.{}.0/24", o[0], o[1], o[2])
            }
            IpAddr::V6(_) => bail!("the smoke test needs IPv4 node addresses (field nodes.ips)"),
        };
        let network = format!("xtask-smoke-{}", spec.name);
        let mut res = Resources::new(keep);
        podman(&["network", "create", "--label", &label(&spec.name), "--subnet", &subnet, &network])
            .with_context(|| format!("cannot create the podman network {network} ({subnet})"))?;
        res.networks.push(network.clone());

        let paths = TargetPaths::standard();
        let mut nodes = Vec::new();
        for n in &spec.nodes {
            stage_dir(&pki.node_dir(&n.name), &mounts.join(&n.name), uid, gid)?;
            let env = node_env(spec, n, &facts, &paths, etcd_version)?;
            nodes.push(Node {
                image: tag.to_string(),
                plain: false,
                host_data: None,
                spec: n.clone(),
                container: resource_name(&spec.name, &n.name),
                volume: resource_name(&spec.name, &format!("{}-data", n.name)),
                client_port: free_port()?,
                peer_port: free_port()?,
                env,
            });
        }
        let etcdctl = find_etcdctl(tag)?;
        Ok(Cluster {
            spec: spec.clone(),
            etcd_version: etcd_version.to_string(),
            out: out.to_path_buf(),
            tag: tag.to_string(),
            network,
            nodes,
            pki,
            rogue,
            client,
            etcdctl,
            mounts,
            uid,
            gid,
            run_args: image::podman::run_args()?,
            res,
            interrupt,
            plain_clients: false,
            kube_manifests: None,
        })
    }

    /// Keeps the nodes' logs beside the report when something failed.
    pub(crate) fn record_logs(&self) {
        for n in &self.nodes {
            if let Ok(out) = podman_output(&["logs".into(), n.container.clone()]) {
                let mut text = out.stdout;
                text.extend_from_slice(&out.stderr);
                let _ = write_atomic(&self.out.join(format!("{}.log", n.spec.name)), &text, 0o644);
            }
        }
    }

    /// Creates the nodes' volumes, then starts all containers at once (each `podman run` takes
    /// a few hundred milliseconds; in sequence they would dominate the time to healthy).
    pub(crate) fn start_all(&mut self) -> Result<()> {
        if self.kube_manifests.is_some() {
            let cluster = self.spec.name.clone();
            for n in &mut self.nodes {
                n.container = super::podman::pod_container_name(&cluster, &n.spec.name);
            }
            return self.play_all();
        }
        let mut runs = Vec::new();
        for n in self.nodes.clone() {
            // A path is a host directory (the drills' small disk), not a podman volume.
            if !n.volume.starts_with('/') {
                podman(&["volume", "create", "--label", &label(&self.spec.name), &n.volume])?;
                self.res.volumes.push(n.volume.clone());
            }
            runs.push((n.container.clone(), self.container_args(&n)?));
        }
        let results = each_in_thread(&runs, "podman run", |_, (_, args)| podman_checked(args));
        for ((name, _), result) in runs.into_iter().zip(results) {
            // Registered even on failure: a half-created container is removed too.
            self.res.containers.push(name.clone());
            result.with_context(|| format!("cannot start {name}"))?;
        }
        Ok(())
    }

    pub(crate) fn container_args(&self, n: &Node) -> Result<Vec<String>> {
        let ip = crate::render::config::primary_ip(&n.spec)?;
        let extra = vec![
            "--hostname".into(),
            n.spec.name.clone(),
            // A fixed MAC: netavark gives a restarted container a new random one, and the host's
            // neighbour entry for the node's IP keeps the old one until it expires (15-45 s), so
            // clients coming through the host (published ports) time out that long.
            "--mac-address".into(),
            stable_mac(&ip),
            "-v".into(),
            format!("{}:/var/lib/etcd", n.volume),
            "-v".into(),
            format!("{}:{PKI_MOUNT}:ro", self.mounts.join(&n.spec.name).display()),
            "-v".into(),
            format!("{}:{CLIENT_MOUNT}:ro", self.client.display()),
            "-p".into(),
            format!("127.0.0.1:{}:2379", n.client_port),
            "-p".into(),
            format!("127.0.0.1:{}:2380", n.peer_port),
        ];
        Ok(self.run_command(&n.container, &ip.to_string(), extra, &n.env, &n.image))
    }

    /// `podman run` for any container of this run: name, label, network and IP, the hardening,
    /// `extra` (hostname, mounts, published ports), the etcd environment, the host adaptation
    /// and the image.
    pub(crate) fn run_command(
        &self,
        name: &str,
        ip: &str,
        extra: Vec<String>,
        env: &BTreeMap<String, String>,
        image: &str,
    ) -> Vec<String> {
        let label = label(&self.spec.name);
        let mut args: Vec<String> =
            ["run", "-d", "--name", name, "--label", &label, "--network", &self.network, "--ip", ip]
                .into_iter()
                .map(String::from)
                .collect();
        args.extend(hardening_args());
        args.extend(extra);
        for (k, v) in env {
            args.extend(["--env".into(), format!("{k}={v}")]);
        }
        args.extend(self.run_args.iter().cloned());
        args.push(image.to_string());
        args
    }

    /// The host's etcdctl with the operator identity, against published loopback ports.
    /// Over mutual TLS through the nodes that have it, else plain http (http-to-tls).
    pub(crate) fn etcdctl(&self, nodes: &[usize], args: &[&str]) -> Result<Output> {
        let tls: Vec<usize> = nodes.iter().copied().filter(|i| !self.nodes[*i].plain).collect();
        let (chosen, plain) = if tls.is_empty() { (nodes.to_vec(), true) } else { (tls, false) };
        let ports: Vec<u16> = chosen.iter().map(|i| self.nodes[*i].client_port).collect();
        self.etcdctl_scheme(&ports, plain, args)
    }

    /// The host's etcdctl with the operator identity, against the given loopback ports.
    pub(crate) fn etcdctl_at(&self, ports: &[u16], args: &[&str]) -> Result<Output> {
        self.etcdctl_scheme(ports, false, args)
    }

    /// The host's etcdctl against loopback ports, with the operator identity unless `plain`.
    pub(crate) fn etcdctl_scheme(&self, ports: &[u16], plain: bool, args: &[&str]) -> Result<Output> {
        let scheme = if plain { "http" } else { "https" };
        let endpoints: Vec<String> = ports.iter().map(|p| format!("{scheme}://127.0.0.1:{p}")).collect();
        let client = (!plain).then_some(self.client.as_path());
        run_etcdctl(Command::new(&self.etcdctl), &self.etcdctl, &endpoints, client, args)
    }

    /// etcdctl inside a node's container, as the image's user: exercises the image's etcdctl
    /// and the cluster's own addresses.
    pub(crate) fn exec_etcdctl(&self, node: usize, args: &[&str]) -> Result<String> {
        self.exec_etcdctl_full(node, args).map(|(out, _)| out)
    }

    /// Like `exec_etcdctl`, with stderr too (etcdctl 3.4 prints `endpoint health` there).
    pub(crate) fn exec_etcdctl_full(&self, node: usize, args: &[&str]) -> Result<(String, String)> {
        let mut a: Vec<String> = vec!["exec".into(), self.nodes[node].container.clone(), "etcdctl".into()];
        a.push("--endpoints=https://127.0.0.1:2379".to_string());
        a.push(format!("--cacert={CLIENT_MOUNT}/ca.crt"));
        a.push(format!("--cert={CLIENT_MOUNT}/client.crt"));
        a.push(format!("--key={CLIENT_MOUNT}/client.key"));
        a.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = Command::new("podman");
        cmd.args(&a).env("ETCDCTL_API", "3");
        let out = cmd.output().context("cannot run podman exec")?;
        if !out.status.success() {
            bail!(
                "etcdctl {} in {} failed: {}",
                args.join(" "),
                self.nodes[node].container,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok((String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned()))
    }

    pub(crate) fn wait_healthy(&self, nodes: &[usize], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            self.interrupt.check()?;
            // Nodes with and without TLS (http-to-tls) are asked apart.
            let mut text = String::new();
            let mut success = true;
            for plain in [false, true] {
                let group: Vec<u16> = nodes
                    .iter()
                    .filter(|i| self.nodes[**i].plain == plain)
                    .map(|i| self.nodes[*i].client_port)
                    .collect();
                if group.is_empty() {
                    continue;
                }
                let out = self.etcdctl_scheme(&group, plain, &["endpoint", "health", "--command-timeout=1s"])?;
                success &= out.status.success();
                text += &(String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr));
            }
            let healthy = text.lines().filter(|l| l.contains("is healthy")).count();
            if success && healthy == nodes.len() {
                return Ok(());
            }
            last = text.trim().to_string();
            for i in nodes {
                if self.state(*i).unwrap_or_default() == "exited" {
                    let logs =
                        podman_output(&["logs".into(), "--tail".into(), "5".into(), self.nodes[*i].container.clone()])
                            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                            .unwrap_or_default();
                    bail!("{} exited: {}", self.nodes[*i].container, logs.trim());
                }
            }
            if Instant::now() > deadline {
                bail!("not healthy after {} s: {last}", timeout.as_secs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Node `node`'s log (etcd writes to stderr), with `podman logs` options such as `--since`.
    pub(crate) fn logs(&self, node: usize, options: &[String]) -> Result<String> {
        let mut args = vec!["logs".to_string()];
        args.extend(options.iter().cloned());
        args.push(self.nodes[node].container.clone());
        let out = podman_output(&args)?;
        Ok(String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout))
    }

    /// Node `i`'s container state as podman says it ("running", "exited", ...).
    pub(crate) fn state(&self, i: usize) -> Result<String> {
        Ok(podman(&["inspect", "--format", "{{.State.Status}}", &self.nodes[i].container])?.trim().to_string())
    }

    /// Node `i`'s client URL through its published loopback port, over TLS.
    pub(crate) fn client_url(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// The lines of node `i`'s log since `since` (Unix seconds) that tell how it came back.
    pub(crate) fn restart_log(&self, i: usize, since: u64) -> String {
        let text = self.logs(i, &["--since".into(), since.to_string()]).unwrap_or_default();
        let keys = [
            "publish",
            "ready to serve",
            "elected leader",
            "became follower",
            "peer became active",
            "timed out",
            "lost TCP streaming connection",
            "established TCP streaming connection",
        ];
        text.lines().filter(|l| keys.iter().any(|k| l.contains(k))).take(20).collect::<Vec<_>>().join(" | ")
    }

    pub(crate) fn print_how_to_reach(&self) {
        println!("\nThe cluster is still running (--keep). Reach it with:");
        let endpoints: Vec<String> =
            self.nodes.iter().map(|n| format!("https://127.0.0.1:{}", n.client_port)).collect();
        println!(
            "  {} --endpoints={} --cacert={} --cert={} --key={} endpoint health",
            display_rel(&self.etcdctl),
            endpoints.join(","),
            display_rel(&self.client.join("ca.crt")),
            display_rel(&self.client.join("client.crt")),
            display_rel(&self.client.join("client.key"))
        );
        let label = label(&self.spec.name);
        println!(
            "Remove it with: podman rm -f -t 0 $(podman ps -aq --filter label={label}); podman volume prune -f --filter \
             label={label}; podman network rm {}",
            self.network
        );
    }
}
/// A locally administered unicast MAC derived from a node's address (`02:00:` + its IPv4
/// octets), the same on every start of the container.
pub(crate) fn stable_mac(ip: &IpAddr) -> String {
    let o = match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let s = v6.octets();
            [s[12], s[13], s[14], s[15]]
        }
    };
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The run-time hardening every container gets.
pub(crate) fn hardening_args() -> Vec<String> {
    ["--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges"].iter().map(|s| s.to_string()).collect()
}

/// Copies a PKI directory for a container: owned by the etcd uid, keys 0400, dir 0500.
pub(crate) fn stage_dir(from: &Path, to: &Path, uid: u32, gid: u32) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    restage_dir(from, to, uid, gid)?;
    std::os::unix::fs::chown(to, Some(uid), Some(gid)).with_context(|| format!("cannot chown {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o500))?;
    Ok(())
}

/// Copies every file of `from` into `to` atomically (a temporary name beside, then rename), owned
/// by `uid:gid`, mode 0400. Files a running etcd reads are never seen half-written.
pub(crate) fn restage_dir(from: &Path, to: &Path, uid: u32, gid: u32) -> Result<()> {
    for entry in fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let dest = to.join(entry.file_name());
        let tmp = to.join(format!(".{}.new", entry.file_name().to_string_lossy()));
        fs::copy(entry.path(), &tmp).with_context(|| format!("cannot copy {}", entry.path().display()))?;
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
            .with_context(|| format!("cannot chown {}", tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o400))?;
        fs::rename(&tmp, &dest).with_context(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))?;
    }
    Ok(())
}

pub(crate) fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).with_context(|| format!("cannot chown {}", dir.display()))?;
    if dir.is_dir() {
        for e in fs::read_dir(dir)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// The host-side etcdctl: the one acquired with the image's etcd (same version).
pub(crate) fn find_etcdctl(tag: &str) -> Result<PathBuf> {
    let version = tag.rsplit(':').next().unwrap_or_default();
    let host = Arch::host().context("unsupported host architecture")?;
    let p = target_dir().join("etcd").join(version).join(host.as_str()).join("etcdctl");
    if !p.exists() {
        bail!("{} is missing: run `cargo xtask fetch` for etcd {version}", p.display());
    }
    Ok(p)
}
