//! The SAM's wire messages, the one definition used by the SAM applet and its host client.
//! Purse-facing messages (AuthorizeLoad, LoadAuthorization, AuthorizePurchase,
//! PurchaseAuthorization, KeyBlob, KeyTransportRequest, AttestedKeyRequest, TxnStatus) are
//! the purse's: see
//! `tessera_purse::wire`. Integers big-endian; MACs AES-CMAC truncated to 8 bytes.

use tessera_purse::message;
pub use tessera_purse::wire::{MAC_LEN, Mac, PurseId, Reader, WireError};

/// SAM applet AID (proprietary RID F0 "TSRA", PIX 03 01).
pub const SAM_AID: [u8; 7] = [0xF0, 0x54, 0x53, 0x52, 0x41, 0x03, 0x01];
pub const CLA: u8 = 0x80;

/// Instruction codes (CLA 80 unless noted). Every command except VERIFY, GET SAM DATA and
/// GET ATTESTATION KEY needs the SAM unlocked (6982 otherwise).
pub mod ins {
    /// VERIFY the unlock PIN: CLA 00 (or 80), P1 00, P2 81. Unlocks until reset/deselect.
    pub const VERIFY: u8 = 0x20;
    /// GET SAM DATA → [`super::SamData`].
    pub const GET_SAM_DATA: u8 = 0x10;
    /// GET PERSO PUBLIC KEY (issuer) → DER SubjectPublicKeyInfo of the RSA personalisation key.
    pub const GET_PERSO_PUBLIC_KEY: u8 = 0x12;
    /// INIT KEY IMPORT (new SAM, no keys yet) → `tessera_purse::wire::AttestedKeyRequest`
    /// (RSA-OAEP ciphertext of a KeyTransportRequest, signed by the SAM's attestation key).
    pub const INIT_KEY_IMPORT: u8 = 0x14;
    /// IMPORT KEYS (new SAM): data = KeyBlob.
    pub const IMPORT_KEYS: u8 = 0x16;
    /// EXPORT SAM KEYS (issuer): data = role (1) || [`super::PersonaliseRequest`] (the new
    /// SAM's certificate and INIT KEY IMPORT answer) → KeyBlob.
    pub const EXPORT_SAM_KEYS: u8 = 0x18;
    /// PERSONALISE PURSE (issuer): data = [`super::PersonaliseRequest`] (the purse's
    /// certificate and INIT PERSO answer) → KeyBlob.
    pub const PERSONALISE_PURSE: u8 = 0x1A;
    /// GET ATTESTATION KEY (any role, no unlock needed) → DER SubjectPublicKeyInfo of the
    /// SAM's RSA-2048 attestation key (generated inside the SAM at installation).
    pub const GET_ATTESTATION_KEY: u8 = 0x1C;
    pub const AUTHORIZE_LOAD: u8 = 0x30;
    pub const CONFIRM_LOAD: u8 = 0x32;
    pub const BEGIN_PURCHASE: u8 = 0x38;
    pub const AUTHORIZE_PURCHASE: u8 = 0x3A;
    pub const CONFIRM_PURCHASE: u8 = 0x3C;
    /// BEGIN RESOLVE → [`super::ResolveChallenge`]: a fresh challenge for the purse's
    /// GET TRANSACTION STATUS, valid for RESOLVE of the entries that exist now.
    pub const BEGIN_RESOLVE: u8 = 0x34;
    /// RESOLVE a pending authorisation with the purse's GET TRANSACTION STATUS answer
    /// (made for the challenge of the last BEGIN RESOLVE) → the entry's status: CONFIRMED,
    /// VOID, or PENDING when the purse's log no longer reaches the entry (it is then
    /// marked unresolvable: only a write-off or a CONFIRM can settle it).
    pub const RESOLVE: u8 = 0x3E;
    /// EXPORT JOURNAL: P1 = maximum final (CONFIRMED / VOID / WRITTEN_OFF) entries
    /// (1-255, at most [`super::EXPORT_FINAL_MAX`] taken; 00 = 64) → JournalBatch, plus at most
    /// [`super::EXPORT_PENDING_MAX`] PENDING entries not yet shown in an acknowledged batch.
    /// While the last batch that showed a final entry is not acknowledged, that same batch
    /// again. P2 = 01 (peek): the oldest P1 entries of any status as they are now, MAC all
    /// zero (not verifiable), nothing recorded.
    pub const EXPORT_JOURNAL: u8 = 0x40;
    /// ACK JOURNAL: data = JournalAck of the last exported batch; drops the entries that
    /// batch showed CONFIRMED, VOID or WRITTEN_OFF.
    pub const ACK_JOURNAL: u8 = 0x42;
    /// VERIFY JOURNAL (issuer): data = JournalBatch of another SAM → JournalAck.
    pub const VERIFY_JOURNAL: u8 = 0x44;
    /// GET SETTLEMENT STATEMENT (issuer): data = sam_id (4) || nonce (16) →
    /// [`super::SettlementStatement`]: what VERIFY JOURNAL has settled for that SAM so far,
    /// signed by this SAM's attestation key.
    pub const GET_SETTLEMENT_STATEMENT: u8 = 0x46;
    /// WRITE OFF (issuer): data = sam_id (4) || the PENDING [`super::JournalEntry`] as
    /// that SAM holds it → [`super::WriteOff`]. Only for a sequence number this issuer SAM
    /// holds open for that SAM (692D otherwise); changes nothing.
    pub const WRITE_OFF: u8 = 0x48;
    /// APPLY WRITE OFF (the SAM whose journal holds the entry): data = [`super::WriteOff`];
    /// turns the PENDING entry WRITTEN_OFF, only if RESOLVE marked it unresolvable (6985
    /// otherwise).
    pub const APPLY_WRITE_OFF: u8 = 0x4A;
}

/// SAM application status words.
pub mod sw {
    use tessera_apdu::Sw;
    /// A ceiling (per load or per day) would be exceeded.
    pub const CEILING_EXCEEDED: Sw = Sw(0x6920);
    /// The SAM does not hold a key of the usage this command needs (wrong role).
    pub const KEY_NOT_HELD: Sw = Sw(0x6921);
    /// The journal is full: export and acknowledge it first.
    pub const JOURNAL_FULL: Sw = Sw(0x6922);
    /// No pending authorisation with that SAM transaction number for that purse.
    pub const NO_SUCH_TXN: Sw = Sw(0x6923);
    /// The card's cryptogram, receipt or proof does not verify.
    pub const CARD_PROOF_INVALID: Sw = Sw(0x6924);
    /// This purse ID was already personalised by this SAM.
    pub const ALREADY_PERSONALISED: Sw = Sw(0x6925);
    /// No purchase session (BEGIN PURCHASE not done, or reset since), or no resolve
    /// session covering the transaction (BEGIN RESOLVE not done since it was authorised).
    pub const NO_SESSION: Sw = Sw(0x6926);
    /// The chip certificate in a personalisation request does not chain to the
    /// manufacturer CA the issuer SAM trusts (malformed, other CA, bad signature, outside
    /// its validity at the request time, a CA certificate), or certifies another kind of
    /// chip (purse certificate for EXPORT SAM KEYS, SAM certificate for PERSONALISE PURSE).
    pub const CHIP_NOT_ATTESTED: Sw = Sw(0x6927);
    /// The subject ID inside the key-transport request is not the certified subject.
    pub const SUBJECT_MISMATCH: Sw = Sw(0x6928);
    /// The request's attestation signature does not verify with the certified key (not
    /// made by the certified chip, or over another ciphertext).
    pub const ATTESTATION_INVALID: Sw = Sw(0x6929);
    /// AUTHORIZE LOAD / PURCHASE: `terminal_time` is more than
    /// [`super::MAX_TIME_STEP`] seconds ahead of the latest time this SAM has accepted.
    pub const TIME_OUT_OF_RANGE: Sw = Sw(0x692A);
    /// VERIFY JOURNAL: the batch shows nothing this issuer SAM has not already settled
    /// (a replayed or stale batch), and it is not the last batch verified for that SAM
    /// (whose acknowledgement is re-issued).
    pub const ALREADY_SETTLED: Sw = Sw(0x692B);
    /// EXPORT SAM KEYS: this issuer SAM already exported keys for that SAM ID, for another
    /// key request (an identical request again gets the identical key blob again). Two
    /// SAMs with one ID would number their journals alike and collide at settlement.
    pub const SAM_ID_ALREADY_KEYED: Sw = Sw(0x692C);
    /// WRITE OFF: the sequence number is not open at this issuer SAM for that SAM (never
    /// shown or passed over by a batch it verified, or already settled in a final state).
    pub const NOT_OPEN: Sw = Sw(0x692D);
}

/// The largest step, in seconds, by which an authorisation's `terminal_time` may be ahead
/// of the latest time the SAM has accepted (7 days); see docs/applets/sam.md, *Ceilings*.
pub const MAX_TIME_STEP: u32 = 7 * 86_400;

/// EXPORT JOURNAL: the most final (CONFIRMED / VOID / WRITTEN_OFF) entries one batch
/// shows (a larger P1 is taken as this).
pub const EXPORT_FINAL_MAX: usize = 128;
/// EXPORT JOURNAL: the most PENDING entries one batch shows (those not yet shown in an
/// acknowledged batch, oldest first). With [`EXPORT_FINAL_MAX`], a batch holds at most 192
/// entries: 8 078 bytes.
pub const EXPORT_PENDING_MAX: usize = 64;

/// SAM roles.
pub mod role {
    /// Holds every master key and the RSA personalisation key; issues cards and SAMs.
    pub const ISSUER: u8 = 0x01;
    /// Holds the debit master key and its own journal key only.
    pub const TERMINAL: u8 = 0x02;
}

/// Journal entry status.
pub mod status {
    pub const PENDING: u8 = 0x00;
    pub const CONFIRMED: u8 = 0x01;
    pub const VOID: u8 = 0x02;
    /// Written off by the issuer (WRITE OFF / APPLY WRITE OFF): final, no value settled;
    /// the amount stays counted in the daily ceiling.
    pub const WRITTEN_OFF: u8 = 0x03;
}

pub mod tag {
    pub const JOURNAL_BATCH: u8 = 0x4A; // 'J'
    pub const JOURNAL_ACK: u8 = 0x41; // 'A'
    pub const WRITE_OFF: u8 = 0x57; // 'W'
}

/// Diversification input of a SAM's own journal key: sam_id || usage::JOURNAL.
pub fn journal_div_input(sam_id: &[u8; 4]) -> [u8; 5] {
    let mut d = [0u8; 5];
    d[..4].copy_from_slice(sam_id);
    d[4] = tessera_purse::wire::usage::JOURNAL;
    d
}

/// SAM installation parameters.
/// Layout: sam_id (4) | role (1) | pin_len (1) | pin | max_per_load u32 | max_per_day u32 |
/// journal_capacity u16 | spki_len u16 | spki (terminal: the issuer SAM's personalisation
/// public key; issuer: empty — an issuer SAM generates its master keys and its RSA-2048
/// personalisation key inside itself at installation) | ca_len u16 | chip_ca_cert (issuer:
/// the DER X.509 certificate of the chip manufacturer CA, its trust anchor for chip
/// attestation, required; terminal: empty). Every SAM also generates its RSA-2048
/// attestation key inside itself at installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamInstall {
    pub sam_id: [u8; 4],
    pub role: u8,
    pub pin: Vec<u8>,
    /// 0: no ceiling.
    pub max_per_load: u32,
    /// 0: no ceiling. Days are terminal_time / 86400 (UTC); the running total starts
    /// again only on a later day after a settlement (docs/applets/sam.md, *Ceilings*).
    pub max_per_day: u32,
    pub journal_capacity: u16,
    pub issuer_perso_spki: Vec<u8>,
    /// Issuer: DER certificate of the chip manufacturer CA. Terminal: empty.
    pub chip_ca_cert: Vec<u8>,
}

impl SamInstall {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.sam_id.to_vec();
        v.push(self.role);
        v.push(self.pin.len() as u8);
        v.extend_from_slice(&self.pin);
        v.extend_from_slice(&self.max_per_load.to_be_bytes());
        v.extend_from_slice(&self.max_per_day.to_be_bytes());
        v.extend_from_slice(&self.journal_capacity.to_be_bytes());
        tessera_purse::wire::put_u16_prefixed(&mut v, &self.issuer_perso_spki);
        tessera_purse::wire::put_u16_prefixed(&mut v, &self.chip_ca_cert);
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const M: &str = "SamInstall";
        let mut r = Reader::at_least(b, M, 4 + 1 + 1)?;
        let sam_id = r.bytes()?;
        let role = r.u8()?;
        if role != role::ISSUER && role != role::TERMINAL {
            return Err(WireError::Field {
                msg: M,
                field: "role",
            });
        }
        let pin_len = r.u8()? as usize;
        let rest = r.rest();
        let pin = rest
            .get(..pin_len)
            .ok_or(WireError::Field {
                msg: M,
                field: "pin",
            })?
            .to_vec();
        let mut r = Reader::at_least(rest.get(pin_len..).unwrap_or(&[]), M, 4 + 4 + 2 + 2)?;
        let max_per_load = r.u32()?;
        let max_per_day = r.u32()?;
        let journal_capacity = r.u16()?;
        let spki = r.u16_prefixed("spki")?;
        let chip_ca_cert = r.u16_prefixed("chip_ca_cert")?;
        r.finish()?;
        Ok(SamInstall {
            sam_id,
            role,
            pin,
            max_per_load,
            max_per_day,
            journal_capacity,
            issuer_perso_spki: spki,
            chip_ca_cert,
        })
    }
}

/// PERSONALISE PURSE data, and EXPORT SAM KEYS data after its role byte: what the issuer
/// SAM needs to check that a key-transport request comes from a genuine chip.
///
/// Layout: time u32 (Unix seconds, the host's clock: the issuer SAM has none; the chip
/// certificate and the manufacturer CA must be valid at this time) | cert_len u16 |
/// chip_cert (DER X.509 certificate of the chip's attestation key, issued by the
/// manufacturer CA: subject CN = upper-case hex of the purse ID / SAM ID, card-role
/// extension purse (2) / SAM (3)) | the chip's `AttestedKeyRequest` as it answered it
/// (ct_len u16 | ciphertext | sig_len u16 | signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonaliseRequest {
    pub time: u32,
    pub chip_cert: Vec<u8>,
    pub request: tessera_purse::wire::AttestedKeyRequest,
}

impl PersonaliseRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.time.to_be_bytes().to_vec();
        tessera_purse::wire::put_u16_prefixed(&mut v, &self.chip_cert);
        v.extend_from_slice(&self.request.encode());
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at_least(b, "PersonaliseRequest", 4 + 2 + 4)?;
        let time = r.u32()?;
        let chip_cert = r.u16_prefixed("chip_cert")?;
        let request = tessera_purse::wire::AttestedKeyRequest::decode(r.rest())?;
        Ok(PersonaliseRequest {
            time,
            chip_cert,
            request,
        })
    }
}

message!(
    /// BEGIN PURCHASE response (80 38 00 00 Le): opens a purchase session.
    BeginPurchase, 4 + 8, {
    sam_id: b4,
    sam_challenge: b8,
});

impl BeginPurchase {
    /// The purse's INIT PURCHASE for this session: the SAM's ID and challenge, which the
    /// card cryptogram of its answer then covers.
    pub fn init_purchase(&self) -> tessera_purse::wire::InitPurchase {
        tessera_purse::wire::InitPurchase {
            sam_id: self.sam_id,
            sam_challenge: self.sam_challenge,
        }
    }
}

message!(
    /// CONFIRM LOAD / CONFIRM PURCHASE data: the card's receipt for a pending
    /// authorisation. The SAM verifies it and journals the entry as confirmed. Confirming
    /// an already confirmed entry with the same proof answers 9000 again (idempotent).
    Confirm, 8 + 4 + 4 + 4 + 4 + 8, {
    purse_id: id,
    sam_txn: u32,
    counter: u32,
    amount: u32,
    balance_after: u32,
    proof: mac,
});

message!(
    /// BEGIN RESOLVE response (80 34 00 00 Le): opens a resolve session. The host puts
    /// `sam_challenge` in the purse's GET TRANSACTION STATUS query; RESOLVE accepts only
    /// statuses MACed over it, for entries authorised before this BEGIN RESOLVE.
    ResolveChallenge, 4 + 8, {
    sam_id: b4,
    sam_challenge: b8,
});

/// RESOLVE data: purse ID, key usage (01 load / 02 debit) and the purse's
/// GET TRANSACTION STATUS answer for (this SAM, sam_txn, the resolve session's challenge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolve {
    pub purse_id: PurseId,
    pub sam_txn: u32,
    pub key_usage: u8,
    pub status: tessera_purse::wire::TxnStatus,
}

impl Resolve {
    pub const LEN: usize = 8 + 4 + 1 + tessera_purse::wire::TxnStatus::LEN;
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.purse_id.to_vec();
        v.extend_from_slice(&self.sam_txn.to_be_bytes());
        v.push(self.key_usage);
        v.extend_from_slice(&self.status.encode());
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b, "Resolve", Self::LEN)?;
        let purse_id = r.bytes()?;
        let sam_txn = r.u32()?;
        let key_usage = r.u8()?;
        let status = tessera_purse::wire::TxnStatus::decode(r.rest())?;
        Ok(Resolve {
            purse_id,
            sam_txn,
            key_usage,
            status,
        })
    }
}

message!(
    /// One journal entry (its sequence number is the SAM transaction number).
    JournalEntry, 4 + 1 + 1 + 8 + 4 + 4 + 4 + 4 + 4 + 8, {
    seq: u32,
    kind: u8,
    status: u8,
    purse_id: id,
    amount: u32,
    counter: u32,
    balance_after: u32,
    terminal_id: b4,
    terminal_time: u32,
    proof: mac,
});

/// EXPORT JOURNAL response: sam_id (4) | count u16 | entries | MAC (8), MAC =
/// AES-CMAC(K_journal(sam), `4A` || every preceding byte)[..8], with K_journal(sam) =
/// AN10922(M_journal, sam_id || 06).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalBatch {
    pub sam_id: [u8; 4],
    pub entries: Vec<JournalEntry>,
    pub mac: Mac,
}

impl JournalBatch {
    pub fn mac_body(&self) -> Vec<u8> {
        let mut v = self.sam_id.to_vec();
        v.extend_from_slice(&(self.entries.len() as u16).to_be_bytes());
        for e in &self.entries {
            v.extend_from_slice(&e.encode());
        }
        v
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.mac_body();
        v.extend_from_slice(&self.mac);
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const M: &str = "JournalBatch";
        let mut r = Reader::at_least(b, M, 4 + 2 + MAC_LEN)?;
        let sam_id = r.bytes()?;
        let count = r.u16()? as usize;
        let expected = 6 + count * JournalEntry::LEN + MAC_LEN;
        if b.len() != expected {
            return Err(WireError::Length {
                msg: M,
                expected,
                got: b.len(),
            });
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let e = r.bytes::<{ JournalEntry::LEN }>()?;
            entries.push(JournalEntry::decode(&e)?);
        }
        let mac = r.bytes()?;
        Ok(JournalBatch {
            sam_id,
            entries,
            mac,
        })
    }
    /// The entries the batch shows CONFIRMED, VOID or WRITTEN_OFF (what its ack drops), in
    /// order.
    pub fn final_entries(&self) -> Vec<JournalEntry> {
        self.entries
            .iter()
            .filter(|e| e.status != status::PENDING)
            .cloned()
            .collect()
    }
    /// The last sequence number in the batch (0 for an empty batch).
    pub fn last_seq(&self) -> u32 {
        self.entries.iter().map(|e| e.seq).max().unwrap_or(0)
    }
}

message!(
    /// ACK JOURNAL data, produced by the issuer SAM's VERIFY JOURNAL for one batch:
    /// sam_id (4) | last_seq u32 | batch_mac (8, the acknowledged batch's MAC) | mac (8),
    /// mac = AES-CMAC(K_journal(sam), `41` || sam_id || last_seq || batch_mac)[..8]. The
    /// exporting SAM accepts it only for the batch it exported last (same MAC and
    /// last_seq) and drops exactly the entries that batch showed in a final state.
    JournalAck, 4 + 4 + 8 + 8, {
    sam_id: b4,
    last_seq: u32,
    batch_mac: mac,
    mac: mac,
});

message!(
    /// WRITE OFF response, APPLY WRITE OFF data: the issuer's authorisation to turn the
    /// PENDING entry `seq` of SAM `sam_id` WRITTEN_OFF. mac = AES-CMAC(K_journal(sam_id),
    /// [`write_off_mac_input`])[..8]: it covers the whole entry (status PENDING), not only
    /// the fields carried here.
    WriteOff, 4 + 4 + 8 + 4 + 4 + 8, {
    sam_id: b4,
    seq: u32,
    purse_id: id,
    counter: u32,
    amount: u32,
    mac: mac,
});

/// Bytes covered by a [`WriteOff`] MAC: `57` || sam_id || the PENDING entry as
/// [`JournalEntry::encode`]d (JournalEntry::LEN bytes).
pub fn write_off_mac_input(sam_id: &[u8; 4], entry: &JournalEntry) -> Vec<u8> {
    let mut v = vec![tag::WRITE_OFF];
    v.extend_from_slice(sam_id);
    v.extend_from_slice(&entry.encode());
    v
}

/// Bytes covered by a [`JournalBatch`] MAC: `4A` || [`JournalBatch::mac_body`].
pub fn journal_batch_mac_input(batch: &JournalBatch) -> Vec<u8> {
    let mut v = vec![tag::JOURNAL_BATCH];
    v.extend_from_slice(&batch.mac_body());
    v
}

/// Bytes covered by a [`JournalAck`] MAC: `41` || sam_id || last_seq || batch_mac.
pub fn journal_ack_mac_input(sam_id: &[u8; 4], last_seq: u32, batch_mac: &Mac) -> Vec<u8> {
    let mut v = vec![tag::JOURNAL_ACK];
    v.extend_from_slice(sam_id);
    v.extend_from_slice(&last_seq.to_be_bytes());
    v.extend_from_slice(batch_mac);
    v
}

/// Prefix of the bytes a [`SettlementStatement`] signature covers (domain separation from
/// the key-request signatures of the same attestation key).
pub const SETTLEMENT_STATEMENT_TAG: &[u8] = b"TSRA-SETTLEMENT-STATEMENT-V2";
/// Prefix of each step of the settlement chain ([`settlement_chain_next`]).
pub const SETTLEMENT_CHAIN_TAG: &[u8] = b"TSRA-SETTLEMENT-CHAIN-V1";

/// One step of the settlement chain an issuer SAM keeps per exporting SAM: after the k-th
/// batch VERIFY JOURNAL settled for it, chain_k = SHA-256(`TSRA-SETTLEMENT-CHAIN-V1` ||
/// chain_(k-1) || [`JournalBatch::mac_body`] || batch MAC), chain_0 = 32 zero bytes. The
/// chain commits to the ordered list of settled batches, every entry included: a back end
/// holding every settlement record recomputes it exactly, and one missing, added, replaced
/// or altered record changes it.
pub fn settlement_chain_next(prev: &[u8; 32], batch: &JournalBatch) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(SETTLEMENT_CHAIN_TAG);
    h.update(prev);
    h.update(batch.mac_body());
    h.update(batch.mac);
    h.finalize().into()
}

/// What an issuer SAM has settled for one exporting SAM: counts and sums of the entries
/// settled, each counted once, when a verified batch first showed it CONFIRMED, VOID or
/// WRITTEN_OFF, and
/// the settlement chain over the batches. Kept by the SAM (record `S/`), signed in a
/// [`SettlementStatement`], recomputed from the records by a back end.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SettledSums {
    /// Batches VERIFY JOURNAL accepted (the chain's length); a batch of new PENDING
    /// entries only counts too (it moves `hwm`).
    pub batches: u32,
    /// CONFIRMED purchases settled, and their amounts.
    pub purchases: u32,
    pub purchases_total: u64,
    /// CONFIRMED loads settled, and their amounts.
    pub loads: u32,
    pub loads_total: u64,
    /// VOID entries settled (no value moved).
    pub voids: u32,
    /// The settlement chain after the last batch ([`settlement_chain_next`]).
    pub chain: [u8; 32],
    /// WRITTEN_OFF loads settled, and their amounts: loads nobody could prove applied or
    /// not. The scheme's rule (docs/value-protocol.md) charges them to the loading
    /// terminal's operator as if applied.
    /// The write-off fields come last so that the `S/` record of the layout before them
    /// is a strict prefix of this one.
    pub written_off_loads: u32,
    pub written_off_loads_total: u64,
    /// WRITTEN_OFF purchases settled, and their amounts: not paid to the merchant (a
    /// written-off purchase the purse did apply is float the issuer holds).
    pub written_off_purchases: u32,
    pub written_off_purchases_total: u64,
}

impl SettledSums {
    /// Add one settled batch: the chain step, and the final entries for which `newly`
    /// holds (each sequence number once, should a batch repeat one).
    pub fn add_batch(&mut self, batch: &JournalBatch, newly: impl Fn(&JournalEntry) -> bool) {
        let mut counted: Vec<u32> = Vec::new();
        for e in &batch.entries {
            if e.status == status::PENDING || !newly(e) {
                continue;
            }
            match counted.binary_search(&e.seq) {
                Ok(_) => continue,
                Err(at) => counted.insert(at, e.seq),
            }
            let amount = u64::from(e.amount);
            if e.status == status::VOID {
                self.voids = self.voids.saturating_add(1);
            } else if e.status == status::WRITTEN_OFF {
                if e.kind == tessera_purse::wire::kind::LOAD {
                    self.written_off_loads = self.written_off_loads.saturating_add(1);
                    self.written_off_loads_total =
                        self.written_off_loads_total.saturating_add(amount);
                } else {
                    self.written_off_purchases = self.written_off_purchases.saturating_add(1);
                    self.written_off_purchases_total =
                        self.written_off_purchases_total.saturating_add(amount);
                }
            } else if e.kind == tessera_purse::wire::kind::LOAD {
                self.loads = self.loads.saturating_add(1);
                self.loads_total = self.loads_total.saturating_add(amount);
            } else {
                self.purchases = self.purchases.saturating_add(1);
                self.purchases_total = self.purchases_total.saturating_add(amount);
            }
        }
        self.batches = self.batches.saturating_add(1);
        self.chain = settlement_chain_next(&self.chain, batch);
    }
}

/// The signed body of a [`SettlementStatement`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettlementTotals {
    /// The exporting SAM.
    pub sam_id: [u8; 4],
    /// The requester's nonce, echoed (freshness).
    pub nonce: [u8; 16],
    pub sums: SettledSums,
    /// Highest sequence number shown by a verified batch.
    pub hwm: u32,
    /// Sequence numbers up to `hwm` not yet settled (shown PENDING, or not yet shown).
    pub open: u32,
}

impl SettlementTotals {
    /// Encoded length: 4 + 16 + 4 + 4 + 8 + 4 + 8 + 4 + 4 + 8 + 4 + 8 + 4 + 4 + 32.
    pub const LEN: usize = 116;

    /// sam_id | nonce | batches | purchases | purchases_total u64 | loads | loads_total u64
    /// | voids | written_off_loads | written_off_loads_total u64 | written_off_purchases |
    /// written_off_purchases_total u64 | hwm | open | chain (32), integers big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let m = &self.sums;
        let mut v = Vec::with_capacity(Self::LEN);
        v.extend_from_slice(&self.sam_id);
        v.extend_from_slice(&self.nonce);
        v.extend_from_slice(&m.batches.to_be_bytes());
        v.extend_from_slice(&m.purchases.to_be_bytes());
        v.extend_from_slice(&m.purchases_total.to_be_bytes());
        v.extend_from_slice(&m.loads.to_be_bytes());
        v.extend_from_slice(&m.loads_total.to_be_bytes());
        v.extend_from_slice(&m.voids.to_be_bytes());
        v.extend_from_slice(&m.written_off_loads.to_be_bytes());
        v.extend_from_slice(&m.written_off_loads_total.to_be_bytes());
        v.extend_from_slice(&m.written_off_purchases.to_be_bytes());
        v.extend_from_slice(&m.written_off_purchases_total.to_be_bytes());
        v.extend_from_slice(&self.hwm.to_be_bytes());
        v.extend_from_slice(&self.open.to_be_bytes());
        v.extend_from_slice(&m.chain);
        v
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let u64_ = |r: &mut Reader<'_>| r.bytes::<8>().map(u64::from_be_bytes);
        let sam_id = r.bytes()?;
        let nonce = r.bytes()?;
        let batches = r.u32()?;
        let purchases = r.u32()?;
        let purchases_total = u64_(r)?;
        let loads = r.u32()?;
        let loads_total = u64_(r)?;
        let voids = r.u32()?;
        let written_off_loads = r.u32()?;
        let written_off_loads_total = u64_(r)?;
        let written_off_purchases = r.u32()?;
        let written_off_purchases_total = u64_(r)?;
        let hwm = r.u32()?;
        let open = r.u32()?;
        let chain = r.bytes()?;
        Ok(SettlementTotals {
            sam_id,
            nonce,
            sums: SettledSums {
                batches,
                purchases,
                purchases_total,
                loads,
                loads_total,
                voids,
                chain,
                written_off_loads,
                written_off_loads_total,
                written_off_purchases,
                written_off_purchases_total,
            },
            hwm,
            open,
        })
    }
}

/// Bytes a [`SettlementStatement`] signature covers: [`SETTLEMENT_STATEMENT_TAG`] ||
/// issuer SAM ID (4) || [`SettlementTotals::encode`].
pub fn settlement_statement_signed_input(issuer_id: &[u8; 4], t: &SettlementTotals) -> Vec<u8> {
    let mut v = SETTLEMENT_STATEMENT_TAG.to_vec();
    v.extend_from_slice(issuer_id);
    v.extend_from_slice(&t.encode());
    v
}

/// GET SETTLEMENT STATEMENT response: issuer_id (4) | [`SettlementTotals`] (116) | sig_len
/// u16 | signature (RSASSA-PKCS1-v1_5 SHA-256 by the issuer SAM's attestation key over
/// [`settlement_statement_signed_input`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementStatement {
    /// The issuer SAM that signed it.
    pub issuer_id: [u8; 4],
    pub totals: SettlementTotals,
    pub signature: Vec<u8>,
}

impl SettlementStatement {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.issuer_id.to_vec();
        v.extend_from_slice(&self.totals.encode());
        v.extend_from_slice(&(self.signature.len() as u16).to_be_bytes());
        v.extend_from_slice(&self.signature);
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const M: &str = "SettlementStatement";
        let mut r = Reader::at_least(b, M, 4 + SettlementTotals::LEN + 2)?;
        let issuer_id = r.bytes()?;
        let totals = SettlementTotals::read(&mut r)?;
        let n = usize::from(r.u16()?);
        let expected = 4 + SettlementTotals::LEN + 2 + n;
        if b.len() != expected {
            return Err(WireError::Length {
                msg: M,
                expected,
                got: b.len(),
            });
        }
        Ok(SettlementStatement {
            issuer_id,
            totals,
            signature: r.rest().to_vec(),
        })
    }
    /// The bytes the signature covers.
    pub fn signed_input(&self) -> Vec<u8> {
        settlement_statement_signed_input(&self.issuer_id, &self.totals)
    }
}

/// GET SAM DATA response: sam_id (4) | role (1) | unlocked (1) | sam_txn u32 (last used) |
/// journal_count u16 | pending_count u16 | journal_capacity u16 | max_per_load u32 |
/// max_per_day u32 | day u32 | day_total u32 | key_count (1) | key_count × (usage, number,
/// version, master).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamData {
    pub sam_id: [u8; 4],
    pub role: u8,
    pub unlocked: bool,
    pub sam_txn: u32,
    pub journal_count: u16,
    pub pending_count: u16,
    pub journal_capacity: u16,
    pub max_per_load: u32,
    pub max_per_day: u32,
    pub day: u32,
    pub day_total: u32,
    pub keys: Vec<tessera_purse::wire::KeyEntry>,
}

impl SamData {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.sam_id.to_vec();
        v.push(self.role);
        v.push(u8::from(self.unlocked));
        v.extend_from_slice(&self.sam_txn.to_be_bytes());
        v.extend_from_slice(&self.journal_count.to_be_bytes());
        v.extend_from_slice(&self.pending_count.to_be_bytes());
        v.extend_from_slice(&self.journal_capacity.to_be_bytes());
        v.extend_from_slice(&self.max_per_load.to_be_bytes());
        v.extend_from_slice(&self.max_per_day.to_be_bytes());
        v.extend_from_slice(&self.day.to_be_bytes());
        v.extend_from_slice(&self.day_total.to_be_bytes());
        v.push(self.keys.len() as u8);
        for k in &self.keys {
            v.extend_from_slice(&[k.usage, k.number, k.version, u8::from(k.master)]);
        }
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const M: &str = "SamData";
        let mut r = Reader::at_least(b, M, 4 + 1 + 1 + 4 + 2 + 2 + 2 + 4 + 4 + 4 + 4 + 1)?;
        let sam_id = r.bytes()?;
        let role = r.u8()?;
        let unlocked = r.u8()? == 1;
        let sam_txn = r.u32()?;
        let journal_count = r.u16()?;
        let pending_count = r.u16()?;
        let journal_capacity = r.u16()?;
        let max_per_load = r.u32()?;
        let max_per_day = r.u32()?;
        let day = r.u32()?;
        let day_total = r.u32()?;
        let n = r.u8()? as usize;
        let rest = r.rest();
        if rest.len() != n * 4 {
            return Err(WireError::Length {
                msg: M,
                expected: b.len() - rest.len() + n * 4,
                got: b.len(),
            });
        }
        let keys = rest
            .chunks_exact(4)
            .map(|c| match c {
                [usage, number, version, master] => tessera_purse::wire::KeyEntry {
                    usage: *usage,
                    number: *number,
                    version: *version,
                    master: *master == 1,
                },
                _ => tessera_purse::wire::KeyEntry {
                    usage: 0,
                    number: 0,
                    version: 0,
                    master: false,
                },
            })
            .collect();
        Ok(SamData {
            sam_id,
            role,
            unlocked,
            sam_txn,
            journal_count,
            pending_count,
            journal_capacity,
            max_per_load,
            max_per_day,
            day,
            day_total,
            keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_round_trip() {
        let p = SamInstall {
            sam_id: [0, 0, 0, 7],
            role: role::TERMINAL,
            pin: b"0000".to_vec(),
            max_per_load: 0,
            max_per_day: 50_000,
            journal_capacity: 1000,
            issuer_perso_spki: vec![1, 2, 3],
            chip_ca_cert: vec![4, 5],
        };
        assert_eq!(SamInstall::decode(&p.encode()), Ok(p.clone()));
        assert!(SamInstall::decode(&[0, 0, 0, 7, 9, 0]).is_err());
        let mut long = p.encode();
        long.push(0);
        assert!(SamInstall::decode(&long).is_err());
        let mut short = p.encode();
        short.pop();
        assert!(SamInstall::decode(&short).is_err());
    }

    #[test]
    fn personalise_request_round_trip_and_length_checks() {
        let r = PersonaliseRequest {
            time: 1_700_000_000,
            chip_cert: vec![0x30; 700],
            request: tessera_purse::wire::AttestedKeyRequest {
                ciphertext: vec![1; 256],
                signature: vec![2; 256],
            },
        };
        let b = r.encode();
        assert_eq!(b.len(), 4 + 2 + 700 + 2 + 256 + 2 + 256);
        assert_eq!(PersonaliseRequest::decode(&b), Ok(r));
        assert!(PersonaliseRequest::decode(&b[..b.len() - 1]).is_err());
        let mut long = b.clone();
        long.push(0);
        assert!(PersonaliseRequest::decode(&long).is_err());
        assert!(PersonaliseRequest::decode(&[0; 9]).is_err());
        // A bare OAEP ciphertext (the pre-attestation request) does not decode.
        assert!(PersonaliseRequest::decode(&[7; 256]).is_err());
    }

    #[test]
    fn batch_round_trip_and_length_check() {
        let e = JournalEntry {
            seq: 1,
            kind: 2,
            status: status::CONFIRMED,
            purse_id: [1; 8],
            amount: 250,
            counter: 4,
            balance_after: 750,
            terminal_id: [0, 0, 0, 1],
            terminal_time: 1_700_000_000,
            proof: [7; 8],
        };
        let b = JournalBatch {
            sam_id: [0, 0, 0, 2],
            entries: vec![e.clone(), e],
            mac: [3; 8],
        };
        let bytes = b.encode();
        assert_eq!(bytes.len(), 6 + 2 * JournalEntry::LEN + 8);
        assert_eq!(JournalBatch::decode(&bytes), Ok(b));
        assert!(JournalBatch::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn settlement_statement_layout() {
        let t = SettlementTotals {
            sam_id: [0, 0, 0, 2],
            nonce: [7; 16],
            sums: SettledSums {
                batches: 3,
                purchases: 4,
                purchases_total: 0x0102_0304_0506,
                loads: 1,
                loads_total: 9,
                voids: 2,
                chain: [0xC5; 32],
                written_off_loads: 5,
                written_off_loads_total: 0x0A0B,
                written_off_purchases: 6,
                written_off_purchases_total: 0x0C0D,
            },
            hwm: 11,
            open: 1,
        };
        assert_eq!(t.encode().len(), SettlementTotals::LEN);
        let st = SettlementStatement {
            issuer_id: [0, 0, 0, 1],
            totals: t,
            signature: vec![0xAB; 256],
        };
        let bytes = st.encode();
        assert_eq!(bytes.len(), 4 + 116 + 2 + 256);
        assert_eq!(bytes.len(), 378);
        // purchases_total is big-endian at offset 4 + 4 + 16 + 4 + 4.
        assert_eq!(&bytes[32..40], &[0, 0, 1, 2, 3, 4, 5, 6]);
        // The write-off counts and totals, loads then purchases, follow voids (offset
        // 4 + 52), before hwm.
        assert_eq!(&bytes[56..60], &[0, 0, 0, 5]);
        assert_eq!(&bytes[60..68], &[0, 0, 0, 0, 0, 0, 0x0A, 0x0B]);
        assert_eq!(&bytes[68..72], &[0, 0, 0, 6]);
        assert_eq!(&bytes[72..80], &[0, 0, 0, 0, 0, 0, 0x0C, 0x0D]);
        assert_eq!(&bytes[80..84], &[0, 0, 0, 11]);
        assert_eq!(SettlementStatement::decode(&bytes), Ok(st.clone()));
        assert!(SettlementStatement::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(SettlementStatement::decode(&long).is_err());
        assert!(
            st.signed_input()
                .starts_with(b"TSRA-SETTLEMENT-STATEMENT-V2\0\0\0\x01")
        );
    }

    #[test]
    fn settlement_chain_is_sha256_of_the_documented_bytes() {
        use sha2::Digest;
        let batch = JournalBatch {
            sam_id: [0, 0, 0, 2],
            entries: vec![],
            mac: [1, 2, 3, 4, 5, 6, 7, 8],
        };
        let mut input = b"TSRA-SETTLEMENT-CHAIN-V1".to_vec();
        input.extend_from_slice(&[0; 32]);
        // mac_body of an empty batch: sam_id || count (u16 0).
        input.extend_from_slice(&[0, 0, 0, 2, 0, 0]);
        input.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let want: [u8; 32] = sha2::Sha256::digest(&input).into();
        assert_eq!(settlement_chain_next(&[0; 32], &batch), want);
    }

    #[test]
    fn ack_layout_and_mac_input_cover_the_batch_mac() {
        let a = JournalAck {
            sam_id: [0, 0, 0, 2],
            last_seq: 0x0102_0304,
            batch_mac: [0xB0; 8],
            mac: [0xA0; 8],
        };
        let b = a.encode();
        assert_eq!(b.len(), 24);
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
        assert_eq!(&b[8..16], &[0xB0; 8]);
        assert_eq!(JournalAck::decode(&b), Ok(a));
        let m1 = journal_ack_mac_input(&[0, 0, 0, 2], 7, &[1; 8]);
        assert_eq!(m1.len(), 1 + 4 + 4 + 8);
        assert_ne!(m1, journal_ack_mac_input(&[0, 0, 0, 2], 7, &[2; 8]));
    }
}
