//! Which trace a workflow's spans belong to, and the ids of the coordinator's own
//! spans (docs/observability.md, "Traces"). Every id is derived from ids the
//! coordinator already has (the workflow's, the message's, the clock's), so every
//! coordinator, and a redelivery after a crash, names the same span the same way, the
//! messages a batch sends can name their parent span before it is exported, and
//! nothing is stored.

use protocol::trace::SpanContext;
use uuid::Uuid;

/// Namespace of the derived trace and span ids (a fixed, random UUID).
const NAMESPACE: Uuid = Uuid::from_u128(0x8e4f_11c2_6a3d_4b57_a0e9_3c7d_52f1_9b08);

fn digest(kind: &str, parts: &[&str]) -> [u8; 16] {
    let mut name = Vec::with_capacity(64);
    name.extend_from_slice(kind.as_bytes());
    for p in parts {
        name.push(0);
        name.extend_from_slice(p.as_bytes());
    }
    // A UUIDv5 has version bits set: never all zeros, in either half.
    *Uuid::new_v5(&NAMESPACE, &name).as_bytes()
}

fn span_id(kind: &str, parts: &[&str]) -> [u8; 8] {
    let d = digest(kind, parts);
    let mut s = [0u8; 8];
    s.copy_from_slice(&d[..8]);
    s
}

/// The trace of the workflow whose root (the workflow a chain of follow-ons started
/// from) is `root_id`: the same for the workflow, its follow-ons and every span of
/// theirs.
pub fn trace_id(root_id: &str) -> [u8; 16] {
    digest("trace", &[root_id])
}

/// The workflow's root span: the parent of the spans that have no parent of their own
/// in the trace (a clock firing, a message whose sender did not carry the trace).
pub fn root(root_id: &str) -> SpanContext {
    SpanContext {
        trace_id: trace_id(root_id),
        span_id: span_id("root", &[root_id]),
    }
}

/// The span of the coordinator applying message `message_id` to the workflow rooted at
/// `root_id`.
pub fn applying(root_id: &str, message_id: &str) -> SpanContext {
    SpanContext {
        trace_id: trace_id(root_id),
        span_id: span_id("apply", &[message_id]),
    }
}

/// The span of the timer firing a deadline (`what`: `warning`, `breach`, `level-2`, …)
/// of the clock or escalation `id`, in the workflow rooted at `root_id`.
pub fn firing(root_id: &str, id: i64, what: &str) -> SpanContext {
    SpanContext {
        trace_id: trace_id(root_id),
        span_id: span_id("fire", &[&id.to_string(), what]),
    }
}

/// A message that is not part of a workflow's work (a notice about an agent or a dead
/// letter): a trace of its own, named after it.
pub fn alone(message_id: &str) -> SpanContext {
    SpanContext {
        trace_id: digest("trace-of-message", &[message_id]),
        span_id: span_id("send", &[message_id]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workflows_spans_share_its_trace_and_differ_from_each_other() {
        let r = root("wf-1");
        let a = applying("wf-1", "m-1");
        let f = firing("wf-1", 7, "warning");
        assert_eq!(r.trace_id, a.trace_id);
        assert_eq!(r.trace_id, f.trace_id);
        assert_ne!(r.span_id, a.span_id);
        assert_ne!(a.span_id, f.span_id);
        assert_ne!(f.span_id, firing("wf-1", 7, "breach").span_id);
        assert_ne!(trace_id("wf-1"), trace_id("wf-2"));
        // The same inputs, the same ids: every coordinator agrees, a redelivery too.
        assert_eq!(a, applying("wf-1", "m-1"));
    }

    #[test]
    fn derived_ids_are_valid_w3c_ids() {
        for id in ["", "wf", "x".repeat(300).as_str()] {
            let c = applying(id, id);
            assert!(SpanContext::new(c.trace_id, c.span_id).is_some());
            let parsed = SpanContext::from_traceparent(&c.traceparent());
            assert_eq!(parsed, Some(c));
        }
    }
}
