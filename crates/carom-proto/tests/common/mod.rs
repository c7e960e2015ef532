//! A deterministic two-peer harness: two sessions joined by a simulated link with a fixed
//! one-way latency, driven in virtual time. Round trips are counted, not guessed.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "a test-support module: each test binary uses a different part"
)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use carom_proto::{
    Ack, Chat, DeviceCertificate, DeviceKey, Event, IdentityKey, Message, MessageId, OnionAddress,
    Session, SessionConfig,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// "Now" for certificates, unix seconds.
pub const UNIX_NOW: u64 = 1_800_000_000;
/// Certificates issued by [`Peer::new`] expire a year later.
pub const CERT_EXPIRY: u64 = UNIX_NOW + 365 * 24 * 3600;

/// One party: identity, device key, certificate, session configuration.
#[derive(Clone)]
pub struct Peer {
    pub identity: IdentityKey,
    pub device: DeviceKey,
    pub config: Arc<SessionConfig>,
}

impl Peer {
    pub fn new(seed: u8) -> Peer {
        Peer::with_device(seed, seed.wrapping_add(100), CERT_EXPIRY)
    }

    pub fn with_device(identity_seed: u8, device_seed: u8, expires: u64) -> Peer {
        let identity = IdentityKey::from_seed(&[identity_seed; 32]);
        let device = DeviceKey::from_secret(&[device_seed; 32]);
        let cert = DeviceCertificate::issue(&identity, &device.public(), expires);
        let config = Arc::new(SessionConfig::new(identity.clone(), device.clone(), cert));
        Peer {
            identity,
            device,
            config,
        }
    }

    pub fn configured(mut self, f: impl FnOnce(&mut SessionConfig)) -> Peer {
        let mut config = (*self.config).clone();
        f(&mut config);
        self.config = Arc::new(config);
        self
    }

    pub fn address(&self) -> OnionAddress {
        self.identity.address()
    }
}

pub fn rng(seed: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([seed; 32])
}

pub fn chat(n: u8, body: &str) -> Message {
    Message::Chat(Chat {
        id: MessageId([n; 16]),
        sent_at: 1,
        body: body.into(),
        reply_to: None,
        expires_after: None,
    })
}

/// What the responder's application does with an authenticated peer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Policy {
    /// Acknowledge every chat and keep the session.
    AcceptAndAck,
    /// Do nothing (the test decides).
    Manual,
}

/// Which side of the link.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    A,
    B,
}

/// Two sessions over a simulated link.
pub struct Pair {
    pub a: Session,
    pub b: Session,
    pub t0: Instant,
    pub now: Instant,
    pub latency: Duration,
    in_flight: VecDeque<(Instant, Side, Vec<u8>)>,
    pub a_events: Vec<(Duration, Event)>,
    pub b_events: Vec<(Duration, Event)>,
    pub policy: Policy,
    /// Bytes written by each side (A, B).
    pub bytes_sent: (usize, usize),
    /// When set, frames from this side are dropped (a dead link).
    pub drop_from: Option<Side>,
    pub errors: Vec<(Side, carom_proto::ProtocolError)>,
}

impl Pair {
    /// A dials B. `cached` is the static key A believes B has (None → XX).
    pub fn new(a: &Peer, b: &Peer, cached: Option<[u8; 32]>, latency: Duration) -> Pair {
        Pair::dialling(a, b, b.address(), cached, latency)
    }

    /// A dials `dialled` but the link reaches B (to test misbinding).
    pub fn dialling(
        a: &Peer,
        b: &Peer,
        dialled: OnionAddress,
        cached: Option<[u8; 32]>,
        latency: Duration,
    ) -> Pair {
        let t0 = Instant::now();
        let sa = Session::initiator(
            Arc::clone(&a.config),
            dialled,
            cached,
            UNIX_NOW,
            t0,
            &mut rng(1),
        );
        let sb = Session::responder(Arc::clone(&b.config), UNIX_NOW, t0, &mut rng(2));
        Pair {
            a: sa,
            b: sb,
            t0,
            now: t0,
            latency,
            in_flight: VecDeque::new(),
            a_events: Vec::new(),
            b_events: Vec::new(),
            policy: Policy::AcceptAndAck,
            bytes_sent: (0, 0),
            drop_from: None,
            errors: Vec::new(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    pub fn rtt(&self) -> Duration {
        self.latency * 2
    }

    /// Collect output and events from both sides, applying the responder policy.
    pub fn pump(&mut self) {
        loop {
            let mut progressed = false;
            for side in [Side::B, Side::A] {
                let (session, log) = match side {
                    Side::A => (&mut self.a, &mut self.a_events),
                    Side::B => (&mut self.b, &mut self.b_events),
                };
                // Handle a whole batch of events, then decide: acks for the messages that rode
                // in the handshake are queued first, so they ride in the responder's reply.
                let mut batch = Vec::new();
                while let Some(event) = session.poll_event() {
                    batch.push(event);
                }
                progressed |= !batch.is_empty();
                if self.policy == Policy::AcceptAndAck {
                    for event in &batch {
                        react(session, event, self.now);
                    }
                    if session.phase() == carom_proto::Phase::AwaitingDecision {
                        session.accept(self.now);
                    }
                }
                log.extend(batch.into_iter().map(|e| (self.now - self.t0, e)));
            }
            for side in [Side::A, Side::B] {
                let session = match side {
                    Side::A => &mut self.a,
                    Side::B => &mut self.b,
                };
                if let Some(bytes) = session.poll_transmit() {
                    progressed = true;
                    match side {
                        Side::A => self.bytes_sent.0 += bytes.len(),
                        Side::B => self.bytes_sent.1 += bytes.len(),
                    }
                    if self.drop_from != Some(side) {
                        self.in_flight
                            .push_back((self.now + self.latency, side, bytes));
                    }
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// Advance to the next delivery or timer. Returns false when nothing is left to happen.
    pub fn step(&mut self) -> bool {
        self.pump();
        let next_delivery = self.in_flight.front().map(|(t, _, _)| *t);
        let next_timer = [self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let deliver_first = match (next_delivery, next_timer) {
            (Some(d), Some(t)) => d <= t,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if deliver_first {
            let (at, side, bytes) = self.in_flight.pop_front().expect("front exists");
            self.now = at;
            let (target, target_side) = match side {
                Side::A => (&mut self.b, Side::B),
                Side::B => (&mut self.a, Side::A),
            };
            if let Err(e) = target.handle_input(&bytes, self.now) {
                self.errors.push((target_side, e));
            }
        } else if let Some(t) = next_timer {
            self.now = self.now.max(t);
            self.a.handle_timeout(self.now);
            self.b.handle_timeout(self.now);
        } else {
            return false;
        }
        self.pump();
        true
    }

    /// Step until `done` holds, or panic after `limit` of virtual time.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Pair) -> bool) {
        self.pump();
        while !done(self) {
            assert!(
                self.elapsed() <= limit,
                "condition not reached within {limit:?}; {}",
                self.summary()
            );
            if !self.step() {
                panic!("nothing left to happen; {}", self.summary());
            }
        }
    }

    /// A short account of what happened, for failure messages (bodies are not printed).
    pub fn summary(&self) -> String {
        let brief = |events: &[(Duration, Event)]| -> Vec<String> {
            events
                .iter()
                .map(|(t, e)| {
                    let name = match e {
                        Event::Message(m) => format!("{:?}", m.message_type()),
                        other => format!("{other:?}").chars().take(40).collect(),
                    };
                    format!("{t:?}:{name}")
                })
                .take(30)
                .collect()
        };
        format!(
            "A events {:?}; B events {:?}; errors {:?}",
            brief(&self.a_events),
            brief(&self.b_events),
            self.errors
        )
    }

    /// When side A first saw an event matching `f`.
    pub fn a_saw(&self, f: impl Fn(&Event) -> bool) -> Option<Duration> {
        self.a_events.iter().find(|(_, e)| f(e)).map(|(t, _)| *t)
    }

    /// When side B first saw an event matching `f`.
    pub fn b_saw(&self, f: impl Fn(&Event) -> bool) -> Option<Duration> {
        self.b_events.iter().find(|(_, e)| f(e)).map(|(t, _)| *t)
    }
}

/// What a well-behaved application does with a message: acknowledge chats.
fn react(session: &mut Session, event: &Event, now: Instant) {
    if let Event::Message(Message::Chat(c)) = event {
        session
            .send(Message::Ack(Ack { ids: vec![c.id] }), now)
            .expect("ack queued");
    }
}

pub fn is_ack_of(id: u8) -> impl Fn(&Event) -> bool {
    move |e| matches!(e, Event::Message(Message::Ack(a)) if a.ids.contains(&MessageId([id; 16])))
}

pub fn is_chat(id: u8) -> impl Fn(&Event) -> bool {
    move |e| matches!(e, Event::Message(Message::Chat(c)) if c.id == MessageId([id; 16]))
}
