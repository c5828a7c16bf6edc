//! The exchanges and queues of PROTOCOL.md section 2, declared idempotently.
//!
//! Declaring is safe to repeat. If a queue already exists with other arguments (say an
//! operator made it quorum by hand), RabbitMQ refuses the declaration and closes the
//! channel; we then check the queue exists and carry on with a warning instead of
//! refusing to start.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};

use crate::domain::catalog::Catalog;
use crate::processor::exchanges;
use crate::settings::QueueType;

/// The durable queue holding everything dead-lettered to `agent.dlx`.
pub const DEAD_LETTER_QUEUE: &str = "agent.dead_letters";
pub const ONCALL_QUEUE: &str = "oncall.escalations";

pub fn tasks_queue(agent_id: &str) -> String {
    format!("agent.{agent_id}.tasks")
}
pub fn commands_queue(agent_id: &str) -> String {
    format!("agent.{agent_id}.commands")
}
pub fn events_queue(agent_id: &str) -> String {
    format!("agent.{agent_id}.events")
}

#[derive(Debug, thiserror::Error)]
#[error("could not declare {what}")]
pub struct TopologyError {
    what: String,
    #[source]
    source: lapin::Error,
}

/// Declares topology on its own channel, reopening it after a refused declaration.
pub struct Declarer<'a> {
    conn: &'a Connection,
    channel: Channel,
    queue_type: QueueType,
}

impl<'a> Declarer<'a> {
    pub async fn new(
        conn: &'a Connection,
        queue_type: QueueType,
    ) -> Result<Declarer<'a>, TopologyError> {
        let channel = conn
            .create_channel()
            .await
            .map_err(|source| TopologyError {
                what: "a channel".into(),
                source,
            })?;
        Ok(Declarer {
            conn,
            channel,
            queue_type,
        })
    }

    /// The fixed exchanges, the dead-letter and on-call queues, and the inbox.
    pub async fn fixed(&mut self, inbox: &str) -> Result<(), TopologyError> {
        for (name, kind) in [
            (exchanges::DIRECT, ExchangeKind::Direct),
            (exchanges::TOPIC, ExchangeKind::Topic),
            (exchanges::FANOUT, ExchangeKind::Fanout),
            (exchanges::DLX, ExchangeKind::Fanout),
        ] {
            self.exchange(name, kind).await?;
        }
        // The dead-letter queue itself does not dead-letter (that would loop).
        self.queue(DEAD_LETTER_QUEUE, false, false).await?;
        self.bind(DEAD_LETTER_QUEUE, exchanges::DLX, "").await?;

        self.queue(ONCALL_QUEUE, true, false).await?;
        self.bind(ONCALL_QUEUE, exchanges::TOPIC, "escalation.#")
            .await?;
        self.bind(ONCALL_QUEUE, exchanges::FANOUT, "").await?;

        // Agent messages are `{agent_type}.{message_type}`: exactly two words, so `*.*`
        // takes every agent message (of known and unknown roles, so unknown ones can be
        // rejected) and none of the three-word escalations the coordinator publishes.
        self.queue(inbox, true, true).await?;
        self.bind(inbox, exchanges::TOPIC, "*.*").await?;
        Ok(())
    }

    /// An agent's three queues and their bindings.
    pub async fn agent(
        &mut self,
        agent_id: &str,
        agent_type: &str,
        catalog: &Catalog,
    ) -> Result<(), TopologyError> {
        let tasks = tasks_queue(agent_id);
        self.queue(&tasks, true, false).await?;
        self.bind(&tasks, exchanges::DIRECT, &format!("task.{agent_type}"))
            .await?;

        let commands = commands_queue(agent_id);
        self.queue(&commands, true, false).await?;
        self.bind(&commands, exchanges::DIRECT, &format!("command.{agent_id}"))
            .await?;
        self.bind(&commands, exchanges::FANOUT, "").await?;

        let events = events_queue(agent_id);
        self.queue(&events, true, false).await?;
        for key in catalog.subscriptions(agent_type) {
            self.bind(&events, exchanges::TOPIC, key).await?;
        }
        Ok(())
    }

    async fn exchange(&mut self, name: &str, kind: ExchangeKind) -> Result<(), TopologyError> {
        let opts = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let res = self
            .channel
            .exchange_declare(name, kind.clone(), opts, FieldTable::default())
            .await;
        if let Err(e) = res {
            self.fall_back(&format!("exchange {name}"), e).await?;
            let passive = ExchangeDeclareOptions {
                passive: true,
                ..opts
            };
            self.channel
                .exchange_declare(name, kind, passive, FieldTable::default())
                .await
                .map_err(|source| TopologyError {
                    what: format!("exchange {name}"),
                    source,
                })?;
        }
        Ok(())
    }

    async fn queue(
        &mut self,
        name: &str,
        dead_letter: bool,
        single_active: bool,
    ) -> Result<(), TopologyError> {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(self.queue_type.as_str().into()),
        );
        if dead_letter {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(exchanges::DLX.into()),
            );
        }
        if single_active {
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        if let Err(e) = self.channel.queue_declare(name, opts, args).await {
            self.fall_back(&format!("queue {name}"), e).await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..opts
            };
            self.channel
                .queue_declare(name, passive, FieldTable::default())
                .await
                .map_err(|source| TopologyError {
                    what: format!("queue {name}"),
                    source,
                })?;
        }
        Ok(())
    }

    async fn bind(&mut self, queue: &str, exchange: &str, key: &str) -> Result<(), TopologyError> {
        self.channel
            .queue_bind(
                queue,
                exchange,
                key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| TopologyError {
                what: format!("binding {queue} ← {exchange} ({key})"),
                source,
            })
    }

    /// After a refused declaration: a precondition failure (exists with other arguments)
    /// is survivable on a new channel; anything else is an error.
    async fn fall_back(&mut self, what: &str, e: lapin::Error) -> Result<(), TopologyError> {
        let precondition = matches!(
            &e,
            lapin::Error::ProtocolError(err) if err.get_id() == 406
        );
        if !precondition {
            return Err(TopologyError {
                what: what.to_string(),
                source: e,
            });
        }
        tracing::warn!(
            %what, error = %e,
            "exists with other arguments than configured; using it as it is"
        );
        self.channel = self
            .conn
            .create_channel()
            .await
            .map_err(|source| TopologyError {
                what: "a channel".into(),
                source,
            })?;
        Ok(())
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "topology declared").await;
    }
}
