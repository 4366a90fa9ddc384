//! Several group commits in flight, for a store with more than one lane
//! ([`Store::lanes`]): while one group is written (on PostgreSQL, run by
//! one server process on one core), the next is written beside it on
//! another connection, and each commits only once every group taken
//! before it has committed and been reported.
//!
//! - **Leader.** One lane at a time waits on the queue; when a commit is
//!   due it takes what is queued, splits it into one group per free lane
//!   (about equal in changes, at batch boundaries), keeps the first,
//!   hands the rest to idle lanes, lets another idle lane lead and
//!   commits its own: the thread a batch wakes commits it, with no hand-off
//!   on the way (at light load, one group at a time, as with one lane).
//! - **Order.** Groups are taken from the queue in submission order and
//!   numbered (tickets); a group commits and reports in its ticket's turn
//!   ([`Store::apply_when`]), so callbacks keep submission order and what
//!   the store holds after a crash is always a prefix of what was
//!   submitted, as with one lane.
//! - **Disjoint.** A group starts only if it touches no task that a group
//!   in flight touches: it writes on a snapshot that cannot see the
//!   earlier group's uncommitted rows, so it must not need them (a task
//!   submitted in one and assigned in the next waits for the first).
//!   Changes of no task but audit entries (queues, schedules, fires, meta,
//!   audit retention) make a group start alone, with nothing beside it.
//! - **Failure.** Under fail-stop, a failed group stops the writer: a
//!   later group in flight is rolled back in its turn and reported
//!   [`StoreError::Closed`], like the batches still queued. A lane that
//!   panics stops the writer the same way.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;

use taskgrid_core::{Change, TaskId};

use super::{
    Job, Path, Queue, close, commit, commit_or_stop, lock, mark_writer_thread, refuse, report,
    requeue, take,
};
use crate::{Store, StoreError, Turn};

/// What a group touches.
#[derive(Debug, PartialEq)]
pub(super) enum Touches {
    /// Something shared (a queue, a schedule, a meta key…): it runs alone.
    All,
    /// Only these tasks (and audit entries, which nothing else writes).
    Tasks(HashSet<TaskId>),
}

impl Touches {
    /// What `changes` touch.
    pub(super) fn of<'a>(changes: impl IntoIterator<Item = &'a Change>) -> Touches {
        let mut tasks = HashSet::new();
        for change in changes {
            match change.task_id() {
                Some(id) => {
                    tasks.insert(id);
                }
                None if matches!(change, Change::Audit(_)) => {}
                None => return Touches::All,
            }
        }
        Touches::Tasks(tasks)
    }

    /// Adds what `other` touches.
    fn merge(&mut self, other: Touches) {
        match (&mut *self, other) {
            (Touches::Tasks(a), Touches::Tasks(b)) => a.extend(b),
            (this, _) => *this = Touches::All,
        }
    }

    fn overlaps(&self, other: &Touches) -> bool {
        match (self, other) {
            (Touches::Tasks(a), Touches::Tasks(b)) => {
                let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
                small.iter().any(|id| large.contains(id))
            }
            _ => true,
        }
    }
}

/// The groups in flight (of a writer with lanes; kept in its queue).
#[derive(Default)]
pub(super) struct Flight {
    state: Mutex<FlightState>,
    changed: Condvar,
}

#[derive(Default)]
struct FlightState {
    /// The ticket whose turn it is: every earlier one is finished.
    turn: u64,
    /// The next ticket to give.
    next: u64,
    /// Tickets finished before their turn (a lane that panicked early).
    finished: BTreeSet<u64>,
    /// What each group in flight touches, by ticket.
    touching: Vec<(u64, Touches)>,
    /// The first ticket that failed under fail-stop (or whose lane
    /// panicked): no later group commits.
    stopped_at: Option<u64>,
    /// Groups the leader took for other lanes, in ticket order.
    handed: VecDeque<Group>,
    /// A lane leads: it alone waits on the queue and takes from it.
    leading: bool,
    /// The writer shut down and its queue is empty: lanes end once
    /// nothing is handed to them.
    drained: bool,
    /// How many times a group waited for one it overlaps, and for its
    /// turn (for tests to know a lane is blocked).
    #[cfg(test)]
    waits: (usize, usize),
}

/// What an idle lane does next.
enum Work {
    /// Commit a group the leader handed over.
    Group(Group),
    /// Lead: wait on the queue and take from it.
    Lead,
    /// Nothing more: the writer shut down or stopped.
    End,
}

impl FlightState {
    fn stopped(&self) -> bool {
        self.stopped_at.is_some()
    }

    /// Whether a group before `ticket` stopped the writer.
    fn stopped_before(&self, ticket: u64) -> bool {
        self.stopped_at.is_some_and(|at| at < ticket)
    }
}

impl Flight {
    fn wait<'a>(&self, st: MutexGuard<'a, FlightState>) -> MutexGuard<'a, FlightState> {
        self.changed
            .wait(st)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// What this idle lane does next: a group handed to it, else lead if
    /// no lane does, else wait for either.
    fn next_work(&self) -> Work {
        let mut st = lock(&self.state);
        loop {
            if let Some(group) = st.handed.pop_front() {
                return Work::Group(group);
            }
            if st.drained || st.stopped() {
                return Work::End;
            }
            if !st.leading {
                st.leading = true;
                return Work::Lead;
            }
            st = self.wait(st);
        }
    }

    /// How many of `lanes` lanes have no group in flight.
    fn free(&self, lanes: usize) -> usize {
        lanes.saturating_sub(lock(&self.state).touching.len())
    }

    /// The leader hands `groups` to the idle lanes and steps down (with
    /// `drained`, for good).
    fn hand_over(&self, groups: Vec<Group>, drained: bool) {
        let mut st = lock(&self.state);
        st.handed.extend(groups);
        st.leading = false;
        st.drained |= drained;
        drop(st);
        self.changed.notify_all();
    }

    /// Waits until no group in flight overlaps `touches`, then gives the
    /// group its ticket; `None` once the writer stopped.
    fn start(&self, touches: Touches) -> Option<u64> {
        let mut st = lock(&self.state);
        #[cfg(test)]
        if st.touching.iter().any(|(_, t)| t.overlaps(&touches)) {
            st.waits.0 += 1;
        }
        while st.touching.iter().any(|(_, t)| t.overlaps(&touches)) && !st.stopped() {
            st = self.wait(st);
        }
        if st.stopped() {
            return None;
        }
        let ticket = st.next;
        st.next += 1;
        st.touching.push((ticket, touches));
        Some(ticket)
    }

    /// Waits for `ticket`'s turn; [`StoreError::Closed`] if an earlier
    /// group stopped the writer.
    fn turn(&self, ticket: u64) -> Result<(), StoreError> {
        let mut st = lock(&self.state);
        #[cfg(test)]
        if st.turn < ticket {
            st.waits.1 += 1;
        }
        while st.turn < ticket {
            st = self.wait(st);
        }
        if st.stopped_before(ticket) {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    /// Whether it is `ticket`'s turn already, with no earlier group
    /// having stopped the writer: [`turn`](Self::turn) would return `Ok`
    /// at once.
    fn is_turn(&self, ticket: u64) -> bool {
        let st = lock(&self.state);
        st.turn >= ticket && !st.stopped_before(ticket)
    }

    /// How many times a group waited for one it overlaps, and for its
    /// turn.
    #[cfg(test)]
    pub(super) fn waits(&self) -> (usize, usize) {
        lock(&self.state).waits
    }

    /// `ticket` is finished (committed or failed, and reported): the next
    /// one's turn once every earlier one is finished too. With `stop`, no
    /// later group commits.
    fn finish(&self, ticket: u64, stop: bool) {
        let mut st = lock(&self.state);
        st.touching.retain(|(t, _)| *t != ticket);
        if stop {
            st.stopped_at = Some(st.stopped_at.map_or(ticket, |at| at.min(ticket)));
        }
        st.finished.insert(ticket);
        loop {
            let turn = st.turn;
            if !st.finished.remove(&turn) {
                break;
            }
            st.turn += 1;
        }
        drop(st);
        self.changed.notify_all();
    }
}

/// A lane's group's turn: its ticket's.
struct LaneTurn<'a> {
    flight: &'a Flight,
    ticket: u64,
}

impl Turn for LaneTurn<'_> {
    fn wait(&self) -> Result<(), StoreError> {
        self.flight.turn(self.ticket)
    }

    fn now(&self) -> bool {
        self.flight.is_turn(self.ticket)
    }
}

/// A group handed to a lane.
struct Group {
    ticket: u64,
    jobs: Vec<Job>,
    total: usize,
}

/// The writer thread with `lanes` lanes: it is one of them, and starts
/// the others. One lane at a time leads: it waits on the queue, takes
/// what is due, splits it into a group per free lane, keeps the first
/// and hands the others over, steps down (another idle lane leads) and
/// commits its group. So the thread a batch wakes is the one that commits
/// it, as with one lane. Once shut down or stopped, the lanes finish
/// what they hold and what is still queued is reported closed.
pub(super) fn run(store: &dyn Store, queue: &Queue, fail_stop: bool, lanes: usize) {
    let flight = &queue.flight;
    thread::scope(|scope| {
        for n in 1..lanes {
            let spawned = thread::Builder::new()
                .name(format!("taskgrid-store-lane-{n}"))
                .spawn_scoped(scope, move || lane(store, queue, flight, fail_stop, lanes));
            if let Err(e) = spawned {
                // Fewer lanes: a group handed over waits for one that is.
                tracing::error!(error = %e, "cannot start a store writer lane");
            }
        }
        lane(store, queue, flight, fail_stop, lanes);
    });
    // Whatever is still queued was submitted after every group taken.
    for job in close(queue) {
        report(job.done, Err(StoreError::Closed));
    }
}

/// The leader's turn at the queue: waits for what is due, takes it,
/// gives each of its groups a ticket, hands all but the first to the
/// idle lanes and steps down; the first group, if any, is this lane's.
fn lead(queue: &Queue, flight: &Flight, lanes: usize) -> Option<Group> {
    // This lane is free, and any other lane without a group in flight.
    let free = flight.free(lanes).max(1);
    let Some((jobs, _)) = take(queue) else {
        flight.hand_over(Vec::new(), true);
        return None;
    };
    let mut groups = Vec::new();
    let mut refused = Vec::new();
    for Part {
        jobs,
        changes,
        touches,
    } in split(jobs, free)
    {
        match flight.start(touches) {
            Some(ticket) => groups.push(Group {
                ticket,
                jobs,
                total: changes,
            }),
            // Stopped: these were submitted after what failed, and are
            // reported closed once every group in flight has reported.
            None => refused.extend(jobs),
        }
    }
    requeue(queue, refused);
    let mut groups = groups.into_iter();
    let mine = groups.next();
    flight.hand_over(groups.collect(), false);
    mine
}

/// Batches taken together, as one group will hold them.
struct Part {
    jobs: Vec<Job>,
    /// Their changes.
    changes: usize,
    touches: Touches,
}

impl Part {
    fn of(job: Job, touches: Touches) -> Part {
        Part {
            changes: job.changes.len(),
            jobs: vec![job],
            touches,
        }
    }

    /// Adds `other`'s batches after these.
    fn absorb(&mut self, other: Part) {
        self.jobs.extend(other.jobs);
        self.changes += other.changes;
        self.touches.merge(other.touches);
    }
}

/// The batches taken at once, as up to `parts` groups of about equal
/// size, in order, each with what it touches: one per free lane, so that
/// a large take is written by several lanes at once. A batch that
/// overlaps a group joins it, with every group after it (so no group
/// waits for another of the same take).
fn split(jobs: Vec<Job>, parts: usize) -> Vec<Part> {
    let total: usize = jobs.iter().map(|j| j.changes.len()).sum();
    let target = total.div_ceil(parts.max(1)).max(1);
    let mut groups: Vec<Part> = Vec::new();
    for job in jobs {
        let touches = Touches::of(&job.changes);
        let part = Part::of(job, touches);
        if let Some(i) = groups
            .iter()
            .position(|g| g.touches.overlaps(&part.touches))
        {
            for later in groups.split_off(i + 1) {
                groups[i].absorb(later);
            }
            groups[i].absorb(part);
            continue;
        }
        let full = groups.len() >= parts;
        match groups.last_mut() {
            Some(last) if full || last.changes < target => last.absorb(part),
            _ => groups.push(part),
        }
    }
    groups
}

/// One lane of `lanes`: leads or commits a group handed to it, each in
/// its turn, until there is nothing more.
fn lane(store: &dyn Store, queue: &Queue, flight: &Flight, fail_stop: bool, lanes: usize) {
    mark_writer_thread(queue);
    loop {
        let Group {
            ticket,
            jobs,
            total,
        } = match flight.next_work() {
            Work::Group(group) => group,
            Work::Lead => match lead(queue, flight, lanes) {
                Some(group) => group,
                None => continue,
            },
            Work::End => return,
        };
        // However this ends, the ticket is finished, so the lanes after
        // it do not wait for ever; a panic stops the writer.
        let mut finished = Finished {
            flight,
            queue,
            ticket,
            stop: true,
        };
        let path = Path {
            store,
            turn: &LaneTurn { flight, ticket },
            report_queued: false,
        };
        if fail_stop {
            finished.stop = !commit_or_stop(&path, queue, jobs, total);
        } else {
            commit(&path, jobs, total);
            finished.stop = false;
        }
    }
}

/// Finishes a lane's ticket when dropped: after its group is reported, or
/// while it unwinds from a panic (then stopping the writer: it refuses
/// new batches, and its own dropped ones read as closed to their
/// waiters).
struct Finished<'a> {
    flight: &'a Flight,
    queue: &'a Queue,
    ticket: u64,
    stop: bool,
}

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        if self.stop && thread::panicking() {
            refuse(self.queue);
        }
        self.flight.finish(self.ticket, self.stop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{Life, submit, task, tid};

    #[test]
    fn a_turn_has_come_once_every_earlier_group_finished_and_none_stopped() {
        let flight = Flight::default();
        let one = |n| Touches::Tasks([tid(n)].into_iter().collect());
        let (a, b, c) = (
            flight.start(one(1)).unwrap(),
            flight.start(one(2)).unwrap(),
            flight.start(one(3)).unwrap(),
        );
        assert!(flight.is_turn(a));
        assert!(!flight.is_turn(b) && !flight.is_turn(c));
        // Finished out of order: c's turn waits for b.
        flight.finish(c, false);
        assert!(!flight.is_turn(b));
        flight.finish(a, false);
        assert!(flight.is_turn(b));
        // b stopped the writer: a later group's turn never comes.
        flight.finish(b, true);
        assert!(matches!(flight.turn(c), Err(StoreError::Closed)));
        assert!(!flight.is_turn(c));
    }

    #[test]
    fn a_group_touches_its_tasks_and_audit_entries_touch_nothing_shared() {
        let mut life = Life::of(&task(1));
        let changes = vec![submit(task(1)), life.assign("w", 1), submit(task(2))];
        assert_eq!(
            Touches::of(&changes),
            Touches::Tasks([tid(1), tid(2)].into_iter().collect())
        );
        let meta = Change::Meta {
            key: "k".into(),
            value: "v".into(),
        };
        assert_eq!(Touches::of([&changes[0], &meta]), Touches::All);
        assert_eq!(Touches::of([]), Touches::Tasks(HashSet::new()));
    }

    fn job(changes: Vec<Change>) -> Job {
        Job {
            changes,
            done: None,
            by: std::time::Instant::now(),
        }
    }

    /// The tasks of each group `split` makes.
    fn split_ids(jobs: Vec<Job>, parts: usize) -> Vec<Vec<TaskId>> {
        split(jobs, parts)
            .into_iter()
            .map(
                |Part {
                     jobs, changes: n, ..
                 }| {
                    let ids: Vec<TaskId> = jobs
                        .iter()
                        .flat_map(|j| &j.changes)
                        .filter_map(Change::task_id)
                        .collect();
                    assert_eq!(n, jobs.iter().map(|j| j.changes.len()).sum::<usize>());
                    ids
                },
            )
            .collect()
    }

    #[test]
    fn a_take_splits_into_groups_of_about_equal_size_that_share_no_task() {
        let one = || job(vec![submit(task(1)), Life::of(&task(1)).assign("w", 1)]);
        let other = |n| job(vec![submit(task(n))]);
        assert_eq!(
            split_ids(vec![one(), other(2), other(3)], 2),
            [vec![tid(1), tid(1)], vec![tid(2), tid(3)]]
        );
        assert_eq!(
            split_ids(vec![one(), other(2)], 1),
            [vec![tid(1), tid(1), tid(2)]]
        );
        // Task 1 again: the groups from the first with it on become one.
        let again = job(vec![Life::of(&task(1)).assign("w", 2)]);
        assert_eq!(
            split_ids(vec![one(), other(2), again], 2),
            [vec![tid(1), tid(1), tid(2), tid(1)]]
        );
        // Something shared joins everything before it.
        let meta = job(vec![Change::Meta {
            key: "k".into(),
            value: "v".into(),
        }]);
        assert_eq!(split_ids(vec![one(), other(2), meta, other(3)], 3).len(), 1);
        assert!(split(Vec::new(), 2).is_empty());
    }

    #[test]
    fn groups_overlap_when_they_share_a_task_or_either_is_shared() {
        let one = Touches::of(&[submit(task(1))]);
        let two = Touches::of(&[submit(task(2))]);
        let both = Touches::of(&[submit(task(1)), submit(task(2))]);
        assert!(!one.overlaps(&two));
        assert!(one.overlaps(&both) && both.overlaps(&two));
        assert!(Touches::All.overlaps(&Touches::Tasks(HashSet::new())));
        assert!(!Touches::Tasks(HashSet::new()).overlaps(&one));
    }
}
