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
    /// A backlog grows if what is in flight at the end of the window is well above what
    /// was in flight at its middle (beyond one second of offered work).
    pub fn backlog_grows(&self, offered_wf_per_s: f64) -> bool {
        let (mid, end) = self.in_flight_mid_end();
        end as f64 > mid as f64 * 1.5 + offered_wf_per_s.max(10.0)
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
