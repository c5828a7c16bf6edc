//! The feature-delivery workflow (docs/protocol.md section 5) as a pure state machine.
//!
//! Everything about the workflow lives in two tables in this file: [`CLOCKS`] (every SLA
//! clock, its owner, default duration and the messages that meet it) and [`STAGES`]
//! (every state, the role it waits on, the clocks armed on entry and the messages it
//! accepts). [`decide`] reads those tables; it does no I/O and knows nothing of AMQP or
//! SQL. The processor turns the returned [`Effect`]s into rows in one transaction.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::effect::{cancel_remaining, ClockRef, Effect};
use super::sla::{ArmedClock, ClockDef, ClockDurations, Severity};

/// The roles the workflow names. The full list of roles is configuration
/// ([`protocol::catalog`]); these are the ones the workflow itself depends on.
pub mod roles {
    pub const PRODUCT: &str = "product-director";
    pub const ENGINEERING: &str = "engineering-director";
    pub const QA: &str = "qa-director";
    pub const DEVOPS: &str = "devops-manager";
    pub const MARKETING: &str = "marketing-director";
}

/// The message type that starts a workflow.
pub const START_MESSAGE: &str = "requirements_ready";
/// The role allowed to start a workflow.
pub const START_ROLE: &str = roles::PRODUCT;
/// The workflow kind stored in `workflows.kind`.
pub const KIND: &str = "feature_delivery";

/// Workflow states, mapped to their wire/SQL strings in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    RequirementsHandoff,
    InDevelopment,
    FeatureHandoff,
    Testing,
    ReleaseHandoff,
    Deploying,
    Validating,
    Completed,
    Cancelled,
    Failed,
}

impl State {
    pub const ALL: [State; 10] = [
        State::RequirementsHandoff,
        State::InDevelopment,
        State::FeatureHandoff,
        State::Testing,
        State::ReleaseHandoff,
        State::Deploying,
        State::Validating,
        State::Completed,
        State::Cancelled,
        State::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::RequirementsHandoff => "requirements_handoff",
            State::InDevelopment => "in_development",
            State::FeatureHandoff => "feature_handoff",
            State::Testing => "testing",
            State::ReleaseHandoff => "release_handoff",
            State::Deploying => "deploying",
            State::Validating => "validating",
            State::Completed => "completed",
            State::Cancelled => "cancelled",
            State::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, State::Completed | State::Cancelled | State::Failed)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const HOUR: u64 = 3600;

/// Every SLA clock of the feature-delivery workflow with its default duration.
pub const CLOCKS: &[ClockDef] = &[
    ClockDef {
        name: "technical_feasibility_assessment",
        owner: roles::ENGINEERING,
        default: Duration::from_secs(48 * HOUR),
        severity: Severity::High,
        met_by: &["feasibility_assessed"],
    },
    ClockDef {
        name: "effort_estimation",
        owner: roles::ENGINEERING,
        default: Duration::from_secs(72 * HOUR),
        severity: Severity::High,
        met_by: &["effort_estimated"],
    },
    ClockDef {
        name: "sprint_planning",
        owner: roles::ENGINEERING,
        default: Duration::from_secs(168 * HOUR),
        severity: Severity::High,
        met_by: &["sprint_initialized"],
    },
    ClockDef {
        name: "testing_start",
        owner: roles::QA,
        default: Duration::from_secs(4 * HOUR),
        severity: Severity::High,
        met_by: &["testing_started"],
    },
    ClockDef {
        name: "initial_feedback",
        owner: roles::QA,
        default: Duration::from_secs(24 * HOUR),
        severity: Severity::High,
        met_by: &[
            "bug_discovered",
            "clarification_needed",
            "testing_blocked",
            "testing_completed",
            "release_approved",
        ],
    },
    ClockDef {
        name: "testing_completion",
        owner: roles::QA,
        default: Duration::from_secs(72 * HOUR),
        severity: Severity::High,
        met_by: &["testing_completed", "release_approved"],
    },
    ClockDef {
        name: "deployment_start",
        owner: roles::DEVOPS,
        default: Duration::from_secs(2 * HOUR),
        severity: Severity::High,
        met_by: &["deployment_started"],
    },
    ClockDef {
        name: "deployment_completion",
        owner: roles::DEVOPS,
        default: Duration::from_secs(6 * HOUR),
        severity: Severity::High,
        met_by: &["deployment_completed"],
    },
    ClockDef {
        name: "post_deployment_validation",
        owner: roles::DEVOPS,
        default: Duration::from_secs(HOUR),
        severity: Severity::High,
        met_by: &["validation_completed"],
    },
];

/// What else happens when a rule is applied, besides the state change and clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    /// Send a task named `task` to the task queues of `to`.
    SendTask {
        task: &'static str,
        to: &'static str,
    },
    /// Start a new round (QA found a bug): cancel the open QA clocks, send a task.
    NewRound {
        task: &'static str,
        to: &'static str,
    },
    /// Raise an escalation against the sender's role at once.
    Escalate {
        severity: Severity,
    },
    /// The workflow is done: tell these roles the feature is deployed.
    Deployed {
        notify: &'static [&'static str],
    },
}

/// A message accepted in a stage.
#[derive(Debug)]
pub struct Rule {
    pub message: &'static str,
    pub goto: Option<State>,
    pub action: Action,
}

/// A non-terminal state: whom it waits on and what it accepts.
#[derive(Debug)]
pub struct Stage {
    pub state: State,
    /// The role whose messages this stage accepts.
    pub owner: &'static str,
    /// Clocks armed when the stage is entered.
    pub arms: &'static [&'static str],
    pub accepts: &'static [Rule],
}

const fn rule(message: &'static str, goto: Option<State>, action: Action) -> Rule {
    Rule {
        message,
        goto,
        action,
    }
}

/// The task sent to engineering when a workflow starts.
pub const START_TASK: Action = Action::SendTask {
    task: "requirements_handoff",
    to: roles::ENGINEERING,
};

/// The feature-delivery workflow, one row per non-terminal state (docs/protocol.md section 5).
pub const STAGES: &[Stage] = &[
    Stage {
        state: State::RequirementsHandoff,
        owner: roles::ENGINEERING,
        arms: &[
            "technical_feasibility_assessment",
            "effort_estimation",
            "sprint_planning",
        ],
        accepts: &[
            rule("handoff_acknowledged", None, Action::None),
            rule("feasibility_assessed", None, Action::None),
            rule("effort_estimated", None, Action::None),
            rule(
                "sprint_initialized",
                Some(State::InDevelopment),
                Action::None,
            ),
        ],
    },
    Stage {
        state: State::InDevelopment,
        owner: roles::ENGINEERING,
        arms: &[],
        accepts: &[
            rule(
                "feature_completed",
                Some(State::FeatureHandoff),
                Action::SendTask {
                    task: "feature_handoff",
                    to: roles::QA,
                },
            ),
            rule(
                "engineering_blocked",
                None,
                Action::Escalate {
                    severity: Severity::High,
                },
            ),
        ],
    },
    Stage {
        state: State::FeatureHandoff,
        owner: roles::QA,
        arms: &["testing_start", "initial_feedback", "testing_completion"],
        accepts: &[
            rule("handoff_acknowledged", None, Action::None),
            rule("testing_started", Some(State::Testing), Action::None),
        ],
    },
    Stage {
        state: State::Testing,
        owner: roles::QA,
        arms: &[],
        accepts: &[
            rule(
                "bug_discovered",
                Some(State::InDevelopment),
                Action::NewRound {
                    task: "bug_report",
                    to: roles::ENGINEERING,
                },
            ),
            rule(
                "clarification_needed",
                None,
                Action::SendTask {
                    task: "clarification_request",
                    to: roles::ENGINEERING,
                },
            ),
            rule(
                "testing_blocked",
                None,
                Action::Escalate {
                    severity: Severity::High,
                },
            ),
            rule("testing_completed", None, Action::None),
            rule(
                "release_approved",
                Some(State::ReleaseHandoff),
                Action::SendTask {
                    task: "release_handoff",
                    to: roles::DEVOPS,
                },
            ),
        ],
    },
    Stage {
        state: State::ReleaseHandoff,
        owner: roles::DEVOPS,
        arms: &["deployment_start", "deployment_completion"],
        accepts: &[
            rule("handoff_acknowledged", None, Action::None),
            rule("deployment_started", Some(State::Deploying), Action::None),
        ],
    },
    Stage {
        state: State::Deploying,
        owner: roles::DEVOPS,
        arms: &[],
        accepts: &[
            rule(
                "deployment_completed",
                Some(State::Validating),
                Action::None,
            ),
            rule(
                "deployment_failed",
                None,
                Action::Escalate {
                    severity: Severity::Critical,
                },
            ),
            rule("rollback_initiated", None, Action::None),
        ],
    },
    Stage {
        state: State::Validating,
        owner: roles::DEVOPS,
        arms: &["post_deployment_validation"],
        accepts: &[
            rule(
                "validation_completed",
                Some(State::Completed),
                Action::Deployed {
                    notify: &[roles::PRODUCT, roles::MARKETING],
                },
            ),
            rule(
                "post_deployment_issues",
                None,
                Action::Escalate {
                    severity: Severity::Critical,
                },
            ),
        ],
    },
];

/// One of this workflow's clocks, by name.
pub fn clock(name: &str) -> Option<&'static ClockDef> {
    CLOCKS.iter().find(|c| c.name == name)
}

/// The stage row of a non-terminal state.
pub fn stage(state: State) -> Option<&'static Stage> {
    STAGES.iter().find(|s| s.state == state)
}

/// Every message type the workflow consumes (the inputs of [`decide`] and [`start`]).
pub fn input_message_types() -> impl Iterator<Item = &'static str> {
    std::iter::once(START_MESSAGE)
        .chain(
            STAGES
                .iter()
                .flat_map(|s| s.accepts.iter().map(|r| r.message)),
        )
        .chain(CLOCKS.iter().flat_map(|c| c.met_by.iter().copied()))
}

/// True if `message_type` raises an escalation in some state (a batch reserves an
/// escalation id for each such message before deciding it).
pub fn may_escalate(message_type: &str) -> bool {
    STAGES
        .iter()
        .flat_map(|s| s.accepts.iter())
        .any(|r| r.message == message_type && matches!(r.action, Action::Escalate { .. }))
}

/// True if `message_type` is consumed by the workflow state machine.
pub fn is_input(message_type: &str) -> bool {
    input_message_types().any(|m| m == message_type)
}

/// What the state machine needs to know about a workflow.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: State,
    pub round: i32,
    pub armed: Vec<ArmedClock>,
}

/// An inbound message, as far as the state machine cares.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub message_type: &'a str,
    pub sender_role: &'a str,
}

/// The outcome of an accepted message.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub state: State,
    pub round: i32,
    pub effects: Vec<Effect>,
}

/// Why a message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error(
        "workflow is {state}, which is final: {message_type} from {sender_role} changes nothing"
    )]
    Terminal {
        state: State,
        message_type: String,
        sender_role: String,
    },
    #[error("{message_type} from {sender_role} is not accepted while the workflow is {state}")]
    NotAccepted {
        state: State,
        message_type: String,
        sender_role: String,
    },
}

/// Starts a workflow from `requirements_ready` (the caller checks the sender's role and
/// that the correlation id is new).
pub fn start(now: DateTime<Utc>, durations: &ClockDurations) -> Decision {
    let mut effects = Vec::new();
    push_action(&mut effects, START_TASK, START_ROLE, START_MESSAGE);
    arm_stage(&mut effects, State::RequirementsHandoff, 1, now, durations);
    Decision {
        state: State::RequirementsHandoff,
        round: 1,
        effects,
    }
}

/// Applies one message to a workflow.
pub fn decide(
    snap: &Snapshot,
    input: Input<'_>,
    now: DateTime<Utc>,
    durations: &ClockDurations,
) -> Result<Decision, Rejection> {
    if snap.state.is_terminal() {
        return Err(Rejection::Terminal {
            state: snap.state,
            message_type: input.message_type.to_owned(),
            sender_role: input.sender_role.to_owned(),
        });
    }
    let met = clocks_met(snap, input);
    let rule = stage(snap.state)
        .filter(|s| s.owner == input.sender_role)
        .and_then(|s| s.accepts.iter().find(|r| r.message == input.message_type));

    let Some(rule) = rule else {
        // Not a rule of this state, but it meets a clock of this round: accepted late.
        if met.is_empty() {
            return Err(Rejection::NotAccepted {
                state: snap.state,
                message_type: input.message_type.to_owned(),
                sender_role: input.sender_role.to_owned(),
            });
        }
        return Ok(Decision {
            state: snap.state,
            round: snap.round,
            effects: met,
        });
    };

    let mut effects = met;
    let mut round = snap.round;
    if let Action::NewRound { .. } = rule.action {
        round += 1;
        let qa_clocks = stage(State::FeatureHandoff).map_or(&[][..], |s| s.arms);
        for armed in &snap.armed {
            let r = ClockRef::from(armed);
            let being_met = effects.iter().any(|e| e.closes() == Some(&r));
            if qa_clocks.contains(&armed.clock.as_str()) && !being_met {
                effects.push(Effect::CancelClock(r));
            }
        }
    }
    push_action(
        &mut effects,
        rule.action,
        input.sender_role,
        input.message_type,
    );

    let state = rule.goto.unwrap_or(snap.state);
    if state != snap.state {
        arm_stage(&mut effects, state, round, now, durations);
    }
    if state.is_terminal() {
        cancel_remaining(&mut effects, &snap.armed);
    }
    Ok(Decision {
        state,
        round,
        effects,
    })
}

/// Closes every clock still armed, as when an operator cancels or fails a workflow.
pub fn close_all(snap: &Snapshot, to: State) -> Decision {
    let mut effects = Vec::new();
    cancel_remaining(&mut effects, &snap.armed);
    Decision {
        state: to,
        round: snap.round,
        effects,
    }
}

fn clocks_met(snap: &Snapshot, input: Input<'_>) -> Vec<Effect> {
    snap.armed
        .iter()
        .filter(|a| a.owner_role == input.sender_role)
        .filter(|a| clock(&a.clock).is_some_and(|d| d.met_by.contains(&input.message_type)))
        .map(|a| Effect::MeetClock(a.into()))
        .collect()
}

fn push_action(effects: &mut Vec<Effect>, action: Action, sender_role: &str, message_type: &str) {
    match action {
        Action::None => {}
        Action::SendTask { task, to } | Action::NewRound { task, to } => {
            effects.push(Effect::SendTask { task, to_role: to })
        }
        Action::Escalate { severity } => effects.push(Effect::Escalate {
            reason: message_type.to_owned(),
            owner_role: sender_role.to_owned(),
            severity,
        }),
        Action::Deployed { notify } => {
            for role in notify {
                effects.push(Effect::Notify {
                    message_type: "feature_deployed",
                    to_role: role,
                });
            }
        }
    }
}

fn arm_stage(
    effects: &mut Vec<Effect>,
    state: State,
    round: i32,
    now: DateTime<Utc>,
    durations: &ClockDurations,
) {
    let Some(stage) = stage(state) else { return };
    for name in stage.arms {
        let Some(def) = clock(name) else { continue };
        effects.push(Effect::ArmClock {
            clock: def.name,
            owner_role: def.owner.to_string(),
            subject_agent_id: None,
            round,
            due_at: durations.due_at(name, now),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roles::*;
    use std::collections::HashMap;

    fn durations() -> ClockDurations {
        ClockDurations::new(CLOCKS, 1.0, &HashMap::new())
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-15T10:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("valid timestamp")
    }

    fn snap(state: State, round: i32, armed: &[(&str, i32)]) -> Snapshot {
        Snapshot {
            state,
            round,
            armed: armed
                .iter()
                .map(|(c, r)| ArmedClock {
                    clock: c.to_string(),
                    round: *r,
                    owner_role: clock(c).expect("known clock").owner.to_string(),
                    subject_agent_id: None,
                })
                .collect(),
        }
    }

    fn run(s: &Snapshot, sender: &str, msg: &str) -> Result<Decision, Rejection> {
        decide(
            s,
            Input {
                message_type: msg,
                sender_role: sender,
            },
            now(),
            &durations(),
        )
    }

    fn armed_names(d: &Decision) -> Vec<(&'static str, i32)> {
        d.effects
            .iter()
            .filter_map(|e| match e {
                Effect::ArmClock { clock, round, .. } => Some((*clock, *round)),
                _ => None,
            })
            .collect()
    }

    fn has(d: &Decision, e: &Effect) -> bool {
        d.effects.contains(e)
    }

    fn clock_ref(c: &str, round: i32) -> ClockRef {
        ClockRef {
            clock: c.into(),
            round,
            subject_agent_id: None,
        }
    }

    fn meet(c: &str, round: i32) -> Effect {
        Effect::MeetClock(clock_ref(c, round))
    }

    fn cancel(c: &str, round: i32) -> Effect {
        Effect::CancelClock(clock_ref(c, round))
    }

    /// docs/protocol.md section 5, written out by hand: (state, sender, message) → next state.
    /// Every pair not listed here must be rejected when no clock is armed.
    const EXPECTED: &[(State, &str, &str, State)] = &[
        (
            State::RequirementsHandoff,
            ENGINEERING,
            "handoff_acknowledged",
            State::RequirementsHandoff,
        ),
        (
            State::RequirementsHandoff,
            ENGINEERING,
            "feasibility_assessed",
            State::RequirementsHandoff,
        ),
        (
            State::RequirementsHandoff,
            ENGINEERING,
            "effort_estimated",
            State::RequirementsHandoff,
        ),
        (
            State::RequirementsHandoff,
            ENGINEERING,
            "sprint_initialized",
            State::InDevelopment,
        ),
        (
            State::InDevelopment,
            ENGINEERING,
            "feature_completed",
            State::FeatureHandoff,
        ),
        (
            State::InDevelopment,
            ENGINEERING,
            "engineering_blocked",
            State::InDevelopment,
        ),
        (
            State::FeatureHandoff,
            QA,
            "handoff_acknowledged",
            State::FeatureHandoff,
        ),
        (State::FeatureHandoff, QA, "testing_started", State::Testing),
        (State::Testing, QA, "bug_discovered", State::InDevelopment),
        (State::Testing, QA, "clarification_needed", State::Testing),
        (State::Testing, QA, "testing_blocked", State::Testing),
        (State::Testing, QA, "testing_completed", State::Testing),
        (
            State::Testing,
            QA,
            "release_approved",
            State::ReleaseHandoff,
        ),
        (
            State::ReleaseHandoff,
            DEVOPS,
            "handoff_acknowledged",
            State::ReleaseHandoff,
        ),
        (
            State::ReleaseHandoff,
            DEVOPS,
            "deployment_started",
            State::Deploying,
        ),
        (
            State::Deploying,
            DEVOPS,
            "deployment_completed",
            State::Validating,
        ),
        (
            State::Deploying,
            DEVOPS,
            "deployment_failed",
            State::Deploying,
        ),
        (
            State::Deploying,
            DEVOPS,
            "rollback_initiated",
            State::Deploying,
        ),
        (
            State::Validating,
            DEVOPS,
            "validation_completed",
            State::Completed,
        ),
        (
            State::Validating,
            DEVOPS,
            "post_deployment_issues",
            State::Validating,
        ),
    ];

    const SENDERS: &[&str] = &[
        PRODUCT,
        ENGINEERING,
        QA,
        DEVOPS,
        MARKETING,
        "creative-director",
    ];

    #[test]
    fn every_state_and_message_pair_is_accepted_or_rejected_as_the_protocol_says() {
        let mut messages: Vec<&str> = input_message_types().collect();
        messages.sort_unstable();
        messages.dedup();
        let mut checked = 0;
        for state in State::ALL {
            for sender in SENDERS {
                for msg in &messages {
                    let got = run(&snap(state, 1, &[]), sender, msg);
                    let want = EXPECTED
                        .iter()
                        .find(|(s, r, m, _)| *s == state && r == sender && m == msg)
                        .map(|(_, _, _, to)| *to);
                    match (want, got) {
                        (Some(to), Ok(d)) => assert_eq!(d.state, to, "{state} {sender} {msg}"),
                        (None, Err(_)) => {}
                        (want, got) => panic!("{state} {sender} {msg}: want {want:?}, got {got:?}"),
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, State::ALL.len() * SENDERS.len() * messages.len());
    }

    #[test]
    fn terminal_states_reject_everything_as_terminal() {
        for state in [State::Completed, State::Cancelled, State::Failed] {
            for (_, sender, msg, _) in EXPECTED {
                let got = run(&snap(state, 1, &[]), sender, msg);
                assert!(
                    matches!(got, Err(Rejection::Terminal { .. })),
                    "{state} {msg}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn start_sends_requirements_to_engineering_and_arms_its_three_clocks() {
        let d = start(now(), &durations());
        assert_eq!(d.state, State::RequirementsHandoff);
        assert_eq!(d.round, 1);
        assert!(has(
            &d,
            &Effect::SendTask {
                task: "requirements_handoff",
                to_role: ENGINEERING
            }
        ));
        let hours = |h: i64| now() + chrono::Duration::hours(h);
        for (clock, due) in [
            ("technical_feasibility_assessment", hours(48)),
            ("effort_estimation", hours(72)),
            ("sprint_planning", hours(168)),
        ] {
            assert!(
                has(
                    &d,
                    &Effect::ArmClock {
                        clock,
                        owner_role: ENGINEERING.to_string(),
                        subject_agent_id: None,
                        round: 1,
                        due_at: due
                    }
                ),
                "{clock} not armed for {due}: {d:?}"
            );
        }
    }

    #[test]
    fn time_scale_and_overrides_shorten_every_clock() {
        let mut overrides = HashMap::new();
        overrides.insert("testing_start".to_string(), Duration::from_secs(100));
        let d = ClockDurations::new(CLOCKS, 0.001, &overrides);
        assert_eq!(
            d.get("sprint_planning"),
            Duration::from_secs(168 * 3600).mul_f64(0.001)
        );
        assert_eq!(d.get("testing_start"), Duration::from_millis(100));
    }

    #[test]
    fn sprint_initialized_meets_sprint_planning_and_moves_to_development() {
        let s = snap(
            State::RequirementsHandoff,
            1,
            &[
                ("technical_feasibility_assessment", 1),
                ("effort_estimation", 1),
                ("sprint_planning", 1),
            ],
        );
        let d = run(&s, ENGINEERING, "sprint_initialized").expect("accepted");
        assert_eq!(d.state, State::InDevelopment);
        assert_eq!(d.effects, vec![meet("sprint_planning", 1)]);
    }

    #[test]
    fn a_message_meeting_a_clock_still_armed_is_accepted_late_without_a_state_change() {
        let s = snap(State::InDevelopment, 1, &[("effort_estimation", 1)]);
        let d = run(&s, ENGINEERING, "effort_estimated").expect("accepted late");
        assert_eq!(d.state, State::InDevelopment);
        assert_eq!(d.effects, vec![meet("effort_estimation", 1)]);

        // Once met (no longer armed) the same message is rejected.
        let s = snap(State::InDevelopment, 1, &[]);
        assert!(run(&s, ENGINEERING, "effort_estimated").is_err());
        // Another role cannot meet engineering's clock.
        let s = snap(State::InDevelopment, 1, &[("effort_estimation", 1)]);
        assert!(run(&s, QA, "effort_estimated").is_err());
    }

    #[test]
    fn feature_completed_hands_off_to_qa_and_arms_the_qa_clocks() {
        let d = run(
            &snap(State::InDevelopment, 1, &[]),
            ENGINEERING,
            "feature_completed",
        )
        .expect("accepted");
        assert_eq!(d.state, State::FeatureHandoff);
        assert!(has(
            &d,
            &Effect::SendTask {
                task: "feature_handoff",
                to_role: QA
            }
        ));
        assert_eq!(
            armed_names(&d),
            vec![
                ("testing_start", 1),
                ("initial_feedback", 1),
                ("testing_completion", 1)
            ]
        );
    }

    #[test]
    fn bug_discovered_starts_a_new_round_cancels_open_qa_clocks_and_reports_the_bug() {
        let s = snap(
            State::Testing,
            1,
            &[
                ("initial_feedback", 1),
                ("testing_completion", 1),
                ("effort_estimation", 1),
            ],
        );
        let d = run(&s, QA, "bug_discovered").expect("accepted");
        assert_eq!(d.state, State::InDevelopment);
        assert_eq!(d.round, 2);
        assert!(
            has(&d, &meet("initial_feedback", 1)),
            "bug_discovered is QA's first feedback"
        );
        assert!(has(&d, &cancel("testing_completion", 1)));
        assert!(
            !has(&d, &cancel("effort_estimation", 1)),
            "engineering's clock is not QA's"
        );
        assert!(has(
            &d,
            &Effect::SendTask {
                task: "bug_report",
                to_role: ENGINEERING
            }
        ));

        // The fixed feature comes back: QA's clocks are armed again, for round 2.
        let d = run(
            &snap(State::InDevelopment, 2, &[]),
            ENGINEERING,
            "feature_completed",
        )
        .expect("accepted");
        assert_eq!(
            armed_names(&d),
            vec![
                ("testing_start", 2),
                ("initial_feedback", 2),
                ("testing_completion", 2)
            ]
        );
    }

    #[test]
    fn clarification_needed_asks_engineering_and_counts_as_initial_feedback() {
        let s = snap(
            State::Testing,
            1,
            &[("initial_feedback", 1), ("testing_completion", 1)],
        );
        let d = run(&s, QA, "clarification_needed").expect("accepted");
        assert_eq!(d.state, State::Testing);
        assert_eq!(
            d.effects,
            vec![
                meet("initial_feedback", 1),
                Effect::SendTask {
                    task: "clarification_request",
                    to_role: ENGINEERING
                }
            ]
        );
    }

    #[test]
    fn release_approved_meets_qa_clocks_and_hands_off_to_devops() {
        let s = snap(
            State::Testing,
            1,
            &[("initial_feedback", 1), ("testing_completion", 1)],
        );
        let d = run(&s, QA, "release_approved").expect("accepted");
        assert_eq!(d.state, State::ReleaseHandoff);
        assert!(has(&d, &meet("initial_feedback", 1)));
        assert!(has(&d, &meet("testing_completion", 1)));
        assert!(has(
            &d,
            &Effect::SendTask {
                task: "release_handoff",
                to_role: DEVOPS
            }
        ));
        assert_eq!(
            armed_names(&d),
            vec![("deployment_start", 1), ("deployment_completion", 1)]
        );
    }

    #[test]
    fn blocked_and_failure_messages_escalate_at_once_against_the_sender() {
        for (state, role, msg, sev) in [
            (
                State::InDevelopment,
                ENGINEERING,
                "engineering_blocked",
                Severity::High,
            ),
            (State::Testing, QA, "testing_blocked", Severity::High),
            (
                State::Deploying,
                DEVOPS,
                "deployment_failed",
                Severity::Critical,
            ),
            (
                State::Validating,
                DEVOPS,
                "post_deployment_issues",
                Severity::Critical,
            ),
        ] {
            let d = run(&snap(state, 1, &[]), role, msg).expect("accepted");
            assert_eq!(d.state, state, "{msg} changes no state");
            assert!(
                has(
                    &d,
                    &Effect::Escalate {
                        reason: msg.into(),
                        owner_role: role.into(),
                        severity: sev
                    }
                ),
                "{msg}: {d:?}"
            );
        }
    }

    #[test]
    fn deployment_completed_arms_validation_and_completion_notifies_and_closes_everything() {
        let s = snap(State::Deploying, 1, &[("deployment_completion", 1)]);
        let d = run(&s, DEVOPS, "deployment_completed").expect("accepted");
        assert_eq!(d.state, State::Validating);
        assert!(has(&d, &meet("deployment_completion", 1)));
        assert_eq!(armed_names(&d), vec![("post_deployment_validation", 1)]);

        let s = snap(
            State::Validating,
            1,
            &[("post_deployment_validation", 1), ("effort_estimation", 1)],
        );
        let d = run(&s, DEVOPS, "validation_completed").expect("accepted");
        assert_eq!(d.state, State::Completed);
        assert!(has(&d, &meet("post_deployment_validation", 1)));
        assert!(
            has(&d, &cancel("effort_estimation", 1)),
            "a terminal state leaves no clock armed"
        );
        for role in [PRODUCT, MARKETING] {
            assert!(has(
                &d,
                &Effect::Notify {
                    message_type: "feature_deployed",
                    to_role: role
                }
            ));
        }
    }

    #[test]
    fn handoff_acknowledged_is_accepted_only_from_the_role_the_handoff_went_to() {
        assert!(run(
            &snap(State::RequirementsHandoff, 1, &[]),
            QA,
            "handoff_acknowledged"
        )
        .is_err());
        assert!(run(
            &snap(State::FeatureHandoff, 1, &[]),
            ENGINEERING,
            "handoff_acknowledged"
        )
        .is_err());
        assert!(run(
            &snap(State::ReleaseHandoff, 1, &[]),
            DEVOPS,
            "handoff_acknowledged"
        )
        .is_ok());
    }

    #[test]
    fn close_all_cancels_every_armed_clock() {
        let s = snap(
            State::Testing,
            1,
            &[("initial_feedback", 1), ("testing_completion", 1)],
        );
        let d = close_all(&s, State::Cancelled);
        assert_eq!(d.state, State::Cancelled);
        assert_eq!(
            d.effects,
            vec![
                cancel("initial_feedback", 1),
                cancel("testing_completion", 1)
            ]
        );
    }

    #[test]
    fn states_round_trip_through_their_strings() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("nope"), None);
    }
}
