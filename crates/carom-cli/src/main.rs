//! `carom`: drive the Carom daemon from the command line.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool"
)]

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use carom_api as api;
use carom_client::{Client, ClientError};
use clap::{Parser, Subcommand};
use serde::Serialize;
use zeroize::Zeroizing;

/// Talk to caromd, the Carom daemon: peer-to-peer messaging over Tor onion services.
///
/// Getting started:
///   caromd &                         # start the daemon (or run it as a service)
///   carom init                       # create your profile (asks for a passphrase)
///   carom status --wait              # wait until Tor is up and you are reachable
///   carom address --qr               # your address, to give to people
///   carom contact add <address> --name Bob --greeting "hi, it's Alice"
///   carom contact list               # see requests and contacts
///   carom send Bob "hello"
///   carom history Bob
///   carom watch                      # follow events live
///
/// Contacts can be named by their nickname or by their onion address.
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    /// The daemon's socket [default: $XDG_RUNTIME_DIR/carom/carom.sock]
    #[arg(long, global = true, env = "CAROM_SOCKET")]
    socket: Option<PathBuf>,

    /// Print results as JSON (for scripts)
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create your profile: a new identity, protected by a passphrase
    Init {
        /// Store the profile without a passphrase (anyone who can read your files can read it)
        #[arg(long)]
        no_passphrase: bool,
        /// Read the passphrase from this file instead of asking
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Unlock a protected profile so the daemon can go online
    Unlock {
        /// Read the passphrase from this file instead of asking
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Change (or remove) the profile's passphrase
    Passphrase {
        /// Remove the passphrase
        #[arg(long)]
        remove: bool,
    },
    /// Show the daemon, profile and Tor status
    Status {
        /// Wait (showing progress) until Tor is ready and your onion service is published
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Show your onion address: the thing to give to people
    Address {
        /// Also print a QR code of the carom: URI
        #[arg(long)]
        qr: bool,
    },
    /// Manage contacts
    #[command(subcommand)]
    Contact(ContactCommand),
    /// Send a message to a contact
    Send {
        /// The contact (nickname or address)
        to: String,
        /// The message
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        /// An idempotency token: retrying with the same token never sends twice
        #[arg(long)]
        token: Option<String>,
    },
    /// Show the conversation with a contact, oldest first
    History {
        /// The contact (nickname or address)
        with: String,
        /// How many messages
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only messages older than this message id (for paging)
        #[arg(long)]
        before: Option<i64>,
    },
    /// Follow events live (messages, requests, presence, Tor)
    Watch {
        /// Replay events after this sequence number first (0: everything retained)
        #[arg(long)]
        since: Option<u64>,
        /// Only these kinds, comma-separated (e.g. message.received,contact.request_received)
        #[arg(long, value_delimiter = ',')]
        kinds: Option<Vec<String>>,
    },
    /// List the frontends attached to the daemon right now
    Sessions,
    /// Stop the daemon
    Stop,
}

#[derive(Subcommand)]
enum ContactCommand {
    /// Ask someone to become a contact
    Add {
        /// Their onion address (or carom: URI)
        address: String,
        /// Your name for them
        #[arg(long)]
        name: Option<String>,
        /// The name you offer for yourself
        #[arg(long = "as")]
        offer: Option<String>,
        /// A short note they will see with the request
        #[arg(long)]
        greeting: Option<String>,
        /// Declare yourself a bot rather than a person
        #[arg(long)]
        bot: bool,
    },
    /// List contacts and requests
    List,
    /// Accept a contact request
    Accept {
        /// The contact (nickname or address)
        contact: String,
        /// Your name for them (default: the one they offered)
        #[arg(long)]
        name: Option<String>,
    },
    /// Decline a contact request (they are told)
    Reject {
        /// The contact (nickname or address)
        contact: String,
    },
    /// Refuse all connections from an address from now on
    Block {
        /// The contact (nickname or address)
        contact: String,
    },
    /// Lift a block
    Unblock {
        /// The contact (nickname or address)
        contact: String,
    },
    /// Give a contact another local name
    Rename {
        /// The contact (nickname or address)
        contact: String,
        /// The new name
        name: String,
    },
    /// Forget a contact and the whole conversation
    Remove {
        /// The contact (nickname or address)
        contact: String,
    },
    /// Forget every unanswered request from strangers at once (e.g. after a flood)
    ClearRequests,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("carom: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("carom: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Turn a client error into a sentence, with a hint for the common cases.
fn explain(e: &ClientError) -> String {
    let hint = match e.kind() {
        Some(api::ErrorKind::NoProfile) => " (run `carom init`)",
        Some(api::ErrorKind::Locked) => " (run `carom unlock`)",
        _ => "",
    };
    format!("{e}{hint}")
}

async fn run(cli: Cli) -> Result<(), String> {
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
            output(json, &serde_json::json!({}), || {
                "Passphrase changed.".into()
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
            output(json, &page, || {
                let mut lines: Vec<String> = page
                    .messages
                    .iter()
                    .rev()
                    .map(|m| format_message(m, &name))
                    .collect();
                if let Some(next) = page.next_before {
                    lines.push(format!("(older: --before {next})"));
                }
                if lines.is_empty() {
                    "no messages yet".into()
                } else {
                    lines.join("\n")
                }
            });
        }
        Command::Watch { since, kinds } => watch(&client, json, since, kinds).await?,
        Command::Sessions => {
            let sessions = client.sessions().await.map_err(|e| explain(&e))?;
            output(json, &sessions, || {
                sessions
                    .iter()
                    .map(|s| {
                        format!(
                            "#{:<4} {:<22} pid {:<7} {}{}",
                            s.id,
                            s.client.as_deref().or(s.process.as_deref()).unwrap_or("?"),
                            s.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
                            if s.subscribed { "watching events" } else { "" },
                            if s.id == client.banner().session {
                                " (this one)"
                            } else {
                                ""
                            },
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Command::Stop => {
            client.shutdown().await.map_err(|e| explain(&e))?;
            output(json, &serde_json::json!({}), || "caromd is stopping".into());
        }
    }
    Ok(())
}

fn output<T: Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) {
    if json {
        say(&serde_json::to_string_pretty(value).unwrap_or_default());
    } else {
        say(&human());
    }
}

/// Print a line; when the reader has gone away (`carom … | head`), stop quietly instead of
/// panicking the way `println!` does.
fn say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

fn prompt(label: &str) -> Result<Zeroizing<String>, String> {
    if std::io::stdin().is_terminal() {
        rpassword::prompt_password(label)
            .map(Zeroizing::new)
            .map_err(|e| format!("cannot read the passphrase: {e}"))
    } else {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the passphrase from standard input: {e}"))?;
        Ok(Zeroizing::new(
            line.trim_end_matches(['\n', '\r']).to_owned(),
        ))
    }
}

fn read_passphrase(file: Option<&PathBuf>, confirm: bool) -> Result<Zeroizing<String>, String> {
    if let Some(file) = file {
        let text = Zeroizing::new(
            std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?,
        );
        return Ok(Zeroizing::new(
            text.lines().next().unwrap_or_default().to_owned(),
        ));
    }
    let first = prompt("Passphrase: ")?;
    if first.is_empty() {
        return Err(
            "an empty passphrase is not allowed (use --no-passphrase to choose none)".into(),
        );
    }
    if confirm && std::io::stdin().is_terminal() {
        let second = prompt("Again: ")?;
        if *first != *second {
            return Err("the passphrases differ".into());
        }
    }
    Ok(first)
}

fn progress_bar(percent: u8) -> String {
    let filled = usize::from(percent.min(100)) / 5;
    format!(
        "[{}{}] {:>3}%",
        "#".repeat(filled),
        "-".repeat(20 - filled),
        percent
    )
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
        // "degraded" still means a descriptor went out (arti reports it when some HSDir
        // uploads or introduction points are missing — routinely on small test networks).
        let done =
            tor.ready && matches!(tor.service.as_str(), "published" | "reachable" | "degraded");
        if !wait || done {
            if interactive && wait {
                eprintln!();
            }
            let identity = client.identity().await.map_err(|e| explain(&e))?;
            let value = serde_json::json!({ "daemon": info, "tor": tor, "identity": identity });
            output(json, &value, || {
                let mut text = format!(
                    "caromd {} ({}profile{})\nTor      {} {}\nService  {}\nAddress  {}",
                    info.daemon_version,
                    if info.ephemeral { "RAM-only " } else { "" },
                    if info.passphrase_protected == Some(false) {
                        ", NOT protected by a passphrase"
                    } else {
                        ""
                    },
                    progress_bar(tor.bootstrap_percent),
                    tor.bootstrap_phase,
                    tor.service,
                    identity.address,
                );
                if let Some(e) = &tor.last_error {
                    text.push_str(&format!("\nProblem  {e}"));
                }
                text
            });
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "Tor was not ready after {timeout} s: {} ({}% {}; service {})",
                tor.last_error.as_deref().unwrap_or("no error reported"),
                tor.bootstrap_percent,
                tor.bootstrap_phase,
                tor.service
            ));
        }
        if interactive {
            eprint!(
                "\r{} {:<48}",
                progress_bar(tor.bootstrap_percent),
                format!("{} · service {}", tor.bootstrap_phase, tor.service)
                    .chars()
                    .take(48)
                    .collect::<String>()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn qr_code(uri: &str) -> Result<String, String> {
    let code =
        qrcode::QrCode::new(uri.as_bytes()).map_err(|e| format!("cannot make a QR code: {e}"))?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build()
        + "\n")
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
            .map(|c| name_of(&c))
            .unwrap_or_else(|| who.to_owned()),
        Err(_) => who.to_owned(),
    }
}

fn name_of(c: &api::Contact) -> String {
    if c.nickname.is_empty() {
        c.offered_nickname
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("{}…", &c.address[..8]))
    } else {
        c.nickname.clone()
    }
}

fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (h, m) = ((secs / 3600) % 24, (secs / 60) % 60);
    format!("{h:02}:{m:02} UTC")
}

fn format_message(m: &api::Message, their_name: &str) -> String {
    let (who, mark) = match m.direction {
        api::Direction::In => (their_name.to_owned(), String::new()),
        api::Direction::Out => (
            "me".to_owned(),
            match m.status {
                api::MessageStatus::Queued => " (queued)".into(),
                api::MessageStatus::Sent => " (sent)".into(),
                api::MessageStatus::Delivered => " ✓".into(),
                api::MessageStatus::Failed => {
                    format!(" (FAILED: {})", m.failure.as_deref().unwrap_or("?"))
                }
                api::MessageStatus::Received => String::new(),
            },
        ),
    };
    format!(
        "[{}] #{} {who}: {}{mark}",
        format_time(m.stored_at),
        m.id,
        m.body
    )
}

async fn contact(client: &Client, json: bool, command: ContactCommand) -> Result<(), String> {
    let respond = |who: String, response: api::Response, name: Option<String>| async move {
        let address = resolve(client, &who).await?;
        let c = client
            .respond(&address, response, name)
            .await
            .map_err(|e| explain(&e))?;
        output(json, &c, || {
            format!("{} is now {}", name_of(&c), state_name(c.state))
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
                api::ContactState::Accepted => format!("{} is a contact now", name_of(&c)),
                _ => format!(
                    "request to {} queued; it is retried until their daemon has it",
                    name_of(&c)
                ),
            });
        }
        ContactCommand::List => {
            let contacts = client.contacts().await.map_err(|e| explain(&e))?;
            output(json, &contacts, || {
                if contacts.is_empty() {
                    return "no contacts yet: `carom contact add <address>`".into();
                }
                contacts
                    .iter()
                    .map(|c| {
                        let mut line = format!(
                            "{:<16} {:<10} {:<7} {}{}",
                            name_of(c),
                            state_name(c.state),
                            if c.online { "online" } else { "" },
                            c.address,
                            if c.declared_kind == api::PeerKind::Bot {
                                " [bot]"
                            } else {
                                ""
                            },
                        );
                        if c.state == api::ContactState::Pending
                            && let Some(g) = &c.greeting
                        {
                            line.push_str(&format!("\n{:>18}\"{g}\"", ""));
                        }
                        line
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
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
            output(json, &serde_json::json!({}), || "removed".into());
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

fn state_name(s: api::ContactState) -> &'static str {
    match s {
        api::ContactState::Requesting => "requested",
        api::ContactState::Pending => "wants-you",
        api::ContactState::Accepted => "contact",
        api::ContactState::Rejected => "rejected",
        api::ContactState::Blocked => "blocked",
    }
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
    while let Some(event) = client.next_event().await {
        if json {
            say(&serde_json::to_string(&event).unwrap_or_default());
            continue;
        }
        let d = &event.data;
        let text = match event.kind.as_str() {
            api::event::MESSAGE_RECEIVED => match d["id"].as_i64() {
                Some(id) => match client.message(id).await {
                    Ok(m) => {
                        let name = display_name(client, &m.contact).await;
                        format!("message from {name}: {}", m.body)
                    }
                    Err(_) => format!("message #{id} (since deleted)"),
                },
                None => "a message arrived".into(),
            },
            api::event::MESSAGE_STATUS => format!(
                "message #{} to {}… is {}{}",
                d["id"],
                d["contact"]
                    .as_str()
                    .unwrap_or("?")
                    .chars()
                    .take(8)
                    .collect::<String>(),
                d["status"].as_str().unwrap_or("?"),
                d["failure"]
                    .as_str()
                    .map(|f| format!(": {f}"))
                    .unwrap_or_default()
            ),
            api::event::CONTACT_REQUEST_RECEIVED => format!(
                "contact request from {} ({}{}): \"{}\" — `carom contact accept {}`",
                d["nickname"].as_str().unwrap_or("?"),
                d["address"].as_str().unwrap_or("?"),
                if d["kind"] == "bot" {
                    ", declares itself a bot"
                } else {
                    ""
                },
                d["greeting"].as_str().unwrap_or(""),
                d["address"].as_str().unwrap_or("?"),
            ),
            api::event::CONTACT_STATE => format!(
                "{} is now {} (by {})",
                d["address"].as_str().unwrap_or("?"),
                d["state"].as_str().unwrap_or("?"),
                d["by"].as_str().unwrap_or("?")
            ),
            api::event::CONTACT_REQUEST_DELIVERED => {
                format!(
                    "your request reached {}",
                    d["address"].as_str().unwrap_or("?")
                )
            }
            api::event::CONTACT_PRESENCE => format!(
                "{} is {}",
                display_name(client, d["address"].as_str().unwrap_or("?")).await,
                if d["online"] == true {
                    "online"
                } else {
                    "offline"
                }
            ),
            api::event::TOR_STATUS => format!(
                "Tor {} {} · service {}",
                progress_bar(
                    u8::try_from(d["bootstrap_percent"].as_u64().unwrap_or(0)).unwrap_or(0)
                ),
                d["bootstrap_phase"].as_str().unwrap_or(""),
                d["service"].as_str().unwrap_or("?")
            ),
            api::event::FRONTEND_ATTACHED => format!(
                "a frontend attached: #{} {}",
                d["session"],
                d["process"].as_str().unwrap_or("")
            ),
            api::event::FRONTEND_DETACHED => format!("frontend #{} detached", d["session"]),
            api::event::GAP => format!(
                "(events {}–{} were pruned before you caught up)",
                d["from_seq"], d["to_seq"]
            ),
            other => format!("{other} {d}"),
        };
        say(&format!("[{}] {text}", format_time(event.at)));
    }
    Err("the daemon closed the connection".into())
}
