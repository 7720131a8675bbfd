//! The harness of tetrad's multi-process integration tests.
//!
//! The tests under `tests/` run real `tetrad` processes that talk QUIC on loopback, and drive them
//! with the real `tetradctl` binary, as an operator would. This crate owns what they share:
//!
//! - [`LocalCluster`]: a cluster in a temporary directory (`tetradctl cluster up --local`), torn
//!   down (`cluster down --purge`) when the guard is dropped, on panic too, so that no node
//!   outlives its test;
//! - [`Ran`]: one finished command, with its exit code and output, run under a bound so that a
//!   hung command fails the test instead of hanging it;
//! - [`segments`]: PostgreSQL-like segment names and pseudo-random segment bytes;
//! - [`grpc::Pusher`]: pushes over gRPC without a `tetradctl` process per segment, for tests that
//!   push thousands;
//! - [`wait_until`] / [`wait_for`]: polling a condition with a bound (never a fixed sleep);
//! - [`metric`]: measured figures, printed and appended to `$TETRAD_METRICS_FILE`;
//! - [`wan_proxy::WanProxy`]: a UDP relay between the nodes that can cut a region off the others.
//!
//! The JSON that `tetradctl` prints is read into its one definition, `tetrad_proto::json` (the
//! types tetradctl serializes), e.g. by [`LocalCluster::status`].
//!
//! The binaries are the ones built beside the test executable: a test built with `--release`
//! runs `target/release/tetrad` and `target/release/tetradctl`, which
//! `cargo build --release --bins` produces.

pub mod grpc;
mod local_cluster;
mod run;
pub mod segments;
pub mod sockets;
pub mod wan_proxy;

use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use local_cluster::{LocalCluster, UpOptions, REGIONS};
pub use run::{run_bounded, Ran};

/// How often conditions are polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The server and client binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub tetrad: PathBuf,
    pub tetradctl: PathBuf,
}

/// Finds `tetrad` and `tetradctl` next to the test executable's directory: the test runs as
/// `<target>/<profile>/deps/<test>-<hash>`, the binaries are `<target>/<profile>/<name>`.
pub fn binaries() -> Binaries {
    let exe = std::env::current_exe().expect("the test executable's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not inside <target>/<profile>/deps", exe.display()));
    let find = |name: &str| {
        let path = dir.join(name);
        assert!(
            path.is_file(),
            "{} does not exist: run `cargo build --release --bins` first (the tests run the binaries \
             of the profile they were built with, from {})",
            path.display(),
            dir.display()
        );
        path
    };
    Binaries { tetrad: find("tetrad"), tetradctl: find("tetradctl") }
}

/// Polls `probe` every [`POLL_INTERVAL`] until it returns `Ok`, and returns its value and how
/// long that took. Panics after `bound`, naming `what` and the last thing `probe` reported.
pub fn wait_for<T>(what: &str, bound: Duration, mut probe: impl FnMut() -> Result<T, String>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        let last = match probe() {
            Ok(value) => return (value, start.elapsed()),
            Err(why) => why,
        };
        if start.elapsed() >= bound {
            panic!("gave up after {bound:?} waiting until {what}; last observation: {last}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// [`wait_for`] a plain condition.
pub fn wait_until(what: &str, bound: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    wait_for(what, bound, || if condition() { Ok(()) } else { Err("condition not met".into()) }).1
}

/// Records a measured figure: printed as `metric NAME VALUE` (visible with `--no-capture`) and
/// appended as that line to the file named by `TETRAD_METRICS_FILE`, if set. Figures are
/// reported, never asserted: timings belong in bench/, not in pass/fail tests.
pub fn metric(name: &str, value: impl Display) {
    let line = format!("metric {name} {value}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("TETRAD_METRICS_FILE") {
        let appended =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            // The figure is still on stderr; losing the file copy must not fail the test.
            eprintln!("cannot append to TETRAD_METRICS_FILE {}: {e}", Path::new(&path).display());
        }
    }
}

/// Removes ANSI colour sequences (the nodes' tracing output has them even in a log file).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, then one final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value at quantile `q` (0..=1) of `sorted`, by the nearest-rank method.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    assert!(!sorted.is_empty(), "quantile of no samples");
    assert!(sorted.windows(2).all(|w| w[0] <= w[1]), "samples must be sorted");
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_colours_are_removed_and_text_kept() {
        let line = "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m snapshot installed \u{1b}[3mgroup\u{1b}[0m\u{1b}[2m=\u{1b}[0mt/a/1";
        assert_eq!(strip_ansi(line), "2026  INFO snapshot installed group=t/a/1");
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=200).map(Duration::from_millis).collect();
        assert_eq!(quantile(&samples, 0.5), Duration::from_millis(100));
        assert_eq!(quantile(&samples, 0.99), Duration::from_millis(198));
        assert_eq!(quantile(&samples, 1.0), Duration::from_millis(200));
        assert_eq!(quantile(&samples[..1], 0.99), Duration::from_millis(1));
    }

    #[test]
    fn wait_for_returns_the_value_once_the_probe_succeeds() {
        let mut calls = 0;
        let (v, _) = wait_for("the third call", Duration::from_secs(10), || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err(format!("call {calls}"))
            }
        });
        assert_eq!(v, 3);
    }

    #[test]
    #[should_panic(expected = "gave up after")]
    fn wait_until_panics_after_its_bound() {
        wait_until("never", Duration::from_millis(300), || false);
    }
}
