//! torrc text for each kind of node.
//!
//! Why each unusual option is here (see also docs/testing.md):
//! - `TestingTorNetwork 1` relaxes the rules that keep a real network safe but make a loopback
//!   one impossible (private addresses, shared subnets, fast voting).
//! - `AssumeReachable 1`: relays skip reachability self-tests, which cannot pass on loopback.
//! - `TestingDirAuthVote{Exit,Guard,HSDir} *`: every relay gets the flags onion services and
//!   path selection need at once, instead of after hours of uptime.
//! - `ConsensusParams hsdir_interval=8`: in testing mode C tor uses an onion-service time period
//!   of 24 voting intervals (8 minutes at 20 s) and ignores `hsdir_interval`; arti reads
//!   `hsdir_interval`. Without it they derive different blinded keys and never find each
//!   other's descriptors. `guard-min-filtered-sample-size=5` stops arti asking for 20 guards
//!   in a 7-node network. `cbtmintimeout`: see [`MIN_CIRCUIT_TIMEOUT_MS`];
//!   `cbtinitialtimeout`: see [`INITIAL_CIRCUIT_TIMEOUT_MS`].
//! - Exit policies accept only 127.0.0.0/8: nothing may leave loopback.
//! - `__OwningControllerProcess`: tor polls that PID and exits when it dies, so a test runner
//!   killed with SIGKILL still leaves no relays behind.

use std::fmt::Write as _;
use std::path::Path;

/// Seconds between consensus votes. C tor's testing-mode time period is 24 of these.
pub(crate) const VOTING_INTERVAL_SECS: u32 = 20;
/// Minutes in an onion-service time period: must equal 24 voting intervals.
pub(crate) const HSDIR_INTERVAL_MINUTES: u32 = 24 * VOTING_INTERVAL_SECS / 60;

/// Floor of the clients' learned circuit-build timeout, in milliseconds (consensus parameter
/// `cbtmintimeout`; Tor's default floor is 10 ms). On loopback circuits build in tens of
/// milliseconds, so arti learned timeouts of about 75 ms and derived its descriptor-fetch
/// deadlines from them: on a loaded machine every descriptor fetch of a restarted client then
/// timed out, and it could not reach a service for minutes. On the real network the learned
/// timeout is around a second or more, so this floor keeps the test network honest rather
/// than making it lenient.
pub(crate) const MIN_CIRCUIT_TIMEOUT_MS: u32 = 2_000;

/// The circuit-build timeout a client uses before it has learned one (consensus parameter
/// `cbtinitialtimeout`; Tor's default is 60 s). arti learns only after 100 circuits, so every
/// daemon in a test — seconds old — would wait a full minute on each circuit through a relay
/// that hangs, where a daemon that has run for a while on the live network has learned about a
/// second. 5 s is still tens of times a loopback circuit under load, and above the floor.
pub(crate) const INITIAL_CIRCUIT_TIMEOUT_MS: u32 = 5_000;

/// What a node does in the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A v3 directory authority (also a relay).
    Authority,
    /// A guard/middle/exit relay (also an HSDir).
    Relay,
    /// A C tor client with a SOCKS port, optionally hosting onion services.
    Client,
    /// An unlisted bridge relay with an obfs4 server transport.
    Bridge,
}

/// An authority, as every node's `DirAuthority` line names it.
#[derive(Clone, Debug)]
pub(crate) struct AuthorityLine {
    pub(crate) nickname: String,
    pub(crate) or_port: u16,
    pub(crate) dir_port: u16,
    pub(crate) v3ident: String,
    pub(crate) rsa_fingerprint: String,
}

/// Options every node shares.
pub(crate) fn common(
    nickname: &str,
    data_dir: &Path,
    authorities: &[AuthorityLine],
    owner_pid: Option<u32>,
) -> String {
    let mut t = String::new();
    let d = data_dir.display();
    let _ = writeln!(t, "TestingTorNetwork 1");
    let _ = writeln!(t, "Nickname {nickname}");
    let _ = writeln!(t, "DataDirectory {d}");
    let _ = writeln!(t, "PidFile {d}/pid");
    let _ = writeln!(t, "Log notice file {d}/notice.log");
    let _ = writeln!(t, "RunAsDaemon 0");
    let _ = writeln!(t, "SafeLogging 0");
    let _ = writeln!(t, "ShutdownWaitLength 0");
    let _ = writeln!(t, "ConnLimit 60");
    let _ = writeln!(t, "AssumeReachable 1");
    let _ = writeln!(t, "PathsNeededToBuildCircuits 0.67");
    let _ = writeln!(t, "TestingDirAuthVoteExit *");
    let _ = writeln!(t, "TestingDirAuthVoteHSDir *");
    let _ = writeln!(t, "TestingDirAuthVoteGuard *");
    let _ = writeln!(t, "TestingMinExitFlagThreshold 0");
    let _ = writeln!(t, "V3AuthNIntervalsValid 2");
    // Tor would otherwise look for a system-wide geoip file and warn.
    let _ = writeln!(t, "GeoIPFile /dev/null");
    let _ = writeln!(t, "GeoIPv6File /dev/null");
    if let Some(pid) = owner_pid {
        let _ = writeln!(t, "__OwningControllerProcess {pid}");
    }
    for a in authorities {
        let _ = writeln!(
            t,
            "DirAuthority {} orport={} no-v2 v3ident={} 127.0.0.1:{} {}",
            a.nickname, a.or_port, a.v3ident, a.dir_port, a.rsa_fingerprint
        );
    }
    t
}

/// Options of a relay (authorities are relays too).
pub(crate) fn relay(or_port: u16, dir_port: u16) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "SocksPort 0");
    let _ = writeln!(t, "Address 127.0.0.1");
    let _ = writeln!(t, "ORPort 127.0.0.1:{or_port}");
    let _ = writeln!(t, "DirPort 127.0.0.1:{dir_port}");
    let _ = writeln!(t, "ExitRelay 1");
    let _ = writeln!(t, "ExitPolicyRejectPrivate 0");
    let _ = writeln!(t, "ExitPolicy accept 127.0.0.0/8:*");
    let _ = writeln!(t, "ExitPolicy reject *:*");
    t
}

/// Options of an unlisted bridge: a plain ORPort, and obfs4proxy as its managed server
/// transport on `obfs4_port` (tor hands it clients' connections over the extended ORPort).
/// `PublishServerDescriptor 0` keeps it out of the consensus: clients know it only from its
/// bridge line, and fetch its descriptor from the bridge itself.
pub(crate) fn obfs4_bridge(or_port: u16, obfs4_port: u16, obfs4proxy: &Path) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "SocksPort 0");
    let _ = writeln!(t, "Address 127.0.0.1");
    let _ = writeln!(t, "ORPort 127.0.0.1:{or_port}");
    let _ = writeln!(t, "BridgeRelay 1");
    let _ = writeln!(t, "PublishServerDescriptor 0");
    let _ = writeln!(t, "ExitRelay 0");
    let _ = writeln!(t, "ExitPolicy reject *:*");
    let _ = writeln!(t, "ExtORPort auto");
    let _ = writeln!(
        t,
        "ServerTransportPlugin obfs4 exec {}",
        obfs4proxy.display()
    );
    let _ = writeln!(t, "ServerTransportListenAddr obfs4 127.0.0.1:{obfs4_port}");
    t
}

/// Extra options of a directory authority.
pub(crate) fn authority() -> String {
    let mut t = String::new();
    let v = VOTING_INTERVAL_SECS;
    let _ = writeln!(t, "AuthoritativeDirectory 1");
    let _ = writeln!(t, "V3AuthoritativeDirectory 1");
    let _ = writeln!(t, "ContactInfo authority@carom.test");
    let _ = writeln!(t, "TestingV3AuthInitialVotingInterval {v}");
    let _ = writeln!(t, "TestingV3AuthInitialVoteDelay 4");
    let _ = writeln!(t, "TestingV3AuthInitialDistDelay 4");
    let _ = writeln!(t, "V3AuthVotingInterval {v}");
    let _ = writeln!(t, "V3AuthVoteDelay 4");
    let _ = writeln!(t, "V3AuthDistDelay 4");
    let _ = writeln!(
        t,
        "ConsensusParams hsdir_interval={HSDIR_INTERVAL_MINUTES} guard-min-filtered-sample-size=5 \
         cbtmintimeout={MIN_CIRCUIT_TIMEOUT_MS} cbtinitialtimeout={INITIAL_CIRCUIT_TIMEOUT_MS}"
    );
    t
}

/// Options of a C tor client: a SOCKS port, optionally one onion service, and optionally a
/// control port (cookie authentication, the cookie in the data directory) whose SOCKS port
/// reports tor's extended onion-service errors, as a system's tor set up for Carom would.
pub(crate) fn client(
    socks_port: u16,
    onion_service: Option<(&Path, u16, u16)>,
    control_port: Option<u16>,
) -> String {
    let mut t = String::new();
    match control_port {
        Some(control) => {
            let _ = writeln!(t, "SocksPort 127.0.0.1:{socks_port} ExtendedErrors");
            let _ = writeln!(t, "ControlPort 127.0.0.1:{control}");
            let _ = writeln!(t, "CookieAuthentication 1");
        }
        None => {
            let _ = writeln!(t, "SocksPort 127.0.0.1:{socks_port}");
        }
    }
    if let Some((dir, virtual_port, target_port)) = onion_service {
        let _ = writeln!(t, "HiddenServiceDir {}", dir.display());
        let _ = writeln!(
            t,
            "HiddenServicePort {virtual_port} 127.0.0.1:{target_port}"
        );
    }
    t
}
