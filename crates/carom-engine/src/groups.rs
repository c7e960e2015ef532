//! Groups in the engine's core: the histories held in memory, and the decisions about them —
//! what a local change or a peer's message does, what to store, whom to send what.
//!
//! Like the rest of the machine this does no I/O: it returns a [`GroupWrite`] (one
//! transaction: the operations, our standing, what to queue for whom, events) and the peers to
//! deliver to; the driver commits it and only then answers or acknowledges. Membership comes
//! from `carom-group` (protocol §15); this module adds who may send us what, and the fan-out.
//!
//! Members need not be each other's contacts: group traffic goes over a session with each
//! member, and a co-member who is not a contact gets a session for group traffic only (the
//! machine admits it because this module says the peer is in a group we hold with it, see
//! [`Groups::admits`]). Invitations are different: only an accepted contact can be invited,
//! and only an accepted contact's invitation opens a group here — pairing is the consent to
//! be reached at all.

use std::collections::HashMap;

use carom_api::{self as api, EventData, event};
use carom_group::{
    Action, Added, GroupId, History, HistoryError, Invitation, Membership, OpId, Policy, Role,
    SignedOperation,
};
use carom_proto::{
    Ack, Digest32, GroupChat, GroupOperations, IdentityKey, MAX_GROUP_OPERATIONS_PER_MESSAGE,
    Message, MessageId, OnionAddress, PeerKind, Reject, reject,
};
use carom_store::{GroupState, StoredOperation};
use rand_chacha::ChaCha20Rng;
use tracing::{debug, info, warn};

use crate::err::{EngineError, Result};

/// Why a member we blocked is not sent our messages (recorded as the delivery's failure).
pub(crate) const BLOCKED: &str = "blocked";

/// What a peer is to us, as far as groups care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Relation {
    /// An accepted contact: may be invited, and its invitations are shown.
    Contact,
    /// Anyone else we have not blocked: reached for group traffic only.
    Other,
    /// Blocked: we send it nothing, group traffic included.
    Blocked,
}

/// One group this profile holds.
struct Entry {
    state: GroupState,
    history: History,
    /// `false`: history off, its messages are kept in memory only (`memory.rs`).
    keep_history: bool,
}

/// The groups, and who we are in them.
pub(crate) struct Groups {
    identity: IdentityKey,
    me: OnionAddress,
    by_id: HashMap<GroupId, Entry>,
    /// For each group and peer, operations the peer is known to hold (with everything they
    /// build on): those it sent us, and those we queued for it (the outbox delivers them).
    /// What we send a peer is what it lacks by this account, so members whose changes crossed
    /// still converge: each catches the others up. In memory only: after a restart a peer is
    /// sent everything once (duplicates are harmless).
    held: HashMap<(GroupId, [u8; 32]), Vec<OpId>>,
    /// The beginning of a history a contact is sending us, whose invitation has not arrived
    /// yet, and the ids of the messages it came in (unacknowledged until it does).
    provisional: HashMap<(GroupId, [u8; 32]), (History, Vec<MessageId>)>,
}

/// Most histories held while their invitation is on its way.
const MAX_PROVISIONAL: usize = 4;

/// What the user asked for.
#[derive(Debug)]
pub(crate) enum GroupCommand {
    Create {
        name: String,
        members_can_invite: bool,
        member_name: String,
        kind: PeerKind,
    },
    List,
    Get(GroupId),
    Invite {
        group: GroupId,
        invitee: OnionAddress,
        role: Role,
    },
    Accept {
        group: GroupId,
        name: String,
        kind: PeerKind,
    },
    Decline(GroupId),
    Leave(GroupId),
    Remove {
        group: GroupId,
        member: OnionAddress,
    },
    SetRole {
        group: GroupId,
        member: OnionAddress,
        role: Role,
    },
    Rename {
        group: GroupId,
        name: String,
    },
    SetPolicy {
        group: GroupId,
        members_can_invite: bool,
    },
    SetTimer {
        group: GroupId,
        timer: Option<u32>,
    },
    SetHistory {
        group: GroupId,
        keep_history: bool,
    },
    Send {
        group: GroupId,
        body: String,
        reply_to: Option<MessageId>,
        client_token: Option<String>,
        now_ms: u64,
    },
}

/// One transaction's worth of group changes.
#[derive(Debug)]
pub(crate) struct GroupWrite {
    pub(crate) group: GroupId,
    /// Our standing: the row is made with it if there is none, or set to it.
    pub(crate) state: Option<GroupState>,
    /// Operations to append, each after the ones it builds on.
    pub(crate) ops: Vec<StoredOperation>,
    /// Group-operations messages to queue: (peer, encoded envelope).
    pub(crate) send: Vec<(OnionAddress, Vec<u8>)>,
    /// Everyone `send` or the outgoing chat goes to, with the name and kind the membership
    /// gives them (an invitee has declared neither yet): a peer without a row gets a
    /// co-member's row, to carry the traffic.
    pub(crate) peers: Vec<(OnionAddress, String, PeerKind)>,
    pub(crate) chat_out: Option<OutgoingChat>,
    pub(crate) chat_in: Option<IncomingChat>,
    /// A member withdrew one of its messages (delete for everyone).
    pub(crate) withdraw_in: Option<IncomingWithdraw>,
    /// History off: the message in or out, or the withdrawal, is kept in memory, not stored
    /// (everything else of the write is stored as usual).
    pub(crate) in_memory: bool,
    /// The history setting changes to this.
    pub(crate) keep_history: Option<bool>,
    pub(crate) events: Vec<EventData>,
}

/// A member's delete for everyone of a group message it sent.
#[derive(Debug)]
pub(crate) struct IncomingWithdraw {
    pub(crate) sender: OnionAddress,
    pub(crate) target: MessageId,
    /// Our heads now: where a tombstone for a message that has not arrived is placed.
    pub(crate) heads: Vec<OpId>,
    /// The sender is a member now, so a withdrawal that comes before its message leaves a
    /// tombstone. Anyone else (a removed member) may only erase a message of theirs we hold:
    /// nobody outside the group can put even an empty item into its history.
    pub(crate) may_precede: bool,
}

impl GroupWrite {
    fn new(group: GroupId) -> GroupWrite {
        GroupWrite {
            group,
            state: None,
            ops: Vec::new(),
            send: Vec::new(),
            peers: Vec::new(),
            chat_out: None,
            chat_in: None,
            withdraw_in: None,
            in_memory: false,
            keep_history: None,
            events: Vec::new(),
        }
    }

    fn changed(&mut self) {
        self.events.push(EventData::GroupChanged(event::GroupRef {
            group: hex::encode(self.group.0),
        }));
    }
}

/// A message we send to a group.
#[derive(Debug)]
pub(crate) struct OutgoingChat {
    /// Us.
    pub(crate) sender: OnionAddress,
    pub(crate) msg_id: MessageId,
    pub(crate) heads: Vec<OpId>,
    pub(crate) sent_at: u64,
    pub(crate) body: String,
    pub(crate) reply_to: Option<MessageId>,
    pub(crate) client_token: Option<String>,
    /// The group's disappearing-message timer it is sent under.
    pub(crate) expires_after: Option<u32>,
    /// Members it is sent to.
    pub(crate) recipients: Vec<OnionAddress>,
    /// Members of its set of ends we do not send to: those we blocked (see [`BLOCKED`]).
    pub(crate) unreachable: Vec<OnionAddress>,
    pub(crate) payload: Vec<u8>,
}

/// A group message a member sent us, checked.
#[derive(Debug)]
pub(crate) struct IncomingChat {
    pub(crate) sender: OnionAddress,
    pub(crate) msg_id: MessageId,
    pub(crate) heads: Vec<OpId>,
    pub(crate) sent_at: u64,
    pub(crate) body: String,
    pub(crate) reply_to: Option<MessageId>,
    /// The timer it was sent under.
    pub(crate) expires_after: Option<u32>,
}

/// What a local command decided.
#[derive(Debug, Default)]
pub(crate) struct Decision {
    pub(crate) write: Option<GroupWrite>,
    /// The group as it is now (for the API's answer).
    pub(crate) view: Option<api::Group>,
    /// Every group, for `group.list`.
    pub(crate) list: Vec<api::Group>,
    /// Contacts whose outboxes the write fills.
    pub(crate) deliver: Vec<OnionAddress>,
}

/// What a peer's group message decided: what to store, what to answer once it is stored.
#[derive(Debug, Default)]
pub(crate) struct PeerDecision {
    pub(crate) write: Option<GroupWrite>,
    pub(crate) answer: Vec<Message>,
    pub(crate) deliver: Vec<OnionAddress>,
}

fn no_group() -> EngineError {
    EngineError::NoSuchGroup
}

fn refused(e: &HistoryError) -> EngineError {
    match e {
        HistoryError::Full | HistoryError::TooManyWaiting => EngineError::TooLarge(e.to_string()),
        _ => EngineError::InvalidState(e.to_string()),
    }
}

fn role_api(role: Role) -> api::GroupRole {
    match role {
        Role::Member => api::GroupRole::Member,
        Role::Admin => api::GroupRole::Admin,
    }
}

fn kind_api(kind: PeerKind) -> api::PeerKind {
    match kind {
        PeerKind::Human => api::PeerKind::Human,
        PeerKind::Bot => api::PeerKind::Bot,
    }
}

fn state_api(state: GroupState) -> api::GroupState {
    match state {
        GroupState::Invited => api::GroupState::Invited,
        GroupState::Member => api::GroupState::Member,
        GroupState::Declined => api::GroupState::Declined,
        GroupState::Left => api::GroupState::Left,
    }
}

fn stored(op: &SignedOperation) -> StoredOperation {
    StoredOperation {
        op_id: op.id().0,
        body: op.body().to_vec(),
        signature: *op.signature(),
    }
}

/// Group-operations envelopes carrying `ops` (in order), at most
/// [`MAX_GROUP_OPERATIONS_PER_MESSAGE`] each.
fn envelopes(group: GroupId, ops: &[&SignedOperation], rng: &mut ChaCha20Rng) -> Vec<Vec<u8>> {
    ops.chunks(MAX_GROUP_OPERATIONS_PER_MESSAGE)
        .map(|chunk| {
            Message::GroupOperations(GroupOperations {
                id: MessageId::random(rng),
                group,
                operations: chunk.iter().map(|op| op.to_wire()).collect(),
            })
            .encode()
        })
        .collect()
}

impl Groups {
    pub(crate) fn new(identity: IdentityKey) -> Groups {
        Groups {
            me: identity.address(),
            identity,
            by_id: HashMap::new(),
            held: HashMap::new(),
            provisional: HashMap::new(),
        }
    }

    /// The store's groups, at start. Operations that no longer verify are left out (and said).
    pub(crate) fn load(&mut self, groups: Vec<(GroupId, GroupState, bool, Vec<StoredOperation>)>) {
        for (id, state, keep_history, ops) in groups {
            let mut verified = Vec::with_capacity(ops.len());
            for op in ops {
                match SignedOperation::from_parts(op.body, op.signature) {
                    Ok(op) => verified.push(op),
                    Err(e) => {
                        warn!(error = %e, "a stored group operation does not verify; left out");
                    }
                }
            }
            match History::from_operations(verified) {
                Ok((history, refused)) => {
                    if !refused.is_empty() {
                        warn!(
                            count = refused.len(),
                            "stored group operations that do not fit"
                        );
                    }
                    self.by_id.insert(
                        id,
                        Entry {
                            state,
                            history,
                            keep_history,
                        },
                    );
                }
                Err(e) => warn!(error = %e, "a stored group has no valid history; left out"),
            }
        }
    }

    fn view(
        &self,
        id: GroupId,
        entry: &Entry,
        relation: &dyn Fn(&OnionAddress) -> Relation,
    ) -> api::Group {
        let membership = entry.history.membership();
        let invited_by = (entry.state == GroupState::Invited)
            .then(|| invitation_for(membership, &self.me).map(|inv| inv.inviter.to_string()))
            .flatten();
        api::Group {
            id: hex::encode(id.0),
            name: membership.name.clone(),
            state: state_api(entry.state),
            members_can_invite: membership.policy.members_can_invite,
            timer: membership.timer,
            keep_history: entry.keep_history,
            role: membership.member(&self.me).map(|m| role_api(m.role)),
            members: membership
                .members
                .values()
                .map(|m| api::GroupMember {
                    address: m.address.to_string(),
                    name: m.name.clone(),
                    kind: kind_api(m.kind),
                    role: role_api(m.role),
                    contact: relation(&m.address) == Relation::Contact,
                    me: m.address == self.me,
                })
                .collect(),
            invitations: membership
                .invitations
                .values()
                .map(|inv| api::GroupInvitation {
                    invitee: inv.invitee.to_string(),
                    role: role_api(inv.role),
                    inviter: inv.inviter.to_string(),
                })
                .collect(),
            invited_by,
        }
    }

    /// The set of ends of a message naming `heads`: every member at that state.
    pub(crate) fn sent_to(&self, group: GroupId, heads: &[OpId]) -> Vec<String> {
        self.by_id
            .get(&group)
            .and_then(|e| e.history.membership_at(heads).ok())
            .map(|m| m.members.values().map(|m| m.address.to_string()).collect())
            .unwrap_or_default()
    }

    /// The operations `peer` lacks by our account, as envelopes to queue; from then on it
    /// holds everything we have.
    fn catch_up(
        held: &mut HashMap<(GroupId, [u8; 32]), Vec<OpId>>,
        group: GroupId,
        history: &History,
        peer: &OnionAddress,
        rng: &mut ChaCha20Rng,
    ) -> Vec<Vec<u8>> {
        let known = held.entry((group, peer.public_key())).or_default();
        let missing = history.missing_for(known);
        let envelopes = envelopes(group, &missing, rng);
        *known = history.heads();
        envelopes
    }

    /// Everyone a change concerns: members and invitees (and `also`), but us and anyone we
    /// blocked.
    fn audience(
        &self,
        membership: &Membership,
        also: &[OnionAddress],
        relation: &dyn Fn(&OnionAddress) -> Relation,
    ) -> Vec<OnionAddress> {
        let mut audience: Vec<OnionAddress> = membership
            .members
            .values()
            .map(|m| m.address)
            .chain(membership.invitations.values().map(|i| i.invitee))
            .chain(also.iter().copied())
            .filter(|a| *a != self.me && relation(a) != Relation::Blocked)
            .collect();
        audience.sort_by_key(OnionAddress::public_key);
        audience.dedup();
        audience
    }

    /// Whether `peer` may open a session with us for group traffic: some group we are a
    /// member of, or invited to, has it as a member or an invitee, as we see it now. (A
    /// removed member is refused from the moment we know of the removal; one we are still to
    /// hear has left may deliver its leaving.)
    pub(crate) fn admits(&self, peer: &OnionAddress) -> bool {
        self.by_id.values().any(|entry| {
            matches!(entry.state, GroupState::Member | GroupState::Invited) && {
                let membership = entry.history.membership();
                membership.is_member(peer)
                    || membership.invitations.values().any(|i| i.invitee == *peer)
            }
        })
    }

    /// The name and kind `peer` has in `group` (an invitee has none yet).
    fn declared(&self, group: GroupId, peer: &OnionAddress) -> (String, PeerKind) {
        self.by_id
            .get(&group)
            .and_then(|e| e.history.membership().member(peer).cloned())
            .map_or((String::new(), PeerKind::Human), |m| (m.name, m.kind))
    }

    /// Name in `write.peers` everyone it sends to.
    fn name_peers(&self, write: &mut GroupWrite) {
        let mut peers: Vec<OnionAddress> = write.send.iter().map(|(p, _)| *p).collect();
        if let Some(out) = &write.chat_out {
            peers.extend(out.recipients.iter().copied());
        }
        peers.sort_by_key(OnionAddress::public_key);
        peers.dedup();
        write.peers = peers
            .into_iter()
            .map(|p| {
                let (name, kind) = self.declared(write.group, &p);
                (p, name, kind)
            })
            .collect();
    }

    /// Carry out a local command.
    pub(crate) fn command(
        &mut self,
        command: GroupCommand,
        now_ms: u64,
        rng: &mut ChaCha20Rng,
        relation: &dyn Fn(&OnionAddress) -> Relation,
    ) -> Result<Decision> {
        let group = match &command {
            GroupCommand::List => {
                let mut list: Vec<(&GroupId, &Entry)> = self.by_id.iter().collect();
                list.sort_by_key(|(id, _)| **id);
                return Ok(Decision {
                    list: list
                        .into_iter()
                        .map(|(id, e)| self.view(*id, e, relation))
                        .collect(),
                    ..Decision::default()
                });
            }
            GroupCommand::Create {
                name,
                members_can_invite,
                member_name,
                kind,
            } => {
                let id = GroupId::random(rng);
                let history = History::create(
                    &self.identity,
                    id,
                    name.clone(),
                    Policy {
                        members_can_invite: *members_can_invite,
                    },
                    *kind,
                    member_name.clone(),
                    now_ms,
                );
                let mut write = GroupWrite::new(id);
                write.state = Some(GroupState::Member);
                write.ops = history.operations().map(stored).collect();
                write.changed();
                let entry = Entry {
                    state: GroupState::Member,
                    history,
                    keep_history: true,
                };
                let view = self.view(id, &entry, relation);
                self.by_id.insert(id, entry);
                info!(group = ?id, "created a group");
                return Ok(Decision {
                    write: Some(write),
                    view: Some(view),
                    ..Decision::default()
                });
            }
            GroupCommand::Get(group)
            | GroupCommand::Invite { group, .. }
            | GroupCommand::Accept { group, .. }
            | GroupCommand::Decline(group)
            | GroupCommand::Leave(group)
            | GroupCommand::Remove { group, .. }
            | GroupCommand::SetRole { group, .. }
            | GroupCommand::Rename { group, .. }
            | GroupCommand::SetPolicy { group, .. }
            | GroupCommand::SetTimer { group, .. }
            | GroupCommand::SetHistory { group, .. }
            | GroupCommand::Send { group, .. } => *group,
        };
        let me = self.me;
        let identity = self.identity.clone();
        let entry = self.by_id.get_mut(&group).ok_or_else(no_group)?;
        let mut write = GroupWrite::new(group);
        let mut deliver = Vec::new();
        let action = match command {
            GroupCommand::Get(_) => None,
            GroupCommand::Invite { invitee, role, .. } => {
                require_member(entry)?;
                if relation(&invitee) != Relation::Contact {
                    return Err(EngineError::InvalidState(
                        "only an accepted contact can be invited (pair with them first)".into(),
                    ));
                }
                Some(Action::Invite { invitee, role })
            }
            GroupCommand::Accept { name, kind, .. } => {
                if entry.state != GroupState::Invited {
                    return Err(EngineError::InvalidState(format!(
                        "there is no invitation to accept (the group is {})",
                        entry.state
                    )));
                }
                let invite = invitation_for(entry.history.membership(), &me)
                    .map(|inv| inv.id)
                    .ok_or_else(|| {
                        EngineError::InvalidState(
                            "the invitation was withdrawn (or its inviter left)".into(),
                        )
                    })?;
                write.state = Some(GroupState::Member);
                Some(Action::Accept { invite, kind, name })
            }
            GroupCommand::Decline(_) => {
                if entry.state != GroupState::Invited {
                    return Err(EngineError::InvalidState(
                        "there is no invitation to decline".into(),
                    ));
                }
                entry.state = GroupState::Declined;
                write.state = Some(GroupState::Declined);
                write.changed();
                None
            }
            GroupCommand::Leave(_) => {
                require_member(entry)?;
                write.state = Some(GroupState::Left);
                Some(Action::Leave)
            }
            GroupCommand::Remove { member, .. } => {
                require_member(entry)?;
                Some(Action::Remove { member })
            }
            GroupCommand::SetRole { member, role, .. } => {
                require_member(entry)?;
                Some(Action::SetRole { member, role })
            }
            GroupCommand::Rename { name, .. } => {
                require_member(entry)?;
                Some(Action::Rename { name })
            }
            GroupCommand::SetPolicy {
                members_can_invite, ..
            } => {
                require_member(entry)?;
                Some(Action::SetPolicy {
                    policy: Policy { members_can_invite },
                })
            }
            GroupCommand::SetTimer { timer, .. } => {
                require_member(entry)?;
                Some(Action::SetTimer { timer })
            }
            GroupCommand::SetHistory { keep_history, .. } => {
                // Ours alone: nothing is signed or sent.
                if entry.keep_history != keep_history {
                    entry.keep_history = keep_history;
                    write.keep_history = Some(keep_history);
                    write.changed();
                }
                None
            }
            GroupCommand::Send {
                body,
                reply_to,
                client_token,
                now_ms,
                ..
            } => {
                require_member(entry)?;
                let heads = entry.history.heads();
                let membership = entry.history.membership().clone();
                let msg_id = MessageId::random(rng);
                // The group's timer as it is now: the message carries it for good.
                let expires_after = membership.timer;
                let payload = Message::GroupChat(GroupChat {
                    id: msg_id,
                    group,
                    heads: heads.clone(),
                    members_digest: Digest32(membership.members_digest()),
                    sent_at: now_ms,
                    body: body.clone(),
                    reply_to,
                    expires_after,
                })
                .encode();
                let (recipients, unreachable): (Vec<OnionAddress>, Vec<OnionAddress>) = membership
                    .members
                    .values()
                    .map(|m| m.address)
                    .filter(|a| *a != me)
                    .partition(|a| relation(a) != Relation::Blocked);
                deliver.extend(recipients.iter().copied());
                write.in_memory = !entry.keep_history;
                write.chat_out = Some(OutgoingChat {
                    sender: me,
                    msg_id,
                    heads,
                    sent_at: now_ms,
                    body,
                    reply_to,
                    client_token,
                    expires_after,
                    recipients,
                    unreachable,
                    payload,
                });
                None
            }
            GroupCommand::List | GroupCommand::Create { .. } => None,
        };
        if let Some(action) = action {
            let before = entry.history.membership().clone();
            // A removed member hears of it (it learns it was removed).
            let removed = match &action {
                Action::Remove { member } => Some(*member),
                _ => None,
            };
            let op = entry
                .history
                .propose(&identity, action, now_ms)
                .map_err(|e| refused(&e))?;
            if let Some(state) = write.state {
                entry.state = state;
            }
            write.ops.push(stored(&op));
            write.changed();
            // Everyone who was or is a member or invitee is brought up to date: an invitee
            // gets the whole history, the others what they lack.
            let mut also: Vec<OnionAddress> = before.members.values().map(|m| m.address).collect();
            also.extend(removed);
            let entry = &self.by_id[&group];
            let audience = self.audience(entry.history.membership(), &also, relation);
            for peer in &audience {
                for envelope in Groups::catch_up(&mut self.held, group, &entry.history, peer, rng) {
                    write.send.push((*peer, envelope));
                }
            }
            deliver.extend(audience);
        }
        let view = self.view(group, &self.by_id[&group], relation);
        let has_write = !write.ops.is_empty()
            || write.state.is_some()
            || write.chat_out.is_some()
            || write.keep_history.is_some();
        self.name_peers(&mut write);
        Ok(Decision {
            write: has_write.then_some(write),
            view: Some(view),
            list: Vec::new(),
            deliver,
        })
    }

    /// Group operations from `peer`, whom the machine admitted for group traffic (a contact,
    /// or someone [`Groups::admits`]).
    pub(crate) fn operations_from(
        &mut self,
        peer: OnionAddress,
        message: GroupOperations,
        rng: &mut ChaCha20Rng,
        relation: &dyn Fn(&OnionAddress) -> Relation,
    ) -> PeerDecision {
        let id = message.id;
        let group = message.group;
        let mut ops = Vec::with_capacity(message.operations.len());
        for wire in message.operations {
            match SignedOperation::from_wire(wire) {
                Ok(op) => ops.push(op),
                Err(e) => {
                    info!(peer = %peer.redacted(), error = %e, "refused group operations that do not verify");
                    return refuse(id, reject::MALFORMED);
                }
            }
        }
        let me = self.me;
        let received: Vec<OpId> = ops.iter().map(SignedOperation::id).collect();
        // A full message may have more of its history behind it.
        let more_may_follow = ops.len() == MAX_GROUP_OPERATIONS_PER_MESSAGE;
        let mut write = GroupWrite::new(group);
        // What to acknowledge once this commits: this message, and for an invitation that came
        // in several, the earlier ones too.
        let mut acks = vec![id];
        let new: Vec<SignedOperation> = match self.by_id.get_mut(&group) {
            Some(entry) => {
                let mut new = Vec::new();
                for op in ops {
                    if op.operation().group != group {
                        return refuse(id, reject::MALFORMED);
                    }
                    match entry.history.add(op) {
                        Ok(Added::Added(ids)) => {
                            new.extend(ids.iter().filter_map(|i| entry.history.get(i).cloned()));
                        }
                        Ok(Added::Duplicate | Added::Waiting(_)) => {}
                        Err(e) => {
                            debug!(peer = %peer.redacted(), error = %e, "a group operation does not fit");
                        }
                    }
                }
                new
            }
            None if relation(&peer) != Relation::Contact => {
                // A group we do not hold is opened only by a contact's invitation.
                debug!(peer = %peer.redacted(), "group operations from a non-contact for a group we do not hold");
                return refuse(id, NOT_A_MEMBER);
            }
            None => {
                // Only an invitation for us (with the history it builds on) opens a group here.
                // A long history arrives in several messages, the invitation in the last, every
                // one before it full: until it is there, what came is held in memory and not
                // acknowledged (so a session that breaks meanwhile makes the sender send it all
                // again). A message that is not full and brings no invitation for us ends it:
                // everything held for it is refused.
                let key = (group, peer.public_key());
                let (history, mut waiting_ids) = match self.provisional.remove(&key) {
                    Some((mut history, ids)) => {
                        for op in ops {
                            if let Err(e) = history.add(op) {
                                debug!(peer = %peer.redacted(), error = %e, "a group operation does not fit");
                            }
                        }
                        (history, ids)
                    }
                    None => match History::from_operations(ops) {
                        Ok((history, _)) => (history, Vec::new()),
                        Err(_) => return refuse(id, NOT_A_MEMBER),
                    },
                };
                if history.group() != group {
                    return refuse(id, reject::MALFORMED);
                }
                waiting_ids.push(id);
                let invited = invitation_for(history.membership(), &me)
                    .map(|inv| invited_event(group, history.membership(), inv));
                let Some(invited) = invited else {
                    if !more_may_follow
                        || self.provisional.len() >= MAX_PROVISIONAL
                        || waiting_ids.len() * MAX_GROUP_OPERATIONS_PER_MESSAGE
                            > carom_group::limits::MAX_OPERATIONS
                    {
                        debug!(peer = %peer.redacted(), "group operations for a group we are not invited to");
                        return PeerDecision {
                            answer: vec![Message::Reject(Reject {
                                ids: waiting_ids,
                                reason: NOT_A_MEMBER,
                                text: None,
                            })],
                            ..PeerDecision::default()
                        };
                    }
                    self.provisional.insert(key, (history, waiting_ids));
                    return PeerDecision::default();
                };
                write.state = Some(GroupState::Invited);
                write.events.push(invited);
                info!(group = ?group, "invited to a group");
                let new: Vec<SignedOperation> = history.operations().cloned().collect();
                self.by_id.insert(
                    group,
                    Entry {
                        state: GroupState::Invited,
                        history,
                        keep_history: true,
                    },
                );
                acks = waiting_ids;
                new
            }
        };
        // The peer holds what it sent (and what that builds on).
        self.held
            .entry((group, peer.public_key()))
            .or_default()
            .extend(received.iter().copied());
        let mut deliver = Vec::new();
        if !new.is_empty() {
            write.ops = new.iter().map(stored).collect();
            let Some(entry) = self.by_id.get_mut(&group) else {
                return PeerDecision::default();
            };
            if entry.state == GroupState::Member && !entry.history.membership().is_member(&me) {
                entry.state = GroupState::Left;
                write.state = Some(GroupState::Left);
                info!(group = ?group, "removed from a group");
            }
            // Invited (again) to a group we had left, been removed from or declined.
            let again = invitation_for(entry.history.membership(), &me)
                .filter(|inv| new.iter().any(|op| op.id() == inv.id))
                .map(|inv| invited_event(group, entry.history.membership(), inv));
            if matches!(entry.state, GroupState::Left | GroupState::Declined)
                && let Some(invited) = again
            {
                entry.state = GroupState::Invited;
                write.state = Some(GroupState::Invited);
                write.events.push(invited);
                info!(group = ?group, "invited to a group again");
            }
            if write.state != Some(GroupState::Invited) {
                write.changed();
            }
        }
        // Catch up whoever lacks something we hold — the members who are not contacts of the
        // author hear of a change this way, and so does the peer if it lacks what crossed.
        let entry = &self.by_id[&group];
        if entry.state == GroupState::Member {
            let audience = self.audience(entry.history.membership(), &[peer], relation);
            for member in &audience {
                let envelopes =
                    Groups::catch_up(&mut self.held, group, &entry.history, member, rng);
                if !envelopes.is_empty() {
                    deliver.push(*member);
                }
                for envelope in envelopes {
                    write.send.push((*member, envelope));
                }
            }
        }
        self.name_peers(&mut write);
        PeerDecision {
            write: (!write.ops.is_empty() || write.state.is_some() || !write.send.is_empty())
                .then_some(write),
            answer: vec![Message::Ack(Ack { ids: acks })],
            deliver,
        }
    }

    /// A group message from an admitted peer: stored (and then acknowledged) if it names a
    /// state whose members include it and us, that agrees with its digest, and it is a member
    /// still (§15.3); refused otherwise; left unanswered while we lack operations it names.
    /// A member withdrew a group message it sent: acknowledged, and the store erases our copy
    /// (only if `peer` sent it) or, if `peer` is a member, keeps a tombstone in its place.
    /// Refused for a group we do not hold.
    pub(crate) fn withdraw_from(
        &mut self,
        peer: OnionAddress,
        withdrawal: carom_proto::GroupWithdraw,
    ) -> PeerDecision {
        let id = withdrawal.id;
        let Some(entry) = self.by_id.get(&withdrawal.group) else {
            return refuse(id, NOT_A_MEMBER);
        };
        let mut write = GroupWrite::new(withdrawal.group);
        write.in_memory = !entry.keep_history;
        write.withdraw_in = Some(IncomingWithdraw {
            sender: peer,
            target: withdrawal.target,
            heads: entry.history.heads(),
            may_precede: entry.history.membership().is_member(&peer),
        });
        PeerDecision {
            write: Some(write),
            answer: vec![Message::Ack(Ack { ids: vec![id] })],
            deliver: Vec::new(),
        }
    }

    pub(crate) fn chat_from(&mut self, peer: OnionAddress, chat: GroupChat) -> PeerDecision {
        let id = chat.id;
        let Some(entry) = self.by_id.get(&chat.group) else {
            return refuse(id, NOT_A_MEMBER);
        };
        if entry.state != GroupState::Member {
            return refuse(id, NOT_A_MEMBER);
        }
        let at: Membership = match entry.history.membership_at(&chat.heads) {
            Ok(m) => m,
            Err(HistoryError::Unknown(missing)) => {
                // Its operations travel ahead of it (and are relayed); until they are here it
                // stays unacknowledged, and its sender sends it again.
                debug!(peer = %peer.redacted(), missing = missing.len(), "a group message waits for operations it names");
                return PeerDecision::default();
            }
            Err(_) => return refuse(id, reject::MALFORMED),
        };
        let now = entry.history.membership();
        if !at.is_member(&peer) || !at.is_member(&self.me) || !now.is_member(&peer) {
            info!(peer = %peer.redacted(), "refused a group message from outside its set of ends");
            return refuse(id, NOT_A_MEMBER);
        }
        if at.members_digest() != chat.members_digest.0 {
            warn!(peer = %peer.redacted(), "refused a group message whose set of ends differs from ours");
            return refuse(id, reject::MALFORMED);
        }
        let mut write = GroupWrite::new(chat.group);
        write.in_memory = !entry.keep_history;
        write.chat_in = Some(IncomingChat {
            sender: peer,
            msg_id: id,
            heads: chat.heads,
            sent_at: chat.sent_at,
            body: chat.body,
            reply_to: chat.reply_to,
            expires_after: chat.expires_after,
        });
        PeerDecision {
            write: Some(write),
            answer: vec![Message::Ack(Ack { ids: vec![id] })],
            deliver: Vec::new(),
        }
    }
}

/// Reject code: the sender (or we) are not a member of the group the message is for.
pub(crate) const NOT_A_MEMBER: u32 = reject::NOT_A_MEMBER;

/// The invitation for `me` that stands in `membership`, if any.
fn invitation_for<'m>(membership: &'m Membership, me: &OnionAddress) -> Option<&'m Invitation> {
    membership
        .invitations
        .values()
        .find(|inv| inv.invitee == *me)
}

/// The `group.invited` event for `invitation`.
fn invited_event(group: GroupId, membership: &Membership, invitation: &Invitation) -> EventData {
    EventData::GroupInvited(event::GroupInvited {
        group: hex::encode(group.0),
        name: membership.name.clone(),
        inviter: invitation.inviter.to_string(),
    })
}

/// Refuse a group message by id, for good, with `reason`.
pub(crate) fn refuse(id: MessageId, reason: u32) -> PeerDecision {
    PeerDecision {
        write: None,
        answer: vec![Message::Reject(Reject {
            ids: vec![id],
            reason,
            text: None,
        })],
        deliver: Vec::new(),
    }
}

fn require_member(entry: &Entry) -> Result<()> {
    if entry.state == GroupState::Member {
        Ok(())
    } else {
        Err(EngineError::InvalidState(format!(
            "we are not a member of this group (it is {})",
            entry.state
        )))
    }
}

#[cfg(test)]
mod tests {
    use rand_core::SeedableRng as _;

    use super::*;

    fn person(n: u8) -> Groups {
        Groups::new(IdentityKey::from_seed(&[n; 32]))
    }

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::from_seed([7; 32])
    }

    /// Everyone is a contact of everyone.
    const EVERYONE: &dyn Fn(&OnionAddress) -> Relation = &|_| Relation::Contact;

    /// The group-operations messages `write` queues for `to`.
    fn sent_to(write: &GroupWrite, to: &OnionAddress) -> Vec<GroupOperations> {
        write
            .send
            .iter()
            .filter(|(peer, _)| peer == to)
            .map(|(_, bytes)| match Message::decode(bytes) {
                Ok(carom_proto::Decoded::Known(Message::GroupOperations(m))) => m,
                other => panic!("not group operations: {other:?}"),
            })
            .collect()
    }

    fn deliver(
        from: &GroupWrite,
        from_peer: &OnionAddress,
        to: &mut Groups,
        rng: &mut ChaCha20Rng,
    ) -> PeerDecision {
        let me = to.me;
        let mut last = PeerDecision::default();
        for message in sent_to(from, &me) {
            last = to.operations_from(*from_peer, message, rng, EVERYONE);
        }
        last
    }

    fn chat(group: GroupId, heads: Vec<OpId>, digest: [u8; 32]) -> GroupChat {
        GroupChat {
            id: MessageId([1; 16]),
            group,
            heads,
            members_digest: Digest32(digest),
            sent_at: 0,
            body: "hi".into(),
            reply_to: None,
            expires_after: None,
        }
    }

    fn rejected(d: &PeerDecision) -> Option<u32> {
        match d.answer.as_slice() {
            [Message::Reject(r)] => Some(r.reason),
            _ => None,
        }
    }

    #[test]
    fn a_group_message_is_taken_only_from_a_member_of_its_set_of_ends_that_still_is_one() {
        let mut rng = rng();
        let (mut alice, mut bob, mallory) = (person(1), person(2), person(3));
        let created = alice
            .command(
                GroupCommand::Create {
                    name: "G".into(),
                    members_can_invite: false,
                    member_name: String::new(),
                    kind: PeerKind::Human,
                },
                1,
                &mut rng,
                EVERYONE,
            )
            .expect("created");
        let id = created.write.as_ref().expect("a write").group;
        let invited = alice
            .command(
                GroupCommand::Invite {
                    group: id,
                    invitee: bob.me,
                    role: Role::Member,
                },
                2,
                &mut rng,
                EVERYONE,
            )
            .expect("invited");
        let got = deliver(
            invited.write.as_ref().expect("a write"),
            &alice.me,
            &mut bob,
            &mut rng,
        );
        assert_eq!(
            got.write.as_ref().and_then(|w| w.state),
            Some(GroupState::Invited)
        );
        let accepted = bob
            .command(
                GroupCommand::Accept {
                    group: id,
                    name: "bob".into(),
                    kind: PeerKind::Human,
                },
                3,
                &mut rng,
                EVERYONE,
            )
            .expect("accepted");
        deliver(
            accepted.write.as_ref().expect("a write"),
            &bob.me,
            &mut alice,
            &mut rng,
        );
        let history = &alice.by_id[&id].history;
        assert!(history.membership().is_member(&bob.me));
        let heads = history.heads();
        let digest = history.membership().members_digest();

        // From a member, naming a state it and we are in, with the right digest: stored.
        let ok = alice.chat_from(bob.me, chat(id, heads.clone(), digest));
        assert!(ok.write.as_ref().is_some_and(|w| w.chat_in.is_some()));
        assert!(matches!(ok.answer.as_slice(), [Message::Ack(_)]));
        // From a non-member who knows the id and the heads: refused.
        let outsider = alice.chat_from(mallory.me, chat(id, heads.clone(), digest));
        assert_eq!(rejected(&outsider), Some(NOT_A_MEMBER));
        assert!(outsider.write.is_none());
        // A set of ends that differs from ours: refused.
        let skewed = alice.chat_from(bob.me, chat(id, heads.clone(), [0; 32]));
        assert_eq!(rejected(&skewed), Some(reject::MALFORMED));
        // A state we do not know yet: no answer until its operations arrive.
        let ahead = alice.chat_from(bob.me, chat(id, vec![OpId([9; 32])], digest));
        assert!(ahead.answer.is_empty() && ahead.write.is_none());
        // A withdrawal: a member's may come before its message; an outsider's only erases
        // what it sent, which is nothing.
        let withdraw = |target| carom_proto::GroupWithdraw {
            id: MessageId([7; 16]),
            group: id,
            target: MessageId(target),
        };
        let precedes = |d: &PeerDecision| {
            d.write
                .as_ref()
                .and_then(|w| w.withdraw_in.as_ref())
                .map(|w| w.may_precede)
        };
        assert_eq!(
            precedes(&alice.withdraw_from(bob.me, withdraw([1; 16]))),
            Some(true)
        );
        assert_eq!(
            precedes(&alice.withdraw_from(mallory.me, withdraw([1; 16]))),
            Some(false)
        );
        // Once Bob is removed, even a message naming the old state is refused.
        alice
            .command(
                GroupCommand::Remove {
                    group: id,
                    member: bob.me,
                },
                4,
                &mut rng,
                EVERYONE,
            )
            .expect("removed");
        let late = alice.chat_from(bob.me, chat(id, heads, digest));
        assert_eq!(rejected(&late), Some(NOT_A_MEMBER));
        // A removed member may still withdraw a message of theirs we hold, and no more.
        assert_eq!(
            precedes(&alice.withdraw_from(bob.me, withdraw([1; 16]))),
            Some(false)
        );
    }

    #[test]
    fn operations_for_a_group_we_are_not_invited_to_are_refused_and_keep_nothing() {
        let mut rng = rng();
        let (mut alice, mut bob, carol) = (person(1), person(2), person(3));
        let created = alice
            .command(
                GroupCommand::Create {
                    name: "G".into(),
                    members_can_invite: false,
                    member_name: String::new(),
                    kind: PeerKind::Human,
                },
                1,
                &mut rng,
                EVERYONE,
            )
            .expect("created");
        let id = created.write.as_ref().expect("a write").group;
        // Alice invites Carol, and (wrongly) sends the history to Bob too.
        let invited = alice
            .command(
                GroupCommand::Invite {
                    group: id,
                    invitee: carol.me,
                    role: Role::Member,
                },
                2,
                &mut rng,
                EVERYONE,
            )
            .expect("invited");
        let mut to_bob = sent_to(invited.write.as_ref().expect("a write"), &carol.me);
        let decision = bob.operations_from(alice.me, to_bob.remove(0), &mut rng, EVERYONE);
        assert_eq!(rejected(&decision), Some(NOT_A_MEMBER));
        assert!(decision.write.is_none());
        assert!(bob.by_id.is_empty());
    }
}
