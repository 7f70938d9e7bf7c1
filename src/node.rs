//! Node identity: the one name a collector process goes by in Kafka.
//!
//! It names the transactional producers (`collector-flush-<id>`, `collector-transform-<id>`),
//! the consumer group that holds the flusher's committed WAL position, and the `collector-node`
//! header of raw messages. Where it comes from: `--node-id` when given; otherwise `run` and
//! `serve` use the id their WAL generated once and stores (so a WAL keeps its identity, and its
//! Kafka transactions, across restarts), and `transform` uses the host name.
//!
//! Two running processes must never share an id: their producers would fence each other.

use std::fmt;

use thiserror::Error;

/// A validated node id: 1 to 100 characters of ASCII letters, digits, `.`, `_` or `-`, so it
/// is safe inside Kafka ids, group names and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeId(String);

/// An id that cannot name a node.
#[derive(Debug, Error)]
#[error("--node-id {0:?} must be 1 to 100 characters of letters, digits, '.', '_' or '-'")]
pub struct InvalidNodeId(pub String);

impl NodeId {
    /// # Errors
    /// [`InvalidNodeId`] if `id` is empty, too long or has other characters.
    pub fn parse(id: &str) -> Result<NodeId, InvalidNodeId> {
        let valid =
            !id.is_empty() && id.len() <= 100 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if valid {
            Ok(NodeId(id.to_string()))
        } else {
            Err(InvalidNodeId(id.to_string()))
        }
    }

    /// The host name if it is a valid id, else `collector`.
    pub fn host() -> NodeId {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .and_then(|h| NodeId::parse(h.trim()).ok())
            .unwrap_or_else(|| NodeId("collector".into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The flusher's `transactional.id`, which is also the consumer group owning its committed
    /// WAL position.
    pub fn flush_transactional_id(&self) -> String {
        format!("collector-flush-{}", self.0)
    }

    /// The transform worker's `transactional.id`.
    pub fn transform_transactional_id(&self) -> String {
        format!("collector-transform-{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ids_safe_in_kafka_names_are_accepted() {
        assert_eq!(NodeId::parse("web-1.eu_2").unwrap().flush_transactional_id(), "collector-flush-web-1.eu_2");
        for bad in ["", "a b", "ä", "x/y", &"a".repeat(101)] {
            assert!(NodeId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(NodeId::parse(NodeId::host().as_str()).is_ok());
    }
}
