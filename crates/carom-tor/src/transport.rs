//! The interface the engine uses.

use std::future::Future;

use carom_proto::OnionAddress;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::{BridgeError, Bridges, BridgesApplied, TransportError, TransportStatus};

/// The virtual port of Carom's onion service: peers dial `<address>.onion:9879`.
///
/// Fixed by the protocol, like an HTTP port. It differs from Ricochet's 9878 so that a Ricochet
/// client pointed at a Carom address is turned away at the stream, before any handshake. The
/// service answers streams to any other port (and `BEGIN_DIR`/`RESOLVE`) with `END` (reason
/// `DONE`, as other onion services do), which the dialler sees as
/// [`TransportErrorKind::Refused`](crate::TransportErrorKind::Refused).
pub const CAROM_VIRTUAL_PORT: u16 = 9879;

/// How a Carom daemon is reached at its onion address and reaches its contacts.
///
/// One value is one identity: it owns the onion service for that identity's key and dials
/// out on its behalf. Backends: [`crate::ArtiTransport`] (embedded Tor, the default),
/// [`crate::SystemTorTransport`] (the system's C tor, through its control and SOCKS ports),
/// [`crate::LoopbackTransport`] and [`crate::MemoryTransport`] (tests only).
///
/// # Streams must be flushed
///
/// Written bytes are only guaranteed to leave once `flush()` completes: arti packs writes
/// into 498-byte relay cells and holds a partial cell until flushed. Callers flush after each
/// complete frame (for TCP the flush is free). Closing a stream (`shutdown()` or dropping it)
/// is seen by the other side as end-of-stream or an error; Tor has no half-close, so shut a
/// stream down only when done with both directions.
pub trait Transport: Send + Sync + 'static {
    /// A byte stream to or from a peer.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Open a stream to `peer`'s Carom service ([`CAROM_VIRTUAL_PORT`]).
    ///
    /// Bounded in time by the backend's dial timeout. A second dial to a recently reached
    /// peer reuses the open circuit when the backend can; after a failed dial (or
    /// [`forget_path`](Self::forget_path)) the next one starts afresh.
    fn dial(
        &self,
        peer: &OnionAddress,
    ) -> impl Future<Output = Result<Self::Stream, TransportError>> + Send;

    /// The last path to `peer` went silent (a session on a stream we dialled stopped
    /// answering): the next [`dial`](Self::dial) must not reuse its circuit, nor the cached
    /// descriptor that led to it. Backends without such state ignore it.
    fn forget_path(&self, peer: &OnionAddress) {
        let _ = peer;
    }

    /// The next stream opened to our service, or `None` once the transport is shut down.
    ///
    /// Incoming streams say nothing about who opened them: onion services are anonymous to
    /// their clients. The peer proves its identity inside the stream (the Noise handshake).
    /// Several tasks may wait here at once; each stream goes to one of them.
    fn accept(&self) -> impl Future<Output = Option<Self::Stream>> + Send;

    /// Enter Tor through these bridges from now on; none: through the network's own relays.
    /// Checked before anything changes. Backends whose Tor is not Carom's to configure (the
    /// system's tor; the test backends) refuse with [`BridgeError::NotSupported`].
    fn set_bridges(&self, bridges: Bridges) -> Result<BridgesApplied, TransportError> {
        let _ = bridges;
        Err(BridgeError::NotSupported(
            "this Tor backend takes no bridges from Carom: configure them where its Tor is \
             configured (for the system's tor, `Bridge` and `ClientTransportPlugin` lines in its \
             torrc)"
                .into(),
        )
        .into())
    }

    /// A watch on bootstrap progress, service state and the last error.
    fn status(&self) -> watch::Receiver<TransportStatus>;

    /// Our own onion address (the identity this transport serves).
    fn address(&self) -> OnionAddress;

    /// Stop the service and refuse further dials. Pending [`accept`](Self::accept)s return
    /// `None`; later dials fail with
    /// [`TransportErrorKind::Shutdown`](crate::TransportErrorKind::Shutdown).
    /// Idempotent; returns once resources (for arti: its state-directory lock) are released
    /// or a few seconds have passed.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}
