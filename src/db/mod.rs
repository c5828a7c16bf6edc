//! PostgreSQL: the pool, the embedded migrations, and every SQL statement the service
//! runs. `store` holds the writes of message processing and the relay; `read` holds the
//! queries behind the manager-facing CLI.

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

/// True if the error is PostgreSQL refusing a value (SQLSTATE class 22, data exception):
/// the input's fault, not the database's, so retrying cannot help.
pub fn is_data_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("22")),
        _ => false,
    }
}
