//! Value flows over the purse and SAM clients: personalisation, load, pay, settlement, and
//! the recovery step run when an answer is lost (see `docs/value-protocol.md` and
//! `docs/flows.md`).
//!
//! Conventions:
//! * Purse transports are driven from scratch: every flow SELECTs the purse itself.
//! * SAM transports are passed *open*: selected and unlocked with the SAM's PIN (see
//!   [`open_sam`]). Flows never re-select a SAM (that would end its unlocked state). When a
//!   SAM's answer is lost, the flow can reopen it only when [`FlowOptions::sam_pin`] is set.
//! * Every flow either completes, or fails with a [`FlowError`] naming the reason. A flow
//!   that fails after the SAM authorised a transaction voids that authorisation (GET
//!   TRANSACTION STATUS at the purse, RESOLVE at the SAM) before it returns, so no PENDING
//!   entry is left behind when the host stays alive.

pub mod kit;
pub mod reconcile;

use crate::clients::{ClientError, PurseClient, SamClient};
use crate::transport::{Transport, TransportError};
use serde::Serialize;
use tessera_apdu::Sw;
use tessera_purse::wire::{
    self as pw, AuthorizeLoad, AuthorizePurchase, Load, LogRecord, Purchase, PurseData, PurseId,
    TxnStatus, TxnStatusQuery, ValueReceipt,
};
use tessera_sam::wire::{
    self as sw_, Confirm, JournalAck, JournalBatch, JournalEntry, Resolve, SamData,
};

/// How many times a lost answer is retried (recovery query, CONFIRM, RESOLVE).
const RETRIES: usize = 3;

/// A load request (amount in minor units of the purse currency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadRequest {
    pub amount: u32,
    /// Seconds since the Unix epoch, as the terminal sees it.
    pub terminal_time: u32,
}

/// A payment request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayRequest {
    pub amount: u32,
    pub terminal_id: [u8; 4],
    pub terminal_time: u32,
    /// Cardholder PIN, verified before the purchase when given.
    pub pin: Option<Vec<u8>>,
}

/// Options of the flows.
#[derive(Debug, Clone, Default)]
pub struct FlowOptions {
    /// PIN of the SAM, to reopen it (reset, select, unlock) when one of its answers was
    /// lost. Without it, a lost SAM answer ends the flow with an error.
    pub sam_pin: Option<Vec<u8>>,
}

/// Serialise byte arrays as upper-case hex.
fn hex_ser<S: serde::Serializer, T: AsRef<[u8]>>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode_upper(v.as_ref()))
}

/// What a completed load returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadReceipt {
    #[serde(serialize_with = "hex_ser")]
    pub purse_id: PurseId,
    pub currency: u16,
    pub amount: u32,
    pub balance_before: u32,
    pub balance_after: u32,
    /// The purse counter the load used.
    pub counter: u32,
    #[serde(serialize_with = "hex_ser")]
    pub sam_id: [u8; 4],
    pub sam_txn: u32,
    pub terminal_time: u32,
    /// The purse's load receipt MAC.
    #[serde(serialize_with = "hex_ser")]
    pub proof: [u8; 8],
    /// The LOAD answer was lost and the result came from the recovery step.
    pub recovered: bool,
    /// The SAM journal entry is CONFIRMED (false only when the SAM's answer was lost and
    /// could not be retried: the entry is still PENDING and resolvable).
    pub sam_confirmed: bool,
}

/// What a completed payment returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PayReceipt {
    #[serde(serialize_with = "hex_ser")]
    pub purse_id: PurseId,
    pub currency: u16,
    pub amount: u32,
    pub balance_before: u32,
    pub balance_after: u32,
    pub counter: u32,
    #[serde(serialize_with = "hex_ser")]
    pub terminal_id: [u8; 4],
    #[serde(serialize_with = "hex_ser")]
    pub sam_id: [u8; 4],
    pub sam_txn: u32,
    pub terminal_time: u32,
    /// The purse's debit proof MAC.
    #[serde(serialize_with = "hex_ser")]
    pub proof: [u8; 8],
    pub recovered: bool,
    pub sam_confirmed: bool,
}

/// Why a flow did not complete.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("amount must be greater than zero")]
    ZeroAmount,
    #[error("insufficient funds: balance {balance}, amount {amount}")]
    InsufficientFunds { balance: u32, amount: u32 },
    #[error("PIN required: the amount is over the purse's PIN threshold of {threshold}")]
    PinRequired { threshold: u32 },
    #[error("wrong PIN ({tries_left} tries left)")]
    WrongPin { tries_left: u8 },
    #[error("PIN blocked")]
    PinBlocked,
    #[error("over maximum balance: the load would take the purse over its maximum")]
    OverMaximum,
    #[error("SAM ceiling exceeded (per load or per day)")]
    CeilingExceeded,
    #[error("SAM journal full: settle it first")]
    JournalFull,
    /// 692A: the terminal time is too far ahead of the latest time the SAM accepted.
    #[error(
        "terminal time out of range: more than 7 days ahead of the SAM's latest accepted time (check the host clock)"
    )]
    TimeOutOfRange,
    /// 692B: the issuer SAM already settled everything the batch shows (a replayed or
    /// stale batch).
    #[error("journal batch already settled by the issuer SAM")]
    AlreadySettled,
    /// The settlement record of a verified batch could not be stored: the batch was not
    /// acknowledged, the SAM keeps its entries (run the settlement again).
    #[error("settlement record not stored ({0}); nothing acknowledged, the SAM keeps its entries")]
    RecordNotStored(String),
    #[error("purse transaction counter exhausted")]
    CounterExhausted,
    #[error("wrong currency")]
    WrongCurrency,
    #[error("purse not personalised (or already personalised)")]
    NotPersonalised,
    #[error(
        "purse ID or SAM ID already personalised by this issuer SAM (with a different key request)"
    )]
    AlreadyPersonalised,
    /// The issuer SAM refused the chip's attestation (6927, 6928, 6929): no keys issued.
    #[error("chip attestation refused by the issuer SAM: {0}")]
    NotAttested(String),
    #[error("SAM locked: unlock it with its PIN")]
    SamLocked,
    #[error("the SAM does not hold the key this needs (wrong SAM role)")]
    WrongSamRole,
    #[error("the card's cryptogram or proof does not verify at the SAM")]
    CardProofInvalid,
    #[error("the purse refused the message as stale (replayed, wrong card or session ended)")]
    StaleSession,
    #[error("the purse rejected the authorisation MAC (wrong card, forged or altered message)")]
    BadMac,
    /// The value did not move. `voided`: the SAM's pending authorisation was voided with
    /// the purse's MACed status.
    #[error("not applied: the purse did not apply the transaction{}", if *.voided { " (SAM authorisation voided)" } else { "" })]
    NotApplied { voided: bool },
    /// A step failed for another reason.
    #[error("{}", step_message(step, source))]
    Step {
        step: &'static str,
        #[source]
        source: ClientError,
    },
    /// The recovery step did not converge (the card or SAM kept failing).
    #[error("recovery did not converge: {0}")]
    Recovery(String),
    /// The issuer SAM's settlement statement does not describe the batch just verified
    /// (another SAM, or not our nonce): nothing acknowledged.
    #[error("the issuer SAM's settlement statement does not match: {0}; nothing acknowledged")]
    BadStatement(String),
    /// Write-off: the SAM's journal holds no PENDING entry with that sequence number.
    #[error("no PENDING journal entry with sequence number {0} in the SAM")]
    NoPendingEntry(u32),
    /// 692D: the issuer SAM holds the sequence number not open for that SAM (no verified
    /// batch showed it PENDING, or it is settled already): settle the SAM's journal first.
    #[error(
        "the issuer SAM has not seen this entry pending in a verified batch (settle the journal first), or already settled it"
    )]
    NotOpen,
    /// RESOLVE: the purse can no longer tell whether the transaction was applied (its log
    /// has moved past the entry's counter). The SAM keeps the entry PENDING, marked for
    /// the issuer's write-off.
    #[error(
        "the purse can no longer tell whether SAM transaction {0} was applied (its log has moved past it): the SAM keeps the entry PENDING, marked for the issuer's write-off"
    )]
    Unresolvable(u32),
    /// APPLY WRITE OFF refused (6985): RESOLVE has not found the entry unresolvable, so its
    /// purse may still answer for it.
    #[error(
        "SAM transaction {0} has not been found unresolvable: resolve it with its purse first (only an entry its purse can no longer answer for is written off)"
    )]
    ResolveFirst(u32),
    /// The card presented is not the purse the journal entry names.
    #[error("the card is purse {card}, the journal entry names purse {entry}")]
    WrongPurse { card: String, entry: String },
}

impl FlowError {
    /// A short machine-readable name of the reason ("insufficient_funds", ...).
    pub fn reason(&self) -> &'static str {
        match self {
            FlowError::ZeroAmount => "zero_amount",
            FlowError::InsufficientFunds { .. } => "insufficient_funds",
            FlowError::PinRequired { .. } => "pin_required",
            FlowError::WrongPin { .. } => "wrong_pin",
            FlowError::PinBlocked => "pin_blocked",
            FlowError::OverMaximum => "over_maximum",
            FlowError::CeilingExceeded => "ceiling_exceeded",
            FlowError::JournalFull => "journal_full",
            FlowError::TimeOutOfRange => "time_out_of_range",
            FlowError::AlreadySettled => "already_settled",
            FlowError::RecordNotStored(_) => "record_not_stored",
            FlowError::CounterExhausted => "counter_exhausted",
            FlowError::WrongCurrency => "wrong_currency",
            FlowError::NotPersonalised => "not_personalised",
            FlowError::AlreadyPersonalised => "already_personalised",
            FlowError::NotAttested(_) => "not_attested",
            FlowError::SamLocked => "sam_locked",
            FlowError::WrongSamRole => "wrong_sam_role",
            FlowError::CardProofInvalid => "card_proof_invalid",
            FlowError::StaleSession => "stale_session",
            FlowError::BadMac => "bad_mac",
            FlowError::NotApplied { .. } => "not_applied",
            FlowError::Step { .. } => "card_error",
            FlowError::Recovery(_) => "recovery_failed",
            FlowError::BadStatement(_) => "bad_statement",
            FlowError::NoPendingEntry(_) => "no_pending_entry",
            FlowError::NotOpen => "not_open",
            FlowError::Unresolvable(_) => "unresolvable",
            FlowError::ResolveFirst(_) => "resolve_first",
            FlowError::WrongPurse { .. } => "wrong_purse",
        }
    }

    fn is_no_response(&self) -> bool {
        matches!(self, FlowError::Step { source, .. } if source.is_no_response())
    }
}

/// Map a purse refusal to the flow reason it stands for.
fn purse_err(step: &'static str, e: ClientError) -> FlowError {
    let Some(sw) = e.sw() else {
        return FlowError::Step { step, source: e };
    };
    match sw {
        s if s == pw::sw::OVER_MAXIMUM => FlowError::OverMaximum,
        s if s == pw::sw::INSUFFICIENT_FUNDS => FlowError::InsufficientFunds {
            balance: 0,
            amount: 0,
        },
        s if s == pw::sw::COUNTER_EXHAUSTED => FlowError::CounterExhausted,
        s if s == pw::sw::STALE_SESSION => FlowError::StaleSession,
        s if s == pw::sw::WRONG_CURRENCY => FlowError::WrongCurrency,
        s if s == pw::sw::NOT_PERSONALISED => FlowError::NotPersonalised,
        Sw::AUTH_METHOD_BLOCKED => FlowError::PinBlocked,
        Sw::SM_OBJECTS_INCORRECT => FlowError::BadMac,
        s if s.0 & 0xFFF0 == 0x63C0 => FlowError::WrongPin {
            tries_left: (s.0 & 0x0F) as u8,
        },
        _ => FlowError::Step { step, source: e },
    }
}

/// "STEP: error", unless the error already starts with the step's name (a card refusal
/// names its command).
fn step_message(step: &str, source: &ClientError) -> String {
    let text = source.to_string();
    if text.starts_with(step) {
        text
    } else {
        format!("{step}: {text}")
    }
}

/// Map a SAM refusal to the flow reason it stands for.
fn sam_err(step: &'static str, e: ClientError) -> FlowError {
    let Some(sw) = e.sw() else {
        return FlowError::Step { step, source: e };
    };
    match sw {
        s if s == sw_::sw::CEILING_EXCEEDED => FlowError::CeilingExceeded,
        s if s == sw_::sw::KEY_NOT_HELD => FlowError::WrongSamRole,
        s if s == sw_::sw::JOURNAL_FULL => FlowError::JournalFull,
        s if s == sw_::sw::TIME_OUT_OF_RANGE => FlowError::TimeOutOfRange,
        s if s == sw_::sw::ALREADY_SETTLED => FlowError::AlreadySettled,
        s if s == sw_::sw::CARD_PROOF_INVALID => FlowError::CardProofInvalid,
        s if s == sw_::sw::NOT_OPEN => FlowError::NotOpen,
        s if s == sw_::sw::ALREADY_PERSONALISED || s == sw_::sw::SAM_ID_ALREADY_KEYED => {
            FlowError::AlreadyPersonalised
        }
        s if s == sw_::sw::CHIP_NOT_ATTESTED
            || s == sw_::sw::SUBJECT_MISMATCH
            || s == sw_::sw::ATTESTATION_INVALID =>
        {
            FlowError::NotAttested(crate::clients::sam_sw_meaning(s))
        }
        Sw::SECURITY_STATUS_NOT_SATISFIED => FlowError::SamLocked,
        _ => FlowError::Step { step, source: e },
    }
}

fn transport_step(step: &'static str, e: TransportError) -> FlowError {
    FlowError::Step {
        step,
        source: ClientError::Transport(e),
    }
}

/// Select a SAM and unlock it with its PIN; returns its data.
pub fn open_sam<S: Transport + ?Sized>(sam: &mut S, pin: &[u8]) -> Result<SamData, FlowError> {
    let mut c = SamClient::new(sam);
    c.select().map_err(|e| sam_err("SELECT SAM", e))?;
    c.unlock(pin).map_err(|e| match e.sw() {
        Some(Sw::AUTH_METHOD_BLOCKED) => FlowError::PinBlocked,
        Some(s) if s.0 & 0xFFF0 == 0x63C0 => FlowError::WrongPin {
            tries_left: (s.0 & 0x0F) as u8,
        },
        _ => sam_err("VERIFY SAM PIN", e),
    })?;
    c.sam_data().map_err(|e| sam_err("GET SAM DATA", e))
}

/// Reset, select and unlock a SAM whose answer was lost.
fn reopen_sam<S: Transport + ?Sized>(
    sam: &mut S,
    opts: &FlowOptions,
    step: &'static str,
) -> Result<(), FlowError> {
    let Some(pin) = opts.sam_pin.as_deref() else {
        return Err(FlowError::Recovery(format!(
            "the SAM's answer to {step} was lost and no SAM PIN was given to reopen it"
        )));
    };
    sam.reset().map_err(|e| transport_step("RESET SAM", e))?;
    open_sam(sam, pin).map(|_| ())
}

/// After a lost SAM answer: reopen the SAM (reset, select, unlock) so that the caller can
/// resend. A reopen whose own answer is lost is left to the caller's next attempt.
fn reopen_after_loss<S: Transport + ?Sized>(
    sam: &mut S,
    opts: &FlowOptions,
    step: &'static str,
) -> Result<(), FlowError> {
    match reopen_sam(sam, opts, step) {
        Ok(()) => Ok(()),
        Err(re) if re.is_no_response() => Ok(()),
        Err(re) => Err(re),
    }
}

/// Run an idempotent SAM command, reopening the SAM and resending when its answer is lost.
fn sam_idempotent<S, R>(
    sam: &mut S,
    opts: &FlowOptions,
    step: &'static str,
    mut f: impl FnMut(&mut SamClient<'_, S>) -> Result<R, ClientError>,
) -> Result<R, FlowError>
where
    S: Transport + ?Sized,
{
    let mut last = None;
    for _ in 0..=RETRIES {
        match f(&mut SamClient::new(sam)) {
            Ok(r) => return Ok(r),
            Err(e) if e.is_no_response() => {
                last = Some(e);
                reopen_after_loss(sam, opts, step)?;
            }
            Err(e) => return Err(sam_err(step, e)),
        }
    }
    Err(match last {
        Some(source) => FlowError::Step { step, source },
        None => FlowError::Recovery(format!("{step}: no answer")),
    })
}

/// GET TRANSACTION STATUS at the purse, powered again and selected first (so that no
/// session is open), retried while its answer is lost.
fn purse_status<P: Transport + ?Sized>(
    purse: &mut P,
    key_usage: u8,
    query: &TxnStatusQuery,
) -> Result<TxnStatus, FlowError> {
    let mut problem = String::new();
    for _ in 0..=RETRIES {
        if let Err(e) = purse.reset() {
            problem = format!("reset of the purse failed: {e}");
            continue;
        }
        let mut c = PurseClient::new(&mut *purse);
        if let Err(e) = c.select() {
            problem = format!("select after reset failed: {e}");
            if e.is_no_response() {
                continue;
            }
            return Err(FlowError::Recovery(problem));
        }
        match c.txn_status(key_usage, query) {
            Ok(s) => return Ok(s),
            Err(e) if e.is_no_response() => problem = format!("GET TRANSACTION STATUS: {e}"),
            Err(e) => return Err(FlowError::Recovery(format!("GET TRANSACTION STATUS: {e}"))),
        }
    }
    Err(FlowError::Recovery(problem))
}

/// The recovery step: BEGIN RESOLVE at the SAM (a fresh challenge), power the purse again,
/// select it, ask GET TRANSACTION STATUS for (sam_id, sam_txn, challenge), and RESOLVE the
/// SAM's pending entry with that MACed status. A lost SAM answer restarts the step with a
/// new challenge (the purse's answer to a repeated query is the same; RESOLVE is
/// idempotent). Returns the log record when the transaction was applied, `None` when it
/// was not (the SAM entry is then VOID); [`FlowError::Unresolvable`] when the purse can no
/// longer tell (the entry stays PENDING, marked for the issuer's write-off).
pub fn recover<P, S>(
    purse: &mut P,
    sam: &mut S,
    opts: &FlowOptions,
    key_usage: u8,
    purse_id: PurseId,
    sam_id: [u8; 4],
    sam_txn: u32,
) -> Result<Option<LogRecord>, FlowError>
where
    P: Transport + ?Sized,
    S: Transport + ?Sized,
{
    let mut last = None;
    for _ in 0..=RETRIES {
        let challenge = match SamClient::new(&mut *sam).begin_resolve() {
            Ok(c) => c.sam_challenge,
            Err(e) if e.is_no_response() => {
                last = Some(("BEGIN RESOLVE", e));
                reopen_after_loss(sam, opts, "BEGIN RESOLVE")?;
                continue;
            }
            Err(e) => return Err(sam_err("BEGIN RESOLVE", e)),
        };
        let query = TxnStatusQuery {
            sam_id,
            sam_txn,
            sam_challenge: challenge,
        };
        let status = purse_status(purse, key_usage, &query)?;
        if status.applied && (status.record.sam_id != sam_id || status.record.sam_txn != sam_txn) {
            return Err(FlowError::Recovery(
                "the purse's transaction status names another transaction".into(),
            ));
        }
        let resolve = Resolve {
            purse_id,
            sam_txn,
            key_usage,
            status: status.clone(),
        };
        match SamClient::new(&mut *sam).resolve(&resolve) {
            Ok(s) if s == sw_::status::PENDING => return Err(FlowError::Unresolvable(sam_txn)),
            Ok(s) if s == sw_::status::CONFIRMED && status.applied => {
                return Ok(Some(status.record));
            }
            Ok(s) if s == sw_::status::VOID && !status.applied => return Ok(None),
            Ok(s) => {
                return Err(FlowError::Recovery(format!(
                    "RESOLVE answered status {s:02X} for a purse status saying {}",
                    if status.applied {
                        "applied"
                    } else {
                        "not applied"
                    }
                )));
            }
            Err(e) if e.is_no_response() => {
                last = Some(("RESOLVE", e));
                reopen_after_loss(sam, opts, "RESOLVE")?;
            }
            Err(e) => return Err(sam_err("RESOLVE", e)),
        }
    }
    Err(match last {
        Some((step, source)) => FlowError::Step { step, source },
        None => FlowError::Recovery("RESOLVE: no answer".into()),
    })
}

/// Void a SAM authorisation that the purse refused (or that the host abandons): the purse
/// is reset first so that its session is gone for sure.
fn void<P, S>(
    purse: &mut P,
    sam: &mut S,
    opts: &FlowOptions,
    key_usage: u8,
    purse_id: PurseId,
    sam_id: [u8; 4],
    sam_txn: u32,
) -> Result<bool, FlowError>
where
    P: Transport + ?Sized,
    S: Transport + ?Sized,
{
    recover(purse, sam, opts, key_usage, purse_id, sam_id, sam_txn).map(|r| r.is_some())
}

/// The SAM's answer to an AUTHORIZE was lost: it may hold a PENDING entry we do not know
/// the number of. Reopen it, and if its last transaction is pending, resolve it with the
/// purse (which never saw the authorisation, so it is voided).
fn void_orphan<P, S>(
    purse: &mut P,
    sam: &mut S,
    opts: &FlowOptions,
    key_usage: u8,
    purse_id: PurseId,
) -> FlowError
where
    P: Transport + ?Sized,
    S: Transport + ?Sized,
{
    if let Err(e) = reopen_sam(sam, opts, "AUTHORIZE") {
        return e;
    }
    let data = match SamClient::new(sam).sam_data() {
        Ok(d) => d,
        Err(e) => return sam_err("GET SAM DATA", e),
    };
    if data.pending_count == 0 || data.sam_txn == 0 {
        return FlowError::NotApplied { voided: false };
    }
    match recover(
        purse,
        sam,
        opts,
        key_usage,
        purse_id,
        data.sam_id,
        data.sam_txn,
    ) {
        Ok(None) => FlowError::NotApplied { voided: true },
        // The last transaction was another one, already settled: nothing of ours pends.
        Err(FlowError::Step { source, .. }) if source.sw() == Some(sw_::sw::NO_SUCH_TXN) => {
            FlowError::NotApplied { voided: false }
        }
        Ok(Some(_)) => {
            FlowError::Recovery("an authorisation whose answer was lost was applied".into())
        }
        Err(e) => e,
    }
}

/// The kind of a value transaction: what differs between a load and a purchase in the
/// steps they share (authorise at the SAM, apply at the purse, recover, confirm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    Load,
    Purchase,
}

impl ValueKind {
    /// The purse key usage its transaction status is MACed with.
    fn key_usage(self) -> u8 {
        match self {
            ValueKind::Load => pw::usage::LOAD,
            ValueKind::Purchase => pw::usage::DEBIT,
        }
    }

    fn authorize_step(self) -> &'static str {
        match self {
            ValueKind::Load => "AUTHORIZE LOAD",
            ValueKind::Purchase => "AUTHORIZE PURCHASE",
        }
    }

    fn confirm_step(self) -> &'static str {
        match self {
            ValueKind::Load => "CONFIRM LOAD",
            ValueKind::Purchase => "CONFIRM PURCHASE",
        }
    }

    fn confirm<S: Transport + ?Sized>(
        self,
        c: &mut SamClient<'_, S>,
        m: &Confirm,
    ) -> Result<(), ClientError> {
        match self {
            ValueKind::Load => c.confirm_load(m),
            ValueKind::Purchase => c.confirm_purchase(m),
        }
    }
}

/// A transaction the SAM authorised.
struct Authorised {
    kind: ValueKind,
    purse_id: PurseId,
    sam_id: [u8; 4],
    sam_txn: u32,
    amount: u32,
}

/// What the purse reports of an authorised transaction it applied.
struct Applied {
    counter: u32,
    balance_after: u32,
    proof: [u8; 8],
    /// The purse's answer was lost and the result came from the recovery step.
    recovered: bool,
    /// The SAM journal entry is CONFIRMED.
    sam_confirmed: bool,
}

/// AUTHORIZE at the SAM (`authorize` sends it). When its answer is lost, the SAM's
/// pending entry (if any) is voided and the flow ends with the reason.
fn authorise<P, S, A>(
    purse: &mut P,
    sam: &mut S,
    opts: &FlowOptions,
    kind: ValueKind,
    purse_id: PurseId,
    authorize: impl FnOnce(&mut SamClient<'_, S>) -> Result<A, ClientError>,
) -> Result<A, FlowError>
where
    P: Transport + ?Sized,
    S: Transport + ?Sized,
{
    match authorize(&mut SamClient::new(&mut *sam)) {
        Ok(a) => Ok(a),
        Err(e) if e.is_no_response() => {
            Err(void_orphan(purse, sam, opts, kind.key_usage(), purse_id))
        }
        Err(e) => Err(sam_err(kind.authorize_step(), e)),
    }
}

/// Apply an authorised transaction at the purse (`apply` sends the LOAD or PURCHASE) and
/// CONFIRM it at the SAM. A lost purse answer runs the recovery step (which resolves the
/// SAM entry); a refusal voids the SAM's authorisation and ends the flow with the reason
/// `refused` makes of it.
fn apply_and_confirm<P, S>(
    purse: &mut P,
    sam: &mut S,
    opts: &FlowOptions,
    txn: &Authorised,
    apply: impl FnOnce(&mut P) -> Result<ValueReceipt, ClientError>,
    refused: impl FnOnce(ClientError) -> FlowError,
) -> Result<Applied, FlowError>
where
    P: Transport + ?Sized,
    S: Transport + ?Sized,
{
    let key_usage = txn.kind.key_usage();
    let mut applied = match apply(&mut *purse) {
        Ok(r) => Applied {
            counter: r.counter,
            balance_after: r.balance_after,
            proof: r.proof,
            recovered: false,
            sam_confirmed: false,
        },
        Err(e) if e.is_no_response() => {
            let (purse_id, sam_id, sam_txn) = (txn.purse_id, txn.sam_id, txn.sam_txn);
            return match recover(purse, sam, opts, key_usage, purse_id, sam_id, sam_txn)? {
                Some(rec) => Ok(Applied {
                    counter: rec.counter,
                    balance_after: rec.balance_after,
                    proof: rec.proof,
                    recovered: true,
                    sam_confirmed: true,
                }),
                None => Err(FlowError::NotApplied { voided: true }),
            };
        }
        Err(e) => {
            let reason = refused(e);
            return Err(after_refusal(purse, sam, opts, txn, reason));
        }
    };
    let confirm = Confirm {
        purse_id: txn.purse_id,
        sam_txn: txn.sam_txn,
        counter: applied.counter,
        amount: txn.amount,
        balance_after: applied.balance_after,
        proof: applied.proof,
    };
    // The value moved at the purse: a failed CONFIRM is reported in the receipt, never as
    // an error (the entry stays PENDING and the recovery step resolves it later).
    let step = txn.kind.confirm_step();
    match sam_idempotent(sam, opts, step, |c| txn.kind.confirm(c, &confirm)) {
        Ok(()) => applied.sam_confirmed = true,
        Err(e) => {
            tracing::warn!("{step} failed ({e}); the SAM entry stays PENDING until resolved")
        }
    }
    Ok(applied)
}

/// Load value into a purse through the issuer SAM (open: selected and unlocked).
pub fn load<P, S>(
    purse: &mut P,
    issuer_sam: &mut S,
    req: LoadRequest,
) -> Result<LoadReceipt, FlowError>
where
    P: Transport + ?Sized,
    S: Transport + ?Sized,
{
    load_with(purse, issuer_sam, req, &FlowOptions::default())
}

/// [`load`] with options.
pub fn load_with<P, S>(
    purse: &mut P,
    sam: &mut S,
    req: LoadRequest,
    opts: &FlowOptions,
) -> Result<LoadReceipt, FlowError>
where
    P: Transport + ?Sized,
    S: Transport + ?Sized,
{
    if req.amount == 0 {
        return Err(FlowError::ZeroAmount);
    }
    let mut pc = PurseClient::new(&mut *purse);
    pc.select().map_err(|e| purse_err("SELECT PURSE", e))?;
    let init = pc.init_load().map_err(|e| purse_err("INIT LOAD", e))?;
    let areq = AuthorizeLoad {
        purse_id: init.purse_id,
        currency: init.currency,
        counter: init.counter,
        challenge: init.challenge,
        key_version: init.key_version,
        amount: req.amount,
        terminal_time: req.terminal_time,
    };
    let kind = ValueKind::Load;
    let auth = authorise(purse, sam, opts, kind, init.purse_id, |c| {
        c.authorize_load(&areq)
    })?;
    let msg = Load {
        amount: req.amount,
        sam_id: auth.sam_id,
        sam_txn: auth.sam_txn,
        terminal_time: req.terminal_time,
        counter: init.counter,
        mac: auth.mac,
    };
    let txn = Authorised {
        kind,
        purse_id: init.purse_id,
        sam_id: auth.sam_id,
        sam_txn: auth.sam_txn,
        amount: req.amount,
    };
    let apply = |p: &mut P| PurseClient::new(p).load(&msg);
    let refused = |e| purse_err("LOAD", e);
    let done = apply_and_confirm(purse, sam, opts, &txn, apply, refused)?;
    Ok(LoadReceipt {
        purse_id: init.purse_id,
        currency: init.currency,
        amount: req.amount,
        balance_before: init.balance,
        balance_after: done.balance_after,
        counter: done.counter,
        sam_id: auth.sam_id,
        sam_txn: auth.sam_txn,
        terminal_time: req.terminal_time,
        proof: done.proof,
        recovered: done.recovered,
        sam_confirmed: done.sam_confirmed,
    })
}

/// After the purse refused an authorised message: void the SAM's pending entry, then
/// report the purse's reason. If the status says the transaction *was* applied (it cannot
/// be, after a refusal), that is reported as a recovery failure.
fn after_refusal<P, S>(
    purse: &mut P,
    sam: &mut S,
    opts: &FlowOptions,
    txn: &Authorised,
    reason: FlowError,
) -> FlowError
where
    P: Transport + ?Sized,
    S: Transport + ?Sized,
{
    let (key_usage, purse_id) = (txn.kind.key_usage(), txn.purse_id);
    match void(
        purse,
        sam,
        opts,
        key_usage,
        purse_id,
        txn.sam_id,
        txn.sam_txn,
    ) {
        Ok(false) => reason,
        Ok(true) => FlowError::Recovery(format!(
            "the purse refused ({reason}) but reports the transaction applied"
        )),
        Err(e) => FlowError::Recovery(format!(
            "{reason}; and voiding the SAM authorisation failed: {e}"
        )),
    }
}

/// Pay from a purse at a terminal SAM (open: selected and unlocked).
pub fn pay<P, S>(
    purse: &mut P,
    terminal_sam: &mut S,
    req: PayRequest,
) -> Result<PayReceipt, FlowError>
where
    P: Transport + ?Sized,
    S: Transport + ?Sized,
{
    pay_with(purse, terminal_sam, &req, &FlowOptions::default())
}

/// [`pay`] with options.
pub fn pay_with<P, S>(
    purse: &mut P,
    sam: &mut S,
    req: &PayRequest,
    opts: &FlowOptions,
) -> Result<PayReceipt, FlowError>
where
    P: Transport + ?Sized,
    S: Transport + ?Sized,
{
    if req.amount == 0 {
        return Err(FlowError::ZeroAmount);
    }
    let mut pc = PurseClient::new(&mut *purse);
    pc.select().map_err(|e| purse_err("SELECT PURSE", e))?;
    if let Some(pin) = &req.pin {
        pc.verify_pin(pin).map_err(|e| purse_err("VERIFY PIN", e))?;
    }
    let begin = SamClient::new(&mut *sam)
        .begin_purchase()
        .map_err(|e| sam_err("BEGIN PURCHASE", e))?;
    let init = PurseClient::new(&mut *purse)
        .init_purchase(&begin.init_purchase())
        .map_err(|e| purse_err("INIT PURCHASE", e))?;
    // Refusals the host can see coming are made before the SAM authorises anything.
    if init.balance < req.amount {
        return Err(FlowError::InsufficientFunds {
            balance: init.balance,
            amount: req.amount,
        });
    }
    let pin_needed = req.amount > init.pin_threshold
        && init.flags & pw::FLAG_PIN_SET != 0
        && init.flags & pw::FLAG_PIN_VALIDATED == 0;
    if pin_needed {
        return Err(FlowError::PinRequired {
            threshold: init.pin_threshold,
        });
    }
    let areq = AuthorizePurchase::new(&init, req.amount, req.terminal_id, req.terminal_time);
    let kind = ValueKind::Purchase;
    let auth = authorise(purse, sam, opts, kind, init.purse_id, |c| {
        c.authorize_purchase(&areq)
    })?;
    let msg = Purchase {
        amount: req.amount,
        terminal_id: req.terminal_id,
        sam_id: begin.sam_id,
        sam_txn: auth.sam_txn,
        terminal_time: req.terminal_time,
        counter: init.counter,
        mac: auth.mac,
    };
    let txn = Authorised {
        kind,
        purse_id: init.purse_id,
        sam_id: begin.sam_id,
        sam_txn: auth.sam_txn,
        amount: req.amount,
    };
    let refused = |e: ClientError| match (e.sw(), purse_err("PURCHASE", e)) {
        (_, FlowError::InsufficientFunds { .. }) => FlowError::InsufficientFunds {
            balance: init.balance,
            amount: req.amount,
        },
        (Some(Sw::SECURITY_STATUS_NOT_SATISFIED), _)
            if init.flags & pw::FLAG_PIN_SET != 0 && req.amount > init.pin_threshold =>
        {
            FlowError::PinRequired {
                threshold: init.pin_threshold,
            }
        }
        (_, other) => other,
    };
    let apply = |p: &mut P| PurseClient::new(p).purchase(&msg);
    let done = apply_and_confirm(purse, sam, opts, &txn, apply, refused)?;
    Ok(PayReceipt {
        purse_id: init.purse_id,
        currency: init.currency,
        amount: req.amount,
        balance_before: init.balance,
        balance_after: done.balance_after,
        counter: done.counter,
        terminal_id: req.terminal_id,
        sam_id: begin.sam_id,
        sam_txn: auth.sam_txn,
        terminal_time: req.terminal_time,
        proof: done.proof,
        recovered: done.recovered,
        sam_confirmed: done.sam_confirmed,
    })
}

// ------------------------------------------------------------------ personalisation

/// Personalise a purse through the issuer SAM (open): INIT PERSO at the purse (its key
/// request signed by its attestation key), PERSONALISE PURSE at the SAM with the purse's
/// certificate `chip_cert` (DER, issued by the manufacturer CA the SAM trusts), PUT KEYS
/// at the purse. `time` (Unix seconds, the host's clock) is when the SAM checks the
/// certificate's validity. Returns the purse data afterwards.
pub fn personalise_purse<P, S>(
    card: &mut P,
    issuer_sam: &mut S,
    chip_cert: &[u8],
    time: u32,
) -> Result<PurseData, FlowError>
where
    P: Transport + ?Sized,
    S: Transport + ?Sized,
{
    let mut pc = PurseClient::new(card);
    pc.select().map_err(|e| purse_err("SELECT PURSE", e))?;
    let request = sw_::PersonaliseRequest {
        time,
        chip_cert: chip_cert.to_vec(),
        request: pc.init_perso().map_err(|e| purse_err("INIT PERSO", e))?,
    };
    let blob = SamClient::new(issuer_sam)
        .personalise_purse(&request)
        .map_err(|e| sam_err("PERSONALISE PURSE", e))?;
    pc.put_keys(&blob).map_err(|e| purse_err("PUT KEYS", e))?;
    pc.read_purse_data()
        .map_err(|e| purse_err("READ PURSE DATA", e))
}

/// Personalise a new SAM (open: selected and unlocked with its own PIN) through the issuer
/// SAM (open): INIT KEY IMPORT (signed by the new SAM's attestation key), EXPORT SAM KEYS
/// for `role` with the new SAM's certificate `chip_cert` (checked at `time`, as in
/// [`personalise_purse`]), IMPORT KEYS. Returns the new SAM's data afterwards.
pub fn personalise_sam<N, S>(
    new_sam: &mut N,
    issuer_sam: &mut S,
    role: u8,
    chip_cert: &[u8],
    time: u32,
) -> Result<SamData, FlowError>
where
    N: Transport + ?Sized,
    S: Transport + ?Sized,
{
    let mut nc = SamClient::new(new_sam);
    let request = sw_::PersonaliseRequest {
        time,
        chip_cert: chip_cert.to_vec(),
        request: nc
            .init_key_import()
            .map_err(|e| sam_err("INIT KEY IMPORT", e))?,
    };
    let blob = SamClient::new(issuer_sam)
        .export_sam_keys(role, &request)
        .map_err(|e| sam_err("EXPORT SAM KEYS", e))?;
    nc.import_keys(&blob)
        .map_err(|e| sam_err("IMPORT KEYS", e))?;
    nc.sam_data().map_err(|e| sam_err("GET SAM DATA", e))
}

// ------------------------------------------------------------------ settlement

/// What [`settle`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SettleReport {
    #[serde(serialize_with = "hex_ser")]
    pub sam_id: [u8; 4],
    /// Batches exported, verified and acknowledged.
    pub batches: usize,
    /// Entries the issuer acknowledged (CONFIRMED, VOID and WRITTEN_OFF), oldest first.
    #[serde(skip)]
    pub entries: Vec<JournalEntry>,
    pub settled: usize,
    /// Confirmed loads and purchases in the settled entries (minor units).
    pub loads_total: u64,
    pub purchases_total: u64,
    pub voided: usize,
    /// WRITTEN_OFF loads and purchases settled, and their amounts (written off: the
    /// scheme's rule, not a proof, says what they move; docs/value-protocol.md).
    pub written_off_loads: usize,
    pub written_off_loads_total: u64,
    pub written_off_purchases: usize,
    pub written_off_purchases_total: u64,
    /// PENDING entries the SAM still holds (they stay until resolved).
    pub pending_left: usize,
    /// Highest sequence number acknowledged.
    pub last_seq: u32,
}

/// A batch the issuer SAM verified, handed to the settlement sink before its ack is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBatch {
    /// The batch as the SAM exported it (MACed with its journal key).
    pub batch: JournalBatch,
    /// The issuer SAM's acknowledgement of it (not yet sent to the SAM).
    pub ack: JournalAck,
    /// The entries the batch shows CONFIRMED, VOID or WRITTEN_OFF: what the ack drops from
    /// the SAM.
    pub settled: Vec<JournalEntry>,
    /// The issuer SAM's signed statement right after it verified this batch: its batch
    /// count numbers this batch, and its totals and chain include it. A back end checks a
    /// set of records against a fresh statement with [`reconcile::reconcile`].
    pub statement: sw_::SettlementStatement,
}

/// Settle a SAM's journal with the issuer SAM (both open): EXPORT JOURNAL, VERIFY JOURNAL
/// at the issuer, `store` the verified batch, ACK JOURNAL, until nothing acknowledgeable
/// is left.
///
/// `store` must make the settlement record durable (write, fsync, atomic rename) before
/// it returns `Ok`: the ack that follows drops the entries from the SAM for good. If it
/// fails, no ack is sent ([`FlowError::RecordNotStored`]) and the SAM keeps the entries.
/// The same batch may reach `store` more than once (a run interrupted after VERIFY
/// JOURNAL: the SAM exports the identical batch again and the issuer re-issues the same
/// ack), so the record must be keyed by the batch (SAM ID and batch MAC) and storing it
/// again must replace it, never add to it. Each entry is settled by the issuer SAM in
/// exactly one batch: a replayed or stale batch is refused ([`FlowError::AlreadySettled`]).
///
/// Each ack is bound to its batch (it carries and MACs the batch MAC) and is sent right
/// after that batch's export, so the SAM drops exactly the entries the issuer saw in a
/// final state.
pub fn settle<T, S, F>(
    terminal_sam: &mut T,
    issuer_sam: &mut S,
    mut store: F,
) -> Result<SettleReport, FlowError>
where
    T: Transport + ?Sized,
    S: Transport + ?Sized,
    F: FnMut(&VerifiedBatch) -> Result<(), String>,
{
    let mut report = SettleReport::default();
    let mut seen = std::collections::BTreeSet::new();
    // Each round acknowledges at least one new entry or stops: bounded by the journal.
    for _ in 0..=u16::MAX as usize {
        let batch = SamClient::new(&mut *terminal_sam)
            .export_journal(0)
            .map_err(|e| sam_err("EXPORT JOURNAL", e))?;
        report.sam_id = batch.sam_id;
        let settled = batch.final_entries();
        report.pending_left = batch
            .entries
            .iter()
            .filter(|e| e.status == sw_::status::PENDING)
            .count();
        if settled.iter().all(|e| seen.contains(&e.seq)) {
            break;
        }
        let ack = SamClient::new(&mut *issuer_sam)
            .verify_journal(&batch)
            .map_err(|e| sam_err("VERIFY JOURNAL", e))?;
        let mut nonce = [0u8; 16];
        tessera_crypto::rng::CardRng::from_entropy().fill(&mut nonce);
        let statement = SamClient::new(&mut *issuer_sam)
            .settlement_statement(&batch.sam_id, &nonce)
            .map_err(|e| sam_err("GET SETTLEMENT STATEMENT", e))?;
        let t = &statement.totals;
        if t.sam_id != batch.sam_id || t.nonce != nonce {
            return Err(FlowError::BadStatement(
                "another SAM's, or an answer to another request".into(),
            ));
        }
        // The statement covers the batch. (Its batch count is 0 only for a batch verified
        // before the issuer SAM kept statements, repeated after a lost ack.)
        if t.hwm < ack.last_seq {
            return Err(FlowError::BadStatement(format!(
                "it shows {} batches up to seq {}, after a batch up to seq {}",
                t.sums.batches, t.hwm, ack.last_seq
            )));
        }
        let verified = VerifiedBatch {
            batch,
            ack,
            settled,
            statement,
        };
        store(&verified).map_err(FlowError::RecordNotStored)?;
        SamClient::new(&mut *terminal_sam)
            .ack_journal(&verified.ack)
            .map_err(|e| sam_err("ACK JOURNAL", e))?;
        report.batches += 1;
        report.last_seq = report.last_seq.max(verified.ack.last_seq);
        for e in verified.settled {
            if !seen.insert(e.seq) {
                continue;
            }
            if e.status == sw_::status::VOID {
                report.voided += 1;
            } else if e.status == sw_::status::WRITTEN_OFF {
                if e.kind == pw::kind::LOAD {
                    report.written_off_loads += 1;
                    report.written_off_loads_total += u64::from(e.amount);
                } else {
                    report.written_off_purchases += 1;
                    report.written_off_purchases_total += u64::from(e.amount);
                }
            } else if e.kind == pw::kind::LOAD {
                report.loads_total += u64::from(e.amount);
            } else {
                report.purchases_total += u64::from(e.amount);
            }
            report.settled += 1;
            report.entries.push(e);
        }
    }
    Ok(report)
}

// ------------------------------------------------------------------ write-off

/// What [`resolve_entry`] made of a PENDING journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The purse applied it: CONFIRMED with the purse's proof (its log record).
    Applied(LogRecord),
    /// The purse did not apply it: VOID.
    Voided,
    /// The purse can no longer tell: still PENDING, marked for the issuer's write-off.
    Unresolvable,
}

/// Resolve the PENDING journal entry `seq` of `sam` (open) with `purse`, the purse it
/// names: the recovery step of the load and pay flows, run on its own for an entry a flow
/// left PENDING (its recovery failed, or the card was taken away). Peeks at the journal
/// for the entry (nothing recorded), checks that the card is the entry's purse, then runs
/// [`recover`].
pub fn resolve_entry<P, S>(
    purse: &mut P,
    sam: &mut S,
    opts: &FlowOptions,
    seq: u32,
) -> Result<(JournalEntry, Resolution), FlowError>
where
    P: Transport + ?Sized,
    S: Transport + ?Sized,
{
    let sam_id = SamClient::new(&mut *sam)
        .sam_data()
        .map_err(|e| sam_err("GET SAM DATA", e))?
        .sam_id;
    let entry = find_pending(sam, seq)?;
    let card = {
        let mut p = PurseClient::new(&mut *purse);
        p.select().map_err(|e| purse_err("SELECT", e))?;
        p.read_purse_data()
            .map_err(|e| purse_err("READ PURSE DATA", e))?
            .purse_id
    };
    if card != entry.purse_id {
        return Err(FlowError::WrongPurse {
            card: hex::encode_upper(card),
            entry: hex::encode_upper(entry.purse_id),
        });
    }
    let key_usage = if entry.kind == pw::kind::LOAD {
        pw::usage::LOAD
    } else {
        pw::usage::DEBIT
    };
    let resolution = match recover(purse, sam, opts, key_usage, card, sam_id, seq) {
        Ok(Some(record)) => Resolution::Applied(record),
        Ok(None) => Resolution::Voided,
        Err(FlowError::Unresolvable(_)) => Resolution::Unresolvable,
        Err(e) => return Err(e),
    };
    Ok((entry, resolution))
}

/// Write off the PENDING journal entry `seq` of `terminal_sam` (open) with the issuer SAM
/// (open): an entry [`resolve_entry`] (or a flow's recovery) found unresolvable, because
/// the purse's log has moved past it. It would otherwise hold the journal for ever.
///
/// Peeks at the terminal SAM's journal (EXPORT JOURNAL P2 = 01, nothing recorded) for the
/// entry, asks the issuer SAM for a WRITE OFF token for it (refused with
/// [`FlowError::NotOpen`] unless a batch the issuer verified showed the entry PENDING, or
/// passed over it, and it is not settled: settle first) and applies it (APPLY WRITE OFF;
/// refused with [`FlowError::ResolveFirst`] unless RESOLVE marked the entry
/// unresolvable). Returns the entry as it was (PENDING). The next settlement shows it
/// WRITTEN_OFF: the issuer SAM counts it as a written-off load or purchase and the SAM's
/// ack drops it.
///
/// Applying is idempotent: a run cut after APPLY WRITE OFF can be repeated only until the
/// entry is WRITTEN_OFF ([`FlowError::NoPendingEntry`] after that, nothing changed).
pub fn write_off<T, S>(
    terminal_sam: &mut T,
    issuer_sam: &mut S,
    seq: u32,
) -> Result<JournalEntry, FlowError>
where
    T: Transport + ?Sized,
    S: Transport + ?Sized,
{
    let sam_id = SamClient::new(&mut *terminal_sam)
        .sam_data()
        .map_err(|e| sam_err("GET SAM DATA", e))?
        .sam_id;
    let entry = find_pending(terminal_sam, seq)?;
    let token = SamClient::new(&mut *issuer_sam)
        .write_off(&sam_id, &entry)
        .map_err(|e| sam_err("WRITE OFF", e))?;
    SamClient::new(&mut *terminal_sam)
        .apply_write_off(&token)
        .map_err(|e| match e.sw() {
            // 6985: not marked unresolvable, or no longer the PENDING entry the token was
            // made for (settled in between): say which.
            Some(Sw::CONDITIONS_NOT_SATISFIED) => match find_pending(terminal_sam, seq) {
                Ok(now) if now == entry => FlowError::ResolveFirst(seq),
                Ok(_) | Err(FlowError::NoPendingEntry(_)) => FlowError::NoPendingEntry(seq),
                Err(other) => other,
            },
            _ => sam_err("APPLY WRITE OFF", e),
        })?;
    Ok(entry)
}

/// The PENDING entry `seq` of an open SAM's journal (EXPORT JOURNAL peek from `seq`:
/// nothing recorded).
fn find_pending<T: Transport + ?Sized>(sam: &mut T, seq: u32) -> Result<JournalEntry, FlowError> {
    let batch = SamClient::new(sam)
        .peek_journal_from(1, seq)
        .map_err(|e| sam_err("EXPORT JOURNAL (peek)", e))?;
    batch
        .entries
        .into_iter()
        .find(|e| e.seq == seq && e.status == sw_::status::PENDING)
        .ok_or(FlowError::NoPendingEntry(seq))
}
