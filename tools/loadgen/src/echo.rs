//! The echo: a stateless stand-in for the coordinator, run by the bench beside every
//! run as this machine's ceiling for the workload (`loadgen echo`, a child process so
//! that its CPU is counted apart from the agents').
//!
//! It consumes the coordinator's inbox partitions, applies each agent message to its
//! workflow's state machine held in memory — the coordinator's own definitions and pure
//! [`workflow::decide`] — and publishes the tasks and notices the decision names as the
//! coordinator writes them ([`caused_to_role`]: the same ids, routing keys, tracing
//! member and the cause's data, so the agents measure handoffs alike), then acks what it
//! applied once the broker has confirmed what it sent. What it leaves out is what the
//! coordinator adds to that: the database (nothing is stored, so a crash loses
//! everything), admission (identity, signatures, rate limits), the audit chain, timers.
//!
//! Each partition is a task of its own with the workflows whose messages it receives
//! (the inbox hashes by correlation id, so a workflow's messages share a partition and a
//! follow-on starts where its parent is).

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures_util::future::try_join_all;

use coordinator::amqp::publisher::Publisher;
use coordinator::amqp::{Connection, Consumer};
use coordinator::domain::definition::{Definition, Definitions};
use coordinator::domain::effect::{ClockRef, Effect};
use coordinator::domain::sla::{ArmedClock, ClockDurations};
use coordinator::domain::workflow::{self, Decision, Input, Snapshot};
use coordinator::domain::{ids, trace};
use coordinator::engine::messages::{caused_to_role, traced};
use coordinator::engine::rows::{OutboxMessage, Queued};
use coordinator::settings::Settings;
use protocol::envelope::Envelope;

/// The workflows of one partition, in memory.
pub struct Workflows {
    defs: Definitions,
    durations: ClockDurations,
    running: HashMap<String, Running>,
}

struct Running {
    def: &'static Definition,
    state: &'static str,
    round: i32,
    armed: Vec<ArmedClock>,
}

impl Workflows {
    pub fn new(settings: &Settings) -> Workflows {
        Workflows {
            defs: settings.workflows.clone(),
            durations: settings.clock_durations(),
            running: HashMap::new(),
        }
    }

    /// The messages the coordinator sends on applying `env`: none where it would reject
    /// or only observe it. A workflow is forgotten once final.
    pub fn apply(&mut self, env: &Envelope, now: DateTime<Utc>) -> Vec<OutboxMessage> {
        let h = &env.header;
        let wf = h.correlation_id.as_str();
        let mut out = Vec::new();
        let Some(r) = self.running.get(wf) else {
            if let Some(def) = self.defs.started_by(&h.message_type) {
                let d = workflow::start(def, now, &self.durations);
                self.record(env, wf, def, d, now, &mut out);
            }
            return out;
        };
        let (def, from) = (r.def, r.state);
        let snap = Snapshot {
            state: r.state,
            round: r.round,
            armed: r.armed.clone(),
        };
        let input = Input {
            message_type: &h.message_type,
            sender_role: &h.source.agent_type,
        };
        let Ok(d) = workflow::decide(def, &snap, input, now, &self.durations) else {
            return out;
        };
        let to = d.state;
        self.record(env, wf, def, d, now, &mut out);
        if to != from {
            let follow_ons: Vec<_> = self.defs.following(def.name, to).collect();
            for (child, after) in follow_ons {
                let id = ids::follow_on(wf, child.name);
                if !self.running.contains_key(&id) {
                    let d = workflow::follow(child, after, now, &self.durations);
                    self.record(env, &id, child, d, now, &mut out);
                }
            }
        }
        out
    }

    /// Applies a decision to workflow `wf` and adds the messages it sends to `out`.
    fn record(
        &mut self,
        env: &Envelope,
        wf: &str,
        def: &'static Definition,
        d: Decision,
        now: DateTime<Utc>,
        out: &mut Vec<OutboxMessage>,
    ) {
        let r = self.running.entry(wf.to_string()).or_insert(Running {
            def,
            state: d.state,
            round: d.round,
            armed: Vec::new(),
        });
        r.state = d.state;
        r.round = d.round;
        let root = self.defs.root_of(wf);
        let span = trace::applying(root, &env.header.message_id);
        let parent = trace::root(root).span_id;
        for effect in &d.effects {
            let (kind, message_type, role) = match effect {
                Effect::SendTask { task, to_role } => ("task", *task, *to_role),
                Effect::Notify {
                    message_type,
                    to_role,
                } => ("notify", *message_type, *to_role),
                Effect::ArmClock {
                    clock,
                    owner_role,
                    subject_agent_id,
                    round,
                    ..
                } => {
                    r.armed.push(ArmedClock {
                        clock: clock.to_string(),
                        round: *round,
                        owner_role: owner_role.clone(),
                        subject_agent_id: subject_agent_id.clone(),
                    });
                    continue;
                }
                Effect::MeetClock(c) | Effect::CancelClock(c) => {
                    r.armed.retain(|a| ClockRef::from(a) != *c);
                    continue;
                }
                // Emergencies and escalations are not the bench's workload.
                Effect::Broadcast { .. } | Effect::MoveClock { .. } | Effect::Escalate { .. } => {
                    continue
                }
            };
            let key = format!("{kind}:{message_type}:{role}");
            let mut m = caused_to_role(env, wf, d.state, d.round, message_type, role, &key, now);
            traced(&mut m, &span, Some(parent));
            out.push(m);
        }
        if def.is_terminal(d.state) {
            self.running.remove(wf);
        }
    }
}

/// Serves the inbox of `settings` (its URL, partitions, prefetch and batch size) until
/// the connection fails: every partition consumed by a task of its own.
pub async fn serve(settings: &Settings) -> anyhow::Result<()> {
    let conn = coordinator::amqp::connect_to(&settings.amqp, "loadgen-echo")
        .await
        .context("the echo could not connect to RabbitMQ")?;
    let partitions = (0..settings.inbox.partitions).map(|p| partition(&conn, settings, p));
    try_join_all(partitions).await?;
    Ok(())
}

/// One partition: a batch of the deliveries at hand (at most `inbox.batch_size`),
/// applied, the messages they cause published and confirmed, then the batch acked.
async fn partition(conn: &Connection, settings: &Settings, p: u32) -> anyhow::Result<()> {
    let queue = settings.inbox.queue(p);
    let mut consumer = Consumer::open(conn, &queue, &format!("echo-{p}"), settings.inbox.prefetch)
        .await
        .with_context(|| format!("consuming {queue}"))?;
    let publisher = Publisher::open(conn, settings.amqp.confirm_timeout).await?;
    let mut workflows = Workflows::new(settings);
    let batch_size = settings.inbox.batch_size.max(1);
    while let Some(first) = consumer.next().await {
        let mut batch = vec![first?];
        while batch.len() < batch_size {
            match consumer.next_ready() {
                Some(d) => batch.push(d?),
                None => break,
            }
        }
        let now = Utc::now();
        let mut out: Vec<Queued> = Vec::new();
        for d in &batch {
            if let Ok(env) = serde_json::from_slice::<Envelope>(&d.body) {
                for message in workflows.apply(&env, now) {
                    let id = out.len() as i64;
                    out.push(Queued { id, message });
                }
            }
        }
        let published = publisher.publish(&out, |_| 0).await?;
        if let Some(f) = published.failed.first() {
            anyhow::bail!("the broker did not take a message the echo sent: {}", f.why);
        }
        if let Some(last) = batch.last() {
            last.ack_through().await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::team::{agent_id, replies, ROLES};
    use protocol::names::roles::{DEVOPS, ENGINEERING, MARKETING, PRODUCT, QA};
    use serde_json::json;

    fn settings() -> Settings {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        Settings::load_with(&dir, None, &[]).expect("the shipped settings load")
    }

    fn from(role: &str, message_type: &str, wf: &str, data: serde_json::Value) -> Envelope {
        Envelope::from_agent(&agent_id(role, 0), role, message_type, wf, data, Utc::now())
    }

    fn role_of(m: &OutboxMessage) -> &str {
        m.routing_key.trim_start_matches("task.")
    }

    #[test]
    fn a_start_sends_the_first_task_with_the_causes_data_as_the_coordinator_writes_it() {
        let mut w = Workflows::new(&settings());
        let data = json!({"epic_id": "EPIC-1", "title": "t", "t": 7, "t0": 7});
        let start = from(PRODUCT, "requirements_ready", "wf-1", data.clone());
        let out = w.apply(&start, Utc::now());
        let tasks: Vec<&OutboxMessage> = out
            .iter()
            .filter(|m| m.message_type == "requirements_handoff")
            .collect();
        assert_eq!(tasks.len(), 1, "{out:?}");
        assert_eq!(role_of(tasks[0]), ENGINEERING);
        assert_eq!(
            tasks[0].message_id,
            ids::derived(
                &start.header.message_id,
                &format!("task:requirements_handoff:{ENGINEERING}")
            )
        );
        let sent: Envelope = serde_json::from_slice(&tasks[0].body).expect("an envelope");
        assert_eq!(sent.payload.data, data);
        assert!(sent.header.tracing.is_some());
        assert_eq!(w.running.len(), 1);
        // The same start again is a decision on a running workflow: refused, nothing sent.
        assert!(w.apply(&start, Utc::now()).is_empty());
    }

    /// The bench's agents' replies, played through: every handoff reaches the role the
    /// team expects, feature_deployed reaches product, the follow-on starts, and the
    /// workflow is forgotten once final.
    #[test]
    fn the_happy_path_reaches_every_role_and_ends_forgotten() {
        let mut w = Workflows::new(&settings());
        let mut queue = vec![from(
            PRODUCT,
            "requirements_ready",
            "wf-2",
            json!({"epic_id": "E", "title": "t"}),
        )];
        let mut received: Vec<(String, String)> = Vec::new();
        while let Some(env) = queue.pop() {
            for m in w.apply(&env, Utc::now()) {
                let task: Envelope = serde_json::from_slice(&m.body).expect("an envelope");
                let role = role_of(&m).to_string();
                received.push((role.clone(), m.message_type.clone()));
                let Some(role) = ROLES.iter().find(|r| **r == role) else {
                    continue;
                };
                if task.header.correlation_id != "wf-2" {
                    continue;
                }
                for reply in replies(role, &m.message_type) {
                    queue.insert(0, from(role, reply, "wf-2", json!({})));
                }
            }
        }
        for (role, task) in [
            (ENGINEERING, "requirements_handoff"),
            (QA, "feature_handoff"),
            (DEVOPS, "release_handoff"),
            (PRODUCT, "feature_deployed"),
        ] {
            assert!(
                received.contains(&(role.to_string(), task.to_string())),
                "{role} got no {task}: {received:?}"
            );
        }
        assert!(
            received.iter().any(|(r, _)| r == MARKETING),
            "the launch handoff follow-on reached marketing: {received:?}"
        );
        assert!(
            !w.running.contains_key("wf-2"),
            "the completed workflow is forgotten"
        );
    }
}
