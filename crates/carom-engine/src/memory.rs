//! Conversations with history off: their messages live here, in the daemon's memory, and are
//! never written to the store (docs/storage.md "History off").
//!
//! A message kept here has the same shape as a stored one ([`carom_store::Message`]), so the
//! API shows both alike, but its row id is drawn from a range the store never reaches
//! ([`FIRST_ROW`] and above): a frontend can tell them apart, and every id stays unique. The
//! outbox of such a conversation is kept here too, and delivered after the stored outbox (which
//! holds what was queued while the history was still kept, and the timer changes, which are
//! always stored: they are settings, not content).
//!
//! Nothing here survives the daemon: a restart or crash loses every message and every queued
//! one (the guarantees that still hold are in docs/api.md). Bodies and queued payloads are
//! overwritten with zeros when they leave memory; copies that passed through the session's and
//! the API's buffers are not.
//!
//! Plain data, no I/O and no clock: times are passed in. What it is not: the policy of who may
//! send (the connection checks the contact's state first) or the schedule of erasure (the
//! machine's `erasure.rs`, which erases these at the same times as stored ones).

use std::collections::{BTreeMap, HashMap};

use carom_store::{
    DeliveryStatus, Direction, GroupDelivery, GroupMessage, Message, MessageKind, MessageStatus,
    NewGroupChat, NewGroupIncoming, NewIncoming, NewOutgoing, OutboxItem, OutboxKind,
};
use zeroize::{Zeroize, Zeroizing};

/// The first row id of a message kept in memory. The store's ids count up from 1 and never
/// get near it.
pub(crate) const FIRST_ROW: i64 = 1 << 52;

/// Most outgoing messages of one conversation waiting for the peer's acknowledgement: one
/// more is refused, never dropped.
pub(crate) const MAX_WAITING: usize = 1_000;

/// Most messages one conversation keeps: one more makes room by forgetting the oldest that is
/// not waiting for delivery (there always is one, as `MAX_WAITING` is smaller).
pub(crate) const MAX_KEPT: usize = 2_000;

/// Whether a message id names a message kept in memory.
pub(crate) fn is_memory_row(row: i64) -> bool {
    row >= FIRST_ROW
}

/// Every conversation with history off that holds something.
#[derive(Debug)]
pub(crate) struct Memory {
    next_row: i64,
    /// By contact row: its 1:1 messages, and everything queued for it (group messages too).
    conversations: HashMap<i64, Conversation>,
    /// By group row: the group's messages (their copies queued for members wait in the
    /// members' conversations).
    groups: HashMap<i64, GroupConversation>,
}

impl Default for Memory {
    fn default() -> Self {
        Memory {
            next_row: FIRST_ROW,
            conversations: HashMap::new(),
            groups: HashMap::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Conversation {
    messages: BTreeMap<i64, Held>,
    outbox: BTreeMap<i64, Queued>,
}

#[derive(Debug)]
struct GroupConversation {
    /// The group's id, for the events about it.
    group: [u8; 16],
    messages: BTreeMap<i64, HeldGroup>,
}

/// A group message, its body zeroed when it is dropped; for one we sent, how far it got to
/// each member, and the contact row of each member it was sent to (where a withdrawal goes).
#[derive(Debug)]
struct HeldGroup {
    message: GroupMessage,
    deliveries: Vec<GroupDelivery>,
    sent_to: Vec<i64>,
}

impl Drop for HeldGroup {
    fn drop(&mut self) {
        self.message.body.zeroize();
    }
}

/// A group message's delivery to one member changed: for the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryChange {
    pub(crate) group: [u8; 16],
    pub(crate) row: i64,
    pub(crate) recipient: [u8; 32],
    pub(crate) status: DeliveryStatus,
    pub(crate) failure: Option<String>,
}

/// What an acknowledgement or refusal settled: our chats whose state changed, and group
/// messages whose delivery to the peer did.
#[derive(Debug, Default)]
pub(crate) struct Settled {
    pub(crate) chats: Vec<Message>,
    pub(crate) deliveries: Vec<DeliveryChange>,
}

/// A message, its body zeroed when it is dropped.
#[derive(Debug)]
struct Held(Message);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.body.zeroize();
    }
}

#[derive(Debug)]
struct Queued {
    kind: OutboxKind,
    /// The wire id of what it carries: the chat's, or the withdrawal's own.
    wire_id: [u8; 16],
    message_row: Option<i64>,
    group_message_row: Option<i64>,
    payload: Zeroizing<Vec<u8>>,
    created_at: u64,
}

/// Why a message cannot be queued in memory.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// [`MAX_WAITING`] messages wait already.
    TooManyWaiting,
    /// No such message here.
    NotFound,
    /// Only a message we sent can be withdrawn.
    NotOurs,
}

impl Memory {
    fn take_row(&mut self) -> i64 {
        let row = self.next_row;
        self.next_row += 1;
        row
    }

    /// Queue a chat for a conversation with history off: the message, whether it is new (a
    /// repeated `client_token` returns the message queued first and queues nothing), and the
    /// rows forgotten to make room for it.
    pub(crate) fn queue_chat(
        &mut self,
        new: &NewOutgoing,
    ) -> Result<(Message, bool, Vec<i64>), Refused> {
        if let Some(token) = &new.client_token
            && let Some(c) = self.conversations.get(&new.contact_id)
            && let Some(held) = c
                .messages
                .values()
                .find(|h| h.0.client_token.as_ref() == Some(token))
        {
            return Ok((held.0.clone(), false, Vec::new()));
        }
        let waiting = self
            .conversations
            .get(&new.contact_id)
            .map_or(0, |c| c.waiting());
        if waiting >= MAX_WAITING {
            return Err(Refused::TooManyWaiting);
        }
        let row = self.take_row();
        let message = new.message(row);
        let c = self.conversations.entry(new.contact_id).or_default();
        c.outbox.insert(
            row,
            Queued {
                kind: OutboxKind::Chat,
                wire_id: new.msg_id,
                message_row: Some(row),
                group_message_row: None,
                payload: Zeroizing::new(new.payload.clone()),
                created_at: new.now,
            },
        );
        c.messages.insert(row, Held(message.clone()));
        let forgotten = c.make_room();
        Ok((message, true, forgotten))
    }

    /// Whether a chat (or a tombstone in its place) with this id from the contact is here.
    pub(crate) fn has_incoming(&self, contact_id: i64, msg_id: &[u8; 16]) -> bool {
        self.conversations
            .get(&contact_id)
            .is_some_and(|c| c.find(Direction::Incoming, msg_id).is_some())
    }

    /// Keep a chat that arrived; a copy already here is returned as not new. Also returns the
    /// rows forgotten to make room.
    pub(crate) fn receive(&mut self, new: &NewIncoming) -> (Message, bool, Vec<i64>) {
        if let Some(c) = self.conversations.get(&new.contact_id)
            && let Some(row) = c.find(Direction::Incoming, &new.msg_id)
        {
            return (c.messages[&row].0.clone(), false, Vec::new());
        }
        let row = self.take_row();
        let message = new.message(row);
        let c = self.conversations.entry(new.contact_id).or_default();
        c.messages.insert(row, Held(message.clone()));
        let forgotten = c.make_room();
        (message, true, forgotten)
    }

    /// Queued items of the contact with ids above `after`, in order, at most `limit`.
    pub(crate) fn outbox_after(
        &self,
        contact_id: i64,
        after: i64,
        limit: usize,
    ) -> Vec<OutboxItem> {
        let Some(c) = self.conversations.get(&contact_id) else {
            return Vec::new();
        };
        c.outbox
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(&id, q)| OutboxItem {
                id,
                contact_id,
                kind: q.kind,
                message_row: q.message_row,
                group_message_row: q.group_message_row,
                payload: q.payload.to_vec(),
                attempts: 0,
                next_attempt_at: q.created_at,
                created_at: q.created_at,
            })
            .collect()
    }

    /// Whether anything waits to be sent to the contact.
    pub(crate) fn has_outbox(&self, contact_id: i64) -> bool {
        self.conversations
            .get(&contact_id)
            .is_some_and(|c| !c.outbox.is_empty())
    }

    /// Chats written to a session: those still queued are now sent.
    pub(crate) fn mark_sent(&mut self, rows: &[i64], now: u64) -> Vec<Message> {
        let mut changed = Vec::new();
        for c in self.conversations.values_mut() {
            for row in rows {
                if let Some(held) = c.messages.get_mut(row)
                    && held.0.direction == Direction::Outgoing
                    && held.0.status == MessageStatus::Queued
                {
                    held.0.status = MessageStatus::Sent;
                    held.0.status_at = now;
                    changed.push(held.0.clone());
                }
            }
        }
        changed
    }

    /// The peer acknowledged (`failure: None`) or refused these wire ids: what they carried
    /// leaves the outbox, and our chats among them are delivered or failed. Returns the chats
    /// whose state changed.
    pub(crate) fn settle(
        &mut self,
        contact_id: i64,
        peer: &[u8; 32],
        wire_ids: &[[u8; 16]],
        failure: Option<&str>,
        now: u64,
    ) -> Settled {
        let Some(c) = self.conversations.get_mut(&contact_id) else {
            return Settled::default();
        };
        let settled: Vec<i64> = c
            .outbox
            .iter()
            .filter(|(_, q)| wire_ids.contains(&q.wire_id))
            .map(|(&id, _)| id)
            .collect();
        let mut deliveries = Vec::new();
        for id in &settled {
            if let Some(q) = c.outbox.remove(id)
                && q.kind == OutboxKind::GroupChat
                && let Some(row) = q.group_message_row
            {
                let status = if failure.is_some() {
                    DeliveryStatus::Failed
                } else {
                    DeliveryStatus::Delivered
                };
                deliveries.extend(set_delivery(
                    &mut self.groups,
                    row,
                    peer,
                    status,
                    failure,
                    now,
                ));
            }
        }
        let mut changed = Vec::new();
        for id in wire_ids {
            let Some(row) = c.find(Direction::Outgoing, id) else {
                continue;
            };
            let m = &mut c.messages.get_mut(&row).expect("found above").0;
            if matches!(m.status, MessageStatus::Queued | MessageStatus::Sent) {
                m.status = if failure.is_some() {
                    MessageStatus::Failed
                } else {
                    MessageStatus::Delivered
                };
                m.failure = failure.map(str::to_owned);
                m.status_at = now;
                changed.push(m.clone());
            }
        }
        Settled {
            chats: changed,
            deliveries,
        }
    }

    /// Delete a message here only (its queued copy goes with it).
    pub(crate) fn delete(&mut self, row: i64) -> Option<Message> {
        for c in self.conversations.values_mut() {
            if let Some(held) = c.messages.remove(&row) {
                c.outbox.retain(|_, q| q.message_row != Some(row));
                return Some(held.0.clone());
            }
        }
        None
    }

    /// Delete a chat we sent at both ends: ours becomes a tombstone at once (an undelivered
    /// one fails as withdrawn), and the withdrawal (`payload`, wire id `withdrawal`) is queued.
    pub(crate) fn withdraw_outgoing(
        &mut self,
        row: i64,
        withdrawal: [u8; 16],
        payload: Vec<u8>,
        now: u64,
    ) -> Result<Message, Refused> {
        let c = self
            .conversations
            .values_mut()
            .find(|c| c.messages.contains_key(&row))
            .ok_or(Refused::NotFound)?;
        let m = &mut c.messages.get_mut(&row).expect("found above").0;
        if m.direction != Direction::Outgoing || m.kind != MessageKind::Text {
            return Err(Refused::NotOurs);
        }
        let before = c.outbox.len();
        c.outbox.retain(|_, q| q.message_row != Some(row));
        if c.outbox.len() < before {
            // It will never be delivered now; nothing waits for it.
            m.status = MessageStatus::Failed;
            m.failure = Some("withdrawn".into());
        }
        tombstone(m);
        m.status_at = now;
        let m = m.clone();
        let id = self.take_row();
        // The peer may have it even if it never acknowledged it: the withdrawal goes anyway.
        let c = self
            .conversations
            .get_mut(&m.contact_id)
            .expect("found above");
        c.outbox.insert(
            id,
            Queued {
                kind: OutboxKind::Withdraw,
                wire_id: withdrawal,
                message_row: None,
                group_message_row: None,
                payload: Zeroizing::new(payload),
                created_at: now,
            },
        );
        Ok(m)
    }

    /// The contact withdrew a chat it sent us: its body is erased and a tombstone stays; for
    /// one that has not arrived, the tombstone comes first (so the late copy is a duplicate).
    /// Returns the tombstone and whether a body was erased.
    pub(crate) fn withdraw_incoming(
        &mut self,
        contact_id: i64,
        target: &[u8; 16],
        now: u64,
    ) -> (Message, bool) {
        if let Some(c) = self.conversations.get_mut(&contact_id)
            && let Some(row) = c.find(Direction::Incoming, target)
        {
            let m = &mut c.messages.get_mut(&row).expect("found above").0;
            let erased = m.kind == MessageKind::Text;
            tombstone(m);
            m.status_at = now;
            return (m.clone(), erased);
        }
        let row = self.take_row();
        let mut message = Message {
            row,
            contact_id,
            direction: Direction::Incoming,
            msg_id: *target,
            sent_at: now,
            stored_at: now,
            body: String::new(),
            reply_to: None,
            status: MessageStatus::Received,
            failure: None,
            client_token: None,
            status_at: now,
            kind: MessageKind::Deleted,
            timer: None,
            expires_at: None,
        };
        tombstone(&mut message);
        let c = self.conversations.entry(contact_id).or_default();
        c.messages.insert(row, Held(message.clone()));
        c.make_room();
        (message, false)
    }

    /// The message with this row, if it is here.
    pub(crate) fn get(&self, row: i64) -> Option<Message> {
        self.conversations
            .values()
            .find_map(|c| c.messages.get(&row).map(|h| h.0.clone()))
    }

    /// The contact's messages with rows below `before` (all if `None`), newest first.
    pub(crate) fn history(
        &self,
        contact_id: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Vec<Message> {
        let Some(c) = self.conversations.get(&contact_id) else {
            return Vec::new();
        };
        c.messages
            .range(..before.unwrap_or(i64::MAX))
            .rev()
            .take(limit)
            .map(|(_, h)| h.0.clone())
            .collect()
    }

    /// Erase every message whose time came by `up_to`: returns their rows by contact.
    pub(crate) fn erase_expired(&mut self, up_to: u64) -> Vec<(i64, Vec<i64>)> {
        let mut erased = Vec::new();
        for (&contact_id, c) in &mut self.conversations {
            let due: Vec<i64> = c
                .messages
                .iter()
                .filter(|(_, h)| h.0.expires_at.is_some_and(|at| at <= up_to))
                .map(|(&row, _)| row)
                .collect();
            if due.is_empty() {
                continue;
            }
            for row in &due {
                c.messages.remove(row);
                c.outbox.retain(|_, q| q.message_row != Some(*row));
            }
            erased.push((contact_id, due));
        }
        self.conversations
            .retain(|_, c| !c.messages.is_empty() || !c.outbox.is_empty());
        erased.sort_unstable();
        erased
    }

    /// When the next message here is erased.
    pub(crate) fn next_expiry(&self) -> Option<u64> {
        let chats = self
            .conversations
            .values()
            .flat_map(|c| c.messages.values().filter_map(|h| h.0.expires_at));
        let group_messages = self
            .groups
            .values()
            .flat_map(|g| g.messages.values().filter_map(|h| h.message.expires_at));
        chats.chain(group_messages).min()
    }

    /// Forget everything of a contact (removed): returns whether there was anything.
    pub(crate) fn forget(&mut self, contact_id: i64) -> bool {
        self.conversations.remove(&contact_id).is_some()
    }
}

/// Groups with history off: the same, for group messages. A message we send is queued in each
/// recipient's conversation (delivered after what is stored for it, so the operations a
/// message names, always stored, go first).
impl Memory {
    /// Queue a group message: the message, whether it is new (a repeated `client_token`
    /// returns the message queued first and queues nothing), and the rows forgotten to make
    /// room for it.
    pub(crate) fn queue_group_chat(
        &mut self,
        group: [u8; 16],
        new: &NewGroupChat,
    ) -> Result<(GroupMessage, bool, Vec<i64>), Refused> {
        if let Some(token) = &new.client_token
            && let Some(g) = self.groups.get(&new.group_row)
            && let Some(held) = g
                .messages
                .values()
                .find(|h| h.message.client_token.as_ref() == Some(token))
        {
            return Ok((held.message.clone(), false, Vec::new()));
        }
        let full = new.recipients.iter().any(|(contact_id, _)| {
            self.conversations
                .get(contact_id)
                .is_some_and(|c| c.waiting() >= MAX_WAITING)
        });
        if full {
            return Err(Refused::TooManyWaiting);
        }
        let row = self.take_row();
        let message = new.message(row);
        for (contact_id, _) in &new.recipients {
            self.conversations
                .entry(*contact_id)
                .or_default()
                .outbox
                .insert(
                    row,
                    Queued {
                        kind: OutboxKind::GroupChat,
                        wire_id: new.msg_id,
                        message_row: None,
                        group_message_row: Some(row),
                        payload: Zeroizing::new(new.payload.clone()),
                        created_at: new.now,
                    },
                );
        }
        let held = HeldGroup {
            message: message.clone(),
            deliveries: new.deliveries(),
            sent_to: new.recipients.iter().map(|(c, _)| *c).collect(),
        };
        let forgotten = self.keep_group(group, new.group_row, held);
        Ok((message, true, forgotten))
    }

    /// Keep a group message that arrived; a copy already here (or its tombstone) is returned
    /// as not new. Also returns the rows forgotten to make room.
    pub(crate) fn receive_group(
        &mut self,
        group: [u8; 16],
        new: &NewGroupIncoming,
    ) -> (GroupMessage, bool, Vec<i64>) {
        if let Some(row) = self.find_group(new.group_row, &new.sender, &new.msg_id) {
            return (
                self.groups[&new.group_row].messages[&row].message.clone(),
                false,
                Vec::new(),
            );
        }
        let row = self.take_row();
        let message = new.message(row);
        let held = HeldGroup {
            message: message.clone(),
            deliveries: Vec::new(),
            sent_to: Vec::new(),
        };
        let forgotten = self.keep_group(group, new.group_row, held);
        (message, true, forgotten)
    }

    /// Delete one of our group messages for everyone: it becomes a tombstone at once, its
    /// copies still queued are dropped (those deliveries fail as `withdrawn`), and the
    /// withdrawal (`payload`, wire id `withdrawal`) is queued for every member it was sent to
    /// but those we blocked since (`blocked`). Returns the tombstone and the contact rows the
    /// withdrawal goes to.
    pub(crate) fn withdraw_group_outgoing(
        &mut self,
        row: i64,
        withdrawal: [u8; 16],
        payload: &[u8],
        blocked: &dyn Fn(i64) -> bool,
        now: u64,
    ) -> Result<(GroupMessage, Vec<i64>), Refused> {
        let held = self
            .groups
            .values_mut()
            .find_map(|g| g.messages.get_mut(&row))
            .ok_or(Refused::NotFound)?;
        if held.message.direction != Direction::Outgoing || held.message.kind != MessageKind::Text {
            return Err(Refused::NotOurs);
        }
        for d in &mut held.deliveries {
            if d.status == DeliveryStatus::Queued {
                d.status = DeliveryStatus::Failed;
                d.failure = Some("withdrawn".into());
                d.status_at = now;
            }
        }
        tombstone_group(&mut held.message);
        let message = held.message.clone();
        let to: Vec<i64> = held
            .sent_to
            .iter()
            .copied()
            .filter(|c| !blocked(*c))
            .collect();
        for c in self.conversations.values_mut() {
            c.outbox.retain(|_, q| q.group_message_row != Some(row));
        }
        for contact_id in &to {
            let id = self.take_row();
            self.conversations
                .entry(*contact_id)
                .or_default()
                .outbox
                .insert(
                    id,
                    Queued {
                        kind: OutboxKind::Withdraw,
                        wire_id: withdrawal,
                        message_row: None,
                        group_message_row: None,
                        payload: Zeroizing::new(payload.to_vec()),
                        created_at: now,
                    },
                );
        }
        Ok((message, to))
    }

    /// A member withdrew a group message it sent: our copy becomes a tombstone. One that has
    /// not arrived gets a tombstone first (at `heads`) if `heads` is given (the sender is a
    /// member now), so that the late copy is a duplicate. Returns the tombstone, if there is
    /// one, and whether a body was erased.
    pub(crate) fn withdraw_group_incoming(
        &mut self,
        group: [u8; 16],
        group_row: i64,
        sender: &[u8; 32],
        target: &[u8; 16],
        heads: Option<&[[u8; 32]]>,
        now: u64,
    ) -> Option<(GroupMessage, bool)> {
        if let Some(row) = self.find_group(group_row, sender, target) {
            let m = &mut self
                .groups
                .get_mut(&group_row)
                .and_then(|g| g.messages.get_mut(&row))
                .expect("found above")
                .message;
            if m.kind != MessageKind::Text || m.direction != Direction::Incoming {
                return Some((m.clone(), false));
            }
            tombstone_group(m);
            return Some((m.clone(), true));
        }
        let placeholder =
            NewGroupIncoming::placeholder(group_row, *sender, *target, heads?.to_vec(), now);
        let (kept, _, _) = self.receive_group(group, &placeholder);
        let held = self
            .groups
            .get_mut(&group_row)
            .and_then(|g| g.messages.get_mut(&kept.row))
            .expect("kept above");
        tombstone_group(&mut held.message);
        Some((held.message.clone(), false))
    }

    /// The group message with this row, with its deliveries and its group's id.
    pub(crate) fn group_message(
        &self,
        row: i64,
    ) -> Option<(GroupMessage, Vec<GroupDelivery>, [u8; 16])> {
        self.groups.values().find_map(|g| {
            g.messages
                .get(&row)
                .map(|h| (h.message.clone(), h.deliveries.clone(), g.group))
        })
    }

    /// The group's messages with rows below `before` (all if `None`), newest first, with
    /// their deliveries.
    pub(crate) fn group_history(
        &self,
        group_row: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Vec<(GroupMessage, Vec<GroupDelivery>)> {
        let Some(g) = self.groups.get(&group_row) else {
            return Vec::new();
        };
        g.messages
            .range(..before.unwrap_or(i64::MAX))
            .rev()
            .take(limit)
            .map(|(_, h)| (h.message.clone(), h.deliveries.clone()))
            .collect()
    }

    /// Delete a group message here only (its queued copies go with it).
    pub(crate) fn delete_group_message(&mut self, row: i64) -> Option<GroupMessage> {
        let held = self
            .groups
            .values_mut()
            .find_map(|g| g.messages.remove(&row))?;
        for c in self.conversations.values_mut() {
            c.outbox.retain(|_, q| q.group_message_row != Some(row));
        }
        Some(held.message.clone())
    }

    /// Erase every group message whose time came by `up_to`: returns their rows by group.
    pub(crate) fn erase_expired_groups(&mut self, up_to: u64) -> Vec<([u8; 16], Vec<i64>)> {
        let mut erased = Vec::new();
        for g in self.groups.values_mut() {
            let due: Vec<i64> = g
                .messages
                .iter()
                .filter(|(_, h)| h.message.expires_at.is_some_and(|at| at <= up_to))
                .map(|(&row, _)| row)
                .collect();
            if due.is_empty() {
                continue;
            }
            for row in &due {
                g.messages.remove(row);
            }
            erased.push((g.group, due));
        }
        for (_, rows) in &erased {
            for c in self.conversations.values_mut() {
                c.outbox
                    .retain(|_, q| !q.group_message_row.is_some_and(|r| rows.contains(&r)));
            }
        }
        self.groups.retain(|_, g| !g.messages.is_empty());
        self.conversations
            .retain(|_, c| !c.messages.is_empty() || !c.outbox.is_empty());
        erased.sort_unstable();
        erased
    }

    fn find_group(&self, group_row: i64, sender: &[u8; 32], msg_id: &[u8; 16]) -> Option<i64> {
        self.groups
            .get(&group_row)?
            .messages
            .iter()
            .rev()
            .find_map(|(&row, h)| {
                (h.message.sender == *sender && h.message.msg_id == *msg_id).then_some(row)
            })
    }

    /// Keep a group message, then forget the oldest not waiting for delivery until at most
    /// [`MAX_KEPT`] remain; returns their rows.
    fn keep_group(&mut self, group: [u8; 16], group_row: i64, held: HeldGroup) -> Vec<i64> {
        let g = self
            .groups
            .entry(group_row)
            .or_insert_with(|| GroupConversation {
                group,
                messages: BTreeMap::new(),
            });
        g.messages.insert(held.message.row, held);
        if g.messages.len() <= MAX_KEPT {
            return Vec::new();
        }
        let waiting: std::collections::HashSet<i64> = self
            .conversations
            .values()
            .flat_map(|c| c.outbox.values().filter_map(|q| q.group_message_row))
            .collect();
        let mut forgotten = Vec::new();
        while g.messages.len() > MAX_KEPT {
            let Some(row) = g
                .messages
                .keys()
                .copied()
                .find(|row| !waiting.contains(row))
            else {
                break;
            };
            g.messages.remove(&row);
            forgotten.push(row);
        }
        forgotten
    }
}

/// A group message's delivery to `recipient` settles (one already delivered stays so).
fn set_delivery(
    groups: &mut HashMap<i64, GroupConversation>,
    row: i64,
    recipient: &[u8; 32],
    status: DeliveryStatus,
    failure: Option<&str>,
    now: u64,
) -> Option<DeliveryChange> {
    let (group, held) = groups
        .values_mut()
        .find_map(|g| g.messages.get_mut(&row).map(|h| (g.group, h)))?;
    let d = held
        .deliveries
        .iter_mut()
        .find(|d| d.recipient == *recipient && d.status != DeliveryStatus::Delivered)?;
    d.status = status;
    d.failure = failure.map(str::to_owned);
    d.status_at = now;
    Some(DeliveryChange {
        group,
        row,
        recipient: *recipient,
        status,
        failure: d.failure.clone(),
    })
}

/// Make a group message a tombstone: its content erased, the row kept.
fn tombstone_group(m: &mut GroupMessage) {
    m.body.zeroize();
    m.body = String::new();
    m.reply_to = None;
    m.kind = MessageKind::Deleted;
    m.timer = None;
    m.expires_at = None;
}

impl Conversation {
    fn find(&self, direction: Direction, msg_id: &[u8; 16]) -> Option<i64> {
        self.messages
            .iter()
            .rev()
            .find(|(_, h)| h.0.direction == direction && &h.0.msg_id == msg_id)
            .map(|(&row, _)| row)
    }

    /// Outgoing chats not yet settled by the peer.
    fn waiting(&self) -> usize {
        self.outbox
            .values()
            .filter(|q| matches!(q.kind, OutboxKind::Chat | OutboxKind::GroupChat))
            .count()
    }

    /// Forget the oldest messages not waiting for delivery until at most [`MAX_KEPT`] remain;
    /// returns their rows.
    fn make_room(&mut self) -> Vec<i64> {
        let mut forgotten = Vec::new();
        while self.messages.len() > MAX_KEPT {
            let Some(row) = self
                .messages
                .iter()
                .find(|(row, _)| !self.outbox.values().any(|q| q.message_row == Some(**row)))
                .map(|(&row, _)| row)
            else {
                break;
            };
            self.messages.remove(&row);
            forgotten.push(row);
        }
        forgotten
    }
}

/// Make a message a tombstone: its content erased, the row kept.
fn tombstone(m: &mut Message) {
    m.body.zeroize();
    m.body = String::new();
    m.reply_to = None;
    m.kind = MessageKind::Deleted;
    m.timer = None;
    m.expires_at = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOB: i64 = 7;
    const PEER: [u8; 32] = [7; 32];

    fn outgoing(n: u8, body: &str, timer: Option<u32>) -> NewOutgoing {
        NewOutgoing {
            contact_id: BOB,
            msg_id: [n; 16],
            sent_at: 1_000,
            body: body.into(),
            reply_to: None,
            client_token: None,
            payload: vec![n, 1, 2, 3],
            now: 1_000,
            expires_after: timer,
            expires_from: Some(1_000),
        }
    }

    fn incoming(n: u8, body: &str) -> NewIncoming {
        NewIncoming {
            contact_id: BOB,
            msg_id: [n; 16],
            sent_at: 900,
            body: body.into(),
            reply_to: None,
            now: 1_000,
            expires_after: None,
            expires_from: Some(1_000),
        }
    }

    #[test]
    fn rows_are_above_every_stored_id_and_increase() {
        let mut memory = Memory::default();
        let (a, new, _) = memory.queue_chat(&outgoing(1, "a", None)).unwrap();
        let (b, _, _) = memory.receive(&incoming(2, "b"));
        assert!(new);
        assert!(is_memory_row(a.row) && is_memory_row(b.row));
        assert!(b.row > a.row);
        assert!(!is_memory_row(i64::from(u32::MAX)));
        assert_eq!(memory.get(a.row).unwrap().body, "a");
        let rows: Vec<i64> = memory
            .history(BOB, None, 10)
            .iter()
            .map(|m| m.row)
            .collect();
        assert_eq!(rows, [b.row, a.row], "newest first");
        let rows: Vec<i64> = memory
            .history(BOB, Some(b.row), 10)
            .iter()
            .map(|m| m.row)
            .collect();
        assert_eq!(rows, [a.row]);
        assert!(memory.history(BOB + 1, None, 10).is_empty());
    }

    #[test]
    fn the_outbox_goes_in_order_and_settles_by_acknowledgement_or_refusal() {
        let mut memory = Memory::default();
        let (a, _, _) = memory.queue_chat(&outgoing(1, "a", None)).unwrap();
        let (b, _, _) = memory.queue_chat(&outgoing(2, "b", None)).unwrap();
        assert!(memory.has_outbox(BOB));
        let page = memory.outbox_after(BOB, 0, 10);
        assert_eq!(page.len(), 2);
        assert_eq!(page[0].message_row, Some(a.row));
        assert_eq!(page[0].payload, [1, 1, 2, 3]);
        assert_eq!(
            memory.outbox_after(BOB, page[0].id, 10)[0].message_row,
            Some(b.row)
        );
        let sent = memory.mark_sent(&[a.row], 1_100);
        assert_eq!(sent[0].status, MessageStatus::Sent);
        assert!(memory.mark_sent(&[a.row], 1_100).is_empty(), "sent once");
        let delivered = memory.settle(BOB, &PEER, &[[1; 16]], None, 1_200).chats;
        assert_eq!(delivered[0].status, MessageStatus::Delivered);
        let failed = memory
            .settle(BOB, &PEER, &[[2; 16]], Some("over_quota"), 1_200)
            .chats;
        assert_eq!(failed[0].status, MessageStatus::Failed);
        assert_eq!(failed[0].failure.as_deref(), Some("over_quota"));
        assert!(!memory.has_outbox(BOB));
        assert!(
            memory
                .settle(BOB, &PEER, &[[1; 16]], None, 1_300)
                .chats
                .is_empty(),
            "settled once"
        );
    }

    #[test]
    fn a_repeated_token_queues_nothing_and_waiting_messages_are_bounded() {
        let mut memory = Memory::default();
        let mut first = outgoing(1, "a", None);
        first.client_token = Some("t".into());
        let (a, new, _) = memory.queue_chat(&first).unwrap();
        assert!(new);
        let (again, new, _) = memory.queue_chat(&first).unwrap();
        assert!(!new);
        assert_eq!(again.row, a.row);
        for n in 1..MAX_WAITING {
            let mut m = outgoing(2, "b", None);
            m.msg_id[..8].copy_from_slice(&(n as u64).to_le_bytes());
            memory.queue_chat(&m).unwrap();
        }
        assert_eq!(
            memory.queue_chat(&outgoing(3, "c", None)).unwrap_err(),
            Refused::TooManyWaiting
        );
        memory.settle(BOB, &PEER, &[[1; 16]], None, 2_000);
        memory.queue_chat(&outgoing(3, "c", None)).unwrap();
    }

    #[test]
    fn a_full_conversation_forgets_its_oldest_settled_messages_never_a_waiting_one() {
        let mut memory = Memory::default();
        let (waiting, _, _) = memory.queue_chat(&outgoing(0, "wait", None)).unwrap();
        let mut forgotten = Vec::new();
        for n in 0..(MAX_KEPT as u64 + 5) {
            let mut m = incoming(1, "in");
            m.msg_id[..8].copy_from_slice(&n.to_le_bytes());
            forgotten.extend(memory.receive(&m).2);
        }
        assert_eq!(memory.history(BOB, None, usize::MAX).len(), MAX_KEPT);
        assert_eq!(forgotten.len(), 6);
        assert!(!forgotten.contains(&waiting.row));
        assert!(memory.get(waiting.row).is_some());
        assert!(forgotten.windows(2).all(|w| w[0] < w[1]), "oldest first");
    }

    #[test]
    fn duplicates_are_recognised_and_withdrawals_leave_tombstones() {
        let mut memory = Memory::default();
        let (m, new, _) = memory.receive(&incoming(1, "secret"));
        assert!(new);
        assert!(memory.has_incoming(BOB, &[1; 16]));
        assert!(!memory.has_incoming(BOB, &[2; 16]));
        let (again, new, _) = memory.receive(&incoming(1, "secret"));
        assert!(!new);
        assert_eq!(again.row, m.row);

        let (tomb, erased) = memory.withdraw_incoming(BOB, &[1; 16], 1_500);
        assert!(erased);
        assert_eq!(tomb.row, m.row);
        assert_eq!(tomb.kind, MessageKind::Deleted);
        assert!(tomb.body.is_empty());
        assert!(!memory.withdraw_incoming(BOB, &[1; 16], 1_600).1, "once");
        // One that has not arrived: the tombstone comes first, and the late copy is a
        // duplicate.
        let (early, erased) = memory.withdraw_incoming(BOB, &[3; 16], 1_700);
        assert!(!erased);
        assert!(memory.has_incoming(BOB, &[3; 16]));
        let (late, new, _) = memory.receive(&incoming(3, "too late"));
        assert!(!new);
        assert_eq!(late.row, early.row);
        assert!(late.body.is_empty());
    }

    #[test]
    fn withdrawing_our_chat_tombstones_it_and_queues_the_withdrawal() {
        let mut memory = Memory::default();
        let (m, _, _) = memory.queue_chat(&outgoing(1, "oops", None)).unwrap();
        let r = memory.receive(&incoming(2, "theirs")).0.row;
        assert_eq!(
            memory
                .withdraw_outgoing(r, [9; 16], vec![9], 1_100)
                .unwrap_err(),
            Refused::NotOurs
        );
        assert_eq!(
            memory
                .withdraw_outgoing(FIRST_ROW - 1, [9; 16], vec![9], 1_100)
                .unwrap_err(),
            Refused::NotFound
        );
        let tomb = memory
            .withdraw_outgoing(m.row, [9; 16], vec![9], 1_100)
            .unwrap();
        assert_eq!(tomb.kind, MessageKind::Deleted);
        assert_eq!(tomb.status, MessageStatus::Failed, "it never left");
        assert_eq!(tomb.failure.as_deref(), Some("withdrawn"));
        let page = memory.outbox_after(BOB, 0, 10);
        assert_eq!(
            page.len(),
            1,
            "the chat left the outbox, the withdrawal is in it"
        );
        assert_eq!(page[0].kind, OutboxKind::Withdraw);
        assert_eq!(page[0].message_row, None);
        memory.settle(BOB, &PEER, &[[9; 16]], None, 1_200);
        assert!(!memory.has_outbox(BOB));
    }

    #[test]
    fn expired_messages_are_erased_at_their_time_and_local_deletes_at_once() {
        let mut memory = Memory::default();
        let (a, _, _) = memory.queue_chat(&outgoing(1, "a", Some(60))).unwrap();
        let (b, _, _) = memory.queue_chat(&outgoing(2, "b", Some(120))).unwrap();
        let (c, _, _) = memory.queue_chat(&outgoing(3, "c", None)).unwrap();
        assert_eq!(a.expires_at, Some(61_000));
        assert_eq!(memory.next_expiry(), Some(61_000));
        assert!(memory.erase_expired(60_999).is_empty());
        assert_eq!(memory.erase_expired(61_000), [(BOB, vec![a.row])]);
        assert_eq!(memory.next_expiry(), Some(121_000));
        assert_eq!(
            memory.outbox_after(BOB, 0, 10).len(),
            2,
            "its queued copy went too"
        );
        assert_eq!(memory.delete(b.row).unwrap().row, b.row);
        assert!(memory.delete(b.row).is_none());
        assert_eq!(memory.next_expiry(), None);
        assert_eq!(memory.outbox_after(BOB, 0, 10)[0].message_row, Some(c.row));
        assert!(memory.forget(BOB));
        assert!(memory.history(BOB, None, 10).is_empty());
        assert!(!memory.has_outbox(BOB));
    }

    const GROUP: [u8; 16] = [5; 16];
    const GROUP_ROW: i64 = 3;
    const CAROL: i64 = 8;
    const CAROL_KEY: [u8; 32] = [8; 32];
    const DAVE_KEY: [u8; 32] = [9; 32];

    fn group_chat(n: u8, body: &str, timer: Option<u32>, token: Option<&str>) -> NewGroupChat {
        NewGroupChat {
            group_row: GROUP_ROW,
            sender: [1; 32],
            msg_id: [n; 16],
            heads: vec![[2; 32]],
            sent_at: 1_000,
            body: body.into(),
            reply_to: None,
            client_token: token.map(str::to_owned),
            recipients: vec![(BOB, PEER), (CAROL, CAROL_KEY)],
            unreachable: vec![(DAVE_KEY, "blocked".into())],
            payload: vec![n, 4, 5],
            now: 1_000,
            expires_after: timer,
            expires_from: Some(1_000),
        }
    }

    fn group_incoming(n: u8, body: &str) -> NewGroupIncoming {
        NewGroupIncoming {
            group_row: GROUP_ROW,
            sender: CAROL_KEY,
            msg_id: [n; 16],
            heads: vec![[2; 32]],
            sent_at: 900,
            body: body.into(),
            reply_to: None,
            now: 1_000,
            expires_after: None,
            expires_from: Some(1_000),
        }
    }

    fn status_of(deliveries: &[GroupDelivery], key: &[u8; 32]) -> (DeliveryStatus, Option<String>) {
        let d = deliveries
            .iter()
            .find(|d| &d.recipient == key)
            .expect("a delivery");
        (d.status, d.failure.clone())
    }

    #[test]
    fn a_group_message_is_queued_for_each_recipient_and_settles_per_recipient() {
        let mut memory = Memory::default();
        let (m, fresh, _) = memory
            .queue_group_chat(GROUP, &group_chat(1, "hello", None, Some("t")))
            .unwrap();
        assert!(fresh && is_memory_row(m.row));
        let (again, fresh, _) = memory
            .queue_group_chat(GROUP, &group_chat(2, "hello", None, Some("t")))
            .unwrap();
        assert!(!fresh, "the same client token queues nothing");
        assert_eq!(again.row, m.row);
        for contact in [BOB, CAROL] {
            let page = memory.outbox_after(contact, 0, 10);
            assert_eq!(page.len(), 1, "one copy for {contact}");
            assert_eq!(page[0].kind, OutboxKind::GroupChat);
            assert_eq!(page[0].group_message_row, Some(m.row));
            assert_eq!(page[0].payload, [1, 4, 5]);
        }
        let (_, deliveries, group) = memory.group_message(m.row).unwrap();
        assert_eq!(group, GROUP);
        assert_eq!(
            status_of(&deliveries, &DAVE_KEY).1.as_deref(),
            Some("blocked")
        );
        assert_eq!(status_of(&deliveries, &PEER).0, DeliveryStatus::Queued);

        let settled = memory.settle(BOB, &PEER, &[[1; 16]], None, 1_100);
        assert!(settled.chats.is_empty());
        assert_eq!(
            settled.deliveries,
            [DeliveryChange {
                group: GROUP,
                row: m.row,
                recipient: PEER,
                status: DeliveryStatus::Delivered,
                failure: None,
            }]
        );
        assert!(!memory.has_outbox(BOB));
        assert!(memory.has_outbox(CAROL), "Carol's copy still waits");
        let refused = memory.settle(CAROL, &CAROL_KEY, &[[1; 16]], Some("not_a_member"), 1_200);
        assert_eq!(refused.deliveries[0].status, DeliveryStatus::Failed);
        let (_, deliveries, _) = memory.group_message(m.row).unwrap();
        assert_eq!(status_of(&deliveries, &PEER).0, DeliveryStatus::Delivered);
        assert_eq!(status_of(&deliveries, &CAROL_KEY).0, DeliveryStatus::Failed);
        let listed: Vec<i64> = memory
            .group_history(GROUP_ROW, None, 10)
            .iter()
            .map(|(m, _)| m.row)
            .collect();
        assert_eq!(listed, [m.row]);
        assert!(memory.group_history(GROUP_ROW + 1, None, 10).is_empty());
    }

    #[test]
    fn withdrawing_a_group_message_stops_its_copies_and_goes_to_everyone_not_blocked() {
        let mut memory = Memory::default();
        let (m, _, _) = memory
            .queue_group_chat(GROUP, &group_chat(1, "oops", None, None))
            .unwrap();
        memory.settle(BOB, &PEER, &[[1; 16]], None, 1_100);
        let (tomb, to) = memory
            .withdraw_group_outgoing(m.row, [7; 16], &[7, 7], &|c| c == CAROL, 1_200)
            .unwrap();
        assert_eq!(tomb.kind, MessageKind::Deleted);
        assert!(tomb.body.is_empty());
        assert_eq!(to, [BOB], "Carol, blocked since, is sent nothing");
        let (_, deliveries, _) = memory.group_message(m.row).unwrap();
        assert_eq!(
            status_of(&deliveries, &CAROL_KEY),
            (DeliveryStatus::Failed, Some("withdrawn".into()))
        );
        assert_eq!(status_of(&deliveries, &PEER).0, DeliveryStatus::Delivered);
        assert!(!memory.has_outbox(CAROL), "her undelivered copy stopped");
        let page = memory.outbox_after(BOB, 0, 10);
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].kind, OutboxKind::Withdraw);
        assert_eq!(page[0].payload, [7, 7]);
        assert_eq!(
            memory.withdraw_group_outgoing(m.row, [8; 16], &[], &|_| false, 1_300),
            Err(Refused::NotOurs),
            "once"
        );
        let (incoming, _, _) = memory.receive_group(GROUP, &group_incoming(2, "theirs"));
        assert_eq!(
            memory.withdraw_group_outgoing(incoming.row, [8; 16], &[], &|_| false, 1_300),
            Err(Refused::NotOurs)
        );
    }

    #[test]
    fn group_messages_that_arrive_are_kept_once_and_withdrawals_may_come_first() {
        let mut memory = Memory::default();
        let (m, fresh, _) = memory.receive_group(GROUP, &group_incoming(1, "hi"));
        assert!(fresh);
        assert!(
            !memory.receive_group(GROUP, &group_incoming(1, "hi")).1,
            "once"
        );
        let (tomb, erased) = memory
            .withdraw_group_incoming(GROUP, GROUP_ROW, &CAROL_KEY, &[1; 16], None, 1_100)
            .unwrap();
        assert!(erased);
        assert_eq!((tomb.row, tomb.kind), (m.row, MessageKind::Deleted));
        assert!(memory.group_message(m.row).unwrap().0.body.is_empty());
        // From a member now: a tombstone first, and the late copy is a duplicate.
        let heads = [[2; 32]];
        let (early, erased) = memory
            .withdraw_group_incoming(GROUP, GROUP_ROW, &CAROL_KEY, &[2; 16], Some(&heads), 1_200)
            .unwrap();
        assert!(!erased);
        assert_eq!(early.kind, MessageKind::Deleted);
        let (late, fresh, _) = memory.receive_group(GROUP, &group_incoming(2, "too late"));
        assert!(!fresh);
        assert!(late.body.is_empty());
        // From someone who is no member: nothing is kept for a message not here.
        assert!(
            memory
                .withdraw_group_incoming(GROUP, GROUP_ROW, &CAROL_KEY, &[3; 16], None, 1_300)
                .is_none()
        );
        assert_eq!(memory.delete_group_message(m.row).unwrap().row, m.row);
        assert!(memory.group_message(m.row).is_none());
    }

    #[test]
    fn group_messages_expire_at_their_time_with_their_queued_copies() {
        let mut memory = Memory::default();
        let (a, _, _) = memory
            .queue_group_chat(GROUP, &group_chat(1, "a", Some(60), None))
            .unwrap();
        let (b, _, _) = memory
            .queue_group_chat(GROUP, &group_chat(2, "b", None, None))
            .unwrap();
        let (c, _, _) = memory.queue_chat(&outgoing(3, "c", Some(120))).unwrap();
        assert_eq!(memory.next_expiry(), Some(61_000));
        assert!(memory.erase_expired_groups(60_999).is_empty());
        assert_eq!(memory.erase_expired_groups(61_000), [(GROUP, vec![a.row])]);
        assert!(memory.group_message(a.row).is_none());
        let rows: Vec<Option<i64>> = memory
            .outbox_after(CAROL, 0, 10)
            .iter()
            .map(|i| i.group_message_row)
            .collect();
        assert_eq!(rows, [Some(b.row)], "the expired one's copy went too");
        assert_eq!(memory.next_expiry(), c.expires_at);
    }

    #[test]
    fn a_member_with_too_many_messages_waiting_refuses_one_more_group_message() {
        let mut memory = Memory::default();
        for n in 0..MAX_WAITING {
            let mut new = outgoing(1, "x", None);
            new.msg_id = (n as u128).to_be_bytes();
            memory.queue_chat(&new).unwrap();
        }
        assert_eq!(
            memory
                .queue_group_chat(GROUP, &group_chat(1, "one more", None, None))
                .map(|_| ()),
            Err(Refused::TooManyWaiting)
        );
        assert!(memory.group_history(GROUP_ROW, None, 10).is_empty());
        assert!(!memory.has_outbox(CAROL), "nothing queued for anyone");
    }
}
