//! Owns the AMQP connection: connects, declares the topology, runs the outbox relay
//! and a consumer for each inbox partition this coordinator holds a lease on
//! ([`crate::service::partitions`]), and reconnects with a delay when the connection fails.
//! lapin's own recovery is incomplete, so reconnection is ours.

use std::collections::HashMap;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::amqp::topology::{Declarer, TopologyError};
use crate::amqp::{connect_to, Connection};
use crate::db::{self, Pool};
use crate::service::inbox::{self, ConsumerError};
use crate::service::partitions::Partitions;
use crate::service::publishing::Settler;
use crate::service::runtime::{Shared, Status};
use crate::service::{collector, relay};
use crate::settings::InboxSettings;
use chrono::{DateTime, Utc};

/// A problem no reconnect can fix: the broker or the settings must change.
#[derive(Debug, thiserror::Error)]
#[error("the broker cannot host the coordinator's topology")]
pub struct Fatal(#[source] pub TopologyError);

/// Runs until `shutdown`; then stops consuming, finishes the batches in hand, flushes
/// the outbox and closes the connection. Returns `Err` only for a [`Fatal`] problem.
pub async fn run(shared: &Shared, shutdown: CancellationToken) -> Result<(), Fatal> {
    let policy = shared.settings.retry_policies.critical_task;
    let mut waits = policy.waits();
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let ended = session(shared, &shutdown).await;
        // A session that ran for a while ended anew: start the series again.
        if started.elapsed() > policy.max_delay {
            waits.reset();
        }
        let delay = waits.next_persistent();
        match ended {
            Ok(()) => return Ok(()),
            Err(SessionError::Fatal(e)) => {
                shared.status.broker_lost();
                return Err(Fatal(e));
            }
            Err(SessionError::Other(e)) => {
                shared.status.broker_lost();
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "broker session ended; reconnecting");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

enum SessionError {
    Fatal(TopologyError),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for SessionError {
    fn from(e: E) -> Self {
        SessionError::Other(e.into())
    }
}

async fn session(shared: &Shared, shutdown: &CancellationToken) -> Result<(), SessionError> {
    use anyhow::Context;
    let cfg = &shared.settings.amqp;
    let conn = connect_to(cfg, &format!("coordinator {}", shared.instance))
        .await
        .with_context(|| match cfg.fallback_urls.len() {
            0 => "could not connect to RabbitMQ (amqp.url)".to_string(),
            n => format!(
                "could not connect to any of the {} RabbitMQ nodes (amqp.url, amqp.fallback_urls)",
                n + 1
            ),
        })?;
    shared.metrics.broker_connects.inc();
    Status::set(&shared.status.broker_connected, true);
    if let Err(e) = declare_all(&conn, shared).await {
        close(&conn).await;
        return Err(e);
    }
    Status::set(&shared.status.topology_declared, true);

    let relay = relay::Relay::of(&conn, shared).await?;
    let stop_relay = CancellationToken::new();
    let outcome = supervise(&conn, shared, &relay, shutdown, stop_relay).await;
    Status::set(&shared.status.consuming, false);
    if shutdown.is_cancelled() {
        shared.stopping("closing the broker connection");
    }
    relay.close().await;
    close(&conn).await;
    outcome.map_err(SessionError::Other)
}

/// Runs the relay and a consumer per leased partition; every `inbox.rebalance_interval`
/// the leases are stepped (partitions taken, handed over). On shutdown the consumers
/// stop first (each finishing its batch and publishing what it committed), then the
/// relay (flushing the outbox). A consumer or the relay failing ends the session.
async fn supervise(
    conn: &Connection,
    shared: &Shared,
    relay: &relay::Relay<'_>,
    shutdown: &CancellationToken,
    stop_relay: CancellationToken,
) -> anyhow::Result<()> {
    let relaying = relay::run(relay, stop_relay.clone());
    tokio::pin!(relaying);
    let mut relay_ended = false;
    let settler = Settler::new(shared);
    let stop_settler = CancellationToken::new();
    let settling = settler.run(stop_settler.clone());
    tokio::pin!(settling);
    let mut settled = false;
    let stop_collector = CancellationToken::new();
    let collecting = collector::collect(conn, shared, stop_collector.clone());
    tokio::pin!(collecting);
    let mut collector_ended = false;
    let mut leases = Partitions::new(
        shared.settings.database.url.expose(),
        &shared.instance,
        shared.settings.inbox.partitions,
    );
    let mut running: HashMap<u32, CancellationToken> = HashMap::new();
    let mut workers = FuturesUnordered::new();
    let mut tick = tokio::time::interval(shared.settings.inbox.rebalance_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let outcome: anyhow::Result<()> = loop {
        shared.metrics.partitions_held.set(leases.consuming());
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tick.tick() => match leases.step().await {
                Ok(plan) => {
                    for p in &plan.stop {
                        if let Some(stop) = running.get(p) {
                            tracing::info!(partition = p, "handing an inbox partition over to another coordinator");
                            stop.cancel();
                        }
                    }
                    for p in plan.start {
                        let stop = CancellationToken::new();
                        running.insert(p, stop.clone());
                        workers.push(partition(conn, shared, p, stop));
                    }
                    Status::set(&shared.status.consuming, true);
                }
                Err(e) => {
                    // Without the lease connection this coordinator may no longer own
                    // its partitions: stop consuming them, and take leases afresh.
                    tracing::warn!(error = %e, "could not read the partition leases; releasing them");
                    for stop in running.values() {
                        stop.cancel();
                    }
                    leases.close().await;
                }
            },
            Some((p, result)) = workers.next() => {
                running.remove(&p);
                if let Err(e) = leases.finished(p).await {
                    tracing::warn!(error = %e, partition = p, "could not release a partition lease; it goes with the lease connection");
                }
                if let Err(e) = result {
                    break Err(anyhow::Error::from(e).context(format!("inbox partition {p}")));
                }
            }
            // It only returns once stopped: polled here so it runs beside the rest.
            () = &mut settling, if !settled => {
                settled = true;
                break Err(anyhow::anyhow!("the settler stopped"));
            }
            r = &mut collecting, if !collector_ended => {
                collector_ended = true;
                break match r {
                    Ok(()) => Err(anyhow::anyhow!("the broker closed the dead-letter collector")),
                    Err(e) => Err(anyhow::Error::from(e).context("the dead-letter collector failed")),
                };
            }
            r = &mut relaying => {
                relay_ended = true;
                break match r {
                    Ok(()) => Err(anyhow::anyhow!("the relay stopped")),
                    Err(e) => Err(e.into()),
                };
            }
        }
    };

    shared.stopping("finishing the inbox batches in hand and publishing what they committed");
    for stop in running.values() {
        stop.cancel();
    }
    // The settler, the collector and the relay are futures of this task: they run only
    // while polled, so they are polled here too until the partitions have finished. One
    // left unpolled keeps whatever it holds in the middle of a step (a pooled connection,
    // a transaction, a channel's unread frames) from everyone else until it is polled
    // again, and a partition finishing its batch may be waiting for exactly that.
    let mut relayed = Ok(());
    loop {
        shared.still_waiting_for(still_running(&running));
        tokio::select! {
            next = workers.next() => match next {
                Some((p, result)) => {
                    running.remove(&p);
                    if let Err(e) = result {
                        tracing::warn!(error = %crate::telemetry::error_chain(&e), partition = p, "an inbox partition stopped with an error");
                    }
                }
                None => break,
            },
            () = &mut settling, if !settled => {
                settled = true;
                tracing::warn!("the settler stopped while the inbox partitions were finishing");
            }
            r = &mut collecting, if !collector_ended => {
                collector_ended = true;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "the dead-letter collector stopped with an error");
                }
            }
            r = &mut relaying, if !relay_ended => {
                relay_ended = true;
                relayed = r;
            }
        }
    }
    shared.stopping("releasing the partition leases");
    leases.close().await;
    shared.metrics.partitions_held.set(0);
    shared.stopping("stopping the dead-letter collector");
    stop_collector.cancel();
    if !collector_ended {
        if let Err(e) = (&mut collecting).await {
            tracing::warn!(error = %e, "the dead-letter collector stopped with an error");
        }
    }
    shared.stopping("flushing the outbox");
    stop_relay.cancel();
    if !relay_ended {
        relayed = (&mut relaying).await;
    }
    // Last, what every publisher and the relay had confirmed is marked sent.
    shared.stopping("marking confirmed messages sent");
    stop_settler.cancel();
    if !settled {
        settling.await;
    }
    if let (Ok(()), Err(e)) = (&outcome, relayed) {
        return Err(e.into());
    }
    outcome
}

/// The partitions whose consumers have not finished, as a shutdown that overruns names
/// them.
fn still_running(running: &HashMap<u32, CancellationToken>) -> String {
    let mut ps: Vec<u32> = running.keys().copied().collect();
    ps.sort_unstable();
    let ps: Vec<String> = ps.iter().map(u32::to_string).collect();
    match ps.len() {
        0 => String::new(),
        1 => format!("inbox partition {}", ps[0]),
        _ => format!("inbox partitions {}", ps.join(", ")),
    }
}

/// One partition's consumer, tagged with its partition.
async fn partition(
    conn: &Connection,
    shared: &Shared,
    p: u32,
    stop: CancellationToken,
) -> (u32, Result<(), ConsumerError>) {
    (p, inbox::run(conn, shared, p, stop).await)
}

/// Why the fixed topology could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("could not read or record how many partitions the inbox has")]
    Db(#[from] db::Error),
}

/// Declares the fixed topology, the inbox's partitions checked against how many it had
/// (remembered in PostgreSQL), and records how many it has now.
pub async fn declare_fixed(
    declarer: &mut Declarer<'_>,
    pool: &Pool,
    inbox: &InboxSettings,
    now: DateTime<Utc>,
) -> Result<(), DeclareError> {
    let mut c = pool.acquire().await.map_err(db::Error::from)?;
    let recorded = db::store::recorded_partitions(&mut c, &inbox.exchange).await?;
    declarer.fixed(inbox, recorded).await?;
    if recorded != Some(inbox.partitions) {
        db::store::record_partitions(&mut c, &inbox.exchange, inbox.partitions, now).await?;
        if recorded.is_some() {
            tracing::info!(
                from = recorded,
                to = inbox.partitions,
                "the inbox's number of partitions changed"
            );
        }
    }
    Ok(())
}

/// The fixed topology and the queues of every known agent.
async fn declare_all(conn: &Connection, shared: &Shared) -> Result<(), SessionError> {
    use anyhow::Context;
    let mut declarer = Declarer::new(conn, &shared.settings.amqp)
        .await
        .map_err(topology)?;
    match declare_fixed(
        &mut declarer,
        &shared.pool,
        &shared.settings.inbox,
        shared.clock.now(),
    )
    .await
    {
        Ok(()) => {}
        Err(DeclareError::Topology(e)) => return Err(topology(e)),
        Err(e) => return Err(SessionError::Other(e.into())),
    }
    let mut c = shared
        .pool
        .acquire()
        .await
        .context("could not reach the database")?;
    let agents = db::store::all_agents(&mut c)
        .await
        .context("could not list agents")?;
    for (agent_id, agent_type) in &agents {
        declarer
            .agent(agent_id, agent_type, &shared.catalog)
            .await
            .map_err(topology)?;
    }
    let used_as_found = declarer.used_as_found();
    declarer.close().await;
    tracing::info!(agents = agents.len(), used_as_found, "topology declared");
    Ok(())
}

fn topology(e: TopologyError) -> SessionError {
    if e.is_fatal() {
        SessionError::Fatal(e)
    } else {
        SessionError::Other(e.into())
    }
}

async fn close(conn: &Connection) {
    if let Err(e) = conn.close("coordinator stopping").await {
        tracing::debug!(error = %e, "closing the connection");
    }
}
