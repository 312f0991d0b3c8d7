//! Home Assistant MQTT discovery configs: four sensors per camera, in Home Assistant's
//! `sensor` schema, under `<ha_prefix>/sensor/affectd_<node>/<camera>_<sensor>/config`.
//!
//! In: the node's topics and a camera id. Out: `(topic, JSON)` per sensor. Owns the sensor
//! list (names, templates, icons, units), nothing at run time.

use serde_json::{Value, json};

use crate::publish::topics::{DiscoveryTopics, Topics};

/// One sensor of a camera: the object id is `<camera>_<key>`.
struct Sensor {
    key: &'static str,
    name: &'static str,
    /// The field of the state JSON it shows.
    field: &'static str,
    icon: &'static str,
    unit: Option<&'static str>,
    /// A number (`state_class: measurement`, long-term statistics) rather than text.
    numeric: bool,
}

const SENSORS: [Sensor; 4] = [
    Sensor {
        key: "persons",
        name: "People in view",
        field: "persons",
        icon: "mdi:account-group",
        unit: Some("people"),
        numeric: true,
    },
    Sensor {
        key: "dominant_emotion",
        name: "Dominant emotion",
        field: "dominant_emotion",
        icon: "mdi:emoticon-outline",
        unit: None,
        numeric: false,
    },
    Sensor {
        key: "valence",
        name: "Mean valence",
        field: "valence",
        icon: "mdi:thumbs-up-down",
        unit: None,
        numeric: true,
    },
    Sensor {
        key: "arousal",
        name: "Mean arousal",
        field: "arousal",
        icon: "mdi:lightning-bolt",
        unit: None,
        numeric: true,
    },
];

/// The object ids of a camera's sensors, `<camera>_<sensor>`.
pub fn object_ids(camera: &str) -> impl Iterator<Item = String> + '_ {
    SENSORS.iter().map(move |s| format!("{camera}_{}", s.key))
}

/// The camera an object id of ours belongs to, if it names one of our sensors.
pub fn camera_of(object_id: &str) -> Option<&str> {
    SENSORS.iter().find_map(|s| {
        object_id
            .strip_suffix(s.key)?
            .strip_suffix('_')
            .filter(|c| !c.is_empty())
    })
}

/// Every sensor config of `camera`: `(config topic, retained JSON)`.
pub fn configs(
    topics: &Topics,
    discovery: &DiscoveryTopics,
    node: &str,
    camera: &str,
) -> Vec<(String, Value)> {
    let version = env!("CARGO_PKG_VERSION");
    let device = json!({
        "identifiers": [format!("affectd_{node}_{camera}")],
        "name": format!("affectd {node} {camera}"),
        "manufacturer": "affectd",
        "model": "affectd camera (people, emotion, valence/arousal)",
        "sw_version": version,
    });
    SENSORS
        .iter()
        .map(|s| {
            let object_id = format!("{camera}_{}", s.key);
            let mut config = json!({
                "name": s.name,
                "unique_id": format!("affectd_{node}_{object_id}"),
                "state_topic": topics.camera_state(camera),
                // `null` renders as `None`: Home Assistant shows the sensor as unknown.
                "value_template": format!("{{{{ value_json.{} }}}}", s.field),
                "availability_topic": topics.node_status(),
                "payload_available": "online",
                "payload_not_available": "offline",
                "icon": s.icon,
                "device": device,
                "origin": {"name": "affectd", "sw_version": version},
            });
            if s.numeric {
                config["state_class"] = json!("measurement");
            }
            if let Some(unit) = s.unit {
                config["unit_of_measurement"] = json!(unit);
            }
            if s.numeric && s.unit.is_none() {
                config["suggested_display_precision"] = json!(2);
            }
            (discovery.config(&object_id), config)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_sensors_per_camera_with_the_keys_home_assistant_needs() {
        let topics = Topics::new("affectd", "edge-01");
        let discovery = DiscoveryTopics::new("homeassistant", "edge-01");
        let configs = configs(&topics, &discovery, "edge-01", "front_door");
        assert_eq!(configs.len(), 4);
        let (topic, valence) = &configs[2];
        assert_eq!(
            topic,
            "homeassistant/sensor/affectd_edge-01/front_door_valence/config"
        );
        assert_eq!(valence["unique_id"], "affectd_edge-01_front_door_valence");
        assert_eq!(valence["state_topic"], "affectd/edge-01/front_door/state");
        assert_eq!(valence["value_template"], "{{ value_json.valence }}");
        assert_eq!(valence["availability_topic"], "affectd/edge-01/status");
        assert_eq!(valence["state_class"], "measurement");
        assert_eq!(
            valence["device"]["identifiers"][0],
            "affectd_edge-01_front_door"
        );
        assert!(configs[1].1.get("state_class").is_none(), "text sensor");
        assert_eq!(configs[0].1["unit_of_measurement"], "people");
    }

    #[test]
    fn object_ids_map_back_to_their_camera() {
        for id in object_ids("front_door") {
            assert_eq!(camera_of(&id), Some("front_door"), "{id}");
        }
        assert_eq!(camera_of("x_dominant_emotion"), Some("x"));
        assert_eq!(camera_of("_valence"), None);
        assert_eq!(camera_of("something_else"), None);
    }
}
