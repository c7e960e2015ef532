//! The per-connection state machine.
//!
//! A [`Session`] is created for each stream: [`Session::initiator`] when we dial a contact,
//! [`Session::responder`] when a stream arrives on our onion service. The caller owns all I/O:
//!
//! ```text
//!   bytes read from the stream ──▶ handle_input(bytes, now)
//!   the clock reaches poll_timeout() ──▶ handle_timeout(now)
//!   application ──▶ send(message, now) / accept(now) / close(reason, now)
//!   poll_transmit() ──▶ bytes to write to the stream (then flush)
//!   poll_event()    ──▶ PeerAuthenticated, Established, Message, Closed, …
//! ```
//!
//! The session never decides policy. A responder reports who the authenticated peer is
//! ([`Event::PeerAuthenticated`]) and the messages that rode in the handshake; the caller
//! stores them, queues acknowledgements with [`Session::send`], and then calls
//! [`Session::accept`] to keep the session or [`Session::close`] to end it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};
use snow::{HandshakeState, TransportState};
use zeroize::Zeroizing;

use crate::cert::{CertError, DeviceCertificate, DeviceKey};
use crate::frame::{FrameReader, HandshakeKind, MAGIC, MAX_FRAME_BODY, write_frame};
use crate::identity::{IdentityKey, OnionAddress};
use crate::message::{
    Close, CloseReason, Decoded, Message, MessageError, MessageId, Ping, Pong, Rekey,
};
use crate::noise::{
    EphemeralResolver, HandshakePayload, MAX_TRANSPORT_PLAINTEXT, Pattern, PayloadError, TAG_LEN,
    prologue,
};

/// Protocol versions this implementation speaks.
pub const SUPPORTED_VERSIONS: &[u8] = &[1];
/// Handshake attempts on one stream: the first, and up to two restarts (one for a version, one
/// for a stale cached key). Each attempt uses a fresh ephemeral key.
const MAX_ATTEMPTS: usize = 3;
/// Retry reason: the chosen version is not supported.
const RETRY_VERSION: u8 = 1;
/// Retry reason: IK message 1 could not be decrypted (a stale cached static key); use XX.
const RETRY_UNDECRYPTABLE: u8 = 2;
/// Noise overhead of each handshake message: `e` (32), and for IK message 1 an encrypted `s`
/// (32 + 16), and the payload tag (16).
const IK1_OVERHEAD: usize = 32 + 48 + TAG_LEN;
const XX3_OVERHEAD: usize = 48 + TAG_LEN;
const RESPONSE_OVERHEAD: usize = 32 + 48 + TAG_LEN;

/// Timers and limits of a session. [`SessionConfig::new`] gives the documented defaults.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Our identity (signs nothing here; names us in the prologue as a responder).
    pub identity: IdentityKey,
    /// Our device's Noise static key.
    pub device: DeviceKey,
    /// The certificate binding `device` to `identity`.
    pub certificate: DeviceCertificate,
    /// Capabilities we announce (e.g. `"file-transfer/1"`); unknown ones are ignored by peers.
    pub features: Vec<String>,
    /// The handshake must complete within this time (default 90 s: Tor can be slow).
    pub handshake_timeout: Duration,
    /// Ping the peer when nothing was heard for this long (default 60 s).
    pub keepalive_interval: Duration,
    /// Declare the peer dead when nothing was heard for this long (default 180 s).
    pub idle_timeout: Duration,
    /// When a frame that needs an answer (a chat, a contact request or response) has gone
    /// unanswered this long, ping at once rather than waiting for the keepalive
    /// (default 3 s).
    pub probe_after: Duration,
    /// Declare the peer dead when a ping sent while frames await an answer is not answered
    /// within this time (default 10 s). A circuit that hangs is noticed in
    /// `probe_after + answer_timeout`, not `idle_timeout`.
    pub answer_timeout: Duration,
    /// Switch transport keys after this many frames sent (default 2^20).
    pub rekey_after_frames: u64,
    /// Switch transport keys after this much time (default 1 hour).
    pub rekey_after: Duration,
    /// Refuse [`Session::send`] while more than this many bytes wait to be written or to be
    /// encrypted, before the handshake as after it (default 4 MiB).
    pub max_pending_output: usize,
    /// Protocol versions offered, highest preference last. Leave the default
    /// ([`SUPPORTED_VERSIONS`]) except to test negotiation.
    pub versions: Vec<u8>,
}

impl SessionConfig {
    /// A configuration with the default timers and limits.
    pub fn new(
        identity: IdentityKey,
        device: DeviceKey,
        certificate: DeviceCertificate,
    ) -> SessionConfig {
        SessionConfig {
            identity,
            device,
            certificate,
            features: Vec::new(),
            handshake_timeout: Duration::from_secs(90),
            keepalive_interval: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(180),
            probe_after: Duration::from_secs(3),
            answer_timeout: Duration::from_secs(10),
            rekey_after_frames: 1 << 20,
            rekey_after: Duration::from_secs(3600),
            max_pending_output: 4 << 20,
            versions: SUPPORTED_VERSIONS.to_vec(),
        }
    }
}

/// What happened on a session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// (Responder) The initiator proved its identity. Any messages that rode in the handshake
    /// follow as [`Event::Message`]. Call [`Session::accept`] or [`Session::close`] — unless
    /// an [`Event::Closed`] follows them: the initiator put a Close in its handshake message,
    /// the session is over, and both calls do nothing.
    PeerAuthenticated {
        /// The verified onion address of the peer.
        peer: OnionAddress,
        /// Its device's Noise static key.
        peer_static: [u8; 32],
        /// Its certificate's expiry, unix seconds.
        certificate_expires: u64,
        /// The pattern used.
        pattern: Pattern,
        /// Capabilities it announced.
        features: Vec<String>,
    },
    /// The channel is established in both directions.
    Established {
        /// The verified onion address of the peer.
        peer: OnionAddress,
        /// Its device's Noise static key: an initiator caches it to use IK next time.
        peer_static: [u8; 32],
        /// Its certificate's expiry, unix seconds: cache the key no longer than this.
        certificate_expires: u64,
        /// The pattern that completed.
        pattern: Pattern,
        /// Whether the responder asked us to start again (a stale cached key or a version).
        retried: bool,
        /// Capabilities it announced.
        features: Vec<String>,
    },
    /// An application message from the peer.
    Message(Message),
    /// A message of a type this version does not know; ignored.
    UnknownMessage {
        /// Its type number.
        message_type: u32,
    },
    /// An authenticated frame held a message that could not be decoded; it was dropped and
    /// the session goes on.
    MalformedMessage {
        /// What was wrong.
        reason: String,
        /// The message's type and id, when they could still be read
        /// ([`Message::salvage_id`]): enough to refuse it by id with a [`crate::Reject`].
        salvaged: Option<(u32, MessageId)>,
        /// It decoded but a field is over its limit (reject reason `too_large`, not
        /// `malformed`).
        too_large: bool,
    },
    /// The session ended.
    Closed {
        /// Why.
        reason: CloseReason,
        /// Whether the peer ended it (otherwise a timeout or a protocol error here).
        by_peer: bool,
    },
}

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

impl ProtocolError {
    /// A stable machine-readable name for this kind of failure.
    pub fn kind(&self) -> &'static str {
        match self {
            ProtocolError::NotCarom => "not_carom",
            ProtocolError::UnexpectedFrame { .. } => "unexpected_frame",
            ProtocolError::NoCommonVersion { .. } => "no_common_version",
            ProtocolError::TooManyAttempts => "too_many_attempts",
            ProtocolError::Handshake(_) => "handshake_failed",
            ProtocolError::Certificate(_) => "bad_certificate",
            ProtocolError::IdentityNotProven { .. } => "identity_not_proven",
            ProtocolError::WrongPeer { .. } => "wrong_peer",
            ProtocolError::Decrypt => "decrypt_failed",
            ProtocolError::Malformed(_) => "malformed",
            ProtocolError::HandshakeTimeout => "handshake_timeout",
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

/// Why [`Session::send`] refused a message. Nothing was queued.
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

/// The state of a session, for callers that want to show or branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The handshake is under way.
    Handshaking,
    /// (Responder) The peer is authenticated; waiting for accept or close.
    AwaitingDecision,
    /// Messages flow both ways.
    Established,
    /// Over.
    Closed,
}

enum State {
    /// Initiator, before its HELLO is written (written lazily so `send` calls made right after
    /// construction ride in it).
    Start,
    /// Initiator, HELLO sent.
    AwaitResponse {
        handshake: Box<HandshakeState>,
        pattern: Pattern,
        /// Messages that rode in message 1 (IK): resent if the responder asks to start again.
        early: Vec<Message>,
    },
    /// Responder, waiting for a HELLO.
    AwaitHello,
    /// Responder (XX), message 2 sent.
    AwaitFinish {
        handshake: Box<HandshakeState>,
    },
    /// Responder, peer authenticated, waiting for the caller's decision.
    AwaitDecision {
        pending: Pending,
    },
    /// Both directions keyed.
    Established {
        transport: Box<TransportState>,
    },
    Closed,
}

/// What a responder still owes before it can call the channel established.
enum Pending {
    /// IK: message 2 is still to be written (it carries whatever was queued meanwhile).
    IkResponse(Box<HandshakeState>),
    /// XX: the handshake is complete.
    Transport(Box<TransportState>),
}

#[allow(
    clippy::large_enum_variant,
    reason = "one per session; boxing the address would only add an allocation"
)]
enum Role {
    Initiator {
        peer: OnionAddress,
        cached_static: Option<[u8; 32]>,
        version: u8,
    },
    Responder,
}

/// Facts about the peer, once known.
#[derive(Clone)]
struct PeerFacts {
    address: OnionAddress,
    static_key: [u8; 32],
    expires: u64,
    pattern: Pattern,
    features: Vec<String>,
}

/// Messages not yet written, with their encoded size counted: the send limit covers them as
/// well as the output, so a caller cannot pile up an unbounded backlog before the handshake.
#[derive(Default)]
struct Queue {
    messages: VecDeque<(Message, usize)>,
    bytes: usize,
}

impl Queue {
    fn push_back(&mut self, message: Message) {
        let size = message.encode().len();
        self.bytes += size;
        self.messages.push_back((message, size));
    }

    fn push_front(&mut self, message: Message) {
        let size = message.encode().len();
        self.bytes += size;
        self.messages.push_front((message, size));
    }

    fn pop_front(&mut self) -> Option<Message> {
        let (message, size) = self.messages.pop_front()?;
        self.bytes -= size;
        Some(message)
    }

    fn front(&self) -> Option<&Message> {
        self.messages.front().map(|(m, _)| m)
    }

    fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    fn clear(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }
}

/// A ping in flight.
#[derive(Clone, Copy)]
struct PingSent {
    nonce: u64,
    at: Instant,
    /// How many answer-needing frames had been written when it was sent: its pong proves the
    /// peer read all of them.
    covers: u64,
}

/// One Carom connection, as a state machine. See the module documentation.
pub struct Session {
    config: Arc<SessionConfig>,
    role: Role,
    state: State,
    reader: FrameReader,
    output: Vec<u8>,
    events: VecDeque<Event>,
    /// Application messages not yet written (waiting for the handshake, or for room).
    queued: Queue,
    ephemerals: VecDeque<Zeroizing<[u8; 32]>>,
    attempts: usize,
    retried: bool,
    unix_now: u64,
    peer: Option<PeerFacts>,
    started: Instant,
    last_received: Instant,
    last_rekey: Instant,
    frames_since_rekey: u64,
    ping: Option<PingSent>,
    /// Frames written that need an answer (chats, contact requests and responses).
    needs_answer: u64,
    /// Since when a written frame has waited for the peer to show it read it, if one does.
    unanswered_since: Option<Instant>,
    next_nonce: u64,
    rtt: Option<Duration>,
    /// An authenticated transport frame from the peer has arrived (see [`Session::peer_is_live`]).
    heard_transport: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("phase", &self.phase())
            .field("peer", &self.peer.as_ref().map(|p| p.address))
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session that dials `peer`. With `cached_static` (the peer's device key from an
    /// earlier session) it uses IK, so the first message sent is delivered in one round trip;
    /// without, XX. `unix_now` (seconds) is used to check certificate expiry; randomness for
    /// the ephemeral keys comes from `rng`.
    pub fn initiator<R: RngCore + CryptoRng>(
        config: Arc<SessionConfig>,
        peer: OnionAddress,
        cached_static: Option<[u8; 32]>,
        unix_now: u64,
        now: Instant,
        rng: &mut R,
    ) -> Session {
        let version = config.versions.iter().copied().max().unwrap_or(1);
        let role = Role::Initiator {
            peer,
            cached_static,
            version,
        };
        Session::new(config, role, State::Start, unix_now, now, rng)
    }

    /// A session for a stream that arrived on our onion service.
    pub fn responder<R: RngCore + CryptoRng>(
        config: Arc<SessionConfig>,
        unix_now: u64,
        now: Instant,
        rng: &mut R,
    ) -> Session {
        Session::new(
            config,
            Role::Responder,
            State::AwaitHello,
            unix_now,
            now,
            rng,
        )
    }

    fn new<R: RngCore + CryptoRng>(
        config: Arc<SessionConfig>,
        role: Role,
        state: State,
        unix_now: u64,
        now: Instant,
        rng: &mut R,
    ) -> Session {
        let ephemerals = (0..MAX_ATTEMPTS)
            .map(|_| {
                let mut e = Zeroizing::new([0u8; 32]);
                rng.fill_bytes(e.as_mut());
                e
            })
            .collect();
        Session {
            config,
            role,
            state,
            reader: FrameReader::default(),
            output: Vec::new(),
            events: VecDeque::new(),
            queued: Queue::default(),
            ephemerals,
            attempts: 0,
            retried: false,
            unix_now,
            peer: None,
            started: now,
            last_received: now,
            last_rekey: now,
            frames_since_rekey: 0,
            ping: None,
            needs_answer: 0,
            unanswered_since: None,
            next_nonce: 1,
            rtt: None,
            heard_transport: false,
        }
    }

    /// Where the session is.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Start
            | State::AwaitResponse { .. }
            | State::AwaitHello
            | State::AwaitFinish { .. } => Phase::Handshaking,
            State::AwaitDecision { .. } => Phase::AwaitingDecision,
            State::Established { .. } => Phase::Established,
            State::Closed => Phase::Closed,
        }
    }

    /// Whether the session is over (write out [`Self::poll_transmit`] once more, then drop it).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The peer's verified onion address, once authenticated.
    pub fn peer(&self) -> Option<OnionAddress> {
        self.peer.as_ref().map(|p| p.address)
    }

    /// Whether the peer has shown that it is live — that it holds this session's keys — and
    /// not merely that someone sent its first handshake message.
    ///
    /// An IK message 1 can be replayed by anyone who recorded it: the responder decrypts it,
    /// authenticates the initiator and answers, but the replayer cannot read the answer. So an
    /// IK responder counts the peer live only once an authenticated transport frame from it
    /// has arrived. Every other authenticated peer is live: an initiator's peer answered our
    /// fresh ephemeral key, and an XX initiator's message 3 answers ours.
    pub fn peer_is_live(&self) -> bool {
        match (&self.role, &self.peer) {
            (_, None) => false,
            (Role::Initiator { .. }, Some(_)) => true,
            (Role::Responder, Some(facts)) => facts.pattern == Pattern::XX || self.heard_transport,
        }
    }

    /// The most recent keepalive round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Bytes waiting: written by the session and not yet taken by [`Self::poll_transmit`],
    /// plus messages queued for encryption (before the handshake completes, or behind a
    /// full output). [`Self::send`] refuses above `max_pending_output`.
    pub fn pending_output(&self) -> usize {
        self.output.len() + self.queued.bytes
    }

    /// Queue an application message. Before the handshake completes, messages wait and ride in
    /// the first handshake message that can carry them (IK message 1, XX message 3, or the
    /// responder's IK message 2).
    pub fn send(&mut self, message: Message, now: Instant) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        message.check_limits()?;
        let size = message.encode().len();
        if size > MAX_TRANSPORT_PLAINTEXT {
            return Err(SendError::TooLarge {
                size,
                limit: MAX_TRANSPORT_PLAINTEXT,
            });
        }
        if self.pending_output() > self.config.max_pending_output {
            return Err(SendError::Backpressure);
        }
        self.queued.push_back(message);
        if matches!(self.state, State::Established { .. }) {
            self.flush_queued(now);
        }
        Ok(())
    }

    /// (Responder) Keep the session: complete the handshake (writing IK message 2 with any
    /// queued messages) and let messages flow. Does nothing in other phases, a session the
    /// initiator closed during its handshake included.
    pub fn accept(&mut self, now: Instant) {
        let State::AwaitDecision { pending } = std::mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        match self.finish_responder(pending) {
            Ok(transport) => {
                self.state = State::Established { transport };
                self.emit_established();
                self.flush_queued(now);
            }
            Err(e) => self.fail(&e),
        }
    }

    /// End the session: queued messages are written, then a `Close` with `reason`.
    ///
    /// A responder that has not accepted still completes the cryptographic handshake so its
    /// refusal (and any acknowledgement queued before it) is authenticated.
    pub fn close(&mut self, reason: CloseReason, now: Instant) {
        let close = Message::Close(Close {
            code: reason.code(),
            text: None,
        });
        match std::mem::replace(&mut self.state, State::Closed) {
            State::AwaitDecision { pending } => {
                self.queued.push_back(close);
                if let Ok(transport) = self.finish_responder(pending) {
                    self.state = State::Established { transport };
                    self.flush_queued(now);
                }
            }
            State::Established { transport } => {
                self.state = State::Established { transport };
                self.queued.push_back(close);
                self.flush_queued(now);
            }
            _ => {}
        }
        self.state = State::Closed;
        self.queued.clear();
    }

    /// Feed bytes read from the stream. On error the session is closed (an authenticated
    /// `Close` is queued when possible) and an [`Event::Closed`] is emitted.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) -> Result<(), ProtocolError> {
        if self.is_closed() {
            return Ok(());
        }
        self.ensure_started();
        self.reader.push(data);
        if matches!(self.state, State::AwaitHello)
            && let Err(e) = check_hello_start(self.reader.pending())
        {
            self.fail(&e);
            return Err(e);
        }
        while let Some(frame) = self.reader.next_frame() {
            self.last_received = now;
            if let Err(e) = self.handle_frame(&frame, now) {
                self.fail(&e);
                return Err(e);
            }
            if self.is_closed() {
                break;
            }
        }
        Ok(())
    }

    /// Bytes to write to the stream, if any. Write them all, then flush.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.ensure_started();
        if self.output.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.output))
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let c = &self.config;
        match self.state {
            State::Closed => None,
            State::Established { .. } => {
                let heard = if self.ping.is_some() {
                    self.last_received + c.idle_timeout
                } else {
                    self.last_received + c.keepalive_interval
                };
                let answer = match (self.unanswered_since, self.ping) {
                    (Some(_), Some(ping)) => Some(ping.at + c.answer_timeout),
                    (Some(since), None) => Some(since + c.probe_after),
                    (None, _) => None,
                };
                let next = heard.min(self.last_rekey + c.rekey_after);
                Some(answer.map_or(next, |a| a.min(next)))
            }
            _ => Some(self.started + c.handshake_timeout),
        }
    }

    /// Run the timers: handshake timeout, keepalive pings, dead-peer detection, rekeying.
    pub fn handle_timeout(&mut self, now: Instant) {
        let c = Arc::clone(&self.config);
        match self.state {
            State::Closed => {}
            State::Established { .. } => {
                let unanswered_ping = self.unanswered_since.is_some()
                    && self
                        .ping
                        .is_some_and(|ping| now >= ping.at + c.answer_timeout);
                if now >= self.last_received + c.idle_timeout || unanswered_ping {
                    self.close(CloseReason::Timeout, now);
                    self.events.push_back(Event::Closed {
                        reason: CloseReason::Timeout,
                        by_peer: false,
                    });
                    return;
                }
                let probe = self
                    .unanswered_since
                    .is_some_and(|since| now >= since + c.probe_after);
                if self.ping.is_none()
                    && (probe || now >= self.last_received + c.keepalive_interval)
                {
                    let nonce = self.next_nonce;
                    self.next_nonce += 1;
                    self.ping = Some(PingSent {
                        nonce,
                        at: now,
                        covers: self.needs_answer,
                    });
                    self.queued.push_front(Message::Ping(Ping { nonce }));
                    self.flush_queued(now);
                }
                if now >= self.last_rekey + c.rekey_after {
                    self.rekey(now);
                }
            }
            _ => {
                if now >= self.started + c.handshake_timeout {
                    self.fail(&ProtocolError::HandshakeTimeout);
                }
            }
        }
    }

    // ----- internals -----

    fn ensure_started(&mut self) {
        if matches!(self.state, State::Start)
            && let Err(e) = self.start_handshake()
        {
            self.fail(&e);
        }
    }

    fn next_ephemeral(&mut self) -> Result<Zeroizing<[u8; 32]>, ProtocolError> {
        self.ephemerals
            .pop_front()
            .ok_or(ProtocolError::TooManyAttempts)
    }

    /// Build a snow handshake state with our static key and the prepared ephemeral.
    fn build(
        &mut self,
        pattern: Pattern,
        initiator: bool,
        prologue: &[u8],
        remote_static: Option<&[u8; 32]>,
    ) -> Result<HandshakeState, ProtocolError> {
        let ephemeral = self.next_ephemeral()?;
        let secret = self.config.device.secret();
        let resolver = Box::new(EphemeralResolver::new(ephemeral));
        let mut builder = snow::Builder::with_resolver(pattern.noise_params(), resolver)
            .local_private_key(secret.as_ref())
            .and_then(|b| b.prologue(prologue))
            .map_err(|e| ProtocolError::Handshake(e.to_string()))?;
        if let Some(rs) = remote_static {
            builder = builder
                .remote_public_key(rs)
                .map_err(|e| ProtocolError::Handshake(e.to_string()))?;
        }
        let built = if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        };
        built.map_err(|e| ProtocolError::Handshake(e.to_string()))
    }

    /// Initiator: write a HELLO (IK if we have a usable cached key, otherwise XX).
    fn start_handshake(&mut self) -> Result<(), ProtocolError> {
        let Role::Initiator {
            peer,
            cached_static,
            version,
        } = &self.role
        else {
            return Ok(());
        };
        let (peer, cached_static, version) = (*peer, *cached_static, *version);
        let pattern = if cached_static.is_some() {
            Pattern::IK
        } else {
            Pattern::XX
        };
        let header = hello_header(&self.config.versions, version, pattern);
        let prologue = prologue(&header, &peer.public_key());
        let mut handshake = self.build(pattern, true, &prologue, cached_static.as_ref())?;
        let mut early = Vec::new();
        let payload = match pattern {
            Pattern::IK => {
                let room = MAX_FRAME_BODY - 1 - header.len() - IK1_OVERHEAD;
                let payload = self.pack_payload(room);
                early.clone_from(&payload.messages);
                payload.encode()
            }
            // XX message 1 is sent in the clear: it carries nothing.
            Pattern::XX => Vec::new(),
        };
        let mut body = vec![HandshakeKind::Hello as u8];
        body.extend_from_slice(&header);
        write_noise(&mut handshake, &payload, &mut body)?;
        write_frame(&mut self.output, &body);
        self.state = State::AwaitResponse {
            handshake: Box::new(handshake),
            pattern,
            early,
        };
        Ok(())
    }

    /// Our certificate and features, plus as many queued messages as fit in `room` bytes.
    fn pack_payload(&mut self, room: usize) -> HandshakePayload {
        let mut payload = HandshakePayload {
            certificate: Some(self.config.certificate),
            features: self.config.features.clone(),
            messages: Vec::new(),
        };
        while let Some(next) = self.queued.front() {
            payload.messages.push(next.clone());
            if payload.encoded_len() > room {
                payload.messages.pop();
                break;
            }
            if let Some(m) = self.queued.pop_front()
                && needs_answer(&m)
            {
                // Answered once the session is up; until then the handshake timeout applies.
                self.needs_answer += 1;
                self.unanswered_since.get_or_insert(self.started);
            }
        }
        payload
    }

    fn handle_frame(&mut self, frame: &[u8], now: Instant) -> Result<(), ProtocolError> {
        let result = self.handle_frame_inner(frame, now);
        if matches!(self.state, State::Established { .. }) && !self.queued.is_empty() {
            self.flush_queued(now);
        }
        result
    }

    fn handle_frame_inner(&mut self, frame: &[u8], now: Instant) -> Result<(), ProtocolError> {
        // After XX message 3 the initiator may send at once, while we are still deciding.
        if self.transport_mut().is_some() {
            return self.handle_transport(frame, now);
        }
        let (&kind_byte, rest) = frame.split_first().ok_or(ProtocolError::NotCarom)?;
        let kind = HandshakeKind::from_byte(kind_byte);
        match (std::mem::replace(&mut self.state, State::Closed), kind) {
            (State::AwaitHello, Some(HandshakeKind::Hello)) => self.on_hello(rest),
            (State::AwaitHello, _) => Err(ProtocolError::NotCarom),
            (
                State::AwaitResponse {
                    handshake,
                    pattern,
                    early,
                },
                Some(HandshakeKind::Response),
            ) => self.on_response(*handshake, pattern, early, rest),
            (State::AwaitResponse { early, .. }, Some(HandshakeKind::Retry)) => {
                self.on_retry(early, rest)
            }
            (State::AwaitFinish { handshake }, Some(HandshakeKind::Finish)) => {
                self.on_finish(*handshake, rest)
            }
            (state, kind) => {
                let state_name = match state {
                    State::AwaitDecision { .. } => "waiting for the application's decision",
                    State::AwaitResponse { .. } => "waiting for the response",
                    State::AwaitFinish { .. } => "waiting for handshake message 3",
                    _ => "handshaking",
                };
                Err(ProtocolError::UnexpectedFrame {
                    frame: kind.map_or("unknown", kind_name),
                    state: state_name,
                })
            }
        }
    }

    /// Responder: a HELLO arrived.
    fn on_hello(&mut self, rest: &[u8]) -> Result<(), ProtocolError> {
        let hello = parse_hello(rest)?;
        let ours = &self.config.versions;
        let best_common = ours
            .iter()
            .copied()
            .filter(|v| hello.versions.contains(v))
            .max();
        if best_common != Some(hello.chosen) {
            if best_common.is_none() && self.attempts > 0 {
                return Err(ProtocolError::NoCommonVersion {
                    ours: ours.clone(),
                    theirs: hello.versions,
                });
            }
            return self.send_retry(RETRY_VERSION);
        }
        let own_identity = self.config.identity.address().public_key();
        let prologue = prologue(hello.header, &own_identity);
        let mut handshake = self.build(hello.pattern, false, &prologue, None)?;
        let mut payload_bytes = vec![0u8; MAX_FRAME_BODY];
        let read = handshake.read_message(hello.noise, &mut payload_bytes);
        match hello.pattern {
            Pattern::IK => {
                let Ok(len) = read else {
                    // Most likely the initiator cached a static key we no longer use. Ask it
                    // to start again with XX on this same stream.
                    return self.send_retry(RETRY_UNDECRYPTABLE);
                };
                let (payload, unknown) = HandshakePayload::decode(&payload_bytes[..len])?;
                self.authenticate_initiator(&handshake, &payload, Pattern::IK)?;
                if self.deliver_early(payload.messages, &unknown) {
                    // The initiator closed: no decision, and no message 2.
                    self.state = State::Closed;
                    return Ok(());
                }
                self.state = State::AwaitDecision {
                    pending: Pending::IkResponse(Box::new(handshake)),
                };
                Ok(())
            }
            Pattern::XX => {
                let len = read.map_err(|e| ProtocolError::Handshake(e.to_string()))?;
                if len != 0 {
                    return Err(ProtocolError::Malformed(
                        "XX message 1 must carry no payload".into(),
                    ));
                }
                let payload = HandshakePayload {
                    certificate: Some(self.config.certificate),
                    features: self.config.features.clone(),
                    messages: Vec::new(),
                };
                let mut body = vec![HandshakeKind::Response as u8];
                write_noise(&mut handshake, &payload.encode(), &mut body)?;
                write_frame(&mut self.output, &body);
                self.state = State::AwaitFinish {
                    handshake: Box::new(handshake),
                };
                Ok(())
            }
        }
    }

    fn send_retry(&mut self, reason: u8) -> Result<(), ProtocolError> {
        self.attempts += 1;
        if self.attempts >= MAX_ATTEMPTS {
            return Err(ProtocolError::TooManyAttempts);
        }
        let mut body = vec![HandshakeKind::Retry as u8, reason];
        body.extend_from_slice(&version_list(&self.config.versions));
        write_frame(&mut self.output, &body);
        self.state = State::AwaitHello;
        Ok(())
    }

    /// Responder (XX): message 3 arrived.
    fn on_finish(
        &mut self,
        mut handshake: HandshakeState,
        rest: &[u8],
    ) -> Result<(), ProtocolError> {
        let mut payload_bytes = vec![0u8; MAX_FRAME_BODY];
        let len = handshake
            .read_message(rest, &mut payload_bytes)
            .map_err(|e| ProtocolError::Handshake(e.to_string()))?;
        let (payload, unknown) = HandshakePayload::decode(&payload_bytes[..len])?;
        self.authenticate_initiator(&handshake, &payload, Pattern::XX)?;
        let transport = handshake
            .into_transport_mode()
            .map_err(|e| ProtocolError::Handshake(e.to_string()))?;
        if self.deliver_early(payload.messages, &unknown) {
            // The initiator closed: no decision, and frames after message 3 are ignored.
            self.state = State::Closed;
            return Ok(());
        }
        self.state = State::AwaitDecision {
            pending: Pending::Transport(Box::new(transport)),
        };
        Ok(())
    }

    /// Responder: check the initiator's certificate against the key it proved, and report it.
    fn authenticate_initiator(
        &mut self,
        handshake: &HandshakeState,
        payload: &HandshakePayload,
        pattern: Pattern,
    ) -> Result<(), ProtocolError> {
        let remote = remote_static(handshake)?;
        let cert = payload
            .certificate
            .ok_or_else(|| ProtocolError::Malformed("the initiator sent no certificate".into()))?;
        check_certificate(&cert, &remote, self.unix_now)?;
        let facts = PeerFacts {
            address: cert.identity(),
            static_key: remote,
            expires: cert.expires_at(),
            pattern,
            features: payload.features.clone(),
        };
        self.events.push_back(Event::PeerAuthenticated {
            peer: facts.address,
            peer_static: remote,
            certificate_expires: facts.expires,
            pattern,
            features: facts.features.clone(),
        });
        self.peer = Some(facts);
        Ok(())
    }

    /// Responder: after the decision, produce the transport (writing IK message 2 if owed).
    fn finish_responder(&mut self, pending: Pending) -> Result<Box<TransportState>, ProtocolError> {
        match pending {
            Pending::Transport(transport) => Ok(transport),
            Pending::IkResponse(mut handshake) => {
                let room = MAX_FRAME_BODY - 1 - RESPONSE_OVERHEAD;
                let payload = self.pack_payload(room);
                let mut body = vec![HandshakeKind::Response as u8];
                write_noise(&mut handshake, &payload.encode(), &mut body)?;
                write_frame(&mut self.output, &body);
                handshake
                    .into_transport_mode()
                    .map(Box::new)
                    .map_err(|e| ProtocolError::Handshake(e.to_string()))
            }
        }
    }

    /// Initiator: the responder's message 2 arrived.
    fn on_response(
        &mut self,
        mut handshake: HandshakeState,
        pattern: Pattern,
        early: Vec<Message>,
        rest: &[u8],
    ) -> Result<(), ProtocolError> {
        let Role::Initiator { peer, .. } = self.role else {
            return Err(ProtocolError::UnexpectedFrame {
                frame: "response",
                state: "responding",
            });
        };
        let mut payload_bytes = vec![0u8; MAX_FRAME_BODY];
        // Only the holder of the dialled identity's device key, using that identity in the
        // prologue, can produce a message 2 we can decrypt.
        let len = handshake
            .read_message(rest, &mut payload_bytes)
            .map_err(|_| ProtocolError::IdentityNotProven {
                expected: peer.redacted().to_string(),
            })?;
        let (payload, unknown) = HandshakePayload::decode(&payload_bytes[..len])?;
        let remote = remote_static(&handshake)?;
        let cert = payload
            .certificate
            .ok_or_else(|| ProtocolError::Malformed("the responder sent no certificate".into()))?;
        check_certificate(&cert, &remote, self.unix_now)?;
        if cert.identity() != peer {
            return Err(ProtocolError::WrongPeer {
                expected: peer.redacted().to_string(),
                found: cert.identity().redacted().to_string(),
            });
        }
        drop(early); // delivered: the responder could decrypt message 1
        let facts = PeerFacts {
            address: cert.identity(),
            static_key: remote,
            expires: cert.expires_at(),
            pattern,
            features: payload.features,
        };
        if pattern == Pattern::XX
            && payload
                .messages
                .iter()
                .any(|m| matches!(m, Message::Close(_)))
        {
            // A responder that closes in XX message 2 (the reference never puts messages
            // there) gets no message 3: the session ends unestablished, and who we are stays
            // unsaid.
            self.peer = Some(facts);
            let closed = self.deliver_early(payload.messages, &unknown);
            debug_assert!(closed, "the payload holds a Close");
            self.state = State::Closed;
            return Ok(());
        }
        if pattern == Pattern::XX {
            // Message 3: our certificate and as many queued messages as fit.
            let room = MAX_FRAME_BODY - 1 - XX3_OVERHEAD;
            let ours = self.pack_payload(room);
            let mut body = vec![HandshakeKind::Finish as u8];
            write_noise(&mut handshake, &ours.encode(), &mut body)?;
            write_frame(&mut self.output, &body);
        }
        let transport = handshake
            .into_transport_mode()
            .map_err(|e| ProtocolError::Handshake(e.to_string()))?;
        self.peer = Some(facts);
        self.state = State::Established {
            transport: Box::new(transport),
        };
        self.emit_established();
        // IK message 2: established just long enough to deliver what came before a Close.
        if self.deliver_early(payload.messages, &unknown) {
            self.state = State::Closed;
        }
        Ok(())
    }

    /// Initiator: the responder asked us to start again.
    fn on_retry(&mut self, early: Vec<Message>, rest: &[u8]) -> Result<(), ProtocolError> {
        let (&reason, rest) = rest
            .split_first()
            .ok_or_else(|| ProtocolError::Malformed("empty retry".into()))?;
        let versions = parse_versions(rest)?;
        self.retried = true;
        self.attempts += 1;
        if self.attempts >= MAX_ATTEMPTS {
            return Err(ProtocolError::TooManyAttempts);
        }
        // Messages that rode in the undecryptable message 1 were not delivered: queue them again.
        for m in early.into_iter().rev() {
            self.queued.push_front(m);
        }
        let ours = self.config.versions.clone();
        let Role::Initiator {
            cached_static,
            version,
            ..
        } = &mut self.role
        else {
            return Ok(());
        };
        match reason {
            RETRY_VERSION => {
                *version = ours
                    .iter()
                    .copied()
                    .filter(|v| versions.contains(v))
                    .max()
                    .ok_or(ProtocolError::NoCommonVersion {
                        ours,
                        theirs: versions,
                    })?;
            }
            RETRY_UNDECRYPTABLE => *cached_static = None,
            _ => {
                return Err(ProtocolError::Malformed(format!(
                    "unknown retry reason {reason}"
                )));
            }
        }
        self.state = State::Start;
        self.start_handshake()
    }

    /// Hand over the messages that rode in a handshake payload, in order, up to the first
    /// `Close`. Returns whether there was one: the session is then over (closed, reported,
    /// its queue dropped), and the caller must neither move it to another state nor write
    /// anything in answer. Nothing after the Close is delivered.
    #[must_use = "a Close in the payload ends the session: the caller must stop"]
    fn deliver_early(&mut self, messages: Vec<Message>, unknown: &[u32]) -> bool {
        for m in messages {
            match m {
                // Keepalive and rekeying belong to the transport phase; in a handshake they
                // mean nothing and are dropped.
                Message::Ping(_) | Message::Pong(_) | Message::Rekey(_) => {}
                Message::Close(_) => {
                    self.deliver(m);
                    // The payload decoder does not keep the position of unknown types among
                    // the messages, so none is reported: any may have followed the Close.
                    return true;
                }
                other => self.deliver(other),
            }
        }
        for &message_type in unknown {
            self.events
                .push_back(Event::UnknownMessage { message_type });
        }
        false
    }

    fn emit_established(&mut self) {
        if let Some(p) = &self.peer {
            self.events.push_back(Event::Established {
                peer: p.address,
                peer_static: p.static_key,
                certificate_expires: p.expires,
                pattern: p.pattern,
                retried: self.retried,
                features: p.features.clone(),
            });
        }
    }

    /// The receiving transport state, once there is one.
    fn transport_mut(&mut self) -> Option<&mut TransportState> {
        match &mut self.state {
            State::Established { transport }
            | State::AwaitDecision {
                pending: Pending::Transport(transport),
            } => Some(transport),
            _ => None,
        }
    }

    /// One transport frame arrived.
    fn handle_transport(&mut self, frame: &[u8], now: Instant) -> Result<(), ProtocolError> {
        let Some(transport) = self.transport_mut() else {
            return Ok(());
        };
        let mut plain = vec![0u8; frame.len()];
        let len = transport
            .read_message(frame, &mut plain)
            .map_err(|_| ProtocolError::Decrypt)?;
        self.heard_transport = true;
        match Message::decode(&plain[..len]) {
            Ok(Decoded::Known(message)) => self.deliver_transport(message, now),
            Ok(Decoded::Unknown { message_type }) => {
                self.events
                    .push_back(Event::UnknownMessage { message_type });
            }
            Err(e) => self.events.push_back(Event::MalformedMessage {
                reason: e.to_string(),
                salvaged: Message::salvage_id(&plain[..len]),
                too_large: matches!(e, MessageError::TooLong { .. }),
            }),
        }
        Ok(())
    }

    fn deliver_transport(&mut self, message: Message, now: Instant) {
        match message {
            Message::Ping(Ping { nonce }) => {
                self.queued.push_front(Message::Pong(Pong { nonce }));
                self.flush_queued(now);
            }
            Message::Pong(Pong { nonce }) => {
                if let Some(ping) = self.ping
                    && ping.nonce == nonce
                {
                    self.rtt = Some(now.saturating_duration_since(ping.at));
                    self.ping = None;
                    // The channel is ordered: the peer has read everything written before the
                    // ping. Whatever was written since still waits, from now.
                    self.unanswered_since = (self.needs_answer > ping.covers).then_some(now);
                }
            }
            Message::Rekey(_) => {
                if let Some(transport) = self.transport_mut() {
                    transport.rekey_incoming();
                }
            }
            other => self.deliver(other),
        }
    }

    /// Hand a message to the application (a `Close` ends the session). While a handshake
    /// frame is handled the state is a placeholder, so the handshake handlers learn of a Close
    /// from [`Self::deliver_early`]'s answer, not from the state.
    fn deliver(&mut self, message: Message) {
        if let Message::Close(Close { code, .. }) = message {
            self.state = State::Closed;
            self.queued.clear();
            self.events.push_back(Event::Closed {
                reason: CloseReason::from_code(code),
                by_peer: true,
            });
        } else {
            self.events.push_back(Event::Message(message));
        }
    }

    /// Write every queued message as transport frames (Established only).
    fn flush_queued(&mut self, now: Instant) {
        while let Some(message) = self.queued.pop_front() {
            let plain = message.encode();
            let State::Established { transport } = &mut self.state else {
                self.queued.push_front(message);
                return;
            };
            let mut body = vec![0u8; plain.len() + TAG_LEN];
            match transport.write_message(&plain, &mut body) {
                Ok(n) => write_frame(&mut self.output, &body[..n]),
                Err(e) => {
                    self.fail(&ProtocolError::Handshake(e.to_string()));
                    return;
                }
            }
            if needs_answer(&message) {
                self.needs_answer += 1;
                self.unanswered_since.get_or_insert(now);
            }
            self.frames_since_rekey += 1;
            if self.frames_since_rekey >= self.config.rekey_after_frames {
                self.rekey(now);
            }
        }
    }

    /// Tell the peer, then switch our sending keys.
    fn rekey(&mut self, now: Instant) {
        let State::Established { transport } = &mut self.state else {
            return;
        };
        let plain = Message::Rekey(Rekey {}).encode();
        let mut body = vec![0u8; plain.len() + TAG_LEN];
        if let Ok(n) = transport.write_message(&plain, &mut body) {
            write_frame(&mut self.output, &body[..n]);
            transport.rekey_outgoing();
        }
        self.frames_since_rekey = 0;
        self.last_rekey = now;
    }

    /// Close because of an error: tell the peer if we can, report it, stop.
    fn fail(&mut self, error: &ProtocolError) {
        if let State::Established { transport } = &mut self.state {
            let close = Message::Close(Close {
                code: CloseReason::ProtocolError.code(),
                text: None,
            });
            let plain = close.encode();
            let mut body = vec![0u8; plain.len() + TAG_LEN];
            if let Ok(n) = transport.write_message(&plain, &mut body) {
                write_frame(&mut self.output, &body[..n]);
            }
        }
        let reason = if matches!(error, ProtocolError::HandshakeTimeout) {
            CloseReason::Timeout
        } else {
            CloseReason::ProtocolError
        };
        self.state = State::Closed;
        self.queued.clear();
        self.events.push_back(Event::Closed {
            reason,
            by_peer: false,
        });
    }
}

fn kind_name(kind: HandshakeKind) -> &'static str {
    match kind {
        HandshakeKind::Hello => "hello",
        HandshakeKind::Response => "response",
        HandshakeKind::Finish => "finish",
        HandshakeKind::Retry => "retry",
    }
}

fn write_noise(
    handshake: &mut HandshakeState,
    payload: &[u8],
    body: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let mut message = vec![0u8; MAX_FRAME_BODY];
    let n = handshake
        .write_message(payload, &mut message)
        .map_err(|e| ProtocolError::Handshake(e.to_string()))?;
    if body.len() + n > MAX_FRAME_BODY {
        return Err(ProtocolError::Handshake(
            "handshake message too large".into(),
        ));
    }
    body.extend_from_slice(&message[..n]);
    Ok(())
}

fn remote_static(handshake: &HandshakeState) -> Result<[u8; 32], ProtocolError> {
    handshake
        .get_remote_static()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or_else(|| ProtocolError::Handshake("no remote static key".into()))
}

fn check_certificate(
    cert: &DeviceCertificate,
    remote_static: &[u8; 32],
    unix_now: u64,
) -> Result<(), ProtocolError> {
    if cert.device_key() != *remote_static {
        return Err(CertError::KeyMismatch.into());
    }
    cert.verify(unix_now)?;
    Ok(())
}

/// Refuses, as soon as they arrive, the first bytes of a frame that cannot be a HELLO: an
/// empty frame, another kind byte, or anything but the magic. Waiting for the whole frame
/// would let any stranger hold up to 64 KiB for the handshake timeout with a few bytes (an
/// HTTP request reads as a 18,245-byte frame). The verdict is the one the whole frame would
/// get.
fn check_hello_start(pending: &[u8]) -> Result<(), ProtocolError> {
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
fn hello_header(versions: &[u8], chosen: u8, pattern: Pattern) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&version_list(versions));
    h.push(chosen);
    h.push(pattern.wire());
    h
}

/// `n ‖ versions[n]`, keeping at most 255 versions (a u8 count).
fn version_list(versions: &[u8]) -> Vec<u8> {
    let kept = &versions[..versions.len().min(usize::from(u8::MAX))];
    let mut list = vec![u8::try_from(kept.len()).unwrap_or(u8::MAX)];
    list.extend_from_slice(kept);
    list
}

struct Hello<'a> {
    header: &'a [u8],
    versions: Vec<u8>,
    chosen: u8,
    pattern: Pattern,
    noise: &'a [u8],
}

fn parse_hello(rest: &[u8]) -> Result<Hello<'_>, ProtocolError> {
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

fn parse_versions(rest: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    let (&n, list) = rest
        .split_first()
        .ok_or_else(|| ProtocolError::Malformed("retry without versions".into()))?;
    if list.len() != usize::from(n) {
        return Err(ProtocolError::Malformed("retry version list length".into()));
    }
    Ok(list.to_vec())
}

/// Whether the peer answers this message (with an acknowledgement), so that silence after it
/// is a sign of a dead path.
fn needs_answer(message: &Message) -> bool {
    matches!(
        message,
        Message::Chat(_) | Message::ContactRequest(_) | Message::ContactResponse(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Chat, types};

    fn config(seed: u8) -> Arc<SessionConfig> {
        let identity = IdentityKey::from_seed(&[seed; 32]);
        let device = DeviceKey::from_secret(&[seed + 1; 32]);
        let cert = DeviceCertificate::issue(&identity, &device.public(), 2_000_000_000);
        Arc::new(SessionConfig::new(identity, device, cert))
    }

    /// Move bytes both ways until neither side has anything to say; accept on the way.
    fn settle(a: &mut Session, b: &mut Session, now: Instant) -> (Vec<Event>, Vec<Event>) {
        let (mut ea, mut eb) = (Vec::new(), Vec::new());
        loop {
            let mut moved = false;
            if let Some(bytes) = a.poll_transmit() {
                moved = true;
                let _ = b.handle_input(&bytes, now);
            }
            if let Some(bytes) = b.poll_transmit() {
                moved = true;
                let _ = a.handle_input(&bytes, now);
            }
            while let Some(e) = a.poll_event() {
                ea.push(e);
            }
            while let Some(e) = b.poll_event() {
                eb.push(e);
            }
            if b.phase() == Phase::AwaitingDecision {
                b.accept(now);
                moved = true;
            }
            if !moved {
                return (ea, eb);
            }
        }
    }

    #[test]
    fn unknown_message_types_do_not_end_an_established_session() {
        let now = Instant::now();
        let (ca, cb) = (config(1), config(10));
        let bob = cb.identity.address();
        let mut rng = rand_core::OsRng;
        let mut a = Session::initiator(ca, bob, None, 1_900_000_000, now, &mut rng);
        let mut b = Session::responder(cb, 1_900_000_000, now, &mut rng);
        settle(&mut a, &mut b, now);
        assert_eq!(
            (a.phase(), b.phase()),
            (Phase::Established, Phase::Established)
        );

        // A message of a type from the future, and a known type with a malformed body.
        let mut future = minicbor::Encoder::new(Vec::new());
        future.array(2).unwrap().u32(4000).unwrap().map(0).unwrap();
        let mut broken = minicbor::Encoder::new(Vec::new());
        broken
            .array(2)
            .unwrap()
            .u32(types::CHAT)
            .unwrap()
            .map(0)
            .unwrap();
        // A chat over the body limit: its id can still be read, so it can be refused by id.
        let oversized = Message::Chat(Chat {
            id: MessageId([2; 16]),
            sent_at: 0,
            body: "x".repeat(crate::MAX_BODY_BYTES + 1),
            reply_to: None,
        })
        .encode();
        for plain in [future.into_writer(), broken.into_writer(), oversized] {
            let State::Established { transport } = &mut a.state else {
                panic!("a is established");
            };
            let mut body = vec![0u8; plain.len() + TAG_LEN];
            let n = transport.write_message(&plain, &mut body).unwrap();
            write_frame(&mut a.output, &body[..n]);
        }
        a.send(
            Message::Chat(Chat {
                id: MessageId([1; 16]),
                sent_at: 0,
                body: "still here".into(),
                reply_to: None,
            }),
            now,
        )
        .unwrap();
        let (_, eb) = settle(&mut a, &mut b, now);
        assert!(matches!(
            eb[0],
            Event::UnknownMessage { message_type: 4000 }
        ));
        assert!(matches!(
            eb[1],
            Event::MalformedMessage {
                salvaged: None,
                too_large: false,
                ..
            }
        ));
        assert!(matches!(
            eb[2],
            Event::MalformedMessage {
                salvaged: Some((types::CHAT, MessageId(id))),
                too_large: true,
                ..
            } if id == [2; 16]
        ));
        assert!(matches!(&eb[3], Event::Message(Message::Chat(c)) if c.body == "still here"));
        assert_eq!(b.phase(), Phase::Established);
    }
}
