//! Tests leave shared services alone: a test's database and vhost are dropped with it;
//! a PostgreSQL cluster and a RabbitMQ node of a test's own run on spare ports, can be
//! stopped and started, and go away with their folders, while the shared ones keep
//! running untouched; and no test stops the machine's own services.

use std::path::Path;
use std::process::Command;

use test_support::{isolated, pg_admin_url, repo_root, TestEnv};

async fn shared_started_at() -> chrono::DateTime<chrono::Utc> {
    let pool = sqlx::PgPool::connect(&pg_admin_url())
        .await
        .expect("shared");
    sqlx::query_scalar("SELECT pg_postmaster_start_time()")
        .fetch_one(&pool)
        .await
        .expect("start time")
}

fn vhosts(ctl: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(ctl)
        .args(["list_vhosts", "-q"])
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn databases() -> std::collections::BTreeSet<String> {
    let pool = sqlx::PgPool::connect(&pg_admin_url())
        .await
        .expect("shared");
    sqlx::query_scalar("SELECT datname FROM pg_database")
        .fetch_all(&pool)
        .await
        .expect("databases")
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_env_makes_one_database_and_one_vhost_and_drops_both() {
    let before = databases().await;
    let env = TestEnv::new().await;
    let (db, vhost) = (env.db_name.clone(), env.vhost.clone());
    let during = databases().await;
    assert_eq!(
        during.difference(&before).collect::<Vec<_>>(),
        [&db],
        "its own database, and nothing else (no template that would outlive the run)"
    );
    assert!(vhosts(&[]).contains(&vhost));
    drop(env);
    assert_eq!(databases().await, before, "{db} is dropped");
    assert!(!vhosts(&[]).contains(&vhost), "{vhost} is deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tests_own_cluster_and_node_stop_and_start_while_the_shared_ones_run_on() {
    let before = shared_started_at().await;
    let (pg, rabbit) = tokio::task::spawn_blocking(|| {
        (
            isolated::Postgres::start(),
            isolated::Rabbit::start(&["rabbitmq_consistent_hash_exchange"]),
        )
    })
    .await
    .expect("started");
    assert_ne!(pg.port(), 5432);
    assert_ne!(rabbit.port(), 5672);
    let env = TestEnv::isolated(&pg, &rabbit).await;
    let n: i64 = sqlx::query_scalar("SELECT 1::int8")
        .fetch_one(&env.pool)
        .await
        .expect("its database answers");
    assert_eq!(n, 1);
    assert!(vhosts(&["-n", rabbit.node()]).contains(&env.vhost));
    let conn = agent::connect(&env.amqp_url, "probe")
        .await
        .expect("its node answers");
    let _ = conn.close(200, "done").await;

    pg.stop();
    assert!(!pg.is_running());
    pg.start_again();
    assert!(pg.is_running());
    rabbit.stop_app();
    rabbit.start_app();
    agent::connect(&env.amqp_url, "probe again")
        .await
        .expect("its node answers again");

    drop(env);
    let node = rabbit.node().to_string();
    drop((pg, rabbit));
    let still = Command::new("rabbitmqctl")
        .args(["-n", &node, "status"])
        .output()
        .expect("rabbitmqctl");
    assert!(!still.status.success(), "{node} is stopped");
    let leftover = std::fs::read_dir(std::env::temp_dir())
        .expect("temp")
        .flatten()
        .any(|e| {
            e.file_name().to_string_lossy().contains(
                node.trim_start_matches("coordtest")
                    .split('@')
                    .next()
                    .unwrap_or("?"),
            )
        });
    assert!(!leftover, "its folder is deleted");
    assert_eq!(
        shared_started_at().await,
        before,
        "the shared PostgreSQL kept running"
    );
}

/// Stopping a service is done only through `isolated` (which names its own node): no
/// test names the machine's own service controls. (`make soak` does, on purpose, and
/// is not a test: it says so.)
#[test]
fn no_test_stops_the_machines_services() {
    let mut files = Vec::new();
    for dir in [
        "crates/coordinator/tests",
        "crates/protocol/tests",
        "crates/test-support/src",
        "tools/loadgen/tests",
        "tools/demo/tests",
    ] {
        rust_files(&repo_root().join(dir), &mut files);
    }
    assert!(files.len() > 20, "the test files are found: {files:?}");
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| !f.ends_with("src/isolated.rs"))
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            text.contains(["pg_ctl", "cluster"].concat().as_str())
                || text.contains(["\"stop_app", "\"]"].concat().as_str())
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(offenders.is_empty(), "{offenders:?}");
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.ends_with("target") {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}
