//! Purse applet: personalisation, load, purchase, exactly-once, recovery and tearing, all
//! through APDUs against an issuer SAM and a terminal SAM.

mod common;

use common::*;
use tessera_apdu::{Response, Sw};
use tessera_os::{CardError, TearPlan};
use tessera_purse::wire::{self as pw, ins, sw};
use tessera_sam::wire as sam_wire;

#[test]
fn personalisation_through_apdus() {
    let mut sam = issuer();
    let mut p = blank_purse(&mut sam, &PurseOpts::default());
    let d = purse_data(&mut p);
    assert_eq!(d.flags & pw::FLAG_PERSONALISED, 0);
    assert_eq!(d.purse_id, pw::purse_id_for(&PurseOpts::default().card_id));
    // No keys: value commands refused, PUT KEYS without INIT PERSO refused.
    assert_eq!(p.sw(ins::INIT_LOAD, 0, 0, &[]), sw::NOT_PERSONALISED);
    assert_eq!(
        p.sw(ins::PUT_KEYS, 0, 0, &[0; 57]),
        Sw::CONDITIONS_NOT_SATISFIED
    );

    let cert = purse_cert(&mut p);
    let ct = p.ok(ins::INIT_PERSO, 0, 0, &[]);
    let req = pw::AttestedKeyRequest::decode(&ct).unwrap();
    assert_eq!((req.ciphertext.len(), req.signature.len()), (256, 256));
    let blob = sam.ok(
        sam_wire::ins::PERSONALISE_PURSE,
        0,
        0,
        &perso_request(&cert, &ct),
    );
    // A tampered blob is refused and changes nothing.
    let mut bad = blob.clone();
    let n = bad.len();
    bad[n - 12] ^= 1;
    assert_eq!(p.sw(ins::PUT_KEYS, 0, 0, &bad), Sw::SM_OBJECTS_INCORRECT);
    assert_eq!(
        p.sw(ins::PUT_KEYS, 0, 0, &blob[..blob.len() - 1]),
        Sw::WRONG_LENGTH
    );
    p.ok(ins::PUT_KEYS, 0, 0, &blob);

    let d = purse_data(&mut p);
    assert_eq!(d.flags, pw::FLAG_PERSONALISED | pw::FLAG_PIN_SET);
    assert_eq!((d.load_key_version, d.debit_key_version), (1, 1));
    assert_eq!((d.balance, d.counter, d.log_count), (0, 0, 0));
    // Personalisation is over: the transport key is gone and the blob cannot be replayed.
    assert_eq!(p.sw(ins::INIT_PERSO, 0, 0, &[]), sw::NOT_PERSONALISED);
    assert_eq!(p.sw(ins::PUT_KEYS, 0, 0, &blob), sw::NOT_PERSONALISED);
    // The issuer SAM refuses to personalise the same purse ID again for another request
    // (the twin's image is this purse's: its first INIT PERSO is the very same request,
    // which gets the very same blob; its second one is a new request).
    let mut twin = blank_purse(&mut sam, &PurseOpts::default());
    let same = twin.ok(ins::INIT_PERSO, 0, 0, &[]);
    assert_eq!(
        sam.ok(
            sam_wire::ins::PERSONALISE_PURSE,
            0,
            0,
            &perso_request(&cert, &same)
        ),
        blob
    );
    let ct = twin.ok(ins::INIT_PERSO, 0, 0, &[]);
    assert_ne!(ct, same);
    assert_eq!(
        sam.sw(
            sam_wire::ins::PERSONALISE_PURSE,
            0,
            0,
            &perso_request(&cert, &ct)
        ),
        sam_wire::sw::ALREADY_PERSONALISED
    );
}

#[test]
fn load_applies_once_and_logs_the_receipt() {
    let mut sam = issuer();
    let mut p = purse(&mut sam, &PurseOpts::default());
    let l = prepare_load(&mut sam, &mut p, 1_500, T0);
    let r = pw::ValueReceipt::decode(&p.ok(ins::LOAD, 0, 0, &l.encode())).unwrap();
    assert_eq!((r.counter, r.balance_after), (0, 1_500));
    assert_eq!(balance(&mut p), 1_500);
    let rec = read_log(&mut p, 0).unwrap();
    assert_eq!(rec.kind, pw::kind::LOAD);
    assert_eq!(
        (rec.amount, rec.balance_after, rec.counter),
        (1_500, 1_500, 0)
    );
    assert_eq!(
        (rec.sam_id, rec.sam_txn, rec.terminal_time),
        (ISSUER_ID, l.sam_txn, T0)
    );
    assert_eq!(rec.proof, r.proof);
    let pid = purse_data(&mut p).purse_id;
    let conf = confirm_data(pid, l.sam_txn, 1_500, &r);
    sam.ok(sam_wire::ins::CONFIRM_LOAD, 0, 0, &conf);
    // CONFIRM again: idempotent.
    sam.ok(sam_wire::ins::CONFIRM_LOAD, 0, 0, &conf);

    // Replay in the same session: the session is gone.
    assert_eq!(
        p.sw(ins::LOAD, 0, 0, &l.encode()),
        Sw::CONDITIONS_NOT_SATISFIED
    );
    // Replay in a new session: the counter moved on.
    p.ok(ins::INIT_LOAD, 0, 0, &[]);
    assert_eq!(p.sw(ins::LOAD, 0, 0, &l.encode()), sw::STALE_SESSION);
    // Replay with the counter rewritten to the current one: the MAC no longer verifies.
    p.ok(ins::INIT_LOAD, 0, 0, &[]);
    let mut forged = l.clone();
    forged.counter = 1;
    assert_eq!(
        p.sw(ins::LOAD, 0, 0, &forged.encode()),
        Sw::SM_OBJECTS_INCORRECT
    );
    assert_eq!(balance(&mut p), 1_500);
    assert_eq!(purse_data(&mut p).counter, 1);
}

#[test]
fn load_for_another_card_is_refused() {
    let mut sam = issuer();
    let mut a = purse(&mut sam, &PurseOpts::id(1));
    let mut b = purse(&mut sam, &PurseOpts::id(2));
    let l = prepare_load(&mut sam, &mut a, 700, T0);
    // Card B in its own session with the same counter value.
    let init_b = pw::InitLoadResponse::decode(&b.ok(ins::INIT_LOAD, 0, 0, &[])).unwrap();
    assert_eq!(init_b.counter, l.counter);
    assert_eq!(b.sw(ins::LOAD, 0, 0, &l.encode()), Sw::SM_OBJECTS_INCORRECT);
    assert_eq!(balance(&mut b), 0);
    // A's session was untouched by that; it still loads.
    p_ok_load(&mut a, &l);
    assert_eq!(balance(&mut a), 700);
}

fn p_ok_load(p: &mut Chip, l: &pw::Load) -> pw::ValueReceipt {
    pw::ValueReceipt::decode(&p.ok(ins::LOAD, 0, 0, &l.encode())).unwrap()
}

#[test]
fn stale_counter_over_max_and_bad_mac() {
    let mut sam = issuer();
    let mut p = purse(
        &mut sam,
        &PurseOpts {
            max_balance: 5_000,
            ..PurseOpts::default()
        },
    );
    load(&mut sam, &mut p, 4_000);

    // Stale counter.
    let mut l = prepare_load(&mut sam, &mut p, 100, T0);
    l.counter = 0;
    assert_eq!(p.sw(ins::LOAD, 0, 0, &l.encode()), sw::STALE_SESSION);

    // Over the maximum balance: refused after a valid MAC; nothing changes.
    let l = prepare_load(&mut sam, &mut p, 1_001, T0);
    assert_eq!(p.sw(ins::LOAD, 0, 0, &l.encode()), sw::OVER_MAXIMUM);
    assert_eq!(balance(&mut p), 4_000);
    assert_eq!(purse_data(&mut p).counter, 1);

    // Bad MAC: refused, and the session is gone (no second try with the right MAC).
    let l = prepare_load(&mut sam, &mut p, 1_000, T0);
    let mut bad = l.clone();
    bad.mac[0] ^= 0x80;
    assert_eq!(
        p.sw(ins::LOAD, 0, 0, &bad.encode()),
        Sw::SM_OBJECTS_INCORRECT
    );
    assert_eq!(
        p.sw(ins::LOAD, 0, 0, &l.encode()),
        Sw::CONDITIONS_NOT_SATISFIED
    );

    // Amount zero is refused.
    p.ok(ins::INIT_LOAD, 0, 0, &[]);
    let mut zero = l.clone();
    zero.amount = 0;
    assert_eq!(p.sw(ins::LOAD, 0, 0, &zero.encode()), Sw::WRONG_DATA);

    // Exactly up to the maximum works.
    let l = prepare_load(&mut sam, &mut p, 1_000, T0);
    assert_eq!(p_ok_load(&mut p, &l).balance_after, 5_000);
}

#[test]
fn purchases_with_and_without_pin() {
    let mut iss = issuer();
    let mut term = terminal(&mut iss, TerminalOpts::default());
    let mut p = purse(&mut iss, &PurseOpts::default());
    load(&mut iss, &mut p, 10_000);

    // Below the PIN threshold: no PIN needed.
    let r = purchase(&mut term, &mut p, 1_200, None).unwrap();
    assert_eq!((r.counter, r.balance_after), (1, 8_800));
    let rec = read_log(&mut p, 0).unwrap();
    assert_eq!(
        (rec.kind, rec.amount, rec.sam_id),
        (pw::kind::PURCHASE, 1_200, [0, 0, 0, 0x10])
    );
    assert_eq!(rec.proof, r.proof);

    // Above it: 6982 without the PIN (and the session is gone), fine with it.
    assert_eq!(
        purchase(&mut term, &mut p, 2_500, None),
        Err(Sw::SECURITY_STATUS_NOT_SATISFIED)
    );
    assert_eq!(balance(&mut p), 8_800);
    // A wrong PIN counts down.
    assert_eq!(
        p.send(0x00, ins::VERIFY, 0, 0x81, b"0000").sw,
        Sw::verify_failed(2)
    );
    assert_eq!(
        p.send(0x00, ins::VERIFY, 0, 0x81, &[]).sw,
        Sw::verify_failed(2)
    );
    let r = purchase(&mut term, &mut p, 2_500, Some(PURSE_PIN)).unwrap();
    assert_eq!(r.balance_after, 6_300);
    assert_eq!(p.send(0x00, ins::VERIFY, 0, 0x81, &[]).sw, Sw::OK);
    // VERIFY with the wrong P2 / CLA.
    assert_eq!(
        p.send(0x00, ins::VERIFY, 0, 0x01, PURSE_PIN).sw,
        Sw::INCORRECT_P1P2
    );
    assert_eq!(
        p.send(0xA0, ins::VERIFY, 0, 0x81, PURSE_PIN).sw,
        Sw::CLA_NOT_SUPPORTED
    );

    // Insufficient funds.
    assert_eq!(
        purchase(&mut term, &mut p, 6_301, Some(PURSE_PIN)),
        Err(sw::INSUFFICIENT_FUNDS)
    );
    assert_eq!(balance(&mut p), 6_300);
    let r = purchase(&mut term, &mut p, 6_300, Some(PURSE_PIN)).unwrap();
    assert_eq!(r.balance_after, 0);
}

#[test]
fn purchase_message_misuse() {
    let mut iss = issuer();
    let mut term = terminal(&mut iss, TerminalOpts::default());
    let mut p = purse(&mut iss, &PurseOpts::default());
    load(&mut iss, &mut p, 5_000);

    // Replay of a completed PURCHASE: no session, then stale counter.
    let pp = prepare_purchase(&mut term, &mut p, 100, T0).unwrap();
    p.ok(ins::PURCHASE, 0, 0, &pp.msg.encode());
    assert_eq!(
        p.sw(ins::PURCHASE, 0, 0, &pp.msg.encode()),
        Sw::CONDITIONS_NOT_SATISFIED
    );
    p.ok(
        ins::INIT_PURCHASE,
        0,
        0,
        &pw::InitPurchase {
            sam_id: pp.msg.sam_id,
            sam_challenge: [0; 8],
        }
        .encode(),
    );
    assert_eq!(
        p.sw(ins::PURCHASE, 0, 0, &pp.msg.encode()),
        sw::STALE_SESSION
    );

    // A changed amount breaks the MAC, and ends the session.
    let pp = prepare_purchase(&mut term, &mut p, 100, T0).unwrap();
    let mut m = pp.msg.clone();
    m.amount = 10;
    assert_eq!(
        p.sw(ins::PURCHASE, 0, 0, &m.encode()),
        Sw::SM_OBJECTS_INCORRECT
    );
    assert_eq!(
        p.sw(ins::PURCHASE, 0, 0, &pp.msg.encode()),
        Sw::CONDITIONS_NOT_SATISFIED
    );

    // A LOAD cannot consume a purchase session.
    let pp = prepare_purchase(&mut term, &mut p, 100, T0).unwrap();
    let as_load = pw::Load {
        amount: 100,
        sam_id: pp.msg.sam_id,
        sam_txn: pp.msg.sam_txn,
        terminal_time: T0,
        counter: pp.msg.counter,
        mac: pp.msg.mac,
    };
    assert_eq!(
        p.sw(ins::LOAD, 0, 0, &as_load.encode()),
        Sw::CONDITIONS_NOT_SATISFIED
    );
    assert_eq!(balance(&mut p), 4_900);

    // Deselect (re-select) and reset end a session.
    let pp = prepare_purchase(&mut term, &mut p, 100, T0).unwrap();
    p.select();
    assert_eq!(
        p.sw(ins::PURCHASE, 0, 0, &pp.msg.encode()),
        Sw::CONDITIONS_NOT_SATISFIED
    );
    let pp = prepare_purchase(&mut term, &mut p, 100, T0).unwrap();
    p.card.reset();
    p.select();
    assert_eq!(
        p.sw(ins::PURCHASE, 0, 0, &pp.msg.encode()),
        Sw::CONDITIONS_NOT_SATISFIED
    );
    assert_eq!(balance(&mut p), 4_900);
}

#[test]
fn counter_exhausted() {
    let mut sam = issuer();
    let mut p = purse(
        &mut sam,
        &PurseOpts {
            counter_limit: 2,
            ..PurseOpts::default()
        },
    );
    load(&mut sam, &mut p, 10);
    let l = prepare_load(&mut sam, &mut p, 10, T0);
    p_ok_load(&mut p, &l);
    assert_eq!(purse_data(&mut p).counter, 2);
    assert_eq!(p.sw(ins::INIT_LOAD, 0, 0, &[]), sw::COUNTER_EXHAUSTED);
    assert_eq!(
        p.sw(
            ins::INIT_PURCHASE,
            0,
            0,
            &pw::InitPurchase {
                sam_id: [0; 4],
                sam_challenge: [0; 8]
            }
            .encode()
        ),
        sw::COUNTER_EXHAUSTED
    );
    assert_eq!(p.sw(ins::LOAD, 0, 0, &l.encode()), sw::COUNTER_EXHAUSTED);
    assert_eq!(balance(&mut p), 20);
}

#[test]
fn cyclic_log_keeps_the_newest() {
    let mut sam = issuer();
    let mut p = purse(
        &mut sam,
        &PurseOpts {
            log_capacity: 3,
            ..PurseOpts::default()
        },
    );
    for amount in 1..=5u32 {
        load(&mut sam, &mut p, amount * 10);
    }
    let d = purse_data(&mut p);
    assert_eq!(
        (d.counter, d.log_count, d.log_capacity, d.balance),
        (5, 3, 3, 150)
    );
    let got: Vec<(u32, u32)> = (0..3)
        .map(|i| read_log(&mut p, i).map(|r| (r.counter, r.amount)).unwrap())
        .collect();
    assert_eq!(got, vec![(4, 50), (3, 40), (2, 30)]);
    assert!(read_log(&mut p, 3).is_none());
}

#[test]
fn status_words_of_malformed_commands() {
    let mut sam = issuer();
    let mut p = purse(&mut sam, &PurseOpts::default());
    assert_eq!(
        p.send(0x00, ins::READ_PURSE_DATA, 0, 0, &[]).sw,
        Sw::CLA_NOT_SUPPORTED
    );
    assert_eq!(p.sw(0x7E, 0, 0, &[]), Sw::INS_NOT_SUPPORTED);
    assert_eq!(p.sw(ins::GET_BALANCE, 1, 0, &[]), Sw::INCORRECT_P1P2);
    assert_eq!(p.sw(ins::GET_BALANCE, 0, 0, &[1]), Sw::WRONG_LENGTH);
    assert_eq!(p.sw(ins::READ_LOG, 0, 1, &[]), Sw::INCORRECT_P1P2);
    assert_eq!(p.sw(ins::READ_LOG, 0, 0, &[]), Sw::RECORD_NOT_FOUND);
    assert_eq!(p.sw(ins::LOAD, 0, 0, &[0; 5]), Sw::WRONG_LENGTH);
    assert_eq!(p.sw(ins::INIT_PURCHASE, 0, 0, &[0; 11]), Sw::WRONG_LENGTH);
    assert_eq!(p.sw(ins::GET_TXN_STATUS, 3, 0, &[0; 8]), Sw::INCORRECT_P1P2);
    assert_eq!(p.sw(ins::GET_TXN_STATUS, 1, 0, &[0; 7]), Sw::WRONG_LENGTH);
    // A logical channel works the same (CLA 81).
    let r = p.send(0x00, 0x70, 0x00, 0x00, &[]);
    assert_eq!(r.sw, Sw::OK);
    let ch = r.data[0];
    let r = p.send(ch, 0xA4, 0x04, 0x00, &pw::PURSE_AID);
    assert_eq!(r.sw, Sw::CONDITIONS_NOT_SATISFIED, "not multi-selectable");
}

#[test]
fn txn_status_not_applied_ends_the_session_and_voids() {
    let mut sam = issuer();
    let mut p = purse(&mut sam, &PurseOpts::default());
    let l = prepare_load(&mut sam, &mut p, 900, T0);
    // The host asks before sending LOAD: not applied, and the LOAD can never apply now.
    let st = txn_status(&mut sam, &mut p, pw::usage::LOAD, ISSUER_ID, l.sam_txn);
    assert!(!st.applied);
    assert_eq!(st.record.counter, 0);
    assert_eq!(
        p.sw(ins::LOAD, 0, 0, &l.encode()),
        Sw::CONDITIONS_NOT_SATISFIED
    );
    let pid = purse_data(&mut p).purse_id;
    // A forged status does not resolve.
    let mut forged = st.clone();
    forged.mac[7] ^= 1;
    assert_eq!(
        resolve(&mut sam, pid, l.sam_txn, pw::usage::LOAD, forged).sw,
        sam_wire::sw::CARD_PROOF_INVALID
    );
    let r = resolve(&mut sam, pid, l.sam_txn, pw::usage::LOAD, st.clone());
    assert_eq!(
        (r.sw, r.data.clone()),
        (Sw::OK, vec![sam_wire::status::VOID])
    );
    // Idempotent.
    assert_eq!(
        resolve(&mut sam, pid, l.sam_txn, pw::usage::LOAD, st).data,
        vec![sam_wire::status::VOID]
    );
    // A voided entry cannot be confirmed.
    let fake = pw::ValueReceipt {
        counter: 0,
        balance_after: 900,
        proof: [0; 8],
    };
    assert_ne!(
        sam.sw(
            sam_wire::ins::CONFIRM_LOAD,
            0,
            0,
            &confirm_data(pid, l.sam_txn, 900, &fake)
        ),
        Sw::OK
    );
    assert_eq!(balance(&mut p), 0);
}

/// GET TXN STATUS with wrong parameters still ends the open session (as LOAD and
/// PURCHASE do): an authorisation prepared in it can no longer apply.
#[test]
fn txn_status_with_wrong_parameters_still_ends_the_session() {
    let mut sam = issuer();
    let mut p = purse(&mut sam, &PurseOpts::default());
    for (p1, p2) in [(0u8, 0u8), (3, 0), (pw::usage::LOAD, 1)] {
        let l = prepare_load(&mut sam, &mut p, 100, T0);
        assert_eq!(
            p.sw(ins::GET_TXN_STATUS, p1, p2, &[0; 16]),
            Sw::INCORRECT_P1P2,
            "P1 {p1:02X} P2 {p2:02X}"
        );
        assert_eq!(
            p.sw(ins::LOAD, 0, 0, &l.encode()),
            Sw::CONDITIONS_NOT_SATISFIED,
            "P1 {p1:02X} P2 {p2:02X}"
        );
    }
    assert_eq!(balance(&mut p), 0);
    // Control: without the status query the same steps apply the load.
    let l = prepare_load(&mut sam, &mut p, 100, T0);
    p.ok(ins::LOAD, 0, 0, &l.encode());
    assert_eq!(balance(&mut p), 100);
}

/// An abandoned purchase authorisation, then `later` purchases on a purse with
/// `log_capacity`; returns the SAM's answer to RESOLVE with the purse's "not applied".
fn resolve_abandoned_after(log_capacity: u8, later: u32) -> (Chip, Response, pw::TxnStatus) {
    let mut iss = issuer();
    let mut term = terminal(&mut iss, TerminalOpts::default());
    let mut p = purse(
        &mut iss,
        &PurseOpts {
            log_capacity,
            ..PurseOpts::default()
        },
    );
    load(&mut iss, &mut p, 1_000);
    // Authorised at counter 1, never sent to the purse.
    let abandoned = prepare_purchase(&mut term, &mut p, 500, T0).unwrap();
    assert_eq!(abandoned.msg.counter, 1);
    for _ in 0..later {
        purchase(&mut term, &mut p, 10, None).unwrap();
    }
    let st = txn_status(
        &mut term,
        &mut p,
        pw::usage::DEBIT,
        abandoned.msg.sam_id,
        abandoned.msg.sam_txn,
    );
    assert!(!st.applied);
    assert_eq!(st.record.counter, 1 + later);
    let r = resolve(
        &mut term,
        abandoned.purse_id,
        abandoned.msg.sam_txn,
        pw::usage::DEBIT,
        st.clone(),
    );
    (term, r, st)
}

#[test]
fn not_applied_voids_after_later_purchases_that_keep_the_log() {
    // Counter 4, log of 8: the records of counters 0-3 are all held, so the purse's "not
    // applied" is conclusive although it moved three steps past the authorisation.
    let (mut term, r, st) = resolve_abandoned_after(8, 3);
    assert_eq!(st.oldest_logged_counter, 0);
    assert_eq!((r.sw, r.data), (Sw::OK, vec![sam_wire::status::VOID]));
    assert_eq!(sam_data(&mut term).pending_count, 0);
    // Log of 4, counter 5: the oldest record held is that of counter 1, the authorised one.
    let (mut term, r, st) = resolve_abandoned_after(4, 4);
    assert_eq!(st.oldest_logged_counter, 1);
    assert_eq!((r.sw, r.data), (Sw::OK, vec![sam_wire::status::VOID]));
    assert_eq!(sam_data(&mut term).pending_count, 0);
}

#[test]
fn not_applied_after_the_log_wrapped_stays_pending() {
    // Log of 2, counter 4: the record of counter 1 may have been overwritten.
    let (mut term, r, st) = resolve_abandoned_after(2, 3);
    assert_eq!(st.oldest_logged_counter, 2);
    // Not conclusive: the entry stays PENDING, marked unresolvable (for a write-off).
    assert_eq!((r.sw, r.data), (Sw::OK, vec![sam_wire::status::PENDING]));
    let d = sam_data(&mut term);
    assert_eq!((d.pending_count, d.journal_count), (1, 4));
    let b =
        sam_wire::JournalBatch::decode(&term.ok(sam_wire::ins::EXPORT_JOURNAL, 0, 0, &[])).unwrap();
    assert_eq!(b.entries[0].status, sam_wire::status::PENDING);
    assert_eq!(b.entries[0].amount, 500);
}

#[test]
fn resolve_refuses_a_status_made_before_the_authorisation() {
    let mut sam = issuer();
    let mut p = purse(&mut sam, &PurseOpts::default());
    let pid = purse_data(&mut p).purse_id;
    // A lying host obtains "not applied" for the next transaction number, before the SAM
    // authorised it, then has the load authorised and applied.
    let next = sam_data(&mut sam).sam_txn + 1;
    let early = txn_status(&mut sam, &mut p, pw::usage::LOAD, ISSUER_ID, next);
    assert!(!early.applied);
    let l = prepare_load(&mut sam, &mut p, 900, T0);
    assert_eq!(l.sam_txn, next);
    p.ok(ins::LOAD, 0, 0, &l.encode());
    assert_eq!(balance(&mut p), 900);
    // The resolve session predates the entry: refused.
    assert_eq!(
        resolve(&mut sam, pid, l.sam_txn, pw::usage::LOAD, early.clone()).sw,
        sam_wire::sw::NO_SESSION
    );
    // A new session has a new challenge: the early status's MAC does not cover it.
    begin_resolve(&mut sam);
    assert_eq!(
        resolve(&mut sam, pid, l.sam_txn, pw::usage::LOAD, early).sw,
        sam_wire::sw::CARD_PROOF_INVALID
    );
    assert_eq!(sam_data(&mut sam).pending_count, 1);
    // Without a session (reset), RESOLVE is refused too.
    sam.power_cycle();
    unlock(&mut sam);
    let fresh = {
        let ch = begin_resolve(&mut sam);
        txn_status_for(&mut p, pw::usage::LOAD, ISSUER_ID, l.sam_txn, ch)
    };
    assert!(fresh.applied);
    sam.select();
    unlock(&mut sam);
    assert_eq!(
        resolve(&mut sam, pid, l.sam_txn, pw::usage::LOAD, fresh.clone()).sw,
        sam_wire::sw::NO_SESSION
    );
    // The honest recovery confirms it.
    let st = txn_status(&mut sam, &mut p, pw::usage::LOAD, ISSUER_ID, l.sam_txn);
    let r = resolve(&mut sam, pid, l.sam_txn, pw::usage::LOAD, st);
    assert_eq!((r.sw, r.data), (Sw::OK, vec![sam_wire::status::CONFIRMED]));
    // Wrong key usage for the entry.
    let st = txn_status(&mut sam, &mut p, pw::usage::DEBIT, ISSUER_ID, l.sam_txn);
    assert_eq!(
        resolve(&mut sam, pid, l.sam_txn, pw::usage::DEBIT, st).sw,
        Sw::WRONG_DATA
    );
}

#[test]
fn after_commit_power_cut_on_purchase_is_recovered_with_the_same_proof() {
    let mut iss = issuer();
    let mut term = terminal(&mut iss, TerminalOpts::default());
    let mut p = purse(&mut iss, &PurseOpts::default());
    load(&mut iss, &mut p, 3_000);

    let pp = prepare_purchase(&mut term, &mut p, 700, T0).unwrap();
    p.card.arm_tear(TearPlan {
        after_bytes: None,
        after_commit: true,
    });
    let cut = p.try_send(0x80, ins::PURCHASE, 0, 0, &pp.msg.encode());
    assert_eq!(cut.err(), Some(CardError::PowerLost));
    p.card.power_on();
    p.select();
    assert!(p.card.store_consistent());
    assert_eq!(balance(&mut p), 2_300);

    let st = txn_status(
        &mut term,
        &mut p,
        pw::usage::DEBIT,
        pp.msg.sam_id,
        pp.msg.sam_txn,
    );
    assert!(st.applied);
    let logged = read_log(&mut p, 0).unwrap();
    assert_eq!(st.record, logged);
    assert_eq!(
        (st.record.amount, st.record.balance_after, st.record.counter),
        (700, 2_300, 1)
    );
    // The SAM accepts the card's status and the proof in it.
    let r = resolve(
        &mut term,
        pp.purse_id,
        pp.msg.sam_txn,
        pw::usage::DEBIT,
        st.clone(),
    );
    assert_eq!((r.sw, r.data), (Sw::OK, vec![sam_wire::status::CONFIRMED]));
    // The proof is the one the card would have sent: CONFIRM with it is idempotent.
    let receipt = pw::ValueReceipt {
        counter: st.record.counter,
        balance_after: st.record.balance_after,
        proof: st.record.proof,
    };
    term.ok(
        sam_wire::ins::CONFIRM_PURCHASE,
        0,
        0,
        &confirm_data(pp.purse_id, pp.msg.sam_txn, 700, &receipt),
    );
    // A normal purchase's response proof equals what GET TXN STATUS reports later.
    let pp2 = prepare_purchase(&mut term, &mut p, 300, T0).unwrap();
    let r2 = pw::ValueReceipt::decode(&p.ok(ins::PURCHASE, 0, 0, &pp2.msg.encode())).unwrap();
    let st2 = txn_status(
        &mut term,
        &mut p,
        pw::usage::DEBIT,
        pp2.msg.sam_id,
        pp2.msg.sam_txn,
    );
    assert!(st2.applied);
    assert_eq!(st2.record.proof, r2.proof);
    // The replayed purchase cannot apply again.
    p.ok(
        ins::INIT_PURCHASE,
        0,
        0,
        &pw::InitPurchase {
            sam_id: pp.msg.sam_id,
            sam_challenge: [0; 8],
        }
        .encode(),
    );
    assert_eq!(
        p.sw(ins::PURCHASE, 0, 0, &pp.msg.encode()),
        sw::STALE_SESSION
    );
    assert_eq!(balance(&mut p), 2_000);
}

#[test]
fn after_commit_power_cut_on_load_is_recovered() {
    let mut sam = issuer();
    let mut p = purse(&mut sam, &PurseOpts::default());
    let l = prepare_load(&mut sam, &mut p, 1_234, T0);
    p.card.arm_tear(TearPlan {
        after_bytes: None,
        after_commit: true,
    });
    assert_eq!(
        p.try_send(0x80, ins::LOAD, 0, 0, &l.encode()).err(),
        Some(CardError::PowerLost)
    );
    p.card.power_on();
    p.select();
    let st = txn_status(&mut sam, &mut p, pw::usage::LOAD, ISSUER_ID, l.sam_txn);
    assert!(st.applied);
    assert_eq!(st.record.balance_after, 1_234);
    let pid = purse_data(&mut p).purse_id;
    let r = resolve(&mut sam, pid, l.sam_txn, pw::usage::LOAD, st);
    assert_eq!((r.sw, r.data), (Sw::OK, vec![sam_wire::status::CONFIRMED]));
    assert_eq!(sam_data(&mut sam).pending_count, 0);
}

/// Check the purse is whole: balance either `before` or `after` with the matching counter
/// and log, and the store replays its log exactly.
fn check_whole(p: &mut Chip, before: (u32, u32), after: (u32, u32)) -> bool {
    assert!(p.card.store_consistent());
    let d = purse_data(p);
    let now = (d.balance, d.counter);
    assert!(
        now == before || now == after,
        "torn state {now:?}, expected {before:?} or {after:?}"
    );
    if d.counter > 0 {
        let rec = read_log(p, 0).expect("newest log record");
        assert_eq!(rec.counter, d.counter - 1);
        assert_eq!(rec.balance_after, d.balance);
    }
    assert_eq!(
        u32::from(d.log_count),
        d.counter.min(u32::from(d.log_capacity))
    );
    now == after
}

#[test]
fn tearing_at_every_byte_of_load() {
    let mut sam = issuer();
    let mut p = purse(&mut sam, &PurseOpts::default());
    load(&mut sam, &mut p, 100);
    let pid = purse_data(&mut p).purse_id;
    let mut k = 0u64;
    loop {
        let d = purse_data(&mut p);
        let before = (d.balance, d.counter);
        let l = prepare_load(&mut sam, &mut p, 25, T0);
        p.card.arm_tear(TearPlan {
            after_bytes: Some(k),
            after_commit: false,
        });
        match p.try_send(0x80, ins::LOAD, 0, 0, &l.encode()) {
            Err(CardError::PowerLost) => {
                p.card.power_on();
                p.select();
                let applied = check_whole(&mut p, before, (before.0 + 25, before.1 + 1));
                assert!(
                    !applied,
                    "a cut inside the commit must leave the old state (k = {k})"
                );
                // Recovery: the purse says not applied; the SAM voids its entry.
                let st = txn_status(&mut sam, &mut p, pw::usage::LOAD, ISSUER_ID, l.sam_txn);
                assert!(!st.applied);
                let r = resolve(&mut sam, pid, l.sam_txn, pw::usage::LOAD, st);
                assert_eq!(r.data, vec![sam_wire::status::VOID]);
                k += 1;
            }
            Ok(r) => {
                assert_eq!(r.sw, Sw::OK);
                disarm(&mut p.card);
                assert!(check_whole(&mut p, before, (before.0 + 25, before.1 + 1)));
                assert!(k > 20, "the commit wrote {k} bytes");
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(k < 10_000);
    }
    assert_eq!(
        sam_data(&mut sam).pending_count,
        1,
        "only the last load waits for CONFIRM"
    );
}

#[test]
fn tearing_at_every_byte_of_purchase() {
    let mut iss = issuer();
    let mut term = terminal(&mut iss, TerminalOpts::default());
    let mut p = purse(&mut iss, &PurseOpts::default());
    load(&mut iss, &mut p, 50_000);
    let mut k = 0u64;
    loop {
        let d = purse_data(&mut p);
        let before = (d.balance, d.counter);
        let pp = prepare_purchase(&mut term, &mut p, 3, T0).unwrap();
        p.card.arm_tear(TearPlan {
            after_bytes: Some(k),
            after_commit: false,
        });
        match p.try_send(0x80, ins::PURCHASE, 0, 0, &pp.msg.encode()) {
            Err(CardError::PowerLost) => {
                p.card.power_on();
                p.select();
                assert!(!check_whole(&mut p, before, (before.0 - 3, before.1 + 1)));
                let st = txn_status(
                    &mut term,
                    &mut p,
                    pw::usage::DEBIT,
                    pp.msg.sam_id,
                    pp.msg.sam_txn,
                );
                assert!(!st.applied);
                let r = resolve(&mut term, pp.purse_id, pp.msg.sam_txn, pw::usage::DEBIT, st);
                assert_eq!(r.data, vec![sam_wire::status::VOID]);
                k += 1;
            }
            Ok(r) => {
                assert_eq!(r.sw, Sw::OK);
                disarm(&mut p.card);
                assert!(check_whole(&mut p, before, (before.0 - 3, before.1 + 1)));
                assert!(k > 20);
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(k < 10_000);
    }
}

#[test]
fn blocked_pin_blocks_large_purchases_only() {
    let mut iss = issuer();
    let mut term = terminal(&mut iss, TerminalOpts::default());
    let mut p = purse(&mut iss, &PurseOpts::default());
    load(&mut iss, &mut p, 5_000);
    for _ in 0..3 {
        let r = p.send(0x00, ins::VERIFY, 0, 0x81, b"9999");
        assert_ne!(r.sw, Sw::OK);
    }
    assert_eq!(
        p.send(0x00, ins::VERIFY, 0, 0x81, PURSE_PIN).sw,
        Sw::AUTH_METHOD_BLOCKED
    );
    assert_eq!(
        p.send(0x00, ins::VERIFY, 0, 0x81, &[]).sw,
        Sw::AUTH_METHOD_BLOCKED
    );
    assert_eq!(
        purchase(&mut term, &mut p, 2_001, None),
        Err(Sw::SECURITY_STATUS_NOT_SATISFIED)
    );
    assert_eq!(
        purchase(&mut term, &mut p, 2_000, None)
            .unwrap()
            .balance_after,
        3_000
    );
}

#[test]
fn purse_without_pin_has_no_threshold() {
    let mut iss = issuer();
    let mut term = terminal(&mut iss, TerminalOpts::default());
    let mut p = purse(
        &mut iss,
        &PurseOpts {
            pin: Vec::new(),
            ..PurseOpts::default()
        },
    );
    let d = purse_data(&mut p);
    assert_eq!((d.flags & pw::FLAG_PIN_SET, d.pin_threshold), (0, u32::MAX));
    assert_eq!(
        p.send(0x00, ins::VERIFY, 0, 0x81, PURSE_PIN).sw,
        Sw::REFERENCED_DATA_NOT_FOUND
    );
    load(&mut iss, &mut p, 9_000);
    assert_eq!(
        purchase(&mut term, &mut p, 8_000, None)
            .unwrap()
            .balance_after,
        1_000
    );
}
