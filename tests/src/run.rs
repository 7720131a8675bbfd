//! Running one command to completion under a bound.

use std::fmt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One finished command.
#[derive(Debug, Clone)]
pub struct Ran {
    /// The command line, for messages.
    pub what: String,
    /// The exit code; None if a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with the whole output unless the command exited 0; returns stdout.
    pub fn expect_success(&self) -> &str {
        assert!(self.success(), "expected exit code 0 from {self}");
        &self.stdout
    }

    /// Panics with the whole output unless the command exited `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "unexpected exit code from {self}");
        self
    }

    /// stdout and stderr together, for looking for a message wherever it was printed.
    pub fn output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl fmt::Display for Ran {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code.map_or_else(|| "killed by a signal".to_owned(), |c| c.to_string());
        write!(
            f,
            "`{}` (exit code {code}, {:.2}s)\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.elapsed.as_secs_f64(),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `cmd` (stdin closed, output captured) and waits at most `bound` for it. A command still
/// running then is SIGKILLed (by its pid: it is our own child) and the test fails: every command
/// the tests run has its own deadline, so reaching the bound means something hangs.
pub fn run_bounded(cmd: &mut Command, bound: Duration) -> Ran {
    let what = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    let pid = child.id();
    // A thread waits so that both pipes are drained while the child runs; the channel's
    // recv_timeout wakes as soon as the child exits, so no polling delay is added to a timing.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(bound) {
        Ok(Ok(out)) => Ran {
            what,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        },
        Ok(Err(e)) => panic!("cannot wait for `{what}`: {e}"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("`{what}` was still running after {bound:?}; killed it (pid {pid})");
        }
    }
}
