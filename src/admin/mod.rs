//! Administration: the Unix-socket protocol (one JSON object per line each way), the
//! socket server, the `twinlun ctl` client, the apply logic that changes the live node,
//! and the atomic persistence of the catalog.
//!
//! - `protocol`: the typed `Request`/`Response` serde enums (the wire format).
//! - `validate`: syntax checks of names, sizes, IQNs, CHAP credentials.
//! - `apply`: validate, persist, then swap in a change (`apply(host, request)`).
//! - `store`: `DATA_DIR/catalog.json`, written atomically.
//! - `startup`: the catalog a server starts with (saved one, default, config overlay).
//! - `export`: the catalog as a config file (`ctl config export`).
//! - `server`: the socket (mode 0600, peer uid check, line cap).
//! - `client`, `table`: what `ctl` uses to talk and to print.
//! - `follow`: `ctl events`, the client of the event stream.
//! - `time`: wall-clock times as admins read them.

pub mod apply;
pub mod client;
pub mod export;
pub mod follow;
pub mod protocol;
pub mod replication;
pub mod server;
pub mod startup;
pub mod store;
pub mod table;

pub use crate::{time, validate};
pub use apply::{apply, AdminError, Host, RuntimeInfo};
pub use protocol::{Action, Change, ErrorCode, Query, Request, Response};
