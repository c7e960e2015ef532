//! Each command: the calls it makes to the daemon, and what it prints (see [`crate::render`]).

use std::io::IsTerminal as _;
use std::time::Duration;

use carom_api::{self as api, EventData};
use carom_client::{Client, ClientError};

use crate::args::{
    BridgesCommand, Cli, Command, ContactCommand, GroupCommand, OnOff, ProfileCommand, TorCommand,
};
use crate::render;
use crate::terminal::{output, prompt, qr_code, read_passphrase, say};

/// Turn a client error into a sentence, with a hint for the common cases.
fn explain(e: &ClientError) -> String {
    format!("{e}{}", render::hint(e.kind()))
}

/// Run one command against the daemon.
pub(crate) async fn run(cli: Cli) -> Result<(), String> {
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(carom_client::default_socket_path);
    let client = Client::connect(&socket).await.map_err(|e| explain(&e))?;
    let _ = client
        .hello(&format!("carom-cli/{}", env!("CARGO_PKG_VERSION")))
        .await;
    let json = cli.json;
    match cli.command {
        Command::Init {
            no_passphrase,
            passphrase_file,
        } => {
            let params = if no_passphrase {
                api::ProfileCreate {
                    passphrase: None,
                    no_passphrase: true,
                }
            } else {
                let passphrase = read_passphrase(passphrase_file.as_ref(), true)?;
                api::ProfileCreate {
                    passphrase: Some(passphrase.as_str().into()),
                    no_passphrase: false,
                }
            };
            let identity = client
                .create_profile(&params)
                .await
                .map_err(|e| explain(&e))?;
            output(json, &identity, || {
                format!(
                    "Profile created. Your address:\n  {}\nGive it to people so they can add you. Tor is starting: `carom status --wait`.",
                    identity.address
                )
            });
        }
        Command::Unlock { passphrase_file } => {
            let passphrase = read_passphrase(passphrase_file.as_ref(), false)?;
            let identity = client.unlock(&passphrase).await.map_err(|e| explain(&e))?;
            output(json, &identity, || {
                format!("Unlocked: {}", identity.address)
            });
        }
        Command::Passphrase { remove } => {
            let old = prompt("Current passphrase (empty if none): ")?;
            let params = if remove {
                api::ProfileChangePassphrase {
                    old: old.as_str().into(),
                    new: None,
                    no_passphrase: true,
                }
            } else {
                let new = read_passphrase(None, true)?;
                api::ProfileChangePassphrase {
                    old: old.as_str().into(),
                    new: Some(new.as_str().into()),
                    no_passphrase: false,
                }
            };
            client
                .change_passphrase(&params)
                .await
                .map_err(|e| explain(&e))?;
            output(json, &api::Empty {}, || "Passphrase changed.".into());
        }
        Command::Profile(ProfileCommand::Erase { yes }) => {
            if !yes {
                let who = match client.identity().await {
                    Ok(identity) => format!("the profile {}", identity.address),
                    Err(_) => "the profile (locked)".to_owned(),
                };
                crate::terminal::say(&format!(
                    "This erases {who}: your identity, every contact and every message, for good."
                ));
                let typed = crate::terminal::ask("Type ERASE to go on: ")?;
                if typed.trim() != api::ERASE_CONFIRMATION {
                    return Err("not erased".into());
                }
            }
            let erased = client.erase_profile().await.map_err(|e| explain(&e))?;
            output(json, &erased, || {
                let mut lines: Vec<String> = erased
                    .shredded
                    .iter()
                    .map(|p| format!("shredded {p}"))
                    .collect();
                lines.extend(erased.removed.iter().map(|p| format!("removed {p}")));
                lines.push("The profile is erased. `carom init` makes a new one.".into());
                lines.join("\n")
            });
        }
        Command::Status { wait, timeout } => status(&client, json, wait, timeout).await?,
        Command::Address { qr } => {
            let identity = client.identity().await.map_err(|e| explain(&e))?;
            let code = if qr {
                Some(qr_code(&identity.uri)?)
            } else {
                None
            };
            output(json, &identity, || match code {
                Some(code) => format!("{}\n{code}{}", identity.address, identity.uri),
                None => identity.address.clone(),
            });
        }
        Command::Contact(command) => contact(&client, json, command).await?,
        Command::Timer { contact, duration } => {
            let timer = render::parse_timer(&duration)?;
            let address = resolve(&client, &contact).await?;
            let c = client
                .set_timer(&address, timer)
                .await
                .map_err(|e| explain(&e))?;
            output(json, &c, || match c.timer {
                Some(t) => format!(
                    "messages with {} now disappear {} after they are sent or arrive",
                    render::name_of(&c),
                    render::duration(t)
                ),
                None => format!("messages with {} no longer disappear", render::name_of(&c)),
            });
        }
        Command::Delete { id, for_everyone } => {
            client
                .delete_message(id, for_everyone)
                .await
                .map_err(|e| explain(&e))?;
            output(json, &api::Empty {}, || {
                if for_everyone {
                    format!("deleted #{id}; the contact's daemon erases it when it gets the word")
                } else {
                    format!("deleted #{id} here")
                }
            });
        }
        Command::Group(command) => group(&client, json, command).await?,
        Command::Tor(TorCommand::Bridges(command)) => bridges(&client, json, command).await?,
        Command::Send { to, text, token } => {
            let address = resolve(&client, &to).await?;
            let message = client
                .send(&api::MessageSend {
                    to: address,
                    body: text.join(" "),
                    reply_to: None,
                    client_token: token,
                })
                .await
                .map_err(|e| explain(&e))?;
            output(json, &message, || {
                format!(
                    "queued (id {}); `carom watch` shows when it is delivered",
                    message.id
                )
            });
        }
        Command::History {
            with,
            limit,
            before,
        } => {
            let address = resolve(&client, &with).await?;
            let page = client
                .history(&api::MessageList {
                    with: address,
                    before,
                    limit: Some(limit),
                })
                .await
                .map_err(|e| explain(&e))?;
            let name = display_name(&client, &with).await;
            output(json, &page, || render::history(&page, &name));
        }
        Command::Watch { since, kinds } => watch(&client, json, since, kinds).await?,
        Command::Sessions => {
            let sessions = client.sessions().await.map_err(|e| explain(&e))?;
            output(json, &sessions, || {
                render::sessions(&sessions, client.banner().session)
            });
        }
        Command::Stop => {
            client.shutdown().await.map_err(|e| explain(&e))?;
            output(json, &api::Empty {}, || "caromd is stopping".into());
        }
    }
    Ok(())
}

/// `carom tor bridges …`.
async fn bridges(client: &Client, json: bool, command: BridgesCommand) -> Result<(), String> {
    use api::method as m;
    let result = match command {
        BridgesCommand::Show => client.call::<m::TorBridges>(&api::Empty {}).await,
        BridgesCommand::Set { mut lines, file } => {
            if let Some(file) = file {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                lines.extend(render::bridge_lines_in(&text));
            }
            if lines.is_empty() {
                return Err(
                    "no bridge lines given: pass them as arguments or with --file \
                     (to stop using bridges: `carom tor bridges off`)"
                        .into(),
                );
            }
            let lines = Some(lines);
            client
                .call::<m::TorSetBridges>(&api::TorSetBridges { lines })
                .await
        }
        BridgesCommand::Off => {
            let lines = Some(Vec::new());
            client
                .call::<m::TorSetBridges>(&api::TorSetBridges { lines })
                .await
        }
        BridgesCommand::Default => {
            client
                .call::<m::TorSetBridges>(&api::TorSetBridges { lines: None })
                .await
        }
    }
    .map_err(|e| explain(&e))?;
    output(json, &result, || render::bridges(&result));
    Ok(())
}

async fn status(client: &Client, json: bool, wait: bool, timeout: u64) -> Result<(), String> {
    let info = client.info().await.map_err(|e| explain(&e))?;
    if info.profile != api::ProfileState::Unlocked {
        let text = match info.profile {
            api::ProfileState::None => "no profile yet: run `carom init`",
            _ => "the profile is locked: run `carom unlock`",
        };
        output(json, &info, || {
            format!("caromd {}: {text}", info.daemon_version)
        });
        return if wait { Err(text.into()) } else { Ok(()) };
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let interactive = !json && std::io::stderr().is_terminal();
    loop {
        let tor = client.tor_status().await.map_err(|e| explain(&e))?;
        if !wait || render::is_ready(&tor) {
            if interactive && wait {
                eprintln!();
            }
            let identity = client.identity().await.map_err(|e| explain(&e))?;
            let value = serde_json::json!({ "daemon": info, "tor": tor, "identity": identity });
            output(json, &value, || {
                render::status(&info, &tor, &identity.address)
            });
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(render::not_ready(&tor, timeout));
        }
        if interactive {
            eprint!("\r{}", render::status_progress(&tor));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A nickname or an address → an address.
async fn resolve(client: &Client, who: &str) -> Result<String, String> {
    if let Ok(address) = carom_proto::OnionAddress::parse(who) {
        return Ok(address.to_string());
    }
    let contacts = client.contacts().await.map_err(|e| explain(&e))?;
    let matches: Vec<&api::Contact> = contacts.iter().filter(|c| c.nickname == who).collect();
    match matches.as_slice() {
        [one] => Ok(one.address.clone()),
        [] => Err(format!(
            "no contact is named `{who}`; `carom contact list` shows them"
        )),
        _ => Err(format!(
            "several contacts are named `{who}`: use the address"
        )),
    }
}

async fn display_name(client: &Client, who: &str) -> String {
    match resolve(client, who).await {
        Ok(address) => client
            .contact(&address)
            .await
            .ok()
            .map(|c| render::name_of(&c))
            .unwrap_or_else(|| who.to_owned()),
        Err(_) => who.to_owned(),
    }
}

async fn contact(client: &Client, json: bool, command: ContactCommand) -> Result<(), String> {
    let respond = |who: String, response: api::Response, name: Option<String>| async move {
        let address = resolve(client, &who).await?;
        let c = client
            .respond(&address, response, name)
            .await
            .map_err(|e| explain(&e))?;
        output(json, &c, || {
            format!(
                "{} is now {}",
                render::name_of(&c),
                render::state_name(c.state)
            )
        });
        Ok::<(), String>(())
    };
    match command {
        ContactCommand::Add {
            address,
            name,
            offer,
            greeting,
            bot,
        } => {
            let c = client
                .add_contact(&api::ContactAdd {
                    address,
                    nickname: name.unwrap_or_default(),
                    offer_nickname: offer.unwrap_or_default(),
                    greeting: greeting.unwrap_or_default(),
                    kind: if bot {
                        api::PeerKind::Bot
                    } else {
                        api::PeerKind::Human
                    },
                })
                .await
                .map_err(|e| explain(&e))?;
            output(json, &c, || match c.state {
                api::ContactState::Accepted => {
                    format!("{} is a contact now", render::name_of(&c))
                }
                _ => format!(
                    "request to {} queued; it is retried until their daemon has it",
                    render::name_of(&c)
                ),
            });
        }
        ContactCommand::List => {
            let contacts = client.contacts().await.map_err(|e| explain(&e))?;
            output(json, &contacts, || render::contact_list(&contacts));
        }
        ContactCommand::Accept { contact, name } => {
            respond(contact, api::Response::Accept, name).await?;
        }
        ContactCommand::Reject { contact } => respond(contact, api::Response::Reject, None).await?,
        ContactCommand::Block { contact } => respond(contact, api::Response::Block, None).await?,
        ContactCommand::Unblock { contact } => {
            respond(contact, api::Response::Unblock, None).await?;
        }
        ContactCommand::Rename { contact, name } => {
            let address = resolve(client, &contact).await?;
            let c = client
                .rename(&address, &name)
                .await
                .map_err(|e| explain(&e))?;
            output(json, &c, || format!("renamed to {}", c.nickname));
        }
        ContactCommand::Remove { contact } => {
            let address = resolve(client, &contact).await?;
            client
                .remove_contact(&address)
                .await
                .map_err(|e| explain(&e))?;
            output(json, &api::Empty {}, || "removed".into());
        }
        ContactCommand::History { contact, setting } => {
            let address = resolve(client, &contact).await?;
            let c = client
                .set_history(&address, setting == OnOff::On)
                .await
                .map_err(|e| explain(&e))?;
            output(json, &c, || {
                if c.keep_history {
                    format!(
                        "messages with {} are stored from now on",
                        render::name_of(&c)
                    )
                } else {
                    format!(
                        "history with {} is off: from now on its messages live in the daemon's \
                         memory only, and are gone when it stops",
                        render::name_of(&c)
                    )
                }
            });
        }
        ContactCommand::ClearRequests => {
            let cleared = client.clear_requests().await.map_err(|e| explain(&e))?;
            output(json, &cleared, || {
                format!("forgot {} unanswered contact requests", cleared.cleared)
            });
        }
    }
    Ok(())
}

async fn watch(
    client: &Client,
    json: bool,
    since: Option<u64>,
    kinds: Option<Vec<String>>,
) -> Result<(), String> {
    let subscribed = client
        .subscribe(&api::EventsSubscribe {
            since_seq: since,
            kinds,
        })
        .await
        .map_err(|e| explain(&e))?;
    if !json {
        eprintln!(
            "watching events (newest #{}); Ctrl-C to stop",
            subscribed.latest_seq
        );
    }
    loop {
        // Live events (history off) are never stored: they come beside the log's.
        let (at, data, line) = tokio::select! {
            event = client.next_event() => match event {
                Some(e) => (e.at, e.data.clone(), serde_json::to_string(&e)),
                None => break,
            },
            event = client.next_live_event() => match event {
                Some(e) => (e.at, e.data.clone(), serde_json::to_string(&e)),
                None => break,
            },
        };
        if json {
            say(&line.unwrap_or_default());
            continue;
        }
        let lookup = look_up(client, &data).await;
        let text = render::event_line(&data, &lookup);
        say(&format!("[{}] {text}", render::time_of_day(at)));
    }
    Err("the daemon closed the connection".into())
}

/// What `watch` fetches to describe an event: the message that arrived, the contact's name.
async fn look_up(client: &Client, data: &EventData) -> render::Lookup {
    let address = match data {
        EventData::MessageReceived(m) => {
            let message = client.message(m.id).await.ok();
            let name = Some(display_name(client, &m.contact).await);
            return render::Lookup { message, name };
        }
        EventData::StateChanged(c) => &c.address,
        EventData::RequestDelivered(c) => &c.address,
        EventData::Presence(p) => &p.address,
        EventData::Unreachable(u) => &u.address,
        _ => return render::Lookup::default(),
    };
    render::Lookup {
        message: None,
        name: Some(display_name(client, address).await),
    }
}

/// A group by id, or by a name no other group has.
async fn resolve_group(client: &Client, which: &str) -> Result<String, String> {
    let groups = client
        .call::<api::method::GroupList>(&api::Empty {})
        .await
        .map_err(|e| explain(&e))?;
    if groups.iter().any(|g| g.id == which) {
        return Ok(which.to_owned());
    }
    let named: Vec<&api::Group> = groups.iter().filter(|g| g.name == which).collect();
    match named.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(format!(
            "no group is named `{which}`; `carom group list` shows them"
        )),
        _ => Err(format!("several groups are named `{which}`: use the id")),
    }
}

fn kind(bot: bool) -> api::PeerKind {
    if bot {
        api::PeerKind::Bot
    } else {
        api::PeerKind::Human
    }
}

async fn group(client: &Client, json: bool, command: GroupCommand) -> Result<(), String> {
    let shown = |g: &api::Group| output(json, g, || render::group_detail(g));
    match command {
        GroupCommand::Create {
            name,
            member_name,
            bot,
            members_invite,
        } => {
            let g = client
                .call::<api::method::GroupCreate>(&api::GroupCreate {
                    name,
                    members_can_invite: members_invite,
                    member_name: member_name.unwrap_or_default(),
                    kind: kind(bot),
                })
                .await
                .map_err(|e| explain(&e))?;
            shown(&g);
        }
        GroupCommand::List => {
            let groups = client
                .call::<api::method::GroupList>(&api::Empty {})
                .await
                .map_err(|e| explain(&e))?;
            output(json, &groups, || render::group_list(&groups));
        }
        GroupCommand::Show { group } => {
            let id = resolve_group(client, &group).await?;
            let g = client
                .call::<api::method::GroupGet>(&api::GroupParams { group: id })
                .await
                .map_err(|e| explain(&e))?;
            shown(&g);
        }
        GroupCommand::Invite {
            group,
            contact,
            admin,
        } => {
            let id = resolve_group(client, &group).await?;
            let address = resolve(client, &contact).await?;
            let g = client
                .call::<api::method::GroupInvite>(&api::GroupInvite {
                    group: id,
                    address,
                    role: if admin {
                        api::GroupRole::Admin
                    } else {
                        api::GroupRole::Member
                    },
                })
                .await
                .map_err(|e| explain(&e))?;
            output(json, &g, || {
                format!("invited {contact}; they join once they accept")
            });
        }
        GroupCommand::Accept {
            group,
            member_name,
            bot,
        } => {
            let id = resolve_group(client, &group).await?;
            let g = client
                .call::<api::method::GroupAccept>(&api::GroupAccept {
                    group: id,
                    name: member_name.unwrap_or_default(),
                    kind: kind(bot),
                })
                .await
                .map_err(|e| explain(&e))?;
            shown(&g);
        }
        GroupCommand::Decline { group } => {
            let id = resolve_group(client, &group).await?;
            let g = client
                .call::<api::method::GroupDecline>(&api::GroupParams { group: id })
                .await
                .map_err(|e| explain(&e))?;
            shown(&g);
        }
        GroupCommand::Leave { group } => {
            let id = resolve_group(client, &group).await?;
            let g = client
                .call::<api::method::GroupLeave>(&api::GroupParams { group: id })
                .await
                .map_err(|e| explain(&e))?;
            shown(&g);
        }
        GroupCommand::Remove { group, member } => {
            let id = resolve_group(client, &group).await?;
            let address = resolve(client, &member).await?;
            let g = client
                .call::<api::method::GroupRemove>(&api::GroupMemberParams { group: id, address })
                .await
                .map_err(|e| explain(&e))?;
            shown(&g);
        }
        GroupCommand::Role {
            group,
            member,
            role,
        } => {
            let role = match role.as_str() {
                "admin" => api::GroupRole::Admin,
                "member" => api::GroupRole::Member,
                other => return Err(format!("a role is `admin` or `member`, not `{other}`")),
            };
            let id = resolve_group(client, &group).await?;
            let address = resolve(client, &member).await?;
            let g = client
                .call::<api::method::GroupSetRole>(&api::GroupSetRole {
                    group: id,
                    address,
                    role,
                })
                .await
                .map_err(|e| explain(&e))?;
            shown(&g);
        }
        GroupCommand::Rename { group, name } => {
            let id = resolve_group(client, &group).await?;
            let g = client
                .call::<api::method::GroupRename>(&api::GroupRename { group: id, name })
                .await
                .map_err(|e| explain(&e))?;
            shown(&g);
        }
        GroupCommand::Delete {
            group,
            id,
            for_everyone,
        } => {
            let group = resolve_group(client, &group).await?;
            client
                .call::<api::method::GroupDelete>(&api::GroupDelete {
                    group,
                    id,
                    for_everyone,
                })
                .await
                .map_err(|e| explain(&e))?;
            output(json, &api::Empty {}, || {
                if for_everyone {
                    format!(
                        "deleted #{id}; every member it was sent to erases it when they get the word"
                    )
                } else {
                    format!("deleted #{id} here")
                }
            });
        }
        GroupCommand::Timer { group, duration } => {
            let timer = render::parse_timer(&duration)?;
            let id = resolve_group(client, &group).await?;
            let g = client
                .call::<api::method::GroupSetTimer>(&api::GroupSetTimer { group: id, timer })
                .await
                .map_err(|e| explain(&e))?;
            shown(&g);
        }
        GroupCommand::KeepHistory { group, setting } => {
            let id = resolve_group(client, &group).await?;
            let g = client
                .call::<api::method::GroupSetHistory>(&api::GroupSetHistory {
                    group: id,
                    keep_history: setting == OnOff::On,
                })
                .await
                .map_err(|e| explain(&e))?;
            shown(&g);
        }
        GroupCommand::Send { group, text, token } => {
            let id = resolve_group(client, &group).await?;
            let m = client
                .call::<api::method::GroupSend>(&api::GroupSend {
                    group: id,
                    body: text.join(" "),
                    reply_to: None,
                    client_token: token,
                })
                .await
                .map_err(|e| explain(&e))?;
            output(json, &m, || render::group_sent(&m));
        }
        GroupCommand::History {
            group,
            limit,
            before,
        } => {
            let id = resolve_group(client, &group).await?;
            let page = client
                .call::<api::method::GroupHistory>(&api::GroupHistory {
                    group: id,
                    before,
                    limit: Some(limit),
                })
                .await
                .map_err(|e| explain(&e))?;
            output(json, &page, || render::group_history(&page));
        }
    }
    Ok(())
}
