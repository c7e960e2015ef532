//! The core: one task that owns who-may-talk-to-us, which session belongs to which contact, and
//! when to dial. Connections and the API ask it; it answers in order, so its decisions never
//! race each other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use carom_proto::{
    Ack, CloseReason, ContactRequest, ContactResponse, Decision, Message, MessageId, OnionAddress,
};
use carom_store::{Contact, ContactState, MessageStatus, NewContact, StoreRead};
use carom_tor::{Transport, TransportError, TransportErrorKind};
use rand::Rng as _;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use carom_api::EventData;
use carom_api::event::{self, By, RemovalReason};

use crate::Shared;
use crate::config::EngineConfig;
use crate::conn::{self, ConnCmd, Ticket, append, forget_contact};
use crate::contact::{self, Admit, Effect, Input};
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
        /// The peer has shown it holds the session's keys (`Session::peer_is_live`).
        live: bool,
        peer_static: [u8; 32],
        expires: u64,
        reply: oneshot::Sender<Registration>,
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
        failure: DialFailure,
    },
    /// Tor became ready to carry traffic (after bootstrap, or after it lost the network).
    TorReady,
    /// Close every session and stop.
    Shutdown { reply: oneshot::Sender<()> },
}

/// Why a dial failed, as the transport classified it.
#[derive(Debug)]
pub(crate) struct DialFailure {
    pub(crate) kind: TransportErrorKind,
    pub(crate) retryable: bool,
    /// For people and logs (never a full onion address).
    pub(crate) reason: String,
}

impl DialFailure {
    fn of(e: &TransportError) -> DialFailure {
        DialFailure {
            kind: e.kind(),
            retryable: e.retryable(),
            reason: e.to_string(),
        }
    }

    /// Our own bound on a whole dial ran out.
    fn timed_out(after: Duration) -> DialFailure {
        DialFailure {
            kind: TransportErrorKind::Timeout,
            retryable: true,
            reason: format!("no stream within {after:?}"),
        }
    }
}

/// What to do after a dial failed: the one place where what went wrong decides when to try
/// again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterDialFailure {
    /// Nothing reached the network (Tor is not bootstrapped, or dialling is switched off
    /// here): the peer is not to blame, so the backoff does not grow. Try again at the
    /// initial interval, and at once when Tor says it is ready.
    WaitForTor,
    /// The peer is probably offline, or the path was slow: back off.
    BackOff,
    /// The peer answered and refused, or the failure is ours (configuration, files): trying
    /// again soon will not help. Wait the longest backoff, and tell the user once. A new
    /// message still dials at once: the user's action overrides the schedule.
    GiveUpForNow,
    /// The transport is shutting down.
    Nothing,
}

fn after_dial_failure(failure: &DialFailure) -> AfterDialFailure {
    match failure.kind {
        TransportErrorKind::NotBootstrapped | TransportErrorKind::NetworkDisabled => {
            AfterDialFailure::WaitForTor
        }
        TransportErrorKind::PeerNotFound | TransportErrorKind::Timeout => AfterDialFailure::BackOff,
        TransportErrorKind::Refused => AfterDialFailure::GiveUpForNow,
        TransportErrorKind::Shutdown => AfterDialFailure::Nothing,
        _ if failure.retryable => AfterDialFailure::BackOff,
        _ => AfterDialFailure::GiveUpForNow,
    }
}

/// What the core knows about a live connection.
struct ConnInfo {
    peer: Option<OnionAddress>,
    initiator: bool,
    commands: mpsc::UnboundedSender<ConnCmd>,
    established_at: Option<Instant>,
}

/// Runtime facts about one contact.
///
/// Retries are scheduled per contact, on the monotonic clock: one failed attempt lengthens
/// the wait once, however many messages are queued, and a wall clock that jumps moves no
/// retry.
#[derive(Default)]
struct ContactRt {
    /// Whether the contact is accepted (only accepted contacts are watched for presence).
    accepted: bool,
    /// The connection carrying its session, once established.
    session: Option<ConnId>,
    /// A dial is under way (or its connection is handshaking).
    dialing: bool,
    /// The dial under way was asked for by a new message ahead of the schedule: if it fails,
    /// the backoff does not grow (a burst of sends to an offline contact must not push its
    /// retries out).
    dial_nudged: bool,
    /// When the last dial started.
    last_dial: Option<Instant>,
    /// Consecutive failed scheduled attempts: the backoff exponent for retries and presence.
    failures: u32,
    /// When to dial next to see whether they are online.
    next_presence: Option<Instant>,
    /// When to try delivering its outbox again after a failure.
    retry_at: Option<Instant>,
    /// The last dial found Tor not ready: dial again as soon as it is.
    waiting_for_tor: bool,
    /// The last dial was refused (the user has been told); cleared by the next session.
    refused: bool,
}

impl ContactRt {
    /// An attempt to reach the contact failed at `now`: schedule the next one, for its outbox
    /// and for presence. The backoff grows once per failed scheduled attempt; a failed nudge
    /// (a dial asked for by a new message ahead of the schedule) keeps the schedule as it was.
    /// `jitter` (each in 0..1) spreads retries and presence dials.
    fn failed(&mut self, now: Instant, config: &EngineConfig, jitter: (f64, f64)) {
        let nudge = self.dial_nudged && self.failures > 0;
        if !nudge {
            self.failures = self.failures.saturating_add(1);
        }
        let exponent = self.failures.saturating_sub(1);
        if !nudge || self.retry_at.is_none() {
            let wait =
                EngineConfig::backoff(config.retry_initial, config.retry_max, exponent, jitter.0);
            self.retry_at = Some(now + wait);
        }
        if self.accepted && (!nudge || self.next_presence.is_none()) {
            let wait = EngineConfig::backoff(
                config.presence_initial,
                config.presence_max,
                exponent,
                jitter.1,
            );
            self.next_presence = Some(now + wait);
        }
    }

    /// A dial never reached the network: try again at the initial interval, the backoff
    /// as it was.
    fn wait_for_tor(&mut self, now: Instant, config: &EngineConfig) {
        self.waiting_for_tor = true;
        self.retry_at = Some(now + config.retry_initial);
        if self.accepted {
            self.next_presence = Some(now + config.presence_initial);
        }
    }

    /// Tor is ready: whatever waited for it goes now.
    fn tor_ready(&mut self, now: Instant) {
        if std::mem::take(&mut self.waiting_for_tor) {
            self.retry_at = Some(now);
            if self.accepted {
                self.next_presence = Some(now);
            }
        }
    }

    /// The peer refused (or the failure is ours): the longest waits at once. Returns whether
    /// this is news (the user is told once, not at every retry).
    fn give_up_for_now(&mut self, now: Instant, config: &EngineConfig, jitter: (f64, f64)) -> bool {
        self.retry_at =
            Some(now + EngineConfig::backoff(config.retry_max, config.retry_max, 0, jitter.0));
        if self.accepted {
            self.next_presence = Some(
                now + EngineConfig::backoff(config.presence_max, config.presence_max, 0, jitter.1),
            );
        }
        !std::mem::replace(&mut self.refused, true)
    }
}

/// Two random fractions in 0..1 that spread a contact's next retry and presence dial.
fn jitter() -> (f64, f64) {
    let mut rng = rand::thread_rng();
    (rng.r#gen(), rng.r#gen())
}

/// Which expiry candidates (outbox ids past expiry by the wall clock) have been so for
/// [`EXPIRY_GRACE`] of running time, given since when each was first seen (`seen`, updated:
/// candidates no longer listed are forgotten).
fn expired(candidates: &[i64], seen: &mut HashMap<i64, Instant>, now: Instant) -> Vec<i64> {
    let mut kept = HashMap::with_capacity(candidates.len());
    let mut expired = Vec::new();
    for &id in candidates {
        let since = seen.get(&id).copied().unwrap_or(now);
        if now.duration_since(since) >= EXPIRY_GRACE {
            expired.push(id);
        } else {
            kept.insert(id, since);
        }
    }
    *seen = kept;
    expired
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
    /// Outbox items past their expiry by the wall clock, and since when this run has seen
    /// them so (see [`EXPIRY_GRACE`]).
    expiring: HashMap<i64, Instant>,
}

/// The core's answer to a session that came up.
#[derive(Debug, Default)]
pub(crate) struct Registration {
    /// The contact's state, if the session may carry anything.
    pub(crate) state: Option<ContactState>,
    /// The session must first show it is live; until then it is not the contact's session.
    pub(crate) on_probation: bool,
}

/// Most dials at once (each builds Tor circuits).
const MAX_CONCURRENT_DIALS: usize = 16;
/// How often housekeeping runs (expiry, event retention, forgetting old rejections).
const HOUSEKEEPING: Duration = Duration::from_secs(60);
/// With [`MAX_CONCURRENT_DIALS`] under way, a dial that is due waits this long and looks again.
const BUSY_RECHECK: Duration = Duration::from_millis(500);
/// A session shorter than this counts as a failed attempt (a peer that accepts the handshake
/// and then refuses us must not be redialled in a tight loop).
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
/// Two sessions with one peer established within this time of each other are simultaneous
/// dials (resolved by identity key); a session that arrives later replaces the older one.
const SIMULTANEOUS_DIALS: Duration = Duration::from_secs(10);
/// An outbox item fails as expired only once it has been past `message_expiry` (by the wall
/// clock, which is what "30 days old" means to a person) for this long of the daemon's own
/// running time (the monotonic clock): a clock that jumps forward cannot fail the whole
/// queue at once, and a backward jump only delays expiry.
const EXPIRY_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Most outbox items looked at for expiry in one pass.
const EXPIRY_BATCH: u32 = 256;

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
            expiring: HashMap::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        // Look for every accepted contact once at start, and deliver whatever is queued.
        let known = self
            .shared
            .store
            .read(|s| Ok((s.contacts()?, s.outbox_contacts()?)))
            .await;
        if let Ok((contacts, queued)) = known {
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
                    if queued.contains(&c.id) {
                        rt.retry_at = Some(now);
                    }
                }
            }
        }
        // Apply retention and expiry once at start, then every minute.
        self.housekeeping().await;
        loop {
            // No fixed tick: the core wakes when its earliest timer is due, or for a message.
            let deadline = tokio::time::Instant::from_std(self.next_deadline(Instant::now()));
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
                () = tokio::time::sleep_until(deadline) => self.on_timers().await,
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
                    None => self.nudge(contact),
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
                live,
                peer_static,
                expires,
                reply,
            } => {
                let state = self
                    .established(conn, peer, initiator, live, peer_static, expires)
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
            CoreMsg::DialFailed { contact, failure } => self.dial_failed(contact, failure).await,
            CoreMsg::TorReady => {
                let now = Instant::now();
                for rt in self.contacts.values_mut() {
                    rt.tor_ready(now);
                }
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
            Ok(c) => match (contact::admit(c.as_ref().map(|c| c.state)), c) {
                (Admit::Refuse, _) => Admission::Refuse(CloseReason::Refused),
                (Admit::Session, Some(c)) => {
                    self.cache_static(&c, peer_static, expires).await;
                    Admission::Contact { contact_id: c.id }
                }
                (_, c) => Admission::RequestOnly {
                    contact_id: c.map(|c| c.id),
                },
            },
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
    ///
    /// A newcomer that has not shown it is live (an IK responder's session, which a replayed
    /// message 1 also produces) never displaces a registered session: it waits on probation
    /// until the peer sends an authenticated transport frame, and is registered then.
    async fn established(
        &mut self,
        conn: ConnId,
        peer: OnionAddress,
        initiator: bool,
        live: bool,
        peer_static: [u8; 32],
        expires: u64,
    ) -> Registration {
        let Some(contact) = self.contact_of(peer).await.ok().flatten() else {
            return Registration::default();
        };
        if contact::admit(Some(contact.state)) != Admit::Session {
            return Registration::default();
        }
        let displaces = self
            .contacts
            .get(&peer)
            .and_then(|rt| rt.session)
            .is_some_and(|existing| existing != conn && self.conns.contains_key(&existing));
        if displaces && !live {
            debug!(peer = %peer.redacted(), conn, "a new session waits to show it is live");
            if let Some(info) = self.conns.get_mut(&conn) {
                info.peer = Some(peer);
                info.initiator = initiator;
            }
            return Registration {
                state: Some(contact.state),
                on_probation: true,
            };
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
        rt.refused = false;
        rt.waiting_for_tor = false;
        match rt.session {
            None => {
                debug!(peer = %peer.redacted(), conn, initiator, "session registered");
                rt.session = Some(conn);
                self.ensure_presence(peer).await;
            }
            Some(existing) if existing != conn => {
                let existing_info = self.conns.get(&existing);
                let existing_ours = existing_info.is_some_and(|c| c.initiator);
                let settled = existing_info
                    .and_then(|c| c.established_at)
                    .is_some_and(|t| t.elapsed() >= SIMULTANEOUS_DIALS);
                let we_are_smaller = me.public_key() < peer.public_key();
                let keep_new = if existing_ours == initiator || settled {
                    // Same direction twice, or a new session beside one that has been up for
                    // a while: the peer dialled because it found the old one dead (a hung
                    // circuit it noticed first). The newer replaces the lingering older one.
                    true
                } else {
                    // Both sides dialled at once: keep the session initiated by the side with
                    // the smaller identity key. Both sides compute the same answer.
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
        Registration {
            state: Some(contact.state),
            on_probation: false,
        }
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
                let event = EventData::Presence(event::Presence {
                    address: peer.to_string(),
                    online,
                });
                append(tx, &event, now)?;
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
        if path_may_be_stale(reason) {
            // The path went silent, broke, or the peer is restarting (with new introduction
            // points): the next dial must not reuse its circuit, nor the descriptor that led
            // to it.
            self.transport.forget_path(&peer);
        }
        let refused = matches!(
            reason,
            Some((CloseReason::Refused | CloseReason::RateLimited, true))
        );
        // We found the path dead (our own answer timeout) on a session that had come up:
        // nothing is wrong with the peer and messages wait, so dial again at once (over a
        // fresh path). Each such round takes the probe's 13 s, so this cannot spin.
        let went_silent =
            matches!(reason, Some((CloseReason::Timeout, false))) && info.established_at.is_some();
        let healthy = !refused
            && (went_silent
                || info
                    .established_at
                    .is_some_and(|t| t.elapsed() >= HEALTHY_SESSION));
        // An end the protocol asked for (a stranger's request handled, a duplicate resolved)
        // is no failed attempt.
        let clean = matches!(
            reason,
            Some((CloseReason::RequestReceived | CloseReason::Duplicate, _))
        );
        if healthy {
            if let Some(rt) = self.contacts.get_mut(&peer) {
                rt.failures = 0;
                rt.retry_at = None;
                if rt.accepted {
                    rt.next_presence = Some(Instant::now() + self.config.presence_initial);
                }
            }
            // Anything still queued goes out on a new session.
            self.deliver_or_dial(peer).await;
        } else if !clean && (info.initiator || was_session) {
            self.record_failure(peer);
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
                Ok(contact::may_dial(c.state) && s.has_outbox(c.id)?)
            })
            .await
            .unwrap_or(false);
        if has_work {
            self.dial(peer, false);
        }
    }

    /// Something new was queued for a contact without a session: try now, unless a dial
    /// started less than `retry_initial` ago (then the schedule takes it). A dial made ahead
    /// of a scheduled retry does not lengthen the backoff if it fails.
    fn nudge(&mut self, peer: OnionAddress) {
        let now = Instant::now();
        let initial = self.config.retry_initial;
        let rt = self.contacts.entry(peer).or_default();
        if rt.session.is_some() || rt.dialing {
            return;
        }
        if let Some(last) = rt.last_dial
            && now.duration_since(last) < initial
        {
            rt.retry_at.get_or_insert(last + initial);
            return;
        }
        let ahead = rt.retry_at.is_some_and(|t| t > now);
        self.dial(peer, ahead);
    }

    fn dial(&mut self, peer: OnionAddress, nudged: bool) {
        let now = Instant::now();
        let rt = self.contacts.entry(peer).or_default();
        if rt.dialing || rt.session.is_some() {
            return;
        }
        if self.dials_in_flight >= MAX_CONCURRENT_DIALS {
            // Busy: look again shortly.
            rt.retry_at = Some(now + BUSY_RECHECK);
            return;
        }
        rt.dialing = true;
        rt.dial_nudged = nudged;
        rt.last_dial = Some(now);
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
                        failure: DialFailure::of(&e),
                    });
                    return;
                }
                Err(_) => {
                    let _ = shared.core.send(CoreMsg::DialFailed {
                        contact: peer,
                        failure: DialFailure::timed_out(timeout),
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
        let Some(contact) = contact.filter(|c| contact::may_dial(c.state)) else {
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

    async fn dial_failed(&mut self, peer: OnionAddress, failure: DialFailure) {
        self.dials_in_flight = self.dials_in_flight.saturating_sub(1);
        let after = after_dial_failure(&failure);
        debug!(peer = %peer.redacted(), kind = %failure.kind, reason = %failure.reason, ?after, "dial failed");
        let now = Instant::now();
        let jitter = jitter();
        let rt = self.contacts.entry(peer).or_default();
        rt.dialing = false;
        match after {
            AfterDialFailure::WaitForTor => rt.wait_for_tor(now, &self.config),
            AfterDialFailure::BackOff => rt.failed(now, &self.config, jitter),
            AfterDialFailure::Nothing => {}
            AfterDialFailure::GiveUpForNow => {
                if rt.give_up_for_now(now, &self.config, jitter) {
                    info!(peer = %peer.redacted(), reason = %failure.reason, "a contact refused our connection; retrying only at the longest interval");
                    let event = EventData::Unreachable(event::Unreachable {
                        address: peer.to_string(),
                        reason: failure.reason,
                    });
                    let _ = self
                        .shared
                        .store
                        .write(move |tx| append(tx, &event, unix_ms()))
                        .await;
                }
            }
        }
    }

    /// An attempt to reach `peer` failed: schedule the next one.
    fn record_failure(&mut self, peer: OnionAddress) {
        self.contacts
            .entry(peer)
            .or_default()
            .failed(Instant::now(), &self.config, jitter());
    }

    /// When a timer is next due: the earliest retry or presence dial of a contact with
    /// neither a session nor a dial under way, the next housekeeping, the device key's
    /// renewal.
    fn next_deadline(&self, now: Instant) -> Instant {
        let mut next = self.last_prune + HOUSEKEEPING;
        for rt in self.contacts.values() {
            if rt.session.is_some() || rt.dialing {
                continue;
            }
            if self.config.presence
                && let Some(t) = rt.next_presence
            {
                next = next.min(t);
            }
            if let Some(t) = rt.retry_at {
                next = next.min(t);
            }
        }
        // The renewal is due by the wall clock; a renewal that failed is tried again a second
        // later (never in a tight loop).
        let renew_at = self
            .shared
            .session_config()
            .certificate
            .expires_at()
            .saturating_sub(self.config.certificate_renew_before.as_secs());
        let wait = renew_at.saturating_sub(view::unix_secs()).max(1);
        next.min(now + Duration::from_secs(wait).min(HOUSEKEEPING))
    }

    /// Timers are due: dial for presence and retries, housekeeping, the key's renewal.
    async fn on_timers(&mut self) {
        let now = Instant::now();
        let presence = self.config.presence;
        let mut presence_due = Vec::new();
        let mut retry_due = Vec::new();
        for (peer, rt) in &mut self.contacts {
            if rt.session.is_some() || rt.dialing {
                continue;
            }
            if presence && rt.next_presence.is_some_and(|t| t <= now) {
                rt.next_presence = None;
                presence_due.push(*peer);
            } else if rt.retry_at.is_some_and(|t| t <= now) {
                rt.retry_at = None;
                retry_due.push(*peer);
            }
        }
        // Presence: accepted contacts we have not seen for a while.
        for peer in presence_due {
            self.dial(peer, false);
        }
        // Retries: contacts whose outbox waited out its backoff.
        for peer in retry_due {
            self.deliver_or_dial(peer).await;
        }
        if now.duration_since(self.last_prune) >= HOUSEKEEPING {
            self.last_prune = now;
            self.housekeeping().await;
        }
        self.renew_certificate_if_due().await;
    }

    /// Fail expired messages; prune the event log.
    async fn housekeeping(&mut self) {
        let expiry = u64::try_from(self.config.message_expiry.as_millis()).unwrap_or(u64::MAX);
        let retention = self.config.event_retention;
        let rejection_memory =
            u64::try_from(self.config.rejection_memory.as_millis()).unwrap_or(u64::MAX);
        let cutoff = unix_ms().saturating_sub(expiry);
        let candidates = self
            .shared
            .store
            .read(move |s| Ok(s.outbox_enqueued_before(cutoff, EXPIRY_BATCH)?))
            .await
            .unwrap_or_default();
        // Past expiry by the wall clock, and so for the grace period of our running time.
        let ids: Vec<i64> = candidates.iter().map(|item| item.id).collect();
        let expired = expired(&ids, &mut self.expiring, Instant::now());
        let result = self
            .shared
            .store
            .write(move |tx| {
                let now = unix_ms();
                for &id in &expired {
                    let Some(item) = tx.outbox_item(id)? else {
                        continue;
                    };
                    tx.remove_outbox(item.id)?;
                    if let Some(row) = item.message_row {
                        tx.set_message_status(row, MessageStatus::Failed, Some("expired"), now)?;
                        if let (Some(m), Some(c)) = (tx.message(row)?, tx.contact(item.contact_id)?)
                        {
                            let address = address_of(&c.identity)?;
                            append(tx, &view::status_event(&m, &address), now)?;
                        }
                    }
                }
                tx.prune_events(
                    retention,
                    carom_api::event::CHURN,
                    carom_api::event::CHURN_RETENTION,
                )?;
                // A rejection is remembered long enough to answer the same person asking
                // again; after that their row (and its memory) goes, so rejected strangers
                // cannot accumulate. Blocked contacts stay: that is what blocking is.
                let forgotten = tx.oldest_contacts(
                    ContactState::Rejected,
                    now.saturating_sub(rejection_memory),
                    EXPIRY_BATCH,
                )?;
                for c in &forgotten {
                    tx.delete_contact(c.id)?;
                }
                Ok(forgotten)
            })
            .await;
        match result {
            Ok(forgotten) => {
                for c in forgotten {
                    if let Ok(peer) = address_of(&c.identity) {
                        self.contacts.remove(&peer);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "housekeeping failed"),
        }
    }

    /// Replace the device key while running, ahead of its certificate's expiry: a daemon that
    /// runs past it would be refused by every peer. New sessions use the new key; peers that
    /// cached the old one fall back to XX once (the protocol's stale-key path).
    async fn renew_certificate_if_due(&mut self) {
        let current = self.shared.session_config();
        let renew_before = self.config.certificate_renew_before.as_secs();
        if current.certificate.expires_at() > view::unix_secs().saturating_add(renew_before) {
            return;
        }
        let identity = current.identity.clone();
        let renewed = crate::new_device(identity, &self.config);
        let record = crate::identity_record(&renewed);
        match self
            .shared
            .store
            .write(move |tx| Ok(tx.save_identity(&record)?))
            .await
        {
            Ok(()) => {
                info!(
                    expires_at = renewed.certificate.expires_at(),
                    "renewed the device key ahead of its certificate's expiry"
                );
                self.shared.set_profile(&renewed);
            }
            Err(e) => tracing::warn!(error = %e, "could not renew the device key; will retry"),
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
        let mut outcome = ContactOutcome::default();
        let step = contact::step(existing.as_ref().map(|c| c.state), Input::PeerAsked)?;
        match existing {
            None => {
                // The limiter first: it is in memory, and a flood must not cost a read each.
                if !self.limiter.admit(peer, Instant::now()) {
                    // No acknowledgement: they will try again later.
                    info!("refused a contact request: rate limit");
                    outcome.close = Some(CloseReason::RateLimited);
                    return Ok(outcome);
                }
                let (id, displaced) = self.store_request(peer, request, &step).await?;
                for old in &displaced {
                    if let Ok(old) = address_of(&old.identity) {
                        self.contacts.remove(&old);
                    }
                }
                if !displaced.is_empty() {
                    info!(
                        dropped = displaced.len(),
                        "the list of contact requests is full: dropped the oldest"
                    );
                }
                self.contacts.entry(peer).or_default();
                outcome.contact_id = Some(id);
            }
            Some(c) => {
                outcome.contact_id = Some(c.id);
                let changed = step.state != Some(c.state);
                let offered = step
                    .has(Effect::QueueAnswer(Decision::Accept))
                    .then_some(request.nickname);
                if changed || offered.is_some() {
                    self.commit_peer_step(c.id, peer, &step, offered).await?;
                }
            }
        }
        outcome.send.push(ack);
        self.carry_out_session_effects(peer, &step, &mut outcome)
            .await;
        Ok(outcome)
    }

    /// Store a stranger's request (they are not a contact yet), making room in a full list
    /// by dropping the oldest requests. Returns the new contact's id and the dropped ones.
    async fn store_request(
        &self,
        peer: OnionAddress,
        request: ContactRequest,
        step: &contact::Step,
    ) -> Result<(i64, Vec<Contact>)> {
        let key = peer.public_key();
        let max_pending = u64::try_from(self.config.max_pending_requests).unwrap_or(u64::MAX);
        let state = step.state.unwrap_or(ContactState::Pending);
        let announce = step.has(Effect::AnnounceRequest);
        self.shared
            .store
            .write(move |tx| {
                let now = unix_ms();
                // A full list of requests makes room by dropping the oldest, so the newest
                // are always there to review: refusing new ones instead would let a flood of
                // old ones lock every later request out.
                let pending = tx.count_contacts(ContactState::Pending)?;
                let excess = (pending + 1).saturating_sub(max_pending);
                let displaced = tx.oldest_contacts(
                    ContactState::Pending,
                    u64::MAX,
                    u32::try_from(excess).unwrap_or(u32::MAX),
                )?;
                for old in &displaced {
                    forget_contact(tx, old, Some(RemovalReason::TooManyRequests), now)?;
                }
                let id = tx.insert_contact(&NewContact {
                    identity: key,
                    state,
                    nickname: request.nickname.clone(),
                    offered_nickname: Some(request.nickname.clone()),
                    greeting: Some(request.greeting.clone()),
                    declared_kind: view::store_peer_kind(request.kind),
                    now,
                })?;
                if announce {
                    let event = EventData::RequestReceived(event::RequestReceived {
                        address: peer.to_string(),
                        nickname: request.nickname.clone(),
                        greeting: request.greeting.clone(),
                        kind: view::peer_kind(view::store_peer_kind(request.kind)),
                    });
                    append(tx, &event, now)?;
                }
                Ok((id, displaced))
            })
            .await
    }

    /// Store a step the peer caused for contact `id`: its new state (and the nickname it
    /// offered, when given), and the step's store effects, in one transaction.
    async fn commit_peer_step(
        &self,
        id: i64,
        peer: OnionAddress,
        step: &contact::Step,
        offered: Option<String>,
    ) -> Result<()> {
        let step = step.clone();
        self.shared
            .store
            .write(move |tx| {
                let now = unix_ms();
                let Some(mut c) = tx.contact(id)? else {
                    return Ok(());
                };
                if let Some(state) = step.state {
                    c.state = state;
                }
                if let Some(offered) = &offered {
                    c.offered_nickname = Some(offered.clone());
                }
                c.updated_at = now;
                tx.update_contact(&c)?;
                contact::apply(tx, id, &peer, &step, By::Them, &Vec::new, now)
            })
            .await
    }

    /// The effects of a peer's step on the session it arrived on: our immediate answer, the
    /// close, and — once accepted — presence and delivery.
    async fn carry_out_session_effects(
        &mut self,
        peer: OnionAddress,
        step: &contact::Step,
        outcome: &mut ContactOutcome,
    ) {
        for effect in &step.effects {
            if let Effect::ReplyAnswer(decision) = *effect {
                outcome.send.push(Message::ContactResponse(ContactResponse {
                    id: MessageId::random(&mut rand_core::OsRng),
                    decision,
                }));
            }
        }
        outcome.close = step.close();
        if step.has(Effect::NowAccepted) {
            outcome.now_accepted = true;
            self.contacts.entry(peer).or_default().accepted = true;
            self.ensure_presence(peer).await;
            self.deliver_or_dial(peer).await;
        }
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
        let existing = self.contact_of(peer).await?;
        let step = contact::step(
            existing.as_ref().map(|c| c.state),
            Input::PeerAnswered(response.decision),
        )?;
        if let Some(c) = &existing {
            outcome.contact_id = Some(c.id);
            if step.state != Some(c.state) {
                self.commit_peer_step(c.id, peer, &step, None).await?;
            }
        }
        self.carry_out_session_effects(peer, &step, &mut outcome)
            .await;
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
                    let _ = reply.send(Registration::default());
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

/// Whether a session that ended this way leaves our cached path to the peer (its circuit, its
/// descriptor) suspect: a stream that broke without a Close, a peer gone silent, or a peer
/// shutting down (it comes back with new introduction points). A clean close for a reason of
/// the protocol's (a duplicate, a request handled) leaves the path good for the next dial.
fn path_may_be_stale(reason: Option<(CloseReason, bool)>) -> bool {
    matches!(
        reason,
        None | Some((
            CloseReason::Timeout | CloseReason::ShuttingDown | CloseReason::ProtocolError,
            _
        ))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EngineConfig {
        EngineConfig {
            retry_initial: Duration::from_secs(5),
            retry_max: Duration::from_secs(600),
            presence_initial: Duration::from_secs(30),
            presence_max: Duration::from_secs(1800),
            ..EngineConfig::default()
        }
    }

    const MID: (f64, f64) = (0.5, 0.5);

    #[test]
    fn what_went_wrong_decides_when_to_dial_again() {
        use AfterDialFailure as A;
        use TransportErrorKind as K;
        let after = |kind, retryable| {
            after_dial_failure(&DialFailure {
                kind,
                retryable,
                reason: String::new(),
            })
        };
        for (kind, retryable, expected) in [
            (K::NotBootstrapped, true, A::WaitForTor),
            (K::NetworkDisabled, false, A::WaitForTor),
            (K::PeerNotFound, true, A::BackOff),
            (K::Timeout, true, A::BackOff),
            (K::Refused, false, A::GiveUpForNow),
            (K::Shutdown, false, A::Nothing),
            (K::Other, true, A::BackOff),
            (K::Other, false, A::GiveUpForNow),
        ] {
            assert_eq!(
                after(kind, retryable),
                expected,
                "{kind} retryable={retryable}"
            );
        }
        let ours = DialFailure::timed_out(Duration::from_secs(90));
        assert_eq!(after_dial_failure(&ours), A::BackOff);
    }

    #[test]
    fn waiting_for_tor_keeps_the_backoff_and_ends_when_tor_is_ready() {
        let t0 = Instant::now();
        let mut rt = ContactRt {
            accepted: true,
            ..ContactRt::default()
        };
        rt.failed(t0, &config(), MID);
        rt.failed(t0, &config(), MID);
        for n in 1..=10 {
            rt.wait_for_tor(t0 + Duration::from_secs(n), &config());
        }
        // Ten dials that never left the machine: the backoff is where two failures put it,
        // and the next try is one initial interval away.
        assert_eq!(rt.failures, 2);
        let last = t0 + Duration::from_secs(10);
        assert_eq!(rt.retry_at, Some(last + Duration::from_secs(5)));
        let ready = last + Duration::from_secs(1);
        rt.tor_ready(ready);
        assert_eq!((rt.retry_at, rt.next_presence), (Some(ready), Some(ready)));
        assert!(!rt.waiting_for_tor);
        // Tor becoming ready moves nothing that was not waiting for it.
        let mut other = ContactRt::default();
        other.failed(t0, &config(), MID);
        let before = other.retry_at;
        other.tor_ready(ready);
        assert_eq!(other.retry_at, before);
    }

    #[test]
    fn a_refusal_waits_the_longest_interval_and_is_news_once() {
        let t0 = Instant::now();
        let mut rt = ContactRt {
            accepted: true,
            ..ContactRt::default()
        };
        assert!(
            rt.give_up_for_now(t0, &config(), MID),
            "the first refusal is news"
        );
        assert_eq!(rt.retry_at, Some(t0 + Duration::from_secs(600)));
        assert_eq!(rt.next_presence, Some(t0 + Duration::from_secs(1800)));
        let later = t0 + Duration::from_secs(600);
        assert!(!rt.give_up_for_now(later, &config(), MID), "told once");
        assert_eq!(rt.retry_at, Some(later + Duration::from_secs(600)));
    }

    #[test]
    fn each_failed_scheduled_attempt_doubles_the_wait_once() {
        let t0 = Instant::now();
        let mut rt = ContactRt {
            accepted: true,
            ..ContactRt::default()
        };
        for (n, expected) in [5u64, 10, 20, 40].into_iter().enumerate() {
            let now = t0 + Duration::from_secs(100 * n as u64);
            rt.dial_nudged = false;
            rt.failed(now, &config(), MID);
            assert_eq!(rt.retry_at, Some(now + Duration::from_secs(expected)));
        }
        assert_eq!(rt.failures, 4);
        assert_eq!(
            rt.next_presence,
            Some(t0 + Duration::from_secs(300 + 240)),
            "presence backs off on the same count"
        );
    }

    #[test]
    fn failed_nudges_leave_the_schedule_as_it_was() {
        let t0 = Instant::now();
        let mut rt = ContactRt::default();
        rt.failed(t0, &config(), MID);
        let scheduled = rt.retry_at;
        // A burst of messages while the contact is away: forty dials ahead of the schedule.
        for i in 0..40 {
            rt.dial_nudged = true;
            rt.failed(t0 + Duration::from_millis(100 * i), &config(), MID);
        }
        assert_eq!(rt.failures, 1);
        assert_eq!(rt.retry_at, scheduled);
        // The very first failure counts even when it was a nudge.
        let mut fresh = ContactRt {
            dial_nudged: true,
            ..ContactRt::default()
        };
        fresh.failed(t0, &config(), MID);
        assert_eq!(fresh.failures, 1);
        assert_eq!(fresh.retry_at, Some(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn expiry_waits_out_a_day_of_running_time_after_the_wall_clock_says_so() {
        let t0 = Instant::now();
        let mut seen = HashMap::new();
        // The wall clock jumped a month ahead: every item looks expired at once …
        assert!(expired(&[1, 2, 3], &mut seen, t0).is_empty());
        assert!(expired(&[1, 2, 3], &mut seen, t0 + EXPIRY_GRACE / 2).is_empty());
        // … and the user set it right: item 3 is no longer a candidate, and is forgotten.
        assert!(expired(&[1, 2], &mut seen, t0 + EXPIRY_GRACE / 2).is_empty());
        assert_eq!(seen.len(), 2);
        // Still past expiry a day of running time later: now they fail.
        assert_eq!(expired(&[1, 2], &mut seen, t0 + EXPIRY_GRACE), [1, 2]);
        assert!(seen.is_empty());
        // A candidate seen for the first time starts its own day.
        assert!(expired(&[4], &mut seen, t0 + EXPIRY_GRACE).is_empty());
    }
}
