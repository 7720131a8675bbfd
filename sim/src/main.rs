//! `tetrad-sim`: run one seed or sweep a range; see sim/README.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tetrad_node::meta::state::Mode;
use tetrad_node::planted::Bug;
use tetrad_sim::run::{run, RunOptions, RunReport, Scenario, Without, CLIENTS};

// A run allocates and frees about a million buffers per simulated minute (messages, log entries,
// redb pages); glibc's malloc and free were about a seventh of its CPU time. The allocator does
// not touch what the run computes (no logic depends on addresses), so traces are unchanged.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (the same in its v2 and v3 headers; the `extended`
/// bindings do not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to hand freed memory back to the OS. By default it does so a second
/// after it was freed, and a run frees and reallocates the same few hundred MiB all the time:
/// about 12% of a loaded run went to page faults zeroing the same pages again. The memory
/// stays at what the run peaks at (about 240 MiB for the default topology under load).
fn keep_freed_memory() {
    // SAFETY: `mi_option_set` only stores an integer option (mimalloc reads it at each purge
    // decision); it is safe to call at any time, and we call it before any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}

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
        #[arg(long, default_value = "mixed")]
        scenario: String,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Run the seed twice in this process and compare the trace hashes.
        #[arg(long)]
        check_determinism: bool,
        /// Plant a deliberate bug (needs the `planted-bugs` feature).
        #[arg(long)]
        plant: Option<String>,
        /// Leave these fault kinds (comma-separated) out of the plan.
        #[arg(long, default_value = "")]
        without: String,
        /// Client tasks pushing segments (0 measures an idle cluster).
        #[arg(long, default_value_t = CLIENTS)]
        clients: u32,
        /// Write an HTML report of the run here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// The tenant's mode: sync, near-sync or async (default: drawn from the seed).
        #[arg(long)]
        mode: Option<String>,
    },
    /// Run seeds A..B inclusive.
    Sweep {
        #[arg(long)]
        seeds: String,
        /// A scenario, or `all`: seed S then runs scenario number S modulo their count (in the
        /// order of `Scenario::all`); each failure's replay line names its scenario.
        #[arg(long, default_value = "mixed")]
        scenario: String,
        /// Run the seeds in this many child processes side by side (seed S goes to child S
        /// modulo N); the totals are summed.
        #[arg(long, default_value_t = 1)]
        jobs: u32,
        /// Internal, for `--jobs`: run only the seeds S with S modulo N = J (`J/N`).
        #[arg(long, hide = true)]
        shard: Option<String>,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long)]
        stop_at_first: bool,
        /// Plant a deliberate bug (needs the `planted-bugs` feature).
        #[arg(long)]
        plant: Option<String>,
        /// Leave these fault kinds (comma-separated) out of every plan.
        #[arg(long, default_value = "")]
        without: String,
        /// The tenant's mode: sync, near-sync or async (default: drawn from each seed).
        #[arg(long)]
        mode: Option<String>,
    },
}

fn mode(m: Option<&str>) -> Result<Option<Mode>, String> {
    m.map(|m| Mode::parse(m).ok_or_else(|| format!("unknown mode {m:?}; known: sync, near-sync, async"))).transpose()
}

fn scenario(s: &str) -> Result<Scenario, String> {
    Scenario::parse(s).ok_or_else(|| format!("unknown scenario {s:?}; known: {}", Scenario::names().join(", ")))
}

/// The sweep's scenarios: one for every seed, or (`all`) each seed's from the list.
fn sweep_scenarios(s: &str) -> Result<Vec<Scenario>, String> {
    if s == "all" {
        Ok(Scenario::all())
    } else {
        scenario(s).map(|sc| vec![sc])
    }
}

/// `J/N` of `--shard`.
fn shard(s: Option<&str>) -> Result<(u64, u64), String> {
    let Some(s) = s else { return Ok((0, 1)) };
    s.split_once('/')
        .and_then(|(j, n)| Some((j.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
        .filter(|(j, n)| *n > 0 && j < n)
        .ok_or_else(|| format!("--shard takes J/N with J < N, not {s:?}"))
}

/// Runs a sweep as `jobs` child processes of this binary, each with `--shard J/N`; prints
/// their failures as they come and the summed totals. Exit 1 when any seed failed.
fn sweep_in_children(jobs: u32) -> ExitCode {
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("cannot find this binary to run its shards");
        return ExitCode::from(2);
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut children = vec![];
    for j in 0..jobs {
        let mut a: Vec<String> = vec![];
        let mut it = args.iter();
        while let Some(x) = it.next() {
            match x.as_str() {
                "--jobs" => {
                    it.next();
                }
                _ if x.starts_with("--jobs=") => {}
                _ => a.push(x.clone()),
            }
        }
        a.push("--shard".into());
        a.push(format!("{j}/{jobs}"));
        match std::process::Command::new(&exe).args(&a).stdout(std::process::Stdio::piped()).spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                eprintln!("cannot start shard {j}/{jobs}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let wall = Instant::now();
    let readers: Vec<_> = children
        .iter_mut()
        .enumerate()
        .filter_map(|(j, c)| c.stdout.take().map(|o| (j, o)))
        .map(|(j, out)| {
            std::thread::spawn(move || {
                use std::io::BufRead;
                let mut totals = (0u64, 0u64, 0.0f64);
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(t) = parse_totals(&line) {
                        totals = (totals.0 + t.0, totals.1 + t.1, t.2);
                    } else {
                        println!(
                            "{}{line}",
                            if line.starts_with("rto-ms") || line.starts_with("beyond") {
                                format!("shard {j}: ")
                            } else {
                                String::new()
                            }
                        );
                    }
                }
                totals
            })
        })
        .collect();
    let (mut n, mut bad, mut sim) = (0u64, 0u64, 0.0f64);
    for r in readers {
        let (a, b, speed_wall) = r.join().unwrap_or((0, 1, 0.0));
        n += a;
        bad += b;
        sim += speed_wall;
    }
    let mut failed_child = false;
    for mut c in children {
        failed_child |= !c.wait().is_ok_and(|s| s.success() || s.code() == Some(1));
    }
    if failed_child {
        bad += 1;
        println!("a shard ended abnormally");
    }
    println!("seeds: {n} violations: {bad} speed: {:.1}x", sim / f64::max(wall.elapsed().as_secs_f64(), 1e-9));
    if bad > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// A sweep's closing `seeds: N violations: V speed: Sx` line, with the simulated seconds it
/// stands for (its `simulated:` total): (N, V, simulated seconds).
fn parse_totals(line: &str) -> Option<(u64, u64, f64)> {
    let rest = line.strip_prefix("seeds: ")?;
    if rest.starts_with('?') {
        // The watchdog stopped a livelocked shard; its failure was printed above.
        return Some((0, 1, 0.0));
    }
    let mut w = rest.split_whitespace();
    let n = w.next()?.parse().ok()?;
    let v = w.nth(1)?.parse().ok()?;
    let sim = rest.split("simulated: ").nth(1).and_then(|x| x.trim_end_matches('s').parse().ok()).unwrap_or(0.0);
    Some((n, v, sim))
}

fn plant(p: Option<&str>) -> Result<Option<Bug>, String> {
    let Some(p) = p else { return Ok(None) };
    let known: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
    let bug = Bug::parse(p).ok_or_else(|| format!("unknown planted bug {p:?}; known: {}", known.join(", ")))?;
    if !tetrad_node::planted::ENABLED {
        return Err(format!(
            "--plant {p} needs a build with the planted-bugs feature: cargo run --release -p tetrad-sim --features planted-bugs -- ..."
        ));
    }
    Ok(Some(bug))
}

/// Wall seconds a run may go without its runtime ever going idle (see `run::IDLE_TURNS`); a
/// healthy run goes idle thousands of times per wall second. `TETRAD_SIM_LIVELOCK_SECS`
/// overrides it.
fn livelock_wall_secs() -> u64 {
    std::env::var("TETRAD_SIM_LIVELOCK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(30)
}

/// Watches one run from another thread. A livelocked run never returns to the caller (the
/// simulator's runtime has one thread, and simulated time stands still), so the watchdog
/// reports it in the sweep's failure format and ends the process with exit code 1.
struct Watchdog {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(opts: &RunOptions) -> Self {
        use std::sync::atomic::Ordering;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seed, replay) = (opts.seed, replay(opts));
        let flag = done.clone();
        let limit = livelock_wall_secs();
        let thread = std::thread::spawn(move || {
            let mut last = tetrad_sim::run::IDLE_TURNS.load(Ordering::Relaxed);
            let mut still = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                std::thread::park_timeout(std::time::Duration::from_millis(200));
                let now = tetrad_sim::run::IDLE_TURNS.load(Ordering::Relaxed);
                if now != last {
                    (last, still) = (now, Instant::now());
                } else if still.elapsed().as_secs() >= limit && !flag.load(Ordering::Relaxed) {
                    println!("seed {seed} FAILED (livelock):");
                    println!(
                        "  liveness: simulated time stood still for {limit} s of wall time: tasks keep each other busy without waiting"
                    );
                    println!("  replay: {replay}");
                    println!("seeds: ? violations: 1 (the sweep stopped at the livelocked seed)");
                    std::process::exit(1);
                }
            }
        });
        Watchdog { done, thread: Some(thread) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn guarded(opts: &RunOptions) -> RunReport {
    let wall = Instant::now();
    let _watchdog = Watchdog::start(opts);
    match std::panic::catch_unwind(|| run(opts)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let _ = tetrad_node::planted::plant(None);
            RunReport {
                seed: opts.seed,
                scenario: opts.scenario.name().to_string(),
                violations: vec![format!("panic: {msg}")],
                wall_secs: wall.elapsed().as_secs_f64(),
                ..Default::default()
            }
        }
    }
}

fn replay(opts: &RunOptions) -> String {
    let feature = if opts.plant.is_some() { " --features planted-bugs" } else { "" };
    let plant = opts.plant.map(|b| format!(" --plant {}", b.name())).unwrap_or_default();
    let without = if opts.without.is_empty() { String::new() } else { format!(" --without {}", opts.without.list()) };
    let mode = opts.mode.map(|m| format!(" --mode {}", m.as_str())).unwrap_or_default();
    format!(
        "cargo run --release -p tetrad-sim{feature} -- run --seed {} --scenario {} --duration {}{plant}{without}{mode}",
        opts.seed,
        opts.scenario.name(),
        humantime::format_duration(opts.duration)
    )
}

fn print_report(r: &RunReport, opts: &RunOptions) {
    println!("seed: {} scenario: {} mode: {}", r.seed, opts.scenario.name(), r.mode);
    if let Some(p) = &r.plant {
        println!("plant: {p}");
    }
    for f in &r.faults {
        println!("fault: {f}");
    }
    println!("acked: {} lost: {} messages: {}", r.acked, r.lost, r.messages);
    println!(
        "disk: {} syncs, {} file writes, {:.1} MiB written",
        r.disk_syncs,
        r.disk_file_writes,
        r.disk_bytes as f64 / (1 << 20) as f64
    );
    for h in &r.history {
        println!("history: {h}");
    }
    if !r.rto_ms.is_empty() {
        println!("rto-ms ({}): {:?}", mode_word(&r.mode), r.rto_ms);
    }
    if !r.max_lag.is_empty() {
        let lag: Vec<String> = r.max_lag.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("max-lag-writes: {}", lag.join(" "));
    }
    match &r.budget_breach {
        None => println!("budget: within"),
        Some((t, why)) => println!("budget: beyond (from t={:.1}s: {why}; only safety is checked)", *t as f64 / 1000.0),
    }
    println!(
        "simulated: {:.1}s wall: {:.2}s speed: {:.1}x",
        r.sim_secs,
        r.wall_secs,
        r.sim_secs / r.wall_secs.max(1e-9)
    );
    let phases: Vec<String> = r
        .phases
        .iter()
        .map(|(p, sim, wall)| format!("{p} {sim:.1}s/{wall:.2}s ({:.0}x)", sim / wall.max(1e-9)))
        .collect();
    println!("phases: {}", phases.join(" "));
    println!("oracles: {}", r.checked.join(", "));
    for n in &r.notes {
        println!("note: {n}");
    }
    for v in &r.violations {
        println!("VIOLATION: {v}");
    }
    if !r.ok() {
        println!("replay: {}", replay(opts));
    }
    println!("trace-hash: {}", r.trace_hash);
}

/// `near-sync (rpo ...)` -> `near-sync`.
fn mode_word(m: &str) -> &str {
    m.split_whitespace().next().unwrap_or("unknown")
}

/// One line per mode: how many disruptions, and their RTO's median, 90th percentile and maximum.
fn rto_summary(per_mode: &std::collections::BTreeMap<String, Vec<u64>>) -> Vec<String> {
    per_mode
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(m, v)| {
            let mut v = v.clone();
            v.sort_unstable();
            let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
            format!("rto-ms {m}: n={} median={} p90={} max={}", v.len(), at(0.5), at(0.9), at(1.0))
        })
        .collect()
}

fn main() -> ExitCode {
    keep_freed_memory();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let cli = Cli::parse();
    if let Cmd::Sweep { jobs, shard: None, .. } = &cli.cmd {
        if *jobs > 1 {
            return sweep_in_children(*jobs);
        }
    }
    let parsed = match &cli.cmd {
        Cmd::Run { scenario: s, plant: p, without: w, mode: m, .. }
        | Cmd::Sweep { scenario: s, plant: p, without: w, mode: m, .. } => {
            let sc = if matches!(cli.cmd, Cmd::Run { .. }) { scenario(s).map(|s| vec![s]) } else { sweep_scenarios(s) };
            sc.and_then(|sc| {
                plant(p.as_deref())
                    .and_then(|b| Without::parse(w).and_then(|w| mode(m.as_deref()).map(|m| (sc, b, w, m))))
            })
        }
    };
    let (scs, bug, without, mode) = match parsed {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match cli.cmd {
        Cmd::Run { seed, duration, check_determinism, report, clients, .. } => {
            let opts =
                RunOptions { seed, duration, scenario: scs[0], plant: bug, without: without.clone(), clients, mode };
            let r = guarded(&opts);
            print_report(&r, &opts);
            let mut ok = r.ok();
            if let Some(path) = report {
                match std::fs::write(&path, tetrad_sim::report::html(&r)) {
                    Ok(()) => println!("report: {}", path.display()),
                    Err(e) => {
                        eprintln!("cannot write report {}: {e}", path.display());
                        ok = false;
                    }
                }
            }
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
        Cmd::Sweep { seeds, duration, stop_at_first, shard: sh, .. } => {
            let (j, of) = match shard(sh.as_deref()) {
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
            let (mut n, mut bad, mut beyond, mut sim, mut wall) = (0u64, 0u64, 0u64, 0.0, 0.0);
            let mut rto: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
            for seed in (a..=b).filter(|s| s % of == j) {
                let opts = RunOptions {
                    seed,
                    duration,
                    scenario: scs[(seed % scs.len() as u64) as usize],
                    plant: bug,
                    without: without.clone(),
                    clients: CLIENTS,
                    mode,
                };
                let r = guarded(&opts);
                n += 1;
                if r.within_budget {
                    rto.entry(mode_word(&r.mode).to_string()).or_default().extend(&r.rto_ms);
                }
                sim += r.sim_secs;
                wall += r.wall_secs;
                if !r.within_budget {
                    beyond += 1;
                }
                if !r.ok() {
                    bad += 1;
                    println!("seed {seed} FAILED ({}):", r.mode);
                    for v in &r.violations {
                        println!("  {v}");
                    }
                    println!("  replay: {}", replay(&opts));
                    if stop_at_first {
                        break;
                    }
                }
            }
            if beyond > 0 {
                println!("beyond-budget seeds: {beyond} (safety only)");
            }
            for line in rto_summary(&rto) {
                println!("{line}");
            }
            println!("seeds: {n} violations: {bad} speed: {:.1}x simulated: {sim:.1}s", sim / f64::max(wall, 1e-9));
            if bad > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
