//! # coordinator
//!
//! Coordinates software-delivery workflows between agents over RabbitMQ, with its state
//! in PostgreSQL. `docs/architecture.md` is the map. The modules are layers, and each
//! uses only those above it in this list (`tests/architecture.rs` keeps it so):
//!
//! - [`domain`]: the pure rules: the workflow and emergency state machines, their
//!   effects, SLA clocks, the escalation ladder, id derivation.
//! - [`engine`]: decides, without I/O, what a batch of inputs (messages, due deadlines,
//!   operator actions) changes, as rows to write and messages to send.
//! - [`settings`], [`retry`], [`breaker`], [`clock`], [`telemetry`], [`failpoint`]:
//!   configuration and the small pieces every running part shares.
//! - [`db`] (the only module that knows SQL) and [`amqp`] (the only one that knows
//!   lapin): the edges to PostgreSQL and RabbitMQ.
//! - [`service`]: the running service: the batch pipeline that owns transactions, the
//!   inbox consumers, publishing, the reconcilers (timers, relay, housekeeping,
//!   partitions, dead letters), operator use cases ([`service::ops`]), and
//!   [`app`] that assembles them.
//! - [`http`] and [`cli`]: what operators and probes reach.
//!
//! The wire contract is the `protocol` crate.

pub mod amqp;
pub mod app;
pub mod breaker;
pub mod cli;
pub mod clock;
pub mod db;
pub mod domain;
pub mod encryption;
pub mod engine;
pub mod failpoint;
pub mod http;
pub mod retry;
pub mod secret;
pub mod service;
pub mod settings;
pub mod telemetry;
