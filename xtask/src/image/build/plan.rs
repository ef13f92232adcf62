//! The plan of an image: verified etcd binaries + the `[image]` definition in, a frozen [`Plan`]
//! out: every layer entry with its owner, mode, size and SHA-256, and the image config without
//! diff_ids. The plan's hash is the build's inputs (definition, binaries, runtime libraries,
//! SOURCE_DATE_EPOCH); [`super::bake`] writes it as a layout and an archive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::acquire::Acquired;
use crate::definition::check_version;
use crate::image::elf;
use crate::image::layer::Entry;
use oci_spec::image::{Config, HistoryBuilder, ImageConfigurationBuilder, RootFsBuilder};

use crate::image::oci::{self, ImageConfiguration};
use crate::image::spec::{EntryKind, ImageSpec};
use crate::util::{Arch, Sha256Hex};

/// Bumped whenever the engine would write different bytes for the same plan (part of the
/// plan's hash, so a bump rebuilds every image).
pub const FORMAT: &str = "xtask-image/2";

/// One layer to write: its entries, sorted, parents first.
#[derive(Debug, Clone, Serialize)]
pub struct LayerPlan {
    pub created_by: String,
    pub entries: Vec<Entry>,
}

/// Everything an image build depends on, resolved. Its hash decides whether to rebuild.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub arch: Arch,
    /// The etcd version actually inside.
    pub version: String,
    /// Full name with tag, e.g. `localhost/etcd:3.4.23`.
    pub reference: String,
    /// Output file stem, e.g. `etcd-3.4.23-linux-amd64`.
    pub stem: String,
    pub epoch: u64,
    pub gzip_level: u32,
    pub layers: Vec<LayerPlan>,
    /// The image config with empty `rootfs.diff_ids` (filled in when the layers are written).
    pub config: ImageConfiguration,
    pub annotations: BTreeMap<String, String>,
    /// Where the runtime files were resolved when not on the build host: `sysroot` (the
    /// acquisition's own C library). Absent for host builds, so their inputs are unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_root: Option<String>,
}

impl Plan {
    /// SHA-256 over the canonical JSON of the plan and the engine format.
    pub fn inputs(&self) -> Result<Sha256Hex> {
        let mut bytes = FORMAT.as_bytes().to_vec();
        bytes.push(b'\n');
        bytes.extend(oci::to_canonical_json(self)?);
        Ok(Sha256Hex::of_bytes(&bytes))
    }

    /// Total bytes of the regular files in the image.
    pub fn files_size(&self) -> u64 {
        self.layers.iter().flat_map(|l| &l.entries).map(|e| e.size).sum()
    }

    pub fn file_count(&self) -> usize {
        self.layers.iter().flat_map(|l| &l.entries).filter(|e| e.kind == EntryKind::File).count()
    }
}

/// `None` for an empty list: the image config then leaves the field out.
fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// The file name part of a repository: `localhost/etcd` -> `etcd`.
pub fn repo_stem(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// The file stem of the image `name` of etcd `version` for `arch`: `etcd-3.4.9-linux-amd64`
/// (the layout directory, `.tar` archive and `.inputs.json` record share it).
pub fn image_stem(name: &str, version: &str, arch: Arch) -> String {
    format!("{}-{version}-linux-{arch}", repo_stem(name))
}

/// Resolves the definition and the acquired binaries into a [`Plan`]. `runtime_env` is what
/// this etcd needs to run on its architecture ([`crate::definition::Definition::runtime_env`]),
/// added to the config's environment.
pub fn plan(spec: &ImageSpec, acquired: &Acquired, epoch: u64, runtime_env: &BTreeMap<String, String>) -> Result<Plan> {
    let prov = &acquired.provenance;
    let version = prov.version.clone();
    check_version(&version)
        .with_context(|| format!("the provenance in {} names version {version:?}", acquired.dir.display()))?;
    let arch = prov.arch;
    let reference = format!("{}:{version}", spec.name);
    let stem = image_stem(&spec.name, &version, arch);
    let created = oci::rfc3339(epoch)?;

    // The binaries, checked against what acquire recorded.
    let mut binaries: Vec<(String, PathBuf)> = Vec::new();
    for (name, required) in
        spec.binaries.required.iter().map(|n| (n, true)).chain(spec.binaries.optional.iter().map(|n| (n, false)))
    {
        let path = acquired.binary(name);
        if !path.is_file() {
            if required {
                bail!(
                    "{} has no {name}, which image.binaries.required lists: fetch etcd again (cargo xtask fetch) or remove it from the definition",
                    acquired.dir.display()
                );
            }
            continue;
        }
        binaries.push((name.clone(), path));
    }

    let dir_meta = |path: &str| -> Result<(u32, u32, u32)> {
        match spec.dirs.iter().find(|d| d.path.trim_start_matches('/') == path) {
            Some(d) => Ok((d.mode.0, spec.uid_of(&d.owner)?, spec.gid_of(&d.group)?)),
            None => Ok((0o755, 0, 0)),
        }
    };

    // Base layer: generated and declared files, declared directories, runtime files.
    let mut base: Vec<Entry> = vec![
        Entry::inline("etc/passwd", 0o644, 0, 0, spec.passwd()?.into_bytes()),
        Entry::inline("etc/group", 0o644, 0, 0, spec.group().into_bytes()),
    ];
    for f in &spec.files {
        base.push(Entry::inline(
            f.path.trim_start_matches('/'),
            f.mode.0,
            spec.uid_of(&f.owner)?,
            spec.gid_of(&f.group)?,
            f.content.clone().into_bytes(),
        ));
    }
    for d in &spec.dirs {
        let p = d.path.trim_start_matches('/');
        let (mode, uid, gid) = dir_meta(p)?;
        base.push(Entry::dir(p, mode, uid, gid));
    }
    let root = elf::runtime_root(&acquired.dir);
    let sysroot = root != Path::new("/");
    for rf in elf::runtime_closure(&binaries, arch, &root)? {
        let image_path = rf.image_path.trim_start_matches('/');
        let entry = if sysroot {
            // A file of the sysroot: it must stay inside it (no symlink out to the build host)
            // and be the one acquire verified and recorded as `sysroot/<path>`.
            let (real, rel) = elf::inside_root(&root, &rf.host_path)?;
            let key = format!("sysroot/{rel}");
            let sha = prov.files.get(&key).with_context(|| {
                format!(
                    "{}/{key} ({}) is not recorded in provenance.json: fetch etcd for {arch} again (cargo xtask fetch --arch {arch})",
                    acquired.dir.display(),
                    rf.reason
                )
            })?;
            Entry::host_known(image_path, 0o755, 0, 0, &real, *sha)
        } else {
            Entry::host(image_path, 0o755, 0, 0, &rf.host_path)
        };
        base.push(entry.with_context(|| format!("cannot add {} ({})", rf.image_path, rf.reason))?);
    }

    let mut layers = vec![LayerPlan {
        created_by: "cargo xtask image: base (users, directories, files from the definition, runtime libraries)".into(),
        entries: with_parents(base, &dir_meta)?,
    }];
    for (name, path) in &binaries {
        let image_path = format!("{}/{name}", spec.binaries.dir);
        let rel = image_path.trim_start_matches('/');
        // acquire recorded each binary's SHA-256 when it verified it; the layer writer checks
        // the bytes against it while it streams them. Without a record, hash now.
        let e = match prov.files.get(name) {
            Some(sha) => Entry::host_known(rel, 0o755, 0, 0, path, *sha)?,
            None => Entry::host(rel, 0o755, 0, 0, path)?,
        };
        layers.push(LayerPlan {
            created_by: format!("cargo xtask image: {image_path} (etcd {version}, {:?} source)", prov.source)
                .to_lowercase(),
            entries: with_parents(vec![e], &dir_meta)?,
        });
    }

    // No path may appear twice with different meaning across layers.
    let mut seen: BTreeMap<&str, &Entry> = BTreeMap::new();
    for e in layers.iter().flat_map(|l| &l.entries) {
        if let Some(prev) = seen.insert(e.path.as_str(), e) {
            if prev.kind != EntryKind::Dir
                || e.kind != EntryKind::Dir
                || (prev.mode, prev.uid, prev.gid) != (e.mode, e.uid, e.gid)
            {
                bail!(
                    "/{} is put into the image twice (a runtime library, a binary or image.files collide): rename one",
                    e.path
                );
            }
        }
    }
    let is = |p: &str, kind: EntryKind| seen.get(p.trim_start_matches('/')).is_some_and(|e| e.kind == kind);
    if !is(&spec.config.entrypoint[0], EntryKind::File) {
        bail!(
            "field image.config.entrypoint: {} is not a file in the image (binaries go to {})",
            spec.config.entrypoint[0],
            spec.binaries.dir
        );
    }
    if !is(&spec.config.working_dir, EntryKind::Dir) {
        bail!(
            "field image.config.working_dir: {} is not a directory in the image: add it to image.dirs",
            spec.config.working_dir
        );
    }

    let revision = prov.details.get("git_sha").cloned().unwrap_or_else(|| format!("v{version}"));
    let mut annotations = BTreeMap::new();
    for (k, v) in [
        ("title", spec.title.clone()),
        ("description", spec.description.clone()),
        ("version", version.clone()),
        ("revision", revision),
        ("source", spec.source.clone()),
        ("licenses", spec.licenses.clone()),
        ("created", created.clone()),
    ] {
        annotations.insert(format!("{}{k}", crate::image::spec::COMPUTED_LABEL_PREFIX), v);
    }
    let mut labels = spec.config.labels.clone();
    labels.extend(annotations.clone());

    let (uid, gid) = spec.run_as_ids()?;
    let c = &spec.config;
    let mut run = Config::default();
    run.set_user(Some(format!("{uid}:{gid}")))
        .set_exposed_ports(non_empty(c.exposed_ports.clone()))
        .set_env(non_empty(c.env.iter().chain(runtime_env).map(|(k, v)| format!("{k}={v}")).collect()))
        .set_entrypoint(non_empty(c.entrypoint.clone()))
        .set_cmd(non_empty(c.cmd.clone()))
        .set_volumes(non_empty(c.volumes.clone()))
        .set_working_dir(Some(c.working_dir.clone()))
        .set_labels((!labels.is_empty()).then(|| labels.into_iter().collect()))
        .set_stop_signal(c.stop_signal.clone());
    let history = layers
        .iter()
        .map(|l| HistoryBuilder::default().created(created.clone()).created_by(l.created_by.clone()).build())
        .collect::<Result<Vec<_>, _>>()
        .context("cannot describe the image history")?;
    let config = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(arch.as_str())
        .os("linux")
        .config(run)
        .rootfs(RootFsBuilder::default().typ("layers").diff_ids(Vec::<String>::new()).build()?)
        .history(history)
        .build()
        .context("cannot describe the image configuration")?;
    let runtime_root = sysroot.then(|| "sysroot".to_string());
    Ok(Plan {
        arch,
        version,
        reference,
        stem,
        epoch,
        gzip_level: spec.gzip_level,
        layers,
        config,
        annotations,
        runtime_root,
    })
}

/// Adds every missing parent directory, then sorts by path (a parent sorts before its children).
/// `(mode, uid, gid)` of a directory of the image, by path without leading `/`.
type DirMeta<'a> = &'a dyn Fn(&str) -> Result<(u32, u32, u32)>;

fn with_parents(entries: Vec<Entry>, dir_meta: DirMeta) -> Result<Vec<Entry>> {
    let mut map: BTreeMap<String, Entry> = BTreeMap::new();
    for e in entries {
        let mut parent = e.path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            if !map.contains_key(p) {
                let (mode, uid, gid) = dir_meta(p)?;
                map.insert(p.to_string(), Entry::dir(p, mode, uid, gid));
            }
            parent = p;
        }
        if let Some(prev) = map.get(&e.path) {
            if prev.kind != EntryKind::Dir || e.kind != EntryKind::Dir {
                bail!("/{} is declared twice", e.path);
            }
        }
        map.insert(e.path.clone(), e);
    }
    for e in map.values() {
        if let Some((p, _)) = e.path.rsplit_once('/') {
            if map.get(p).is_some_and(|pe| pe.kind != EntryKind::Dir) {
                bail!("/{} lies below /{p}, which is a file", e.path);
            }
        }
    }
    Ok(map.into_values().collect())
}
