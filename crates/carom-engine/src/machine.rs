//! The core's decisions, as a state machine with no I/O (in the model of `quinn-proto`'s
//! `Endpoint`): who may talk to us, which session belongs to which contact, when to dial.
//!
//! Inputs go in with the time they happen at ([`Now`]): connection events, the API's
//! committed changes, store results, timer expiry. Effects come out of [`Machine::poll_effect`]
//! (store writes, dials, commands to connections, reads whose results come back as inputs),
//! and [`Machine::poll_timeout`] says when to call [`Machine::handle_timeout`]. Questions a
//! connection waits on ([`Machine::authenticated`], [`Machine::established`],
//! [`Machine::dialed`], [`Machine::contact_message`]) are answered at once from memory: the
//! contacts table is loaded at start and kept current by the inputs, so no decision waits on
//! the disk. Writes stay durable: an answer that acknowledges something is handed out only
//! after its write has committed (the driver holds it until then).
//!
//! There is no tokio here, no clock and no randomness of its own: the driver passes the time
//! in, and the machine's random numbers come from a generator seeded when it is made. The same
//! inputs at the same times give the same effects, which is what the tests in virtual time
//! rely on.
//!
//! What it is not: the driver (`core.rs` runs it with tokio, the store thread and the
//! transport) or a connection (`conn.rs` drives one session).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use carom_group::GroupId;
use carom_proto::{
    Ack, CloseReason, ContactRequest, ContactResponse, Decision, IdentityKey, Message, MessageId,
    OnionAddress,
};
use carom_store::{Contact, ContactState, GroupState, StoredOperation};
use carom_tor::{TransportError, TransportErrorKind};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha20Rng;
use tracing::{debug, info};

use carom_api::EventData;
use carom_api::event;

use crate::config::EngineConfig;
use crate::contact::{self, Admit, Effect as Rule, Input as RuleInput};
use crate::erasure::{self, Erasure};
use crate::groups::{self, GroupCommand, GroupWrite, Groups, Relation};
use crate::limits::RequestLimiter;

/// Identifies one connection for the lifetime of the engine.
pub(crate) type ConnId = u64;

/// The time an input happens at: the monotonic clock, for every timer, and the wall clock, for
/// what is stored and for certificate expiry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    pub(crate) at: Instant,
    pub(crate) wall_ms: u64,
}

impl Now {
    fn wall_secs(self) -> u64 {
        self.wall_ms / 1000
    }
}

/// What the machine keeps of a contact's row: what its decisions need, nothing a frontend
/// reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Known {
    /// The row's id; `None` while the row the machine asked for is not yet committed.
    pub(crate) id: Option<i64>,
    pub(crate) state: ContactState,
    pub(crate) peer_static: Option<[u8; 32]>,
    pub(crate) peer_static_expires: Option<u64>,
}

impl From<&Contact> for Known {
    fn from(c: &Contact) -> Known {
        Known {
            id: Some(c.id),
            state: c.state,
            peer_static: c.peer_static,
            peer_static_expires: c.peer_static_expires,
        }
    }
}

/// Contacts a write forgot, each with its row if the row stays as a co-member's (group traffic
/// still waits for it).
pub(crate) type Forgotten = Vec<(OnionAddress, Option<Known>)>;

/// How a responder connection may proceed with an authenticated peer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// A contact we exchange messages with (accepted), or whom we asked (requesting).
    Contact { contact_id: i64 },
    /// Not a contact, but in a group we hold: group traffic only (and a contact request, as
    /// from anyone). Its row may not be committed yet (`None`): the connection finds it.
    GroupPeer { contact_id: Option<i64> },
    /// Not a contact: it may deliver a contact request, then the session ends.
    RequestOnly { contact_id: Option<i64> },
    /// Refused outright.
    Refuse(CloseReason),
}

/// The machine's answer to a session that came up.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Registration {
    /// The contact's state, if the session may carry anything.
    pub(crate) state: Option<ContactState>,
    /// The session must first show it is live; until then it is not the contact's session.
    pub(crate) on_probation: bool,
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

/// The answer to a contact request or response: what to store first (if anything) and what
/// the session does once that has committed. The acknowledgement in `outcome` must not be sent
/// before `commit` is durable.
#[derive(Debug)]
pub(crate) struct ContactReply {
    pub(crate) commit: Option<StoreOp>,
    pub(crate) outcome: ContactOutcome,
}

/// A session that came up (either role).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionUp {
    pub(crate) conn: ConnId,
    pub(crate) peer: OnionAddress,
    pub(crate) initiator: bool,
    /// The peer has shown it holds the session's keys (`Session::peer_is_live`).
    pub(crate) live: bool,
    pub(crate) peer_static: [u8; 32],
    /// When the peer's device certificate expires (wall clock, seconds).
    pub(crate) expires: u64,
}

/// What a dialled connection needs from the machine to start.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DialTicket {
    /// The peer's row (`None`: not committed yet; the connection finds it when it needs it).
    pub(crate) contact_id: Option<i64>,
    /// The peer's device key for IK, while its certificate is valid.
    pub(crate) cached_static: Option<[u8; 32]>,
}

/// A write the machine needs. Each addresses its contact by identity key, so that it can be
/// issued before the row it changes has an id.
#[derive(Debug)]
pub(crate) enum StoreOp {
    /// Remember a contact's device key for IK, until its certificate expires.
    CacheStatic {
        peer: OnionAddress,
        key: [u8; 32],
        expires: u64,
    },
    /// A presence change: the contact's last-seen time and the event.
    Presence { peer: OnionAddress, online: bool },
    /// Append an event.
    Event(EventData),
    /// Store a stranger's request, making room in a full list by dropping the oldest ones.
    /// Its result comes back as [`Input::RequestStored`].
    StoreRequest {
        peer: OnionAddress,
        request: ContactRequest,
        state: ContactState,
        announce: bool,
        max_pending: u64,
    },
    /// A step the peer caused for an existing contact: its new state, the nickname it
    /// offered (when given), and the step's store effects, in one transaction.
    PeerStep {
        peer: OnionAddress,
        step: contact::Step,
        offered: Option<String>,
    },
    /// A group change: operations, our standing, what to queue for whom, events (one
    /// transaction; see [`GroupWrite`]). Boxed: it is far larger than the other writes.
    Group(Box<GroupWrite>),
    /// Erase the messages due by `up_to` (wall clock, ms), at most `limit`, with their
    /// events. Its result comes back as [`Input::ExpiredErased`].
    EraseExpired { up_to: u64, limit: u32 },
    /// Fail the outbox items that expired; prune the event log; forget old rejections. Its
    /// result comes back as [`Input::Forgotten`].
    Housekeeping {
        expired: Vec<i64>,
        retention: u64,
        forget_rejected_before_ms: u64,
    },
}

/// What the machine asks the driver to do.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Tell the contact's connection that its outbox has new items.
    Deliver(ConnId),
    /// End a connection's session with this reason.
    Close(ConnId, CloseReason),
    /// Dial a peer; the outcome comes back as [`Machine::dialed`] or [`Input::DialFailed`].
    Dial(OnionAddress),
    /// The path to a peer (its circuit, its descriptor) is suspect: do not reuse it.
    ForgetPath(OnionAddress),
    /// Presence as the API shows it (the durable record is a [`StoreOp::Presence`]).
    Online(OnionAddress, bool),
    /// Write, in the order given.
    Store(StoreOp),
    /// Read whether the contact has anything queued: the answer is [`Input::HasOutbox`].
    CheckOutbox(OnionAddress),
    /// Read the outbox items enqueued before this wall-clock time (at most `limit`): the
    /// answer is [`Input::ExpiryCandidates`].
    FindExpired { enqueued_before_ms: u64, limit: u32 },
    /// Replace the device key; the outcome is [`Input::CertificateRenewed`].
    RenewCertificate,
    /// Move the WAL into the database and truncate it (after erasure); the outcome is
    /// [`Input::Checkpointed`].
    Checkpoint,
}

/// Something that happened.
#[derive(Debug)]
pub(crate) enum Input {
    /// The store at start: every contact, the ids of those with something queued, and every
    /// group with its history.
    Loaded {
        contacts: Vec<(OnionAddress, Known)>,
        queued: Vec<i64>,
        groups: Vec<(GroupId, GroupState, bool, Vec<StoredOperation>)>,
        /// The earliest time a stored message is erased at, and the latest time erasure ran
        /// at (wall clock, ms).
        next_expiry: Option<u64>,
        erasure_high_water: u64,
    },
    /// A message that is erased at `at` (wall clock, ms) was stored.
    Expiring { at: u64 },
    /// A body was erased outside the erasure schedule (a delete, a withdrawal): the WAL
    /// wants a checkpoint.
    Erased,
    /// A [`StoreOp::EraseExpired`] up to `up_to` committed, erasing `count` messages, with
    /// `next` the earliest expiry left; or it failed.
    ExpiredErased {
        up_to: u64,
        outcome: Option<(usize, Option<u64>)>,
    },
    /// An [`Effect::Checkpoint`] finished.
    Checkpointed,
    /// The API committed a change to a contact (`None`: it is gone).
    ContactChanged {
        peer: OnionAddress,
        row: Option<Known>,
    },
    /// The API queued something for a contact.
    Queued { peer: OnionAddress },
    /// A connection that registered itself has ended (with the session's close reason, if
    /// it had one, and whether the peer gave it).
    Closed {
        conn: ConnId,
        reason: Option<(CloseReason, bool)>,
    },
    /// A dial failed.
    DialFailed {
        peer: OnionAddress,
        failure: DialFailure,
    },
    /// Tor became ready to carry traffic (after bootstrap, or after it lost the network).
    TorReady,
    /// The answer to [`Effect::CheckOutbox`].
    HasOutbox { peer: OnionAddress, queued: bool },
    /// The answer to [`Effect::FindExpired`].
    ExpiryCandidates { ids: Vec<i64> },
    /// A [`StoreOp::StoreRequest`] committed (`None`: it failed) and dropped these requests
    /// (each row that stays, as a co-member's, with it).
    RequestStored {
        peer: OnionAddress,
        id: Option<i64>,
        displaced: Forgotten,
    },
    /// A write about this contact failed, so the machine's copy may be wrong: the row as the
    /// store has it (`None`: there is none).
    Reloaded {
        peer: OnionAddress,
        row: Option<Known>,
    },
    /// [`StoreOp::Housekeeping`] forgot these contacts (each row that stays, as a
    /// co-member's, with it).
    Forgotten { peers: Forgotten },
    /// [`Effect::RenewCertificate`] finished: the new certificate's expiry, or `None` if it
    /// failed.
    CertificateRenewed { expires_at: Option<u64> },
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
    pub(crate) fn of(e: &TransportError) -> DialFailure {
        DialFailure {
            kind: e.kind(),
            retryable: e.retryable(),
            reason: e.to_string(),
        }
    }

    /// Our own bound on a whole dial ran out.
    pub(crate) fn timed_out(after: Duration) -> DialFailure {
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
    /// Frontends have been told it is online (and will be told when it is not).
    shown_online: bool,
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

/// Two random fractions in 0..1 that spread a contact's next retry and presence dial.
fn jitter(rng: &mut ChaCha20Rng) -> (f64, f64) {
    (rng.r#gen(), rng.r#gen())
}

/// The core's state: the contacts table, the live connections, the timers.
pub(crate) struct Machine {
    me: OnionAddress,
    /// The groups we hold, with their histories.
    groups: Groups,
    config: EngineConfig,
    rng: ChaCha20Rng,
    /// What the store holds about each contact (loaded at start, kept current by inputs).
    known: HashMap<OnionAddress, Known>,
    conns: HashMap<ConnId, ConnInfo>,
    contacts: HashMap<OnionAddress, ContactRt>,
    limiter: RequestLimiter,
    dials_in_flight: usize,
    last_prune: Instant,
    /// Outbox items past their expiry by the wall clock, and since when this run has seen
    /// them so (see [`EXPIRY_GRACE`]).
    expiring: HashMap<i64, Instant>,
    /// When the device certificate expires (wall clock, seconds).
    certificate_expires_at: u64,
    /// A renewal is under way; `Some(t)`: the last one failed, try again at `t`.
    renewing: bool,
    renew_retry_at: Option<u64>,
    /// When to erase expired messages, and to checkpoint.
    erasure: Erasure,
    /// The contacts table has been loaded.
    loaded: bool,
    effects: VecDeque<Effect>,
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
/// Most outbox items looked at for expiry, and most old rejections forgotten, in one pass.
pub(crate) const EXPIRY_BATCH: u32 = 256;
/// A renewal of the device key that failed is tried again this much later (wall clock).
const RENEWAL_RETRY_SECS: u64 = 1;

impl Machine {
    /// A machine for `identity` (which signs our group operations) whose device certificate
    /// expires at `certificate_expires_at`; `seed` seeds its random numbers. Nothing is
    /// decided until [`Input::Loaded`] arrives.
    pub(crate) fn new(
        identity: IdentityKey,
        config: EngineConfig,
        certificate_expires_at: u64,
        seed: [u8; 32],
        now: Now,
    ) -> Machine {
        let limiter = RequestLimiter::new(
            config.stranger_burst,
            config.stranger_per_minute,
            config.per_source_burst,
            config.per_source_per_hour,
            now.at,
        );
        Machine {
            me: identity.address(),
            groups: Groups::new(identity),
            config,
            rng: ChaCha20Rng::from_seed(seed),
            known: HashMap::new(),
            conns: HashMap::new(),
            contacts: HashMap::new(),
            limiter,
            dials_in_flight: 0,
            last_prune: now.at,
            expiring: HashMap::new(),
            certificate_expires_at,
            renewing: false,
            renew_retry_at: None,
            erasure: Erasure::new(now, 0, None),
            loaded: false,
            effects: VecDeque::new(),
        }
    }

    /// Carry out an erasure decision.
    fn erasure_effect(&mut self, action: Option<erasure::Action>) {
        match action {
            Some(erasure::Action::Erase { up_to }) => {
                self.push(Effect::Store(StoreOp::EraseExpired {
                    up_to,
                    limit: erasure::BATCH,
                }));
            }
            Some(erasure::Action::Checkpoint) => self.push(Effect::Checkpoint),
            None => {}
        }
    }

    /// The next thing to do, in order.
    pub(crate) fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    fn push(&mut self, effect: Effect) {
        self.effects.push_back(effect);
    }

    /// Handle one input.
    pub(crate) fn handle(&mut self, input: Input, now: Now) {
        match input {
            Input::Loaded {
                contacts,
                queued,
                groups,
                next_expiry,
                erasure_high_water,
            } => {
                self.groups.load(groups);
                self.erasure = Erasure::new(now, erasure_high_water, next_expiry);
                self.loaded(contacts, &queued, now);
                let due = self.erasure.poll(now);
                self.erasure_effect(due);
            }
            Input::Expiring { at } => self.erasure.expiring(at),
            Input::Erased => {
                let action = self.erasure.checkpoint();
                self.erasure_effect(action);
            }
            Input::ExpiredErased { up_to, outcome } => match outcome {
                Some((count, next)) => {
                    let action = self.erasure.erased(up_to, count, next, now);
                    self.erasure_effect(action);
                }
                None => self.erasure.failed(up_to, now),
            },
            Input::Checkpointed => {
                let action = self.erasure.checkpointed();
                self.erasure_effect(action);
            }
            Input::ContactChanged { peer, row } => self.contact_changed(peer, row, now),
            Input::Queued { peer } => self.queued(peer, now),
            Input::Closed { conn, reason } => self.closed(conn, reason, now),
            Input::DialFailed { peer, failure } => self.dial_failed(peer, failure, now),
            Input::TorReady => {
                for rt in self.contacts.values_mut() {
                    rt.tor_ready(now.at);
                }
            }
            Input::HasOutbox { peer, queued } => {
                if queued && self.may_dial(&peer) {
                    self.dial(peer, false, now);
                }
            }
            Input::ExpiryCandidates { ids } => {
                // Past expiry by the wall clock, and so for the grace period of our running
                // time.
                let expired = expired(&ids, &mut self.expiring, now.at);
                let rejection_memory =
                    u64::try_from(self.config.rejection_memory.as_millis()).unwrap_or(u64::MAX);
                self.push(Effect::Store(StoreOp::Housekeeping {
                    expired,
                    retention: self.config.event_retention,
                    forget_rejected_before_ms: now.wall_ms.saturating_sub(rejection_memory),
                }));
            }
            Input::RequestStored {
                peer,
                id,
                displaced,
            } => {
                for (old, kept) in displaced {
                    self.forget(old, kept);
                }
                // A request that failed to store comes back as `Reloaded` with the truth.
                if let (Some(id), Some(k)) = (id, self.known.get_mut(&peer)) {
                    k.id.get_or_insert(id);
                }
            }
            Input::Reloaded { peer, row } => match row {
                Some(row) => {
                    self.known.insert(peer, row);
                }
                None => {
                    self.known.remove(&peer);
                }
            },
            Input::Forgotten { peers } => {
                for (peer, kept) in peers {
                    self.forget(peer, kept);
                }
            }
            Input::CertificateRenewed { expires_at } => {
                self.renewing = false;
                match expires_at {
                    Some(t) => {
                        self.certificate_expires_at = t;
                        self.renew_retry_at = None;
                    }
                    None => self.renew_retry_at = Some(now.wall_secs() + RENEWAL_RETRY_SECS),
                }
            }
        }
    }

    /// Something was queued for a contact: send it on the open session, or dial.
    fn queued(&mut self, peer: OnionAddress, now: Now) {
        // The common case — a session is up — needs no read: nudge it.
        match self.contacts.get(&peer).and_then(|rt| rt.session) {
            Some(conn) if self.conns.contains_key(&conn) => {
                self.push(Effect::Deliver(conn));
            }
            Some(_) => {}
            None => self.nudge(peer, now),
        }
    }

    fn is_contact(known: &HashMap<OnionAddress, Known>, peer: &OnionAddress) -> bool {
        known
            .get(peer)
            .is_some_and(|k| k.state == ContactState::Accepted)
    }

    fn relation(known: &HashMap<OnionAddress, Known>, peer: &OnionAddress) -> Relation {
        match known.get(peer).map(|k| k.state) {
            Some(ContactState::Accepted) => Relation::Contact,
            Some(ContactState::Blocked) => Relation::Blocked,
            _ => Relation::Other,
        }
    }

    /// Whether we dial `peer` to deliver what waits for it: any row but a blocked one.
    fn may_dial(&self, peer: &OnionAddress) -> bool {
        self.known
            .get(peer)
            .is_some_and(|k| contact::may_dial(k.state))
    }

    /// Group traffic is queued for these peers: one without a row gets a co-member's (the
    /// write that queues it makes the row), so that it is dialled and its sessions admitted.
    fn will_reach(&mut self, peers: &[OnionAddress]) {
        for peer in peers {
            self.known.entry(*peer).or_insert(Known {
                id: None,
                state: ContactState::CoMember,
                peer_static: None,
                peer_static_expires: None,
            });
        }
    }

    /// Whether a session with `peer` carries anything but a contact request: a contact's
    /// (accepted, or one we asked), or a co-member's for group traffic.
    fn carries_traffic(&self, peer: &OnionAddress) -> bool {
        let state = self.known.get(peer).map(|k| k.state);
        match contact::admit(state) {
            Admit::Session => true,
            Admit::Refuse => false,
            Admit::RequestOnly => self.groups.admits(peer),
        }
    }

    /// A group command from the API. The write (if any) must be issued before the effects
    /// this leaves queued (deliveries to the contacts it fills outboxes for) are carried out.
    pub(crate) fn group_command(
        &mut self,
        command: GroupCommand,
        now: Now,
    ) -> crate::err::Result<groups::Decision> {
        let known = &self.known;
        let decision = self
            .groups
            .command(command, now.wall_ms, &mut self.rng, &|p| {
                Machine::relation(known, p)
            })?;
        self.will_reach(&decision.deliver);
        for peer in decision.deliver.clone() {
            self.queued(peer, now);
        }
        Ok(decision)
    }

    /// The members of `group` at each of these states (for a history's "sent to").
    pub(crate) fn group_sent_to(
        &self,
        group: GroupId,
        heads: &[Vec<carom_group::OpId>],
    ) -> Vec<Vec<String>> {
        heads
            .iter()
            .map(|h| self.groups.sent_to(group, h))
            .collect()
    }

    /// Group operations, a group message or a group withdrawal from `peer` over its session.
    fn group_message(&mut self, peer: OnionAddress, message: Message, now: Now) -> ContactReply {
        let admitted = Machine::is_contact(&self.known, &peer) || self.groups.admits(&peer);
        let decision = if !admitted {
            // Neither a contact nor in a group we hold with them: refused, nothing kept.
            match &message {
                Message::GroupOperations(m) => groups::refuse(m.id, groups::NOT_A_MEMBER),
                Message::GroupChat(m) => groups::refuse(m.id, groups::NOT_A_MEMBER),
                Message::GroupWithdraw(m) => groups::refuse(m.id, groups::NOT_A_MEMBER),
                _ => groups::PeerDecision::default(),
            }
        } else {
            let known = &self.known;
            match message {
                Message::GroupOperations(m) => {
                    self.groups
                        .operations_from(peer, m, &mut self.rng, &|p| Machine::relation(known, p))
                }
                Message::GroupChat(m) => self.groups.chat_from(peer, m),
                Message::GroupWithdraw(m) => self.groups.withdraw_from(peer, m),
                _ => groups::PeerDecision::default(),
            }
        };
        self.will_reach(&decision.deliver);
        for member in decision.deliver.clone() {
            self.queued(member, now);
        }
        ContactReply {
            commit: decision.write.map(|w| StoreOp::Group(Box::new(w))),
            outcome: ContactOutcome {
                send: decision.answer,
                ..ContactOutcome::default()
            },
        }
    }

    /// A contact's row is gone, or (`kept`) stays as a co-member's.
    fn forget(&mut self, peer: OnionAddress, kept: Option<Known>) {
        match kept {
            Some(row) => {
                self.known.insert(peer, row);
                if let Some(rt) = self.contacts.get_mut(&peer) {
                    rt.accepted = false;
                    rt.next_presence = None;
                }
            }
            None => {
                self.known.remove(&peer);
                self.contacts.remove(&peer);
            }
        }
    }

    /// The store at start: look for every accepted contact once, deliver whatever is queued,
    /// and apply retention and expiry.
    fn loaded(&mut self, contacts: Vec<(OnionAddress, Known)>, queued: &[i64], now: Now) {
        for (address, known) in contacts {
            let rt = self.contacts.entry(address).or_default();
            if known.state == ContactState::Accepted {
                rt.accepted = true;
                if self.config.presence {
                    rt.next_presence = Some(now.at);
                }
            }
            if known.id.is_some_and(|id| queued.contains(&id)) {
                rt.retry_at = Some(now.at);
            }
            self.known.insert(address, known);
        }
        self.loaded = true;
        self.housekeeping(now);
    }

    /// A connection that will send [`Input::Closed`] when it ends (a responder before it
    /// authenticates its peer; an initiator once its dial produced a stream).
    fn track(&mut self, conn: ConnId, peer: OnionAddress, initiator: bool) {
        self.conns.insert(
            conn,
            ConnInfo {
                peer: Some(peer),
                initiator,
                established_at: None,
            },
        );
    }

    /// A responder learnt who is calling. Blocked: refuse. Accepted or requesting: a session.
    /// Anyone else: one contact request, then goodbye. `tracked`: the connection will report
    /// its end.
    pub(crate) fn authenticated(
        &mut self,
        conn: ConnId,
        peer: OnionAddress,
        peer_static: [u8; 32],
        expires: u64,
        tracked: bool,
    ) -> Admission {
        if tracked {
            self.track(conn, peer, false);
        }
        let known = self.known.get(&peer).cloned();
        match (contact::admit(known.as_ref().map(|k| k.state)), known) {
            (Admit::Refuse, _) => Admission::Refuse(CloseReason::Refused),
            (Admit::RequestOnly, k) if self.groups.admits(&peer) => {
                self.cache_static(peer, peer_static, expires);
                Admission::GroupPeer {
                    contact_id: k.and_then(|k| k.id),
                }
            }
            (Admit::Session, Some(k)) => match k.id {
                Some(contact_id) => {
                    self.cache_static(peer, peer_static, expires);
                    Admission::Contact { contact_id }
                }
                // Our own row for them is not committed yet: an instant too early.
                None => Admission::Refuse(CloseReason::Normal),
            },
            (_, k) => Admission::RequestOnly {
                contact_id: k.and_then(|k| k.id),
            },
        }
    }

    /// Remember a contact's current device key for IK, until its certificate expires.
    fn cache_static(&mut self, peer: OnionAddress, key: [u8; 32], expires: u64) {
        let Some(k) = self.known.get_mut(&peer) else {
            return;
        };
        if k.peer_static == Some(key) && k.peer_static_expires == Some(expires) {
            return;
        }
        k.peer_static = Some(key);
        k.peer_static_expires = Some(expires);
        self.push(Effect::Store(StoreOp::CacheStatic { peer, key, expires }));
    }

    /// A session came up. Register it for its contact, resolving duplicates.
    ///
    /// A newcomer that has not shown it is live (an IK responder's session, which a replayed
    /// message 1 also produces) never displaces a registered session: it waits on probation
    /// until the peer sends an authenticated transport frame, and is registered then.
    pub(crate) fn established(&mut self, up: SessionUp, now: Now) -> Registration {
        let SessionUp {
            conn,
            peer,
            initiator,
            live,
            peer_static,
            expires,
        } = up;
        if !self.carries_traffic(&peer) {
            return Registration::default();
        }
        // A co-member the machine had no row for (it dialled us first): the row comes with
        // the first group traffic queued for it.
        self.will_reach(&[peer]);
        let state = self.known[&peer].state;
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
                state: Some(state),
                on_probation: true,
            };
        }
        self.cache_static(peer, peer_static, expires);
        if let Some(info) = self.conns.get_mut(&conn) {
            info.peer = Some(peer);
            info.initiator = initiator;
            info.established_at = Some(now.at);
        }
        let me = self.me;
        let accepted = state == ContactState::Accepted;
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
                self.ensure_presence(peer);
            }
            Some(existing) if existing != conn => {
                let existing_info = self.conns.get(&existing);
                let existing_ours = existing_info.is_some_and(|c| c.initiator);
                let settled = existing_info
                    .and_then(|c| c.established_at)
                    .is_some_and(|t| now.at.saturating_duration_since(t) >= SIMULTANEOUS_DIALS);
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
                    "two sessions with one peer: resolved"
                );
                if let Some(rt) = self.contacts.get_mut(&peer) {
                    rt.session = Some(if keep_new { conn } else { existing });
                }
                if self.conns.contains_key(&loser) {
                    self.push(Effect::Close(loser, CloseReason::Duplicate));
                }
            }
            Some(_) => {}
        }
        Registration {
            state: Some(state),
            on_probation: false,
        }
    }

    /// An accepted contact with a session up is online: say so once.
    fn ensure_presence(&mut self, peer: OnionAddress) {
        let Some(rt) = self.contacts.get_mut(&peer) else {
            return;
        };
        if rt.accepted && rt.session.is_some() && !rt.shown_online {
            rt.shown_online = true;
            self.set_presence(peer, true);
        }
    }

    fn set_presence(&mut self, peer: OnionAddress, online: bool) {
        self.push(Effect::Store(StoreOp::Presence { peer, online }));
        self.push(Effect::Online(peer, online));
    }

    fn closed(&mut self, conn: ConnId, reason: Option<(CloseReason, bool)>, now: Now) {
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
        if was_session {
            rt.session = None;
            if std::mem::take(&mut rt.shown_online) {
                self.set_presence(peer, false);
            }
        }
        let busy = self
            .contacts
            .get(&peer)
            .is_some_and(|rt| rt.session.is_some() || rt.dialing);
        if busy {
            return; // another session (or dial) carries on
        }
        // An accepted contact left with neither a session nor a dial is always looked for
        // again. (Without this, two sides that each closed a different one of two sessions as
        // the duplicate, say because their clocks disagreed on which was settled, would never
        // dial each other again until a message was sent.)
        let presence_initial = self.config.presence_initial;
        if let Some(rt) = self.contacts.get_mut(&peer)
            && rt.accepted
            && rt.next_presence.is_none()
        {
            rt.next_presence = Some(now.at + presence_initial);
        }
        if path_may_be_stale(reason) {
            // The path went silent, broke, or the peer is restarting (with new introduction
            // points): the next dial must not reuse its circuit, nor the descriptor that led
            // to it.
            self.push(Effect::ForgetPath(peer));
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
                    .is_some_and(|t| now.at.saturating_duration_since(t) >= HEALTHY_SESSION));
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
                    rt.next_presence = Some(now.at + presence_initial);
                }
            }
            // Anything still queued goes out on a new session.
            self.deliver_or_dial(peer);
        } else if !clean && (info.initiator || was_session) {
            self.record_failure(peer, now);
        }
    }

    /// The API committed a change to a contact (or removed it).
    fn contact_changed(&mut self, peer: OnionAddress, row: Option<Known>, now: Now) {
        let state = row.as_ref().map(|k| k.state);
        match row {
            Some(row) => {
                self.known.insert(peer, row);
            }
            None => {
                self.known.remove(&peer);
            }
        }
        let rt = self.contacts.entry(peer).or_default();
        match state {
            None | Some(ContactState::Blocked) => {
                // Removed or blocked: end every session with them now.
                rt.next_presence = None;
                let mut closing: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.peer == Some(peer))
                    .map(|(id, _)| *id)
                    .collect();
                closing.sort_unstable();
                for conn in closing {
                    self.push(Effect::Close(conn, CloseReason::Refused));
                }
                if state.is_none() {
                    self.contacts.remove(&peer);
                }
            }
            Some(ContactState::CoMember) => {
                // No longer a contact, still a co-member: its sessions end (the next one is
                // for group traffic only), and nobody watches its presence.
                rt.accepted = false;
                rt.next_presence = None;
                rt.shown_online = false;
                let mut closing: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.peer == Some(peer))
                    .map(|(id, _)| *id)
                    .collect();
                closing.sort_unstable();
                for conn in closing {
                    self.push(Effect::Close(conn, CloseReason::Normal));
                }
            }
            Some(ContactState::Accepted) => {
                rt.accepted = true;
                if rt.session.is_none() && rt.next_presence.is_none() {
                    rt.next_presence = Some(now.at);
                }
                self.ensure_presence(peer);
                self.deliver_or_dial(peer);
            }
            Some(_) => {
                rt.accepted = false;
                rt.next_presence = None;
                self.deliver_or_dial(peer);
            }
        }
    }

    /// Send queued items on the open session, or dial if there are some and no session.
    fn deliver_or_dial(&mut self, peer: OnionAddress) {
        let Some(rt) = self.contacts.get(&peer) else {
            return;
        };
        if let Some(conn) = rt.session {
            if self.conns.contains_key(&conn) {
                self.push(Effect::Deliver(conn));
            }
            return;
        }
        if self.may_dial(&peer) {
            // Whether anything waits is the store's to say; the answer dials.
            self.push(Effect::CheckOutbox(peer));
        }
    }

    /// Something new was queued for a contact without a session: try now, unless a dial
    /// started less than `retry_initial` ago (then the schedule takes it). A dial made ahead
    /// of a scheduled retry does not lengthen the backoff if it fails.
    fn nudge(&mut self, peer: OnionAddress, now: Now) {
        let initial = self.config.retry_initial;
        let rt = self.contacts.entry(peer).or_default();
        if rt.session.is_some() || rt.dialing {
            return;
        }
        if let Some(last) = rt.last_dial
            && now.at.saturating_duration_since(last) < initial
        {
            rt.retry_at.get_or_insert(last + initial);
            return;
        }
        let ahead = rt.retry_at.is_some_and(|t| t > now.at);
        self.dial(peer, ahead, now);
    }

    fn dial(&mut self, peer: OnionAddress, nudged: bool, now: Now) {
        let rt = self.contacts.entry(peer).or_default();
        if rt.dialing || rt.session.is_some() {
            return;
        }
        if self.dials_in_flight >= MAX_CONCURRENT_DIALS {
            // Busy: look again shortly.
            rt.retry_at = Some(now.at + BUSY_RECHECK);
            return;
        }
        rt.dialing = true;
        rt.dial_nudged = nudged;
        rt.last_dial = Some(now.at);
        self.dials_in_flight += 1;
        debug!(peer = %peer.redacted(), "dialling");
        self.push(Effect::Dial(peer));
    }

    /// A dial produced a stream, for connection `conn`: may it proceed?
    pub(crate) fn dialed(
        &mut self,
        peer: OnionAddress,
        conn: ConnId,
        now: Now,
    ) -> Option<DialTicket> {
        self.dials_in_flight = self.dials_in_flight.saturating_sub(1);
        let ticket = self
            .known
            .get(&peer)
            .filter(|k| contact::may_dial(k.state))
            .map(|k| {
                // Use the cached key only while its certificate is valid; otherwise XX.
                let cached_static = k
                    .peer_static
                    .filter(|_| k.peer_static_expires.is_some_and(|e| e > now.wall_secs()));
                DialTicket {
                    contact_id: k.id,
                    cached_static,
                }
            });
        if ticket.is_some() {
            self.track(conn, peer, true);
        } else if let Some(rt) = self.contacts.get_mut(&peer) {
            rt.dialing = false;
        }
        ticket
    }

    fn dial_failed(&mut self, peer: OnionAddress, failure: DialFailure, now: Now) {
        self.dials_in_flight = self.dials_in_flight.saturating_sub(1);
        let after = after_dial_failure(&failure);
        debug!(peer = %peer.redacted(), kind = %failure.kind, reason = %failure.reason, ?after, "dial failed");
        let jitter = jitter(&mut self.rng);
        let rt = self.contacts.entry(peer).or_default();
        rt.dialing = false;
        match after {
            AfterDialFailure::WaitForTor => rt.wait_for_tor(now.at, &self.config),
            AfterDialFailure::BackOff => rt.failed(now.at, &self.config, jitter),
            AfterDialFailure::Nothing => {}
            AfterDialFailure::GiveUpForNow => {
                if rt.give_up_for_now(now.at, &self.config, jitter) {
                    info!(peer = %peer.redacted(), reason = %failure.reason, "a contact refused our connection; retrying only at the longest interval");
                    let event = EventData::Unreachable(event::Unreachable {
                        address: peer.to_string(),
                        reason: failure.reason,
                    });
                    self.push(Effect::Store(StoreOp::Event(event)));
                }
            }
        }
    }

    /// An attempt to reach `peer` failed: schedule the next one.
    fn record_failure(&mut self, peer: OnionAddress, now: Now) {
        let jitter = jitter(&mut self.rng);
        self.contacts
            .entry(peer)
            .or_default()
            .failed(now.at, &self.config, jitter);
    }

    /// When [`Machine::handle_timeout`] is next due: the earliest retry or presence dial of a
    /// contact with neither a session nor a dial under way, the next housekeeping, the device
    /// key's renewal (converted from the wall clock with `now`).
    pub(crate) fn poll_timeout(&self, now: Now) -> Instant {
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
        if let Some(t) = self.erasure.poll_timeout(now) {
            next = next.min(t);
        }
        if !self.renewing {
            let wait = self.renew_at().saturating_sub(now.wall_secs());
            // Never a tight loop: the wall clock is looked at again within a housekeeping
            // interval, and a due renewal at most once a second.
            next = next.min(now.at + Duration::from_secs(wait.max(1)).min(HOUSEKEEPING));
        }
        next
    }

    /// When the device key is to be renewed (wall clock, seconds).
    fn renew_at(&self) -> u64 {
        self.renew_retry_at.unwrap_or_else(|| {
            self.certificate_expires_at
                .saturating_sub(self.config.certificate_renew_before.as_secs())
        })
    }

    /// Timers may be due: dial for presence and retries, housekeeping, the key's renewal.
    pub(crate) fn handle_timeout(&mut self, now: Now) {
        if !self.loaded {
            return;
        }
        let presence = self.config.presence;
        let mut presence_due = Vec::new();
        let mut retry_due = Vec::new();
        for (peer, rt) in &mut self.contacts {
            if rt.session.is_some() || rt.dialing {
                continue;
            }
            if presence && rt.next_presence.is_some_and(|t| t <= now.at) {
                rt.next_presence = None;
                presence_due.push(*peer);
            } else if rt.retry_at.is_some_and(|t| t <= now.at) {
                rt.retry_at = None;
                retry_due.push(*peer);
            }
        }
        // The order of a hash map is not the machine's to leak into its effects: the same
        // inputs must give the same effects.
        presence_due.sort_unstable_by_key(OnionAddress::public_key);
        retry_due.sort_unstable_by_key(OnionAddress::public_key);
        // Presence: accepted contacts we have not seen for a while.
        for peer in presence_due {
            self.dial(peer, false, now);
        }
        // Retries: contacts whose outbox waited out its backoff.
        for peer in retry_due {
            self.deliver_or_dial(peer);
        }
        if now.at.saturating_duration_since(self.last_prune) >= HOUSEKEEPING {
            self.housekeeping(now);
        }
        let due = self.erasure.poll(now);
        self.erasure_effect(due);
        if !self.renewing && self.renew_at() <= now.wall_secs() {
            self.renewing = true;
            self.push(Effect::RenewCertificate);
        }
    }

    /// Fail expired messages, prune the event log, forget old rejections: this asks for the
    /// candidates; [`Input::ExpiryCandidates`] does the rest.
    fn housekeeping(&mut self, now: Now) {
        self.last_prune = now.at;
        let expiry = u64::try_from(self.config.message_expiry.as_millis()).unwrap_or(u64::MAX);
        self.push(Effect::FindExpired {
            enqueued_before_ms: now.wall_ms.saturating_sub(expiry),
            limit: EXPIRY_BATCH,
        });
    }

    /// A contact request or response arrived from `peer`.
    pub(crate) fn contact_message(
        &mut self,
        peer: OnionAddress,
        message: Message,
        now: Now,
    ) -> ContactReply {
        let reply = match message {
            Message::ContactRequest(request) => self.contact_request(peer, request, now),
            Message::ContactResponse(response) => self.contact_response(peer, response),
            Message::GroupOperations(_) | Message::GroupChat(_) | Message::GroupWithdraw(_) => {
                Ok(self.group_message(peer, message, now))
            }
            _ => Ok(ContactReply {
                commit: None,
                outcome: ContactOutcome::default(),
            }),
        };
        reply.unwrap_or_else(|e| {
            debug!(error = %e, "contact message not handled");
            ContactReply {
                commit: None,
                outcome: ContactOutcome {
                    close: Some(CloseReason::Normal),
                    ..ContactOutcome::default()
                },
            }
        })
    }

    fn contact_request(
        &mut self,
        peer: OnionAddress,
        request: ContactRequest,
        now: Now,
    ) -> crate::err::Result<ContactReply> {
        let ack = Message::Ack(Ack {
            ids: vec![request.id],
        });
        // A co-member's row is no relationship: its request is a stranger's (rate-limited,
        // announced), and its row takes it.
        let co_member_row = self
            .known
            .get(&peer)
            .filter(|k| k.state == ContactState::CoMember)
            .map(|k| k.id);
        let existing = self
            .known
            .get(&peer)
            .cloned()
            .filter(|_| co_member_row.is_none());
        let step = contact::step(existing.as_ref().map(|k| k.state), RuleInput::PeerAsked)?;
        let mut outcome = ContactOutcome::default();
        let commit = match existing {
            None => {
                // The limiter first: it is in memory, and a flood must not cost a write each.
                if !self.limiter.admit(peer, now.at) {
                    // No acknowledgement: they will try again later.
                    info!("refused a contact request: rate limit");
                    outcome.close = Some(CloseReason::RateLimited);
                    return Ok(ContactReply {
                        commit: None,
                        outcome,
                    });
                }
                let state = step.state.unwrap_or(ContactState::Pending);
                self.known.insert(
                    peer,
                    Known {
                        id: co_member_row.flatten(),
                        state,
                        peer_static: None,
                        peer_static_expires: None,
                    },
                );
                self.contacts.entry(peer).or_default();
                Some(StoreOp::StoreRequest {
                    peer,
                    request,
                    state,
                    announce: step.has(Rule::AnnounceRequest),
                    max_pending: u64::try_from(self.config.max_pending_requests)
                        .unwrap_or(u64::MAX),
                })
            }
            Some(k) => {
                outcome.contact_id = k.id;
                let changed = step.state != Some(k.state);
                let offered = step
                    .has(Rule::QueueAnswer(Decision::Accept))
                    .then_some(request.nickname);
                self.commit_state(peer, &step);
                (changed || offered.is_some()).then(|| StoreOp::PeerStep {
                    peer,
                    step: step.clone(),
                    offered,
                })
            }
        };
        outcome.send.push(ack);
        self.carry_out_session_effects(peer, &step, &mut outcome);
        Ok(ContactReply { commit, outcome })
    }

    /// The machine's copy of a contact takes the state a step leads to.
    fn commit_state(&mut self, peer: OnionAddress, step: &contact::Step) {
        if let (Some(state), Some(k)) = (step.state, self.known.get_mut(&peer)) {
            k.state = state;
        }
    }

    /// The effects of a peer's step on the session it arrived on: our immediate answer, the
    /// close, and — once accepted — presence and delivery.
    fn carry_out_session_effects(
        &mut self,
        peer: OnionAddress,
        step: &contact::Step,
        outcome: &mut ContactOutcome,
    ) {
        for effect in &step.effects {
            if let Rule::ReplyAnswer(decision) = *effect {
                outcome.send.push(Message::ContactResponse(ContactResponse {
                    id: MessageId::random(&mut self.rng),
                    decision,
                }));
            }
        }
        outcome.close = step.close();
        if step.has(Rule::NowAccepted) {
            outcome.now_accepted = true;
            self.contacts.entry(peer).or_default().accepted = true;
            self.ensure_presence(peer);
            self.deliver_or_dial(peer);
        }
    }

    fn contact_response(
        &mut self,
        peer: OnionAddress,
        response: ContactResponse,
    ) -> crate::err::Result<ContactReply> {
        let mut outcome = ContactOutcome::default();
        outcome.send.push(Message::Ack(Ack {
            ids: vec![response.id],
        }));
        let existing = self
            .known
            .get(&peer)
            .cloned()
            .filter(|k| k.state != ContactState::CoMember);
        let step = contact::step(
            existing.as_ref().map(|k| k.state),
            RuleInput::PeerAnswered(response.decision),
        )?;
        let mut commit = None;
        if let Some(k) = &existing {
            outcome.contact_id = k.id;
            if step.state != Some(k.state) {
                self.commit_state(peer, &step);
                commit = Some(StoreOp::PeerStep {
                    peer,
                    step: step.clone(),
                    offered: None,
                });
            }
        }
        self.carry_out_session_effects(peer, &step, &mut outcome);
        Ok(ContactReply { commit, outcome })
    }

    /// Close every session (the engine is stopping); returns how many there were.
    pub(crate) fn shutdown(&mut self) -> usize {
        let mut conns: Vec<ConnId> = self.conns.keys().copied().collect();
        conns.sort_unstable();
        for &conn in &conns {
            self.push(Effect::Close(conn, CloseReason::ShuttingDown));
        }
        conns.len()
    }

    /// The connection ended during shutdown.
    pub(crate) fn forget_conn(&mut self, conn: ConnId) -> usize {
        self.conns.remove(&conn);
        self.conns.len()
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

    // The machine in virtual time: inputs at chosen instants, effects read off.

    fn peer(n: u8) -> OnionAddress {
        carom_proto::IdentityKey::from_seed(&[n; 32]).address()
    }

    fn at(t0: Instant, secs: u64) -> Now {
        Now {
            at: t0 + Duration::from_secs(secs),
            wall_ms: 1_800_000_000_000 + secs * 1000,
        }
    }

    fn accepted(id: i64) -> Known {
        Known {
            id: Some(id),
            state: ContactState::Accepted,
            peer_static: None,
            peer_static_expires: None,
        }
    }

    /// A loaded machine (`me` = peer 1) with peer 2 an accepted contact; its start-up
    /// effects drained.
    fn loaded(seed: u8) -> (Machine, Instant) {
        let t0 = Instant::now();
        let cert_expires = at(t0, 0).wall_secs() + 365 * 24 * 3600;
        let mut m = Machine::new(
            IdentityKey::from_seed(&[1; 32]),
            config(),
            cert_expires,
            [seed; 32],
            at(t0, 0),
        );
        m.handle(
            Input::Loaded {
                contacts: vec![(peer(2), accepted(7))],
                queued: vec![],
                groups: vec![],
                next_expiry: None,
                erasure_high_water: 0,
            },
            at(t0, 0),
        );
        drain(&mut m);
        (m, t0)
    }

    fn drain(m: &mut Machine) -> Vec<String> {
        std::iter::from_fn(|| m.poll_effect())
            .map(|e| format!("{e:?}"))
            .collect()
    }

    fn up(conn: ConnId, initiator: bool) -> SessionUp {
        SessionUp {
            conn,
            peer: peer(2),
            initiator,
            live: true,
            peer_static: [9; 32],
            expires: u64::MAX,
        }
    }

    #[test]
    fn a_contact_left_without_a_session_after_duplicates_is_looked_for_again() {
        let (mut m, t0) = loaded(1);
        // Our dial's session, then theirs eleven seconds later (past the simultaneous-dial
        // window, so the newer one stays and ours is closed as the duplicate).
        m.handle_timeout(at(t0, 0));
        drain(&mut m);
        assert!(m.dialed(peer(2), 10, at(t0, 1)).is_some());
        m.established(up(10, true), at(t0, 1));
        let _ = m.authenticated(11, peer(2), [9; 32], u64::MAX, true);
        m.established(up(11, false), at(t0, 12));
        assert!(drain(&mut m).contains(&"Close(10, Duplicate)".to_owned()));
        // The peer, whose clock saw it otherwise, closed the other one: neither is left.
        m.handle(
            Input::Closed {
                conn: 11,
                reason: Some((CloseReason::Duplicate, true)),
            },
            at(t0, 12),
        );
        m.handle(
            Input::Closed {
                conn: 10,
                reason: Some((CloseReason::Duplicate, false)),
            },
            at(t0, 12),
        );
        drain(&mut m);
        let due = m.poll_timeout(at(t0, 12));
        assert!(
            due <= at(t0, 12).at + config().presence_initial,
            "a presence dial is due"
        );
        m.handle_timeout(Now {
            at: due,
            wall_ms: at(t0, 42).wall_ms,
        });
        assert!(drain(&mut m).contains(&format!("Dial({:?})", peer(2))));
    }

    #[test]
    fn the_same_inputs_at_the_same_times_give_the_same_effects() {
        let run = |seed: u8| {
            let (mut m, t0) = loaded(seed);
            let mut log = Vec::new();
            for round in 0..20u64 {
                let now = at(t0, round * 7);
                m.handle_timeout(now);
                if round % 3 == 0 {
                    m.handle(
                        Input::DialFailed {
                            peer: peer(2),
                            failure: DialFailure::timed_out(Duration::from_secs(1)),
                        },
                        now,
                    );
                }
                log.extend(drain(&mut m));
                log.push(format!("{:?}", m.poll_timeout(now).duration_since(t0)));
            }
            log
        };
        assert_eq!(run(3), run(3), "seeded: the same schedule twice");
        assert_ne!(run(3), run(4), "the seed is what spreads the retries");
    }

    #[test]
    fn group_traffic_from_someone_who_is_not_an_accepted_contact_is_refused_unstored() {
        let (mut m, t0) = loaded(1);
        let chat = Message::GroupChat(carom_proto::GroupChat {
            id: MessageId([4; 16]),
            group: GroupId([5; 16]),
            heads: vec![carom_group::OpId([6; 32])],
            members_digest: carom_proto::Digest32([0; 32]),
            sent_at: 0,
            body: "let me in".into(),
            reply_to: None,
            expires_after: None,
        });
        let reply = m.contact_message(peer(3), chat.clone(), at(t0, 1));
        assert!(reply.commit.is_none());
        assert!(matches!(
            reply.outcome.send.as_slice(),
            [Message::Reject(r)] if r.reason == carom_proto::reject::NOT_A_MEMBER
        ));
        // An accepted contact with no such group is refused the same way.
        let reply = m.contact_message(peer(2), chat, at(t0, 2));
        assert!(reply.commit.is_none());
        assert!(matches!(
            reply.outcome.send.as_slice(),
            [Message::Reject(r)] if r.reason == carom_proto::reject::NOT_A_MEMBER
        ));
    }

    #[test]
    fn a_peer_is_admitted_from_the_table_in_memory() {
        let (mut m, _) = loaded(1);
        assert_eq!(
            m.authenticated(1, peer(2), [9; 32], 5, false),
            Admission::Contact { contact_id: 7 }
        );
        // Its key was cached for IK, in memory at once and in the store after.
        assert_eq!(drain(&mut m).len(), 1);
        assert_eq!(
            m.authenticated(2, peer(3), [9; 32], 5, false),
            Admission::RequestOnly { contact_id: None }
        );
        m.handle(
            Input::ContactChanged {
                peer: peer(3),
                row: Some(Known {
                    state: ContactState::Blocked,
                    ..accepted(8)
                }),
            },
            at(Instant::now(), 0),
        );
        assert_eq!(
            m.authenticated(3, peer(3), [9; 32], 5, false),
            Admission::Refuse(CloseReason::Refused)
        );
    }
}
