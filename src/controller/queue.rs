//! The work queue: which workspace is reconciled next. Pure (time is passed in), so its order
//! is tested exactly; `worker` drives it.
//!
//! # Flow
//! A trigger (`add`) puts a key at the back of one FIFO line, unless it is already waiting. A
//! key being reconciled is never handed out twice: a trigger meanwhile marks it dirty, and
//! `done` puts it at the back of the line. A requeue (`done` with a time, or `add_after`)
//! waits in a timer until its time, then joins the back of the line.
//!
//! # Guarantees
//! - Keys are handed out in the order their triggers arrived (timers by their due time), so a
//!   burst is served first come, first served, and nothing waits more than one pass of the
//!   line except for its own requeue delay.
//! - A key is in at most one of: waiting, active, timer; plus a dirty mark while active.
//! - An earlier due time wins: a trigger supersedes a pending timer, and of two timers the
//!   sooner stays.
//!
//! # Caveats
//! Keys of deleted objects stay until handed out (the worker then finds no object and calls
//! `done`), so memory is bounded by live objects plus those deleted within one requeue delay.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::time::Instant;

pub struct Queue<K> {
    /// Keys ready to run, oldest trigger first; each also in `waiting`.
    line: VecDeque<(K, Instant)>,
    waiting: HashSet<K>,
    /// Keys being reconciled now, and whether they were triggered again meanwhile.
    active: HashMap<K, bool>,
    /// Requeues not yet due: by due time (and a sequence number, for a total order), and the
    /// due time of each key.
    timers: BTreeMap<(Instant, u64), K>,
    due: HashMap<K, (Instant, u64)>,
    sequence: u64,
}

impl<K: Clone + Eq + Hash> Default for Queue<K> {
    fn default() -> Self {
        Self {
            line: VecDeque::new(),
            waiting: HashSet::new(),
            active: HashMap::new(),
            timers: BTreeMap::new(),
            due: HashMap::new(),
            sequence: 0,
        }
    }
}

impl<K: Clone + Eq + Hash> Queue<K> {
    /// A trigger: `key` should be reconciled as soon as its turn comes.
    pub fn add(&mut self, key: K, now: Instant) {
        if let Some(dirty) = self.active.get_mut(&key) {
            *dirty = true;
            return;
        }
        if self.waiting.contains(&key) {
            return;
        }
        self.cancel_timer(&key);
        self.waiting.insert(key.clone());
        self.line.push_back((key, now));
    }

    /// A look now and then (the resync sweep): `key` joins the line only if nothing at all is
    /// pending for it, so a sweep never cuts short a wait it asked for.
    pub fn add_if_idle(&mut self, key: K, now: Instant) {
        if !self.waiting.contains(&key) && !self.active.contains_key(&key) && !self.due.contains_key(&key) {
            self.add(key, now);
        }
    }

    /// A requeue: `key` should be reconciled at `at`, unless something brings it sooner. An
    /// active key asks through `done` instead, so it is ignored here.
    pub fn add_after(&mut self, key: K, at: Instant) {
        if self.waiting.contains(&key) || self.active.contains_key(&key) {
            return;
        }
        if self.due.get(&key).is_some_and(|(due, _)| *due <= at) {
            return;
        }
        self.cancel_timer(&key);
        self.sequence = self.sequence.wrapping_add(1);
        self.timers.insert((at, self.sequence), key.clone());
        self.due.insert(key, (at, self.sequence));
    }

    /// The next key to reconcile at `now`, with when it joined the line; it is active until
    /// `done`. Timers due by `now` join the line first, in due order.
    pub fn pop(&mut self, now: Instant) -> Option<(K, Instant)> {
        while let Some((&(at, _), _)) = self.timers.first_key_value()
            && at <= now
        {
            let Some(((at, _), key)) = self.timers.pop_first() else { break };
            self.due.remove(&key);
            if self.waiting.insert(key.clone()) {
                self.line.push_back((key, at));
            }
        }
        let (key, since) = self.line.pop_front()?;
        self.waiting.remove(&key);
        self.active.insert(key.clone(), false);
        Some((key, since))
    }

    /// The reconcile of `key` ended; `again` is when it asked to run again (None: only on a
    /// trigger). A trigger that came meanwhile puts it at the back of the line now.
    pub fn done(&mut self, key: K, again: Option<Instant>, now: Instant) {
        match self.active.remove(&key) {
            Some(true) => self.add(key, now),
            Some(false) => {
                if let Some(at) = again {
                    self.add_after(key, at);
                }
            }
            None => {}
        }
    }

    /// When the next timer is due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.timers.first_key_value().map(|(&(at, _), _)| at)
    }

    /// Keys waiting in the line (not counting timers or active ones).
    pub fn waiting(&self) -> usize {
        self.line.len()
    }

    /// Keys with a pending timer.
    #[cfg(test)]
    pub fn timers(&self) -> usize {
        self.timers.len()
    }

    fn cancel_timer(&mut self, key: &K) {
        if let Some((at, seq)) = self.due.remove(key) {
            self.timers.remove(&(at, seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    fn drain(q: &mut Queue<u32>, now: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some((k, _)) = q.pop(now) {
            out.push(k);
            q.done(k, None, now);
        }
        out
    }

    #[test]
    fn a_burst_is_served_in_arrival_order() {
        let now = t0();
        let mut q = Queue::default();
        let keys: Vec<u32> = (0..1000).map(|i| (i * 7919) % 1000).collect();
        for k in &keys {
            q.add(*k, now);
        }
        assert_eq!(drain(&mut q, now), keys);
    }

    #[test]
    fn a_repeated_trigger_keeps_the_first_place() {
        let now = t0();
        let mut q = Queue::default();
        for k in [1, 2, 1, 3, 2] {
            q.add(k, now);
        }
        assert_eq!(drain(&mut q, now), vec![1, 2, 3]);
    }

    #[test]
    fn an_active_key_is_not_handed_out_twice_and_a_trigger_meanwhile_goes_to_the_back() {
        let now = t0();
        let mut q = Queue::default();
        q.add(1, now);
        q.add(2, now);
        assert_eq!(q.pop(now).map(|(k, _)| k), Some(1));
        q.add(1, now); // triggered while running
        q.add(3, now);
        assert_eq!(q.pop(now).map(|(k, _)| k), Some(2));
        assert_eq!(q.pop(now).map(|(k, _)| k), Some(3));
        assert_eq!(q.pop(now), None, "1 is still active");
        q.done(1, Some(now + Duration::from_secs(60)), now);
        assert_eq!(q.pop(now).map(|(k, _)| k), Some(1), "the trigger wins over the requested delay");
        assert_eq!(q.timers(), 0);
    }

    #[test]
    fn a_requeue_waits_for_its_time_then_joins_the_back_of_the_line() {
        let now = t0();
        let mut q = Queue::default();
        q.add(1, now);
        let (k, _) = q.pop(now).unwrap();
        q.done(k, Some(now + Duration::from_secs(5)), now);
        q.add(2, now);
        assert_eq!(drain(&mut q, now), vec![2]);
        assert_eq!(q.next_due(), Some(now + Duration::from_secs(5)));
        let later = now + Duration::from_secs(5);
        q.add(3, later);
        // Due at 5 s, it joins behind 3, which was triggered at 5 s too but came first.
        assert_eq!(drain(&mut q, later), vec![3, 1]);
    }

    #[test]
    fn a_trigger_supersedes_a_timer_and_the_sooner_of_two_timers_stays() {
        let now = t0();
        let mut q = Queue::default();
        q.add_after(1, now + Duration::from_secs(10));
        q.add_after(1, now + Duration::from_secs(20));
        assert_eq!(q.next_due(), Some(now + Duration::from_secs(10)));
        q.add_after(1, now + Duration::from_secs(3));
        assert_eq!(q.next_due(), Some(now + Duration::from_secs(3)));
        q.add(1, now);
        assert_eq!(q.timers(), 0);
        assert_eq!(drain(&mut q, now), vec![1]);
        assert_eq!(drain(&mut q, now + Duration::from_secs(30)), Vec::<u32>::new(), "no stale timer fires");
    }

    #[test]
    fn a_sweep_adds_only_idle_keys() {
        let now = t0();
        let mut q = Queue::default();
        q.add_after(1, now + Duration::from_secs(30));
        q.add(2, now);
        q.add(3, now);
        assert_eq!(q.pop(now).map(|(k, _)| k), Some(2));
        for k in [1, 2, 3, 4] {
            q.add_if_idle(k, now);
        }
        assert_eq!(q.next_due(), Some(now + Duration::from_secs(30)), "the wait of 1 stands");
        assert_eq!(q.pop(now).map(|(k, _)| k), Some(3));
        assert_eq!(q.pop(now).map(|(k, _)| k), Some(4));
        assert_eq!(q.pop(now), None, "2 is active and was not marked dirty");
        q.done(2, None, now);
        assert_eq!(q.pop(now), None);
    }

    #[test]
    fn timers_join_in_due_order() {
        let now = t0();
        let mut q = Queue::default();
        for (k, s) in [(1, 30), (2, 10), (3, 20)] {
            q.add_after(k, now + Duration::from_secs(s));
        }
        assert_eq!(drain(&mut q, now + Duration::from_secs(15)), vec![2]);
        assert_eq!(drain(&mut q, now + Duration::from_secs(60)), vec![3, 1]);
    }

    /// Random operations against the invariants: each key in one place, the line and the
    /// waiting set agree, and handing out follows the line.
    #[test]
    fn invariants_hold_under_random_operations() {
        let start = t0();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut q = Queue::default();
        let mut now = start;
        for _ in 0..20_000 {
            let key = (next() % 16) as u32;
            match next() % 5 {
                0 | 1 => q.add(key, now),
                2 => q.add_after(key, now + Duration::from_millis(next() % 50)),
                3 => {
                    if let Some((k, _)) = q.pop(now) {
                        let again = (next() % 2 == 0).then(|| now + Duration::from_millis(next() % 50));
                        q.done(k, again, now);
                    }
                }
                _ => now += Duration::from_millis(next() % 20),
            }
            assert_eq!(q.line.len(), q.waiting.len());
            assert_eq!(q.timers.len(), q.due.len());
            for k in 0..16 {
                let places = [q.waiting.contains(&k), q.active.contains_key(&k), q.due.contains_key(&k)];
                assert!(places.iter().filter(|p| **p).count() <= 1, "key {k} in two places: {places:?}");
            }
        }
    }
}
