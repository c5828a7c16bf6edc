//! The fixed list of reasons a message is rejected (docs/protocol.md, "Bad input").
//! The strings are stored in `dead_letters.reason` and sent in `message_rejected`
//! notices; they are part of the contract.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The body is not JSON (or not UTF-8).
    MalformedJson,
    /// A required field is absent or empty.
    MissingField,
    /// A field has the wrong type or an invalid value (e.g. a bad timestamp).
    InvalidField,
    /// `header.version` is not a contract version this coordinator speaks.
    UnsupportedVersion,
    /// The AMQP properties or the routing key disagree with the header.
    PropertyMismatch,
    /// `source.agent_type` is not a configured role.
    UnknownRole,
    /// `message_type` is not one any role publishes.
    UnknownMessageType,
    /// The sender's role may not publish this message type.
    SenderNotAllowed,
    /// The sender is not a registered agent (automatic registration is off).
    UnknownAgent,
    /// The sender is registered with another agent type than it claims.
    AgentTypeMismatch,
    /// `timestamp + ttl` is in the past.
    Expired,
    /// The correlation id names no workflow and the message does not start one.
    UnknownWorkflow,
    /// `requirements_ready` for a correlation id that is already a workflow.
    WorkflowExists,
    /// The workflow's state does not accept this message from this role.
    NotAcceptedInState,
    /// `escalation_acknowledged` names no escalation of this workflow.
    UnknownEscalation,
    /// The body, or a field stored in its own column, is over its size limit.
    TooLarge,
    /// `header.timestamp` is older than the freshness window (`security.max_age`).
    Stale,
    /// `header.timestamp` is further ahead of the coordinator's clock than
    /// `security.max_ahead`.
    FromTheFuture,
    /// Sender authentication is on and the AMQP `user_id` property (which RabbitMQ
    /// checks against the connection's user) is absent or is not `source.agent_id`.
    Unauthenticated,
    /// The sender's role may not do this to this workflow (acknowledge this
    /// escalation, resolve this emergency).
    Unauthorized,
    /// The message id was already used by a different sender.
    DuplicateIdConflict,
    /// Signatures are required (`security.signatures = "require"`) and
    /// `header.security.signature` is absent.
    MissingSignature,
    /// The signature does not verify with the key `header.security.key_id` names among
    /// the sender's registered keys (or names none of them).
    BadSignature,
    /// The database refused to store what the message asked for, on every attempt
    /// (a value out of range, or too long for an index): the message is set aside so
    /// that the rest of the inbox flows.
    ProcessingFailed,
}

impl Reason {
    pub const ALL: [Reason; 24] = [
        Reason::MalformedJson,
        Reason::MissingField,
        Reason::InvalidField,
        Reason::UnsupportedVersion,
        Reason::PropertyMismatch,
        Reason::UnknownRole,
        Reason::UnknownMessageType,
        Reason::SenderNotAllowed,
        Reason::UnknownAgent,
        Reason::AgentTypeMismatch,
        Reason::Expired,
        Reason::UnknownWorkflow,
        Reason::WorkflowExists,
        Reason::NotAcceptedInState,
        Reason::UnknownEscalation,
        Reason::TooLarge,
        Reason::Stale,
        Reason::FromTheFuture,
        Reason::Unauthenticated,
        Reason::Unauthorized,
        Reason::DuplicateIdConflict,
        Reason::MissingSignature,
        Reason::BadSignature,
        Reason::ProcessingFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::MissingField => "missing_field",
            Reason::InvalidField => "invalid_field",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::PropertyMismatch => "property_mismatch",
            Reason::UnknownRole => "unknown_role",
            Reason::UnknownMessageType => "unknown_message_type",
            Reason::SenderNotAllowed => "sender_not_allowed",
            Reason::UnknownAgent => "unknown_agent",
            Reason::AgentTypeMismatch => "agent_type_mismatch",
            Reason::Expired => "expired",
            Reason::UnknownWorkflow => "unknown_workflow",
            Reason::WorkflowExists => "workflow_exists",
            Reason::NotAcceptedInState => "not_accepted_in_state",
            Reason::UnknownEscalation => "unknown_escalation",
            Reason::TooLarge => "too_large",
            Reason::Stale => "stale",
            Reason::FromTheFuture => "from_the_future",
            Reason::Unauthenticated => "unauthenticated",
            Reason::Unauthorized => "unauthorized",
            Reason::DuplicateIdConflict => "duplicate_id_conflict",
            Reason::MissingSignature => "missing_signature",
            Reason::BadSignature => "bad_signature",
            Reason::ProcessingFailed => "processing_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejection: the reason and a human-readable detail that says what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejected {
    pub reason: Reason,
    pub detail: String,
}

impl Rejected {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejected {
            reason,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert!(seen.insert(r.as_str()), "duplicate reason string {r}");
        }
    }
}
