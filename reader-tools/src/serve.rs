use crate::{CliResult, Global};
#[derive(clap::Args)]
pub struct ServeArgs {}
pub fn run(_a: ServeArgs, _g: Global) -> CliResult {
    Err("serve: in progress".into())
}
