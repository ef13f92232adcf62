//! The cluster description's `[access]`: what each client identity may do once etcd's
//! authentication is on. In: the section as written (or nothing) and the description's
//! `clients`. Out: a checked [`Access`], and from it the users and roles etcd must hold
//! ([`Access::desired`]), which `auth apply` makes true and `auth check` compares.
//!
//! ```toml
//! [access]
//! etcdctl = "root"                                 # everything: snapshots, defragmentation,
//!                                                  # membership, users and roles
//! kube-apiserver = { readwrite = ["/registry/"] }  # keys under these prefixes only
//! dashboard = { read = ["/registry/"] }
//! healthcheck = "none"                             # no etcd user: /health and /metrics only
//! prometheus = "none"
//! ```
//!
//! Without the section every client certificate is root, as with etcd's authentication off
//! (today's files keep meaning what they meant). With it, every client has a line and every
//! line a client; prefixes are printable ASCII without spaces; one identity's prefixes may not
//! repeat or lie inside one another in a way that adds nothing (etcd's permissions only add:
//! read-only under a read-write prefix cannot be said); one client at least is root, for the
//! backup and defragmentation units and for managing etcd's auth afterwards. Each rule is an
//! error naming the field and the fix.
//!
//! etcd's users: each identity that is not `none` is a user without a password (its certificate's
//! CN is its name); keyed identities get a role of their own name. The `root` user etcd wants
//! before `auth enable` is created without a password too: nobody can log in as it (no
//! certificate carries CN `root` unless a client is called so), the root identities act through
//! the `root` role instead.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// The role that may do everything, and the user etcd requires before enabling auth.
pub const ROOT: &str = "root";

/// What one identity may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    /// The `root` role: every key, snapshots, defragmentation, membership, auth.
    Root,
    /// No etcd user: refused by the key-value API; `/health` and `/metrics` still answer.
    None,
    /// Keys under these prefixes.
    Keys { read: Vec<String>, readwrite: Vec<String> },
}

/// A checked `[access]`: one grant per client of the description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Access {
    pub grants: BTreeMap<String, Grant>,
}

/// A permission as etcd stores it: a key range and what it allows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Perm {
    /// `read`, `write` or `readwrite` (etcdctl's words).
    pub kind: &'static str,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

impl Perm {
    /// A prefix, as `etcdctl role grant-permission --prefix` makes it.
    pub fn prefix(kind: &'static str, prefix: &str) -> Perm {
        Perm { kind, key: prefix.as_bytes().to_vec(), range_end: prefix_end(prefix.as_bytes()) }
    }

    /// How a person reads it: `readwrite /registry/*`, or the range when it is no prefix.
    pub fn describe(&self) -> String {
        let key = String::from_utf8_lossy(&self.key);
        if prefix_end(&self.key) == self.range_end {
            format!("{} {key}*", self.kind)
        } else if self.range_end.is_empty() {
            format!("{} {key}", self.kind)
        } else {
            format!("{} [{key}, {})", self.kind, String::from_utf8_lossy(&self.range_end))
        }
    }
}

/// etcd's end of a prefix range: the prefix with its last byte below 0xff incremented.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The users (with their roles) and roles (with their permissions) the file asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    pub users: BTreeMap<String, BTreeSet<String>>,
    pub roles: BTreeMap<String, BTreeSet<Perm>>,
}

impl Access {
    /// Checks the section against the description's clients. `None` in: `None` out (every
    /// certificate root). Errors are (field, message with the fix).
    pub fn check(raw: Option<&toml::Table>, clients: &[String]) -> Result<Option<Access>, (String, String)> {
        let Some(raw) = raw else { return Ok(None) };
        let field = |name: &str| format!("access.{name}");
        let mut grants = BTreeMap::new();
        for (name, value) in raw {
            if !clients.contains(name) {
                return Err((
                    field(name),
                    format!(
                        "{name:?} has no certificate: it is not among clients {clients:?}; add it there (`cargo xtask pki` \
                         then issues it) or remove the line"
                    ),
                ));
            }
            let grant = match value {
                toml::Value::String(s) if s == "root" => Grant::Root,
                toml::Value::String(s) if s == "none" => Grant::None,
                toml::Value::Table(t) => keys(t, &field(name))?,
                other => {
                    return Err((
                        field(name),
                        format!(
                            "{other} is no grant: write \"root\", \"none\", or {{ read = [\"/prefix/\"], readwrite = \
                             [\"/prefix/\"] }}"
                        ),
                    ))
                }
            };
            if name == ROOT && grant != Grant::Root {
                return Err((
                    field(name),
                    "the client called \"root\" is etcd's root user whatever the file says: give it \"root\" or rename it"
                        .into(),
                ));
            }
            grants.insert(name.clone(), grant);
        }
        if let Some(missing) = clients.iter().find(|c| !grants.contains_key(*c)) {
            return Err((
                "access".into(),
                format!(
                    "client {missing:?} has no line: say what it may do (\"root\", \"none\", or {{ read = [...], readwrite \
                     = [...] }}), so that nobody is root by omission"
                ),
            ));
        }
        if !grants.values().any(|g| *g == Grant::Root) {
            return Err((
                "access".into(),
                "no client is \"root\": one must be, to enable etcd's auth and manage it afterwards, and for the backup \
                 and defragmentation units (snapshots and defragmentation are root's): give the operator's identity \
                 (etcdctl) \"root\""
                    .into(),
            ));
        }
        Ok(Some(Access { grants }))
    }

    /// The identities that act as root.
    pub fn roots(&self) -> impl Iterator<Item = &str> {
        self.grants.iter().filter(|(_, g)| **g == Grant::Root).map(|(n, _)| n.as_str())
    }

    /// The users and roles etcd holds when the file is applied.
    pub fn desired(&self) -> Desired {
        let mut d = Desired::default();
        d.users.insert(ROOT.into(), BTreeSet::from([ROOT.to_string()]));
        for (name, grant) in &self.grants {
            match grant {
                Grant::None => {}
                Grant::Root => {
                    d.users.insert(name.clone(), BTreeSet::from([ROOT.to_string()]));
                }
                Grant::Keys { read, readwrite } => {
                    d.users.insert(name.clone(), BTreeSet::from([name.clone()]));
                    let perms = read
                        .iter()
                        .map(|p| Perm::prefix("read", p))
                        .chain(readwrite.iter().map(|p| Perm::prefix("readwrite", p)))
                        .collect();
                    d.roles.insert(name.clone(), perms);
                }
            }
        }
        d
    }
}

/// `{ read = [...], readwrite = [...] }`, checked.
fn keys(t: &toml::Table, at: &str) -> Result<Grant, (String, String)> {
    let mut lists: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (k, v) in t {
        if k != "read" && k != "readwrite" {
            return Err((format!("{at}.{k}"), "unknown field: a grant on keys has `read` and `readwrite` only".into()));
        }
        let items = v.as_array().ok_or_else(|| (format!("{at}.{k}"), "must be a list of key prefixes".into()))?;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let here = format!("{at}.{k}[{i}]");
            let p = item.as_str().ok_or_else(|| (here.clone(), "must be a key prefix in quotes".into()))?;
            if p.is_empty() {
                return Err((
                    here,
                    "an empty prefix is the whole key space: list the prefixes the client uses, or give it \"root\" if it \
                     truly needs everything"
                        .into(),
                ));
            }
            if !p.bytes().all(|b| b.is_ascii_graphic()) {
                return Err((here, format!("{p:?}: write a prefix in printable ASCII without spaces")));
            }
            out.push(p.to_string());
        }
        lists.insert(if k == "read" { "read" } else { "readwrite" }, out);
    }
    let read = lists.remove("read").unwrap_or_default();
    let readwrite = lists.remove("readwrite").unwrap_or_default();
    if read.is_empty() && readwrite.is_empty() {
        return Err((at.into(), "grants no key: write \"none\" for a client outside the key-value API".into()));
    }
    // What each prefix adds must not already be granted by another of the identity's prefixes.
    let all: Vec<(&str, usize, &String)> = readwrite
        .iter()
        .enumerate()
        .map(|(i, p)| ("readwrite", i, p))
        .chain(read.iter().enumerate().map(|(i, p)| ("read", i, p)))
        .collect();
    for (kind, i, p) in &all {
        for (other_kind, j, q) in &all {
            if (kind, i) == (other_kind, j) || !p.starts_with(q.as_str()) {
                continue;
            }
            // p lies inside q (or equals it): q grants at least what p would, unless p adds writing.
            if *kind == "readwrite" && *other_kind == "read" {
                if p == q {
                    return Err((
                        format!("{at}.{kind}[{i}]"),
                        format!("{p:?} is also listed under read: keep it under readwrite only"),
                    ));
                }
                continue;
            }
            if p == q && kind == other_kind && i < j {
                continue;
            }
            let why = if *kind == "read" && *other_kind == "readwrite" {
                format!(
                    "{p:?} lies inside readwrite {q:?}, which already lets it read and write there; etcd's permissions \
                     only add, so read-only under a read-write prefix cannot be said: remove it, or narrow readwrite"
                )
            } else if p == q {
                format!("{p:?} is listed twice")
            } else {
                format!("{p:?} lies inside {other_kind} {q:?}, which already grants it: remove it")
            };
            return Err((format!("{at}.{kind}[{i}]"), why));
        }
    }
    Ok(Grant::Keys { read, readwrite })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients() -> Vec<String> {
        ["etcdctl", "kube-apiserver", "prometheus"].map(String::from).to_vec()
    }

    fn check(text: &str) -> Result<Option<Access>, (String, String)> {
        let table: toml::Table = toml::from_str(text).unwrap();
        Access::check(Some(&table), &clients())
    }

    const GOOD: &str = "etcdctl = \"root\"\nkube-apiserver = { readwrite = [\"/registry/\"] }\nprometheus = \"none\"\n";

    #[test]
    fn a_good_section_becomes_users_and_roles() {
        let access = check(GOOD).unwrap().unwrap();
        let d = access.desired();
        assert_eq!(d.users.keys().collect::<Vec<_>>(), ["etcdctl", "kube-apiserver", "root"]);
        assert_eq!(d.users["etcdctl"], BTreeSet::from(["root".to_string()]));
        assert_eq!(d.users["kube-apiserver"], BTreeSet::from(["kube-apiserver".to_string()]));
        let perm = d.roles["kube-apiserver"].iter().next().unwrap();
        assert_eq!((perm.key.as_slice(), perm.range_end.as_slice()), (&b"/registry/"[..], &b"/registry0"[..]));
        assert_eq!(perm.describe(), "readwrite /registry/*");
        assert_eq!(access.roots().collect::<Vec<_>>(), ["etcdctl"]);
        assert_eq!(Access::check(None, &clients()), Ok(None));
    }

    #[test]
    fn a_writer_may_also_read_more_widely() {
        let text = GOOD
            .replace("readwrite = [\"/registry/\"]", "read = [\"/registry/\"], readwrite = [\"/registry/events/\"]");
        assert!(check(&text).is_ok());
    }

    #[test]
    fn every_mistake_names_its_field() {
        let cases = [
            (GOOD.replace("prometheus = \"none\"", "prometheus = \"admin\""), "access.prometheus", "\"root\""),
            (format!("{GOOD}ghost = \"none\"\n"), "access.ghost", "no certificate"),
            (GOOD.replace("prometheus = \"none\"\n", ""), "access", "\"prometheus\" has no line"),
            (GOOD.replace("etcdctl = \"root\"", "etcdctl = \"none\""), "access", "no client is \"root\""),
            (GOOD.replace("readwrite =", "write ="), "access.kube-apiserver.write", "unknown field"),
            (GOOD.replace("[\"/registry/\"]", "[\"\"]"), "access.kube-apiserver.readwrite[0]", "whole key space"),
            (GOOD.replace("[\"/registry/\"]", "[\"/a b/\"]"), "access.kube-apiserver.readwrite[0]", "printable"),
            (GOOD.replace("[\"/registry/\"]", "[]"), "access.kube-apiserver", "\"none\""),
            (GOOD.replace("[\"/registry/\"]", "\"/registry/\""), "access.kube-apiserver.readwrite", "list"),
            (
                GOOD.replace(
                    "readwrite = [\"/registry/\"]",
                    "readwrite = [\"/registry/\"], read = [\"/registry/secrets/\"]",
                ),
                "access.kube-apiserver.read[0]",
                "cannot be said",
            ),
            (
                GOOD.replace("[\"/registry/\"]", "[\"/registry/\", \"/registry/pods/\"]"),
                "access.kube-apiserver.readwrite[1]",
                "already grants",
            ),
            (
                GOOD.replace("[\"/registry/\"]", "[\"/registry/\", \"/registry/\"]"),
                "access.kube-apiserver.readwrite[1]",
                "twice",
            ),
            (
                GOOD.replace("readwrite = [\"/registry/\"]", "readwrite = [\"/a/\"], read = [\"/a/\"]"),
                "access.kube-apiserver.readwrite[0]",
                "also listed under read",
            ),
        ];
        for (text, field, words) in cases {
            let (f, m) = check(&text).expect_err(&text);
            assert_eq!(f, field, "{text}: {m}");
            assert!(m.contains(words), "{text}: {m}");
        }
    }

    #[test]
    fn a_client_called_root_is_root() {
        let table: toml::Table = toml::from_str("root = \"none\"\nx = \"root\"").unwrap();
        let (f, _) = Access::check(Some(&table), &["root".into(), "x".into()]).unwrap_err();
        assert_eq!(f, "access.root");
    }

    #[test]
    fn prefix_ends_are_etcds() {
        assert_eq!(prefix_end(b"/a"), b"/b");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
