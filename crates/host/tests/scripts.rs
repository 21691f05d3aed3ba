//! Runs every `*.apdu` script under `test-vectors/scripts/` (recursively) against a fresh
//! conformance card (`tessera_os::diag::conformance_card()`), and fails on any mismatch.
//! Scripts under `examples/` are run too: they are written for the conformance card.

use std::path::{Path, PathBuf};
use tessera_host::script::{self, Format, Outcome, RunOptions};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|e| e == "apdu") {
            out.push(p);
        }
    }
}

#[test]
fn conformance_scripts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test-vectors/scripts");
    let mut files = Vec::new();
    collect(&root, &mut files);
    if files.is_empty() {
        println!("no .apdu scripts under {}: nothing to run", root.display());
        return;
    }
    let mut failures = Vec::new();
    let (mut total_pass, mut total_fail) = (0, 0);
    for f in &files {
        let name = f.strip_prefix(&root).unwrap_or(f).display().to_string();
        let text = std::fs::read_to_string(f).unwrap();
        let parsed = match script::parse(&text, Format::Plain) {
            Ok(s) => s,
            Err(e) => {
                println!("{name}: PARSE ERROR {e}");
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let mut card = tessera_os::diag::conformance_card();
        let opts = RunOptions {
            keep_going: true,
            name: name.clone(),
            ..Default::default()
        };
        let report = script::run(&parsed, &mut card, &opts);
        println!(
            "{name}: {} passed, {} failed ({} APDUs)",
            report.passed, report.failed, report.apdus
        );
        for e in report
            .exchanges
            .iter()
            .filter(|e| matches!(e.outcome, Outcome::Mismatch | Outcome::Error))
        {
            let msg = format!(
                "{name}:{}: {} -> {} {} expected {}: {}",
                e.line,
                e.command,
                e.response,
                e.sw.as_deref().unwrap_or("-"),
                e.expected.as_deref().unwrap_or("-"),
                e.message.as_deref().unwrap_or("")
            );
            println!("  {msg}");
            failures.push(msg);
        }
        total_pass += report.passed;
        total_fail += report.failed;
    }
    println!(
        "{} scripts: {total_pass} passed, {total_fail} failed",
        files.len()
    );
    assert!(
        failures.is_empty(),
        "script failures:\n{}",
        failures.join("\n")
    );
}
