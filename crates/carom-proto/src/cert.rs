//! Device keys and the certificates that bind them to an identity.
//!
//! The Noise channel authenticates x25519 static keys, not onion identities. Each device has its
//! own random x25519 key, and the identity key signs a certificate saying "this x25519 key speaks
//! for this onion address until this time". The DH key is never derived from the ed25519
//! identity: that conversion would make every handshake a Diffie-Hellman oracle on the onion
//! service's master secret.
//!
//! Layout (137 bytes, all integers big-endian):
//!
//! ```text
//! version (1) = 1 ‖ identity public key (32) ‖ device x25519 public key (32) ‖
//! expires_at unix seconds (8) ‖ ed25519 signature (64)
//! ```
//!
//! The signature covers `"carom/noise-static/v1"` ‖ identity ‖ device key ‖ expires_at.

use rand_core::{CryptoRng, RngCore};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::identity::{IdentityKey, OnionAddress};

/// Domain separation for certificate signatures.
const CERT_CONTEXT: &[u8] = b"carom/noise-static/v1";
/// Certificate format version.
const CERT_VERSION: u8 = 1;

/// A device's Noise static key (x25519). The secret is zeroised on drop.
#[derive(Clone)]
pub struct DeviceKey {
    secret: StaticSecret,
}

impl DeviceKey {
    /// A new random device key.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> DeviceKey {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut());
        DeviceKey::from_secret(&bytes)
    }

    /// The device key with these secret bytes (as stored).
    pub fn from_secret(bytes: &[u8; 32]) -> DeviceKey {
        DeviceKey {
            secret: StaticSecret::from(*bytes),
        }
    }

    /// The secret bytes, for the encrypted store and for Noise.
    pub fn secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The public key peers cache and certificates name.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.secret).to_bytes()
    }
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceKey(..)")
    }
}

/// "This x25519 key speaks for this onion address until `expires_at`", signed by the identity.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DeviceCertificate {
    identity: OnionAddress,
    device_key: [u8; 32],
    expires_at: u64,
    signature: [u8; 64],
}

/// Why a certificate was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Not [`DeviceCertificate::ENCODED_LEN`] bytes.
    #[error("a device certificate is {expected} bytes, got {found}")]
    WrongLength {
        /// Bytes expected.
        expected: usize,
        /// Bytes found.
        found: usize,
    },
    /// An unknown certificate version.
    #[error("unknown device certificate version {0}")]
    UnknownVersion(u8),
    /// The identity key inside is not a valid onion key.
    #[error("the certificate's identity key is invalid")]
    BadIdentity,
    /// The signature does not verify.
    #[error("the certificate's signature is invalid")]
    BadSignature,
    /// Past its expiry time.
    #[error("the device certificate expired at {expires_at} (now {now})")]
    Expired {
        /// Expiry, unix seconds.
        expires_at: u64,
        /// The time it was checked at, unix seconds.
        now: u64,
    },
    /// It certifies a different key than the one the peer proved it holds.
    #[error("the certificate names a different device key than the one used in the handshake")]
    KeyMismatch,
}

impl DeviceCertificate {
    /// Encoded size in bytes.
    pub const ENCODED_LEN: usize = 1 + 32 + 32 + 8 + 64;

    /// Certify `device_key` for `identity` until `expires_at` (unix seconds).
    pub fn issue(
        identity: &IdentityKey,
        device_key: &[u8; 32],
        expires_at: u64,
    ) -> DeviceCertificate {
        let address = identity.address();
        let signature = identity.sign(&signed_message(&address, device_key, expires_at));
        DeviceCertificate {
            identity: address,
            device_key: *device_key,
            expires_at,
            signature,
        }
    }

    /// The identity this certificate speaks for. Meaningful only after [`Self::verify`].
    pub fn identity(&self) -> OnionAddress {
        self.identity
    }

    /// The certified x25519 public key.
    pub fn device_key(&self) -> [u8; 32] {
        self.device_key
    }

    /// Expiry, unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// Check the signature and that it has not expired at `now` (unix seconds).
    pub fn verify(&self, now: u64) -> Result<(), CertError> {
        let message = signed_message(&self.identity, &self.device_key, self.expires_at);
        let signature = ed25519_dalek::Signature::from_bytes(&self.signature);
        self.identity
            .verifying_key()
            .verify_strict(&message, &signature)
            .map_err(|_| CertError::BadSignature)?;
        if now >= self.expires_at {
            return Err(CertError::Expired {
                expires_at: self.expires_at,
                now,
            });
        }
        Ok(())
    }

    /// The 137-byte wire form.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0] = CERT_VERSION;
        out[1..33].copy_from_slice(&self.identity.public_key());
        out[33..65].copy_from_slice(&self.device_key);
        out[65..73].copy_from_slice(&self.expires_at.to_be_bytes());
        out[73..].copy_from_slice(&self.signature);
        out
    }

    /// Parse the wire form. Does not verify: call [`Self::verify`].
    pub fn decode(bytes: &[u8]) -> Result<DeviceCertificate, CertError> {
        if bytes.len() != Self::ENCODED_LEN {
            return Err(CertError::WrongLength {
                expected: Self::ENCODED_LEN,
                found: bytes.len(),
            });
        }
        if bytes[0] != CERT_VERSION {
            return Err(CertError::UnknownVersion(bytes[0]));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[1..33]);
        let identity = OnionAddress::from_public_key(&key).map_err(|_| CertError::BadIdentity)?;
        let mut device_key = [0u8; 32];
        device_key.copy_from_slice(&bytes[33..65]);
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&bytes[65..73]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&bytes[73..]);
        Ok(DeviceCertificate {
            identity,
            device_key,
            expires_at: u64::from_be_bytes(expiry),
            signature,
        })
    }
}

impl std::fmt::Debug for DeviceCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCertificate")
            .field("identity", &self.identity)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

fn signed_message(identity: &OnionAddress, device_key: &[u8; 32], expires_at: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(CERT_CONTEXT.len() + 72);
    m.extend_from_slice(CERT_CONTEXT);
    m.extend_from_slice(&identity.public_key());
    m.extend_from_slice(device_key);
    m.extend_from_slice(&expires_at.to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (IdentityKey, DeviceKey, DeviceCertificate) {
        let id = IdentityKey::from_seed(&[1u8; 32]);
        let dev = DeviceKey::from_secret(&[2u8; 32]);
        let cert = DeviceCertificate::issue(&id, &dev.public(), 2_000_000_000);
        (id, dev, cert)
    }

    #[test]
    fn issued_certificates_verify_and_round_trip() {
        let (id, dev, cert) = fixture();
        assert_eq!(cert.verify(1_900_000_000), Ok(()));
        assert_eq!(cert.identity(), id.address());
        assert_eq!(cert.device_key(), dev.public());
        let decoded = DeviceCertificate::decode(&cert.encode()).expect("decodes");
        assert_eq!(decoded, cert);
    }

    #[test]
    fn expiry_is_enforced() {
        let (_, _, cert) = fixture();
        assert_eq!(
            cert.verify(2_000_000_000),
            Err(CertError::Expired {
                expires_at: 2_000_000_000,
                now: 2_000_000_000
            })
        );
    }

    #[test]
    fn any_changed_byte_breaks_the_certificate() {
        let (_, _, cert) = fixture();
        let good = cert.encode();
        for i in 1..DeviceCertificate::ENCODED_LEN {
            let mut bad = good;
            bad[i] ^= 0x40;
            let verdict = DeviceCertificate::decode(&bad).and_then(|c| c.verify(1));
            assert!(verdict.is_err(), "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn a_certificate_cannot_be_moved_to_another_identity() {
        let (_, dev, cert) = fixture();
        let mallory = IdentityKey::from_seed(&[3u8; 32]);
        let mut bytes = cert.encode();
        bytes[1..33].copy_from_slice(&mallory.address().public_key());
        let moved = DeviceCertificate::decode(&bytes).expect("well-formed");
        assert_eq!(moved.verify(1), Err(CertError::BadSignature));
        // While mallory's own certificate for the same device key is fine — but names mallory.
        let own = DeviceCertificate::issue(&mallory, &dev.public(), 5);
        assert_eq!(own.verify(1), Ok(()));
        assert_eq!(own.identity(), mallory.address());
    }

    #[test]
    fn malformed_encodings_are_refused_without_panicking() {
        assert!(matches!(
            DeviceCertificate::decode(&[1u8; 10]),
            Err(CertError::WrongLength { .. })
        ));
        let (_, _, cert) = fixture();
        let mut bytes = cert.encode();
        bytes[0] = 9;
        assert_eq!(
            DeviceCertificate::decode(&bytes),
            Err(CertError::UnknownVersion(9))
        );
    }
}
