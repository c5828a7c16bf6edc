//! `coordinator tail`: workflow events as they are committed, one line each, for a
//! terminal (coloured when stdout is one) or a pipe.
//!
//! It polls the history (`workflow_events`, by its `occurred_at` index) through
//! `db::read::EventCursor`, which returns each event once even when transactions commit
//! out of order.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::db::read::{EventCursor, EventFilter, TailedEvent};
use crate::db::Pool;

/// Rows read per poll at most (a busy minute is read over several polls).
const PAGE: i64 = 1000;

/// Prints events from `since` on until interrupted (Ctrl-C), or until `limit` were
/// printed.
pub async fn run(
    pool: &Pool,
    filter: &EventFilter,
    since: DateTime<Utc>,
    every: Duration,
    limit: Option<u64>,
) -> anyhow::Result<()> {
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut cursor = EventCursor::at(since);
    let mut count = 0u64;
    // On stderr, so that a pipe of stdout holds events only.
    eprintln!(
        "following workflow events from {}; Ctrl-C stops",
        since.format("%Y-%m-%dT%H:%M:%S%.3fZ")
    );
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let (rows, again) = cursor.next(pool, filter, PAGE).await?;
        let mut out = std::io::stdout().lock();
        for row in rows {
            writeln!(out, "{}", line(&row, colour))?;
            count += 1;
            if limit.is_some_and(|l| count >= l) {
                return Ok(());
            }
        }
        out.flush()?;
        drop(out);
        if again {
            // A full page: read on at once, from its newest row.
            continue;
        }
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// `time  workflow (kind)  message  sender (role)  from → to`.
fn line(e: &TailedEvent, colour: bool) -> String {
    let paint = |code: &str, text: &str| {
        if colour {
            format!("\u{1b}[{code}m{text}\u{1b}[0m")
        } else {
            text.to_string()
        }
    };
    let sender = match (&e.source_agent_id, &e.source_role) {
        (Some(id), Some(role)) => format!("{id} ({role})"),
        (Some(id), None) => id.clone(),
        (None, _) => "-".into(),
    };
    let moved = match e.from_state.as_deref() {
        Some(from) if from != e.to_state => format!("{from} → {}", paint("1", &e.to_state)),
        _ => e.to_state.clone(),
    };
    format!(
        "{}  {} ({})  {}  {}  {}",
        paint(
            "2",
            &e.occurred_at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
        ),
        paint("36", &e.workflow_id),
        e.kind,
        paint("33", &e.message_type),
        sender,
        moved
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(from: Option<&str>, to: &str) -> TailedEvent {
        TailedEvent {
            workflow_id: "wf-1".into(),
            seq: 2,
            kind: "feature_delivery".into(),
            message_type: "feature_ready".into(),
            source_agent_id: Some("eng-1".into()),
            source_role: Some("engineering-director".into()),
            from_state: from.map(str::to_string),
            to_state: to.into(),
            occurred_at: DateTime::parse_from_rfc3339("2026-12-07T08:00:00.250Z")
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default(),
        }
    }

    #[test]
    fn a_line_says_when_what_who_and_where_the_workflow_went() {
        assert_eq!(
            line(&event(Some("in_development"), "feature_handoff"), false),
            "2026-12-07T08:00:00.250Z  wf-1 (feature_delivery)  feature_ready  eng-1 (engineering-director)  in_development → feature_handoff"
        );
        // A message that moved nothing shows the state it left the workflow in.
        assert!(line(&event(Some("testing"), "testing"), false).ends_with("  testing"));
        // Colour only where asked for.
        assert!(line(&event(None, "testing"), true).contains("\u{1b}[36mwf-1\u{1b}[0m"));
    }
}
