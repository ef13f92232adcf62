//! The `[image]` section of an image definition: what goes into the OCI image besides etcd.
//! In: TOML (users, groups, directories, small files, runtime config). Out: a checked
//! [`ImageSpec`]; every rule the image must keep (no setuid, nothing world-writable but
//! sticky directories, a non-root user, paths inside the image) is enforced here, before
//! any byte is written.
//!
//! Longer than 600 lines: the `[image]` section and every rule it is checked against are about 510
//! lines; the rest are unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// What the image contains and how it runs. See `images/etcd.toml` for a commented example.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Repository the image is named under, e.g. `localhost/etcd`; the tag is always the etcd
    /// version actually inside.
    pub name: String,
    /// `org.opencontainers.image.title`.
    pub title: String,
    /// `org.opencontainers.image.description`.
    pub description: String,
    /// `org.opencontainers.image.source`: where the packaged software's source lives.
    pub source: String,
    /// `org.opencontainers.image.licenses` (SPDX expression).
    pub licenses: String,
    /// gzip level of the layers, 0 (store) to 9 (smallest). Fixed per definition: it is part of
    /// the reproducible output.
    pub gzip_level: u32,
    /// The user the container runs as (a name from `users`); never uid 0.
    pub run_as: String,
    pub binaries: BinariesSpec,
    pub groups: Vec<GroupSpec>,
    pub users: Vec<UserSpec>,
    #[serde(default)]
    pub dirs: Vec<DirSpec>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    pub config: ConfigSpec,
}

/// Where the etcd binaries go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BinariesSpec {
    /// Directory in the image, e.g. `/usr/local/bin`.
    pub dir: String,
    /// Binaries that must be present in the acquired set.
    pub required: Vec<String>,
    /// Binaries shipped when the acquired set has them (etcdutl appears in 3.5).
    #[serde(default)]
    pub optional: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    pub gid: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: String,
    pub uid: u32,
    /// Primary group, by name.
    pub group: String,
    pub home: String,
    /// Must be a no-login shell: the image has no shell at all.
    pub shell: String,
    #[serde(default)]
    pub gecos: String,
}

/// A directory in the image with explicit owner and mode. Parent directories that are not
/// listed are created `root:root 0755`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirSpec {
    pub path: String,
    pub mode: Mode,
    #[serde(default = "root")]
    pub owner: String,
    #[serde(default = "root")]
    pub group: String,
}

/// A small text file written into the image.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: String,
    pub mode: Mode,
    #[serde(default = "root")]
    pub owner: String,
    #[serde(default = "root")]
    pub group: String,
    pub content: String,
}

/// The runtime part of the OCI image config (`User` comes from `run_as`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    pub working_dir: String,
    /// `PORT/tcp` or `PORT/udp`.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// Each volume must also be listed in `dirs`, so that a fresh volume gets its owner and mode.
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Extra labels; the `org.opencontainers.image.*` ones are computed and cannot be set here.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
}

fn root() -> String {
    "root".to_string()
}

/// A permission mode written as an octal string (`"0755"`, `"1777"`), so that a decimal
/// `755` cannot be mistaken for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Mode {
    pub const SETUID: u32 = 0o4000;
    pub const SETGID: u32 = 0o2000;
    pub const STICKY: u32 = 0o1000;
    pub const OTHER_WRITE: u32 = 0o002;

    pub fn parse(s: &str) -> Result<Mode> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            bail!("mode {s:?} is not an octal permission between \"0000\" and \"7777\" (write e.g. \"0755\")");
        }
        let v = u32::from_str_radix(digits, 8).with_context(|| format!("mode {s:?} is not octal"))?;
        Ok(Mode(v))
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an octal mode as a string, e.g. \"0755\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<Mode, E> {
                Mode::parse(s).map_err(|e| E::custom(format!("{e:#}")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Mode, E> {
                Err(E::custom(format!(
                    "mode {v} is a number; write it as an octal string, e.g. mode = \"0755\" (TOML 0o755 would also be misleading next to the others)"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// The kind of thing a path in the image is, for the world-writable rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
}

/// The hardening rule every entry of every layer keeps: no setuid/setgid, nothing
/// world-writable except directories with the sticky bit (like /tmp), no sticky files.
pub fn check_mode_policy(path: &str, kind: EntryKind, mode: u32) -> Result<()> {
    if mode > 0o7777 {
        bail!("{path}: mode {mode:o} is out of range (at most 7777)");
    }
    if mode & (Mode::SETUID | Mode::SETGID) != 0 {
        bail!("{path}: mode {mode:04o} sets setuid/setgid, which the image never ships: drop the 4000/2000 bits");
    }
    match kind {
        EntryKind::Dir => {
            if mode & Mode::OTHER_WRITE != 0 && mode & Mode::STICKY == 0 {
                bail!("{path}: directory mode {mode:04o} is world-writable without the sticky bit: use 1777 (like /tmp) or drop o+w");
            }
        }
        EntryKind::File => {
            if mode & Mode::OTHER_WRITE != 0 {
                bail!("{path}: file mode {mode:04o} is world-writable: drop o+w (e.g. 0644)");
            }
            if mode & Mode::STICKY != 0 {
                bail!("{path}: file mode {mode:04o} has the sticky bit, which means nothing on files: drop 1000");
            }
        }
    }
    Ok(())
}

/// An absolute, normalised path inside the image (`/etc/passwd`), not `/` itself.
/// Returns it without the leading slash, as it appears in a layer.
pub fn check_image_path(p: &str) -> Result<String> {
    let Some(rel) = p.strip_prefix('/') else {
        bail!("path {p:?} is not absolute: paths in the image start with '/', e.g. \"/etc/etcd\"");
    };
    if rel.is_empty() {
        bail!("path \"/\" is the image root, which is always root:root 0755: name a path below it");
    }
    for comp in rel.split('/') {
        if comp.is_empty() || comp == "." {
            bail!("path {p:?} is not normalised (empty or '.' component, or trailing '/'): write it like \"/var/lib/etcd\"");
        }
        if comp == ".." {
            bail!("path {p:?} is outside the image ('..' component): write the absolute path inside the image");
        }
    }
    if !rel.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("path {p:?} has spaces, control or non-ASCII characters: use plain ASCII names");
    }
    if rel.len() > 200 {
        bail!("path {p:?} is longer than 200 bytes, more than a plain tar header holds");
    }
    Ok(rel.to_string())
}

fn check_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        bail!("{kind} name {name:?} is not a portable name: lowercase letters, digits, '_' and '-', starting with a letter");
    }
    Ok(())
}

/// Shells that do not let anyone log in.
pub const NOLOGIN_SHELLS: [&str; 4] = ["/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false"];

/// Paths the engine generates itself; a definition cannot also declare them.
pub const GENERATED_FILES: [&str; 2] = ["/etc/passwd", "/etc/group"];

/// Label keys the engine computes (`org.opencontainers.image.*`).
pub const COMPUTED_LABEL_PREFIX: &str = "org.opencontainers.image.";

impl ImageSpec {
    /// Checks every rule; errors name the field and say how to fix it.
    pub fn check(&self) -> Result<()> {
        check_repository(&self.name).context("field image.name")?;
        for (field, v) in [
            ("title", &self.title),
            ("description", &self.description),
            ("source", &self.source),
            ("licenses", &self.licenses),
        ] {
            if v.trim().is_empty() {
                bail!("field image.{field} is empty: it becomes the org.opencontainers.image.{field} label");
            }
        }
        if self.gzip_level > 9 {
            bail!("field image.gzip_level = {} is out of range: use 0 (store) to 9 (smallest)", self.gzip_level);
        }

        let mut gids = BTreeSet::new();
        let mut group_names = BTreeSet::new();
        for g in &self.groups {
            check_name("group", &g.name).context("field image.groups")?;
            if !group_names.insert(g.name.as_str()) {
                bail!("field image.groups: group {:?} is listed twice", g.name);
            }
            if !gids.insert(g.gid) {
                bail!("field image.groups: gid {} is used by two groups", g.gid);
            }
        }
        let mut uids = BTreeSet::new();
        let mut user_names = BTreeSet::new();
        for u in &self.users {
            let ctx = || format!("field image.users (user {:?})", u.name);
            check_name("user", &u.name).with_context(ctx)?;
            if !user_names.insert(u.name.as_str()) {
                bail!("field image.users: user {:?} is listed twice", u.name);
            }
            if !uids.insert(u.uid) {
                bail!("field image.users: uid {} is used by two users", u.uid);
            }
            if !group_names.contains(u.group.as_str()) {
                bail!(
                    "field image.users: user {:?} has group {:?}, which is not in image.groups: add it there",
                    u.name,
                    u.group
                );
            }
            if !NOLOGIN_SHELLS.contains(&u.shell.as_str()) {
                bail!(
                    "field image.users: user {:?} has shell {:?}; the image allows no login shell: use one of {}",
                    u.name,
                    u.shell,
                    NOLOGIN_SHELLS.join(", ")
                );
            }
            check_image_path(&u.home).with_context(|| format!("field image.users (home of {:?})", u.name))?;
            if u.gecos.contains(':') || u.gecos.contains('\n') {
                bail!("field image.users: gecos of {:?} contains ':' or a newline", u.name);
            }
        }
        let run_as = self.user(&self.run_as).with_context(|| {
            format!("field image.run_as = {:?} is not in image.users: add the user or pick one of them", self.run_as)
        })?;
        if run_as.uid == 0 || self.gid_of(&run_as.group)? == 0 {
            bail!(
                "field image.run_as = {:?} has uid or gid 0; the image runs as a non-root user: pick another user",
                self.run_as
            );
        }

        check_image_path(&self.binaries.dir).context("field image.binaries.dir")?;
        if self.binaries.required.is_empty() {
            bail!("field image.binaries.required is empty: list at least \"etcd\"");
        }
        let mut bins = BTreeSet::new();
        for b in self.binaries.required.iter().chain(&self.binaries.optional) {
            if b.is_empty() || b.contains('/') || b.starts_with('.') {
                bail!("field image.binaries: {b:?} is not a plain file name like \"etcdctl\"");
            }
            if !bins.insert(b.as_str()) {
                bail!("field image.binaries: {b:?} is listed twice");
            }
        }

        let mut paths: BTreeSet<String> = GENERATED_FILES.iter().map(|p| p.to_string()).collect();
        for b in &bins {
            paths.insert(format!("{}/{b}", self.binaries.dir));
        }
        for (i, d) in self.dirs.iter().enumerate() {
            let ctx = || format!("field image.dirs[{i}] (path {:?})", d.path);
            check_image_path(&d.path).with_context(ctx)?;
            check_mode_policy(&d.path, EntryKind::Dir, d.mode.0).with_context(ctx)?;
            self.uid_of(&d.owner).with_context(ctx)?;
            self.gid_of(&d.group).with_context(ctx)?;
            if !paths.insert(d.path.clone()) {
                bail!("field image.dirs[{i}]: path {:?} is declared twice (or is a generated file)", d.path);
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            let ctx = || format!("field image.files[{i}] (path {:?})", f.path);
            check_image_path(&f.path).with_context(ctx)?;
            check_mode_policy(&f.path, EntryKind::File, f.mode.0).with_context(ctx)?;
            self.uid_of(&f.owner).with_context(ctx)?;
            self.gid_of(&f.group).with_context(ctx)?;
            if !paths.insert(f.path.clone()) {
                bail!(
                    "field image.files[{i}]: path {:?} is declared twice, or is generated by the engine ({})",
                    f.path,
                    GENERATED_FILES.join(", ")
                );
            }
        }
        // A file cannot be the parent of anything.
        let files: BTreeSet<&str> = self.files.iter().map(|f| f.path.as_str()).chain(GENERATED_FILES).collect();
        for p in &paths {
            for f in &files {
                if p.starts_with(&format!("{f}/")) {
                    bail!("field image: {p:?} lies below {f:?}, which is a file");
                }
            }
        }
        self.config.check(self).context("field image.config")?;
        Ok(())
    }

    pub fn user(&self, name: &str) -> Option<&UserSpec> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn uid_of(&self, name: &str) -> Result<u32> {
        match self.user(name) {
            Some(u) => Ok(u.uid),
            None => bail!("owner {name:?} is not in image.users: add the user or use one of them"),
        }
    }

    pub fn gid_of(&self, name: &str) -> Result<u32> {
        match self.groups.iter().find(|g| g.name == name) {
            Some(g) => Ok(g.gid),
            None => bail!("group {name:?} is not in image.groups: add the group or use one of them"),
        }
    }

    /// `uid:gid` of `run_as`, for the config's `User`.
    pub fn run_as_ids(&self) -> Result<(u32, u32)> {
        let u = self.user(&self.run_as).with_context(|| format!("image.run_as {:?} is not a user", self.run_as))?;
        Ok((u.uid, self.gid_of(&u.group)?))
    }

    /// `/etc/passwd` as generated from `users`.
    pub fn passwd(&self) -> Result<String> {
        let mut out = String::new();
        for u in &self.users {
            let gid = self.gid_of(&u.group)?;
            out.push_str(&format!("{}:x:{}:{}:{}:{}:{}\n", u.name, u.uid, gid, u.gecos, u.home, u.shell));
        }
        Ok(out)
    }

    /// `/etc/group` as generated from `groups` (members are the users whose primary group it is
    /// not; none here, so the member list stays empty).
    pub fn group(&self) -> String {
        self.groups.iter().map(|g| format!("{}:x:{}:\n", g.name, g.gid)).collect()
    }
}

impl ConfigSpec {
    fn check(&self, spec: &ImageSpec) -> Result<()> {
        if self.entrypoint.is_empty() {
            bail!("entrypoint is empty: name the program, e.g. [\"/usr/local/bin/etcd\"]");
        }
        check_image_path(&self.entrypoint[0]).context("entrypoint[0] must be an absolute path in the image")?;
        check_image_path(&self.working_dir).context("working_dir")?;
        for p in &self.exposed_ports {
            let (port, proto) = p.split_once('/').unwrap_or((p.as_str(), ""));
            let n: u32 = port.parse().unwrap_or(0);
            if !(1..=65535).contains(&n) || !matches!(proto, "tcp" | "udp") || port.starts_with('0') {
                bail!("exposed_ports: {p:?} is not PORT/tcp or PORT/udp with PORT in 1..65535 (e.g. \"2379/tcp\")");
            }
        }
        for v in &self.volumes {
            check_image_path(v).context("volumes")?;
            if !spec.dirs.iter().any(|d| &d.path == v) {
                bail!("volumes: {v:?} is not in image.dirs; add a [[image.dirs]] entry so that a fresh volume gets its owner and mode");
            }
        }
        for (k, v) in &self.env {
            let ok = k.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                bail!("env: {k:?} is not a variable name (letters, digits, '_')");
            }
            if v.contains('\0') {
                bail!("env: {k} contains a NUL byte");
            }
            if k.starts_with("ETCD_") {
                bail!(
                    "env: {k} would break every user who passes the matching flag (etcd 3.4 exits with \
                     \"conflicting environment variable {k:?} is shadowed by corresponding command-line flag\"): \
                     remove it; ETCD_UNSUPPORTED_ARCH comes from etcd.supported_arches"
                );
            }
        }
        for k in self.labels.keys() {
            if k.starts_with(COMPUTED_LABEL_PREFIX) {
                bail!("labels: {k:?} is computed by the engine (title, version, revision, source, licenses, created, description): set the image.* field instead");
            }
            if k.is_empty() {
                bail!("labels: an empty key is not allowed");
            }
        }
        if let Some(sig) = &self.stop_signal {
            if !sig.starts_with("SIG")
                || sig.len() < 5
                || !sig.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            {
                bail!("stop_signal {sig:?} is not a signal name like \"SIGTERM\"");
            }
        }
        Ok(())
    }
}

/// A repository name without tag: lowercase components separated by '/', the first may be a
/// registry host with a port.
pub fn check_repository(name: &str) -> Result<()> {
    if name.is_empty() {
        bail!("the image name is empty: use e.g. \"localhost/etcd\"");
    }
    let comps: Vec<&str> = name.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        let host_port = i == 0 && comps.len() > 1 && c.contains(':');
        let (c, port) = if host_port { c.split_once(':').unwrap_or((c, "")) } else { (*c, "") };
        let ok = !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
        if !ok || (host_port && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))) {
            if i == comps.len() - 1 && c.contains(':') {
                bail!(
                    "image name {name:?} has a tag; the tag is always the etcd version inside: drop ':{}'",
                    c.rsplit(':').next().unwrap_or("")
                );
            }
            bail!("image name {name:?} is not a repository name (lowercase letters, digits, '.', '_', '-', separated by '/'), e.g. \"localhost/etcd\"");
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn spec_from(toml_text: &str) -> Result<ImageSpec> {
        let spec: ImageSpec = toml::from_str(toml_text)?;
        spec.check()?;
        Ok(spec)
    }

    pub(crate) const MINIMAL: &str = r#"
name = "localhost/etcd"
title = "etcd"
description = "d"
source = "https://example.invalid/etcd"
licenses = "Apache-2.0"
gzip_level = 1
run_as = "etcd"
groups = [{ name = "root", gid = 0 }, { name = "etcd", gid = 10001 }]
users = [
  { name = "root", uid = 0, group = "root", home = "/root", shell = "/usr/sbin/nologin" },
  { name = "etcd", uid = 10001, group = "etcd", home = "/var/lib/etcd", shell = "/usr/sbin/nologin" },
]
[binaries]
dir = "/usr/local/bin"
required = ["etcd", "etcdctl"]
[[dirs]]
path = "/var/lib/etcd"
mode = "0700"
owner = "etcd"
group = "etcd"
[[dirs]]
path = "/tmp"
mode = "1777"
[config]
entrypoint = ["/usr/local/bin/etcd"]
working_dir = "/var/lib/etcd"
exposed_ports = ["2379/tcp"]
volumes = ["/var/lib/etcd"]
"#;

    fn err_of(replace: &str, with: &str) -> String {
        assert!(MINIMAL.contains(replace), "{replace}");
        format!("{:#}", spec_from(&MINIMAL.replacen(replace, with, 1)).unwrap_err())
    }

    #[test]
    fn minimal_spec_passes_and_generates_passwd() {
        let spec = spec_from(MINIMAL).unwrap();
        assert_eq!(spec.run_as_ids().unwrap(), (10001, 10001));
        assert_eq!(
            spec.passwd().unwrap(),
            "root:x:0:0::/root:/usr/sbin/nologin\netcd:x:10001:10001::/var/lib/etcd:/usr/sbin/nologin\n"
        );
        assert_eq!(spec.group(), "root:x:0:\netcd:x:10001:\n");
    }

    #[test]
    fn modes_parse_strictly() {
        assert_eq!(Mode::parse("0755").unwrap(), Mode(0o755));
        assert_eq!(Mode::parse("1777").unwrap(), Mode(0o1777));
        assert!(Mode::parse("17777").is_err());
        assert!(Mode::parse("0789").is_err());
        assert!(Mode::parse("").is_err());
        assert!(err_of("mode = \"0700\"", "mode = 700").contains("octal string"));
        assert!(err_of("mode = \"0700\"", "mode = \"70000\"").contains("between"));
    }

    #[test]
    fn hardening_rules_are_enforced() {
        assert!(err_of("mode = \"0700\"", "mode = \"4755\"").contains("setuid"));
        assert!(err_of("mode = \"1777\"", "mode = \"0777\"").contains("sticky"));
        assert!(err_of("run_as = \"etcd\"", "run_as = \"root\"").contains("non-root"));
        assert!(err_of("run_as = \"etcd\"", "run_as = \"nobody\"").contains("image.run_as"));
        assert!(err_of(
            "shell = \"/usr/sbin/nologin\" },\n  { name = \"etcd\"",
            "shell = \"/bin/sh\" },\n  { name = \"etcd\""
        )
        .contains("no login shell"));
        assert!(check_mode_policy("/x", EntryKind::File, 0o666).is_err());
        assert!(check_mode_policy("/x", EntryKind::File, 0o644).is_ok());
    }

    #[test]
    fn etcd_variables_in_the_image_config_are_refused() {
        let with_env = |env: &str| format!("{MINIMAL}[config.env]\n{env}\n");
        assert!(spec_from(&with_env("PATH = \"/usr/local/bin\"")).is_ok());
        let msg = format!("{:#}", spec_from(&with_env("ETCD_DATA_DIR = \"/var/lib/etcd\"")).unwrap_err());
        assert!(msg.contains("ETCD_DATA_DIR") && msg.contains("shadowed by corresponding command-line flag"), "{msg}");
    }

    #[test]
    fn paths_must_stay_inside_the_image() {
        let msg = err_of("path = \"/var/lib/etcd\"", "path = \"/var/../../etc\"");
        assert!(msg.contains("image.dirs[0]") && msg.contains("outside the image"), "{msg}");
        assert!(err_of("path = \"/var/lib/etcd\"", "path = \"var/lib/etcd\"").contains("not absolute"));
        assert!(err_of("path = \"/tmp\"", "path = \"/\"").contains("image root"));
        assert!(err_of("path = \"/tmp\"", "path = \"/tmp/\"").contains("normalised"));
        // The volume must be a declared directory.
        assert!(err_of("volumes = [\"/var/lib/etcd\"]", "volumes = [\"/data\"]").contains("image.dirs"));
    }

    #[test]
    fn unknown_fields_and_bad_names_are_rejected() {
        let msg = err_of("gzip_level = 1", "gzip_level = 1\ncolour = \"red\"");
        assert!(msg.contains("colour"), "{msg}");
        assert!(err_of("gzip_level = 1", "gzip_level = 12").contains("gzip_level"));
        assert!(err_of("name = \"localhost/etcd\"", "name = \"localhost/etcd:3.4\"").contains("tag"));
        assert!(err_of("name = \"localhost/etcd\"", "name = \"Etcd\"").contains("repository"));
        assert!(check_repository("localhost:5000/etcd").is_ok());
        assert!(err_of("\"2379/tcp\"", "\"2379\"").contains("PORT/tcp"));
    }
}
