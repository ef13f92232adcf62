//! `cargo xtask image bench`: one measured run on the same inputs.
//! In: verified etcd binaries for the host architecture (acquired, or `--etcd-dir`) and the
//! definition. Out (stdout): our bake time (binaries to verified layout + archive) against
//! `podman build --timestamp 0` of an equivalent Containerfile FROM scratch plus `podman save`;
//! the image's size against the files in it; the time of a no-op rebuild. Goals: ratio at most
//! 0.25x, overhead at most 64 KiB, no-op at most 0.3 s. Scratch files go to
//! `target/image-bench-PID/` and are removed, as is the podman image.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::acquire::SourcePolicy;
use crate::definition::Definition;
use crate::image::bake::{self, Plan};
use crate::image::layer::Source;
use crate::image::spec::EntryKind;
use crate::image::{acquire_all, human, podman, BuildArgs};
use crate::util::{source_date_epoch, target_dir, Arch};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Where etcd may come from when it is not cached yet.
    #[arg(long, default_value_t, value_name = "SOURCE")]
    pub source: SourcePolicy,
    /// Use the verified binaries in DIR instead of acquiring (see `cargo xtask image --help`).
    #[arg(long, value_name = "DIR")]
    pub etcd_dir: Option<PathBuf>,
    /// Skip the podman comparison even when podman is installed.
    #[arg(long)]
    pub no_podman: bool,
}

const GOAL_RATIO: f64 = 0.25;
const GOAL_OVERHEAD: i64 = 64 * 1024;
const GOAL_NOOP_S: f64 = 0.3;

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let def = Definition::load_default()?;
    let spec = def.image.as_ref().context("the image definition has no [image] section")?;
    let arch = Arch::host().context("this machine's architecture has no etcd build")?;
    let build_args = BuildArgs {
        arches: if args.etcd_dir.is_some() { vec![] } else { vec![arch] },
        all_arches: false,
        out: None,
        load: false,
        source: args.source,
        etcd_dir: args.etcd_dir.clone().into_iter().collect(),
        force: false,
        version: None,
    };
    let acquired = acquire_all(&def, &build_args)?.into_iter().next().context("nothing acquired")?;
    let epoch = source_date_epoch()?;
    let scratch = Scratch(target_dir().join(format!("image-bench-{}", std::process::id())));
    fs::create_dir_all(&scratch.0).with_context(|| format!("cannot create {}", scratch.0.display()))?;
    let out = scratch.0.join("out");

    // 1. Our bake: plan (hash the inputs) + layers + config + verify + archive.
    let t = Instant::now();
    let env = def.runtime_env(&acquired.provenance.version, acquired.provenance.arch)?;
    let plan = bake::plan(spec, &acquired, epoch, &env)?;
    let built = bake::build(&plan, &out)?;
    let bake_s = t.elapsed().as_secs_f64();

    // 2. A no-op rebuild, as the command does it: acquire (cached) + plan + up-to-date check.
    let t = Instant::now();
    let again = acquire_all(&def, &build_args)?.into_iter().next().context("nothing acquired")?;
    let acquire_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let plan2 = bake::plan(spec, &again, epoch, &env)?;
    let noop = bake::build(&plan2, &out)?;
    let image_noop_s = t.elapsed().as_secs_f64();
    let noop_s = acquire_s + image_noop_s;
    if !noop.up_to_date {
        anyhow::bail!("the second build was not up to date: the inputs hash is unstable (an engine bug)");
    }

    let files = plan.files_size();
    let archive = built.stamp.archive_size;
    let packing = archive as i64 - built.stamp.layers_size as i64 + built.stamp.tar_size as i64 - files as i64;
    println!(
        "image bench: {} linux/{arch}, {} files, {} of files, gzip level {}",
        plan.reference,
        plan.file_count(),
        human(files),
        plan.gzip_level
    );
    println!("  our bake (verified binaries -> verified layout + archive): {bake_s:.2} s");

    // 3. podman build + save of the same content.
    if !args.no_podman && podman::available() {
        match podman_build(&plan, &scratch.0) {
            Ok((build_s, save_s)) => {
                let total = build_s + save_s;
                let ratio = bake_s / total;
                println!("  podman build --timestamp 0 + podman save: {total:.2} s (build {build_s:.2} s, save {save_s:.2} s)");
                println!("  ratio ours/podman: {ratio:.2}x (goal <= {GOAL_RATIO}x): {}", verdict(ratio <= GOAL_RATIO));
            }
            Err(e) => println!("  podman comparison failed: {e:#}"),
        }
    } else {
        println!(
            "  podman comparison skipped ({})",
            if args.no_podman { "--no-podman" } else { "podman is not installed" }
        );
    }

    println!(
        "  size: archive {} ({archive} bytes) vs files {} ({files} bytes): {:+} bytes",
        human(archive),
        human(files),
        archive as i64 - files as i64
    );
    println!(
        "  packing overhead (archive with layers uncompressed, minus the files): {packing:+} bytes (goal <= {GOAL_OVERHEAD}): {}",
        verdict(packing <= GOAL_OVERHEAD)
    );
    println!(
        "  no-op rebuild: {noop_s:.3} s = acquire check {acquire_s:.3} s + image plan and up-to-date check {image_noop_s:.3} s (goal <= {GOAL_NOOP_S} s): {}",
        verdict(noop_s <= GOAL_NOOP_S)
    );
    drop(scratch);
    Ok(())
}

/// Stages the plan's files as a build context, runs `podman build` and `podman save`, and
/// removes the image. Returns (build seconds, save seconds).
fn podman_build(plan: &Plan, scratch: &Path) -> Result<(f64, f64)> {
    let ctx = scratch.join("ctx");
    // One tree per owner, copied with COPY --chown.
    let mut owners: BTreeMap<(u32, u32), PathBuf> = BTreeMap::new();
    let mut dirs: Vec<(PathBuf, u32)> = Vec::new();
    for e in plan.layers.iter().flat_map(|l| &l.entries) {
        let root =
            owners.entry((e.uid, e.gid)).or_insert_with(|| ctx.join(format!("rootfs-{}-{}", e.uid, e.gid))).clone();
        let dest = root.join(&e.path);
        match (&e.kind, &e.source) {
            (EntryKind::Dir, _) => {
                fs::create_dir_all(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
                dirs.push((dest, e.mode));
            }
            (EntryKind::File, src) => {
                if let Some(p) = dest.parent() {
                    fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
                }
                match src {
                    Source::Inline(data) => {
                        fs::write(&dest, data).with_context(|| format!("cannot write {}", dest.display()))?
                    }
                    Source::Host(p) => {
                        fs::copy(p, &dest).with_context(|| format!("cannot copy {}", p.display()))?;
                    }
                    Source::None => {}
                }
                fs::set_permissions(&dest, fs::Permissions::from_mode(e.mode))
                    .with_context(|| format!("cannot chmod {}", dest.display()))?;
            }
        }
    }
    for (d, mode) in dirs.iter().rev() {
        fs::set_permissions(d, fs::Permissions::from_mode(*mode))
            .with_context(|| format!("cannot chmod {}", d.display()))?;
    }
    let none = oci_spec::image::Config::default();
    let c = plan.config.config().as_ref().unwrap_or(&none);
    fn list(v: &Option<Vec<String>>) -> &[String] {
        v.as_deref().unwrap_or_default()
    }
    let mut file = String::from("FROM scratch\n");
    for ((uid, gid), root) in &owners {
        let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        file.push_str(&format!("COPY --chown={uid}:{gid} {name}/ /\n"));
    }
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    for env in list(c.env()) {
        if let Some((k, v)) = env.split_once('=') {
            file.push_str(&format!("ENV {k}={}\n", q(v)));
        }
    }
    for p in list(c.exposed_ports()) {
        file.push_str(&format!("EXPOSE {p}\n"));
    }
    for v in list(c.volumes()) {
        file.push_str(&format!("VOLUME [{}]\n", q(v)));
    }
    let labels: BTreeMap<&String, &String> = c.labels().iter().flatten().collect();
    for (k, v) in labels {
        file.push_str(&format!("LABEL {}={}\n", q(k), q(v)));
    }
    if let Some(w) = c.working_dir() {
        file.push_str(&format!("WORKDIR {w}\n"));
    }
    if let Some(u) = c.user() {
        file.push_str(&format!("USER {u}\n"));
    }
    let ep: Vec<String> = list(c.entrypoint()).iter().map(|s| q(s)).collect();
    file.push_str(&format!("ENTRYPOINT [{}]\n", ep.join(", ")));
    let containerfile = ctx.join("Containerfile");
    fs::write(&containerfile, file).with_context(|| format!("cannot write {}", containerfile.display()))?;

    let sh = Shell::new().context("cannot start a shell")?;
    let tag = format!("localhost/xtask-image-bench:{}", std::process::id());
    let archive = scratch.join("podman.tar");
    // Output is captured (podman prints progress on stderr) and shown only on failure.
    let check = |what: &str, out: xshell::Result<std::process::Output>| -> Result<()> {
        let out = out.with_context(|| format!("cannot run {what}"))?;
        if !out.status.success() {
            anyhow::bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    };
    let t = Instant::now();
    let built = check(
        "podman build",
        cmd!(sh, "podman build --quiet --timestamp 0 --pull=never -t {tag} -f {containerfile} {ctx}")
            .quiet()
            .ignore_status()
            .output(),
    );
    let build_s = t.elapsed().as_secs_f64();
    let saved = built.and_then(|_| {
        let t = Instant::now();
        check(
            "podman save",
            cmd!(sh, "podman save --format oci-archive -o {archive} {tag}").quiet().ignore_status().output(),
        )
        .map(|_| t.elapsed().as_secs_f64())
    });
    let _ = cmd!(sh, "podman rmi -f {tag}").quiet().ignore_status().output();
    let save_s = saved?;
    Ok((build_s, save_s))
}
