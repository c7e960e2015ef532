//! Test vectors: `vectors/protocol.json` holds fixed inputs (seeds, ephemeral keys, times,
//! messages) and the exact bytes they must produce. This test regenerates everything with this
//! implementation and compares; a second test rebuilds the handshake messages from the
//! documented rules with snow directly, the way an independent implementation would.
//!
//! To regenerate after an intentional wire change: `CAROM_UPDATE_VECTORS=1 cargo test -p
//! carom-proto --test vectors` (and say so in docs/protocol.md's changelog).

mod common;

use std::sync::Arc;
use std::time::Instant;

use carom_proto::{
    Ack, Chat, Close, CloseReason, ContactRequest, ContactResponse, Decision, DeviceCertificate,
    DeviceKey, IdentityKey, Message, MessageId, PeerKind, Ping, Pong, Session, SessionConfig,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::{Value, json};

const UNIX_NOW: u64 = 1_800_000_000;
const EXPIRES: u64 = 1_831_536_000;
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/protocol.json");

fn h(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

struct Party {
    identity_seed: [u8; 32],
    device_secret: [u8; 32],
    rng_seed: [u8; 32],
}

impl Party {
    fn config(&self) -> Arc<SessionConfig> {
        let identity = IdentityKey::from_seed(&self.identity_seed);
        let device = DeviceKey::from_secret(&self.device_secret);
        let cert = DeviceCertificate::issue(&identity, &device.public(), EXPIRES);
        Arc::new(SessionConfig::new(identity, device, cert))
    }
    /// The ephemeral secrets a session draws (three, in order) from this party's RNG.
    fn ephemerals(&self) -> Vec<String> {
        let mut rng = ChaCha20Rng::from_seed(self.rng_seed);
        (0..3)
            .map(|_| {
                let mut e = [0u8; 32];
                rng.fill_bytes(&mut e);
                h(&e)
            })
            .collect()
    }
    fn json(&self) -> Value {
        let config = self.config();
        json!({
            "identity_seed": h(&self.identity_seed),
            "identity_public": h(&config.identity.address().public_key()),
            "onion_address": config.identity.address().to_string(),
            "device_secret": h(&self.device_secret),
            "device_public": h(&config.device.public()),
            "certificate": h(&config.certificate.encode()),
            "ephemeral_secrets": self.ephemerals(),
        })
    }
}

fn alice() -> Party {
    Party {
        identity_seed: [0xa1; 32],
        device_secret: [0xa2; 32],
        rng_seed: [0xa3; 32],
    }
}

fn bob() -> Party {
    Party {
        identity_seed: [0xb1; 32],
        device_secret: [0xb2; 32],
        rng_seed: [0xb3; 32],
    }
}

fn chat(n: u8, body: &str) -> Message {
    Message::Chat(Chat {
        id: MessageId([n; 16]),
        sent_at: 1_800_000_000_123,
        body: body.into(),
        reply_to: None,
    })
}

fn ack(n: u8) -> Message {
    Message::Ack(Ack {
        ids: vec![MessageId([n; 16])],
    })
}

/// Drive a handshake, record every frame, then one transport message each way.
fn handshake(cached: Option<[u8; 32]>, bob_party: &Party) -> Value {
    let (a, b) = (alice(), bob_party);
    let now = Instant::now();
    let bob_address = bob().config().identity.address();
    let mut initiator = Session::initiator(
        a.config(),
        bob_address,
        cached,
        UNIX_NOW,
        now,
        &mut ChaCha20Rng::from_seed(a.rng_seed),
    );
    let mut responder = Session::responder(
        b.config(),
        UNIX_NOW,
        now,
        &mut ChaCha20Rng::from_seed(b.rng_seed),
    );
    initiator
        .send(chat(1, "first message"), now)
        .expect("queued");
    let mut frames = Vec::new();
    let mut record = |from: &str, bytes: Vec<u8>| {
        frames.push(json!({ "from": from, "bytes": h(&bytes) }));
        bytes
    };
    let mut acked_first = false;
    let mut sent_second = false;
    for _ in 0..10 {
        if let Some(bytes) = initiator.poll_transmit() {
            let bytes = record("initiator", bytes);
            responder
                .handle_input(&bytes, now)
                .expect("responder accepts");
        }
        while let Some(event) = responder.poll_event() {
            if let carom_proto::Event::Message(Message::Chat(c)) = event {
                responder.send(ack(c.id.0[0]), now).expect("ack");
                acked_first = true;
            }
        }
        if responder.phase() == carom_proto::Phase::AwaitingDecision && acked_first {
            responder.accept(now);
        }
        if let Some(bytes) = responder.poll_transmit() {
            let bytes = record("responder", bytes);
            initiator
                .handle_input(&bytes, now)
                .expect("initiator accepts");
        }
        while initiator.poll_event().is_some() {}
        if initiator.phase() == carom_proto::Phase::Established && !sent_second {
            initiator
                .send(chat(2, "second message"), now)
                .expect("queued");
            sent_second = true;
        }
    }
    json!({
        "unix_now": UNIX_NOW,
        "initiator": a.json(),
        "responder": b.json(),
        "initiator_cached_responder_static": cached.map(|k| h(&k)),
        "initiator_queues_before_handshake": h(&chat(1, "first message").encode()),
        "responder_acknowledges_with": h(&ack(1).encode()),
        "initiator_then_sends": h(&chat(2, "second message").encode()),
        "responder_then_acknowledges_with": h(&ack(2).encode()),
        "frames": frames,
    })
}

fn generate() -> Value {
    let addresses: Vec<Value> = [[0u8; 32], [1u8; 32], [0xff; 32]]
        .iter()
        .map(|seed| {
            let id = IdentityKey::from_seed(seed);
            json!({
                "seed": h(seed),
                "public_key": h(&id.address().public_key()),
                "address": id.address().to_string(),
                "uri": id.address().to_uri(),
            })
        })
        .collect();
    let messages: Vec<Value> = [
        (
            "contact_request",
            Message::ContactRequest(ContactRequest {
                id: MessageId([3; 16]),
                nickname: "Alice".into(),
                greeting: "Hi Bob, Alice from the workshop".into(),
                kind: PeerKind::Human,
            }),
        ),
        (
            "contact_response",
            Message::ContactResponse(ContactResponse {
                id: MessageId([4; 16]),
                decision: Decision::Accept,
            }),
        ),
        (
            "chat",
            Message::Chat(Chat {
                id: MessageId([5; 16]),
                sent_at: 1_800_000_000_000,
                body: "hello ✓".into(),
                reply_to: Some(MessageId([6; 16])),
            }),
        ),
        (
            "ack",
            Message::Ack(Ack {
                ids: vec![MessageId([5; 16]), MessageId([7; 16])],
            }),
        ),
        ("ping", Message::Ping(Ping { nonce: 42 })),
        ("pong", Message::Pong(Pong { nonce: 42 })),
        (
            "close",
            Message::Close(Close {
                code: CloseReason::Refused.code(),
                text: None,
            }),
        ),
    ]
    .into_iter()
    .map(|(name, m)| json!({ "name": name, "cbor": h(&m.encode()), "debug": format!("{m:?}") }))
    .collect();
    let rotated_bob = Party {
        device_secret: [0xb4; 32],
        ..bob()
    };
    json!({
        "about": "Carom protocol v1 test vectors; see docs/protocol.md. Hex is lower case.",
        "onion_addresses": addresses,
        "messages": messages,
        "handshakes": {
            "ik_known_contact": handshake(Some(bob().config().device.public()), &bob()),
            "xx_first_contact": handshake(None, &bob()),
            "ik_stale_key_then_xx": {
                "note": "the initiator caches bob's old device key; bob now uses device_secret b4…",
                "run": handshake(Some(bob().config().device.public()), &rotated_bob),
            },
        },
    })
}

#[test]
fn the_implementation_reproduces_the_vectors() {
    let generated = generate();
    let text = serde_json::to_string_pretty(&generated).expect("json") + "\n";
    if std::env::var_os("CAROM_UPDATE_VECTORS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(VECTORS).parent().expect("dir"))
            .expect("mkdir");
        std::fs::write(VECTORS, &text).expect("write vectors");
    }
    let stored = std::fs::read_to_string(VECTORS).expect(
        "vectors/protocol.json is missing: run with CAROM_UPDATE_VECTORS=1 once, review, commit",
    );
    let stored: Value = serde_json::from_str(&stored).expect("vectors parse");
    assert_eq!(stored, generated, "the wire format changed");
}

/// Rebuild IK message 1 and XX messages 1–2 from the vectors' inputs using only snow and the
/// rules of docs/protocol.md: an outside implementation's view.
#[test]
fn an_independent_construction_matches_the_vectors() {
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(VECTORS).expect("vectors")).expect("json");
    let unhex = |v: &Value| hex::decode(v.as_str().expect("hex string")).expect("hex");
    for (name, pattern) in [("ik_known_contact", "IK"), ("xx_first_contact", "XX")] {
        let run = &stored["handshakes"][name];
        let initiator = &run["initiator"];
        let responder = &run["responder"];
        let hello = unhex(&run["frames"][0]["bytes"]);
        // Frame: u16 length ‖ 0x01 ‖ "CAROM" ‖ 1 ‖ [1] ‖ 1 ‖ pattern ‖ noise message 1.
        assert_eq!(
            usize::from(u16::from_be_bytes([hello[0], hello[1]])),
            hello.len() - 2
        );
        let header = &hello[3..3 + 9];
        let pattern_byte = if pattern == "IK" { 1 } else { 2 };
        assert_eq!(
            header,
            [b"CAROM".as_slice(), &[1, 1, 1, pattern_byte]].concat()
        );
        let prologue = [
            b"carom-prologue".as_slice(),
            header,
            &unhex(&responder["identity_public"]),
        ]
        .concat();
        let params: snow::params::NoiseParams = format!("Noise_{pattern}_25519_ChaChaPoly_BLAKE2s")
            .parse()
            .expect("params");
        let ephemeral = unhex(&initiator["ephemeral_secrets"][0]);
        let secret = unhex(&initiator["device_secret"]);
        let remote = unhex(&responder["device_public"]);
        let mut builder = snow::Builder::new(params)
            .local_private_key(&secret)
            .expect("key")
            .fixed_ephemeral_key_for_testing_only(&ephemeral)
            .prologue(&prologue)
            .expect("prologue");
        if pattern == "IK" {
            builder = builder.remote_public_key(&remote).expect("rs");
        }
        let mut hs = builder.build_initiator().expect("initiator");
        // IK message 1 payload: {0: certificate, 2: [chat]} (no features).
        let payload = if pattern == "IK" {
            let mut e = minicbor::Encoder::new(Vec::new());
            e.map(2).unwrap();
            e.u8(0)
                .unwrap()
                .bytes(&unhex(&initiator["certificate"]))
                .unwrap();
            e.u8(2).unwrap().array(1).unwrap();
            let mut p = e.into_writer();
            p.extend_from_slice(&unhex(&run["initiator_queues_before_handshake"]));
            p
        } else {
            Vec::new()
        };
        let mut msg = vec![0u8; 65535];
        let n = hs.write_message(&payload, &mut msg).expect("write");
        assert_eq!(&hello[12..], &msg[..n], "{name}: message 1 differs");

        if pattern == "XX" {
            // The responder's message 2 must decrypt and carry its certificate.
            let response = unhex(&run["frames"][1]["bytes"]);
            assert_eq!(response[2], 2, "a RESPONSE frame");
            let mut out = vec![0u8; 65535];
            let n = hs
                .read_message(&response[3..], &mut out)
                .expect("message 2 decrypts");
            let mut d = minicbor::Decoder::new(&out[..n]);
            assert_eq!(d.map().unwrap(), Some(1));
            assert_eq!(d.u8().unwrap(), 0);
            assert_eq!(
                d.bytes().unwrap(),
                unhex(&responder["certificate"]).as_slice()
            );
        }
    }
}
