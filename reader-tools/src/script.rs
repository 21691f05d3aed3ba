//! `tessera script run|bench`: APDU scripts and round-trip benchmarks.

use crate::target::{Target, TargetArgs};
use crate::{CliResult, Global};
use std::path::PathBuf;
use std::time::Instant;
use tessera_host::script::{self, Exchange, Format, Outcome, RunOptions, RunReport};
use tessera_host::transport::Transport;

#[derive(clap::Subcommand)]
pub enum ScriptCmd {
    /// Run APDU scripts (apdutool .jcsh/.script, plain .apdu, scriptor .scriptor).
    Run(RunArgs),
    /// Measure APDU round trips (median, percentiles).
    Bench(BenchArgs),
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Script files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Run against a fresh in-process conformance card (diag instances; nothing saved).
    #[arg(long, conflicts_with_all = ["card", "reader"])]
    pub conformance: bool,
    /// Script format (default: from the extension): apdutool, plain, scriptor.
    #[arg(long)]
    pub format: Option<Format>,
    /// Report every mismatch instead of stopping at the first.
    #[arg(long)]
    pub keep_going: bool,
    /// Save the card image after the run (images are not modified otherwise).
    #[arg(long)]
    pub save: bool,
    /// Write a JUnit XML report.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Let the host answer 61xx / 6Cxx (GET RESPONSE, re-issue) instead of the script.
    #[arg(long)]
    pub auto_get_response: bool,
    /// Print only the summary.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Use a fresh in-process conformance card.
    #[arg(long, conflicts_with_all = ["card", "reader"])]
    pub conformance: bool,
    /// Number of timed exchanges.
    #[arg(short = 'n', long, default_value_t = 2000)]
    pub count: usize,
    /// Untimed exchanges first.
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// The APDU to time, hex (default: diag echo with no data).
    #[arg(long, default_value = "80100000")]
    pub apdu: String,
    /// AID to SELECT first, hex (default: the diag instance; "" for none).
    #[arg(long, default_value = "F0544553530101")]
    pub select: String,
}

fn open(target: &TargetArgs, conformance: bool) -> CliResult<Target> {
    if conformance {
        return Ok(Target::Image {
            card: tessera_os::diag::conformance_card(),
            path: PathBuf::from("(conformance card)"),
            _lock: None,
        });
    }
    target.open()
}

pub fn run(c: ScriptCmd, g: Global) -> CliResult {
    match c {
        ScriptCmd::Run(a) => run_scripts(a, g),
        ScriptCmd::Bench(a) => bench(a, g),
    }
}

fn abbreviate(hex: &str) -> String {
    if hex.len() > 64 {
        format!(
            "{}..({} bytes)",
            hex.get(..56).unwrap_or(hex),
            hex.len() / 2
        )
    } else {
        hex.to_string()
    }
}

fn print_exchange(e: &Exchange) {
    let ms = e.micros as f64 / 1000.0;
    let verdict = match e.outcome {
        Outcome::Pass => "ok",
        Outcome::Done => "",
        Outcome::Mismatch => "MISMATCH",
        Outcome::Error => "ERROR",
    };
    match e.kind {
        "apdu" => {
            let header = e
                .header
                .as_ref()
                .map(|h| h.to_string())
                .unwrap_or_else(|| "(unparsable header)".into());
            println!(
                "  line {:>4}  {}  [{}]",
                e.line,
                abbreviate(&e.command),
                header
            );
            println!(
                "             -> {} {}  {:.3} ms  {}",
                abbreviate(&e.response),
                e.sw.as_deref().unwrap_or("----"),
                ms,
                verdict
            );
        }
        "reset" | "powerup" => println!(
            "  line {:>4}  {}  ATR {}  {:.3} ms  {}",
            e.line, e.kind, e.response, ms, verdict
        ),
        "echo" if !e.command.is_empty() => println!("  line {:>4}  {}", e.line, e.command),
        "echo" => {}
        other => println!("  line {:>4}  {} {}", e.line, other, e.command),
    }
    if let Some(m) = &e.message {
        println!("             {verdict}: {m}");
        if let Some(x) = &e.expected {
            println!("             expected: {x}");
        }
    }
}

fn run_scripts(a: RunArgs, g: Global) -> CliResult {
    let mut parsed = Vec::new();
    for f in &a.files {
        let format = match a.format.or_else(|| Format::from_path(f)) {
            Some(fm) => fm,
            None => {
                return Err(format!(
                    "{}: cannot tell the script format from the extension (.jcsh/.script, .apdu, .scriptor); use --format",
                    f.display()
                )
                .into());
            }
        };
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let s = script::parse(&text, format).map_err(|e| format!("{}: {e}", f.display()))?;
        parsed.push((f.display().to_string(), s));
    }
    let mut target = open(&a.target, a.conformance)?;
    let mut reports: Vec<RunReport> = Vec::new();
    let mut failed_any = false;
    for (name, s) in &parsed {
        let opts = RunOptions {
            keep_going: a.keep_going,
            auto_get_response: a.auto_get_response,
            name: name.clone(),
        };
        if !g.json && !a.quiet {
            println!(
                "{name} ({:?}, {} APDUs) on {}",
                s.format,
                s.apdu_count(),
                target.describe()
            );
        }
        let live = !g.json && !a.quiet;
        let report = script::run_observed(s, target.transport(), &opts, &mut |e| {
            if live {
                print_exchange(e)
            }
        });
        if !g.json {
            println!(
                "{name}: {} passed, {} failed ({} APDUs, {:.1} ms){}",
                report.passed,
                report.failed,
                report.apdus,
                report.micros as f64 / 1000.0,
                if report.stopped_early {
                    ", stopped at the first failure"
                } else {
                    ""
                }
            );
        }
        failed_any |= !report.ok();
        let stop = !report.ok() && !a.keep_going;
        reports.push(report);
        if stop {
            break;
        }
    }
    if let Some(j) = &a.junit {
        std::fs::write(j, script::junit(&reports)).map_err(|e| format!("{}: {e}", j.display()))?;
    }
    if g.json {
        println!(
            "{}",
            serde_json::json!({ "scripts": reports, "ok": !failed_any })
        );
    }
    if a.save {
        if a.conformance {
            return Err("--save needs --card FILE".into());
        }
        target.save()?;
    }
    if failed_any {
        Err("script failed".into())
    } else {
        Ok(())
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(idx).copied().unwrap_or(0.0)
}

fn bench(a: BenchArgs, g: Global) -> CliResult {
    let apdu = tessera_apdu::parse_hex(&a.apdu).map_err(|e| format!("--apdu: {e}"))?;
    let select = tessera_apdu::parse_hex(&a.select).map_err(|e| format!("--select: {e}"))?;
    if a.count == 0 {
        return Err("-n must be at least 1".into());
    }
    let mut target = open(&a.target, a.conformance)?;
    let described = target.describe();
    let t: &mut dyn Transport = target.transport();
    if !select.is_empty() {
        let cmd = tessera_apdu::Command::new(0x00, 0xA4, 0x04, 0x00)
            .with_data(select)
            .with_le(256);
        let r = t.transmit(&cmd)?;
        if !r.sw.is_success() {
            return Err(format!("SELECT answered {}", r.sw).into());
        }
    }
    let first = t.transmit_raw(&apdu)?;
    for _ in 0..a.warmup {
        t.transmit_raw(&apdu)?;
    }
    let mut times = Vec::with_capacity(a.count);
    let all = Instant::now();
    for _ in 0..a.count {
        let t0 = Instant::now();
        t.transmit_raw(&apdu)?;
        times.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    let total = all.elapsed().as_secs_f64();
    times.sort_by(|x, y| x.total_cmp(y));
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let (median, p10, p90, p99) = (
        percentile(&times, 0.5),
        percentile(&times, 0.1),
        percentile(&times, 0.9),
        percentile(&times, 0.99),
    );
    let (min, max) = (
        times.first().copied().unwrap_or(0.0),
        times.last().copied().unwrap_or(0.0),
    );
    if g.json {
        println!(
            "{}",
            serde_json::json!({
                "target": described, "apdu": a.apdu, "response": hex::encode_upper(&first), "count": a.count,
                "median_us": median, "mean_us": mean, "p10_us": p10, "p90_us": p90, "p99_us": p99,
                "min_us": min, "max_us": max, "apdus_per_s": a.count as f64 / total,
            })
        );
    } else {
        println!(
            "{described}: {} x {} -> {}",
            a.count,
            a.apdu,
            hex::encode_upper(&first)
        );
        println!(
            "round trip: median {median:.1} us, mean {mean:.1} us, p10 {p10:.1}, p90 {p90:.1}, p99 {p99:.1}, min {min:.1}, max {max:.1} ({:.0} APDU/s)",
            a.count as f64 / total
        );
    }
    Ok(())
}
