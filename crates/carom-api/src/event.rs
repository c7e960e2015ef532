//! Events: what happened, in the daemon's durable, sequenced log.
//!
//! On the wire an event is `{"seq","at","kind","data"}` (the params of the
//! [`crate::method::EVENT`] notification). Here it is an [`Event`] whose [`EventData`] is one
//! typed variant per kind, so the daemon cannot write a field that frontends do not read. A
//! kind this crate does not know — from a newer daemon — or data that does not fit its kind
//! is kept as [`EventData::Unknown`], never an error: frontends must tolerate both.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ContactState, MessageStatus, PeerKind, TorStatus};

/// Tor bootstrap or onion-service state changed: data is a [`crate::TorStatus`].
pub const TOR_STATUS: &str = "tor.status";
/// Someone asked to become a contact: [`RequestReceived`].
pub const CONTACT_REQUEST_RECEIVED: &str = "contact.request_received";
/// A contact's state changed: [`StateChanged`].
pub const CONTACT_STATE: &str = "contact.state";
/// Our request reached their daemon: [`ContactRef`].
pub const CONTACT_REQUEST_DELIVERED: &str = "contact.request_delivered";
/// A session came up or went down: [`Presence`].
pub const CONTACT_PRESENCE: &str = "contact.presence";
/// Our dials to a contact are refused (by the contact's daemon or its onion service), or fail
/// for a reason on our side that retrying will not fix: [`Unreachable`]. Said once; the daemon
/// then retries only at its longest interval (a new message still dials at once).
pub const CONTACT_UNREACHABLE: &str = "contact.unreachable";
/// A message arrived: [`MessageRef`] (fetch it with `message.get`).
pub const MESSAGE_RECEIVED: &str = "message.received";
/// A message's delivery state changed: [`StatusChanged`].
pub const MESSAGE_STATUS: &str = "message.status";
/// A conversation's disappearing-message timer changed (by either end): [`TimerChanged`].
/// The change is also a conversation item (kind `timer`), announced by [`MESSAGE_RECEIVED`] or
/// [`MESSAGE_STATUS`] like any message.
pub const CONTACT_TIMER: &str = "contact.timer";
/// We turned a conversation's history off or on again: [`HistoryChanged`].
pub const CONTACT_HISTORY: &str = "contact.history";
/// Live events were lost to a subscriber too slow to take them: [`LiveMissed`]. Sent live
/// itself, in their place (they cannot be replayed: they were never stored).
pub const LIVE_MISSED: &str = "events.live_missed";
/// A message was deleted for everyone (by us or by its sender), or here only: [`Deleted`].
/// For everyone, its row stays as a tombstone (kind `deleted`, body empty).
pub const MESSAGE_DELETED: &str = "message.deleted";
/// Messages reached the end of their disappearing-message timer and were erased:
/// [`Expired`]. Their rows are gone.
pub const MESSAGE_EXPIRED: &str = "message.expired";
/// We were invited to a group: [`GroupInvited`] (see it with `group.get`).
pub const GROUP_INVITED: &str = "group.invited";
/// A group's membership, name, policy or our standing in it changed: [`GroupRef`].
pub const GROUP_CHANGED: &str = "group.changed";
/// A group message arrived: [`GroupMessageRef`] (fetch it with `group.history`).
pub const GROUP_MESSAGE: &str = "group.message";
/// An outgoing group message reached (or will not reach) one recipient: [`GroupDelivered`].
pub const GROUP_DELIVERY: &str = "group.delivery";
/// Group messages reached the end of their group's disappearing-message timer and were
/// erased here: [`GroupExpired`].
pub const GROUP_EXPIRED: &str = "group.expired";
/// A group message was deleted for everyone (by us or by its sender), or here only:
/// [`GroupDeleted`]. For everyone, its row stays as a tombstone (kind `deleted`, body empty).
pub const GROUP_DELETED: &str = "group.deleted";
/// A frontend attached: [`Attached`].
pub const FRONTEND_ATTACHED: &str = "frontend.attached";
/// A frontend detached: [`Detached`].
pub const FRONTEND_DETACHED: &str = "frontend.detached";
/// Kinds that frontends cause by connecting: retained apart (the newest
/// [`CHURN_RETENTION`]), so a frontend that reconnects often cannot push message events out
/// of retention, and pruned without an [`GAP`] (`session.list` shows the present).
pub const CHURN: &[&str] = &[FRONTEND_ATTACHED, FRONTEND_DETACHED];
/// How many [`CHURN`] events are kept.
pub const CHURN_RETENTION: u64 = 1_000;
/// Events were pruned before the subscriber caught up: [`Gap`]. Not stored; sent in place of
/// the missing events.
pub const GAP: &str = "events.gap";

/// One event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Strictly increasing; never reused.
    pub seq: u64,
    /// When it happened (ms since the Unix epoch).
    pub at: u64,
    /// What happened.
    pub data: EventData,
}

impl Event {
    /// The event's kind, e.g. [`MESSAGE_RECEIVED`].
    pub fn kind(&self) -> &str {
        self.data.kind()
    }
}

/// What happened, by kind.
#[derive(Clone, Debug, PartialEq)]
pub enum EventData {
    /// [`TOR_STATUS`].
    TorStatus(TorStatus),
    /// [`CONTACT_REQUEST_RECEIVED`].
    RequestReceived(RequestReceived),
    /// [`CONTACT_REQUEST_DELIVERED`].
    RequestDelivered(ContactRef),
    /// [`CONTACT_STATE`].
    StateChanged(StateChanged),
    /// [`CONTACT_PRESENCE`].
    Presence(Presence),
    /// [`CONTACT_UNREACHABLE`].
    Unreachable(Unreachable),
    /// [`MESSAGE_RECEIVED`].
    MessageReceived(MessageRef),
    /// [`MESSAGE_STATUS`].
    MessageStatus(StatusChanged),
    /// [`CONTACT_TIMER`].
    TimerChanged(TimerChanged),
    /// [`CONTACT_HISTORY`].
    HistoryChanged(HistoryChanged),
    /// [`LIVE_MISSED`].
    LiveMissed(LiveMissed),
    /// [`MESSAGE_DELETED`].
    Deleted(Deleted),
    /// [`MESSAGE_EXPIRED`].
    Expired(Expired),
    /// [`GROUP_INVITED`].
    GroupInvited(GroupInvited),
    /// [`GROUP_CHANGED`].
    GroupChanged(GroupRef),
    /// [`GROUP_MESSAGE`].
    GroupMessage(GroupMessageRef),
    /// [`GROUP_DELIVERY`].
    GroupDelivery(GroupDelivered),
    /// [`GROUP_EXPIRED`].
    GroupExpired(GroupExpired),
    /// [`GROUP_DELETED`].
    GroupDeleted(GroupDeleted),
    /// [`FRONTEND_ATTACHED`].
    Attached(Attached),
    /// [`FRONTEND_DETACHED`].
    Detached(Detached),
    /// [`GAP`].
    Gap(Gap),
    /// A kind this crate does not know, or data that does not fit its kind.
    Unknown {
        /// The kind as sent.
        kind: String,
        /// The data as sent.
        data: Value,
    },
}

/// Data of [`CONTACT_REQUEST_RECEIVED`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestReceived {
    /// Who asked (verified by the handshake).
    pub address: String,
    /// The name they offered.
    pub nickname: String,
    /// Their greeting.
    pub greeting: String,
    /// What they declared themselves to be.
    pub kind: PeerKind,
}

/// Data naming a contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRef {
    /// Their address.
    pub address: String,
}

/// A contact's state as events report it: a [`ContactState`], or gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactStateChange {
    /// See [`ContactState::Requesting`].
    Requesting,
    /// See [`ContactState::Pending`].
    Pending,
    /// See [`ContactState::Accepted`].
    Accepted,
    /// See [`ContactState::Rejected`].
    Rejected,
    /// See [`ContactState::Blocked`].
    Blocked,
    /// The contact and its history are gone.
    Removed,
    /// A state newer than this client knows.
    #[serde(other)]
    Unknown,
}

impl From<ContactState> for ContactStateChange {
    fn from(state: ContactState) -> ContactStateChange {
        match state {
            ContactState::Requesting => ContactStateChange::Requesting,
            ContactState::Pending => ContactStateChange::Pending,
            ContactState::Accepted => ContactStateChange::Accepted,
            ContactState::Rejected => ContactStateChange::Rejected,
            ContactState::Blocked => ContactStateChange::Blocked,
            ContactState::Unknown => ContactStateChange::Unknown,
        }
    }
}

/// Who made a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum By {
    /// We did (through a frontend, or the daemon on our behalf).
    Us,
    /// The contact did.
    Them,
    /// Someone newer than this client knows.
    #[serde(other)]
    Unknown,
}

/// Why a contact was removed without the user naming it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemovalReason {
    /// `contact.clear_requests` forgot it.
    Cleared,
    /// The pending list was full: the oldest request made room for a newer one.
    TooManyRequests,
    /// A reason newer than this client knows.
    #[serde(other)]
    Unknown,
}

/// Data of [`CONTACT_STATE`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChanged {
    /// The contact.
    pub address: String,
    /// Its new state.
    pub state: ContactStateChange,
    /// Who changed it.
    pub by: By,
    /// For `removed` that the user did not ask for: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RemovalReason>,
}

/// Data of [`CONTACT_PRESENCE`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The contact.
    pub address: String,
    /// Whether a session with them is up now.
    pub online: bool,
}

/// Data of [`CONTACT_UNREACHABLE`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreachable {
    /// The contact.
    pub address: String,
    /// What Tor said, for people.
    pub reason: String,
}

/// Data of [`MESSAGE_RECEIVED`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    /// The local message id (for `message.get`).
    pub id: i64,
    /// The contact's address.
    pub contact: String,
    /// The protocol message id (hex).
    pub msg_id: String,
}

/// Data of [`MESSAGE_STATUS`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChanged {
    /// The local message id.
    pub id: i64,
    /// The contact's address.
    pub contact: String,
    /// The protocol message id (hex).
    pub msg_id: String,
    /// The new delivery state.
    pub status: MessageStatus,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// Data of [`GROUP_INVITED`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInvited {
    /// The group's id.
    pub group: String,
    /// Its name.
    pub name: String,
    /// Who invited us.
    pub inviter: String,
}

/// Data naming a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRef {
    /// The group's id.
    pub group: String,
}

/// Data of [`GROUP_MESSAGE`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMessageRef {
    /// The group's id.
    pub group: String,
    /// The local message id.
    pub id: i64,
    /// Who sent it.
    pub sender: String,
    /// The protocol message id (hex).
    pub msg_id: String,
}

/// Data of [`GROUP_DELIVERY`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDelivered {
    /// The group's id.
    pub group: String,
    /// The local message id.
    pub id: i64,
    /// The recipient.
    pub recipient: String,
    /// How far it got to them.
    pub status: crate::group::DeliveryStatus,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// Data of [`GROUP_EXPIRED`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupExpired {
    /// The group's id.
    pub group: String,
    /// The erased messages' local ids.
    pub ids: Vec<i64>,
}

/// Data of [`GROUP_DELETED`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDeleted {
    /// The group's id.
    pub group: String,
    /// The local message id.
    pub id: i64,
    /// The protocol message id (hex).
    pub msg_id: String,
    /// For everyone (a tombstone stays), or here only (the row is gone).
    pub for_everyone: bool,
    /// Who deleted it.
    pub by: By,
}

/// Data of [`CONTACT_TIMER`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerChanged {
    /// The contact.
    pub address: String,
    /// The conversation's timer now, in seconds (absent: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<u32>,
    /// Who set it.
    pub by: By,
}

/// Data of [`CONTACT_HISTORY`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryChanged {
    /// The contact.
    pub address: String,
    /// Whether the conversation's messages are stored from now on.
    pub keep_history: bool,
}

/// Data of [`LIVE_MISSED`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveMissed {
    /// How many live events this subscriber did not get.
    pub count: u64,
}

/// Data of [`MESSAGE_DELETED`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// The message's local id.
    pub id: i64,
    /// The conversation.
    pub contact: String,
    /// Its protocol id (hex).
    pub msg_id: String,
    /// Deleted for everyone (a tombstone stays), or here only (the row is gone).
    pub for_everyone: bool,
    /// Who deleted it.
    pub by: By,
}

/// Data of [`MESSAGE_EXPIRED`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expired {
    /// The conversation.
    pub contact: String,
    /// The erased messages' local ids.
    pub ids: Vec<i64>,
}

/// Data of [`FRONTEND_ATTACHED`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    /// Its frontend-session id.
    pub session: u64,
    /// Its process id, if known.
    pub pid: Option<u32>,
    /// Its process name, if known.
    pub process: Option<String>,
}

/// Data of [`FRONTEND_DETACHED`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detached {
    /// Its frontend-session id.
    pub session: u64,
}

/// Data of [`GAP`]: these events (inclusive) were lost to this subscriber.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The first lost sequence number.
    pub from_seq: u64,
    /// The last lost sequence number.
    pub to_seq: u64,
}

impl EventData {
    /// The kind on the wire.
    pub fn kind(&self) -> &str {
        match self {
            EventData::TorStatus(_) => TOR_STATUS,
            EventData::RequestReceived(_) => CONTACT_REQUEST_RECEIVED,
            EventData::RequestDelivered(_) => CONTACT_REQUEST_DELIVERED,
            EventData::StateChanged(_) => CONTACT_STATE,
            EventData::Presence(_) => CONTACT_PRESENCE,
            EventData::Unreachable(_) => CONTACT_UNREACHABLE,
            EventData::MessageReceived(_) => MESSAGE_RECEIVED,
            EventData::MessageStatus(_) => MESSAGE_STATUS,
            EventData::TimerChanged(_) => CONTACT_TIMER,
            EventData::HistoryChanged(_) => CONTACT_HISTORY,
            EventData::LiveMissed(_) => LIVE_MISSED,
            EventData::Deleted(_) => MESSAGE_DELETED,
            EventData::Expired(_) => MESSAGE_EXPIRED,
            EventData::GroupInvited(_) => GROUP_INVITED,
            EventData::GroupChanged(_) => GROUP_CHANGED,
            EventData::GroupMessage(_) => GROUP_MESSAGE,
            EventData::GroupDelivery(_) => GROUP_DELIVERY,
            EventData::GroupExpired(_) => GROUP_EXPIRED,
            EventData::GroupDeleted(_) => GROUP_DELETED,
            EventData::Attached(_) => FRONTEND_ATTACHED,
            EventData::Detached(_) => FRONTEND_DETACHED,
            EventData::Gap(_) => GAP,
            EventData::Unknown { kind, .. } => kind,
        }
    }

    /// The data on the wire.
    pub fn to_value(&self) -> Value {
        fn value<T: Serialize>(data: &T) -> Value {
            // These types are plain structs of strings, numbers and enums: they always encode.
            serde_json::to_value(data).unwrap_or(Value::Null)
        }
        match self {
            EventData::TorStatus(d) => value(d),
            EventData::RequestReceived(d) => value(d),
            EventData::RequestDelivered(d) => value(d),
            EventData::StateChanged(d) => value(d),
            EventData::Presence(d) => value(d),
            EventData::Unreachable(d) => value(d),
            EventData::MessageReceived(d) => value(d),
            EventData::MessageStatus(d) => value(d),
            EventData::TimerChanged(d) => value(d),
            EventData::HistoryChanged(d) => value(d),
            EventData::LiveMissed(d) => value(d),
            EventData::Deleted(d) => value(d),
            EventData::Expired(d) => value(d),
            EventData::GroupInvited(d) => value(d),
            EventData::GroupChanged(d) => value(d),
            EventData::GroupMessage(d) => value(d),
            EventData::GroupDelivery(d) => value(d),
            EventData::GroupExpired(d) => value(d),
            EventData::GroupDeleted(d) => value(d),
            EventData::Attached(d) => value(d),
            EventData::Detached(d) => value(d),
            EventData::Gap(d) => value(d),
            EventData::Unknown { data, .. } => data.clone(),
        }
    }

    /// Reads the data of an event of `kind`; [`EventData::Unknown`] when the kind is unknown
    /// or the data does not fit it.
    pub fn from_parts(kind: &str, data: Value) -> EventData {
        fn typed<T: serde::de::DeserializeOwned>(
            data: &Value,
            wrap: fn(T) -> EventData,
        ) -> Option<EventData> {
            T::deserialize(data).ok().map(wrap)
        }
        let parsed = match kind {
            TOR_STATUS => typed(&data, EventData::TorStatus),
            CONTACT_REQUEST_RECEIVED => typed(&data, EventData::RequestReceived),
            CONTACT_REQUEST_DELIVERED => typed(&data, EventData::RequestDelivered),
            CONTACT_STATE => typed(&data, EventData::StateChanged),
            CONTACT_PRESENCE => typed(&data, EventData::Presence),
            CONTACT_UNREACHABLE => typed(&data, EventData::Unreachable),
            MESSAGE_RECEIVED => typed(&data, EventData::MessageReceived),
            MESSAGE_STATUS => typed(&data, EventData::MessageStatus),
            CONTACT_TIMER => typed(&data, EventData::TimerChanged),
            CONTACT_HISTORY => typed(&data, EventData::HistoryChanged),
            LIVE_MISSED => typed(&data, EventData::LiveMissed),
            MESSAGE_DELETED => typed(&data, EventData::Deleted),
            MESSAGE_EXPIRED => typed(&data, EventData::Expired),
            GROUP_INVITED => typed(&data, EventData::GroupInvited),
            GROUP_CHANGED => typed(&data, EventData::GroupChanged),
            GROUP_MESSAGE => typed(&data, EventData::GroupMessage),
            GROUP_DELIVERY => typed(&data, EventData::GroupDelivery),
            GROUP_EXPIRED => typed(&data, EventData::GroupExpired),
            GROUP_DELETED => typed(&data, EventData::GroupDeleted),
            FRONTEND_ATTACHED => typed(&data, EventData::Attached),
            FRONTEND_DETACHED => typed(&data, EventData::Detached),
            GAP => typed(&data, EventData::Gap),
            _ => None,
        };
        parsed.unwrap_or_else(|| EventData::Unknown {
            kind: kind.to_owned(),
            data,
        })
    }
}

/// An event that is never stored: about a conversation with history off (a message arrived,
/// changed state, was deleted or erased), so that not even its metadata reaches the disk. Sent
/// to subscribers as it happens, as the params of [`crate::method::LIVE_EVENT`]
/// (`{"at","kind","data"}`, no `seq`: it has no place in the log and is never replayed).
#[derive(Clone, Debug, PartialEq)]
pub struct LiveEvent {
    /// When it happened (ms since the Unix epoch).
    pub at: u64,
    /// What happened.
    pub data: EventData,
}

impl LiveEvent {
    /// The event's kind.
    pub fn kind(&self) -> &str {
        self.data.kind()
    }
}

#[derive(Serialize, Deserialize)]
struct WireLiveEvent {
    at: u64,
    kind: String,
    #[serde(default)]
    data: Value,
}

impl Serialize for LiveEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireLiveEvent {
            at: self.at,
            kind: self.kind().to_owned(),
            data: self.data.to_value(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for LiveEvent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireLiveEvent::deserialize(deserializer)?;
        Ok(LiveEvent {
            at: wire.at,
            data: EventData::from_parts(&wire.kind, wire.data),
        })
    }
}

/// The wire shape of an event.
#[derive(Serialize, Deserialize)]
struct WireEvent {
    seq: u64,
    at: u64,
    kind: String,
    #[serde(default)]
    data: Value,
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireEvent {
            seq: self.seq,
            at: self.at,
            kind: self.kind().to_owned(),
            data: self.data.to_value(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireEvent::deserialize(deserializer)?;
        Ok(Event {
            seq: wire.seq,
            at: wire.at,
            data: EventData::from_parts(&wire.kind, wire.data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(kind: &str, data: Value) -> Event {
        let wire = json!({ "seq": 7, "at": 9, "kind": kind, "data": data });
        let event: Event = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(serde_json::to_value(&event).unwrap(), wire, "{kind}");
        event
    }

    #[test]
    fn every_documented_kind_reads_into_its_type_and_writes_back_the_same_json() {
        let cases = [
            (
                TOR_STATUS,
                json!({"bootstrap_percent": 100, "bootstrap_phase": "done", "ready": true,
                       "service": "published", "bootstrap_stalled": false, "bridges": 1}),
            ),
            (
                CONTACT_REQUEST_RECEIVED,
                json!({"address": "a.onion", "nickname": "n", "greeting": "g", "kind": "bot"}),
            ),
            (CONTACT_REQUEST_DELIVERED, json!({"address": "a.onion"})),
            (
                CONTACT_STATE,
                json!({"address": "a.onion", "state": "removed", "by": "us", "reason": "cleared"}),
            ),
            (
                CONTACT_PRESENCE,
                json!({"address": "a.onion", "online": true}),
            ),
            (
                CONTACT_UNREACHABLE,
                json!({"address": "a.onion", "reason": "peer a… refused the connection"}),
            ),
            (
                MESSAGE_RECEIVED,
                json!({"id": 3, "contact": "a.onion", "msg_id": "00ff"}),
            ),
            (
                MESSAGE_STATUS,
                json!({"id": 3, "contact": "a.onion", "msg_id": "00ff", "status": "failed",
                       "failure": "rejected: too large"}),
            ),
            (
                CONTACT_TIMER,
                json!({"address": "a.onion", "timer": 86400, "by": "them"}),
            ),
            (CONTACT_TIMER, json!({"address": "a.onion", "by": "us"})),
            (
                CONTACT_HISTORY,
                json!({"address": "a.onion", "keep_history": false}),
            ),
            (LIVE_MISSED, json!({"count": 12})),
            (GROUP_EXPIRED, json!({"group": "00ff", "ids": [5]})),
            (
                GROUP_DELETED,
                json!({"group": "00ff", "id": 5, "msg_id": "00ff", "for_everyone": true,
                       "by": "them"}),
            ),
            (
                MESSAGE_DELETED,
                json!({"id": 3, "contact": "a.onion", "msg_id": "00ff", "for_everyone": true,
                       "by": "them"}),
            ),
            (
                MESSAGE_EXPIRED,
                json!({"contact": "a.onion", "ids": [3, 4]}),
            ),
            (
                FRONTEND_ATTACHED,
                json!({"session": 1, "pid": 42, "process": "carom"}),
            ),
            (FRONTEND_DETACHED, json!({"session": 1})),
            (GAP, json!({"from_seq": 1, "to_seq": 5})),
        ];
        for (kind, data) in cases {
            let event = round_trip(kind, data);
            assert!(
                !matches!(event.data, EventData::Unknown { .. }),
                "{kind} was not typed"
            );
            assert_eq!(event.kind(), kind);
        }
    }

    #[test]
    fn live_events_have_no_sequence_number() {
        let wire = json!({"at": 9, "kind": MESSAGE_RECEIVED,
                          "data": {"id": 4_503_599_627_370_496_i64, "contact": "a.onion",
                                   "msg_id": "00ff"}});
        let event: LiveEvent = serde_json::from_value(wire.clone()).unwrap();
        assert!(matches!(event.data, EventData::MessageReceived(_)));
        assert_eq!(serde_json::to_value(&event).unwrap(), wire);
    }

    #[test]
    fn unknown_kinds_values_and_shapes_are_tolerated() {
        let event = round_trip("group.created", json!({"id": "x"}));
        assert_eq!(event.kind(), "group.created");
        assert!(matches!(event.data, EventData::Unknown { .. }));
        // A known kind whose data does not fit is kept as it came, not refused.
        let event = round_trip(CONTACT_PRESENCE, json!({"address": 5}));
        assert!(matches!(event.data, EventData::Unknown { .. }));
        // Newer enum values inside a known kind read as `unknown`.
        let event: Event = serde_json::from_value(json!({"seq": 1, "at": 1,
            "kind": CONTACT_STATE,
            "data": {"address": "a", "state": "archived", "by": "robot", "reason": "moon"}}))
        .unwrap();
        let EventData::StateChanged(change) = event.data else {
            panic!("typed")
        };
        assert_eq!(
            (change.state, change.by, change.reason),
            (
                ContactStateChange::Unknown,
                By::Unknown,
                Some(RemovalReason::Unknown)
            )
        );
    }
}
