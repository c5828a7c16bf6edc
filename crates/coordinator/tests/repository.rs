//! The repository stands on its own: no file sends the reader to a document outside it,
//! and no doc or comment refers to an issue tracker's numbers (they mean nothing to a
//! reader of a clone). Pure file reading, no services.

use std::path::{Path, PathBuf};

/// Applied migrations are immutable (sqlx refuses a database whose applied migration
/// changed checksum), so their first comments stay as they were written.
const IMMUTABLE: &[&str] = &[
    "migrations/20261121000001_core.sql",
    "migrations/20261122000003_batches.sql",
];

fn root() -> PathBuf {
    test_support::repo_root()
}

/// Every text file of the repository but build output and version control.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | "node_modules" | ".venv") {
                files(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

fn texts() -> Vec<(String, String)> {
    let mut paths = Vec::new();
    files(&root(), &mut paths);
    let mut out = Vec::new();
    for p in paths {
        let rel = p
            .strip_prefix(root())
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        if IMMUTABLE.contains(&rel.as_str()) {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(&p) {
            out.push((rel, text));
        }
    }
    out
}

/// Names of documents that live outside this repository (spelled in pieces so that
/// this file does not match itself).
fn outside_documents() -> Vec<String> {
    vec![
        ["PROTOCOL", ".md"].concat(),
        ["BRIEF", ".md"].concat(),
        ["STYLE", ".md"].concat(),
        ["../", "shared"].concat(),
        ["seeds", "/"].concat(),
        ["shared project", " folder"].concat(),
    ]
}

/// `path:line: text` of every line, in every file, that `matches`.
fn lines_matching(matches: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in texts() {
        for (i, line) in text.lines().enumerate() {
            if matches(line) {
                found.push(format!("{path}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn no_file_refers_to_a_document_outside_the_repository() {
    let names = outside_documents();
    let found = lines_matching(|line| names.iter().any(|n| line.contains(n.as_str())));
    assert!(
        found.is_empty(),
        "refer to docs/protocol.md (or another file here) instead:\n{}",
        found.join("\n")
    );
}

/// An issue tracker's number: the word, an optional `s`, spaces or `#`, then a digit.
fn names_an_issue_number(line: &str) -> bool {
    let lower = line.to_lowercase();
    let mut rest = lower.as_str();
    while let Some(at) = rest.find("issue") {
        let after = rest[at + "issue".len()..].trim_start_matches('s');
        let after = after.trim_start_matches([' ', '#']);
        if after.starts_with(|c: char| c.is_ascii_digit()) {
            return true;
        }
        rest = &rest[at + "issue".len()..];
    }
    false
}

#[test]
fn no_doc_or_comment_names_an_issue_number() {
    // Spelled in pieces so that this file does not match itself.
    assert!(names_an_issue_number(
        &["the workload of Is", "sue 3: p99"].concat()
    ));
    assert!(names_an_issue_number(&["see is", "sue #12"].concat()));
    assert!(names_an_issue_number(&["is", "sues 3 and 4"].concat()));
    assert!(!names_an_issue_number("a known issue with lapin"));
    let found = lines_matching(names_an_issue_number);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_immutable_migrations_exist() {
    for m in IMMUTABLE {
        assert!(root().join(m).is_file(), "{m} is listed but gone");
    }
}

/// The key cells of the README's configuration table, as patterns of dotted segments
/// (`<clock>` matches any one segment).
fn documented_keys(readme: &str) -> Vec<Vec<String>> {
    let table = readme
        .split("| key | default | meaning |")
        .nth(1)
        .expect("the README has a configuration table");
    let mut keys = Vec::new();
    // The rest of the header line, then the separator line.
    for row in table.lines().skip(2) {
        let Some(cell) = row.strip_prefix("| ").and_then(|r| r.split(" |").next()) else {
            break;
        };
        for part in cell.split(" / ") {
            let key = part.trim().trim_matches('`').trim_matches(['[', ']']);
            keys.push(key.split('.').map(str::to_string).collect());
        }
    }
    keys
}

/// Every leaf key of a TOML table, dotted. An array of tables counts as its own key.
fn leaf_keys(prefix: &str, value: config::Value, out: &mut Vec<String>) {
    match value.kind {
        config::ValueKind::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_keys(&key, v, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn every_key_of_the_default_configuration_is_in_the_readme_table() {
    let text = std::fs::read_to_string(root().join("config/default.toml")).expect("default.toml");
    let built = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .expect("default.toml parses");
    let mut keys = Vec::new();
    let table: config::Map<String, config::Value> = built.try_deserialize().expect("a table");
    leaf_keys(
        "",
        config::Value::new(None, config::ValueKind::Table(table)),
        &mut keys,
    );
    // `[[agents]]` is commented out in the file; the table documents it anyway.
    assert!(keys.len() > 40, "{keys:?}");
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let patterns = documented_keys(&readme);
    let documented = |key: &str| {
        let segments: Vec<&str> = key.split('.').collect();
        patterns.iter().any(|p| {
            p.len() <= segments.len()
                && p.iter()
                    .zip(&segments)
                    .all(|(want, have)| want.starts_with('<') || want == have)
        })
    };
    let missing: Vec<&String> = keys.iter().filter(|k| !documented(k)).collect();
    assert!(
        missing.is_empty(),
        "config/default.toml keys missing from the README's configuration table: {missing:?}"
    );
}

/// The coordinator's code knows no workflow by its business: which payload member keys a
/// workflow is each definition's `key` (config/workflows/), and the managers' `epic_id`
/// column is derived from it in the database. Only the engine's unit tests, which feed
/// it feature-delivery messages, spell the name.
#[test]
fn no_code_of_the_coordinator_names_a_definitions_key() {
    let name = ["epic", "_id"].concat();
    let found: Vec<String> = texts()
        .into_iter()
        .filter(|(path, _)| {
            path.starts_with("crates/coordinator/src/")
                && path != "crates/coordinator/src/engine/tests.rs"
        })
        .flat_map(|(path, text)| {
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.contains(&name))
                .map(|(i, l)| format!("{path}:{}: {}", i + 1, l.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(found.is_empty(), "{}", found.join("\n"));
}
