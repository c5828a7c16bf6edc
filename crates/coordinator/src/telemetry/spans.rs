//! Exporting the coordinator's spans (`engine::spans`) through the OpenTelemetry SDK:
//! over OTLP/HTTP when `traces.otlp_endpoint` is set, to any exporter a test gives, or
//! nowhere (the default: the messages still carry their trace context, and nothing is
//! built per span). Each span is built with the ids the engine derived, so the ids the
//! coordinator's messages name as their parent are the ids exported. A batch
//! processor exports on its own thread: a batch's commit never waits for the
//! collector, and a collector that is down costs dropped spans, not messages.

use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{
    Link, SpanBuilder, SpanContext as OtelContext, SpanId, SpanKind, Status, TraceContextExt,
    TraceFlags, TraceId, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanExporter};
use opentelemetry_sdk::Resource;

use crate::engine::spans::{Span, What};
use crate::settings::TraceSettings;

/// Where spans go; cheap to clone.
#[derive(Clone, Default)]
pub struct Exporter {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

#[derive(Debug, thiserror::Error)]
#[error("could not set up the OTLP exporter for traces.otlp_endpoint {endpoint}")]
pub struct ExporterError {
    endpoint: String,
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_on() {
            "Exporter(on)"
        } else {
            "Exporter(off)"
        })
    }
}

impl Exporter {
    /// Spans are not exported.
    pub fn off() -> Exporter {
        Exporter::default()
    }

    /// As `[traces]` says: OTLP/HTTP (protobuf) to `otlp_endpoint`, or off.
    pub fn from_settings(s: &TraceSettings, instance: &str) -> Result<Exporter, ExporterError> {
        if s.otlp_endpoint.is_empty() {
            return Ok(Exporter::off());
        }
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(s.otlp_endpoint.clone())
            .with_timeout(s.export_timeout)
            .build()
            .map_err(|source| ExporterError {
                endpoint: s.otlp_endpoint.clone(),
                source,
            })?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource(instance))
            .build();
        Ok(Exporter::of(provider))
    }

    /// Every span to `exporter` as it ends (tests: the SDK's in-memory exporter).
    pub fn to(exporter: impl SpanExporter + 'static, instance: &str) -> Exporter {
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter)
            .with_resource(resource(instance))
            .build();
        Exporter::of(provider)
    }

    fn of(provider: SdkTracerProvider) -> Exporter {
        let tracer = provider.tracer("coordinator");
        Exporter {
            inner: Some(Arc::new(Inner { provider, tracer })),
        }
    }

    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Exports `spans`, each as running from `started` to `ended` (the work they were
    /// part of: a batch's transaction, a deadline's firing).
    pub fn export(&self, spans: &[Span], started: SystemTime, ended: SystemTime) {
        let Some(inner) = &self.inner else {
            return;
        };
        for s in spans {
            let parent = match s.parent {
                Some(p) => Context::new().with_remote_span_context(remote(s.context.trace_id, p)),
                None => Context::new(),
            };
            let mut attributes = vec![
                KeyValue::new("workflow.id", s.workflow_id.clone()),
                KeyValue::new("messaging.system", "rabbitmq"),
                KeyValue::new("coordinator.outcome", s.outcome),
            ];
            match s.what {
                What::Message => {
                    attributes.push(KeyValue::new("messaging.message.id", s.subject.clone()));
                    attributes.push(KeyValue::new("messaging.operation.type", "process"));
                }
                What::Deadline | What::Workflow => {
                    attributes.push(KeyValue::new("coordinator.subject", s.subject.clone()));
                }
            }
            attributes.push(KeyValue::new(
                "coordinator.message_type",
                s.message_type.clone(),
            ));
            if let Some(kind) = s.kind {
                attributes.push(KeyValue::new("workflow.kind", kind));
            }
            let builder = SpanBuilder::from_name(format!("{} {}", s.what.as_str(), s.message_type))
                .with_kind(match s.what {
                    What::Message => SpanKind::Consumer,
                    What::Deadline | What::Workflow => SpanKind::Internal,
                })
                .with_trace_id(TraceId::from_bytes(s.context.trace_id))
                .with_span_id(SpanId::from_bytes(s.context.span_id))
                .with_start_time(started)
                .with_end_time(ended)
                .with_attributes(attributes)
                .with_links(
                    s.link
                        .iter()
                        .map(|l| Link::with_context(remote(l.trace_id, l.span_id)))
                        .collect(),
                )
                .with_status(match &s.detail {
                    Some(why) if s.outcome == "rejected" => Status::error(why.clone()),
                    _ => Status::Unset,
                });
            // Built with its end time: ended (and exported) as it is dropped.
            drop(inner.tracer.build_with_context(builder, &parent));
        }
    }

    /// Sends what is still buffered (at shutdown).
    pub fn flush(&self) {
        if let Some(inner) = &self.inner {
            if let Err(e) = inner.provider.force_flush() {
                tracing::warn!(error = %e, "could not export the last spans");
            }
        }
    }
}

fn remote(trace_id: [u8; 16], span_id: [u8; 8]) -> OtelContext {
    OtelContext::new(
        TraceId::from_bytes(trace_id),
        SpanId::from_bytes(span_id),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    )
}

fn resource(instance: &str) -> Resource {
    Resource::builder()
        .with_service_name("coordinator")
        .with_attribute(KeyValue::new("service.instance.id", instance.to_string()))
        .build()
}
