//! The timer workload: p99 lateness (fire time minus deadline) with 10,000
//! clocks due in the same minute, and again with 1,000,000 armed clocks in the table.
//! Runs the real timer service against a fresh database (no broker needed: what the
//! timer sends waits in the outbox). `make bench`, or `cargo bench --bench timers`.
//! Set BENCH_DUE (default 10000) and BENCH_FAR (default 1000000) to resize.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator::service::runtime::Shared;
use coordinator::settings::Settings;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn env_n(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::query(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{sql}"));
}

/// `n` workflows with one armed clock each, due evenly over [now + lead, now + lead + 60 s).
async fn arm_due(pool: &PgPool, tag: &str, n: i64, lead_s: i64) {
    exec(
        pool,
        &format!(
            "INSERT INTO workflows (id, kind, state) SELECT '{tag}-' || g, 'feature_delivery', 'feature_handoff'
             FROM generate_series(1, {n}) g"
        ),
    )
    .await;
    exec(
        pool,
        &format!(
            "INSERT INTO sla_clocks (workflow_id, clock, round, owner_role, severity, armed_at, due_at)
             SELECT '{tag}-' || g, 'testing_start', 1, 'qa-director', 'high', now(),
                    now() + make_interval(secs => {lead_s} + 60.0 * g / {n})
             FROM generate_series(1, {n}) g"
        ),
    )
    .await;
}

/// `n` armed clocks due between one and thirty days out, on one workflow.
async fn arm_far(pool: &PgPool, n: i64) {
    exec(
        pool,
        "INSERT INTO workflows (id, kind, state) VALUES ('far', 'feature_delivery', 'testing')",
    )
    .await;
    exec(
        pool,
        &format!(
            "INSERT INTO sla_clocks (workflow_id, clock, round, owner_role, severity, armed_at, warn_at, due_at)
             SELECT 'far', 'testing_completion', g, 'qa-director', 'high', now(),
                    now() + interval '1 day' + make_interval(secs => g * 2.5),
                    now() + interval '1 day' + make_interval(secs => g * 2.6)
             FROM generate_series(1, {n}) g"
        ),
    )
    .await;
    exec(pool, "ANALYZE sla_clocks").await;
}

struct Lateness {
    n: i64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

async fn lateness(pool: &PgPool, tag: &str) -> Lateness {
    let row: (i64, Option<f64>, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(&format!(
        "SELECT count(*),
                percentile_cont(0.5) WITHIN GROUP (ORDER BY l),
                percentile_cont(0.9) WITHIN GROUP (ORDER BY l),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY l),
                max(l)
         FROM (SELECT extract(epoch FROM closed_at - due_at)::float8 * 1000 AS l
               FROM sla_clocks WHERE workflow_id LIKE '{tag}-%' AND status = 'breached') x"
    ))
    .fetch_one(pool)
    .await
    .expect("lateness");
    Lateness {
        n: row.0,
        p50: row.1.unwrap_or(f64::NAN),
        p90: row.2.unwrap_or(f64::NAN),
        p99: row.3.unwrap_or(f64::NAN),
        max: row.4.unwrap_or(f64::NAN),
    }
}

async fn run_scenario(shared: Arc<Shared>, tag: &str, due: i64) -> Lateness {
    let lead_s = 5;
    let t0 = Instant::now();
    arm_due(&shared.pool, tag, due, lead_s).await;
    println!(
        "  armed {due} clocks due over one minute (in {:.1?})",
        t0.elapsed()
    );
    let stop = CancellationToken::new();
    let timer = tokio::spawn({
        let shared = shared.clone();
        let stop = stop.clone();
        async move {
            coordinator::service::timers::run(
                coordinator::service::timers::Parts::of(&shared),
                stop,
            )
            .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(lead_s as u64 + 60 + 60);
    loop {
        let breached: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM sla_clocks WHERE workflow_id LIKE '{tag}-%' AND status = 'breached'"
        ))
        .fetch_one(&shared.pool)
        .await
        .expect("count");
        if breached >= due || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.cancel();
    let _ = timer.await;
    lateness(&shared.pool, tag).await
}

fn report(name: &str, l: &Lateness, due: i64) {
    let verdict = if l.n == due && l.p99 < 100.0 {
        "meets"
    } else {
        "MISSES"
    };
    println!(
        "  {name}: fired {}/{due}; lateness ms p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}  → {verdict} the p99 < 100 ms target",
        l.n, l.p50, l.p90, l.p99, l.max
    );
}

#[tokio::main]
async fn main() {
    let due = env_n("BENCH_DUE", 10_000);
    let far = env_n("BENCH_FAR", 1_000_000);
    let db = format!("coordinator_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(ADMIN)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (make services)");
    sqlx::query(&format!("CREATE DATABASE \"{db}\""))
        .execute(&mut admin)
        .await
        .expect("create db");
    let url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .expect("connect");
    coordinator::db::migrate(&pool).await.expect("migrate");

    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config"));
    let mut settings = Settings::load_from(dir, None).expect("settings");
    settings.database.url = url.into();
    let shared = Arc::new(Shared::new(
        settings.clone(),
        pool.clone(),
        coordinator::clock::system(),
    ));
    println!(
        "timer workload: window {:?}, concurrency {}, {} cores",
        settings.timers.window,
        settings.timers.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    println!("1. {due} clocks due in the same minute");
    let a = run_scenario(shared.clone(), "due-a", due).await;
    report("result", &a, due);

    println!("2. the same with {far} armed clocks in the table");
    let t0 = Instant::now();
    arm_far(&pool, far).await;
    println!("  armed {far} far-future clocks (in {:.1?})", t0.elapsed());
    let b = run_scenario(shared.clone(), "due-b", due).await;
    report("result", &b, due);

    pool.close().await;
    let _ = sqlx::query(&format!("DROP DATABASE \"{db}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await;
}
