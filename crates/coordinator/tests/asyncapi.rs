//! `docs/asyncapi.yaml` is accepted by the AsyncAPI project's own parser
//! (`@asyncapi/parser`, installed by `make asyncapi-parser`) with every operation,
//! message and queue channel resolved; every reference in it resolves; and it names
//! every exchange, queue, message type of the catalog and schema. No services.

use std::collections::BTreeSet;
use std::path::PathBuf;

use coordinator::domain::definition::Action;
use protocol::payloads::schemas;

fn docs() -> PathBuf {
    test_support::repo_root().join("docs")
}

/// Every `$ref` in a YAML document, as written.
fn refs(v: &serde_yaml_ng::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_yaml_ng::Value::Mapping(m) => {
            for (k, v) in m {
                if k.as_str() == Some("$ref") {
                    if let Some(r) = v.as_str() {
                        out.insert(r.to_string());
                    }
                }
                refs(v, out);
            }
        }
        serde_yaml_ng::Value::Sequence(s) => s.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

fn asyncapi() -> serde_yaml_ng::Value {
    let text = std::fs::read_to_string(docs().join("asyncapi.yaml")).expect("docs/asyncapi.yaml");
    serde_yaml_ng::from_str(&text).expect("docs/asyncapi.yaml is YAML")
}

#[test]
fn asyncapi_is_3_0_and_every_reference_resolves() {
    let doc = asyncapi();
    assert_eq!(doc["asyncapi"].as_str(), Some("3.0.0"));
    let mut all = BTreeSet::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        if let Some(file) = r.strip_prefix("./schemas/") {
            let file = file.split('#').next().unwrap_or(file);
            assert!(
                docs().join("schemas").join(file).is_file(),
                "{r}: no such schema file"
            );
        } else {
            // A reference inside the document: #/components/<kind>/<name>.
            let mut node = &doc;
            for part in r.trim_start_matches("#/").split('/') {
                node = &node[part];
            }
            assert!(!node.is_null(), "{r} resolves to nothing");
        }
    }
    // Every schema file is used.
    for (name, _) in schemas() {
        assert!(
            all.iter()
                .any(|r| r.starts_with(&format!("./schemas/{name}"))),
            "{name} is referenced by no message"
        );
    }
}

#[test]
fn asyncapi_names_every_message_type_exchange_and_queue() {
    let doc = asyncapi();
    let text = std::fs::read_to_string(docs().join("asyncapi.yaml")).expect("asyncapi");
    let messages = doc["components"]["messages"]
        .as_mapping()
        .expect("components.messages");
    let names: BTreeSet<String> = messages
        .values()
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect();
    let dir = test_support::repo_root().join("config");
    let settings = coordinator::settings::Settings::load_from(&dir, None).expect("defaults");
    let mut catalog: BTreeSet<String> = settings.messages.common.iter().cloned().collect();
    for role in settings.roles.values() {
        catalog.extend(role.publishes.iter().cloned());
    }
    // Every task and notice of the shipped workflow definitions.
    for def in settings.workflows.iter() {
        let actions = def
            .states
            .iter()
            .flat_map(|s| s.rules.iter().flat_map(|r| &r.actions))
            .chain(&def.start.actions);
        for action in actions {
            match action {
                Action::SendTask { task, .. } => catalog.insert(task.to_string()),
                Action::Notify { message, .. } => catalog.insert(message.to_string()),
                _ => false,
            };
        }
    }
    assert!(catalog.contains("design_request") && catalog.contains("feature_deployed"));
    for sent in [
        "sla_warning",
        "sla_breached",
        "escalation_raised",
        "message_rejected",
        "rate_limited",
        "message_set_aside",
        "message_undeliverable",
        "dead_letters_unresolved",
        "agent_stale",
    ] {
        catalog.insert(sent.to_string());
    }
    let missing: Vec<_> = catalog.difference(&names).collect();
    assert!(
        missing.is_empty(),
        "no message in asyncapi.yaml for {missing:?}"
    );
    for name in [
        "agent.topic",
        "agent.direct",
        "agent.fanout",
        "agent.dlx",
        "coordinator.inbox",
        "oncall.escalations",
        "agent.dead_letters",
        "agent.{agent_id}.tasks",
        "agent.{agent_id}.commands",
        "agent.{agent_id}.events",
        "task.{agent_type}",
        "command.{agent_id}",
        "escalation.{severity}.{target}",
        "{agent_type}.{message_type}",
    ] {
        assert!(text.contains(name), "asyncapi.yaml does not name {name}");
    }
}

#[test]
fn the_asyncapi_projects_parser_accepts_the_document_with_every_operation_resolved() {
    let root = test_support::repo_root();
    let installed = root.join("target/asyncapi");
    assert!(
        installed.join("node_modules/@asyncapi/parser").is_dir(),
        "the AsyncAPI parser is not installed: run `make asyncapi-parser` (make test does)"
    );
    let out = std::process::Command::new("node")
        .arg(root.join("crates/coordinator/tests/asyncapi/check.mjs"))
        .arg(docs().join("asyncapi.yaml"))
        .arg(&installed)
        .output()
        .expect("node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 problems"), "{text}");
}
