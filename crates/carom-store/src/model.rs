//! The records the store keeps, as plain Rust values.
//!
//! Identities are ed25519 onion public keys (`[u8; 32]`), protocol message ids are `[u8; 16]`,
//! and times are [`UnixMillis`] supplied by the caller: the store never reads the clock.

use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use zeroize::Zeroizing;

use crate::err::Error;

/// Milliseconds since the Unix epoch, as passed in by the caller.
pub type UnixMillis = u64;

/// Declares a field-less enum stored as a stable lowercase string.
macro_rules! stored_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable lowercase form, as stored and as shown in the API.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(Error::Invalid {
                        what: $what,
                        reason: format!("unknown value {s:?}"),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::Borrowed(ValueRef::Text(self.as_str().as_bytes())))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e: Error| FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

stored_enum! {
    /// Where a contact relationship stands.
    ContactState, "contact state" {
        /// We sent a contact request and await the answer.
        Requesting => "requesting",
        /// They sent us a contact request; the local user has not answered.
        Pending => "pending",
        /// Both sides accepted; messages flow.
        Accepted => "accepted",
        /// The request was declined.
        Rejected => "rejected",
        /// The local user blocked them.
        Blocked => "blocked",
        /// Not a contact: someone we share a group with. The row carries what sessions for
        /// that group's traffic need (its outbox, their device key); frontends never list it
        /// as a contact, and no 1:1 chat goes either way.
        CoMember => "co_member",
    }
}

stored_enum! {
    /// What a peer says it is.
    PeerKind, "peer kind" {
        /// A person.
        Human => "human",
        /// An automated program.
        Bot => "bot",
    }
}

stored_enum! {
    /// Which way a message went.
    Direction, "direction" {
        /// From the contact to us.
        Incoming => "incoming",
        /// From us to the contact.
        Outgoing => "outgoing",
    }
}

stored_enum! {
    /// Delivery state of a message.
    MessageStatus, "message status" {
        /// Outgoing, committed, not yet sent.
        Queued => "queued",
        /// Outgoing, written to the peer, not yet acknowledged.
        Sent => "sent",
        /// Outgoing, acknowledged by the peer (who committed it).
        Delivered => "delivered",
        /// Outgoing, given up on.
        Failed => "failed",
        /// Incoming, committed here.
        Received => "received",
    }
}

stored_enum! {
    /// What an outbox item carries.
    OutboxKind, "outbox kind" {
        /// A chat message (the item points at its message row).
        Chat => "chat",
        /// Our contact request.
        ContactRequest => "contact_request",
        /// Our answer to their contact request.
        ContactResponse => "contact_response",
        /// Group operations for a member or an invitee (protocol §15.4).
        GroupOperations => "group_operations",
        /// A group message (the item points at its group message row).
        GroupChat => "group_chat",
        /// A delete for everyone of a chat we sent (protocol §7.1); no message row: the
        /// message it withdraws is a tombstone by now.
        Withdraw => "withdraw",
    }
}

stored_enum! {
    /// What a row of a conversation is.
    MessageKind, "message kind" {
        /// A chat message.
        Text => "text",
        /// A change of the conversation's disappearing-message timer (its `timer` is the new
        /// setting; `None` for off).
        Timer => "timer",
        /// A message deleted for everyone: its body is erased, its place kept.
        Deleted => "deleted",
    }
}

stored_enum! {
    /// Where this profile stands in a group.
    GroupState, "group state" {
        /// Someone invited us; we have not answered.
        Invited => "invited",
        /// We are a member (we created it, or accepted an invitation).
        Member => "member",
        /// We declined the invitation.
        Declined => "declined",
        /// We left, or were removed.
        Left => "left",
    }
}

stored_enum! {
    /// How far an outgoing group message got to one recipient.
    DeliveryStatus, "delivery status" {
        /// Not yet acknowledged by the recipient.
        Queued => "queued",
        /// The recipient's daemon acknowledged it: stored durably.
        Delivered => "delivered",
        /// It will not be delivered (refused, or expired).
        Failed => "failed",
    }
}

impl MessageStatus {
    /// Whether a message going `direction` may have this status.
    pub fn fits(self, direction: Direction) -> bool {
        match direction {
            Direction::Incoming => self == MessageStatus::Received,
            Direction::Outgoing => self != MessageStatus::Received,
        }
    }
}

/// This profile's long-term secrets.
///
/// Secrets are zeroised on drop and never shown by `Debug`.
pub struct IdentityRecord {
    /// The ed25519 seed of the onion identity.
    pub seed: Zeroizing<[u8; 32]>,
    /// The x25519 secret of this device's Noise static key.
    pub device_secret: Zeroizing<[u8; 32]>,
    /// The device-key certificate signed by the identity key.
    pub device_cert: Vec<u8>,
    /// When the identity was created.
    pub created_at: UnixMillis,
}

impl fmt::Debug for IdentityRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityRecord")
            .field("seed", &"<redacted>")
            .field("device_secret", &"<redacted>")
            .field(
                "device_cert",
                &format_args!("<{} bytes>", self.device_cert.len()),
            )
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A contact as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Local id; never reused.
    pub id: i64,
    /// Their identity (ed25519 onion public key).
    pub identity: [u8; 32],
    /// Where the relationship stands.
    pub state: ContactState,
    /// The local user's name for them.
    pub nickname: String,
    /// The name they offered for themselves.
    pub offered_nickname: Option<String>,
    /// The greeting that came with (or went with) the contact request.
    pub greeting: Option<String>,
    /// What they say they are.
    pub declared_kind: PeerKind,
    /// Their Noise static key, cached from a verified device certificate.
    pub peer_static: Option<[u8; 32]>,
    /// When that cached key's certificate expires (Unix seconds).
    pub peer_static_expires: Option<u64>,
    /// When the contact was added.
    pub created_at: UnixMillis,
    /// When the record last changed (set by the caller in [`crate::WriteTx::update_contact`]).
    pub updated_at: UnixMillis,
    /// When we last had a live session with them.
    pub last_seen: Option<UnixMillis>,
    /// The conversation's disappearing-message timer, in seconds (`None`: off). Read-only
    /// here: [`crate::WriteTx::update_contact`] leaves it alone; it changes only through
    /// [`crate::WriteTx::queue_timer_change`] and [`crate::WriteTx::store_timer_change`].
    pub timer: Option<u32>,
    /// Whether the conversation's messages are written to the store (`false`: history off,
    /// they live in the daemon's memory only). Read-only here: it changes only through
    /// [`crate::WriteTx::set_keep_history`].
    pub keep_history: bool,
}

/// A contact to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewContact {
    /// Their identity.
    pub identity: [u8; 32],
    /// Initial state.
    pub state: ContactState,
    /// The local user's name for them.
    pub nickname: String,
    /// The name they offered.
    pub offered_nickname: Option<String>,
    /// The request's greeting.
    pub greeting: Option<String>,
    /// What they say they are.
    pub declared_kind: PeerKind,
    /// Now; becomes `created_at` and `updated_at`.
    pub now: UnixMillis,
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Local id: increasing in storage order, never reused; the history paging cursor.
    pub row: i64,
    /// The contact the conversation is with.
    pub contact_id: i64,
    /// Which way it went.
    pub direction: Direction,
    /// The protocol message id, chosen by the sender.
    pub msg_id: [u8; 16],
    /// The sender's timestamp.
    pub sent_at: UnixMillis,
    /// When it was committed here.
    pub stored_at: UnixMillis,
    /// The text.
    pub body: String,
    /// The message this one replies to.
    pub reply_to: Option<[u8; 16]>,
    /// Delivery state.
    pub status: MessageStatus,
    /// Why delivery failed, when it did.
    pub failure: Option<String>,
    /// The API caller's idempotency token (outgoing only).
    pub client_token: Option<String>,
    /// When `status` last changed.
    pub status_at: UnixMillis,
    /// A chat, a timer change or a tombstone.
    pub kind: MessageKind,
    /// For a chat: the disappearing-message timer it was sent under (seconds). For a timer
    /// change: the new setting (`None`: off).
    pub timer: Option<u32>,
    /// When the daemon erases it (ms since the Unix epoch); `None`: never by itself.
    pub expires_at: Option<UnixMillis>,
}

/// An outgoing message to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutgoing {
    /// The recipient.
    pub contact_id: i64,
    /// The protocol message id.
    pub msg_id: [u8; 16],
    /// Our timestamp, as sent.
    pub sent_at: UnixMillis,
    /// The text.
    pub body: String,
    /// The message this replies to.
    pub reply_to: Option<[u8; 16]>,
    /// The API caller's idempotency token: queueing again with the same token for the same
    /// contact returns the first message and stores nothing.
    pub client_token: Option<String>,
    /// The encoded wire message for the outbox; opaque to the store.
    pub payload: Vec<u8>,
    /// Now: `stored_at`, `status_at` and the outbox item's first due time.
    pub now: UnixMillis,
    /// The disappearing-message timer it is sent under (seconds): erased this long after
    /// `expires_from`.
    pub expires_after: Option<u32>,
    /// The time the timer runs from, on the caller's erasure clock (`None`: `now`). The
    /// store compares expiry times only with the times erasure is asked to run up to, so
    /// both must be read from the same clock.
    pub expires_from: Option<UnixMillis>,
}

/// An incoming message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIncoming {
    /// The sender.
    pub contact_id: i64,
    /// The sender's message id.
    pub msg_id: [u8; 16],
    /// The sender's timestamp.
    pub sent_at: UnixMillis,
    /// The text.
    pub body: String,
    /// The message this replies to.
    pub reply_to: Option<[u8; 16]>,
    /// Now: `stored_at` and `status_at`.
    pub now: UnixMillis,
    /// The disappearing-message timer it was sent under (seconds): erased this long after
    /// `expires_from`.
    pub expires_after: Option<u32>,
    /// The time the timer runs from, on the caller's erasure clock (`None`: `now`).
    pub expires_from: Option<UnixMillis>,
}

/// When a message stored at `from` under `timer` (seconds) is erased.
pub(crate) fn expiry(from: UnixMillis, timer: Option<u32>) -> Option<UnixMillis> {
    timer.map(|seconds| from.saturating_add(u64::from(seconds) * 1000))
}

impl NewOutgoing {
    /// When it is erased, if it has a timer.
    pub fn expires_at(&self) -> Option<UnixMillis> {
        expiry(self.expires_from.unwrap_or(self.now), self.expires_after)
    }

    /// The message it becomes once queued with local id `row`: queued, a chat.
    pub fn message(&self, row: i64) -> Message {
        Message {
            row,
            contact_id: self.contact_id,
            direction: Direction::Outgoing,
            msg_id: self.msg_id,
            sent_at: self.sent_at,
            stored_at: self.now,
            body: self.body.clone(),
            reply_to: self.reply_to,
            status: MessageStatus::Queued,
            failure: None,
            client_token: self.client_token.clone(),
            status_at: self.now,
            kind: MessageKind::Text,
            timer: self.expires_after,
            expires_at: self.expires_at(),
        }
    }
}

impl NewIncoming {
    /// When it is erased, if it has a timer.
    pub fn expires_at(&self) -> Option<UnixMillis> {
        expiry(self.expires_from.unwrap_or(self.now), self.expires_after)
    }

    /// The message it becomes once kept with local id `row`: received, a chat.
    pub fn message(&self, row: i64) -> Message {
        Message {
            row,
            contact_id: self.contact_id,
            direction: Direction::Incoming,
            msg_id: self.msg_id,
            sent_at: self.sent_at,
            stored_at: self.now,
            body: self.body.clone(),
            reply_to: self.reply_to,
            status: MessageStatus::Received,
            failure: None,
            client_token: None,
            status_at: self.now,
            kind: MessageKind::Text,
            timer: self.expires_after,
            expires_at: self.expires_at(),
        }
    }
}

/// What [`crate::WriteTx::queue_outgoing`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queued {
    /// The message was stored and queued.
    New(Message),
    /// A message with the same client token was already queued; nothing was stored.
    Existing(Message),
}

impl Queued {
    /// The message, new or existing.
    pub fn message(&self) -> &Message {
        match self {
            Queued::New(m) | Queued::Existing(m) => m,
        }
    }

    /// The message, new or existing.
    pub fn into_message(self) -> Message {
        match self {
            Queued::New(m) | Queued::Existing(m) => m,
        }
    }

    /// Whether this call stored the message.
    pub fn is_new(&self) -> bool {
        matches!(self, Queued::New(_))
    }
}

/// What [`crate::WriteTx::store_incoming`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The message was stored.
    New(Message),
    /// The same message (same sender and id) was stored before; this is the stored copy,
    /// and nothing was written. Acknowledge it again.
    Duplicate(Message),
}

impl Received {
    /// The stored message.
    pub fn message(&self) -> &Message {
        match self {
            Received::New(m) | Received::Duplicate(m) => m,
        }
    }

    /// The stored message.
    pub fn into_message(self) -> Message {
        match self {
            Received::New(m) | Received::Duplicate(m) => m,
        }
    }

    /// Whether this call stored the message.
    pub fn is_new(&self) -> bool {
        matches!(self, Received::New(_))
    }
}

/// Something waiting to be sent to a contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Local id; increasing in enqueue order, never reused. Send order is id order.
    pub id: i64,
    /// The recipient.
    pub contact_id: i64,
    /// What it is.
    pub kind: OutboxKind,
    /// The message it carries, for [`OutboxKind::Chat`].
    pub message_row: Option<i64>,
    /// The group message it carries, for [`OutboxKind::GroupChat`].
    pub group_message_row: Option<i64>,
    /// The encoded wire message; opaque to the store.
    pub payload: Vec<u8>,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When to try next.
    pub next_attempt_at: UnixMillis,
    /// When it was enqueued.
    pub created_at: UnixMillis,
}

/// One entry of the API's durable event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Sequence number: strictly increasing, never reused, even after pruning.
    pub seq: u64,
    /// When it happened.
    pub at: UnixMillis,
    /// The event's kind, e.g. `message.received`.
    pub kind: String,
    /// The event's data as JSON text.
    pub data: String,
}

/// What [`WriteTx::forget_contact`](crate::WriteTx::forget_contact) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forgotten {
    /// The row is gone, with everything that referred to it.
    Deleted,
    /// Group traffic still waits for them: the row stays, as a co-member's.
    KeptAsCoMember(Box<Contact>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_forms_round_trip_and_are_stable() {
        for s in ContactState::ALL {
            assert_eq!(s.as_str().parse::<ContactState>().unwrap(), *s);
        }
        for k in PeerKind::ALL {
            assert_eq!(k.as_str().parse::<PeerKind>().unwrap(), *k);
        }
        for d in Direction::ALL {
            assert_eq!(d.as_str().parse::<Direction>().unwrap(), *d);
        }
        for s in MessageStatus::ALL {
            assert_eq!(s.as_str().parse::<MessageStatus>().unwrap(), *s);
        }
        for k in OutboxKind::ALL {
            assert_eq!(k.as_str().parse::<OutboxKind>().unwrap(), *k);
        }
        let states: Vec<_> = ContactState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            states,
            [
                "requesting",
                "pending",
                "accepted",
                "rejected",
                "blocked",
                "co_member"
            ]
        );
        let statuses: Vec<_> = MessageStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            statuses,
            ["queued", "sent", "delivered", "failed", "received"]
        );
        let kinds: Vec<_> = OutboxKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "chat",
                "contact_request",
                "contact_response",
                "group_operations",
                "group_chat",
                "withdraw"
            ]
        );
        let kinds: Vec<_> = MessageKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(kinds, ["text", "timer", "deleted"]);
        let states: Vec<_> = GroupState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(states, ["invited", "member", "declined", "left"]);
        let deliveries: Vec<_> = DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(deliveries, ["queued", "delivered", "failed"]);
        assert_eq!(PeerKind::Bot.to_string(), "bot");
        assert_eq!(Direction::Incoming.to_string(), "incoming");
    }

    #[test]
    fn unknown_strings_are_refused() {
        let error = "Accepted".parse::<ContactState>().unwrap_err();
        assert_eq!(error.kind(), crate::ErrorKind::Invalid);
        assert!("".parse::<Direction>().is_err());
        assert!("chat ".parse::<OutboxKind>().is_err());
    }

    #[test]
    fn statuses_fit_directions() {
        assert!(MessageStatus::Received.fits(Direction::Incoming));
        assert!(!MessageStatus::Received.fits(Direction::Outgoing));
        assert!(!MessageStatus::Delivered.fits(Direction::Incoming));
        assert!(MessageStatus::Queued.fits(Direction::Outgoing));
    }

    #[test]
    fn identity_debug_hides_secrets() {
        let record = IdentityRecord {
            seed: Zeroizing::new([0xAB; 32]),
            device_secret: Zeroizing::new([0xCD; 32]),
            device_cert: vec![1, 2, 3],
            created_at: 5,
        };
        let shown = format!("{record:?}");
        assert!(!shown.contains("171"), "{shown}"); // 0xAB
        assert!(!shown.to_lowercase().contains("ab, "), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
