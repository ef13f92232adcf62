//! The host the suite is proven on. In: this host's `/etc/os-release`, architecture,
//! `/proc/self/mountinfo` and the dockerds on PATH. Out: [`preflight`] prints those facts at the
//! start of `cargo xtask ci`, one line each, and a WARNING block naming each way the host differs
//! from [`PROVEN_HOST`], the only host the suite has passed on, with what is known to break there.
//! It warns and never fails the run: a check that cannot run fails by itself, with its reason.
//! The detection functions are pure over their inputs and unit-tested.

use std::fs;
use std::process::Command;

/// The host the suite has run on and passed, and so the only one its proof covers (README,
/// "Which hosts the suite is proven on"): Debian 12 (bookworm), amd64, hybrid cgroups (v1
/// controllers and a unified hierarchy), Debian's docker.io 20.10 as the dockerd on PATH.
/// [`preflight`] compares this host with it at the start of `cargo xtask ci`, and names every
/// difference with what is known to break there.
pub const PROVEN_HOST: ProvenHost = ProvenHost {
    os_id: "debian",
    os_version_id: "12",
    arch: "amd64",
    cgroups: CgroupLayout::Hybrid,
    docker_release: "20.10",
    docker_build: "+dfsg",
};

/// The facts of a host the suite's proof depends on, as [`PROVEN_HOST`] holds them.
#[derive(Debug, Clone, Copy)]
pub struct ProvenHost {
    /// `ID` and `VERSION_ID` of `/etc/os-release`.
    pub os_id: &'static str,
    pub os_version_id: &'static str,
    /// Debian's name of the architecture.
    pub arch: &'static str,
    pub cgroups: CgroupLayout,
    /// The Docker release of every dockerd on PATH (`dockerd --version`)...
    pub docker_release: &'static str,
    /// ...and the mark of Debian's build in its version (`20.10.24+dfsg1`).
    pub docker_build: &'static str,
}

/// The same facts of this host ([`host_facts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    /// `ID` and `VERSION_ID` of `/etc/os-release`, empty when absent.
    pub os_id: String,
    pub os_version_id: String,
    pub arch: String,
    pub cgroups: CgroupLayout,
    /// Every dockerd on PATH (the first is the one the docker test uses), with the version its
    /// `--version` says.
    pub dockerds: Vec<(String, Option<String>)>,
}

/// The layout of the host's cgroups, as `/proc/self/mountinfo` shows `/sys/fs/cgroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupLayout {
    /// v1 hierarchies only: a tmpfs of them, no unified one.
    V1,
    /// v1 controllers in a tmpfs, and the unified (v2) hierarchy at `/sys/fs/cgroup/unified`.
    Hybrid,
    /// The unified hierarchy alone, mounted at `/sys/fs/cgroup` (cgroup2fs).
    V2,
    /// Nothing mounted at `/sys/fs/cgroup`.
    Unmounted,
}

impl CgroupLayout {
    fn name(self) -> &'static str {
        match self {
            CgroupLayout::V1 => "v1",
            CgroupLayout::Hybrid => "hybrid",
            CgroupLayout::V2 => "v2",
            CgroupLayout::Unmounted => "none",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            CgroupLayout::V1 => "v1 (v1 hierarchies only)",
            CgroupLayout::Hybrid => "hybrid (v1 controllers, the unified hierarchy at /sys/fs/cgroup/unified)",
            CgroupLayout::V2 => "v2 (the unified hierarchy only, at /sys/fs/cgroup)",
            CgroupLayout::Unmounted => "none (nothing mounted at /sys/fs/cgroup)",
        }
    }
}

/// `ID` and `VERSION_ID` of an os-release file's text, unquoted (empty when absent).
pub fn os_release(text: &str) -> (String, String) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
            .unwrap_or_default()
    };
    (field("ID"), field("VERSION_ID"))
}

/// Debian's name of a Rust architecture name (`std::env::consts::ARCH`).
pub fn debian_arch(rust_arch: &str) -> String {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64el",
        other => other,
    }
    .to_string()
}

/// The cgroup layout a `/proc/self/mountinfo` text shows: `/sys/fs/cgroup` a cgroup2 mount is
/// v2; a tmpfs there with a cgroup2 mount at `/sys/fs/cgroup/unified` is hybrid; any other
/// mount there is v1. The last mount at a point is the one seen.
pub fn cgroup_layout(mountinfo: &str) -> CgroupLayout {
    let fstype_at = |point: &str| {
        mountinfo.lines().rev().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (pre.split_whitespace().nth(4)? == point).then(|| post.split_whitespace().next())?
        })
    };
    match (fstype_at("/sys/fs/cgroup"), fstype_at("/sys/fs/cgroup/unified")) {
        (None, _) => CgroupLayout::Unmounted,
        (Some("cgroup2"), _) => CgroupLayout::V2,
        (Some(_), Some("cgroup2")) => CgroupLayout::Hybrid,
        (Some(_), _) => CgroupLayout::V1,
    }
}

/// The version in `dockerd --version`'s output (`Docker version 20.10.24+dfsg1, build 5d6db84`).
pub fn docker_version(output: &str) -> Option<String> {
    let v = output.trim().strip_prefix("Docker version ")?.split(',').next()?.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// Each way `host` differs from `proven`, with what is known to break there; empty on the
/// proven host. No dockerd on PATH is no difference: the install step brings docker.io.
pub fn differences(host: &HostFacts, proven: &ProvenHost) -> Vec<String> {
    let mut out = Vec::new();
    let (id, version) = (host.os_id.as_str(), host.os_version_id.as_str());
    if (id, version) != (proven.os_id, proven.os_version_id) {
        let mut why = format!(
            "OS {id} {version}, not {} {}: ci/debian-packages.txt names Debian 12's packages, and another release's \
             names and versions differ (the docker test needs Debian 12's docker.io 20.10)",
            proven.os_id, proven.os_version_id
        );
        if id != "debian" {
            why += "; the nspawn tests build a Debian root with mmdebstrap from the host's first apt mirror, no \
                    Debian one here (set XTASK_DEBIAN_MIRROR to one, with debian-archive-keyring installed)";
        }
        out.push(why);
    }
    if host.arch != proven.arch {
        out.push(format!(
            "architecture {}, not {}: the suite has never run on it, so what breaks there is not known (the arm64 \
             image is proven only under qemu on amd64)",
            host.arch, proven.arch
        ));
    }
    if host.cgroups != proven.cgroups {
        let why = match host.cgroups {
            CgroupLayout::V2 => {
                "podman runs without --runtime runc (xtask/src/image/podman.rs), systemd-nspawn machines get \
                 cgroups in the unified hierarchy only, dockerd runs on cgroup v2: the suite has run none of this"
            }
            CgroupLayout::V1 => "systemd-nspawn machines get cgroups in systemd's v1 hierarchy only: never run",
            CgroupLayout::Hybrid => "the suite has never run on it",
            CgroupLayout::Unmounted => "podman, docker and systemd-nspawn cannot start containers or machines here",
        };
        out.push(format!("cgroups {}, not {}: {why}", host.cgroups.name(), proven.cgroups.name()));
    }
    let release = proven.docker_release;
    for (i, (path, version)) in host.dockerds.iter().enumerate() {
        // The docker test uses the first dockerd on PATH.
        let used = if i == 0 { "the docker test uses it (the first on PATH)" } else { "it is not the first on PATH" };
        match version {
            None => out.push(format!(
                "dockerd {path} does not say its version (`--version`); {used}, and needs Docker {release}"
            )),
            Some(v) if !v.starts_with(&format!("{release}.")) => out.push(format!(
                "dockerd {path} is Docker {v}, not {release}; {used}, and fails on any Docker but {release} (Docker 25 \
                 and later read index.json and would load an archive without manifest.json); apt's docker.io, \
                 installed beside it, conflicts with the packages that brought it"
            )),
            Some(v) if !v.contains(proven.docker_build) => out.push(format!(
                "dockerd {path} is Docker {v}, a {release} but not Debian's build; {used}: it accepts any {release}, \
                 but the suite has never run with this one"
            )),
            Some(_) => {}
        }
    }
    out
}

/// What [`preflight`] prints: a line for each fact of `host`, then, when it differs from
/// `proven`, a WARNING block naming each difference.
pub fn preflight_text(host: &HostFacts, proven: &ProvenHost) -> String {
    let or_unknown = |s: &str| if s.is_empty() { "unknown".to_string() } else { s.to_string() };
    let mut lines = vec![
        format!("OS {} {} (/etc/os-release ID, VERSION_ID)", or_unknown(&host.os_id), or_unknown(&host.os_version_id)),
        format!("architecture {}", host.arch),
        format!("cgroups {}", host.cgroups.describe()),
    ];
    if host.dockerds.is_empty() {
        lines.push("dockerd: none on PATH".to_string());
    }
    for (path, version) in &host.dockerds {
        lines.push(format!("dockerd {path}: Docker {}", version.as_deref().unwrap_or("of no version it says")));
    }
    let mut text: String = lines.iter().map(|l| format!("ci: host: {l}\n")).collect();
    let proven_set = format!(
        "{} {}, {}, {} cgroups, Debian's docker.io {}",
        proven.os_id,
        proven.os_version_id,
        proven.arch,
        proven.cgroups.name(),
        proven.docker_release
    );
    let diffs = differences(host, proven);
    if diffs.is_empty() {
        return text + &format!("ci: host: the host the suite is proven on ({proven_set})\n");
    }
    let rule = format!("ci: {}\n", "=".repeat(96));
    text += &rule;
    text += &format!(
        "ci: WARNING: the suite is proven only on {proven_set} (README, \"Which hosts the suite is proven on\").\n\
         ci: WARNING: this host differs in {} way(s), each known to break or never run:\n",
        diffs.len()
    );
    for d in diffs {
        text += &format!("ci: WARNING:  - {d}\n");
    }
    text += "ci: WARNING: a failure below may be this host's, not the code's. The run goes on.\n";
    text + &rule
}

/// This host's facts: `/etc/os-release`, the architecture `cargo xtask` was built for (natively,
/// by cargo), `/proc/self/mountinfo`, and every dockerd on PATH (`--version`).
pub fn host_facts() -> HostFacts {
    let os = fs::read_to_string("/etc/os-release").or_else(|_| fs::read_to_string("/usr/lib/os-release"));
    let (os_id, os_version_id) = os_release(&os.unwrap_or_default());
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let (mut seen, mut dockerds) = (Vec::new(), Vec::new());
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dockerd in std::env::split_paths(&path).map(|dir| dir.join("dockerd")) {
        // /sbin and /usr/sbin are one directory on a merged-/usr system: each program once.
        let Ok(real) = fs::canonicalize(&dockerd) else { continue };
        if !real.is_file() || seen.contains(&real) {
            continue;
        }
        seen.push(real);
        let out = Command::new(&dockerd).arg("--version").output();
        let version = out.ok().and_then(|o| docker_version(&String::from_utf8_lossy(&o.stdout)));
        dockerds.push((dockerd.display().to_string(), version));
    }
    HostFacts {
        os_id,
        os_version_id,
        arch: debian_arch(std::env::consts::ARCH),
        cgroups: cgroup_layout(&mountinfo),
        dockerds,
    }
}

/// Prints this host's facts the suite's proof depends on, one line each, and a WARNING block
/// naming each way it differs from [`PROVEN_HOST`]. It never fails the run: a check that cannot
/// run here fails by itself, with its reason.
pub fn preflight() {
    eprint!("{}", preflight_text(&host_facts(), &PROVEN_HOST));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This host's facts as the proven host gives them.
    fn proven() -> HostFacts {
        HostFacts {
            os_id: "debian".into(),
            os_version_id: "12".into(),
            arch: "amd64".into(),
            cgroups: CgroupLayout::Hybrid,
            dockerds: vec![("/usr/sbin/dockerd".into(), Some("20.10.24+dfsg1".into()))],
        }
    }

    #[test]
    fn os_release_gives_id_and_version_id_unquoted() {
        let debian =
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nID=debian\n";
        assert_eq!(os_release(debian), ("debian".into(), "12".into()));
        let ubuntu = "ID_LIKE=debian\nVERSION_ID=\"24.04\"\nID=ubuntu\n";
        assert_eq!(os_release(ubuntu), ("ubuntu".into(), "24.04".into()));
        assert_eq!(os_release("ID=debian\n"), ("debian".into(), String::new()), "Debian testing has no VERSION_ID");
        assert_eq!(debian_arch("x86_64"), "amd64");
        assert_eq!(debian_arch("aarch64"), "arm64");
    }

    #[test]
    fn cgroup_layouts_are_told_apart_by_their_mounts() {
        let tmpfs = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n";
        let v1 = format!("{tmpfs}32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n");
        let hybrid = format!("{v1}41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n");
        let v2 = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup_layout(&hybrid), CgroupLayout::Hybrid);
        assert_eq!(cgroup_layout(&v1), CgroupLayout::V1);
        assert_eq!(cgroup_layout(v2), CgroupLayout::V2);
        assert_eq!(cgroup_layout(&format!("{tmpfs}{v2}")), CgroupLayout::V2, "the last mount at a point is seen");
        assert_eq!(cgroup_layout("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"), CgroupLayout::Unmounted);
    }

    #[test]
    fn docker_versions_are_read_from_dockerd_version() {
        assert_eq!(docker_version("Docker version 20.10.24+dfsg1, build 5d6db84\n").as_deref(), Some("20.10.24+dfsg1"));
        assert_eq!(docker_version("Docker version 28.0.4, build 6430e49").as_deref(), Some("28.0.4"));
        assert_eq!(docker_version("dockerd: unknown flag"), None);
    }

    /// The proven host has no difference; each kind of difference is named with what breaks.
    #[test]
    fn each_difference_from_the_proven_host_is_named_with_what_breaks() {
        assert_eq!(differences(&proven(), &PROVEN_HOST), Vec::<String>::new());
        let differ = |change: &dyn Fn(&mut HostFacts)| {
            let mut host = proven();
            change(&mut host);
            differences(&host, &PROVEN_HOST)
        };
        let one = |change: &dyn Fn(&mut HostFacts), want: &[&str]| {
            let diffs = differ(change);
            assert_eq!(diffs.len(), 1, "one difference naming {want:?} expected: {diffs:#?}");
            for w in want {
                assert!(diffs[0].contains(w), "{w:?} missing: {}", diffs[0]);
            }
        };
        let ubuntu = |h: &mut HostFacts| (h.os_id, h.os_version_id) = ("ubuntu".into(), "24.04".into());
        one(
            &ubuntu,
            &["OS ubuntu 24.04, not debian 12", "ci/debian-packages.txt", "mmdebstrap", "XTASK_DEBIAN_MIRROR"],
        );
        let trixie = |h: &mut HostFacts| h.os_version_id = "13".into();
        one(&trixie, &["OS debian 13, not debian 12", "names and versions differ"]);
        assert!(!differ(&trixie)[0].contains("XTASK_DEBIAN_MIRROR"), "a Debian host's first mirror is Debian's");
        one(&|h| h.arch = "arm64".into(), &["architecture arm64, not amd64: the suite has never run on it"]);
        one(&|h| h.cgroups = CgroupLayout::V2, &["cgroups v2, not hybrid", "--runtime runc", "unified hierarchy only"]);
        one(&|h| h.cgroups = CgroupLayout::V1, &["cgroups v1, not hybrid", "never run"]);
        one(&|h| h.cgroups = CgroupLayout::Unmounted, &["cgroups none, not hybrid", "cannot start"]);
        let docker = |v: Option<&'static str>| move |h: &mut HostFacts| h.dockerds[0].1 = v.map(str::to_string);
        let first = "the docker test uses it (the first on PATH)";
        let new = ["dockerd /usr/sbin/dockerd is Docker 28.0.4, not 20.10", first, "fails on any Docker but 20.10"];
        one(&docker(Some("28.0.4")), &[new.as_slice(), &["docker.io, installed beside it, conflicts"]].concat());
        one(&docker(None), &["/usr/sbin/dockerd does not say its version", first, "needs Docker 20.10"]);
        one(&docker(Some("20.10.24")), &["a 20.10 but not Debian's build", first, "never run with this one"]);
        let second = |h: &mut HostFacts| h.dockerds.push(("/usr/local/bin/dockerd".into(), Some("28.0.4".into())));
        one(&second, &["/usr/local/bin/dockerd is Docker 28.0.4, not 20.10; it is not the first on PATH"]);
        assert!(differ(&|h| h.dockerds.clear()).is_empty(), "no dockerd yet: the install step brings docker.io");
    }

    #[test]
    fn the_preflight_prints_each_fact_and_warns_loudly_off_the_proven_host() {
        let fine = preflight_text(&proven(), &PROVEN_HOST);
        assert!(!fine.contains("WARNING"), "{fine}");
        for line in [
            "ci: host: OS debian 12 (/etc/os-release ID, VERSION_ID)\n",
            "ci: host: architecture amd64\n",
            "ci: host: cgroups hybrid (v1 controllers, the unified hierarchy at /sys/fs/cgroup/unified)\n",
            "ci: host: dockerd /usr/sbin/dockerd: Docker 20.10.24+dfsg1\n",
            "ci: host: the host the suite is proven on (debian 12, amd64, hybrid cgroups, Debian's docker.io 20.10)\n",
        ] {
            assert!(fine.contains(line), "{line:?} missing:\n{fine}");
        }
        // GitHub's arm64 Ubuntu runner, as the issue lists it.
        let runner = HostFacts {
            os_id: "ubuntu".into(),
            os_version_id: "24.04".into(),
            arch: "arm64".into(),
            cgroups: CgroupLayout::V2,
            dockerds: vec![("/usr/bin/dockerd".into(), Some("28.0.4".into()))],
        };
        let warned = preflight_text(&runner, &PROVEN_HOST);
        assert!(
            warned.contains(
                "ci: WARNING: the suite is proven only on debian 12, amd64, hybrid cgroups, Debian's docker.io 20.10 \
                 (README, \"Which hosts the suite is proven on\").\nci: WARNING: this host differs in 4 way(s)"
            ),
            "{warned}"
        );
        for d in differences(&runner, &PROVEN_HOST) {
            assert!(warned.contains(&format!("ci: WARNING:  - {d}\n")), "{d} missing:\n{warned}");
        }
        assert!(warned.contains("The run goes on."), "{warned}");
    }
}
