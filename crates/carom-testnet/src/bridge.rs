//! A bridge relay of the private network with an `obfs4` server transport, for clients that
//! reach Tor only through bridges.
//!
//! It is a C tor relay with `BridgeRelay 1` that publishes no descriptor, so it is absent from
//! the consensus (as a real unlisted bridge is), and runs Debian's `obfs4proxy` as its managed
//! server transport (`ServerTransportPlugin`) on a loopback port of its own. Clients learn it
//! only from a bridge line: [`Obfs4Bridge::bridge_line`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::err::{Error, Result};
use crate::network::{TestNetwork, make_private_dir};
use crate::process;
use crate::torrc::{self, Role};

/// Longest wait for the bridge to have a consensus and its transport running.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// A running obfs4 bridge; stopped (by PID, with its `obfs4proxy`) when dropped.
#[derive(Debug)]
pub struct Obfs4Bridge<'net> {
    network: &'net TestNetwork,
    pid: u32,
    or_port: u16,
    obfs4_port: u16,
    fingerprint: String,
    cert: String,
    data_dir: PathBuf,
}

pub(crate) fn start(network: &TestNetwork) -> Result<Obfs4Bridge<'_>> {
    let obfs4proxy = process::find_program("obfs4proxy", "CAROM_OBFS4PROXY_BIN")?;
    let nickname = network.next_bridge_name();
    let data_dir = network.root().join("nodes").join(&nickname);
    make_private_dir(&data_dir)?;
    let or_port = network.take_port();
    let obfs4_port = network.take_port();
    let (fingerprint, ed_identity) = network.relay_identities(&data_dir)?;
    let mut text = torrc::common(
        &nickname,
        &data_dir,
        network.authority_lines(),
        network.owner_pid(),
    );
    text.push_str(&torrc::obfs4_bridge(or_port, obfs4_port, &obfs4proxy));
    let info = crate::NodeInfo {
        nickname,
        role: Role::Bridge,
        or_port: Some(or_port),
        dir_port: None,
        socks_port: None,
        rsa_identity: Some(fingerprint.clone()),
        ed_identity: Some(ed_identity),
        v3ident: None,
        data_dir: data_dir.clone(),
        pid: None,
    };
    let log = info.log();
    let pid = network.launch(info, &text)?;
    let mut bridge = Obfs4Bridge {
        network,
        pid,
        or_port,
        obfs4_port,
        fingerprint,
        cert: String::new(),
        data_dir,
    };
    bridge.cert = bridge.wait_ready(&log)?;
    Ok(bridge)
}

impl Obfs4Bridge<'_> {
    /// The bridge line a client needs, as Tor Browser and arti take it:
    /// `obfs4 127.0.0.1:<port> <fingerprint> cert=<cert> iat-mode=0`.
    pub fn bridge_line(&self) -> String {
        format!(
            "obfs4 127.0.0.1:{} {} cert={} iat-mode=0",
            self.obfs4_port, self.fingerprint, self.cert
        )
    }

    /// The same bridge without its transport: its ORPort, plain Tor protocol (a "vanilla"
    /// bridge line).
    pub fn plain_bridge_line(&self) -> String {
        format!("127.0.0.1:{} {}", self.or_port, self.fingerprint)
    }

    /// The bridge's obfs4 certificate (its server's public key and node id, base64).
    pub fn cert(&self) -> &str {
        &self.cert
    }

    /// The bridge's tor process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The bridge's data directory (its torrc, `notice.log` and `pt_state/`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Wait until tor has a consensus to serve (bridges are their clients' directory caches)
    /// and obfs4proxy has written its bridge line; returns the certificate from that line.
    fn wait_ready(&self, log: &Path) -> Result<String> {
        let line_file = self.data_dir.join("pt_state").join("obfs4_bridgeline.txt");
        let started = Instant::now();
        loop {
            self.network.check_alive()?;
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            let cert = std::fs::read_to_string(&line_file)
                .ok()
                .and_then(|text| cert_of(&text));
            let consensus = self.data_dir.join("cached-microdesc-consensus").exists();
            if let Some(cert) = cert
                && consensus
                && log_text.contains("Bootstrapped 100%")
                && log_text.contains("Registered server transport 'obfs4'")
            {
                return Ok(cert);
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(Error::NotReady {
                    waited: started.elapsed(),
                    problem: "the obfs4 bridge did not bootstrap, fetch a microdescriptor \
                              consensus and register its obfs4 transport"
                        .into(),
                    log: log.to_path_buf(),
                    log_tail: process::log_tail(log, 20),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The `cert=` value of the bridge line obfs4proxy writes to `obfs4_bridgeline.txt` (comment
/// lines, then `Bridge obfs4 <IP ADDRESS>:<PORT> <FINGERPRINT> cert=… iat-mode=0`).
fn cert_of(text: &str) -> Option<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .find_map(|word| word.strip_prefix("cert="))
        .filter(|cert| !cert.is_empty())
        .map(str::to_owned)
}

impl Drop for Obfs4Bridge<'_> {
    fn drop(&mut self) {
        // tor stops its managed transport when it exits.
        self.network.stop_node(self.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_read_from_obfs4proxys_bridge_line() {
        let text = "# obfs4 torrc client bridge line\n#\n# This file is an automatically generated bridge line\n\
                    \nBridge obfs4 <IP ADDRESS>:<PORT> <FINGERPRINT> cert=AbC+/12 iat-mode=0\n";
        assert_eq!(cert_of(text).as_deref(), Some("AbC+/12"));
        assert_eq!(cert_of("# cert=commented\n"), None);
        assert_eq!(cert_of(""), None);
    }
}
