//! Workflows as pure state machines: [`start`] and [`decide`] walk a workflow's
//! definition ([`super::definition`], one file per workflow under `config/workflows/`):
//! the rule of the current state for the message and its sender, the clocks it meets,
//! the actions it names, the clocks of the state it enters. No I/O, nothing of AMQP or
//! SQL, and no workflow named: every workflow is its definition. The engine turns the
//! returned [`Effect`]s into rows in one transaction.

use chrono::{DateTime, Utc};

use super::definition::{self, Action, After, Definition};
use super::effect::{cancel_remaining, ClockRef, Effect};
use super::sla::{ArmedClock, ClockDurations};

/// What the state machine needs to know about a workflow.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: &'static str,
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
    pub state: &'static str,
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
        state: String,
        message_type: String,
        sender_role: String,
    },
    #[error("{message_type} from {sender_role} is not accepted while the workflow is {state}")]
    NotAccepted {
        state: String,
        message_type: String,
        sender_role: String,
    },
}

/// Where an operator's `workflow cancel` or `workflow fail` takes a workflow (every
/// workflow has both states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    Cancelled,
    Failed,
}

impl Closing {
    pub fn state(self) -> &'static str {
        match self {
            Closing::Cancelled => definition::CANCELLED,
            Closing::Failed => definition::FAILED,
        }
    }
}

/// Starts a workflow of `def` from its start message (the caller checks the sender's
/// role and that the correlation id is new).
pub fn start(def: &'static Definition, now: DateTime<Utc>, durations: &ClockDurations) -> Decision {
    let s = &def.start;
    enter(def, s.state, &s.actions, s.from, s.message, now, durations)
}

/// Starts a follow-on of `def` as its parent enters the state `after` names.
pub fn follow(
    def: &'static Definition,
    after: &After,
    now: DateTime<Utc>,
    durations: &ClockDurations,
) -> Decision {
    enter(def, after.state, &after.actions, "", "", now, durations)
}

/// A new workflow's first decision: its actions, then the clocks of its first state.
fn enter(
    def: &'static Definition,
    state: &'static str,
    actions: &[Action],
    sender_role: &str,
    message_type: &str,
    now: DateTime<Utc>,
    durations: &ClockDurations,
) -> Decision {
    let mut effects = Vec::new();
    push_actions(&mut effects, actions, &[], sender_role, message_type);
    arm_state(&mut effects, def, state, 1, now, durations);
    Decision {
        state,
        round: 1,
        effects,
    }
}

/// Applies one message to a workflow of `def`.
pub fn decide(
    def: &'static Definition,
    snap: &Snapshot,
    input: Input<'_>,
    now: DateTime<Utc>,
    durations: &ClockDurations,
) -> Result<Decision, Rejection> {
    if def.is_terminal(snap.state) {
        return Err(Rejection::Terminal {
            state: snap.state.to_owned(),
            message_type: input.message_type.to_owned(),
            sender_role: input.sender_role.to_owned(),
        });
    }
    let met = clocks_met(def, snap, input);
    let rule = def.state(snap.state).and_then(|s| {
        s.rules
            .iter()
            .find(|r| r.message == input.message_type && r.from == input.sender_role)
    });

    let Some(rule) = rule else {
        // Not a rule of this state, but it meets a clock of this round: accepted late.
        if met.is_empty() {
            return Err(Rejection::NotAccepted {
                state: snap.state.to_owned(),
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
    let round = if rule.actions.contains(&Action::NewRound) {
        snap.round + 1
    } else {
        snap.round
    };
    push_actions(
        &mut effects,
        &rule.actions,
        &snap.armed,
        input.sender_role,
        input.message_type,
    );

    let state = rule.goto.unwrap_or(snap.state);
    if state != snap.state {
        arm_state(&mut effects, def, state, round, now, durations);
    }
    if def.is_terminal(state) {
        cancel_remaining(&mut effects, &snap.armed);
    }
    Ok(Decision {
        state,
        round,
        effects,
    })
}

/// Closes every clock still armed, as when an operator cancels or fails a workflow.
pub fn close_all(snap: &Snapshot, to: Closing) -> Decision {
    let mut effects = Vec::new();
    cancel_remaining(&mut effects, &snap.armed);
    Decision {
        state: to.state(),
        round: snap.round,
        effects,
    }
}

fn clocks_met(def: &Definition, snap: &Snapshot, input: Input<'_>) -> Vec<Effect> {
    snap.armed
        .iter()
        .filter(|a| a.owner_role == input.sender_role)
        .filter(|a| {
            def.clock(&a.clock)
                .is_some_and(|d| d.met_by.contains(&input.message_type))
        })
        .map(|a| Effect::MeetClock(a.into()))
        .collect()
}

/// A rule's actions as effects, after the clocks `effects` already meets: the clocks it
/// cancels (those of `armed` not being met, in `armed`'s order), then its tasks, notices
/// and escalations in the order written.
fn push_actions(
    effects: &mut Vec<Effect>,
    actions: &[Action],
    armed: &[ArmedClock],
    sender_role: &str,
    message_type: &str,
) {
    let cancels = |name: &str| {
        actions
            .iter()
            .any(|a| matches!(a, Action::Cancel(c) if *c == name))
    };
    for a in armed {
        let r = ClockRef::from(a);
        let being_met = effects.iter().any(|e| e.closes() == Some(&r));
        if cancels(&a.clock) && !being_met {
            effects.push(Effect::CancelClock(r));
        }
    }
    for action in actions {
        match *action {
            Action::NewRound | Action::Cancel(_) => {}
            Action::SendTask { task, to } => effects.push(Effect::SendTask { task, to_role: to }),
            Action::Notify { message, to } => effects.push(Effect::Notify {
                message_type: message,
                to_role: to,
            }),
            Action::Escalate { severity } => effects.push(Effect::Escalate {
                reason: message_type.to_owned(),
                owner_role: sender_role.to_owned(),
                severity,
            }),
        }
    }
}

fn arm_state(
    effects: &mut Vec<Effect>,
    def: &'static Definition,
    state: &str,
    round: i32,
    now: DateTime<Utc>,
    durations: &ClockDurations,
) {
    let Some(st) = def.state(state) else { return };
    for name in &st.arms {
        let Some(c) = def.clock(name) else { continue };
        effects.push(Effect::ArmClock {
            clock: c.name,
            owner_role: c.owner.to_string(),
            subject_agent_id: None,
            round,
            due_at: durations.due_at(c.name, now),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::sla::Severity;
    use protocol::names::roles::*;
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::Duration;

    /// The shipped feature-delivery definition, read as the service reads it.
    fn def() -> &'static Definition {
        static DEF: OnceLock<&'static Definition> = OnceLock::new();
        DEF.get_or_init(|| {
            let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config"));
            let settings =
                crate::settings::Settings::load_from(&dir, None).expect("default settings");
            settings
                .workflows
                .get("feature_delivery")
                .expect("feature_delivery is shipped")
        })
    }

    /// Its states and roles, named for the tests.
    #[allow(non_upper_case_globals, non_snake_case)]
    mod State {
        pub const RequirementsHandoff: &str = "requirements_handoff";
        pub const InDevelopment: &str = "in_development";
        pub const FeatureHandoff: &str = "feature_handoff";
        pub const Testing: &str = "testing";
        pub const ReleaseHandoff: &str = "release_handoff";
        pub const Deploying: &str = "deploying";
        pub const Validating: &str = "validating";
        pub const Completed: &str = "completed";
        pub const Cancelled: &str = "cancelled";
        pub const Failed: &str = "failed";
        pub const ALL: [&str; 10] = [
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
        ];
    }

    fn durations() -> ClockDurations {
        ClockDurations::new(&def().clocks, 1.0, &HashMap::new())
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-15T10:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("valid timestamp")
    }

    fn snap(state: &'static str, round: i32, armed: &[(&str, i32)]) -> Snapshot {
        Snapshot {
            state,
            round,
            armed: armed
                .iter()
                .map(|(c, r)| ArmedClock {
                    clock: c.to_string(),
                    round: *r,
                    owner_role: def().clock(c).expect("known clock").owner.to_string(),
                    subject_agent_id: None,
                })
                .collect(),
        }
    }

    fn run(s: &Snapshot, sender: &str, msg: &str) -> Result<Decision, Rejection> {
        decide(
            def(),
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
    const EXPECTED: &[(&str, &str, &str, &str)] = &[
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
        let mut messages: Vec<&str> = def().inputs().collect();
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
        let d = start(def(), now(), &durations());
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
        let d = ClockDurations::new(&def().clocks, 0.001, &overrides);
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
        let d = close_all(&s, Closing::Cancelled);
        assert_eq!(d.state, State::Cancelled);
        assert_eq!(
            d.effects,
            vec![
                cancel("initial_feedback", 1),
                cancel("testing_completion", 1)
            ]
        );
    }
}
