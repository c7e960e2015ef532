//! arti's TCP connections to relays, with Nagle's algorithm off.
//!
//! Neither arti 0.47 nor C tor sets `TCP_NODELAY` on a channel. With Nagle on, a cell written
//! while an earlier one is still unacknowledged waits in the kernel until that
//! acknowledgement, and the relay's kernel delays acknowledgements by up to 40 ms. One cell at
//! a time rarely meets the rule; a group message does: it is several cells, one per member's
//! circuit, written back to back onto the one connection to the guard. Every cell arti sends
//! is already a whole 514-byte unit written when it is ready, so there is nothing for Nagle
//! to coalesce that is worth a stall (docs/benchmarks.md, "Nagle on Tor's connections", has
//! the measurements; docs/decisions.md the trade-off).

use std::io::Result as IoResult;
use std::net::SocketAddr;

use tor_rtcompat::{NetStreamProvider, PreferredRuntime};

/// The runtime arti runs on: the preferred tokio runtime with [`NoDelayTcp`] for TCP.
pub(super) type Runtime = tor_rtcompat::CompoundRuntime<
    PreferredRuntime,
    PreferredRuntime,
    PreferredRuntime,
    NoDelayTcp,
    PreferredRuntime,
    PreferredRuntime,
    PreferredRuntime,
>;

/// The preferred runtime of the current tokio runtime, with Nagle off on arti's connections.
pub(super) fn runtime() -> IoResult<Runtime> {
    use tor_rtcompat::RuntimeSubstExt as _;
    let preferred = PreferredRuntime::current()?;
    Ok(preferred.with_tcp_provider(NoDelayTcp(preferred.clone())))
}

/// Connects like the preferred runtime but with Nagle off; listens exactly like it.
#[derive(Clone)]
pub(super) struct NoDelayTcp(PreferredRuntime);

/// The stream type arti's TLS layer sees: the preferred runtime's own.
type Stream = <PreferredRuntime as NetStreamProvider>::Stream;

#[async_trait::async_trait]
impl NetStreamProvider for NoDelayTcp {
    type Stream = Stream;
    type Listener = <PreferredRuntime as NetStreamProvider>::Listener;
    type ConnectOptions = <PreferredRuntime as NetStreamProvider>::ConnectOptions;
    type ListenOptions = <PreferredRuntime as NetStreamProvider>::ListenOptions;

    async fn connect(
        &self,
        addr: &SocketAddr,
        options: &Self::ConnectOptions,
    ) -> IoResult<Self::Stream> {
        Ok(Stream::from(connect(addr, options).await?))
    }

    async fn listen(
        &self,
        addr: &SocketAddr,
        options: &Self::ListenOptions,
    ) -> IoResult<Self::Listener> {
        self.0.listen(addr, options).await
    }
}

/// A TCP connection to `addr` with the socket options the preferred runtime would set (before
/// connect(2), where they take effect) and Nagle off.
async fn connect(
    addr: &SocketAddr,
    options: &tor_rtcompat::TcpConnectOptions,
) -> IoResult<tokio::net::TcpStream> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    let common = options.common();
    if let Some(size) = *common.send_buffer_size() {
        socket.set_send_buffer_size(clamp(size))?;
    }
    if let Some(size) = *common.recv_buffer_size() {
        socket.set_recv_buffer_size(clamp(size))?;
    }
    socket.set_nodelay(true)?;
    socket.connect(*addr).await
}

/// A buffer size as tokio takes it (a `u32`; the kernel caps what it grants anyway).
fn clamp(size: usize) -> u32 {
    u32::try_from(size).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_to_relays_have_nagle_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let options = tor_rtcompat::TcpConnectOptions::default();
        let (connected, accepted) = tokio::join!(connect(&addr, &options), listener.accept());
        drop(accepted.unwrap());
        assert!(connected.unwrap().nodelay().unwrap(), "Nagle is still on");

        // A plain tokio connection has Nagle on: what this module is for.
        let (plain, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        drop(accepted.unwrap());
        assert!(!plain.unwrap().nodelay().unwrap());
    }

    #[tokio::test]
    async fn the_provider_connects_and_its_stream_carries_bytes() {
        use futures::{AsyncReadExt as _, AsyncWriteExt as _};
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let provider = NoDelayTcp(PreferredRuntime::current().unwrap());
        let options = Default::default();
        let (connected, accepted) =
            tokio::join!(provider.connect(&addr, &options), listener.accept());
        let mut stream = connected.unwrap();
        let (mut peer, _) = accepted.unwrap();
        stream.write_all(b"cell").await.unwrap();
        stream.flush().await.unwrap();
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"cell");
        drop(peer);
        let mut rest = Vec::new();
        assert_eq!(stream.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
