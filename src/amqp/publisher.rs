//! Publishing outbox rows: every message of a batch is published (mandatory,
//! persistent) before any confirm is awaited, then the confirms are collected. What the
//! broker returned as unroutable or refused is reported back, never dropped: the rows
//! stay in the outbox and are retried with backoff ([`settle`]).

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::{Channel, Connection};
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::amqp::properties;
use crate::db::batch::Queued;
use crate::db::store;
use crate::domain::envelope::DeliveryMeta;
use crate::runtime::Shared;

/// A confirm-mode channel.
pub struct Publisher {
    channel: Channel,
}

/// What the broker said about a batch of messages.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    /// Outbox ids confirmed.
    pub sent: Vec<i64>,
    /// Outbox ids not taken, with why, and how many attempts each had before.
    pub failed: Vec<Failed>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub id: i64,
    pub attempts: i32,
    pub why: String,
    pub returned: bool,
}

impl Publisher {
    pub async fn open(conn: &Connection) -> Result<Publisher, lapin::Error> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher { channel })
    }

    /// Publishes every message, then awaits every confirm. `attempts` gives each row's
    /// earlier attempts (for the backoff of a failure).
    pub async fn publish(
        &self,
        rows: &[Queued],
        attempts: impl Fn(i64) -> i32,
    ) -> Result<Published, lapin::Error> {
        let mut confirms = Vec::with_capacity(rows.len());
        for row in rows {
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
        // lapin hands a returned message to whichever confirm completes next, not
        // necessarily its own (with pipelined publishes and multiple acks they differ),
        // so returns are matched to rows by message id. The broker sends a message's
        // return before its ack, so every return of this batch arrives with one of the
        // batch's confirms.
        let mut acked = Vec::with_capacity(rows.len());
        let mut returned = std::collections::HashSet::new();
        for (row, confirm) in rows.iter().zip(confirms) {
            let c = confirm.await?;
            let nack = matches!(c, Confirmation::Nack(_));
            if let Some(r) = c.take_message() {
                if let Some(id) = r.properties.message_id() {
                    returned.insert(id.as_str().to_string());
                }
            }
            acked.push((row, nack));
        }
        let mut out = Published::default();
        for (row, nack) in acked {
            let m = &row.message;
            if returned.contains(&m.message_id) {
                out.failed.push(Failed {
                    id: row.id,
                    attempts: attempts(row.id),
                    why: format!(
                        "unroutable: no queue is bound to {} with routing key {}",
                        m.exchange, m.routing_key
                    ),
                    returned: true,
                });
            } else if nack {
                out.failed.push(Failed {
                    id: row.id,
                    attempts: attempts(row.id),
                    why: "the broker refused the message (nack)".into(),
                    returned: false,
                });
            } else {
                out.sent.push(row.id);
            }
        }
        Ok(out)
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "publisher stopping").await;
    }
}

/// Records what the broker said: confirmed rows sent, the others due again after a
/// backoff that doubles with each attempt (from `retry_backoff`, at most 32 times it).
pub async fn settle(pool: &PgPool, p: &Published, retry_backoff: Duration) -> sqlx::Result<()> {
    if p.sent.is_empty() && p.failed.is_empty() {
        return Ok(());
    }
    let mut conn = pool.acquire().await?;
    store::mark_sent(&mut conn, &p.sent).await?;
    if !p.failed.is_empty() {
        let retries: Vec<(i64, String, Duration)> = p
            .failed
            .iter()
            .map(|f| {
                let wait = retry_backoff * 2u32.saturating_pow(f.attempts.clamp(0, 5) as u32);
                tracing::warn!(outbox_id = f.id, attempts = f.attempts + 1, retry_in = ?wait, "{}; kept in the outbox", f.why);
                (f.id, f.why.clone(), wait)
            })
            .collect();
        store::mark_failed(&mut conn, &retries).await?;
    }
    Ok(())
}

/// Publishes what batches hand it, in order, until its sender is dropped (then it has
/// published everything handed to it) or the channel fails. Confirms are awaited here,
/// off the path of the batches; what cannot be settled stays leased in the outbox and
/// the relay takes it when the lease ends.
pub async fn run(
    publisher: Publisher,
    shared: &Shared,
    mut rx: mpsc::Receiver<Vec<Queued>>,
) -> Result<(), lapin::Error> {
    const MOST: usize = 2000;
    while let Some(mut rows) = rx.recv().await {
        while rows.len() < MOST {
            match rx.try_recv() {
                Ok(more) => rows.extend(more),
                Err(_) => break,
            }
        }
        let p = publisher.publish(&rows, |_| 0).await?;
        shared.metrics.published.inc_by(p.sent.len() as u64);
        shared
            .metrics
            .returned
            .inc_by(p.failed.iter().filter(|f| f.returned).count() as u64);
        if let Err(e) = settle(&shared.pool, &p, shared.settings.outbox.retry_backoff).await {
            tracing::warn!(error = %e, "could not mark published messages sent; the relay will send them again after their lease");
        }
    }
    publisher.close().await;
    Ok(())
}
