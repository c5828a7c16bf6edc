//! What the service did, once a second at info level (a line per message would be too
//! many at thousands a second; those lines are at debug). Read from the metrics, so it
//! costs the hot path nothing.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::service::runtime::Metrics;

/// Counters as they stood at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Counts {
    pub accepted: u64,
    pub observed: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub batches: u64,
    pub published: u64,
    pub returned: u64,
    pub deadlines: u64,
}

impl Counts {
    pub fn read(m: &Metrics) -> Counts {
        let outcome = |o: &str| m.messages.with_label_values(&[o]).get();
        let deadlines = ["breach", "warning", "ladder"]
            .iter()
            .map(|k| m.timer_lateness.with_label_values(&[k]).get_sample_count())
            .sum();
        Counts {
            accepted: outcome("accepted"),
            observed: outcome("observed"),
            duplicate: outcome("duplicate"),
            rejected: outcome("rejected"),
            batches: m.batch_size.get_sample_count(),
            published: m.published.get(),
            returned: m.returned.get(),
            deadlines,
        }
    }

    fn minus(&self, before: &Counts) -> Counts {
        Counts {
            accepted: self.accepted - before.accepted,
            observed: self.observed - before.observed,
            duplicate: self.duplicate - before.duplicate,
            rejected: self.rejected - before.rejected,
            batches: self.batches - before.batches,
            published: self.published - before.published,
            returned: self.returned - before.returned,
            deadlines: self.deadlines - before.deadlines,
        }
    }

    fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// Logs, every `every`, what happened since the last line (nothing when idle).
pub async fn run(metrics: &Metrics, every: Duration, stop: CancellationToken) {
    let mut last = Counts::read(metrics);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = Counts::read(metrics);
        let d = now.minus(&last);
        last = now;
        if d.is_zero() {
            continue;
        }
        let secs = every.as_secs_f64();
        let rate = |n: u64| (n as f64 / secs).round() as u64;
        tracing::info!(
            messages_per_s = rate(d.accepted + d.observed + d.duplicate + d.rejected),
            accepted = d.accepted,
            observed = d.observed,
            duplicate = d.duplicate,
            rejected = d.rejected,
            batches = d.batches,
            published = d.published,
            returned = d.returned,
            deadlines_fired = d.deadlines,
            "activity"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_the_metrics() {
        let m = Metrics::new();
        m.messages.with_label_values(&["accepted"]).inc_by(3);
        m.messages.with_label_values(&["rejected"]).inc();
        m.published.inc_by(2);
        let c = Counts::read(&m);
        assert_eq!((c.accepted, c.rejected, c.published), (3, 1, 2));
        assert!(c.minus(&c).is_zero());
    }
}
