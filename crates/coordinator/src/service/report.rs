//! The communication-health report (the source documents'
//! `generate_communication_health_report`): the figures of a window judged by
//! `domain::report`'s rules, as JSON with the seed's sections (`message_volume`,
//! `message_latency`, `message_reliability`, `communication_quality`), for
//! `coordinator report --format json` and `GET /api/v1/report`.

use serde_json::{json, Value};

use crate::db::report::Figures;
use crate::domain::report::{judge, ratio, Health, Judged};

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

    pub fn hours(&self) -> f64 {
        let secs = (self.figures.until - self.figures.since)
            .num_seconds()
            .max(1);
        secs as f64 / 3600.0
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
}
