//! The coordinator's spans, as plain data: one per message applied (and per operator
//! action), one per deadline fired, and a workflow's root span when a message creates
//! it. Their ids are derived (`domain::trace`), so the messages a batch sends name
//! their parent span before anything is exported; `telemetry::spans` exports them once
//! the batch commits, when export is on.
//!
//! A span's parent is the span of the agent that sent the message when the message
//! carried the workflow's trace (the context the coordinator sent it: `traceparent`, or
//! `header.tracing`); otherwise the workflow's root span, with the sender's context,
//! if any (an agent's own trace that started the workflow), as a link.

use protocol::names::message_types::HEARTBEAT;
use protocol::trace::SpanContext;

use super::messages::traced;
use super::rows::Writes;
pub use super::rows::{Span, What};
use super::{Input, Processor};
use crate::domain::trace;

/// Where applying `input` goes in its workflow's trace: its span, its parent and a
/// link. `None` for what belongs to no workflow (a heartbeat) or has no trusted
/// envelope (a refused delivery).
pub fn of_input(
    p: &Processor,
    input: &Input<'_>,
) -> Option<(SpanContext, [u8; 8], Option<SpanContext>)> {
    let env = input.envelope()?;
    let h = &env.header;
    if h.message_type == HEARTBEAT {
        return None;
    }
    let root = p.workflows.root_of(&h.correlation_id);
    let span = trace::applying(root, &h.message_id);
    let sender = match input {
        Input::Delivery(d, _) => {
            SpanContext::of_delivery(d.meta.traceparent.as_deref(), h.tracing.as_ref())
        }
        Input::Operator(_) => h.tracing.as_ref().and_then(SpanContext::from_header),
    };
    Some(match sender {
        Some(s) if s.trace_id == span.trace_id => (span, s.span_id, None),
        other => (span, trace::root(root).span_id, other),
    })
}

/// Traces a deadline fired for `workflow_id` (`what`: `warning`, `breach`, `level`):
/// the messages queued from `sent_from` on name its span, which is kept to export after
/// the commit, under the workflow's root span.
#[allow(clippy::too_many_arguments)]
pub fn fired(
    p: &Processor,
    w: &mut Writes,
    sent_from: usize,
    workflow_id: &str,
    id: i64,
    what: &str,
    message_type: &str,
    subject: String,
) {
    let root = p.workflows.root_of(workflow_id);
    let span = trace::firing(root, id, what);
    let parent = trace::root(root).span_id;
    for m in w.outbox.iter_mut().skip(sent_from) {
        traced(m, &span, Some(parent));
    }
    if !p.keep_spans {
        return;
    }
    w.spans.push(Span {
        context: span,
        parent: Some(parent),
        link: None,
        what: What::Deadline,
        workflow_id: workflow_id.to_string(),
        subject,
        message_type: message_type.to_string(),
        kind: None,
        outcome: "fired",
        detail: None,
    });
}
