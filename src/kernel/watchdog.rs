//! The watchdog: `astrid.v1.watchdog.tick` (`Custom {}`) every few seconds, so capsules can
//! enforce their own timeouts without a timer of their own (a hook only runs when an event
//! arrives; the orchestrator ends a turn whose model went quiet on a tick).
//!
//! As the reference: the first tick is skipped (nothing can be late at boot), each tick carries
//! a fresh v4 `source_id`, and a tick that finds no subscriber costs nothing. A tick the runtime
//! could not deliver on time is skipped rather than sent in a burst.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use super::Kernel;
use super::bus::BusMessage;
use crate::types::topics::TICK_TOPIC;
use crate::types::{IpcMessage, IpcPayload};
/// The reference's interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Publishes a tick every `interval` until the task is dropped.
pub async fn run(kernel: Arc<Kernel>, interval: Duration) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        kernel.bus().publish(BusMessage::from_kernel(IpcMessage::new(
            TICK_TOPIC,
            IpcPayload::Custom { data: json!({}) },
            Uuid::new_v4(),
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ticks_arrive_at_the_interval_after_a_skipped_first_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let kernel = crate::kernel::tests::kernel_in(dir.path());
        let mut ticks = kernel.bus().subscribe("test", &[TICK_TOPIC]);
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(run(Arc::clone(&kernel), Duration::from_millis(40)));
        let first = ticks.recv().await.expect("first tick");
        assert!(started.elapsed() >= Duration::from_millis(40), "the tick at boot is skipped");
        assert_eq!(first.message.payload, IpcPayload::Custom { data: json!({}) });
        let second = ticks.recv().await.expect("second tick");
        assert_ne!(first.message.source_id, second.message.source_id, "each tick has its own id");
        task.abort();
    }
}
