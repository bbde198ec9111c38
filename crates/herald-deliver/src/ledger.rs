//! The delivered notification ids of one partition, in memory.
//!
//! Herald's router writes notification ids as 32 hex digits (a 128-bit
//! hash), so an entry is kept as the id's two words and its expiry in whole
//! seconds: 24 bytes a slot, with no string on the heap. Ids in any other
//! form (written by hand, or by an older producer) are kept as text. An
//! expired id is given back as text for its tombstone.
//!
//! A send is claimed before it starts ([`Ledger::claim`]): a second copy of
//! a notification id (a replay in the same in-flight window, or a retry and
//! a replay side by side) waits until the first copy's attempt is over and
//! then finds it delivered, instead of going out alongside it.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Mutex;

use herald_model::ids::PrehashedHasher;
use herald_model::NotificationId;
use tokio::sync::Notify;

/// Delivered notification ids with their expiry.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: Mutex<Entries>,
    /// Woken when a claim ends.
    claim_ended: Notify,
}

#[derive(Debug, Default)]
struct Entries {
    /// Canonical ids (two words) to expiry in seconds, rounded up.
    ids: HashMap<[u64; 2], u32, BuildHasherDefault<PrehashedHasher>>,
    /// Any other id text to expiry in milliseconds.
    other: HashMap<String, i64>,
    /// Ids whose send is under way.
    sending: std::collections::HashSet<String>,
}

impl Entries {
    fn contains(&self, id: &str, now: i64) -> bool {
        match NotificationId::parse(id) {
            Some(n) => self.ids.get(&words(n)).is_some_and(|s| ms(*s) > now),
            None => self.other.get(id).is_some_and(|exp| *exp > now),
        }
    }
}

/// The right to send one notification id, held from before the send until
/// its outcome is recorded (in the ledger when it was accepted). Dropping
/// it lets a waiting copy look at the ledger again.
#[derive(Debug)]
pub struct Claim<'a> {
    ledger: &'a Ledger,
    id: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.ledger.lock().sending.remove(&self.id);
        self.ledger.claim_ended.notify_waiters();
    }
}

fn words(id: NotificationId) -> [u64; 2] {
    [(id.0 >> 64) as u64, id.0 as u64]
}

fn id_of(w: [u64; 2]) -> NotificationId {
    NotificationId(u128::from(w[0]) << 64 | u128::from(w[1]))
}

/// Milliseconds to whole seconds, rounded up: an entry may be kept up to a
/// second longer than asked, never shorter.
fn secs(ms: i64) -> u32 {
    let s = (ms.max(0) as u64).div_ceil(1000);
    u32::try_from(s).unwrap_or(u32::MAX)
}

fn ms(secs: u32) -> i64 {
    i64::from(secs) * 1000
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` was delivered and its entry is live at `now` (ms).
    pub fn contains(&self, id: &str, now: i64) -> bool {
        self.lock().contains(id, now)
    }

    /// Claims the send of `id`: `None` when it was delivered (its entry is
    /// live at `now`, ms). While another copy's claim is held this waits
    /// for it to end and looks again, so two copies never go out together.
    pub async fn claim(&self, id: &str, now: i64) -> Option<Claim<'_>> {
        loop {
            // Registered before the check, so a claim ending in between
            // still wakes this copy.
            let ended = self.claim_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            {
                let mut e = self.lock();
                if e.contains(id, now) {
                    return None;
                }
                if e.sending.insert(id.to_string()) {
                    return Some(Claim {
                        ledger: self,
                        id: id.to_string(),
                    });
                }
            }
            ended.await;
        }
    }

    /// Records `id` as delivered until `expires_at` (ms).
    pub fn insert(&self, id: &str, expires_at: i64) {
        let mut e = self.lock();
        match NotificationId::parse(id) {
            Some(n) => {
                e.ids.insert(words(n), secs(expires_at));
            }
            None => {
                e.other.insert(id.to_string(), expires_at);
            }
        }
    }

    /// Forgets `id` (its tombstone was read).
    pub fn remove(&self, id: &str) {
        let mut e = self.lock();
        match NotificationId::parse(id) {
            Some(n) => {
                e.ids.remove(&words(n));
            }
            None => {
                e.other.remove(id);
            }
        }
    }

    /// Removes the entries expired at `now` and returns their ids.
    pub fn take_expired(&self, now: i64) -> Vec<String> {
        let mut e = self.lock();
        let mut expired = Vec::new();
        e.ids.retain(|w, s| {
            let live = ms(*s) > now;
            if !live {
                expired.push(id_of(*w).to_string());
            }
            live
        });
        e.other.retain(|id, exp| {
            let live = *exp > now;
            if !live {
                expired.push(id.clone());
            }
            live
        });
        expired
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        let e = self.lock();
        e.ids.len() + e.other.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use herald_model::{Channel, DedupKey};

    fn id(n: u32) -> String {
        NotificationId::new(
            DedupKey::new("acme", "receipt", &n.to_string()),
            Channel::Push,
            "a",
        )
        .to_string()
    }

    #[test]
    fn canonical_and_other_ids_are_remembered_until_they_expire() {
        let l = Ledger::default();
        let (a, b) = (id(1), "replayed-by-hand".to_string());
        l.insert(&a, 10_500);
        l.insert(&b, 10_500);
        assert_eq!(l.len(), 2);
        for x in [&a, &b] {
            assert!(l.contains(x, 10_000));
            assert!(!l.contains(x, 11_000));
        }
        assert!(!l.contains(&id(2), 0));
        // Whole seconds, rounded up: never forgotten early.
        assert!(l.contains(&a, 10_999));
        assert_eq!(l.take_expired(10_000), Vec::<String>::new());
        let mut gone = l.take_expired(11_000);
        gone.sort();
        let mut want = vec![a.clone(), b.clone()];
        want.sort();
        assert_eq!(
            gone, want,
            "expired ids come back as the text they were stored as"
        );
        assert!(l.is_empty());
    }

    #[tokio::test]
    async fn a_second_copy_waits_for_the_first_and_is_not_sent_when_it_was() {
        let l = std::sync::Arc::new(Ledger::default());
        let a = id(5);
        let first = l.claim(&a, 0).await.unwrap();
        let second = tokio::spawn({
            let (l, a) = (std::sync::Arc::clone(&l), a.clone());
            async move { l.claim(&a, 0).await.is_some() }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !second.is_finished(),
            "the copy waits while the first is sent"
        );
        l.insert(&a, i64::MAX);
        drop(first);
        assert!(!second.await.unwrap(), "the copy finds it delivered");

        // A first attempt that failed (no entry) lets the copy send.
        let b = id(6);
        let first = l.claim(&b, 0).await.unwrap();
        let second = tokio::spawn({
            let (l, b) = (std::sync::Arc::clone(&l), b.clone());
            async move { l.claim(&b, 0).await.is_some() }
        });
        drop(first);
        assert!(
            second.await.unwrap(),
            "the copy is sent after a failed first"
        );
        assert_eq!(l.lock().sending.len(), 0, "no claim outlives its send");
    }

    #[test]
    fn a_tombstone_removes_an_entry() {
        let l = Ledger::default();
        let a = id(3);
        l.insert(&a, i64::MAX);
        l.insert("other", i64::MAX);
        l.remove(&a);
        l.remove("other");
        assert!(!l.contains(&a, 0));
        assert!(l.is_empty());
    }

    #[test]
    fn an_upper_case_id_is_not_confused_with_its_canonical_twin() {
        let l = Ledger::default();
        let a = id(4);
        l.insert(&a.to_uppercase(), i64::MAX);
        assert!(!l.contains(&a, 0));
        assert!(l.contains(&a.to_uppercase(), 0));
    }
}
