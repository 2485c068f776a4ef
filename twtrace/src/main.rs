//! The `twtrace` command: parses the command line and runs it (the code is in the library,
//! src/lib.rs).

use std::process::ExitCode;

use twtrace::{cli, run};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = cli::Cli::from_env();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            twtrace::say!("twtrace: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run::main(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            twtrace::say!("twtrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
