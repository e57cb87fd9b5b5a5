//! No import cycles: between the workspace's crates (normal dependencies) and between the
//! modules of every crate.
//!
//! Modules are read as text: a reference is a `crate::…` or `super::…` path in code (comments
//! and string literals removed, `use` groups expanded), resolved to the deepest module it names.
//! A reference from module `a::x` to `b::y` is an arrow between the siblings where their paths
//! part (`a` → `b`); arrows from a module to its own ancestors or descendants are nesting, not
//! dependencies. Test modules (`tests`, and inline `#[cfg(test)] mod … { … }` blocks) may reach
//! anywhere and are left out. Every set of siblings must form an acyclic graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A module's path below its crate root (empty for the root).
type ModPath = Vec<String>;

/// The `.rs` files of a crate's `src`, with their module paths.
fn modules(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut m: ModPath = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                m.pop();
            }
            if m.iter().any(|s| s == "tests" || s == "bin") {
                continue;
            }
            out.insert(m, p);
        }
    }
    out
}

/// Code without comments, string and char literals (their contents become spaces).
fn strip(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && (i == 0 || !is_ident(b[i - 1])) {
            // Raw string r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            while j < b.len() && !(b[j] == '"' && (0..hashes).all(|h| b.get(j + 1 + h) == Some(&'#'))) {
                j += 1;
            }
            i = j + 1 + hashes;
            out.push(' ');
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if c == '\'' && next.is_some() && b.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push(' ');
        } else if c == '\'' && next == Some('\\') {
            i += 2;
            while i < b.len() && b[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push(' ');
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Removes inline `#[cfg(test)] mod name { … }` blocks.
fn without_test_modules(code: &str) -> String {
    let mut out = code.to_string();
    while let Some(at) = out.find("#[cfg(test)]") {
        let rest = &out[at..];
        let Some(open) = rest.find(['{', ';']) else { break };
        let header = &rest[..open];
        let end = if rest.as_bytes()[open] == b'{' && header.contains("mod ") {
            let mut depth = 0;
            let mut end = rest.len();
            for (k, ch) in rest[open..].char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = open + k + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            end
        } else {
            // `#[cfg(test)] mod tests;` or a test-only item: drop the attribute only.
            "#[cfg(test)]".len()
        };
        out.replace_range(at..at + end, " ");
    }
    out
}

/// The paths of a path tree starting at `s` (`a::b::{c, d::e}` → `a::b::c`, `a::b::d::e`).
fn path_tree(s: &[char]) -> Vec<Vec<String>> {
    let mut i = 0;
    let mut prefix = Vec::new();
    loop {
        while s.get(i).is_some_and(|c| c.is_whitespace()) {
            i += 1;
        }
        if s.get(i) == Some(&'{') {
            let mut depth = 0;
            let mut items = Vec::new();
            let mut start = i + 1;
            for (k, &c) in s.iter().enumerate().skip(i) {
                match c {
                    '{' => depth += 1,
                    '}' | ',' if depth == 1 => {
                        items.push(&s[start..k]);
                        start = k + 1;
                        if c == '}' {
                            break;
                        }
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            return items
                .into_iter()
                .flat_map(|item| path_tree(item).into_iter().map(|p| [prefix.clone(), p].concat()))
                .collect();
        }
        let start = i;
        while s.get(i).is_some_and(|&c| is_ident(c)) {
            i += 1;
        }
        if i == start {
            return vec![prefix];
        }
        prefix.push(s[start..i].iter().collect());
        if s.get(i) == Some(&':') && s.get(i + 1) == Some(&':') {
            i += 2;
        } else {
            return vec![prefix];
        }
    }
}

/// The module paths a module's code refers to (absolute, below the crate root).
fn references(module: &ModPath, code: &str) -> Vec<ModPath> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let at_word = i == 0 || !is_ident(chars[i - 1]) && chars[i - 1] != ':';
        let starts = |w: &str| chars[i..].iter().take(w.len()).copied().eq(w.chars());
        if at_word && (starts("crate::") || starts("super::")) {
            for p in path_tree(&chars[i..]) {
                let mut base: ModPath = Vec::new();
                let mut rest = p.as_slice();
                if rest.first().map(String::as_str) == Some("crate") {
                    rest = &rest[1..];
                } else {
                    base = module.clone();
                    while rest.first().map(String::as_str) == Some("super") {
                        base.pop();
                        rest = &rest[1..];
                    }
                }
                out.push([base, rest.to_vec()].concat());
            }
            i += 6;
        } else {
            i += 1;
        }
    }
    out
}

/// A cycle in a directed graph, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let from = path.iter().position(|p| p == m).unwrap();
                    let mut c = path[from..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, edges, state, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if !state.contains_key(n.as_str())
            && let Some(c) = visit(n, edges, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// The module cycles of the crate whose sources are in `src`, as `a → b → a` lines.
fn module_cycles(src: &Path) -> Vec<String> {
    let mods = modules(src);
    // Sibling arrows, grouped by the parent module where the two paths part.
    let mut graphs: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (m, file) in &mods {
        let code = without_test_modules(&strip(&std::fs::read_to_string(file).unwrap()));
        for r in references(m, &code) {
            // The deepest module the path names.
            let Some(target) = (0..=r.len()).rev().map(|n| r[..n].to_vec()).find(|t| mods.contains_key(t)) else {
                continue;
            };
            let common = m.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == m.len() || common == target.len() {
                continue;
            }
            let parent = m[..common].to_vec();
            graphs.entry(parent).or_default().entry(m[common].clone()).or_default().insert(target[common].clone());
        }
    }
    graphs
        .iter()
        .filter_map(|(parent, edges)| {
            find_cycle(edges).map(|c| {
                let prefix = if parent.is_empty() { String::new() } else { format!("{}::", parent.join("::")) };
                c.iter().map(|n| format!("{prefix}{n}")).collect::<Vec<_>>().join(" → ")
            })
        })
        .collect()
}

/// The workspace's crates: (package name, directory).
fn crates() -> Vec<(String, PathBuf)> {
    let mut v = vec![("s3backer".to_string(), PathBuf::from(ROOT))];
    for e in std::fs::read_dir(Path::new(ROOT).join("crates")).unwrap() {
        let dir = e.unwrap().path();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let name = manifest
            .lines()
            .find_map(|l| l.strip_prefix("name = \"").and_then(|r| r.strip_suffix('"')))
            .unwrap()
            .to_string();
        v.push((name, dir));
    }
    v
}

#[test]
fn no_module_imports_a_module_that_imports_it() {
    let mut cycles = Vec::new();
    for (name, dir) in crates() {
        for c in module_cycles(&dir.join("src")) {
            cycles.push(format!("{name}: {c}"));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn no_crate_depends_on_a_crate_that_depends_on_it() {
    let names: BTreeSet<String> = crates().into_iter().map(|(n, _)| n).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, dir) in crates() {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        // Normal dependencies only: [dependencies] up to the next section.
        let deps = manifest.split("\n[").find(|s| s.starts_with("dependencies]")).unwrap_or_default();
        for l in deps.lines().skip(1) {
            let dep = l.split([' ', '=', '.']).next().unwrap_or_default();
            if names.contains(dep) {
                edges.entry(name.clone()).or_default().insert(dep.to_string());
            }
        }
    }
    assert!(edges.values().map(BTreeSet::len).sum::<usize>() > 10, "too few crate arrows found: {edges:?}");
    assert_eq!(find_cycle(&edges), None);
}

#[test]
fn the_checker_sees_cycles_through_use_groups_and_super() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path();
    std::fs::create_dir(src.join("args")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod args; pub mod size; pub mod mount;").unwrap();
    std::fs::write(src.join("args/mod.rs"), "pub mod values;\n// crate::mount::X in a comment\n").unwrap();
    std::fs::write(src.join("args/values.rs"), "use crate::{size::{parse, other}, x};\n").unwrap();
    std::fs::write(src.join("size.rs"), "fn f() -> super::args::values::BadValue { todo!() }\n").unwrap();
    std::fs::write(src.join("mount.rs"), "#[cfg(test)]\nmod tests {\n use crate::args::X;\n}\n").unwrap();
    assert_eq!(module_cycles(src), vec!["args → size → args".to_string()]);
    std::fs::write(src.join("size.rs"), "const S: &str = \"crate::args::values\";\n").unwrap();
    assert_eq!(module_cycles(src), Vec::<String>::new());
}
