//! The responder's handshake: a HELLO (answered with a request to start again when its version
//! or its cached key is wrong), for XX message 2 and then message 3; then the application
//! decides, and an IK responder writes its message 2 only once it has.

use snow::HandshakeState;

use super::handshake::{
    Attempts, RETRY_UNDECRYPTABLE, RETRY_VERSION, Side, authenticate, best_common_version,
    noise_failed, parse_hello, read_noise, unexpected, version_list, write_noise,
};
use super::transport::Transport;
use super::{Common, Event, ProtocolError, State};
use crate::frame::{HandshakeKind, MAX_FRAME_BODY, write_frame};
use crate::noise::{HandshakePayload, Pattern, TAG_LEN, prologue};

/// Noise overhead of message 2: `e` (32), an encrypted `s` (32 + 16), and the payload tag (16).
const RESPONSE_OVERHEAD: usize = 32 + 48 + TAG_LEN;

/// A stream that arrived on our onion service, before the channel is established.
pub(super) enum ResponderState {
    /// Waiting for a HELLO (again, after asking the initiator to start again).
    AwaitHello(Attempts),
    /// (XX) Message 2 sent; waiting for message 3.
    AwaitFinish(Box<HandshakeState>),
    /// The peer is authenticated; waiting for the caller's decision.
    Deciding(Pending),
}

/// What a responder still owes before it can call the channel established.
pub(super) enum Pending {
    /// IK: message 2 is still to be written (it carries whatever was queued meanwhile).
    IkResponse(Box<HandshakeState>),
    /// XX: the handshake is complete; the initiator's frames are read while we decide.
    Transport(Transport),
}

impl ResponderState {
    /// A handshake frame from the initiator.
    pub(super) fn on_frame(
        self,
        cx: &mut Common,
        kind: Option<HandshakeKind>,
        rest: &[u8],
    ) -> Result<State, ProtocolError> {
        match (self, kind) {
            (ResponderState::AwaitHello(attempts), Some(HandshakeKind::Hello)) => {
                on_hello(cx, attempts, rest)
            }
            (ResponderState::AwaitHello(_), _) => Err(ProtocolError::NotCarom),
            (ResponderState::AwaitFinish(handshake), Some(HandshakeKind::Finish)) => {
                on_finish(cx, *handshake, rest)
            }
            (ResponderState::AwaitFinish(_), kind) => {
                Err(unexpected(kind, "waiting for handshake message 3"))
            }
            (ResponderState::Deciding(_), kind) => {
                Err(unexpected(kind, "waiting for the application's decision"))
            }
        }
    }
}

impl Pending {
    /// After the decision, the transport (writing IK message 2 if it is owed).
    pub(super) fn into_transport(self, cx: &mut Common) -> Result<Transport, ProtocolError> {
        match self {
            Pending::Transport(transport) => Ok(transport),
            Pending::IkResponse(mut handshake) => {
                let room = MAX_FRAME_BODY - 1 - RESPONSE_OVERHEAD;
                let payload = cx.pack_payload(room);
                let mut body = vec![HandshakeKind::Response as u8];
                write_noise(&mut handshake, &payload.encode(), &mut body)?;
                write_frame(&mut cx.output, &body);
                let noise = handshake.into_transport_mode().map_err(noise_failed)?;
                Ok(Transport::new(noise, cx.started))
            }
        }
    }
}

/// A HELLO arrived.
fn on_hello(cx: &mut Common, mut attempts: Attempts, rest: &[u8]) -> Result<State, ProtocolError> {
    let hello = parse_hello(rest)?;
    let ours = &cx.config.versions;
    let best_common = best_common_version(ours, &hello.versions);
    if best_common != Some(hello.chosen) {
        if best_common.is_none() && attempts.restarted() {
            return Err(ProtocolError::NoCommonVersion {
                ours: ours.clone(),
                theirs: hello.versions,
            });
        }
        return send_retry(cx, attempts, RETRY_VERSION);
    }
    let own_identity = cx.config.identity.address().public_key();
    let prologue = prologue(hello.header, &own_identity);
    let mut handshake = attempts.handshake(
        &cx.config.device,
        hello.pattern,
        Side::Responder,
        &prologue,
        None,
    )?;
    let read = read_noise(&mut handshake, hello.noise);
    match hello.pattern {
        Pattern::IK => {
            let Ok(plain) = read else {
                // Most likely the initiator cached a static key we no longer use. Ask it to
                // start again with XX on this same stream.
                return send_retry(cx, attempts, RETRY_UNDECRYPTABLE);
            };
            let (payload, unknown) = HandshakePayload::decode(&plain)?;
            authenticate_initiator(cx, &handshake, &payload, Pattern::IK)?;
            if cx.deliver_early(payload.messages, &unknown) {
                // The initiator closed: no decision, and no message 2.
                return Ok(State::Closed);
            }
            Ok(State::Responder(ResponderState::Deciding(
                Pending::IkResponse(Box::new(handshake)),
            )))
        }
        Pattern::XX => {
            let plain = read.map_err(noise_failed)?;
            if !plain.is_empty() {
                return Err(ProtocolError::Malformed(
                    "XX message 1 must carry no payload".into(),
                ));
            }
            let mut body = vec![HandshakeKind::Response as u8];
            write_noise(&mut handshake, &cx.own_payload().encode(), &mut body)?;
            write_frame(&mut cx.output, &body);
            Ok(State::Responder(ResponderState::AwaitFinish(Box::new(
                handshake,
            ))))
        }
    }
}

/// Ask the initiator to start again on this stream, for `reason`.
fn send_retry(cx: &mut Common, mut attempts: Attempts, reason: u8) -> Result<State, ProtocolError> {
    attempts.restart()?;
    let mut body = vec![HandshakeKind::Retry as u8, reason];
    body.extend_from_slice(&version_list(&cx.config.versions));
    write_frame(&mut cx.output, &body);
    Ok(State::Responder(ResponderState::AwaitHello(attempts)))
}

/// (XX) Message 3 arrived.
fn on_finish(
    cx: &mut Common,
    mut handshake: HandshakeState,
    rest: &[u8],
) -> Result<State, ProtocolError> {
    let plain = read_noise(&mut handshake, rest).map_err(noise_failed)?;
    let (payload, unknown) = HandshakePayload::decode(&plain)?;
    authenticate_initiator(cx, &handshake, &payload, Pattern::XX)?;
    let noise = handshake.into_transport_mode().map_err(noise_failed)?;
    if cx.deliver_early(payload.messages, &unknown) {
        // The initiator closed: no decision, and frames after message 3 are ignored.
        return Ok(State::Closed);
    }
    Ok(State::Responder(ResponderState::Deciding(
        Pending::Transport(Transport::new(noise, cx.started)),
    )))
}

/// Check the initiator's certificate against the key it proved, and report it.
fn authenticate_initiator(
    cx: &mut Common,
    handshake: &HandshakeState,
    payload: &HandshakePayload,
    pattern: Pattern,
) -> Result<(), ProtocolError> {
    // An IK message 1 can be replayed by anyone who recorded it; an XX message 3 answers our
    // fresh ephemeral key.
    let live = pattern == Pattern::XX;
    let facts = authenticate(handshake, payload, pattern, cx.unix_now, "initiator", live)?;
    cx.events.push_back(Event::PeerAuthenticated {
        peer: facts.address,
        peer_static: facts.static_key,
        certificate_expires: facts.expires,
        pattern,
        features: facts.features.clone(),
    });
    cx.peer = Some(facts);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::test_support::{config, settle};
    use super::super::{Phase, Session};
    use crate::message::{Chat, Message, MessageId};

    /// An IK message 1 can be replayed, so an IK responder counts the initiator live only once
    /// a transport frame from it arrives; an XX responder, and every initiator, as soon as the
    /// peer is authenticated.
    #[test]
    fn an_ik_initiator_is_live_only_once_a_transport_frame_arrives() {
        let now = Instant::now();
        let (ca, cb) = (config(1), config(10));
        let bob = cb.identity.address();
        let mut rng = rand_core::OsRng;
        for cached in [Some(cb.device.public()), None] {
            let ik = cached.is_some();
            let mut a = Session::initiator(ca.clone(), bob, cached, 1_900_000_000, now, &mut rng);
            let mut b = Session::responder(cb.clone(), 1_900_000_000, now, &mut rng);
            let hello = a.poll_transmit().expect("a HELLO");
            b.handle_input(&hello, now).expect("a valid HELLO");
            for _ in 0..2 {
                if let Some(bytes) = b.poll_transmit() {
                    a.handle_input(&bytes, now).expect("valid");
                }
                if let Some(bytes) = a.poll_transmit() {
                    b.handle_input(&bytes, now).expect("valid");
                }
            }
            assert_eq!(b.phase(), Phase::AwaitingDecision, "ik {ik}");
            assert!(b.peer().is_some(), "ik {ik}: authenticated");
            assert_eq!(b.peer_is_live(), !ik, "ik {ik}: deciding");

            settle(&mut a, &mut b, now);
            assert_eq!(
                (a.phase(), b.phase()),
                (Phase::Established, Phase::Established)
            );
            assert!(
                a.peer_is_live(),
                "ik {ik}: the responder answered our ephemeral"
            );
            assert_eq!(b.peer_is_live(), !ik, "ik {ik}: no transport frame yet");
            let chat = Message::Chat(Chat {
                id: MessageId([1; 16]),
                sent_at: 0,
                body: "here".into(),
                reply_to: None,
                expires_after: None,
            });
            a.send(chat, now).expect("sent");
            settle(&mut a, &mut b, now);
            assert!(b.peer_is_live(), "ik {ik}: a transport frame arrived");

            if ik {
                // Someone who recorded the HELLO replays it: authenticated, never live.
                let mut replayed = Session::responder(cb.clone(), 1_900_000_000, now, &mut rng);
                replayed.handle_input(&hello, now).expect("a valid HELLO");
                assert!(replayed.peer().is_some());
                replayed.accept(now);
                assert_eq!(replayed.phase(), Phase::Established);
                assert!(!replayed.peer_is_live(), "a replayed IK message 1");
            }
        }
    }
}
