//! What both ends of the handshake share: the attempts one stream allows, building and
//! running the Noise handshake, checking the peer's certificate, and the HELLO and RETRY
//! frame formats.

use std::collections::VecDeque;

use rand_core::{CryptoRng, RngCore};
use snow::HandshakeState;
use zeroize::Zeroizing;

use super::{PeerFacts, ProtocolError};
use crate::cert::{CertError, DeviceKey};
use crate::frame::{HandshakeKind, MAGIC, MAX_FRAME_BODY};
use crate::noise::{EphemeralResolver, HandshakePayload, Pattern};

/// Handshake attempts on one stream: the first, and up to two restarts (one for a version, one
/// for a stale cached key). Each attempt uses a fresh ephemeral key.
const MAX_ATTEMPTS: usize = 3;
/// Retry reason: the chosen version is not supported.
pub(super) const RETRY_VERSION: u8 = 1;
/// Retry reason: IK message 1 could not be decrypted (a stale cached static key); use XX.
pub(super) const RETRY_UNDECRYPTABLE: u8 = 2;

/// The handshake attempts of one stream: how often it restarted, and the ephemeral keys of
/// those still to come (drawn when the session is created).
pub(super) struct Attempts {
    ephemerals: VecDeque<Zeroizing<[u8; 32]>>,
    restarts: usize,
}

impl Attempts {
    pub(super) fn new<R: RngCore + CryptoRng>(rng: &mut R) -> Attempts {
        let ephemerals = (0..MAX_ATTEMPTS)
            .map(|_| {
                let mut e = Zeroizing::new([0u8; 32]);
                rng.fill_bytes(e.as_mut());
                e
            })
            .collect();
        Attempts {
            ephemerals,
            restarts: 0,
        }
    }

    /// Whether the handshake started again at least once.
    pub(super) fn restarted(&self) -> bool {
        self.restarts > 0
    }

    /// Count one more start on this stream, refusing one too many.
    pub(super) fn restart(&mut self) -> Result<(), ProtocolError> {
        self.restarts += 1;
        if self.restarts >= MAX_ATTEMPTS {
            return Err(ProtocolError::TooManyAttempts);
        }
        Ok(())
    }

    /// A snow handshake state with our static key and the next attempt's ephemeral.
    pub(super) fn handshake(
        &mut self,
        device: &DeviceKey,
        pattern: Pattern,
        side: Side,
        prologue: &[u8],
        remote_static: Option<&[u8; 32]>,
    ) -> Result<HandshakeState, ProtocolError> {
        let ephemeral = self
            .ephemerals
            .pop_front()
            .ok_or(ProtocolError::TooManyAttempts)?;
        let secret = device.secret();
        let resolver = Box::new(EphemeralResolver::new(ephemeral));
        let mut builder = snow::Builder::with_resolver(pattern.noise_params(), resolver)
            .local_private_key(secret.as_ref())
            .and_then(|b| b.prologue(prologue))
            .map_err(noise_failed)?;
        if let Some(rs) = remote_static {
            builder = builder.remote_public_key(rs).map_err(noise_failed)?;
        }
        let built = match side {
            Side::Initiator => builder.build_initiator(),
            Side::Responder => builder.build_responder(),
        };
        built.map_err(noise_failed)
    }
}

/// Which end of a Noise handshake to build.
#[derive(Clone, Copy)]
pub(super) enum Side {
    Initiator,
    Responder,
}

/// A Noise operation failed.
pub(super) fn noise_failed(e: snow::Error) -> ProtocolError {
    ProtocolError::Handshake(e.to_string())
}

/// Append the next handshake message, carrying `payload`, to the frame `body`.
pub(super) fn write_noise(
    handshake: &mut HandshakeState,
    payload: &[u8],
    body: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let mut message = vec![0u8; MAX_FRAME_BODY];
    let n = handshake
        .write_message(payload, &mut message)
        .map_err(noise_failed)?;
    if body.len() + n > MAX_FRAME_BODY {
        return Err(ProtocolError::Handshake(
            "handshake message too large".into(),
        ));
    }
    body.extend_from_slice(&message[..n]);
    Ok(())
}

/// Read the peer's next handshake message; the payload it carried.
pub(super) fn read_noise(
    handshake: &mut HandshakeState,
    message: &[u8],
) -> Result<Vec<u8>, snow::Error> {
    let mut payload = vec![0u8; MAX_FRAME_BODY];
    let len = handshake.read_message(message, &mut payload)?;
    payload.truncate(len);
    Ok(payload)
}

/// Check the certificate the peer (`sender`, for the error) sent against the static key it
/// proved in the handshake, and gather what is known of it. `live`: whether the handshake
/// itself shows the peer holds this session's keys (see `Session::peer_is_live`).
pub(super) fn authenticate(
    handshake: &HandshakeState,
    payload: &HandshakePayload,
    pattern: Pattern,
    unix_now: u64,
    sender: &str,
    live: bool,
) -> Result<PeerFacts, ProtocolError> {
    let remote = handshake
        .get_remote_static()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or_else(|| ProtocolError::Handshake("no remote static key".into()))?;
    let cert = payload
        .certificate
        .ok_or_else(|| ProtocolError::Malformed(format!("the {sender} sent no certificate")))?;
    if cert.device_key() != remote {
        return Err(CertError::KeyMismatch.into());
    }
    cert.verify(unix_now)?;
    Ok(PeerFacts {
        address: cert.identity(),
        static_key: remote,
        expires: cert.expires_at(),
        pattern,
        features: payload.features.clone(),
        live,
    })
}

/// The highest version both sides speak.
pub(super) fn best_common_version(ours: &[u8], theirs: &[u8]) -> Option<u8> {
    ours.iter().copied().filter(|v| theirs.contains(v)).max()
}

/// A handshake frame that makes no sense while `state`.
pub(super) fn unexpected(kind: Option<HandshakeKind>, state: &'static str) -> ProtocolError {
    let frame = match kind {
        Some(HandshakeKind::Hello) => "hello",
        Some(HandshakeKind::Response) => "response",
        Some(HandshakeKind::Finish) => "finish",
        Some(HandshakeKind::Retry) => "retry",
        None => "unknown",
    };
    ProtocolError::UnexpectedFrame { frame, state }
}

/// Refuses, as soon as they arrive, the first bytes of a frame that cannot be a HELLO: an
/// empty frame, another kind byte, or anything but the magic. Waiting for the whole frame
/// would let any stranger hold up to 64 KiB for the handshake timeout with a few bytes (an
/// HTTP request reads as a 18,245-byte frame). The verdict is the one the whole frame would
/// get.
pub(super) fn check_hello_start(pending: &[u8]) -> Result<(), ProtocolError> {
    if let [hi, lo, ..] = pending
        && u16::from_be_bytes([*hi, *lo]) == 0
    {
        return Err(ProtocolError::NotCarom);
    }
    if pending
        .get(2)
        .is_some_and(|&kind| kind != HandshakeKind::Hello as u8)
    {
        return Err(ProtocolError::NotCarom);
    }
    let magic = pending.get(3..).unwrap_or_default();
    let magic = &magic[..magic.len().min(MAGIC.len())];
    if !MAGIC.starts_with(magic) {
        return Err(ProtocolError::NotCarom);
    }
    Ok(())
}

/// `MAGIC ‖ n ‖ versions[n] ‖ chosen ‖ pattern`.
pub(super) fn hello_header(versions: &[u8], chosen: u8, pattern: Pattern) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&version_list(versions));
    h.push(chosen);
    h.push(pattern.wire());
    h
}

/// `n ‖ versions[n]`, keeping at most 255 versions (a u8 count).
pub(super) fn version_list(versions: &[u8]) -> Vec<u8> {
    let kept = &versions[..versions.len().min(usize::from(u8::MAX))];
    let mut list = vec![u8::try_from(kept.len()).unwrap_or(u8::MAX)];
    list.extend_from_slice(kept);
    list
}

/// A HELLO, after its kind byte.
pub(super) struct Hello<'a> {
    /// Everything before the Noise message: it goes into the prologue.
    pub(super) header: &'a [u8],
    pub(super) versions: Vec<u8>,
    pub(super) chosen: u8,
    pub(super) pattern: Pattern,
    pub(super) noise: &'a [u8],
}

pub(super) fn parse_hello(rest: &[u8]) -> Result<Hello<'_>, ProtocolError> {
    let after_magic = rest.strip_prefix(MAGIC).ok_or(ProtocolError::NotCarom)?;
    let (&n, after_n) = after_magic.split_first().ok_or(ProtocolError::NotCarom)?;
    let n = usize::from(n);
    if n == 0 || after_n.len() < n + 2 {
        return Err(ProtocolError::Malformed("truncated hello".into()));
    }
    let versions = after_n[..n].to_vec();
    let chosen = after_n[n];
    let pattern = Pattern::from_wire(after_n[n + 1])
        .ok_or_else(|| ProtocolError::Malformed("unknown handshake pattern".into()))?;
    let header_len = MAGIC.len() + 1 + n + 2;
    Ok(Hello {
        header: &rest[..header_len],
        versions,
        chosen,
        pattern,
        noise: &rest[header_len..],
    })
}

/// The version list of a RETRY, after its reason byte.
pub(super) fn parse_versions(rest: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    let (&n, list) = rest
        .split_first()
        .ok_or_else(|| ProtocolError::Malformed("retry without versions".into()))?;
    if list.len() != usize::from(n) {
        return Err(ProtocolError::Malformed("retry version list length".into()));
    }
    Ok(list.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_header_parses_back() {
        for pattern in [Pattern::IK, Pattern::XX] {
            let header = hello_header(&[1, 3, 2], 3, pattern);
            let mut rest = header.clone();
            rest.extend_from_slice(b"noise");
            let hello = parse_hello(&rest).expect("parses");
            assert_eq!(hello.header, &header[..]);
            assert_eq!(hello.versions, [1, 3, 2]);
            assert_eq!(hello.chosen, 3);
            assert_eq!(hello.pattern, pattern);
            assert_eq!(hello.noise, b"noise");
            // Every prefix of a valid HELLO frame passes the early check.
            let mut frame = u16::try_from(1 + rest.len())
                .expect("small")
                .to_be_bytes()
                .to_vec();
            frame.push(HandshakeKind::Hello as u8);
            frame.extend_from_slice(&rest);
            for end in 0..=frame.len() {
                assert_eq!(check_hello_start(&frame[..end]), Ok(()), "prefix {end}");
            }
        }
    }

    #[test]
    fn a_retry_version_list_parses_back() {
        assert_eq!(parse_versions(&version_list(&[1, 2])), Ok(vec![1, 2]));
        assert!(parse_versions(&[2, 1]).is_err(), "one version short");
        assert_eq!(version_list(&[7; 300]).len(), 256, "at most 255 versions");
    }

    #[test]
    fn the_best_common_version_is_the_highest_both_speak() {
        assert_eq!(best_common_version(&[1, 2, 3], &[3, 2]), Some(3));
        assert_eq!(best_common_version(&[1, 2], &[3]), None);
    }

    #[test]
    fn restarts_are_bounded() {
        let mut attempts = Attempts::new(&mut rand_core::OsRng);
        assert!(!attempts.restarted());
        for _ in 1..MAX_ATTEMPTS {
            attempts.restart().expect("within the limit");
        }
        assert!(attempts.restarted());
        assert_eq!(attempts.restart(), Err(ProtocolError::TooManyAttempts));
    }
}
