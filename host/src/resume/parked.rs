//! How many requests each owner has waiting for a client that went away — parked, or ended
//! while parked with their outcome kept — against `[resume] max_parked_per_owner`. Without
//! it an owner with many connections could park `[limits] max_in_flight` requests on each.
//!
//! A place is a [`ParkedSlot`] that the request (then its kept outcome) holds and that gives
//! the place back when dropped: every path a request leaves by — attached, ended, expired,
//! handed to another host — frees it without a line of its own.

use std::sync::Arc;

use dashmap::DashMap;

use super::Owner;

/// Places taken per owner; no entry for an owner with none.
#[derive(Debug)]
pub struct ParkedPerOwner {
    counts: DashMap<Owner, usize>,
    /// Zero: no bound (still counted).
    limit: usize,
}

/// One parked request's place; dropping it gives the place back.
#[derive(Debug)]
pub struct ParkedSlot {
    owner: Owner,
    of: Arc<ParkedPerOwner>,
}

impl ParkedPerOwner {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(ParkedPerOwner {
            counts: DashMap::new(),
            limit,
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A place for one more request of `owner`, unless it has `limit` already.
    pub fn take(self: &Arc<Self>, owner: &Owner) -> Option<ParkedSlot> {
        let mut count = self.counts.entry(owner.clone()).or_insert(0);
        if self.limit > 0 && *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(ParkedSlot {
            owner: owner.clone(),
            of: self.clone(),
        })
    }

    /// The places `owner` holds.
    pub fn of(&self, owner: &Owner) -> usize {
        self.counts.get(owner).map_or(0, |count| *count)
    }
}

impl Drop for ParkedSlot {
    fn drop(&mut self) {
        self.of.counts.remove_if_mut(&self.owner, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resume::SessionId;

    #[test]
    fn an_owner_gets_limit_places_and_each_comes_back_when_dropped() {
        let parked = ParkedPerOwner::new(2);
        let (alice, bob) = (
            Owner::Session(SessionId::new()),
            Owner::Session(SessionId::new()),
        );
        let a = parked.take(&alice);
        let b = parked.take(&alice);
        assert!(a.is_some() && b.is_some());
        assert!(parked.take(&alice).is_none(), "the third is over the bound");
        assert!(parked.take(&bob).is_some(), "another owner is not affected");
        drop(a);
        assert_eq!(parked.of(&alice), 1);
        let c = parked.take(&alice);
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(parked.of(&alice), 0);
        assert!(parked.counts.is_empty(), "nothing left behind");
    }

    #[test]
    fn zero_is_no_bound() {
        let parked = ParkedPerOwner::new(0);
        let owner = Owner::Session(SessionId::new());
        let slots: Vec<_> = (0..1000).filter_map(|_| parked.take(&owner)).collect();
        assert_eq!(slots.len(), 1000);
    }
}
