//! The limits of a group, and why they are what they are.

/// Most members a group can have. Every message is sent once per member over its own Noise
/// session, so the cost of a message grows with this; 64 is twice what the brief asks for and
/// keeps a full group's fan-out within one burst of the per-contact limits.
pub const MAX_MEMBERS: usize = 64;

/// Longest group or member name, in bytes of UTF-8 (the same as a contact's nickname).
pub const MAX_NAME_BYTES: usize = 64;

/// Most parents of one operation. An author names the heads of its history; more than a few
/// heads means many concurrent changes, and 16 bounds the bytes an operation can make a
/// receiver hash and look up. (A wire limit: `carom-proto` holds it.)
pub const MAX_PARENTS: usize = carom_proto::MAX_GROUP_HEADS;

/// Largest encoded operation body. The largest valid body (a creation with two 64-byte names, or
/// an operation with 16 parents) is far smaller; the bound is checked before any decoding.
pub const MAX_OPERATION_BYTES: usize = carom_proto::MAX_GROUP_OPERATION_BYTES;

/// Most operations in one group's history. Resolving the membership looks at every operation,
/// so this bounds the work a member can make the others do; a group that reaches it refuses
/// further changes with a clear error (messages still flow).
pub const MAX_OPERATIONS: usize = 4096;

/// Most operations held while their parents are missing. They arrive with the operations they
/// build on, so only a peer sending out of order (or a hostile one) fills this.
pub const MAX_WAITING: usize = 256;
