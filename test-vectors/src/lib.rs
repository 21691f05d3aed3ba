//! Parsers for the public test-vector files under `data/` (NIST CAVP
//! `.rsp`-style `KEY = value` files and the pyca OAEP text format).
//! The runner is `tests/vectors.rs`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One vector: section headers (`[mod = 2048]`, `[ENCRYPT]` as `op`),
/// persistent context (e.g. `n`) and the record's own fields merged.
#[derive(Debug, Clone)]
pub struct Record {
    /// Merged key/value pairs (record fields override context and headers).
    pub fields: BTreeMap<String, String>,
    /// Line number where the record started (1-based).
    pub line: usize,
}

impl Record {
    /// Raw value.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.fields.get(k).map(String::as_str)
    }

    /// Value that must exist.
    pub fn req(&self, k: &str) -> Result<&str, String> {
        self.get(k)
            .ok_or_else(|| format!("line {}: missing field {k}", self.line))
    }

    /// Hex-decoded value (empty string is an empty byte string).
    pub fn hex(&self, k: &str) -> Result<Vec<u8>, String> {
        let v = self.req(k)?;
        hex::decode(v).map_err(|e| format!("line {}: field {k}: bad hex: {e}", self.line))
    }
}

/// Directory holding the vector files.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// Read a file below `data/`.
pub fn read(rel: &str) -> Result<String, String> {
    std::fs::read_to_string(data_dir().join(rel)).map_err(|e| format!("{rel}: {e}"))
}

/// Sorted file names (not paths) in a `data/` subdirectory.
pub fn list(rel_dir: &str) -> Result<Vec<String>, String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(data_dir().join(rel_dir)).map_err(|e| format!("{rel_dir}: {e}"))? {
        let e = e.map_err(|e| e.to_string())?;
        v.push(e.file_name().to_string_lossy().into_owned());
    }
    v.sort();
    Ok(v)
}

/// Parse a `KEY = value` file. Blocks are separated by blank lines or
/// `[..]` headers. A block containing any of `triggers` is a record; other
/// blocks are context that applies to the records that follow. Headers
/// `[k = v]` become fields `k`; a bare header like `[ENCRYPT]` becomes
/// field `op`. Any other non-comment line is a parse error.
pub fn parse_kv(text: &str, triggers: &[&str]) -> Result<Vec<Record>, String> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut context: BTreeMap<String, String> = BTreeMap::new();
    let mut block: Vec<(String, String)> = Vec::new();
    let mut block_line = 0usize;
    let mut out = Vec::new();

    let mut flush = |block: &mut Vec<(String, String)>,
                     block_line: usize,
                     headers: &BTreeMap<String, String>,
                     context: &mut BTreeMap<String, String>| {
        if block.is_empty() {
            return;
        }
        if block.iter().any(|(k, _)| triggers.contains(&k.as_str())) {
            let mut fields = headers.clone();
            fields.extend(context.iter().map(|(k, v)| (k.clone(), v.clone())));
            fields.extend(block.drain(..));
            out.push(Record {
                fields,
                line: block_line,
            });
        } else {
            context.extend(block.drain(..));
        }
    };

    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            flush(&mut block, block_line, &headers, &mut context);
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if let Some(inner) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            flush(&mut block, block_line, &headers, &mut context);
            match inner.split_once('=') {
                Some((k, v)) => {
                    headers.insert(k.trim().to_string(), v.trim().to_string());
                }
                None => {
                    headers.insert("op".to_string(), inner.trim().to_string());
                }
            }
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {}: cannot parse {line:?}", i + 1));
        };
        if block.is_empty() {
            block_line = i + 1;
        }
        block.push((k.trim().to_string(), v.trim().to_string()));
    }
    flush(&mut block, block_line, &headers, &mut context);
    Ok(out)
}

/// One OAEP case from the pyca "oaep-custom" format.
#[derive(Debug, Clone)]
pub struct OaepCase {
    /// Modulus.
    pub n: Vec<u8>,
    /// Public exponent.
    pub e: Vec<u8>,
    /// Private exponent.
    pub d: Vec<u8>,
    /// First prime.
    pub p: Vec<u8>,
    /// Second prime.
    pub q: Vec<u8>,
    /// Plaintext.
    pub msg: Vec<u8>,
    /// Ciphertext.
    pub ct: Vec<u8>,
}

/// Parse the pyca OAEP vector format (`# Label:` followed by hex lines).
pub fn parse_pyca_oaep(text: &str) -> Result<Vec<OaepCase>, String> {
    #[derive(Default)]
    struct Key {
        n: Vec<u8>,
        e: Vec<u8>,
        d: Vec<u8>,
        p: Vec<u8>,
        q: Vec<u8>,
    }
    let mut key = Key::default();
    let mut section = String::new(); // "public" | "private"
    let mut label = String::new();
    let mut acc = String::new();
    let mut msg: Option<Vec<u8>> = None;
    let mut out = Vec::new();

    let finish = |label: &str,
                  acc: &mut String,
                  section: &str,
                  key: &mut Key,
                  msg: &mut Option<Vec<u8>>,
                  out: &mut Vec<OaepCase>|
     -> Result<(), String> {
        if acc.is_empty() {
            return Ok(());
        }
        if acc.len() % 2 == 1 {
            acc.insert(0, '0'); // e.g. "10001"
        }
        let bytes = hex::decode(acc.as_str()).map_err(|e| format!("{label}: {e}"))?;
        acc.clear();
        match (section, label) {
            ("public", _) => {} // same modulus/exponent repeated in the private key
            ("private", "Modulus") => key.n = bytes,
            ("private", "Public exponent") => key.e = bytes,
            ("private", "Exponent") => key.d = bytes,
            ("private", "Prime 1") => key.p = bytes,
            ("private", "Prime 2") => key.q = bytes,
            ("private", "Prime exponent 1" | "Prime exponent 2" | "Coefficient") => {}
            (_, "Message") => *msg = Some(bytes),
            (_, "Encryption") => {
                let m = msg.take().ok_or("Encryption without Message")?;
                out.push(OaepCase {
                    n: key.n.clone(),
                    e: key.e.clone(),
                    d: key.d.clone(),
                    p: key.p.clone(),
                    q: key.q.clone(),
                    msg: m,
                    ct: bytes,
                });
            }
            (s, l) => return Err(format!("unexpected label {l:?} in section {s:?}")),
        }
        Ok(())
    };

    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            finish(&label, &mut acc, &section, &mut key, &mut msg, &mut out)?;
            let c = c.trim();
            if c == "Public key" {
                section = "public".into();
            } else if c == "Private key" {
                section = "private".into();
            } else if c.starts_with("OAEP Example") {
                section = "example".into();
            } else if let Some(l) = c.strip_suffix(':') {
                label = l.to_string();
            }
            continue;
        }
        if !line.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("cannot parse line {line:?}"));
        }
        acc.push_str(line);
    }
    finish(&label, &mut acc, &section, &mut key, &mut msg, &mut out)?;
    Ok(out)
}
