//! # carom-proto: Carom's protocol core, without I/O
//!
//! Identities and onion addresses, device-key certificates, and (as it lands) the Noise
//! channel, framing, wire messages and the per-connection session state machine. The whole
//! protocol is specified in `docs/protocol.md`.
//!
//! This crate does no I/O and has no async runtime: callers feed it bytes and the current time
//! and get bytes, timers and events back (the model of `quinn-proto` and `rustls`). That keeps
//! it deterministic, testable in memory and fuzzable.
//!
//! What it is not: a transport, a store, or a policy engine. It does not decide who may talk to
//! whom; it reports who the authenticated peer is and lets the caller decide.

#![forbid(unsafe_code)]

mod cert;
mod identity;

pub use cert::{CertError, DeviceCertificate, DeviceKey};
pub use identity::{
    AddressError, IdentityKey, ONION_ADDRESS_LEN, OnionAddress, Redacted, URI_SCHEME,
};
