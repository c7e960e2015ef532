//! Property tests: encodings round-trip, and arbitrary bytes fed to every decoder and to a
//! responding session never panic and never allocate beyond a fixed bound.
//!
//! Allocation is measured by a counting allocator that tracks the peak of live heap bytes per
//! thread, so the parallel test threads do not disturb each other's figures.

#![allow(
    unsafe_code,
    reason = "a counting global allocator for the allocation-bound tests"
)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use carom_proto::{
    Ack, Chat, Close, ContactRequest, ContactResponse, Decision, Decoded, DeviceCertificate,
    FrameReader, Message, MessageId, OnionAddress, PeerKind, Ping, Pong, Session,
};
use proptest::prelude::*;

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: defers every operation to the system allocator unchanged; only counts sizes in
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|live| {
            let now = live.get() + layout.size();
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(layout.size())));
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Run `f` and return the peak heap growth (bytes) on this thread while it ran.
fn peak_growth(f: impl FnOnce()) -> usize {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    f();
    PEAK.with(Cell::get) - base
}

/// Decoding work on any input up to one frame must stay under this.
const ALLOCATION_BOUND: usize = 1 << 20;

fn message_id() -> impl Strategy<Value = MessageId> {
    any::<[u8; 16]>().prop_map(MessageId)
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..max)
        .prop_map(|cs| cs.into_iter().collect::<String>())
        .prop_filter("fits the byte limit", move |s| s.len() <= max)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (message_id(), text(64), text(1024), any::<bool>()).prop_map(
            |(id, nickname, greeting, bot)| {
                Message::ContactRequest(ContactRequest {
                    id,
                    nickname,
                    greeting,
                    kind: if bot { PeerKind::Bot } else { PeerKind::Human },
                })
            }
        ),
        (message_id(), any::<bool>()).prop_map(|(id, yes)| Message::ContactResponse(
            ContactResponse {
                id,
                decision: if yes {
                    Decision::Accept
                } else {
                    Decision::Reject
                },
            }
        )),
        (
            message_id(),
            any::<u64>(),
            text(2000),
            proptest::option::of(message_id())
        )
            .prop_map(|(id, sent_at, body, reply_to)| Message::Chat(Chat {
                id,
                sent_at,
                body,
                reply_to,
                expires_after: None,
            })),
        (
            message_id(),
            any::<u64>(),
            proptest::option::of(1..=carom_proto::MAX_TIMER_SECS)
        )
            .prop_map(|(id, sent_at, expires_after)| Message::SetTimer(
                carom_proto::SetTimer {
                    id,
                    sent_at,
                    expires_after,
                }
            )),
        (message_id(), message_id())
            .prop_map(|(id, target)| Message::Withdraw(carom_proto::Withdraw { id, target })),
        proptest::collection::vec(message_id(), 0..100).prop_map(|ids| Message::Ack(Ack { ids })),
        any::<u64>().prop_map(|nonce| Message::Ping(Ping { nonce })),
        any::<u64>().prop_map(|nonce| Message::Pong(Pong { nonce })),
        (any::<u32>(), proptest::option::of(text(256)))
            .prop_map(|(code, text)| Message::Close(Close { code, text })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn messages_round_trip(m in message()) {
        prop_assert_eq!(Message::decode(&m.encode()), Ok(Decoded::Known(m)));
    }

    #[test]
    fn the_message_decoder_survives_anything(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let peak = peak_growth(|| { let _ = Message::decode(&bytes); });
        prop_assert!(peak < ALLOCATION_BOUND, "decoding {} bytes allocated {peak}", bytes.len());
    }

    #[test]
    fn mutated_messages_never_panic(m in message(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = m.encode();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let peak = peak_growth(|| { let _ = Message::decode(&bytes); });
        prop_assert!(peak < ALLOCATION_BOUND);
    }

    #[test]
    fn the_address_parser_survives_anything(s in "\\PC{0,100}") {
        let _ = OnionAddress::parse(&s);
    }

    #[test]
    fn the_certificate_decoder_survives_anything(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = DeviceCertificate::decode(&bytes).map(|c| c.verify(0));
    }

    #[test]
    fn the_frame_reader_survives_anything(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..20)) {
        let mut reader = FrameReader::default();
        for chunk in &chunks {
            reader.push(chunk);
            while let Some(frame) = reader.next_frame() {
                prop_assert!(frame.len() <= carom_proto::MAX_FRAME_BODY);
            }
            prop_assert!(reader.buffered() <= carom_proto::MAX_FRAME_BODY + 2 + chunk.len());
        }
    }

    #[test]
    fn a_responder_survives_arbitrary_input(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2000), 1..6)) {
        let bob = common::Peer::new(2);
        let now = Instant::now();
        let mut session = Session::responder(Arc::clone(&bob.config), common::UNIX_NOW, now, &mut common::rng(4));
        let peak = peak_growth(|| {
            for chunk in &chunks {
                let _ = session.handle_input(chunk, now);
                while session.poll_event().is_some() {}
                let _ = session.poll_transmit();
            }
        });
        prop_assert!(peak < ALLOCATION_BOUND, "a responder allocated {peak} bytes");
    }

    #[test]
    fn a_responder_survives_a_valid_hello_prefix_followed_by_garbage(garbage in proptest::collection::vec(any::<u8>(), 0..3000), pattern in 1u8..=2) {
        let bob = common::Peer::new(2);
        let now = Instant::now();
        let mut session = Session::responder(Arc::clone(&bob.config), common::UNIX_NOW, now, &mut common::rng(4));
        let mut body = vec![1u8];
        body.extend_from_slice(b"CAROM");
        body.extend_from_slice(&[1, 1, 1, pattern]);
        body.extend_from_slice(&garbage);
        let mut wire = (u16::try_from(body.len()).expect("small")).to_be_bytes().to_vec();
        wire.extend_from_slice(&body);
        let _ = session.handle_input(&wire, now);
        while session.poll_event().is_some() {}
        // Garbage can never authenticate anyone.
        prop_assert!(session.peer().is_none());
    }
}

#[test]
fn cbor_headers_claiming_huge_lengths_fail_fast_and_small() {
    let cases: Vec<Vec<u8>> = vec![
        // [3, {0: bytes(2^36)...}]
        vec![0x82, 0x03, 0xa1, 0x00, 0x5b, 0, 0, 0, 0x10, 0, 0, 0, 0],
        // [4, {0: array(2^36)}]
        vec![0x82, 0x04, 0xa1, 0x00, 0x9b, 0, 0, 0, 0x10, 0, 0, 0, 0],
        // [99, map(2^36)] (an unknown type whose body must be skipped)
        vec![0x82, 0x18, 99, 0xbb, 0, 0, 0, 0x10, 0, 0, 0, 0],
    ];
    for bytes in cases {
        let peak = peak_growth(|| {
            assert!(
                Message::decode(&bytes).is_err(),
                "{:?} accepted",
                &bytes[..4]
            );
        });
        assert!(peak < ALLOCATION_BOUND, "allocated {peak} bytes");
    }
}

#[test]
fn deep_nesting_in_an_unknown_body_is_skipped_without_recursion() {
    // [99, [[[[ … 0 … ]]]]]: valid CBOR, 100,000 levels deep. Skipping must neither overflow
    // the stack nor allocate per level.
    let bytes = [vec![0x82, 0x18, 99], vec![0x81; 100_000], vec![0x00]].concat();
    let peak = peak_growth(|| {
        assert_eq!(
            Message::decode(&bytes),
            Ok(Decoded::Unknown { message_type: 99 })
        );
    });
    assert!(peak < ALLOCATION_BOUND, "allocated {peak} bytes");
}
