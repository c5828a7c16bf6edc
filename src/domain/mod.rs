//! The pure core: the envelope and its validation, the role catalog, the workflow and
//! emergency state machines, SLA clocks and the escalation ladder, rejection reasons
//! and id derivation. Nothing in here does I/O or knows about lapin or sqlx.

pub mod catalog;
pub mod emergency;
pub mod envelope;
pub mod escalation;
pub mod ids;
pub mod payloads;
pub mod reject;
pub mod sla;
pub mod workflow;
