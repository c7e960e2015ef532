//! SOCKS5 (RFC 1928, with RFC 1929 username/password) to reach an onion service through C
//! tor's SocksPort: the request bytes, the meaning of tor's reply codes (including its
//! extended onion-service errors, proposal 304), and the exchange itself.

use std::net::SocketAddr;

use carom_proto::OnionAddress;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::{TransportError, TransportErrorKind};

/// The greeting: version 5, one method, username/password (tor isolates circuits by it).
pub(crate) const GREETING: [u8; 3] = [5, 1, 2];

/// The RFC 1929 sub-negotiation carrying `isolation` as username and password.
pub(crate) fn credentials(isolation: &str) -> Vec<u8> {
    let name = isolation.as_bytes();
    let len = u8::try_from(name.len()).expect("isolation tokens are short");
    let mut out = Vec::with_capacity(3 + 2 * name.len());
    out.push(1);
    out.push(len);
    out.extend_from_slice(name);
    out.push(len);
    out.extend_from_slice(name);
    out
}

/// CONNECT to `host:port` by name (tor resolves `.onion` itself; nothing is resolved here).
pub(crate) fn connect_request(host: &str, port: u16) -> Vec<u8> {
    let name = host.as_bytes();
    let mut out = Vec::with_capacity(7 + name.len());
    out.extend_from_slice(&[5, 1, 0, 3]);
    out.push(u8::try_from(name.len()).expect("an onion host name is 62 bytes"));
    out.extend_from_slice(name);
    out.extend_from_slice(&port.to_be_bytes());
    out
}

/// What a SOCKS reply code from tor means for a dial.
pub(crate) fn reply_kind(code: u8) -> (TransportErrorKind, &'static str) {
    use TransportErrorKind as K;
    match code {
        0x01 => (K::Other, "general failure"),
        0x02 => (K::Refused, "not allowed by tor's SocksPolicy"),
        0x03 => (K::PeerNotFound, "network unreachable"),
        0x04 => (K::PeerNotFound, "host unreachable"),
        0x05 => (K::Refused, "connection refused"),
        0x06 => (K::Timeout, "TTL expired (tor gave up)"),
        0x07 => (K::Other, "command not supported"),
        0x08 => (K::Other, "address type not supported"),
        0xF0 => (K::PeerNotFound, "onion service descriptor not found"),
        0xF1 => (K::PeerNotFound, "onion service descriptor is invalid"),
        0xF2 => (K::PeerNotFound, "introduction failed"),
        0xF3 => (K::PeerNotFound, "rendezvous failed"),
        0xF4 => (K::Refused, "the service needs client authorization"),
        0xF5 => (K::Refused, "client authorization refused"),
        0xF6 => (K::Other, "invalid onion address"),
        0xF7 => (K::Timeout, "introduction timed out"),
        _ => (K::Other, "unknown SOCKS reply"),
    }
}

/// The error for reply `code` from a dial to `peer`.
pub(crate) fn reply_error(code: u8, peer: &OnionAddress) -> TransportError {
    let (kind, what) = reply_kind(code);
    let peer = peer.redacted().to_string();
    let detail = format!("tor's SOCKS reply {code:#04x}: {what}");
    match kind {
        TransportErrorKind::PeerNotFound => TransportError::PeerNotFound { peer, detail },
        TransportErrorKind::Timeout => TransportError::Timeout { peer, detail },
        TransportErrorKind::Refused => TransportError::Refused { peer, detail },
        _ => TransportError::Tor {
            action: "dialling",
            detail,
            retryable: code == 0x01,
        },
    }
}

/// Open a stream to `peer:port` through the SocksPort at `socks`, on the circuits of
/// `isolation`.
pub(crate) async fn connect(
    socks: SocketAddr,
    peer: &OnionAddress,
    port: u16,
    isolation: &str,
) -> Result<TcpStream, TransportError> {
    let broken = |what: &str, e: std::io::Error| TransportError::Tor {
        action: "dialling",
        detail: format!("SOCKS port {socks}: {what}: {e}"),
        retryable: true,
    };
    let mut stream = TcpStream::connect(socks)
        .await
        .map_err(|e| broken("connecting (is tor running with this SocksPort?)", e))?;
    let _ = stream.set_nodelay(true);
    stream
        .write_all(&GREETING)
        .await
        .map_err(|e| broken("greeting", e))?;
    let mut choice = [0u8; 2];
    stream
        .read_exact(&mut choice)
        .await
        .map_err(|e| broken("reading its method", e))?;
    if choice != [5, 2] {
        return Err(TransportError::Tor {
            action: "dialling",
            detail: format!(
                "SOCKS port {socks} did not accept username/password isolation (answered {choice:?}); is it tor's?"
            ),
            retryable: false,
        });
    }
    stream
        .write_all(&credentials(isolation))
        .await
        .map_err(|e| broken("authenticating", e))?;
    let mut status = [0u8; 2];
    stream
        .read_exact(&mut status)
        .await
        .map_err(|e| broken("reading its authentication status", e))?;
    if status[1] != 0 {
        return Err(TransportError::Tor {
            action: "dialling",
            detail: format!("SOCKS port {socks} refused the isolation credentials"),
            retryable: false,
        });
    }
    stream
        .write_all(&connect_request(&peer.to_string(), port))
        .await
        .map_err(|e| broken("sending the request", e))?;
    let mut head = [0u8; 4];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|e| broken("reading the reply", e))?;
    if head[0] != 5 {
        return Err(TransportError::Tor {
            action: "dialling",
            detail: format!("SOCKS port {socks} answered version {}", head[0]),
            retryable: false,
        });
    }
    if head[1] != 0 {
        return Err(reply_error(head[1], peer));
    }
    // The bound address, which tor fills with zeros: skip it.
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            stream
                .read_exact(&mut len)
                .await
                .map_err(|e| broken("reading the reply", e))?;
            usize::from(len[0]) + 2
        }
        other => {
            return Err(TransportError::Tor {
                action: "dialling",
                detail: format!("SOCKS reply with address type {other}"),
                retryable: false,
            });
        }
    };
    let mut skip = vec![0u8; rest];
    stream
        .read_exact(&mut skip)
        .await
        .map_err(|e| broken("reading the reply", e))?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_laid_out_as_rfc_1928_and_1929_say() {
        assert_eq!(credentials("ab"), [1, 2, b'a', b'b', 2, b'a', b'b']);
        let request = connect_request("x.onion", 9879);
        assert_eq!(&request[..5], &[5, 1, 0, 3, 7]);
        assert_eq!(&request[5..12], b"x.onion");
        assert_eq!(&request[12..], &9879u16.to_be_bytes());
    }

    #[test]
    fn tor_reply_codes_map_to_what_a_caller_can_act_on() {
        use TransportErrorKind as K;
        assert_eq!(reply_kind(0xF0).0, K::PeerNotFound);
        assert_eq!(reply_kind(0xF2).0, K::PeerNotFound);
        assert_eq!(reply_kind(0xF7).0, K::Timeout);
        assert_eq!(reply_kind(0x06).0, K::Timeout);
        assert_eq!(reply_kind(0xF4).0, K::Refused);
        assert_eq!(reply_kind(0x42).0, K::Other);
        let peer = carom_proto::IdentityKey::from_seed(&[3; 32]).address();
        let e = reply_error(0xF0, &peer);
        assert_eq!(e.kind(), K::PeerNotFound);
        assert!(e.retryable());
        assert!(!e.to_string().contains(&peer.without_suffix()), "{e}");
        assert!(!reply_error(0xF5, &peer).retryable());
    }
}
