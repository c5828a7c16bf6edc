//! The outbox relay: publishes committed messages and marks them sent once the broker
//! confirms them.
//!
//! A reconciler: woken after every commit that queued something and by a poll
//! interval; each [`Relay::step`] claims a bounded batch with `FOR UPDATE SKIP LOCKED`
//! (so several coordinators never publish the same row at once), publishes it with
//! `mandatory` and publisher confirms, and commits. A crash between the confirm and the
//! commit re-sends the row later with the same message id (at least once). A message
//! the broker returns as unroutable stays in the outbox and is retried with backoff.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;

use crate::amqp::properties;
use crate::db::store::{self, PendingMessage};
use crate::domain::envelope::DeliveryMeta;
use crate::runtime::Shared;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the relay's channel failed")]
    Amqp(#[from] lapin::Error),
    #[error("the relay could not read or update the outbox")]
    Db(#[from] sqlx::Error),
}

/// What one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepReport {
    pub claimed: usize,
    pub published: usize,
    pub returned: usize,
    pub nacked: usize,
}

pub struct Relay<'a> {
    shared: &'a Shared,
    channel: Channel,
}

impl<'a> Relay<'a> {
    pub async fn new(conn: &Connection, shared: &'a Shared) -> Result<Relay<'a>, RelayError> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Relay { shared, channel })
    }

    /// Publishes one batch of due messages.
    pub async fn step(&self) -> Result<StepReport, RelayError> {
        let cfg = &self.shared.settings.outbox;
        let mut tx = self.shared.pool.begin().await?;
        let rows = store::claim_pending(&mut tx, cfg.batch_size).await?;
        let mut report = StepReport {
            claimed: rows.len(),
            ..Default::default()
        };
        if rows.is_empty() {
            return Ok(report);
        }
        let mut confirms = Vec::with_capacity(rows.len());
        for row in &rows {
            let m = &row.message;
            let meta = DeliveryMeta {
                routing_key: m.routing_key.clone(),
                message_id: Some(m.message_id.clone()),
                correlation_id: Some(m.correlation_id.clone()),
                kind: Some(m.message_type.clone()),
                app_id: Some(m.app_id.clone()),
                timestamp: None,
                content_type: None,
            };
            let confirm = self
                .channel
                .basic_publish(
                    &m.exchange,
                    &m.routing_key,
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &m.body,
                    properties(&meta),
                )
                .await?;
            confirms.push(confirm);
        }
        let mut sent = Vec::with_capacity(rows.len());
        for (row, confirm) in rows.iter().zip(confirms) {
            match confirm.await? {
                Confirmation::Ack(None) | Confirmation::NotRequested => sent.push(row.id),
                Confirmation::Ack(Some(_returned)) => {
                    report.returned += 1;
                    let why = format!(
                        "unroutable: no queue is bound to {} with routing key {}",
                        row.message.exchange, row.message.routing_key
                    );
                    self.retry_later(&mut tx, row, &why).await?;
                }
                Confirmation::Nack(_) => {
                    report.nacked += 1;
                    self.retry_later(&mut tx, row, "the broker refused the message (nack)")
                        .await?;
                }
            }
        }
        store::mark_sent(&mut tx, &sent).await?;
        tx.commit().await?;
        report.published = sent.len();
        self.shared.metrics.published.inc_by(sent.len() as u64);
        self.shared.metrics.returned.inc_by(report.returned as u64);
        Ok(report)
    }

    async fn retry_later(
        &self,
        conn: &mut sqlx::PgConnection,
        row: &PendingMessage,
        why: &str,
    ) -> sqlx::Result<()> {
        let base = self.shared.settings.outbox.retry_backoff;
        let wait = base * 2u32.saturating_pow(row.attempts.clamp(0, 5) as u32);
        tracing::warn!(
            message_id = %row.message.message_id,
            workflow_id = %row.message.correlation_id,
            attempts = row.attempts + 1,
            retry_in = ?wait,
            "{why}; kept in the outbox"
        );
        store::mark_failed(conn, row.id, why, wait).await
    }

    /// Steps until nothing due is left.
    pub async fn drain(&self) -> Result<(), RelayError> {
        loop {
            let r = self.step().await?;
            if r.claimed < self.shared.settings.outbox.batch_size as usize || r.published == 0 {
                return Ok(());
            }
        }
    }

    async fn refresh_pending_gauge(&self) {
        if let Ok(mut c) = self.shared.pool.acquire().await {
            if let Ok(n) = store::pending_count(&mut c).await {
                self.shared.metrics.outbox_pending.set(n);
            }
        }
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "relay stopping").await;
    }
}

/// Runs the relay until `stop` (then flushes what is due and returns) or a broker error.
/// Database errors are logged and retried at the next wake-up.
pub async fn run(relay: &Relay<'_>, stop: CancellationToken) -> Result<(), RelayError> {
    let poll = relay.shared.settings.outbox.poll_interval;
    // The relay wakes after every commit; counting the outbox that often would put a
    // query per batch on the hot path for a gauge, so refresh it once per poll interval.
    let mut gauge_due = std::time::Instant::now();
    loop {
        match relay.drain().await {
            Ok(()) => {}
            Err(RelayError::Db(e)) => {
                tracing::warn!(error = %e, "relay could not reach the database; will retry")
            }
            Err(e) => return Err(e),
        }
        if std::time::Instant::now() >= gauge_due {
            relay.refresh_pending_gauge().await;
            gauge_due = std::time::Instant::now() + poll;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = relay.shared.wake_relay.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
    // Flush: whatever was committed before shutdown goes out now.
    let deadline = Duration::from_secs(10);
    match tokio::time::timeout(deadline, relay.drain()).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(
                "outbox flush did not finish within {deadline:?}; the rest is sent after restart"
            );
            Ok(())
        }
    }
}
