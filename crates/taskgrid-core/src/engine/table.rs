//! The task table: every entry the engine holds, stored densely.
//!
//! A `HashMap<TaskId, Entry>` keeps whole entries in its slots and runs at
//! 50–87 % load, so up to half its memory is empty slots of entry size. Here
//! the map holds only an index and the entries sit packed in fixed-size
//! chunks (removal swaps the last entry into the hole), which keeps a queued
//! task well under 1 KiB.
//!
//! Chunks rather than one `Vec`: a `Vec` that doubles copies every entry
//! into memory the process has never touched, under the engine's lock, and
//! holds the old and the new buffer at once (crossing 524,288 tasks, 320 MiB
//! copied: a submit stalled 0.66–0.85 s on a 2-vCPU VM), while a new chunk
//! only adds [`CHUNK`] entries' worth.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::TaskId;

use super::Entry;

/// Hashes a [`TaskId`] with one multiply. Ids are minted by the shell
/// (UUIDv7: time and random bits), never chosen by clients, so a keyed
/// hash buys nothing here and SipHash cost ~4 % of dispatch time.
#[derive(Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(29) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
}

/// A map keyed by task id.
pub(super) type IdMap<V> = HashMap<TaskId, V, BuildHasherDefault<IdHasher>>;

/// A set of task ids.
pub(super) type IdSet = HashSet<TaskId, BuildHasherDefault<IdHasher>>;

/// Entries per chunk: as many as fit in 64 KiB (102 of today's 640-byte
/// entries, about ten thousand chunks at a million tasks). Measured with
/// `scripts/mem-queued.sh` at a million queued tasks: chunks of this size
/// leave the server as resident as one `Vec` did, while half-MiB and 2 MiB
/// chunks left 2–6 % more per task with the allocator in use (mimalloc).
pub(super) const CHUNK: usize = (64 * 1024) / std::mem::size_of::<Entry>();
const _: () = assert!(CHUNK > 1, "an entry outgrew the table's chunks");

/// The index's maps.
const SHARDS: usize = 16;

/// How many of the 1,024 values of an id's low ten bits (random in a
/// UUIDv7) send it to each map: shares growing by 2^(1/16) from one map to
/// the next. Equal shares would fill every map in step, so all sixteen
/// grew at the same table size (one batch of 5,000 submits at ~917,000
/// tasks did all the rehashing); these spread the maps' growth points
/// evenly over each doubling of the table, one map (~1/16 of it) at a time.
const SHARE: [u16; SHARDS] = [
    45, 47, 49, 52, 54, 56, 59, 61, 64, 67, 70, 73, 76, 80, 83, 88,
];

/// The map of each value of an id's low ten bits, from [`SHARE`].
const SHARD_OF: [u8; 1024] = {
    let mut of = [0u8; 1024];
    let (mut shard, mut i) = (0, 0);
    while shard < SHARDS {
        let mut n = 0;
        while n < SHARE[shard] {
            of[i] = shard as u8;
            i += 1;
            n += 1;
        }
        shard += 1;
    }
    assert!(i == 1024, "the shares cover every value");
    of
};

#[derive(Debug, Default)]
pub(super) struct Table {
    /// Where each entry is, in [`SHARDS`] maps chosen by the id's low
    /// bits ([`SHARD_OF`]), so that a map's growth rehashes about a
    /// sixteenth of the table at a time (one map of a million ids took
    /// ~0.15 s to grow, under the engine's lock).
    index: [IdMap<u32>; SHARDS],
    /// Every chunk is full but the last, which is never empty (an emptied
    /// one becomes the spare), so entry `i` is `chunks[i / CHUNK][i % CHUNK]`.
    chunks: Vec<Vec<Entry>>,
    /// The last chunk emptied, kept for the next one needed, so that a
    /// table that goes back and forth across a chunk's edge does not
    /// allocate and free a chunk each time.
    spare: Option<Vec<Entry>>,
}

impl Table {
    fn shard(&self, id: &TaskId) -> &IdMap<u32> {
        &self.index[usize::from(SHARD_OF[id.as_u128() as usize % 1024])]
    }

    fn shard_mut(&mut self, id: &TaskId) -> &mut IdMap<u32> {
        &mut self.index[usize::from(SHARD_OF[id.as_u128() as usize % 1024])]
    }

    /// The number of entries.
    fn len(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |last| (self.chunks.len() - 1) * CHUNK + last.len())
    }

    fn at(&self, i: u32) -> &Entry {
        let i = i as usize;
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    fn at_mut(&mut self, i: u32) -> &mut Entry {
        let i = i as usize;
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    pub(super) fn get(&self, id: &TaskId) -> Option<&Entry> {
        self.shard(id).get(id).map(|&i| self.at(i))
    }

    pub(super) fn get_mut(&mut self, id: &TaskId) -> Option<&mut Entry> {
        let i = *self.shard(id).get(id)?;
        Some(self.at_mut(i))
    }

    pub(super) fn contains_key(&self, id: &TaskId) -> bool {
        self.shard(id).contains_key(id)
    }

    pub(super) fn insert(&mut self, id: TaskId, entry: Entry) {
        debug_assert_eq!(id, entry.rec.id);
        match self.shard(&id).get(&id) {
            Some(&i) => *self.at_mut(i) = entry,
            None => {
                let i = u32::try_from(self.len()).expect("fewer than 4 billion live tasks");
                match self.chunks.last_mut() {
                    Some(last) if last.len() < CHUNK => last.push(entry),
                    _ => {
                        let mut chunk = self
                            .spare
                            .take()
                            .unwrap_or_else(|| Vec::with_capacity(CHUNK));
                        chunk.push(entry);
                        self.chunks.push(chunk);
                    }
                }
                self.shard_mut(&id).insert(id, i);
            }
        }
    }

    pub(super) fn remove(&mut self, id: &TaskId) -> Option<Entry> {
        let i = self.shard_mut(id).remove(id)?;
        // The index held it, so the table is not empty.
        let last = self
            .chunks
            .last_mut()
            .and_then(Vec::pop)
            .expect("an indexed entry is in a chunk");
        if self.chunks.last().is_some_and(Vec::is_empty) {
            self.spare = self.chunks.pop();
        }
        if i as usize == self.len() {
            // It was the last entry.
            return Some(last);
        }
        // The last entry fills the hole.
        let moved = last.rec.id;
        self.shard_mut(&moved).insert(moved, i);
        Some(std::mem::replace(self.at_mut(i), last))
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.chunks.iter().flatten()
    }

    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (&TaskId, &Entry)> {
        self.values().map(|e| (&e.rec.id, e))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::engine::ClassId;
    use crate::{State, TaskKind, TaskRecord, TaskSpec, TaskStatus, Timestamp};

    fn entry(n: u128) -> Entry {
        Entry {
            rec: TaskRecord {
                id: TaskId::from_u128(n),
                spec: TaskSpec::new(TaskKind::handler("noop", "")),
                created_at: Timestamp::from_micros(1),
                status: TaskStatus::new(State::Queued),
                progress: None,
                checkpoint: None,
            },
            class: ClassId(0),
            seq: n as u64,
            waiting_on: 0,
            passed_by: None,
            dispatch_deadline: None,
        }
    }

    /// Checks the table against the ids it should hold.
    fn holds(t: &Table, live: &HashSet<u128>) {
        assert_eq!(t.len(), live.len());
        assert_eq!(t.values().count(), live.len());
        assert_eq!(t.index.iter().map(IdMap::len).sum::<usize>(), live.len());
        assert_eq!(t.chunks.len(), live.len().div_ceil(CHUNK));
        for (i, c) in t.chunks.iter().enumerate() {
            assert!(c.capacity() == CHUNK, "chunk {i} was reallocated");
            assert!(!c.is_empty(), "chunk {i} is empty");
        }
        for &n in live {
            let e = t.get(&TaskId::from_u128(n)).expect("a live id is found");
            assert_eq!((e.rec.id, e.seq), (TaskId::from_u128(n), n as u64));
        }
        let seen: HashSet<u128> = t.values().map(|e| e.rec.id.as_u128()).collect();
        assert_eq!(&seen, live);
    }

    #[test]
    fn entries_stay_findable_across_chunk_edges_as_they_come_and_go() {
        let mut t = Table::default();
        let mut live = HashSet::new();
        // Three chunks and a bit.
        for n in 0..(3 * CHUNK as u128 + 5) {
            t.insert(TaskId::from_u128(n), entry(n));
            live.insert(n);
        }
        holds(&t, &live);
        // Replacing keeps the place.
        let mut again = entry(7);
        again.waiting_on = 9;
        t.insert(TaskId::from_u128(7), again);
        assert_eq!(t.get(&TaskId::from_u128(7)).map(|e| e.waiting_on), Some(9));
        // A stride through the middle chunks, the last entry itself, and
        // from the front (each hole filled from the end): back across
        // chunk edges to less than two chunks.
        let chunk = CHUNK as u128;
        let mut order: Vec<u128> = (chunk / 2..3 * chunk).step_by(3).collect();
        order.push(3 * chunk + 4);
        order.extend((0..chunk / 2).chain(3 * chunk..3 * chunk + 4));
        for n in order {
            let e = t
                .remove(&TaskId::from_u128(n))
                .expect("a live id is removed");
            assert_eq!(e.rec.id, TaskId::from_u128(n));
            live.remove(&n);
            assert!(t.remove(&TaskId::from_u128(n)).is_none());
            assert!(!t.contains_key(&TaskId::from_u128(n)));
        }
        holds(&t, &live);
        assert!((CHUNK..2 * CHUNK).contains(&live.len()));
        // Back and forth across an edge reuses the spare chunk.
        let edge = live.len() % CHUNK;
        let extra = (CHUNK - edge + 1) as u128;
        let mut spare = None;
        for round in 0..3u128 {
            let base = 1_000_000 * (round + 1);
            for n in base..base + extra {
                t.insert(TaskId::from_u128(n), entry(n));
                live.insert(n);
            }
            holds(&t, &live);
            let last = t.chunks.last().map(|c| c.as_ptr());
            if spare.is_some() {
                assert_eq!(last, spare, "a new chunk was allocated beside the spare");
            }
            for n in base..base + extra {
                assert!(t.remove(&TaskId::from_u128(n)).is_some());
                live.remove(&n);
            }
            holds(&t, &live);
            spare = t.spare.as_ref().map(|c| c.as_ptr());
            assert_eq!(spare, last, "the emptied chunk is kept");
        }
        // Down to nothing and up again.
        for n in live.drain().collect::<Vec<_>>() {
            assert!(t.remove(&TaskId::from_u128(n)).is_some());
        }
        holds(&t, &live);
        t.insert(TaskId::from_u128(5), entry(5));
        live.insert(5);
        holds(&t, &live);
    }

    #[test]
    fn the_index_maps_take_unequal_shares_so_they_grow_one_at_a_time() {
        let mut t = Table::default();
        // Sequential ids: each value of the low ten bits twenty times.
        for n in 0..20 * 1024 {
            t.insert(TaskId::from_u128(n), entry(n));
        }
        let sizes: Vec<usize> = t.index.iter().map(IdMap::len).collect();
        let want: Vec<usize> = SHARE.iter().map(|&s| 20 * usize::from(s)).collect();
        assert_eq!(sizes, want);
        // No two maps reach a growth point at the same table size: their
        // shares differ, each by at least 2 %.
        for pair in SHARE.windows(2) {
            assert!(
                pair[1] > pair[0] && u32::from(pair[1]) * 100 >= u32::from(pair[0]) * 102,
                "{pair:?}"
            );
        }
        // And they span one doubling: the largest share under twice the smallest.
        assert!(SHARE[SHARDS - 1] < 2 * SHARE[0]);
    }
}
