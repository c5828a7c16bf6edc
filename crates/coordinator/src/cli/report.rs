//! `coordinator report`: the communication-health report (the source documents'
//! `generate_communication_health_report`) over a window, as text for a terminal or as
//! JSON with the seed's sections (`message_volume`, `message_latency`,
//! `message_reliability`, `communication_quality`) for a script.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::table::{Align, Table};
use crate::db::report::Figures;
use crate::domain::report::{judge, ratio, Health, Judged};

/// How the report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// The report of `figures`: its overall health and every rule that decided it.
pub struct Report {
    pub figures: Figures,
    pub health: Health,
    pub rules: Vec<Judged>,
}

impl Report {
    pub fn of(figures: Figures) -> Report {
        let (health, rules) = judge(|m| figures.measure(m));
        Report {
            figures,
            health,
            rules,
        }
    }

    fn hours(&self) -> f64 {
        let secs = (self.figures.until - self.figures.since)
            .num_seconds()
            .max(1);
        secs as f64 / 3600.0
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Json => {
                let mut s = serde_json::to_string_pretty(&self.json()).unwrap_or_default();
                s.push('\n');
                s
            }
            Format::Text => self.text(),
        }
    }

    pub fn json(&self) -> Value {
        let f = &self.figures;
        let all = f.all_deliveries();
        let received: i64 = f.volume.iter().map(|v| v.received).sum();
        json!({
            "since": f.since,
            "until": f.until,
            "overall_health": self.health.as_str(),
            "rules": self.rules,
            "message_volume": {
                "total_messages": received,
                "total_messages_per_hour": received as f64 / self.hours(),
                "messages_per_orchestrator": f.adherence.iter().map(|a| json!({
                    "orchestrator": a.orchestrator, "received": a.received,
                })).collect::<Vec<_>>(),
                "message_type_distribution": f.volume,
            },
            "message_latency": {
                "average_delivery_seconds": all.average_seconds,
                "p95_delivery_seconds": all.p95_seconds,
                "by_type": f.deliveries.iter().filter(|d| d.message_type.is_some()).collect::<Vec<_>>(),
            },
            "message_reliability": {
                "delivery_success_rate": f.measure("delivery_success_rate"),
                "retry_rate": f.measure("retry_rate"),
                "failure_rate": ratio(all.failed, all.sent - all.pending),
                "failure_rate_by_type": f.deliveries.iter().filter_map(|d| Some(json!({
                    "message_type": d.message_type.as_ref()?,
                    "failure_rate": ratio(d.failed, d.sent - d.pending),
                    "retry_rate": ratio(d.retried, d.delivered + d.retried),
                }))).collect::<Vec<_>>(),
            },
            "communication_quality": {
                "handoff_success_rate": f.measure("handoff_success_rate"),
                "handoffs_by_kind": f.handoffs.iter().map(|h| json!({
                    "kind": h.kind, "sent": h.sent, "delivered": h.delivered,
                    "failed": h.failed, "pending": h.pending,
                    "success_rate": ratio(h.delivered, h.sent - h.pending),
                })).collect::<Vec<_>>(),
                "response_time_compliance": f.measure("sla_compliance"),
                "sla_by_role_and_clock": f.sla.iter().map(|s| json!({
                    "role": s.role, "clock": s.clock, "met": s.met, "breached": s.breached,
                    "compliance": ratio(s.met, s.met + s.breached),
                })).collect::<Vec<_>>(),
                "protocol_adherence_rate": f.measure("protocol_adherence"),
                "adherence_by_orchestrator": f.adherence.iter().map(|a| json!({
                    "orchestrator": a.orchestrator, "received": a.received, "accepted": a.accepted,
                    "rate": ratio(a.accepted, a.received), "top_refusals": a.top_refusals,
                })).collect::<Vec<_>>(),
            },
        })
    }

    fn text(&self) -> String {
        let f = &self.figures;
        let pct = |v: Option<f64>| v.map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0));
        let secs = |v: Option<f64>| v.map_or_else(|| "-".into(), |s| format!("{s:.3}s"));
        let mut out = format!(
            "Communication health {} … {}: {}\n",
            stamp(f.since),
            stamp(f.until),
            self.health.as_str().to_uppercase()
        );
        for j in &self.rules {
            out.push_str(&format!("  {}\n", j.sentence()));
        }

        let received: i64 = f.volume.iter().map(|v| v.received).sum();
        out.push_str(&format!(
            "\nMessages received: {received} ({:.1} an hour)\n",
            received as f64 / self.hours()
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
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}
