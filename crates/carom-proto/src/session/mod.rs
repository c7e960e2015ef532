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
//!
//! Inside, a session is always in one `State`, and each state holds only what it needs: the
//! initiator's handshake (`initiator`), the responder's (`responder`), the established channel
//! (`transport`), or closed. The role is not a separate field: an initiator can only be in
//! initiator states, a responder in responder states. What every state reads and writes — the
//! output, the events, the send queue, the facts about the peer — is the `Common` part; what
//! both handshakes share is in `handshake`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};

use crate::cert::{DeviceCertificate, DeviceKey};
use crate::frame::{FrameReader, HandshakeKind};
use crate::identity::{IdentityKey, OnionAddress};
use crate::message::{Close, CloseReason, Message, MessageId};
use crate::noise::{HandshakePayload, MAX_TRANSPORT_PLAINTEXT, Pattern};

mod error;
mod handshake;
mod initiator;
mod responder;
#[cfg(test)]
mod test_support;
mod transport;

pub use error::{ProtocolError, ProtocolErrorKind, SendError};
use handshake::{Attempts, check_hello_start, unexpected};
use initiator::InitiatorState;
use responder::{Pending, ResponderState};
use transport::{AnswerWatch, Transport};

/// Protocol versions this implementation speaks.
pub const SUPPORTED_VERSIONS: &[u8] = &[1];

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

/// Where a session is. Each role's handshake has its own states, so a session cannot be in
/// the other role's; once the handshake is done both roles share the transport.
#[expect(
    clippy::large_enum_variant,
    reason = "one per session; boxing the dialled address would only add an allocation"
)]
enum State {
    /// We dialled: the initiator's handshake.
    Initiator(InitiatorState),
    /// A stream arrived on our onion service: the responder's handshake, up to the decision.
    Responder(ResponderState),
    /// Both directions keyed: messages flow.
    Transport(Transport),
    /// Over.
    Closed,
}

impl State {
    /// Move the state out for a transition, leaving `Closed`: a transition that fails leaves
    /// the session closed.
    fn take(&mut self) -> State {
        std::mem::replace(self, State::Closed)
    }

    /// The transport the peer's frames are read with, once there is one: established, or (XX)
    /// a responder's that is still deciding.
    fn receiving_transport(&mut self) -> Option<&mut Transport> {
        match self {
            State::Transport(transport)
            | State::Responder(ResponderState::Deciding(Pending::Transport(transport))) => {
                Some(transport)
            }
            _ => None,
        }
    }
}

/// What every state of a session reads and writes.
struct Common {
    config: Arc<SessionConfig>,
    /// Unix seconds, to check certificate expiry.
    unix_now: u64,
    /// When the session was created: the handshake timeout counts from here.
    started: Instant,
    /// When the last frame arrived (handshake or transport).
    last_received: Instant,
    /// Bytes written by the session, waiting for [`Session::poll_transmit`].
    output: Vec<u8>,
    events: VecDeque<Event>,
    /// Application messages not yet written (waiting for the handshake, or for room).
    queued: Queue,
    peer: Option<PeerFacts>,
    /// Frames waiting for the peer to show it read them, from the handshake on.
    answers: AnswerWatch,
    /// The most recent keepalive round-trip time.
    rtt: Option<Duration>,
}

impl Common {
    fn new(config: Arc<SessionConfig>, unix_now: u64, now: Instant) -> Common {
        Common {
            config,
            unix_now,
            started: now,
            last_received: now,
            output: Vec::new(),
            events: VecDeque::new(),
            queued: Queue::default(),
            peer: None,
            answers: AnswerWatch::default(),
            rtt: None,
        }
    }

    /// Our certificate and features, carrying no messages.
    fn own_payload(&self) -> HandshakePayload {
        HandshakePayload {
            certificate: Some(self.config.certificate),
            features: self.config.features.clone(),
            messages: Vec::new(),
        }
    }

    /// Our certificate and features, plus as many queued messages as fit in `room` bytes.
    fn pack_payload(&mut self, room: usize) -> HandshakePayload {
        let mut payload = self.own_payload();
        while let Some(next) = self.queued.front() {
            payload.messages.push(next.clone());
            if payload.encoded_len() > room {
                payload.messages.pop();
                break;
            }
            if let Some(m) = self.queued.pop_front() {
                // Answered once the session is up; until then the handshake timeout applies.
                self.answers.written(&m, self.started);
            }
        }
        payload
    }

    /// Hand a message to the application. A `Close` ends the session: the answer is whether
    /// it did, and the caller's state must then become [`State::Closed`].
    #[must_use = "a Close ends the session: the caller must close it"]
    fn deliver(&mut self, message: Message) -> bool {
        if let Message::Close(Close { code, .. }) = message {
            self.end(CloseReason::from_code(code), true);
            true
        } else {
            self.events.push_back(Event::Message(message));
            false
        }
    }

    /// Hand over the messages that rode in a handshake payload, in order, up to the first
    /// `Close`. Returns whether there was one: the session is then over (reported, its queue
    /// dropped), and the caller must move it to [`State::Closed`] and write nothing in
    /// answer. Nothing after the Close is delivered.
    #[must_use = "a Close in the payload ends the session: the caller must stop"]
    fn deliver_early(&mut self, messages: Vec<Message>, unknown: &[u32]) -> bool {
        for m in messages {
            match m {
                // Keepalive and rekeying belong to the transport phase; in a handshake they
                // mean nothing and are dropped.
                Message::Ping(_) | Message::Pong(_) | Message::Rekey(_) => {}
                // The payload decoder does not keep the position of unknown types among the
                // messages, so none is reported after a Close: any may have followed it.
                other => {
                    if self.deliver(other) {
                        return true;
                    }
                }
            }
        }
        for &message_type in unknown {
            self.events
                .push_back(Event::UnknownMessage { message_type });
        }
        false
    }

    /// Report that the channel is established. `retried`: whether the responder asked us (the
    /// initiator) to start again.
    fn emit_established(&mut self, retried: bool) {
        if let Some(p) = &self.peer {
            self.events.push_back(Event::Established {
                peer: p.address,
                peer_static: p.static_key,
                certificate_expires: p.expires,
                pattern: p.pattern,
                retried,
                features: p.features.clone(),
            });
        }
    }

    /// The session is over: drop what is queued and report why.
    fn end(&mut self, reason: CloseReason, by_peer: bool) {
        self.queued.clear();
        self.events.push_back(Event::Closed { reason, by_peer });
    }
}

/// Facts about the peer, once known.
#[derive(Clone)]
struct PeerFacts {
    address: OnionAddress,
    static_key: [u8; 32],
    expires: u64,
    pattern: Pattern,
    features: Vec<String>,
    /// Whether it has shown that it holds this session's keys (see [`Session::peer_is_live`]).
    live: bool,
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

    fn clear(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }
}

/// One Carom connection, as a state machine. See the module documentation.
pub struct Session {
    common: Common,
    state: State,
    reader: FrameReader,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("phase", &self.phase())
            .field("peer", &self.peer())
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
        let state = InitiatorState::new(&config, peer, cached_static, Attempts::new(rng));
        Session::new(config, State::Initiator(state), unix_now, now)
    }

    /// A session for a stream that arrived on our onion service.
    pub fn responder<R: RngCore + CryptoRng>(
        config: Arc<SessionConfig>,
        unix_now: u64,
        now: Instant,
        rng: &mut R,
    ) -> Session {
        let state = ResponderState::AwaitHello(Attempts::new(rng));
        Session::new(config, State::Responder(state), unix_now, now)
    }

    fn new(config: Arc<SessionConfig>, state: State, unix_now: u64, now: Instant) -> Session {
        Session {
            common: Common::new(config, unix_now, now),
            state,
            reader: FrameReader::default(),
        }
    }

    /// Where the session is.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Initiator(_) => Phase::Handshaking,
            State::Responder(ResponderState::Deciding(_)) => Phase::AwaitingDecision,
            State::Responder(_) => Phase::Handshaking,
            State::Transport(_) => Phase::Established,
            State::Closed => Phase::Closed,
        }
    }

    /// Whether the session is over (write out [`Self::poll_transmit`] once more, then drop it).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The peer's verified onion address, once authenticated.
    pub fn peer(&self) -> Option<OnionAddress> {
        self.common.peer.as_ref().map(|p| p.address)
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
        self.common.peer.as_ref().is_some_and(|p| p.live)
    }

    /// The most recent keepalive round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.common.rtt
    }

    /// Bytes waiting: written by the session and not yet taken by [`Self::poll_transmit`],
    /// plus messages queued for encryption (before the handshake completes, or behind a
    /// full output). [`Self::send`] refuses above `max_pending_output`.
    pub fn pending_output(&self) -> usize {
        self.common.output.len() + self.common.queued.bytes
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
        if self.pending_output() > self.common.config.max_pending_output {
            return Err(SendError::Backpressure);
        }
        self.common.queued.push_back(message);
        self.flush(now);
        Ok(())
    }

    /// (Responder) Keep the session: complete the handshake (writing IK message 2 with any
    /// queued messages) and let messages flow. Does nothing in other phases, a session the
    /// initiator closed during its handshake included.
    pub fn accept(&mut self, now: Instant) {
        let pending = match self.state.take() {
            State::Responder(ResponderState::Deciding(pending)) => pending,
            other => {
                self.state = other;
                return;
            }
        };
        match pending.into_transport(&mut self.common) {
            Ok(transport) => {
                self.state = State::Transport(transport);
                // Whether we were asked to start again is for an initiator to report.
                self.common.emit_established(false);
                self.flush(now);
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
        match self.state.take() {
            State::Responder(ResponderState::Deciding(pending)) => {
                // Queued first, so an IK message 2 written now carries it if it fits.
                self.common.queued.push_back(close);
                if let Ok(transport) = pending.into_transport(&mut self.common) {
                    self.state = State::Transport(transport);
                }
            }
            State::Transport(transport) => {
                self.state = State::Transport(transport);
                self.common.queued.push_back(close);
            }
            _ => {}
        }
        self.flush(now);
        self.state = State::Closed;
        self.common.queued.clear();
    }

    /// Feed bytes read from the stream. On error the session is closed (an authenticated
    /// `Close` is queued when possible) and an [`Event::Closed`] is emitted.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) -> Result<(), ProtocolError> {
        if self.is_closed() {
            return Ok(());
        }
        self.ensure_started();
        self.reader.push(data);
        if matches!(self.state, State::Responder(ResponderState::AwaitHello(_)))
            && let Err(e) = check_hello_start(self.reader.pending())
        {
            self.fail(&e);
            return Err(e);
        }
        while let Some(frame) = self.reader.next_frame() {
            self.common.last_received = now;
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
        if self.common.output.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.common.output))
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.common.events.pop_front()
    }

    /// When [`Self::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Closed => None,
            State::Transport(transport) => Some(transport.next_timeout(&self.common)),
            State::Initiator(_) | State::Responder(_) => {
                Some(self.common.started + self.common.config.handshake_timeout)
            }
        }
    }

    /// Run the timers: handshake timeout, keepalive pings, dead-peer detection, rekeying.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.state {
            State::Closed => {}
            State::Transport(transport) => {
                if transport.peer_seems_dead(&self.common, now) {
                    self.close(CloseReason::Timeout, now);
                    self.common.events.push_back(Event::Closed {
                        reason: CloseReason::Timeout,
                        by_peer: false,
                    });
                } else if let Err(e) = transport.run_timers(&mut self.common, now) {
                    self.fail(&e);
                }
            }
            State::Initiator(_) | State::Responder(_) => {
                if now >= self.common.started + self.common.config.handshake_timeout {
                    self.fail(&ProtocolError::HandshakeTimeout);
                }
            }
        }
    }

    // ----- internals -----

    /// An initiator writes its HELLO on the first call for input or output, so that `send`
    /// calls made right after construction ride in it.
    fn ensure_started(&mut self) {
        if let State::Initiator(initiator) = &mut self.state
            && let Err(e) = initiator.ensure_hello_sent(&mut self.common)
        {
            self.fail(&e);
        }
    }

    fn handle_frame(&mut self, frame: &[u8], now: Instant) -> Result<(), ProtocolError> {
        let result = self.handle_frame_inner(frame, now);
        self.flush(now);
        result
    }

    fn handle_frame_inner(&mut self, frame: &[u8], now: Instant) -> Result<(), ProtocolError> {
        // After XX message 3 the initiator may send at once, while we are still deciding.
        if let Some(transport) = self.state.receiving_transport() {
            let peer_closed = transport.read_frame(&mut self.common, frame, now)?;
            if peer_closed {
                self.state = State::Closed;
            }
            return Ok(());
        }
        let (&kind_byte, rest) = frame.split_first().ok_or(ProtocolError::NotCarom)?;
        let kind = HandshakeKind::from_byte(kind_byte);
        self.state = match self.state.take() {
            State::Initiator(initiator) => initiator.on_frame(&mut self.common, kind, rest)?,
            State::Responder(responder) => responder.on_frame(&mut self.common, kind, rest)?,
            // Transport frames were read above, and a closed session reads nothing.
            State::Transport(_) | State::Closed => return Err(unexpected(kind, "closed")),
        };
        Ok(())
    }

    /// Write every queued message, if the channel is established. A failure closes the
    /// session.
    fn flush(&mut self, now: Instant) {
        if let State::Transport(transport) = &mut self.state
            && let Err(e) = transport.flush_queued(&mut self.common, now)
        {
            self.fail(&e);
        }
    }

    /// Close because of an error: tell the peer if we can, report it, stop.
    fn fail(&mut self, error: &ProtocolError) {
        if let State::Transport(transport) = &mut self.state {
            transport.write_close(&mut self.common.output, CloseReason::ProtocolError);
        }
        let reason = if matches!(error, ProtocolError::HandshakeTimeout) {
            CloseReason::Timeout
        } else {
            CloseReason::ProtocolError
        };
        self.state = State::Closed;
        self.common.end(reason, false);
    }
}
