//! Application messages and their CBOR encoding.
//!
//! Every message travels as an *envelope*, a two-element CBOR array `[type, body]`. Bodies are
//! CBOR maps with small integer keys (minicbor's derive with explicit indices), so fields can be
//! added later and unknown ones are skipped. A receiver that does not know a `type` skips the
//! body and reports it ([`Decoded::Unknown`]); it never ends the session for it. The CDDL
//! schema is in `docs/protocol.md`.
//!
//! Message types 16–31 are reserved for file transfer and 32–47 for groups.

use minicbor::decode::Error as CborError;
use minicbor::{Decode, Decoder, Encode, Encoder};

/// Longest chat body, in bytes of UTF-8.
pub const MAX_BODY_BYTES: usize = 32 * 1024;
/// Longest nickname offered in a contact request, in bytes.
pub const MAX_NICKNAME_BYTES: usize = 64;
/// Longest greeting in a contact request, in bytes.
pub const MAX_GREETING_BYTES: usize = 1024;
/// Longest free-text close reason, in bytes.
pub const MAX_CLOSE_TEXT_BYTES: usize = 256;
/// Most message ids in one acknowledgement.
pub const MAX_ACK_IDS: usize = 512;
/// Largest encoded group-operation body, in bytes (checked before any decoding).
pub const MAX_GROUP_OPERATION_BYTES: usize = 1024;
/// Most parents of a group operation, and most heads a group chat names.
pub const MAX_GROUP_HEADS: usize = 16;
/// Most operations in one group-operations message: 32 of the largest fit one frame with room.
pub const MAX_GROUP_OPERATIONS_PER_MESSAGE: usize = 32;
/// Longest disappearing-message timer, in seconds: four weeks.
pub const MAX_TIMER_SECS: u32 = 28 * 24 * 3600;

/// A message's stable identifier, chosen by its sender at random. Receivers deduplicate on
/// (sender, id), which makes every message idempotent: a replay or a retry is harmless.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A random id.
    pub fn random<R: rand_core::RngCore + rand_core::CryptoRng>(rng: &mut R) -> MessageId {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        MessageId(id)
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

impl<C> Encode<C> for MessageId {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
        _: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.bytes(&self.0)?;
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for MessageId {
    fn decode(d: &mut Decoder<'b>, _: &mut C) -> Result<Self, CborError> {
        let bytes = d.bytes()?;
        let id: [u8; 16] = bytes
            .try_into()
            .map_err(|_| CborError::message("a message id is 16 bytes"))?;
        Ok(MessageId(id))
    }
}

/// A group's identifier: 16 random bytes chosen by its creator.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub [u8; 16]);

impl GroupId {
    /// A random id.
    pub fn random<R: rand_core::RngCore + rand_core::CryptoRng>(rng: &mut R) -> GroupId {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        GroupId(id)
    }
}

/// A group operation's identifier: the SHA3-256 of its body's bytes (`docs/protocol.md` §15.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub [u8; 32]);

impl OpId {
    /// The id of the operation with this body.
    pub fn of_body(body: &[u8]) -> OpId {
        use sha3::{Digest as _, Sha3_256};
        OpId(Sha3_256::digest(body).into())
    }
}

macro_rules! fixed_bytes {
    ($name:ident, $len:literal, $what:literal) => {
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                for b in &self.0[..4] {
                    write!(f, "{b:02x}")?;
                }
                f.write_str("…")
            }
        }

        impl<C> Encode<C> for $name {
            fn encode<W: minicbor::encode::Write>(
                &self,
                e: &mut Encoder<W>,
                _: &mut C,
            ) -> Result<(), minicbor::encode::Error<W::Error>> {
                e.bytes(&self.0)?;
                Ok(())
            }
        }

        impl<'b, C> Decode<'b, C> for $name {
            fn decode(d: &mut Decoder<'b>, _: &mut C) -> Result<Self, CborError> {
                let bytes: [u8; $len] = d
                    .bytes()?
                    .try_into()
                    .map_err(|_| CborError::message($what))?;
                Ok($name(bytes))
            }
        }
    };
}

fixed_bytes!(GroupId, 16, "a group id is 16 bytes");
fixed_bytes!(OpId, 32, "an operation id is 32 bytes");

/// A 32-byte digest (the members digest of a group chat).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest32(pub [u8; 32]);

fixed_bytes!(Digest32, 32, "a digest is 32 bytes");

/// Whether the sender of a contact request says it is a person or a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(index_only)]
pub enum PeerKind {
    /// A person.
    #[n(0)]
    Human,
    /// A program (a bot, a gateway, a service).
    #[n(1)]
    Bot,
}

/// "Please add me": the only thing a stranger may send.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct ContactRequest {
    /// Idempotency key: retries of the same request carry the same id.
    #[n(0)]
    pub id: MessageId,
    /// The name the requester offers for itself.
    #[n(1)]
    pub nickname: String,
    /// A short note to the person asked.
    #[n(2)]
    pub greeting: String,
    /// Human or bot, as the requester declares.
    #[n(3)]
    pub kind: PeerKind,
}

/// The answer to a contact request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(index_only)]
pub enum Decision {
    /// Accepted: both sides may now exchange messages.
    #[n(0)]
    Accept,
    /// Declined.
    #[n(1)]
    Reject,
}

/// Sent by the person asked, once they decide.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct ContactResponse {
    /// Idempotency key of this response.
    #[n(0)]
    pub id: MessageId,
    /// Accept or reject.
    #[n(1)]
    pub decision: Decision,
}

/// A chat message.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Chat {
    /// The sender's id for it (idempotency and delivery acknowledgement).
    #[n(0)]
    pub id: MessageId,
    /// When the sender wrote it, milliseconds since the Unix epoch, by the sender's clock.
    #[n(1)]
    pub sent_at: u64,
    /// The text.
    #[n(2)]
    pub body: String,
    /// The message this one answers, if any.
    #[n(3)]
    pub reply_to: Option<MessageId>,
    /// The disappearing-message timer it was sent under, in seconds (1 to
    /// [`MAX_TIMER_SECS`]): each end erases it this long after it stored it. Absent: kept
    /// until deleted.
    #[n(4)]
    pub expires_after: Option<u32>,
}

/// "From now on, messages in this conversation disappear after this long" (or no longer
/// disappear). Either end may send it; it is a conversation item both histories show, and
/// acknowledged like a chat. Concurrent changes resolve to the one with the greater
/// (`sent_at`, `id`), at both ends (protocol §7.1).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct SetTimer {
    /// The change's id (idempotency, acknowledgement, and the tie-break of concurrent ones).
    #[n(0)]
    pub id: MessageId,
    /// When it was made, milliseconds since the Unix epoch, by the sender's clock.
    #[n(1)]
    pub sent_at: u64,
    /// The new timer in seconds (1 to [`MAX_TIMER_SECS`]); absent: messages no longer
    /// disappear.
    #[n(2)]
    pub expires_after: Option<u32>,
}

/// "Delete this message I sent you, for everyone": the receiver erases its body and keeps a
/// tombstone. Acknowledged like a chat. Only the sender of a message can withdraw it: the
/// receiver looks the target up among the messages it received from this peer.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Withdraw {
    /// The withdrawal's own id (idempotency, acknowledgement).
    #[n(0)]
    pub id: MessageId,
    /// The id of the chat being withdrawn.
    #[n(1)]
    pub target: MessageId,
}

/// "These messages are stored durably on my side."
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Ack {
    /// The acknowledged messages (chat, contact request or contact response ids).
    #[n(0)]
    pub ids: Vec<MessageId>,
}

/// "I will never store these messages; stop sending them." The negative acknowledgement:
/// without it a sender that retries until acknowledged would retry for ever.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Reject {
    /// The refused messages (chat ids).
    #[n(0)]
    pub ids: Vec<MessageId>,
    /// Why: one of [`reject`]'s codes; a code this version does not know means "refused".
    #[n(1)]
    pub reason: u32,
    /// Optional human-readable detail (never secret).
    #[n(2)]
    pub text: Option<String>,
}

/// Codes of [`Reject::reason`].
pub mod reject {
    /// A field is over its limit (e.g. a body over [`super::MAX_BODY_BYTES`]).
    pub const TOO_LARGE: u32 = 1;
    /// The receiver could not decode the message.
    pub const MALFORMED: u32 = 2;
    /// The receiver's storage limit for this sender is reached for now.
    pub const OVER_QUOTA: u32 = 3;
    /// A group message or operations for a group the sender (or the receiver) is not a member
    /// of, as the receiver sees it (protocol §15.3).
    pub const NOT_A_MEMBER: u32 = 4;
    /// A chat (type 3) from someone the receiver has no contact relationship with, over a
    /// session it admitted for group traffic only: 1:1 chat needs pairing (§8, §15.6).
    pub const NOT_A_CONTACT: u32 = 5;

    /// The stable name of `code`, as the sender reports it (`"rejected"` for unknown codes).
    pub fn name(code: u32) -> &'static str {
        match code {
            TOO_LARGE => "rejected: too_large",
            MALFORMED => "rejected: malformed",
            OVER_QUOTA => "rejected: over_quota",
            NOT_A_MEMBER => "rejected: not_a_member",
            NOT_A_CONTACT => "rejected: not_a_contact",
            _ => "rejected",
        }
    }
}

/// Keepalive probe; answered with a [`Pong`] carrying the same nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Ping {
    /// Echoed in the pong.
    #[n(0)]
    pub nonce: u64,
}

/// Keepalive answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Pong {
    /// The ping's nonce.
    #[n(0)]
    pub nonce: u64,
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// Orderly end, nothing wrong.
    Normal,
    /// Not accepted: the peer is not a contact (or is blocked).
    Refused,
    /// Another session with the same peer won (both sides dialled at once).
    Duplicate,
    /// The other side broke the protocol.
    ProtocolError,
    /// The sender is shutting down.
    ShuttingDown,
    /// Too many requests; try later.
    RateLimited,
    /// A stranger's contact request was stored; the session ends here.
    RequestReceived,
    /// Nothing heard within the idle timeout.
    Timeout,
    /// A code this version does not know.
    Other(u32),
}

impl CloseReason {
    /// The wire code.
    pub fn code(self) -> u32 {
        match self {
            CloseReason::Normal => 0,
            CloseReason::Refused => 1,
            CloseReason::Duplicate => 2,
            CloseReason::ProtocolError => 3,
            CloseReason::ShuttingDown => 4,
            CloseReason::RateLimited => 5,
            CloseReason::RequestReceived => 6,
            CloseReason::Timeout => 7,
            CloseReason::Other(code) => code,
        }
    }

    /// The reason for a wire code (unknown codes are kept as [`CloseReason::Other`]).
    pub fn from_code(code: u32) -> CloseReason {
        match code {
            0 => CloseReason::Normal,
            1 => CloseReason::Refused,
            2 => CloseReason::Duplicate,
            3 => CloseReason::ProtocolError,
            4 => CloseReason::ShuttingDown,
            5 => CloseReason::RateLimited,
            6 => CloseReason::RequestReceived,
            7 => CloseReason::Timeout,
            other => CloseReason::Other(other),
        }
    }
}

/// The last message of a session.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Close {
    /// [`CloseReason::code`].
    #[n(0)]
    pub code: u32,
    /// Optional human-readable detail (never secret).
    #[n(1)]
    pub text: Option<String>,
}

/// Switch to the next transport keys (Noise `Rekey`) after this frame. Session-internal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Rekey {}

/// One signed group operation as it travels: the body's bytes exactly as signed, and the
/// author's signature. What the body means, and the signature check, are `carom-group`'s.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupOperation {
    /// The canonical CBOR body (`docs/protocol.md` §15.1).
    pub body: Vec<u8>,
    /// The author's ed25519 signature of the body, in its group-operation context.
    pub signature: [u8; 64],
}

impl std::fmt::Debug for GroupOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupOperation({:?})", OpId::of_body(&self.body))
    }
}

impl<C> Encode<C> for GroupOperation {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
        _: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.array(2)?.bytes(&self.body)?.bytes(&self.signature)?;
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for GroupOperation {
    fn decode(d: &mut Decoder<'b>, _: &mut C) -> Result<Self, CborError> {
        if d.array()? != Some(2) {
            return Err(CborError::message(
                "a group operation is a definite array of two byte strings",
            ));
        }
        let body = d.bytes()?;
        if body.len() > MAX_GROUP_OPERATION_BYTES {
            return Err(CborError::message(
                "a group operation body is at most 1024 bytes",
            ));
        }
        let body = body.to_vec();
        let signature: [u8; 64] = d
            .bytes()?
            .try_into()
            .map_err(|_| CborError::message("a signature is 64 bytes"))?;
        Ok(GroupOperation { body, signature })
    }
}

/// Operations of one group: an invitation with the history it builds on, or changes members
/// pass to each other. Acknowledged by its id like a chat.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct GroupOperations {
    /// Idempotency key.
    #[n(0)]
    pub id: MessageId,
    /// The group every operation belongs to.
    #[n(1)]
    pub group: GroupId,
    /// The operations, each after the ones it builds on where both are present.
    #[n(2)]
    pub operations: Vec<GroupOperation>,
}

/// A message to a group, sent to each member over its own session.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct GroupChat {
    /// The sender's id for it, the same for every member it is sent to.
    #[n(0)]
    pub id: MessageId,
    /// The group.
    #[n(1)]
    pub group: GroupId,
    /// The heads of the sender's history when it sent: the membership they resolve to is the
    /// set of ends the message was sent to.
    #[n(2)]
    pub heads: Vec<OpId>,
    /// The digest of that set (§15.3), so that a receiver whose view differs refuses it.
    #[n(3)]
    pub members_digest: Digest32,
    /// When the sender wrote it, milliseconds since the Unix epoch, by the sender's clock.
    #[n(4)]
    pub sent_at: u64,
    /// The text.
    #[n(5)]
    pub body: String,
    /// The group message this one answers, if any.
    #[n(6)]
    pub reply_to: Option<MessageId>,
    /// The group's disappearing-message timer when it was sent, in seconds (1 to
    /// [`MAX_TIMER_SECS`]): each member erases it this long after it stored it. Absent: kept
    /// until deleted.
    #[n(7)]
    pub expires_after: Option<u32>,
}

/// "Delete this group message I sent, for everyone": sent by the message's sender to each
/// member it sent the message to; each erases its body and keeps a tombstone. Acknowledged
/// like a chat. The receiver looks the target up among the messages of this group that this
/// peer sent.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct GroupWithdraw {
    /// The withdrawal's own id (idempotency, acknowledgement).
    #[n(0)]
    pub id: MessageId,
    /// The group.
    #[n(1)]
    pub group: GroupId,
    /// The id of the group message being withdrawn.
    #[n(2)]
    pub target: MessageId,
}

/// A message of a type this version knows.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// Type 1.
    ContactRequest(ContactRequest),
    /// Type 2.
    ContactResponse(ContactResponse),
    /// Type 3.
    Chat(Chat),
    /// Type 4.
    Ack(Ack),
    /// Type 5 (handled by the session).
    Ping(Ping),
    /// Type 6 (handled by the session).
    Pong(Pong),
    /// Type 7.
    Close(Close),
    /// Type 8 (handled by the session).
    Rekey(Rekey),
    /// Type 9.
    Reject(Reject),
    /// Type 10.
    SetTimer(SetTimer),
    /// Type 11.
    Withdraw(Withdraw),
    /// Type 32.
    GroupOperations(GroupOperations),
    /// Type 33.
    GroupChat(GroupChat),
    /// Type 34.
    GroupWithdraw(GroupWithdraw),
}

/// Wire numbers of the message types.
pub mod types {
    /// Contact request.
    pub const CONTACT_REQUEST: u32 = 1;
    /// Contact response.
    pub const CONTACT_RESPONSE: u32 = 2;
    /// Chat.
    pub const CHAT: u32 = 3;
    /// Delivery acknowledgement.
    pub const ACK: u32 = 4;
    /// Keepalive ping.
    pub const PING: u32 = 5;
    /// Keepalive pong.
    pub const PONG: u32 = 6;
    /// Close.
    pub const CLOSE: u32 = 7;
    /// Rekey.
    pub const REKEY: u32 = 8;
    /// Negative acknowledgement.
    pub const REJECT: u32 = 9;
    /// Disappearing-message timer change.
    pub const SET_TIMER: u32 = 10;
    /// Delete for everyone.
    pub const WITHDRAW: u32 = 11;
    /// Group operations.
    pub const GROUP_OPERATIONS: u32 = 32;
    /// Group chat.
    pub const GROUP_CHAT: u32 = 33;
    /// Group withdraw (delete for everyone).
    pub const GROUP_WITHDRAW: u32 = 34;
}

/// Why a message of a known type was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// Not valid CBOR of the expected shape.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A field is longer than its limit.
    #[error("{field} is {found} bytes; the limit is {limit}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its size.
        found: usize,
        /// The limit.
        limit: usize,
    },
    /// A disappearing-message timer outside 1 s to [`MAX_TIMER_SECS`].
    #[error("a disappearing-message timer of {0} s is outside 1 s to 4 weeks")]
    TimerOutOfRange(u32),
}

/// The result of decoding one envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A message of a known type.
    Known(Message),
    /// A type this version does not know; its body was skipped.
    Unknown {
        /// The type number.
        message_type: u32,
    },
}

impl Message {
    /// The wire type number.
    pub fn message_type(&self) -> u32 {
        match self {
            Message::ContactRequest(_) => types::CONTACT_REQUEST,
            Message::ContactResponse(_) => types::CONTACT_RESPONSE,
            Message::Chat(_) => types::CHAT,
            Message::Ack(_) => types::ACK,
            Message::Ping(_) => types::PING,
            Message::Pong(_) => types::PONG,
            Message::Close(_) => types::CLOSE,
            Message::Rekey(_) => types::REKEY,
            Message::Reject(_) => types::REJECT,
            Message::SetTimer(_) => types::SET_TIMER,
            Message::Withdraw(_) => types::WITHDRAW,
            Message::GroupOperations(_) => types::GROUP_OPERATIONS,
            Message::GroupChat(_) => types::GROUP_CHAT,
            Message::GroupWithdraw(_) => types::GROUP_WITHDRAW,
        }
    }

    /// Check the size limits (done before sending and after receiving).
    pub fn check_limits(&self) -> Result<(), MessageError> {
        fn limit(field: &'static str, found: usize, limit: usize) -> Result<(), MessageError> {
            if found > limit {
                Err(MessageError::TooLong {
                    field,
                    found,
                    limit,
                })
            } else {
                Ok(())
            }
        }
        fn timer(seconds: Option<u32>) -> Result<(), MessageError> {
            match seconds {
                Some(s) if s == 0 || s > MAX_TIMER_SECS => Err(MessageError::TimerOutOfRange(s)),
                _ => Ok(()),
            }
        }
        match self {
            Message::ContactRequest(r) => {
                limit("nickname", r.nickname.len(), MAX_NICKNAME_BYTES)?;
                limit("greeting", r.greeting.len(), MAX_GREETING_BYTES)
            }
            Message::Chat(c) => {
                timer(c.expires_after)?;
                limit("body", c.body.len(), MAX_BODY_BYTES)
            }
            Message::SetTimer(t) => timer(t.expires_after),
            Message::Ack(a) => limit("ack ids", a.ids.len(), MAX_ACK_IDS),
            Message::Reject(r) => {
                limit("reject ids", r.ids.len(), MAX_ACK_IDS)?;
                limit(
                    "reject text",
                    r.text.as_ref().map_or(0, String::len),
                    MAX_CLOSE_TEXT_BYTES,
                )
            }
            Message::Close(c) => limit(
                "close text",
                c.text.as_ref().map_or(0, String::len),
                MAX_CLOSE_TEXT_BYTES,
            ),
            Message::GroupOperations(m) => limit(
                "group operations",
                m.operations.len(),
                MAX_GROUP_OPERATIONS_PER_MESSAGE,
            ),
            Message::GroupChat(c) => {
                timer(c.expires_after)?;
                limit("group heads", c.heads.len(), MAX_GROUP_HEADS)?;
                limit("body", c.body.len(), MAX_BODY_BYTES)
            }
            Message::ContactResponse(_)
            | Message::Withdraw(_)
            | Message::GroupWithdraw(_)
            | Message::Ping(_)
            | Message::Pong(_)
            | Message::Rekey(_) => Ok(()),
        }
    }

    /// Append the envelope `[type, body]` to `e`.
    pub(crate) fn encode_into<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.array(2)?.u32(self.message_type())?;
        match self {
            Message::ContactRequest(m) => e.encode(m)?,
            Message::ContactResponse(m) => e.encode(m)?,
            Message::Chat(m) => e.encode(m)?,
            Message::Ack(m) => e.encode(m)?,
            Message::Ping(m) => e.encode(m)?,
            Message::Pong(m) => e.encode(m)?,
            Message::Close(m) => e.encode(m)?,
            Message::Rekey(m) => e.encode(m)?,
            Message::Reject(m) => e.encode(m)?,
            Message::SetTimer(m) => e.encode(m)?,
            Message::Withdraw(m) => e.encode(m)?,
            Message::GroupWithdraw(m) => e.encode(m)?,
            Message::GroupOperations(m) => e.encode(m)?,
            Message::GroupChat(m) => e.encode(m)?,
        };
        Ok(())
    }

    /// The envelope as bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        // Writing to a Vec cannot fail.
        let _ = self.encode_into(&mut e);
        e.into_writer()
    }

    /// For an envelope that does not decode: its type and, if one can be read, the message
    /// id under key 0 of its body — so that a receiver can refuse it by id (a [`Reject`])
    /// instead of leaving its sender to retry for ever.
    pub fn salvage_id(bytes: &[u8]) -> Option<(u32, MessageId)> {
        let mut d = Decoder::new(bytes);
        if d.array().ok()? != Some(2) {
            return None;
        }
        let message_type = d.u32().ok()?;
        let entries = d.map().ok()??;
        for _ in 0..entries {
            if d.u32().ok()? == 0 {
                let id: [u8; 16] = d.bytes().ok()?.try_into().ok()?;
                return Some((message_type, MessageId(id)));
            }
            d.skip().ok()?;
        }
        None
    }

    /// Decode exactly one envelope occupying all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Decoded, MessageError> {
        let mut d = Decoder::new(bytes);
        let decoded = Message::decode_from(&mut d)?;
        if d.position() != bytes.len() {
            return Err(MessageError::Malformed(
                "trailing bytes after the message".into(),
            ));
        }
        Ok(decoded)
    }

    /// Decode one envelope from `d`.
    pub(crate) fn decode_from(d: &mut Decoder<'_>) -> Result<Decoded, MessageError> {
        let malformed = |e: CborError| MessageError::Malformed(e.to_string());
        if d.array().map_err(malformed)? != Some(2) {
            return Err(MessageError::Malformed(
                "an envelope is a 2-element array".into(),
            ));
        }
        let message_type = d.u32().map_err(malformed)?;
        let message = match message_type {
            types::CONTACT_REQUEST => Message::ContactRequest(d.decode().map_err(malformed)?),
            types::CONTACT_RESPONSE => Message::ContactResponse(d.decode().map_err(malformed)?),
            types::CHAT => Message::Chat(d.decode().map_err(malformed)?),
            types::ACK => Message::Ack(d.decode().map_err(malformed)?),
            types::PING => Message::Ping(d.decode().map_err(malformed)?),
            types::PONG => Message::Pong(d.decode().map_err(malformed)?),
            types::CLOSE => Message::Close(d.decode().map_err(malformed)?),
            types::REKEY => Message::Rekey(d.decode().map_err(malformed)?),
            types::REJECT => Message::Reject(d.decode().map_err(malformed)?),
            types::SET_TIMER => Message::SetTimer(d.decode().map_err(malformed)?),
            types::WITHDRAW => Message::Withdraw(d.decode().map_err(malformed)?),
            types::GROUP_OPERATIONS => Message::GroupOperations(d.decode().map_err(malformed)?),
            types::GROUP_CHAT => Message::GroupChat(d.decode().map_err(malformed)?),
            types::GROUP_WITHDRAW => Message::GroupWithdraw(d.decode().map_err(malformed)?),
            _ => {
                d.skip().map_err(malformed)?;
                return Ok(Decoded::Unknown { message_type });
            }
        };
        message.check_limits()?;
        Ok(Decoded::Known(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MessageId {
        MessageId([n; 16])
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::ContactRequest(ContactRequest {
                id: id(1),
                nickname: "Alice".into(),
                greeting: "hi, it's Alice from the workshop".into(),
                kind: PeerKind::Human,
            }),
            Message::ContactResponse(ContactResponse {
                id: id(2),
                decision: Decision::Accept,
            }),
            Message::Chat(Chat {
                id: id(3),
                sent_at: 1_700_000_000_000,
                body: "hello ✓".into(),
                reply_to: Some(id(4)),
                expires_after: Some(300),
            }),
            Message::SetTimer(SetTimer {
                id: id(11),
                sent_at: 2,
                expires_after: Some(86_400),
            }),
            Message::SetTimer(SetTimer {
                id: id(12),
                sent_at: 3,
                expires_after: None,
            }),
            Message::Withdraw(Withdraw {
                id: id(13),
                target: id(3),
            }),
            Message::Ack(Ack {
                ids: vec![id(5), id(6)],
            }),
            Message::Ping(Ping { nonce: 7 }),
            Message::Pong(Pong { nonce: 7 }),
            Message::Reject(Reject {
                ids: vec![id(8)],
                reason: reject::OVER_QUOTA,
                text: Some("try tomorrow".into()),
            }),
            Message::Close(Close {
                code: CloseReason::Refused.code(),
                text: None,
            }),
            Message::Rekey(Rekey {}),
            Message::GroupOperations(GroupOperations {
                id: id(9),
                group: GroupId([1; 16]),
                operations: vec![GroupOperation {
                    body: vec![0xa0],
                    signature: [2; 64],
                }],
            }),
            Message::GroupChat(GroupChat {
                id: id(10),
                group: GroupId([1; 16]),
                heads: vec![OpId([3; 32]), OpId([4; 32])],
                members_digest: Digest32([5; 32]),
                sent_at: 1,
                body: "to all".into(),
                reply_to: None,
                expires_after: None,
            }),
        ]
    }

    #[test]
    fn the_id_of_a_message_that_does_not_decode_can_be_salvaged() {
        // A chat over the body limit: the encoder does not check, the decoder refuses.
        let big = Message::Chat(Chat {
            id: id(9),
            sent_at: 1,
            body: "x".repeat(MAX_BODY_BYTES + 1),
            reply_to: None,
            expires_after: None,
        })
        .encode();
        assert!(matches!(
            Message::decode(&big),
            Err(MessageError::TooLong { .. })
        ));
        assert_eq!(Message::salvage_id(&big), Some((types::CHAT, id(9))));
        // Nothing to salvage from garbage or from a body without an id.
        assert_eq!(Message::salvage_id(b"\xff\x00"), None);
        let ping = Message::Ping(Ping { nonce: 1 }).encode();
        assert_eq!(Message::salvage_id(&ping), None);
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            assert_eq!(Message::decode(&m.encode()), Ok(Decoded::Known(m.clone())));
        }
    }

    #[test]
    fn unknown_types_are_skipped_not_fatal() {
        // [99, {0: "future", 1: [1, 2, {3: h'00'}]}]
        let mut e = Encoder::new(Vec::new());
        e.array(2).unwrap().u32(99).unwrap();
        e.map(2).unwrap().u8(0).unwrap().str("future").unwrap();
        e.u8(1)
            .unwrap()
            .array(3)
            .unwrap()
            .u8(1)
            .unwrap()
            .u8(2)
            .unwrap();
        e.map(1).unwrap().u8(3).unwrap().bytes(&[0]).unwrap();
        assert_eq!(
            Message::decode(&e.into_writer()),
            Ok(Decoded::Unknown { message_type: 99 })
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        // A chat with an extra field 9 that a future version might add.
        let mut e = Encoder::new(Vec::new());
        e.array(2).unwrap().u32(types::CHAT).unwrap();
        e.map(4).unwrap();
        e.u8(0).unwrap().bytes(&[1; 16]).unwrap();
        e.u8(1).unwrap().u64(5).unwrap();
        e.u8(2).unwrap().str("hi").unwrap();
        e.u8(9).unwrap().str("a field from the future").unwrap();
        let decoded = Message::decode(&e.into_writer()).expect("decodes");
        assert_eq!(
            decoded,
            Decoded::Known(Message::Chat(Chat {
                id: id(1),
                sent_at: 5,
                body: "hi".into(),
                reply_to: None,
                expires_after: None,
            }))
        );
    }

    #[test]
    fn limits_are_enforced_on_decode() {
        let long = Message::Chat(Chat {
            id: id(1),
            sent_at: 0,
            body: "x".repeat(MAX_BODY_BYTES + 1),
            reply_to: None,
            expires_after: None,
        });
        assert!(matches!(
            Message::decode(&long.encode()),
            Err(MessageError::TooLong { field: "body", .. })
        ));
        let many = Message::GroupOperations(GroupOperations {
            id: id(1),
            group: GroupId([1; 16]),
            operations: vec![
                GroupOperation {
                    body: vec![0xa0],
                    signature: [0; 64],
                };
                MAX_GROUP_OPERATIONS_PER_MESSAGE + 1
            ],
        });
        assert!(matches!(
            Message::decode(&many.encode()),
            Err(MessageError::TooLong {
                field: "group operations",
                ..
            })
        ));
        let big_body = Message::GroupOperations(GroupOperations {
            id: id(1),
            group: GroupId([1; 16]),
            operations: vec![GroupOperation {
                body: vec![0; MAX_GROUP_OPERATION_BYTES + 1],
                signature: [0; 64],
            }],
        });
        assert!(matches!(
            Message::decode(&big_body.encode()),
            Err(MessageError::Malformed(_))
        ));
    }

    #[test]
    fn close_codes_round_trip_including_unknown_ones() {
        for code in 0..20 {
            assert_eq!(CloseReason::from_code(code).code(), code);
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bytes in [
            &[][..],
            &[0x80],
            &[0x82, 0x03],
            &[0x82, 0x03, 0xa0],
            &[0x82, 0x03, 0xa1, 0x00, 0x41, 0x00],
            &[0x9f; 64],
        ] {
            assert!(Message::decode(bytes).is_err(), "{bytes:?} was accepted");
        }
    }
}
