//! `tetradctl cluster ...`: a whole cluster on this machine, one process per node, for trying
//! tetrad out and for failover drills (kill a region, start it again).
//!
//! Processes are found through their pid files and checked against their command line before
//! being signalled (see [`crate::process::running_pid`]).

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::Context;
use tetrad_config::certs::{CaBundle, NodeCert};
use tetrad_proto::v1::InitClusterRequest;
use tokio::time::{sleep, Instant};

use crate::client::{client, connect, probe_status, Identity};
use crate::cluster_dir::{self, ClusterFile, Layout, LocalPlan};
use crate::exit::{CmdError, CmdResult, OrExit, NO_ANSWER, USAGE};
use crate::ports::pick_free_ports;
use crate::process::{self, Stopped};
use crate::tuning::Tuning;
use tetrad_config::role::Role;

/// How often a starting cluster is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long one probe of one node may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a node gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct UpArgs {
    pub nodes_per_region: u32,
    pub tuning: Option<PathBuf>,
    pub force: bool,
}

#[derive(Debug, Clone)]
pub struct NodeRun {
    pub name: String,
    pub pid: u32,
}

#[derive(Debug, Clone)]
pub struct UpReport {
    pub plan: LocalPlan,
    pub pids: Vec<NodeRun>,
    pub meta_leader: String,
    pub elapsed: Duration,
}

/// `cluster up --local`.
pub async fn up(layout: &Layout, args: &UpArgs, timeout: Duration) -> CmdResult<UpReport> {
    let started = Instant::now();
    cluster_dir::check_nodes_per_region(args.nodes_per_region).map_err(|m| CmdError::msg(USAGE, m))?;
    prepare_dir(layout, args.force)?;
    let bin = process::tetrad_bin().or_exit(USAGE)?;
    let tuning = match &args.tuning {
        Some(path) => Tuning::load(path).or_exit(USAGE)?,
        None => Tuning::default(),
    };
    let count = cluster_dir::REGIONS.len() * args.nodes_per_region as usize;
    let ports = pick_free_ports(count).context("cannot pick free loopback ports").or_exit(NO_ANSWER)?;
    let plan =
        cluster_dir::plan_local(layout, args.nodes_per_region, &tuning, &ports).map_err(|m| CmdError::msg(USAGE, m))?;

    let ca =
        CaBundle::generate(&cluster_name(&layout.root)).context("cannot generate the cluster CA").or_exit(NO_ANSWER)?;
    let certs = plan
        .configs
        .iter()
        .map(|c| {
            let me = c.me();
            ca.issue_node(&c.name, me.id, &me.region)
                .with_context(|| format!("cannot issue a certificate for {}", c.name))
        })
        .collect::<anyhow::Result<Vec<NodeCert>>>()
        .or_exit(NO_ANSWER)?;
    cluster_dir::write_local(layout, &plan, &ca, &certs).or_exit(NO_ANSWER)?;
    let node_names: Vec<String> = plan.configs.iter().map(|c| c.name.clone()).collect();
    let admin = crate::certs::issue(
        &crate::certs::CaSource::Cluster(layout),
        "admin",
        &Role::Admin,
        &layout.identities_dir(),
        &node_names,
    )
    .context("cannot issue the admin identity")
    .or_exit(NO_ANSWER)?;
    let identity = Identity::load(&admin).or_exit(NO_ANSWER)?;

    eprintln!("initializing {count} nodes in {}", layout.root.display());
    for cfg in &plan.configs {
        process::run_init(&bin, layout, &cfg.name).or_exit(NO_ANSWER)?;
    }
    let mut children = Vec::with_capacity(count);
    for cfg in &plan.configs {
        let child = process::spawn_node(&bin, layout, &cfg.name).or_exit(NO_ANSWER)?;
        children.push((cfg.name.clone(), child));
    }
    let pids: Vec<NodeRun> = children.iter().map(|(name, c)| NodeRun { name: name.clone(), pid: c.id() }).collect();

    let deadline = Instant::now() + timeout;
    let still_running = "cluster up did not finish (nodes that started keep running: inspect their logs, then run `tetradctl cluster down`)";
    eprintln!("waiting for {count} nodes to answer");
    let addrs: Vec<(String, String)> =
        plan.cluster.nodes.iter().map(|n| (n.name.clone(), n.api_addr.to_string())).collect();
    wait_answering(layout, &addrs, &mut children, deadline, &identity)
        .await
        .map_err(|e| CmdError::new(NO_ANSWER, e.context(still_running)))?;

    let first_voter = &plan.cluster.meta_voters[0];
    let voter_addr = plan.cluster.node(first_voter).expect("meta voters are nodes (validated)").api_addr.to_string();
    eprintln!("initializing the meta group through {first_voter}");
    init_cluster(&voter_addr, deadline, &identity)
        .await
        .map_err(|e| CmdError::new(NO_ANSWER, e.context(still_running)))?;

    eprintln!("waiting for a meta leader and every node up");
    let meta_leader = wait_cluster_up(&plan.cluster, deadline, &identity)
        .await
        .map_err(|e| CmdError::new(NO_ANSWER, e.context(still_running)))?;
    Ok(UpReport { plan, pids, meta_leader, elapsed: started.elapsed() })
}

/// Refuses a directory that holds a running cluster, or any other content unless `force` (which
/// wipes a directory only if everything in it is what `cluster up` creates).
fn prepare_dir(layout: &Layout, force: bool) -> CmdResult<()> {
    let dir = &layout.root;
    if !dir.exists() {
        return Ok(());
    }
    let running = running_nodes(layout).or_exit(USAGE)?;
    if !running.is_empty() {
        let names: Vec<String> = running.iter().map(|r| format!("{} (pid {})", r.name, r.pid)).collect();
        return Err(CmdError::msg(
            USAGE,
            format!(
                "a cluster is already running in {}; run `tetradctl cluster down` first (running: {})",
                dir.display(),
                names.join(", ")
            ),
        ));
    }
    let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).or_exit(USAGE)?;
    if empty {
        return Ok(());
    }
    let ours = cluster_dir::looks_like_cluster_dir(dir).or_exit(USAGE)?;
    if !ours {
        return Err(CmdError::msg(
            USAGE,
            format!(
                "{} exists and holds files that are not a tetrad cluster's; choose another --cluster DIR",
                dir.display()
            ),
        ));
    }
    if !force {
        return Err(CmdError::msg(
            USAGE,
            format!(
                "{} already holds a cluster, not running; start it again with `tetradctl cluster start-region REGION`, \
                 or pass --force to wipe it (its data included) and create a new one",
                dir.display()
            ),
        ));
    }
    eprintln!("--force: wiping {}", dir.display());
    std::fs::remove_dir_all(dir).with_context(|| format!("cannot wipe {}", dir.display())).or_exit(NO_ANSWER)
}

/// The CA's cluster name: the directory's name, within the length a certificate allows.
fn cluster_name(root: &Path) -> String {
    let base = root.file_name().and_then(|n| n.to_str()).unwrap_or("tetrad");
    let clean: String = base.chars().filter(|c| !c.is_control()).take(40).collect();
    if clean.is_empty() {
        "tetrad".to_owned()
    } else {
        clean
    }
}

/// Waits until every node answers `Status`; fails early, with its log, if a node exits.
async fn wait_answering(
    layout: &Layout,
    addrs: &[(String, String)],
    children: &mut [(String, Child)],
    deadline: Instant,
    identity: &Identity,
) -> anyhow::Result<()> {
    let mut waiting: Vec<&(String, String)> = addrs.iter().collect();
    loop {
        for (name, child) in children.iter_mut() {
            if let Some(status) = child.try_wait().context("cannot check a node process")? {
                anyhow::bail!(
                    "node {name} exited during startup ({status}); {}",
                    process::log_excerpt(&layout.log(name))
                );
            }
        }
        let mut still = Vec::new();
        for entry in waiting {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if probe_status(&entry.1, PROBE_TIMEOUT.min(remaining), identity).await.is_err() {
                still.push(entry);
            }
        }
        waiting = still;
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let names: Vec<String> =
                waiting.iter().map(|(n, a)| format!("{n} at {a} (log {})", layout.log(n).display())).collect();
            anyhow::bail!("these nodes did not answer in time: {}", names.join(", "));
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// Calls `InitCluster` on the first meta voter until it succeeds (it is idempotent).
async fn init_cluster(addr: &str, deadline: Instant, identity: &Identity) -> anyhow::Result<()> {
    let mut last = String::new();
    while Instant::now() < deadline {
        match connect(addr, deadline, identity).await {
            Ok(channel) => match client(channel).init_cluster(InitClusterRequest {}).await {
                Ok(_) => return Ok(()),
                Err(status) => last = crate::failure::Failure::from_status(addr, &status).to_string(),
            },
            Err(f) => last = f.to_string(),
        }
        sleep(POLL_INTERVAL).await;
    }
    anyhow::bail!("InitCluster did not succeed in time; last error: {last}")
}

/// Waits until some node reports a meta leader and every node up; returns the meta leader.
async fn wait_cluster_up(cluster: &ClusterFile, deadline: Instant, identity: &Identity) -> anyhow::Result<String> {
    let addrs = cluster.api_addrs();
    let mut last = String::from("no node answered");
    let mut i = 0;
    while Instant::now() < deadline {
        let addr = &addrs[i % addrs.len()];
        i += 1;
        match probe_status(addr, PROBE_TIMEOUT, identity).await {
            Ok(s) => {
                let down: Vec<&str> = s.nodes.iter().filter(|n| !n.up).map(|n| n.id.as_str()).collect();
                if !s.meta_leader.is_empty() && down.is_empty() && s.nodes.len() == cluster.nodes.len() {
                    return Ok(s.meta_leader);
                }
                last = format!(
                    "meta leader {:?}, {} of {} nodes reported, down: [{}]",
                    s.meta_leader,
                    s.nodes.len(),
                    cluster.nodes.len(),
                    down.join(", ")
                );
                sleep(POLL_INTERVAL).await;
            }
            Err(f) => last = f.to_string(),
        }
    }
    anyhow::bail!("the cluster did not report a meta leader and every node up in time; last status: {last}")
}

/// Nodes whose pid file names a live process of that node.
pub fn running_nodes(layout: &Layout) -> std::io::Result<Vec<NodeRun>> {
    Ok(cluster_dir::node_dirs(layout)?
        .into_iter()
        .filter_map(|name| process::running_pid(layout, &name).map(|pid| NodeRun { name, pid }))
        .collect())
}

/// What happened to one node in `down`, `kill-*` or `start-*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAction {
    NotRunning,
    Stopped { pid: u32, how: Stopped },
    AlreadyRunning { pid: u32 },
    Started { pid: u32 },
}

impl NodeAction {
    pub fn describe(&self) -> String {
        match self {
            NodeAction::NotRunning => "not running".into(),
            NodeAction::Stopped { pid, how: Stopped::Terminated } => format!("stopped (pid {pid})"),
            NodeAction::Stopped { pid, how: Stopped::Killed } => format!("killed (pid {pid})"),
            NodeAction::Stopped { pid, how: Stopped::Stuck } => {
                format!("STILL RUNNING after SIGKILL (pid {pid}); it may be stuck in I/O")
            }
            NodeAction::AlreadyRunning { pid } => {
                format!("already running (pid {pid}); nothing to do")
            }
            NodeAction::Started { pid } => format!("started (pid {pid})"),
        }
    }
}

/// `cluster down [--purge]`: SIGTERM every node, wait up to [`STOP_GRACE`] for each, then
/// SIGKILL. The directory stays unless `purge`.
pub fn down(layout: &Layout, purge: bool, grace: Duration) -> CmdResult<Vec<(String, NodeAction)>> {
    if !layout.root.exists() {
        return Err(CmdError::msg(USAGE, format!("there is no cluster in {}", layout.root.display())));
    }
    let names = cluster_dir::node_dirs(layout).or_exit(NO_ANSWER)?;
    let mut signalled = Vec::new();
    let mut report = Vec::new();
    // Signal everyone first, so the nodes shut down together rather than one grace period each.
    for name in names {
        match process::running_pid(layout, &name) {
            Some(pid) => match process::sys::signal(pid, process::Signal::Term) {
                Ok(()) => signalled.push((name, pid)),
                // It exited between the check and the signal.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => report.push((name, NodeAction::NotRunning)),
                Err(e) => return Err(CmdError::msg(NO_ANSWER, format!("cannot SIGTERM {name} (pid {pid}): {e}"))),
            },
            None => report.push((name, NodeAction::NotRunning)),
        }
    }
    for (name, pid) in signalled {
        let how = process::finish_stop(pid, layout, &name, grace).or_exit(NO_ANSWER)?;
        let _ = std::fs::remove_file(layout.pid(&name)); // stale now; running_pid would ignore it anyway.
        report.push((name, NodeAction::Stopped { pid, how }));
    }
    report.sort_by(|a, b| a.0.cmp(&b.0));
    let stuck: Vec<&str> = report
        .iter()
        .filter(|(_, a)| matches!(a, NodeAction::Stopped { how: Stopped::Stuck, .. }))
        .map(|(n, _)| n.as_str())
        .collect();
    if !stuck.is_empty() {
        return Err(CmdError::msg(NO_ANSWER, format!("these nodes could not be stopped: {}", stuck.join(", "))));
    }
    if purge {
        let ours = cluster_dir::looks_like_cluster_dir(&layout.root).or_exit(NO_ANSWER)?;
        if !ours {
            return Err(CmdError::msg(
                USAGE,
                format!(
                    "{} holds files that are not a tetrad cluster's; stopped the nodes but did not remove it",
                    layout.root.display()
                ),
            ));
        }
        std::fs::remove_dir_all(&layout.root)
            .with_context(|| format!("cannot remove {}", layout.root.display()))
            .or_exit(NO_ANSWER)?;
    }
    Ok(report)
}

/// The nodes a `kill-*`/`start-*` command acts on.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Region(&'a str),
    Node(&'a str),
}

/// The names of the target's nodes, or exit 2 with the valid choices.
pub fn resolve(cluster: &ClusterFile, target: Target<'_>) -> CmdResult<Vec<String>> {
    match target {
        Target::Region(region) => {
            let names: Vec<String> =
                cluster.nodes.iter().filter(|n| n.region == region).map(|n| n.name.clone()).collect();
            if names.is_empty() {
                return Err(CmdError::msg(
                    USAGE,
                    format!("unknown region {region:?}; regions: {}", cluster.regions().join(", ")),
                ));
            }
            Ok(names)
        }
        Target::Node(name) => {
            if cluster.node(name).is_none() {
                let all: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
                return Err(CmdError::msg(USAGE, format!("unknown node {name:?}; nodes: {}", all.join(", "))));
            }
            Ok(vec![name.to_owned()])
        }
    }
}

/// `cluster kill-region` / `kill-node`: SIGKILL, as a drill of a sudden failure.
pub fn kill(layout: &Layout, cluster: &ClusterFile, target: Target<'_>) -> CmdResult<Vec<(String, NodeAction)>> {
    let mut report = Vec::new();
    for name in resolve(cluster, target)? {
        let action = match process::running_pid(layout, &name) {
            Some(pid) => NodeAction::Stopped { pid, how: process::kill_node(pid, layout, &name).or_exit(NO_ANSWER)? },
            None => NodeAction::NotRunning,
        };
        report.push((name, action));
    }
    Ok(report)
}

/// `cluster start-region` / `start-node`: `run` again (no `init`) with the server binary `bin`,
/// then wait until the started nodes answer.
pub async fn start(
    layout: &Layout,
    cluster: &ClusterFile,
    target: Target<'_>,
    bin: &Path,
    timeout: Duration,
) -> CmdResult<Vec<(String, NodeAction)>> {
    let names = resolve(cluster, target)?;
    let mut report = Vec::new();
    let mut children = Vec::new();
    for name in names {
        if let Some(pid) = process::running_pid(layout, &name) {
            report.push((name, NodeAction::AlreadyRunning { pid }));
            continue;
        }
        let child = process::spawn_node(bin, layout, &name).or_exit(NO_ANSWER)?;
        report.push((name.clone(), NodeAction::Started { pid: child.id() }));
        children.push((name, child));
    }
    let addrs: Vec<(String, String)> = children
        .iter()
        .map(|(name, _)| {
            (name.clone(), cluster.node(name).expect("resolved from the cluster file").api_addr.to_string())
        })
        .collect();
    // The cluster's own admin identity, which `cluster up` made: starting nodes is a local
    // operator's act, whatever identity other commands use.
    let identity = Identity::load(&Identity::default_path(&layout.root)).or_exit(NO_ANSWER)?;
    wait_answering(layout, &addrs, &mut children, Instant::now() + timeout, &identity).await.or_exit(NO_ANSWER)?;
    Ok(report)
}

/// The human summary `cluster up` prints.
pub fn render_up(layout: &Layout, report: &UpReport) -> String {
    let dir = layout.root.display();
    let mut table = crate::table::Table::new(["NODE", "REGION", "API", "RAFT (QUIC)", "PID", "LOG"]);
    for (node, run) in report.plan.cluster.nodes.iter().zip(&report.pids) {
        assert_eq!(node.name, run.name, "pids are in node order");
        table.row([
            node.name.clone(),
            node.region.clone(),
            node.api_addr.to_string(),
            node.raft_addr.to_string(),
            run.pid.to_string(),
            layout.log(&node.name).display().to_string(),
        ]);
    }
    let cluster_arg = format!("--cluster {dir}");
    format!(
        "tetrad cluster up in {dir}: {} nodes in {} regions, in {:.1}s\nmeta leader: {}\nmeta voters: {}\n\n{}\n\
         next:\n  tetradctl {cluster_arg} status\n  \
         tetradctl {cluster_arg} tenant create demo --mode sync --primary eu-central\n  \
         tetradctl {cluster_arg} wal push --tenant demo ./000000010000000000000001\n  \
         tetradctl {cluster_arg} wal fetch --tenant demo 000000010000000000000001 /tmp/000000010000000000000001\n  \
         tetradctl {cluster_arg} cluster kill-region eu-central\n  \
         tetradctl {cluster_arg} cluster start-region eu-central\n  \
         tetradctl {cluster_arg} cluster down\n",
        report.plan.cluster.nodes.len(),
        report.plan.cluster.regions().len(),
        report.elapsed.as_secs_f64(),
        report.meta_leader,
        report.plan.cluster.meta_voters.join(", "),
        table.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_named_after_the_directory_within_certificate_limits() {
        assert_eq!(cluster_name(Path::new("/x/tetrad-local")), "tetrad-local");
        assert_eq!(cluster_name(Path::new("/")), "tetrad");
        assert_eq!(cluster_name(Path::new(&format!("/x/{}", "a".repeat(80)))).len(), 40);
        CaBundle::generate(&cluster_name(Path::new(&format!("/x/{}", "é".repeat(80))))).expect("a valid CA name");
    }
}
