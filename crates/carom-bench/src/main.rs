//! `carom-bench`: Carom's performance, measured against the limit in one run.
//!
//! Over a private Tor network (real C tor relays on 127.0.0.1) it first measures the raw limit —
//! an arti connection to an onion service and an echo round trip on it — then Carom through real
//! daemons and their API: first contact, a warm message, a cold message, a burst. In-process it
//! measures durable engine-to-engine throughput over the loopback transport with real stores,
//! and the daemon's memory, start-up time and history latency with a large profile. It prints a
//! table and writes JSON. Benchmarks report; they do not pass or fail.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line report"
)]

mod daemon;
mod groups;
mod local;
mod measure;
mod tor;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::measure::Report;

/// Measure Carom over a private Tor network and in-process; print a table, write JSON.
///
/// Run it in release mode for real figures:
///   cargo run --release --locked -p carom-bench -- --out carom-bench.json
/// Needs Debian's tor package for the private network (scripts/install-deps).
#[derive(Parser)]
#[command(verbatim_doc_comment)]
struct Args {
    /// Tiny sizes, to check that every part still works (the test suite runs this)
    #[arg(long)]
    smoke: bool,
    /// Where to write the JSON results
    #[arg(long, default_value = "carom-bench.json")]
    out: PathBuf,
    /// Messages in the in-process throughput run
    #[arg(long, default_value_t = 20_000)]
    local_messages: usize,
    /// Messages in the burst over Tor
    #[arg(long, default_value_t = 10_000)]
    burst: usize,
    /// Stored messages in the large profile
    #[arg(long, default_value_t = 1_000_000)]
    large_messages: usize,
    /// Contacts in the large profile
    #[arg(long, default_value_t = 1_000)]
    large_contacts: usize,
    /// Members of the measured group, each a daemon (compare sizes to see what fan-out costs)
    #[arg(long, default_value_t = 8)]
    group_members: usize,
    /// Only the in-process part (no Tor network)
    #[arg(long)]
    local_only: bool,
}

/// How big each part is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sizes {
    pub(crate) local_messages: usize,
    pub(crate) burst: usize,
    pub(crate) large_messages: usize,
    pub(crate) large_contacts: usize,
    pub(crate) samples: usize,
    /// Members of the measured group (each a daemon).
    pub(crate) group_members: usize,
    /// Groups the first member joins for the memory figure.
    pub(crate) groups: usize,
}

fn main() -> ExitCode {
    let mut argv = std::env::args_os();
    let program = argv.next();
    let mut rest: Vec<std::ffi::OsString> = argv.collect();
    if rest.first().is_some_and(|a| a == daemon::AS_DAEMON) {
        rest.remove(0);
        let mut args = vec![std::ffi::OsString::from("caromd")];
        args.extend(rest);
        return caromd::main_with_args(args);
    }
    // Diagnostics on request only (`RUST_LOG=carom_engine=debug`): logging costs time.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let mut all = vec![program.unwrap_or_default()];
    all.extend(rest);
    let args = Args::parse_from(all);
    let sizes = if args.smoke {
        Sizes {
            local_messages: 300,
            burst: 200,
            large_messages: 3_000,
            large_contacts: 50,
            samples: 3,
            group_members: 3,
            groups: 2,
        }
    } else {
        Sizes {
            local_messages: args.local_messages,
            burst: args.burst,
            large_messages: args.large_messages,
            large_contacts: args.large_contacts,
            samples: 20,
            group_members: args.group_members.max(2),
            groups: 32,
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("carom-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut report = Report::default();
    let outcome = runtime.block_on(async {
        eprintln!(
            "== in-process: durable engine-to-engine throughput ({} messages)",
            sizes.local_messages
        );
        local::throughput(&mut report, sizes, None).await?;
        eprintln!("== in-process: the same with a 5-minute disappearing timer on every message");
        local::throughput(&mut report, sizes, Some(300)).await?;
        if args.local_only {
            return Ok(());
        }
        eprintln!("== private Tor network: raw limit, then Carom through daemons");
        tor::run(&mut report, sizes).await
    });
    println!("{}", report.table());
    let json = serde_json::json!({
        "smoke": args.smoke,
        "sizes": format!("{sizes:?}"),
        "machine": machine(),
        "rows": report.rows,
    });
    if let Err(e) = std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    ) {
        eprintln!("carom-bench: cannot write {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    eprintln!("results written to {}", args.out.display());
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("carom-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A short description of the machine the figures come from.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| {
                    v.split_whitespace()
                        .next()
                        .and_then(|kb| kb.parse::<u64>().ok())
                })
        })
        .map_or(0, |kb| kb / 1024 / 1024);
    format!("{cpus} cores ({model}), {mem} GiB")
}
