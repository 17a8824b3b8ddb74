//! Request signatures: HMAC-SHA256 over the raw body (`x-flame-signature`, hex; the JSON wire)
//! or over the envelope headers and the payload (the binary codec: [`crate::wire`]), checked in
//! constant time, and the signed health probe (`x-flame-timestamp` + `x-flame-signature` over
//! `"GET /health\n<timestamp>"`). A [`Signer`] keeps the HMAC state keyed with the secret, so a
//! request costs the hashing of its own bytes only, not the key's two blocks.

use flame_core::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

/// HMAC-SHA256.
pub type HmacSha256 = Hmac<Sha256>;

/// The HMAC state keyed with one secret, made once and cloned per message (a clone is a copy of
/// two SHA-256 states; keying again would hash the key's two blocks).
///
/// ```
/// use flame_core::Secret;
/// use flame_http::sign::{sign, Signer};
/// let signer = Signer::new(&Secret::new("flame-secret"));
/// let sig = signer.sign(b"hello");
/// assert_eq!(sig, sign(&Secret::new("flame-secret"), b"hello"));
/// assert!(signer.verify(b"hello", &sig));
/// ```
#[derive(Clone)]
pub struct Signer {
    keyed: HmacSha256,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// The keyed state of `secret`.
    pub fn new(secret: &Secret) -> Signer {
        Signer { keyed: mac(secret) }
    }

    /// A fresh MAC keyed with the secret, to feed a message to.
    pub fn mac(&self) -> HmacSha256 {
        self.keyed.clone()
    }

    /// `hex(HMAC-SHA256(secret, body))`.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut m = self.mac();
        m.update(body);
        hex::encode(m.finalize().into_bytes())
    }

    /// Checks a hex signature of `body` in constant time.
    pub fn verify(&self, body: &[u8], signature_hex: &str) -> bool {
        let mut m = self.mac();
        m.update(body);
        verify_mac(m, signature_hex)
    }
}

/// Checks the hex signature `signature_hex` against what `mac` was fed, in constant time
/// (`Mac::verify_slice`). Malformed hex is a mismatch.
pub fn verify_mac(mac: HmacSha256, signature_hex: &str) -> bool {
    let mut sig = [0u8; 32];
    if hex::decode_to_slice(signature_hex.trim(), &mut sig).is_err() {
        return false;
    }
    mac.verify_slice(&sig).is_ok()
}

/// `hex(MAC)` of what `mac` was fed.
pub fn finish_hex(mac: HmacSha256) -> String {
    hex::encode(mac.finalize().into_bytes())
}

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
    Signer::new(secret).sign(body)
}

/// Checks a hex signature of `body` in constant time (`Mac::verify_slice`). Malformed hex is
/// simply a mismatch.
pub fn verify(secret: &Secret, body: &[u8], signature_hex: &str) -> bool {
    Signer::new(secret).verify(body, signature_hex)
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
