//! Home Assistant MQTT discovery (`[mqtt] home_assistant = true`) of a real daemon on the
//! bundled clip, against a real mosquitto: retained sensor configs with the keys Home
//! Assistant needs, state topics carrying values, and the configs of a camera removed from
//! the config deleted at the next start.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use daemon::{Daemon, NODE, config, detect_sections, fixture, tiny_model_section};
use mosquitto::{Mosquitto, Msg, Subscriber};
use serde_json::Value;

/// The clip, where people walk.
const WALKWAY: &str = "walkway";
/// videotestsrc at 1 frame/s: nobody there; removed from the config at the restart.
const LAB: &str = "lab";
const SENSORS: [&str; 4] = ["persons", "dominant_emotion", "valence", "arousal"];

fn config_topic(camera: &str, sensor: &str) -> String {
    format!("homeassistant/sensor/affectd_{NODE}/{camera}_{sensor}/config")
}

fn state_topic(camera: &str) -> String {
    format!("affectd/{NODE}/{camera}/state")
}

fn camera_section(id: &str) -> String {
    match id {
        WALKWAY => format!(
            "[[camera]]\nid = \"{WALKWAY}\"\nuri = \"file:{}\"\n",
            fixture("vtest.mp4").display()
        ),
        _ => format!("[[camera]]\nid = \"{id}\"\nuri = \"test:ball\"\nfps = 1\n"),
    }
}

/// The retained messages a fresh subscriber to `filter` gets within `wait`: topic -> payload.
fn retained(broker: &Mosquitto, filter: &str, wait: Duration) -> BTreeMap<String, Vec<u8>> {
    let sub = Subscriber::new(broker, filter);
    std::thread::sleep(wait);
    sub.messages()
        .into_iter()
        .filter(|m| m.retain)
        .map(|m| (m.topic, m.payload))
        .collect()
}

fn json(m: &[u8]) -> Value {
    serde_json::from_slice(m).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(m)))
}

/// What Home Assistant's MQTT sensor schema and device registry need, and what we promise.
fn assert_sensor_config(camera: &str, sensor: &str, c: &Value) {
    let s = |key: &str| {
        c[key]
            .as_str()
            .unwrap_or_else(|| panic!("{camera}_{sensor}: no string {key} in {c:#}"))
    };
    assert!(!s("name").is_empty());
    assert_eq!(s("unique_id"), format!("affectd_{NODE}_{camera}_{sensor}"));
    assert_eq!(s("state_topic"), state_topic(camera));
    let field = format!("{{{{ value_json.{sensor} }}}}");
    assert_eq!(s("value_template"), field);
    assert_eq!(s("availability_topic"), format!("affectd/{NODE}/status"));
    assert_eq!(s("payload_available"), "online");
    assert_eq!(s("payload_not_available"), "offline");
    assert!(s("icon").starts_with("mdi:"), "{c:#}");
    let device = &c["device"];
    assert_eq!(
        device["identifiers"],
        serde_json::json!([format!("affectd_{NODE}_{camera}")])
    );
    for key in ["name", "manufacturer", "model", "sw_version"] {
        assert!(device[key].is_string(), "device.{key}: {c:#}");
    }
    assert_eq!(device["sw_version"], env!("CARGO_PKG_VERSION"));
    if sensor == "dominant_emotion" {
        assert!(c.get("state_class").is_none(), "{c:#}");
    } else {
        assert_eq!(s("state_class"), "measurement");
    }
    if sensor == "persons" {
        assert!(c["unit_of_measurement"].is_string(), "{c:#}");
    }
}

/// The state JSON: every field present, numbers within their ranges, a known emotion.
fn assert_state(state: &Value, classes: &BTreeSet<String>) {
    let keys: BTreeSet<&str> = state
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys, BTreeSet::from(SENSORS), "{state}");
    assert!(state["persons"].is_u64(), "{state}");
    for va in ["valence", "arousal"] {
        let v = &state[va];
        assert!(
            v.is_null() || v.as_f64().is_some_and(|x| (-1.0..=1.0).contains(&x)),
            "{va}: {state}"
        );
    }
    let emotion = &state["dominant_emotion"];
    assert!(
        emotion.is_null() || emotion.as_str().is_some_and(|e| classes.contains(e)),
        "{state}"
    );
    if state["persons"] == 0 {
        assert!(emotion.is_null() && state["valence"].is_null(), "{state}");
    }
}

#[test]
fn discovery_configs_are_retained_states_carry_values_and_removed_cameras_are_deleted() {
    let broker = Mosquitto::start();
    let configs_sub = Subscriber::new(
        &broker,
        &format!("homeassistant/sensor/affectd_{NODE}/+/config"),
    );
    let states = Subscriber::new(&broker, &format!("affectd/{NODE}/+/state"));
    let classes: BTreeSet<String> = affectd::readout::default_classes()
        .into_iter()
        .map(|c| c.name)
        .collect();

    let cameras = camera_section(WALKWAY) + &camera_section(LAB);
    let extra = "home_assistant = true\n".to_owned() + &detect_sections() + &tiny_model_section();
    let mut daemon = Daemon::start(&config(&broker, &cameras, &extra));
    let t0 = Instant::now();

    // People walk through the clip: the walkway's state counts them and reads them out.
    let walkway = state_topic(WALKWAY);
    let seen = states.wait_for(Duration::from_secs(150), |m| {
        m.topic == walkway && json(&m.payload)["valence"].is_number()
    });
    assert!(daemon.is_running(), "{}", daemon.log());
    let seen = seen.unwrap_or_else(|| {
        panic!(
            "no state with a valence on {walkway}; got {:?}\n{}",
            states.messages().iter().map(Msg::text).collect::<Vec<_>>(),
            daemon.log()
        )
    });
    eprintln!(
        "first state with people after {:?}: {}",
        t0.elapsed(),
        seen.text()
    );
    let people = json(&seen.payload);
    assert!(people["persons"].as_u64().unwrap() > 0, "{people}");
    assert!(people["dominant_emotion"].is_string(), "{people}");
    // A few more seconds of changes, then every state so far is checked.
    std::thread::sleep(Duration::from_secs(4));
    let all = states.messages();
    for m in &all {
        assert!(
            m.topic == walkway || m.topic == state_topic(LAB),
            "{}",
            m.topic
        );
        assert_state(&json(&m.payload), &classes);
    }
    // Published when changed, at most once a second per camera (plus the first).
    let on_walkway: Vec<&Msg> = all.iter().filter(|m| m.topic == walkway).collect();
    let span = on_walkway.last().unwrap().at - on_walkway[0].at;
    assert!(
        on_walkway.len() as f64 <= span.as_secs_f64() + 2.0,
        "{} states in {span:?}",
        on_walkway.len()
    );
    // Nobody in the lab: its state is there, and empty.
    let lab = states
        .wait_for(Duration::from_secs(5), |m| m.topic == state_topic(LAB))
        .expect("the lab's state");
    assert_eq!(json(&lab.payload)["persons"], 0);

    // A subscriber arriving now gets every config (retained), with the keys HA needs.
    let filter = format!("homeassistant/sensor/affectd_{NODE}/+/config");
    let configs = retained(&broker, &filter, Duration::from_secs(2));
    let want: BTreeSet<String> = [WALKWAY, LAB]
        .iter()
        .flat_map(|c| SENSORS.map(|s| config_topic(c, s)))
        .collect();
    assert_eq!(configs.keys().cloned().collect::<BTreeSet<_>>(), want);
    let mut unique_ids = BTreeSet::new();
    for camera in [WALKWAY, LAB] {
        for sensor in SENSORS {
            let c = json(&configs[&config_topic(camera, sensor)]);
            assert_sensor_config(camera, sensor, &c);
            unique_ids.insert(c["unique_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(unique_ids.len(), 8);
    // The state topics and the availability are retained too.
    let retained_states = retained(
        &broker,
        &format!("affectd/{NODE}/+/state"),
        Duration::from_secs(1),
    );
    assert!(
        retained_states.contains_key(&walkway),
        "{retained_states:?}"
    );
    let status = retained(
        &broker,
        &format!("affectd/{NODE}/status"),
        Duration::from_millis(500),
    );
    assert_eq!(
        status.values().next().map(Vec::as_slice),
        Some(&b"online"[..])
    );

    let (exit, _) = daemon.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{}", daemon.log());
    drop(daemon);

    // Restart without the lab (and without the model: discovery needs neither).
    let mark = configs_sub.mark();
    let mut daemon = Daemon::start(&config(
        &broker,
        &camera_section(WALKWAY),
        "home_assistant = true\n",
    ));
    for sensor in SENSORS {
        let topic = config_topic(LAB, sensor);
        let deleted = configs_sub.wait_for_after(mark, Duration::from_secs(30), |m| {
            m.topic == topic && m.payload.is_empty()
        });
        assert!(
            deleted.is_some(),
            "{topic} was not deleted\n{}",
            daemon.log()
        );
    }
    assert!(
        states
            .wait_for(Duration::from_secs(5), |m| m.topic == state_topic(LAB)
                && m.payload.is_empty())
            .is_some(),
        "the lab's state was not cleared"
    );
    // What a Home Assistant connecting now finds: the walkway's sensors only.
    let configs = retained(&broker, &filter, Duration::from_secs(2));
    let want: BTreeSet<String> = SENSORS.map(|s| config_topic(WALKWAY, s)).into();
    assert_eq!(configs.keys().cloned().collect::<BTreeSet<_>>(), want);
    let retained_states = retained(
        &broker,
        &format!("affectd/{NODE}/+/state"),
        Duration::from_secs(1),
    );
    assert!(
        !retained_states.contains_key(&state_topic(LAB)),
        "{retained_states:?}"
    );
    assert!(
        daemon
            .log()
            .contains("removing the Home Assistant config of a camera no longer configured"),
        "{}",
        daemon.log()
    );
    let (exit, _) = daemon.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{}", daemon.log());
}
