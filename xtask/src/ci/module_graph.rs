//! The crate's module dependency graph, and the unit test that keeps it free of circles.
//! In: the text of every `.rs` file under `xtask/src`. Out: for each module (a file, or a
//! folder's `mod.rs`) the modules its paths name: `use crate::...` and `use super::...` (brace
//! groups expanded), and `crate::...::`, `super::...::` and `self::...::` paths anywhere in the
//! code; then every circle among them, named module by module. A relative path (`cluster::Node`
//! in `smoke/mod.rs`) is a parent naming a child it declares: no edge.
//!
//! A path resolves to the longest prefix of it that is a module of its own file, so
//! `crate::util::write_atomic` depends on `util.rs` and `super::Check` on the parent's
//! `mod.rs`; when the rest of the path is a name that file imports or re-exports, it is followed
//! to where that name comes from, so that `pub use` in a `mod.rs` hides no circle. Comments,
//! strings and character literals are left out; `pub(super)` and `pub(crate)` are
//! visibilities, not paths; a path through an external crate names nothing here.
//! `main.rs` is the binary's crate, not this one: not read.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

/// Module -> the modules it depends on, each named by its file relative to `xtask/src`.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// The module path of a file relative to the crate's `src/`: `smoke/cluster.rs` is
/// `["smoke", "cluster"]`, `smoke/mod.rs` is `["smoke"]`, `lib.rs` is `[]`.
pub fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The graph of `files` (path relative to `src/`, text).
pub fn graph(files: &[(String, String)]) -> Graph {
    let modules: BTreeMap<Vec<String>, String> = files.iter().map(|(rel, _)| (module_path(rel), rel.clone())).collect();
    let parsed: Vec<(&String, Vec<String>, Parsed)> =
        files.iter().map(|(rel, text)| (rel, module_path(rel), parse(&strip(text)))).collect();
    // What each file's own (not inline) `use` declarations bring into scope: name -> path.
    let mut aliases: BTreeMap<&String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for (rel, here, p) in &parsed {
        let names = aliases.entry(*rel).or_default();
        for leaf in p.uses.iter().filter(|l| l.scope.is_empty()) {
            if let (Some(name), Some(full)) = (&leaf.name, resolve(here, &[], &leaf.path)) {
                names.insert(name.clone(), full);
            }
        }
    }
    let mut out = Graph::new();
    for (rel, here, p) in &parsed {
        let deps = out.entry((*rel).clone()).or_default();
        for (scope, path) in &p.refs {
            let Some(full) = resolve(here, scope, path) else { continue };
            if let Some(target) = target_of(full, &modules, &aliases).filter(|t| *t != *rel) {
                deps.insert(target.clone());
            }
        }
    }
    out
}

/// The file that defines what the absolute path `full` names: the longest prefix of it that
/// is a file's module, followed through that file's `use` declarations when the next segment
/// is a name it imports or re-exports (`crate::smoke::Form` -> `smoke/engine/hosts.rs`), so a
/// re-export hides no dependency.
fn target_of<'a>(
    mut full: Vec<String>,
    modules: &'a BTreeMap<Vec<String>, String>,
    aliases: &BTreeMap<&String, BTreeMap<String, Vec<String>>>,
) -> Option<&'a String> {
    for _ in 0..16 {
        let (n, file) = (0..=full.len()).rev().find_map(|n| modules.get(&full[..n]).map(|f| (n, f)))?;
        let Some(alias) = full.get(n).and_then(|name| aliases.get(file)?.get(name)) else { return Some(file) };
        if full.starts_with(alias) {
            return Some(file);
        }
        full = [alias.as_slice(), &full[n + 1..]].concat();
    }
    None
}

/// What one file names: every path it refers to, and what its `use` declarations import.
struct Parsed {
    /// Each path with the inline module it appears in (relative to the file's module).
    refs: Vec<(Vec<String>, Vec<String>)>,
    uses: Vec<UseLeaf>,
}

/// One name a `use` declaration brings into scope (`None` for a glob) and the path it names.
struct UseLeaf {
    scope: Vec<String>,
    name: Option<String>,
    path: Vec<String>,
}

/// The paths in the (stripped) text that start at `crate`, `super` or `self`, in `use` trees
/// and in the code, and every name a `use` declaration imports (relative ones included: a
/// `pub use child::Item` is followed when another module names `Item` through this one).
fn parse(text: &str) -> Parsed {
    let tokens = tokenize(text);
    let mut out = Parsed { refs: Vec::new(), uses: Vec::new() };
    // Inline modules (`mod tests { ... }`): their names and the brace depth they close at.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        let scope = || inline.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        match t {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(i + 2).is_some_and(|b| b == "{") => {
                inline.push((tokens[i + 1].clone(), depth));
            }
            "use" => {
                let end = tokens[i..].iter().position(|t| t == ";").map_or(tokens.len(), |p| i + p);
                for (path, name) in expand_use(&tokens[i + 1..end]) {
                    if anchored(&path) {
                        out.refs.push((scope(), path.clone()));
                    }
                    out.uses.push(UseLeaf { scope: scope(), name, path });
                }
                i = end;
                continue;
            }
            "crate" | "super" | "self" if tokens.get(i + 1).is_some_and(|c| c == "::") => {
                let mut path = vec![t.to_string()];
                let mut j = i + 1;
                while tokens.get(j).is_some_and(|c| c == "::") && tokens.get(j + 1).is_some_and(|s| is_ident(s)) {
                    path.push(tokens[j + 1].clone());
                    j += 2;
                }
                out.refs.push((scope(), path));
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The full paths a `use` tree names (`a::{b, c::{d, self}}` -> `a::b`, `a::c::d`, `a::c`), each
/// with the name it brings into scope (its last segment, or its `as` rename; `None` for `*`).
fn expand_use(tokens: &[String]) -> Vec<(Vec<String>, Option<String>)> {
    fn tree(tokens: &[String], at: &mut usize, prefix: &[String], out: &mut Vec<(Vec<String>, Option<String>)>) {
        let mut path = prefix.to_vec();
        let mut name = None;
        let mut glob = false;
        while *at < tokens.len() {
            match tokens[*at].as_str() {
                "::" => *at += 1,
                "{" => {
                    *at += 1;
                    loop {
                        tree(tokens, at, &path, out);
                        match tokens.get(*at).map(String::as_str) {
                            Some(",") => *at += 1,
                            Some("}") => {
                                *at += 1;
                                break;
                            }
                            _ => return,
                        }
                        if tokens.get(*at).is_some_and(|t| t == "}") {
                            *at += 1;
                            break;
                        }
                    }
                    return;
                }
                "," | "}" => break,
                "as" => {
                    name = tokens.get(*at + 1).cloned();
                    *at += 2;
                }
                "*" => {
                    glob = true;
                    *at += 1;
                }
                "self" if !path.is_empty() => *at += 1,
                s if is_ident(s) => {
                    path.push(s.to_string());
                    *at += 1;
                }
                _ => *at += 1,
            }
        }
        let name = if glob { None } else { name.or_else(|| path.last().cloned()) };
        out.push((path, name));
    }
    let mut out = Vec::new();
    let mut at = 0;
    tree(tokens, &mut at, &[], &mut out);
    out.retain(|(p, _)| !p.is_empty());
    out
}

/// The absolute path `path` names from the file module `here` (inside the inline modules
/// `inline`): `crate::` from the root, `super::` from the parent, `self::` and a relative path
/// from the module itself; `None` for a `super` above the root.
fn resolve(here: &[String], inline: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut at: Vec<String> = [here, inline].concat();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            at.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                at.pop()?;
                rest = &rest[1..];
            }
        }
        _ => {}
    }
    at.extend(rest.iter().cloned());
    Some(at)
}

/// Whether a path starts at `crate`, `super` or `self`: the paths that make an edge. A relative
/// path is a parent naming its own child, which it declares.
fn anchored(path: &[String]) -> bool {
    path.first().is_some_and(|s| s == "crate" || s == "super" || s == "self")
}

fn is_ident(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Identifiers, `::` and single punctuation characters.
fn tokenize(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".to_string());
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
    out
}

/// The text with comments, string literals (plain, raw, byte) and character literals blanked.
pub fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if let Some(hashes) = raw_string_start(&c, i) {
            // r"..." or r#"..."#, possibly b-prefixed: ends at a quote followed by the hashes.
            i += c[i..].iter().position(|x| *x == '"').unwrap_or(0) + 1;
            while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#'))) {
                i += 1;
            }
            i += 1 + hashes;
            out.push_str("\"\"");
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' && char_literal_len(&c, i).is_some() {
            i += char_literal_len(&c, i).unwrap_or(1);
            out.push_str("' '");
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// At `i`, the start of a raw string (`r"`, `r#"`, `br"`, ...): how many `#` it has.
fn raw_string_start(c: &[char], i: usize) -> Option<usize> {
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return None;
    }
    let mut j = i;
    if c.get(j) == Some(&'b') {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = c[j..].iter().take_while(|x| **x == '#').count();
    (c.get(j + hashes) == Some(&'"')).then_some(hashes)
}

/// At `i` (a `'`), the length of a character literal (`'a'`, `'\n'`, `'\u{1F600}'`), or
/// `None` for a lifetime or label.
fn char_literal_len(c: &[char], i: usize) -> Option<usize> {
    match c.get(i + 1)? {
        '\\' => {
            let end = c.get(i + 3..)?.iter().position(|x| *x == '\'')?;
            Some(end + 4)
        }
        _ if c.get(i + 2) == Some(&'\'') => Some(3),
        _ => None,
    }
}

/// Every circle of the graph: one per strongly connected component of more than one module,
/// each written as the shortest path from its first module back to itself
/// (`a.rs -> b.rs -> a.rs`), followed by the other modules of the component, if any.
pub fn circles(g: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    for component in components(g) {
        if component.len() < 2 {
            continue;
        }
        let start = &component[0];
        let inside: BTreeSet<&String> = component.iter().collect();
        let cycle = shortest_cycle(g, start, &inside);
        let mut line = cycle.join(" -> ");
        let rest: Vec<&String> = component.iter().filter(|m| !cycle.contains(m)).collect();
        if !rest.is_empty() {
            line.push_str(&format!(
                " (the same circle also holds {})",
                rest.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        out.push(line);
    }
    out
}

/// The strongly connected components (Tarjan), each sorted, in the order of their first module.
fn components(g: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        let g = s.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            component.sort();
            s.out.push(component);
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}

/// The shortest path from `start` back to itself through `inside`, `start` at both ends.
fn shortest_cycle(g: &Graph, start: &String, inside: &BTreeSet<&String>) -> Vec<String> {
    let mut came_from: BTreeMap<&String, &String> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in g.get(v).into_iter().flatten().filter(|w| inside.contains(w)) {
            if w == start {
                let mut path = vec![v.clone()];
                let mut at = v;
                while at != start {
                    let Some(prev) = came_from.get(at) else { break };
                    at = prev;
                    path.push(at.clone());
                }
                path.reverse();
                path.push(start.clone());
                return path;
            }
            if !came_from.contains_key(w) {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    vec![start.clone()]
}

/// Every `.rs` file of the crate under `src` (relative path, text), `main.rs` left out.
pub fn read_crate(src: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).unwrap_or(&p).to_string_lossy().into_owned();
                if rel != "main.rs" {
                    files.push((rel, std::fs::read_to_string(&p)?));
                }
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rel: &str, text: &str) -> (String, String) {
        (rel.to_string(), text.to_string())
    }

    #[test]
    fn paths_resolve_to_the_longest_module_prefix() {
        let files = [
            file("lib.rs", "pub mod a; pub mod util;"),
            file("util.rs", "pub fn w() {}"),
            file(
                "a/mod.rs",
                "mod b; mod c; pub struct Check; pub(super) fn f() { crate::util::w(); }\n\
                 pub(crate) fn g() {} // crate::nothing::here\nconst S: &str = \"super::c::x\";",
            ),
            file(
                "a/b.rs",
                "use super::{c::{self, X as Y}, Check};\nuse crate::util;\nfn f<'a>(x: &'a str) { let q = '{'; }",
            ),
            file("a/c.rs", "pub struct X;\n#[cfg(test)] mod tests { use super::*; use super::super::b; }"),
        ];
        let g = graph(&files);
        let deps = |m: &str| g[m].iter().cloned().collect::<Vec<_>>();
        assert_eq!(deps("a/mod.rs"), ["util.rs"]);
        assert_eq!(deps("a/b.rs"), ["a/c.rs", "a/mod.rs", "util.rs"]);
        // `mod tests`'s `super` is the file itself; `super::super::b` is its sibling.
        assert_eq!(deps("a/c.rs"), ["a/b.rs"]);
        assert!(deps("lib.rs").is_empty() && deps("util.rs").is_empty());
    }

    #[test]
    fn a_circle_is_named_module_by_module() {
        let files = [
            file("lib.rs", "mod a; mod b; mod c; mod d;"),
            file("a.rs", "use crate::b::X;"),
            file("b.rs", "pub struct X; fn f() { crate::c::g(); }"),
            file("c.rs", "pub fn g() { crate::a::h(); crate::d::k(); }"),
            file("d.rs", "pub fn k() {}"),
        ];
        let found = circles(&graph(&files));
        assert_eq!(found, ["a.rs -> b.rs -> c.rs -> a.rs"]);
        let mut acyclic = files.to_vec();
        acyclic[3] = file("c.rs", "pub fn g() { crate::d::k(); }");
        assert!(circles(&graph(&acyclic)).is_empty());
    }

    #[test]
    fn a_re_export_hides_no_circle() {
        // b.rs reaches a.rs only through the parent's re-export; a.rs names b.rs directly.
        let files = [
            file("lib.rs", "mod p;"),
            file("p/mod.rs", "mod a; mod b; pub use a::{Thing as Renamed, Other};"),
            file("p/a.rs", "pub struct Thing; pub struct Other; fn f() { super::b::g(); }"),
            file("p/b.rs", "use super::Renamed;\npub fn g() {}"),
        ];
        assert_eq!(circles(&graph(&files)), ["p/a.rs -> p/b.rs -> p/a.rs"]);
        let g = graph(&files);
        assert!(g["p/mod.rs"].is_empty(), "a parent naming its own children is no edge: {g:?}");
    }

    /// No module of the crate depends on itself through others: a shared piece moves down
    /// into the module both sides depend on.
    #[test]
    fn the_crate_has_no_import_circle() {
        let src = crate::util::project_root().join("xtask/src");
        let files = read_crate(&src).expect("the crate's sources");
        assert!(files.len() > 50, "read only {} files under {}", files.len(), src.display());
        let found = circles(&graph(&files));
        assert!(found.is_empty(), "import circles between modules of xtask/src:\n  {}", found.join("\n  "));
    }
}
