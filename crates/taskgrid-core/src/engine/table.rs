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

#[derive(Debug, Default)]
pub(super) struct Table {
    /// Where each entry is, in [`SHARDS`] maps chosen by the id's low
    /// bits (random in a UUIDv7), so that a map's growth rehashes a
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
    /// The number of entries.
    len: usize,
}

impl Table {
    fn shard(&self, id: &TaskId) -> &IdMap<u32> {
        &self.index[id.as_u128() as usize % SHARDS]
    }

    fn shard_mut(&mut self, id: &TaskId) -> &mut IdMap<u32> {
        &mut self.index[id.as_u128() as usize % SHARDS]
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
                let i = u32::try_from(self.len).expect("fewer than 4 billion live tasks");
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
                self.len += 1;
                self.shard_mut(&id).insert(id, i);
            }
        }
    }

    pub(super) fn remove(&mut self, id: &TaskId) -> Option<Entry> {
        let i = self.shard_mut(id).remove(id)?;
        let last = self.chunks.last_mut()?.pop()?;
        self.len -= 1;
        if self.chunks.last().is_some_and(Vec::is_empty) {
            self.spare = self.chunks.pop();
        }
        if i as usize == self.len {
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
        assert_eq!(t.len, live.len());
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
        assert!(
            t.index.iter().all(|m| !m.is_empty()),
            "the index is not spread"
        );
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
}
