//! `tessera`: cards and SAMs as image files or readers, `serve` to PC/SC, APDU scripts,
//! and the value flows. Every command accepts `--json`.
#![forbid(unsafe_code)]

mod applets;
mod image_cmd;
mod readers;
mod script;
mod serve;
mod target;
mod value;
mod vpcd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Error type of every subcommand: a message naming the problem.
pub type CliResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Options every subcommand sees.
#[derive(Debug, Clone, Copy)]
pub struct Global {
    pub json: bool,
}

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Smart-card OS emulator: purse and SAM applets, PC/SC virtual cards, APDU scripts"
)]
struct Cli {
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// More logging (-v: info, -vv: debug including every APDU, -vvv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve card images to pcscd through the vpcd protocol (vsmartcard).
    Serve(serve::ServeArgs),
    /// List PC/SC readers.
    Readers(readers::ReadersArgs),
    /// Run APDU scripts.
    #[command(subcommand)]
    Script(script::ScriptCmd),
    /// Create and inspect card images.
    #[command(subcommand)]
    Image(image_cmd::ImageCmd),
    #[command(flatten)]
    Value(value::ValueCmd),
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let global = Global { json: cli.json };
    let result = match cli.cmd {
        Cmd::Serve(a) => serve::run(a, global),
        Cmd::Readers(a) => readers::run(a, global),
        Cmd::Script(c) => script::run(c, global),
        Cmd::Image(c) => image_cmd::run(c, global),
        Cmd::Value(c) => value::run(c, global),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if global.json {
                println!("{}", serde_json::json!({ "error": e.to_string() }));
            }
            eprintln!("tessera: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Output piped into a reader that stops early (`tessera ... | head`): Rust ignores
/// SIGPIPE, so `println!` panics on the broken pipe. Exit quietly instead, with the status
/// a shell gives a process killed by SIGPIPE (128 + 13); every other panic is reported as
/// usual.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}
