//! Kubernetes manifests: `cargo xtask k8s --cluster FILE`.
//! In: a cluster description (with its tuning choice and, for the StatefulSet, its
//! `[kubernetes]` section), its PKI (issued or brought up to date on the way, like `render`),
//! the image reference, SOURCE_DATE_EPOCH. Out: `target/k8s/<cluster>/`, staged whole and
//! renamed into place (layout in [`K8s`]).
//!
//! `manifests` builds the objects; [`validate`] checks files against Kubernetes' OpenAPI
//! schemas offline with the pinned `kubernetes-validate` of `ci/pypi-packages.txt`.

pub mod manifests;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::render::config::TLS_FILES;
use crate::render::host::Tree;
use crate::render::template;
use crate::util::{display_rel, source_date_epoch, target_dir, write_atomic, Arch, StagingDir};
use manifests::Inputs;

/// The Kubernetes versions `--validate` checks against by default: the oldest and the newest
/// release the Kubernetes project supports (three minor versions are; the schemas ship inside
/// the pinned validator).
pub const VALIDATE_VERSIONS: [&str; 2] = ["1.35.0", "1.37.0"];

/// Where a static pod manifest goes on a control-plane host (the kubelet's staticPodPath).
pub const STATIC_POD_PATH: &str = "etc/kubernetes/manifests/etcd.yaml";

/// Render Kubernetes manifests for a cluster: a static pod per control-plane host (kubeadm's
/// layout, but non-root, with a separate peer CA) and a StatefulSet for running etcd inside a
/// Kubernetes cluster.
///
/// Every etcd flag comes from the code that renders host bundles; requests and limits from the
/// cluster's tuning preset. The PKI is issued first when missing, or brought up to date.
/// Output in OUT (default target/k8s/<cluster>/):
///   <node>/etc/kubernetes/manifests/etcd.yaml   the node's static pod
///   <node>/etc/etcd/pki/                        its certificates (keys root 0400 in the tarball)
///   <node>/usr/lib/tmpfiles.d/etcd.conf         data dir 0700 and keys 0440 for the pod's uid/gid
///   <node>.tar                                  that tree, owned by root, to unpack at / on the host
///   statefulset/etcd.yaml                       Services, PodDisruptionBudget, StatefulSet
///   statefulset/secret.yaml                     every member's certificates and keys (0600)
/// The StatefulSet needs a [kubernetes] section in the cluster description (namespace, and
/// optionally name and cluster_domain): its pods' DNS names go into the certificates.
#[derive(Debug, clap::Args)]
#[command(long_about, verbatim_doc_comment)]
pub struct K8s {
    #[command(flatten)]
    pub input: crate::render::ClusterArgs,
    /// Output directory [default: target/k8s/<cluster name>/]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Image reference [default: the image `cargo xtask image` built for this version and
    /// architecture, by digest (localhost/etcd:V@sha256:...), else localhost/etcd:V by tag]
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// Then validate every manifest against the Kubernetes OpenAPI schemas, offline, with the
    /// pinned kubernetes-validate (installed from ci/pypi-packages.txt into target/tools/pypi/)
    #[arg(long)]
    pub validate: bool,
    /// Kubernetes version to validate against (repeatable) [default: 1.35.0 and 1.37.0]
    #[arg(long, value_name = "V", requires = "validate")]
    pub kube_version: Vec<String>,
}

impl K8s {
    pub fn run(self) -> Result<()> {
        let t = Instant::now();
        let out = render(&self)?;
        println!("{}: manifests written in {:.2} s", display_rel(&out), t.elapsed().as_secs_f64());
        if self.validate {
            let t = Instant::now();
            let files = manifest_files(&out)?;
            let versions = if self.kube_version.is_empty() {
                VALIDATE_VERSIONS.iter().map(|s| s.to_string()).collect()
            } else {
                self.kube_version.clone()
            };
            validate(&files, &versions)?;
            println!(
                "{} manifest file(s) valid for Kubernetes {} ({:.2} s)",
                files.len(),
                versions.join(" and "),
                t.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }
}

/// The image reference to use for `version` on `arch`: the one `cargo xtask image` built, by
/// digest, when its record is there.
fn default_image(name: &str, version: &str, arch: Arch) -> String {
    let stem = crate::image::plan::image_stem(name, version, arch);
    match crate::image::bake::recorded(&target_dir().join("images"), &stem) {
        Some(stamp) => format!("{}@{}", stamp.reference, stamp.digest),
        None => {
            let r = format!("{name}:{version}");
            eprintln!(
                "note: k8s: no image of etcd {version} for {} built yet (`cargo xtask image`); referring to {r} by tag",
                arch.as_str()
            );
            r
        }
    }
}

/// Renders every manifest of `args.input.cluster`; returns the output directory.
pub fn render(args: &K8s) -> Result<PathBuf> {
    let prepared = crate::render::prepare(&args.input)?;
    let (spec, tuning, pki, facts) = (prepared.spec(), prepared.tuning(), &prepared.pki, &prepared.facts);
    let (arch, version, runtime_env) = (prepared.arch, &prepared.version, &prepared.runtime_env);
    let image_spec = prepared.def.image.as_ref().context("images/etcd.toml has no [image] section")?;
    let (uid, gid) = image_spec.run_as_ids()?;
    let image = args.image.clone().unwrap_or_else(|| default_image(&image_spec.name, version, arch));
    let inputs = Inputs { spec, facts, tuning, runtime_env, version, image: &image, uid, gid };

    let out = args.out.clone().unwrap_or_else(|| target_dir().join("k8s").join(&spec.name));
    let epoch = source_date_epoch()?;
    let staged = StagingDir::private_beside(&out)?;
    let tmpfiles = template::fill(
        "systemd/kubernetes/tmpfiles.conf.in",
        &template::read("kubernetes/tmpfiles.conf.in")?,
        &[("UID", uid.to_string()), ("GID", gid.to_string())],
    )?;
    let tuning_line = match tuning {
        Some((name, p)) => format!("Tuning: preset {name} of systemd/tuning.toml: {}.", p.description),
        None => "Tuning: none chosen (tuning = ... in the cluster description), etcd's defaults apply.".into(),
    };
    for node in &spec.nodes {
        let pod = manifests::static_pod(&inputs, node).with_context(|| format!("node {}", node.name))?;
        let header = format!(
            "Static pod of etcd member {} of cluster {}, generated by `cargo xtask k8s`: do not edit, render again.\n\
             Install: unpack {}.tar at / on the node (certificates, tmpfiles.d), run\n\
             `systemd-tmpfiles --create`; the kubelet starts the pod from its staticPodPath.\n{tuning_line}",
            node.name, spec.name, node.name
        );
        let mut tree = Tree::default();
        tree.dirs.push(("etc/etcd".into(), 0o755));
        tree.dirs.push(("etc/etcd/pki".into(), 0o755));
        for (_, file) in TLS_FILES {
            let path = pki.node_dir(&node.name).join(file);
            let data = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let mode = if file.ends_with(".key") { 0o400 } else { 0o644 };
            tree.file(&format!("etc/etcd/pki/{file}"), mode, data);
        }
        tree.file(STATIC_POD_PATH, 0o644, manifests::to_yaml(&header, &[pod])?);
        tree.file("usr/lib/tmpfiles.d/etcd.conf", 0o644, tmpfiles.clone());
        tree.write(&staged.path().join(&node.name))?;
        write_atomic(&staged.path().join(format!("{}.tar", node.name)), &tree.tar(epoch)?, 0o600)?;
        println!("{}: {}", node.name, display_rel(&out.join(&node.name).join(STATIC_POD_PATH)));
    }
    // The static pods run with the host bundles' flags: the same monitoring as `render`'s.
    crate::render::monitoring::write(staged.path(), spec, &pki.root)?;
    match &spec.kubernetes {
        Some(k) => {
            let dir = staged.path().join("statefulset");
            let header = format!(
                "etcd cluster {} as a StatefulSet in namespace {}, generated by `cargo xtask k8s`.\n\
                 Apply secret.yaml first (the members' certificates), then this file.\n{tuning_line}",
                spec.name, k.namespace
            );
            let docs = manifests::statefulset(&inputs, k)?;
            write_atomic(&dir.join("etcd.yaml"), manifests::to_yaml(&header, &docs)?.as_bytes(), 0o644)?;
            let secret = manifests::secret(&inputs, k, pki)?;
            let header = format!(
                "The certificates and keys of cluster {}'s members (keys <pod>.<file>), generated by\n\
                 `cargo xtask k8s` from {}. Keep it as secret as the keys.",
                spec.name,
                display_rel(&pki.root)
            );
            write_atomic(&dir.join("secret.yaml"), manifests::to_yaml(&header, &[secret])?.as_bytes(), 0o600)?;
            let scrape = crate::render::monitoring::Scrape::statefulset(spec, k);
            crate::render::monitoring::write_for(&dir.join(crate::render::monitoring::DIR), spec, &pki.root, &scrape)?;
            println!("statefulset: {}", display_rel(&out.join("statefulset")));
        }
        None => eprintln!(
            "note: k8s: {} has no [kubernetes] section, so no StatefulSet was rendered: add one with namespace = \"...\" \
             (its pods' DNS names go into the certificates)",
            args.input.cluster.display()
        ),
    }
    staged.commit(&out)?;
    Ok(out)
}

/// Every manifest under a `cargo xtask k8s` output directory, sorted.
pub fn manifest_files(out: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))? {
        let dir = entry?.path();
        for candidate in [dir.join(STATIC_POD_PATH), dir.join("etcd.yaml"), dir.join("secret.yaml")] {
            if candidate.is_file() {
                files.push(candidate);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("{} holds no manifests: run `cargo xtask k8s --cluster FILE` first", out.display());
    }
    Ok(files)
}

/// Validates `files` against the OpenAPI schemas of each Kubernetes version, strictly (unknown
/// fields are errors, and so is a document of a kind or apiVersion without a schema), with the
/// pinned kubernetes-validate; the error names each failing file and what is wrong.
pub fn validate(files: &[PathBuf], versions: &[String]) -> Result<()> {
    let list = crate::util::project_root().join("ci/pypi-packages.txt");
    crate::ci::ensure_pypi_tools(&list)?;
    let tool = crate::ci::pypi_tool("kubernetes-validate")
        .with_context(|| format!("kubernetes-validate is not installed: add it to {}", list.display()))?;
    let mut failed = Vec::new();
    for file in files {
        let mut cmd = Command::new(&tool);
        cmd.env("PYTHONPATH", crate::ci::pypi_dir()).arg("--strict");
        for v in versions {
            cmd.args(["-k", v]);
        }
        let out = cmd.arg(file).output().with_context(|| format!("cannot run {}", tool.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        // A document it has no schema for (a misspelt kind or apiVersion) is only a warning to
        // it, and passes: here nothing unchecked passes.
        let problems: Vec<&str> = text.lines().filter(|l| !l.starts_with("INFO ")).collect();
        if !out.status.success() || !problems.is_empty() {
            failed.push(format!("{}: {}", file.display(), problems.join("\n")));
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} manifest file(s) are not valid Kubernetes ({}):\n{}",
            failed.len(),
            files.len(),
            versions.join(", "),
            failed.join("\n")
        );
    }
    Ok(())
}
