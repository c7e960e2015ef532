//! How a session fails: the broken protocol rules that close it, and why a send was refused.

use crate::cert::CertError;
use crate::message::MessageError;
use crate::noise::PayloadError;

/// A broken protocol rule; the session is closed when one is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The stream does not start with a Carom HELLO.
    #[error("the peer does not speak the Carom protocol")]
    NotCarom,
    /// A frame that makes no sense in this state.
    #[error("unexpected {frame} frame while {state}")]
    UnexpectedFrame {
        /// The frame received.
        frame: &'static str,
        /// What the session was doing.
        state: &'static str,
    },
    /// No protocol version in common.
    #[error("no protocol version in common (ours {ours:?}, theirs {theirs:?})")]
    NoCommonVersion {
        /// Ours.
        ours: Vec<u8>,
        /// Theirs.
        theirs: Vec<u8>,
    },
    /// The responder asked us to start again too often.
    #[error("too many handshake attempts on one connection")]
    TooManyAttempts,
    /// A Noise handshake message failed to authenticate or parse.
    #[error("the handshake failed: {0}")]
    Handshake(String),
    /// The peer's certificate is invalid, expired or does not match its key.
    #[error("the peer's device certificate is unacceptable: {0}")]
    Certificate(#[from] CertError),
    /// The service reached could not prove the identity that was dialled (the prologue binds
    /// the dialled address, so a different identity cannot complete the handshake).
    #[error("the service reached did not prove it is {expected}")]
    IdentityNotProven {
        /// The address dialled (redacted).
        expected: String,
    },
    /// The peer proved a different identity than the one dialled.
    #[error("reached {found} instead of the dialled {expected}")]
    WrongPeer {
        /// The address dialled (redacted).
        expected: String,
        /// The address proved (redacted).
        found: String,
    },
    /// A transport frame failed to authenticate.
    #[error("a frame failed to authenticate")]
    Decrypt,
    /// A malformed handshake payload.
    #[error("{0}")]
    Malformed(String),
    /// The handshake did not complete in time.
    #[error("the handshake timed out")]
    HandshakeTimeout,
}

/// What kind of rule a [`ProtocolError`] broke: a stable name for logs, tests and vectors, and
/// something an engine can branch on without reading the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProtocolErrorKind {
    /// [`ProtocolError::NotCarom`].
    NotCarom,
    /// [`ProtocolError::UnexpectedFrame`].
    UnexpectedFrame,
    /// [`ProtocolError::NoCommonVersion`].
    NoCommonVersion,
    /// [`ProtocolError::TooManyAttempts`].
    TooManyAttempts,
    /// [`ProtocolError::Handshake`].
    HandshakeFailed,
    /// [`ProtocolError::Certificate`].
    BadCertificate,
    /// [`ProtocolError::IdentityNotProven`].
    IdentityNotProven,
    /// [`ProtocolError::WrongPeer`].
    WrongPeer,
    /// [`ProtocolError::Decrypt`].
    DecryptFailed,
    /// [`ProtocolError::Malformed`].
    Malformed,
    /// [`ProtocolError::HandshakeTimeout`].
    HandshakeTimeout,
}

impl ProtocolErrorKind {
    /// The stable lower-case name (as in the test vectors).
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolErrorKind::NotCarom => "not_carom",
            ProtocolErrorKind::UnexpectedFrame => "unexpected_frame",
            ProtocolErrorKind::NoCommonVersion => "no_common_version",
            ProtocolErrorKind::TooManyAttempts => "too_many_attempts",
            ProtocolErrorKind::HandshakeFailed => "handshake_failed",
            ProtocolErrorKind::BadCertificate => "bad_certificate",
            ProtocolErrorKind::IdentityNotProven => "identity_not_proven",
            ProtocolErrorKind::WrongPeer => "wrong_peer",
            ProtocolErrorKind::DecryptFailed => "decrypt_failed",
            ProtocolErrorKind::Malformed => "malformed",
            ProtocolErrorKind::HandshakeTimeout => "handshake_timeout",
        }
    }
}

impl std::fmt::Display for ProtocolErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ProtocolError {
    /// What kind of rule this is.
    pub fn kind(&self) -> ProtocolErrorKind {
        match self {
            ProtocolError::NotCarom => ProtocolErrorKind::NotCarom,
            ProtocolError::UnexpectedFrame { .. } => ProtocolErrorKind::UnexpectedFrame,
            ProtocolError::NoCommonVersion { .. } => ProtocolErrorKind::NoCommonVersion,
            ProtocolError::TooManyAttempts => ProtocolErrorKind::TooManyAttempts,
            ProtocolError::Handshake(_) => ProtocolErrorKind::HandshakeFailed,
            ProtocolError::Certificate(_) => ProtocolErrorKind::BadCertificate,
            ProtocolError::IdentityNotProven { .. } => ProtocolErrorKind::IdentityNotProven,
            ProtocolError::WrongPeer { .. } => ProtocolErrorKind::WrongPeer,
            ProtocolError::Decrypt => ProtocolErrorKind::DecryptFailed,
            ProtocolError::Malformed(_) => ProtocolErrorKind::Malformed,
            ProtocolError::HandshakeTimeout => ProtocolErrorKind::HandshakeTimeout,
        }
    }
}

impl From<PayloadError> for ProtocolError {
    fn from(e: PayloadError) -> Self {
        match e {
            PayloadError::Certificate(c) => ProtocolError::Certificate(c),
            other => ProtocolError::Malformed(other.to_string()),
        }
    }
}

/// Why [`Session::send`](crate::Session::send) refused a message. Nothing was queued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The session is closed.
    #[error("the session is closed")]
    Closed,
    /// A field exceeds its limit.
    #[error(transparent)]
    Limit(#[from] MessageError),
    /// The encoded message does not fit in one frame.
    #[error("the message is {size} bytes encoded; at most {limit} fit in a frame")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Too much output is waiting to be written; write it first.
    #[error("too much unsent data is queued")]
    Backpressure,
}
