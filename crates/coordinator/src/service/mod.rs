//! The running service: everything that owns a transaction, a channel or a loop.
//!
//! - [`runtime`]: what the running parts share (status, metrics, signals, breakers, the
//!   agent cache), each part handed only what it uses.
//! - [`pipeline`]: applies a batch of inputs in one transaction (claim, lock, load,
//!   decide with the engine, write, commit); operator actions go through it too.
//! - [`inbox`]: consumes a partition of the inbox into batches, then publishes and acks;
//!   holds back what [`rate_limits`] says is over its sender's limit, and applies it later.
//! - [`publishing`]: a partition's publisher, settling what the broker said, the settler;
//!   [`handoffs`] times a batch's tasks from their cause to the broker's confirm.
//! - [`supervisor`]: the broker connection, reconnects, and the partition consumers.
//! - Reconcilers, each a `step` that can be called directly and a `run` loop:
//!   [`timers`], [`relay`], [`housekeeping`], [`partitions`], [`dead_letters`],
//!   [`collector`] (what the broker dead-letters), [`notifications`], [`agent_health`]
//!   (stale agents, tasks for roles nobody serves).
//! - [`ops`]: the operator's use cases (close a workflow, snooze or cancel a clock,
//!   acknowledge an escalation, raise an emergency, replay or resolve a dead letter,
//!   register an agent).
//! - [`activity`]: a line a second of what the service did; [`gauges`]: what the
//!   database holds, for Prometheus.

pub mod activity;
pub mod agent_health;
pub mod audit;
pub mod collector;
pub mod dead_letters;
pub mod definitions;
pub mod gauges;
pub mod handoffs;
pub mod housekeeping;
pub mod inbox;
pub mod notifications;
pub mod ops;
pub mod partitions;
pub mod pipeline;
pub mod publishing;
pub mod rate_limits;
pub mod relay;
pub mod report;
pub mod runtime;
pub mod supervisor;
pub mod timers;
