//! The core: one task that owns who-may-talk-to-us, which session belongs to which contact, and
//! when to dial. Connections and the API ask it; it answers in order, so its decisions never
//! race each other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use carom_proto::{
    Ack, CloseReason, ContactRequest, ContactResponse, Decision, Message, MessageId, OnionAddress,
};
use carom_store::{Contact, ContactState, MessageStatus, NewContact, OutboxKind, StoreRead};
use carom_tor::Transport;
use rand::Rng as _;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use crate::Shared;
use crate::config::EngineConfig;
use crate::conn::{self, ConnCmd, Ticket, append};
use crate::err::Result;
use crate::limits::RequestLimiter;
use crate::view::{self, address_of, unix_ms};

/// Identifies one connection for the lifetime of the engine.
pub(crate) type ConnId = u64;

/// How a responder connection may proceed with an authenticated peer.
#[derive(Debug)]
pub(crate) enum Admission {
    /// A contact we exchange messages with (accepted), or whom we asked (requesting).
    Contact { contact_id: i64 },
    /// Not a contact: it may deliver a contact request, then the session ends.
    RequestOnly { contact_id: Option<i64> },
    /// Refused outright.
    Refuse(CloseReason),
}

/// What to do after a contact request or response arrived.
#[derive(Debug, Default)]
pub(crate) struct ContactOutcome {
    /// Messages to send back (acknowledgements, our answer).
    pub(crate) send: Vec<Message>,
    /// End the session afterwards.
    pub(crate) close: Option<CloseReason>,
    /// The contact's local id, if it exists now.
    pub(crate) contact_id: Option<i64>,
    /// The contact became accepted: chats may flow on this session now.
    pub(crate) now_accepted: bool,
}

/// Messages to the core.
pub(crate) enum CoreMsg {
    /// The API changed a contact: deliver, dial, or close.
    ContactChanged { contact: OnionAddress },
    /// The API queued something for this (accepted) contact: deliver it.
    Queued { contact: OnionAddress },
    /// A responder authenticated its peer.
    Authenticated {
        conn: ConnId,
        peer: OnionAddress,
        peer_static: [u8; 32],
        expires: u64,
        commands: Option<mpsc::UnboundedSender<ConnCmd>>,
        reply: oneshot::Sender<Admission>,
    },
    /// A session is up (either role). The reply is the contact's state, if it is one.
    Established {
        conn: ConnId,
        peer: OnionAddress,
        initiator: bool,
        peer_static: [u8; 32],
        expires: u64,
        reply: oneshot::Sender<Option<ContactState>>,
    },
    /// A contact request or response arrived.
    ContactMessage {
        peer: OnionAddress,
        message: Message,
        reply: oneshot::Sender<ContactOutcome>,
    },
    /// A connection ended (with the session's close reason, if it had one, and whether the
    /// peer gave it).
    Closed {
        conn: ConnId,
        reason: Option<(CloseReason, bool)>,
    },
    /// A dial produced a stream: may it proceed?
    Dialed {
        contact: OnionAddress,
        reply: oneshot::Sender<Option<Ticket>>,
    },
    /// A dial failed.
    DialFailed {
        contact: OnionAddress,
        reason: String,
    },
    /// Which contacts have a session now.
    Online {
        reply: oneshot::Sender<Vec<OnionAddress>>,
    },
    /// Close every session and stop.
    Shutdown { reply: oneshot::Sender<()> },
}

/// What the core knows about a live connection.
struct ConnInfo {
    peer: Option<OnionAddress>,
    initiator: bool,
    commands: mpsc::UnboundedSender<ConnCmd>,
    established_at: Option<Instant>,
}

/// Runtime facts about one contact.
#[derive(Default)]
struct ContactRt {
    /// Whether the contact is accepted (only accepted contacts are watched for presence).
    accepted: bool,
    /// The connection carrying its session, once established.
    session: Option<ConnId>,
    /// A dial is under way (or its connection is handshaking).
    dialing: bool,
    /// Consecutive failed dials, for presence backoff.
    failures: u32,
    /// When to dial next to see whether they are online.
    next_presence: Option<Instant>,
}

pub(crate) struct Core<T: Transport> {
    shared: Arc<Shared>,
    transport: Arc<T>,
    config: EngineConfig,
    inbox: mpsc::UnboundedReceiver<CoreMsg>,
    conns: HashMap<ConnId, ConnInfo>,
    contacts: HashMap<OnionAddress, ContactRt>,
    limiter: RequestLimiter,
    dials_in_flight: usize,
    last_prune: Instant,
}

/// Most dials at once (each builds Tor circuits).
const MAX_CONCURRENT_DIALS: usize = 16;
/// How often the core looks at timers.
const TICK: Duration = Duration::from_millis(500);
/// A session shorter than this counts as a failed attempt (a peer that accepts the handshake
/// and then refuses us must not be redialled in a tight loop).
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

impl<T: Transport> Core<T> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        transport: Arc<T>,
        config: EngineConfig,
        inbox: mpsc::UnboundedReceiver<CoreMsg>,
    ) -> Core<T> {
        let now = Instant::now();
        let limiter = RequestLimiter::new(
            config.stranger_burst,
            config.stranger_per_minute,
            config.per_source_burst,
            config.per_source_per_hour,
            now,
        );
        Core {
            shared,
            transport,
            config,
            inbox,
            conns: HashMap::new(),
            contacts: HashMap::new(),
            limiter,
            dials_in_flight: 0,
            last_prune: now,
        }
    }

    pub(crate) async fn run(mut self) {
        // Look for every accepted contact once at start.
        if let Ok(contacts) = self.shared.store.read(|s| Ok(s.contacts()?)).await {
            let now = Instant::now();
            for c in contacts {
                if let Ok(address) = address_of(&c.identity) {
                    let rt = self.contacts.entry(address).or_default();
                    if c.state == ContactState::Accepted {
                        rt.accepted = true;
                        if self.config.presence {
                            rt.next_presence = Some(now);
                        }
                    }
                }
            }
        }
        // Apply retention and expiry once at start, then every minute.
        self.housekeeping().await;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = self.inbox.recv() => match msg {
                    Some(CoreMsg::Shutdown { reply }) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(msg) => self.handle(msg).await,
                    None => return,
                },
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    async fn handle(&mut self, msg: CoreMsg) {
        match msg {
            CoreMsg::ContactChanged { contact } => self.contact_changed(contact).await,
            CoreMsg::Queued { contact } => {
                // The common case — a session is up — needs no store read: nudge it.
                match self.contacts.get(&contact).and_then(|rt| rt.session) {
                    Some(conn) => {
                        if let Some(info) = self.conns.get(&conn) {
                            let _ = info.commands.send(ConnCmd::Deliver);
                        }
                    }
                    None => self.deliver_or_dial(contact).await,
                }
            }
            CoreMsg::Authenticated {
                conn,
                peer,
                peer_static,
                expires,
                commands,
                reply,
            } => {
                if let Some(commands) = commands {
                    self.conns.insert(
                        conn,
                        ConnInfo {
                            peer: Some(peer),
                            initiator: false,
                            commands,
                            established_at: None,
                        },
                    );
                }
                let admission = self.admit(peer, peer_static, expires).await;
                let _ = reply.send(admission);
            }
            CoreMsg::Established {
                conn,
                peer,
                initiator,
                peer_static,
                expires,
                reply,
            } => {
                let state = self
                    .established(conn, peer, initiator, peer_static, expires)
                    .await;
                let _ = reply.send(state);
            }
            CoreMsg::ContactMessage {
                peer,
                message,
                reply,
            } => {
                let outcome = self
                    .contact_message(peer, message)
                    .await
                    .unwrap_or_else(|e| {
                        debug!(error = %e, "contact message not handled");
                        ContactOutcome {
                            close: Some(CloseReason::Normal),
                            ..ContactOutcome::default()
                        }
                    });
                let _ = reply.send(outcome);
            }
            CoreMsg::Closed { conn, reason } => self.closed(conn, reason).await,
            CoreMsg::Dialed { contact, reply } => {
                let ticket = self.dialed(contact).await;
                let _ = reply.send(ticket);
            }
            CoreMsg::DialFailed { contact, reason } => self.dial_failed(contact, &reason).await,
            CoreMsg::Online { reply } => {
                let online = self
                    .contacts
                    .iter()
                    .filter(|(_, rt)| rt.session.is_some())
                    .map(|(a, _)| *a)
                    .collect();
                let _ = reply.send(online);
            }
            CoreMsg::Shutdown { .. } => {}
        }
    }

    async fn contact_of(&self, peer: OnionAddress) -> Result<Option<Contact>> {
        let key = peer.public_key();
        self.shared
            .store
            .read(move |s| Ok(s.contact_by_identity(&key)?))
            .await
    }

    /// A responder learnt who is calling. Blocked: refuse. Accepted or requesting: a session.
    /// Anyone else: one contact request, then goodbye.
    async fn admit(
        &mut self,
        peer: OnionAddress,
        peer_static: [u8; 32],
        expires: u64,
    ) -> Admission {
        match self.contact_of(peer).await {
            Ok(Some(c)) => match c.state {
                ContactState::Blocked => Admission::Refuse(CloseReason::Refused),
                ContactState::Accepted | ContactState::Requesting => {
                    self.cache_static(&c, peer_static, expires).await;
                    Admission::Contact { contact_id: c.id }
                }
                ContactState::Pending | ContactState::Rejected => Admission::RequestOnly {
                    contact_id: Some(c.id),
                },
            },
            Ok(None) => Admission::RequestOnly { contact_id: None },
            Err(e) => {
                debug!(error = %e, "cannot read contacts; refusing");
                Admission::Refuse(CloseReason::Normal)
            }
        }
    }

    /// Remember a contact's current device key for IK, until its certificate expires.
    async fn cache_static(&self, c: &Contact, key: [u8; 32], expires: u64) {
        if c.peer_static == Some(key) && c.peer_static_expires == Some(expires) {
            return;
        }
        let id = c.id;
        let _ = self
            .shared
            .store
            .write(move |tx| {
                if let Some(mut c) = tx.contact(id)? {
                    c.peer_static = Some(key);
                    c.peer_static_expires = Some(expires);
                    c.updated_at = unix_ms();
                    tx.update_contact(&c)?;
                }
                Ok(())
            })
            .await;
    }

    /// A session came up. Register it for its contact, resolving duplicates.
    async fn established(
        &mut self,
        conn: ConnId,
        peer: OnionAddress,
        initiator: bool,
        peer_static: [u8; 32],
        expires: u64,
    ) -> Option<ContactState> {
        let contact = self.contact_of(peer).await.ok().flatten()?;
        if !matches!(
            contact.state,
            ContactState::Accepted | ContactState::Requesting
        ) {
            return None;
        }
        self.cache_static(&contact, peer_static, expires).await;
        if let Some(info) = self.conns.get_mut(&conn) {
            info.peer = Some(peer);
            info.initiator = initiator;
            info.established_at = Some(Instant::now());
        }
        let me = self.shared.me;
        let accepted = contact.state == ContactState::Accepted;
        let rt = self.contacts.entry(peer).or_default();
        rt.accepted = accepted;
        rt.dialing = false;
        rt.next_presence = None;
        match rt.session {
            None => {
                debug!(peer = %peer.redacted(), conn, initiator, "session registered");
                rt.session = Some(conn);
                self.ensure_presence(peer).await;
            }
            Some(existing) if existing != conn => {
                // Both sides dialled at once: keep the session initiated by the side with the
                // smaller identity key. Both sides compute the same answer.
                let existing_ours = self.conns.get(&existing).is_some_and(|c| c.initiator);
                let we_are_smaller = me.public_key() < peer.public_key();
                let keep_new = if existing_ours == initiator {
                    true // same direction twice: the newer replaces a lingering older one
                } else {
                    initiator == we_are_smaller
                };
                let loser = if keep_new { existing } else { conn };
                debug!(
                    peer = %peer.redacted(),
                    conn,
                    initiator,
                    existing,
                    existing_ours,
                    keep_new,
                    "two sessions with one peer"
                );
                if let Some(rt) = self.contacts.get_mut(&peer) {
                    rt.session = Some(if keep_new { conn } else { existing });
                }
                if let Some(info) = self.conns.get(&loser) {
                    let _ = info.commands.send(ConnCmd::Close(CloseReason::Duplicate));
                }
                debug!(peer = %peer.redacted(), "resolved a duplicate session");
            }
            Some(_) => {}
        }
        Some(contact.state)
    }

    /// An accepted contact with a session up is online: say so once.
    async fn ensure_presence(&mut self, peer: OnionAddress) {
        let Some(rt) = self.contacts.get(&peer) else {
            return;
        };
        if rt.accepted
            && rt.session.is_some()
            && !self.shared.is_online(&peer)
            && let Ok(Some(c)) = self.contact_of(peer).await
        {
            self.set_presence(peer, c.id, true).await;
        }
    }

    async fn set_presence(&self, peer: OnionAddress, contact_id: i64, online: bool) {
        let now = unix_ms();
        let _ = self
            .shared
            .store
            .write(move |tx| {
                if let Some(mut c) = tx.contact(contact_id)? {
                    c.last_seen = Some(now);
                    c.updated_at = now;
                    tx.update_contact(&c)?;
                }
                append(
                    tx,
                    carom_api::event::CONTACT_PRESENCE,
                    &serde_json::json!({ "address": peer.to_string(), "online": online }),
                    now,
                )?;
                Ok(())
            })
            .await;
        self.shared.set_online(peer, online);
    }

    async fn closed(&mut self, conn: ConnId, reason: Option<(CloseReason, bool)>) {
        let Some(info) = self.conns.remove(&conn) else {
            return;
        };
        let Some(peer) = info.peer else { return };
        let Some(rt) = self.contacts.get_mut(&peer) else {
            return;
        };
        let was_session = rt.session == Some(conn);
        debug!(
            peer = %peer.redacted(),
            conn,
            initiator = info.initiator,
            was_session,
            established = info.established_at.is_some(),
            ?reason,
            "connection ended"
        );
        if info.initiator && !was_session && info.established_at.is_none() {
            // Our dial's connection ended before its handshake completed.
            rt.dialing = false;
        }
        let accepted = rt.accepted;
        if was_session {
            rt.session = None;
            if accepted && let Ok(Some(c)) = self.contact_of(peer).await {
                self.set_presence(peer, c.id, false).await;
            }
        }
        let busy = self
            .contacts
            .get(&peer)
            .is_some_and(|rt| rt.session.is_some() || rt.dialing);
        if busy {
            return; // another session (or dial) carries on
        }
        let refused = matches!(
            reason,
            Some((CloseReason::Refused | CloseReason::RateLimited, true))
        );
        let healthy = !refused
            && info
                .established_at
                .is_some_and(|t| t.elapsed() >= HEALTHY_SESSION);
        if healthy {
            if let Some(rt) = self.contacts.get_mut(&peer) {
                rt.failures = 0;
                if rt.accepted {
                    rt.next_presence = Some(Instant::now() + self.config.presence_initial);
                }
            }
            // Anything still queued goes out on a new session.
            self.deliver_or_dial(peer).await;
        } else if info.initiator || was_session {
            self.record_failure(peer).await;
        }
    }

    /// The API changed a contact or queued something for it.
    async fn contact_changed(&mut self, peer: OnionAddress) {
        let contact = self.contact_of(peer).await.ok().flatten();
        let state = contact.as_ref().map(|c| c.state);
        let rt = self.contacts.entry(peer).or_default();
        match state {
            None | Some(ContactState::Blocked) => {
                // Removed or blocked: end every session with them now.
                rt.next_presence = None;
                let reason = CloseReason::Refused;
                for info in self.conns.values().filter(|c| c.peer == Some(peer)) {
                    let _ = info.commands.send(ConnCmd::Close(reason));
                }
                if state.is_none() {
                    self.contacts.remove(&peer);
                }
            }
            Some(ContactState::Accepted) => {
                rt.accepted = true;
                if rt.session.is_none() && rt.next_presence.is_none() {
                    rt.next_presence = Some(Instant::now());
                }
                self.ensure_presence(peer).await;
                self.deliver_or_dial(peer).await;
            }
            Some(_) => {
                rt.accepted = false;
                rt.next_presence = None;
                self.deliver_or_dial(peer).await;
            }
        }
    }

    /// Send queued items on the open session, or dial if there are some and no session.
    async fn deliver_or_dial(&mut self, peer: OnionAddress) {
        let Some(rt) = self.contacts.get(&peer) else {
            return;
        };
        if let Some(conn) = rt.session {
            if let Some(info) = self.conns.get(&conn) {
                let _ = info.commands.send(ConnCmd::Deliver);
            }
            return;
        }
        let key = peer.public_key();
        let has_work = self
            .shared
            .store
            .read(move |s| {
                let Some(c) = s.contact_by_identity(&key)? else {
                    return Ok(false);
                };
                Ok(c.state != ContactState::Blocked && !s.outbox_for_contact(c.id)?.is_empty())
            })
            .await
            .unwrap_or(false);
        if has_work {
            self.dial(peer);
        }
    }

    fn dial(&mut self, peer: OnionAddress) {
        if self.dials_in_flight >= MAX_CONCURRENT_DIALS {
            return; // the tick tries again
        }
        let rt = self.contacts.entry(peer).or_default();
        if rt.dialing || rt.session.is_some() {
            return;
        }
        rt.dialing = true;
        self.dials_in_flight += 1;
        let transport = Arc::clone(&self.transport);
        let shared = Arc::clone(&self.shared);
        let timeout = self.config.dial_timeout;
        debug!(peer = %peer.redacted(), "dialling");
        tokio::spawn(async move {
            let dialled = tokio::time::timeout(timeout, transport.dial(&peer)).await;
            let stream = match dialled {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    let _ = shared.core.send(CoreMsg::DialFailed {
                        contact: peer,
                        reason: e.to_string(),
                    });
                    return;
                }
                Err(_) => {
                    let _ = shared.core.send(CoreMsg::DialFailed {
                        contact: peer,
                        reason: "timed out".into(),
                    });
                    return;
                }
            };
            let ticket = shared
                .ask(|reply| CoreMsg::Dialed {
                    contact: peer,
                    reply,
                })
                .await;
            if let Ok(Some(ticket)) = ticket {
                conn::run_initiator(shared, stream, peer, ticket).await;
            }
        });
    }

    async fn dialed(&mut self, peer: OnionAddress) -> Option<Ticket> {
        let contact = self.contact_of(peer).await.ok().flatten();
        let Some(contact) = contact.filter(|c| c.state != ContactState::Blocked) else {
            if let Some(rt) = self.contacts.get_mut(&peer) {
                rt.dialing = false;
            }
            self.dials_in_flight = self.dials_in_flight.saturating_sub(1);
            return None;
        };
        let conn = self.shared.next_conn_id();
        let (commands, rx) = mpsc::unbounded_channel();
        self.conns.insert(
            conn,
            ConnInfo {
                peer: Some(peer),
                initiator: true,
                commands,
                established_at: None,
            },
        );
        self.dials_in_flight = self.dials_in_flight.saturating_sub(1);
        // Use the cached key only while its certificate is valid; otherwise XX.
        let cached_static = contact.peer_static.filter(|_| {
            contact
                .peer_static_expires
                .is_some_and(|e| e > view::unix_secs())
        });
        Some(Ticket {
            conn,
            contact_id: contact.id,
            cached_static,
            commands: rx,
        })
    }

    async fn dial_failed(&mut self, peer: OnionAddress, reason: &str) {
        self.dials_in_flight = self.dials_in_flight.saturating_sub(1);
        debug!(peer = %peer.redacted(), %reason, "dial failed");
        if let Some(rt) = self.contacts.get_mut(&peer) {
            rt.dialing = false;
        }
        self.record_failure(peer).await;
    }

    /// An attempt to reach `peer` failed: back off presence dials and every queued item.
    async fn record_failure(&mut self, peer: OnionAddress) {
        let presence_wait = {
            let rt = self.contacts.entry(peer).or_default();
            rt.failures = rt.failures.saturating_add(1);
            EngineConfig::backoff(
                self.config.presence_initial,
                self.config.presence_max,
                rt.failures - 1,
                rand::thread_rng().r#gen(),
            )
        };
        if let Some(rt) = self.contacts.get_mut(&peer)
            && rt.accepted
        {
            rt.next_presence = Some(Instant::now() + presence_wait);
        }
        let key = peer.public_key();
        let (initial, max) = (self.config.retry_initial, self.config.retry_max);
        let jitter: f64 = rand::thread_rng().r#gen();
        let _ = self
            .shared
            .store
            .write(move |tx| {
                let Some(c) = tx.contact_by_identity(&key)? else {
                    return Ok(());
                };
                let now = unix_ms();
                for item in tx.outbox_for_contact(c.id)? {
                    let attempts = item.attempts.saturating_add(1);
                    let wait = EngineConfig::backoff(initial, max, attempts - 1, jitter);
                    let due = now + u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                    tx.reschedule(item.id, attempts, due)?;
                }
                Ok(())
            })
            .await;
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        // Presence: accepted contacts we have not seen for a while.
        let presence = self.config.presence;
        let due: Vec<OnionAddress> = self
            .contacts
            .iter()
            .filter(|(_, rt)| {
                presence
                    && rt.session.is_none()
                    && !rt.dialing
                    && rt.next_presence.is_some_and(|t| t <= now)
            })
            .map(|(a, _)| *a)
            .collect();
        for peer in due {
            if let Some(rt) = self.contacts.get_mut(&peer) {
                rt.next_presence = None;
            }
            self.dial(peer);
        }
        // Retries: outbox items that fell due.
        let now_ms = unix_ms();
        let due_contacts = self
            .shared
            .store
            .read(move |s| {
                let mut ids = Vec::new();
                for item in s.outbox_due(now_ms, 256)? {
                    if !ids.contains(&item.contact_id) {
                        ids.push(item.contact_id);
                    }
                }
                let mut addresses = Vec::new();
                for id in ids {
                    if let Some(c) = s.contact(id)? {
                        addresses.push(c.identity);
                    }
                }
                Ok(addresses)
            })
            .await
            .unwrap_or_default();
        for key in due_contacts {
            if let Ok(peer) = address_of(&key) {
                let rt = self.contacts.entry(peer).or_default();
                if rt.session.is_none() && !rt.dialing {
                    self.dial(peer);
                }
            }
        }
        if now.duration_since(self.last_prune) > Duration::from_secs(60) {
            self.last_prune = now;
            self.housekeeping().await;
        }
    }

    /// Fail expired messages; prune the event log.
    async fn housekeeping(&self) {
        let expiry = u64::try_from(self.config.message_expiry.as_millis()).unwrap_or(u64::MAX);
        let retention = self.config.event_retention;
        // Every queued item, however far its next attempt lies ahead (the store keeps times
        // as SQLite integers, so "the end of time" is i64::MAX).
        let all = u64::try_from(i64::MAX).unwrap_or(0);
        let result = self
            .shared
            .store
            .write(move |tx| {
                let now = unix_ms();
                for item in tx.outbox_due(all, 1024)? {
                    if now.saturating_sub(item.created_at) < expiry {
                        continue;
                    }
                    tx.remove_outbox(item.id)?;
                    if let Some(row) = item.message_row {
                        tx.set_message_status(row, MessageStatus::Failed, Some("expired"), now)?;
                        if let (Some(m), Some(c)) = (tx.message(row)?, tx.contact(item.contact_id)?)
                        {
                            let address = address_of(&c.identity)?;
                            append(
                                tx,
                                carom_api::event::MESSAGE_STATUS,
                                &view::status_event(&m, &address),
                                now,
                            )?;
                        }
                    }
                }
                tx.prune_events(retention)?;
                Ok(())
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "housekeeping failed");
        }
    }

    /// A contact request or response arrived from `peer`.
    async fn contact_message(
        &mut self,
        peer: OnionAddress,
        message: Message,
    ) -> Result<ContactOutcome> {
        match message {
            Message::ContactRequest(request) => self.contact_request(peer, request).await,
            Message::ContactResponse(response) => self.contact_response(peer, response).await,
            _ => Ok(ContactOutcome::default()),
        }
    }

    async fn contact_request(
        &mut self,
        peer: OnionAddress,
        request: ContactRequest,
    ) -> Result<ContactOutcome> {
        let ack = Message::Ack(Ack {
            ids: vec![request.id],
        });
        let existing = self.contact_of(peer).await?;
        let now = unix_ms();
        let mut outcome = ContactOutcome::default();
        match existing {
            None => {
                let pending = self
                    .shared
                    .store
                    .read(|s| {
                        Ok(s.contacts()?
                            .iter()
                            .filter(|c| c.state == ContactState::Pending)
                            .count())
                    })
                    .await?;
                if pending >= self.config.max_pending_requests
                    || !self.limiter.admit(peer, Instant::now())
                {
                    // No acknowledgement: they will try again later.
                    info!("refused a contact request: rate limit");
                    outcome.close = Some(CloseReason::RateLimited);
                    return Ok(outcome);
                }
                let key = peer.public_key();
                let id = self
                    .shared
                    .store
                    .write(move |tx| {
                        let id = tx.insert_contact(&NewContact {
                            identity: key,
                            state: ContactState::Pending,
                            nickname: request.nickname.clone(),
                            offered_nickname: Some(request.nickname.clone()),
                            greeting: Some(request.greeting.clone()),
                            declared_kind: view::store_peer_kind(request.kind),
                            now,
                        })?;
                        append(
                            tx,
                            carom_api::event::CONTACT_REQUEST_RECEIVED,
                            &serde_json::json!({
                                "address": peer.to_string(),
                                "nickname": request.nickname,
                                "greeting": request.greeting,
                                "kind": view::peer_kind(view::store_peer_kind(request.kind)),
                            }),
                            now,
                        )?;
                        Ok(id)
                    })
                    .await?;
                self.contacts.entry(peer).or_default();
                outcome.contact_id = Some(id);
                outcome.send.push(ack);
                outcome.close = Some(CloseReason::RequestReceived);
            }
            Some(c) => {
                outcome.contact_id = Some(c.id);
                outcome.send.push(ack);
                match c.state {
                    ContactState::Pending => outcome.close = Some(CloseReason::RequestReceived),
                    ContactState::Requesting | ContactState::Accepted => {
                        // They asked while we asked (or asked again after losing their data):
                        // that is agreement. Tell them so.
                        let was_requesting = c.state == ContactState::Requesting;
                        self.accept_locally(&c, peer, request.nickname, was_requesting)
                            .await?;
                        outcome.now_accepted = true;
                        self.contacts.entry(peer).or_default().accepted = true;
                        self.ensure_presence(peer).await;
                        self.deliver_or_dial(peer).await;
                    }
                    ContactState::Rejected => {
                        outcome.send.push(Message::ContactResponse(ContactResponse {
                            id: MessageId::random(&mut rand_core::OsRng),
                            decision: Decision::Reject,
                        }));
                        outcome.close = Some(CloseReason::Refused);
                    }
                    ContactState::Blocked => outcome.close = Some(CloseReason::Refused),
                }
            }
        }
        Ok(outcome)
    }

    /// Accept a contact because they asked while we were asking: state, event, our answer.
    async fn accept_locally(
        &self,
        c: &Contact,
        peer: OnionAddress,
        offered: String,
        state_changed: bool,
    ) -> Result<()> {
        let id = c.id;
        let response = Message::ContactResponse(ContactResponse {
            id: MessageId::random(&mut rand_core::OsRng),
            decision: Decision::Accept,
        })
        .encode();
        self.shared
            .store
            .write(move |tx| {
                let now = unix_ms();
                let Some(mut c) = tx.contact(id)? else {
                    return Ok(());
                };
                c.state = ContactState::Accepted;
                c.offered_nickname = Some(offered.clone());
                c.updated_at = now;
                tx.update_contact(&c)?;
                tx.remove_outbox_kind(id, OutboxKind::ContactResponse)?;
                tx.enqueue(id, OutboxKind::ContactResponse, None, &response, now)?;
                if state_changed {
                    append(
                        tx,
                        carom_api::event::CONTACT_STATE,
                        &serde_json::json!({ "address": peer.to_string(), "state": "accepted", "by": "them" }),
                        now,
                    )?;
                }
                Ok(())
            })
            .await
    }

    async fn contact_response(
        &mut self,
        peer: OnionAddress,
        response: ContactResponse,
    ) -> Result<ContactOutcome> {
        let mut outcome = ContactOutcome::default();
        outcome.send.push(Message::Ack(Ack {
            ids: vec![response.id],
        }));
        let Some(c) = self.contact_of(peer).await? else {
            outcome.close = Some(CloseReason::Refused);
            return Ok(outcome);
        };
        outcome.contact_id = Some(c.id);
        let new_state = match (c.state, response.decision) {
            (ContactState::Requesting, Decision::Accept) => Some(ContactState::Accepted),
            (ContactState::Requesting | ContactState::Accepted, Decision::Reject) => {
                Some(ContactState::Rejected)
            }
            _ => None,
        };
        if let Some(state) = new_state {
            let id = c.id;
            self.shared
                .store
                .write(move |tx| {
                    let now = unix_ms();
                    let Some(mut c) = tx.contact(id)? else {
                        return Ok(());
                    };
                    c.state = state;
                    c.updated_at = now;
                    tx.update_contact(&c)?;
                    // Our request evidently arrived.
                    tx.remove_outbox_kind(id, OutboxKind::ContactRequest)?;
                    append(
                        tx,
                        carom_api::event::CONTACT_STATE,
                        &serde_json::json!({
                            "address": peer.to_string(),
                            "state": view::contact_state(state),
                            "by": "them",
                        }),
                        now,
                    )?;
                    Ok(())
                })
                .await?;
            if state == ContactState::Accepted {
                outcome.now_accepted = true;
                self.contacts.entry(peer).or_default().accepted = true;
                self.ensure_presence(peer).await;
                self.deliver_or_dial(peer).await;
            } else {
                outcome.close = Some(CloseReason::Normal);
            }
        }
        Ok(outcome)
    }

    async fn shutdown(&mut self) {
        for info in self.conns.values() {
            let _ = info
                .commands
                .send(ConnCmd::Close(CloseReason::ShuttingDown));
        }
        // Give connections a moment to write their Close.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.conns.is_empty() && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(100), self.inbox.recv()).await {
                Ok(Some(CoreMsg::Closed { conn, .. })) => {
                    self.conns.remove(&conn);
                }
                Ok(Some(CoreMsg::Authenticated { reply, .. })) => {
                    let _ = reply.send(Admission::Refuse(CloseReason::ShuttingDown));
                }
                Ok(Some(CoreMsg::Established { reply, .. })) => {
                    let _ = reply.send(None);
                }
                Ok(Some(CoreMsg::ContactMessage { reply, .. })) => {
                    let _ = reply.send(ContactOutcome {
                        close: Some(CloseReason::ShuttingDown),
                        ..ContactOutcome::default()
                    });
                }
                Ok(Some(CoreMsg::Dialed { reply, .. })) => {
                    let _ = reply.send(None);
                }
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => break,
            }
        }
    }
}
