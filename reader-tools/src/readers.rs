//! `tessera readers`: list PC/SC readers.

use crate::{CliResult, Global};

#[derive(clap::Args)]
pub struct ReadersArgs {}

#[cfg(feature = "pcsc")]
pub fn run(_a: ReadersArgs, g: Global) -> CliResult {
    let names = tessera_host::transport::PcscTransport::list_readers()?;
    if g.json {
        println!("{}", serde_json::json!({ "readers": names }));
    } else if names.is_empty() {
        println!("no PC/SC readers");
    } else {
        for n in names {
            println!("{n}");
        }
    }
    Ok(())
}

#[cfg(not(feature = "pcsc"))]
pub fn run(_a: ReadersArgs, _g: Global) -> CliResult {
    Err(crate::target::NO_PCSC.into())
}
