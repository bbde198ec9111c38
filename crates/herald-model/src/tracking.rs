//! Signed tracking URLs: an email's open pixel and its rewritten links.
//! The delivery worker signs them; the tracker serves them and checks the
//! signature, so nobody can forge an open or turn the click redirect into
//! an open redirect.
//!
//! `{base}/o/{notification_id}?s={sig}` and
//! `{base}/c/{notification_id}?u={target}&s={sig}`, where `sig` is the
//! URL-safe base64 of HMAC-SHA256(key, kind + "\n" + id [+ "\n" + target]).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn mac(key: &[u8], parts: &[&str]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            mac.update(b"\n");
        }
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
}
