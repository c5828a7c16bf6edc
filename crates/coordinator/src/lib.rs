//! # coordinator
//!
//! Coordinates software-delivery workflows between agents over RabbitMQ, with its state
//! in PostgreSQL. See `docs/architecture.md` for the map; in short:
//!
//! - [`domain`]: the pure core: envelope and validation, role catalog, the workflow
//!   state machine, rejection reasons, id derivation. No I/O.
//! - [`settings`]: layered configuration into typed [`settings::Settings`].
//! - [`db`]: the pool, embedded migrations and every SQL statement.
//! - [`processor`]: decides a batch of inbound messages in memory (dedupe, validate,
//!   identity, state machines) and collects the rows to write.
//! - [`pipeline`]: applies a batch in one transaction with a fixed number of statements
//!   and sets aside a message the database refuses.
//! - [`escalations`]: raising and acknowledging escalations (one writer for all).
//! - [`timers`]: fires SLA breaches, warnings and escalation-ladder steps on time.
//! - [`dead_letters`]: tells management about dead letters nobody worked.
//! - [`housekeeping`]: keeps the outbox and the deduplication keys bounded.
//! - [`notifications`]: LISTENs for other processes' changes (deadlines, agents).
//! - [`amqp`]: the connection supervisor, topology, inbox consumers, publishers and
//!   the outbox relay.
//! - [`partitions`]: sharing the inbox's partitions among running coordinators.
//! - [`breaker`]: the circuit breaker's logic (pure, with an injected clock).
//! - [`retry`]: the seed's named retry policies and the waits every retry loop takes.
//! - [`runtime`]: state shared by the running tasks (readiness, metrics, signals, the
//!   agent cache).
//! - [`activity`]: a line a second at info of what the service did.
//! - [`http`]: health, readiness and metrics.
//! - [`app`]: `App::build(settings)` + `run(shutdown)`, used by `main` and the tests.
//! - [`cli`]: the command tree and the operator/manager commands.

pub mod activity;
pub mod amqp;
pub mod app;
pub mod breaker;
pub mod cli;
pub mod db;
pub mod dead_letters;
pub mod domain;
pub mod escalations;
pub mod failpoint;
pub mod housekeeping;
pub mod http;
pub mod notifications;
pub mod partitions;
pub mod pipeline;
pub mod processor;
pub mod retry;
pub mod runtime;
pub mod settings;
pub mod telemetry;
pub mod timers;
