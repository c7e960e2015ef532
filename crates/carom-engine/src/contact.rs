//! The contact rules, in one place: how a relationship moves when the user or the peer acts,
//! and what each state lets a peer do.
//!
//! [`step`] is pure: a state (or none, for someone who is not a contact) and an input go in;
//! the next state and the effects come out. [`apply`] carries out the effects that touch the
//! store inside the caller's transaction; the caller does the rest (its session's answer and
//! close). The user's side (`contact.add`, `contact.respond`) and the peer's side (a contact
//! request or answer arriving) both go through [`step`], so the two cannot disagree.

use carom_api::event::By;
use carom_proto::{CloseReason, ContactResponse, Decision, Message, MessageId, OnionAddress};
use carom_store::{ContactState, OutboxKind, WriteTx};
use rand_core::OsRng;

use crate::conn::append;
use crate::err::{EngineError, Result};
use crate::view;

/// Something that happens to a relationship.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Input {
    /// The user asks them to become a contact (`contact.add`).
    Add,
    /// The user accepts their request.
    Accept,
    /// The user declines their request.
    Reject,
    /// The user blocks them.
    Block,
    /// The user lifts a block.
    Unblock,
    /// Their contact request arrived.
    PeerAsked,
    /// Their answer to our request arrived.
    PeerAnswered(Decision),
}

impl Input {
    /// Whether the user made this input (rather than the peer).
    #[cfg(test)]
    fn by_user(self) -> bool {
        !matches!(self, Input::PeerAsked | Input::PeerAnswered(_))
    }

    fn verb(self) -> &'static str {
        match self {
            Input::Add => "add",
            Input::Accept => "accept",
            Input::Reject => "reject",
            Input::Block => "block",
            Input::Unblock => "unblock",
            Input::PeerAsked => "receive a request from",
            Input::PeerAnswered(_) => "receive an answer from",
        }
    }
}

/// What carrying out a step involves, besides storing the new state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Queue our contact request, replacing one still queued.
    QueueRequest,
    /// Queue our answer to their request, replacing one still queued.
    QueueAnswer(Decision),
    /// Forget our queued request: it arrived (they answered it).
    DropQueuedRequest,
    /// Forget a queued answer: we changed our mind.
    DropQueuedAnswer,
    /// Fail every queued message: they are blocked.
    FailOutbox,
    /// Tell frontends a stranger asked (`contact.request_received`).
    AnnounceRequest,
    /// Tell frontends the state changed (`contact.state`, by us or by them).
    AnnounceState,
    /// Their session may carry chats now: mark them online, deliver what waits.
    NowAccepted,
    /// (Peer inputs) answer their message with ours at once, on the session it came on.
    ReplyAnswer(Decision),
    /// (Peer inputs) end the session afterwards, for this reason.
    Close(CloseReason),
}

/// The outcome of one input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    /// The state afterwards (`None`: still not a contact).
    pub(crate) state: Option<ContactState>,
    /// What to carry out.
    pub(crate) effects: Vec<Effect>,
}

impl Step {
    fn to(state: ContactState, effects: &[Effect]) -> Step {
        Step {
            state: Some(state),
            effects: effects.to_vec(),
        }
    }

    /// Whether the step includes `effect`.
    pub(crate) fn has(&self, effect: Effect) -> bool {
        self.effects.contains(&effect)
    }

    /// The close reason, if the step ends the peer's session.
    pub(crate) fn close(&self) -> Option<CloseReason> {
        self.effects.iter().find_map(|e| match e {
            Effect::Close(reason) => Some(*reason),
            _ => None,
        })
    }
}

/// The rules: where `state` (`None`: not a contact) goes on `input`. An input the state does
/// not allow is an error for the user's inputs, and changes nothing for the peer's (a peer
/// cannot make us refuse to work).
///
/// A co-member's row ([`ContactState::CoMember`]) is no relationship: it steps as someone
/// who is not a contact (the row is kept, and takes the state the step leads to).
pub(crate) fn step(state: Option<ContactState>, input: Input) -> Result<Step> {
    use ContactState::{Accepted, Blocked, CoMember, Pending, Rejected, Requesting};
    use Effect::*;
    use Input as I;
    let state = state.filter(|s| *s != CoMember);
    let unchanged = |effects: &[Effect]| Step {
        state,
        effects: effects.to_vec(),
    };
    Ok(match (state, input) {
        (Some(CoMember), _) => return Err(EngineError::bug("a co-member row stepped as one")),
        // The user's inputs.
        (None, I::Add) => Step::to(Requesting, &[QueueRequest, AnnounceState]),
        (Some(Requesting), I::Add) => unchanged(&[]),
        (Some(Accepted), I::Add) => {
            return Err(EngineError::AlreadyExists("already a contact".into()));
        }
        (Some(Blocked), I::Add) => {
            return Err(EngineError::InvalidState(
                "this address is blocked; unblock it first".into(),
            ));
        }
        // They asked us already: adding them is accepting.
        (Some(Pending), I::Add | I::Accept) => Step::to(
            Accepted,
            &[QueueAnswer(Decision::Accept), AnnounceState, NowAccepted],
        ),
        // We declined them and changed our mind: the queued refusal must not overtake the
        // request (they would take it as final).
        (Some(Rejected), I::Add) => {
            Step::to(Requesting, &[DropQueuedAnswer, QueueRequest, AnnounceState])
        }
        (Some(Pending), I::Reject) => {
            Step::to(Rejected, &[QueueAnswer(Decision::Reject), AnnounceState])
        }
        (_, I::Block) => Step::to(Blocked, &[FailOutbox, AnnounceState]),
        // They may ask again; we do not tell them anything.
        (Some(Blocked), I::Unblock) => Step::to(Rejected, &[AnnounceState]),
        (None, I::Accept | I::Reject | I::Unblock) => return Err(EngineError::NoSuchContact),
        (Some(s), I::Accept | I::Reject | I::Unblock) => {
            return Err(EngineError::InvalidState(format!(
                "cannot {} a contact that is {}",
                input.verb(),
                s.as_str()
            )));
        }

        // The peer's inputs. Each is acknowledged by the caller (it was stored or handled).
        (None, I::PeerAsked) => Step::to(
            Pending,
            &[AnnounceRequest, Close(CloseReason::RequestReceived)],
        ),
        (Some(Pending), I::PeerAsked) => unchanged(&[Close(CloseReason::RequestReceived)]),
        // They asked while we asked: that is agreement. Tell them so.
        (Some(Requesting), I::PeerAsked) => Step::to(
            Accepted,
            &[QueueAnswer(Decision::Accept), AnnounceState, NowAccepted],
        ),
        // A contact asking again lost their data: agree again, quietly.
        (Some(Accepted), I::PeerAsked) => unchanged(&[QueueAnswer(Decision::Accept), NowAccepted]),
        (Some(Rejected), I::PeerAsked) => {
            unchanged(&[ReplyAnswer(Decision::Reject), Close(CloseReason::Refused)])
        }
        (Some(Blocked), I::PeerAsked) => unchanged(&[Close(CloseReason::Refused)]),
        (None, I::PeerAnswered(_)) => unchanged(&[Close(CloseReason::Refused)]),
        (Some(Requesting), I::PeerAnswered(Decision::Accept)) => {
            Step::to(Accepted, &[DropQueuedRequest, AnnounceState, NowAccepted])
        }
        (Some(Requesting | Accepted), I::PeerAnswered(Decision::Reject)) => Step::to(
            Rejected,
            &[DropQueuedRequest, AnnounceState, Close(CloseReason::Normal)],
        ),
        (Some(_), I::PeerAnswered(_)) => unchanged(&[]),
    })
}

/// Our answer to their request, encoded.
pub(crate) fn answer(decision: Decision) -> Vec<u8> {
    Message::ContactResponse(ContactResponse {
        id: MessageId::random(&mut OsRng),
        decision,
    })
    .encode()
}

/// Carries out `step`'s store effects for contact `id` (`peer`) inside `tx`: the outbox and
/// the `contact.state` event, said to be `by` us or them. `our_request` encodes our contact
/// request, if the step queues one. The session effects ([`Effect::ReplyAnswer`],
/// [`Effect::Close`], [`Effect::NowAccepted`]) and [`Effect::AnnounceRequest`] (which needs the
/// request) are the caller's.
pub(crate) fn apply(
    tx: &WriteTx<'_>,
    id: i64,
    peer: &OnionAddress,
    step: &Step,
    by: By,
    our_request: &dyn Fn() -> Vec<u8>,
    now: u64,
) -> Result<()> {
    for effect in &step.effects {
        match *effect {
            Effect::QueueRequest => {
                tx.remove_outbox_kind(id, OutboxKind::ContactRequest)?;
                tx.enqueue(id, OutboxKind::ContactRequest, None, &our_request(), now)?;
            }
            Effect::QueueAnswer(decision) => {
                tx.remove_outbox_kind(id, OutboxKind::ContactResponse)?;
                tx.enqueue(
                    id,
                    OutboxKind::ContactResponse,
                    None,
                    &answer(decision),
                    now,
                )?;
            }
            Effect::DropQueuedRequest => {
                tx.remove_outbox_kind(id, OutboxKind::ContactRequest)?;
            }
            Effect::DropQueuedAnswer => {
                tx.remove_outbox_kind(id, OutboxKind::ContactResponse)?;
            }
            Effect::FailOutbox => crate::fail_outbox(tx, id, peer, "blocked", now)?,
            Effect::AnnounceState => {
                if let Some(state) = step.state {
                    let change = view::contact_state(state).into();
                    append(tx, &view::state_event(peer, change, by, None), now)?;
                }
            }
            Effect::AnnounceRequest
            | Effect::NowAccepted
            | Effect::ReplyAnswer(_)
            | Effect::Close(_) => {}
        }
    }
    Ok(())
}

/// How a responder proceeds with an authenticated peer in `state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// A session that carries messages (accepted), or our request's answer (requesting).
    Session,
    /// One contact request may arrive, then the session ends.
    RequestOnly,
    /// Refused outright.
    Refuse,
}

/// What a peer in `state` may do when it calls us.
pub(crate) fn admit(state: Option<ContactState>) -> Admit {
    match state {
        Some(ContactState::Blocked) => Admit::Refuse,
        Some(ContactState::Accepted | ContactState::Requesting) => Admit::Session,
        Some(ContactState::Pending | ContactState::Rejected | ContactState::CoMember) | None => {
            Admit::RequestOnly
        }
    }
}

/// Whether we dial a peer in `state` (to deliver what waits for them).
pub(crate) fn may_dial(state: ContactState) -> bool {
    state != ContactState::Blocked
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContactState::{Accepted, Blocked, Pending, Rejected, Requesting};
    use Effect::*;

    const STATES: [Option<ContactState>; 6] = [
        None,
        Some(Requesting),
        Some(Pending),
        Some(Accepted),
        Some(Rejected),
        Some(Blocked),
    ];
    const INPUTS: [Input; 8] = [
        Input::Add,
        Input::Accept,
        Input::Reject,
        Input::Block,
        Input::Unblock,
        Input::PeerAsked,
        Input::PeerAnswered(Decision::Accept),
        Input::PeerAnswered(Decision::Reject),
    ];

    /// The expected outcome of every state and input, written out: a state name, `=` for
    /// unchanged, or the error kind.
    fn expected(state: Option<ContactState>, input: Input) -> (&'static str, Vec<Effect>) {
        use Decision::{Accept, Reject};
        use Input as I;
        let s = |state: Option<ContactState>| state.map_or("none", ContactState::as_str);
        match (s(state), input) {
            ("none", I::Add) => ("requesting", vec![QueueRequest, AnnounceState]),
            ("requesting", I::Add) => ("=", vec![]),
            ("pending", I::Add | I::Accept) => (
                "accepted",
                vec![QueueAnswer(Accept), AnnounceState, NowAccepted],
            ),
            ("accepted", I::Add) => ("already_exists", vec![]),
            ("rejected", I::Add) => (
                "requesting",
                vec![DropQueuedAnswer, QueueRequest, AnnounceState],
            ),
            ("blocked", I::Add) => ("invalid_state", vec![]),
            ("pending", I::Reject) => ("rejected", vec![QueueAnswer(Reject), AnnounceState]),
            (_, I::Block) => ("blocked", vec![FailOutbox, AnnounceState]),
            ("blocked", I::Unblock) => ("rejected", vec![AnnounceState]),
            ("none", I::Accept | I::Reject | I::Unblock) => ("not_found", vec![]),
            (_, I::Accept | I::Reject | I::Unblock) => ("invalid_state", vec![]),
            ("none", I::PeerAsked) => (
                "pending",
                vec![AnnounceRequest, Close(CloseReason::RequestReceived)],
            ),
            ("pending", I::PeerAsked) => ("=", vec![Close(CloseReason::RequestReceived)]),
            ("requesting", I::PeerAsked) => (
                "accepted",
                vec![QueueAnswer(Accept), AnnounceState, NowAccepted],
            ),
            ("accepted", I::PeerAsked) => ("=", vec![QueueAnswer(Accept), NowAccepted]),
            ("rejected", I::PeerAsked) => {
                ("=", vec![ReplyAnswer(Reject), Close(CloseReason::Refused)])
            }
            ("blocked", I::PeerAsked) => ("=", vec![Close(CloseReason::Refused)]),
            ("none", I::PeerAnswered(_)) => ("=", vec![Close(CloseReason::Refused)]),
            ("requesting", I::PeerAnswered(Accept)) => (
                "accepted",
                vec![DropQueuedRequest, AnnounceState, NowAccepted],
            ),
            ("requesting" | "accepted", I::PeerAnswered(Reject)) => (
                "rejected",
                vec![DropQueuedRequest, AnnounceState, Close(CloseReason::Normal)],
            ),
            (_, I::PeerAnswered(_)) => ("=", vec![]),
            (state, input) => panic!("no expectation for {state} × {input:?}"),
        }
    }

    #[test]
    fn every_state_and_input_goes_where_the_table_says() {
        for state in STATES {
            for input in INPUTS {
                let (want, effects) = expected(state, input);
                let got = match step(state, input) {
                    Ok(step) => {
                        let name = match step.state {
                            s if s == state => "=",
                            Some(s) => s.as_str(),
                            None => "none",
                        };
                        (name, step.effects)
                    }
                    Err(e) => (
                        match e.kind() {
                            carom_api::ErrorKind::AlreadyExists => "already_exists",
                            carom_api::ErrorKind::InvalidState => "invalid_state",
                            carom_api::ErrorKind::NotFound => "not_found",
                            other => panic!("unexpected error kind {other:?}"),
                        },
                        vec![],
                    ),
                };
                // Blocking someone blocked stays blocked: the table says "blocked", the step
                // says unchanged.
                let want = if state.map(ContactState::as_str) == Some(want) {
                    "="
                } else {
                    want
                };
                assert_eq!(got, (want, effects), "{state:?} × {input:?}");
            }
        }
    }

    #[test]
    fn a_peer_can_never_make_a_step_fail_nor_unblock_itself() {
        for state in STATES {
            for input in INPUTS.into_iter().filter(|i| !i.by_user()) {
                let step = step(state, input).expect("a peer's input never errs");
                if state == Some(Blocked) {
                    assert_eq!(step.state, Some(Blocked), "{input:?}");
                    assert!(!step.has(NowAccepted));
                }
                // Only the user's own Add or Accept, or an answer to our request, makes a
                // contact: a stranger's request alone never does.
                if step.has(NowAccepted) {
                    assert!(
                        matches!(state, Some(Requesting | Accepted)),
                        "{state:?} × {input:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_co_members_row_steps_exactly_as_no_contact() {
        for input in INPUTS {
            let as_co_member = step(Some(ContactState::CoMember), input);
            let as_nobody = step(None, input);
            match (as_co_member, as_nobody) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{input:?}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{input:?}"),
                (a, b) => panic!("{input:?}: {a:?} against {b:?}"),
            }
        }
    }

    #[test]
    fn who_may_do_what_when_they_call() {
        assert_eq!(admit(None), Admit::RequestOnly);
        assert_eq!(admit(Some(Pending)), Admit::RequestOnly);
        assert_eq!(admit(Some(Rejected)), Admit::RequestOnly);
        assert_eq!(admit(Some(Requesting)), Admit::Session);
        assert_eq!(admit(Some(Accepted)), Admit::Session);
        assert_eq!(admit(Some(Blocked)), Admit::Refuse);
        // A co-member is no contact: group traffic is the machine's to admit, not this table's.
        assert_eq!(admit(Some(ContactState::CoMember)), Admit::RequestOnly);
        for s in ContactState::ALL {
            assert_eq!(may_dial(*s), *s != Blocked);
        }
    }
}
