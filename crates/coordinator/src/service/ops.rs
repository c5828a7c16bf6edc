//! The operator's use cases: every state-changing command of the CLI is one function
//! here, and the CLI only parses its arguments and prints what comes back.
//!
//! What changes a workflow (close it, snooze or cancel a clock, acknowledge an
//! escalation, raise an emergency) is an operator's message (`engine::operator`)
//! applied by the batch pipeline: the same claim, locks, effect interpreter, write
//! statement and commit as an agent's message. Registering an agent and replaying or
//! resolving a dead letter change no workflow; they are transactions of their own
//! here. Errors are typed ([`Error`]): what was not found, what the coordinator refused
//! and why, a wrong argument, or the database or broker failing.

use crate::amqp::management::{AgentPermissions, Management, ManagementError};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use protocol::catalog::{valid_agent_id, Catalog};
use protocol::envelope::{DeliveryMeta, Envelope};
use protocol::names::exchanges;
use protocol::reject::Reason;
use serde_json::json;

use crate::amqp::publisher::{PublishError, Publisher};
use crate::amqp::topology::{Declarer, TopologyError};
use crate::amqp::{self, connect_to};
use crate::clock::Clock;
use crate::db::{self, read, store, Pool};
use crate::domain::workflow::Closing;
use crate::domain::{audit, emergency};
use crate::encryption::FieldCipher;
use crate::engine::escalations::Acknowledged;
use crate::engine::{admission, operator, Agents, Inbound, Outcome, Processed, Processor};
use crate::service::pipeline;
use crate::service::supervisor::{declare_fixed, DeclareError};
use crate::settings::Settings;

/// Why an operator's action did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What it names does not exist.
    #[error("no {what} {id} (list them with `coordinator {list}`)")]
    NotFound {
        what: &'static str,
        id: String,
        list: &'static str,
    },
    /// The coordinator refused it: the workflow, clock or escalation is not in a state
    /// that allows it.
    #[error("{0}")]
    Refused(String),
    /// An argument is wrong in a way the command line could not tell (it depends on the
    /// configuration).
    #[error("{0}")]
    Usage(String),
    #[error("the database failed")]
    Db(#[from] db::Error),
    #[error("could not set up the database")]
    Setup(#[from] db::SetupError),
    #[error("could not reach RabbitMQ (amqp.url){0}")]
    Broker(&'static str, #[source] amqp::Error),
    #[error("could not declare the agent's queues; the agent is not registered")]
    Topology(#[from] TopologyError),
    #[error("the replayed message was not confirmed; run the command again")]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Management(#[from] ManagementError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An agent registered (or found registered already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAdded {
    pub created: bool,
}

/// An agent revoked: whether it was registered, and whether it had a broker user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRemoved {
    pub registered: bool,
    pub user_deleted: bool,
}

/// A workflow an operator closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub from: String,
    pub to: String,
}

/// A clock an operator moved or cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockChanged {
    pub clock: String,
    pub workflow_id: String,
    /// The deadline it had.
    pub was_due: DateTime<Utc>,
}

/// An incident raised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raised {
    pub id: String,
    /// Acknowledgments awaited: one per registered agent but the raiser.
    pub awaited: i64,
}

/// What `agent show` reports.
#[derive(Debug)]
pub struct AgentShown {
    pub agent: read::AgentRow,
    pub keys: Vec<read::AgentKeyRow>,
    /// Whether the broker has a user of the agent's name, or why it could not say.
    pub broker_user: std::result::Result<bool, String>,
    /// Its three queues: ready messages and consumers (`None`: no such queue).
    pub queues: Vec<(String, Option<(u32, u32)>)>,
}

/// What replaying a dead letter would do (`dead-letter replay --dry-run`).
#[derive(Debug)]
pub struct DryRun {
    pub processed: Processed,
    /// Why it was refused.
    pub refused_as: String,
    /// The check a replay skips that refused it, and whether that check vouched for its
    /// sender (then a replay needs `--force` and a note).
    pub skips: Option<(&'static str, bool)>,
}

/// A dead letter published again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub id: i64,
    pub message_id: Option<String>,
    pub routing_key: String,
    /// When it had been replayed before, if it had.
    pub replayed_before: Option<DateTime<Utc>>,
    /// The message was applied since it was dead-lettered: this copy changes nothing.
    pub applied_before: bool,
    /// When it had been resolved, and the note: an operator had decided it needed
    /// nothing more.
    pub resolved_before: Option<(DateTime<Utc>, Option<String>)>,
}

/// What `dead-letter resolve` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The note it replaced, when it had been resolved before.
    pub replaced: Option<String>,
}

/// The operator's use cases, on one database and configuration.
pub struct Ops<'a> {
    settings: &'a Settings,
    pool: &'a Pool,
    clock: &'a dyn Clock,
    processor: Processor,
    cipher: FieldCipher,
}

impl<'a> Ops<'a> {
    pub fn new(settings: &'a Settings, pool: &'a Pool, clock: &'a dyn Clock) -> Ops<'a> {
        Ops {
            settings,
            pool,
            clock,
            processor: settings.processor(),
            // Validated with the settings: a bad key never gets this far.
            cipher: settings.cipher().unwrap_or_default(),
        }
    }

    /// Records an agent and declares its queues and bindings; both or neither: the
    /// registration commits only once the broker has declared the queues.
    pub async fn add_agent(
        &self,
        agent_id: &str,
        agent_type: &str,
        by: &str,
    ) -> Result<AgentAdded> {
        if !valid_agent_id(agent_id) {
            return Err(Error::Usage(format!(
                "invalid value {agent_id:?} for <AGENT_ID>: use 1-200 letters, digits, '.', '_' or '-'"
            )));
        }
        let catalog: Catalog = self.settings.catalog();
        if !catalog.is_role(agent_type) {
            let roles: Vec<&str> = catalog.roles().map(|(r, _)| r).collect();
            return Err(Error::Usage(format!(
                "invalid value {agent_type:?} for <AGENT_TYPE>: not a configured role; roles: {}",
                roles.join(", ")
            )));
        }
        db::migrate(self.pool).await?;
        let mut tx = self.pool.begin().await.map_err(db::Error::from)?;
        let created = store::register_agent(&mut tx, agent_id, agent_type, "cli").await?;
        if !created {
            let existing = store::agent_type(&mut tx, agent_id).await?;
            if existing.as_deref() != Some(agent_type) {
                return Err(Error::Refused(format!(
                    "agent {agent_id} is already registered as {}",
                    existing.unwrap_or_else(|| "?".into())
                )));
            }
        }
        let conn = connect_to(&self.settings.amqp, "coordinator-cli")
            .await
            .map_err(|e| Error::Broker("; the agent is not registered", e))?;
        let declared = async {
            let mut declarer = Declarer::new(&conn, &self.settings.amqp).await?;
            declare_fixed(
                &mut declarer,
                self.pool,
                &self.settings.inbox,
                self.clock.now(),
            )
            .await?;
            declarer.agent(agent_id, agent_type, &catalog).await?;
            declarer.close().await;
            Ok::<_, DeclareError>(())
        }
        .await;
        let _ = conn.close("done").await;
        match declared {
            Ok(()) => {}
            Err(DeclareError::Topology(e)) => return Err(e.into()),
            Err(DeclareError::Db(e)) => return Err(e.into()),
        }
        // Messages for the role may have been returned before its queues existed.
        store::retry_now(&mut tx, self.clock.now()).await?;
        let result = if created {
            "registered"
        } else {
            "already registered"
        };
        self.audit(
            &mut tx,
            by,
            "agent_add",
            agent_id,
            result,
            json!({"agent_type": agent_type}),
        )
        .await?;
        tx.commit().await.map_err(db::Error::from)?;
        Ok(AgentAdded { created })
    }

    /// Gives a registered agent a broker user of its own (a new password, returned
    /// once): it may read only its own queues and publish only to `agent.topic` under its
    /// role's routing keys. Run again, it replaces the password.
    pub async fn add_agent_credentials(
        &self,
        agent_id: &str,
        agent_type: &str,
        by: &str,
    ) -> Result<String> {
        let management = Management::new(&self.settings.amqp)?;
        let password = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        management
            .put_agent_user(
                &self.settings.amqp.vhost(),
                agent_id,
                &password,
                &AgentPermissions::for_agent(agent_id, agent_type),
            )
            .await?;
        let mut tx = self.pool.begin().await.map_err(db::Error::from)?;
        let context = json!({"agent_type": agent_type, "vhost": self.settings.amqp.vhost()});
        self.audit(
            &mut tx,
            by,
            "agent_credentials",
            agent_id,
            "broker user set",
            context,
        )
        .await?;
        tx.commit().await.map_err(db::Error::from)?;
        Ok(password)
    }

    /// Registers a public key for an agent (`key_id` by default derived from the key),
    /// retiring all but the newest `keep` keys when given (a rotation keeps two: the
    /// new and the previous). The key id and the ids retired.
    pub async fn add_agent_key(
        &self,
        agent_id: &str,
        public_key: &str,
        key_id: Option<&str>,
        keep: Option<i64>,
        by: &str,
    ) -> Result<(String, Vec<String>)> {
        let key = protocol::signing::public_key(public_key)
            .map_err(|e| Error::Usage(format!("invalid value for --public-key: {e}")))?;
        let key_id = key_id
            .map(str::to_string)
            .unwrap_or_else(|| protocol::signing::default_key_id(&key));
        let mut tx = self.pool.begin().await.map_err(db::Error::from)?;
        let result = match store::add_agent_key(&mut tx, agent_id, &key_id, &key.to_bytes(), by)
            .await?
        {
            store::KeyAdded::Added => "key added",
            store::KeyAdded::AlreadyThere => "key already registered",
            store::KeyAdded::NoAgent => return Err(not_found("agent", agent_id, "agent list")),
            store::KeyAdded::IdTaken => {
                return Err(Error::Refused(format!(
                    "agent {agent_id} already has a key named {key_id:?}, with another public key; adding this one would replace it unseen. To give the agent a new key, run `coordinator agent rotate-key {agent_id} --public-key <base64>` (the old key stays valid until retired), or name this one with another --key-id"
                )))
            }
        };
        let retired = match keep {
            Some(n) => store::retire_agent_keys(&mut tx, agent_id, None, n).await?,
            None => Vec::new(),
        };
        let context =
            json!({"key_id": key_id, "public_key": public_key.trim(), "retired": retired});
        self.audit(&mut tx, by, "agent_key_add", agent_id, result, context)
            .await?;
        tx.commit().await.map_err(db::Error::from)?;
        Ok((key_id, retired))
    }

    /// Everything about one agent an operator checks when it misbehaves: its
    /// registration, its keys, whether it has a broker user of its own, and its queues.
    pub async fn show_agent(&self, agent_id: &str) -> Result<AgentShown> {
        let Some(agent) = read::agent(self.pool, agent_id).await? else {
            return Err(not_found("agent", agent_id, "agent list"));
        };
        let keys = read::agent_keys(self.pool, agent_id).await?;
        let broker_user = match Management::new(&self.settings.amqp) {
            Ok(m) => m.user_exists(agent_id).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut queues = Vec::new();
        let conn = connect_to(&self.settings.amqp, "coordinator-cli")
            .await
            .map_err(|e| Error::Broker("", e))?;
        for name in [
            protocol::names::queues::tasks(agent_id),
            protocol::names::queues::commands(agent_id),
            protocol::names::queues::events(agent_id),
        ] {
            let depth = conn
                .queue_depth(&name)
                .await
                .map_err(|e| Error::Broker("", e))?;
            queues.push((name, depth));
        }
        let _ = conn.close("done").await;
        Ok(AgentShown {
            agent,
            keys,
            broker_user,
            queues,
        })
    }

    /// Publishes a message as a registered agent, as the agent would (to `agent.topic`,
    /// its properties repeating the header), and waits for the broker's confirm: a way
    /// to try the coordinator out by hand. Only where messages are neither signed nor
    /// authenticated (the default profile): elsewhere an agent publishes as its own
    /// broker user, with its own key, and this command cannot stand in for it.
    pub async fn send_as_agent(
        &self,
        agent_id: &str,
        message_type: &str,
        workflow_id: &str,
        data: serde_json::Value,
    ) -> Result<Envelope> {
        let security = &self.settings.security;
        if security.authenticate_senders
            || security.signatures == crate::engine::SignatureMode::Require
        {
            return Err(Error::Refused(
                "agent send publishes as guest, unsigned: it is for trying the coordinator out where sender authentication and required signatures are off (the default profile); here an agent publishes as its own broker user, signed with its key (docs/agents.md)".into(),
            ));
        }
        let agent_type = {
            let mut c = self.pool.acquire().await.map_err(db::Error::from)?;
            store::agent_type(&mut c, agent_id).await?
        };
        let Some(agent_type) = agent_type else {
            return Err(not_found(
                "agent",
                agent_id,
                "agent list (register it with `coordinator agent add`)",
            ));
        };
        let mut env = Envelope::from_agent(
            agent_id,
            &agent_type,
            message_type,
            workflow_id,
            data,
            self.clock.now(),
        );
        env.header.ttl = Some(3600);
        let body = serde_json::to_vec(&env)
            .map_err(|e| Error::Refused(format!("the message cannot be written: {e}")))?;
        let key = env.agent_routing_key();
        let meta = env.meta(&key);
        self.publish_confirmed(&key, &body, &meta, "message")
            .await?;
        Ok(env)
    }

    /// Retires one of an agent's keys: messages signed with it are refused from now on.
    pub async fn retire_agent_key(&self, agent_id: &str, key_id: &str, by: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db::Error::from)?;
        let retired = store::retire_agent_keys(&mut tx, agent_id, Some(key_id), 0).await?;
        if retired.is_empty() {
            return Err(not_found(
                "key",
                format!("{key_id} of agent {agent_id}"),
                "agent list",
            ));
        }
        self.audit(
            &mut tx,
            by,
            "agent_key_retire",
            agent_id,
            "key retired",
            json!({"key_id": key_id}),
        )
        .await?;
        tx.commit().await.map_err(db::Error::from)?;
        Ok(())
    }

    /// Revokes an agent: deletes its broker user (the broker closes its connections)
    /// and its registration. Its queues stay, with what they hold.
    pub async fn remove_agent(&self, agent_id: &str, by: &str) -> Result<AgentRemoved> {
        let registered = {
            let mut conn = self.pool.acquire().await.map_err(db::Error::from)?;
            store::agent_type(&mut conn, agent_id).await?
        };
        let management = Management::new(&self.settings.amqp)?;
        let user_deleted = management.delete_user(agent_id).await?;
        if registered.is_none() && !user_deleted {
            return Err(not_found("agent", agent_id, "agent list"));
        }
        let mut tx = self.pool.begin().await.map_err(db::Error::from)?;
        if registered.is_some() {
            store::delete_agent(&mut tx, agent_id).await?;
        }
        let context = json!({"user_deleted": user_deleted, "registered": registered});
        self.audit(&mut tx, by, "agent_remove", agent_id, "removed", context)
            .await?;
        tx.commit().await.map_err(db::Error::from)?;
        Ok(AgentRemoved {
            registered: registered.is_some(),
            user_deleted,
        })
    }

    /// Closes a workflow as cancelled or failed; its armed clocks are cancelled.
    pub async fn close_workflow(
        &self,
        id: &str,
        to: Closing,
        reason: &str,
        by: &str,
    ) -> Result<Closed> {
        let env = operator::close(id, to, reason, by, self.clock.now());
        let p = self
            .apply(&env, || not_found("workflow", id, "workflow list"))
            .await?;
        let (from, to) = p.transition.unwrap_or_default();
        Ok(Closed { from, to })
    }

    /// Moves an armed clock's deadline (and its warning) to `until`.
    pub async fn snooze_clock(
        &self,
        clock_id: i64,
        until: DateTime<Utc>,
        reason: &str,
        by: &str,
    ) -> Result<ClockChanged> {
        let c = self.armed_clock(clock_id, "snoozed").await?;
        let env = operator::snooze(
            &c.workflow_id,
            clock_id,
            until,
            reason,
            by,
            self.clock.now(),
        );
        self.apply(&env, || not_found("clock", clock_id, "sla list"))
            .await?;
        Ok(c)
    }

    /// Cancels an armed clock: it will not breach.
    pub async fn cancel_clock(
        &self,
        clock_id: i64,
        reason: &str,
        by: &str,
    ) -> Result<ClockChanged> {
        let c = self.armed_clock(clock_id, "cancelled").await?;
        let env = operator::cancel_clock(&c.workflow_id, clock_id, reason, by, self.clock.now());
        self.apply(&env, || not_found("clock", clock_id, "sla list"))
            .await?;
        Ok(c)
    }

    /// Acknowledges an escalation's whole chain: its ladder stops.
    pub async fn acknowledge_escalation(
        &self,
        escalation_id: i64,
        by: &str,
    ) -> Result<Acknowledged> {
        let mut conn = self.pool.acquire().await.map_err(db::Error::from)?;
        let chain = store::escalation_chain(&mut conn, escalation_id).await?;
        drop(conn);
        let Some((workflow_id, _)) = chain else {
            return Err(not_found(
                "escalation",
                escalation_id,
                "escalation list --open",
            ));
        };
        let env = operator::acknowledge(&workflow_id, escalation_id, by, self.clock.now());
        let p = self
            .apply(&env, || {
                not_found("escalation", escalation_id, "escalation list --open")
            })
            .await?;
        p.acknowledged.ok_or_else(|| {
            Error::Refused(format!(
                "escalation {escalation_id} could not be acknowledged"
            ))
        })
    }

    /// Raises an incident: broadcast to every agent and on-call, an acknowledgment clock
    /// armed for every registered agent.
    pub async fn raise_emergency(
        &self,
        id: Option<String>,
        severity: &str,
        description: &str,
        by: &str,
    ) -> Result<Raised> {
        let id = id.unwrap_or_else(|| format!("inc-{}", uuid::Uuid::new_v4()));
        let env = operator::raise_alert(&id, severity, description, by, self.clock.now());
        self.apply(&env, || {
            Error::Refused(format!("incident {id} was not raised"))
        })
        .await?;
        let awaited = read::clock_count(self.pool, &id, emergency::ACKNOWLEDGMENT_CLOCK).await?;
        Ok(Raised { id, awaited })
    }

    /// Publishes a dead letter again to `agent.topic` with its original properties, so
    /// the coordinator processes it anew. Its message id is forgotten first if it was
    /// not applied; the replay is recorded. That bookkeeping commits only once the
    /// broker has confirmed the message: a replay that fails leaves no trace.
    ///
    /// A replay skips the freshness window, sender authentication and the signature. A
    /// letter refused by one of the two that vouch for its sender is replayed only with
    /// `forced`, the operator's note saying why (recorded in the audit log): otherwise it
    /// would be applied, and answered in the coordinator's name, as if someone had
    /// vouched for who sent it.
    pub async fn replay_dead_letter(
        &self,
        id: i64,
        by: &str,
        forced: Option<&str>,
    ) -> Result<Replayed> {
        let mut tx = self.pool.begin().await.map_err(db::Error::from)?;
        let Some(dl) = store::lock_dead_letter(&mut tx, id).await? else {
            return Err(not_found("dead letter", id, "dead-letter list"));
        };
        let skipped = Reason::parse(&dl.reason).and_then(admission::skipped_by_a_replay);
        if let (Some((check, true)), None) = (skipped, forced) {
            return Err(Error::Refused(format!(
                "dead letter {id} was refused as {}: a replay skips {check} (the coordinator's own broker user publishes it), so it would be applied although nobody vouched for its sender. Check where it came from, then replay it with --force --note <why>",
                dl.reason
            )));
        }
        let meta = replay_meta(&dl, &self.settings.amqp.user());
        let body = self.opened(&dl)?;
        let applied_before = match &dl.message_id {
            Some(mid) => {
                !store::forget_unapplied(&mut tx, mid).await?
                    && store::was_processed(&mut tx, mid).await?
            }
            None => false,
        };
        store::mark_replayed(&mut tx, dl.id, by, self.clock.now()).await?;
        self.publish_confirmed(&dl.routing_key, &body, &meta, "replayed message")
            .await?;
        let mut context = json!({"message_id": dl.message_id, "routing_key": dl.routing_key});
        if let (Some(note), Some((check, _))) = (forced, skipped) {
            context["forced"] = json!({"note": note, "skipping": check, "refused_as": dl.reason});
        }
        self.audit(
            &mut tx,
            by,
            "dead_letter_replay",
            &format!("dead_letter:{id}"),
            "published",
            context,
        )
        .await?;
        tx.commit().await.map_err(db::Error::from)?;
        Ok(Replayed {
            id,
            message_id: dl.message_id,
            routing_key: dl.routing_key,
            replayed_before: dl.replayed_at,
            applied_before,
            resolved_before: dl.resolved_at.map(|t| (t, dl.resolution)),
        })
    }

    /// The unresolved dead letters with `reason` (received since `since`), oldest
    /// first: what `dead-letter replay --reason` replays.
    pub async fn unresolved_dead_letters(
        &self,
        reason: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<i64>> {
        let filter = read::DeadLetterFilter {
            reason: Some(reason),
            since,
            unresolved: true,
        };
        let mut ids: Vec<i64> = read::dead_letters(self.pool, &filter, i64::MAX)
            .await?
            .iter()
            .map(|d| d.id)
            .collect();
        ids.reverse();
        Ok(ids)
    }

    /// What the coordinator would do with a dead letter if it were replayed now: applied
    /// in a transaction that is rolled back, nothing published.
    pub async fn replay_dry_run(&self, id: i64) -> Result<DryRun> {
        let ctx = pipeline::Context {
            pool: self.pool,
            clock: self.clock,
            processor: &self.processor,
            agents: Arc::new(Agents::default()),
            instance: "cli-dry-run",
            publish_after: self.clock.now(),
            retry: self.settings.retry_policies.default,
            // Nothing of a dry run is kept.
            audit_chain: None,
            cipher: &self.cipher,
        };
        let mut tx = self.pool.begin().await.map_err(db::Error::from)?;
        let Some(dl) = store::lock_dead_letter(&mut tx, id).await? else {
            return Err(not_found("dead letter", id, "dead-letter list"));
        };
        let meta = replay_meta(&dl, &self.settings.amqp.user());
        if let Some(mid) = &dl.message_id {
            store::forget_unapplied(&mut tx, mid).await?;
        }
        let body = self.opened(&dl)?;
        let inbound = Inbound {
            body: &body,
            meta: &meta,
        };
        let results = pipeline::dry_run(&ctx, &mut tx, &[inbound], self.clock.now()).await?;
        tx.rollback().await.map_err(db::Error::from)?;
        let processed = results.into_iter().next().ok_or_else(|| {
            Error::Refused(format!("dead letter {id}: the dry run produced no result"))
        })?;
        Ok(DryRun {
            processed,
            skips: Reason::parse(&dl.reason).and_then(admission::skipped_by_a_replay),
            refused_as: dl.reason,
        })
    }

    /// A dead letter's body as it was received: its sealed fields opened (a replay
    /// sends agents and the coordinator the message they would have had).
    /// Publishes one message on the topic exchange over a connection of its own and
    /// waits for the broker's confirm; `what` names it in the error.
    async fn publish_confirmed(
        &self,
        routing_key: &str,
        body: &[u8],
        meta: &DeliveryMeta,
        what: &str,
    ) -> Result<()> {
        let conn = connect_to(&self.settings.amqp, "coordinator-cli")
            .await
            .map_err(|e| Error::Broker("", e))?;
        let published = async {
            let publisher = Publisher::open(&conn, self.settings.amqp.confirm_timeout).await?;
            let acked = publisher
                .publish_one(exchanges::TOPIC, routing_key, body, meta)
                .await;
            publisher.close().await;
            acked
        }
        .await;
        let _ = conn.close("done").await;
        if !published? {
            return Err(Error::Refused(format!(
                "the broker did not accept the {what}; run the command again"
            )));
        }
        Ok(())
    }

    fn opened(&self, dl: &store::DeadLetter) -> Result<Vec<u8>> {
        self.cipher.open_body(&dl.body).map_err(|e| {
            Error::Refused(format!(
                "dead letter {} cannot be replayed as received: {e}",
                dl.id
            ))
        })
    }

    /// Sets a dead letter aside for good, with a note saying why. One already resolved
    /// keeps its note (and is refused, saying so) unless `replace`.
    pub async fn resolve_dead_letter(
        &self,
        id: i64,
        note: &str,
        replace: bool,
        by: &str,
    ) -> Result<Resolved> {
        let mut tx = self.pool.begin().await.map_err(db::Error::from)?;
        let Some(dl) = store::lock_dead_letter(&mut tx, id).await? else {
            return Err(not_found("dead letter", id, "dead-letter list"));
        };
        if let (Some(at), false) = (dl.resolved_at, replace) {
            return Err(Error::Refused(format!(
                "dead letter {id} was resolved at {} with the note {:?}; give --replace to replace that note",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                dl.resolution.unwrap_or_default()
            )));
        }
        store::resolve_dead_letter(&mut tx, id, note, by, self.clock.now()).await?;
        let context = json!({"message_id": dl.message_id, "note": note, "replaced": dl.resolution});
        self.audit(
            &mut tx,
            by,
            "dead_letter_resolve",
            &format!("dead_letter:{id}"),
            "resolved",
            context,
        )
        .await?;
        tx.commit().await.map_err(db::Error::from)?;
        Ok(Resolved {
            replaced: dl.resolved_at.and(dl.resolution),
        })
    }

    /// Appends an operator's command to the operator chain of the audit log, in the
    /// command's own transaction (when the audit log is on).
    async fn audit(
        &self,
        tx: &mut db::Conn,
        by: &str,
        action: &str,
        target: &str,
        result: &str,
        context: serde_json::Value,
    ) -> Result<()> {
        if !self.settings.security.audit {
            return Ok(());
        }
        let entry = audit::Entry {
            actor: by.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            result: result.to_string(),
            context,
            metadata: json!({"via": "cli"}),
        };
        db::audit::append(tx, audit::OPERATOR_CHAIN, vec![entry], self.clock.now()).await?;
        Ok(())
    }

    /// The clock, if it is armed; what an operator is told otherwise.
    async fn armed_clock(&self, clock_id: i64, verb: &str) -> Result<ClockChanged> {
        let Some(c) = read::clock(self.pool, clock_id).await? else {
            return Err(not_found("clock", clock_id, "sla list"));
        };
        if c.status != "armed" {
            return Err(Error::Refused(format!(
                "clock {clock_id} ({}) is {}, not armed: only an armed clock can be {verb}",
                c.clock, c.status
            )));
        }
        Ok(ClockChanged {
            clock: c.clock,
            workflow_id: c.workflow_id,
            was_due: c.due_at,
        })
    }

    /// Applies an operator's message through the batch pipeline: what it did, or why
    /// not (`missing` when the workflow it names does not exist).
    async fn apply(&self, env: &Envelope, missing: impl FnOnce() -> Error) -> Result<Processed> {
        let p = pipeline::apply_operator(self.pool, &self.processor, &self.cipher, self.clock, env)
            .await?;
        match &p.outcome {
            Outcome::Accepted => Ok(p),
            Outcome::Rejected(Reason::UnknownWorkflow) => Err(missing()),
            Outcome::Rejected(_) | Outcome::Observed | Outcome::Duplicate => {
                Err(Error::Refused(p.detail.unwrap_or_else(|| {
                    format!("{} was not applied", env.header.message_type)
                })))
            }
        }
    }
}

fn not_found(what: &'static str, id: impl std::fmt::Display, list: &'static str) -> Error {
    Error::NotFound {
        what,
        id: id.to_string(),
        list,
    }
}

/// The AMQP properties a dead letter was received with.
/// The replayed message's properties: the original's, marked as this dead letter's
/// replay, published as the coordinator's own broker user (so that it is judged by what
/// it says, not by how old it is or who first sent it).
fn replay_meta(dl: &store::DeadLetter, own_user: &str) -> DeliveryMeta {
    let mut meta = serde_json::from_value(dl.properties.clone()).unwrap_or_else(|_| DeliveryMeta {
        routing_key: dl.routing_key.clone(),
        ..Default::default()
    });
    meta.replay_of = Some(dl.id);
    meta.user_id = Some(own_user.to_string());
    meta
}
