//! The crate's only `unsafe` code: the two libc calls that std does not offer safely, `setsid`
//! (in a child between fork and exec) and `kill`. Each is wrapped in a safe function that checks
//! its arguments, so a bad pid file can never signal a whole process group.

#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the child start a new session, so it survives the terminal that started `tetradctl`
/// (no SIGHUP when it closes, no SIGINT from a Ctrl-C meant for tetradctl).
pub fn detach_into_new_session(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and calls only `setsid`, which is
    // async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

/// A pid that addresses exactly one process: `kill` treats 0 and negative values as process
/// groups (and -1 as every process), and pid 1 is init.
pub fn is_single_process_pid(pid: u32) -> bool {
    pid > 1 && i32::try_from(pid).is_ok()
}

fn as_pid(pid: u32) -> io::Result<libc::pid_t> {
    if !is_single_process_pid(pid) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("refusing to signal pid {pid}")));
    }
    Ok(pid as libc::pid_t)
}

pub fn signal(pid: u32, sig: Signal) -> io::Result<()> {
    let pid = as_pid(pid)?;
    let sig = match sig {
        Signal::Term => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    };
    // SAFETY: `kill` has no memory-safety preconditions; `pid` addresses one process (checked).
    if unsafe { libc::kill(pid, sig) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a process with this pid exists (possibly owned by another user, possibly a zombie).
pub fn exists(pid: u32) -> bool {
    let Ok(pid) = as_pid(pid) else { return false };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_addressing_pids_are_refused() {
        for pid in [0, 1, u32::MAX, 1 << 31] {
            assert!(!is_single_process_pid(pid), "{pid}");
            assert!(signal(pid, Signal::Term).is_err(), "{pid}");
            assert!(!exists(pid), "{pid}");
        }
        assert!(exists(std::process::id()));
    }
}
