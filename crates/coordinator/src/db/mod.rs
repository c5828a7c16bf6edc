//! PostgreSQL, and the only module that knows SQL: the pool, the embedded migrations,
//! and every statement the service runs. `batch` holds the set-based statements of the
//! hot path (a batch of messages, of timer deadlines or of operator actions),
//! `deadlines` the timers' window and take, `lease` the partition leases, `store` the
//! relay's, housekeeping's and the operator commands' statements, `read` the queries
//! behind the manager-facing CLI. What the rest of the service names of sqlx is the
//! pool and connection types re-exported here, and [`Error`].

pub mod audit;
pub mod batch;
pub mod deadlines;
pub mod deferred;
pub mod definitions;
pub mod lease;
pub mod read;
pub mod report;
pub mod store;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::settings::DatabaseSettings;

/// The service's connection pool.
pub type Pool = sqlx::PgPool;
/// One connection (a pooled one, or a transaction's).
pub type Conn = sqlx::PgConnection;
/// An open transaction, rolled back if dropped uncommitted.
pub type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// What a statement's failure means, typed so that callers decide by kind (retry, set
/// the input aside, tell the operator), never by matching text.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// A write that the batch's own reads said could not fail did: a workflow id was
    /// taken between the lock and the insert by a transaction that did not hold the
    /// lock. Like a deadlock, the work is retried; its reads then see the new row.
    #[error("workflow ids were created concurrently; the batch must be read again")]
    Conflict,
    /// Every membership key tried for the partition leases was taken.
    #[error("could not take a free membership key for the partition leases")]
    NoMembershipKey,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whose fault the failure was, which says what to do next.
    pub fn fault(&self) -> Fault {
        match self {
            Error::Sql(sqlx::Error::Database(db)) => match db.code() {
                Some(c) if c.starts_with("22") || c.starts_with("23") || c.starts_with("54") => {
                    Fault::Input
                }
                _ => Fault::Transient,
            },
            Error::Sql(_) | Error::Conflict | Error::NoMembershipKey => Fault::Transient,
        }
    }
}

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Why the database could not be set up for use: the settings, the server, the
/// migrations.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
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
pub async fn check_reachable(settings: &DatabaseSettings) -> Result<(), SetupError> {
    use sqlx::Connection;
    let options: PgConnectOptions = settings.url.expose().parse().map_err(SetupError::BadUrl)?;
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
    .map_err(|source| SetupError::Unreachable { at, source })?;
    let _ = conn.close().await;
    Ok(())
}

/// A pool that connects on first use, so the service can start (and report not ready)
/// while the database is down.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, SetupError> {
    let options: PgConnectOptions = settings.url.expose().parse().map_err(SetupError::BadUrl)?;
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
/// Nor do they plan parallel workers: a worker is a process started for the one
/// statement, and the generic plan of a page's 50-row list over a million armed clocks
/// (its estimates those of any parameters) launched two, 9 ms where the same list
/// alone takes 0.3, and far more on a machine busy with the load.
/// Operators' queries use [`pool`].
///
/// Its sessions also carry the timeouts of `database.*`, so no statement, lock wait or
/// abandoned transaction holds the service (or rows other coordinators need) forever;
/// a statement that hits one fails as [`Fault::Transient`] and its work is retried.
pub fn service_pool(settings: &DatabaseSettings) -> Result<PgPool, SetupError> {
    let options: PgConnectOptions = settings.url.expose().parse().map_err(SetupError::BadUrl)?;
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
pub const SERVICE_PLANNER: [(&str, &str); 6] = [
    ("plan_cache_mode", "force_generic_plan"),
    ("jit", "off"),
    ("max_parallel_workers_per_gather", "0"),
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

/// Closes every connection of the pool, each with PostgreSQL's goodbye (a dropped one is
/// an abandoned session in `pg_stat_database` and, mid-read, a "connection reset by
/// peer" in the server's log). sqlx's `close` can return while a connection that was
/// being handed back (pinged, then put in the idle list) is still out, and that one
/// would be dropped at exit: close again until none is left. Bounded (a connection
/// still checked out by something that never returns it is left to the exit).
pub async fn close(pool: &PgPool) {
    let closing = async {
        while pool.size() > 0 {
            pool.close().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), closing).await;
}

/// Applies pending migrations (under sqlx's advisory lock, so concurrent starts are safe).
pub async fn migrate(pool: &PgPool) -> Result<(), SetupError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// LISTENs on notification channels on a connection of its own.
pub struct Listener(sqlx::postgres::PgListener);

impl Listener {
    pub async fn listen(pool: &Pool, channels: &[&str]) -> Result<Listener> {
        let mut l = sqlx::postgres::PgListener::connect_with(pool).await?;
        l.listen_all(channels.iter().copied()).await?;
        Ok(Listener(l))
    }

    /// The channel of the next notification.
    pub async fn next(&mut self) -> Result<String> {
        Ok(self.0.recv().await?.channel().to_string())
    }
}

/// True if the database answers within `within`.
pub async fn ping(pool: &Pool, within: std::time::Duration) -> bool {
    tokio::time::timeout(within, sqlx::query("SELECT 1").execute(pool))
        .await
        .is_ok_and(|r| r.is_ok())
}

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
