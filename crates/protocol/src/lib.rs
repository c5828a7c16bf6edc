//! # coordinator-protocol
//!
//! The coordinator's wire contract (docs/protocol.md), as Rust types: what an agent
//! written in Rust depends on, and what the coordinator itself is built on. No I/O.
//!
//! - [`envelope`]: the envelope, its AMQP properties, and the validation of an inbound
//!   delivery (the reasons it can be refused are [`reject`]).
//! - [`payloads`]: the payloads the coordinator sends and the fields it reads, and the
//!   JSON Schemas generated from them (`docs/schemas/`).
//! - [`catalog`]: roles, what each may publish and subscribes to.
//! - [`names`]: exchanges, queues, routing keys and the coordinator's message types.
//! - [`severity`]: escalation severities.
//! - [`signing`]: Ed25519 signatures over an envelope's signed form.
//! - [`canonical`]: the canonical JSON form that hashes and signatures are computed over.
//! - [`trace`]: trace context on the wire (`traceparent`, `header.tracing`).

pub mod canonical;
pub mod catalog;
pub mod envelope;
pub mod names;
pub mod payloads;
pub mod reject;
pub mod severity;
pub mod signing;
pub mod trace;
