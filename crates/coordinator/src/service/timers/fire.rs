//! What happens when deadlines come, many in one transaction:
//! `db::deadlines::take_due` locks their workflows and takes the due warnings, breaches
//! and ladder steps (each guarded, so a deadline fires once however many coordinators
//! try), then `engine::deadlines::rows` turns what was taken into escalations, notices,
//! on-call messages and history rows, written by the same single statement as a batch
//! of messages.

use chrono::{DateTime, Utc};

use crate::db::{self, batch, deadlines, Pool};
use crate::domain::sla::{Deadline, DeadlineKind};
use crate::engine::deadlines::rows;
use crate::engine::rows::Queued;
use crate::engine::Processor;

/// What firing a batch of deadlines did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fired {
    /// Deadlines that fired (with when they were due).
    pub fired: Vec<Deadline>,
    /// Deadlines whose workflow another transaction held: to try again shortly.
    pub skipped: Vec<Deadline>,
    /// Deadlines the firing created (next ladder steps).
    pub next: Vec<Deadline>,
    /// Outbox rows written.
    pub queued: Vec<Queued>,
    /// The clocks that warned and that were breached: (clock, owner role) each.
    pub warned: Vec<(String, String)>,
    pub breached: Vec<(String, String)>,
    /// The spans of the deadlines fired (`engine::spans`), to export.
    pub spans: Vec<crate::engine::spans::Span>,
}

/// Fires due deadlines in one transaction. A deadline that no longer applies (met,
/// snoozed, acknowledged, or fired by another coordinator) is dropped.
pub async fn fire(
    pool: &Pool,
    processor: &Processor,
    due: &[Deadline],
    now: DateTime<Utc>,
) -> db::Result<Fired> {
    let mut out = Fired::default();
    let (mut warnings, mut breaches, mut ladder) = (Vec::new(), Vec::new(), Vec::new());
    for d in due {
        match d.kind {
            DeadlineKind::Warning => warnings.push(d.id),
            DeadlineKind::Breach => breaches.push(d.id),
            DeadlineKind::Ladder => ladder.push(d.id),
        }
    }
    // A clock whose warning and breach are both due (after a restart) warns now and
    // breaches in the next batch: one statement may change a row only once.
    let warned_too: Vec<i64> = breaches
        .iter()
        .filter(|id| warnings.contains(id))
        .copied()
        .collect();
    breaches.retain(|id| !warned_too.contains(id));
    out.skipped.extend(
        due.iter()
            .filter(|d| d.kind == DeadlineKind::Breach && warned_too.contains(&d.id))
            .copied(),
    );

    let mut tx = pool.begin().await?;
    let taken = deadlines::take_due(&mut tx, &warnings, &breaches, &ladder, now).await?;
    let raises = taken.breached.len() + taken.climbed.len();
    let escalation_ids = batch::reserve_escalation_ids(&mut tx, raises).await?;
    let (mut writes, next) = rows(processor, &taken, &escalation_ids, now);
    out.spans = std::mem::take(&mut writes.spans);
    let written = batch::write(&mut tx, writes, now).await?;
    tx.commit().await?;

    let locked: std::collections::HashSet<&str> =
        taken.workflows.iter().map(|(id, _)| id.as_str()).collect();
    let fired: std::collections::HashSet<(DeadlineKind, i64)> = taken
        .warned
        .iter()
        .map(|c| (DeadlineKind::Warning, c.id))
        .chain(taken.breached.iter().map(|c| (DeadlineKind::Breach, c.id)))
        .chain(taken.climbed.iter().map(|e| (DeadlineKind::Ladder, e.id)))
        .collect();
    let held_elsewhere: std::collections::HashSet<(bool, i64)> = taken
        .wanted
        .iter()
        .filter(|(_, _, wf)| !locked.contains(wf.as_str()))
        .map(|(is_clock, id, _)| (*is_clock, *id))
        .collect();
    for d in due {
        if fired.contains(&(d.kind, d.id)) {
            out.fired.push(*d);
        } else if held_elsewhere.contains(&(d.kind != DeadlineKind::Ladder, d.id))
            && !out.skipped.contains(d)
        {
            out.skipped.push(*d);
        }
    }
    out.next = next;
    out.queued = written.queued;
    let named = |c: &crate::engine::rows::FiredClock| (c.clock.clone(), c.owner_role.clone());
    out.warned = taken.warned.iter().map(named).collect();
    out.breached = taken.breached.iter().map(named).collect();
    Ok(out)
}
