//! Workflow definitions as an operator meets them: `workflow check` on a folder (the
//! shipped definitions pass; a broken one is refused with exit 2 and errors that name
//! the file, place and key; the service itself refuses to start on it), and
//! docs/workflows.md's diagrams, which must be what `workflow graph` prints today.
//! No services.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn coordinator(args: &[&str], config_dir: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    cmd.args(args)
        .current_dir(test_support::repo_root())
        .env("COORDINATOR_ENV", "test")
        .env_remove("RUST_LOG");
    if let Some(dir) = config_dir {
        cmd.env("COORDINATOR_CONFIG_DIR", dir);
    }
    cmd.output().expect("coordinator binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A valid definition (the unit tests' too); without its clock's duration, a broken one.
const REVIEW: &str = include_str!("fixtures/code_review.toml");
const NO_DURATION: (&str, &str) = ("duration = \"2h\"\n", "");

#[test]
fn check_passes_the_shipped_definitions_and_names_each_one() {
    let out = coordinator(&["workflow", "check"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("ok: 5 workflow definition(s)"), "{text}");
    for line in [
        "feature_delivery v1 (8 states, 9 clocks, starts on requirements_ready from product-director;",
        "design_handoff v1 (2 states, 2 clocks, starts on design_requirements from product-director;",
        "brand_handoff v1 (2 states, 1 clock, starts on brand_requirements from marketing-director;",
        "launch_handoff v2 (3 states, 1 clock, starts on feature_announced from product-director and after feature_delivery reaches completed;",
        "insights_handoff v1 (2 states, 1 clock, starts on market_insights from marketing-director;",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

#[test]
fn a_broken_definition_is_refused_by_check_and_by_the_service_with_exit_2() {
    let config = TempDir::new("coordinator-workflows");
    let workflows = config.0.join("workflows");
    std::fs::create_dir_all(&workflows).expect("workflows dir");
    assert!(REVIEW.contains(NO_DURATION.0));
    std::fs::write(
        workflows.join("code_review.toml"),
        REVIEW.replace(NO_DURATION.0, NO_DURATION.1),
    )
    .expect("write");

    let out = coordinator(
        &["workflow", "check", &workflows.display().to_string()],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    let file = workflows.join("code_review.toml").display().to_string();
    assert!(
        err.contains(&format!(
            "{file}: workflow code_review, clock review, key `duration`: a clock needs a duration"
        )),
        "{err}"
    );

    // The service reads the same folder at start and refuses it before touching anything.
    let out = coordinator(&["serve"], Some(&config.0));
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("key `duration`: a clock needs a duration"),
        "{}",
        stderr(&out)
    );

    // Fixed, the same folder passes, with the new workflow beside the shipped one.
    std::fs::write(workflows.join("code_review.toml"), REVIEW).expect("write");
    let out = coordinator(
        &["workflow", "check", &workflows.display().to_string()],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("ok: 6 workflow definition(s)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn the_diagrams_in_docs_workflows_md_are_what_graph_prints() {
    let doc_path = test_support::repo_root().join("docs/workflows.md");
    let doc = std::fs::read_to_string(&doc_path).expect("docs/workflows.md");
    for (file, _) in coordinator::settings::SHIPPED_WORKFLOWS {
        let name = file.trim_end_matches(".toml");
        let out = coordinator(&["workflow", "graph", name], None);
        assert!(out.status.success(), "{}", stderr(&out));
        let expected = format!(
            "<!-- graph {name} -->\n```mermaid\n{}```\n<!-- end graph -->",
            stdout(&out)
        );
        assert!(
            doc.contains(&expected),
            "docs/workflows.md does not hold the current diagram of {name}; put this there:\n{expected}"
        );
    }
    let out = coordinator(&["workflow", "graph", "no_such"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out)
        .contains("no workflow definition named \"no_such\"; defined: brand_handoff, design_handoff, feature_delivery, insights_handoff, launch_handoff"));
}

#[test]
fn every_diagram_parses_with_mermaids_own_parser_and_a_broken_one_does_not() {
    let root = test_support::repo_root();
    let installed = root.join("target/mermaid");
    assert!(
        installed.join("node_modules/mermaid").is_dir(),
        "Mermaid's parser is not installed: run `make mermaid-parser` (make test does)"
    );
    // The shipped definitions and the tests' invented one, as `workflow graph` draws them.
    let config = TempDir::new("coordinator-graphs");
    std::fs::create_dir_all(config.0.join("workflows")).expect("workflows dir");
    std::fs::write(config.0.join("workflows/code_review.toml"), REVIEW).expect("write");
    let shipped = coordinator::settings::SHIPPED_WORKFLOWS
        .iter()
        .map(|(file, _)| file.trim_end_matches(".toml"));
    let names: Vec<&str> = shipped.chain(["code_review"]).collect();
    let mut files = Vec::new();
    for name in &names {
        let out = coordinator(&["workflow", "graph", name], Some(&config.0));
        assert!(out.status.success(), "{}", stderr(&out));
        let file = config.0.join(format!("{name}.mmd"));
        std::fs::write(&file, stdout(&out)).expect("write diagram");
        files.push(file);
    }
    let broken = config.0.join("broken.mmd");
    std::fs::write(&broken, "stateDiagram-v2\n    reviewing --> : no target\n").expect("write");

    let parse = |files: &[PathBuf]| {
        let out = Command::new("node")
            .arg(root.join("crates/coordinator/tests/mermaid/check.mjs"))
            .arg(&installed)
            .args(files)
            .output()
            .expect("node runs");
        (
            out.status.success(),
            format!("{}{}", stdout(&out), stderr(&out)),
        )
    };
    let (ok, text) = parse(&files);
    assert!(ok, "{text}");
    assert_eq!(
        text.matches(": stateDiagram").count(),
        names.len(),
        "{text}"
    );
    let (ok, text) = parse(&[broken]);
    assert!(!ok && text.contains("Parse error"), "{text}");
}
