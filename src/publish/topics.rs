//! MQTT topic names: `<prefix>/<node>/status`, `<prefix>/<node>/<camera>/status`, ...

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

    /// `<prefix>/<node>/<camera>/status`: retained JSON health of one camera.
    pub fn camera_status(&self, camera: &str) -> String {
        format!("{}/{camera}/status", self.base)
    }

    /// `<prefix>/<node>/<suffix>`, for stages that publish their own messages.
    pub fn under(&self, suffix: &str) -> String {
        format!("{}/{suffix}", self.base)
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
    }

    #[test]
    fn wildcards_and_empty_topics_are_refused() {
        assert_eq!(topic_problem("a/b"), None);
        assert!(topic_problem("").is_some());
        assert!(topic_problem("a/+/b").is_some());
        assert!(topic_problem("a/#").is_some());
    }
}
