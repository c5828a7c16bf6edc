//! The bench agents: `per_role` agents of each role of the happy path, each its own
//! identity (`bench-{role}-{k}`), connection and queues, as the source documents'
//! scenarios count them (10, 50, 100 agents). Tasks are routed by role, so every agent
//! of a role receives a copy of each task; the agents of a role agree who takes which
//! workflow (the one whose number is the workflow's hash modulo `per_role`, as
//! docs/agents.md suggests) and ack the other copies. An agent that takes a task
//! publishes the replies the protocol expects, waits for the broker to confirm them,
//! and only then acks the task — as a careful agent would — working on the tasks it
//! has prefetched concurrently, so waiting for confirms does not make the bench agents
//! the bottleneck.
//!
//! Every message carries `t` (when it was published, [`now_ns`]) and `t0` (when its
//! workflow started) in `payload.data`. The coordinator copies the causing message's
//! data into the task it sends, so the receiving agent measures the handoff latency
//! without any shared bookkeeping.

use std::sync::Arc;

use chrono::Utc;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::stats::{now_ns, Counters, Recorder};
use agent::connect;
use protocol::envelope::Envelope;
use protocol::names::queues::{self, ONCALL as ONCALL_QUEUE};
use protocol::names::roles::{DEVOPS, ENGINEERING, MARKETING, PRODUCT, QA};

/// The roles the happy path needs.
pub const ROLES: [&str; 5] = [PRODUCT, ENGINEERING, QA, DEVOPS, MARKETING];

/// Agent messages in one workflow of the happy path (requirements_ready and the replies).
pub const MESSAGES_PER_WORKFLOW: u64 = 11;

/// The `k`-th bench agent of a role.
pub fn agent_id(role: &str, k: usize) -> String {
    format!("bench-{role}-{k}")
}

/// Every agent of a team of `per_role` agents per role, with its role: what must be
/// registered before the team starts.
pub fn agents(per_role: usize) -> Vec<(String, &'static str)> {
    ROLES
        .iter()
        .flat_map(|role| (0..per_role.max(1)).map(move |k| (agent_id(role, k), *role)))
        .collect()
}

/// Registers every agent of a team of `per_role` agents per role (queues declared), as
/// `coordinator agent add` does.
/// With sender authentication on (production), each agent is also given a broker user
/// of its own, as `coordinator agent add --credentials` gives one: the logins returned.
pub async fn register(
    settings: &coordinator::settings::Settings,
    pool: &sqlx::PgPool,
    per_role: usize,
) -> Result<Logins, coordinator::service::ops::Error> {
    let ops = coordinator::service::ops::Ops::new(settings, pool, &coordinator::clock::SystemClock);
    let mut logins = Logins::default();
    let signed = settings.security.signatures != coordinator::engine::SignatureMode::Off;
    for (id, role) in agents(per_role) {
        ops.add_agent(&id, role, "loadgen").await?;
        if settings.security.authenticate_senders {
            let password = ops.add_agent_credentials(&id, role, "loadgen").await?;
            logins.own.insert(id.clone(), password);
        }
        if signed {
            let key = protocol::signing::generate();
            let public = protocol::signing::encode_public(&key.verifying_key());
            let (key_id, _) = ops
                .add_agent_key(&id, &public, None, None, "loadgen")
                .await?;
            let signer = protocol::signing::Signer::new(key, key_id);
            logins.keys.insert(id, Arc::new(signer));
        }
    }
    Ok(logins)
}

/// How the team's agents log in to the broker: all as the URL's user, or each as its
/// own broker user, publishing with the AMQP `user_id` set to its agent id; and, where
/// signatures are checked, the key each signs with.
#[derive(Debug, Clone, Default)]
pub struct Logins {
    own: std::collections::HashMap<String, String>,
    keys: std::collections::HashMap<String, Arc<protocol::signing::Signer>>,
}

impl Logins {
    /// Where agent `id` connects: `url`, as its own user when it has one.
    fn url(&self, url: &str, id: &str) -> String {
        match self.own.get(id) {
            Some(password) => coordinator::settings::with_login(url, id, password),
            None => url.to_string(),
        }
    }

    /// How agent `id` publishes.
    fn voice(&self, id: &str) -> Voice {
        Voice {
            authenticated: self.own.contains_key(id),
            signer: self.keys.get(id).cloned(),
        }
    }

    /// Deletes the agents' own broker users (users are not per vhost: they outlive it).
    pub async fn remove(&self, settings: &coordinator::settings::Settings) {
        let Ok(management) = coordinator::amqp::management::Management::new(&settings.amqp) else {
            return;
        };
        for id in self.own.keys() {
            let _ = management.delete_user(id).await;
        }
    }
}

/// Which of a role's `per_role` agents takes a workflow's tasks.
pub fn owner(workflow_id: &str, per_role: usize) -> usize {
    use std::hash::{Hash, Hasher};
    // FNV-1a: the same answer in every process, unlike the standard library's hasher.
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    workflow_id.hash(&mut h);
    (h.finish() % per_role.max(1) as u64) as usize
}

struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// What an agent of `role` publishes on receiving `task`, in order.
pub fn replies(role: &str, task: &str) -> &'static [&'static str] {
    match (role, task) {
        (ENGINEERING, "requirements_handoff") => &[
            "handoff_acknowledged",
            "sprint_initialized",
            "feature_completed",
        ],
        (QA, "feature_handoff") => &[
            "handoff_acknowledged",
            "testing_started",
            "release_approved",
        ],
        (DEVOPS, "release_handoff") => &[
            "handoff_acknowledged",
            "deployment_started",
            "deployment_completed",
            "validation_completed",
        ],
        _ => &[],
    }
}

/// Messages whose arrival ends a handoff.
fn ends_handoff(message_type: &str) -> bool {
    matches!(
        message_type,
        "requirements_handoff" | "feature_handoff" | "release_handoff" | "feature_deployed"
    )
}

/// Message ids of the tasks an agent has handled.
#[derive(Debug, Clone, Default)]
struct Seen(Arc<std::sync::Mutex<std::collections::HashSet<String>>>);

impl Seen {
    /// True the first time an id is seen.
    fn first(&self, message_id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(message_id.to_string())
    }
}

pub struct Team {
    conns: Vec<Connection>,
    tasks: Vec<JoinHandle<()>>,
    /// One per product agent, in agent order: who starts a workflow is its owner.
    starters: Vec<mpsc::UnboundedSender<String>>,
}

impl Team {
    /// Connects `per_role` agents of each role ([`agents`]), each consuming its own
    /// queues. Every completed workflow is reported on `done`. The agents must be
    /// registered (queues declared).
    pub async fn start(
        url: &str,
        logins: &Logins,
        per_role: usize,
        prefetch: u16,
        rec: Arc<Recorder>,
        done: mpsc::UnboundedSender<()>,
    ) -> Result<Team, lapin::Error> {
        let per_role = per_role.max(1);
        let mut team = Team {
            conns: Vec::new(),
            tasks: Vec::new(),
            starters: Vec::new(),
        };
        for (role, k) in ROLES
            .iter()
            .flat_map(|r| (0..per_role).map(move |k| (*r, k)))
        {
            let id = agent_id(role, k);
            let conn = connect(&logins.url(url, &id), &id).await?;
            let voice = logins.voice(&id);
            let ch = confirm_channel(&conn).await?;
            ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
            let consumer = consume(&ch, &queues::tasks(&id), &id).await?;
            let me = Me {
                role,
                agent_id: id.clone(),
                k,
                per_role,
                voice: voice.clone(),
            };
            let finished = (role == PRODUCT).then(|| done.clone());
            team.tasks.push(tokio::spawn(serve_tasks(
                me,
                ch,
                consumer,
                rec.clone(),
                finished,
                Seen::default(),
            )));
            if role == PRODUCT {
                let ch = confirm_channel(&conn).await?;
                let (tx, rx) = mpsc::unbounded_channel();
                team.starters.push(tx);
                team.tasks.push(tokio::spawn(starter(
                    ch,
                    id.clone(),
                    voice,
                    rx,
                    rec.clone(),
                )));
            }
            // What agents only observe: other roles' events and notices to this agent.
            let ch = conn.create_channel().await?;
            ch.basic_qos(500, BasicQosOptions::default()).await?;
            let events = consume(&ch, &queues::events(&id), &format!("{id}-events")).await?;
            let commands = consume(&ch, &queues::commands(&id), &format!("{id}-commands")).await?;
            let r = rec.clone();
            team.tasks.push(tokio::spawn(drain(events, move |_| {
                Counters::inc(&r.counters.events)
            })));
            let r = rec.clone();
            team.tasks.push(tokio::spawn(drain(commands, move |env| {
                if env.is_some_and(|e| e.header.message_type == "message_rejected") {
                    Counters::inc(&r.counters.rejected)
                }
            })));
            team.conns.push(conn);
        }
        // The on-call pager is on-call tooling, not an agent: it reads as the URL's user.
        let conn = connect(url, "bench-oncall").await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(500, BasicQosOptions::default()).await?;
        let oncall = consume(&ch, ONCALL_QUEUE, "bench-oncall").await?;
        let r = rec.clone();
        team.tasks.push(tokio::spawn(drain(oncall, move |_| {
            Counters::inc(&r.counters.escalations)
        })));
        team.conns.push(conn);
        Ok(team)
    }

    /// Starts a workflow: the product agent that owns it publishes `requirements_ready`.
    pub fn start_workflow(&self, workflow_id: String) {
        let k = owner(&workflow_id, self.starters.len());
        if let Some(tx) = self.starters.get(k) {
            let _ = tx.send(workflow_id);
        }
    }

    pub async fn close(self) {
        drop(self.starters);
        for t in &self.tasks {
            t.abort();
        }
        for c in self.conns {
            let _ = c.close(200, "bench done").await;
        }
    }
}

/// One bench agent: its role, identity, and place among its role's agents.
struct Me {
    role: &'static str,
    agent_id: String,
    k: usize,
    per_role: usize,
    voice: Voice,
}

/// How an agent publishes: with `user_id` (connected as its own broker user), signed.
#[derive(Debug, Clone, Default)]
pub struct Voice {
    pub authenticated: bool,
    pub signer: Option<Arc<protocol::signing::Signer>>,
}

async fn confirm_channel(conn: &Connection) -> Result<Channel, lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

async fn consume(ch: &Channel, queue: &str, tag: &str) -> Result<Consumer, lapin::Error> {
    ch.basic_consume(
        queue,
        tag,
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// Publishes as an agent does: `agent.topic`, `{agent_type}.{message_type}`, persistent,
/// properties repeating the header; as `voice` says: with `user_id` the sending agent
/// (connected as its own broker user), signed.
pub async fn publish(
    channel: &Channel,
    env: &Envelope,
    voice: &Voice,
) -> Result<PublisherConfirm, agent::AgentError> {
    let user_id = voice
        .authenticated
        .then_some(env.header.source.agent_id.as_str());
    agent::publish_envelope(channel, env, voice.signer.as_deref(), user_id).await
}

fn confirmed(c: Result<Confirmation, lapin::Error>) -> bool {
    matches!(c, Ok(Confirmation::Ack(_)) | Ok(Confirmation::NotRequested))
}

/// Handles the tasks of one agent concurrently (up to its prefetch): each is acked once
/// its replies are confirmed.
async fn serve_tasks(
    me: Me,
    channel: Channel,
    mut consumer: Consumer,
    rec: Arc<Recorder>,
    done: Option<mpsc::UnboundedSender<()>>,
    seen: Seen,
) {
    let mut handling = FuturesUnordered::new();
    loop {
        tokio::select! {
            delivery = consumer.next() => {
                let Some(Ok(delivery)) = delivery else { break };
                handling.push(handle_task(&me, &channel, delivery, &rec, done.as_ref(), &seen));
            }
            Some(()) = handling.next() => {}
        }
    }
    while handling.next().await.is_some() {}
}

async fn handle_task(
    me: &Me,
    channel: &Channel,
    delivery: lapin::message::Delivery,
    rec: &Recorder,
    done: Option<&mpsc::UnboundedSender<()>>,
    seen: &Seen,
) {
    let c = &rec.counters;
    let (role, agent_id) = (me.role, me.agent_id.as_str());
    let env: Envelope = match serde_json::from_slice(&delivery.data) {
        Ok(e) => e,
        Err(_) => {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            return;
        }
    };
    // Another agent of this role takes this workflow: its copy is acked and left.
    if owner(&env.header.correlation_id, me.per_role) != me.k {
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        return;
    }
    // The coordinator sends at least once, with stable message ids: a task seen
    // before is acked and skipped.
    if !seen.first(&env.header.message_id) {
        Counters::inc(&c.redelivered);
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        return;
    }
    let mt = env.header.message_type.as_str();
    let data = &env.payload.data;
    let t = data.get("t").and_then(Value::as_u64);
    let t0 = data.get("t0").and_then(Value::as_u64);
    if ends_handoff(mt) {
        Counters::inc(&c.tasks);
        if let (true, Some(t)) = (rec.recording(), t) {
            rec.handoff.record_since(t);
        }
    } else {
        Counters::inc(&c.notices);
    }
    if role == PRODUCT && mt == "feature_deployed" {
        Counters::inc(&c.completed);
        if let (true, Some(t0)) = (rec.recording(), t0) {
            rec.workflow.record_since(t0);
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
    let mut confirms = Vec::new();
    for reply in replies(role, mt) {
        let data = json!({"t": now_ns(), "t0": t0});
        let mut e = Envelope::from_agent(
            agent_id,
            role,
            reply,
            &env.header.correlation_id,
            data,
            Utc::now(),
        );
        e.header.message_id = reply_id(&env.header.message_id, reply);
        match publish(channel, &e, &me.voice).await {
            Ok(confirm) => confirms.push(confirm),
            Err(_) => Counters::inc(&c.publish_failures),
        }
    }
    for confirm in confirms {
        if confirmed(confirm.await) {
            Counters::inc(&c.published);
        } else {
            Counters::inc(&c.publish_failures);
        }
    }
    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
}

/// The message id of an agent's reply to a task: derived from the task's id, so that
/// a task handled again (redelivered after the agent's connection dropped) sends the
/// same ids, and the coordinator applies each reply once.
pub fn reply_id(task_message_id: &str, reply: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{task_message_id}/{reply}").as_bytes(),
    )
    .to_string()
}

/// Publishes `requirements_ready` for every workflow id received, confirms awaited
/// concurrently.
async fn starter(
    channel: Channel,
    agent_id: String,
    voice: Voice,
    mut rx: mpsc::UnboundedReceiver<String>,
    rec: Arc<Recorder>,
) {
    let c = &rec.counters;
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            wf = rx.recv(), if open => {
                let Some(wf) = wf else { open = false; continue };
                let t = now_ns();
                let data = json!({"epic_id": format!("EPIC-{wf}"), "title": "bench", "t": t, "t0": t});
                let e = Envelope::from_agent(&agent_id, PRODUCT, "requirements_ready", &wf, data, Utc::now());
                match publish(&channel, &e, &voice).await {
                    Ok(confirm) => pending.push(async move { (wf, confirm.await) }),
                    Err(_) => Counters::inc(&c.publish_failures),
                }
            }
            Some((wf, res)) = pending.next() => {
                if confirmed(res) {
                    Counters::inc(&c.started);
                    Counters::inc(&c.published);
                    rec.started_ids.lock().unwrap_or_else(|e| e.into_inner()).push(wf);
                } else {
                    Counters::inc(&c.publish_failures);
                }
            }
        }
    }
}

/// Acks everything on a queue, calling `seen` with each message (parsed if it is an
/// envelope).
async fn drain(mut consumer: Consumer, seen: impl Fn(Option<Envelope>)) {
    while let Some(Ok(d)) = consumer.next().await {
        seen(serde_json::from_slice(&d.data).ok());
        let _ = d.acker.ack(BasicAckOptions::default()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_happy_path_is_eleven_agent_messages() {
        let sent: usize = [
            (ENGINEERING, "requirements_handoff"),
            (QA, "feature_handoff"),
            (DEVOPS, "release_handoff"),
        ]
        .iter()
        .map(|(r, t)| replies(r, t).len())
        .sum();
        assert_eq!(1 + sent as u64, MESSAGES_PER_WORKFLOW);
        assert!(replies(PRODUCT, "feature_deployed").is_empty());
    }

    #[test]
    fn every_workflow_has_one_owner_among_its_roles_agents_and_the_work_spreads() {
        assert_eq!(agents(10).len(), 50);
        assert_eq!(agents(2)[1], (agent_id(PRODUCT, 1), PRODUCT));
        let mut per_agent = [0u32; 10];
        for i in 0..10_000 {
            let wf = format!("peak-1a2b3c-{i}");
            let k = owner(&wf, 10);
            assert_eq!(k, owner(&wf, 10), "stable");
            per_agent[k] += 1;
        }
        assert!(
            per_agent.iter().all(|n| (800..1200).contains(n)),
            "{per_agent:?}"
        );
        assert_eq!(owner("anything", 1), 0);
    }

    #[test]
    fn a_task_handled_twice_gets_replies_with_the_same_ids() {
        assert_eq!(
            reply_id("t-1", "sprint_initialized"),
            reply_id("t-1", "sprint_initialized")
        );
        assert_ne!(
            reply_id("t-1", "sprint_initialized"),
            reply_id("t-1", "feature_completed")
        );
        assert_ne!(
            reply_id("t-1", "sprint_initialized"),
            reply_id("t-2", "sprint_initialized")
        );
    }
}
