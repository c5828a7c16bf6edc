//! The outbox relay: a reconciler that publishes what no batch's own publisher did —
//! messages queued by the timers and the operator CLI, messages the broker returned as
//! unroutable (after their backoff), and messages whose publisher died before the broker
//! confirmed them (after their lease).
//!
//! Woken after commits that queued something and by a poll interval, each
//! [`Relay::step`] leases a bounded batch of due rows in one statement (skipping rows
//! another relay holds), publishes them pipelined with confirms, and settles them
//! (sent, or due again after a backoff) in one statement per outcome. No transaction is
//! open while the broker confirms. A crash between the confirm and the settle re-sends
//! the row after its lease, with the same message id (at least once).

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::amqp::publisher::{PublishError, Publisher};
use crate::amqp::Connection;
use crate::db::{self, store};
use crate::service::publishing::Settling;
use crate::service::runtime::{Shared, REPEATS_SAID_EVERY};
use crate::settings::OutboxSettings;
use crate::telemetry::repeats::{Repeats, Said};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the relay's channel failed")]
    Amqp(#[from] crate::amqp::Error),
    #[error("the relay could not publish")]
    Publish(#[from] PublishError),
    #[error("the relay could not read or update the outbox")]
    Db(#[from] db::Error),
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
    /// The pool, the clock and what settling the broker's answers needs.
    settling: Settling<'a>,
    outbox: &'a OutboxSettings,
    /// `shutdown.flush_timeout`: the longest the last flush takes.
    flush_timeout: Duration,
    publisher: Publisher,
}

impl<'a> Relay<'a> {
    pub async fn new(
        conn: &Connection,
        settling: Settling<'a>,
        outbox: &'a OutboxSettings,
        confirm_timeout: Duration,
        flush_timeout: Duration,
        signer: Option<std::sync::Arc<protocol::signing::Signer>>,
    ) -> Result<Relay<'a>, RelayError> {
        Ok(Relay {
            settling,
            outbox,
            flush_timeout,
            publisher: Publisher::open(conn, confirm_timeout)
                .await?
                .signed_by(signer),
        })
    }

    /// The running service's relay, on `conn`.
    pub async fn of(conn: &Connection, shared: &'a Shared) -> Result<Relay<'a>, RelayError> {
        Relay::new(
            conn,
            Settling::of(shared),
            &shared.settings.outbox,
            shared.settings.amqp.confirm_timeout,
            shared.settings.shutdown.flush_timeout,
            shared.signer.clone(),
        )
        .await
    }

    /// Publishes one batch of due messages.
    pub async fn step(&self) -> Result<StepReport, RelayError> {
        let cfg = self.outbox;
        let s = &self.settling;
        // While a breaker is open nothing is leased: the rows stay due.
        if s.breakers.wait().is_some() {
            return Ok(StepReport::default());
        }
        let rows = {
            let mut conn = s.pool.acquire().await.map_err(db::Error::from)?;
            store::lease_due(&mut conn, cfg.batch_size, cfg.lease, s.clock.now()).await?
        };
        let mut report = StepReport {
            claimed: rows.len(),
            ..Default::default()
        };
        if rows.is_empty() {
            return Ok(report);
        }
        let attempts: HashMap<i64, i32> = rows.iter().map(|(q, a)| (q.id, *a)).collect();
        let queued: Vec<_> = rows.into_iter().map(|(q, _)| q).collect();
        let p = self
            .publisher
            .publish(&queued, |id| attempts.get(&id).copied().unwrap_or(0))
            .await;
        let p = s.record(p)?;
        s.settle(&p).await?;
        report.published = p.sent.len();
        report.returned = p.failed.iter().filter(|f| f.returned).count();
        report.nacked = p.failed.len() - report.returned;
        s.metrics.published.inc_by(p.sent.len() as u64);
        s.metrics.count_sent(&p);
        s.metrics.returned.inc_by(report.returned as u64);
        Ok(report)
    }

    /// Steps until nothing due is left, or until `stop` (checked between steps: under
    /// steady load something is always due, and shutdown must not wait for a lull).
    pub async fn drain(&self, stop: Option<&CancellationToken>) -> Result<(), RelayError> {
        loop {
            if stop.is_some_and(|s| s.is_cancelled()) {
                return Ok(());
            }
            let r = self.step().await?;
            if r.claimed < self.outbox.batch_size as usize || r.published == 0 {
                return Ok(());
            }
        }
    }

    async fn refresh_pending_gauge(&self) {
        if let Ok(mut c) = self.settling.pool.acquire().await {
            if let Ok(n) = store::pending_count(&mut c).await {
                self.settling.metrics.outbox_pending.set(n);
            }
        }
    }

    pub async fn close(self) {
        self.publisher.close().await;
    }
}

/// Runs the relay until `stop` (then flushes what is due and returns) or a broker error.
/// Database errors are logged and retried at the next wake-up.
pub async fn run(relay: &Relay<'_>, stop: CancellationToken) -> Result<(), RelayError> {
    let poll = relay.outbox.poll_interval;
    // The relay wakes after every commit; counting the outbox that often would put a
    // query per batch on the hot path for a gauge, so refresh it once per poll interval.
    let mut gauge_due = std::time::Instant::now();
    // An outage is said when it starts, as a count each minute, and when it ends.
    let mut outage = Repeats::new(REPEATS_SAID_EVERY);
    const OUTAGE: &str = "the relay cannot reach the database";
    loop {
        let now = relay.settling.clock.now();
        match relay.drain(Some(&stop)).await {
            Ok(()) => {
                if let Some((_, Said::Ended { times, lasted })) = outage.resolved(0, now) {
                    tracing::info!(
                        failed_attempts = times,
                        "{OUTAGE}: over, after {}",
                        humantime::format_duration(Duration::from_secs(lasted.as_secs()))
                    );
                }
            }
            Err(RelayError::Db(e)) => {
                let every = humantime::format_duration(REPEATS_SAID_EVERY);
                for (_, said) in outage.occurred(OUTAGE, 0, now) {
                    match said {
                        Said::Started => {
                            tracing::warn!(error = %e, "{OUTAGE}; will retry (logged again as a count every {every}, and when it is over)")
                        }
                        Said::Continuing { times, .. } => {
                            tracing::warn!(error = %e, failed_attempts = times, "{OUTAGE}: still, {times} failed attempts in the last {every}")
                        }
                        Said::Ended { .. } => {}
                    }
                }
            }
            Err(e) => return Err(e),
        }
        if std::time::Instant::now() >= gauge_due {
            relay.refresh_pending_gauge().await;
            gauge_due = std::time::Instant::now() + poll;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = relay.settling.signals.wake_relay.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
    // Flush: whatever was committed before shutdown goes out now, within a bound (a
    // step cut short leaves its rows leased; they go out after their lease).
    crate::failpoint::stall(crate::failpoint::BEFORE_OUTBOX_FLUSH).await;
    let deadline = relay.flush_timeout;
    match tokio::time::timeout(deadline, relay.drain(None)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(
                "outbox flush did not finish within shutdown.flush_timeout ({deadline:?}); the rest is sent after restart"
            );
            Ok(())
        }
    }
}
