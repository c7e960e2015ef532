//! The established channel: encrypted frames both ways, keepalive pings and dead-peer
//! detection, rekeying, and the authenticated Close.

use std::sync::Arc;
use std::time::Instant;

use snow::TransportState;

use super::handshake::noise_failed;
use super::{Common, Event, ProtocolError};
use crate::frame::write_frame;
use crate::message::{Close, CloseReason, Decoded, Message, MessageError, Ping, Pong, Rekey};
use crate::noise::TAG_LEN;

/// Both directions keyed, and the timers that keep the channel honest.
pub(super) struct Transport {
    noise: Box<TransportState>,
    /// When our sending keys last changed.
    last_rekey: Instant,
    frames_since_rekey: u64,
    ping: Option<PingSent>,
    next_nonce: u64,
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

/// Whether the peer has shown it read the frames that need an answer. Messages that ride in
/// the handshake count too, so the session's common part holds this, not [`Transport`].
#[derive(Default)]
pub(super) struct AnswerWatch {
    /// Frames written that need an answer (chats, contact requests and responses).
    needs_answer: u64,
    /// Since when a written frame has waited for the peer to show it read it, if one does.
    unanswered_since: Option<Instant>,
}

impl AnswerWatch {
    /// `message` was written: if it needs an answer, wait for one from `at` (unless an earlier
    /// frame already waits).
    pub(super) fn written(&mut self, message: &Message, at: Instant) {
        if needs_answer(message) {
            self.needs_answer += 1;
            self.unanswered_since.get_or_insert(at);
        }
    }

    /// The pong to `ping` arrived at `now`.
    fn answered(&mut self, ping: PingSent, now: Instant) {
        // The channel is ordered: the peer has read everything written before the ping.
        // Whatever was written since still waits, from now.
        self.unanswered_since = (self.needs_answer > ping.covers).then_some(now);
    }
}

impl Transport {
    /// The channel keyed by a completed handshake. Rekeying is timed from `started`, the
    /// session's start.
    pub(super) fn new(noise: TransportState, started: Instant) -> Transport {
        Transport {
            noise: Box::new(noise),
            last_rekey: started,
            frames_since_rekey: 0,
            ping: None,
            next_nonce: 1,
        }
    }

    /// One frame from the peer. Returns whether it closed the session: the caller must then
    /// move to `State::Closed`.
    #[must_use = "a Close from the peer ends the session"]
    pub(super) fn read_frame(
        &mut self,
        cx: &mut Common,
        frame: &[u8],
        now: Instant,
    ) -> Result<bool, ProtocolError> {
        let mut plain = vec![0u8; frame.len()];
        let len = self
            .noise
            .read_message(frame, &mut plain)
            .map_err(|_| ProtocolError::Decrypt)?;
        let plain = &plain[..len];
        if let Some(peer) = &mut cx.peer {
            // Only the holder of this session's keys can write a frame that authenticates.
            peer.live = true;
        }
        match Message::decode(plain) {
            Ok(Decoded::Known(message)) => return Ok(self.receive(cx, message, now)),
            Ok(Decoded::Unknown { message_type }) => {
                cx.events.push_back(Event::UnknownMessage { message_type });
            }
            Err(e) => cx.events.push_back(Event::MalformedMessage {
                reason: e.to_string(),
                salvaged: Message::salvage_id(plain),
                too_large: matches!(e, MessageError::TooLong { .. }),
            }),
        }
        Ok(false)
    }

    /// Keepalive and rekeying are handled here; the rest goes to the application. Returns
    /// whether the message was a Close.
    fn receive(&mut self, cx: &mut Common, message: Message, now: Instant) -> bool {
        match message {
            // Queued ahead of everything else; written once the frame is handled.
            Message::Ping(Ping { nonce }) => cx.queued.push_front(Message::Pong(Pong { nonce })),
            Message::Pong(Pong { nonce }) => {
                if let Some(ping) = self.ping
                    && ping.nonce == nonce
                {
                    cx.rtt = Some(now.saturating_duration_since(ping.at));
                    self.ping = None;
                    cx.answers.answered(ping, now);
                }
            }
            Message::Rekey(_) => self.noise.rekey_incoming(),
            other => return cx.deliver(other),
        }
        false
    }

    /// Write every queued message as transport frames.
    pub(super) fn flush_queued(
        &mut self,
        cx: &mut Common,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        while let Some(message) = cx.queued.pop_front() {
            self.write_encrypted(&mut cx.output, &message.encode())
                .map_err(noise_failed)?;
            cx.answers.written(&message, now);
            self.frames_since_rekey += 1;
            if self.frames_since_rekey >= cx.config.rekey_after_frames {
                self.rekey(&mut cx.output, now);
            }
        }
        Ok(())
    }

    /// When the timers next need running.
    pub(super) fn next_timeout(&self, cx: &Common) -> Instant {
        let c = &cx.config;
        let heard = if self.ping.is_some() {
            cx.last_received + c.idle_timeout
        } else {
            cx.last_received + c.keepalive_interval
        };
        let answer = match (cx.answers.unanswered_since, self.ping) {
            (Some(_), Some(ping)) => Some(ping.at + c.answer_timeout),
            (Some(since), None) => Some(since + c.probe_after),
            (None, _) => None,
        };
        let next = heard.min(self.last_rekey + c.rekey_after);
        answer.map_or(next, |a| a.min(next))
    }

    /// Whether the peer is to be given up: nothing heard for the idle timeout, or a ping sent
    /// while frames await an answer went unanswered.
    pub(super) fn peer_seems_dead(&self, cx: &Common, now: Instant) -> bool {
        let c = &cx.config;
        let unanswered_ping = cx.answers.unanswered_since.is_some()
            && self
                .ping
                .is_some_and(|ping| now >= ping.at + c.answer_timeout);
        now >= cx.last_received + c.idle_timeout || unanswered_ping
    }

    /// Ping when the peer has been quiet or a frame has waited too long for an answer, and
    /// rekey when the keys are old.
    pub(super) fn run_timers(
        &mut self,
        cx: &mut Common,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        let c = Arc::clone(&cx.config);
        let probe = cx
            .answers
            .unanswered_since
            .is_some_and(|since| now >= since + c.probe_after);
        if self.ping.is_none() && (probe || now >= cx.last_received + c.keepalive_interval) {
            let nonce = self.next_nonce;
            self.next_nonce += 1;
            self.ping = Some(PingSent {
                nonce,
                at: now,
                covers: cx.answers.needs_answer,
            });
            cx.queued.push_front(Message::Ping(Ping { nonce }));
            self.flush_queued(cx, now)?;
        }
        if now >= self.last_rekey + c.rekey_after {
            self.rekey(&mut cx.output, now);
        }
        Ok(())
    }

    /// Tell the peer, then switch our sending keys.
    fn rekey(&mut self, out: &mut Vec<u8>, now: Instant) {
        if self
            .write_encrypted(out, &Message::Rekey(Rekey {}).encode())
            .is_ok()
        {
            self.noise.rekey_outgoing();
        }
        self.frames_since_rekey = 0;
        self.last_rekey = now;
    }

    /// Write a `Close` with `reason` at once, past the queue. The session ends either way, so
    /// a failure to encrypt it is not reported.
    pub(super) fn write_close(&mut self, out: &mut Vec<u8>, reason: CloseReason) {
        let close = Message::Close(Close {
            code: reason.code(),
            text: None,
        });
        let _ = self.write_encrypted(out, &close.encode());
    }

    /// Encrypt `plain` into one frame appended to `out`.
    fn write_encrypted(&mut self, out: &mut Vec<u8>, plain: &[u8]) -> Result<(), snow::Error> {
        let mut body = vec![0u8; plain.len() + TAG_LEN];
        let n = self.noise.write_message(plain, &mut body)?;
        write_frame(out, &body[..n]);
        Ok(())
    }
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
    use super::super::test_support::{config, settle};
    use super::super::{Phase, Session, State};
    use super::*;
    use crate::message::{Chat, MessageId, types};

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
            expires_after: None,
        })
        .encode();
        for plain in [future.into_writer(), broken.into_writer(), oversized] {
            let State::Transport(transport) = &mut a.state else {
                panic!("a is established");
            };
            transport
                .write_encrypted(&mut a.common.output, &plain)
                .unwrap();
        }
        a.send(
            Message::Chat(Chat {
                id: MessageId([1; 16]),
                sent_at: 0,
                body: "still here".into(),
                reply_to: None,
                expires_after: None,
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
