//! The exchanges and queues of docs/protocol.md section 2, declared idempotently.
//!
//! Declaring is safe to repeat. If a queue already exists with other arguments (say an
//! operator made it quorum by hand, or `make run` declared classic queues on a vhost
//! production settings now use), RabbitMQ refuses the declaration and closes the
//! channel; we then carry on with it as it is, and say so in one warning for the whole
//! declaration rather than one per queue.

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::settings::{AmqpSettings, InboxSettings, QueueType};
use protocol::catalog::Catalog;
use protocol::names::{exchanges, queues, routing};

use super::Connection;

/// The exchange type of RabbitMQ's consistent-hash plugin.
pub const CONSISTENT_HASH: &str = "x-consistent-hash";
/// What to do when the broker does not know [`CONSISTENT_HASH`].
pub const ENABLE_PLUGIN: &str = "RabbitMQ does not know the exchange type x-consistent-hash, which the partitioned inbox needs: \
     enable its plugin with `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange` \
     (on every node of the cluster; `make run` and `.ci/run` do it on this machine)";

/// True if the broker refused an exchange declaration for its unknown type (503
/// COMMAND_INVALID "unknown exchange type").
fn unknown_exchange_type(e: &lapin::Error) -> bool {
    matches!(e, lapin::Error::ProtocolError(err)
        if err.get_id() == 503 || err.to_string().contains("unknown exchange type"))
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("could not declare {what}")]
    Declare {
        what: String,
        #[source]
        source: lapin::Error,
    },
    /// The broker lacks the consistent-hash plugin: a configuration problem, not a
    /// passing one. The broker's own words ("unknown exchange type") are kept but not
    /// chained into the message, which already says it.
    #[error("{ENABLE_PLUGIN}")]
    PluginMissing(lapin::Error),
    /// A partition queue beyond `inbox.partitions` exists: the inbox was larger.
    #[error(
        "queue {queue} exists but inbox.partitions is {partitions}: the inbox had more partitions. \
         Shrinking it loses the messages in the extra queues unless they are drained first; \
         follow \"Changing the number of partitions\" in docs/scaling.md"
    )]
    PartitionsShrunk { queue: String, partitions: u32 },
}

impl TopologyError {
    /// True if retrying cannot help (the broker or the settings must change first).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, TopologyError::Declare { .. })
    }
}

fn declare_error(what: impl Into<String>) -> impl FnOnce(lapin::Error) -> TopologyError {
    let what = what.into();
    move |source| TopologyError::Declare { what, source }
}

/// Declares topology on its own channel, reopening it after a refused declaration.
/// The arguments a queue is declared with, beside its type.
#[derive(Debug, Clone, Copy, Default)]
struct Shape {
    /// Dead-letters to `agent.dlx`.
    dead_letter: bool,
    single_active: bool,
    /// `x-max-length` with `x-overflow: drop-head`.
    max_length: Option<u32>,
}

impl Shape {
    const DEAD_LETTERED: Shape = Shape {
        dead_letter: true,
        single_active: false,
        max_length: None,
    };
}

pub struct Declarer<'a> {
    conn: &'a Connection,
    channel: Channel,
    queue_type: QueueType,
    /// `x-max-length` of events queues (`amqp.events_max_length`; none when 0).
    events_max_length: Option<u32>,
    /// What existed with other arguments and was used as it is, with the broker's
    /// reason.
    fallbacks: Vec<(String, String)>,
}

impl<'a> Declarer<'a> {
    pub async fn new(
        conn: &'a Connection,
        amqp: &AmqpSettings,
    ) -> Result<Declarer<'a>, TopologyError> {
        let channel = conn
            .0
            .create_channel()
            .await
            .map_err(declare_error("a channel"))?;
        Ok(Declarer {
            conn,
            channel,
            queue_type: amqp.queue_type,
            events_max_length: (amqp.events_max_length > 0).then_some(amqp.events_max_length),
            fallbacks: Vec::new(),
        })
    }

    /// How many exchanges and queues were found declared with other arguments than
    /// configured (used as they are; [`Declarer::close`] warns once about them all).
    pub fn used_as_found(&self) -> usize {
        self.fallbacks.len()
    }

    /// Their names (`queue agent.dead_letters`, …).
    pub fn fallbacks(&self) -> Vec<String> {
        self.fallbacks
            .iter()
            .map(|(what, _)| what.clone())
            .collect()
    }

    /// The fixed exchanges, the dead-letter and on-call queues, and the inbox.
    /// `recorded` is how many partitions the inbox was last declared with (kept in
    /// PostgreSQL, `None` before the first declaration): only when it is more than
    /// configured is the broker asked whether the extra partitions still exist.
    pub async fn fixed(
        &mut self,
        inbox: &InboxSettings,
        recorded: Option<u32>,
    ) -> Result<(), TopologyError> {
        for (name, kind) in [
            (exchanges::DIRECT, ExchangeKind::Direct),
            (exchanges::TOPIC, ExchangeKind::Topic),
            (exchanges::FANOUT, ExchangeKind::Fanout),
            (exchanges::DLX, ExchangeKind::Fanout),
        ] {
            self.exchange(name, kind).await?;
        }
        // The dead-letter queue itself does not dead-letter (that would loop).
        self.queue(queues::DEAD_LETTERS, Shape::default()).await?;
        self.bind(queues::DEAD_LETTERS, exchanges::DLX, "").await?;

        self.queue(queues::ONCALL, Shape::DEAD_LETTERED).await?;
        self.bind(queues::ONCALL, exchanges::TOPIC, "escalation.#")
            .await?;
        self.bind(queues::ONCALL, exchanges::FANOUT, "").await?;

        self.inbox(inbox, recorded).await
    }

    /// The partitioned inbox: agent.topic → the consistent-hash exchange (hashing the
    /// correlation_id property) → one single-active-consumer queue per partition.
    /// Partitions are bound in order, so partition `i` is bucket `i` of the ring, and
    /// adding partitions appends buckets (moving only the workflows the new ones take).
    async fn inbox(
        &mut self,
        inbox: &InboxSettings,
        recorded: Option<u32>,
    ) -> Result<(), TopologyError> {
        let mut args = FieldTable::default();
        args.insert(
            "hash-property".into(),
            AMQPValue::LongString("correlation_id".into()),
        );
        let opts = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let kind = ExchangeKind::Custom(CONSISTENT_HASH.into());
        if let Err(e) = self
            .channel
            .exchange_declare(&inbox.exchange, kind, opts, args)
            .await
        {
            return Err(if unknown_exchange_type(&e) {
                TopologyError::PluginMissing(e)
            } else {
                TopologyError::Declare {
                    what: format!("exchange {}", inbox.exchange),
                    source: e,
                }
            });
        }
        // Agent messages are `{agent_type}.{message_type}`: exactly two words, so `*.*`
        // takes every agent message (of known and unknown roles, so unknown ones can be
        // rejected) and none of the three-word escalations the coordinator publishes.
        self.channel
            .exchange_bind(
                &inbox.exchange,
                exchanges::TOPIC,
                "*.*",
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(declare_error(format!(
                "binding {} ← {} (*.*)",
                inbox.exchange,
                exchanges::TOPIC
            )))?;
        if recorded.is_some_and(|n| n > inbox.partitions) {
            self.refuse_shrinking(inbox).await?;
        }
        for p in 0..inbox.partitions {
            let queue = inbox.queue(p);
            self.queue(
                &queue,
                Shape {
                    single_active: true,
                    ..Shape::DEAD_LETTERED
                },
            )
            .await?;
            // The binding key of a consistent-hash binding is its weight.
            self.bind(&queue, &inbox.exchange, "1").await?;
        }
        Ok(())
    }

    /// Refuses to go on if the partition after the last configured one exists. Asked
    /// only while shrinking: the broker answers a missing queue by closing the channel,
    /// which lapin logs as an error.
    async fn refuse_shrinking(&mut self, inbox: &InboxSettings) -> Result<(), TopologyError> {
        let queue = inbox.queue(inbox.partitions);
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match self
            .channel
            .queue_declare(&queue, passive, FieldTable::default())
            .await
        {
            Ok(_) => Err(TopologyError::PartitionsShrunk {
                queue,
                partitions: inbox.partitions,
            }),
            Err(_) => {
                // 404: it does not exist (the channel closed with the answer).
                self.channel = self
                    .conn
                    .0
                    .create_channel()
                    .await
                    .map_err(declare_error("a channel"))?;
                Ok(())
            }
        }
    }

    /// An agent's three queues and their bindings.
    pub async fn agent(
        &mut self,
        agent_id: &str,
        agent_type: &str,
        catalog: &Catalog,
    ) -> Result<(), TopologyError> {
        let tasks = queues::tasks(agent_id);
        self.queue(&tasks, Shape::DEAD_LETTERED).await?;
        self.bind(&tasks, exchanges::DIRECT, &routing::task(agent_type))
            .await?;

        let commands = queues::commands(agent_id);
        self.queue(&commands, Shape::DEAD_LETTERED).await?;
        self.bind(&commands, exchanges::DIRECT, &routing::command(agent_id))
            .await?;
        self.bind(&commands, exchanges::FANOUT, "").await?;

        let events = queues::events(agent_id);
        self.queue(
            &events,
            Shape {
                max_length: self.events_max_length,
                ..Shape::DEAD_LETTERED
            },
        )
        .await?;
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
                .map_err(declare_error(format!("exchange {name}")))?;
        }
        Ok(())
    }

    async fn queue(&mut self, name: &str, shape: Shape) -> Result<(), TopologyError> {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(self.queue_type.as_str().into()),
        );
        if shape.dead_letter {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(exchanges::DLX.into()),
            );
        }
        if shape.single_active {
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        if let Some(n) = shape.max_length {
            args.insert("x-max-length".into(), AMQPValue::LongUInt(n));
            args.insert(
                "x-overflow".into(),
                AMQPValue::LongString("drop-head".into()),
            );
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
                .map_err(declare_error(format!("queue {name}")))?;
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
            .map_err(declare_error(format!(
                "binding {queue} ← {exchange} ({key})"
            )))
    }

    /// After a refused declaration: a precondition failure (exists with other arguments)
    /// is survivable on a new channel; anything else is an error.
    async fn fall_back(&mut self, what: &str, e: lapin::Error) -> Result<(), TopologyError> {
        let precondition = matches!(
            &e,
            lapin::Error::ProtocolError(err) if err.get_id() == 406
        );
        if !precondition {
            return Err(TopologyError::Declare {
                what: what.to_string(),
                source: e,
            });
        }
        tracing::debug!(
            %what, error = %e,
            "exists with other arguments than configured; using it as it is"
        );
        self.fallbacks.push((what.to_string(), reply_text(&e)));
        self.channel = self
            .conn
            .0
            .create_channel()
            .await
            .map_err(declare_error("a channel"))?;
        Ok(())
    }

    /// Closes its channel; warns once if anything was used as found.
    pub async fn close(self) {
        if let Some(warning) = used_as_found_warning(&self.fallbacks) {
            tracing::warn!(used_as_found = self.fallbacks.len(), "{warning}");
        }
        let _ = self.channel.close(200, "topology declared").await;
    }
}

/// The broker's own words for a refused declaration (`inequivalent arg 'x-queue-type'
/// for queue …: received 'quorum' but current is 'classic'`), without lapin's wrapping.
fn reply_text(e: &lapin::Error) -> String {
    match e {
        lapin::Error::ProtocolError(err) => err
            .get_message()
            .as_str()
            .trim_start_matches("PRECONDITION_FAILED - ")
            .to_string(),
        other => other.to_string(),
    }
}

/// One line for everything used as found: how many, the first few names, the first
/// reason, and where the fix is documented.
fn used_as_found_warning(fallbacks: &[(String, String)]) -> Option<String> {
    const NAMED: usize = 4;
    let (_, reason) = fallbacks.first()?;
    let mut names: Vec<&str> = fallbacks
        .iter()
        .take(NAMED)
        .map(|(w, _)| w.as_str())
        .collect();
    let more = fallbacks.len().saturating_sub(NAMED);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    names.sort_unstable();
    Some(format!(
        "{} exchanges or queues exist with other arguments than configured and are used as they are ({}{more}; the first: {reason}). \
         To declare them as configured, see docs/scaling.md, \"Queues declared with other arguments\"",
        fallbacks.len(),
        names.join(", "),
    ))
}

#[cfg(test)]
mod tests {
    use super::used_as_found_warning;

    #[test]
    fn queues_used_as_found_are_one_warning_naming_a_few_and_counting_the_rest() {
        assert_eq!(used_as_found_warning(&[]), None);
        let found: Vec<(String, String)> = (0..6)
            .map(|i| {
                (
                    format!("queue coordinator.inbox.{i}"),
                    "inequivalent arg 'x-queue-type': received 'quorum' but current is 'classic'"
                        .to_string(),
                )
            })
            .collect();
        let warning = used_as_found_warning(&found).expect("a warning");
        assert!(
            warning.starts_with("6 exchanges or queues exist"),
            "{warning}"
        );
        assert!(
            warning.contains("queue coordinator.inbox.3 and 2 more"),
            "{warning}"
        );
        assert!(!warning.contains("inbox.4"), "{warning}");
        assert!(warning.contains("current is 'classic'"), "{warning}");
        assert!(warning.contains("docs/scaling.md"), "{warning}");
    }
}
