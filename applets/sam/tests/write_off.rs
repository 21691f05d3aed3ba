//! SAM applet: WRITE OFF (issuer) and APPLY WRITE OFF of a PENDING journal entry the purse
//! can no longer answer for, through APDUs.

#[path = "../../purse/tests/common/mod.rs"]
mod common;

use common::*;
use tessera_apdu::Sw;
use tessera_os::{CardError, TearPlan};
use tessera_purse::wire as pw;
use tessera_sam::wire::{self as w, ins, status, sw};

const AMOUNT: u32 = 77;

/// Export, verify at the issuer and acknowledge while a batch shows a final entry;
/// returns the entries settled.
fn settle_entries(sam: &mut Chip, iss: &mut Chip) -> Vec<w::JournalEntry> {
    let mut settled = Vec::new();
    loop {
        let b = w::JournalBatch::decode(&sam.ok(ins::EXPORT_JOURNAL, 0, 0, &[])).unwrap();
        let finals = b.final_entries();
        if finals.is_empty() {
            return settled;
        }
        let ack = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b.encode());
        sam.ok(ins::ACK_JOURNAL, 0, 0, &ack);
        settled.extend(finals);
    }
}

/// Settle (see [`settle_entries`]); the (seq, status) of the entries settled.
fn settled_statuses(sam: &mut Chip, iss: &mut Chip) -> Vec<(u32, u8)> {
    settle_entries(sam, iss)
        .iter()
        .map(|e| (e.seq, e.status))
        .collect()
}

/// The journal as it is now (EXPORT JOURNAL peek).
fn peek(sam: &mut Chip) -> Vec<w::JournalEntry> {
    w::JournalBatch::decode(&sam.ok(ins::EXPORT_JOURNAL, 0, 1, &[]))
        .unwrap()
        .entries
}

fn entry(sam: &mut Chip, seq: u32) -> Option<w::JournalEntry> {
    peek(sam).into_iter().find(|e| e.seq == seq)
}

fn statement(iss: &mut Chip, sam_id: [u8; 4]) -> w::SettlementTotals {
    let mut data = sam_id.to_vec();
    data.extend_from_slice(&[9; 16]);
    w::SettlementStatement::decode(&iss.ok(ins::GET_SETTLEMENT_STATEMENT, 0, 0, &data))
        .unwrap()
        .totals
}

fn write_off_data(sam_id: [u8; 4], e: &w::JournalEntry) -> Vec<u8> {
    let mut d = sam_id.to_vec();
    d.extend_from_slice(&e.encode());
    d
}

struct Setup {
    iss: Chip,
    t: Chip,
    p: Chip,
    sam_id: [u8; 4],
    /// The PENDING purchase the purse can no longer answer for.
    lost: w::JournalEntry,
}

/// The issuer SAM, a terminal SAM (and its ID) and a purse loaded with 10 000 (no PIN
/// threshold).
fn chips() -> (Chip, Chip, Chip, [u8; 4]) {
    let mut iss = issuer();
    let opts = TerminalOpts::default();
    let sam_id = opts.sam_id;
    let t = terminal(&mut iss, opts);
    let mut p = purse(
        &mut iss,
        &PurseOpts {
            pin_threshold: u32::MAX,
            ..PurseOpts::default()
        },
    );
    load(&mut iss, &mut p, 10_000);
    (iss, t, p, sam_id)
}

/// A purchase of [`AMOUNT`] authorised at the terminal SAM and never applied, then 10
/// confirmed purchases of 1 (the purse log holds 8): its log no longer reaches it.
fn abandoned_past_log(t: &mut Chip, p: &mut Chip) -> PreparedPurchase {
    let lost = prepare_purchase(t, p, AMOUNT, T0).unwrap();
    for _ in 0..10 {
        purchase(t, p, 1, None).unwrap();
    }
    lost
}

/// A purchase authorised at the terminal SAM and never applied, then 10 confirmed
/// purchases of 1 (the purse log holds 8): RESOLVE of the first answers PENDING (marked
/// unresolvable). One settlement shows it PENDING to the issuer (it joins the issuer's
/// `open`).
fn setup() -> Setup {
    let (mut iss, mut t, mut p, sam_id) = chips();
    let lost = abandoned_past_log(&mut t, &mut p);
    let seq = lost.msg.sam_txn;
    let st = txn_status(&mut t, &mut p, pw::usage::DEBIT, sam_id, seq);
    assert!(!st.applied);
    let r = resolve(&mut t, lost.purse_id, seq, pw::usage::DEBIT, st);
    assert_eq!(
        (r.sw, r.data),
        (Sw::OK, vec![status::PENDING]),
        "the purse's log no longer covers the entry: marked unresolvable"
    );
    let settled = settle_entries(&mut t, &mut iss);
    assert_eq!(settled.len(), 10);
    assert!(settled.iter().all(|e| e.seq != seq));
    let lost = entry(&mut t, seq).unwrap();
    assert_eq!(lost.status, status::PENDING);
    let d = sam_data(&mut t);
    assert_eq!((d.journal_count, d.pending_count), (1, 1));
    assert_eq!(statement(&mut iss, sam_id).open, 1);
    Setup {
        iss,
        t,
        p,
        sam_id,
        lost,
    }
}

#[test]
fn written_off_entry_is_settled_and_dropped() {
    let Setup {
        mut iss,
        mut t,
        mut p,
        sam_id,
        lost,
    } = setup();
    let before = statement(&mut iss, sam_id);
    // The terminal SAM's records now: among them the entry and its unresolvable mark.
    let records = t.card.memory().records;
    let raw = iss.ok(ins::WRITE_OFF, 0, 0, &write_off_data(sam_id, &lost));
    assert_eq!(raw.len(), 32);
    let token = w::WriteOff::decode(&raw).unwrap();
    assert_eq!(
        (
            token.sam_id,
            token.seq,
            token.purse_id,
            token.counter,
            token.amount
        ),
        (sam_id, lost.seq, lost.purse_id, lost.counter, AMOUNT)
    );
    // WRITE OFF changes nothing at the issuer.
    let after_token = statement(&mut iss, sam_id);
    assert_eq!(after_token.sums, before.sums);
    assert_eq!(after_token.open, 1);

    t.ok(ins::APPLY_WRITE_OFF, 0, 0, &token.encode());
    let e = entry(&mut t, lost.seq).unwrap();
    assert_eq!(e.status, status::WRITTEN_OFF);
    assert_eq!(
        (e.amount, e.counter, e.balance_after),
        (AMOUNT, lost.counter, 0)
    );
    let d = sam_data(&mut t);
    assert_eq!((d.journal_count, d.pending_count), (1, 0));
    // The amount stays counted in the day's total (not refunded as a VOID would be).
    assert_eq!(d.day_total, AMOUNT + 10);
    // The same token again: 9000, nothing changes.
    t.ok(ins::APPLY_WRITE_OFF, 0, 0, &token.encode());
    assert_eq!(sam_data(&mut t), d);
    // RESOLVE and CONFIRM leave a written-off entry as it is.
    let st = txn_status(&mut t, &mut p, pw::usage::DEBIT, sam_id, lost.seq);
    assert_eq!(
        resolve(&mut t, lost.purse_id, lost.seq, pw::usage::DEBIT, st).sw,
        Sw::CONDITIONS_NOT_SATISFIED
    );
    let fake = pw::ValueReceipt {
        counter: lost.counter,
        balance_after: 1,
        proof: [0; 8],
    };
    assert_eq!(
        t.sw(
            ins::CONFIRM_PURCHASE,
            0,
            0,
            &confirm_data(lost.purse_id, lost.seq, AMOUNT, &fake)
        ),
        Sw::CONDITIONS_NOT_SATISFIED
    );
    assert_eq!(entry(&mut t, lost.seq).unwrap().status, status::WRITTEN_OFF);

    // The next settlement shows it WRITTEN_OFF: settled once, dropped from the journal.
    assert_eq!(
        settled_statuses(&mut t, &mut iss),
        vec![(lost.seq, status::WRITTEN_OFF)]
    );
    let d = sam_data(&mut t);
    assert_eq!((d.journal_count, d.pending_count), (0, 0));
    assert_eq!(
        t.card.memory().records,
        records - 2,
        "the settlement dropped the entry and its mark"
    );
    let after = statement(&mut iss, sam_id);
    assert_eq!(
        (
            after.sums.written_off_purchases,
            after.sums.written_off_purchases_total
        ),
        (1, u64::from(AMOUNT))
    );
    assert_eq!(
        (
            after.sums.written_off_loads,
            after.sums.written_off_loads_total
        ),
        (0, 0)
    );
    assert_eq!(after.sums.purchases, before.sums.purchases);
    assert_eq!(after.sums.purchases_total, before.sums.purchases_total);
    assert_eq!(after.sums.voids, 0);
    assert_eq!(after.sums.batches, before.sums.batches + 1);
    assert_eq!(after.open, 0);
    // Settled now: no second token, and the dropped entry cannot be applied again.
    assert_eq!(
        iss.sw(ins::WRITE_OFF, 0, 0, &write_off_data(sam_id, &lost)),
        sw::NOT_OPEN
    );
    assert_eq!(
        t.sw(ins::APPLY_WRITE_OFF, 0, 0, &token.encode()),
        sw::NO_SUCH_TXN
    );
}

#[test]
fn write_off_refusals() {
    let Setup {
        mut iss,
        mut t,
        mut p,
        sam_id,
        lost,
    } = setup();
    let token =
        w::WriteOff::decode(&iss.ok(ins::WRITE_OFF, 0, 0, &write_off_data(sam_id, &lost))).unwrap();
    // An entry the issuer never saw: authorised after the settlement.
    let fresh = prepare_purchase(&mut t, &mut p, 5, T0).unwrap();
    let fresh_entry = entry(&mut t, fresh.msg.sam_txn).unwrap();
    assert_eq!(
        iss.sw(ins::WRITE_OFF, 0, 0, &write_off_data(sam_id, &fresh_entry)),
        sw::NOT_OPEN
    );
    // A SAM nothing was settled for.
    assert_eq!(
        iss.sw(
            ins::WRITE_OFF,
            0,
            0,
            &write_off_data([0, 0, 0, 0x77], &lost)
        ),
        sw::NOT_OPEN
    );
    // Nothing below changes the SAM until the genuine token is applied (the fresh entry
    // stays PENDING too: two entries, both pending).
    let unchanged = |t: &mut Chip| {
        assert_eq!(entry(t, lost.seq).unwrap().status, status::PENDING);
        let d = sam_data(t);
        assert_eq!((d.journal_count, d.pending_count), (2, 2));
    };

    // A flipped MAC bit.
    let mut bad = token.clone();
    bad.mac[7] ^= 0x01;
    assert_eq!(
        t.sw(ins::APPLY_WRITE_OFF, 0, 0, &bad.encode()),
        Sw::SM_OBJECTS_INCORRECT
    );
    unchanged(&mut t);
    // A token for another SAM.
    let mut other = token.clone();
    other.sam_id = [0, 0, 0, 0x11];
    assert_eq!(
        t.sw(ins::APPLY_WRITE_OFF, 0, 0, &other.encode()),
        Sw::WRONG_DATA
    );
    unchanged(&mut t);
    // The issuer MACs what it is shown: an entry with another amount gets a genuine token
    // that does not match the SAM's entry.
    let mut more = lost.clone();
    more.amount = AMOUNT + 1;
    let wrong =
        w::WriteOff::decode(&iss.ok(ins::WRITE_OFF, 0, 0, &write_off_data(sam_id, &more))).unwrap();
    assert_eq!(wrong.amount, AMOUNT + 1);
    assert_eq!(
        t.sw(ins::APPLY_WRITE_OFF, 0, 0, &wrong.encode()),
        Sw::CONDITIONS_NOT_SATISFIED
    );
    unchanged(&mut t);
    // Another field of the entry (the terminal ID) altered: the MAC covers the whole
    // entry.
    let mut moved = lost.clone();
    moved.terminal_id = [9; 4];
    let moved = w::WriteOff::decode(&iss.ok(ins::WRITE_OFF, 0, 0, &write_off_data(sam_id, &moved)))
        .unwrap();
    assert_eq!(
        t.sw(ins::APPLY_WRITE_OFF, 0, 0, &moved.encode()),
        Sw::SM_OBJECTS_INCORRECT
    );
    unchanged(&mut t);
    // A sequence number the SAM does not hold.
    let mut missing = token.clone();
    missing.seq = 999;
    assert_eq!(
        t.sw(ins::APPLY_WRITE_OFF, 0, 0, &missing.encode()),
        sw::NO_SUCH_TXN
    );
    // A CONFIRMED entry is not written off: the issuer refuses an entry shown final, and
    // a confirmed entry is no longer PENDING at the SAM.
    let mut confirmed = lost.clone();
    confirmed.status = status::CONFIRMED;
    assert_eq!(
        iss.sw(ins::WRITE_OFF, 0, 0, &write_off_data(sam_id, &confirmed)),
        Sw::WRONG_DATA
    );
    // Lengths and encodings.
    assert_eq!(
        iss.sw(ins::WRITE_OFF, 0, 0, &write_off_data(sam_id, &lost)[1..]),
        Sw::WRONG_LENGTH
    );
    assert_eq!(
        t.sw(ins::APPLY_WRITE_OFF, 0, 0, &token.encode()[1..]),
        Sw::WRONG_LENGTH
    );
    assert_eq!(
        iss.sw(ins::WRITE_OFF, 1, 0, &write_off_data(sam_id, &lost)),
        Sw::INCORRECT_P1P2
    );
    // A terminal SAM cannot make tokens.
    assert_eq!(
        t.sw(ins::WRITE_OFF, 0, 0, &write_off_data(sam_id, &lost)),
        sw::KEY_NOT_HELD
    );
    // Locked: 6982.
    t.select();
    assert_eq!(
        t.sw(ins::APPLY_WRITE_OFF, 0, 0, &token.encode()),
        Sw::SECURITY_STATUS_NOT_SATISFIED
    );
    unlock(&mut t);
    unchanged(&mut t);
    // The genuine token still applies.
    t.ok(ins::APPLY_WRITE_OFF, 0, 0, &token.encode());
    assert_eq!(entry(&mut t, lost.seq).unwrap().status, status::WRITTEN_OFF);
    assert_eq!(sam_data(&mut t).pending_count, 1);
}

/// Power cut at every write of APPLY WRITE OFF: the entry is PENDING with the counts of
/// before, or WRITTEN_OFF with one pending entry less; never in between.
#[test]
fn tearing_apply_write_off_keeps_entry_and_counts_together() {
    let Setup {
        mut iss,
        mut t,
        sam_id,
        lost,
        ..
    } = setup();
    let token =
        w::WriteOff::decode(&iss.ok(ins::WRITE_OFF, 0, 0, &write_off_data(sam_id, &lost))).unwrap();
    let before = sam_data(&mut t);
    let mut k = 0u64;
    loop {
        t.card.arm_tear(TearPlan {
            after_bytes: Some(k),
            after_commit: false,
        });
        match t.try_send(0x80, ins::APPLY_WRITE_OFF, 0, 0, &token.encode()) {
            Err(CardError::PowerLost) => {
                t.card.power_on();
                t.select();
                unlock(&mut t);
                assert!(t.card.store_consistent());
                let e = entry(&mut t, lost.seq).unwrap();
                let d = sam_data(&mut t);
                assert_eq!(d.journal_count, before.journal_count);
                match e.status {
                    status::PENDING => assert_eq!(d.pending_count, before.pending_count),
                    status::WRITTEN_OFF => {
                        assert_eq!(d.pending_count, before.pending_count - 1)
                    }
                    s => panic!("status {s}"),
                }
                k += 1;
            }
            Ok(r) => {
                assert_eq!(r.sw, Sw::OK);
                disarm(&mut t.card);
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(k < 10_000);
    }
    assert!(k > 5, "the command writes: {k}");
    assert_eq!(entry(&mut t, lost.seq).unwrap().status, status::WRITTEN_OFF);
    let d = sam_data(&mut t);
    assert_eq!(
        (d.journal_count, d.pending_count),
        (before.journal_count, before.pending_count - 1)
    );
    // Settled once after all.
    let settled = settle_entries(&mut t, &mut iss);
    assert_eq!(settled.len(), 1);
    assert_eq!(statement(&mut iss, sam_id).sums.written_off_purchases, 1);
}

/// The attack a write-off must not allow: the purse applies a purchase and the host
/// withholds CONFIRM; a settlement shows the entry PENDING, so the issuer holds it open
/// and makes a token. APPLY WRITE OFF refuses it (6985, nothing changes) because RESOLVE
/// never found the entry unresolvable; RESOLVE with the purse's status then confirms it
/// from the purse's own proof, and it settles as a purchase.
#[test]
fn an_applied_entry_whose_confirm_was_withheld_is_not_written_off() {
    let (mut iss, mut t, mut p, sam_id) = chips();
    let withheld = prepare_purchase(&mut t, &mut p, AMOUNT, T0).unwrap();
    let seq = withheld.msg.sam_txn;
    p.ok(pw::ins::PURCHASE, 0, 0, &withheld.msg.encode());
    assert_eq!(balance(&mut p), 10_000 - AMOUNT);
    purchase(&mut t, &mut p, 1, None).unwrap();
    assert_eq!(settle_entries(&mut t, &mut iss).len(), 1);
    let pending = entry(&mut t, seq).unwrap();
    assert_eq!(pending.status, status::PENDING);
    assert_eq!(statement(&mut iss, sam_id).open, 1);

    let token =
        w::WriteOff::decode(&iss.ok(ins::WRITE_OFF, 0, 0, &write_off_data(sam_id, &pending)))
            .unwrap();
    let before = sam_data(&mut t);
    assert_eq!(
        t.sw(ins::APPLY_WRITE_OFF, 0, 0, &token.encode()),
        Sw::CONDITIONS_NOT_SATISFIED
    );
    assert_eq!(entry(&mut t, seq).unwrap().status, status::PENDING);
    assert_eq!(sam_data(&mut t), before);

    let st = txn_status(&mut t, &mut p, pw::usage::DEBIT, sam_id, seq);
    assert!(st.applied);
    let r = resolve(&mut t, withheld.purse_id, seq, pw::usage::DEBIT, st);
    assert_eq!((r.sw, r.data), (Sw::OK, vec![status::CONFIRMED]));
    assert_eq!(
        settled_statuses(&mut t, &mut iss),
        vec![(seq, status::CONFIRMED)]
    );
    let s = statement(&mut iss, sam_id);
    assert_eq!(
        (s.sums.purchases, s.sums.purchases_total),
        (2, u64::from(AMOUNT) + 1)
    );
    assert_eq!(s.sums.written_off_purchases, 0);
    assert_eq!(s.open, 0);
    // The token is useless now: the entry is settled and dropped.
    assert_eq!(
        t.sw(ins::APPLY_WRITE_OFF, 0, 0, &token.encode()),
        sw::NO_SUCH_TXN
    );
}

/// A load the purse can no longer answer for is written off at the issuer SAM (which
/// authorises loads and settles its own journal) and counted as a written-off load, apart
/// from purchases and from confirmed loads.
#[test]
fn a_written_off_load_is_counted_as_a_load_write_off() {
    let mut iss = issuer();
    let iss_id = sam_data(&mut iss).sam_id;
    let mut p = purse(&mut iss, &PurseOpts::default());
    let lost = prepare_load(&mut iss, &mut p, AMOUNT, T0);
    for _ in 0..10 {
        load(&mut iss, &mut p, 1);
    }
    assert_eq!(balance(&mut p), 10);
    let purse_id = purse_data(&mut p).purse_id;
    let st = txn_status(&mut iss, &mut p, pw::usage::LOAD, iss_id, lost.sam_txn);
    assert!(!st.applied);
    let r = resolve(&mut iss, purse_id, lost.sam_txn, pw::usage::LOAD, st);
    assert_eq!((r.sw, r.data), (Sw::OK, vec![status::PENDING]));
    // The issuer SAM settles its own journal: export, verify, acknowledge.
    let settle_own = |iss: &mut Chip| loop {
        let b = w::JournalBatch::decode(&iss.ok(ins::EXPORT_JOURNAL, 0, 0, &[])).unwrap();
        if b.final_entries().is_empty() {
            break;
        }
        let ack = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b.encode());
        iss.ok(ins::ACK_JOURNAL, 0, 0, &ack);
    };
    settle_own(&mut iss);
    let pending = entry(&mut iss, lost.sam_txn).unwrap();
    assert_eq!(
        (pending.kind, pending.status),
        (pw::kind::LOAD, status::PENDING)
    );
    let token = iss.ok(ins::WRITE_OFF, 0, 0, &write_off_data(iss_id, &pending));
    iss.ok(ins::APPLY_WRITE_OFF, 0, 0, &token);
    settle_own(&mut iss);
    let s = statement(&mut iss, iss_id);
    assert_eq!(
        (s.sums.written_off_loads, s.sums.written_off_loads_total),
        (1, u64::from(AMOUNT))
    );
    assert_eq!((s.sums.loads, s.sums.loads_total), (10, 10));
    assert_eq!(
        (
            s.sums.written_off_purchases,
            s.sums.written_off_purchases_total
        ),
        (0, 0)
    );
    assert_eq!(s.open, 0);
    assert_eq!(sam_data(&mut iss).journal_count, 0);
}

/// Power cut at every write of the RESOLVE that marks an entry unresolvable: the entry
/// stays PENDING with the same counts, marked or not; the next RESOLVE marks it, and only
/// then does the write-off apply.
#[test]
fn tearing_the_unresolvable_mark() {
    let (mut iss, mut t, mut p, sam_id) = chips();
    let lost = abandoned_past_log(&mut t, &mut p);
    let seq = lost.msg.sam_txn;
    settle_entries(&mut t, &mut iss);
    let pending = entry(&mut t, seq).unwrap();
    let token = iss.ok(ins::WRITE_OFF, 0, 0, &write_off_data(sam_id, &pending));
    let before = sam_data(&mut t);
    let mut k = 0u64;
    loop {
        let st = txn_status(&mut t, &mut p, pw::usage::DEBIT, sam_id, seq);
        let data = w::Resolve {
            purse_id: lost.purse_id,
            sam_txn: seq,
            key_usage: pw::usage::DEBIT,
            status: st,
        }
        .encode();
        t.card.arm_tear(TearPlan {
            after_bytes: Some(k),
            after_commit: false,
        });
        match t.try_send(0x80, ins::RESOLVE, 0, 0, &data) {
            Err(CardError::PowerLost) => {
                t.card.power_on();
                t.select();
                unlock(&mut t);
                assert!(t.card.store_consistent());
                assert_eq!(entry(&mut t, seq).unwrap().status, status::PENDING);
                assert_eq!(sam_data(&mut t), before);
                // A torn RESOLVE left no mark: the write-off is still refused.
                assert_eq!(
                    t.sw(ins::APPLY_WRITE_OFF, 0, 0, &token),
                    Sw::CONDITIONS_NOT_SATISFIED
                );
                k += 1;
            }
            Ok(r) => {
                assert_eq!((r.sw, r.data), (Sw::OK, vec![status::PENDING]));
                disarm(&mut t.card);
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(k < 10_000);
    }
    assert!(k > 0, "RESOLVE writes the mark");
    assert_eq!(sam_data(&mut t), before);
    t.ok(ins::APPLY_WRITE_OFF, 0, 0, &token);
    assert_eq!(entry(&mut t, seq).unwrap().status, status::WRITTEN_OFF);
}
