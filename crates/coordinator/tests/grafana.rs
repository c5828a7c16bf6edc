//! docs/grafana/coordinator.json is a Grafana dashboard that parses, whose panels each
//! have a query, and whose queries name only series the coordinator serves. Pure file
//! reading, no services.

use std::collections::BTreeSet;

fn dashboard() -> serde_json::Value {
    let path = test_support::repo_root().join("docs/grafana/coordinator.json");
    let text = std::fs::read_to_string(&path).expect("docs/grafana/coordinator.json");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `expr` without its label lists: `by (...)`, `without (...)`, `on (...)`,
/// `ignoring (...)`, `group_left (...)`, `group_right (...)`.
fn without_label_lists(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    'scan: while !rest.is_empty() {
        for kw in [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ] {
            let boundary = out
                .chars()
                .last()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            if let Some(after) = rest.strip_prefix(kw).filter(|_| boundary) {
                if let Some(list) = after.trim_start().strip_prefix('(') {
                    if let Some(end) = list.find(')') {
                        out.push(' ');
                        rest = &list[end + 1..];
                        continue 'scan;
                    }
                }
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

/// The metric names a PromQL expression reads: identifiers outside label lists and
/// matchers that are not called like functions.
fn series(expr: &str) -> BTreeSet<String> {
    let expr = without_label_lists(expr);
    let mut out = BTreeSet::new();
    let mut labels = 0usize;
    let mut word = String::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            if chars
                .peek()
                .is_some_and(|n| n.is_ascii_alphanumeric() || *n == '_' || *n == ':')
            {
                continue;
            }
            let next = chars.clone().find(|n| !n.is_whitespace());
            let is_call = next == Some('(');
            if labels == 0
                && !is_call
                && (word.starts_with("coordinator_") || word.starts_with("agent_"))
            {
                out.insert(std::mem::take(&mut word));
            }
            word.clear();
        } else {
            match c {
                '{' => labels += 1,
                '}' => labels = labels.saturating_sub(1),
                _ => {}
            }
        }
    }
    out
}

#[test]
fn the_dashboard_parses_and_every_panel_queries_series_the_coordinator_serves() {
    let d = dashboard();
    assert_eq!(d["uid"], "coordinator");
    assert!(d["schemaVersion"].as_i64().is_some_and(|v| v >= 36));
    let metrics = coordinator::service::runtime::Metrics::new();
    let served: BTreeSet<&str> = metrics.names.iter().map(String::as_str).collect();
    let panels = d["panels"].as_array().expect("panels");
    let mut named = BTreeSet::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap_or("?");
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("panel {title:?} has no query"));
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
            let read = series(expr);
            assert!(
                !read.is_empty(),
                "panel {title:?}: `{expr}` reads no coordinator series"
            );
            for s in read {
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|suffix| s.strip_suffix(suffix).filter(|b| served.contains(b)))
                    .unwrap_or(&s);
                assert!(
                    served.contains(base),
                    "panel {title:?}: {s} (in `{expr}`) is not a metric the coordinator serves"
                );
                named.insert(base.to_string());
            }
        }
    }
    // The seeds' three, and the state the issue asks to see.
    for must in [
        "agent_messages_sent_total",
        "agent_message_duration_seconds",
        "agent_active_connections",
        "coordinator_handoff_latency_seconds",
        "coordinator_sla_breaches_total",
        "coordinator_workflows",
        "coordinator_escalations_open",
        "coordinator_outbox_oldest_age_seconds",
        "coordinator_dead_letters_unresolved",
        "coordinator_partitions_held",
        "coordinator_circuit_breaker_state",
        "coordinator_agents",
    ] {
        assert!(named.contains(must), "no panel shows {must}");
    }
}

#[test]
fn the_series_reader_finds_metrics_not_functions_or_labels() {
    let read = series(
        "histogram_quantile(0.95, sum by (kind, agent_type) (rate(coordinator_handoff_latency_seconds_bucket{kind=\"agent_x\"}[5m]))) / on (agent_id) coordinator_workflows",
    );
    assert_eq!(
        read.into_iter().collect::<Vec<_>>(),
        vec![
            "coordinator_handoff_latency_seconds_bucket",
            "coordinator_workflows"
        ]
    );
}
