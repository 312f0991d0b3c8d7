//! Home Assistant MQTT discovery (`[mqtt] home_assistant = true`).
//!
//! In: the configured cameras; the person results and track events on their way to MQTT
//! (through [`PeopleInView`], fed by `ResultPublisher`); the retained discovery configs the
//! broker holds for this node. Out (all retained, through the [`Publisher`]): four sensor
//! configs per camera (`discovery.rs`), each camera's state `<prefix>/<node>/<camera>/state`
//! (`view.rs`) when it changed, at most once per [`STATE_INTERVAL`], and an empty payload for
//! every config of this node that names no configured camera (deleting it in Home Assistant).
//! Owns one task, which ends when the publisher starts closing. Availability is the node's
//! status topic (`online`/`offline`, also the last will).

mod discovery;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::inbox::Incoming;
use super::topics::{DiscoveryTopics, Topics};
use super::{MqttConfig, PublishError, Publisher};
use crate::types::CameraId;
pub use view::{PeopleInView, Summary};

/// State topics are published when they changed, at most this often.
pub const STATE_INTERVAL: Duration = Duration::from_secs(1);

/// Publishes the discovery configs of `cameras` and starts the task that keeps their state
/// topics current and removes the configs of cameras no longer configured. `None` unless
/// `config.home_assistant`. Call within the tokio runtime.
pub fn start(
    publisher: &Publisher,
    config: &MqttConfig,
    node: &str,
    cameras: Vec<CameraId>,
) -> Option<Arc<PeopleInView>> {
    if !config.home_assistant {
        return None;
    }
    let discovery = DiscoveryTopics::new(&config.home_assistant_prefix, node);
    let topics = publisher.topics().clone();
    let mut ours = BTreeSet::new();
    for camera in &cameras {
        for (topic, json) in discovery::configs(&topics, &discovery, node, camera) {
            retain(publisher, topic, json.to_string().into_bytes());
        }
        ours.extend(discovery::object_ids(camera));
    }
    // Subscribed at every connect: the broker then sends every retained config of this node.
    let incoming = publisher.subscribe(discovery.config_filter());
    let view = Arc::new(PeopleInView::new(cameras));
    tokio::spawn(run(
        publisher.clone(),
        Arc::clone(&view),
        Cleanup {
            discovery,
            topics,
            ours,
        },
        incoming,
    ));
    tracing::info!(
        prefix = %config.home_assistant_prefix,
        "Home Assistant discovery published"
    );
    Some(view)
}

/// Deletes configs of this node that name no configured camera, and their state topic.
struct Cleanup {
    discovery: DiscoveryTopics,
    topics: Topics,
    /// Object ids of the configs published now.
    ours: BTreeSet<String>,
}

impl Cleanup {
    fn on_message(&self, publisher: &Publisher, message: Incoming) {
        // Empty: a deletion (ours, echoed back); our own configs are kept.
        if message.payload.is_empty() {
            return;
        }
        let Some(object_id) = self.discovery.object_id(&message.topic) else {
            return;
        };
        if self.ours.contains(object_id) {
            return;
        }
        tracing::info!(
            topic = %message.topic,
            "removing the Home Assistant config of a camera no longer configured"
        );
        if let Some(camera) = discovery::camera_of(object_id) {
            retain(publisher, self.topics.camera_state(camera), Vec::new());
        }
        retain(publisher, message.topic, Vec::new());
    }
}

async fn run(
    publisher: Publisher,
    view: Arc<PeopleInView>,
    cleanup: Cleanup,
    mut incoming: mpsc::Receiver<Incoming>,
) {
    let mut tick = tokio::time::interval(STATE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent: BTreeMap<CameraId, Summary> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = publisher.closing() => return,
            Some(message) = incoming.recv() => cleanup.on_message(&publisher, message),
            _ = tick.tick() => {
                for (camera, summary) in view.summaries() {
                    if sent.get(&camera) == Some(&summary) {
                        continue;
                    }
                    let json = serde_json::to_vec(&summary).expect("a summary serialises");
                    retain(&publisher, publisher.topics().camera_state(&camera), json);
                    sent.insert(camera, summary);
                }
            }
        }
    }
}

/// Publishes retained state; a refusal (too many topics) is logged, one at shutdown is not.
fn retain(publisher: &Publisher, topic: String, payload: Vec<u8>) {
    match publisher.publish_state(topic, payload) {
        Ok(()) | Err(PublishError::ShutDown) => {}
        Err(e) => tracing::warn!(error = %e, "Home Assistant message not queued"),
    }
}
