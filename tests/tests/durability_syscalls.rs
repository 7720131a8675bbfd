//! The production disk's durability, seen from outside the process.
//!
//! `node/src/seams/os_disk.rs` asserts the order of its own recorded operations; this test checks
//! that the real system calls happen, by running the same code under strace. The test re-executes
//! its own binary (selecting only itself, with an environment variable that switches it to the
//! "probe" role) under `strace -f -y`, then reads the trace: `-y` prints the path behind every
//! file descriptor, so each fdatasync and fsync can be matched to the file or directory it synced.
//! A separate helper binary would do the same but add a target to keep in step; re-executing the
//! test binary keeps the probe and its expectations in one file.
//!
//! strace must be installed (`apt-get install -y strace`); without it the test fails rather than
//! pass without having looked.

use std::path::{Path, PathBuf};
use std::process::Command;

use tetrad_node::seams::disk::{Disk, OsDisk};

/// Set, to the directory to work in, only in the re-executed probe.
const PROBE_DIR_ENV: &str = "TETRAD_DURABILITY_PROBE_DIR";
const TEST_NAME: &str = "os_disk_syscalls_under_strace_are_fdatasync_rename_then_directory_fsync";

/// A durability system call that strace saw succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Syscall {
    Fdatasync(PathBuf),
    Fsync(PathBuf),
    Rename { from: PathBuf, to: PathBuf },
}

#[test]
fn os_disk_syscalls_under_strace_are_fdatasync_rename_then_directory_fsync() {
    match std::env::var_os(PROBE_DIR_ENV) {
        Some(dir) => probe(Path::new(&dir)),
        None => trace_probe_and_check(),
    }
}

/// The operations whose system calls the parent checks.
fn probe(dir: &Path) {
    let disk = OsDisk::new();
    let sub = dir.join("sub");
    disk.create_dir_all(&sub).unwrap();
    disk.write_file_durable(&sub.join("chunk"), b"wal segment bytes").unwrap();
    let backend = disk.open_backend(&sub.join("raft.redb")).unwrap();
    backend.set_len(8192).unwrap();
    backend.write(0, &[1; 4096]).unwrap();
    backend.sync_data().unwrap();
    backend.write(4096, &[2; 4096]).unwrap();
    backend.sync_data().unwrap();
}

fn trace_probe_and_check() {
    let strace = find_strace().unwrap_or_else(|| {
        panic!(
            "strace is not installed, and this test needs it to observe fdatasync and fsync: \
             install it (`apt-get install -y strace`) and run the test again"
        )
    });
    let work = tempfile::tempdir().unwrap();
    // strace prints resolved paths, so compare against the resolved directory.
    let dir = work.path().canonicalize().unwrap();
    let trace = dir.join("strace.out");
    let output = Command::new(&strace)
        .args(["-f", "-y", "-qq", "-e", "trace=fdatasync,fsync,rename,renameat,renameat2", "-o"])
        .arg(&trace)
        .arg("--")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(PROBE_DIR_ENV, &dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the probe under strace failed ({}); if strace could not attach, this environment forbids \
         ptrace.\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "the probe did not run: {}",
        String::from_utf8_lossy(&output.stdout)
    );

    let text = std::fs::read_to_string(&trace).unwrap();
    let calls: Vec<Syscall> = text.lines().filter_map(parse_line).filter(|call| touches(call, &dir)).collect();

    let sub = dir.join("sub");
    let db = sub.join("raft.redb");
    let Some(Syscall::Rename { from: tmp, .. }) = calls.iter().find(|c| matches!(c, Syscall::Rename { .. })).cloned()
    else {
        panic!("no rename under {}: {calls:#?}\ntrace:\n{text}", dir.display())
    };
    assert_eq!(tmp.parent(), Some(sub.as_path()), "the temporary file is beside its target");
    let expected = vec![
        // create_dir_all: the new directory, then its parent.
        Syscall::Fsync(sub.clone()),
        Syscall::Fsync(dir.clone()),
        // write_file_durable: data, then name, then the directory holding the name.
        Syscall::Fdatasync(tmp.clone()),
        Syscall::Rename { from: tmp.clone(), to: sub.join("chunk") },
        Syscall::Fsync(sub.clone()),
        // open_backend: the file, then its directory.
        Syscall::Fsync(db.clone()),
        Syscall::Fsync(sub.clone()),
        // sync_data after the length changed, then a plain one.
        Syscall::Fsync(db.clone()),
        Syscall::Fdatasync(db.clone()),
    ];
    assert_eq!(calls, expected, "trace:\n{text}");
}

fn find_strace() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("strace")).find(|candidate| candidate.is_file())
}

/// Parses one line of `strace -f -y -o` output (`PID name(args) = result`), keeping only the
/// calls that succeeded.
fn parse_line(line: &str) -> Option<Syscall> {
    let (_pid, call) = line.trim().split_once(char::is_whitespace)?;
    let call = call.trim_start();
    let (name, args) = call.split_once('(')?;
    // strace pads the result into a column: `fsync(3</d>)     = 0`. A failed call's result ends
    // in a parenthesised reason, which leaves no `=` after the last `)`; it is skipped either way.
    let (args, result) = args.rsplit_once(')')?;
    if result.trim().strip_prefix('=').map(str::trim) != Some("0") {
        return None;
    }
    match name {
        "fdatasync" => Some(Syscall::Fdatasync(fd_path(args)?)),
        "fsync" => Some(Syscall::Fsync(fd_path(args)?)),
        "rename" | "renameat" | "renameat2" => {
            let mut quoted = quoted_strings(args).into_iter();
            let from = PathBuf::from(quoted.next()?);
            let to = PathBuf::from(quoted.next()?);
            Some(Syscall::Rename { from, to })
        }
        _ => None,
    }
}

/// The path strace's `-y` prints after a descriptor: `3</tmp/x/file>`.
fn fd_path(args: &str) -> Option<PathBuf> {
    let start = args.find('<')?;
    let end = args.rfind('>')?;
    Some(PathBuf::from(&args[start + 1..end]))
}

/// The double-quoted strings in a call's arguments (the paths are plain ASCII here).
fn quoted_strings(args: &str) -> Vec<String> {
    args.split('"').skip(1).step_by(2).map(str::to_string).collect()
}

fn touches(call: &Syscall, dir: &Path) -> bool {
    match call {
        Syscall::Fdatasync(path) | Syscall::Fsync(path) => path.starts_with(dir),
        Syscall::Rename { from, to } => from.starts_with(dir) || to.starts_with(dir),
    }
}
