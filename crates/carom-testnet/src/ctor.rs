//! A C tor client on the private network: a SOCKS port, and optionally an onion service.
//!
//! Used to show that what Carom's embedded arti does interoperates with the reference
//! implementation in both directions.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::err::{Error, Result};
use crate::network::{TestNetwork, make_private_dir};
use crate::process;
use crate::torrc::{self, Role};

/// Longest wait for a C tor client to bootstrap.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(180);

/// A running C tor client; stopped (by PID) when dropped.
#[derive(Debug)]
pub struct CtorClient<'net> {
    network: &'net TestNetwork,
    pid: u32,
    socks_port: u16,
    control_port: Option<u16>,
    onion_service_dir: Option<PathBuf>,
    log: PathBuf,
}

pub(crate) fn start(
    network: &TestNetwork,
    onion_service: Option<(u16, u16)>,
    with_control: bool,
) -> Result<CtorClient<'_>> {
    let nickname = network.next_client_name();
    let data_dir = network.root().join("nodes").join(&nickname);
    make_private_dir(&data_dir)?;
    let socks_port = network.take_port();
    let control_port = with_control.then(|| network.take_port());
    let hs_dir = data_dir.join("onion-service");
    let mut text = torrc::common(
        &nickname,
        &data_dir,
        network.authority_lines(),
        network.owner_pid(),
    );
    text.push_str(&torrc::client(
        socks_port,
        onion_service.map(|(virt, target)| (hs_dir.as_path(), virt, target)),
        control_port,
    ));
    let info = crate::NodeInfo {
        nickname,
        role: Role::Client,
        or_port: None,
        dir_port: None,
        socks_port: Some(socks_port),
        rsa_identity: None,
        ed_identity: None,
        v3ident: None,
        data_dir,
        pid: None,
    };
    let log = info.log();
    let pid = network.launch(info, &text)?;
    let client = CtorClient {
        network,
        pid,
        socks_port,
        control_port,
        onion_service_dir: onion_service.map(|_| hs_dir),
        log,
    };
    client.wait_bootstrapped()?;
    Ok(client)
}

impl CtorClient<'_> {
    /// The client's SOCKS5 address.
    pub fn socks_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.socks_port))
    }

    /// The client's control port, if it was started with one (cookie authentication: tor
    /// names the cookie file in `PROTOCOLINFO`).
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_port
            .map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    /// The tor process's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The client's data directory (tor's state, keys and caches).
    pub fn data_dir(&self) -> &std::path::Path {
        self.log.parent().unwrap_or(&self.log)
    }

    /// The client's notice log.
    pub fn log(&self) -> &std::path::Path {
        &self.log
    }

    /// The `xxx.onion` hostname of the client's onion service, once tor has written it.
    pub fn onion_hostname(&self, timeout: Duration) -> Result<String> {
        let dir = self
            .onion_service_dir
            .as_ref()
            .ok_or_else(|| Error::Malformed {
                path: self.log.clone(),
                problem: "this client was started without an onion service".into(),
            })?;
        let path = dir.join("hostname");
        let started = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                return Ok(text.trim().to_owned());
            }
            self.network.check_alive()?;
            if started.elapsed() > timeout {
                return Err(Error::io(
                    "waiting for",
                    &path,
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "tor wrote no hostname"),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Open a TCP stream to `host:port` through this client's SOCKS port.
    pub fn connect(&self, host: &str, port: u16, timeout: Duration) -> Result<TcpStream> {
        socks5_connect(self.socks_addr(), host, port, timeout)
    }

    fn wait_bootstrapped(&self) -> Result<()> {
        let started = Instant::now();
        loop {
            self.network.check_alive()?;
            if std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains("Bootstrapped 100%")) {
                return Ok(());
            }
            if started.elapsed() > BOOTSTRAP_TIMEOUT {
                return Err(Error::NotReady {
                    waited: started.elapsed(),
                    problem: "the C tor client did not reach `Bootstrapped 100%`".into(),
                    log: self.log.clone(),
                    log_tail: process::log_tail(&self.log, 20),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for CtorClient<'_> {
    fn drop(&mut self) {
        self.network.stop_node(self.pid);
    }
}

/// [`socks5_connect`], tried again every 2 s until it succeeds or `within` has passed: a
/// descriptor still being published, or a time-period rotation, can fail the first attempts.
/// Returns the stream and how long reaching it took, or the last error.
pub fn socks5_connect_within(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    within: Duration,
) -> Result<(TcpStream, Duration)> {
    let started = Instant::now();
    loop {
        match socks5_connect(proxy, host, port, Duration::from_secs(60)) {
            Ok(stream) => return Ok((stream, started.elapsed())),
            Err(e) if started.elapsed() < within => {
                tracing::info!(error = %e, "SOCKS connect failed; retrying");
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Connect through a SOCKS5 proxy to a host name (resolved by the proxy, as `.onion` needs).
pub fn socks5_connect(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream> {
    let fail = |problem: String| Error::Socks {
        proxy: proxy.to_string(),
        target: format!("{host}:{port}"),
        problem,
    };
    let host_len = u8::try_from(host.len()).map_err(|_| fail("host name too long".into()))?;
    let mut stream =
        TcpStream::connect_timeout(&proxy, timeout).map_err(|e| fail(format!("connect: {e}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| fail(e.to_string()))?;
    // Greeting: version 5, one method, "no authentication".
    stream
        .write_all(&[5, 1, 0])
        .map_err(|e| fail(format!("greeting: {e}")))?;
    let mut reply = [0u8; 2];
    stream
        .read_exact(&mut reply)
        .map_err(|e| fail(format!("greeting reply: {e}")))?;
    if reply != [5, 0] {
        return Err(fail(format!("proxy refused the greeting: {reply:?}")));
    }
    // CONNECT by domain name.
    let mut request = vec![5, 1, 0, 3, host_len];
    request.extend_from_slice(host.as_bytes());
    request.extend_from_slice(&port.to_be_bytes());
    stream
        .write_all(&request)
        .map_err(|e| fail(format!("request: {e}")))?;
    let mut head = [0u8; 4];
    stream
        .read_exact(&mut head)
        .map_err(|e| fail(format!("reply: {e}")))?;
    if head[1] != 0 {
        return Err(fail(format!("proxy answered with SOCKS error {}", head[1])));
    }
    // Skip the bound address: IPv4, domain or IPv6, then a port.
    let skip = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            stream
                .read_exact(&mut len)
                .map_err(|e| fail(format!("reply: {e}")))?;
            usize::from(len[0]) + 2
        }
        other => return Err(fail(format!("unknown address type {other} in reply"))),
    };
    let mut rest = vec![0u8; skip];
    stream
        .read_exact(&mut rest)
        .map_err(|e| fail(format!("reply: {e}")))?;
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(|e| fail(e.to_string()))?;
    Ok(stream)
}
