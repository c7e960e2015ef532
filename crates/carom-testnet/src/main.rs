//! `carom-testnet`: run a private Tor network on 127.0.0.1 for development and demos.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool"
)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use carom_testnet::{NetworkOptions, TestNetwork};
use clap::{Parser, Subcommand};

/// Run a private Tor network (3 directory authorities and 4 relays, real C tor) on 127.0.0.1.
///
/// Nothing it starts listens or connects beyond loopback. Needs Debian's `tor` package
/// (`sudo apt-get install -y tor`). Typical use:
///
///   carom-testnet up          # start it, wait until usable, print how to use it
///   eval "$(carom-testnet env)"  # export CAROM_ARTI_CONFIG for clients
///   carom-testnet status
///   carom-testnet down
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    /// Directory holding the network's keys, torrc files and logs.
    /// Default: $XDG_RUNTIME_DIR/carom-testnet, else /tmp/carom-testnet-$USER.
    #[arg(long, global = true, env = "CAROM_TESTNET_DIR")]
    dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a network in the background and wait until clients can use it.
    Up {
        /// Number of relays besides the 3 authorities.
        #[arg(long, default_value_t = 4)]
        relays: usize,
        /// Give up if the consensus is not usable after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Stop the network's tor processes (by the PIDs it recorded) and delete its directory.
    Down {
        /// Keep the directory (logs, keys) after stopping.
        #[arg(long)]
        keep: bool,
    },
    /// Show each node and the consensus the authorities hold.
    Status,
    /// Print shell `export` lines pointing clients at the network.
    Env,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let dir = cli.dir.unwrap_or_else(default_dir);
    match run(cli.command, dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("carom-testnet: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, dir: PathBuf) -> Result<(), String> {
    match command {
        Command::Up { relays, timeout } => {
            if let Ok(state) = carom_testnet::load_state(&dir)
                && state.nodes.iter().any(|n| n.pid.is_some_and(pid_runs))
            {
                return Err(format!(
                    "a network is already running in {}; run `carom-testnet down` first",
                    dir.display()
                ));
            }
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| format!("removing {}: {e}", dir.display()))?;
            }
            eprintln!(
                "starting 3 authorities and {relays} relays in {} ...",
                dir.display()
            );
            let started = std::time::Instant::now();
            let network = TestNetwork::start(
                &NetworkOptions::default()
                    .relays(relays)
                    .ready_timeout(Duration::from_secs(timeout))
                    .root(&dir)
                    .detached(true),
            )
            .map_err(|e| e.to_string())?;
            println!(
                "private Tor network ready after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            println!("  directory:   {}", dir.display());
            println!("  arti config: {}", network.arti_config_path().display());
            println!(
                "  C tor:       add the lines of {} to a torrc",
                dir.join("client-torrc").display()
            );
            println!("  nodes:");
            for node in network.nodes() {
                println!(
                    "    {:<8} pid {:<7} ORPort {}",
                    node.nickname,
                    node.pid.unwrap_or_default(),
                    node.or_port.unwrap_or_default()
                );
            }
            println!(
                "point Carom at it:  eval \"$(carom-testnet env)\"   (sets CAROM_ARTI_CONFIG)"
            );
            println!("stop it:            carom-testnet down");
            Ok(())
        }
        Command::Down { keep } => {
            let stopped = carom_testnet::stop_detached(&dir).map_err(|e| e.to_string())?;
            println!("stopped {} tor processes", stopped.len());
            if !keep {
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| format!("removing {}: {e}", dir.display()))?;
            }
            Ok(())
        }
        Command::Status => {
            for line in carom_testnet::status(&dir).map_err(|e| e.to_string())? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Env => {
            carom_testnet::load_state(&dir).map_err(|e| e.to_string())?;
            println!("export CAROM_TESTNET_DIR='{}'", dir.display());
            println!(
                "export CAROM_ARTI_CONFIG='{}'",
                dir.join(carom_testnet::ARTI_CONFIG_FILE).display()
            );
            Ok(())
        }
    }
}

fn pid_runs(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(runtime) => PathBuf::from(runtime).join("carom-testnet"),
        None => {
            let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
            std::env::temp_dir().join(format!("carom-testnet-{user}"))
        }
    }
}
