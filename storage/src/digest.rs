//! Content digests (`sha256:<64 hex>`), the names of everything in the content store.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

use crate::error::ContentError;

/// A validated digest. Only sha256 is accepted: it is what OCI registries serve, and one
/// algorithm keeps "same content, same name" true inside the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The algorithm prefix.
    pub const ALGORITHM: &'static str = "sha256";

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(sha2::Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(hasher: sha2::Sha256) -> Self {
        let sum = hasher.finalize();
        let mut hex = String::with_capacity(64);
        for byte in sum {
            hex.push_str(&format!("{byte:02x}"));
        }
        Self { hex }
    }

    /// The 64 lowercase hex characters, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", Self::ALGORITHM, self.hex)
    }
}

impl FromStr for Digest {
    type Err = ContentError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ContentError::InvalidDigest {
            input: input.chars().take(100).collect(),
            reason: reason.to_owned(),
        };
        let (algorithm, hex) = input
            .split_once(':')
            .ok_or_else(|| invalid("expected <algorithm>:<hex>"))?;
        if algorithm != Self::ALGORITHM {
            return Err(invalid("only sha256 digests are supported"));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid("a sha256 digest has 64 lowercase hex characters"));
        }
        Ok(Self {
            hex: hex.to_owned(),
        })
    }
}

/// Hashes bytes as they stream past.
#[derive(Default)]
pub struct Hasher(sha2::Sha256);

impl Hasher {
    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything added.
    pub fn finish(self) -> Digest {
        Digest::from_hasher(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_input_is_the_well_known_one() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parsing_accepts_only_canonical_sha256() {
        let good = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(good.parse::<Digest>().expect("valid").to_string(), good);
        for bad in [
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:abc",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:../../../../etc/passwd/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn streaming_hash_matches_one_shot() {
        let mut h = Hasher::default();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish(), Digest::of(b"hello world"));
    }
}
