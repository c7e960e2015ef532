//! The loopback backend: the conformance suite, and what is specific to it.

#![allow(
    clippy::print_stdout,
    reason = "the conformance suite reports what it measures"
)]

mod conformance;

use std::time::Duration;

use carom_proto::IdentityKey;
use carom_tor::{LoopbackNetwork, LoopbackTransport, ServiceState, Transport, TransportErrorKind};

struct Loopback {
    network: LoopbackNetwork,
}

impl conformance::Harness for Loopback {
    type T = LoopbackTransport;

    async fn transport(&self) -> (LoopbackTransport, IdentityKey) {
        let id = IdentityKey::generate(&mut rand::thread_rng());
        let t = LoopbackTransport::new(&self.network, &id)
            .await
            .expect("loopback transport");
        (t, id)
    }

    fn reach_bound(&self) -> Duration {
        Duration::from_secs(5)
    }

    fn not_found_bound(&self) -> Duration {
        Duration::from_millis(500)
    }

    fn set_network_enabled(&self, transport: &LoopbackTransport, enabled: bool) {
        transport.set_network_enabled(enabled);
    }
}

conformance_suite!(Loopback {
    network: LoopbackNetwork::new()
});

#[tokio::test]
async fn taking_a_transport_offline_and_back() {
    let network = LoopbackNetwork::new();
    let a = LoopbackTransport::new(&network, &IdentityKey::from_seed(&[1; 32]))
        .await
        .expect("a");
    let b = LoopbackTransport::new(&network, &IdentityKey::from_seed(&[2; 32]))
        .await
        .expect("b");
    assert_eq!(network.len(), 2);
    let (a_address, b_address) = (a.address(), b.address());

    b.set_online(false);
    assert_eq!(b.status().borrow().service, ServiceState::Stopped);
    let error = a.dial(&b_address).await.expect_err("b is offline");
    assert_eq!(error.kind(), TransportErrorKind::PeerNotFound);
    // Its own dials still work while it is unreachable.
    let (outgoing, incoming) = tokio::join!(b.dial(&a_address), a.accept());
    assert!(outgoing.is_ok() && incoming.is_some());

    b.set_online(true);
    assert_eq!(b.status().borrow().service, ServiceState::Reachable);
    let (outgoing, incoming) = tokio::join!(a.dial(&b_address), b.accept());
    assert!(outgoing.is_ok() && incoming.is_some());

    drop(b);
    assert_eq!(
        network.len(),
        1,
        "a dropped transport leaves the address book"
    );
    a.shutdown().await;
    assert!(network.is_empty());
}

#[tokio::test]
async fn status_is_immediately_ready() {
    let network = LoopbackNetwork::new();
    let t = LoopbackTransport::new(&network, &IdentityKey::from_seed(&[5; 32]))
        .await
        .expect("t");
    let status = t.status().borrow().clone();
    assert!(status.bootstrap.ready);
    assert_eq!(status.bootstrap.percent, 100);
    assert_eq!(status.service, ServiceState::Reachable);
    assert_eq!(status.last_error, None);
}
