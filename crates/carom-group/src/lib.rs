//! # carom-group: group membership without I/O
//!
//! A Carom group has no server: its membership is a history of operations (create, invite,
//! accept, remove, leave, set role, rename, set policy), each signed by the identity key of the
//! member who made it and naming the operations it builds on. Every member holds the history
//! and computes the membership from it with one deterministic rule ([`History`]; the rule is
//! `docs/protocol.md` §15.2), so members that hold the same operations agree on who is in the
//! group, whatever order the operations reached them in. A group message names the heads of
//! its sender's history, which freezes the set of ends it was sent to
//! ([`History::membership_at`]).
//!
//! What it is not: a transport or a store. It does not send operations or messages, decide
//! whom to connect to, or persist anything; the engine does, feeding it operations and asking
//! it who the members are. It reads no clock (callers pass `now`) and draws no randomness
//! (callers pass an RNG where one is needed).

#![forbid(unsafe_code)]

mod history;
pub mod limits;
mod op;

pub use carom_proto::{GroupId, OpId};
pub use history::{
    Added, History, HistoryError, Ignored, Invitation, MEMBERS_DIGEST_LABEL, Member, Membership,
    Resolution,
};
pub use op::{Action, Operation, OperationError, Policy, Role, SignedOperation};
