//! The batch without I/O: what it decides and collects for a given load.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::rows::{ArmedClockRow, Loaded, LockedWorkflow};
use super::*;
use crate::settings::Settings;
use protocol::envelope::Envelope;
use protocol::names::message_types::MESSAGE_REJECTED;

fn processor() -> Processor {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config"));
    Settings::load_from(&dir, None)
        .expect("default settings")
        .processor()
}

fn now() -> DateTime<Utc> {
    "2026-03-01T12:00:00Z".parse().expect("time")
}

fn agents() -> Arc<Agents> {
    Arc::new(Agents::from_rows(
        [
            ("product-1", "product-director"),
            ("eng-1", "engineering-director"),
            ("qa-1", "qa-director"),
            ("mkt-1", "marketing-director"),
            ("ops-1", "devops-manager"),
        ]
        .map(|(a, t)| (a.to_string(), t.to_string())),
    ))
}

/// A delivery as an agent publishes it.
struct Msg {
    body: Vec<u8>,
    meta: DeliveryMeta,
}

fn msg(agent: &str, role: &str, message_type: &str, wf: &str, data: serde_json::Value) -> Msg {
    let env = Envelope::from_agent(agent, role, message_type, wf, data, now());
    Msg {
        body: serde_json::to_vec(&env).expect("json"),
        meta: env.meta(&env.agent_routing_key()),
    }
}

fn inbound(m: &Msg) -> Inbound<'_> {
    Inbound {
        body: &m.body,
        meta: &m.meta,
    }
}

/// Runs a batch as the pipeline does, with every message id claimed and `loaded` as
/// what the database held.
fn run(p: &Processor, msgs: &[&Msg], loaded: Loaded) -> (Vec<Processed>, Finished, Needs) {
    let admitted: Vec<Admission> = msgs
        .iter()
        .map(|m| p.admit(inbound(m), now(), &Agents::default()))
        .collect();
    let inputs: Vec<Input<'_>> = msgs
        .iter()
        .zip(&admitted)
        .map(|(m, a)| Input::Delivery(inbound(m), a))
        .collect();
    let claimed = rows::Claims {
        claimed: message_ids(&inputs)
            .ids
            .into_iter()
            .map(str::to_string)
            .collect(),
        earlier: Default::default(),
    };
    let needs = p.needs(&inputs, &AgentView::new(agents()));
    let mut b = Batch::new(p, loaded, claimed, agents(), now());
    let results = inputs.iter().map(|i| b.apply(*i)).collect();
    (results, b.finish(), needs)
}

fn outcomes(r: &[Processed]) -> Vec<&'static str> {
    r.iter().map(|p| p.outcome.label()).collect()
}

#[test]
fn several_messages_of_one_workflow_apply_in_order_and_a_repeat_is_a_duplicate() {
    let p = processor();
    let start = msg(
        "product-1",
        "product-director",
        "requirements_ready",
        "wf-1",
        json!({"epic_id": "E-1", "title": "Login"}),
    );
    let ack = msg(
        "eng-1",
        "engineering-director",
        "handoff_acknowledged",
        "wf-1",
        json!({}),
    );
    let sprint = msg(
        "eng-1",
        "engineering-director",
        "sprint_initialized",
        "wf-1",
        json!({}),
    );
    let done = msg(
        "eng-1",
        "engineering-director",
        "feature_completed",
        "wf-1",
        json!({}),
    );
    let (results, f, needs) = run(&p, &[&start, &ack, &sprint, &ack, &done], Loaded::default());

    assert_eq!(
        outcomes(&results),
        ["accepted", "accepted", "accepted", "duplicate", "accepted"]
    );
    assert_eq!(needs.workflow_ids.iter().collect::<HashSet<_>>().len(), 1);
    assert!(needs.agent_ids.is_empty(), "every sender is in the cache");

    let w = &f.writes;
    assert_eq!(w.new_workflows.len(), 1, "created once, in its final state");
    assert_eq!(w.new_workflows[0].state, "feature_handoff");
    assert_eq!(w.new_workflows[0].key_name.as_deref(), Some("epic_id"));
    assert_eq!(w.new_workflows[0].business_key.as_deref(), Some("E-1"));
    assert!(w.workflow_changes.is_empty());
    let events: Vec<(i32, &str, Option<&str>, &str)> = w
        .events
        .iter()
        .map(|e| {
            (
                e.ordinal,
                e.message_type.as_str(),
                e.from_state.as_deref(),
                e.to_state.as_str(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            (1, "requirements_ready", None, "requirements_handoff"),
            (
                2,
                "handoff_acknowledged",
                Some("requirements_handoff"),
                "requirements_handoff"
            ),
            (
                3,
                "sprint_initialized",
                Some("requirements_handoff"),
                "in_development"
            ),
            (
                4,
                "feature_completed",
                Some("in_development"),
                "feature_handoff"
            ),
        ]
    );
    let sent: Vec<(&str, &str)> = w
        .outbox
        .iter()
        .map(|m| (m.message_type.as_str(), m.routing_key.as_str()))
        .collect();
    assert_eq!(
        sent,
        [
            ("requirements_handoff", "task.engineering-director"),
            ("feature_handoff", "task.qa-director")
        ]
    );
    // Clocks armed and met within the batch are written once, already met; the
    // acknowledging agent owns engineering's clocks.
    let clocks: Vec<(&str, &str, Option<&str>)> = w
        .new_clocks
        .iter()
        .map(|c| {
            (
                c.clock.as_str(),
                c.status.as_str(),
                c.owner_agent_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        clocks,
        [
            ("technical_feasibility_assessment", "armed", Some("eng-1")),
            ("effort_estimation", "armed", Some("eng-1")),
            ("sprint_planning", "met", Some("eng-1")),
            ("testing_start", "armed", Some("qa-1")),
            ("initial_feedback", "armed", Some("qa-1")),
            ("testing_completion", "armed", Some("qa-1")),
        ]
    );
    assert!(w.dead_letters.is_empty());
    assert!(w.outcomes.is_empty(), "claims are written accepted");
}

#[test]
fn a_loaded_workflow_is_advanced_from_its_state_and_its_clocks_are_closed_by_id() {
    let p = processor();
    let loaded = Loaded {
        workflows: vec![LockedWorkflow {
            id: "wf-2".into(),
            kind: "feature_delivery".into(),
            state: "feature_handoff".into(),
            round: 1,
            definition_hash: None,
            business_key: None,
        }],
        clocks: ["testing_start", "initial_feedback", "testing_completion"]
            .iter()
            .enumerate()
            .map(|(i, c)| ArmedClockRow {
                id: 10 + i as i64,
                workflow_id: "wf-2".into(),
                clock: c.to_string(),
                round: 1,
                owner_role: "qa-director".into(),
                owner_agent_id: None,
                subject_agent_id: None,
                armed_at: now(),
                due_at: now(),
            })
            .collect(),
        ..Default::default()
    };
    let started = msg("qa-1", "qa-director", "testing_started", "wf-2", json!({}));
    let wrong = msg(
        "qa-1",
        "qa-director",
        "deployment_started",
        "wf-2",
        json!({}),
    );
    let (results, f, _) = run(&p, &[&started, &wrong], loaded);
    assert_eq!(outcomes(&results), ["accepted", "rejected"]);
    let w = &f.writes;
    assert_eq!(w.workflow_changes.len(), 1);
    assert_eq!(w.workflow_changes[0].state, "testing");
    assert!(w.new_workflows.is_empty() && w.new_clocks.is_empty());
    assert_eq!(w.clock_changes.len(), 1);
    assert_eq!(
        (w.clock_changes[0].id, w.clock_changes[0].status.as_str()),
        (10, "met")
    );
    // The rejected one is kept whole, its sender told, its outcome recorded.
    assert_eq!(w.dead_letters.len(), 1);
    assert_eq!(w.dead_letters[0].body, wrong.body);
    assert!(w
        .outbox
        .iter()
        .any(|m| m.message_type == MESSAGE_REJECTED && m.routing_key == "command.qa-1"));
    assert_eq!(
        w.outcomes,
        [(wrong.meta.message_id.clone().expect("id"), "rejected")]
    );
}

#[test]
fn a_message_that_escalates_uses_a_reserved_id_and_without_one_changes_nothing() {
    let p = processor();
    let loaded = || Loaded {
        workflows: vec![LockedWorkflow {
            id: "wf-3".into(),
            kind: "feature_delivery".into(),
            state: "in_development".into(),
            round: 1,
            definition_hash: None,
            business_key: None,
        }],
        ..Default::default()
    };
    let blocked = msg(
        "eng-1",
        "engineering-director",
        "engineering_blocked",
        "wf-3",
        json!({}),
    );
    let (results, f, needs) = run(
        &p,
        &[&blocked],
        Loaded {
            escalation_ids: vec![41],
            ..loaded()
        },
    );
    assert_eq!(
        needs.escalations, 1,
        "one id reserved for a message that may escalate"
    );
    assert_eq!(outcomes(&results), ["accepted"]);
    assert_eq!(f.writes.escalations.len(), 1);
    assert_eq!(
        (f.writes.escalations[0].id, f.writes.escalations[0].chain_id),
        (41, 41)
    );
    assert_eq!(f.deadlines.len(), 1, "the ladder's next step is a deadline");
    assert!(f
        .writes
        .outbox
        .iter()
        .any(|m| m.routing_key == "escalation.high.engineering-director"));

    let (results, f, _) = run(&p, &[&blocked], loaded());
    assert_eq!(
        results[0].outcome,
        Outcome::Rejected(Reason::ProcessingFailed)
    );
    assert!(f.writes.escalations.is_empty() && f.writes.events.is_empty());
    assert!(f.writes.workflow_changes.is_empty(), "nothing half-applied");
}

#[test]
fn unknown_senders_are_looked_up_and_bad_input_is_rejected_before_any_read() {
    let p = processor();
    let stranger = msg("qa-9", "qa-director", "testing_started", "wf-4", json!({}));
    let oversized = msg(
        "product-1",
        "product-director",
        "requirements_ready",
        "wf-5",
        json!({"epic_id": "E".repeat(300)}),
    );
    let (results, f, needs) = run(&p, &[&stranger, &oversized], Loaded::default());
    assert_eq!(needs.agent_ids, ["qa-9"]);
    assert_eq!(
        needs.workflow_ids,
        ["wf-4"],
        "a rejected message locks nothing"
    );
    assert_eq!(results[1].outcome, Outcome::Rejected(Reason::TooLarge));
    assert!(results[1]
        .detail
        .as_deref()
        .is_some_and(|d| d.contains("payload.data.epic_id")));
    // Automatic registration is on by default: an unknown sender of a workflow message
    // is not rejected for being unknown; this one names no workflow.
    assert_eq!(
        results[0].outcome,
        Outcome::Rejected(Reason::UnknownWorkflow)
    );
    assert_eq!(f.writes.dead_letters.len(), 2);
}

#[test]
fn every_message_that_may_escalate_is_known_to_the_batch() {
    use crate::domain::definition::Action;
    let p = processor();
    let mut escalating = 0;
    for def in p.workflows.iter() {
        for rule in def.states.iter().flat_map(|s| &s.rules) {
            if rule
                .actions
                .iter()
                .any(|a| matches!(a, Action::Escalate { .. }))
            {
                assert!(p.workflows.may_escalate(rule.message), "{}", rule.message);
                escalating += 1;
            }
        }
    }
    assert_eq!(escalating, 4, "feature delivery's four escalating messages");
    assert!(!p.workflows.may_escalate("testing_started"));
}

/// A workflow in `state` with one escalation chain (id 7) that has reached `levels`.
fn escalated(wf: &str, levels: &[(i32, &str)]) -> Loaded {
    Loaded {
        workflows: vec![LockedWorkflow {
            id: wf.into(),
            kind: "feature_delivery".into(),
            state: "feature_handoff".into(),
            round: 1,
            definition_hash: None,
            business_key: None,
        }],
        chains: levels
            .iter()
            .map(|(level, target)| rows::ChainMember {
                id: 6 + i64::from(*level),
                workflow_id: wf.into(),
                chain_id: 7,
                open: true,
                level: *level,
                target: target.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

fn ack(agent: &str, role: &str, wf: &str, escalation_id: i64) -> Msg {
    msg(
        agent,
        role,
        "escalation_acknowledged",
        wf,
        json!({"escalation_id": escalation_id}),
    )
}

#[test]
fn an_escalation_is_acknowledged_only_by_the_role_its_chain_reached_or_the_configured_ones() {
    let p = processor();
    // Level one pages the clock's owner role: QA may acknowledge, marketing may not.
    let by_marketing = ack("mkt-1", "marketing-director", "wf-a", 7);
    let by_qa = ack("qa-1", "qa-director", "wf-a", 7);
    let (results, f, _) = run(
        &p,
        &[&by_marketing, &by_qa],
        escalated("wf-a", &[(1, "qa-director")]),
    );
    assert_eq!(
        results[0].outcome,
        Outcome::Rejected(protocol::reject::Reason::Unauthorized)
    );
    let detail = results[0].detail.as_deref().unwrap_or("");
    assert!(
        detail.contains("marketing-director")
            && detail.contains("security.escalation_acknowledgers"),
        "{detail}"
    );
    assert_eq!(results[1].outcome, Outcome::Accepted);
    assert_eq!(f.writes.chain_acks.len(), 1);
    assert_eq!(f.writes.chain_acks[0].by, "qa-1");
    assert_eq!(f.writes.dead_letters.len(), 1, "the refusal is kept");
    assert!(f
        .writes
        .outbox
        .iter()
        .any(|m| m.message_type == MESSAGE_REJECTED && m.routing_key == "command.mkt-1"));

    // Once the chain has reached on-call, the owner role no longer may; on-call may.
    let mut p = processor();
    p.catalog = {
        let mut roles: std::collections::BTreeMap<_, _> = p
            .catalog
            .roles()
            .map(|(r, s)| (r.to_string(), s.clone()))
            .collect();
        roles.insert("oncall".into(), Default::default());
        protocol::catalog::Catalog::new(roles, ["escalation_acknowledged".to_string()])
    };
    let by_qa = ack("qa-1", "qa-director", "wf-b", 8);
    let by_oncall = ack("pager-1", "oncall", "wf-b", 8);
    let levels = escalated("wf-b", &[(1, "qa-director"), (2, "oncall")]);
    let (results, f, _) = run(&p, &[&by_qa, &by_oncall], levels);
    assert_eq!(
        outcomes(&results),
        ["rejected", "accepted"],
        "{:?}",
        results[0].detail
    );
    assert_eq!(f.writes.chain_acks[0].by, "pager-1");
}

#[test]
fn an_emergency_is_resolved_only_by_a_configured_role() {
    let p = processor();
    let loaded = Loaded {
        workflows: vec![LockedWorkflow {
            id: "inc-1".into(),
            kind: "emergency".into(),
            state: "active".into(),
            round: 1,
            definition_hash: None,
            business_key: None,
        }],
        ..Default::default()
    };
    let by_marketing = msg(
        "mkt-1",
        "marketing-director",
        "emergency_resolved",
        "inc-1",
        json!({}),
    );
    let by_devops = msg(
        "ops-1",
        "devops-manager",
        "emergency_resolved",
        "inc-1",
        json!({}),
    );
    let (results, f, _) = run(&p, &[&by_marketing, &by_devops], loaded);
    assert_eq!(outcomes(&results), ["rejected", "accepted"]);
    assert_eq!(
        results[0].outcome,
        Outcome::Rejected(protocol::reject::Reason::Unauthorized)
    );
    assert!(results[0]
        .detail
        .as_deref()
        .is_some_and(|d| d.contains("security.emergency_resolvers")));
    assert_eq!(f.writes.workflow_changes[0].state, "resolved");
}

#[test]
fn a_message_id_another_sender_used_is_a_conflict_not_a_duplicate() {
    let p = processor();
    let first = msg(
        "product-1",
        "product-director",
        "requirements_ready",
        "wf-c",
        json!({"epic_id": "E-C", "title": "conflict"}),
    );
    // The same id from engineering, in the same batch and in a later one.
    let mut v: serde_json::Value = serde_json::from_slice(&first.body).expect("json");
    v["header"]["source"] = json!({"agent_id": "eng-1", "agent_type": "engineering-director"});
    v["header"]["message_type"] = json!("handoff_acknowledged");
    v["payload"]["data"] = json!({});
    let env: Envelope = serde_json::from_value(v).expect("envelope");
    let other = Msg {
        body: serde_json::to_vec(&env).expect("json"),
        meta: env.meta(&env.agent_routing_key()),
    };
    let same_again = Msg {
        body: first.body.clone(),
        meta: first.meta.clone(),
    };
    let (results, f, _) = run(&p, &[&first, &other, &same_again], Loaded::default());
    assert_eq!(outcomes(&results), ["accepted", "rejected", "duplicate"]);
    assert_eq!(
        results[1].outcome,
        Outcome::Rejected(protocol::reject::Reason::DuplicateIdConflict)
    );
    assert!(results[1]
        .detail
        .as_deref()
        .is_some_and(|d| d.contains("\"product-1\"")));
    assert_eq!(
        f.writes.dead_letters.len(),
        1,
        "the conflicting message is kept"
    );
    assert!(
        f.writes.outcomes.is_empty(),
        "the id's outcome stays the first message's: {:?}",
        f.writes.outcomes
    );
    assert!(f
        .writes
        .outbox
        .iter()
        .any(|m| m.message_type == MESSAGE_REJECTED && m.routing_key == "command.eng-1"));

    // An id claimed by an earlier batch: from its sender a duplicate, from another a conflict.
    for (m, want) in [&same_again, &other]
        .into_iter()
        .zip(["duplicate", "rejected"])
    {
        let admitted = p.admit(inbound(m), now(), &Agents::default());
        let id = admitted.message_id().expect("id").to_string();
        let claims = rows::Claims {
            claimed: HashSet::new(),
            earlier: [(id, "product-1".to_string())].into(),
        };
        let mut b = Batch::new(&p, Loaded::default(), claims, agents(), now());
        let input = Input::Delivery(inbound(m), &admitted);
        assert_eq!(b.apply(input).outcome.label(), want);
    }
}

/// A batch of signed deliveries, the second with a changed payload after signing.
fn signed_batch() -> (Vec<Msg>, Agents) {
    use protocol::signing::{self, SigningKey};
    let keys: Vec<(&str, &str, SigningKey)> = vec![
        ("qa-1", "qa-director", SigningKey::from_bytes(&[1; 32])),
        (
            "eng-1",
            "engineering-director",
            SigningKey::from_bytes(&[2; 32]),
        ),
        ("qa-1", "qa-director", SigningKey::from_bytes(&[1; 32])),
    ];
    let msgs = keys
        .iter()
        .enumerate()
        .map(|(i, (agent, role, key))| {
            let env = Envelope::from_agent(
                agent,
                role,
                "heartbeat",
                &format!("wf-{i}"),
                json!({}),
                now(),
            );
            let mut value = serde_json::to_value(&env).expect("json");
            signing::sign(&mut value, key, &format!("{agent}-k"));
            if i == 1 {
                value["payload"]["data"]["changed"] = json!(true);
            }
            Msg {
                body: serde_json::to_vec(&value).expect("json"),
                meta: env.meta(&env.agent_routing_key()),
            }
        })
        .collect();
    let agents = Agents::from_rows(
        [("qa-1", "qa-director"), ("eng-1", "engineering-director")]
            .map(|(a, t)| (a.to_string(), t.to_string())),
    )
    .with_keys(
        keys.iter()
            .take(2)
            .map(|(agent, _, key)| (agent.to_string(), format!("{agent}-k"), key.verifying_key())),
    );
    (msgs, agents)
}

#[test]
fn a_batch_admitted_together_refuses_only_its_bad_signature() {
    let (msgs, agents) = signed_batch();
    let inbound: Vec<Inbound<'_>> = msgs.iter().map(inbound).collect();
    let mut p = processor();
    p.security.signatures = SignatureMode::Require;
    let refusal = |a: &Admission| match a {
        Admission::Admitted(_) => None,
        Admission::Refused(r) => Some(r.rejected.reason),
    };
    let together = p.admit_all(&inbound, now(), &agents);
    let reasons: Vec<Option<Reason>> = together.iter().map(refusal).collect();
    assert_eq!(reasons, vec![None, Some(Reason::BadSignature), None]);
    let alone: Vec<Option<Reason>> = inbound
        .iter()
        .map(|d| refusal(&p.admit(*d, now(), &agents)))
        .collect();
    assert_eq!(alone, reasons, "one at a time and together agree");

    p.security.signatures = SignatureMode::Verify;
    let verified = p.admit_all(&inbound, now(), &agents);
    let flagged: Vec<Option<bool>> = verified
        .iter()
        .map(|a| a.admitted().map(|a| a.bad_signature.is_some()))
        .collect();
    assert_eq!(flagged, vec![Some(false), Some(true), Some(false)]);
}

/// The tasks a batch queued, as their receivers read them: envelope and `traceparent`.
fn sent(f: &Finished) -> Vec<(Envelope, Option<String>)> {
    f.writes
        .outbox
        .iter()
        .map(|m| {
            let env: Envelope = serde_json::from_slice(&m.body).expect("an envelope");
            (env, m.traceparent.clone())
        })
        .collect()
}

#[test]
fn what_a_message_causes_is_sent_as_a_child_of_its_span_in_the_workflows_trace() {
    use protocol::trace::SpanContext;
    let mut p = processor();
    p.keep_spans = true;
    // The agent that starts the workflow sends from a trace of its own.
    let own =
        SpanContext::from_traceparent("00-11111111111111111111111111111111-2222222222222222-01")
            .expect("valid");
    let mut start = msg(
        "product-1",
        "product-director",
        "requirements_ready",
        "wf-t",
        json!({"epic_id": "E-1", "title": "Login"}),
    );
    start.meta.traceparent = Some(own.traceparent());
    let start_id = start.meta.message_id.clone().expect("id");
    let (results, finished, _) = run(&p, &[&start], Loaded::default());
    assert_eq!(outcomes(&results), ["accepted"]);

    let trace_id = crate::domain::trace::trace_id("wf-t");
    let applied = crate::domain::trace::applying("wf-t", &start_id);
    let root = crate::domain::trace::root("wf-t");
    assert_eq!(results[0].span, Some(applied));
    let tasks = sent(&finished);
    assert!(!tasks.is_empty());
    for (env, traceparent) in &tasks {
        let t = env.header.tracing.as_ref().expect("header.tracing");
        assert_eq!(SpanContext::from_header(t), Some(applied), "{t:?}");
        // Not the sender's trace: the span's parent is the workflow's root span.
        assert_eq!(
            t.parent_span_id.as_deref(),
            Some(root.span_id_hex().as_str())
        );
        assert_eq!(traceparent.as_deref(), Some(applied.traceparent().as_str()));
        // The rest of the header is as the coordinator writes it.
        assert_eq!(env.header.correlation_id, "wf-t");
        assert_eq!(env.header.causation_id.as_deref(), Some(start_id.as_str()));
    }
    // Its spans: the workflow's root, and the message applied, linked to the
    // sender's own trace.
    let spans = &finished.writes.spans;
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert_eq!(spans[0].what, spans::What::Workflow);
    assert_eq!(spans[0].context, root);
    assert_eq!(spans[0].parent, None);
    assert_eq!(spans[1].what, spans::What::Message);
    assert_eq!(spans[1].context.trace_id, trace_id);
    assert_eq!(spans[1].parent, Some(root.span_id));
    assert_eq!(spans[1].link, Some(own));
    assert_eq!(spans[1].kind, Some("feature_delivery"), "{spans:?}");
}

#[test]
fn a_reply_in_the_workflows_trace_is_a_child_of_the_agents_span() {
    use protocol::trace::SpanContext;
    let mut p = processor();
    p.keep_spans = true;
    let task_span = crate::domain::trace::applying("wf-r", "earlier");
    // The engineering director replies from a span of its own under the task's.
    let agent_span = SpanContext {
        trace_id: task_span.trace_id,
        span_id: [7; 8],
    };
    let mut ack = msg(
        "eng-1",
        "engineering-director",
        "feature_completed",
        "wf-r",
        json!({}),
    );
    // Carried in the envelope only (no AMQP header): read all the same.
    let mut env: Envelope = serde_json::from_slice(&ack.body).expect("json");
    env.header.tracing = Some(agent_span.header(Some(task_span.span_id)));
    ack.body = serde_json::to_vec(&env).expect("json");
    ack.meta.traceparent = None;
    let loaded = Loaded {
        workflows: vec![LockedWorkflow {
            id: "wf-r".into(),
            kind: "feature_delivery".into(),
            state: "in_development".into(),
            round: 0,
            definition_hash: None,
            business_key: None,
        }],
        ..Loaded::default()
    };
    let (results, finished, _) = run(&p, &[&ack], loaded);
    assert_eq!(outcomes(&results), ["accepted"], "{results:?}");
    let spans = &finished.writes.spans;
    assert_eq!(
        spans.len(),
        1,
        "no new root span for a workflow that exists: {spans:?}"
    );
    assert_eq!(spans[0].parent, Some(agent_span.span_id));
    assert_eq!(spans[0].link, None);
    let tasks = sent(&finished);
    assert_eq!(tasks.len(), 1, "the feature_handoff task");
    for (env, _) in tasks {
        let t = env.header.tracing.expect("header.tracing");
        assert_eq!(t.parent_span_id, Some(agent_span.span_id_hex()));
    }
}

#[test]
fn a_follow_on_is_in_its_parents_trace() {
    let p = processor();
    let follow_on = crate::domain::ids::follow_on("wf-p", "launch_handoff");
    assert_eq!(p.workflows.root_of(&follow_on), "wf-p");
    assert_eq!(p.workflows.root_of("wf-p"), "wf-p");
    // A dot that names no follow-on is part of the id.
    assert_eq!(p.workflows.root_of("release.1.2"), "release.1.2");
}

#[test]
fn a_heartbeat_and_a_refused_delivery_have_no_span_and_their_notices_a_trace_of_their_own() {
    let p = processor();
    let beat = msg(
        "eng-1",
        "engineering-director",
        "heartbeat",
        "eng-1",
        json!({}),
    );
    let bad = Msg {
        body: b"{not json".to_vec(),
        meta: DeliveryMeta {
            routing_key: "engineering-director.feature_completed".into(),
            message_id: Some("bad-1".into()),
            app_id: Some("eng-1".into()),
            ..DeliveryMeta::default()
        },
    };
    let (results, finished, _) = run(&p, &[&beat, &bad], Loaded::default());
    assert_eq!(outcomes(&results), ["accepted", "rejected"]);
    assert!(results.iter().all(|r| r.span.is_none()));
    assert!(finished.writes.spans.is_empty());
    let notices = sent(&finished);
    assert_eq!(notices.len(), 1, "the rejection notice");
    let (env, traceparent) = &notices[0];
    let own = crate::domain::trace::alone(&env.header.message_id);
    assert_eq!(traceparent.as_deref(), Some(own.traceparent().as_str()));
}

#[test]
fn without_export_no_span_is_kept_and_the_messages_still_name_theirs() {
    let p = processor();
    assert!(!p.keep_spans, "off by default");
    let start = msg(
        "product-1",
        "product-director",
        "requirements_ready",
        "wf-q",
        json!({"epic_id": "E-1"}),
    );
    let (results, finished, _) = run(&p, &[&start], Loaded::default());
    assert!(finished.writes.spans.is_empty());
    let applied =
        crate::domain::trace::applying("wf-q", start.meta.message_id.as_deref().expect("id"));
    assert_eq!(results[0].span, Some(applied), "the log line's trace id");
    let tasks = sent(&finished);
    assert!(!tasks.is_empty());
    for (env, traceparent) in tasks {
        assert_eq!(traceparent, Some(applied.traceparent()));
        let t = env.header.tracing.expect("header.tracing");
        assert_eq!(protocol::trace::SpanContext::from_header(&t), Some(applied));
    }
}
