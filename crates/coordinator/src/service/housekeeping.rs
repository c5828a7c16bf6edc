//! Keeps the bookkeeping tables bounded: deletes outbox rows sent or given up longer ago
//! than `retention.outbox`, deduplication keys older than `retention.processed_messages`
//! (the window within which a repeated message id is recognised), and dead letters
//! replayed or resolved longer ago than `retention.dead_letters` (unresolved ones stay). A reconciler: runs
//! every `retention.interval`, in bounded batches, and `step()` can be called directly.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::db::store::{self, Expired};
use crate::db::{self, Pool};
use crate::settings::RetentionSettings;

/// Rows deleted by one step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub outbox: u64,
    pub processed_messages: u64,
    pub dead_letters: u64,
}

const BATCH: i64 = 5000;

/// Deletes what has outlived its retention at `now`, at most `BATCH` rows per
/// statement until none are left.
pub async fn step(pool: &Pool, r: &RetentionSettings, now: DateTime<Utc>) -> db::Result<Swept> {
    let all = |what: Expired, retention: Duration| async move {
        let mut total = 0;
        loop {
            let n = store::delete_expired(pool, what, retention, BATCH, now).await?;
            total += n;
            if n < BATCH as u64 {
                return Ok::<_, db::Error>(total);
            }
        }
    };
    Ok(Swept {
        outbox: all(Expired::SentOutbox, r.outbox).await?
            + all(Expired::UndeliverableOutbox, r.outbox).await?,
        processed_messages: all(Expired::ProcessedMessages, r.processed_messages).await?,
        dead_letters: all(Expired::SettledDeadLetters, r.dead_letters).await?,
    })
}

/// Runs [`step`] every `interval` until `stop`.
pub async fn run(pool: &Pool, r: &RetentionSettings, clock: &dyn Clock, stop: CancellationToken) {
    loop {
        match step(pool, r, clock.now()).await {
            Ok(s) if s != Swept::default() => tracing::info!(
                outbox = s.outbox,
                processed_messages = s.processed_messages,
                dead_letters = s.dead_letters,
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
