//! The `twinlun` binary: `twinlun serve` runs the target, `twinlun ctl` talks to it.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::{Args, CommandFactory, Parser, Subcommand};

use twinlun::admin::client::Client;
use twinlun::admin::protocol::{
    Action, Change, PeerUpdate, Query, ReplicationCreate, ReplicationModify, Request, Response,
    Secret,
};
use twinlun::admin::server::AdminSocket;
use twinlun::admin::{startup, store, table, validate};
use twinlun::catalog::{Catalog, Compression, QueuePolicy};
use twinlun::chain::ErrorChain;
use twinlun::config::{Config, EngineChoice, LogFormat};
use twinlun::node::Node;
use twinlun::server::Server;
use twinlun::volume::Engine;

mod cli;

const DEFAULT_DATA_DIR: &str = "./twinlun-data";
const DEFAULT_LISTEN: &str = "127.0.0.1:3260";
const DEFAULT_SOCKET: &str = "./twinlun-data/admin.sock";

#[derive(Parser)]
#[command(
    name = "twinlun",
    version,
    about = "Userspace iSCSI target with asynchronous replication"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the target.
    Serve(ServeArgs),
    /// Talk to a running target through its admin socket.
    Ctl(CtlArgs),
    /// Print a shell completion script (bash, zsh or fish).
    Completions(cli::docs::CompletionsArgs),
    /// Print the man page twinlun(1), or write a page per command with --dir.
    Man(cli::docs::ManArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config declaring volumes, groups, targets, LUNs, ACLs, CHAP, peers,
    /// replication sets, schedules and [server] settings (`ctl config export` writes one).
    /// Applied at every start over the saved catalog: what it declares is created or
    /// updated, what it does not mention (objects made with `ctl`) is kept.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the catalog, the volume files and the admin socket live [default: ./twinlun-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// iSCSI portal address; repeat for several [default: 127.0.0.1:3260].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// Admin socket path [default: DATA_DIR/admin.sock].
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<PathBuf>,
    /// io engine: auto (io_uring, else threads), uring or threads [default: auto].
    #[arg(long, value_name = "auto|uring|threads")]
    engine: Option<EngineChoice>,
    /// Serve without write tracking: no dirty pages, no snapshots, no replication.
    /// For measuring what tracking costs (scripts/bench.sh).
    #[arg(long)]
    no_write_tracking: bool,
    /// Accept replication from peers (`ctl peer create` on both sides) on this address.
    #[arg(long, value_name = "ADDR:PORT")]
    replication_listen: Option<SocketAddr>,
    /// Log lines on stderr: text, or json (one object per line) [default: text].
    #[arg(long, value_name = "text|json")]
    log_format: Option<LogFormat>,
    /// Serve Prometheus metrics at GET /metrics on this address (`metrics_listen` in
    /// [server]). Off unless given.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<SocketAddr>,
}

#[derive(Args)]
#[command(
    after_help = "The admin socket: --socket PATH, else the admin_socket (or \
data_dir/admin.sock) of --config FILE's [server] section, else $TWINLUN_SOCKET, else \
./twinlun-data/admin.sock.

Exit status: 0 done; 1 the server refused or failed the request, `peer check` found the \
peer unreachable or unauthenticated, or `watch --until-ready` saw the set in error \
(message on stderr, and with --json the answer on stdout); 2 usage error; 3 the server \
could not be reached; 4 `watch --timeout` ran out."
)]
struct CtlArgs {
    /// Admin socket of the server (wins over --config and $TWINLUN_SOCKET).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Find the admin socket in this serve config ([server] admin_socket, else
    /// data_dir/admin.sock); wins over $TWINLUN_SOCKET.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the raw JSON response (raw numbers: bytes, seconds) instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Server status: version, engine, addresses, uptime, cuts; volumes, groups,
    /// targets, sessions; the replication listener, peers, sets and snapshots.
    Status,
    /// The node's configuration as a `serve --config` file.
    #[command(subcommand)]
    Config(cli::config::ConfigCmd),
    /// Volumes: sparse files served as LUNs.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Volume groups: volumes cut together at one instant (for snapshots and replication).
    #[command(subcommand)]
    Group(GroupCmd),
    /// iSCSI targets.
    #[command(subcommand)]
    Target(TargetCmd),
    /// Map volumes as LUNs of a target.
    #[command(subcommand)]
    Lun(LunCmd),
    /// Which initiators may log in to a target (no entries: any).
    #[command(subcommand)]
    Acl(AclCmd),
    /// CHAP authentication of a target.
    #[command(subcommand)]
    Chap(ChapCmd),
    /// ALUA target port groups: portal N of `serve --listen` (from 1) is group N.
    #[command(subcommand)]
    PortGroup(PortGroupCmd),
    /// Logged-in sessions.
    #[command(subcommand)]
    Session(SessionCmd),
    /// Point-in-time snapshots of a volume or of a group (one instant for all its
    /// volumes); map one read-only with `lun map IQN LUN VOLUME@SNAPSHOT`.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Other twinlun nodes to replicate to or from (the same secret on both sides).
    #[command(subcommand)]
    Peer(PeerCmd),
    /// Replication sets: a volume or a group replicated to a peer.
    #[command(subcommand)]
    Replication(ReplicationCmd),
    /// Start a replication cycle of a set now (its queue policy decides if one runs).
    Replicate {
        /// The replication set.
        name: String,
    },
    /// On a secondary: the recovery points of a set (cut id, time, size).
    RecoveryPoints {
        /// The replication set.
        set: String,
    },
    /// Restart Replication: deletes every recovery point on the secondary and ships all
    /// written data again (refused without --yes).
    Restart {
        /// The replication set.
        name: String,
        /// Confirm that the secondary's recovery points are to be deleted.
        #[arg(long)]
        yes: bool,
        /// A group set only: add this volume to the group and the set; its secondary
        /// is created on the peer (same size, block size and page size). Repeatable.
        #[arg(long = "add-volume", value_name = "VOLUME")]
        add_volume: Vec<String>,
        /// A group set only: take this volume out of the group and the set; it stays
        /// a plain volume here, and its secondary a plain volume on the peer.
        /// Repeatable.
        #[arg(long = "remove-volume", value_name = "VOLUME")]
        remove_volume: Vec<String>,
    },
    /// No cycle runs (scheduled or requested) until `resume`.
    Suspend {
        /// The replication set.
        name: String,
    },
    /// Let a suspended set run cycles again (scheduled and requested).
    Resume {
        /// The replication set.
        name: String,
    },
    /// Abandon the running cycle; the secondary stays at its last recovery point.
    Abort {
        /// The replication set.
        name: String,
    },
    /// Follow state changes (set statuses, cycles, restarts, promotions, logins,
    /// snapshots), one line each, until interrupted; --json: one object per line.
    Events,
    /// Live progress of a replication set, a line per change (a bar on a terminal;
    /// Ctrl-C to stop).
    Watch {
        /// The replication set.
        name: String,
        /// Exit 0 once the set is ready (no cycle running or queued), 1 if it goes to
        /// `error`.
        #[arg(long)]
        until_ready: bool,
        /// Give up after this long (30s, 5m, 1h) with exit status 4.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        timeout: Option<u64>,
    },
    /// Scheduled replications: named tasks running `replicate SET` at a time, then
    /// every interval.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
    /// On the promoted side, once the old primary is back: it keeps its writes since
    /// the common cut in a new volume and becomes the secondary; only pages changed on
    /// either side since that cut are shipped.
    Failback {
        /// The replication set.
        name: String,
    },
    /// On the primary, both sides up (planned): its LUNs stop taking writes, a final
    /// cut ships, the peer promotes at exactly that cut and becomes the primary.
    Switchover {
        /// The replication set.
        name: String,
    },
    /// After a split brain (or instead of a failback), on either side: keep this side's
    /// data (`local`) or the peer's; the other side's writes since the common cut are
    /// kept in new volumes and only the pages changed on either side ship.
    Resolve {
        /// The replication set.
        name: String,
        /// The side whose data survives.
        #[arg(long, value_enum)]
        keep: KeepSide,
    },
    /// On a secondary: make its volume or group an ordinary writable one, at the latest
    /// recovery point or at an older one.
    Promote {
        /// The secondary volume to promote.
        #[arg(
            long,
            value_name = "VOLUME",
            conflicts_with = "group",
            required_unless_present = "group"
        )]
        volume: Option<String>,
        /// The secondary group to promote (all its volumes at one cut).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// Roll back to this recovery point (`recovery-points SET` lists them) instead
        /// of the latest.
        #[arg(long, value_name = "CUT_ID")]
        recovery_point: Option<u64>,
    },
}

/// Which side `resolve` keeps.
#[derive(Clone, Copy, clap::ValueEnum)]
enum KeepSide {
    /// This node's data survives.
    Local,
    /// The peer's data survives.
    Peer,
}

#[derive(Subcommand)]
enum ScheduleCmd {
    /// Add a task that runs `replicate SET` at a time, then every interval.
    Add {
        /// Task name: at most 32 bytes, case-sensitive, unique, none of `" , < \`.
        task: String,
        /// The replication set it replicates.
        #[arg(long)]
        set: String,
        /// RFC 3339 in UTC (2026-11-22T04:00:00Z) or `now`.
        #[arg(long)]
        start: String,
        /// 30s, 5m, 1h, 1d; without it the task runs once.
        #[arg(long, value_name = "DURATION")]
        every: Option<String>,
    },
    /// List tasks: set, start, interval, next run.
    List,
    /// Change a task's set, start or interval (`--every none`: run once).
    Modify {
        /// The task.
        task: String,
        /// Another replication set.
        #[arg(long)]
        set: Option<String>,
        /// A new start: RFC 3339 in UTC or `now`.
        #[arg(long)]
        start: Option<String>,
        /// A new interval (30s, 5m, 1h, 1d), or `none` to run once.
        #[arg(long, value_name = "DURATION|none")]
        every: Option<String>,
    },
    /// Delete a task.
    Delete {
        /// The task.
        task: String,
    },
}

#[derive(Subcommand)]
enum PeerCmd {
    /// Name a peer's replication listener and the secret both sides share.
    Create {
        /// Name of the peer on this node.
        name: String,
        /// The peer's replication listener (its --replication-listen).
        #[arg(value_name = "ADDR:PORT")]
        addr: String,
        /// At least 12 bytes, the same on both sides; `-` reads it from stdin.
        #[arg(long)]
        secret: String,
        /// Cap on what all sets to this peer send together, bytes/s: 50M, 1.5G
        /// (units as for sizes; at least 256K).
        #[arg(long, value_name = "RATE", value_parser = parse_rate_arg)]
        max_rate: Option<String>,
    },
    /// Change a peer's settings; running sets apply them at their next extent.
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true)))]
    Update {
        /// The peer.
        name: String,
        /// Cap on what all sets to this peer send together, bytes/s: 50M, 1.5G.
        #[arg(long, value_name = "RATE", value_parser = parse_rate_arg, group = "change", conflicts_with = "no_max_rate")]
        max_rate: Option<String>,
        /// Remove the peer's cap.
        #[arg(long, group = "change")]
        no_max_rate: bool,
        /// Trust the peer's new TLS key (after it was regenerated): pins the key it
        /// presents now if it answers and proves the secret, else clears the pin so
        /// the next authenticated contact pins.
        #[arg(long, group = "change")]
        accept_new_key: bool,
    },
    /// List peers and the sets using them.
    List,
    /// A peer: address, sets, this node's key, the peer's pinned key, its last link.
    Show {
        /// The peer.
        name: String,
    },
    /// Reachability, TLS and authentication both ways, keys (this node's, pinned,
    /// presented), protocol version, round-trip time; exits 1 unless the peer is
    /// reachable, authenticated and presents its pinned key.
    Check {
        /// The peer.
        name: String,
    },
    /// Forget a peer (refused while a replication set uses it).
    Delete {
        /// The peer.
        name: String,
    },
}

#[derive(Subcommand)]
enum ReplicationCmd {
    /// Replicate a volume or a group to a peer; creates the secondary volumes there.
    Create {
        /// Name of the set (the same on both sides).
        name: String,
        /// Replicate this volume.
        #[arg(
            long,
            value_name = "VOLUME",
            conflicts_with = "group",
            required_unless_present = "group"
        )]
        volume: Option<String>,
        /// Replicate this group (its volumes cut at one instant).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// The peer to replicate to (`peer create`).
        #[arg(long)]
        peer: String,
        /// Run a cycle this often: 30s, 5m, 1h (default: only on `replicate`).
        #[arg(long, value_name = "DURATION")]
        every: Option<String>,
        /// While a cycle runs, `replicate` is refused (discard) or queued once.
        #[arg(
            long,
            value_name = "discard|queue-latest",
            default_value = "queue-latest"
        )]
        queue_policy: String,
        /// Recovery points the secondary keeps.
        #[arg(long, default_value_t = twinlun::admin::protocol::default_keep())]
        keep: u32,
        /// Name the secondary volumes PREFIX + the primary's names.
        #[arg(long, value_name = "PREFIX")]
        target_prefix: Option<String>,
        /// Compress data extents on the wire: zstd (better ratio), lz4 (less CPU) or
        /// none. Extents that do not shrink travel as read.
        #[arg(long, value_name = "zstd|lz4|none", default_value = "none")]
        compress: String,
        /// Cap on what this set sends, bytes/s: 50M, 1.5G (units as for sizes; at
        /// least 256K). Default: no cap (the peer's cap, if any, still applies).
        #[arg(long, value_name = "RATE", value_parser = parse_rate_arg)]
        max_rate: Option<String>,
    },
    /// Change a set's settings, on the primary. The secondary learns what concerns it
    /// (--keep) at once, so it must be reachable for that; a running cycle takes a new
    /// --max-rate at its next extent, --compress at the next cycle.
    #[command(group(
        clap::ArgGroup::new("change")
            .required(true)
            .multiple(true)
            .args(["every", "no_every", "keep", "queue_policy", "max_rate", "no_max_rate", "compress"])
    ))]
    Modify {
        /// The replication set.
        name: String,
        /// Run a cycle this often: 30s, 5m, 1h.
        #[arg(long, value_name = "DURATION", conflicts_with = "no_every")]
        every: Option<String>,
        /// Run cycles only on `replicate`.
        #[arg(long)]
        no_every: bool,
        /// Recovery points the secondary keeps (it prunes at its next commit).
        #[arg(long)]
        keep: Option<u32>,
        /// While a cycle runs, `replicate` is refused (discard) or queued once.
        #[arg(long, value_name = "discard|queue-latest")]
        queue_policy: Option<String>,
        /// Cap on what this set sends, bytes/s: 50M, 1.5G.
        #[arg(long, value_name = "RATE", value_parser = parse_rate_arg, conflicts_with = "no_max_rate")]
        max_rate: Option<String>,
        /// Remove the set's cap.
        #[arg(long)]
        no_max_rate: bool,
        /// zstd, lz4 or none (refused when the peer does not decode it).
        #[arg(long, value_name = "zstd|lz4|none")]
        compress: Option<String>,
    },
    /// List sets: role, status, peer, last cut.
    List,
    /// Status, last cut and lag; progress while running; the last cycle's bytes.
    Show {
        /// The replication set.
        name: String,
    },
    /// Delete the set on both sides; the volumes stay as plain volumes.
    Delete {
        /// The replication set.
        name: String,
        /// Delete this side only, without asking the peer (a peer gone for good): the
        /// set's local state (cut in flight, recovery points) goes, the volumes stay.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum VolumeCmd {
    /// Create a sparse volume (file DATA_DIR/volumes/ID.img, named by its id).
    Create {
        /// Volume name: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with `.`.
        name: String,
        /// Size: bytes, or with K, M, G, T (binary; 1.5G is fine when it is a whole
        /// number of bytes); a multiple of the block size.
        #[arg(long, value_parser = parse_size_arg)]
        size: u64,
        /// Logical block size: 512 or 4096.
        #[arg(long, default_value_t = 512)]
        block_size: u32,
        /// Write-tracking page size: a power of two from 4K to 1M, fixed at creation.
        #[arg(long, value_parser = parse_size_arg, default_value = "4K")]
        page_size: u64,
        /// thin: a sparse file that UNMAP gives blocks back to; thick: every block
        /// allocated now (fallocate), answering as fully provisioned (no UNMAP).
        #[arg(long, default_value = "thin")]
        provisioning: twinlun::catalog::Provisioning,
        /// Offer SANITIZE (overwrite, block erase, crypto erase of the whole volume) on
        /// its LUNs; without it the command does not exist there. Fixed at creation.
        #[arg(long)]
        allow_sanitize: bool,
    },
    /// List volumes: size, block and page size, allocated bytes, group, mappings.
    List,
    /// Show a volume: geometry, tracking page size, dirty pages since the last cut, id,
    /// file, allocated bytes, group, mappings.
    Show {
        /// The volume.
        name: String,
    },
    /// Delete a volume and its file (refused while it is mapped or in a group).
    Delete {
        /// The volume.
        name: String,
    },
    /// On a secondary, for a DR drill: a new writable copy-on-write volume reading a
    /// recovery point where it was not written (nothing is copied; the point is kept
    /// while the clone exists); replication goes on and the point stays as it was.
    Clone {
        /// The new volume's name.
        name: String,
        /// The recovery point: VOLUME@rp:ID (ID from `recovery-points SET`).
        #[arg(long)]
        from: String,
    },
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Create a group of one or more volumes, in cut order; a volume belongs to at most
    /// one group.
    Create {
        /// Group name (the volume name rules).
        name: String,
        /// Its volumes, in cut order.
        #[arg(required = true, value_name = "VOLUME")]
        volumes: Vec<String>,
    },
    /// List groups: size, replication set, volumes.
    List,
    /// Show a group: its volumes in order, total size, replication set.
    Show {
        /// The group.
        name: String,
    },
    /// Add a volume at the end of a group (refused while the group is in a replication set).
    Add {
        /// The group.
        name: String,
        /// The volume to add.
        volume: String,
    },
    /// Remove a volume from a group (refused for its last volume, and while the group is
    /// in a replication set).
    Remove {
        /// The group.
        name: String,
        /// The volume to take out.
        volume: String,
    },
    /// Delete a group; its volumes are kept (refused while it is in a replication set).
    Delete {
        /// The group.
        name: String,
    },
}

#[derive(Subcommand)]
enum TargetCmd {
    /// Create a target (iqn., eui. or naa. name).
    Create {
        /// Target name, checked as RFC 7143 §4.2.7 says (iqn.YYYY-MM.reversed.domain:x).
        iqn: String,
    },
    /// List targets: LUNs, ACL, CHAP user, sessions.
    List,
    /// Show a target: LUNs, ACL, CHAP users, sessions.
    Show {
        /// The target.
        iqn: String,
    },
    /// Delete a target (refused while it has LUNs or logged-in sessions).
    Delete {
        /// The target.
        iqn: String,
    },
}

#[derive(Subcommand)]
enum LunCmd {
    /// Map VOLUME as LUN number LUN of target IQN. VOLUME@SNAPSHOT maps a snapshot of
    /// the volume, always read-only; on a secondary, VOLUME@rp:ID maps a recovery point
    /// read-only for a DR drill (read in place; the point is kept while mapped).
    Map {
        /// The target.
        iqn: String,
        /// LUN number, 0 to 16383.
        lun: u64,
        /// The volume, VOLUME@SNAPSHOT or VOLUME@rp:ID.
        volume: String,
        /// Initiators may read but not write (DATA PROTECT on writes).
        #[arg(long)]
        read_only: bool,
        /// A removable medium: INQUIRY says so (RMB), START STOP UNIT ejects and loads
        /// it, PREVENT ALLOW MEDIUM REMOVAL locks it in.
        #[arg(long)]
        removable: bool,
    },
    /// Remove a LUN from a target (the volume is kept).
    Unmap {
        /// The target.
        iqn: String,
        /// LUN number.
        lun: u64,
    },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Take a snapshot of one volume, or of every volume of a group at one instant.
    Create {
        /// Snapshot name (the volume name rules).
        name: String,
        /// Snapshot this volume.
        #[arg(
            long,
            value_name = "VOLUME",
            conflicts_with = "group",
            required_unless_present = "group"
        )]
        volume: Option<String>,
        /// Snapshot every volume of this group at one instant.
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
    },
    /// List snapshots: cut, time, state, pages kept, bytes used.
    List,
    /// Show a snapshot: its cut, time, pause, pages preserved and bytes used per volume.
    Show {
        /// The snapshot.
        name: String,
    },
    /// Delete a snapshot and free what it keeps (refused while it is mapped).
    Delete {
        /// The snapshot.
        name: String,
    },
}

#[derive(Subcommand)]
enum PortGroupCmd {
    /// Set a group's access state, seen by initiators from their next command.
    Set {
        /// The group: 1 for the first portal, 2 for the second, ...
        group: u16,
        /// active-optimized, active-non-optimized, standby or unavailable.
        state: String,
    },
}

#[derive(Subcommand)]
enum AclCmd {
    /// Allow an initiator to log in (a target with no entries is open to any).
    Add {
        /// The target.
        iqn: String,
        /// The initiator's name (iqn., eui. or naa.).
        initiator: String,
    },
    /// Take an initiator out of the ACL (the last one out opens the target to any).
    Remove {
        /// The target.
        iqn: String,
        /// The initiator's name.
        initiator: String,
    },
}

#[derive(Subcommand)]
enum ChapCmd {
    /// Require CHAP at login (mutual with --mutual-user/--mutual-secret).
    Set {
        /// The target.
        iqn: String,
        /// Name the initiator presents (CHAP_N).
        #[arg(long)]
        user: String,
        /// Secret the initiator proves; `-` reads it from a line of stdin (keeps it out of `ps`).
        #[arg(long)]
        secret: String,
        /// Name the target answers with, for mutual CHAP.
        #[arg(long, requires = "mutual_secret")]
        mutual_user: Option<String>,
        /// Secret the target proves (must differ from --secret); `-` reads the next stdin line.
        #[arg(long, requires = "mutual_user")]
        mutual_secret: Option<String>,
    },
    /// Stop requiring CHAP at login.
    Clear {
        /// The target.
        iqn: String,
    },
}

#[derive(Subcommand)]
enum SessionCmd {
    /// Logged-in sessions: target, initiator, ISID, TSIH, connections, bytes in and
    /// out, negotiated keys.
    List,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    validate::parse_size(s).map_err(|e| e.to_string())
}

/// Checks a `--max-rate` as the server will (so a typo is a usage error), and passes
/// it on as typed.
fn parse_rate_arg(s: &str) -> Result<String, String> {
    validate::parse_rate(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

fn parse_queue_policy(p: &str) -> Result<QueuePolicy, String> {
    match p {
        "discard" => Ok(QueuePolicy::Discard),
        "queue-latest" => Ok(QueuePolicy::QueueLatest),
        other => Err(format!(
            "--queue-policy must be discard or queue-latest, not '{other}'"
        )),
    }
}

fn parse_compress(c: &str) -> Result<Compression, String> {
    Compression::parse(c).ok_or_else(|| format!("--compress must be zstd, lz4 or none, not '{c}'"))
}

fn parse_duration_arg(s: &str) -> Result<u64, String> {
    validate::parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // The causes once each, innermost last (anyhow's `{:#}` repeats a
                // cause its message already quotes).
                let e: &(dyn std::error::Error + 'static) = e.as_ref();
                let _ = writeln!(std::io::stderr(), "twinlun: error: {}", ErrorChain(e));
                ExitCode::FAILURE
            }
        },
        Command::Ctl(args) => ctl(args),
        Command::Completions(args) => cli::docs::completions(args, Cli::command()),
        Command::Man(args) => cli::docs::man(args, Cli::command()),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.with_ansi(ansi).init(),
        // Every span from the root down, so a line says which session or cycle it is of.
        LogFormat::Json => fmt.json().with_span_list(true).init(),
    }
}

// ---- ctl ----------------------------------------------------------------------------

/// Exit statuses of `ctl` (README, "Administering it"): scripts tell a refusal from an
/// unreachable server, and a watch that gave up from a set in error.
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_NO_SERVER: u8 = 3;
const EXIT_TIMEOUT: u8 = 4;

/// Set once stdout's reader has gone away (`ctl watch SET | head -n 1`).
static READER_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Every byte `ctl` prints on stdout goes through here. Rust ignores SIGPIPE, so a
/// reader that went away would make `println!` panic; here it is recorded and the rest
/// of the output dropped, quietly. The exit status stays the command's own (a refusal
/// is still 1); `watch` stops, with status 0, as the reader chose to end it.
fn out(text: &str) {
    use std::sync::atomic::Ordering;
    if READER_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            READER_GONE.store(true, Ordering::Relaxed);
            return;
        }
        complain(&format!("cannot write to stdout: {e}"));
        std::process::exit(EXIT_FAILED.into());
    }
}

fn reader_gone() -> bool {
    READER_GONE.load(std::sync::atomic::Ordering::Relaxed)
}

/// An error on stderr, prefixed; `eprintln!` would panic if stderr itself is closed.
fn complain(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "twinlun ctl: {message}");
}

/// Waits up to `period`, returning early when the reader of a pipe on stdout goes
/// away (then `reader_gone()`): `watch` prints nothing while a set does not change,
/// so a closed pipe would otherwise never be noticed.
fn pause_unless_reader_gone(period: Duration) {
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    let ms = libc::c_int::try_from(period.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one pollfd that lives on this stack frame for the whole call, count 1.
    let n = unsafe { libc::poll(&mut fd, 1, ms) };
    if n > 0 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
        READER_GONE.store(true, std::sync::atomic::Ordering::Relaxed);
        return;
    }
    if n != 0 {
        // stdout is not pollable (closed: POLLNVAL) or poll was interrupted: a plain
        // wait keeps the pace without spinning.
        std::thread::sleep(period);
    }
}

/// The admin socket: `--socket`, else the one `--config` names, else
/// `$TWINLUN_SOCKET`, else the default. Flags win over the environment, as for `serve`.
fn socket_path(args: &CtlArgs) -> Result<PathBuf, String> {
    if let Some(s) = &args.socket {
        return Ok(s.clone());
    }
    if let Some(file) = &args.config {
        let c = Config::load(file).map_err(|e| ErrorChain(&e).to_string())?;
        let server = c.server;
        return Ok(server
            .admin_socket
            .or_else(|| server.data_dir.map(|d| d.join("admin.sock")))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)));
    }
    match std::env::var_os("TWINLUN_SOCKET") {
        Some(s) if !s.is_empty() => Ok(PathBuf::from(s)),
        _ => Ok(PathBuf::from(DEFAULT_SOCKET)),
    }
}

/// How `ctl watch` runs.
struct WatchOptions {
    name: String,
    json: bool,
    until_ready: bool,
    timeout: Option<Duration>,
}

/// `ctl watch`: polls `replication show` twice a second and prints a line (with
/// `--json`, the answer) each time it changes.
fn watch(socket: &Path, w: WatchOptions) -> ExitCode {
    use std::io::IsTerminal;
    use twinlun::replication::status::SetState;
    let tty = !w.json && std::io::stdout().is_terminal();
    let mut client = match Client::connect(socket) {
        Ok(c) => c,
        Err(e) => {
            complain(&ErrorChain(&e).to_string());
            return ExitCode::from(EXIT_NO_SERVER);
        }
    };
    let started = Instant::now();
    let req = Request::from(Query::ReplicationShow {
        name: w.name.clone(),
    });
    let mut last = String::new();
    let end_line = || {
        if tty {
            out("\n");
        }
    };
    loop {
        let (raw, view) = match client.call(&req) {
            Ok((raw, Response::Replication(v))) => (raw, v),
            Ok((raw, Response::Error { message, .. })) => {
                if w.json {
                    out(&format!("{raw}\n"));
                }
                complain(&message);
                return ExitCode::from(EXIT_FAILED);
            }
            Ok((raw, _)) => {
                complain(&format!("unexpected answer to replication show: {raw}"));
                return ExitCode::from(EXIT_NO_SERVER);
            }
            Err(e) => {
                complain(&ErrorChain(&e).to_string());
                return ExitCode::from(EXIT_NO_SERVER);
            }
        };
        let line = if w.json {
            raw
        } else {
            table::progress_line(&view)
        };
        if tty {
            out(&format!("\r\x1b[2K{line}"));
        } else if line != last {
            out(&format!("{line}\n"));
        }
        if reader_gone() {
            return ExitCode::SUCCESS;
        }
        last = line;
        if w.until_ready {
            if view.status == SetState::Ready && view.progress.is_none() && view.queued == 0 {
                end_line();
                return ExitCode::SUCCESS;
            }
            if view.status == SetState::Error {
                end_line();
                complain(&format!(
                    "replication set '{}' is in error: {}",
                    w.name,
                    view.error.as_deref().unwrap_or("no reason given")
                ));
                return ExitCode::from(EXIT_FAILED);
            }
        }
        let mut pause = Duration::from_millis(500);
        if let Some(limit) = w.timeout {
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                end_line();
                complain(&format!(
                    "watch: gave up after {}: replication set '{}' is {}{}",
                    table::human_duration(limit.as_secs()),
                    w.name,
                    view.status,
                    if w.until_ready { ", not ready" } else { "" }
                ));
                return ExitCode::from(EXIT_TIMEOUT);
            }
            pause = pause.min(left);
        }
        pause_unless_reader_gone(pause);
        if reader_gone() {
            return ExitCode::SUCCESS;
        }
    }
}

fn ctl(args: CtlArgs) -> ExitCode {
    let socket = match socket_path(&args) {
        Ok(s) => s,
        Err(e) => {
            complain(&e);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let CtlCommand::Watch {
        name,
        until_ready,
        timeout,
    } = args.command
    {
        let w = WatchOptions {
            name,
            json: args.json,
            until_ready,
            timeout: timeout.map(Duration::from_secs),
        };
        return watch(&socket, w);
    }
    if let CtlCommand::Events = args.command {
        return ExitCode::from(twinlun::admin::follow::follow(&socket, args.json));
    }
    let req = match ctl_request(args.command) {
        Ok(r) => r,
        Err(e) => {
            complain(&e);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = Client::connect(&socket).and_then(|mut c| c.call(&req));
    match result {
        Err(e) => {
            complain(&ErrorChain(&e).to_string());
            ExitCode::from(EXIT_NO_SERVER)
        }
        Ok((raw, resp)) => {
            if args.json {
                out(&format!("{raw}\n"));
            } else if !resp.is_error() {
                out(&table::render(&resp));
            }
            match resp {
                Response::Error { message, .. } => {
                    complain(&message);
                    ExitCode::from(EXIT_FAILED)
                }
                // The check ran, and says the peer cannot be used: a script must see it.
                Response::PeerCheck(p) if !(p.reachable && p.authenticated) => {
                    complain(p.error.as_deref().unwrap_or("peer not authenticated"));
                    ExitCode::from(EXIT_FAILED)
                }
                _ => ExitCode::SUCCESS,
            }
        }
    }
}

/// `-` stands for a line read from stdin (for secrets).
fn from_stdin_if_dash(value: String, what: &str) -> Result<String, String> {
    if value != "-" {
        return Ok(value);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the {what} from stdin: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn ctl_request(cmd: CtlCommand) -> Result<Request, String> {
    Ok(match cmd {
        CtlCommand::Status => Query::Status.into(),
        CtlCommand::Config(c) => c.request(),
        CtlCommand::Volume(v) => match v {
            VolumeCmd::Create {
                name,
                size,
                block_size,
                page_size,
                provisioning,
                allow_sanitize,
            } => Change::VolumeCreate {
                name,
                size,
                block_size,
                page_size,
                provisioning,
                allow_sanitize,
            }
            .into(),
            VolumeCmd::List => Query::VolumeList.into(),
            VolumeCmd::Show { name } => Query::VolumeShow { name }.into(),
            VolumeCmd::Delete { name } => Change::VolumeDelete { name }.into(),
            VolumeCmd::Clone { name, from } => Action::VolumeClone { name, from }.into(),
        },
        CtlCommand::Group(g) => match g {
            GroupCmd::Create { name, volumes } => Change::GroupCreate { name, volumes }.into(),
            GroupCmd::List => Query::GroupList.into(),
            GroupCmd::Show { name } => Query::GroupShow { name }.into(),
            GroupCmd::Add { name, volume } => Change::GroupAdd { name, volume }.into(),
            GroupCmd::Remove { name, volume } => Change::GroupRemove { name, volume }.into(),
            GroupCmd::Delete { name } => Change::GroupDelete { name }.into(),
        },
        CtlCommand::Target(t) => match t {
            TargetCmd::Create { iqn } => Change::TargetCreate { iqn }.into(),
            TargetCmd::List => Query::TargetList.into(),
            TargetCmd::Show { iqn } => Query::TargetShow { iqn }.into(),
            TargetCmd::Delete { iqn } => Change::TargetDelete { iqn }.into(),
        },
        CtlCommand::Lun(l) => match l {
            LunCmd::Map {
                iqn,
                lun,
                volume,
                read_only,
                removable,
            } => Change::LunMap {
                iqn,
                lun,
                volume,
                read_only,
                removable,
            }
            .into(),
            LunCmd::Unmap { iqn, lun } => Change::LunUnmap { iqn, lun }.into(),
        },
        CtlCommand::PortGroup(PortGroupCmd::Set { group, state }) => Change::PortGroupSet {
            group,
            state: serde_json::from_value(serde_json::Value::String(state.clone())).map_err(
                |_| {
                    format!(
                        "unknown state '{state}': use active-optimized, active-non-optimized, standby or unavailable"
                    )
                },
            )?,
        }
        .into(),
        CtlCommand::Acl(a) => match a {
            AclCmd::Add { iqn, initiator } => Change::AclAdd { iqn, initiator }.into(),
            AclCmd::Remove { iqn, initiator } => Change::AclRemove { iqn, initiator }.into(),
        },
        CtlCommand::Chap(c) => match c {
            ChapCmd::Set {
                iqn,
                user,
                secret,
                mutual_user,
                mutual_secret,
            } => Change::ChapSet {
                iqn,
                user,
                secret: Secret(from_stdin_if_dash(secret, "secret")?),
                mutual_user,
                mutual_secret: match mutual_secret {
                    Some(s) => Some(Secret(from_stdin_if_dash(s, "mutual secret")?)),
                    None => None,
                },
            }
            .into(),
            ChapCmd::Clear { iqn } => Change::ChapClear { iqn }.into(),
        },
        CtlCommand::Session(SessionCmd::List) => Query::SessionList.into(),
        CtlCommand::Peer(p) => match p {
            PeerCmd::Create {
                name,
                addr,
                secret,
                max_rate,
            } => Change::PeerCreate {
                name,
                addr,
                secret: Secret(from_stdin_if_dash(secret, "secret")?),
                max_rate,
            }
            .into(),
            PeerCmd::Update {
                name,
                max_rate,
                no_max_rate,
                accept_new_key,
            } => Change::PeerUpdate(PeerUpdate {
                name,
                max_rate: if no_max_rate {
                    Some("none".into())
                } else {
                    max_rate
                },
                accept_new_key,
            })
            .into(),
            PeerCmd::List => Query::PeerList.into(),
            PeerCmd::Check { name } => Query::PeerCheck { name }.into(),
            PeerCmd::Show { name } => Query::PeerShow { name }.into(),
            PeerCmd::Delete { name } => Change::PeerDelete { name }.into(),
        },
        CtlCommand::Replication(r) => match r {
            ReplicationCmd::Create {
                name,
                volume,
                group,
                peer,
                every,
                queue_policy,
                keep,
                target_prefix,
                compress,
                max_rate,
            } => Change::ReplicationCreate(ReplicationCreate {
                name,
                volume,
                group,
                peer,
                every,
                queue_policy: parse_queue_policy(&queue_policy)?,
                keep,
                target_prefix,
                compress: parse_compress(&compress)?,
                max_rate,
            })
            .into(),
            ReplicationCmd::Modify {
                name,
                every,
                no_every,
                keep,
                queue_policy,
                max_rate,
                no_max_rate,
                compress,
            } => Change::ReplicationModify(ReplicationModify {
                name,
                every: if no_every { Some("none".into()) } else { every },
                keep,
                queue_policy: queue_policy
                    .as_deref()
                    .map(parse_queue_policy)
                    .transpose()?,
                max_rate: if no_max_rate {
                    Some("none".into())
                } else {
                    max_rate
                },
                compress: compress.as_deref().map(parse_compress).transpose()?,
            })
            .into(),
            ReplicationCmd::List => Query::ReplicationList.into(),
            ReplicationCmd::Show { name } => Query::ReplicationShow { name }.into(),
            ReplicationCmd::Delete { name, force } => {
                Change::ReplicationDelete { name, force }.into()
            }
        },
        CtlCommand::Replicate { name } => Action::Replicate { name }.into(),
        CtlCommand::RecoveryPoints { set } => Query::RecoveryPoints { name: set }.into(),
        CtlCommand::Restart {
            name,
            yes,
            add_volume,
            remove_volume,
        } => Action::Restart {
            name,
            yes,
            add_volumes: add_volume,
            remove_volumes: remove_volume,
        }
        .into(),
        CtlCommand::Watch { .. } | CtlCommand::Events => {
            unreachable!("watch and events are handled before any request")
        }
        CtlCommand::Schedule(sc) => match sc {
            ScheduleCmd::Add {
                task,
                set,
                start,
                every,
            } => Change::ScheduleAdd {
                task,
                set,
                start,
                every,
            }
            .into(),
            ScheduleCmd::List => Query::ScheduleList.into(),
            ScheduleCmd::Modify {
                task,
                set,
                start,
                every,
            } => Change::ScheduleModify {
                task,
                set,
                start,
                every,
            }
            .into(),
            ScheduleCmd::Delete { task } => Change::ScheduleDelete { task }.into(),
        },
        CtlCommand::Suspend { name } => Action::Suspend { name }.into(),
        CtlCommand::Resume { name } => Action::Resume { name }.into(),
        CtlCommand::Abort { name } => Action::Abort { name }.into(),
        CtlCommand::Failback { name } => Action::Failback { name }.into(),
        CtlCommand::Switchover { name } => Action::Switchover { name }.into(),
        CtlCommand::Resolve { name, keep } => Action::Resolve {
            name,
            keep: match keep {
                KeepSide::Local => twinlun::admin::protocol::ResolveKeep::Local,
                KeepSide::Peer => twinlun::admin::protocol::ResolveKeep::Peer,
            },
        }
        .into(),
        CtlCommand::Promote {
            volume,
            group,
            recovery_point,
        } => Action::Promote {
            volume,
            group,
            recovery_point,
        }
        .into(),
        CtlCommand::Snapshot(s) => match s {
            SnapshotCmd::Create {
                name,
                volume,
                group,
            } => Change::SnapshotCreate {
                name,
                volume,
                group,
            }
            .into(),
            SnapshotCmd::List => Query::SnapshotList.into(),
            SnapshotCmd::Show { name } => Query::SnapshotShow { name }.into(),
            SnapshotCmd::Delete { name } => Change::SnapshotDelete { name }.into(),
        },
    })
}

// ---- serve --------------------------------------------------------------------------

struct Settings {
    config: Option<Config>,
    data_dir: PathBuf,
    listen: Vec<SocketAddr>,
    admin_socket: PathBuf,
    engine: EngineChoice,
    tracking: bool,
    replication_listen: Option<SocketAddr>,
    log_format: LogFormat,
    metrics_listen: Option<SocketAddr>,
}

/// Command-line flags win over the config's [server] section, which wins over defaults.
fn settings(args: ServeArgs) -> anyhow::Result<Settings> {
    let config = args.config.as_deref().map(Config::load).transpose()?;
    let server = config
        .as_ref()
        .map(|c| c.server.clone())
        .unwrap_or_default();
    let data_dir = args
        .data_dir
        .or(server.data_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let listen = if !args.listen.is_empty() {
        args.listen
    } else {
        server
            .listen
            .unwrap_or_else(|| vec![DEFAULT_LISTEN.parse().expect("valid default address")])
    };
    let admin_socket = args
        .admin_socket
        .or(server.admin_socket)
        .unwrap_or_else(|| data_dir.join("admin.sock"));
    let engine = args.engine.or(server.engine).unwrap_or_default();
    Ok(Settings {
        config,
        data_dir,
        listen,
        admin_socket,
        engine,
        tracking: !args.no_write_tracking,
        replication_listen: args.replication_listen.or(server.replication_listen),
        log_format: args.log_format.or(server.log_format).unwrap_or_default(),
        metrics_listen: args.metrics_listen.or(server.metrics_listen),
    })
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let s = settings(args)?;
    init_logging(s.log_format);
    private_umask();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("twinlun")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve_async(s))
}

async fn serve_async(s: Settings) -> anyhow::Result<()> {
    // Ports first: a start refused for a port in use creates nothing in the data dir.
    let portals = Server::listen(&s.listen).await?;
    let replication_listener = match s.replication_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for replication on {addr}"))?,
        ),
        None => None,
    };
    let metrics_listener = match s.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?,
        ),
        None => None,
    };
    store::ensure_data_dir(&s.data_dir)?;
    let _lock = lock_data_dir(&s.data_dir)?;
    make_data_dir_private(&s.data_dir)?;
    let catalog = startup::prepare(&s.data_dir, s.config.as_ref())?;
    let tls_dir = s.data_dir.join(twinlun::replication::tls::TLS_DIR);
    let engine = Engine::start(s.engine.kind()).context("cannot start the io engine")?;
    let mut node = Node::new(s.data_dir.clone(), engine, catalog);
    if !s.tracking {
        tracing::warn!("serving without write tracking: no snapshots, no replication");
        node = node.without_tracking();
    }
    let node = Arc::new(node);
    let tls = node
        .load_tls()
        .with_context(|| format!("cannot set up the replication key in {}", tls_dir.display()))?;
    tracing::info!(key = %tls.fingerprint, "replication TLS key");
    node.open_volumes()?;
    node.start_replication();
    if let Some(listener) = replication_listener {
        let bound = listener.local_addr()?;
        node.set_replication_listen(bound);
        println!("twinlun: replication listening on {bound}");
        tokio::spawn(twinlun::replication::listener::serve(
            node.replication.clone(),
            listener,
        ));
    }

    if let Some(listener) = metrics_listener {
        let bound = listener.local_addr()?;
        println!("twinlun: metrics listening on http://{bound}/metrics");
        node.spawn_metrics_refresh();
        // The endpoint holds the node weakly: it must not keep a stopping node alive.
        let weak = Arc::downgrade(&node);
        let render: twinlun::metrics::http::Render =
            Arc::new(move || weak.upgrade().map(|n| n.metrics_text()).unwrap_or_default());
        tokio::spawn(twinlun::metrics::http::serve(listener, render));
    }

    let server = Server::with_listeners(node.iscsi.clone(), portals);
    let addrs = server.local_addrs();
    node.set_listen_addrs(addrs.clone());
    let admin = AdminSocket::bind(&s.admin_socket)?;
    node.set_admin_socket(s.admin_socket.clone());

    let systemd = twinlun::sdnotify::Service::from_env()?;
    let signal = shutdown_signal()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let notify = systemd.clone();
    tokio::spawn(async move {
        signal.await;
        notify.stopping();
        let _ = stop_tx.send(true);
    });

    print_banner(&addrs, &s.admin_socket, &node.catalog.read());
    let portals: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    systemd.ready(&format!("serving on {}", portals.join(", ")));

    let admin_task = tokio::spawn(admin.run(node.clone(), stopped(stop_rx.clone())));
    server
        .run(twinlun::server::TargetSettings::default(), stopped(stop_rx))
        .await;
    let _ = admin_task.await;
    tracing::info!("shutting down: saving write tracking, syncing volumes");
    node.stop_replication().await;
    node.save_tracking().await;
    let n = node.clone();
    tokio::task::spawn_blocking(move || n.sync_volumes())
        .await
        .context("volume sync task failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves at the first SIGINT (Ctrl-C) or SIGTERM. Both are hooked before it is
/// returned, so a signal that arrives early is not lost to the default action.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("interrupted"),
            _ = term.recv() => tracing::info!("terminated"),
        }
    })
}

/// A backstop behind the stores, which make every file 0600 and folder 0700 by
/// themselves: nothing this process creates is ever readable by others, before any
/// thread starts. A `fault-injection` build keeps the inherited umask when
/// `TWINLUN_TEST_KEEP_UMASK` is set, so the tests prove the stores right without it.
fn private_umask() {
    #[cfg(feature = "fault-injection")]
    if std::env::var_os("TWINLUN_TEST_KEEP_UMASK").is_some() {
        tracing::warn!("TWINLUN_TEST_KEEP_UMASK is set: the umask is left as inherited");
        return;
    }
    // SAFETY: umask only swaps the process's file creation mask; no memory is involved.
    unsafe { libc::umask(0o077) };
}

/// A data dir made beforehand (`mkdir` under umask 022) or by an older version lets
/// others read volume data and secrets: taken back once at start, and said.
fn make_data_dir_private(dir: &Path) -> anyhow::Result<()> {
    let made = twinlun::datadir::make_private(dir)?;
    if let Some(old) = made.data_dir_mode {
        tracing::warn!(
            data_dir = %dir.display(),
            old_mode = %format!("{old:04o}"),
            "the data dir was open to other users (mode {old:04o}): made it 0700"
        );
    }
    if let Some((first, mode)) = made.entries.first() {
        tracing::warn!(
            count = made.entries.len(),
            first = %first.display(),
            first_mode = %format!("{mode:04o}"),
            "files and folders under the data dir were readable by other users: made them private (0600 files, 0700 folders)"
        );
    }
    Ok(())
}

/// One server per data dir: an exclusive flock on DATA_DIR/lock, held for the
/// process's life (the returned file).
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(anyhow!(
            "data dir {} is in use by another twinlun ({}: {})",
            dir.display(),
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(f)
}

/// What tests and admins read on stdout: one fact per line, flushed.
fn print_banner(addrs: &[SocketAddr], socket: &Path, catalog: &Catalog) {
    let mut out = std::io::stdout().lock();
    for a in addrs {
        let _ = writeln!(out, "twinlun: listening on {a}");
    }
    let _ = writeln!(out, "twinlun: admin socket {}", socket.display());
    if let Some(first) = addrs.first() {
        // A wildcard address is not something to connect to: show loopback instead.
        let mut portal = *first;
        if portal.ip().is_unspecified() {
            portal.set_ip(match portal {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if !catalog.targets.is_empty() {
            let _ = writeln!(
                out,
                "twinlun: discover: iscsiadm -m discovery -t sendtargets -p {portal}"
            );
        }
        for (iqn, t) in &catalog.targets {
            let luns: Vec<String> = t
                .luns
                .iter()
                .map(|(n, l)| format!("{n}:{}", l.volume))
                .collect();
            let luns = if luns.is_empty() {
                "no LUNs".to_string()
            } else {
                format!("LUNs {}", luns.join(" "))
            };
            let _ = writeln!(out, "twinlun: target {iqn} ({luns})");
            let _ = writeln!(
                out,
                "twinlun:   login: iscsiadm -m node -T {iqn} -p {portal} --login"
            );
            let lun = t.luns.keys().next().copied().unwrap_or(0);
            let _ = writeln!(out, "twinlun:   qemu: iscsi://{portal}/{iqn}/{lun}");
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Collects `PATH NAME` of every subcommand and argument under `cmd` that has no
    /// help text (clap's own `help`/`version` aside).
    fn without_help(cmd: &clap::Command, path: &str, missing: &mut Vec<String>, seen: &mut usize) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            *seen += 1;
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} <{id}>"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            let p = format!("{path} {}", sub.get_name());
            *seen += 1;
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(p.clone());
            }
            without_help(sub, &p, missing, seen);
        }
    }

    #[test]
    fn every_subcommand_and_argument_has_help() {
        let mut cmd = Cli::command();
        cmd.build();
        cmd.clone().debug_assert();
        let (mut missing, mut seen) = (Vec::new(), 0);
        without_help(&cmd, "twinlun", &mut missing, &mut seen);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
        // The walk reaches the leaves named in issue 14 (it is not vacuous).
        let ctl = cmd.find_subcommand("ctl").expect("ctl");
        let resume = ctl.find_subcommand("resume").expect("ctl resume");
        assert!(resume.get_arguments().any(|a| a.get_id() == "name"));
        let session = ctl.find_subcommand("session").expect("ctl session");
        assert!(session.find_subcommand("list").is_some());
        assert!(seen > 150, "walked only {seen} subcommands and arguments");
    }
}
