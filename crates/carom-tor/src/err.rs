//! Transport errors, classified by what the engine should do about them.

use std::path::PathBuf;
use std::sync::Arc;

use arti_client::ErrorKind as ArtiKind;
use carom_proto::OnionAddress;

/// What kind of failure a [`TransportError`] is: the one thing the engine branches on.
///
/// The set is small on purpose. Every backend (embedded arti today, a system C tor later)
/// maps its own failures onto these, so the engine's retry and presence logic never sees a
/// Tor implementation's error types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// Tor has not finished bootstrapping. Wait until [`crate::BootstrapProgress::ready`],
    /// then retry.
    NotBootstrapped,
    /// The peer's onion service could not be found (no descriptor, or none of its
    /// introduction points answered): the peer is probably offline. Retry later, with backoff.
    PeerNotFound,
    /// The dial took too long. The peer may be overloaded, the network slow, or a time-period
    /// rotation was under way; retry.
    Timeout,
    /// The peer (or its onion service) answered and refused the stream. Retrying the same
    /// way will not help.
    Refused,
    /// Networking is switched off locally (by the user or the configuration).
    NetworkDisabled,
    /// The transport has been shut down.
    Shutdown,
    /// Anything else; see [`TransportError::retryable`].
    Other,
}

impl TransportErrorKind {
    /// A stable lower-case name, for the local API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportErrorKind::NotBootstrapped => "not_bootstrapped",
            TransportErrorKind::PeerNotFound => "peer_not_found",
            TransportErrorKind::Timeout => "timeout",
            TransportErrorKind::Refused => "refused",
            TransportErrorKind::NetworkDisabled => "network_disabled",
            TransportErrorKind::Shutdown => "shutdown",
            TransportErrorKind::Other => "other",
        }
    }
}

impl std::fmt::Display for TransportErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transport failure.
///
/// `Display` is for people: it keeps the Tor implementation's own explanation, but never a
/// full onion address (peers appear as [`OnionAddress::redacted`]). Programs use
/// [`kind`](Self::kind) and [`retryable`](Self::retryable).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Tor is not ready yet.
    #[error("Tor is not bootstrapped yet: {detail}")]
    NotBootstrapped {
        /// Bootstrap progress or arti's explanation.
        detail: String,
    },
    /// The peer's onion service was not found.
    #[error("peer {peer} was not found, it is probably offline: {detail}")]
    PeerNotFound {
        /// The peer, redacted (the first characters of its address).
        peer: String,
        /// The Tor implementation's explanation.
        detail: String,
    },
    /// The dial took too long.
    #[error("dial to {peer} timed out: {detail}")]
    Timeout {
        /// The peer, redacted (the first characters of its address).
        peer: String,
        /// Which bound was hit.
        detail: String,
    },
    /// The peer refused the stream.
    #[error("peer {peer} refused the connection: {detail}")]
    Refused {
        /// The peer, redacted (the first characters of its address).
        peer: String,
        /// The Tor implementation's explanation.
        detail: String,
    },
    /// Networking is disabled locally.
    #[error("networking is disabled")]
    NetworkDisabled,
    /// The transport was shut down.
    #[error("the transport has been shut down")]
    Shutdown,
    /// The configuration is not usable.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// The bridge settings are not usable.
    #[error(transparent)]
    Bridges(#[from] crate::BridgeError),
    /// A local file-system operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Another failure reported by Tor.
    #[error("Tor failed while {action}: {detail}")]
    Tor {
        /// What we were doing.
        action: &'static str,
        /// The Tor implementation's explanation.
        detail: String,
        /// Whether trying again may work.
        retryable: bool,
    },
}

impl TransportError {
    /// What kind of failure this is.
    pub fn kind(&self) -> TransportErrorKind {
        match self {
            TransportError::NotBootstrapped { .. } => TransportErrorKind::NotBootstrapped,
            TransportError::PeerNotFound { .. } => TransportErrorKind::PeerNotFound,
            TransportError::Timeout { .. } => TransportErrorKind::Timeout,
            TransportError::Refused { .. } => TransportErrorKind::Refused,
            TransportError::NetworkDisabled => TransportErrorKind::NetworkDisabled,
            TransportError::Shutdown => TransportErrorKind::Shutdown,
            TransportError::Config(_)
            | TransportError::Bridges(_)
            | TransportError::Io { .. }
            | TransportError::Tor { .. } => TransportErrorKind::Other,
        }
    }

    /// Whether the same operation may succeed if tried again later (after the bootstrap
    /// finishes, or after a backoff). A hint: the engine decides the schedule.
    pub fn retryable(&self) -> bool {
        match self {
            TransportError::NotBootstrapped { .. }
            | TransportError::PeerNotFound { .. }
            | TransportError::Timeout { .. } => true,
            TransportError::Refused { .. }
            | TransportError::NetworkDisabled
            | TransportError::Shutdown
            | TransportError::Config(_)
            | TransportError::Bridges(_)
            | TransportError::Io { .. } => false,
            TransportError::Tor { retryable, .. } => *retryable,
        }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, e: std::io::Error) -> Self {
        TransportError::Io {
            action,
            path: path.into(),
            source: Arc::new(e),
        }
    }

    /// Classify an arti error from dialling `peer`.
    pub(crate) fn from_dial(e: &arti_client::Error, peer: &OnionAddress) -> Self {
        use arti_client::HasKind as _;
        let detail = scrub(&error_chain(e), peer);
        let redacted = peer.redacted().to_string();
        match classify(e.kind()) {
            Class::Kind(TransportErrorKind::NotBootstrapped) => {
                TransportError::NotBootstrapped { detail }
            }
            Class::Kind(TransportErrorKind::PeerNotFound) => TransportError::PeerNotFound {
                peer: redacted,
                detail,
            },
            Class::Kind(TransportErrorKind::Timeout) => TransportError::Timeout {
                peer: redacted.clone(),
                detail,
            },
            Class::Kind(TransportErrorKind::Refused) => TransportError::Refused {
                peer: redacted,
                detail,
            },
            Class::Kind(TransportErrorKind::NetworkDisabled) => TransportError::NetworkDisabled,
            Class::Kind(TransportErrorKind::Shutdown) => TransportError::Shutdown,
            Class::Kind(TransportErrorKind::Other) => TransportError::Tor {
                action: "dialling",
                detail,
                retryable: true,
            },
            Class::Permanent => TransportError::Tor {
                action: "dialling",
                detail,
                retryable: false,
            },
        }
    }

    /// An arti failure outside dialling (start-up, launching the service).
    pub(crate) fn from_arti(action: &'static str, e: &arti_client::Error) -> Self {
        use arti_client::HasKind as _;
        let detail = error_chain(e);
        match classify(e.kind()) {
            Class::Kind(TransportErrorKind::Shutdown) => TransportError::Shutdown,
            Class::Permanent => TransportError::Tor {
                action,
                detail,
                retryable: false,
            },
            Class::Kind(_) => TransportError::Tor {
                action,
                detail,
                retryable: true,
            },
        }
    }
}

/// Where an arti error kind lands.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    /// One of our kinds (`Other` meaning: transient, worth retrying).
    Kind(TransportErrorKind),
    /// `Other`, and retrying will not help: a local bug, a bad configuration or address.
    Permanent,
}

/// The mapping from arti's error kinds (tor-error's `ErrorKind`) to ours. Documented in the
/// crate root; unit-tested below.
fn classify(kind: ArtiKind) -> Class {
    use TransportErrorKind as K;
    match kind {
        ArtiKind::BootstrapRequired
        | ArtiKind::DirectoryExpired
        | ArtiKind::TorDirectoryUnusable => Class::Kind(K::NotBootstrapped),
        ArtiKind::OnionServiceNotFound
        | ArtiKind::OnionServiceNotRunning
        | ArtiKind::OnionServiceConnectionFailed => Class::Kind(K::PeerNotFound),
        ArtiKind::TorNetworkTimeout | ArtiKind::RemoteNetworkTimeout | ArtiKind::ExitTimeout => {
            Class::Kind(K::Timeout)
        }
        ArtiKind::RemoteStreamClosed
        | ArtiKind::RemoteStreamReset
        | ArtiKind::RemoteStreamError
        | ArtiKind::RemoteConnectionRefused
        | ArtiKind::OnionServiceMissingClientAuth
        | ArtiKind::OnionServiceWrongClientAuth => Class::Kind(K::Refused),
        ArtiKind::ForbiddenStreamTarget => Class::Kind(K::NetworkDisabled),
        ArtiKind::ArtiShuttingDown | ArtiKind::ReactorShuttingDown => Class::Kind(K::Shutdown),
        ArtiKind::InvalidConfig
        | ArtiKind::InvalidConfigTransition
        | ArtiKind::Internal
        | ArtiKind::FeatureDisabled
        | ArtiKind::NotImplemented
        | ArtiKind::InvalidStreamTarget
        | ArtiKind::OnionServiceAddressInvalid
        | ArtiKind::FsPermissions
        | ArtiKind::KeystoreAccessFailed
        | ArtiKind::KeystoreCorrupted
        | ArtiKind::PersistentStateCorrupted
        | ArtiKind::NoHomeDirectory
        | ArtiKind::SoftwareDeprecated => Class::Permanent,
        // Circuit collapse, relay trouble, protocol violations by a peer, resource
        // exhaustion, and kinds added by future arti releases: transient until shown otherwise.
        // `BadApiUsage` too: arti 0.47 reports a stream begun on a circuit the service just
        // closed (e.g. over its stream limit) as "bad API usage", and a new dial works.
        _ => Class::Kind(K::Other),
    }
}

/// An error and its causes, joined: arti's top-level message is often only "failed to obtain
/// a circuit", with the useful part two sources down.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// Replace every full form of `peer`'s address in `text` by its redacted form. arti redacts
/// addresses itself unless safe logging is switched off; this holds even then.
pub(crate) fn scrub(text: &str, peer: &OnionAddress) -> String {
    let full = peer.without_suffix();
    let short = peer.redacted().to_string();
    let mut out = text.replace(&full, &short);
    let upper = full.to_ascii_uppercase();
    if out.contains(&upper) {
        out = out.replace(&upper, &short);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use carom_proto::IdentityKey;

    #[test]
    fn arti_kinds_map_to_what_the_engine_should_do() {
        use TransportErrorKind as K;
        let cases = [
            (ArtiKind::BootstrapRequired, Class::Kind(K::NotBootstrapped)),
            (ArtiKind::OnionServiceNotFound, Class::Kind(K::PeerNotFound)),
            (
                ArtiKind::OnionServiceNotRunning,
                Class::Kind(K::PeerNotFound),
            ),
            (
                ArtiKind::OnionServiceConnectionFailed,
                Class::Kind(K::PeerNotFound),
            ),
            (ArtiKind::TorNetworkTimeout, Class::Kind(K::Timeout)),
            (ArtiKind::RemoteNetworkTimeout, Class::Kind(K::Timeout)),
            // What a service answering END (e.g. to a port it does not serve) produces.
            (ArtiKind::RemoteStreamClosed, Class::Kind(K::Refused)),
            (ArtiKind::RemoteConnectionRefused, Class::Kind(K::Refused)),
            (
                ArtiKind::OnionServiceWrongClientAuth,
                Class::Kind(K::Refused),
            ),
            (
                ArtiKind::ForbiddenStreamTarget,
                Class::Kind(K::NetworkDisabled),
            ),
            (ArtiKind::ArtiShuttingDown, Class::Kind(K::Shutdown)),
            (ArtiKind::CircuitCollapse, Class::Kind(K::Other)),
            (ArtiKind::BadApiUsage, Class::Kind(K::Other)),
            (ArtiKind::Internal, Class::Permanent),
            (ArtiKind::OnionServiceAddressInvalid, Class::Permanent),
        ];
        for (arti, ours) in cases {
            assert_eq!(classify(arti), ours, "{arti:?}");
        }
    }

    #[test]
    fn display_never_shows_a_full_address() {
        let peer = IdentityKey::from_seed(&[3u8; 32]).address();
        let full = peer.without_suffix();
        let detail = scrub(
            &format!(
                "could not reach {full}.onion (also {})",
                full.to_uppercase()
            ),
            &peer,
        );
        let errors = [
            TransportError::PeerNotFound {
                peer: peer.redacted().to_string(),
                detail: detail.clone(),
            },
            TransportError::Timeout {
                peer: peer.redacted().to_string(),
                detail: detail.clone(),
            },
            TransportError::Refused {
                peer: peer.redacted().to_string(),
                detail,
            },
        ];
        for e in errors {
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains(&full), "{shown}");
            assert!(!shown.contains(&full.to_uppercase()), "{shown}");
            assert!(shown.contains(&full[..6]), "{shown}");
        }
    }

    #[test]
    fn kinds_and_retry_hints() {
        let peer = IdentityKey::from_seed(&[4u8; 32])
            .address()
            .redacted()
            .to_string();
        let not_found = TransportError::PeerNotFound {
            peer: peer.clone(),
            detail: String::new(),
        };
        assert_eq!(not_found.kind(), TransportErrorKind::PeerNotFound);
        assert!(not_found.retryable());
        let refused = TransportError::Refused {
            peer,
            detail: String::new(),
        };
        assert_eq!(refused.kind().as_str(), "refused");
        assert!(!refused.retryable());
        assert!(!TransportError::Shutdown.retryable());
        assert!(!TransportError::NetworkDisabled.retryable());
        assert_eq!(
            TransportError::Config("x".into()).kind(),
            TransportErrorKind::Other
        );
    }
}
