//! # carom-store: Carom's encrypted, crash-safe storage
//!
//! Everything Carom keeps — the identity seed and device key, contacts, the messages of each
//! conversation with their delivery state, the outbox and the API's event log — lives in
//! one SQLite database encrypted with SQLCipher, next to a small key file that holds the
//! database key wrapped under the user's passphrase. The schema, the key file's byte layout
//! and the error kinds are specified in `docs/storage.md`.
//!
//! What it is not: a cache, a generic database layer, or a policy engine. It does not decide
//! who may message whom or when to retry; the engine does, and records its decisions here. It
//! never reads the clock: every time is passed in.
//!
//! ## Durability contract
//!
//! "Queued" and "acknowledged" mean *committed*:
//!
//! - The database runs in WAL mode with `synchronous=FULL`: every `COMMIT` appends to the
//!   write-ahead log and fsyncs it before returning.
//! - All writes go through [`Store::write`], one `BEGIN IMMEDIATE` … `COMMIT` transaction per
//!   call, which returns only after `COMMIT` has returned. If the closure fails, or the commit
//!   fails (a full disk, say), nothing of the transaction remains.
//! - An outgoing message is reported "queued" to the API only after the transaction that
//!   stored it (message, outbox item and event together) has committed.
//! - An incoming message is acknowledged to the sending peer only after the transaction that
//!   stored it has committed; one transaction per accepted message.
//! - Incoming messages are stored exactly once per (sender, message id), enforced by a unique
//!   index: a replayed or retried delivery returns [`Received::Duplicate`] and must be
//!   acknowledged again. Outgoing messages are idempotent per (contact, API client token).
//!
//! So a crash — of the process or of the machine — can lose only work nobody was told about.
//! The crash test in `tests/tests/store_crash.rs` kills a writer with SIGKILL hundreds of
//! times and checks that every acknowledged message is present exactly once. (It exercises
//! process crashes; surviving power loss rests on SQLite's fsync discipline, which SQLite
//! tests itself.)
//!
//! ## Encryption at rest
//!
//! The database key is 256 random bits ([`DbKey`]), given to SQLCipher raw (no SQLCipher KDF).
//! The key file ([`KeyFile`]) holds it encrypted with XChaCha20-Poly1305 under a key derived by
//! Argon2id (64 MiB, 3 passes by default) from the passphrase. Changing the passphrase
//! rewrites only the key file. A profile without a passphrase exists only when created with
//! [`Protection::Unprotected`]; the store logs a warning whenever one is created or opened.
//!
//! What SQLCipher hides: every byte of every page of the database and of its write-ahead log —
//! message bodies, names, onion addresses, keys, and also the schema and the indexes. The key
//! file reveals only the Argon2 parameters, a salt and a nonce.
//!
//! What it does not hide: that a Carom profile exists; the sizes of the files (roughly how much
//! is stored) and their modification times (when something was last written); the
//! write-ahead log's frame headers and the `-shm` index (which pages changed, in what order,
//! how many commits since the last checkpoint); and, while the daemon runs, everything in its
//! memory. Deleted rows are overwritten (`secure_delete`), but older copies of a page may
//! survive in the write-ahead log until the next checkpoint, and flash storage may keep old
//! blocks: all of them encrypted.
//!
//! ## RAM-only profiles
//!
//! [`Store::open_in_memory`] keeps everything in memory (temporary storage too) and writes
//! nothing to disk, for amnesic use; it is gone when the [`Store`] is dropped.
//!
//! ## Using it
//!
//! ```
//! use carom_store::{KdfParams, KeyFile, NewContact, NewIncoming, ContactState, PeerKind,
//!                   Protection, Store, StoreRead};
//! # fn main() -> Result<(), carom_store::Error> {
//! # let dir = tempfile::tempdir().expect("temporary directory");
//! # let params = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
//! let key = KeyFile::create(&dir.path().join("carom.key"), Protection::Passphrase(b"pw"), params)?;
//! let mut store = Store::create(&dir.path().join("carom.db"), &key)?;
//! let received = store.write(|tx| {
//!     let contact = tx.insert_contact(&NewContact {
//!         identity: [7; 32],
//!         state: ContactState::Accepted,
//!         nickname: "Alice".into(),
//!         offered_nickname: None,
//!         greeting: None,
//!         declared_kind: PeerKind::Human,
//!         now: 1_000,
//!     })?;
//!     tx.store_incoming(&NewIncoming {
//!         contact_id: contact,
//!         msg_id: [1; 16],
//!         sent_at: 990,
//!         body: "hello".into(),
//!         reply_to: None,
//!         now: 1_000,
//!         expires_after: None,
//!         expires_from: None,
//!     })
//! })?;
//! // Committed: now, and only now, acknowledge it to the peer.
//! assert!(received.is_new());
//! assert_eq!(store.history(received.message().contact_id, None, 50)?.len(), 1);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod contacts;
mod ephemeral;
mod err;
mod events;
#[cfg(any(test, feature = "forensic"))]
pub mod forensic;
mod fsutil;
mod groups;
mod identity;
mod keyfile;
mod messages;
mod model;
mod outbox;
mod schema;
mod store;
mod tor;

#[cfg(test)]
mod tests;

pub use ephemeral::{Erased, TimerChange, TimerStamp, TimerStored};
pub use err::{Error, ErrorKind, Result};
pub use groups::{
    GroupDelivery, GroupMessage, GroupQueued, GroupReceived, GroupRecord, NewGroupChat,
    NewGroupIncoming, StoredOperation,
};
pub use keyfile::{DB_KEY_LEN, DbKey, KdfParams, KeyFile, Protection, StagedKeyFile};
pub use model::{
    Contact, ContactState, DeliveryStatus, Direction, Event, Forgotten, GroupState, IdentityRecord,
    Message, MessageKind, MessageStatus, NewContact, NewIncoming, NewOutgoing, OutboxItem,
    OutboxKind, PeerKind, Queued, Received, UnixMillis,
};
pub use schema::SCHEMA_VERSION;
pub use store::{Store, StoreRead, WriteTx};
