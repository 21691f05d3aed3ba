//! Shared test rig for the purse and SAM applets: cards personalised through real APDUs.
//! (Also compiled into the SAM tests with `#[path]`.)
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};
use tessera_apdu::{Command, Response, Sw};
use tessera_crypto::rng::CardRng;
use tessera_crypto::rsa::{RsaPrivateKey, RsaPublicKey};
use tessera_crypto::x509::{self, CardCertificate, CardRole, CertificateParams};
use tessera_os::{Card, CardError, Privileges, TearPlan};
use tessera_purse::wire::{self as pw, PurseInstall};
use tessera_sam::wire::{self as sw, SamInstall};

pub const SAM_PIN: &[u8] = b"2468";
pub const ISSUER_ID: [u8; 4] = [0x00, 0x00, 0x00, 0x01];
pub const T0: u32 = 1_700_000_000;
pub const DAY: u32 = 86_400;
pub const EUR: u16 = 978;
pub const PURSE_PIN: &[u8] = b"1234";

/// One card with one selected applet instance.
pub struct Chip {
    pub card: Card,
    pub aid: Vec<u8>,
}

pub fn cmd(cla: u8, ins: u8, p1: u8, p2: u8, data: &[u8]) -> Command {
    Command::new(cla, ins, p1, p2)
        .with_data(data.to_vec())
        .extended()
        .with_le(65_536)
}

impl Chip {
    pub fn try_send(
        &mut self,
        cla: u8,
        ins: u8,
        p1: u8,
        p2: u8,
        data: &[u8],
    ) -> Result<Response, CardError> {
        self.card.transmit_command(&cmd(cla, ins, p1, p2, data))
    }

    pub fn send(&mut self, cla: u8, ins: u8, p1: u8, p2: u8, data: &[u8]) -> Response {
        self.try_send(cla, ins, p1, p2, data).expect("card answers")
    }

    /// CLA 80 command expected to succeed.
    pub fn ok(&mut self, ins: u8, p1: u8, p2: u8, data: &[u8]) -> Vec<u8> {
        let r = self.send(0x80, ins, p1, p2, data);
        assert_eq!(r.sw, Sw::OK, "INS {ins:02X}: {}", r.sw);
        r.data
    }

    /// CLA 80 command: its status word.
    pub fn sw(&mut self, ins: u8, p1: u8, p2: u8, data: &[u8]) -> Sw {
        self.send(0x80, ins, p1, p2, data).sw
    }

    pub fn select(&mut self) {
        let r = self.send(0x00, 0xA4, 0x04, 0x00, &self.aid.clone());
        assert_eq!(r.sw, Sw::OK, "select");
    }

    /// Power back on after a cut (or a plain power cycle) and select the applet again.
    pub fn power_cycle(&mut self) {
        self.card.power_off();
        self.card.power_on();
        self.select();
    }
}

// ------------------------------------------------------------------ chip attestation

/// A chip manufacturer CA: RSA key and self-signed certificate.
pub struct Manufacturer {
    pub key: RsaPrivateKey,
    pub cert: CardCertificate,
}

impl Manufacturer {
    /// A CA from a fixed seed, valid 2020-09 .. 2033-05 (T0 lies inside).
    pub fn new(name: &str, seed: u8) -> Manufacturer {
        let key =
            RsaPrivateKey::generate(2048, &mut CardRng::from_seed([seed; 32])).expect("CA key");
        let cert = x509::issue_self_signed(
            &key,
            &CertificateParams::ca(name, 1, at(1_600_000_000), at(2_000_000_000)),
        )
        .expect("CA certificate");
        Manufacturer { key, cert }
    }

    /// Certify a chip's attestation key (SPKI DER) for `subject` (upper-case hex CN).
    pub fn certify(&self, spki: &[u8], role: CardRole, subject: &[u8], serial: u64) -> Vec<u8> {
        let pubkey = RsaPublicKey::from_spki_der(spki).expect("attestation SPKI");
        x509::issue_certificate(
            &self.key,
            &self.cert,
            &pubkey,
            &CertificateParams::card(
                &hex::encode_upper(subject),
                serial,
                role,
                at(1_650_000_000),
                at(1_950_000_000),
            ),
        )
        .expect("chip certificate")
        .to_der()
        .to_vec()
    }
}

pub fn at(secs: u64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// The manufacturer CA the test issuer SAM trusts (generated once per test binary).
pub fn manufacturer() -> &'static Manufacturer {
    static M: OnceLock<Manufacturer> = OnceLock::new();
    M.get_or_init(|| Manufacturer::new("Test Chip Manufacturer", 0x4D))
}

/// Install-time images cached per test binary: chips generate an RSA attestation key at
/// installation, so each distinct chip is installed once and then cloned from its image.
type ImageCache = Mutex<HashMap<Vec<u8>, Arc<OnceLock<Vec<u8>>>>>;

fn cached_image(key: Vec<u8>, make: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
    static CACHE: OnceLock<ImageCache> = OnceLock::new();
    let cell = CACHE
        .get_or_init(Default::default)
        .lock()
        .expect("cache lock")
        .entry(key)
        .or_default()
        .clone();
    cell.get_or_init(make).clone()
}

/// GET ATTESTATION KEY (purse 80 3A, SAM 80 1C): the chip's attestation SPKI.
pub fn attestation_spki(chip: &mut Chip) -> Vec<u8> {
    let ins = if chip.aid == sw::SAM_AID.to_vec() {
        sw::ins::GET_ATTESTATION_KEY
    } else {
        pw::ins::GET_ATTESTATION_KEY
    };
    chip.ok(ins, 0, 0, &[])
}

/// The factory step for a purse: certify its attestation key for its purse ID.
pub fn purse_cert(p: &mut Chip) -> Vec<u8> {
    let spki = attestation_spki(p);
    let id = purse_data(p).purse_id;
    manufacturer().certify(&spki, CardRole::Purse, &id, 0x1000 + u64::from(id[7]))
}

/// The factory step for a SAM: certify its attestation key for its SAM ID.
pub fn sam_cert(s: &mut Chip) -> Vec<u8> {
    let spki = attestation_spki(s);
    let id = sam_data(s).sam_id;
    manufacturer().certify(&spki, CardRole::Sam, &id, 0x2000 + u64::from(id[3]))
}

/// PERSONALISE PURSE data (EXPORT SAM KEYS data after its role byte): the chip's
/// certificate and its INIT PERSO / INIT KEY IMPORT answer, at time T0.
pub fn perso_request(cert: &[u8], init_answer: &[u8]) -> Vec<u8> {
    sw::PersonaliseRequest {
        time: T0,
        chip_cert: cert.to_vec(),
        request: pw::AttestedKeyRequest::decode(init_answer).expect("attested request"),
    }
    .encode()
}

/// EXPORT SAM KEYS data for a terminal SAM.
pub fn export_request(cert: &[u8], init_answer: &[u8]) -> Vec<u8> {
    let mut data = vec![sw::role::TERMINAL];
    data.extend_from_slice(&perso_request(cert, init_answer));
    data
}

// ------------------------------------------------------------------ SAMs

fn sam_card(card_id: &[u8], seed: u8) -> Card {
    Card::builder()
        .card_id(card_id.to_vec())
        .seed([seed; 32])
        .memory_quota(512 * 1024)
        .load_file(tessera_sam::load_file())
        .build()
}

/// The issuer SAM card image, generated once per test binary (RSA key generation is slow).
pub fn issuer_image() -> &'static [u8] {
    static IMG: OnceLock<Vec<u8>> = OnceLock::new();
    IMG.get_or_init(|| {
        let mut card = sam_card(&[0x5A, 0x4D, 0x00, 0x01], 0x51);
        let params = SamInstall {
            sam_id: ISSUER_ID,
            role: sw::role::ISSUER,
            pin: SAM_PIN.to_vec(),
            max_per_load: 100_000,
            max_per_day: 10_000_000,
            journal_capacity: 2_000,
            issuer_perso_spki: Vec::new(),
            chip_ca_cert: manufacturer().cert.to_der().to_vec(),
        };
        card.install("sam", &sw::SAM_AID, Privileges::default(), &params.encode())
            .expect("issuer SAM installs");
        card.to_image_bytes()
    })
}

/// A fresh copy of the issuer SAM, powered, selected and unlocked.
pub fn issuer() -> Chip {
    let card = Card::from_image_bytes(issuer_image(), vec![tessera_sam::load_file()])
        .expect("image opens");
    let mut chip = Chip {
        card,
        aid: sw::SAM_AID.to_vec(),
    };
    chip.card.power_on();
    chip.select();
    unlock(&mut chip);
    chip
}

pub fn unlock(sam: &mut Chip) {
    let r = sam.send(0x00, sw::ins::VERIFY, 0x00, 0x81, SAM_PIN);
    assert_eq!(r.sw, Sw::OK, "unlock");
}

pub struct TerminalOpts {
    pub sam_id: [u8; 4],
    pub max_per_load: u32,
    pub max_per_day: u32,
    pub journal_capacity: u16,
}

impl Default for TerminalOpts {
    fn default() -> Self {
        TerminalOpts {
            sam_id: [0x00, 0x00, 0x00, 0x10],
            max_per_load: 0,
            max_per_day: 0,
            journal_capacity: 500,
        }
    }
}

/// Install a terminal SAM and personalise it from the issuer SAM through real APDUs
/// (INIT KEY IMPORT → EXPORT SAM KEYS → IMPORT KEYS). Powered, selected, unlocked.
pub fn terminal(issuer: &mut Chip, opts: TerminalOpts) -> Chip {
    let mut t = blank_terminal(issuer, &opts);
    let cert = sam_cert(&mut t);
    let ct = t.ok(sw::ins::INIT_KEY_IMPORT, 0, 0, &[]);
    let blob = issuer.ok(sw::ins::EXPORT_SAM_KEYS, 0, 0, &export_request(&cert, &ct));
    t.ok(sw::ins::IMPORT_KEYS, 0, 0, &blob);
    t
}

/// A terminal SAM installed (attestation key generated inside it) but without keys;
/// powered, selected, unlocked.
pub fn blank_terminal(issuer: &mut Chip, opts: &TerminalOpts) -> Chip {
    let spki = issuer.ok(sw::ins::GET_PERSO_PUBLIC_KEY, 0, 0, &[]);
    let params = SamInstall {
        sam_id: opts.sam_id,
        role: sw::role::TERMINAL,
        pin: SAM_PIN.to_vec(),
        max_per_load: opts.max_per_load,
        max_per_day: opts.max_per_day,
        journal_capacity: opts.journal_capacity,
        issuer_perso_spki: spki,
        chip_ca_cert: Vec::new(),
    };
    let mut key = b"sam".to_vec();
    key.extend_from_slice(&params.encode());
    let image = cached_image(key, || {
        let mut card = sam_card(&opts.sam_id, opts.sam_id[3]);
        card.install("sam", &sw::SAM_AID, Privileges::default(), &params.encode())
            .expect("terminal SAM installs");
        card.to_image_bytes()
    });
    let card = Card::from_image_bytes(&image, vec![tessera_sam::load_file()]).expect("image");
    let mut t = Chip {
        card,
        aid: sw::SAM_AID.to_vec(),
    };
    t.card.power_on();
    t.select();
    unlock(&mut t);
    t
}

// ------------------------------------------------------------------ purses

pub struct PurseOpts {
    pub card_id: Vec<u8>,
    pub max_balance: u32,
    pub log_capacity: u8,
    pub counter_limit: u32,
    pub pin_threshold: u32,
    pub pin: Vec<u8>,
}

impl Default for PurseOpts {
    fn default() -> Self {
        PurseOpts {
            card_id: vec![0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x01],
            max_balance: 100_000,
            log_capacity: 8,
            counter_limit: 0xFFFF_FFFF,
            pin_threshold: 2_000,
            pin: PURSE_PIN.to_vec(),
        }
    }
}

impl PurseOpts {
    pub fn id(n: u8) -> PurseOpts {
        PurseOpts {
            card_id: vec![0x04, 0x11, 0x22, 0x33, 0x44, 0x55, n],
            ..PurseOpts::default()
        }
    }
}

/// A purse card with the applet installed (not personalised), powered and selected.
pub fn blank_purse(issuer: &mut Chip, opts: &PurseOpts) -> Chip {
    let spki = issuer.ok(sw::ins::GET_PERSO_PUBLIC_KEY, 0, 0, &[]);
    let seed = *opts.card_id.last().unwrap_or(&0);
    let params = PurseInstall {
        currency: EUR,
        max_balance: opts.max_balance,
        log_capacity: opts.log_capacity,
        counter_limit: opts.counter_limit,
        pin_threshold: opts.pin_threshold,
        pin_try_limit: 3,
        pin: opts.pin.clone(),
        issuer_perso_spki: spki,
    };
    let mut key = b"purse".to_vec();
    key.extend_from_slice(&opts.card_id);
    key.push(0xFF);
    key.extend_from_slice(&params.encode());
    let image = cached_image(key, || {
        let mut card = Card::builder()
            .card_id(opts.card_id.clone())
            .seed([seed ^ 0xA0; 32])
            .load_file(tessera_purse::load_file())
            .build();
        card.install(
            "purse",
            &pw::PURSE_AID,
            Privileges::default(),
            &params.encode(),
        )
        .expect("purse installs");
        card.to_image_bytes()
    });
    let card = Card::from_image_bytes(&image, vec![tessera_purse::load_file()]).expect("image");
    let mut p = Chip {
        card,
        aid: pw::PURSE_AID.to_vec(),
    };
    p.card.power_on();
    p.select();
    p
}

/// A purse personalised by the issuer SAM through INIT PERSO → PERSONALISE PURSE → PUT KEYS.
pub fn purse(issuer: &mut Chip, opts: &PurseOpts) -> Chip {
    let mut p = blank_purse(issuer, opts);
    let cert = purse_cert(&mut p);
    let ct = p.ok(pw::ins::INIT_PERSO, 0, 0, &[]);
    let blob = issuer.ok(sw::ins::PERSONALISE_PURSE, 0, 0, &perso_request(&cert, &ct));
    p.ok(pw::ins::PUT_KEYS, 0, 0, &blob);
    p
}

pub fn purse_data(p: &mut Chip) -> pw::PurseData {
    pw::PurseData::decode(&p.ok(pw::ins::READ_PURSE_DATA, 0, 0, &[])).expect("purse data")
}

pub fn balance(p: &mut Chip) -> u32 {
    pw::Balance::decode(&p.ok(pw::ins::GET_BALANCE, 0, 0, &[]))
        .expect("balance")
        .balance
}

pub fn read_log(p: &mut Chip, index: u8) -> Option<pw::LogRecord> {
    let r = p.send(0x80, pw::ins::READ_LOG, index, 0, &[]);
    if r.sw == Sw::RECORD_NOT_FOUND {
        return None;
    }
    assert_eq!(r.sw, Sw::OK);
    Some(pw::LogRecord::decode(&r.data).expect("log record"))
}

// ------------------------------------------------------------------ load

/// INIT LOAD on the purse, AUTHORIZE LOAD on the SAM; returns the LOAD command data.
pub fn prepare_load(sam: &mut Chip, purse: &mut Chip, amount: u32, time: u32) -> pw::Load {
    let init =
        pw::InitLoadResponse::decode(&purse.ok(pw::ins::INIT_LOAD, 0, 0, &[])).expect("init load");
    let req = pw::AuthorizeLoad {
        purse_id: init.purse_id,
        currency: init.currency,
        counter: init.counter,
        challenge: init.challenge,
        key_version: init.key_version,
        amount,
        terminal_time: time,
    };
    let auth = pw::LoadAuthorization::decode(&sam.ok(sw::ins::AUTHORIZE_LOAD, 0, 0, &req.encode()))
        .expect("auth");
    pw::Load {
        amount,
        sam_id: auth.sam_id,
        sam_txn: auth.sam_txn,
        terminal_time: time,
        counter: init.counter,
        mac: auth.mac,
    }
}

pub fn confirm_data(
    purse_id: pw::PurseId,
    sam_txn: u32,
    amount: u32,
    r: &pw::ValueReceipt,
) -> Vec<u8> {
    sw::Confirm {
        purse_id,
        sam_txn,
        counter: r.counter,
        amount,
        balance_after: r.balance_after,
        proof: r.proof,
    }
    .encode()
}

/// A whole load: INIT LOAD, AUTHORIZE, LOAD, CONFIRM.
pub fn load(sam: &mut Chip, purse: &mut Chip, amount: u32) -> pw::ValueReceipt {
    let l = prepare_load(sam, purse, amount, T0);
    let r = pw::ValueReceipt::decode(&purse.ok(pw::ins::LOAD, 0, 0, &l.encode())).expect("receipt");
    let pid = purse_data(purse).purse_id;
    sam.ok(
        sw::ins::CONFIRM_LOAD,
        0,
        0,
        &confirm_data(pid, l.sam_txn, amount, &r),
    );
    r
}

// ------------------------------------------------------------------ purchase

pub struct PreparedPurchase {
    pub purse_id: pw::PurseId,
    pub msg: pw::Purchase,
}

/// BEGIN PURCHASE, INIT PURCHASE, AUTHORIZE PURCHASE; returns the PURCHASE command data.
pub fn prepare_purchase(
    sam: &mut Chip,
    purse: &mut Chip,
    amount: u32,
    time: u32,
) -> Result<PreparedPurchase, Sw> {
    let begin =
        sw::BeginPurchase::decode(&sam.ok(sw::ins::BEGIN_PURCHASE, 0, 0, &[])).expect("begin");
    let init = begin.init_purchase();
    let ip =
        pw::InitPurchaseResponse::decode(&purse.ok(pw::ins::INIT_PURCHASE, 0, 0, &init.encode()))
            .expect("ip");
    let terminal_id = [0x54, 0x45, 0x52, 0x31];
    let req = pw::AuthorizePurchase::new(&ip, amount, terminal_id, time);
    let r = sam.send(0x80, sw::ins::AUTHORIZE_PURCHASE, 0, 0, &req.encode());
    if r.sw != Sw::OK {
        return Err(r.sw);
    }
    let auth = pw::PurchaseAuthorization::decode(&r.data).expect("auth");
    Ok(PreparedPurchase {
        purse_id: ip.purse_id,
        msg: pw::Purchase {
            amount,
            terminal_id,
            sam_id: begin.sam_id,
            sam_txn: auth.sam_txn,
            terminal_time: time,
            counter: ip.counter,
            mac: auth.mac,
        },
    })
}

/// A whole purchase (PIN verified first when given), confirmed on the SAM.
pub fn purchase(
    sam: &mut Chip,
    purse: &mut Chip,
    amount: u32,
    pin: Option<&[u8]>,
) -> Result<pw::ValueReceipt, Sw> {
    let p = prepare_purchase(sam, purse, amount, T0)?;
    if let Some(pin) = pin {
        let r = purse.send(0x00, pw::ins::VERIFY, 0x00, 0x81, pin);
        assert_eq!(r.sw, Sw::OK, "purse PIN");
    }
    let r = purse.send(0x80, pw::ins::PURCHASE, 0, 0, &p.msg.encode());
    if r.sw != Sw::OK {
        return Err(r.sw);
    }
    let receipt = pw::ValueReceipt::decode(&r.data).expect("receipt");
    sam.ok(
        sw::ins::CONFIRM_PURCHASE,
        0,
        0,
        &confirm_data(p.purse_id, p.msg.sam_txn, amount, &receipt),
    );
    Ok(receipt)
}

// ------------------------------------------------------------------ recovery

/// BEGIN RESOLVE on the SAM: the challenge its next RESOLVE expects in the status.
pub fn begin_resolve(sam: &mut Chip) -> [u8; 8] {
    sw::ResolveChallenge::decode(&sam.ok(sw::ins::BEGIN_RESOLVE, 0, 0, &[]))
        .expect("resolve challenge")
        .sam_challenge
}

/// GET TRANSACTION STATUS for the challenge of a resolve session opened now on `sam`.
pub fn txn_status(
    sam: &mut Chip,
    purse: &mut Chip,
    key_usage: u8,
    sam_id: [u8; 4],
    sam_txn: u32,
) -> pw::TxnStatus {
    let sam_challenge = begin_resolve(sam);
    txn_status_for(purse, key_usage, sam_id, sam_txn, sam_challenge)
}

/// GET TRANSACTION STATUS with a given challenge.
pub fn txn_status_for(
    purse: &mut Chip,
    key_usage: u8,
    sam_id: [u8; 4],
    sam_txn: u32,
    sam_challenge: [u8; 8],
) -> pw::TxnStatus {
    let q = pw::TxnStatusQuery {
        sam_id,
        sam_txn,
        sam_challenge,
    };
    pw::TxnStatus::decode(&purse.ok(pw::ins::GET_TXN_STATUS, key_usage, 0, &q.encode()))
        .expect("status")
}

/// RESOLVE on the SAM with the purse's status; returns the SAM's answer.
pub fn resolve(
    sam: &mut Chip,
    purse_id: pw::PurseId,
    sam_txn: u32,
    key_usage: u8,
    status: pw::TxnStatus,
) -> Response {
    let r = sw::Resolve {
        purse_id,
        sam_txn,
        key_usage,
        status,
    };
    sam.send(0x80, sw::ins::RESOLVE, 0, 0, &r.encode())
}

pub fn sam_data(sam: &mut Chip) -> sw::SamData {
    sw::SamData::decode(&sam.ok(sw::ins::GET_SAM_DATA, 0, 0, &[])).expect("sam data")
}

pub fn disarm(card: &mut Card) {
    card.arm_tear(TearPlan::default());
}
