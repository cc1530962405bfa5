//! The `twinlun` binary: `twinlun serve` runs the target, `twinlun ctl` talks to it.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use clap::{Args, CommandFactory, Parser, Subcommand};

use twinlun::admin::client::Client;
use twinlun::admin::protocol::{Action, Change, Query, Request, Response, Secret};
use twinlun::admin::server::AdminSocket;
use twinlun::admin::{startup, store, table, validate};
use twinlun::catalog::{Catalog, Compression, QueuePolicy};
use twinlun::config::{Config, EngineChoice};
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
}

#[derive(Args)]
#[command(
    after_help = "Exit status: 0 done; 1 the server refused or failed the request \
(message on stderr, and with --json the error object on stdout); 2 usage error; \
3 the server could not be reached."
)]
struct CtlArgs {
    /// Admin socket of the server.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the raw JSON response instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Server status: version, engine, addresses, counts.
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
        name: String,
    },
    /// On a secondary: the recovery points of a set (cut id, time, size).
    RecoveryPoints {
        set: String,
    },
    /// Restart Replication: deletes every recovery point on the secondary and ships all
    /// written data again (refused without --yes).
    Restart {
        name: String,
        #[arg(long)]
        yes: bool,
    },
    /// No cycle runs (scheduled or requested) until `resume`.
    Suspend {
        name: String,
    },
    Resume {
        name: String,
    },
    /// Abandon the running cycle; the secondary stays at its last recovery point.
    Abort {
        name: String,
    },
    /// Live progress of a replication set (a bar on a terminal; Ctrl-C to stop).
    Watch {
        name: String,
        /// Exit once the set is ready (no cycle running, no error).
        #[arg(long)]
        until_ready: bool,
    },
    /// Scheduled replications: named tasks running `replicate SET` at a time, then
    /// every interval.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
    /// On a secondary: make its volume or group an ordinary writable one, at the latest
    /// recovery point or at an older one.
    Promote {
        #[arg(
            long,
            value_name = "VOLUME",
            conflicts_with = "group",
            required_unless_present = "group"
        )]
        volume: Option<String>,
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        #[arg(long, value_name = "CUT_ID")]
        recovery_point: Option<u64>,
    },
}

#[derive(Subcommand)]
enum ScheduleCmd {
    /// TASK: at most 32 bytes, case-sensitive, unique, none of `" , < \`.
    Add {
        task: String,
        #[arg(long)]
        set: String,
        /// RFC 3339 in UTC (2026-11-22T04:00:00Z) or `now`.
        #[arg(long)]
        start: String,
        /// 30s, 5m, 1h, 1d; without it the task runs once.
        #[arg(long, value_name = "DURATION")]
        every: Option<String>,
    },
    List,
    /// Change a task's set, start or interval (`--every none`: run once).
    Modify {
        task: String,
        #[arg(long)]
        set: Option<String>,
        #[arg(long)]
        start: Option<String>,
        #[arg(long, value_name = "DURATION|none")]
        every: Option<String>,
    },
    Delete {
        task: String,
    },
}

#[derive(Subcommand)]
enum PeerCmd {
    /// Name a peer's replication listener and the secret both sides share.
    Create {
        name: String,
        #[arg(value_name = "ADDR:PORT")]
        addr: String,
        /// At least 12 bytes; `-` reads it from stdin.
        #[arg(long)]
        secret: String,
    },
    List,
    /// Reachability, authentication both ways, protocol version, round-trip time.
    Check {
        name: String,
    },
    /// Refused while a replication set uses it.
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum ReplicationCmd {
    /// Replicate a volume or a group to a peer; creates the secondary volumes there.
    Create {
        name: String,
        #[arg(
            long,
            value_name = "VOLUME",
            conflicts_with = "group",
            required_unless_present = "group"
        )]
        volume: Option<String>,
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
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
    },
    List,
    /// Status, last cut and lag; progress while running; the last cycle's bytes.
    Show {
        name: String,
    },
    /// Delete the set on both sides; the volumes stay as plain volumes.
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum VolumeCmd {
    /// Create a sparse volume (file DATA_DIR/volumes/ID.img, named by its id).
    Create {
        name: String,
        /// Size: bytes, or with K, M, G, T (binary); a multiple of the block size.
        #[arg(long, value_parser = parse_size_arg)]
        size: u64,
        /// Logical block size: 512 or 4096.
        #[arg(long, default_value_t = 512)]
        block_size: u32,
        /// Write-tracking page size: a power of two from 4K to 1M, fixed at creation.
        #[arg(long, value_parser = parse_size_arg, default_value = "4K")]
        page_size: u64,
    },
    /// List volumes: size, block and page size, allocated bytes, group, mappings.
    List,
    /// Show a volume: geometry, tracking page size, dirty pages since the last cut, id,
    /// file, allocated bytes, group, mappings.
    Show { name: String },
    /// Delete a volume and its file (refused while it is mapped or in a group).
    Delete { name: String },
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Create a group of one or more volumes, in cut order; a volume belongs to at most
    /// one group.
    Create {
        name: String,
        #[arg(required = true, value_name = "VOLUME")]
        volumes: Vec<String>,
    },
    List,
    /// Show a group: its volumes in order, total size, replication set.
    Show {
        name: String,
    },
    /// Add a volume at the end of a group (refused while the group is in a replication set).
    Add {
        name: String,
        volume: String,
    },
    /// Remove a volume from a group (refused for its last volume, and while the group is
    /// in a replication set).
    Remove {
        name: String,
        volume: String,
    },
    /// Delete a group; its volumes are kept (refused while it is in a replication set).
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum TargetCmd {
    /// Create a target (iqn., eui. or naa. name).
    Create {
        iqn: String,
    },
    List,
    Show {
        iqn: String,
    },
    /// Delete a target (refused while it has LUNs or logged-in sessions).
    Delete {
        iqn: String,
    },
}

#[derive(Subcommand)]
enum LunCmd {
    /// Map VOLUME as LUN number LUN of target IQN. VOLUME@SNAPSHOT maps a snapshot of
    /// the volume, always read-only.
    Map {
        iqn: String,
        lun: u64,
        volume: String,
        #[arg(long)]
        read_only: bool,
    },
    Unmap {
        iqn: String,
        lun: u64,
    },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Take a snapshot of one volume, or of every volume of a group at one instant.
    Create {
        name: String,
        #[arg(
            long,
            value_name = "VOLUME",
            conflicts_with = "group",
            required_unless_present = "group"
        )]
        volume: Option<String>,
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
    },
    List,
    /// Show a snapshot: its cut, time, pause, pages preserved and bytes used per volume.
    Show {
        name: String,
    },
    /// Delete a snapshot and free what it keeps (refused while it is mapped).
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum AclCmd {
    Add { iqn: String, initiator: String },
    Remove { iqn: String, initiator: String },
}

#[derive(Subcommand)]
enum ChapCmd {
    /// Require CHAP at login (mutual with --mutual-user/--mutual-secret).
    Set {
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
    Clear {
        iqn: String,
    },
}

#[derive(Subcommand)]
enum SessionCmd {
    List,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    validate::parse_size(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logging();
            match serve(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("twinlun: error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ctl(args) => ctl(args),
        Command::Completions(args) => cli::docs::completions(args, Cli::command()),
        Command::Man(args) => cli::docs::man(args, Cli::command()),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

// ---- ctl ----------------------------------------------------------------------------

/// Exit codes of `ctl`: 0 done, 1 the server refused or failed the request, 2 usage
/// (clap), 3 the server could not be reached or answered garbage.
/// `ctl watch`: polls `replication show` twice a second.
fn watch(socket: &Path, name: String, until_ready: bool) -> ExitCode {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    let mut client = match Client::connect(socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("twinlun ctl: {e}");
            return ExitCode::from(3);
        }
    };
    let req = Request::from(Query::ReplicationShow { name });
    let mut last = String::new();
    loop {
        let view = match client.call(&req) {
            Ok((_, Response::Replication(v))) => v,
            Ok((_, Response::Error { message, .. })) => {
                eprintln!("twinlun ctl: {message}");
                return ExitCode::from(1);
            }
            Ok(_) => return ExitCode::from(1),
            Err(e) => {
                eprintln!("twinlun ctl: {e}");
                return ExitCode::from(3);
            }
        };
        let line = table::progress_line(&view);
        if tty {
            print!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
        } else if line != last {
            println!("{line}");
        }
        last = line;
        if until_ready
            && view.status == twinlun::replication::status::SetState::Ready
            && view.progress.is_none()
            && view.queued == 0
        {
            if tty {
                println!();
            }
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn ctl(args: CtlArgs) -> ExitCode {
    if let CtlCommand::Watch { name, until_ready } = args.command {
        return watch(&args.socket, name, until_ready);
    }
    let req = match ctl_request(args.command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("twinlun ctl: {e}");
            return ExitCode::from(2);
        }
    };
    let result = Client::connect(&args.socket).and_then(|mut c| c.call(&req));
    match result {
        Err(e) => {
            eprintln!("twinlun ctl: {e}");
            ExitCode::from(3)
        }
        Ok((raw, resp)) => {
            let mut out = std::io::stdout().lock();
            if args.json {
                let _ = writeln!(out, "{raw}");
            } else if !resp.is_error() {
                let _ = write!(out, "{}", table::render(&resp));
            }
            let _ = out.flush();
            match resp {
                Response::Error { message, .. } => {
                    eprintln!("twinlun ctl: {message}");
                    ExitCode::from(1)
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
            } => Change::VolumeCreate {
                name,
                size,
                block_size,
                page_size,
            }
            .into(),
            VolumeCmd::List => Query::VolumeList.into(),
            VolumeCmd::Show { name } => Query::VolumeShow { name }.into(),
            VolumeCmd::Delete { name } => Change::VolumeDelete { name }.into(),
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
            } => Change::LunMap {
                iqn,
                lun,
                volume,
                read_only,
            }
            .into(),
            LunCmd::Unmap { iqn, lun } => Change::LunUnmap { iqn, lun }.into(),
        },
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
            PeerCmd::Create { name, addr, secret } => Change::PeerCreate {
                name,
                addr,
                secret: Secret(from_stdin_if_dash(secret, "secret")?),
            }
            .into(),
            PeerCmd::List => Query::PeerList.into(),
            PeerCmd::Check { name } => Query::PeerCheck { name }.into(),
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
            } => Change::ReplicationCreate {
                name,
                volume,
                group,
                peer,
                every,
                queue_policy: match queue_policy.as_str() {
                    "discard" => QueuePolicy::Discard,
                    "queue-latest" => QueuePolicy::QueueLatest,
                    other => {
                        return Err(format!(
                            "--queue-policy must be discard or queue-latest, not '{other}'"
                        ))
                    }
                },
                keep,
                target_prefix,
                compress: Compression::parse(&compress).ok_or_else(|| {
                    format!("--compress must be zstd, lz4 or none, not '{compress}'")
                })?,
            }
            .into(),
            ReplicationCmd::List => Query::ReplicationList.into(),
            ReplicationCmd::Show { name } => Query::ReplicationShow { name }.into(),
            ReplicationCmd::Delete { name } => Change::ReplicationDelete { name }.into(),
        },
        CtlCommand::Replicate { name } => Action::Replicate { name }.into(),
        CtlCommand::RecoveryPoints { set } => Query::RecoveryPoints { name: set }.into(),
        CtlCommand::Restart { name, yes } => Action::Restart { name, yes }.into(),
        CtlCommand::Watch { .. } => unreachable!("watch is handled before any request"),
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
    })
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let s = settings(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("twinlun")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve_async(s))
}

async fn serve_async(s: Settings) -> anyhow::Result<()> {
    store::ensure_data_dir(&s.data_dir)?;
    let _lock = lock_data_dir(&s.data_dir)?;
    let catalog = startup::prepare(&s.data_dir, s.config.as_ref())?;
    let engine = Engine::start(s.engine.kind()).context("cannot start the io engine")?;
    let mut node = Node::new(s.data_dir.clone(), engine, catalog);
    if !s.tracking {
        tracing::warn!("serving without write tracking: no snapshots, no replication");
        node = node.without_tracking();
    }
    let node = Arc::new(node);
    node.open_volumes()?;
    node.start_replication();
    if let Some(addr) = s.replication_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for replication on {addr}"))?;
        let bound = listener.local_addr()?;
        println!("twinlun: replication listening on {bound}");
        tokio::spawn(twinlun::replication::listener::serve(
            node.replication.clone(),
            listener,
        ));
    }

    let server = Server::bind(node.iscsi.clone(), &s.listen).await?;
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
