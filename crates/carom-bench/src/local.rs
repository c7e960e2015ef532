//! In-process: two engines over the loopback transport, each with a real encrypted store on
//! disk, exchanging messages that are committed, sent, committed and acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use carom_api as api;
use carom_engine::{Engine, EngineConfig, create_profile};
use carom_store::{DbKey, Store};
use carom_tor::{LoopbackNetwork, LoopbackTransport};

use crate::Sizes;
use crate::daemon::Error;
use crate::measure::{Report, cpu_time};

async fn engine(net: &LoopbackNetwork, dir: &std::path::Path, name: &str) -> Result<Engine, Error> {
    let config = EngineConfig::default();
    let mut store = Store::create(&dir.join(format!("{name}.db")), &DbKey::generate()?)?;
    let profile = create_profile(&mut store, &config)?;
    let transport = LoopbackTransport::new(net, &profile.identity).await?;
    Ok(Engine::start(store, &profile, transport, config)?)
}

/// Wait until `count` events of `kind` matching `pred` exist after `after`.
async fn wait_count(
    engine: &Engine,
    after: u64,
    kind: &str,
    count: usize,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Result<(), Error> {
    let mut notify = engine.event_notifier();
    let deadline = tokio::time::Instant::now() + limit;
    let mut cursor = after;
    let mut seen = 0;
    loop {
        loop {
            let page = engine.events_since(cursor, 5_000).await?;
            if page.is_empty() {
                break;
            }
            for e in &page {
                cursor = e.seq;
                if e.kind() == kind && pred(&e.data.to_value()) {
                    seen += 1;
                }
            }
        }
        if seen >= count {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, notify.changed())
            .await
            .is_err()
        {
            return Err(format!("only {seen} of {count} {kind} events within {limit:?}").into());
        }
    }
}

/// Durable throughput between two engines, then one-at-a-time delivery latency; with `timer`,
/// the conversation has a disappearing-message timer, so every message carries it, is indexed
/// for expiry, and (if the run outlasts the timer) is erased while traffic flows.
pub(crate) async fn throughput(
    report: &mut Report,
    sizes: Sizes,
    timer: Option<u32>,
) -> Result<(), Error> {
    let with = match timer {
        Some(t) => format!(", {}-minute timer", t / 60),
        None => String::new(),
    };
    let dir = tempfile::tempdir()?;
    let net = LoopbackNetwork::new();
    let alice = Arc::new(engine(&net, dir.path(), "alice").await?);
    let bob = Arc::new(engine(&net, dir.path(), "bob").await?);
    let b = bob.address().to_string();
    let a = alice.address().to_string();

    let start = alice.event_bounds().await?.0;
    alice
        .add_contact(api::ContactAdd {
            address: b.clone(),
            nickname: "Bob".into(),
            offer_nickname: "Alice".into(),
            greeting: String::new(),
            kind: api::PeerKind::Human,
        })
        .await?;
    wait_count(
        &bob,
        0,
        api::event::CONTACT_REQUEST_RECEIVED,
        1,
        Duration::from_secs(30),
        |_| true,
    )
    .await?;
    bob.respond(api::ContactRespond {
        address: a.clone(),
        response: api::Response::Accept,
        nickname: None,
    })
    .await?;
    wait_count(
        &alice,
        start,
        api::event::CONTACT_STATE,
        1,
        Duration::from_secs(30),
        |d| d["state"] == "accepted",
    )
    .await?;
    if let Some(t) = timer {
        let from = bob.event_bounds().await?.0;
        alice
            .set_timer(api::ContactSetTimer {
                address: b.clone(),
                timer: Some(t),
            })
            .await?;
        wait_count(
            &bob,
            from,
            api::event::CONTACT_TIMER,
            1,
            Duration::from_secs(30),
            |_| true,
        )
        .await?;
    }
    // One message to open the session.
    let warm_from = alice.event_bounds().await?.0;
    alice
        .send_message(api::MessageSend {
            to: b.clone(),
            body: "warm-up".into(),
            reply_to: None,
            client_token: None,
        })
        .await?;
    wait_count(
        &alice,
        warm_from,
        api::event::MESSAGE_STATUS,
        1,
        Duration::from_secs(30),
        |d| d["status"] == "delivered",
    )
    .await?;

    let n = sizes.local_messages;
    let body = "x".repeat(100);
    let from = alice.event_bounds().await?.0;
    let (sent0, recv0) = (alice.stats().bytes_sent, alice.stats().bytes_received);
    let cpu0 = cpu_time();
    let started = Instant::now();
    // Many frontends sending at once (the store group-commits their writes).
    let senders = 64.min(n.max(1));
    let mut tasks = Vec::new();
    for s in 0..senders {
        let alice = Arc::clone(&alice);
        let (to, body) = (b.clone(), body.clone());
        let count = n / senders + usize::from(s < n % senders);
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                alice
                    .send_message(api::MessageSend {
                        to: to.clone(),
                        body: body.clone(),
                        reply_to: None,
                        client_token: None,
                    })
                    .await?;
            }
            Ok::<(), carom_engine::EngineError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let queued = started.elapsed();
    wait_count(
        &alice,
        from,
        api::event::MESSAGE_STATUS,
        n,
        Duration::from_secs(600),
        |d| d["status"] == "delivered",
    )
    .await?;
    let elapsed = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    let stats = alice.stats();
    let wire = (stats.bytes_sent - sent0) + (stats.bytes_received - recv0);

    let rate = n as f64 / elapsed.as_secs_f64();
    let detail = format!(
        "{n} messages of 100 B, 64 concurrent senders; all queued after {:.2} s",
        queued.as_secs_f64()
    );
    if timer.is_none() {
        report.target(
            "in-process durable messages/s (loopback, 2 engines, real stores)",
            rate,
            "msg/s",
            "≥ 10,000/s".into(),
            rate >= 10_000.0,
            detail,
        );
    } else {
        report.add(
            &format!("in-process durable messages/s{with}"),
            rate,
            "msg/s",
            detail,
        );
    }
    // One at a time: what a person waits for, send to delivered.
    let mut latencies = Vec::with_capacity(200);
    for i in 0..200 {
        let from = alice.event_bounds().await?.0;
        let t = Instant::now();
        let m = alice
            .send_message(api::MessageSend {
                to: b.clone(),
                body: format!("one at a time {i}"),
                reply_to: None,
                client_token: None,
            })
            .await?;
        wait_count(
            &alice,
            from,
            api::event::MESSAGE_STATUS,
            1,
            Duration::from_secs(30),
            |d| d["id"] == m.id && d["status"] == "delivered",
        )
        .await?;
        latencies.push(t.elapsed());
    }
    let median = crate::measure::quantile(&mut latencies, 0.5);
    let p99 = crate::measure::quantile(&mut latencies, 0.99);
    report.add(
        &format!("in-process delivery latency, one at a time{with} (median)"),
        crate::measure::ms(median),
        "ms",
        format!(
            "200 messages, message.send → delivered; p99 {:.2} ms",
            crate::measure::ms(p99)
        ),
    );
    if timer.is_some() {
        return shut_down(alice, bob).await;
    }
    report.add(
        "CPU per message (both engines, whole process)",
        cpu.as_secs_f64() * 1e6 / n as f64,
        "µs",
        format!(
            "{:.2} s CPU over {:.2} s wall",
            cpu.as_secs_f64(),
            elapsed.as_secs_f64()
        ),
    );
    report.add(
        "bytes on the stream per message byte (in-process)",
        wire as f64 / (n * body.len()) as f64,
        "×",
        "both directions: frames, acks, keepalives; before Tor's cell overhead",
    );
    // Bob has every message exactly once.
    let page = bob
        .history(api::MessageList {
            with: a.clone(),
            before: None,
            limit: Some(1),
        })
        .await?;
    if page.messages.is_empty() {
        return Err("Bob received nothing".into());
    }
    drop(page);
    shut_down(alice, bob).await
}

async fn shut_down(alice: Arc<Engine>, bob: Arc<Engine>) -> Result<(), Error> {
    for engine in [alice, bob] {
        if let Ok(engine) = Arc::try_unwrap(engine) {
            engine.shutdown().await?;
        }
    }
    Ok(())
}
