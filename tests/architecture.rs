//! The dependency rule of `src/lib.rs`, checked on the source itself: no module imports one that
//! imports it back, at any level (between top-level modules, between the files of one folder,
//! between single files). A cycle crept in once after the code was untied (the API-key and
//! CORS guards took the whole ingest state, which holds them); this test keeps the next one out.
//!
//! It reads `src/` as text: every `crate::…` and `super::…` path outside `#[cfg(test)]` code is
//! resolved to the longest module it names. Test-only modules (`tests.rs`, `fake.rs`) may import
//! anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let modules = read_modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(modules.contains_key("wal::log"), "the source tree was not found or not read: {:?}", modules.keys());
    let graph = dependencies(&modules);
    let mut cycles = Vec::new();
    for level in levels(&modules) {
        for cycle in strongly_connected(&project(&graph, &level)) {
            cycles.push(format!("{} (in {})", cycle.join(" <-> "), if level.is_empty() { "src" } else { &level }));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_finds_a_cycle_between_two_files_of_a_folder() {
    let modules: BTreeMap<String, String> = [
        ("ingest".to_string(), String::new()),
        ("ingest::auth".to_string(), "use super::state::IngestState;\n".to_string()),
        ("ingest::state".to_string(), "use super::auth::ApiKeys;\nuse crate::wal::{LogStore, WalFault};\n".to_string()),
        ("ingest::cors".to_string(), "#[cfg(test)]\nmod tests { use super::super::state::IngestState; }\n".to_string()),
        ("wal".to_string(), "use crate::ingest::state;\n".to_string()),
    ]
    .into_iter()
    .collect();
    let graph = dependencies(&modules);
    assert_eq!(strongly_connected(&project(&graph, "ingest")), vec![vec!["ingest::auth", "ingest::state"]]);
    assert_eq!(strongly_connected(&project(&graph, "")), vec![vec!["ingest", "wal"]]);
    assert!(graph["ingest::cors"].is_empty(), "test code counts: {graph:?}");
}

/// Module path (`wal::log`) → its source. `mod.rs` is its folder's
/// module; `lib.rs` and `main.rs` are the root, which may name every module.
fn read_modules(src: &Path) -> BTreeMap<String, String> {
    let mut modules = BTreeMap::new();
    let mut folders = vec![src.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            let file = parts.last().cloned().unwrap_or_default();
            if parts.len() == 1 && (file == "lib" || file == "main") || file == "tests" || file == "fake" {
                continue;
            }
            if file == "mod" {
                parts.pop();
            }
            modules.insert(parts.join("::"), std::fs::read_to_string(&path).unwrap());
        }
    }
    modules
}

/// Which modules each module refers to (`crate::` and `super::` paths, `use` groups included),
/// outside its `#[cfg(test)]` part.
fn dependencies(modules: &BTreeMap<String, String>) -> Graph {
    let mut graph = Graph::new();
    for (module, code) in modules {
        let targets = graph.entry(module.clone()).or_default();
        let code = without_comments(code.split("#[cfg(test)]").next().unwrap_or_default());
        // `super` of `a::b` is `a`, whether `a::b` is a file or a folder's `mod.rs`.
        let parent = module.rsplit_once("::").map(|(p, _)| p.to_string()).unwrap_or_default();
        for path in paths(&code, "crate::")
            .into_iter()
            .map(|p| (String::new(), p))
            .chain(paths(&code, "super::").into_iter().map(|p| (parent.clone(), p)))
        {
            let (base, path) = path;
            let full = if base.is_empty() { path } else { format!("{base}::{path}") };
            if let Some(target) = longest_module(modules, &full) {
                if target != *module && !module.starts_with(&format!("{target}::")) {
                    targets.insert(target);
                }
            }
        }
    }
    graph
}

fn without_comments(code: &str) -> String {
    code.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// Every path after `prefix`, with `use` groups expanded: `crate::wal::{log::X, Y}` gives
/// `wal::log::X` and `wal::Y`.
fn paths(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let preceded_by_ident =
            rest[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        rest = &rest[at + prefix.len()..];
        if preceded_by_ident {
            continue;
        }
        expand("", rest, &mut out);
    }
    out
}

/// Reads one path (maybe ending in a `{…}` group) at the start of `text`, prefixed by `base`.
fn expand(base: &str, text: &str, out: &mut Vec<String>) {
    let head: String = text.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
    let joined = format!("{base}{head}");
    let after = &text[head.len()..];
    if head.ends_with("::") && after.starts_with('{') {
        let inner = group(&after[1..]);
        for item in split_top_level(inner) {
            expand(&joined, item.trim_start(), out);
        }
    } else if !joined.is_empty() {
        out.push(joined.trim_end_matches(':').to_string());
    }
}

/// The text of a `{…}` group up to its closing brace (`text` starts after the opening one).
fn group(text: &str) -> &str {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return &text[..i],
            '}' => depth -= 1,
            _ => {}
        }
    }
    text
}

fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn longest_module(modules: &BTreeMap<String, String>, path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    (1..=segments.len()).rev().map(|n| segments[..n].join("::")).find(|candidate| modules.contains_key(candidate))
}

/// Every folder (module with children), the crate root included as "".
fn levels(modules: &BTreeMap<String, String>) -> BTreeSet<String> {
    modules.keys().map(|m| m.rsplit_once("::").map(|(p, _)| p.to_string()).unwrap_or_default()).collect()
}

/// The graph between the direct children of `level`: an edge from `a::x` to `b::y` (below `level`)
/// becomes one between the children holding them.
fn project(graph: &Graph, level: &str) -> Graph {
    let prefix = if level.is_empty() { String::new() } else { format!("{level}::") };
    let child = |m: &str| -> Option<String> {
        let rest = m.strip_prefix(&prefix)?;
        Some(format!("{prefix}{}", rest.split("::").next().unwrap_or_default()))
    };
    let mut projected = Graph::new();
    for (from, targets) in graph {
        let Some(a) = child(from) else { continue };
        for target in targets {
            if let Some(b) = child(target).filter(|b| *b != a) {
                projected.entry(a.clone()).or_default().insert(b);
            }
        }
    }
    projected
}

/// The cycles of `graph`: its strongly connected components of more than one module (Tarjan),
/// each sorted, in a stable order.
fn strongly_connected(graph: &Graph) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            let graph = self.graph;
            for w in graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    self.low.insert(v, self.low[v].min(self.low[w.as_str()]));
                } else if self.stack.contains(&w.as_str()) {
                    self.low.insert(v, self.low[v].min(self.index[w.as_str()]));
                }
            }
            if self.low[v] == self.index[v] {
                let at = self.stack.iter().rposition(|x| *x == v).unwrap();
                let mut component: Vec<String> = self.stack.drain(at..).map(str::to_string).collect();
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk { graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), found: Vec::new() };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found.sort();
    walk.found
}
