//! Consumes one partition of the inbox: takes what is ready (up to `inbox.batch_size`)
//! into one batch ([`crate::service::pipeline`]), which commits, then acks (`multiple`) and hands
//! what the batch queued to this partition's publisher. Deliveries are applied in the
//! order received.

use std::time::Instant;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::amqp::publisher::{PublishError, Publisher};
use crate::amqp::topology::Declarer;
use crate::amqp::{self, Connection, Consumer, Delivery};
use crate::db;
use crate::engine::{Inbound, Outcome};
use crate::service::pipeline;
use crate::service::publishing::{self, Handed, Settling};
use crate::service::runtime::{Guarded, Shared};

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("the inbox consumer failed")]
    Amqp(#[from] amqp::Error),
    #[error("the publisher of committed messages stopped")]
    Publisher,
    #[error("the publisher of committed messages failed")]
    Publish(#[from] PublishError),
    #[error("the broker closed the inbox consumer")]
    Closed,
    #[error("could not declare queues for a new agent")]
    Topology(#[from] crate::amqp::topology::TopologyError),
}

/// Runs until `stop` is cancelled (then finishes the batch in hand, publishes what it
/// committed, and returns `Ok`) or a channel fails.
pub async fn run(
    conn: &Connection,
    shared: &Shared,
    partition: u32,
    stop: CancellationToken,
) -> Result<(), ConsumerError> {
    let publisher = Publisher::open(conn, shared.settings.amqp.confirm_timeout)
        .await?
        .signed_by(shared.signer.clone());
    let (tx, rx) = mpsc::channel(64);
    let (consumed, published) = tokio::join!(
        consume(conn, shared, partition, stop, tx),
        publishing::run(publisher, Settling::of(shared), rx)
    );
    consumed?;
    published?;
    Ok(())
}

async fn consume(
    conn: &Connection,
    shared: &Shared,
    partition: u32,
    stop: CancellationToken,
    published: mpsc::Sender<Handed>,
) -> Result<(), ConsumerError> {
    let queue = shared.settings.inbox.queue(partition);
    let tag = format!("{}-p{partition}", shared.instance);
    let mut consumer = Consumer::open(conn, &queue, &tag, shared.settings.inbox.prefetch).await?;
    tracing::info!(%queue, prefetch = shared.settings.inbox.prefetch, "consuming an inbox partition");

    let result = loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            next = consumer.next() => next,
        };
        let received = Instant::now();
        let mut batch = match first {
            Some(Ok(d)) => vec![d],
            Some(Err(e)) => break Err(e.into()),
            None => break Err(ConsumerError::Closed),
        };
        if !let_through(shared, &stop).await {
            break Ok(());
        }
        // At most inbox.concurrency batches are applied at once by this coordinator:
        // while this partition waits for its turn, more deliveries arrive and the batch
        // it then takes is bigger (fewer, larger transactions on a busy machine).
        let Ok(turn) = shared.batch_turns.acquire().await else {
            break Ok(());
        };
        shared
            .metrics
            .batch_wait_seconds
            .observe(received.elapsed().as_secs_f64());
        let mut failed = None;
        while batch.len() < shared.settings.inbox.batch_size {
            match consumer.next_ready() {
                Some(Ok(d)) => batch.push(d),
                Some(Err(e)) => {
                    failed = Some(e);
                    break;
                }
                None => break,
            }
        }
        if !handle_batch(conn, shared, partition, &batch, turn, &stop, &published).await? {
            break Ok(());
        }
        if let Some(e) = failed {
            break Err(e.into());
        }
    };
    // Unacked prefetched deliveries go back to the queue when the channel closes.
    consumer.close("consumer stopping").await;
    tracing::info!(%queue, "stopped consuming an inbox partition");
    result
}

/// Waits while a circuit breaker is open (the deliveries in hand stay unacknowledged on
/// their queue meanwhile). False if shutdown came first.
async fn let_through(shared: &Shared, stop: &CancellationToken) -> bool {
    while let Some((breaker, wait)) = shared.breakers.wait() {
        tracing::debug!(
            breaker = breaker.as_str(),
            ?wait,
            "a circuit breaker is open; deliveries wait"
        );
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(wait.min(std::time::Duration::from_secs(1))) => {}
        }
    }
    !stop.is_cancelled()
}

/// Applies a batch until it commits (retrying while the database is down), gives back
/// the turn, hands what it queued to the publisher, then acks. Returns false if
/// shutdown came first (the batch is then requeued, uncommitted).
async fn handle_batch(
    conn: &Connection,
    shared: &Shared,
    partition: u32,
    batch: &[Delivery],
    turn: tokio::sync::SemaphorePermit<'_>,
    stop: &CancellationToken,
    published: &mpsc::Sender<Handed>,
) -> Result<bool, ConsumerError> {
    let Some(last) = batch.last() else {
        return Ok(true);
    };
    let inbound: Vec<Inbound<'_>> = batch
        .iter()
        .map(|d| Inbound {
            body: &d.body,
            meta: &d.meta,
        })
        .collect();
    // A database outage is never the batch's fault: it is retried without end.
    let mut waits = shared.settings.retry_policies.critical_task.waits();
    let out = loop {
        let started = Instant::now();
        // The batch's messages are this consumer's to publish for one lease; after
        // that (a crash) the relay takes them.
        let publish_after = pipeline::publish_after(Utc::now(), shared.settings.outbox.lease);
        match pipeline::apply_shared(shared, partition, &inbound, publish_after).await {
            Ok(out) => {
                shared.breakers.succeeded(Guarded::Database);
                shared
                    .metrics
                    .batch_seconds
                    .observe(started.elapsed().as_secs_f64());
                shared.metrics.batch_size.observe(batch.len() as f64);
                shared
                    .metrics
                    .batch_statements
                    .inc_by(out.statements as u64);
                shared.metrics.set_aside.inc_by(out.set_aside as u64);
                shared
                    .metrics
                    .bad_signatures
                    .inc_by(out.results.iter().filter(|r| r.bad_signature).count() as u64);
                break out;
            }
            Err(e) => {
                shared.breakers.failed(Guarded::Database);
                let backoff = waits.next_persistent();
                tracing::error!(error = %crate::telemetry::error_chain(&e), size = batch.len(), retry_in = ?backoff, "batch not committed; will retry");
                let waited = tokio::select! {
                    _ = stop.cancelled() => false,
                    _ = tokio::time::sleep(backoff) => let_through(shared, stop).await,
                };
                if !waited {
                    last.requeue_through().await?;
                    return Ok(false);
                }
            }
        }
    };
    crate::failpoint::crash(crate::failpoint::AFTER_COMMIT_BEFORE_ACK);
    // The turn bounds concurrent transactions; what follows needs no connection.
    drop(turn);
    // The next agent's tasks first: handoff latency runs through here.
    let handed = Handed {
        committed_at: Instant::now(),
        rows: out.queued,
    };
    if !handed.rows.is_empty() && published.send(handed).await.is_err() {
        return Err(ConsumerError::Publisher);
    }
    // Acked only after the commit: a crash before this line redelivers, and the
    // redelivery is a duplicate that changes nothing.
    last.ack_through().await?;

    for (p, meta) in out.results.iter().zip(batch.iter().map(|d| &d.meta)) {
        tracing::debug!(
            message_id = meta.message_id.as_deref().unwrap_or(""),
            workflow_id = meta.correlation_id.as_deref().unwrap_or(""),
            message_type = meta.kind.as_deref().unwrap_or(""),
            outcome = p.outcome.label(),
            "processed"
        );
        shared
            .metrics
            .messages
            .with_label_values(&[p.outcome.label()])
            .inc();
        if let Outcome::Rejected(reason) = &p.outcome {
            shared
                .metrics
                .rejections
                .with_label_values(&[reason.as_str()])
                .inc();
        }
        if let Some((from, to)) = &p.transition {
            shared
                .metrics
                .transitions
                .with_label_values(&[from.as_str(), to.as_str()])
                .inc();
        }
    }
    shared.signals.schedule(out.deadlines.iter().copied());
    if !out.registered.is_empty() {
        let mut declarer = Declarer::new(conn, &shared.settings.amqp).await?;
        for (agent_id, agent_type) in &out.registered {
            declarer
                .agent(agent_id, agent_type, &shared.catalog)
                .await?;
            tracing::info!(%agent_id, %agent_type, "agent registered by heartbeat; queues declared");
        }
        declarer.close().await;
        // Messages for the new agent's role may have been returned before its queue existed.
        if let Ok(mut c) = shared.pool.acquire().await {
            let _ = db::store::retry_now(&mut c, shared.clock.now()).await;
        }
        shared.signals.wake_relay.notify_one();
    }
    Ok(true)
}
