//! Sharing the inbox's partitions among the running coordinators.
//!
//! A reconciler: each [`Partitions::step`] reads who is a member and which partitions
//! are held (`db::lease`), works out this coordinator's fair share, and
//! returns the partitions to start consuming (whose leases it just took) and those to
//! stop (it lets go of their leases once their consumers have finished, in
//! [`Partitions::released`]). Shares are computed the same way by every member, from
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
    /// [`Partitions::released`].
    pub stop: Vec<u32>,
}

pub struct Partitions<'a> {
    /// `database.url`: the leases are held on a connection of their own.
    database_url: &'a str,
    /// This process (host, pid): the lease connection's `application_name`.
    instance: &'a str,
    /// `inbox.partitions`.
    partitions: u32,
    leases: Option<Leases>,
    held: BTreeSet<u32>,
    stopping: BTreeSet<u32>,
}

impl<'a> Partitions<'a> {
    pub fn new(database_url: &'a str, instance: &'a str, partitions: u32) -> Partitions<'a> {
        Partitions {
            database_url,
            instance,
            partitions,
            leases: None,
            held: BTreeSet::new(),
            stopping: BTreeSet::new(),
        }
    }

    /// Reads the members and the leases, and moves this coordinator toward its share.
    pub async fn step(&mut self) -> db::Result<Plan> {
        let partitions = self.partitions;
        if self.leases.is_none() {
            self.leases = Some(Leases::join(self.database_url, self.instance).await?);
            self.held.clear();
            self.stopping.clear();
        }
        let Some(leases) = self.leases.as_mut() else {
            return Ok(Plan::default());
        };
        let key = leases.key();
        let h = leases.holders().await?;
        let target = share(partitions, &h.members, i64::from(key));
        let mut plan = Plan::default();
        let active: Vec<u32> = self.held.difference(&self.stopping).copied().collect();
        let active_n = u32::try_from(active.len()).unwrap_or(u32::MAX);
        if active_n > target {
            for p in active.iter().rev().take((active_n - target) as usize) {
                self.stopping.insert(*p);
                plan.stop.push(*p);
            }
            return Ok(plan);
        }
        let mut want = target - active_n;
        if want == 0 || !self.stopping.is_empty() {
            return Ok(plan);
        }
        // Start from a different partition in each coordinator, so two of them
        // rarely race for the same free lease.
        let offset = key.unsigned_abs() % partitions.max(1);
        for i in 0..partitions {
            if want == 0 {
                break;
            }
            let p = (offset + i) % partitions;
            if h.partitions.contains(&i64::from(p)) || self.held.contains(&p) {
                continue;
            }
            let Ok(lock) = i32::try_from(p) else { continue };
            if leases.acquire(lock).await? {
                self.held.insert(p);
                plan.start.push(p);
                want -= 1;
            }
        }
        plan.start.sort_unstable();
        Ok(plan)
    }

    /// A partition's consumer has stopped: its lease goes back.
    pub async fn released(&mut self, partition: u32) -> db::Result<()> {
        self.stopping.remove(&partition);
        if !self.held.remove(&partition) {
            return Ok(());
        }
        match (&mut self.leases, i32::try_from(partition)) {
            (Some(leases), Ok(p)) => leases.release(p).await,
            _ => Ok(()),
        }
    }

    /// Lets go of every lease and of the membership (closes the lease connection).
    pub async fn close(&mut self) {
        self.held.clear();
        self.stopping.clear();
        if let Some(leases) = self.leases.take() {
            leases.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::share;

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
