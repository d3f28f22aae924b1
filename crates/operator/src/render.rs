//! `workerpool-operator render`: offline rendering of the objects the operator would apply.

use crate::cli::RenderArgs;

/// Not yet implemented.
pub fn run(_args: &RenderArgs) -> anyhow::Result<()> {
    anyhow::bail!("render is not implemented yet")
}
