//! The `workerpool-operator` binary.

use std::process::ExitCode;

use clap::Parser;
use workerpool_operator::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds => workerpool_operator::crds::print(),
        Command::Run(args) => workerpool_operator::run::run(args).await,
        Command::Render(args) => workerpool_operator::render::run(&args),
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
