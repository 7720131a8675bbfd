//! The `tetradctl` binary: parses the command line, runs the command, turns its outcome into an
//! exit code. Everything else lives in the library (`tetrad_ops`).

use std::process::ExitCode;

use clap::Parser;
use tetrad_ops::cli::Cli;

fn main() -> ExitCode {
    // clap exits with status 2 on a usage error, which is the code tetradctl documents for it.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tetradctl: cannot start the async runtime: {e}");
            return ExitCode::from(cli.internal_failure_code());
        }
    };
    match runtime.block_on(tetrad_ops::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tetradctl: {:#}", e.error);
            ExitCode::from(e.code)
        }
    }
}
