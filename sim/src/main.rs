//! `tetrad-sim`: run one seed or sweep a range; see README.md "The simulator".

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tetrad_sim::run::{run, RunOptions, RunReport, Scenario};

#[derive(Parser)]
#[command(name = "tetrad-sim", about = "Deterministic simulation of a tetrad cluster against its claims")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one seed and print its summary and trace hash.
    Run {
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value = "region-outage")]
        scenario: String,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Run the seed twice in this process and compare the trace hashes.
        #[arg(long)]
        check_determinism: bool,
    },
    /// Run seeds A..B inclusive.
    Sweep {
        #[arg(long)]
        seeds: String,
        #[arg(long, default_value = "region-outage")]
        scenario: String,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long)]
        stop_at_first: bool,
    },
}

fn scenario(s: &str) -> Result<Scenario, String> {
    Scenario::parse(s).ok_or_else(|| format!("unknown scenario {s:?}; known: {}", Scenario::names().join(", ")))
}

fn guarded(opts: &RunOptions) -> RunReport {
    match std::panic::catch_unwind(|| run(opts)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            RunReport { seed: opts.seed, violations: vec![format!("panic: {msg}")], ..Default::default() }
        }
    }
}

fn print_report(r: &RunReport, scenario: &str, duration: Duration) {
    println!("seed: {} scenario: {scenario}", r.seed);
    for f in &r.faults {
        println!("fault: {f}");
    }
    println!("acked: {} lost: {} messages: {}", r.acked, r.lost, r.messages);
    if !r.rto_ms.is_empty() {
        println!("rto-ms: {:?}", r.rto_ms);
    }
    println!(
        "simulated: {:.1}s wall: {:.2}s speed: {:.1}x",
        r.sim_secs,
        r.wall_secs,
        r.sim_secs / r.wall_secs.max(1e-9)
    );
    println!("oracles: sync-no-acked-loss, one-leader-per-term, served-bytes-match, convergence, liveness-after-heal");
    for v in &r.violations {
        println!("VIOLATION: {v}");
    }
    if !r.ok() {
        println!(
            "replay: cargo run --release -p tetrad-sim -- run --seed {} --scenario {scenario} --duration {}",
            r.seed,
            humantime::format_duration(duration)
        );
    }
    println!("trace-hash: {}", r.trace_hash);
}

fn main() -> ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { seed, scenario: s, duration, check_determinism } => {
            let sc = match scenario(&s) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let opts = RunOptions { seed, duration, scenario: sc };
            let r = guarded(&opts);
            print_report(&r, &s, duration);
            let mut ok = r.ok();
            if check_determinism {
                let again = guarded(&opts);
                if again.trace_hash == r.trace_hash {
                    println!("determinism: same trace hash on a second run");
                } else {
                    println!("VIOLATION: determinism: second run gave trace-hash {}", again.trace_hash);
                    ok = false;
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Cmd::Sweep { seeds, scenario: s, duration, stop_at_first } => {
            let sc = match scenario(&s) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let Some((a, b)) =
                seeds.split_once("..").and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            else {
                eprintln!("--seeds takes A..B, e.g. 1..100");
                return ExitCode::from(2);
            };
            let (mut n, mut bad, mut sim, mut wall) = (0u64, 0u64, 0.0, 0.0);
            for seed in a..=b {
                let r = guarded(&RunOptions { seed, duration, scenario: sc });
                n += 1;
                sim += r.sim_secs;
                wall += r.wall_secs;
                if !r.ok() {
                    bad += 1;
                    println!("seed {seed} FAILED:");
                    for v in &r.violations {
                        println!("  {v}");
                    }
                    println!(
                        "  replay: cargo run --release -p tetrad-sim -- run --seed {seed} --scenario {s} --duration {}",
                        humantime::format_duration(duration)
                    );
                    if stop_at_first {
                        break;
                    }
                }
            }
            println!("seeds: {n} violations: {bad} speed: {:.1}x", sim / f64::max(wall, 1e-9));
            if bad > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
