//! Signed tracking URLs: an email's open pixel and its rewritten links.
//! The delivery worker signs them; the tracker serves them and checks the
//! signature, so nobody can forge an open or turn the click redirect into
//! an open redirect.
//!
//! `{base}/o/{notification_id}?s={sig}` and
//! `{base}/c/{notification_id}?u={target}&s={sig}`, where `sig` is the
//! URL-safe base64 of HMAC-SHA256 over the kind (`o`, `c`), the id and
//! for a click the target, each part preceded by its length in bytes (a
//! big-endian u64).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn mac(key: &[u8], parts: &[&str]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    // Each part after its length: no text can move a boundary between
    // parts (with a separator, the id "n1\nx" and target "y" signed the
    // same bytes as the id "n1" and target "x\ny").
    for p in parts {
        mac.update(&(p.len() as u64).to_be_bytes());
        mac.update(p.as_bytes());
    }
    mac
}

fn sign(key: &[u8], parts: &[&str]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac(key, parts).finalize().into_bytes())
}

fn verify(key: &[u8], parts: &[&str], sig: &str) -> bool {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .is_ok_and(|s| mac(key, parts).verify_slice(&s).is_ok())
}

/// The open pixel's URL.
pub fn open_url(base: &str, key: &[u8], notification_id: &str) -> String {
    let sig = sign(key, &["o", notification_id]);
    format!("{}/o/{notification_id}?s={sig}", base.trim_end_matches('/'))
}

/// A tracked link to `target`.
pub fn click_url(base: &str, key: &[u8], notification_id: &str, target: &str) -> String {
    let sig = sign(key, &["c", notification_id, target]);
    let query =
        serde_urlencoded::to_string([("u", target), ("s", sig.as_str())]).unwrap_or_default();
    format!("{}/c/{notification_id}?{query}", base.trim_end_matches('/'))
}

/// Whether an open pixel's signature is ours.
pub fn verify_open(key: &[u8], notification_id: &str, sig: &str) -> bool {
    verify(key, &["o", notification_id], sig)
}

/// Whether a click's target and signature are ours.
pub fn verify_click(key: &[u8], notification_id: &str, target: &str, sig: &str) -> bool {
    verify(key, &["c", notification_id, target], sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_urls_verify_and_tampering_does_not() {
        let key = b"test key";
        let open = open_url("https://t.example/", key, "n1");
        let sig = open.split("?s=").nth(1).unwrap_or_default();
        assert!(open.starts_with("https://t.example/o/n1?s="));
        assert!(verify_open(key, "n1", sig));
        assert!(!verify_open(key, "n2", sig));
        assert!(!verify_open(b"other", "n1", sig));

        let click = click_url(
            "https://t.example",
            key,
            "n1",
            "https://shop.example/a?b=1&c=2",
        );
        let query = click.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let q: std::collections::HashMap<String, String> =
            serde_urlencoded::from_str(query).unwrap_or_default();
        assert_eq!(q["u"], "https://shop.example/a?b=1&c=2");
        assert!(verify_click(key, "n1", &q["u"], &q["s"]));
        assert!(!verify_click(key, "n1", "https://evil.example/", &q["s"]));
        assert!(!verify_click(key, "n1", &q["u"], "not base64!"));
    }

    #[test]
    fn moving_a_field_boundary_breaks_the_signature() {
        // The id "n1\nhttps://a" with target "x" is not the id "n1" with
        // target "https://a\nx".
        let sig = sign(b"k", &["c", "n1\nhttps://a", "x"]);
        assert!(verify_click(b"k", "n1\nhttps://a", "x", &sig));
        assert!(!verify_click(b"k", "n1", "https://a\nx", &sig));
    }

    /// Text where field boundaries could hide: newlines, and short.
    fn part() -> impl proptest::strategy::Strategy<Value = String> {
        "[a-c\n]{0,6}"
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        #[test]
        fn a_signature_fits_only_what_was_signed(
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            id in part(), target in part(), id2 in part(), target2 in part(),
        ) {
            let sig = sign(&key, &["c", &id, &target]);
            proptest::prop_assert!(verify_click(&key, &id, &target, &sig));
            if (id.as_str(), target.as_str()) != (id2.as_str(), target2.as_str()) {
                proptest::prop_assert!(
                    !verify_click(&key, &id2, &target2, &sig),
                    "({id:?}, {target:?})'s signature verified ({id2:?}, {target2:?})"
                );
            }
            // An open's signature is never a click's, and the other way.
            proptest::prop_assert!(!verify_open(&key, &id, &sig));
        }

        #[test]
        fn a_signature_does_not_survive_a_moved_boundary(
            id in part(), target in part(), at in proptest::prelude::any::<usize>(),
        ) {
            // The same bytes, split elsewhere.
            let joined = format!("{id}\n{target}");
            let cuts: Vec<usize> = joined.match_indices('\n').map(|(i, _)| i).collect();
            let cut = cuts[at % cuts.len()];
            let (id2, target2) = (&joined[..cut], &joined[cut + 1..]);
            let sig = sign(b"k", &["c", &id, &target]);
            proptest::prop_assert_eq!(
                verify_click(b"k", id2, target2, &sig),
                (id2, target2) == (id.as_str(), target.as_str())
            );
        }

        #[test]
        fn any_signature_text_is_refused_without_panicking(
            id in ".{0,40}", target in ".{0,40}", sig in ".{0,80}",
        ) {
            proptest::prop_assert!(!verify_open(b"k", &id, &sig));
            proptest::prop_assert!(!verify_click(b"k", &id, &target, &sig));
        }
    }
}
