//! Publishing outbox rows: every message of a batch is published (mandatory,
//! persistent) before any confirm is awaited, then the confirms are collected (by the
//! partitions' publishers in a task of their own, while the next batch is published). What the
//! broker returned as unroutable or refused is reported back, never dropped: the rows
//! stay in the outbox and are retried with backoff ([`settle`]).

use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use lapin::{Channel, Connection};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::amqp::properties;
use crate::db::batch::{self, Queued, Writes};
use crate::db::store;
use crate::escalations;
use crate::runtime::{Guarded, Shared};
use protocol::envelope::DeliveryMeta;

/// A confirm-mode channel.
pub struct Publisher {
    channel: Channel,
    /// The longest the broker may take to confirm a message (`amqp.confirm_timeout`).
    confirm_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publishing failed")]
    Amqp(#[from] lapin::Error),
    #[error("the broker did not confirm a message within {0:?} (amqp.confirm_timeout); the channel is given up and the message sent again after its lease")]
    ConfirmTimeout(Duration),
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
    pub async fn open(
        conn: &Connection,
        confirm_timeout: Duration,
    ) -> Result<Publisher, lapin::Error> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            channel,
            confirm_timeout,
        })
    }

    /// Publishes every message, then awaits every confirm. `attempts` gives each row's
    /// earlier attempts (for the backoff of a failure).
    pub async fn publish(
        &self,
        rows: &[Queued],
        attempts: impl Fn(i64) -> i32,
    ) -> Result<Published, PublishError> {
        let in_flight = self.send(rows).await?;
        in_flight
            .confirmed(&mut Returned::default(), attempts)
            .await
    }

    /// Publishes every message (mandatory, persistent) without waiting for the broker.
    pub async fn send(&self, rows: &[Queued]) -> Result<InFlight, lapin::Error> {
        let mut sent = Vec::with_capacity(rows.len());
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
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
            sent.push(Sent {
                id: row.id,
                message_id: meta.message_id.unwrap_or_default(),
                exchange: m.exchange.clone(),
                routing_key: meta.routing_key,
                confirm,
            });
        }
        Ok(InFlight {
            sent,
            deadline,
            timeout: self.confirm_timeout,
        })
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "publisher stopping").await;
    }
}

/// Messages handed to the broker, their confirms still to come.
pub struct InFlight {
    sent: Vec<Sent>,
    /// Every confirm is due by then.
    deadline: tokio::time::Instant,
    timeout: Duration,
}

struct Sent {
    id: i64,
    message_id: String,
    exchange: String,
    routing_key: String,
    confirm: PublisherConfirm,
}

/// Message ids the broker returned as unroutable and no settled message has claimed
/// yet. lapin hands a returned message to whichever confirm completes next, not
/// necessarily its own (with pipelined publishes and multiple acks they differ); the
/// broker sends a return before the ack of its message, so the return arrives with the
/// confirm of its own message or of an earlier one on the same channel. Confirms
/// awaited in publishing order, with this set carried from one [`InFlight`] to the
/// next, therefore find every return by the time its message is settled.
#[derive(Debug, Default)]
pub struct Returned(std::collections::HashSet<String>);

impl InFlight {
    /// Awaits every confirm, in publishing order, and says what the broker did with each
    /// message. `returned` carries returns over from the channel's earlier messages.
    pub async fn confirmed(
        self,
        returned: &mut Returned,
        attempts: impl Fn(i64) -> i32,
    ) -> Result<Published, PublishError> {
        let mut acked = Vec::with_capacity(self.sent.len());
        for s in self.sent {
            let c = tokio::time::timeout_at(self.deadline, s.confirm)
                .await
                .map_err(|_| PublishError::ConfirmTimeout(self.timeout))??;
            let nack = matches!(c, Confirmation::Nack(_));
            if let Some(r) = c.take_message() {
                if let Some(id) = r.properties.message_id() {
                    returned.0.insert(id.as_str().to_string());
                }
            }
            acked.push((s.id, s.message_id, s.exchange, s.routing_key, nack));
        }
        let mut out = Published::default();
        for (id, message_id, exchange, routing_key, nack) in acked {
            if returned.0.remove(&message_id) {
                out.failed.push(Failed {
                    id,
                    attempts: attempts(id),
                    why: format!(
                        "unroutable: no queue is bound to {exchange} with routing key {routing_key}"
                    ),
                    returned: true,
                });
            } else if nack {
                out.failed.push(Failed {
                    id,
                    attempts: attempts(id),
                    why: "the broker refused the message (nack)".into(),
                    returned: false,
                });
            } else {
                out.sent.push(id);
            }
        }
        Ok(out)
    }
}

/// Tells the publishing breaker how a group went: a failed channel, a confirm that did
/// not come or a nack count against it; a return (no queue bound) does not.
pub fn record(
    shared: &Shared,
    p: Result<Published, PublishError>,
) -> Result<Published, PublishError> {
    match &p {
        Ok(p) if p.failed.iter().all(|f| f.returned) => shared.succeeded(Guarded::Publishing),
        _ => shared.failed(Guarded::Publishing),
    }
    p
}

/// Records what the broker said: confirmed rows are handed to the [`Settler`] (marked
/// sent shortly, together with other publishers'), the others are due again after a
/// wait from the `default` retry policy, by the row's attempts.
pub async fn settle(shared: &Shared, p: &Published) -> sqlx::Result<()> {
    shared.confirmed.add(&p.sent);
    if p.failed.is_empty() {
        return Ok(());
    }
    let policy = &shared.settings.retry_policies.default;
    let retries: Vec<(i64, String, Duration)> = p
        .failed
        .iter()
        .map(|f| {
            let wait = policy.wait_after(f.attempts.max(0) as u32 + 1);
            tracing::warn!(outbox_id = f.id, attempts = f.attempts + 1, retry_in = ?wait, "{}; kept in the outbox", f.why);
            (f.id, f.why.clone(), wait)
        })
        .collect();
    let now = chrono::Utc::now();
    let mut tx = shared.pool.begin().await?;
    let given_up = store::mark_failed(
        &mut tx,
        &retries,
        shared.settings.outbox.undeliverable_after,
    )
    .await?;
    // A notice that is itself undeliverable is not noticed again.
    let notices: Vec<_> = given_up
        .iter()
        .filter(|u| u.message_type != escalations::MESSAGE_UNDELIVERABLE)
        .map(|u| escalations::undeliverable_notice(u, now))
        .collect();
    let noticed = !notices.is_empty();
    if noticed {
        let writes = Writes {
            outbox: notices,
            ..Default::default()
        };
        batch::write(&mut tx, writes, now).await?;
    }
    tx.commit().await?;
    for u in &given_up {
        tracing::error!(outbox_id = u.id, message_id = %u.message_id, message_type = %u.message_type, routing_key = %u.routing_key, attempts = u.attempts, "no queue took this message within outbox.undeliverable_after; it is marked undeliverable and on-call is told");
    }
    shared.metrics.undeliverable.inc_by(given_up.len() as u64);
    if noticed {
        shared.wake_relay.notify_one();
    }
    Ok(())
}

/// Marks confirmed outbox rows sent, many at a time: a reconciler woken every
/// `outbox.settle_interval` (or when many are waiting); [`Settler::step`] can be called
/// directly.
pub struct Settler<'a> {
    shared: &'a Shared,
}

impl<'a> Settler<'a> {
    pub fn new(shared: &'a Shared) -> Settler<'a> {
        Settler { shared }
    }

    /// Marks what is waiting; how many rows. On failure they wait for the next step.
    pub async fn step(&self) -> sqlx::Result<usize> {
        let ids = self.shared.confirmed.take();
        if ids.is_empty() {
            return Ok(0);
        }
        crate::failpoint::crash(crate::failpoint::AFTER_CONFIRM_BEFORE_MARKED_SENT);
        let marked = async {
            let mut conn = self.shared.pool.acquire().await?;
            store::mark_sent(&mut conn, &ids).await
        }
        .await;
        match marked {
            Ok(()) => Ok(ids.len()),
            Err(e) => {
                self.shared.confirmed.add(&ids);
                Err(e)
            }
        }
    }

    /// Runs until `stop`, then marks what is left.
    pub async fn run(&self, stop: CancellationToken) {
        let every = self.shared.settings.outbox.settle_interval;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
                _ = self.shared.confirmed.wake.notified() => {}
            }
            if let Err(e) = self.step().await {
                tracing::warn!(error = %e, "could not mark confirmed messages sent; will retry");
            }
        }
        if let Err(e) = self.step().await {
            tracing::warn!(error = %e, "could not mark confirmed messages sent; the relay sends them again after their lease");
        }
    }
}

/// What a batch hands its publisher: the outbox rows it committed, and when.
pub struct Handed {
    pub committed_at: Instant,
    pub rows: Vec<Queued>,
}

/// Publishes what batches hand it, in order, until its sender is dropped (then it has
/// published everything handed to it and settled what the broker confirmed) or the
/// channel fails. Publishing does not wait for confirms: they are awaited by a second
/// task, in order, off the path of the next batch's messages; at most `IN_FLIGHT`
/// groups wait for theirs at once. What cannot be settled stays leased in the outbox
/// and the relay takes it when the lease ends.
pub async fn run(
    publisher: Publisher,
    shared: &Shared,
    mut rx: mpsc::Receiver<Handed>,
) -> Result<(), PublishError> {
    const MOST: usize = 2000;
    const IN_FLIGHT: usize = 64;
    let (confirms_tx, mut confirms_rx) = mpsc::channel::<InFlight>(IN_FLIGHT);
    let sending = async {
        while let Some(first) = rx.recv().await {
            let mut rows = first.rows;
            let mut oldest = first.committed_at;
            while rows.len() < MOST {
                match rx.try_recv() {
                    Ok(more) => {
                        rows.extend(more.rows);
                        oldest = oldest.min(more.committed_at);
                    }
                    Err(_) => break,
                }
            }
            let in_flight = publisher.send(&rows).await.inspect_err(|_| {
                shared.failed(Guarded::Publishing);
            })?;
            shared
                .metrics
                .publish_wait_seconds
                .observe(oldest.elapsed().as_secs_f64());
            if confirms_tx.send(in_flight).await.is_err() {
                break;
            }
        }
        drop(confirms_tx);
        Ok::<_, PublishError>(())
    };
    let confirming = async {
        let mut returned = Returned::default();
        while let Some(in_flight) = confirms_rx.recv().await {
            let p = in_flight.confirmed(&mut returned, |_| 0).await;
            let p = record(shared, p)?;
            shared.metrics.published.inc_by(p.sent.len() as u64);
            shared
                .metrics
                .returned
                .inc_by(p.failed.iter().filter(|f| f.returned).count() as u64);
            if let Err(e) = settle(shared, &p).await {
                tracing::warn!(error = %e, "could not record what the broker said; the relay sends those messages again after their lease");
            }
        }
        Ok::<_, PublishError>(())
    };
    let (sent, confirmed) = tokio::join!(sending, confirming);
    publisher.close().await;
    sent.and(confirmed)
}
