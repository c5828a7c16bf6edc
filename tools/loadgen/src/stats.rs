//! Measurements: latency samples and their percentiles, and a process's CPU time and
//! peak memory read from `/proc`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Nanoseconds since the first call in this process: one monotonic clock that every
/// task of the load generator shares, so a publish time carried in a message can be
/// compared with the time another task received the message it caused.
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Latency samples in microseconds.
#[derive(Debug, Default)]
pub struct Samples(Mutex<Vec<u32>>);

impl Samples {
    pub fn record_since(&self, sent_ns: u64) {
        let us = now_ns().saturating_sub(sent_ns) / 1000;
        self.lock().push(u32::try_from(us).unwrap_or(u32::MAX));
    }

    pub fn take(&self) -> Percentiles {
        Percentiles::of(std::mem::take(&mut *self.lock()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Milliseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut us: Vec<u32>) -> Percentiles {
        if us.is_empty() {
            return Percentiles::default();
        }
        us.sort_unstable();
        let at = |q: f64| {
            let i = ((us.len() as f64 - 1.0) * q).round() as usize;
            f64::from(us[i.min(us.len() - 1)]) / 1000.0
        };
        Percentiles {
            n: us.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: f64::from(*us.last().unwrap_or(&0)) / 1000.0,
        }
    }
}

/// What the bench agents counted.
#[derive(Debug, Default)]
pub struct Counters {
    /// Workflows started (requirements_ready confirmed by the broker).
    pub started: AtomicU64,
    /// Workflows whose feature_deployed reached product.
    pub completed: AtomicU64,
    /// Agent messages published and confirmed.
    pub published: AtomicU64,
    /// Tasks received (requirements_handoff, feature_handoff, release_handoff, feature_deployed).
    pub tasks: AtomicU64,
    /// sla_warning / sla_breached notices on task queues.
    pub notices: AtomicU64,
    /// Messages on events queues.
    pub events: AtomicU64,
    /// message_rejected notices: should stay 0.
    pub rejected: AtomicU64,
    /// Messages on oncall.escalations.
    pub escalations: AtomicU64,
    /// Publishes the broker did not confirm.
    pub publish_failures: AtomicU64,
    /// Tasks received again (the coordinator sends at least once): acked, not redone.
    pub redelivered: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters and samples shared by every task of a run.
#[derive(Debug, Default)]
pub struct Recorder {
    pub counters: Counters,
    /// Agent publishes the causing message → the next agent receives its task.
    pub handoff: Samples,
    /// requirements_ready published → feature_deployed received by product.
    pub workflow: Samples,
    /// Samples are kept only while this is set (after warm-up, inside the window).
    pub recording: AtomicBool,
    /// Workflows whose requirements_ready the broker confirmed.
    pub started_ids: Mutex<Vec<String>>,
}

impl Recorder {
    pub fn recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its ')' are fixed.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ')'.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // /proc reports clock ticks in USER_HZ, which Linux fixes at 100.
    Some((utime + stime) / 100.0)
}

/// CPU seconds used so far by every process whose command name is `comm` (e.g.
/// `beam.smp` for RabbitMQ, `postgres` for PostgreSQL's backends and workers).
pub fn cpu_seconds_of(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .filter_map(cpu_seconds)
        .sum()
}

/// The machine's busy and total CPU seconds so far (all cores, from /proc/stat).
pub fn machine_cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some(((total - idle) / 100.0, total / 100.0))
}

/// CPU seconds of the pieces on this machine.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct CpuSplit {
    pub broker: f64,
    pub database: f64,
    pub machine_busy: f64,
    pub machine_total: f64,
}

impl CpuSplit {
    pub fn now() -> CpuSplit {
        let (busy, total) = machine_cpu_seconds().unwrap_or_default();
        CpuSplit {
            broker: cpu_seconds_of("beam.smp"),
            database: cpu_seconds_of("postgres"),
            machine_busy: busy,
            machine_total: total,
        }
    }

    pub fn since(&self, before: &CpuSplit) -> CpuSplit {
        CpuSplit {
            broker: self.broker - before.broker,
            database: self.database - before.database,
            machine_busy: self.machine_busy - before.machine_busy,
            machine_total: self.machine_total - before.machine_total,
        }
    }
}

/// Peak resident memory of a process in MiB (VmHWM).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_kib(pid, "VmHWM:").map(|k| k / 1024.0)
}

/// Current resident memory of a process in MiB (VmRSS).
pub fn rss_mib(pid: u32) -> Option<f64> {
    status_kib(pid, "VmRSS:").map(|k| k / 1024.0)
}

fn status_kib(pid: u32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets a process's peak resident memory to its current value.
pub fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_set() {
        let p = Percentiles::of((1..=1000).map(|i| i * 1000).collect());
        assert_eq!(p.n, 1000);
        assert_eq!(p.p50, 501.0);
        assert_eq!(p.p99, 990.0);
        assert_eq!(p.max, 1000.0);
        assert_eq!(Percentiles::of(Vec::new()), Percentiles::default());
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(peak_rss_mib(pid).is_some_and(|m| m > 0.0));
    }
}

/// The coordinator's `coordinator_stage_seconds` histograms as its `/metrics` shows
/// them: per stage, the cumulative bucket counts (by upper bound), the sum and the count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageHistograms(std::collections::BTreeMap<String, Histogram>);

#[derive(Debug, Clone, Default, PartialEq)]
struct Histogram {
    /// (upper bound in seconds, observations at or below it), in the order shown.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

/// One stage over a window, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct StageLatency {
    pub stage: String,
    pub n: f64,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
}

impl StageHistograms {
    const NAME: &'static str = "coordinator_stage_seconds";

    /// Reads the histograms from a Prometheus text exposition.
    pub fn parse(text: &str) -> StageHistograms {
        let mut out = StageHistograms::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(Self::NAME) else {
                continue;
            };
            let Some((series, value)) = rest.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let label = |name: &str| {
                let start = series.find(&format!("{name}=\""))? + name.len() + 2;
                let len = series[start..].find('"')?;
                Some(series[start..start + len].to_string())
            };
            let Some(stage) = label("stage") else {
                continue;
            };
            let h = out.0.entry(stage).or_default();
            match series.split('{').next() {
                Some("_bucket") => {
                    let le = label("le").map_or(f64::NAN, |le| {
                        if le == "+Inf" {
                            f64::INFINITY
                        } else {
                            le.parse().unwrap_or(f64::NAN)
                        }
                    });
                    h.buckets.push((le, value));
                }
                Some("_sum") => h.sum = value,
                Some("_count") => h.count = value,
                _ => {}
            }
        }
        out
    }

    /// Each stage's observations since `before`, in `order` (stages without any left
    /// out).
    pub fn since(&self, before: &StageHistograms, order: &[&str]) -> Vec<StageLatency> {
        let mut out = Vec::new();
        for stage in order {
            let Some(end) = self.0.get(*stage) else {
                continue;
            };
            let start = before.0.get(*stage).cloned().unwrap_or_default();
            let n = end.count - start.count;
            if n <= 0.0 {
                continue;
            }
            let buckets: Vec<(f64, f64)> = end
                .buckets
                .iter()
                .map(|(le, c)| {
                    let was = start
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |(_, c)| *c);
                    (*le, c - was)
                })
                .collect();
            out.push(StageLatency {
                stage: stage.to_string(),
                n,
                mean: (end.sum - start.sum) / n * 1000.0,
                p50: quantile(&buckets, 0.5) * 1000.0,
                p99: quantile(&buckets, 0.99) * 1000.0,
            });
        }
        out
    }
}

/// A quantile of cumulative buckets, interpolated linearly within its bucket as
/// Prometheus's `histogram_quantile` does (the highest finite bound when it falls in
/// the last, unbounded one).
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return f64::NAN;
    };
    let rank = q * total;
    let mut below = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return below.0;
            }
            let width = count - below.1;
            let within = if width > 0.0 {
                (rank - below.1) / width
            } else {
                0.0
            };
            return below.0 + (le - below.0) * within;
        }
        below = (le, count);
    }
    below.0
}

#[cfg(test)]
mod stage_tests {
    use super::*;

    const BEFORE: &str = r#"# TYPE coordinator_stage_seconds histogram
coordinator_stage_seconds_bucket{stage="write",le="0.001"} 10
coordinator_stage_seconds_bucket{stage="write",le="0.002"} 10
coordinator_stage_seconds_bucket{stage="write",le="0.004"} 10
coordinator_stage_seconds_bucket{stage="write",le="+Inf"} 10
coordinator_stage_seconds_sum{stage="write"} 0.005
coordinator_stage_seconds_count{stage="write"} 10
coordinator_batch_seconds_count 3
"#;

    const AFTER: &str = r#"coordinator_stage_seconds_bucket{stage="write",le="0.001"} 10
coordinator_stage_seconds_bucket{stage="write",le="0.002"} 60
coordinator_stage_seconds_bucket{stage="write",le="0.004"} 109
coordinator_stage_seconds_bucket{stage="write",le="+Inf"} 110
coordinator_stage_seconds_sum{stage="write"} 0.255
coordinator_stage_seconds_count{stage="write"} 110
coordinator_stage_seconds_bucket{stage="commit",le="0.001"} 0
coordinator_stage_seconds_bucket{stage="commit",le="+Inf"} 0
coordinator_stage_seconds_sum{stage="commit"} 0
coordinator_stage_seconds_count{stage="commit"} 0
"#;

    #[test]
    fn a_stage_over_a_window_is_the_difference_of_its_buckets_interpolated() {
        let s = StageHistograms::parse(AFTER).since(
            &StageHistograms::parse(BEFORE),
            &["broker_in", "write", "commit"],
        );
        assert_eq!(
            s.len(),
            1,
            "stages without observations are left out: {s:?}"
        );
        let w = &s[0];
        assert_eq!((w.stage.as_str(), w.n), ("write", 100.0));
        assert!((w.mean - 2.5).abs() < 1e-9, "{w:?}");
        // 50 of the window's 100 in (1, 2] ms: the 50th is at 2 ms; the 99th is the
        // 49th of 49 in (2, 4] ms: 4 ms.
        assert!((w.p50 - 2.0).abs() < 1e-9, "{w:?}");
        assert!((w.p99 - 4.0).abs() < 1e-9, "{w:?}");
    }

    #[test]
    fn a_quantile_in_the_unbounded_bucket_is_the_highest_bound() {
        let b = [(0.001, 1.0), (0.002, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(&b, 0.99), 0.002);
        assert!((quantile(&b, 0.05) - 0.0005).abs() < 1e-12);
    }
}
