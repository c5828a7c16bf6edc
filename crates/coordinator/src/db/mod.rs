//! PostgreSQL: the pool, the embedded migrations, and every SQL statement the service
//! runs. `batch` holds the set-based statements of the hot path (a batch of messages or
//! of timer deadlines), `store` the single-row writes of the relay and the operator
//! commands, `read` the queries behind the manager-facing CLI.

pub mod batch;
pub mod deadlines;
pub mod lease;
pub mod read;
pub mod store;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::settings::DatabaseSettings;

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database.url is not a valid PostgreSQL URL")]
    BadUrl(#[source] sqlx::Error),
    #[error("could not apply migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("could not connect to PostgreSQL at {at} (database.url)")]
    Unreachable {
        at: String,
        #[source]
        source: sqlx::Error,
    },
}

/// Connects once, directly (not through a pool, whose timeout would hide the cause),
/// so that a command run against a database that is down says where it looked and why
/// it failed.
pub async fn check_reachable(settings: &DatabaseSettings) -> Result<(), DbError> {
    use sqlx::Connection;
    let options: PgConnectOptions = settings.url.parse().map_err(DbError::BadUrl)?;
    let at = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    );
    let conn = tokio::time::timeout(
        settings.acquire_timeout,
        sqlx::PgConnection::connect_with(&options),
    )
    .await
    .unwrap_or_else(|_| {
        Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer within database.acquire_timeout",
        )))
    })
    .map_err(|source| DbError::Unreachable { at, source })?;
    let _ = conn.close().await;
    Ok(())
}

/// A pool that connects on first use, so the service can start (and report not ready)
/// while the database is down.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = settings.url.parse().map_err(DbError::BadUrl)?;
    Ok(pool_with(settings, options))
}

/// The running service's pool. Every statement the service runs often finds rows by
/// key; it is prepared once per connection and its generic plan is used every time
/// (planning the batch's write statement anew would cost about a millisecond per
/// batch). A generic plan made while a table is nearly empty (a new deployment) would
/// scan the table or hash-join it, cheap then and ruinous once it has grown. So on
/// these connections a sequential scan, a hash join and a merge join are last resorts:
/// the kept plans are index lookups whatever the tables held when they were made
/// (tests/plans.rs checks them). A plan that must scan all the same (housekeeping's
/// retention deletes) therefore costs 10^10 and would be compiled by PostgreSQL's JIT,
/// with inlining and optimization, on every execution: JIT is off on these sessions.
/// Operators' queries use [`pool`].
///
/// Its sessions also carry the timeouts of `database.*`, so no statement, lock wait or
/// abandoned transaction holds the service (or rows other coordinators need) forever;
/// a statement that hits one fails as [`Fault::Transient`] and its work is retried.
pub fn service_pool(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = settings.url.parse().map_err(DbError::BadUrl)?;
    // Named, so that pg_stat_activity tells the service's sessions apart.
    let options = options
        .application_name("coordinator")
        .options(SERVICE_PLANNER)
        .options(session_timeouts(settings));
    Ok(pool_with(settings, options))
}

/// PostgreSQL's session settings for `database.statement_timeout`, `lock_timeout` and
/// `idle_in_transaction_timeout`, in milliseconds (0 turns one off).
pub fn session_timeouts(settings: &DatabaseSettings) -> [(&'static str, String); 3] {
    let ms = |d: std::time::Duration| d.as_millis().to_string();
    [
        ("statement_timeout", ms(settings.statement_timeout)),
        ("lock_timeout", ms(settings.lock_timeout)),
        (
            "idle_in_transaction_session_timeout",
            ms(settings.idle_in_transaction_timeout),
        ),
    ]
}

/// The planner settings of [`service_pool`].
pub const SERVICE_PLANNER: [(&str, &str); 5] = [
    ("plan_cache_mode", "force_generic_plan"),
    ("jit", "off"),
    ("enable_seqscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
];

fn pool_with(settings: &DatabaseSettings, options: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        // No ping before each use: it is a round trip per batch, and a connection that
        // broke meanwhile fails its first statement, which is retried like any outage.
        .test_before_acquire(false)
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options)
}

/// Applies pending migrations (under sqlx's advisory lock, so concurrent starts are safe).
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// The statements the service runs on its hot path (batches, timers, relay), by name:
/// each must find its rows through an index whatever the tables hold (tests/plans.rs).
pub const HOT_STATEMENTS: &[(&str, &str)] = &[
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

/// Whose fault a failed statement was, which says what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The database is unreachable, shutting down, out of resources, or two
    /// transactions collided (deadlock, serialization): retry the same work later.
    Transient,
    /// PostgreSQL refused a value the work carried (SQLSTATE class 22 data exception,
    /// 23 integrity violation, 54 program limit such as an index row too large):
    /// retrying the same values cannot help, so find the input at fault and set it aside.
    Input,
}

pub fn classify(err: &sqlx::Error) -> Fault {
    match err {
        sqlx::Error::Database(db) => match db.code() {
            Some(c) if c.starts_with("22") || c.starts_with("23") || c.starts_with("54") => {
                Fault::Input
            }
            _ => Fault::Transient,
        },
        _ => Fault::Transient,
    }
}
