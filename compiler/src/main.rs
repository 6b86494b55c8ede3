//! The `cpucc` command line. Exit codes: 0 success, 2 bad input (model,
//! files, flags) or unsupported feature, 1 internal error.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cpucc::Error;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // A panic is a cpucc bug: report it in one line with exit code 1.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        eprintln!("cpucc: internal error: panic{at}: {msg}");
    }));
    match std::panic::catch_unwind(|| cli::run(args)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("cpucc: {e}");
            match e {
                Error::Internal(_) => ExitCode::from(1),
                _ => ExitCode::from(2),
            }
        }
        Err(_) => ExitCode::from(1),
    }
}
