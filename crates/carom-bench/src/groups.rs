//! Groups over the private Tor network: a group of real daemons (eight in a full run), every
//! pair of them contacts. Measured: `group.send` → delivered to all the others (against the
//! 1:1 warm figure of the same run), a burst of group messages, the RSS of a daemon in many
//! groups of those daemons, and the RSS of a daemon holding many groups of 32 members whose
//! histories were built offline (32 daemons per group would not fit this machine).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use carom_api::{self as api, EventData};
use carom_group::{Action, GroupId, History, Policy, Role};
use carom_proto::{IdentityKey, PeerKind};
use carom_store::{DbKey, GroupState, KdfParams, KeyFile, Protection, Store, StoredOperation};
use carom_testnet::TestNetwork;

use crate::Sizes;
use crate::daemon::{Daemon, Error, next_matching, watcher};
use crate::measure::{Report, ms, quantile, rss_mib};

const LONG: Duration = Duration::from_secs(300);

async fn pair(a: &Daemon, a_addr: &str, b: &Daemon, b_addr: &str) -> Result<(), Error> {
    let requests = watcher(b, &[api::event::CONTACT_REQUEST_RECEIVED]).await?;
    a.client()
        .await?
        .add_contact(&api::ContactAdd {
            address: b_addr.to_owned(),
            nickname: String::new(),
            offer_nickname: String::new(),
            greeting: String::new(),
            kind: api::PeerKind::Human,
        })
        .await?;
    let from = a_addr.to_owned();
    next_matching(
        &requests,
        LONG,
        |e| matches!(&e.data, EventData::RequestReceived(r) if r.address == from),
    )
    .await?;
    let accepted = watcher(a, &[api::event::CONTACT_STATE]).await?;
    b.client()
        .await?
        .respond(a_addr, api::Response::Accept, None)
        .await?;
    let to = b_addr.to_owned();
    next_matching(&accepted, LONG, |e| {
        matches!(&e.data, EventData::StateChanged(c) if c.address == to
            && c.state == api::event::ContactStateChange::Accepted)
    })
    .await?;
    Ok(())
}

/// A group of all `daemons`, made by the first; returns its id once every member sees all.
async fn group_of(daemons: &[(Daemon, String)], name: &str) -> Result<String, Error> {
    let (creator, _) = &daemons[0];
    let group = creator
        .client()
        .await?
        .call::<api::method::GroupCreate>(&api::GroupCreate {
            name: name.into(),
            members_can_invite: false,
            member_name: String::new(),
            kind: api::PeerKind::Human,
        })
        .await?
        .id;
    for (d, address) in &daemons[1..] {
        let invited = watcher(d, &[api::event::GROUP_INVITED]).await?;
        creator
            .client()
            .await?
            .call::<api::method::GroupInvite>(&api::GroupInvite {
                group: group.clone(),
                address: address.clone(),
                role: api::GroupRole::Member,
            })
            .await?;
        let g = group.clone();
        next_matching(
            &invited,
            LONG,
            |e| matches!(&e.data, EventData::GroupInvited(i) if i.group == g),
        )
        .await?;
        d.client()
            .await?
            .call::<api::method::GroupAccept>(&api::GroupAccept {
                group: group.clone(),
                name: String::new(),
                kind: api::PeerKind::Human,
            })
            .await?;
    }
    let deadline = Instant::now() + LONG;
    for (d, _) in daemons {
        loop {
            let g = d
                .client()
                .await?
                .call::<api::method::GroupGet>(&api::GroupParams {
                    group: group.clone(),
                })
                .await?;
            if g.members.len() == daemons.len() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "a member sees {} of {} members",
                    g.members.len(),
                    daemons.len()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(group)
}

/// Wait until group message `id` is delivered to `recipients` distinct members, counting the
/// sender's `group.delivery` events on `events`; returns when the first and the last arrived.
async fn all_delivered(
    events: &carom_client::Client,
    id: i64,
    recipients: usize,
) -> Result<(Instant, Instant), Error> {
    let reached = std::sync::Mutex::new((HashSet::new(), None::<Instant>));
    let last = next_matching(events, LONG, |e| {
        let mut reached = reached.lock().unwrap_or_else(|p| p.into_inner());
        if let EventData::GroupDelivery(d) = &e.data
            && d.id == id
            && d.status == api::DeliveryStatus::Delivered
        {
            reached.0.insert(d.recipient.clone());
            reached.1.get_or_insert_with(Instant::now);
        }
        reached.0.len() >= recipients
    })
    .await?;
    let first = reached
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .1
        .unwrap_or(last);
    Ok((first, last))
}

pub(crate) async fn run(
    report: &mut Report,
    net: &TestNetwork,
    root: &Path,
    sizes: Sizes,
    warm_1to1: Duration,
) -> Result<(), Error> {
    let arti = net.arti_config_path();
    let quiet = "[messaging]\npresence = false\n";
    let members = sizes.group_members;
    let mut daemons = Vec::new();
    for i in 0..members {
        let d = Daemon::start(&root.join(format!("member{i}")), "member", &arti, quiet)?;
        let (address, _) = d.up().await?;
        daemons.push((d, address));
    }
    let t = Instant::now();
    for i in 0..members {
        for j in i + 1..members {
            pair(&daemons[i].0, &daemons[i].1, &daemons[j].0, &daemons[j].1).await?;
        }
    }
    report.add(
        "group setup: daemons pair with each other",
        t.elapsed().as_secs_f64(),
        "s",
        format!(
            "{members} daemons, {} pairs, sequential contact.add → accepted",
            members * (members - 1) / 2
        ),
    );
    let t = Instant::now();
    let group = group_of(&daemons, "bench").await?;
    report.add(
        "group setup: create, invitations accepted, every member sees all",
        t.elapsed().as_secs_f64(),
        "s",
        format!("{} sequential invite → invited → accept", members - 1),
    );

    let sender = daemons[0].0.client().await?;
    let deliveries = watcher(&daemons[0].0, &[api::event::GROUP_DELIVERY]).await?;
    let send = |body: String| {
        let c = sender.clone();
        let g = group.clone();
        async move {
            c.call::<api::method::GroupSend>(&api::GroupSend {
                group: g,
                body,
                reply_to: None,
                client_token: None,
            })
            .await
        }
    };
    let m = send("warm-up".into()).await?;
    all_delivered(&deliveries, m.id, members - 1).await?;
    let mut fan_out = Vec::new();
    let mut firsts = Vec::new();
    for i in 0..sizes.samples.max(5) {
        let t = Instant::now();
        let m = send(format!("group {i}")).await?;
        let (first, last) = all_delivered(&deliveries, m.id, members - 1).await?;
        fan_out.push(last - t);
        firsts.push(first - t);
    }
    let first_p50 = quantile(&mut firsts, 0.5);
    report.add(
        "group send → delivered to the first member, median",
        ms(first_p50),
        "ms",
        format!(
            "group of {members}: the fastest member's path; p90 {:.1} ms",
            ms(quantile(&mut firsts, 0.9))
        ),
    );
    // The same fan-out as 1:1 messages: one `message.send` to each other member at once,
    // until every one is delivered. What separates this from the 1:1 warm figure is the
    // network (the slowest of several circuits); what separates the group figure from this
    // is Carom's group path.
    let statuses = watcher(&daemons[0].0, &[api::event::MESSAGE_STATUS]).await?;
    let mut one_to_one = Vec::new();
    for i in 0..sizes.samples.max(5) {
        let t = Instant::now();
        let mut ids = HashSet::new();
        let mut sends = Vec::new();
        for (_, address) in &daemons[1..] {
            let c = sender.clone();
            let to = address.clone();
            let body = format!("one to one {i}");
            sends.push(tokio::spawn(async move {
                c.send(&api::MessageSend {
                    to,
                    body,
                    reply_to: None,
                    client_token: None,
                })
                .await
            }));
        }
        for send in sends {
            ids.insert(send.await??.id);
        }
        let left = std::sync::Mutex::new(ids);
        next_matching(&statuses, LONG, |e| {
            let mut left = left.lock().unwrap_or_else(|p| p.into_inner());
            if let EventData::MessageStatus(m) = &e.data
                && m.status == api::MessageStatus::Delivered
            {
                left.remove(&m.id);
            }
            left.is_empty()
        })
        .await?;
        one_to_one.push(t.elapsed());
    }
    let fan_1to1 = quantile(&mut one_to_one, 0.5);
    report.add(
        "1:1 messages to every other member at once → all delivered, median",
        ms(fan_1to1),
        "ms",
        format!(
            "{} message.send at once; p90 {:.1} ms (the network's share of the group figure)",
            members - 1,
            ms(quantile(&mut one_to_one, 0.9))
        ),
    );
    let p50 = quantile(&mut fan_out, 0.5);
    let p90 = quantile(&mut fan_out, 0.9);
    let ratio = ms(p50) / ms(warm_1to1);
    report.target(
        "group send → delivered to all other members, median",
        ms(p50),
        "ms",
        format!(
            "≤ 1.5 × the 1:1 warm median = {:.1} ms",
            ms(warm_1to1) * 1.5
        ),
        ratio <= 1.5,
        format!(
            "group of {members}; {ratio:.2} × 1:1 warm, {:.2} × the same fan-out as 1:1 \
             messages; p90 {:.1} ms",
            ms(p50) / ms(fan_1to1),
            ms(p90)
        ),
    );

    // A burst: 16 frontends queue group messages at once; done when the last is delivered to
    // every member (each member's items arrive in order).
    let burst = sizes.burst.min(1000);
    let t = Instant::now();
    let frontends = 16.min(burst.max(1));
    let mut tasks = Vec::new();
    for f in 0..frontends {
        let c = daemons[0].0.client().await?;
        let g = group.clone();
        let count = burst / frontends + usize::from(f < burst % frontends);
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for i in 0..count {
                last = c
                    .call::<api::method::GroupSend>(&api::GroupSend {
                        group: g.clone(),
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
    let mut last = 0;
    for task in tasks {
        last = last.max(task.await??);
    }
    // The newest message, delivered to all, means all were.
    let deadline = Instant::now() + LONG;
    loop {
        let page = sender
            .call::<api::method::GroupHistory>(&api::GroupHistory {
                group: group.clone(),
                before: Some(last + 1),
                limit: Some(1),
            })
            .await?;
        if page.messages.first().is_some_and(|m| {
            m.deliveries
                .iter()
                .all(|d| d.status == api::DeliveryStatus::Delivered)
        }) {
            break;
        }
        if Instant::now() > deadline {
            return Err("the group burst was not delivered".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t.elapsed();
    report.add(
        "group burst: messages delivered to all other members, per second",
        burst as f64 / took.as_secs_f64(),
        "msg/s",
        format!(
            "group of {members}: {burst} messages of 100 B from 16 frontends = {} deliveries, \
             {:.1} s",
            burst * (members - 1),
            took.as_secs_f64()
        ),
    );

    // Memory: the first daemon in many groups of all the members.
    let before = rss_mib(daemons[0].0.pid());
    for i in 1..sizes.groups {
        group_of(&daemons, &format!("group {i}")).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_mib(daemons[0].0.pid());
    report.add(
        "caromd RSS in many groups (after the burst)",
        after,
        "MiB",
        format!(
            "{} groups of {members}; {:+.1} MiB for the {} after the first (for groups of 32, \
             see the profile built offline)",
            sizes.groups,
            after - before,
            sizes.groups - 1
        ),
    );
    for (mut d, _) in daemons {
        d.stop().await;
    }
    Ok(())
}

/// Members of each group in the offline-built profile (the "32 groups of 32").
const WIDE_MEMBERS: usize = 32;

/// A profile (written with the store, as if the daemon had made these groups) holding `groups`
/// groups of [`WIDE_MEMBERS`]: the daemon created each and invited the others, who accepted —
/// every operation signed by its author, as over the wire. Each group has members of its own,
/// so the daemon knows `groups × 31` co-members.
fn build_wide(data: &Path, groups: usize) -> Result<(), Error> {
    let key: DbKey = KeyFile::create(
        &data.join("profile.key"),
        Protection::Unprotected,
        KdfParams::default(),
    )?;
    let mut store = Store::create(&data.join("profile.db"), &key)?;
    let profile = carom_engine::create_profile(&mut store, &carom_engine::EngineConfig::default())?;
    let me = &profile.identity;
    for g in 0..groups {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(g as u64 + 1).to_le_bytes());
        let mut history = History::create(
            me,
            GroupId(id),
            format!("wide {g}"),
            Policy {
                members_can_invite: false,
            },
            PeerKind::Human,
            "me".into(),
            1,
        );
        for m in 1..WIDE_MEMBERS {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&((g * WIDE_MEMBERS + m) as u64).to_le_bytes());
            seed[31] = 0x77;
            let member = IdentityKey::from_seed(&seed);
            let invite = history.propose(
                me,
                Action::Invite {
                    invitee: member.address(),
                    role: Role::Member,
                },
                2,
            )?;
            history.propose(
                &member,
                Action::Accept {
                    invite: invite.id(),
                    kind: PeerKind::Human,
                    name: format!("member {m}"),
                },
                3,
            )?;
        }
        let ops: Vec<StoredOperation> = history
            .operations()
            .map(|op| StoredOperation {
                op_id: op.id().0,
                body: op.body().to_vec(),
                signature: *op.signature(),
            })
            .collect();
        store.write(|tx| {
            let row = tx.insert_group(&id, GroupState::Member, 1)?.row;
            tx.add_group_operations(row, &ops)?;
            Ok(())
        })?;
    }
    store.close()?;
    Ok(())
}

/// The RSS of a daemon holding `sizes.groups` groups of [`WIDE_MEMBERS`] (histories verified
/// and resolved at start, held in memory), with what it took to start.
pub(crate) async fn wide(
    report: &mut Report,
    net: &TestNetwork,
    root: &Path,
    sizes: Sizes,
) -> Result<(), Error> {
    let dir = root.join("wide");
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let groups = sizes.groups;
    {
        let data = data.clone();
        tokio::task::spawn_blocking(move || build_wide(&data, groups)).await??;
    }
    let d = Daemon::start(
        &dir,
        "wide",
        &net.arti_config_path(),
        "[messaging]\npresence = false\n",
    )?;
    let (_, startup) = d.up().await?;
    let list = d
        .client()
        .await?
        .call::<api::method::GroupList>(&api::Empty {})
        .await?;
    let whole = list.len() == groups && list.iter().all(|g| g.members.len() == WIDE_MEMBERS);
    if !whole {
        return Err(format!(
            "the daemon holds {} groups, with {:?} members",
            list.len(),
            list.iter().map(|g| g.members.len()).collect::<Vec<_>>()
        )
        .into());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    report.add(
        &format!("caromd RSS holding {groups} groups of {WIDE_MEMBERS} members"),
        rss_mib(d.pid()),
        "MiB",
        format!(
            "histories built offline ({} operations, {} co-members); start → published {:.1} s",
            groups * (2 * WIDE_MEMBERS - 1),
            groups * (WIDE_MEMBERS - 1),
            startup.as_secs_f64()
        ),
    );
    let mut d = d;
    d.stop().await;
    Ok(())
}
