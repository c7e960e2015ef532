//! Every method, described once: its wire name, its parameters' type and its result's type.
//!
//! The server reads a request into a [`Request`] (one variant per method, its parameters read
//! and checked against their limits) and matches on it exhaustively, so a method added here
//! does not compile until the server serves it. `carom-client` calls any [`Method`] with its
//! own types, so client and server cannot disagree on a name or a shape.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{CheckLimits, ErrorKind, ErrorObject};

/// The banner notification sent first on every connection.
pub const BANNER: &str = "carom.banner";
/// An event notification (after `events.subscribe`).
pub const EVENT: &str = "carom.event";
/// Notification: an event that is never stored ([`crate::event::LiveEvent`]), about a
/// conversation with history off.
pub const LIVE_EVENT: &str = "carom.live_event";

/// One API method.
pub trait Method {
    /// Its name on the wire.
    const NAME: &'static str;
    /// What `params` holds.
    type Params: Serialize + DeserializeOwned + CheckLimits;
    /// What `result` holds.
    type Result: Serialize + DeserializeOwned;
}

/// Reads `params` (absent or `null` is `{}`) as `T`, within every documented limit.
pub fn read_params<T: DeserializeOwned + CheckLimits>(params: Value) -> Result<T, ErrorObject> {
    let params = if params.is_null() {
        Value::Object(serde_json::Map::new())
    } else {
        params
    };
    let params: T = serde_json::from_value(params).map_err(|e| {
        ErrorObject::new(ErrorKind::InvalidParams, format!("invalid parameters: {e}"))
    })?;
    params.check_limits()?;
    Ok(params)
}

macro_rules! methods {
    ($( $(#[$doc:meta])* $name:ident = $wire:literal ( $params:ty ) -> $result:ty; )*) => {
        $(
            $(#[$doc])*
            #[derive(Clone, Copy, Debug)]
            pub struct $name;

            impl Method for $name {
                const NAME: &'static str = $wire;
                type Params = $params;
                type Result = $result;
            }
        )*

        /// Every method's wire name, in the order `docs/api.md` lists them.
        pub const ALL: &[&str] = &[$($wire),*];

        /// A request whose method is known and whose parameters were read and checked.
        #[derive(Debug)]
        pub enum Request {
            $( $(#[$doc])* $name($params), )*
        }

        impl Request {
            /// Reads a request for the method named `name`: `method_not_found` for a name no
            /// method has, `invalid_params` or `too_large` for parameters that do not fit.
            pub fn parse(name: &str, params: Value) -> Result<Request, ErrorObject> {
                match name {
                    $( $wire => Ok(Request::$name(read_params(params)?)), )*
                    other => Err(ErrorObject::new(
                        ErrorKind::MethodNotFound,
                        format!(
                            "no method named `{}`",
                            other.chars().take(64).collect::<String>()
                        ),
                    )),
                }
            }

            /// The method's wire name.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Request::$name(_) => $wire, )*
                }
            }
        }
    };
}

methods! {
    /// The daemon's version and the profile's state.
    DaemonInfo = "daemon.info" (crate::Empty) -> crate::DaemonInfo;
    /// Stop the daemon gracefully.
    DaemonShutdown = "daemon.shutdown" (crate::Empty) -> crate::Empty;
    /// Traffic counters.
    DaemonStats = "daemon.stats" (crate::Empty) -> crate::Stats;
    /// Create the profile.
    ProfileCreate = "profile.create" (crate::ProfileCreate) -> crate::Identity;
    /// Unlock the profile.
    ProfileUnlock = "profile.unlock" (crate::ProfileUnlock) -> crate::Identity;
    /// Change (or remove) the passphrase.
    ProfileChangePassphrase = "profile.change_passphrase"
        (crate::ProfileChangePassphrase) -> crate::Empty;
    /// Erase the profile for good: the key file shredded first, then everything else.
    ProfileErase = "profile.erase" (crate::ProfileErase) -> crate::ProfileErased;
    /// Our address.
    IdentityGet = "identity.get" (crate::Empty) -> crate::Identity;
    /// Tor's bootstrap and our onion service's state.
    TorStatus = "tor.status" (crate::Empty) -> crate::TorStatus;
    /// The bridges Tor is entered through, and where they come from.
    TorBridges = "tor.bridges" (crate::Empty) -> crate::TorBridges;
    /// Enter Tor through these bridges from now on (kept in the profile).
    TorSetBridges = "tor.set_bridges" (crate::TorSetBridges) -> crate::TorBridges;
    /// Send a contact request.
    ContactAdd = "contact.add" (crate::ContactAdd) -> crate::Contact;
    /// All contacts.
    ContactList = "contact.list" (crate::Empty) -> Vec<crate::Contact>;
    /// One contact.
    ContactGet = "contact.get" (crate::AddressParams) -> crate::Contact;
    /// Accept, reject or block a request; block or unblock anyone.
    ContactRespond = "contact.respond" (crate::ContactRespond) -> crate::Contact;
    /// Rename a contact locally.
    ContactRename = "contact.rename" (crate::ContactRename) -> crate::Contact;
    /// Forget a contact and its history.
    ContactRemove = "contact.remove" (crate::AddressParams) -> crate::Empty;
    /// Set (or turn off) the conversation's disappearing-message timer, at both ends.
    ContactSetTimer = "contact.set_timer" (crate::ContactSetTimer) -> crate::Contact;
    /// Keep the conversation's history in the store, or in memory only (here).
    ContactSetHistory = "contact.set_history" (crate::ContactSetHistory) -> crate::Contact;
    /// Forget every unanswered contact request from strangers.
    ContactClearRequests = "contact.clear_requests" (crate::Empty) -> crate::Cleared;
    /// Queue a message (its status is `queued`).
    MessageSend = "message.send" (crate::MessageSend) -> crate::Message;
    /// Page a conversation.
    MessageList = "message.list" (crate::MessageList) -> crate::MessagePage;
    /// One message.
    MessageGet = "message.get" (crate::MessageIdParams) -> crate::Message;
    /// Delete one message here, or a chat we sent for everyone.
    MessageDelete = "message.delete" (crate::MessageDelete) -> crate::Empty;
    /// Create a group; we are its first member and an admin.
    GroupCreate = "group.create" (crate::GroupCreate) -> crate::Group;
    /// Every group we hold (invitations included).
    GroupList = "group.list" (crate::Empty) -> Vec<crate::Group>;
    /// One group, with its members and their kinds.
    GroupGet = "group.get" (crate::GroupParams) -> crate::Group;
    /// Invite a contact (the first consent; they must accept).
    GroupInvite = "group.invite" (crate::GroupInvite) -> crate::Group;
    /// Accept an invitation (the second consent).
    GroupAccept = "group.accept" (crate::GroupAccept) -> crate::Group;
    /// Decline an invitation (nobody is told).
    GroupDecline = "group.decline" (crate::GroupParams) -> crate::Group;
    /// Leave a group.
    GroupLeave = "group.leave" (crate::GroupParams) -> crate::Group;
    /// Remove a member (admins), or withdraw someone's invitations.
    GroupRemove = "group.remove" (crate::GroupMemberParams) -> crate::Group;
    /// Change a member's role (admins).
    GroupSetRole = "group.set_role" (crate::GroupSetRole) -> crate::Group;
    /// Rename a group (admins).
    GroupRename = "group.rename" (crate::GroupRename) -> crate::Group;
    /// Let members invite, or not (admins).
    GroupSetPolicy = "group.set_policy" (crate::GroupSetPolicy) -> crate::Group;
    /// Set (or turn off) the group's disappearing-message timer (admins).
    GroupSetTimer = "group.set_timer" (crate::GroupSetTimer) -> crate::Group;
    /// Keep the group's messages in memory only (history off), or store them again.
    GroupSetHistory = "group.set_history" (crate::GroupSetHistory) -> crate::Group;
    /// Send a message to every member.
    GroupSend = "group.send" (crate::GroupSend) -> crate::GroupMessage;
    /// Delete a group message here, or one we sent for everyone.
    GroupDelete = "group.delete" (crate::GroupDelete) -> crate::Empty;
    /// Page a group's messages.
    GroupHistory = "group.history" (crate::GroupHistory) -> crate::GroupMessagePage;
    /// Start receiving events.
    EventsSubscribe = "events.subscribe" (crate::EventsSubscribe) -> crate::Subscribed;
    /// Stop receiving events.
    EventsUnsubscribe = "events.unsubscribe" (crate::Empty) -> crate::Empty;
    /// The frontends attached now.
    SessionList = "session.list" (crate::Empty) -> Vec<crate::FrontendSession>;
    /// Name this frontend (shown in `session.list`).
    SessionHello = "session.hello" (crate::SessionHello) -> crate::Empty;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_parses_by_its_own_name() {
        let minimal = |name: &str| match name {
            "profile.unlock" => serde_json::json!({ "passphrase": "" }),
            "profile.change_passphrase" => serde_json::json!({ "old": "" }),
            "profile.erase" => serde_json::json!({ "confirm": "ERASE" }),
            "contact.add" | "contact.get" | "contact.remove" => {
                serde_json::json!({ "address": "x" })
            }
            "contact.respond" => serde_json::json!({ "address": "x", "response": "accept" }),
            "contact.rename" => serde_json::json!({ "address": "x", "nickname": "y" }),
            "contact.set_timer" => serde_json::json!({ "address": "x", "timer": 300 }),
            "contact.set_history" => {
                serde_json::json!({ "address": "x", "keep_history": false })
            }
            "message.send" => serde_json::json!({ "to": "x", "body": "y" }),
            "message.list" => serde_json::json!({ "with": "x" }),
            "message.get" | "message.delete" => serde_json::json!({ "id": 1 }),
            "session.hello" => serde_json::json!({ "client": "x" }),
            "group.create" => serde_json::json!({ "name": "x" }),
            "group.get" | "group.decline" | "group.leave" => serde_json::json!({ "group": "x" }),
            "group.invite" | "group.remove" => {
                serde_json::json!({ "group": "x", "address": "y" })
            }
            "group.accept" => serde_json::json!({ "group": "x" }),
            "group.set_role" => {
                serde_json::json!({ "group": "x", "address": "y", "role": "admin" })
            }
            "group.rename" => serde_json::json!({ "group": "x", "name": "y" }),
            "group.set_policy" => serde_json::json!({ "group": "x", "members_can_invite": true }),
            "group.set_timer" => serde_json::json!({ "group": "x", "timer": 60 }),
            "group.set_history" => {
                serde_json::json!({ "group": "x", "keep_history": false })
            }
            "group.delete" => serde_json::json!({ "group": "x", "id": 1 }),
            "group.send" => serde_json::json!({ "group": "x", "body": "y" }),
            "group.history" => serde_json::json!({ "group": "x" }),
            _ => Value::Null,
        };
        for name in ALL {
            let request = Request::parse(name, minimal(name)).expect(name);
            assert_eq!(request.name(), *name);
        }
        let unknown = Request::parse("contact.teleport", Value::Null).unwrap_err();
        assert_eq!(unknown.data.kind, ErrorKind::MethodNotFound);
    }

    #[test]
    fn parameters_are_checked_before_a_method_runs() {
        let e = Request::parse("message.get", serde_json::json!({ "id": -1 })).unwrap_err();
        assert_eq!(e.data.kind, ErrorKind::InvalidParams);
        let e = Request::parse("contact.get", serde_json::json!({})).unwrap_err();
        assert_eq!(e.data.kind, ErrorKind::InvalidParams);
        let long = "a".repeat(crate::MAX_NICKNAME_BYTES + 1);
        let e = Request::parse(
            "contact.rename",
            serde_json::json!({ "address": "x", "nickname": long }),
        )
        .unwrap_err();
        assert_eq!(e.data.kind, ErrorKind::TooLarge);
    }

    #[test]
    fn the_api_reference_documents_every_method() {
        let doc = include_str!("../../../docs/api.md");
        for name in ALL {
            assert!(
                doc.contains(&format!("`{name}`")),
                "docs/api.md does not mention `{name}`"
            );
        }
    }
}
