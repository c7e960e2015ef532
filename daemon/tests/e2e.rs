//! Real `caromd` processes on a private Tor network (C tor authorities and relays on 127.0.0.1),
//! driven through their API sockets with the typed client, as a frontend would.
//!
//! The tests run one at a time (each starts two or three daemons, each with its own arti);
//! they share one network per test binary.

#![allow(
    clippy::print_stdout,
    reason = "the tests report the timings they measure"
)]
#![allow(
    clippy::await_holding_lock,
    reason = "the lock serialises whole tests across their separate runtimes; nothing else awaits it"
)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use carom_api as api;
use carom_client::Client;

/// Generous bounds: Tor on a loaded 2-core machine, and descriptor publication, take time.
const STARTUP: Duration = Duration::from_secs(120);
const DELIVERY: Duration = Duration::from_secs(180);

/// One test at a time: a dozen arti clients at once would only make every test slower.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Daemon {
    name: String,
    dir: PathBuf,
    passphrase: Option<String>,
    child: Option<Child>,
}

impl Daemon {
    fn new(root: &Path, name: &str, config: &str, passphrase: Option<&str>) -> Daemon {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("daemon dir");
        std::fs::write(dir.join("caromd.toml"), config).expect("config");
        if let Some(p) = passphrase {
            std::fs::write(dir.join("passphrase"), format!("{p}\n")).expect("passphrase file");
        }
        let mut d = Daemon {
            name: name.into(),
            dir,
            passphrase: passphrase.map(str::to_owned),
            child: None,
        };
        d.start();
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("run").join("carom.sock")
    }

    fn start(&mut self) {
        let net = carom_testnet::shared();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("caromd.log"))
            .expect("log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_caromd"));
        command
            .arg("--config")
            .arg(self.dir.join("caromd.toml"))
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--runtime-dir")
            .arg(self.dir.join("run"))
            .arg("--log")
            // CAROM_E2E_LOG widens the daemons' logs when a failure needs arti's side too.
            .arg(
                std::env::var("CAROM_E2E_LOG")
                    .unwrap_or_else(|_| "info,carom_engine=debug,carom_tor=debug".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // A daemon on the system's tor (its caromd.toml says so) reaches the network through
        // that tor; every other one runs its own arti on the private network.
        let config = std::fs::read_to_string(self.dir.join("caromd.toml")).unwrap_or_default();
        if !config.contains("backend = \"system\"") {
            command.arg("--arti-config").arg(net.arti_config_path());
        }
        if self.passphrase.is_some() && self.dir.join("data").join("profile.key").exists() {
            command
                .arg("--passphrase-file")
                .arg(self.dir.join("passphrase"));
        }
        self.child = Some(command.spawn().expect("caromd starts"));
    }

    /// SIGTERM, and wait for a clean exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).expect("pid"))
                .expect("pid");
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let status = wait_timeout(&mut child, Duration::from_secs(30));
            assert_eq!(
                status,
                Some(true),
                "{} did not exit cleanly on SIGTERM",
                self.name
            );
        }
    }

    /// SIGKILL: no chance to clean up.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn client(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(&self.socket()).await {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{}: cannot connect: {e}\n{}", self.name, self.log_tail()),
            }
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("caromd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Create the profile (or unlock it) and wait until Tor is bootstrapped and the service
    /// left the launching state. Returns the address.
    async fn up(&self) -> String {
        let client = self.client().await;
        let info = client.info().await.expect("info");
        if info.profile == api::ProfileState::None {
            let params = match &self.passphrase {
                Some(p) => api::ProfileCreate {
                    passphrase: Some(p.as_str().into()),
                    no_passphrase: false,
                },
                None => api::ProfileCreate {
                    passphrase: None,
                    no_passphrase: true,
                },
            };
            client
                .create_profile(&params)
                .await
                .expect("profile created");
        }
        let deadline = Instant::now() + STARTUP;
        loop {
            let tor = client.tor_status().await.expect("tor status");
            if tor.ready && !matches!(tor.service.as_str(), "not_started" | "launching") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: Tor not ready after {STARTUP:?}: {tor:?}\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        client.identity().await.expect("identity").address
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            #[allow(clippy::print_stderr, reason = "a failing test's reader needs the log")]
            {
                eprintln!("--- {} log tail ---\n{}", self.name, self.log_tail());
            }
        }
        self.kill();
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<bool> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status.success());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The first event (replaying from the start) of `kind` matching `pred`, within `limit`.
async fn wait_event(
    d: &Daemon,
    kind: &str,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> api::Event {
    next_event_after(d, kind, 0, limit, pred)
        .await
        .unwrap_or_else(|| panic!("{}: no {kind} within {limit:?}\n{}", d.name, d.log_tail()))
}

/// The first event of `kind` after sequence number `after` matching `pred`, if one comes
/// within `limit` (and the connection stays open).
async fn next_event_after(
    d: &Daemon,
    kind: &str,
    after: u64,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Option<api::Event> {
    let client = d.client().await;
    client
        .subscribe(&api::EventsSubscribe {
            since_seq: Some(after),
            kinds: Some(vec![kind.to_owned()]),
        })
        .await
        .expect("subscribe");
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, client.next_event()).await {
            Ok(Some(e)) if e.seq > after && pred(&e.data.to_value()) => return Some(e),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

async fn pair(alice: &Daemon, a: &str, bob: &Daemon, b: &str) {
    let client = alice.client().await;
    client
        .add_contact(&api::ContactAdd {
            address: b.to_owned(),
            nickname: "Bob".into(),
            offer_nickname: "Alice".into(),
            greeting: "hi Bob, it's Alice".into(),
            kind: api::PeerKind::Human,
        })
        .await
        .expect("request queued");
    let request = wait_event(bob, api::event::CONTACT_REQUEST_RECEIVED, DELIVERY, |d| {
        d["address"] == a
    })
    .await;
    assert_eq!(request.data.to_value()["nickname"], "Alice");
    assert_eq!(request.data.to_value()["greeting"], "hi Bob, it's Alice");
    bob.client()
        .await
        .respond(a, api::Response::Accept, None)
        .await
        .expect("accepted");
    wait_event(alice, api::event::CONTACT_STATE, DELIVERY, |d| {
        d["address"] == b && d["state"] == "accepted"
    })
    .await;
}

async fn send(from: &Daemon, to: &str, body: &str) -> api::Message {
    from.client()
        .await
        .send(&api::MessageSend {
            to: to.to_owned(),
            body: body.to_owned(),
            reply_to: None,
            client_token: None,
        })
        .await
        .expect("queued")
}

async fn delivered(d: &Daemon, id: i64) {
    wait_event(d, api::event::MESSAGE_STATUS, DELIVERY, |e| {
        e["id"] == id && e["status"] == "delivered"
    })
    .await;
}

/// The conversation with `with`, oldest first.
async fn conversation(d: &Daemon, with: &str) -> Vec<api::Message> {
    let page = d
        .client()
        .await
        .history(&api::MessageList {
            with: with.to_owned(),
            before: None,
            limit: Some(500),
        })
        .await
        .expect("history");
    page.messages.into_iter().rev().collect()
}

async fn history(d: &Daemon, with: &str) -> Vec<(api::Direction, String)> {
    conversation(d, with)
        .await
        .into_iter()
        .map(|m| (m.direction, m.body))
        .collect()
}

const DEFAULT_CONFIG: &str = "";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_pair_by_address_and_chat_over_tor() {
    let _serial = serial();
    let root = tempfile::tempdir().expect("dir");
    let alice = Daemon::new(root.path(), "alice", DEFAULT_CONFIG, None);
    let bob = Daemon::new(root.path(), "bob", DEFAULT_CONFIG, Some("correct horse"));
    let (a, b) = (alice.up().await, bob.up().await);
    let started = Instant::now();
    pair(&alice, &a, &bob, &b).await;
    println!(
        "pairing over Tor took {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Each side knows the other by its verified address.
    let bob_seen_by_alice = alice.client().await.contact(&b).await.expect("contact");
    let alice_seen_by_bob = bob.client().await.contact(&a).await.expect("contact");
    assert_eq!(bob_seen_by_alice.address, b);
    assert_eq!(bob_seen_by_alice.state, api::ContactState::Accepted);
    assert_eq!(alice_seen_by_bob.address, a);
    assert_eq!(alice_seen_by_bob.offered_nickname.as_deref(), Some("Alice"));

    let m1 = send(&alice, &b, "hello Bob").await;
    delivered(&alice, m1.id).await;
    let m2 = send(&bob, &a, "hello Alice").await;
    delivered(&bob, m2.id).await;

    // Warm: the session is up.
    let mut warm = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        let m = send(&alice, &b, &format!("warm {i}")).await;
        delivered(&alice, m.id).await;
        warm.push(t.elapsed());
    }
    warm.sort();
    println!(
        "warm message.send → delivered over Tor: median {:?} (min {:?}, max {:?})",
        warm[2], warm[0], warm[4]
    );

    let alice_view = history(&alice, &b).await;
    let bob_view = history(&bob, &a).await;
    let mirrored: Vec<(api::Direction, String)> = bob_view
        .iter()
        .map(|(d, body)| {
            let flipped = if *d == api::Direction::In {
                api::Direction::Out
            } else {
                api::Direction::In
            };
            (flipped, body.clone())
        })
        .collect();
    assert_eq!(alice_view.len(), 7);
    assert_eq!(
        alice_view, mirrored,
        "both histories hold the same conversation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_for_a_stopped_contact_and_survive_a_killed_sender() {
    let _serial = serial();
    let root = tempfile::tempdir().expect("dir");
    let mut alice = Daemon::new(root.path(), "alice", DEFAULT_CONFIG, None);
    let mut bob = Daemon::new(root.path(), "bob", DEFAULT_CONFIG, Some("bob's secret"));
    let (a, b) = (alice.up().await, bob.up().await);
    pair(&alice, &a, &bob, &b).await;

    // 1. Bob stops cleanly; Alice writes; Bob comes back (unlocking from his passphrase file).
    bob.stop();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            send(&alice, &b, &format!("while you were away {i}"))
                .await
                .id,
        );
    }
    bob.start();
    bob.up().await;
    for id in &ids {
        delivered(&alice, *id).await;
    }

    // 2. Bob stops; Alice's sends are acknowledged ("queued"), then Alice is SIGKILLed.
    bob.stop();
    for i in 0..4 {
        ids.push(send(&alice, &b, &format!("before the crash {i}")).await.id);
    }
    alice.kill();
    alice.start();
    alice.up().await;
    bob.start();
    bob.up().await;
    for id in &ids {
        delivered(&alice, *id).await;
    }

    let received: Vec<String> = history(&bob, &a)
        .await
        .into_iter()
        .map(|(_, body)| body)
        .collect();
    let expected: Vec<String> = (0..4)
        .map(|i| format!("while you were away {i}"))
        .chain((0..4).map(|i| format!("before the crash {i}")))
        .collect();
    assert_eq!(received, expected, "every message exactly once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_message_and_is_refused_once_blocked() {
    let _serial = serial();
    let root = tempfile::tempdir().expect("dir");
    let alice = Daemon::new(root.path(), "alice", DEFAULT_CONFIG, None);
    let carol = Daemon::new(root.path(), "carol", DEFAULT_CONFIG, None);
    let (a, c) = (alice.up().await, carol.up().await);
    let carol_client = carol.client().await;

    // No message without being a contact.
    let refused = carol_client
        .send(&api::MessageSend {
            to: a.clone(),
            body: "let me in".into(),
            reply_to: None,
            client_token: None,
        })
        .await
        .expect_err("not a contact");
    assert_eq!(refused.kind(), Some(api::ErrorKind::NotFound));

    // One request gets through, once.
    carol_client
        .add_contact(&api::ContactAdd {
            address: a.clone(),
            nickname: "Alice".into(),
            offer_nickname: "Carol".into(),
            greeting: "hello?".into(),
            kind: api::PeerKind::Bot,
        })
        .await
        .expect("queued");
    let request = wait_event(
        &alice,
        api::event::CONTACT_REQUEST_RECEIVED,
        DELIVERY,
        |d| d["address"] == c.as_str(),
    )
    .await;
    assert_eq!(request.data.to_value()["kind"], "bot");
    wait_event(
        &carol,
        api::event::CONTACT_REQUEST_DELIVERED,
        DELIVERY,
        |_| true,
    )
    .await;

    // Alice blocks her. Carol asks again (forgetting and re-adding Alice): refused at the
    // handshake, so her new request is never delivered and Alice hears nothing more.
    alice
        .client()
        .await
        .respond(&c, api::Response::Block, None)
        .await
        .expect("blocked");
    carol_client.remove_contact(&a).await.expect("removed");
    carol_client
        .add_contact(&api::ContactAdd {
            address: a.clone(),
            nickname: "Alice".into(),
            offer_nickname: "Carol".into(),
            greeting: "again?".into(),
            kind: api::PeerKind::Bot,
        })
        .await
        .expect("queued again");
    tokio::time::sleep(Duration::from_secs(40)).await;
    let carol_events = carol_client
        .call_value(
            <api::method::ContactGet as api::Method>::NAME,
            serde_json::json!({ "address": a }),
        )
        .await
        .expect("contact");
    assert_eq!(
        carol_events["state"], "requesting",
        "the second request was never acknowledged"
    );
    let alice_client = alice.client().await;
    alice_client
        .subscribe(&api::EventsSubscribe {
            since_seq: Some(0),
            kinds: Some(vec![api::event::CONTACT_REQUEST_RECEIVED.into()]),
        })
        .await
        .expect("subscribe");
    let mut requests = 0;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_secs(2), alice_client.next_event()).await
    {
        requests += 1;
    }
    assert_eq!(requests, 1, "Alice received exactly one request from Carol");
    let carol_at_alice = alice_client.contact(&c).await.expect("contact");
    assert_eq!(carol_at_alice.state, api::ContactState::Blocked);
    let log = std::fs::read_to_string(carol.dir.join("caromd.log")).expect("log");
    assert!(
        log.contains("Refused"),
        "Carol's daemon saw its session refused after the block"
    );
}

/// Read one JSON line from a raw socket.
fn read_json(reader: &mut BufReader<UnixStream>) -> Option<serde_json::Value> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => serde_json::from_str(&line).ok(),
    }
}

/// A raw connection to the daemon's socket and the first line it sent.
fn connect_raw(socket: &Path) -> (UnixStream, BufReader<UnixStream>, serde_json::Value) {
    let stream = UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let first = read_json(&mut reader).expect("a first line");
    (stream, reader, first)
}

fn raw(socket: &Path) -> (UnixStream, BufReader<UnixStream>) {
    let (stream, reader, banner) = connect_raw(socket);
    assert_eq!(banner["method"], api::method::BANNER);
    assert_eq!(banner["params"]["api_version"], api::API_VERSION);
    (stream, reader)
}

/// Write `line` and read the reply.
fn ask(
    stream: &mut UnixStream,
    reader: &mut BufReader<UnixStream>,
    line: &str,
) -> serde_json::Value {
    stream
        .write_all(format!("{line}\n").as_bytes())
        .expect("write");
    read_json(reader).unwrap_or_else(|| panic!("a reply to {line}"))
}

/// Batches, notifications, ids of every kind, and valid JSON that is not a request: each as
/// JSON-RPC 2.0 says, and the connection stays open throughout.
fn json_rpc_as_written(stream: &mut UnixStream, reader: &mut BufReader<UnixStream>) {
    let batch = ask(
        stream,
        reader,
        r#"[{"jsonrpc":"2.0","id":11,"method":"daemon.info"},{"jsonrpc":"2.0","method":"session.hello","params":{"client":"batched"}},5]"#,
    );
    let replies = batch.as_array().expect("a batch gets an array");
    assert_eq!(replies.len(), 2, "no reply for the notification: {batch}");
    assert_eq!(replies[0]["id"], 11);
    assert!(replies[0]["result"]["daemon_version"].is_string());
    assert_eq!(replies[1]["id"], serde_json::Value::Null);
    assert_eq!(replies[1]["error"]["data"]["kind"], "invalid_request");

    let empty = ask(stream, reader, "[]");
    assert_eq!(empty["error"]["data"]["kind"], "invalid_request");

    // A notification runs and gets no reply: the next reply is the next request's.
    stream
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"session.hello\",\"params\":{\"client\":\"quiet\"}}\n")
        .expect("write");
    let sessions = ask(
        stream,
        reader,
        r#"{"jsonrpc":"2.0","id":12,"method":"session.list"}"#,
    );
    assert_eq!(sessions["id"], 12);
    assert!(
        sessions["result"]
            .as_array()
            .expect("sessions")
            .iter()
            .any(|s| s["client"] == "quiet"),
        "{sessions}"
    );

    let huge = ask(stream, reader, "1e400");
    assert_eq!(huge["error"]["data"]["kind"], "invalid_request");
    assert_eq!(huge["id"], serde_json::Value::Null);
    let integer_method = ask(stream, reader, r#"{"jsonrpc":"2.0","id":13,"method":5}"#);
    assert_eq!(integer_method["id"], 13);
    assert_eq!(integer_method["error"]["data"]["kind"], "invalid_request");
    let negative_id = ask(
        stream,
        reader,
        r#"{"jsonrpc":"2.0","id":-1,"method":"daemon.info"}"#,
    );
    assert_eq!(negative_id["id"], -1);
    assert!(negative_id["result"].is_object());
    let negative_message = ask(
        stream,
        reader,
        r#"{"jsonrpc":"2.0","id":14,"method":"message.get","params":{"id":-1}}"#,
    );
    assert_eq!(negative_message["id"], 14);
    assert_eq!(negative_message["error"]["data"]["kind"], "invalid_params");
    let null_id = ask(
        stream,
        reader,
        r#"{"jsonrpc":"2.0","id":null,"method":"daemon.info"}"#,
    );
    assert_eq!(null_id["id"], serde_json::Value::Null);
    assert!(null_id["result"].is_object(), "{null_id}");
}

/// Each documented field limit, in each method that takes the field, refuses one byte more
/// with `too_large`, and stores nothing.
fn every_documented_limit_is_enforced(
    stream: &mut UnixStream,
    reader: &mut BufReader<UnixStream>,
    bob: &str,
) {
    let long = |n: usize| "x".repeat(n);
    let stranger = carom_proto::IdentityKey::from_seed(&[77; 32])
        .address()
        .to_string();
    let cases = [
        (
            "contact.respond",
            serde_json::json!({"address": stranger, "response": "block", "nickname": long(900_000)}),
        ),
        (
            "contact.respond",
            serde_json::json!({"address": stranger, "response": "block", "nickname": long(api::MAX_NICKNAME_BYTES + 1)}),
        ),
        (
            "contact.add",
            serde_json::json!({"address": stranger, "nickname": long(api::MAX_NICKNAME_BYTES + 1)}),
        ),
        (
            "contact.add",
            serde_json::json!({"address": stranger, "offer_nickname": long(api::MAX_OFFERED_NICKNAME_BYTES + 1)}),
        ),
        (
            "contact.add",
            serde_json::json!({"address": stranger, "greeting": long(api::MAX_GREETING_BYTES + 1)}),
        ),
        (
            "contact.rename",
            serde_json::json!({"address": stranger, "nickname": long(api::MAX_NICKNAME_BYTES + 1)}),
        ),
        (
            "message.send",
            serde_json::json!({"to": bob, "body": long(api::MAX_BODY_BYTES + 1)}),
        ),
        (
            "message.send",
            serde_json::json!({"to": bob, "body": "hi", "client_token": long(api::MAX_CLIENT_TOKEN_BYTES + 1)}),
        ),
        (
            "session.hello",
            serde_json::json!({"client": long(api::MAX_CLIENT_NAME_BYTES + 1)}),
        ),
        (
            "profile.unlock",
            serde_json::json!({"passphrase": long(api::MAX_PASSPHRASE_BYTES + 1)}),
        ),
    ];
    for (n, (method, params)) in cases.into_iter().enumerate() {
        let request = serde_json::json!({"jsonrpc": "2.0", "id": 100 + n, "method": method, "params": params});
        let reply = ask(stream, reader, &request.to_string());
        assert_eq!(reply["id"], 100 + n);
        assert_eq!(
            reply["error"]["data"]["kind"], "too_large",
            "{method}: {}",
            reply["error"]
        );
    }
    let contacts = ask(
        stream,
        reader,
        r#"{"jsonrpc":"2.0","id":99,"method":"contact.list"}"#,
    );
    assert_eq!(
        contacts["result"],
        serde_json::json!([]),
        "nothing was stored"
    );
}

/// A body with invalid UTF-8 is refused (`parse_error`, then the connection closes), never
/// stored with U+FFFD in place of the bad bytes.
fn invalid_utf8_is_refused_not_altered(socket: &Path, bob: &str) {
    let (mut stream, mut reader) = raw(socket);
    let mut line = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"message.send","params":{{"to":"{bob}","body":"a"#
    )
    .into_bytes();
    line.extend_from_slice(b"\xff\xfe");
    line.extend_from_slice(b"b\"}}\n");
    stream.write_all(&line).expect("write");
    let reply = read_json(&mut reader).expect("an error reply");
    assert_eq!(reply["error"]["data"]["kind"], "parse_error");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("UTF-8")),
        "{reply}"
    );
    assert!(read_json(&mut reader).is_none(), "the connection is closed");
}

/// One frontend more than the limit is told why and disconnected; once one leaves, the next
/// gets in.
async fn connections_are_limited(socket: &Path) {
    let mut open = Vec::new();
    // Connections closed a moment ago hold their places until the daemon reads their end.
    let deadline = Instant::now() + Duration::from_secs(10);
    while open.len() < api::MAX_CONNECTIONS {
        let (stream, reader, first) = connect_raw(socket);
        if first["method"] == api::method::BANNER {
            open.push((stream, reader));
        } else {
            assert_eq!(first["error"]["data"]["kind"], "too_many_connections");
            assert!(
                Instant::now() < deadline,
                "earlier connections never finished"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (_stream, mut reader, refused) = connect_raw(socket);
    assert_eq!(refused["error"]["data"]["kind"], "too_many_connections");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&api::MAX_CONNECTIONS.to_string())),
        "{refused}"
    );
    assert!(read_json(&mut reader).is_none(), "then disconnected");
    open.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_stream, _reader, first) = connect_raw(socket);
        if first["method"] == api::method::BANNER {
            break;
        }
        assert!(Instant::now() < deadline, "a freed place was never reused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_bad_input_and_replays_missed_events() {
    let _serial = serial();
    let root = tempfile::tempdir().expect("dir");
    let alice = Daemon::new(root.path(), "alice", DEFAULT_CONFIG, None);
    let bob = Daemon::new(root.path(), "bob", DEFAULT_CONFIG, None);
    let (a, b) = (alice.up().await, bob.up().await);
    let socket = alice.socket();

    // Modes: a private directory and a private socket.
    let dir_mode = std::fs::metadata(socket.parent().expect("dir"))
        .expect("dir")
        .permissions()
        .mode();
    let sock_mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    assert_eq!(sock_mode & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(&socket).expect("socket").uid(),
        rustix::process::geteuid().as_raw()
    );

    // Not JSON: an error, then the connection closes.
    let (mut stream, mut reader) = raw(&socket);
    stream.write_all(b"GET / HTTP/1.1\r\n").expect("write");
    let reply = read_json(&mut reader).expect("an error reply");
    assert_eq!(reply["error"]["data"]["kind"], "parse_error");
    assert_eq!(reply["error"]["code"], -32700);
    assert!(read_json(&mut reader).is_none(), "the connection is closed");

    // A line over 1 MiB: refused, then closed.
    let (mut stream, mut reader) = raw(&socket);
    let huge = vec![b'a'; api::MAX_LINE_BYTES + 1024];
    let _ = stream.write_all(&huge); // the server may hang up before we finish
    let reply = read_json(&mut reader).expect("an error reply");
    assert_eq!(reply["error"]["data"]["kind"], "line_too_long");
    assert!(read_json(&mut reader).is_none(), "the connection is closed");

    // Unknown method and bad params: proper errors echoing the id; the connection stays.
    let (mut stream, mut reader) = raw(&socket);
    stream
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":\"x1\",\"method\":\"no.such\"}\n")
        .expect("write");
    let reply = read_json(&mut reader).expect("reply");
    assert_eq!(reply["id"], "x1");
    assert_eq!(reply["error"]["code"], -32601);
    assert_eq!(reply["error"]["data"]["kind"], "method_not_found");
    stream
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"contact.add\",\"params\":{\"address\":5}}\n")
        .expect("write");
    let reply = read_json(&mut reader).expect("reply");
    assert_eq!(reply["id"], 7);
    assert_eq!(reply["error"]["data"]["kind"], "invalid_params");
    stream
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"contact.add\",\"params\":{\"address\":\"nope.onion\"}}\n")
        .expect("write");
    let reply = read_json(&mut reader).expect("reply");
    assert_eq!(reply["error"]["data"]["kind"], "invalid_address");
    let message = reply["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("56 characters"),
        "a message a person understands: {message}"
    );
    // Pipelined requests come back in order with their ids.
    stream
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"daemon.info\"}\n{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"identity.get\"}\n")
        .expect("write");
    assert_eq!(read_json(&mut reader).expect("reply")["id"], 9);
    let ident = read_json(&mut reader).expect("reply");
    assert_eq!(ident["id"], 10);
    assert_eq!(ident["result"]["address"], a.as_str());
    json_rpc_as_written(&mut stream, &mut reader);
    every_documented_limit_is_enforced(&mut stream, &mut reader, &b);
    drop((stream, reader));
    invalid_utf8_is_refused_not_altered(&socket, &b);
    connections_are_limited(&socket).await;

    // A frontend that reconnects with since_seq sees what it missed.
    let watcher = alice.client().await;
    let subscribed = watcher
        .subscribe(&api::EventsSubscribe::default())
        .await
        .expect("subscribe");
    let sessions = watcher.sessions().await.expect("sessions");
    assert!(
        sessions
            .iter()
            .any(|s| s.id == watcher.banner().session && s.subscribed)
    );
    let cursor = subscribed.latest_seq;
    drop(watcher);

    pair(&alice, &a, &bob, &b).await;
    let m = send(&bob, &a, "sent while the frontend was away").await;
    delivered(&bob, m.id).await;

    let back = alice.client().await;
    back.subscribe(&api::EventsSubscribe {
        since_seq: Some(cursor),
        kinds: None,
    })
    .await
    .expect("resubscribe");
    let mut kinds = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), back.next_event())
            .await
            .expect("replayed events")
            .expect("open");
        assert!(event.seq > cursor, "only events after the cursor");
        kinds.push(event.kind().to_owned());
        if event.kind() == api::event::MESSAGE_RECEIVED {
            let id = event.data.to_value()["id"].as_i64().expect("id");
            let got = back.message(id).await.expect("message");
            assert_eq!(got.body, "sent while the frontend was away");
            break;
        }
    }
    assert!(
        kinds.contains(&api::event::CONTACT_REQUEST_RECEIVED.to_owned())
            || kinds.contains(&api::event::CONTACT_STATE.to_owned())
    );
    assert!(
        kinds.contains(&api::event::FRONTEND_ATTACHED.to_owned()),
        "attachments are events too: {kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pruned_before_a_frontend_returns_are_announced_as_a_gap() {
    let _serial = serial();
    let root = tempfile::tempdir().expect("dir");
    let mut dave = Daemon::new(
        root.path(),
        "dave",
        "[messaging]\nevent_retention = 3\npresence = false\n",
        None,
    );
    dave.up().await;
    let client = dave.client().await;
    ask_strangers(&client, 1..=6).await;
    drop(client);
    dave.stop();
    dave.start(); // retention is applied at start
    dave.up().await;
    let client = dave.client().await;
    let subscribed = client
        .subscribe(&api::EventsSubscribe {
            since_seq: Some(0),
            kinds: None,
        })
        .await
        .expect("subscribe");
    let first = tokio::time::timeout(Duration::from_secs(10), client.next_event())
        .await
        .expect("an event")
        .expect("open");
    assert_eq!(first.kind(), api::event::GAP, "{first:?}");
    assert_eq!(first.data.to_value()["from_seq"], 1);
    let oldest = subscribed.oldest_seq.expect("some events kept");
    assert_eq!(first.data.to_value()["to_seq"], oldest - 1);

    // Frontend churn must not push other events out: a polling bot connects hundreds of
    // times (each connection an attach and a detach event) after a few contact events. A
    // retention of 50 holds those and the Tor status events of a restart, not 600 churn events.
    drop(client);
    dave.stop();
    std::fs::write(
        dave.dir.join("caromd.toml"),
        "[messaging]\nevent_retention = 50\npresence = false\n",
    )
    .expect("config");
    dave.start();
    dave.up().await;
    let mid = latest_seq(&dave).await;
    let client = dave.client().await;
    ask_strangers(&client, 7..=9).await;
    let is_churn = |kind: &str| api::event::CHURN.contains(&kind);
    let wanted = replayed_since(&client, mid, &is_churn).await;
    assert!(!wanted.is_empty());
    drop(client);
    for _ in 0..300 {
        let _ = raw(&dave.socket());
    }
    dave.stop();
    dave.start(); // retention is applied at start
    dave.up().await;
    let client = dave.client().await;
    let replayed = replayed_since(&client, mid, &is_churn).await;
    assert!(
        replayed.starts_with(&wanted),
        "churn pushed events out of retention: wanted {wanted:?}, got {replayed:?}"
    );
}

/// Send a contact request to made-up addresses (one per seed): each adds events to the log.
async fn ask_strangers(client: &Client, seeds: std::ops::RangeInclusive<u8>) {
    for seed in seeds {
        let address = carom_proto::IdentityKey::from_seed(&[seed; 32])
            .address()
            .to_string();
        client
            .add_contact(&api::ContactAdd {
                address,
                nickname: format!("n{seed}"),
                offer_nickname: String::new(),
                greeting: String::new(),
                kind: api::PeerKind::Human,
            })
            .await
            .expect("added");
    }
}

/// The kinds and sequence numbers of the events after `since` that are not churn, as a
/// subscriber sees them, until the log's end; a gap fails the test.
async fn replayed_since(
    client: &Client,
    since: u64,
    is_churn: &dyn Fn(&str) -> bool,
) -> Vec<(u64, String)> {
    let subscribed = client
        .subscribe(&api::EventsSubscribe {
            since_seq: Some(since),
            kinds: None,
        })
        .await
        .expect("subscribe");
    let mut seen = Vec::new();
    let mut last = since;
    while last < subscribed.latest_seq {
        let event = tokio::time::timeout(Duration::from_secs(10), client.next_event())
            .await
            .expect("replayed events")
            .expect("open");
        assert_ne!(event.kind(), api::event::GAP, "{event:?}");
        last = event.seq;
        if !is_churn(event.kind()) {
            seen.push((event.seq, event.kind().to_owned()));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_message_to_a_known_contact_is_delivered() {
    let _serial = serial();
    let root = tempfile::tempdir().expect("dir");
    // Without presence dialling nobody connects until there is something to deliver.
    let quiet = "[messaging]\npresence = false\n";
    let mut alice = Daemon::new(root.path(), "alice", quiet, None);
    let mut bob = Daemon::new(root.path(), "bob", quiet, None);
    let (a, b) = (alice.up().await, bob.up().await);
    pair(&alice, &a, &bob, &b).await;
    let m = send(&alice, &b, "warm up").await;
    delivered(&alice, m.id).await;

    let mut cold = Vec::new();
    for round in 0..3 {
        // Restart both: no session exists; Bob's device key is cached, so the dial uses IK.
        alice.stop();
        bob.stop();
        alice.start();
        bob.start();
        alice.up().await;
        bob.up().await;
        // Give the fresh descriptors a moment to be fetchable.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let t = Instant::now();
        let m = send(&alice, &b, &format!("cold {round}")).await;
        delivered(&alice, m.id).await;
        cold.push(t.elapsed());
    }
    cold.sort();
    println!("cold message.send → delivered over Tor (dial + IK + commit + ack): {cold:?}");
    let received: Vec<String> = history(&bob, &a)
        .await
        .into_iter()
        .map(|(_, body)| body)
        .collect();
    assert_eq!(received, vec!["warm up", "cold 0", "cold 1", "cold 2"]);
}

#[test]
fn a_second_daemon_on_the_same_profile_is_refused() {
    let _serial = serial();
    let root = tempfile::tempdir().expect("dir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let first = Daemon::new(root.path(), "solo", DEFAULT_CONFIG, None);
    runtime.block_on(first.client());
    let out = Command::new(env!("CARGO_BIN_EXE_caromd"))
        .arg("--config")
        .arg(first.dir.join("caromd.toml"))
        .arg("--data-dir")
        .arg(first.dir.join("data"))
        .arg("--runtime-dir")
        .arg(first.dir.join("run2"))
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another caromd"), "{stderr}");
    // The first is untouched.
    runtime.block_on(async {
        let c = first.client().await;
        c.info().await.expect("still serving");
    });
}

/// How long after sending `body` it took to be delivered, within `limit`.
async fn delivery_time(from: &Daemon, to: &str, body: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    let m = send(from, to, body).await;
    wait_event(from, api::event::MESSAGE_STATUS, limit, |e| {
        e["id"] == m.id && e["status"] == "delivered"
    })
    .await;
    started.elapsed()
}

/// The newest event sequence number of `d`.
async fn latest_seq(d: &Daemon) -> u64 {
    d.client()
        .await
        .subscribe(&api::EventsSubscribe {
            since_seq: None,
            kinds: Some(Vec::new()),
        })
        .await
        .expect("subscribe")
        .latest_seq
}

/// Whether an event of `kind` matching `pred` comes after `after`, within `limit`.
async fn event_after(
    d: &Daemon,
    kind: &str,
    after: u64,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> bool {
    next_event_after(d, kind, after, limit, pred)
        .await
        .is_some()
}

/// A relay on the session's path hangs (SIGSTOP: its connections stay open, nothing moves).
/// The sender notices that its message goes unanswered and drops the session — the contact is
/// shown offline — within seconds, not the minutes of the keepalive rule; it redials over a
/// fresh path at once; and the message is delivered soon after the relays return, exactly
/// once. Whether arti finds a live path *during* the hang depends on whether the frozen relays
/// include a guard or vanguard of either daemon (Tor keeps those on purpose); the time is
/// printed, and docs/benchmarks.md records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_relay_is_noticed_and_delivery_resumes_when_relays_return() {
    /// The hung session is dropped this soon after its message (answer timeout: 3 s + 10 s).
    const NOTICED: Duration = Duration::from_secs(20);
    /// How long the relays stay frozen once the freeze held a message up.
    const HANG: Duration = Duration::from_secs(45);
    /// Delivery resumes this soon after the relays return.
    const AFTER_RETURN: Duration = Duration::from_secs(60);
    let _serial = serial();
    let net = carom_testnet::shared();
    let root = tempfile::tempdir().expect("dir");
    let alice = Daemon::new(root.path(), "alice", DEFAULT_CONFIG, None);
    let bob = Daemon::new(root.path(), "bob", DEFAULT_CONFIG, None);
    let (a, b) = (alice.up().await, bob.up().await);
    pair(&alice, &a, &bob, &b).await;
    let warm = delivery_time(&alice, &b, "warm up", DELIVERY).await;
    println!("warm delivery before any hang: {warm:?}");

    // Split every node that carries circuits — the four relays and the three authorities,
    // which relay too — into three groups of one authority and its share of the relays: the
    // session's path runs through at least one node, so through some group. Freeze one
    // group; if the message still goes through at once, the path avoided it: thaw and freeze
    // the next. (Splitting the four relays alone was not enough: a run found a path on the
    // authorities only, and no freeze held the message up.) One authority at a time, so that
    // the other two keep voting consensuses while it is frozen.
    let authorities = net.authority_pids();
    let relays = net.relay_pids();
    assert_eq!(
        (authorities.len(), relays.len()),
        (3, 4),
        "the test network has three authorities and four relays"
    );
    let groups: Vec<Vec<u32>> = authorities
        .iter()
        .enumerate()
        .map(|(i, &authority)| {
            std::iter::once(authority)
                .chain(relays.iter().copied().skip(i).step_by(authorities.len()))
                .collect()
        })
        .collect();
    let mut held_up = false;
    for (i, group) in groups.iter().enumerate() {
        let frozen = net
            .freeze(group, Duration::from_secs(300))
            .expect("freeze relays");
        let before = latest_seq(&alice).await;
        let sent = Instant::now();
        let m = send(&alice, &b, &format!("during hang {i}")).await;
        let is_this = |e: &serde_json::Value| e["id"] == m.id && e["status"] == "delivered";
        if event_after(
            &alice,
            api::event::MESSAGE_STATUS,
            before,
            Duration::from_secs(3),
            is_this,
        )
        .await
        {
            println!("group {i} of the routers hung: not on the path (delivered at once)");
            frozen.thaw();
            continue;
        }
        held_up = true;
        let offline = |e: &serde_json::Value| e["address"] == b.as_str() && e["online"] == false;
        assert!(
            event_after(
                &alice,
                api::event::CONTACT_PRESENCE,
                before,
                NOTICED,
                offline
            )
            .await,
            "the hung session was not noticed within {NOTICED:?}\n{}",
            alice.log_tail()
        );
        println!(
            "group {i} of the routers hung: the session was dropped after {:?}",
            sent.elapsed()
        );
        let during = event_after(&alice, api::event::MESSAGE_STATUS, before, HANG, is_this).await;
        if during {
            println!(
                "… and the message went over a fresh path {:?} after it was sent",
                sent.elapsed()
            );
        } else {
            println!("… no path found while frozen ({HANG:?})");
        }
        frozen.thaw();
        let back = Instant::now();
        assert!(
            event_after(
                &alice,
                api::event::MESSAGE_STATUS,
                before,
                AFTER_RETURN,
                is_this
            )
            .await,
            "not delivered within {AFTER_RETURN:?} of the relays returning\n{}",
            alice.log_tail()
        );
        if !during {
            println!("delivered {:?} after the relays returned", back.elapsed());
        }
        break;
    }
    assert!(
        held_up,
        "the message went through with each group of the network's routers frozen"
    );
    let after = delivery_time(&alice, &b, "after", DELIVERY).await;
    println!("next delivery: {after:?}");
    let received: Vec<String> = history(&bob, &a)
        .await
        .into_iter()
        .map(|(_, body)| body)
        .collect();
    assert_eq!(received.first().map(String::as_str), Some("warm up"));
    assert_eq!(received.last().map(String::as_str), Some("after"));
    let mut once = received.clone();
    once.dedup();
    assert_eq!(once, received, "nothing delivered twice");
}

/// A group call through `d`'s API.
async fn group_call<M: api::Method>(d: &Daemon, params: &M::Params) -> M::Result {
    d.client()
        .await
        .call::<M>(params)
        .await
        .unwrap_or_else(|e| panic!("{}: {} failed: {e}\n{}", d.name, M::NAME, d.log_tail()))
}

/// Wait until `d` holds `count` messages of `group`, and return them, oldest first.
async fn group_messages(d: &Daemon, group: &str, count: usize) -> Vec<api::GroupMessage> {
    let deadline = Instant::now() + DELIVERY;
    loop {
        let mut page = group_call::<api::method::GroupHistory>(
            d,
            &api::GroupHistory {
                group: group.to_owned(),
                before: None,
                limit: Some(500),
            },
        )
        .await
        .messages;
        let complete = page.len() >= count
            && page
                .iter()
                .filter(|m| m.direction == api::Direction::Out)
                .all(|m| {
                    m.deliveries
                        .iter()
                        .all(|x| x.status == api::DeliveryStatus::Delivered)
                });
        if complete {
            page.reverse();
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {} of {count} group messages (or undelivered ones) after {DELIVERY:?}\n{}",
            d.name,
            page.len(),
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The bytes of a hex string (a group id as the API gives it).
fn hex_bytes(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Alice makes a group named `name` and Bob (`b`) joins it; its id.
async fn two_in_a_group(alice: &Daemon, bob: &Daemon, b: &str, name: &str) -> String {
    let group = group_call::<api::method::GroupCreate>(
        alice,
        &api::GroupCreate {
            name: name.into(),
            members_can_invite: false,
            member_name: "Alice".into(),
            kind: api::PeerKind::Human,
        },
    )
    .await
    .id;
    group_call::<api::method::GroupInvite>(
        alice,
        &api::GroupInvite {
            group: group.clone(),
            address: b.to_owned(),
            role: api::GroupRole::Member,
        },
    )
    .await;
    wait_event(bob, api::event::GROUP_INVITED, DELIVERY, |d| {
        d["group"] == group.as_str()
    })
    .await;
    group_call::<api::method::GroupAccept>(
        bob,
        &api::GroupAccept {
            group: group.clone(),
            name: "Bob".into(),
            kind: api::PeerKind::Human,
        },
    )
    .await;
    group_until(alice, &group, "Bob a member", |g| g.members.len() == 2).await;
    group
}

/// Poll `d`'s copy of `group` until it holds a message `body`; that message.
async fn group_message_with(d: &Daemon, group: &str, body: &str) -> api::GroupMessage {
    let deadline = Instant::now() + DELIVERY;
    loop {
        let page = group_call::<api::method::GroupHistory>(
            d,
            &api::GroupHistory {
                group: group.to_owned(),
                before: None,
                limit: Some(500),
            },
        )
        .await;
        if let Some(m) = page.messages.into_iter().find(|m| m.body == body) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {body:?} never came\n{}",
            d.name,
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until `d`'s view of `group` satisfies `done`, and return it.
async fn group_until(
    d: &Daemon,
    group: &str,
    what: &str,
    done: impl Fn(&api::Group) -> bool,
) -> api::Group {
    let deadline = Instant::now() + DELIVERY;
    loop {
        let g = group_call::<api::method::GroupGet>(
            d,
            &api::GroupParams {
                group: group.to_owned(),
            },
        )
        .await;
        if done(&g) {
            return g;
        }
        assert!(
            Instant::now() < deadline,
            "{}: never saw {what}: {g:?}\n{}",
            d.name,
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sorted_members(g: &api::Group) -> Vec<String> {
    let mut m: Vec<String> = g.members.iter().map(|m| m.address.clone()).collect();
    m.sort();
    m
}

/// Speak the protocol by hand over Tor as a stranger (a fresh identity and device key, its own
/// arti client): dial `to`, send `messages` once the session is up, and return what came back
/// within `wait`.
async fn as_a_stranger_over_tor(
    dir: &Path,
    to: &str,
    messages: Vec<carom_proto::Message>,
    wait: Duration,
) -> Vec<carom_proto::Event> {
    use carom_tor::Transport as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let net = carom_testnet::shared();
    let identity = carom_proto::IdentityKey::generate(&mut rand_core::OsRng);
    let device = carom_proto::DeviceKey::generate(&mut rand_core::OsRng);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let certificate =
        carom_proto::DeviceCertificate::issue(&identity, &device.public(), now + 86_400);
    let mut config = carom_tor::ArtiConfig::new(dir);
    config.network = carom_tor::TorNetwork::CustomFile(net.arti_config_path());
    let transport = carom_tor::ArtiTransport::start(config, &identity)
        .await
        .expect("an arti client for the stranger");
    let mut status = transport.status();
    tokio::time::timeout(DELIVERY, async {
        while !status.borrow().bootstrap.ready {
            status.changed().await.expect("status");
        }
    })
    .await
    .expect("the stranger's client bootstrapped");
    let peer = carom_proto::OnionAddress::parse(to).expect("address");
    let deadline = Instant::now() + DELIVERY;
    let mut stream = loop {
        match transport.dial(&peer).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the stranger could not dial: {e}"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut session = carom_proto::Session::initiator(
        std::sync::Arc::new(carom_proto::SessionConfig::new(
            identity,
            device,
            certificate,
        )),
        peer,
        None,
        now,
        std::time::Instant::now(),
        &mut rand_core::OsRng,
    );
    let until = tokio::time::Instant::now() + wait;
    let mut unsent = Some(messages);
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 70 * 1024];
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                carom_proto::Event::Established { .. } => {
                    for m in unsent.take().unwrap_or_default() {
                        session.send(m, std::time::Instant::now()).expect("send");
                    }
                }
                e @ (carom_proto::Event::Message(_) | carom_proto::Event::Closed { .. }) => {
                    seen.push(e);
                }
                _ => {}
            }
        }
        while let Some(bytes) = session.poll_transmit() {
            if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err() {
                return seen;
            }
        }
        if session.is_closed() {
            return seen;
        }
        let timer = session
            .poll_timeout()
            .map_or(until, |t| tokio::time::Instant::from_std(t).min(until));
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return seen,
                Ok(n) => {
                    let _ = session.handle_input(&buf[..n], std::time::Instant::now());
                }
            },
            () = tokio::time::sleep_until(timer) => {
                if tokio::time::Instant::now() >= until {
                    return seen;
                }
                session.handle_timeout(std::time::Instant::now());
            }
        }
    }
}

/// Alice is everyone's contact, Bob and Carol each other's; Dave (a bot) is nobody's but
/// Alice's, so his group traffic with Bob and Carol goes over sessions their daemons admit for
/// the group only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_daemons_form_a_group_over_tor_and_a_removed_member_gets_nothing_after() {
    let _serial = serial();
    let root = tempfile::tempdir().expect("dir");
    let names = ["alice", "bob", "carol", "dave"];
    let daemons: Vec<Daemon> = names
        .iter()
        .map(|n| Daemon::new(root.path(), n, DEFAULT_CONFIG, None))
        .collect();
    let mut addresses = Vec::new();
    for d in &daemons {
        addresses.push(d.up().await);
    }
    let started = Instant::now();
    for (i, j) in [(0, 1), (0, 2), (0, 3), (1, 2)] {
        pair(&daemons[i], &addresses[i], &daemons[j], &addresses[j]).await;
    }
    println!(
        "pairing four daemons (four pairs) over Tor took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let [alice, bob, carol, dave] = [&daemons[0], &daemons[1], &daemons[2], &daemons[3]];

    let group = group_call::<api::method::GroupCreate>(
        alice,
        &api::GroupCreate {
            name: "Night desk".into(),
            members_can_invite: false,
            member_name: "Alice".into(),
            kind: api::PeerKind::Human,
        },
    )
    .await
    .id;
    let started = Instant::now();
    for (i, (invitee, kind)) in [
        (bob, api::PeerKind::Human),
        (carol, api::PeerKind::Human),
        (dave, api::PeerKind::Bot),
    ]
    .into_iter()
    .enumerate()
    {
        group_call::<api::method::GroupInvite>(
            alice,
            &api::GroupInvite {
                group: group.clone(),
                address: addresses[i + 1].clone(),
                role: api::GroupRole::Member,
            },
        )
        .await;
        wait_event(invitee, api::event::GROUP_INVITED, DELIVERY, |d| {
            d["group"] == group.as_str()
        })
        .await;
        // The invitee sees the group and its members, with their kinds, before accepting.
        let seen = group_call::<api::method::GroupGet>(
            invitee,
            &api::GroupParams {
                group: group.clone(),
            },
        )
        .await;
        assert_eq!(seen.state, api::GroupState::Invited);
        assert_eq!(seen.name, "Night desk");
        assert_eq!(seen.invited_by.as_deref(), Some(addresses[0].as_str()));
        assert!(seen.members.iter().any(|m| m.address == addresses[0]));
        assert!(!seen.members.iter().any(|m| m.address == addresses[i + 1]));
        group_call::<api::method::GroupAccept>(
            invitee,
            &api::GroupAccept {
                group: group.clone(),
                name: names[i + 1].into(),
                kind,
            },
        )
        .await;
    }
    // Every member converges on the same four members; the bot is a bot to all.
    let deadline = Instant::now() + DELIVERY;
    for d in &daemons {
        loop {
            let g = group_call::<api::method::GroupGet>(
                d,
                &api::GroupParams {
                    group: group.clone(),
                },
            )
            .await;
            if g.members.len() == 4 {
                let dave_seen = g
                    .members
                    .iter()
                    .find(|m| m.address == addresses[3])
                    .expect("dave is a member");
                assert_eq!(dave_seen.kind, api::PeerKind::Bot, "{}", d.name);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} sees {} members\n{}",
                d.name,
                g.members.len(),
                d.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!(
        "three invitations accepted and seen by all over Tor in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Everyone writes once; every history holds the same four messages, each sent to all.
    let mut fan_out = Vec::new();
    for (i, d) in daemons.iter().enumerate() {
        let t = Instant::now();
        group_call::<api::method::GroupSend>(
            d,
            &api::GroupSend {
                group: group.clone(),
                body: format!("hello from {}", names[i]),
                reply_to: None,
                client_token: None,
            },
        )
        .await;
        group_messages(d, &group, i + 1).await;
        fan_out.push(t.elapsed());
    }
    println!("group send → delivered to all three others over Tor: {fan_out:?}");
    let mut everyone = addresses.clone();
    everyone.sort();
    let mut reference: Option<Vec<String>> = None;
    for d in &daemons {
        let messages = group_messages(d, &group, 4).await;
        let mut ids: Vec<String> = messages.iter().map(|m| m.msg_id.clone()).collect();
        ids.sort();
        for m in &messages {
            let mut to = m.sent_to.clone();
            to.sort();
            assert_eq!(to, everyone, "{}: sent to the whole group", d.name);
        }
        match &reference {
            None => reference = Some(ids),
            Some(r) => assert_eq!(&ids, r, "{}: the same messages as everyone", d.name),
        }
    }
    // Dave reached Bob and Carol though none of them is the other's contact, and none of
    // them lists the other as one.
    let daves_view = group_call::<api::method::GroupGet>(
        dave,
        &api::GroupParams {
            group: group.clone(),
        },
    )
    .await;
    for (i, contact) in [(0, true), (1, false), (2, false)] {
        let m = daves_view
            .members
            .iter()
            .find(|m| m.address == addresses[i])
            .expect("a member");
        assert_eq!(m.contact, contact, "dave's view of {}", names[i]);
    }
    let bobs_contacts: Vec<String> = bob
        .client()
        .await
        .contacts()
        .await
        .expect("contacts")
        .into_iter()
        .map(|c| c.address)
        .collect();
    assert!(!bobs_contacts.contains(&addresses[3]), "{bobs_contacts:?}");

    // A stranger who knows the group's id, over Tor, gets nothing in: refused at once, and
    // nothing it sent is kept.
    let mut group_id = [0u8; 16];
    group_id.copy_from_slice(&hex_bytes(&group));
    let injected = carom_proto::MessageId([0x66; 16]);
    let answer = as_a_stranger_over_tor(
        &root.path().join("stranger"),
        &addresses[2],
        vec![carom_proto::Message::GroupChat(carom_proto::GroupChat {
            id: injected,
            group: carom_group::GroupId(group_id),
            heads: Vec::new(),
            members_digest: carom_proto::Digest32([0; 32]),
            sent_at: 1,
            body: "injected".into(),
            reply_to: None,
            expires_after: None,
        })],
        Duration::from_secs(60),
    )
    .await;
    assert!(
        answer.iter().any(|e| matches!(
            e,
            carom_proto::Event::Closed {
                reason: carom_proto::CloseReason::Refused,
                by_peer: true
            }
        )),
        "the stranger was not refused: {answer:?}"
    );
    assert!(
        group_messages(carol, &group, 4)
            .await
            .iter()
            .all(|m| m.body != "injected"),
        "an injected message was kept"
    );

    // Alice removes Carol; what Bob sends next reaches Alice and Dave, never Carol.
    group_call::<api::method::GroupRemove>(
        alice,
        &api::GroupMemberParams {
            group: group.clone(),
            address: addresses[2].clone(),
        },
    )
    .await;
    wait_event(carol, api::event::GROUP_CHANGED, DELIVERY, |d| {
        d["group"] == group.as_str()
    })
    .await;
    let deadline = Instant::now() + DELIVERY;
    loop {
        let g = group_call::<api::method::GroupGet>(
            bob,
            &api::GroupParams {
                group: group.clone(),
            },
        )
        .await;
        if g.members.len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "bob never saw carol removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = group_call::<api::method::GroupSend>(
        bob,
        &api::GroupSend {
            group: group.clone(),
            body: "after carol left".into(),
            reply_to: None,
            client_token: None,
        },
    )
    .await;
    let mut recipients: Vec<String> = after.deliveries.iter().map(|d| d.address.clone()).collect();
    recipients.sort();
    let mut expected = vec![addresses[0].clone(), addresses[3].clone()];
    expected.sort();
    assert_eq!(
        recipients, expected,
        "sent to the members after the removal"
    );
    group_messages(bob, &group, 5).await;
    let carols = group_call::<api::method::GroupHistory>(
        carol,
        &api::GroupHistory {
            group: group.clone(),
            before: None,
            limit: Some(500),
        },
    )
    .await
    .messages;
    assert!(
        carols.iter().all(|m| m.body != "after carol left"),
        "a removed member received a message sent after the removal"
    );
    let carol_view = group_call::<api::method::GroupGet>(
        carol,
        &api::GroupParams {
            group: group.clone(),
        },
    )
    .await;
    assert_eq!(carol_view.state, api::GroupState::Left);

    // Dave (the bot) is away while Bob writes three more; back, he has all of them, in order.
    let mut daemons = daemons;
    daemons[3].stop();
    let mut last = 0;
    for i in 0..3 {
        last = group_call::<api::method::GroupSend>(
            &daemons[1],
            &api::GroupSend {
                group: group.clone(),
                body: format!("while dave was away {i}"),
                reply_to: None,
                client_token: None,
            },
        )
        .await
        .id;
    }
    daemons[3].start();
    daemons[3].up().await;
    let bobs = group_messages(&daemons[1], &group, 8).await;
    assert!(bobs.iter().any(|m| m.id == last));
    let daves: Vec<String> = group_messages(&daemons[3], &group, 8)
        .await
        .into_iter()
        .map(|m| m.body)
        .filter(|b| b.starts_with("while dave was away"))
        .collect();
    assert_eq!(
        daves,
        (0..3)
            .map(|i| format!("while dave was away {i}"))
            .collect::<Vec<_>>(),
        "an offline member gets everything, in order, when back"
    );

    // Changes made at once by two admins on different members converge everywhere: Alice
    // removes Dave while Bob invites Carol back.
    group_call::<api::method::GroupSetRole>(
        &daemons[0],
        &api::GroupSetRole {
            group: group.clone(),
            address: addresses[1].clone(),
            role: api::GroupRole::Admin,
        },
    )
    .await;
    group_until(&daemons[1], &group, "bob made an admin", |g| {
        g.role == Some(api::GroupRole::Admin)
    })
    .await;
    let removal = api::GroupMemberParams {
        group: group.clone(),
        address: addresses[3].clone(),
    };
    let invitation = api::GroupInvite {
        group: group.clone(),
        address: addresses[2].clone(),
        role: api::GroupRole::Member,
    };
    let (removed, invited) = tokio::join!(
        group_call::<api::method::GroupRemove>(&daemons[0], &removal),
        group_call::<api::method::GroupInvite>(&daemons[1], &invitation),
    );
    // Made within milliseconds of each other, while an operation takes a Tor round trip to
    // arrive: as a rule neither had seen the other's (the virtual-time tests make sure of it
    // with a partition; here it is the real network's timing).
    println!(
        "concurrent changes: the removal saw {} invitation(s), the invitation saw {} member(s)",
        removed.invitations.len(),
        invited.members.len()
    );
    let mut alice_and_bob = vec![addresses[0].clone(), addresses[1].clone()];
    alice_and_bob.sort();
    for d in [&daemons[0], &daemons[1], &daemons[2]] {
        group_until(d, &group, "dave removed and carol invited", |g| {
            sorted_members(g) == alice_and_bob
                && g.invitations.iter().any(|i| i.invitee == addresses[2])
        })
        .await;
    }
    group_call::<api::method::GroupAccept>(
        &daemons[2],
        &api::GroupAccept {
            group: group.clone(),
            name: "carol again".into(),
            kind: api::PeerKind::Human,
        },
    )
    .await;
    let mut three = vec![
        addresses[0].clone(),
        addresses[1].clone(),
        addresses[2].clone(),
    ];
    three.sort();
    let mut views = Vec::new();
    for d in [&daemons[0], &daemons[1], &daemons[2]] {
        views.push(
            group_until(d, &group, "carol back and dave gone", |g| {
                sorted_members(g) == three && g.invitations.is_empty()
            })
            .await,
        );
    }
    // (Whether a member is one's contact, or oneself, differs from daemon to daemon.)
    let membership = |g: &api::Group| {
        let mut m: Vec<(String, String, api::PeerKind, api::GroupRole)> = g
            .members
            .iter()
            .map(|m| (m.address.clone(), m.name.clone(), m.kind, m.role))
            .collect();
        m.sort_by(|a, b| a.0.cmp(&b.0));
        (m, g.name.clone(), g.members_can_invite)
    };
    for v in &views[1..] {
        assert_eq!(
            membership(v),
            membership(&views[0]),
            "one membership everywhere"
        );
    }
    group_until(&daemons[3], &group, "dave told of his removal", |g| {
        g.state == api::GroupState::Left
    })
    .await;
    let back = group_call::<api::method::GroupSend>(
        &daemons[0],
        &api::GroupSend {
            group: group.clone(),
            body: "welcome back".into(),
            reply_to: None,
            client_token: None,
        },
    )
    .await;
    let mut recipients: Vec<String> = back.deliveries.iter().map(|d| d.address.clone()).collect();
    recipients.sort();
    let mut bob_and_carol = vec![addresses[1].clone(), addresses[2].clone()];
    bob_and_carol.sort();
    assert_eq!(recipients, bob_and_carol, "sent to bob and carol, not dave");
    let carols: Vec<String> = group_messages(&daemons[2], &group, 5)
        .await
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert!(carols.contains(&"welcome back".to_owned()), "{carols:?}");
    assert!(
        !carols
            .iter()
            .any(|b| b.starts_with("while dave was away") || b == "after carol left"),
        "a member who joined again received what was sent while she was out: {carols:?}"
    );
    group_messages(&daemons[0], &group, 9).await;
    let daves_after = group_call::<api::method::GroupHistory>(
        &daemons[3],
        &api::GroupHistory {
            group: group.clone(),
            before: None,
            limit: Some(500),
        },
    )
    .await
    .messages;
    assert!(
        daves_after.iter().all(|m| m.body != "welcome back"),
        "a removed member received a message sent after the removal"
    );
}

// ----- ephemerality -----

/// Every decrypted page of the daemon's database and WAL, and the raw bytes of every other
/// file under its data directory (arti's state included): where `marker` occurs.
fn where_is(d: &Daemon, marker: &str) -> Vec<String> {
    where_are_bytes(d, marker.as_bytes())
}

/// [`where_is`] for any bytes (a message id, say).
fn where_are_bytes(d: &Daemon, marker: &[u8]) -> Vec<String> {
    use carom_store::forensic::{Image, contains};
    let data = d.dir.join("data");
    let key = carom_store::KeyFile::unlock(
        &data.join("profile.key"),
        d.passphrase.as_deref().map(str::as_bytes),
    )
    .expect("the key file unlocks");
    let image = Image::read(&data.join("profile.db"), &key).expect("the database decrypts");
    let mut found: Vec<String> = image
        .pages_containing(marker)
        .iter()
        .map(|p| format!("decrypted page {} ({:?})", p.number, p.source))
        .collect();
    let mut dirs = vec![data];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("data dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && contains(&bytes, marker)
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// Wait (up to `limit`) until `marker` is nowhere in `d`'s files: erasure ends with a
/// checkpoint that follows its commit.
async fn erased_within(d: &Daemon, marker: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let found = where_is(d, marker);
        if found.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {marker:?} still in {found:?} after {limit:?}\n{}",
            d.name,
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn kinds(d: &Daemon, with: &str) -> Vec<(api::MessageKind, String)> {
    conversation(d, with)
        .await
        .into_iter()
        .map(|m| (m.kind, m.body))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disappearing_messages_and_delete_for_everyone_between_two_daemons_over_tor() {
    let _serial = serial();
    let root = tempfile::tempdir().expect("dir");
    let alice = Daemon::new(root.path(), "alice", DEFAULT_CONFIG, None);
    let mut bob = Daemon::new(root.path(), "bob", DEFAULT_CONFIG, Some("bob's secret"));
    let (a, b) = (alice.up().await, bob.up().await);
    pair(&alice, &a, &bob, &b).await;

    // 1. Alice sets a 20-second timer: both ends see it.
    let set = alice
        .client()
        .await
        .set_timer(&b, Some(20))
        .await
        .expect("timer set");
    assert_eq!(set.timer, Some(20));
    wait_event(&bob, api::event::CONTACT_TIMER, DELIVERY, |d| {
        d["address"] == a.as_str() && d["timer"] == 20 && d["by"] == "them"
    })
    .await;
    let seen = bob.client().await.contact(&a).await.expect("contact");
    assert_eq!(seen.timer, Some(20));

    // 2. A message under it is erased at both ends, from every file, unattended.
    let first = "MARKER-e2e-expiry-51c3a9: burn after reading";
    let m = send(&alice, &b, first).await;
    assert_eq!(m.timer, Some(20));
    delivered(&alice, m.id).await;
    assert!(!where_is(&alice, first).is_empty(), "stored at Alice's");
    assert!(!where_is(&bob, first).is_empty(), "stored at Bob's");
    for (d, other) in [(&alice, &b), (&bob, &a)] {
        wait_event(
            d,
            api::event::MESSAGE_EXPIRED,
            Duration::from_secs(90),
            |e| e["contact"] == other.as_str(),
        )
        .await;
        erased_within(d, first, Duration::from_secs(10)).await;
    }

    // 3. Bob turns it off; a message Alice deletes for everyone becomes a tombstone at his
    //    end while he is online.
    bob.client()
        .await
        .set_timer(&a, None)
        .await
        .expect("timer off");
    wait_event(&alice, api::event::CONTACT_TIMER, DELIVERY, |d| {
        d["address"] == b.as_str() && d["timer"].is_null() && d["by"] == "them"
    })
    .await;
    let second = "MARKER-e2e-withdraw-0d7e42: wrong window";
    let m2 = send(&alice, &b, second).await;
    assert_eq!(m2.expires_at, None);
    delivered(&alice, m2.id).await;
    assert!(!where_is(&bob, second).is_empty());
    alice
        .client()
        .await
        .delete_message(m2.id, true)
        .await
        .expect("deleted for everyone");
    wait_event(&bob, api::event::MESSAGE_DELETED, DELIVERY, |e| {
        e["contact"] == a.as_str() && e["by"] == "them" && e["for_everyone"] == true
    })
    .await;
    erased_within(&bob, second, Duration::from_secs(10)).await;
    erased_within(&alice, second, Duration::from_secs(10)).await;

    // 4. Bob is offline: one message he has and one still queued for him are withdrawn;
    //    when he is back he erases the first and never stores the second.
    let third = "MARKER-e2e-offline-had-9a2b10: he has this";
    let m3 = send(&alice, &b, third).await;
    delivered(&alice, m3.id).await;
    bob.stop();
    let fourth = "MARKER-e2e-offline-never-6f3c88: he never gets this";
    let m4 = send(&alice, &b, fourth).await;
    let client = alice.client().await;
    client.delete_message(m3.id, true).await.expect("m3");
    client.delete_message(m4.id, true).await.expect("m4");
    erased_within(&alice, fourth, Duration::from_secs(10)).await;
    bob.start();
    bob.up().await;
    let deadline = Instant::now() + DELIVERY;
    while kinds(&bob, &a)
        .await
        .iter()
        .filter(|(k, _)| *k == api::MessageKind::Deleted)
        .count()
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            kinds(&bob, &a).await,
            bob.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    erased_within(&bob, third, Duration::from_secs(10)).await;
    assert!(where_is(&bob, fourth).is_empty());
    let texts: Vec<String> = kinds(&bob, &a)
        .await
        .into_iter()
        .filter(|(k, _)| *k == api::MessageKind::Text)
        .map(|(_, body)| body)
        .collect();
    assert!(texts.is_empty(), "Bob still holds {texts:?}");

    // 5. A message that expires while Bob is stopped is erased at his next start, before
    //    his daemon answers anything about the conversation.
    alice
        .client()
        .await
        .set_timer(&b, Some(15))
        .await
        .expect("timer set");
    wait_event(&bob, api::event::CONTACT_TIMER, DELIVERY, |d| {
        d["timer"] == 15 && d["by"] == "them"
    })
    .await;
    let fifth = "MARKER-e2e-while-stopped-c4d5e6: gone while you slept";
    let m5 = send(&alice, &b, fifth).await;
    delivered(&alice, m5.id).await;
    bob.stop();
    assert!(!where_is(&bob, fifth).is_empty(), "stored before the stop");
    tokio::time::sleep(Duration::from_secs(16)).await;
    bob.start();
    // The first history Bob's daemon serves comes after the erasure.
    let client = bob.client().await;
    let deadline = Instant::now() + STARTUP;
    let page = loop {
        match client
            .history(&api::MessageList {
                with: a.clone(),
                before: None,
                limit: Some(500),
            })
            .await
        {
            Ok(page) => break page,
            Err(e) => {
                assert!(Instant::now() < deadline, "no history: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(page.messages.iter().all(|m| m.body != fifth));
    assert!(
        where_is(&bob, fifth).is_empty(),
        "served with the body on disk"
    );
    erased_within(&alice, fifth, Duration::from_secs(60)).await;

    // 6. A group with a disappearing timer: Alice, its admin, sets it in the group's signed
    //    history; Bob's daemon sees it; his message under it is erased at both ends.
    let group = two_in_a_group(&alice, &bob, &b, "Brief").await;
    let set = group_call::<api::method::GroupSetTimer>(
        &alice,
        &api::GroupSetTimer {
            group: group.clone(),
            timer: Some(15),
        },
    )
    .await;
    assert_eq!(set.timer, Some(15));
    group_until(&bob, &group, "the group's timer", |g| g.timer == Some(15)).await;
    let sixth = "MARKER-e2e-group-expiry-7d21e0: the group forgets this";
    let sent = group_call::<api::method::GroupSend>(
        &bob,
        &api::GroupSend {
            group: group.clone(),
            body: sixth.into(),
            reply_to: None,
            client_token: None,
        },
    )
    .await;
    assert_eq!(sent.timer, Some(15));
    let at_alice = group_messages(&alice, &group, 1).await;
    assert_eq!(
        (at_alice[0].body.as_str(), at_alice[0].timer),
        (sixth, Some(15))
    );
    // Looked at as soon as it is listed: it has 15 s to live.
    assert!(!where_is(&alice, sixth).is_empty(), "stored at Alice's");
    group_messages(&bob, &group, 1).await;
    for d in [&alice, &bob] {
        wait_event(d, api::event::GROUP_EXPIRED, Duration::from_secs(60), |e| {
            e["group"] == group.as_str()
        })
        .await;
        erased_within(d, sixth, Duration::from_secs(10)).await;
    }

    // 7. With the timer off again (so that nothing expires first), Alice deletes a group
    //    message for everyone: Bob's daemon keeps a tombstone.
    group_call::<api::method::GroupSetTimer>(
        &alice,
        &api::GroupSetTimer {
            group: group.clone(),
            timer: None,
        },
    )
    .await;
    group_until(&bob, &group, "the timer off", |g| g.timer.is_none()).await;
    let seventh = "MARKER-e2e-group-withdraw-4c8a02: posted to the wrong group";
    let sent = group_call::<api::method::GroupSend>(
        &alice,
        &api::GroupSend {
            group: group.clone(),
            body: seventh.into(),
            reply_to: None,
            client_token: None,
        },
    )
    .await;
    assert_eq!(sent.timer, None);
    group_messages(&alice, &group, 1).await;
    group_call::<api::method::GroupDelete>(
        &alice,
        &api::GroupDelete {
            group: group.clone(),
            id: sent.id,
            for_everyone: true,
        },
    )
    .await;
    wait_event(&bob, api::event::GROUP_DELETED, DELIVERY, |e| {
        e["group"] == group.as_str() && e["by"] == "them" && e["for_everyone"] == true
    })
    .await;
    for d in [&alice, &bob] {
        erased_within(d, seventh, Duration::from_secs(10)).await;
    }
}

/// Nothing of `m` in any of `d`'s files: its body, its id (raw, or in hex as an event would
/// name it).
fn nowhere_on_disk(d: &Daemon, m: &api::Message) {
    for needle in [
        m.body.as_bytes(),
        &hex_bytes(&m.msg_id),
        m.msg_id.as_bytes(),
    ] {
        let found = where_are_bytes(d, needle);
        assert!(found.is_empty(), "{}: #{} is in {found:?}", d.name, m.id);
    }
}

/// Poll `d`'s conversation with `with` until `pred` holds for some message; that message.
async fn until_in_conversation(
    d: &Daemon,
    with: &str,
    pred: impl Fn(&api::Message) -> bool,
) -> api::Message {
    let deadline = Instant::now() + DELIVERY;
    loop {
        if let Some(m) = conversation(d, with).await.into_iter().find(|m| pred(m)) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{}: not within {DELIVERY:?}\n{}",
            d.name,
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_off_two_daemons_talk_and_share_a_group_over_tor_and_none_of_it_reaches_their_disks()
 {
    let _serial = serial();
    let root = tempfile::tempdir().expect("dir");
    let alice = Daemon::new(root.path(), "alice", DEFAULT_CONFIG, None);
    let mut bob = Daemon::new(root.path(), "bob", DEFAULT_CONFIG, Some("bob's secret"));
    let (a, b) = (alice.up().await, bob.up().await);
    pair(&alice, &a, &bob, &b).await;
    let off = alice
        .client()
        .await
        .set_history(&b, false)
        .await
        .expect("off");
    assert!(!off.keep_history);
    let bob_client = bob.client().await;
    assert!(
        !bob_client
            .set_history(&a, false)
            .await
            .expect("off")
            .keep_history
    );
    // Bob's frontend is attached: it hears of the message live, from a real socket.
    bob_client
        .subscribe(&api::EventsSubscribe {
            since_seq: None,
            kinds: None,
        })
        .await
        .expect("subscribe");

    let to_bob = "MARKER-e2e-memory-8d2c41: nothing of this is written";
    let sent = send(&alice, &b, to_bob).await;
    assert!(sent.memory_only);
    let live = tokio::time::timeout(DELIVERY, async {
        loop {
            let event = bob_client.next_live_event().await.expect("connected");
            if let api::EventData::MessageReceived(r) = event.data {
                return r;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no live message.received\n{}", bob.log_tail()));
    let got = bob_client.message(live.id).await.expect("message.get");
    assert_eq!((got.body.as_str(), got.memory_only), (to_bob, true));
    let sent_id = sent.id;
    until_in_conversation(&alice, &b, |m| {
        m.id == sent_id && m.status == api::MessageStatus::Delivered
    })
    .await;
    let to_alice = "MARKER-e2e-memory-3f90ae: nor of this";
    send(&bob, &a, to_alice).await;
    let reply = until_in_conversation(&alice, &b, |m| m.body == to_alice).await;
    assert!(reply.memory_only);

    for d in [&alice, &bob] {
        nowhere_on_disk(d, &sent);
        nowhere_on_disk(d, &reply);
    }
    // The scan finds what is stored (the contact's name, written at pairing).
    assert!(!where_is(&bob, "Alice").is_empty());

    // A group with history off at Bob's: its membership is stored, its messages are not
    // (Alice, whose setting is on, stores hers).
    let group = two_in_a_group(&alice, &bob, &b, "Off the record").await;
    let off = group_call::<api::method::GroupSetHistory>(
        &bob,
        &api::GroupSetHistory {
            group: group.clone(),
            keep_history: false,
        },
    )
    .await;
    assert!(!off.keep_history);
    let to_group = "MARKER-e2e-group-memory-51c7e2: Bob keeps this in memory";
    group_call::<api::method::GroupSend>(
        &alice,
        &api::GroupSend {
            group: group.clone(),
            body: to_group.into(),
            reply_to: None,
            client_token: None,
        },
    )
    .await;
    let at_bob = group_message_with(&bob, &group, to_group).await;
    assert!(at_bob.memory_only);
    let from_bob = "MARKER-e2e-group-memory-a09d3f: and this";
    let bobs = group_call::<api::method::GroupSend>(
        &bob,
        &api::GroupSend {
            group: group.clone(),
            body: from_bob.into(),
            reply_to: None,
            client_token: None,
        },
    )
    .await;
    assert!(bobs.memory_only);
    let at_alice = group_message_with(&alice, &group, from_bob).await;
    assert!(!at_alice.memory_only);
    assert!(!where_is(&alice, from_bob).is_empty(), "stored at Alice's");
    let deadline = Instant::now() + DELIVERY;
    while group_message_with(&bob, &group, from_bob).await.deliveries[0].status
        != api::DeliveryStatus::Delivered
    {
        assert!(
            Instant::now() < deadline,
            "never acknowledged\n{}",
            bob.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (body, msg_id) in [(to_group, &at_bob.msg_id), (from_bob, &bobs.msg_id)] {
        for needle in [body.as_bytes(), &hex_bytes(msg_id), msg_id.as_bytes()] {
            let found = where_are_bytes(&bob, needle);
            assert!(found.is_empty(), "bob: {body:?} is in {found:?}");
        }
    }

    // A restart forgets it: nothing to find, in the history or on disk.
    bob.stop();
    bob.start();
    bob.up().await;
    let left = conversation(&bob, &a).await;
    assert!(
        left.is_empty(),
        "Bob's restarted daemon still shows {left:?}"
    );
    nowhere_on_disk(&bob, &sent);
    let group_left = group_call::<api::method::GroupHistory>(
        &bob,
        &api::GroupHistory {
            group: group.clone(),
            before: None,
            limit: None,
        },
    )
    .await;
    assert!(group_left.messages.is_empty(), "{:?}", group_left.messages);
    let g = group_until(&bob, &group, "the group after the restart", |_| true).await;
    assert_eq!((g.members.len(), g.keep_history), (2, false));
    assert!(
        !bob.client()
            .await
            .contact(&a)
            .await
            .expect("contact")
            .keep_history
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_profile_is_gone_from_disk_and_a_new_identity_can_be_made() {
    let _serial = serial();
    let root = tempfile::tempdir().expect("dir");
    let alice = Daemon::new(root.path(), "alice", DEFAULT_CONFIG, Some("to be erased"));
    let first = alice.up().await;
    let client = alice.client().await;
    let data = alice.dir.join("data");
    let before: Vec<String> = std::fs::read_dir(&data)
        .expect("data dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(before.iter().any(|n| n == "profile.key"), "{before:?}");

    // Without the exact confirmation nothing happens.
    let refused = client
        .call::<api::method::ProfileErase>(&api::ProfileErase {
            confirm: "erase".into(),
        })
        .await
        .expect_err("a sloppy confirmation is refused");
    assert_eq!(refused.kind(), Some(api::ErrorKind::InvalidParams));
    assert!(data.join("profile.key").exists());
    assert_eq!(client.identity().await.expect("still there").address, first);

    let erased = client.erase_profile().await.expect("erased");
    assert_eq!(
        erased.shredded,
        [data.join("profile.key").display().to_string()]
    );
    assert!(
        erased
            .removed
            .contains(&data.join("profile.db").display().to_string())
    );
    assert!(
        erased
            .removed
            .contains(&data.join("tor").display().to_string())
    );
    let left: Vec<String> = std::fs::read_dir(&data)
        .expect("data dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        ["caromd.lock"],
        "only the running daemon's lock stays"
    );
    let info = client.info().await.expect("info");
    assert_eq!(info.profile, api::ProfileState::None);
    assert_eq!(
        client.identity().await.expect_err("no identity").kind(),
        Some(api::ErrorKind::NoProfile)
    );

    // The daemon carries on: a new profile is a new identity.
    let second = alice.up().await;
    assert_ne!(second, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_on_the_systems_tor_pairs_and_chats_with_one_on_its_own_arti() {
    let _serial = serial();
    let root = tempfile::tempdir().expect("dir");
    // The "system's" tor: a C tor client of the private network with a control port.
    let tor = tokio::task::spawn_blocking(|| {
        carom_testnet::shared()
            .start_ctor_client_with_control()
            .expect("a C tor client with a control port")
    })
    .await
    .expect("started");
    let config = format!(
        "[tor]\nbackend = \"system\"\ncontrol_port = \"{}\"\nsocks_port = \"{}\"\n",
        tor.control_addr().expect("control port"),
        tor.socks_addr()
    );
    let mut alice = Daemon::new(root.path(), "alice", &config, None);
    let bob = Daemon::new(root.path(), "bob", DEFAULT_CONFIG, None);
    let (a, b) = (alice.up().await, bob.up().await);
    pair(&alice, &a, &bob, &b).await;
    let to_bob = send(&alice, &b, "from the system's tor").await;
    delivered(&alice, to_bob.id).await;
    let to_alice = send(&bob, &a, "from arti").await;
    delivered(&bob, to_alice.id).await;
    assert!(
        history(&alice, &b)
            .await
            .iter()
            .any(|(_, body)| body == "from arti")
    );

    // Restarted, Alice's daemon adds the service again and is reached at the same address.
    alice.stop();
    alice.start();
    assert_eq!(alice.up().await, a);
    let again = send(&bob, &a, "still there?").await;
    delivered(&bob, again.id).await;
}

/// `line` with its obfs4 certificate altered by one character.
fn with_wrong_cert(line: &str, cert: &str) -> String {
    let mut wrong: Vec<u8> = cert.bytes().collect();
    wrong[0] = if wrong[0] == b'A' { b'B' } else { b'A' };
    line.replace(cert, std::str::from_utf8(&wrong).expect("base64 is ascii"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_behind_an_obfs4_bridge_says_when_it_is_stuck_takes_bridges_through_the_api_and_chats()
 {
    use api::method as m;
    let _serial = serial();
    let root = tempfile::tempdir().expect("dir");
    let bridge = tokio::task::spawn_blocking(|| {
        carom_testnet::shared()
            .start_obfs4_bridge()
            .expect("an obfs4 bridge on the private network")
    })
    .await
    .expect("started");
    let right = bridge.bridge_line();
    let wrong = with_wrong_cert(&right, bridge.cert());

    // caromd.toml gives a bridge line with a mistyped certificate: nothing gets through, and
    // the status says so (after the 30 s stall bound) and points at the bridge line.
    let config = format!("[tor]\nbridges = [\"{wrong}\"]\n");
    let mut alice = Daemon::new(root.path(), "alice", &config, None);
    let bob = Daemon::new(root.path(), "bob", DEFAULT_CONFIG, None);
    let client = alice.client().await;
    client
        .create_profile(&api::ProfileCreate {
            passphrase: None,
            no_passphrase: true,
        })
        .await
        .expect("profile created");
    let b = bob.up().await;
    let bridges = client
        .call::<m::TorBridges>(&api::Empty {})
        .await
        .expect("tor.bridges");
    assert_eq!(bridges.source, api::BridgeSource::Config);
    assert_eq!(bridges.lines, vec![wrong.clone()]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let stalled = loop {
        let tor = client.tor_status().await.expect("tor status");
        assert!(
            !tor.ready,
            "ready through a bridge with a wrong certificate: {tor:?}"
        );
        if tor.bootstrap_stalled {
            break tor;
        }
        assert!(Instant::now() < deadline, "no stall reported: {tor:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("stalled: {stalled:?}");
    assert_eq!(stalled.bridges, 1);
    let problem = stalled.last_error.expect("a stall says why");
    assert!(
        problem.contains("configured bridge") && problem.contains("cert="),
        "{problem}"
    );

    // Bad lines are refused with the reason, and change nothing.
    let refused = client
        .call::<m::TorSetBridges>(&api::TorSetBridges {
            lines: Some(vec!["obfs4 127.0.0.1:1 not-a-fingerprint".into()]),
        })
        .await
        .expect_err("a malformed line");
    assert_eq!(refused.kind(), Some(api::ErrorKind::InvalidParams));
    assert!(refused.to_string().contains("bridge line 1"), "{refused}");

    // The corrected line, through the API: kept in the profile; arti takes a new line for a
    // bridge it already knows only at start, and the result says so.
    let set = client
        .call::<m::TorSetBridges>(&api::TorSetBridges {
            lines: Some(vec![right.clone()]),
        })
        .await
        .expect("tor.set_bridges");
    assert_eq!(set.source, api::BridgeSource::Profile);
    assert_eq!(set.at_next_start, vec![1]);
    drop(client);

    // Restarted, the profile's line wins over caromd.toml's, and Alice is online through the
    // bridge: she pairs with Bob, on the open network, and they chat.
    alice.stop();
    alice.start();
    let a = alice.up().await;
    let client = alice.client().await;
    let bridges = client
        .call::<m::TorBridges>(&api::Empty {})
        .await
        .expect("tor.bridges");
    assert_eq!(bridges.source, api::BridgeSource::Profile);
    assert_eq!(bridges.lines, vec![right.clone()]);
    assert_eq!(client.tor_status().await.expect("status").bridges, 1);
    pair(&alice, &a, &bob, &b).await;
    let to_bob = send(&alice, &b, "through the bridge").await;
    delivered(&alice, to_bob.id).await;
    let to_alice = send(&bob, &a, "back to the bridged one").await;
    delivered(&bob, to_alice.id).await;

    // Back to caromd.toml's (wrong) line through the API: null forgets the profile's lines.
    let set = client
        .call::<m::TorSetBridges>(&api::TorSetBridges { lines: None })
        .await
        .expect("tor.set_bridges null");
    assert_eq!(set.source, api::BridgeSource::Config);
    assert_eq!(set.lines, vec![wrong]);
    assert_eq!(set.at_next_start, vec![1]);
}

#[test]
fn caromd_refuses_to_start_on_an_unusable_bridge_line_and_says_which() {
    let root = tempfile::tempdir().expect("dir");
    for (config, expected) in [
        (
            "[tor]\nbridges = [\"obfs4 192.0.2.3:443 nothex cert=x iat-mode=0\"]\n",
            "bridge line 1 is not a valid bridge line",
        ),
        (
            "[tor]\nbridges = [\"obfs4 192.0.2.3:443 0123456789ABCDEF0123456789ABCDEF01234567 cert=x iat-mode=0\"]\n\
             [tor.transport_programs]\nobfs4 = \"/nonexistent/obfs4proxy\"\n",
            "/nonexistent/obfs4proxy",
        ),
    ] {
        let file = root.path().join("caromd.toml");
        std::fs::write(&file, config).expect("config");
        let out = Command::new(env!("CARGO_BIN_EXE_caromd"))
            .arg("--config")
            .arg(&file)
            .arg("--data-dir")
            .arg(root.path().join("data"))
            .arg("--runtime-dir")
            .arg(root.path().join("run"))
            .output()
            .expect("caromd runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!root.path().join("data").exists(), "nothing is created");
    }
}
