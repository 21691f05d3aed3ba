use crate::{CliResult, Global};
#[derive(clap::Subcommand)]
pub enum ScriptCmd {
    /// Run a script (in progress).
    Run,
}
pub fn run(_c: ScriptCmd, _g: Global) -> CliResult {
    Err("script: in progress".into())
}
