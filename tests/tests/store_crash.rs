//! Crash test of carom-store's durability contract.
//!
//! A child process (`crash-writer`) appends messages in a loop and prints each one only after
//! its transaction has committed. It is killed with SIGKILL after a random delay, hundreds of
//! times. After every kill the database must open cleanly, pass SQLCipher's page check and
//! SQLite's integrity check, and hold every acknowledged message exactly once; the next child
//! replays the previous run's last messages (a peer and an API client retrying after a crash)
//! and every one that had been acknowledged must be recognised, not stored again.
//!
//! What a kill can hit: opening and WAL recovery, the middle of a transaction, the commit's
//! fsync, the instant between COMMIT and the acknowledgement. What it cannot simulate: power
//! loss (the kernel's page cache survives a SIGKILL); that rests on `synchronous=FULL`.
//!
//! `CAROM_CRASH_ITERATIONS` sets the number of kills (default 300) and `CAROM_CRASH_SEED` the
//! random seed (printed, so a failure can be replayed).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use carom_store::{
    ContactState, Direction, KdfParams, KeyFile, NewContact, PeerKind, Protection, Store, StoreRead,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DEFAULT_ITERATIONS: usize = 300;
const PASSPHRASE: &str = "crash test passphrase";
const CONTACT: [u8; 32] = [1; 32];
/// Each run's messages are numbered from `(iteration + 1) * RUN_STRIDE`.
const RUN_STRIDE: u64 = 1_000_000;
/// Every this many kills, the test opens the real files rather than a copy (see below).
const OPEN_ORIGINAL_EVERY: usize = 10;

fn msg_id(n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

fn number_of(msg_id: &[u8; 16]) -> u64 {
    let mut n = [0u8; 8];
    n.copy_from_slice(&msg_id[8..]);
    u64::from_be_bytes(n)
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

/// Everything the children acknowledged.
#[derive(Default)]
struct Acknowledged {
    incoming: BTreeSet<u64>,
    outgoing: BTreeSet<u64>,
}

/// What one child printed before it died.
struct RunOutput {
    lines: Vec<String>,
    stderr: String,
}

/// Reads complete lines only: a line without its newline was cut off by the kill and
/// acknowledges nothing.
fn complete_lines(stream: impl Read) -> Vec<String> {
    let mut reader = BufReader::new(stream);
    let mut lines = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return lines,
            Ok(_) if buf.ends_with(b"\n") => {
                lines.push(String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned());
            }
            Ok(_) => return lines,
        }
    }
}

fn spawn_writer(db: &Path, key: &Path, start: u64, replay: (u64, u64)) -> Child {
    Command::new(env!("CARGO_BIN_EXE_crash-writer"))
        .arg(db)
        .arg(key)
        .arg(start.to_string())
        .arg(replay.0.to_string())
        .arg(replay.1.to_string())
        .env("CAROM_CRASH_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start crash-writer")
}

/// Runs one child for `delay`, then SIGKILLs it and collects what it printed.
fn run_and_kill(
    db: &Path,
    key: &Path,
    start: u64,
    replay: (u64, u64),
    delay: Duration,
) -> RunOutput {
    let mut child = spawn_writer(db, key, start, replay);
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = thread::spawn(move || complete_lines(stdout));
    let err_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    thread::sleep(delay);
    let early_exit = child.try_wait().expect("poll crash-writer");
    // Child::kill sends SIGKILL on Unix.
    child.kill().expect("SIGKILL crash-writer");
    child.wait().expect("reap crash-writer");
    let output = RunOutput {
        lines: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    };
    if let Some(status) = early_exit {
        panic!(
            "crash-writer exited by itself ({status}) instead of being killed:\n{}",
            output.stderr
        );
    }
    output
}

/// Copies the database and its WAL to `dir`, as they were at the kill.
fn copy_database(db: &Path, dir: &Path) -> PathBuf {
    let copy = dir.join("copy.db");
    for suffix in ["-wal", "-shm", ""] {
        let _ = fs::remove_file(format!("{}{suffix}", copy.display()));
    }
    fs::copy(db, &copy).expect("copy database");
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    if wal.exists() {
        fs::copy(&wal, format!("{}-wal", copy.display())).expect("copy WAL");
    }
    copy
}

/// Opens the database after a kill and checks this run's acknowledgements.
fn check_after_kill(
    path: &Path,
    key: &carom_store::DbKey,
    contact: i64,
    incoming: &[u64],
    outgoing: &[u64],
    context: &str,
) {
    let store = Store::open(path, key)
        .unwrap_or_else(|e| panic!("{context}: the database did not open after a kill: {e}"));
    store
        .check_integrity()
        .unwrap_or_else(|e| panic!("{context}: {e}"));
    for (direction, numbers, prefix) in [
        (Direction::Incoming, incoming, "incoming"),
        (Direction::Outgoing, outgoing, "outgoing"),
    ] {
        for &n in numbers {
            // The unique index allows at most one row per (contact, direction, id); the final
            // scan checks that independently.
            let message = store
                .message_by_id(contact, direction, &msg_id(n))
                .expect("read message")
                .unwrap_or_else(|| {
                    panic!("{context}: acknowledged {prefix} message {n} is missing")
                });
            assert_eq!(message.body, format!("{prefix} message {n}"), "{context}");
        }
    }
}

/// Reads everything and checks the whole history: every acknowledged message exactly once,
/// every queued message with its outbox item, and one event per incoming message.
fn check_everything(path: &Path, key: &carom_store::DbKey, contact: i64, acked: &Acknowledged) {
    let store = Store::open(path, key).expect("open for the final check");
    store.check_integrity().expect("final integrity check");
    let mut seen: BTreeMap<(Direction, u64), usize> = BTreeMap::new();
    let mut outgoing_rows = BTreeSet::new();
    let mut cursor = None;
    loop {
        let page = store.history(contact, cursor, 500).expect("history page");
        let Some(last) = page.last() else { break };
        cursor = Some(last.row);
        for m in &page {
            *seen.entry((m.direction, number_of(&m.msg_id))).or_default() += 1;
            if m.direction == Direction::Outgoing {
                outgoing_rows.insert(m.row);
            }
        }
    }
    let duplicates: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        duplicates.is_empty(),
        "stored more than once: {duplicates:?}"
    );
    for n in &acked.incoming {
        assert!(
            seen.contains_key(&(Direction::Incoming, *n)),
            "acknowledged incoming message {n} is missing"
        );
    }
    for n in &acked.outgoing {
        assert!(
            seen.contains_key(&(Direction::Outgoing, *n)),
            "acknowledged outgoing message {n} is missing"
        );
    }
    // Queueing is atomic: every outgoing message has its outbox item, and no item is orphaned.
    let outbox_rows: Vec<i64> = store
        .outbox_for_contact(contact)
        .expect("outbox")
        .iter()
        .map(|item| item.message_row.expect("chat items point at a message"))
        .collect();
    assert_eq!(
        outbox_rows.iter().copied().collect::<BTreeSet<_>>(),
        outgoing_rows,
        "messages and outbox items must be committed together"
    );
    assert_eq!(outbox_rows.len(), outgoing_rows.len());
    // Each stored incoming message came with exactly one event, in the same transaction.
    let mut events = 0u64;
    let mut after = 0;
    loop {
        let page = store.events_since(after, 1_000).expect("events");
        let Some(last) = page.last() else { break };
        after = last.seq;
        events += page.len() as u64;
    }
    let incoming_rows = seen
        .keys()
        .filter(|(d, _)| *d == Direction::Incoming)
        .count() as u64;
    assert_eq!(
        events, incoming_rows,
        "one event per stored incoming message"
    );
}

#[test]
fn acknowledged_messages_survive_sigkill_exactly_once() {
    let iterations = env_number("CAROM_CRASH_ITERATIONS").map_or(DEFAULT_ITERATIONS, |n| {
        usize::try_from(n).expect("CAROM_CRASH_ITERATIONS fits in usize")
    });
    let seed = env_number("CAROM_CRASH_SEED").unwrap_or_else(|| rand::thread_rng().r#gen());
    eprintln!("store crash test: {iterations} kills, CAROM_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().expect("temporary directory");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let key_path = dir.path().join("carom.key");
    let db_path = dir.path().join("carom.db");
    let cheap = KdfParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };
    let key = KeyFile::create(
        &key_path,
        Protection::Passphrase(PASSPHRASE.as_bytes()),
        cheap,
    )
    .expect("create key file");
    let contact = {
        let mut store = Store::create(&db_path, &key).expect("create database");
        store
            .write(|tx| {
                tx.insert_contact(&NewContact {
                    identity: CONTACT,
                    state: ContactState::Accepted,
                    nickname: "peer".into(),
                    offered_nickname: None,
                    greeting: None,
                    declared_kind: PeerKind::Human,
                    now: 0,
                })
            })
            .expect("create contact")
    };

    let started = Instant::now();
    let mut acked = Acknowledged::default();
    let mut replay = (0, 0);
    let mut runs_without_ack = 0;
    let mut replays_recognised = 0;
    for iteration in 0..iterations {
        let context = format!("kill {iteration} (CAROM_CRASH_SEED={seed})");
        let start = (iteration as u64 + 1) * RUN_STRIDE;
        let delay = Duration::from_millis(rng.gen_range(2..=100));
        let output = run_and_kill(&db_path, &key_path, start, replay, delay);

        let mut run_incoming = Vec::new();
        let mut run_outgoing = Vec::new();
        for line in &output.lines {
            let words: Vec<&str> = line.split(' ').collect();
            let n = |i: usize| -> u64 {
                words[i]
                    .parse()
                    .unwrap_or_else(|_| panic!("{context}: bad line {line:?}"))
            };
            match words.as_slice() {
                ["in", _] => run_incoming.push(n(1)),
                ["out", _] => run_outgoing.push(n(1)),
                ["replay-in", _, verdict] => {
                    if acked.incoming.contains(&n(1)) {
                        assert_eq!(
                            *verdict,
                            "duplicate",
                            "{context}: acknowledged message {} stored again",
                            n(1)
                        );
                        replays_recognised += 1;
                    }
                    run_incoming.push(n(1));
                }
                ["replay-out", _, verdict] => {
                    if acked.outgoing.contains(&n(1)) {
                        assert_eq!(
                            *verdict,
                            "existing",
                            "{context}: acknowledged send {} queued again",
                            n(1)
                        );
                        replays_recognised += 1;
                    }
                    run_outgoing.push(n(1));
                }
                _ => panic!("{context}: unexpected output {line:?}\n{}", output.stderr),
            }
        }
        if run_incoming.is_empty() && run_outgoing.is_empty() {
            runs_without_ack += 1;
        }

        // Usually check a copy of the files as the kill left them, so the next child itself
        // must recover the un-checkpointed WAL; every few kills, open the real files.
        let open_original = iteration % OPEN_ORIGINAL_EVERY == OPEN_ORIGINAL_EVERY - 1;
        let path = if open_original {
            db_path.clone()
        } else {
            copy_database(&db_path, scratch.path())
        };
        check_after_kill(&path, &key, contact, &run_incoming, &run_outgoing, &context);

        // The next child re-delivers the last two messages this one acknowledged and the two
        // after them (which may or may not have been committed).
        replay = match run_incoming.iter().filter(|n| **n >= start).max() {
            Some(&last) => (last.saturating_sub(1).max(start), 4),
            None => (start, 2),
        };
        acked.incoming.extend(run_incoming);
        acked.outgoing.extend(run_outgoing);
    }

    check_everything(&db_path, &key, contact, &acked);
    eprintln!(
        "store crash test: {iterations} SIGKILLs in {:.1?}; {} incoming and {} outgoing \
         acknowledged messages all present exactly once; {replays_recognised} replays of \
         acknowledged messages recognised; {runs_without_ack} kills before the first \
         acknowledgement",
        started.elapsed(),
        acked.incoming.len(),
        acked.outgoing.len(),
    );
    assert!(
        acked.incoming.len() >= iterations,
        "too few acknowledgements for the test to mean much"
    );
}
