//! `diag`: a small diagnostic applet compiled into every Tessera program. It exercises the
//! whole runtime (selection, transactions, tearing, PINs, transient memory, long responses,
//! services) and backs the conformance scripts in `test-vectors/scripts/`.
//!
//! Package AID `F0 54 45 53 53 01` ("\xF0TESS" 01); default instance AID
//! `F0 54 45 53 53 01 01`. CLA `80` (proprietary), any channel.
//!
//! | INS | P1 P2 | data | response | effect |
//! |---|---|---|---|---|
//! | 10 | 00 00 | any | the same bytes | echo |
//! | 12 | length (P1P2, big-endian) | none | `length` bytes, byte i = i mod 256 | long responses |
//! | 14 | record id (P1), 00 | value (1-255 bytes) | none | writes record id in 3 parts (3 writes, one batch) |
//! | 16 | record id, 00 | none | value | read record; 6A83 when absent |
//! | 18 | 00 00 | none | 4-byte counter | increments a persistent counter by 1 in two staged writes |
//! | 1A | 00 00 | 1-byte try limit + PIN (1-16 bytes) | none | creates PIN 0 |
//! | 20 | 00 00 | PIN | none | VERIFY PIN 0: 63Cx / 6983 / 9000 |
//! | 22 | 00 00 | none | none | 9000 if PIN 0 is validated, else 6982 |
//! | 24 | 00/01 (reset/deselect), 00 | value or none | stored value | transient memory: with data writes, without reads (6A88 when cleared) |
//! | 26 | 00 00 | 1-32 | random bytes of that length | card RNG |
//! | 28 | 00 00 | none | none | writes a record, then answers 6F00: the write is rolled back |
//! | 2A | 00 00 | none | none | writes a record, then panics: answered 6F00, rolled back |
//! | 2C | 00 00 | target AID | service reply | calls the `diag` service of another instance (echoes the caller AID) |
//!
//! Wrong P1/P2: 6A86; wrong length: 6700; unknown INS: 6D00; CLA other than 80: 6E00.

use crate::applet::{Applet, Clear, Context, LoadFile};
use crate::pin::Pin;
use tessera_apdu::{Command, Sw};

pub const PACKAGE_AID: [u8; 6] = [0xF0, 0x54, 0x45, 0x53, 0x53, 0x01];
pub const INSTANCE_AID: [u8; 7] = [0xF0, 0x54, 0x45, 0x53, 0x53, 0x01, 0x01];

/// The diagnostic applet.
#[derive(Default)]
pub struct Diag;

/// The load file of the diagnostic applet.
pub fn load_file() -> LoadFile {
    LoadFile {
        name: "diag",
        aid: PACKAGE_AID.to_vec(),
        multi_selectable: false,
        create: || Box::new(Diag),
    }
}

/// A multi-selectable variant (same commands), for logical channel tests.
pub fn load_file_multi() -> LoadFile {
    LoadFile {
        name: "diag-multi",
        aid: PACKAGE_AID.to_vec(),
        multi_selectable: true,
        create: || Box::new(Diag),
    }
}

impl Applet for Diag {
    fn process(&mut self, ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, Sw> {
        if cmd.cla & 0xF0 != 0x80 && cmd.cla & 0xC0 != 0xC0 {
            return Err(Sw::CLA_NOT_SUPPORTED);
        }
        match cmd.ins {
            0x10 => {
                cmd.expect_p1p2(0, 0)?;
                Ok(cmd.data.clone())
            }
            0x12 => {
                if !cmd.data.is_empty() {
                    return Err(Sw::WRONG_LENGTH);
                }
                let n = u16::from_be_bytes([cmd.p1, cmd.p2]) as usize;
                Ok((0..n).map(|i| i as u8).collect())
            }
            0x14 => {
                if cmd.p2 != 0 {
                    return Err(Sw::INCORRECT_P1P2);
                }
                if cmd.data.is_empty() || cmd.data.len() > 255 {
                    return Err(Sw::WRONG_LENGTH);
                }
                let id = cmd.p1;
                let third = cmd.data.len().div_ceil(3);
                for (part, chunk) in cmd.data.chunks(third.max(1)).enumerate() {
                    ctx.put(&[b'r', id, part as u8], chunk)?;
                }
                for part in cmd.data.chunks(third.max(1)).count()..3 {
                    ctx.delete(&[b'r', id, part as u8]);
                }
                Ok(Vec::new())
            }
            0x16 => {
                if cmd.p2 != 0 {
                    return Err(Sw::INCORRECT_P1P2);
                }
                let mut out = Vec::new();
                let mut any = false;
                for part in 0..3u8 {
                    if let Some(v) = ctx.get(&[b'r', cmd.p1, part]) {
                        out.extend_from_slice(&v);
                        any = true;
                    }
                }
                if any {
                    Ok(out)
                } else {
                    Err(Sw::RECORD_NOT_FOUND)
                }
            }
            0x18 => {
                cmd.expect_p1p2(0, 0)?;
                let read = |ctx: &Context<'_>, k: &[u8]| -> u32 {
                    ctx.get(k)
                        .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
                        .map(u32::from_be_bytes)
                        .unwrap_or(0)
                };
                let a = read(ctx, b"ctrA");
                let b = read(ctx, b"ctrB");
                if a != b {
                    // Both halves are written in one batch: a mismatch means torn memory.
                    return Err(Sw::MEMORY_FAILURE);
                }
                let n = a.wrapping_add(1);
                ctx.put(b"ctrA", &n.to_be_bytes())?;
                ctx.put(b"ctrB", &n.to_be_bytes())?;
                Ok(n.to_be_bytes().to_vec())
            }
            0x1A => {
                cmd.expect_p1p2(0, 0)?;
                match cmd.data.split_first() {
                    Some((limit, pin)) => Pin::create(ctx, 0, *limit, pin).map(|_| Vec::new()),
                    None => Err(Sw::WRONG_LENGTH),
                }
            }
            0x20 => {
                cmd.expect_p1p2(0, 0)?;
                Pin::verify(ctx, 0, &cmd.data).map(|_| Vec::new())
            }
            0x22 => {
                cmd.expect_p1p2(0, 0)?;
                if Pin::is_validated(ctx, 0) {
                    Ok(Vec::new())
                } else {
                    Err(Sw::SECURITY_STATUS_NOT_SATISFIED)
                }
            }
            0x24 => {
                let kind = match (cmd.p1, cmd.p2) {
                    (0, 0) => Clear::OnReset,
                    (1, 0) => Clear::OnDeselect,
                    _ => return Err(Sw::INCORRECT_P1P2),
                };
                let mem = ctx.transient(kind);
                if cmd.data.is_empty() {
                    mem.get(&b"t"[..])
                        .cloned()
                        .ok_or(Sw::REFERENCED_DATA_NOT_FOUND)
                } else {
                    mem.insert(b"t".to_vec(), cmd.data.clone());
                    Ok(Vec::new())
                }
            }
            0x26 => {
                cmd.expect_p1p2(0, 0)?;
                let n = match cmd.data.as_slice() {
                    [n] if (1..=32).contains(n) => *n as usize,
                    _ => return Err(Sw::WRONG_DATA),
                };
                let mut out = vec![0u8; n];
                ctx.random(&mut out);
                Ok(out)
            }
            0x28 => {
                cmd.expect_p1p2(0, 0)?;
                ctx.put(b"doomed", b"x")?;
                Err(Sw::UNKNOWN)
            }
            0x2A => {
                cmd.expect_p1p2(0, 0)?;
                ctx.put(b"doomed", b"x")?;
                #[allow(clippy::panic)]
                {
                    panic!("diag applet: deliberate panic (INS 2A)");
                }
            }
            0x2C => {
                cmd.expect_p1p2(0, 0)?;
                ctx.call_service(&cmd.data, b"ping")
            }
            _ => Err(Sw::INS_NOT_SUPPORTED),
        }
    }

    fn service(
        &mut self,
        _ctx: &mut Context<'_>,
        caller: &[u8],
        request: &[u8],
    ) -> Result<Vec<u8>, Sw> {
        let mut out = request.to_vec();
        out.extend_from_slice(caller);
        Ok(out)
    }
}

/// AID of the multi-selectable diag instance on the conformance card.
pub const MULTI_INSTANCE_AID: [u8; 7] = [0xF0, 0x54, 0x45, 0x53, 0x53, 0x01, 0x02];

/// The card every conformance script in `test-vectors/scripts/` runs against: default
/// profile (contact, T=0-style 61xx when Le is absent, 20 channels, 64 KiB), `diag` at
/// [`INSTANCE_AID`] and `diag-multi` at [`MULTI_INSTANCE_AID`], nothing default-selected,
/// fixed RNG seed (zeros), powered on.
pub fn conformance_card() -> crate::Card {
    let mut card = crate::Card::builder()
        .load_file(load_file())
        .load_file(load_file_multi())
        .seed([0u8; 32])
        .build();
    // Installing into a fresh card with a 64 KiB quota cannot fail; a failure would show
    // as 6A82 on SELECT in every script.
    let _ = card.install("diag", &INSTANCE_AID, Default::default(), &[]);
    let _ = card.install("diag-multi", &MULTI_INSTANCE_AID, Default::default(), &[]);
    card.power_on();
    card
}
