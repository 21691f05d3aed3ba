//! The value rules (shared/domain.md) as properties over random sequences of loads,
//! payments, replays, misdirected messages and lost answers:
//! * conservation: each purse's balance equals its loads minus its debits, and equals what
//!   the host's model expects from the flows' answers;
//! * proof: the SAM journals match the card logs entry for entry, with the same proofs;
//! * exactly once: a replayed or misdirected message changes nothing; no (SAM, txn) appears
//!   twice in a log; no journal entry stays PENDING.

use proptest::prelude::*;
use std::collections::BTreeSet;
use std::sync::OnceLock;
use tessera_host::clients::{PurseClient, SamClient};
use tessera_host::flows::kit::{PurseParams, Tap, World, WorldImages};
use tessera_host::flows::{self, FlowError, LoadRequest, PayRequest};
use tessera_host::transport::Transport;
use tessera_os::{Card, TearPlan};
use tessera_purse::wire::{LogRecord, ins, kind};
use tessera_sam::wire::{JournalEntry, status};

const CARDS: usize = 3;
const T: u32 = 1_700_000_000;
const PIN: &[u8] = b"1234";

fn images() -> &'static WorldImages {
    static W: OnceLock<WorldImages> = OnceLock::new();
    W.get_or_init(|| {
        World::new(
            CARDS,
            &PurseParams {
                max_balance: 10_000,
                log_capacity: 64,
                pin_threshold: 2_000,
                pin: PIN.to_vec(),
                ..Default::default()
            },
        )
        .unwrap()
        .images()
    })
}

#[derive(Debug, Clone, Copy)]
enum Cut {
    None,
    AfterBytes(u64),
    AfterCommit,
}

impl Cut {
    fn plan(self) -> Option<TearPlan> {
        match self {
            Cut::None => None,
            Cut::AfterBytes(k) => Some(TearPlan {
                after_bytes: Some(k),
                after_commit: false,
            }),
            Cut::AfterCommit => Some(TearPlan {
                after_bytes: None,
                after_commit: true,
            }),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Load {
        card: usize,
        amount: u32,
        cut: Cut,
    },
    Pay {
        card: usize,
        amount: u32,
        pin: bool,
        cut: Cut,
    },
    /// Replay the card's last LOAD or PURCHASE inside a fresh session of the same kind.
    Replay {
        card: usize,
    },
    /// Send card `from`'s last LOAD to card `to`, inside `to`'s own load session.
    WrongCard {
        from: usize,
        to: usize,
    },
}

fn cut() -> impl Strategy<Value = Cut> {
    prop_oneof![
        6 => Just(Cut::None),
        2 => (0u64..160).prop_map(Cut::AfterBytes),
        1 => Just(Cut::AfterCommit),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..CARDS, 1u32..4_000, cut()).prop_map(|(card, amount, cut)| Op::Load { card, amount, cut }),
        5 => (0..CARDS, 1u32..3_000, any::<bool>(), cut()).prop_map(|(card, amount, pin, cut)| Op::Pay { card, amount, pin, cut }),
        1 => (0..CARDS).prop_map(|card| Op::Replay { card }),
        1 => (0..CARDS, 0..CARDS).prop_map(|(from, to)| Op::WrongCard { from, to }),
    ]
}

fn balance_counter(card: &mut Card) -> (u32, u32) {
    let mut c = PurseClient::new(card);
    c.select().unwrap();
    let d = c.read_purse_data().unwrap();
    (d.balance, d.counter)
}

fn logs(card: &mut Card) -> Vec<LogRecord> {
    let mut c = PurseClient::new(card);
    c.select().unwrap();
    c.read_all_logs().unwrap()
}

fn journal(sam: &mut Card) -> Vec<JournalEntry> {
    SamClient::new(sam).export_journal(0).unwrap().entries
}

fn ok_sw(r: &[u8]) -> bool {
    r.ends_with(&[0x90, 0x00])
}

fn run_case(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut w = images().restore().unwrap();
    let mut expected = [0u32; CARDS];
    let mut last_value_apdu: [Option<(u8, Vec<u8>)>; CARDS] = Default::default();
    let iopts = w.issuer_opts();
    let topts = w.terminal_opts();
    for (step, op) in ops.iter().enumerate() {
        let ctx = format!("step {step} {op:?}");
        match *op {
            Op::Load { card, amount, cut } => {
                let mut tap = Tap::new(&mut w.purses[card]);
                if let Some(p) = cut.plan() {
                    tap = tap.arm(ins::LOAD, p);
                }
                let r = flows::load_with(
                    &mut tap,
                    &mut w.issuer,
                    LoadRequest {
                        amount,
                        terminal_time: T,
                    },
                    &iopts,
                );
                if let Some(a) = tap.last_with_ins(ins::LOAD) {
                    last_value_apdu[card] = Some((ins::LOAD, a.clone()));
                }
                match r {
                    Ok(rec) => {
                        expected[card] += amount;
                        prop_assert_eq!(rec.balance_after, expected[card], "{}", ctx);
                        prop_assert!(rec.sam_confirmed, "{}", ctx);
                    }
                    Err(FlowError::OverMaximum) => {
                        prop_assert!(expected[card] + amount > 10_000, "{}", ctx)
                    }
                    Err(FlowError::NotApplied { .. }) => prop_assert!(tap.cut, "{}", ctx),
                    Err(e) => prop_assert!(false, "{}: {}", ctx, e),
                }
            }
            Op::Pay {
                card,
                amount,
                pin,
                cut,
            } => {
                let mut tap = Tap::new(&mut w.purses[card]);
                if let Some(p) = cut.plan() {
                    tap = tap.arm(ins::PURCHASE, p);
                }
                let req = PayRequest {
                    amount,
                    terminal_id: [0, 0, 0, 5],
                    terminal_time: T,
                    pin: pin.then(|| PIN.to_vec()),
                };
                let r = flows::pay_with(&mut tap, &mut w.terminal, &req, &topts);
                if let Some(a) = tap.last_with_ins(ins::PURCHASE) {
                    last_value_apdu[card] = Some((ins::PURCHASE, a.clone()));
                }
                match r {
                    Ok(rec) => {
                        prop_assert!(expected[card] >= amount, "{}", ctx);
                        expected[card] -= amount;
                        prop_assert_eq!(rec.balance_after, expected[card], "{}", ctx);
                        prop_assert!(rec.sam_confirmed, "{}", ctx);
                    }
                    Err(FlowError::InsufficientFunds { .. }) => {
                        prop_assert!(expected[card] < amount, "{}", ctx)
                    }
                    Err(FlowError::PinRequired { .. }) => {
                        prop_assert!(!pin && amount > 2_000, "{}", ctx)
                    }
                    Err(FlowError::NotApplied { .. }) => prop_assert!(tap.cut, "{}", ctx),
                    Err(e) => prop_assert!(false, "{}: {}", ctx, e),
                }
            }
            Op::Replay { card } => {
                let Some((ins_, apdu)) = last_value_apdu[card].clone() else {
                    continue;
                };
                let before = balance_counter(&mut w.purses[card]);
                let mut c = PurseClient::new(&mut w.purses[card]);
                c.select().unwrap();
                if ins_ == ins::LOAD {
                    c.init_load().unwrap();
                } else {
                    let b = SamClient::new(&mut w.terminal).begin_purchase().unwrap();
                    c.init_purchase(&tessera_purse::wire::InitPurchase {
                        sam_id: b.sam_id,
                        sam_challenge: b.sam_challenge,
                    })
                    .unwrap();
                }
                let r = Transport::transmit_raw(&mut w.purses[card], &apdu).unwrap();
                prop_assert!(!ok_sw(&r), "{}: replay accepted", ctx);
                prop_assert_eq!(balance_counter(&mut w.purses[card]), before, "{}", ctx);
            }
            Op::WrongCard { from, to } => {
                let Some((ins_, apdu)) = last_value_apdu[from].clone() else {
                    continue;
                };
                if ins_ != ins::LOAD {
                    continue;
                }
                let before = balance_counter(&mut w.purses[to]);
                PurseClient::new(&mut w.purses[to]).init_load().unwrap();
                let r = Transport::transmit_raw(&mut w.purses[to], &apdu).unwrap();
                prop_assert!(!ok_sw(&r), "{}: misdirected load accepted", ctx);
                prop_assert_eq!(balance_counter(&mut w.purses[to]), before, "{}", ctx);
            }
        }
        for (i, purse) in w.purses.iter_mut().enumerate() {
            prop_assert_eq!(balance_counter(purse).0, expected[i], "{}: card {}", ctx, i);
        }
    }

    // End of the sequence: logs, journals and balances agree.
    let ij = journal(&mut w.issuer);
    let tj = journal(&mut w.terminal);
    prop_assert!(
        ij.iter()
            .chain(tj.iter())
            .all(|e| e.status != status::PENDING),
        "PENDING entry left"
    );
    for i in 0..CARDS {
        let (bal, counter) = balance_counter(&mut w.purses[i]);
        let log = logs(&mut w.purses[i]);
        prop_assert_eq!(log.len() as u32, counter);
        let loads: u64 = log
            .iter()
            .filter(|r| r.kind == kind::LOAD)
            .map(|r| u64::from(r.amount))
            .sum();
        let debits: u64 = log
            .iter()
            .filter(|r| r.kind == kind::PURCHASE)
            .map(|r| u64::from(r.amount))
            .sum();
        prop_assert_eq!(loads - debits, u64::from(bal), "card {} conservation", i);
        let ids: BTreeSet<_> = log.iter().map(|r| (r.sam_id, r.sam_txn)).collect();
        prop_assert_eq!(ids.len(), log.len(), "card {}: a message applied twice", i);
        let purse_id = tessera_purse::wire::purse_id_for(&[0x04, 0, 0, 0, 0, 0, (i + 1) as u8]);
        let card_side = |k: u8| -> BTreeSet<(u32, u32, [u8; 8])> {
            log.iter()
                .filter(|r| r.kind == k)
                .map(|r| (r.sam_txn, r.amount, r.proof))
                .collect()
        };
        let sam_side = |j: &[JournalEntry]| -> BTreeSet<(u32, u32, [u8; 8])> {
            j.iter()
                .filter(|e| e.purse_id == purse_id && e.status == status::CONFIRMED)
                .map(|e| (e.seq, e.amount, e.proof))
                .collect()
        };
        prop_assert_eq!(
            card_side(kind::LOAD),
            sam_side(&ij),
            "card {}: issuer journal vs card log",
            i
        );
        prop_assert_eq!(
            card_side(kind::PURCHASE),
            sam_side(&tj),
            "card {}: terminal journal vs card log",
            i
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 200, ..ProptestConfig::default() })]
    #[test]
    fn value_rules_hold_over_random_flows(ops in prop::collection::vec(op(), 1..24)) {
        run_case(&ops)?;
    }
}
