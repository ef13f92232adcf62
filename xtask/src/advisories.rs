//! etcd's published security advisories: `images/advisories.toml` (data) in; for a version, the
//! advisories that affect it and the first release of its line that fixes them out. `fetch`,
//! `image` and `release` warn with it; `release` also writes the advisories into the SBOM and the
//! release notes. Shipping an affected version stays possible, never silent.
//!
//! Versions are compared as upstream releases: a distribution's package of 3.4.23 counts as
//! 3.4.23 even when it carries backported fixes (its advisories are the distribution's to state).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::definition::version_triple;

/// One advisory as published.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Advisory {
    /// The GitHub Security Advisory ID (`GHSA-xxxx-xxxx-xxxx`).
    pub id: String,
    /// CVE IDs of the same issue.
    #[serde(default)]
    pub cves: Vec<String>,
    pub summary: String,
    /// GitHub's severity rating (low, moderate, high, critical), or unrated where no record
    /// gives one.
    pub severity: String,
    /// The advisory's page: the citation.
    pub url: String,
    /// Affected versions: each range from `introduced` (inclusive) to `fixed` (exclusive).
    pub affected: Vec<Range>,
    /// What it means for the roles a cluster file's `[access]` gives once auth is on
    /// (docs/least-privilege.md), where it matters there.
    #[serde(default)]
    pub with_auth: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    pub introduced: String,
    pub fixed: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    lines: Vec<String>,
    advisory: Vec<Advisory>,
}

/// The advisories of a file, and the release lines it is complete for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advisories {
    pub lines: Vec<String>,
    pub list: Vec<Advisory>,
}

impl std::ops::Deref for Advisories {
    type Target = [Advisory];
    fn deref(&self) -> &[Advisory] {
        &self.list
    }
}

/// An advisory that affects a version, and the release that fixes it for that version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affecting<'a> {
    pub advisory: &'a Advisory,
    pub fixed: String,
}

impl Advisory {
    /// `GHSA-... (CVE-...)`.
    pub fn label(&self) -> String {
        match self.cves.is_empty() {
            true => self.id.clone(),
            false => format!("{} ({})", self.id, self.cves.join(", ")),
        }
    }
}

/// The advisories of `images/advisories.toml`.
pub fn default_path() -> PathBuf {
    crate::util::project_root().join("images/advisories.toml")
}

/// Reads and checks an advisories file; errors name the file, the entry and the field.
pub fn load(path: &Path) -> Result<Advisories> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}: restore it from git", path.display()))?;
    parse(&text, &path.display().to_string())
}

pub fn parse(text: &str, origin: &str) -> Result<Advisories> {
    let file: File = toml::from_str(text).with_context(|| format!("{origin}: invalid advisories"))?;
    for line in &file.lines {
        if line.split('.').count() != 2 || version_triple(&format!("{line}.0")).is_none() {
            bail!("{origin}: lines: {line:?} is not a release line like \"3.4\"");
        }
    }
    for (i, a) in file.advisory.iter().enumerate() {
        let at = |field: &str| format!("{origin}: advisory[{i}] ({}).{field}", a.id);
        let ghsa = a.id.strip_prefix("GHSA-").map(|r| r.split('-').collect::<Vec<_>>());
        if !ghsa.is_some_and(|parts| parts.len() == 3 && parts.iter().all(|p| p.len() == 4)) {
            bail!("{}: {:?} is not a GHSA ID like GHSA-p4g4-wgrh-qrg2", at("id"), a.id);
        }
        for c in &a.cves {
            if !c.starts_with("CVE-") || c.split('-').count() != 3 {
                bail!("{}: {c:?} is not a CVE ID like CVE-2020-15106", at("cves"));
            }
        }
        if !a.url.starts_with("https://") {
            bail!("{}: {:?} must be the advisory's https URL (the citation)", at("url"), a.url);
        }
        if !matches!(a.severity.as_str(), "low" | "moderate" | "high" | "critical" | "unrated") {
            bail!("{}: {:?} must be low, moderate, high, critical or unrated", at("severity"), a.severity);
        }
        if a.affected.is_empty() {
            bail!("{}: no ranges: add {{ introduced = \"3.4.0\", fixed = \"3.4.10\" }}", at("affected"));
        }
        for r in &a.affected {
            for v in [&r.introduced, &r.fixed] {
                if version_triple(v).is_none() {
                    bail!("{}: {v:?} is not a version like 3.4.10", at("affected"));
                }
            }
            if version_triple(&r.introduced) >= version_triple(&r.fixed) {
                bail!("{}: {} is not before {}", at("affected"), r.introduced, r.fixed);
            }
        }
    }
    Ok(Advisories { lines: file.lines, list: file.advisory })
}

/// The advisories that affect `version`, each with the first release that fixes it.
pub fn affecting<'a>(advisories: &'a [Advisory], version: &str) -> Vec<Affecting<'a>> {
    let Some(v) = version_triple(version) else { return Vec::new() };
    advisories
        .iter()
        .filter_map(|a| {
            let range = a.affected.iter().find(|r| {
                version_triple(&r.introduced).is_some_and(|i| i <= v) && version_triple(&r.fixed) > Some(v)
            })?;
            Some(Affecting { advisory: a, fixed: range.fixed.clone() })
        })
        .collect()
}

/// The lowest of the fixes in `list` that none of its advisories affects, if any: the release to
/// move to.
pub fn fixed_by(list: &[Affecting<'_>]) -> Option<String> {
    let mut fixes: Vec<&String> = list.iter().map(|a| &a.fixed).collect();
    fixes.sort_by_key(|f| version_triple(f));
    fixes.dedup();
    let advisories: Vec<Advisory> = list.iter().map(|a| a.advisory.clone()).collect();
    fixes.into_iter().find(|f| affecting(&advisories, f).is_empty()).cloned()
}

/// A warning for shipping `version`, or `None` when no advisory affects it.
pub fn warning(advisories: &Advisories, version: &str) -> Option<String> {
    let line = crate::definition::release_line(version);
    if !advisories.lines.contains(&line) {
        return Some(format!(
            "etcd {version} was not checked for security advisories: images/advisories.toml covers etcd {} only; \
             add the advisories of {line} and the line to its lines",
            advisories.lines.join(", ")
        ));
    }
    let list = affecting(advisories, version);
    if list.is_empty() {
        return None;
    }
    let mut out = format!(
        "etcd {version} is affected by {} published security advisor{} (images/advisories.toml):",
        list.len(),
        if list.len() == 1 { "y" } else { "ies" }
    );
    for a in &list {
        out.push_str(&format!(
            "\n  {} [{}] {} (fixed in {})",
            a.advisory.label(),
            a.advisory.severity,
            a.advisory.summary,
            a.fixed
        ));
        if let Some(roles) = &a.advisory.with_auth {
            out.push_str(&format!("\n    with auth on (docs/least-privilege.md): {roles}"));
        }
    }
    if let Some(f) = fixed_by(&list) {
        out.push_str(&format!("\n  etcd {f} fixes all of them; ship it with --etcd-version {f} once pinned"));
    }
    Some(out)
}

/// Prints the warning for `version` to stderr. A missing or broken advisories file is an error:
/// not knowing is not the same as not affected.
pub fn warn_if_affected(version: &str) -> Result<()> {
    let list = load(&default_path())?;
    if let Some(w) = warning(&list, version) {
        eprintln!("warning: {w}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
lines = ["3.3", "3.4", "3.5"]

[[advisory]]
id = "GHSA-aaaa-bbbb-cccc"
cves = ["CVE-2020-1"]
summary = "one"
severity = "moderate"
url = "https://example.org/a"
affected = [{ introduced = "3.4.0", fixed = "3.4.10" }, { introduced = "3.3.0", fixed = "3.3.23" }]

[[advisory]]
id = "GHSA-dddd-eeee-ffff"
summary = "two"
severity = "high"
url = "https://example.org/b"
affected = [{ introduced = "3.4.0", fixed = "3.4.26" }, { introduced = "3.5.0", fixed = "3.5.9" }]
"#;

    #[test]
    fn a_version_gets_the_advisories_of_its_own_line_and_their_fix() {
        let list = parse(TWO, "t.toml").unwrap();
        assert!(warning(&list, "3.6.1").unwrap().contains("not checked"));
        let ids = |v: &str| affecting(&list, v).iter().map(|a| a.advisory.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids("3.4.9"), ["GHSA-aaaa-bbbb-cccc", "GHSA-dddd-eeee-ffff"]);
        assert_eq!(ids("3.4.10"), ["GHSA-dddd-eeee-ffff"]);
        assert_eq!(ids("3.5.8"), ["GHSA-dddd-eeee-ffff"]);
        assert!(ids("3.5.9").is_empty() && ids("3.4.26").is_empty());
        assert_eq!(fixed_by(&affecting(&list, "3.4.9")).as_deref(), Some("3.4.26"));
        // What an advisory means for [access]'s roles follows it.
        let with =
            parse(&TWO.replace("severity = \"high\"", "severity = \"high\"\nwith_auth = \"roles leak\""), "t.toml")
                .unwrap();
        let w = warning(&with, "3.4.9").unwrap();
        assert!(w.contains("two (fixed in 3.4.26)\n    with auth on (docs/least-privilege.md): roles leak"), "{w}");
        assert_eq!(affecting(&list, "3.5.1")[0].fixed, "3.5.9");
        let w = warning(&list, "3.4.9").unwrap();
        assert!(w.contains("GHSA-aaaa-bbbb-cccc (CVE-2020-1) [moderate] one (fixed in 3.4.10)"), "{w}");
        assert!(w.contains("3.4.26 fixes all of them"), "{w}");
        assert!(warning(&list, "3.5.9").is_none());
    }

    #[test]
    fn bad_entries_are_named() {
        let err = |t: &str| format!("{:#}", parse(t, "t.toml").unwrap_err());
        let e = err(&TWO.replace("GHSA-aaaa-bbbb-cccc", "GHSA-1"));
        assert!(e.contains("advisory[0]") && e.contains(".id"), "{e}");
        let e = err(&TWO.replace("fixed = \"3.4.10\"", "fixed = \"3.4\""));
        assert!(e.contains("affected") && e.contains("3.4"), "{e}");
        let e = err(&TWO.replace("https://example.org/b", "example.org/b"));
        assert!(e.contains("advisory[1]") && e.contains("url"), "{e}");
        let e = err(&TWO.replace("severity = \"high\"", "severity = \"severe\""));
        assert!(e.contains("severity"), "{e}");
    }

    #[test]
    fn the_shipped_advisories_parse_and_cover_the_pinned_default() {
        let list = load(&default_path()).unwrap();
        let on_349 = affecting(&list, "3.4.9");
        for cve in
            ["CVE-2020-15106", "CVE-2020-15112", "CVE-2020-15113", "CVE-2020-15114", "CVE-2020-15115", "CVE-2020-15136"]
        {
            let hit = on_349.iter().find(|a| a.advisory.cves.iter().any(|c| c == cve));
            assert_eq!(hit.map(|a| a.fixed.as_str()), Some("3.4.10"), "{cve}");
        }
        for a in list.iter() {
            assert!(a.url.contains(&a.id), "{}: the URL cites the advisory itself", a.id);
        }
    }
}
