//! What the tests of `cargo xtask smoke` on podman share: the real binary (never the official
//! download location), a cluster description of a test's own, and the check that a run left
//! nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The real xtask binary, told not to try the official download location (offline CI).
pub fn xtask() -> Command {
    let mut cmd = Command::new(super::XTASK);
    cmd.env("XTASK_NO_OFFICIAL", "1");
    cmd
}

/// The podman resources of `kind` labelled as cluster `cluster`'s.
pub fn labelled(kind: &[&str], cluster: &str) -> String {
    let mut args: Vec<&str> = kind.to_vec();
    let filter = format!("label=xtask.smoke={cluster}");
    args.extend(["-q", "--filter", &filter]);
    let out = Command::new("podman").args(&args).output().expect("podman runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// No pod, container, volume or network of cluster `cluster` is left.
pub fn nothing_left(cluster: &str) {
    assert_eq!(labelled(&["pod", "ps"], cluster), "", "pods left behind");
    assert_eq!(labelled(&["ps", "-a"], cluster), "", "containers left behind");
    assert_eq!(labelled(&["volume", "ls"], cluster), "", "volumes left behind");
    assert_eq!(labelled(&["network", "ls"], cluster), "", "networks left behind");
}

/// `clusters/smoke.toml` as cluster `name` on 10.89.`octet`.0/24, written into `dir`.
pub fn cluster_of_its_own(dir: &Path, name: &str, octet: u8) -> PathBuf {
    let text = std::fs::read_to_string(super::root().join("clusters/smoke.toml")).unwrap();
    assert!(text.contains("name = \"smoke\"") && text.contains("10.89.77."), "{text}");
    let text = text
        .replace("name = \"smoke\"", &format!("name = \"{name}\""))
        .replace("10.89.77.", &format!("10.89.{octet}."));
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    file
}
