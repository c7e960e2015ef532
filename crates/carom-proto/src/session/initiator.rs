//! The initiator's handshake: a HELLO carrying Noise message 1 (IK when the responder's device
//! key is cached, with the first queued messages inside; XX otherwise), then the responder's
//! message 2 — or its request to start again on the same stream — and, for XX, message 3.

use snow::HandshakeState;

use super::handshake::{
    Attempts, RETRY_UNDECRYPTABLE, RETRY_VERSION, Side, authenticate, best_common_version,
    hello_header, noise_failed, parse_versions, read_noise, unexpected, write_noise,
};
use super::transport::Transport;
use super::{Common, ProtocolError, SessionConfig, State};
use crate::frame::{HandshakeKind, MAX_FRAME_BODY, write_frame};
use crate::identity::OnionAddress;
use crate::message::Message;
use crate::noise::{HandshakePayload, Pattern, TAG_LEN, prologue};

/// Noise overhead of IK message 1: `e` (32), an encrypted `s` (32 + 16), and the payload tag
/// (16).
const IK1_OVERHEAD: usize = 32 + 48 + TAG_LEN;
/// Noise overhead of XX message 3: an encrypted `s` (32 + 16) and the payload tag (16).
const XX3_OVERHEAD: usize = 48 + TAG_LEN;

/// A dial in progress.
pub(super) struct InitiatorState {
    /// The address dialled: only the holder of that identity can complete the handshake.
    peer: OnionAddress,
    /// The responder's device key from an earlier session: IK while we have it, XX without.
    cached_static: Option<[u8; 32]>,
    /// The protocol version we choose.
    version: u8,
    attempts: Attempts,
    /// The HELLO in flight: `None` until it is written (lazily, so `send` calls made right
    /// after construction ride in it).
    hello: Option<HelloSent>,
}

/// What the initiator keeps of the HELLO it wrote.
struct HelloSent {
    handshake: Box<HandshakeState>,
    pattern: Pattern,
    /// Messages that rode in message 1 (IK): resent if the responder asks to start again.
    early: Vec<Message>,
}

impl InitiatorState {
    pub(super) fn new(
        config: &SessionConfig,
        peer: OnionAddress,
        cached_static: Option<[u8; 32]>,
        attempts: Attempts,
    ) -> InitiatorState {
        InitiatorState {
            peer,
            cached_static,
            version: config.versions.iter().copied().max().unwrap_or(1),
            attempts,
            hello: None,
        }
    }

    /// Write the HELLO, unless it is written.
    pub(super) fn ensure_hello_sent(&mut self, cx: &mut Common) -> Result<(), ProtocolError> {
        if self.hello.is_none() {
            self.send_hello(cx)?;
        }
        Ok(())
    }

    /// A handshake frame from the responder.
    pub(super) fn on_frame(
        mut self,
        cx: &mut Common,
        kind: Option<HandshakeKind>,
        rest: &[u8],
    ) -> Result<State, ProtocolError> {
        let Some(hello) = self.hello.take() else {
            // The HELLO is written before any input is read, so nothing can answer it yet.
            return Err(unexpected(kind, "handshaking"));
        };
        match kind {
            Some(HandshakeKind::Response) => self.on_response(cx, hello, rest),
            Some(HandshakeKind::Retry) => self.on_retry(cx, hello.early, rest),
            _ => Err(unexpected(kind, "waiting for the response")),
        }
    }

    /// Write a HELLO: IK if we have a usable cached key, otherwise XX.
    fn send_hello(&mut self, cx: &mut Common) -> Result<(), ProtocolError> {
        let pattern = if self.cached_static.is_some() {
            Pattern::IK
        } else {
            Pattern::XX
        };
        let header = hello_header(&cx.config.versions, self.version, pattern);
        let prologue = prologue(&header, &self.peer.public_key());
        let mut handshake = self.attempts.handshake(
            &cx.config.device,
            pattern,
            Side::Initiator,
            &prologue,
            self.cached_static.as_ref(),
        )?;
        let (payload, early) = match pattern {
            Pattern::IK => {
                let room = MAX_FRAME_BODY - 1 - header.len() - IK1_OVERHEAD;
                let payload = cx.pack_payload(room);
                (payload.encode(), payload.messages)
            }
            // XX message 1 is sent in the clear: it carries nothing.
            Pattern::XX => (Vec::new(), Vec::new()),
        };
        let mut body = vec![HandshakeKind::Hello as u8];
        body.extend_from_slice(&header);
        write_noise(&mut handshake, &payload, &mut body)?;
        write_frame(&mut cx.output, &body);
        self.hello = Some(HelloSent {
            handshake: Box::new(handshake),
            pattern,
            early,
        });
        Ok(())
    }

    /// The responder's message 2 arrived.
    fn on_response(
        self,
        cx: &mut Common,
        hello: HelloSent,
        rest: &[u8],
    ) -> Result<State, ProtocolError> {
        let HelloSent {
            mut handshake,
            pattern,
            early,
        } = hello;
        // Only the holder of the dialled identity's device key, using that identity in the
        // prologue, can produce a message 2 we can decrypt.
        let plain =
            read_noise(&mut handshake, rest).map_err(|_| ProtocolError::IdentityNotProven {
                expected: self.peer.redacted().to_string(),
            })?;
        let (payload, unknown) = HandshakePayload::decode(&plain)?;
        // It answered our fresh ephemeral key, so it is live.
        let facts = authenticate(
            &handshake,
            &payload,
            pattern,
            cx.unix_now,
            "responder",
            true,
        )?;
        if facts.address != self.peer {
            return Err(ProtocolError::WrongPeer {
                expected: self.peer.redacted().to_string(),
                found: facts.address.redacted().to_string(),
            });
        }
        drop(early); // delivered: the responder could decrypt message 1
        if pattern == Pattern::XX
            && payload
                .messages
                .iter()
                .any(|m| matches!(m, Message::Close(_)))
        {
            // A responder that closes in XX message 2 (the reference never puts messages
            // there) gets no message 3: the session ends unestablished, and who we are stays
            // unsaid.
            cx.peer = Some(facts);
            let closed = cx.deliver_early(payload.messages, &unknown);
            debug_assert!(closed, "the payload holds a Close");
            return Ok(State::Closed);
        }
        if pattern == Pattern::XX {
            // Message 3: our certificate and as many queued messages as fit.
            let room = MAX_FRAME_BODY - 1 - XX3_OVERHEAD;
            let ours = cx.pack_payload(room);
            let mut body = vec![HandshakeKind::Finish as u8];
            write_noise(&mut handshake, &ours.encode(), &mut body)?;
            write_frame(&mut cx.output, &body);
        }
        let transport = handshake.into_transport_mode().map_err(noise_failed)?;
        cx.peer = Some(facts);
        cx.emit_established(self.attempts.restarted());
        // IK message 2: established just long enough to deliver what came before a Close.
        if cx.deliver_early(payload.messages, &unknown) {
            return Ok(State::Closed);
        }
        Ok(State::Transport(Transport::new(transport, cx.started)))
    }

    /// The responder asked us to start again.
    fn on_retry(
        mut self,
        cx: &mut Common,
        early: Vec<Message>,
        rest: &[u8],
    ) -> Result<State, ProtocolError> {
        let (&reason, rest) = rest
            .split_first()
            .ok_or_else(|| ProtocolError::Malformed("empty retry".into()))?;
        let versions = parse_versions(rest)?;
        self.attempts.restart()?;
        // Messages that rode in the undecryptable message 1 were not delivered: queue them again.
        for m in early.into_iter().rev() {
            cx.queued.push_front(m);
        }
        match reason {
            RETRY_VERSION => {
                let ours = &cx.config.versions;
                self.version = best_common_version(ours, &versions).ok_or_else(|| {
                    ProtocolError::NoCommonVersion {
                        ours: ours.clone(),
                        theirs: versions,
                    }
                })?;
            }
            RETRY_UNDECRYPTABLE => self.cached_static = None,
            _ => {
                return Err(ProtocolError::Malformed(format!(
                    "unknown retry reason {reason}"
                )));
            }
        }
        self.send_hello(cx)?;
        Ok(State::Initiator(self))
    }
}
