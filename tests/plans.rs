//! The plans PostgreSQL keeps for the service's hot statements. A statement is prepared
//! once per connection and its generic plan kept; made while the tables are empty (a
//! new deployment, every test), a plan that scans a table or a whole index would be
//! cheap then and ruinous once the table has grown. With the service's planner settings
//! every hot statement must find its rows through index conditions, even then.

mod common;

use common::TestEnv;
use coordinator::db::{HOT_STATEMENTS, SERVICE_PLANNER};
use serde_json::Value;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_statements_find_rows_by_index_even_when_planned_on_empty_tables() {
    let env = TestEnv::new().await;
    let mut conn = env.pool.acquire().await.expect("connection");
    for (k, v) in SERVICE_PLANNER {
        sqlx::query(&format!("SET {k} = {v}"))
            .execute(&mut *conn)
            .await
            .expect("set");
    }
    let mut problems = Vec::new();
    for (name, sql) in HOT_STATEMENTS {
        sqlx::query(&format!("PREPARE hot AS {sql}"))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let args = vec!["NULL"; parameters(sql)].join(", ");
        let plan: Value = sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) EXECUTE hot({args})"))
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut wide = Vec::new();
        wide_scans(&plan[0]["Plan"], &mut wide);
        problems.extend(wide.into_iter().map(|w| format!("{name}: {w}")));
        sqlx::query("DEALLOCATE hot")
            .execute(&mut *conn)
            .await
            .expect("deallocate");
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn parameters_are_counted_from_the_highest_placeholder() {
    assert_eq!(parameters("SELECT $1, $12::text, $3"), 12);
    assert_eq!(parameters("SELECT 1"), 0);
}
