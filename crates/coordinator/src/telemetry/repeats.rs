//! A condition that repeats (a message no queue takes, retried for a day; a database
//! that stays away) is logged when it starts, as a count at most once per
//! [`Repeats::every`] while it lasts, and when it ends: an operator reads three lines,
//! not one per retry. Pure: the caller passes the time and logs what it is told.
//!
//! A condition is named by a key (the reason, as it would be logged) and is held by
//! members (the outbox rows it keeps waiting); it ends when its last member is resolved.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// What to say about a condition now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// It has just begun.
    Started,
    /// It goes on: `times` occurrences since it was last said, `members` held by it.
    Continuing {
        times: u64,
        members: usize,
        since: DateTime<Utc>,
    },
    /// Its last member was resolved: `times` occurrences in all.
    Ended { times: u64, lasted: Duration },
}

#[derive(Debug)]
struct Condition {
    since: DateTime<Utc>,
    said_at: DateTime<Utc>,
    times: u64,
    unsaid: u64,
    members: usize,
}

/// The conditions going on, by key.
#[derive(Debug)]
pub struct Repeats {
    every: Duration,
    open: HashMap<String, Condition>,
    held_by: HashMap<i64, String>,
}

impl Repeats {
    /// A count of a condition that goes on is said at most once per `every`.
    pub fn new(every: Duration) -> Repeats {
        Repeats {
            every,
            open: HashMap::new(),
            held_by: HashMap::new(),
        }
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    /// Nothing is going on (the common case: callers skip the lookups).
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// `member` met the condition `key` again (or for the first time). A member that
    /// was held by another condition leaves it, which may end that one: its end is
    /// returned first.
    pub fn occurred(&mut self, key: &str, member: i64, now: DateTime<Utc>) -> Vec<(String, Said)> {
        let mut said = Vec::new();
        let moved = self.held_by.get(&member).is_some_and(|k| k != key);
        if moved {
            said.extend(self.resolved(member, now));
        }
        let new_member = !self.held_by.contains_key(&member);
        if new_member {
            self.held_by.insert(member, key.to_string());
        }
        let Some(c) = self.open.get_mut(key) else {
            self.open.insert(
                key.to_string(),
                Condition {
                    since: now,
                    said_at: now,
                    times: 1,
                    unsaid: 0,
                    members: 1,
                },
            );
            said.push((key.to_string(), Said::Started));
            return said;
        };
        c.times += 1;
        c.unsaid += 1;
        if new_member {
            c.members += 1;
        }
        if elapsed(c.said_at, now) >= self.every {
            said.push((
                key.to_string(),
                Said::Continuing {
                    times: c.unsaid,
                    members: c.members,
                    since: c.since,
                },
            ));
            c.said_at = now;
            c.unsaid = 0;
        }
        said
    }

    /// `member` no longer meets its condition (it went out, or was given up); the
    /// condition's end when it was the last.
    pub fn resolved(&mut self, member: i64, now: DateTime<Utc>) -> Option<(String, Said)> {
        let key = self.held_by.remove(&member)?;
        let c = self.open.get_mut(&key)?;
        c.members -= 1;
        if c.members > 0 {
            return None;
        }
        let c = self.open.remove(&key)?;
        Some((
            key,
            Said::Ended {
                times: c.times,
                lasted: elapsed(c.since, now),
            },
        ))
    }
}

fn elapsed(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).expect("a time")
    }

    #[test]
    fn a_condition_is_said_when_it_starts_then_as_a_count_per_interval_then_when_it_ends() {
        let mut r = Repeats::new(Duration::from_secs(60));
        assert_eq!(
            r.occurred("unroutable", 1, at(0)),
            [("unroutable".into(), Said::Started)]
        );
        assert!(r.occurred("unroutable", 1, at(10)).is_empty());
        assert!(r.occurred("unroutable", 2, at(30)).is_empty());
        assert_eq!(
            r.occurred("unroutable", 1, at(61)),
            [(
                "unroutable".into(),
                Said::Continuing {
                    times: 3,
                    members: 2,
                    since: at(0)
                }
            )]
        );
        assert!(r.occurred("unroutable", 2, at(70)).is_empty());
        assert_eq!(r.resolved(1, at(80)), None, "member 2 still waits");
        assert_eq!(
            r.resolved(2, at(90)),
            Some((
                "unroutable".into(),
                Said::Ended {
                    times: 5,
                    lasted: Duration::from_secs(90)
                }
            ))
        );
        assert!(r.is_empty());
        assert_eq!(r.resolved(2, at(91)), None, "resolved once");
        assert_eq!(
            r.occurred("unroutable", 1, at(100)),
            [("unroutable".into(), Said::Started)]
        );
    }

    #[test]
    fn a_member_that_meets_another_condition_leaves_the_first() {
        let mut r = Repeats::new(Duration::from_secs(60));
        r.occurred("no queue for task.qa", 7, at(0));
        let said = r.occurred("nacked", 7, at(5));
        assert_eq!(
            said,
            [
                (
                    "no queue for task.qa".into(),
                    Said::Ended {
                        times: 1,
                        lasted: Duration::from_secs(5)
                    }
                ),
                ("nacked".into(), Said::Started)
            ]
        );
    }

    #[test]
    fn members_nobody_reported_resolve_to_nothing() {
        let mut r = Repeats::new(Duration::from_secs(60));
        assert_eq!(r.resolved(42, at(0)), None);
        assert!(r.is_empty());
    }
}
