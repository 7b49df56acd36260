//! The harness's modules import each other in one direction only (suite -> plan ->
//! provider -> run -> events -> reports): no module, through any chain of `crate::`
//! paths in its non-test code, reaches back to itself. Read from the sources, so that a
//! circle fails here the day it is written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module -> the top-level modules its non-test code names.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    collect(src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(src, f)).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(m) = module_of(src, f) else {
            continue;
        };
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("a source file reads");
        // Our convention: unit tests sit at the end of a file, after `#[cfg(test)]`.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        // Comments name modules without importing them (`see crate::gate`).
        let code: String = code
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let deps = g.entry(m.clone()).or_default();
        for d in crate_paths(&code) {
            if d != m && modules.contains(&d) {
                deps.insert(d);
            }
        }
    }
    g
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src reads").flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/fault/noop.rs` -> `fault`; `src/run.rs` -> `run`; the crate root -> none.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let m = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(m, "lib" | "main")).then(|| m.to_owned())
}

/// The first segment of every `crate::` path in `code`, grouped imports included
/// (`use crate::{a::B, c};` names `a` and `c`).
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        // `dp_remote::wire` and the like are other crates; only a bare `crate::` counts.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if depth == 1 && c == ',' {
                    out.push(first_ident(&item));
                    item.clear();
                } else {
                    item.push(c);
                }
            }
            out.push(first_ident(&item));
        } else {
            out.push(first_ident(rest));
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn first_ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The modules that reach themselves, each with one circle through it.
fn circles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for start in g.keys() {
        // Breadth-first from `start`, remembering parents, until `start` is reached again.
        let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue: std::collections::VecDeque<&str> = std::collections::VecDeque::new();
        queue.push_back(start);
        let mut back = None;
        while let Some(n) = queue.pop_front() {
            for d in g.get(n).into_iter().flatten() {
                if d == start {
                    back = Some(n);
                    break;
                }
                if !parent.contains_key(d.as_str()) {
                    parent.insert(d, n);
                    queue.push_back(d);
                }
            }
            if back.is_some() {
                break;
            }
        }
        if let Some(mut n) = back {
            let mut middle = Vec::new();
            while n != start.as_str() {
                middle.push(n.to_owned());
                n = parent[n];
            }
            middle.reverse();
            let mut path = vec![start.clone()];
            path.extend(middle);
            path.push(start.clone());
            found.push(path);
        }
    }
    found
}

#[test]
fn no_module_imports_itself_through_others() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(g.len() > 10, "the harness's modules were read: {g:?}");
    let c = circles(&g);
    assert!(
        c.is_empty(),
        "import circles between harness modules:\n{}",
        c.iter()
            .map(|p| format!("  {}", p.join(" -> ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_reader_finds_grouped_imports_and_circles() {
    assert_eq!(
        crate_paths("use crate::{a::B, c};\nlet x = crate::d::e();\nuse dp_crate::f;"),
        ["a", "c", "d"]
    );
    let g: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .iter()
        .map(|(k, v)| (k.to_string(), BTreeSet::from([v.to_string()])))
        .collect();
    let c = circles(&g);
    assert!(
        c.contains(&vec!["a".into(), "b".into(), "c".into(), "a".into()]),
        "{c:?}"
    );
    assert!(
        !c.iter().any(|p| p[0] == "d"),
        "d only points into the circle: {c:?}"
    );
}
