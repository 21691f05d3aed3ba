//! Reconciliation of settlement records with the issuer SAM's signed statements: a
//! complete set reconciles; a record missing, added, altered or of another SAM, a forged
//! statement and a replayed one are each found.

mod common;
use common::{ISSUER, TERMINAL, load, pay, settle, try_load};

use std::sync::OnceLock;
use std::time::SystemTime;
use tessera_crypto::rsa::RsaPublicKey;
use tessera_host::clients::SamClient;
use tessera_host::flows::kit::{self, PurseParams, World, WorldImages};
use tessera_host::flows::reconcile::{self, ReconcileError};
use tessera_host::flows::{self, VerifiedBatch};
use tessera_sam::wire::{self as sw_, SettlementStatement};

fn images() -> &'static WorldImages {
    static W: OnceLock<WorldImages> = OnceLock::new();
    W.get_or_init(|| World::new(1, &PurseParams::default()).unwrap().images())
}

/// Three settlement rounds (payments 100+200, 300, 400+500+600) and the issuer SAM's key.
fn scenario() -> (World, Vec<VerifiedBatch>, RsaPublicKey) {
    let mut w = images().restore().unwrap();
    load(&mut w, 5_000);
    let mut records = Vec::new();
    for round in [&[100u32, 200][..], &[300], &[400, 500, 600]] {
        for &a in round {
            pay(&mut w, a);
        }
        settle(&mut w, &mut records);
    }
    // The factory certifies the issuer SAM's attestation key, as for any SAM.
    let now = SystemTime::now();
    let cert = kit::certify_sam(&mut w.issuer, &w.manufacturer, now).unwrap();
    let key =
        reconcile::issuer_statement_key(&cert, w.manufacturer.cert_der(), &ISSUER, now).unwrap();
    (w, records, key)
}

fn fresh(w: &mut World, nonce: &[u8; 16]) -> SettlementStatement {
    SamClient::new(&mut w.issuer)
        .settlement_statement(&TERMINAL, nonce)
        .unwrap()
}

fn check(
    w: &mut World,
    records: &[VerifiedBatch],
    key: &RsaPublicKey,
) -> Result<reconcile::ReconcileReport, ReconcileError> {
    let nonce = [0x5A; 16];
    let st = fresh(w, &nonce);
    reconcile::reconcile(records, &st, &nonce, key, &ISSUER, &TERMINAL)
}

#[test]
fn complete_records_reconcile_with_the_issuer_sam() {
    let (mut w, records, key) = scenario();
    assert_eq!(records.len(), 3);
    let r = check(&mut w, &records, &key).unwrap();
    assert_eq!(
        (r.sums.batches, r.sums.purchases, r.sums.purchases_total),
        (3, 6, 2_100)
    );
    assert_eq!(
        (r.sums.loads, r.sums.loads_total, r.sums.voids, r.open),
        (0, 0, 0, 0)
    );
    // Any order; a record stored twice (its ack was lost and the run repeated) counts once.
    let shuffled = vec![
        records[2].clone(),
        records[0].clone(),
        records[1].clone(),
        records[0].clone(),
    ];
    assert_eq!(check(&mut w, &shuffled, &key).unwrap(), r);
    // Each record's own statement numbers its batch.
    let numbers: Vec<u32> = records
        .iter()
        .map(|b| b.statement.totals.sums.batches)
        .collect();
    assert_eq!(numbers, vec![1, 2, 3]);
}

#[test]
fn a_missing_record_is_found() {
    let (mut w, records, key) = scenario();
    let middle = vec![records[0].clone(), records[2].clone()];
    let e = check(&mut w, &middle, &key).unwrap_err();
    assert!(
        matches!(&e, ReconcileError::Mismatch(m) if m.contains("batch 2 is missing")),
        "{e}"
    );
    let last = records[..2].to_vec();
    let e = check(&mut w, &last, &key).unwrap_err();
    assert!(
        matches!(&e, ReconcileError::Mismatch(m) if m.contains("1 record(s) missing")),
        "{e}"
    );
    let e = check(&mut w, &[], &key).unwrap_err();
    assert!(matches!(e, ReconcileError::Mismatch(_)), "{e}");
}

#[test]
fn an_altered_record_is_found() {
    let (mut w, records, key) = scenario();
    // An entry's amount changed in the batch and in the record's list alike (the batch
    // MAC kept): the totals differ.
    let mut altered = records.clone();
    altered[1].batch.entries[0].amount += 1;
    altered[1].settled[0].amount += 1;
    let e = check(&mut w, &altered, &key).unwrap_err();
    assert!(
        matches!(&e, ReconcileError::Mismatch(m) if m.contains("batch 2")),
        "{e}"
    );
    // Two amounts swapped inside a batch (same totals): the chain differs.
    let mut swapped = records.clone();
    let b = &mut swapped[2].batch.entries;
    let (a0, a1) = (b[0].amount, b[1].amount);
    b[0].amount = a1;
    b[1].amount = a0;
    swapped[2].settled = swapped[2].batch.entries.clone();
    let e = check(&mut w, &swapped, &key).unwrap_err();
    assert!(
        matches!(&e, ReconcileError::Mismatch(m) if m.contains("chain")),
        "{e}"
    );
    // A statement edited to match: its signature no longer verifies.
    let mut forged = records.clone();
    forged[0].statement.totals.sums.purchases_total += 1;
    let e = check(&mut w, &forged, &key).unwrap_err();
    assert!(matches!(e, ReconcileError::BadSignature { .. }), "{e}");
    // A second copy of a record, altered, next to the genuine one.
    let mut doubled = records.clone();
    let mut copy = records[1].clone();
    copy.batch.entries[0].amount += 1;
    copy.settled[0].amount += 1;
    doubled.push(copy);
    let e = check(&mut w, &doubled, &key).unwrap_err();
    assert!(
        matches!(&e, ReconcileError::Mismatch(m) if m.contains("two different records claim batch 2")),
        "{e}"
    );
    // The record's own list of settled entries edited (its batch untouched).
    let mut listed = records.clone();
    listed[0].settled[0].amount += 1;
    let e = check(&mut w, &listed, &key).unwrap_err();
    assert!(matches!(e, ReconcileError::BadRecord { .. }), "{e}");
    listed[0].settled.pop();
    let e = check(&mut w, &listed, &key).unwrap_err();
    assert!(matches!(e, ReconcileError::BadRecord { .. }), "{e}");
    // A record whose ack is of another batch.
    let mut mixed = records.clone();
    mixed[0].ack = records[1].ack.clone();
    let e = check(&mut w, &mixed, &key).unwrap_err();
    assert!(matches!(e, ReconcileError::BadRecord { .. }), "{e}");
}

#[test]
fn a_replayed_or_foreign_statement_is_refused() {
    let (mut w, records, key) = scenario();
    let st = fresh(&mut w, &[1; 16]);
    let e = reconcile::reconcile(&records, &st, &[2; 16], &key, &ISSUER, &TERMINAL).unwrap_err();
    assert_eq!(e, ReconcileError::StaleStatement);
    // The statement about another SAM (the issuer's own journal: nothing settled).
    let other = SamClient::new(&mut w.issuer)
        .settlement_statement(&ISSUER, &[3; 16])
        .unwrap();
    let e = reconcile::reconcile(&records, &other, &[3; 16], &key, &ISSUER, &TERMINAL).unwrap_err();
    assert!(matches!(e, ReconcileError::WrongSam { .. }), "{e}");
    // Signed by another key: the terminal SAM's attestation key is not the issuer's.
    let now = SystemTime::now();
    let cert = kit::certify_sam(&mut w.terminal, &w.manufacturer, now).unwrap();
    assert!(matches!(
        reconcile::issuer_statement_key(&cert, w.manufacturer.cert_der(), &ISSUER, now),
        Err(ReconcileError::Certificate(_))
    ));
    let terminal_key =
        reconcile::issuer_statement_key(&cert, w.manufacturer.cert_der(), &TERMINAL, now).unwrap();
    let e = check(&mut w, &records, &terminal_key).unwrap_err();
    assert!(matches!(e, ReconcileError::BadSignature { .. }), "{e}");
}

#[test]
fn the_statement_counts_loads_voids_and_open_entries() {
    let mut w = images().restore().unwrap();
    // The issuer settles its own journal: a load; a refused load (VOID) after a purse
    // refusal; the statement is about the issuer's own SAM ID.
    try_load(&mut w, 700).unwrap();
    // Over the purse's maximum balance: authorised by the SAM, refused by the purse, voided.
    assert!(try_load(&mut w, u32::MAX / 2).is_err());
    let mut records = Vec::new();
    let mut terminal = w.terminal;
    let issuer = std::rc::Rc::new(std::cell::RefCell::new(w.issuer));
    flows::settle(
        &mut Shared(issuer.clone()),
        &mut Shared(issuer.clone()),
        |b| {
            records.push(b.clone());
            Ok(())
        },
    )
    .unwrap();
    let mut sam = issuer.borrow_mut();
    let st = SamClient::new(&mut *sam)
        .settlement_statement(&ISSUER, &[9; 16])
        .unwrap();
    let t = &st.totals;
    assert_eq!(
        (
            t.sums.loads,
            t.sums.loads_total,
            t.sums.voids,
            t.sums.purchases
        ),
        (1, 700, 1, 0)
    );
    assert_eq!(t.sums.batches, 1);
    assert_eq!(
        t.sums.chain,
        sw_::settlement_chain_next(&[0; 32], &records[0].batch)
    );
    // A terminal SAM has no settlement statement to give.
    let e = SamClient::new(&mut terminal)
        .settlement_statement(&TERMINAL, &[0; 16])
        .unwrap_err();
    assert_eq!(e.sw(), Some(sw_::sw::KEY_NOT_HELD));
}

/// One card behind two transports (the issuer SAM settling its own journal).
struct Shared(std::rc::Rc<std::cell::RefCell<tessera_os::Card>>);
impl tessera_host::transport::Transport for Shared {
    fn transmit_raw(
        &mut self,
        apdu: &[u8],
    ) -> Result<Vec<u8>, tessera_host::transport::TransportError> {
        tessera_host::transport::Transport::transmit_raw(&mut *self.0.borrow_mut(), apdu)
    }
    fn reset(&mut self) -> Result<Vec<u8>, tessera_host::transport::TransportError> {
        tessera_host::transport::Transport::reset(&mut *self.0.borrow_mut())
    }
    fn atr(&mut self) -> Result<Vec<u8>, tessera_host::transport::TransportError> {
        tessera_host::transport::Transport::atr(&mut *self.0.borrow_mut())
    }
}
