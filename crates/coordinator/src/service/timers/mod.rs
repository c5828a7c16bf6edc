//! The timer service: fires every deadline (clock breach, warning, ladder step) at its
//! time. Holds only the next window of deadlines in memory (a min-heap), reloaded
//! every half window, on `NOTIFY coordinator_timers`, and at start; deadlines armed by
//! this process inside the window are pushed in at once (`Signals::schedule`).
//! What firing does is in [`fire`] (many due deadlines per transaction); this module
//! only decides *when*, by its [`Clock`]: a test moves a manual clock through warnings,
//! breaches and ladder steps without waiting, and the SQL guards compare with the
//! same time.

pub mod fire;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::db::{self, store, Pool};
use crate::domain::sla::{add, Deadline, DeadlineKind};
use crate::engine::Processor;
use crate::retry::RetryPolicy;
use crate::service::runtime::{Metrics, Shared, Signals};
use crate::settings::TimerSettings;

/// What one pass of [`Timer::step`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepReport {
    pub fired: usize,
    /// Due, but their workflow was held by another transaction: tried again shortly.
    pub skipped: usize,
    pub failed: usize,
}

/// When a deadline whose workflow was busy is tried again.
const SKIPPED_RETRY: Duration = Duration::from_millis(20);
/// When a deadline whose batch failed is tried again.
const FAILED_RETRY: Duration = Duration::from_millis(500);

/// What the timer uses.
#[derive(Clone, Copy)]
pub struct Parts<'a> {
    pub pool: &'a Pool,
    pub clock: &'a dyn Clock,
    pub settings: &'a TimerSettings,
    /// The ladders and clock durations firing decides with.
    pub processor: &'a Processor,
    pub metrics: &'a Metrics,
    pub signals: &'a Signals,
    /// Waits between failed passes (the `default` retry policy).
    pub retry: &'a RetryPolicy,
    /// Where the spans of the deadlines fired go.
    pub spans: &'a crate::telemetry::spans::Exporter,
}

impl<'a> Parts<'a> {
    /// The running service's.
    pub fn of(shared: &'a Shared) -> Parts<'a> {
        Parts {
            pool: &shared.pool,
            clock: shared.clock.as_ref(),
            settings: &shared.settings.timers,
            processor: &shared.processor,
            metrics: &shared.metrics,
            signals: &shared.signals,
            retry: &shared.settings.retry_policies.default,
            spans: &shared.spans,
        }
    }
}

pub struct Timer<'a> {
    parts: Parts<'a>,
    heap: BinaryHeap<Reverse<Deadline>>,
    /// Deadlines before this are all in the heap (or were fired).
    window_end: DateTime<Utc>,
    /// When the window is read again from the database.
    reload_at: DateTime<Utc>,
    /// When deadlines tried again were first due (for their lateness).
    first_due: std::collections::HashMap<(DeadlineKind, i64), DateTime<Utc>>,
    /// Deadlines created by firing (next ladder steps), for the heap.
    next: Vec<Deadline>,
}

impl<'a> Timer<'a> {
    pub fn new(parts: Parts<'a>) -> Timer<'a> {
        Timer {
            parts,
            heap: BinaryHeap::new(),
            window_end: DateTime::<Utc>::MIN_UTC,
            reload_at: DateTime::<Utc>::MIN_UTC,
            first_due: std::collections::HashMap::new(),
            next: Vec::new(),
        }
    }

    /// Forces a reload at the next step.
    pub fn invalidate(&mut self) {
        self.reload_at = DateTime::<Utc>::MIN_UTC;
    }

    /// Reads the next window of deadlines from the database.
    pub async fn reload(&mut self, now: DateTime<Utc>) -> db::Result<()> {
        let cfg = self.parts.settings;
        let until = add(now, cfg.window);
        let mut conn = self.parts.pool.acquire().await?;
        let (deadlines, cut) = store::deadlines_before(&mut conn, until, cfg.max_in_memory).await?;
        self.window_end = match (cut, deadlines.last()) {
            (true, Some(last)) => last.at,
            _ => until,
        };
        self.heap = deadlines.into_iter().map(Reverse).collect();
        self.reload_at = add(now, cfg.window / 2).min(self.window_end);
        Ok(())
    }

    /// Takes deadlines pushed by this process; those inside the window join the heap,
    /// later ones are found by a later reload.
    fn take_pushed(&mut self) {
        for d in self.parts.signals.take_pushed() {
            if d.at < self.window_end {
                self.heap.push(Reverse(d));
            }
        }
    }

    /// Reloads if due, then fires every deadline that has come by the clock's time, in
    /// batches of `timers.batch_size` (each one transaction), `timers.concurrency` at a
    /// time.
    pub async fn step(&mut self) -> db::Result<StepReport> {
        let now = self.parts.clock.now();
        if now >= self.reload_at {
            self.reload(now).await?;
        }
        self.take_pushed();
        let mut due = Vec::new();
        while let Some(Reverse(d)) = self.heap.peek() {
            if d.at > now {
                break;
            }
            due.push(*d);
            self.heap.pop();
        }
        let mut report = StepReport::default();
        if due.is_empty() {
            self.caught_up(now);
            return Ok(report);
        }
        let parts = self.parts;
        let cfg = parts.settings;
        let chunks: Vec<Vec<Deadline>> = due
            .chunks(cfg.batch_size.max(1))
            .map(<[Deadline]>::to_vec)
            .collect();
        let mut results = futures_util::stream::iter(chunks)
            .map(|chunk| async move {
                let started = std::time::SystemTime::now();
                let fired = fire::fire(parts.pool, parts.processor, &chunk, now).await;
                if let Ok(f) = &fired {
                    parts
                        .spans
                        .export(&f.spans, started, std::time::SystemTime::now());
                }
                (chunk, fired)
            })
            .buffer_unordered(cfg.concurrency);
        let mut again = Vec::new();
        let mut queued = false;
        while let Some((chunk, res)) = results.next().await {
            let fired_at = parts.clock.now();
            match res {
                Ok(f) => {
                    for d in &f.fired {
                        let due_at = self.first_due.remove(&(d.kind, d.id)).unwrap_or(d.at);
                        let lateness = (fired_at - due_at).to_std().unwrap_or_default();
                        parts
                            .metrics
                            .timer_lateness
                            .with_label_values(&[d.kind.as_str()])
                            .observe(lateness.as_secs_f64());
                    }
                    parts.metrics.count_sla(&f.warned, &f.breached);
                    report.fired += f.fired.len();
                    report.skipped += f.skipped.len();
                    queued |= !f.queued.is_empty();
                    // Another transaction held their workflows: shortly, again.
                    again.extend(f.skipped.iter().map(|d| (*d, SKIPPED_RETRY)));
                    self.next.extend(f.next);
                }
                Err(e) => {
                    report.failed += chunk.len();
                    tracing::warn!(error = %e, deadlines = chunk.len(), "could not fire deadlines; will retry");
                    // The guards in the statement keep them exactly once.
                    again.extend(chunk.iter().map(|d| (*d, FAILED_RETRY)));
                }
            }
        }
        drop(results);
        for (d, wait) in again {
            self.first_due.entry((d.kind, d.id)).or_insert(d.at);
            self.heap.push(Reverse(Deadline {
                at: add(parts.clock.now(), wait),
                ..d
            }));
        }
        for d in std::mem::take(&mut self.next) {
            if d.at < self.window_end {
                self.heap.push(Reverse(d));
            }
        }
        if report.fired > 0 {
            tracing::debug!(fired = report.fired, "deadlines fired");
        }
        if report.skipped == 0 && report.failed == 0 {
            self.caught_up(now);
        }
        if queued {
            parts.signals.wake_relay.notify_one();
        }
        Ok(report)
    }

    /// Records that every deadline held that was due by `now` has been fired (tests
    /// and dashboards wait on it rather than on a guess of how long firing takes).
    fn caught_up(&self, now: DateTime<Utc>) {
        let secs = now.timestamp_micros() as f64 / 1e6;
        self.parts.metrics.timer_caught_up.set(secs);
    }

    /// When the next step is due.
    pub fn next_wake(&self) -> DateTime<Utc> {
        let next = self.heap.peek().map_or(self.reload_at, |Reverse(d)| d.at);
        next.min(self.reload_at)
    }
}

/// Runs the timer until `stop`, sleeping until its next deadline by its clock.
pub async fn run(parts: Parts<'_>, stop: CancellationToken) {
    let mut timer = Timer::new(parts);
    let mut waits = parts.retry.waits();
    loop {
        if stop.is_cancelled() {
            return;
        }
        // An operator moved a deadline (NOTIFY coordinator_timers): read the window again.
        if parts
            .signals
            .timers_changed
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            timer.invalidate();
        }
        match timer.step().await {
            Ok(_) => waits.reset(),
            Err(e) => {
                let backoff = waits.next_persistent();
                tracing::warn!(error = %e, retry_in = ?backoff, "timer could not read its deadlines");
                timer.invalidate();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                continue;
            }
        }
        let wait = (timer.next_wake() - parts.clock.now())
            .to_std()
            .unwrap_or_default();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = parts.signals.wake_timer.notified() => {}
        }
    }
}
