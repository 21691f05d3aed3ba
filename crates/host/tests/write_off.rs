//! Write-off of a PENDING journal entry the purse can no longer answer for, end to end
//! through the host flows: refused before the issuer saw it, applied after a settlement,
//! settled as WRITTEN_OFF, and the settlement records still reconcile.

mod common;
use common::{ISSUER, T, TERMINAL, load, pay, settle};

use std::time::SystemTime;
use tessera_host::clients::SamClient;
use tessera_host::flows::kit::{self, PurseParams, World};
use tessera_host::flows::reconcile;
use tessera_host::flows::{self, FlowError};
use tessera_sam::wire as sw_;

const LOST: u32 = 333;

/// A purchase the terminal SAM authorised and the purse never applied (the card was
/// pulled): returns its sequence number.
fn abandoned_purchase(w: &mut World, amount: u32) -> u32 {
    kit::abandon_purchase(&mut w.purses[0], &mut w.terminal, amount, [0, 0, 0, 7], T).unwrap()
}

#[test]
fn unresolvable_entry_is_written_off_settled_and_reconciled() {
    let mut w = World::new(
        1,
        &PurseParams {
            log_capacity: 4,
            ..PurseParams::default()
        },
    )
    .unwrap();
    load(&mut w, 5_000);
    let seq = abandoned_purchase(&mut w, LOST);
    for _ in 0..6 {
        pay(&mut w, 10);
    }
    // Before the issuer has seen the entry in a verified batch: refused, nothing changed.
    let e = flows::write_off(&mut w.terminal, &mut w.issuer, seq).unwrap_err();
    assert!(matches!(e, FlowError::NotOpen), "{e}");
    assert_eq!(e.reason(), "not_open");

    let mut records = Vec::new();
    let first = settle(&mut w, &mut records);
    assert_eq!((first.settled, first.purchases_total), (6, 60));
    assert_eq!(first.written_off_purchases, 0);
    let d = SamClient::new(&mut w.terminal).sam_data().unwrap();
    assert_eq!((d.journal_count, d.pending_count), (1, 1));

    // Open at the issuer now, but RESOLVE has not found it unresolvable: refused.
    let e = flows::write_off(&mut w.terminal, &mut w.issuer, seq).unwrap_err();
    assert!(matches!(e, FlowError::ResolveFirst(s) if s == seq), "{e}");
    assert_eq!(e.reason(), "resolve_first");
    assert_eq!(SamClient::new(&mut w.terminal).sam_data().unwrap(), d);

    // RESOLVE cannot void it: the purse's log (4 records) no longer covers its counter.
    let opts = w.terminal_opts();
    let (entry, resolution) =
        flows::resolve_entry(&mut w.purses[0], &mut w.terminal, &opts, seq).unwrap();
    assert_eq!(resolution, flows::Resolution::Unresolvable);
    assert_eq!((entry.seq, entry.amount), (seq, LOST));
    assert_eq!(SamClient::new(&mut w.terminal).sam_data().unwrap(), d);

    let entry = flows::write_off(&mut w.terminal, &mut w.issuer, seq).unwrap();
    assert_eq!((entry.seq, entry.amount), (seq, LOST));
    assert_eq!(entry.status, sw_::status::PENDING);
    let d = SamClient::new(&mut w.terminal).sam_data().unwrap();
    assert_eq!((d.journal_count, d.pending_count), (1, 0));
    // Done already: the flow finds no PENDING entry any more.
    let again = flows::write_off(&mut w.terminal, &mut w.issuer, seq).unwrap_err();
    assert!(
        matches!(again, FlowError::NoPendingEntry(s) if s == seq),
        "{again}"
    );

    let second = settle(&mut w, &mut records);
    assert_eq!(second.settled, 1);
    assert_eq!(
        (
            second.written_off_purchases,
            second.written_off_purchases_total
        ),
        (1, u64::from(LOST))
    );
    assert_eq!(second.written_off_loads, 0);
    assert_eq!((second.purchases_total, second.voided), (0, 0));
    assert_eq!(second.pending_left, 0);
    assert_eq!(second.entries[0].status, sw_::status::WRITTEN_OFF);
    let d = SamClient::new(&mut w.terminal).sam_data().unwrap();
    assert_eq!((d.journal_count, d.pending_count), (0, 0));

    // The issuer's signed statement: one write-off of its amount, purchases unchanged.
    let now = SystemTime::now();
    let cert = kit::certify_sam(&mut w.issuer, &w.manufacturer, now).unwrap();
    let key =
        reconcile::issuer_statement_key(&cert, w.manufacturer.cert_der(), &ISSUER, now).unwrap();
    let nonce = [0x5A; 16];
    let fresh = SamClient::new(&mut w.issuer)
        .settlement_statement(&TERMINAL, &nonce)
        .unwrap();
    let t = &fresh.totals;
    assert_eq!(
        (
            t.sums.written_off_purchases,
            t.sums.written_off_purchases_total
        ),
        (1, u64::from(LOST))
    );
    assert_eq!((t.sums.written_off_loads, t.sums.loads), (0, 0));
    assert_eq!((t.sums.purchases, t.sums.purchases_total), (6, 60));
    assert_eq!((t.sums.voids, t.open), (0, 0));
    let report = reconcile::reconcile(&records, &fresh, &nonce, &key, &ISSUER, &TERMINAL).unwrap();
    assert_eq!(report.sums.written_off_purchases, 1);
    assert_eq!(report.sums.written_off_purchases_total, u64::from(LOST));

    // Without the record of the batch that settled the write-off, the records do not
    // reconcile.
    records.pop();
    let err = reconcile::reconcile(&records, &fresh, &nonce, &key, &ISSUER, &TERMINAL);
    assert!(err.is_err());
}

/// `resolve_entry` on an entry the purse can still answer for: VOID when it never reached
/// the purse, and another card than the entry's purse is refused before anything is sent
/// to the SAM.
#[test]
fn resolve_entry_voids_an_abandoned_purchase_and_refuses_another_card() {
    let mut w = World::new(2, &PurseParams::default()).unwrap();
    load(&mut w, 1_000);
    let seq = abandoned_purchase(&mut w, 40);
    let opts = w.terminal_opts();
    let before = SamClient::new(&mut w.terminal).sam_data().unwrap();
    let (terminal, purses) = (&mut w.terminal, &mut w.purses);
    let e = flows::resolve_entry(&mut purses[1], terminal, &opts, seq).unwrap_err();
    assert!(matches!(e, FlowError::WrongPurse { .. }), "{e}");
    assert_eq!(e.reason(), "wrong_purse");
    assert_eq!(SamClient::new(&mut w.terminal).sam_data().unwrap(), before);
    let (entry, resolution) =
        flows::resolve_entry(&mut w.purses[0], &mut w.terminal, &opts, seq).unwrap();
    assert_eq!(resolution, flows::Resolution::Voided);
    assert_eq!(entry.amount, 40);
    let d = SamClient::new(&mut w.terminal).sam_data().unwrap();
    assert_eq!(d.pending_count, before.pending_count - 1);
    // Not PENDING any more.
    let e = flows::resolve_entry(&mut w.purses[0], &mut w.terminal, &opts, seq).unwrap_err();
    assert!(matches!(e, FlowError::NoPendingEntry(s) if s == seq), "{e}");
}
