//! Over a private Tor network: the raw arti limit, then Carom through real daemons.

use std::path::Path;
use std::time::{Duration, Instant};

use carom_api::event::ContactStateChange;
use carom_api::{self as api, EventData};
use carom_proto::IdentityKey;
use carom_store::{
    ContactState, DbKey, KdfParams, KeyFile, NewContact, NewIncoming, PeerKind, Protection, Store,
};
use carom_testnet::{NetworkOptions, TestNetwork};
use carom_tor::{ArtiConfig, ArtiTransport, TorNetwork, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Sizes;
use crate::daemon::{Daemon, Error, next_matching, watcher};
use crate::measure::{Report, ms, quantile, rss_mib};

const LONG: Duration = Duration::from_secs(300);
/// How long a freshly started client or daemon idles before a cold dial is measured.
const IDLE_BEFORE_COLD: Duration = Duration::from_secs(3);

/// An arti transport on the test network with its own directories.
async fn transport(net: &TestNetwork, dir: &Path) -> Result<ArtiTransport, Error> {
    let mut config = ArtiConfig::new(dir);
    config.network = TorNetwork::CustomFile(net.arti_config_path());
    let t = ArtiTransport::start(config, &IdentityKey::generate(&mut rand::thread_rng())).await?;
    let mut status = t.status();
    let deadline = tokio::time::Instant::now() + LONG;
    while !status.borrow().bootstrap.ready {
        tokio::time::timeout_at(deadline, status.changed()).await??;
    }
    Ok(t)
}

/// Dial until it works (descriptors take a moment to appear); returns the stream and the time
/// of the successful attempt.
async fn dial(
    t: &ArtiTransport,
    to: &carom_proto::OnionAddress,
) -> Result<(carom_tor::ArtiStream, Duration), Error> {
    let deadline = Instant::now() + LONG;
    loop {
        let started = Instant::now();
        match t.dial(to).await {
            Ok(s) => return Ok((s, started.elapsed())),
            Err(e) if Instant::now() < deadline => {
                eprintln!("   (dial retry: {e})");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// An onion service on its own arti client that echoes every stream; aborting the handle ends
/// it.
async fn echo_service(
    net: &TestNetwork,
    dir: &Path,
) -> Result<(carom_proto::OnionAddress, tokio::task::JoinHandle<()>), Error> {
    let service = transport(net, dir).await?;
    let address = service.address();
    let accept = tokio::spawn(async move {
        while let Some(mut stream) = service.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0
                        || stream.write_all(&buf[..n]).await.is_err()
                        || stream.flush().await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok((address, accept))
}

/// One echo round trip of 64 bytes.
async fn echo(stream: &mut carom_tor::ArtiStream) -> Result<Duration, Error> {
    let payload = [7u8; 64];
    let mut back = [0u8; 64];
    let t = Instant::now();
    stream.write_all(&payload).await?;
    stream.flush().await?;
    stream.read_exact(&mut back).await?;
    Ok(t.elapsed())
}

/// The limit: how fast arti itself connects to an onion service and echoes over it.
async fn raw_limit(
    report: &mut Report,
    net: &TestNetwork,
    root: &Path,
    sizes: Sizes,
) -> Result<(Duration, Duration), Error> {
    let (address, accept) = echo_service(net, &root.join("raw-service")).await?;
    // Publication first: dial once from a throwaway client until the service answers.
    let probe = transport(net, &root.join("raw-probe")).await?;
    drop(dial(&probe, &address).await?);
    drop(probe);

    let mut connects = Vec::new();
    let mut rtts = Vec::new();
    for i in 0..sizes.samples.min(5) {
        // A fresh client each time: nothing cached, a full rendezvous — in the same conditions
        // as a cold Carom dial (a daemon idle for a few seconds after its start).
        let client = transport(net, &root.join(format!("raw-client-{i}"))).await?;
        tokio::time::sleep(IDLE_BEFORE_COLD).await;
        let (mut stream, took) = dial(&client, &address).await?;
        connects.push(took);
        for _ in 0..sizes.samples.max(10) {
            rtts.push(echo(&mut stream).await?);
        }
    }
    accept.abort();
    let connect = quantile(&mut connects, 0.5);
    let rtt = quantile(&mut rtts, 0.5);
    report.add(
        "raw arti connect to an onion service (fresh client), median",
        ms(connect),
        "ms",
        "the limit for a cold dial",
    );
    report.add(
        "raw arti echo round trip over an open stream, median",
        ms(rtt),
        "ms",
        format!("p90 {:.1} ms", ms(quantile(&mut rtts, 0.9))),
    );
    Ok((connect, rtt))
}

/// The network's own limit for a fan-out: one arti client with a stream open to each of
/// `peers` echo services (each on its own arti client, as each group member is its own
/// daemon), a 64-byte write on every stream at once, until every echo is back. This is what a
/// group message to `peers` members costs without Carom: the slowest of several circuits.
async fn raw_fan_out(
    report: &mut Report,
    net: &TestNetwork,
    root: &Path,
    sizes: Sizes,
    peers: usize,
) -> Result<(), Error> {
    let mut services = Vec::new();
    for i in 0..peers {
        services.push(echo_service(net, &root.join(format!("fan-service-{i}"))).await?);
    }
    let client = transport(net, &root.join("fan-client")).await?;
    let mut streams = Vec::new();
    for (address, _) in &services {
        let (mut stream, _) = dial(&client, address).await?;
        echo(&mut stream).await?;
        streams.push(stream);
    }
    // Each stream alone first, one after another: the per-circuit figure without contention.
    let mut alone = Vec::new();
    for _ in 0..sizes.samples.max(5) {
        for stream in &mut streams {
            alone.push(echo(stream).await?);
        }
    }
    let mut all = Vec::new();
    let mut firsts = Vec::new();
    for _ in 0..sizes.samples.max(5) {
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for mut stream in streams.drain(..) {
            tasks.spawn(async move {
                let r = echo(&mut stream).await;
                (stream, r, Instant::now())
            });
        }
        let mut first = None::<Instant>;
        let mut last = t;
        while let Some(joined) = tasks.join_next().await {
            let (stream, r, at) = joined?;
            r?;
            first = Some(first.map_or(at, |f| f.min(at)));
            last = last.max(at);
            streams.push(stream);
        }
        all.push(last - t);
        firsts.push(first.unwrap_or(last) - t);
    }
    for (_, accept) in services {
        accept.abort();
    }
    report.add(
        "raw arti echo on each of several streams, one at a time, median",
        ms(quantile(&mut alone, 0.5)),
        "ms",
        format!(
            "{peers} onion services, one client; p90 {:.1} ms",
            ms(quantile(&mut alone, 0.9))
        ),
    );
    report.add(
        "raw arti echo on all of them at once → every echo back, median",
        ms(quantile(&mut all, 0.5)),
        "ms",
        format!(
            "the limit for a fan-out to {peers}; first back {:.1} ms; p90 {:.1} ms",
            ms(quantile(&mut firsts, 0.5)),
            ms(quantile(&mut all, 0.9))
        ),
    );
    Ok(())
}

pub(crate) async fn run(report: &mut Report, sizes: Sizes) -> Result<(), Error> {
    let started = Instant::now();
    let net =
        tokio::task::spawn_blocking(|| TestNetwork::start(&NetworkOptions::default())).await??;
    report.add(
        "private network start to usable consensus",
        started.elapsed().as_secs_f64(),
        "s",
        "3 authorities, 4 relays",
    );
    let root = tempfile::tempdir()?;
    match measure(report, &net, root.path(), sizes).await {
        Ok(()) => Ok(()),
        Err(e) => {
            // Keep the daemons' directories (logs, databases) for whoever has to find out why.
            let kept = root.keep();
            Err(format!(
                "{e} (daemon logs kept in {}; CAROM_DAEMON_LOG=debug gives more)",
                kept.display()
            )
            .into())
        }
    }
}

async fn measure(
    report: &mut Report,
    net: &TestNetwork,
    root: &Path,
    sizes: Sizes,
) -> Result<(), Error> {
    let (raw_connect, raw_rtt) = raw_limit(report, net, root, sizes).await?;

    // Two daemons that announce nothing until they have something to deliver, so that a
    // message after a restart is genuinely cold.
    let quiet = "[messaging]\npresence = false\n";
    let arti = net.arti_config_path();
    let mut alice = Daemon::start(&root.join("alice"), "alice", &arti, quiet)?;
    let mut bob = Daemon::start(&root.join("bob"), "bob", &arti, quiet)?;
    let (a, startup) = alice.up().await?;
    let (b, _) = bob.up().await?;
    report.add(
        "caromd start → Tor ready and onion service published",
        startup.as_secs_f64(),
        "s",
        "new profile (no passphrase, no KDF wait)",
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss_mib(alice.pid());
    report.target(
        "caromd RSS, idle, arti bootstrapped, onion service running",
        idle,
        "MiB",
        "≤ 60 MiB".into(),
        idle <= 60.0,
        "VmRSS from /proc",
    );

    // First contact: Alice's request → the recipient's daemon has it. Bob first, then fresh
    // recipients for more samples (a first contact happens once per pair).
    let mut firsts = Vec::new();
    let mut strangers = Vec::new();
    for i in 0..sizes.samples.min(5) {
        if i > 0 {
            let d = Daemon::start(&root.join(format!("stranger{i}")), "stranger", &arti, quiet)?;
            let (address, _) = d.up().await?;
            strangers.push((d, address));
            tokio::time::sleep(IDLE_BEFORE_COLD).await;
        }
        let (recipient, to) = match strangers.last() {
            Some((d, address)) if i > 0 => (d, address.clone()),
            _ => (&bob, b.clone()),
        };
        let events = watcher(recipient, &[api::event::CONTACT_REQUEST_RECEIVED]).await?;
        let t = Instant::now();
        alice
            .client()
            .await?
            .add_contact(&api::ContactAdd {
                address: to,
                nickname: format!("peer {i}"),
                offer_nickname: "Alice".into(),
                greeting: "hi".into(),
                kind: api::PeerKind::Human,
            })
            .await?;
        let at = next_matching(&events, LONG, |_| true).await?;
        firsts.push(at - t);
    }
    for (mut d, _) in strangers {
        d.stop().await;
    }
    let shown: Vec<String> = firsts.iter().map(|d| format!("{:.0}", ms(*d))).collect();
    let first = quantile(&mut firsts, 0.5);
    let limit = raw_connect + raw_rtt.mul_f64(2.2);
    report.target(
        "first contact: contact.add → request received at the peer, median",
        ms(first),
        "ms",
        format!("≤ raw connect + 2.2 × RTT = {:.0} ms", ms(limit)),
        first <= limit,
        format!(
            "= raw connect + {:.1} × RTT; samples {} ms",
            (ms(first) - ms(raw_connect)) / ms(raw_rtt),
            shown.join(", ")
        ),
    );
    bob.client()
        .await?
        .respond(&a, api::Response::Accept, None)
        .await?;
    let alice_status = watcher(&alice, &[api::event::CONTACT_STATE]).await?;
    next_matching(&alice_status, LONG, |e| {
        matches!(&e.data, EventData::StateChanged(c) if c.state == ContactStateChange::Accepted)
    }).await?;

    // Warm: a session is up.
    let alice_client = alice.client().await?;
    let send = |body: String| {
        let c = alice_client.clone();
        let to = b.clone();
        async move {
            c.send(&api::MessageSend {
                to,
                body,
                reply_to: None,
                client_token: None,
            })
            .await
        }
    };
    let delivered = watcher(&alice, &[api::event::MESSAGE_STATUS]).await?;
    let m = send("warm-up".into()).await?;
    next_matching(&delivered, LONG, |e| is_delivered(e, |id| id == m.id)).await?;
    let mut warm = Vec::new();
    for i in 0..sizes.samples.max(5) {
        let t = Instant::now();
        let m = send(format!("warm {i}")).await?;
        next_matching(&delivered, LONG, |e| is_delivered(e, |id| id == m.id)).await?;
        warm.push(t.elapsed());
    }
    let warm_p50 = quantile(&mut warm, 0.5);
    report.target(
        "warm message: message.send → delivered at the sender, median",
        ms(warm_p50),
        "ms",
        format!("≤ 1.1 × raw echo RTT = {:.1} ms", ms(raw_rtt.mul_f64(1.1))),
        warm_p50 <= raw_rtt.mul_f64(1.1),
        format!(
            "{:.2} × raw RTT (p90 {:.1} ms; includes 3 fsynced commits and 2 API hops)",
            ms(warm_p50) / ms(raw_rtt),
            ms(quantile(&mut warm, 0.9))
        ),
    );

    raw_fan_out(
        report,
        net,
        root,
        sizes,
        sizes.group_members.saturating_sub(1).max(1),
    )
    .await?;
    crate::groups::run(report, net, root, sizes, warm_p50).await?;

    // Burst: many messages over the one session, queued by several frontends at once (as a
    // busy user's clients would), so that the session, not one API round trip, is measured.
    let before = alice_client.stats().await?;
    let t = Instant::now();
    let frontends = 16.min(sizes.burst.max(1));
    let mut tasks = Vec::new();
    for f in 0..frontends {
        let c = alice.client().await?;
        let to = b.clone();
        let count = sizes.burst / frontends + usize::from(f < sizes.burst % frontends);
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for i in 0..count {
                last = c
                    .send(&api::MessageSend {
                        to: to.clone(),
                        body: format!("burst {f:02}-{i:05} {}", "x".repeat(82)),
                        reply_to: None,
                        client_token: None,
                    })
                    .await?
                    .id;
            }
            Ok::<i64, carom_client::ClientError>(last)
        }));
    }
    let mut last_ids = Vec::new();
    for task in tasks {
        last_ids.push(task.await??);
    }
    // Delivery is in order, so the highest id delivered means all were.
    let last = last_ids.into_iter().max().unwrap_or(0);
    next_matching(&delivered, LONG, |e| is_delivered(e, |id| id >= last)).await?;
    let burst_time = t.elapsed();
    let after = alice_client.stats().await?;
    let wire =
        (after.bytes_sent - before.bytes_sent) + (after.bytes_received - before.bytes_received);
    let body_bytes = sizes.burst * 100;
    report.add(
        "burst over one Tor session: messages delivered and acknowledged per second",
        sizes.burst as f64 / burst_time.as_secs_f64(),
        "msg/s",
        format!(
            "{} messages of 100 B, each committed before sending and after receipt",
            sizes.burst
        ),
    );
    report.add(
        "burst: Carom stream bytes (both ways) per message byte",
        wire as f64 / body_bytes as f64,
        "×",
        "Tor adds its own cells (514 B per ≤ 498 B of data) below this",
    );

    // Cold: Alice comes online (a restart: no session, no circuits, nothing cached in arti's
    // memory) and writes to Bob, who has been online all along. Bob's key is cached: IK.
    // (Restarting Bob too would measure arti 0.47's restart, which republishes the service
    // with new introduction points.)
    let mut cold = Vec::new();
    for i in 0..sizes.samples.min(5) {
        alice.restart().await?;
        alice.up().await?;
        tokio::time::sleep(IDLE_BEFORE_COLD).await;
        let c = alice.client().await?;
        let delivered = watcher(&alice, &[api::event::MESSAGE_STATUS]).await?;
        let t = Instant::now();
        let m = c
            .send(&api::MessageSend {
                to: b.clone(),
                body: format!("cold {i}"),
                reply_to: None,
                client_token: None,
            })
            .await?;
        next_matching(&delivered, LONG, |e| is_delivered(e, |id| id == m.id)).await?;
        cold.push(t.elapsed());
    }
    let shown: Vec<String> = cold.iter().map(|d| format!("{:.0}", ms(*d))).collect();
    let cold_p50 = quantile(&mut cold, 0.5);
    let limit = raw_connect + raw_rtt.mul_f64(1.2);
    report.target(
        "cold message to a known contact: message.send → delivered, median",
        ms(cold_p50),
        "ms",
        format!("≤ raw connect + 1.2 × RTT = {:.0} ms", ms(limit)),
        cold_p50 <= limit,
        format!(
            "= raw connect + {:.1} × RTT; samples {} ms",
            (ms(cold_p50) - ms(raw_connect)) / ms(raw_rtt),
            shown.join(", ")
        ),
    );
    let embedded = Embedded {
        warm: warm_p50,
        cold: cold_p50,
        rss: idle,
    };
    system_backend(report, net, root, sizes, (&bob, &b), embedded).await?;
    bridge_backend(report, net, root, sizes, (&bob, &b), embedded).await?;
    alice.stop().await;
    bob.stop().await;

    large_profile(report, net, root, sizes).await?;
    crate::groups::wide(report, net, root, sizes).await
}

/// Warm and cold messages from a daemon on the system-tor backend (a C tor client of this
/// network with a control port, as a system's tor) to Bob on his own arti, beside the
/// embedded figures of the same run; and that daemon's memory without arti inside it.
async fn system_backend(
    report: &mut Report,
    net: &TestNetwork,
    root: &Path,
    sizes: Sizes,
    peer: (&Daemon, &str),
    embedded: Embedded,
) -> Result<(), Error> {
    let tor = tokio::task::block_in_place(|| net.start_ctor_client_with_control())?;
    let config = format!(
        "[messaging]\npresence = false\n[tor]\nbackend = \"system\"\ncontrol_port = \"{}\"\nsocks_port = \"{}\"\n",
        tor.control_addr()
            .ok_or("the C tor client has no control port")?,
        tor.socks_addr()
    );
    let other = Backend {
        name: "carol",
        on: "on the system's tor",
        startup_note: "new profile; tor already bootstrapped".into(),
        rss_note: format!(
            "(tor not counted); embedded, with arti inside: {:.1} MiB; the C tor process: {:.1} MiB",
            embedded.rss,
            rss_mib(tor.pid())
        ),
        cold_note: "daemon restarted, tor not",
        helper: None,
        config,
    };
    compare_backend(report, net, root, sizes, peer, embedded, other).await
}

/// The same through an obfs4 bridge: a daemon whose only way into the network is an unlisted
/// bridge of it behind obfs4 (Debian's obfs4proxy at both ends), to Bob on the open network.
async fn bridge_backend(
    report: &mut Report,
    net: &TestNetwork,
    root: &Path,
    sizes: Sizes,
    peer: (&Daemon, &str),
    embedded: Embedded,
) -> Result<(), Error> {
    let bridge = tokio::task::block_in_place(|| net.start_obfs4_bridge())?;
    let config = format!(
        "[messaging]\npresence = false\n[tor]\nbridges = [\"{}\"]\n",
        bridge.bridge_line()
    );
    let other = Backend {
        name: "dave",
        on: "through an obfs4 bridge",
        startup_note: "new profile; arti bootstraps through the bridge".into(),
        rss_note: format!(
            "(obfs4proxy not counted); without a bridge: {:.1} MiB",
            embedded.rss
        ),
        cold_note: "daemon restarted: arti, obfs4proxy and the bridge's circuit anew",
        helper: Some("obfs4proxy"),
        config,
    };
    compare_backend(report, net, root, sizes, peer, embedded, other).await
}

/// The embedded figures of this run another way of reaching Tor is compared with.
#[derive(Clone, Copy)]
struct Embedded {
    warm: Duration,
    cold: Duration,
    rss: f64,
}

/// Another way of reaching Tor, as a daemon configuration, and the words of its figures.
struct Backend {
    name: &'static str,
    on: &'static str,
    startup_note: String,
    rss_note: String,
    cold_note: &'static str,
    /// A child process of the daemon whose memory is reported beside it.
    helper: Option<&'static str>,
    config: String,
}

/// Start-up, idle RSS, and warm and cold messages to `peer` of a daemon reaching Tor as
/// `other` says, as ratios to the embedded figures of the same run.
async fn compare_backend(
    report: &mut Report,
    net: &TestNetwork,
    root: &Path,
    sizes: Sizes,
    peer: (&Daemon, &str),
    embedded: Embedded,
    other: Backend,
) -> Result<(), Error> {
    let (bob, b) = peer;
    let on = other.on;
    let mut carol = Daemon::start(
        &root.join(other.name),
        other.name,
        &net.arti_config_path(),
        &other.config,
    )?;
    let (c, startup) = carol.up().await?;
    report.add(
        &format!("caromd {on}: start → onion service published"),
        startup.as_secs_f64(),
        "s",
        other.startup_note,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut rss_note = other.rss_note;
    if let Some(helper) = other.helper {
        rss_note.push_str(&format!(
            "; its {helper} child: {:.1} MiB",
            crate::measure::children_rss_mib(carol.pid(), helper)
        ));
    }
    report.add(
        &format!("caromd RSS, idle, {on}"),
        rss_mib(carol.pid()),
        "MiB",
        rss_note,
    );
    let requests = watcher(bob, &[api::event::CONTACT_REQUEST_RECEIVED]).await?;
    let accepted = watcher(&carol, &[api::event::CONTACT_STATE]).await?;
    carol
        .client()
        .await?
        .add_contact(&api::ContactAdd {
            address: b.to_owned(),
            nickname: "Bob".into(),
            offer_nickname: other.name.into(),
            greeting: "hi".into(),
            kind: api::PeerKind::Human,
        })
        .await?;
    next_matching(&requests, LONG, |_| true).await?;
    bob.client()
        .await?
        .respond(&c, api::Response::Accept, None)
        .await?;
    next_matching(&accepted, LONG, |e| {
        matches!(&e.data, EventData::StateChanged(s) if s.state == ContactStateChange::Accepted)
    })
    .await?;

    let send = |client: carom_client::Client, body: String| {
        let to = b.to_owned();
        async move {
            client
                .send(&api::MessageSend {
                    to,
                    body,
                    reply_to: None,
                    client_token: None,
                })
                .await
        }
    };
    let delivered = watcher(&carol, &[api::event::MESSAGE_STATUS]).await?;
    let m = send(carol.client().await?, "warm-up".into()).await?;
    next_matching(&delivered, LONG, |e| is_delivered(e, |id| id == m.id)).await?;
    let mut warm = Vec::new();
    for i in 0..sizes.samples.max(5) {
        let t = Instant::now();
        let m = send(carol.client().await?, format!("warm {i}")).await?;
        next_matching(&delivered, LONG, |e| is_delivered(e, |id| id == m.id)).await?;
        warm.push(t.elapsed());
    }
    let warm_p50 = quantile(&mut warm, 0.5);
    report.add(
        &format!("warm message from caromd {on}, median"),
        ms(warm_p50),
        "ms",
        format!(
            "{:.2} × the embedded warm message of this run ({:.1} ms)",
            ms(warm_p50) / ms(embedded.warm),
            ms(embedded.warm)
        ),
    );
    let mut cold = Vec::new();
    for i in 0..sizes.samples.min(5) {
        carol.restart().await?;
        carol.up().await?;
        tokio::time::sleep(IDLE_BEFORE_COLD).await;
        let delivered = watcher(&carol, &[api::event::MESSAGE_STATUS]).await?;
        let t = Instant::now();
        let m = send(carol.client().await?, format!("cold {i}")).await?;
        next_matching(&delivered, LONG, |e| is_delivered(e, |id| id == m.id)).await?;
        cold.push(t.elapsed());
    }
    let shown: Vec<String> = cold.iter().map(|d| format!("{:.0}", ms(*d))).collect();
    let cold_p50 = quantile(&mut cold, 0.5);
    report.add(
        &format!(
            "cold message from caromd {on} ({}), median",
            other.cold_note
        ),
        ms(cold_p50),
        "ms",
        format!(
            "{:.2} × the embedded cold message of this run ({:.0} ms); samples {} ms",
            ms(cold_p50) / ms(embedded.cold),
            ms(embedded.cold),
            shown.join(", ")
        ),
    );
    carol.stop().await;
    Ok(())
}

/// A daemon holding `large_contacts` contacts and `large_messages` messages.
async fn large_profile(
    report: &mut Report,
    net: &TestNetwork,
    root: &Path,
    sizes: Sizes,
) -> Result<(), Error> {
    let dir = root.join("large");
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let built = Instant::now();
    let contacts = sizes.large_contacts;
    let messages = sizes.large_messages;
    let addresses = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || build_large(&data, contacts, messages)).await??
    };
    eprintln!(
        "   built the large profile in {:.0} s",
        built.elapsed().as_secs_f64()
    );

    let d = Daemon::start(
        &dir,
        "large",
        &net.arti_config_path(),
        "[messaging]\npresence = false\n",
    )?;
    let (_, startup) = d.up().await?;
    report.add(
        &format!(
            "caromd start → onion service published, {contacts} contacts / {messages} messages"
        ),
        startup.as_secs_f64(),
        "s",
        "unprotected key file (no KDF wait)",
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    report.add(
        &format!("caromd RSS with {contacts} contacts and {messages} stored messages"),
        rss_mib(d.pid()),
        "MiB",
        "VmRSS after start-up",
    );
    let client = d.client().await?;
    let mut pages = Vec::new();
    for i in 0..sizes.samples.max(10) * 50 {
        let with = addresses[i % addresses.len()].clone();
        let t = Instant::now();
        let page = client
            .history(&api::MessageList {
                with,
                before: None,
                limit: Some(50),
            })
            .await?;
        pages.push(t.elapsed());
        if page.messages.is_empty() && messages >= contacts {
            return Err("a large-profile history page came back empty".into());
        }
    }
    let p99 = quantile(&mut pages, 0.99);
    report.target(
        "history page of 50 through the API, p99",
        ms(p99),
        "ms",
        "≤ 5 ms".into(),
        p99 <= Duration::from_millis(5),
        format!(
            "p50 {:.2} ms, {} samples",
            ms(quantile(&mut pages, 0.5)),
            pages.len()
        ),
    );
    Ok(())
}

/// Write the large profile's files directly with the store (fast, batched), as if a daemon had
/// lived with them for years.
fn build_large(data: &Path, contacts: usize, messages: usize) -> Result<Vec<String>, Error> {
    let key: DbKey = KeyFile::create(
        &data.join("profile.key"),
        Protection::Unprotected,
        KdfParams::default(),
    )?;
    let mut store = Store::create(&data.join("profile.db"), &key)?;
    carom_engine::create_profile(&mut store, &carom_engine::EngineConfig::default())?;
    let mut ids = Vec::new();
    let mut addresses = Vec::new();
    store.write(|tx| {
        for i in 0..contacts {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            let address = IdentityKey::from_seed(&seed).address();
            ids.push(tx.insert_contact(&NewContact {
                identity: address.public_key(),
                state: ContactState::Accepted,
                nickname: format!("contact {i}"),
                offered_nickname: None,
                greeting: None,
                declared_kind: PeerKind::Human,
                now: 1,
            })?);
            addresses.push(address.to_string());
        }
        Ok(())
    })?;
    let body = "an old message, kept for years ".repeat(3);
    let mut n = 0usize;
    while n < messages {
        let batch = (messages - n).min(10_000);
        store.write(|tx| {
            for k in n..n + batch {
                let mut msg_id = [0u8; 16];
                msg_id[..8].copy_from_slice(&(k as u64).to_le_bytes());
                tx.store_incoming(&NewIncoming {
                    contact_id: ids[k % ids.len()],
                    msg_id,
                    sent_at: k as u64,
                    body: body.clone(),
                    reply_to: None,
                    now: k as u64,
                    expires_after: None,
                    expires_from: None,
                })?;
            }
            Ok(())
        })?;
        n += batch;
    }
    store.close()?;
    Ok(addresses)
}

/// Whether `e` says an outgoing message whose id passes `which` was delivered.
fn is_delivered(e: &api::Event, which: impl Fn(i64) -> bool) -> bool {
    matches!(&e.data, EventData::MessageStatus(s)
        if s.status == api::MessageStatus::Delivered && which(s.id))
}
