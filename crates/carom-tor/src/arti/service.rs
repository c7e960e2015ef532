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
