//! # carom-api: the contract between `caromd` and its frontends
//!
//! Frontends (the `carom` CLI, TUIs, bots, GUIs) talk to the daemon with JSON-RPC 2.0, one JSON
//! object per line, over a Unix socket in a private runtime directory. This crate holds every
//! type that crosses that socket — method names, parameters, results, event kinds, error kinds
//! — so the server and the typed client (`carom-client`) cannot drift apart. `docs/api.md`
//! documents each with examples.
//!
//! Each method is described once in [`method`] (name, parameters, result); the server
//! dispatches on [`Request`] and the client calls any [`Method`], so neither can drift from
//! the other. Events are typed in [`event`], with a fallback for kinds a newer daemon adds.
//!
//! Conventions (see `docs/api.md`):
//! - On connect the server first sends a [`Banner`] notification (`carom.banner`).
//! - Requests carry an `id`; every response echoes it. Pipelining is allowed.
//! - Errors carry a stable machine-readable [`ErrorKind`] in `error.data.kind`, and a message
//!   for people without internals.
//! - Clients must ignore unknown fields and tolerate unknown event kinds and enum values.
//! - A line that is not JSON closes the connection; lines longer than [`MAX_LINE_BYTES`] are
//!   refused.
//!
//! What it is not: transport code. It only describes values.

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod limits;
pub use limits::CheckLimits;

/// The parameters of a method that takes none (`params` absent, `null` or `{}`; unknown
/// members are ignored, as everywhere), and the result of a method that returns nothing
/// (`{}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// This API's version. Bumped on incompatible changes; additions keep it.
pub const API_VERSION: u32 = 1;
/// The oldest API version this daemon still serves.
pub const MIN_API_VERSION: u32 = 1;
/// Longest request or response line, in bytes (newline excluded).
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Longest message body accepted by `message.send`, in bytes of UTF-8.
pub const MAX_BODY_BYTES: usize = 32 * 1024;
/// Longest nickname offered to a peer in a contact request (a protocol limit).
pub const MAX_OFFERED_NICKNAME_BYTES: usize = 64;
/// Longest greeting in a contact request (a protocol limit).
pub const MAX_GREETING_BYTES: usize = 1024;
/// Longest local nickname for a contact.
pub const MAX_NICKNAME_BYTES: usize = 256;
/// Longest `client_token` of `message.send`.
pub const MAX_CLIENT_TOKEN_BYTES: usize = 256;
/// Longest passphrase.
pub const MAX_PASSPHRASE_BYTES: usize = 1024;
/// Longest bridge line (a webtunnel or meek line with its URL is a few hundred bytes).
pub const MAX_BRIDGE_LINE_BYTES: usize = 2048;
/// Most bridge lines in `tor.set_bridges` (arti uses a few; Tor Browser offers three).
pub const MAX_BRIDGE_LINES: usize = 64;
/// Longest onion address or message id given as a parameter (a valid one is far shorter).
pub const MAX_ADDRESS_BYTES: usize = 128;
/// Longest frontend name in `session.hello`.
pub const MAX_CLIENT_NAME_BYTES: usize = 64;
/// Most event kinds one `events.subscribe` may filter on.
pub const MAX_EVENT_KINDS: usize = 64;
/// Longest event kind in that filter.
pub const MAX_EVENT_KIND_BYTES: usize = 64;
/// Frontends connected at once; one more is told so and disconnected.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest group name, and longest name a member gives itself in a group (protocol §12).
pub const MAX_GROUP_NAME_BYTES: usize = 64;

pub mod method;
pub use method::{Method, Request};

mod group;
pub use group::{
    DeliveryStatus, Group, GroupAccept, GroupCreate, GroupDelete, GroupDelivery, GroupHistory,
    GroupInvitation, GroupInvite, GroupMember, GroupMemberParams, GroupMessage, GroupMessagePage,
    GroupParams, GroupRename, GroupRole, GroupSend, GroupSetHistory, GroupSetPolicy, GroupSetRole,
    GroupSetTimer, GroupState,
};

/// The first line on every connection (method [`method::BANNER`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Banner {
    /// [`API_VERSION`] of the daemon.
    pub api_version: u32,
    /// [`MIN_API_VERSION`] of the daemon.
    pub min_api_version: u32,
    /// The daemon's version.
    pub daemon_version: String,
    /// Optional capabilities, e.g. `"events"`, `"qr"`.
    pub features: Vec<String>,
    /// This connection's frontend-session id (as in `session.list`).
    pub session: u64,
}

/// Where the profile stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileState {
    /// No profile yet: call `profile.create`.
    None,
    /// A profile exists and is locked: call `profile.unlock`.
    Locked,
    /// Unlocked and running.
    Unlocked,
}

/// Result of `daemon.info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// The daemon's version.
    pub daemon_version: String,
    /// [`API_VERSION`].
    pub api_version: u32,
    /// [`MIN_API_VERSION`].
    pub min_api_version: u32,
    /// The profile's state.
    pub profile: ProfileState,
    /// Whether the profile's key is protected by a passphrase (`None` without a profile).
    pub passphrase_protected: Option<bool>,
    /// Whether this is a RAM-only profile that leaves nothing on disk.
    pub ephemeral: bool,
    /// The data directory (absent for RAM-only profiles).
    pub data_dir: Option<String>,
}

/// Result of `daemon.stats`: counters since the profile was unlocked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Bytes written to peers' streams (frames, handshakes, acknowledgements, keepalives).
    pub bytes_sent: u64,
    /// Bytes read from peers' streams.
    pub bytes_received: u64,
    /// Connections opened, dialled or accepted.
    pub connections: u64,
    /// Sessions that completed their handshake.
    pub sessions: u64,
    /// Incoming connections whose peer has not authenticated yet (at most 128: beyond that
    /// the oldest is dropped).
    #[serde(default)]
    pub handshakes_in_progress: u64,
}

/// A passphrase as it crosses the API: wiped from memory when dropped, and never printed
/// (`Debug` shows only its length).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Passphrase(zeroize::Zeroizing<String>);

impl Passphrase {
    /// Wraps `text` (which moves in without a copy).
    pub fn new(text: String) -> Passphrase {
        Passphrase(zeroize::Zeroizing::new(text))
    }

    /// The passphrase itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Passphrase {
    fn from(text: &str) -> Passphrase {
        Passphrase::new(text.to_owned())
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Passphrase({} bytes)", self.0.len())
    }
}

impl Serialize for Passphrase {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Passphrase {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Passphrase::new)
    }
}

/// Parameters of `profile.create`. Give a passphrase, or set `no_passphrase` explicitly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileCreate {
    /// Protects the profile's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<Passphrase>,
    /// Store the key unprotected (anyone with the files can read them). Must be explicit.
    #[serde(default)]
    pub no_passphrase: bool,
}

/// What `profile.erase` must be given as `confirm`: erasing is irreversible, and never the
/// result of a slip.
pub const ERASE_CONFIRMATION: &str = "ERASE";

/// Parameters of `profile.erase`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileErase {
    /// Exactly [`ERASE_CONFIRMATION`].
    pub confirm: String,
}

/// Result of `profile.erase`: what was done, file by file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileErased {
    /// Overwritten with random bytes, flushed, then removed (the key file: without it nothing
    /// left anywhere can be decrypted).
    pub shredded: Vec<String>,
    /// Removed (the database and its WAL, Tor's state and cache).
    pub removed: Vec<String>,
}

/// Parameters of `profile.unlock`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileUnlock {
    /// The profile's passphrase (empty for an unprotected profile).
    pub passphrase: Passphrase,
}

/// Parameters of `profile.change_passphrase`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileChangePassphrase {
    /// The current passphrase (empty if unprotected).
    pub old: Passphrase,
    /// The new passphrase; absent together with `no_passphrase` to remove protection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Passphrase>,
    /// Remove protection explicitly.
    #[serde(default)]
    pub no_passphrase: bool,
}

/// Result of `identity.get`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// `xxx.onion`: give this to people so they can add you.
    pub address: String,
    /// The `carom:` URI form (what a QR code carries).
    pub uri: String,
}

/// Result of `tor.status`, and the data of `tor.status` events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TorStatus {
    /// Bootstrap progress, 0–100.
    pub bootstrap_percent: u8,
    /// What Tor is doing, for people.
    pub bootstrap_phase: String,
    /// Whether Tor can carry traffic.
    pub ready: bool,
    /// Our onion service.
    pub service: ServiceStatus,
    /// The last problem, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The bootstrap has made no progress for a while; `last_error` says what Tor is stuck
    /// on and what to do (bridges, `tor.set_bridges`).
    #[serde(default)]
    pub bootstrap_stalled: bool,
    /// How many bridges Tor is entered through; 0: the network's own relays.
    #[serde(default)]
    pub bridges: u32,
}

/// Result of `tor.bridges` and `tor.set_bridges`: the bridges Tor is entered through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TorBridges {
    /// The bridge lines; empty: none, Tor is entered through the network's own relays.
    pub lines: Vec<String>,
    /// Where the lines come from.
    pub source: BridgeSource,
    /// Lines (1-based) that take effect only when the daemon next starts: they give a bridge
    /// Tor already uses another channel (a corrected `cert=`, a new port), which the embedded
    /// Tor takes only at start. Only in the result of `tor.set_bridges`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub at_next_start: Vec<u32>,
}

/// Where the bridge lines in force come from (in [`TorBridges`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BridgeSource {
    /// Set through `tor.set_bridges` and kept in the profile (it wins over the file).
    Profile,
    /// `bridges` in the `[tor]` section of caromd.toml.
    Config,
    /// Neither: no bridges.
    None,
    /// A source newer than this client knows.
    #[serde(other)]
    Unknown,
}

/// Parameters of `tor.set_bridges`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TorSetBridges {
    /// The bridge lines to use from now on, as bridges.torproject.org gives them (a leading
    /// `Bridge` is allowed); `[]`: none. `null`: forget the profile's lines and use
    /// caromd.toml's again.
    pub lines: Option<Vec<String>>,
}

/// Where our onion service stands (in [`TorStatus`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    /// Not launched yet (Tor is bootstrapping).
    NotStarted,
    /// Establishing introduction points and publishing its descriptor.
    Launching,
    /// Its descriptor is published: contacts can reach us.
    Published,
    /// Published, and a contact reached us through it.
    Reachable,
    /// Running with problems (too few introduction points, a failed upload); Tor may still
    /// get contacts through.
    Degraded,
    /// It failed; see `last_error`.
    Broken,
    /// Stopped (the daemon is shutting down).
    Stopped,
    /// A state newer than this client knows.
    #[serde(other)]
    Unknown,
}

impl ServiceStatus {
    /// Whether the service is published, perhaps with problems: what a frontend waits for
    /// before it tells the user to share their address.
    pub fn is_reachable(self) -> bool {
        matches!(
            self,
            ServiceStatus::Published | ServiceStatus::Reachable | ServiceStatus::Degraded
        )
    }

    /// The name on the wire, e.g. `published`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceStatus::NotStarted => "not_started",
            ServiceStatus::Launching => "launching",
            ServiceStatus::Published => "published",
            ServiceStatus::Reachable => "reachable",
            ServiceStatus::Degraded => "degraded",
            ServiceStatus::Broken => "broken",
            ServiceStatus::Stopped => "stopped",
            ServiceStatus::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ServiceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a contact stands with us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactState {
    /// We asked them; no answer yet.
    Requesting,
    /// They asked us; we have not answered.
    Pending,
    /// Both agreed: messages flow.
    Accepted,
    /// Declined (by us, or by them).
    Rejected,
    /// We block them: their connections are refused.
    Blocked,
    /// A state newer than this client knows.
    #[serde(other)]
    Unknown,
}

/// Whether someone says they are a person or a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PeerKind {
    /// A person.
    #[default]
    Human,
    /// A program.
    Bot,
}

/// A contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// Their onion address (verified by the protocol when they connected).
    pub address: String,
    /// Our name for them.
    pub nickname: String,
    /// The name they offered in their request, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered_nickname: Option<String>,
    /// Their greeting (when they asked) or ours (when we asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greeting: Option<String>,
    /// The relationship.
    pub state: ContactState,
    /// What they declared themselves to be.
    pub declared_kind: PeerKind,
    /// Whether a session with them is up now.
    pub online: bool,
    /// When we first heard of them (ms since the Unix epoch).
    pub created_at: u64,
    /// When a session with them was last up (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
    /// The conversation's disappearing-message timer in seconds (absent: off). Set by either
    /// end with `contact.set_timer`; both ends show the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<u32>,
    /// Whether the conversation's messages are written to the store (`false`: history off,
    /// they live in the daemon's memory only; see `contact.set_history`). Ours alone: the
    /// contact's daemon keeps its own copy as its own setting says.
    #[serde(default = "yes")]
    pub keep_history: bool,
}

pub(crate) fn yes() -> bool {
    true
}

/// Parameters of `contact.set_history`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactSetHistory {
    /// The contact's address.
    pub address: String,
    /// `false`: from now on the conversation's messages live in memory only, never written;
    /// `true`: they are stored again.
    pub keep_history: bool,
}

/// Longest disappearing-message timer, in seconds (four weeks).
pub const MAX_TIMER_SECS: u32 = 28 * 24 * 3600;

/// Parameters of `contact.set_timer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactSetTimer {
    /// The contact's address.
    pub address: String,
    /// The new timer in seconds, 1 to [`MAX_TIMER_SECS`]; absent or `null`: off.
    #[serde(default)]
    pub timer: Option<u32>,
}

/// Parameters of `contact.add`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactAdd {
    /// Their onion address (forgiving: `carom:` URIs and `.onion` accepted).
    pub address: String,
    /// Our name for them, and the name we offer ourselves is `offer_nickname`.
    #[serde(default)]
    pub nickname: String,
    /// The name we offer for ourselves in the request.
    #[serde(default)]
    pub offer_nickname: String,
    /// A short note shown to them with the request.
    #[serde(default)]
    pub greeting: String,
    /// What we declare ourselves to be.
    #[serde(default)]
    pub kind: PeerKind,
}

/// Parameters naming a contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressParams {
    /// The onion address.
    pub address: String,
}

/// What to do with a contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Accept their request (or re-accept a rejected contact).
    Accept,
    /// Decline their request; they are told.
    Reject,
    /// Refuse all their connections from now on; open sessions close at once.
    Block,
    /// Lift a block (the contact becomes `rejected`; they may ask again).
    Unblock,
}

/// Parameters of `contact.respond`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRespond {
    /// The contact.
    pub address: String,
    /// What to do.
    pub response: Response,
    /// When accepting: our name for them (default: the one they offered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
}

/// Result of `contact.clear_requests`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleared {
    /// How many requests were forgotten.
    pub cleared: u64,
}

/// Parameters of `contact.rename`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRename {
    /// The contact.
    pub address: String,
    /// The new local name.
    pub nickname: String,
}

/// Direction of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From them.
    In,
    /// From us.
    Out,
}

/// Delivery state of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Stored durably here, waiting to reach them.
    Queued,
    /// Handed to an open session with them (it may still be in transit).
    Sent,
    /// They acknowledged it after storing it durably.
    Delivered,
    /// It will not be delivered (see `failure`).
    Failed,
    /// (Incoming) stored here.
    Received,
    /// A state newer than this client knows.
    #[serde(other)]
    Unknown,
}

/// What a conversation item is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A chat message.
    #[default]
    Text,
    /// A change of the disappearing-message timer; `timer` is the new setting (absent: off).
    Timer,
    /// A message deleted for everyone: the body is gone, its place kept.
    Deleted,
    /// A kind newer than this client knows.
    #[serde(other)]
    Unknown,
}

/// A message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Local id: stable, increasing; the cursor for paging.
    pub id: i64,
    /// The protocol message id (hex), shared by both sides.
    pub msg_id: String,
    /// The other party's address.
    pub contact: String,
    /// In or out.
    pub direction: Direction,
    /// The text.
    pub body: String,
    /// The sender's timestamp (ms since the Unix epoch, sender's clock).
    pub sent_at: u64,
    /// When it was stored here (ms since the Unix epoch).
    pub stored_at: u64,
    /// Delivery state.
    pub status: MessageStatus,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The `msg_id` this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// A chat, a timer change, or a tombstone.
    #[serde(default)]
    pub kind: MessageKind,
    /// For a chat: the disappearing-message timer it was sent under (seconds). For a timer
    /// change: the new setting (absent: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<u32>,
    /// When the daemon erases it here (ms since the Unix epoch); absent: never by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// It lives in the daemon's memory only (its conversation had history off when it was
    /// sent or received): gone when the daemon stops, and its events are live only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory_only: bool,
}

/// Parameters of `message.send`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSend {
    /// The contact's address.
    pub to: String,
    /// The text (at most [`MAX_BODY_BYTES`] bytes).
    pub body: String,
    /// The `msg_id` this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Idempotency key chosen by the frontend: sending again with the same token returns the
    /// message already queued instead of a duplicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
}

/// Parameters of `message.list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageList {
    /// The contact's address.
    pub with: String,
    /// Only messages with `id` below this (for the next page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
    /// Page size (default 50, at most 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Result of `message.list`: newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePage {
    /// The page, newest first.
    pub messages: Vec<Message>,
    /// Pass as `before` for the next (older) page; absent at the beginning of history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<i64>,
}

/// Parameters naming a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageIdParams {
    /// The local message id.
    pub id: i64,
}

/// Parameters of `message.delete`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDelete {
    /// The local message id.
    pub id: i64,
    /// Also at the peer (only for a chat we sent): their daemon erases it and keeps a
    /// tombstone, and so do we. Otherwise it is deleted here only.
    #[serde(default)]
    pub for_everyone: bool,
}

/// Parameters of `events.subscribe`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsSubscribe {
    /// Replay every event after this sequence number first (0: from the oldest retained;
    /// absent: only new events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_seq: Option<u64>,
    /// Only these kinds (absent: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
}

/// Result of `events.subscribe`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// The newest sequence number at the time of subscribing.
    pub latest_seq: u64,
    /// The oldest retained sequence number, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_seq: Option<u64>,
}

pub mod event;
pub use event::{Event, EventData, LiveEvent};

/// An attached frontend (result element of `session.list`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendSession {
    /// Its id (as in the banner).
    pub id: u64,
    /// The name it gave with `session.hello`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Its process id, from the socket's peer credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Its process name (from `/proc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// When it connected (ms since the Unix epoch).
    pub connected_at: u64,
    /// Whether it is subscribed to events.
    pub subscribed: bool,
}

/// Parameters of `session.hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionHello {
    /// A short name for the frontend, e.g. `carom-cli/0.1`.
    pub client: String,
}

/// Stable, machine-readable error kinds (in `error.data.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The line was not JSON (the connection is then closed).
    ParseError,
    /// Not a valid JSON-RPC 2.0 request.
    InvalidRequest,
    /// No such method.
    MethodNotFound,
    /// The parameters do not fit the method.
    InvalidParams,
    /// The line exceeded [`MAX_LINE_BYTES`] (the connection is then closed).
    LineTooLong,
    /// No profile exists yet: `profile.create`.
    NoProfile,
    /// A profile exists already.
    ProfileExists,
    /// The profile is locked: `profile.unlock`.
    Locked,
    /// The profile is unlocked already.
    AlreadyUnlocked,
    /// The passphrase is wrong.
    WrongPassphrase,
    /// A passphrase is required (or `no_passphrase` must be explicit).
    PassphraseRequired,
    /// No such contact or message.
    NotFound,
    /// It exists already.
    AlreadyExists,
    /// Not a valid onion address (see the message for which rule).
    InvalidAddress,
    /// The message or a field is too long.
    TooLarge,
    /// Not possible in the contact's current state (e.g. messaging a pending contact).
    InvalidState,
    /// Refused: too many requests.
    RateLimited,
    /// Refused: [`MAX_CONNECTIONS`] frontends are connected already (the connection is then
    /// closed).
    TooManyConnections,
    /// The disk is full: nothing was stored.
    DiskFull,
    /// The profile's files are corrupt or unreadable (see the message for which file).
    Corrupt,
    /// Reading or writing the profile failed.
    Storage,
    /// The daemon is shutting down.
    ShuttingDown,
    /// A bug or an unexpected failure; details are in the daemon's log.
    Internal,
    /// A kind newer than this client knows.
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    /// The JSON-RPC error code: the standard codes for protocol errors, -32000… for ours.
    pub fn code(self) -> i64 {
        match self {
            ErrorKind::ParseError => -32700,
            ErrorKind::InvalidRequest | ErrorKind::LineTooLong => -32600,
            ErrorKind::MethodNotFound => -32601,
            ErrorKind::InvalidParams => -32602,
            ErrorKind::Internal => -32603,
            _ => -32000,
        }
    }
}

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// JSON-RPC code.
    pub code: i64,
    /// For people; never internals.
    pub message: String,
    /// `{ "kind": … }`.
    pub data: ErrorData,
}

/// The `data` member of our errors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorData {
    /// The stable kind.
    pub kind: ErrorKind,
}

impl ErrorObject {
    /// An error of `kind` with a message for people.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ErrorObject {
        ErrorObject {
            code: kind.code(),
            message: message.into(),
            data: ErrorData { kind },
        }
    }
}

impl std::fmt::Display for ErrorObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ErrorObject {}

/// Build a response line's value.
pub fn response(id: &Value, result: Value) -> Value {
    serde_json::json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

/// Build an error response line's value (`id` is `null` when it could not be read).
pub fn error_response(id: Option<&Value>, error: &ErrorObject) -> Value {
    serde_json::json!({ "jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": error })
}

/// Build a notification line's value.
pub fn notification(method: &str, params: Value) -> Value {
    serde_json::json!({ "jsonrpc": "2.0", "method": method, "params": params })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_have_stable_names_and_codes() {
        let e = ErrorObject::new(ErrorKind::WrongPassphrase, "wrong passphrase");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["data"]["kind"], "wrong_passphrase");
        assert_eq!(v["code"], -32000);
        assert_eq!(ErrorKind::MethodNotFound.code(), -32601);
        // A kind from a newer daemon is tolerated.
        let future: ErrorKind = serde_json::from_value("quantum_flux".into()).unwrap();
        assert_eq!(future, ErrorKind::Unknown);
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let c: Contact = serde_json::from_value(serde_json::json!({
            "address": "x.onion", "nickname": "x", "state": "accepted",
            "declared_kind": "human", "online": true, "created_at": 1, "hologram": true
        }))
        .unwrap();
        assert_eq!(c.state, ContactState::Accepted);
    }
}
