//! Camera status: `<prefix>/<node>/<camera>/status`, retained JSON, on every change and every
//! `status_interval_s`. Reconnects re-send the latest value (see [`Publisher::publish_state`]).

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::Publisher;
use crate::types::{CameraId, CameraState, CameraStatus};

/// Counter-only changes closer together than this are sent as one (the latest), so a chatty
/// status source cannot flood the broker. A change of `state` is always sent at once.
const MIN_GAP: Duration = Duration::from_millis(200);

/// Publishes each camera's status whenever its `watch` changes and every
/// [`Publisher::status_interval`]. Runs until shutdown begins; a camera whose sender is gone
/// keeps its last status republished.
pub fn spawn_camera_status(
    publisher: Publisher,
    cameras: Vec<(CameraId, watch::Receiver<CameraStatus>)>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tasks = JoinSet::new();
        for (camera, rx) in cameras {
            tasks.spawn(camera_task(publisher.clone(), camera, rx));
        }
        // Dropping the set aborts the per-camera tasks.
        publisher.closing().await;
        tasks.shutdown().await;
    })
}

async fn camera_task(
    publisher: Publisher,
    camera: CameraId,
    mut rx: watch::Receiver<CameraStatus>,
) {
    let topic = publisher.topics().camera_status(&camera);
    let mut tick = tokio::time::interval(publisher.status_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let min_gap = MIN_GAP.min(publisher.status_interval());
    let mut sender_alive = true;
    let mut last_sent: Option<(Instant, CameraState)> = None;
    loop {
        tokio::select! {
            changed = rx.changed(), if sender_alive => {
                if changed.is_err() {
                    sender_alive = false;
                    continue;
                }
            }
            _ = tick.tick() => {}
        }
        if let Some((at, state)) = last_sent
            && rx.borrow().state == state
        {
            tokio::time::sleep_until(at + min_gap).await;
        }
        let status = rx.borrow_and_update().clone();
        let json = match serde_json::to_vec(&status) {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!(%camera, error = %e, "cannot serialise camera status");
                continue;
            }
        };
        if let Err(e) = publisher.publish_state(topic.as_str(), json) {
            tracing::debug!(%camera, error = %e, "camera status not published; stopping");
            return;
        }
        last_sent = Some((Instant::now(), status.state));
    }
}

#[cfg(test)]
mod tests {
    use crate::types::CameraStatus;

    #[test]
    fn status_json_has_the_documented_fields() {
        let mut s = CameraStatus::starting();
        s.fps = 7.9;
        s.since = "2026-11-22T10:00:00.000Z".into();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"state":"starting","fps":7.9,"frames_dropped":0,"restarts":0,"last_error":null,"since":"2026-11-22T10:00:00.000Z"}"#
        );
    }
}
