//! The documented limits of every method's parameters, in one place.
//!
//! The server checks [`CheckLimits`] for every request before the method runs, so a method
//! cannot forget a limit on a field it takes: each parameter type must implement it.

use crate::{
    AddressParams, ContactAdd, ContactRename, ContactRespond, ContactSetHistory, ContactSetTimer,
    Empty, ErrorKind, ErrorObject, EventsSubscribe, GroupAccept, GroupCreate, GroupDelete,
    GroupHistory, GroupInvite, GroupMemberParams, GroupParams, GroupRename, GroupSend,
    GroupSetHistory, GroupSetPolicy, GroupSetRole, GroupSetTimer, MAX_ADDRESS_BYTES,
    MAX_BODY_BYTES, MAX_BRIDGE_LINE_BYTES, MAX_BRIDGE_LINES, MAX_CLIENT_NAME_BYTES,
    MAX_CLIENT_TOKEN_BYTES, MAX_EVENT_KIND_BYTES, MAX_EVENT_KINDS, MAX_GREETING_BYTES,
    MAX_GROUP_NAME_BYTES, MAX_NICKNAME_BYTES, MAX_OFFERED_NICKNAME_BYTES, MAX_PASSPHRASE_BYTES,
    MessageDelete, MessageIdParams, MessageList, MessageSend, ProfileChangePassphrase,
    ProfileCreate, ProfileErase, ProfileUnlock, SessionHello, TorSetBridges,
};

/// Parameters whose fields have documented limits.
pub trait CheckLimits {
    /// `Ok` if every field is within its limit; otherwise a `too_large` error naming the
    /// field, its size and the limit, or `invalid_params` for a value out of range.
    fn check_limits(&self) -> Result<(), ErrorObject>;
}

fn at_most(field: &str, value: &str, limit: usize) -> Result<(), ErrorObject> {
    if value.len() <= limit {
        return Ok(());
    }
    Err(ErrorObject::new(
        ErrorKind::TooLarge,
        format!(
            "`{field}` is {} bytes; the limit is {limit} bytes",
            value.len()
        ),
    ))
}

impl CheckLimits for Empty {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        Ok(())
    }
}

impl CheckLimits for ProfileCreate {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        match &self.passphrase {
            Some(p) => at_most("passphrase", p.expose(), MAX_PASSPHRASE_BYTES),
            None => Ok(()),
        }
    }
}

impl CheckLimits for ProfileUnlock {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("passphrase", self.passphrase.expose(), MAX_PASSPHRASE_BYTES)
    }
}

impl CheckLimits for ProfileChangePassphrase {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("old", self.old.expose(), MAX_PASSPHRASE_BYTES)?;
        match &self.new {
            Some(p) => at_most("new", p.expose(), MAX_PASSPHRASE_BYTES),
            None => Ok(()),
        }
    }
}

impl CheckLimits for ContactAdd {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("address", &self.address, MAX_ADDRESS_BYTES)?;
        at_most("nickname", &self.nickname, MAX_NICKNAME_BYTES)?;
        at_most(
            "offer_nickname",
            &self.offer_nickname,
            MAX_OFFERED_NICKNAME_BYTES,
        )?;
        at_most("greeting", &self.greeting, MAX_GREETING_BYTES)
    }
}

impl CheckLimits for TorSetBridges {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        let lines = self.lines.as_deref().unwrap_or_default();
        if lines.len() > MAX_BRIDGE_LINES {
            return Err(ErrorObject::new(
                ErrorKind::TooLarge,
                format!(
                    "`lines` holds {} bridge lines; the limit is {MAX_BRIDGE_LINES}",
                    lines.len()
                ),
            ));
        }
        lines
            .iter()
            .try_for_each(|line| at_most("lines[]", line, MAX_BRIDGE_LINE_BYTES))
    }
}

impl CheckLimits for AddressParams {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("address", &self.address, MAX_ADDRESS_BYTES)
    }
}

impl CheckLimits for ContactRespond {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("address", &self.address, MAX_ADDRESS_BYTES)?;
        match &self.nickname {
            Some(n) => at_most("nickname", n, MAX_NICKNAME_BYTES),
            None => Ok(()),
        }
    }
}

impl CheckLimits for ContactRename {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("address", &self.address, MAX_ADDRESS_BYTES)?;
        at_most("nickname", &self.nickname, MAX_NICKNAME_BYTES)
    }
}

impl CheckLimits for MessageSend {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("to", &self.to, MAX_ADDRESS_BYTES)?;
        at_most("body", &self.body, MAX_BODY_BYTES)?;
        if let Some(reply_to) = &self.reply_to {
            at_most("reply_to", reply_to, MAX_ADDRESS_BYTES)?;
        }
        match &self.client_token {
            Some(t) => at_most("client_token", t, MAX_CLIENT_TOKEN_BYTES),
            None => Ok(()),
        }
    }
}

impl CheckLimits for MessageList {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("with", &self.with, MAX_ADDRESS_BYTES)?;
        if self.before.is_some_and(|b| b < 1) {
            return Err(ErrorObject::new(
                ErrorKind::InvalidParams,
                "`before` is a message id, which is at least 1",
            ));
        }
        Ok(())
    }
}

impl CheckLimits for ProfileErase {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        if self.confirm != crate::ERASE_CONFIRMATION {
            return Err(ErrorObject::new(
                ErrorKind::InvalidParams,
                format!(
                    "erasing the profile cannot be undone: `confirm` must be exactly {:?}",
                    crate::ERASE_CONFIRMATION
                ),
            ));
        }
        Ok(())
    }
}

impl CheckLimits for MessageDelete {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        MessageIdParams { id: self.id }.check_limits()
    }
}

impl CheckLimits for ContactSetHistory {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("address", &self.address, MAX_ADDRESS_BYTES)
    }
}

impl CheckLimits for ContactSetTimer {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("address", &self.address, MAX_ADDRESS_BYTES)?;
        timer_in_range(self.timer)
    }
}

/// A disappearing-message timer: 1 s to four weeks, or off.
fn timer_in_range(timer: Option<u32>) -> Result<(), ErrorObject> {
    match timer {
        Some(t) if t == 0 || t > crate::MAX_TIMER_SECS => Err(ErrorObject::new(
            ErrorKind::InvalidParams,
            format!(
                "`timer` is {t} s; it must be 1 to {} s (four weeks), or null for off",
                crate::MAX_TIMER_SECS
            ),
        )),
        _ => Ok(()),
    }
}

impl CheckLimits for MessageIdParams {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        if self.id < 1 {
            return Err(ErrorObject::new(
                ErrorKind::InvalidParams,
                format!("`id` is {}; message ids start at 1", self.id),
            ));
        }
        Ok(())
    }
}

impl CheckLimits for EventsSubscribe {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        let Some(kinds) = &self.kinds else {
            return Ok(());
        };
        if kinds.len() > MAX_EVENT_KINDS {
            return Err(ErrorObject::new(
                ErrorKind::TooLarge,
                format!(
                    "`kinds` lists {} kinds; the limit is {MAX_EVENT_KINDS}",
                    kinds.len()
                ),
            ));
        }
        kinds
            .iter()
            .try_for_each(|k| at_most("kinds[]", k, MAX_EVENT_KIND_BYTES))
    }
}

impl CheckLimits for SessionHello {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("client", &self.client, MAX_CLIENT_NAME_BYTES)
    }
}

fn before_is_an_id(before: Option<i64>) -> Result<(), ErrorObject> {
    if before.is_some_and(|b| b < 1) {
        return Err(ErrorObject::new(
            ErrorKind::InvalidParams,
            "`before` is a message id, which is at least 1",
        ));
    }
    Ok(())
}

impl CheckLimits for GroupParams {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("group", &self.group, MAX_ADDRESS_BYTES)
    }
}

impl CheckLimits for GroupCreate {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("name", &self.name, MAX_GROUP_NAME_BYTES)?;
        at_most("member_name", &self.member_name, MAX_GROUP_NAME_BYTES)
    }
}

impl CheckLimits for GroupInvite {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("group", &self.group, MAX_ADDRESS_BYTES)?;
        at_most("address", &self.address, MAX_ADDRESS_BYTES)
    }
}

impl CheckLimits for GroupAccept {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("group", &self.group, MAX_ADDRESS_BYTES)?;
        at_most("name", &self.name, MAX_GROUP_NAME_BYTES)
    }
}

impl CheckLimits for GroupMemberParams {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("group", &self.group, MAX_ADDRESS_BYTES)?;
        at_most("address", &self.address, MAX_ADDRESS_BYTES)
    }
}

impl CheckLimits for GroupSetRole {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("group", &self.group, MAX_ADDRESS_BYTES)?;
        at_most("address", &self.address, MAX_ADDRESS_BYTES)
    }
}

impl CheckLimits for GroupRename {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("group", &self.group, MAX_ADDRESS_BYTES)?;
        at_most("name", &self.name, MAX_GROUP_NAME_BYTES)
    }
}

impl CheckLimits for GroupSetPolicy {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("group", &self.group, MAX_ADDRESS_BYTES)
    }
}

impl CheckLimits for GroupDelete {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("group", &self.group, MAX_ADDRESS_BYTES)?;
        MessageIdParams { id: self.id }.check_limits()
    }
}

impl CheckLimits for GroupSetHistory {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("group", &self.group, MAX_ADDRESS_BYTES)
    }
}

impl CheckLimits for GroupSetTimer {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("group", &self.group, MAX_ADDRESS_BYTES)?;
        timer_in_range(self.timer)
    }
}

impl CheckLimits for GroupSend {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("group", &self.group, MAX_ADDRESS_BYTES)?;
        at_most("body", &self.body, MAX_BODY_BYTES)?;
        if let Some(reply_to) = &self.reply_to {
            at_most("reply_to", reply_to, MAX_ADDRESS_BYTES)?;
        }
        match &self.client_token {
            Some(t) => at_most("client_token", t, MAX_CLIENT_TOKEN_BYTES),
            None => Ok(()),
        }
    }
}

impl CheckLimits for GroupHistory {
    fn check_limits(&self) -> Result<(), ErrorObject> {
        at_most("group", &self.group, MAX_ADDRESS_BYTES)?;
        before_is_an_id(self.before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(result: Result<(), ErrorObject>) -> Option<ErrorKind> {
        result.err().map(|e| e.data.kind)
    }

    #[test]
    fn each_limit_admits_its_limit_and_refuses_one_byte_more() {
        let at = |n: usize| "x".repeat(n);
        let respond = |nickname: String| ContactRespond {
            address: "a.onion".into(),
            response: crate::Response::Block,
            nickname: Some(nickname),
        };
        assert_eq!(kind(respond(at(MAX_NICKNAME_BYTES)).check_limits()), None);
        assert_eq!(
            kind(respond(at(MAX_NICKNAME_BYTES + 1)).check_limits()),
            Some(ErrorKind::TooLarge)
        );
        let rename = |nickname: String| ContactRename {
            address: "a.onion".into(),
            nickname,
        };
        assert_eq!(kind(rename(at(MAX_NICKNAME_BYTES)).check_limits()), None);
        assert_eq!(
            kind(rename(at(MAX_NICKNAME_BYTES + 1)).check_limits()),
            Some(ErrorKind::TooLarge)
        );
        let add = |offer: String, greeting: String| ContactAdd {
            address: "a.onion".into(),
            nickname: String::new(),
            offer_nickname: offer,
            greeting,
            kind: crate::PeerKind::Human,
        };
        assert_eq!(
            kind(add(at(MAX_OFFERED_NICKNAME_BYTES), at(MAX_GREETING_BYTES)).check_limits()),
            None
        );
        assert_eq!(
            kind(add(at(MAX_OFFERED_NICKNAME_BYTES + 1), String::new()).check_limits()),
            Some(ErrorKind::TooLarge)
        );
        assert_eq!(
            kind(add(String::new(), at(MAX_GREETING_BYTES + 1)).check_limits()),
            Some(ErrorKind::TooLarge)
        );
        let send = |body: String, token: Option<String>| MessageSend {
            to: "a.onion".into(),
            body,
            reply_to: None,
            client_token: token,
        };
        assert_eq!(
            kind(send(at(MAX_BODY_BYTES), Some(at(MAX_CLIENT_TOKEN_BYTES))).check_limits()),
            None
        );
        assert_eq!(
            kind(send(at(MAX_BODY_BYTES + 1), None).check_limits()),
            Some(ErrorKind::TooLarge)
        );
        assert_eq!(
            kind(send(String::new(), Some(at(MAX_CLIENT_TOKEN_BYTES + 1))).check_limits()),
            Some(ErrorKind::TooLarge)
        );
        let unlock = ProfileUnlock {
            passphrase: at(MAX_PASSPHRASE_BYTES + 1).as_str().into(),
        };
        assert_eq!(kind(unlock.check_limits()), Some(ErrorKind::TooLarge));
        let hello = SessionHello {
            client: at(MAX_CLIENT_NAME_BYTES + 1),
        };
        assert_eq!(kind(hello.check_limits()), Some(ErrorKind::TooLarge));
        let subscribe = EventsSubscribe {
            since_seq: None,
            kinds: Some(vec![String::new(); MAX_EVENT_KINDS + 1]),
        };
        assert_eq!(kind(subscribe.check_limits()), Some(ErrorKind::TooLarge));
    }

    #[test]
    fn message_ids_below_one_are_invalid_params() {
        for id in [-1, 0, i64::MIN] {
            assert_eq!(
                kind(MessageIdParams { id }.check_limits()),
                Some(ErrorKind::InvalidParams)
            );
        }
        assert_eq!(kind(MessageIdParams { id: 1 }.check_limits()), None);
    }
}
