//! The communication-health report's figures, read from the `report_*` views
//! (migration 19, docs/sql.md "The communication-health report") over a window. What
//! the coordinator sent is kept for `retention.outbox` (7 d) and what it received for
//! `retention.processed_messages` (30 d): a longer window sees only that much.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool};

/// Messages received from one orchestrator (role) of one type.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Volume {
    pub orchestrator: String,
    pub message_type: String,
    pub received: i64,
    /// Accepted or observed (valid, whether or not it moved a workflow).
    pub accepted: i64,
    pub rejected: i64,
}

/// What became of the messages the coordinator sent, of one type (`None`: every type).
#[derive(Debug, Clone, Default, Serialize, FromRow)]
pub struct Deliveries {
    pub message_type: Option<String>,
    pub sent: i64,
    /// Confirmed by the broker at the first try.
    pub delivered: i64,
    /// Confirmed after more than one try.
    pub retried: i64,
    /// Given up (`outbox.undeliverable_after`).
    pub failed: i64,
    /// Not confirmed yet.
    pub pending: i64,
    pub average_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
}

/// Tasks of one workflow kind (`task.{role}` messages).
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Handoffs {
    pub kind: String,
    pub sent: i64,
    /// Confirmed by the broker into the role's queue (at once or after retries).
    pub delivered: i64,
    pub failed: i64,
    pub pending: i64,
}

/// SLA clocks of one role and clock closed in the window.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Sla {
    pub role: String,
    pub clock: String,
    pub met: i64,
    pub breached: i64,
}

/// One orchestrator's messages: received, accepted, and why the rest were refused.
#[derive(Debug, Clone, Serialize)]
pub struct Adherence {
    pub orchestrator: String,
    pub received: i64,
    pub accepted: i64,
    /// The most frequent refusal reasons (dead letters), most first.
    pub top_refusals: Vec<Refusals>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Refusals {
    pub reason: String,
    pub count: i64,
}

/// Everything the report shows, over `since` … `until`.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub volume: Vec<Volume>,
    /// Every type together first, then by type.
    pub deliveries: Vec<Deliveries>,
    pub handoffs: Vec<Handoffs>,
    pub sla: Vec<Sla>,
    pub adherence: Vec<Adherence>,
}

/// SLA clocks of one role closed on one day (UTC).
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct DailySla {
    pub day: DateTime<Utc>,
    pub role: String,
    pub met: i64,
    pub breached: i64,
}

/// Clocks closed per day and role since `since` (the dashboard's compliance chart): a
/// scan of the clocks, planned as analytics ([`analytic`]).
pub async fn sla_by_day(pool: &PgPool, since: DateTime<Utc>) -> super::Result<Vec<DailySla>> {
    let mut tx = analytic(pool).await?;
    let days = sqlx::query_as(
        "SELECT date_trunc('day', at, 'UTC') AS day, role,
                count(*) FILTER (WHERE met_on_time) AS met,
                count(*) FILTER (WHERE NOT met_on_time) AS breached
           FROM report_sla WHERE at >= $1
          GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(since)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(days)
}

/// A transaction with PostgreSQL's planner defaults, for a query that scans a window of
/// the tables: not the service's settings for its hot statements (generic plans, no
/// sequential scans or hash joins: `SERVICE_PLANNER`), under which the report's join of
/// the outbox with the workflows took longer than the statement timeout. A scan of a
/// window may use parallel workers again (PostgreSQL's default of two).
async fn analytic(pool: &PgPool) -> super::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "SELECT set_config('plan_cache_mode', 'auto', true), set_config('enable_seqscan', 'on', true),
                set_config('enable_hashjoin', 'on', true), set_config('enable_mergejoin', 'on', true),
                set_config('max_parallel_workers_per_gather', '2', true)",
    )
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}

/// Refusal reasons named per orchestrator.
const TOP_REFUSALS: usize = 3;

pub async fn figures(
    pool: &PgPool,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> super::Result<Figures> {
    let mut tx = analytic(pool).await?;
    let volume: Vec<Volume> = sqlx::query_as(
        "SELECT orchestrator, message_type, count(*) AS received,
                count(*) FILTER (WHERE outcome <> 'rejected') AS accepted,
                count(*) FILTER (WHERE outcome = 'rejected') AS rejected
           FROM report_received WHERE at >= $1 AND at < $2
          GROUP BY orchestrator, message_type ORDER BY received DESC, orchestrator, message_type",
    )
    .bind(since)
    .bind(until)
    .fetch_all(&mut *tx)
    .await?;
    let deliveries: Vec<Deliveries> = sqlx::query_as(
        "SELECT message_type, count(*) AS sent,
                count(*) FILTER (WHERE result = 'delivered') AS delivered,
                count(*) FILTER (WHERE result = 'retried') AS retried,
                count(*) FILTER (WHERE result = 'failed') AS failed,
                count(*) FILTER (WHERE result = 'pending') AS pending,
                avg(latency_seconds) AS average_seconds,
                percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_seconds) AS p95_seconds
           FROM report_deliveries WHERE at >= $1 AND at < $2
          GROUP BY ROLLUP (message_type)
          ORDER BY message_type NULLS FIRST",
    )
    .bind(since)
    .bind(until)
    .fetch_all(&mut *tx)
    .await?;
    let handoffs: Vec<Handoffs> = sqlx::query_as(
        "SELECT kind, count(*) AS sent,
                count(*) FILTER (WHERE result IN ('delivered', 'retried')) AS delivered,
                count(*) FILTER (WHERE result = 'failed') AS failed,
                count(*) FILTER (WHERE result = 'pending') AS pending
           FROM report_handoffs WHERE at >= $1 AND at < $2
          GROUP BY kind ORDER BY kind",
    )
    .bind(since)
    .bind(until)
    .fetch_all(&mut *tx)
    .await?;
    let sla: Vec<Sla> = sqlx::query_as(
        "SELECT role, clock, count(*) FILTER (WHERE met_on_time) AS met,
                count(*) FILTER (WHERE NOT met_on_time) AS breached
           FROM report_sla WHERE at >= $1 AND at < $2
          GROUP BY role, clock ORDER BY role, clock",
    )
    .bind(since)
    .bind(until)
    .fetch_all(&mut *tx)
    .await?;
    let received: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT orchestrator, count(*), count(*) FILTER (WHERE outcome <> 'rejected')
           FROM report_received WHERE at >= $1 AND at < $2
          GROUP BY orchestrator ORDER BY orchestrator",
    )
    .bind(since)
    .bind(until)
    .fetch_all(&mut *tx)
    .await?;
    let refused: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT orchestrator, reason, count(*) AS n
           FROM report_refusals WHERE at >= $1 AND at < $2
          GROUP BY orchestrator, reason ORDER BY orchestrator, n DESC, reason",
    )
    .bind(since)
    .bind(until)
    .fetch_all(&mut *tx)
    .await?;
    let adherence = received
        .into_iter()
        .map(|(orchestrator, received, accepted)| Adherence {
            top_refusals: refused
                .iter()
                .filter(|(o, _, _)| *o == orchestrator)
                .take(TOP_REFUSALS)
                .map(|(_, reason, count)| Refusals {
                    reason: reason.clone(),
                    count: *count,
                })
                .collect(),
            orchestrator,
            received,
            accepted,
        })
        .collect();
    tx.commit().await?;
    Ok(Figures {
        since,
        until,
        volume,
        deliveries,
        handoffs,
        sla,
        adherence,
    })
}

impl Figures {
    /// Every type's deliveries together.
    pub fn all_deliveries(&self) -> Deliveries {
        self.deliveries
            .iter()
            .find(|d| d.message_type.is_none())
            .cloned()
            .unwrap_or_default()
    }

    /// The value of one of `domain::report::RULES`' measures over these figures.
    pub fn measure(&self, name: &str) -> Option<f64> {
        use crate::domain::report::ratio;
        let all = self.all_deliveries();
        let sum = |f: &dyn Fn(&Handoffs) -> i64| self.handoffs.iter().map(f).sum::<i64>();
        match name {
            "delivery_success_rate" => ratio(all.delivered + all.retried, all.sent - all.pending),
            "retry_rate" => ratio(all.retried, all.delivered + all.retried),
            "p95_delivery_seconds" => all.p95_seconds,
            "handoff_success_rate" => ratio(
                sum(&|h| h.delivered),
                sum(&|h| h.sent) - sum(&|h| h.pending),
            ),
            "sla_compliance" => ratio(
                self.sla.iter().map(|s| s.met).sum(),
                self.sla.iter().map(|s| s.met + s.breached).sum(),
            ),
            "protocol_adherence" => ratio(
                self.adherence.iter().map(|a| a.accepted).sum(),
                self.adherence.iter().map(|a| a.received).sum(),
            ),
            _ => None,
        }
    }
}
