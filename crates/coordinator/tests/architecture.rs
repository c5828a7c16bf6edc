//! The layers stay layers: reading every `use` line and path of `src/`, each module
//! uses only the layers it may (docs/architecture.md), no two modules use each other,
//! SQL's crate is named only in `db`, lapin only in `amqp`, and the pure layers name no
//! I/O crate. Test modules (`#[cfg(test)]`, `tests.rs`) may reach across to set things
//! up and are not read. Pure file reading, no services.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules grouped in layers, and the layers each may use (besides itself).
const LAYERS: &[(&str, &[&str], &[&str])] = &[
    ("domain", &["domain"], &[]),
    ("engine", &["engine"], &["domain"]),
    (
        "support",
        &[
            "settings",
            "secret",
            "encryption",
            "retry",
            "breaker",
            "clock",
            "telemetry",
            "failpoint",
        ],
        &["domain", "engine"],
    ),
    ("edges", &["db", "amqp"], &["domain", "engine", "support"]),
    (
        "service",
        &["service"],
        &["domain", "engine", "support", "edges"],
    ),
    (
        "entry",
        &["http", "cli", "app"],
        &["domain", "engine", "support", "edges", "service"],
    ),
];

/// Modules whose submodules are units of their own for the cycle check.
const FOLDERS: &[&str] = &["domain", "engine", "db", "amqp", "service", "cli"];

/// External crates only these modules may name (the binary, `main.rs`, may name any).
const CONFINED: &[(&str, &[&str])] = &[
    ("sqlx", &["db"]),
    ("lapin", &["amqp"]),
    ("axum", &["http"]),
    ("utoipa", &["http"]),
    ("maud", &["http"]),
    ("clap", &["cli"]),
    ("prometheus", &["service"]),
    ("tracing_subscriber", &["telemetry"]),
    ("opentelemetry", &["telemetry"]),
    ("opentelemetry_sdk", &["telemetry"]),
    ("opentelemetry_otlp", &["telemetry"]),
    ("config", &["settings"]),
];

/// What the pure layers may not name at all.
const IO_CRATES: &[&str] = &[
    "tokio",
    "tokio_util",
    "futures_util",
    "sqlx",
    "lapin",
    "axum",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn layer_of(top: &str) -> Option<&'static str> {
    LAYERS
        .iter()
        .find(|(_, members, _)| members.contains(&top))
        .map(|(name, _, _)| *name)
}

fn may_use(from: &str, to: &str) -> bool {
    from == to
        || LAYERS
            .iter()
            .any(|(name, _, uses)| *name == from && uses.contains(&to))
}

/// A module's path from its file: `service/timers/fire.rs` → `service::timers::fire`.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The code of a file without comments, string and character literals, or test
/// modules.
fn code(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            let mut depth = 0;
            while i < b.len() {
                if text[i..].starts_with("/*") {
                    depth += 1;
                    i += 2;
                } else if text[i..].starts_with("*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let hashes = rest[1..].bytes().take_while(|c| *c == b'#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let start = 2 + hashes;
            i += start
                + rest[start..]
                    .find(&close)
                    .map_or(rest.len() - start, |e| e + close.len());
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && is_char_literal(rest) {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            let ch = rest.chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    without_test_modules(&out)
}

/// `'x'`, `'\n'`, `'\u{1F600}'`: not a lifetime (`'a`, `'static`).
fn is_char_literal(rest: &str) -> bool {
    let mut chars = rest.chars().skip(1);
    match chars.next() {
        Some('\\') => true,
        Some(_) => chars.next() == Some('\''),
        None => false,
    }
}

fn without_test_modules(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // The item the attribute is on: skip to its end (a `;` or a balanced block).
        let Some(open) = after.find(['{', ';']) else {
            rest = "";
            break;
        };
        if after.as_bytes()[open] == b';' {
            rest = &after[open + 1..];
            continue;
        }
        let mut depth = 0;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Every `use` tree flattened to its paths: `use a::{b, c::{d, e}}` → a::b, a::c::d, a::c::e.
fn use_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = find_word(rest, "use") {
        let after = &rest[at + 3..];
        let Some(end) = after.find(';') else { break };
        flatten("", after[..end].trim(), &mut paths);
        rest = &after[end..];
    }
    paths
}

/// The start of `word` as a whole word.
fn find_word(s: &str, word: &str) -> Option<usize> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(i) = s[from..].find(word) {
        let at = from + i;
        let before = s[..at].chars().next_back();
        let after = s[at + word.len()..].chars().next();
        if !before.is_some_and(ident) && !after.is_some_and(ident) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

fn flatten(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let base = tree[..open].trim().trim_end_matches("::");
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let base = join(prefix, base);
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    flatten(&base, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        flatten(&base, &inner[start..], out);
    } else if !tree.is_empty() {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        out.push(join(prefix, path));
    }
}

fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}::{path}"),
    }
}

/// Paths written inline: `crate::a::b`, `super::x`, `sqlx::query`.
fn inline_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let chars: Vec<(usize, char)> = code.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        let starts = ident(c) && (i == 0 || !ident(chars[i - 1].1) && chars[i - 1].1 != ':');
        if starts {
            let mut end = at;
            let mut j = i;
            while j < chars.len() && (ident(chars[j].1) || chars[j].1 == ':') {
                end = chars[j].0 + chars[j].1.len_utf8();
                j += 1;
            }
            let path = code[at..end].trim_end_matches(':');
            if path.contains("::") {
                out.push(path.to_string());
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// A path's target module inside this crate, as a unit: `crate::db::batch::write` →
/// `db::batch`; `super::rows` from `engine::batch` → `engine::rows`. `None` for
/// other crates.
fn unit_of(module: &[String], path: &str) -> Option<String> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = match segs.first().copied() {
        Some("crate") => {
            segs.remove(0);
            Vec::new()
        }
        Some("super") => {
            let mut b = module.to_vec();
            while segs.first() == Some(&"super") {
                segs.remove(0);
                b.pop();
            }
            b
        }
        Some("self") => {
            segs.remove(0);
            module.to_vec()
        }
        _ => return None,
    };
    base.extend(segs.iter().map(|s| s.to_string()));
    let top = base.first()?.clone();
    layer_of(&top)?;
    if FOLDERS.contains(&top.as_str()) {
        // `engine::Processor` names the folder itself; `engine::rows::X` a submodule.
        match base.get(1) {
            Some(sub) if sub.chars().next().is_some_and(|c| c.is_lowercase()) => {
                let path = src().join(&top).join(sub);
                if path.with_extension("rs").is_file() || path.is_dir() {
                    return Some(format!("{top}::{sub}"));
                }
                Some(top)
            }
            _ => Some(top),
        }
    } else {
        Some(top)
    }
}

fn unit_of_module(module: &[String]) -> Option<String> {
    let top = module.first()?;
    if FOLDERS.contains(&top.as_str()) && module.len() > 1 {
        Some(format!("{top}::{}", module[1]))
    } else {
        Some(top.clone())
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

struct Module {
    path: Vec<String>,
    file: PathBuf,
    paths: Vec<String>,
}

fn modules() -> Vec<Module> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "tests.rs"))
        .map(|file| {
            let text = std::fs::read_to_string(&file).expect("read");
            let code = code(&text);
            let mut paths = use_paths(&code);
            paths.extend(inline_paths(&code));
            Module {
                path: module_path(&file),
                file,
                paths,
            }
        })
        .collect()
}

fn rel(file: &Path) -> String {
    file.strip_prefix(src())
        .map_or_else(|_| file.display().to_string(), |p| p.display().to_string())
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let mut wrong = BTreeSet::new();
    for m in modules() {
        // lib.rs declares the modules; main.rs is the binary, over everything.
        let Some(top) = m.path.first() else { continue };
        if top == "main" {
            continue;
        }
        let from = layer_of(top).unwrap_or_else(|| panic!("{top} is in no layer"));
        for p in &m.paths {
            let Some(unit) = unit_of(&m.path, p) else {
                continue;
            };
            let to_top = unit.split("::").next().unwrap_or(&unit);
            let Some(to) = layer_of(to_top) else { continue };
            if !may_use(from, to) {
                wrong.insert(format!("{} ({from}) uses {p} ({to})", rel(&m.file)));
            }
        }
    }
    assert!(wrong.is_empty(), "back-edges:\n{}", itertools(&wrong));
}

#[test]
fn no_two_modules_use_each_other_even_through_others() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in modules() {
        let Some(from) = unit_of_module(&m.path) else {
            continue;
        };
        if from == "main" {
            continue;
        }
        let edges = graph.entry(from.clone()).or_default();
        for p in &m.paths {
            if let Some(to) = unit_of(&m.path, p) {
                if to != from && !(from.starts_with(&format!("{to}::"))) {
                    edges.insert(to);
                }
            }
        }
    }
    // A folder's own file (`engine/mod.rs`) is its unit; what its submodules use of it
    // is part of the folder. Cycles among the units:
    let mut cycles = BTreeSet::new();
    for start in graph.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, trail)) = stack.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if next == start {
                    let mut c = trail.clone();
                    c.push(start.clone());
                    cycles.insert(c.join(" → "));
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    assert!(cycles.is_empty(), "import circles:\n{}", itertools(&cycles));
}

#[test]
fn sql_only_in_db_lapin_only_in_amqp_and_no_io_in_the_pure_layers() {
    let mut wrong = BTreeSet::new();
    for m in modules() {
        let Some(top) = m.path.first() else { continue };
        if top == "main" {
            continue;
        }
        let pure = matches!(layer_of(top), Some("domain" | "engine"));
        for p in &m.paths {
            let root = p.split("::").next().unwrap_or(p);
            if let Some((_, allowed)) = CONFINED.iter().find(|(c, _)| *c == root) {
                if !allowed.contains(&top.as_str()) {
                    wrong.insert(format!("{} names {root} ({p})", rel(&m.file)));
                }
            }
            if pure && IO_CRATES.contains(&root) {
                wrong.insert(format!("{} (pure) names {root} ({p})", rel(&m.file)));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", itertools(&wrong));
}

/// The protocol crate is what an agent written in Rust depends on: no I/O crate, and
/// nothing of the service.
#[test]
fn the_protocol_crate_depends_on_no_io_crate() {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/Cargo.toml"),
    )
    .expect("protocol's Cargo.toml");
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|d| d.split("\n[").next())
        .expect("a [dependencies] section");
    for name in ["tokio", "sqlx", "lapin", "axum", "coordinator"] {
        assert!(
            !deps.lines().any(|l| l.trim_start().starts_with(name)),
            "crates/protocol depends on {name}"
        );
    }
}

/// The checks above find what they look for (a reader that saw nothing would pass).
#[test]
fn the_reader_sees_uses_through_groups_super_and_inline_paths() {
    let code = code(
        "use crate::{db::{self, batch::write}, engine};\nuse super::rows::Queued;\n// use crate::cli;\nfn f() { let s = \"crate::http\"; crate::service::pipeline::apply(); sqlx::query(s); }\n#[cfg(test)]\nmod tests { use crate::cli::run; }",
    );
    let mut paths = use_paths(&code);
    paths.extend(inline_paths(&code));
    for want in [
        "crate::db::self",
        "crate::db::batch::write",
        "crate::engine",
        "super::rows::Queued",
        "crate::service::pipeline::apply",
        "sqlx::query",
    ] {
        assert!(
            paths.iter().any(|p| p == want),
            "missing {want} in {paths:?}"
        );
    }
    assert!(
        !paths
            .iter()
            .any(|p| p.contains("cli") || p.contains("http")),
        "comments, strings and test modules are not read: {paths:?}"
    );
    let engine_batch = vec!["engine".to_string(), "batch".to_string()];
    assert_eq!(
        unit_of(&engine_batch, "super::rows::Queued").as_deref(),
        Some("engine::rows")
    );
    assert_eq!(
        unit_of(&engine_batch, "crate::db::batch::write").as_deref(),
        Some("db::batch")
    );
    assert!(!may_use("engine", "edges") && may_use("service", "edges"));
}

fn itertools(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join("\n")
}
