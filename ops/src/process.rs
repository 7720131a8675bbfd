//! Node processes of a local cluster: finding the `tetrad` binary, `init`, starting `run`
//! detached with its output appended to `node.log`, and telling whether the process a pid file
//! names is still that node.

pub mod sys;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cluster_dir::Layout;

pub use sys::Signal;

/// Lines of a node's log shown when it fails to start.
pub const LOG_TAIL_LINES: usize = 20;

/// The `tetrad` server binary: `$TETRAD_BIN`, else `tetrad` next to this executable.
pub fn tetrad_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TETRAD_BIN") {
        let bin = PathBuf::from(bin);
        anyhow::ensure!(bin.is_file(), "TETRAD_BIN={} is not a file", bin.display());
        return Ok(bin);
    }
    let exe = std::env::current_exe().context("cannot find the path of tetradctl itself")?;
    let beside = exe.parent().map(|d| d.join("tetrad"));
    match beside {
        Some(bin) if bin.is_file() => Ok(bin),
        _ => bail!(
            "cannot find the tetrad server binary: set TETRAD_BIN, or build it next to tetradctl with \
             `cargo build --release --bins` (looked for {})",
            beside.map_or_else(|| "tetrad".into(), |b| b.display().to_string())
        ),
    }
}

fn log_file(layout: &Layout, name: &str) -> anyhow::Result<std::fs::File> {
    let path = layout.log(name);
    OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))
}

fn command(bin: &Path, layout: &Layout, name: &str, verb: &str) -> anyhow::Result<Command> {
    let log = log_file(layout, name)?;
    let mut cmd = Command::new(bin);
    cmd.arg(verb)
        .arg("--config")
        .arg(layout.node_config(name))
        .current_dir(layout.node_dir(name))
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("cannot duplicate the log file handle")?)
        .stderr(log);
    Ok(cmd)
}

/// Runs `tetrad init --config ...` and waits for it; it must exit 0.
pub fn run_init(bin: &Path, layout: &Layout, name: &str) -> anyhow::Result<()> {
    let status = command(bin, layout, name, "init")?
        .status()
        .with_context(|| format!("cannot run {} init for {name}", bin.display()))?;
    if !status.success() {
        bail!("`{} init` for {name} failed ({status}); {}", bin.display(), log_excerpt(&layout.log(name)));
    }
    Ok(())
}

/// Starts `tetrad run --config ...` in a new session and writes its pid file. The caller may
/// keep the `Child` to notice an early exit; dropping it neither kills nor waits for the node.
pub fn spawn_node(bin: &Path, layout: &Layout, name: &str) -> anyhow::Result<Child> {
    let mut cmd = command(bin, layout, name, "run")?;
    sys::detach_into_new_session(&mut cmd);
    let child = cmd.spawn().with_context(|| format!("cannot start {} run for {name}", bin.display()))?;
    let pid_path = layout.pid(name);
    std::fs::write(&pid_path, format!("{}\n", child.id())).with_context(|| {
        format!("node {name} started as pid {} but its pid file {} cannot be written", child.id(), pid_path.display())
    })?;
    Ok(child)
}

/// The pid of the node's process if it is running. The pid file alone is not trusted: after a
/// reboot its pid may belong to another program, which must never be signalled. Where `/proc`
/// exists the process must have this node's config path on its command line.
pub fn running_pid(layout: &Layout, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(layout.pid(name)).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    is_node_process(pid, &layout.node_config(name)).then_some(pid)
}

fn is_node_process(pid: u32, config: &Path) -> bool {
    if !sys::exists(pid) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        // A zombie has an empty command line, and counts as gone.
        Ok(cmdline) => cmdline.split(|b| *b == 0).any(|arg| arg == config.as_os_str().as_encoded_bytes()),
        Err(_) => !Path::new("/proc/self").exists(),
    }
}

/// How a node went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited after SIGTERM within the grace period.
    Terminated,
    /// It was still running after the grace period and got SIGKILL.
    Killed,
    /// It was still there even after SIGKILL (e.g. stuck in uninterruptible I/O).
    Stuck,
}

/// How often a stopping node is checked: a plain poll, since it is not our child to wait on.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a SIGKILLed process may take to disappear before it is reported stuck.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Waits until `gone()` or `limit` passes; true when it went.
pub fn wait_until(limit: Duration, mut gone: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if gone() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// SIGKILLs a node and waits (bounded) until it is gone.
pub fn kill_node(pid: u32, layout: &Layout, name: &str) -> anyhow::Result<Stopped> {
    sys::signal(pid, Signal::Kill).with_context(|| format!("cannot SIGKILL {name} (pid {pid})"))?;
    let config = layout.node_config(name);
    if wait_until(KILL_GRACE, || !is_node_process(pid, &config)) {
        Ok(Stopped::Killed)
    } else {
        Ok(Stopped::Stuck)
    }
}

/// Waits up to `grace` for a node that was sent SIGTERM, then SIGKILLs it.
pub fn finish_stop(pid: u32, layout: &Layout, name: &str, grace: Duration) -> anyhow::Result<Stopped> {
    let config = layout.node_config(name);
    if wait_until(grace, || !is_node_process(pid, &config)) {
        return Ok(Stopped::Terminated);
    }
    kill_node(pid, layout, name)
}

/// The last lines of a node's log, for error messages.
pub fn log_excerpt(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            if tail.is_empty() {
                format!("its log {} is empty", path.display())
            } else {
                format!("last lines of {}:\n  {}", path.display(), tail.join("\n  "))
            }
        }
        Err(e) => format!("its log {} cannot be read: {e}", path.display()),
    }
}
