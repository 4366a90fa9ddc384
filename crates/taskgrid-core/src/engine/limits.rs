//! Limits on when tasks start, and turns between keys.
//!
//! A task may carry a *concurrency key* (`customer-42`). Three things
//! follow from it:
//!
//! - **Turns.** Within a priority, queued tasks are ordered by a *turn*
//!   rather than by arrival: each (queue, key) group — tasks without a key
//!   form one group per queue — numbers its tasks from where dispatch has
//!   got to, so the groups with waiting tasks take one turn each (start-time
//!   fair queueing). A key with 100,000 tasks waiting does not hold back a
//!   key with 10; tasks of one group stay first in, first out, and a system
//!   without keys keeps its plain FIFO.
//! - **Concurrency.** A [`KeyLimit`] caps how many tasks of each key it
//!   matches are out with workers (assigned or running) at once.
//! - **Rate.** A [`KeyLimit`] caps how fast they start: a token bucket of
//!   `starts` tokens refilled at `starts` per `per` (a burst, then one
//!   start every `per / starts`), kept as the time it is next empty (GCRA)
//!   so it needs no ticking.
//!
//! A limited key *admits* into its dispatch classes only as many queued
//! tasks as it may start now (its best by priority and turn); the rest wait
//! *parked* beside them. Dispatch never sees a task it may not start, so a
//! key held back by its limit costs nothing per dispatch however many tasks
//! it has waiting; a task finishing (or a token coming due, on a timer)
//! admits the next. Over a limit a task waits; it is never failed.
//!
//! A queue may also cap the tasks it has out at once
//! ([`super::EngineConfig::queue_concurrency`]): dispatch passes over its
//! classes while it is at the cap.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Priority, TaskId, Timestamp, duration_micros};

use super::Engine;

/// Most bytes in a concurrency key.
pub const CONCURRENCY_KEY_MAX: usize = 256;

/// A token bucket: a burst of `starts` starts, then `starts` per `per`
/// (one every `per / starts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Starts allowed per period (also the burst).
    pub starts: u32,
    /// The period.
    #[serde(with = "crate::spec::duration_ms", rename = "per_ms")]
    pub per: Duration,
}

impl Rate {
    /// Microseconds between two starts at the steady rate (at least 1).
    fn interval(&self) -> u64 {
        (duration_micros(self.per) / u64::from(self.starts.max(1))).max(1)
    }
}

/// A limit on the tasks of every concurrency key a pattern matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimit {
    /// `KEY` (that key) or `PREFIX*` (each key that starts with `PREFIX`,
    /// each on its own: `customer-*` gives every customer the limit). Of
    /// the patterns that match a key, an exact one wins, then the longest
    /// prefix.
    pub pattern: String,
    /// Most tasks of a key out with workers at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// How fast tasks of a key may start: a burst of `starts`, then
    /// `starts` per `per` (a token bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
}

impl KeyLimit {
    /// How closely the pattern matches `key`: `None` if it does not, else
    /// higher is closer (exact beats every prefix, longer prefixes beat
    /// shorter ones).
    fn closeness(&self, key: &str) -> Option<usize> {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix).then_some(prefix.len()),
            None => (self.pattern == key).then_some(usize::MAX),
        }
    }

    /// Checks a limit for use: a non-empty pattern, a concurrency or a rate,
    /// and no zero (a key that may never start is a paused queue's job).
    pub fn check(&self) -> Result<(), String> {
        let bare = self.pattern.strip_suffix('*').unwrap_or(&self.pattern);
        if self.pattern.is_empty() || bare.contains('*') {
            return Err(format!(
                "limit pattern {:?}: expected KEY or PREFIX* (one `*`, at the end)",
                self.pattern
            ));
        }
        if self.concurrency == Some(0) {
            return Err(format!(
                "limit for {:?}: concurrency must be at least 1",
                self.pattern
            ));
        }
        if let Some(r) = self.rate
            && (r.starts == 0 || r.per.is_zero())
        {
            return Err(format!(
                "limit for {:?}: a rate needs at least 1 start per non-zero period",
                self.pattern
            ));
        }
        if self.concurrency.is_none() && self.rate.is_none() {
            return Err(format!(
                "limit for {:?}: set a concurrency, a rate or both",
                self.pattern
            ));
        }
        Ok(())
    }
}

/// The limits in force for one key: the closest matching concurrency and
/// the closest matching rate (they may come from different patterns).
fn resolve(limits: &[KeyLimit], key: &str) -> (Option<u32>, Option<Rate>) {
    let best = |want: &dyn Fn(&KeyLimit) -> bool| {
        limits
            .iter()
            .filter(|l| want(l))
            .filter_map(|l| Some((l.closeness(key)?, l)))
            .max_by_key(|(c, _)| *c)
            .map(|(_, l)| l)
    };
    (
        best(&|l| l.concurrency.is_some()).and_then(|l| l.concurrency),
        best(&|l| l.rate.is_some()).and_then(|l| l.rate),
    )
}

/// A queued task's place: priority first, then turn, then id.
pub(super) type Place = (Reverse<Priority>, u64, TaskId);

/// The turn counters of one queue.
#[derive(Debug, Default)]
struct QueueTurns {
    /// Per priority, the highest turn dispatched so far: a group that was
    /// idle starts right after it.
    clocks: Vec<(Priority, u64)>,
    /// Per priority with tasks queued that have no key (one group): the
    /// last turn given and the tasks queued. (A short list: a queue uses
    /// few priorities, and this is the path of every task without a key.)
    unkeyed: Vec<(Priority, u64, u32)>,
    /// Per (key, priority) with tasks queued: the last turn given and the
    /// tasks queued.
    keyed: HashMap<(Arc<str>, Priority), (u64, u32)>,
}

impl QueueTurns {
    fn is_empty(&self) -> bool {
        self.unkeyed.is_empty() && self.keyed.is_empty()
    }
}

/// The turn counters of the (queue, key, priority) groups with tasks
/// queued; a queue with none queued is forgotten.
#[derive(Debug, Default)]
pub(super) struct Turns {
    queues: HashMap<Arc<str>, QueueTurns>,
}

impl Turns {
    /// The turn of a task of `key` and priority `p` entering `queued` in
    /// `queue`.
    pub(super) fn enter(&mut self, queue: &Arc<str>, key: Option<&Arc<str>>, p: Priority) -> u64 {
        let (clock, last, queued) = self.group(queue, key, p);
        *queued += 1;
        *last = (*last).max(clock) + 1;
        *last
    }

    /// A task of `key` and priority `p` back in `queued` with the turn
    /// `turn` it had (an offer that never started): it keeps its place.
    pub(super) fn reenter(
        &mut self,
        queue: &Arc<str>,
        key: Option<&Arc<str>>,
        p: Priority,
        turn: u64,
    ) {
        let (_, last, queued) = self.group(queue, key, p);
        *queued += 1;
        *last = (*last).max(turn);
    }

    /// The clock of `queue` at `p`, and the last turn given and the tasks
    /// queued of the group of `key` at `p` (created empty if absent).
    fn group(
        &mut self,
        queue: &Arc<str>,
        key: Option<&Arc<str>>,
        p: Priority,
    ) -> (u64, &mut u64, &mut u32) {
        if !self.queues.contains_key(&**queue) {
            self.queues.insert(queue.clone(), QueueTurns::default());
        }
        let q = self.queues.get_mut(&**queue).expect("just made");
        let clock = q
            .clocks
            .iter()
            .find(|(cp, _)| *cp == p)
            .map_or(0, |(_, c)| *c);
        let (last, queued) = match key {
            None => match q.unkeyed.iter().position(|g| g.0 == p) {
                Some(i) => {
                    let g = &mut q.unkeyed[i];
                    (&mut g.1, &mut g.2)
                }
                None => {
                    q.unkeyed.push((p, 0, 0));
                    let g = q.unkeyed.last_mut().expect("just pushed");
                    (&mut g.1, &mut g.2)
                }
            },
            Some(k) => {
                let g = q.keyed.entry((k.clone(), p)).or_insert((0, 0));
                (&mut g.0, &mut g.1)
            }
        };
        (clock, last, queued)
    }

    /// A task left `queued`; `dispatched` when it went to a worker.
    pub(super) fn leave(
        &mut self,
        queue: &Arc<str>,
        key: Option<&Arc<str>>,
        place: &Place,
        dispatched: bool,
    ) {
        let p = place.0.0;
        let Some(q) = self.queues.get_mut(&**queue) else {
            return;
        };
        match key {
            None => {
                if let Some(i) = q.unkeyed.iter().position(|g| g.0 == p) {
                    q.unkeyed[i].2 -= 1;
                    if q.unkeyed[i].2 == 0 {
                        q.unkeyed.swap_remove(i);
                    }
                }
            }
            Some(k) => {
                let gk = (k.clone(), p);
                if let Some(g) = q.keyed.get_mut(&gk) {
                    g.1 -= 1;
                    if g.1 == 0 {
                        q.keyed.remove(&gk);
                    }
                }
            }
        }
        if q.is_empty() {
            self.queues.remove(&**queue);
            return;
        }
        if dispatched {
            match q.clocks.iter_mut().find(|(cp, _)| *cp == p) {
                Some((_, c)) => *c = (*c).max(place.1),
                None => q.clocks.push((p, place.1)),
            }
        }
    }

    /// Groups with queued tasks (for tests and stats).
    pub(super) fn groups(&self) -> usize {
        self.queues
            .values()
            .map(|q| q.unkeyed.len() + q.keyed.len())
            .sum()
    }
}

/// A limited key with tasks waiting or out, or a bucket not yet full.
#[derive(Debug)]
pub(super) struct KeyState {
    concurrency: Option<u32>,
    rate: Option<Rate>,
    /// Tasks out with workers (assigned or running).
    running: u32,
    /// Queued tasks in their dispatch classes: may start now.
    admitted: BTreeSet<Place>,
    /// Queued tasks held back by the limit.
    parked: BTreeSet<Place>,
    /// Queued tasks whose class cannot be dispatched now (their queue is
    /// paused, or no connected worker could run them): they take none of
    /// the key's allowance, so they do not hold back its other tasks.
    stalled: BTreeSet<Place>,
    /// When the bucket is next empty (GCRA's theoretical arrival time).
    tat: Timestamp,
    /// Its armed timer, if any.
    timer: Option<Timestamp>,
}

impl KeyState {
    /// Starts the bucket allows at `now`.
    fn tokens(&self, now: Timestamp) -> Option<u64> {
        let r = self.rate?;
        let debt = self.tat.as_micros().saturating_sub(now.as_micros());
        let room = (u64::from(r.starts) * r.interval()).saturating_sub(debt);
        Some(room / r.interval())
    }

    /// Tasks that may be admitted at `now`.
    fn allowance(&self, now: Timestamp) -> u64 {
        let by_count = self
            .concurrency
            .map_or(u64::MAX, |c| u64::from(c.saturating_sub(self.running)));
        by_count.min(self.tokens(now).unwrap_or(u64::MAX))
    }

    fn idle(&self) -> bool {
        self.running == 0
            && self.admitted.is_empty()
            && self.parked.is_empty()
            && self.stalled.is_empty()
    }
}

/// Whether the class of the queued task at `place` can be dispatched now:
/// a connected worker could run it and its queue is not paused.
fn dispatchable(
    tasks: &super::table::Table,
    classes: &[super::dispatch::Class],
    queues: &HashMap<Arc<str>, super::QueueState>,
    p: &Place,
) -> bool {
    tasks.get(&p.2).is_some_and(|e| {
        let c = &classes[e.class.0 as usize];
        !c.capable.is_empty() && !queues.get(c.key_queue()).is_some_and(|q| q.paused)
    })
}

/// A limited key's limits and where its tasks stand (`GET /api/v1/limits`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyLimitView {
    /// The key.
    pub key: String,
    /// Its concurrency limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Its rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Tasks of it out with workers.
    pub running: u32,
    /// Queued tasks that may start as soon as a worker is free.
    pub admitted: usize,
    /// Queued tasks held back by the limit (or by their queue's pause or
    /// the lack of a capable worker).
    pub held: usize,
    /// Starts its bucket allows now (with a rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
}

impl Engine {
    /// The limited-key state of a task's key, created on first use; `None`
    /// when it has no key or no limit matches its key.
    fn key_state(&mut self, key: &Arc<str>, now: Timestamp) -> Option<&mut KeyState> {
        if self.config.key_limits.is_empty() {
            return None;
        }
        if !self.keys.contains_key(key) {
            let (concurrency, rate) = resolve(&self.config.key_limits, key);
            if concurrency.is_none() && rate.is_none() {
                return None;
            }
            self.keys.insert(
                key.clone(),
                KeyState {
                    concurrency,
                    rate,
                    running: 0,
                    admitted: BTreeSet::new(),
                    parked: BTreeSet::new(),
                    stalled: BTreeSet::new(),
                    tat: now,
                    timer: None,
                },
            );
        }
        self.keys.get_mut(key)
    }

    /// A task of `key` (class, place) entered `queued`: into its class, or
    /// parked for its key (the caller settles the key afterwards).
    pub(super) fn make_ready(
        &mut self,
        class: super::ClassId,
        place: Place,
        key: Option<&Arc<str>>,
        now: Timestamp,
    ) {
        if let Some(k) = key
            && let Some(ks) = self.key_state(k, now)
        {
            ks.parked.insert(place);
            return;
        }
        self.classes[class.0 as usize].ready.insert(place);
    }

    /// A task of `key` (class, place) left `queued`.
    pub(super) fn unready(&mut self, class: super::ClassId, place: Place, key: Option<&Arc<str>>) {
        if let Some(ks) = key.and_then(|k| self.keys.get_mut(k)) {
            if ks.admitted.remove(&place) {
                self.classes[class.0 as usize].ready.remove(&place);
            } else if !ks.parked.remove(&place) {
                ks.stalled.remove(&place);
            }
            return;
        }
        self.classes[class.0 as usize].ready.remove(&place);
    }

    /// A task of `key` went out to a worker (`started`; it spends a token
    /// when `spend`) or came back.
    pub(super) fn key_out(&mut self, key: &Arc<str>, started: bool, spend: bool, now: Timestamp) {
        let Some(ks) = self.key_state(key, now) else {
            return;
        };
        if started {
            ks.running += 1;
            if let Some(r) = ks.rate.filter(|_| spend) {
                ks.tat = Timestamp::from_micros(ks.tat.max(now).as_micros() + r.interval());
            }
        } else {
            ks.running = ks.running.saturating_sub(1);
        }
    }

    /// Brings a limited key's admitted tasks to what it may start at `now`
    /// (best first, of those whose class can be dispatched), arms its
    /// timer, and forgets it once nothing is left to remember.
    pub(super) fn settle_key(&mut self, key: &Arc<str>, now: Timestamp) {
        self.limits_now = self.limits_now.max(now);
        let Some(ks) = self.keys.get_mut(key) else {
            return;
        };
        let (tasks, classes, queues) = (&self.tasks, &self.classes, &self.queues);
        let can_dispatch = |p: &Place| dispatchable(tasks, classes, queues, p);
        let allowance = ks.allowance(now);
        // (place, into its class or out of it)
        let mut moves: Vec<(Place, bool)> = Vec::new();
        // More let through than allowed (a restart counted tasks out after
        // some were admitted): the worst go back.
        while ks.admitted.len() as u64 > allowance {
            let Some(p) = ks.admitted.pop_last() else {
                break;
            };
            ks.parked.insert(p);
            moves.push((p, false));
        }
        // Admit while there is room.
        while (ks.admitted.len() as u64) < allowance {
            let Some(p) = ks.parked.pop_first() else {
                break;
            };
            if can_dispatch(&p) {
                ks.admitted.insert(p);
                moves.push((p, true));
            } else {
                ks.stalled.insert(p);
            }
        }
        // A better task parked than one admitted (a higher priority came
        // in): swap them.
        while let (Some(&best), Some(&worst)) = (ks.parked.first(), ks.admitted.last()) {
            if best >= worst {
                break;
            }
            ks.parked.remove(&best);
            if !can_dispatch(&best) {
                ks.stalled.insert(best);
                continue;
            }
            ks.admitted.remove(&worst);
            ks.admitted.insert(best);
            ks.parked.insert(worst);
            moves.push((worst, false));
            moves.push((best, true));
        }
        // Its next wake: a token for a parked task, or a full bucket to forget.
        let wake = match (ks.rate, ks.idle()) {
            (Some(r), false) if !ks.parked.is_empty() && ks.tokens(now) == Some(allowance) => {
                // The next token comes when the debt has fallen to
                // (starts - tokens - 1) intervals; none while the bucket is full.
                (u64::from(r.starts).checked_sub(allowance + 1)).map(|n| {
                    Timestamp::from_micros(ks.tat.as_micros().saturating_sub(n * r.interval()))
                })
            }
            (Some(_), true) if ks.tat > now => Some(ks.tat),
            _ => None,
        };
        let forget = ks.idle() && ks.tat <= now;
        let old = std::mem::replace(&mut ks.timer, wake);
        if old != wake {
            if let Some(t) = old {
                self.limit_timers.remove(&(t, key.clone()));
            }
            if let Some(t) = wake {
                self.limit_timers.insert((t, key.clone()));
            }
        }
        if forget {
            self.keys.remove(key);
        }
        for (place, admit) in moves {
            let Some(class) = self.tasks.get(&place.2).map(|e| e.class) else {
                continue;
            };
            let ready = &mut self.classes[class.0 as usize].ready;
            if admit {
                ready.insert(place);
                // Admitted with no capable worker left meanwhile: its
                // dispatch timeout runs.
                self.on_queued(place.2, now);
            } else {
                ready.remove(&place);
            }
        }
    }

    /// Which classes can be dispatched changed (a queue paused or resumed,
    /// a worker came or went): every limited key lets through again what
    /// can run, and holds what cannot without counting it.
    pub(super) fn recheck_keys(&mut self, now: Timestamp) {
        if self.keys.is_empty() {
            return;
        }
        let (tasks, classes, queues) = (&self.tasks, &self.classes, &self.queues);
        let can_dispatch = |p: &Place| dispatchable(tasks, classes, queues, p);
        let mut demoted: Vec<Place> = Vec::new();
        for ks in self.keys.values_mut() {
            ks.parked.append(&mut ks.stalled);
            let stuck: Vec<Place> = ks
                .admitted
                .iter()
                .filter(|p| !can_dispatch(p))
                .copied()
                .collect();
            for p in stuck {
                ks.admitted.remove(&p);
                ks.stalled.insert(p);
                demoted.push(p);
            }
        }
        for p in demoted {
            if let Some(class) = self.tasks.get(&p.2).map(|e| e.class) {
                self.classes[class.0 as usize].ready.remove(&p);
            }
        }
        let keys: Vec<Arc<str>> = self.keys.keys().cloned().collect();
        for k in keys {
            self.settle_key(&k, now);
        }
    }

    /// Queued tasks of limited keys in classes no connected worker can run
    /// (for the dispatch timeout when the last capable worker went away).
    pub(super) fn held_without_worker(&self) -> Vec<TaskId> {
        self.keys
            .values()
            .flat_map(|ks| ks.parked.iter().chain(&ks.stalled).chain(&ks.admitted))
            .filter(|p| {
                self.tasks
                    .get(&p.2)
                    .is_some_and(|e| self.classes[e.class.0 as usize].capable.is_empty())
            })
            .map(|p| p.2)
            .collect()
    }

    /// Fires the limit timers due at `now`: tokens came due for parked
    /// tasks, or an idle key's bucket filled up.
    pub(super) fn tick_limits(&mut self, now: Timestamp) {
        while let Some((at, _)) = self.limit_timers.first() {
            if *at > now {
                break;
            }
            let Some((_, key)) = self.limit_timers.pop_first() else {
                break;
            };
            if let Some(ks) = self.keys.get_mut(&key) {
                ks.timer = None;
            }
            self.settle_key(&key, now);
        }
    }

    /// When a limit timer is next due.
    pub(super) fn next_limit_wake(&self) -> Option<Timestamp> {
        self.limit_timers.first().map(|(t, _)| *t)
    }

    /// The limits holding a queued task of `key` back (empty when it is
    /// admitted or its key is not limited).
    pub(super) fn key_gates(
        &self,
        key: &Arc<str>,
        place: &Place,
        now: Timestamp,
        gates: &mut Vec<super::Gate>,
    ) {
        let Some(ks) = self.keys.get(key) else {
            return;
        };
        if !ks.parked.contains(place) {
            return;
        }
        let tokens = ks.tokens(now);
        if let Some(limit) = ks.concurrency
            && u64::from(ks.running) + ks.admitted.len() as u64 >= u64::from(limit)
        {
            gates.push(super::Gate::ConcurrencyLimit {
                key: key.to_string(),
                running: ks.running,
                limit,
                ahead: ks.admitted.len(),
            });
        }
        if let (Some(rate), Some(t)) = (ks.rate, tokens)
            && ks.admitted.len() as u64 >= t
        {
            gates.push(super::Gate::RateLimit {
                key: key.to_string(),
                starts: rate.starts,
                per_ms: crate::duration_millis(rate.per),
                next_at: ks.timer,
            });
        }
    }

    /// Every limited key with tasks waiting or out (or a bucket still
    /// refilling), by key.
    pub fn key_limits(&self, now: Timestamp) -> Vec<KeyLimitView> {
        let mut out: Vec<KeyLimitView> = self
            .keys
            .iter()
            .map(|(k, ks)| KeyLimitView {
                key: k.to_string(),
                concurrency: ks.concurrency,
                rate: ks.rate,
                running: ks.running,
                admitted: ks.admitted.len(),
                held: ks.parked.len() + ks.stalled.len(),
                tokens: ks.tokens(now),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Keys the engine keeps limit state for, and (queue, key, priority)
    /// groups with queued tasks (for tests: both must fall back to none).
    pub fn limit_state_sizes(&self) -> (usize, usize) {
        (self.keys.len(), self.turns.groups())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(pattern: &str, c: Option<u32>, r: Option<(u32, u64)>) -> KeyLimit {
        KeyLimit {
            pattern: pattern.into(),
            concurrency: c,
            rate: r.map(|(starts, ms)| Rate {
                starts,
                per: Duration::from_millis(ms),
            }),
        }
    }

    #[test]
    fn the_closest_pattern_wins_for_each_kind_of_limit() {
        let limits = [
            lim("cust-*", Some(5), None),
            lim("cust-4*", Some(3), None),
            lim("cust-42", Some(1), None),
            lim("*", None, Some((10, 1000))),
        ];
        assert_eq!(resolve(&limits, "cust-42").0, Some(1));
        assert_eq!(resolve(&limits, "cust-43").0, Some(3));
        assert_eq!(resolve(&limits, "cust-7").0, Some(5));
        assert_eq!(resolve(&limits, "other"), (None, limits[3].rate));
        assert_eq!(resolve(&limits, "cust-7").1, limits[3].rate);
        assert_eq!(resolve(&limits[..3], "other"), (None, None));
    }

    #[test]
    fn bad_limits_are_refused_with_the_reason() {
        assert!(lim("a", Some(1), None).check().is_ok());
        assert!(lim("a*", None, Some((1, 1))).check().is_ok());
        let err = |l: KeyLimit| l.check().unwrap_err();
        assert!(err(lim("", Some(1), None)).contains("expected KEY or PREFIX*"));
        assert!(err(lim("a*b", Some(1), None)).contains("expected KEY or PREFIX*"));
        assert!(err(lim("a", Some(0), None)).contains("at least 1"));
        assert!(err(lim("a", None, Some((0, 1000)))).contains("at least 1 start"));
        assert!(err(lim("a", None, Some((1, 0)))).contains("non-zero period"));
        assert!(err(lim("a", None, None)).contains("set a concurrency"));
    }

    #[test]
    fn turns_alternate_between_groups_and_keep_fifo_within_one() {
        let mut t = Turns::default();
        let q: Arc<str> = Arc::from("q");
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let n = Priority::NORMAL;
        let ta: Vec<u64> = (0..5).map(|_| t.enter(&q, Some(&a), n)).collect();
        assert_eq!(ta, [1, 2, 3, 4, 5]);
        t.leave(&q, Some(&a), &(Reverse(n), 1, TaskId::from_u128(1)), true);
        let tb: Vec<u64> = (0..2).map(|_| t.enter(&q, Some(&b), n)).collect();
        assert_eq!(tb, [2, 3], "a new key starts where dispatch is");
        let none: Vec<u64> = (0..2).map(|_| t.enter(&q, None, n)).collect();
        assert_eq!(none, [2, 3], "tasks without a key are one group");
        // Another priority keeps its own clock: a high-priority task
        // dispatched with a late turn moves no one else's.
        let hi = t.enter(&q, Some(&a), Priority::HIGH);
        assert_eq!(hi, 1);
        t.leave(
            &q,
            Some(&a),
            &(Reverse(Priority::HIGH), 40, TaskId::from_u128(2)),
            true,
        );
        assert_eq!(t.enter(&q, Some(&Arc::from("c")), n), 2);
        assert_eq!(t.groups(), 4);
        for _ in 0..2 {
            t.leave(&q, Some(&b), &(Reverse(n), 0, TaskId::from_u128(3)), false);
        }
        assert_eq!(t.groups(), 3, "b is forgotten once it has none queued");
    }
}
