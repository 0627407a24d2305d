//! The rule that keeps every crate readable as floors: no import circle between the
//! top-level modules of a crate. A module together with its folder counts as one
//! (`upstream.rs` and `upstream/**`), and a child may use its own parent's items, so only
//! paths that leave a top-level module count: `crate::a::…` in `b`, or a `super::` chain
//! that climbs out of `b` to the crate root.
//!
//! The check reads the sources (no compiler): comments and literals are skipped, `use`
//! trees are expanded, `super::` is resolved against the file's place (inline `mod x { … }`
//! blocks included), and a name re-exported by `lib.rs` (`crate::Router`) counts as the
//! module it comes from. Run it alone with
//! `cargo test -p portcullis-tests --lib architecture`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Crates that still have a circle, each with who removes it. The test fails for a crate
/// listed here that has none any more, so the list only shrinks. (Empty since h23-bin
/// removed the binary's `app ↔ controller ↔ admin` and `telemetry → controller`.)
const KNOWN_CIRCLES: &[(&str, &str)] = &[];

/// Top-level module → the top-level modules it uses.
type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn no_import_circle_between_top_level_modules() {
    let mut failures = Vec::new();
    for (name, src) in workspace_crates() {
        let graph = module_graph(&src);
        let circles = circles(&graph);
        let known = KNOWN_CIRCLES.iter().find(|(c, _)| *c == name);
        match (circles.is_empty(), known) {
            (true, None) => {}
            (false, Some(_)) => {}
            (true, Some((_, who))) => failures.push(format!(
                "{name} has no import circle any more ({who}): take it out of KNOWN_CIRCLES"
            )),
            (false, None) => {
                for c in circles {
                    failures.push(format!("{name}: import circle {}", c.join(" → ")));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "top-level modules must not use each other in a circle (docs/architecture.md, \
         \"Floors\"):\n  {}",
        failures.join("\n  ")
    );
}

/// Every crate of the workspace (`crates/*` and the harness) and its `src/`.
fn workspace_crates() -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut crates = vec![("portcullis-tests".to_string(), root.join("tests/src"))];
    let mut dirs: Vec<_> = fs::read_dir(root.join("crates"))
        .expect("the workspace has a crates/ folder")
        .map(|e| e.expect("crates/ can be listed").path())
        .filter(|p| p.join("src").is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir
            .file_name()
            .expect("a crate folder has a name")
            .to_string_lossy()
            .into_owned();
        crates.push((name, dir.join("src")));
    }
    assert!(crates.len() > 2, "found no crates under {}", root.display());
    crates
}

/// The graph between the top-level modules of the crate whose sources are in `src`.
fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let roots = ["lib.rs", "main.rs"];
    let top_of = |file: &Path| -> Option<(String, usize)> {
        let rel = file.strip_prefix(src).ok()?;
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.len() == 1 && roots.contains(&parts[0].as_str()) {
            return None;
        }
        // src/bin/* are crate roots of their own, outside the library's floors.
        if parts[0] == "bin" {
            return None;
        }
        let top = parts[0].trim_end_matches(".rs").to_string();
        // `a/mod.rs` is `a`, `a/b.rs` is `a::b`.
        let depth = parts.len() - usize::from(parts.last().is_some_and(|l| l == "mod.rs"));
        Some((top, depth))
    };
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| top_of(f))
        .map(|m| m.0)
        .collect();
    // Names the crate root re-exports, and the module each comes from.
    let mut reexports = BTreeMap::new();
    for root in roots {
        let Ok(text) = fs::read_to_string(src.join(root)) else {
            continue;
        };
        let tokens = tokens(&text);
        for path in use_paths(&tokens) {
            if let (Some(first), Some(last)) = (path.first(), path.last())
                && modules.contains(first)
                && path.len() > 1
            {
                reexports.insert(last.clone(), first.clone());
            }
        }
    }
    let mut graph = Graph::new();
    for file in &files {
        let Some((top, depth)) = top_of(file) else {
            continue;
        };
        let text = fs::read_to_string(file).expect("a source file can be read");
        let uses = graph.entry(top.clone()).or_default();
        for target in reached_from_root(&tokens(&text), depth) {
            let target = match reexports.get(&target) {
                Some(m) if !modules.contains(&target) => m.clone(),
                _ => target,
            };
            if target != top && modules.contains(&target) {
                uses.insert(target);
            }
        }
    }
    graph
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("a source folder can be listed")
        .map(|e| e.expect("a source folder can be listed").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source as identifiers and punctuation, without comments, strings and characters.
fn tokens(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && (at(i + 1) == '"' || (at(i + 1) == '#' && !at(i + 2).is_alphabetic()))
        {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|h| at(j + 1 + h) == '#') {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '\'' {
            // A character ('a', '\n', '\u{7f}') or a lifetime ('a).
            if at(i + 1) == '\\' {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c == ':' && at(i + 1) == ':' {
            out.push("::".to_string());
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

/// The top-level modules (or names the root re-exports) that a file `depth` modules below
/// the root reaches through `crate::` and through `super::` chains that climb to the root.
fn reached_from_root(tokens: &[String], depth: usize) -> Vec<String> {
    let mut reached = Vec::new();
    // Brace depths at which inline `mod x {` blocks opened.
    let mut inline_mods: Vec<usize> = Vec::new();
    let mut braces = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        match t {
            "{" => {
                if i >= 2 && tokens[i - 2] == "mod" {
                    inline_mods.push(braces);
                }
                braces += 1;
            }
            "}" => {
                braces = braces.saturating_sub(1);
                if inline_mods.last() == Some(&braces) {
                    inline_mods.pop();
                }
            }
            "crate" if tokens.get(i + 1).is_some_and(|n| n == "::") => {
                reached.extend(first_segments(tokens, i + 2));
            }
            "super" if i == 0 || tokens[i - 1] != "::" => {
                let mut climbs = 0;
                let mut j = i;
                while tokens.get(j).is_some_and(|s| s == "super")
                    && tokens.get(j + 1).is_some_and(|s| s == "::")
                {
                    climbs += 1;
                    j += 2;
                }
                if climbs >= depth + inline_mods.len() && j > i {
                    reached.extend(first_segments(tokens, j));
                }
                i = j.max(i + 1);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    reached
}

/// The first segment of the path at `tokens[i]`, or of each branch of a `{…}` tree.
fn first_segments(tokens: &[String], i: usize) -> Vec<String> {
    match tokens.get(i).map(String::as_str) {
        Some("{") => use_tree(tokens, i)
            .0
            .into_iter()
            .filter_map(|p| p.into_iter().next())
            .collect(),
        Some(name) if is_ident(name) && name != "self" => vec![name.to_string()],
        _ => Vec::new(),
    }
}

/// Every full path of every `use` in the file (aliases give the name they bind).
fn use_paths(tokens: &[String]) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if t == "use" {
            paths.extend(use_tree(tokens, i + 1).0);
        }
    }
    paths
}

/// The paths of the use tree starting at `tokens[i]`, and where it ends.
fn use_tree(tokens: &[String], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    loop {
        match tokens.get(i).map(String::as_str) {
            Some("{") => {
                let mut paths = Vec::new();
                i += 1;
                loop {
                    match tokens.get(i).map(String::as_str) {
                        Some("}") | None => return (paths, i + 1),
                        Some(",") => i += 1,
                        _ => {
                            let (branch, next) = use_tree(tokens, i);
                            for b in branch {
                                let mut p = prefix.clone();
                                p.extend(b);
                                paths.push(p);
                            }
                            i = next;
                        }
                    }
                }
            }
            Some(name) if is_ident(name) || name == "*" => {
                prefix.push(name.to_string());
                i += 1;
                match tokens.get(i).map(String::as_str) {
                    Some("::") => i += 1,
                    Some("as") => {
                        if let Some(alias) = tokens.get(i + 1) {
                            prefix.pop();
                            prefix.push(alias.clone());
                        }
                        return (vec![prefix], i + 2);
                    }
                    _ => return (vec![prefix], i),
                }
            }
            _ => return (vec![prefix], i),
        }
    }
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// One circle per strongly connected part of the graph with more than one module, as a
/// path that comes back to where it started.
fn circles(graph: &Graph) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut seen = BTreeSet::new();
    for start in graph.keys() {
        if seen.contains(start) {
            continue;
        }
        let reach = reachable(graph, start);
        let part: BTreeSet<String> = reach
            .into_iter()
            .filter(|m| reachable(graph, m).contains(start))
            .collect();
        seen.extend(part.iter().cloned());
        if part.len() > 1 {
            found.push(circle_through(graph, start, &part));
        }
    }
    found
}

fn reachable(graph: &Graph, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(m) = todo.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if seen.insert(next.clone()) {
                todo.push(next.clone());
            }
        }
    }
    seen
}

/// The shortest way from `start` back to itself inside `part`, then the rest of the part.
fn circle_through(graph: &Graph, start: &str, part: &BTreeSet<String>) -> Vec<String> {
    let mut prev: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.to_string()]);
    let mut back = None;
    while let Some(m) = queue.pop_front() {
        for next in graph.get(&m).into_iter().flatten() {
            if next == start {
                back = Some(m.clone());
                queue.clear();
                break;
            }
            if part.contains(next) && !prev.contains_key(next) {
                prev.insert(next.clone(), m.clone());
                queue.push_back(next.clone());
            }
        }
    }
    let mut path = vec![start.to_string()];
    let mut at = back.expect("a module in a circle reaches itself");
    let mut rev = Vec::new();
    while at != start {
        rev.push(at.clone());
        at = prev[&at].clone();
    }
    path.extend(rev.into_iter().rev());
    path.push(start.to_string());
    let others: Vec<&String> = part.iter().filter(|m| !path.contains(m)).collect();
    if !others.is_empty() {
        let rest: Vec<&str> = others.iter().map(|s| s.as_str()).collect();
        path.push(format!("(and with them: {})", rest.join(", ")));
    }
    path
}

#[test]
fn the_check_sees_a_circle_through_crate_and_super_paths() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let src = dir.path();
    fs::create_dir_all(src.join("a")).expect("a/");
    fs::write(
        src.join("lib.rs"),
        "mod a;\nmod b;\nmod c;\npub use c::Thing;\n",
    )
    .expect("lib.rs");
    // a/inner.rs climbs to the root with `super::super`: a → b.
    fs::write(
        src.join("a.rs"),
        "mod inner;\n// crate::c::X in a comment\n",
    )
    .expect("a.rs");
    fs::write(src.join("a/inner.rs"), "use super::super::b::Y;\n").expect("a/inner.rs");
    // b → c through the root's re-export, and a string that does not count.
    fs::write(
        src.join("b.rs"),
        "fn f() { let _ = crate::Thing; let s = \"crate::a\"; }\n",
    )
    .expect("b.rs");
    // An inline test module's `super::*` stays inside c; `crate::{x, a::Z}` reaches a.
    fs::write(
        src.join("c.rs"),
        "pub struct Thing;\nuse crate::{a::Z};\n#[cfg(test)]\nmod tests { use super::*; }\n",
    )
    .expect("c.rs");
    let graph = module_graph(src);
    let edges: Vec<(String, String)> = graph
        .iter()
        .flat_map(|(m, to)| to.iter().map(move |t| (m.clone(), t.clone())))
        .collect();
    let want: Vec<(String, String)> = [("a", "b"), ("b", "c"), ("c", "a")]
        .iter()
        .map(|(x, y)| (x.to_string(), y.to_string()))
        .collect();
    assert_eq!(edges, want);
    assert_eq!(circles(&graph), vec![vec!["a", "b", "c", "a"]]);
}
