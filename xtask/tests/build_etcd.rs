//! `cargo xtask build-etcd` with the real Go (Debian's golang-go) on a small local git repository
//! laid out like etcd 3.4: module path go.etcd.io/etcd, `version/version.go` with GitSHA, etcd's
//! main package at the root and etcdctl's under etcdctl/, and `vendor/` without modules.txt.
//! Other tags of the same repository break one thing each. Nothing here touches the network.
//!
//! Every test gets its own target directory (CARGO_TARGET_DIR) and shares one Go build cache
//! (GOCACHE, under target/test-cache/) so that Go's standard library is compiled once.

mod common;
use common::{host_arch, text};

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VERSION: &str = "3.4.9";

fn shared_gocache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target/test-cache/go-build")
}

/// Runs xtask with `target` as its target directory, no GOFLAGS and no module proxy.
fn xtask(target: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(args)
        .env("CARGO_TARGET_DIR", target)
        .env("GOCACHE", shared_gocache())
        .env("GOPROXY", "off")
        .env("GOSUMDB", "off")
        .env_remove("GOFLAGS")
        .env_remove("GOPATH")
        .env_remove("XTASK_DEFINITION");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("xtask runs")
}

fn build(target: &Path, repo: &Path, git_ref: &str, envs: &[(&str, &str)]) -> Output {
    xtask(target, &["build-etcd", "--git", repo.to_str().unwrap(), "--ref", git_ref], envs)
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(out.status.success(), "build-etcd failed:\n{}", text(out));
}

#[track_caller]
fn assert_fails_with(out: &Output, wants: &[&str]) -> String {
    let all = text(out);
    assert!(!out.status.success(), "build-etcd should have failed:\n{all}");
    for want in wants {
        assert!(all.contains(want), "expected {want:?} in:\n{all}");
    }
    all
}

fn out_dir(target: &Path) -> PathBuf {
    target.join("etcd").join(VERSION).join(host_arch())
}

fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.org")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.org")
        .env("GIT_AUTHOR_DATE", "2020-05-18T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2020-05-18T00:00:00Z")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

const VERSION_GO: &str = r#"// Package version implements etcd version parsing and contains latest version
// information.
package version

var (
	// MinClusterVersion is the min cluster version this etcd binary is compatible with.
	MinClusterVersion = "3.0.0"
	Version           = "3.4.9"
	APIVersion        = "unknown"

	// Git SHA Value will be set during build
	GitSHA = "Not provided (use ./build instead of go build)"
)
"#;

const ETCD_MAIN: &str = r#"package main

import (
	"fmt"
	"os"
	"runtime"

	"github.com/fakeorg/flags"
	"go.etcd.io/etcd/version"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "--version" {
		fmt.Printf("etcd Version: %s\n", version.Version)
		fmt.Printf("Git SHA: %s\n", version.GitSHA)
		fmt.Printf("Go Version: %s\n", runtime.Version())
		fmt.Printf("Go OS/Arch: %s/%s\n", runtime.GOOS, runtime.GOARCH)
		return
	}
	fmt.Println("etcd", flags.Name())
}
"#;

const ETCDCTL_MAIN: &str = r#"package main

import (
	"fmt"

	"go.etcd.io/etcd/version"
)

func main() {
	fmt.Printf("etcdctl version: %s\nAPI version: 3.4\n", version.Version)
}
"#;

/// The test repository. Tags: v3.4.9 (good), broken (does not compile), liar (reports 3.4.8),
/// nosha (prints a constant Git SHA), modvendor (`go mod vendor` done), modproxy (modules, no vendor/).
fn etcd_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("etcd");
    fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    write(&repo, "go.mod", "module go.etcd.io/etcd\n\ngo 1.12\n");
    write(&repo, "version/version.go", VERSION_GO);
    write(&repo, "main.go", ETCD_MAIN);
    write(&repo, "etcdctl/main.go", ETCDCTL_MAIN);
    write(
        &repo,
        "vendor/github.com/fakeorg/flags/flags.go",
        "package flags\n\nfunc Name() string { return \"vendored flags\" }\n",
    );
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "etcd 3.4.9"]);
    git(&repo, &["tag", "-a", "-m", "v3.4.9", "v3.4.9"]);

    let variant = |tag: &str, change: &dyn Fn(&Path)| {
        git(&repo, &["checkout", "-q", "--detach", "v3.4.9"]);
        change(&repo);
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", tag]);
        git(&repo, &["tag", tag]);
    };
    variant("broken", &|r| write(r, "etcdctl/broken.go", "package main\n\nvar _ = notDefinedAnywhere\n"));
    variant("liar", &|r| write(r, "main.go", &ETCD_MAIN.replace("version.Version)", "\"3.4.8\")")));
    variant("nosha", &|r| write(r, "main.go", &ETCD_MAIN.replace("version.GitSHA)", "\"Not provided\")")));
    let modules = |r: &Path| {
        write(r, "go.mod", "module go.etcd.io/etcd\n\ngo 1.12\n\nrequire github.com/fakeorg/flags v1.0.0\n");
        write(r, "vendor/modules.txt", "# github.com/fakeorg/flags v1.0.0\n## explicit\ngithub.com/fakeorg/flags\n");
    };
    variant("modvendor", &modules);
    variant("modproxy", &|r| {
        modules(r);
        fs::remove_dir_all(r.join("vendor")).unwrap();
    });
    git(&repo, &["checkout", "-q", "main"]);
    repo
}

/// A GOPROXY directory (file:// URL) serving github.com/fakeorg/flags v1.0.0.
fn module_proxy(dir: &Path) -> String {
    let proxy = dir.join("proxy");
    let at_v = proxy.join("github.com/fakeorg/flags/@v");
    fs::create_dir_all(&at_v).unwrap();
    fs::write(at_v.join("list"), "v1.0.0\n").unwrap();
    fs::write(at_v.join("v1.0.0.info"), "{\"Version\":\"v1.0.0\",\"Time\":\"2020-01-01T00:00:00Z\"}\n").unwrap();
    fs::write(at_v.join("v1.0.0.mod"), "module github.com/fakeorg/flags\n").unwrap();
    let prefix = "github.com/fakeorg/flags@v1.0.0/";
    let zip = stored_zip(&[
        (&format!("{prefix}go.mod"), b"module github.com/fakeorg/flags\n"),
        (&format!("{prefix}flags.go"), b"package flags\n\nfunc Name() string { return \"proxied flags\" }\n"),
    ]);
    fs::write(at_v.join("v1.0.0.zip"), zip).unwrap();
    format!("file://{}", proxy.display())
}

/// A zip archive without compression (what a module proxy serves), written by hand.
fn stored_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, data) in files {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let offset = out.len() as u32;
        // version 20, no flags, stored, 1980-01-01 00:00, crc, sizes, name length, no extra field
        let common = |v: &mut Vec<u8>| {
            for x in [20u16, 0, 0, 0, 0x21] {
                v.extend(x.to_le_bytes());
            }
            for x in [crc.sum(), data.len() as u32, data.len() as u32] {
                v.extend(x.to_le_bytes());
            }
            v.extend((name.len() as u16).to_le_bytes());
            v.extend(0u16.to_le_bytes());
        };
        out.extend(0x04034b50u32.to_le_bytes());
        common(&mut out);
        out.extend(name.as_bytes());
        out.extend(*data);
        central.extend(0x02014b50u32.to_le_bytes());
        central.extend(20u16.to_le_bytes());
        common(&mut central);
        // comment length, disk, internal and external attributes, local header offset
        central.extend([0u8; 10]);
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x06054b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((files.len() as u16).to_le_bytes());
    out.extend((files.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

fn provenance(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(dir.join("provenance.json")).unwrap()).unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Section names of a 64-bit little-endian ELF file.
fn elf_sections(data: &[u8]) -> Vec<String> {
    let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&data[..6], b"\x7fELF\x02\x01", "64-bit little-endian ELF");
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let strtab = u64_at(shoff + shstrndx * shentsize + 0x18);
    (0..shnum)
        .map(|i| {
            let name = strtab + u32_at(shoff + i * shentsize);
            let end = data[name..].iter().position(|&b| b == 0).unwrap();
            String::from_utf8_lossy(&data[name..name + end]).into_owned()
        })
        .collect()
}

fn run(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().unwrap();
    assert!(out.status.success(), "{} {args:?}: {}", bin.display(), text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

#[test]
fn builds_a_3_4_tree_like_upstream_and_fetch_source_build_takes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = etcd_repo(tmp.path());
    let target = tmp.path().join("target");
    let out = build(&target, &repo, "v3.4.9", &[]);
    assert_ok(&out);
    let log = text(&out);
    assert!(log.contains("Go: go1."), "{log}");
    assert!(log.contains("expects Go 1.14.x for etcd 3.4.9"), "the Go line is checked against the definition: {log}");
    assert!(log.contains("never reproduces the official release tarball"), "{log}");

    let commit = git(&repo, &["rev-parse", "v3.4.9^{commit}"]);
    let short = &commit[..9];
    let dir = out_dir(&target);
    assert_eq!(entries(&dir), ["etcd", "etcdctl", "provenance.json"]);

    // The GitSHA reached the binary through -X, the vendored package was used.
    let etcd = dir.join("etcd");
    let version = run(&etcd, &["--version"]);
    assert!(version.contains("etcd Version: 3.4.9\n"), "{version}");
    assert!(version.contains(&format!("Git SHA: {short}\n")), "{version}");
    assert_eq!(run(&etcd, &[]), "etcd vendored flags\n");
    assert!(run(&dir.join("etcdctl"), &[]).contains("etcdctl version: 3.4.9"));

    // The flags reached the binary: stripped (-s), static (CGO_ENABLED=0), -trimpath.
    for name in ["etcd", "etcdctl"] {
        let data = fs::read(dir.join(name)).unwrap();
        let sections = elf_sections(&data);
        assert!(!sections.iter().any(|s| s == ".symtab"), "{name} is not stripped: {sections:?}");
        assert!(!sections.iter().any(|s| s == ".interp"), "{name} is not static: {sections:?}");
        let info = run(Path::new("go"), &["version", "-m", dir.join(name).to_str().unwrap()]);
        for want in ["-trimpath=true", "CGO_ENABLED=0", "GOOS=linux", &format!("GOARCH={}", host_arch())] {
            assert!(info.contains(want), "{name}: {want} missing from `go version -m`:\n{info}");
        }
        assert!(!String::from_utf8_lossy(&data).contains(tmp.path().to_str().unwrap()), "{name} embeds the build path");
    }

    // Provenance: where it came from and how it was built.
    let p = provenance(&dir);
    assert_eq!(p["source"], "build");
    assert_eq!(p["version"], VERSION);
    assert_eq!(p["reported_version"], VERSION);
    assert_eq!(p["origin"], format!("git:{}@{commit}", fs::canonicalize(&repo).unwrap().display()));
    let d = &p["details"];
    assert_eq!(d["git_sha"], commit.as_str());
    assert_eq!(d["git_sha_short"], short);
    assert_eq!(d["git_ref"], "v3.4.9");
    assert_eq!(d["ldflags"], format!("-s -X go.etcd.io/etcd/version.GitSHA={short}"));
    assert_eq!(d["trimpath"], "yes");
    assert!(d["mode"].as_str().unwrap().starts_with("gopath"), "{d}");
    assert!(d["build_env"].as_str().unwrap().contains("CGO_ENABLED=0 GOOS=linux"), "{d}");
    let go_version = run(Path::new("go"), &["version"]);
    assert!(go_version.contains(&format!("{} ", d["go_version"].as_str().unwrap())), "{go_version} vs {d}");
    for name in ["etcd", "etcdctl"] {
        assert_eq!(p["files"][name], sha256_hex(&fs::read(dir.join(name)).unwrap()));
    }

    // Nothing left behind but the outputs and the git cache.
    assert_eq!(entries(&target.join("etcd-build")), Vec::<String>::new());
    assert_eq!(entries(&target.join("etcd")), [VERSION]);
    assert_eq!(entries(&target.join("etcd-src")).len(), 1);

    // `--source build` hands it on unchanged (what `image` and `portable` call).
    let root = target.join("etcd");
    let out = xtask(
        &target,
        &[
            "fetch",
            "--source",
            "build",
            "--etcd-version",
            VERSION,
            "--arch",
            host_arch(),
            "--out-root",
            root.to_str().unwrap(),
        ],
        &[],
    );
    assert_ok(&out);
    assert!(text(&out).contains(&format!("etcd 3.4.9 {} (build)", host_arch())), "{}", text(&out));
}

#[test]
fn one_commit_with_one_go_gives_identical_binaries() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = etcd_repo(tmp.path());
    // Two different target directories (so two different build paths), the second with a cold
    // Go build cache: nothing may come from the first build.
    let (a, b) = (tmp.path().join("a/target"), tmp.path().join("elsewhere/b/target"));
    assert_ok(&build(&a, &repo, "v3.4.9", &[]));
    let cold = tmp.path().join("cold-go-cache");
    assert_ok(&build(&b, &repo, "v3.4.9", &[("GOCACHE", cold.to_str().unwrap())]));
    assert!(cold.is_dir(), "the second build used its own cache");
    for name in ["etcd", "etcdctl"] {
        let (x, y) = (fs::read(out_dir(&a).join(name)).unwrap(), fs::read(out_dir(&b).join(name)).unwrap());
        assert!(x == y, "{name} differs between two builds of one commit");
    }
    assert_eq!(provenance(&out_dir(&a))["files"], provenance(&out_dir(&b))["files"]);
}

#[test]
fn module_trees_use_vendor_else_the_goproxy_and_goflags_pass_through() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = etcd_repo(tmp.path());
    let target = tmp.path().join("target");

    // After `go mod vendor` (what the tutorial does): module mode, -mod=vendor, no network.
    assert_ok(&build(&target, &repo, "modvendor", &[]));
    let d = provenance(&out_dir(&target))["details"].clone();
    assert_eq!(d["mode"], "module");
    assert_eq!(d["dependencies"], "etcd: vendor/ (-mod=vendor); etcdctl: vendor/ (-mod=vendor)");
    assert_eq!(run(&out_dir(&target).join("etcd"), &[]), "etcd vendored flags\n");

    // No vendor/: dependencies come from GOPROXY, here a mirror in a directory.
    let proxy = module_proxy(tmp.path());
    let modcache = tmp.path().join("gomodcache");
    let envs =
        [("GOPROXY", proxy.as_str()), ("GOFLAGS", "-mod=mod -modcacherw"), ("GOMODCACHE", modcache.to_str().unwrap())];
    assert_ok(&build(&target, &repo, "modproxy", &envs));
    let d = provenance(&out_dir(&target))["details"].clone();
    assert_eq!(d["dependencies"], format!("etcd: GOPROXY={proxy}; etcdctl: GOPROXY={proxy}"));
    assert!(d["build_env"].as_str().unwrap().contains("GOFLAGS=-mod=mod -modcacherw"), "{d}");
    assert_eq!(run(&out_dir(&target).join("etcd"), &[]), "etcd proxied flags\n");

    // Without a reachable proxy, Go's own reason is shown, with the way out.
    let fresh = tmp.path().join("fresh-modcache");
    let envs = [("GOPROXY", "off"), ("GOFLAGS", "-mod=mod -modcacherw"), ("GOMODCACHE", fresh.to_str().unwrap())];
    let out = build(&tmp.path().join("t2"), &repo, "modproxy", &envs);
    assert_fails_with(
        &out,
        &["go build of etcd", "GOPROXY=off", "hint: Go could not get the dependencies", "GOPROXY="],
    );
}

#[test]
fn no_go_or_a_go_too_old_for_the_tree_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = etcd_repo(tmp.path());
    let target = tmp.path().join("target");
    let missing = tmp.path().join("no-such-go");
    let out = xtask(&target, &["build-etcd", "--git", repo.to_str().unwrap(), "--go", missing.to_str().unwrap()], &[]);
    assert_fails_with(&out, &["cannot run Go", "apt-get install golang-go", "--go PATH"]);

    let old_go = tmp.path().join("go");
    fs::write(&old_go, "#!/bin/sh\necho 'go version go1.2 linux/amd64'\n").unwrap();
    fs::set_permissions(&old_go, fs::Permissions::from_mode(0o755)).unwrap();
    let out = xtask(&target, &["build-etcd", "--git", repo.to_str().unwrap(), "--go", old_go.to_str().unwrap()], &[]);
    assert_fails_with(&out, &["go1.2 is too old for this tree", "go.mod says `go 1.12`", "needs Go 1.12 or newer"]);

    let not_go = tmp.path().join("not-go");
    fs::write(&not_go, "#!/bin/sh\necho 'Python 3.11'\n").unwrap();
    fs::set_permissions(&not_go, fs::Permissions::from_mode(0o755)).unwrap();
    let out = xtask(&target, &["build-etcd", "--git", repo.to_str().unwrap(), "--go", not_go.to_str().unwrap()], &[]);
    assert_fails_with(&out, &["is --go really Go?"]);
    assert!(!target.join("etcd").exists());
}

#[test]
fn a_missing_ref_or_repository_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = etcd_repo(tmp.path());
    let target = tmp.path().join("target");
    let out = build(&target, &repo, "v9.9.9", &[]);
    assert_fails_with(&out, &["ref \"v9.9.9\" not found", "newest tags: v3.4.9", "--ref"]);

    let out = build(&target, &tmp.path().join("nowhere"), "v3.4.9", &[]);
    assert_fails_with(&out, &["no such directory, and not a URL"]);

    let out = build(&target, Path::new("file:///nonexistent/etcd.git"), "v3.4.9", &[]);
    assert_fails_with(&out, &["cannot fetch file:///nonexistent/etcd.git", "check the URL"]);
    assert!(!target.join("etcd").exists());
    assert_eq!(entries(&target.join("etcd-src")).len(), 1, "only the good repository is cached");
}

#[test]
fn a_compile_error_shows_the_tail_of_gos_output_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = etcd_repo(tmp.path());
    let target = tmp.path().join("target");
    let out = build(&target, &repo, "broken", &[]);
    assert_fails_with(&out, &["go build of etcdctl (go.etcd.io/etcd/etcdctl) failed", "undefined: notDefinedAnywhere"]);
    assert!(!out_dir(&target).exists(), "no partial output");
    assert_eq!(entries(&target.join("etcd").join(VERSION)), Vec::<String>::new(), "no staging directory left");
    assert_eq!(entries(&target.join("etcd-build")), Vec::<String>::new(), "no build tree left");
}

#[test]
fn a_binary_that_misreports_its_version_or_sha_is_refused_and_the_good_build_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = etcd_repo(tmp.path());
    let target = tmp.path().join("target");
    assert_ok(&build(&target, &repo, "v3.4.9", &[]));
    let good = fs::read(out_dir(&target).join("provenance.json")).unwrap();

    let out = build(&target, &repo, "liar", &[]);
    assert_fails_with(
        &out,
        &["reports version 3.4.8, not 3.4.9; refusing it", "version/version.go sets Version = \"3.4.9\""],
    );
    let out = build(&target, &repo, "nosha", &[]);
    assert_fails_with(&out, &["the GitSHA did not reach", "GitSHA=", "Git SHA: Not provided"]);

    assert_eq!(fs::read(out_dir(&target).join("provenance.json")).unwrap(), good, "the good build is untouched");
    assert_eq!(entries(&out_dir(&target)), ["etcd", "etcdctl", "provenance.json"]);
    assert_eq!(entries(&target.join("etcd").join(VERSION)), [host_arch()], "no staging directory left");
}

#[test]
fn help_documents_the_proxy_and_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let out = xtask(tmp.path(), &["build-etcd", "--help"], &[]);
    assert_ok(&out);
    let help = text(&out);
    for want in ["--git <URL_OR_PATH>", "--ref <TAG_OR_COMMIT>", "--go <PATH>", "GOPROXY", "--source build"] {
        assert!(help.contains(want), "{want} missing from --help:\n{help}");
    }
}

#[test]
fn a_shallow_clone_builds_and_a_second_run_is_up_to_date() {
    // What many users do: `git clone --depth 1 --branch v3.4.9 ...`. Its tag sits at a shallow
    // root, which a plain `git fetch` rejects (with only a warning).
    let tmp = tempfile::tempdir().unwrap();
    let repo = etcd_repo(tmp.path());
    let shallow = tmp.path().join("shallow");
    let url = format!("file://{}", repo.display());
    let out = Command::new("git")
        .args(["clone", "-q", "--depth", "1", "--branch", "v3.4.9", &url])
        .arg(&shallow)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(shallow.join(".git/shallow").exists(), "the clone is shallow");
    let target = tmp.path().join("target");
    let out = build(&target, &shallow, "v3.4.9", &[]);
    assert_ok(&out);
    let commit = git(&repo, &["rev-parse", "v3.4.9^{commit}"]);
    assert_eq!(provenance(&out_dir(&target))["details"]["git_sha"], commit.as_str());
    let sums = provenance(&out_dir(&target))["files"].clone();

    // Same commit, same Go: nothing to do, nothing touched.
    let again = build(&target, &shallow, "v3.4.9", &[]);
    assert_ok(&again);
    assert!(text(&again).contains("is up to date"), "{}", text(&again));
    assert!(!text(&again).contains("building etcd"), "{}", text(&again));
    // --force rebuilds, to the same bytes.
    let forced = xtask(&target, &["build-etcd", "--git", shallow.to_str().unwrap(), "--ref", "v3.4.9", "--force"], &[]);
    assert_ok(&forced);
    assert!(text(&forced).contains("building etcd"), "{}", text(&forced));
    assert_eq!(provenance(&out_dir(&target))["files"], sums);
}

/// The real etcd v3.4.9 (see `common::etcd_git`): built from its shallow source for amd64 and
/// arm64 into target/etcd/3.4.9/, where the image, smoke, portable and release tests take it.
#[test]
fn the_real_etcd_3_4_9_builds_for_amd64_and_arm64_static_with_its_git_sha() {
    let log = common::build_etcd_349(&["amd64", "arm64"]);
    let src = common::etcd_git();
    let local = Path::new(&src);
    if local.exists() {
        // CI's source is a shallow bare clone: the case `--update-shallow` exists for.
        eprintln!("source {src}: shallow = {}", local.join("shallow").exists());
    }
    for arch in ["amd64", "arm64"] {
        let dir = common::etcd_349_dir(arch);
        let p = provenance(&dir);
        assert_eq!(p["source"], "build", "{arch}: {log}");
        assert_eq!(p["version"], "3.4.9");
        assert_eq!(p["arch"], arch);
        assert_eq!(p["details"]["git_sha"], common::ETCD_349_COMMIT);
        assert_eq!(p["details"]["git_sha_short"], common::ETCD_349_GITSHA);
        assert!(p["details"]["build_env"].as_str().unwrap().contains(&format!("GOARCH={arch}")), "{p}");
        for name in ["etcd", "etcdctl"] {
            let path = dir.join(name);
            let data = fs::read(&path).unwrap();
            assert_eq!(p["files"][name], sha256_hex(&data), "{arch}/{name} is what the provenance records");
            let info = xtask::image::elf::read(&path).unwrap();
            assert!(info.is_static(), "{arch}/{name} is static (CGO_ENABLED=0): {info:?}");
            let machine = u16::from_le_bytes([data[18], data[19]]);
            assert_eq!(machine, if arch == "amd64" { 62 } else { 183 }, "{arch}/{name}: ELF machine");
        }
        // etcdctl does not print the Git SHA (the linker drops it); etcd does.
        let data = fs::read(dir.join("etcd")).unwrap();
        let sha = common::ETCD_349_GITSHA.as_bytes();
        assert!(data.windows(sha.len()).any(|w| w == sha), "{arch}/etcd carries Git SHA {}", common::ETCD_349_GITSHA);
    }
    let host = common::etcd_349_dir(host_arch()).join("etcd");
    let version = run(&host, &["--version"]);
    assert!(version.contains("etcd Version: 3.4.9\n"), "{version}");
    assert!(version.contains(&format!("Git SHA: {}\n", common::ETCD_349_GITSHA)), "{version}");
}
