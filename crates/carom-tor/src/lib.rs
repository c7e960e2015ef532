//! # carom-tor: how a Carom daemon is reached, and reaches its contacts
//!
//! Every Carom profile is a Tor v3 onion service whose address is derived from the profile's
//! identity key. This crate makes the daemon reachable at that address and dials contacts at
//! theirs, and hands the engine plain byte streams. It knows nothing of the protocol carried
//! inside (`carom-proto`); it moves bytes.
//!
//! ## The interface
//!
//! [`Transport`] is the whole surface the engine uses:
//!
//! - [`dial`](Transport::dial) an [`OnionAddress`](carom_proto::OnionAddress) → a stream to
//!   that peer's service on [`CAROM_VIRTUAL_PORT`];
//! - [`accept`](Transport::accept) → the next stream opened to our service (no peer identity:
//!   the Noise handshake inside proves it), `None` after shutdown;
//! - [`status`](Transport::status) → a `watch` of [`TransportStatus`]: bootstrap progress
//!   with its phase, the [`ServiceState`] of our service, the last error;
//! - [`address`](Transport::address) and [`shutdown`](Transport::shutdown).
//!
//! Failures are [`TransportError`]s whose [`kind`](TransportError::kind) tells the engine what
//! to do: `NotBootstrapped` (wait for `status().bootstrap.ready`), `PeerNotFound` (the peer is
//! probably offline; retry with backoff), `Timeout` (retry), `Refused` (don't), and
//! `NetworkDisabled`, `Shutdown`, `Other` (with a [`retryable`](TransportError::retryable)
//! hint). Their `Display` keeps Tor's explanation for people but never a full onion address.
//!
//! **Flush after each frame.** arti buffers writes into relay cells until `flush()`; a frame
//! written without a flush may sit in memory. Flushing TCP (the loopback backend) is free.
//!
//! ## Backends
//!
//! - [`ArtiTransport`] (the product): Tor embedded in the daemon through arti, no external
//!   `tor` process. Public Tor by default; [`TorNetwork::Custom`] selects another network
//!   (the private test network in tests).
//! - [`LoopbackTransport`] (tests and development only): the same interface over 127.0.0.1
//!   with an in-process address book ([`LoopbackNetwork`]). No anonymity; never a default.
//!
//! - [`SystemTorTransport`]: a C tor the system already runs (Tails, Whonix, a tor service),
//!   driven through its control port (`ADD_ONION` with our key, kept in tor's memory only)
//!   and reached through its SOCKS port. Without the arti backend's admission control and
//!   proof-of-work (docs/tor.md says what it lacks and why).
//!
//! ## How the arti backend runs
//!
//! - arti runs on a small tokio runtime of its own (two worker threads), so that
//!   [`shutdown`](Transport::shutdown) can end every task arti started and release its state
//!   directory at once (arti 0.47 has no shutdown call of its own). Streams are used from the
//!   caller's runtime as usual.
//! - arti's TCP connections to relays have Nagle's algorithm off (`TCP_NODELAY`; arti 0.47
//!   leaves it on): with it on, the cells of several circuits written back to back onto the
//!   guard connection — a group message — wait for the relay's delayed acknowledgements.
//! - [`ArtiTransport::start`] returns as soon as arti is set up and the service launched;
//!   bootstrap progress and publication follow on [`Transport::status`]. Dials made before the
//!   first bootstrap completes fail at once with `NotBootstrapped`.
//! - A warm dial (a peer reached recently) reuses arti's open rendezvous circuit and costs one
//!   round trip (`BEGIN`/`CONNECTED`). Optimistic stream data would save that round trip, but
//!   arti 0.47 forces it off for onion services (`connect_with_prefs` sets
//!   `optimistic(false)` on the onion-service path), so this crate does not offer it;
//!   measurements with `StreamPrefs::optimistic()` confirm no difference.
//! - At start, arti's records of the previous run's introduction points are removed: their
//!   keys lived only in memory, and arti 0.47 restarted on them stays unreachable. The service
//!   publishes new introduction points; peers holding the old descriptor fail over to the new
//!   one within seconds (measured: 6–9 s on the test network).
//!
//! ## How arti's states and errors map
//!
//! Bootstrap: `percent` is arti's `as_frac()` × 100, `phase` arti's own description of the
//! step, `ready` true once the first bootstrap returned and arti reports ready for traffic.
//! Service: see the table on [`ServiceState`]. Errors, by arti `ErrorKind`:
//!
//! | arti `ErrorKind` | [`TransportErrorKind`] |
//! | --- | --- |
//! | `BootstrapRequired`, `DirectoryExpired`, `TorDirectoryUnusable` | `NotBootstrapped` |
//! | `OnionServiceNotFound`, `OnionServiceNotRunning`, `OnionServiceConnectionFailed` | `PeerNotFound` |
//! | `TorNetworkTimeout`, `RemoteNetworkTimeout`, `ExitTimeout` (and our dial bound) | `Timeout` |
//! | `RemoteStreamClosed/Reset/Error`, `RemoteConnectionRefused`, `OnionServiceMissingClientAuth`, `OnionServiceWrongClientAuth` | `Refused` |
//! | `ForbiddenStreamTarget` (onion addresses disabled locally) | `NetworkDisabled` |
//! | `ArtiShuttingDown`, `ReactorShuttingDown` | `Shutdown` |
//! | configuration, bug, bad address, permission, keystore kinds | `Other`, not retryable |
//! | anything else (circuit collapse, relay trouble, …) | `Other`, retryable |
//!
//! ## Threat notes (arti backend)
//!
//! - **The identity key never touches disk through Tor.** arti receives the key in memory
//!   (`launch_onion_service_with_hsid`, from the 32-byte seed held in Carom's encrypted store)
//!   and keeps it in its *ephemeral* keystore, forced whatever the custom network
//!   configuration says. arti's state directory holds guards and service bookkeeping only; a
//!   test searches it for the seed and the expanded secret key. State and cache directories
//!   are created 0700 and arti's permission checks stay on, unaffected by arti's environment
//!   variable, unless [`ArtiConfig::dangerously_trust_everyone`] is set.
//! - **Admission control.** Each accepted rendezvous request makes us build a circuit to a
//!   relay the client picked. A token bucket ([`AdmissionConfig`]) and a cap on handshakes in
//!   flight bound that, so a flood of introductions cannot make the daemon build unbounded
//!   circuits. Each rendezvous circuit may carry at most
//!   [`ArtiConfig::max_streams_per_circuit`] streams (the circuit is closed beyond), and
//!   streams to any port but ours are refused.
//! - **Proof-of-work** (on by default): under load arti asks clients to solve Equi-X puzzles
//!   and serves the highest effort first; dials solve puzzles when a peer asks.
//! - **Vanguards** (lite by default, full available) protect the service against guard
//!   discovery.
//! - Logs show onion addresses only redacted, and never key material.
//!
//! What this crate is not: a SOCKS proxy, a general Tor client, or a policy engine deciding
//! who may connect (that is the engine's job, after the handshake).

#![forbid(unsafe_code)]

mod admission;
mod arti;
mod bridges;
mod err;
mod loopback;
mod memory;
mod status;
mod system;
mod transport;

pub use admission::{AdmissionConfig, AdmissionStats};
pub use arti::{ArtiConfig, ArtiStream, ArtiTransport, TorNetwork, Vanguards};
pub use bridges::{BridgeError, Bridges, BridgesApplied};
pub use err::{TransportError, TransportErrorKind};
pub use loopback::{BootstrapSwitch, LoopbackNetwork, LoopbackTransport};
pub use memory::{MemoryNetwork, MemoryStream, MemoryTransport};
pub use status::{BootstrapProgress, ServiceState, TransportStatus};
pub use system::{ControlAuth, SystemTorConfig, SystemTorTransport};
pub use transport::{CAROM_VIRTUAL_PORT, Transport};

// arti's `rustls` feature needs a crypto provider in the build; we pick ring.
use rustls as _;

/// Resolves once `shutdown` says `true` (or its sender is gone).
async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    // The returned `Ref` is not `Send`; drop it here rather than across an await.
    let _ = shutdown.wait_for(|stop| *stop).await.map(drop);
}

/// The next incoming stream, or `None` once `shutdown` says stop: `accept` for both
/// backends. Waiting for the queue's lock also ends at shutdown.
async fn next_incoming<S>(
    shutdown: &tokio::sync::watch::Sender<bool>,
    incoming: &tokio::sync::Mutex<tokio::sync::mpsc::Receiver<S>>,
) -> Option<S> {
    let mut shutdown = shutdown.subscribe();
    let mut incoming = tokio::select! {
        () = stopped(&mut shutdown) => return None,
        guard = incoming.lock() => guard,
    };
    tokio::select! {
        () = stopped(&mut shutdown) => None,
        stream = incoming.recv() => stream,
    }
}
