//! # caromd, the Carom daemon
//!
//! It owns the profile (identity, device key, encrypted store), runs Tor with the embedded
//! arti client as the user's onion service, delivers and receives messages, and serves
//! frontends through a local JSON-RPC socket (see docs/api.md). It prints nothing on standard
//! output; logs go to standard error.
//!
//! The binary is a thin `main` around [`main_with_args`]; the library exists so that tools
//! such as the benchmark harness can run the very same daemon as a child process of their own
//! binary. It is not an API for embedding Carom.

mod config;
mod paths;
mod profile;
mod server;

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::paths::{Paths, private_dir};
use crate::profile::{Profiles, TorSettings};

/// The Carom daemon: a peer-to-peer messenger over Tor onion services.
///
/// caromd runs in the background; drive it with the `carom` command (or any frontend speaking
/// its local JSON-RPC API). On first start there is no profile: create one with `carom init`.
/// A protected profile starts locked: unlock it with `carom unlock` (or --passphrase-file).
///
/// Files: the profile lives in $XDG_DATA_HOME/carom (default ~/.local/share/carom), the socket
/// in $XDG_RUNTIME_DIR/carom/carom.sock, the optional configuration in
/// $XDG_CONFIG_HOME/carom/caromd.toml. By default caromd runs its own Tor client (arti) on the
/// public Tor network; `--arti-config` selects another network (such as a private test network
/// from `carom-testnet`). Where the system already runs tor (Tails, Whonix, a tor service),
/// use it instead: in caromd.toml,
///
///   [tor]
///   backend = "system"
///   control_port = "127.0.0.1:9051"   # tor's ControlPort (with CookieAuthentication 1)
///   socks_port = "127.0.0.1:9050"     # tor's SocksPort
///
/// caromd then adds its onion service to that tor with its own key, kept in tor's memory only
/// (see docs/tor.md, "Choosing how to reach Tor").
///
/// Where Tor is blocked, the embedded Tor enters it through bridges (lines from
/// https://bridges.torproject.org; obfs4 lines need Debian's obfs4proxy):
///
///   [tor]
///   bridges = ["obfs4 192.0.2.3:443 <FINGERPRINT> cert=<CERT> iat-mode=0"]
///
/// or while caromd runs: carom tor bridges set "obfs4 …". If Tor's bootstrap makes no progress
/// for 30 s, `carom status` says so and what to try (docs/tor.md, "Bridges").
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// Configuration file [default: $XDG_CONFIG_HOME/carom/caromd.toml]
    #[arg(long, env = "CAROM_CONFIG")]
    config: Option<PathBuf>,

    /// Where the profile and Tor state are kept [default: $XDG_DATA_HOME/carom]
    #[arg(long, env = "CAROM_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// Where the API socket is created [default: $XDG_RUNTIME_DIR/carom, else /tmp/carom-$UID]
    #[arg(long, env = "CAROM_RUNTIME_DIR")]
    runtime_dir: Option<PathBuf>,

    /// Use the Tor network described by this arti TOML file instead of the public one
    /// (e.g. the arti.toml printed by `carom-testnet up`)
    #[arg(long, env = "CAROM_ARTI_CONFIG")]
    arti_config: Option<PathBuf>,

    /// Unlock a protected profile at start with the passphrase in this file (first line)
    #[arg(long)]
    passphrase_file: Option<PathBuf>,

    /// RAM-only profile: a fresh identity that lives in memory and is gone at exit; nothing
    /// about it is written to the data directory
    #[arg(long)]
    ephemeral: bool,

    /// Log filter, e.g. "info" or "carom_engine=debug,info" [default: info]
    #[arg(long, env = "CAROM_LOG")]
    log: Option<String>,

    /// Turn off arti's permission checks on its state directories. DANGEROUS: only for
    /// containers and tests where ownership cannot be right
    #[arg(long)]
    dangerously_trust_everyone: bool,
}

/// Run the daemon with these command-line arguments (the first is the program name) until it
/// is told to stop; returns the process exit code.
pub fn main_with_args<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Args::parse_from(argv);
    let (config_path, explicit) = match &args.config {
        Some(p) => (Some(p.clone()), true),
        None => (paths::default_config_file(), false),
    };
    let file = match config_path.map(|p| config::load(&p, explicit)).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => {
            report(&format!("configuration: {e}"));
            return ExitCode::from(2);
        }
    };
    let filter = args
        .log
        .clone()
        .or(file.log.clone())
        .unwrap_or_else(|| "info,arti_client=warn,tor_guardmgr=warn,tor_circmgr=warn,tor_hsservice=warn,tor_dirmgr=warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let Some(data_dir) = args
        .data_dir
        .clone()
        .or(file.data_dir.clone())
        .or_else(paths::default_data_dir)
    else {
        report("cannot find a home directory for the profile: pass --data-dir");
        return ExitCode::from(2);
    };
    let runtime_dir = args
        .runtime_dir
        .clone()
        .or(file.runtime_dir.clone())
        .unwrap_or_else(carom_client::default_runtime_dir);
    let paths = Paths {
        data_dir,
        runtime_dir,
    };
    let system = match system_tor(&file.tor) {
        Ok(system) => system,
        Err(e) => {
            report(&format!("configuration: {e}"));
            return ExitCode::from(2);
        }
    };
    if system.is_some() && args.arti_config.is_some() {
        report(
            "configuration: --arti-config applies to the embedded Tor, not [tor] backend = \"system\"",
        );
        return ExitCode::from(2);
    }
    let bridges = carom_tor::Bridges {
        lines: file.tor.bridges.clone(),
        transport_programs: file.tor.transport_programs.clone(),
    };
    if let Err(e) = bridges.check() {
        report(&format!("configuration: [tor] bridges: {e}"));
        return ExitCode::from(2);
    }
    let tor = TorSettings {
        system,
        bridges,
        arti_config: args.arti_config.clone().or(file.tor.arti_config.clone()),
        pow: file.tor.pow.unwrap_or(true),
        dangerously_trust_everyone: args.dangerously_trust_everyone
            || file.tor.dangerously_trust_everyone,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            report(&format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let mut engine = carom_engine::EngineConfig::default();
    if let Some(presence) = file.messaging.presence {
        engine.presence = presence;
    }
    if let Some(retention) = file.messaging.event_retention {
        engine.event_retention = retention;
    }
    match runtime.block_on(run(
        paths,
        tor,
        engine,
        args.ephemeral,
        args.passphrase_file,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// The system-tor backend's settings, if `[tor]` selects it; an error names what is wrong.
fn system_tor(tor: &config::TorSection) -> Result<Option<carom_tor::SystemTorConfig>, String> {
    let system_only = [
        ("control_port", tor.control_port.is_some()),
        ("socks_port", tor.socks_port.is_some()),
        ("cookie_file", tor.cookie_file.is_some()),
        ("control_password", tor.control_password.is_some()),
    ];
    if tor.backend != config::Backend::System {
        if let Some((key, _)) = system_only.iter().find(|(_, set)| *set) {
            return Err(format!(
                "[tor] {key} applies to backend = \"system\" only (the backend is the embedded Tor)"
            ));
        }
        return Ok(None);
    }
    if tor.arti_config.is_some() {
        return Err(
            "[tor] arti_config applies to the embedded Tor, not backend = \"system\"".into(),
        );
    }
    if !tor.bridges.is_empty() || !tor.transport_programs.is_empty() {
        return Err(
            "[tor] bridges and transport_programs apply to the embedded Tor; the system's tor \
             takes its bridges from its own torrc (`UseBridges 1`, `Bridge` and \
             `ClientTransportPlugin` lines)"
                .into(),
        );
    }
    let mut system = carom_tor::SystemTorConfig::default();
    if let Some(control) = tor.control_port {
        system.control = control;
    }
    if let Some(socks) = tor.socks_port {
        system.socks = socks;
    }
    system.auth = match (&tor.cookie_file, &tor.control_password) {
        (Some(_), Some(_)) => {
            return Err("[tor] give cookie_file or control_password, not both".into());
        }
        (Some(file), None) => carom_tor::ControlAuth::CookieFile(file.clone()),
        (None, Some(password)) => carom_tor::ControlAuth::Password(password.clone()),
        (None, None) => carom_tor::ControlAuth::Auto,
    };
    system.validate().map_err(|e| format!("[tor]: {e}"))?;
    Ok(Some(system))
}

#[allow(
    clippy::print_stderr,
    reason = "the one place that explains a failed start to a person"
)]
fn report(message: &str) {
    eprintln!("caromd: {message}");
}

async fn run(
    paths: Paths,
    tor: TorSettings,
    engine: carom_engine::EngineConfig,
    ephemeral: bool,
    passphrase_file: Option<PathBuf>,
) -> Result<(), String> {
    private_dir(&paths.runtime_dir)?;
    // Only one daemon per profile: the lock lives with what it protects (the runtime
    // directory for a RAM-only profile).
    let lock_path = if ephemeral {
        paths.runtime_dir.join("caromd.lock")
    } else {
        private_dir(&paths.data_dir)?;
        paths.lock_file()
    };
    let _lock = single_instance(&lock_path)?;
    if let Some(system) = &tor.system {
        info!(control = %system.control, socks = %system.socks, "using the system's tor");
    } else if let Some(arti) = &tor.arti_config {
        info!(file = %arti.display(), "using the Tor network described by this arti configuration");
    }

    let profiles = Arc::new(Profiles::new(paths.clone(), ephemeral, tor, engine));
    profiles.start(passphrase_file.as_deref()).await?;

    let socket = paths.socket();
    // The lock says no other daemon runs with this profile; a socket left over from a killed
    // one can go.
    if socket.exists() {
        std::fs::remove_file(&socket)
            .map_err(|e| format!("cannot remove the stale {}: {e}", socket.display()))?;
    }
    let listener = UnixListener::bind(&socket)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", socket.display()))?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let server = Arc::new(server::Server::new(Arc::clone(&profiles), stop_tx.clone()));
    let serving = tokio::spawn(server::serve(listener, Arc::clone(&server)));
    let (state, _) = profiles.info().await;
    info!(socket = %socket.display(), profile = ?state, "caromd ready");

    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut store_failed = profiles.store_failed();
    let mut failure = None;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
        _ = stop_rx.changed() => {}
        Ok(_) = store_failed.wait_for(|failed| *failed) => {
            let why = "the store took itself out of service after a bug left its database \
                       connection in an unknown state; everything saved before is safe: start \
                       caromd again (and please report the bug, with this log)";
            tracing::error!("{why}");
            failure = Some(why.to_owned());
        }
    }
    let _ = stop_tx.send(true);
    let _ = serving.await;
    profiles.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    info!("caromd stopped");
    failure.map_or(Ok(()), Err)
}

/// Take the single-instance lock, or explain who holds it.
fn single_instance(path: &std::path::Path) -> Result<File, String> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    if file.try_lock().is_err() {
        let holder = std::fs::read_to_string(path).unwrap_or_default();
        return Err(format!(
            "another caromd (pid {}) already runs with this profile ({}); stop it first",
            holder.trim(),
            path.display()
        ));
    }
    if let Err(e) = file
        .set_len(0)
        .and_then(|()| write!(file, "{}", std::process::id()))
    {
        warn!(error = %e, "could not record our pid in the lock file");
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tor(text: &str) -> config::TorSection {
        toml::from_str::<config::FileConfig>(text)
            .expect("valid toml")
            .tor
    }

    #[test]
    fn the_system_backend_is_chosen_only_when_asked_and_its_settings_only_with_it() {
        assert_eq!(system_tor(&tor("")), Ok(None));
        let e = system_tor(&tor("[tor]\ncontrol_port = \"127.0.0.1:9051\"\n")).unwrap_err();
        assert!(
            e.contains("control_port applies to backend = \"system\" only"),
            "{e}"
        );
        let system = system_tor(&tor(
            "[tor]\nbackend = \"system\"\nsocks_port = \"127.0.0.1:9150\"\ncookie_file = \"/c\"\n",
        ))
        .expect("valid")
        .expect("system");
        assert_eq!(system.socks, "127.0.0.1:9150".parse().unwrap());
        assert_eq!(
            system.control,
            "127.0.0.1:9051".parse().unwrap(),
            "the default"
        );
        assert_eq!(
            system.auth,
            carom_tor::ControlAuth::CookieFile(PathBuf::from("/c"))
        );
        let both = "[tor]\nbackend = \"system\"\ncookie_file = \"/c\"\ncontrol_password = \"p\"\n";
        assert!(system_tor(&tor(both)).unwrap_err().contains("not both"));
        let remote = "[tor]\nbackend = \"system\"\ncontrol_port = \"192.0.2.1:9051\"\n";
        assert!(
            system_tor(&tor(remote))
                .unwrap_err()
                .contains("must be on this machine")
        );
        let arti = "[tor]\nbackend = \"system\"\narti_config = \"/a.toml\"\n";
        assert!(system_tor(&tor(arti)).unwrap_err().contains("arti_config"));
        let bridges = "[tor]\nbackend = \"system\"\nbridges = [\"192.0.2.4:9001 0123456789ABCDEF0123456789ABCDEF01234567\"]\n";
        assert!(system_tor(&tor(bridges)).unwrap_err().contains("own torrc"));
    }
}
