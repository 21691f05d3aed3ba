//! Load, pay, refusals, replays, wrong cards, lost answers and settlement through the host
//! flows, with the purse and SAM applets in-process.

use std::sync::OnceLock;
use tessera_host::clients::{PurseClient, SamClient};
use tessera_host::flows::kit::{PurseParams, Tap, World, WorldImages};
use tessera_host::flows::{self, FlowError, LoadRequest, PayRequest};
use tessera_host::transport::Transport;
use tessera_os::{Card, TearPlan};
use tessera_purse::wire::{ins, kind};
use tessera_sam::wire::{JournalEntry, status};

const T: u32 = 1_700_000_000;

fn images() -> &'static WorldImages {
    static W: OnceLock<WorldImages> = OnceLock::new();
    W.get_or_init(|| {
        let template = PurseParams {
            max_balance: 10_000,
            log_capacity: 32,
            pin_threshold: 2_000,
            pin: b"1234".to_vec(),
            ..Default::default()
        };
        World::new(2, &template).unwrap().images()
    })
}

fn world() -> World {
    images().restore().unwrap()
}

fn balance(card: &mut Card) -> u32 {
    let mut c = PurseClient::new(card);
    c.select().unwrap();
    c.balance().unwrap().balance
}

fn journal(sam: &mut Card) -> Vec<JournalEntry> {
    SamClient::new(sam).peek_journal(0).unwrap().entries
}

fn load(w: &mut World, i: usize, amount: u32) -> Result<flows::LoadReceipt, FlowError> {
    let opts = w.issuer_opts();
    flows::load_with(
        &mut w.purses[i],
        &mut w.issuer,
        LoadRequest {
            amount,
            terminal_time: T,
        },
        &opts,
    )
}

fn pay(
    w: &mut World,
    i: usize,
    amount: u32,
    pin: Option<&[u8]>,
) -> Result<flows::PayReceipt, FlowError> {
    let opts = w.terminal_opts();
    let req = PayRequest {
        amount,
        terminal_id: [0, 0, 0, 9],
        terminal_time: T,
        pin: pin.map(|p| p.to_vec()),
    };
    flows::pay_with(&mut w.purses[i], &mut w.terminal, &req, &opts)
}

#[test]
fn load_then_pay_moves_value_and_journals_it() {
    let mut w = world();
    let r = load(&mut w, 0, 5_000).unwrap();
    assert_eq!(
        (
            r.balance_before,
            r.balance_after,
            r.recovered,
            r.sam_confirmed
        ),
        (0, 5_000, false, true)
    );
    let p = pay(&mut w, 0, 1_250, None).unwrap();
    assert_eq!((p.balance_before, p.balance_after), (5_000, 3_750));
    assert_eq!(balance(&mut w.purses[0]), 3_750);

    // Card log and SAM journals agree, with the same proofs.
    let logs = {
        let mut c = PurseClient::new(&mut w.purses[0]);
        c.select().unwrap();
        c.read_all_logs().unwrap()
    };
    assert_eq!(logs.len(), 2);
    assert_eq!(
        (logs[0].kind, logs[0].amount, logs[0].proof),
        (kind::PURCHASE, 1_250, p.proof)
    );
    assert_eq!(
        (logs[1].kind, logs[1].amount, logs[1].proof),
        (kind::LOAD, 5_000, r.proof)
    );
    let ij = journal(&mut w.issuer);
    assert_eq!(ij.len(), 1);
    assert_eq!(
        (ij[0].status, ij[0].amount, ij[0].proof),
        (status::CONFIRMED, 5_000, r.proof)
    );
    let tj = journal(&mut w.terminal);
    assert_eq!(tj.len(), 1);
    assert_eq!(
        (tj[0].status, tj[0].amount, tj[0].proof, tj[0].purse_id),
        (status::CONFIRMED, 1_250, p.proof, p.purse_id)
    );
}

#[test]
fn refusals_name_their_reason_and_leave_nothing_pending() {
    let mut w = world();
    assert!(matches!(
        pay(&mut w, 0, 100, None),
        Err(FlowError::InsufficientFunds {
            balance: 0,
            amount: 100
        })
    ));
    assert!(matches!(load(&mut w, 0, 0), Err(FlowError::ZeroAmount)));
    load(&mut w, 0, 9_000).unwrap();
    // Over the maximum balance: the purse refuses, the SAM entry is voided.
    assert!(matches!(
        load(&mut w, 0, 1_001),
        Err(FlowError::OverMaximum)
    ));
    // PIN above the threshold: missing, wrong, right.
    assert!(matches!(
        pay(&mut w, 0, 2_500, None),
        Err(FlowError::PinRequired { threshold: 2_000 })
    ));
    assert!(matches!(
        pay(&mut w, 0, 2_500, Some(b"9999")),
        Err(FlowError::WrongPin { tries_left: 2 })
    ));
    assert_eq!(
        pay(&mut w, 0, 2_500, Some(b"1234")).unwrap().balance_after,
        6_500
    );
    assert_eq!(balance(&mut w.purses[0]), 6_500);
    let ij = journal(&mut w.issuer);
    assert_eq!(
        ij.iter().map(|e| e.status).collect::<Vec<_>>(),
        vec![status::CONFIRMED, status::VOID]
    );
    let tj = journal(&mut w.terminal);
    assert!(tj.iter().all(|e| e.status == status::CONFIRMED));
    assert_eq!(tj.len(), 1);
}

#[test]
fn replayed_and_misdirected_loads_apply_nothing() {
    let mut w = world();
    let load_apdu = {
        let opts = w.issuer_opts();
        let mut tap = Tap::new(&mut w.purses[0]);
        flows::load_with(
            &mut tap,
            &mut w.issuer,
            LoadRequest {
                amount: 700,
                terminal_time: T,
            },
            &opts,
        )
        .unwrap();
        tap.last_with_ins(ins::LOAD).unwrap().clone()
    };
    assert_eq!(balance(&mut w.purses[0]), 700);
    // Replay without a session, then inside a fresh session: refused both times.
    let r = Transport::transmit_raw(&mut w.purses[0], &load_apdu).unwrap();
    assert_ne!(&r[r.len() - 2..], &[0x90, 0x00]);
    PurseClient::new(&mut w.purses[0]).init_load().unwrap();
    let r = Transport::transmit_raw(&mut w.purses[0], &load_apdu).unwrap();
    assert_ne!(&r[r.len() - 2..], &[0x90, 0x00]);
    assert_eq!(balance(&mut w.purses[0]), 700);
    // The same message sent to another card, in that card's own session: refused.
    {
        let mut c = PurseClient::new(&mut w.purses[1]);
        c.select().unwrap();
        c.init_load().unwrap();
    }
    let r = Transport::transmit_raw(&mut w.purses[1], &load_apdu).unwrap();
    assert_ne!(&r[r.len() - 2..], &[0x90, 0x00]);
    assert_eq!(balance(&mut w.purses[1]), 0);
}

#[test]
fn lost_load_answer_after_commit_is_recovered() {
    let mut w = world();
    let opts = w.issuer_opts();
    let mut tap = Tap::new(&mut w.purses[0]).arm(
        ins::LOAD,
        TearPlan {
            after_bytes: None,
            after_commit: true,
        },
    );
    let r = flows::load_with(
        &mut tap,
        &mut w.issuer,
        LoadRequest {
            amount: 300,
            terminal_time: T,
        },
        &opts,
    )
    .unwrap();
    assert!(tap.cut);
    assert!(r.recovered && r.sam_confirmed);
    assert_eq!(r.balance_after, 300);
    assert_eq!(balance(&mut w.purses[0]), 300);
    assert_eq!(journal(&mut w.issuer)[0].status, status::CONFIRMED);
}

#[test]
fn lost_purchase_before_commit_is_voided() {
    let mut w = world();
    load(&mut w, 0, 1_000).unwrap();
    let opts = w.terminal_opts();
    let mut tap = Tap::new(&mut w.purses[0]).arm(
        ins::PURCHASE,
        TearPlan {
            after_bytes: Some(0),
            after_commit: false,
        },
    );
    let req = PayRequest {
        amount: 400,
        terminal_id: [0, 0, 0, 9],
        terminal_time: T,
        pin: None,
    };
    let e = flows::pay_with(&mut tap, &mut w.terminal, &req, &opts).unwrap_err();
    assert!(tap.cut);
    assert!(matches!(e, FlowError::NotApplied { voided: true }), "{e}");
    assert_eq!(balance(&mut w.purses[0]), 1_000);
    assert_eq!(journal(&mut w.terminal)[0].status, status::VOID);
}

#[test]
fn lost_confirm_answer_at_the_sam_is_resent() {
    let mut w = world();
    load(&mut w, 0, 1_000).unwrap();
    let opts = w.terminal_opts();
    let req = PayRequest {
        amount: 10,
        terminal_id: [0, 0, 0, 9],
        terminal_time: T,
        pin: None,
    };
    let mut sam = Tap::new(&mut w.terminal).arm(
        tessera_sam::wire::ins::CONFIRM_PURCHASE,
        TearPlan {
            after_bytes: None,
            after_commit: true,
        },
    );
    let r = flows::pay_with(&mut w.purses[0], &mut sam, &req, &opts).unwrap();
    assert!(sam.cut);
    assert!(r.sam_confirmed);
    assert_eq!(journal(&mut w.terminal)[0].status, status::CONFIRMED);
}

#[test]
fn lost_authorize_answer_voids_the_orphan_entry() {
    let mut w = world();
    let opts = w.issuer_opts();
    let mut sam = Tap::new(&mut w.issuer).arm(
        tessera_sam::wire::ins::AUTHORIZE_LOAD,
        TearPlan {
            after_bytes: None,
            after_commit: true,
        },
    );
    let e = flows::load_with(
        &mut w.purses[0],
        &mut sam,
        LoadRequest {
            amount: 50,
            terminal_time: T,
        },
        &opts,
    )
    .unwrap_err();
    assert!(sam.cut);
    assert!(matches!(e, FlowError::NotApplied { voided: true }), "{e}");
    assert_eq!(balance(&mut w.purses[0]), 0);
    assert_eq!(journal(&mut w.issuer)[0].status, status::VOID);
}

#[test]
fn settlement_drops_acknowledged_entries() {
    let mut w = world();
    load(&mut w, 0, 5_000).unwrap();
    for a in [100, 200, 300] {
        pay(&mut w, 0, a, None).unwrap();
    }
    assert!(pay(&mut w, 1, 1, None).is_err());
    let report = flows::settle(&mut w.terminal, &mut w.issuer, |_| Ok(())).unwrap();
    assert_eq!(
        (report.settled, report.purchases_total, report.pending_left),
        (3, 600, 0)
    );
    assert!(journal(&mut w.terminal).is_empty());
    // Nothing left: a second settlement is a no-op.
    let again = flows::settle(&mut w.terminal, &mut w.issuer, |_| Ok(())).unwrap();
    assert_eq!((again.settled, again.batches), (0, 0));
}

#[test]
fn settlement_of_many_entries_takes_several_batches() {
    let mut w = world();
    load(&mut w, 0, 9_000).unwrap();
    for _ in 0..150 {
        pay(&mut w, 0, 1, None).unwrap();
    }
    let report = flows::settle(&mut w.terminal, &mut w.issuer, |_| Ok(())).unwrap();
    assert_eq!(
        (report.settled, report.purchases_total, report.pending_left),
        (150, 150, 0)
    );
    assert!(report.batches >= 3, "{report:?}");
    assert!(journal(&mut w.terminal).is_empty());
    let data = SamClient::new(&mut w.terminal).sam_data().unwrap();
    assert_eq!(data.journal_count, 0);
}

/// Settlement records: the sink sees each verified batch before its ack; a run that dies
/// after VERIFY JOURNAL (record stored or not) and before ACK JOURNAL leaves the entries in
/// the SAM, and the next run sees the identical batch and the identical ack, so a record
/// keyed by the batch is written once and every entry is settled once, even with a
/// payment in between. A replayed old batch is refused by the issuer SAM.
#[test]
fn settlement_record_is_stored_before_the_ack_and_settled_once() {
    use std::collections::BTreeMap;
    let mut w = world();
    load(&mut w, 0, 5_000).unwrap();
    for a in [100, 200] {
        pay(&mut w, 0, a, None).unwrap();
    }
    let mut records: BTreeMap<([u8; 4], [u8; 8]), flows::VerifiedBatch> = BTreeMap::new();
    // The sink fails (disk full): nothing acknowledged, the SAM keeps its entries.
    let e = flows::settle(&mut w.terminal, &mut w.issuer, |_| Err("disk full".into())).unwrap_err();
    assert!(matches!(e, FlowError::RecordNotStored(_)), "{e}");
    assert_eq!(journal(&mut w.terminal).len(), 2);
    // The record is stored, then the host dies before the ack.
    let e = flows::settle(&mut w.terminal, &mut w.issuer, |b| {
        records.insert((b.batch.sam_id, b.batch.mac), b.clone());
        Err("crash before the ack".into())
    })
    .unwrap_err();
    assert!(matches!(e, FlowError::RecordNotStored(_)), "{e}");
    let first = records.values().next().unwrap().clone();
    assert_eq!(first.settled.len(), 2);
    // A payment happens before the settlement runs again.
    pay(&mut w, 0, 300, None).unwrap();
    let report = flows::settle(&mut w.terminal, &mut w.issuer, |b| {
        records.insert((b.batch.sam_id, b.batch.mac), b.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!((report.settled, report.purchases_total), (3, 600));
    assert!(journal(&mut w.terminal).is_empty());
    // Two records: the first batch (stored again, identical, same ack) and the payment.
    assert_eq!(records.len(), 2);
    // Stored again identical, but for the nonce of the issuer's statement (fetched anew):
    // the same batch number, totals and chain.
    let again = &records[&(first.batch.sam_id, first.batch.mac)];
    assert_eq!(
        (&again.batch, &again.ack, &again.settled),
        (&first.batch, &first.ack, &first.settled)
    );
    let mut t = again.statement.totals.clone();
    t.nonce = first.statement.totals.nonce;
    assert_eq!(t, first.statement.totals);
    assert_eq!(t.sums.batches, 1);
    let mut seqs: Vec<u32> = records
        .values()
        .flat_map(|r| r.settled.iter().map(|e| e.seq))
        .collect();
    seqs.sort();
    assert_eq!(seqs, vec![1, 2, 3], "every entry in exactly one record");
    let total: u32 = records
        .values()
        .flat_map(|r| r.settled.iter().map(|e| e.amount))
        .sum();
    assert_eq!(total, 600);
    // The old batch, replayed at the issuer: refused.
    let sw = SamClient::new(&mut w.issuer)
        .verify_journal(&first.batch)
        .unwrap_err()
        .sw();
    assert_eq!(sw, Some(tessera_sam::wire::sw::ALREADY_SETTLED));
    // A forged batch: refused (6988).
    let mut forged = first.batch.clone();
    forged.entries[0].amount += 1;
    let sw = SamClient::new(&mut w.issuer)
        .verify_journal(&forged)
        .unwrap_err()
        .sw();
    assert_eq!(sw, Some(tessera_apdu::Sw::SM_OBJECTS_INCORRECT));
}
