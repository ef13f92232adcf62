//! A running cluster's users, roles and auth switch, read and changed through etcdctl (gRPC:
//! once auth is on, etcd's JSON gateway ignores a client certificate's CN, so only gRPC acts as
//! an identity). In: the etcdctl to run, the endpoints and the acting identity's files. Out:
//! [`Live`], the [`Step`]s from it to the file's [`Desired`], and their execution.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::roles::{Desired, Perm, ROOT};

/// The user name `auth check` tries to log in as, with a password, to learn whether auth is on:
/// etcd answers "authentication is not enabled" when it is off (the command then goes on), and
/// refuses the login when it is on (etcd logs it as an invalid authentication of this name).
pub const PROBE_USER: &str = "xtask-auth-probe";

/// etcdctl, set up to act as one identity against the cluster.
pub struct Etcdctl {
    program: OsString,
    pre_args: Vec<OsString>,
    endpoints: String,
    /// The identity's `ca.crt`, `client.crt` and `client.key`.
    identity: PathBuf,
}

impl Etcdctl {
    /// `base`: how to start etcdctl (a loader command for a binary that carries its C library).
    pub fn new(base: &Command, endpoints: &[String], identity: &Path) -> Etcdctl {
        Etcdctl {
            program: base.get_program().to_owned(),
            pre_args: base.get_args().map(|a| a.to_owned()).collect(),
            endpoints: endpoints.join(","),
            identity: identity.to_path_buf(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.pre_args);
        // etcdctl 3.4 refuses a flag its environment also sets: the caller's ETCDCTL_* go.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCDCTL_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints))
            .arg(format!("--cacert={}", self.identity.join("ca.crt").display()))
            .arg(format!("--cert={}", self.identity.join("client.crt").display()))
            .arg(format!("--key={}", self.identity.join("client.key").display()))
            .args(["--dial-timeout=5s", "--command-timeout=15s"]);
        cmd
    }

    /// Runs `etcdctl ARGS`; its stdout, or an error with etcd's reason.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command()
            .args(args)
            .output()
            .with_context(|| format!("cannot run {}", self.program.to_string_lossy()))?;
        if !out.status.success() {
            bail!(
                "etcdctl {} (at {}): {}",
                args.join(" "),
                self.endpoints,
                String::from_utf8_lossy(&out.stderr).trim().trim_start_matches("Error: ")
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.push("-w");
        all.push("json");
        let text = self.run(&all)?;
        serde_json::from_str(text.trim()).with_context(|| format!("etcdctl {}: not JSON: {text}", args.join(" ")))
    }

    /// Whether auth is on (see [`PROBE_USER`]).
    pub fn auth_enabled(&self) -> Result<bool> {
        let out = self
            .command()
            .arg(format!("--user={PROBE_USER}:-"))
            .args(["get", "--keys-only", PROBE_USER])
            .output()
            .with_context(|| format!("cannot run {}", self.program.to_string_lossy()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            Ok(false)
        } else if stderr.contains("authentication failed") {
            Ok(true)
        } else {
            bail!("cannot learn whether auth is on (at {}): {}", self.endpoints, stderr.trim())
        }
    }
}

/// What the cluster holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    pub enabled: bool,
    pub users: BTreeMap<String, BTreeSet<String>>,
    pub roles: BTreeMap<String, BTreeSet<Perm>>,
}

fn names(v: &serde_json::Value, field: &str) -> Vec<String> {
    v[field].as_array().map(|a| a.iter().filter_map(|n| n.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// etcd's permission types, as its JSON numbers them (READ = 0 is left out by omitempty).
fn kind_of(n: u64) -> Result<&'static str> {
    Ok(match n {
        0 => "read",
        1 => "write",
        2 => "readwrite",
        other => bail!("unknown permission type {other}"),
    })
}

impl Live {
    /// Reads every user and role (the `root` role is etcd's own and is not listed).
    pub fn read(etcdctl: &Etcdctl) -> Result<Live> {
        let enabled = etcdctl.auth_enabled()?;
        let mut live = Live { enabled, ..Live::default() };
        for user in names(&etcdctl.json(&["user", "list"])?, "users") {
            let roles = names(&etcdctl.json(&["user", "get", &user])?, "roles");
            live.users.insert(user, roles.into_iter().collect());
        }
        for role in names(&etcdctl.json(&["role", "list"])?, "roles") {
            if role == ROOT {
                continue;
            }
            let got = etcdctl.json(&["role", "get", &role])?;
            let mut perms = BTreeSet::new();
            for p in got["perm"].as_array().into_iter().flatten() {
                let bytes = |f: &str| -> Result<Vec<u8>> {
                    B64.decode(p[f].as_str().unwrap_or_default())
                        .with_context(|| format!("role {role}: {f} not base64"))
                };
                perms.insert(Perm {
                    kind: kind_of(p["permType"].as_u64().unwrap_or(0))?,
                    key: bytes("key")?,
                    range_end: bytes("range_end")?,
                });
            }
            live.roles.insert(role, perms);
        }
        Ok(live)
    }
}

/// One change: what it does, in words, and etcdctl's arguments for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub what: String,
    pub args: Vec<String>,
}

fn step(what: String, args: &[&str]) -> Step {
    Step { what, args: args.iter().map(|a| a.to_string()).collect() }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The changes from `live` to `want`, in a safe order: what is granted comes before what is
/// taken away, and auth is enabled last, once the root user holds the root role.
pub fn plan(want: &Desired, live: &Live) -> Vec<Step> {
    let mut steps = Vec::new();
    let empty = BTreeSet::new();
    for (role, perms) in &want.roles {
        let have = live.roles.get(role);
        if have.is_none() {
            steps.push(step(format!("role {role}: missing, add it"), &["role", "add", role]));
        }
        for p in perms {
            if !have.unwrap_or(&empty).contains(p) {
                let (key, end) = (lossy(&p.key), lossy(&p.range_end));
                steps.push(step(
                    format!("role {role}: lacks {}, grant it", p.describe()),
                    &["role", "grant-permission", role, p.kind, &key, &end],
                ));
            }
        }
    }
    let no_roles = BTreeSet::new();
    for (user, roles) in &want.users {
        let have = live.users.get(user);
        if have.is_none() {
            steps.push(step(
                format!("user {user}: missing, add it without a password (its certificate's CN is its name)"),
                &["user", "add", user, "--no-password"],
            ));
        }
        for r in roles.difference(have.unwrap_or(&no_roles)) {
            steps.push(step(format!("user {user}: lacks role {r}, grant it"), &["user", "grant-role", user, r]));
        }
    }
    for (user, roles) in &want.users {
        for r in live.users.get(user).unwrap_or(&no_roles).difference(roles) {
            steps.push(step(
                format!("user {user}: has role {r}, which the file does not give it; revoke it"),
                &["user", "revoke-role", user, r],
            ));
        }
    }
    for (role, perms) in &want.roles {
        for p in live.roles.get(role).unwrap_or(&empty) {
            if !perms.iter().any(|w| (&w.key, &w.range_end) == (&p.key, &p.range_end)) {
                let (key, end) = (lossy(&p.key), lossy(&p.range_end));
                steps.push(step(
                    format!("role {role}: has {}, which the file does not give it; revoke it", p.describe()),
                    &["role", "revoke-permission", role, &key, &end],
                ));
            }
        }
    }
    for user in live.users.keys().filter(|u| !want.users.contains_key(*u)) {
        steps.push(step(format!("user {user}: not in the file, delete it"), &["user", "delete", user]));
    }
    for role in live.roles.keys().filter(|r| !want.roles.contains_key(*r)) {
        steps.push(step(format!("role {role}: not in the file, delete it"), &["role", "delete", role]));
    }
    if !live.enabled {
        steps.push(step("auth: off, enable it".into(), &["auth", "enable"]));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::roles::Access;

    fn desired() -> Desired {
        let table: toml::Table =
            toml::from_str("etcdctl = \"root\"\napi = { readwrite = [\"/registry/\"] }\nprom = \"none\"").unwrap();
        Access::check(Some(&table), &["etcdctl".into(), "api".into(), "prom".into()]).unwrap().unwrap().desired()
    }

    fn whats(steps: &[Step]) -> Vec<&str> {
        steps.iter().map(|s| s.what.as_str()).collect()
    }

    #[test]
    fn from_nothing_everything_is_added_and_auth_enabled_last() {
        let steps = plan(&desired(), &Live::default());
        let args: Vec<String> = steps.iter().map(|s| s.args.join(" ")).collect();
        assert_eq!(
            args,
            [
                "role add api",
                "role grant-permission api readwrite /registry/ /registry0",
                "user add api --no-password",
                "user grant-role api api",
                "user add etcdctl --no-password",
                "user grant-role etcdctl root",
                "user add root --no-password",
                "user grant-role root root",
                "auth enable",
            ]
        );
    }

    #[test]
    fn applied_means_no_step_and_strays_are_removed() {
        let want = desired();
        let live = Live { enabled: true, users: want.users.clone(), roles: want.roles.clone() };
        assert!(plan(&want, &live).is_empty());
        let mut stray = live.clone();
        stray.users.insert("old".into(), BTreeSet::from(["old".into()]));
        stray.roles.insert("old".into(), BTreeSet::new());
        stray.users.get_mut("api").unwrap().insert("old".into());
        stray.roles.get_mut("api").unwrap().insert(Perm::prefix("read", "/other/"));
        assert_eq!(
            whats(&plan(&want, &stray)),
            [
                "user api: has role old, which the file does not give it; revoke it",
                "role api: has read /other/*, which the file does not give it; revoke it",
                "user old: not in the file, delete it",
                "role old: not in the file, delete it",
            ]
        );
    }

    #[test]
    fn a_changed_kind_is_granted_again() {
        let want = desired();
        let mut live = Live { enabled: true, users: want.users.clone(), roles: want.roles.clone() };
        live.roles.insert("api".into(), BTreeSet::from([Perm::prefix("read", "/registry/")]));
        assert_eq!(whats(&plan(&want, &live)), ["role api: lacks readwrite /registry/*, grant it"]);
    }
}
