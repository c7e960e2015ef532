//! The loopback backend: the [`Transport`] interface over 127.0.0.1, for tests and development.
//!
//! **Not anonymous, not encrypted, not for users.** It exists so that engine tests run in
//! milliseconds and deterministically. An in-process address book stands in for Tor's
//! directory: [`LoopbackNetwork`] maps onion addresses to local TCP ports.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use carom_proto::{IdentityKey, OnionAddress};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{BootstrapProgress, ServiceState, Transport, TransportError, TransportStatus};

/// Depth of the queue of accepted connections waiting for `accept()`.
const INCOMING_QUEUE: usize = 64;

/// Bound on a loopback dial; only reached if the peer's listener is wedged.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// An in-process address book: which loopback port serves which onion address.
///
/// Clones share the same book. **Test and development only.**
#[derive(Clone, Debug, Default)]
pub struct LoopbackNetwork {
    book: Arc<Mutex<HashMap<OnionAddress, SocketAddr>>>,
}

impl LoopbackNetwork {
    /// An empty network.
    pub fn new() -> LoopbackNetwork {
        LoopbackNetwork::default()
    }

    fn book(&self) -> MutexGuard<'_, HashMap<OnionAddress, SocketAddr>> {
        // The map stays consistent even if a holder panicked.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lookup(&self, address: &OnionAddress) -> Option<SocketAddr> {
        self.book().get(address).copied()
    }

    /// How many transports are online.
    pub fn len(&self) -> usize {
        self.book().len()
    }

    /// Whether no transport is online.
    pub fn is_empty(&self) -> bool {
        self.book().is_empty()
    }
}

/// A [`Transport`] over 127.0.0.1 with a [`LoopbackNetwork`] as its directory.
///
/// **Test and development only: never a default, no anonymity.** Dialling an address that is
/// not registered fails at once with [`PeerNotFound`](crate::TransportErrorKind::PeerNotFound),
/// as a dial to an offline onion service eventually does.
#[derive(Debug)]
pub struct LoopbackTransport {
    network: LoopbackNetwork,
    address: OnionAddress,
    listen: SocketAddr,
    incoming: tokio::sync::Mutex<mpsc::Receiver<TcpStream>>,
    status: Arc<watch::Sender<TransportStatus>>,
    /// Dials refused because we pretended not to be bootstrapped (see [`BootstrapSwitch`]).
    dials_while_down: Arc<AtomicU64>,
    shutdown: watch::Sender<bool>,
    network_enabled: AtomicBool,
    listener_task: JoinHandle<()>,
}

impl LoopbackTransport {
    /// Bind 127.0.0.1:0 and register `identity`'s address in `network`.
    pub async fn new(
        network: &LoopbackNetwork,
        identity: &IdentityKey,
    ) -> Result<LoopbackTransport, TransportError> {
        let address = identity.address();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| TransportError::io("bind", "127.0.0.1:0", e))?;
        let listen = listener
            .local_addr()
            .map_err(|e| TransportError::io("read the address of", "127.0.0.1:0", e))?;
        let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let listener_task = tokio::spawn(listen_loop(listener, tx, shutdown_rx));
        let status = Arc::new(watch::Sender::new(TransportStatus {
            bootstrap: BootstrapProgress {
                percent: 100,
                phase: "loopback (no Tor)".into(),
                ready: true,
                stalled: false,
            },
            service: ServiceState::Reachable,
            last_error: None,
            bridges: 0,
        }));
        network.book().insert(address, listen);
        tracing::debug!(address = %address.redacted(), %listen, "loopback transport online");
        Ok(LoopbackTransport {
            network: network.clone(),
            address,
            listen,
            incoming: tokio::sync::Mutex::new(rx),
            status,
            shutdown,
            network_enabled: AtomicBool::new(true),
            dials_while_down: Arc::new(AtomicU64::new(0)),
            listener_task,
        })
    }

    /// Take this transport off the address book (`false`), or put it back (`true`).
    ///
    /// Offline, dials *to* it fail with `PeerNotFound`; its own dials still work. Streams
    /// already open are not touched.
    pub fn set_online(&self, online: bool) {
        if *self.shutdown.borrow() {
            return;
        }
        if online {
            self.network.book().insert(self.address, self.listen);
        } else {
            self.network.book().remove(&self.address);
        }
        self.status.send_modify(|s| {
            s.service = if online {
                ServiceState::Reachable
            } else {
                ServiceState::Stopped
            };
        });
    }

    /// A handle that makes this transport pretend Tor is (not) bootstrapped, usable after the
    /// transport was handed to an engine.
    pub fn bootstrap_switch(&self) -> BootstrapSwitch {
        BootstrapSwitch::new(Arc::clone(&self.status), Arc::clone(&self.dials_while_down))
    }

    /// Switch dialling off (`false`: dials fail with `NetworkDisabled`) or back on.
    pub fn set_network_enabled(&self, enabled: bool) {
        self.network_enabled.store(enabled, Ordering::SeqCst);
    }
}

/// What a test backend's dial meets before it reaches for the peer, failing as arti's would:
/// the transport is shutting down, dialling is switched off, or it pretends not to be
/// bootstrapped (such dials are counted; see [`BootstrapSwitch`]).
pub(crate) fn refuse_dial(
    shutdown: &watch::Sender<bool>,
    network_enabled: &AtomicBool,
    status: &watch::Sender<TransportStatus>,
    dials_while_down: &AtomicU64,
    backend: &str,
) -> Result<(), TransportError> {
    if *shutdown.borrow() {
        return Err(TransportError::Shutdown);
    }
    if !network_enabled.load(Ordering::SeqCst) {
        return Err(TransportError::NetworkDisabled);
    }
    if !status.borrow().bootstrap.ready {
        dials_while_down.fetch_add(1, Ordering::SeqCst);
        return Err(TransportError::NotBootstrapped {
            detail: format!("the {backend} transport was told it is not bootstrapped"),
        });
    }
    Ok(())
}

/// Makes a [`LoopbackTransport`] (or a [`MemoryTransport`](crate::MemoryTransport)) pretend Tor lost (`false`) or finished (`true`) its
/// bootstrap: while not bootstrapped, `status()` says so and dials fail with
/// `NotBootstrapped`, as arti's do.
#[derive(Clone, Debug)]
pub struct BootstrapSwitch {
    status: Arc<watch::Sender<TransportStatus>>,
    dials_while_down: Arc<AtomicU64>,
}

impl BootstrapSwitch {
    /// A switch over a transport's status, and the count of its dials refused while down.
    pub(crate) fn new(
        status: Arc<watch::Sender<TransportStatus>>,
        dials_while_down: Arc<AtomicU64>,
    ) -> BootstrapSwitch {
        BootstrapSwitch {
            status,
            dials_while_down,
        }
    }

    /// How many dials failed because the transport was not bootstrapped.
    pub fn dials_while_down(&self) -> u64 {
        self.dials_while_down.load(Ordering::SeqCst)
    }

    /// Bootstrapped (`true`) or not.
    pub fn set(&self, bootstrapped: bool) {
        self.status.send_modify(|s| {
            s.bootstrap.ready = bootstrapped;
            s.bootstrap.percent = if bootstrapped { 100 } else { 50 };
        });
    }
}

async fn listen_loop(
    listener: TcpListener,
    tx: mpsc::Sender<TcpStream>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = crate::stopped(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    if tx.send(stream).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "loopback accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

impl Transport for LoopbackTransport {
    type Stream = TcpStream;

    async fn dial(&self, peer: &OnionAddress) -> Result<TcpStream, TransportError> {
        refuse_dial(
            &self.shutdown,
            &self.network_enabled,
            &self.status,
            &self.dials_while_down,
            "loopback",
        )?;
        let not_found = |detail: &str| TransportError::PeerNotFound {
            peer: peer.redacted().to_string(),
            detail: detail.into(),
        };
        let target = self
            .network
            .lookup(peer)
            .ok_or_else(|| not_found("not in the loopback address book"))?;
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(target)).await {
            Err(_) => Err(TransportError::Timeout {
                peer: peer.redacted().to_string(),
                detail: format!("no answer within {DIAL_TIMEOUT:?}"),
            }),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Err(not_found("its listener is gone"))
            }
            Ok(Err(e)) => Err(TransportError::io("connect to", target.to_string(), e)),
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
        }
    }

    async fn accept(&self) -> Option<TcpStream> {
        crate::next_incoming(&self.shutdown, &self.incoming).await
    }

    fn status(&self) -> watch::Receiver<TransportStatus> {
        self.status.subscribe()
    }

    fn address(&self) -> OnionAddress {
        self.address
    }

    async fn shutdown(&self) {
        if self.shutdown.send_replace(true) {
            return;
        }
        {
            let mut book = self.network.book();
            if book.get(&self.address) == Some(&self.listen) {
                book.remove(&self.address);
            }
        }
        self.listener_task.abort();
        self.status
            .send_modify(|s| s.service = ServiceState::Stopped);
        tracing::debug!(address = %self.address.redacted(), "loopback transport shut down");
    }
}

impl Drop for LoopbackTransport {
    fn drop(&mut self) {
        let mut book = self.network.book();
        if book.get(&self.address) == Some(&self.listen) {
            book.remove(&self.address);
        }
        self.listener_task.abort();
    }
}
