//! The bounded client store: a slab of client states, a hash table over their keys, a
//! least-recently-used list, idle-TTL and capacity eviction, split by key and snapshots.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};
use serde::{Deserialize, Serialize};

use crate::sketch::part_of;
use crate::state::ClientState;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Entry {
    key: Box<str>,
    state: ClientState,
    /// Towards the most recently used end.
    newer: u32,
    /// Towards the least recently used end.
    older: u32,
}

/// Why clients left the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evictions {
    /// Idle longer than the TTL.
    pub idle: u64,
    /// Least recently used when the store was full.
    pub capacity: u64,
}

/// Client states by key, bounded in count and idle time.
#[derive(Debug, Clone)]
pub struct ClientStore {
    hasher: DefaultHashBuilder,
    table: HashTable<u32>,
    slab: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    len: usize,
    cap: usize,
    ttl_ms: i64,
    /// Evictions so far.
    pub evictions: Evictions,
    /// Clients created so far.
    pub created: u64,
}

impl ClientStore {
    /// An empty store for at most `cap` clients idle at most `ttl_ms`.
    pub fn new(cap: usize, ttl_ms: i64) -> Self {
        Self {
            hasher: DefaultHashBuilder::default(),
            table: HashTable::new(),
            slab: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            len: 0,
            cap,
            ttl_ms,
            evictions: Evictions::default(),
            created: 0,
        }
    }

    /// Clients tracked now.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Sets the capacity, evicting the least recently used clients beyond it (counted).
    pub(crate) fn set_capacity(&mut self, cap: usize) {
        self.cap = cap;
        while self.len > self.cap && self.tail != NIL {
            let t = self.tail;
            self.remove(t);
            self.evictions.capacity += 1;
        }
    }

    /// The idle TTL (ms).
    pub fn ttl_ms(&self) -> i64 {
        self.ttl_ms
    }

    fn entry(&self, i: u32) -> &Entry {
        self.slab[i as usize]
            .as_ref()
            .expect("linked slot is occupied")
    }

    fn entry_mut(&mut self, i: u32) -> &mut Entry {
        self.slab[i as usize]
            .as_mut()
            .expect("linked slot is occupied")
    }

    fn unlink(&mut self, i: u32) {
        let (newer, older) = {
            let e = self.entry(i);
            (e.newer, e.older)
        };
        if newer == NIL {
            self.head = older;
        } else {
            self.entry_mut(newer).older = older;
        }
        if older == NIL {
            self.tail = newer;
        } else {
            self.entry_mut(older).newer = newer;
        }
    }

    fn push_front(&mut self, i: u32) {
        let old_head = self.head;
        {
            let e = self.entry_mut(i);
            e.newer = NIL;
            e.older = old_head;
        }
        if old_head != NIL {
            self.entry_mut(old_head).newer = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    fn remove(&mut self, i: u32) -> Entry {
        self.unlink(i);
        let hash = self.hasher.hash_one(&*self.entry(i).key);
        if let Ok(found) = self.table.find_entry(hash, |&j| j == i) {
            found.remove();
        }
        self.free.push(i);
        self.len -= 1;
        self.slab[i as usize]
            .take()
            .expect("removed slot was occupied")
    }

    /// Evicts clients idle for longer than the TTL at event time `now`.
    pub fn expire(&mut self, now: i64) {
        while self.tail != NIL
            && now.saturating_sub(self.entry(self.tail).state.last_ts()) > self.ttl_ms
        {
            let t = self.tail;
            self.remove(t);
            self.evictions.idle += 1;
        }
    }

    /// The state of `key`, created (evicting the least recently used client when full) if new,
    /// and marked most recently used. `now` is the event time (new clients start there).
    pub fn get_or_insert(&mut self, key: &str, now: i64) -> &mut ClientState {
        let hash = self.hasher.hash_one(key);
        let slab = &self.slab;
        let found = self
            .table
            .find(hash, |&j| {
                slab[j as usize].as_ref().is_some_and(|e| &*e.key == key)
            })
            .copied();
        let i = match found {
            Some(i) => {
                if self.head != i {
                    self.unlink(i);
                    self.push_front(i);
                }
                i
            }
            None => {
                if self.len >= self.cap && self.tail != NIL {
                    let t = self.tail;
                    self.remove(t);
                    self.evictions.capacity += 1;
                }
                self.created += 1;
                self.insert_front(key.into(), ClientState::new(now), hash)
            }
        };
        &mut self.entry_mut(i).state
    }

    fn insert_front(&mut self, key: Box<str>, state: ClientState, hash: u64) -> u32 {
        let entry = Entry {
            key,
            state,
            newer: NIL,
            older: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(entry);
                i
            }
            None => {
                self.slab.push(Some(entry));
                (self.slab.len() - 1) as u32
            }
        };
        let hasher = &self.hasher;
        let slab = &self.slab;
        self.table.insert_unique(hash, i, |&j| {
            hasher.hash_one(
                &*slab[j as usize]
                    .as_ref()
                    .expect("indexed slot is occupied")
                    .key,
            )
        });
        self.len += 1;
        self.push_front(i);
        i
    }

    /// The state of a key, if tracked (does not touch the LRU order).
    pub fn get(&self, key: &str) -> Option<&ClientState> {
        let hash = self.hasher.hash_one(key);
        let i = *self.table.find(hash, |&j| {
            self.slab[j as usize]
                .as_ref()
                .is_some_and(|e| &*e.key == key)
        })?;
        Some(&self.entry(i).state)
    }

    /// Keys and states from least to most recently used.
    pub fn iter_lru(&self) -> impl Iterator<Item = (&str, &ClientState)> {
        let mut i = self.tail;
        std::iter::from_fn(move || {
            if i == NIL {
                return None;
            }
            let e = self.entry(i);
            i = e.newer;
            Some((&*e.key, &e.state))
        })
    }

    /// Appends a client as the most recently used (used when restoring and splitting); when
    /// the store is full, the least recently used is evicted (counted).
    pub(crate) fn push_restored(&mut self, key: Box<str>, state: ClientState) {
        if self.len >= self.cap && self.tail != NIL {
            let t = self.tail;
            self.remove(t);
            self.evictions.capacity += 1;
        }
        let hash = self.hasher.hash_one(&*key);
        self.insert_front(key, state, hash);
    }

    /// Splits the clients into `parts` stores by [`part_of`] their key (Kafka's partitioner),
    /// keeping each part's LRU order. Counters stay with part 0.
    pub fn split(self, parts: u32) -> Vec<ClientStore> {
        let parts = parts.max(1);
        let mut out: Vec<ClientStore> = (0..parts)
            .map(|_| ClientStore::new(self.cap, self.ttl_ms))
            .collect();
        out[0].evictions = self.evictions;
        out[0].created = self.created;
        for (k, s) in self.iter_lru() {
            out[part_of(k, parts) as usize].push_restored(k.into(), s.clone());
        }
        out
    }

    /// Approximate bytes of memory held: slab, table, keys and per-client heap.
    pub fn memory_bytes(&self) -> usize {
        let slab = self.slab.capacity() * std::mem::size_of::<Option<Entry>>();
        let table = self.table.capacity() * (std::mem::size_of::<u32>() + 1);
        let heap: usize = self
            .slab
            .iter()
            .flatten()
            .map(|e| e.key.len() + e.state.heap_bytes())
            .sum();
        slab + table + heap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_and_ttl() {
        let mut s = ClientStore::new(3, 1000);
        for (k, t) in [("a", 0), ("b", 10), ("c", 20)] {
            s.get_or_insert(k, t).last_ts = t;
        }
        s.get_or_insert("a", 30).last_ts = 30; // a is now most recent
        s.get_or_insert("d", 40).last_ts = 40; // evicts b
        assert!(s.get("b").is_none());
        assert_eq!(s.evictions.capacity, 1);
        let order: Vec<_> = s.iter_lru().map(|(k, _)| k.to_string()).collect();
        assert_eq!(order, ["c", "a", "d"]);
        s.expire(1025); // c (20) idle 1005 > 1000
        assert!(s.get("c").is_none());
        assert_eq!(s.evictions.idle, 1);
        assert_eq!(s.len(), 2);
        s.expire(1030);
        assert_eq!(s.len(), 2, "a idle exactly 1000 stays");
    }

    #[test]
    fn split_partitions_by_key() {
        let mut s = ClientStore::new(100, 1000);
        for i in 0..50 {
            s.get_or_insert(&format!("ip:10.0.0.{i}"), i).last_ts = i;
        }
        let parts = s.clone().split(4);
        assert_eq!(parts.iter().map(ClientStore::len).sum::<usize>(), 50);
        for (p, part) in parts.iter().enumerate() {
            for (k, st) in part.iter_lru() {
                assert_eq!(part_of(k, 4) as usize, p);
                assert_eq!(s.get(k), Some(st));
            }
        }
    }
}
