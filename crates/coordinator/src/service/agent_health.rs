//! Agents' health beyond their heartbeats (which batches write to `agents`):
//! [`Watch`] finds agents that went silent for `heartbeats.missed` intervals, marks them
//! stale and tells their role's owner once (`agent_stale`). (The warning for a task sent
//! to a role with no agent left is `runtime::Unattended`, shared state the gauges feed.)

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::db::{self, batch, store, Pool};
use crate::engine::escalations;
use crate::engine::rows::Writes;
use crate::service::runtime::{Shared, Signals};
use crate::settings::HeartbeatSettings;
use protocol::payloads::AgentStale;

/// Most agents marked stale in one step.
const MOST: i64 = 100;

pub struct Watch<'a> {
    pool: &'a Pool,
    clock: &'a dyn Clock,
    signals: &'a Signals,
    settings: &'a HeartbeatSettings,
}

impl<'a> Watch<'a> {
    pub fn of(shared: &'a Shared) -> Watch<'a> {
        Watch {
            pool: &shared.pool,
            clock: shared.clock.as_ref(),
            signals: &shared.signals,
            settings: &shared.settings.heartbeats,
        }
    }

    /// Marks stale what went silent since the last step and tells each one's role's
    /// owner, in one transaction; the agents marked.
    pub async fn step(&self) -> db::Result<Vec<AgentStale>> {
        let now = self.clock.now();
        let s = self.settings;
        let mut tx = self.pool.begin().await?;
        let found = store::mark_stale_agents(&mut tx, s.stale_after(), MOST, now).await?;
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let stale: Vec<AgentStale> = found
            .into_iter()
            .map(|a| AgentStale {
                hint: format!(
                    "no heartbeat from {} since {}; `coordinator agent list --role {}` shows its role's agents",
                    a.agent_id,
                    a.last_heartbeat_at.to_rfc3339(),
                    a.agent_type
                ),
                agent_id: a.agent_id,
                agent_type: a.agent_type,
                last_heartbeat_at: a.last_heartbeat_at,
                stale_at: now,
                heartbeat_interval_seconds: s.interval.as_secs_f64(),
                missed_heartbeats: s.missed,
                live_agents_of_role: a.live_of_role,
            })
            .collect();
        let writes = Writes {
            outbox: stale
                .iter()
                .map(|a| escalations::stale_agent_notice(a, now))
                .collect(),
            ..Default::default()
        };
        batch::write(&mut tx, writes, now).await?;
        tx.commit().await?;
        for a in &stale {
            tracing::warn!(
                agent_id = %a.agent_id,
                role = %a.agent_type,
                last_heartbeat_at = %a.last_heartbeat_at,
                live_agents_of_role = a.live_agents_of_role,
                "agent stale: no heartbeat for heartbeats.missed intervals; its role's owner is told"
            );
        }
        self.signals.wake_relay.notify_one();
        Ok(stale)
    }

    /// Steps every half interval (at least every second) until `stop`.
    pub async fn run(&self, stop: CancellationToken) {
        let every = (self.settings.interval / 2).max(Duration::from_secs(1));
        loop {
            match self.step().await {
                Ok(found) if found.len() as i64 == MOST => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %crate::telemetry::error_chain(&e), "could not look for stale agents; will try again")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}
