//! Cross-crate integration tests of Carom live in `tests/`; this library is empty.
//!
//! The real-network tests start a private Tor network with `carom-testnet` and need Debian's
//! `tor` package; run them with the README's test command.
