//! The system-tor backend: Carom's onion service on a C tor that is already running (Tails,
//! Whonix, a distribution's tor service), driven through its control port and reached through
//! its SocksPort.
//!
//! At start it authenticates to the control port (SAFECOOKIE, with the cookie file tor names,
//! or a password), asks tor to report bootstrap progress and descriptor uploads, listens on
//! 127.0.0.1 for the streams tor will forward, and adds the service with `ADD_ONION`, giving
//! tor Carom's own identity key (`ED25519-V3`, `Flags=DiscardPK`: tor keeps the key in its
//! memory only and returns nothing; an `ADD_ONION` service is never written to tor's state).
//! Dials go through the SocksPort with username/password isolation, one set of circuits per
//! peer, renewed by [`Transport::forget_path`]. The service lives as long as the control
//! connection; [`Transport::shutdown`] removes it with `DEL_ONION`.
//!
//! What the embedded arti backend does and this one cannot (stated in `docs/tor.md`): no
//! token bucket on rendezvous requests and no proof-of-work of ours (tor's own onion-service
//! DoS defences are its configuration's to set); the per-circuit stream limit is tor's
//! `MaxStreams` with `MaxStreamsCloseCircuit`. A local process that can reach the forwarding
//! listener can open streams to the service as tor does (it is no worse placed than anyone
//! on the Tor network: the Noise handshake authenticates every peer).

mod control;
mod socks;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use carom_proto::{IdentityKey, OnionAddress};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::{
    BootstrapProgress, CAROM_VIRTUAL_PORT, ServiceState, Transport, TransportError,
    TransportErrorKind, TransportStatus,
};
use control::{Control, Reply, pairs, quote};

/// How the control port is to be authenticated. Its `Debug` never shows the password.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum ControlAuth {
    /// Whatever tor offers: SAFECOOKIE with the cookie file it names, or none if it needs
    /// none.
    #[default]
    Auto,
    /// SAFECOOKIE with this cookie file (tor's `CookieAuthFile`).
    CookieFile(PathBuf),
    /// `HashedControlPassword`'s password.
    Password(String),
}

impl std::fmt::Debug for ControlAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlAuth::Auto => f.write_str("Auto"),
            ControlAuth::CookieFile(path) => f.debug_tuple("CookieFile").field(path).finish(),
            ControlAuth::Password(_) => f.write_str("Password(…)"),
        }
    }
}

/// Settings of the system-tor backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemTorConfig {
    /// tor's `ControlPort`. Default 127.0.0.1:9051.
    pub control: SocketAddr,
    /// tor's `SocksPort`. Default 127.0.0.1:9050.
    pub socks: SocketAddr,
    /// How to authenticate to the control port. Default [`ControlAuth::Auto`].
    pub auth: ControlAuth,
    /// Longest a dial may take. Default 120 s.
    pub dial_timeout: Duration,
    /// Longest wait for a control-port reply. Default 30 s.
    pub control_timeout: Duration,
    /// Streams one rendezvous circuit may open to our service before tor closes it
    /// (`MaxStreams`). Default 32, as the arti backend.
    pub max_streams_per_circuit: u16,
}

impl SystemTorConfig {
    /// Refuse settings that cannot work, before anything is connected: tor's ports must be
    /// on this machine (the control port grants full control of tor, and its traffic and the
    /// SOCKS traffic are not encrypted).
    pub fn validate(&self) -> Result<(), TransportError> {
        for (what, addr) in [("control", self.control), ("SOCKS", self.socks)] {
            if !addr.ip().is_loopback() {
                return Err(config_error(format!(
                    "tor's {what} port must be on this machine (127.0.0.1 or ::1), not {addr}"
                )));
            }
        }
        if self.max_streams_per_circuit == 0 {
            return Err(config_error("max_streams_per_circuit must be at least 1"));
        }
        Ok(())
    }
}

impl Default for SystemTorConfig {
    fn default() -> Self {
        SystemTorConfig {
            control: SocketAddr::from((Ipv4Addr::LOCALHOST, 9051)),
            socks: SocketAddr::from((Ipv4Addr::LOCALHOST, 9050)),
            auth: ControlAuth::Auto,
            dial_timeout: Duration::from_secs(120),
            control_timeout: Duration::from_secs(30),
            max_streams_per_circuit: 32,
        }
    }
}

/// Streams tor forwarded that wait for [`Transport::accept`].
const INCOMING_QUEUE: usize = 64;

/// Carom on a C tor that the system runs.
pub struct SystemTorTransport {
    address: OnionAddress,
    service_id: String,
    config: SystemTorConfig,
    control: Arc<Control>,
    status: watch::Sender<TransportStatus>,
    shutdown: watch::Sender<bool>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<TcpStream>>,
    network_enabled: AtomicBool,
    /// Each peer's SOCKS isolation: tor keeps one set of circuits per username, so peers
    /// never share a circuit, and a new token gives a peer fresh ones.
    paths: Mutex<std::collections::HashMap<OnionAddress, u64>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Isolation tokens, unique in this process (several transports may share one tor).
static NEXT_PATH: AtomicU64 = AtomicU64::new(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn config_error(detail: impl Into<String>) -> TransportError {
    TransportError::Config(detail.into())
}

impl SystemTorTransport {
    /// Connect to tor, authenticate, and add Carom's onion service under `identity`.
    ///
    /// Returns once the service is added; bootstrap (if tor is still bootstrapping) and
    /// publication are reported through [`Transport::status`].
    pub async fn start(
        config: SystemTorConfig,
        identity: &IdentityKey,
    ) -> Result<SystemTorTransport, TransportError> {
        config.validate()?;
        let address = identity.address();
        let (control, events) = Control::connect(config.control, config.control_timeout).await?;
        authenticate(&control, &config.auth).await?;
        control
            .command(
                "asking tor for events",
                Zeroizing::new("SETEVENTS STATUS_CLIENT HS_DESC".to_owned()),
            )
            .await?;
        let status = watch::Sender::new(TransportStatus::starting());
        let phase = control
            .command(
                "reading tor's bootstrap state",
                Zeroizing::new("GETINFO status/bootstrap-phase".to_owned()),
            )
            .await?;
        if let Some(line) = phase.value("status/bootstrap-phase") {
            apply_bootstrap(&status, &line);
        }

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| TransportError::io("listening on", "127.0.0.1", e))?;
        let target = listener
            .local_addr()
            .map_err(|e| TransportError::io("listening on", "127.0.0.1", e))?;
        let service_id = address.to_string().trim_end_matches(".onion").to_owned();
        let key = expanded_secret_key(identity);
        let encoded = Zeroizing::new(data_encoding::BASE64.encode(&key[..]));
        let added = control
            .command(
                "adding the onion service",
                Zeroizing::new(format!(
                    "ADD_ONION ED25519-V3:{} Flags=DiscardPK,MaxStreamsCloseCircuit MaxStreams={} Port={CAROM_VIRTUAL_PORT},{target}",
                    encoded.as_str(),
                    config.max_streams_per_circuit
                )),
            )
            .await?;
        if added.value("ServiceID").as_deref() != Some(service_id.as_str()) {
            return Err(TransportError::Tor {
                action: "adding the onion service",
                detail: "tor answered with another service id than our key's".into(),
                retryable: false,
            });
        }
        status.send_modify(|s| s.service = ServiceState::Launching);
        tracing::info!(address = %address.redacted(), "onion service added to the system's tor");

        let control = Arc::new(control);
        let shutdown = watch::Sender::new(false);
        let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
        let tasks = vec![
            tokio::spawn(forward(listener, incoming_tx, shutdown.subscribe())),
            tokio::spawn(watch_events(
                events,
                status.clone(),
                service_id.clone(),
                shutdown.subscribe(),
            )),
        ];
        Ok(SystemTorTransport {
            address,
            service_id,
            config,
            control,
            status,
            shutdown,
            incoming: tokio::sync::Mutex::new(incoming_rx),
            network_enabled: AtomicBool::new(true),
            paths: Mutex::default(),
            tasks: Mutex::new(tasks),
        })
    }

    /// Switch dialling off (`false`: dials fail with `NetworkDisabled`) or back on. Only
    /// Carom's own dials: the system's tor is not told, and the service stays up.
    pub fn set_network_enabled(&self, enabled: bool) {
        self.network_enabled.store(enabled, Ordering::SeqCst);
    }

    /// The peer's isolation, and whether it names a path used before (its circuits may be
    /// open).
    fn isolation(&self, peer: &OnionAddress) -> (String, bool) {
        let mut paths = lock(&self.paths);
        let known = paths.contains_key(peer);
        let token = *paths
            .entry(*peer)
            .or_insert_with(|| NEXT_PATH.fetch_add(1, Ordering::Relaxed));
        // Distinct from any other program's isolation on the same SocksPort.
        (format!("carom-{}-{token}", std::process::id()), known)
    }

    /// One SOCKS attempt on `isolation`, bounded by `within`.
    async fn attempt(
        &self,
        peer: &OnionAddress,
        isolation: &str,
        within: Duration,
    ) -> Result<TcpStream, TransportError> {
        let mut shutdown = self.shutdown.subscribe();
        let dial = socks::connect(self.config.socks, peer, CAROM_VIRTUAL_PORT, isolation);
        tokio::select! {
            () = crate::stopped(&mut shutdown) => Err(TransportError::Shutdown),
            result = tokio::time::timeout(within, dial) => result.unwrap_or_else(|_| {
                Err(TransportError::Timeout {
                    peer: peer.redacted().to_string(),
                    detail: format!("no stream within {:?}", self.config.dial_timeout),
                })
            }),
        }
    }
}

/// tor's form of an ed25519 secret key: the 64-byte expanded key (clamped scalar, then the
/// hash prefix).
fn expanded_secret_key(identity: &IdentityKey) -> Zeroizing<[u8; 64]> {
    use tor_llcrypto::pk::ed25519;
    let keypair = ed25519::Keypair::from_bytes(&identity.seed());
    Zeroizing::new(ed25519::ExpandedKeypair::from(&keypair).to_secret_key_bytes())
}

/// Authenticate the control connection as `auth` says.
async fn authenticate(control: &Control, auth: &ControlAuth) -> Result<(), TransportError> {
    let info = control
        .command(
            "asking tor how to authenticate",
            Zeroizing::new("PROTOCOLINFO 1".to_owned()),
        )
        .await?;
    let offered = info.line_after("AUTH").map(pairs).unwrap_or_default();
    let methods: Vec<String> = offered
        .iter()
        .find(|(k, _)| k == "METHODS")
        .map(|(_, v)| v.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let cookie_file = offered
        .iter()
        .find(|(k, _)| k == "COOKIEFILE")
        .map(|(_, v)| PathBuf::from(v));
    let has = |m: &str| methods.iter().any(|x| x == m);
    let line = match auth {
        ControlAuth::Password(password) => {
            if !has("HASHEDPASSWORD") {
                return Err(config_error(
                    "tor's control port does not take a password (set HashedControlPassword, or use its cookie)",
                ));
            }
            Zeroizing::new(format!("AUTHENTICATE {}", quote(password)))
        }
        ControlAuth::CookieFile(path) => safecookie(control, path).await?,
        ControlAuth::Auto if has("SAFECOOKIE") => {
            let path = cookie_file.ok_or_else(|| {
                config_error("tor offers cookie authentication but names no cookie file")
            })?;
            safecookie(control, &path).await?
        }
        ControlAuth::Auto if has("NULL") => Zeroizing::new("AUTHENTICATE".to_owned()),
        ControlAuth::Auto => {
            return Err(config_error(format!(
                "tor's control port offers {} — set CookieAuthentication 1 in torrc, or give \
                 Carom the control password",
                methods.join(", ")
            )));
        }
    };
    control
        .command("authenticating to tor's control port", line)
        .await
        .map(drop)
        .map_err(|e| match e {
            TransportError::Tor { detail, .. } => config_error(format!(
                "tor's control port refused Carom's authentication: {detail}"
            )),
            e => e,
        })
}

/// The `AUTHENTICATE` line of SAFECOOKIE, after checking that the control port knows the
/// cookie too (so a process posing as tor learns nothing it could replay).
async fn safecookie(
    control: &Control,
    path: &std::path::Path,
) -> Result<Zeroizing<String>, TransportError> {
    let cookie = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| TransportError::io("reading tor's cookie file", path, e))?,
    );
    if cookie.len() != 32 {
        return Err(config_error(format!(
            "{} is not a tor control cookie (32 bytes)",
            path.display()
        )));
    }
    let mut client_nonce = [0u8; 32];
    getrandom(&mut client_nonce)?;
    let challenge = control
        .command(
            "authenticating to tor's control port",
            Zeroizing::new(format!(
                "AUTHCHALLENGE SAFECOOKIE {}",
                data_encoding::HEXUPPER.encode(&client_nonce)
            )),
        )
        .await?;
    let fields = challenge
        .line_after("AUTHCHALLENGE")
        .map(pairs)
        .unwrap_or_default();
    let field = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| data_encoding::HEXUPPER_PERMISSIVE.decode(v.as_bytes()).ok())
    };
    let (Some(server_hash), Some(server_nonce)) = (field("SERVERHASH"), field("SERVERNONCE"))
    else {
        return Err(TransportError::Tor {
            action: "authenticating to tor's control port",
            detail: "AUTHCHALLENGE answered without SERVERHASH and SERVERNONCE".into(),
            retryable: false,
        });
    };
    let mac = |key: &[u8]| {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
        mac.update(&cookie);
        mac.update(&client_nonce);
        mac.update(&server_nonce);
        mac
    };
    mac(b"Tor safe cookie authentication server-to-controller hash")
        .verify_slice(&server_hash)
        .map_err(|_| {
            config_error(format!(
                "the control port at this address does not know {}: it is not the tor that \
                 wrote it",
                path.display()
            ))
        })?;
    let proof = mac(b"Tor safe cookie authentication controller-to-server hash").finalize();
    Ok(Zeroizing::new(format!(
        "AUTHENTICATE {}",
        data_encoding::HEXUPPER.encode(&proof.into_bytes())
    )))
}

fn getrandom(buf: &mut [u8]) -> Result<(), TransportError> {
    use rand::RngCore as _;
    rand::rngs::OsRng
        .try_fill_bytes(buf)
        .map_err(|e| config_error(format!("no randomness from the system: {e}")))
}

/// Bootstrap progress from a `status/bootstrap-phase` value or a `BOOTSTRAP` event:
/// `NOTICE BOOTSTRAP PROGRESS=85 TAG=ap_conn SUMMARY="…"`.
fn apply_bootstrap(status: &watch::Sender<TransportStatus>, line: &str) {
    let fields = pairs(line);
    let get = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let Some(percent) = get("PROGRESS").and_then(|p| p.parse::<u8>().ok()) else {
        return;
    };
    let phase = get("SUMMARY").unwrap_or_default();
    let warning = get("WARNING");
    status.send_modify(|s| {
        s.bootstrap = BootstrapProgress {
            percent: percent.min(100),
            phase,
            ready: percent >= 100,
            // The system's tor is the user's to configure; it reports its own warnings.
            stalled: false,
        };
        if let Some(w) = warning {
            s.last_error = Some(format!("tor: {w}"));
        }
    });
}

/// Follow tor's events: bootstrap progress, and our descriptor's uploads.
async fn watch_events(
    mut events: mpsc::UnboundedReceiver<Reply>,
    status: watch::Sender<TransportStatus>,
    service_id: String,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            () = crate::stopped(&mut shutdown) => return,
            event = events.recv() => event,
        };
        let Some(event) = event else {
            // The control connection ended: tor stopped (or restarted), and our service
            // with it.
            status.send_modify(|s| {
                s.service = ServiceState::Broken(
                    "the connection to tor's control port ended; restart Carom once tor is back"
                        .into(),
                );
                s.bootstrap.ready = false;
            });
            return;
        };
        if let Some(rest) = event.line_after("STATUS_CLIENT") {
            if rest.split_whitespace().nth(1) == Some("BOOTSTRAP") {
                apply_bootstrap(&status, rest);
            }
        } else if let Some(rest) = event.line_after("HS_DESC") {
            // HS_DESC <action> <address> <auth> <hsdir> …
            let mut words = rest.split_whitespace();
            let (action, onion) = (words.next(), words.next());
            if onion == Some(service_id.as_str()) && action == Some("UPLOADED") {
                status.send_modify(|s| {
                    if !matches!(s.service, ServiceState::Stopped) {
                        s.service = ServiceState::Published;
                    }
                });
            }
        }
    }
}

/// Hand the streams tor forwards to our listener to [`Transport::accept`].
async fn forward(
    listener: TcpListener,
    incoming: mpsc::Sender<TcpStream>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            () = crate::stopped(&mut shutdown) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, from)) if from.ip().is_loopback() => {
                let _ = stream.set_nodelay(true);
                // A full queue refuses the stream (dropped) rather than grow memory.
                if incoming.try_send(stream).is_err() && incoming.is_closed() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "accepting a forwarded stream failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Transport for SystemTorTransport {
    type Stream = TcpStream;

    async fn dial(&self, peer: &OnionAddress) -> Result<TcpStream, TransportError> {
        if *self.shutdown.borrow() {
            return Err(TransportError::Shutdown);
        }
        if !self.network_enabled.load(Ordering::SeqCst) {
            return Err(TransportError::NetworkDisabled);
        }
        let bootstrap = self.status.borrow().bootstrap.clone();
        if !bootstrap.ready {
            return Err(TransportError::NotBootstrapped {
                detail: format!("tor is at {} %: {}", bootstrap.percent, bootstrap.phase),
            });
        }
        let started = tokio::time::Instant::now();
        let (isolation, known) = self.isolation(peer);
        let mut result = self
            .attempt(peer, &isolation, self.config.dial_timeout)
            .await;
        if known
            && matches!(&result, Err(e) if matches!(e.kind(), TransportErrorKind::Refused | TransportErrorKind::Other))
        {
            // A circuit that reached the peer before can outlive its service: on it, a peer
            // whose daemon stopped while its own tor runs on fails or refuses streams at once
            // (tor says "general failure" or "refused"). A fresh path asks the network
            // instead, which says whether the peer is there.
            tracing::debug!(peer = %peer.redacted(), "refused on a known path; trying a fresh one");
            self.forget_path(peer);
            let (fresh, _) = self.isolation(peer);
            let left = self.config.dial_timeout.saturating_sub(started.elapsed());
            result = self.attempt(peer, &fresh, left).await;
        }
        if result.is_err() {
            self.forget_path(peer);
        }
        result
    }

    fn forget_path(&self, peer: &OnionAddress) {
        lock(&self.paths).remove(peer);
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
        let removed = self
            .control
            .command(
                "removing the onion service",
                Zeroizing::new(format!("DEL_ONION {}", self.service_id)),
            )
            .await;
        if let Err(e) = removed {
            // Closing the control connection removes it too.
            tracing::debug!(error = %e, "DEL_ONION failed");
        }
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        self.status.send_modify(|s| {
            s.service = ServiceState::Stopped;
            s.bootstrap.ready = false;
            s.bootstrap.phase = "shut down".into();
        });
        tracing::info!(address = %self.address.redacted(), "transport shut down");
    }
}

impl Drop for SystemTorTransport {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_given_to_tor_is_the_expanded_form_of_our_identity() {
        let identity = IdentityKey::from_seed(&[7; 32]);
        let key = expanded_secret_key(&identity);
        let keypair = tor_llcrypto::pk::ed25519::ExpandedKeypair::from_secret_key_bytes(*key)
            .expect("a valid expanded key");
        assert_eq!(keypair.public().to_bytes(), identity.address().public_key());
    }

    #[test]
    fn a_password_never_shows_in_debug_output() {
        let config = SystemTorConfig {
            auth: ControlAuth::Password("hunter2".into()),
            ..SystemTorConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("Password"), "{shown}");
    }

    #[test]
    fn only_ports_on_this_machine_are_accepted() {
        assert!(SystemTorConfig::default().validate().is_ok());
        let remote = SystemTorConfig {
            control: "192.0.2.1:9051".parse().unwrap(),
            ..SystemTorConfig::default()
        };
        let e = remote.validate().unwrap_err();
        assert!(e.to_string().contains("must be on this machine"), "{e}");
        let remote = SystemTorConfig {
            socks: "[2001:db8::1]:9050".parse().unwrap(),
            ..SystemTorConfig::default()
        };
        assert!(remote.validate().is_err());
        let ipv6 = SystemTorConfig {
            socks: "[::1]:9050".parse().unwrap(),
            ..SystemTorConfig::default()
        };
        assert!(ipv6.validate().is_ok());
    }

    #[test]
    fn bootstrap_lines_become_progress() {
        let status = watch::Sender::new(TransportStatus::starting());
        apply_bootstrap(
            &status,
            "NOTICE BOOTSTRAP PROGRESS=85 TAG=ap_conn SUMMARY=\"Connecting to a relay to build circuits\"",
        );
        let s = status.borrow().clone();
        assert_eq!(s.bootstrap.percent, 85);
        assert!(!s.bootstrap.ready);
        assert_eq!(s.bootstrap.phase, "Connecting to a relay to build circuits");
        apply_bootstrap(
            &status,
            "NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY=\"Done\"",
        );
        assert!(status.borrow().bootstrap.ready);
        apply_bootstrap(&status, "NOTICE CIRCUIT_ESTABLISHED");
        assert!(
            status.borrow().bootstrap.ready,
            "other status lines change nothing"
        );
    }
}
