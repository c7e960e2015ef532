//! Helper for `tests/store_crash.rs`: appends messages to a Carom store in a loop and reports
//! each one on stdout only after its transaction has committed, exactly as the daemon may
//! acknowledge only committed messages. The test kills it with SIGKILL at random moments.
//!
//! Usage: `crash-writer DB KEYFILE START REPLAY_FROM REPLAY_COUNT`, with the key file's
//! passphrase in `CAROM_CRASH_PASSPHRASE`. The contact with identity `[1; 32]` must exist.
//!
//! It first re-delivers messages `REPLAY_FROM..REPLAY_FROM + REPLAY_COUNT` in both directions
//! (a peer retrying after a crash, an API client retrying a send) and reports whether each
//! was new or recognised; then it appends messages `START, START + 1, …` until killed.
//!
//! Output lines: `in N`, `out N` (acknowledged appends), `replay-in N new|duplicate`,
//! `replay-out N new|existing`.

use std::error::Error;
use std::io::Write;
use std::path::PathBuf;

use carom_store::{KeyFile, NewIncoming, NewOutgoing, Store, StoreRead};

/// The identity of the one contact every message goes to or comes from.
const CONTACT: [u8; 32] = [1; 32];

/// The protocol message id of message `n`.
fn msg_id(n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

fn incoming(contact_id: i64, n: u64) -> NewIncoming {
    NewIncoming {
        contact_id,
        msg_id: msg_id(n),
        sent_at: n,
        body: format!("incoming message {n}"),
        reply_to: None,
        now: n,
        expires_after: None,
        expires_from: None,
    }
}

fn outgoing(contact_id: i64, n: u64) -> NewOutgoing {
    NewOutgoing {
        contact_id,
        msg_id: msg_id(n),
        sent_at: n,
        body: format!("outgoing message {n}"),
        reply_to: None,
        client_token: Some(format!("token-{n}")),
        payload: format!("wire {n}").into_bytes(),
        now: n,
        expires_after: None,
        expires_from: None,
    }
}

/// Stores incoming message `n` with its API event, in one transaction; whether it was new.
fn deliver(store: &mut Store, contact: i64, n: u64) -> Result<bool, carom_store::Error> {
    store.write(|tx| {
        let received = tx.store_incoming(&incoming(contact, n))?;
        if received.is_new() {
            tx.append_event("message.received", &format!("{{\"n\":{n}}}"), n)?;
        }
        Ok(received.is_new())
    })
}

/// Queues outgoing message `n` (message and outbox item in one transaction); whether it was
/// new.
fn send(store: &mut Store, contact: i64, n: u64) -> Result<bool, carom_store::Error> {
    store.write(|tx| Ok(tx.queue_outgoing(&outgoing(contact, n))?.is_new()))
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, key_file, start, replay_from, replay_count] = args.as_slice() else {
        return Err("usage: crash-writer DB KEYFILE START REPLAY_FROM REPLAY_COUNT".into());
    };
    let start: u64 = start.parse()?;
    let replay_from: u64 = replay_from.parse()?;
    let replay_count: u64 = replay_count.parse()?;
    let passphrase = std::env::var("CAROM_CRASH_PASSPHRASE")?;

    let key = KeyFile::unlock(&PathBuf::from(key_file), Some(passphrase.as_bytes()))?;
    let mut store = Store::open(&PathBuf::from(db), &key)?;
    let contact = store
        .contact_by_identity(&CONTACT)?
        .ok_or("the test must create the contact first")?
        .id;
    let mut out = std::io::stdout().lock();

    for n in replay_from..replay_from + replay_count {
        let verdict = if deliver(&mut store, contact, n)? {
            "new"
        } else {
            "duplicate"
        };
        writeln!(out, "replay-in {n} {verdict}")?;
        out.flush()?;
        let verdict = if send(&mut store, contact, n)? {
            "new"
        } else {
            "existing"
        };
        writeln!(out, "replay-out {n} {verdict}")?;
        out.flush()?;
    }

    for n in start.. {
        deliver(&mut store, contact, n)?;
        // Committed: only now may it be acknowledged.
        writeln!(out, "in {n}")?;
        out.flush()?;
        send(&mut store, contact, n)?;
        writeln!(out, "out {n}")?;
        out.flush()?;
    }
    Ok(())
}
