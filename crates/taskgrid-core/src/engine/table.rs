//! The task table: every entry the engine holds, stored densely.
//!
//! A `HashMap<TaskId, Entry>` keeps whole entries in its slots and runs at
//! 50–87 % load, so up to half its memory is empty slots of entry size. Here
//! the map holds only an index and the entries sit packed in a `Vec`
//! (removal swaps the last entry into the hole), which keeps a queued task
//! well under 1 KiB.

use std::collections::HashMap;
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

#[derive(Debug, Default)]
pub(super) struct Table {
    index: IdMap<u32>,
    entries: Vec<Entry>,
}

impl Table {
    pub(super) fn get(&self, id: &TaskId) -> Option<&Entry> {
        self.index.get(id).map(|&i| &self.entries[i as usize])
    }

    pub(super) fn get_mut(&mut self, id: &TaskId) -> Option<&mut Entry> {
        self.index.get(id).map(|&i| &mut self.entries[i as usize])
    }

    pub(super) fn contains_key(&self, id: &TaskId) -> bool {
        self.index.contains_key(id)
    }

    pub(super) fn insert(&mut self, id: TaskId, entry: Entry) {
        debug_assert_eq!(id, entry.rec.id);
        match self.index.get(&id) {
            Some(&i) => self.entries[i as usize] = entry,
            None => {
                let i = u32::try_from(self.entries.len()).expect("fewer than 4 billion live tasks");
                self.entries.push(entry);
                self.index.insert(id, i);
            }
        }
    }

    pub(super) fn remove(&mut self, id: &TaskId) -> Option<Entry> {
        let i = self.index.remove(id)? as usize;
        let entry = self.entries.swap_remove(i);
        if let Some(moved) = self.entries.get(i) {
            self.index.insert(moved.rec.id, i as u32);
        }
        Some(entry)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (&TaskId, &Entry)> {
        self.entries.iter().map(|e| (&e.rec.id, e))
    }
}
