//! The JSON bodies of the endpoints. `/api/cameras` and `/api/tracks` are versioned by their
//! `schema` field; `schemas/api-*.schema.json` are their contract, tested here.

use std::time::Duration;

use serde::Serialize;

use super::sources::Snapshot;
use super::state::TrackEntry;
use crate::model::ModelId;
use crate::types::{CameraState, CameraStatus, now_rfc3339};

/// `schema` of [`Cameras`].
pub const CAMERAS_SCHEMA: &str = "affectd.api.cameras/1";
/// `schema` of [`Tracks`].
pub const TRACKS_SCHEMA: &str = "affectd.api.tracks/1";

/// `/api/cameras`: every enabled camera's pipeline.
#[derive(Debug, Serialize)]
pub struct Cameras {
    pub schema: &'static str,
    pub node: String,
    pub time: String,
    pub cameras: Vec<Camera>,
}

#[derive(Debug, Serialize)]
pub struct Camera {
    pub id: String,
    /// As on the camera's MQTT status topic: state, fps, frames_dropped, restarts,
    /// last_error, since.
    #[serde(flatten)]
    pub status: CameraStatus,
    pub frames_decoded: u64,
    pub queued_frames: usize,
    /// Open tracks (begun, not ended).
    pub tracks: usize,
}

impl Cameras {
    /// `tracks` counts a camera's open tracks.
    pub fn new(node: &str, snapshot: Snapshot, tracks: impl Fn(&str) -> usize) -> Self {
        Self {
            schema: CAMERAS_SCHEMA,
            node: node.to_owned(),
            time: now_rfc3339(),
            cameras: snapshot
                .cameras
                .into_iter()
                .map(|c| Camera {
                    tracks: tracks(&c.id),
                    id: c.id.to_string(),
                    status: c.status,
                    frames_decoded: c.frames_decoded,
                    queued_frames: c.queued_frames,
                })
                .collect(),
        }
    }
}

/// `/api/tracks`: every open track with its latest result.
#[derive(Debug, Serialize)]
pub struct Tracks {
    pub schema: &'static str,
    pub node: String,
    pub time: String,
    pub tracks: Vec<TrackEntry>,
}

impl Tracks {
    pub fn new(node: &str, tracks: Vec<TrackEntry>) -> Self {
        Self {
            schema: TRACKS_SCHEMA,
            node: node.to_owned(),
            time: now_rfc3339(),
            tracks,
        }
    }
}

/// `/healthz`: liveness, the systemd watchdog's criterion.
#[derive(Debug, Serialize)]
pub struct Health {
    /// Every watched stage beat within `stage_stall_s`.
    pub live: bool,
    pub stage_stall_s: f64,
    pub stages: Vec<StageBeat>,
    pub watchdog: Watchdog,
}

#[derive(Debug, Serialize)]
pub struct StageBeat {
    pub stage: String,
    pub last_beat_s: f64,
    pub stalled: bool,
}

/// What the service does with systemd's watchdog.
#[derive(Debug, Serialize)]
pub struct Watchdog {
    /// systemd asked for a watchdog (`WatchdogSec=`).
    pub enabled: bool,
    /// How often it is fed while every stage beats.
    pub interval_s: Option<f64>,
    /// It is being fed now (no stage stalled).
    pub fed: bool,
}

impl Health {
    pub fn new(snapshot: &Snapshot, stall: Duration, watchdog: Option<Duration>) -> Self {
        let stages: Vec<StageBeat> = snapshot
            .beats
            .iter()
            .map(|(stage, age)| StageBeat {
                stage: stage.clone(),
                last_beat_s: age.as_secs_f64(),
                stalled: *age > stall,
            })
            .collect();
        let live = stages.iter().all(|s| !s.stalled);
        Self {
            live,
            stage_stall_s: stall.as_secs_f64(),
            stages,
            watchdog: Watchdog {
                enabled: watchdog.is_some(),
                interval_s: watchdog.map(|d| d.as_secs_f64()),
                fed: live,
            },
        }
    }
}

/// `/readyz`: systemd's READY condition.
#[derive(Debug, Serialize)]
pub struct Ready {
    /// Every camera left `starting` (streaming, or retrying after a failure) and the model
    /// (if configured) is loaded. The broker is not required: while it is down results wait
    /// in the outbox; `mqtt` says how it stands.
    pub ready: bool,
    pub cameras: Vec<CameraReady>,
    pub model: ModelReady,
    pub mqtt: MqttReady,
}

#[derive(Debug, Serialize)]
pub struct CameraReady {
    pub id: String,
    pub state: CameraState,
}

#[derive(Debug, Serialize)]
pub struct ModelReady {
    /// `[model]` is configured.
    pub configured: bool,
    /// The model served now.
    pub serving: Option<ModelId>,
}

#[derive(Debug, Serialize)]
pub struct MqttReady {
    /// Reached at least once since start.
    pub reached: bool,
    pub connected: bool,
}

impl Ready {
    pub fn new(snapshot: &Snapshot, model: ModelReady) -> Self {
        let model_ok = !model.configured || model.serving.is_some();
        Self {
            ready: snapshot.cameras_started() && model_ok,
            cameras: snapshot
                .cameras
                .iter()
                .map(|c| CameraReady {
                    id: c.id.to_string(),
                    state: c.status.state,
                })
                .collect(),
            model,
            mqtt: MqttReady {
                reached: snapshot.mqtt_reached,
                connected: snapshot.mqtt_connected,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;
    use crate::model::ModelId;
    use crate::observe::sources::CameraSnapshot;
    use crate::observe::state::tests::affect;
    use crate::publish::{person_message, schema_validator as validator};
    use crate::types::rfc3339;

    fn assert_valid(v: &jsonschema::Validator, json: &serde_json::Value) {
        let errors: Vec<String> = v.iter_errors(json).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}\n{json:#}");
    }

    fn snapshot() -> Snapshot {
        let mut failed = CameraStatus::starting();
        failed.state = CameraState::Failed;
        failed.last_error = Some("could not open resource".into());
        let mut streaming = CameraStatus::starting();
        streaming.state = CameraState::Streaming;
        streaming.fps = 7.9;
        Snapshot {
            cameras: vec![
                CameraSnapshot {
                    id: Arc::from("door"),
                    status: failed,
                    frames_decoded: 0,
                    queued_frames: 0,
                },
                CameraSnapshot {
                    id: Arc::from("walkway"),
                    status: streaming,
                    frames_decoded: 1200,
                    queued_frames: 2,
                },
            ],
            encoder: None,
            capture: None,
            mqtt: Default::default(),
            mqtt_connected: true,
            mqtt_reached: true,
            beats: vec![
                ("analytics".into(), Duration::from_millis(120)),
                ("encoder".into(), Duration::from_secs(40)),
            ],
        }
    }

    #[test]
    fn cameras_match_their_schema() {
        let body = Cameras::new("demo", snapshot(), |c| usize::from(c == "walkway") * 3);
        let json = serde_json::to_value(&body).unwrap();
        assert_valid(&validator("api-cameras.v1.schema.json"), &json);
        assert_eq!(json["cameras"][1]["state"], "streaming");
        assert_eq!(json["cameras"][1]["tracks"], 3);
        // A broken document fails.
        let mut bad = json.clone();
        bad["cameras"][0]["state"] = "sleeping".into();
        assert!(!validator("api-cameras.v1.schema.json").is_valid(&bad));
    }

    #[test]
    fn tracks_match_their_schema() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let sent = t0 + Duration::from_secs(1);
        let mut person = person_message("demo", affect("walkway", 3), sent);
        person.embedding = None;
        let entry = |track_id, person| TrackEntry {
            camera: "walkway".into(),
            track_id,
            first_seen: rfc3339(t0),
            last_seen: rfc3339(t0 + Duration::from_millis(875)),
            bbox: [0.1, 0.2, 0.3, 0.9],
            person,
        };
        let body = Tracks::new("demo", vec![entry(3, Some(person)), entry(4, None)]);
        let json = serde_json::to_value(&body).unwrap();
        assert_valid(&validator("api-tracks.v1.schema.json"), &json);
        // The listed copy is the MQTT message without `seq` (numbered when queued).
        let mut as_published = json["tracks"][0]["person"].clone();
        assert!(as_published.get("seq").is_none());
        as_published["seq"] = 1.into();
        assert_valid(&validator("person.v2.schema.json"), &as_published);
        let mut bad = json.clone();
        bad["tracks"][1]["person"] = serde_json::json!({"schema": "affectd.track/1"});
        assert!(!validator("api-tracks.v1.schema.json").is_valid(&bad));
    }

    #[test]
    fn health_and_readiness_follow_the_watchdog_and_ready_conditions() {
        let s = snapshot();
        let health = Health::new(&s, Duration::from_secs(30), None);
        assert!(!health.live && !health.watchdog.fed);
        assert_eq!(
            health.stages.iter().map(|b| b.stalled).collect::<Vec<_>>(),
            [false, true]
        );
        assert!(Health::new(&s, Duration::from_secs(60), None).live);
        let model = |serving| ModelReady {
            configured: true,
            serving,
        };
        assert!(!Ready::new(&s, model(None)).ready);
        assert!(Ready::new(&s, model(Some(ModelId::new("m", None)))).ready);
        // The broker down since start: ready all the same, and the body says so.
        let mut no_broker = s.clone();
        no_broker.mqtt_connected = false;
        no_broker.mqtt_reached = false;
        let ready = Ready::new(&no_broker, model(Some(ModelId::new("m", None))));
        assert!(ready.ready && !ready.mqtt.reached && !ready.mqtt.connected);
        let mut starting = s.clone();
        starting.cameras[1].status.state = CameraState::Starting;
        assert!(!Ready::new(&starting, model(Some(ModelId::new("m", None)))).ready);
    }
}
