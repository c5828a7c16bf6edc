//! Every query in docs/sql.md runs as written, against a database holding a finished
//! workflow (`wf-example-1`), one in testing, an escalation and a dead letter.

use test_support as common;

use common::{process_directly, TestEnv};
use coordinator::engine::Outcome;
use coordinator::service::runtime::Shared;
use sqlx::Row;

fn queries(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim()) {
            (None, "```sql") => current = Some(String::new()),
            (Some(q), "```") => {
                out.push(q.clone());
                current = None;
            }
            (Some(q), _) => {
                q.push_str(line);
                q.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_in_docs_sql_md_runs_as_written() {
    let env = TestEnv::new().await;
    let shared = Shared::new(
        env.settings(),
        env.pool.clone(),
        coordinator::clock::system(),
    );
    let steps = [
        ("product-1", "product-director", "requirements_ready"),
        ("eng-1", "engineering-director", "handoff_acknowledged"),
        ("eng-1", "engineering-director", "feasibility_assessed"),
        ("eng-1", "engineering-director", "effort_estimated"),
        ("eng-1", "engineering-director", "sprint_initialized"),
        ("eng-1", "engineering-director", "feature_completed"),
        ("qa-1", "qa-director", "testing_started"),
        ("qa-1", "qa-director", "bug_discovered"),
        ("eng-1", "engineering-director", "feature_completed"),
        ("qa-1", "qa-director", "testing_started"),
        ("qa-1", "qa-director", "release_approved"),
        ("devops-1", "devops-manager", "deployment_started"),
        ("devops-1", "devops-manager", "deployment_failed"),
        ("devops-1", "devops-manager", "deployment_completed"),
        ("devops-1", "devops-manager", "validation_completed"),
    ];
    for (agent, role, m) in steps {
        let outcome = process_directly(&shared, agent, role, m, "wf-example-1").await;
        assert_eq!(outcome, Outcome::Accepted, "{m}");
    }
    for (agent, role, m) in &steps[..7] {
        process_directly(&shared, agent, role, m, "wf-example-2").await;
    }
    // A rejected one for the dead-letter query.
    let late = process_directly(
        &shared,
        "qa-1",
        "qa-director",
        "testing_started",
        "wf-example-1",
    )
    .await;
    assert!(matches!(late, Outcome::Rejected(_)));

    let doc =
        std::fs::read_to_string(common::repo_root().join("docs/sql.md")).expect("docs/sql.md");
    let qs = queries(&doc);
    assert_eq!(qs.len(), 15, "docs/sql.md promises fifteen queries");
    let mut rows = Vec::new();
    for q in &qs {
        let r = sqlx::query(q)
            .fetch_all(&env.pool)
            .await
            .unwrap_or_else(|e| panic!("query failed: {e}\n{q}"));
        rows.push(r);
    }
    // The questions with data to answer do answer.
    assert_eq!(rows[0].len(), 1, "one workflow in testing");
    assert_eq!(rows[3].len(), 15, "wf-example-1 has fifteen history rows");
    assert!(!rows[4].is_empty(), "SLA compliance has clocks");
    let workflow: String = rows[4][0].try_get("workflow").expect("workflow");
    assert_eq!(workflow, "feature_delivery", "compliance is per workflow");
    assert!(!rows[5].is_empty(), "time in state");
    assert_eq!(rows[6].len(), 1, "the deployment_failed escalation is open");
    let reason: String = rows[7][0].try_get("reason").expect("reason");
    assert_eq!(reason, "not_accepted_in_state");
    let rounds: i32 = rows[8][0].try_get("rounds").expect("rounds");
    assert_eq!(rounds, 2);
    assert_eq!(
        rows[10].len(),
        16,
        "fifteen messages applied and one refused"
    );
    let refused: String = rows[10][15].try_get("result").expect("result");
    assert_eq!(refused, "rejected:not_accepted_in_state");
    // The report's views: the QA director's refused message is its top refusal, what
    // the coordinator sent has latencies, clocks closed, handoffs of the one kind.
    let qa = rows[11]
        .iter()
        .find(|r| r.try_get::<String, _>("orchestrator").ok().as_deref() == Some("qa-director"))
        .expect("the QA director's adherence");
    let top: Option<String> = qa.try_get("top_refusal").expect("top_refusal");
    assert_eq!(top.as_deref(), Some("not_accepted_in_state"));
    assert!(!rows[12].is_empty(), "deliveries by type");
    assert!(!rows[13].is_empty(), "SLA compliance by week and role");
    let kind: String = rows[14][0].try_get("kind").expect("kind");
    assert_eq!(kind, "feature_delivery");
}

/// The relations and columns a table in `doc` names: its first cell's relation, and the
/// backticked names of its last cell outside parentheses (inside them are values and
/// notes: `(`armed` / `met`)`).
fn documented_columns(doc: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(first), Some(last)) = (cells.get(1), cells.iter().rev().nth(1)) else {
            continue;
        };
        let Some(relation) = first.strip_prefix('`').and_then(|r| r.strip_suffix('`')) else {
            continue;
        };
        let (mut depth, mut inside, mut name, mut columns) = (0, false, String::new(), Vec::new());
        for ch in last.chars() {
            match ch {
                '(' if !inside => depth += 1,
                ')' if !inside => depth -= 1,
                '`' if inside => {
                    if depth == 0 {
                        columns.push(std::mem::take(&mut name));
                    }
                    name.clear();
                    inside = false;
                }
                '`' => inside = true,
                c if inside => name.push(c),
                _ => {}
            }
        }
        out.push((relation.to_string(), columns));
    }
    out
}

/// protocol.md section 10 and sql.md name only columns that exist, and name every
/// column of the dead letters an operator works with (resolution included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_relations_have_the_documented_columns() {
    let env = TestEnv::new().await;
    for file in ["docs/protocol.md", "docs/sql.md"] {
        let doc = std::fs::read_to_string(common::repo_root().join(file)).expect("the doc");
        let tables = documented_columns(&doc);
        assert!(
            tables.iter().any(|(r, _)| r == "dead_letters"),
            "{file}: no table of relations found"
        );
        for (relation, columns) in tables {
            let actual: Vec<String> = sqlx::query_scalar(
                "SELECT column_name::text FROM information_schema.columns
                 WHERE table_schema = 'public' AND table_name = $1",
            )
            .bind(&relation)
            .fetch_all(&env.pool)
            .await
            .expect("columns");
            if actual.is_empty() {
                continue; // a table of something else (message types, reasons)
            }
            for c in &columns {
                assert!(actual.contains(c), "{file}: {relation}.{c} does not exist");
            }
            if relation.starts_with("dead_letter") {
                // The collector's deduplication key and a replay's own id are not for
                // managers.
                let internal = |c: &str| {
                    c == "collected_key" || (relation == "dead_letter_replays" && c == "id")
                };
                let missing: Vec<&String> = actual
                    .iter()
                    .filter(|c| !columns.contains(c) && !internal(c))
                    .collect();
                assert!(
                    missing.is_empty(),
                    "{file}: {relation} does not document {missing:?}"
                );
            }
        }
    }
}
