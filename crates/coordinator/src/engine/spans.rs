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
pub fn of_input<'i>(p: &Processor, input: &'i Input<'_>) -> Option<Placed<'i>> {
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
    let (parent, link) = match sender {
        Some(s) if s.trace_id == span.trace_id => (s.span_id, None),
        other => (trace::root(root).span_id, other),
    };
    Some(Placed {
        span,
        parent,
        link,
        root,
        envelope: env,
    })
}

/// Where an input's span goes: its context, its parent, the sender's context of
/// another trace, and the root workflow's id and the envelope it was read from.
pub struct Placed<'i> {
    pub span: SpanContext,
    pub parent: [u8; 8],
    pub link: Option<SpanContext>,
    pub root: &'i str,
    pub envelope: &'i protocol::envelope::Envelope,
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
