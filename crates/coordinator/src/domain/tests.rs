//! The shipped creative and marketing handoffs (`config/workflows/`), walked through
//! the pure state machine as the service reads them: what each start and each message
//! sends, arms, meets and where it leads; and which of their messages are observed
//! where they find no workflow of their kind.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use protocol::names::roles::*;

use super::definition::{Definition, Definitions};
use super::effect::Effect;
use super::sla::{ArmedClock, ClockDurations, Severity};
use super::workflow::{decide, follow, start, Decision, Input, Rejection, Snapshot};

fn shipped() -> &'static Definitions {
    static DEFS: OnceLock<Definitions> = OnceLock::new();
    DEFS.get_or_init(|| {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config"));
        crate::settings::Settings::load_from(&dir, None)
            .expect("default settings")
            .workflows
    })
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-15T10:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .expect("valid timestamp")
}

/// One workflow of a shipped definition, moved along by the decisions it takes.
struct Walk {
    def: &'static Definition,
    state: &'static str,
    round: i32,
    armed: Vec<ArmedClock>,
}

impl Walk {
    fn start(name: &str) -> (Walk, Decision) {
        let def = shipped().get(name).expect("shipped");
        let d = start(def, now(), &durations(def));
        let mut w = Walk {
            def,
            state: def.start.state,
            round: 1,
            armed: Vec::new(),
        };
        w.apply(&d);
        (w, d)
    }

    fn say(&mut self, role: &str, message: &str) -> Result<Decision, Rejection> {
        let snap = Snapshot {
            state: self.state,
            round: self.round,
            armed: self.armed.clone(),
        };
        let input = Input {
            message_type: message,
            sender_role: role,
        };
        let d = decide(self.def, &snap, input, now(), &durations(self.def))?;
        self.apply(&d);
        Ok(d)
    }

    fn apply(&mut self, d: &Decision) {
        self.state = d.state;
        self.round = d.round;
        for e in &d.effects {
            match e {
                Effect::ArmClock {
                    clock,
                    owner_role,
                    round,
                    ..
                } => self.armed.push(ArmedClock {
                    clock: clock.to_string(),
                    round: *round,
                    owner_role: owner_role.clone(),
                    subject_agent_id: None,
                }),
                _ => {
                    if let Some(c) = e.closes() {
                        self.armed.retain(|a| a.clock != c.clock);
                    }
                }
            }
        }
    }

    fn armed(&self) -> Vec<&str> {
        self.armed.iter().map(|a| a.clock.as_str()).collect()
    }
}

fn durations(def: &'static Definition) -> ClockDurations {
    ClockDurations::new(&def.clocks, 1.0, &HashMap::new())
}

fn task(task: &'static str, to_role: &'static str) -> Effect {
    Effect::SendTask { task, to_role }
}

fn met(d: &Decision) -> Vec<&str> {
    d.effects
        .iter()
        .filter_map(|e| match e {
            Effect::MeetClock(c) => Some(c.clock.as_str()),
            _ => None,
        })
        .collect()
}

/// Everything but the clock effects.
fn sent(d: &Decision) -> Vec<Effect> {
    d.effects
        .iter()
        .filter(|e| matches!(e, Effect::SendTask { .. } | Effect::Notify { .. }))
        .cloned()
        .collect()
}

#[test]
fn design_handoff_asks_creative_passes_constraints_and_assets_on_and_delivers_to_product_and_engineering(
) {
    let (mut w, d) = Walk::start("design_handoff");
    assert_eq!(d.state, "design_requested");
    assert_eq!(sent(&d), [task("design_request", CREATIVE)]);
    assert_eq!(w.armed(), ["design_assets", "design_delivery"]);

    let d = w.say(CREATIVE, "handoff_acknowledged").expect("accepted");
    assert!(d.effects.is_empty(), "{d:?}");
    let d = w
        .say(ENGINEERING, "technical_constraints")
        .expect("accepted");
    assert_eq!(sent(&d), [task("design_constraints", CREATIVE)]);
    assert_eq!(
        w.say(CREATIVE, "technical_constraints"),
        Err(Rejection::NotAccepted {
            state: "design_requested".into(),
            message_type: "technical_constraints".into(),
            sender_role: CREATIVE.into(),
        }),
        "constraints come from engineering"
    );

    let d = w.say(CREATIVE, "assets_ready").expect("accepted");
    assert_eq!(sent(&d), [task("design_assets", ENGINEERING)]);
    assert_eq!(met(&d), ["design_assets"]);
    assert_eq!(w.state, "design_requested");

    let d = w.say(CREATIVE, "design_ready").expect("accepted");
    assert_eq!(w.state, "delivered");
    assert!(w.def.is_terminal(w.state));
    assert_eq!(met(&d), ["design_delivery"]);
    assert_eq!(
        sent(&d),
        [
            Effect::Notify {
                message_type: "design_delivered",
                to_role: PRODUCT
            },
            Effect::Notify {
                message_type: "design_delivered",
                to_role: ENGINEERING
            },
        ]
    );
    assert!(w.armed().is_empty());
}

#[test]
fn design_ready_before_any_assets_meets_both_creative_clocks() {
    let (mut w, _) = Walk::start("design_handoff");
    let d = w.say(CREATIVE, "design_ready").expect("accepted");
    assert_eq!(met(&d), ["design_assets", "design_delivery"]);
}

#[test]
fn brand_handoff_asks_creative_and_hands_the_assets_to_marketing() {
    let (mut w, d) = Walk::start("brand_handoff");
    assert_eq!(d.state, "brand_requested");
    assert_eq!(sent(&d), [task("brand_request", CREATIVE)]);
    assert_eq!(w.armed(), ["brand_assets_delivery"]);
    w.say(CREATIVE, "handoff_acknowledged").expect("accepted");
    let d = w.say(CREATIVE, "brand_assets_ready").expect("accepted");
    assert_eq!(sent(&d), [task("brand_assets_delivered", MARKETING)]);
    assert_eq!(met(&d), ["brand_assets_delivery"]);
    assert_eq!(w.state, "delivered");
    assert!(matches!(
        w.say(CREATIVE, "brand_assets_ready"),
        Err(Rejection::Terminal { .. })
    ));
}

#[test]
fn launch_handoff_asks_marketing_and_ends_when_the_campaign_is_launched() {
    let (mut w, d) = Walk::start("launch_handoff");
    assert_eq!(d.state, "launch_requested");
    assert_eq!(sent(&d), [task("launch_request", MARKETING)]);
    assert_eq!(w.armed(), ["campaign_launch"]);
    w.say(MARKETING, "handoff_acknowledged").expect("accepted");
    let d = w.say(MARKETING, "campaign_launched").expect("accepted");
    assert_eq!(met(&d), ["campaign_launch"]);
    assert_eq!(w.state, "launched");
    assert!(w.def.is_terminal(w.state));
}

#[test]
fn a_completed_feature_delivery_starts_a_launch_handoff_on_marketings_clock() {
    let defs = shipped();
    let following: Vec<_> = defs.following("feature_delivery", "completed").collect();
    assert_eq!(following.len(), 1);
    let (def, after) = following[0];
    assert_eq!((def.name, after.state), ("launch_handoff", "deployed"));
    assert_eq!(
        defs.following("feature_delivery", "validating").count(),
        0,
        "only entering completed starts one"
    );

    let d = follow(def, after, now(), &durations(def));
    assert_eq!(d.state, "deployed");
    assert!(
        sent(&d).is_empty(),
        "feature delivery's own feature_deployed is marketing's task: {:?}",
        d.effects
    );
    let mut w = Walk {
        def,
        state: d.state,
        round: d.round,
        armed: Vec::new(),
    };
    w.apply(&d);
    assert_eq!(w.armed(), ["campaign_launch"]);
    let d = w.say(MARKETING, "campaign_launched").expect("accepted");
    assert_eq!(met(&d), ["campaign_launch"]);
    assert_eq!(w.state, "launched");
}

#[test]
fn a_batch_loads_the_follow_on_with_what_starts_it_and_what_its_parent_does_not_consume() {
    let defs = shipped();
    // validation_completed enters completed; campaign_launched is the launch
    // handoff's and not feature delivery's, so under a feature's id it reaches the
    // follow-on.
    for m in ["validation_completed", "campaign_launched"] {
        assert_eq!(defs.follow_ons_of(m), ["launch_handoff"], "{m}");
    }
    // Feature delivery consumes these itself.
    for m in [
        "handoff_acknowledged",
        "deployment_completed",
        "requirements_ready",
    ] {
        assert!(defs.follow_ons_of(m).is_empty(), "{m}");
    }
}

#[test]
fn insights_handoff_ends_when_product_acknowledges() {
    let (mut w, d) = Walk::start("insights_handoff");
    assert_eq!(d.state, "insights_shared");
    assert_eq!(sent(&d), [task("insights_review", PRODUCT)]);
    assert_eq!(w.armed(), ["insights_acknowledgement"]);
    assert!(
        w.say(MARKETING, "handoff_acknowledged").is_err(),
        "the acknowledgement is product's"
    );
    let d = w.say(PRODUCT, "handoff_acknowledged").expect("accepted");
    assert_eq!(met(&d), ["insights_acknowledgement"]);
    assert_eq!(w.state, "acknowledged");
}

#[test]
fn the_handoff_clocks_have_the_documented_defaults() {
    let hours = |h: u64| std::time::Duration::from_secs(h * 3600);
    for (clock, owner, duration, severity) in [
        ("design_assets", CREATIVE, hours(72), Severity::High),
        ("design_delivery", CREATIVE, hours(120), Severity::High),
        (
            "brand_assets_delivery",
            CREATIVE,
            hours(120),
            Severity::High,
        ),
        ("campaign_launch", MARKETING, hours(72), Severity::High),
        (
            "insights_acknowledgement",
            PRODUCT,
            hours(48),
            Severity::Medium,
        ),
    ] {
        let c = shipped()
            .clocks()
            .find(|c| c.name == clock)
            .unwrap_or_else(|| panic!("no clock {clock}"));
        assert_eq!(
            (c.owner, c.default, c.severity),
            (owner, duration, severity),
            "{clock}"
        );
    }
}

#[test]
fn only_messages_every_consumer_observes_are_observed_where_they_find_no_workflow() {
    let defs = shipped();
    for observed in [
        "design_requirements",
        "technical_constraints",
        "assets_ready",
        "design_ready",
        "brand_requirements",
        "brand_assets_ready",
        "feature_announced",
        "campaign_launched",
        "market_insights",
    ] {
        assert!(defs.is_input(observed), "{observed} is consumed");
        assert!(defs.observes_unmatched(observed), "{observed}");
    }
    // Feature delivery refuses its own; handoff_acknowledged is feature delivery's too.
    for refused in [
        "requirements_ready",
        "testing_started",
        "handoff_acknowledged",
    ] {
        assert!(!defs.observes_unmatched(refused), "{refused}");
    }
    assert!(
        !defs.observes_unmatched("quality_gate_status"),
        "no workflow's"
    );
}
