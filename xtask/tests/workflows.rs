//! The GitHub workflows: actionlint (from `ci/pypi-packages.txt`) passes them and fails a broken
//! one; they run the suite's and the release's own commands and hold no logic of their own; the
//! nightly soak runs the releases `images/etcd.toml` names.

mod common;
use common::{ok, pypi_tool, run};

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use xtask::util::project_root;

#[test]
fn workflows_pass_actionlint_call_cargo_xtask_and_a_broken_one_fails() {
    let (actionlint, _) = pypi_tool("actionlint");
    let root = project_root();
    let dir = root.join(".github/workflows");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    ok(Command::new(&actionlint).arg("-no-color").args(&files).current_dir(&root));

    // The workflows run the same commands as .ci/run and hold no logic of their own.
    let all: String = files.iter().map(|f| fs::read_to_string(f).unwrap()).collect();
    for cmd in [
        ".ci/run",
        "cargo xtask ci --deps-only",
        "cargo xtask release",
        "cargo xtask publish --registry",
        "sha256sum -c SHA256SUMS",
    ] {
        assert!(all.contains(cmd), "no workflow runs {cmd}");
    }
    for l in all.lines().map(str::trim).filter(|l| l.starts_with("run:")) {
        assert!(!l.ends_with('|'), "a multi-line script in a workflow: {l}");
    }
    // The nightly soak runs the release we ship and the one it upgrades to, as images/etcd.toml
    // says: a new version there without the workflow's fails here.
    let def: toml::Value = toml::from_str(&fs::read_to_string(root.join("images/etcd.toml")).unwrap()).unwrap();
    let want = format!(
        "etcd: [\"{}\", \"{}\"]",
        def["etcd"]["version"].as_str().unwrap(),
        def["upgrade"]["to"].as_str().unwrap()
    );
    let soak = fs::read_to_string(dir.join("soak.yml")).unwrap();
    assert!(soak.contains(&want), "soak.yml's matrix is not {want}");
    assert!(soak.contains("cargo xtask smoke --scenario soak --duration 30m"), "{soak}");

    // A mistake is caught: an undefined matrix key.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("ci.yml");
    let text = fs::read_to_string(dir.join("ci.yml")).unwrap().replace("${{ matrix.runner }}", "${{ matrix.runnr }}");
    fs::write(&broken, text).unwrap();
    let out = run(Command::new(&actionlint).arg("-no-color").arg(&broken));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("runnr"), "{out:?}");
}
