//! The in-memory backend: the [`Transport`] interface inside one process, with a simulated
//! latency and links that can be cut, for tests in virtual time.
//!
//! **Not a network, not for users.** Streams are channels of byte chunks, each delivered one
//! latency after it was written, by tokio's clock: with the clock paused (a test in virtual
//! time) a message takes no real time at all, and nothing depends on the machine's load. A cut
//! link ([`MemoryNetwork::cut`]) is a black hole, as a hung Tor circuit is: writes succeed,
//! nothing arrives, and dials across it never answer.

use std::collections::{HashMap, HashSet};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use carom_proto::{IdentityKey, OnionAddress};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};

use crate::{
    BootstrapProgress, BootstrapSwitch, ServiceState, Transport, TransportError, TransportStatus,
};

/// An in-process network: an address book, a one-way latency, and the links that are cut.
///
/// Clones share the same network. **Test only.**
#[derive(Clone, Debug)]
pub struct MemoryNetwork {
    state: Arc<Mutex<NetState>>,
}

#[derive(Debug)]
struct NetState {
    listeners: HashMap<OnionAddress, mpsc::Sender<MemoryStream>>,
    latency: Duration,
    /// Cut links, each stored as (smaller, larger) address.
    cut: HashSet<([u8; 32], [u8; 32])>,
}

fn link(a: &OnionAddress, b: &OnionAddress) -> ([u8; 32], [u8; 32]) {
    let (a, b) = (a.public_key(), b.public_key());
    if a <= b { (a, b) } else { (b, a) }
}

impl MemoryNetwork {
    /// A network where every chunk takes `latency` one way.
    pub fn new(latency: Duration) -> MemoryNetwork {
        MemoryNetwork {
            state: Arc::new(Mutex::new(NetState {
                listeners: HashMap::new(),
                latency,
                cut: HashSet::new(),
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cut the link between `a` and `b` (`true`) or mend it (`false`). While it is cut, what
    /// either writes to the other is lost, and their dials to each other hang.
    pub fn cut(&self, a: &OnionAddress, b: &OnionAddress, cut: bool) {
        let mut state = self.state();
        if cut {
            state.cut.insert(link(a, b));
        } else {
            state.cut.remove(&link(a, b));
        }
    }

    fn is_cut(&self, a: &OnionAddress, b: &OnionAddress) -> bool {
        self.state().cut.contains(&link(a, b))
    }

    fn latency(&self) -> Duration {
        self.state().latency
    }
}

/// Depth of the queue of streams waiting for `accept()` (as the loopback backend's).
const INCOMING_QUEUE: usize = 64;

/// One chunk in flight: when it arrives, and its bytes.
type Chunk = (Instant, Vec<u8>);

/// One end of an in-memory stream.
#[derive(Debug)]
pub struct MemoryStream {
    network: MemoryNetwork,
    me: OnionAddress,
    peer: OnionAddress,
    outgoing: Option<mpsc::UnboundedSender<Chunk>>,
    incoming: mpsc::UnboundedReceiver<Chunk>,
    /// A chunk that has arrived in the channel but not yet by the clock, or is partly read.
    pending: Option<(Instant, Vec<u8>, usize)>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl MemoryStream {
    fn pair(network: &MemoryNetwork, a: OnionAddress, b: OnionAddress) -> (Self, Self) {
        let (a_tx, b_rx) = mpsc::unbounded_channel();
        let (b_tx, a_rx) = mpsc::unbounded_channel();
        let end = |me, peer, outgoing, incoming| MemoryStream {
            network: network.clone(),
            me,
            peer,
            outgoing: Some(outgoing),
            incoming,
            pending: None,
            sleep: None,
        };
        (end(a, b, a_tx, a_rx), end(b, a, b_tx, b_rx))
    }
}

impl AsyncRead for MemoryStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let Some((at, bytes, offset)) = &mut this.pending {
                if *at > Instant::now() {
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(*at)));
                    ready!(sleep.as_mut().poll(cx));
                    this.sleep = None;
                    continue;
                }
                let n = buf.remaining().min(bytes.len() - *offset);
                buf.put_slice(&bytes[*offset..*offset + n]);
                *offset += n;
                if *offset == bytes.len() {
                    this.pending = None;
                }
                return Poll::Ready(Ok(()));
            }
            match ready!(this.incoming.poll_recv(cx)) {
                Some((at, bytes)) => this.pending = Some((at, bytes, 0)),
                // The other end is gone: end of stream.
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for MemoryStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Some(outgoing) = &self.outgoing else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        // A cut link swallows what is written, as a hung circuit does.
        if !self.network.is_cut(&self.me, &self.peer) {
            let at = Instant::now() + self.network.latency();
            if outgoing.send((at, buf.to_vec())).is_err() {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outgoing = None;
        Poll::Ready(Ok(()))
    }
}

/// A [`Transport`] inside one process, on a [`MemoryNetwork`]. **Test only.**
#[derive(Debug)]
pub struct MemoryTransport {
    network: MemoryNetwork,
    address: OnionAddress,
    incoming: tokio::sync::Mutex<mpsc::Receiver<MemoryStream>>,
    /// Our entry in the address book.
    listener: mpsc::Sender<MemoryStream>,
    status: Arc<watch::Sender<TransportStatus>>,
    /// Dials refused because we pretended not to be bootstrapped (see [`BootstrapSwitch`]).
    dials_while_down: Arc<AtomicU64>,
    network_enabled: AtomicBool,
    shutdown: watch::Sender<bool>,
}

impl MemoryTransport {
    /// Put `identity`'s address on `network`, replacing whoever had it (a restart).
    pub fn new(network: &MemoryNetwork, identity: &IdentityKey) -> MemoryTransport {
        let address = identity.address();
        let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
        network.state().listeners.insert(address, tx.clone());
        MemoryTransport {
            network: network.clone(),
            address,
            listener: tx,
            incoming: tokio::sync::Mutex::new(rx),
            dials_while_down: Arc::new(AtomicU64::new(0)),
            network_enabled: AtomicBool::new(true),
            status: Arc::new(watch::Sender::new(TransportStatus {
                bootstrap: BootstrapProgress {
                    percent: 100,
                    phase: "in memory (no Tor)".into(),
                    ready: true,
                    stalled: false,
                },
                service: ServiceState::Reachable,
                last_error: None,
                bridges: 0,
            })),
            shutdown: watch::channel(false).0,
        }
    }

    /// A handle that makes this transport pretend Tor is (not) bootstrapped.
    pub fn bootstrap_switch(&self) -> BootstrapSwitch {
        BootstrapSwitch::new(Arc::clone(&self.status), Arc::clone(&self.dials_while_down))
    }

    /// Switch dialling off (`false`: dials fail with `NetworkDisabled`) or back on.
    pub fn set_network_enabled(&self, enabled: bool) {
        self.network_enabled.store(enabled, Ordering::SeqCst);
    }

    /// Leave the address book, unless a successor (a restart) has taken our place.
    fn leave(&self) {
        let mut state = self.network.state();
        if state
            .listeners
            .get(&self.address)
            .is_some_and(|tx| tx.same_channel(&self.listener))
        {
            state.listeners.remove(&self.address);
        }
    }
}

impl Transport for MemoryTransport {
    type Stream = MemoryStream;

    async fn dial(&self, peer: &OnionAddress) -> Result<MemoryStream, TransportError> {
        crate::loopback::refuse_dial(
            &self.shutdown,
            &self.network_enabled,
            &self.status,
            &self.dials_while_down,
            "in-memory",
        )?;
        let latency = self.network.latency();
        if self.network.is_cut(&self.address, peer) {
            // No answer, ever: the caller's own bound ends the dial.
            std::future::pending::<()>().await;
        }
        // Finding the peer and opening the stream take a round trip.
        tokio::time::sleep(latency * 2).await;
        let listener = self.network.state().listeners.get(peer).cloned();
        let not_found = || TransportError::PeerNotFound {
            peer: peer.redacted().to_string(),
            detail: "not on the in-memory network".into(),
        };
        let listener = listener.ok_or_else(not_found)?;
        let (ours, theirs) = MemoryStream::pair(&self.network, self.address, *peer);
        listener.send(theirs).await.map_err(|_| not_found())?;
        Ok(ours)
    }

    async fn accept(&self) -> Option<MemoryStream> {
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
        self.leave();
        self.status
            .send_modify(|s| s.service = ServiceState::Stopped);
    }
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        self.leave();
    }
}
