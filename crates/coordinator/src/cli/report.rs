//! `coordinator report`: the communication-health report (`service::report`) over a
//! window, as text for a terminal or as JSON for a script.

use chrono::{DateTime, Utc};

use super::table::{Align, Table};
use crate::domain::report::ratio;
pub use crate::service::report::Report;

/// How the report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// The report written as `format` asks.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&report.json()).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Text => text(report),
    }
}

fn text(report: &Report) -> String {
    let f = &report.figures;
    let pct = |v: Option<f64>| v.map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0));
    let secs = |v: Option<f64>| v.map_or_else(|| "-".into(), |s| format!("{s:.3}s"));
    let mut out = format!(
        "Communication health {} … {}: {}\n",
        stamp(f.since),
        stamp(f.until),
        report.health.as_str().to_uppercase()
    );
    for j in &report.rules {
        out.push_str(&format!("  {}\n", j.sentence()));
    }

    let received: i64 = f.volume.iter().map(|v| v.received).sum();
    out.push_str(&format!(
        "\nMessages received: {received} ({:.1} an hour)\n",
        received as f64 / report.hours()
    ));
    let mut t = Table::new(&[
        ("ORCHESTRATOR", Align::Left),
        ("TYPE", Align::Left),
        ("RECEIVED", Align::Right),
        ("ACCEPTED", Align::Right),
        ("REJECTED", Align::Right),
    ]);
    for v in &f.volume {
        t.row(vec![
            v.orchestrator.clone(),
            v.message_type.clone(),
            v.received.to_string(),
            v.accepted.to_string(),
            v.rejected.to_string(),
        ]);
    }
    out.push_str(&t.render());

    out.push_str("\nMessages sent by the coordinator (commit → broker confirm)\n");
    let mut t = Table::new(&[
        ("TYPE", Align::Left),
        ("SENT", Align::Right),
        ("AVG", Align::Right),
        ("P95", Align::Right),
        ("SUCCESS", Align::Right),
        ("RETRIED", Align::Right),
        ("FAILED", Align::Right),
        ("PENDING", Align::Right),
    ]);
    for d in &f.deliveries {
        t.row(vec![
            d.message_type.clone().unwrap_or_else(|| "(all)".into()),
            d.sent.to_string(),
            secs(d.average_seconds),
            secs(d.p95_seconds),
            pct(ratio(d.delivered + d.retried, d.sent - d.pending)),
            pct(ratio(d.retried, d.delivered + d.retried)),
            pct(ratio(d.failed, d.sent - d.pending)),
            d.pending.to_string(),
        ]);
    }
    out.push_str(&t.render());

    out.push_str("\nHandoffs (tasks to a role) by workflow kind\n");
    let mut t = Table::new(&[
        ("KIND", Align::Left),
        ("SENT", Align::Right),
        ("DELIVERED", Align::Right),
        ("FAILED", Align::Right),
        ("PENDING", Align::Right),
        ("SUCCESS", Align::Right),
    ]);
    for h in &f.handoffs {
        t.row(vec![
            h.kind.clone(),
            h.sent.to_string(),
            h.delivered.to_string(),
            h.failed.to_string(),
            h.pending.to_string(),
            pct(ratio(h.delivered, h.sent - h.pending)),
        ]);
    }
    out.push_str(&t.render());

    out.push_str("\nSLA compliance (met on time / closed) by role and clock\n");
    let mut t = Table::new(&[
        ("ROLE", Align::Left),
        ("CLOCK", Align::Left),
        ("MET", Align::Right),
        ("BREACHED", Align::Right),
        ("COMPLIANCE", Align::Right),
    ]);
    for s in &f.sla {
        t.row(vec![
            s.role.clone(),
            s.clock.clone(),
            s.met.to_string(),
            s.breached.to_string(),
            pct(ratio(s.met, s.met + s.breached)),
        ]);
    }
    out.push_str(&t.render());

    out.push_str("\nProtocol adherence (accepted / received) by orchestrator\n");
    let mut t = Table::new(&[
        ("ORCHESTRATOR", Align::Left),
        ("RECEIVED", Align::Right),
        ("ACCEPTED", Align::Right),
        ("RATE", Align::Right),
        ("TOP REFUSALS", Align::Left),
    ]);
    for a in &f.adherence {
        let top: Vec<String> = a
            .top_refusals
            .iter()
            .map(|r| format!("{} ×{}", r.reason, r.count))
            .collect();
        t.row(vec![
            a.orchestrator.clone(),
            a.received.to_string(),
            a.accepted.to_string(),
            pct(ratio(a.accepted, a.received)),
            if top.is_empty() {
                "-".into()
            } else {
                top.join(", ")
            },
        ]);
    }
    out.push_str(&t.render());
    out
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}
