//! Task runner for the twtrace workspace (`cargo xtask <task>`, alias in .cargo/config.toml).

mod bench;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "twtrace development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Boot stock Debian kernels under QEMU and run a command inside each.
    Vm(vm::VmArgs),
    /// Build the test binaries statically and run the e2e suite inside each kernel.
    VmTest(vm::test::VmTestArgs),
    /// Measure twtrace's overhead on a connection-churn workload (root; wrk, nginx).
    Bench(bench::BenchArgs),
    /// Run `bench` inside a stock kernel under QEMU counting instructions (`--accel tcg
    /// --icount 0`): deterministic costs, and the routes this host refuses.
    VmBench(vm::bench::VmBenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Vm(args) => vm::run(&args),
        Task::VmTest(args) => vm::test::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::VmBench(args) => vm::bench::run(&args),
    };
    match result {
        // The guest command's exit code becomes ours, so scripts and CI see test failures.
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::exit(1);
        }
    }
}
