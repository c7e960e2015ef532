//! The transport conformance suite: what every [`Transport`] backend must do, written once.
//!
//! A backend's test binary implements [`Harness`] and expands [`conformance_suite!`] with it.
//! The loopback backend runs it in `tests/loopback.rs`, arti over the private Tor network in
//! `tests/over_tor.rs`.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::future::Future;
use std::time::{Duration, Instant};

use carom_proto::{IdentityKey, OnionAddress};
use carom_tor::{ServiceState, Transport, TransportError, TransportErrorKind};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Creates transports of one backend.
pub(crate) trait Harness: Sync {
    /// The backend.
    type T: Transport;

    /// A new transport with a fresh identity, online and (as far as the backend can tell)
    /// reachable by the others. Returns the identity too.
    fn transport(&self) -> impl Future<Output = (Self::T, IdentityKey)> + Send;

    /// How long reaching a freshly started transport may take, retries included.
    fn reach_bound(&self) -> Duration;

    /// How long a dial to an address that is not online may take to fail.
    fn not_found_bound(&self) -> Duration;

    /// Switch a transport's dialling off or on.
    fn set_network_enabled(&self, transport: &Self::T, enabled: bool);
}

/// Log through the test harness's writer, filtered by `RUST_LOG`.
pub(crate) fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Wait until `t` has bootstrapped and published its service, within `bound`; returns how
/// long that took. Past launching is enough: a descriptor is out (on the private network
/// arti's publisher reports "degraded" even when reachable: it sees a single time-period ring).
pub(crate) async fn wait_published<T: Transport>(t: &T, bound: Duration) -> Duration {
    let started = Instant::now();
    let mut status = t.status();
    tokio::time::timeout(
        bound,
        status.wait_for(|s| {
            s.bootstrap.ready
                && matches!(
                    s.service,
                    ServiceState::Published
                        | ServiceState::Reachable
                        | ServiceState::Degraded { .. }
                )
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("not ready in {bound:?}: {:?}", *t.status().borrow()))
    .expect("status sender alive");
    started.elapsed()
}

/// Dial `peer` from `from`, retrying retryable failures with backoff until `bound`.
pub(crate) async fn dial_retry<T: Transport>(
    from: &T,
    peer: &OnionAddress,
    bound: Duration,
) -> T::Stream {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(200);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match from.dial(peer).await {
            Ok(stream) => return stream,
            Err(e) if e.retryable() && started.elapsed() < bound => {
                println!(
                    "dial attempt {attempts} failed ({}): {e}; retrying",
                    e.kind()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                panic!("could not reach the peer within {bound:?} ({attempts} attempts): {e}")
            }
        }
    }
}

/// Accept one stream, within `bound`.
pub(crate) async fn accept_within<T: Transport>(t: &T, bound: Duration) -> T::Stream {
    tokio::time::timeout(bound, t.accept())
        .await
        .expect("an incoming stream arrives in time")
        .expect("the transport is running")
}

/// Write all of `data` and flush.
pub(crate) async fn send<S: AsyncWrite + Unpin>(stream: &mut S, data: &[u8]) {
    stream.write_all(data).await.expect("write");
    stream.flush().await.expect("flush");
}

/// Read exactly `len` bytes, within 60 s.
pub(crate) async fn receive<S: AsyncRead + Unpin>(stream: &mut S, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(60), stream.read_exact(&mut buf))
        .await
        .expect("data arrives in time")
        .expect("read");
    buf
}

/// Echo until the stream ends, flushing after every read.
pub(crate) async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut buf = vec![0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Whether the other side's close shows up as end-of-stream or an error within `bound`.
pub(crate) async fn sees_close<S: AsyncRead + Unpin>(stream: &mut S, bound: Duration) -> bool {
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let step = u8::try_from(i % 251).expect("below 251");
            seed.wrapping_mul(31).wrapping_add(step)
        })
        .collect()
}

/// The transport serves its identity's address.
pub(crate) async fn address_is_the_identitys<H: Harness>(h: &H) {
    let (t, id) = h.transport().await;
    assert_eq!(t.address(), id.address());
    assert!(t.status().borrow().bootstrap.ready);
    t.shutdown().await;
}

/// A dial is accepted on the other side, and bytes go both ways, small and large.
pub(crate) async fn dial_and_accept_carry_bytes_both_ways<H: Harness>(h: &H) {
    let (a, _) = h.transport().await;
    let (b, _) = h.transport().await;
    let b_address = b.address();
    let (mut outgoing, mut incoming) = tokio::join!(
        dial_retry(&a, &b_address, h.reach_bound()),
        accept_within(&b, h.reach_bound()),
    );
    send(&mut outgoing, b"ping").await;
    assert_eq!(receive(&mut incoming, 4).await, b"ping");
    send(&mut incoming, b"pong!").await;
    assert_eq!(receive(&mut outgoing, 5).await, b"pong!");

    // 200 KB each way at the same time: more than a flow-control window over Tor.
    let big_a = pattern(1, 200_000);
    let big_b = pattern(2, 200_000);
    let (mut out_read, mut out_write) = tokio::io::split(outgoing);
    let (mut in_read, mut in_write) = tokio::io::split(incoming);
    let ((), (), got_at_b, got_at_a) = tokio::join!(
        send(&mut out_write, &big_a),
        send(&mut in_write, &big_b),
        receive(&mut in_read, big_a.len()),
        receive(&mut out_read, big_b.len()),
    );
    assert!(got_at_b == big_a, "A→B bytes differ");
    assert!(got_at_a == big_b, "B→A bytes differ");
    a.shutdown().await;
    b.shutdown().await;
}

/// Twenty streams at once between the same two transports, each with its own bytes.
pub(crate) async fn many_concurrent_streams<H: Harness>(h: &H) {
    const STREAMS: u8 = 20;
    let (a, _) = h.transport().await;
    let (b, _) = h.transport().await;
    let b_address = b.address();
    let b = std::sync::Arc::new(b);
    let server = {
        let b = std::sync::Arc::clone(&b);
        tokio::spawn(async move {
            for _ in 0..STREAMS {
                let Some(stream) = b.accept().await else {
                    return;
                };
                tokio::spawn(echo(stream));
            }
        })
    };
    // The first dial may have to wait for publication; after it the rest run at once.
    let mut first = dial_retry(&a, &b_address, h.reach_bound()).await;
    send(&mut first, b"warm").await;
    assert_eq!(receive(&mut first, 4).await, b"warm");
    let started = Instant::now();
    let address = b.address();
    let results = futures::future::join_all((1..STREAMS).map(|i| {
        let a = &a;
        async move {
            let mut s = dial_retry(a, &address, h.reach_bound()).await;
            let payload = pattern(i, 1000 + usize::from(i) * 100);
            send(&mut s, &payload).await;
            let back = receive(&mut s, payload.len()).await;
            back == payload
        }
    }))
    .await;
    assert!(
        results.iter().all(|ok| *ok),
        "every stream echoes its own bytes"
    );
    println!(
        "{} concurrent streams opened and echoed in {:.2} s",
        STREAMS - 1,
        started.elapsed().as_secs_f64()
    );
    drop(first);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server accepted every stream")
        .expect("server task");
    a.shutdown().await;
    b.shutdown().await;
}

/// A dial to an address nobody serves fails, as `PeerNotFound`, within a bound.
pub(crate) async fn dial_to_an_address_not_online_is_peer_not_found<H: Harness>(h: &H) {
    let (a, _) = h.transport().await;
    let nobody = IdentityKey::generate(&mut rand::thread_rng()).address();
    let started = Instant::now();
    let error = a.dial(&nobody).await.err().expect("nobody answers");
    let elapsed = started.elapsed();
    println!(
        "dial to an address never online failed in {:.2} s: {error}",
        elapsed.as_secs_f64()
    );
    assert_eq!(error.kind(), TransportErrorKind::PeerNotFound, "{error}");
    assert!(error.retryable());
    assert!(
        elapsed < h.not_found_bound(),
        "took {elapsed:?}, bound {:?}",
        h.not_found_bound()
    );
    assert!(!error.to_string().contains(&nobody.without_suffix()));
    a.shutdown().await;
}

/// A peer that was reachable and shut down is reported as not found (or a timeout).
pub(crate) async fn dial_to_a_peer_that_went_offline_fails_in_time<H: Harness>(h: &H) {
    let (a, _) = h.transport().await;
    let (b, _) = h.transport().await;
    let address = b.address();
    let (s, _accepted) = tokio::join!(
        dial_retry(&a, &address, h.reach_bound()),
        accept_within(&b, h.reach_bound())
    );
    drop(s);
    b.shutdown().await;
    drop(b);
    // A fresh dialler, so nothing is cached from the first connection.
    let (c, _) = h.transport().await;
    let started = Instant::now();
    let error: TransportError = c.dial(&address).await.err().expect("the peer is gone");
    let elapsed = started.elapsed();
    println!(
        "dial to a peer that went offline failed in {:.2} s: {error}",
        elapsed.as_secs_f64()
    );
    assert!(
        matches!(
            error.kind(),
            TransportErrorKind::PeerNotFound | TransportErrorKind::Timeout
        ),
        "{error}"
    );
    assert!(error.retryable());
    assert!(elapsed < h.not_found_bound());
    a.shutdown().await;
    c.shutdown().await;
}

/// Closing a stream is seen by the other side, in both directions.
pub(crate) async fn closing_either_side_is_seen_by_the_other<H: Harness>(h: &H) {
    let (a, _) = h.transport().await;
    let (b, _) = h.transport().await;
    let b_address = b.address();
    let bound = Duration::from_secs(30);

    // The dialler shuts its stream down.
    let (mut outgoing, mut incoming) = tokio::join!(
        dial_retry(&a, &b_address, h.reach_bound()),
        accept_within(&b, h.reach_bound())
    );
    send(&mut outgoing, b"x").await;
    assert_eq!(receive(&mut incoming, 1).await, b"x");
    outgoing.shutdown().await.expect("shutdown");
    drop(outgoing);
    assert!(
        sees_close(&mut incoming, bound).await,
        "acceptor sees the close"
    );

    // The acceptor just drops its stream.
    let (mut outgoing, mut incoming) = tokio::join!(
        dial_retry(&a, &b_address, h.reach_bound()),
        accept_within(&b, h.reach_bound())
    );
    send(&mut outgoing, b"y").await;
    assert_eq!(receive(&mut incoming, 1).await, b"y");
    drop(incoming);
    assert!(
        sees_close(&mut outgoing, bound).await,
        "dialler sees the drop"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// With networking disabled a dial fails at once with `NetworkDisabled`; re-enabled, it works.
pub(crate) async fn disabled_network_fails_fast_and_recovers<H: Harness>(h: &H) {
    let (a, _) = h.transport().await;
    let (b, _) = h.transport().await;
    let b_address = b.address();
    h.set_network_enabled(&a, false);
    let started = Instant::now();
    let error = a.dial(&b_address).await.err().expect("network is off");
    assert_eq!(error.kind(), TransportErrorKind::NetworkDisabled, "{error}");
    assert!(!error.retryable());
    assert!(started.elapsed() < Duration::from_secs(1));
    h.set_network_enabled(&a, true);
    let (mut s, mut incoming) = tokio::join!(
        dial_retry(&a, &b_address, h.reach_bound()),
        accept_within(&b, h.reach_bound())
    );
    send(&mut s, b"back").await;
    assert_eq!(receive(&mut incoming, 4).await, b"back");
    a.shutdown().await;
    b.shutdown().await;
}

/// After shutdown, `accept` returns `None` (also for a waiting caller) and dials fail with
/// `Shutdown`.
pub(crate) async fn shutdown_ends_accept_and_dials<H: Harness>(h: &H) {
    let (a, _) = h.transport().await;
    let a = std::sync::Arc::new(a);
    let waiting = {
        let a = std::sync::Arc::clone(&a);
        tokio::spawn(async move { a.accept().await.is_none() })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), a.shutdown())
        .await
        .expect("shutdown completes");
    println!("shutdown took {:.2} s", started.elapsed().as_secs_f64());
    assert!(
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting accept returns")
            .expect("task"),
        "accept returned a stream after shutdown"
    );
    assert!(a.accept().await.is_none());
    let someone = IdentityKey::generate(&mut rand::thread_rng()).address();
    let error = a.dial(&someone).await.err().expect("shut down");
    assert_eq!(error.kind(), TransportErrorKind::Shutdown);
    a.shutdown().await; // idempotent
}

/// One test function per conformance case, for a harness built by `$make`.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn address_is_the_identitys() {
            let h = $make;
            conformance::address_is_the_identitys(&h).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn dial_and_accept_carry_bytes_both_ways() {
            let h = $make;
            conformance::dial_and_accept_carry_bytes_both_ways(&h).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn many_concurrent_streams() {
            let h = $make;
            conformance::many_concurrent_streams(&h).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn dial_to_an_address_not_online_is_peer_not_found() {
            let h = $make;
            conformance::dial_to_an_address_not_online_is_peer_not_found(&h).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn dial_to_a_peer_that_went_offline_fails_in_time() {
            let h = $make;
            conformance::dial_to_a_peer_that_went_offline_fails_in_time(&h).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn closing_either_side_is_seen_by_the_other() {
            let h = $make;
            conformance::closing_either_side_is_seen_by_the_other(&h).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn disabled_network_fails_fast_and_recovers() {
            let h = $make;
            conformance::disabled_network_fails_fast_and_recovers(&h).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn shutdown_ends_accept_and_dials() {
            let h = $make;
            conformance::shutdown_ends_accept_and_dials(&h).await;
        }
    };
}
