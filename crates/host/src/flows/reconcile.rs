//! Reconciliation: check a back end's settlement records for one SAM against what the
//! issuer SAM itself has settled (docs/value-protocol.md, *Reconciliation*).
//!
//! The issuer SAM keeps, per exporting SAM, running totals and a hash chain over every
//! batch VERIFY JOURNAL settled ([`sw_::settlement_chain_next`]), and signs them on request
//! (GET SETTLEMENT STATEMENT) with its attestation key. Each settlement record carries the
//! statement made right after its batch. [`reconcile`] replays the records in that order,
//! recomputes the chain and the totals, and compares them with each record's statement and
//! with a fresh statement: a record missing, added, replaced or altered by whoever keeps
//! them is found, and the message says where.

use super::VerifiedBatch;
use serde::Serialize;
use std::time::SystemTime;
use tessera_crypto::rsa::RsaPublicKey;
use tessera_crypto::x509::{self, CardRole, RevocationList};
use tessera_sam::wire::{SettledSums, SettlementStatement};

/// Why settlement records do not reconcile (or could not be checked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    /// The issuer SAM's attestation certificate does not verify.
    #[error("issuer SAM attestation certificate: {0}")]
    Certificate(String),
    /// A statement's signature does not verify with the issuer SAM's attestation key.
    #[error("{what}: the signature does not verify with the issuer SAM's attestation key")]
    BadSignature { what: String },
    /// The fresh statement does not echo the nonce sent (replayed or for another request).
    #[error("the issuer SAM's statement does not echo the nonce sent (replayed?)")]
    StaleStatement,
    /// A statement or record about another SAM, or signed by another issuer SAM.
    #[error(
        "{what} is about SAM {got} / issuer {got_issuer}, expected SAM {want} / issuer {want_issuer}"
    )]
    WrongSam {
        what: String,
        got: String,
        got_issuer: String,
        want: String,
        want_issuer: String,
    },
    /// A record is not self-consistent (its ack does not name its batch).
    #[error("{what}: {why}")]
    BadRecord { what: String, why: String },
    /// The records do not reproduce what the issuer SAM settled.
    #[error("settlement records do not match the issuer SAM: {0}")]
    Mismatch(String),
}

/// A successful reconciliation: the records account for everything the issuer SAM
/// settled for the SAM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    #[serde(serialize_with = "super::hex_ser")]
    pub sam_id: [u8; 4],
    /// Batches (records), counts and sums settled, and the chain both sides agree on.
    #[serde(flatten, serialize_with = "sums_ser")]
    pub sums: SettledSums,
    /// Highest sequence number settled, and the ones at or below it not yet settled.
    pub hwm: u32,
    pub open: u32,
    /// Records of batches verified before the issuer SAM kept statements (their statement
    /// shows no batch): not part of the chain, so not checked.
    pub pre_statement: u32,
}

fn sums_ser<S: serde::Serializer>(m: &SettledSums, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(11))?;
    map.serialize_entry("batches", &m.batches)?;
    map.serialize_entry("purchases", &m.purchases)?;
    map.serialize_entry("purchases_total", &m.purchases_total)?;
    map.serialize_entry("loads", &m.loads)?;
    map.serialize_entry("loads_total", &m.loads_total)?;
    map.serialize_entry("voids", &m.voids)?;
    map.serialize_entry("written_off_loads", &m.written_off_loads)?;
    map.serialize_entry("written_off_loads_total", &m.written_off_loads_total)?;
    map.serialize_entry("written_off_purchases", &m.written_off_purchases)?;
    map.serialize_entry(
        "written_off_purchases_total",
        &m.written_off_purchases_total,
    )?;
    map.serialize_entry("chain", &hex::encode_upper(m.chain))?;
    map.end()
}

/// The issuer SAM's attestation public key, from its certificate (DER) checked against the
/// chip manufacturer CA certificate (DER) at `now`: a SAM certificate whose subject is
/// `issuer_id`.
pub fn issuer_statement_key(
    cert_der: &[u8],
    manufacturer_ca_der: &[u8],
    issuer_id: &[u8; 4],
    now: SystemTime,
) -> Result<RsaPublicKey, ReconcileError> {
    let bad = |e: x509::X509Error| ReconcileError::Certificate(e.to_string());
    let cert = x509::parse(cert_der).map_err(bad)?;
    let anchor = x509::parse(manufacturer_ca_der).map_err(bad)?;
    let v = x509::verify_chain(&[cert], &anchor, now, &RevocationList::new()).map_err(bad)?;
    if v.role != CardRole::Sam {
        return Err(ReconcileError::Certificate(format!(
            "it certifies a {:?}, not a SAM",
            v.role
        )));
    }
    let want = hex::encode_upper(issuer_id);
    if v.card_id != want {
        return Err(ReconcileError::Certificate(format!(
            "it certifies SAM {}, not the issuer SAM {want}",
            v.card_id
        )));
    }
    Ok(v.public_key)
}

/// Check a statement's signature and that it is about `sam_id`, signed by `issuer_id`.
fn check_statement(
    what: &str,
    st: &SettlementStatement,
    key: &RsaPublicKey,
    issuer_id: &[u8; 4],
    sam_id: &[u8; 4],
) -> Result<(), ReconcileError> {
    if st.issuer_id != *issuer_id || st.totals.sam_id != *sam_id {
        return Err(ReconcileError::WrongSam {
            what: what.into(),
            got: hex::encode_upper(st.totals.sam_id),
            got_issuer: hex::encode_upper(st.issuer_id),
            want: hex::encode_upper(sam_id),
            want_issuer: hex::encode_upper(issuer_id),
        });
    }
    key.verify_pkcs1v15_sha256(&st.signed_input(), &st.signature)
        .map_err(|_| ReconcileError::BadSignature { what: what.into() })
}

/// Where two accounts differ (the nonce, `hwm` and `open` aside: only the SAM knows those
/// beyond the entries shown).
fn agree(a: &SettledSums, b: &SettledSums) -> Option<String> {
    let pairs = [
        ("batches", u64::from(a.batches), u64::from(b.batches)),
        ("purchases", u64::from(a.purchases), u64::from(b.purchases)),
        ("purchase total", a.purchases_total, b.purchases_total),
        ("loads", u64::from(a.loads), u64::from(b.loads)),
        ("load total", a.loads_total, b.loads_total),
        ("voids", u64::from(a.voids), u64::from(b.voids)),
        (
            "loads written off",
            u64::from(a.written_off_loads),
            u64::from(b.written_off_loads),
        ),
        (
            "load write-off total",
            a.written_off_loads_total,
            b.written_off_loads_total,
        ),
        (
            "purchases written off",
            u64::from(a.written_off_purchases),
            u64::from(b.written_off_purchases),
        ),
        (
            "purchase write-off total",
            a.written_off_purchases_total,
            b.written_off_purchases_total,
        ),
    ];
    for (name, x, y) in pairs {
        if x != y {
            return Some(format!("{name}: records {x}, issuer SAM {y}"));
        }
    }
    if a.chain != b.chain {
        return Some("settlement chain differs (a record was altered or replaced)".into());
    }
    None
}

/// Reconcile the settlement `records` of SAM `sam_id` with `fresh`, a statement the
/// issuer SAM `issuer_id` made just now for `nonce`; `key` is its attestation key
/// ([`issuer_statement_key`]). The records may come in any order and the same record may
/// appear twice (a batch whose ack was lost is stored again).
pub fn reconcile(
    records: &[VerifiedBatch],
    fresh: &SettlementStatement,
    nonce: &[u8; 16],
    key: &RsaPublicKey,
    issuer_id: &[u8; 4],
    sam_id: &[u8; 4],
) -> Result<ReconcileReport, ReconcileError> {
    check_statement("the issuer SAM's statement", fresh, key, issuer_id, sam_id)?;
    if fresh.totals.nonce != *nonce {
        return Err(ReconcileError::StaleStatement);
    }
    // Check each record on its own, then order them by the batch number their statement
    // gives.
    let mut ordered: Vec<&VerifiedBatch> = Vec::with_capacity(records.len());
    let mut pre_statement = 0u32;
    for r in records {
        let what = format!(
            "record of batch {} (last seq {}, MAC {})",
            r.statement.totals.sums.batches,
            r.ack.last_seq,
            hex::encode_upper(r.batch.mac)
        );
        check_statement(&what, &r.statement, key, issuer_id, sam_id)?;
        if r.batch.sam_id != *sam_id || r.ack.sam_id != *sam_id {
            return Err(ReconcileError::BadRecord {
                what,
                why: "its batch or ack is of another SAM".into(),
            });
        }
        if r.ack.batch_mac != r.batch.mac || r.ack.last_seq != r.batch.last_seq() {
            return Err(ReconcileError::BadRecord {
                what,
                why: "its ack does not acknowledge its batch".into(),
            });
        }
        if r.settled != r.batch.final_entries() {
            return Err(ReconcileError::BadRecord {
                what,
                why: "its list of settled entries is not its batch's final entries".into(),
            });
        }
        if r.statement.totals.sums.batches == 0 {
            // Verified by an issuer SAM before it kept statements (an `S/` record of the
            // old layout, repeated after a lost ack): outside the chain, not checked.
            pre_statement += 1;
            continue;
        }
        ordered.push(r);
    }
    ordered.sort_by_key(|r| r.statement.totals.sums.batches);
    // The same batch stored twice (its ack was lost and the run repeated; its statements
    // differ only by their nonces) counts once. Two different records for one batch
    // number: one of them is not what the issuer SAM settled.
    let mut unique: Vec<&VerifiedBatch> = Vec::with_capacity(ordered.len());
    for r in ordered {
        if let Some(prev) = unique.last() {
            let n = r.statement.totals.sums.batches;
            if prev.statement.totals.sums.batches == n {
                if prev.batch == r.batch && prev.ack == r.ack {
                    continue;
                }
                return Err(ReconcileError::Mismatch(format!(
                    "two different records claim batch {n}"
                )));
            }
        }
        unique.push(r);
    }
    let ordered = unique;

    let mut t = SettledSums::default();
    for (i, r) in ordered.iter().enumerate() {
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let got = r.statement.totals.sums.batches;
        if got != n {
            return Err(ReconcileError::Mismatch(if got > n {
                format!("the record of batch {n} is missing (the next record is batch {got})")
            } else {
                format!("two different records claim batch {got}")
            }));
        }
        // The settled entries are the batch's final ones (the batch MAC and the chain
        // cover them; the record's own list is not trusted).
        t.add_batch(&r.batch, |_| true);
        if let Some(diff) = agree(&t, &r.statement.totals.sums) {
            return Err(ReconcileError::Mismatch(format!(
                "at batch {n} (last seq {}): {diff}",
                r.ack.last_seq
            )));
        }
    }
    let f = &fresh.totals;
    if f.sums.batches > t.batches {
        return Err(ReconcileError::Mismatch(format!(
            "the issuer SAM settled {} batches, the records end at batch {}: {} record(s) missing",
            f.sums.batches,
            t.batches,
            f.sums.batches - t.batches
        )));
    }
    if let Some(diff) = agree(&t, &f.sums) {
        return Err(ReconcileError::Mismatch(diff));
    }
    Ok(ReconcileReport {
        sam_id: *sam_id,
        sums: t,
        hwm: f.hwm,
        open: f.open,
        pre_statement,
    })
}
