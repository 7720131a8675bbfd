//! The command line: clap definitions and the dispatch from a parsed command to the library.
//! Commands return values; printing happens here.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::{Identity, Session};
use crate::cluster_dir::{ClusterFile, Layout};
use crate::exit::{CmdResult, Op, OrExit, FETCH_ABORT, NO_ANSWER, USAGE};
use crate::local_cluster::{self, NodeAction, Target, UpArgs};
use crate::tenant::mode::SetModeArgs;
use crate::tenant::{self, failover, history, CreateArgs, Mode, OnLag};
use crate::{process, status, wal};

/// The deadline of a command when `--timeout` is not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// `status` is read-only and asked interactively, so it gives up sooner by default.
pub const DEFAULT_STATUS_TIMEOUT: Duration = Duration::from_secs(10);

const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    wal fetch only: the segment does not exist
  2    bad usage or input, unknown tenant, refused request (e.g. a segment conflict, a manual
       failover without --accept-data-loss)
  3    no answer: the cluster could not be reached, or the outcome is unknown (a push; a
       switchover or failover, which is then not resent: check `tenant history`)
  4    verify only: a member was unreachable, or holds a missing or damaged chunk that no
       healthy copy could repair
  128  wal fetch only: any other failure (PostgreSQL aborts recovery on a status above 125)";

/// tetradctl: operate a tetrad cluster and archive WAL into it.
#[derive(Debug, Parser)]
#[command(name = "tetradctl", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// The cluster directory; commands find the cluster through DIR/cluster.toml.
    #[arg(long, global = true, env = "TETRAD_CLUSTER", default_value = "./tetrad-local", value_name = "DIR")]
    pub cluster: PathBuf,

    /// Overall deadline of the command, retries and redirects included (e.g. 30s, 2m)
    /// [default: 60s; 10s for status].
    #[arg(long, global = true, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,

    /// The client identity to present: DIR/NAME names DIR/NAME.crt, DIR/NAME.key and DIR/ca.crt
    /// [default: the cluster directory's admin identity, DIR/identities/admin].
    #[arg(long, global = true, env = "TETRAD_IDENTITY", value_name = "DIR/NAME")]
    pub identity: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole cluster on this machine and drill failures.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Make a cluster CA and issue client identities with a role.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Show nodes, the meta leader and every tenant with its per-region lag.
    #[command(long_about = "Show nodes, the meta leader and every tenant with its per-region lag.\n\n\
        --json prints {\"nodes\":[{\"id\",\"region\",\"up\",\"api_addr\",\"last_heartbeat_ago_ms\"}], \
        \"meta_leader\" (null when none), \"tenants\":[{\"name\",\"mode\",\"state\",\"epoch\",\"leader\",\"term\",\
        \"primary\",\"voters\",\"learners\",\"segments\",\"rpo_target_ms\",\"on_lag\",\"regions\",\
        \"lag\":[{\"region\",\"writes\",\"bytes\",\"seconds\"}]}]}; fields may be added, never renamed. \
        The table warns about degraded and leaderless tenants and lag past a near-sync rpo target. \
        Exits 3 if no node answers.")]
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Create and inspect tenants.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Archive and restore WAL segments (PostgreSQL archive_command / restore_command).
    #[command(subcommand)]
    Wal(WalCmd),
    /// Put, get, list and delete a tenant's records: small values with versions.
    #[command(subcommand)]
    Record(RecordCmd),
    /// Check every chunk of a tenant on every member of its current epoch, repairing from a healthy copy.
    #[command(
        long_about = "Check every chunk of a tenant on every member of its current epoch.\n\nEach member checks every chunk its catalog references against its blake3, batch by batch, and repairs a missing or damaged one from another member's healthy copy. A progress line shows on a terminal; then a table per member, or with --json {\"tenant\", \"ok\", \"members\":[{\"member\", \"reachable\", \"error\", \"checked\", \"bytes\", \"missing\", \"damaged\", \"repaired\", \"unrepaired\"}]} (fields may be added, never renamed).\n\n--timeout bounds reaching the cluster and the wait for each progress message, not the whole run: a tenant of many GiB takes as long as its batches.\n\nExit codes: 0 every member reached and whole (repairs included); 4 a member unreachable, or a chunk missing or damaged and unrepaired; 2 unknown tenant or bad usage; 3 the cluster could not be reached or stopped answering."
    )]
    Verify {
        #[command(flatten)]
        tenant: TenantArg,
        #[arg(long)]
        json: bool,
    },
    /// Show the audit log: admin actions and refused requests, oldest first (admin only).
    #[command(
        long_about = "Show the meta group's audit log (admin identity only): every admin action (tenant create, switchover, failover, mode change, cluster init) with its outcome, and every refused request with the certificate subject, role, action and tenant. Identical refusals within a second on one node are one entry with a count. --since takes a duration before now (1h, 30m) or an RFC 3339 time. --json prints {\"entries\":[{\"seq\",\"at\",\"last_at\",\"node\",\"subject\",\"role\",\"peer\",\"action\",\"tenant\",\"outcome\",\"detail\",\"count\"}],\"dropped\",\"retained_max\"}; fields may be added, never renamed."
    )]
    Audit {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_parser = crate::audit::parse_since)]
        since: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Make a new cluster CA: DIR/ca.crt and DIR/ca.key (0600). Refuses to replace one.
    Init {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The cluster's name, in the CA's common name.
        #[arg(long, default_value = "tetrad")]
        name: String,
    },
    /// Issue a client identity: DIR/NAME.crt, DIR/NAME.key (0600) and DIR/ca.crt.
    #[command(long_about = "Issue a client identity: DIR/NAME.crt, DIR/NAME.key (0600) and DIR/ca.crt, \
        signed by the CA in --ca DIR (ca.crt, ca.key) or else the cluster directory's. Roles: admin \
        (everything), tenant:T (tenant T's reads and writes), tenant:T:read (T's reads only). A NAME that \
        is one of the cluster's node names is refused. Use it with --identity DIR/NAME.")]
    Issue {
        name: String,
        #[arg(long, value_parser = role_arg, value_name = "admin|tenant:T[:read]")]
        role: tetrad_config::role::Role,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A CA made by `certs init` [default: the cluster directory's].
        #[arg(long, value_name = "DIR")]
        ca: Option<PathBuf>,
    },
}

fn role_arg(s: &str) -> Result<tetrad_config::role::Role, String> {
    tetrad_config::role::Role::parse(s).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Create and start a local cluster: four regions (eu-central, eu-west, us-east, ap-south).
    Up {
        /// Run every node on this machine, on free loopback ports (the only kind for now).
        #[arg(long, required = true)]
        local: bool,
        #[arg(long, default_value_t = 3, value_name = "N")]
        nodes_per_region: u32,
        /// TOML file with optional [raft] and [liveness] tables applied to every node.
        #[arg(long, value_name = "FILE")]
        tuning: Option<PathBuf>,
        /// Wipe an existing, stopped cluster in DIR (its data included) and create a new one.
        #[arg(long)]
        force: bool,
    },
    /// Stop every node (SIGTERM, then SIGKILL after 10 s); the directory and data stay.
    Down {
        /// Also remove the cluster directory.
        #[arg(long)]
        purge: bool,
    },
    /// SIGKILL every node of a region (a drill).
    KillRegion { region: String },
    /// Start the nodes of a region again.
    StartRegion { region: String },
    /// SIGKILL one node, e.g. eu-west-2.
    KillNode { name: String },
    /// Start one node again.
    StartNode { name: String },
}

/// `--mode`: one of the API's spellings (sync, near-sync, async), listed in `--help`.
fn mode_arg() -> impl clap::builder::TypedValueParser<Value = Mode> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Mode::ALL.map(Mode::as_str))
        .map(|s| Mode::parse(&s).expect("clap accepts only the listed spellings"))
}

/// `--on-lag`: block or degrade, listed in `--help`.
fn on_lag_arg() -> impl clap::builder::TypedValueParser<Value = OnLag> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(OnLag::ALL.map(OnLag::as_str))
        .map(|s| OnLag::parse(&s).expect("clap accepts only the listed spellings"))
}

#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a tenant.
    Create {
        name: String,
        #[arg(long, value_parser = mode_arg())]
        mode: Mode,
        /// Where the tenant's leader lives when healthy [default: the cluster picks].
        #[arg(long, value_name = "REGION")]
        primary: Option<String>,
        /// near-sync: the longest span of acked writes a region loss may lose (e.g. 1s, 500ms).
        #[arg(long, value_parser = parse_ms_duration, value_name = "DURATION")]
        rpo_target: Option<Duration>,
        /// near-sync: when the lag gate closes, block writes or degrade to async.
        #[arg(long, value_parser = on_lag_arg())]
        on_lag: Option<OnLag>,
        /// Keep the tenant's replicas in these regions only (comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "R1,R2")]
        regions: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// List tenants.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one tenant.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Planned switchover: move the tenant's primary region without losing a write.
    #[command(long_about = "Planned switchover: move the tenant's primary region without losing a write. \
        The cluster waits until REGION holds every write, then moves the voters and the leadership \
        there, and records the switchover in the tenant's history.\n\n\
        The request is never sent twice: waiting for REGION to catch up can take a while, so give \
        --timeout room. Exits 0 done; 2 refused (unknown tenant or region, a placement that REGION \
        cannot hold); 3 no answer, or an answer that leaves the outcome open: check `tetradctl tenant \
        history NAME` before running it again.")]
    Switchover {
        name: String,
        /// The new primary region.
        #[arg(long, value_name = "REGION")]
        to: String,
        #[arg(long)]
        json: bool,
    },
    /// Manual failover: force promotion of a replica in REGION, accepting data loss.
    #[command(long_about = "Manual failover: force promotion of the most up-to-date replica in REGION \
        into a new epoch. Acked writes that REGION lacks are lost; the command refuses to run without \
        --accept-data-loss. It obeys the same liveness fencing as an automatic failover (the old leader \
        stops acking before the new epoch starts) and prints the loss record: the count of lost writes \
        (at least; the most once the old region's voters rejoin) and the time window in which every \
        lost write was acked. `tetradctl tenant history NAME` shows the record as it fills in.\n\n\
        The request is never sent twice. Exits 0 done; 2 refused (no --accept-data-loss, unknown \
        tenant or region); 3 no answer, or an answer that leaves the outcome open: check the \
        history before running it again.")]
    Failover {
        name: String,
        /// The region to promote.
        #[arg(long, value_name = "REGION")]
        to: String,
        /// Accept that acked writes not yet in REGION are lost.
        #[arg(long)]
        accept_data_loss: bool,
        #[arg(long)]
        json: bool,
    },
    /// Change a live tenant's replication mode; options left out keep their current values.
    SetMode {
        name: String,
        #[arg(long, value_parser = mode_arg())]
        mode: Mode,
        /// near-sync: the longest span of acked writes a region loss may lose (e.g. 1s, 500ms).
        #[arg(long, value_parser = parse_ms_duration, value_name = "DURATION")]
        rpo_target: Option<Duration>,
        /// near-sync: when the lag gate closes, block writes or degrade to async.
        #[arg(long, value_parser = on_lag_arg())]
        on_lag: Option<OnLag>,
        #[arg(long)]
        json: bool,
    },
    /// Show a tenant's failovers, switchovers, mode changes and state changes, oldest first.
    #[command(long_about = "Show a tenant's failovers, switchovers, mode changes and state changes, \
        oldest first, with each failover's loss record and the divergent tails kept aside.\n\n\
        --json prints a list of events, each {\"kind\", \"at\", \"from_epoch\", \"to_epoch\", \"rto_ms\", \
        \"lost_writes_min\", \"lost_writes_max\", \"loss_window_start\", \"loss_window_end\", \"detail\", \
        \"divergent\"}: kind is failover, manual-failover, switchover, mode-change, degraded or healthy; \
        times are RFC 3339 UTC; lost_writes_max is null until a majority of the old epoch's voters \
        have rejoined with intact storage; the loss window is null when nothing can have been lost.")]
    History {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct TenantArg {
    /// The tenant whose WAL archive this is.
    #[arg(long, value_name = "TENANT")]
    pub tenant: String,
}

#[derive(Debug, Subcommand)]
pub enum WalCmd {
    /// Archive one WAL segment; the segment's name is the file's name.
    #[command(long_about = "Archive one WAL segment; the segment's name is the file's name.\n\n\
        Use as PostgreSQL's archive_command: `tetradctl wal push --tenant T %p`. Pushing the same \
        name with the same bytes again succeeds (\"already present\"); the same name with other bytes \
        fails and changes nothing.\n\n\
        Exit codes: 0 acked durable; 2 bad input (missing or unreadable file), unknown tenant, or a \
        segment conflict; 3 outcome unknown or cluster unreachable: retry the same push, it is idempotent.")]
    Push {
        #[command(flatten)]
        tenant: TenantArg,
        /// The segment file (PostgreSQL's %p); its file name is the segment's name.
        file: PathBuf,
    },
    /// Restore one WAL segment to DEST.
    #[command(long_about = "Restore one WAL segment to DEST, verified (size and blake3) and fsynced \
        before it appears under its name.\n\n\
        Use as PostgreSQL's restore_command: `tetradctl wal fetch --tenant T %f %p`.\n\n\
        Exit codes: 0 restored; 1 the segment does not exist (PostgreSQL takes this as the end of the \
        archive); 2 bad usage, unknown tenant, or DEST not writable; 128 any other failure, e.g. the \
        cluster cannot be reached. PostgreSQL aborts recovery on an exit status above 125 instead of \
        ending it early, so an unreachable cluster never makes a standby or a point-in-time recovery \
        stop short of the archive's end.")]
    Fetch {
        #[command(flatten)]
        tenant: TenantArg,
        /// The segment's name (PostgreSQL's %f).
        name: String,
        /// Where to write it (PostgreSQL's %p).
        dest: PathBuf,
    },
    /// List a tenant's segments.
    List {
        #[command(flatten)]
        tenant: TenantArg,
        /// Only segments whose name starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RecordCmd {
    /// Put one record (a new version), optionally only if the key is at a version.
    #[command(
        long_about = "Put one record: KEY (UTF-8, up to 512 bytes, may contain /) gets the bytes         of FILE (`-` or none: stdin, up to 1 MiB) at a new version, printed on success.

        --if-version N puts only if the key holds version N (0: only if the key is absent).         Retrying a put after outcome unknown is safe, a conditional one too.

        Exit codes: 0 acked durable; 2 bad input or a refused request; 3 outcome unknown or cluster         unreachable: retry; 4 the condition failed (the current version is printed; nothing changed)."
    )]
    Put {
        #[command(flatten)]
        tenant: TenantArg,
        key: String,
        /// The value's file; `-` or absent: stdin.
        file: Option<PathBuf>,
        #[arg(long, value_name = "N")]
        if_version: Option<u64>,
    },
    /// Read one record (linearizable) to FILE, `-` or none for stdout (only the value's bytes).
    #[command(
        long_about = "Read one record (linearizable) to FILE; with `-` or no FILE only the         value's bytes go to stdout, and the version goes to stderr.

        Exit codes: 0 read; 1 the key does not exist; 2 bad usage or unknown tenant; 3 the cluster         could not be reached."
    )]
    Get {
        #[command(flatten)]
        tenant: TenantArg,
        key: String,
        file: Option<PathBuf>,
    },
    /// List a tenant's records (key and version) in key order, page by page, never capped.
    List {
        #[command(flatten)]
        tenant: TenantArg,
        /// Only keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete one record, optionally only if the key is at a version.
    #[command(long_about = "Delete one record. --if-version N deletes only if the key holds version N.

        Exit codes: 0 acked durable (also when the key was absent, unconditionally); 2 bad input; 3         outcome unknown or cluster unreachable; 4 the condition failed (the current version is printed).")]
    Delete {
        #[command(flatten)]
        tenant: TenantArg,
        key: String,
        #[arg(long, value_name = "N")]
        if_version: Option<u64>,
    },
}

/// Parses a duration such as `1s`, `500ms` or `2m` (humantime); zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 1s, 500ms, 2m)"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// Parses a duration that the API carries in milliseconds (an rpo target): like
/// [`parse_duration`], and it must be a whole number of milliseconds.
pub fn parse_ms_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err("must be a whole number of milliseconds (e.g. 1s, 500ms)".into());
    }
    if u64::try_from(d.as_millis()).is_err() {
        return Err("is too long".into());
    }
    Ok(d)
}

impl Cli {
    /// The exit code for a failure before the command could start (e.g. no async runtime).
    pub fn internal_failure_code(&self) -> u8 {
        if self.op() == Op::Fetch {
            FETCH_ABORT
        } else {
            NO_ANSWER
        }
    }

    fn op(&self) -> Op {
        match &self.command {
            Command::Wal(WalCmd::Fetch { .. }) => Op::Fetch,
            Command::Wal(WalCmd::Push { .. }) => Op::Push,
            Command::Record(RecordCmd::Put { .. } | RecordCmd::Delete { .. }) => Op::Push,
            _ => Op::Other,
        }
    }

    fn timeout(&self) -> Duration {
        match (&self.command, self.timeout) {
            (_, Some(t)) => t,
            (Command::Status { .. }, None) => DEFAULT_STATUS_TIMEOUT,
            (_, None) => DEFAULT_TIMEOUT,
        }
    }
}

/// A session with the cluster in `layout`. A fetch that cannot find its cluster exits 128, not
/// 2: PostgreSQL would take 2 as "no such segment" and could end recovery early.
fn session(ctx: &Ctx, op: Op) -> CmdResult<Session> {
    let code = if op == Op::Fetch { FETCH_ABORT } else { USAGE };
    let cluster = ClusterFile::load(&ctx.layout.root).or_exit(code)?;
    let path = ctx.identity.clone().unwrap_or_else(|| Identity::default_path(&ctx.layout.root));
    let identity = Identity::load(&path).or_exit(code)?;
    Ok(Session::new(cluster.api_addrs(), ctx.timeout, identity))
}

/// What every command gets from the global flags.
struct Ctx {
    layout: Layout,
    timeout: Duration,
    identity: Option<PathBuf>,
}

fn cluster_file(layout: &Layout) -> CmdResult<ClusterFile> {
    ClusterFile::load(&layout.root).or_exit(USAGE)
}

fn print_report(report: &[(String, NodeAction)]) {
    for (name, action) in report {
        println!("{name}: {}", action.describe());
    }
}

pub async fn run(cli: Cli) -> CmdResult<()> {
    let op = cli.op();
    let timeout = cli.timeout();
    let absolute_code = if op == Op::Fetch { FETCH_ABORT } else { USAGE };
    let root = std::path::absolute(&cli.cluster).or_exit(absolute_code)?;
    let layout = Layout::new(root);
    let ctx = Ctx { layout: layout.clone(), timeout, identity: cli.identity };
    match cli.command {
        Command::Certs(cmd) => run_certs(cmd, &layout),
        Command::Cluster(cmd) => run_cluster(cmd, &layout, timeout).await,
        Command::Status { json } => {
            let reply = status::fetch_status(&mut session(&ctx, op)?).await?;
            if json {
                println!("{}", status::render_json(&reply));
            } else {
                print!("{}", status::render_table(&reply));
            }
            Ok(())
        }
        Command::Tenant(cmd) => run_tenant(cmd, &ctx).await,
        Command::Wal(cmd) => run_wal(cmd, &ctx).await,
        Command::Record(cmd) => run_record(cmd, &ctx).await,
        Command::Verify { tenant, json } => {
            let mut s = session(&ctx, op)?;
            let members = crate::verify::verify(&mut s, &tenant.tenant, timeout).await?;
            let report = crate::verify::to_json(&tenant.tenant, &members);
            if json {
                println!("{}", serde_json::to_string_pretty(&report).expect("verify JSON always serializes"));
            } else {
                print!("{}", crate::verify::render(&report));
            }
            crate::verify::outcome(&report)
        }
        Command::Audit { tenant, since, json } => {
            let reply = crate::audit::audit(&mut session(&ctx, op)?, tenant.as_deref(), since.unwrap_or(0)).await?;
            if json {
                println!("{}", crate::audit::render_json(&reply));
            } else {
                print!("{}", crate::audit::render(&reply));
            }
            Ok(())
        }
    }
}

fn run_certs(cmd: CertsCmd, layout: &Layout) -> CmdResult<()> {
    match cmd {
        CertsCmd::Init { out, name } => {
            let cert = crate::certs::init(&out, &name).or_exit(USAGE)?;
            println!("made a new CA: {}", cert.display());
        }
        CertsCmd::Issue { name, role, out, ca } => {
            let source = match &ca {
                Some(dir) => crate::certs::CaSource::Dir(dir),
                None => crate::certs::CaSource::Cluster(layout),
            };
            let nodes = crate::certs::node_names(layout);
            let path = crate::certs::issue(&source, &name, &role, &out, &nodes).or_exit(USAGE)?;
            println!("issued {name} (role {role}): use --identity {}", path.display());
        }
    }
    Ok(())
}

async fn run_cluster(cmd: ClusterCmd, layout: &Layout, timeout: Duration) -> CmdResult<()> {
    match cmd {
        ClusterCmd::Up { local, nodes_per_region, tuning, force } => {
            assert!(local, "clap requires --local");
            let report = local_cluster::up(layout, &UpArgs { nodes_per_region, tuning, force }, timeout).await?;
            print!("{}", local_cluster::render_up(layout, &report));
            Ok(())
        }
        ClusterCmd::Down { purge } => {
            let report = local_cluster::down(layout, purge, local_cluster::STOP_GRACE)?;
            print_report(&report);
            if purge {
                println!("removed {}", layout.root.display());
            }
            Ok(())
        }
        ClusterCmd::KillRegion { region } => {
            print_report(&local_cluster::kill(layout, &cluster_file(layout)?, Target::Region(&region))?);
            Ok(())
        }
        ClusterCmd::KillNode { name } => {
            print_report(&local_cluster::kill(layout, &cluster_file(layout)?, Target::Node(&name))?);
            Ok(())
        }
        ClusterCmd::StartRegion { region } => {
            let cluster = cluster_file(layout)?;
            let bin = process::tetrad_bin().or_exit(USAGE)?;
            print_report(&local_cluster::start(layout, &cluster, Target::Region(&region), &bin, timeout).await?);
            Ok(())
        }
        ClusterCmd::StartNode { name } => {
            let cluster = cluster_file(layout)?;
            let bin = process::tetrad_bin().or_exit(USAGE)?;
            print_report(&local_cluster::start(layout, &cluster, Target::Node(&name), &bin, timeout).await?);
            Ok(())
        }
    }
}

async fn run_tenant(cmd: TenantCmd, ctx: &Ctx) -> CmdResult<()> {
    // Refused before the cluster directory is even read: the answer does not depend on it.
    if let TenantCmd::Failover { name, to, accept_data_loss, .. } = &cmd {
        failover::require_accepted_loss(name, to, *accept_data_loss)?;
    }
    let mut s = session(ctx, Op::Other)?;
    match cmd {
        TenantCmd::Create { name, mode, primary, rpo_target, on_lag, regions, json } => {
            let info = tenant::create(&mut s, &CreateArgs { name, mode, primary, rpo_target, on_lag, regions }).await?;
            if json {
                println!("{}", tenant::render_json(&info));
            } else {
                print!("{}", tenant::render(&info));
            }
        }
        TenantCmd::List { json } => {
            let list = tenant::list(&mut s).await?;
            if json {
                println!("{}", tenant::render_list_json(&list));
            } else {
                print!("{}", tenant::render_list(&list));
            }
        }
        TenantCmd::Show { name, json } => {
            let info = tenant::show(&mut s, &name).await?;
            if json {
                println!("{}", tenant::render_json(&info));
            } else {
                print!("{}", tenant::render(&info));
            }
        }
        TenantCmd::Switchover { name, to, json } => {
            let event = failover::switchover(&mut s, &name, &to).await?;
            print_event(&name, &event, json);
        }
        TenantCmd::Failover { name, to, accept_data_loss, json } => {
            let event = failover::failover(&mut s, &name, &to, accept_data_loss).await?;
            print_event(&name, &event, json);
        }
        TenantCmd::SetMode { name, mode, rpo_target, on_lag, json } => {
            let info = tenant::mode::set_mode(&mut s, &SetModeArgs { name, mode, rpo_target, on_lag }).await?;
            if json {
                println!("{}", tenant::render_json(&info));
            } else {
                print!("{}", tenant::render(&info));
            }
        }
        TenantCmd::History { name, json } => {
            let events = history::history(&mut s, &name).await?;
            if json {
                println!("{}", history::render_history_json(&events));
            } else {
                print!("{}", history::render_history(&name, &events));
            }
        }
    }
    Ok(())
}

fn print_event(tenant: &str, event: &tetrad_proto::v1::TenantEventInfo, json: bool) {
    if json {
        println!("{}", history::render_event_json(event));
    } else {
        print!("{}", history::render_event(tenant, event));
    }
}

async fn run_record(cmd: RecordCmd, ctx: &Ctx) -> CmdResult<()> {
    use crate::record;
    let stdio = || PathBuf::from("-");
    match cmd {
        RecordCmd::Put { tenant, key, file, if_version } => {
            // Read before contacting the cluster: bad input sends nothing.
            let value = record::read_value(&file.unwrap_or_else(stdio))?;
            let mut s = session(ctx, Op::Push)?;
            let put = tetrad_proto::v1::RecordPut { key: key.clone(), value, if_version };
            let reply = record::put(&mut s, &tenant.tenant, vec![put]).await?;
            let r = reply.results.first().map(|r| (r.version, r.changed)).unwrap_or_default();
            let note = if r.1 { "" } else { " (already held these bytes)" };
            println!("{key}: version {} in tenant {}{note}", r.0, tenant.tenant);
        }
        RecordCmd::Get { tenant, key, file } => {
            let mut s = session(ctx, Op::Other)?;
            let rec = record::get(&mut s, &tenant.tenant, &key).await?;
            record::write_value(&file.unwrap_or_else(stdio), &rec.value)?;
            eprintln!("{key}: version {} ({} bytes)", rec.version, rec.value.len());
        }
        RecordCmd::List { tenant, prefix, json } => {
            let mut s = session(ctx, Op::Other)?;
            let mut printer = record::ListPrinter::new(std::io::stdout().lock(), json);
            record::list_pages(&mut s, &tenant.tenant, &prefix, record::LIST_PAGE_SIZE, |page| {
                printer.page(&page).or_exit(NO_ANSWER)
            })
            .await?;
            drop(printer.finish().or_exit(NO_ANSWER)?);
        }
        RecordCmd::Delete { tenant, key, if_version } => {
            let mut s = session(ctx, Op::Push)?;
            let reply = record::delete(&mut s, &tenant.tenant, &key, if_version).await?;
            match reply.results.first() {
                Some(r) if r.version != 0 => {
                    println!("{key}: deleted version {} in tenant {}", r.version, tenant.tenant)
                }
                _ => println!("{key}: absent in tenant {}", tenant.tenant),
            }
        }
    }
    Ok(())
}

async fn run_wal(cmd: WalCmd, ctx: &Ctx) -> CmdResult<()> {
    match cmd {
        WalCmd::Push { tenant, file } => {
            // Read before contacting the cluster: bad input sends nothing.
            let seg = wal::push::read_segment(&file)?;
            let mut s = session(ctx, Op::Push)?;
            let sent = std::sync::Arc::new(wal::push::Sent::default());
            let reply = wal::push::push(&mut s, &tenant.tenant, &seg, &sent).await?;
            println!("{}", wal::push::confirmation(&tenant.tenant, &reply, sent.bytes()));
        }
        WalCmd::Fetch { tenant, name, dest } => {
            let mut s = session(ctx, Op::Fetch)?;
            let fetched = wal::fetch::fetch(&mut s, &tenant.tenant, &name, &dest).await?;
            // stdout stays quiet on success for restore_command; the log gets one line on stderr.
            eprintln!("{name}: restored to {} ({} bytes, blake3 {})", dest.display(), fetched.size, fetched.blake3);
        }
        WalCmd::List { tenant, prefix, json } => {
            let mut s = session(ctx, Op::Other)?;
            let mut printer = wal::ListPrinter::new(std::io::stdout().lock(), json);
            wal::list_pages(&mut s, &tenant.tenant, &prefix, wal::LIST_PAGE_SIZE, |page| {
                printer.page(&page).or_exit(NO_ANSWER)
            })
            .await?;
            drop(printer.finish().or_exit(NO_ANSWER)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse_with_units_and_zero_or_bare_numbers_are_refused() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("fast").is_err());
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tetradctl").chain(args.iter().copied()))
    }

    #[test]
    fn tenant_create_takes_every_option() {
        let cli = parse(&[
            "tenant",
            "create",
            "acme",
            "--mode",
            "near-sync",
            "--primary",
            "eu-west",
            "--rpo-target",
            "500ms",
            "--on-lag",
            "degrade",
            "--regions",
            "eu-west,eu-central",
        ])
        .expect("parses");
        match cli.command {
            Command::Tenant(TenantCmd::Create { name, mode, primary, rpo_target, on_lag, regions, json }) => {
                assert_eq!((name.as_str(), mode, primary.as_deref()), ("acme", Mode::NearSync, Some("eu-west")));
                assert_eq!((rpo_target, on_lag, json), (Some(Duration::from_millis(500)), Some(OnLag::Degrade), false));
                assert_eq!(regions, ["eu-west", "eu-central"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rpo_targets_are_whole_milliseconds() {
        assert_eq!(parse_ms_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_ms_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_ms_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_ms_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        let err = parse_ms_duration("1500us").expect_err("sub-millisecond");
        assert!(err.contains("whole number of milliseconds"), "{err}");
        for bad in ["", "1", "-1s", "1.0005s", "soon", "0ms", "1s2"] {
            let err = parse_ms_duration(bad).expect_err(bad);
            assert!(!err.is_empty(), "{bad}");
        }
        assert!(parse_ms_duration("fast").expect_err("bad").contains("examples: 1s, 500ms, 2m"));
    }

    #[test]
    fn a_bad_rpo_target_is_a_usage_error_that_names_the_option() {
        let err = parse(&["tenant", "set-mode", "acme", "--mode", "near-sync", "--rpo-target", "1 fortnight"])
            .expect_err("bad duration");
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(text.contains("--rpo-target") && text.contains("examples: 1s, 500ms, 2m"), "{text}");
    }

    #[test]
    fn tenant_switchover_and_failover_parse() {
        match parse(&["tenant", "switchover", "acme", "--to", "us-east"]).expect("parses").command {
            Command::Tenant(TenantCmd::Switchover { name, to, json }) => {
                assert_eq!((name.as_str(), to.as_str(), json), ("acme", "us-east", false));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["tenant", "failover", "acme", "--to", "us-east", "--accept-data-loss", "--json"])
            .expect("parses")
            .command
        {
            Command::Tenant(TenantCmd::Failover { name, to, accept_data_loss, json }) => {
                assert_eq!((name.as_str(), to.as_str(), accept_data_loss, json), ("acme", "us-east", true, true));
            }
            other => panic!("{other:?}"),
        }
        // Without the flag the command line parses; the command itself refuses (exit 2, nothing sent).
        match parse(&["tenant", "failover", "acme", "--to", "us-east"]).expect("parses").command {
            Command::Tenant(TenantCmd::Failover { accept_data_loss, .. }) => assert!(!accept_data_loss),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failover_without_the_flag_exits_2_before_reading_the_cluster_directory() {
        let cli = parse(&["--cluster", "/nonexistent/tetrad", "tenant", "failover", "acme", "--to", "us-east"])
            .expect("parses");
        let err = run(cli).await.expect_err("refused");
        assert_eq!(err.code, USAGE);
        let text = err.error.to_string();
        assert!(text.contains("--accept-data-loss") && !text.contains("cluster.toml"), "{text}");
    }

    #[test]
    fn tenant_set_mode_takes_its_options_and_leaves_the_rest_unset() {
        let cli =
            parse(&["tenant", "set-mode", "acme", "--mode", "near-sync", "--rpo-target", "2s", "--on-lag", "block"])
                .expect("parses");
        match cli.command {
            Command::Tenant(TenantCmd::SetMode { name, mode, rpo_target, on_lag, json }) => {
                assert_eq!((name.as_str(), mode, rpo_target), ("acme", Mode::NearSync, Some(Duration::from_secs(2))));
                assert_eq!((on_lag, json), (Some(OnLag::Block), false));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["tenant", "set-mode", "acme", "--mode", "async"]).expect("parses").command {
            Command::Tenant(TenantCmd::SetMode { mode, rpo_target, on_lag, .. }) => {
                assert_eq!((mode, rpo_target, on_lag), (Mode::Async, None, None));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tenant_history_parses() {
        match parse(&["tenant", "history", "acme", "--json"]).expect("parses").command {
            Command::Tenant(TenantCmd::History { name, json }) => assert_eq!((name.as_str(), json), ("acme", true)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn usage_errors_exit_2_and_up_requires_local() {
        for args in [
            &["cluster", "up"][..],
            &["tenant", "create", "x", "--mode", "fast"],
            &["tenant", "create", "x", "--mode", "near-sync", "--rpo-target", "100us"],
            &["tenant", "switchover", "acme"],
            &["tenant", "failover", "acme", "--accept-data-loss"],
            &["tenant", "set-mode", "acme"],
            &["tenant", "set-mode", "acme", "--mode", "near-sync", "--on-lag", "drop"],
            &["tenant", "history"],
            &["wal", "push", "file"],
            &["status", "--timeout", "soon"],
            &["wal", "fetch", "--tenant", "t", "only-name"],
        ] {
            let err = parse(args).expect_err("usage error");
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn global_flags_go_anywhere_and_status_defaults_to_a_shorter_deadline() {
        let cli = parse(&["status", "--cluster", "/c"]).expect("parses");
        assert_eq!(cli.cluster, PathBuf::from("/c"));
        assert_eq!(cli.timeout(), DEFAULT_STATUS_TIMEOUT);
        let cli = parse(&["--timeout", "5s", "wal", "list", "--tenant", "t"]).expect("parses");
        assert_eq!(cli.timeout(), Duration::from_secs(5));
        let cli = parse(&["wal", "list", "--tenant", "t"]).expect("parses");
        assert_eq!(cli.timeout(), DEFAULT_TIMEOUT);
    }

    #[test]
    fn fetch_help_documents_the_restore_command_exit_codes() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("wal")
            .and_then(|w| w.find_subcommand_mut("fetch"))
            .expect("exists")
            .render_long_help()
            .to_string();
        assert!(help.contains("restore_command") && help.contains("128") && help.contains("above 125"), "{help}");
    }
}
