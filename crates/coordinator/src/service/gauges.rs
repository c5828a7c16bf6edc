//! Gauges of what the database holds: live workflows by kind and state, open
//! escalations by level, unresolved dead letters by reason, agents by health and the
//! age of the oldest unsent outbox row. One query every `metrics.refresh_interval`, so
//! that Prometheus sees the state without a database query of its own and the hot path
//! pays nothing. Every coordinator reports the same figures (they are the database's):
//! alert on `max` or `sum without (instance)`, not on a sum over instances.
//!
//! The dashboard's SLA compliance chart is read here too, every
//! `metrics.chart_interval`: a scan of the clocks closed in [`CHART_DAYS`] days that
//! would otherwise be the wait of whichever page asked first.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::db;
use crate::service::runtime::Shared;

/// Days of SLA compliance the dashboard's chart shows.
pub const CHART_DAYS: i64 = 14;

/// Refreshes the gauges (and the chart) until `stop`.
pub async fn run(shared: &Shared, stop: CancellationToken) {
    let settings = &shared.settings.metrics;
    let mut chart_read: Option<Instant> = None;
    loop {
        let connections = &shared.metrics.active_connections;
        connections
            .with_label_values(&["postgresql"])
            .set(i64::from(shared.pool.size()));
        let broker = crate::service::runtime::Status::get(&shared.status.broker_connected);
        connections
            .with_label_values(&["amqp"])
            .set(i64::from(broker));
        match db::read::gauges(&shared.pool, shared.settings.heartbeats.stale_after()).await {
            Ok(state) => {
                shared.metrics.set_state(&state);
                shared.unattended.set_roles(state.roles.clone());
                shared.database_state.set(Arc::new(state));
            }
            // The database being away is what readiness, the breaker and the batch
            // errors report; the gauges keep their last values meanwhile.
            Err(e) => {
                tracing::debug!(error = %crate::telemetry::error_chain(&e), "could not read the state gauges")
            }
        }
        if chart_read.is_none_or(|at| at.elapsed() >= settings.chart_interval) {
            let since = shared.clock.now() - chrono::Duration::days(CHART_DAYS);
            match db::report::sla_by_day(&shared.pool, since).await {
                Ok(days) => {
                    shared.compliance_chart.set(Arc::new(days));
                    chart_read = Some(Instant::now());
                }
                Err(e) => {
                    tracing::debug!(error = %crate::telemetry::error_chain(&e), "could not read the compliance chart")
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(settings.refresh_interval) => {}
        }
    }
}
