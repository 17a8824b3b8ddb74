//! Request signatures: HMAC-SHA256 over the raw body (`x-flame-signature`, hex), checked in
//! constant time, and the signed health probe (`x-flame-timestamp` + `x-flame-signature` over
//! `"GET /health\n<timestamp>"`).

use flame_core::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// Header carrying the hex HMAC-SHA256 signature.
pub const SIGNATURE_HEADER: &str = "x-flame-signature";
/// Header carrying the milliseconds-since-epoch timestamp of a signed health probe.
pub const TIMESTAMP_HEADER: &str = "x-flame-timestamp";
/// How far `iat`/`exp` (or a health timestamp) may be off the runner's clock (the reference's
/// `maxSkewMs`).
pub const MAX_SKEW: Duration = Duration::from_millis(60_000);

fn mac(secret: &Secret) -> HmacSha256 {
    // RFC 2104: HMAC takes keys of any length, so this cannot fail.
    #[allow(clippy::expect_used)]
    HmacSha256::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes keys of any length")
}

/// `hex(HMAC-SHA256(secret, body))`, as the reference's `signBody`.
///
/// ```
/// use flame_core::Secret;
/// use flame_http::sign::{sign, verify};
/// let secret = Secret::new("flame-secret");
/// let sig = sign(&secret, br#"{"a":1}"#);
/// assert_eq!(sig.len(), 64);
/// assert!(verify(&secret, br#"{"a":1}"#, &sig));
/// assert!(!verify(&secret, br#"{"a":2}"#, &sig));
/// ```
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

/// Checks a hex signature of `body` in constant time (`Mac::verify_slice`). Malformed hex is
/// simply a mismatch.
pub fn verify(secret: &Secret, body: &[u8], signature_hex: &str) -> bool {
    let Ok(sig) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    let mut m = mac(secret);
    m.update(body);
    m.verify_slice(&sig).is_ok()
}

/// The message a health probe signs: `"GET /health\n<timestamp_ms>"`.
pub fn health_message(timestamp_ms: u64) -> String {
    format!("GET /health\n{timestamp_ms}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_node_crypto_hmac() {
        // node -e 'console.log(require("crypto").createHmac("sha256","flame-secret").update("hello").digest("hex"))'
        let s = Secret::new("flame-secret");
        let expected = "2e323e694142b9184cd7fb4da4760da56ff8f0db08627301431184a3c378326c";
        assert_eq!(sign(&s, b"hello"), expected);
        assert!(verify(&s, b"hello", expected));
        assert!(verify(&s, b"hello", &expected.to_uppercase()));
    }

    #[test]
    fn bad_hex_and_wrong_length_fail() {
        let s = Secret::new("k");
        assert!(!verify(&s, b"x", "zz"));
        assert!(!verify(&s, b"x", "abcd"));
        assert!(!verify(&s, b"x", ""));
    }
}
