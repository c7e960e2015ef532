//! # carom-engine: Carom's messenger logic
//!
//! The engine joins the protocol core (`carom-proto`), the store (`carom-store`) and a
//! transport (`carom-tor`) into a messenger:
//!
//! - **Contacts** with clear states: `requesting` (we asked), `pending` (they asked), `accepted`,
//!   `rejected`, `blocked`. Only accepted contacts get sessions that carry chats; a stranger's
//!   connection may deliver one bounded contact request (rate-limited per source and overall)
//!   and is then closed; blocked addresses are refused right after the handshake.
//! - **Delivery**: `send_message` commits the message and its outbox entry, then returns it as
//!   `queued`. The engine delivers the outbox in order whenever a session is up, dialling on
//!   demand and retrying with exponential backoff and jitter. The peer acknowledges only after
//!   its own commit; then the message is `delivered`. Receivers deduplicate on (sender, id).
//! - **Presence**: a contact is online while a session is up; keepalives detect dead sessions;
//!   accepted contacts are re-dialled with backoff. Simultaneous dials resolve to one session.
//! - **Events**: every change a frontend may care about is appended to the store's durable,
//!   sequenced event log in the same transaction as the change itself.
//!
//! Architecture: one thread owns the store (group commit); the *core*'s decisions (contact
//! rules, the session registry, when to dial) are a sans-IO state machine (`machine.rs`: inputs
//! and the time in, effects out) that a thin tokio task drives (`core.rs`); one task per
//! connection drives a sans-IO session. [`Engine::start_in_virtual_time`] runs it all on one
//! thread for tests whose clock is paused.
//!
//! What it is not: the API server (that is `caromd`) or a transport.

mod config;
mod conn;
mod contact;
mod core;
mod erasure;
mod err;
mod groups;
mod limits;
mod machine;
mod memory;
mod store_actor;
mod view;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carom_api as api;
use carom_proto::{
    Chat, ContactRequest, DeviceCertificate, DeviceKey, IdentityKey, Message, MessageId,
    OnionAddress, SessionConfig, SetTimer, Withdraw,
};
use carom_store::{
    ContactState, Direction, IdentityRecord, MessageStatus, NewContact, NewOutgoing, Queued, Store,
    StoreRead, TimerChange, TimerStamp,
};
use carom_tor::{Transport, TransportStatus};
use rand_core::OsRng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use config::EngineConfig;
pub use err::{EngineError, Result, store_kind};

pub use crate::conn::MAX_PREAUTH;
use crate::conn::{append, forget_contact};
use crate::contact::Input;
use crate::core::{ConnId, Core, CoreMsg, GroupDone};
use crate::groups::GroupCommand;
use crate::store_actor::StoreHandle;
#[cfg(debug_assertions)]
pub use crate::store_actor::{POISON_AFTER_WRITES_VAR, SLOW_WRITES_VAR};
use crate::view::{address_of, unix_ms, unix_secs};
use api::event::{By, RemovalReason};
use api::{EventData, event};
use carom_group::{GroupId, OpId, Role};

/// A profile's keys: the identity (onion service key) and this device's certified Noise key.
#[derive(Clone)]
pub struct Profile {
    /// The identity.
    pub identity: IdentityKey,
    /// This device's Noise static key.
    pub device: DeviceKey,
    /// The identity's certificate for `device`.
    pub certificate: DeviceCertificate,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("address", &self.identity.address())
            .finish_non_exhaustive()
    }
}

/// **Tests in virtual time only** (`Engine::start_in_virtual_time`): set the engines' wall
/// clock on this thread `delta_ms` forward or back, as someone changing the system clock
/// would; their monotonic clock (every timer) does not move.
pub fn shift_virtual_wall_clock(delta_ms: i64) {
    view::shift_virtual_wall_clock(delta_ms);
}

/// Erase every message that expired while the daemon was stopped (by the wall clock, or by
/// the latest time erasure had reached if the clock now reads earlier), then checkpoint.
/// Returns the time it erased up to: the erasure clock's floor.
fn erase_due_at_start(store: &mut Store) -> Result<u64> {
    let up_to = unix_ms().max(store.erasure_high_water()?);
    let mut total = 0;
    loop {
        let erased = store.write_with(|tx| core::erase_expired(tx, up_to, erasure::BATCH))?;
        total += erased.messages.len() + erased.group_messages.len();
        if erased.next.is_none_or(|next| next > up_to) {
            break;
        }
    }
    if total > 0 {
        tracing::info!(count = total, "erased messages that expired while stopped");
        store.checkpoint()?;
    }
    Ok(up_to)
}

/// Create a new identity and device key in an empty store.
pub fn create_profile(store: &mut Store, config: &EngineConfig) -> Result<Profile> {
    if store.identity()?.is_some() {
        return Err(EngineError::AlreadyExists(
            "this store already has a profile".into(),
        ));
    }
    let identity = IdentityKey::generate(&mut OsRng);
    let profile = new_device(identity, config);
    save_profile(store, &profile)?;
    Ok(profile)
}

/// Load the profile, replacing the device key if its certificate expires within
/// [`EngineConfig::certificate_renew_before`] (peers with the old key cached recover through the
/// protocol's stale-key fallback). A running engine renews it the same way when the time comes.
pub fn load_profile(store: &mut Store, config: &EngineConfig) -> Result<Profile> {
    let record = store
        .identity()?
        .ok_or_else(|| EngineError::InvalidState("this store has no profile".into()))?;
    let identity = IdentityKey::from_seed(&record.seed);
    let device = DeviceKey::from_secret(&record.device_secret);
    let certificate = DeviceCertificate::decode(&record.device_cert).map_err(|e| {
        EngineError::Internal(format!("the stored device certificate is unreadable: {e}"))
    })?;
    let renew_before = unix_secs().saturating_add(config.certificate_renew_before.as_secs());
    if certificate.expires_at() <= renew_before || certificate.identity() != identity.address() {
        tracing::info!("renewing the device key: its certificate expires soon");
        let profile = new_device(identity, config);
        save_profile(store, &profile)?;
        return Ok(profile);
    }
    Ok(Profile {
        identity,
        device,
        certificate,
    })
}

pub(crate) fn new_device(identity: IdentityKey, config: &EngineConfig) -> Profile {
    let device = DeviceKey::generate(&mut OsRng);
    let expires = unix_secs() + config.certificate_lifetime.as_secs();
    let certificate = DeviceCertificate::issue(&identity, &device.public(), expires);
    Profile {
        identity,
        device,
        certificate,
    }
}

pub(crate) fn identity_record(profile: &Profile) -> IdentityRecord {
    IdentityRecord {
        seed: profile.identity.seed(),
        device_secret: profile.device.secret(),
        device_cert: profile.certificate.encode().to_vec(),
        created_at: unix_ms(),
    }
}

fn save_profile(store: &mut Store, profile: &Profile) -> Result<()> {
    let record = identity_record(profile);
    store.write(|tx| tx.save_identity(&record))?;
    Ok(())
}

/// State shared by the engine's tasks.
pub(crate) struct Shared {
    pub(crate) store: StoreHandle,
    pub(crate) me: OnionAddress,
    /// Keys and timers for new sessions; replaced when the device key is renewed.
    session_config: Mutex<Arc<SessionConfig>>,
    pub(crate) core: mpsc::UnboundedSender<CoreMsg>,
    online: Mutex<HashSet<OnionAddress>>,
    next_conn: AtomicU64,
    pub(crate) counters: Counters,
    /// Incoming connections whose peer has not yet authenticated, oldest first (see
    /// `conn::PreAuthSlot`).
    pub(crate) preauth:
        Mutex<std::collections::VecDeque<(ConnId, mpsc::UnboundedSender<conn::ConnCmd>)>>,
    /// What each contact may still make us store today.
    pub(crate) quota: Mutex<limits::IncomingQuota>,
    /// The erasure clock messages are stamped with (see `erasure.rs`).
    pub(crate) erasure_clock: Mutex<erasure::Clock>,
    /// The messages of conversations with history off (see `memory.rs`).
    memory: Mutex<memory::Memory>,
    /// Events never stored (about those conversations), to whoever is subscribed now.
    live: tokio::sync::broadcast::Sender<api::LiveEvent>,
}

/// How many live events wait for the slowest subscriber before it misses some (and is told
/// how many, with an `events.live_missed`).
const LIVE_BUFFER: usize = 4_096;

/// Traffic counters, updated by the connections.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) sessions: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl Shared {
    /// The configuration new sessions start with.
    pub(crate) fn session_config(&self) -> Arc<SessionConfig> {
        Arc::clone(
            &self
                .session_config
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Use a renewed device key for new sessions (open ones keep theirs).
    pub(crate) fn set_profile(&self, profile: &Profile) {
        let mut current = self
            .session_config
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut next = SessionConfig::clone(&current);
        next.device = profile.device.clone();
        next.certificate = profile.certificate;
        *current = Arc::new(next);
    }

    /// Records a presence change; only the core calls it, as it writes the presence event
    /// (and `contact.remove`, for a contact that is gone).
    pub(crate) fn set_online(&self, peer: OnionAddress, online: bool) {
        let mut set = self.online.lock().unwrap_or_else(|e| e.into_inner());
        if online {
            set.insert(peer);
        } else {
            set.remove(&peer);
        }
    }

    /// Whether `peer` is online: an accepted contact with a session up. The one source of
    /// presence for every API view.
    pub(crate) fn is_online(&self, peer: &OnionAddress) -> bool {
        self.online
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(peer)
    }

    /// The erasure clock now (ms): the time a disappearing timer runs from. The wall clock,
    /// unless it was set back (see `erasure.rs`).
    pub(crate) fn erasure_now(&self) -> u64 {
        let now = machine::Now {
            at: view::monotonic(),
            wall_ms: unix_ms(),
        };
        self.erasure_clock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(now)
    }

    /// A message that disappears at `at` (erasure clock, ms) was stored: the core's erasure
    /// timer must be due by then.
    pub(crate) fn expiring(&self, at: Option<u64>) {
        if let Some(at) = at {
            let _ = self
                .core
                .send(CoreMsg::Result(machine::Input::Expiring { at }));
        }
    }

    /// A body was erased outside the core's own erasure (a delete, a withdrawal): the WAL
    /// still holds its older page until the core's next checkpoint, which this asks for.
    pub(crate) fn erased(&self) {
        let _ = self.core.send(CoreMsg::Result(machine::Input::Erased));
    }

    /// The conversations with history off.
    pub(crate) fn memory(&self) -> std::sync::MutexGuard<'_, memory::Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Send events to the subscribers attached now, never storing them.
    pub(crate) fn publish_live(&self, events: impl IntoIterator<Item = EventData>) {
        let at = unix_ms();
        for data in events {
            // No subscriber: nobody to tell, and nothing is kept for later by design.
            let _ = self.live.send(api::LiveEvent { at, data });
        }
    }

    /// Memory-only messages forgotten to make room: frontends learn their rows are gone.
    pub(crate) fn publish_forgotten(&self, rows: Vec<i64>, peer: &OnionAddress) {
        if !rows.is_empty() {
            self.publish_live([EventData::Expired(event::Expired {
                contact: peer.to_string(),
                ids: rows,
            })]);
        }
    }

    /// Status and delivery events for memory-only messages an acknowledgement or refusal
    /// from `peer` settled.
    pub(crate) fn publish_settled(&self, settled: &memory::Settled, peer: &OnionAddress) {
        self.publish_statuses(&settled.chats, peer);
        self.publish_live(settled.deliveries.iter().map(|d| {
            EventData::GroupDelivery(event::GroupDelivered {
                group: hex::encode(d.group),
                id: d.row,
                recipient: peer.to_string(),
                status: view::delivery_status_api(d.status),
                failure: d.failure.clone(),
            })
        }));
    }

    /// Status events for memory-only messages whose state changed.
    pub(crate) fn publish_statuses(&self, changed: &[carom_store::Message], peer: &OnionAddress) {
        self.publish_live(changed.iter().map(|m| view::status_event(m, peer)));
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Ask the core something and wait for its answer (`message` carries the reply channel).
    pub(crate) async fn ask<T>(
        &self,
        message: impl FnOnce(oneshot::Sender<T>) -> CoreMsg,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.core
            .send(message(reply))
            .map_err(|_| EngineError::ShuttingDown)?;
        answer.await.map_err(|_| EngineError::ShuttingDown)
    }
}

type ShutdownFn = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Hands new bridge settings to the transport (see `Transport::set_bridges`).
type SetBridgesFn = Box<
    dyn Fn(carom_tor::Bridges) -> Result<carom_tor::BridgesApplied, carom_tor::TransportError>
        + Send
        + Sync,
>;

/// A running messenger. Methods mirror the local API.
pub struct Engine {
    shared: Arc<Shared>,
    status: watch::Receiver<TransportStatus>,
    tasks: Vec<JoinHandle<()>>,
    stop_transport: ShutdownFn,
    set_bridges: SetBridgesFn,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("address", &self.shared.me)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Start the engine on `store` (holding `profile`) and `transport` (running with
    /// `profile.identity`'s key).
    ///
    /// Messages whose disappearing timer ran out while the daemon was stopped are erased
    /// first, before anything is served.
    pub fn start<T: Transport>(
        mut store: Store,
        profile: &Profile,
        transport: T,
        config: EngineConfig,
    ) -> Result<Engine> {
        let erasure_floor = erase_due_at_start(&mut store)?;
        Engine::launch(
            StoreHandle::spawn(store)?,
            profile,
            transport,
            config,
            erasure_floor,
        )
    }

    /// Start the engine for a test in virtual time: on a current-thread runtime whose clock is
    /// paused, with the store's jobs run on that thread as they are sent, so that the runtime
    /// is idle (and its clock moves on) only when the engine has nothing left to do. From then
    /// on the engine's wall clock on this thread moves with the virtual one. **Tests only**:
    /// every fsync stalls every task, and writes are not group-committed.
    pub fn start_in_virtual_time<T: Transport>(
        mut store: Store,
        profile: &Profile,
        transport: T,
        config: EngineConfig,
    ) -> Result<Engine> {
        view::follow_the_virtual_clock();
        let erasure_floor = erase_due_at_start(&mut store)?;
        Engine::launch(
            StoreHandle::inline(store)?,
            profile,
            transport,
            config,
            erasure_floor,
        )
    }

    fn launch<T: Transport>(
        store: StoreHandle,
        profile: &Profile,
        transport: T,
        config: EngineConfig,
        erasure_floor: u64,
    ) -> Result<Engine> {
        let mut session_config = SessionConfig::new(
            profile.identity.clone(),
            profile.device.clone(),
            profile.certificate,
        );
        session_config.keepalive_interval = config.keepalive;
        session_config.idle_timeout = config.idle_timeout;
        let (core_tx, core_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            store,
            me: profile.identity.address(),
            session_config: Mutex::new(Arc::new(session_config)),
            core: core_tx,
            online: Mutex::new(HashSet::new()),
            next_conn: AtomicU64::new(1),
            counters: Counters::default(),
            preauth: Mutex::default(),
            quota: Mutex::new(limits::IncomingQuota::new(config.incoming_bytes_per_day)),
            erasure_clock: Mutex::new(erasure::Clock::new(
                machine::Now {
                    at: view::monotonic(),
                    wall_ms: unix_ms(),
                },
                erasure_floor,
            )),
            memory: Mutex::default(),
            live: tokio::sync::broadcast::channel(LIVE_BUFFER).0,
        });
        let transport = Arc::new(transport);
        let status = transport.status();
        let core = Core::new(Arc::clone(&shared), Arc::clone(&transport), config, core_rx);
        let mut tasks = vec![tokio::spawn(core.run())];
        tasks.push(tokio::spawn(accept_loop(
            Arc::clone(&transport),
            Arc::clone(&shared),
        )));
        tasks.push(tokio::spawn(watch_status(
            status.clone(),
            Arc::clone(&shared),
        )));
        let set_bridges: SetBridgesFn = {
            let transport = Arc::clone(&transport);
            Box::new(move |bridges| transport.set_bridges(bridges))
        };
        let stop_transport: ShutdownFn = Box::new(move || {
            let transport = Arc::clone(&transport);
            Box::pin(async move { transport.shutdown().await })
        });
        Ok(Engine {
            shared,
            status,
            tasks,
            stop_transport,
            set_bridges,
        })
    }

    /// Our onion address.
    pub fn address(&self) -> OnionAddress {
        self.shared.me
    }

    /// `identity.get`.
    pub fn identity(&self) -> api::Identity {
        api::Identity {
            address: self.shared.me.to_string(),
            uri: self.shared.me.to_uri(),
        }
    }

    /// `tor.set_bridges`: enter Tor through `bridges` from now on, and keep `keep` in the
    /// profile (`None`: the profile leaves bridges to the daemon's configuration again).
    ///
    /// The transport checks the settings and applies them before anything is written, so
    /// refused settings change nothing. If writing then fails, the store's error is returned
    /// and the bridges stay in force only until the daemon stops.
    pub async fn set_tor_bridges(
        &self,
        bridges: carom_tor::Bridges,
        keep: Option<Vec<String>>,
    ) -> Result<carom_tor::BridgesApplied> {
        let applied = (self.set_bridges)(bridges).map_err(|e| match e {
            carom_tor::TransportError::Bridges(carom_tor::BridgeError::NotSupported(why)) => {
                EngineError::InvalidState(why)
            }
            carom_tor::TransportError::Bridges(e) => EngineError::InvalidRequest(e.to_string()),
            other => EngineError::Internal(format!("Tor did not take the bridges: {other}")),
        })?;
        self.shared
            .store
            .write(move |tx| Ok(tx.set_tor_bridges(keep.as_deref())?))
            .await?;
        Ok(applied)
    }

    /// `tor.status`.
    pub fn tor_status(&self) -> api::TorStatus {
        tor_view(&self.status.borrow())
    }

    /// `daemon.stats`: traffic since the engine started.
    pub fn stats(&self) -> api::Stats {
        let c = &self.shared.counters;
        api::Stats {
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            connections: c.connections.load(Ordering::Relaxed),
            sessions: c.sessions.load(Ordering::Relaxed),
            handshakes_in_progress: self
                .shared
                .preauth
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len() as u64,
        }
    }

    /// Tell the core about a change the API committed: `row` is the contact as it is now
    /// (`None`: gone).
    fn notify(&self, contact: OnionAddress, row: Option<&carom_store::Contact>) {
        let row = row.map(machine::Known::from);
        let _ = self
            .shared
            .core
            .send(CoreMsg::ContactChanged { contact, row });
    }

    fn parse(&self, text: &str) -> Result<OnionAddress> {
        Ok(OnionAddress::parse(text)?)
    }

    /// `contact.add`: ask someone to become a contact (or accept their pending request).
    pub async fn add_contact(&self, request: api::ContactAdd) -> Result<api::Contact> {
        let peer = self.parse(&request.address)?;
        if peer == self.shared.me {
            return Err(EngineError::InvalidRequest(
                "that is your own address".into(),
            ));
        }
        check_len(
            "nickname",
            &request.offer_nickname,
            carom_proto::MAX_NICKNAME_BYTES,
        )?;
        check_len(
            "greeting",
            &request.greeting,
            carom_proto::MAX_GREETING_BYTES,
        )?;
        let key = peer.public_key();
        let contact = self
            .shared
            .store
            .write(move |tx| {
                let now = unix_ms();
                let wire_request = || {
                    Message::ContactRequest(ContactRequest {
                        id: MessageId::random(&mut OsRng),
                        nickname: request.offer_nickname.clone(),
                        greeting: request.greeting.clone(),
                        kind: match request.kind {
                            api::PeerKind::Human => carom_proto::PeerKind::Human,
                            api::PeerKind::Bot => carom_proto::PeerKind::Bot,
                        },
                    })
                    .encode()
                };
                let existing = tx.contact_by_identity(&key)?;
                let step = contact::step(existing.as_ref().map(|c| c.state), Input::Add)?;
                let Some(state) = step.state else {
                    return Err(EngineError::bug("adding left no contact"));
                };
                let id = match existing {
                    None => tx.insert_contact(&NewContact {
                        identity: key,
                        state,
                        nickname: request.nickname.clone(),
                        offered_nickname: None,
                        greeting: Some(request.greeting.clone()),
                        declared_kind: carom_store::PeerKind::Human,
                        now,
                    })?,
                    Some(mut c) => {
                        if c.state != state {
                            // A co-member becoming a contact: our name for them, if given.
                            if c.state == ContactState::CoMember && !request.nickname.is_empty() {
                                c.nickname.clone_from(&request.nickname);
                            }
                            c.state = state;
                            match state {
                                // Accepting their request: our name for them, if we gave one.
                                ContactState::Accepted if !request.nickname.is_empty() => {
                                    c.nickname.clone_from(&request.nickname);
                                }
                                // Asking again: the greeting we send now.
                                ContactState::Requesting => {
                                    c.greeting = Some(request.greeting.clone());
                                }
                                _ => {}
                            }
                            c.updated_at = now;
                            tx.update_contact(&c)?;
                        }
                        c.id
                    }
                };
                contact::apply(tx, id, &peer, &step, By::Us, &wire_request, now)?;
                tx.contact_by_identity(&key)?
                    .ok_or_else(|| EngineError::bug("contact vanished"))
            })
            .await?;
        self.notify(peer, Some(&contact));
        view::contact(&contact, self.shared.is_online(&peer))
    }

    /// `contact.respond`: accept, reject, block or unblock.
    pub async fn respond(&self, request: api::ContactRespond) -> Result<api::Contact> {
        let peer = self.parse(&request.address)?;
        if peer == self.shared.me {
            return Err(EngineError::InvalidRequest(
                "that is your own address".into(),
            ));
        }
        let key = peer.public_key();
        let response = request.response;
        let nickname = request.nickname;
        let contact = self
            .shared
            .store
            .write(move |tx| {
                let now = unix_ms();
                let existing = tx.contact_by_identity(&key)?;
                let input = match response {
                    api::Response::Accept => Input::Accept,
                    api::Response::Reject => Input::Reject,
                    api::Response::Block => Input::Block,
                    api::Response::Unblock => Input::Unblock,
                };
                let step = contact::step(existing.as_ref().map(|c| c.state), input)?;
                let Some(new_state) = step.state else {
                    return Err(EngineError::bug("a response left no contact"));
                };
                let id = match existing {
                    Some(mut c) => {
                        c.state = new_state;
                        if new_state == ContactState::Accepted {
                            c.nickname = nickname
                                .clone()
                                .or_else(|| c.offered_nickname.clone())
                                .unwrap_or_default();
                        }
                        c.updated_at = now;
                        tx.update_contact(&c)?;
                        c.id
                    }
                    // Blocking an address that never contacted us.
                    None => tx.insert_contact(&NewContact {
                        identity: key,
                        state: new_state,
                        nickname: nickname.clone().unwrap_or_default(),
                        offered_nickname: None,
                        greeting: None,
                        declared_kind: carom_store::PeerKind::Human,
                        now,
                    })?,
                };
                contact::apply(tx, id, &peer, &step, By::Us, &Vec::new, now)?;
                tx.contact(id)?
                    .ok_or_else(|| EngineError::bug("contact vanished"))
            })
            .await?;
        self.notify(peer, Some(&contact));
        view::contact(&contact, self.shared.is_online(&peer))
    }

    /// `contact.rename`.
    pub async fn rename(&self, request: api::ContactRename) -> Result<api::Contact> {
        let peer = self.parse(&request.address)?;
        let key = peer.public_key();
        let contact = self
            .shared
            .store
            .write(move |tx| {
                let mut c = a_contact(tx.contact_by_identity(&key)?)?;
                c.nickname.clone_from(&request.nickname);
                c.updated_at = unix_ms();
                tx.update_contact(&c)?;
                Ok(c)
            })
            .await?;
        view::contact(&contact, self.shared.is_online(&peer))
    }

    /// `contact.remove`: forget a contact, its history and its queue; close its sessions.
    pub async fn remove_contact(&self, address: &str) -> Result<()> {
        let peer = self.parse(address)?;
        let key = peer.public_key();
        let kept = self
            .shared
            .store
            .write(move |tx| {
                let c = a_contact(tx.contact_by_identity(&key)?)?;
                let (_, kept) = forget_contact(tx, &c, None, unix_ms())?;
                Ok((c.id, kept))
            })
            .await?;
        let (id, kept) = kept;
        // Its history goes with it, wherever it was kept.
        self.shared.memory().forget(id);
        self.shared.set_online(peer, false);
        self.notify(peer, kept.as_ref());
        Ok(())
    }

    /// `contact.clear_requests`: forget every unanswered request from a stranger at once (a
    /// flood of them is not something to reject one by one). The requesters are not told;
    /// one who asks again is a new request.
    pub async fn clear_requests(&self) -> Result<api::Cleared> {
        let cleared = self
            .shared
            .store
            .write(|tx| {
                let pending = tx.oldest_contacts(ContactState::Pending, u64::MAX, u32::MAX)?;
                let now = unix_ms();
                let mut cleared = Vec::with_capacity(pending.len());
                for c in pending {
                    cleared.push(forget_contact(tx, &c, Some(RemovalReason::Cleared), now)?);
                }
                Ok(cleared)
            })
            .await?;
        for (peer, kept) in &cleared {
            self.notify(*peer, kept.as_ref());
        }
        Ok(api::Cleared {
            cleared: cleared.len() as u64,
        })
    }

    /// `contact.list`. Online means what it means in `contact.get` and in presence events:
    /// an accepted contact with a session up (one source: [`Shared::is_online`]).
    pub async fn contacts(&self) -> Result<Vec<api::Contact>> {
        let contacts = self.shared.store.read(|s| Ok(s.contacts()?)).await?;
        contacts
            .iter()
            .filter(|c| c.state != ContactState::CoMember)
            .map(|c| {
                let a = address_of(&c.identity)?;
                view::contact(c, self.shared.is_online(&a))
            })
            .collect()
    }

    /// `contact.get`.
    pub async fn contact(&self, address: &str) -> Result<api::Contact> {
        let peer = self.parse(address)?;
        let key = peer.public_key();
        let c = self
            .shared
            .store
            .read(move |s| a_contact(s.contact_by_identity(&key)?))
            .await?;
        view::contact(&c, self.shared.is_online(&peer))
    }

    /// `message.send`: commit the message and its outbox entry; it is `queued` on return.
    pub async fn send_message(&self, request: api::MessageSend) -> Result<api::Message> {
        let peer = self.parse(&request.to)?;
        if request.body.len() > api::MAX_BODY_BYTES {
            return Err(EngineError::TooLarge(format!(
                "the message is {} bytes; the limit is {} bytes",
                request.body.len(),
                api::MAX_BODY_BYTES
            )));
        }
        let reply_to = request
            .reply_to
            .as_deref()
            .map(view::parse_msg_id)
            .transpose()?;
        let key = peer.public_key();
        let msg_id = MessageId::random(&mut OsRng);
        let erasure_now = self.shared.erasure_now();
        // The conversation's timer as it is now: the message carries it for good.
        let body = request.body;
        let client_token = request.client_token;
        let outgoing = move |c: &carom_store::Contact| {
            let now = unix_ms();
            let payload = Message::Chat(Chat {
                id: msg_id,
                sent_at: now,
                body: body.clone(),
                reply_to: reply_to.map(MessageId),
                expires_after: c.timer,
            })
            .encode();
            NewOutgoing {
                contact_id: c.id,
                msg_id: msg_id.0,
                sent_at: now,
                body: body.clone(),
                reply_to,
                client_token: client_token.clone(),
                payload,
                now,
                expires_after: c.timer,
                expires_from: Some(erasure_now),
            }
        };
        let queue = outgoing.clone();
        let written = self
            .shared
            .store
            .write(move |tx| {
                let c =
                    an_accepted_contact(tx.contact_by_identity(&key)?, "messages are exchanged")?;
                if !c.keep_history {
                    // Nothing of it is written: it is queued in memory below.
                    return Ok(Err(c));
                }
                let new = queue(&c);
                let queued = tx.queue_outgoing(&new)?;
                if let Queued::New(m) = &queued {
                    append(tx, &view::status_event(m, &peer), new.now)?;
                }
                Ok(Ok(queued.into_message()))
            })
            .await?;
        let message = match written {
            Ok(message) => message,
            Err(c) => self.queue_in_memory(&outgoing(&c), &peer)?,
        };
        let _ = self.shared.core.send(CoreMsg::Queued { contact: peer });
        self.shared.expiring(message.expires_at);
        Ok(view::message(&message, &peer))
    }

    /// Queue a chat of a conversation with history off: in memory, never written.
    fn queue_in_memory(
        &self,
        new: &NewOutgoing,
        peer: &OnionAddress,
    ) -> Result<carom_store::Message> {
        let (message, fresh, forgotten) = self.shared.memory().queue_chat(new).map_err(|_| {
            EngineError::InvalidState(format!(
                "{} messages to this contact wait for delivery in memory (history is off); \
                     wait until they are delivered",
                memory::MAX_WAITING
            ))
        })?;
        if fresh {
            self.shared
                .publish_statuses(std::slice::from_ref(&message), peer);
        }
        self.shared.publish_forgotten(forgotten, peer);
        Ok(message)
    }

    /// `contact.set_timer`: change the conversation's disappearing-message timer here at
    /// once, and tell the peer (a conversation item both histories show). Messages sent from
    /// now on carry the new timer; those already sent keep theirs.
    pub async fn set_timer(&self, request: api::ContactSetTimer) -> Result<api::Contact> {
        let peer = self.parse(&request.address)?;
        let key = peer.public_key();
        let id = MessageId::random(&mut OsRng);
        let timer = request.timer;
        let contact = self
            .shared
            .store
            .write(move |tx| {
                let c = an_accepted_contact(tx.contact_by_identity(&key)?, "a timer is set")?;
                let now = unix_ms();
                // Newer than the change in force even if the peer's clock is ahead of ours:
                // otherwise the peer would keep its older change and the ends would disagree.
                let sent_at = match tx.timer_stamp(c.id)? {
                    Some(in_force) => now.max(in_force.sent_at.saturating_add(1)),
                    None => now,
                };
                let payload = Message::SetTimer(SetTimer {
                    id,
                    sent_at,
                    expires_after: timer,
                })
                .encode();
                let change = TimerChange {
                    contact_id: c.id,
                    stamp: TimerStamp { sent_at, id: id.0 },
                    timer,
                    now,
                };
                let item = tx.queue_timer_change(&change, &payload)?;
                append(tx, &view::status_event(&item, &peer), now)?;
                let event = EventData::TimerChanged(event::TimerChanged {
                    address: peer.to_string(),
                    timer,
                    by: By::Us,
                });
                append(tx, &event, now)?;
                a_contact(tx.contact(c.id)?)
            })
            .await?;
        let _ = self.shared.core.send(CoreMsg::Queued { contact: peer });
        view::contact(&contact, self.shared.is_online(&peer))
    }

    /// `message.list`: a page of a conversation, newest first.
    pub async fn history(&self, request: api::MessageList) -> Result<api::MessagePage> {
        let peer = self.parse(&request.with)?;
        let key = peer.public_key();
        let limit = request.limit.unwrap_or(50).clamp(1, 500);
        let before = request.before;
        let shared = Arc::clone(&self.shared);
        // One read: messages kept in memory have rows above every stored one, so newest first
        // they come before the stored messages, and one cursor pages through both.
        let messages = self
            .shared
            .store
            .read(move |s| {
                let c = a_contact(s.contact_by_identity(&key)?)?;
                let page = usize::try_from(limit).unwrap_or(usize::MAX);
                let mut messages = shared.memory().history(c.id, before, page);
                if messages.len() < page {
                    let rest = u32::try_from(page - messages.len()).unwrap_or(limit);
                    let before = before.map(|b| b.min(memory::FIRST_ROW));
                    messages.extend(s.history(c.id, before, rest)?);
                }
                Ok(messages)
            })
            .await?;
        let next_before = if messages.len() == usize::try_from(limit).unwrap_or(usize::MAX) {
            messages.last().map(|m| m.row)
        } else {
            None
        };
        Ok(api::MessagePage {
            messages: messages.iter().map(|m| view::message(m, &peer)).collect(),
            next_before,
        })
    }

    /// Run a group command in the core; the answer comes once its change is committed.
    async fn group(&self, command: GroupCommand) -> Result<GroupDone> {
        self.shared
            .ask(|reply| CoreMsg::Group { command, reply })
            .await?
    }

    fn group_view(done: GroupDone) -> Result<api::Group> {
        done.view
            .ok_or_else(|| EngineError::bug("a group command answered without the group"))
    }

    /// `group.create`.
    pub async fn group_create(&self, p: api::GroupCreate) -> Result<api::Group> {
        Engine::group_view(
            self.group(GroupCommand::Create {
                name: p.name,
                members_can_invite: p.members_can_invite,
                member_name: p.member_name,
                kind: proto_kind(p.kind),
            })
            .await?,
        )
    }

    /// `group.list`.
    pub async fn group_list(&self) -> Result<Vec<api::Group>> {
        Ok(self.group(GroupCommand::List).await?.list)
    }

    /// `group.get`.
    pub async fn group_get(&self, p: &api::GroupParams) -> Result<api::Group> {
        Engine::group_view(
            self.group(GroupCommand::Get(parse_group(&p.group)?))
                .await?,
        )
    }

    /// `group.invite`.
    pub async fn group_invite(&self, p: api::GroupInvite) -> Result<api::Group> {
        let invitee = self.parse(&p.address)?;
        if invitee == self.shared.me {
            return Err(EngineError::InvalidRequest(
                "that is your own address".into(),
            ));
        }
        Engine::group_view(
            self.group(GroupCommand::Invite {
                group: parse_group(&p.group)?,
                invitee,
                role: group_role(p.role),
            })
            .await?,
        )
    }

    /// `group.accept`.
    pub async fn group_accept(&self, p: api::GroupAccept) -> Result<api::Group> {
        Engine::group_view(
            self.group(GroupCommand::Accept {
                group: parse_group(&p.group)?,
                name: p.name,
                kind: proto_kind(p.kind),
            })
            .await?,
        )
    }

    /// `group.decline`.
    pub async fn group_decline(&self, p: &api::GroupParams) -> Result<api::Group> {
        Engine::group_view(
            self.group(GroupCommand::Decline(parse_group(&p.group)?))
                .await?,
        )
    }

    /// `group.leave`.
    pub async fn group_leave(&self, p: &api::GroupParams) -> Result<api::Group> {
        Engine::group_view(
            self.group(GroupCommand::Leave(parse_group(&p.group)?))
                .await?,
        )
    }

    /// `group.remove`.
    pub async fn group_remove(&self, p: &api::GroupMemberParams) -> Result<api::Group> {
        Engine::group_view(
            self.group(GroupCommand::Remove {
                group: parse_group(&p.group)?,
                member: self.parse(&p.address)?,
            })
            .await?,
        )
    }

    /// `group.set_role`.
    pub async fn group_set_role(&self, p: &api::GroupSetRole) -> Result<api::Group> {
        Engine::group_view(
            self.group(GroupCommand::SetRole {
                group: parse_group(&p.group)?,
                member: self.parse(&p.address)?,
                role: group_role(p.role),
            })
            .await?,
        )
    }

    /// `group.rename`.
    pub async fn group_rename(&self, p: api::GroupRename) -> Result<api::Group> {
        Engine::group_view(
            self.group(GroupCommand::Rename {
                group: parse_group(&p.group)?,
                name: p.name,
            })
            .await?,
        )
    }

    /// `group.set_policy`.
    pub async fn group_set_policy(&self, p: &api::GroupSetPolicy) -> Result<api::Group> {
        Engine::group_view(
            self.group(GroupCommand::SetPolicy {
                group: parse_group(&p.group)?,
                members_can_invite: p.members_can_invite,
            })
            .await?,
        )
    }

    /// `group.set_timer`: an admin sets the group's disappearing-message timer (a signed
    /// operation every member applies by the same rule). Messages sent from then on carry it;
    /// each member erases each that long after storing it.
    pub async fn group_set_timer(&self, p: &api::GroupSetTimer) -> Result<api::Group> {
        Engine::group_view(
            self.group(GroupCommand::SetTimer {
                group: parse_group(&p.group)?,
                timer: p.timer,
            })
            .await?,
        )
    }

    /// `group.set_history`: keep the group's messages in the store, or (`false`) in memory
    /// only from now on. Ours alone: nothing is signed or sent, and every other member keeps
    /// its own copy as its own setting says. The membership history is stored either way
    /// (every member needs it to verify the group). Messages already stored stay until
    /// deleted or expired; those in memory stay there.
    pub async fn group_set_history(&self, p: &api::GroupSetHistory) -> Result<api::Group> {
        Engine::group_view(
            self.group(GroupCommand::SetHistory {
                group: parse_group(&p.group)?,
                keep_history: p.keep_history,
            })
            .await?,
        )
    }

    /// `group.send`: queue a message to every member; answered once queued.
    pub async fn group_send(&self, p: api::GroupSend) -> Result<api::GroupMessage> {
        let group = parse_group(&p.group)?;
        let reply_to = p
            .reply_to
            .as_deref()
            .map(view::parse_msg_id)
            .transpose()?
            .map(MessageId);
        let done = self
            .group(GroupCommand::Send {
                group,
                body: p.body,
                reply_to,
                client_token: p.client_token,
                now_ms: unix_ms(),
            })
            .await?;
        let row = done
            .message_row
            .ok_or_else(|| EngineError::bug("a group message was queued without a row"))?;
        let mut page = self
            .group_messages(group, move |s, memory, group_row| {
                if memory::is_memory_row(row) {
                    return Ok(memory
                        .group_message(row)
                        .filter(|(m, _, _)| m.group_row == group_row)
                        .map(|(m, deliveries, _)| (m, deliveries))
                        .into_iter()
                        .collect());
                }
                let Some(m) = s.group_message(row)?.filter(|m| m.group_row == group_row) else {
                    return Ok(Vec::new());
                };
                let deliveries = s.group_deliveries(m.row)?;
                Ok(vec![(m, deliveries)])
            })
            .await?;
        page.pop()
            .ok_or_else(|| EngineError::bug("a queued group message is not in the store"))
    }

    /// `group.delete`: delete a group message here only, or (`for_everyone`, one we sent) at
    /// every member it was sent to: ours becomes a tombstone at once, its undelivered copies
    /// stop, and a withdrawal is queued for each recipient, whose daemon does the same (at
    /// once, or when it is back). The body is then erased from the database and its WAL.
    pub async fn group_delete(&self, p: &api::GroupDelete) -> Result<()> {
        let group = parse_group(&p.group)?;
        let (id, for_everyone) = (p.id, p.for_everyone);
        let withdrawal = MessageId::random(&mut OsRng);
        if memory::is_memory_row(id) {
            return self
                .group_delete_in_memory(group, id, for_everyone, withdrawal)
                .await;
        }
        let recipients = self
            .shared
            .store
            .write(move |tx| {
                let g = tx.group(&group.0)?.ok_or(EngineError::NoSuchGroup)?;
                let m = tx
                    .group_message(id)?
                    .filter(|m| m.group_row == g.row)
                    .ok_or(EngineError::NoSuchMessage)?;
                let now = unix_ms();
                let mut peers = Vec::new();
                if for_everyone {
                    if m.direction != Direction::Outgoing {
                        return Err(EngineError::InvalidState(
                            "only a group message we sent can be deleted for everyone; delete \
                             a received one here only"
                                .into(),
                        ));
                    }
                    let mut recipients = Vec::new();
                    for d in tx.group_deliveries(id)? {
                        // A member we blocked was never sent it, and is sent nothing.
                        if d.failure.as_deref() == Some(crate::groups::BLOCKED) {
                            continue;
                        }
                        if let Some(c) = tx.contact_by_identity(&d.recipient)? {
                            recipients.push((c.id, d.recipient));
                            peers.push(address_of(&d.recipient)?);
                        }
                    }
                    let payload = Message::GroupWithdraw(carom_proto::GroupWithdraw {
                        id: withdrawal,
                        group,
                        target: MessageId(m.msg_id),
                    })
                    .encode();
                    tx.withdraw_group_outgoing(id, &recipients, &payload, now)?;
                } else {
                    tx.delete_group_message(id)?;
                }
                let event = EventData::GroupDeleted(event::GroupDeleted {
                    group: hex::encode(group.0),
                    id,
                    msg_id: hex::encode(m.msg_id),
                    for_everyone,
                    by: By::Us,
                });
                append(tx, &event, now)?;
                Ok(peers)
            })
            .await?;
        for peer in recipients {
            let _ = self.shared.core.send(CoreMsg::Queued { contact: peer });
        }
        self.shared.erased();
        Ok(())
    }

    /// [`Engine::group_delete`] for a message kept in memory: the same rules, nothing of it
    /// written, the event live only.
    async fn group_delete_in_memory(
        &self,
        group: GroupId,
        id: i64,
        for_everyone: bool,
        withdrawal: MessageId,
    ) -> Result<()> {
        let (m, _, of_group) = self
            .shared
            .memory()
            .group_message(id)
            .ok_or(EngineError::NoSuchMessage)?;
        if of_group != group.0 {
            return Err(EngineError::NoSuchMessage);
        }
        let mut peers = Vec::new();
        if for_everyone {
            // A member we blocked since is sent nothing: who that is, the store says.
            let blocked: std::collections::HashSet<i64> = self
                .shared
                .store
                .read(|s| {
                    Ok(s.contacts()?
                        .into_iter()
                        .filter(|c| c.state == ContactState::Blocked)
                        .map(|c| c.id)
                        .collect())
                })
                .await?;
            let payload = Message::GroupWithdraw(carom_proto::GroupWithdraw {
                id: withdrawal,
                group,
                target: MessageId(m.msg_id),
            })
            .encode();
            let (_, to) = self
                .shared
                .memory()
                .withdraw_group_outgoing(
                    id,
                    withdrawal.0,
                    &payload,
                    &|c| blocked.contains(&c),
                    unix_ms(),
                )
                .map_err(|refused| match refused {
                    memory::Refused::NotOurs => EngineError::InvalidState(
                        "only a group message we sent can be deleted for everyone; delete a \
                         received one here only"
                            .into(),
                    ),
                    _ => EngineError::NoSuchMessage,
                })?;
            let identities = self
                .shared
                .store
                .read(move |s| {
                    let mut identities = Vec::with_capacity(to.len());
                    for contact_id in to {
                        if let Some(c) = s.contact(contact_id)? {
                            identities.push(c.identity);
                        }
                    }
                    Ok(identities)
                })
                .await?;
            for identity in identities {
                peers.push(address_of(&identity)?);
            }
        } else {
            self.shared
                .memory()
                .delete_group_message(id)
                .ok_or(EngineError::NoSuchMessage)?;
        }
        self.shared
            .publish_live([EventData::GroupDeleted(event::GroupDeleted {
                group: hex::encode(group.0),
                id,
                msg_id: hex::encode(m.msg_id),
                for_everyone,
                by: By::Us,
            })]);
        for contact in peers {
            let _ = self.shared.core.send(CoreMsg::Queued { contact });
        }
        Ok(())
    }

    /// `group.history`: newest first.
    pub async fn group_history(&self, p: &api::GroupHistory) -> Result<api::GroupMessagePage> {
        let group = parse_group(&p.group)?;
        let limit = p.limit.unwrap_or(50).clamp(1, 500);
        let before = p.before;
        // As in `message.list`: memory-only messages first (their rows are above every
        // stored one), then the stored ones, one cursor through both.
        let messages = self
            .group_messages(group, move |s, memory, group_row| {
                let page = usize::try_from(limit).unwrap_or(usize::MAX);
                let mut messages = memory.group_history(group_row, before, page);
                if messages.len() < page {
                    let rest = u32::try_from(page - messages.len()).unwrap_or(limit);
                    let before = before.map(|b| b.min(memory::FIRST_ROW));
                    for m in s.group_history(group_row, before, rest)? {
                        let deliveries = s.group_deliveries(m.row)?;
                        messages.push((m, deliveries));
                    }
                }
                Ok(messages)
            })
            .await?;
        let next_before = if messages.len() == usize::try_from(limit).unwrap_or(usize::MAX) {
            messages.last().map(|m| m.id)
        } else {
            None
        };
        Ok(api::GroupMessagePage {
            messages,
            next_before,
        })
    }

    /// Group messages a read picks (from the store, or memory), with their deliveries and the
    /// set of ends of each.
    async fn group_messages(
        &self,
        group: GroupId,
        pick: impl FnOnce(
            &carom_store::Store,
            &memory::Memory,
            i64,
        )
            -> Result<Vec<(carom_store::GroupMessage, Vec<carom_store::GroupDelivery>)>>
        + Send
        + 'static,
    ) -> Result<Vec<api::GroupMessage>> {
        let shared = Arc::clone(&self.shared);
        let rows = self
            .shared
            .store
            .read(move |s| {
                let g = s.group(&group.0)?.ok_or(EngineError::NoSuchGroup)?;
                pick(s, &shared.memory(), g.row)
            })
            .await?;
        let heads: Vec<Vec<OpId>> = rows
            .iter()
            .map(|(m, _)| m.heads.iter().map(|h| OpId(*h)).collect())
            .collect();
        let sent_to = self
            .shared
            .ask(|reply| CoreMsg::GroupSentTo {
                group,
                heads,
                reply,
            })
            .await?;
        rows.into_iter()
            .zip(sent_to)
            .map(|((m, deliveries), sent_to)| view::group_message(&m, group, sent_to, &deliveries))
            .collect()
    }

    /// `message.get`.
    pub async fn message(&self, id: i64) -> Result<api::Message> {
        let kept = memory::is_memory_row(id)
            .then(|| self.shared.memory().get(id))
            .flatten();
        let (m, identity) = self
            .shared
            .store
            .read(move |s| {
                let m = match kept {
                    Some(m) => m,
                    None => s.message(id)?.ok_or(EngineError::NoSuchMessage)?,
                };
                let c = s.contact(m.contact_id)?.ok_or(EngineError::NoSuchMessage)?;
                Ok((m, c.identity))
            })
            .await?;
        Ok(view::message(&m, &address_of(&identity)?))
    }

    /// `message.delete`: delete one message here, or (`for_everyone`, for a chat we sent)
    /// at both ends: ours becomes a tombstone at once, and a withdrawal is queued for the
    /// peer, whose daemon does the same when it arrives (at once if they are online, when
    /// they are back otherwise). Either way the body is then erased from the database file and
    /// its WAL (a checkpoint follows).
    pub async fn delete_message(&self, request: api::MessageDelete) -> Result<()> {
        let id = request.id;
        let withdrawal = MessageId::random(&mut OsRng);
        if memory::is_memory_row(id) {
            return self.delete_in_memory(request, withdrawal).await;
        }
        let peer = self
            .shared
            .store
            .write(move |tx| {
                let m = tx.message(id)?.ok_or(EngineError::NoSuchMessage)?;
                let c = tx
                    .contact(m.contact_id)?
                    .ok_or(EngineError::NoSuchMessage)?;
                let peer = address_of(&c.identity)?;
                let now = unix_ms();
                if request.for_everyone {
                    if m.direction != Direction::Outgoing {
                        return Err(EngineError::InvalidState(
                            "only a message we sent can be deleted for everyone; delete a \
                             received one here only"
                                .into(),
                        ));
                    }
                    let payload = Message::Withdraw(Withdraw {
                        id: withdrawal,
                        target: MessageId(m.msg_id),
                    })
                    .encode();
                    tx.withdraw_outgoing(id, &payload, now)?;
                } else {
                    // (Its outbox item, if it was still queued, goes with it: the foreign key
                    // cascades.)
                    tx.delete_message(id)?;
                }
                let event = EventData::Deleted(event::Deleted {
                    id,
                    contact: peer.to_string(),
                    msg_id: hex::encode(m.msg_id),
                    for_everyone: request.for_everyone,
                    by: By::Us,
                });
                append(tx, &event, now)?;
                Ok(request.for_everyone.then_some(peer))
            })
            .await?;
        if let Some(peer) = peer {
            let _ = self.shared.core.send(CoreMsg::Queued { contact: peer });
        }
        self.shared.erased();
        Ok(())
    }

    /// [`Engine::delete_message`] for a message kept in memory: the same rules, nothing
    /// written, the event live only.
    async fn delete_in_memory(
        &self,
        request: api::MessageDelete,
        withdrawal: MessageId,
    ) -> Result<()> {
        let id = request.id;
        let contact_id = self
            .shared
            .memory()
            .get(id)
            .ok_or(EngineError::NoSuchMessage)?
            .contact_id;
        let identity = self
            .shared
            .store
            .read(move |s| {
                Ok(s.contact(contact_id)?
                    .ok_or(EngineError::NoSuchMessage)?
                    .identity)
            })
            .await?;
        let peer = address_of(&identity)?;
        let m = {
            let mut memory = self.shared.memory();
            if request.for_everyone {
                let target = memory.get(id).ok_or(EngineError::NoSuchMessage)?.msg_id;
                let payload = Message::Withdraw(Withdraw {
                    id: withdrawal,
                    target: MessageId(target),
                })
                .encode();
                memory
                    .withdraw_outgoing(id, withdrawal.0, payload, unix_ms())
                    .map_err(|refused| match refused {
                        memory::Refused::NotOurs => EngineError::InvalidState(
                            "only a message we sent can be deleted for everyone; delete a \
                             received one here only"
                                .into(),
                        ),
                        _ => EngineError::NoSuchMessage,
                    })?
            } else {
                memory.delete(id).ok_or(EngineError::NoSuchMessage)?
            }
        };
        self.shared
            .publish_live([EventData::Deleted(event::Deleted {
                id,
                contact: peer.to_string(),
                msg_id: hex::encode(m.msg_id),
                for_everyone: request.for_everyone,
                by: By::Us,
            })]);
        if request.for_everyone {
            let _ = self.shared.core.send(CoreMsg::Queued { contact: peer });
        }
        Ok(())
    }

    /// `contact.set_history`: keep the conversation's messages in the store, or (`false`) in
    /// memory only from now on. Ours alone: the peer is not told, and keeps its own copy as
    /// its own setting says. Messages already stored stay until deleted or expired; those in
    /// memory stay there.
    pub async fn set_history(&self, request: api::ContactSetHistory) -> Result<api::Contact> {
        let peer = self.parse(&request.address)?;
        let key = peer.public_key();
        let keep = request.keep_history;
        let contact = self
            .shared
            .store
            .write(move |tx| {
                let c = a_contact(tx.contact_by_identity(&key)?)?;
                if c.keep_history != keep {
                    let now = unix_ms();
                    tx.set_keep_history(c.id, keep, now)?;
                    let event = EventData::HistoryChanged(event::HistoryChanged {
                        address: peer.to_string(),
                        keep_history: keep,
                    });
                    append(tx, &event, now)?;
                }
                a_contact(tx.contact(c.id)?)
            })
            .await?;
        view::contact(&contact, self.shared.is_online(&peer))
    }

    /// Events that are never stored, from now on (see [`api::LiveEvent`]).
    pub fn live_events(&self) -> tokio::sync::broadcast::Receiver<api::LiveEvent> {
        self.shared.live.subscribe()
    }

    /// Events with `seq > after`, oldest first.
    pub async fn events_since(&self, after: u64, limit: u32) -> Result<Vec<api::Event>> {
        let events = self
            .shared
            .store
            .read(move |s| Ok(s.events_since(after, limit)?))
            .await?;
        Ok(events
            .into_iter()
            .map(|e| api::Event {
                seq: e.seq,
                at: e.at,
                data: api::EventData::from_parts(
                    &e.kind,
                    serde_json::from_str(&e.data).unwrap_or(serde_json::Value::Null),
                ),
            })
            .collect())
    }

    /// The newest assigned sequence number and the oldest retained one.
    pub async fn event_bounds(&self) -> Result<(u64, Option<u64>)> {
        self.shared
            .store
            .read(|s| Ok((s.last_event_seq()?, s.oldest_event_seq(api::event::CHURN)?)))
            .await
    }

    /// Becomes `true` if the store takes itself out of service (a bug left its connection in
    /// doubt; everything committed before is safe). Every later call fails: the daemon should
    /// stop, and say why.
    pub fn store_out_of_service(&self) -> watch::Receiver<bool> {
        self.shared.store.out_of_service()
    }

    /// Changes whenever new events are committed (the value is the newest sequence number).
    pub fn event_notifier(&self) -> watch::Receiver<u64> {
        self.shared.store.event_seq()
    }

    /// Append an event from outside the engine (e.g. a frontend attached).
    ///
    /// The write is queued when this is called (so it is ordered before anything asked of the
    /// store afterwards); the future only waits for its commit, and may be dropped.
    pub fn append_event(
        &self,
        event: api::EventData,
    ) -> impl Future<Output = Result<u64>> + Send + 'static {
        self.shared
            .store
            .write(move |tx| append(tx, &event, unix_ms()))
    }

    /// Close every session, stop the transport, and close the store (checkpointing it).
    pub async fn shutdown(self) -> Result<()> {
        let (reply, done) = oneshot::channel();
        if self.shared.core.send(CoreMsg::Shutdown { reply }).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
        }
        (self.stop_transport)().await;
        for task in &self.tasks {
            task.abort();
        }
        self.shared.store.close().await
    }
}

/// A row that is a contact of some standing: a co-member's row is none (the API never shows
/// it, and nothing of a contact's may be done to it).
fn a_contact(row: Option<carom_store::Contact>) -> Result<carom_store::Contact> {
    row.filter(|c| c.state != ContactState::CoMember)
        .ok_or(EngineError::NoSuchContact)
}

/// [`a_contact`], and accepted: what `what` ("messages are exchanged") needs.
fn an_accepted_contact(
    row: Option<carom_store::Contact>,
    what: &str,
) -> Result<carom_store::Contact> {
    let c = a_contact(row)?;
    if c.state != ContactState::Accepted {
        return Err(EngineError::InvalidState(format!(
            "{what} only with an accepted contact; this one is {}",
            c.state.as_str()
        )));
    }
    Ok(c)
}

/// Drop a contact's outbox; its queued chats (and group messages) fail with `reason`.
pub(crate) fn fail_outbox(
    tx: &carom_store::WriteTx<'_>,
    contact_id: i64,
    peer: &OnionAddress,
    reason: &str,
    now: u64,
) -> Result<()> {
    for item in tx.outbox_for_contact(contact_id)? {
        tx.remove_outbox(item.id)?;
        if let Some(row) = item.message_row {
            tx.set_message_status(row, MessageStatus::Failed, Some(reason), now)?;
            if let Some(m) = tx.message(row)? {
                append(tx, &view::status_event(&m, peer), now)?;
            }
        }
        if let Some(row) = item.group_message_row {
            conn::group_delivery(tx, row, *peer, Some(reason), now)?;
        }
    }
    Ok(())
}

// The API's limits on what goes into a contact request are the protocol's.
const _: () = assert!(api::MAX_OFFERED_NICKNAME_BYTES == carom_proto::MAX_NICKNAME_BYTES);
const _: () = assert!(api::MAX_GREETING_BYTES == carom_proto::MAX_GREETING_BYTES);
const _: () = assert!(api::MAX_BODY_BYTES == carom_proto::MAX_BODY_BYTES);

/// Protocol limits hold for every caller; the API's own limits are checked by the server for
/// every method (`carom_api::CheckLimits`).
fn check_len(field: &str, value: &str, limit: usize) -> Result<()> {
    if value.len() > limit {
        return Err(EngineError::TooLarge(format!(
            "{field} is {} bytes; the limit is {limit}",
            value.len()
        )));
    }
    Ok(())
}

async fn accept_loop<T: Transport>(transport: Arc<T>, shared: Arc<Shared>) {
    while let Some(stream) = transport.accept().await {
        let conn = shared.next_conn_id();
        tokio::spawn(conn::run_responder(Arc::clone(&shared), stream, conn));
    }
}

fn tor_view(status: &TransportStatus) -> api::TorStatus {
    api::TorStatus {
        bootstrap_percent: status.bootstrap.percent,
        bootstrap_phase: status.bootstrap.phase.clone(),
        ready: status.bootstrap.ready,
        service: service_status(&status.service),
        last_error: status.last_error.clone(),
        bootstrap_stalled: status.bootstrap.stalled,
        bridges: u32::try_from(status.bridges).unwrap_or(u32::MAX),
    }
}

/// The API's view of an onion-service state.
fn service_status(state: &carom_tor::ServiceState) -> api::ServiceStatus {
    use api::ServiceStatus as A;
    use carom_tor::ServiceState as S;
    match state {
        S::NotStarted => A::NotStarted,
        S::Launching => A::Launching,
        S::Published => A::Published,
        S::Reachable => A::Reachable,
        S::Degraded { .. } => A::Degraded,
        S::Broken(_) => A::Broken,
        S::Stopped => A::Stopped,
        _ => A::Unknown,
    }
}

/// Record Tor's progress in the event log: every tenth of bootstrap, readiness, service state,
/// a stall and its end, a change of bridges.
async fn watch_status(mut status: watch::Receiver<TransportStatus>, shared: Arc<Shared>) {
    let mut last: Option<(u8, bool, api::ServiceStatus, bool, u32)> = None;
    loop {
        let view = tor_view(&status.borrow_and_update());
        if view.ready && last.as_ref().is_none_or(|(_, ready, ..)| !ready) {
            // Dials that found Tor not ready go now.
            let _ = shared.core.send(CoreMsg::TorReady);
        }
        let key = (
            view.bootstrap_percent / 10,
            view.ready,
            view.service,
            view.bootstrap_stalled,
            view.bridges,
        );
        if last.as_ref() != Some(&key) {
            last = Some(key);
            let event = api::EventData::TorStatus(view);
            let _ = shared
                .store
                .write(move |tx| append(tx, &event, unix_ms()))
                .await;
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// A group id as the API gives it (32 hex digits).
fn parse_group(text: &str) -> Result<GroupId> {
    let bytes = hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .ok_or_else(|| EngineError::InvalidRequest("a group id is 32 hex digits".into()))?;
    Ok(GroupId(bytes))
}

fn group_role(role: api::GroupRole) -> Role {
    match role {
        api::GroupRole::Member => Role::Member,
        api::GroupRole::Admin => Role::Admin,
    }
}

fn proto_kind(kind: api::PeerKind) -> carom_proto::PeerKind {
    match kind {
        api::PeerKind::Human => carom_proto::PeerKind::Human,
        api::PeerKind::Bot => carom_proto::PeerKind::Bot,
    }
}
