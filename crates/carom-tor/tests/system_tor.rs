//! The system-tor backend against a real C tor: a client of the private Tor network on
//! 127.0.0.1 (carom-testnet) with a control port (cookie authentication) and a SOCKS port,
//! shared by the transports of this binary as a system's tor is shared by its programs. The
//! conformance suite, and what only this backend has to show.

#![allow(
    clippy::print_stdout,
    reason = "the tests report the figures they measure"
)]

mod conformance;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use carom_proto::IdentityKey;
use carom_testnet::CtorClient;
use carom_tor::{
    ControlAuth, ServiceState, SystemTorConfig, SystemTorTransport, Transport, TransportErrorKind,
};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Tests running at once (each adds two or three onion services to the one tor).
static GATE: Semaphore = Semaphore::const_new(3);

/// Bound for a fresh service to be published.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Bound for reaching a published service, retries included (a dial that straddles one of the
/// network's time-period rotations can fail once).
const REACH_TIMEOUT: Duration = Duration::from_secs(180);

/// The "system's" tor: started once, stopped with this process (its torrc names us as its
/// owning controller).
fn system_tor() -> &'static CtorClient<'static> {
    static TOR: OnceLock<CtorClient<'static>> = OnceLock::new();
    TOR.get_or_init(|| {
        carom_testnet::shared()
            .start_ctor_client_with_control()
            .expect("a C tor client with a control port starts on the private network")
    })
}

fn config() -> SystemTorConfig {
    let tor = system_tor();
    SystemTorConfig {
        control: tor.control_addr().expect("started with a control port"),
        socks: tor.socks_addr(),
        ..SystemTorConfig::default()
    }
}

async fn wait_published(t: &SystemTorTransport) -> Duration {
    let started = Instant::now();
    let mut status = t.status();
    tokio::time::timeout(
        READY_TIMEOUT,
        status.wait_for(|s| s.bootstrap.ready && matches!(s.service, ServiceState::Published)),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "not published in {READY_TIMEOUT:?}: {:?}",
            *t.status().borrow()
        )
    })
    .expect("status sender alive");
    started.elapsed()
}

struct SystemTor {
    _permit: SemaphorePermit<'static>,
}

impl SystemTor {
    async fn new() -> SystemTor {
        let permit = GATE.acquire().await.expect("gate");
        tokio::task::spawn_blocking(system_tor)
            .await
            .expect("tor starts");
        SystemTor { _permit: permit }
    }
}

impl conformance::Harness for SystemTor {
    type T = SystemTorTransport;

    async fn transport(&self) -> (SystemTorTransport, IdentityKey) {
        let id = IdentityKey::generate(&mut rand::thread_rng());
        let t = SystemTorTransport::start(config(), &id)
            .await
            .expect("the service is added to the system's tor");
        let took = wait_published(&t).await;
        println!("service published in {:.2} s", took.as_secs_f64());
        (t, id)
    }

    fn reach_bound(&self) -> Duration {
        REACH_TIMEOUT
    }

    fn not_found_bound(&self) -> Duration {
        Duration::from_secs(90)
    }

    fn set_network_enabled(&self, transport: &SystemTorTransport, enabled: bool) {
        transport.set_network_enabled(enabled);
    }
}

conformance_suite!(SystemTor::new().await);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_cookie_is_refused_with_an_error_that_says_so() {
    let _h = SystemTor::new().await;
    let id = IdentityKey::generate(&mut rand::thread_rng());
    let wrong_cookie = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(wrong_cookie.path(), [7u8; 32]).expect("written");
    let e = SystemTorTransport::start(
        SystemTorConfig {
            auth: ControlAuth::CookieFile(wrong_cookie.path().to_owned()),
            ..config()
        },
        &id,
    )
    .await
    .err()
    .expect("a cookie tor did not write is refused");
    println!("{e}");
    assert!(e.to_string().contains("not the tor that wrote it"), "{e}");
    let e = SystemTorTransport::start(
        SystemTorConfig {
            auth: ControlAuth::Password("guess".into()),
            ..config()
        },
        &id,
    )
    .await
    .err()
    .expect("a password is refused where tor takes none");
    assert!(e.to_string().contains("does not take a password"), "{e}");
    // Nothing is listening here: a clear error naming the port.
    let e = SystemTorTransport::start(
        SystemTorConfig {
            control: "127.0.0.1:1".parse().expect("addr"),
            ..config()
        },
        &id,
    )
    .await
    .err()
    .expect("no control port");
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_is_the_identitys_and_is_gone_from_tor_after_shutdown() {
    let _h = SystemTor::new().await;
    let id = IdentityKey::generate(&mut rand::thread_rng());
    let t = SystemTorTransport::start(config(), &id)
        .await
        .expect("started");
    assert_eq!(t.address(), id.address());
    // The same key twice on one tor is refused, with tor's reason.
    let e = SystemTorTransport::start(config(), &id)
        .await
        .err()
        .expect("a second service with the same key");
    assert_eq!(e.kind(), TransportErrorKind::Other);
    assert!(e.to_string().contains("adding the onion service"), "{e}");
    t.shutdown().await;
    // Once shut down, the key is free again.
    let again = SystemTorTransport::start(config(), &id)
        .await
        .expect("the key can be used again");
    again.shutdown().await;
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_key_never_reaches_tors_data_directory() {
    let h = SystemTor::new().await;
    let (t, id) = conformance::Harness::transport(&h).await;
    let dir = system_tor().data_dir();
    // The scan looks where tor writes: its state is there.
    assert!(
        dir.join("state").exists(),
        "{} is tor's data directory",
        dir.display()
    );
    let seed = id.seed();
    assert!(
        files_holding(dir, &seed[..]).is_empty(),
        "the seed is on disk"
    );
    let public = id.address().public_key();
    assert!(
        files_holding(dir, &public[..]).is_empty(),
        "tor wrote our service's public key (a hs_ed25519 file) to disk"
    );
    let expanded = {
        use tor_llcrypto::pk::ed25519;
        ed25519::ExpandedKeypair::from(&ed25519::Keypair::from_bytes(&seed)).to_secret_key_bytes()
    };
    assert!(
        files_holding(dir, &expanded[..32]).is_empty(),
        "the expanded secret key is on disk"
    );
    t.shutdown().await;
}

/// A peer whose daemon stopped while its tor runs on (the everyday case with a system tor):
/// our open circuit to it now refuses streams, and a dial must still say "not found, try
/// later", not "refused" (which the engine would never retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gone_from_a_tor_that_still_runs_is_not_found_not_refused() {
    let h = SystemTor::new().await;
    let (a, _) = conformance::Harness::transport(&h).await;
    let (b, _) = conformance::Harness::transport(&h).await;
    let address = b.address();
    let (s, _accepted) = tokio::join!(
        conformance::dial_retry(&a, &address, REACH_TIMEOUT),
        conformance::accept_within(&b, REACH_TIMEOUT)
    );
    drop(s);
    b.shutdown().await;
    drop(b);
    // Right after DEL_ONION the service's introduction circuits are still closing in this
    // same tor; an introduction sent in that window goes unanswered until tor gives up (120 s,
    // a Timeout, which the assertion accepts too). A peer gone a few seconds ago is refused at
    // its introduction points at once; wait that long so the test stays short.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let started = Instant::now();
    let error = a.dial(&address).await.expect_err("the peer is gone");
    println!(
        "dial on a known path to a peer gone from its tor failed in {:.2} s: {error}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        matches!(
            error.kind(),
            TransportErrorKind::PeerNotFound | TransportErrorKind::Timeout
        ),
        "{error}"
    );
    assert!(error.retryable());
    a.shutdown().await;
}
