//! What the CLI prints for people: pure functions from API values to text, so every line the
//! user reads is tested without a daemon.

use carom_api::{self as api, EventData, event};

/// A hint after an error message, for the errors a newcomer meets first.
pub(crate) fn hint(kind: Option<api::ErrorKind>) -> &'static str {
    match kind {
        Some(api::ErrorKind::NoProfile) => " (run `carom init`)",
        Some(api::ErrorKind::Locked) => " (run `carom unlock`)",
        _ => "",
    }
}

/// `[#####---------------]  25%`.
pub(crate) fn progress_bar(percent: u8) -> String {
    let filled = usize::from(percent.min(100)) / 5;
    format!(
        "[{}{}] {:>3}%",
        "#".repeat(filled),
        "-".repeat(20 - filled),
        percent
    )
}

/// Hours and minutes of a Unix time in ms, in UTC.
pub(crate) fn time_of_day(ms: u64) -> String {
    let secs = ms / 1000;
    let (h, m) = ((secs / 3600) % 24, (secs / 60) % 60);
    format!("{h:02}:{m:02} UTC")
}

/// The first characters of an address, enough to tell contacts apart in a line.
fn short(address: &str) -> String {
    let head: String = address.chars().take(8).collect();
    format!("{head}…")
}

/// How to call a contact: our name for them, else the one they offered, else their address.
pub(crate) fn name_of(c: &api::Contact) -> String {
    if !c.nickname.is_empty() {
        return c.nickname.clone();
    }
    c.offered_nickname
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| short(&c.address))
}

/// A contact state in the words of `contact list`.
pub(crate) fn state_name(s: api::ContactState) -> &'static str {
    match s {
        api::ContactState::Requesting => "requested",
        api::ContactState::Pending => "wants-you",
        api::ContactState::Accepted => "contact",
        api::ContactState::Rejected => "rejected",
        api::ContactState::Blocked => "blocked",
        api::ContactState::Unknown => "?",
    }
}

/// A timer in words: "30 seconds", "1 day", "2 weeks".
pub(crate) fn duration(seconds: u32) -> String {
    const UNITS: [(u32, &str); 5] = [
        (7 * 86_400, "week"),
        (86_400, "day"),
        (3_600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    for (size, name) in UNITS {
        if seconds >= size && seconds.is_multiple_of(size) {
            let n = seconds / size;
            return format!("{n} {name}{}", if n == 1 { "" } else { "s" });
        }
    }
    format!("{seconds} seconds")
}

/// `carom timer`'s duration: `off`, or a number with s, m, h, d or w (a bare number is
/// seconds), 1 s to 4 weeks.
pub(crate) fn parse_timer(text: &str) -> Result<Option<u32>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let scale: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "cannot read {text:?} as a duration: use e.g. 30s, 5m, 1h, 1d, 1w, or off"
            ));
        }
    };
    let seconds = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|s| (1..=u64::from(api::MAX_TIMER_SECS)).contains(s))
        .and_then(|s| u32::try_from(s).ok());
    seconds.map(Some).ok_or_else(|| {
        format!("{text:?} is not between 1 second and 4 weeks; use e.g. 1h, 1d, 1w, or off")
    })
}

/// One message of a conversation.
pub(crate) fn message_line(m: &api::Message, their_name: &str) -> String {
    let who_did = match m.direction {
        api::Direction::In => their_name,
        api::Direction::Out => "you",
    };
    match m.kind {
        api::MessageKind::Timer => {
            let what = match m.timer {
                Some(t) => format!("set messages to disappear after {}", duration(t)),
                None => "turned disappearing messages off".into(),
            };
            return format!("[{}] #{} {who_did} {what}", time_of_day(m.stored_at), m.id);
        }
        api::MessageKind::Deleted => {
            return format!("[{}] #{} (message deleted)", time_of_day(m.stored_at), m.id);
        }
        api::MessageKind::Text | api::MessageKind::Unknown => {}
    }
    let (who, mut mark) = match m.direction {
        api::Direction::In => (their_name, String::new()),
        api::Direction::Out => (
            "me",
            match m.status {
                api::MessageStatus::Queued => " (queued)".into(),
                api::MessageStatus::Sent => " (sent)".into(),
                api::MessageStatus::Delivered => " ✓".into(),
                api::MessageStatus::Failed => {
                    format!(" (FAILED: {})", m.failure.as_deref().unwrap_or("?"))
                }
                api::MessageStatus::Received | api::MessageStatus::Unknown => String::new(),
            },
        ),
    };
    if let Some(at) = m.expires_at {
        mark.push_str(&format!(" (disappears {})", time_of_day(at)));
    }
    if m.memory_only {
        mark.push_str(" (memory only)");
    }
    format!(
        "[{}] #{} {who}: {}{mark}",
        time_of_day(m.stored_at),
        m.id,
        m.body
    )
}

/// A page of history, oldest first, with how to get the older page.
pub(crate) fn history(page: &api::MessagePage, their_name: &str) -> String {
    let mut lines: Vec<String> = page
        .messages
        .iter()
        .rev()
        .map(|m| message_line(m, their_name))
        .collect();
    if let Some(next) = page.next_before {
        lines.push(format!("(older: --before {next})"));
    }
    if lines.is_empty() {
        "no messages yet".into()
    } else {
        lines.join("\n")
    }
}

/// `contact list`: one line per contact, a pending request's greeting under it.
pub(crate) fn contact_list(contacts: &[api::Contact]) -> String {
    if contacts.is_empty() {
        return "no contacts yet: `carom contact add <address>`".into();
    }
    contacts
        .iter()
        .map(|c| {
            let mut line = format!(
                "{:<16} {:<10} {:<7} {}{}{}",
                name_of(c),
                state_name(c.state),
                if c.online { "online" } else { "" },
                c.address,
                if c.declared_kind == api::PeerKind::Bot {
                    " [bot]"
                } else {
                    ""
                },
                if c.keep_history { "" } else { " [history off]" },
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
}

/// `sessions`: the attached frontends, marking this one.
pub(crate) fn sessions(sessions: &[api::FrontendSession], this_one: u64) -> String {
    sessions
        .iter()
        .map(|s| {
            format!(
                "#{:<4} {:<22} pid {:<7} {}{}",
                s.id,
                s.client.as_deref().or(s.process.as_deref()).unwrap_or("?"),
                s.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
                if s.subscribed { "watching events" } else { "" },
                if s.id == this_one { " (this one)" } else { "" },
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `carom status --wait` is done waiting: Tor carries traffic and our service is
/// published. A degraded service counts: a descriptor went out (arti reports it when some
/// directory uploads or introduction points are missing, routinely on small networks).
pub(crate) fn is_ready(tor: &api::TorStatus) -> bool {
    tor.ready && tor.service.is_reachable()
}

/// `carom status`.
pub(crate) fn status(info: &api::DaemonInfo, tor: &api::TorStatus, address: &str) -> String {
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
        address,
    );
    if tor.bridges > 0 {
        let plural = if tor.bridges == 1 { "" } else { "s" };
        text.push_str(&format!(
            "\nBridges  {} bridge{plural} (`carom tor bridges`)",
            tor.bridges
        ));
    }
    if tor.bootstrap_stalled {
        text.push_str("\nStalled  Tor's bootstrap is making no progress");
    }
    if let Some(e) = &tor.last_error {
        text.push_str(&format!("\nProblem  {e}"));
    }
    text
}

/// `carom tor bridges`.
pub(crate) fn bridges(b: &api::TorBridges) -> String {
    let from = match b.source {
        api::BridgeSource::Profile => "set with `carom tor bridges set`",
        api::BridgeSource::Config => "from caromd.toml",
        api::BridgeSource::None | api::BridgeSource::Unknown => "",
    };
    let mut text = if b.lines.is_empty() {
        "No bridges: Tor is reached through the network's own relays.".to_owned()
    } else {
        let plural = if b.lines.len() == 1 { "" } else { "s" };
        let mut t = format!("{} bridge{plural} ({from}):", b.lines.len());
        for (i, line) in b.lines.iter().enumerate() {
            t.push_str(&format!("\n  {}. {line}", i + 1));
        }
        t
    };
    if !b.at_next_start.is_empty() {
        let list: Vec<String> = b.at_next_start.iter().map(u32::to_string).collect();
        text.push_str(&format!(
            "\nLine {} changes a bridge Tor already uses (a new cert= or address): it takes \
             effect when caromd next starts. The other lines are in use now.",
            list.join(", ")
        ));
    }
    text
}

/// The bridge lines in a file: one per line; blank lines and `#` comments skipped.
pub(crate) fn bridge_lines_in(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The one-line progress `carom status --wait` redraws.
pub(crate) fn status_progress(tor: &api::TorStatus) -> String {
    let phase: String = format!("{} · service {}", tor.bootstrap_phase, tor.service)
        .chars()
        .take(48)
        .collect();
    format!("{} {phase:<48}", progress_bar(tor.bootstrap_percent))
}

/// Why `carom status --wait` gave up.
pub(crate) fn not_ready(tor: &api::TorStatus, timeout_secs: u64) -> String {
    format!(
        "Tor was not ready after {timeout_secs} s: {} ({}% {}; service {})",
        tor.last_error.as_deref().unwrap_or("no error reported"),
        tor.bootstrap_percent,
        tor.bootstrap_phase,
        tor.service
    )
}

fn group_state_name(s: api::GroupState) -> &'static str {
    match s {
        api::GroupState::Invited => "invited",
        api::GroupState::Member => "member",
        api::GroupState::Declined => "declined",
        api::GroupState::Left => "left",
        api::GroupState::Unknown => "?",
    }
}

fn role_name(r: api::GroupRole) -> &'static str {
    match r {
        api::GroupRole::Admin => "admin",
        api::GroupRole::Member => "member",
    }
}

/// `carom group list`.
pub(crate) fn group_list(groups: &[api::Group]) -> String {
    if groups.is_empty() {
        return "no groups yet; `carom group create <name>` starts one".into();
    }
    groups
        .iter()
        .map(|g| {
            format!(
                "{}  {} · {} member{} · {}{}",
                g.id,
                g.name,
                g.members.len(),
                if g.members.len() == 1 { "" } else { "s" },
                group_state_name(g.state),
                match (&g.state, &g.invited_by) {
                    (api::GroupState::Invited, Some(by)) => format!(
                        " by {} — `carom group show {}`, then `carom group accept {}`",
                        short(by),
                        g.id,
                        g.id
                    ),
                    _ => String::new(),
                }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `carom group show`: who is in it, what each says it is, who may do what.
pub(crate) fn group_detail(g: &api::Group) -> String {
    let mut lines = vec![format!(
        "{} ({}) — you: {}{}",
        g.name,
        g.id,
        group_state_name(g.state),
        g.role
            .map(|r| format!(", {}", role_name(r)))
            .unwrap_or_default()
    )];
    if let Some(by) = &g.invited_by {
        lines.push(format!(
            "invited by {by}: `carom group accept {}` to join",
            g.id
        ));
    }
    lines.push(format!(
        "{} member{}{}:",
        g.members.len(),
        if g.members.len() == 1 { "" } else { "s" },
        if g.members_can_invite {
            " (members may invite)"
        } else {
            ""
        }
    ));
    if let Some(t) = g.timer {
        lines.push(format!(
            "messages disappear {} after they are stored",
            duration(t)
        ));
    }
    if !g.keep_history {
        lines.push(
            "history is off here: messages live in the daemon's memory only, and are gone \
             when it stops"
                .to_owned(),
        );
    }
    for m in &g.members {
        lines.push(format!(
            "  {} {}{} · {} · {}{}",
            if m.me { "*" } else { " " },
            if m.name.is_empty() {
                "(no name)"
            } else {
                &m.name
            },
            if m.kind == api::PeerKind::Bot {
                " [bot]"
            } else {
                ""
            },
            role_name(m.role),
            m.address,
            if m.me || m.contact {
                ""
            } else {
                " · not a contact (reached for this group only)"
            }
        ));
    }
    for i in &g.invitations {
        lines.push(format!(
            "  invited: {} as {} by {}",
            i.invitee,
            role_name(i.role),
            short(&i.inviter)
        ));
    }
    lines.join("\n")
}

/// After `carom group send`.
pub(crate) fn group_sent(m: &api::GroupMessage) -> String {
    let failed: Vec<String> = m
        .deliveries
        .iter()
        .filter(|d| d.status == api::DeliveryStatus::Failed)
        .map(|d| short(&d.address))
        .collect();
    let mut text = format!(
        "queued for {} member{} (id {}); `carom watch` shows each delivery",
        m.deliveries.len() - failed.len(),
        if m.deliveries.len() - failed.len() == 1 {
            ""
        } else {
            "s"
        },
        m.id
    );
    if !failed.is_empty() {
        text.push_str(&format!("; not sent to {}", failed.join(", ")));
    }
    text
}

/// `carom group history`: oldest first, each with its sender and how far it got.
pub(crate) fn group_history(page: &api::GroupMessagePage) -> String {
    if page.messages.is_empty() {
        return "no messages yet".into();
    }
    page.messages
        .iter()
        .rev()
        .map(|m| {
            let from = match m.direction {
                api::Direction::Out => "you".to_owned(),
                _ => short(&m.sender),
            };
            let reach = if m.direction == api::Direction::Out {
                let delivered = m
                    .deliveries
                    .iter()
                    .filter(|d| d.status == api::DeliveryStatus::Delivered)
                    .count();
                format!("  (delivered to {delivered} of {})", m.deliveries.len())
            } else {
                String::new()
            };
            if m.kind == api::MessageKind::Deleted {
                return format!("#{} {} (message deleted)", m.id, time_of_day(m.sent_at));
            }
            let reach = match m.expires_at {
                Some(at) => format!("{reach} (disappears {})", time_of_day(at)),
                None => reach,
            };
            let reach = if m.memory_only {
                format!("{reach} (memory only)")
            } else {
                reach
            };
            format!(
                "#{} {} {}: {}{}  [to {}]",
                m.id,
                time_of_day(m.sent_at),
                from,
                m.body,
                reach,
                m.sent_to.len()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What `watch` looked up to describe an event better than its ids do.
#[derive(Debug, Default)]
pub(crate) struct Lookup {
    /// For `message.received`: the message, if it still exists.
    pub(crate) message: Option<api::Message>,
    /// Our name for the contact the event is about.
    pub(crate) name: Option<String>,
}

/// One `watch` line (without its time).
pub(crate) fn event_line(data: &EventData, lookup: &Lookup) -> String {
    let name = |address: &str| lookup.name.clone().unwrap_or_else(|| address.to_owned());
    match data {
        EventData::MessageReceived(m) => match &lookup.message {
            // A timer change is told by its own `contact.timer` line.
            Some(message) if message.kind == api::MessageKind::Timer => format!(
                "{} changed the disappearing-message timer (#{})",
                name(&m.contact),
                m.id
            ),
            Some(message) => format!("message from {}: {}", name(&m.contact), message.body),
            None => format!("message #{} (since deleted)", m.id),
        },
        EventData::MessageStatus(s) => format!(
            "message #{} to {} is {}{}",
            s.id,
            short(&s.contact),
            message_status_name(s.status),
            s.failure
                .as_deref()
                .map(|f| format!(": {f}"))
                .unwrap_or_default()
        ),
        EventData::RequestReceived(r) => format!(
            "contact request from {} ({}{}): \"{}\" — `carom contact accept {}`",
            r.nickname,
            r.address,
            if r.kind == api::PeerKind::Bot {
                ", declares itself a bot"
            } else {
                ""
            },
            r.greeting,
            r.address,
        ),
        EventData::StateChanged(c) => format!(
            "{} is now {} (by {}){}",
            name(&c.address),
            contact_change_name(c.state),
            match c.by {
                event::By::Us => "us",
                event::By::Them => "them",
                event::By::Unknown => "?",
            },
            match c.reason {
                Some(event::RemovalReason::Cleared) => ": cleared with the other requests",
                Some(event::RemovalReason::TooManyRequests) => {
                    ": the oldest request made room for a newer one"
                }
                Some(event::RemovalReason::Unknown) | None => "",
            }
        ),
        EventData::RequestDelivered(c) => format!("your request reached {}", name(&c.address)),
        EventData::Unreachable(u) => format!(
            "{} refuses our connections ({}); retrying rarely — a new message tries at once",
            name(&u.address),
            u.reason
        ),
        EventData::Presence(p) => format!(
            "{} is {}",
            name(&p.address),
            if p.online { "online" } else { "offline" }
        ),
        EventData::TorStatus(t) => format!(
            "Tor {} {} · service {}",
            progress_bar(t.bootstrap_percent),
            t.bootstrap_phase,
            t.service
        ),
        EventData::TimerChanged(t) => {
            let by = match t.by {
                event::By::Us => "you".to_owned(),
                event::By::Them | event::By::Unknown => name(&t.address),
            };
            match t.timer {
                Some(secs) => format!(
                    "{by} set messages with {} to disappear after {}",
                    name(&t.address),
                    duration(secs)
                ),
                None => format!(
                    "{by} turned disappearing messages with {} off",
                    name(&t.address)
                ),
            }
        }
        EventData::Deleted(d) => match (d.for_everyone, d.by) {
            (true, event::By::Them) => {
                format!(
                    "{} deleted message #{} for everyone",
                    name(&d.contact),
                    d.id
                )
            }
            (true, _) => format!("you deleted message #{} for everyone", d.id),
            (false, _) => format!("message #{} deleted here", d.id),
        },
        EventData::Expired(e) => format!(
            "{} message{} with {} disappeared",
            e.ids.len(),
            if e.ids.len() == 1 { "" } else { "s" },
            name(&e.contact)
        ),
        EventData::GroupInvited(g) => format!(
            "{} invited you to the group \"{}\" — `carom group show {}`, then `carom group accept {}`",
            name(&g.inviter),
            g.name,
            g.group,
            g.group
        ),
        EventData::GroupChanged(g) => {
            format!("group {} changed — `carom group show {}`", g.group, g.group)
        }
        EventData::GroupMessage(m) => format!(
            "group message #{} in {} from {} — `carom group history {}`",
            m.id,
            m.group,
            short(&m.sender),
            m.group
        ),
        EventData::GroupDeleted(d) => match (d.for_everyone, d.by) {
            (true, event::By::Us) => format!(
                "you deleted group message #{} of {} for everyone",
                d.id, d.group
            ),
            (true, _) => format!(
                "group message #{} of {} was deleted for everyone by its sender",
                d.id, d.group
            ),
            (false, _) => format!("group message #{} of {} deleted here", d.id, d.group),
        },
        EventData::GroupExpired(e) => format!(
            "{} message{} of group {} reached the end of the group's timer and were erased",
            e.ids.len(),
            if e.ids.len() == 1 { "" } else { "s" },
            e.group
        ),
        EventData::GroupDelivery(d) => format!(
            "group message #{} reached {}{}",
            d.id,
            short(&d.recipient),
            match d.status {
                api::DeliveryStatus::Delivered => String::new(),
                _ => format!(
                    " — no: {}",
                    d.failure.as_deref().unwrap_or("it will not be delivered")
                ),
            }
        ),
        EventData::Attached(a) => format!(
            "a frontend attached: #{} {}",
            a.session,
            a.process.as_deref().unwrap_or("")
        ),
        EventData::Detached(d) => format!("frontend #{} detached", d.session),
        EventData::Gap(g) => format!(
            "(events {}–{} were pruned before you caught up)",
            g.from_seq, g.to_seq
        ),
        EventData::HistoryChanged(h) => {
            if h.keep_history {
                format!("messages with {} are stored again", name(&h.address))
            } else {
                format!(
                    "history with {} is off: its messages live in the daemon's memory only",
                    name(&h.address)
                )
            }
        }
        EventData::LiveMissed(m) => format!(
            "({} live events were missed: this terminal read too slowly)",
            m.count
        ),
        EventData::Unknown { kind, data } => format!("{kind} {data}"),
    }
}

fn message_status_name(s: api::MessageStatus) -> &'static str {
    match s {
        api::MessageStatus::Queued => "queued",
        api::MessageStatus::Sent => "sent",
        api::MessageStatus::Delivered => "delivered",
        api::MessageStatus::Failed => "failed",
        api::MessageStatus::Received => "received",
        api::MessageStatus::Unknown => "?",
    }
}

fn contact_change_name(s: event::ContactStateChange) -> &'static str {
    use event::ContactStateChange as C;
    match s {
        C::Requesting => "requested",
        C::Pending => "asking to be a contact",
        C::Accepted => "a contact",
        C::Rejected => "rejected",
        C::Blocked => "blocked",
        C::Removed => "removed",
        C::Unknown => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRESS: &str = "xsrwtzhdmlm3t5ep6ksf2xnmmbkoq5hc6cyivbtqwh7mrvqzgwerdhqd.onion";

    fn member(name: &str, kind: api::PeerKind, me: bool, contact: bool) -> api::GroupMember {
        api::GroupMember {
            address: ADDRESS.into(),
            name: name.into(),
            kind,
            role: if me {
                api::GroupRole::Admin
            } else {
                api::GroupRole::Member
            },
            contact,
            me,
        }
    }

    #[test]
    fn a_group_shows_each_member_with_its_kind_and_whether_we_reach_it() {
        let g = api::Group {
            id: "ab".repeat(16),
            name: "Desk".into(),
            state: api::GroupState::Member,
            members_can_invite: false,
            role: Some(api::GroupRole::Admin),
            members: vec![
                member("Alice", api::PeerKind::Human, true, false),
                member("Helper", api::PeerKind::Bot, false, true),
                member("Dave", api::PeerKind::Human, false, false),
            ],
            invitations: vec![],
            invited_by: None,
            timer: None,
            keep_history: true,
        };
        let text = group_detail(&g);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("Desk ("), "{text}");
        assert!(lines[0].ends_with("you: member, admin"), "{text}");
        assert!(lines[2].contains("* Alice · admin"), "{text}");
        assert!(lines[3].contains("Helper [bot] · member"), "{text}");
        assert!(!lines[3].contains("not a contact"), "{text}");
        assert!(lines[4].contains("not a contact"), "{text}");
        assert_eq!(
            group_list(&[g]),
            format!("{}  Desk · 3 members · member", "ab".repeat(16))
        );
    }

    #[test]
    fn a_group_history_says_who_sent_each_message_and_how_far_it_got() {
        let delivery = |status| api::GroupDelivery {
            address: ADDRESS.into(),
            status,
            failure: None,
        };
        let page = api::GroupMessagePage {
            messages: vec![api::GroupMessage {
                id: 3,
                group: "ab".repeat(16),
                msg_id: "00".repeat(16),
                sender: ADDRESS.into(),
                direction: api::Direction::Out,
                body: "hello all".into(),
                sent_at: 0,
                stored_at: 0,
                reply_to: None,
                sent_to: vec![ADDRESS.into(); 3],
                deliveries: vec![
                    delivery(api::DeliveryStatus::Delivered),
                    delivery(api::DeliveryStatus::Queued),
                ],
                timer: None,
                expires_at: None,
                kind: api::MessageKind::Text,
                memory_only: false,
            }],
            next_before: None,
        };
        let text = group_history(&page);
        assert!(text.starts_with("#3 "), "{text}");
        assert!(
            text.contains("you: hello all  (delivered to 1 of 2)  [to 3]"),
            "{text}"
        );
        assert_eq!(
            group_sent(&page.messages[0]),
            "queued for 2 members (id 3); `carom watch` shows each delivery"
        );
    }

    fn contact(nickname: &str, offered: Option<&str>, state: api::ContactState) -> api::Contact {
        api::Contact {
            address: ADDRESS.into(),
            nickname: nickname.into(),
            offered_nickname: offered.map(Into::into),
            greeting: Some("hi, it's Bob".into()),
            state,
            declared_kind: api::PeerKind::Human,
            online: false,
            created_at: 0,
            last_seen: None,
            timer: None,
            keep_history: true,
        }
    }

    fn message(direction: api::Direction, status: api::MessageStatus) -> api::Message {
        api::Message {
            id: 7,
            msg_id: "00".repeat(16),
            contact: ADDRESS.into(),
            direction,
            body: "hello".into(),
            sent_at: 0,
            stored_at: (13 * 3600 + 5 * 60) * 1000,
            status,
            failure: (status == api::MessageStatus::Failed).then(|| "rejected: too large".into()),
            reply_to: None,
            kind: api::MessageKind::Text,
            timer: None,
            expires_at: None,
            memory_only: false,
        }
    }

    fn tor(ready: bool, service: api::ServiceStatus) -> api::TorStatus {
        api::TorStatus {
            bootstrap_percent: 45,
            bootstrap_phase: "loading directory".into(),
            ready,
            service,
            last_error: None,
            bootstrap_stalled: false,
            bridges: 0,
        }
    }

    #[test]
    fn bridges_are_listed_with_where_they_come_from_and_what_waits_for_a_restart() {
        let b = api::TorBridges {
            lines: vec![
                "obfs4 192.0.2.3:443 F cert=x".into(),
                "192.0.2.4:9001 F".into(),
            ],
            source: api::BridgeSource::Profile,
            at_next_start: vec![2],
        };
        assert_eq!(
            bridges(&b),
            "2 bridges (set with `carom tor bridges set`):\n  1. obfs4 192.0.2.3:443 F cert=x\n  \
             2. 192.0.2.4:9001 F\nLine 2 changes a bridge Tor already uses (a new cert= or \
             address): it takes effect when caromd next starts. The other lines are in use now."
        );
        let none = api::TorBridges {
            lines: Vec::new(),
            source: api::BridgeSource::None,
            at_next_start: Vec::new(),
        };
        assert!(bridges(&none).starts_with("No bridges"));
        assert_eq!(
            bridge_lines_in("# from bridges.torproject.org\n\nobfs4 a b\n  obfs4 c d  \n"),
            vec!["obfs4 a b".to_owned(), "obfs4 c d".to_owned()]
        );
    }

    #[test]
    fn a_contact_is_called_by_our_name_then_theirs_then_its_address() {
        assert_eq!(
            name_of(&contact("Bob", Some("B"), api::ContactState::Accepted)),
            "Bob"
        );
        assert_eq!(
            name_of(&contact("", Some("B"), api::ContactState::Pending)),
            "B"
        );
        assert_eq!(
            name_of(&contact("", Some(""), api::ContactState::Pending)),
            "xsrwtzhd…"
        );
    }

    #[test]
    fn messages_show_who_and_how_far_they_got() {
        let line = |d, s| message_line(&message(d, s), "Bob");
        assert_eq!(
            line(api::Direction::In, api::MessageStatus::Received),
            "[13:05 UTC] #7 Bob: hello"
        );
        assert_eq!(
            line(api::Direction::Out, api::MessageStatus::Delivered),
            "[13:05 UTC] #7 me: hello ✓"
        );
        assert_eq!(
            line(api::Direction::Out, api::MessageStatus::Failed),
            "[13:05 UTC] #7 me: hello (FAILED: rejected: too large)"
        );
        let page = api::MessagePage {
            messages: vec![],
            next_before: None,
        };
        assert_eq!(history(&page, "Bob"), "no messages yet");
        let page = api::MessagePage {
            messages: vec![
                message(api::Direction::Out, api::MessageStatus::Queued),
                message(api::Direction::In, api::MessageStatus::Received),
            ],
            next_before: Some(3),
        };
        assert_eq!(
            history(&page, "Bob"),
            "[13:05 UTC] #7 Bob: hello\n[13:05 UTC] #7 me: hello (queued)\n(older: --before 3)"
        );
    }

    #[test]
    fn the_contact_list_shows_pending_greetings_and_bots() {
        assert!(contact_list(&[]).contains("carom contact add"));
        let mut bot = contact("Bob", None, api::ContactState::Pending);
        bot.declared_kind = api::PeerKind::Bot;
        bot.online = true;
        let text = contact_list(&[bot]);
        assert!(text.starts_with("Bob              wants-you  online  xsrwtz"));
        assert!(text.contains(".onion [bot]\n"));
        assert!(text.ends_with("\"hi, it's Bob\""));
        // A greeting is shown only while the request waits for an answer.
        let text = contact_list(&[contact("Bob", None, api::ContactState::Accepted)]);
        assert!(!text.contains("hi, it's Bob"));
    }

    #[test]
    fn status_waits_for_a_published_service_on_a_ready_tor() {
        use api::ServiceStatus as S;
        assert!(!is_ready(&tor(false, S::Published)));
        assert!(!is_ready(&tor(true, S::Launching)));
        assert!(!is_ready(&tor(true, S::Broken)));
        assert!(!is_ready(&tor(true, S::Unknown)));
        for service in [S::Published, S::Reachable, S::Degraded] {
            assert!(is_ready(&tor(true, service)), "{service}");
        }
        let line = status_progress(&tor(false, S::Launching));
        assert_eq!(
            line,
            "[#########-----------]  45% loading directory · service launching           "
        );
        // The redrawn line keeps one width, so a shorter phase overwrites a longer one.
        assert_eq!(line.chars().count(), 27 + 1 + 48);
        let mut broken = tor(true, S::Broken);
        broken.last_error = Some("no introduction points".into());
        assert_eq!(
            not_ready(&broken, 300),
            "Tor was not ready after 300 s: no introduction points (45% loading directory; \
             service broken)"
        );
        let info = api::DaemonInfo {
            daemon_version: "0.1.0".into(),
            api_version: 1,
            min_api_version: 1,
            profile: api::ProfileState::Unlocked,
            passphrase_protected: Some(false),
            ephemeral: true,
            data_dir: None,
        };
        assert_eq!(
            status(&info, &broken, ADDRESS),
            format!(
                "caromd 0.1.0 (RAM-only profile, NOT protected by a passphrase)\n\
                 Tor      [#########-----------]  45% loading directory\n\
                 Service  broken\nAddress  {ADDRESS}\nProblem  no introduction points"
            )
        );
    }

    #[test]
    fn every_event_kind_reads_as_a_sentence() {
        let lookup = Lookup {
            message: Some(message(api::Direction::In, api::MessageStatus::Received)),
            name: Some("Bob".into()),
        };
        let line = |kind: &str, data: serde_json::Value| {
            event_line(&EventData::from_parts(kind, data), &lookup)
        };
        let cases = [
            (
                event::MESSAGE_RECEIVED,
                serde_json::json!({"id": 7, "contact": ADDRESS, "msg_id": "00"}),
                "message from Bob: hello",
            ),
            (
                event::MESSAGE_STATUS,
                serde_json::json!({"id": 7, "contact": ADDRESS, "msg_id": "00",
                    "status": "failed", "failure": "rejected: over quota"}),
                "message #7 to xsrwtzhd… is failed: rejected: over quota",
            ),
            (
                event::CONTACT_REQUEST_RECEIVED,
                serde_json::json!({"address": "a.onion", "nickname": "Eve", "greeting": "hi",
                    "kind": "bot"}),
                "contact request from Eve (a.onion, declares itself a bot): \"hi\" — \
                 `carom contact accept a.onion`",
            ),
            (
                event::CONTACT_STATE,
                serde_json::json!({"address": ADDRESS, "state": "removed", "by": "us",
                    "reason": "too_many_requests"}),
                "Bob is now removed (by us): the oldest request made room for a newer one",
            ),
            (
                event::CONTACT_REQUEST_DELIVERED,
                serde_json::json!({"address": ADDRESS}),
                "your request reached Bob",
            ),
            (
                event::CONTACT_PRESENCE,
                serde_json::json!({"address": ADDRESS, "online": false}),
                "Bob is offline",
            ),
            (
                event::CONTACT_UNREACHABLE,
                serde_json::json!({"address": ADDRESS, "reason": "stream reset"}),
                "Bob refuses our connections (stream reset); retrying rarely — a new message \
                 tries at once",
            ),
            (
                event::TOR_STATUS,
                serde_json::to_value(tor(true, api::ServiceStatus::Reachable)).unwrap(),
                "Tor [#########-----------]  45% loading directory · service reachable",
            ),
            (
                event::FRONTEND_ATTACHED,
                serde_json::json!({"session": 3, "pid": 9, "process": "carom"}),
                "a frontend attached: #3 carom",
            ),
            (
                event::FRONTEND_DETACHED,
                serde_json::json!({"session": 3}),
                "frontend #3 detached",
            ),
            (
                event::GAP,
                serde_json::json!({"from_seq": 4, "to_seq": 9}),
                "(events 4–9 were pruned before you caught up)",
            ),
            (
                "group.created",
                serde_json::json!({"id": 1}),
                "group.created {\"id\":1}",
            ),
        ];
        for (kind, data, expected) in cases {
            assert_eq!(line(kind, data), expected, "{kind}");
        }
        // A message deleted before `watch` fetched it.
        let gone = event_line(
            &EventData::from_parts(
                event::MESSAGE_RECEIVED,
                serde_json::json!({"id": 7, "contact": ADDRESS, "msg_id": "00"}),
            ),
            &Lookup::default(),
        );
        assert_eq!(gone, "message #7 (since deleted)");
    }

    #[test]
    fn errors_a_newcomer_meets_first_say_what_to_run() {
        assert_eq!(hint(Some(api::ErrorKind::NoProfile)), " (run `carom init`)");
        assert_eq!(hint(Some(api::ErrorKind::Locked)), " (run `carom unlock`)");
        assert_eq!(hint(Some(api::ErrorKind::NotFound)), "");
        assert_eq!(hint(None), "");
    }

    #[test]
    fn timers_are_read_and_shown_in_words() {
        assert_eq!(parse_timer("off"), Ok(None));
        assert_eq!(parse_timer("30s"), Ok(Some(30)));
        assert_eq!(parse_timer("90"), Ok(Some(90)));
        assert_eq!(parse_timer("5m"), Ok(Some(300)));
        assert_eq!(parse_timer("1h"), Ok(Some(3_600)));
        assert_eq!(parse_timer("1d"), Ok(Some(86_400)));
        assert_eq!(parse_timer("4w"), Ok(Some(api::MAX_TIMER_SECS)));
        for bad in ["0", "5w", "1y", "", "h", "99999999999999999999d"] {
            assert!(parse_timer(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(duration(1), "1 second");
        assert_eq!(duration(300), "5 minutes");
        assert_eq!(duration(86_400), "1 day");
        assert_eq!(duration(14 * 86_400), "2 weeks");
        assert_eq!(duration(90), "90 seconds");
    }

    #[test]
    fn timer_changes_tombstones_and_disappearing_messages_read_as_such() {
        let mut change = message(api::Direction::In, api::MessageStatus::Received);
        change.kind = api::MessageKind::Timer;
        change.body = String::new();
        change.timer = Some(86_400);
        assert_eq!(
            message_line(&change, "Bob"),
            "[13:05 UTC] #7 Bob set messages to disappear after 1 day"
        );
        change.timer = None;
        change.direction = api::Direction::Out;
        assert_eq!(
            message_line(&change, "Bob"),
            "[13:05 UTC] #7 you turned disappearing messages off"
        );
        let mut gone = message(api::Direction::In, api::MessageStatus::Received);
        gone.kind = api::MessageKind::Deleted;
        gone.body = String::new();
        assert_eq!(
            message_line(&gone, "Bob"),
            "[13:05 UTC] #7 (message deleted)"
        );
        let mut brief = message(api::Direction::In, api::MessageStatus::Received);
        brief.timer = Some(3_600);
        brief.expires_at = Some((14 * 3600 + 5 * 60) * 1000);
        assert!(message_line(&brief, "Bob").ends_with("(disappears 14:05 UTC)"));
    }
}
