//! What a state machine's decision asks for besides the state change: tasks and
//! notices to send, clocks to arm, meet or cancel, escalations to raise. Shared by the
//! workflow and the emergency machines; the engine turns effects into rows
//! (`engine::effects`), the one interpreter for messages, timers and operators alike.

use chrono::{DateTime, Utc};

use super::sla::{ArmedClock, Severity};

/// A side effect, to be persisted in the same transaction as the state change. Shared
/// by the workflow and the emergency state machines.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A task to every agent of a role (their task queues).
    SendTask {
        task: &'static str,
        to_role: &'static str,
    },
    /// A notice to every agent of a role (their task queues).
    Notify {
        message_type: &'static str,
        to_role: &'static str,
    },
    /// A message to every agent and on-call (`agent.fanout`).
    Broadcast {
        message_type: &'static str,
    },
    ArmClock {
        clock: &'static str,
        owner_role: String,
        subject_agent_id: Option<String>,
        round: i32,
        due_at: DateTime<Utc>,
    },
    MeetClock(ClockRef),
    CancelClock(ClockRef),
    /// An armed clock's deadline moves (an operator snoozed it); its warning moves
    /// with it.
    MoveClock {
        clock: ClockRef,
        due_at: DateTime<Utc>,
    },
    Escalate {
        reason: String,
        owner_role: String,
        severity: Severity,
    },
}

/// Names one armed clock row of a workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockRef {
    pub clock: String,
    pub round: i32,
    pub subject_agent_id: Option<String>,
}

impl From<&ArmedClock> for ClockRef {
    fn from(a: &ArmedClock) -> Self {
        ClockRef {
            clock: a.clock.clone(),
            round: a.round,
            subject_agent_id: a.subject_agent_id.clone(),
        }
    }
}

impl Effect {
    /// The clock this effect closes, if it closes one.
    pub fn closes(&self) -> Option<&ClockRef> {
        match self {
            Effect::MeetClock(c) | Effect::CancelClock(c) => Some(c),
            _ => None,
        }
    }
}

/// Cancels every armed clock not already closed by `effects`.
pub fn cancel_remaining(effects: &mut Vec<Effect>, armed: &[ArmedClock]) {
    for a in armed {
        let r = ClockRef::from(a);
        if !effects.iter().any(|e| e.closes() == Some(&r)) {
            effects.push(Effect::CancelClock(r));
        }
    }
}

/// What an operator decides about a workflow's clocks, as effects: the same effects a
/// state machine returns, so they are written by the same interpreter.
pub mod operator {
    use chrono::{DateTime, Utc};

    use super::{ClockRef, Effect};
    use crate::domain::sla::ArmedClock;

    /// Moves an armed clock's deadline to `until`.
    pub fn snooze(clock: &ArmedClock, until: DateTime<Utc>) -> Effect {
        Effect::MoveClock {
            clock: ClockRef::from(clock),
            due_at: until,
        }
    }

    /// Cancels an armed clock: it will not breach.
    pub fn cancel(clock: &ArmedClock) -> Effect {
        Effect::CancelClock(ClockRef::from(clock))
    }
}
