//! Sealing store entries: AES-256-GCM with a random 96-bit nonce per write and the
//! credential name (and the entry's generation) bound in as associated data, so an
//! entry opens only for the credential and generation it was written for.
//!
//! Keys come from the store's `key_file`: one 64-hex-character key a line. The first
//! seals; every one opens, so keys can be rotated without a flag day (add the new key
//! as a second line everywhere, then move it first, then drop the old one).

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Nonce};
use secrecy::ExposeSecret;

use crate::secret::{self, KeyFileError};

/// Bytes of the nonce that precedes each ciphertext.
const NONCE_LEN: usize = 12;

/// The keys of a store, never printed.
pub struct Sealer {
    /// The first seals; all open.
    keys: Vec<Aes256Gcm>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Sealer({} keys: ***)", self.keys.len())
    }
}

/// The entry does not open with any key (another key, tampering, garbage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the entry does not open with any configured key")]
pub struct Unopenable;

impl Sealer {
    /// A sealer over a key file's text (see [`secret::parse_keys`]).
    pub fn from_key_lines(text: &str) -> Result<Self, KeyFileError> {
        let keys = secret::parse_keys(text)?;
        Ok(Self {
            keys: keys
                .iter()
                .map(|key| Aes256Gcm::new(key.expose_secret().into()))
                .collect(),
        })
    }

    /// A sealer with one random key, for a store that lives only in this process.
    pub fn ephemeral() -> Self {
        Self {
            keys: vec![Aes256Gcm::new(&Aes256Gcm::generate_key(OsRng))],
        }
    }

    /// `nonce || ciphertext` of `plaintext`, bound to `associated`.
    pub fn seal(&self, plaintext: &[u8], associated: &[u8]) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self.keys[0]
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: associated,
                },
            )
            .expect("AES-GCM encrypts any message shorter than 64 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plaintext of `sealed`, with whichever key opens it.
    pub fn open(&self, sealed: &[u8], associated: &[u8]) -> Result<Vec<u8>, Unopenable> {
        if sealed.len() < NONCE_LEN {
            return Err(Unopenable);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::from_slice(nonce);
        self.keys
            .iter()
            .find_map(|key| {
                key.decrypt(
                    nonce,
                    Payload {
                        msg: ciphertext,
                        aad: associated,
                    },
                )
                .ok()
            })
            .ok_or(Unopenable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEY_B: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    #[test]
    fn a_sealed_entry_opens_only_with_its_key_and_associated_data() {
        let sealer = Sealer::from_key_lines(KEY_A).expect("one key");
        let sealed = sealer.seal(b"token", b"ipproxy:default:7");
        assert!(!sealed.windows(5).any(|window| window == b"token"));
        assert_eq!(
            sealer.open(&sealed, b"ipproxy:default:7"),
            Ok(b"token".to_vec())
        );
        assert_eq!(sealer.open(&sealed, b"ipproxy:cpaas:7"), Err(Unopenable));
        assert_eq!(sealer.open(&sealed, b"ipproxy:default:8"), Err(Unopenable));
        let other = Sealer::from_key_lines(KEY_B).expect("one key");
        assert_eq!(other.open(&sealed, b"ipproxy:default:7"), Err(Unopenable));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            sealer.open(&tampered, b"ipproxy:default:7"),
            Err(Unopenable)
        );
        assert_eq!(sealer.open(b"short", b"ipproxy:default:7"), Err(Unopenable));
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let old = Sealer::from_key_lines(KEY_A).expect("one key");
        let rotating = Sealer::from_key_lines(&format!("# new first\n{KEY_B}\n\n  {KEY_A}  \n"))
            .expect("two keys");
        let by_old = old.seal(b"t", b"a");
        assert_eq!(rotating.open(&by_old, b"a"), Ok(b"t".to_vec()));
        let by_new = rotating.seal(b"t", b"a");
        assert_eq!(
            old.open(&by_new, b"a"),
            Err(Unopenable),
            "sealed with the new key"
        );
        let nonces_differ = rotating.seal(b"t", b"a") != by_new;
        assert!(nonces_differ, "a random nonce per seal");
    }

    #[test]
    fn key_files_are_checked_line_by_line_without_echoing_them() {
        assert_eq!(
            Sealer::from_key_lines(&format!("{KEY_A}\nnot-a-key\n")).map(|_| ()),
            Err(KeyFileError::Malformed { line: 2 })
        );
        assert_eq!(
            Sealer::from_key_lines(&KEY_A[..62]).map(|_| ()),
            Err(KeyFileError::Malformed { line: 1 })
        );
        assert_eq!(
            Sealer::from_key_lines("# none\n").map(|_| ()),
            Err(KeyFileError::Empty)
        );
        let message = Sealer::from_key_lines("secret-looking-line")
            .map(|_| ())
            .expect_err("not a key")
            .to_string();
        assert!(!message.contains("secret-looking-line"), "{message}");
        assert!(!format!("{:?}", Sealer::from_key_lines(KEY_A).expect("key")).contains(KEY_A));
    }
}
