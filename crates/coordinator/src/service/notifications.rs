//! PostgreSQL notifications from other processes: an operator moved deadlines
//! (`coordinator_timers`: the timer reads its window again) or an agent was registered
//! (`coordinator_agents`: the agent cache reloads before the next batch). A reconciler:
//! it reconnects with backoff, and after every (re)connect treats both as changed,
//! since notifications sent while it was away are lost.

use tokio_util::sync::CancellationToken;

use crate::db::store::{AGENTS_CHANNEL, TIMERS_CHANNEL};
use crate::db::{self, Listener};
use crate::service::runtime::Shared;

/// Acts on one notification's channel.
pub fn dispatch(shared: &Shared, channel: &str) {
    match channel {
        TIMERS_CHANNEL => shared.signals.timers_changed(),
        AGENTS_CHANNEL => shared.agents.invalidate(),
        _ => {}
    }
}

/// Listens until `stop`.
pub async fn run(shared: &Shared, stop: CancellationToken) {
    let policy = shared.settings.retry_policies.heartbeat;
    let mut waits = policy.waits();
    let mut backoff;
    loop {
        let started = std::time::Instant::now();
        tokio::select! {
            _ = stop.cancelled() => return,
            Err(e) = listen(shared) => {
                // A connection that listened for a while failed anew: start the series again.
                if started.elapsed() > policy.max_delay {
                    waits.reset();
                }
                backoff = waits.next_persistent();
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot LISTEN for operator changes and registrations; the timer and the agent cache fall back to their periodic reloads");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}

/// Listens and dispatches until the connection fails.
async fn listen(shared: &Shared) -> db::Result<std::convert::Infallible> {
    let mut l = Listener::listen(&shared.pool, &[TIMERS_CHANNEL, AGENTS_CHANNEL]).await?;
    dispatch(shared, TIMERS_CHANNEL);
    dispatch(shared, AGENTS_CHANNEL);
    loop {
        let channel = l.next().await?;
        dispatch(shared, &channel);
    }
}
