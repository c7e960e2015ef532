//! What the engine test files share: waiting for events, and letting virtual time pass.

use std::time::Duration;

// Each test file uses part of this: what one leaves unused is not dead.
#[allow(dead_code)]
pub(crate) mod nodes;

use carom_api as api;
use carom_engine::Engine;

/// Let `d` of virtual time pass: every engine runs whatever falls due meanwhile.
#[allow(dead_code)] // Not every test file lets time pass.
pub(crate) async fn advance(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Wait (up to [`nodes::WAIT`] of virtual time) for a live event (one never stored) of `kind`
/// whose data satisfies `pred`.
#[allow(dead_code)] // Only the files about history off use live events.
pub(crate) async fn live(
    events: &mut tokio::sync::broadcast::Receiver<api::LiveEvent>,
    kind: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> api::LiveEvent {
    let deadline = tokio::time::Instant::now() + nodes::WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no live {kind} within {:?} of virtual time", nodes::WAIT))
            .expect("live events flow");
        if event.kind() == kind && pred(&event.data.to_value()) {
            return event;
        }
    }
}

/// Wait up to `wait` (virtual time) for the first event of `kind` whose data satisfies
/// `pred`; fail with every event logged so far.
pub(crate) async fn wait_event(
    engine: &Engine,
    kind: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
    wait: Duration,
) -> api::Event {
    let mut notify = engine.event_notifier();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let events = engine.events_since(0, 100_000).await.expect("events");
        if let Some(e) = events
            .into_iter()
            .find(|e| e.kind() == kind && pred(&e.data.to_value()))
        {
            return e;
        }
        if tokio::time::timeout_at(deadline, notify.changed())
            .await
            .is_err()
        {
            let kinds: Vec<String> = engine
                .events_since(0, 1000)
                .await
                .expect("events")
                .into_iter()
                .map(|e| format!("{} {}", e.kind(), e.data.to_value()))
                .collect();
            panic!("no {kind} event within {wait:?} of virtual time; events: {kinds:#?}");
        }
    }
}
