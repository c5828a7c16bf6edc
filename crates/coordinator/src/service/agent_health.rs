//! Agents' health beyond their heartbeats (which batches write to `agents`):
//! [`Watch`] finds agents that went silent for `heartbeats.missed` intervals, marks them
//! stale and tells their role's owner once (`agent_stale`); [`Unattended`] warns at once
//! when a batch sends a task to a role that has no agent left to take it.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::db::{self, batch, store, Pool};
use crate::engine::escalations;
use crate::engine::rows::{Queued, Writes};
use crate::service::runtime::{Metrics, Shared, Signals};
use crate::settings::HeartbeatSettings;
use protocol::payloads::AgentStale;

/// Most agents marked stale in one step.
const MOST: i64 = 100;
/// A role's unattended tasks are logged at most this often (each is counted).
const WARN_EVERY: Duration = Duration::from_secs(60);

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

/// The roles that have an agent to take a task (live, or registered and not heard
/// from yet), as the gauges last read them, and when each unattended role was last
/// logged.
#[derive(Default)]
pub struct Unattended {
    attended: RwLock<Option<HashSet<String>>>,
    warned: Mutex<HashMap<String, Instant>>,
}

impl Unattended {
    /// The roles with an agent to take a task, from the database.
    pub fn set_attended(&self, roles: impl IntoIterator<Item = String>) {
        let roles = roles.into_iter().collect();
        *self.attended.write().unwrap_or_else(|e| e.into_inner()) = Some(roles);
    }

    /// Counts, and logs (once a minute a role), the tasks among `queued` sent to a role
    /// with no agent to take them. Nothing until the roles have been read once.
    pub fn check(&self, queued: &[Queued], metrics: &Metrics) {
        let attended = self.attended.read().unwrap_or_else(|e| e.into_inner());
        let Some(attended) = attended.as_ref() else {
            return;
        };
        for q in queued {
            let Some(role) = q.message.routing_key.strip_prefix("task.") else {
                continue;
            };
            if attended.contains(role) {
                continue;
            }
            metrics.tasks_unattended.with_label_values(&[role]).inc();
            let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
            let due = warned.get(role).is_none_or(|at| at.elapsed() >= WARN_EVERY);
            if due {
                warned.insert(role.to_string(), Instant::now());
                tracing::warn!(
                    role,
                    message_type = %q.message.message_type,
                    workflow_id = %q.message.correlation_id,
                    "a task was sent to a role with no live agent: it waits on the role's queue until one comes (once a minute a role; coordinator_tasks_unattended_total counts each)"
                );
            }
        }
    }
}
