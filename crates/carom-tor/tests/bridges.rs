//! The arti backend entering Tor only through a bridge with the obfs4 pluggable transport: an
//! unlisted C tor bridge of the private network on 127.0.0.1 whose obfs4 server is Debian's
//! `obfs4proxy` (carom-testnet), and arti running `obfs4proxy` as its client transport. The
//! conformance suite through the bridge, and what only bridges have to show.

#![allow(
    clippy::print_stdout,
    reason = "the tests report the figures they measure"
)]

mod conformance;

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use carom_proto::IdentityKey;
use carom_testnet::{Obfs4Bridge, TestNetwork};
use carom_tor::{
    ArtiConfig, ArtiTransport, BridgeError, Bridges, ServiceState, TorNetwork, Transport,
    TransportError,
};
use tempfile::TempDir;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Tests running at once (each starts two or three arti clients, on two cores).
static GATE: Semaphore = Semaphore::const_new(3);

/// Bound for a fresh transport to bootstrap through the bridge and publish its service.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Bound for reaching a published service, retries included (a dial that straddles one of the
/// network's time-period rotations can fail once).
const REACH_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a bootstrap may sit still before it counts as stalled, in these tests.
const STALL_AFTER: Duration = Duration::from_secs(5);

/// The bridge: started once on the shared network, stopped with this process.
fn bridge() -> &'static Obfs4Bridge<'static> {
    static BRIDGE: OnceLock<Obfs4Bridge<'static>> = OnceLock::new();
    BRIDGE.get_or_init(|| {
        carom_testnet::shared()
            .start_obfs4_bridge()
            .expect("an obfs4 bridge starts on the private network")
    })
}

fn bridges(lines: Vec<String>) -> Bridges {
    Bridges {
        lines,
        ..Bridges::default()
    }
}

/// Settings for a transport on the private network through `lines` (none: directly).
fn config(net: &TestNetwork, dir: &std::path::Path, lines: Vec<String>) -> ArtiConfig {
    let mut config = ArtiConfig::new(dir);
    config.network = TorNetwork::Custom(net.arti_config());
    config.bridges = bridges(lines);
    config.bootstrap_stall_after = STALL_AFTER;
    config
}

/// Wait until `t` has bootstrapped and published its service.
async fn wait_ready(t: &ArtiTransport) -> Duration {
    conformance::wait_published(t, READY_TIMEOUT).await
}

/// Wait until `t` reports its bootstrap stalled; returns that status.
async fn wait_stalled(t: &ArtiTransport) -> carom_tor::TransportStatus {
    let mut status = t.status();
    let stalled = tokio::time::timeout(STALL_AFTER * 6, status.wait_for(|s| s.bootstrap.stalled))
        .await
        .unwrap_or_else(|_| panic!("no stall reported: {:?}", *t.status().borrow()))
        .expect("status")
        .clone();
    println!("stalled: {stalled:?}");
    stalled
}

struct ThroughBridge {
    net: &'static TestNetwork,
    dirs: Mutex<Vec<TempDir>>,
    _permit: SemaphorePermit<'static>,
}

impl ThroughBridge {
    async fn new() -> ThroughBridge {
        conformance::init_logging();
        let permit = GATE.acquire().await.expect("gate");
        let net = tokio::task::spawn_blocking(|| {
            bridge();
            carom_testnet::shared()
        })
        .await
        .expect("network and bridge start");
        ThroughBridge {
            net,
            dirs: Mutex::new(Vec::new()),
            _permit: permit,
        }
    }

    fn dir(&self) -> PathBuf {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        self.dirs.lock().expect("dirs").push(dir);
        path
    }

    async fn start(&self, lines: Vec<String>, id: &IdentityKey) -> ArtiTransport {
        let t = ArtiTransport::start(config(self.net, &self.dir(), lines), id)
            .await
            .expect("arti transport starts");
        let took = wait_ready(&t).await;
        println!(
            "transport bootstrapped and published in {:.2} s",
            took.as_secs_f64()
        );
        t
    }
}

impl conformance::Harness for ThroughBridge {
    type T = ArtiTransport;

    async fn transport(&self) -> (ArtiTransport, IdentityKey) {
        let id = IdentityKey::generate(&mut rand::thread_rng());
        let t = self.start(vec![bridge().bridge_line()], &id).await;
        (t, id)
    }

    fn reach_bound(&self) -> Duration {
        REACH_TIMEOUT
    }

    fn not_found_bound(&self) -> Duration {
        Duration::from_secs(90)
    }

    fn set_network_enabled(&self, transport: &ArtiTransport, enabled: bool) {
        transport.set_network_enabled(enabled);
    }
}

conformance_suite!(ThroughBridge::new().await);

/// The obfs4proxy processes that are children of this test process: arti's client transport.
fn our_obfs4proxies() -> Vec<u32> {
    carom_testnet::children_named(std::process::id(), "obfs4proxy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_behind_only_the_bridge_and_one_on_the_open_network_reach_each_other() {
    let h = ThroughBridge::new().await;
    let behind_id = IdentityKey::generate(&mut rand::thread_rng());
    let open_id = IdentityKey::generate(&mut rand::thread_rng());
    let (behind, open) = tokio::join!(
        h.start(vec![bridge().bridge_line()], &behind_id),
        h.start(Vec::new(), &open_id),
    );
    assert_eq!(behind.status().borrow().bridges, 1);
    assert_eq!(open.status().borrow().bridges, 0);
    // arti runs obfs4proxy as its client transport: the bridge is really used.
    assert!(
        !our_obfs4proxies().is_empty(),
        "arti started no obfs4proxy client"
    );

    // Both directions: the bridged client dials out, and is dialled at its own service.
    for (from, to) in [(&behind, &open), (&open, &behind)] {
        let payload = b"through the bridge";
        let peer = to.address();
        let (mut out, mut inc) = tokio::join!(
            conformance::dial_retry(from, &peer, REACH_TIMEOUT),
            conformance::accept_within(to, REACH_TIMEOUT),
        );
        conformance::send(&mut out, payload).await;
        assert_eq!(conformance::receive(&mut inc, payload.len()).await, payload);
    }

    // With the bridge frozen, the bridged client can open no new path; the open one can.
    let frozen = h
        .net
        .freeze(&[bridge().pid()], Duration::from_secs(60))
        .expect("the bridge freezes");
    behind.forget_path(&open.address());
    let started = Instant::now();
    let cut = tokio::time::timeout(Duration::from_secs(20), behind.dial(&open.address())).await;
    assert!(
        !matches!(cut, Ok(Ok(_))),
        "a new path opened with the only bridge frozen"
    );
    println!(
        "with the bridge frozen, a fresh dial failed or hung for {:.1} s",
        started.elapsed().as_secs_f64()
    );
    frozen.thaw();
    behind.shutdown().await;
    open.shutdown().await;
}

/// A second bridge, for switching bridges while arti runs.
fn second_bridge() -> &'static Obfs4Bridge<'static> {
    static BRIDGE: OnceLock<Obfs4Bridge<'static>> = OnceLock::new();
    BRIDGE.get_or_init(|| {
        carom_testnet::shared()
            .start_obfs4_bridge()
            .expect("a second obfs4 bridge starts on the private network")
    })
}

/// `line` with its obfs4 certificate altered by one character.
fn with_wrong_cert(line: &str, cert: &str) -> String {
    let mut wrong: Vec<u8> = cert.bytes().collect();
    wrong[0] = if wrong[0] == b'A' { b'B' } else { b'A' };
    let wrong = line.replace(cert, std::str::from_utf8(&wrong).expect("base64 is ascii"));
    assert_ne!(wrong, line);
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_obfs4_certificate_stalls_with_a_clear_error_and_other_bridges_fix_it_live() {
    let h = ThroughBridge::new().await;
    let id = IdentityKey::generate(&mut rand::thread_rng());
    let other = tokio::task::spawn_blocking(|| second_bridge().bridge_line())
        .await
        .expect("the second bridge starts");
    // The bridge under another certificate: obfs4's handshake authenticates the server with
    // it, so nothing gets through.
    let right = bridge().bridge_line();
    let wrong = with_wrong_cert(&right, bridge().cert());
    let t = ArtiTransport::start(config(h.net, &h.dir(), vec![wrong]), &id)
        .await
        .expect("arti starts (a bridge is only tried once it runs)");
    let stalled = wait_stalled(&t).await;
    assert!(!stalled.bootstrap.ready);
    assert_eq!(stalled.service, ServiceState::Launching);
    let error = stalled.last_error.expect("a stall says why");
    assert!(
        error.contains("through the 1 configured bridge") && error.contains("cert="),
        "{error}"
    );

    // Another bridge, set while arti runs: the stuck bootstrap carries on through it.
    let applied = t.set_bridges(bridges(vec![other])).expect("valid bridges");
    assert!(applied.at_next_start.is_empty(), "{applied:?}");
    let took = wait_ready(&t).await;
    println!(
        "with another bridge set at run time: ready and published in {:.2} s",
        took.as_secs_f64()
    );
    assert!(!t.status().borrow().bootstrap.stalled);

    // The first bridge's corrected line: arti holds that bridge under its first line until
    // it restarts, and says so.
    let applied = t
        .set_bridges(bridges(vec![second_bridge().bridge_line(), right]))
        .expect("valid bridges");
    assert_eq!(applied.at_next_start, vec![2]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_used_under_another_line_before_is_used_under_its_new_one_after_a_restart() {
    let h = ThroughBridge::new().await;
    let id = IdentityKey::generate(&mut rand::thread_rng());
    let dir = h.dir();
    // First as a plain bridge (its ORPort): arti samples it as a guard under that channel.
    let t = ArtiTransport::start(config(h.net, &dir, vec![bridge().plain_bridge_line()]), &id)
        .await
        .expect("starts");
    wait_ready(&t).await;
    t.shutdown().await;
    drop(t);
    let guards = std::fs::read_to_string(dir.join("tor/state/state/guards.json"))
        .expect("arti saved its guards");
    assert!(
        guards.contains(&bridge().plain_bridge_line()[..15]),
        "{guards}"
    );
    // Then the same bridge through obfs4: without Carom resetting that guard, arti would never
    // use the bridge again.
    let t = ArtiTransport::start(config(h.net, &dir, vec![bridge().bridge_line()]), &id)
        .await
        .expect("restarts");
    let took = wait_ready(&t).await;
    println!(
        "restarted with the bridge's obfs4 line: ready in {:.2} s",
        took.as_secs_f64()
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_that_cannot_be_reached_stalls_and_the_status_points_to_bridges() {
    let h = ThroughBridge::new().await;
    let id = IdentityKey::generate(&mut rand::thread_rng());
    // The network's directory caches at ports where nothing listens: as where Tor's relays
    // are blocked, arti gets no connection at all.
    let mut blocked = h.net.arti_config();
    for node in h.net.nodes() {
        if let Some(port) = node.or_port {
            blocked = blocked.replace(&format!("127.0.0.1:{port}\""), "127.0.0.1:9\"");
        }
    }
    assert_ne!(blocked, h.net.arti_config());
    let mut config = config(h.net, &h.dir(), Vec::new());
    config.network = TorNetwork::Custom(blocked);
    let t = ArtiTransport::start(config, &id)
        .await
        .expect("arti starts");
    let stalled = wait_stalled(&t).await;
    assert_eq!(stalled.bridges, 0);
    let error = stalled.last_error.expect("a stall says why");
    assert!(
        error.contains("If Tor is blocked") && error.contains("carom tor bridges set"),
        "{error}"
    );
    // (Not shut down: arti 0.47 never releases a service that never bootstrapped, see
    // docs/tor.md; its directory is this test's own.)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_bridge_settings_are_refused_before_anything_changes() {
    let h = ThroughBridge::new().await;
    let id = IdentityKey::generate(&mut rand::thread_rng());
    let e = ArtiTransport::start(
        config(h.net, &h.dir(), vec!["obfs4 127.0.0.1:1 nothex".into()]),
        &id,
    )
    .await
    .expect_err("a malformed line");
    assert!(
        matches!(
            e,
            TransportError::Bridges(BridgeError::Malformed { number: 1, .. })
        ),
        "{e}"
    );
    let mut missing = config(h.net, &h.dir(), vec![bridge().bridge_line()]);
    missing
        .bridges
        .transport_programs
        .insert("obfs4".into(), PathBuf::from("/nonexistent/obfs4proxy"));
    let e = ArtiTransport::start(missing, &id)
        .await
        .expect_err("a missing program");
    assert!(e.to_string().contains("/nonexistent/obfs4proxy"), "{e}");

    // At run time: a bad line changes nothing.
    let t = h.start(vec![bridge().bridge_line()], &id).await;
    let e = t
        .set_bridges(bridges(vec!["192.0.2.1:9001".into()]))
        .expect_err("no fingerprint");
    assert!(
        matches!(e, TransportError::Bridges(BridgeError::Malformed { .. })),
        "{e}"
    );
    assert_eq!(t.status().borrow().bridges, 1);
    t.shutdown().await;
}
