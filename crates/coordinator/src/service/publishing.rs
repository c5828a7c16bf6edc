//! What the coordinator does with the broker's answers to its publishing: a batch's
//! own publisher ([`run`]) sends what each commit hands it and collects the confirms
//! in a task of its own; [`Settling`] records what the broker said (confirmed rows go
//! to the [`Settler`], which marks them sent together; refused or returned rows are due
//! again after a backoff, or given up and on-call told) and tells the publishing
//! breaker.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::amqp::publisher::{InFlight, PublishError, Published, Publisher, Returned};
use crate::clock::Clock;
use crate::db::{self, batch, store, Pool};
use crate::engine::escalations;
use crate::engine::rows::{Queued, Writes};
use crate::retry::RetryPolicy;
use crate::service::handoffs::{self, Handoff};
use crate::service::runtime::{Breakers, Confirmed, Guarded, Metrics, Shared, Signals};
use crate::telemetry::repeats::{Repeats, Said};
use protocol::names::message_types::MESSAGE_UNDELIVERABLE;

/// What settling the broker's answers uses.
#[derive(Clone, Copy)]
pub struct Settling<'a> {
    pub pool: &'a Pool,
    pub clock: &'a dyn Clock,
    pub confirmed: &'a Confirmed,
    pub breakers: &'a Breakers,
    pub metrics: &'a Metrics,
    pub signals: &'a Signals,
    /// Waits before a refused or returned row is tried again (the `default` policy).
    pub retry: &'a RetryPolicy,
    /// `outbox.undeliverable_after`.
    pub undeliverable_after: Duration,
    /// Why rows are retried, said at start, end and as a count in between.
    pub repeats: &'a Mutex<Repeats>,
}

impl<'a> Settling<'a> {
    /// The running service's.
    pub fn of(shared: &'a Shared) -> Settling<'a> {
        Settling {
            pool: &shared.pool,
            clock: shared.clock.as_ref(),
            confirmed: &shared.confirmed,
            breakers: &shared.breakers,
            metrics: &shared.metrics,
            signals: &shared.signals,
            retry: &shared.settings.retry_policies.default,
            undeliverable_after: shared.settings.outbox.undeliverable_after,
            repeats: &shared.repeats,
        }
    }

    /// Tells the publishing breaker how a group went: a failed channel, a confirm that
    /// did not come or a nack count against it; a return (no queue bound) does not.
    pub fn record(&self, p: Result<Published, PublishError>) -> Result<Published, PublishError> {
        match &p {
            Ok(p) if p.failed.iter().all(|f| f.returned) => {
                self.breakers.succeeded(Guarded::Publishing)
            }
            _ => self.breakers.failed(Guarded::Publishing),
        }
        p
    }

    /// Records what the broker said: confirmed rows are handed to the [`Settler`]
    /// (marked sent shortly, together with other publishers'), the others are due
    /// again after a wait from the retry policy, by the row's attempts.
    pub async fn settle(&self, p: &Published) -> db::Result<()> {
        self.confirmed.add(&p.sent);
        let now = self.clock.now();
        self.resolved(&p.sent, now);
        if p.failed.is_empty() {
            return Ok(());
        }
        let retries: Vec<(i64, String, Duration)> = p
            .failed
            .iter()
            .map(|f| {
                let wait = self.retry.wait_after(f.attempts.max(0) as u32 + 1);
                (f.id, f.why.clone(), wait)
            })
            .collect();
        {
            let mut repeats = lock(self.repeats);
            for (id, why, wait) in &retries {
                for (key, said) in repeats.occurred(why, *id, now) {
                    say(&key, &said, repeats.every(), Some((*id, *wait)));
                }
            }
        }
        let mut tx = self.pool.begin().await?;
        let given_up = store::mark_failed(&mut tx, &retries, self.undeliverable_after, now).await?;
        // A notice that is itself undeliverable is not noticed again.
        let notices: Vec<_> = given_up
            .iter()
            .filter(|u| u.message_type != MESSAGE_UNDELIVERABLE)
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
        let given_up_ids: Vec<i64> = given_up.iter().map(|u| u.id).collect();
        self.resolved(&given_up_ids, now);
        self.metrics.undeliverable.inc_by(given_up.len() as u64);
        if noticed {
            self.signals.wake_relay.notify_one();
        }
        Ok(())
    }
}

impl Settling<'_> {
    /// Rows that no longer wait (sent, or given up): a condition they were the last
    /// members of is over.
    fn resolved(&self, ids: &[i64], now: DateTime<Utc>) {
        let mut repeats = lock(self.repeats);
        if repeats.is_empty() {
            return;
        }
        for id in ids {
            if let Some((key, said)) = repeats.resolved(*id, now) {
                say(&key, &said, repeats.every(), None);
            }
        }
    }
}

fn lock(repeats: &Mutex<Repeats>) -> std::sync::MutexGuard<'_, Repeats> {
    repeats.lock().unwrap_or_else(|e| e.into_inner())
}

/// Logs what [`Repeats`] says about why outbox rows wait: the start and the count in
/// between as warnings, the end as information.
fn say(why: &str, said: &Said, every: Duration, row: Option<(i64, Duration)>) {
    match said {
        Said::Started => {
            let (outbox_id, retry_in) = row.unwrap_or_default();
            tracing::warn!(
                outbox_id,
                retry_in = ?retry_in,
                "{why}; kept in the outbox and retried with backoff (logged again as a count every {}, and when it is over)",
                humantime::format_duration(every)
            )
        }
        Said::Continuing {
            times,
            members,
            since,
        } => tracing::warn!(
            retries = times,
            messages_waiting = members,
            since = %since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "{why}: still, {times} retries in the last {} for {members} waiting messages",
            humantime::format_duration(every)
        ),
        Said::Ended { times, lasted } => tracing::info!(
            retries = times,
            "{why}: over, no message waits for it any more ({times} failed attempts over {})",
            humantime::format_duration(Duration::from_secs(lasted.as_secs()))
        ),
    }
}

/// Marks confirmed outbox rows sent, many at a time: a reconciler woken every
/// `outbox.settle_interval` (or when many are waiting); [`Settler::step`] can be called
/// directly.
pub struct Settler<'a> {
    pool: &'a Pool,
    clock: &'a dyn Clock,
    confirmed: &'a Confirmed,
    /// `outbox.settle_interval`.
    every: Duration,
}

impl<'a> Settler<'a> {
    pub fn new(shared: &'a Shared) -> Settler<'a> {
        Settler {
            pool: &shared.pool,
            clock: shared.clock.as_ref(),
            confirmed: &shared.confirmed,
            every: shared.settings.outbox.settle_interval,
        }
    }

    /// Marks what is waiting; how many rows. On failure they wait for the next step.
    pub async fn step(&self) -> db::Result<usize> {
        let ids = self.confirmed.take();
        if ids.is_empty() {
            return Ok(0);
        }
        crate::failpoint::crash(crate::failpoint::AFTER_CONFIRM_BEFORE_MARKED_SENT);
        let marked = async {
            let mut conn = self.pool.acquire().await?;
            store::mark_sent(&mut conn, &ids, self.clock.now()).await
        }
        .await;
        match marked {
            Ok(()) => Ok(ids.len()),
            Err(e) => {
                self.confirmed.add(&ids);
                Err(e)
            }
        }
    }

    /// Runs until `stop`, then marks what is left.
    pub async fn run(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.every) => {}
                _ = self.confirmed.wake.notified() => {}
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
    /// Which of `rows` are handoffs to time to their confirm.
    pub handoffs: Vec<Handoff>,
}

/// Publishes what batches hand it, in order, until its sender is dropped (then it has
/// published everything handed to it and settled what the broker confirmed) or the
/// channel fails. Publishing does not wait for confirms: they are awaited by a second
/// task, in order, off the path of the next batch's messages; at most `IN_FLIGHT`
/// groups wait for theirs at once. What cannot be settled stays leased in the outbox
/// and the relay takes it when the lease ends.
pub async fn run(
    publisher: Publisher,
    settling: Settling<'_>,
    mut rx: mpsc::Receiver<Handed>,
) -> Result<(), PublishError> {
    const MOST: usize = 2000;
    const IN_FLIGHT: usize = 64;
    let (confirms_tx, mut confirms_rx) =
        mpsc::channel::<(InFlight, Vec<Handoff>, Instant)>(IN_FLIGHT);
    let metrics = settling.metrics;
    let sending = async {
        while let Some(first) = rx.recv().await {
            let mut rows = first.rows;
            let mut handoffs = first.handoffs;
            // When each group of rows was committed, and how many it has.
            let mut committed = vec![(first.committed_at, rows.len())];
            while rows.len() < MOST {
                match rx.try_recv() {
                    Ok(more) => {
                        committed.push((more.committed_at, more.rows.len()));
                        rows.extend(more.rows);
                        handoffs.extend(more.handoffs);
                    }
                    Err(_) => break,
                }
            }
            let in_flight = publisher.send(&rows).await.inspect_err(|_| {
                settling.breakers.failed(Guarded::Publishing);
            })?;
            let sent_at = Instant::now();
            let oldest = committed.iter().map(|(at, _)| *at).min().unwrap_or(sent_at);
            metrics
                .publish_wait_seconds
                .observe((sent_at - oldest).as_secs_f64());
            for (at, n) in committed {
                metrics.stage("publish", (sent_at - at).as_secs_f64(), n);
            }
            if confirms_tx
                .send((in_flight, handoffs, sent_at))
                .await
                .is_err()
            {
                break;
            }
        }
        drop(confirms_tx);
        Ok::<_, PublishError>(())
    };
    let confirming = async {
        let mut returned = Returned::default();
        while let Some((in_flight, handoffs, sent_at)) = confirms_rx.recv().await {
            let p = in_flight.confirmed(&mut returned, |_| 0).await;
            let p = settling.record(p)?;
            metrics.stage("confirm", sent_at.elapsed().as_secs_f64(), p.sent.len());
            handoffs::observe(metrics, &handoffs, &p.sent, Utc::now());
            metrics.published.inc_by(p.sent.len() as u64);
            metrics.count_sent(&p);
            metrics
                .returned
                .inc_by(p.failed.iter().filter(|f| f.returned).count() as u64);
            if let Err(e) = settling.settle(&p).await {
                tracing::warn!(error = %e, "could not record what the broker said; the relay sends those messages again after their lease");
            }
        }
        Ok::<_, PublishError>(())
    };
    let (sent, confirmed) = tokio::join!(sending, confirming);
    publisher.close().await;
    sent.and(confirmed)
}
