//! [`LocalCluster`]: a whole tetrad cluster on loopback, made and driven with `tetradctl` as an
//! operator would, in a temporary directory that is torn down with the guard.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tetrad_node::config::NodeConfig;
use tetrad_proto::json::{Segment, SegmentList, Status, Tenant};

use crate::run::{run_bounded, Ran};
use crate::segments::{file_blake3, Expected};
use crate::wan_proxy::{RelayedNode, WanProxy};
use crate::{binaries, strip_ansi, wait_for, Binaries};

/// The regions `tetradctl cluster up --local` creates, in its order.
pub const REGIONS: [&str; 4] = ["eu-central", "eu-west", "us-east", "ap-south"];

/// Longest any one command may run. Every tetradctl command has its own deadline (60 s by
/// default) and `cluster down` gives each node 10 s; this only catches a hang.
const COMMAND_BOUND: Duration = Duration::from_secs(240);

/// How `cluster up` is called.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub nodes_per_region: u32,
    /// The text of a `--tuning` TOML file.
    pub tuning: Option<String>,
    /// Route all node-to-node traffic through a [`WanProxy`] (see [`LocalCluster::wan`]).
    pub wan_proxy: bool,
}

impl Default for UpOptions {
    fn default() -> Self {
        Self { nodes_per_region: 3, tuning: None, wan_proxy: false }
    }
}

/// A running local cluster. Dropping it runs `cluster down --purge` (and, should that fail,
/// SIGKILLs the nodes named by their pid files), also while a test panics.
pub struct LocalCluster {
    bins: Binaries,
    root: PathBuf,
    scratch: PathBuf,
    nodes_per_region: u32,
    /// Wall time of `cluster up`, as the operator sees it.
    pub up_elapsed: Duration,
    /// The relay between the nodes, when asked for. Dropped after `drop` has stopped the nodes.
    wan: Option<WanProxy>,
    // Last, so that it is removed after `drop` has stopped the nodes.
    tmp: tempfile::TempDir,
}

impl LocalCluster {
    /// `tetradctl cluster up --local` in a new temporary directory. Panics if it fails.
    pub fn up(opts: UpOptions) -> Self {
        let bins = binaries();
        let tmp = tempfile::Builder::new().prefix("tetrad-it-").tempdir().expect("a temporary directory");
        let root = tmp.path().join("cluster");
        let scratch = tmp.path().join("scratch");
        std::fs::create_dir_all(&scratch).expect("scratch directory");
        spawn_reaper(&bins, &root, tmp.path());
        // The guard exists before `cluster up` runs, so that nodes started by a failed `up` are
        // stopped too.
        let mut cluster = LocalCluster {
            bins,
            root,
            scratch,
            nodes_per_region: opts.nodes_per_region,
            up_elapsed: Duration::ZERO,
            wan: None,
            tmp,
        };
        let n = opts.nodes_per_region.to_string();
        let mut args: Vec<&OsStr> = ["cluster", "up", "--local", "--nodes-per-region", &n].map(OsStr::new).to_vec();
        let tuning_file = cluster.scratch.join("tuning.toml");
        if let Some(text) = &opts.tuning {
            std::fs::write(&tuning_file, text).expect("tuning file");
            args.extend([OsStr::new("--tuning"), tuning_file.as_os_str()]);
        }
        let ran = cluster.ctl(&args);
        ran.expect_success();
        cluster.up_elapsed = ran.elapsed;
        if opts.wan_proxy {
            cluster.route_through_wan_proxy();
        }
        cluster.assert_loopback_only();
        cluster
    }

    /// The relay between the nodes; panics unless the cluster was started with
    /// [`UpOptions::wan_proxy`].
    pub fn wan(&self) -> &WanProxy {
        self.wan.as_ref().expect("the cluster was started without UpOptions::wan_proxy")
    }

    /// Puts a [`WanProxy`] between the nodes of the running cluster: stops every node
    /// (`cluster down`, data kept), rewrites each node's config so that every *other* node's
    /// `raft_addr` is that node's address on the relay (its own entry keeps the address it binds),
    /// and starts every region again (`cluster start-region`). `cluster.toml` keeps the real
    /// addresses. The relay's sockets are bound while the nodes still hold theirs, so none of
    /// them can take a port a node needs again.
    fn route_through_wan_proxy(&mut self) {
        let first = self.node_names().into_iter().next().expect("a cluster has nodes");
        let topology = NodeConfig::load(&self.node_config(&first)).unwrap_or_else(|e| panic!("{e}")).nodes;
        let relayed = topology
            .iter()
            .map(|p| RelayedNode { name: p.name.clone(), region: p.region.clone(), real: p.raft_addr })
            .collect();
        let wan = WanProxy::start(relayed).unwrap_or_else(|e| panic!("cannot start the wan proxy: {e}"));
        self.ctl(&["cluster", "down"]).expect_success();
        for name in self.node_names() {
            let path = self.node_config(&name);
            let mut cfg = NodeConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            for peer in cfg.nodes.iter_mut().filter(|p| p.name != name) {
                peer.raft_addr = wan.front_addr(&peer.name);
            }
            std::fs::write(&path, cfg.to_toml()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            NodeConfig::load(&path).unwrap_or_else(|e| panic!("the rewritten config is not valid: {e}"));
        }
        self.wan = Some(wan);
        for region in REGIONS {
            self.ctl(&["cluster", "start-region", region]).expect_success();
        }
        let nodes = self.node_names().len();
        wait_for("every node is up again behind the wan proxy, with a meta leader", Duration::from_secs(120), || {
            let s = self.status()?;
            let down = s.down_nodes();
            if s.meta_leader.as_deref().is_some_and(|l| !l.is_empty()) && down.is_empty() && s.nodes.len() == nodes {
                Ok(())
            } else {
                Err(format!("meta leader {:?}, down {down:?}", s.meta_leader))
            }
        });
        let counts = self.wan().counts();
        assert!(counts.forwarded > 0, "no node traffic went through the wan proxy: {counts:?}");
    }

    /// The admin identity `cluster up` made (`DIR/identities/admin`), as tetradctl uses it.
    pub fn identity_path(&self) -> PathBuf {
        tetrad_ops::client::Identity::default_path(&self.root)
    }

    /// The admin identity, loaded, for clients that dial the API themselves.
    pub fn identity(&self) -> tetrad_ops::client::Identity {
        tetrad_ops::client::Identity::load(&self.identity_path()).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The pid of a node's running process, from its pid file.
    pub fn node_pid(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.node_dir(name).join("pid")).ok()?.trim().parse().ok()
    }

    /// Panics unless every node process has bound loopback addresses only, and some.
    pub fn assert_loopback_only(&self) {
        for name in self.node_names() {
            let pid = self.node_pid(&name).unwrap_or_else(|| panic!("{name} has no pid file"));
            let addrs =
                crate::sockets::bound_addrs(pid).unwrap_or_else(|e| panic!("sockets of {name} (pid {pid}): {e}"));
            assert!(!addrs.is_empty(), "{name} (pid {pid}) has no listening socket");
            let outside: Vec<_> = addrs.iter().filter(|a| !a.ip().is_loopback()).collect();
            assert!(outside.is_empty(), "{name} (pid {pid}) listens outside loopback: {outside:?}");
        }
    }

    /// The cluster directory (`--cluster DIR`).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// A directory for the test's own files, removed with the cluster.
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    pub fn bins(&self) -> &Binaries {
        &self.bins
    }

    /// Every node's name, region by region.
    pub fn node_names(&self) -> Vec<String> {
        REGIONS.iter().flat_map(|r| (1..=self.nodes_per_region).map(move |k| format!("{r}-{k}"))).collect()
    }

    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.root.join("nodes").join(name)
    }

    pub fn node_config(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("node.toml")
    }

    /// The node's log with colour codes removed ("" if it has none yet).
    pub fn node_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.node_dir(name).join("node.log")).map(|t| strip_ansi(&t)).unwrap_or_default()
    }

    /// The tetradctl command for this cluster, with an environment that cannot point it
    /// elsewhere: the server binary is the one under test, and the nodes it starts log at their
    /// default level.
    pub fn ctl_command(&self) -> Command {
        let mut cmd = Command::new(&self.bins.tetradctl);
        cmd.arg("--cluster")
            .arg(&self.root)
            .env("TETRAD_BIN", &self.bins.tetrad)
            .env_remove("TETRAD_CLUSTER")
            .env_remove("RUST_LOG")
            .current_dir(&self.scratch);
        cmd
    }

    /// `tetradctl --cluster DIR <args>`.
    pub fn ctl<S: AsRef<OsStr>>(&self, args: &[S]) -> Ran {
        run_bounded(self.ctl_command().args(args), COMMAND_BOUND)
    }

    /// `tetrad <args>` (the server binary), e.g. `check-config --config F`.
    pub fn tetrad<S: AsRef<OsStr>>(&self, args: &[S], bound: Duration) -> Ran {
        run_bounded(Command::new(&self.bins.tetrad).args(args).env_remove("RUST_LOG"), bound)
    }

    /// `status --json`, parsed; Err with the command's output when it fails.
    pub fn status(&self) -> Result<Status, String> {
        let ran = self.ctl(&["status", "--json"]);
        if !ran.success() {
            return Err(ran.to_string());
        }
        serde_json::from_str(&ran.stdout).map_err(|e| format!("status --json is not the documented JSON ({e}): {ran}"))
    }

    /// `tenant create NAME --mode sync --primary REGION --json`. Panics if it fails.
    pub fn create_sync_tenant(&self, name: &str, primary: &str) -> Tenant {
        let ran = self.ctl(&["tenant", "create", name, "--mode", "sync", "--primary", primary, "--json"]);
        serde_json::from_str(ran.expect_success()).unwrap_or_else(|e| panic!("tenant create --json ({e}): {ran}"))
    }

    /// `tenant show NAME --json`. Panics if it fails.
    pub fn tenant_show(&self, name: &str) -> Tenant {
        let ran = self.ctl(&["tenant", "show", name, "--json"]);
        serde_json::from_str(ran.expect_success()).unwrap_or_else(|e| panic!("tenant show --json ({e}): {ran}"))
    }

    /// `wal push --tenant T FILE`.
    pub fn push(&self, tenant: &str, file: &Path) -> Ran {
        self.ctl(&[OsStr::new("wal"), "push".as_ref(), "--tenant".as_ref(), tenant.as_ref(), file.as_os_str()])
    }

    /// `wal fetch --tenant T NAME DEST`.
    pub fn fetch(&self, tenant: &str, name: &str, dest: &Path) -> Ran {
        self.ctl(&[
            OsStr::new("wal"),
            "fetch".as_ref(),
            "--tenant".as_ref(),
            tenant.as_ref(),
            name.as_ref(),
            dest.as_os_str(),
        ])
    }

    /// Fetches a segment into the scratch directory and checks its size and blake3; the copy is
    /// removed afterwards. Panics with the reason on any difference.
    pub fn fetch_and_check(&self, tenant: &str, want: &Expected) {
        let dest = self.scratch.join("fetched").join(&want.name);
        std::fs::create_dir_all(dest.parent().expect("has a parent")).expect("fetch directory");
        let ran = self.fetch(tenant, &want.name, &dest);
        assert!(ran.success(), "fetching {} (acked earlier) failed: {ran}", want.name);
        let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or_else(|e| panic!("{}: {e}", dest.display()));
        let got = file_blake3(&dest);
        assert_eq!(
            (size, got.as_str()),
            (want.size, want.blake3.as_str()),
            "segment {} came back with other bytes than were pushed",
            want.name
        );
        std::fs::remove_file(&dest).expect("remove the fetched copy");
    }

    /// `wal list --tenant T --json`. Panics if it fails.
    pub fn list(&self, tenant: &str) -> Vec<Segment> {
        let ran = self.ctl(&["wal", "list", "--tenant", tenant, "--json"]);
        let list: SegmentList =
            serde_json::from_str(ran.expect_success()).unwrap_or_else(|e| panic!("wal list --json ({e}): {ran}"));
        list.segments
    }

    /// Waits until status shows the tenant with a leader; returns that status.
    pub fn wait_for_tenant_leader(&self, tenant: &str, bound: Duration) -> (Status, Duration) {
        wait_for(&format!("tenant {tenant} has a leader"), bound, || {
            let status = self.status()?;
            match status.tenant(tenant) {
                Some(t) if !t.leader.is_empty() => Ok(status),
                Some(t) => Err(format!("no leader yet (epoch {}, term {})", t.epoch, t.term)),
                None => Err(format!("tenant {tenant} is not in status")),
            }
        })
    }

    /// Waits until every node is up and every region's lag for `tenant` is 0 writes.
    pub fn wait_all_up_and_caught_up(&self, tenant: &str, bound: Duration) -> Duration {
        let nodes = self.node_names().len();
        wait_for(&format!("every node is up and tenant {tenant} has no lag in any region"), bound, || {
            let status = self.status()?;
            let down = status.down_nodes();
            let tenant = status.tenant(tenant).ok_or("tenant missing from status")?;
            let lagging = tenant.lag.iter().any(|l| l.writes > 0);
            if status.nodes.len() == nodes && down.is_empty() && !lagging && tenant.lag.len() == REGIONS.len() {
                Ok(())
            } else {
                Err(format!("down: {down:?}; lag: {}; leader {:?}", tenant.lag_summary(), tenant.leader))
            }
        })
        .1
    }

    /// Copies every node's log to `$TETRAD_KEEP_LOGS/<cluster temp dir name>/`, if that is set,
    /// so that a failure can be studied after the cluster directory is gone.
    fn keep_logs(&self) {
        let Some(keep) = std::env::var_os("TETRAD_KEEP_LOGS") else { return };
        let run = self.tmp.path().file_name().unwrap_or(OsStr::new("cluster"));
        let dest = Path::new(&keep).join(run);
        if let Err(e) = std::fs::create_dir_all(&dest) {
            eprintln!("cannot keep the logs in {}: {e}", dest.display());
            return;
        }
        for name in self.node_names() {
            let _ = std::fs::copy(self.node_dir(&name).join("node.log"), dest.join(format!("{name}.log")));
        }
        eprintln!("kept the node logs in {}", dest.display());
    }

    fn print_log_tails(&self) {
        const LINES: usize = 15;
        for name in self.node_names() {
            let log = self.node_log(&name);
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- last lines of {name}'s node.log ---");
            for line in &lines[lines.len().saturating_sub(LINES)..] {
                eprintln!("  {line}");
            }
        }
    }

    /// The last resort when `cluster down` failed: SIGKILL every node whose pid file names a
    /// process that still runs this node's config (the check `tetradctl` itself makes).
    fn kill_leftovers(&self) {
        for name in self.node_names() {
            let Ok(text) = std::fs::read_to_string(self.node_dir(&name).join("pid")) else { continue };
            let Ok(pid) = text.trim().parse::<u32>() else { continue };
            let config = self.node_config(&name);
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a == config.as_os_str().as_encoded_bytes()))
                .unwrap_or(false);
            if ours {
                eprintln!("SIGKILL {name} (pid {pid}), which `cluster down` left running");
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
    }
}

/// Starts a watcher, in a session of its own, that tears the cluster down once this test process
/// is gone. The guard's `drop` does that on every normal exit and on panic; the watcher covers
/// the exits that skip `drop`: the test runner killing a test at its timeout, or an abort. It
/// polls the test's pid once a second and holds none of the test's output handles.
fn spawn_reaper(bins: &Binaries, root: &Path, tmp: &Path) {
    const SCRIPT: &str = r#"while kill -0 "$0" 2>/dev/null; do sleep 1; done
"$1" --cluster "$2" cluster down --purge >/dev/null 2>&1
rm -rf "$3""#;
    let spawned = Command::new("setsid")
        .args(["sh", "-c", SCRIPT])
        .arg(std::process::id().to_string())
        .arg(&bins.tetradctl)
        .arg(root)
        .arg(tmp)
        .env("TETRAD_BIN", &bins.tetrad)
        .env_remove("TETRAD_CLUSTER")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        // Without it only a killed test could leave nodes behind; that is not a reason to fail.
        eprintln!("cannot start the cluster reaper (setsid sh): {e}");
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_tails();
            self.keep_logs();
        }
        if !self.root.exists() {
            return;
        }
        let started = Instant::now();
        // Not `ctl`: a panic inside drop while unwinding would abort the test process.
        let down = self.ctl_command().args(["cluster", "down", "--purge"]).output();
        match down {
            Ok(out) if out.status.success() => {
                // A node that needed SIGKILL after its SIGTERM grace did not shut down cleanly.
                for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("killed")) {
                    eprintln!("cluster down: {line} (it did not exit within its SIGTERM grace)");
                }
            }
            Ok(out) => {
                eprintln!(
                    "`cluster down --purge` failed ({}): {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                self.kill_leftovers();
            }
            Err(e) => {
                eprintln!("cannot run `cluster down --purge`: {e}");
                self.kill_leftovers();
            }
        }
        eprintln!("cluster down --purge took {:.1}s", started.elapsed().as_secs_f64());
    }
}
