//! Wire types of the IBP GeoDNS cluster protocol.
//!
//! This crate is the contract with the Go nodes that run in production today
//! (`docs/spec/protocol.md`). It owns:
//!
//! * the message types of protocol §3 ([`Proposal`], [`Vote`], [`FinalizeMessage`],
//!   [`ClusterMessage`], [`NodeInfo`], the usage and downtime request/response shapes);
//! * the subject names of §2 ([`subjects`]) and the role strings of §1 ([`Role`]);
//! * the JSON rules: [`decode`] is at least as lenient as Go's `encoding/json`
//!   (case-insensitive keys, `null` as empty, unknown keys ignored) and [`encode`]
//!   emits exactly the keys, key order and string escaping of the Go encoder;
//! * the extensions this project adds on top ([`ext`]): header names and new
//!   subjects that Go nodes never see or ignore.
//!
//! Nothing here does I/O; every function is pure and cheap to fuzz.

mod data;
mod decode;
mod encode;
pub mod ext;
mod messages;
mod node_id;
mod role;
pub mod subjects;
mod time;

pub use data::Data;
pub use decode::{DecodeError, DecodeErrorKind, WireDecode, decode, decode_lenient};
pub use encode::{encode, encode_to_string};
pub use messages::{
    CheckType, ClusterMessage, DowntimeEvent, DowntimeRequest, DowntimeResponse, FinalizeMessage,
    NodeInfo, Proposal, UsageRecord, UsageRequest, UsageResponse, Vote, parse_usage_date,
};
pub use node_id::{NodeId, NodeIdError};
pub use role::{Role, UnknownRole};
pub use time::{TimeParseError, WireTime};
