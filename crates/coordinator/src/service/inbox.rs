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
use crate::engine::{Admission, Inbound, Input, Outcome};
use crate::service::publishing::{self, Handed, Settling};
use crate::service::runtime::{Guarded, Shared};
use crate::service::{pipeline, rate_limits};

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
    let Some(mut backlog) = held_back(shared, partition, &stop).await else {
        return Ok(());
    };
    let mut consumer = Consumer::open(conn, &queue, &tag, shared.settings.inbox.prefetch).await?;
    tracing::info!(%queue, prefetch = shared.settings.inbox.prefetch, held_back = backlog.len(), "consuming an inbox partition");
    // When to look again for held-back messages whose sender has room.
    let mut release_at = (!backlog.is_empty()).then(tokio::time::Instant::now);

    let result = loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            next = consumer.next() => next,
            _ = sleep_until(release_at) => {
                match release(conn, shared, partition, &mut backlog, &stop, &published).await {
                    Ok(Some(again)) => release_at = again,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
                continue;
            }
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
        let Some(keys) = agent_keys(shared, &stop).await else {
            if let Some(last) = batch.last() {
                last.requeue_through().await?;
            }
            break Ok(());
        };
        // At most inbox.concurrency batches are applied at once by this coordinator.
        // While this partition waits for its turn, the deliveries that arrive join its
        // batch (fewer, larger transactions on a busy machine) and are admitted as they
        // come, signatures and all, in groups of ADMIT_TOGETHER (an Ed25519 batch
        // verification costs half as much a signature from eight on), so that the turn
        // is spent on the batch and at most a group's worth of admission.
        let mut admitted = Vec::with_capacity(batch.len());
        let mut failed = None;
        // When each delivery was taken, for the time it waited for the turn.
        let mut arrived = vec![received];
        let turn = {
            let acquire = shared.batch_turns.acquire();
            tokio::pin!(acquire);
            loop {
                if failed.is_none() {
                    failed =
                        take_ready(&mut consumer, &mut batch, shared.settings.inbox.batch_size);
                }
                arrived.resize(batch.len(), Instant::now());
                if batch.len() - admitted.len() >= ADMIT_TOGETHER {
                    admit_new(shared, &batch, &mut admitted, &keys);
                }
                let room = failed.is_none() && batch.len() < shared.settings.inbox.batch_size;
                tokio::select! {
                    biased;
                    turn = &mut acquire => break turn,
                    next = consumer.next(), if room => match next {
                        Some(Ok(d)) => batch.push(d),
                        Some(Err(e)) => failed = Some(e.into()),
                        None => failed = Some(ConsumerError::Closed),
                    },
                }
            }
        };
        let Ok(turn) = turn else {
            break Ok(());
        };
        arrived.resize(batch.len(), Instant::now());
        let turned = Instant::now();
        admit_new(shared, &batch, &mut admitted, &keys);
        shared
            .metrics
            .batch_wait_seconds
            .observe(received.elapsed().as_secs_f64());
        observe_arrivals(shared, &arrived, &admitted, turned);
        let inbound: Vec<Inbound<'_>> = batch.iter().map(inbound).collect();
        let plan = backlog.plan(&shared.rate_limits, &admitted);
        if plan.iter().any(Option::is_some) {
            if !hold_back(
                shared,
                partition,
                &batch,
                &admitted,
                &plan,
                &mut backlog,
                &stop,
                &published,
            )
            .await?
            {
                break Ok(());
            }
            release_at = release_at.or_else(|| Some(tokio::time::Instant::now()));
        }
        let applied: Vec<Input<'_>> = inbound
            .iter()
            .zip(&admitted)
            .zip(&plan)
            .filter(|(_, p)| p.is_none())
            .map(|((d, a), _)| Input::Delivery(*d, a))
            .collect();
        if !handle_batch(
            conn, shared, partition, &batch, &applied, turn, &stop, &published,
        )
        .await?
        {
            break Ok(());
        }
        if let Some(e) = failed {
            break Err(e);
        }
    };
    // Unacked prefetched deliveries go back to the queue when the channel closes.
    consumer.close("consumer stopping").await;
    tracing::info!(%queue, "stopped consuming an inbox partition");
    result
}

/// How many deliveries a partition waiting for its turn admits together.
const ADMIT_TOGETHER: usize = 8;

/// Moves the deliveries already received into `batch`, up to `limit`; the consumer's
/// failure, if that is what came.
fn take_ready(
    consumer: &mut Consumer,
    batch: &mut Vec<Delivery>,
    limit: usize,
) -> Option<ConsumerError> {
    while batch.len() < limit {
        match consumer.next_ready()? {
            Ok(d) => batch.push(d),
            Err(e) => return Some(e.into()),
        }
    }
    None
}

/// Admits the deliveries of `batch` past those in `admitted`, together (their
/// signatures verified in one batch).
fn admit_new(
    shared: &Shared,
    batch: &[Delivery],
    admitted: &mut Vec<Admission>,
    keys: &crate::engine::Agents,
) {
    let new = batch.get(admitted.len()..).unwrap_or_default();
    if new.is_empty() {
        return;
    }
    let inbound: Vec<Inbound<'_>> = new.iter().map(inbound).collect();
    let started = Instant::now();
    admitted.extend(
        shared
            .processor
            .admit_all(&inbound, shared.clock.now(), keys),
    );
    shared.metrics.stage(
        "admit",
        started.elapsed().as_secs_f64() / new.len() as f64,
        new.len(),
    );
}

/// Each delivery's `turn` (taken from the queue at `arrived` until `turned`) and, for
/// those admitted, its `broker_in`: its sender's timestamp until it was taken.
fn observe_arrivals(shared: &Shared, arrived: &[Instant], admitted: &[Admission], turned: Instant) {
    let (now, at_now) = (shared.clock.now(), Instant::now());
    for (at, a) in arrived.iter().zip(admitted) {
        let waited = turned.saturating_duration_since(*at);
        shared.metrics.stage("turn", waited.as_secs_f64(), 1);
        if let Admission::Admitted(a) = a {
            let age = (now - a.envelope.header.timestamp).num_microseconds();
            let since = at_now.saturating_duration_since(*at).as_secs_f64();
            let age = age.unwrap_or(0) as f64 / 1e6 - since;
            shared.metrics.stage("broker_in", age, 1);
        }
    }
}

/// A delivery as admission and the batch read it.
fn inbound(d: &Delivery) -> Inbound<'_> {
    Inbound {
        body: &d.body,
        meta: &d.meta,
    }
}

/// A held-back delivery, read back, as admission and the batch read it.
fn released(r: &db::deferred::Released) -> Inbound<'_> {
    Inbound {
        body: &r.body,
        meta: &r.meta,
    }
}

/// The senders' keys admission checks signatures with (the agent cache, reloaded from
/// the database when stale), waiting while the database cannot give them. `None` if
/// shutdown came first.
async fn agent_keys(
    shared: &Shared,
    stop: &CancellationToken,
) -> Option<std::sync::Arc<crate::engine::Agents>> {
    let mut waits = shared.settings.retry_policies.critical_task.waits();
    loop {
        match pipeline::agents(shared).await {
            Ok(keys) => return Some(keys),
            Err(e) => {
                shared.breakers.failed(Guarded::Database);
                let backoff = waits.next_persistent();
                tracing::error!(error = %crate::telemetry::error_chain(&e), retry_in = ?backoff, "could not read the agents and their keys to admit a batch; will retry");
                if !back_off(shared, stop, backoff).await {
                    return None;
                }
            }
        }
    }
}

/// Sleeps until `at`, or for ever when there is nothing to wait for.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What this partition holds back, as the table has it: where a consumer taking the
/// partition starts. `None` if shutdown came first.
async fn held_back(
    shared: &Shared,
    partition: u32,
    stop: &CancellationToken,
) -> Option<rate_limits::Backlog> {
    let mut waits = shared.settings.retry_policies.critical_task.waits();
    loop {
        let held = async {
            let mut c = shared.pool.acquire().await?;
            db::deferred::held(&mut c, partition).await
        };
        match held.await {
            Ok(rows) => return Some(rate_limits::Backlog::new(rows)),
            Err(e) => {
                let backoff = waits.next_persistent();
                tracing::error!(error = %crate::telemetry::error_chain(&e), partition, retry_in = ?backoff, "could not read the partition's held-back messages; will retry");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

/// Stores the deliveries `plan` holds back (acked with the batch once this commits)
/// and queues one `rate_limited` notice a minute to each sender over its limit.
/// False if shutdown came first (the batch is then requeued).
#[allow(clippy::too_many_arguments)]
async fn hold_back(
    shared: &Shared,
    partition: u32,
    batch: &[Delivery],
    admitted: &[Admission],
    plan: &[Option<rate_limits::Holding>],
    backlog: &mut rate_limits::Backlog,
    stop: &CancellationToken,
    published: &mpsc::Sender<Handed>,
) -> Result<bool, ConsumerError> {
    let now = shared.clock.now();
    // Held bodies are stored with their sealed fields sealed, and opened when applied.
    let sealed: Vec<Option<Vec<u8>>> = batch
        .iter()
        .zip(plan)
        .map(|(d, p)| p.and_then(|_| shared.cipher.seal_body(&d.body)))
        .collect();
    let mut rows = Vec::new();
    let mut notices = Vec::new();
    for (((d, a), holding), sealed) in batch.iter().zip(admitted).zip(plan).zip(&sealed) {
        let (Some(holding), Admission::Admitted(a)) = (holding, a) else {
            continue;
        };
        let (sender, h) = (&a.sender, &a.envelope.header);
        shared
            .metrics
            .rate_limited
            .with_label_values(&[sender.role()])
            .inc();
        if let Some((limit, wait)) = holding.over {
            if shared.rate_limits.notice_due(sender.agent_id()) {
                tracing::warn!(agent_id = sender.agent_id(), role = sender.role(), limit_per_minute = limit, message_id = %h.message_id, "an agent is over its rate limit; its further messages are delayed (one notice a minute)");
                notices.push(crate::engine::messages::rate_limited_notice(
                    sender.agent_id(),
                    &h.message_id,
                    Some(&h.correlation_id),
                    limit,
                    wait,
                    now,
                ));
            }
        }
        rows.push(db::deferred::NewDeferred {
            message_id: &h.message_id,
            sender: sender.agent_id(),
            sender_role: sender.role(),
            message_type: &h.message_type,
            correlation_id: &h.correlation_id,
            body: sealed.as_deref().unwrap_or(&d.body),
            meta: &d.meta,
        });
    }
    let mut waits = shared.settings.retry_policies.critical_task.waits();
    let (held, written) = loop {
        let publish_after = pipeline::publish_after(Utc::now(), shared.settings.outbox.lease);
        let stored = async {
            let mut c = shared.pool.acquire().await?;
            db::deferred::hold(
                &mut c,
                partition,
                &rows,
                notices.clone(),
                now,
                publish_after,
            )
            .await
        };
        match stored.await {
            Ok(done) => break done,
            Err(e) => {
                let backoff = waits.next_persistent();
                tracing::error!(error = %crate::telemetry::error_chain(&e), held = rows.len(), retry_in = ?backoff, "could not hold back rate-limited messages; will retry");
                let waited = back_off(shared, stop, backoff).await;
                if !waited {
                    if let Some(last) = batch.last() {
                        last.requeue_through().await?;
                    }
                    return Ok(false);
                }
            }
        }
    };
    backlog.add(held);
    if !written.queued.is_empty() {
        let handed = Handed {
            committed_at: Instant::now(),
            rows: written.queued,
            handoffs: Vec::new(),
        };
        if published.send(handed).await.is_err() {
            return Err(ConsumerError::Publisher);
        }
    }
    Ok(true)
}

/// Applies held-back messages whose senders have room again, a batch at a time, and
/// forgets them once committed. Returns when to look again (`Some(None)`: nothing is
/// held), or `None` if shutdown came first.
async fn release(
    conn: &Connection,
    shared: &Shared,
    partition: u32,
    backlog: &mut rate_limits::Backlog,
    stop: &CancellationToken,
    published: &mpsc::Sender<Handed>,
) -> Result<Option<Option<tokio::time::Instant>>, ConsumerError> {
    loop {
        let due = backlog.due(&shared.rate_limits, shared.settings.inbox.batch_size);
        let again = due
            .again_in
            .map(|d| tokio::time::Instant::now() + d.max(RELEASE_TICK));
        if due.ids.is_empty() {
            return Ok(Some(again));
        }
        let rows = async {
            let mut c = shared.pool.acquire().await?;
            db::deferred::bodies(&mut c, &due.ids).await
        };
        let mut rows = match rows.await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %crate::telemetry::error_chain(&e), "could not read held-back messages; will retry");
                return Ok(Some(Some(tokio::time::Instant::now() + RELEASE_RETRY)));
            }
        };
        for r in &mut rows {
            match shared.cipher.open_body(&r.body) {
                Ok(body) => r.body = body,
                // Applied as stored: its sealed fields stay sealed where it is kept.
                Err(e) => {
                    tracing::error!(error = %e, held = r.id, "a held-back message's sealed fields cannot be opened; it is applied as stored")
                }
            }
        }
        let Some(keys) = agent_keys(shared, stop).await else {
            return Ok(None);
        };
        // Each is admitted as of when it arrived: holding it back is the coordinator's
        // doing, not its sender's, so it is not stale for having waited.
        let admitted: Vec<Admission> = rows
            .iter()
            .map(|r| shared.processor.admit(released(r), r.deferred_at, &keys))
            .collect();
        let inputs: Vec<Input<'_>> = rows
            .iter()
            .zip(&admitted)
            .map(|(r, a)| Input::Delivery(released(r), a))
            .collect();
        let Ok(turn) = shared.batch_turns.acquire().await else {
            return Ok(None);
        };
        let Some(out) = commit(shared, partition, &inputs, turn, stop, published).await? else {
            return Ok(None);
        };
        let forgotten = async {
            let mut c = shared.pool.acquire().await?;
            db::deferred::forget(&mut c, &due.ids).await
        };
        if let Err(e) = forgotten.await {
            // Applied again by the next consumer of the partition: duplicates, no effect.
            tracing::warn!(error = %crate::telemetry::error_chain(&e), "applied held-back messages stay in deferred_messages; they will be seen as duplicates");
        }
        backlog.forget(&due.ids);
        shared.metrics.released.inc_by(due.ids.len() as u64);
        report(conn, shared, &out, &inputs).await?;
        if due.again_in != Some(std::time::Duration::ZERO) {
            return Ok(Some(
                (!backlog.is_empty()).then(|| again.unwrap_or_else(tokio::time::Instant::now)),
            ));
        }
    }
}

/// Held-back messages are looked at no more often than this.
const RELEASE_TICK: std::time::Duration = std::time::Duration::from_millis(20);
/// After the database failed to give back held-back messages.
const RELEASE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Sleeps before a retry, then waits while a circuit breaker is open. False if
/// shutdown came first.
async fn back_off(shared: &Shared, stop: &CancellationToken, wait: std::time::Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => let_through(shared, stop).await,
    }
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

/// Applies the deliveries of `batch` that are not held back (`applied`) until they
/// commit, hands what they queued to the publisher, then acks the whole batch. Returns
/// false if shutdown came first (the batch is then requeued, uncommitted).
#[allow(clippy::too_many_arguments)]
async fn handle_batch(
    conn: &Connection,
    shared: &Shared,
    partition: u32,
    batch: &[Delivery],
    applied: &[Input<'_>],
    turn: tokio::sync::SemaphorePermit<'_>,
    stop: &CancellationToken,
    published: &mpsc::Sender<Handed>,
) -> Result<bool, ConsumerError> {
    let Some(last) = batch.last() else {
        return Ok(true);
    };
    let out = if applied.is_empty() {
        drop(turn);
        None
    } else {
        let Some(out) = commit(shared, partition, applied, turn, stop, published).await? else {
            last.requeue_through().await?;
            return Ok(false);
        };
        Some(out)
    };
    // Acked only after the commit (and after what is held back is stored): a crash
    // before this line redelivers, and the redelivery is a duplicate that changes
    // nothing.
    last.ack_through().await?;
    if let Some(out) = out {
        report(conn, shared, &out, applied).await?;
    }
    Ok(true)
}

/// Applies a batch until it commits (retrying while the database is down), gives back
/// the turn and hands what it queued to the publisher. `None` if shutdown came first.
async fn commit(
    shared: &Shared,
    partition: u32,
    inbound: &[Input<'_>],
    turn: tokio::sync::SemaphorePermit<'_>,
    stop: &CancellationToken,
    published: &mpsc::Sender<Handed>,
) -> Result<Option<pipeline::BatchOutput>, ConsumerError> {
    // A database outage is never the batch's fault: it is retried without end.
    let mut waits = shared.settings.retry_policies.critical_task.waits();
    let mut out = loop {
        let started = Instant::now();
        // The batch's messages are this consumer's to publish for one lease; after
        // that (a crash) the relay takes them.
        let publish_after = pipeline::publish_after(Utc::now(), shared.settings.outbox.lease);
        match pipeline::apply_admitted(shared, partition, inbound, publish_after).await {
            Ok(out) => {
                shared.breakers.succeeded(Guarded::Database);
                let elapsed = started.elapsed();
                let ended = std::time::SystemTime::now();
                shared.spans.export(&out.spans, ended - elapsed, ended);
                let took = elapsed.as_secs_f64();
                shared.metrics.batch_seconds.observe(took);
                for (stage, t) in out.times.each() {
                    shared.metrics.stage(stage, t.as_secs_f64(), inbound.len());
                }
                for _ in inbound {
                    shared.metrics.message_duration.observe(took);
                }
                shared.metrics.batch_size.observe(inbound.len() as f64);
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
                tracing::error!(error = %crate::telemetry::error_chain(&e), size = inbound.len(), retry_in = ?backoff, "batch not committed; will retry");
                let waited = back_off(shared, stop, backoff).await;
                if !waited {
                    return Ok(None);
                }
            }
        }
    };
    crate::failpoint::crash(crate::failpoint::AFTER_COMMIT_BEFORE_ACK);
    // The turn bounds concurrent transactions; what follows needs no connection.
    drop(turn);
    // The next agent's tasks first: handoff latency runs through here.
    shared
        .unattended
        .check(&out.queued, &shared.agents.snapshot(), &shared.metrics);
    let handed = Handed {
        committed_at: Instant::now(),
        handoffs: crate::service::handoffs::of_batch(inbound, &out.results, &out.queued),
        rows: std::mem::take(&mut out.queued),
    };
    if !handed.rows.is_empty() && published.send(handed).await.is_err() {
        return Err(ConsumerError::Publisher);
    }
    Ok(Some(out))
}

/// Logs and counts what a committed batch did, schedules its deadlines and declares
/// the queues of agents it registered.
async fn report(
    conn: &Connection,
    shared: &Shared,
    out: &pipeline::BatchOutput,
    inputs: &[Input<'_>],
) -> Result<(), ConsumerError> {
    for (p, input) in out.results.iter().zip(inputs) {
        if let Input::Delivery(d, a) = input {
            let env = a.envelope().map(|e| &e.header);
            tracing::debug!(
                message_id = a.message_id().unwrap_or(""),
                workflow_id = env.map_or(d.meta.correlation_id.as_deref().unwrap_or(""), |h| h
                    .correlation_id
                    .as_str()),
                message_type = env.map_or(d.meta.kind.as_deref().unwrap_or(""), |h| h
                    .message_type
                    .as_str()),
                trace_id = p.span.map(|s| s.trace_id_hex()).unwrap_or_default(),
                outcome = p.outcome.label(),
                "processed"
            );
        }
        shared
            .metrics
            .messages
            .with_label_values(&[p.outcome.label()])
            .inc();
        let message_type = input
            .envelope()
            .map_or("unknown", |e| e.header.message_type.as_str());
        shared
            .metrics
            .messages_by_type
            .with_label_values(&[message_type, p.outcome.label()])
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
    // Admitted messages by sender role (a bounded label: admission checked the role
    // against the catalogue).
    let roles = inputs.iter().filter_map(|i| match i {
        Input::Delivery(_, a) => a.envelope().map(|e| e.header.source.agent_type.as_str()),
        _ => None,
    });
    for (role, n) in crate::service::runtime::tally(roles) {
        shared
            .metrics
            .messages_sent
            .with_label_values(&[role, "coordinator"])
            .inc_by(n);
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
    Ok(())
}
