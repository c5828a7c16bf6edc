//! The load generator behind `make bench` (binary `loadgen`). It plays the five roles
//! of the happy path exactly as agents do — publisher confirms, manual acks, as many
//! agents as each scenario names — and measures what the coordinator does.
//!
//! - [`team`]: the bench agents and what each publishes on a task.
//! - [`drive`]: one run, open loop (offered rate) or closed loop (workflows in flight).
//! - [`ceiling`]: the broker's own ceiling on this machine, without the coordinator.
//! - [`echo`]: the coordinator without its database, driven beside it in every run:
//!   the machine's ceiling for the whole workload.
//! - [`stats`]: latency percentiles, and CPU and memory of a process from `/proc`.
//! - [`bench`]: the suite: a fresh database and vhost per run, the release coordinator
//!   as a child process.
//! - [`report`]: what the suite says: a breakdown per run, and `report.md` with the
//!   commit, versions and machine, the summary and the results against the targets.
//! - [`soak`]: a steady load for many minutes with one fault a minute (`make soak`).
//! - [`faults`]: services of a run's own, the faults injected on them, coordinators as
//!   child processes, and what a failing run reports.
//! - [`pages`]: the read API's and the dashboard's pages timed during a run.
//! - [`burn`]: a steady CPU load that is not the coordinator's, to compare a run with.
//! - [`trace_sink`]: the OTLP endpoint the `production-traced` runs export spans to.

pub mod bench;
pub mod burn;
pub mod ceiling;
pub mod drive;
pub mod echo;
pub mod faults;
pub mod pages;
pub mod report;
pub mod soak;
pub mod stats;
pub mod team;
pub mod trace_sink;

/// The size of a typical agent message of the bench, for the ceiling measurement.
pub fn envelope_bytes() -> usize {
    let data = serde_json::json!({"t": stats::now_ns(), "t0": stats::now_ns()});
    let e = protocol::envelope::Envelope::from_agent(
        &team::agent_id(protocol::names::roles::QA, 0),
        protocol::names::roles::QA,
        "testing_started",
        "peak-1a2b3c-12345",
        data,
        chrono::Utc::now(),
    );
    serde_json::to_vec(&e).map_or(512, |b| b.len())
}
