//! The upgrade policy of a definition: which etcd release a running cluster may move to.
//! In: the image definition (`[upgrade]`, its forbidden releases) and two versions.
//! Out: Ok, or an error naming both versions and what to do instead.
//!
//! The rule itself (one minor version at a time, within one major version, never down, never
//! to a forbidden release) is [`crate::version::check_upgrade_step`]; here it is applied to a
//! definition's `[upgrade]` section.

use anyhow::{Context, Result};

use crate::definition::Definition;
pub use crate::version::release_line;

/// Checks that a running cluster of etcd `from` may be upgraded to etcd `to`: the same major
/// version, later than `from`, at most one minor version ahead, and not a release the
/// definition's `[[upgrade.forbidden]]` lists.
pub fn check_upgrade(def: &Definition, from: &str, to: &str) -> Result<()> {
    let forbidden = def.upgrade.as_ref().map(|u| u.forbidden.as_slice()).unwrap_or_default();
    crate::version::check_upgrade_step(from, to, forbidden, &def.path)
}

/// The version a running cluster of the definition's release is upgraded to: `upgrade.to`.
pub fn target(def: &Definition) -> Result<String> {
    let upgrade = def.upgrade.as_ref().with_context(|| {
        format!(
            "{} has no [upgrade] section: add one with `to = \"<version>\"`, the release a running \
             etcd {} cluster is upgraded to",
            def.path.display(),
            def.etcd.version
        )
    })?;
    Ok(upgrade.to.clone())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::definition::DEFAULT_DEFINITION;
    use crate::util::project_root;

    fn def() -> Definition {
        let text = "[etcd]\nversion = '3.4.9'\narches = ['amd64']\nchecksums = 'x'\n\
                    [upgrade]\nto = '3.5.16'\n\
                    [[upgrade.forbidden]]\nfrom = '3.5.0'\nto = '3.5.2'\nreason = 'data inconsistency; use 3.5.3 or later'\n";
        Definition::parse(text, Path::new("images/x.toml")).unwrap()
    }

    fn refused(from: &str, to: &str) -> String {
        format!("{:#}", check_upgrade(&def(), from, to).unwrap_err())
    }

    #[test]
    fn patch_upgrades_and_one_minor_version_are_allowed() {
        let d = def();
        check_upgrade(&d, "3.4.9", "3.4.23").unwrap();
        check_upgrade(&d, "3.5.3", "3.5.16").unwrap();
        check_upgrade(&d, "3.4.9", "3.5.16").unwrap();
        check_upgrade(&d, "3.4.9", "3.5.3").unwrap();
        check_upgrade(&d, "3.4.30", "3.5.21").unwrap();
    }

    #[test]
    fn a_downgrade_is_refused() {
        let msg = refused("3.5.16", "3.4.9");
        assert!(msg.contains("3.5.16") && msg.contains("3.4.9") && msg.contains("downgrade"), "{msg}");
        let msg = refused("3.4.23", "3.4.9");
        assert!(msg.contains("downgrade"), "{msg}");
    }

    #[test]
    fn the_same_version_is_refused() {
        let msg = refused("3.4.9", "3.4.9");
        assert!(msg.contains("no upgrade") && msg.contains("upgrade.to"), "{msg}");
    }

    #[test]
    fn another_major_version_is_refused() {
        let msg = refused("3.5.16", "4.0.0");
        assert!(msg.contains("major") && msg.contains("4.0.0"), "{msg}");
        let msg = refused("3.5.16", "2.3.8");
        assert!(msg.contains("major"), "{msg}");
    }

    #[test]
    fn skipping_a_minor_version_is_refused() {
        let msg = refused("3.4.9", "3.6.0");
        assert!(msg.contains("one minor version at a time") && msg.contains("3.5.x first"), "{msg}");
    }

    #[test]
    fn forbidden_targets_are_refused_with_the_reason() {
        for to in ["3.5.0", "3.5.1", "3.5.2"] {
            let msg = refused("3.4.9", to);
            assert!(msg.contains("forbidden") && msg.contains(to) && msg.contains("3.5.3 or later"), "{msg}");
        }
        let msg = refused("3.5.0", "3.5.2");
        assert!(msg.contains("forbidden"), "{msg}");
        check_upgrade(&def(), "3.5.2", "3.5.3").unwrap();
    }

    #[test]
    fn bad_versions_are_named() {
        let msg = refused("v3.4.9", "3.5.16");
        assert!(msg.contains("running version") && msg.contains("v3.4.9"), "{msg}");
        let msg = refused("3.4.9", "3.5");
        assert!(msg.contains("target version"), "{msg}");
    }

    #[test]
    fn a_definition_without_an_upgrade_section_names_it() {
        let text = "[etcd]\nversion = '3.4.9'\narches = ['amd64']\nchecksums = 'x'\n";
        let d = Definition::parse(text, Path::new("images/x.toml")).unwrap();
        let msg = format!("{:#}", target(&d).unwrap_err());
        assert!(msg.contains("images/x.toml") && msg.contains("[upgrade]"), "{msg}");
    }

    #[test]
    fn release_lines() {
        assert_eq!(release_line("3.5.16"), "3.5");
        assert_eq!(release_line("3.4.9"), "3.4");
        assert_eq!(release_line("3.6.0-rc.1"), "3.6");
    }

    #[test]
    fn the_shipped_definition_upgrades_its_release_to_an_allowed_target() {
        let d = Definition::load(&project_root().join(DEFAULT_DEFINITION)).unwrap();
        let to = target(&d).unwrap();
        check_upgrade(&d, &d.etcd.version, &to).unwrap();
        assert!(check_upgrade(&d, &d.etcd.version, "3.5.1").is_err(), "3.5.0-3.5.2 are forbidden");
    }
}
