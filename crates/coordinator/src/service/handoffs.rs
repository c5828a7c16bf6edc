//! Handoff latency: from the timestamp of the message that moved a workflow to the
//! broker's confirm of the task it sent the next role, by workflow kind. A batch finds
//! its handoffs when it commits ([`of_batch`]); its publisher observes them when the
//! broker confirms ([`observe`]). Messages the relay publishes (after a crash or a
//! refused publish) are not timed: their latency is the outage's, not the handoff's.

use chrono::{DateTime, Utc};
use std::collections::HashMap;

use crate::engine::rows::Queued;
use crate::engine::{Input, Processed};
use crate::service::runtime::Metrics;

/// A task, by outbox id, caused by a message of a workflow of `kind` sent at `caused_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff {
    pub outbox_id: i64,
    pub kind: &'static str,
    pub caused_at: DateTime<Utc>,
}

/// The tasks (`task.<role>` messages) among `queued` that a message of `inputs` caused
/// by being applied to a workflow; `results` says what became of each input.
pub fn of_batch(inputs: &[Input<'_>], results: &[Processed], queued: &[Queued]) -> Vec<Handoff> {
    let causes: HashMap<&str, (&'static str, DateTime<Utc>)> = inputs
        .iter()
        .zip(results)
        .filter_map(|(input, p)| {
            let h = &input.envelope()?.header;
            Some((h.message_id.as_str(), (p.kind?, h.timestamp)))
        })
        .collect();
    if causes.is_empty() {
        return Vec::new();
    }
    queued
        .iter()
        .filter(|q| q.message.routing_key.starts_with("task."))
        .filter_map(|q| {
            let (kind, caused_at) = *causes.get(q.message.causation_id.as_deref()?)?;
            Some(Handoff {
                outbox_id: q.id,
                kind,
                caused_at,
            })
        })
        .collect()
}

/// Observes the handoffs whose tasks the broker confirmed (`sent`, outbox ids), at `now`.
/// A cause stamped later than `now` (a sender's clock ahead of ours) counts as zero.
pub fn observe(metrics: &Metrics, handoffs: &[Handoff], sent: &[i64], now: DateTime<Utc>) {
    if handoffs.is_empty() {
        return;
    }
    let sent: std::collections::HashSet<i64> = sent.iter().copied().collect();
    for h in handoffs.iter().filter(|h| sent.contains(&h.outbox_id)) {
        let took = (now - h.caused_at).to_std().unwrap_or_default();
        metrics
            .handoff_latency
            .with_label_values(&[h.kind])
            .observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rows::OutboxMessage;
    use crate::engine::Outcome;
    use protocol::envelope::Envelope;

    fn queued(id: i64, routing_key: &str, causation_id: Option<&str>) -> Queued {
        Queued {
            id,
            message: OutboxMessage {
                message_id: format!("out-{id}"),
                exchange: "ex".into(),
                routing_key: routing_key.into(),
                message_type: "task".into(),
                correlation_id: "wf-1".into(),
                causation_id: causation_id.map(str::to_string),
                app_id: "coordinator".into(),
                body: Vec::new(),
                traceparent: None,
            },
        }
    }

    #[test]
    fn a_task_caused_by_an_applied_message_is_a_handoff_of_its_workflows_kind() {
        let at = "2026-12-07T09:00:00Z".parse().expect("a time");
        let moved = Envelope::from_agent(
            "pm-1",
            "product-manager",
            "requirements_ready",
            "wf-1",
            serde_json::json!({}),
            at,
        );
        let refused = Envelope::from_agent(
            "pm-1",
            "product-manager",
            "requirements_ready",
            "wf-2",
            serde_json::json!({}),
            at,
        );
        let inputs = [Input::Operator(&moved), Input::Operator(&refused)];
        let mut applied = Processed::new(Outcome::Accepted);
        applied.kind = Some("feature_development");
        let results = [
            applied,
            Processed::new(Outcome::Rejected(protocol::reject::Reason::UnknownWorkflow)),
        ];
        let m = moved.header.message_id.as_str();
        let r = refused.header.message_id.as_str();
        let rows = [
            queued(1, "task.architect", Some(m)),
            queued(2, "escalation.on-call", Some(m)),
            queued(3, "task.architect", Some(r)),
            queued(4, "task.architect", None),
        ];
        assert_eq!(
            of_batch(&inputs, &results, &rows),
            vec![Handoff {
                outbox_id: 1,
                kind: "feature_development",
                caused_at: at
            }]
        );
    }

    #[test]
    fn only_confirmed_handoffs_are_observed_and_a_cause_from_the_future_counts_as_zero() {
        let metrics = Metrics::new();
        let now: DateTime<Utc> = "2026-12-07T09:00:02Z".parse().expect("a time");
        let handoffs = [
            Handoff {
                outbox_id: 1,
                kind: "hotfix",
                caused_at: now - chrono::Duration::seconds(2),
            },
            Handoff {
                outbox_id: 2,
                kind: "hotfix",
                caused_at: now + chrono::Duration::seconds(5),
            },
            Handoff {
                outbox_id: 3,
                kind: "hotfix",
                caused_at: now,
            },
        ];
        observe(&metrics, &handoffs, &[1, 2], now);
        let h = metrics.handoff_latency.with_label_values(&["hotfix"]);
        assert_eq!(h.get_sample_count(), 2);
        assert!(
            (h.get_sample_sum() - 2.0).abs() < 1e-9,
            "{}",
            h.get_sample_sum()
        );
    }
}
