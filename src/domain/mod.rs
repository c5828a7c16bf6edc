//! The pure core: the envelope and its validation, the role catalog, the workflow state
//! machine, rejection reasons and id derivation. Nothing in here does I/O or knows
//! about lapin or sqlx.

pub mod catalog;
pub mod envelope;
pub mod ids;
pub mod reject;
pub mod workflow;
