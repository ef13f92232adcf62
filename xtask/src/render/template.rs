//! Unit templates and data files from `systemd/`: a relative name in, its text out, with
//! `@NAME@` fields filled in. A field left unfilled, or a value given for a field the template
//! lacks, is an error naming the template, so a template and the code filling it cannot drift.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::util::project_root;

/// The directory of unit templates and data: `<root>/systemd`.
pub fn systemd_dir() -> PathBuf {
    project_root().join("systemd")
}

/// Reads `systemd/<rel>`.
pub fn read(rel: &str) -> Result<String> {
    read_from(&systemd_dir(), rel)
}

/// Reads `<dir>/<rel>` (tests point `dir` elsewhere).
pub fn read_from(dir: &Path, rel: &str) -> Result<String> {
    let path = dir.join(rel);
    fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the template {}: it ships with the project in systemd/; restore it from git",
            path.display()
        )
    })
}

/// Replaces every `@NAME@` of `text` by its value. `origin` names the template in messages.
pub fn fill(origin: &str, text: &str, fields: &[(&str, String)]) -> Result<String> {
    let mut out = text.to_string();
    for (name, value) in fields {
        let marker = format!("@{name}@");
        if !out.contains(&marker) {
            bail!("template {origin} has no field {marker}: add it where the value belongs, or update the code that fills it");
        }
        out = out.replace(&marker, value);
    }
    if let Some(left) = unfilled(&out) {
        bail!("template {origin}: field @{left}@ is not filled by this command: remove it from the template");
    }
    Ok(out)
}

/// The first `@NAME@` (upper case, digits, `_`) left in `text`.
fn unfilled(text: &str) -> Option<String> {
    let mut rest = text;
    while let Some(start) = rest.find('@') {
        let after = &rest[start + 1..];
        if let Some(end) = after.find('@') {
            let name = &after[..end];
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') {
                return Some(name.to_string());
            }
        }
        rest = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_fields_and_refuses_drift() {
        assert_eq!(fill("t", "a=@A@ b=@B@ @A@", &[("A", "1".into()), ("B", "2".into())]).unwrap(), "a=1 b=2 1");
        let err = format!("{:#}", fill("t.in", "a=@A@ @C@", &[("A", "1".into())]).unwrap_err());
        assert!(err.contains("t.in") && err.contains("@C@"), "{err}");
        let err = format!("{:#}", fill("t.in", "a=1", &[("A", "1".into())]).unwrap_err());
        assert!(err.contains("@A@"), "{err}");
        // Mail addresses and the like are not fields.
        assert_eq!(fill("t", "root@localhost @x@", &[]).unwrap(), "root@localhost @x@");
    }
}
