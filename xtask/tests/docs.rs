//! The docs as pages: the README keeps the first minute and a contents list, `docs/` holds a
//! page per task. Checked here: every page is reachable from the README's contents list, every
//! relative link of every page (and every runbook link the alerts carry) points to a file that
//! exists and to a heading that is on it, the README stays short, and the command reference
//! `docs/commands.md` is what each command's `--help` prints (run from the binary itself).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{doc, root, DOC_PAGES, XTASK};
use xtask::docs::anchor as slug;

/// The lines of a Markdown text outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push(line);
        }
    }
    out
}

/// The anchors of a page's headings, with GitHub's `-1`, `-2` for repeats.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = BTreeSet::new();
    for line in prose(text) {
        let Some(h) = line.strip_prefix('#') else { continue };
        let h = h.trim_start_matches('#');
        if !h.starts_with(' ') {
            continue;
        }
        let base = slug(h);
        let n = seen.iter().filter(|s| **s == base).count();
        seen.push(base.clone());
        out.insert(if n == 0 { base } else { format!("{base}-{n}") });
    }
    out
}

/// The targets of the Markdown links `[text](target)` of a page, outside code blocks and code
/// spans.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        // Code spans hold no links.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

/// Why the link `target` of the page at `from` (relative to the repository root) is dead, if
/// it is.
fn dead(from: &str, target: &str) -> Option<String> {
    if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
        return None;
    }
    let (file, anchor) = target.split_once('#').map_or((target, None), |(f, a)| (f, Some(a)));
    let page: PathBuf = if file.is_empty() {
        PathBuf::from(from)
    } else {
        let dir = Path::new(from).parent().unwrap_or(Path::new(""));
        normalize(&dir.join(file))
    };
    let path = root().join(&page);
    if !path.exists() {
        return Some(format!("{from}: link {target}: {} does not exist", page.display()));
    }
    let anchor = anchor?;
    let text = fs::read_to_string(&path).ok()?;
    if anchors(&text).contains(anchor) {
        None
    } else {
        Some(format!("{from}: link {target}: {} has no heading #{anchor}", page.display()))
    }
}

/// `a/b/../c` as `a/c`, without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// README.md and every page under docs/.
fn pages() -> Vec<String> {
    let mut pages = vec!["README.md".to_string()];
    let mut docs: Vec<String> = fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| format!("docs/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

#[test]
fn every_page_is_in_the_contents_and_every_link_resolves() {
    let readme = doc("README.md");
    let lines = readme.lines().count();
    assert!(lines < 250, "README.md has {lines} lines: keep the first minute there, move the rest to a page of docs/");
    let contents = readme.split("## Contents").nth(1).expect("README.md: ## Contents").split("\n## ").next().unwrap();
    let listed: BTreeSet<String> =
        links(contents).into_iter().map(|l| l.split('#').next().unwrap_or_default().to_string()).collect();
    let all = pages();
    for page in all.iter().filter(|p| p.starts_with("docs/")) {
        assert!(listed.contains(page), "{page} is not in README.md's contents list");
    }
    let known: BTreeSet<&str> = DOC_PAGES.iter().copied().collect();
    let found: BTreeSet<&str> = all.iter().map(String::as_str).filter(|p| p.starts_with("docs/")).collect();
    assert_eq!(found, known, "docs/ and common::DOC_PAGES (the recipes' reading order) differ");

    let mut checked = 0;
    let mut dead_links = Vec::new();
    for page in &all {
        for target in links(&doc(page)) {
            checked += 1;
            dead_links.extend(dead(page, &target));
        }
    }
    // The links rendered files carry: each alert's runbook, relative to the repository root.
    for runbook in xtask::render::monitoring::runbooks() {
        checked += 1;
        dead_links.extend(dead("alerts' runbook annotation", runbook).map(|_| format!("runbook {runbook} is dead")));
    }
    assert!(dead_links.is_empty(), "{} dead link(s):\n{}", dead_links.len(), dead_links.join("\n"));
    println!("docs: {} pages, {checked} links checked, README.md {lines} lines", all.len());
}

#[test]
fn the_link_check_catches_a_dead_file_and_a_dead_heading() {
    assert_eq!(dead("README.md", "docs/day-2.md#rotate-the-ca"), None);
    assert!(dead("README.md", "docs/no-such-page.md").unwrap().contains("does not exist"));
    assert!(dead("README.md", "docs/day-2.md#no-such-heading").unwrap().contains("has no heading #no-such-heading"));
    assert!(dead("docs/day-2.md", "#no-such-heading").unwrap().contains("docs/day-2.md has no heading"));
    assert_eq!(dead("docs/day-2.md", "../README.md#quick-start"), None);
    assert_eq!(links("see [a](x.md#b) and `[c](not-a-link)`\n```\n[d](in-a-block)\n```"), ["x.md#b"]);
    let twice = "# A\n## Same\n## Same\n";
    assert!(anchors(twice).contains("same") && anchors(twice).contains("same-1"));
}

/// The help blocks of docs/commands.md, each as the binary prints it.
#[test]
fn the_command_reference_is_what_each_command_prints() {
    let page = doc("docs/commands.md");
    let sections = xtask::docs::sections(&page);
    assert!(sections.len() > 10, "docs/commands.md has {} sections", sections.len());
    let mut listed: BTreeSet<String> = BTreeSet::new();
    for (name, block) in &sections {
        let args: Vec<&str> = name.split_whitespace().skip(2).collect();
        let out = common::run(Command::new(XTASK).args(&args).arg("--help"));
        assert!(out.status.success(), "{name} --help failed");
        let help = String::from_utf8_lossy(&out.stdout);
        let help: Vec<&str> = help.lines().map(str::trim_end).collect();
        assert_eq!(
            help.join("\n").trim_end(),
            block.as_str(),
            "docs/commands.md: the section of `{name}` is not what `{name} --help` prints: run `cargo xtask docs`"
        );
        // The commands each help lists: every one has its own section.
        if let Some(cmds) = block.split("\nCommands:\n").nth(1) {
            for line in cmds.lines().take_while(|l| l.starts_with("  ")) {
                let sub = line.split_whitespace().next().unwrap_or_default();
                if !sub.is_empty() && sub != "help" && line.starts_with("  ") && !line.starts_with("   ") {
                    listed.insert(format!("{name} {sub}"));
                }
            }
        }
    }
    let have: BTreeSet<String> = sections.iter().map(|(n, _)| n.clone()).collect();
    let missing: Vec<&String> = listed.difference(&have).collect();
    assert!(missing.is_empty(), "docs/commands.md has no section for {missing:?}: run `cargo xtask docs`");
    let check = common::xtask_ok(&["docs", "--check"]);
    println!("docs/commands.md: {} commands, each the binary's --help; {}", sections.len(), check.trim());
}
