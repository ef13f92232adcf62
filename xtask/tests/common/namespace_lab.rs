//! A shell driver run in a network and mount namespace of the test's own (`unshare --net
//! --mount`): the given addresses on its loopback interface, `/etc` and `/usr/local` overlaid so
//! that a bundle can be installed where INSTALL.md says while the host's stay unchanged. The
//! driver writes its trace to `driver.log` and what it measured as `NAME VALUE...` lines to
//! `results`, both in the lab's directory; its last line says `DRIVER-DONE`.
//! Used by the tests that run etcd 3.4.9 from render's host bundle (auth, backup, revoke).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What every lab test starts with: the tools it needs (a missing one fails the test with the
/// reason), etcd v3.4.9 built for this machine, and a directory of its own. Returns the
/// directory (removed when dropped) and etcd's binaries' directory.
pub fn with_etcd_349(tools: &[&str]) -> (tempfile::TempDir, PathBuf) {
    for tool in tools {
        super::require(tool);
    }
    let arch = super::host_arch();
    super::build_etcd_349(&[arch]);
    (tempfile::tempdir().unwrap(), super::etcd_349_dir(arch))
}

pub struct Lab {
    pub dir: PathBuf,
}

impl Lab {
    /// A lab in `dir`, with the overlays' directories made.
    pub fn new(dir: &Path) -> Lab {
        for d in ["etc-up", "etc-work", "local-up", "local-work"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        Lab { dir: dir.to_path_buf() }
    }

    /// The driver's first lines: `T` the lab's directory, strict shell (`set -e` until the body
    /// says otherwise), the trace into driver.log, loopback up with `addrs`, the overlays.
    pub fn prelude(&self, addrs: &[&str]) -> String {
        let mut s = format!(
            "set -uo pipefail\nT={}\nexec > $T/driver.log 2>&1\nset -x\nset -e\nip link set lo up\n",
            self.dir.display()
        );
        for a in addrs {
            s.push_str(&format!("ip addr add {a}/32 dev lo\n"));
        }
        s.push_str(
            "mount -t overlay overlay -o lowerdir=/etc,upperdir=$T/etc-up,workdir=$T/etc-work /etc\n\
             mount -t overlay overlay -o lowerdir=/usr/local,upperdir=$T/local-up,workdir=$T/local-work /usr/local\n",
        );
        s
    }

    /// Runs `driver` (which starts with [`Lab::prelude`]) for at most `timeout_s` seconds, and
    /// fails the test, quoting the driver's log and `extra_logs`, if it did not reach its end.
    pub fn run(&self, driver: &str, timeout_s: u32, extra_logs: &[&str]) -> Output {
        let file = self.dir.join("driver.sh");
        fs::write(&file, format!("{driver}\necho DRIVER-DONE\n")).unwrap();
        let out = Command::new("timeout")
            .arg(timeout_s.to_string())
            .args(["unshare", "--net", "--mount", "--propagation", "private", "bash"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            self.read("driver.log").contains("DRIVER-DONE"),
            "the driver did not finish:\n{out:?}\n{}",
            self.logs(extra_logs)
        );
        out
    }

    /// A file of the lab, or "" when there is none.
    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// The driver's log and the last 40 lines of each of `extra`, for a failure's message.
    pub fn logs(&self, extra: &[&str]) -> String {
        let mut s = format!("----- driver -----\n{}", self.read("driver.log"));
        for name in extra {
            let text = self.read(name);
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!("\n----- {name} (tail) -----\n{}", lines[lines.len().saturating_sub(40)..].join("\n")));
        }
        s
    }

    /// The values of result `name`: the words after it on its line of `results`.
    pub fn result(&self, name: &str) -> Vec<String> {
        let results = self.read("results");
        results
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")).or_else(|| (l == name).then_some("")))
            .unwrap_or_else(|| panic!("no result {name}:\n{results}\n{}", self.logs(&[])))
            .split_whitespace()
            .map(String::from)
            .collect()
    }
}
