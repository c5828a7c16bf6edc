//! One trace per workflow (docs/observability.md, "Traces"): what the coordinator sends
//! carries the workflow's trace context (`traceparent` and `header.tracing`), what an
//! agent sends back under it becomes the parent of the coordinator's next span, and a
//! clock fired is a span of the same trace. The spans are read from the
//! OpenTelemetry SDK's in-memory exporter; `tests/otlp.rs` receives them over OTLP.

use std::time::Duration;

use agent::{AgentClient, Queue, Received};
use opentelemetry::trace::SpanId;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use protocol::trace::SpanContext;
use serde_json::json;
use test_support as common;

use common::{eventually, run_app, TestEnv, WAIT};
use coordinator::app::App;
use coordinator::telemetry::spans::Exporter;

/// The next message of type `message_type` on the agent's tasks queue, skipping others.
async fn next_of(agent: &mut AgentClient, message_type: &str) -> Received {
    let queue = Queue::Tasks.name(&agent.agent_id);
    loop {
        let d = agent
            .next_delivery(&queue, WAIT)
            .await
            .expect("read the tasks queue")
            .unwrap_or_else(|| panic!("no {message_type} on {queue} within {WAIT:?}"));
        if d.envelope.header.message_type == message_type {
            return d;
        }
    }
}

/// The context a message was sent from: its `traceparent`, which its header repeats.
fn sender(d: &Received) -> SpanContext {
    let from_header = d
        .envelope
        .header
        .tracing
        .as_ref()
        .and_then(SpanContext::from_header);
    let from_amqp = d
        .traceparent
        .as_deref()
        .and_then(SpanContext::from_traceparent);
    assert!(from_amqp.is_some(), "no valid traceparent on {d:?}");
    assert_eq!(
        from_amqp, from_header,
        "traceparent and header.tracing differ"
    );
    from_amqp.expect("checked")
}

fn id(s: &SpanData) -> [u8; 8] {
    s.span_context.span_id().to_bytes()
}

fn parent(s: &SpanData) -> [u8; 8] {
    s.parent_span_id.to_bytes()
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflows_handoffs_and_clocks_are_one_trace_of_parent_and_child_spans() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.sla.durations.insert(
        "technical_feasibility_assessment".into(),
        Duration::from_secs(1).into(),
    );
    let exported = InMemorySpanExporter::default();
    let app = App::build(settings)
        .await
        .expect("app builds")
        .exporting_to(Exporter::to(exported.clone(), "test"));
    let app = run_app(app).await;
    let product = env.agent("product-1", "product-director").await;
    let mut eng = env.agent("eng-1", "engineering-director").await;
    let mut qa = env.agent("qa-1", "qa-director").await;

    // The product director starts the workflow from a trace of its own.
    let own = SpanContext::new([0x11; 16], [0x22; 8]).expect("valid");
    let mut start = product.envelope("requirements_ready", "wf-trace", json!({"epic_id": "E-T"}));
    start.header.tracing = Some(own.header(None));
    product.publish(&start).await.expect("publish");

    // The task reaches the engineering director in the workflow's trace, sent by the
    // span that applied the start.
    let task = next_of(&mut eng, "requirements_handoff").await;
    let applied_start = sender(&task);
    assert_ne!(
        applied_start.trace_id, own.trace_id,
        "the workflow's own trace, not the starter's"
    );
    let trace = applied_start.trace_id;

    // The clock breaches: its notice comes from a span of the same trace.
    let breach = next_of(&mut eng, "sla_breached").await;
    let fired = sender(&breach);
    assert_eq!(fired.trace_id, trace);

    // The engineering director works under the task's span, as an instrumented agent
    // does, and replies; the QA director's task comes from the span of the reply.
    let working = SpanContext::new(trace, [0x33; 8]).expect("valid");
    for m in ["sprint_initialized", "feature_completed"] {
        let mut reply = eng.envelope(m, "wf-trace", json!({}));
        reply.header.tracing = Some(working.header(Some(applied_start.span_id)));
        eng.publish(&reply).await.expect("publish");
    }
    let handoff = next_of(&mut qa, "feature_handoff").await;
    let applied_completion = sender(&handoff);
    assert_eq!(applied_completion.trace_id, trace);

    // Exported: the root, the three messages applied, the clock fired (at least its
    // breach; its warning too).
    let spans = eventually("the workflow's spans to be exported", || async {
        let spans = exported.get_finished_spans().ok()?;
        let has = |name: &str| spans.iter().any(|s| s.name == name);
        (has("workflow requirements_ready")
            && has("apply feature_completed")
            && has("fire sla_breached"))
        .then_some(spans)
    })
    .await;
    for s in &spans {
        assert_eq!(
            s.span_context.trace_id().to_bytes(),
            trace,
            "{} is in another trace",
            s.name
        );
    }
    let root = named(&spans, "workflow requirements_ready");
    assert_eq!(root.len(), 1);
    let root = root[0];
    assert_eq!(
        root.parent_span_id,
        SpanId::INVALID,
        "the root has no parent"
    );

    let applied = named(&spans, "apply requirements_ready");
    assert_eq!(applied.len(), 1);
    assert_eq!(id(applied[0]), applied_start.span_id);
    assert_eq!(parent(applied[0]), id(root));
    let links: Vec<[u8; 8]> = applied[0]
        .links
        .iter()
        .map(|l| l.span_context.span_id().to_bytes())
        .collect();
    assert_eq!(
        links,
        vec![own.span_id],
        "the starter's own trace is linked"
    );

    for m in ["apply sprint_initialized", "apply feature_completed"] {
        let s = named(&spans, m);
        assert_eq!(s.len(), 1, "{m}");
        assert_eq!(
            parent(s[0]),
            working.span_id,
            "{m}: the agent's span is its parent"
        );
    }
    assert_eq!(
        id(named(&spans, "apply feature_completed")[0]),
        applied_completion.span_id
    );

    let fired_spans = named(&spans, "fire sla_breached");
    assert_eq!(fired_spans.len(), 1);
    assert_eq!(id(fired_spans[0]), fired.span_id);
    assert_eq!(parent(fired_spans[0]), id(root));
    app.stop().await;
}
