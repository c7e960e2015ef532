//! The Noise layer: protocol names, prologue, injected randomness, and handshake payloads.

use minicbor::{Decoder, Encoder};
use snow::params::NoiseParams;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroizing;

use crate::cert::DeviceCertificate;
use crate::message::{Decoded, Message, MessageError};

/// Noise protocol for a known contact (the responder's static key is cached).
pub const NOISE_IK: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Noise protocol for first contact (only the onion address is known).
pub const NOISE_XX: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// First bytes of every prologue.
pub const PROLOGUE_LABEL: &[u8] = b"carom-prologue";
/// Noise's AEAD tag length.
pub(crate) const TAG_LEN: usize = 16;
/// Largest plaintext in one transport frame.
pub const MAX_TRANSPORT_PLAINTEXT: usize = crate::frame::MAX_FRAME_BODY - TAG_LEN;

/// Which Noise handshake pattern a session used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// `Noise_IK`: one round trip; the first message can carry application data.
    IK,
    /// `Noise_XX`: for first contact; the responder proves its identity first.
    XX,
}

impl Pattern {
    pub(crate) fn wire(self) -> u8 {
        match self {
            Pattern::IK => 1,
            Pattern::XX => 2,
        }
    }

    pub(crate) fn from_wire(byte: u8) -> Option<Pattern> {
        match byte {
            1 => Some(Pattern::IK),
            2 => Some(Pattern::XX),
            _ => None,
        }
    }

    pub(crate) fn noise_params(self) -> NoiseParams {
        let name = match self {
            Pattern::IK => NOISE_IK,
            Pattern::XX => NOISE_XX,
        };
        name.parse().expect("the two protocol names are valid")
    }
}

/// The prologue: label ‖ the HELLO header (magic, versions, choice, pattern) ‖ the responder's
/// identity key. It binds the negotiated version and the onion address that was dialled: a
/// connection that reached a different identity cannot complete.
pub(crate) fn prologue(hello_header: &[u8], responder_identity: &[u8; 32]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PROLOGUE_LABEL.len() + hello_header.len() + 32);
    p.extend_from_slice(PROLOGUE_LABEL);
    p.extend_from_slice(hello_header);
    p.extend_from_slice(responder_identity);
    p
}

/// A snow resolver whose only randomness is one ephemeral secret we drew ourselves, so the
/// session stays deterministic given its caller's RNG (and test vectors can name the ephemeral).
pub(crate) struct EphemeralResolver {
    ephemeral: Zeroizing<[u8; 32]>,
}

impl EphemeralResolver {
    pub(crate) fn new(ephemeral: Zeroizing<[u8; 32]>) -> EphemeralResolver {
        EphemeralResolver { ephemeral }
    }
}

impl CryptoResolver for EphemeralResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(OneShotRandom {
            bytes: self.ephemeral.clone(),
            used: false,
        }))
    }
    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &snow::params::HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &snow::params::CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// Yields the prepared 32 bytes once (the ephemeral private key), then refuses.
struct OneShotRandom {
    bytes: Zeroizing<[u8; 32]>,
    used: bool,
}

impl Random for OneShotRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        if self.used || dest.len() != 32 {
            return Err(snow::Error::Rng);
        }
        dest.copy_from_slice(self.bytes.as_ref());
        self.used = true;
        Ok(())
    }
}

/// What a handshake message carries inside Noise: our certificate, our features, and
/// application messages riding along (CBOR map `{? 0: cert, ? 1: [* tstr], ? 2: [* envelope]}`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HandshakePayload {
    pub(crate) certificate: Option<DeviceCertificate>,
    pub(crate) features: Vec<String>,
    pub(crate) messages: Vec<Message>,
}

/// Most features a peer may list.
const MAX_FEATURES: usize = 32;
/// Longest feature name.
const MAX_FEATURE_LEN: usize = 64;

impl HandshakePayload {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        let fields = u64::from(self.certificate.is_some())
            + u64::from(!self.features.is_empty())
            + u64::from(!self.messages.is_empty());
        // Writing into a Vec cannot fail; ignore the infallible results.
        let _ = e.map(fields);
        if let Some(cert) = &self.certificate {
            let _ = e.u8(0).and_then(|e| e.bytes(&cert.encode()));
        }
        if !self.features.is_empty() {
            let _ = e.u8(1).and_then(|e| e.array(self.features.len() as u64));
            for f in &self.features {
                let _ = e.str(f);
            }
        }
        if !self.messages.is_empty() {
            let _ = e.u8(2).and_then(|e| e.array(self.messages.len() as u64));
            for m in &self.messages {
                let _ = m.encode_into(&mut e);
            }
        }
        e.into_writer()
    }

    /// Size of the encoding, to pack as many early messages as fit.
    pub(crate) fn encoded_len(&self) -> usize {
        self.encode().len()
    }

    /// Decode; unknown keys are skipped, unknown message types are returned separately.
    pub(crate) fn decode(bytes: &[u8]) -> Result<(HandshakePayload, Vec<u32>), PayloadError> {
        let mut out = HandshakePayload::default();
        let mut unknown = Vec::new();
        if bytes.is_empty() {
            return Ok((out, unknown));
        }
        let mut d = Decoder::new(bytes);
        let bad = |e: minicbor::decode::Error| PayloadError::Malformed(e.to_string());
        let Some(entries) = d.map().map_err(bad)? else {
            return Err(PayloadError::Malformed("indefinite-length map".into()));
        };
        for _ in 0..entries {
            match d.u32().map_err(bad)? {
                0 => {
                    let cert = DeviceCertificate::decode(d.bytes().map_err(bad)?)
                        .map_err(PayloadError::Certificate)?;
                    out.certificate = Some(cert);
                }
                1 => {
                    let n = definite_len(&mut d)?;
                    if n > MAX_FEATURES {
                        return Err(PayloadError::Malformed("too many features".into()));
                    }
                    for _ in 0..n {
                        let f = d.str().map_err(bad)?;
                        if f.len() > MAX_FEATURE_LEN {
                            return Err(PayloadError::Malformed("feature name too long".into()));
                        }
                        out.features.push(f.to_owned());
                    }
                }
                2 => {
                    let n = definite_len(&mut d)?;
                    for _ in 0..n {
                        match Message::decode_from(&mut d).map_err(PayloadError::Message)? {
                            Decoded::Known(m) => out.messages.push(m),
                            Decoded::Unknown { message_type } => unknown.push(message_type),
                        }
                    }
                }
                _ => d.skip().map_err(bad)?,
            }
        }
        if d.position() != bytes.len() {
            return Err(PayloadError::Malformed("trailing bytes".into()));
        }
        Ok((out, unknown))
    }
}

fn definite_len(d: &mut Decoder<'_>) -> Result<usize, PayloadError> {
    match d.array() {
        Ok(Some(n)) => usize::try_from(n).map_err(|_| PayloadError::Malformed("huge array".into())),
        Ok(None) => Err(PayloadError::Malformed("indefinite-length array".into())),
        Err(e) => Err(PayloadError::Malformed(e.to_string())),
    }
}

/// Why a handshake payload was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PayloadError {
    #[error("malformed handshake payload: {0}")]
    Malformed(String),
    #[error("bad certificate in handshake: {0}")]
    Certificate(crate::cert::CertError),
    #[error("bad message in handshake: {0}")]
    Message(MessageError),
}
