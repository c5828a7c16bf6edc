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
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database.url is not a valid PostgreSQL URL")]
    BadUrl(#[source] sqlx::Error),
    #[error("could not apply migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A pool that connects on first use, so the service can start (and report not ready)
/// while the database is down.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = settings.url.parse().map_err(DbError::BadUrl)?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options))
}

/// Applies pending migrations (under sqlx's advisory lock, so concurrent starts are safe).
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
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
