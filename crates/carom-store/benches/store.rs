//! Benchmark of carom-store at the size a long-lived profile reaches: 1,000,000 messages over
//! 1,000 contacts. Run with `cargo bench -p carom-store` (release build, a real file on disk).
//!
//! Measures:
//! - acknowledged appends per second: one transaction per message, `COMMIT` (WAL fsync,
//!   `synchronous=FULL`) before the next, on an empty database and at 1,000,000 messages;
//! - history page latency (50 messages; first pages and deep pages at random cursors);
//! - `outbox_for_contact_after()` (a connection's next outbox page) and `events_since()` latency.
//!
//! `CAROM_BENCH_MESSAGES` shrinks the fixture for a quick run (default 1,000,000).

// A benchmark's output is its table.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use carom_store::{
    ContactState, DbKey, NewContact, NewIncoming, NewOutgoing, PeerKind, Store, StoreRead,
};

const CONTACTS: u64 = 1_000;
const BATCH: u64 = 10_000;
const PAGE: u32 = 50;

/// A small deterministic generator (xorshift64*), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn msg_id(n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

/// A message body of typical chat length (40–200 bytes).
fn body(rng: &mut Rng, n: u64) -> String {
    let len = 40 + usize::try_from(rng.below(160)).expect("small");
    let mut text = format!("message {n}: ");
    while text.len() < len {
        text.push_str("lorem ipsum dolor sit amet ");
    }
    text.truncate(len);
    text
}

struct Stats {
    samples: Vec<Duration>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            samples: Vec::new(),
        }
    }

    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let value = f();
        self.samples.push(start.elapsed());
        value
    }

    /// The nearest-rank percentile, `percent` in 0..=100.
    fn percentile(&self, percent: usize) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        let max_index = sorted.len() - 1;
        sorted[(max_index * percent + 50) / 100]
    }

    fn total(&self) -> Duration {
        self.samples.iter().sum()
    }

    fn row(&self, what: &str) {
        println!(
            "| {what} | {} | {} | {} | {} |",
            self.samples.len(),
            fmt(self.percentile(50)),
            fmt(self.percentile(99)),
            fmt(self.percentile(100)),
        );
    }
}

fn fmt(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1_000.0 {
        format!("{micros:.0} µs")
    } else {
        format!("{:.2} ms", micros / 1_000.0)
    }
}

/// One committed transaction per message, as the daemon does before acknowledging.
fn acknowledged_appends(
    store: &mut Store,
    contacts: &[i64],
    first: u64,
    count: u64,
    timer: Option<u32>,
) -> Stats {
    let mut rng = Rng(first | 1);
    let mut stats = Stats::new();
    for n in first..first + count {
        let contact = contacts[usize::try_from(rng.below(CONTACTS)).expect("small")];
        let text = body(&mut rng, n);
        if n % 2 == 0 {
            stats.time(|| {
                store
                    .write(|tx| {
                        tx.store_incoming(&NewIncoming {
                            contact_id: contact,
                            msg_id: msg_id(n),
                            sent_at: n,
                            body: text,
                            reply_to: None,
                            now: n,
                            expires_after: timer,
                            expires_from: None,
                        })?;
                        tx.append_event("message.received", "{\"bench\":true}", n)
                    })
                    .expect("append incoming")
            });
        } else {
            stats.time(|| {
                store
                    .write(|tx| {
                        tx.queue_outgoing(&NewOutgoing {
                            contact_id: contact,
                            msg_id: msg_id(n),
                            sent_at: n,
                            body: text,
                            reply_to: None,
                            client_token: Some(format!("bench-{n}")),
                            payload: vec![0xAB; 120],
                            now: n,
                            expires_after: timer,
                            expires_from: None,
                        })?;
                        tx.append_event("message.queued", "{\"bench\":true}", n)
                    })
                    .expect("append outgoing")
            });
        }
    }
    stats
}

fn main() {
    let messages: u64 = std::env::var("CAROM_BENCH_MESSAGES")
        .ok()
        .map_or(1_000_000, |v| {
            v.parse().expect("CAROM_BENCH_MESSAGES is a number")
        });
    // On the real disk beside the build, not a RAM-backed /tmp, so fsync costs what it costs.
    let dir = tempfile::Builder::new()
        .prefix("carom-store-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temporary directory");
    let path = dir.path().join("bench.db");
    let key = DbKey::generate().expect("key");
    let mut store = Store::create(&path, &key).expect("create");

    let contacts: Vec<i64> = store
        .write(|tx| {
            (0..CONTACTS)
                .map(|i| {
                    let mut identity = [0u8; 32];
                    identity[..8].copy_from_slice(&i.to_be_bytes());
                    tx.insert_contact(&NewContact {
                        identity,
                        state: ContactState::Accepted,
                        nickname: format!("contact {i}"),
                        offered_nickname: Some(format!("offered {i}")),
                        greeting: None,
                        declared_kind: PeerKind::Human,
                        now: 0,
                    })
                })
                .collect()
        })
        .expect("contacts");

    println!("carom-store benchmark: {messages} messages over {CONTACTS} contacts");
    println!();
    println!("| operation | samples | p50 | p99 | max |");
    println!("| --- | ---: | ---: | ---: | ---: |");

    let empty = acknowledged_appends(&mut store, &contacts, 1, 1_000, None);
    empty.row("acknowledged append, empty database");

    // The fixture: batched transactions (10,000 messages each), one in ten outgoing, one
    // event per ten messages.
    let build = Instant::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let base = 10_000_000u64;
    let mut n = base;
    while n < base + messages {
        let end = (n + BATCH).min(base + messages);
        store
            .write(|tx| {
                for m in n..end {
                    let contact = contacts[usize::try_from(m % CONTACTS).expect("small")];
                    let text = body(&mut rng, m);
                    if m % 10 == 0 {
                        tx.queue_outgoing(&NewOutgoing {
                            contact_id: contact,
                            msg_id: msg_id(m),
                            sent_at: m,
                            body: text,
                            reply_to: None,
                            client_token: None,
                            payload: vec![0xCD; 120],
                            now: m,
                            expires_after: None,
                            expires_from: None,
                        })?;
                    } else {
                        tx.store_incoming(&NewIncoming {
                            contact_id: contact,
                            msg_id: msg_id(m),
                            sent_at: m,
                            body: text,
                            reply_to: None,
                            now: m,
                            expires_after: None,
                            expires_from: None,
                        })?;
                    }
                    if m % 10 == 5 {
                        tx.append_event("message.received", "{\"n\":1}", m)?;
                    }
                }
                // Most outgoing messages get delivered; the newest stay in the outbox.
                if end + 20_000 < base + messages {
                    for contact_index in 0..CONTACTS {
                        let ids: Vec<[u8; 16]> = (n..end)
                            .filter(|m| m % 10 == 0 && m % CONTACTS == contact_index)
                            .map(msg_id)
                            .collect();
                        if !ids.is_empty() {
                            tx.mark_delivered(
                                contacts[usize::try_from(contact_index).expect("small")],
                                &ids,
                                end,
                            )?;
                        }
                    }
                }
                Ok(())
            })
            .expect("fixture batch");
        n = end;
    }
    let build_time = build.elapsed();
    let outbox = store
        .outbox_enqueued_before(u64::MAX >> 1, u32::MAX)
        .expect("outbox");

    let full = acknowledged_appends(&mut store, &contacts, base + messages + 1, 1_000, None);
    full.row("acknowledged append, full database");
    // The same with a 5-minute disappearing timer on every message: the expiry index too.
    let timed = acknowledged_appends(
        &mut store,
        &contacts,
        base + messages + 10_001,
        1_000,
        Some(300),
    );
    timed.row("acknowledged append, full database, 5-minute timer");

    // History: half first pages, half from a random cursor inside the conversation.
    let rows_per_contact = messages / CONTACTS;
    let mut history = Stats::new();
    let mut first_pages = Stats::new();
    let mut deep_pages = Stats::new();
    let top_row = store.history(contacts[0], None, 1).expect("history")[0].row;
    for i in 0..10_000 {
        let contact = contacts[usize::try_from(rng.below(CONTACTS)).expect("small")];
        let page = if i % 2 == 0 {
            let page = history.time(|| store.history(contact, None, PAGE).expect("history"));
            first_pages
                .samples
                .push(*history.samples.last().expect("sample"));
            page
        } else {
            let cursor =
                i64::try_from(rng.below(u64::try_from(top_row).expect("positive"))).expect("fits");
            let page =
                history.time(|| store.history(contact, Some(cursor), PAGE).expect("history"));
            deep_pages
                .samples
                .push(*history.samples.last().expect("sample"));
            page
        };
        assert!(page.len() <= PAGE as usize);
        if rows_per_contact > u64::from(PAGE) && i % 2 == 0 {
            assert_eq!(page.len(), PAGE as usize);
        }
    }
    history.row("history page (50), any");
    first_pages.row("history page (50), newest");
    deep_pages.row("history page (50), random cursor");

    // What a connection reads to deliver: its contact's next page of the outbox, for contacts
    // that have one (the fixture's outgoing messages go to a tenth of the contacts).
    let mut waiting: Vec<i64> = outbox.iter().map(|item| item.contact_id).collect();
    waiting.sort_unstable();
    waiting.dedup();
    let mut pages = Stats::new();
    let mut page_len = 0;
    for _ in 0..1_000 {
        let pick = rng.below(u64::try_from(waiting.len()).expect("small"));
        let contact = waiting[usize::try_from(pick).expect("small")];
        page_len = pages
            .time(|| {
                store
                    .outbox_for_contact_after(contact, 0, 64)
                    .expect("outbox page")
            })
            .len();
    }
    pages.row("outbox_for_contact_after(contact, 0, 64)");

    let last_seq = store.last_event_seq().expect("seq");
    let mut events = Stats::new();
    for _ in 0..1_000 {
        let after = rng.below(last_seq);
        events.time(|| store.events_since(after, 100).expect("events"));
    }
    events.row("events_since(seq, 100)");

    // Erasure: 100,000 messages (beside the fixture) that all fall due at once, erased as
    // the engine does — batches of 500, each its own transaction — then one checkpoint.
    let expiring: u64 = (messages / 10).clamp(1_000, 100_000);
    let first = base + messages + 100_000;
    let mut m = first;
    while m < first + expiring {
        let end = (m + BATCH).min(first + expiring);
        store
            .write(|tx| {
                for n in m..end {
                    let contact = contacts[usize::try_from(n % CONTACTS).expect("small")];
                    let text = body(&mut rng, n);
                    tx.store_incoming(&NewIncoming {
                        contact_id: contact,
                        msg_id: msg_id(n),
                        sent_at: n,
                        body: text,
                        reply_to: None,
                        now: 1_000,
                        expires_after: Some(300),
                        expires_from: None,
                    })?;
                }
                Ok(())
            })
            .expect("expiring batch");
        m = end;
    }
    store.checkpoint().expect("checkpoint");
    let mut batches = Stats::new();
    let erase_started = Instant::now();
    let mut erased = 0;
    let due_by = 1_000 + 300_000;
    loop {
        let done = batches.time(|| {
            store
                .write(|tx| tx.erase_expired(due_by, 500))
                .expect("erase")
        });
        erased += done.messages.len();
        // (The timed appends above expire later: they stay.)
        if done.next.is_none_or(|next| next > due_by) {
            break;
        }
    }
    let erase_time = erase_started.elapsed();
    let checkpoint_started = Instant::now();
    store.checkpoint().expect("checkpoint");
    let checkpoint_time = checkpoint_started.elapsed();
    assert_eq!(erased as u64, expiring);
    batches.row("erase_expired, a batch of 500 (what delivery waits behind at most)");

    drop(store);
    let size: u64 = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum();
    println!();
    println!(
        "acknowledged appends per second: {:.0} on an empty database, {:.0} at {messages} messages",
        1_000.0 / empty.total().as_secs_f64(),
        1_000.0 / full.total().as_secs_f64(),
    );
    println!(
        "erasing {expiring} expired messages: {:.2?} in {} batches of 500, then a checkpoint of \
         {:.2?} ({:.0} messages/s)",
        erase_time,
        batches.samples.len(),
        checkpoint_time,
        expiring as f64 / (erase_time + checkpoint_time).as_secs_f64(),
    );
    println!(
        "fixture: {messages} messages in {:.1?} (batches of {BATCH}); {} outbox items; \
         database {:.0} MiB; last outbox page {page_len} items (of {} contacts with an outbox)",
        build_time,
        outbox.len(),
        size as f64 / (1024.0 * 1024.0),
        waiting.len(),
    );
}
