//! `caromd`, the Carom daemon.
//!
//! Not written yet: the engine, the local API and the daemon itself are the next milestones
//! (see docs/architecture.md). Until then this binary says so instead of pretending.

use std::process::ExitCode;

fn main() -> ExitCode {
    #[allow(clippy::print_stderr, reason = "the binary's only output")]
    {
        eprintln!("caromd: the daemon is not implemented yet; see docs/architecture.md");
    }
    ExitCode::from(2)
}
