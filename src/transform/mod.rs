//! Transform: raw requests → one row per event.
//!
//! # Contract
//! In: messages of the raw topic, read as a consumer group (`read_committed`, from the earliest
//! offset when the group is new). Out: for each event, one message on the transformed topic,
//! key = `user_id`, value = `{"event_type","event_time","user_id","browser","device"}`
//! ([`row`], reading bodies with [`crate::schema`]). A raw message the transform cannot read
//! goes, unchanged, to the dead-letter topic with the reason in the `collector-error` header;
//! it never stalls its partition. It produces through the [`crate::kafka::outbox`]. What it
//! did and how its clients are connected is in its [`TransformStatus`], for the status page.
//!
//! Exactly-once (default): rows, dead letters and the consumer offsets of a batch are one Kafka
//! transaction (`transactional.id` = `collector-transform-<node id>`), so for `read_committed`
//! readers each raw message yields its rows once, across crashes and rebalances. Fenced by
//! another live worker with the same node id, the worker stops with an error.
//! At-least-once: offsets are committed after Kafka confirmed every row; a crash (or rebalance)
//! in between produces the batch's rows again.

pub mod admin;
/// Public only for the fuzz targets (`fuzz/`); the worker is its one real caller.
#[doc(hidden)]
pub mod outs;
pub mod row;
pub mod source;
mod status;
mod worker;

pub use row::{Row, Transformer};
pub use source::BatchLimit;
pub use status::{TransformSnapshot, TransformStatus};
pub use worker::{spawn, TransformOptions};

#[cfg(test)]
mod tests;
