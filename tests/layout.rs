//! The shape of `src/`: every file says what it owns in its first line, no
//! file carries more than 500 lines of non-test code, and the files import
//! each other without a circle (edges are `use` declarations and inline
//! `crate::`/`super::` paths, resolved to the file of the deepest module
//! they name; `mod x;` declarations are containment, not imports).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_CODE_LINES: usize = 500;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `src/actors/peer.rs` is `["actors", "peer"]`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("lib" | "mod")) {
        parts.pop();
    }
    parts
}

/// The text with comments, strings and char literals blanked (so braces
/// and paths inside them do not count), keeping line structure.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if b.get(i) == Some(&b'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\''
            && b.get(i + 2) == Some(&b'\'')
            && b.get(i + 1).is_some_and(|x| *x != b'\\')
        {
            i += 3;
            out.push_str("' '");
        } else if c == b'\'' && b.get(i + 1) == Some(&b'\\') {
            i += 2;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c as char);
            i += 1;
        }
    }
    out
}

/// Removes `#[cfg(test)]` items (the unit tests next to the code), keeping
/// a line count of what was removed.
fn without_tests(code: &str) -> (String, usize) {
    let mut out = String::new();
    let mut removed = 0;
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // The item ends at the matching brace of its first `{`, or at a `;`.
        let open = after.find('{');
        let semi = after.find(';');
        let end = match (open, semi) {
            (Some(o), Some(s)) if s < o => s + 1,
            (Some(o), _) => {
                let mut depth = 0;
                let mut end = after.len();
                for (i, ch) in after[o..].char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = o + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, Some(s)) => s + 1,
            (None, None) => after.len(),
        };
        removed += after[..end].matches('\n').count();
        rest = &after[end..];
    }
    out.push_str(rest);
    (out, removed)
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands a use tree (`a::{b, c::{d, self}}`) into full paths.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let mut base = prefix.to_vec();
        base.extend(head);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut start = 0;
        for (i, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&base, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&base, &inner[start..], out);
    } else if !tree.is_empty() {
        let mut path = prefix.to_vec();
        let tree = tree.split(" as ").next().unwrap_or(tree);
        for seg in tree.split("::").map(str::trim).filter(|s| !s.is_empty()) {
            if seg != "self" {
                path.push(seg.to_string());
            }
        }
        out.push(path);
    }
}

/// Every path a file names (use trees and inline `a::b` paths), each with
/// the module it is written in (inline `mod x { }`
/// blocks nest).
fn referenced(code: &str, file_module: &[String]) -> Vec<(Vec<String>, Vec<String>)> {
    let mut found = Vec::new();
    // The inline modules open at each brace depth.
    let mut inline: Vec<(usize, String)> = Vec::new();
    let mut depth = 0usize;
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    let word_at = |i: usize, w: &str| {
        let end = i + w.len();
        end <= chars.len()
            && chars[i..end].iter().copied().eq(w.chars())
            && (i == 0 || !is_ident(chars[i - 1]))
            && chars.get(end).is_none_or(|c| !is_ident(*c))
    };
    while i < chars.len() {
        let here = || {
            let mut m = file_module.to_vec();
            m.extend(inline.iter().map(|(_, n)| n.clone()));
            m
        };
        match chars[i] {
            '{' => {
                depth += 1;
                i += 1;
                continue;
            }
            '}' => {
                if inline.last().is_some_and(|(d, _)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
                continue;
            }
            _ => {}
        }
        if word_at(i, "mod") {
            let rest: String = chars[i + 3..].iter().take(80).collect();
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| is_ident(*c))
                .collect();
            let after = rest.trim_start()[name.len()..].trim_start();
            if after.starts_with('{') {
                inline.push((depth + 1, name));
            }
            i += 3;
            continue;
        }
        if word_at(i, "use") {
            let end = (i..chars.len())
                .find(|&j| chars[j] == ';')
                .unwrap_or(chars.len());
            let tree: String = chars[i + 3..end].iter().collect();
            let mut paths = Vec::new();
            expand(&[], &tree, &mut paths);
            let m = here();
            for p in paths {
                found.push((m.clone(), p));
            }
            i = end;
            continue;
        }
        let starts_path =
            is_ident(chars[i]) && (i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == ':'));
        if starts_path {
            let mut j = i;
            while j < chars.len() && (is_ident(chars[j]) || chars[j] == ':') {
                j += 1;
            }
            let path: String = chars[i..j].iter().collect();
            if path.contains("::") {
                found.push((here(), path.split("::").map(str::to_string).collect()));
            }
            i = j;
            continue;
        }
        i += 1;
    }
    found
}

/// The module a path written in `module` points into, as far as modules
/// go: `None` for paths outside the crate (std, dependencies).
fn resolve(
    module: &[String],
    path: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let mut at: Vec<String> = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("super") => module.to_vec(),
        Some("self") => module.to_vec(),
        // A child module named from its parent (`use codes::X` in
        // `transport`); anything else is outside the crate.
        Some(first) => {
            let mut child = module.to_vec();
            child.push(first.to_string());
            if !modules.contains(&child) {
                return None;
            }
            module.to_vec()
        }
        None => return None,
    };
    let mut segs = path.iter().peekable();
    if path[0] == "crate" {
        segs.next();
    }
    while let Some(s) = segs.peek() {
        match s.as_str() {
            "super" => {
                at.pop();
                segs.next();
            }
            "self" => {
                segs.next();
            }
            _ => break,
        }
    }
    for s in segs {
        let mut next = at.clone();
        next.push(s.clone());
        if modules.contains(&next) {
            at = next;
        } else {
            break;
        }
    }
    Some(at)
}

struct Crate {
    files: BTreeMap<Vec<String>, PathBuf>,
    /// File module -> the file modules it imports.
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
    code_lines: BTreeMap<PathBuf, usize>,
}

fn read_crate() -> Crate {
    let mut paths = Vec::new();
    rust_files(&src(), &mut paths);
    let files: BTreeMap<Vec<String>, PathBuf> =
        paths.iter().map(|p| (module_of(p), p.clone())).collect();
    let modules: BTreeSet<Vec<String>> = files.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    let mut code_lines = BTreeMap::new();
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let (code, _) = without_tests(&code_only(&text));
        let (_, test_lines) = without_tests(&text);
        code_lines.insert(path.clone(), text.lines().count() - test_lines);
        let mut to = BTreeSet::new();
        for (written_in, p) in referenced(&code, module) {
            // A path inside an inline module resolves from there; the file
            // it lands in is the deepest module that is a file.
            let Some(mut target) = resolve(&written_in, &p, &modules) else {
                continue;
            };
            while !files.contains_key(&target) {
                target.pop();
            }
            if &target != module {
                to.insert(target);
            }
        }
        edges.insert(module.clone(), to);
    }
    Crate {
        files,
        edges,
        code_lines,
    }
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

#[test]
fn every_file_says_what_it_owns_in_its_first_line() {
    let c = read_crate();
    for path in c.files.values() {
        let text = std::fs::read_to_string(path).unwrap();
        let first = text.lines().next().unwrap_or("");
        assert!(
            first.starts_with("//! ") && first.len() > 10,
            "{} opens without a `//!` line saying what it owns",
            path.display()
        );
    }
}

#[test]
fn no_file_has_more_than_500_lines_of_code_outside_its_tests() {
    let c = read_crate();
    let over: Vec<String> = c
        .code_lines
        .iter()
        .filter(|(_, n)| **n > MAX_CODE_LINES)
        .map(|(p, n)| format!("{}: {n}", p.display()))
        .collect();
    assert!(over.is_empty(), "over {MAX_CODE_LINES} lines: {over:?}");
}

#[test]
fn the_files_of_src_import_each_other_without_a_circle() {
    let c = read_crate();
    // Depth-first search for a back edge, reporting the circle it closes.
    fn visit(
        m: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
        circles: &mut Vec<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(pos) = stack.iter().position(|s| s == m) {
            let mut circle: Vec<String> = stack[pos..].iter().map(|s| name(s)).collect();
            circle.push(name(m));
            circles.push(circle.join(" -> "));
            return;
        }
        stack.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            visit(next, edges, stack, done, circles);
        }
        stack.pop();
        done.insert(m.clone());
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for m in c.files.keys() {
        visit(m, &c.edges, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
    // The checker sees the imports it must: the supervisor starts peer
    // actors, and nothing in the pure core reaches out.
    let sup = vec!["actors".to_string(), "supervisor".to_string()];
    assert!(c.edges[&sup].contains(&vec!["actors".to_string(), "peer".to_string()]));
    for (m, to) in &c.edges {
        if m.first().is_some_and(|s| s == "pool") {
            assert!(
                to.iter().all(|t| t.first().is_some_and(|s| s == "pool")),
                "{} imports {:?}",
                name(m),
                to.iter().map(|t| name(t)).collect::<Vec<_>>()
            );
        }
    }
}

/// The checker itself finds a circle when there is one.
#[test]
fn the_circle_checker_sees_a_circle() {
    let modules: BTreeSet<Vec<String>> = [vec![], vec!["a".into()], vec!["b".into()]].into();
    let code_a = "use crate::b::Thing;\nfn f() { super::b::g(); std::mem::drop(1); }\n";
    let refs = referenced(&code_only(code_a), &["a".into()]);
    let targets: BTreeSet<Vec<String>> = refs
        .iter()
        .filter_map(|(m, p)| resolve(m, p, &modules))
        .collect();
    assert!(targets.contains(&vec!["b".to_string()]), "{refs:?}");
    // Inside `mod hooks { use super::*; }` of a, super is a itself.
    let code = "mod hooks {\n    use super::*;\n}\n#[cfg(test)]\nmod tests { use crate::b::X; }\n";
    let (code, _) = without_tests(&code_only(code));
    let refs = referenced(&code, &["a".into()]);
    let targets: Vec<Vec<String>> = refs
        .iter()
        .filter_map(|(m, p)| resolve(m, p, &modules))
        .collect();
    assert_eq!(targets, vec![vec!["a".to_string()]], "{refs:?}");
}
