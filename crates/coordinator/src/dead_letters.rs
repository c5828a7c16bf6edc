//! Dead letters that nobody worked: a reconciler that tells management once about every
//! dead letter unresolved (neither replayed nor resolved) for longer than
//! `dead_letters.escalate_after`, in one `dead_letters_unresolved` message per step.
//! [`Escalator::step`] can be called directly.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::db::batch::{self, Writes};
use crate::db::store;
use crate::escalations;
use crate::runtime::Shared;

/// Most dead letters named in one notice.
const MOST: i64 = 100;

pub struct Escalator<'a> {
    shared: &'a Shared,
}

impl<'a> Escalator<'a> {
    pub fn new(shared: &'a Shared) -> Escalator<'a> {
        Escalator { shared }
    }

    /// Escalates what crossed the threshold since the last step; how many dead letters.
    pub async fn step(&self) -> sqlx::Result<usize> {
        let after = self.shared.settings.dead_letters.escalate_after;
        let mut tx = self.shared.pool.begin().await?;
        let letters = store::escalate_unresolved_dead_letters(&mut tx, after, MOST).await?;
        if letters.is_empty() {
            return Ok(0);
        }
        let now = Utc::now();
        let writes = Writes {
            outbox: vec![escalations::unresolved_notice(&letters, now)],
            ..Default::default()
        };
        batch::write(&mut tx, writes, now).await?;
        tx.commit().await?;
        tracing::warn!(
            count = letters.len(),
            "dead letters unresolved for longer than dead_letters.escalate_after; management is told"
        );
        self.shared.wake_relay.notify_one();
        Ok(letters.len())
    }

    /// Steps every `escalate_after / 60` (between 1 s and 1 min) until `stop`.
    pub async fn run(&self, stop: CancellationToken) {
        let every = (self.shared.settings.dead_letters.escalate_after / 60)
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            match self.step().await {
                Ok(n) if n as i64 == MOST => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not escalate unresolved dead letters; will try again")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}
