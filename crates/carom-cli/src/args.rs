//! The command line: what `carom` accepts, and the `--help` that teaches it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
///   carom timer Bob 1d               # messages with Bob disappear a day after they arrive
///   carom delete 42 --for-everyone   # take back message #42, at Bob's end too
///   carom watch                      # follow events live
///
/// Contacts can be named by their nickname or by their onion address.
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
pub(crate) struct Cli {
    /// The daemon's socket [default: $XDG_RUNTIME_DIR/carom/carom.sock]
    #[arg(long, global = true, env = "CAROM_SOCKET")]
    pub(crate) socket: Option<PathBuf>,

    /// Print results as JSON (for scripts)
    #[arg(long, global = true)]
    pub(crate) json: bool,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub(crate) enum Command {
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
    /// The profile as a whole (see also init, unlock, passphrase)
    #[command(subcommand)]
    Profile(ProfileCommand),
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
    /// How the daemon reaches Tor: bridges where Tor is blocked
    #[command(subcommand)]
    Tor(TorCommand),
    /// Manage contacts
    #[command(subcommand)]
    Contact(ContactCommand),
    /// Group conversations: invite contacts, talk to all members at once
    #[command(subcommand)]
    Group(GroupCommand),
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
    /// Set how long messages with a contact last before both ends erase them
    ///
    /// The change is itself a message: both of you see it, and either can change it. Each
    /// message keeps the timer it was sent under; each end erases it that long after it
    /// stored it (the sender when sending, the recipient when it arrived), whether or not
    /// anyone read it.
    Timer {
        /// The contact (nickname or address)
        contact: String,
        /// How long: e.g. 30s, 5m, 1h, 1d, 1w (at most 4w), or "off"
        duration: String,
    },
    /// Delete a message (its id is in `carom history`)
    ///
    /// Here only by default. With --for-everyone (a message you sent), the contact's daemon
    /// erases it too and keeps a "message deleted" in its place; if they are offline, it
    /// happens when they are back. What they already read, or copied, cannot be taken back.
    Delete {
        /// The message's id
        id: i64,
        /// Also at the contact's end (only for a message you sent)
        #[arg(long)]
        for_everyone: bool,
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

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub(crate) enum TorCommand {
    /// Bridges: unlisted relays to enter Tor through where it is blocked
    ///
    /// Get bridge lines from https://bridges.torproject.org (or by mail from
    /// bridges@torproject.org, or from someone you trust), e.g.
    ///   obfs4 192.0.2.3:443 <FINGERPRINT> cert=<CERT> iat-mode=0
    /// obfs4 lines need Debian's obfs4proxy package; snowflake lines its snowflake-client.
    /// Bridges set here are kept (encrypted) in your profile and win over caromd.toml's.
    #[command(subcommand, verbatim_doc_comment)]
    Bridges(BridgesCommand),
}

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub(crate) enum BridgesCommand {
    /// Show the bridges in use and where they come from
    Show,
    /// Enter Tor through these bridges from now on (quote each line)
    Set {
        /// Bridge lines, each as one argument: carom tor bridges set "obfs4 …" "obfs4 …"
        lines: Vec<String>,
        /// Also read bridge lines from this file, one per line (blank lines and # comments
        /// are skipped): what bridges.torproject.org lets you save
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Stop using bridges: reach Tor through the network's own relays
    Off,
    /// Forget the bridges set here and use caromd.toml's again
    Default,
}

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub(crate) enum ProfileCommand {
    /// Erase the profile for good: your identity, every contact and message
    ///
    /// The key file is overwritten and removed first (without it nothing left anywhere can be
    /// decrypted), then the database and Tor's state. Your onion address is gone with it:
    /// contacts can no longer reach you there. What erasure cannot reach (SSD blocks, swap,
    /// backups) is in docs/storage.md. Asks you to type ERASE, unless --yes.
    Erase {
        /// Do not ask (for scripts)
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub(crate) enum ContactCommand {
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
    /// Keep the conversation with a contact in memory only ("off"), or stored ("on")
    ///
    /// With history off, this daemon never writes the conversation's messages, nor even that
    /// they came: they live in its memory, and are gone when it stops or crashes, including
    /// any still waiting for delivery. The contact is not told, and keeps their own copy as
    /// their own setting says. Messages stored before stay until deleted or expired.
    History {
        /// The contact (nickname or address)
        contact: String,
        /// on (stored, the default) or off (memory only)
        setting: OnOff,
    },
}

/// A setting's two values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnOff {
    /// On
    On,
    /// Off
    Off,
}

/// Groups are named by their name (when no other group has it) or their id.
///
///   carom group create "Night desk" --as Alice
///   carom group invite "Night desk" Bob          # Bob must accept
///   carom group show "Night desk"                # members, with their kinds and roles
///   carom group send "Night desk" "hello all"
///   carom group history "Night desk"
#[derive(Debug, PartialEq, Eq, Subcommand)]
#[command(verbatim_doc_comment)]
pub(crate) enum GroupCommand {
    /// Create a group; you are its first member and an admin
    Create {
        /// Its name
        name: String,
        /// Your name in the group
        #[arg(long = "as")]
        member_name: Option<String>,
        /// Declare yourself a bot rather than a person
        #[arg(long)]
        bot: bool,
        /// Let members who are not admins invite
        #[arg(long)]
        members_invite: bool,
    },
    /// List your groups and invitations
    List,
    /// Show a group: its members (with what each declared itself), roles, invitations
    Show {
        /// The group (name or id)
        group: String,
    },
    /// Invite a contact (they join only if they accept)
    Invite {
        /// The group (name or id)
        group: String,
        /// The contact (nickname or address)
        contact: String,
        /// Make them an admin when they join
        #[arg(long)]
        admin: bool,
    },
    /// Accept an invitation (see it first with `carom group show`)
    Accept {
        /// The group (name or id)
        group: String,
        /// Your name in the group
        #[arg(long = "as")]
        member_name: Option<String>,
        /// Declare yourself a bot rather than a person
        #[arg(long)]
        bot: bool,
    },
    /// Decline an invitation (nobody is told)
    Decline {
        /// The group (name or id)
        group: String,
    },
    /// Leave a group
    Leave {
        /// The group (name or id)
        group: String,
    },
    /// Remove a member, or withdraw an invitation (admins)
    Remove {
        /// The group (name or id)
        group: String,
        /// The member (contact nickname or address)
        member: String,
    },
    /// Make a member an admin, or an admin a member (admins)
    Role {
        /// The group (name or id)
        group: String,
        /// The member (contact nickname or address)
        member: String,
        /// `admin` or `member`
        role: String,
    },
    /// Rename a group (admins)
    Rename {
        /// The group (name or id)
        group: String,
        /// The new name
        name: String,
    },
    /// Delete a group message (its id is in `carom group history`)
    ///
    /// Here only by default. With --for-everyone (a message you sent), every member it was
    /// sent to erases it too and keeps a "message deleted" in its place; one who is offline
    /// does when back. What they already read, or copied, cannot be taken back.
    Delete {
        /// The group (name or id)
        group: String,
        /// The message's id
        id: i64,
        /// Also at every member it was sent to (only for a message you sent)
        #[arg(long)]
        for_everyone: bool,
    },
    /// Set how long the group's messages last before every member erases them (admins)
    ///
    /// Every member sees the setting (it is part of the group's signed history). Each message
    /// keeps the timer it was sent under; each member erases it that long after storing it.
    Timer {
        /// The group (name or id)
        group: String,
        /// How long: e.g. 30s, 5m, 1h, 1d, 1w (at most 4w), or "off"
        duration: String,
    },
    /// Keep the group's messages in memory only ("off"), or stored ("on")
    ///
    /// With history off, this daemon never writes the group's messages, nor even that they
    /// came: they live in its memory, and are gone when it stops or crashes, including any
    /// still waiting for delivery. Who is in the group is still stored (every member needs
    /// the signed history to verify it). The other members are not told, and keep their own
    /// copies as their own settings say.
    KeepHistory {
        /// The group (name or id)
        group: String,
        /// on (stored, the default) or off (memory only)
        setting: OnOff,
    },
    /// Send a message to every member
    Send {
        /// The group (name or id)
        group: String,
        /// The message
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        /// An idempotency token: retrying with the same token never sends twice
        #[arg(long)]
        token: Option<String>,
    },
    /// Show a group's messages, oldest first, with whom each was sent to
    History {
        /// The group (name or id)
        group: String,
        /// How many messages
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only messages older than this message id (for paging)
        #[arg(long)]
        before: Option<i64>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("carom").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bridge_commands_take_each_line_as_one_argument() {
        let line = "obfs4 192.0.2.3:443 0123456789ABCDEF0123456789ABCDEF01234567 cert=x iat-mode=0";
        let cli = parse(&["tor", "bridges", "set", line, "--file", "b.txt"]).unwrap();
        assert_eq!(
            cli.command,
            Command::Tor(TorCommand::Bridges(BridgesCommand::Set {
                lines: vec![line.into()],
                file: Some("b.txt".into()),
            }))
        );
        assert_eq!(
            parse(&["tor", "bridges", "off"]).unwrap().command,
            Command::Tor(TorCommand::Bridges(BridgesCommand::Off))
        );
    }

    #[test]
    fn commands_parse_as_the_help_shows_them() {
        let cli = parse(&["--json", "send", "Bob", "hello", "there"]).unwrap();
        assert!(cli.json);
        assert_eq!(
            cli.command,
            Command::Send {
                to: "Bob".into(),
                text: vec!["hello".into(), "there".into()],
                token: None,
            }
        );
        let cli = parse(&[
            "contact",
            "add",
            "x.onion",
            "--name",
            "Bob",
            "--as",
            "Alice",
            "--greeting",
            "hi",
            "--bot",
        ])
        .unwrap();
        assert_eq!(
            cli.command,
            Command::Contact(ContactCommand::Add {
                address: "x.onion".into(),
                name: Some("Bob".into()),
                offer: Some("Alice".into()),
                greeting: Some("hi".into()),
                bot: true,
            })
        );
        let cli = parse(&[
            "watch",
            "--since",
            "0",
            "--kinds",
            "message.received,tor.status",
        ])
        .unwrap();
        assert_eq!(
            cli.command,
            Command::Watch {
                since: Some(0),
                kinds: Some(vec!["message.received".into(), "tor.status".into()]),
            }
        );
        let cli = parse(&["status", "--wait"]).unwrap();
        assert_eq!(
            cli.command,
            Command::Status {
                wait: true,
                timeout: 300
            }
        );
        assert_eq!(
            parse(&["contact", "clear-requests"]).unwrap().command,
            Command::Contact(ContactCommand::ClearRequests)
        );
        assert_eq!(
            parse(&["group", "invite", "Desk", "Bob", "--admin"])
                .unwrap()
                .command,
            Command::Group(GroupCommand::Invite {
                group: "Desk".into(),
                contact: "Bob".into(),
                admin: true,
            })
        );
        assert_eq!(
            parse(&["group", "send", "Desk", "hi", "all"])
                .unwrap()
                .command,
            Command::Group(GroupCommand::Send {
                group: "Desk".into(),
                text: vec!["hi".into(), "all".into()],
                token: None,
            })
        );
    }

    #[test]
    fn mistakes_are_refused_before_anything_is_sent() {
        // A message needs text; a history limit must be a number; unknown commands fail.
        assert!(parse(&["send", "Bob"]).is_err());
        assert!(parse(&["history", "Bob", "--limit", "many"]).is_err());
        assert!(parse(&["teleport"]).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn the_help_starts_with_how_to_get_going() {
        let help = Cli::command().render_long_help().to_string();
        for step in [
            "carom init",
            "carom status --wait",
            "carom contact add",
            "carom watch",
        ] {
            assert!(help.contains(step), "--help does not show `{step}`");
        }
    }
}
