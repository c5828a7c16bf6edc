//! What `loadgen bench` says: a line per run as it completes (the breakdown), and
//! `report.md`: where and on what it ran (commit, date, versions, machine), the summary
//! table, each run's breakdown, and the results against the targets the issues set.

use std::path::Path;

use crate::bench::{Options, Row};
use crate::team::ROLES;

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

pub fn format_row(r: &Row) -> String {
    let Some(o) = &r.observed else {
        return format!(
            "[{}] {}: FAILED: {}",
            r.profile,
            r.run,
            r.error.as_deref().unwrap_or("?")
        );
    };
    let (mid, end) = o.in_flight_mid_end();
    let (inbox_max, inbox_end) = o.inbox_max_end();
    let mut s = format!(
        "[{}] {} ({}): {:.1} wf/s, {:.0} agent msg/s ({:.0}% of ceiling); handoff ms p50 {:.1} p99 {:.1} max {:.1}; workflow ms p50 {:.1} p99 {:.1}; \
         coordinator CPU {} s ({} cores), peak RSS {} MiB; loadgen CPU {} s; in flight mid/end {mid}/{end}, inbox max/end {}/{}{}",
        r.profile,
        r.run,
        r.offered,
        o.workflows_per_s(),
        o.messages_per_s(),
        100.0 * o.messages_per_s() / r.ceiling,
        o.handoff.p50,
        o.handoff.p99,
        o.handoff.max,
        o.workflow.p50,
        o.workflow.p99,
        opt(o.coordinator_cpu_s, 1),
        opt(o.coordinator_cpu_s.map(|c| c / o.window_s), 2),
        opt(r.coordinator_peak_rss_mib, 0),
        opt(o.loadgen_cpu_s, 1),
        opt(inbox_max.map(|v| v as f64), 0),
        opt(inbox_end.map(|v| v as f64), 0),
        if r.backlog_grows {
            format!(" — BACKLOG GROWS ({:+.1} wf/s in flight)", o.in_flight_growth())
        } else {
            String::new()
        },
    );
    if let Some(t) = &r.timers {
        s.push_str(&format!(
            "; timers: fired {}/{} (escalations {}, distinct clocks {}), lateness ms p50 {:.1} p99 {:.1} max {:.1}",
            t.fired, t.expected, t.escalations, t.distinct_clocks, t.p50_ms, t.p99_ms, t.max_ms
        ));
    }
    s.push_str(&format!(
        "; CPU s: RabbitMQ {:.1}, PostgreSQL {:.1}, machine {:.1} of {:.1} ({:.0}% busy)",
        o.cpu.broker,
        o.cpu.database,
        o.cpu.machine_busy,
        o.cpu.machine_total,
        100.0 * o.cpu.machine_busy / o.cpu.machine_total.max(1e-9)
    ));
    if let Some(p) = &r.pages {
        let all = p.all();
        s.push_str(&format!(
            "; API and dashboard pages: {} requests, ms p50 {:.1} p99 {:.1} max {:.1}, {} failed",
            all.n,
            all.p50,
            all.p99,
            all.max,
            p.failures.len()
        ));
        if let Some((page, slowest)) = p.slowest() {
            s.push_str(&format!(" (slowest at p99: {page}, {:.1} ms)", slowest.p99));
        }
        if let Some(first) = p.failures.first() {
            s.push_str(&format!(" (first failure: {first})"));
        }
    }
    if let Some(l) = &r.report_latency {
        s.push_str(&format!(
            "; GET /api/v1/report?since=1h: ms p50 {:.0} max {:.0}",
            l.p50, l.max
        ));
    }
    if let Some(i) = &r.inside {
        s.push_str(&format!(
            "; inside: {:.0} batches/s of {:.1} msgs, {:.1} ms and {:.1} statements each, {:.1} ms waiting for a turn, {:.1} ms from commit to publish; PostgreSQL {:.0} commits/s",
            i.batches_per_s, i.messages_per_batch, i.ms_per_batch, i.statements_per_batch, i.ms_waiting, i.ms_to_publish, i.commits_per_s
        ));
        if !i.stages.is_empty() {
            let each: Vec<String> = i
                .stages
                .iter()
                .map(|st| format!("{} {:.2}/{:.1}", st.stage, st.p50, st.p99))
                .collect();
            s.push_str(&format!("; stages ms p50/p99: {}", each.join(", ")));
        }
    }
    if let Some((c, _, pg)) = o.cpu_per_1000() {
        s.push_str(&format!(
            "; CPU s per 1,000 msgs: coordinator {c:.3}, PostgreSQL {pg:.3}"
        ));
    }
    if let Some(e) = &r.echo {
        let v = Versus::of(o, e);
        s.push_str(&format!(
            "; against the echo ({:.1} wf/s, {:.0} msg/s, handoff ms p50 {:.1} p99 {:.1}, echo CPU s per 1,000 msgs {}): throughput {:.2}×, handoff p50 {:+.1} ms, p99 {:.2}×",
            e.workflows_per_s(),
            e.messages_per_s(),
            e.handoff.p50,
            e.handoff.p99,
            opt(e.cpu_per_1000().map(|c| c.0), 3),
            v.throughput,
            v.p50_over,
            v.p99_ratio
        ));
    }
    if o.unfinished > 0 {
        s.push_str(&format!(
            "; {} workflows unfinished after the drain",
            o.unfinished
        ));
    }
    s
}

/// A load driven through the echo, as its line of the bench's output.
pub fn format_echo(profile: &str, run: &str, o: &crate::drive::Observed) -> String {
    format!(
        "[{profile}] {run} through the echo: {:.1} wf/s, {:.0} agent msg/s; handoff ms p50 {:.1} p99 {:.1} max {:.1}; echo CPU {} s, {} s per 1,000 msgs; RabbitMQ CPU {:.1} s; machine {:.0}% busy",
        o.workflows_per_s(),
        o.messages_per_s(),
        o.handoff.p50,
        o.handoff.p99,
        o.handoff.max,
        opt(o.coordinator_cpu_s, 1),
        opt(o.cpu_per_1000().map(|c| c.0), 3),
        o.cpu.broker,
        100.0 * o.cpu.machine_busy / o.cpu.machine_total.max(1e-9)
    )
}

/// The coordinator's figures as ratios to the echo's under the same load.
#[derive(Debug, Clone, Copy)]
struct Versus {
    /// Agent messages per second applied, coordinator / echo.
    throughput: f64,
    /// Handoff p50, coordinator minus echo, ms.
    p50_over: f64,
    /// Handoff p99, coordinator / echo.
    p99_ratio: f64,
}

impl Versus {
    fn of(o: &crate::drive::Observed, echo: &crate::drive::Observed) -> Versus {
        Versus {
            throughput: o.messages_per_s() / echo.messages_per_s().max(f64::MIN_POSITIVE),
            p50_over: o.handoff.p50 - echo.handoff.p50,
            p99_ratio: o.handoff.p99 / echo.handoff.p99.max(f64::MIN_POSITIVE),
        }
    }
}

/// The cost targets against the echo, by run: what is judged and whether it holds.
fn echo_target(run: &str, v: &Versus) -> Option<(&'static str, bool)> {
    match run {
        "closed-200" | "stress" => Some(("throughput ≥ 0.9× the echo", v.throughput >= 0.9)),
        "peak" => Some((
            "handoff p50 ≤ echo + 3 ms, p99 ≤ 3× the echo",
            v.p50_over <= 3.0 && v.p99_ratio <= 3.0,
        )),
        "normal" => Some(("handoff p99 ≤ 2× the echo", v.p99_ratio <= 2.0)),
        _ => None,
    }
}

/// Every run beside the same load through the echo: throughput, handoff latency and CPU
/// per 1,000 messages, against the cost targets (docs/performance.md).
fn against_echo(rows: &[Row]) -> String {
    let mut out = String::from(
        "| profile | run | agent msg/s coordinator / echo | ratio | handoff p50 ms coordinator / echo | over | handoff p99 ms coordinator / echo | ratio | CPU s per 1,000 msgs: coordinator, PostgreSQL / echo | target | |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut any = false;
    for r in rows {
        let (Some(o), Some(e)) = (&r.observed, &r.echo) else {
            continue;
        };
        any = true;
        let v = Versus::of(o, e);
        let cpu = match (o.cpu_per_1000(), e.cpu_per_1000()) {
            (Some((c, _, pg)), Some((ce, _, _))) => format!("{c:.3}, {pg:.3} / {ce:.3}"),
            _ => "-".into(),
        };
        let (target, verdict) = match echo_target(&r.run, &v) {
            Some((t, met)) => (t, Verdict::of(met).as_str()),
            None => ("-", ""),
        };
        out.push_str(&format!(
            "| {} | {} | {:.0} / {:.0} | {:.2} | {:.1} / {:.1} | {:+.1} | {:.1} / {:.1} | {:.2} | {cpu} | {target} | {verdict} |\n",
            r.profile,
            r.run,
            o.messages_per_s(),
            e.messages_per_s(),
            v.throughput,
            o.handoff.p50,
            e.handoff.p50,
            v.p50_over,
            o.handoff.p99,
            e.handoff.p99,
            v.p99_ratio,
        ));
    }
    if any {
        out
    } else {
        "(no run was driven through the echo: `--no-echo`, or it failed)\n".into()
    }
}

/// The summary as a Markdown table.
fn table(opts: &Options, rows: &[Row]) -> String {
    let mut out = format!(
        "Window {:?} after {:?} warm-up; {} cores.\n\n\
         | profile | run | offered | wf/s | agent msg/s | % ceiling | handoff p50/p99/max ms | workflow p50/p99 ms | coord CPU s (cores) | coord peak RSS MiB | loadgen CPU s | RabbitMQ / PostgreSQL CPU s | machine busy | backlog | timers fired, lateness p50/p99/max ms |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        opts.window,
        opts.warmup,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for r in rows {
        let Some(o) = &r.observed else {
            out.push_str(&format!(
                "| {} | {} | {} | failed: {} |\n",
                r.profile,
                r.run,
                r.offered,
                r.error.as_deref().unwrap_or("?")
            ));
            continue;
        };
        let (mid, end) = o.in_flight_mid_end();
        let timers = r.timers.map_or_else(
            || "-".to_string(),
            |t| {
                format!(
                    "{}/{} ({} esc.), {:.1}/{:.1}/{:.1}",
                    t.fired, t.expected, t.escalations, t.p50_ms, t.p99_ms, t.max_ms
                )
            },
        );
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.0} | {:.0}% | {:.1}/{:.1}/{:.1} | {:.0}/{:.0} | {} ({}) | {} | {} | {:.1} / {:.1} | {:.0}% | {} in flight mid/end {mid}/{end} | {timers} |\n",
            r.profile,
            r.run,
            r.offered,
            o.workflows_per_s(),
            o.messages_per_s(),
            100.0 * o.messages_per_s() / r.ceiling,
            o.handoff.p50,
            o.handoff.p99,
            o.handoff.max,
            o.workflow.p50,
            o.workflow.p99,
            opt(o.coordinator_cpu_s, 1),
            opt(o.coordinator_cpu_s.map(|c| c / o.window_s), 2),
            opt(r.coordinator_peak_rss_mib, 0),
            opt(o.loadgen_cpu_s, 1),
            o.cpu.broker,
            o.cpu.database,
            100.0 * o.cpu.machine_busy / o.cpu.machine_total.max(1e-9),
            backlog(r),
        ));
    }
    let mut ceilings: Vec<(String, f64)> = rows
        .iter()
        .map(|r| (r.profile.clone(), r.ceiling))
        .collect();
    ceilings.dedup_by(|a, b| a.0 == b.0);
    for (p, c) in ceilings {
        out.push_str(&format!(
            "\nCeiling ({p}): {c:.0} msg/s through one queue.\n"
        ));
    }
    out
}

/// The backlog column: how in-flight work moved over the window.
fn backlog(r: &Row) -> String {
    let Some(o) = &r.observed else {
        return "-".into();
    };
    if r.closed_loop {
        return "closed loop".into();
    }
    let growth = o.in_flight_growth();
    if r.backlog_grows {
        format!("GROWS {growth:+.1} wf/s")
    } else {
        format!("steady ({growth:+.1} wf/s)")
    }
}

/// Where, when and on what the suite ran.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    pub commit: String,
    pub date: String,
    pub coordinator: String,
    pub loadgen: String,
    pub rabbitmq: String,
    pub postgresql: String,
    pub machine: String,
}

impl Provenance {
    /// Asks git, the coordinator binary, the broker and the database; what cannot be
    /// learned is said as unknown rather than failing the report.
    pub async fn gather(opts: &Options) -> Provenance {
        let run = |cmd: &'static str, args: &'static [&'static str]| async move {
            tokio::process::Command::new(cmd)
                .args(args)
                .output()
                .await
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let commit = match run("git", &["rev-parse", "--short=12", "HEAD"]).await {
            Some(c) => {
                let dirty = run("git", &["status", "--porcelain", "--untracked-files=no"])
                    .await
                    .is_some_and(|s| !s.is_empty());
                if dirty {
                    format!("{c} (with uncommitted changes)")
                } else {
                    c
                }
            }
            None => "unknown (not a git checkout)".into(),
        };
        let coordinator = tokio::process::Command::new(&opts.bin)
            .arg("--version")
            .output()
            .await
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let postgresql = postgres_version().await.unwrap_or_else(|| "unknown".into());
        Provenance {
            commit,
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            coordinator: format!("{coordinator} ({})", opts.bin.display()),
            loadgen: env!("CARGO_PKG_VERSION").to_string(),
            rabbitmq: run("rabbitmqctl", &["version"])
                .await
                .unwrap_or_else(|| "unknown".into()),
            postgresql,
            machine: machine(),
        }
    }

    fn render(&self) -> String {
        format!(
            "- commit: {}\n- date: {}\n- coordinator: {}\n- loadgen: {}\n- RabbitMQ: {}\n- PostgreSQL: {}\n- machine: {}\n",
            self.commit, self.date, self.coordinator, self.loadgen, self.rabbitmq, self.postgresql, self.machine
        )
    }
}

async fn postgres_version() -> Option<String> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(crate::bench::PG_ADMIN)
        .await
        .ok()?;
    let v: Option<String> = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut c)
        .await
        .ok();
    let _ = c.close().await;
    v
}

/// Cores and memory, from the standard library and /proc.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or_else(|| "?".into(), |kb| format!("{:.0}", kb / 1024.0 / 1024.0));
    format!("{cores} cores, {mem_gib} GiB")
}

/// A target one of the issues set, and how a run is judged against it.
struct Target {
    run: &'static str,
    target: &'static str,
    judge: fn(&Row) -> Option<(String, bool)>,
}

/// The targets (docs/performance.md, "Against the targets"). A run that was not part
/// of this suite's selection is left out.
const TARGETS: &[Target] = &[
    Target {
        run: "peak",
        target: "handoff p99 ≤ 20 ms, no growing backlog",
        judge: |r| {
            let o = r.observed.as_ref()?;
            Some((
                format!("p99 {:.1} ms, backlog {}", o.handoff.p99, backlog(r)),
                o.handoff.p99 <= 20.0 && !r.backlog_grows,
            ))
        },
    },
    Target {
        run: "stress",
        target: "≥ 2,500 agent msg/s applied",
        judge: |r| {
            let o = r.observed.as_ref()?;
            Some((
                format!("{:.0} msg/s", o.messages_per_s()),
                o.messages_per_s() >= 2500.0,
            ))
        },
    },
    Target {
        run: "closed-200",
        target: "≥ 300 workflows/s (aim 500)",
        judge: |r| {
            let o = r.observed.as_ref()?;
            Some((
                format!("{:.1} wf/s", o.workflows_per_s()),
                o.workflows_per_s() >= 300.0,
            ))
        },
    },
    Target {
        run: "peak+timers",
        target: "timer lateness p99 ≤ 100 ms, each clock fired once",
        judge: timers_on_time,
    },
    Target {
        run: "big+peak+timers",
        target: "the same with 100,000 workflows and 1,000,000 armed clocks",
        judge: timers_on_time,
    },
    Target {
        run: "big+peak+timers",
        target: "the read API's and the dashboard's pages answer in < 100 ms at p99 with 100,000 workflows, during peak",
        judge: pages_answer,
    },
    Target {
        run: "big+peak+timers",
        target: "coordinator RSS ≤ 100 MB with 100,000 active workflows",
        judge: |r| {
            let rss = r.coordinator_peak_rss_mib?;
            Some((format!("{rss:.0} MiB peak"), rss * 1.048_576 <= 100.0))
        },
    },
];

/// The API's and dashboard's pages: p99 under 100 ms, none failed.
fn pages_answer(r: &Row) -> Option<(String, bool)> {
    let p = r.pages.as_ref()?;
    let all = p.all();
    Some((
        format!(
            "p99 {:.1} ms over {} requests, {} failed",
            all.p99,
            all.n,
            p.failures.len()
        ),
        all.n > 0 && all.p99 < 100.0 && p.failures.is_empty(),
    ))
}

fn timers_on_time(r: &Row) -> Option<(String, bool)> {
    let t = r.timers?;
    Some((
        format!(
            "p99 {:.0} ms, {}/{} fired, {} distinct clocks escalated",
            t.p99_ms, t.fired, t.expected, t.distinct_clocks
        ),
        t.p99_ms <= 100.0 && t.fired == t.expected && t.distinct_clocks == t.expected,
    ))
}

/// Each target against every run of its name (one per profile).
fn against_targets(rows: &[Row]) -> String {
    let mut out = String::from("| profile | run | target | result | |\n|---|---|---|---|---|\n");
    let mut any = false;
    for t in TARGETS {
        for r in rows.iter().filter(|r| r.run == t.run) {
            any = true;
            let (result, verdict) = match (t.judge)(r) {
                Some((result, true)) => (result, "met"),
                Some((result, false)) => (result, "**not met**"),
                None => ("no result".to_string(), "**not met**"),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {result} | {verdict} |\n",
                r.profile, r.run, t.target
            ));
        }
    }
    if any {
        out
    } else {
        "(none of the runs with a target was part of this selection)\n".into()
    }
}

/// The whole report.
pub fn report(opts: &Options, provenance: &Provenance, rows: &[Row], hops: &str) -> String {
    let mut out = String::from("# Benchmark report\n\n");
    out.push_str(&provenance.render());
    let agents = match opts.agents_per_role {
        Some(n) => format!("{} agents in every run ({n} per role, --agents-per-role)", n * ROLES.len()),
        None => "agents per scenario as the source documents name them (normal 10, peak 50, stress 100; the others 50)".into(),
    };
    out.push_str(&format!(
        "- runs: {}; {agents}\n\n",
        opts.profiles.join(" and ")
    ));
    out.push_str("## Summary\n\n");
    out.push_str(&table(opts, rows));
    out.push_str(hops);
    out.push_str("\n## Against the targets\n\n");
    out.push_str(&against_targets(rows));
    if rows
        .iter()
        .any(|r| r.inside.as_ref().is_some_and(|i| !i.stages.is_empty()))
    {
        out.push_str("\n## Where a handoff's time goes\n\n");
        out.push_str(&stage_tables(rows));
    }
    out.push_str("\n## Against the echo\n\n");
    out.push_str(&against_echo(rows));
    out.push_str("\n## What security costs\n\n");
    out.push_str(&security_cost(rows));
    out.push_str("\n## What exporting traces costs\n\n");
    out.push_str(&tracing_cost(rows));
    if rows.iter().any(|r| r.pages.is_some()) {
        out.push_str("\n## Each page under load\n\n");
        out.push_str(&each_page(rows));
    }
    out.push_str("\n## Each run\n\n");
    for r in rows {
        out.push_str(&format!("- {}\n", format_row(r)));
    }
    out
}

/// The one stage off a handoff's path: the next agent does not wait for the broker's
/// confirm of its task.
const OFF_THE_PATH: &str = "confirm";

/// Each run's stages (`coordinator_stage_seconds` over the window), against the
/// handoff latency its agents measured: what is left is the broker's hop out to the
/// next agent and the agent itself.
fn stage_tables(rows: &[Row]) -> String {
    let mut out = String::new();
    for r in rows {
        let (Some(o), Some(i)) = (&r.observed, &r.inside) else {
            continue;
        };
        if i.stages.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "{} {}: handoff p50 {:.1} ms, p99 {:.1} ms (the agents' measure)\n\n| stage | observations | mean ms | p50 ms | p99 ms |\n|---|---|---|---|---|\n",
            r.profile, r.run, o.handoff.p50, o.handoff.p99
        ));
        let (mut mean, mut p50) = (0.0, 0.0);
        for st in &i.stages {
            if st.stage != OFF_THE_PATH {
                mean += st.mean;
                p50 += st.p50;
            }
            out.push_str(&format!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.1} |\n",
                st.stage, st.n, st.mean, st.p50, st.p99
            ));
        }
        out.push_str(&format!(
            "| on the path (broker_in to publish) | | {mean:.1} | {p50:.1} (sum of p50s) | |\n\nLeft of the handoff p50 for the broker's hop out and the agent: {:.1} ms.\n\n",
            o.handoff.p50 - p50
        ));
    }
    out
}

/// Each page's latencies in every run that timed the pages, so that a p99 over the
/// target names the page that holds it.
fn each_page(rows: &[Row]) -> String {
    let mut out = String::from(
        "| profile | run | page | requests | ms p50 | p99 | max |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let Some(p) = &r.pages else { continue };
        for (page, l) in p.each() {
            out.push_str(&format!(
                "| {} | {} | `{page}` | {} | {:.1} | {:.1} | {:.1} |\n",
                r.profile, r.run, l.n, l.p50, l.p99, l.max
            ));
        }
    }
    out
}

/// Each run with production's security on beside the same run with it off
/// (`production-open`), against the security targets: closed-loop throughput at least
/// 0.9× and peak handoff p99 at most 1.2×, with the CPU each costs per 1,000 messages.
fn security_cost(rows: &[Row]) -> String {
    let judged = cost_of(rows, "production", crate::bench::PRODUCTION_OPEN, |c| {
        match c.run {
            "closed-200" => ("throughput ≥ 0.9× off", Verdict::of(c.ratio >= 0.9)),
            // Two runs whose backlogs grow compare how far each fell behind, not what
            // security costs: a latency target needs a load the box keeps up with.
            "peak" if c.off_backlog_grows => ("p99 ≤ 1.2× off", Verdict::Unmeasurable),
            "peak" => ("p99 ≤ 1.2× off", Verdict::of(c.p99_ratio <= 1.2)),
            _ => ("-", Verdict::None),
        }
    });
    judged
        .unwrap_or_else(|| "(run the production and production-open profiles to compare)\n".into())
}

/// Each run exporting its spans over OTLP (`production-traced`) beside the same run
/// without (`production`), against the observability targets: closed-loop throughput at least
/// 0.95× and the coordinator's CPU per 1,000 messages within 5 %.
fn tracing_cost(rows: &[Row]) -> String {
    let judged = cost_of(
        rows,
        crate::bench::PRODUCTION_TRACED,
        "production",
        |c| match (c.run, c.coordinator_cpu_ratio) {
            ("closed-200", Some(cpu)) => (
                "throughput ≥ 0.95× off, coordinator CPU per 1,000 ≤ 1.05× off",
                Verdict::of(c.ratio >= 0.95 && cpu <= 1.05),
            ),
            ("closed-200", None) => (
                "throughput ≥ 0.95× off, coordinator CPU per 1,000 ≤ 1.05× off",
                Verdict::Unmeasurable,
            ),
            _ => ("-", Verdict::None),
        },
    );
    match judged {
        Some(table) => {
            let (exports, bytes) = crate::trace_sink::received();
            format!(
                "{table}\nThe OTLP sink took {exports} exports ({:.1} MiB) over the suite.\n",
                bytes as f64 / 1048576.0
            )
        }
        None => "(run the production and production-traced profiles to compare)\n".into(),
    }
}

/// What a pair of runs (the same run, `on` and `off`) is judged by.
struct Compared<'a> {
    run: &'a str,
    /// Throughput on / off.
    ratio: f64,
    /// Handoff p99 on / off.
    p99_ratio: f64,
    /// The coordinator's CPU per 1,000 messages on / off, where both were measured.
    coordinator_cpu_ratio: Option<f64>,
    off_backlog_grows: bool,
}

/// Each run of profile `on` beside the same run of profile `off`: throughput, p99 and
/// CPU per 1,000 messages of each side, judged by `judge`. `None` if no run has both.
fn cost_of(
    rows: &[Row],
    on: &str,
    off: &str,
    judge: impl Fn(&Compared<'_>) -> (&'static str, Verdict),
) -> Option<String> {
    let mut out = String::from(
        "| run | wf/s on / off | ratio | handoff p99 ms on / off | ratio | CPU s per 1,000 msgs on / off: coordinator, its agents, PostgreSQL | target | |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut any = false;
    for on in rows.iter().filter(|r| r.profile == on) {
        let Some(off) = rows.iter().find(|r| r.profile == off && r.run == on.run) else {
            continue;
        };
        let (Some(a), Some(b)) = (&on.observed, &off.observed) else {
            continue;
        };
        any = true;
        let ratio = a.workflows_per_s() / b.workflows_per_s().max(f64::MIN_POSITIVE);
        let p99_ratio = a.handoff.p99 / b.handoff.p99.max(f64::MIN_POSITIVE);
        let cpu = a.cpu_per_1000().zip(b.cpu_per_1000());
        let (target, met) = judge(&Compared {
            run: &on.run,
            ratio,
            p99_ratio,
            coordinator_cpu_ratio: cpu
                .map(|((c1, _, _), (c0, _, _))| c1 / c0.max(f64::MIN_POSITIVE)),
            off_backlog_grows: off.backlog_grows,
        });
        let cpu = match cpu {
            Some(((c1, l1, p1), (c0, l0, p0))) => {
                format!("{c1:.3} / {c0:.3}, {l1:.3} / {l0:.3}, {p1:.3} / {p0:.3}")
            }
            None => "-".into(),
        };
        out.push_str(&format!(
            "| {} | {:.1} / {:.1} | {ratio:.2} | {:.1} / {:.1} | {p99_ratio:.2} | {cpu} | {target} | {} |\n",
            on.run,
            a.workflows_per_s(),
            b.workflows_per_s(),
            a.handoff.p99,
            b.handoff.p99,
            met.as_str()
        ));
    }
    any.then_some(out)
}

/// A security target's verdict.
enum Verdict {
    Met,
    NotMet,
    /// The run with security off does not keep up either (its backlog grows).
    Unmeasurable,
    None,
}

impl Verdict {
    fn of(met: bool) -> Verdict {
        if met {
            Verdict::Met
        } else {
            Verdict::NotMet
        }
    }

    fn as_str(&self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::NotMet => "**not met**",
            Verdict::Unmeasurable => "not measurable: the box does not keep up with the other side either (--agents-per-role 1 is a load it keeps up with), or its CPU was not read",
            Verdict::None => "",
        }
    }
}

/// Writes the report beside the coordinators' logs.
pub fn write(dir: &Path, report: &str) -> std::io::Result<std::path::PathBuf> {
    let path = dir.join("report.md");
    std::fs::write(&path, report)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drive::{BacklogSample, Observed};
    use crate::stats::{CpuSplit, Percentiles};

    fn row(run: &str, p99: f64, msgs: u64, growth: f64) -> Row {
        let observed = Observed {
            window_s: 10.0,
            started: 0,
            completed: msgs / 11,
            published: msgs,
            handoff: Percentiles {
                p99,
                ..Default::default()
            },
            workflow: Percentiles::default(),
            coordinator_cpu_s: None,
            loadgen_cpu_s: None,
            cpu: CpuSplit::default(),
            backlog: (0..=10)
                .map(|s| BacklogSample {
                    at_s: f64::from(s),
                    in_flight: (20.0 + growth * f64::from(s)) as u64,
                    inbox: None,
                })
                .collect(),
            unfinished: 0,
        };
        let backlog_grows = observed.backlog_grows(90.0);
        Row {
            profile: "production".into(),
            run: run.into(),
            offered: "1000 msg/s".into(),
            observed: Some(observed),
            ceiling: 10_000.0,
            coordinator_peak_rss_mib: Some(30.0),
            timers: None,
            pages: None,
            report_latency: None,
            inside: None,
            backlog_grows,
            closed_loop: false,
            error: None,
            echo: None,
        }
    }

    #[test]
    fn each_target_is_judged_by_its_run_and_a_miss_is_said() {
        let rows = [
            row("peak", 12.0, 10_000, 0.0),
            row("stress", 900.0, 20_000, 30.0),
        ];
        let t = against_targets(&rows);
        assert!(
            t.contains("| production | peak | handoff p99 ≤ 20 ms, no growing backlog | p99 12.0 ms, backlog steady (+0.0 wf/s) | met |"),
            "{t}"
        );
        assert!(
            t.contains(
                "| production | stress | ≥ 2,500 agent msg/s applied | 2000 msg/s | **not met** |"
            ),
            "{t}"
        );
        assert!(!t.contains("closed-200"), "{t}");
        let slow = [row("peak", 12.0, 10_000, 30.0)];
        assert!(against_targets(&slow).contains("GROWS +30.0 wf/s | **not met**"));
    }

    #[test]
    fn security_on_is_set_beside_security_off_and_judged() {
        let mut off = row("closed-200", 10.0, 11_000, 0.0);
        off.profile = crate::bench::PRODUCTION_OPEN.into();
        let mut on = row("closed-200", 12.0, 9_900, 0.0);
        if let Some(o) = on.observed.as_mut() {
            // 2.2 CPU s over 9,900 messages against none measured for the run off.
            o.coordinator_cpu_s = Some(2.2);
            o.loadgen_cpu_s = Some(1.1);
            o.cpu.database = 3.3;
        }
        let mut peak_off = row("peak", 10.0, 11_000, 0.0);
        peak_off.profile = crate::bench::PRODUCTION_OPEN.into();
        let peak_on = row("peak", 16.0, 11_000, 0.0);
        let t = security_cost(&[on, off, peak_on, peak_off]);
        assert!(
            t.contains("| closed-200 | 90.0 / 100.0 | 0.90 | 12.0 / 10.0 | 1.20 | - | throughput ≥ 0.9× off | met |"),
            "{t}"
        );
        assert!(
            t.contains("| peak | 100.0 / 100.0 | 1.00 | 16.0 / 10.0 | 1.60 | - | p99 ≤ 1.2× off | **not met** |"),
            "{t}"
        );
    }

    #[test]
    fn exporting_traces_is_set_beside_production_and_judged_on_throughput_and_cpu() {
        let with_cpu = |mut r: Row, profile: &str, coordinator: f64| {
            r.profile = profile.into();
            if let Some(o) = r.observed.as_mut() {
                o.coordinator_cpu_s = Some(coordinator);
                o.loadgen_cpu_s = Some(1.0);
                o.cpu.database = 1.0;
            }
            r
        };
        let off = with_cpu(row("closed-200", 10.0, 11_000, 0.0), "production", 1.1);
        let cheap = with_cpu(
            row("closed-200", 10.5, 11_000, 0.0),
            crate::bench::PRODUCTION_TRACED,
            1.144,
        );
        let t = tracing_cost(&[cheap, off.clone()]);
        assert!(
            t.contains("| closed-200 | 100.0 / 100.0 | 1.00 | 10.5 / 10.0 | 1.05 | 0.104 / 0.100,"),
            "{t}"
        );
        assert!(
            t.contains("coordinator CPU per 1,000 ≤ 1.05× off | met |"),
            "{t}"
        );
        assert!(t.contains("The OTLP sink took"), "{t}");
        let costly = with_cpu(
            row("closed-200", 10.5, 11_000, 0.0),
            crate::bench::PRODUCTION_TRACED,
            1.21,
        );
        let t = tracing_cost(&[costly, off.clone()]);
        assert!(t.contains("| **not met** |"), "{t}");
        let slower = with_cpu(
            row("closed-200", 10.5, 10_340, 0.0),
            crate::bench::PRODUCTION_TRACED,
            1.0,
        );
        let t = tracing_cost(&[slower, off]);
        assert!(
            t.contains("| 0.94 |") && t.contains("| **not met** |"),
            "{t}"
        );
    }

    #[test]
    fn a_peak_that_overloads_the_box_with_security_off_is_not_judged() {
        let mut off = row("peak", 900.0, 9_000, 30.0);
        off.profile = crate::bench::PRODUCTION_OPEN.into();
        let on = row("peak", 500.0, 9_000, 30.0);
        let t = security_cost(&[on, off]);
        assert!(
            t.contains("| 0.56 | - | p99 ≤ 1.2× off | not measurable"),
            "{t}"
        );
        assert!(!t.contains("| met |"), "{t}");
    }

    #[test]
    fn security_costs_are_given_per_thousand_messages_for_both_sides() {
        let mut off = row("closed-200", 10.0, 10_000, 0.0);
        off.profile = crate::bench::PRODUCTION_OPEN.into();
        let mut on = row("closed-200", 12.0, 8_000, 0.0);
        for (r, (c, l, p)) in [(&mut on, (0.8, 0.72, 1.04)), (&mut off, (0.7, 0.6, 1.2))] {
            if let Some(o) = r.observed.as_mut() {
                o.coordinator_cpu_s = Some(c);
                o.loadgen_cpu_s = Some(l);
                o.cpu.database = p;
            }
        }
        let t = security_cost(&[on, off]);
        assert!(
            t.contains("| 0.100 / 0.070, 0.090 / 0.060, 0.130 / 0.120 |"),
            "{t}"
        );
    }

    #[test]
    fn each_run_is_set_beside_the_echo_and_judged_by_the_cost_targets() {
        let with_echo = |mut r: Row, echo: Row| {
            r.echo = echo.observed;
            r
        };
        let closed = with_echo(
            row("closed-200", 30.0, 9_000, 0.0),
            row("closed-200", 5.0, 10_000, 0.0),
        );
        let mut peak = with_echo(
            row("peak", 12.0, 10_000, 0.0),
            row("peak", 4.0, 10_000, 0.0),
        );
        for (o, p50) in [(peak.observed.as_mut(), 6.0), (peak.echo.as_mut(), 2.5)] {
            if let Some(o) = o {
                o.handoff.p50 = p50;
                o.coordinator_cpu_s = Some(3.0);
                o.loadgen_cpu_s = Some(1.0);
                o.cpu.database = 5.0;
            }
        }
        let normal = with_echo(
            row("normal", 9.0, 1_000, 0.0),
            row("normal", 4.0, 1_000, 0.0),
        );
        let alone = row("stress", 9.0, 1_000, 0.0);
        let t = against_echo(&[closed.clone(), peak.clone(), normal, alone]);
        assert!(
            t.contains("| production | closed-200 | 900 / 1000 | 0.90 | 0.0 / 0.0 | +0.0 | 30.0 / 5.0 | 6.00 | - | throughput ≥ 0.9× the echo | met |"),
            "{t}"
        );
        assert!(
            t.contains("| production | peak | 1000 / 1000 | 1.00 | 6.0 / 2.5 | +3.5 | 12.0 / 4.0 | 3.00 | 0.300, 0.500 / 0.300 | handoff p50 ≤ echo + 3 ms, p99 ≤ 3× the echo | **not met** |"),
            "{t}"
        );
        assert!(
            t.contains("| production | normal |")
                && t.contains("2.25 | - | handoff p99 ≤ 2× the echo | **not met** |"),
            "{t}"
        );
        assert!(
            !t.contains("stress"),
            "a run without its echo is left out: {t}"
        );
        assert!(format_row(&peak).contains("throughput 1.00×, handoff p50 +3.5 ms, p99 3.00×"));
        assert!(against_echo(&[row("peak", 1.0, 1, 0.0)])
            .contains("no run was driven through the echo"));
    }

    #[test]
    fn each_runs_stages_are_set_against_the_handoff_its_agents_measured() {
        let mut r = row("peak", 40.0, 10_000, 0.0);
        if let Some(o) = r.observed.as_mut() {
            o.handoff.p50 = 20.0;
        }
        let stage = |name: &str, p50: f64| crate::stats::StageLatency {
            stage: name.into(),
            n: 100.0,
            mean: p50 * 1.5,
            p50,
            p99: p50 * 4.0,
        };
        r.inside = Some(crate::bench::Inside {
            stages: vec![
                stage("broker_in", 1.0),
                stage("write", 6.0),
                stage("confirm", 3.0),
            ],
            ..Default::default()
        });
        let t = stage_tables(&[r.clone(), row("normal", 1.0, 10, 0.0)]);
        assert!(
            t.contains("production peak: handoff p50 20.0 ms, p99 40.0 ms"),
            "{t}"
        );
        assert!(t.contains("| write | 100 | 9.00 | 6.00 | 24.0 |"), "{t}");
        // The confirm is off the path: 1 + 6 of the 20 ms are the coordinator's.
        assert!(
            t.contains("| on the path (broker_in to publish) | | 10.5 | 7.0 (sum of p50s) | |"),
            "{t}"
        );
        assert!(t.contains("the agent: 13.0 ms."), "{t}");
        assert!(
            !t.contains("normal"),
            "a run without stages is left out: {t}"
        );
        assert!(format_row(&r)
            .contains("stages ms p50/p99: broker_in 1.00/4.0, write 6.00/24.0, confirm 3.00/12.0"));
    }

    #[test]
    fn the_report_says_where_it_ran_and_breaks_each_run_down() {
        let opts = Options {
            bin: "target/release/coordinator".into(),
            config_dir: "config".into(),
            profiles: vec!["production".into()],
            only: Vec::new(),
            warmup: std::time::Duration::from_secs(5),
            window: std::time::Duration::from_secs(15),
            timer_clocks: 1,
            big_workflows: 1,
            big_clocks: 1,
            agents_per_role: None,
            out_dir: "target/bench".into(),
            echo: true,
        };
        let provenance = Provenance {
            commit: "abc123".into(),
            date: "2026-12-02 16:00 UTC".into(),
            ..Default::default()
        };
        let rows = [row("peak", 12.0, 10_000, 0.0)];
        let r = report(&opts, &provenance, &rows, "");
        assert!(
            r.contains("- commit: abc123") && r.contains("- date: 2026-12-02"),
            "{r}"
        );
        assert!(
            r.contains("## Against the targets") && r.contains("## Each run"),
            "{r}"
        );
        assert!(r.contains(&format_row(&rows[0])), "{r}");
    }
}
