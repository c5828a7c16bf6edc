//! A batch's in-memory copy of the workflows it locked: their state, round and clocks
//! as each message leaves them, so the next message of the same workflow in the batch
//! sees what the previous one did. At the end the copy becomes rows to write.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::rows::{
    ArmedClockRow, ClockChange, LockedWorkflow, NewClock, NewWorkflow, WorkflowChange,
};
use crate::domain::effect::ClockRef;
use crate::domain::sla::ArmedClock;

/// What the batch does with the workflow row at the end.
#[derive(Debug, Clone)]
pub(super) enum Origin {
    /// The row existed; `changed` once a message was applied to it.
    Existing { changed: bool },
    /// Created by this batch.
    New {
        /// The `payload.data` member its definition names as `key`, when it has one.
        key_name: Option<&'static str>,
        title: Option<String>,
        data: Value,
        created_at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Wf {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub round: i32,
    pub origin: Origin,
    /// Its business key (`workflows.business_key`), which a follow-on inherits.
    pub business_key: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// When it reached a final state in this batch.
    pub completed_at: Option<DateTime<Utc>>,
    pub clocks: Vec<Clock>,
    /// History rows written for it so far in this batch.
    pub events: i32,
    /// The version and hash of the definition it started with (the version is known
    /// only for a workflow this batch creates).
    pub definition: (Option<i32>, Option<String>),
}

/// A clock: loaded armed, or armed by this batch (`id` is `None` until written).
#[derive(Debug, Clone)]
pub(super) struct Clock {
    pub id: Option<i64>,
    pub clock: String,
    pub round: i32,
    pub owner_role: String,
    pub owner_agent_id: Option<String>,
    pub subject_agent_id: Option<String>,
    /// Set for clocks armed by this batch.
    pub armed: Option<Armed>,
    /// A loaded clock's `armed_at` and `due_at` (as moved by this batch).
    pub loaded: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// A loaded clock whose deadline this batch moved: its new warning time, and
    /// whether that warning is still to come (it may fire again).
    pub moved: Option<(DateTime<Utc>, bool)>,
    pub status: ClockStatus,
    pub closed_at: Option<DateTime<Utc>>,
    pub closed_by: Option<String>,
    /// A loaded clock the batch changed.
    pub dirty: bool,
}

#[derive(Debug, Clone)]
pub(super) struct Armed {
    pub severity: String,
    pub armed_at: DateTime<Utc>,
    pub warn_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClockStatus {
    Armed,
    Met,
    Cancelled,
}

impl ClockStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ClockStatus::Armed => "armed",
            ClockStatus::Met => "met",
            ClockStatus::Cancelled => "cancelled",
        }
    }
}

impl Clock {
    fn is(&self, r: &ClockRef) -> bool {
        self.clock == r.clock
            && self.round == r.round
            && self.subject_agent_id == r.subject_agent_id
    }
}

impl Wf {
    pub fn loaded(w: LockedWorkflow, now: DateTime<Utc>) -> Wf {
        Wf {
            id: w.id,
            kind: w.kind,
            state: w.state,
            round: w.round,
            origin: Origin::Existing { changed: false },
            business_key: w.business_key,
            updated_at: now,
            completed_at: None,
            clocks: Vec::new(),
            events: 0,
            definition: (None, w.definition_hash),
        }
    }

    pub fn add_loaded_clock(&mut self, c: ArmedClockRow) {
        self.clocks.push(Clock {
            id: Some(c.id),
            clock: c.clock,
            round: c.round,
            owner_role: c.owner_role,
            owner_agent_id: c.owner_agent_id,
            subject_agent_id: c.subject_agent_id,
            armed: None,
            loaded: Some((c.armed_at, c.due_at)),
            moved: None,
            status: ClockStatus::Armed,
            closed_at: None,
            closed_by: None,
            dirty: false,
        });
    }

    /// The armed clocks, as the state machines see them.
    pub fn armed(&self) -> Vec<ArmedClock> {
        self.clocks
            .iter()
            .filter(|c| c.status == ClockStatus::Armed)
            .map(|c| ArmedClock {
                clock: c.clock.clone(),
                round: c.round,
                owner_role: c.owner_role.clone(),
                subject_agent_id: c.subject_agent_id.clone(),
            })
            .collect()
    }

    /// The armed clock with row id `id`, as the state machines see it.
    pub fn armed_clock(&self, id: i64) -> Option<ArmedClock> {
        self.clocks
            .iter()
            .find(|c| c.status == ClockStatus::Armed && c.id == Some(id))
            .map(|c| ArmedClock {
                clock: c.clock.clone(),
                round: c.round,
                owner_role: c.owner_role.clone(),
                subject_agent_id: c.subject_agent_id.clone(),
            })
    }

    /// Arms a clock; false if this batch already knows a clock of that name, round and
    /// subject (re-arming changes nothing).
    pub fn arm(&mut self, c: Clock) -> bool {
        let r = ClockRef {
            clock: c.clock.clone(),
            round: c.round,
            subject_agent_id: c.subject_agent_id.clone(),
        };
        if self.clocks.iter().any(|k| k.is(&r)) {
            return false;
        }
        self.clocks.push(c);
        true
    }

    /// Closes an armed clock as met or cancelled.
    pub fn close(
        &mut self,
        r: &ClockRef,
        status: ClockStatus,
        by: Option<&str>,
        at: DateTime<Utc>,
    ) {
        if let Some(c) = self
            .clocks
            .iter_mut()
            .find(|c| c.status == ClockStatus::Armed && c.is(r))
        {
            c.status = status;
            c.closed_at = Some(at);
            c.closed_by = by.map(str::to_string);
            c.dirty = true;
        }
    }

    /// Moves an armed clock's deadline to `due_at` and its warning to
    /// `warn_at(armed_at, due_at)`; the deadline it had, if the clock is armed.
    pub fn move_clock(
        &mut self,
        r: &ClockRef,
        due_at: DateTime<Utc>,
        warn_at: impl Fn(DateTime<Utc>, DateTime<Utc>) -> DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let c = self
            .clocks
            .iter_mut()
            .find(|c| c.status == ClockStatus::Armed && c.is(r))?;
        if let Some(a) = &mut c.armed {
            let was = a.due_at;
            a.due_at = due_at;
            a.warn_at = warn_at(a.armed_at, due_at);
            return Some(was);
        }
        let (armed_at, was) = c.loaded?;
        let warn = warn_at(armed_at, due_at);
        c.loaded = Some((armed_at, due_at));
        c.moved = Some((warn, warn > now));
        c.dirty = true;
        Some(was)
    }

    /// The agent that acknowledged a handoff owns its role's armed clocks from then on.
    pub fn assign_owner(&mut self, role: &str, agent_id: &str) {
        for c in self
            .clocks
            .iter_mut()
            .filter(|c| c.status == ClockStatus::Armed && c.owner_role == role)
        {
            c.owner_agent_id = Some(agent_id.to_string());
            c.dirty = true;
        }
    }

    pub fn touch(&mut self, state: &str, round: i32, terminal: bool, now: DateTime<Utc>) {
        self.state = state.to_string();
        self.round = round;
        self.updated_at = now;
        if terminal && self.completed_at.is_none() {
            self.completed_at = Some(now);
        }
        if let Origin::Existing { changed } = &mut self.origin {
            *changed = true;
        }
    }

    pub fn next_event(&mut self) -> i32 {
        self.events += 1;
        self.events
    }

    /// The workflow row to insert or update, if any.
    pub fn row(&self) -> WorkflowRow {
        match &self.origin {
            Origin::Existing { changed: false } => WorkflowRow::Unchanged,
            Origin::Existing { changed: true } => WorkflowRow::Changed(WorkflowChange {
                id: self.id.clone(),
                state: self.state.clone(),
                round: self.round,
                at: self.updated_at,
                terminal: self.completed_at.is_some(),
            }),
            Origin::New {
                key_name,
                title,
                data,
                created_at,
            } => WorkflowRow::New(NewWorkflow {
                id: self.id.clone(),
                kind: self.kind.clone(),
                state: self.state.clone(),
                key_name: key_name.map(str::to_string),
                business_key: self.business_key.clone(),
                title: title.clone(),
                data: data.clone(),
                round: self.round,
                created_at: *created_at,
                updated_at: self.updated_at,
                completed_at: self.completed_at,
                definition: match &self.definition {
                    (Some(version), Some(hash)) => Some((*version, hash.clone())),
                    _ => None,
                },
            }),
        }
    }

    /// Clock rows to insert (armed by the batch) and to update (loaded, then changed).
    pub fn clock_rows(&self, new: &mut Vec<NewClock>, changed: &mut Vec<ClockChange>) {
        for c in &self.clocks {
            match (&c.armed, c.id) {
                (Some(a), _) => new.push(NewClock {
                    workflow_id: self.id.clone(),
                    clock: c.clock.clone(),
                    round: c.round,
                    owner_role: c.owner_role.clone(),
                    owner_agent_id: c.owner_agent_id.clone(),
                    subject_agent_id: c.subject_agent_id.clone(),
                    severity: a.severity.clone(),
                    armed_at: a.armed_at,
                    warn_at: a.warn_at,
                    due_at: a.due_at,
                    status: c.status.as_str().to_string(),
                    closed_at: c.closed_at,
                    closed_by: c.closed_by.clone(),
                }),
                (None, Some(id)) if c.dirty => changed.push(ClockChange {
                    id,
                    status: c.status.as_str().to_string(),
                    closed_at: c.closed_at,
                    closed_by: c.closed_by.clone(),
                    owner_agent_id: c.owner_agent_id.clone(),
                    due_at: c.moved.and(c.loaded).map(|(_, due)| due),
                    warn_at: c.moved.map(|(warn, _)| warn),
                    warn_again: c.moved.is_some_and(|(_, again)| again),
                }),
                _ => {}
            }
        }
    }
}

pub(super) enum WorkflowRow {
    Unchanged,
    Changed(WorkflowChange),
    New(NewWorkflow),
}
