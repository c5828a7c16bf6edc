//! Rate limits per sending agent (docs/architecture.md, "Rate limits"): token buckets
//! from `governor`, one per agent (its role's rate), one per agent for emergency
//! messages, and one across every limited agent. And a partition's [`Backlog`] of the
//! deliveries they held back, which says which may go now without breaking a
//! workflow's order. No I/O: the inbox consumer stores and applies what this decides.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::db::deferred::Held;
use crate::engine::{Admission, Admitted};
use crate::settings::RateLimitSettings;

type Keyed<C> =
    RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// What a message is charged to: its admitted sender (engine::admission: the agent the
/// broker vouched for where sender authentication is on), that sender's role, and the
/// message type (emergency types draw on their own allowance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender<'a> {
    pub agent_id: &'a str,
    pub role: &'a str,
    pub message_type: &'a str,
}

impl<'a> Sender<'a> {
    /// `None` for what the limits do not apply to: an operator's replay (which
    /// admission recognised by the broker user that published it, not by a header).
    pub fn of(a: &'a Admitted) -> Option<Sender<'a>> {
        if a.replay_of.is_some() {
            return None;
        }
        Some(Sender {
            agent_id: a.sender.agent_id(),
            role: a.sender.role(),
            message_type: &a.envelope.header.message_type,
        })
    }
}

/// Whether a message may be applied now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Now,
    /// Over a limit: hold it back.
    Hold {
        /// When the allowance it ran out of has room again.
        wait: Duration,
        /// That allowance, messages a minute.
        limit_per_minute: u32,
    },
}

/// Every agent's buckets; shared by the partitions.
pub struct RateLimits<C: Clock = DefaultClock> {
    settings: RateLimitSettings,
    clock: C,
    /// By messages a minute (the default rate and each role's own).
    agents: HashMap<u32, Keyed<C>>,
    emergency: Keyed<C>,
    all: Option<Direct<C>>,
    /// When each agent was last sent a `rate_limited` notice.
    noticed: Mutex<HashMap<String, C::Instant>>,
}

impl RateLimits<DefaultClock> {
    pub fn new(settings: &RateLimitSettings) -> RateLimits {
        RateLimits::with_clock(settings, DefaultClock::default())
    }
}

fn quota(per_minute: u32, burst: u32) -> Quota {
    let n = |v: u32| NonZeroU32::new(v.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(n(per_minute)).allow_burst(n(burst))
}

impl<C: Clock + Clone> RateLimits<C> {
    pub fn with_clock(settings: &RateLimitSettings, clock: C) -> RateLimits<C> {
        let rates = std::iter::once(settings.per_minute)
            .chain(settings.roles.values().copied())
            .filter(|n| *n > 0);
        let agents = rates
            .map(|n| {
                let q = quota(n, settings.burst_for(n));
                (n, RateLimiter::dashmap_with_clock(q, clock.clone()))
            })
            .collect();
        let emergency = RateLimiter::dashmap_with_clock(
            quota(settings.emergency_burst, settings.emergency_burst),
            clock.clone(),
        );
        let all = (settings.all_per_minute > 0).then(|| {
            RateLimiter::direct_with_clock(
                quota(settings.all_per_minute, settings.all_per_minute),
                clock.clone(),
            )
        });
        RateLimits {
            settings: settings.clone(),
            clock,
            agents,
            emergency,
            all,
            noticed: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// Takes a token for `sender`'s message, or says how long until there is one (no
    /// token is taken then).
    pub fn admit(&self, sender: Sender<'_>) -> Verdict {
        let Some(per_minute) = self.settings.per_minute_for(sender.role) else {
            return Verdict::Now;
        };
        let emergency = self
            .settings
            .emergency_types
            .iter()
            .any(|t| t == sender.message_type);
        let now = self.clock.now();
        let key = sender.agent_id.to_string();
        if emergency {
            return match self.emergency.check_key(&key) {
                Ok(()) => Verdict::Now,
                Err(n) => Verdict::Hold {
                    wait: n.wait_time_from(now),
                    limit_per_minute: self.settings.emergency_burst,
                },
            };
        }
        let Some(own) = self.agents.get(&per_minute) else {
            return Verdict::Now;
        };
        if let Err(n) = own.check_key(&key) {
            return Verdict::Hold {
                wait: n.wait_time_from(now),
                limit_per_minute: per_minute,
            };
        }
        match self.all.as_ref().map(Direct::check) {
            Some(Err(n)) => Verdict::Hold {
                wait: n.wait_time_from(now),
                limit_per_minute: self.settings.all_per_minute,
            },
            _ => Verdict::Now,
        }
    }

    /// True if `agent_id` is due a `rate_limited` notice: at most one a minute.
    pub fn notice_due(&self, agent_id: &str) -> bool {
        let now = self.clock.now();
        let Ok(mut noticed) = self.noticed.lock() else {
            return true;
        };
        match noticed.get(agent_id) {
            Some(at) if now.duration_since(*at) < Nanos::from(NOTICE_WINDOW) => false,
            _ => {
                noticed.insert(agent_id.to_string(), now);
                true
            }
        }
    }

    /// Drops the buckets of agents that have been quiet long enough to have full ones,
    /// and notices older than their window.
    pub fn forget_idle(&self) {
        for l in self.agents.values() {
            l.retain_recent();
        }
        self.emergency.retain_recent();
        let now = self.clock.now();
        if let Ok(mut noticed) = self.noticed.lock() {
            noticed.retain(|_, at| now.duration_since(*at) < Nanos::from(NOTICE_WINDOW));
        }
    }
}

/// An agent over its limit hears of it at most this often.
pub const NOTICE_WINDOW: Duration = Duration::from_secs(60);

/// What a partition holds back, in the order it is to be applied, and the workflows
/// those messages belong to (a later message of one of them waits behind them).
#[derive(Debug, Default)]
pub struct Backlog {
    held: Vec<Held>,
    workflows: HashMap<String, usize>,
}

/// Why a delivery is held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holding {
    /// Its sender is over this limit (messages a minute), with room again after this
    /// long; `None` when it only waits behind held messages of its workflow.
    pub over: Option<(u32, Duration)>,
}

/// What [`Backlog::due`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Held rows to apply now, in order.
    pub ids: Vec<i64>,
    /// When to look again for the rest (none left: `None`).
    pub again_in: Option<Duration>,
}

impl Backlog {
    pub fn new(held: Vec<Held>) -> Backlog {
        let mut b = Backlog::default();
        b.add(held);
        b
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether a message of `workflow` must wait behind held ones.
    pub fn holds(&self, workflow: Option<&str>) -> bool {
        workflow.is_some_and(|w| self.workflows.contains_key(w))
    }

    pub fn add(&mut self, held: Vec<Held>) {
        for h in held {
            if let Some(w) = &h.correlation_id {
                *self.workflows.entry(w.clone()).or_default() += 1;
            }
            self.held.push(h);
        }
        self.held.sort_by_key(|h| h.id);
    }

    /// The held rows that may be applied now, at most `max`, in order: those whose
    /// sender has room again (a token is taken for each) and which no earlier held row
    /// of the same workflow precedes.
    pub fn due<C: Clock + Clone>(&self, limits: &RateLimits<C>, max: usize) -> Due {
        let mut due = Due::default();
        let mut blocked: HashSet<&str> = HashSet::new();
        for h in &self.held {
            if due.ids.len() >= max {
                due.again_in = Some(Duration::ZERO);
                break;
            }
            let workflow = h.correlation_id.as_deref();
            if workflow.is_some_and(|w| blocked.contains(w)) {
                continue;
            }
            let sender = Sender {
                agent_id: &h.sender,
                role: &h.sender_role,
                message_type: &h.message_type,
            };
            match limits.admit(sender) {
                Verdict::Now => due.ids.push(h.id),
                Verdict::Hold { wait, .. } => {
                    blocked.extend(workflow);
                    due.again_in = Some(due.again_in.map_or(wait, |a| a.min(wait)));
                }
            }
        }
        due
    }

    /// For each delivery of a batch, in order: `None` to apply it now, or why it is
    /// held back. An admitted delivery is held when its workflow has held messages
    /// (including ones held earlier in this batch), or when its sender is over a limit
    /// (a token is taken for each one applied). A refused delivery is applied at once
    /// (as its refusal) and charged to nobody; an operator's replay is not limited.
    pub fn plan<C: Clock + Clone>(
        &self,
        limits: &RateLimits<C>,
        admitted: &[Admission],
    ) -> Vec<Option<Holding>> {
        if !limits.enabled() && self.is_empty() {
            return admitted.iter().map(|_| None).collect();
        }
        let mut held_now: HashSet<&str> = HashSet::new();
        admitted
            .iter()
            .map(|a| {
                let a = a.admitted()?;
                let sender = Sender::of(a)?;
                let workflow = a.envelope.header.correlation_id.as_str();
                let behind = self.holds(Some(workflow)) || held_now.contains(workflow);
                let over = if behind {
                    None
                } else {
                    match limits.admit(sender) {
                        Verdict::Now => return None,
                        Verdict::Hold {
                            wait,
                            limit_per_minute,
                        } => Some((limit_per_minute, wait)),
                    }
                };
                held_now.insert(workflow);
                Some(Holding { over })
            })
            .collect()
    }

    /// Forgets rows a committed batch applied.
    pub fn forget(&mut self, ids: &[i64]) {
        let gone: HashSet<i64> = ids.iter().copied().collect();
        let workflows = &mut self.workflows;
        self.held.retain(|h| {
            if !gone.contains(&h.id) {
                return true;
            }
            if let Some(w) = &h.correlation_id {
                if let Some(n) = workflows.get_mut(w) {
                    *n -= 1;
                    if *n == 0 {
                        workflows.remove(w);
                    }
                }
            }
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn settings(per_minute: u32, burst: u32) -> RateLimitSettings {
        RateLimitSettings {
            enabled: true,
            per_minute,
            burst: Some(burst),
            roles: [("qa-director".to_string(), 0)].into_iter().collect(),
            emergency_types: vec!["emergency_alert".into()],
            emergency_burst: 5,
            all_per_minute: 0,
        }
    }

    fn from<'a>(agent_id: &'a str, message_type: &'a str) -> Sender<'a> {
        Sender {
            agent_id,
            role: "product-director",
            message_type,
        }
    }

    fn held(id: i64, sender: &str, workflow: &str) -> Held {
        Held {
            id,
            sender: sender.into(),
            sender_role: "product-director".into(),
            message_type: "epic_defined".into(),
            correlation_id: Some(workflow.into()),
        }
    }

    #[test]
    fn an_agent_over_its_burst_waits_for_its_bucket_and_others_do_not() {
        let clock = FakeRelativeClock::default();
        let limits = RateLimits::with_clock(&settings(60, 2), clock.clone());
        assert_eq!(limits.admit(from("a", "epic_defined")), Verdict::Now);
        assert_eq!(limits.admit(from("a", "epic_defined")), Verdict::Now);
        let Verdict::Hold {
            wait,
            limit_per_minute,
        } = limits.admit(from("a", "epic_defined"))
        else {
            panic!("the third message is over a burst of two");
        };
        assert_eq!(limit_per_minute, 60);
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // Another agent of the same role has its own bucket.
        assert_eq!(limits.admit(from("b", "epic_defined")), Verdict::Now);
        clock.advance(Duration::from_secs(1));
        assert_eq!(limits.admit(from("a", "epic_defined")), Verdict::Now);
    }

    #[test]
    fn emergencies_draw_on_their_own_allowance_and_unlimited_roles_are_not_held() {
        let limits = RateLimits::with_clock(&settings(60, 1), FakeRelativeClock::default());
        assert_eq!(limits.admit(from("a", "epic_defined")), Verdict::Now);
        assert!(matches!(
            limits.admit(from("a", "epic_defined")),
            Verdict::Hold { .. }
        ));
        for _ in 0..5 {
            assert_eq!(limits.admit(from("a", "emergency_alert")), Verdict::Now);
        }
        assert!(matches!(
            limits.admit(from("a", "emergency_alert")),
            Verdict::Hold {
                limit_per_minute: 5,
                ..
            }
        ));
        let qa = Sender {
            agent_id: "q",
            role: "qa-director",
            message_type: "testing_started",
        };
        for _ in 0..100 {
            assert_eq!(limits.admit(qa), Verdict::Now);
        }
    }

    #[test]
    fn the_limit_across_all_agents_holds_back_any_of_them() {
        let mut s = settings(60, 10);
        s.all_per_minute = 3;
        let limits = RateLimits::with_clock(&s, FakeRelativeClock::default());
        for a in ["a", "b", "c"] {
            assert_eq!(limits.admit(from(a, "epic_defined")), Verdict::Now);
        }
        assert!(matches!(
            limits.admit(from("d", "epic_defined")),
            Verdict::Hold {
                limit_per_minute: 3,
                ..
            }
        ));
    }

    #[test]
    fn off_admits_everything() {
        let mut s = settings(1, 1);
        s.enabled = false;
        let limits = RateLimits::with_clock(&s, FakeRelativeClock::default());
        for _ in 0..10 {
            assert_eq!(limits.admit(from("a", "epic_defined")), Verdict::Now);
        }
    }

    #[test]
    fn one_notice_a_minute() {
        let clock = FakeRelativeClock::default();
        let limits = RateLimits::with_clock(&settings(60, 1), clock.clone());
        assert!(limits.notice_due("a"));
        assert!(!limits.notice_due("a"));
        assert!(limits.notice_due("b"));
        clock.advance(Duration::from_secs(59));
        assert!(!limits.notice_due("a"));
        clock.advance(Duration::from_secs(1));
        assert!(limits.notice_due("a"));
    }

    #[test]
    fn a_held_workflow_keeps_its_order_whoever_sent_the_later_message() {
        let clock = FakeRelativeClock::default();
        let limits = RateLimits::with_clock(&settings(60, 1), clock.clone());
        // a is out of tokens; b has one.
        assert_eq!(limits.admit(from("a", "epic_defined")), Verdict::Now);
        let backlog = Backlog::new(vec![
            held(1, "a", "w1"),
            held(2, "b", "w1"),
            held(3, "b", "w2"),
        ]);
        assert!(backlog.holds(Some("w1")));
        assert!(!backlog.holds(Some("w3")));
        assert!(!backlog.holds(None));
        // b's w1 message waits behind a's; b's w2 message goes.
        let due = backlog.due(&limits, 10);
        assert_eq!(due.ids, vec![3]);
        let again = due.again_in.expect("a's row is still held");
        assert!(again <= Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        let mut backlog = backlog;
        backlog.forget(&[3]);
        // a has a token again, and b: both of w1's go, in order.
        let due = backlog.due(&limits, 10);
        assert_eq!(
            due,
            Due {
                ids: vec![1, 2],
                again_in: None
            }
        );
        backlog.forget(&due.ids);
        assert!(backlog.is_empty() && !backlog.holds(Some("w1")));
    }

    fn admitted(agent: &str, workflow: &str, id: &str) -> Admitted {
        let mut envelope = protocol::envelope::Envelope::from_agent(
            agent,
            "product-director",
            "epic_defined",
            workflow,
            serde_json::json!({}),
            chrono::Utc::now(),
        );
        envelope.header.message_id = id.into();
        Admitted {
            envelope,
            sender: crate::engine::Sender::for_tests(agent, "product-director"),
            replay_of: None,
            bad_signature: None,
        }
    }

    fn delivery(agent: &str, workflow: &str, id: &str) -> Admission {
        Admission::Admitted(admitted(agent, workflow, id))
    }

    #[test]
    fn a_batch_holds_what_is_over_and_what_follows_it_in_its_workflow() {
        let limits = RateLimits::with_clock(&settings(60, 1), FakeRelativeClock::default());
        let backlog = Backlog::new(vec![held(1, "c", "w9")]);
        let batch = [
            delivery("a", "w1", "m1"),
            delivery("a", "w2", "m2"),
            delivery("b", "w2", "m3"),
            delivery("b", "w3", "m4"),
            delivery("b", "w9", "m5"),
        ];
        let plan = backlog.plan(&limits, &batch);
        assert_eq!(plan[0], None);
        assert!(matches!(
            plan[1],
            Some(Holding {
                over: Some((60, _))
            })
        ));
        // b has room, but w2 has a held message before this one.
        assert_eq!(plan[2], Some(Holding { over: None }));
        assert_eq!(plan[3], None);
        // w9 was held before this batch.
        assert_eq!(plan[4], Some(Holding { over: None }));
    }

    #[test]
    fn nothing_is_held_with_limits_off_and_an_empty_backlog() {
        let mut s = settings(1, 1);
        s.enabled = false;
        let limits = RateLimits::with_clock(&s, FakeRelativeClock::default());
        let batch = [delivery("a", "w1", "m1"), delivery("a", "w1", "m2")];
        assert_eq!(Backlog::default().plan(&limits, &batch), vec![None, None]);
        // What was held before the limits were turned off still keeps its order.
        let backlog = Backlog::new(vec![held(1, "a", "w1")]);
        assert_eq!(
            backlog.plan(&limits, &batch),
            vec![Some(Holding { over: None }); 2]
        );
        assert_eq!(backlog.due(&limits, 10).ids, vec![1]);
    }

    #[test]
    fn due_takes_at_most_a_batch() {
        let limits = RateLimits::with_clock(&settings(600, 100), FakeRelativeClock::default());
        let backlog = Backlog::new((1..=5).map(|i| held(i, "a", &format!("w{i}"))).collect());
        let due = backlog.due(&limits, 2);
        assert_eq!(due.ids, vec![1, 2]);
        assert_eq!(due.again_in, Some(Duration::ZERO));
    }

    #[test]
    fn the_charge_is_the_admitted_sender_and_neither_a_replay_nor_a_refusal_is_charged() {
        let a = admitted("pd-1", "w1", "m1");
        assert_eq!(
            Sender::of(&a),
            Some(Sender {
                agent_id: "pd-1",
                role: "product-director",
                message_type: "epic_defined"
            })
        );
        let mut replay = a.clone();
        replay.replay_of = Some(7);
        assert_eq!(
            Sender::of(&replay),
            None,
            "an operator's replay is not limited"
        );

        // A burst of one: the second message of pd-1 would be over, but neither a
        // refusal (whoever it claims to be from) nor a replay takes its token.
        let limits = RateLimits::with_clock(&settings(60, 1), FakeRelativeClock::default());
        let refused = Admission::Refused(crate::engine::Refused {
            rejected: protocol::reject::Rejected::new(
                protocol::reject::Reason::Unauthenticated,
                "user_id is another agent's",
            ),
            message_id: Some("m0".into()),
            claimed_sender: Some("pd-1".into()),
        });
        let batch = [
            refused,
            Admission::Admitted(replay),
            delivery("pd-1", "w2", "m2"),
            delivery("pd-1", "w3", "m3"),
        ];
        let plan = Backlog::default().plan(&limits, &batch);
        assert_eq!(&plan[..3], &[None, None, None]);
        assert!(plan[3].is_some(), "the second admitted message is over");
    }
}
