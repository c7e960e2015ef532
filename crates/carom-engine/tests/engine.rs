//! Engines talking over the in-memory transport, each with a real encrypted store on disk, in
//! virtual time: each test runs on a current-thread runtime whose clock is paused, the engines'
//! stores run inline, and the clock moves only when every engine is idle. A wait here is for
//! an event; "later" is a timer (`advance`), and takes no real time.
//!
//! The engines' wall clock moves with the virtual one, so a certificate's expiry and a
//! rejection's age are tested in virtual time too.
//!
//! These are the fast tests of the messenger logic; the same flows run over a private Tor
//! network with real daemons in `daemon/tests/`.

#![allow(
    clippy::print_stdout,
    reason = "the backlog and retry tests report the figures they measure"
)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use carom_api as api;
use carom_engine::{Engine, EngineConfig, EngineError, create_profile, load_profile};
use carom_store::{DbKey, Store};
use carom_tor::{MemoryNetwork, MemoryTransport};
use support::advance;

/// How long a test waits (in virtual time) for what it expects.
const WAIT: Duration = Duration::from_secs(600);
/// One-way latency of the simulated network.
const LATENCY: Duration = Duration::from_millis(50);

fn start(
    store: Store,
    profile: &carom_engine::Profile,
    transport: MemoryTransport,
    config: EngineConfig,
) -> Engine {
    Engine::start_in_virtual_time(store, profile, transport, config).expect("engine")
}

fn config() -> EngineConfig {
    EngineConfig {
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_secs(1),
        presence_initial: Duration::from_millis(200),
        presence_max: Duration::from_secs(1),
        stranger_burst: 4,
        ..EngineConfig::default()
    }
}

struct Node {
    engine: Option<Engine>,
    /// The keys, so a test can speak as this node without its engine.
    profile: carom_engine::Profile,
    db: PathBuf,
    key: [u8; 32],
    config: EngineConfig,
}

impl Node {
    async fn create(net: &MemoryNetwork, dir: &Path, name: &str, config: EngineConfig) -> Node {
        let db = dir.join(format!("{name}.db"));
        let key = *DbKey::generate().expect("key").as_bytes();
        let mut store = Store::create(&db, &DbKey::from_bytes(key)).expect("store");
        let profile = create_profile(&mut store, &config).expect("profile");
        let transport = MemoryTransport::new(net, &profile.identity);
        let engine = start(store, &profile, transport, config.clone());
        Node {
            engine: Some(engine),
            profile,
            db,
            key,
            config,
        }
    }

    fn e(&self) -> &Engine {
        self.engine.as_ref().expect("running")
    }

    fn address(&self) -> String {
        self.e().address().to_string()
    }

    async fn stop(&mut self) {
        if let Some(engine) = self.engine.take() {
            engine.shutdown().await.expect("clean shutdown");
        }
    }

    async fn restart(&mut self, net: &MemoryNetwork) {
        self.stop().await;
        let mut store = Store::open(&self.db, &DbKey::from_bytes(self.key)).expect("reopen");
        let profile = load_profile(&mut store, &self.config).expect("profile");
        let transport = MemoryTransport::new(net, &profile.identity);
        self.engine = Some(start(store, &profile, transport, self.config.clone()));
    }

    /// Wait for the first event of `kind` whose data satisfies `pred`.
    async fn wait_event(
        &self,
        kind: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> api::Event {
        support::wait_event(self.e(), kind, pred, WAIT).await
    }

    async fn count_events(&self, kind: &str) -> usize {
        self.e()
            .events_since(0, 100_000)
            .await
            .expect("events")
            .iter()
            .filter(|e| e.kind() == kind)
            .count()
    }

    async fn wait_delivered(&self, id: i64) {
        self.wait_event(api::event::MESSAGE_STATUS, |d| {
            d["id"] == id && d["status"] == "delivered"
        })
        .await;
    }
}

async fn pair(alice: &Node, bob: &Node) {
    alice
        .e()
        .add_contact(api::ContactAdd {
            address: bob.address(),
            nickname: "Bob".into(),
            offer_nickname: "Alice".into(),
            greeting: "hi Bob, it's Alice".into(),
            kind: api::PeerKind::Human,
        })
        .await
        .expect("request sent");
    let a = alice.address();
    bob.wait_event(api::event::CONTACT_REQUEST_RECEIVED, |d| {
        d["address"] == a.as_str()
    })
    .await;
    bob.e()
        .respond(api::ContactRespond {
            address: alice.address(),
            response: api::Response::Accept,
            nickname: None,
        })
        .await
        .expect("accepted");
    let b = bob.address();
    alice
        .wait_event(api::event::CONTACT_STATE, |d| {
            d["address"] == b.as_str() && d["state"] == "accepted" && d["by"] == "them"
        })
        .await;
}

/// `from`, a stranger to `to`, asks to become a contact; returns once `to` has the request.
async fn ask(from: &Node, to: &Node) {
    from.e()
        .add_contact(api::ContactAdd {
            address: to.address(),
            nickname: String::new(),
            offer_nickname: "stranger".into(),
            greeting: "hello".into(),
            kind: api::PeerKind::Human,
        })
        .await
        .expect("request sent");
    let a = from.address();
    to.wait_event(api::event::CONTACT_REQUEST_RECEIVED, |d| {
        d["address"] == a.as_str()
    })
    .await;
}

async fn send(from: &Node, to: &Node, body: &str) -> api::Message {
    send_to(from, &to.address(), body).await
}

async fn send_to(from: &Node, to: &str, body: &str) -> api::Message {
    from.e()
        .send_message(api::MessageSend {
            to: to.to_owned(),
            body: body.into(),
            reply_to: None,
            client_token: None,
        })
        .await
        .expect("queued")
}

async fn bodies(node: &Node, with: &Node) -> Vec<(api::Direction, String)> {
    let page = node
        .e()
        .history(api::MessageList {
            with: with.address(),
            before: None,
            limit: Some(500),
        })
        .await
        .expect("history");
    page.messages
        .into_iter()
        .rev()
        .map(|m| (m.direction, m.body))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn two_people_pair_and_chat_both_ways() {
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let alice = Node::create(&net, dir.path(), "alice", config()).await;
    let bob = Node::create(&net, dir.path(), "bob", config()).await;
    pair(&alice, &bob).await;

    // Bob saw who asked, verified, with what Alice offered.
    let request = bob
        .wait_event(api::event::CONTACT_REQUEST_RECEIVED, |_| true)
        .await;
    assert_eq!(request.data.to_value()["address"], alice.address().as_str());
    assert_eq!(request.data.to_value()["nickname"], "Alice");
    assert_eq!(request.data.to_value()["greeting"], "hi Bob, it's Alice");
    assert_eq!(request.data.to_value()["kind"], "human");

    let m1 = send(&alice, &bob, "hello Bob").await;
    assert_eq!(m1.status, api::MessageStatus::Queued);
    alice.wait_delivered(m1.id).await;
    let m2 = send(&bob, &alice, "hello Alice").await;
    bob.wait_delivered(m2.id).await;

    let alice_view = bodies(&alice, &bob).await;
    let bob_view = bodies(&bob, &alice).await;
    assert_eq!(
        alice_view,
        vec![
            (api::Direction::Out, "hello Bob".into()),
            (api::Direction::In, "hello Alice".into())
        ]
    );
    assert_eq!(
        bob_view,
        vec![
            (api::Direction::In, "hello Bob".into()),
            (api::Direction::Out, "hello Alice".into())
        ]
    );
    let contact = alice.e().contact(&bob.address()).await.expect("contact");
    assert_eq!(contact.state, api::ContactState::Accepted);
    assert!(contact.online);
}

#[tokio::test(start_paused = true)]
async fn messages_to_an_offline_contact_arrive_once_in_order_after_it_restarts() {
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let alice = Node::create(&net, dir.path(), "alice", config()).await;
    let mut bob = Node::create(&net, dir.path(), "bob", config()).await;
    pair(&alice, &bob).await;

    let bob_address = bob.address();
    bob.stop().await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(send_to(&alice, &bob_address, &format!("message {i}")).await);
    }
    // Bob is away: nothing can be delivered.
    advance(Duration::from_millis(500)).await;
    for m in &sent {
        let now = alice.e().message(m.id).await.expect("message");
        assert_ne!(now.status, api::MessageStatus::Delivered);
    }

    bob.restart(&net).await;
    for m in &sent {
        alice.wait_delivered(m.id).await;
    }
    let received: Vec<String> = bodies(&bob, &alice)
        .await
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let expected: Vec<String> = (0..5).map(|i| format!("message {i}")).collect();
    assert_eq!(received, expected, "each message exactly once, in order");
}

#[tokio::test(start_paused = true)]
async fn a_stranger_gets_one_request_through_and_is_refused_once_blocked() {
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let alice = Node::create(&net, dir.path(), "alice", config()).await;
    let carol = Node::create(&net, dir.path(), "carol", config()).await;

    // Carol cannot message Alice: she is not a contact.
    let err = carol
        .e()
        .send_message(api::MessageSend {
            to: alice.address(),
            body: "let me in".into(),
            reply_to: None,
            client_token: None,
        })
        .await
        .expect_err("not a contact");
    assert!(matches!(err, EngineError::NoSuchContact));

    carol
        .e()
        .add_contact(api::ContactAdd {
            address: alice.address(),
            nickname: "Alice".into(),
            offer_nickname: "Carol".into(),
            greeting: "please".into(),
            kind: api::PeerKind::Bot,
        })
        .await
        .expect("request queued");
    let c = carol.address();
    let request = alice
        .wait_event(api::event::CONTACT_REQUEST_RECEIVED, |d| {
            d["address"] == c.as_str()
        })
        .await;
    assert_eq!(request.data.to_value()["kind"], "bot");
    carol
        .wait_event(api::event::CONTACT_REQUEST_DELIVERED, |_| true)
        .await;
    // Asking again changes nothing at Alice: one request, one event.
    carol
        .e()
        .add_contact(api::ContactAdd {
            address: alice.address(),
            nickname: "Alice".into(),
            offer_nickname: "Carol".into(),
            greeting: "please".into(),
            kind: api::PeerKind::Bot,
        })
        .await
        .expect("idempotent");
    advance(Duration::from_millis(500)).await;
    assert_eq!(
        alice
            .count_events(api::event::CONTACT_REQUEST_RECEIVED)
            .await,
        1
    );

    alice
        .e()
        .respond(api::ContactRespond {
            address: carol.address(),
            response: api::Response::Block,
            nickname: None,
        })
        .await
        .expect("blocked");
    // Carol tries again (a fresh request after her contact was reset to rejected by a new add).
    let carol_contact = carol.e().contact(&alice.address()).await.expect("contact");
    assert_eq!(carol_contact.state, api::ContactState::Requesting);
    advance(Duration::from_secs(2)).await;
    let alice_contact = alice.e().contact(&carol.address()).await.expect("contact");
    assert_eq!(alice_contact.state, api::ContactState::Blocked);
    assert!(!alice_contact.online);
    assert_eq!(
        alice
            .count_events(api::event::CONTACT_REQUEST_RECEIVED)
            .await,
        1
    );
}

#[tokio::test(start_paused = true)]
async fn blocking_closes_an_open_session_at_once() {
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let alice = Node::create(&net, dir.path(), "alice", config()).await;
    let bob = Node::create(&net, dir.path(), "bob", config()).await;
    pair(&alice, &bob).await;
    let m = send(&bob, &alice, "before").await;
    bob.wait_delivered(m.id).await;

    alice
        .e()
        .respond(api::ContactRespond {
            address: bob.address(),
            response: api::Response::Block,
            nickname: None,
        })
        .await
        .expect("blocked");
    let b = bob.address();
    alice
        .wait_event(api::event::CONTACT_PRESENCE, |d| {
            d["address"] == b.as_str() && d["online"] == false
        })
        .await;
    let late = send(&bob, &alice, "after the block").await;
    advance(Duration::from_secs(2)).await;
    let late = bob.e().message(late.id).await.expect("message");
    assert_ne!(late.status, api::MessageStatus::Delivered);
    let alice_view = bodies(&alice, &bob).await;
    assert_eq!(alice_view, vec![(api::Direction::In, "before".into())]);
}

#[tokio::test(start_paused = true)]
async fn both_adding_each_other_at_once_ends_accepted_with_one_session() {
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let alice = Node::create(&net, dir.path(), "alice", config()).await;
    let bob = Node::create(&net, dir.path(), "bob", config()).await;
    let add = |to: &Node| api::ContactAdd {
        address: to.address(),
        nickname: String::new(),
        offer_nickname: String::new(),
        greeting: String::new(),
        kind: api::PeerKind::Human,
    };
    let (a, b) = tokio::join!(
        alice.e().add_contact(add(&bob)),
        bob.e().add_contact(add(&alice))
    );
    a.expect("alice asks");
    b.expect("bob asks");
    let (ba, ab) = (bob.address(), alice.address());
    alice
        .wait_event(api::event::CONTACT_STATE, |d| {
            d["address"] == ba.as_str() && d["state"] == "accepted"
        })
        .await;
    bob.wait_event(api::event::CONTACT_STATE, |d| {
        d["address"] == ab.as_str() && d["state"] == "accepted"
    })
    .await;
    // Both dial at once to deliver messages: one session survives and carries both.
    let (m1, m2) = tokio::join!(
        send(&alice, &bob, "from alice"),
        send(&bob, &alice, "from bob")
    );
    alice.wait_delivered(m1.id).await;
    bob.wait_delivered(m2.id).await;
    advance(Duration::from_secs(1)).await;
    assert!(alice.e().contact(&bob.address()).await.expect("c").online);
    assert!(bob.e().contact(&alice.address()).await.expect("c").online);
    assert_eq!(bodies(&alice, &bob).await.len(), 2);
    assert_eq!(bodies(&bob, &alice).await.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_strangers_is_rate_limited() {
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let alice = Node::create(&net, dir.path(), "alice", config()).await;
    let mut strangers = Vec::new();
    for i in 0..8 {
        let s = Node::create(&net, dir.path(), &format!("s{i}"), config()).await;
        s.e()
            .add_contact(api::ContactAdd {
                address: alice.address(),
                nickname: String::new(),
                offer_nickname: format!("stranger {i}"),
                greeting: "spam".into(),
                kind: api::PeerKind::Bot,
            })
            .await
            .expect("queued");
        strangers.push(s);
    }
    advance(Duration::from_secs(3)).await;
    let stored = alice
        .count_events(api::event::CONTACT_REQUEST_RECEIVED)
        .await;
    // The test config allows a burst of 4 (plus a token refilled every 6 s at most).
    assert!((4..=5).contains(&stored), "stored {stored} requests");
}

#[tokio::test(start_paused = true)]
async fn bad_input_gets_clear_errors_and_retries_are_idempotent() {
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let alice = Node::create(&net, dir.path(), "alice", config()).await;
    let bob = Node::create(&net, dir.path(), "bob", config()).await;
    let bad = alice
        .e()
        .add_contact(api::ContactAdd {
            address: "not-an-address".into(),
            nickname: String::new(),
            offer_nickname: String::new(),
            greeting: String::new(),
            kind: api::PeerKind::Human,
        })
        .await
        .expect_err("invalid");
    assert_eq!(bad.kind(), api::ErrorKind::InvalidAddress);
    let own = alice
        .e()
        .add_contact(api::ContactAdd {
            address: alice.address(),
            nickname: String::new(),
            offer_nickname: String::new(),
            greeting: String::new(),
            kind: api::PeerKind::Human,
        })
        .await
        .expect_err("own address");
    assert_eq!(own.kind(), api::ErrorKind::InvalidParams);

    pair(&alice, &bob).await;
    let big = alice
        .e()
        .send_message(api::MessageSend {
            to: bob.address(),
            body: "x".repeat(api::MAX_BODY_BYTES + 1),
            reply_to: None,
            client_token: None,
        })
        .await
        .expect_err("too large");
    assert_eq!(big.kind(), api::ErrorKind::TooLarge);

    let with_token = |body: &str| api::MessageSend {
        to: bob.address(),
        body: body.into(),
        reply_to: None,
        client_token: Some("retry-me".into()),
    };
    let first = alice
        .e()
        .send_message(with_token("once"))
        .await
        .expect("queued");
    let again = alice
        .e()
        .send_message(with_token("once"))
        .await
        .expect("same");
    assert_eq!(first.id, again.id);
    alice.wait_delivered(first.id).await;
    advance(Duration::from_millis(300)).await;
    assert_eq!(bodies(&bob, &alice).await.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_responder_registers_its_session_even_when_the_dialler_goes_quiet() {
    // Regression: accepting a session emits `Established`; the connection used to wait for
    // the peer's next bytes before handling it, so a quiet dialler left the responder without
    // a registered session while the dialler had one — and any delivery the responder then
    // attempted became a duplicate session that lost the tie-break, over and over.
    //
    // Pairing shows it: Bob accepts and dials Alice to deliver the acceptance, then has nothing
    // more to say. Both must see the session at once, without any further traffic.
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let quiet = EngineConfig {
        presence: false,
        ..config()
    };
    let alice = Node::create(&net, dir.path(), "alice", quiet.clone()).await;
    let bob = Node::create(&net, dir.path(), "bob", quiet).await;
    pair(&alice, &bob).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let bob_at_alice = alice.e().contact(&bob.address()).await.expect("contact");
        let alice_at_bob = bob.e().contact(&alice.address()).await.expect("contact");
        if bob_at_alice.online && alice_at_bob.online {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a side never registered the session: Alice sees Bob online {}, Bob sees Alice online {}",
            bob_at_alice.online,
            alice_at_bob.online
        );
        advance(Duration::from_millis(50)).await;
    }
}

/// Resident memory of this process, from /proc/self/status.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Queue `count` messages of `size` bytes to an offline Bob, bring him back, and wait until
/// all are delivered: in order, once each. Prints the drain rate.
async fn drain_backlog(alice_config: EngineConfig, bob_config: EngineConfig, who: &str) {
    // Ten times the session's 4 MiB window of unsent output.
    const COUNT: usize = 1_400;
    const SIZE: usize = 32_000;
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let alice = Node::create(&net, dir.path(), "alice", alice_config).await;
    let mut bob = Node::create(&net, dir.path(), "bob", bob_config).await;
    pair(&alice, &bob).await;
    let bob_address = bob.address();
    bob.stop().await;
    let rss_before = rss_mib();
    let mut last = None;
    for i in 0..COUNT {
        let mut body = format!("{i:06}:");
        body.push_str(&"m".repeat(SIZE - body.len()));
        last = Some(send_to(&alice, &bob_address, &body).await);
    }
    let last = last.expect("sent");
    let started = tokio::time::Instant::now();
    let real = std::time::Instant::now();
    bob.restart(&net).await;
    let deadline = started + Duration::from_secs(300);
    loop {
        let m = alice.e().message(last.id).await.expect("message");
        if m.status == api::MessageStatus::Delivered {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{who}: the backlog stalled; Bob has {} messages",
            count_received(&bob, &alice).await
        );
        advance(Duration::from_millis(200)).await;
    }
    let took = real.elapsed();
    let rate = (COUNT * SIZE) as f64 / took.as_secs_f64();
    println!(
        "{who}: {COUNT} × {SIZE} bytes drained in {:.1} s of real time ({:.2} MB/s; {:.1} s of \
         virtual time); RSS {rss_before:.0} → {:.0} MiB",
        took.as_secs_f64(),
        rate / 1e6,
        started.elapsed().as_secs_f64(),
        rss_mib()
    );
    // Every message once, in order.
    let mut received = Vec::new();
    let mut before = None;
    loop {
        let page = bob
            .e()
            .history(api::MessageList {
                with: alice.address(),
                before,
                limit: Some(500),
            })
            .await
            .expect("history");
        received.extend(page.messages.iter().map(|m| m.body[..6].to_owned()));
        match page.next_before {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    received.reverse();
    let expected: Vec<String> = (0..COUNT).map(|i| format!("{i:06}")).collect();
    assert!(
        received == expected,
        "{who}: not every message once, in order"
    );
}

async fn count_received(node: &Node, from: &Node) -> usize {
    node.count_events(api::event::MESSAGE_RECEIVED).await.min(
        node.e()
            .history(api::MessageList {
                with: from.address(),
                before: None,
                limit: Some(500),
            })
            .await
            .map_or(0, |p| p.messages.len()),
    )
}

#[tokio::test(start_paused = true)]
async fn a_backlog_ten_times_the_window_drains_when_the_recipient_dials() {
    // Alice gives up dialling for an hour after her first failure: Bob's presence dial at his
    // restart opens the session, and Alice delivers as the responder.
    let alice = EngineConfig {
        retry_initial: Duration::from_secs(3600),
        retry_max: Duration::from_secs(3600),
        presence: false,
        ..config()
    };
    drain_backlog(alice, config(), "Bob dials").await;
}

#[tokio::test(start_paused = true)]
async fn a_backlog_ten_times_the_window_drains_when_the_sender_dials() {
    // Bob does not dial on his own: Alice's retry opens the session.
    let bob = EngineConfig {
        presence: false,
        ..config()
    };
    drain_backlog(config(), bob, "Alice dials").await;
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_sends_to_an_offline_contact_does_not_push_its_retries_out() {
    // Retries start at 100 ms and could grow to a minute; neither side dials for presence.
    let quiet = EngineConfig {
        retry_max: Duration::from_secs(60),
        presence: false,
        ..config()
    };
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let alice = Node::create(&net, dir.path(), "alice", quiet.clone()).await;
    let mut bob = Node::create(&net, dir.path(), "bob", quiet).await;
    pair(&alice, &bob).await;
    let bob_address = bob.address();
    bob.stop().await;
    let mut sent = Vec::new();
    for i in 0..40 {
        sent.push(send_to(&alice, &bob_address, &format!("burst {i}")).await);
    }
    // A short outage: after one second Bob is back. A schedule that grew once per failed
    // attempt retries within about a second more; one pushed out by the burst would wait
    // for its one-minute cap.
    advance(Duration::from_secs(1)).await;
    bob.restart(&net).await;
    let back = tokio::time::Instant::now();
    alice.wait_delivered(sent[39].id).await;
    println!(
        "delivered {:.2} s after the contact came back",
        back.elapsed().as_secs_f64()
    );
    assert!(back.elapsed() < Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_dial_that_finds_tor_not_bootstrapped_waits_for_tor_not_for_a_backoff() {
    // Alice's scheduled retries are an hour apart: only "Tor is ready now" can bring her
    // request out within the test. A dial that found Tor not bootstrapped must not count as
    // a failed attempt on Bob.
    let patient = EngineConfig {
        retry_initial: Duration::from_secs(3600),
        retry_max: Duration::from_secs(3600),
        presence: false,
        ..config()
    };
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let bob = Node::create(&net, dir.path(), "bob", config()).await;
    let db = dir.path().join("alice.db");
    let key = *DbKey::generate().expect("key").as_bytes();
    let mut store = Store::create(&db, &DbKey::from_bytes(key)).expect("store");
    let profile = create_profile(&mut store, &patient).expect("profile");
    let transport = MemoryTransport::new(&net, &profile.identity);
    let tor = transport.bootstrap_switch();
    tor.set(false);
    let alice = Node {
        engine: Some(start(store, &profile, transport, patient.clone())),
        profile,
        db,
        key,
        config: patient,
    };
    assert!(!alice.e().tor_status().ready);
    alice
        .e()
        .add_contact(api::ContactAdd {
            address: bob.address(),
            nickname: "Bob".into(),
            offer_nickname: "Alice".into(),
            greeting: "sent while Tor was down".into(),
            kind: api::PeerKind::Human,
        })
        .await
        .expect("request queued");
    // Wait until the request's dial has met the unready Tor (it fails before any byte
    // leaves), then let Tor finish.
    let deadline = tokio::time::Instant::now() + WAIT;
    while tor.dials_while_down() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request was never dialled"
        );
        advance(Duration::from_millis(10)).await;
    }
    tor.set(true);
    let back = tokio::time::Instant::now();
    alice
        .wait_event(api::event::CONTACT_REQUEST_DELIVERED, |_| true)
        .await;
    println!(
        "the request arrived {:.2} s after Tor was ready",
        back.elapsed().as_secs_f64()
    );
}

#[tokio::test(start_paused = true)]
async fn asking_someone_we_declined_while_they_were_away_ends_accepted() {
    // Bob asks Alice and goes offline; Alice declines, changes her mind and asks him. Her
    // refusal, still queued, must not reach Bob before her request (he would take it as
    // final and refuse the request).
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let alice = Node::create(&net, dir.path(), "alice", config()).await;
    let mut bob = Node::create(&net, dir.path(), "bob", config()).await;
    ask(&bob, &alice).await;
    let bob_address = bob.address();
    bob.stop().await;
    alice
        .e()
        .respond(api::ContactRespond {
            address: bob_address.clone(),
            response: api::Response::Reject,
            nickname: None,
        })
        .await
        .expect("declined");
    alice
        .e()
        .add_contact(api::ContactAdd {
            address: bob_address.clone(),
            nickname: "Bob".into(),
            offer_nickname: "Alice".into(),
            greeting: "sorry, yes".into(),
            kind: api::PeerKind::Human,
        })
        .await
        .expect("asked");
    bob.restart(&net).await;
    let b = bob_address;
    alice
        .wait_event(api::event::CONTACT_STATE, |d| {
            d["address"] == b.as_str() && d["state"] == "accepted" && d["by"] == "them"
        })
        .await;
    // And Bob agrees: nothing told him no.
    let a = alice.address();
    bob.wait_event(api::event::CONTACT_STATE, |d| {
        d["address"] == a.as_str() && d["state"] == "accepted" && d["by"] == "them"
    })
    .await;
    assert_eq!(
        bob.e().contact(&a).await.expect("contact").state,
        api::ContactState::Accepted
    );
    assert_eq!(
        alice.e().contact(&b).await.expect("contact").state,
        api::ContactState::Accepted
    );
    let told_no = bob
        .e()
        .events_since(0, 1000)
        .await
        .expect("events")
        .into_iter()
        .filter(|e| e.kind() == api::event::CONTACT_STATE)
        .any(|e| e.data.to_value()["state"] == "rejected");
    assert!(!told_no, "Bob was told no");
}

#[tokio::test(start_paused = true)]
async fn a_running_engine_renews_its_device_key_before_the_certificate_expires() {
    // Alice's certificates live 4 s and are renewed 2 s before expiry. Carol meets her only
    // after her first certificate has expired: Carol's handshake checks the certificate Alice
    // presents, so Alice must be running on a renewed key, or Carol refuses her.
    let short = EngineConfig {
        certificate_lifetime: Duration::from_secs(4),
        certificate_renew_before: Duration::from_secs(2),
        ..config()
    };
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let alice = Node::create(&net, dir.path(), "alice", short).await;
    let carol = Node::create(&net, dir.path(), "carol", config()).await;
    // Past the first certificate's expiry, by the engines' wall clock too.
    advance(Duration::from_secs(6)).await;
    pair(&carol, &alice).await;
    let m = send(&alice, &carol, "still trusted").await;
    alice.wait_delivered(m.id).await;
}

/// Strangers that open connections and stall in the middle of a HELLO hold a bounded number of
/// places: beyond [`MAX_PREAUTH`], the oldest is dropped, and a contact still gets through.
#[tokio::test(start_paused = true)]
async fn stalled_handshakes_are_bounded_and_a_contact_still_gets_through() {
    use carom_engine::MAX_PREAUTH;
    use carom_tor::Transport as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let mut alice = Node::create(&net, dir.path(), "alice", config()).await;
    // Bob never dials: the session below must be one Bob accepts during the flood.
    let quiet = EngineConfig {
        presence: false,
        ..config()
    };
    let bob = Node::create(&net, dir.path(), "bob", quiet).await;
    pair(&alice, &bob).await;
    alice.stop().await;

    let flooder = MemoryTransport::new(&net, &carom_proto::IdentityKey::from_seed(&[9; 32]));
    let target: carom_proto::OnionAddress = bob.address().parse().expect("address");
    let extra = 40;
    let accepted_before = bob.e().stats().connections;
    let mut stalled = Vec::new();
    for _ in 0..MAX_PREAUTH + extra {
        let mut stream = flooder.dial(&target).await.expect("dial");
        // The start of a HELLO that announces 16 KiB and never sends them.
        stream
            .write_all(b"\x40\x00\x01CAROM\x01")
            .await
            .expect("write");
        stalled.push(stream);
    }
    // Every stream has been taken up by Bob (in whatever order his tasks ran) …
    let deadline = tokio::time::Instant::now() + WAIT;
    while bob.e().stats().connections < accepted_before + (MAX_PREAUTH + extra) as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every stream was accepted"
        );
        advance(Duration::from_millis(20)).await;
    }
    // … and he holds no more than the bound, because exactly the surplus was dropped: that
    // many streams end (whichever were oldest when each newcomer came), the rest stay open.
    assert_eq!(
        bob.e().stats().handshakes_in_progress,
        MAX_PREAUTH as u64,
        "handshakes held"
    );
    let mut open: Vec<bool> = vec![true; stalled.len()];
    let deadline = tokio::time::Instant::now() + WAIT;
    while open.iter().filter(|o| !**o).count() < extra {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} stalled connections were closed",
            open.iter().filter(|o| !**o).count()
        );
        for (stream, open) in stalled.iter_mut().zip(open.iter_mut()) {
            if *open {
                let mut byte = [0u8; 1];
                let read =
                    tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await;
                if let Ok(result) = read {
                    assert!(matches!(result, Ok(0) | Err(_)), "{result:?}");
                    *open = false;
                }
            }
        }
    }
    assert_eq!(
        open.iter().filter(|o| !**o).count(),
        extra,
        "more were closed"
    );
    // A contact's new session completes among the stalled ones and delivers.
    alice.restart(&net).await;
    let m = send(&alice, &bob, "through the flood").await;
    alice.wait_delivered(m.id).await;
    assert!(bob.e().stats().handshakes_in_progress <= MAX_PREAUTH as u64);
    drop(stalled);
}

/// Someone who recorded Alice's IK message 1 replays it to Bob. Bob answers (he cannot tell a
/// replay from a redial), but the replayer cannot read the answer; the session Alice really
/// has with Bob must stay up, and carry on delivering.
#[tokio::test(start_paused = true)]
async fn a_replayed_ik_first_message_does_not_displace_the_real_session() {
    use carom_tor::Transport as _;
    use tokio::io::AsyncWriteExt as _;

    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    // No presence dials: pairing then ends with exactly one session (Bob's dial to deliver
    // his acceptance), which carries everything after. With presence on, both sides may dial
    // at once during pairing, and the duplicate they resolve can finish at any later moment.
    let quiet = EngineConfig {
        presence: false,
        ..config()
    };
    let alice = Node::create(&net, dir.path(), "alice", quiet.clone()).await;
    let bob = Node::create(&net, dir.path(), "bob", quiet).await;
    pair(&alice, &bob).await;
    let m = send(&alice, &bob, "before").await;
    alice.wait_delivered(m.id).await;
    let sessions_before = alice.e().stats().sessions;
    let seq_before = alice.e().event_bounds().await.expect("event bounds").0;

    // Alice's IK message 1 to Bob, as an eavesdropper would have recorded it.
    let p = &alice.profile;
    let session_config = std::sync::Arc::new(carom_proto::SessionConfig::new(
        p.identity.clone(),
        p.device.clone(),
        p.certificate,
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut recorded = carom_proto::Session::initiator(
        session_config,
        bob.profile.identity.address(),
        Some(bob.profile.device.public()),
        now,
        tokio::time::Instant::now().into_std(),
        &mut rand_core::OsRng,
    );
    let message_1 = recorded.poll_transmit().expect("IK message 1");
    let replayer = MemoryTransport::new(&net, &carom_proto::IdentityKey::from_seed(&[7; 32]));
    let bob_address = bob.profile.identity.address();
    let mut replays = Vec::new();
    for _ in 0..3 {
        let mut stream = replayer.dial(&bob_address).await.expect("dial");
        stream.write_all(&message_1).await.expect("replay");
        replays.push(stream);
    }
    advance(Duration::from_secs(2)).await;

    // Alice's session was never closed under her, and still delivers.
    let b = bob.address();
    assert_eq!(
        alice
            .e()
            .events_since(seq_before, 100_000)
            .await
            .expect("events")
            .iter()
            .filter(|e| e.kind() == api::event::CONTACT_PRESENCE
                && e.data.to_value()["address"] == b.as_str()
                && e.data.to_value()["online"] == false)
            .count(),
        0,
        "Alice saw Bob go offline: her session was knocked off"
    );
    let m = send(&alice, &bob, "after").await;
    alice.wait_delivered(m.id).await;
    assert_eq!(
        alice.e().stats().sessions,
        sessions_before,
        "Alice had to redial"
    );
    drop(replays);
}

/// When the list of unanswered requests is full, the oldest makes room: the newest are always
/// there to review (refusing new ones let a flood lock every later request out). Clearing
/// forgets them all at once.
#[tokio::test(start_paused = true)]
async fn a_full_request_list_drops_the_oldest_and_can_be_cleared() {
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let bob_config = EngineConfig {
        max_pending_requests: 3,
        stranger_burst: 10,
        ..config()
    };
    let bob = Node::create(&net, dir.path(), "bob", bob_config).await;
    let mut strangers = Vec::new();
    for n in 0..5 {
        let stranger = Node::create(&net, dir.path(), &format!("s{n}"), config()).await;
        ask(&stranger, &bob).await;
        strangers.push(stranger);
    }
    let pending: Vec<String> = bob
        .e()
        .contacts()
        .await
        .expect("contacts")
        .into_iter()
        .filter(|c| c.state == api::ContactState::Pending)
        .map(|c| c.address)
        .collect();
    let newest: Vec<String> = strangers[2..].iter().map(Node::address).collect();
    assert_eq!(pending.len(), 3, "{pending:?}");
    for address in &newest {
        assert!(
            pending.contains(address),
            "{address} missing from {pending:?}"
        );
    }
    for dropped in &strangers[..2] {
        let a = dropped.address();
        bob.wait_event(api::event::CONTACT_STATE, |d| {
            d["address"] == a.as_str()
                && d["state"] == "removed"
                && d["reason"] == "too_many_requests"
        })
        .await;
    }

    let cleared = bob.e().clear_requests().await.expect("cleared");
    assert_eq!(cleared.cleared, 3);
    assert!(bob.e().contacts().await.expect("contacts").is_empty());
}

/// A rejected stranger is remembered (asking again gets a rejection) for a while, then
/// forgotten: rejected rows cannot pile up.
#[tokio::test(start_paused = true)]
async fn rejected_requests_are_forgotten_after_the_rejection_memory() {
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let mut bob = Node::create(&net, dir.path(), "bob", config()).await;
    let stranger = Node::create(&net, dir.path(), "stranger", config()).await;
    ask(&stranger, &bob).await;
    let s = stranger.address();
    bob.e()
        .respond(api::ContactRespond {
            address: s.clone(),
            response: api::Response::Reject,
            nickname: None,
        })
        .await
        .expect("rejected");
    // Remembered across a restart with the default memory …
    bob.restart(&net).await;
    let c = bob.e().contact(&s).await.expect("still known");
    assert_eq!(c.state, api::ContactState::Rejected);
    // … and forgotten by the housekeeping at start once the memory is shorter than its age.
    bob.config.rejection_memory = Duration::ZERO;
    advance(Duration::from_millis(5)).await;
    bob.restart(&net).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while bob.e().contact(&s).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rejection was never forgotten"
        );
        advance(Duration::from_millis(50)).await;
    }
}

/// A contact may make us store only so much a day. Beyond that their messages are refused
/// with a negative acknowledgement, and fail at their end with the reason: the sender stops
/// retrying, and its user sees why.
#[tokio::test(start_paused = true)]
async fn messages_over_a_contacts_quota_are_refused_and_fail_at_the_sender() {
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let alice = Node::create(&net, dir.path(), "alice", config()).await;
    let stingy = EngineConfig {
        // Four messages of up to 1 KiB a day.
        incoming_bytes_per_day: 4 * 1024,
        ..config()
    };
    let bob = Node::create(&net, dir.path(), "bob", stingy).await;
    pair(&alice, &bob).await;
    let mut sent = Vec::new();
    for n in 0..6 {
        sent.push(send(&alice, &bob, &format!("message {n}")).await);
    }
    for m in &sent[..4] {
        alice.wait_delivered(m.id).await;
    }
    for m in &sent[4..] {
        let event = alice
            .wait_event(api::event::MESSAGE_STATUS, |d| {
                d["id"] == m.id && d["status"] == "failed"
            })
            .await;
        assert_eq!(
            event.data.to_value()["failure"],
            "rejected: over_quota",
            "{event:?}"
        );
        let failed = alice.e().message(m.id).await.expect("message");
        assert_eq!(failed.status, api::MessageStatus::Failed);
    }
    let received: Vec<String> = bodies(&bob, &alice)
        .await
        .into_iter()
        .map(|(_, body)| body)
        .collect();
    assert_eq!(
        received,
        ["message 0", "message 1", "message 2", "message 3"],
        "exactly the admitted ones were stored, in order"
    );
}
