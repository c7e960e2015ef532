//! Conversions from stored records to the API's views, and helpers shared by the engine.

use std::time::{SystemTime, UNIX_EPOCH};

use carom_api::{self as api, EventData, event};
use carom_proto::OnionAddress;
use carom_store as store;

use crate::err::{EngineError, Result};

/// The monotonic clock, as the runtime keeps it: the real clock in a daemon, the virtual one
/// in a test that pauses time. Every timer of the engine reads this, never `Instant::now`.
pub(crate) fn monotonic() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

thread_local! {
    /// On a thread that runs engines in virtual time: the wall clock's reading and the
    /// monotonic clock's when the first of them started (see [`follow_the_virtual_clock`]).
    static VIRTUAL_WALL: std::cell::Cell<Option<(u64, std::time::Instant)>> =
        const { std::cell::Cell::new(None) };
}

/// From now on, on this thread, the wall clock moves with the runtime's (virtual) monotonic
/// clock: a test that lets a day pass in virtual time sees certificates expire and rejections
/// age by a day. Only `Engine::start_in_virtual_time` calls it, whose engines run wholly on
/// this thread.
pub(crate) fn follow_the_virtual_clock() {
    VIRTUAL_WALL.with(|wall| {
        if wall.get().is_none() {
            wall.set(Some((system_ms(), monotonic())));
        }
    });
}

/// On a thread that follows the virtual clock: set the wall clock `delta_ms` forward (or,
/// negative, back), as someone changing the system clock would; the monotonic clock does not
/// move. Does nothing on other threads.
pub(crate) fn shift_virtual_wall_clock(delta_ms: i64) {
    VIRTUAL_WALL.with(|wall| {
        if let Some((base_ms, base)) = wall.get() {
            wall.set(Some((base_ms.saturating_add_signed(delta_ms), base)));
        }
    });
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn unix_ms() -> u64 {
    match VIRTUAL_WALL.with(std::cell::Cell::get) {
        Some((base_ms, base)) => {
            let passed = monotonic().saturating_duration_since(base).as_millis();
            base_ms.saturating_add(u64::try_from(passed).unwrap_or(u64::MAX))
        }
        None => system_ms(),
    }
}

fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_secs() -> u64 {
    unix_ms() / 1000
}

/// The onion address of a stored identity.
pub(crate) fn address_of(identity: &[u8; 32]) -> Result<OnionAddress> {
    OnionAddress::from_public_key(identity)
        .map_err(|_| EngineError::Internal("a stored contact has an invalid key".into()))
}

pub(crate) fn contact_state(s: store::ContactState) -> api::ContactState {
    match s {
        store::ContactState::Requesting => api::ContactState::Requesting,
        store::ContactState::Pending => api::ContactState::Pending,
        store::ContactState::Accepted => api::ContactState::Accepted,
        store::ContactState::Rejected => api::ContactState::Rejected,
        store::ContactState::Blocked => api::ContactState::Blocked,
        // Never shown as a contact; named as the API names a state it does not know.
        store::ContactState::CoMember => api::ContactState::Unknown,
    }
}

pub(crate) fn peer_kind(k: store::PeerKind) -> api::PeerKind {
    match k {
        store::PeerKind::Human => api::PeerKind::Human,
        store::PeerKind::Bot => api::PeerKind::Bot,
    }
}

pub(crate) fn store_peer_kind(k: carom_proto::PeerKind) -> store::PeerKind {
    match k {
        carom_proto::PeerKind::Human => store::PeerKind::Human,
        carom_proto::PeerKind::Bot => store::PeerKind::Bot,
    }
}

pub(crate) fn contact(c: &store::Contact, online: bool) -> Result<api::Contact> {
    Ok(api::Contact {
        address: address_of(&c.identity)?.to_string(),
        nickname: c.nickname.clone(),
        offered_nickname: c.offered_nickname.clone(),
        greeting: c.greeting.clone(),
        state: contact_state(c.state),
        declared_kind: peer_kind(c.declared_kind),
        online,
        created_at: c.created_at,
        last_seen: c.last_seen,
        timer: c.timer,
        keep_history: c.keep_history,
    })
}

pub(crate) fn status(s: store::MessageStatus) -> api::MessageStatus {
    match s {
        store::MessageStatus::Queued => api::MessageStatus::Queued,
        store::MessageStatus::Sent => api::MessageStatus::Sent,
        store::MessageStatus::Delivered => api::MessageStatus::Delivered,
        store::MessageStatus::Failed => api::MessageStatus::Failed,
        store::MessageStatus::Received => api::MessageStatus::Received,
    }
}

pub(crate) fn message(m: &store::Message, contact: &OnionAddress) -> api::Message {
    api::Message {
        id: m.row,
        msg_id: hex::encode(m.msg_id),
        contact: contact.to_string(),
        direction: match m.direction {
            store::Direction::Incoming => api::Direction::In,
            store::Direction::Outgoing => api::Direction::Out,
        },
        body: m.body.clone(),
        sent_at: m.sent_at,
        stored_at: m.stored_at,
        status: status(m.status),
        failure: m.failure.clone(),
        reply_to: m.reply_to.map(hex::encode),
        kind: match m.kind {
            store::MessageKind::Text => api::MessageKind::Text,
            store::MessageKind::Timer => api::MessageKind::Timer,
            store::MessageKind::Deleted => api::MessageKind::Deleted,
        },
        timer: m.timer,
        expires_at: m.expires_at,
        memory_only: crate::memory::is_memory_row(m.row),
    }
}

/// The `message.status` event for a message's current status.
pub(crate) fn status_event(m: &store::Message, contact: &OnionAddress) -> EventData {
    EventData::MessageStatus(event::StatusChanged {
        id: m.row,
        contact: contact.to_string(),
        msg_id: hex::encode(m.msg_id),
        status: status(m.status),
        failure: m.failure.clone(),
    })
}

/// The `contact.state` event for a change of `contact`'s state.
pub(crate) fn state_event(
    contact: &OnionAddress,
    state: event::ContactStateChange,
    by: event::By,
    reason: Option<event::RemovalReason>,
) -> EventData {
    EventData::StateChanged(event::StateChanged {
        address: contact.to_string(),
        state,
        by,
        reason,
    })
}

/// Parse a 16-byte message id written in hex.
pub(crate) fn parse_msg_id(text: &str) -> Result<[u8; 16]> {
    let bytes = hex::decode(text.trim())
        .map_err(|_| EngineError::InvalidRequest("reply_to is not a hex message id".into()))?;
    bytes
        .try_into()
        .map_err(|_| EngineError::InvalidRequest("reply_to must be 16 bytes of hex".into()))
}

/// A group delivery's status as the API shows it.
pub(crate) fn delivery_status_api(status: carom_store::DeliveryStatus) -> api::DeliveryStatus {
    match status {
        carom_store::DeliveryStatus::Queued => api::DeliveryStatus::Queued,
        carom_store::DeliveryStatus::Delivered => api::DeliveryStatus::Delivered,
        carom_store::DeliveryStatus::Failed => api::DeliveryStatus::Failed,
    }
}

/// A group message as the API shows it.
pub(crate) fn group_message(
    m: &carom_store::GroupMessage,
    group: carom_group::GroupId,
    sent_to: Vec<String>,
    deliveries: &[carom_store::GroupDelivery],
) -> Result<api::GroupMessage> {
    let deliveries = deliveries
        .iter()
        .map(|d| {
            Ok(api::GroupDelivery {
                address: address_of(&d.recipient)?.to_string(),
                status: delivery_status_api(d.status),
                failure: d.failure.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(api::GroupMessage {
        id: m.row,
        group: hex::encode(group.0),
        msg_id: hex::encode(m.msg_id),
        sender: address_of(&m.sender)?.to_string(),
        direction: match m.direction {
            carom_store::Direction::Incoming => api::Direction::In,
            carom_store::Direction::Outgoing => api::Direction::Out,
        },
        body: m.body.clone(),
        sent_at: m.sent_at,
        stored_at: m.stored_at,
        reply_to: m.reply_to.map(hex::encode),
        sent_to,
        deliveries,
        timer: m.timer,
        expires_at: m.expires_at,
        kind: match m.kind {
            carom_store::MessageKind::Deleted => api::MessageKind::Deleted,
            carom_store::MessageKind::Text | carom_store::MessageKind::Timer => {
                api::MessageKind::Text
            }
        },
        memory_only: crate::memory::is_memory_row(m.row),
    })
}
