//! `twinlun ctl config ...`: the node's configuration as a file.

use clap::Subcommand;

use twinlun::admin::protocol::{Query, Request};

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Print a TOML config that `serve --config FILE` accepts on an empty data dir and
    /// that recreates this node's volumes, groups, targets, LUNs, ACLs, CHAP, peers,
    /// replication sets and schedules (not data, snapshots or replication progress).
    /// Secrets are masked, and a masked file is refused by `serve`, unless
    /// --with-secrets.
    Export {
        /// Write CHAP and peer secrets in clear instead of masking them.
        #[arg(long)]
        with_secrets: bool,
    },
}

impl ConfigCmd {
    /// The admin request; the server builds the file from its catalog and `ctl` prints
    /// it as it is (`--json` wraps it in the response object).
    pub fn request(self) -> Request {
        match self {
            ConfigCmd::Export { with_secrets } => Query::ConfigExport { with_secrets }.into(),
        }
    }
}
