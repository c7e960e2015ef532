//! Background work of the arti backend: bootstrapping, status reporting, and admitting
//! rendezvous requests to our onion service.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arti_client::status::{BootstrapEvents, BootstrapStatus};
use futures::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tor_cell::relaycell::msg::{Connected, End, EndReason};
use tor_hsservice::config::OnionServiceConfigBuilder;
use tor_hsservice::status::{OnionServiceStatus, OnionServiceStatusStream, Problem, State};
use tor_hsservice::{RendRequest, StreamRequest};
use tor_proto::stream::IncomingStreamRequest;

use super::{ArtiConfig, ArtiStream, Client, SERVICE_NICKNAME, Shared};
use crate::admission::{Counters, Gate};
use crate::err::{error_chain, scrub};
use crate::{
    AdmissionConfig, BootstrapProgress, CAROM_VIRTUAL_PORT, ServiceState, TransportError,
    TransportStatus,
};

/// arti's configuration of our service.
pub(super) fn service_config(
    config: &ArtiConfig,
) -> Result<tor_hsservice::OnionServiceConfig, TransportError> {
    let nickname = SERVICE_NICKNAME
        .parse()
        .map_err(|e| TransportError::Config(format!("service nickname: {e}")))?;
    OnionServiceConfigBuilder::default()
        .nickname(nickname)
        .num_intro_points(config.num_intro_points)
        .max_concurrent_streams_per_circuit(config.max_streams_per_circuit)
        .enable_pow(config.pow)
        .pow_rend_queue_depth(config.pow_queue_depth)
        .build()
        .map_err(|e| TransportError::Config(format!("onion service: {e}")))
}

/// Bootstrap, retrying with backoff until it succeeds (or the transport is dropped).
pub(super) async fn bootstrap_task(client: Arc<Client>, shared: Arc<Shared>) {
    let started = Instant::now();
    let mut backoff = Duration::from_secs(1);
    loop {
        match client.bootstrap().await {
            Ok(()) => {
                shared.bootstrapped.store(true, Ordering::SeqCst);
                let status = client.bootstrap_status();
                shared
                    .status
                    .send_modify(|s| apply_bootstrap(s, &status, true));
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis(),
                    "Tor bootstrap complete"
                );
                return;
            }
            Err(e) => {
                let text = scrub(&error_chain(&e), &shared.address);
                tracing::warn!("Tor bootstrap failed, retrying in {backoff:?}: {text}");
                shared
                    .status
                    .send_modify(|s| s.last_error = Some(format!("bootstrap: {text}")));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// How often the stall watch looks at arti's bootstrap progress.
const STALL_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Watch the bootstrap for a stall: no progress for `stall_after` before the first bootstrap
/// completes. Then the status says so, with what arti is stuck on, and points to bridges —
/// or, with bridges configured, says they do not answer. New bridge settings start the
/// watch afresh (`Shared::stall_epoch`).
pub(super) async fn stall_task(client: Arc<Client>, shared: Arc<Shared>, stall_after: Duration) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut best = 0.0_f32;
    let mut since = Instant::now();
    let mut epoch = shared.stall_epoch.load(Ordering::SeqCst);
    loop {
        tokio::select! {
            () = crate::stopped(&mut shutdown) => return,
            () = tokio::time::sleep(STALL_CHECK_EVERY) => {}
        }
        if shared.bootstrapped.load(Ordering::SeqCst) {
            return;
        }
        let now_epoch = shared.stall_epoch.load(Ordering::SeqCst);
        let status = client.bootstrap_status();
        let frac = status.as_frac();
        if now_epoch != epoch || frac > best + 0.001 {
            epoch = now_epoch;
            best = frac;
            since = Instant::now();
            shared.status.send_if_modified(|s| {
                let was = s.bootstrap.stalled;
                s.bootstrap.stalled = false;
                was
            });
            continue;
        }
        if since.elapsed() < stall_after {
            continue;
        }
        let blockage = status.blocked().map(|b| b.to_string());
        shared.status.send_if_modified(|s| {
            if s.bootstrap.stalled {
                return false;
            }
            s.bootstrap.stalled = true;
            let hint = stall_hint(stall_after, &s.bootstrap, s.bridges, blockage.as_deref());
            tracing::warn!("{hint}");
            s.last_error = Some(hint);
            true
        });
    }
}

/// What a stalled bootstrap tells the user: what arti is stuck on, and what to do.
pub(super) fn stall_hint(
    stalled_for: Duration,
    progress: &BootstrapProgress,
    bridges: usize,
    blockage: Option<&str>,
) -> String {
    let secs = stalled_for.as_secs();
    let at = format!("{} %: {}", progress.percent, progress.phase);
    let arti = blockage
        .map(|b| format!("; Tor says: {b}"))
        .unwrap_or_default();
    if bridges == 0 {
        format!(
            "Tor's bootstrap has made no progress for {secs} s ({at}{arti}). If Tor is blocked \
             where you are, enter it through bridges: `carom tor bridges set \"obfs4 …\"` with \
             lines from bridges.torproject.org (see docs/tor.md, \"Bridges\")"
        )
    } else {
        let plural = if bridges == 1 { "bridge" } else { "bridges" };
        format!(
            "Tor's bootstrap has made no progress for {secs} s through the {bridges} configured \
             {plural} ({at}{arti}): they may be down or blocked, or a line may be wrong (an obfs4 \
             line's cert= must be exact). Try other bridges: `carom tor bridges set …`"
        )
    }
}

/// Percent, phase and readiness from arti's bootstrap status.
fn apply_bootstrap(status: &mut TransportStatus, arti: &BootstrapStatus, bootstrapped: bool) {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "clamped to 0..=100 first"
    )]
    let percent = (arti.as_frac() * 100.0).round().clamp(0.0, 100.0) as u8;
    let text = arti.to_string();
    // arti writes "NN%: <connection>; <directory>"; the percentage is shown separately.
    let phase = match text.split_once("%: ") {
        Some((head, rest)) if head.chars().all(|c| c.is_ascii_digit()) => rest.to_owned(),
        _ => text,
    };
    let ready = bootstrapped && arti.ready_for_traffic();
    status.bootstrap = BootstrapProgress {
        percent: if ready { 100 } else { percent },
        phase,
        ready,
        // Only the stall watch (`stall_task`) calls a bootstrap stalled; readiness ends it.
        stalled: status.bootstrap.stalled && !ready,
    };
    clear_error_if_healthy(status);
}

fn clear_error_if_healthy(status: &mut TransportStatus) {
    if status.bootstrap.ready
        && matches!(
            status.service,
            ServiceState::Published | ServiceState::Reachable
        )
    {
        status.last_error = None;
    }
}

/// Our state for arti's service status; `Reachable` survives while arti stays `Running`.
fn service_state(current: &ServiceState, arti: &OnionServiceStatus) -> ServiceState {
    match arti.state() {
        State::Shutdown => ServiceState::Stopped,
        State::Bootstrapping => ServiceState::Launching,
        State::Running | State::DegradedReachable if *current == ServiceState::Reachable => {
            ServiceState::Reachable
        }
        State::Running => ServiceState::Published,
        State::DegradedReachable => ServiceState::Degraded {
            likely_reachable: true,
        },
        State::DegradedUnreachable | State::Recovering => ServiceState::Degraded {
            likely_reachable: false,
        },
        State::Broken => ServiceState::Broken(
            arti.current_problem()
                .map(problem_text)
                .unwrap_or_else(|| "the onion service is broken".into()),
        ),
        _ => ServiceState::Degraded {
            likely_reachable: false,
        },
    }
}

/// A service problem in words. arti's `Problem` has no `Display`; its parts do.
fn problem_text(problem: &Problem) -> String {
    match problem {
        Problem::Runtime(e) => error_chain(e),
        Problem::DescriptorUpload(errors) => match errors.first() {
            Some(e) => format!("descriptor upload failed: {}", error_chain(e)),
            None => "descriptor upload failed".into(),
        },
        Problem::Ipt(errors) => match errors.first() {
            Some(e) => format!("introduction point failed: {}", error_chain(e)),
            None => "introduction point failed".into(),
        },
        Problem::Pow(e) => format!("proof-of-work: {}", error_chain(e)),
        _ => "unclassified onion-service problem".into(),
    }
}

/// Follow arti's bootstrap and service events and publish them as one [`TransportStatus`].
pub(super) async fn status_task(
    mut bootstrap: BootstrapEvents,
    mut service: OnionServiceStatusStream,
    shared: Arc<Shared>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            () = crate::stopped(&mut shutdown) => return,
            Some(event) = bootstrap.next() => {
                let bootstrapped = shared.bootstrapped.load(Ordering::SeqCst);
                shared.status.send_if_modified(|s| {
                    let before = s.clone();
                    apply_bootstrap(s, &event, bootstrapped);
                    *s != before
                });
            }
            Some(event) = service.next() => {
                shared.status.send_if_modified(|s| {
                    let before = s.clone();
                    s.service = match service_state(&s.service, &event) {
                        ServiceState::Broken(reason) => {
                            ServiceState::Broken(scrub(&reason, &shared.address))
                        }
                        // arti says "shutdown" for a service it has not started yet (no
                        // directory): to us that is still launching, until we stop it.
                        ServiceState::Stopped if !shared.is_shut_down() => ServiceState::Launching,
                        other => other,
                    };
                    if let Some(problem) = event.current_problem() {
                        let text = scrub(&problem_text(problem), &shared.address);
                        s.last_error = Some(format!("onion service: {text}"));
                    }
                    clear_error_if_healthy(s);
                    if s.service != before.service {
                        tracing::info!(state = ?s.service, "onion service state changed");
                    }
                    *s != before
                });
            }
            else => return,
        }
    }
}

/// What the rendezvous loop needs.
pub(super) struct RendContext {
    pub(super) admission: AdmissionConfig,
    pub(super) pow: bool,
    pub(super) incoming: mpsc::Sender<ArtiStream>,
    pub(super) shared: Arc<Shared>,
}

/// Admit rendezvous requests through the token bucket and the in-flight cap.
///
/// Without proof-of-work, a request that finds no token (or too many handshakes in flight) is
/// rejected at once: arti's queue is then first-in first-out, so rejecting keeps the freshest
/// requests first in line. With proof-of-work, the loop instead waits for a token before
/// taking the next request, so requests wait in arti's queue, highest effort first, and
/// arti's effort controller sees the backlog it needs to raise the suggested effort.
pub(super) async fn rend_loop<S>(mut requests: std::pin::Pin<Box<S>>, ctx: RendContext)
where
    S: Stream<Item = RendRequest> + Send + ?Sized,
{
    let shared = Arc::clone(&ctx.shared);
    let mut shutdown = shared.shutdown.subscribe();
    let mut gate = Gate::new(&ctx.admission, ctx.pow, Arc::clone(&shared.counters));
    loop {
        let held = tokio::select! {
            () = crate::stopped(&mut shutdown) => return,
            held = gate.ready() => held,
        };
        let request = tokio::select! {
            () = crate::stopped(&mut shutdown) => return,
            request = requests.next() => match request {
                Some(r) => r,
                None => return,
            },
        };
        let Some(permit) = gate.admit(held) else {
            let _ = request.reject().await;
            continue;
        };
        tokio::spawn(rendezvous(
            request,
            permit,
            ctx.incoming.clone(),
            Arc::clone(&shared),
        ));
    }
}

/// Complete one rendezvous, then serve the streams the client opens on that circuit.
async fn rendezvous(
    request: RendRequest,
    permit: tokio::sync::OwnedSemaphorePermit,
    incoming: mpsc::Sender<ArtiStream>,
    shared: Arc<Shared>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let result = tokio::select! {
        () = crate::stopped(&mut shutdown) => return,
        r = request.accept() => r,
    };
    drop(permit);
    let mut streams = match result {
        Ok(streams) => streams,
        Err(e) => {
            let failed = Counters::bump(&shared.counters.handshake_failed);
            let text = scrub(&error_chain(&e), &shared.address);
            tracing::debug!(failed, "rendezvous failed: {text}");
            return;
        }
    };
    // A client got through: the service is demonstrably reachable.
    shared.status.send_if_modified(|s| {
        if matches!(
            s.service,
            ServiceState::Published | ServiceState::Launching | ServiceState::Degraded { .. }
        ) {
            s.service = ServiceState::Reachable;
            true
        } else {
            false
        }
    });
    loop {
        let next = tokio::select! {
            () = crate::stopped(&mut shutdown) => return,
            next = streams.next() => next,
        };
        let Some(stream_request) = next else { return };
        if !serve_stream(stream_request, &incoming, &shared).await {
            return;
        }
    }
}

/// Accept a `BEGIN` to our port and hand the stream to `accept()`; refuse anything else.
/// Returns `false` once nobody is accepting any more.
async fn serve_stream(
    request: StreamRequest,
    incoming: &mpsc::Sender<ArtiStream>,
    shared: &Shared,
) -> bool {
    let ours = matches!(
        request.request(),
        IncomingStreamRequest::Begin(begin) if begin.port() == CAROM_VIRTUAL_PORT
    );
    if !ours {
        let refused = Counters::bump(&shared.counters.streams_refused);
        tracing::debug!(
            refused,
            "refused a stream that is not a BEGIN to the Carom port"
        );
        // END with reason DONE, as other onion services answer unknown ports.
        let _ = request.reject(End::new_with_reason(EndReason::DONE)).await;
        return true;
    }
    match request.accept(Connected::new_empty()).await {
        Ok(stream) => {
            Counters::bump(&shared.counters.streams_accepted);
            incoming.send(ArtiStream(stream)).await.is_ok()
        }
        Err(e) => {
            let text = scrub(&error_chain(&e), &shared.address);
            tracing::debug!("could not accept a stream: {text}");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_says_where_it_is_stuck_and_points_to_bridges_or_away_from_the_broken_ones() {
        let progress = BootstrapProgress {
            percent: 8,
            phase: "handshaking with Tor relays".into(),
            ready: false,
            stalled: true,
        };
        let direct = stall_hint(Duration::from_secs(30), &progress, 0, Some("Filtering"));
        assert!(
            direct.contains("30 s (8 %: handshaking with Tor relays; Tor says: Filtering)"),
            "{direct}"
        );
        assert!(direct.contains("carom tor bridges set"), "{direct}");
        let bridged = stall_hint(Duration::from_secs(30), &progress, 2, None);
        assert!(
            bridged.contains("through the 2 configured bridges"),
            "{bridged}"
        );
        assert!(bridged.contains("cert="), "{bridged}");
    }

    #[test]
    fn the_service_config_carries_our_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ArtiConfig::new(dir.path());
        config.max_streams_per_circuit = 5;
        config.pow = false;
        let service = service_config(&config).expect("builds");
        assert_eq!(service.nickname().to_string(), SERVICE_NICKNAME);
        assert_eq!(*service.max_concurrent_streams_per_circuit(), 5);
        assert!(!*service.enable_pow());
        assert_eq!(*service.num_intro_points(), 3);
    }
}
