//! Sharing the inbox's partitions among the running coordinators.
//!
//! A reconciler: each [`Partitions::step`] reads who is a member and which partitions
//! are held (`db::lease`), works out this coordinator's fair share, and
//! returns the partitions to start consuming (whose leases it just took) and those to
//! stop (it lets go of their leases once their consumers have finished, in
//! [`Partitions::finished`]). Shares are computed the same way by every member, from
//! its rank among the members, so they always add up to the number of partitions; a
//! coordinator that stops or dies loses its locks with its connection and the others
//! take its partitions at their next step.
//!
//! The leases only spread the work: ordering never depends on them, because each
//! partition queue has a single active consumer at the broker.

use std::collections::BTreeSet;

use crate::db::{self, lease::Leases};

/// How many of `partitions` the member `me` should hold among `members`.
pub fn share(partitions: u32, members: &[i64], me: i64) -> u32 {
    let n = u32::try_from(members.len().max(1)).unwrap_or(u32::MAX);
    let rank = members
        .iter()
        .position(|m| *m == me)
        .map_or(n - 1, |r| u32::try_from(r).unwrap_or(u32::MAX));
    partitions / n + u32::from(rank < partitions % n)
}

/// What a step asks of the caller.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Partitions now leased to this coordinator: start consuming them.
    pub start: Vec<u32>,
    /// Partitions to hand over: stop consuming them, then call
    /// [`Partitions::finished`].
    pub stop: Vec<u32>,
}

/// This coordinator's side of the leases, without the I/O: the partitions it holds, those
/// it is handing over, and those whose consumers are still running. A consumer can
/// outlive its lease: when the lease connection is lost every consumer is told to stop,
/// but one in the middle of a batch finishes it first (a commit waiting for the database
/// that has just come back, say). A partition is not started again while a consumer of it
/// still runs, so this process never has two consumers of one partition, and the one
/// finishing can never be mistaken for its successor when it ends.
#[derive(Debug, Default)]
struct Ledger {
    held: BTreeSet<u32>,
    stopping: BTreeSet<u32>,
    running: BTreeSet<u32>,
}

/// What a step does to move toward this coordinator's share.
#[derive(Debug, PartialEq, Eq)]
enum Toward {
    /// Hand these over.
    Stop(Vec<u32>),
    /// Try to take `want` of these free partitions, in this order.
    Take { candidates: Vec<u32>, want: u32 },
    /// Nothing to do now.
    Stay,
}

impl Ledger {
    /// `taken`: partitions anyone holds a lease on; `offset`: where this coordinator
    /// starts looking, so that two of them rarely race for the same free lease.
    fn toward(&self, target: u32, taken: &[i64], partitions: u32, offset: u32) -> Toward {
        let active: Vec<u32> = self.held.difference(&self.stopping).copied().collect();
        let active_n = u32::try_from(active.len()).unwrap_or(u32::MAX);
        if active_n > target {
            let extra = (active_n - target) as usize;
            return Toward::Stop(active.iter().rev().take(extra).copied().collect());
        }
        let want = target - active_n;
        if want == 0 || !self.stopping.is_empty() {
            return Toward::Stay;
        }
        let candidates = (0..partitions)
            .map(|i| (offset + i) % partitions)
            .filter(|p| {
                !taken.contains(&i64::from(*p))
                    && !self.held.contains(p)
                    && !self.running.contains(p)
            })
            .collect();
        Toward::Take { candidates, want }
    }

    /// Its lease taken, a consumer of `p` starts.
    fn started(&mut self, p: u32) {
        self.held.insert(p);
        self.running.insert(p);
    }

    /// The lease connection is gone, and with it every lease; the consumers that were
    /// told to stop may still be finishing.
    fn leases_lost(&mut self) {
        self.held.clear();
        self.stopping.clear();
    }

    /// A consumer of `p` has finished: true if it still held its lease, which goes back.
    fn finished(&mut self, p: u32) -> bool {
        self.running.remove(&p);
        self.stopping.remove(&p);
        self.held.remove(&p)
    }
}

pub struct Partitions<'a> {
    /// `database.url`: the leases are held on a connection of their own.
    database_url: &'a str,
    /// This process (host, pid): the lease connection's `application_name`.
    instance: &'a str,
    /// `inbox.partitions`.
    partitions: u32,
    leases: Option<Leases>,
    ledger: Ledger,
}

impl<'a> Partitions<'a> {
    pub fn new(database_url: &'a str, instance: &'a str, partitions: u32) -> Partitions<'a> {
        Partitions {
            database_url,
            instance,
            partitions,
            leases: None,
            ledger: Ledger::default(),
        }
    }

    /// Reads the members and the leases, and moves this coordinator toward its share.
    pub async fn step(&mut self) -> db::Result<Plan> {
        let partitions = self.partitions;
        if self.leases.is_none() {
            self.leases = Some(Leases::join(self.database_url, self.instance).await?);
            self.ledger.leases_lost();
        }
        let Some(leases) = self.leases.as_mut() else {
            return Ok(Plan::default());
        };
        let key = leases.key();
        let h = leases.holders().await?;
        let target = share(partitions, &h.members, i64::from(key));
        let offset = key.unsigned_abs() % partitions.max(1);
        let mut plan = Plan::default();
        match self
            .ledger
            .toward(target, &h.partitions, partitions, offset)
        {
            Toward::Stop(stop) => {
                self.ledger.stopping.extend(&stop);
                plan.stop = stop;
            }
            Toward::Take {
                candidates,
                mut want,
            } => {
                for p in candidates {
                    if want == 0 {
                        break;
                    }
                    let Ok(lock) = i32::try_from(p) else { continue };
                    if leases.acquire(lock).await? {
                        self.ledger.started(p);
                        plan.start.push(p);
                        want -= 1;
                    }
                }
                plan.start.sort_unstable();
            }
            Toward::Stay => {}
        }
        Ok(plan)
    }

    /// Partitions this coordinator holds a lease on and is not handing over.
    pub fn consuming(&self) -> i64 {
        i64::try_from(self.ledger.held.difference(&self.ledger.stopping).count())
            .unwrap_or(i64::MAX)
    }

    /// A partition's consumer has stopped: its lease goes back (if it still had one).
    pub async fn finished(&mut self, partition: u32) -> db::Result<()> {
        if !self.ledger.finished(partition) {
            return Ok(());
        }
        match (&mut self.leases, i32::try_from(partition)) {
            (Some(leases), Ok(p)) => leases.release(p).await,
            _ => Ok(()),
        }
    }

    /// Lets go of every lease and of the membership (closes the lease connection). The
    /// consumers still running are remembered until they have [`Partitions::finished`].
    pub async fn close(&mut self) {
        self.ledger.leases_lost();
        if let Some(leases) = self.leases.take() {
            leases.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{share, Ledger, Toward};

    fn take(ledger: &Ledger, target: u32, taken: &[i64]) -> Vec<u32> {
        match ledger.toward(target, taken, 8, 0) {
            Toward::Take { candidates, .. } => candidates,
            other => panic!("expected to take partitions, got {other:?}"),
        }
    }

    #[test]
    fn a_partition_whose_consumer_is_still_finishing_is_not_started_again() {
        let mut ledger = Ledger::default();
        for p in 0..4 {
            ledger.started(p);
        }
        // The lease connection is lost: every consumer is told to stop, and 0 and 1 are
        // still finishing their batches when the leases are taken again.
        ledger.leases_lost();
        assert!(!ledger.finished(2), "its lease died with the connection");
        assert!(!ledger.finished(3));
        assert_eq!(take(&ledger, 8, &[]), vec![2, 3, 4, 5, 6, 7]);
        for p in [2, 3, 4, 5, 6, 7] {
            ledger.started(p);
        }
        // The old consumer of 0 ends: nothing of its successor's (there is none yet) is
        // released, and 0 can be taken now.
        assert!(!ledger.finished(0));
        assert_eq!(take(&ledger, 8, &[]), vec![0]);
        ledger.started(0);
        assert!(
            ledger.finished(0),
            "a consumer that held its lease gives it back"
        );
    }

    #[test]
    fn handing_over_waits_for_the_stopping_consumers_before_taking_more() {
        let mut ledger = Ledger::default();
        for p in 0..8 {
            ledger.started(p);
        }
        assert_eq!(ledger.toward(4, &[], 8, 0), Toward::Stop(vec![7, 6, 5, 4]));
        ledger.stopping.extend([7, 6, 5, 4]);
        assert_eq!(ledger.toward(4, &[], 8, 0), Toward::Stay);
        assert!(ledger.finished(7));
        assert_eq!(
            ledger.toward(5, &[], 8, 0),
            Toward::Stay,
            "others still stopping"
        );
        for p in [6, 5, 4] {
            assert!(ledger.finished(p));
        }
        assert_eq!(take(&ledger, 5, &[5, 6]), vec![4, 7]);
    }

    #[test]
    fn shares_add_up_to_the_partitions_whatever_the_members() {
        for partitions in [1, 2, 3, 7, 8, 16] {
            for n in 1..=5 {
                let members: Vec<i64> = (0..n).map(|i| 100 + i * 7).collect();
                let total: u32 = members
                    .iter()
                    .map(|m| share(partitions, &members, *m))
                    .sum();
                assert_eq!(total, partitions, "{partitions} over {n}");
                let shares: Vec<u32> = members
                    .iter()
                    .map(|m| share(partitions, &members, *m))
                    .collect();
                let (lo, hi) = (shares.iter().min(), shares.iter().max());
                assert!(
                    hi.zip(lo).is_some_and(|(h, l)| h - l <= 1),
                    "fair: {shares:?}"
                );
            }
        }
    }

    #[test]
    fn a_member_not_yet_listed_takes_the_smallest_share() {
        assert_eq!(share(8, &[5, 9], 5), 4);
        assert_eq!(share(8, &[], 1), 8, "alone, it takes everything");
        assert_eq!(share(3, &[1, 2], 7), 1);
    }
}
