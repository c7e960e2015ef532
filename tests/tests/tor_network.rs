//! The foundation's real-network tests: a private network of C tor authorities and relays on
//! 127.0.0.1, with embedded arti clients and C tor clients on it.
//!
//! These keep working as the oldest regression tests of the Tor layer: if an arti or tor
//! upgrade changes how the two interoperate, they fail here first.

#![allow(
    clippy::print_stdout,
    reason = "the tests report the figures they measure"
)]

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use arti_client::config::TorClientConfigBuilder;
use arti_client::{TorClient, TorClientConfig};
use carom_testnet::{NetworkOptions, TestNetwork};
use futures::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tor_hscrypto::pk::{HsId, HsIdKey, HsIdKeypair};
use tor_llcrypto::pk::ed25519;

/// Bound for reaching a freshly published onion service. Publication takes seconds; a dial
/// that straddles a time-period rotation can fail once, so we retry within this bound.
const REACH_TIMEOUT: Duration = Duration::from_secs(180);

/// An arti client configured for `net`, with its own state and cache directories in `dir`.
fn arti_config(net: &TestNetwork, dir: &Path) -> TorClientConfig {
    let text = format!(
        "{}\n[storage]\nstate_dir = \"{}\"\ncache_dir = \"{}\"\n\n\
         [storage.keystore.primary]\nkind = \"ephemeral\"\n",
        net.arti_config(),
        dir.join("state").display(),
        dir.join("cache").display(),
    );
    let builder: TorClientConfigBuilder =
        toml::from_str(&text).unwrap_or_else(|e| panic!("arti config does not parse: {e}\n{text}"));
    builder.build().expect("arti config builds")
}

async fn bootstrapped_client(
    net: &TestNetwork,
    dir: &Path,
) -> std::sync::Arc<TorClient<tor_rtcompat::PreferredRuntime>> {
    let started = Instant::now();
    let client = tokio::time::timeout(
        Duration::from_secs(120),
        TorClient::create_bootstrapped(arti_config(net, dir)),
    )
    .await
    .expect("arti bootstrap timed out after 120 s")
    .expect("arti bootstraps from the private network");
    println!(
        "arti bootstrapped in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    client
}

/// Connect to `addr` through arti, retrying until `REACH_TIMEOUT`.
async fn connect_with_retry(
    client: &TorClient<tor_rtcompat::PreferredRuntime>,
    addr: &str,
) -> arti_client::DataStream {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match client.connect(addr).await {
            Ok(stream) => {
                println!(
                    "arti reached {} after {attempts} attempt(s), {:.2} s",
                    &addr[..12],
                    started.elapsed().as_secs_f64()
                );
                return stream;
            }
            Err(e) if started.elapsed() < REACH_TIMEOUT => {
                println!("attempt {attempts} to reach the service failed: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => panic!("could not reach {addr} within {REACH_TIMEOUT:?}: {e}"),
        }
    }
}

async fn echo_round_trip(stream: &mut arti_client::DataStream, payload: &[u8]) -> Duration {
    let started = Instant::now();
    stream.write_all(payload).await.expect("write");
    stream.flush().await.expect("flush");
    let mut back = vec![0u8; payload.len()];
    stream.read_exact(&mut back).await.expect("read echo");
    assert_eq!(back, payload, "the echo must return the same bytes");
    started.elapsed()
}

/// Echo everything back, flushing after each read: arti buffers written data into relay cells
/// until a flush, so a plain copy loop would sit on small messages.
async fn echo(mut stream: arti_client::DataStream) {
    let mut buf = vec![0u8; 4096];
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

fn hs_keypair_from_seed(seed: [u8; 32]) -> HsIdKeypair {
    let keypair = ed25519::Keypair::from_bytes(&seed);
    HsIdKeypair::from(ed25519::ExpandedKeypair::from(&keypair))
}

fn onion_address(id: HsId) -> String {
    use safelog::DisplayRedacted as _;
    id.display_unredacted().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arti_bootstraps_from_the_private_network() {
    let net = carom_testnet::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let client = bootstrapped_client(net, dir.path()).await;
    // `create_bootstrapped` returns when arti has a usable directory; its status summary can
    // trail by a moment (e.g. still counting microdescriptors), so give that a bounded wait.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client.bootstrap_status().ready_for_traffic() {
        assert!(
            Instant::now() < deadline,
            "arti bootstrapped but does not report ready for traffic: {}",
            client.bootstrap_status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(client.bootstrap_status().as_frac() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arti_onion_service_with_our_key_is_reachable_from_arti_and_c_tor() {
    let net = carom_testnet::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let host = bootstrapped_client(net, &dir.path().join("host")).await;

    // The caller owns the key: a seed we chose, never generated by arti.
    let seed: [u8; 32] = rand::random();
    let expected_id: HsId = HsIdKey::from(&hs_keypair_from_seed(seed)).id();
    let service_config = tor_hsservice::config::OnionServiceConfigBuilder::default()
        .nickname("carom-test".parse().expect("nickname"))
        .build()
        .expect("service config");
    let launched_at = Instant::now();
    let (service, rend_requests) = host
        .launch_onion_service_with_hsid(service_config, hs_keypair_from_seed(seed))
        .expect("launch onion service")
        .expect("service is enabled");
    assert_eq!(
        service.onion_address(),
        Some(expected_id),
        "the service must run under the caller's key"
    );
    let onion = onion_address(expected_id);

    // Echo every stream back.
    tokio::spawn(async move {
        let mut requests = std::pin::pin!(tor_hsservice::handle_rend_requests(rend_requests));
        while let Some(request) = requests.next().await {
            tokio::spawn(async move {
                let Ok(stream) = request
                    .accept(tor_cell::relaycell::msg::Connected::new_empty())
                    .await
                else {
                    return;
                };
                echo(stream).await;
            });
        }
    });

    // A second, independent arti client.
    let visitor = bootstrapped_client(net, &dir.path().join("visitor")).await;
    let mut stream = connect_with_retry(&visitor, &format!("{onion}:80")).await;
    println!(
        "arti service reachable {:.2} s after launch",
        launched_at.elapsed().as_secs_f64()
    );
    let mut rtts = Vec::new();
    for i in 0..5u8 {
        rtts.push(echo_round_trip(&mut stream, &[i; 32]).await);
    }
    rtts.sort();
    println!("arti→arti echo round trip: median {:?}", rtts[2]);

    // And the reference implementation, through its SOCKS port.
    let ctor = net
        .start_ctor_client(None)
        .expect("C tor client bootstraps");
    let socks = ctor.socks_addr();
    let onion_for_ctor = onion.clone();
    tokio::task::spawn_blocking(move || {
        let (mut stream, took) =
            carom_testnet::socks5_connect_within(socks, &onion_for_ctor, 80, REACH_TIMEOUT)
                .unwrap_or_else(|e| panic!("C tor could not reach the arti service: {e}"));
        stream.write_all(b"hello from C tor").expect("write");
        let mut back = [0u8; 16];
        stream.read_exact(&mut back).expect("read echo");
        assert_eq!(&back, b"hello from C tor");
        println!(
            "C tor reached the arti service in {:.2} s",
            took.as_secs_f64()
        );
    })
    .await
    .expect("C tor client task");
    drop(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arti_reaches_a_c_tor_onion_service() {
    let net = carom_testnet::shared();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo server");
    let target = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let ctor = net
        .start_ctor_client(Some((80, target)))
        .expect("C tor client with an onion service");
    let hostname = ctor
        .onion_hostname(Duration::from_secs(60))
        .expect("C tor writes its onion hostname");

    let dir = tempfile::tempdir().expect("tempdir");
    let client = bootstrapped_client(net, dir.path()).await;
    let mut stream = connect_with_retry(&client, &format!("{hostname}:80")).await;
    let rtt = echo_round_trip(&mut stream, b"hello from arti").await;
    println!("arti→C tor echo round trip {rtt:?}");
}

#[test]
fn a_second_network_runs_beside_the_first_and_leaves_nothing_behind() {
    // The shared network may or may not be up (tests run in any order); either way this one
    // must come up on its own ports.
    let started = Instant::now();
    let net = TestNetwork::start(&NetworkOptions::default()).expect("second network starts");
    println!(
        "second network ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let pids = net.pids();
    let ports = net.ports();
    let root = net.root().to_path_buf();
    assert_eq!(pids.len(), 7, "3 authorities and 4 relays");
    assert!(
        pids.iter()
            .all(|pid| Path::new(&format!("/proc/{pid}")).exists())
    );
    assert!(
        ports.iter().all(|port| !carom_testnet::port_is_free(*port)),
        "relays listen"
    );

    drop(net);

    for pid in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "tor process {pid} still exists after the network was dropped"
        );
    }
    for port in &ports {
        assert!(
            carom_testnet::port_is_free(*port),
            "port {port} still in use"
        );
    }
    assert!(
        !root.exists(),
        "the network's directory {} was not removed",
        root.display()
    );
}
