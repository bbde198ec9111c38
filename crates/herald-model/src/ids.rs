//! Dedup keys and deterministic notification ids.
//!
//! Both are 128-bit XXH3 hashes of length-prefixed fields, so `("ab", "c")`
//! and `("a", "bc")` never collide by construction and the value is stable
//! across processes, versions and machines (it is stored in Kafka).

use xxhash_rust::xxh3::Xxh3;

use crate::kinds::Channel;

fn hash_fields(domain: &[u8], fields: &[&[u8]]) -> u128 {
    let mut h = Xxh3::new();
    h.update(domain);
    for f in fields {
        h.update(&(f.len() as u64).to_le_bytes());
        h.update(f);
    }
    h.digest128()
}

/// The dedup identity of an event: (tenant, category, idempotency key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DedupKey(pub u128);

impl DedupKey {
    /// Computes the key of an event.
    pub fn new(tenant: &str, category: &str, idempotency_key: &str) -> Self {
        Self(hash_fields(
            b"herald.dedup.v1",
            &[
                tenant.as_bytes(),
                category.as_bytes(),
                idempotency_key.as_bytes(),
            ],
        ))
    }

    /// The 16 bytes used as the state-topic record key (big-endian).
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Parses a state-topic record key; `None` unless exactly 16 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 16] = bytes.try_into().ok()?;
        Some(Self(u128::from_be_bytes(arr)))
    }
}

/// Deterministic id of one (event, channel, recipient): the delivery ledger key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NotificationId(pub u128);

impl NotificationId {
    /// Derives the id from the event's dedup key, the channel and the address.
    pub fn new(event: DedupKey, channel: Channel, address: &str) -> Self {
        Self(hash_fields(
            b"herald.notification.v1",
            &[
                &event.to_bytes(),
                channel.as_str().as_bytes(),
                address.as_bytes(),
            ],
        ))
    }
}

impl NotificationId {
    /// Parses the id's canonical text (32 lowercase hex digits, as
    /// [`Display`](std::fmt::Display) writes it); anything else is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let canonical =
            text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        canonical
            .then(|| u128::from_str_radix(text, 16).ok())
            .flatten()
            .map(Self)
    }
}

/// A `Hasher` for keys that already are uniform 128-bit hashes (dedup keys,
/// notification ids): hashing them again is waste, so their words are
/// folded together.
#[derive(Default)]
pub struct PrehashedHasher(u64);

impl std::hash::Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(buf);
        }
    }
}

impl std::fmt::Display for NotificationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_canonical_notification_ids_parse() {
        let id = NotificationId(0x0123_4567_89ab_cdef_0000_0000_0000_00ff);
        assert_eq!(id.to_string(), "0123456789abcdef00000000000000ff");
        assert_eq!(NotificationId::parse(&id.to_string()), Some(id));
        for other in [
            "0123456789ABCDEF00000000000000ff",
            "+123456789abcdef00000000000000ff",
            "0123456789abcdef00000000000000f",
            "n-1",
            "",
        ] {
            assert_eq!(NotificationId::parse(other), None, "{other}");
        }
    }

    #[test]
    fn dedup_key_is_stable_across_releases() {
        // Stored in Kafka: changing the hash would forget every live entry.
        let k = DedupKey::new("acme", "receipt", "order-42");
        assert_eq!(DedupKey::from_bytes(&k.to_bytes()), Some(k));
        assert_eq!(k, DedupKey::new("acme", "receipt", "order-42"));
        assert_ne!(k, DedupKey::new("acme", "digest", "order-42"));
        assert_eq!(DedupKey::from_bytes(&[0u8; 15]), None);
    }

    proptest! {
        #[test]
        fn field_boundaries_do_not_collide(a in ".{0,8}", b in ".{0,8}", c in ".{0,8}") {
            let moved = format!("{a}{b}");
            if !b.is_empty() {
                prop_assert_ne!(DedupKey::new(&a, &b, &c), DedupKey::new(&moved, "", &c));
            }
        }

        #[test]
        fn notification_id_differs_per_channel_and_address(key in ".{1,16}", addr in ".{1,16}") {
            let k = DedupKey::new("t", "c", &key);
            let push = NotificationId::new(k, Channel::Push, &addr);
            prop_assert_ne!(push, NotificationId::new(k, Channel::Sms, &addr));
            prop_assert_ne!(push, NotificationId::new(k, Channel::Push, &format!("{addr}x")));
            prop_assert_eq!(push.to_string().len(), 32);
            prop_assert_eq!(NotificationId::parse(&push.to_string()), Some(push));
        }
    }
}
