//! The card side of the purse (docs/applets/purse.md).
//!
//! Persistent records (this instance's namespace):
//!
//! | key | content | written by |
//! |---|---|---|
//! | `cfg` | [`Config`]: purse ID, currency, max balance, log capacity, counter limit, PIN threshold, issuer SPKI | install |
//! | `val` | [`Value`]: balance and counter, the ONE value-bearing record | LOAD, PURCHASE |
//! | `keys` | load and debit keys with number and version (2 × usage, number, version, key16) | PUT KEYS |
//! | `kt` | transport key and nonce between INIT PERSO and PUT KEYS | INIT PERSO (erased by PUT KEYS) |
//! | `att` | RSA-2048 attestation private key (PKCS#8 DER), generated inside the purse; never output | install |
//! | `log/` + slot | [`LogRecord`] of the transaction that used counter `c`, slot = `c mod N` | LOAD, PURCHASE |
//!
//! A LOAD or PURCHASE stages `val` and one log slot; the OS commits them as one batch
//! after the command succeeded, so a power cut leaves both old or both new. The session
//! (challenge, counter) lives in CLEAR_ON_DESELECT transient memory and is removed at the
//! start of every value command, so it serves at most one attempt.

use crate::keyblob::{self, Key16, KeyBlobError};
use crate::macs::{mac8, verify8};
use crate::wire::{
    self, AttestedKeyRequest, Balance, CLA, FLAG_PERSONALISED, FLAG_PIN_SET, FLAG_PIN_VALIDATED,
    InitLoadResponse, InitPurchase, InitPurchaseResponse, KeyBlob, Load, LogRecord, Mac, Purchase,
    PurseData, PurseId, PurseInstall, TxnStatus, TxnStatusQuery, ValueReceipt, ins, kind, sw,
    usage,
};
use serde::{Deserialize, Serialize};
use tessera_apdu::{Command, Sw};
use tessera_crypto::rng::CardRng;
use tessera_crypto::rsa::{RsaPrivateKey, RsaPublicKey};
use tessera_os::{Applet, Clear, Context, LoadFile, Pin};
use zeroize::{Zeroize, Zeroizing};

/// Package AID of the purse load file: the first 6 bytes of [`wire::PURSE_AID`].
pub const PACKAGE_AID: [u8; 6] = [0xF0, 0x54, 0x53, 0x52, 0x41, 0x01];
/// Reference of the cardholder PIN (VERIFY P2).
pub const PIN_ID: u8 = 0x81;

const K_CFG: &[u8] = b"cfg";
const K_VAL: &[u8] = b"val";
const K_KEYS: &[u8] = b"keys";
const K_KT: &[u8] = b"kt";
const K_ATT: &[u8] = b"att";
const LOG_PREFIX: &[u8] = b"log/";
const T_SESSION: &[u8] = b"session";

/// The load file of the purse applet (name "purse", not multi-selectable).
pub fn load_file() -> LoadFile {
    LoadFile {
        name: "purse",
        aid: PACKAGE_AID.to_vec(),
        multi_selectable: false,
        create: || Box::new(Purse),
    }
}

/// Static configuration, written at installation.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Config {
    purse_id: PurseId,
    currency: u16,
    max_balance: u32,
    log_capacity: u8,
    counter_limit: u32,
    /// 0xFFFFFFFF when no PIN exists.
    pin_threshold: u32,
    pin_set: bool,
    issuer_spki: Vec<u8>,
}

/// The value-bearing state: one record, rewritten whole by every LOAD / PURCHASE.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Value {
    balance: u32,
    /// Value commands applied so far; also the number of log records ever written.
    counter: u32,
}

struct CardKey {
    version: u8,
    key: Key16,
}

struct Keys {
    load: CardKey,
    debit: CardKey,
}

enum Session {
    Load {
        counter: u32,
        challenge: [u8; 8],
    },
    Purchase {
        counter: u32,
        card_challenge: [u8; 8],
        sam_id: [u8; 4],
        sam_challenge: [u8; 8],
    },
}

impl Session {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(25);
        match self {
            Session::Load { counter, challenge } => {
                v.push(kind::LOAD);
                v.extend_from_slice(&counter.to_be_bytes());
                v.extend_from_slice(challenge);
            }
            Session::Purchase {
                counter,
                card_challenge,
                sam_id,
                sam_challenge,
            } => {
                v.push(kind::PURCHASE);
                v.extend_from_slice(&counter.to_be_bytes());
                v.extend_from_slice(card_challenge);
                v.extend_from_slice(sam_id);
                v.extend_from_slice(sam_challenge);
            }
        }
        v
    }

    fn decode(b: &[u8]) -> Option<Session> {
        let (k, rest) = b.split_first()?;
        let mut r = wire::Reader::at_least(rest, "session", 12).ok()?;
        let counter = r.u32().ok()?;
        let first: [u8; 8] = r.bytes().ok()?;
        match *k {
            kind::LOAD => Some(Session::Load {
                counter,
                challenge: first,
            }),
            kind::PURCHASE => Some(Session::Purchase {
                counter,
                card_challenge: first,
                sam_id: r.bytes().ok()?,
                sam_challenge: r.bytes().ok()?,
            }),
            _ => None,
        }
    }
}

/// The purse applet. It keeps nothing in its fields: persistent state is in the store,
/// sessions in transient memory.
#[derive(Debug, Default)]
pub struct Purse;

fn crypto_err<E>(_: E) -> Sw {
    Sw::UNKNOWN
}

fn config(ctx: &Context<'_>) -> Result<Config, Sw> {
    ctx.load::<Config>(K_CFG)?.ok_or(Sw::UNKNOWN)
}

fn value(ctx: &Context<'_>) -> Result<Value, Sw> {
    ctx.load::<Value>(K_VAL)?.ok_or(Sw::UNKNOWN)
}

fn read_keys(ctx: &Context<'_>) -> Result<Option<Keys>, Sw> {
    let Some(raw) = ctx.get(K_KEYS) else {
        return Ok(None);
    };
    let raw = Zeroizing::new(raw);
    let entry = |chunk: &[u8]| -> Option<(u8, CardKey)> {
        let (&[u, _number, version], key) = chunk.split_first_chunk::<3>()?;
        let mut k = Zeroizing::new([0u8; 16]);
        k.copy_from_slice(key.get(..16)?);
        Some((u, CardKey { version, key: k }))
    };
    let (a, b) = match (
        raw.get(..19).and_then(entry),
        raw.get(19..38).and_then(entry),
    ) {
        (Some(a), Some(b)) if raw.len() == 38 => (a, b),
        _ => return Err(Sw::UNKNOWN),
    };
    match (a, b) {
        ((usage::LOAD, load), (usage::DEBIT, debit)) => Ok(Some(Keys { load, debit })),
        _ => Err(Sw::UNKNOWN),
    }
}

fn require_keys(ctx: &Context<'_>) -> Result<Keys, Sw> {
    read_keys(ctx)?.ok_or(sw::NOT_PERSONALISED)
}

fn take_session(ctx: &mut Context<'_>) -> Option<Session> {
    let mem = ctx.transient(Clear::OnDeselect);
    let s = mem.remove(T_SESSION);
    s.and_then(|mut b| {
        let r = Session::decode(&b);
        b.zeroize();
        r
    })
}

fn log_key(slot: u8) -> Vec<u8> {
    let mut k = LOG_PREFIX.to_vec();
    k.push(slot);
    k
}

fn slot_of(counter: u32, capacity: u8) -> u8 {
    // capacity is 1..=255 (PurseInstall refuses 0); the remainder fits a byte.
    (counter % u32::from(capacity.max(1))) as u8
}

fn log_count(cfg: &Config, val: &Value) -> u32 {
    val.counter.min(u32::from(cfg.log_capacity))
}

/// The log record at `index` from the newest (0-based), if held.
fn log_record(
    ctx: &Context<'_>,
    cfg: &Config,
    val: &Value,
    index: u32,
) -> Result<Option<LogRecord>, Sw> {
    if index >= log_count(cfg, val) {
        return Ok(None);
    }
    let c = val.counter - 1 - index;
    let raw = ctx
        .get(&log_key(slot_of(c, cfg.log_capacity)))
        .ok_or(Sw::UNKNOWN)?;
    let rec = LogRecord::decode(&raw).map_err(|_| Sw::UNKNOWN)?;
    if rec.counter != c {
        return Err(Sw::UNKNOWN);
    }
    Ok(Some(rec))
}

fn random<const N: usize>(ctx: &mut Context<'_>) -> [u8; N] {
    let mut b = [0u8; N];
    ctx.random(&mut b);
    b
}

fn check_counter(cfg: &Config, val: &Value) -> Result<(), Sw> {
    if val.counter >= cfg.counter_limit {
        return Err(sw::COUNTER_EXHAUSTED);
    }
    Ok(())
}

/// Apply a value change described by its log record: the new value record (balance =
/// `balance_after`, counter = the counter the transaction used + 1) and the log record are
/// staged together, so the OS commits both in one batch when the command succeeds, or
/// neither. Returns the receipt, which carries the same proof as the log record.
fn apply(ctx: &mut Context<'_>, cfg: &Config, record: &LogRecord) -> Result<Vec<u8>, Sw> {
    let new = Value {
        balance: record.balance_after,
        counter: record.counter.checked_add(1).ok_or(sw::COUNTER_EXHAUSTED)?,
    };
    ctx.save(K_VAL, &new)?;
    ctx.put(
        &log_key(slot_of(record.counter, cfg.log_capacity)),
        &record.encode(),
    )?;
    Ok(ValueReceipt {
        counter: record.counter,
        balance_after: record.balance_after,
        proof: record.proof,
    }
    .encode())
}

impl Purse {
    fn install_purse(ctx: &mut Context<'_>, params: &[u8]) -> Result<(), Sw> {
        let p = PurseInstall::decode(params).map_err(|e| e.sw())?;
        RsaPublicKey::from_spki_der(&p.issuer_perso_spki).map_err(|_| Sw::WRONG_DATA)?;
        let pin_set = !p.pin.is_empty();
        if pin_set {
            Pin::create(ctx, PIN_ID, p.pin_try_limit, &p.pin)?;
        }
        let cfg = Config {
            purse_id: wire::purse_id_for(ctx.card_id()),
            currency: p.currency,
            max_balance: p.max_balance,
            log_capacity: p.log_capacity,
            counter_limit: p.counter_limit,
            pin_threshold: if pin_set { p.pin_threshold } else { u32::MAX },
            pin_set,
            issuer_spki: p.issuer_perso_spki,
        };
        // The attestation key pair is generated here, inside the purse; only its public
        // key leaves (GET ATTESTATION KEY), for the manufacturer CA to certify.
        let mut seed = Zeroizing::new([0u8; 32]);
        ctx.random(&mut seed[..]);
        let mut rng = CardRng::from_seed(*seed);
        let att = RsaPrivateKey::generate(2048, &mut rng).map_err(crypto_err)?;
        ctx.put(K_ATT, &att.to_pkcs8_der().map_err(crypto_err)?)?;
        ctx.save(K_CFG, &cfg)?;
        ctx.save(
            K_VAL,
            &Value {
                balance: 0,
                counter: 0,
            },
        )
    }

    fn verify(ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, Sw> {
        cmd.expect_p1p2(0x00, PIN_ID)?;
        Pin::verify_command(ctx, PIN_ID, &cmd.data).map(|_| Vec::new())
    }

    fn read_purse_data(ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, Sw> {
        cmd.expect_p1p2(0, 0)?;
        cmd.expect_no_data()?;
        let cfg = config(ctx)?;
        let val = value(ctx)?;
        let keys = read_keys(ctx)?;
        let mut flags = 0u8;
        if keys.is_some() {
            flags |= FLAG_PERSONALISED;
        }
        if cfg.pin_set {
            flags |= FLAG_PIN_SET;
        }
        Ok(PurseData {
            purse_id: cfg.purse_id,
            currency: cfg.currency,
            balance: val.balance,
            max_balance: cfg.max_balance,
            counter: val.counter,
            counter_limit: cfg.counter_limit,
            load_key_version: keys.as_ref().map(|k| k.load.version).unwrap_or(0),
            debit_key_version: keys.as_ref().map(|k| k.debit.version).unwrap_or(0),
            flags,
            log_capacity: cfg.log_capacity,
            pin_threshold: cfg.pin_threshold,
            log_count: log_count(&cfg, &val) as u8,
        }
        .encode())
    }

    fn get_balance(ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, Sw> {
        cmd.expect_p1p2(0, 0)?;
        cmd.expect_no_data()?;
        let cfg = config(ctx)?;
        let val = value(ctx)?;
        Ok(Balance {
            currency: cfg.currency,
            balance: val.balance,
        }
        .encode())
    }

    fn read_log(ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, Sw> {
        if cmd.p2 != 0 {
            return Err(Sw::INCORRECT_P1P2);
        }
        cmd.expect_no_data()?;
        let cfg = config(ctx)?;
        let val = value(ctx)?;
        log_record(ctx, &cfg, &val, u32::from(cmd.p1))?
            .map(|r| r.encode())
            .ok_or(Sw::RECORD_NOT_FOUND)
    }

    fn attestation_key(ctx: &Context<'_>) -> Result<RsaPrivateKey, Sw> {
        let der = Zeroizing::new(ctx.get(K_ATT).ok_or(Sw::CONDITIONS_NOT_SATISFIED)?);
        RsaPrivateKey::from_pkcs8_der(&der).map_err(crypto_err)
    }

    fn get_attestation_key(ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, Sw> {
        cmd.expect_p1p2(0, 0)?;
        cmd.expect_no_data()?;
        Purse::attestation_key(ctx)?
            .public_key()
            .to_spki_der()
            .map_err(crypto_err)
    }

    fn init_perso(ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, Sw> {
        cmd.expect_p1p2(0, 0)?;
        cmd.expect_no_data()?;
        if read_keys(ctx)?.is_some() {
            return Err(sw::NOT_PERSONALISED);
        }
        let att = Purse::attestation_key(ctx)?;
        let cfg = config(ctx)?;
        let mut kt = Zeroizing::new([0u8; 16]);
        ctx.random(&mut kt[..]);
        let nonce = random::<8>(ctx);
        let mut seed = Zeroizing::new([0u8; 32]);
        ctx.random(&mut seed[..]);
        let mut rng = CardRng::from_seed(*seed);
        let t = keyblob::request(&cfg.issuer_spki, kt, nonce, &cfg.purse_id, &mut rng)
            .map_err(crypto_err)?;
        let signature = att
            .sign_pkcs1v15_sha256(&wire::key_request_signed_input(&t.ciphertext))
            .map_err(crypto_err)?;
        ctx.put(K_KT, &t.record)?;
        Ok(AttestedKeyRequest {
            ciphertext: t.ciphertext,
            signature,
        }
        .encode())
    }

    fn put_keys(ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, Sw> {
        cmd.expect_p1p2(0, 0)?;
        if read_keys(ctx)?.is_some() {
            return Err(sw::NOT_PERSONALISED);
        }
        let stored = Zeroizing::new(ctx.get(K_KT).ok_or(Sw::CONDITIONS_NOT_SATISFIED)?);
        let blob = KeyBlob::decode(&cmd.data).map_err(|e| e.sw())?;
        let (kt, nonce) = keyblob::parse_record(&stored).ok_or(Sw::UNKNOWN)?;
        let keys = keyblob::open(&kt, &nonce, &blob).map_err(|e| match e {
            KeyBlobError::Mac | KeyBlobError::Nonce => Sw::SM_OBJECTS_INCORRECT,
            KeyBlobError::Format => Sw::WRONG_DATA,
            KeyBlobError::Crypto => Sw::UNKNOWN,
        })?;
        // Exactly one load key and one debit key, both card (non-master) keys.
        let mut load = None;
        let mut debit = None;
        for (e, k) in blob.entries.iter().zip(keys.iter()) {
            let slot = match (e.usage, e.master) {
                (usage::LOAD, false) => &mut load,
                (usage::DEBIT, false) => &mut debit,
                _ => return Err(Sw::WRONG_DATA),
            };
            if slot.is_some() {
                return Err(Sw::WRONG_DATA);
            }
            *slot = Some((e.number, e.version, k));
        }
        let (Some(l), Some(d)) = (load, debit) else {
            return Err(Sw::WRONG_DATA);
        };
        let mut rec = Zeroizing::new(Vec::with_capacity(38));
        for (u, (number, version, key)) in [(usage::LOAD, l), (usage::DEBIT, d)] {
            rec.extend_from_slice(&[u, number, version]);
            rec.extend_from_slice(&key[..]);
        }
        ctx.put(K_KEYS, &rec)?;
        ctx.delete(K_KT);
        Ok(Vec::new())
    }

    fn init_load(ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, Sw> {
        let _ = take_session(ctx);
        cmd.expect_p1p2(0, 0)?;
        cmd.expect_no_data()?;
        let keys = require_keys(ctx)?;
        let cfg = config(ctx)?;
        let val = value(ctx)?;
        check_counter(&cfg, &val)?;
        let challenge = random::<8>(ctx);
        let s = Session::Load {
            counter: val.counter,
            challenge,
        };
        ctx.transient(Clear::OnDeselect)
            .insert(T_SESSION.to_vec(), s.encode());
        Ok(InitLoadResponse {
            purse_id: cfg.purse_id,
            currency: cfg.currency,
            balance: val.balance,
            counter: val.counter,
            challenge,
            key_version: keys.load.version,
        }
        .encode())
    }

    fn load(ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, Sw> {
        // The session ends here, whatever the outcome.
        let session = take_session(ctx);
        cmd.expect_p1p2(0, 0)?;
        let msg = Load::decode(&cmd.data).map_err(|e| e.sw())?;
        let keys = require_keys(ctx)?;
        let cfg = config(ctx)?;
        let val = value(ctx)?;
        check_counter(&cfg, &val)?;
        let Some(Session::Load { counter, challenge }) = session else {
            return Err(Sw::CONDITIONS_NOT_SATISFIED);
        };
        if msg.counter != counter || val.counter != counter {
            return Err(sw::STALE_SESSION);
        }
        if msg.amount == 0 {
            return Err(Sw::WRONG_DATA);
        }
        let input = wire::load_auth_mac_input(
            &cfg.purse_id,
            counter,
            &challenge,
            cfg.currency,
            msg.amount,
            &msg.sam_id,
            msg.sam_txn,
            msg.terminal_time,
        );
        if !verify8(&keys.load.key, &input, &msg.mac).map_err(crypto_err)? {
            return Err(Sw::SM_OBJECTS_INCORRECT);
        }
        let balance_after = val
            .balance
            .checked_add(msg.amount)
            .filter(|b| *b <= cfg.max_balance)
            .ok_or(sw::OVER_MAXIMUM)?;
        let proof: Mac = mac8(
            &keys.load.key,
            &wire::load_receipt_mac_input(
                &cfg.purse_id,
                counter,
                msg.amount,
                balance_after,
                &msg.sam_id,
                msg.sam_txn,
            ),
        )
        .map_err(crypto_err)?;
        let record = LogRecord {
            kind: kind::LOAD,
            amount: msg.amount,
            balance_after,
            counter,
            sam_id: msg.sam_id,
            sam_txn: msg.sam_txn,
            terminal_id: [0u8; 4],
            terminal_time: msg.terminal_time,
            proof,
        };
        apply(ctx, &cfg, &record)
    }

    fn init_purchase(ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, Sw> {
        let _ = take_session(ctx);
        cmd.expect_p1p2(0, 0)?;
        let req = InitPurchase::decode(&cmd.data).map_err(|e| e.sw())?;
        let keys = require_keys(ctx)?;
        let cfg = config(ctx)?;
        let val = value(ctx)?;
        check_counter(&cfg, &val)?;
        let card_challenge = random::<8>(ctx);
        let card_auth = mac8(
            &keys.debit.key,
            &wire::card_auth_mac_input(
                &cfg.purse_id,
                cfg.currency,
                val.balance,
                val.counter,
                &card_challenge,
                &req.sam_challenge,
            ),
        )
        .map_err(crypto_err)?;
        let mut flags = 0u8;
        if cfg.pin_set {
            flags |= FLAG_PIN_SET;
            if Pin::is_validated(ctx, PIN_ID) {
                flags |= FLAG_PIN_VALIDATED;
            }
        }
        let s = Session::Purchase {
            counter: val.counter,
            card_challenge,
            sam_id: req.sam_id,
            sam_challenge: req.sam_challenge,
        };
        ctx.transient(Clear::OnDeselect)
            .insert(T_SESSION.to_vec(), s.encode());
        Ok(InitPurchaseResponse {
            purse_id: cfg.purse_id,
            currency: cfg.currency,
            balance: val.balance,
            counter: val.counter,
            card_challenge,
            key_version: keys.debit.version,
            pin_threshold: cfg.pin_threshold,
            flags,
            card_auth,
        }
        .encode())
    }

    fn purchase(ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, Sw> {
        // The session ends here, whatever the outcome.
        let session = take_session(ctx);
        cmd.expect_p1p2(0, 0)?;
        let msg = Purchase::decode(&cmd.data).map_err(|e| e.sw())?;
        let keys = require_keys(ctx)?;
        let cfg = config(ctx)?;
        let val = value(ctx)?;
        check_counter(&cfg, &val)?;
        let Some(Session::Purchase {
            counter,
            card_challenge,
            sam_id,
            sam_challenge,
        }) = session
        else {
            return Err(Sw::CONDITIONS_NOT_SATISFIED);
        };
        if msg.counter != counter || val.counter != counter || msg.sam_id != sam_id {
            return Err(sw::STALE_SESSION);
        }
        if msg.amount == 0 {
            return Err(Sw::WRONG_DATA);
        }
        let input = wire::debit_auth_mac_input(
            &cfg.purse_id,
            counter,
            &card_challenge,
            &sam_challenge,
            cfg.currency,
            msg.amount,
            &msg.terminal_id,
            &msg.sam_id,
            msg.sam_txn,
            msg.terminal_time,
        );
        if !verify8(&keys.debit.key, &input, &msg.mac).map_err(crypto_err)? {
            return Err(Sw::SM_OBJECTS_INCORRECT);
        }
        let balance_after = val
            .balance
            .checked_sub(msg.amount)
            .ok_or(sw::INSUFFICIENT_FUNDS)?;
        if cfg.pin_set && msg.amount > cfg.pin_threshold && !Pin::is_validated(ctx, PIN_ID) {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let proof = mac8(
            &keys.debit.key,
            &wire::debit_proof_mac_input(
                &cfg.purse_id,
                counter,
                msg.amount,
                balance_after,
                &msg.terminal_id,
                &msg.sam_id,
                msg.sam_txn,
                &sam_challenge,
            ),
        )
        .map_err(crypto_err)?;
        let record = LogRecord {
            kind: kind::PURCHASE,
            amount: msg.amount,
            balance_after,
            counter,
            sam_id: msg.sam_id,
            sam_txn: msg.sam_txn,
            terminal_id: msg.terminal_id,
            terminal_time: msg.terminal_time,
            proof,
        };
        apply(ctx, &cfg, &record)
    }

    fn get_txn_status(ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, Sw> {
        // "Not applied" must be final: no open session may apply the transaction later.
        // The session ends first, whatever the parameters (as LOAD and PURCHASE do).
        let _ = take_session(ctx);
        if cmd.p2 != 0 || !(cmd.p1 == usage::LOAD || cmd.p1 == usage::DEBIT) {
            return Err(Sw::INCORRECT_P1P2);
        }
        let q = TxnStatusQuery::decode(&cmd.data).map_err(|e| e.sw())?;
        let keys = require_keys(ctx)?;
        let cfg = config(ctx)?;
        let val = value(ctx)?;
        let mut found = None;
        for i in 0..log_count(&cfg, &val) {
            if let Some(r) = log_record(ctx, &cfg, &val, i)?
                && r.sam_id == q.sam_id
                && r.sam_txn == q.sam_txn
            {
                found = Some(r);
                break;
            }
        }
        let (applied, record) = match found {
            Some(r) => (true, r),
            None => (
                false,
                LogRecord {
                    kind: 0,
                    amount: 0,
                    balance_after: 0,
                    counter: val.counter,
                    sam_id: [0; 4],
                    sam_txn: 0,
                    terminal_id: [0; 4],
                    terminal_time: 0,
                    proof: [0; 8],
                },
            ),
        };
        let key = if cmd.p1 == usage::LOAD {
            &keys.load.key
        } else {
            &keys.debit.key
        };
        let mut status = TxnStatus {
            applied,
            record,
            // Every record of a counter in oldest..counter is held (slot c mod capacity).
            oldest_logged_counter: val.counter.saturating_sub(log_count(&cfg, &val)),
            mac: [0; 8],
        };
        status.mac = mac8(key, &wire::txn_status_mac_input(&cfg.purse_id, &q, &status))
            .map_err(crypto_err)?;
        Ok(status.encode())
    }
}

impl Applet for Purse {
    fn install(&mut self, ctx: &mut Context<'_>, params: &[u8]) -> Result<(), Sw> {
        Purse::install_purse(ctx, params)
    }

    fn process(&mut self, ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, Sw> {
        if cmd.ins == ins::VERIFY {
            // ISO VERIFY: interindustry CLA 00 or the applet's proprietary CLA.
            cmd.expect_cla(&[0x00, CLA])?;
            return Purse::verify(ctx, cmd);
        }
        cmd.expect_cla(&[CLA])?;
        match cmd.ins {
            ins::READ_PURSE_DATA => Purse::read_purse_data(ctx, cmd),
            ins::GET_BALANCE => Purse::get_balance(ctx, cmd),
            ins::READ_LOG => Purse::read_log(ctx, cmd),
            ins::INIT_PERSO => Purse::init_perso(ctx, cmd),
            ins::PUT_KEYS => Purse::put_keys(ctx, cmd),
            ins::GET_ATTESTATION_KEY => Purse::get_attestation_key(ctx, cmd),
            ins::INIT_LOAD => Purse::init_load(ctx, cmd),
            ins::LOAD => Purse::load(ctx, cmd),
            ins::INIT_PURCHASE => Purse::init_purchase(ctx, cmd),
            ins::PURCHASE => Purse::purchase(ctx, cmd),
            ins::GET_TXN_STATUS => Purse::get_txn_status(ctx, cmd),
            _ => Err(Sw::INS_NOT_SUPPORTED),
        }
    }
}
