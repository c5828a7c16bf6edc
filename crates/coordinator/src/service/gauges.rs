//! Gauges of what the database holds: live workflows by kind and state, open
//! escalations by level, unresolved dead letters by reason, agents by health and the
//! age of the oldest unsent outbox row. One query every `metrics.refresh_interval`, so
//! that Prometheus sees the state without a database query of its own and the hot path
//! pays nothing. Every coordinator reports the same figures (they are the database's):
//! alert on `max` or `sum without (instance)`, not on a sum over instances.

use tokio_util::sync::CancellationToken;

use crate::db;
use crate::service::runtime::Shared;

/// Refreshes the gauges until `stop`.
pub async fn run(shared: &Shared, stop: CancellationToken) {
    let settings = &shared.settings.metrics;
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
                shared.remember_state(std::sync::Arc::new(state));
            }
            // The database being away is what readiness, the breaker and the batch
            // errors report; the gauges keep their last values meanwhile.
            Err(e) => {
                tracing::debug!(error = %crate::telemetry::error_chain(&e), "could not read the state gauges")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(settings.refresh_interval) => {}
        }
    }
}
