//! The `workerpool-operator` binary.

use std::process::ExitCode;

use clap::Parser;
use workerpool_operator::cli::{Cli, Command};

/// The static (musl) build, the container image's, allocates with mimalloc: musl's malloc is
/// slow with many threads and keeps freed pages (see `memory.rs` and docs/install.md for the
/// measured footprint of both builds).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds => workerpool_operator::crds::print(),
        Command::Run(args) => {
            // Before the runtime's threads start.
            workerpool_operator::memory::configure();
            let mut builder = if args.worker_threads > 1 {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(usize::from(args.worker_threads));
                b
            } else {
                tokio::runtime::Builder::new_current_thread()
            };
            match builder.enable_all().build() {
                Ok(runtime) => runtime.block_on(workerpool_operator::run::run(args)),
                Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
            }
        }
        Command::Render(args) => workerpool_operator::render::run(&args),
        #[cfg(feature = "simulate")]
        Command::Simulate(args) => workerpool_operator::simulate::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
