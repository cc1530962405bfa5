//! Asynchronous replication to a peer twinlun (DESIGN.md, "Replication").
//!
//! - `wire`: the peer protocol (frames, control messages, extents, secret proofs).

pub mod wire;
