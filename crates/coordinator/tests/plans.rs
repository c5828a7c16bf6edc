//! The plans PostgreSQL keeps for the service's hot statements. A statement is prepared
//! once per connection and its generic plan kept; made while the tables are empty (a
//! new deployment, every test), a plan that scans a table or a whole index would be
//! cheap then and ruinous once the table has grown. With the service's planner settings
//! every hot statement must find its rows through index conditions, even then.

use test_support as common;

use common::TestEnv;
use coordinator::db::store::Expired;
use coordinator::db::{batch, deadlines, read, store, SERVICE_PLANNER};
use serde_json::Value;

/// The statements the service runs on its hot path (batches, timers, relay), by name:
/// each must find its rows through an index whatever the tables hold.
const HOT_STATEMENTS: &[(&str, &str)] = &[
    ("claim and lock", batch::CLAIM_AND_LOCK),
    ("armed clocks", batch::ARMED_CLOCKS),
    ("agent types", batch::AGENT_TYPES),
    ("escalation chains", batch::ESCALATION_CHAINS),
    ("write", batch::WRITE),
    ("take due deadlines", deadlines::TAKE_DUE),
    ("deadlines before", store::DEADLINES_BEFORE),
    ("lease due outbox rows", store::LEASE_DUE),
    ("mark sent", store::MARK_SENT),
    ("mark failed", store::MARK_FAILED),
];

/// What in a plan reads more than the rows asked for: a sequential scan of a table, or
/// an index scanned without a condition.
fn wide_scans(node: &Value, out: &mut Vec<String>) {
    let kind = node["Node Type"].as_str().unwrap_or_default();
    let relation = node["Relation Name"].as_str();
    match (kind, relation) {
        ("Seq Scan", Some(r)) => out.push(format!("sequential scan of {r}")),
        ("Index Scan" | "Index Only Scan", Some(r)) if node.get("Index Cond").is_none() => out
            .push(format!(
                "whole index {} of {r}",
                node["Index Name"].as_str().unwrap_or("?")
            )),
        _ => {}
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        wide_scans(child, out);
    }
}

fn parameters(sql: &str) -> usize {
    sql.split('$')
        .skip(1)
        .filter_map(|s| {
            s.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

/// Every hot statement's generic plan on this connection, by name.
async fn plans_of_hot_statements(conn: &mut sqlx::PgConnection) -> Vec<(&'static str, Value)> {
    plans_of(conn, HOT_STATEMENTS).await
}

/// The generic plan of each named statement on this connection.
async fn plans_of(
    conn: &mut sqlx::PgConnection,
    statements: &[(&'static str, &str)],
) -> Vec<(&'static str, Value)> {
    let mut plans = Vec::new();
    for (name, sql) in statements {
        sqlx::query(&format!("PREPARE hot AS {sql}"))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let args = vec!["NULL"; parameters(sql)].join(", ");
        let plan: Value = sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) EXECUTE hot({args})"))
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        sqlx::query("DEALLOCATE hot")
            .execute(&mut *conn)
            .await
            .expect("deallocate");
        plans.push((*name, plan));
    }
    plans
}

/// Every hot statement's generic plan, on this connection, with its wide scans named.
async fn wide_scans_of_hot_statements(conn: &mut sqlx::PgConnection) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, plan) in plans_of_hot_statements(conn).await {
        let mut wide = Vec::new();
        wide_scans(&plan[0]["Plan"], &mut wide);
        problems.extend(wide.into_iter().map(|w| format!("{name}: {w}")));
    }
    problems
}

async fn set(conn: &mut sqlx::PgConnection, settings: &[(&str, &str)]) {
    for (k, v) in settings {
        sqlx::query(&format!("SET {k} = {v}"))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("SET {k}: {e}"));
    }
}

async fn service_session(env: &TestEnv) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    let mut conn = env.pool.acquire().await.expect("connection");
    set(&mut conn, &SERVICE_PLANNER).await;
    conn
}

/// Housekeeping's retention deletes, named for the plan checks.
fn retention_deletes() -> Vec<(&'static str, &'static str)> {
    Expired::ALL
        .iter()
        .map(|e| ("retention delete", e.statement()))
        .collect()
}

/// Housekeeping runs every `retention.interval` and usually finds nothing to delete;
/// a scan of the whole table each time would read millions of deduplication keys for
/// none. Each retention delete finds old rows through an index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_find_old_rows_by_index() {
    let env = TestEnv::new().await;
    let mut conn = service_session(&env).await;
    let mut problems = Vec::new();
    for (name, plan) in plans_of(&mut conn, &retention_deletes()).await {
        let mut wide = Vec::new();
        wide_scans(&plan[0]["Plan"], &mut wide);
        problems.extend(wide.into_iter().map(|w| format!("{name}: {w}\n{plan:#}")));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_statements_find_rows_by_index_even_when_planned_on_empty_tables() {
    let env = TestEnv::new().await;
    let mut conn = service_session(&env).await;
    let problems = wide_scans_of_hot_statements(&mut conn).await;
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Tables analyzed while empty (a new deployment after `vacuumdb --analyze`, or
/// autovacuum's first pass) tell the planner they hold one row: joined to a batch's
/// arrays, scanning the whole table first then looks cheapest, and the generic plan
/// keeps doing so as the table grows. Every join to an array therefore also bounds the
/// table by the array's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_statements_find_rows_by_index_even_when_tables_were_analyzed_empty() {
    let env = TestEnv::new().await;
    let mut conn = service_session(&env).await;
    sqlx::query("ANALYZE")
        .execute(&mut *conn)
        .await
        .expect("analyze");
    let problems = wide_scans_of_hot_statements(&mut conn).await;
    assert!(problems.is_empty(), "{problems:#?}");
}

/// PostgreSQL compiles a statement with LLVM, on every execution, when its estimated
/// cost passes `jit_above_cost`. The service's planner settings make a disabled plan
/// node cost 10^10: housekeeping's retention deletes, which must scan, were compiled
/// (with inlining and optimization) each time, 250–370 ms of CPU apiece, and any
/// statement whose plan crossed the threshold would be compiled per batch. The service's
/// sessions turn JIT off, whatever the server's settings; here the server is told to
/// compile everything first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_statements_are_never_compiled_by_jit() {
    let env = TestEnv::new().await;
    let mut conn = env.pool.acquire().await.expect("connection");
    set(&mut conn, &[("jit", "on"), ("jit_above_cost", "0")]).await;
    let available: bool = sqlx::query_scalar("SELECT pg_jit_available()")
        .fetch_one(&mut *conn)
        .await
        .expect("pg_jit_available");
    set(&mut conn, &SERVICE_PLANNER).await;
    let mut plans = plans_of_hot_statements(&mut conn).await;
    plans.extend(plans_of(&mut conn, &retention_deletes()).await);
    let compiled: Vec<_> = plans
        .into_iter()
        .filter(|(_, plan)| plan[0].get("JIT").is_some())
        .map(|(name, plan)| format!("{name}: cost {}", plan[0]["Plan"]["Total Cost"]))
        .collect();
    assert!(
        compiled.is_empty(),
        "compiled by JIT (available on this server: {available}): {compiled:#?}"
    );
}

/// A parallel plan starts worker processes for the one statement: on the service's
/// sessions none is planned, whatever the server's settings; here the server is told
/// parallel workers cost nothing first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_plans_no_parallel_workers() {
    let env = TestEnv::new().await;
    let mut conn = env.pool.acquire().await.expect("connection");
    set(
        &mut conn,
        &[
            ("parallel_setup_cost", "0"),
            ("parallel_tuple_cost", "0"),
            ("min_parallel_table_scan_size", "0"),
            ("min_parallel_index_scan_size", "0"),
        ],
    )
    .await;
    let parallel = |plans: Vec<(&'static str, Value)>| -> Vec<String> {
        plans
            .into_iter()
            .filter(|(_, plan)| {
                let mut kinds = Vec::new();
                node_types(&plan[0]["Plan"], &mut kinds);
                kinds.iter().any(|k| k.starts_with("Gather"))
            })
            .map(|(name, _)| name.to_string())
            .collect()
    };
    // The dashboard's clock list planned two workers over a million armed clocks; the
    // gauges count every live workflow.
    let pages = [
        ("clocks by deadline", read::CLOCKS_BY_DEADLINE),
        ("gauges", read::GAUGES),
    ];
    let all = async |conn: &mut sqlx::PgConnection| {
        let mut plans = plans_of_hot_statements(conn).await;
        plans.extend(plans_of(conn, &retention_deletes()).await);
        plans.extend(plans_of(conn, &pages).await);
        plans
    };
    assert!(
        !parallel(all(&mut conn).await).is_empty(),
        "no statement plans parallel workers even with PostgreSQL's planner settings: the check below would prove nothing"
    );
    set(&mut conn, &SERVICE_PLANNER).await;
    let parallel = parallel(all(&mut conn).await);
    assert!(parallel.is_empty(), "parallel plans: {parallel:?}");
}

fn node_types(node: &Value, out: &mut Vec<String>) {
    out.push(node["Node Type"].as_str().unwrap_or_default().to_string());
    for child in node["Plans"].as_array().into_iter().flatten() {
        node_types(child, out);
    }
}

/// The relay takes a bounded number of due rows per step. Read in the pending index's
/// order, a step costs the rows it takes; sorted by anything else, each step would
/// read and sort every due row, and draining a backlog would be quadratic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_takes_due_rows_in_index_order_without_sorting_the_backlog() {
    let env = TestEnv::new().await;
    let mut conn = service_session(&env).await;
    sqlx::query(&format!(
        "PREPARE lease AS {}",
        coordinator::db::store::LEASE_DUE
    ))
    .execute(&mut *conn)
    .await
    .expect("prepare");
    let plan: Value = sqlx::query_scalar("EXPLAIN (FORMAT JSON) EXECUTE lease(500, 10, now())")
        .fetch_one(&mut *conn)
        .await
        .expect("explain");
    let mut kinds = Vec::new();
    node_types(&plan[0]["Plan"], &mut kinds);
    assert!(
        !kinds.iter().any(|k| k.contains("Sort")),
        "the lease sorts its candidates: {kinds:?}\n{plan:#}"
    );
    assert!(
        plan.to_string().contains("outbox_pending"),
        "the lease does not read the pending index: {plan:#}"
    );
}

#[test]
fn parameters_are_counted_from_the_highest_placeholder() {
    assert_eq!(parameters("SELECT $1, $12::text, $3"), 12);
    assert_eq!(parameters("SELECT 1"), 0);
}

/// How each hot statement reaches each table it touches, from its generic plan: `insert`,
/// or `by` the columns its index conditions find rows by. This is what a distributed
/// PostgreSQL (docs/scaling.md, "Past one PostgreSQL primary") routes a statement by.
async fn hot_accesses(
    conn: &mut sqlx::PgConnection,
) -> std::collections::BTreeMap<(String, String), std::collections::BTreeSet<String>> {
    let mut out = std::collections::BTreeMap::new();
    for (name, plan) in plans_of_hot_statements(conn).await {
        accesses(name, &plan[0]["Plan"], &mut out);
    }
    out
}

fn accesses(
    statement: &str,
    node: &Value,
    out: &mut std::collections::BTreeMap<(String, String), std::collections::BTreeSet<String>>,
) {
    let relation = node["Relation Name"].as_str();
    let kind = node["Node Type"].as_str().unwrap_or_default();
    let access = match (kind, node["Operation"].as_str()) {
        ("ModifyTable", Some("Insert")) => Some("insert".to_string()),
        ("ModifyTable", _) => None,
        ("Seq Scan", _) => Some("every row".to_string()),
        _ => ["Index Cond", "Recheck Cond"]
            .iter()
            .find_map(|k| node[*k].as_str())
            .map(|cond| format!("by {}", compared_columns(cond).join(" and "))),
    };
    if let (Some(r), Some(a)) = (relation, access) {
        out.entry((statement.to_string(), r.to_string()))
            .or_default()
            .insert(a);
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        accesses(statement, child, out);
    }
}

/// The columns a plan's condition compares (`((chain_id = ANY ($47)) AND (x.seq > 1))`:
/// `chain_id`, `seq`), each once, in order.
fn compared_columns(cond: &str) -> Vec<String> {
    let mut cols: Vec<String> = Vec::new();
    for piece in cond.split('(').skip(1) {
        let ident: String = piece
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
            .collect();
        let rest = &piece[ident.len()..];
        let compares = [" = ", " <= ", " < ", " >= ", " > "]
            .iter()
            .any(|op| rest.starts_with(op));
        let col = ident.rsplit('.').next().unwrap_or_default().to_string();
        if compares && !col.is_empty() && !cols.contains(&col) {
            cols.push(col);
        }
    }
    cols
}

#[test]
fn a_plans_condition_names_the_columns_it_compares_once_each() {
    assert_eq!(
        compared_columns("((chain_id = ANY ($47)) AND (x.seq > 1) AND (chain_id = c.chain_id))"),
        ["chain_id", "seq"]
    );
    assert_eq!(
        compared_columns("(closed_at IS NULL)"),
        Vec::<String>::new()
    );
}

/// The rows of docs/scaling.md's table "Each hot statement, table by table": statement,
/// table and how it is found today, keyed like [`hot_accesses`].
fn accesses_the_plan_names(
) -> std::collections::BTreeMap<(String, String), std::collections::BTreeSet<String>> {
    const MARKER: &str =
        "<!-- hot statements: the first three columns are checked by tests/plans.rs -->";
    let path = common::repo_root().join("docs/scaling.md");
    let doc = std::fs::read_to_string(&path).expect("docs/scaling.md");
    let (_, table) = doc
        .split_once(MARKER)
        .expect("docs/scaling.md marks its table of hot statements");
    let mut out = std::collections::BTreeMap::new();
    for line in table.trim_start().lines().skip(2) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if !line.starts_with('|') || cells.len() < 4 {
            break;
        }
        let accesses = cells[3].split(", ").map(str::to_string).collect();
        out.insert(
            (cells[1].to_string(), cells[2].trim_matches('`').to_string()),
            accesses,
        );
    }
    out
}

/// docs/scaling.md's plan for a distributed PostgreSQL says, for every hot statement,
/// each table it reaches and how, today and on Citus. What it says about today must be
/// what the statements' plans do: a hot statement added, or one that reaches a table
/// by another key, fails here until the plan says what it becomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaling_plan_names_every_table_each_hot_statement_reaches_and_how() {
    let env = TestEnv::new().await;
    let mut conn = service_session(&env).await;
    let planned = hot_accesses(&mut conn).await;
    let written = accesses_the_plan_names();
    let show =
        |m: &std::collections::BTreeMap<(String, String), std::collections::BTreeSet<String>>| {
            m.iter()
                .map(|((s, t), a)| {
                    format!(
                        "| {s} | `{t}` | {} |",
                        a.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
    assert!(
        !planned.is_empty() && planned.keys().any(|(s, _)| s == "write"),
        "the plans were read: {planned:?}"
    );
    assert_eq!(
        show(&written),
        show(&planned),
        "docs/scaling.md's table of hot statements (left) is not what their plans do (right)"
    );
}
