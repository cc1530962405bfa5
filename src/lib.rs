//! twinlun: a userspace iSCSI target serving file-backed LUNs.
//!
//! Layers (see DESIGN.md): `iscsi` is the wire protocol without I/O, `scsi` decodes
//! CDBs into plans, `volume` owns files and the io engine, `server` ties sockets to
//! sessions, `admin` is the control socket, `catalog` is the persisted model.

pub mod admin;
pub mod catalog;
pub mod chain;
pub mod config;
pub mod datadir;
pub mod durable;
pub mod events;
pub mod iscsi;
pub mod metrics;
pub mod node;
pub mod replication;
pub mod scsi;
pub mod sdnotify;
pub mod server;
pub mod throttle;
pub mod time;
pub mod tracking;
pub mod validate;
pub mod volume;
