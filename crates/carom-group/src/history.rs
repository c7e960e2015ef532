//! A group's history of operations, and the membership every member computes from it.
//!
//! The history is a DAG: each operation names the heads its author had seen. Resolution
//! (`docs/protocol.md` §15.2) is a pure function of the *set* of operations, never of the
//! order they arrived in, so every member that holds the same operations computes the same
//! membership. It goes:
//!
//! 1. Order the operations canonically: a topological order (every operation after the ones it
//!    builds on) that breaks ties by the smallest id.
//! 2. Apply them in that order, each checked against the membership so far; one that fails its
//!    check has no effect (and is reported as ignored, with why).
//! 3. **Removal beats what the removed did concurrently.** When an admin removes (or demotes) a
//!    member, every operation of that member that is concurrent with the removal (neither
//!    builds on the other) is void, whatever its place in the order: resolution starts again
//!    with those operations set aside, until nothing more is set aside. One exception keeps
//!    mutual removals symmetric: if X removes Y while Y concurrently removes X, both take
//!    effect (neither can take the group from the other by winning a race).
//! 4. An invitation stands until it is accepted, its invitee is removed, or its inviter leaves
//!    or is removed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use carom_proto::{IdentityKey, OnionAddress, PeerKind};
use sha3::{Digest as _, Sha3_256};

use crate::limits::{MAX_MEMBERS, MAX_OPERATIONS, MAX_WAITING};
use crate::op::{Action, Operation, Policy, Role, SignedOperation};
use carom_proto::{GroupId, OpId};

/// A member of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Who.
    pub address: OnionAddress,
    /// What it declared itself to be when it joined.
    pub kind: PeerKind,
    /// The name it gave itself in the group.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The operation that made it a member (the creation, or its acceptance).
    pub joined_by: OpId,
    /// Who invited it (`None` for the creator).
    pub invited_by: Option<OnionAddress>,
}

/// An invitation nobody has accepted yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invitation {
    /// The invite operation.
    pub id: OpId,
    /// Who is invited.
    pub invitee: OnionAddress,
    /// The role they will have.
    pub role: Role,
    /// Who invited them.
    pub inviter: OnionAddress,
}

/// What a set of operations says the group is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The group's name.
    pub name: String,
    /// Its settings.
    pub policy: Policy,
    /// Its disappearing-message timer in seconds (`None`: off): each group message carries
    /// the timer in force when it was sent, and each member erases it that long after storing
    /// it.
    pub timer: Option<u32>,
    /// Its members, by identity key.
    pub members: BTreeMap<[u8; 32], Member>,
    /// Invitations not yet accepted or withdrawn, by invite id.
    pub invitations: BTreeMap<OpId, Invitation>,
}

impl Membership {
    /// Whether `address` is a member.
    pub fn is_member(&self, address: &OnionAddress) -> bool {
        self.members.contains_key(&address.public_key())
    }

    /// The member `address`, if it is one.
    pub fn member(&self, address: &OnionAddress) -> Option<&Member> {
        self.members.get(&address.public_key())
    }

    /// The digest of the set of ends: SHA3-256 of [`MEMBERS_DIGEST_LABEL`] followed by, for each
    /// member in ascending order of identity key, the key and its kind (0 human, 1 bot). A
    /// group message carries it so that a receiver whose view of the set differs refuses the
    /// message instead of showing it as sent to the wrong people.
    pub fn members_digest(&self) -> [u8; 32] {
        let mut hash = Sha3_256::new();
        hash.update(MEMBERS_DIGEST_LABEL);
        for (key, member) in &self.members {
            hash.update(key);
            hash.update([match member.kind {
                PeerKind::Human => 0u8,
                PeerKind::Bot => 1u8,
            }]);
        }
        hash.finalize().into()
    }
}

/// Domain separation for [`Membership::members_digest`].
pub const MEMBERS_DIGEST_LABEL: &[u8] = b"carom/group-members/v1";

/// Why an operation in the history has no effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ignored {
    /// Its author was not a member at its place in the order.
    NotAMember,
    /// Its author lacked the role it needs.
    NotAllowed,
    /// The person it would add is already a member.
    AlreadyMember,
    /// The member it names is not one (and has no pending invitation).
    NoSuchMember,
    /// The invitation it accepts does not stand (accepted already, withdrawn or void).
    NoSuchInvitation,
    /// Someone other than the invitee accepted.
    NotTheInvitee,
    /// The group has [`MAX_MEMBERS`] members.
    GroupFull,
    /// A member tried to remove itself (that is what leaving is for).
    RemovedItself,
    /// Its author was removed or demoted by an operation concurrent with it.
    ConcurrentlyRemoved,
}

impl Ignored {
    /// A stable name, for the API and the vectors.
    pub fn name(self) -> &'static str {
        match self {
            Ignored::NotAMember => "not_a_member",
            Ignored::NotAllowed => "not_allowed",
            Ignored::AlreadyMember => "already_member",
            Ignored::NoSuchMember => "no_such_member",
            Ignored::NoSuchInvitation => "no_such_invitation",
            Ignored::NotTheInvitee => "not_the_invitee",
            Ignored::GroupFull => "group_full",
            Ignored::RemovedItself => "removed_itself",
            Ignored::ConcurrentlyRemoved => "concurrently_removed",
        }
    }
}

/// Why an operation was not added to a history.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// It belongs to another group.
    #[error("the operation belongs to another group")]
    WrongGroup,
    /// The history begins with a creation; there can be only one.
    #[error("the group already has a creation; an operation without parents is refused")]
    SecondCreation,
    /// Only a creation may have no parents.
    #[error("an operation other than the creation must build on earlier ones")]
    NoParents,
    /// An acceptance must build on the invitation it accepts.
    #[error("the acceptance does not build on the invitation it accepts")]
    AcceptWithoutInvitation,
    /// The history has [`MAX_OPERATIONS`] operations.
    #[error("the group's history is full ({MAX_OPERATIONS} operations)")]
    Full,
    /// Too many operations are waiting for their parents.
    #[error("{MAX_WAITING} operations are already waiting for the ones they build on")]
    TooManyWaiting,
    /// The first operation of a history must be a creation.
    #[error("a group's history begins with its creation")]
    NotACreation,
    /// A local change that would have no effect (see the reason).
    #[error("the change would have no effect: {}", .0.name())]
    WouldBeIgnored(Ignored),
    /// The last admin may not leave or step down while others remain: name another first.
    #[error("you are the group's last admin: make another member an admin first")]
    LastAdmin,
    /// Heads asked about that are not in the history.
    #[error("{} operations named are not in the history", .0.len())]
    Unknown(Vec<OpId>),
}

/// What adding an operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Added {
    /// It was there already.
    Duplicate,
    /// It was added, and so were these that had been waiting for it (in the order added).
    Added(Vec<OpId>),
    /// It waits for these operations it builds on.
    Waiting(Vec<OpId>),
}

struct Node {
    op: SignedOperation,
    author: [u8; 32],
    parents: Vec<usize>,
    /// The indices of every operation it builds on, directly or not. Every ancestor was added
    /// before it, so the set has at most `index` bits.
    ancestors: BitSet,
}

/// One group's history, and its resolution.
pub struct History {
    group: GroupId,
    nodes: Vec<Node>,
    index: HashMap<OpId, usize>,
    waiting: BTreeMap<OpId, SignedOperation>,
    heads: BTreeSet<OpId>,
    resolved: Resolution,
}

/// The result of resolving a set of operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// The membership.
    pub membership: Membership,
    /// The operations that had no effect, and why.
    pub ignored: BTreeMap<OpId, Ignored>,
}

impl History {
    /// A history that begins with `creation`.
    pub fn new(creation: SignedOperation) -> Result<History, HistoryError> {
        let Action::Create { .. } = creation.operation().action else {
            return Err(HistoryError::NotACreation);
        };
        if !creation.operation().parents.is_empty() {
            return Err(HistoryError::NotACreation);
        }
        let mut history = History {
            group: creation.operation().group,
            nodes: Vec::new(),
            index: HashMap::new(),
            waiting: BTreeMap::new(),
            heads: BTreeSet::new(),
            resolved: Resolution {
                membership: empty_membership(),
                ignored: BTreeMap::new(),
            },
        };
        history.attach(creation);
        history.resolved = history.resolve(None);
        Ok(history)
    }

    /// Create a new group as `creator`.
    pub fn create(
        creator: &IdentityKey,
        group: GroupId,
        name: String,
        policy: Policy,
        kind: PeerKind,
        member_name: String,
        now_ms: u64,
    ) -> History {
        let op = Operation {
            group,
            author: creator.address(),
            parents: Vec::new(),
            created_at: now_ms,
            action: Action::Create {
                name,
                policy,
                kind,
                member_name,
            },
        }
        .sign(creator);
        match History::new(op) {
            Ok(history) => history,
            Err(_) => unreachable!("a creation without parents starts a history"),
        }
    }

    /// Rebuild a history from operations in any order (a store's, or a peer's full history).
    /// Operations that do not fit are reported, not fatal.
    pub fn from_operations(
        ops: impl IntoIterator<Item = SignedOperation>,
    ) -> Result<(History, Vec<(OpId, HistoryError)>), HistoryError> {
        let mut ops: Vec<SignedOperation> = ops.into_iter().collect();
        let creation = ops
            .iter()
            .position(|op| op.operation().parents.is_empty())
            .ok_or(HistoryError::NotACreation)?;
        let mut history = History::new(ops.swap_remove(creation))?;
        let mut refused = Vec::new();
        for op in ops {
            let id = op.id();
            if let Err(e) = history.add(op) {
                refused.push((id, e));
            }
        }
        Ok((history, refused))
    }

    /// The group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The operations no other operation builds on, ascending.
    pub fn heads(&self) -> Vec<OpId> {
        self.heads.iter().copied().collect()
    }

    /// How many operations the history holds (not counting those waiting).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: a history holds at least its creation.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether the history holds `id`.
    pub fn contains(&self, id: &OpId) -> bool {
        self.index.contains_key(id)
    }

    /// The operation `id`.
    pub fn get(&self, id: &OpId) -> Option<&SignedOperation> {
        self.index.get(id).map(|&i| &self.nodes[i].op)
    }

    /// Every operation, each after the ones it builds on.
    pub fn operations(&self) -> impl Iterator<Item = &SignedOperation> {
        self.nodes.iter().map(|node| &node.op)
    }

    /// The operations a peer whose heads are `theirs` lacks, each after the ones it builds on.
    /// Heads this history does not hold are passed over (the peer knows something this side
    /// does not: it will send it).
    pub fn missing_for(&self, theirs: &[OpId]) -> Vec<&SignedOperation> {
        let known = self.closure(theirs.iter().filter_map(|id| self.index.get(id).copied()));
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !known.get(*i))
            .map(|(_, node)| &node.op)
            .collect()
    }

    /// Whether neither of two operations builds on the other (`None` if one is not held).
    pub fn are_concurrent(&self, a: &OpId, b: &OpId) -> Option<bool> {
        Some(self.concurrent(*self.index.get(a)?, *self.index.get(b)?))
    }

    /// The membership now, with everything the history holds.
    pub fn membership(&self) -> &Membership {
        &self.resolved.membership
    }

    /// The whole resolution: membership and ignored operations.
    pub fn resolution(&self) -> &Resolution {
        &self.resolved
    }

    /// The membership as it was with exactly the operations `heads` build on (and `heads`): the
    /// set of ends a message naming these heads was sent to.
    pub fn membership_at(&self, heads: &[OpId]) -> Result<Membership, HistoryError> {
        let unknown: Vec<OpId> = heads
            .iter()
            .filter(|id| !self.index.contains_key(id))
            .copied()
            .collect();
        if !unknown.is_empty() {
            return Err(HistoryError::Unknown(unknown));
        }
        let mask = self.closure(heads.iter().map(|id| self.index[id]));
        Ok(self.resolve(Some(&mask)).membership)
    }

    /// Add an operation received from a peer (or read back from the store).
    pub fn add(&mut self, op: SignedOperation) -> Result<Added, HistoryError> {
        let id = op.id();
        if self.index.contains_key(&id) || self.waiting.contains_key(&id) {
            return Ok(Added::Duplicate);
        }
        self.admissible(&op)?;
        let missing: Vec<OpId> = op
            .operation()
            .parents
            .iter()
            .filter(|p| !self.index.contains_key(p))
            .copied()
            .collect();
        if !missing.is_empty() {
            if self.waiting.len() >= MAX_WAITING {
                return Err(HistoryError::TooManyWaiting);
            }
            self.waiting.insert(id, op);
            return Ok(Added::Waiting(missing));
        }
        self.check_accept(&op)?;
        self.attach(op);
        let mut added = vec![id];
        // Release whatever was waiting for what is now here (repeatedly: a chain may unfold).
        loop {
            let ready: Vec<OpId> = self
                .waiting
                .iter()
                .filter(|(_, op)| {
                    op.operation()
                        .parents
                        .iter()
                        .all(|p| self.index.contains_key(p))
                })
                .map(|(id, _)| *id)
                .collect();
            if ready.is_empty() {
                break;
            }
            for id in ready {
                let Some(op) = self.waiting.remove(&id) else {
                    continue;
                };
                // One that does not fit after all is dropped: it can never fit.
                if self.nodes.len() < MAX_OPERATIONS && self.check_accept(&op).is_ok() {
                    self.attach(op);
                    added.push(id);
                }
            }
        }
        self.resolved = self.resolve(None);
        Ok(Added::Added(added))
    }

    /// Make a change as `author`, building on every head: the signed operation to send to the
    /// members, already added here. Refused with the reason if it would have no effect.
    pub fn propose(
        &mut self,
        author: &IdentityKey,
        action: Action,
        now_ms: u64,
    ) -> Result<SignedOperation, HistoryError> {
        if let Action::Create { .. } = action {
            return Err(HistoryError::SecondCreation);
        }
        if self.would_orphan(&author.address(), &action) {
            return Err(HistoryError::LastAdmin);
        }
        let op = Operation {
            group: self.group,
            author: author.address(),
            parents: self.heads(),
            created_at: now_ms,
            action,
        }
        .sign(author);
        self.admissible(&op)?;
        self.check_accept(&op)?;
        // Try it: only a change that takes effect is made.
        let id = op.id();
        self.attach(op.clone());
        let resolved = self.resolve(None);
        if let Some(&reason) = resolved.ignored.get(&id) {
            self.detach_last();
            return Err(HistoryError::WouldBeIgnored(reason));
        }
        self.resolved = resolved;
        Ok(op)
    }

    /// Whether `action` by `author` would leave members without any admin. Concurrent changes
    /// can still end that way (two last admins leaving at once); locally it is refused, since a
    /// group without admins can no longer change its policy, roles or name.
    fn would_orphan(&self, author: &OnionAddress, action: &Action) -> bool {
        let membership = self.membership();
        let steps_down = match action {
            // Leaving an otherwise empty group is how it ends.
            Action::Leave => membership.members.len() > 1,
            Action::SetRole { member, role } => member == author && *role == Role::Member,
            _ => false,
        };
        let Some(me) = membership.member(author) else {
            return false;
        };
        steps_down
            && me.role == Role::Admin
            && membership
                .members
                .values()
                .filter(|m| m.role == Role::Admin)
                .count()
                == 1
    }

    fn admissible(&self, op: &SignedOperation) -> Result<(), HistoryError> {
        let body = op.operation();
        if body.group != self.group {
            return Err(HistoryError::WrongGroup);
        }
        if body.parents.is_empty() {
            return Err(if let Action::Create { .. } = body.action {
                HistoryError::SecondCreation
            } else {
                HistoryError::NoParents
            });
        }
        if let Action::Create { .. } = body.action {
            return Err(HistoryError::SecondCreation);
        }
        if self.nodes.len() >= MAX_OPERATIONS {
            return Err(HistoryError::Full);
        }
        Ok(())
    }

    /// An acceptance must build on its invitation (its parents are all present).
    fn check_accept(&self, op: &SignedOperation) -> Result<(), HistoryError> {
        let Action::Accept { invite, .. } = op.operation().action else {
            return Ok(());
        };
        let Some(&invite) = self.index.get(&invite) else {
            return Err(HistoryError::AcceptWithoutInvitation);
        };
        let parents = op.operation().parents.iter().map(|p| self.index[p]);
        if self.closure(parents).get(invite) {
            Ok(())
        } else {
            Err(HistoryError::AcceptWithoutInvitation)
        }
    }

    fn attach(&mut self, op: SignedOperation) {
        let index = self.nodes.len();
        let parents: Vec<usize> = op
            .operation()
            .parents
            .iter()
            .map(|p| self.index[p])
            .collect();
        let mut ancestors = BitSet::with_len(index);
        for &p in &parents {
            ancestors.set(p);
            ancestors.union_with(&self.nodes[p].ancestors);
        }
        for p in &op.operation().parents {
            self.heads.remove(p);
        }
        self.heads.insert(op.id());
        self.index.insert(op.id(), index);
        self.nodes.push(Node {
            author: op.operation().author.public_key(),
            op,
            parents,
            ancestors,
        });
    }

    /// Undo the last [`Self::attach`] (of an operation nothing builds on yet).
    fn detach_last(&mut self) {
        let Some(node) = self.nodes.pop() else {
            return;
        };
        self.index.remove(&node.op.id());
        self.heads.remove(&node.op.id());
        for &p in &node.parents {
            let id = self.nodes[p].op.id();
            let still_built_on = self.nodes.iter().any(|n| n.parents.contains(&p));
            if !still_built_on {
                self.heads.insert(id);
            }
        }
    }

    /// The given operations and everything they build on.
    fn closure(&self, of: impl Iterator<Item = usize>) -> BitSet {
        let mut mask = BitSet::with_len(self.nodes.len());
        for i in of {
            mask.set(i);
            mask.union_with(&self.nodes[i].ancestors);
        }
        mask
    }

    /// Neither builds on the other.
    fn concurrent(&self, a: usize, b: usize) -> bool {
        a != b && !self.nodes[a].ancestors.get(b) && !self.nodes[b].ancestors.get(a)
    }

    /// The canonical order of the operations in `mask` (all if `None`): topological, ties to
    /// the smallest id.
    fn canonical_order(&self, mask: Option<&BitSet>) -> Vec<usize> {
        let inside = |i: usize| mask.is_none_or(|m| m.get(i));
        let mut waiting_on = vec![0usize; self.nodes.len()];
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); self.nodes.len()];
        let mut ready = BTreeSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if !inside(i) {
                continue;
            }
            // A mask is closed under ancestry, so every parent is inside too.
            waiting_on[i] = node.parents.len();
            for &p in &node.parents {
                children[p].push(i);
            }
            if node.parents.is_empty() {
                ready.insert((node.op.id(), i));
            }
        }
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some((_, i)) = ready.pop_first() {
            order.push(i);
            for &c in &children[i] {
                waiting_on[c] -= 1;
                if waiting_on[c] == 0 {
                    ready.insert((self.nodes[c].op.id(), c));
                }
            }
        }
        order
    }

    fn resolve(&self, mask: Option<&BitSet>) -> Resolution {
        let order = self.canonical_order(mask);
        let mut void = BTreeSet::new();
        loop {
            let (resolution, more_void) = self.apply_in_order(&order, &void);
            if more_void.is_subset(&void) {
                return resolution;
            }
            void.extend(more_void);
        }
    }

    /// One pass of resolution with the operations in `void` set aside. Returns the result and
    /// the operations this pass found void (a superset of `void` once nothing changes).
    fn apply_in_order(
        &self,
        order: &[usize],
        void: &BTreeSet<usize>,
    ) -> (Resolution, BTreeSet<usize>) {
        let mut state = empty_membership();
        let mut ignored = BTreeMap::new();
        let mut found_void = BTreeSet::new();
        // Members who lost their rights to someone else's operation: by whom, in which
        // operation, and whether they had been admins.
        let mut lost: HashMap<[u8; 32], Loss> = HashMap::new();
        let in_order: BTreeSet<usize> = order.iter().copied().collect();
        for &i in order {
            let node = &self.nodes[i];
            if void.contains(&i) {
                ignored.insert(node.op.id(), Ignored::ConcurrentlyRemoved);
                continue;
            }
            match self.apply(&mut state, &mut lost, i) {
                Ok(Some(loser)) => {
                    // Everything the loser did concurrently with losing is void, except
                    // taking the same rights from whoever took theirs (mutual removal).
                    let author = node.author;
                    let demotion = matches!(node.op.operation().action, Action::SetRole { .. });
                    for &j in &in_order {
                        let other = &self.nodes[j];
                        if other.author != loser || !self.concurrent(i, j) {
                            continue;
                        }
                        let action = &other.op.operation().action;
                        if strips(action, &author) {
                            continue;
                        }
                        if demotion && !needs_admin(action, &state.policy) {
                            continue;
                        }
                        found_void.insert(j);
                    }
                }
                Ok(None) => {}
                Err(reason) => {
                    ignored.insert(node.op.id(), reason);
                }
            }
        }
        found_void.extend(void.iter().copied());
        (
            Resolution {
                membership: state,
                ignored,
            },
            found_void,
        )
    }

    /// Apply operation `i` to `state`. Returns the member who lost rights by it (removed or
    /// demoted by someone else), or why it has no effect.
    fn apply(
        &self,
        state: &mut Membership,
        lost: &mut HashMap<[u8; 32], Loss>,
        i: usize,
    ) -> Result<Option<[u8; 32]>, Ignored> {
        let node = &self.nodes[i];
        let op = node.op.operation();
        let author = node.author;
        let author_role = state.members.get(&author).map(|m| m.role);
        // An admin who lost its rights to X concurrently may still take the same from X.
        let mutual = |target: &OnionAddress| {
            lost.get(&author).is_some_and(|loss| {
                loss.by == target.public_key() && loss.was_admin && self.concurrent(loss.op, i)
            })
        };
        let require_admin = || match author_role {
            None => Err(Ignored::NotAMember),
            Some(Role::Admin) => Ok(()),
            Some(Role::Member) => Err(Ignored::NotAllowed),
        };
        match &op.action {
            Action::Create {
                name,
                policy,
                kind,
                member_name,
            } => {
                state.name.clone_from(name);
                state.policy = *policy;
                state.members.insert(
                    author,
                    Member {
                        address: op.author,
                        kind: *kind,
                        name: member_name.clone(),
                        role: Role::Admin,
                        joined_by: node.op.id(),
                        invited_by: None,
                    },
                );
                Ok(None)
            }
            Action::Invite { invitee, role } => {
                match author_role {
                    None => return Err(Ignored::NotAMember),
                    Some(Role::Admin) => {}
                    Some(Role::Member) => {
                        if !(state.policy.members_can_invite && *role == Role::Member) {
                            return Err(Ignored::NotAllowed);
                        }
                    }
                }
                if state.is_member(invitee) {
                    return Err(Ignored::AlreadyMember);
                }
                state.invitations.insert(
                    node.op.id(),
                    Invitation {
                        id: node.op.id(),
                        invitee: *invitee,
                        role: *role,
                        inviter: op.author,
                    },
                );
                Ok(None)
            }
            Action::Accept { invite, kind, name } => {
                let Some(invitation) = state.invitations.get(invite) else {
                    return Err(Ignored::NoSuchInvitation);
                };
                if invitation.invitee != op.author {
                    return Err(Ignored::NotTheInvitee);
                }
                if author_role.is_some() {
                    return Err(Ignored::AlreadyMember);
                }
                if state.members.len() >= MAX_MEMBERS {
                    return Err(Ignored::GroupFull);
                }
                let invitation = state
                    .invitations
                    .remove(invite)
                    .ok_or(Ignored::NoSuchInvitation)?;
                state.members.insert(
                    author,
                    Member {
                        address: op.author,
                        kind: *kind,
                        name: name.clone(),
                        role: invitation.role,
                        joined_by: node.op.id(),
                        invited_by: Some(invitation.inviter),
                    },
                );
                lost.remove(&author);
                Ok(None)
            }
            Action::Remove { member } => {
                if *member == op.author {
                    return Err(Ignored::RemovedItself);
                }
                if !mutual(member) {
                    require_admin()?;
                }
                let key = member.public_key();
                if let Some(removed) = state.members.remove(&key) {
                    withdraw_invitations_by(state, member);
                    lost.insert(
                        key,
                        Loss {
                            by: author,
                            op: i,
                            was_admin: removed.role == Role::Admin,
                        },
                    );
                    Ok(Some(key))
                } else {
                    // Withdrawing someone's invitations also voids what they did concurrently
                    // (accepting another invitation the remover had not seen, say).
                    let before = state.invitations.len();
                    state.invitations.retain(|_, inv| inv.invitee != *member);
                    if state.invitations.len() == before {
                        Err(Ignored::NoSuchMember)
                    } else {
                        Ok(Some(key))
                    }
                }
            }
            Action::Leave => {
                if state.members.remove(&author).is_none() {
                    return Err(Ignored::NotAMember);
                }
                withdraw_invitations_by(state, &op.author);
                Ok(None)
            }
            Action::SetRole { member, role } => {
                let demoting_other = *role == Role::Member && *member != op.author;
                if !(demoting_other && mutual(member)) {
                    require_admin()?;
                }
                let key = member.public_key();
                let Some(target) = state.members.get_mut(&key) else {
                    return Err(Ignored::NoSuchMember);
                };
                let was_admin = target.role == Role::Admin;
                target.role = *role;
                if demoting_other && was_admin {
                    lost.insert(
                        key,
                        Loss {
                            by: author,
                            op: i,
                            was_admin,
                        },
                    );
                    Ok(Some(key))
                } else {
                    Ok(None)
                }
            }
            Action::Rename { name } => {
                require_admin()?;
                state.name.clone_from(name);
                Ok(None)
            }
            Action::SetPolicy { policy } => {
                require_admin()?;
                state.policy = *policy;
                Ok(None)
            }
            Action::SetTimer { timer } => {
                require_admin()?;
                state.timer = *timer;
                Ok(None)
            }
        }
    }
}

/// How a member lost its rights.
struct Loss {
    by: [u8; 32],
    op: usize,
    was_admin: bool,
}

/// Whether `action` removes or demotes `whom`.
fn strips(action: &Action, whom: &[u8; 32]) -> bool {
    match action {
        Action::Remove { member } => member.public_key() == *whom,
        Action::SetRole { member, role } => *role == Role::Member && member.public_key() == *whom,
        _ => false,
    }
}

/// Whether only an admin may do `action` under `policy`.
fn needs_admin(action: &Action, policy: &Policy) -> bool {
    match action {
        Action::Invite { role, .. } => *role == Role::Admin || !policy.members_can_invite,
        Action::Remove { .. }
        | Action::SetRole { .. }
        | Action::Rename { .. }
        | Action::SetPolicy { .. }
        | Action::SetTimer { .. } => true,
        Action::Create { .. } | Action::Accept { .. } | Action::Leave => false,
    }
}

/// An invitation stands only while its inviter is a member: removing someone must not leave
/// the people they invited free to join.
fn withdraw_invitations_by(state: &mut Membership, inviter: &OnionAddress) {
    state.invitations.retain(|_, inv| inv.inviter != *inviter);
}

fn empty_membership() -> Membership {
    Membership {
        name: String::new(),
        timer: None,
        policy: Policy {
            members_can_invite: false,
        },
        members: BTreeMap::new(),
        invitations: BTreeMap::new(),
    }
}

/// A fixed-size set of small integers.
#[derive(Clone)]
struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    fn with_len(len: usize) -> BitSet {
        BitSet {
            words: vec![0; len.div_ceil(64)],
        }
    }

    fn set(&mut self, i: usize) {
        let word = i / 64;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (i % 64);
    }

    fn get(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn union_with(&mut self, other: &BitSet) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }
}
