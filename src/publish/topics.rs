//! MQTT topic names: `<prefix>/<node>/status`, `<prefix>/<node>/<camera>/status`, ..., and
//! Home Assistant's discovery topics `<ha_prefix>/sensor/affectd_<node>/<object>/config`.

/// Builds the topics of one node. Prefix and node id are validated by the config.
#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
}

impl Topics {
    pub fn new(prefix: &str, node: &str) -> Self {
        Self {
            base: format!("{prefix}/{node}"),
        }
    }

    /// `<prefix>/<node>`: every topic of this node starts with it.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `<prefix>/<node>/status`: retained `online` / `offline` (also the last will).
    pub fn node_status(&self) -> String {
        format!("{}/status", self.base)
    }

    /// `<prefix>/<node>/outbox`: retained JSON, the outbox's mode and drop counts.
    pub fn outbox(&self) -> String {
        format!("{}/outbox", self.base)
    }

    /// `<prefix>/<node>/<camera>/status`: retained JSON health of one camera.
    pub fn camera_status(&self, camera: &str) -> String {
        format!("{}/{camera}/status", self.base)
    }

    /// `<prefix>/<node>/<camera>/state`: retained JSON summary of the people in view (Home
    /// Assistant's state topic).
    pub fn camera_state(&self, camera: &str) -> String {
        format!("{}/{camera}/state", self.base)
    }

    /// `<prefix>/<node>/<suffix>`, for stages that publish their own messages.
    pub fn under(&self, suffix: &str) -> String {
        format!("{}/{suffix}", self.base)
    }
}

/// Home Assistant discovery topics of one node: `<ha_prefix>/sensor/affectd_<node>/...`.
#[derive(Debug, Clone)]
pub struct DiscoveryTopics {
    base: String,
}

impl DiscoveryTopics {
    pub fn new(ha_prefix: &str, node: &str) -> Self {
        Self {
            base: format!("{ha_prefix}/sensor/affectd_{node}"),
        }
    }

    /// `<ha_prefix>/sensor/affectd_<node>/<object_id>/config`: one sensor's retained config.
    pub fn config(&self, object_id: &str) -> String {
        format!("{}/{object_id}/config", self.base)
    }

    /// `<ha_prefix>/sensor/affectd_<node>/+/config`: every sensor config of this node.
    pub fn config_filter(&self) -> String {
        format!("{}/+/config", self.base)
    }

    /// The object id of a config topic of this node, `None` for any other topic.
    pub fn object_id<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let object = topic
            .strip_prefix(self.base.as_str())?
            .strip_prefix('/')?
            .strip_suffix("/config")?;
        (!object.is_empty() && !object.contains('/')).then_some(object)
    }
}

/// Why a topic cannot be published to, or `None` when it can.
pub(crate) fn topic_problem(topic: &str) -> Option<&'static str> {
    if topic.is_empty() {
        Some("is empty")
    } else if topic.contains(['+', '#']) {
        Some("contains a wildcard ('+' or '#')")
    } else if topic.contains('\0') {
        Some("contains a NUL character")
    } else if topic.len() > u16::MAX as usize {
        Some("is longer than 65535 bytes")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_documented_layout() {
        let t = Topics::new("affectd", "edge-01");
        assert_eq!(t.node_status(), "affectd/edge-01/status");
        assert_eq!(t.camera_status("door"), "affectd/edge-01/door/status");
        assert_eq!(t.under("door/affect"), "affectd/edge-01/door/affect");
        assert_eq!(t.camera_state("door"), "affectd/edge-01/door/state");
    }

    #[test]
    fn discovery_topics_follow_home_assistants_layout() {
        let d = DiscoveryTopics::new("homeassistant", "edge-01");
        let topic = d.config("door_persons");
        assert_eq!(
            topic,
            "homeassistant/sensor/affectd_edge-01/door_persons/config"
        );
        assert_eq!(
            d.config_filter(),
            "homeassistant/sensor/affectd_edge-01/+/config"
        );
        assert_eq!(d.object_id(&topic), Some("door_persons"));
        assert_eq!(
            d.object_id("homeassistant/sensor/affectd_edge-012/x/config"),
            None
        );
        assert_eq!(
            d.object_id("homeassistant/sensor/affectd_edge-01/a/b/config"),
            None
        );
    }

    #[test]
    fn wildcards_and_empty_topics_are_refused() {
        assert_eq!(topic_problem("a/b"), None);
        assert!(topic_problem("").is_some());
        assert!(topic_problem("a/+/b").is_some());
        assert!(topic_problem("a/#").is_some());
    }
}
