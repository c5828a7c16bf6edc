//! `/healthz`, `/readyz`, `/metrics`, `/keys` (docs/protocol.md section 1) and the read
//! API under `/api/v1` ([`api`], docs/api.md).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::service::runtime::{Shared, Status};

pub mod api;
pub mod dashboard;

/// Every route; `shutdown` also ends the open event streams, so that a graceful
/// shutdown does not wait on them.
pub fn router(shared: Arc<Shared>, shutdown: CancellationToken) -> Router {
    Router::new()
        .merge(api::router(shutdown))
        .merge(dashboard::router())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/keys", get(keys))
        .with_state(shared)
}

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(shared, shutdown.clone()))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// The coordinator's public signing keys, the current one first: what agents verify
/// its messages with.
async fn keys(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let keys: Vec<serde_json::Value> = shared
        .settings
        .published_keys()
        .iter()
        .map(|(key_id, key)| {
            serde_json::json!({
                "key_id": key_id,
                "algorithm": "ed25519",
                "public_key": protocol::signing::encode_public(key),
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "keys": keys }))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 once migrations are applied, the topology is declared and the inbox is consumed,
/// and only while the broker connection is up, the database answers and no circuit
/// breaker is open (each breaker's state is in the body under `circuit_breakers`).
async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let s = &shared.status;
    let database = crate::db::ping(&shared.pool, Duration::from_secs(1)).await;
    let breakers: serde_json::Map<String, serde_json::Value> = shared
        .breakers
        .states()
        .into_iter()
        .map(|(g, state)| (g.as_str().to_string(), json!(state.as_str())))
        .collect();
    let none_open = breakers.values().all(|v| v != "open");
    let checks = json!({
        "no_circuit_breaker_open": none_open,
        "migrated": Status::get(&s.migrated),
        "broker_connected": Status::get(&s.broker_connected),
        "topology_declared": Status::get(&s.topology_declared),
        "consuming": Status::get(&s.consuming),
        "database_reachable": database,
    });
    let ready = checks
        .as_object()
        .is_some_and(|o| o.values().all(|v| v.as_bool() == Some(true)));
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({"ready": ready, "checks": checks, "circuit_breakers": breakers})),
    )
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}
