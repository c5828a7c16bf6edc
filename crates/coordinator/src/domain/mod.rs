//! The pure core: the envelope and its validation, the role catalog, the workflow and
//! emergency state machines, SLA clocks and the escalation ladder, rejection reasons
//! and id derivation. Nothing in here does I/O or knows about lapin or sqlx.

pub mod agent_health;
pub mod audit;
pub mod clocks;
pub mod definition;
pub mod diagram;
pub mod effect;
pub mod emergency;
pub mod escalation;
pub mod graph;
pub mod ids;
pub mod report;
pub mod sla;
pub mod trace;
pub mod workflow;

#[cfg(test)]
mod tests;
