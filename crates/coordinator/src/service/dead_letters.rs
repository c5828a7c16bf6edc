//! Dead letters that nobody worked: a reconciler that tells management once about every
//! dead letter unresolved (neither replayed nor resolved) for longer than
//! `dead_letters.escalate_after`, in one `dead_letters_unresolved` message per step.
//! [`Escalator::step`] can be called directly.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::db::{self, batch, store, Pool};
use crate::engine::escalations;
use crate::engine::rows::Writes;
use crate::service::runtime::{Shared, Signals};

/// Most dead letters named in one notice.
const MOST: i64 = 100;

pub struct Escalator<'a> {
    pool: &'a Pool,
    clock: &'a dyn Clock,
    signals: &'a Signals,
    /// `dead_letters.escalate_after`.
    after: Duration,
}

impl<'a> Escalator<'a> {
    pub fn new(
        pool: &'a Pool,
        clock: &'a dyn Clock,
        signals: &'a Signals,
        after: Duration,
    ) -> Escalator<'a> {
        Escalator {
            pool,
            clock,
            signals,
            after,
        }
    }

    /// The running service's escalator.
    pub fn of(shared: &'a Shared) -> Escalator<'a> {
        Escalator::new(
            &shared.pool,
            shared.clock.as_ref(),
            &shared.signals,
            shared.settings.dead_letters.escalate_after,
        )
    }

    /// Escalates what crossed the threshold since the last step; how many dead letters.
    pub async fn step(&self) -> db::Result<usize> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let letters =
            store::escalate_unresolved_dead_letters(&mut tx, self.after, MOST, now).await?;
        if letters.is_empty() {
            return Ok(0);
        }
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
        self.signals.wake_relay.notify_one();
        Ok(letters.len())
    }
    /// Steps every `escalate_after / 60` (between 1 s and 1 min) until `stop`.
    pub async fn run(&self, stop: CancellationToken) {
        let every = (self.after / 60).clamp(Duration::from_secs(1), Duration::from_secs(60));
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
