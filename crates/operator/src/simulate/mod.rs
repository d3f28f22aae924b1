//! `workerpool-operator simulate`: replays a queue-load trace through the real scaling code.

use crate::cli::SimulateArgs;

/// Runs the simulation described by `args`.
pub fn run(_args: &SimulateArgs) -> anyhow::Result<()> {
    anyhow::bail!("simulate is not implemented yet")
}
