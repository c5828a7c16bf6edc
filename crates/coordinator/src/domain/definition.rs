//! Workflows as data: a workflow definition (one TOML file per workflow under
//! `config/workflows/`, docs/workflows.md) read, checked against the role catalog, and
//! compiled into the tables the pure state machine ([`super::workflow`]) walks.
//!
//! Definitions are read once when the service or a CLI command starts and live for
//! the rest of the process: compiling one leaks it to `'static`, so that the effects
//! it produces name its tasks and clocks without copying them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use protocol::catalog::{Catalog, Permission};

use super::sla::{ClockDef, Severity};

/// The states every workflow has besides its own: where an operator's
/// `workflow cancel` and `workflow fail` take it.
pub const CANCELLED: &str = "cancelled";
pub const FAILED: &str = "failed";

/// A compiled workflow definition.
#[derive(Debug)]
pub struct Definition {
    pub name: &'static str,
    pub version: i32,
    pub title: &'static str,
    /// The `payload.data` member that names the workflow's business object
    /// (a code review's `change_id`), stored in `workflows.business_key`.
    pub key: Option<&'static str>,
    /// What becomes of its messages that find no workflow of its kind to apply to.
    pub unmatched: Unmatched,
    /// Where it was read from, for errors.
    pub file: &'static str,
    /// SHA-256 of the file's text, hex: the version a workflow keeps.
    pub hash: String,
    /// The file's text (kept with the workflows that use it, `workflow_definitions`).
    pub source: &'static str,
    pub start: Start,
    /// Where a workflow of another kind starts one of this kind as it enters a state.
    pub after: Vec<After>,
    pub clocks: Vec<ClockDef>,
    /// Every state in the order a workflow meets them: the start state first, then
    /// breadth first along the rules.
    pub states: Vec<StateDef>,
}

/// What becomes of a workflow's message whose correlation_id names no workflow of its
/// kind (no workflow, one of another kind, or an incident; for its start message, one
/// of another kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// Refused: `unknown_workflow`, `not_accepted_in_state`, or `workflow_exists`.
    #[default]
    Refuse,
    /// Accepted and recorded as an event the coordinator observes: for message types
    /// that were only observed before a workflow consumed them, so that agents sending
    /// them as before are not refused. Where several workflows consume a message type,
    /// it is observed only if all of them say so.
    Observe,
}

/// What starts a workflow.
#[derive(Debug)]
pub struct Start {
    pub message: &'static str,
    pub from: &'static str,
    pub state: &'static str,
    pub actions: Vec<Action>,
}

/// "When a workflow of kind W enters state R, start one of this kind in state S":
/// a follow-on, with the id [`super::ids::follow_on`] gives it, created in the same
/// batch. Only a rule's transition starts one (not a workflow's creation, nor an
/// operator's cancel or fail).
#[derive(Debug)]
pub struct After {
    pub workflow: &'static str,
    pub reaches: &'static str,
    pub state: &'static str,
    pub actions: Vec<Action>,
}

#[derive(Debug)]
pub struct StateDef {
    pub name: &'static str,
    pub terminal: bool,
    /// Clocks armed when the state is entered.
    pub arms: Vec<&'static str>,
    pub rules: Vec<Rule>,
}

/// "On message M from role R: do these, go to S."
#[derive(Debug)]
pub struct Rule {
    pub message: &'static str,
    pub from: &'static str,
    pub goto: Option<&'static str>,
    pub actions: Vec<Action>,
}

/// What a rule does besides changing the state and meeting clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start a new round (the clocks it arms are the round's).
    NewRound,
    /// Cancel this clock where it is armed (and not being met by the same message).
    Cancel(&'static str),
    /// A task to every agent of a role (their task queues).
    SendTask {
        task: &'static str,
        to: &'static str,
    },
    /// A notice to every agent of a role.
    Notify {
        message: &'static str,
        to: &'static str,
    },
    /// An escalation against the sender's role, at once.
    Escalate { severity: Severity },
}

impl Definition {
    pub fn state(&self, name: &str) -> Option<&StateDef> {
        self.states.iter().find(|s| s.name == name)
    }

    pub fn clock(&self, name: &str) -> Option<&ClockDef> {
        self.clocks.iter().find(|c| c.name == name)
    }

    /// A state's name as this definition spells it (`'static`), the operators' two
    /// included.
    pub fn state_name(&self, name: &str) -> Option<&'static str> {
        self.state(name)
            .map(|s| s.name)
            .or_else(|| [CANCELLED, FAILED].into_iter().find(|s| *s == name))
    }

    pub fn is_terminal(&self, state: &str) -> bool {
        state == CANCELLED || state == FAILED || self.state(state).is_some_and(|s| s.terminal)
    }

    /// Every message type the workflow consumes.
    pub fn inputs(&self) -> impl Iterator<Item = &'static str> + '_ {
        std::iter::once(self.start.message)
            .chain(
                self.states
                    .iter()
                    .flat_map(|s| s.rules.iter().map(|r| r.message)),
            )
            .chain(self.clocks.iter().flat_map(|c| c.met_by.iter().copied()))
    }

    /// True if the workflow consumes `message`.
    pub fn consumes(&self, message: &str) -> bool {
        self.inputs().any(|m| m == message)
    }

    /// True if `message` raises an escalation in some state.
    pub fn may_escalate(&self, message: &str) -> bool {
        self.states.iter().flat_map(|s| &s.rules).any(|r| {
            r.message == message
                && r.actions
                    .iter()
                    .any(|a| matches!(a, Action::Escalate { .. }))
        })
    }
}

/// The workflow definitions a service runs, checked together: the current one of each
/// workflow (what new workflows start with), and the earlier versions live workflows
/// still use, learnt from the database at start.
#[derive(Debug, Clone, Default)]
pub struct Definitions {
    current: Vec<&'static Definition>,
    /// What the current definitions do with each message type they consume, looked up
    /// for every message of a batch.
    routes: Arc<HashMap<&'static str, Route>>,
    /// The payload fields the current definitions keep as a workflow's business key
    /// (`key`), each once: stored in an indexed column, so bounded at admission.
    key_fields: Arc<Vec<&'static str>>,
    /// Shared by every clone (the processor's and the settings'), so that what the
    /// service learns at start is seen by all; read only for a workflow whose version
    /// is not the current one.
    earlier: Arc<RwLock<Vec<&'static Definition>>>,
    /// What the earlier versions live workflows use do with the message types they
    /// consume, so that a message only such a version knows (one a later version
    /// dropped) still reaches its workflow, and reserves its escalation. Looked at only
    /// when `has_earlier` says some version was learnt.
    earlier_routes: Arc<RwLock<HashMap<&'static str, Route>>>,
    has_earlier: Arc<std::sync::atomic::AtomicBool>,
}

impl Definitions {
    pub fn new(current: Vec<&'static Definition>) -> Definitions {
        let mut routes: HashMap<&'static str, Route> = HashMap::new();
        for d in &current {
            for m in d.inputs() {
                let r = routes.entry(m).or_default();
                if m == d.start.message {
                    r.starts = Some(d);
                }
                r.escalates |= d.may_escalate(m);
                r.observe_unmatched &= d.unmatched == Unmatched::Observe;
            }
        }
        // A follow-on's id is loaded with the messages that may start it (those whose
        // rule enters the state it follows) and with those it consumes that its parent
        // does not (sent under the parent's id, they reach the follow-on).
        for child in &current {
            for a in &child.after {
                let Some(parent) = current.iter().find(|p| p.name == a.workflow) else {
                    continue;
                };
                let entering = parent
                    .states
                    .iter()
                    .flat_map(|s| &s.rules)
                    .filter(|r| r.goto == Some(a.reaches))
                    .map(|r| r.message);
                let forwarded = child
                    .inputs()
                    .filter(|m| *m != child.start.message && !parent.consumes(m));
                for m in entering.chain(forwarded) {
                    let r = routes.entry(m).or_default();
                    if !r.follow_ons.contains(&child.name) {
                        r.follow_ons.push(child.name);
                    }
                }
            }
        }
        let mut key_fields: Vec<&'static str> = current.iter().filter_map(|d| d.key).collect();
        key_fields.sort_unstable();
        key_fields.dedup();
        Definitions {
            current,
            routes: Arc::new(routes),
            key_fields: Arc::new(key_fields),
            earlier: Arc::default(),
            earlier_routes: Arc::default(),
            has_earlier: Arc::default(),
        }
    }

    /// What the earlier versions learnt do with `message`, if any consumes it.
    fn earlier_route<T>(&self, message: &str, f: impl FnOnce(&Route) -> T) -> Option<T> {
        if !self.has_earlier.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let routes = self.earlier_routes.read().ok()?;
        routes.get(message).map(f)
    }

    /// Every payload field a current definition keeps as a business key, each once.
    pub fn key_fields(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.key_fields.iter().copied()
    }

    /// The current definition of workflow `name`.
    pub fn get(&self, name: &str) -> Option<&'static Definition> {
        self.current.iter().copied().find(|d| d.name == name)
    }

    /// The current definitions.
    pub fn iter(&self) -> impl Iterator<Item = &'static Definition> + '_ {
        self.current.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    /// The definition a workflow of kind `name` started with: the one of `hash`, or
    /// the current one when it has none (started before versions were kept) or its
    /// version was not learnt (a CLI process closing it).
    pub fn version_of(&self, name: &str, hash: Option<&str>) -> Option<&'static Definition> {
        let current = self.get(name);
        let Some(hash) = hash else { return current };
        if current.is_some_and(|d| d.hash == hash) {
            return current;
        }
        let Ok(earlier) = self.earlier.read() else {
            return current;
        };
        earlier
            .iter()
            .copied()
            .find(|d| d.hash == hash && d.name == name)
            .or(current)
    }

    /// Adds an earlier version that live workflows still use, and its routes: the
    /// messages it consumes reach its workflows (never starting one: new workflows
    /// start with the current version), and those it escalates on reserve an escalation.
    pub fn learn(&self, def: &'static Definition) {
        if let Ok(mut earlier) = self.earlier.write() {
            if earlier.iter().any(|d| d.hash == def.hash) {
                return;
            }
            earlier.push(def);
        }
        if let Ok(mut routes) = self.earlier_routes.write() {
            for m in def.inputs() {
                let r = routes.entry(m).or_default();
                r.escalates |= def.may_escalate(m);
            }
        }
        self.has_earlier
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The workflow `message` starts.
    pub fn started_by(&self, message: &str) -> Option<&'static Definition> {
        self.routes.get(message).and_then(|r| r.starts)
    }

    /// True if some workflow consumes `message`: some current definition, or an earlier
    /// version live workflows still use.
    pub fn is_input(&self, message: &str) -> bool {
        self.routes.contains_key(message) || self.earlier_route(message, |_| ()).is_some()
    }

    /// True if `message` raises an escalation in some state of some workflow, of any
    /// version in use (a batch reserves an escalation id for each such message before
    /// deciding it).
    pub fn may_escalate(&self, message: &str) -> bool {
        self.routes.get(message).is_some_and(|r| r.escalates)
            || self.earlier_route(message, |r| r.escalates) == Some(true)
    }

    /// True if every workflow that consumes `message` observes it where it finds no
    /// workflow of its kind ([`Unmatched::Observe`]). A message only an earlier version
    /// consumes is observed where it finds none of its workflows, as a message no
    /// definition consumes is.
    pub fn observes_unmatched(&self, message: &str) -> bool {
        match self.routes.get(message) {
            Some(r) => r.observe_unmatched,
            None => self.earlier_route(message, |_| ()).is_some(),
        }
    }

    /// The workflow a chain of follow-ons started from: `id` without its trailing
    /// `.<kind>` parts (`ids::follow_on`) that name a follow-on of these definitions.
    /// The trace a workflow's spans go to is its root's (`domain::trace`).
    pub fn root_of<'i>(&self, id: &'i str) -> &'i str {
        let mut root = id;
        while let Some((parent, kind)) = root.rsplit_once('.') {
            if !self.routes.values().any(|r| r.follow_ons.contains(&kind)) {
                break;
            }
            root = parent;
        }
        root
    }

    /// The follow-ons (by name) whose workflows a batch loads for `message`: those it
    /// may start, and those it reaches when sent under the parent's id.
    pub fn follow_ons_of(&self, message: &str) -> &[&'static str] {
        self.routes
            .get(message)
            .map_or(&[], |r| r.follow_ons.as_slice())
    }

    /// The follow-ons a workflow of kind `parent` starts as it enters `state`, each
    /// with the entry that says how.
    pub fn following<'a>(
        &'a self,
        parent: &'a str,
        state: &'a str,
    ) -> impl Iterator<Item = (&'static Definition, &'static After)> + 'a {
        self.iter().flat_map(move |d| {
            d.after
                .iter()
                .filter(move |a| a.workflow == parent && a.reaches == state)
                .map(move |a| (d, a))
        })
    }

    /// Every clock of every workflow.
    pub fn clocks(&self) -> impl Iterator<Item = &'static ClockDef> + '_ {
        self.iter().flat_map(|d| d.clocks.iter())
    }

    /// Every state of every workflow, the operators' two included, each once.
    pub fn state_names(&self) -> BTreeSet<&'static str> {
        self.iter()
            .flat_map(|d| d.states.iter().map(|s| s.name))
            .chain([CANCELLED, FAILED])
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Route {
    starts: Option<&'static Definition>,
    escalates: bool,
    observe_unmatched: bool,
    follow_ons: Vec<&'static str>,
}

impl Default for Route {
    fn default() -> Route {
        Route {
            starts: None,
            escalates: false,
            observe_unmatched: true,
            follow_ons: Vec::new(),
        }
    }
}

/// A definition that cannot be used, said so that a person can fix it: the file, the
/// workflow, where in it, the key, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    pub file: String,
    pub workflow: String,
    /// `state testing, rule 2 (bug_discovered)`, `clock testing_start`, `start`, …
    pub at: String,
    pub key: String,
    pub problem: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: workflow {}", self.file, self.workflow)?;
        if !self.at.is_empty() {
            write!(f, ", {}", self.at)?;
        }
        if !self.key.is_empty() {
            write!(f, ", key `{}`", self.key)?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for DefinitionError {}

// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    workflow: Header,
    start: StartSpec,
    #[serde(default)]
    after: Vec<AfterSpec>,
    #[serde(default)]
    clocks: BTreeMap<String, ClockSpec>,
    #[serde(default)]
    states: BTreeMap<String, StateSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    version: i32,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    unmatched: Unmatched,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartSpec {
    message: String,
    from: String,
    state: String,
    #[serde(default)]
    task: Option<TaskSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AfterSpec {
    workflow: String,
    reaches: String,
    state: String,
    #[serde(default)]
    task: Option<TaskSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskSpec {
    name: String,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifySpec {
    message: String,
    to: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockSpec {
    #[serde(default)]
    owner: Option<String>,
    #[serde(default, with = "humantime_serde")]
    duration: Option<Duration>,
    #[serde(default)]
    severity: Option<Severity>,
    #[serde(default)]
    met_by: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateSpec {
    #[serde(default)]
    terminal: bool,
    /// The role the rules hear from, unless a rule says otherwise.
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    arms: Vec<String>,
    #[serde(default)]
    on: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    message: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    goto: Option<String>,
    #[serde(default)]
    new_round: bool,
    #[serde(default)]
    cancel: Vec<String>,
    #[serde(default)]
    task: Option<TaskSpec>,
    #[serde(default)]
    notify: Option<NotifySpec>,
    #[serde(default)]
    escalate: Option<Severity>,
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn leak_all(v: Vec<String>) -> &'static [&'static str] {
    Box::leak(
        v.into_iter()
            .map(leak)
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

/// Reads and checks one definition file's text; `file` names it in errors.
pub fn parse(
    file: &str,
    text: &str,
    catalog: &Catalog,
) -> Result<&'static Definition, Vec<DefinitionError>> {
    let stem = file
        .rsplit('/')
        .next()
        .unwrap_or(file)
        .trim_end_matches(".toml")
        .to_string();
    let raw: File = toml::from_str(text).map_err(|e| {
        let before = e.span().and_then(|span| text.get(..span.start));
        let at = before.map_or_else(String::new, |b| {
            let line = b.matches('\n').count() + 1;
            let column = b.len() - b.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}")
        });
        vec![DefinitionError {
            file: file.to_string(),
            workflow: stem.clone(),
            at,
            key: String::new(),
            problem: e.message().trim_end().to_string(),
        }]
    })?;
    let mut errors = Errors {
        file: file.to_string(),
        workflow: raw.workflow.name.clone(),
        list: Vec::new(),
    };
    check(&raw, catalog, &mut errors);
    if !errors.list.is_empty() {
        return Err(errors.list);
    }
    Ok(Box::leak(Box::new(compile(file, text, raw))))
}

struct Errors {
    file: String,
    workflow: String,
    list: Vec<DefinitionError>,
}

impl Errors {
    fn push(&mut self, at: impl Into<String>, key: &str, problem: impl Into<String>) {
        self.list.push(DefinitionError {
            file: self.file.clone(),
            workflow: self.workflow.clone(),
            at: at.into(),
            key: key.to_string(),
            problem: problem.into(),
        });
    }

    /// `role` is a role of the catalog.
    fn role(&mut self, catalog: &Catalog, at: &str, key: &str, role: &str) {
        if !catalog.is_role(role) {
            let known: Vec<&str> = catalog.roles().map(|(r, _)| r).collect();
            self.push(
                at,
                key,
                format!("unknown role {role:?} (roles: {})", known.join(", ")),
            );
        }
    }

    /// `role` may publish `message` by the catalog.
    fn publishes(&mut self, catalog: &Catalog, at: &str, key: &str, role: &str, message: &str) {
        match catalog.may_publish(role, message) {
            Permission::Allowed | Permission::UnknownRole => {}
            Permission::UnknownMessageType => self.push(
                at,
                key,
                format!("{message:?} is no message type any role publishes (config [roles.*].publishes)"),
            ),
            Permission::NotAllowed => self.push(
                at,
                key,
                format!("{role} may not publish {message:?} (config [roles.{role}].publishes)"),
            ),
        }
    }
}

fn check(raw: &File, catalog: &Catalog, e: &mut Errors) {
    let states = &raw.states;
    let known_state = |s: &str| states.contains_key(s) || s == CANCELLED || s == FAILED;
    let state_list = || {
        states
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };

    if raw.workflow.name.is_empty()
        || !raw
            .workflow
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        e.push(
            "[workflow]",
            "name",
            "a workflow's name is lowercase letters, digits and _",
        );
    }
    if raw.workflow.version < 1 {
        e.push(
            "[workflow]",
            "version",
            "a version is a whole number from 1",
        );
    }
    let s = &raw.start;
    e.role(catalog, "[start]", "from", &s.from);
    e.publishes(catalog, "[start]", "message", &s.from, &s.message);
    if !states.contains_key(&s.state) {
        e.push(
            "[start]",
            "state",
            format!("no state named {:?} (states: {})", s.state, state_list()),
        );
    }
    if let Some(t) = &s.task {
        e.role(catalog, "[start]", "task.to", &t.to);
    }
    for (i, a) in raw.after.iter().enumerate() {
        let at = format!("[[after]] {} ({})", i + 1, a.workflow);
        match states.get(&a.state) {
            None => e.push(
                &at,
                "state",
                format!("no state named {:?} (states: {})", a.state, state_list()),
            ),
            Some(st) if st.terminal => e.push(
                &at,
                "state",
                "a follow-on starts in a state with a way out, not a terminal one",
            ),
            Some(_) => {}
        }
        if let Some(t) = &a.task {
            e.role(catalog, &at, "task.to", &t.to);
        }
    }
    for name in [CANCELLED, FAILED] {
        if states.contains_key(name) {
            e.push(format!("state {name}"), "", format!("{name} is every workflow's own (an operator's workflow cancel/fail): do not define it"));
        }
    }

    for (name, c) in &raw.clocks {
        let at = format!("clock {name}");
        match &c.owner {
            None => e.push(&at, "owner", "a clock needs the role that must meet it"),
            Some(o) => {
                e.role(catalog, &at, "owner", o);
                for m in &c.met_by {
                    e.publishes(catalog, &at, "met_by", o, m);
                }
            }
        }
        match c.duration {
            None => e.push(&at, "duration", "a clock needs a duration (e.g. \"4h\")"),
            Some(d) if d.is_zero() => {
                e.push(&at, "duration", "a clock of zero breaches as it is armed")
            }
            Some(_) => {}
        }
        if c.met_by.is_empty() {
            e.push(
                &at,
                "met_by",
                "nothing meets this clock: name the message types that do",
            );
        }
    }

    for (name, st) in states {
        let at_state = format!("state {name}");
        if st.terminal {
            if !st.on.is_empty() || !st.arms.is_empty() {
                e.push(
                    &at_state,
                    "terminal",
                    "a terminal state has no rules and arms no clocks",
                );
            }
            continue;
        }
        if let Some(from) = &st.from {
            e.role(catalog, &at_state, "from", from);
        }
        for clock in &st.arms {
            if !raw.clocks.contains_key(clock) {
                e.push(&at_state, "arms", format!("no clock named {clock:?}"));
            }
        }
        if !st
            .on
            .iter()
            .any(|r| r.goto.as_ref().is_some_and(|g| g != name))
        {
            e.push(
                &at_state,
                "on",
                "a state that is not terminal needs a rule that leaves it (goto)",
            );
        }
        let mut seen = BTreeSet::new();
        for (i, r) in st.on.iter().enumerate() {
            let at = format!("state {name}, rule {} ({})", i + 1, r.message);
            let Some(from) = r.from.as_ref().or(st.from.as_ref()) else {
                e.push(
                    &at,
                    "from",
                    "which role sends it? (set `from` on the rule or the state)",
                );
                continue;
            };
            e.role(catalog, &at, "from", from);
            e.publishes(catalog, &at, "message", from, &r.message);
            if !seen.insert((from.as_str(), r.message.as_str())) {
                e.push(
                    &at,
                    "message",
                    format!("a second rule for {} from {from} in this state", r.message),
                );
            }
            if let Some(g) = &r.goto {
                if !known_state(g) {
                    e.push(
                        &at,
                        "goto",
                        format!("no state named {g:?} (states: {})", state_list()),
                    );
                }
            }
            for c in &r.cancel {
                if !raw.clocks.contains_key(c) {
                    e.push(&at, "cancel", format!("no clock named {c:?}"));
                }
            }
            if let Some(t) = &r.task {
                e.role(catalog, &at, "task.to", &t.to);
            }
            if let Some(n) = &r.notify {
                for to in &n.to {
                    e.role(catalog, &at, "notify.to", to);
                }
            }
        }
    }

    // Reachable from the start state (or a follow-on's) by the rules' gotos.
    let entries =
        std::iter::once(s.state.as_str()).chain(raw.after.iter().map(|a| a.state.as_str()));
    let mut reached: BTreeSet<&str> = entries.clone().collect();
    let mut frontier: Vec<&str> = entries.collect();
    while let Some(at) = frontier.pop() {
        let Some(st) = states.get(at) else { continue };
        for g in st.on.iter().filter_map(|r| r.goto.as_deref()) {
            if reached.insert(g) {
                frontier.push(g);
            }
        }
    }
    for name in states.keys().filter(|n| !reached.contains(n.as_str())) {
        e.push(
            format!("state {name}"),
            "",
            format!(
                "unreachable: no rule leads here from the start state {}{}",
                s.state,
                if raw.after.is_empty() {
                    ""
                } else {
                    " or a follow-on's ([[after]])"
                }
            ),
        );
    }
}

fn compile(file: &str, text: &str, raw: File) -> Definition {
    let hash = hex::encode(Sha256::digest(text.as_bytes()));
    let task = |t: TaskSpec| Action::SendTask {
        task: leak(t.name),
        to: leak(t.to),
    };
    let mut start_actions = Vec::new();
    start_actions.extend(raw.start.task.map(task));
    let start_state = raw.start.state.clone();
    let after: Vec<After> = raw
        .after
        .into_iter()
        .map(|a| After {
            workflow: leak(a.workflow),
            reaches: leak(a.reaches),
            state: leak(a.state),
            actions: a.task.map(task).into_iter().collect(),
        })
        .collect();
    let clocks = raw
        .clocks
        .into_iter()
        .map(|(name, c)| ClockDef {
            name: leak(name),
            owner: leak(c.owner.unwrap_or_default()),
            default: c.duration.unwrap_or_default(),
            severity: c.severity.unwrap_or(Severity::High),
            met_by: leak_all(c.met_by),
        })
        .collect();
    let mut states: Vec<StateDef> = raw
        .states
        .into_iter()
        .map(|(name, st)| {
            let default_from = st.from;
            StateDef {
                name: leak(name),
                terminal: st.terminal,
                arms: st.arms.into_iter().map(leak).collect(),
                rules: st
                    .on
                    .into_iter()
                    .map(|r| {
                        let mut actions = Vec::new();
                        if r.new_round {
                            actions.push(Action::NewRound);
                        }
                        actions.extend(r.cancel.into_iter().map(|c| Action::Cancel(leak(c))));
                        actions.extend(r.task.map(task));
                        if let Some(n) = r.notify {
                            let message = leak(n.message);
                            actions.extend(n.to.into_iter().map(|to| Action::Notify {
                                message,
                                to: leak(to),
                            }));
                        }
                        actions.extend(r.escalate.map(|severity| Action::Escalate { severity }));
                        Rule {
                            message: leak(r.message),
                            from: leak(r.from.or_else(|| default_from.clone()).unwrap_or_default()),
                            goto: r.goto.map(leak),
                            actions,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    // In the order a workflow meets them: breadth first from the start, by the rules'
    // order (every state is reachable: `check` refused the rest).
    let mut order: Vec<String> = vec![start_state];
    for a in &after {
        if !order.iter().any(|o| o == a.state) {
            order.push(a.state.to_string());
        }
    }
    let mut i = 0;
    while let Some(name) = order.get(i).cloned() {
        let next = states
            .iter()
            .find(|s| s.name == name)
            .into_iter()
            .flat_map(|s| s.rules.iter().filter_map(|r| r.goto));
        for g in next {
            if !order.iter().any(|o| o == g) {
                order.push(g.to_string());
            }
        }
        i += 1;
    }
    states.sort_by_key(|s| order.iter().position(|o| o == s.name).unwrap_or(usize::MAX));
    Definition {
        name: leak(raw.workflow.name.clone()),
        version: raw.workflow.version,
        title: leak(raw.workflow.title.unwrap_or(raw.workflow.name)),
        key: raw.workflow.key.map(leak),
        unmatched: raw.workflow.unmatched,
        file: leak(file.to_string()),
        hash,
        source: leak(text.to_string()),
        start: Start {
            message: leak(raw.start.message),
            from: leak(raw.start.from),
            state: states.first().map_or("", |s| s.name),
            actions: start_actions,
        },
        after,
        clocks,
        states,
    }
}

/// Checks what only shows across definitions: two with one name, two claiming one start
/// message, a start message another workflow consumes (it would always start a new
/// workflow, never advance the other), one clock name, or a follow-on of a workflow
/// or state that is not there.
pub fn check_together(defs: &[&Definition]) -> Vec<DefinitionError> {
    let mut errors = Vec::new();
    let mut starts: HashMap<&str, &Definition> = HashMap::new();
    let mut clocks: HashMap<&str, &Definition> = HashMap::new();
    let mut names: HashMap<&str, &Definition> = HashMap::new();
    for d in defs {
        let err = |at: String, key: &str, problem: String| DefinitionError {
            file: d.file.to_string(),
            workflow: d.name.to_string(),
            at,
            key: key.to_string(),
            problem,
        };
        if let Some(other) = names.insert(d.name, d) {
            errors.push(err(
                "[workflow]".into(),
                "name",
                format!("{} also defines workflow {}", other.file, d.name),
            ));
        }
        if let Some(other) = starts.insert(d.start.message, d) {
            errors.push(err(
                "[start]".into(),
                "message",
                format!(
                    "{} is already the start of workflow {} ({})",
                    d.start.message, other.name, other.file
                ),
            ));
        }
        for other in defs.iter().filter(|o| o.name != d.name) {
            // Two with one start message are said once, above.
            let consumed = other
                .inputs()
                .filter(|m| *m != other.start.message)
                .any(|m| m == d.start.message);
            if consumed {
                errors.push(err(
                    "[start]".into(),
                    "message",
                    format!(
                        "{} is consumed by workflow {} ({}): as a start message it would start a {} every time instead",
                        d.start.message, other.name, other.file, d.name
                    ),
                ));
            }
        }
        for (i, a) in d.after.iter().enumerate() {
            let at = format!("[[after]] {} ({})", i + 1, a.workflow);
            match defs.iter().find(|p| p.name == a.workflow) {
                None => errors.push(err(
                    at,
                    "workflow",
                    format!(
                        "no workflow named {:?} (workflows: {})",
                        a.workflow,
                        defs.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                    ),
                )),
                Some(p)
                    if !p
                        .states
                        .iter()
                        .flat_map(|s| &s.rules)
                        .any(|r| r.goto == Some(a.reaches)) =>
                {
                    errors.push(err(
                        at,
                        "reaches",
                        format!(
                            "no rule of workflow {} leads to a state named {:?} (its states: {})",
                            p.name,
                            a.reaches,
                            p.states
                                .iter()
                                .map(|s| s.name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        for c in &d.clocks {
            if let Some(other) = clocks.insert(c.name, d) {
                errors.push(err(
                    format!("clock {}", c.name),
                    "",
                    format!("workflow {} ({}) has a clock of the same name: clock names are unique across workflows, as [sla] overrides them by name", other.name, other.file),
                ));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn catalog() -> Catalog {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config"));
        crate::settings::Settings::load_from(&dir, None)
            .expect("default settings")
            .catalog()
    }

    #[test]
    fn a_start_message_another_workflow_consumes_is_refused() {
        let feature = include_str!("../../../../config/workflows/feature_delivery.toml");
        let feature = parse("feature_delivery.toml", feature, &catalog()).expect("valid");
        let acks = parse(
            "workflows/code_review.toml",
            &REVIEW.replace("code_review_required", "effort_estimated"),
            &catalog(),
        )
        .expect("valid on its own");
        let errors: Vec<String> = check_together(&[feature, acks])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            vec!["workflows/code_review.toml: workflow code_review, [start], key `message`: effort_estimated is consumed by workflow feature_delivery (feature_delivery.toml): as a start message it would start a code_review every time instead"]
        );
    }

    /// A small valid definition the tests edit.
    const REVIEW: &str = include_str!("../../tests/fixtures/code_review.toml");

    /// The errors of `REVIEW` with `from` replaced by `to`, as a person reads them.
    fn errors_with(from: &str, to: &str) -> Vec<String> {
        assert!(REVIEW.contains(from), "the test's edit applies: {from}");
        match parse(
            "workflows/code_review.toml",
            &REVIEW.replace(from, to),
            &catalog(),
        ) {
            Ok(_) => vec![],
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    fn one_error(from: &str, to: &str) -> String {
        let errors = errors_with(from, to);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors.into_iter().next().unwrap_or_default()
    }

    #[test]
    fn a_valid_definition_compiles_with_its_start_state_first() {
        let d = parse("workflows/code_review.toml", REVIEW, &catalog()).expect("valid");
        assert_eq!(
            (d.name, d.version, d.start.state),
            ("code_review", 1, "reviewing")
        );
        assert_eq!(d.states[0].name, "reviewing");
        assert!(d.is_terminal("done") && d.is_terminal(CANCELLED) && !d.is_terminal("reviewing"));
        assert_eq!(
            d.clock("review").map(|c| c.default),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(d.hash.len(), 64);
    }

    #[test]
    fn each_error_names_the_file_the_workflow_the_place_and_the_key() {
        assert_eq!(
            one_error(r#"to = "qa-director""#, r#"to = "legal""#),
            "workflows/code_review.toml: workflow code_review, [start], key `task.to`: unknown role \"legal\" (roles: creative-director, devops-manager, engineering-director, marketing-director, product-director, qa-director)"
        );
        assert_eq!(
            one_error(r#"message = "quality_gate_status""#, r#"message = "deployment_started""#),
            "workflows/code_review.toml: workflow code_review, state reviewing, rule 1 (deployment_started), key `message`: qa-director may not publish \"deployment_started\" (config [roles.qa-director].publishes)"
        );
        let missing = errors_with(r#"goto = "done""#, r#"goto = "finished""#);
        assert!(
            missing[0].ends_with("state reviewing, rule 1 (quality_gate_status), key `goto`: no state named \"finished\" (states: done, reviewing)"),
            "{missing:#?}"
        );
        let no_way_out = errors_with(r#", goto = "done""#, "");
        assert!(no_way_out.iter().any(|e| e.contains("state reviewing, key `on`: a state that is not terminal needs a rule that leaves it")), "{no_way_out:#?}");
        assert!(
            no_way_out
                .iter()
                .any(|e| e.contains("state done: unreachable")),
            "{no_way_out:#?}"
        );
        let unreachable = one_error(
            "[states.done]",
            "[states.limbo]\nfrom = \"qa-director\"\non = [{ message = \"testing_started\", goto = \"done\" }]\n\n[states.done]",
        );
        assert!(
            unreachable.ends_with(
                "state limbo: unreachable: no rule leads here from the start state reviewing"
            ),
            "{unreachable}"
        );
        assert!(one_error("duration = \"2h\"\n", "")
            .contains("clock review, key `duration`: a clock needs a duration"));
        assert!(one_error("owner = \"qa-director\"\n", "")
            .contains("clock review, key `owner`: a clock needs the role that must meet it"));
        let typo = one_error("met_by =", "meet_by =");
        assert!(
            typo.starts_with(
                "workflows/code_review.toml: workflow code_review, line 17, column 1: unknown field `meet_by`, expected one of"
            ),
            "{typo}"
        );
    }

    /// `REVIEW` as a follow-on of feature delivery, with `entry` as its `[[after]]`.
    fn review_after(entry: &str) -> Result<&'static Definition, Vec<DefinitionError>> {
        let text = REVIEW.replace("[clocks.review]", &format!("{entry}\n\n[clocks.review]"));
        parse("workflows/code_review.toml", &text, &catalog())
    }

    #[test]
    fn a_follow_on_names_a_state_of_its_own_and_a_state_its_parent_reaches() {
        let feature = include_str!("../../../../config/workflows/feature_delivery.toml");
        let feature = parse("feature_delivery.toml", feature, &catalog()).expect("valid");
        let entry = |workflow: &str, reaches: &str, state: &str| {
            format!("[[after]]\nworkflow = \"{workflow}\"\nreaches = \"{reaches}\"\nstate = \"{state}\"")
        };
        let ok = review_after(&entry("feature_delivery", "completed", "reviewing")).expect("valid");
        assert_eq!(ok.after[0].state, "reviewing");
        assert!(check_together(&[feature, ok]).is_empty());

        let own: Vec<String> = review_after(&entry("feature_delivery", "completed", "done"))
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(own, ["workflows/code_review.toml: workflow code_review, [[after]] 1 (feature_delivery), key `state`: a follow-on starts in a state with a way out, not a terminal one"]);

        let together = |e: String| -> Vec<String> {
            let d = review_after(&e).expect("valid on its own");
            check_together(&[feature, d])
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            together(entry("feature_delivry", "completed", "reviewing")),
            ["workflows/code_review.toml: workflow code_review, [[after]] 1 (feature_delivry), key `workflow`: no workflow named \"feature_delivry\" (workflows: feature_delivery, code_review)"]
        );
        let wrong_state = together(entry("feature_delivery", "deployed", "reviewing"));
        assert_eq!(wrong_state.len(), 1, "{wrong_state:?}");
        assert!(wrong_state[0].contains("[[after]] 1 (feature_delivery), key `reaches`: no rule of workflow feature_delivery leads to a state named \"deployed\" (its states: requirements_handoff,"), "{wrong_state:?}");
    }

    #[test]
    fn a_state_only_a_follow_on_enters_is_reachable() {
        let text = REVIEW.replace(
            "[states.done]",
            "[states.waiting]\nfrom = \"qa-director\"\non = [{ message = \"testing_started\", goto = \"done\" }]\n\n[states.done]",
        );
        let unreachable = parse("workflows/code_review.toml", &text, &catalog())
            .err()
            .unwrap_or_default();
        assert_eq!(unreachable.len(), 1, "without [[after]]: {unreachable:?}");
        let entry = "[[after]]\nworkflow = \"feature_delivery\"\nreaches = \"completed\"\nstate = \"waiting\"";
        let text = text.replace("[clocks.review]", &format!("{entry}\n\n[clocks.review]"));
        let d = parse("workflows/code_review.toml", &text, &catalog())
            .expect("reachable from [[after]]");
        assert_eq!(
            d.states.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["reviewing", "waiting", "done"]
        );
    }

    #[test]
    fn a_workflow_finds_the_version_it_started_with_once_learnt() {
        let v1 = parse("workflows/code_review.toml", REVIEW, &catalog()).expect("valid");
        let v2 = parse(
            "workflows/code_review.toml",
            &REVIEW.replace("version = 1", "version = 2"),
            &catalog(),
        )
        .expect("valid");
        assert_ne!(v1.hash, v2.hash);
        let defs = Definitions::new(vec![v2]);
        let shared = defs.clone();
        let version = |hash: Option<&str>| defs.version_of("code_review", hash).map(|d| d.version);
        assert_eq!(version(None), Some(2), "no version kept: the current one");
        assert_eq!(version(Some(&v2.hash)), Some(2));
        assert_eq!(
            version(Some(&v1.hash)),
            Some(2),
            "not learnt yet: the current one"
        );
        shared.learn(v1);
        assert_eq!(version(Some(&v1.hash)), Some(1), "learnt through a clone");
        assert_eq!(
            defs.version_of("other", Some(&v1.hash)).map(|d| d.name),
            None
        );
        assert_eq!(defs.len(), 1, "an earlier version is not a current one");
    }

    #[test]
    fn two_workflows_may_not_claim_one_start_message_or_one_clock() {
        let a = parse("workflows/code_review.toml", REVIEW, &catalog()).expect("valid");
        let b = parse(
            "workflows/second_review.toml",
            &REVIEW.replace("name = \"code_review\"", "name = \"second_review\""),
            &catalog(),
        )
        .expect("valid");
        let errors: Vec<String> = check_together(&[a, b])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!(errors[0], "workflows/second_review.toml: workflow second_review, [start], key `message`: code_review_required is already the start of workflow code_review (workflows/code_review.toml)");
        assert!(errors[1].starts_with("workflows/second_review.toml: workflow second_review, clock review: workflow code_review"));
    }
}
