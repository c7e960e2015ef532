//! Engines in virtual time, as the test files drive them: a node (an engine with its store on
//! disk and an in-memory transport), pairing, and the common waits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use carom_api as api;
use carom_engine::{Engine, EngineConfig, create_profile, load_profile};
use carom_store::{DbKey, Store};
use carom_tor::{MemoryNetwork, MemoryTransport};

/// One-way latency of the simulated network: about what a Tor circuit to an onion service
/// takes.
pub(crate) const LATENCY: Duration = Duration::from_millis(300);
/// How long a test waits (in virtual time) for what it expects.
pub(crate) const WAIT: Duration = Duration::from_secs(3600);

pub(crate) fn config() -> EngineConfig {
    EngineConfig {
        retry_initial: Duration::from_secs(5),
        retry_max: Duration::from_secs(60),
        presence_initial: Duration::from_secs(30),
        presence_max: Duration::from_secs(300),
        ..EngineConfig::default()
    }
}

/// A runtime whose clock is paused: every test runs on one of these.
pub(crate) fn virtual_time() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

pub(crate) struct Node {
    pub(crate) engine: Option<Engine>,
    /// Its keys, for a test that speaks the protocol as this node by hand.
    pub(crate) profile: carom_engine::Profile,
    pub(crate) db: PathBuf,
    pub(crate) key: [u8; 32],
    pub(crate) address: String,
}

impl Node {
    pub(crate) fn create(net: &MemoryNetwork, dir: &Path, name: &str) -> Node {
        let db = dir.join(format!("{name}.db"));
        let key = *DbKey::generate().expect("key").as_bytes();
        let mut store = Store::create(&db, &DbKey::from_bytes(key)).expect("store");
        let profile = create_profile(&mut store, &config()).expect("profile");
        let transport = MemoryTransport::new(net, &profile.identity);
        let engine =
            Engine::start_in_virtual_time(store, &profile, transport, config()).expect("engine");
        Node {
            address: engine.address().to_string(),
            engine: Some(engine),
            profile,
            db,
            key,
        }
    }

    pub(crate) fn e(&self) -> &Engine {
        self.engine.as_ref().expect("running")
    }

    pub(crate) fn onion(&self) -> carom_proto::OnionAddress {
        carom_proto::OnionAddress::parse(&self.address).expect("address")
    }

    /// The outgoing messages to `to` that are not delivered yet.
    pub(crate) async fn undelivered(&self, to: &Node) -> usize {
        self.conversation(to)
            .await
            .into_iter()
            .filter(|m| m.direction == api::Direction::Out)
            .filter(|m| m.status != api::MessageStatus::Delivered)
            .count()
    }

    pub(crate) async fn stop(&mut self) {
        if let Some(engine) = self.engine.take() {
            engine.shutdown().await.expect("clean shutdown");
        }
    }

    /// Its database, opened again (the engine must be stopped).
    pub(crate) fn open_store(&self) -> Store {
        Store::open(&self.db, &DbKey::from_bytes(self.key)).expect("reopen")
    }

    pub(crate) async fn start(&mut self, net: &MemoryNetwork) {
        assert!(self.engine.is_none(), "already running");
        let mut store = self.open_store();
        let profile = load_profile(&mut store, &config()).expect("profile");
        let transport = MemoryTransport::new(net, &profile.identity);
        self.engine = Some(
            Engine::start_in_virtual_time(store, &profile, transport, config()).expect("engine"),
        );
        self.profile = profile;
    }

    pub(crate) async fn restart(&mut self, net: &MemoryNetwork) {
        self.stop().await;
        self.start(net).await;
    }

    /// Wait for the first event of `kind` whose data satisfies `pred`.
    pub(crate) async fn wait_event(
        &self,
        kind: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> api::Event {
        super::wait_event(self.e(), kind, pred, WAIT).await
    }

    /// Wait until every message this node sent to `to` is delivered.
    pub(crate) async fn wait_all_delivered(&self, to: &Node) {
        let engine = self.e();
        let mut notify = engine.event_notifier();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let outstanding = self.undelivered(to).await;
            if outstanding == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notify.changed())
                .await
                .is_err()
            {
                panic!("{outstanding} messages still undelivered after {WAIT:?} of virtual time");
            }
        }
    }

    /// The conversation with `with`, oldest first.
    pub(crate) async fn conversation(&self, with: &Node) -> Vec<api::Message> {
        let mut page = self
            .e()
            .history(api::MessageList {
                with: with.address.clone(),
                before: None,
                limit: Some(500),
            })
            .await
            .expect("history")
            .messages;
        page.reverse();
        page
    }

    /// The bodies received from `from`, in the order they are shown.
    pub(crate) async fn received(&self, from: &Node) -> Vec<String> {
        self.conversation(from)
            .await
            .into_iter()
            .filter(|m| m.direction == api::Direction::In)
            .map(|m| m.body)
            .collect()
    }

    pub(crate) async fn send(&self, to: &Node, body: &str) -> api::Message {
        self.e()
            .send_message(api::MessageSend {
                to: to.address.clone(),
                body: body.into(),
                reply_to: None,
                client_token: None,
            })
            .await
            .expect("queued")
    }

    pub(crate) async fn add(&self, other: &Node) {
        self.e()
            .add_contact(api::ContactAdd {
                address: other.address.clone(),
                nickname: String::new(),
                offer_nickname: "me".into(),
                greeting: "hello".into(),
                kind: api::PeerKind::Human,
            })
            .await
            .expect("request queued");
    }

    /// The presence changes logged for `other`, oldest first (`true`: online).
    pub(crate) async fn presence(&self, other: &Node) -> Vec<bool> {
        self.e()
            .events_since(0, 100_000)
            .await
            .expect("events")
            .into_iter()
            .filter(|e| e.kind() == api::event::CONTACT_PRESENCE)
            .map(|e| e.data.to_value())
            .filter(|d| d["address"] == other.address.as_str())
            .map(|d| d["online"] == true)
            .collect()
    }
}

pub(crate) async fn pair(alice: &Node, bob: &Node) {
    alice.add(bob).await;
    let a = alice.address.clone();
    bob.wait_event(api::event::CONTACT_REQUEST_RECEIVED, |d| {
        d["address"] == a.as_str()
    })
    .await;
    bob.e()
        .respond(api::ContactRespond {
            address: alice.address.clone(),
            response: api::Response::Accept,
            nickname: None,
        })
        .await
        .expect("accepted");
    let b = bob.address.clone();
    alice
        .wait_event(api::event::CONTACT_STATE, |d| {
            d["address"] == b.as_str() && d["state"] == "accepted" && d["by"] == "them"
        })
        .await;
}

/// Speak the protocol by hand as `by` (a node's keys, its engine left out of it): dial `to`
/// over the in-memory network with a full handshake, send `messages` once the session is up,
/// and return every message and close that came back within `wait` of virtual time.
pub(crate) async fn speak_as(
    net: &MemoryNetwork,
    by: &carom_engine::Profile,
    to: &Node,
    messages: Vec<carom_proto::Message>,
    wait: Duration,
) -> Vec<carom_proto::Event> {
    use carom_tor::Transport as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let config = std::sync::Arc::new(carom_proto::SessionConfig::new(
        by.identity.clone(),
        by.device.clone(),
        by.certificate,
    ));
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let clock = || tokio::time::Instant::now().into_std();
    let mut session = carom_proto::Session::initiator(
        config,
        to.onion(),
        None,
        now_secs,
        clock(),
        &mut rand_core::OsRng,
    );
    // The stream comes from a listener of its own: a transport made with `by`'s identity would
    // take over the node's incoming connections. (Noise authenticates `by`, not the stream.)
    let transport = MemoryTransport::new(net, &carom_proto::IdentityKey::from_seed(&[0xee; 32]));
    let mut stream = transport.dial(&to.onion()).await.expect("dial");
    let deadline = tokio::time::Instant::now() + wait;
    let mut unsent = Some(messages);
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 70 * 1024];
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                carom_proto::Event::Established { .. } => {
                    for m in unsent.take().unwrap_or_default() {
                        session.send(m, clock()).expect("send");
                    }
                }
                e @ (carom_proto::Event::Message(_) | carom_proto::Event::Closed { .. }) => {
                    seen.push(e);
                }
                _ => {}
            }
        }
        while let Some(bytes) = session.poll_transmit() {
            if stream.write_all(&bytes).await.is_err() {
                return seen;
            }
        }
        if session.is_closed() {
            return seen;
        }
        let timer = session.poll_timeout().map_or(deadline, |t| {
            tokio::time::Instant::from_std(t).min(deadline)
        });
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return seen,
                Ok(n) => {
                    let _ = session.handle_input(&buf[..n], clock());
                }
            },
            () = tokio::time::sleep_until(timer) => {
                if tokio::time::Instant::now() >= deadline {
                    return seen;
                }
                session.handle_timeout(clock());
            }
        }
    }
}
