use crate::{CliResult, Global};
#[derive(clap::Args)]
pub struct ReadersArgs {}
pub fn run(_a: ReadersArgs, _g: Global) -> CliResult {
    Err("readers: in progress".into())
}
