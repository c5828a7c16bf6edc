//! Keeps the bookkeeping tables bounded: deletes outbox rows sent longer ago than
//! `retention.outbox`, and deduplication keys older than `retention.processed_messages`
//! (the window within which a repeated message id is recognised). A reconciler: runs
//! every `retention.interval`, in bounded batches, and `step()` can be called directly.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::settings::RetentionSettings;

/// Rows deleted by one step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub outbox: u64,
    pub processed_messages: u64,
}

const BATCH: i64 = 5000;

/// Deletes what has outlived its retention, at most `BATCH` rows per table per call
/// until none are left.
pub async fn step(pool: &PgPool, r: &RetentionSettings) -> sqlx::Result<Swept> {
    let mut swept = Swept::default();
    loop {
        let n = sqlx::query(
            "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox WHERE sent_at < now() - make_interval(secs => $1) LIMIT $2)",
        )
        .bind(r.outbox.as_secs_f64())
        .bind(BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        swept.outbox += n;
        if n < BATCH as u64 {
            break;
        }
    }
    loop {
        let n = sqlx::query(
            "DELETE FROM processed_messages WHERE message_id IN (
                 SELECT message_id FROM processed_messages
                 WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2)",
        )
        .bind(r.processed_messages.as_secs_f64())
        .bind(BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        swept.processed_messages += n;
        if n < BATCH as u64 {
            break;
        }
    }
    Ok(swept)
}

/// Runs [`step`] every `interval` until `stop`.
pub async fn run(pool: &PgPool, r: &RetentionSettings, stop: CancellationToken) {
    loop {
        match step(pool, r).await {
            Ok(s) if s != Swept::default() => tracing::info!(
                outbox = s.outbox,
                processed_messages = s.processed_messages,
                "housekeeping deleted rows past their retention"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "housekeeping failed; will try again"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(r.interval.max(Duration::from_secs(1))) => {}
        }
    }
}
