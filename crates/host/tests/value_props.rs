//! The value rules (shared/domain.md) as properties over random sequences of loads,
//! payments, replays, misdirected messages and lost answers:
//! * conservation: each purse's balance equals its loads minus its debits, and equals what
//!   the host's model expects from the flows' answers;
//! * proof: the SAM journals match the card logs entry for entry, with the same proofs;
//! * exactly once: a replayed or misdirected message changes nothing; no (SAM, txn) appears
//!   twice in a log; no journal entry stays PENDING;
//! * a lying host: reordering (INIT LOAD, a purchase, then the LOAD), a transaction status
//!   fetched before the authorisation and used later, forged RESOLVE / CONFIRM (a field
//!   changed, a MAC byte flipped), an authorisation for card A sent to card B, replays of
//!   captured LOAD / PURCHASE / CONFIRM / VERIFY / ACK messages: each is refused and leaves
//!   value where it was; settlement records hold every settled entry exactly once.
//!
//! After every step: each balance equals the model (built only from answers of completed
//! transactions), no SAM entry is PENDING, and the SAM counters did not move on a refused
//! message. At the end (after settling every journal): per card and overall, balance =
//! loads - purchases of the card log = confirmed loads - confirmed purchases of the
//! settlement records, entry for entry with the same proofs.

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use tessera_host::clients::{PurseClient, SamClient};
use tessera_host::flows::kit::{PurseParams, Tap, World, WorldImages};
use tessera_host::flows::{self, FlowError, FlowOptions, LoadRequest, PayRequest};
use tessera_host::transport::Transport;
use tessera_os::{Card, TearPlan};
use tessera_purse::wire::{
    AuthorizeLoad, AuthorizePurchase, InitPurchase, Load, LogRecord, Purchase, PurseId,
    TxnStatusQuery, ValueReceipt, ins, kind, usage,
};
use tessera_sam::wire::{self as sw_, Confirm, JournalEntry, Resolve, status};

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
    /// Replay any LOAD / PURCHASE captured earlier from card `card`, in a fresh session.
    ReplayOld {
        card: usize,
        pick: usize,
    },
    /// INIT LOAD and AUTHORIZE LOAD, then a whole purchase on the same card, then the LOAD.
    Reorder {
        card: usize,
        amount: u32,
        pay: u32,
    },
    /// GET TRANSACTION STATUS for the issuer's next transaction, then a load, then RESOLVE
    /// with that early "not applied".
    Prefetch {
        card: usize,
        amount: u32,
    },
    /// A load or purchase applied at the card whose answer the host hides; it forges
    /// CONFIRM and RESOLVE (field `what` changed), then confirms honestly.
    Forge {
        card: usize,
        load: bool,
        amount: u32,
        what: u8,
    },
    /// AUTHORIZE LOAD for card `from`, the LOAD sent to card `to`.
    CrossCard {
        from: usize,
        to: usize,
        amount: u32,
    },
    /// Replay a SAM message captured earlier (CONFIRM, VERIFY JOURNAL, ACK JOURNAL).
    ReplaySam {
        pick: usize,
    },
    /// Settle the terminal's and the issuer's journals (records kept by the model).
    Settle,
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
        1 => (0..CARDS, any::<usize>()).prop_map(|(card, pick)| Op::ReplayOld { card, pick }),
        1 => (0..CARDS, 1u32..2_000, 1u32..1_500).prop_map(|(card, amount, pay)| Op::Reorder { card, amount, pay }),
        1 => (0..CARDS, 1u32..2_000).prop_map(|(card, amount)| Op::Prefetch { card, amount }),
        2 => (0..CARDS, any::<bool>(), 1u32..1_500, 0u8..6).prop_map(|(card, load, amount, what)| Op::Forge { card, load, amount, what }),
        1 => (0..CARDS, 0..CARDS, 1u32..2_000).prop_map(|(from, to, amount)| Op::CrossCard { from, to, amount }),
        1 => any::<usize>().prop_map(|pick| Op::ReplaySam { pick }),
        1 => Just(Op::Settle),
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
    SamClient::new(sam).peek_journal(0).unwrap().entries
}

fn ok_sw(r: &[u8]) -> bool {
    r.ends_with(&[0x90, 0x00])
}

const TID: [u8; 4] = [0, 0, 0, 5];

fn purse_id(i: usize) -> PurseId {
    tessera_purse::wire::purse_id_for(&[0x04, 0, 0, 0, 0, 0, (i + 1) as u8])
}

/// A value change the model accepted, keyed by (SAM ID, SAM transaction number).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    card: usize,
    kind: u8,
    amount: u32,
    proof: [u8; 8],
}

#[derive(Default)]
struct Model {
    expected: [u32; CARDS],
    applied: BTreeMap<([u8; 4], u32), Applied>,
    /// LOAD / PURCHASE APDUs sent to each card.
    purse_apdus: [Vec<Vec<u8>>; CARDS],
    /// CONFIRM / VERIFY JOURNAL / ACK JOURNAL APDUs: (sent to the issuer, APDU).
    sam_apdus: Vec<(bool, Vec<u8>)>,
    /// Settlement records, keyed by (SAM ID, batch MAC): the entries each settled.
    records: BTreeMap<([u8; 4], [u8; 8]), Vec<JournalEntry>>,
    /// The batch MAC of the last batch verified for each SAM.
    last_verified: BTreeMap<[u8; 4], [u8; 8]>,
}

impl Model {
    fn apply(&mut self, sam_id: [u8; 4], txn: u32, a: Applied) -> Result<(), TestCaseError> {
        if a.kind == kind::LOAD {
            self.expected[a.card] += a.amount;
        } else {
            prop_assert!(self.expected[a.card] >= a.amount);
            self.expected[a.card] -= a.amount;
        }
        prop_assert!(
            self.applied.insert((sam_id, txn), a).is_none(),
            "(SAM, txn) applied twice"
        );
        Ok(())
    }
    fn capture_purse(&mut self, card: usize, tap: &Tap<'_>) {
        for a in &tap.sent {
            if matches!(a.get(1), Some(&i) if i == ins::LOAD || i == ins::PURCHASE) {
                self.purse_apdus[card].push(a.clone());
            }
        }
    }
    fn capture_sam(&mut self, issuer: bool, tap: &Tap<'_>) {
        // Single APDUs only (not the blocks of a chain).
        let mut in_chain = false;
        for a in &tap.sent {
            let chained = a.first().is_some_and(|c| c & 0x10 != 0);
            let wanted = [
                sw_::ins::CONFIRM_LOAD,
                sw_::ins::CONFIRM_PURCHASE,
                sw_::ins::VERIFY_JOURNAL,
                sw_::ins::ACK_JOURNAL,
            ];
            if !chained && !in_chain && a.get(1).is_some_and(|i| wanted.contains(i)) {
                self.sam_apdus.push((issuer, a.clone()));
            }
            in_chain = chained;
        }
    }
    fn record(&mut self, b: &flows::VerifiedBatch) -> Result<(), String> {
        let key = (b.batch.sam_id, b.batch.mac);
        if let Some(old) = self.records.get(&key)
            && *old != b.settled
        {
            return Err("the same batch settled differently".into());
        }
        self.records.insert(key, b.settled.clone());
        self.last_verified.insert(b.batch.sam_id, b.batch.mac);
        Ok(())
    }
}

fn sam_state(sam: &mut Card) -> (u32, u16, u16) {
    let d = SamClient::new(sam).sam_data().unwrap();
    (d.sam_txn, d.journal_count, d.pending_count)
}

fn balances(w: &mut World) -> Vec<u32> {
    w.purses.iter_mut().map(|p| balance_counter(p).0).collect()
}

/// The honest recovery of an authorisation the card never applied: it must end VOID.
#[allow(clippy::too_many_arguments)]
fn must_void(
    purse: &mut Card,
    sam: &mut Card,
    opts: &FlowOptions,
    key_usage: u8,
    pid: PurseId,
    sam_id: [u8; 4],
    txn: u32,
    ctx: &str,
) -> Result<(), TestCaseError> {
    match flows::recover(purse, sam, opts, key_usage, pid, sam_id, txn) {
        Ok(None) => Ok(()),
        other => Err(TestCaseError::fail(format!(
            "{ctx}: recovery of an unapplied authorisation: {other:?}"
        ))),
    }
}

/// An authorisation made and sent to the card by a host that then hides the answer.
struct Hidden {
    pid: PurseId,
    sam_id: [u8; 4],
    txn: u32,
    key_usage: u8,
    receipt: Option<ValueReceipt>,
}

fn authorise_and_apply(
    w: &mut World,
    card: usize,
    load: bool,
    amount: u32,
) -> Result<Option<Hidden>, TestCaseError> {
    let purse = &mut w.purses[card];
    let mut pc = PurseClient::new(&mut *purse);
    pc.select().unwrap();
    if load {
        let init = pc.init_load().unwrap();
        let auth = SamClient::new(&mut w.issuer)
            .authorize_load(&AuthorizeLoad {
                purse_id: init.purse_id,
                currency: init.currency,
                counter: init.counter,
                challenge: init.challenge,
                key_version: init.key_version,
                amount,
                terminal_time: T,
            })
            .unwrap();
        let receipt = PurseClient::new(&mut *purse)
            .load(&Load {
                amount,
                sam_id: auth.sam_id,
                sam_txn: auth.sam_txn,
                terminal_time: T,
                counter: init.counter,
                mac: auth.mac,
            })
            .ok();
        return Ok(Some(Hidden {
            pid: init.purse_id,
            sam_id: auth.sam_id,
            txn: auth.sam_txn,
            key_usage: usage::LOAD,
            receipt,
        }));
    }
    pc.verify_pin(PIN).unwrap();
    let b = SamClient::new(&mut w.terminal).begin_purchase().unwrap();
    let ip = PurseClient::new(&mut *purse)
        .init_purchase(&InitPurchase {
            sam_id: b.sam_id,
            sam_challenge: b.sam_challenge,
        })
        .unwrap();
    if ip.balance < amount {
        return Ok(None);
    }
    let auth = SamClient::new(&mut w.terminal)
        .authorize_purchase(&AuthorizePurchase::new(&ip, amount, TID, T))
        .unwrap();
    let receipt = PurseClient::new(&mut *purse)
        .purchase(&Purchase {
            amount,
            terminal_id: TID,
            sam_id: b.sam_id,
            sam_txn: auth.sam_txn,
            terminal_time: T,
            counter: ip.counter,
            mac: auth.mac,
        })
        .ok();
    Ok(Some(Hidden {
        pid: ip.purse_id,
        sam_id: b.sam_id,
        txn: auth.sam_txn,
        key_usage: usage::DEBIT,
        receipt,
    }))
}

/// Settle the terminal's journal with the issuer (the flow) and the issuer's own (the same
/// steps by hand: one chip in both roles), recording every verified batch.
fn settle_all(w: &mut World, m: &mut Model) -> Result<(), TestCaseError> {
    let mut tt = Tap::new(&mut w.terminal);
    let mut it = Tap::new(&mut w.issuer);
    let r = flows::settle(&mut tt, &mut it, |b| m.record(b));
    m.capture_sam(false, &tt);
    m.capture_sam(true, &it);
    drop((tt, it));
    prop_assert!(r.is_ok(), "settlement: {:?}", r.err());
    let mut it = Tap::new(&mut w.issuer);
    for _ in 0..100 {
        let batch = SamClient::new(&mut it).export_journal(0).unwrap();
        let settled: Vec<JournalEntry> = batch
            .entries
            .iter()
            .filter(|e| e.status != status::PENDING)
            .cloned()
            .collect();
        if settled.is_empty() {
            break;
        }
        let ack = SamClient::new(&mut it).verify_journal(&batch).unwrap();
        let statement = SamClient::new(&mut it)
            .settlement_statement(&batch.sam_id, &[0; 16])
            .unwrap();
        let vb = flows::VerifiedBatch {
            batch,
            ack,
            settled,
            statement,
        };
        m.record(&vb).map_err(TestCaseError::fail)?;
        SamClient::new(&mut it).ack_journal(&vb.ack).unwrap();
    }
    m.capture_sam(true, &it);
    Ok(())
}

fn run_case(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut w = images().restore().unwrap();
    let mut m = Model::default();
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
                let mut sam = Tap::new(&mut w.issuer);
                let r = flows::load_with(
                    &mut tap,
                    &mut sam,
                    LoadRequest {
                        amount,
                        terminal_time: T,
                    },
                    &iopts,
                );
                m.capture_purse(card, &tap);
                m.capture_sam(true, &sam);
                match r {
                    Ok(rec) => {
                        prop_assert!(rec.sam_confirmed, "{}", ctx);
                        m.apply(
                            rec.sam_id,
                            rec.sam_txn,
                            Applied {
                                card,
                                kind: kind::LOAD,
                                amount,
                                proof: rec.proof,
                            },
                        )?;
                        prop_assert_eq!(rec.balance_after, m.expected[card], "{}", ctx);
                    }
                    Err(FlowError::OverMaximum) => {
                        prop_assert!(m.expected[card] + amount > 10_000, "{}", ctx)
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
                    terminal_id: TID,
                    terminal_time: T,
                    pin: pin.then(|| PIN.to_vec()),
                };
                let mut sam = Tap::new(&mut w.terminal);
                let r = flows::pay_with(&mut tap, &mut sam, &req, &topts);
                m.capture_purse(card, &tap);
                m.capture_sam(false, &sam);
                match r {
                    Ok(rec) => {
                        prop_assert!(rec.sam_confirmed, "{}", ctx);
                        m.apply(
                            rec.sam_id,
                            rec.sam_txn,
                            Applied {
                                card,
                                kind: kind::PURCHASE,
                                amount,
                                proof: rec.proof,
                            },
                        )?;
                        prop_assert_eq!(rec.balance_after, m.expected[card], "{}", ctx);
                    }
                    Err(FlowError::InsufficientFunds { .. }) => {
                        prop_assert!(m.expected[card] < amount, "{}", ctx)
                    }
                    Err(FlowError::PinRequired { .. }) => {
                        prop_assert!(!pin && amount > 2_000, "{}", ctx)
                    }
                    Err(FlowError::NotApplied { .. }) => prop_assert!(tap.cut, "{}", ctx),
                    Err(e) => prop_assert!(false, "{}: {}", ctx, e),
                }
            }
            Op::Replay { card } | Op::ReplayOld { card, .. } => {
                let apdus = &m.purse_apdus[card];
                let pick = match *op {
                    Op::ReplayOld { pick, .. } if !apdus.is_empty() => pick % apdus.len(),
                    _ if !apdus.is_empty() => apdus.len() - 1,
                    _ => continue,
                };
                let apdu = apdus[pick].clone();
                let before = balance_counter(&mut w.purses[card]);
                let mut c = PurseClient::new(&mut w.purses[card]);
                c.select().unwrap();
                if apdu[1] == ins::LOAD {
                    c.init_load().unwrap();
                } else {
                    let b = SamClient::new(&mut w.terminal).begin_purchase().unwrap();
                    c.init_purchase(&InitPurchase {
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
                let Some(apdu) = m.purse_apdus[from]
                    .iter()
                    .rev()
                    .find(|a| a[1] == ins::LOAD)
                    .cloned()
                else {
                    continue;
                };
                let before = balance_counter(&mut w.purses[to]);
                PurseClient::new(&mut w.purses[to]).init_load().unwrap();
                let r = Transport::transmit_raw(&mut w.purses[to], &apdu).unwrap();
                prop_assert!(!ok_sw(&r), "{}: misdirected load accepted", ctx);
                prop_assert_eq!(balance_counter(&mut w.purses[to]), before, "{}", ctx);
            }
            Op::Reorder { card, amount, pay } => {
                let mut pc = PurseClient::new(&mut w.purses[card]);
                pc.select().unwrap();
                let init = pc.init_load().unwrap();
                let auth = SamClient::new(&mut w.issuer)
                    .authorize_load(&AuthorizeLoad {
                        purse_id: init.purse_id,
                        currency: init.currency,
                        counter: init.counter,
                        challenge: init.challenge,
                        key_version: init.key_version,
                        amount,
                        terminal_time: T,
                    })
                    .unwrap();
                // A purchase session in between, completed honestly.
                let req = PayRequest {
                    amount: pay,
                    terminal_id: TID,
                    terminal_time: T,
                    pin: Some(PIN.to_vec()),
                };
                match flows::pay_with(&mut w.purses[card], &mut w.terminal, &req, &topts) {
                    Ok(rec) => m.apply(
                        rec.sam_id,
                        rec.sam_txn,
                        Applied {
                            card,
                            kind: kind::PURCHASE,
                            amount: pay,
                            proof: rec.proof,
                        },
                    )?,
                    Err(FlowError::InsufficientFunds { .. }) => {
                        prop_assert!(m.expected[card] < pay, "{}", ctx)
                    }
                    Err(e) => prop_assert!(false, "{}: {}", ctx, e),
                }
                let before = balance_counter(&mut w.purses[card]);
                let r = PurseClient::new(&mut w.purses[card]).load(&Load {
                    amount,
                    sam_id: auth.sam_id,
                    sam_txn: auth.sam_txn,
                    terminal_time: T,
                    counter: init.counter,
                    mac: auth.mac,
                });
                prop_assert!(r.is_err(), "{}: LOAD applied after another session", ctx);
                prop_assert_eq!(balance_counter(&mut w.purses[card]), before, "{}", ctx);
                must_void(
                    &mut w.purses[card],
                    &mut w.issuer,
                    &iopts,
                    usage::LOAD,
                    init.purse_id,
                    auth.sam_id,
                    auth.sam_txn,
                    &ctx,
                )?;
            }
            Op::Prefetch { card, amount } => {
                let d = SamClient::new(&mut w.issuer).sam_data().unwrap();
                let next = d.sam_txn + 1;
                let ch = SamClient::new(&mut w.issuer)
                    .begin_resolve()
                    .unwrap()
                    .sam_challenge;
                let mut pc = PurseClient::new(&mut w.purses[card]);
                pc.select().unwrap();
                let early = pc
                    .txn_status(
                        usage::LOAD,
                        &TxnStatusQuery {
                            sam_id: d.sam_id,
                            sam_txn: next,
                            sam_challenge: ch,
                        },
                    )
                    .unwrap();
                prop_assert!(!early.applied, "{}", ctx);
                pc.select().unwrap();
                let init = pc.init_load().unwrap();
                let auth = SamClient::new(&mut w.issuer)
                    .authorize_load(&AuthorizeLoad {
                        purse_id: init.purse_id,
                        currency: init.currency,
                        counter: init.counter,
                        challenge: init.challenge,
                        key_version: init.key_version,
                        amount,
                        terminal_time: T,
                    })
                    .unwrap();
                prop_assert_eq!(auth.sam_txn, next, "{}", ctx);
                let rc = PurseClient::new(&mut w.purses[card])
                    .load(&Load {
                        amount,
                        sam_id: auth.sam_id,
                        sam_txn: auth.sam_txn,
                        terminal_time: T,
                        counter: init.counter,
                        mac: auth.mac,
                    })
                    .ok();
                let lie = Resolve {
                    purse_id: init.purse_id,
                    sam_txn: next,
                    key_usage: usage::LOAD,
                    status: early,
                };
                let before = sam_state(&mut w.issuer);
                prop_assert!(
                    SamClient::new(&mut w.issuer).resolve(&lie).is_err(),
                    "{}: early status accepted",
                    ctx
                );
                SamClient::new(&mut w.issuer).begin_resolve().unwrap();
                prop_assert!(
                    SamClient::new(&mut w.issuer).resolve(&lie).is_err(),
                    "{}: early status accepted in a new resolve session",
                    ctx
                );
                prop_assert_eq!(sam_state(&mut w.issuer), before, "{}", ctx);
                match rc {
                    Some(rc) => {
                        SamClient::new(&mut w.issuer)
                            .confirm_load(&Confirm {
                                purse_id: init.purse_id,
                                sam_txn: next,
                                counter: rc.counter,
                                amount,
                                balance_after: rc.balance_after,
                                proof: rc.proof,
                            })
                            .unwrap();
                        m.apply(
                            auth.sam_id,
                            next,
                            Applied {
                                card,
                                kind: kind::LOAD,
                                amount,
                                proof: rc.proof,
                            },
                        )?;
                    }
                    None => {
                        prop_assert!(m.expected[card] + amount > 10_000, "{}", ctx);
                        must_void(
                            &mut w.purses[card],
                            &mut w.issuer,
                            &iopts,
                            usage::LOAD,
                            init.purse_id,
                            auth.sam_id,
                            next,
                            &ctx,
                        )?;
                    }
                }
            }
            Op::Forge {
                card,
                load,
                amount,
                what,
            } => {
                let Some(h) = authorise_and_apply(&mut w, card, load, amount)? else {
                    continue;
                };
                let (sam, opts) = if load {
                    (&mut w.issuer, &iopts)
                } else {
                    (&mut w.terminal, &topts)
                };
                let purse = &mut w.purses[card];
                let Some(rc) = h.receipt else {
                    prop_assert!(load && m.expected[card] + amount > 10_000, "{}", ctx);
                    must_void(purse, sam, opts, h.key_usage, h.pid, h.sam_id, h.txn, &ctx)?;
                    continue;
                };
                let before = sam_state(sam);
                let good = Confirm {
                    purse_id: h.pid,
                    sam_txn: h.txn,
                    counter: rc.counter,
                    amount,
                    balance_after: rc.balance_after,
                    proof: rc.proof,
                };
                let mut bad = good.clone();
                match what % 5 {
                    0 => bad.proof[usize::from(what) % 8] ^= 0x01,
                    1 => bad.balance_after ^= 1,
                    2 => bad.amount += 1,
                    3 => bad.counter += 1,
                    _ => bad.purse_id = purse_id((card + 1) % CARDS),
                }
                let r = if load {
                    SamClient::new(&mut *sam).confirm_load(&bad)
                } else {
                    SamClient::new(&mut *sam).confirm_purchase(&bad)
                };
                prop_assert!(r.is_err(), "{}: forged CONFIRM accepted", ctx);
                let ch = SamClient::new(&mut *sam)
                    .begin_resolve()
                    .unwrap()
                    .sam_challenge;
                let mut pc = PurseClient::new(&mut *purse);
                pc.select().unwrap();
                let genuine = pc
                    .txn_status(
                        h.key_usage,
                        &TxnStatusQuery {
                            sam_id: h.sam_id,
                            sam_txn: h.txn,
                            sam_challenge: ch,
                        },
                    )
                    .unwrap();
                prop_assert!(genuine.applied, "{}", ctx);
                let mut forged = genuine.clone();
                match what % 6 {
                    0 => forged.applied = false,
                    1 => forged.record.amount += 1,
                    2 => forged.record.balance_after ^= 1,
                    3 => forged.mac[usize::from(what) % 8] ^= 0x80,
                    4 => forged.oldest_logged_counter ^= 1,
                    _ => forged.record.proof[0] ^= 1,
                }
                let lie = Resolve {
                    purse_id: h.pid,
                    sam_txn: h.txn,
                    key_usage: h.key_usage,
                    status: forged,
                };
                prop_assert!(
                    SamClient::new(&mut *sam).resolve(&lie).is_err(),
                    "{}: forged RESOLVE accepted",
                    ctx
                );
                prop_assert_eq!(sam_state(sam), before, "{}", ctx);
                // The honest end: RESOLVE with the genuine status, or CONFIRM.
                if what % 2 == 0 {
                    let r = SamClient::new(&mut *sam).resolve(&Resolve {
                        status: genuine,
                        ..lie
                    });
                    prop_assert_eq!(r.ok(), Some(status::CONFIRMED), "{}", ctx);
                } else if load {
                    SamClient::new(&mut *sam).confirm_load(&good).unwrap();
                } else {
                    SamClient::new(&mut *sam).confirm_purchase(&good).unwrap();
                }
                m.apply(
                    h.sam_id,
                    h.txn,
                    Applied {
                        card,
                        kind: if load { kind::LOAD } else { kind::PURCHASE },
                        amount,
                        proof: rc.proof,
                    },
                )?;
            }
            Op::CrossCard { from, to, amount } => {
                if from == to {
                    continue;
                }
                let mut pc = PurseClient::new(&mut w.purses[from]);
                pc.select().unwrap();
                let init = pc.init_load().unwrap();
                let auth = SamClient::new(&mut w.issuer)
                    .authorize_load(&AuthorizeLoad {
                        purse_id: init.purse_id,
                        currency: init.currency,
                        counter: init.counter,
                        challenge: init.challenge,
                        key_version: init.key_version,
                        amount,
                        terminal_time: T,
                    })
                    .unwrap();
                let mut pt = PurseClient::new(&mut w.purses[to]);
                pt.select().unwrap();
                pt.init_load().unwrap();
                let r = pt.load(&Load {
                    amount,
                    sam_id: auth.sam_id,
                    sam_txn: auth.sam_txn,
                    terminal_time: T,
                    counter: init.counter,
                    mac: auth.mac,
                });
                prop_assert!(r.is_err(), "{}: card A's load accepted by card B", ctx);
                must_void(
                    &mut w.purses[from],
                    &mut w.issuer,
                    &iopts,
                    usage::LOAD,
                    init.purse_id,
                    auth.sam_id,
                    auth.sam_txn,
                    &ctx,
                )?;
            }
            Op::ReplaySam { pick } => {
                if m.sam_apdus.is_empty() {
                    continue;
                }
                let (to_issuer, apdu) = m.sam_apdus[pick % m.sam_apdus.len()].clone();
                let before = (sam_state(&mut w.issuer), sam_state(&mut w.terminal));
                let sam = if to_issuer {
                    &mut w.issuer
                } else {
                    &mut w.terminal
                };
                let r = Transport::transmit_raw(sam, &apdu).unwrap();
                if apdu[1] == sw_::ins::VERIFY_JOURNAL && ok_sw(&r) {
                    // Only the last batch verified for that SAM is answered again.
                    let ack = sw_::JournalAck::decode(&r[..r.len() - 2]).unwrap();
                    prop_assert_eq!(
                        m.last_verified.get(&ack.sam_id),
                        Some(&ack.batch_mac),
                        "{}: an older batch verified again",
                        ctx
                    );
                }
                let after = (sam_state(&mut w.issuer), sam_state(&mut w.terminal));
                prop_assert_eq!(after, before, "{}: a replay changed a SAM", ctx);
            }
            Op::Settle => settle_all(&mut w, &mut m)?,
        }
        let b = balances(&mut w);
        prop_assert_eq!(&b[..], &m.expected[..], "{}", ctx);
        prop_assert_eq!(
            sam_state(&mut w.issuer).2,
            0,
            "{}: PENDING at the issuer",
            ctx
        );
        prop_assert_eq!(
            sam_state(&mut w.terminal).2,
            0,
            "{}: PENDING at the terminal",
            ctx
        );
    }

    // End of the sequence: settle everything; records, logs and balances agree.
    settle_all(&mut w, &mut m)?;
    prop_assert_eq!(sam_state(&mut w.issuer).1, 0, "issuer journal not settled");
    prop_assert_eq!(
        sam_state(&mut w.terminal).1,
        0,
        "terminal journal not settled"
    );
    prop_assert!(journal(&mut w.issuer).is_empty());
    let mut settled: BTreeMap<([u8; 4], u32), JournalEntry> = BTreeMap::new();
    for ((sam, _), entries) in &m.records {
        for e in entries {
            prop_assert!(
                settled.insert((*sam, e.seq), e.clone()).is_none(),
                "entry {} settled in two batches",
                e.seq
            );
        }
    }
    // The issuer SAM's own account of what it settled, per SAM, matches the records.
    for sam in [[0, 0, 0, 1], [0, 0, 0, 2]] {
        let st = SamClient::new(&mut w.issuer)
            .settlement_statement(&sam, &[7; 16])
            .unwrap()
            .totals;
        let mine = m.records.iter().filter(|((s, _), _)| *s == sam);
        let batches = mine.clone().count() as u32;
        let sum = |k: u8| -> (u32, u64) {
            let es = mine
                .clone()
                .flat_map(|(_, es)| es)
                .filter(|e| e.status == status::CONFIRMED && e.kind == k);
            (
                es.clone().count() as u32,
                es.map(|e| u64::from(e.amount)).sum(),
            )
        };
        let voids = mine
            .clone()
            .flat_map(|(_, es)| es)
            .filter(|e| e.status == status::VOID)
            .count() as u32;
        prop_assert_eq!(st.sums.batches, batches, "statement batches of {:?}", sam);
        prop_assert_eq!((st.sums.loads, st.sums.loads_total), sum(kind::LOAD));
        prop_assert_eq!(
            (st.sums.purchases, st.sums.purchases_total),
            sum(kind::PURCHASE)
        );
        prop_assert_eq!(st.sums.voids, voids);
        prop_assert_eq!(st.open, 0, "open entries after a full settlement");
    }
    let confirmed: BTreeMap<([u8; 4], u32), Applied> = settled
        .iter()
        .filter(|(_, e)| e.status == status::CONFIRMED)
        .map(|(k, e)| {
            let card = (0..CARDS).find(|&i| purse_id(i) == e.purse_id).unwrap();
            (
                *k,
                Applied {
                    card,
                    kind: e.kind,
                    amount: e.amount,
                    proof: e.proof,
                },
            )
        })
        .collect();
    prop_assert_eq!(
        &confirmed,
        &m.applied,
        "settled entries vs completed transactions"
    );
    let mut total = 0i64;
    for i in 0..CARDS {
        let (bal, counter) = balance_counter(&mut w.purses[i]);
        prop_assert_eq!(bal, m.expected[i]);
        total += i64::from(bal);
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
        let card_side: BTreeMap<([u8; 4], u32), Applied> = log
            .iter()
            .map(|r| {
                (
                    (r.sam_id, r.sam_txn),
                    Applied {
                        card: i,
                        kind: r.kind,
                        amount: r.amount,
                        proof: r.proof,
                    },
                )
            })
            .collect();
        prop_assert_eq!(
            card_side.len(),
            log.len(),
            "card {}: a message applied twice",
            i
        );
        let model_side: BTreeMap<([u8; 4], u32), Applied> = m
            .applied
            .iter()
            .filter(|(_, a)| a.card == i)
            .map(|(k, a)| (*k, a.clone()))
            .collect();
        prop_assert_eq!(card_side, model_side, "card {}: log vs settled journal", i);
    }
    let net: i64 = confirmed
        .values()
        .map(|a| {
            if a.kind == kind::LOAD {
                i64::from(a.amount)
            } else {
                -i64::from(a.amount)
            }
        })
        .sum();
    prop_assert_eq!(total, net, "overall conservation");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, max_shrink_iters: 200, ..ProptestConfig::default() })]
    #[test]
    fn value_rules_hold_over_random_flows(ops in prop::collection::vec(op(), 1..28)) {
        run_case(&ops)?;
    }
}
