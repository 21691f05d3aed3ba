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
    self as sw_, BeginPurchase, Confirm, JournalAck, JournalBatch, JournalEntry,
    PersonaliseRequest, Resolve, ResolveChallenge, SamData, WriteOff,
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
    /// The link to the card failed. [`TransportError::NoResponse`] and
    /// [`TransportError::Lost`]: the command's outcome
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
        matches!(
            self,
            ClientError::Transport(TransportError::NoResponse | TransportError::Lost(_))
        )
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
        s if s == sw_::sw::SAM_ID_ALREADY_KEYED => {
            "this SAM ID already received keys (a different key request)".into()
        }
        s if s == sw_::sw::NOT_OPEN => {
            "not open at the issuer SAM (no verified batch showed it pending, or it is settled)"
                .into()
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

/// How an answer's data is decoded.
type Decode<R> = fn(&[u8]) -> Result<R, WireError>;

/// The link to one applet: its transport and which applet it is (class byte and status
/// word table). Both clients send every command through it.
struct Link<'a, T: Transport + ?Sized> {
    t: &'a mut T,
    who: Who,
}

impl<T: Transport + ?Sized> Link<'_, T> {
    fn run(&mut self, command: &'static str, cmd: &Command) -> Result<Vec<u8>, ClientError> {
        exchange(self.t, self.who, command, cmd)
    }

    /// The applet's class byte with `ins` and `p1`, P2 = 00.
    fn cmd(&self, ins: u8, p1: u8) -> Command {
        let cla = match self.who {
            Who::Purse => pw::CLA,
            Who::Sam => sw_::CLA,
        };
        Command::new(cla, ins, p1, 0x00)
    }

    /// Send `cmd` asking for all the answer (Le 00) and decode the answer.
    fn fetch<R>(
        &mut self,
        command: &'static str,
        cmd: Command,
        decode: Decode<R>,
    ) -> Result<R, ClientError> {
        let d = self.run(command, &cmd.with_le(LE_ALL))?;
        Ok(decode(&d)?)
    }

    /// A command of the applet that answers data: `ins`, `p1`, the `data` if any, Le 00;
    /// the answer decoded with `decode`.
    fn call<R>(
        &mut self,
        command: &'static str,
        ins: u8,
        p1: u8,
        data: Option<Vec<u8>>,
        decode: Decode<R>,
    ) -> Result<R, ClientError> {
        let mut cmd = self.cmd(ins, p1);
        if let Some(data) = data {
            cmd = cmd.with_data(data);
        }
        self.fetch(command, cmd, decode)
    }

    /// A command of the applet that carries `data` and answers none (no Le).
    fn send(&mut self, command: &'static str, ins: u8, data: Vec<u8>) -> Result<(), ClientError> {
        let cmd = self.cmd(ins, 0).with_data(data);
        self.run(command, &cmd).map(|_| ())
    }
}

/// The answer's data as it is.
fn raw(d: &[u8]) -> Result<Vec<u8>, WireError> {
    Ok(d.to_vec())
}

// ------------------------------------------------------------------------ purse

/// Client of the purse applet (`tessera_purse::wire`).
pub struct PurseClient<'a, T: Transport + ?Sized> {
    link: Link<'a, T>,
}

impl<'a, T: Transport + ?Sized> PurseClient<'a, T> {
    pub fn new(t: &'a mut T) -> Self {
        PurseClient {
            link: Link { t, who: Who::Purse },
        }
    }

    /// The transport underneath.
    pub fn transport(&mut self) -> &mut T {
        self.link.t
    }

    /// SELECT the purse by AID.
    pub fn select(&mut self) -> Result<(), ClientError> {
        self.link
            .run("SELECT PURSE", &select_cmd(&pw::PURSE_AID))
            .map(|_| ())
    }

    /// VERIFY the cardholder PIN (valid until reset or deselect).
    pub fn verify_pin(&mut self, pin: &[u8]) -> Result<(), ClientError> {
        self.link.run("VERIFY PIN", &verify_cmd(pin)).map(|_| ())
    }

    pub fn read_purse_data(&mut self) -> Result<PurseData, ClientError> {
        let ins = pw::ins::READ_PURSE_DATA;
        self.link
            .call("READ PURSE DATA", ins, 0, None, PurseData::decode)
    }

    pub fn balance(&mut self) -> Result<Balance, ClientError> {
        let ins = pw::ins::GET_BALANCE;
        self.link.call("GET BALANCE", ins, 0, None, Balance::decode)
    }

    /// One log record, `index` counted from the newest (0).
    pub fn read_log(&mut self, index: u8) -> Result<LogRecord, ClientError> {
        let ins = pw::ins::READ_LOG;
        self.link
            .call("READ LOG", ins, index, None, LogRecord::decode)
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
        let ins = pw::ins::GET_ATTESTATION_KEY;
        self.link.call("GET ATTESTATION KEY", ins, 0, None, raw)
    }

    /// INIT PERSO: the purse's key transport request (OAEP ciphertext) signed by its
    /// attestation key.
    pub fn init_perso(&mut self) -> Result<AttestedKeyRequest, ClientError> {
        let ins = pw::ins::INIT_PERSO;
        self.link
            .call("INIT PERSO", ins, 0, None, AttestedKeyRequest::decode)
    }

    /// PUT KEYS: the key blob the issuer SAM made for this purse.
    pub fn put_keys(&mut self, blob: &KeyBlob) -> Result<(), ClientError> {
        self.link.send("PUT KEYS", pw::ins::PUT_KEYS, blob.encode())
    }

    pub fn init_load(&mut self) -> Result<InitLoadResponse, ClientError> {
        let ins = pw::ins::INIT_LOAD;
        self.link
            .call("INIT LOAD", ins, 0, None, InitLoadResponse::decode)
    }

    pub fn load(&mut self, m: &Load) -> Result<ValueReceipt, ClientError> {
        let data = Some(m.encode());
        self.link
            .call("LOAD", pw::ins::LOAD, 0, data, ValueReceipt::decode)
    }

    pub fn init_purchase(&mut self, m: &InitPurchase) -> Result<InitPurchaseResponse, ClientError> {
        let (ins, data) = (pw::ins::INIT_PURCHASE, Some(m.encode()));
        self.link
            .call("INIT PURCHASE", ins, 0, data, InitPurchaseResponse::decode)
    }

    pub fn purchase(&mut self, m: &Purchase) -> Result<ValueReceipt, ClientError> {
        let (ins, data) = (pw::ins::PURCHASE, Some(m.encode()));
        self.link
            .call("PURCHASE", ins, 0, data, ValueReceipt::decode)
    }

    /// GET TRANSACTION STATUS for (sam_id, sam_txn); `key_usage` is
    /// `tessera_purse::wire::usage::LOAD` or `DEBIT`.
    pub fn txn_status(
        &mut self,
        key_usage: u8,
        q: &TxnStatusQuery,
    ) -> Result<TxnStatus, ClientError> {
        let (ins, data) = (pw::ins::GET_TXN_STATUS, Some(q.encode()));
        self.link.call(
            "GET TRANSACTION STATUS",
            ins,
            key_usage,
            data,
            TxnStatus::decode,
        )
    }
}

// ------------------------------------------------------------------------ SAM

/// Client of the SAM applet (`tessera_sam::wire`).
pub struct SamClient<'a, T: Transport + ?Sized> {
    link: Link<'a, T>,
}

impl<'a, T: Transport + ?Sized> SamClient<'a, T> {
    pub fn new(t: &'a mut T) -> Self {
        SamClient {
            link: Link { t, who: Who::Sam },
        }
    }

    /// The transport underneath.
    pub fn transport(&mut self) -> &mut T {
        self.link.t
    }

    /// SELECT the SAM applet by AID.
    pub fn select(&mut self) -> Result<(), ClientError> {
        self.link
            .run("SELECT SAM", &select_cmd(&sw_::SAM_AID))
            .map(|_| ())
    }

    /// VERIFY the unlock PIN (unlocked until reset or deselect).
    pub fn unlock(&mut self, pin: &[u8]) -> Result<(), ClientError> {
        self.link
            .run("VERIFY SAM PIN", &verify_cmd(pin))
            .map(|_| ())
    }

    pub fn sam_data(&mut self) -> Result<SamData, ClientError> {
        let ins = sw_::ins::GET_SAM_DATA;
        self.link
            .call("GET SAM DATA", ins, 0, None, SamData::decode)
    }

    /// DER SubjectPublicKeyInfo of the issuer SAM's RSA personalisation key.
    pub fn perso_public_key(&mut self) -> Result<Vec<u8>, ClientError> {
        let ins = sw_::ins::GET_PERSO_PUBLIC_KEY;
        self.link.call("GET PERSO PUBLIC KEY", ins, 0, None, raw)
    }

    /// GET ATTESTATION KEY: DER SubjectPublicKeyInfo of the SAM's attestation key (no
    /// unlock needed; the factory certifies it with the manufacturer CA).
    pub fn attestation_key(&mut self) -> Result<Vec<u8>, ClientError> {
        let ins = sw_::ins::GET_ATTESTATION_KEY;
        self.link.call("GET ATTESTATION KEY", ins, 0, None, raw)
    }

    /// INIT KEY IMPORT (new SAM): its key transport request (OAEP ciphertext) signed by
    /// its attestation key.
    pub fn init_key_import(&mut self) -> Result<AttestedKeyRequest, ClientError> {
        let ins = sw_::ins::INIT_KEY_IMPORT;
        self.link
            .call("INIT KEY IMPORT", ins, 0, None, AttestedKeyRequest::decode)
    }

    /// IMPORT KEYS (new SAM).
    pub fn import_keys(&mut self, blob: &KeyBlob) -> Result<(), ClientError> {
        self.link
            .send("IMPORT KEYS", sw_::ins::IMPORT_KEYS, blob.encode())
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
        let ins = sw_::ins::EXPORT_SAM_KEYS;
        self.link
            .call("EXPORT SAM KEYS", ins, 0, Some(data), KeyBlob::decode)
    }

    /// PERSONALISE PURSE (issuer): the purse's keys wrapped for the purse whose
    /// certificate and INIT PERSO answer `request` carries.
    pub fn personalise_purse(
        &mut self,
        request: &PersonaliseRequest,
    ) -> Result<KeyBlob, ClientError> {
        let (ins, data) = (sw_::ins::PERSONALISE_PURSE, Some(request.encode()));
        self.link
            .call("PERSONALISE PURSE", ins, 0, data, KeyBlob::decode)
    }

    pub fn authorize_load(&mut self, m: &AuthorizeLoad) -> Result<LoadAuthorization, ClientError> {
        let (ins, data) = (sw_::ins::AUTHORIZE_LOAD, Some(m.encode()));
        self.link
            .call("AUTHORIZE LOAD", ins, 0, data, LoadAuthorization::decode)
    }

    pub fn confirm_load(&mut self, m: &Confirm) -> Result<(), ClientError> {
        self.link
            .send("CONFIRM LOAD", sw_::ins::CONFIRM_LOAD, m.encode())
    }

    pub fn begin_purchase(&mut self) -> Result<BeginPurchase, ClientError> {
        let ins = sw_::ins::BEGIN_PURCHASE;
        self.link
            .call("BEGIN PURCHASE", ins, 0, None, BeginPurchase::decode)
    }

    pub fn authorize_purchase(
        &mut self,
        m: &AuthorizePurchase,
    ) -> Result<PurchaseAuthorization, ClientError> {
        let (ins, data) = (sw_::ins::AUTHORIZE_PURCHASE, Some(m.encode()));
        let decode = PurchaseAuthorization::decode;
        self.link.call("AUTHORIZE PURCHASE", ins, 0, data, decode)
    }

    pub fn confirm_purchase(&mut self, m: &Confirm) -> Result<(), ClientError> {
        self.link
            .send("CONFIRM PURCHASE", sw_::ins::CONFIRM_PURCHASE, m.encode())
    }

    /// BEGIN RESOLVE: a fresh challenge for the purse's GET TRANSACTION STATUS (valid for
    /// the entries the SAM holds now, until the next BEGIN RESOLVE, reset or deselect).
    pub fn begin_resolve(&mut self) -> Result<ResolveChallenge, ClientError> {
        let ins = sw_::ins::BEGIN_RESOLVE;
        self.link
            .call("BEGIN RESOLVE", ins, 0, None, ResolveChallenge::decode)
    }

    /// RESOLVE a pending authorisation with the purse's transaction status (made for the
    /// challenge of the last [`SamClient::begin_resolve`]). Returns the
    /// entry's status afterwards (`tessera_sam::wire::status::CONFIRMED`, `VOID`, or
    /// `PENDING` when the purse's log no longer reaches the entry: it is then marked
    /// unresolvable, for the issuer's write-off; a WRITTEN_OFF entry is refused with 6985
    /// and stays as it is).
    pub fn resolve(&mut self, m: &Resolve) -> Result<u8, ClientError> {
        let (ins, data) = (sw_::ins::RESOLVE, Some(m.encode()));
        self.link.call("RESOLVE", ins, 0, data, |d| match d {
            [s] => Ok(*s),
            _ => Err(WireError::Length {
                msg: "RESOLVE response",
                expected: 1,
                got: d.len(),
            }),
        })
    }

    /// EXPORT JOURNAL: at most `max` entries (0: the SAM's default of 64).
    pub fn export_journal(&mut self, max: u8) -> Result<JournalBatch, ClientError> {
        let ins = sw_::ins::EXPORT_JOURNAL;
        self.link
            .call("EXPORT JOURNAL", ins, max, None, JournalBatch::decode)
    }

    /// EXPORT JOURNAL P2 = 01 (peek): at most `max` entries as they are now (0: 64), MAC
    /// all zero; records nothing (the batch awaiting settlement is unchanged).
    pub fn peek_journal(&mut self, max: u8) -> Result<JournalBatch, ClientError> {
        let cmd = Command::new(sw_::CLA, sw_::ins::EXPORT_JOURNAL, max, 0x01);
        self.link
            .fetch("EXPORT JOURNAL (peek)", cmd, JournalBatch::decode)
    }

    /// EXPORT JOURNAL P2 = 01 with data `from` (u32): at most `max` entries held with a
    /// sequence number of at least `from`, as they are now; records nothing.
    pub fn peek_journal_from(&mut self, max: u8, from: u32) -> Result<JournalBatch, ClientError> {
        let cmd = Command::new(sw_::CLA, sw_::ins::EXPORT_JOURNAL, max, 0x01)
            .with_data(from.to_be_bytes().to_vec());
        self.link
            .fetch("EXPORT JOURNAL (peek)", cmd, JournalBatch::decode)
    }

    /// ACK JOURNAL with the issuer's acknowledgement of the batch this SAM exported last:
    /// drops the entries that batch showed in a final state. An ack of an earlier batch
    /// answers 6985 and drops nothing.
    pub fn ack_journal(&mut self, ack: &JournalAck) -> Result<(), ClientError> {
        self.link
            .send("ACK JOURNAL", sw_::ins::ACK_JOURNAL, ack.encode())
    }

    /// VERIFY JOURNAL (issuer): checks another SAM's batch, answers its acknowledgement.
    pub fn verify_journal(&mut self, batch: &JournalBatch) -> Result<JournalAck, ClientError> {
        let (ins, data) = (sw_::ins::VERIFY_JOURNAL, Some(batch.encode()));
        self.link
            .call("VERIFY JOURNAL", ins, 0, data, JournalAck::decode)
    }

    /// GET SETTLEMENT STATEMENT (issuer): what it has settled for `sam_id`, with `nonce`,
    /// signed by its attestation key. The signature is not checked here (see
    /// [`crate::flows::settlement_statement`]).
    pub fn settlement_statement(
        &mut self,
        sam_id: &[u8; 4],
        nonce: &[u8; 16],
    ) -> Result<sw_::SettlementStatement, ClientError> {
        let mut data = sam_id.to_vec();
        data.extend_from_slice(nonce);
        let ins = sw_::ins::GET_SETTLEMENT_STATEMENT;
        self.link.call(
            "GET SETTLEMENT STATEMENT",
            ins,
            0,
            Some(data),
            sw_::SettlementStatement::decode,
        )
    }

    /// WRITE OFF (issuer): the issuer's authorisation for SAM `sam_id` to write off its
    /// PENDING `entry` (as a verified batch showed it). Refused with 692D unless the
    /// issuer SAM holds that sequence number open for that SAM.
    pub fn write_off(
        &mut self,
        sam_id: &[u8; 4],
        entry: &JournalEntry,
    ) -> Result<WriteOff, ClientError> {
        let mut data = sam_id.to_vec();
        data.extend_from_slice(&entry.encode());
        let ins = sw_::ins::WRITE_OFF;
        self.link
            .call("WRITE OFF", ins, 0, Some(data), WriteOff::decode)
    }

    /// APPLY WRITE OFF (the SAM holding the entry): turns the PENDING entry WRITTEN_OFF;
    /// the same token again answers 9000 and changes nothing.
    pub fn apply_write_off(&mut self, w: &WriteOff) -> Result<(), ClientError> {
        self.link
            .send("APPLY WRITE OFF", sw_::ins::APPLY_WRITE_OFF, w.encode())
    }
}
