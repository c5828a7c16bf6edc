//! The names of the contract's topology and of the messages the coordinator itself
//! sends or reads (docs/protocol.md sections 2 and 6): what an agent needs to find its
//! queues and to recognise what it receives.

/// The exchanges (docs/protocol.md section 2).
pub mod exchanges {
    /// Tasks to a role (`task.{role}`) and commands to one agent (`command.{agent_id}`).
    pub const DIRECT: &str = "agent.direct";
    /// Everything agents publish (`{agent_type}.{message_type}`) and escalations
    /// (`escalation.{severity}.{target}`).
    pub const TOPIC: &str = "agent.topic";
    /// Broadcasts to every agent and on-call (emergencies).
    pub const FANOUT: &str = "agent.fanout";
    /// Where queues dead-letter what they cannot deliver.
    pub const DLX: &str = "agent.dlx";
}

/// Queue names.
pub mod queues {
    /// The durable queue holding everything dead-lettered to `agent.dlx`.
    pub const DEAD_LETTERS: &str = "agent.dead_letters";
    /// Escalations and broadcasts for on-call.
    pub const ONCALL: &str = "oncall.escalations";

    /// An agent's tasks: `task.{its role}` on `agent.direct`.
    pub fn tasks(agent_id: &str) -> String {
        format!("agent.{agent_id}.tasks")
    }

    /// An agent's commands: `command.{agent_id}` on `agent.direct` and `agent.fanout`.
    pub fn commands(agent_id: &str) -> String {
        format!("agent.{agent_id}.commands")
    }

    /// What other roles published that the agent's role subscribes to.
    pub fn events(agent_id: &str) -> String {
        format!("agent.{agent_id}.events")
    }
}

/// Routing keys.
pub mod routing {
    use crate::severity::Severity;

    /// A task to every agent of a role (on `agent.direct`).
    pub fn task(role: &str) -> String {
        format!("task.{role}")
    }

    /// A command to one agent (on `agent.direct`).
    pub fn command(agent_id: &str) -> String {
        format!("command.{agent_id}")
    }

    /// An escalation to on-call or management (on `agent.topic`).
    pub fn escalation(severity: Severity, target: &str) -> String {
        format!("escalation.{}.{target}", severity.as_str())
    }

    /// What an agent publishes (on `agent.topic`).
    pub fn agent(agent_type: &str, message_type: &str) -> String {
        format!("{agent_type}.{message_type}")
    }
}

/// The six orchestrator roles of the source documents (their `agent_type`s). Which
/// roles exist, and what each may publish, is configuration (`[roles.*]`); these are
/// the names the shipped configuration and workflow definitions use.
pub mod roles {
    pub const PRODUCT: &str = "product-director";
    pub const ENGINEERING: &str = "engineering-director";
    pub const QA: &str = "qa-director";
    pub const DEVOPS: &str = "devops-manager";
    pub const CREATIVE: &str = "creative-director";
    pub const MARKETING: &str = "marketing-director";
}

/// Message types the coordinator sends, and those of its own protocol it reads.
pub mod message_types {
    /// Every agent sends it; the first one registers the agent (when allowed).
    pub const HEARTBEAT: &str = "heartbeat";
    /// To the sender of a message the coordinator refused.
    pub const MESSAGE_REJECTED: &str = "message_rejected";
    /// To an agent over its rate limit, whose messages are delayed.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// A clock's owner: its deadline is near.
    pub const SLA_WARNING: &str = "sla_warning";
    /// A clock breached: to on-call, and to its owner.
    pub const SLA_BREACHED: &str = "sla_breached";
    /// An escalation raised by a message (a blocked agent, a failed deployment).
    pub const ESCALATION_RAISED: &str = "escalation_raised";
    /// Stops an escalation's ladder.
    pub const ESCALATION_ACKNOWLEDGED: &str = "escalation_acknowledged";
    /// An agent took a handoff: it becomes the owner of its role's clocks in that
    /// workflow (in any workflow whose state accepts it).
    pub const HANDOFF_ACKNOWLEDGED: &str = "handoff_acknowledged";
    /// On-call: a message was set aside after its retries.
    pub const MESSAGE_SET_ASIDE: &str = "message_set_aside";
    /// Management: dead letters stayed unresolved too long.
    pub const DEAD_LETTERS_UNRESOLVED: &str = "dead_letters_unresolved";
    /// On-call: a message the coordinator sent was given up.
    pub const MESSAGE_UNDELIVERABLE: &str = "message_undeliverable";
    /// A role's owner: one of its agents stopped sending heartbeats.
    pub const AGENT_STALE: &str = "agent_stale";
}

/// The `source.agent_id` and `agent_type` of what the coordinator sends.
pub const COORDINATOR_ID: &str = "coordinator";
/// The agent type of messages an operator makes with the CLI.
pub const OPERATOR: &str = "operator";
