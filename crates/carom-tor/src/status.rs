//! What a transport reports about itself, as a value behind a `tokio::sync::watch`.

/// A transport's current state: bootstrap progress, onion-service state, last problem.
///
/// Published through [`crate::Transport::status`]; every change replaces the whole value.
#[derive(Clone, Debug, PartialEq)]
pub struct TransportStatus {
    /// How far Tor is from being usable.
    pub bootstrap: BootstrapProgress,
    /// Whether our own onion service can be reached.
    pub service: ServiceState,
    /// The most recent problem, in words (no onion addresses). Cleared once bootstrap is
    /// complete and the service is published again.
    pub last_error: Option<String>,
    /// How many bridges Tor is entered through; 0: the network's own relays.
    pub bridges: usize,
}

impl TransportStatus {
    /// The state before anything has started.
    pub fn starting() -> TransportStatus {
        TransportStatus {
            bootstrap: BootstrapProgress {
                percent: 0,
                phase: "starting".into(),
                ready: false,
                stalled: false,
            },
            service: ServiceState::NotStarted,
            last_error: None,
            bridges: 0,
        }
    }
}

/// Bootstrap progress, for a progress bar.
///
/// With arti: `percent` is `BootstrapStatus::as_frac()` × 100 (directory download weighs 85 %,
/// connecting to the network 15 %), `phase` is arti's own description of the current step
/// (or of what it is stuck on), and `ready` is `ready_for_traffic()` once the first bootstrap
/// has returned. Progress is not monotonic: a client can lose its directory and fall back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapProgress {
    /// 0 to 100.
    pub percent: u8,
    /// What is happening, in words.
    pub phase: String,
    /// Whether dials can be made now.
    pub ready: bool,
    /// The bootstrap has made no progress for a while (arti backend:
    /// [`ArtiConfig::bootstrap_stall_after`](crate::ArtiConfig::bootstrap_stall_after)).
    /// `last_error` then says what arti is stuck on and points to bridges.
    pub stalled: bool,
}

/// The state of our own onion service.
///
/// With arti, from `tor_hsservice::status::State`:
///
/// | arti                                 | here                                        |
/// | ------------------------------------ | ------------------------------------------- |
/// | (not launched yet)                   | `NotStarted`                                |
/// | `Bootstrapping`                      | `Launching`                                 |
/// | `Running`                            | `Published`                                 |
/// | `DegradedReachable`                  | `Degraded { likely_reachable: true }`       |
/// | `DegradedUnreachable`, `Recovering`  | `Degraded { likely_reachable: false }`      |
/// | `Broken`                             | `Broken(reason)`                            |
/// | `Shutdown`, or after our shutdown    | `Stopped`                                   |
///
/// `Reachable` is evidence, not arti's opinion: a client completed a rendezvous with us while
/// the service was `Launching`, `Published` or `Degraded`. It stays while arti reports
/// `Running` or `DegradedReachable`; any other arti state replaces it. (On a small private
/// network arti's publisher reports `DegradedUnreachable` even when clients get through: it
/// finds a single hash ring where the public network has two.)
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceState {
    /// Not launched yet.
    NotStarted,
    /// Establishing introduction points and publishing the descriptor.
    Launching,
    /// The descriptor is published with enough introduction points.
    Published,
    /// Published, and a peer has reached us since: proven reachable.
    Reachable,
    /// Running with problems (too few introduction points, a failed upload).
    Degraded {
        /// Whether arti still expects clients to get through.
        likely_reachable: bool,
    },
    /// Not working, and not recovering by itself.
    Broken(String),
    /// Shut down (or, for the loopback backend, taken offline).
    Stopped,
}

impl ServiceState {
    /// Whether peers can be expected to reach us.
    pub fn is_reachable(&self) -> bool {
        matches!(
            self,
            ServiceState::Published
                | ServiceState::Reachable
                | ServiceState::Degraded {
                    likely_reachable: true
                }
        )
    }
}
