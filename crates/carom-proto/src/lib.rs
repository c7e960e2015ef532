//! # carom-proto: Carom's protocol core, without I/O
//!
//! Identities and onion addresses ([`IdentityKey`], [`OnionAddress`]), device-key
//! certificates ([`DeviceCertificate`]), the wire messages ([`Message`]), and the
//! per-connection [`Session`] state machine: a Noise IK or XX handshake over length-prefixed
//! frames, then encrypted CBOR messages, keepalives and rekeying. The protocol is specified in
//! `docs/protocol.md`, with test vectors in `crates/carom-proto/vectors/`.
//!
//! This crate does no I/O and has no async runtime: callers feed it bytes and the current time
//! and get bytes, timers and events back (the model of `quinn-proto` and `rustls`):
//!
//! ```text
//!   stream bytes ─▶ Session::handle_input ─▶ Session::poll_event  ─▶ application
//!   application  ─▶ Session::send         ─▶ Session::poll_transmit ─▶ stream bytes
//!   clock        ─▶ Session::handle_timeout (when Session::poll_timeout says)
//! ```
//!
//! That keeps it deterministic (randomness is drawn from a caller-supplied RNG), testable in
//! memory with simulated latency, and fuzzable.
//!
//! What it is not: a transport, a store, or a policy engine. It does not decide who may talk to
//! whom, and it does not retry or acknowledge messages by itself: it reports who the
//! authenticated peer is and what it sent, and the caller decides, stores and acknowledges.

#![forbid(unsafe_code)]

mod cert;
mod frame;
mod identity;
mod message;
mod noise;
mod session;

pub use cert::{CertError, DeviceCertificate, DeviceKey};
pub use frame::{FrameReader, MAGIC, MAX_FRAME_BODY};
pub use identity::{
    AddressError, GROUP_OPERATION_LABEL, IdentityKey, ONION_ADDRESS_LEN, OnionAddress, Redacted,
    URI_SCHEME,
};
pub use message::{
    Ack, Chat, Close, CloseReason, ContactRequest, ContactResponse, Decision, Decoded, Digest32,
    GroupChat, GroupId, GroupOperation, GroupOperations, GroupWithdraw, MAX_ACK_IDS,
    MAX_BODY_BYTES, MAX_CLOSE_TEXT_BYTES, MAX_GREETING_BYTES, MAX_GROUP_HEADS,
    MAX_GROUP_OPERATION_BYTES, MAX_GROUP_OPERATIONS_PER_MESSAGE, MAX_NICKNAME_BYTES,
    MAX_TIMER_SECS, Message, MessageError, MessageId, OpId, PeerKind, Ping, Pong, Reject, Rekey,
    SetTimer, Withdraw, reject, types,
};
pub use noise::{MAX_TRANSPORT_PLAINTEXT, NOISE_IK, NOISE_XX, PROLOGUE_LABEL, Pattern};
pub use session::{
    Event, Phase, ProtocolError, ProtocolErrorKind, SUPPORTED_VERSIONS, SendError, Session,
    SessionConfig,
};
