//! APDU scripts: three formats, one runner.
//!
//! * [`Format::Apdutool`] (`.jcsh`, `.script`): Java Card `apdutool` / jCardSim scripts.
//!   Statements end with `;`, may span lines; bytes are written `0x00`; `//` and `/* */`
//!   comments; `powerup;`, `powerdown;`, `echo "text";`, `delay N;` (milliseconds),
//!   `output on|off;`, `contacted;`, `contactless;` (the last three are accepted and
//!   ignored). An APDU is `CLA INS P1 P2 Lc [data] [Le]`: Lc counts the data bytes; a
//!   trailing Le byte of `0x00` means "no Le" (apdutool's convention), any other value is
//!   sent as Le.
//! * [`Format::Plain`] (`.apdu`): one command per line, hex (spaces allowed), optionally
//!   followed by `=>` and the expected response; `#` comments; `reset` (optionally
//!   `reset => ATR-pattern`), `powerup`, `powerdown`; `let NAME = HEX` defines a variable.
//!   See `docs/scripts.md` for the pattern language (`..` any byte, `..*` any number of
//!   bytes, `$(name:N)` capture, `$name` substitute, `x`/`.` nibble wildcards in the SW).
//! * [`Format::Scriptor`] (`.scriptor`): pcsc-tools `scriptor` input: hex bytes separated
//!   by spaces, one APDU per line, `reset`, `exit`, `#` comments.
//!
//! The runner sends every APDU as one raw exchange ([`Transport::transmit_raw`]): a script
//! sees the card's 61xx and 6Cxx answers and issues GET RESPONSE itself, as conformance
//! tests need. [`RunOptions::auto_get_response`] uses [`Transport::transmit`] instead.

use crate::transport::{Transport, TransportError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tessera_apdu::Command;

/// Script formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Java Card apdutool / jCardSim.
    Apdutool,
    /// Tessera's plain line format with expected responses.
    Plain,
    /// pcsc-tools scriptor.
    Scriptor,
}

impl Format {
    /// The format a file's extension names: `.jcsh`/`.script` apdutool, `.apdu` plain,
    /// `.scriptor` scriptor.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "jcsh" | "script" => Some(Format::Apdutool),
            "apdu" => Some(Format::Plain),
            "scriptor" => Some(Format::Scriptor),
            _ => None,
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s.to_ascii_lowercase().as_str() {
            "apdutool" | "jcsh" | "jcardsim" | "script" => Ok(Format::Apdutool),
            "plain" | "apdu" => Ok(Format::Plain),
            "scriptor" => Ok(Format::Scriptor),
            other => Err(format!(
                "unknown script format {other:?} (apdutool, plain, scriptor)"
            )),
        }
    }
}

/// A parse error, naming the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ScriptError {
    pub line: usize,
    pub message: String,
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, ScriptError> {
    Err(ScriptError {
        line,
        message: message.into(),
    })
}

/// A piece of a command: literal bytes or a variable's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Bytes(Vec<u8>),
    Var(String),
}

/// One element of an expected-response pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pat {
    /// Exactly this byte.
    Byte(u8),
    /// `..`: any one byte.
    Any,
    /// `..*`: any number of bytes (zero or more).
    AnyRest,
    /// `$(name:N)` (fixed length) or `$(name:*)` (the rest): capture into a variable.
    Capture { name: String, len: Option<usize> },
    /// `$name`: the bytes of a variable captured or defined before.
    Var(String),
}

/// An expected response: data pattern and SW mask (`value`, `mask`: bits set in the mask
/// are compared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub data: Vec<Pat>,
    pub sw: Option<(u16, u16)>,
    /// The pattern as written, for reports.
    pub text: String,
}

/// One step of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Apdu {
        parts: Vec<Part>,
        expect: Option<Expect>,
    },
    Reset {
        expect_atr: Option<Expect>,
    },
    PowerUp,
    PowerDown,
    Let {
        name: String,
        value: Vec<u8>,
    },
    Echo(String),
    Delay(u64),
}

/// A parsed script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub format: Format,
    /// Steps with the (1-based) line each starts on.
    pub steps: Vec<(usize, Step)>,
}

impl Script {
    /// Number of APDU exchanges.
    pub fn apdu_count(&self) -> usize {
        self.steps
            .iter()
            .filter(|(_, s)| matches!(s, Step::Apdu { .. }))
            .count()
    }
}

/// Parse a script.
pub fn parse(text: &str, format: Format) -> Result<Script, ScriptError> {
    let steps = match format {
        Format::Apdutool => parse_apdutool(text)?,
        Format::Plain => parse_plain(text)?,
        Format::Scriptor => parse_scriptor(text)?,
    };
    Ok(Script { format, steps })
}

// ---------------------------------------------------------------- scriptor

fn parse_scriptor(text: &str) -> Result<Vec<(usize, Step)>, ScriptError> {
    let mut steps = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        match content.to_ascii_lowercase().as_str() {
            "reset" => steps.push((line, Step::Reset { expect_atr: None })),
            "exit" | "quit" => break,
            _ => {
                let mut bytes = Vec::new();
                for tok in content.split_whitespace() {
                    bytes.extend(hex_bytes(tok).map_err(|m| ScriptError { line, message: m })?);
                }
                if bytes.len() < 4 {
                    return err(
                        line,
                        format!(
                            "APDU of {} bytes is shorter than the 4-byte header",
                            bytes.len()
                        ),
                    );
                }
                steps.push((
                    line,
                    Step::Apdu {
                        parts: vec![Part::Bytes(bytes)],
                        expect: None,
                    },
                ));
            }
        }
    }
    Ok(steps)
}

fn hex_bytes(tok: &str) -> Result<Vec<u8>, String> {
    let t = tok
        .strip_prefix("0x")
        .or_else(|| tok.strip_prefix("0X"))
        .unwrap_or(tok);
    if t.is_empty() || !t.len().is_multiple_of(2) || !t.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{tok:?} is not hex bytes"));
    }
    hex::decode(t).map_err(|e| format!("{tok:?}: {e}"))
}

// ---------------------------------------------------------------- apdutool

/// Remove comments, keeping line structure (so statements keep their line numbers).
fn strip_c_comments(text: &str) -> Result<String, ScriptError> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut line = 1;
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
            in_string = false;
            out.push(c);
            continue;
        }
        if c == '"' {
            in_string = !in_string;
            out.push(c);
            continue;
        }
        if !in_string && c == '/' && chars.peek() == Some(&'/') {
            for d in chars.by_ref() {
                if d == '\n' {
                    line += 1;
                    out.push('\n');
                    break;
                }
            }
            continue;
        }
        if !in_string && c == '/' && chars.peek() == Some(&'*') {
            chars.next();
            let start = line;
            let mut closed = false;
            let mut prev = ' ';
            for d in chars.by_ref() {
                if d == '\n' {
                    line += 1;
                    out.push('\n');
                }
                if prev == '*' && d == '/' {
                    closed = true;
                    break;
                }
                prev = d;
            }
            if !closed {
                return err(start, "unterminated /* comment");
            }
            out.push(' ');
            continue;
        }
        out.push(c);
    }
    Ok(out)
}

fn parse_apdutool(text: &str) -> Result<Vec<(usize, Step)>, ScriptError> {
    let clean = strip_c_comments(text)?;
    let mut steps = Vec::new();
    let mut stmt = String::new();
    let mut stmt_line = 0usize;
    let mut line = 1usize;
    let mut in_string = false;
    for c in clean.chars() {
        if c == '\n' {
            line += 1;
        }
        if c == '"' {
            in_string = !in_string;
        }
        if c == ';' && !in_string {
            if !stmt.trim().is_empty() {
                steps.push((stmt_line, apdutool_statement(stmt.trim(), stmt_line)?));
            }
            stmt.clear();
            continue;
        }
        if stmt.trim().is_empty() && !c.is_whitespace() {
            stmt_line = line;
        }
        stmt.push(c);
    }
    if !stmt.trim().is_empty() {
        return err(
            stmt_line,
            format!(
                "statement {:?} is not terminated by ';'",
                short(stmt.trim())
            ),
        );
    }
    Ok(steps)
}

fn short(s: &str) -> String {
    let mut t: String = s.chars().take(40).collect();
    if s.chars().count() > 40 {
        t.push_str("...");
    }
    t.replace('\n', " ")
}

fn apdutool_statement(stmt: &str, line: usize) -> Result<Step, ScriptError> {
    let lower = stmt.to_ascii_lowercase();
    let mut words = lower.split_whitespace();
    let first = words.next().unwrap_or("");
    match first {
        "powerup" => return Ok(Step::PowerUp),
        "powerdown" => return Ok(Step::PowerDown),
        "output" | "contacted" | "contactless" => return Ok(Step::Echo(String::new())),
        "echo" => {
            let rest = stmt.get(4..).unwrap_or("").trim();
            let msg = rest
                .strip_prefix('"')
                .and_then(|r| r.strip_suffix('"'))
                .unwrap_or(rest);
            return Ok(Step::Echo(msg.to_string()));
        }
        "delay" => {
            let n = words.next().unwrap_or("");
            return match n.parse::<u64>() {
                Ok(ms) => Ok(Step::Delay(ms)),
                Err(_) => err(
                    line,
                    format!("delay needs a number of milliseconds, got {n:?}"),
                ),
            };
        }
        _ => {}
    }
    let mut bytes = Vec::new();
    for tok in stmt.split_whitespace() {
        let Some(h) = tok.strip_prefix("0x").or_else(|| tok.strip_prefix("0X")) else {
            return err(
                line,
                format!("{tok:?} is neither a 0x.. byte nor a known statement"),
            );
        };
        match u8::from_str_radix(h, 16) {
            Ok(b) if !h.is_empty() && h.len() <= 2 => bytes.push(b),
            _ => return err(line, format!("{tok:?} is not a byte")),
        }
    }
    let apdu = match bytes.as_slice() {
        [_, _, _, _] => bytes.clone(),
        [header @ .., lc] if header.len() == 4 => {
            // CLA INS P1 P2 Le (no data): Lc 0 is "no data, no Le".
            let mut v = header.to_vec();
            if *lc != 0 {
                v.push(*lc);
            }
            v
        }
        [h0, h1, h2, h3, lc, rest @ ..] => {
            let lc = *lc as usize;
            let (data, le) = if rest.len() == lc {
                (rest, None)
            } else if rest.len() == lc + 1 {
                (rest.get(..lc).unwrap_or(&[]), rest.last().copied())
            } else {
                return err(
                    line,
                    format!(
                        "Lc is {lc} but {} bytes follow it (expected {lc} data bytes and an optional Le)",
                        rest.len()
                    ),
                );
            };
            let mut cmd = Command::new(*h0, *h1, *h2, *h3).with_data(data.to_vec());
            match le {
                Some(0) | None => {}
                Some(l) => cmd = cmd.with_le(l as usize),
            }
            cmd.to_bytes().map_err(|e| ScriptError {
                line,
                message: e.to_string(),
            })?
        }
        _ => {
            return err(
                line,
                format!(
                    "APDU of {} bytes is shorter than the 4-byte header",
                    bytes.len()
                ),
            );
        }
    };
    Ok(Step::Apdu {
        parts: vec![Part::Bytes(apdu)],
        expect: None,
    })
}

// ---------------------------------------------------------------- plain

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn parse_plain(text: &str) -> Result<Vec<(usize, Step)>, ScriptError> {
    let mut steps = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let (cmd_text, expect_text) = match content.split_once("=>") {
            Some((c, e)) => (c.trim(), Some(e.trim())),
            None => (content, None),
        };
        let lower = cmd_text.to_ascii_lowercase();
        if lower == "reset" {
            let expect_atr = match expect_text {
                Some(e) => Some(parse_expect(e, line, false)?),
                None => None,
            };
            steps.push((line, Step::Reset { expect_atr }));
            continue;
        }
        if lower == "powerup" || lower == "powerdown" {
            if expect_text.is_some() {
                return err(line, format!("{lower} takes no expected response"));
            }
            steps.push((
                line,
                if lower == "powerup" {
                    Step::PowerUp
                } else {
                    Step::PowerDown
                },
            ));
            continue;
        }
        if lower.starts_with("let ") {
            let rest = cmd_text.get(4..).unwrap_or("");
            let Some((name, value)) = rest.split_once('=') else {
                return err(line, "let needs the form: let NAME = HEX");
            };
            let name = name.trim();
            if !name.starts_with(is_name_start) || !name.chars().all(is_name_char) {
                return err(
                    line,
                    format!("{name:?} is not a variable name (letters, digits, _)"),
                );
            }
            let value = tessera_apdu::parse_hex(value).map_err(|e| ScriptError {
                line,
                message: e.to_string(),
            })?;
            if expect_text.is_some() {
                return err(line, "let takes no expected response");
            }
            steps.push((
                line,
                Step::Let {
                    name: name.to_string(),
                    value,
                },
            ));
            continue;
        }
        let parts = parse_command_parts(cmd_text, line)?;
        let fixed: usize = parts
            .iter()
            .map(|p| match p {
                Part::Bytes(b) => b.len(),
                Part::Var(_) => 0,
            })
            .sum();
        if fixed < 4 && !parts.iter().any(|p| matches!(p, Part::Var(_))) {
            return err(
                line,
                format!("APDU of {fixed} bytes is shorter than the 4-byte header"),
            );
        }
        let expect = match expect_text {
            Some(e) => Some(parse_expect(e, line, true)?),
            None => None,
        };
        steps.push((line, Step::Apdu { parts, expect }));
    }
    Ok(steps)
}

/// Text as characters. Separators (whitespace and `:`) end a variable name and are
/// otherwise ignored, also between the two digits of a byte.
fn chars_of(text: &str) -> Vec<char> {
    text.chars().collect()
}

fn is_sep(c: char) -> bool {
    c.is_whitespace() || c == ':'
}

/// The next two hex digits from `i` (whitespace between them allowed): (byte, next index).
fn hex_pair(chars: &[char], i: usize) -> Option<(u8, usize)> {
    let h = chars.get(i)?.to_digit(16)?;
    let mut j = i + 1;
    while chars.get(j).is_some_and(|c| is_sep(*c)) {
        j += 1;
    }
    let l = chars.get(j)?.to_digit(16)?;
    Some(((h * 16 + l) as u8, j + 1))
}

fn parse_command_parts(text: &str, line: usize) -> Result<Vec<Part>, ScriptError> {
    let chars = chars_of(text);
    let mut parts = Vec::new();
    let mut bytes = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        if is_sep(c) {
            i += 1;
            continue;
        }
        if c == '$' {
            let (name, next) = read_var(&chars, i + 1, line)?;
            if !bytes.is_empty() {
                parts.push(Part::Bytes(std::mem::take(&mut bytes)));
            }
            parts.push(Part::Var(name));
            i = next;
            continue;
        }
        match hex_pair(&chars, i) {
            Some((b, next)) => {
                bytes.push(b);
                i = next;
            }
            None => {
                let s: String = chars
                    .get(i..(i + 2).min(chars.len()))
                    .unwrap_or(&[])
                    .iter()
                    .collect();
                return err(
                    line,
                    format!("{s:?} in the command is not a hex byte or $variable"),
                );
            }
        }
    }
    if !bytes.is_empty() {
        parts.push(Part::Bytes(bytes));
    }
    if parts.is_empty() {
        return err(line, "empty command");
    }
    Ok(parts)
}

/// Read a variable name starting at `i` (after `$`); `${name}` or `$name`.
fn read_var(chars: &[char], i: usize, line: usize) -> Result<(String, usize), ScriptError> {
    if chars.get(i) == Some(&'{') {
        let end = (i + 1..chars.len()).find(|&j| chars.get(j) == Some(&'}'));
        let Some(end) = end else {
            return err(line, "unterminated ${...}");
        };
        let name: String = chars.get(i + 1..end).unwrap_or(&[]).iter().collect();
        if !name.starts_with(is_name_start) || !name.chars().all(is_name_char) {
            return err(line, format!("{name:?} is not a variable name"));
        }
        return Ok((name, end + 1));
    }
    let mut j = i;
    while chars.get(j).is_some_and(|c| is_name_char(*c)) {
        j += 1;
    }
    let name: String = chars.get(i..j).unwrap_or(&[]).iter().collect();
    if !name.starts_with(is_name_start) {
        return err(line, "$ must be followed by a variable name");
    }
    Ok((name, j))
}

fn parse_expect(text: &str, line: usize, with_sw: bool) -> Result<Expect, ScriptError> {
    let chars = chars_of(text);
    let (body, sw) = if with_sw {
        // The status word is the last four non-blank characters.
        let positions: Vec<usize> = (0..chars.len())
            .filter(|&i| chars.get(i).is_some_and(|c| !is_sep(*c)))
            .collect();
        let Some(&cut) = positions
            .len()
            .checked_sub(4)
            .and_then(|k| positions.get(k))
        else {
            return err(
                line,
                format!("expected response {text:?} must end with a 4-digit status word"),
            );
        };
        let body = chars.get(..cut).unwrap_or(&[]);
        let sw_chars: Vec<char> = chars
            .get(cut..)
            .unwrap_or(&[])
            .iter()
            .copied()
            .filter(|c| !is_sep(*c))
            .collect();
        let mut value = 0u16;
        let mut mask = 0u16;
        for c in &sw_chars {
            value <<= 4;
            mask <<= 4;
            match c {
                '.' | 'x' | 'X' | '?' => {}
                c => match c.to_digit(16) {
                    Some(d) => {
                        value |= d as u16;
                        mask |= 0xF;
                    }
                    None => {
                        let s: String = sw_chars.iter().collect();
                        return err(
                            line,
                            format!("status word {s:?} must be 4 hex digits or ./x wildcards"),
                        );
                    }
                },
            }
        }
        (body, Some((value, mask)))
    } else {
        (chars.as_slice(), None)
    };
    let mut data = Vec::new();
    let mut i = 0;
    let mut variable = 0;
    while let Some(&c) = body.get(i) {
        if is_sep(c) {
            i += 1;
            continue;
        }
        if c == '.' {
            if body.get(i + 1) != Some(&'.') {
                return err(
                    line,
                    "a lone '.' in the expected data; write '..' for any byte",
                );
            }
            if body.get(i + 2) == Some(&'*') {
                data.push(Pat::AnyRest);
                variable += 1;
                i += 3;
            } else {
                data.push(Pat::Any);
                i += 2;
            }
            continue;
        }
        if c == '$' {
            if body.get(i + 1) == Some(&'(') {
                let end = (i + 2..body.len()).find(|&j| body.get(j) == Some(&')'));
                let Some(end) = end else {
                    return err(line, "unterminated $( capture");
                };
                let inner: String = body
                    .get(i + 2..end)
                    .unwrap_or(&[])
                    .iter()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                let (name, len) = match inner.split_once(':') {
                    Some((n, l)) => (n.to_string(), Some(l.to_string())),
                    None => (inner.clone(), None),
                };
                if !name.starts_with(is_name_start) || !name.chars().all(is_name_char) {
                    return err(line, format!("{name:?} is not a variable name"));
                }
                let len = match len.as_deref() {
                    None | Some("*") => None,
                    Some(n) => match n.parse::<usize>() {
                        Ok(n) if n > 0 => Some(n),
                        _ => {
                            return err(
                                line,
                                format!("capture length {n:?} must be a positive number or *"),
                            );
                        }
                    },
                };
                if len.is_none() {
                    variable += 1;
                }
                data.push(Pat::Capture { name, len });
                i = end + 1;
            } else {
                let (name, next) = read_var(body, i + 1, line)?;
                data.push(Pat::Var(name));
                i = next;
            }
            continue;
        }
        match hex_pair(body, i) {
            Some((b, next)) => {
                data.push(Pat::Byte(b));
                i = next;
            }
            None => {
                let s: String = body
                    .get(i..(i + 2).min(body.len()))
                    .unwrap_or(&[])
                    .iter()
                    .collect();
                return err(
                    line,
                    format!(
                        "{s:?} in the expected response is not a hex byte, '..', '..*' or $variable"
                    ),
                );
            }
        }
    }
    if variable > 1 {
        return err(
            line,
            "at most one variable-length item ('..*' or '$(name:*)') per expected response",
        );
    }
    Ok(Expect {
        data,
        sw,
        text: text.trim().to_string(),
    })
}

// ---------------------------------------------------------------- runner

/// How to run a script.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue after a mismatch (report them all).
    pub keep_going: bool,
    /// Send commands through [`Transport::transmit`] (GET RESPONSE and 6Cxx handled by the
    /// host) instead of one raw exchange per line.
    pub auto_get_response: bool,
    /// Name of the script in reports.
    pub name: String,
}

/// What happened to one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Matched its expectation.
    Pass,
    /// Nothing to check (no expected response).
    Done,
    /// Did not match.
    Mismatch,
    /// The transport failed or a variable was undefined.
    Error,
}

/// Decoded command header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    pub cla: u8,
    pub ins: u8,
    pub p1: u8,
    pub p2: u8,
    pub lc: usize,
    pub le: Option<usize>,
    pub extended: bool,
}

impl std::fmt::Display for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CLA={:02X} INS={:02X} P1={:02X} P2={:02X} Lc={} Le={}{}",
            self.cla,
            self.ins,
            self.p1,
            self.p2,
            self.lc,
            match self.le {
                Some(l) => l.to_string(),
                None => "-".into(),
            },
            if self.extended { " ext" } else { "" }
        )
    }
}

/// One step's record.
#[derive(Debug, Clone, Serialize)]
pub struct Exchange {
    pub line: usize,
    /// `apdu`, `reset`, `powerup`, `powerdown`, `let`, `echo`, `delay`.
    pub kind: &'static str,
    /// Command bytes (hex) for APDUs.
    pub command: String,
    pub header: Option<Header>,
    /// Response data (hex) without SW; the ATR for a reset.
    pub response: String,
    pub sw: Option<String>,
    pub expected: Option<String>,
    pub outcome: Outcome,
    /// Why it failed.
    pub message: Option<String>,
    pub micros: u64,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub name: String,
    pub format: Format,
    pub exchanges: Vec<Exchange>,
    pub apdus: usize,
    pub passed: usize,
    pub failed: usize,
    /// True when the run stopped at a failure before the end.
    pub stopped_early: bool,
    pub micros: u64,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.failed == 0
    }

    /// JUnit XML with one test case per step that exchanged something.
    pub fn to_junit(&self) -> String {
        junit(std::slice::from_ref(self))
    }
}

/// JUnit XML for several reports, one test suite each.
pub fn junit(reports: &[RunReport]) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for r in reports {
        let cases: Vec<&Exchange> = r
            .exchanges
            .iter()
            .filter(|e| matches!(e.kind, "apdu" | "reset"))
            .collect();
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" time=\"{:.6}\">\n",
            xml(&r.name),
            cases.len(),
            r.failed,
            r.micros as f64 / 1e6
        ));
        for e in cases {
            let name = if e.kind == "reset" {
                format!("line {}: reset", e.line)
            } else {
                format!("line {}: {}", e.line, e.command)
            };
            out.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.6}\"",
                xml(&r.name),
                xml(&name),
                e.micros as f64 / 1e6
            ));
            match e.outcome {
                Outcome::Mismatch | Outcome::Error => {
                    let msg = e.message.clone().unwrap_or_default();
                    out.push_str(&format!(
                        ">\n      <failure message=\"{}\">got {} {} expected {}</failure>\n    </testcase>\n",
                        xml(&msg),
                        xml(&e.response),
                        xml(e.sw.as_deref().unwrap_or("")),
                        xml(e.expected.as_deref().unwrap_or("")),
                    ));
                }
                _ => out.push_str("/>\n"),
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

fn header_of(bytes: &[u8]) -> Option<Header> {
    let c = Command::parse(bytes).ok()?;
    Some(Header {
        cla: c.cla,
        ins: c.ins,
        p1: c.p1,
        p2: c.p2,
        lc: c.data.len(),
        le: c.le,
        extended: c.extended,
    })
}

/// Match `data` against a pattern; on success returns the captures.
fn match_data(
    pats: &[Pat],
    data: &[u8],
    vars: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    // Resolve lengths; at most one item is variable (checked by the parser).
    let mut lens = Vec::with_capacity(pats.len());
    let mut fixed = 0usize;
    let mut var_at = None;
    for (i, p) in pats.iter().enumerate() {
        let n = match p {
            Pat::Byte(_) | Pat::Any => Some(1),
            Pat::Capture { len: Some(n), .. } => Some(*n),
            Pat::Capture { len: None, .. } | Pat::AnyRest => None,
            Pat::Var(name) => Some(
                vars.get(name)
                    .ok_or_else(|| format!("variable ${name} is not defined"))?
                    .len(),
            ),
        };
        match n {
            Some(n) => fixed += n,
            None => var_at = Some(i),
        }
        lens.push(n);
    }
    let rest = match var_at {
        Some(_) if data.len() >= fixed => data.len() - fixed,
        Some(_) => {
            return Err(format!(
                "{} data bytes, expected at least {fixed}",
                data.len()
            ));
        }
        None if data.len() == fixed => 0,
        None => return Err(format!("{} data bytes, expected {fixed}", data.len())),
    };
    let mut at = 0usize;
    let mut caps = Vec::new();
    for (p, n) in pats.iter().zip(lens) {
        let n = n.unwrap_or(rest);
        let chunk = data
            .get(at..at + n)
            .ok_or("response shorter than the pattern")?;
        match p {
            Pat::Byte(b) => {
                if chunk != [*b] {
                    return Err(format!(
                        "byte {at}: got {}, expected {b:02X}",
                        hex::encode_upper(chunk)
                    ));
                }
            }
            Pat::Any | Pat::AnyRest => {}
            Pat::Capture { name, .. } => caps.push((name.clone(), chunk.to_vec())),
            Pat::Var(name) => {
                if vars.get(name).map(Vec::as_slice) != Some(chunk) {
                    return Err(format!(
                        "bytes {at}..{}: got {}, expected ${name}",
                        at + n,
                        hex::encode_upper(chunk)
                    ));
                }
            }
        }
        at += n;
    }
    Ok(caps)
}

fn check(
    expect: &Expect,
    data: &[u8],
    sw: Option<u16>,
    vars: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), String> {
    if let (Some((value, mask)), Some(sw)) = (expect.sw, sw)
        && sw & mask != value & mask
    {
        return Err(format!(
            "status word {sw:04X} does not match {}",
            sw_text(value, mask)
        ));
    }
    let caps = match_data(&expect.data, data, vars)?;
    vars.extend(caps);
    Ok(())
}

fn sw_text(value: u16, mask: u16) -> String {
    (0..4)
        .rev()
        .map(|i| {
            let m = (mask >> (i * 4)) & 0xF;
            let v = (value >> (i * 4)) & 0xF;
            if m == 0 {
                '.'
            } else {
                char::from_digit(v as u32, 16)
                    .unwrap_or('?')
                    .to_ascii_uppercase()
            }
        })
        .collect()
}

fn resolve(parts: &[Part], vars: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for p in parts {
        match p {
            Part::Bytes(b) => out.extend_from_slice(b),
            Part::Var(name) => out.extend_from_slice(
                vars.get(name)
                    .ok_or_else(|| format!("variable ${name} is not defined"))?,
            ),
        }
    }
    Ok(out)
}

fn blank(line: usize, kind: &'static str) -> Exchange {
    Exchange {
        line,
        kind,
        command: String::new(),
        header: None,
        response: String::new(),
        sw: None,
        expected: None,
        outcome: Outcome::Done,
        message: None,
        micros: 0,
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Run a script against a transport.
pub fn run(script: &Script, transport: &mut dyn Transport, opts: &RunOptions) -> RunReport {
    run_observed(script, transport, opts, &mut |_| {})
}

/// Run a script, calling `observe` after each step (for live output).
pub fn run_observed(
    script: &Script,
    transport: &mut dyn Transport,
    opts: &RunOptions,
    observe: &mut dyn FnMut(&Exchange),
) -> RunReport {
    let started = Instant::now();
    let mut vars: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut report = RunReport {
        name: opts.name.clone(),
        format: script.format,
        exchanges: Vec::new(),
        apdus: 0,
        passed: 0,
        failed: 0,
        stopped_early: false,
        micros: 0,
    };
    let total = script.steps.len();
    for (idx, (line, step)) in script.steps.iter().enumerate() {
        let ex = run_step(*line, step, transport, opts, &mut vars);
        match ex.outcome {
            Outcome::Pass | Outcome::Done => {
                if ex.kind == "apdu" || ex.kind == "reset" {
                    report.passed += 1;
                }
            }
            Outcome::Mismatch | Outcome::Error => report.failed += 1,
        }
        if ex.kind == "apdu" {
            report.apdus += 1;
        }
        let failed = matches!(ex.outcome, Outcome::Mismatch | Outcome::Error);
        observe(&ex);
        report.exchanges.push(ex);
        if failed && !opts.keep_going {
            report.stopped_early = idx + 1 < total;
            break;
        }
    }
    report.micros = micros(started.elapsed());
    report
}

fn transport_msg(e: &TransportError) -> String {
    e.to_string()
}

fn run_step(
    line: usize,
    step: &Step,
    t: &mut dyn Transport,
    opts: &RunOptions,
    vars: &mut BTreeMap<String, Vec<u8>>,
) -> Exchange {
    match step {
        Step::Let { name, value } => {
            vars.insert(name.clone(), value.clone());
            let mut e = blank(line, "let");
            e.command = format!("{name} = {}", hex::encode_upper(value));
            e
        }
        Step::Echo(msg) => {
            let mut e = blank(line, "echo");
            e.command = msg.clone();
            e
        }
        Step::Delay(ms) => {
            std::thread::sleep(Duration::from_millis((*ms).min(60_000)));
            let mut e = blank(line, "delay");
            e.command = format!("{ms} ms");
            e
        }
        Step::PowerDown => {
            let mut e = blank(line, "powerdown");
            let t0 = Instant::now();
            match t.power_off() {
                Ok(()) | Err(TransportError::Unsupported(_)) => {}
                Err(x) => {
                    e.outcome = Outcome::Error;
                    e.message = Some(transport_msg(&x));
                }
            }
            e.micros = micros(t0.elapsed());
            e
        }
        Step::PowerUp | Step::Reset { .. } => {
            let kind = if matches!(step, Step::PowerUp) {
                "powerup"
            } else {
                "reset"
            };
            let mut e = blank(line, kind);
            let t0 = Instant::now();
            let r = t.reset();
            e.micros = micros(t0.elapsed());
            match r {
                Ok(atr) => {
                    e.response = hex::encode_upper(&atr);
                    if let Step::Reset {
                        expect_atr: Some(x),
                    } = step
                    {
                        e.expected = Some(x.text.clone());
                        match check(x, &atr, None, vars) {
                            Ok(()) => e.outcome = Outcome::Pass,
                            Err(m) => {
                                e.outcome = Outcome::Mismatch;
                                e.message = Some(format!("ATR: {m}"));
                            }
                        }
                    }
                }
                Err(x) => {
                    e.outcome = Outcome::Error;
                    e.message = Some(transport_msg(&x));
                }
            }
            e
        }
        Step::Apdu { parts, expect } => {
            let mut e = blank(line, "apdu");
            e.expected = expect.as_ref().map(|x| x.text.clone());
            let bytes = match resolve(parts, vars) {
                Ok(b) => b,
                Err(m) => {
                    e.outcome = Outcome::Error;
                    e.message = Some(m);
                    return e;
                }
            };
            e.command = hex::encode_upper(&bytes);
            e.header = header_of(&bytes);
            let t0 = Instant::now();
            let result = if opts.auto_get_response {
                match Command::parse(&bytes) {
                    Ok(cmd) => t.transmit(&cmd).map(|r| r.to_bytes()),
                    Err(x) => Err(TransportError::Apdu(x)),
                }
            } else {
                t.transmit_raw(&bytes)
            };
            e.micros = micros(t0.elapsed());
            let resp = match result {
                Ok(r) => r,
                Err(x) => {
                    e.outcome = Outcome::Error;
                    e.message = Some(transport_msg(&x));
                    return e;
                }
            };
            let Some((data, sw)) = resp.len().checked_sub(2).map(|n| resp.split_at(n)) else {
                e.response = hex::encode_upper(&resp);
                e.outcome = Outcome::Error;
                e.message = Some(format!(
                    "response of {} bytes has no status word",
                    resp.len()
                ));
                return e;
            };
            let sw = match sw {
                [a, b] => u16::from_be_bytes([*a, *b]),
                _ => 0,
            };
            e.response = hex::encode_upper(data);
            e.sw = Some(format!("{sw:04X}"));
            if let Some(x) = expect {
                match check(x, data, Some(sw), vars) {
                    Ok(()) => e.outcome = Outcome::Pass,
                    Err(m) => {
                        e.outcome = Outcome::Mismatch;
                        e.message = Some(m);
                    }
                }
            }
            e
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sw_mask() {
        let x = parse_expect("..* 61..", 1, true).unwrap();
        assert_eq!(x.sw, Some((0x6100, 0xFF00)));
        assert_eq!(x.data, vec![Pat::AnyRest]);
        let mut v = BTreeMap::new();
        assert!(check(&x, &[1, 2, 3], Some(0x6110), &mut v).is_ok());
        assert!(check(&x, &[], Some(0x9000), &mut v).is_err());
    }

    #[test]
    fn captures_and_vars() {
        let x = parse_expect("01 $(c:2) ..* 9000", 1, true).unwrap();
        let mut v = BTreeMap::new();
        check(&x, &[1, 0xAA, 0xBB, 7, 7], Some(0x9000), &mut v).unwrap();
        assert_eq!(v["c"], vec![0xAA, 0xBB]);
        let y = parse_expect("$c 9000", 1, true).unwrap();
        assert!(check(&y, &[0xAA, 0xBB], Some(0x9000), &mut v).is_ok());
        assert!(check(&y, &[0xAA, 0xBC], Some(0x9000), &mut v).is_err());
    }

    #[test]
    fn two_variable_items_rejected() {
        let e = parse_expect("..* $(x:*) 9000", 7, true).unwrap_err();
        assert_eq!(e.line, 7);
    }

    fn apdus(s: &Script) -> Vec<String> {
        s.steps
            .iter()
            .filter_map(|(_, st)| match st {
                Step::Apdu { parts, .. } => Some(
                    parts
                        .iter()
                        .map(|p| match p {
                            Part::Bytes(b) => hex::encode_upper(b),
                            Part::Var(v) => format!("${v}"),
                        })
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn apdutool_format() {
        let text = "// comment\npowerup;\n0x00 0xA4 0x04 0x00 0x02 0xF0 0x54 0x7F;\n/* multi\nline */ 0x80 0x10\n 0x00 0x00 0x01\n 0xAA 0x00;\n0x80 0x12 0x00 0x10 0x00 0x10;\n0x80 0x10 0x00 0x00;\necho \"a;b\";\ndelay 1;\npowerdown;\n";
        let s = parse(text, Format::Apdutool).unwrap();
        assert_eq!(
            apdus(&s),
            vec!["00A4040002F0547F", "8010000001AA", "8012001010", "80100000"]
        );
        assert_eq!(s.steps[0], (2, Step::PowerUp));
        assert_eq!(
            s.steps[2].0, 5,
            "a statement spanning lines starts at its first token"
        );
        assert!(matches!(&s.steps[5], (_, Step::Echo(m)) if m == "a;b"));
        assert!(matches!(s.steps.last(), Some((_, Step::PowerDown))));
    }

    #[test]
    fn apdutool_errors_name_the_line() {
        let e = parse(
            "powerup;\n0x00 0xA4 0x04 0x00 0x05 0x01;\n",
            Format::Apdutool,
        )
        .unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("Lc is 5"), "{e}");
        let e = parse("powerup;\n\n0x00 0xZZ 0x00 0x00;", Format::Apdutool).unwrap_err();
        assert_eq!(e.line, 3);
        let e = parse("powerup;\n0x00 0xA4 0x00 0x00", Format::Apdutool).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("line 2: "));
        let e = parse("/* open\n\n", Format::Apdutool).unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn scriptor_format() {
        let s = parse(
            "# c\nreset\n00 A4 04 00 02 F0 54\n80 10 00 00 # trailing\nexit\n00 00 00 00\n",
            Format::Scriptor,
        )
        .unwrap();
        assert_eq!(
            apdus(&s),
            vec!["00A40400".to_string() + "02F054", "80100000".to_string()]
        );
        assert_eq!(s.steps[0], (2, Step::Reset { expect_atr: None }));
        let e = parse("reset\n00 A4 0\n", Format::Scriptor).unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse("00 A4\n", Format::Scriptor).unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn plain_format() {
        let text = "# c\n00A4040007A0000002471001 => 9000\n80CA9F7F00 => ..* 9000\nreset\nlet Key = 0102\n80 10 00 00 02 $Key => $(echo:2) 90 00 # c\n8010000002${Key}00 => $echo 9000\npowerdown\npowerup\n80120000=>61..\n";
        let s = parse(text, Format::Plain).unwrap();
        assert_eq!(
            apdus(&s),
            vec![
                "00A4040007A0000002471001",
                "80CA9F7F00",
                "8010000002$Key",
                "8010000002$Key00",
                "80120000"
            ]
        );
        assert_eq!(s.apdu_count(), 5);
        assert!(
            matches!(&s.steps[3], (5, Step::Let { name, value }) if name == "Key" && value == &vec![1, 2])
        );
    }

    #[test]
    fn plain_errors_name_the_line() {
        for (text, line) in [
            ("80100000\n80GG0000\n", 2),
            ("80100000 => 90\n", 1),
            ("\n\n80100000 => 9G00\n", 3),
            ("80100000 => . 9000\n", 1),
            ("80100000 => $(x:0) 9000\n", 1),
            ("let = 01\n", 1),
            ("801000\n", 1),
            ("reset\npowerup => 9000\n", 2),
            ("80100000 => $(x 9000\n", 1),
        ] {
            let e = parse(text, Format::Plain).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
    }

    #[test]
    fn runner_against_conformance_card() {
        let text = "00A4040007F0544553530101 => 61..\n8010000002CAFE00 => CAFE 9000\n8010000001AA00 => BB 9000\n8010000001AA00 => AA 9000\n";
        let s = parse(text, Format::Plain).unwrap();
        let mut card = tessera_os::diag::conformance_card();
        let r = run(&s, &mut card, &RunOptions::default());
        assert_eq!((r.passed, r.failed, r.stopped_early), (2, 1, true));
        assert_eq!(r.exchanges[2].line, 3);
        let mut card = tessera_os::diag::conformance_card();
        let r = run(
            &s,
            &mut card,
            &RunOptions {
                keep_going: true,
                ..Default::default()
            },
        );
        assert_eq!((r.passed, r.failed, r.stopped_early), (3, 1, false));
        let x = r.to_junit();
        assert!(x.contains("<failure"), "{x}");
        assert!(x.contains("tests=\"4\""), "{x}");
        // Undefined variables are errors, not panics.
        let s = parse("80100000 $nope => 9000\n", Format::Plain).unwrap();
        let r = run(&s, &mut card, &RunOptions::default());
        assert_eq!(r.failed, 1);
        assert_eq!(r.exchanges[0].outcome, Outcome::Error);
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(
            Format::from_path(Path::new("a.jcsh")),
            Some(Format::Apdutool)
        );
        assert_eq!(
            Format::from_path(Path::new("a.script")),
            Some(Format::Apdutool)
        );
        assert_eq!(
            Format::from_path(Path::new("x/a.APDU")),
            Some(Format::Plain)
        );
        assert_eq!(
            Format::from_path(Path::new("a.scriptor")),
            Some(Format::Scriptor)
        );
        assert_eq!(Format::from_path(Path::new("a.txt")), None);
        assert_eq!("plain".parse::<Format>(), Ok(Format::Plain));
    }
}
