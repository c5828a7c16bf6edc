//! One contract version everywhere: what the coordinator writes in `header.version`
//! (`protocol::envelope::VERSION`) is what the README, the protocol, the agents' guide,
//! the AsyncAPI document, the schemas and the Python example say, so nobody writes an
//! agent against an older page.

use test_support::repo_root;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_document_and_the_example_name_the_version_the_coordinator_writes() {
    let v = protocol::envelope::VERSION;
    let expected = [
        (
            "README.md",
            format!("The wire and data contract (version {v})"),
        ),
        ("docs/protocol.md", format!("Contract version **{v}**.")),
        ("docs/protocol.md", format!("and writes **{v}**;")),
        ("docs/protocol.md", format!("\"version\": \"{v}\"")),
        ("docs/agents.md", format!("\"version\": \"{v}\"")),
        ("docs/asyncapi.yaml", format!("version: {v}.0")),
        ("docs/asyncapi.yaml", format!("(contract version {v})")),
        (
            "docs/schemas/envelope.json",
            format!("\"default\": \"{v}\""),
        ),
        (
            "examples/python/coordinator_agent.py",
            format!("CONTRACT_VERSION = \"{v}\""),
        ),
    ];
    let stale: Vec<String> = expected
        .iter()
        .filter(|(path, text)| !read(path).contains(text.as_str()))
        .map(|(path, text)| format!("{path} does not say {text:?}"))
        .collect();
    assert!(stale.is_empty(), "{}", stale.join("\n"));
    // And CHANGELOG.md has an entry for it.
    assert!(
        read("CHANGELOG.md").contains(&format!("### Contract {v} ")),
        "CHANGELOG.md has no \"### Contract {v}\" entry"
    );
}
