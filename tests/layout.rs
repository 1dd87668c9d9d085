//! The house rules of the source tree, checked on the tree itself: files
//! and functions stay small enough to read, the top-level modules import
//! each other without a cycle, the decision logic stays free of the config
//! format, the controller and the simulator, and the layout documented in
//! `src/lib.rs` and `docs/ARCHITECTURE.md` is the tree's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 700;
const MAX_FN_LINES: usize = 100;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `src/`, sorted, as (path relative to src, text).
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = root().join("src");
    let mut paths = Vec::new();
    walk(&src, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// The module path of a file: `control/budget.rs` → `control::budget`,
/// `sim/world/mod.rs` → `sim::world`; None for the crate roots.
fn module_path(rel: &str) -> Option<String> {
    let p = rel.strip_suffix(".rs")?;
    let p = p.strip_suffix("/mod").unwrap_or(p);
    (p != "lib" && p != "main").then(|| p.replace('/', "::"))
}

/// The text without its unit-test module (tests may use anything).
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests")
        .map_or(text, |i| &text[..i])
}

/// Source with comments, string and char literals blanked (newlines
/// kept), so braces and `crate::` paths can be read from what remains.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, s: &[u8]| {
        for &c in s {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            let end = text[i + 2..].find("*/").map_or(rest.len(), |e| e + 4);
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"r#\"") || rest.starts_with(b"r\"") {
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let start = 2 + hashes;
            let end = text[i + start..]
                .find(&close)
                .map_or(rest.len(), |e| start + e + close.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{..}'), not a lifetime ('a).
            let len = if rest.get(1) == Some(&b'\\') {
                rest.iter().skip(2).position(|&c| c == b'\'').map(|p| p + 3)
            } else if rest.get(2) == Some(&b'\'') {
                Some(3)
            } else {
                text[i + 1..]
                    .chars()
                    .next()
                    .filter(|c| c.len_utf8() > 1)
                    .and_then(|c| {
                        (rest.get(1 + c.len_utf8()) == Some(&b'\'')).then(|| 2 + c.len_utf8())
                    })
            };
            let len = len.unwrap_or(1);
            blank(&mut out, &rest[..len]);
            i += len;
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[test]
fn no_source_file_is_over_700_lines() {
    let long: Vec<String> = sources()
        .into_iter()
        .filter(|(_, t)| t.lines().count() > MAX_FILE_LINES)
        .map(|(p, t)| format!("src/{p}: {} lines", t.lines().count()))
        .collect();
    assert!(long.is_empty(), "split these files: {long:#?}");
}

/// (file, line, name, lines) of every `fn` with a body.
fn functions(rel: &str, text: &str) -> Vec<(String, usize, String, usize)> {
    let code = code_only(text);
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some(at) = line.find("fn ") else { continue };
        let before = &line[..at];
        if !(before.trim().is_empty()
            || before
                .trim_end()
                .ends_with(|c: char| c.is_alphanumeric() || c == ')'))
        {
            continue;
        }
        let name: String = line[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        // Find the body: the first `{` before a `;` ends the signature.
        let mut depth = 0i64;
        let mut opened = false;
        let mut end = None;
        'scan: for (m, l) in lines.iter().enumerate().skip(n) {
            let from = if m == n { at } else { 0 };
            for c in l[from..].chars() {
                match c {
                    ';' if !opened && depth == 0 => break 'scan,
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => {
                        depth -= 1;
                        if opened && depth == 0 {
                            end = Some(m);
                            break 'scan;
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some(e) = end {
            out.push((rel.to_string(), n + 1, name, e - n + 1));
        }
    }
    out
}

#[test]
fn no_function_is_over_100_lines() {
    let long: Vec<String> = sources()
        .iter()
        .flat_map(|(p, t)| functions(p, t))
        .filter(|f| f.3 > MAX_FN_LINES)
        .map(|(p, l, n, len)| format!("src/{p}:{l} fn {n}: {len} lines"))
        .collect();
    assert!(long.is_empty(), "split these functions: {long:#?}");
}

#[test]
fn the_function_counter_sees_bodies_and_skips_literals() {
    let text = "fn a() {\n    let s = \"}{\";\n    let c = '{';\n    // }\n}\nfn b();\npub(crate) fn c<'a>(x: &'a str) -> &'a str {\n    x\n}\n";
    let f = functions("x.rs", text);
    let got: Vec<(&str, usize)> = f.iter().map(|f| (f.2.as_str(), f.3)).collect();
    assert_eq!(got, [("a", 5), ("c", 3)]);
}

/// Top-level module → the top-level modules its non-test code names.
fn module_imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in sources() {
        let Some(path) = module_path(&rel) else {
            continue;
        };
        let top = path.split("::").next().unwrap().to_string();
        let code = code_only(without_tests(&text));
        let entry = deps.entry(top.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + 7..];
            if rest.starts_with('{') {
                let group = &rest[1..rest.find('}').unwrap_or(rest.len())];
                for item in group.split(',') {
                    let name = item.trim().split("::").next().unwrap_or("").trim();
                    if !name.is_empty() && name != top {
                        entry.insert(name.to_string());
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    entry.insert(name);
                }
            }
        }
    }
    deps
}

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if !done.insert(m.to_string()) {
            return None;
        }
        path.push(m.to_string());
        for d in deps.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, deps, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let deps = module_imports();
    let mut done = BTreeSet::new();
    for m in deps.keys() {
        if let Some(cycle) = visit(m, &deps, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_decision_logic_imports_neither_config_nor_controller_nor_sim() {
    let deps = module_imports();
    let control = deps.get("control").expect("src/control exists");
    let bad: Vec<&String> = control
        .iter()
        .filter(|d| ["config", "controller", "sim"].contains(&d.as_str()))
        .collect();
    assert!(bad.is_empty(), "control/ imports {bad:?}");
}

#[test]
fn lib_and_architecture_name_every_module() {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let arch = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let table: String = arch
        .split("## Modules")
        .nth(1)
        .expect("ARCHITECTURE.md has a Modules section")
        .split("\n## ")
        .next()
        .unwrap()
        .to_string();
    let mut missing = Vec::new();
    for (rel, _) in sources() {
        let Some(path) = module_path(&rel) else {
            continue;
        };
        let depth = path.matches("::").count();
        if depth == 0 && !lib.contains(&format!("[`{path}`]")) {
            missing.push(format!("src/lib.rs layout comment: [`{path}`]"));
        }
        // Modules two deep are named in the table; deeper ones in their
        // parent's row.
        if depth <= 1 && !table.contains(&format!("`{path}`")) {
            missing.push(format!("docs/ARCHITECTURE.md module table: `{path}`"));
        }
    }
    assert!(missing.is_empty(), "undocumented modules: {missing:#?}");
}
