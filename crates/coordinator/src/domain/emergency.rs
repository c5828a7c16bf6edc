//! Emergencies (docs/protocol.md section 7) as a pure state machine: an incident is raised
//! and broadcast, every registered agent must acknowledge within its clock, someone must
//! respond, status updates recur until the incident is resolved.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::effect::{cancel_remaining, ClockRef, Effect};
use super::sla::{ArmedClock, ClockDef, ClockDurations, Severity, OWNER_SUBJECT_AGENT};

pub const KIND: &str = "emergency";
pub const ALERT: &str = "emergency_alert";
pub const ACKNOWLEDGED: &str = "emergency_acknowledged";
pub const RESPONSE: &str = "emergency_response";
pub const STATUS_UPDATE: &str = "emergency_status_update";
pub const RESOLVED: &str = "emergency_resolved";
/// The owner role of the incident-wide clocks.
pub const ONCALL: &str = "oncall";

pub const ACKNOWLEDGMENT_CLOCK: &str = "acknowledgment";
pub const INITIAL_RESPONSE_CLOCK: &str = "initial_response";
pub const STATUS_UPDATE_CLOCK: &str = "status_update";

/// The emergency's clocks with their default durations.
pub const CLOCKS: &[ClockDef] = &[
    ClockDef {
        name: ACKNOWLEDGMENT_CLOCK,
        owner: OWNER_SUBJECT_AGENT,
        default: Duration::from_secs(5 * 60),
        severity: Severity::Critical,
        met_by: &[ACKNOWLEDGED],
    },
    ClockDef {
        name: INITIAL_RESPONSE_CLOCK,
        owner: ONCALL,
        default: Duration::from_secs(15 * 60),
        severity: Severity::Critical,
        met_by: &[RESPONSE],
    },
    ClockDef {
        name: STATUS_UPDATE_CLOCK,
        owner: ONCALL,
        default: Duration::from_secs(30 * 60),
        severity: Severity::High,
        met_by: &[STATUS_UPDATE],
    },
];

/// Every message type the emergency machine consumes.
pub const INPUTS: &[&str] = &[ALERT, ACKNOWLEDGED, RESPONSE, STATUS_UPDATE, RESOLVED];

pub fn is_input(message_type: &str) -> bool {
    INPUTS.contains(&message_type)
}

/// True for the emergency's own clocks (what is said of them is as urgent as the
/// emergency).
pub fn is_clock(name: &str) -> bool {
    CLOCKS.iter().any(|c| c.name == name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncidentState {
    Active,
    Resolved,
}

impl IncidentState {
    pub const ALL: [IncidentState; 2] = [IncidentState::Active, IncidentState::Resolved];

    pub fn as_str(self) -> &'static str {
        match self {
            IncidentState::Active => "active",
            IncidentState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<IncidentState> {
        IncidentState::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// What the machine needs to know about an incident. `round` counts status updates.
#[derive(Debug, Clone)]
pub struct Incident {
    pub state: IncidentState,
    pub round: i32,
    pub armed: Vec<ArmedClock>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub state: IncidentState,
    pub round: i32,
    pub effects: Vec<Effect>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("incident is {state}: {message_type} changes nothing", state = .state.as_str())]
pub struct NotAccepted {
    pub state: IncidentState,
    pub message_type: String,
}

/// A new incident: broadcast it, and arm an acknowledgment clock for every registered
/// agent but the one that raised it, the initial response and the first status update.
pub fn raise(
    agents: &[(String, String)],
    raised_by: Option<&str>,
    now: DateTime<Utc>,
    durations: &ClockDurations,
) -> Decision {
    let mut effects = vec![Effect::Broadcast {
        message_type: ALERT,
    }];
    for (agent_id, agent_type) in agents {
        if Some(agent_id.as_str()) == raised_by {
            continue;
        }
        effects.push(Effect::ArmClock {
            clock: ACKNOWLEDGMENT_CLOCK,
            owner_role: agent_type.clone(),
            subject_agent_id: Some(agent_id.clone()),
            round: 1,
            due_at: durations.due_at(ACKNOWLEDGMENT_CLOCK, now),
        });
    }
    for clock in [INITIAL_RESPONSE_CLOCK, STATUS_UPDATE_CLOCK] {
        effects.push(Effect::ArmClock {
            clock,
            owner_role: ONCALL.into(),
            subject_agent_id: None,
            round: 1,
            due_at: durations.due_at(clock, now),
        });
    }
    Decision {
        state: IncidentState::Active,
        round: 1,
        effects,
    }
}

/// Applies one message from `sender` to an incident.
pub fn decide(
    inc: &Incident,
    message_type: &str,
    sender: &str,
    now: DateTime<Utc>,
    durations: &ClockDurations,
) -> Result<Decision, NotAccepted> {
    if inc.state == IncidentState::Resolved || message_type == ALERT {
        return Err(NotAccepted {
            state: inc.state,
            message_type: message_type.to_string(),
        });
    }
    let mut d = Decision {
        state: IncidentState::Active,
        round: inc.round,
        effects: Vec::new(),
    };
    match message_type {
        ACKNOWLEDGED => d
            .effects
            .extend(meet_armed(inc, ACKNOWLEDGMENT_CLOCK, Some(sender))),
        RESPONSE => d
            .effects
            .extend(meet_armed(inc, INITIAL_RESPONSE_CLOCK, None)),
        STATUS_UPDATE => {
            d.effects.extend(meet_armed(inc, STATUS_UPDATE_CLOCK, None));
            d.round = inc.round + 1;
            d.effects.push(Effect::ArmClock {
                clock: STATUS_UPDATE_CLOCK,
                owner_role: ONCALL.into(),
                subject_agent_id: None,
                round: d.round,
                due_at: durations.due_at(STATUS_UPDATE_CLOCK, now),
            });
        }
        RESOLVED => {
            d.state = IncidentState::Resolved;
            cancel_remaining(&mut d.effects, &inc.armed);
        }
        _ => {
            return Err(NotAccepted {
                state: inc.state,
                message_type: message_type.to_string(),
            })
        }
    }
    Ok(d)
}

/// Meets the armed clocks named `clock` (of `subject` only, when given).
fn meet_armed(inc: &Incident, clock: &str, subject: Option<&str>) -> Vec<Effect> {
    inc.armed
        .iter()
        .filter(|a| {
            a.clock == clock && (subject.is_none() || a.subject_agent_id.as_deref() == subject)
        })
        .map(|a| Effect::MeetClock(ClockRef::from(a)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn durations() -> ClockDurations {
        ClockDurations::new(CLOCKS, 1.0, &std::collections::HashMap::new())
    }

    fn now() -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse().expect("time")
    }

    fn agents() -> Vec<(String, String)> {
        vec![
            ("qa-1".into(), "qa-director".into()),
            ("eng-1".into(), "engineering-director".into()),
            ("ops-1".into(), "devops-manager".into()),
        ]
    }

    fn armed(clock: &str, round: i32, subject: Option<&str>) -> ArmedClock {
        ArmedClock {
            clock: clock.into(),
            round,
            owner_role: ONCALL.into(),
            subject_agent_id: subject.map(str::to_string),
        }
    }

    fn r(clock: &str, round: i32, subject: Option<&str>) -> ClockRef {
        ClockRef {
            clock: clock.into(),
            round,
            subject_agent_id: subject.map(str::to_string),
        }
    }

    #[test]
    fn raising_broadcasts_and_arms_a_clock_per_agent_but_the_raiser() {
        let d = raise(&agents(), Some("ops-1"), now(), &durations());
        assert_eq!(
            d.effects[0],
            Effect::Broadcast {
                message_type: ALERT
            }
        );
        let arms: Vec<(&str, Option<String>)> = d
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::ArmClock {
                    clock,
                    subject_agent_id,
                    ..
                } => Some((*clock, subject_agent_id.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            arms,
            vec![
                (ACKNOWLEDGMENT_CLOCK, Some("qa-1".into())),
                (ACKNOWLEDGMENT_CLOCK, Some("eng-1".into())),
                (INITIAL_RESPONSE_CLOCK, None),
                (STATUS_UPDATE_CLOCK, None),
            ]
        );
        assert!(d.effects.iter().any(|e| matches!(e,
            Effect::ArmClock { clock: ACKNOWLEDGMENT_CLOCK, due_at, .. } if *due_at == now() + chrono::Duration::minutes(5))));
    }

    #[test]
    fn each_agent_meets_only_its_own_acknowledgment() {
        let inc = Incident {
            state: IncidentState::Active,
            round: 1,
            armed: vec![
                armed(ACKNOWLEDGMENT_CLOCK, 1, Some("qa-1")),
                armed(ACKNOWLEDGMENT_CLOCK, 1, Some("eng-1")),
            ],
        };
        let d = decide(&inc, ACKNOWLEDGED, "qa-1", now(), &durations()).expect("accepted");
        assert_eq!(
            d.effects,
            vec![Effect::MeetClock(r(ACKNOWLEDGMENT_CLOCK, 1, Some("qa-1")))]
        );
        let d = decide(&inc, ACKNOWLEDGED, "stranger", now(), &durations()).expect("accepted");
        assert!(
            d.effects.is_empty(),
            "a late or extra acknowledgment changes nothing"
        );
    }

    #[test]
    fn a_status_update_meets_the_current_clock_and_arms_the_next() {
        let inc = Incident {
            state: IncidentState::Active,
            round: 3,
            armed: vec![
                armed(STATUS_UPDATE_CLOCK, 3, None),
                armed(INITIAL_RESPONSE_CLOCK, 1, None),
            ],
        };
        let d = decide(&inc, STATUS_UPDATE, "ops-1", now(), &durations()).expect("accepted");
        assert_eq!(d.round, 4);
        assert_eq!(
            d.effects[0],
            Effect::MeetClock(r(STATUS_UPDATE_CLOCK, 3, None))
        );
        assert!(matches!(
            &d.effects[1],
            Effect::ArmClock {
                clock: STATUS_UPDATE_CLOCK,
                round: 4,
                ..
            }
        ));
        let d = decide(&inc, RESPONSE, "eng-1", now(), &durations()).expect("accepted");
        assert_eq!(
            d.effects,
            vec![Effect::MeetClock(r(INITIAL_RESPONSE_CLOCK, 1, None))]
        );
    }

    #[test]
    fn resolving_cancels_every_open_clock_and_nothing_is_accepted_after() {
        let inc = Incident {
            state: IncidentState::Active,
            round: 2,
            armed: vec![
                armed(STATUS_UPDATE_CLOCK, 2, None),
                armed(ACKNOWLEDGMENT_CLOCK, 1, Some("eng-1")),
            ],
        };
        let d = decide(&inc, RESOLVED, "ops-1", now(), &durations()).expect("accepted");
        assert_eq!(d.state, IncidentState::Resolved);
        assert_eq!(
            d.effects,
            vec![
                Effect::CancelClock(r(STATUS_UPDATE_CLOCK, 2, None)),
                Effect::CancelClock(r(ACKNOWLEDGMENT_CLOCK, 1, Some("eng-1")))
            ]
        );
        let resolved = Incident {
            state: IncidentState::Resolved,
            round: 2,
            armed: vec![],
        };
        for m in INPUTS {
            assert!(
                decide(&resolved, m, "ops-1", now(), &durations()).is_err(),
                "{m}"
            );
        }
        assert!(decide(&inc, ALERT, "ops-1", now(), &durations()).is_err());
    }
}
