//! Two sessions over a simulated link: the round-trip claims, authentication, fallback,
//! negotiation, keepalive, rekeying and failure handling of the protocol.

mod common;

use std::time::Duration;

use carom_proto::{
    CertError, CloseReason, Event, Message, MessageId, Pattern, Phase, ProtocolError, SendError,
};
use common::{Pair, Peer, Policy, Side, chat, is_ack_of, is_chat};

const LATENCY: Duration = Duration::from_millis(250);
const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn ik_delivers_and_acknowledges_the_first_message_in_one_round_trip() {
    let (alice, bob) = (Peer::new(1), Peer::new(2));
    let mut pair = Pair::new(&alice, &bob, Some(bob.device.public()), LATENCY);
    pair.a.send(chat(7, "hello Bob"), pair.now).expect("queued");
    pair.run_until(LIMIT, |p| p.a_saw(is_ack_of(7)).is_some());

    // Bob had the message after half a round trip, in handshake message 1 …
    assert_eq!(pair.b_saw(is_chat(7)), Some(LATENCY));
    // … and Alice had Bob's acknowledgement, from handshake message 2, after exactly one.
    assert_eq!(pair.a_saw(is_ack_of(7)), Some(pair.rtt()));
    assert!(matches!(
        pair.a_events.first(),
        Some((
            _,
            Event::Established {
                pattern: Pattern::IK,
                retried: false,
                ..
            }
        ))
    ));
}

#[test]
fn xx_first_contact_takes_two_round_trips_and_yields_the_key_for_ik() {
    let (alice, bob) = (Peer::new(1), Peer::new(2));
    let mut pair = Pair::new(&alice, &bob, None, LATENCY);
    pair.a
        .send(chat(1, "first contact"), pair.now)
        .expect("queued");
    pair.run_until(LIMIT, |p| p.a_saw(is_ack_of(1)).is_some());
    assert_eq!(pair.b_saw(is_chat(1)), Some(LATENCY * 3));
    assert_eq!(pair.a_saw(is_ack_of(1)), Some(pair.rtt() * 2));

    // Alice learnt Bob's device key; next time she uses IK with it.
    let learnt = pair
        .a_events
        .iter()
        .find_map(|(_, e)| match e {
            Event::Established {
                peer_static,
                pattern: Pattern::XX,
                peer,
                ..
            } => {
                assert_eq!(*peer, bob.address());
                Some(*peer_static)
            }
            _ => None,
        })
        .expect("established over XX");
    assert_eq!(learnt, bob.device.public());
    let mut again = Pair::new(&alice, &bob, Some(learnt), LATENCY);
    again.a.send(chat(2, "again"), again.now).expect("queued");
    again.run_until(LIMIT, |p| p.a_saw(is_ack_of(2)).is_some());
    assert_eq!(again.a_saw(is_ack_of(2)), Some(again.rtt()));
}

#[test]
fn both_sides_end_with_the_verified_address_of_the_other() {
    for cached in [false, true] {
        let (alice, bob) = (Peer::new(1), Peer::new(2));
        let mut pair = Pair::new(&alice, &bob, cached.then(|| bob.device.public()), LATENCY);
        pair.run_until(LIMIT, |p| {
            p.a.phase() == Phase::Established && p.b.phase() == Phase::Established
        });
        assert_eq!(pair.a.peer(), Some(bob.address()));
        assert_eq!(pair.b.peer(), Some(alice.address()));
        assert!(pair.b_events.iter().any(|(_, e)| matches!(
            e,
            Event::PeerAuthenticated { peer, peer_static, .. }
                if *peer == alice.address() && *peer_static == alice.device.public()
        )));
    }
}

#[test]
fn a_stale_cached_key_falls_back_to_xx_on_the_same_stream() {
    let alice = Peer::new(1);
    // Bob rotated his device key: Alice still has the old one.
    let old_bob = Peer::with_device(2, 50, common::CERT_EXPIRY);
    let bob = Peer::with_device(2, 51, common::CERT_EXPIRY);
    let mut pair = Pair::new(&alice, &bob, Some(old_bob.device.public()), LATENCY);
    pair.a
        .send(chat(3, "are you there?"), pair.now)
        .expect("queued");
    pair.run_until(LIMIT, |p| p.a_saw(is_ack_of(3)).is_some());

    // IK message 1 (undecryptable) → retry → XX: three round trips in all, one stream.
    assert_eq!(pair.a_saw(is_ack_of(3)), Some(pair.rtt() * 3));
    let (pattern, retried, key) = pair
        .a_events
        .iter()
        .find_map(|(_, e)| match e {
            Event::Established {
                pattern,
                retried,
                peer_static,
                ..
            } => Some((*pattern, *retried, *peer_static)),
            _ => None,
        })
        .expect("established");
    assert_eq!((pattern, retried), (Pattern::XX, true));
    assert_eq!(
        key,
        bob.device.public(),
        "the new key is reported for caching"
    );
    // The message was delivered exactly once, though it first rode in the failed attempt.
    let deliveries = pair.b_events.iter().filter(|(_, e)| is_chat(3)(e)).count();
    assert_eq!(deliveries, 1);
}

#[test]
fn reaching_a_different_identity_than_dialled_fails() {
    let (alice, bob, carol) = (Peer::new(1), Peer::new(2), Peer::new(3));
    // XX: the prologue names Carol, Bob answers as Bob: Alice cannot decrypt his message 2.
    let mut pair = Pair::dialling(&alice, &bob, carol.address(), None, LATENCY);
    pair.run_until(LIMIT, |p| p.a.is_closed());
    assert!(
        matches!(
            pair.errors.as_slice(),
            [(Side::A, ProtocolError::IdentityNotProven { .. })]
        ),
        "{:?}",
        pair.errors
    );
    // IK with Bob's real key but Carol's address in the prologue: Bob cannot decrypt message 1,
    // asks for XX, and XX fails the same way. Bob never authenticates anyone.
    let mut pair = Pair::dialling(
        &alice,
        &bob,
        carol.address(),
        Some(bob.device.public()),
        LATENCY,
    );
    pair.run_until(LIMIT, |p| p.a.is_closed());
    assert!(
        matches!(
            pair.errors.as_slice(),
            [(Side::A, ProtocolError::IdentityNotProven { .. })]
        ),
        "{:?}",
        pair.errors
    );
    assert!(
        pair.b_saw(|e| matches!(e, Event::PeerAuthenticated { .. }))
            .is_none()
    );

    // A responder that uses the dialled identity in the prologue but holds another identity's
    // certificate is caught by the certificate check.
    let impostor = bob
        .clone()
        .configured(|c| c.identity = carol.identity.clone());
    let mut pair = Pair::dialling(&alice, &impostor, carol.address(), None, LATENCY);
    pair.run_until(LIMIT, |p| p.a.is_closed());
    assert!(
        matches!(
            pair.errors.as_slice(),
            [(Side::A, ProtocolError::WrongPeer { .. })]
        ),
        "{:?}",
        pair.errors
    );
}

#[test]
fn expired_and_mismatched_certificates_are_refused() {
    let alice = Peer::new(1);
    let expired_bob = Peer::with_device(2, 60, common::UNIX_NOW - 1);
    let mut pair = Pair::new(&alice, &expired_bob, None, LATENCY);
    pair.run_until(LIMIT, |p| p.a.is_closed());
    assert!(matches!(
        pair.errors.as_slice(),
        [(
            Side::A,
            ProtocolError::Certificate(CertError::Expired { .. })
        )]
    ));

    // Bob presents a certificate for a different device key than the one he uses.
    let bob = Peer::new(2);
    let other = Peer::with_device(2, 99, common::CERT_EXPIRY);
    let lying_bob = bob
        .clone()
        .configured(|c| c.certificate = other.config.certificate);
    let mut pair = Pair::new(&alice, &lying_bob, None, LATENCY);
    pair.run_until(LIMIT, |p| p.a.is_closed());
    assert!(matches!(
        pair.errors.as_slice(),
        [(Side::A, ProtocolError::Certificate(CertError::KeyMismatch))]
    ));

    // And the same check protects the responder from a lying initiator.
    let lying_alice = alice.clone().configured(|c| {
        c.certificate = Peer::with_device(1, 77, common::CERT_EXPIRY)
            .config
            .certificate;
    });
    let mut pair = Pair::new(&lying_alice, &bob, None, LATENCY);
    pair.run_until(LIMIT, |p| p.b.is_closed());
    assert!(
        pair.errors.iter().any(|(side, e)| *side == Side::B
            && *e == ProtocolError::Certificate(CertError::KeyMismatch))
    );
    assert!(
        pair.b_saw(|e| matches!(e, Event::PeerAuthenticated { .. }))
            .is_none()
    );
}

#[test]
fn a_refusal_is_authenticated_and_follows_the_acknowledgement() {
    let (stranger, bob) = (Peer::new(9), Peer::new(2));
    let mut pair = Pair::new(&stranger, &bob, Some(bob.device.public()), LATENCY);
    pair.policy = Policy::Manual;
    let request = Message::ContactRequest(carom_proto::ContactRequest {
        id: MessageId([5; 16]),
        nickname: "Mallory".into(),
        greeting: "let me in".into(),
        kind: carom_proto::PeerKind::Bot,
    });
    pair.a.send(request.clone(), pair.now).expect("queued");
    pair.run_until(LIMIT, |p| p.b.phase() == Phase::AwaitingDecision);
    // Bob's application sees who asks and what, stores it, acknowledges, and closes.
    assert!(matches!(
        pair.b_events.as_slice(),
        [(_, Event::PeerAuthenticated { peer, .. }), (_, Event::Message(m))]
            if *peer == stranger.address() && *m == request
    ));
    let now = pair.now;
    pair.b
        .send(
            Message::Ack(carom_proto::Ack {
                ids: vec![MessageId([5; 16])],
            }),
            now,
        )
        .expect("ack");
    pair.b.close(CloseReason::RequestReceived, now);
    pair.run_until(LIMIT, |p| p.a.is_closed());
    let kinds: Vec<&Event> = pair.a_events.iter().map(|(_, e)| e).collect();
    assert!(
        matches!(
            kinds.as_slice(),
            [
                Event::Established { .. },
                Event::Message(Message::Ack(_)),
                Event::Closed {
                    reason: CloseReason::RequestReceived,
                    by_peer: true
                },
            ]
        ),
        "{kinds:?}"
    );
}

/// Run until both sides are closed and nothing is in flight (bounded in virtual time).
fn settle(pair: &mut Pair) {
    while pair.step() {
        assert!(
            pair.elapsed() < Duration::from_secs(600),
            "{}",
            pair.summary()
        );
    }
}

fn close_message(reason: CloseReason) -> Message {
    Message::Close(carom_proto::Close {
        code: reason.code(),
        text: None,
    })
}

fn is_peer_authenticated(e: &Event) -> bool {
    matches!(e, Event::PeerAuthenticated { .. })
}

/// Alice queues a chat, a Close and another chat before the handshake, so all three ride in
/// her first handshake message that carries messages (IK message 1 or XX message 3). Bob must
/// stop at the Close: the first chat is his, the Close ends his session, the second chat is
/// never delivered, and nothing he or his application does afterwards writes a byte or
/// revives the session.
fn a_close_in_the_initiators_handshake_ends_the_responders_session(cached: bool) {
    let (alice, bob) = (Peer::new(1), Peer::new(2));
    let mut pair = Pair::new(&alice, &bob, cached.then(|| bob.device.public()), LATENCY);
    pair.policy = Policy::Manual;
    let now = pair.now;
    pair.a.send(chat(1, "before"), now).expect("queued");
    pair.a
        .send(close_message(CloseReason::Normal), now)
        .expect("queued");
    pair.a.send(chat(2, "after"), now).expect("queued");
    if !cached {
        // Alice is established once she has written XX message 3; what she writes next goes
        // out as transport frames right behind it. They come after the Close too.
        pair.run_until(LIMIT, |p| p.a.phase() == Phase::Established);
        let now = pair.now;
        pair.a
            .send(chat(3, "after, in transport"), now)
            .expect("queued");
    }
    pair.run_until(LIMIT, |p| p.b_saw(is_peer_authenticated).is_some());
    pair.pump();
    let written = pair.bytes_sent.1;
    let events: Vec<Event> = pair.b_events.iter().map(|(_, e)| e.clone()).collect();
    assert!(
        matches!(
            events.as_slice(),
            [
                Event::PeerAuthenticated { peer, .. },
                Event::Message(Message::Chat(c)),
                Event::Closed {
                    reason: CloseReason::Normal,
                    by_peer: true
                },
            ] if *peer == alice.address() && c.id == MessageId([1; 16])
        ),
        "cached {cached}: {events:?}"
    );
    assert!(pair.b.is_closed(), "cached {cached}: {:?}", pair.b.phase());
    assert_eq!(pair.b.phase(), Phase::Closed);
    assert_eq!(pair.b.poll_timeout(), None, "no timer on a closed session");

    // An application that decides anyway changes nothing.
    let now = pair.now;
    assert_eq!(
        pair.b.send(chat(4, "too late"), now),
        Err(SendError::Closed)
    );
    pair.b.accept(now);
    assert!(pair.b.is_closed());
    pair.b.close(CloseReason::Refused, now);
    assert!(pair.b.is_closed());
    assert_eq!(pair.b.poll_transmit(), None, "cached {cached}");

    // Whatever Alice sends later (keepalives, until she gives up) is ignored.
    pair.run_until(Duration::from_secs(600), |p| p.a.is_closed());
    settle(&mut pair);
    assert_eq!(
        pair.bytes_sent.1, written,
        "cached {cached}: Bob wrote more"
    );
    if cached {
        assert_eq!(written, 0, "no IK message 2");
    }
    assert_eq!(
        pair.b_events.len(),
        3,
        "cached {cached}: {}",
        pair.summary()
    );
    for id in [2, 3] {
        assert!(pair.b_saw(is_chat(id)).is_none(), "chat {id} delivered");
    }
    assert!(pair.errors.is_empty(), "{:?}", pair.errors);
}

#[test]
fn a_close_in_ik_message_1_ends_the_responders_session() {
    a_close_in_the_initiators_handshake_ends_the_responders_session(true);
}

#[test]
fn a_close_in_xx_message_3_ends_the_responders_session() {
    a_close_in_the_initiators_handshake_ends_the_responders_session(false);
}

/// The initiator stops at a Close in IK message 2 the same way: what comes after it in the
/// payload is not delivered, and what Alice had queued is dropped unwritten.
#[test]
fn nothing_after_a_close_in_ik_message_2_is_delivered() {
    let (alice, bob) = (Peer::new(1), Peer::new(2));
    let mut pair = Pair::new(&alice, &bob, Some(bob.device.public()), LATENCY);
    pair.policy = Policy::Manual;
    pair.a.send(chat(1, "hello"), pair.now).expect("queued");
    pair.pump();
    // Written after the HELLO left: it waits for the handshake.
    pair.a.send(chat(5, "queued"), pair.now).expect("queued");
    let hello = pair.bytes_sent.0;
    pair.run_until(LIMIT, |p| p.b.phase() == Phase::AwaitingDecision);
    // A peer that puts messages after its Close (the reference's `close` never does).
    let now = pair.now;
    pair.b
        .send(
            Message::Ack(carom_proto::Ack {
                ids: vec![MessageId([1; 16])],
            }),
            now,
        )
        .expect("ack");
    pair.b
        .send(close_message(CloseReason::RequestReceived), now)
        .expect("close");
    pair.b.send(chat(9, "after the close"), now).expect("chat");
    pair.b.accept(now);
    pair.run_until(LIMIT, |p| p.a.is_closed());
    settle(&mut pair);
    let events: Vec<&Event> = pair.a_events.iter().map(|(_, e)| e).collect();
    assert!(
        matches!(
            events.as_slice(),
            [
                Event::Established { .. },
                Event::Message(Message::Ack(_)),
                Event::Closed {
                    reason: CloseReason::RequestReceived,
                    by_peer: true
                },
            ]
        ),
        "{events:?}"
    );
    assert_eq!(pair.bytes_sent.0, hello, "Alice wrote after the Close");
    assert!(pair.errors.is_empty(), "{:?}", pair.errors);
}

/// XX message 2 never carries messages from a reference responder, but if one carries a
/// Close, the initiator stops there too: it delivers what came before the Close, is never
/// established, and does not answer with message 3 (which would reveal who it is to a peer
/// that has already closed).
#[test]
fn a_close_in_xx_message_2_ends_the_initiators_session_without_message_3() {
    let (alice, bob) = (Peer::new(1), Peer::new(2));
    let now = std::time::Instant::now();
    let mut a = carom_proto::Session::initiator(
        std::sync::Arc::clone(&alice.config),
        bob.address(),
        None,
        common::UNIX_NOW,
        now,
        &mut common::rng(1),
    );
    a.send(chat(1, "who are you?"), now).expect("queued");
    let hello = a.poll_transmit().expect("a HELLO");
    // Play Bob by hand: read XX message 1 from the HELLO, answer with message 2.
    let body = &hello[2..];
    assert_eq!(
        usize::from(u16::from_be_bytes([hello[0], hello[1]])),
        body.len()
    );
    assert_eq!(body[0], 1, "a HELLO");
    let magic = carom_proto::MAGIC.len();
    let header_len = magic + 1 + usize::from(body[1 + magic]) + 2;
    let (header, noise) = body[1..].split_at(header_len);
    let mut prologue = carom_proto::PROLOGUE_LABEL.to_vec();
    prologue.extend_from_slice(header);
    prologue.extend_from_slice(&bob.address().public_key());
    let secret = bob.device.secret();
    let mut responder = snow::Builder::new(carom_proto::NOISE_XX.parse().expect("params"))
        .local_private_key(secret.as_ref())
        .and_then(|b| b.prologue(&prologue))
        .and_then(snow::Builder::build_responder)
        .expect("a responder");
    let mut scratch = vec![0u8; carom_proto::MAX_FRAME_BODY];
    assert_eq!(
        responder
            .read_message(noise, &mut scratch)
            .expect("message 1"),
        0
    );
    // {0: cert_R, 2: [ack, close, chat, a message of an unknown type]}
    let mut payload = vec![0xa2, 0x00, 0x58, 137];
    payload.extend_from_slice(&bob.config.certificate.encode());
    payload.extend_from_slice(&[0x02, 0x84]);
    let ack = Message::Ack(carom_proto::Ack {
        ids: vec![MessageId([1; 16])],
    });
    for m in [ack, close_message(CloseReason::Refused), chat(9, "after")] {
        payload.extend_from_slice(&m.encode());
    }
    payload.extend_from_slice(&[0x82, 0x19, 0x0f, 0xa0, 0xa0]); // [4000, {}]
    let mut message_2 = vec![0u8; carom_proto::MAX_FRAME_BODY];
    let n = responder
        .write_message(&payload, &mut message_2)
        .expect("message 2");
    let mut frame = u16::try_from(n + 1).expect("fits").to_be_bytes().to_vec();
    frame.push(2); // RESPONSE
    frame.extend_from_slice(&message_2[..n]);

    assert_eq!(a.handle_input(&frame, now), Ok(()));
    let events: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
    assert!(
        matches!(
            events.as_slice(),
            [
                Event::Message(Message::Ack(_)),
                Event::Closed {
                    reason: CloseReason::Refused,
                    by_peer: true
                },
            ]
        ),
        "{events:?}"
    );
    assert!(a.is_closed());
    assert_eq!(a.poll_transmit(), None, "no XX message 3");
    assert_eq!(a.poll_timeout(), None);
}

#[test]
fn versions_are_negotiated_down_on_the_same_stream() {
    let alice = Peer::new(1).configured(|c| c.versions = vec![1, 2]);
    let bob = Peer::new(2);
    let mut pair = Pair::new(&alice, &bob, Some(bob.device.public()), LATENCY);
    pair.a.send(chat(4, "v?"), pair.now).expect("queued");
    pair.run_until(LIMIT, |p| p.a_saw(is_ack_of(4)).is_some());
    assert!(pair.a_events.iter().any(|(_, e)| matches!(
        e,
        Event::Established {
            retried: true,
            pattern: Pattern::IK,
            ..
        }
    )));
    assert_eq!(pair.a_saw(is_ack_of(4)), Some(pair.rtt() * 2));

    let future_only = Peer::new(1).configured(|c| c.versions = vec![2]);
    let mut pair = Pair::new(&future_only, &bob, None, LATENCY);
    pair.run_until(LIMIT, |p| p.a.is_closed());
    assert!(matches!(
        pair.errors.as_slice(),
        [(Side::A, ProtocolError::NoCommonVersion { .. })]
    ));
}

#[test]
fn a_downgraded_hello_is_answered_with_a_retry() {
    // Alice says she speaks 1 and 2 but picks 1; Bob speaks 1 and 2, so he insists on 2.
    let alice = Peer::new(1).configured(|c| c.versions = vec![1, 2]);
    let bob = Peer::new(2).configured(|c| c.versions = vec![1, 2]);
    let mut pair = Pair::new(&alice, &bob, None, LATENCY);
    pair.run_until(LIMIT, |p| p.a.phase() == Phase::Established);
    assert!(
        pair.a_events
            .iter()
            .any(|(_, e)| matches!(e, Event::Established { retried: false, .. }))
    );
}

#[test]
fn many_messages_queued_before_the_handshake_all_arrive_in_order() {
    let (alice, bob) = (Peer::new(1), Peer::new(2));
    for cached in [None, Some(bob.device.public())] {
        let mut pair = Pair::new(&alice, &bob, cached, LATENCY);
        for i in 0..200u8 {
            pair.a
                .send(chat(i, &"x".repeat(1000)), pair.now)
                .expect("queued");
        }
        pair.run_until(LIMIT, |p| p.a_saw(is_ack_of(199)).is_some());
        let received: Vec<MessageId> = pair
            .b_events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Message(Message::Chat(c)) => Some(c.id),
                _ => None,
            })
            .collect();
        let expected: Vec<MessageId> = (0..200u8).map(|i| MessageId([i; 16])).collect();
        assert_eq!(received, expected);
    }
}

#[test]
fn keepalives_measure_rtt_and_a_dead_peer_is_detected() {
    let (alice, bob) = (Peer::new(1), Peer::new(2));
    let mut pair = Pair::new(&alice, &bob, Some(bob.device.public()), LATENCY);
    pair.run_until(LIMIT, |p| p.b.phase() == Phase::Established);
    // Idle for a while: pings keep it alive and measure the round trip.
    pair.run_until(Duration::from_secs(400), |p| {
        p.elapsed() > Duration::from_secs(300)
    });
    assert!(!pair.a.is_closed() && !pair.b.is_closed());
    assert_eq!(pair.a.rtt(), Some(pair.rtt()));

    // Bob goes silent (his frames are lost): Alice notices within the idle timeout.
    pair.drop_from = Some(Side::B);
    let silent_since = pair.elapsed();
    pair.run_until(Duration::from_secs(1000), |p| p.a.is_closed());
    let closed_at = pair.a_saw(timed_out_here).expect("timeout reported");
    assert!(closed_at - silent_since <= Duration::from_secs(181));
}

#[test]
fn accepting_outside_the_decision_changes_nothing() {
    let (alice, bob) = (Peer::new(1), Peer::new(2));
    let mut pair = Pair::new(&alice, &bob, Some(bob.device.public()), LATENCY);
    pair.a.send(chat(1, "first"), pair.now).expect("queued");
    pair.run_until(LIMIT, |p| p.a_saw(is_ack_of(1)).is_some());
    // Both ends are established; a late or repeated accept must not end either session.
    let now = pair.now;
    pair.a.accept(now);
    pair.b.accept(now);
    assert!(!pair.a.is_closed() && !pair.b.is_closed());
    pair.a
        .send(chat(2, "second"), pair.now)
        .expect("still open");
    pair.run_until(LIMIT, |p| p.a_saw(is_ack_of(2)).is_some());
    assert!(pair.errors.is_empty(), "{:?}", pair.errors);
}

#[test]
fn rekeying_keeps_the_channel_working() {
    let alice = Peer::new(1).configured(|c| {
        c.rekey_after_frames = 3;
        c.rekey_after = Duration::from_secs(10);
    });
    let bob = Peer::new(2).configured(|c| c.rekey_after_frames = 5);
    let mut pair = Pair::new(&alice, &bob, Some(bob.device.public()), LATENCY);
    for round in 0..10u8 {
        let now = pair.now;
        pair.a.send(chat(round, "rekey me"), now).expect("queued");
        pair.run_until(LIMIT * 10, |p| p.a_saw(is_ack_of(round)).is_some());
        // Let time pass so time-based rekeying also happens.
        let until = pair.elapsed() + Duration::from_secs(15);
        pair.run_until(LIMIT * 10, |p| p.elapsed() >= until);
    }
    assert!(
        !pair.a.is_closed() && !pair.b.is_closed(),
        "errors: {:?}",
        pair.errors
    );
}

#[test]
fn an_unanswered_handshake_times_out() {
    let (alice, bob) = (Peer::new(1), Peer::new(2));
    let mut pair = Pair::new(&alice, &bob, None, LATENCY);
    pair.drop_from = Some(Side::B);
    pair.run_until(Duration::from_secs(200), |p| p.a.is_closed());
    assert_eq!(
        pair.a_saw(|e| matches!(
            e,
            Event::Closed {
                reason: CloseReason::Timeout,
                ..
            }
        )),
        Some(Duration::from_secs(90))
    );
}

#[test]
fn a_tampered_frame_closes_the_session() {
    let (alice, bob) = (Peer::new(1), Peer::new(2));
    let mut pair = Pair::new(&alice, &bob, Some(bob.device.public()), LATENCY);
    pair.run_until(LIMIT, |p| p.a.phase() == Phase::Established);
    let now = pair.now;
    pair.a.send(chat(1, "hi"), now).expect("queued");
    let mut bytes = pair.a.poll_transmit().expect("a frame");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert_eq!(
        pair.b.handle_input(&bytes, now),
        Err(ProtocolError::Decrypt)
    );
    assert!(pair.b.is_closed());
    assert!(matches!(
        pair.b.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::ProtocolError,
            by_peer: false
        })
    ));
}

#[test]
fn oversized_messages_are_refused_before_queueing() {
    let (alice, bob) = (Peer::new(1), Peer::new(2));
    let mut pair = Pair::new(&alice, &bob, None, LATENCY);
    let huge = chat(1, &"x".repeat(carom_proto::MAX_BODY_BYTES + 1));
    assert!(matches!(
        pair.a.send(huge, pair.now),
        Err(SendError::Limit(carom_proto::MessageError::TooLong {
            field: "body",
            ..
        }))
    ));
    let max = chat(2, &"y".repeat(carom_proto::MAX_BODY_BYTES));
    pair.a.send(max, pair.now).expect("the largest body fits");
    pair.run_until(LIMIT, |p| p.a_saw(is_ack_of(2)).is_some());
}

#[test]
fn a_closed_session_refuses_to_send() {
    let (alice, bob) = (Peer::new(1), Peer::new(2));
    let mut pair = Pair::new(&alice, &bob, None, LATENCY);
    let now = pair.now;
    pair.a.close(CloseReason::Normal, now);
    assert_eq!(pair.a.send(chat(1, "late"), now), Err(SendError::Closed));
}

#[test]
fn garbage_is_not_carom() {
    let bob = Peer::new(2);
    let now = std::time::Instant::now();
    let mut session = carom_proto::Session::responder(
        std::sync::Arc::clone(&bob.config),
        common::UNIX_NOW,
        now,
        &mut common::rng(3),
    );
    let http = b"\x00\x10GET / HTTP/1.1\r\n\r\n";
    assert_eq!(
        session.handle_input(http, now),
        Err(ProtocolError::NotCarom)
    );
    assert!(session.is_closed());
}

/// A first frame that cannot be a HELLO is refused at its first telling byte, not held until
/// its declared length arrives.
#[test]
fn a_first_frame_that_cannot_be_a_hello_is_refused_at_once() {
    let bob = Peer::new(2);
    let now = std::time::Instant::now();
    let responder = || {
        carom_proto::Session::responder(
            std::sync::Arc::clone(&bob.config),
            common::UNIX_NOW,
            now,
            &mut common::rng(3),
        )
    };
    // An HTTP request: "GE" reads as an 18,245-byte frame; the third byte gives it away.
    for prefix in [
        &b"GET"[..],
        b"GET / HTTP/1.1\r\n",
        b"\x00\x00",
        b"\x00\x40\x01CAX",
    ] {
        let mut session = responder();
        assert_eq!(
            session.handle_input(prefix, now),
            Err(ProtocolError::NotCarom),
            "{prefix:?}"
        );
        assert!(session.is_closed());
    }
    // Byte by byte, a HELLO's start is never refused early.
    let mut session = responder();
    for byte in b"\x40\x00\x01CAROM\x01" {
        assert_eq!(session.handle_input(&[*byte], now), Ok(()));
    }
    assert!(!session.is_closed());
}

#[test]
fn the_same_randomness_gives_the_same_bytes() {
    let run = || {
        let (alice, bob) = (Peer::new(1), Peer::new(2));
        let mut pair = Pair::new(&alice, &bob, None, LATENCY);
        pair.a
            .send(chat(1, "deterministic"), pair.now)
            .expect("queued");
        pair.run_until(LIMIT, |p| p.a_saw(is_ack_of(1)).is_some());
        pair.bytes_sent
    };
    assert_eq!(run(), run());
}

#[test]
fn a_backlog_queued_before_the_handshake_is_bounded_like_one_after_it() {
    let (alice, bob) = (Peer::new(1), Peer::new(2));
    let mut pair = Pair::new(&alice, &bob, Some(bob.device.public()), LATENCY);
    let body = "b".repeat(32_000);
    let limit = 4 << 20;
    let mut queued = 0u32;
    let refused = loop {
        let n = u8::try_from(queued % 250).expect("small");
        match pair.a.send(chat(n, &body), pair.now) {
            Ok(()) => queued += 1,
            Err(e) => break e,
        }
        assert!(
            queued < 1000,
            "a pre-handshake backlog must be refused at some point"
        );
    };
    assert_eq!(refused, SendError::Backpressure);
    assert!(
        pair.a.pending_output() <= limit + 33_000,
        "{} bytes wait",
        pair.a.pending_output()
    );
    assert!(queued >= 120, "only {queued} fit in the 4 MiB limit");
    // Once the handshake is done and the output written, there is room again.
    pair.run_until(LIMIT, |p| p.a.phase() == Phase::Established);
    while pair.a.pending_output() > limit {
        assert!(pair.step(), "the output drains");
    }
    pair.a
        .send(chat(251, "room again"), pair.now)
        .expect("room after the backlog drained");
    pair.run_until(LIMIT, |p| p.a_saw(is_ack_of(251)).is_some());
}

#[test]
fn a_silent_path_is_noticed_soon_after_a_message_goes_unanswered() {
    let (alice, bob) = (Peer::new(1), Peer::new(2));
    let mut pair = Pair::new(&alice, &bob, Some(bob.device.public()), LATENCY);
    pair.run_until(LIMIT, |p| p.b.phase() == Phase::Established);
    pair.run_until(LIMIT, |p| p.elapsed() > Duration::from_secs(10));
    // The circuit hangs: nothing Bob writes arrives any more. Alice then writes a message.
    pair.drop_from = Some(Side::B);
    let sent_at = pair.elapsed();
    pair.a
        .send(chat(9, "are you there?"), pair.now)
        .expect("queued");
    pair.run_until(Duration::from_secs(100), |p| p.a.is_closed());
    let closed_at = pair.a_saw(timed_out_here).expect("timeout reported");
    // Probe after 3 s, give up 10 s later: well before the 60 s keepalive + 180 s idle rule.
    let noticed = closed_at - sent_at;
    assert!(
        noticed >= Duration::from_secs(12) && noticed <= Duration::from_secs(14),
        "noticed after {noticed:?}"
    );
}

#[test]
fn a_busy_slow_session_is_not_mistaken_for_a_dead_one() {
    let (alice, bob) = (Peer::new(1), Peer::new(2));
    // A slow path: two seconds each way, longer than the probe delay.
    let mut pair = Pair::new(
        &alice,
        &bob,
        Some(bob.device.public()),
        Duration::from_secs(2),
    );
    pair.run_until(LIMIT, |p| p.b.phase() == Phase::Established);
    for i in 0..100u8 {
        pair.a.send(chat(i, "steady"), pair.now).expect("queued");
        let until = pair.elapsed() + Duration::from_secs(3);
        pair.run_until(Duration::from_secs(1000), |p| p.elapsed() >= until);
        assert!(
            !pair.a.is_closed(),
            "closed a live session after message {i}"
        );
    }
    pair.run_until(Duration::from_secs(1000), |p| {
        p.a_saw(is_ack_of(99)).is_some()
    });
    assert!(!pair.a.is_closed() && !pair.b.is_closed());
}

/// The session ended by its own timeout (not the peer's close).
fn timed_out_here(e: &Event) -> bool {
    matches!(
        e,
        Event::Closed {
            reason: CloseReason::Timeout,
            by_peer: false
        }
    )
}
