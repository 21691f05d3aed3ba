//! Typed clients of the purse and SAM applets.
//!
//! One method per applet command. Every message is built and parsed with the applets' own
//! wire types (`tessera_purse::wire`, `tessera_sam::wire`): the host never lays out bytes
//! itself. A status word other than 9000 becomes [`ClientError::Card`] with the meaning
//! taken from the applet's status word table ([`purse_sw_meaning`], [`sam_sw_meaning`]).
//!
//! ```no_run
//! # fn demo(card: &mut tessera_os::Card) -> Result<(), tessera_host::clients::ClientError> {
//! use tessera_host::clients::PurseClient;
//! let mut purse = PurseClient::new(card);
//! purse.select()?;
//! println!("balance {}", purse.balance()?.balance);
//! # Ok(()) }
//! ```

use crate::transport::{Transport, TransportError};
use tessera_apdu::{Command, Sw};
use tessera_purse::wire::{
    self as pw, AttestedKeyRequest, AuthorizeLoad, AuthorizePurchase, Balance, InitLoadResponse,
    InitPurchase, InitPurchaseResponse, KeyBlob, Load, LoadAuthorization, LogRecord, Purchase,
    PurchaseAuthorization, PurseData, TxnStatus, TxnStatusQuery, ValueReceipt, WireError,
};
use tessera_sam::wire::{
    self as sw_, BeginPurchase, Confirm, JournalAck, JournalBatch, PersonaliseRequest, Resolve,
    ResolveChallenge, SamData,
};

/// Short Le asking for everything (encoded 00); longer answers come through 61xx.
const LE_ALL: usize = 256;
/// ISO VERIFY.
const INS_VERIFY: u8 = 0x20;
/// P2 of VERIFY: specific reference data 1 (the applet's PIN).
const VERIFY_P2: u8 = 0x81;

/// Errors of a client command.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The applet answered an error status word.
    #[error("{command}: card answered {sw} ({meaning})")]
    Card {
        /// The command that was refused ("LOAD", "AUTHORIZE PURCHASE", ...).
        command: &'static str,
        sw: Sw,
        /// What the status word means for this applet.
        meaning: String,
    },
    /// The link to the card failed. [`TransportError::NoResponse`]: the command's outcome
    /// is unknown.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The card's answer does not decode as the expected message.
    #[error("malformed answer: {0}")]
    Wire(#[from] WireError),
}

impl ClientError {
    /// The status word, when the card refused the command.
    pub fn sw(&self) -> Option<Sw> {
        match self {
            ClientError::Card { sw, .. } => Some(*sw),
            _ => None,
        }
    }

    /// True when the command's answer was lost (power cut, card removed): the host does
    /// not know whether the command was applied.
    pub fn is_no_response(&self) -> bool {
        matches!(self, ClientError::Transport(TransportError::NoResponse))
    }
}

/// Which applet answered (selects the status word table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Purse,
    Sam,
}

/// Meaning of a status word answered by the purse applet.
pub fn purse_sw_meaning(sw: Sw) -> String {
    match sw {
        s if s == pw::sw::OVER_MAXIMUM => "over maximum balance".into(),
        s if s == pw::sw::INSUFFICIENT_FUNDS => "insufficient funds".into(),
        s if s == pw::sw::COUNTER_EXHAUSTED => "transaction counter exhausted".into(),
        s if s == pw::sw::STALE_SESSION => {
            "stale session (replayed, wrong card or session ended)".into()
        }
        s if s == pw::sw::WRONG_CURRENCY => "wrong currency".into(),
        s if s == pw::sw::NOT_PERSONALISED => {
            "purse not personalised (or already personalised)".into()
        }
        Sw::SECURITY_STATUS_NOT_SATISFIED => "PIN required".into(),
        Sw::SM_OBJECTS_INCORRECT => {
            "MAC does not verify (wrong card, forged or altered message)".into()
        }
        Sw::AUTH_METHOD_BLOCKED => "PIN blocked".into(),
        Sw::CONDITIONS_NOT_SATISFIED => {
            "conditions not satisfied (no session, or wrong state)".into()
        }
        Sw::FILE_NOT_FOUND => "purse applet not found on this card".into(),
        Sw::RECORD_NOT_FOUND => "no such log record".into(),
        s if s.0 & 0xFFF0 == 0x63C0 => format!("wrong PIN, {} tries left", s.0 & 0x0F),
        other => other.description().into(),
    }
}

/// Meaning of a status word answered by the SAM applet.
pub fn sam_sw_meaning(sw: Sw) -> String {
    match sw {
        s if s == sw_::sw::CEILING_EXCEEDED => "ceiling exceeded".into(),
        s if s == sw_::sw::KEY_NOT_HELD => "SAM does not hold the key for this (wrong role)".into(),
        s if s == sw_::sw::JOURNAL_FULL => "SAM journal full (settle it first)".into(),
        s if s == sw_::sw::NO_SUCH_TXN => "no such pending transaction".into(),
        s if s == sw_::sw::CARD_PROOF_INVALID => "card proof does not verify".into(),
        s if s == sw_::sw::ALREADY_PERSONALISED => "purse ID already personalised".into(),
        s if s == sw_::sw::CHIP_NOT_ATTESTED => {
            "chip not attested (certificate not from the trusted manufacturer CA, wrong chip kind or outside its validity)".into()
        }
        s if s == sw_::sw::SUBJECT_MISMATCH => {
            "the request's purse / SAM ID is not the certified one".into()
        }
        s if s == sw_::sw::ATTESTATION_INVALID => {
            "the request is not signed by the certified chip".into()
        }
        s if s == sw_::sw::TIME_OUT_OF_RANGE => {
            "terminal time more than 7 days ahead of the SAM's latest accepted time".into()
        }
        s if s == sw_::sw::ALREADY_SETTLED => {
            "journal batch already settled (replayed or stale batch)".into()
        }
        s if s == sw_::sw::NO_SESSION => {
            "no purchase session, or no resolve session for this transaction".into()
        }
        Sw::SECURITY_STATUS_NOT_SATISFIED => "SAM locked (unlock PIN not verified)".into(),
        Sw::AUTH_METHOD_BLOCKED => "SAM PIN blocked".into(),
        Sw::FILE_NOT_FOUND => "SAM applet not found on this card".into(),
        s if s.0 & 0xFFF0 == 0x63C0 => format!("wrong SAM PIN, {} tries left", s.0 & 0x0F),
        other => other.description().into(),
    }
}

fn exchange<T: Transport + ?Sized>(
    t: &mut T,
    who: Who,
    command: &'static str,
    cmd: &Command,
) -> Result<Vec<u8>, ClientError> {
    let r = t.transmit(cmd)?;
    if r.sw == Sw::OK {
        Ok(r.data)
    } else {
        let meaning = match who {
            Who::Purse => purse_sw_meaning(r.sw),
            Who::Sam => sam_sw_meaning(r.sw),
        };
        Err(ClientError::Card {
            command,
            sw: r.sw,
            meaning,
        })
    }
}

fn select_cmd(aid: &[u8]) -> Command {
    Command::new(0x00, 0xA4, 0x04, 0x00)
        .with_data(aid.to_vec())
        .with_le(LE_ALL)
}

fn verify_cmd(pin: &[u8]) -> Command {
    Command::new(0x00, INS_VERIFY, 0x00, VERIFY_P2).with_data(pin.to_vec())
}

// ------------------------------------------------------------------------ purse

/// Client of the purse applet (`tessera_purse::wire`).
pub struct PurseClient<'a, T: Transport + ?Sized> {
    t: &'a mut T,
}

impl<'a, T: Transport + ?Sized> PurseClient<'a, T> {
    pub fn new(t: &'a mut T) -> Self {
        PurseClient { t }
    }

    /// The transport underneath.
    pub fn transport(&mut self) -> &mut T {
        self.t
    }

    fn run(&mut self, command: &'static str, cmd: &Command) -> Result<Vec<u8>, ClientError> {
        exchange(self.t, Who::Purse, command, cmd)
    }

    fn cmd(ins: u8, p1: u8) -> Command {
        Command::new(pw::CLA, ins, p1, 0x00)
    }

    /// SELECT the purse by AID.
    pub fn select(&mut self) -> Result<(), ClientError> {
        self.run("SELECT PURSE", &select_cmd(&pw::PURSE_AID))
            .map(|_| ())
    }

    /// VERIFY the cardholder PIN (valid until reset or deselect).
    pub fn verify_pin(&mut self, pin: &[u8]) -> Result<(), ClientError> {
        self.run("VERIFY PIN", &verify_cmd(pin)).map(|_| ())
    }

    pub fn read_purse_data(&mut self) -> Result<PurseData, ClientError> {
        let d = self.run(
            "READ PURSE DATA",
            &Self::cmd(pw::ins::READ_PURSE_DATA, 0).with_le(LE_ALL),
        )?;
        Ok(PurseData::decode(&d)?)
    }

    pub fn balance(&mut self) -> Result<Balance, ClientError> {
        let d = self.run(
            "GET BALANCE",
            &Self::cmd(pw::ins::GET_BALANCE, 0).with_le(LE_ALL),
        )?;
        Ok(Balance::decode(&d)?)
    }

    /// One log record, `index` counted from the newest (0).
    pub fn read_log(&mut self, index: u8) -> Result<LogRecord, ClientError> {
        let d = self.run(
            "READ LOG",
            &Self::cmd(pw::ins::READ_LOG, index).with_le(LE_ALL),
        )?;
        Ok(LogRecord::decode(&d)?)
    }

    /// Every log record held, newest first.
    pub fn read_all_logs(&mut self) -> Result<Vec<LogRecord>, ClientError> {
        let mut out = Vec::new();
        for i in 0..=u8::MAX {
            match self.read_log(i) {
                Ok(r) => out.push(r),
                Err(ClientError::Card { sw, .. }) if sw == Sw::RECORD_NOT_FOUND => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// GET ATTESTATION KEY: DER SubjectPublicKeyInfo of the purse's attestation key (the
    /// factory certifies it with the manufacturer CA).
    pub fn attestation_key(&mut self) -> Result<Vec<u8>, ClientError> {
        self.run(
            "GET ATTESTATION KEY",
            &Self::cmd(pw::ins::GET_ATTESTATION_KEY, 0).with_le(LE_ALL),
        )
    }

    /// INIT PERSO: the purse's key transport request (OAEP ciphertext) signed by its
    /// attestation key.
    pub fn init_perso(&mut self) -> Result<AttestedKeyRequest, ClientError> {
        let d = self.run(
            "INIT PERSO",
            &Self::cmd(pw::ins::INIT_PERSO, 0).with_le(LE_ALL),
        )?;
        Ok(AttestedKeyRequest::decode(&d)?)
    }

    /// PUT KEYS: the key blob the issuer SAM made for this purse.
    pub fn put_keys(&mut self, blob: &KeyBlob) -> Result<(), ClientError> {
        self.run(
            "PUT KEYS",
            &Self::cmd(pw::ins::PUT_KEYS, 0).with_data(blob.encode()),
        )
        .map(|_| ())
    }

    pub fn init_load(&mut self) -> Result<InitLoadResponse, ClientError> {
        let d = self.run(
            "INIT LOAD",
            &Self::cmd(pw::ins::INIT_LOAD, 0).with_le(LE_ALL),
        )?;
        Ok(InitLoadResponse::decode(&d)?)
    }

    pub fn load(&mut self, m: &Load) -> Result<ValueReceipt, ClientError> {
        let d = self.run(
            "LOAD",
            &Self::cmd(pw::ins::LOAD, 0)
                .with_data(m.encode())
                .with_le(LE_ALL),
        )?;
        Ok(ValueReceipt::decode(&d)?)
    }

    pub fn init_purchase(&mut self, m: &InitPurchase) -> Result<InitPurchaseResponse, ClientError> {
        let d = self.run(
            "INIT PURCHASE",
            &Self::cmd(pw::ins::INIT_PURCHASE, 0)
                .with_data(m.encode())
                .with_le(LE_ALL),
        )?;
        Ok(InitPurchaseResponse::decode(&d)?)
    }

    pub fn purchase(&mut self, m: &Purchase) -> Result<ValueReceipt, ClientError> {
        let d = self.run(
            "PURCHASE",
            &Self::cmd(pw::ins::PURCHASE, 0)
                .with_data(m.encode())
                .with_le(LE_ALL),
        )?;
        Ok(ValueReceipt::decode(&d)?)
    }

    /// GET TRANSACTION STATUS for (sam_id, sam_txn); `key_usage` is
    /// `tessera_purse::wire::usage::LOAD` or `DEBIT`.
    pub fn txn_status(
        &mut self,
        key_usage: u8,
        q: &TxnStatusQuery,
    ) -> Result<TxnStatus, ClientError> {
        let d = self.run(
            "GET TRANSACTION STATUS",
            &Self::cmd(pw::ins::GET_TXN_STATUS, key_usage)
                .with_data(q.encode())
                .with_le(LE_ALL),
        )?;
        Ok(TxnStatus::decode(&d)?)
    }
}

// ------------------------------------------------------------------------ SAM

/// Client of the SAM applet (`tessera_sam::wire`).
pub struct SamClient<'a, T: Transport + ?Sized> {
    t: &'a mut T,
}

impl<'a, T: Transport + ?Sized> SamClient<'a, T> {
    pub fn new(t: &'a mut T) -> Self {
        SamClient { t }
    }

    /// The transport underneath.
    pub fn transport(&mut self) -> &mut T {
        self.t
    }

    fn run(&mut self, command: &'static str, cmd: &Command) -> Result<Vec<u8>, ClientError> {
        exchange(self.t, Who::Sam, command, cmd)
    }

    fn cmd(ins: u8, p1: u8) -> Command {
        Command::new(sw_::CLA, ins, p1, 0x00)
    }

    /// SELECT the SAM applet by AID.
    pub fn select(&mut self) -> Result<(), ClientError> {
        self.run("SELECT SAM", &select_cmd(&sw_::SAM_AID))
            .map(|_| ())
    }

    /// VERIFY the unlock PIN (unlocked until reset or deselect).
    pub fn unlock(&mut self, pin: &[u8]) -> Result<(), ClientError> {
        self.run("VERIFY SAM PIN", &verify_cmd(pin)).map(|_| ())
    }

    pub fn sam_data(&mut self) -> Result<SamData, ClientError> {
        let d = self.run(
            "GET SAM DATA",
            &Self::cmd(sw_::ins::GET_SAM_DATA, 0).with_le(LE_ALL),
        )?;
        Ok(SamData::decode(&d)?)
    }

    /// DER SubjectPublicKeyInfo of the issuer SAM's RSA personalisation key.
    pub fn perso_public_key(&mut self) -> Result<Vec<u8>, ClientError> {
        self.run(
            "GET PERSO PUBLIC KEY",
            &Self::cmd(sw_::ins::GET_PERSO_PUBLIC_KEY, 0).with_le(LE_ALL),
        )
    }

    /// GET ATTESTATION KEY: DER SubjectPublicKeyInfo of the SAM's attestation key (no
    /// unlock needed; the factory certifies it with the manufacturer CA).
    pub fn attestation_key(&mut self) -> Result<Vec<u8>, ClientError> {
        self.run(
            "GET ATTESTATION KEY",
            &Self::cmd(sw_::ins::GET_ATTESTATION_KEY, 0).with_le(LE_ALL),
        )
    }

    /// INIT KEY IMPORT (new SAM): its key transport request (OAEP ciphertext) signed by
    /// its attestation key.
    pub fn init_key_import(&mut self) -> Result<AttestedKeyRequest, ClientError> {
        let d = self.run(
            "INIT KEY IMPORT",
            &Self::cmd(sw_::ins::INIT_KEY_IMPORT, 0).with_le(LE_ALL),
        )?;
        Ok(AttestedKeyRequest::decode(&d)?)
    }

    /// IMPORT KEYS (new SAM).
    pub fn import_keys(&mut self, blob: &KeyBlob) -> Result<(), ClientError> {
        self.run(
            "IMPORT KEYS",
            &Self::cmd(sw_::ins::IMPORT_KEYS, 0).with_data(blob.encode()),
        )
        .map(|_| ())
    }

    /// EXPORT SAM KEYS (issuer): the keys `role` needs, wrapped for the new SAM whose
    /// certificate and INIT KEY IMPORT answer `request` carries.
    pub fn export_sam_keys(
        &mut self,
        role: u8,
        request: &PersonaliseRequest,
    ) -> Result<KeyBlob, ClientError> {
        let mut data = vec![role];
        data.extend_from_slice(&request.encode());
        let d = self.run(
            "EXPORT SAM KEYS",
            &Self::cmd(sw_::ins::EXPORT_SAM_KEYS, 0)
                .with_data(data)
                .with_le(LE_ALL),
        )?;
        Ok(KeyBlob::decode(&d)?)
    }

    /// PERSONALISE PURSE (issuer): the purse's keys wrapped for the purse whose
    /// certificate and INIT PERSO answer `request` carries.
    pub fn personalise_purse(
        &mut self,
        request: &PersonaliseRequest,
    ) -> Result<KeyBlob, ClientError> {
        let d = self.run(
            "PERSONALISE PURSE",
            &Self::cmd(sw_::ins::PERSONALISE_PURSE, 0)
                .with_data(request.encode())
                .with_le(LE_ALL),
        )?;
        Ok(KeyBlob::decode(&d)?)
    }

    pub fn authorize_load(&mut self, m: &AuthorizeLoad) -> Result<LoadAuthorization, ClientError> {
        let d = self.run(
            "AUTHORIZE LOAD",
            &Self::cmd(sw_::ins::AUTHORIZE_LOAD, 0)
                .with_data(m.encode())
                .with_le(LE_ALL),
        )?;
        Ok(LoadAuthorization::decode(&d)?)
    }

    pub fn confirm_load(&mut self, m: &Confirm) -> Result<(), ClientError> {
        self.run(
            "CONFIRM LOAD",
            &Self::cmd(sw_::ins::CONFIRM_LOAD, 0).with_data(m.encode()),
        )
        .map(|_| ())
    }

    pub fn begin_purchase(&mut self) -> Result<BeginPurchase, ClientError> {
        let d = self.run(
            "BEGIN PURCHASE",
            &Self::cmd(sw_::ins::BEGIN_PURCHASE, 0).with_le(LE_ALL),
        )?;
        Ok(BeginPurchase::decode(&d)?)
    }

    pub fn authorize_purchase(
        &mut self,
        m: &AuthorizePurchase,
    ) -> Result<PurchaseAuthorization, ClientError> {
        let d = self.run(
            "AUTHORIZE PURCHASE",
            &Self::cmd(sw_::ins::AUTHORIZE_PURCHASE, 0)
                .with_data(m.encode())
                .with_le(LE_ALL),
        )?;
        Ok(PurchaseAuthorization::decode(&d)?)
    }

    pub fn confirm_purchase(&mut self, m: &Confirm) -> Result<(), ClientError> {
        self.run(
            "CONFIRM PURCHASE",
            &Self::cmd(sw_::ins::CONFIRM_PURCHASE, 0).with_data(m.encode()),
        )
        .map(|_| ())
    }

    /// BEGIN RESOLVE: a fresh challenge for the purse's GET TRANSACTION STATUS (valid for
    /// the entries the SAM holds now, until the next BEGIN RESOLVE, reset or deselect).
    pub fn begin_resolve(&mut self) -> Result<ResolveChallenge, ClientError> {
        let d = self.run(
            "BEGIN RESOLVE",
            &Self::cmd(sw_::ins::BEGIN_RESOLVE, 0).with_le(LE_ALL),
        )?;
        Ok(ResolveChallenge::decode(&d)?)
    }

    /// RESOLVE a pending authorisation with the purse's transaction status (made for the
    /// challenge of the last [`SamClient::begin_resolve`]). Returns the
    /// entry's status afterwards (`tessera_sam::wire::status::CONFIRMED` or `VOID`).
    pub fn resolve(&mut self, m: &Resolve) -> Result<u8, ClientError> {
        let d = self.run(
            "RESOLVE",
            &Self::cmd(sw_::ins::RESOLVE, 0)
                .with_data(m.encode())
                .with_le(LE_ALL),
        )?;
        match d.as_slice() {
            [s] => Ok(*s),
            _ => Err(ClientError::Wire(WireError::Length {
                msg: "RESOLVE response",
                expected: 1,
                got: d.len(),
            })),
        }
    }

    /// EXPORT JOURNAL: at most `max` entries (0: the SAM's default of 64).
    pub fn export_journal(&mut self, max: u8) -> Result<JournalBatch, ClientError> {
        let d = self.run(
            "EXPORT JOURNAL",
            &Self::cmd(sw_::ins::EXPORT_JOURNAL, max).with_le(LE_ALL),
        )?;
        Ok(JournalBatch::decode(&d)?)
    }

    /// EXPORT JOURNAL P2 = 01 (peek): at most `max` entries as they are now (0: 64), MAC
    /// all zero; records nothing (the batch awaiting settlement is unchanged).
    pub fn peek_journal(&mut self, max: u8) -> Result<JournalBatch, ClientError> {
        let d = self.run(
            "EXPORT JOURNAL (peek)",
            &Command::new(sw_::CLA, sw_::ins::EXPORT_JOURNAL, max, 0x01).with_le(LE_ALL),
        )?;
        Ok(JournalBatch::decode(&d)?)
    }

    /// ACK JOURNAL with the issuer's acknowledgement of the batch this SAM exported last:
    /// drops the entries that batch showed CONFIRMED or VOID. An ack of an earlier batch
    /// answers 6985 and drops nothing.
    pub fn ack_journal(&mut self, ack: &JournalAck) -> Result<(), ClientError> {
        self.run(
            "ACK JOURNAL",
            &Self::cmd(sw_::ins::ACK_JOURNAL, 0).with_data(ack.encode()),
        )
        .map(|_| ())
    }

    /// VERIFY JOURNAL (issuer): checks another SAM's batch, answers its acknowledgement.
    pub fn verify_journal(&mut self, batch: &JournalBatch) -> Result<JournalAck, ClientError> {
        let d = self.run(
            "VERIFY JOURNAL",
            &Self::cmd(sw_::ins::VERIFY_JOURNAL, 0)
                .with_data(batch.encode())
                .with_le(LE_ALL),
        )?;
        Ok(JournalAck::decode(&d)?)
    }
}
