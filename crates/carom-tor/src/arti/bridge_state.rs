//! Bridges arti remembers under an old line.
//!
//! arti 0.47 samples guards from the configured bridges and keeps the sample in its state
//! directory (`state/guards.json`), each guard under the channel it was first configured with
//! (transport, address and settings such as obfs4's `cert=`). It matches the configuration to
//! that sample by identity *and* channel, and adds no second guard with an identity already in
//! the sample. So once a bridge has been sampled, a corrected line for it — the right `cert=`
//! after a typo, a new port — is never used: the old guard counts as unlisted, the new line as
//! already sampled, and the bootstrap stays stuck for as long as arti keeps unlisted guards
//! (weeks), across restarts. Before arti starts, Carom removes exactly those guards: a guard
//! whose identity is configured under a channel it does not have. arti then samples the
//! bridge afresh under its current line. Every other guard, and every other part of the state,
//! is left alone.

use std::path::Path;

use crate::TransportError;
use crate::bridges::{channel_text, line_parts};

/// What [`reconcile`] did and found.
pub(super) struct Reconciled {
    /// Guards removed because arti remembered them under another channel.
    pub(super) forgotten: usize,
    /// Every bridge arti may hold in its guard sample from now on, as `(identity, channel)`
    /// pairs (see [`line_parts`]): those it still remembers, and `lines`. What a line set at
    /// run time must agree with to be used at once.
    pub(super) known: Vec<(String, String)>,
}

/// Before arti starts: remove the guards of `lines`' bridges that arti remembers under
/// another channel, and say which bridges arti may hold from now on. Reads arti's guard
/// state once, and writes it only if a guard was removed.
pub(super) fn reconcile(state_dir: &Path, lines: &[String]) -> Result<Reconciled, TransportError> {
    let configured: Vec<(String, String)> = lines.iter().filter_map(|l| line_parts(l)).collect();
    let path = state_dir.join("state").join("guards.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(TransportError::io("read", &path, e)),
    };
    // Unreadable JSON is not ours to repair: arti reports its own state's problems.
    let Some(mut state) = text.and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    else {
        return Ok(Reconciled {
            forgotten: 0,
            known: configured,
        });
    };
    let forgotten = forget_in(&mut state, &configured);
    if forgotten > 0 {
        let temp = path.with_extension("json.carom-tmp");
        let json = serde_json::to_string_pretty(&state)
            .map_err(|e| TransportError::Config(format!("arti's guard state: {e}")))?;
        std::fs::write(&temp, json).map_err(|e| TransportError::io("write", &temp, e))?;
        std::fs::rename(&temp, &path).map_err(|e| TransportError::io("replace", &path, e))?;
    }
    let mut known = remembered_in(&state);
    known.extend(configured);
    Ok(Reconciled { forgotten, known })
}

/// Every bridge guard in arti's state, as `(identity, channel)` pairs.
fn remembered_in(state: &serde_json::Value) -> Vec<(String, String)> {
    let mut known = Vec::new();
    for guard in state
        .pointer("/bridges/guards")
        .and_then(|g| g.as_array())
        .into_iter()
        .flatten()
    {
        if let Some(rsa) = guard.pointer("/id/rsa").and_then(|r| r.as_str()) {
            for channel in channels_of(guard) {
                known.push((rsa.to_ascii_lowercase(), channel));
            }
        }
    }
    known
}

/// The pure part: remove from `state["bridges"]` each guard whose identity is configured
/// under a channel the guard does not have; returns how many.
fn forget_in(state: &mut serde_json::Value, configured: &[(String, String)]) -> usize {
    let Some(bridges) = state.get_mut("bridges") else {
        return 0;
    };
    let mut stale: Vec<String> = Vec::new();
    if let Some(guards) = bridges.get_mut("guards").and_then(|g| g.as_array_mut()) {
        guards.retain(|guard| {
            let Some(rsa) = guard
                .pointer("/id/rsa")
                .and_then(|r| r.as_str())
                .map(str::to_ascii_lowercase)
            else {
                return true;
            };
            let wanted: Vec<&String> = configured
                .iter()
                .filter(|(id, _)| *id == rsa)
                .map(|(_, channel)| channel)
                .collect();
            if wanted.is_empty() {
                return true;
            }
            let has = channels_of(guard);
            let keep = wanted.iter().any(|w| has.contains(w));
            if !keep {
                stale.push(rsa);
            }
            keep
        });
    }
    if let Some(confirmed) = bridges.get_mut("confirmed").and_then(|c| c.as_array_mut()) {
        confirmed.retain(|id| {
            let rsa = id
                .get("rsa")
                .and_then(|r| r.as_str())
                .map(str::to_ascii_lowercase);
            !rsa.is_some_and(|r| stale.contains(&r))
        });
    }
    stale.len()
}

/// The channels a remembered guard was configured with, as [`channel_text`] writes them.
fn channels_of(guard: &serde_json::Value) -> Vec<String> {
    let mut channels = Vec::new();
    for target in guard
        .get("pt_targets")
        .and_then(|t| t.as_array())
        .into_iter()
        .flatten()
    {
        let (Some(transport), Some(addr)) = (
            target.get("transport").and_then(|t| t.as_str()),
            target.get("addr").and_then(|a| a.as_str()),
        ) else {
            continue;
        };
        let settings: Vec<String> = target
            .get("settings")
            .and_then(|s| s.as_array())
            .into_iter()
            .flatten()
            .filter_map(|pair| {
                let pair = pair.as_array()?;
                Some(format!(
                    "{}={}",
                    pair.first()?.as_str()?,
                    pair.get(1)?.as_str()?
                ))
            })
            .collect();
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        channels.push(channel_text(Some(transport), addr, &settings));
    }
    for addr in guard
        .get("orports")
        .and_then(|o| o.as_array())
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
    {
        channels.push(channel_text(None, addr, &[]));
    }
    channels
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "07af83ef741283a05e8afbeff097d68dfec8a4ed";

    /// `guards.json` as arti 0.47 writes it, with one obfs4 bridge guard.
    fn state(cert: &str) -> serde_json::Value {
        serde_json::json!({
            "default": { "guards": [], "confirmed": [] },
            "restricted": { "guards": [], "confirmed": [] },
            "bridges": {
                "guards": [{
                    "id": { "ed25519": null, "rsa": ID },
                    "orports": ["127.0.0.1:23695"],
                    "pt_targets": [{
                        "transport": "obfs4",
                        "addr": "127.0.0.1:23695",
                        "settings": [["cert", cert], ["iat-mode", "0"]]
                    }],
                    "added_at": "2026-11-28T03:20:50Z",
                    "disabled": null, "confirmed_at": null, "unlisted_since": null
                }],
                "confirmed": [{ "ed25519": null, "rsa": ID }]
            }
        })
    }

    fn line(cert: &str) -> String {
        format!(
            "obfs4 127.0.0.1:23695 {} cert={cert} iat-mode=0",
            ID.to_uppercase()
        )
    }

    #[test]
    fn a_bridge_remembered_under_another_line_is_forgotten_and_nothing_else() {
        let configured = |l: &str| vec![line_parts(l).expect("a valid line")];
        // Remembered under the configured line: kept.
        let mut same = state("right");
        assert_eq!(forget_in(&mut same, &configured(&line("right"))), 0);
        assert_eq!(same, state("right"));
        // Another certificate now: the guard and its confirmation go.
        let mut changed = state("wrong");
        assert_eq!(forget_in(&mut changed, &configured(&line("right"))), 1);
        assert_eq!(changed["bridges"]["guards"], serde_json::json!([]));
        assert_eq!(changed["bridges"]["confirmed"], serde_json::json!([]));
        assert_eq!(changed["default"], state("wrong")["default"]);
        // A bridge that is no longer configured is arti's business.
        let other =
            "obfs4 192.0.2.1:443 1111111111111111111111111111111111111111 cert=x iat-mode=0";
        let mut unrelated = state("wrong");
        assert_eq!(forget_in(&mut unrelated, &configured(other)), 0);
        // The same bridge as a plain line: its ORPort is one of the guard's channels.
        let plain = format!("127.0.0.1:23695 {ID}");
        assert_eq!(forget_in(&mut state("wrong"), &configured(&plain)), 0);
    }

    #[test]
    fn the_file_is_rewritten_only_when_something_is_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            reconcile(dir.path(), &[line("x")])
                .expect("no file")
                .forgotten,
            0
        );
        std::fs::create_dir_all(dir.path().join("state")).expect("mkdir");
        let path = dir.path().join("state/guards.json");
        std::fs::write(&path, state("wrong").to_string()).expect("write");
        assert_eq!(
            reconcile(dir.path(), &[line("wrong")])
                .expect("kept")
                .forgotten,
            0
        );
        assert_eq!(
            reconcile(dir.path(), &[line("right")])
                .expect("forgot")
                .forgotten,
            1
        );
        let after: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        assert_eq!(after["bridges"]["guards"], serde_json::json!([]));
    }
}
