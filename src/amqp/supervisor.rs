//! Owns the AMQP connection: connects, declares the topology, runs the consumer and the
//! relay on it, and reconnects with a delay when the connection fails. lapin's own
//! recovery is incomplete, so reconnection is ours.

use lapin::Connection;
use tokio_util::sync::CancellationToken;

use crate::amqp::topology::Declarer;
use crate::amqp::{connect, consumer, relay};
use crate::db;
use crate::runtime::{Shared, Status};

/// Runs until `shutdown`; then stops consuming, finishes the batch in hand, flushes the
/// outbox and closes the connection.
pub async fn run(shared: &Shared, shutdown: CancellationToken) {
    let delay = shared.settings.amqp.reconnect_delay;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match session(shared, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                shared.status.broker_lost();
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "broker session ended; reconnecting");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn session(shared: &Shared, shutdown: &CancellationToken) -> anyhow::Result<()> {
    use anyhow::Context;
    let cfg = &shared.settings.amqp;
    let conn = connect(&cfg.url, "coordinator")
        .await
        .context("could not connect to RabbitMQ (amqp.url)")?;
    shared.metrics.broker_connects.inc();
    Status::set(&shared.status.broker_connected, true);
    declare_all(&conn, shared).await?;
    Status::set(&shared.status.topology_declared, true);

    let relay = relay::Relay::new(&conn, shared).await?;
    let stop_consumer = CancellationToken::new();
    let stop_relay = CancellationToken::new();
    let outcome = supervise(&conn, shared, &relay, shutdown, stop_consumer, stop_relay).await;
    relay.close().await;
    close(&conn).await;
    outcome
}

/// Runs the consumer and the relay; on shutdown stops the consumer first (finishing its
/// batch), then the relay (flushing the outbox). Either one failing stops the other.
async fn supervise(
    conn: &Connection,
    shared: &Shared,
    relay: &relay::Relay<'_>,
    shutdown: &CancellationToken,
    stop_consumer: CancellationToken,
    stop_relay: CancellationToken,
) -> anyhow::Result<()> {
    let consumer = consumer::run(conn, shared, stop_consumer.clone());
    let relaying = relay::run(relay, stop_relay.clone());
    tokio::pin!(consumer, relaying);

    tokio::select! {
        _ = shutdown.cancelled() => {
            stop_consumer.cancel();
            let c = (&mut consumer).await;
            stop_relay.cancel();
            let r = (&mut relaying).await;
            c.map_err(anyhow::Error::from).and(r.map_err(anyhow::Error::from))
        }
        c = &mut consumer => {
            stop_relay.cancel();
            let _ = (&mut relaying).await;
            match c {
                Ok(()) => Err(anyhow::anyhow!("the consumer stopped")),
                Err(e) => Err(e.into()),
            }
        }
        r = &mut relaying => {
            stop_consumer.cancel();
            let _ = (&mut consumer).await;
            Err(match r {
                Ok(()) => anyhow::anyhow!("the relay stopped"),
                Err(e) => e.into(),
            })
        }
    }
}

/// The fixed topology and the queues of every known agent.
async fn declare_all(conn: &Connection, shared: &Shared) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut declarer = Declarer::new(conn, shared.settings.amqp.queue_type).await?;
    declarer.fixed(&shared.settings.inbox.queue).await?;
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
            .await?;
    }
    declarer.close().await;
    tracing::info!(agents = agents.len(), "topology declared");
    Ok(())
}

async fn close(conn: &Connection) {
    if let Err(e) = conn.close(200, "coordinator stopping").await {
        tracing::debug!(error = %e, "closing the connection");
    }
}
