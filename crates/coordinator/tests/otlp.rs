//! Spans over OTLP from a running `coordinator serve` (`traces.otlp_endpoint`), received
//! by an OTLP/HTTP receiver decoding them with the OpenTelemetry project's protobuf
//! classes for Python (`tests/otlp/receiver.py`, `make python-venv`); and the trace id
//! on the log line of a message's processing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use agent::Queue;
use protocol::trace::SpanContext;
use serde_json::{json, Value};
use test_support as common;

use common::{eventually, Serve, TestEnv, WAIT};

/// `receiver.py`, running: the port it listens on and the spans it printed.
struct Receiver {
    child: Child,
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let python = common::repo_root().join("target/python-venv/bin/python");
        assert!(
            python.exists(),
            "the Python virtualenv is missing: run `make python-venv` (make test does)"
        );
        let script = common::repo_root().join("crates/coordinator/tests/otlp/receiver.py");
        let mut child = Command::new(python)
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the receiver starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines
            .next()
            .and_then(Result::ok)
            .expect("the receiver says where it listens");
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the receiver said {first:?}"));
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let span: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("the receiver printed {line:?}: {e}"));
                sink.lock().expect("spans").push(span);
            }
        });
        Receiver { child, port, spans }
    }

    fn named(&self, name: &str) -> Vec<Value> {
        self.spans
            .lock()
            .expect("spans")
            .iter()
            .filter(|s| s["name"] == name)
            .cloned()
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_coordinator_exports_its_spans_over_otlp_and_logs_the_trace_id() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start();
    let serve = Serve::spawn(
        &env,
        &[
            (
                "COORDINATOR__TRACES__OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}/v1/traces", receiver.port),
            ),
            // The "processed" line of each message is at debug.
            ("RUST_LOG", "warn,coordinator::service::inbox=debug".into()),
        ],
    );
    serve.wait_ready().await;
    let product = env.agent("product-1", "product-director").await;
    let mut eng = env.agent("eng-1", "engineering-director").await;
    let start = product
        .send("requirements_ready", "wf-otlp", json!({"epic_id": "E-O"}))
        .await
        .expect("publish");
    let task = eng
        .next_delivery(&Queue::Tasks.name("eng-1"), WAIT)
        .await
        .expect("read the tasks queue")
        .expect("the requirements_handoff task");
    let sent_by = task
        .traceparent
        .as_deref()
        .and_then(SpanContext::from_traceparent)
        .expect("the task carries a traceparent");

    // The batch processor sends every few seconds: wait for the spans of the start.
    let (root, applied) = eventually("the start's spans at the receiver", || async {
        let root = receiver.named("workflow requirements_ready").pop()?;
        let applied = receiver.named("apply requirements_ready").pop()?;
        Some((root, applied))
    })
    .await;
    assert_eq!(applied["service"], "coordinator");
    assert_eq!(applied["trace_id"], sent_by.trace_id_hex());
    assert_eq!(applied["span_id"], sent_by.span_id_hex());
    assert_eq!(applied["parent_span_id"], root["span_id"]);
    assert_eq!(root["trace_id"], applied["trace_id"]);
    assert_eq!(root["parent_span_id"], "", "the root has no parent");
    assert_eq!(applied["attributes"]["workflow.id"], "wf-otlp");
    assert_eq!(
        applied["attributes"]["messaging.message.id"],
        start.header.message_id.as_str()
    );
    assert_eq!(applied["attributes"]["workflow.kind"], "feature_delivery");

    // The log line of the message's processing names its workflow, message and trace.
    let line = eventually("the processed line in the log", || async {
        serve
            .log()
            .lines()
            .find(|l| l.contains("processed") && l.contains(&start.header.message_id))
            .map(str::to_string)
    })
    .await;
    for field in ["wf-otlp", sent_by.trace_id_hex().as_str()] {
        assert!(line.contains(field), "{field} is not on {line:?}");
    }
    serve.signal("-TERM");
    let (code, log) = serve.wait_exit().await;
    assert_eq!(code, Some(0), "{log}");
}
