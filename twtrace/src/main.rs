//! twtrace: live tracing of TCP TIME-WAIT sockets and their fate, per remote IP, with eBPF.
//!
//! Layout: `kernel/` learns about the running kernel; `signals/` lists, per signal, the hooks
//! that can observe it and decodes its records; `plan` picks hooks; `loader` and `transport`
//! move data from the kernel; `aggregate` is the kernel-agnostic core; `sinks` only read it.

mod aggregate;
mod cli;
mod doctor;
mod event;
mod filter;
mod kernel;
mod loader;
mod pipeline;
mod plan;
mod run;
mod signals;
mod sinks;
mod transport;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("twtrace: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run::main(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twtrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
