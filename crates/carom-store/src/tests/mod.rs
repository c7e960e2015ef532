//! Tests of the store as a whole: operations, damage, secrecy at rest, migrations, properties.

mod at_rest;
mod damage;
mod erasure;
mod groups;
mod migrations;
mod ops;
mod profile;
mod props;

use std::path::{Path, PathBuf};

use crate::{
    ContactState, DbKey, Direction, KdfParams, KeyFile, NewContact, NewIncoming, NewOutgoing,
    PeerKind, Protection, Queued, Received, Store,
};

/// Argon2id parameters cheap enough for tests; the file records them, so unlocking uses them.
pub(crate) const CHEAP: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

/// A passphrase-protected key file and a fresh database in a new temporary directory.
pub(crate) struct Profile {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) key_path: PathBuf,
    pub(crate) db_path: PathBuf,
    pub(crate) key: DbKey,
}

impl Profile {
    pub(crate) fn new(passphrase: &[u8]) -> (Profile, Store) {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("carom.key");
        let db_path = dir.path().join("carom.db");
        let key = KeyFile::create(&key_path, Protection::Passphrase(passphrase), CHEAP).unwrap();
        let store = Store::create(&db_path, &key).unwrap();
        (
            Profile {
                dir,
                key_path,
                db_path,
                key,
            },
            store,
        )
    }

    pub(crate) fn open(&self) -> Store {
        Store::open(&self.db_path, &self.key).unwrap()
    }
}

pub(crate) fn new_contact(identity_byte: u8, nickname: &str, now: u64) -> NewContact {
    NewContact {
        identity: [identity_byte; 32],
        state: ContactState::Accepted,
        nickname: nickname.to_owned(),
        offered_nickname: None,
        greeting: None,
        declared_kind: PeerKind::Human,
        now,
    }
}

pub(crate) fn add_contact(store: &mut Store, identity_byte: u8) -> i64 {
    store
        .write(|tx| tx.insert_contact(&new_contact(identity_byte, "friend", 1)))
        .unwrap()
}

/// A message id with `n` in its last bytes.
pub(crate) fn msg_id(n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

pub(crate) fn incoming(contact_id: i64, n: u64, body: &str, now: u64) -> NewIncoming {
    NewIncoming {
        contact_id,
        msg_id: msg_id(n),
        sent_at: now.saturating_sub(5),
        body: body.to_owned(),
        reply_to: None,
        now,
        expires_after: None,
        expires_from: None,
    }
}

pub(crate) fn outgoing(contact_id: i64, n: u64, body: &str, now: u64) -> NewOutgoing {
    NewOutgoing {
        contact_id,
        msg_id: msg_id(n),
        sent_at: now,
        body: body.to_owned(),
        reply_to: None,
        client_token: Some(format!("token-{n}")),
        payload: format!("wire-{n}").into_bytes(),
        now,
        expires_after: None,
        expires_from: None,
    }
}

pub(crate) fn receive(store: &mut Store, contact_id: i64, n: u64, body: &str) -> Received {
    store
        .write(|tx| tx.store_incoming(&incoming(contact_id, n, body, 1_000 + n)))
        .unwrap()
}

pub(crate) fn queue(store: &mut Store, contact_id: i64, n: u64, body: &str) -> Queued {
    store
        .write(|tx| tx.queue_outgoing(&outgoing(contact_id, n, body, 1_000 + n)))
        .unwrap()
}

/// Every file in `dir` (not recursing), with its content.
pub(crate) fn files_in(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

pub(crate) use crate::forensic::contains;

/// The direction's message, looked up by id, to check exactly-once storage.
pub(crate) fn count_rows(store: &Store, contact_id: i64, direction: Direction, n: u64) -> i64 {
    store
        .connection()
        .query_row(
            "SELECT count(*) FROM messages WHERE contact_id = ?1 AND direction = ?2
             AND msg_id = ?3",
            rusqlite::params![contact_id, direction, msg_id(n)],
            |r| r.get(0),
        )
        .unwrap()
}
