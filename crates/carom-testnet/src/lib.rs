//! # carom-testnet: a private Tor network on 127.0.0.1
//!
//! Carom's claims are tested over real Tor, and test machines reach no Tor network. This crate
//! builds one: three real C tor v3 directory authorities and (by default) four relays, all on
//! loopback, generated fresh with the system's `tor` and `tor-gencert` and torn down afterwards.
//! Embedded arti clients bootstrap from it with the configuration [`TestNetwork::arti_config`]
//! writes, and [`CtorClient`] runs a C tor client on it for interoperability tests.
//!
//! ```no_run
//! let net = carom_testnet::TestNetwork::start(&Default::default())?;
//! println!("arti config: {}", net.arti_config_path().display());
//! // ... bootstrap arti clients from it ...
//! drop(net); // every tor process stopped by PID, ports freed
//! # Ok::<(), carom_testnet::Error>(())
//! ```
//!
//! Guarantees:
//! - Ports come from a block locked for this process, checked free, so networks run side by
//!   side (two test binaries at once) without colliding with each other or other services.
//! - Start-up waits, bounded, until every relay is in the consensus with the flags clients need,
//!   and fails with the name of the node and the tail of its log otherwise.
//! - Teardown kills only processes this crate started, by PID: on drop, on panic (the logs are
//!   kept and their path printed), at process exit for [`shared`], and — through tor's
//!   `__OwningControllerProcess` — even when the test runner is killed with SIGKILL.
//!
//! What it is not: a simulator, or anything to run on a network interface other than loopback.
//! Nothing it starts accepts or makes connections beyond 127.0.0.0/8.
//!
//! The `carom-testnet` binary (`up`, `down`, `status`, `env`) runs a network for people.

mod bridge;
mod consensus;
mod ctor;
mod err;
mod network;
mod ports;
mod process;
mod torrc;

use std::sync::OnceLock;

pub use bridge::Obfs4Bridge;
pub use ctor::{CtorClient, socks5_connect, socks5_connect_within};
pub use err::{Error, Result};
pub use network::{
    ARTI_CONFIG_FILE, Frozen, NetworkOptions, NetworkState, NodeInfo, TestNetwork, load_state,
    status, stop_detached,
};
pub use ports::port_is_free;
pub use process::children_named;
pub use torrc::Role;

/// The length of an onion-service time period on these networks, in minutes.
///
/// Descriptors are re-published under new blinded keys at each period boundary; a dial that
/// lands right on one may fail once, so callers retry (as the real network also requires).
pub const TIME_PERIOD_MINUTES: u32 = torrc::HSDIR_INTERVAL_MINUTES;

static SHARED: OnceLock<std::result::Result<TestNetwork, String>> = OnceLock::new();

/// One network shared by every test of this process, started on first use.
///
/// Starting a network takes tens of seconds, so the tests of one test binary share it. It is
/// stopped when the process exits (normally or by a failing test's `exit`); if the process is
/// killed, the relays notice their owner is gone and exit by themselves.
///
/// # Panics
/// If the network cannot start; the message says why and where the logs are.
pub fn shared() -> &'static TestNetwork {
    let network = SHARED.get_or_init(|| {
        let network = TestNetwork::start(&NetworkOptions::default()).map_err(|e| e.to_string());
        if network.is_ok() {
            register_exit_hook();
        }
        network
    });
    match network {
        Ok(network) => network,
        Err(e) => panic!("could not start the private Tor network: {e}"),
    }
}

/// Stop the shared network when the process exits. libtest leaves through `exit()` both when
/// all tests pass and when some fail, and statics are never dropped, so an `atexit` hook is the
/// one place that runs in both cases.
#[allow(
    unsafe_code,
    reason = "registering a C exit hook; the hook itself is safe Rust"
)]
fn register_exit_hook() {
    extern "C" fn stop_shared() {
        // Must not unwind across the C boundary.
        let _ = std::panic::catch_unwind(|| {
            if let Some(Ok(network)) = SHARED.get() {
                network.stop();
                let _ = std::fs::remove_dir_all(network.root());
            }
        });
    }
    // SAFETY: `stop_shared` is a plain `extern "C" fn()` that never unwinds; `atexit` only
    // stores the pointer and calls it once at exit.
    unsafe {
        libc::atexit(stop_shared);
    }
}
