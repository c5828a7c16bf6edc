//! One run: start workflows at an offered rate (open loop) or keep a number in flight
//! (closed loop), warm up, measure over a window, then let what is in flight finish.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::stats::{cpu_seconds, Counters, CpuSplit, Percentiles, Recorder};
use super::team::{Team, MESSAGES_PER_WORKFLOW};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Agent messages per second offered, whatever the coordinator manages.
    Open { msg_per_s: f64 },
    /// Workflows kept in flight: each completion starts the next.
    Closed { in_flight: usize },
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub load: Load,
    pub warmup: Duration,
    pub window: Duration,
    /// How long to wait after the window for the workflows in flight to finish.
    pub drain: Duration,
    /// Prefix of the workflow ids of this run.
    pub prefix: String,
}

/// One sample of the backlog, taken every second.
#[derive(Debug, Clone, Copy)]
pub struct BacklogSample {
    pub at_s: f64,
    pub in_flight: u64,
    /// Messages waiting in the coordinator's inbox queue(s), if known.
    pub inbox: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Observed {
    pub window_s: f64,
    pub started: u64,
    pub completed: u64,
    pub published: u64,
    pub handoff: Percentiles,
    pub workflow: Percentiles,
    pub coordinator_cpu_s: Option<f64>,
    pub loadgen_cpu_s: Option<f64>,
    /// RabbitMQ's, PostgreSQL's and the whole machine's CPU over the window.
    pub cpu: CpuSplit,
    pub backlog: Vec<BacklogSample>,
    /// Workflows started but not completed when the drain ended.
    pub unfinished: u64,
}

impl Observed {
    pub fn workflows_per_s(&self) -> f64 {
        self.completed as f64 / self.window_s
    }
    pub fn messages_per_s(&self) -> f64 {
        self.published as f64 / self.window_s
    }
    /// CPU seconds per 1,000 agent messages of the window: the coordinator's, its load
    /// generator's and PostgreSQL's. They vary far less from run to run than a p99.
    pub fn cpu_per_1000(&self) -> Option<(f64, f64, f64)> {
        let thousands = self.published as f64 / 1000.0;
        if thousands <= 0.0 {
            return None;
        }
        Some((
            self.coordinator_cpu_s? / thousands,
            self.loadgen_cpu_s? / thousands,
            self.cpu.database / thousands,
        ))
    }
    /// In flight at the middle and at the end of the window.
    pub fn in_flight_mid_end(&self) -> (u64, u64) {
        let mid = self
            .backlog
            .get(self.backlog.len() / 2)
            .map_or(0, |s| s.in_flight);
        let end = self.backlog.last().map_or(0, |s| s.in_flight);
        (mid, end)
    }
    pub fn inbox_max_end(&self) -> (Option<u64>, Option<u64>) {
        let max = self.backlog.iter().filter_map(|s| s.inbox).max();
        let end = self.backlog.last().and_then(|s| s.inbox);
        (max, end)
    }
    /// How fast the work in flight grew over the window, in workflows per second: the
    /// least-squares slope of the per-second samples (two points, the middle and the
    /// end, are at the mercy of one batch more or less in flight).
    pub fn in_flight_growth(&self) -> f64 {
        slope(
            &self
                .backlog
                .iter()
                .map(|s| (s.at_s, s.in_flight as f64))
                .collect::<Vec<_>>(),
        )
    }

    /// An open-loop run's backlog grows if what is in flight grew faster than 1
    /// workflow/s or 2 % of the offered workflows/s over the window.
    pub fn backlog_grows(&self, offered_wf_per_s: f64) -> bool {
        self.in_flight_growth() > (offered_wf_per_s * 0.02).max(1.0)
    }
}

/// The least-squares slope of `(x, y)` points; 0 for fewer than two distinct x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

/// Runs `spec` against the team. `done` receives a message per completed workflow;
/// `inbox_depth` is sampled every second.
pub async fn run<F, Fut>(
    team: &Team,
    rec: &Arc<Recorder>,
    spec: &Spec,
    mut done: mpsc::UnboundedReceiver<()>,
    coordinator_pid: Option<u32>,
    mut inbox_depth: F,
) -> Observed
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<u64>>,
{
    let c = &rec.counters;
    let t0 = Instant::now();
    let window_start = t0 + spec.warmup;
    let window_end = window_start + spec.window;
    let mut n: u64 = 0;
    let start = |team: &Team, n: &mut u64| {
        *n += 1;
        team.start_workflow(format!("{}-{n}", spec.prefix));
    };
    if let Load::Closed { in_flight } = spec.load {
        for _ in 0..in_flight {
            start(team, &mut n);
        }
    }
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sample_at = window_start;
    let mut in_window = false;
    let mut base = (0, 0, None, None);
    let mut split = CpuSplit::default();
    let mut backlog = Vec::new();
    loop {
        let now = Instant::now();
        if !in_window && now >= window_start {
            in_window = true;
            rec.recording
                .store(true, std::sync::atomic::Ordering::Relaxed);
            base = (
                Counters::get(&c.completed),
                Counters::get(&c.published),
                coordinator_pid.and_then(cpu_seconds),
                cpu_seconds(std::process::id()),
            );
            split = CpuSplit::now();
        }
        if now >= window_end {
            break;
        }
        if now >= sample_at {
            let in_flight = Counters::get(&c.started).saturating_sub(Counters::get(&c.completed));
            backlog.push(BacklogSample {
                at_s: (now - window_start).as_secs_f64(),
                in_flight,
                inbox: inbox_depth().await,
            });
            sample_at += Duration::from_secs(1);
        }
        tokio::select! {
            _ = tick.tick() => {
                if let Load::Open { msg_per_s } = spec.load {
                    let wf_per_s = msg_per_s / MESSAGES_PER_WORKFLOW as f64;
                    let due = ((Instant::now() - t0).as_secs_f64() * wf_per_s) as u64;
                    while n < due {
                        start(team, &mut n);
                    }
                }
            }
            Some(()) = done.recv() => {
                if let Load::Closed { .. } = spec.load {
                    start(team, &mut n);
                }
            }
        }
    }
    rec.recording
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let cpu = CpuSplit::now().since(&split);
    let completed = Counters::get(&c.completed) - base.0;
    let published = Counters::get(&c.published) - base.1;
    let coordinator_cpu_s = match (base.2, coordinator_pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let loadgen_cpu_s = match (base.3, cpu_seconds(std::process::id())) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let sample = BacklogSample {
        at_s: spec.window.as_secs_f64(),
        in_flight: Counters::get(&c.started).saturating_sub(Counters::get(&c.completed)),
        inbox: inbox_depth().await,
    };
    backlog.push(sample);

    // Let what is in flight finish (nothing new starts), so the next run starts clean.
    let drain_end = Instant::now() + spec.drain;
    while Instant::now() < drain_end && Counters::get(&c.completed) < n {
        tokio::select! {
            _ = done.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let unfinished = n.saturating_sub(Counters::get(&c.completed));
    Observed {
        window_s: spec.window.as_secs_f64(),
        started: n,
        completed,
        published,
        handoff: rec.handoff.take(),
        workflow: rec.workflow.take(),
        coordinator_cpu_s,
        loadgen_cpu_s,
        cpu,
        backlog,
        unfinished,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(in_flight: impl Fn(f64) -> f64) -> Observed {
        Observed {
            window_s: 60.0,
            started: 0,
            completed: 0,
            published: 0,
            handoff: Percentiles::default(),
            workflow: Percentiles::default(),
            coordinator_cpu_s: None,
            loadgen_cpu_s: None,
            cpu: CpuSplit::default(),
            backlog: (0..=60)
                .map(|s| BacklogSample {
                    at_s: f64::from(s),
                    in_flight: in_flight(f64::from(s)).max(0.0) as u64,
                    inbox: None,
                })
                .collect(),
            unfinished: 0,
        }
    }

    #[test]
    fn in_flight_work_that_climbs_through_the_window_is_a_growing_backlog() {
        // The stress run the newcomer saw labelled "steady": 1,643 → 2,210 in flight.
        let o = observed(|s| 1076.0 + 18.9 * s);
        assert!(
            (o.in_flight_growth() - 18.9).abs() < 0.1,
            "{}",
            o.in_flight_growth()
        );
        assert!(o.backlog_grows(5000.0 / 11.0));
    }

    #[test]
    fn in_flight_work_that_wobbles_around_a_level_is_steady() {
        // Peak: a few dozen in flight, up and down by a batch.
        let o = observed(|s| 40.0 + if (s as u64) % 2 == 0 { 25.0 } else { -25.0 });
        assert!(o.in_flight_growth().abs() < 1.0, "{}", o.in_flight_growth());
        assert!(!o.backlog_grows(1000.0 / 11.0));
    }
}
