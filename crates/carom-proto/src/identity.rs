//! Identities and onion addresses.
//!
//! A profile's identity is a random 32-byte ed25519 seed. Its public key *is* the Tor v3 onion
//! service key, so the onion address derived from it (rend-spec-v3 §6) is both where the user
//! can be reached and who they are.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use sha3::{Digest as _, Sha3_256};
use zeroize::Zeroizing;

/// Version byte of v3 onion addresses.
const ONION_VERSION: u8 = 3;
/// Length of an onion address without the `.onion` suffix.
pub const ONION_ADDRESS_LEN: usize = 56;
/// The URI scheme a Carom address can be written with (e.g. in a QR code).
pub const URI_SCHEME: &str = "carom:";

/// A profile's long-term identity: the ed25519 key of its onion service.
///
/// The seed is the only secret; it is zeroised on drop and never printed.
#[derive(Clone)]
pub struct IdentityKey {
    signing: SigningKey,
}

impl IdentityKey {
    /// A new random identity.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> IdentityKey {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        IdentityKey::from_seed(&seed)
    }

    /// The identity with this seed.
    pub fn from_seed(seed: &[u8; 32]) -> IdentityKey {
        IdentityKey {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte seed, for the encrypted store and for handing to the Tor transport.
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The public half, as an onion address.
    pub fn address(&self) -> OnionAddress {
        OnionAddress::from_key(self.signing.verifying_key())
    }

    /// Sign `message` with the identity key.
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// Sign the encoded body of a group operation (`docs/protocol.md` §15): the signature
    /// covers [`GROUP_OPERATION_LABEL`] followed by `body`, so that it can never be taken for
    /// a device certificate's signature (whose label differs) or the other way round.
    pub fn sign_group_operation(&self, body: &[u8]) -> [u8; 64] {
        self.sign(&group_operation_message(body))
    }
}

/// Domain separation for group-operation signatures.
pub const GROUP_OPERATION_LABEL: &[u8] = b"carom/group-op/v1";

fn group_operation_message(body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(GROUP_OPERATION_LABEL.len() + body.len());
    message.extend_from_slice(GROUP_OPERATION_LABEL);
    message.extend_from_slice(body);
    message
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({})", self.address().redacted())
    }
}

/// A Tor v3 onion address: a validated ed25519 public key.
///
/// `Display` gives the canonical form, `<56 base32 characters>.onion`. Parsing
/// ([`OnionAddress::parse`] or `str::parse`) is forgiving where that is safe — case, surrounding
/// whitespace, an optional `.onion` suffix, an optional `carom:` scheme — and strict where it
/// matters: length, base32, checksum, version and the key itself are all checked.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OnionAddress {
    key: VerifyingKey,
    /// Computed once: the daemon prints addresses on hot paths (every status event) and
    /// the SHA3 behind the checksum showed up in profiles.
    checksum: [u8; 2],
}

/// Why a string is not an onion address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// Nothing was given.
    #[error("the address is empty")]
    Empty,
    /// Not 56 characters (ignoring `carom:`, `.onion` and surrounding spaces).
    #[error("an onion address has 56 characters before `.onion`; this one has {found}")]
    WrongLength {
        /// Characters found.
        found: usize,
    },
    /// A character outside the base32 alphabet (a–z, 2–7).
    #[error(
        "an onion address uses only the letters a–z and digits 2–7; `{character}` is not one of them"
    )]
    BadBase32 {
        /// The first offending character.
        character: char,
    },
    /// The embedded checksum does not match (usually a typo).
    #[error("the address checksum does not match: it was probably mistyped or truncated")]
    BadChecksum,
    /// A version other than 3 (v2 addresses are 16 characters and no longer exist).
    #[error("onion address version {version} is not supported (only version 3)")]
    UnknownVersion {
        /// The version byte found.
        version: u8,
    },
    /// The 32 bytes are not a usable ed25519 public key.
    #[error("the address does not contain a valid ed25519 key")]
    InvalidKey,
}

impl OnionAddress {
    /// The address of this ed25519 public key, if it is a valid, non-degenerate point.
    pub fn from_public_key(bytes: &[u8; 32]) -> Result<OnionAddress, AddressError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| AddressError::InvalidKey)?;
        if key.is_weak() {
            // A small-order point: anyone could "own" it. Tor refuses these too.
            return Err(AddressError::InvalidKey);
        }
        Ok(OnionAddress::from_key(key))
    }

    fn from_key(key: VerifyingKey) -> OnionAddress {
        let checksum = checksum(&key.to_bytes());
        OnionAddress { key, checksum }
    }

    /// Parse an address typed or pasted by a person (see the type's documentation).
    pub fn parse(text: &str) -> Result<OnionAddress, AddressError> {
        let mut s = text.trim();
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        // `get` rather than slicing: arbitrary input may split a multi-byte character.
        if let Some(rest) = s.get(URI_SCHEME.len()..)
            && s[..URI_SCHEME.len()].eq_ignore_ascii_case(URI_SCHEME)
        {
            s = rest.trim_start_matches('/');
        }
        if let Some(head) = s.len().checked_sub(6).and_then(|cut| s.get(..cut))
            && s[head.len()..].eq_ignore_ascii_case(".onion")
        {
            s = head;
        }
        let found = s.chars().count();
        if found != ONION_ADDRESS_LEN {
            return Err(AddressError::WrongLength { found });
        }
        if let Some(character) = s
            .chars()
            .find(|c| !matches!(c.to_ascii_lowercase(), 'a'..='z' | '2'..='7'))
        {
            return Err(AddressError::BadBase32 { character });
        }
        let upper = s.to_ascii_uppercase();
        let raw = BASE32_NOPAD
            .decode(upper.as_bytes())
            .map_err(|_| AddressError::BadBase32 { character: '?' })?;
        // 56 base32 characters are exactly 35 bytes: key ‖ checksum(2) ‖ version.
        let (key, rest) = raw.split_at(32);
        let version = rest[2];
        if version != ONION_VERSION {
            return Err(AddressError::UnknownVersion { version });
        }
        let key: [u8; 32] = key.try_into().map_err(|_| AddressError::InvalidKey)?;
        if checksum(&key) != [rest[0], rest[1]] {
            return Err(AddressError::BadChecksum);
        }
        OnionAddress::from_public_key(&key)
    }

    /// The ed25519 public key bytes.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Whether `signature` is this identity's signature of the group-operation `body`
    /// (see [`IdentityKey::sign_group_operation`]). Strict verification: no malleable or
    /// small-order forms.
    pub fn verifies_group_operation(&self, body: &[u8], signature: &[u8; 64]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.key
            .verify_strict(&group_operation_message(body), &signature)
            .is_ok()
    }

    /// The 56-character form without `.onion`, lower case.
    pub fn without_suffix(&self) -> String {
        let key = self.key.to_bytes();
        let mut raw = [0u8; 35];
        raw[..32].copy_from_slice(&key);
        raw[32..34].copy_from_slice(&self.checksum);
        raw[34] = ONION_VERSION;
        BASE32_NOPAD.encode(&raw).to_ascii_lowercase()
    }

    /// The `carom:` URI form, as carried by a QR code.
    pub fn to_uri(&self) -> String {
        format!("{URI_SCHEME}{}", self.without_suffix())
    }

    /// A short form for logs, which never show full addresses: the first 6 characters.
    pub fn redacted(&self) -> Redacted {
        Redacted(*self)
    }
}

/// `.onion checksum` ‖ key ‖ version, hashed with SHA3-256; the first two bytes.
fn checksum(key: &[u8; 32]) -> [u8; 2] {
    let mut h = Sha3_256::new();
    h.update(b".onion checksum");
    h.update(key);
    h.update([ONION_VERSION]);
    let digest = h.finalize();
    [digest[0], digest[1]]
}

impl fmt::Display for OnionAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.onion", self.without_suffix())
    }
}

impl fmt::Debug for OnionAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OnionAddress({})", self.redacted())
    }
}

impl FromStr for OnionAddress {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OnionAddress::parse(s)
    }
}

/// An onion address shortened for logs: enough to tell contacts apart, not to dial them.
#[derive(Clone, Copy)]
pub struct Redacted(OnionAddress);

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", &self.0.without_suffix()[..6])
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OnionAddress {
        IdentityKey::from_seed(&[7u8; 32]).address()
    }

    #[test]
    fn display_and_parse_round_trip() {
        let a = sample();
        let text = a.to_string();
        assert_eq!(text.len(), 62);
        assert!(text.ends_with(".onion"));
        assert_eq!(OnionAddress::parse(&text), Ok(a));
    }

    #[test]
    fn parsing_forgives_case_space_suffix_and_scheme() {
        let a = sample();
        let bare = a.without_suffix();
        for form in [
            bare.clone(),
            bare.to_uppercase(),
            format!("  {bare}.onion\n"),
            format!("{bare}.ONION"),
            format!("carom:{bare}"),
            format!("CAROM://{bare}.onion"),
            a.to_uri(),
        ] {
            assert_eq!(OnionAddress::parse(&form), Ok(a), "form {form:?}");
        }
    }

    #[test]
    fn each_kind_of_bad_address_gets_its_own_error() {
        let bare = sample().without_suffix();
        assert_eq!(OnionAddress::parse("   "), Err(AddressError::Empty));
        assert_eq!(
            OnionAddress::parse(&bare[..55]),
            Err(AddressError::WrongLength { found: 55 })
        );
        let mut bad = bare.clone();
        bad.replace_range(10..11, "1");
        assert_eq!(
            OnionAddress::parse(&bad),
            Err(AddressError::BadBase32 { character: '1' })
        );
        // Change one key character: the checksum no longer matches.
        let mut typo = bare.clone().into_bytes();
        typo[3] = if typo[3] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            OnionAddress::parse(std::str::from_utf8(&typo).expect("ascii")),
            Err(AddressError::BadChecksum)
        );
        // A version-2 byte with a correct layout.
        let key = sample().public_key();
        let mut raw = [0u8; 35];
        raw[..32].copy_from_slice(&key);
        raw[34] = 2;
        let v2 = BASE32_NOPAD.encode(&raw).to_lowercase();
        assert_eq!(
            OnionAddress::parse(&v2),
            Err(AddressError::UnknownVersion { version: 2 })
        );
    }

    #[test]
    fn invalid_and_weak_keys_are_refused() {
        // The identity point (small order) has a valid encoding: y = 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            OnionAddress::from_public_key(&identity),
            Err(AddressError::InvalidKey)
        );
        // Find a 32-byte string that does not decompress to a curve point.
        let not_a_point = (0u8..=255)
            .map(|b| [b; 32])
            .find(|k| VerifyingKey::from_bytes(k).is_err())
            .expect("some constant string is off the curve");
        assert_eq!(
            OnionAddress::from_public_key(&not_a_point),
            Err(AddressError::InvalidKey)
        );
        // And the same through the text form, with a correct checksum.
        let mut raw = [0u8; 35];
        raw[..32].copy_from_slice(&not_a_point);
        raw[32..34].copy_from_slice(&checksum(&not_a_point));
        raw[34] = 3;
        let text = BASE32_NOPAD.encode(&raw).to_lowercase();
        assert_eq!(OnionAddress::parse(&text), Err(AddressError::InvalidKey));
    }

    #[test]
    fn debug_output_never_shows_the_full_address_or_seed() {
        let id = IdentityKey::from_seed(&[9u8; 32]);
        let full = id.address().without_suffix();
        let shown = format!("{id:?} {:?}", id.address());
        assert!(!shown.contains(&full));
        assert!(!shown.contains("0909"));
        assert!(shown.contains(&full[..6]));
    }
}
