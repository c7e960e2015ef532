//! Group operations: what they say, their one encoding, and their signatures.
//!
//! An operation's *body* is a canonical CBOR map (`docs/protocol.md` §15.1). The author signs
//! the body's bytes with its identity key, and the operation's id is the SHA3-256 of those same
//! bytes, so an id names exactly one body. A receiver decodes the body, encodes it again and
//! refuses it unless the bytes are identical: one operation has one encoding, hence one id.

use std::fmt;

use carom_proto::{GroupId, GroupOperation, IdentityKey, OnionAddress, OpId, PeerKind};
use minicbor::{Decoder, Encoder};

use crate::limits::{MAX_NAME_BYTES, MAX_OPERATION_BYTES, MAX_PARENTS};

/// What a member may do beyond sending messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Sends and reads; invites only where the group's policy lets members invite.
    Member,
    /// Also invites, removes, changes roles, renames the group and sets its policy.
    Admin,
}

impl Role {
    fn code(self) -> u8 {
        match self {
            Role::Member => 0,
            Role::Admin => 1,
        }
    }

    fn from_code(code: u8) -> Option<Role> {
        match code {
            0 => Some(Role::Member),
            1 => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The group's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    /// Whether members who are not admins may invite (as members, never as admins).
    pub members_can_invite: bool,
}

/// What an operation does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Type 0: the group's first operation. Its author is its first member, an admin.
    Create {
        /// The group's name.
        name: String,
        /// The group's settings.
        policy: Policy,
        /// What the creator declares itself to be.
        kind: PeerKind,
        /// The creator's name in the group.
        member_name: String,
    },
    /// Type 1: the first consent to adding someone. They are not a member until they accept.
    Invite {
        /// Who is invited.
        invitee: OnionAddress,
        /// The role they will have.
        role: Role,
    },
    /// Type 2: the second consent, by the invitee. It must build on the invitation.
    Accept {
        /// The invitation accepted.
        invite: OpId,
        /// What the new member declares itself to be.
        kind: PeerKind,
        /// The new member's name in the group.
        name: String,
    },
    /// Type 3: an admin removes a member (or withdraws someone's pending invitations).
    Remove {
        /// Who is removed.
        member: OnionAddress,
    },
    /// Type 4: the author leaves.
    Leave,
    /// Type 5: an admin changes a member's role.
    SetRole {
        /// Whose role.
        member: OnionAddress,
        /// The new role.
        role: Role,
    },
    /// Type 6: an admin renames the group.
    Rename {
        /// The new name.
        name: String,
    },
    /// Type 7: an admin changes the group's settings.
    SetPolicy {
        /// The new settings.
        policy: Policy,
    },
    /// Type 8: an admin sets the group's disappearing-message timer (or turns it off).
    SetTimer {
        /// Seconds, 1 to [`carom_proto::MAX_TIMER_SECS`]; `None`: off.
        timer: Option<u32>,
    },
}

impl Action {
    /// The wire number of the action.
    pub fn code(&self) -> u8 {
        match self {
            Action::Create { .. } => 0,
            Action::Invite { .. } => 1,
            Action::Accept { .. } => 2,
            Action::Remove { .. } => 3,
            Action::Leave => 4,
            Action::SetRole { .. } => 5,
            Action::Rename { .. } => 6,
            Action::SetPolicy { .. } => 7,
            Action::SetTimer { .. } => 8,
        }
    }

    /// A short name, for logs and the vectors.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Create { .. } => "create",
            Action::Invite { .. } => "invite",
            Action::Accept { .. } => "accept",
            Action::Remove { .. } => "remove",
            Action::Leave => "leave",
            Action::SetRole { .. } => "set_role",
            Action::Rename { .. } => "rename",
            Action::SetPolicy { .. } => "set_policy",
            Action::SetTimer { .. } => "set_timer",
        }
    }
}

/// An operation's body: who did what, in which group, building on which operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The group.
    pub group: GroupId,
    /// Who made it (and signed it).
    pub author: OnionAddress,
    /// The operations it builds on: the heads of the author's history when it was made, in
    /// ascending order of id. Empty only for [`Action::Create`].
    pub parents: Vec<OpId>,
    /// When the author made it, in milliseconds since the Unix epoch, by the author's clock.
    /// For display only: nothing is decided by it.
    pub created_at: u64,
    /// What it does.
    pub action: Action,
}

/// Why an operation's bytes were refused before they reached a history.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OperationError {
    /// Not the CBOR shape of §15.1.
    #[error("malformed group operation: {0}")]
    Malformed(String),
    /// Valid CBOR, but not the one canonical encoding of what it says.
    #[error("the group operation is not in canonical form")]
    NotCanonical,
    /// The signature is not the author's.
    #[error("the group operation's signature is not its author's")]
    BadSignature,
    /// A field is over its limit.
    #[error("{field} is {found}; the limit is {limit}")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Its size.
        found: usize,
        /// The limit.
        limit: usize,
    },
}

impl Operation {
    /// The canonical encoding of the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        // Writing to a Vec cannot fail.
        let _ = self.encode_into(&mut e);
        e.into_writer()
    }

    fn encode_into(
        &self,
        e: &mut Encoder<Vec<u8>>,
    ) -> Result<(), minicbor::encode::Error<std::convert::Infallible>> {
        e.map(5)?;
        e.u8(0)?.bytes(&self.group.0)?;
        e.u8(1)?.bytes(&self.author.public_key())?;
        e.u8(2)?.array(self.parents.len() as u64)?;
        for parent in &self.parents {
            e.bytes(&parent.0)?;
        }
        e.u8(3)?.u64(self.created_at)?;
        e.u8(4)?;
        match &self.action {
            Action::Create {
                name,
                policy,
                kind,
                member_name,
            } => {
                e.array(5)?
                    .u8(0)?
                    .str(name)?
                    .bool(policy.members_can_invite)?;
                e.u8(kind_code(*kind))?.str(member_name)?;
            }
            Action::Invite { invitee, role } => {
                e.array(3)?
                    .u8(1)?
                    .bytes(&invitee.public_key())?
                    .u8(role.code())?;
            }
            Action::Accept { invite, kind, name } => {
                e.array(4)?
                    .u8(2)?
                    .bytes(&invite.0)?
                    .u8(kind_code(*kind))?
                    .str(name)?;
            }
            Action::Remove { member } => {
                e.array(2)?.u8(3)?.bytes(&member.public_key())?;
            }
            Action::Leave => {
                e.array(1)?.u8(4)?;
            }
            Action::SetRole { member, role } => {
                e.array(3)?
                    .u8(5)?
                    .bytes(&member.public_key())?
                    .u8(role.code())?;
            }
            Action::Rename { name } => {
                e.array(2)?.u8(6)?.str(name)?;
            }
            Action::SetPolicy { policy } => {
                e.array(2)?.u8(7)?.bool(policy.members_can_invite)?;
            }
            Action::SetTimer { timer } => {
                e.array(2)?.u8(8)?;
                match timer {
                    Some(secs) => e.u32(*secs)?,
                    None => e.null()?,
                };
            }
        }
        Ok(())
    }

    /// Decode a body, refusing anything but its canonical encoding.
    pub fn decode(body: &[u8]) -> Result<Operation, OperationError> {
        if body.len() > MAX_OPERATION_BYTES {
            return Err(OperationError::TooLarge {
                field: "operation body (bytes)",
                found: body.len(),
                limit: MAX_OPERATION_BYTES,
            });
        }
        let mut d = Decoder::new(body);
        let op = decode_body(&mut d).map_err(|e| OperationError::Malformed(e.to_string()))?;
        if d.position() != body.len() {
            return Err(OperationError::Malformed(
                "bytes after the operation body".into(),
            ));
        }
        op.check_limits()?;
        if op.encode() != body {
            return Err(OperationError::NotCanonical);
        }
        Ok(op)
    }

    /// Check the size limits (before signing and after decoding).
    pub fn check_limits(&self) -> Result<(), OperationError> {
        fn limit(field: &'static str, found: usize, limit: usize) -> Result<(), OperationError> {
            if found > limit {
                Err(OperationError::TooLarge {
                    field,
                    found,
                    limit,
                })
            } else {
                Ok(())
            }
        }
        limit("parents", self.parents.len(), MAX_PARENTS)?;
        match &self.action {
            Action::Create {
                name, member_name, ..
            } => {
                limit("group name (bytes)", name.len(), MAX_NAME_BYTES)?;
                limit("member name (bytes)", member_name.len(), MAX_NAME_BYTES)
            }
            Action::Accept { name, .. } => limit("member name (bytes)", name.len(), MAX_NAME_BYTES),
            Action::Rename { name } => limit("group name (bytes)", name.len(), MAX_NAME_BYTES),
            Action::SetTimer { timer: Some(secs) }
                if *secs == 0 || *secs > carom_proto::MAX_TIMER_SECS =>
            {
                Err(OperationError::Malformed(format!(
                    "a timer of {secs} s is outside 1 s to four weeks"
                )))
            }
            Action::Invite { .. }
            | Action::Remove { .. }
            | Action::Leave
            | Action::SetRole { .. }
            | Action::SetPolicy { .. }
            | Action::SetTimer { .. } => Ok(()),
        }
    }

    /// Sign this operation as `identity`, which must be its author.
    ///
    /// # Panics
    /// If `identity` is not the author, or the operation is over a limit: both are bugs of the
    /// caller, which builds the operation itself.
    pub fn sign(self, identity: &IdentityKey) -> SignedOperation {
        assert_eq!(
            identity.address(),
            self.author,
            "an operation is signed by its author"
        );
        if let Err(e) = self.check_limits() {
            panic!("signing an operation over a limit: {e}");
        }
        let body = self.encode();
        let signature = identity.sign_group_operation(&body);
        SignedOperation {
            id: OpId::of_body(&body),
            body,
            signature,
            op: self,
        }
    }
}

fn kind_code(kind: PeerKind) -> u8 {
    match kind {
        PeerKind::Human => 0,
        PeerKind::Bot => 1,
    }
}

fn kind_from_code(code: u8) -> Result<PeerKind, minicbor::decode::Error> {
    match code {
        0 => Ok(PeerKind::Human),
        1 => Ok(PeerKind::Bot),
        _ => Err(minicbor::decode::Error::message("a kind is 0 or 1")),
    }
}

fn role_from_code(code: u8) -> Result<Role, minicbor::decode::Error> {
    Role::from_code(code).ok_or_else(|| minicbor::decode::Error::message("a role is 0 or 1"))
}

fn address(d: &mut Decoder<'_>) -> Result<OnionAddress, minicbor::decode::Error> {
    let key: [u8; 32] = d
        .bytes()?
        .try_into()
        .map_err(|_| minicbor::decode::Error::message("an identity key is 32 bytes"))?;
    OnionAddress::from_public_key(&key)
        .map_err(|_| minicbor::decode::Error::message("not a valid ed25519 identity key"))
}

fn op_id(d: &mut Decoder<'_>) -> Result<OpId, minicbor::decode::Error> {
    let id: [u8; 32] = d
        .bytes()?
        .try_into()
        .map_err(|_| minicbor::decode::Error::message("an operation id is 32 bytes"))?;
    Ok(OpId(id))
}

fn definite(len: Option<u64>, what: &str) -> Result<u64, minicbor::decode::Error> {
    len.ok_or_else(|| {
        minicbor::decode::Error::message(format!("{what} must have a definite length"))
    })
}

fn decode_body(d: &mut Decoder<'_>) -> Result<Operation, minicbor::decode::Error> {
    // The canonical form is exactly this sequence; anything else fails here or in the
    // re-encoding comparison.
    if definite(d.map()?, "the body")? != 5 {
        return Err(minicbor::decode::Error::message("the body has 5 entries"));
    }
    let mut key = |expected: u8| -> Result<(), minicbor::decode::Error> {
        if d.u8()? == expected {
            Ok(())
        } else {
            Err(minicbor::decode::Error::message(
                "body keys are 0 to 4 in order",
            ))
        }
    };
    key(0)?;
    let group: [u8; 16] = d
        .bytes()?
        .try_into()
        .map_err(|_| minicbor::decode::Error::message("a group id is 16 bytes"))?;
    if d.u8()? != 1 {
        return Err(minicbor::decode::Error::message(
            "body keys are 0 to 4 in order",
        ));
    }
    let author = address(d)?;
    if d.u8()? != 2 {
        return Err(minicbor::decode::Error::message(
            "body keys are 0 to 4 in order",
        ));
    }
    let count = definite(d.array()?, "the parents")?;
    if count > MAX_PARENTS as u64 {
        return Err(minicbor::decode::Error::message("too many parents"));
    }
    let mut parents = Vec::with_capacity(MAX_PARENTS);
    for _ in 0..count {
        parents.push(op_id(d)?);
    }
    if !parents.windows(2).all(|w| w[0] < w[1]) {
        return Err(minicbor::decode::Error::message(
            "parents are in strictly ascending order",
        ));
    }
    if d.u8()? != 3 {
        return Err(minicbor::decode::Error::message(
            "body keys are 0 to 4 in order",
        ));
    }
    let created_at = d.u64()?;
    if d.u8()? != 4 {
        return Err(minicbor::decode::Error::message(
            "body keys are 0 to 4 in order",
        ));
    }
    let len = definite(d.array()?, "the action")?;
    let code = d.u8()?;
    let (action, expected_len) = match code {
        0 => {
            let name = d.str()?.to_owned();
            let members_can_invite = d.bool()?;
            let kind = kind_from_code(d.u8()?)?;
            let member_name = d.str()?.to_owned();
            (
                Action::Create {
                    name,
                    policy: Policy { members_can_invite },
                    kind,
                    member_name,
                },
                5,
            )
        }
        1 => {
            let invitee = address(d)?;
            let role = role_from_code(d.u8()?)?;
            (Action::Invite { invitee, role }, 3)
        }
        2 => {
            let invite = op_id(d)?;
            let kind = kind_from_code(d.u8()?)?;
            let name = d.str()?.to_owned();
            (Action::Accept { invite, kind, name }, 4)
        }
        3 => (
            Action::Remove {
                member: address(d)?,
            },
            2,
        ),
        4 => (Action::Leave, 1),
        5 => {
            let member = address(d)?;
            let role = role_from_code(d.u8()?)?;
            (Action::SetRole { member, role }, 3)
        }
        6 => (
            Action::Rename {
                name: d.str()?.to_owned(),
            },
            2,
        ),
        7 => (
            Action::SetPolicy {
                policy: Policy {
                    members_can_invite: d.bool()?,
                },
            },
            2,
        ),
        8 => {
            let timer = if d.datatype()? == minicbor::data::Type::Null {
                d.null()?;
                None
            } else {
                Some(d.u32()?)
            };
            (Action::SetTimer { timer }, 2)
        }
        other => {
            return Err(minicbor::decode::Error::message(format!(
                "unknown action {other}"
            )));
        }
    };
    if len != expected_len {
        return Err(minicbor::decode::Error::message(format!(
            "action {code} has {expected_len} elements"
        )));
    }
    Ok(Operation {
        group: GroupId(group),
        author,
        parents,
        created_at,
        action,
    })
}

/// An operation with its author's signature, as it travels and is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedOperation {
    id: OpId,
    body: Vec<u8>,
    signature: [u8; 64],
    op: Operation,
}

impl fmt::Debug for SignedOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedOperation")
            .field("id", &self.id)
            .field("author", &self.op.author.redacted())
            .field("action", &self.op.action.name())
            .finish()
    }
}

impl SignedOperation {
    /// The id (SHA3-256 of the body).
    pub fn id(&self) -> OpId {
        self.id
    }

    /// What the operation says.
    pub fn operation(&self) -> &Operation {
        &self.op
    }

    /// The body's bytes, exactly as signed.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The author's signature of the body.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// The wire form: `[body: bstr, signature: bstr .size 64]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::with_capacity(self.body.len() + 72));
        let _ = self.encode_into(&mut e);
        e.into_writer()
    }

    /// Append the wire form to `e`.
    pub fn encode_into<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.array(2)?.bytes(&self.body)?.bytes(&self.signature)?;
        Ok(())
    }

    /// Decode and verify one wire form occupying all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<SignedOperation, OperationError> {
        let mut d = Decoder::new(bytes);
        let op = SignedOperation::decode_from(&mut d)?;
        if d.position() != bytes.len() {
            return Err(OperationError::Malformed(
                "bytes after the signed operation".into(),
            ));
        }
        Ok(op)
    }

    /// Decode and verify one wire form from `d`.
    pub fn decode_from(d: &mut Decoder<'_>) -> Result<SignedOperation, OperationError> {
        let malformed = |e: minicbor::decode::Error| OperationError::Malformed(e.to_string());
        if d.array().map_err(malformed)? != Some(2) {
            return Err(OperationError::Malformed(
                "a signed operation is a definite array of two byte strings".into(),
            ));
        }
        let body = d.bytes().map_err(malformed)?.to_vec();
        let signature: [u8; 64] = d
            .bytes()
            .map_err(malformed)?
            .try_into()
            .map_err(|_| OperationError::Malformed("a signature is 64 bytes".into()))?;
        SignedOperation::from_parts(body, signature)
    }

    /// The form a [`carom_proto::GroupOperations`] message carries.
    pub fn to_wire(&self) -> GroupOperation {
        GroupOperation {
            body: self.body.clone(),
            signature: self.signature,
        }
    }

    /// Verify an operation received in a [`carom_proto::GroupOperations`] message.
    pub fn from_wire(wire: GroupOperation) -> Result<SignedOperation, OperationError> {
        SignedOperation::from_parts(wire.body, wire.signature)
    }

    /// Verify a body and its signature (as read back from a store, say).
    pub fn from_parts(
        body: Vec<u8>,
        signature: [u8; 64],
    ) -> Result<SignedOperation, OperationError> {
        let op = Operation::decode(&body)?;
        if !op.author.verifies_group_operation(&body, &signature) {
            return Err(OperationError::BadSignature);
        }
        Ok(SignedOperation {
            id: OpId::of_body(&body),
            body,
            signature,
            op,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(n: u8) -> IdentityKey {
        IdentityKey::from_seed(&[n; 32])
    }

    fn samples() -> Vec<Operation> {
        let alice = identity(1).address();
        let bob = identity(2).address();
        let group = GroupId([7; 16]);
        let parent = |n| vec![OpId([n; 32])];
        let op = |parents, action| Operation {
            group,
            author: alice,
            parents,
            created_at: 1_700_000_000_000,
            action,
        };
        vec![
            op(
                vec![],
                Action::Create {
                    name: "Reporters".into(),
                    policy: Policy {
                        members_can_invite: false,
                    },
                    kind: PeerKind::Human,
                    member_name: "alice".into(),
                },
            ),
            op(
                parent(1),
                Action::Invite {
                    invitee: bob,
                    role: Role::Member,
                },
            ),
            op(
                parent(2),
                Action::Accept {
                    invite: OpId([2; 32]),
                    kind: PeerKind::Bot,
                    name: "bot".into(),
                },
            ),
            op(parent(3), Action::Remove { member: bob }),
            op(parent(4), Action::Leave),
            op(
                parent(5),
                Action::SetRole {
                    member: bob,
                    role: Role::Admin,
                },
            ),
            op(
                parent(6),
                Action::Rename {
                    name: "Desk".into(),
                },
            ),
            op(
                vec![OpId([1; 32]), OpId([9; 32])],
                Action::SetPolicy {
                    policy: Policy {
                        members_can_invite: true,
                    },
                },
            ),
            op(parent(7), Action::SetTimer { timer: Some(3_600) }),
            op(parent(8), Action::SetTimer { timer: None }),
        ]
    }

    #[test]
    fn every_action_round_trips_signed() {
        for op in samples() {
            let signed = op.clone().sign(&identity(1));
            let back = SignedOperation::decode(&signed.encode()).expect("decodes");
            assert_eq!(back.operation(), &op);
            assert_eq!(back.id(), OpId::of_body(&op.encode()));
        }
    }

    #[test]
    fn a_signature_by_anyone_but_the_author_is_refused() {
        let op = samples().remove(1);
        let body = op.encode();
        let forged = identity(2).sign_group_operation(&body);
        assert_eq!(
            SignedOperation::from_parts(body.clone(), forged),
            Err(OperationError::BadSignature)
        );
        let mut signature = identity(1).sign_group_operation(&body);
        signature[10] ^= 1;
        assert_eq!(
            SignedOperation::from_parts(body, signature),
            Err(OperationError::BadSignature)
        );
    }

    #[test]
    fn a_non_canonical_body_is_refused_even_when_signed() {
        let mut op = samples().remove(1);
        op.created_at = 5;
        let body = op.encode();
        // The same map with created_at (5) in a longer integer form than it needs.
        let mut e = Encoder::new(Vec::new());
        e.map(5).unwrap();
        e.u8(0).unwrap().bytes(&op.group.0).unwrap();
        e.u8(1).unwrap().bytes(&op.author.public_key()).unwrap();
        e.u8(2)
            .unwrap()
            .array(1)
            .unwrap()
            .bytes(&op.parents[0].0)
            .unwrap();
        let mut longer = e.into_writer();
        longer.extend_from_slice(&[0x03, 0x1b]);
        longer.extend_from_slice(&op.created_at.to_be_bytes());
        let tail_start = body.len() - 38; // key 4 and the invite action
        longer.extend_from_slice(&body[tail_start..]);
        assert_eq!(
            Operation::decode(&longer),
            Err(OperationError::NotCanonical)
        );
        let signature = identity(1).sign_group_operation(&longer);
        assert_eq!(
            SignedOperation::from_parts(longer, signature),
            Err(OperationError::NotCanonical)
        );
    }

    #[test]
    fn limits_are_enforced_on_decode() {
        let mut op = samples().remove(6);
        op.action = Action::Rename {
            name: "x".repeat(MAX_NAME_BYTES + 1),
        };
        assert!(matches!(
            Operation::decode(&op.encode()),
            Err(OperationError::TooLarge { .. })
        ));
        for timer in [0, carom_proto::MAX_TIMER_SECS + 1] {
            op.action = Action::SetTimer { timer: Some(timer) };
            assert!(
                matches!(
                    Operation::decode(&op.encode()),
                    Err(OperationError::Malformed(_))
                ),
                "a {timer} s timer decoded"
            );
        }
        op.action = Action::Leave;
        op.parents = (0..=16u8).map(|n| OpId([n; 32])).collect();
        assert!(op.parents.len() > MAX_PARENTS);
        assert!(matches!(
            Operation::decode(&op.encode()),
            Err(OperationError::Malformed(_))
        ));
    }

    #[test]
    fn parents_out_of_order_are_malformed() {
        let mut op = samples().remove(7);
        op.parents.reverse();
        assert!(matches!(
            Operation::decode(&op.encode()),
            Err(OperationError::Malformed(_))
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &[][..],
            &[0x82],
            &[0x82, 0x40, 0x40],
            &[0xa5, 0x00],
            &[0x9f, 0xff],
            &[0xff; 40],
        ] {
            assert!(SignedOperation::decode(bytes).is_err());
        }
    }
}
