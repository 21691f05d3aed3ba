//! Runs the conformance scripts in `test-vectors/scripts/` against
//! `tessera_os::diag::conformance_card()` with a minimal reader of the plain format:
//! `HEXAPDU => EXPECTED` (`..` any byte, `..*` any bytes, `x` any SW nibble), `reset`,
//! `#` comments. The full runner lives in `tessera_host::script`; this keeps the OS crate
//! honest on its own.

use std::path::PathBuf;
use tessera_os::diag::conformance_card;

const SCRIPTS: &[&str] = &[
    "select.apdu",
    "channels.apdu",
    "chaining.apdu",
    "get_response.apdu",
    "wrong_length.apdu",
    "pin.apdu",
    "transient.apdu",
    "transaction.apdu",
];

#[derive(Debug, Clone, PartialEq)]
enum Pat {
    Byte(u8),
    Any,
    AnyRest,
}

fn parse_data_pattern(text: &str) -> Vec<Pat> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '.' {
            assert_eq!(chars.get(i + 1), Some(&'.'), "lone '.' in {text}");
            if chars.get(i + 2) == Some(&'*') {
                out.push(Pat::AnyRest);
                i += 3;
            } else {
                out.push(Pat::Any);
                i += 2;
            }
        } else {
            let byte = u8::from_str_radix(&text[i..i + 2], 16)
                .unwrap_or_else(|_| panic!("bad hex in {text}"));
            out.push(Pat::Byte(byte));
            i += 2;
        }
    }
    out
}

fn matches(pat: &[Pat], data: &[u8]) -> bool {
    match pat.split_first() {
        None => data.is_empty(),
        Some((Pat::AnyRest, rest)) => (0..=data.len()).any(|k| matches(rest, &data[k..])),
        Some((Pat::Any, rest)) => !data.is_empty() && matches(rest, &data[1..]),
        Some((Pat::Byte(b), rest)) => data.first() == Some(b) && matches(rest, &data[1..]),
    }
}

fn sw_matches(pat: &str, sw: u16) -> bool {
    let got = format!("{sw:04X}");
    pat.len() == 4
        && pat
            .chars()
            .zip(got.chars())
            .all(|(p, g)| p == 'x' || p == 'X' || p.eq_ignore_ascii_case(&g))
}

fn run_script(name: &str) -> usize {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../test-vectors/scripts")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut card = conformance_card();
    let mut exchanges = 0;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        if line.eq_ignore_ascii_case("reset") {
            card.reset();
            continue;
        }
        let (cmd, expect) = line
            .split_once("=>")
            .unwrap_or_else(|| panic!("{name}:{}: no =>", n + 1));
        let apdu = hex::decode(cmd.split_whitespace().collect::<String>()).unwrap();
        let expect: String = expect.split_whitespace().collect();
        let (data_pat, sw_pat) = expect.split_at(expect.len() - 4);
        let resp = card.process(&apdu).unwrap();
        let ok =
            matches(&parse_data_pattern(data_pat), &resp.data) && sw_matches(sw_pat, resp.sw.0);
        assert!(
            ok,
            "{name}:{}: {}\n  expected {expect}\n  got      {}{:04X}",
            n + 1,
            cmd.trim(),
            hex::encode_upper(&resp.data),
            resp.sw.0
        );
        exchanges += 1;
    }
    exchanges
}

#[test]
fn pattern_matcher() {
    assert!(matches(&parse_data_pattern("AA..CC"), &[0xAA, 0x00, 0xCC]));
    assert!(matches(&parse_data_pattern("AA..*CC"), &[0xAA, 0xCC]));
    assert!(matches(&parse_data_pattern("AA..*CC"), &[0xAA, 1, 2, 0xCC]));
    assert!(!matches(&parse_data_pattern("AA..*CC"), &[0xAA, 1, 2]));
    assert!(!matches(&parse_data_pattern(".."), &[]));
    assert!(sw_matches("61xx", 0x6110));
    assert!(!sw_matches("61xx", 0x6210));
}

macro_rules! script_test {
    ($fn:ident, $file:expr) => {
        #[test]
        fn $fn() {
            let n = run_script($file);
            assert!(n >= 10, "{} has only {n} exchanges", $file);
        }
    };
}

script_test!(select, "select.apdu");
script_test!(channels, "channels.apdu");
script_test!(chaining, "chaining.apdu");
script_test!(get_response, "get_response.apdu");
script_test!(wrong_length, "wrong_length.apdu");
script_test!(pin, "pin.apdu");
script_test!(transient, "transient.apdu");
script_test!(transaction, "transaction.apdu");

#[test]
fn every_script_is_listed() {
    // The scripts this crate owns are all run above.
    for s in SCRIPTS {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../test-vectors/scripts")
            .join(s);
        assert!(path.exists(), "{}", path.display());
    }
}
