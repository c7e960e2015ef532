//! The arti backend over a private Tor network on 127.0.0.1 (carom-testnet): the conformance
//! suite, and what only real Tor can show. One binary, so one ~25 s network start.

#![allow(
    clippy::print_stdout,
    reason = "the tests report the figures they measure"
)]

mod conformance;

use conformance::Harness as _;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use carom_proto::IdentityKey;
use carom_testnet::TestNetwork;
use carom_tor::{ArtiConfig, ArtiTransport, ServiceState, TorNetwork, Transport};
use tempfile::TempDir;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Tor tests running at once: each starts two or three arti clients, on two cores.
static GATE: Semaphore = Semaphore::const_new(3);

/// Bound for a fresh transport to bootstrap and publish its service.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Bound for reaching a published service, retries included: a dial that straddles one of the
/// network's 8-minute time-period rotations can fail once.
const REACH_TIMEOUT: Duration = Duration::from_secs(180);

/// Settings for a transport on the private network, with its directories under `dir`.
fn config(net: &TestNetwork, dir: &Path) -> ArtiConfig {
    let mut config = ArtiConfig::new(dir);
    config.network = TorNetwork::Custom(net.arti_config());
    config
}

/// Wait until `t` has bootstrapped and published its service.
async fn wait_ready(t: &ArtiTransport) -> Duration {
    conformance::wait_published(t, READY_TIMEOUT).await
}

struct OverTor {
    net: &'static TestNetwork,
    dirs: Mutex<Vec<TempDir>>,
    _permit: SemaphorePermit<'static>,
}

impl OverTor {
    async fn new() -> OverTor {
        conformance::init_logging();
        let permit = GATE.acquire().await.expect("gate");
        let net = tokio::task::spawn_blocking(carom_testnet::shared)
            .await
            .expect("network start");
        OverTor {
            net,
            dirs: Mutex::new(Vec::new()),
            _permit: permit,
        }
    }

    fn dir(&self) -> std::path::PathBuf {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        self.dirs.lock().expect("dirs").push(dir);
        path
    }

    async fn start(&self, config: ArtiConfig, id: &IdentityKey) -> ArtiTransport {
        let t = ArtiTransport::start(config, id)
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

impl conformance::Harness for OverTor {
    type T = ArtiTransport;

    async fn transport(&self) -> (ArtiTransport, IdentityKey) {
        let id = IdentityKey::generate(&mut rand::thread_rng());
        let t = self.start(config(self.net, &self.dir()), &id).await;
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

conformance_suite!(OverTor::new().await);

// ---------------------------------------------------------------------------------------------
// What only real Tor can show.

/// A plain arti client on the private network (not a Carom transport): a C-tor-free stand-in
/// for "some other client", used for the flood and for raw stream options.
async fn raw_arti_client(
    net: &TestNetwork,
    dir: &Path,
) -> std::sync::Arc<arti_client::TorClient<tor_rtcompat::PreferredRuntime>> {
    let text = format!(
        "{}\n[storage]\nstate_dir = \"{}\"\ncache_dir = \"{}\"\n\n\
         [storage.keystore.primary]\nkind = \"ephemeral\"\n",
        net.arti_config(),
        dir.join("state").display(),
        dir.join("cache").display(),
    );
    let builder: arti_client::config::TorClientConfigBuilder =
        toml::from_str(&text).expect("arti config parses");
    let config = builder.build().expect("arti config builds");
    tokio::time::timeout(
        Duration::from_secs(120),
        arti_client::TorClient::create_bootstrapped(config),
    )
    .await
    .expect("raw arti client bootstraps in time")
    .expect("raw arti client bootstraps")
}

/// Echo every incoming stream of `t`, until it shuts down.
fn serve_echo(t: std::sync::Arc<ArtiTransport>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(stream) = t.accept().await {
            tokio::spawn(conformance::echo(stream));
        }
    })
}

/// One echo round trip of `payload` on `stream`.
async fn round_trip<S>(stream: &mut S, payload: &[u8]) -> Duration
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let started = Instant::now();
    conformance::send(stream, payload).await;
    assert_eq!(conformance::receive(stream, payload.len()).await, payload);
    started.elapsed()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Resident memory of this process, from /proc/self/status.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kib / 1024.0
}

/// Bootstrap time, launch → reachable, cold and warm dials, echo round trip, RSS, and whether
/// optimistic stream data changes anything for onion services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measurements() {
    let h = OverTor::new().await;
    // Alone, so that the timings and the RSS are this test's.
    let _all = GATE.acquire_many(2).await.expect("gate");
    let rss_before = rss_mib();

    // Bootstrap of a fresh transport, watching the progress it reports.
    let id_b = IdentityKey::generate(&mut rand::thread_rng());
    let started = Instant::now();
    let b = ArtiTransport::start(config(h.net, &h.dir()), &id_b)
        .await
        .expect("start");
    let mut status = b.status();
    let mut seen = Vec::new();
    let bootstrap = loop {
        let s = status.borrow_and_update().clone();
        seen.push((s.bootstrap.percent, s.bootstrap.phase.clone()));
        if s.bootstrap.ready {
            break started.elapsed();
        }
        tokio::time::timeout(READY_TIMEOUT, status.changed())
            .await
            .expect("bootstrap progresses")
            .expect("status");
    };
    println!("bootstrap progress as reported: {seen:?}");
    assert_eq!(seen.last().map(|s| s.0), Some(100));
    assert!(seen.iter().all(|(_, phase)| !phase.is_empty()));
    let rss_bootstrapped = rss_mib();

    // A second transport: launch → published, and → first successful dial from `b`.
    let id_a = IdentityKey::generate(&mut rand::thread_rng());
    let launched = Instant::now();
    let a = std::sync::Arc::new(
        ArtiTransport::start(config(h.net, &h.dir()), &id_a)
            .await
            .expect("start"),
    );
    let published = wait_ready(&a).await;
    let server = serve_echo(std::sync::Arc::clone(&a));
    let a_address = a.address();
    let mut first = conformance::dial_retry(&b, &a_address, REACH_TIMEOUT).await;
    let reachable = launched.elapsed();
    round_trip(&mut first, b"first").await;
    let evidence = tokio::time::timeout(
        Duration::from_secs(10),
        a.status()
            .wait_for(|s| s.service == ServiceState::Reachable),
    )
    .await
    .is_ok();
    let rss_service = rss_mib();

    // Cold dial: a third transport that has never reached `a`; then warm dials.
    let c = h.transport().await.0;
    let cold_started = Instant::now();
    let mut cold = conformance::dial_retry(&c, &a_address, REACH_TIMEOUT).await;
    let cold_dial = cold_started.elapsed();
    round_trip(&mut cold, b"cold").await;
    let mut warm = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let s = c.dial(&a_address).await.expect("warm dial");
        warm.push(t.elapsed());
        drop(s);
    }
    let warm_dial = median(warm);
    let mut rtts = Vec::new();
    for i in 0..21u8 {
        rtts.push(round_trip(&mut cold, &[i; 32]).await);
    }
    let rtt = median(rtts);

    // Optimistic data: arti 0.47 turns it off for onion services (connect_with_prefs sets
    // `optimistic(false)` on the onion-service path), so the two must come out the same.
    let raw = raw_arti_client(h.net, &h.dir()).await;
    let target = (a_address.to_string(), carom_tor::CAROM_VIRTUAL_PORT);
    let mut s = {
        let started = Instant::now();
        loop {
            match raw.connect((target.0.as_str(), target.1)).await {
                Ok(s) => break s,
                Err(e) if started.elapsed() < REACH_TIMEOUT => {
                    println!("raw dial failed: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => panic!("raw client cannot reach the service: {e}"),
            }
        }
    };
    round_trip(&mut s, b"warm up").await;
    let mut optimistic = arti_client::StreamPrefs::new();
    optimistic.optimistic();
    let default = arti_client::StreamPrefs::new();
    // Interleaved, so that both see the same network conditions.
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..11 {
        for (prefs, samples) in [(&default, &mut without), (&optimistic, &mut with)] {
            let t = Instant::now();
            let mut s = raw
                .connect_with_prefs((target.0.as_str(), target.1), prefs)
                .await
                .expect("warm raw dial");
            conformance::send(&mut s, b"?").await;
            conformance::receive(&mut s, 1).await;
            samples.push(t.elapsed());
        }
    }
    let (without, with) = (median(without), median(with));

    // A stream to another port of the service is refused (END), which we classify as Refused.
    let refused = raw
        .connect((target.0.as_str(), 80))
        .await
        .expect_err("port 80 is not served");
    {
        use arti_client::HasKind as _;
        println!("dial to port 80: {} ({})", refused.kind(), refused);
        assert_eq!(refused.kind(), arti_client::ErrorKind::RemoteStreamClosed);
    }
    assert!(a.admission_stats().streams_refused >= 1);

    println!("| figure | value |");
    println!("| --- | --- |");
    println!("| bootstrap (start → ready) | {} |", ms(bootstrap));
    println!(
        "| launch → published (descriptor uploaded) | {} |",
        ms(published)
    );
    println!(
        "| launch → first successful dial from a bootstrapped peer | {} |",
        ms(reachable)
    );
    println!("| service saw a rendezvous (status `Reachable`) | {evidence} |");
    println!(
        "| cold dial (new peer: descriptor, introduction, rendezvous) | {} |",
        ms(cold_dial)
    );
    println!(
        "| warm dial (same peer again, median of 7) | {} |",
        ms(warm_dial)
    );
    println!(
        "| stream echo round trip, 32 bytes (median of 21) | {} |",
        ms(rtt)
    );
    println!(
        "| warm dial → first echoed byte, default (median of 11) | {} |",
        ms(without)
    );
    println!(
        "| warm dial → first echoed byte, `StreamPrefs::optimistic()` (median of 11) | {} |",
        ms(with)
    );
    println!(
        "| RSS before / after bootstrap / with two services running | {rss_before:.0} / {rss_bootstrapped:.0} / {rss_service:.0} MiB |"
    );

    server.abort();
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

/// The bound, stated in docs/benchmarks.md, within which a long-running dialler reaches a
/// service again after it restarted (from the restarted service's publication).
const RESTART_REACH_BOUND: Duration = Duration::from_secs(30);

/// A contact restarts their daemon: restarted with the same key (and the same directories, as
/// a daemon restart would), the service is reachable again at the same address, by a dialler
/// that has run all along (and so holds the old descriptor and circuit), within
/// [`RESTART_REACH_BOUND`] of publication, every time. `CAROM_RESTARTS` sets the number of
/// restarts (default 5; the benchmark figures use 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_restarted_with_the_same_key_is_reachable_at_the_same_address() {
    let restarts: usize = std::env::var("CAROM_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let h = OverTor::new().await;
    let id = IdentityKey::generate(&mut rand::thread_rng());
    let dir = h.dir();
    let mut service = std::sync::Arc::new(h.start(config(h.net, &dir), &id).await);
    let address = service.address();
    assert_eq!(address, id.address());
    let mut server = serve_echo(std::sync::Arc::clone(&service));
    let (peer, _) = h.transport().await;
    let mut s = conformance::dial_retry(&peer, &address, REACH_TIMEOUT).await;
    round_trip(&mut s, b"before").await;

    let mut samples = Vec::new();
    for restart in 1..=restarts {
        service.shutdown().await;
        server.abort();
        drop(service);
        assert!(
            conformance::sees_close(&mut s, Duration::from_secs(30)).await,
            "the open stream ends with the service"
        );
        let dir = if std::env::var_os("CAROM_FRESH").is_some() {
            h.dir()
        } else {
            dir.clone()
        };
        service = std::sync::Arc::new(h.start(config(h.net, &dir), &id).await);
        assert_eq!(service.address(), address, "same key, same address");
        server = serve_echo(std::sync::Arc::clone(&service));
        // `start` returned once the new descriptor was published.
        let published = Instant::now();
        s = conformance::dial_retry(&peer, &address, REACH_TIMEOUT).await;
        round_trip(&mut s, b"after").await;
        let took = published.elapsed();
        println!(
            "restart {restart}: reached again {:.2} s after publication",
            took.as_secs_f64()
        );
        samples.push(took);
    }
    server.abort();
    service.shutdown().await;
    peer.shutdown().await;
    samples.sort();
    let p95 = samples[(samples.len() * 95).div_ceil(100).saturating_sub(1)];
    println!(
        "restart → reached, {} restarts: min {}, median {}, p95 {}, max {}",
        samples.len(),
        ms(samples[0]),
        ms(median(samples.clone())),
        ms(p95),
        ms(samples[samples.len() - 1])
    );
    let worst = samples[samples.len() - 1];
    assert!(
        worst <= RESTART_REACH_BOUND,
        "a restarted service took {worst:?} to reach again (bound {RESTART_REACH_BOUND:?}): {samples:?}"
    );
}

/// The reference implementation reaches Carom's service through its SOCKS port, on the Carom
/// port only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_tor_client_reaches_the_carom_service() {
    let h = OverTor::new().await;
    let (a, _) = h.transport().await;
    let a = std::sync::Arc::new(a);
    let server = serve_echo(std::sync::Arc::clone(&a));
    let onion = a.address().to_string();
    let net = h.net;
    let refused_before = a.admission_stats().streams_refused;
    tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let ctor = net
            .start_ctor_client(None)
            .expect("C tor client bootstraps");
        let socks = ctor.socks_addr();
        let (mut stream, took) = carom_testnet::socks5_connect_within(
            socks,
            &onion,
            carom_tor::CAROM_VIRTUAL_PORT,
            REACH_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("C tor could not reach the Carom service: {e}"));
        stream.write_all(b"hello from C tor").expect("write");
        let mut back = [0u8; 16];
        stream.read_exact(&mut back).expect("read echo");
        assert_eq!(&back, b"hello from C tor");
        println!(
            "C tor reached the Carom service in {:.2} s",
            took.as_secs_f64()
        );
        // Any other port is refused by the service.
        let other = carom_testnet::socks5_connect(socks, &onion, 80, Duration::from_secs(60));
        assert!(other.is_err(), "port 80 must be refused");
        println!(
            "C tor to port 80: {}",
            other.err().map(|e| e.to_string()).unwrap_or_default()
        );
    })
    .await
    .expect("C tor task");
    assert!(a.admission_stats().streams_refused > refused_before);
    server.abort();
    a.shutdown().await;
}

/// No form of the identity key appears in any file arti wrote, after the service has been
/// published, reached, and shut down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_key_is_never_written_to_disk() {
    let h = OverTor::new().await;
    let id = IdentityKey::generate(&mut rand::thread_rng());
    let dir = h.dir();
    let a = std::sync::Arc::new(h.start(config(h.net, &dir), &id).await);
    let server = serve_echo(std::sync::Arc::clone(&a));
    let (peer, _) = h.transport().await;
    let a_address = a.address();
    let mut s = conformance::dial_retry(&peer, &a_address, REACH_TIMEOUT).await;
    round_trip(&mut s, b"use the keys").await;
    server.abort();
    a.shutdown().await;
    peer.shutdown().await;

    let seed = id.seed();
    let keypair = tor_llcrypto::pk::ed25519::Keypair::from_bytes(&seed);
    let expanded = tor_llcrypto::pk::ed25519::ExpandedKeypair::from(&keypair).to_secret_key_bytes();
    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("seed".into(), seed.to_vec()),
        ("expanded secret".into(), expanded.to_vec()),
        ("secret scalar".into(), expanded[..32].to_vec()),
        ("nonce prefix".into(), expanded[32..].to_vec()),
    ];
    for (name, bytes) in needles.clone() {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        needles.push((format!("{name} (hex)"), hex.into_bytes()));
    }
    let mut files = 0;
    let mut stack = vec![dir.clone()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).expect("read_dir") {
            let entry = entry.expect("entry");
            let p = entry.path();
            if p.is_dir() {
                assert_ne!(
                    p.file_name().and_then(|n| n.to_str()),
                    Some("keystore"),
                    "arti created an on-disk keystore at {}",
                    p.display()
                );
                stack.push(p);
                continue;
            }
            files += 1;
            let content = std::fs::read(&p).expect("read");
            for (name, needle) in &needles {
                assert!(
                    !content
                        .windows(needle.len())
                        .any(|w| w == needle.as_slice()),
                    "{} contains the {name}",
                    p.display()
                );
            }
            let text = String::from_utf8_lossy(&content);
            assert!(
                !text.contains("PRIVATE KEY"),
                "{} holds a private key",
                p.display()
            );
        }
    }
    println!("searched {files} files under the data directory: no key material");

    assert!(files > 0, "arti wrote its state and cache");
}

/// One rendezvous circuit may carry at most `max_streams_per_circuit` streams: one more and
/// arti closes the circuit, with its streams. A new dial then builds a new circuit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_circuit_stream_limit_holds() {
    let h = OverTor::new().await;
    let mut c = config(h.net, &h.dir());
    c.max_streams_per_circuit = 3;
    let a = std::sync::Arc::new(
        h.start(c, &IdentityKey::generate(&mut rand::thread_rng()))
            .await,
    );
    let server = serve_echo(std::sync::Arc::clone(&a));
    let (b, _) = h.transport().await;
    let a_address = a.address();
    let mut open = Vec::new();
    for i in 0..3u8 {
        let mut s = conformance::dial_retry(&b, &a_address, REACH_TIMEOUT).await;
        round_trip(&mut s, &[i; 8]).await;
        open.push(s);
    }
    // The fourth stream on the same circuit breaks the limit.
    let fourth = b.dial(&a_address).await;
    let mut closed = 0;
    for s in &mut open {
        if conformance::sees_close(s, Duration::from_secs(30)).await {
            closed += 1;
        }
    }
    println!(
        "fourth stream: {}; {closed}/3 open streams closed with the circuit",
        match &fourth {
            Ok(_) => "opened, then closed".to_string(),
            Err(e) => format!("failed ({e})"),
        }
    );
    assert_eq!(closed, 3, "the circuit over the limit was closed");
    drop(fourth);
    drop(open);
    let mut s = conformance::dial_retry(&b, &a_address, REACH_TIMEOUT).await;
    round_trip(&mut s, b"new circuit").await;
    server.abort();
    a.shutdown().await;
    b.shutdown().await;
}

/// A bounded flood of rendezvous attempts (each on fresh circuits, from another client on
/// loopback) is held to the token bucket: most are rejected, the number of rendezvous
/// circuits the service builds stays within burst + rate × time, a session opened before the
/// flood keeps working, and a legitimate dial succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_rendezvous_requests_is_held_to_the_bucket() {
    const FLOOD: usize = 120;
    const CONCURRENCY: usize = 16;
    const FLOOD_BOUND: Duration = Duration::from_secs(120);
    let h = OverTor::new().await;
    let mut c = config(h.net, &h.dir());
    // Reject at once (no proof-of-work queueing), with a small bucket.
    c.pow = false;
    c.admission = carom_tor::AdmissionConfig {
        burst: 4,
        per_second: 0.5,
        max_in_flight: 4,
    };
    let admission = c.admission;
    let a = std::sync::Arc::new(
        h.start(c, &IdentityKey::generate(&mut rand::thread_rng()))
            .await,
    );
    let server = serve_echo(std::sync::Arc::clone(&a));
    let a_address = a.address();

    // A session opened before the flood.
    let (b, _) = h.transport().await;
    let mut session = conformance::dial_retry(&b, &a_address, REACH_TIMEOUT).await;
    round_trip(&mut session, b"before").await;
    let before = a.admission_stats();

    // The flood: every connect on its own isolation group needs a new rendezvous.
    let flooder = raw_arti_client(h.net, &h.dir()).await;
    let flood_started = Instant::now();
    let flood = {
        let flooder = std::sync::Arc::clone(&flooder);
        let host = a_address.to_string();
        tokio::spawn(async move {
            use futures::StreamExt as _;
            let mut prefs = arti_client::StreamPrefs::new();
            prefs.isolate_every_stream();
            let results: Vec<bool> = futures::stream::iter(0..FLOOD)
                .map(|_| {
                    let flooder = std::sync::Arc::clone(&flooder);
                    let host = host.clone();
                    let prefs = prefs.clone();
                    async move {
                        tokio::time::timeout(
                            Duration::from_secs(15),
                            flooder.connect_with_prefs(
                                (host.as_str(), carom_tor::CAROM_VIRTUAL_PORT),
                                &prefs,
                            ),
                        )
                        .await
                        .is_ok_and(|r| r.is_ok())
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            results.iter().filter(|ok| **ok).count()
        })
    };

    // While it runs: the old session still works, and a new client gets in.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rtt_during = round_trip(&mut session, b"during").await;
    let legit_id = IdentityKey::generate(&mut rand::thread_rng());
    let mut legit_config = config(h.net, &h.dir());
    // Shorter attempts: each retry is a new rendezvous request, another chance at a token.
    legit_config.dial_timeout = Duration::from_secs(15);
    let legit = h.start(legit_config, &legit_id).await;
    let legit_started = Instant::now();
    let mut s = conformance::dial_retry(&legit, &a_address, REACH_TIMEOUT).await;
    round_trip(&mut s, b"legitimate").await;
    let legit_took = legit_started.elapsed();
    let flood_running = !flood.is_finished();
    println!(
        "legitimate dial in after {:.1} s; stats then {:?}",
        legit_started.elapsed().as_secs_f64(),
        a.admission_stats()
    );

    let flood_succeeded = tokio::time::timeout(FLOOD_BOUND, flood)
        .await
        .map(|r| r.expect("flood task"))
        .unwrap_or(0);
    let elapsed = flood_started.elapsed();
    let after = a.admission_stats();
    let accepted = after.accepted - before.accepted;
    let rejected = after.rejected - before.rejected;
    let ceiling = f64::from(admission.burst) + admission.per_second * elapsed.as_secs_f64() + 1.0;
    println!(
        "flood of {FLOOD} isolated dials over {:.1} s: {flood_succeeded} got a stream; \
         service admitted {accepted} rendezvous (ceiling {ceiling:.0}), rejected {rejected}; \
         open session round trip during the flood {}; legitimate dial took {:.1} s \
         (flood still running then: {flood_running})",
        elapsed.as_secs_f64(),
        ms(rtt_during),
        legit_took.as_secs_f64()
    );
    assert!(rejected > 0, "the bucket turned requests away");
    #[allow(clippy::cast_precision_loss, reason = "small counts")]
    let accepted_f = accepted as f64;
    assert!(
        accepted_f <= ceiling,
        "admitted {accepted} rendezvous, more than burst + rate × time ({ceiling:.0})"
    );
    server.abort();
    a.shutdown().await;
    b.shutdown().await;
    legit.shutdown().await;
}
