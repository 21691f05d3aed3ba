//! PIN objects (Java Card `OwnerPIN` semantics, made tear-safe).
//!
//! A PIN record lives in the owning instance's memory under key `\0pin` + id:
//! `try_limit | tries_remaining | len | value[len]`. On VERIFY the try counter is
//! decremented and made durable *before* the comparison, outside the command's
//! transaction, so cutting power during the comparison cannot yield a free try. The
//! comparison is constant-time over a fixed 16-byte padded buffer and the length. The
//! validated flag is RAM-only and cleared on reset and on deselect.

use crate::applet::Context;
use tessera_apdu::Sw;

/// Longest PIN accepted.
pub const MAX_PIN_LEN: usize = 16;

fn key(id: u8) -> [u8; 5] {
    [0, b'p', b'i', b'n', id]
}

/// PIN operations on the current instance.
pub struct Pin;

struct Record {
    limit: u8,
    tries: u8,
    value: Vec<u8>,
}

fn read(ctx: &Context<'_>, id: u8) -> Result<Record, Sw> {
    let raw = ctx.get(&key(id)).ok_or(Sw::REFERENCED_DATA_NOT_FOUND)?;
    match raw.as_slice() {
        [limit, tries, len, rest @ ..] if rest.len() == *len as usize => Ok(Record {
            limit: *limit,
            tries: *tries,
            value: rest.to_vec(),
        }),
        _ => Err(Sw::UNKNOWN),
    }
}

fn encode(r: &Record) -> Vec<u8> {
    let mut v = vec![r.limit, r.tries, r.value.len() as u8];
    v.extend_from_slice(&r.value);
    v
}

fn padded(v: &[u8]) -> [u8; MAX_PIN_LEN] {
    let mut out = [0xFFu8; MAX_PIN_LEN];
    for (o, b) in out.iter_mut().zip(v) {
        *o = *b;
    }
    out
}

impl Pin {
    /// Create (or replace) a PIN, staged in the command's transaction.
    pub fn create(ctx: &mut Context<'_>, id: u8, try_limit: u8, value: &[u8]) -> Result<(), Sw> {
        if value.is_empty() || value.len() > MAX_PIN_LEN || try_limit == 0 || try_limit > 15 {
            return Err(Sw::WRONG_DATA);
        }
        let r = Record {
            limit: try_limit,
            tries: try_limit,
            value: value.to_vec(),
        };
        ctx.put(&key(id), &encode(&r))
    }

    /// Whether a PIN with this id exists.
    pub fn exists(ctx: &Context<'_>, id: u8) -> bool {
        ctx.get(&key(id)).is_some()
    }

    /// Remaining tries, or None if there is no such PIN.
    pub fn tries_remaining(ctx: &Context<'_>, id: u8) -> Option<u8> {
        read(ctx, id).ok().map(|r| r.tries)
    }

    /// Verify a candidate. 9000 on success, 63Cx with the tries left on a wrong PIN (63C0
    /// when that was the last try), 6983 when already blocked, 6A88 when there is no such
    /// PIN. The validated flag is cleared first, whatever the outcome.
    pub fn verify(ctx: &mut Context<'_>, id: u8, candidate: &[u8]) -> Result<(), Sw> {
        let mut r = read(ctx, id)?;
        ctx.set_pin_validated(id, false);
        if r.tries == 0 {
            return Err(Sw::AUTH_METHOD_BLOCKED);
        }
        r.tries -= 1;
        ctx.put_immediate(&key(id), &encode(&r))?;
        let len_ok =
            subtle::ConstantTimeEq::ct_eq(&(candidate.len() as u64), &(r.value.len() as u64));
        let a = padded(candidate);
        let b = padded(&r.value);
        let val_ok = subtle::ConstantTimeEq::ct_eq(&a[..], &b[..]);
        let ok = bool::from(len_ok & val_ok) && candidate.len() <= MAX_PIN_LEN;
        if ok {
            r.tries = r.limit;
            ctx.put_immediate(&key(id), &encode(&r))?;
            ctx.set_pin_validated(id, true);
            Ok(())
        } else {
            // 63C0 on the try that uses the last one up; 6983 from then on.
            Err(Sw::verify_failed(r.tries))
        }
    }

    /// The ISO/IEC 7816-4 VERIFY command on this PIN: with data, a verification as
    /// [`Pin::verify`]; without data, a status query that uses no try: 9000 when the PIN
    /// is already validated, 63Cx with the tries left otherwise, 6983 when blocked. 6A88
    /// when there is no such PIN.
    pub fn verify_command(ctx: &mut Context<'_>, id: u8, data: &[u8]) -> Result<(), Sw> {
        if !Pin::exists(ctx, id) {
            return Err(Sw::REFERENCED_DATA_NOT_FOUND);
        }
        if !data.is_empty() {
            return Pin::verify(ctx, id, data);
        }
        if Pin::is_validated(ctx, id) {
            return Ok(());
        }
        match Pin::tries_remaining(ctx, id) {
            Some(0) => Err(Sw::AUTH_METHOD_BLOCKED),
            Some(n) => Err(Sw::verify_failed(n)),
            None => Err(Sw::REFERENCED_DATA_NOT_FOUND),
        }
    }

    /// Whether the PIN was verified since the last reset or deselect.
    pub fn is_validated(ctx: &Context<'_>, id: u8) -> bool {
        ctx.pin_validated(id)
    }

    /// Change the value (the PIN must be validated); staged in the transaction.
    pub fn change(ctx: &mut Context<'_>, id: u8, new_value: &[u8]) -> Result<(), Sw> {
        if !ctx.pin_validated(id) {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let r = read(ctx, id)?;
        Pin::create(ctx, id, r.limit, new_value)
    }

    /// Reset the try counter and optionally the value (the caller authorises this, e.g.
    /// with an issuer MAC); staged in the transaction.
    pub fn unblock(ctx: &mut Context<'_>, id: u8, new_value: Option<&[u8]>) -> Result<(), Sw> {
        let r = read(ctx, id)?;
        let value = new_value.map(|v| v.to_vec()).unwrap_or(r.value);
        Pin::create(ctx, id, r.limit, &value)
    }
}
