//! `App::build(Settings)` and `App::run(shutdown)`: the one way the service is
//! assembled, used by `main`, the tests and the demo.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::db;
use crate::service::activity;
use crate::service::housekeeping;
use crate::service::notifications;
use crate::service::runtime::{Shared, Status};
use crate::service::supervisor;
use crate::service::timers;
use crate::settings::Settings;
use crate::telemetry::spans::Exporter;

pub struct App {
    shared: Arc<Shared>,
    listener: TcpListener,
}

impl App {
    /// Binds the HTTP listener and prepares the (lazy) database pool. Connecting to the
    /// database and the broker happens in [`App::run`], with retries.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let pool = db::service_pool(&settings.database)?;
        let listener = TcpListener::bind(&settings.http.addr)
            .await
            .with_context(|| format!("could not listen on http.addr {}", settings.http.addr))?;
        let mut shared = Shared::new(settings, pool, clock::system());
        shared.spans = Exporter::from_settings(&shared.settings.traces, &shared.instance)?;
        Ok(App {
            shared: Arc::new(shared),
            listener,
        })
    }

    /// Exports spans to `spans` rather than as `[traces]` says (tests: the SDK's
    /// in-memory exporter). Before [`App::run`] and [`App::shared`] only.
    pub fn exporting_to(mut self, spans: Exporter) -> App {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.processor.keep_spans = spans.is_on();
            shared.spans = spans;
        }
        self
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Runs until `shutdown` is cancelled: migrations, registration of configured agents,
    /// then the broker session (topology, consumer, relay) under the supervisor.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let shared = self.shared;
        tracing::info!(addr = %self.listener.local_addr()?, "HTTP listening");
        if let Some(warning) = shared.settings.plaintext_warning() {
            tracing::warn!("{warning}");
        }
        let http = tokio::spawn(crate::http::serve(
            self.listener,
            shared.clone(),
            shutdown.clone(),
        ));

        if !retry_until_ok(
            "apply migrations",
            &shared.settings.retry_policies.critical_task,
            &shutdown,
            || db::migrate(&shared.pool),
        )
        .await
        {
            return finish(http).await;
        }
        Status::set(&shared.status.migrated, true);
        tracing::info!("migrations applied");
        let refused = std::sync::Mutex::new(None);
        let catalog = shared.settings.catalog();
        let resolve = || async {
            let defs = &shared.processor.workflows;
            if let Err(refusal) =
                crate::service::definitions::resolve(&shared.pool, defs, &catalog).await?
            {
                if let Ok(mut r) = refused.lock() {
                    *r = Some(refusal);
                }
            }
            Ok::<(), anyhow::Error>(())
        };
        if !retry_until_ok(
            "record the workflow definitions",
            &shared.settings.retry_policies.critical_task,
            &shutdown,
            resolve,
        )
        .await
        {
            return finish(http).await;
        }
        if let Some(refusal) = refused.lock().ok().and_then(|mut r| r.take()) {
            http.abort();
            anyhow::bail!("{refusal}");
        }
        let register = || register_configured_agents(&shared);
        if !retry_until_ok(
            "register configured agents",
            &shared.settings.retry_policies.critical_task,
            &shutdown,
            register,
        )
        .await
        {
            return finish(http).await;
        }

        // On shutdown the timer stops first, then the supervisor (consumers, then relay),
        // so the relay's last flush carries whatever the timer committed. A fatal broker
        // problem (the consistent-hash plugin missing) stops everything the same way.
        let timer_stop = CancellationToken::new();
        let supervisor_stop = CancellationToken::new();
        let fatal = CancellationToken::new();
        let stopper = async {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = fatal.cancelled() => {}
            }
            shared.stopping("stopping the timer");
            timer_stop.cancel();
        };
        let timer_then_supervisor = async {
            timers::run(timers::Parts::of(&shared), timer_stop.clone()).await;
            supervisor_stop.cancel();
        };
        let supervising = async {
            let r = supervisor::run(&shared, supervisor_stop.clone()).await;
            if r.is_err() {
                fatal.cancel();
            }
            r
        };
        let dead_letters = crate::service::dead_letters::Escalator::of(&shared);
        let stale_agents = crate::service::agent_health::Watch::of(&shared);
        let anchoring = async {
            if shared.settings.security.audit {
                crate::service::audit::anchor_every(
                    &shared.pool,
                    shared.settings.security.audit_anchor_interval,
                    shared.clock.as_ref(),
                    timer_stop.clone(),
                )
                .await;
            }
        };
        // Buckets of agents quiet long enough to have full ones are dropped, so the
        // limiter's memory follows the agents that are sending, not every id ever seen.
        let idle_buckets = async {
            while shared.rate_limits.enabled() {
                tokio::select! {
                    _ = timer_stop.cancelled() => return,
                    _ = tokio::time::sleep(crate::service::rate_limits::NOTICE_WINDOW) => {}
                }
                shared.rate_limits.forget_idle();
            }
        };
        let ((), (), supervised, (), (), (), (), (), (), (), ()) = tokio::join!(
            stopper,
            timer_then_supervisor,
            supervising,
            housekeeping::run(
                &shared.pool,
                &shared.settings.retention,
                shared.clock.as_ref(),
                timer_stop.clone()
            ),
            dead_letters.run(timer_stop.clone()),
            stale_agents.run(timer_stop.clone()),
            notifications::run(&shared, timer_stop.clone()),
            activity::run(
                &shared.metrics,
                shared.settings.log.activity_interval,
                timer_stop.clone()
            ),
            anchoring,
            idle_buckets,
            crate::service::gauges::run(&shared, timer_stop.clone())
        );
        if let Err(e) = supervised {
            shutdown.cancel();
            let _ = finish(http).await;
            return Err(e.into());
        }
        tracing::info!("stopped consuming; outbox flushed");
        shared.spans.flush();
        shared.stopping("stopping the HTTP server");
        finish(http).await
    }
}

async fn finish(http: tokio::task::JoinHandle<std::io::Result<()>>) -> anyhow::Result<()> {
    http.await
        .context("HTTP task panicked")?
        .context("HTTP server failed")
}

async fn register_configured_agents(shared: &Shared) -> anyhow::Result<()> {
    let mut conn = shared.pool.acquire().await?;
    for a in &shared.settings.agents {
        db::store::register_agent(&mut conn, &a.agent_id, &a.agent_type, "config").await?;
    }
    Ok(())
}

/// Retries `f` with a growing delay until it succeeds (true) or shutdown (false).
async fn retry_until_ok<F, Fut, E>(
    what: &str,
    policy: &crate::retry::RetryPolicy,
    shutdown: &CancellationToken,
    mut f: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: Into<anyhow::Error>,
{
    let mut waits = policy.waits();
    loop {
        let delay = waits.next_persistent();
        match f().await {
            Ok(()) => return true,
            Err(e) => {
                let e: anyhow::Error = e.into();
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "could not {what}");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
