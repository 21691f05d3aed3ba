//! The value commands end to end through the `tessera` binary: scheme, issue, load, pay,
//! refusals, views, journal and settlement, and the demo.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .unwrap()
}

fn ok_json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let o = tessera(&a);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn issue_load_pay_show_settle() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let scheme = p(d, "scheme");
    let card = p(d, "a.card");
    let sam = p(d, "t.sam");
    let init = ok_json(&["scheme", "init", &scheme]);
    // The chip manufacturer CA the issuer SAM trusts (key + certificate, DER).
    assert!(Path::new(&p(d, "scheme/manufacturer-ca.key")).exists());
    assert!(Path::new(&p(d, "scheme/manufacturer-ca.crt")).exists());
    assert_eq!(
        init["manufacturer_ca_cert"],
        p(d, "scheme/manufacturer-ca.crt")
    );
    ok_json(&[
        "card", "issue", "--scheme", &scheme, "--out", &card, "--pin", "1234",
    ]);
    ok_json(&[
        "sam", "issue", "--scheme", &scheme, "--role", "terminal", "--out", &sam,
    ]);
    let r = ok_json(&[
        "load", "--scheme", &scheme, "--card", &card, "--amount", "3000",
    ]);
    assert_eq!(r["balance_after"], 3000);
    let r = ok_json(&["pay", "--sam", &sam, "--card", &card, "--amount", "500"]);
    assert_eq!(r["balance_after"], 2500);

    // Refusals exit non-zero and name the reason; nothing moves.
    let o = tessera(&["pay", "--sam", &sam, "--card", &card, "--amount", "2500"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("PIN required"));
    let o = tessera(&[
        "pay", "--sam", &sam, "--card", &card, "--amount", "2600", "--pin", "1234",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("insufficient funds"));
    let o = tessera(&[
        "load", "--scheme", &scheme, "--card", &card, "--amount", "99000",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("over maximum"));

    let show = ok_json(&["purse", "show", "--card", &card]);
    assert_eq!(show["balance"], 2500);
    assert_eq!(show["currency"], 978);
    assert_eq!(show["counter"], 2);
    let log = ok_json(&["purse", "log", "--card", &card]);
    assert_eq!(log["records"].as_array().unwrap().len(), 2);

    let export = p(d, "journal.json");
    let j = ok_json(&[
        "sam", "journal", "--sam", &sam, "--export", &export, "--settle", "--scheme", &scheme,
    ]);
    assert_eq!(j["settlement"]["purchases_total"], 500);
    assert!(Path::new(&export).exists());
    // One durable record per verified batch, named by SAM, last seq and batch MAC.
    let files = j["settlement_files"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(files[0].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(rec["entries"].as_array().unwrap().len(), 1);
    assert!(rec["ack_hex"].as_str().is_some());
    assert_eq!(rec["batch_no"], 1);
    // The records reconcile with the issuer SAM's signed statement...
    let sam_id = ok_json(&["sam", "show", "--sam", &sam])["sam_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = ok_json(&["sam", "reconcile", "--scheme", &scheme, "--sam-id", &sam_id]);
    assert_eq!(r["reconciled"]["purchases_total"], 500);
    assert_eq!(r["reconciled"]["batches"], 1);
    // ...and a record gone missing is found, naming the shortfall; put back, all is well.
    let record = files[0].as_str().unwrap();
    let aside = p(d, "aside.json");
    std::fs::rename(record, &aside).unwrap();
    let o = tessera(&["sam", "reconcile", "--scheme", &scheme, "--sam-id", &sam_id]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("1 record(s) missing"), "{err}");
    std::fs::rename(&aside, record).unwrap();
    ok_json(&["sam", "reconcile", "--scheme", &scheme, "--sam-id", &sam_id]);
    // A readable amount edited in the record (its MACed batch untouched) is refused too.
    let original = std::fs::read_to_string(record).unwrap();
    let mut edited: serde_json::Value = serde_json::from_str(&original).unwrap();
    edited["entries"][0]["amount"] = serde_json::json!(5);
    std::fs::write(record, edited.to_string()).unwrap();
    let o = tessera(&["sam", "reconcile", "--scheme", &scheme, "--sam-id", &sam_id]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("\"entries\" disagrees"), "{err}");
    std::fs::write(record, original).unwrap();
    // `load` takes the issuer SAM explicitly too; a terminal SAM is refused.
    let r = ok_json(&[
        "load",
        "--scheme",
        &scheme,
        "--card",
        &card,
        "--sam",
        &p(d, "scheme/issuer-sam.card"),
        "--amount",
        "100",
    ]);
    assert_eq!(r["balance_after"], 2600);
    let o = tessera(&[
        "load", "--scheme", &scheme, "--card", &card, "--sam", &sam, "--amount", "100",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not an issuer SAM"));
    // The issuer SAM settles its own journal (the loads).
    let j = ok_json(&[
        "sam",
        "journal",
        "--sam",
        &p(d, "scheme/issuer-sam.card"),
        "--settle",
        "--scheme",
        &scheme,
        "--sam-pin",
        &init_pin(&scheme),
    ]);
    assert_eq!(j["settlement"]["loads_total"], 3100);
    let j = ok_json(&[
        "sam",
        "journal",
        "--sam",
        &p(d, "scheme/issuer-sam.card"),
        "--sam-pin",
        &init_pin(&scheme),
    ]);
    assert_eq!(j["journal"]["entries"].as_array().unwrap().len(), 0);
    let j = ok_json(&["sam", "journal", "--sam", &sam]);
    assert_eq!(j["journal"]["entries"].as_array().unwrap().len(), 0);
}

#[test]
fn demo_runs_and_checks_itself() {
    let dir = tempfile::tempdir().unwrap();
    let o = tessera(&["demo", "--dir", &p(dir.path(), "demo")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("refused as expected"));
    assert!(text.contains("Alice's balance 12.50: ok"));
}

/// The issuer SAM PIN stored in scheme.json.
fn init_pin(scheme: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(scheme).join("scheme.json")).unwrap(),
    )
    .unwrap();
    v["issuer_sam_pin"].as_str().unwrap().to_string()
}

/// In `d`: a scheme, a card (PIN 1234, plus `card_args`) loaded with `amount`, and a
/// terminal SAM. Returns their paths (scheme directory, card, SAM).
fn scheme_card_sam(d: &Path, card_args: &[&str], amount: u32) -> (String, String, String) {
    let scheme = p(d, "scheme");
    let card = p(d, "a.card");
    let sam = p(d, "t.sam");
    ok_json(&["scheme", "init", &scheme]);
    let mut issue = vec![
        "card", "issue", "--scheme", &scheme, "--out", &card, "--pin", "1234",
    ];
    issue.extend_from_slice(card_args);
    ok_json(&issue);
    ok_json(&[
        "sam", "issue", "--scheme", &scheme, "--role", "terminal", "--out", &sam,
    ]);
    let amount = amount.to_string();
    ok_json(&[
        "load", "--scheme", &scheme, "--card", &card, "--amount", &amount,
    ]);
    (scheme, card, sam)
}

/// `tessera sam write-off --scheme SCHEME --sam SAM --seq SEQ` (and `--json`).
fn write_off(scheme: &str, sam: &str, seq: u32, json: bool) -> Output {
    let seq = seq.to_string();
    let mut args = vec![
        "sam",
        "write-off",
        "--scheme",
        scheme,
        "--sam",
        sam,
        "--seq",
        &seq,
    ];
    if json {
        args.push("--json");
    }
    tessera(&args)
}

/// `sam write-off` reaches both SAMs and refuses, naming the reason, an entry that is
/// not PENDING (a completed payment), before and after its settlement; the SAM's
/// journal is unchanged.
#[test]
fn sam_write_off_refuses_an_entry_that_is_not_pending() {
    let dir = tempfile::tempdir().unwrap();
    let (scheme, card, sam) = scheme_card_sam(dir.path(), &[], 1000);
    ok_json(&["pay", "--sam", &sam, "--card", &card, "--amount", "100"]);
    let o = write_off(&scheme, &sam, 1, false);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no PENDING journal entry with sequence number 1"),
        "{err}"
    );
    let show = ok_json(&["sam", "show", "--sam", &sam]);
    assert_eq!(show["journal_count"], 1);
    ok_json(&[
        "sam", "journal", "--sam", &sam, "--settle", "--scheme", &scheme,
    ]);
    let o = write_off(&scheme, &sam, 1, true);
    assert!(!o.status.success());
    assert_eq!(ok_json(&["sam", "show", "--sam", &sam])["journal_count"], 0);
}

/// Authorise a purchase of `amount` at the SAM image `sam` for the purse image `card` and
/// never send it to the purse (the card was pulled): the SAM holds a PENDING entry. Both
/// images are saved. Returns the entry's sequence number.
fn abandoned_purchase(card: &str, sam: &str, amount: u32) -> u32 {
    let files = || {
        let mut v = vec![tessera_os::diag::load_file()];
        v.extend(tessera_host::flows::kit::load_files());
        v
    };
    let mut c = tessera_os::Card::open_image(card, files()).unwrap();
    let mut s = tessera_os::Card::open_image(sam, files()).unwrap();
    c.power_on();
    s.power_on();
    tessera_host::flows::open_sam(&mut s, b"0000").unwrap();
    let now = tessera_host::flows::kit::unix_time(std::time::SystemTime::now());
    let seq = tessera_host::flows::kit::abandon_purchase(&mut c, &mut s, amount, [0, 0, 0, 7], now)
        .unwrap();
    c.save_image(card).unwrap();
    s.save_image(sam).unwrap();
    seq
}

/// `sam resolve` voids an entry the purse never applied and finds one its log has moved
/// past unresolvable; `sam write-off` then settles that one as a written-off purchase, once
/// the issuer has seen it pending in a settled batch.
#[test]
fn sam_resolve_and_write_off_an_abandoned_purchase() {
    let dir = tempfile::tempdir().unwrap();
    let (scheme, card, sam) = scheme_card_sam(dir.path(), &["--log-size", "4"], 1000);
    let lost = abandoned_purchase(&card, &sam, 40);
    let voided = abandoned_purchase(&card, &sam, 50);
    let resolve = |seq: u32| {
        ok_json(&[
            "sam",
            "resolve",
            "--sam",
            &sam,
            "--card",
            &card,
            "--seq",
            &seq.to_string(),
        ])
    };
    let r = resolve(voided);
    assert_eq!(r["resolution"], "void");
    assert_eq!(r["entry"]["amount"], 50);
    for _ in 0..6 {
        ok_json(&["pay", "--sam", &sam, "--card", &card, "--amount", "10"]);
    }
    let r = resolve(lost);
    assert_eq!(r["resolution"], "unresolvable");
    assert_eq!(r["entry"]["status"], "pending");
    // The issuer has not seen it yet.
    let o = write_off(&scheme, &sam, lost, false);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("has not seen this entry pending"), "{err}");
    let s = ok_json(&[
        "sam", "journal", "--sam", &sam, "--settle", "--scheme", &scheme,
    ]);
    assert_eq!(s["settlement"]["purchases_total"], 60);
    let o = write_off(&scheme, &sam, lost, true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["written_off"]["seq"], lost);
    assert_eq!(v["written_off"]["status"], "written_off");
    let s = ok_json(&[
        "sam", "journal", "--sam", &sam, "--settle", "--scheme", &scheme,
    ]);
    assert_eq!(s["settlement"]["written_off_purchases"], 1);
    assert_eq!(s["settlement"]["written_off_purchases_total"], 40);
    assert_eq!(s["settlement"]["purchases_total"], 0);
    assert_eq!(ok_json(&["sam", "show", "--sam", &sam])["journal_count"], 0);
    // The purse paid 6 × 10 and nothing else.
    assert_eq!(
        ok_json(&["purse", "show", "--card", &card])["balance"],
        1000 - 60
    );
}

/// A wrong SAM PIN is counted in the SAM image as on a chip (the try counter is durable
/// before the comparison): each run sees one try less, the fifth blocks the SAM, and the
/// right PIN no longer opens it. The card is untouched throughout.
#[test]
fn a_wrong_sam_pin_is_counted_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (_scheme, card, sam) = scheme_card_sam(dir.path(), &[], 1000);
    let pay = |pin: &str| {
        tessera(&[
            "pay",
            "--sam",
            &sam,
            "--card",
            &card,
            "--amount",
            "10",
            "--sam-pin",
            pin,
        ])
    };
    for left in [4, 3, 2, 1, 0] {
        let o = pay("9999");
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("wrong PIN ({left} tries left)")),
            "{err}"
        );
    }
    let o = pay("0000");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("PIN blocked"), "{err}");
    assert_eq!(
        ok_json(&["purse", "show", "--card", &card])["balance"],
        1000
    );
}

/// Output piped into a reader that stops early: the tool exits quietly with the SIGPIPE
/// status (141) instead of panicking.
#[test]
fn a_closed_stdout_ends_the_tool_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["scheme", "init", &p(dir.path(), "s")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the tool writes (it generates RSA keys first).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Refused commands leave no file behind: no lock file for a card image that does not
/// exist or an issue that fails, no scheme directory for a bad currency.
#[test]
fn refused_commands_leave_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = tessera(&["scheme", "init", &p(d, "bad"), "--currency", "5000"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("001 to 999"));
    assert!(!d.join("bad").exists());
    let scheme = p(d, "scheme");
    ok_json(&["scheme", "init", &scheme]);
    let o = tessera(&[
        "load",
        "--scheme",
        &scheme,
        "--card",
        &p(d, "missing.card"),
        "--amount",
        "1",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such file"));
    let o = tessera(&[
        "card",
        "issue",
        "--scheme",
        &p(d, "no-scheme"),
        "--out",
        &p(d, "x.card"),
    ]);
    assert!(!o.status.success());
    let o = tessera(&[
        "card",
        "issue",
        "--scheme",
        &scheme,
        "--out",
        &p(d, "y.card"),
        "--max-balance",
        "0",
    ]);
    assert!(!o.status.success());
    let mut left: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec!["scheme".to_string()]);
}

/// `scheme init --max-per-load` caps every load through the scheme's issuer SAM: over it,
/// refused and nothing moves; at it, loaded.
#[test]
fn scheme_load_ceiling_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let scheme = p(d, "scheme");
    let card = p(d, "a.card");
    ok_json(&["scheme", "init", &scheme, "--max-per-load", "500"]);
    ok_json(&["card", "issue", "--scheme", &scheme, "--out", &card]);
    let o = tessera(&[
        "load", "--scheme", &scheme, "--card", &card, "--amount", "501",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("ceiling"), "{err}");
    assert_eq!(ok_json(&["purse", "show", "--card", &card])["balance"], 0);
    let r = ok_json(&[
        "load", "--scheme", &scheme, "--card", &card, "--amount", "500",
    ]);
    assert_eq!(r["balance_after"], 500);
}
