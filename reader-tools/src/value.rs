use crate::{CliResult, Global};
#[derive(clap::Subcommand)]
pub enum ValueCmd {
    /// Show the purse (in progress).
    Purse,
}
pub fn run(_c: ValueCmd, _g: Global) -> CliResult {
    Err("value commands: in progress".into())
}
