//! The embedded-arti backend: Carom's onion service and dials inside the daemon's process.

mod bridge_state;
mod config;
mod nodelay;
mod service;

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use arti_client::{BootstrapBehavior, DataStream, IsolationToken, StreamPrefs, TorClient};
use carom_proto::{IdentityKey, OnionAddress};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tor_hscrypto::pk::{HsIdKey, HsIdKeypair};
use tor_hsservice::RunningOnionService;
use tor_llcrypto::pk::ed25519;

pub use config::{ArtiConfig, TorNetwork, Vanguards};

use crate::admission::Counters;
use crate::{
    AdmissionStats, CAROM_VIRTUAL_PORT, ServiceState, Transport, TransportError, TransportStatus,
};

/// The nickname of Carom's service inside arti (one service per transport).
const SERVICE_NICKNAME: &str = "carom";

/// Depth of the queue of accepted streams waiting for `accept()`.
const INCOMING_QUEUE: usize = 64;

/// How long `shutdown` waits for arti's tasks to end.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Worker threads of arti's runtime.
const ARTI_THREADS: usize = 2;

/// arti's client type on tokio.
type Client = TorClient<nodelay::Runtime>;

/// A stream over Tor to or from a peer. Writes are buffered into relay cells until
/// [`flush`](tokio::io::AsyncWriteExt::flush): flush after every frame.
#[derive(Debug)]
pub struct ArtiStream(DataStream);

impl AsyncRead for ArtiStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ArtiStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// State shared with the background tasks. Holds no arti object, so that dropping the
/// transport drops arti.
#[derive(Debug)]
struct Shared {
    /// Our address, to scrub from any text arti gives us.
    address: OnionAddress,
    status: watch::Sender<TransportStatus>,
    shutdown: watch::Sender<bool>,
    bootstrapped: AtomicBool,
    counters: Arc<Counters>,
    /// Bumped when the bridges change, so that the stall watch starts afresh.
    stall_epoch: AtomicU64,
}

impl Shared {
    fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// The embedded-arti [`Transport`]: Carom's onion service under the profile's own key, and
/// dials to contacts, in this process.
///
/// See the crate documentation for what it guarantees (key never on disk, admission
/// control, proof-of-work, vanguards).
pub struct ArtiTransport {
    address: OnionAddress,
    shared: Arc<Shared>,
    /// arti runs on a runtime of its own, so that shutting the transport down can end every
    /// task arti started (arti has no shutdown call; its tasks live as long as their runtime).
    runtime: Mutex<Option<ArtiRuntime>>,
    handle: tokio::runtime::Handle,
    client: Mutex<Option<Arc<Client>>>,
    service: Mutex<Option<Arc<RunningOnionService>>>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<ArtiStream>>,
    network_enabled: AtomicBool,
    dial_timeout: Duration,
    dial_hedge_after: Duration,
    /// The settings arti was started with, with the bridges now in force: what
    /// [`ArtiTransport::set_bridges`] rebuilds arti's configuration from.
    config: Mutex<ArtiConfig>,
    /// Every bridge arti may hold in its guard sample during this run, as (identity,
    /// channel): those it remembered at start and every line configured since.
    known_bridges: Mutex<Vec<(String, String)>>,
    /// Per peer, the stream isolation of the path that last worked. arti keys its cached
    /// descriptor, introduction-point history and rendezvous circuit by (service, isolation):
    /// dials with the same token reuse them (a warm dial is one round trip), and a new token
    /// starts from scratch — a fresh descriptor, a fresh circuit — without waiting on an
    /// earlier attempt still stuck inside arti (a timed-out `connect` is not cancelled there,
    /// and a retry with the same isolation would join it).
    paths: Mutex<HashMap<OnionAddress, IsolationToken>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Aborts the tasks it holds when dropped.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// What one dial attempt returns: its path, and arti's answer or our timeout.
type Attempt = (
    IsolationToken,
    Result<Result<DataStream, arti_client::Error>, tokio::time::error::Elapsed>,
);

impl std::fmt::Debug for ArtiTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtiTransport")
            .field("address", &self.address)
            .field("status", &*self.shared.status.borrow())
            .finish_non_exhaustive()
    }
}

/// arti's own tokio runtime. Dropping it never blocks (a tokio runtime dropped inside async
/// code would panic): tasks are told to stop and wound down in the background.
#[derive(Debug)]
struct ArtiRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    id: u64,
}

/// Numbers the arti runtimes of this process, so their threads can be told apart.
static NEXT_RUNTIME: AtomicU64 = AtomicU64::new(0);
/// The runtimes that have begun to stop (see [`quiet_shutdown_panics`]).
static STOPPING: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());
const THREAD_PREFIX: &str = "carom-arti-";

impl ArtiRuntime {
    fn new() -> Result<ArtiRuntime, TransportError> {
        static HOOK: Once = Once::new();
        HOOK.call_once(quiet_shutdown_panics);
        let id = NEXT_RUNTIME.fetch_add(1, Ordering::Relaxed);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(ARTI_THREADS)
            .thread_name(format!("{THREAD_PREFIX}{id}"))
            .enable_all()
            .build()
            .map(|rt| ArtiRuntime {
                runtime: Some(rt),
                id,
            })
            .map_err(|e| TransportError::io("start a runtime for", "arti", e))
    }

    /// Stop every task and wait (off the async threads) until they are gone, up to `wait`.
    async fn stop(mut self, wait: Duration) {
        if let Some(runtime) = self.runtime.take() {
            lock(&STOPPING).insert(self.id);
            let stopped = tokio::task::spawn_blocking(move || runtime.shutdown_timeout(wait));
            if stopped.await.is_err() {
                tracing::warn!("arti's runtime did not stop cleanly");
            }
        }
    }
}

impl Drop for ArtiRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            lock(&STOPPING).insert(self.id);
            runtime.shutdown_background();
        }
    }
}

/// arti 0.47's proof-of-work threads touch a timer on arti's runtime after it has begun to
/// stop, and tokio answers with a panic on that (blocking) thread: harmless — the thread was
/// ending anyway — but it prints a frightening backtrace at every shutdown. Exactly that
/// panic, on the threads of an arti runtime that is stopping, is logged at debug level
/// instead; every other panic goes to the hook that was installed before.
fn quiet_shutdown_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or_default();
        let stopping_runtime = std::thread::current()
            .name()
            .and_then(|name| name.strip_prefix(THREAD_PREFIX))
            .and_then(|id| id.parse::<u64>().ok())
            .is_some_and(|id| lock(&STOPPING).contains(&id));
        if stopping_runtime && message.contains("context was found, but it is being shutdown") {
            tracing::debug!("an arti background thread stopped with its runtime");
            return;
        }
        previous(info);
    }));
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// arti's identity keypair for `identity`, built in memory from the seed.
fn hs_keypair(identity: &IdentityKey) -> HsIdKeypair {
    let seed = identity.seed();
    let keypair = ed25519::Keypair::from_bytes(&seed);
    HsIdKeypair::from(ed25519::ExpandedKeypair::from(&keypair))
}

/// Remove arti's records of our service's previous introduction points.
///
/// arti persists its introduction-point records (`hss/<nickname>/ipts.json` and friends) in
/// the state directory, but their keys live in the keystore, which for us is in memory only.
/// Restarted on the old records, arti finds the keys gone and the service stays unreachable
/// (seen with arti 0.47). Starting from no records, it picks new introduction points and
/// publishes a new descriptor; peers holding the old one fail over within seconds.
///
/// The state directory belongs to one transport at a time (the daemon's single-instance
/// lock), so nothing else is using these records.
fn forget_service_state(state_dir: &std::path::Path) -> Result<(), TransportError> {
    let records = state_dir.join("hss").join(SERVICE_NICKNAME);
    match std::fs::remove_dir_all(&records) {
        Ok(()) => {
            tracing::debug!("removed the previous run's introduction-point records");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TransportError::io("remove", records, e)),
    }
}

/// What `launch` hands back: the client, the running service, and the background tasks.
type Launched = (Arc<Client>, Arc<RunningOnionService>, Vec<JoinHandle<()>>);

/// On arti's runtime: create the client, launch the service under `keypair`, and start the
/// background tasks (bootstrap, status, admission).
async fn launch(
    tor_config: arti_client::TorClientConfig,
    service_config: tor_hsservice::OnionServiceConfig,
    keypair: HsIdKeypair,
    address: OnionAddress,
    stall_after: Duration,
    rend: service::RendContext,
) -> Result<Launched, TransportError> {
    let shared = Arc::clone(&rend.shared);
    let runtime =
        nodelay::runtime().map_err(|e| TransportError::Config(format!("arti's runtime: {e}")))?;
    let client = TorClient::with_runtime(runtime)
        .config(tor_config)
        .bootstrap_behavior(BootstrapBehavior::OnDemand)
        .local_resource_timeout(arti_client::MAX_LOCAL_RESOURCE_TIMEOUT)
        .create_unbootstrapped_async()
        .await
        .map_err(|e| TransportError::from_arti("starting", &e))?;

    // Launch the service now: it waits for a directory by itself, so publication starts the
    // moment the bootstrap allows.
    let expected = HsIdKey::from(&keypair).id();
    let (service, rend_requests) = client
        .launch_onion_service_with_hsid(service_config, keypair)
        .map_err(|e| TransportError::from_arti("launching the onion service", &e))?
        .ok_or_else(|| TransportError::Config("the onion service is disabled".into()))?;
    let launched: Option<[u8; 32]> = service.onion_address().map(|id| *id.as_ref());
    if launched != Some(*expected.as_ref()) || launched != Some(address.public_key()) {
        return Err(TransportError::Config(
            "arti launched the onion service under another key".into(),
        ));
    }
    shared
        .status
        .send_modify(|s| s.service = ServiceState::Launching);

    let tasks = vec![
        tokio::spawn(service::bootstrap_task(
            Arc::clone(&client),
            Arc::clone(&shared),
        )),
        tokio::spawn(service::status_task(
            client.bootstrap_events(),
            service.status_events(),
            Arc::clone(&shared),
        )),
        tokio::spawn(service::rend_loop(Box::pin(rend_requests), rend)),
        tokio::spawn(service::stall_task(
            Arc::clone(&client),
            Arc::clone(&shared),
            stall_after,
        )),
    ];
    Ok((client, service, tasks))
}

impl ArtiTransport {
    /// Start arti with `config`, launch Carom's onion service under `identity`, and return.
    ///
    /// Returns as soon as arti is set up; bootstrapping and publication continue in the
    /// background and are reported through [`Transport::status`]. Dials before the bootstrap
    /// completes fail with `NotBootstrapped`. Must be called inside a tokio runtime; arti
    /// itself runs on a small runtime of its own (two worker threads) that
    /// [`Transport::shutdown`] ends, which releases arti's state directory at once.
    ///
    /// The identity key goes to arti's ephemeral (in-memory) keystore; nothing key-like is
    /// written under the state or cache directory.
    pub async fn start(
        config: ArtiConfig,
        identity: &IdentityKey,
    ) -> Result<ArtiTransport, TransportError> {
        config.validate()?;
        config::private_dir(&config.state_dir)?;
        config::private_dir(&config.cache_dir)?;
        forget_service_state(&config.state_dir)?;
        let tor_config = config.tor_client_config()?;
        let reconciled = bridge_state::reconcile(&config.state_dir, &config.bridges.lines)?;
        if reconciled.forgotten > 0 {
            tracing::info!(
                forgotten = reconciled.forgotten,
                "arti remembered bridges under an old line; they are sampled afresh"
            );
        }
        let known_bridges = reconciled.known;
        let service_config = service::service_config(&config)?;
        let address = identity.address();

        let runtime = ArtiRuntime::new()?;
        let handle = match &runtime.runtime {
            Some(rt) => rt.handle().clone(),
            None => return Err(TransportError::Shutdown),
        };

        let mut status = TransportStatus::starting();
        status.bridges = config.bridges.lines.len();
        let shared = Arc::new(Shared {
            address,
            status: watch::Sender::new(status),
            shutdown: watch::Sender::new(false),
            bootstrapped: AtomicBool::new(false),
            counters: Counters::new(),
            stall_epoch: AtomicU64::new(0),
        });
        let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
        let keypair = hs_keypair(identity);
        let setup = handle.spawn(launch(
            tor_config,
            service_config,
            keypair,
            address,
            config.bootstrap_stall_after,
            service::RendContext {
                admission: config.admission,
                pow: config.pow,
                incoming: incoming_tx,
                shared: Arc::clone(&shared),
            },
        ));
        let launched = match setup.await {
            Ok(result) => result,
            Err(e) => Err(TransportError::Config(format!(
                "arti set-up task failed: {e}"
            ))),
        };
        // On failure `runtime` is dropped, which winds arti down in the background.
        let (client, service, tasks) = launched?;
        tracing::info!(address = %address.redacted(), "onion service launched");

        Ok(ArtiTransport {
            address,
            shared,
            runtime: Mutex::new(Some(runtime)),
            handle,
            client: Mutex::new(Some(client)),
            service: Mutex::new(Some(service)),
            incoming: tokio::sync::Mutex::new(incoming_rx),
            network_enabled: AtomicBool::new(true),
            dial_timeout: config.dial_timeout,
            dial_hedge_after: config.dial_hedge_after,
            config: Mutex::new(config),
            known_bridges: Mutex::new(known_bridges),
            paths: Mutex::new(HashMap::new()),
            tasks: Mutex::new(tasks),
        })
    }

    /// Enter Tor through these bridges from now on (none: through the network's own relays).
    ///
    /// The settings are checked first (a malformed line or a missing transport program is an
    /// error and changes nothing), then arti is reconfigured in place: new circuits use the
    /// new bridges, and a bootstrap stuck on the old ones carries on through them.
    ///
    /// A line that changes the channel of a bridge already in use (another `cert=`, address or
    /// transport for the same identity) takes effect only at the next start: arti 0.47 keeps
    /// such a bridge under its first line while it runs (see `bridge_state`). The returned
    /// [`BridgesApplied`](crate::BridgesApplied) says so.
    pub fn set_bridges(
        &self,
        bridges: crate::Bridges,
    ) -> Result<crate::BridgesApplied, TransportError> {
        let client = self.client()?;
        let mut config = lock(&self.config);
        let mut next = config.clone();
        next.bridges = bridges;
        let tor_config = next.tor_client_config()?;
        let mut known = lock(&self.known_bridges);
        let at_next_start = crate::bridges::changed_lines(&known, &next.bridges.lines);
        client
            .reconfigure(&tor_config, arti_client::config::Reconfigure::AllOrNothing)
            .map_err(|e| TransportError::from_arti("applying the new bridges", &e))?;
        let count = next.bridges.lines.len();
        known.extend(
            next.bridges
                .lines
                .iter()
                .filter_map(|l| crate::bridges::line_parts(l)),
        );
        *config = next;
        self.shared.stall_epoch.fetch_add(1, Ordering::SeqCst);
        self.shared.status.send_modify(|s| {
            s.bridges = count;
            s.bootstrap.stalled = false;
        });
        tracing::info!(bridges = count, "Tor's bridges changed");
        Ok(crate::BridgesApplied { at_next_start })
    }

    /// What admission control and the service have done so far.
    pub fn admission_stats(&self) -> AdmissionStats {
        self.shared.counters.snapshot()
    }

    /// Switch dialling off (`false`: dials fail with `NetworkDisabled` and arti's background
    /// activity is put to sleep) or back on. The onion service keeps running; use
    /// [`Transport::shutdown`] to go offline entirely.
    pub fn set_network_enabled(&self, enabled: bool) {
        self.network_enabled.store(enabled, Ordering::SeqCst);
        if let Some(client) = lock(&self.client).as_ref() {
            client.set_dormant(if enabled {
                arti_client::DormantMode::Normal
            } else {
                arti_client::DormantMode::Soft
            });
        }
    }

    /// One attempt to open a stream to `peer` over the path `token` names, on arti's runtime,
    /// bounded by the dial timeout.
    fn attempt(
        &self,
        client: &Arc<Client>,
        peer: &OnionAddress,
        token: IsolationToken,
    ) -> tokio::task::JoinHandle<Attempt> {
        let client = Arc::clone(client);
        let host = peer.to_string();
        let dial_timeout = self.dial_timeout;
        self.handle.spawn(async move {
            let mut prefs = StreamPrefs::new();
            prefs.set_isolation(token);
            let connect = client.connect_with_prefs((host.as_str(), CAROM_VIRTUAL_PORT), &prefs);
            (token, tokio::time::timeout(dial_timeout, connect).await)
        })
    }

    fn client(&self) -> Result<Arc<Client>, TransportError> {
        lock(&self.client).clone().ok_or(TransportError::Shutdown)
    }

    fn stop_tasks(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

impl Transport for ArtiTransport {
    type Stream = ArtiStream;

    fn set_bridges(
        &self,
        bridges: crate::Bridges,
    ) -> Result<crate::BridgesApplied, TransportError> {
        ArtiTransport::set_bridges(self, bridges)
    }

    async fn dial(&self, peer: &OnionAddress) -> Result<ArtiStream, TransportError> {
        if self.shared.is_shut_down() {
            return Err(TransportError::Shutdown);
        }
        if !self.network_enabled.load(Ordering::SeqCst) {
            return Err(TransportError::NetworkDisabled);
        }
        if !self.shared.bootstrapped.load(Ordering::SeqCst) {
            let detail = self.shared.status.borrow().bootstrap.phase.clone();
            return Err(TransportError::NotBootstrapped { detail });
        }
        let client = self.client()?;
        let mut shutdown = self.shared.shutdown.subscribe();
        let started = tokio::time::Instant::now();
        let known = lock(&self.paths).get(peer).copied();
        let mut attempts = FuturesUnordered::new();
        // Whatever ends this dial (a winner, a failure, shutdown) stops the other attempts.
        let mut running = AbortOnDrop(Vec::new());
        let first = self.attempt(&client, peer, known.unwrap_or_else(IsolationToken::new));
        running.0.push(first.abort_handle());
        attempts.push(first);
        // A dial still pending after a while gets a second attempt on a fresh path beside it
        // (the first goes on): a stale descriptor or a hung circuit then costs seconds, not
        // the whole dial timeout, while a slow but healthy dial is not cut short. A known path
        // should answer in one round trip (its circuit is open, or its descriptor cached), so
        // it is given a third of the time: a peer that restarted with new introduction points
        // is the everyday case of a known path gone stale.
        let hedge_after = if known.is_some() {
            self.dial_hedge_after / 3
        } else {
            self.dial_hedge_after
        };
        let hedge = tokio::time::sleep(hedge_after);
        tokio::pin!(hedge);
        let mut hedged = false;
        let mut last_error = None;
        while last_error.is_none() || !attempts.is_empty() {
            let (token, result) = tokio::select! {
                () = crate::stopped(&mut shutdown) => return Err(TransportError::Shutdown),
                () = &mut hedge, if !hedged && !attempts.is_empty() => {
                    hedged = true;
                    tracing::debug!(peer = %peer.redacted(), "dial slow; trying a fresh path beside it");
                    let second = self.attempt(&client, peer, IsolationToken::new());
                    running.0.push(second.abort_handle());
                    attempts.push(second);
                    continue;
                }
                Some(finished) = attempts.next() => match finished {
                    Ok(attempt) => attempt,
                    Err(_) => return Err(TransportError::Shutdown),
                },
            };
            match result {
                Ok(Ok(stream)) => {
                    lock(&self.paths).insert(*peer, token);
                    tracing::debug!(
                        peer = %peer.redacted(),
                        elapsed_ms = started.elapsed().as_millis(),
                        hedged,
                        "dial succeeded"
                    );
                    return Ok(ArtiStream(stream));
                }
                Ok(Err(e)) => {
                    let error = TransportError::from_dial(&e, peer);
                    tracing::debug!(peer = %peer.redacted(), kind = %error.kind(), "dial attempt failed: {error}");
                    last_error = Some(error);
                }
                Err(_) => {
                    last_error = Some(TransportError::Timeout {
                        peer: peer.redacted().to_string(),
                        detail: format!("no stream within {:?}", self.dial_timeout),
                    });
                }
            }
        }
        // Every attempt failed: the next dial starts from scratch.
        self.forget_path(peer);
        Err(last_error.unwrap_or(TransportError::Shutdown))
    }

    fn forget_path(&self, peer: &OnionAddress) {
        lock(&self.paths).remove(peer);
    }

    async fn accept(&self) -> Option<ArtiStream> {
        crate::next_incoming(&self.shared.shutdown, &self.incoming).await
    }

    fn status(&self) -> watch::Receiver<TransportStatus> {
        self.shared.status.subscribe()
    }

    fn address(&self) -> OnionAddress {
        self.address
    }

    async fn shutdown(&self) {
        if self.shared.shutdown.send_replace(true) {
            return;
        }
        self.stop_tasks();
        drop(lock(&self.service).take());
        drop(lock(&self.client).take());
        let runtime = lock(&self.runtime).take();
        if let Some(runtime) = runtime {
            // Ending arti's runtime drops every task arti started, and with them the state
            // directory's lock, so the same directories can be used again at once.
            runtime.stop(STOP_WAIT).await;
        }
        self.shared.status.send_modify(|s| {
            s.service = ServiceState::Stopped;
            s.bootstrap.ready = false;
            s.bootstrap.phase = "shut down".into();
        });
        tracing::info!(address = %self.address.redacted(), "transport shut down");
    }
}

impl Drop for ArtiTransport {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        self.stop_tasks();
        drop(lock(&self.service).take());
        drop(lock(&self.client).take());
        // Cannot block here (we may be inside async code): arti winds down in the background.
        drop(lock(&self.runtime).take());
    }
}
