//! Groups: the parameters and results of the `group.*` methods (see `docs/api.md`).

use serde::{Deserialize, Serialize};

use crate::{Direction, PeerKind};

/// Where this profile stands in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupState {
    /// Someone invited us; we have not answered (`group.accept`, `group.decline`).
    Invited,
    /// We are a member.
    Member,
    /// We declined the invitation.
    Declined,
    /// We left, or were removed.
    Left,
    /// A state newer than this client knows.
    #[serde(other)]
    Unknown,
}

/// A member's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GroupRole {
    /// Sends and reads; invites only where the group lets members invite.
    #[default]
    Member,
    /// Also invites, removes, changes roles, renames and sets the policy.
    Admin,
}

/// One member of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    /// Their onion address.
    pub address: String,
    /// The name they gave themselves in the group.
    pub name: String,
    /// What they declared themselves to be when they joined: every member sees it.
    pub kind: PeerKind,
    /// Their role.
    pub role: GroupRole,
    /// Whether they are an accepted contact of ours (only contacts are reached directly).
    pub contact: bool,
    /// Whether this is us.
    pub me: bool,
}

/// An invitation nobody has answered yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInvitation {
    /// Who is invited.
    pub invitee: String,
    /// The role they will have.
    pub role: GroupRole,
    /// Who invited them.
    pub inviter: String,
}

/// A group, as this profile sees it now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The group's id (32 hex digits).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Where we stand.
    pub state: GroupState,
    /// Whether members who are not admins may invite.
    pub members_can_invite: bool,
    /// Our role, if we are a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<GroupRole>,
    /// Every member, with their kind and role (an invitee sees them before accepting).
    pub members: Vec<GroupMember>,
    /// Invitations not yet answered.
    pub invitations: Vec<GroupInvitation>,
    /// Who invited us, while we are invited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invited_by: Option<String>,
    /// The group's disappearing-message timer in seconds (absent: off), set by an admin with
    /// `group.set_timer`; every member's copy of the history gives the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<u32>,
    /// Whether this daemon writes the group's messages to its store (`false`: history off,
    /// they live in its memory only; see `group.set_history`). Ours alone: other members keep
    /// their copies as their own settings say.
    #[serde(default = "crate::yes")]
    pub keep_history: bool,
}

/// Parameters naming a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupParams {
    /// The group's id.
    pub group: String,
}

/// Parameters of `group.create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCreate {
    /// The group's name.
    pub name: String,
    /// Let members who are not admins invite (default: only admins).
    #[serde(default)]
    pub members_can_invite: bool,
    /// Our name in the group (default: empty).
    #[serde(default)]
    pub member_name: String,
    /// What we declare ourselves to be.
    #[serde(default)]
    pub kind: PeerKind,
}

/// Parameters of `group.invite`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInvite {
    /// The group.
    pub group: String,
    /// Whom to invite (an accepted contact).
    pub address: String,
    /// The role they will have (default: member).
    #[serde(default)]
    pub role: GroupRole,
}

/// Parameters of `group.accept`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupAccept {
    /// The group.
    pub group: String,
    /// Our name in the group (default: empty).
    #[serde(default)]
    pub name: String,
    /// What we declare ourselves to be.
    #[serde(default)]
    pub kind: PeerKind,
}

/// Parameters naming a member of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMemberParams {
    /// The group.
    pub group: String,
    /// The member.
    pub address: String,
}

/// Parameters of `group.set_role`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSetRole {
    /// The group.
    pub group: String,
    /// The member.
    pub address: String,
    /// The new role.
    pub role: GroupRole,
}

/// Parameters of `group.rename`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRename {
    /// The group.
    pub group: String,
    /// The new name.
    pub name: String,
}

/// Parameters of `group.set_policy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSetPolicy {
    /// The group.
    pub group: String,
    /// Let members who are not admins invite.
    pub members_can_invite: bool,
}

/// Parameters of `group.set_timer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSetTimer {
    /// The group.
    pub group: String,
    /// Seconds, 1 to [`crate::MAX_TIMER_SECS`]; absent or `null`: off.
    #[serde(default)]
    pub timer: Option<u32>,
}

/// Parameters of `group.set_history`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSetHistory {
    /// The group.
    pub group: String,
    /// `false`: from now on the group's messages live in memory only, never written; `true`:
    /// they are stored again.
    pub keep_history: bool,
}

/// Parameters of `group.send`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSend {
    /// The group.
    pub group: String,
    /// The text (at most [`crate::MAX_BODY_BYTES`] bytes).
    pub body: String,
    /// The `msg_id` of the group message this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Idempotency key, as for `message.send`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
}

/// Parameters of `group.history`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupHistory {
    /// The group.
    pub group: String,
    /// Only messages with `id` below this (for the next page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
    /// Page size (default 50, at most 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// How far an outgoing group message got to one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Stored here, not yet acknowledged by them.
    Queued,
    /// Their daemon acknowledged it after storing it durably.
    Delivered,
    /// It will not reach them (see `failure`).
    Failed,
    /// A state newer than this client knows.
    #[serde(other)]
    Unknown,
}

/// One recipient of an outgoing group message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDelivery {
    /// The recipient.
    pub address: String,
    /// How far it got.
    pub status: DeliveryStatus,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// A group message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMessage {
    /// Local id: stable, increasing; the cursor for paging.
    pub id: i64,
    /// The group.
    pub group: String,
    /// The protocol message id (hex), the same at every member.
    pub msg_id: String,
    /// Who sent it.
    pub sender: String,
    /// In or out.
    pub direction: Direction,
    /// The text.
    pub body: String,
    /// The sender's timestamp (ms since the Unix epoch, sender's clock).
    pub sent_at: u64,
    /// When it was stored here.
    pub stored_at: u64,
    /// The `msg_id` this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The set of ends it was sent to: every member of the group at the state it names, the
    /// sender included.
    pub sent_to: Vec<String>,
    /// (Outgoing) how far it got to each recipient.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<GroupDelivery>,
    /// The group's disappearing-message timer it was sent under (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<u32>,
    /// When this daemon erases it (ms, its erasure clock); absent: never by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// A message, or a tombstone (`deleted`: deleted for everyone by its sender; body empty).
    #[serde(default)]
    pub kind: crate::MessageKind,
    /// It lives in the daemon's memory only (the group had history off here when it was sent
    /// or received): gone when the daemon stops, and its events are live only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory_only: bool,
}

/// Parameters of `group.delete`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDelete {
    /// The group.
    pub group: String,
    /// The message's local id.
    pub id: i64,
    /// Also at every member it was sent to (only for a message we sent).
    #[serde(default)]
    pub for_everyone: bool,
}

/// Result of `group.history`: newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMessagePage {
    /// The page, newest first.
    pub messages: Vec<GroupMessage>,
    /// Pass as `before` for the next (older) page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<i64>,
}
