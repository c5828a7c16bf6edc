//! The batch pipeline: applies a batch of inbox deliveries in one transaction, with a
//! fixed number of statements whatever the batch's size, and owns that transaction.
//!
//! ```text
//!  (admitted before: engine::admission) BEGIN ─▶ claim ids ─▶ lock workflows (id order)
//!    ─▶ read their armed clocks, unknown senders, escalation chains
//!    ─▶ decide each message in delivery order, in memory (engine::Batch)
//!    ─▶ write rows, a multi-row statement per table ─▶ COMMIT
//! ```
//!
//! When a commit fails because PostgreSQL refused a value ([`db::Fault::Input`]), the
//! batch is split in halves, applied in order, until the message at fault is alone; it
//! is retried as the `default` retry policy says and then set aside: kept whole in
//! `dead_letters` as `processing_failed`, its sender told. Every other message commits.
//! When the database itself is the problem ([`db::Fault::Transient`]) nothing is set
//! aside: the caller waits and retries the whole batch, and what had committed already
//! is recognised as duplicates.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::clock::Clock;
use crate::db::batch;
use crate::db::{self, Conn, Fault, Pool};
use crate::domain::audit;
use crate::domain::sla::{add, Deadline, DeadlineKind};
use crate::encryption::FieldCipher;
use crate::engine::rows::{Queued, Written};
use crate::engine::{self, Admission, Agents, Batch, Inbound, Input, Processed, Processor};
use crate::retry::RetryPolicy;
use crate::service::runtime::Shared;

/// What a batch did, once committed.
#[derive(Debug, Default)]
pub struct BatchOutput {
    /// One per delivery, in delivery order.
    pub results: Vec<Processed>,
    /// Outbox rows written, to publish now.
    pub queued: Vec<Queued>,
    /// Deadlines created (clocks armed, escalations raised), for the timer.
    pub deadlines: Vec<Deadline>,
    /// Agents registered by heartbeat, whose queues must now be declared.
    pub registered: Vec<(String, String)>,
    /// Agents the cache did not hold (found in the database or registered).
    pub learned: Vec<(String, String)>,
    /// Transactions committed (more than one when the batch was split).
    pub commits: usize,
    /// Statements run, over every transaction.
    pub statements: usize,
    /// Messages set aside as `processing_failed`.
    pub set_aside: usize,
    /// The spans of what was applied (`engine::spans`), to export.
    pub spans: Vec<engine::spans::Span>,
    /// Where the batch's time went, over every transaction.
    pub times: StageTimes,
}

/// Where a batch's time went in the database and in memory, stage by stage
/// (`coordinator_stage_seconds`, docs/metrics.md).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct StageTimes {
    /// A pooled connection and BEGIN.
    pub begin: Duration,
    /// Claiming the message ids and locking the workflows and the audit chain's head.
    pub claim: Duration,
    /// Reading what the batch needs: clocks, senders, escalation chains.
    pub read: Duration,
    /// Applying the messages in memory: the state machines and the rows they imply.
    pub decide: Duration,
    /// Sealing fields and the batch's one write statement.
    pub write: Duration,
    pub commit: Duration,
}

impl StageTimes {
    /// Each stage's name (its `stage` label) and time.
    pub fn each(&self) -> [(&'static str, Duration); 6] {
        [
            ("begin", self.begin),
            ("claim", self.claim),
            ("read", self.read),
            ("decide", self.decide),
            ("write", self.write),
            ("commit", self.commit),
        ]
    }

    fn add(&mut self, o: &StageTimes) {
        self.begin += o.begin;
        self.claim += o.claim;
        self.read += o.read;
        self.decide += o.decide;
        self.write += o.write;
        self.commit += o.commit;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the batch could not be committed (the database is unreachable or busy); it is retried")]
pub struct Retry(#[source] pub db::Error);

/// What a batch is applied with.
pub struct Context<'a> {
    pub pool: &'a Pool,
    /// The time a batch is decided at.
    pub clock: &'a dyn Clock,
    pub processor: &'a Processor,
    pub agents: Arc<Agents>,
    /// Recorded in `processed_messages.processed_by`.
    pub instance: &'a str,
    /// Outbox rows become due for the relay at this time (the caller publishes them
    /// itself before then).
    pub publish_after: DateTime<Utc>,
    /// How a message the database refuses is retried before it is set aside.
    pub retry: RetryPolicy,
    /// The audit chain this context's batches append to (none: the audit log is off).
    pub audit_chain: Option<String>,
    /// Seals the configured payload fields of the rows written.
    pub cipher: &'a FieldCipher,
}

impl<'a> Context<'a> {
    /// The running service's settings and agent cache (reloaded first if stale), for
    /// a batch of inbox partition `partition`.
    pub async fn of(
        shared: &'a Shared,
        partition: u32,
        publish_after: DateTime<Utc>,
    ) -> db::Result<Context<'a>> {
        Ok(Context {
            audit_chain: shared
                .processor
                .security
                .audit
                .then(|| audit::inbox_chain(partition)),
            pool: &shared.pool,
            clock: shared.clock.as_ref(),
            processor: &shared.processor,
            agents: agents(shared).await?,
            instance: &shared.instance,
            publish_after,
            retry: shared.settings.retry_policies.default,
            cipher: &shared.cipher,
        })
    }
}

/// Applies a batch of admitted deliveries of inbox partition `partition` with the
/// running service's settings and agent cache.
pub async fn apply_admitted(
    shared: &Shared,
    partition: u32,
    inputs: &[Input<'_>],
    publish_after: DateTime<Utc>,
) -> Result<BatchOutput, Retry> {
    let ctx = Context::of(shared, partition, publish_after)
        .await
        .map_err(Retry)?;
    let out = apply(&ctx, inputs).await?;
    shared.agents.learn(&out.learned);
    Ok(out)
}

/// Admits `deliveries` now and applies them as [`apply_admitted`] does (tests, and
/// callers that have deliveries in hand rather than an inbox's batch).
pub async fn apply_shared(
    shared: &Shared,
    partition: u32,
    deliveries: &[Inbound<'_>],
    publish_after: DateTime<Utc>,
) -> Result<BatchOutput, Retry> {
    let ctx = Context::of(shared, partition, publish_after)
        .await
        .map_err(Retry)?;
    let admitted = admit(&ctx, deliveries, ctx.clock.now());
    let out = apply(&ctx, &delivered(deliveries, &admitted)).await?;
    shared.agents.learn(&out.learned);
    Ok(out)
}

/// What admission makes of `deliveries`, received at `at`, with this context's keys.
pub fn admit(ctx: &Context<'_>, deliveries: &[Inbound<'_>], at: DateTime<Utc>) -> Vec<Admission> {
    ctx.processor.admit_all(deliveries, at, &ctx.agents)
}

/// Applies a batch of admitted deliveries. `Err` only when the database is the problem.
pub async fn apply(ctx: &Context<'_>, inputs: &[Input<'_>]) -> Result<BatchOutput, Retry> {
    let mut out = BatchOutput {
        results: vec![Processed::new(engine::Outcome::Duplicate); inputs.len()],
        ..Default::default()
    };
    // Ranges still to commit, in delivery order.
    let mut todo: VecDeque<Range<usize>> = VecDeque::new();
    todo.push_back(0..inputs.len());
    while let Some(range) = todo.pop_front() {
        match commit(ctx, &inputs[range.clone()]).await {
            Ok(c) => c.merge_into(&mut out, range.start),
            Err(e) if e.fault() == Fault::Transient => return Err(Retry(e)),
            Err(e) if range.len() > 1 => {
                let mid = range.start + range.len() / 2;
                tracing::warn!(error = %e, size = range.len(), "the database refused a value in the batch; splitting it to find the message at fault");
                todo.push_front(mid..range.end);
                todo.push_front(range.start..mid);
            }
            Err(e) => {
                let i = range.start;
                let Input::Delivery(d, admission) = inputs[i] else {
                    continue;
                };
                match retry_one(ctx, &inputs[i..=i], e).await? {
                    Ok(c) => c.merge_into(&mut out, i),
                    Err(e) => {
                        let c = set_aside(ctx, d, admission, &e).await?;
                        out.set_aside += 1;
                        c.merge_into(&mut out, i);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Applies one message an operator made with the CLI, in its own transaction.
pub async fn apply_operator(
    pool: &Pool,
    processor: &Processor,
    cipher: &FieldCipher,
    clock: &dyn Clock,
    env: &protocol::envelope::Envelope,
) -> db::Result<Processed> {
    let ctx = Context {
        pool,
        clock,
        processor,
        agents: Arc::new(Agents::default()),
        instance: "cli",
        publish_after: clock.now(),
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        audit_chain: processor
            .security
            .audit
            .then(|| audit::OPERATOR_CHAIN.to_string()),
        cipher,
    };
    let c = commit(&ctx, &[Input::Operator(env)]).await?;
    Ok(c.results
        .into_iter()
        .next()
        .unwrap_or_else(|| Processed::new(engine::Outcome::Duplicate)))
}

/// Retries a single message that the database refused; `Ok(Err(e))` once every
/// attempt was refused for its input.
async fn retry_one(
    ctx: &Context<'_>,
    input: &[Input<'_>],
    first: db::Error,
) -> Result<Result<Committed, db::Error>, Retry> {
    let mut last = first;
    let mut waits = ctx.retry.waits();
    while let Some(wait) = waits.next_attempt() {
        tracing::warn!(error = %last, attempt = waits.failures(), retry_in = ?wait, "the database refused a message; retrying it alone");
        tokio::time::sleep(wait).await;
        match commit(ctx, input).await {
            Ok(c) => return Ok(Ok(c)),
            Err(e) if e.fault() == Fault::Transient => return Err(Retry(e)),
            Err(e) => last = e,
        }
    }
    Ok(Err(last))
}

/// What one committed transaction did.
struct Committed {
    results: Vec<Processed>,
    written: Written,
    deadlines: Vec<Deadline>,
    /// Agents registered by heartbeat (new in the database).
    registered: Vec<(String, String)>,
    /// Agents the cache did not hold.
    learned: Vec<(String, String)>,
    statements: usize,
    spans: Vec<engine::spans::Span>,
    times: StageTimes,
}

impl Committed {
    fn merge_into(self, out: &mut BatchOutput, offset: usize) {
        for (i, r) in self.results.into_iter().enumerate() {
            if let Some(slot) = out.results.get_mut(offset + i) {
                *slot = r;
            }
        }
        for c in &self.written.clocks {
            if c.status != "armed" {
                continue;
            }
            out.deadlines.push(Deadline {
                at: c.due_at,
                kind: DeadlineKind::Breach,
                id: c.id,
            });
            if let Some(at) = c.warn_at {
                out.deadlines.push(Deadline {
                    at,
                    kind: DeadlineKind::Warning,
                    id: c.id,
                });
            }
        }
        out.deadlines.extend(self.deadlines);
        out.queued.extend(self.written.queued);
        out.registered.extend(self.registered);
        out.learned.extend(self.learned);
        out.commits += 1;
        out.statements += self.statements;
        out.spans.extend(self.spans);
        out.times.add(&self.times);
    }
}

/// One transaction: claim, load, decide, write, commit.
async fn commit(ctx: &Context<'_>, inputs: &[Input<'_>]) -> db::Result<Committed> {
    let started = Instant::now();
    let mut tx = ctx.pool.begin().await?;
    let begin = started.elapsed();
    let mut committed = stage(ctx, &mut tx, inputs, ctx.clock.now()).await?;
    crate::failpoint::stall(crate::failpoint::BEFORE_COMMIT).await;
    let committing = Instant::now();
    tx.commit().await?;
    committed.times.begin = begin;
    committed.times.commit = committing.elapsed();
    Ok(committed)
}

/// Applies deliveries inside a transaction the caller owns and does not commit: for
/// tests that stop a batch where a crash would (before its commit), and for the CLI's
/// `dead-letter replay --dry-run`, which rolls it back.
pub async fn apply_uncommitted(
    ctx: &Context<'_>,
    conn: &mut Conn,
    deliveries: &[Inbound<'_>],
    now: DateTime<Utc>,
) -> db::Result<Vec<Processed>> {
    let admitted = admit(ctx, deliveries, now);
    let inputs = delivered(deliveries, &admitted);
    Ok(stage(ctx, conn, &inputs, now).await?.results)
}

/// Deliveries with what admission made of each, as a batch applies them.
pub fn delivered<'a>(deliveries: &[Inbound<'a>], admitted: &'a [Admission]) -> Vec<Input<'a>> {
    deliveries
        .iter()
        .zip(admitted)
        .map(|(d, a)| Input::Delivery(*d, a))
        .collect()
}

/// What applying `deliveries` would do, and nothing written: the claim and the locks
/// are taken (the caller rolls them back), no row is inserted (so no id of a sequence
/// is used up), and a rejection is not logged as one. `dead-letter replay --dry-run`.
pub async fn dry_run(
    ctx: &Context<'_>,
    conn: &mut Conn,
    deliveries: &[Inbound<'_>],
    now: DateTime<Utc>,
) -> db::Result<Vec<Processed>> {
    let admitted = admit(ctx, deliveries, now);
    let inputs = delivered(deliveries, &admitted);
    Ok(decide(ctx, conn, &inputs, now, Mode::DryRun).await?.results)
}

/// Whether a decision will be written, or only reported.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Apply,
    DryRun,
}

/// What [`decide`] made of a batch.
struct Decided {
    results: Vec<Processed>,
    finished: engine::Finished,
    /// Statements the reads took.
    statements: usize,
    /// The claim's, the reads' and the decisions' times.
    times: StageTimes,
}

/// Claims, locks and loads what the inputs need and applies them: the results and the
/// rows to write.
async fn decide(
    ctx: &Context<'_>,
    conn: &mut Conn,
    inputs: &[Input<'_>],
    now: DateTime<Utc>,
    mode: Mode,
) -> db::Result<Decided> {
    let mut times = StageTimes::default();
    let received = engine::message_ids(inputs);
    let needs = ctx
        .processor
        .needs(inputs, &engine::AgentView::new(ctx.agents.clone()));
    let mut wf_ids: Vec<&str> = needs.workflow_ids.iter().map(String::as_str).collect();
    wf_ids.sort_unstable();
    wf_ids.dedup();
    let started = Instant::now();
    let claimed = batch::claim_and_lock(
        conn,
        &received,
        ctx.instance,
        &wf_ids,
        ctx.audit_chain.as_deref(),
    )
    .await?;
    times.claim = started.elapsed();
    let reading = Instant::now();
    let mut statements_read = needs.statements();
    let audit_head = audit_head(ctx, conn, claimed.audit_head, &mut statements_read).await?;
    let loaded = batch::load(conn, &needs, claimed.locked, audit_head).await?;
    times.read = reading.elapsed();
    let deciding = Instant::now();
    let mut b = Batch::new(
        ctx.processor,
        loaded,
        claimed.claims,
        ctx.agents.clone(),
        now,
    );
    if mode == Mode::DryRun {
        b = b.quiet();
    }
    let results: Vec<Processed> = inputs.iter().map(|i| b.apply(*i)).collect();
    let finished = b.finish();
    times.decide = deciding.elapsed();
    Ok(Decided {
        results,
        finished,
        statements: statements_read,
        times,
    })
}

/// The audit chain's locked head: as the claim found it, or created the first time
/// the chain is appended to.
async fn audit_head(
    ctx: &Context<'_>,
    conn: &mut Conn,
    found: Option<audit::Head>,
    statements: &mut usize,
) -> db::Result<Option<audit::Head>> {
    match (&ctx.audit_chain, found) {
        (Some(chain), None) => {
            *statements += 2;
            Ok(Some(db::audit::lock_new_head(conn, chain).await?))
        }
        (_, found) => Ok(found),
    }
}

/// Everything but the commit.
async fn stage(
    ctx: &Context<'_>,
    conn: &mut Conn,
    inputs: &[Input<'_>],
    now: DateTime<Utc>,
) -> db::Result<Committed> {
    let Decided {
        results,
        finished,
        statements: statements_read,
        mut times,
    } = decide(ctx, conn, inputs, now, Mode::Apply).await?;
    let registrations = finished.writes.registrations.clone();
    let statements_written = finished.writes.statements();
    let writing = Instant::now();
    let mut writes = finished.writes;
    let spans = std::mem::take(&mut writes.spans);
    ctx.cipher.seal_rows(&mut writes);
    let written = batch::write(conn, writes, ctx.publish_after).await?;
    times.write = writing.elapsed();
    let registered = registrations
        .into_iter()
        .filter(|(id, _)| written.registered.contains(id))
        .collect();
    Ok(Committed {
        results,
        written,
        deadlines: finished.deadlines,
        registered,
        learned: finished.agents,
        statements: statements_read + statements_written,
        spans,
        times,
    })
}

/// Sets a message aside in a transaction of its own: claimed (so a redelivery is a
/// duplicate), kept whole in `dead_letters` as `processing_failed`, its sender told.
async fn set_aside(
    ctx: &Context<'_>,
    d: Inbound<'_>,
    admission: &Admission,
    error: &db::Error,
) -> Result<Committed, Retry> {
    let now = ctx.clock.now();
    tracing::error!(
        message_id = admission.message_id().unwrap_or(""),
        error = %error,
        "the database refused this message on every attempt; it is set aside in dead_letters as processing_failed"
    );
    let attempt = |minimal: bool| {
        async move {
            let mut tx = ctx.pool.begin().await?;
            let id = admission.message_id();
            let c = batch::claim_and_lock(
                &mut tx,
                &engine::Received::of(&Input::Delivery(d, admission)),
                ctx.instance,
                &[],
                ctx.audit_chain.as_deref(),
            )
            .await?;
            let claimed = id.is_none_or(|id| c.claims.claimed.contains(id));
            let mut statements = 1;
            let head = audit_head(ctx, &mut tx, c.audit_head, &mut statements).await?;
            let mut result = Processed::new(engine::Outcome::Duplicate);
            let mut written = Written::default();
            if claimed {
                let mut w = engine::set_aside(
                    ctx.processor,
                    d,
                    admission,
                    &error.to_string(),
                    ctx.retry.max_attempts,
                    now,
                );
                if minimal {
                    // The dead letter itself was refused: keep the bytes, drop the rest.
                    for dl in &mut w.dead_letters {
                        dl.body_json = None;
                        dl.properties = serde_json::json!({});
                        dl.detail = dl.detail.chars().filter(char::is_ascii).collect();
                    }
                }
                result = Processed::new(engine::Outcome::Rejected(
                    protocol::reject::Reason::ProcessingFailed,
                ));
                result.detail = Some(error.to_string());
                let entry = engine::audit_entry(Input::Delivery(d, admission), &result);
                w.audit(head.as_ref(), now, vec![entry]);
                ctx.cipher.seal_rows(&mut w);
                written = batch::write(&mut tx, w, ctx.publish_after).await?;
            }
            tx.commit().await?;
            Ok::<_, db::Error>(Committed {
                results: vec![result],
                written,
                deadlines: Vec::new(),
                registered: Vec::new(),
                learned: Vec::new(),
                statements: statements + 3,
                spans: Vec::new(),
                times: StageTimes::default(),
            })
        }
    };
    match attempt(false).await {
        Ok(c) => Ok(c),
        Err(e) if e.fault() == Fault::Input => attempt(true).await.map_err(Retry),
        Err(e) => Err(Retry(e)),
    }
}

/// How long a batch's own publisher has its outbox rows before the relay takes them.
pub fn publish_after(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    add(now, lease)
}

/// Agents' keys as stored, the ones that are keys (the table holds 32 bytes each).
fn public_keys(
    rows: Vec<(String, String, Vec<u8>)>,
) -> impl Iterator<Item = (String, String, protocol::signing::VerifyingKey)> {
    rows.into_iter().filter_map(|(agent, key_id, bytes)| {
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        let key = protocol::signing::VerifyingKey::from_bytes(&bytes).ok()?;
        Some((agent, key_id, key))
    })
}

/// The agent cache, reloaded first when it is stale.
pub async fn agents(shared: &Shared) -> db::Result<Arc<Agents>> {
    if shared.agents.is_stale(Instant::now()) {
        let mut conn = shared.pool.acquire().await?;
        let rows = db::store::all_agents(&mut conn).await?;
        let keys = db::store::agent_keys(&mut conn).await?;
        shared.agents.replace(
            Agents::from_rows(rows).with_keys(public_keys(keys)),
            Instant::now(),
        );
    }
    Ok(shared.agents.snapshot())
}
