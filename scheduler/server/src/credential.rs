//! Secrets the scheduler issues: node credentials and session ids.
//!
//! Both come from the operating system's random source, never from the seeded generator that
//! makes placement reproducible: a guessable session id or credential would let anyone with
//! the join token speak for another node. Only a credential's SHA-256 is stored, so a copy of
//! the database does not hand out nodes.

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

/// Prefix of a node credential, so one found in a file or a log says what it is.
const CREDENTIAL_PREFIX: &str = "suanli-node-";
/// Longest credential accepted on the wire; longer is not one we issued.
pub const MAX_CREDENTIAL_LEN: usize = 128;

/// 32 random bytes as lowercase hex, after `prefix`.
fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source is readable");
    let mut token = String::with_capacity(prefix.len() + 64);
    token.push_str(prefix);
    for b in bytes {
        token.push_str(&format!("{b:02x}"));
    }
    token
}

/// A new node credential and the hash to store for it.
pub fn issue() -> (String, String) {
    let credential = random_token(CREDENTIAL_PREFIX);
    let hash = sha256_hex(&credential);
    (credential, hash)
}

/// A new, unguessable session id.
pub fn session_id() -> String {
    random_token("s-")
}

/// SHA-256 of `text`, lowercase hex.
pub fn sha256_hex(text: &str) -> String {
    digest(&SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `presented` is the credential whose hash is `stored`.
pub fn matches(presented: &str, stored: &str) -> bool {
    !presented.is_empty()
        && presented.len() <= MAX_CREDENTIAL_LEN
        && sha256_hex(presented) == stored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_credentials_match_only_themselves() {
        let (a, hash_a) = issue();
        let (b, _) = issue();
        assert_ne!(a, b);
        assert!(a.starts_with(CREDENTIAL_PREFIX) && a.len() == CREDENTIAL_PREFIX.len() + 64);
        assert!(matches(&a, &hash_a));
        assert!(!matches(&b, &hash_a));
        assert!(!matches("", &hash_a));
        assert_ne!(session_id(), session_id());
    }

    #[test]
    fn sha256_is_the_standard_one() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
