//! What a heartbeat says about its agent, and when an agent is stale. A heartbeat's
//! data is free-form in the contract: the source documents' fields are kept when they
//! have the documented type and ignored otherwise (a heartbeat is never refused for its
//! data), and bounded so one agent cannot grow the `agents` row without end.

use std::time::Duration;

use chrono::{DateTime, Utc};
use protocol::payloads::Heartbeat;
use serde_json::{json, Map, Value};

/// Longest status, capability name kept; most capabilities and resource figures kept.
const MAX_STATUS: usize = 64;
const MAX_CAPABILITY: usize = 128;
const MOST_CAPABILITIES: usize = 64;
const MOST_RESOURCES: usize = 16;

/// The report of one heartbeat's `payload.data`, each field kept only when well typed.
pub fn report(data: &Value) -> Heartbeat {
    let field = |name: &str| data.get(name);
    let fraction = |name: &str| {
        field(name)
            .and_then(Value::as_f64)
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    let count = |name: &str| {
        field(name)
            .and_then(Value::as_u64)
            .map(|n| u32::try_from(n.min(i32::MAX as u64)).unwrap_or(i32::MAX as u32))
    };
    let status = field("agent_status")
        .or_else(|| field("status"))
        .and_then(Value::as_str)
        .map(|s| truncate(s, MAX_STATUS));
    let capabilities = field("capabilities").and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .take(MOST_CAPABILITIES)
            .map(|c| truncate(c, MAX_CAPABILITY))
            .collect()
    });
    let resource_usage = field("resource_usage").and_then(Value::as_object).map(|o| {
        o.iter()
            .filter_map(|(k, v)| Some((truncate(k, MAX_STATUS), v.as_f64()?)))
            .take(MOST_RESOURCES)
            .collect()
    });
    Heartbeat {
        agent_status: status,
        load: fraction("load"),
        available_capacity: fraction("available_capacity"),
        active_tasks: count("active_tasks"),
        queued_tasks: count("queued_tasks"),
        last_activity: field("last_activity")
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc)),
        capabilities,
        resource_usage,
    }
}

/// The report as the batch statement stores it (absent fields as JSON null).
pub fn stored(h: &Heartbeat) -> Value {
    json!({
        "status": h.agent_status,
        "load": h.load,
        "available_capacity": h.available_capacity,
        "active_tasks": h.active_tasks,
        "queued_tasks": h.queued_tasks,
        "last_activity": h.last_activity,
        "capabilities": h.capabilities,
        "resource_usage": h.resource_usage.as_ref().map(|r| Value::Object(
            r.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<String, Value>>()
        )),
    })
}

/// An agent is stale once it has sent no heartbeat for `missed` intervals.
pub fn stale_after(interval: Duration, missed: u32) -> Duration {
    interval.saturating_mul(missed.max(1))
}

/// An agent's health as `agent list`, the gauges and the dashboard show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// A heartbeat within the stale threshold.
    Live,
    /// None for longer.
    Stale,
    /// It never sent one (registered by configuration or the CLI).
    Unknown,
}

impl Health {
    pub fn of(
        last_heartbeat_at: Option<DateTime<Utc>>,
        stale_after: Duration,
        now: DateTime<Utc>,
    ) -> Health {
        match last_heartbeat_at {
            None => Health::Unknown,
            Some(at) if (now - at).to_std().unwrap_or_default() > stale_after => Health::Stale,
            Some(_) => Health::Live,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Live => "live",
            Health::Stale => "stale",
            Health::Unknown => "unknown",
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_heartbeat_is_kept_whole() {
        let r = report(&json!({
            "agent_status": "healthy",
            "load": 0.75,
            "available_capacity": 0.25,
            "active_tasks": 3,
            "queued_tasks": 1,
            "last_activity": "2024-01-17T10:29:55.000Z",
            "capabilities": ["document_analysis", "policy_extraction"],
            "resource_usage": {"cpu_percent": 65.2, "memory_percent": 78.1, "disk_percent": 45.0}
        }));
        assert_eq!(r.agent_status.as_deref(), Some("healthy"));
        assert_eq!((r.load, r.available_capacity), (Some(0.75), Some(0.25)));
        assert_eq!((r.active_tasks, r.queued_tasks), (Some(3), Some(1)));
        assert_eq!(
            r.last_activity.map(|t| t.to_rfc3339()),
            Some("2024-01-17T10:29:55+00:00".to_string())
        );
        assert_eq!(r.capabilities.map(|c| c.len()), Some(2));
        assert_eq!(
            r.resource_usage.and_then(|u| u.get("cpu_percent").copied()),
            Some(65.2)
        );
    }

    #[test]
    fn ill_typed_fields_are_ignored_and_the_old_status_name_is_read() {
        let r = report(&json!({
            "status": "degraded",
            "load": "high",
            "available_capacity": -1,
            "active_tasks": -2,
            "queued_tasks": 1.5,
            "last_activity": "yesterday",
            "capabilities": "everything",
            "resource_usage": {"cpu_percent": "lots", "memory_percent": 10}
        }));
        assert_eq!(r.agent_status.as_deref(), Some("degraded"));
        assert_eq!(r.load, None);
        assert_eq!(r.available_capacity, None);
        assert_eq!((r.active_tasks, r.queued_tasks), (None, None));
        assert_eq!(r.last_activity, None);
        assert_eq!(r.capabilities, None);
        assert_eq!(r.resource_usage.map(|u| u.len()), Some(1));
        assert_eq!(report(&json!("not an object")), Heartbeat::default());
    }

    #[test]
    fn what_is_kept_is_bounded() {
        let long = "é".repeat(100);
        let r = report(&json!({
            "agent_status": long,
            "capabilities": vec!["x".repeat(500); 100],
        }));
        assert!(r
            .agent_status
            .as_deref()
            .is_some_and(|s| s.len() <= MAX_STATUS));
        let caps = r.capabilities.unwrap_or_default();
        assert_eq!(caps.len(), MOST_CAPABILITIES);
        assert!(caps.iter().all(|c| c.len() == MAX_CAPABILITY));
    }

    #[test]
    fn an_agent_is_stale_after_the_missed_intervals_and_unknown_before_its_first_heartbeat() {
        let now: DateTime<Utc> = "2026-12-07T10:00:00Z".parse().expect("a time");
        let after = stale_after(Duration::from_secs(30), 3);
        assert_eq!(after, Duration::from_secs(90));
        assert_eq!(Health::of(None, after, now), Health::Unknown);
        let ago = |s| Some(now - chrono::Duration::seconds(s));
        assert_eq!(Health::of(ago(89), after, now), Health::Live);
        assert_eq!(Health::of(ago(91), after, now), Health::Stale);
    }
}
