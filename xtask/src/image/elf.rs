//! Just enough ELF to know what a binary needs at run time.
//! In: an executable or shared library on disk. Out: its machine, its ELF interpreter
//! (`PT_INTERP`), the libraries it names (`DT_NEEDED`), its `DT_RUNPATH`/`DT_RPATH` and
//! `DT_SONAME`; and, for a set of binaries, the closure of host files (interpreter and
//! libraries) that must be copied into the image. Static binaries need nothing.
//!
//! Parsed with the `object` crate through a lazy read cache: the headers, the interpreter and
//! the dynamic segment are read, never the whole file. The closure policy (paths in the image,
//! `$ORIGIN` refused, sysroot containment) is ours.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::util::Arch;

/// Refuse dynamic string tables larger than this (a corrupt or hostile file).
const MAX_STRTAB: u64 = 1 << 24;

/// What one ELF file says about its run-time needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    pub machine: u16,
    pub is_64: bool,
    pub interp: Option<String>,
    pub needed: Vec<String>,
    pub runpath: Vec<String>,
    pub soname: Option<String>,
}

impl ElfInfo {
    pub fn is_static(&self) -> bool {
        self.interp.is_none() && self.needed.is_empty()
    }
}

/// Reads the ELF headers of `path` with the `object` crate, lazily: only the headers, the
/// interpreter, the dynamic segment and its string table are read from the file.
pub fn read(path: &Path) -> Result<ElfInfo> {
    use object::elf::{FileHeader32, FileHeader64};
    use object::{Endianness, ReadRef};
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let cache = object::ReadCache::new(file);
    let ident = (&cache).read_bytes_at(0, 16).map_err(|_| anyhow::anyhow!("{} is not an ELF file", path.display()))?;
    if &ident[..4] != b"\x7fELF" {
        bail!("{} is not an ELF file (no \\x7fELF magic)", path.display());
    }
    match ident[4] {
        1 => read_as::<FileHeader32<Endianness>>(&cache, path, false),
        2 => read_as::<FileHeader64<Endianness>>(&cache, path, true),
        c => bail!("{}: unknown ELF class {c}", path.display()),
    }
}

fn read_as<Elf: object::read::elf::FileHeader<Endian = object::Endianness>>(
    cache: &object::ReadCache<File>,
    path: &Path,
    is_64: bool,
) -> Result<ElfInfo> {
    use object::read::elf::{Dyn, ProgramHeader};
    use object::{elf, ReadRef};
    let bad = |what: &str| anyhow::anyhow!("{}: {what}", path.display());
    let header = Elf::parse(cache).map_err(|e| bad(&format!("not a valid ELF file ({e})")))?;
    let endian = header.endian().map_err(|e| bad(&format!("unknown ELF data encoding ({e})")))?;
    let segments = header.program_headers(endian, cache).map_err(|e| bad(&format!("program headers: {e}")))?;
    let mut info = ElfInfo {
        machine: header.e_machine(endian),
        is_64,
        interp: None,
        needed: vec![],
        runpath: vec![],
        soname: None,
    };
    for s in segments {
        if let Some(raw) = s.interpreter(endian, cache).map_err(|e| bad(&format!("PT_INTERP: {e}")))? {
            info.interp = Some(String::from_utf8(raw.to_vec()).map_err(|_| bad("PT_INTERP is not UTF-8"))?);
        }
    }
    let mut entries: Vec<(u64, u64)> = Vec::new();
    for s in segments {
        if let Some(dynamic) = s.dynamic(endian, cache).map_err(|e| bad(&format!("PT_DYNAMIC: {e}")))? {
            for d in dynamic {
                let (tag, val): (u64, u64) = (d.d_tag(endian).into(), d.d_val(endian).into());
                if tag == u64::from(elf::DT_NULL) {
                    break;
                }
                entries.push((tag, val));
            }
            break;
        }
    }
    let find = |t: u32| entries.iter().find(|(tag, _)| *tag == u64::from(t)).map(|(_, v)| *v);
    let (Some(strtab_addr), Some(strsz)) = (find(elf::DT_STRTAB), find(elf::DT_STRSZ)) else {
        return Ok(info);
    };
    // DT_STRTAB is a virtual address: map it through the PT_LOAD segments to a file offset.
    let strtab_off = segments
        .iter()
        .filter(|s| s.p_type(endian) == elf::PT_LOAD)
        .find_map(|s| {
            let (vaddr, filesz, offset): (u64, u64, u64) =
                (s.p_vaddr(endian).into(), s.p_filesz(endian).into(), s.p_offset(endian).into());
            (strtab_addr >= vaddr && strtab_addr < vaddr.saturating_add(filesz)).then(|| strtab_addr - vaddr + offset)
        })
        .ok_or_else(|| bad(&format!("DT_STRTAB address {strtab_addr:#x} is in no loadable segment")))?;
    let strtab = cache
        .read_bytes_at(strtab_off, strsz.min(MAX_STRTAB))
        .map_err(|_| bad(&format!("truncated ELF file (the dynamic string table at offset {strtab_off})")))?;
    let string_at = |off: u64| -> Result<String> {
        let start = usize::try_from(off).context("string offset")?;
        if start >= strtab.len() {
            bail!("{}: dynamic string offset {off} is past the string table", path.display());
        }
        let end = strtab[start..].iter().position(|&b| b == 0).map_or(strtab.len(), |p| start + p);
        String::from_utf8(strtab[start..end].to_vec())
            .with_context(|| format!("{}: dynamic string is not UTF-8", path.display()))
    };
    for (tag, val) in &entries {
        match u32::try_from(*tag).unwrap_or(u32::MAX) {
            elf::DT_NEEDED => info.needed.push(string_at(*val)?),
            elf::DT_SONAME => info.soname = Some(string_at(*val)?),
            elf::DT_RUNPATH | elf::DT_RPATH => {
                info.runpath.extend(string_at(*val)?.split(':').filter(|s| !s.is_empty()).map(str::to_string))
            }
            _ => {}
        }
    }
    Ok(info)
}

/// The Debian multiarch triplet of an architecture: where its libraries live.
pub fn multiarch_triplet(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "x86_64-linux-gnu",
        Arch::Arm64 => "aarch64-linux-gnu",
        Arch::Ppc64le => "powerpc64le-linux-gnu",
        Arch::S390x => "s390x-linux-gnu",
    }
}

/// The directories searched for `DT_NEEDED` libraries, in order: the ones the dynamic
/// loader in the image searches by default (there is no `ld.so.cache` in the image).
pub fn default_search_dirs(arch: Arch) -> Vec<String> {
    let t = multiarch_triplet(arch);
    vec![
        format!("/lib/{t}"),
        format!("/usr/lib/{t}"),
        "/lib64".into(),
        "/usr/lib64".into(),
        "/lib".into(),
        "/usr/lib".into(),
    ]
}

/// One host file the image needs at run time: stored as a regular file (symlinks followed)
/// at `image_path`, the path the loader looks it up under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeFile {
    /// Absolute path inside the image.
    pub image_path: String,
    /// Where it was found on the build host (under `host_root`).
    pub host_path: PathBuf,
    /// Why it is needed ("interpreter of etcd", "libc.so.6, needed by etcd").
    pub reason: String,
}

/// The root the runtime closure of an acquisition is resolved under: its `sysroot/` when it
/// has one (acquire puts a foreign architecture's C library there), the build host's `/`
/// otherwise.
pub fn runtime_root(acquired_dir: &Path) -> PathBuf {
    let sysroot = acquired_dir.join("sysroot");
    if sysroot.is_dir() {
        sysroot
    } else {
        PathBuf::from("/")
    }
}

/// A command that runs `binary` (built for `arch`, the host's) against the C library in
/// `sysroot` rather than the host's: `<sysroot><PT_INTERP> --inhibit-cache --library-path
/// <sysroot's library dirs> <binary>`. The interpreter is read from the binary's ELF headers and
/// must resolve inside the sysroot. A static binary runs directly. Arguments go after it.
pub fn loader_command(sysroot: &Path, binary: &Path, arch: Arch) -> Result<std::process::Command> {
    let info = read(binary)?;
    if info.machine != arch.elf_machine() {
        bail!("{} is built for ELF machine {}, not {arch}", binary.display(), info.machine);
    }
    let Some(interp) = info.interp else {
        return Ok(std::process::Command::new(binary));
    };
    let in_root = sysroot.join(interp.trim_start_matches('/'));
    if !in_root.exists() {
        bail!(
            "{} needs the ELF interpreter {interp}, which {} lacks: fetch etcd again (its C library is extracted there)",
            binary.display(),
            sysroot.display()
        );
    }
    let (loader, _) = inside_root(sysroot, &in_root)?;
    let dirs: Vec<String> = default_search_dirs(arch)
        .iter()
        .map(|d| sysroot.join(d.trim_start_matches('/')))
        .filter(|d| d.is_dir())
        .map(|d| d.display().to_string())
        .collect();
    if dirs.is_empty() {
        bail!("{} has none of the library directories {arch} binaries search", sysroot.display());
    }
    let mut cmd = std::process::Command::new(loader);
    cmd.arg("--inhibit-cache").arg("--library-path").arg(dirs.join(":")).arg(binary);
    Ok(cmd)
}

/// Resolves `path` (symlinks followed) and checks that it lies inside `root`: a sysroot's
/// link must never lead out to the build host. Returns the resolved path and its path
/// relative to `root`.
pub fn inside_root(root: &Path, path: &Path) -> Result<(PathBuf, String)> {
    let real_root = std::fs::canonicalize(root).with_context(|| format!("cannot resolve {}", root.display()))?;
    let real = std::fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let rel = real.strip_prefix(&real_root).map_err(|_| {
        anyhow::anyhow!(
            "{} resolves to {}, outside {}: a link in the sysroot leads out of it; fetch etcd again",
            path.display(),
            real.display(),
            root.display()
        )
    })?;
    Ok((real.clone(), rel.to_string_lossy().into_owned()))
}

/// The interpreter and library closure of `binaries` for `arch`, resolved on the build host.
/// `host_root` is `/` except in tests. Static binaries contribute nothing.
pub fn runtime_closure(binaries: &[(String, PathBuf)], arch: Arch, host_root: &Path) -> Result<Vec<RuntimeFile>> {
    let mut out: BTreeMap<String, RuntimeFile> = BTreeMap::new();
    // sonames already provided (the interpreter satisfies its own soname: libc names it).
    let mut provided: BTreeSet<String> = BTreeSet::new();
    let mut queue: Vec<(String, ElfInfo)> = Vec::new();
    for (name, path) in binaries {
        let info = read(path).with_context(|| format!("cannot read the ELF headers of {name}"))?;
        if info.machine != arch.elf_machine() {
            bail!(
                "{name} ({}) is built for ELF machine {}, not {arch} (machine {}): acquire etcd for {arch}",
                path.display(),
                info.machine,
                arch.elf_machine()
            );
        }
        queue.push((name.clone(), info));
    }
    let host = |p: &str| host_root.join(p.trim_start_matches('/'));
    while let Some((who, info)) = queue.pop() {
        if let Some(interp) = &info.interp {
            if !out.contains_key(interp) {
                crate::image::spec::check_image_path(interp)
                    .with_context(|| format!("{who}: its ELF interpreter {interp:?} is not a usable path"))?;
                let host_path = host(interp);
                if !host_path.exists() {
                    bail!(
                        "{who} is dynamically linked and needs the ELF interpreter {interp}, which this host lacks: \
                         install the C library for {arch} (Debian: libc6:{arch}) or use a statically linked etcd (--source release)"
                    );
                }
                let ii = read(&host_path).with_context(|| format!("interpreter {interp} of {who}"))?;
                check_same_kind(&ii, &info, arch, interp)?;
                if let Some(file) = Path::new(interp).file_name() {
                    provided.insert(file.to_string_lossy().into_owned());
                }
                if let Some(so) = &ii.soname {
                    provided.insert(so.clone());
                }
                out.insert(
                    interp.clone(),
                    RuntimeFile { image_path: interp.clone(), host_path, reason: format!("ELF interpreter of {who}") },
                );
            }
        }
        for lib in &info.needed {
            if provided.contains(lib) {
                continue;
            }
            if lib.contains('/') {
                bail!("{who} needs {lib:?} by path; only plain sonames are supported");
            }
            let mut dirs = Vec::new();
            for rp in &info.runpath {
                if rp.contains("$ORIGIN") || rp.contains("${ORIGIN}") {
                    bail!("{who} has a DT_RUNPATH/DT_RPATH with $ORIGIN ({rp}), which this engine does not lay out: use a build without it");
                }
                dirs.push(rp.clone());
            }
            dirs.extend(default_search_dirs(arch));
            let mut found = None;
            for d in &dirs {
                let image_path = format!("{}/{lib}", d.trim_end_matches('/'));
                let host_path = host(&image_path);
                if !host_path.is_file() {
                    continue;
                }
                let li = read(&host_path).with_context(|| format!("library {lib} needed by {who}"))?;
                if li.machine == info.machine && li.is_64 == info.is_64 {
                    found = Some((image_path, host_path, li));
                    break;
                }
            }
            let Some((image_path, host_path, li)) = found else {
                bail!(
                    "{who} needs {lib}, which is not installed for {arch} on this host (searched {}): \
                     install it (Debian: the package providing {lib} for {arch}, e.g. libc6:{arch}) or use a statically linked etcd",
                    dirs.join(", ")
                );
            };
            crate::image::spec::check_image_path(&image_path).with_context(|| format!("library {lib} of {who}"))?;
            provided.insert(lib.clone());
            out.insert(
                image_path.clone(),
                RuntimeFile { image_path, host_path, reason: format!("{lib}, needed by {who}") },
            );
            queue.push((lib.clone(), li));
        }
    }
    Ok(out.into_values().collect())
}

fn check_same_kind(lib: &ElfInfo, user: &ElfInfo, arch: Arch, path: &str) -> Result<()> {
    if lib.machine != user.machine || lib.is_64 != user.is_64 {
        bail!("{path} on this host is for ELF machine {}, not {arch}: install the {arch} C library (Debian: libc6:{arch})", lib.machine);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal static ELF64 little-endian executable header (no program headers).
    pub(crate) fn fake_static_elf(machine: u16) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // 64-bit
        b[5] = 1; // little endian
        b[6] = 1; // version
        b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        b[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        b
    }

    #[test]
    fn static_binaries_need_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etcd");
        std::fs::write(&p, fake_static_elf(62)).unwrap();
        let info = read(&p).unwrap();
        assert!(info.is_static());
        assert_eq!(info.machine, 62);
        let closure = runtime_closure(&[("etcd".into(), p.clone())], Arch::Amd64, Path::new("/")).unwrap();
        assert!(closure.is_empty());
        let err = runtime_closure(&[("etcd".into(), p)], Arch::Arm64, Path::new("/")).unwrap_err();
        assert!(format!("{err:#}").contains("not arm64"));
    }

    #[test]
    fn garbage_is_not_elf() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("not an ELF"));
    }

    /// The ELF interpreter glibc installs for `arch` (what a dynamic binary's PT_INTERP names).
    fn glibc_loader(arch: Arch) -> &'static str {
        match arch {
            Arch::Amd64 => "/lib64/ld-linux-x86-64.so.2",
            Arch::Arm64 => "/lib/ld-linux-aarch64.so.1",
            Arch::Ppc64le => "/lib64/ld64.so.2",
            Arch::S390x => "/lib/ld64.so.1",
        }
    }

    /// This very test binary is a dynamic executable of the host (Rust links glibc): its closure
    /// holds the loader of the host's architecture, once, and libc where the loader looks for it.
    #[test]
    fn host_binary_closure_has_interpreter_and_libc() {
        let arch = Arch::host().unwrap_or_else(|| {
            panic!("this host ({}) is no architecture etcd images are built for", std::env::consts::ARCH)
        });
        let exe = std::env::current_exe().unwrap();
        let info = read(&exe).unwrap();
        let loader = glibc_loader(arch);
        assert_eq!(info.interp.as_deref(), Some(loader), "{} on {arch}: {info:?}", exe.display());
        assert!(info.needed.iter().any(|l| l == "libc.so.6"), "{} needs no libc.so.6: {info:?}", exe.display());

        let files = runtime_closure(&[("test".into(), exe.clone())], arch, Path::new("/")).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.image_path.as_str()).collect();
        assert!(paths.contains(&loader), "the closure lacks the loader {loader}: {paths:?}");
        let libc = format!("/lib/{}/libc.so.6", multiarch_triplet(arch));
        assert!(paths.contains(&libc.as_str()), "the closure lacks {libc}: {paths:?}");
        let loader_name = Path::new(loader).file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(paths.iter().filter(|p| p.ends_with(&loader_name)).count(), 1, "the loader twice: {paths:?}");
    }
}
