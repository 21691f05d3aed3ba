//! SAM applet: lock, roles, key import, ceilings, journal and settlement, through APDUs.

#[path = "../../purse/tests/common/mod.rs"]
mod common;

use common::*;
use tessera_apdu::Sw;
use tessera_os::{CardError, TearPlan};
use tessera_purse::wire as pw;
use tessera_sam::wire::{self as w, ins, status, sw};

#[test]
fn locked_sam_refuses_everything_but_verify_and_data() {
    let mut sam = issuer();
    sam.card.reset();
    sam.select();
    let d = sam_data(&mut sam);
    assert!(!d.unlocked);
    assert_eq!(d.role, w::role::ISSUER);
    assert_eq!(d.keys.len(), 3);
    assert!(d.keys.iter().all(|k| k.master && k.version == 1));
    for i in [
        ins::GET_PERSO_PUBLIC_KEY,
        ins::PERSONALISE_PURSE,
        ins::EXPORT_SAM_KEYS,
        ins::AUTHORIZE_LOAD,
        ins::CONFIRM_LOAD,
        ins::BEGIN_PURCHASE,
        ins::RESOLVE,
        ins::EXPORT_JOURNAL,
        ins::ACK_JOURNAL,
        ins::VERIFY_JOURNAL,
    ] {
        assert_eq!(
            sam.sw(i, 0, 0, &[]),
            Sw::SECURITY_STATUS_NOT_SATISFIED,
            "INS {i:02X}"
        );
    }
    assert_eq!(
        sam.send(0x00, ins::VERIFY, 0, 0x81, b"9999").sw,
        Sw::verify_failed(4)
    );
    assert_eq!(
        sam.send(0x00, ins::VERIFY, 0, 0x81, &[]).sw,
        Sw::verify_failed(4)
    );
    unlock(&mut sam);
    assert!(sam_data(&mut sam).unlocked);
    assert_eq!(sam.send(0x00, ins::VERIFY, 0, 0x81, &[]).sw, Sw::OK);
    assert_eq!(sam.sw(0x7E, 0, 0, &[]), Sw::INS_NOT_SUPPORTED);
    assert_eq!(
        sam.send(0x00, ins::GET_SAM_DATA, 0, 0, &[]).sw,
        Sw::CLA_NOT_SUPPORTED
    );
    // Deselecting locks it again.
    sam.select();
    assert_eq!(
        sam.sw(ins::BEGIN_PURCHASE, 0, 0, &[]),
        Sw::SECURITY_STATUS_NOT_SATISFIED
    );
}

#[test]
fn terminal_sam_personalisation_and_role() {
    let mut iss = issuer();
    let mut t = terminal(&mut iss, TerminalOpts::default());
    let d = sam_data(&mut t);
    assert_eq!(d.role, w::role::TERMINAL);
    let mut keys: Vec<(u8, bool)> = d.keys.iter().map(|k| (k.usage, k.master)).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![(pw::usage::DEBIT, true), (pw::usage::JOURNAL, false)]
    );
    // Keys imported once only.
    assert_eq!(
        t.sw(ins::INIT_KEY_IMPORT, 0, 0, &[]),
        Sw::CONDITIONS_NOT_SATISFIED
    );
    // A terminal has no load key and no personalisation key.
    let mut p = purse(&mut iss, &PurseOpts::default());
    let init = pw::InitLoadResponse::decode(&p.ok(pw::ins::INIT_LOAD, 0, 0, &[])).unwrap();
    let req = pw::AuthorizeLoad {
        purse_id: init.purse_id,
        currency: init.currency,
        counter: init.counter,
        challenge: init.challenge,
        key_version: init.key_version,
        amount: 10,
        terminal_time: T0,
    };
    assert_eq!(
        t.sw(ins::AUTHORIZE_LOAD, 0, 0, &req.encode()),
        sw::KEY_NOT_HELD
    );
    assert_eq!(t.sw(ins::GET_PERSO_PUBLIC_KEY, 0, 0, &[]), sw::KEY_NOT_HELD);
    assert_eq!(
        t.sw(ins::PERSONALISE_PURSE, 0, 0, &[0; 256]),
        sw::KEY_NOT_HELD
    );
    assert_eq!(
        t.sw(ins::EXPORT_SAM_KEYS, 0, 0, &[2; 257]),
        sw::KEY_NOT_HELD
    );
    assert_eq!(t.sw(ins::VERIFY_JOURNAL, 0, 0, &[0; 14]), sw::KEY_NOT_HELD);
    // It does purchases.
    load(&mut iss, &mut p, 1_000);
    assert_eq!(
        purchase(&mut t, &mut p, 400, None).unwrap().balance_after,
        600
    );
}

#[test]
fn terminal_key_import_refuses_a_tampered_blob_and_unknown_roles() {
    let mut iss = issuer();
    let spki = iss.ok(ins::GET_PERSO_PUBLIC_KEY, 0, 0, &[]);
    let mut card = tessera_os::Card::builder()
        .card_id(vec![1, 2, 3, 4])
        .seed([3; 32])
        .load_file(tessera_sam::load_file())
        .build();
    let params = w::SamInstall {
        sam_id: [0, 0, 0, 0x20],
        role: w::role::TERMINAL,
        pin: SAM_PIN.to_vec(),
        max_per_load: 0,
        max_per_day: 0,
        journal_capacity: 10,
        issuer_perso_spki: spki,
        chip_ca_cert: Vec::new(),
    };
    card.install("sam", &w::SAM_AID, Default::default(), &params.encode())
        .unwrap();
    let mut t = Chip {
        card,
        aid: w::SAM_AID.to_vec(),
    };
    t.card.power_on();
    t.select();
    unlock(&mut t);
    assert_eq!(
        t.sw(ins::IMPORT_KEYS, 0, 0, &[0; 57]),
        Sw::CONDITIONS_NOT_SATISFIED
    );
    let cert = sam_cert(&mut t);
    let ct = t.ok(ins::INIT_KEY_IMPORT, 0, 0, &[]);
    let mut data = export_request(&cert, &ct);
    data[0] = w::role::ISSUER;
    assert_eq!(iss.sw(ins::EXPORT_SAM_KEYS, 0, 0, &data), Sw::WRONG_DATA);
    data[0] = w::role::TERMINAL;
    // A garbled ciphertext no longer carries the chip's signature.
    let mut garbled = data.clone();
    let n = garbled.len();
    garbled[n - 300] ^= 1;
    assert_eq!(
        iss.sw(ins::EXPORT_SAM_KEYS, 0, 0, &garbled),
        sw::ATTESTATION_INVALID
    );
    let mut blob = iss.ok(ins::EXPORT_SAM_KEYS, 0, 0, &data);
    let n = blob.len();
    blob[n - 1] ^= 1;
    assert_eq!(
        t.sw(ins::IMPORT_KEYS, 0, 0, &blob),
        Sw::SM_OBJECTS_INCORRECT
    );
    assert!(sam_data(&mut t).keys.is_empty());
    blob[n - 1] ^= 1;
    t.ok(ins::IMPORT_KEYS, 0, 0, &blob);
    assert_eq!(sam_data(&mut t).keys.len(), 2);
}

#[test]
fn ceilings_per_transaction_and_per_day() {
    let mut iss = issuer();
    let mut t = terminal(
        &mut iss,
        TerminalOpts {
            max_per_load: 1_000,
            max_per_day: 1_500,
            ..TerminalOpts::default()
        },
    );
    let mut p = purse(
        &mut iss,
        &PurseOpts {
            pin_threshold: u32::MAX,
            ..PurseOpts::default()
        },
    );
    load(&mut iss, &mut p, 10_000);
    assert_eq!(
        prepare_purchase(&mut t, &mut p, 1_001, T0).err(),
        Some(sw::CEILING_EXCEEDED)
    );
    let pp = prepare_purchase(&mut t, &mut p, 1_000, T0).unwrap();
    let r1 = pw::ValueReceipt::decode(&p.ok(pw::ins::PURCHASE, 0, 0, &pp.msg.encode())).unwrap();
    assert_eq!(
        prepare_purchase(&mut t, &mut p, 501, T0 + 60).err(),
        Some(sw::CEILING_EXCEEDED)
    );
    assert!(prepare_purchase(&mut t, &mut p, 500, T0 + 60).is_ok());
    let d = sam_data(&mut t);
    assert_eq!((d.day, d.day_total), (T0 / DAY, 1_500));
    // An earlier time counts in the current day: no reset by going back.
    assert_eq!(
        prepare_purchase(&mut t, &mut p, 1, T0 - DAY).err(),
        Some(sw::CEILING_EXCEEDED)
    );
    // The next day alone does not start a new period: no settlement since this one began.
    assert_eq!(
        prepare_purchase(&mut t, &mut p, 1, T0 + DAY).err(),
        Some(sw::CEILING_EXCEEDED)
    );
    // Nothing final to settle yet (both entries PENDING): still the same period.
    assert_eq!(settle(&mut t, &mut iss), 0);
    assert_eq!(
        prepare_purchase(&mut t, &mut p, 1, T0 + DAY).err(),
        Some(sw::CEILING_EXCEEDED)
    );
    // A settlement (the first purchase confirmed, exported, verified, acknowledged): the
    // next day starts from zero.
    t.ok(
        ins::CONFIRM_PURCHASE,
        0,
        0,
        &confirm_data(pp.purse_id, pp.msg.sam_txn, 1_000, &r1),
    );
    assert_eq!(settle(&mut t, &mut iss), 1);
    let pp = prepare_purchase(&mut t, &mut p, 1_000, T0 + DAY).unwrap();
    p.ok(pw::ins::PURCHASE, 0, 0, &pp.msg.encode());
    let d = sam_data(&mut t);
    assert_eq!((d.day, d.day_total), (T0 / DAY + 1, 1_000));

    // Issuer ceilings apply to loads.
    let init = pw::InitLoadResponse::decode(&p.ok(pw::ins::INIT_LOAD, 0, 0, &[])).unwrap();
    let req = pw::AuthorizeLoad {
        purse_id: init.purse_id,
        currency: init.currency,
        counter: init.counter,
        challenge: init.challenge,
        key_version: init.key_version,
        amount: 100_001,
        terminal_time: T0,
    };
    assert_eq!(
        iss.sw(ins::AUTHORIZE_LOAD, 0, 0, &req.encode()),
        sw::CEILING_EXCEEDED
    );
    let zero = pw::AuthorizeLoad {
        amount: 0,
        ..req.clone()
    };
    assert_eq!(
        iss.sw(ins::AUTHORIZE_LOAD, 0, 0, &zero.encode()),
        Sw::WRONG_DATA
    );
    let old_key = pw::AuthorizeLoad {
        amount: 5,
        key_version: 2,
        ..req
    };
    assert_eq!(
        iss.sw(ins::AUTHORIZE_LOAD, 0, 0, &old_key.encode()),
        sw::KEY_NOT_HELD
    );
}

#[test]
fn purchase_authorisation_needs_session_and_genuine_card() {
    let mut iss = issuer();
    let mut t = terminal(&mut iss, TerminalOpts::default());
    let mut p = purse(&mut iss, &PurseOpts::default());
    load(&mut iss, &mut p, 1_000);
    let begin = w::BeginPurchase::decode(&t.ok(ins::BEGIN_PURCHASE, 0, 0, &[])).unwrap();
    let ip = pw::InitPurchaseResponse::decode(&p.ok(
        pw::ins::INIT_PURCHASE,
        0,
        0,
        &begin.init_purchase().encode(),
    ))
    .unwrap();
    let honest = pw::AuthorizePurchase::new(&ip, 10, [1, 2, 3, 4], T0);
    let req = pw::AuthorizePurchase {
        balance: ip.balance + 1, // lie about the balance
        ..honest.clone()
    };
    assert_eq!(
        t.sw(ins::AUTHORIZE_PURCHASE, 0, 0, &req.encode()),
        sw::CARD_PROOF_INVALID
    );
    // The session was consumed by that attempt.
    assert_eq!(
        t.sw(ins::AUTHORIZE_PURCHASE, 0, 0, &honest.encode()),
        sw::NO_SESSION
    );
    assert_eq!(sam_data(&mut t).sam_txn, 0);
}

#[test]
fn confirm_checks_the_proof_and_is_idempotent() {
    let mut iss = issuer();
    let mut p = purse(&mut iss, &PurseOpts::default());
    let l = prepare_load(&mut iss, &mut p, 250, T0);
    let r = pw::ValueReceipt::decode(&p.ok(pw::ins::LOAD, 0, 0, &l.encode())).unwrap();
    let pid = purse_data(&mut p).purse_id;
    assert_eq!(
        iss.sw(
            ins::CONFIRM_LOAD,
            0,
            0,
            &confirm_data(pid, l.sam_txn + 1, 250, &r)
        ),
        sw::NO_SUCH_TXN
    );
    assert_eq!(
        iss.sw(
            ins::CONFIRM_LOAD,
            0,
            0,
            &confirm_data([9; 8], l.sam_txn, 250, &r)
        ),
        sw::NO_SUCH_TXN
    );
    assert_eq!(
        iss.sw(
            ins::CONFIRM_PURCHASE,
            0,
            0,
            &confirm_data(pid, l.sam_txn, 250, &r)
        ),
        sw::NO_SUCH_TXN
    );
    assert_eq!(
        iss.sw(
            ins::CONFIRM_LOAD,
            0,
            0,
            &confirm_data(pid, l.sam_txn, 251, &r)
        ),
        sw::CARD_PROOF_INVALID
    );
    let mut bad = r.clone();
    bad.balance_after += 1;
    assert_eq!(
        iss.sw(
            ins::CONFIRM_LOAD,
            0,
            0,
            &confirm_data(pid, l.sam_txn, 250, &bad)
        ),
        sw::CARD_PROOF_INVALID
    );
    assert_eq!(sam_data(&mut iss).pending_count, 1);
    iss.ok(
        ins::CONFIRM_LOAD,
        0,
        0,
        &confirm_data(pid, l.sam_txn, 250, &r),
    );
    iss.ok(
        ins::CONFIRM_LOAD,
        0,
        0,
        &confirm_data(pid, l.sam_txn, 250, &r),
    );
    assert_eq!(sam_data(&mut iss).pending_count, 0);
}

fn export(sam: &mut Chip, max: u8) -> w::JournalBatch {
    w::JournalBatch::decode(&sam.ok(ins::EXPORT_JOURNAL, max, 0, &[])).unwrap()
}

/// The host's settle loop by APDUs: export, verify at the issuer and acknowledge while a
/// batch shows a final entry; returns the number of entries settled.
fn settle(sam: &mut Chip, iss: &mut Chip) -> usize {
    settle_entries(sam, iss).len()
}

/// As [`settle`]; returns the entries settled (shown final in an acknowledged batch).
fn settle_entries(sam: &mut Chip, iss: &mut Chip) -> Vec<w::JournalEntry> {
    let mut settled = Vec::new();
    loop {
        let raw = sam.ok(ins::EXPORT_JOURNAL, 0, 0, &[]);
        assert!(raw.len() < 8 * 1024, "batch of {} bytes", raw.len());
        let b = w::JournalBatch::decode(&raw).unwrap();
        let finals: Vec<w::JournalEntry> = b
            .entries
            .iter()
            .filter(|e| e.status != status::PENDING)
            .cloned()
            .collect();
        if finals.is_empty() {
            return settled;
        }
        let ack = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b.encode());
        sam.ok(ins::ACK_JOURNAL, 0, 0, &ack);
        settled.extend(finals);
    }
}

/// `abandoned` purchase authorisations that never complete (card pulled; one of them was
/// applied by the purse, its answer lost), then 150 confirmed purchases: the settle loop
/// (P1 = 64) settles every confirmed one exactly once, in batches under 8 KB; the PENDING
/// entries stay; the one resolved later is settled by a later batch, once.
fn abandoned_payments_do_not_stall_settlement(abandoned: usize) {
    let mut iss = issuer();
    let mut t = terminal(&mut iss, TerminalOpts::default());
    let mut p = purse(
        &mut iss,
        &PurseOpts {
            pin_threshold: u32::MAX,
            ..PurseOpts::default()
        },
    );
    load(&mut iss, &mut p, 10_000);
    // Applied by the purse, the answer lost: PENDING until confirmed.
    let lost = prepare_purchase(&mut t, &mut p, 7, T0).unwrap();
    let receipt =
        pw::ValueReceipt::decode(&p.ok(pw::ins::PURCHASE, 0, 0, &lost.msg.encode())).unwrap();
    for _ in 1..abandoned {
        prepare_purchase(&mut t, &mut p, 1, T0).unwrap();
    }
    let mut confirmed = Vec::new();
    for _ in 0..150 {
        purchase(&mut t, &mut p, 2, None).unwrap();
        confirmed.push(sam_data(&mut t).sam_txn);
    }
    let settled = settle_entries(&mut t, &mut iss);
    let mut seqs: Vec<u32> = settled.iter().map(|e| e.seq).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs, confirmed,
        "every confirmed payment settled exactly once"
    );
    assert!(
        settled
            .iter()
            .all(|e| e.status == status::CONFIRMED && e.amount == 2)
    );
    let d = sam_data(&mut t);
    let n = u16::try_from(abandoned).unwrap();
    assert_eq!((d.journal_count, d.pending_count), (n, n));
    // Nothing left to settle.
    assert!(settle_entries(&mut t, &mut iss).is_empty());
    // The lost purchase is resolved later (its receipt confirmed): a later batch settles it.
    t.ok(
        ins::CONFIRM_PURCHASE,
        0,
        0,
        &confirm_data(lost.purse_id, lost.msg.sam_txn, 7, &receipt),
    );
    let later = settle_entries(&mut t, &mut iss);
    assert_eq!(
        later.iter().map(|e| (e.seq, e.status)).collect::<Vec<_>>(),
        vec![(lost.msg.sam_txn, status::CONFIRMED)]
    );
    assert!(settle_entries(&mut t, &mut iss).is_empty());
    let d = sam_data(&mut t);
    assert_eq!((d.journal_count, d.pending_count), (n - 1, n - 1));
    // Every PENDING entry was shown to the issuer at least once (the back end sees it),
    // and none is shown again once reported: the next batch is empty.
    assert!(export(&mut t, 0).entries.is_empty());
}

#[test]
fn settlement_does_not_stall_behind_64_abandoned_payments() {
    abandoned_payments_do_not_stall_settlement(64);
}

#[test]
fn settlement_does_not_stall_behind_100_abandoned_payments() {
    abandoned_payments_do_not_stall_settlement(100);
}

/// The issuer keeps every sequence number a batch passes without showing it final open:
/// PENDING entries beyond the per-batch cap, not shown by the first batch, are shown and
/// settled later, each once; a batch replayed is refused.
#[test]
fn pending_entries_beyond_the_cap_are_shown_by_later_batches() {
    let mut iss = issuer();
    let mut t = terminal(&mut iss, TerminalOpts::default());
    let mut p = purse(&mut iss, &PurseOpts::default());
    load(&mut iss, &mut p, 10_000);
    for _ in 0..100 {
        prepare_purchase(&mut t, &mut p, 1, T0).unwrap();
    }
    purchase(&mut t, &mut p, 3, None).unwrap();
    let b1 = export(&mut t, 0);
    let pend: Vec<u32> = b1
        .entries
        .iter()
        .filter(|e| e.status == status::PENDING)
        .map(|e| e.seq)
        .collect();
    assert_eq!(pend, (1..=64).collect::<Vec<u32>>());
    assert_eq!(
        b1.entries.last().map(|e| (e.seq, e.status)),
        Some((101, status::CONFIRMED))
    );
    let ack1 = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b1.encode());
    t.ok(ins::ACK_JOURNAL, 0, 0, &ack1);
    // The next batch shows the 36 not shown yet: nothing new for the issuer (already
    // open), so it is refused and they are shown again with the next settlement.
    let b2 = export(&mut t, 0);
    assert_eq!(
        b2.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (65..=100).collect::<Vec<u32>>()
    );
    assert_eq!(
        iss.sw(ins::VERIFY_JOURNAL, 0, 0, &b2.encode()),
        sw::ALREADY_SETTLED
    );
    purchase(&mut t, &mut p, 4, None).unwrap();
    let b3 = export(&mut t, 0);
    let mut want: Vec<u32> = (65..=100).collect();
    want.push(102);
    assert_eq!(b3.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), want);
    let ack3 = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b3.encode());
    t.ok(ins::ACK_JOURNAL, 0, 0, &ack3);
    assert!(export(&mut t, 0).entries.is_empty());
    // b3 again: its ack again (the last batch verified); b1 again: refused.
    assert_eq!(iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b3.encode()), ack3);
    assert_eq!(
        iss.sw(ins::VERIFY_JOURNAL, 0, 0, &b1.encode()),
        sw::ALREADY_SETTLED
    );
    // Entry 80 (passed over by b1, shown PENDING by b3) resolved: settled once.
    let pid = purse_data(&mut p).purse_id;
    let st = txn_status(&mut t, &mut p, pw::usage::DEBIT, [0, 0, 0, 0x10], 80);
    let r = resolve(&mut t, pid, 80, pw::usage::DEBIT, st);
    assert_eq!(r.data, vec![status::VOID]);
    let b4 = export(&mut t, 0);
    assert_eq!(
        b4.entries
            .iter()
            .map(|e| (e.seq, e.status))
            .collect::<Vec<_>>(),
        vec![(80, status::VOID)]
    );
    let ack4 = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b4.encode());
    t.ok(ins::ACK_JOURNAL, 0, 0, &ack4);
    assert_eq!(sam_data(&mut t).journal_count, 99);
    assert_eq!(
        iss.sw(ins::VERIFY_JOURNAL, 0, 0, &b3.encode()),
        sw::ALREADY_SETTLED
    );
}

#[test]
fn journal_full_then_settled() {
    let mut iss = issuer();
    let mut t = terminal(
        &mut iss,
        TerminalOpts {
            journal_capacity: 2,
            ..TerminalOpts::default()
        },
    );
    let mut p = purse(&mut iss, &PurseOpts::default());
    load(&mut iss, &mut p, 1_000);
    purchase(&mut t, &mut p, 10, None).unwrap();
    let pending = prepare_purchase(&mut t, &mut p, 20, T0).unwrap();
    assert_eq!(
        prepare_purchase(&mut t, &mut p, 30, T0).err(),
        Some(sw::JOURNAL_FULL)
    );

    // Export, verify at the issuer, acknowledge: the PENDING entry stays.
    let batch = export(&mut t, 0);
    assert_eq!(batch.entries.len(), 2);
    assert_eq!(batch.entries[0].status, status::CONFIRMED);
    assert_eq!(batch.entries[1].status, status::PENDING);
    let ack = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &batch.encode());
    t.ok(ins::ACK_JOURNAL, 0, 0, &ack);
    let d = sam_data(&mut t);
    assert_eq!((d.journal_count, d.pending_count), (1, 1));
    assert_eq!(prepare_purchase(&mut t, &mut p, 30, T0).err(), None);
    assert_eq!(
        prepare_purchase(&mut t, &mut p, 30, T0).err(),
        Some(sw::JOURNAL_FULL)
    );

    // Export while PENDING: the entry the issuer already saw PENDING (in an acknowledged
    // batch) is not shown again, the new one is; once that batch is acknowledged too, the
    // next batch is empty: nothing new to settle. Then the first entry is resolved (the
    // purse never saw it).
    let b = export(&mut t, 1);
    assert_eq!(
        b.entries
            .iter()
            .map(|e| (e.seq, e.status))
            .collect::<Vec<_>>(),
        vec![(3, status::PENDING)]
    );
    let ack = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b.encode());
    t.ok(ins::ACK_JOURNAL, 0, 0, &ack);
    assert_eq!(sam_data(&mut t).journal_count, 2);
    let stale = export(&mut t, 1);
    assert!(stale.entries.is_empty());
    assert_eq!(
        iss.sw(ins::VERIFY_JOURNAL, 0, 0, &stale.encode()),
        sw::ALREADY_SETTLED
    );
    let st = txn_status(
        &mut t,
        &mut p,
        pw::usage::DEBIT,
        pending.msg.sam_id,
        pending.msg.sam_txn,
    );
    assert!(!st.applied);
    let r = resolve(
        &mut t,
        pending.purse_id,
        pending.msg.sam_txn,
        pw::usage::DEBIT,
        st,
    );
    assert_eq!(r.data, vec![status::VOID]);
    assert_eq!(sam_data(&mut t).journal_count, 2);
    let batch = export(&mut t, 1);
    assert_eq!(batch.entries.len(), 1);
    assert_eq!(batch.entries[0].status, status::VOID);
    let ack = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &batch.encode());
    t.ok(ins::ACK_JOURNAL, 0, 0, &ack);
    assert_eq!(sam_data(&mut t).journal_count, 1);
}

#[test]
fn journal_acks_are_bound_to_the_sam_and_its_key() {
    let mut iss = issuer();
    let mut t1 = terminal(
        &mut iss,
        TerminalOpts {
            sam_id: [0, 0, 0, 0x31],
            ..TerminalOpts::default()
        },
    );
    let mut t2 = terminal(
        &mut iss,
        TerminalOpts {
            sam_id: [0, 0, 0, 0x32],
            ..TerminalOpts::default()
        },
    );
    let mut p = purse(&mut iss, &PurseOpts::default());
    load(&mut iss, &mut p, 1_000);
    purchase(&mut t1, &mut p, 10, None).unwrap();
    purchase(&mut t2, &mut p, 20, None).unwrap();

    let b1 = export(&mut t1, 0);
    let b2 = export(&mut t2, 0);
    assert_eq!(b1.sam_id, [0, 0, 0, 0x31]);
    assert_eq!(b1.entries[0].amount, 10);
    // A tampered batch does not verify.
    let mut forged = b1.clone();
    forged.entries[0].amount = 1;
    assert_eq!(
        iss.sw(ins::VERIFY_JOURNAL, 0, 0, &forged.encode()),
        Sw::SM_OBJECTS_INCORRECT
    );
    // A batch under another SAM's name does not verify.
    let mut renamed = b1.clone();
    renamed.sam_id = b2.sam_id;
    assert_eq!(
        iss.sw(ins::VERIFY_JOURNAL, 0, 0, &renamed.encode()),
        Sw::SM_OBJECTS_INCORRECT
    );

    let ack1 = w::JournalAck::decode(&iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b1.encode())).unwrap();
    // T1's ack is not T2's: wrong SAM ID, or T2's ID with T1's MAC.
    assert_eq!(
        t2.sw(ins::ACK_JOURNAL, 0, 0, &ack1.encode()),
        Sw::WRONG_DATA
    );
    let spoof = w::JournalAck {
        sam_id: b2.sam_id,
        ..ack1.clone()
    };
    assert_eq!(
        t2.sw(ins::ACK_JOURNAL, 0, 0, &spoof.encode()),
        Sw::SM_OBJECTS_INCORRECT
    );
    // A host-made ack is refused.
    let host_made = w::JournalAck {
        sam_id: b2.sam_id,
        last_seq: 99,
        batch_mac: b2.mac,
        mac: [0; 8],
    };
    assert_eq!(
        t2.sw(ins::ACK_JOURNAL, 0, 0, &host_made.encode()),
        Sw::SM_OBJECTS_INCORRECT
    );
    assert_eq!(sam_data(&mut t2).journal_count, 1);
    t1.ok(ins::ACK_JOURNAL, 0, 0, &ack1.encode());
    assert_eq!(sam_data(&mut t1).journal_count, 0);

    // The issuer settles its own journal too.
    let bi = export(&mut iss, 0);
    assert_eq!(bi.entries.len(), 1);
    assert_eq!(bi.entries[0].kind, pw::kind::LOAD);
    let ack = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &bi.encode());
    iss.ok(ins::ACK_JOURNAL, 0, 0, &ack);
    assert_eq!(sam_data(&mut iss).journal_count, 0);
}

#[test]
fn sam_txn_is_durable_and_grows() {
    let mut iss = issuer();
    let mut p = purse(&mut iss, &PurseOpts::default());
    load(&mut iss, &mut p, 1);
    load(&mut iss, &mut p, 1);
    assert_eq!(sam_data(&mut iss).sam_txn, 2);
    iss.power_cycle();
    unlock(&mut iss);
    let l = prepare_load(&mut iss, &mut p, 1, T0);
    assert_eq!(l.sam_txn, 3);
}

#[test]
fn tearing_during_authorize_load_keeps_txn_and_journal_together() {
    let mut iss = issuer();
    let mut p = purse(&mut iss, &PurseOpts::default());
    let mut k = 0u64;
    loop {
        let before = sam_data(&mut iss);
        let init = pw::InitLoadResponse::decode(&p.ok(pw::ins::INIT_LOAD, 0, 0, &[])).unwrap();
        let req = pw::AuthorizeLoad {
            purse_id: init.purse_id,
            currency: init.currency,
            counter: init.counter,
            challenge: init.challenge,
            key_version: init.key_version,
            amount: 5,
            terminal_time: T0,
        };
        iss.card.arm_tear(TearPlan {
            after_bytes: Some(k),
            after_commit: false,
        });
        let r = iss.try_send(0x80, ins::AUTHORIZE_LOAD, 0, 0, &req.encode());
        match r {
            Err(CardError::PowerLost) => {
                iss.card.power_on();
                iss.select();
                unlock(&mut iss);
                assert!(iss.card.store_consistent());
                let after = sam_data(&mut iss);
                assert_eq!(after.sam_txn, before.sam_txn);
                assert_eq!(after.journal_count, before.journal_count);
                assert_eq!(after.day_total, before.day_total);
                k += 1;
            }
            Ok(r) => {
                assert_eq!(r.sw, Sw::OK);
                disarm(&mut iss.card);
                let after = sam_data(&mut iss);
                assert_eq!(after.sam_txn, before.sam_txn + 1);
                assert_eq!(after.journal_count, before.journal_count + 1);
                assert_eq!(after.pending_count, before.pending_count + 1);
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(k < 10_000);
    }
    assert!(k > 20);
}

/// The journal counts of GET SAM DATA (kept in the state record, never recounted) follow
/// every AUTHORIZE, CONFIRM, EXPORT and ACK, across buckets of 256 sequence numbers and a
/// power cycle; the oldest entry (kept PENDING) is shown by the first batch, then (reported
/// to the issuer in an acknowledged batch) no longer holds the later ones back.
#[test]
fn journal_counts_follow_every_change() {
    let mut iss = issuer();
    let mut p = purse(&mut iss, &PurseOpts::default());
    // seq 1: authorised, never applied: stays PENDING.
    let abandoned = prepare_load(&mut iss, &mut p, 1, T0);
    assert_eq!(abandoned.sam_txn, 1);
    for _ in 0..300 {
        load(&mut iss, &mut p, 1);
    }
    let d = sam_data(&mut iss);
    assert_eq!((d.journal_count, d.pending_count, d.sam_txn), (301, 1, 301));
    // Settle in batches of 100: the PENDING entry stays, every other one goes.
    let mut acked = 0;
    loop {
        let b = export(&mut iss, 100);
        let seqs: Vec<u32> = b.entries.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let finals = b
            .entries
            .iter()
            .filter(|e| e.status != status::PENDING)
            .count();
        assert!(finals <= 100);
        if acked == 0 {
            assert_eq!((seqs[0], b.entries[0].status), (1, status::PENDING));
            assert_eq!(b.entries.len(), 101);
        } else {
            assert_eq!(finals, b.entries.len(), "{seqs:?}");
        }
        if finals == 0 {
            break;
        }
        acked += finals;
        let ack = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b.encode());
        iss.ok(ins::ACK_JOURNAL, 0, 0, &ack);
        let d = sam_data(&mut iss);
        assert_eq!(usize::from(d.journal_count), 301 - acked);
        assert_eq!(d.pending_count, 1);
    }
    assert_eq!(acked, 300);
    iss.power_cycle();
    unlock(&mut iss);
    let d = sam_data(&mut iss);
    assert_eq!((d.journal_count, d.pending_count), (1, 1));
    // New entries after a long gap of dropped sequence numbers; the old PENDING entry,
    // known to the issuer, is not shown again (peek shows it, of any status).
    load(&mut iss, &mut p, 1);
    let b = export(&mut iss, 0);
    assert_eq!(
        b.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![302]
    );
    let peek = w::JournalBatch::decode(&iss.ok(ins::EXPORT_JOURNAL, 0, 1, &[])).unwrap();
    assert_eq!(
        peek.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 302]
    );
    // A peek from a sequence number: the entries held from there on, across the gap.
    let from = |iss: &mut Chip, max: u8, seq: u32| {
        w::JournalBatch::decode(&iss.ok(ins::EXPORT_JOURNAL, max, 1, &seq.to_be_bytes()))
            .unwrap()
            .entries
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(from(&mut iss, 0, 2), vec![302]);
    assert_eq!(from(&mut iss, 1, 1), vec![1]);
    assert_eq!(from(&mut iss, 0, 302), vec![302]);
    assert_eq!(from(&mut iss, 0, 303), Vec::<u32>::new());
    // Data of another length: 6700; an export (P2 = 00) takes none.
    assert_eq!(iss.sw(ins::EXPORT_JOURNAL, 0, 1, &[0, 1]), Sw::WRONG_LENGTH);
    assert_eq!(
        iss.sw(ins::EXPORT_JOURNAL, 0, 0, &2u32.to_be_bytes()),
        Sw::WRONG_LENGTH
    );
}

/// A batch that showed a final entry is exported again, identical, until its ack arrives:
/// B1 shows e PENDING; e is resolved; the next export is still B1 (so the issuer, which may
/// have verified B1 already, sees the same batch and re-issues the same ack). B1's ack
/// drops only what B1 showed final; e leaves with the next batch, which shows it VOID.
#[test]
fn unacknowledged_batch_is_exported_again_identically() {
    let mut iss = issuer();
    let mut t = terminal(&mut iss, TerminalOpts::default());
    let mut p = purse(&mut iss, &PurseOpts::default());
    load(&mut iss, &mut p, 1_000);
    purchase(&mut t, &mut p, 10, None).unwrap();
    let e = prepare_purchase(&mut t, &mut p, 20, T0).unwrap();

    let b1 = export(&mut t, 0);
    assert_eq!(
        b1.entries.iter().map(|x| x.status).collect::<Vec<_>>(),
        vec![status::CONFIRMED, status::PENDING]
    );
    let ack1_bytes = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b1.encode());
    let ack1 = w::JournalAck::decode(&ack1_bytes).unwrap();
    assert_eq!(ack1.batch_mac, b1.mac);
    assert_eq!(ack1.last_seq, e.msg.sam_txn);

    let st = txn_status(
        &mut t,
        &mut p,
        pw::usage::DEBIT,
        e.msg.sam_id,
        e.msg.sam_txn,
    );
    let r = resolve(&mut t, e.purse_id, e.msg.sam_txn, pw::usage::DEBIT, st);
    assert_eq!(r.data, vec![status::VOID]);
    // Still B1, whatever P1 asks, across a power cycle; the issuer re-issues B1's ack.
    assert_eq!(export(&mut t, 1), b1);
    t.power_cycle();
    unlock(&mut t);
    assert_eq!(export(&mut t, 0), b1);
    assert_eq!(iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b1.encode()), ack1_bytes);

    // An ack naming another batch MAC with B1's ack MAC does not verify.
    let relabelled = w::JournalAck {
        batch_mac: [0x55; 8],
        ..ack1.clone()
    };
    assert_eq!(
        t.sw(ins::ACK_JOURNAL, 0, 0, &relabelled.encode()),
        Sw::SM_OBJECTS_INCORRECT
    );
    // B1's ack drops the entry B1 showed CONFIRMED, not e (B1 showed it PENDING).
    t.ok(ins::ACK_JOURNAL, 0, 0, &ack1_bytes);
    let d = sam_data(&mut t);
    assert_eq!((d.journal_count, d.pending_count), (1, 0));

    // The next batch shows e VOID; verified and acknowledged, it settles it; its ack
    // again is harmless.
    let b2 = export(&mut t, 0);
    assert_eq!(b2.entries.len(), 1);
    assert_eq!(b2.entries[0].status, status::VOID);
    let ack2 = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b2.encode());
    t.ok(ins::ACK_JOURNAL, 0, 0, &ack2);
    assert_eq!(sam_data(&mut t).journal_count, 0);
    t.ok(ins::ACK_JOURNAL, 0, 0, &ack2);
    assert_eq!(sam_data(&mut t).journal_count, 0);

    // An ack of a batch that showed an entry PENDING never drops it, even when it is
    // settled before the ack arrives (and no batch was exported in between).
    let e2 = prepare_purchase(&mut t, &mut p, 30, T0).unwrap();
    let b4 = export(&mut t, 0);
    let ack4 = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b4.encode());
    let st = txn_status(
        &mut t,
        &mut p,
        pw::usage::DEBIT,
        e2.msg.sam_id,
        e2.msg.sam_txn,
    );
    resolve(&mut t, e2.purse_id, e2.msg.sam_txn, pw::usage::DEBIT, st);
    t.ok(ins::ACK_JOURNAL, 0, 0, &ack4);
    let d = sam_data(&mut t);
    assert_eq!((d.journal_count, d.pending_count), (1, 0));
    // Once a later batch was exported, the earlier ack is refused and drops nothing.
    let b5 = export(&mut t, 0);
    assert_eq!(b5.entries[0].status, status::VOID);
    assert_eq!(
        t.sw(ins::ACK_JOURNAL, 0, 0, &ack4),
        Sw::CONDITIONS_NOT_SATISFIED
    );
    assert_eq!(sam_data(&mut t).journal_count, 1);
    let ack5 = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b5.encode());
    t.ok(ins::ACK_JOURNAL, 0, 0, &ack5);
    assert_eq!(sam_data(&mut t).journal_count, 0);
}

/// The issuer settles each entry once: a crash between VERIFY JOURNAL and ACK JOURNAL
/// (the ack lost) ends with the same batch exported again and the same ack re-issued,
/// nothing settled twice; an old batch replayed later is refused (692B); a forged batch
/// does not verify (6988); a VERIFY torn at any byte leaves the issuer answering the same
/// ack for the batch.
#[test]
fn issuer_settles_each_batch_once() {
    let mut iss = issuer();
    let mut t = terminal(&mut iss, TerminalOpts::default());
    let mut p = purse(&mut iss, &PurseOpts::default());
    load(&mut iss, &mut p, 1_000);
    purchase(&mut t, &mut p, 10, None).unwrap();
    purchase(&mut t, &mut p, 20, None).unwrap();

    let b1 = export(&mut t, 0);
    // VERIFY torn at every byte: afterwards the issuer either settled b1 or not, and
    // answers b1's ack either way.
    let mut k = 0u64;
    let ack1 = loop {
        iss.card.arm_tear(TearPlan {
            after_bytes: Some(k),
            after_commit: false,
        });
        match iss.try_send(0x80, ins::VERIFY_JOURNAL, 0, 0, &b1.encode()) {
            Err(CardError::PowerLost) => {
                iss.card.power_on();
                iss.select();
                unlock(&mut iss);
                assert!(iss.card.store_consistent());
                k += 1;
            }
            Ok(r) => {
                assert_eq!(r.sw, Sw::OK);
                disarm(&mut iss.card);
                break r.data;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(k < 10_000);
    };
    assert!(k > 0);
    // The ack is lost; the terminal loses power; the host comes back and a purchase
    // happens before the settlement is run again.
    t.power_cycle();
    unlock(&mut t);
    purchase(&mut t, &mut p, 30, None).unwrap();
    let again = export(&mut t, 0);
    assert_eq!(again, b1);
    assert_eq!(iss.ok(ins::VERIFY_JOURNAL, 0, 0, &again.encode()), ack1);
    t.ok(ins::ACK_JOURNAL, 0, 0, &ack1);
    assert_eq!(sam_data(&mut t).journal_count, 1);

    let b2 = export(&mut t, 0);
    assert_eq!(b2.entries.len(), 1);
    assert_eq!(b2.entries[0].amount, 30);
    // A forged batch: an amount changed, or entries dropped, under the old MAC.
    let mut forged = b2.clone();
    forged.entries[0].amount = 3_000;
    assert_eq!(
        iss.sw(ins::VERIFY_JOURNAL, 0, 0, &forged.encode()),
        Sw::SM_OBJECTS_INCORRECT
    );
    let mut truncated = b1.clone();
    truncated.entries.pop();
    assert_eq!(
        iss.sw(ins::VERIFY_JOURNAL, 0, 0, &truncated.encode()),
        Sw::SM_OBJECTS_INCORRECT
    );
    let ack2 = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b2.encode());
    t.ok(ins::ACK_JOURNAL, 0, 0, &ack2);
    assert_eq!(sam_data(&mut t).journal_count, 0);
    // The old batch, replayed: refused, nothing settled again.
    assert_eq!(
        iss.sw(ins::VERIFY_JOURNAL, 0, 0, &b1.encode()),
        sw::ALREADY_SETTLED
    );
    // The last batch again: its ack again (a lost ack), nothing settled again.
    assert_eq!(iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b2.encode()), ack2);
    // An empty batch shows nothing to settle.
    let empty = export(&mut t, 0);
    assert!(empty.entries.is_empty());
    assert_eq!(
        iss.sw(ins::VERIFY_JOURNAL, 0, 0, &empty.encode()),
        sw::ALREADY_SETTLED
    );
    // The settlement state survives a power cycle of the issuer.
    iss.power_cycle();
    unlock(&mut iss);
    assert_eq!(
        iss.sw(ins::VERIFY_JOURNAL, 0, 0, &b1.encode()),
        sw::ALREADY_SETTLED
    );
}

/// The SAM has no clock: it refuses a terminal time more than MAX_TIME_STEP ahead of the
/// latest time it accepted (a host cannot open a far-future day, which would freeze the
/// daily ceiling, or jump days at will), and the bound moves with each accepted time.
#[test]
fn terminal_time_far_ahead_is_refused() {
    let mut iss = issuer();
    let mut t = terminal(
        &mut iss,
        TerminalOpts {
            max_per_day: 1_000,
            ..TerminalOpts::default()
        },
    );
    let mut p = purse(
        &mut iss,
        &PurseOpts {
            pin_threshold: u32::MAX,
            ..PurseOpts::default()
        },
    );
    load(&mut iss, &mut p, 10_000);
    let pp = prepare_purchase(&mut t, &mut p, 1_000, T0).unwrap();
    let r1 = pw::ValueReceipt::decode(&p.ok(pw::ins::PURCHASE, 0, 0, &pp.msg.encode())).unwrap();
    let before = sam_data(&mut t);
    // Far future: refused, nothing journalled, the day unchanged.
    for ahead in [w::MAX_TIME_STEP + 1, 365 * DAY, u32::MAX - T0] {
        assert_eq!(
            prepare_purchase(&mut t, &mut p, 1, T0 + ahead).err(),
            Some(sw::TIME_OUT_OF_RANGE),
            "{ahead}"
        );
    }
    let d = sam_data(&mut t);
    assert_eq!(
        (d.sam_txn, d.day, d.day_total),
        (before.sam_txn, before.day, before.day_total)
    );
    // Settled, so a later day may open a new period. Exactly the bound: accepted, a new
    // day; the next step is bounded from there.
    t.ok(
        ins::CONFIRM_PURCHASE,
        0,
        0,
        &confirm_data(pp.purse_id, pp.msg.sam_txn, 1_000, &r1),
    );
    assert_eq!(settle(&mut t, &mut iss), 1);
    let pp = prepare_purchase(&mut t, &mut p, 1_000, T0 + w::MAX_TIME_STEP).unwrap();
    p.ok(pw::ins::PURCHASE, 0, 0, &pp.msg.encode());
    let d = sam_data(&mut t);
    assert_eq!((d.day, d.day_total), ((T0 + w::MAX_TIME_STEP) / DAY, 1_000));
    assert_eq!(
        prepare_purchase(&mut t, &mut p, 1, T0 + 2 * w::MAX_TIME_STEP + 1).err(),
        Some(sw::TIME_OUT_OF_RANGE)
    );
    // A time behind is accepted but counts in the current day (ceiling reached).
    assert_eq!(
        prepare_purchase(&mut t, &mut p, 1, T0).err(),
        Some(sw::CEILING_EXCEEDED)
    );
    // Loads at the issuer are bounded the same way.
    let init = pw::InitLoadResponse::decode(&p.ok(pw::ins::INIT_LOAD, 0, 0, &[])).unwrap();
    let req = pw::AuthorizeLoad {
        purse_id: init.purse_id,
        currency: init.currency,
        counter: init.counter,
        challenge: init.challenge,
        key_version: init.key_version,
        amount: 5,
        terminal_time: T0 + w::MAX_TIME_STEP + 1,
    };
    assert_eq!(
        iss.sw(ins::AUTHORIZE_LOAD, 0, 0, &req.encode()),
        sw::TIME_OUT_OF_RANGE
    );
}

/// A lying host steps its clock one day per authorisation to get a fresh daily total each
/// time: the running total does not start again without a settlement (an issuer-MACed ACK
/// JOURNAL that dropped entries) in the current period. 20 back-to-back authorisations:
/// the first `max_per_day` worth accepted, every later one refused (6920; 692A once the
/// step from the latest accepted time passes 7 days), until a settlement arrives; then a
/// later day opens a new period.
#[test]
fn daily_ceiling_holds_against_a_host_stepping_its_clock() {
    let mut iss = issuer();
    let mut t = terminal(
        &mut iss,
        TerminalOpts {
            max_per_day: 500,
            ..TerminalOpts::default()
        },
    );
    let mut p = purse(
        &mut iss,
        &PurseOpts {
            pin_threshold: u32::MAX,
            ..PurseOpts::default()
        },
    );
    load(&mut iss, &mut p, 10_000);
    let mut accepted = 0u32;
    let mut latest = 0u32;
    for i in 0..20u32 {
        let time = T0 + i * DAY;
        match purchase_at(&mut t, &mut p, 100, time) {
            Ok(_) => {
                accepted += 1;
                latest = time;
            }
            Err(e) if time > latest + w::MAX_TIME_STEP => {
                assert_eq!(e, sw::TIME_OUT_OF_RANGE, "step {i}")
            }
            Err(e) => assert_eq!(e, sw::CEILING_EXCEEDED, "step {i}"),
        }
    }
    assert_eq!(accepted, 5, "max_per_day / amount");
    let d = sam_data(&mut t);
    assert_eq!((d.day, d.day_total), (T0 / DAY, 500));
    // More host days without a settlement: still refused.
    assert_eq!(
        purchase_at(&mut t, &mut p, 100, latest + DAY).err(),
        Some(sw::CEILING_EXCEEDED)
    );
    // The settlement: the five purchases verified by the issuer and acknowledged.
    let b = export(&mut t, 0);
    let ack = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b.encode());
    t.ok(ins::ACK_JOURNAL, 0, 0, &ack);
    // The period's own day: the period goes on (a period lasts at least a host day).
    assert_eq!(
        purchase_at(&mut t, &mut p, 100, T0 + 60).err(),
        Some(sw::CEILING_EXCEEDED)
    );
    // A later day: a new period, again at most max_per_day.
    for k in 0..5 {
        purchase_at(&mut t, &mut p, 100, latest + DAY + k).unwrap();
    }
    let d = sam_data(&mut t);
    assert_eq!((d.day, d.day_total), ((latest + DAY) / DAY, 500));
    // The same ack again is accepted but drops nothing: no new settlement.
    t.ok(ins::ACK_JOURNAL, 0, 0, &ack);
    for step in 2..6 {
        assert_eq!(
            purchase_at(&mut t, &mut p, 100, latest + step * DAY).err(),
            Some(sw::CEILING_EXCEEDED),
            "day +{step}"
        );
    }
    // Settled again: the next day opens a new period; the last ack sent once more after
    // that does not open another one.
    let b = export(&mut t, 0);
    let ack = iss.ok(ins::VERIFY_JOURNAL, 0, 0, &b.encode());
    t.ok(ins::ACK_JOURNAL, 0, 0, &ack);
    purchase_at(&mut t, &mut p, 500, latest + 2 * DAY).unwrap();
    t.ok(ins::ACK_JOURNAL, 0, 0, &ack);
    assert_eq!(
        purchase_at(&mut t, &mut p, 100, latest + 3 * DAY).err(),
        Some(sw::CEILING_EXCEEDED)
    );
}

/// A whole purchase at `time`: BEGIN, INIT, AUTHORIZE, PURCHASE, CONFIRM.
fn purchase_at(t: &mut Chip, p: &mut Chip, amount: u32, time: u32) -> Result<(), Sw> {
    let pp = prepare_purchase(t, p, amount, time)?;
    let r = pw::ValueReceipt::decode(&p.ok(pw::ins::PURCHASE, 0, 0, &pp.msg.encode())).unwrap();
    t.ok(
        ins::CONFIRM_PURCHASE,
        0,
        0,
        &confirm_data(pp.purse_id, pp.msg.sam_txn, amount, &r),
    );
    Ok(())
}
