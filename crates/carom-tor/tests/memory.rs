//! The in-memory backend: the conformance suite (in real time), and its latency and cut links
//! (in virtual time).

#![allow(
    clippy::print_stdout,
    reason = "the conformance suite reports what it measures"
)]

mod conformance;

use std::time::Duration;

use carom_proto::IdentityKey;
use carom_tor::{MemoryNetwork, MemoryTransport, Transport, TransportErrorKind};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const LATENCY: Duration = Duration::from_millis(40);

struct Memory {
    network: MemoryNetwork,
}

impl conformance::Harness for Memory {
    type T = MemoryTransport;

    async fn transport(&self) -> (MemoryTransport, IdentityKey) {
        let id = IdentityKey::generate(&mut rand::thread_rng());
        (MemoryTransport::new(&self.network, &id), id)
    }

    fn reach_bound(&self) -> Duration {
        Duration::from_secs(5)
    }

    fn not_found_bound(&self) -> Duration {
        Duration::from_millis(500)
    }

    fn set_network_enabled(&self, transport: &MemoryTransport, enabled: bool) {
        transport.set_network_enabled(enabled);
    }
}

conformance_suite!(Memory {
    network: MemoryNetwork::new(LATENCY)
});

#[tokio::test(start_paused = true)]
async fn bytes_arrive_one_latency_after_they_are_written_and_a_dial_takes_a_round_trip() {
    let network = MemoryNetwork::new(LATENCY);
    let a = MemoryTransport::new(&network, &IdentityKey::from_seed(&[1; 32]));
    let b = MemoryTransport::new(&network, &IdentityKey::from_seed(&[2; 32]));
    let start = tokio::time::Instant::now();
    let mut ours = a.dial(&b.address()).await.expect("dial");
    assert_eq!(start.elapsed(), LATENCY * 2);
    let mut theirs = b.accept().await.expect("accept");
    let sent = tokio::time::Instant::now();
    ours.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    theirs.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ping");
    assert_eq!(sent.elapsed(), LATENCY);
}

#[tokio::test(start_paused = true)]
async fn a_cut_link_swallows_writes_and_hangs_dials_until_it_is_mended() {
    let network = MemoryNetwork::new(LATENCY);
    let a = MemoryTransport::new(&network, &IdentityKey::from_seed(&[1; 32]));
    let b = MemoryTransport::new(&network, &IdentityKey::from_seed(&[2; 32]));
    let mut ours = a.dial(&b.address()).await.expect("dial");
    let mut theirs = b.accept().await.expect("accept");
    network.cut(&a.address(), &b.address(), true);
    ours.write_all(b"lost")
        .await
        .expect("a write into the hole succeeds");
    let mut buf = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_secs(60), theirs.read_exact(&mut buf)).await;
    assert!(read.is_err(), "nothing arrives across a cut link");
    let dial = tokio::time::timeout(Duration::from_secs(60), a.dial(&b.address())).await;
    assert!(dial.is_err(), "a dial across a cut link never answers");
    network.cut(&a.address(), &b.address(), false);
    ours.write_all(b"back").await.expect("write");
    theirs.read_exact(&mut buf).await.expect("read");
    assert_eq!(
        &buf, b"back",
        "what was written while cut is gone; what follows arrives"
    );
    // A transport that has gone is not found.
    let c = MemoryTransport::new(&network, &IdentityKey::from_seed(&[3; 32]));
    drop(c);
    let gone = a.dial(&IdentityKey::from_seed(&[3; 32]).address()).await;
    assert_eq!(
        gone.map(drop).expect_err("gone").kind(),
        TransportErrorKind::PeerNotFound
    );
}
