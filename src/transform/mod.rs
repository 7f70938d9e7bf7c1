//! Transform: raw requests → one row per event.
//!
//! # Contract
//! In: messages of the raw topic, read as a consumer group (`read_committed`, from the earliest
//! offset when the group is new). Out: for each event, one message on the transformed topic,
//! key = `user_id`, value = `{"event_type","event_time","user_id","browser","device"}`
//! ([`row`]). A raw message the transform cannot read goes, unchanged, to the dead-letter topic
//! with the reason in the `collector-error` header; it never stalls its partition. Offsets are
//! committed only after every row and dead letter of the batch was confirmed by Kafka.
//! Not guaranteed here: exactly-once. A crash between the rows' delivery and the commit (or a
//! rebalance in that window) produces those rows again: at-least-once.

pub mod row;
mod worker;

pub use row::{Row, Transformer};
pub use worker::{spawn, TransformOptions};
