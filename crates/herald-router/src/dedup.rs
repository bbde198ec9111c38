//! Per-partition dedup state: a compact in-memory index backed by the
//! compacted dedup state topic.
//!
//! Each live key costs one hash-table slot of 28 bytes (128-bit key hash,
//! source offset, expiry in seconds) plus one control byte; at the table's
//! load factor that is 33 to 66 bytes per key (measured by `make bench`).
//! Entries record the input offset of the first record seen with the key,
//! so a record re-read after a crash is recognised as a replay of itself
//! (its effects are re-emitted) rather than as a duplicate.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use herald_model::ids::PrehashedHasher;
use herald_model::wire::DedupEntry;
use herald_model::DedupKey;

/// What the store says about a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First time inside the window: process it (the entry is now recorded).
    New,
    /// The same record again (same input offset): re-emit its effects.
    Replay,
    /// Another record with the same key inside the window: suppress it.
    Duplicate {
        /// Input offset of the first record.
        first_offset: i64,
    },
}

/// Key as four u32 words and value as three: 28 bytes, 4-byte aligned, so
/// the table has no padding.
type Key = [u32; 4];
/// `[offset low, offset high, expires_at seconds]`.
type Slot = [u32; 3];

fn key_words(k: DedupKey) -> Key {
    let v = k.0;
    [
        (v >> 96) as u32,
        (v >> 64) as u32,
        (v >> 32) as u32,
        v as u32,
    ]
}

fn key_of(w: &Key) -> DedupKey {
    DedupKey(
        u128::from(w[0]) << 96 | u128::from(w[1]) << 64 | u128::from(w[2]) << 32 | u128::from(w[3]),
    )
}

fn slot(offset: i64, expires_ms: i64) -> Slot {
    let secs = (expires_ms.max(0) / 1000).min(i64::from(u32::MAX)) as u32;
    [offset as u32, (offset >> 32) as u32, secs]
}

fn slot_offset(s: &Slot) -> i64 {
    (i64::from(s[1]) << 32) | i64::from(s[0])
}

fn slot_expires_ms(s: &Slot) -> i64 {
    i64::from(s[2]) * 1000
}

/// The dedup index of one input partition.
#[derive(Default)]
pub struct DedupStore {
    entries: HashMap<Key, Slot, BuildHasherDefault<PrehashedHasher>>,
}

impl DedupStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the index holds (table slots and control bytes).
    pub fn heap_bytes(&self) -> usize {
        let buckets = if self.entries.capacity() == 0 {
            0
        } else {
            (self.entries.capacity() * 8 / 7).next_power_of_two()
        };
        buckets * (std::mem::size_of::<(Key, Slot)>() + 1)
    }

    /// Checks a record with `key` at input `offset` at time `now_ms`, and
    /// records it when new. `window_ms` is the category's dedup window.
    pub fn check(&mut self, key: DedupKey, offset: i64, now_ms: i64, window_ms: i64) -> Verdict {
        let k = key_words(key);
        if let Some(s) = self.entries.get(&k) {
            if slot_expires_ms(s) > now_ms {
                let first = slot_offset(s);
                return if first == offset {
                    Verdict::Replay
                } else {
                    Verdict::Duplicate {
                        first_offset: first,
                    }
                };
            }
        }
        self.entries
            .insert(k, slot(offset, now_ms.saturating_add(window_ms)));
        Verdict::New
    }

    /// The state-topic value for `key`, if live.
    pub fn entry(&self, key: DedupKey, partition: i32) -> Option<DedupEntry> {
        self.entries.get(&key_words(key)).map(|s| DedupEntry {
            expires_at: slot_expires_ms(s),
            source_partition: partition,
            source_offset: slot_offset(s),
        })
    }

    /// Applies one state-topic record while restoring: a value sets the
    /// entry, a tombstone removes it. Entries already expired at `now_ms`
    /// are not loaded.
    pub fn restore(&mut self, key: DedupKey, value: Option<&DedupEntry>, now_ms: i64) {
        let k = key_words(key);
        match value {
            Some(e) if e.expires_at > now_ms => {
                self.entries.insert(k, slot(e.source_offset, e.expires_at));
            }
            _ => {
                self.entries.remove(&k);
            }
        }
    }

    /// Removes entries expired at `now_ms` and returns their keys, to be
    /// tombstoned in the state topic so compaction keeps it bounded.
    pub fn evict_expired(&mut self, now_ms: i64) -> Vec<DedupKey> {
        let mut gone = Vec::new();
        self.entries.retain(|k, s| {
            let live = slot_expires_ms(s) > now_ms;
            if !live {
                gone.push(key_of(k));
            }
            live
        });
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn new_duplicate_replay_and_expiry() {
        let mut s = DedupStore::new();
        let k = DedupKey::new("t", "receipt", "order-1");
        assert_eq!(s.check(k, 10, 1_000_000, DAY), Verdict::New);
        assert_eq!(
            s.check(k, 11, 1_000_000 + 5, DAY),
            Verdict::Duplicate { first_offset: 10 }
        );
        assert_eq!(
            s.check(k, 10, 1_000_000 + 9, DAY),
            Verdict::Replay,
            "the same record re-read after a crash"
        );
        // After the window, the key is new again.
        assert_eq!(s.check(k, 99, 1_000_000 + DAY + 1000, DAY), Verdict::New);
    }

    #[test]
    fn restore_applies_values_and_tombstones_and_skips_expired() {
        let mut s = DedupStore::new();
        let a = DedupKey::new("t", "c", "a");
        let b = DedupKey::new("t", "c", "b");
        let live = DedupEntry {
            expires_at: 10_000_000,
            source_partition: 3,
            source_offset: 7,
        };
        s.restore(a, Some(&live), 5_000_000);
        s.restore(
            b,
            Some(&DedupEntry {
                expires_at: 1_000,
                ..live
            }),
            5_000_000,
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s.entry(a, 3), Some(live));
        assert_eq!(
            s.check(a, 8, 5_000_001, DAY),
            Verdict::Duplicate { first_offset: 7 }
        );
        s.restore(a, None, 5_000_000);
        assert!(s.is_empty());
    }

    #[test]
    fn eviction_returns_exactly_the_expired_keys() {
        let mut s = DedupStore::new();
        let keys: Vec<DedupKey> = (0..100)
            .map(|i| DedupKey::new("t", "c", &i.to_string()))
            .collect();
        for (i, k) in keys.iter().enumerate() {
            s.check(*k, i as i64, 0, if i % 2 == 0 { 10_000 } else { DAY });
        }
        let mut gone = s.evict_expired(20_000);
        gone.sort();
        let mut want: Vec<DedupKey> = keys.iter().step_by(2).copied().collect();
        want.sort();
        assert_eq!(gone, want);
        assert_eq!(s.len(), 50);
    }

    proptest! {
        #[test]
        fn offsets_and_keys_survive_the_compact_encoding(v in any::<u128>(), offset in 0i64..i64::MAX, secs in 0i64..4_000_000_000) {
            let k = DedupKey(v);
            prop_assert_eq!(key_of(&key_words(k)), k);
            let s = slot(offset, secs * 1000);
            prop_assert_eq!(slot_offset(&s), offset);
            prop_assert_eq!(slot_expires_ms(&s), secs * 1000);
        }
    }
}
