//! Tearing: cut the purse's power at every NVM write index of LOAD and PURCHASE (and after
//! commit, before the answer); cut the SAM's power at every write index of AUTHORIZE and
//! CONFIRM. Each time the flow's recovery step converges and the value rules hold.

use std::sync::OnceLock;
use tessera_host::clients::{PurseClient, SamClient};
use tessera_host::flows::kit::{PurseParams, Tap, World, WorldImages};
use tessera_host::flows::{self, FlowError, LoadRequest, PayRequest};
use tessera_host::transport::TransportError;
use tessera_os::{Card, TearPlan};
use tessera_purse::wire::{LogRecord, PurseData, ins};
use tessera_sam::wire::{self as sw_, JournalEntry, status};

const T: u32 = 1_700_000_000;
const START: u32 = 1_000;

/// One purse holding START, already loaded once.
fn images() -> &'static WorldImages {
    static W: OnceLock<WorldImages> = OnceLock::new();
    W.get_or_init(|| {
        let mut w = World::new(
            1,
            &PurseParams {
                log_capacity: 8,
                ..Default::default()
            },
        )
        .unwrap();
        let opts = w.issuer_opts();
        flows::load_with(
            &mut w.purses[0],
            &mut w.issuer,
            LoadRequest {
                amount: START,
                terminal_time: T,
            },
            &opts,
        )
        .unwrap();
        w.images()
    })
}

fn purse_state(card: &mut Card) -> (PurseData, Vec<LogRecord>) {
    let mut c = PurseClient::new(card);
    c.select().unwrap();
    (c.read_purse_data().unwrap(), c.read_all_logs().unwrap())
}

fn journal(sam: &mut Card) -> Vec<JournalEntry> {
    SamClient::new(sam).peek_journal(0).unwrap().entries
}

#[derive(Clone, Copy, Debug)]
enum Side {
    Purse,
    Sam,
}

#[derive(Clone, Copy, Debug)]
enum Flow {
    Load,
    Pay,
}

/// Run one flow with a cut as `plan` says at `ins` on `side`; check the invariants; return
/// whether a cut happened.
fn run_once(flow: Flow, side: Side, tear_ins: u8, plan: TearPlan) -> bool {
    let mut w = images().restore().unwrap();
    let amount = 250;
    let (opts, sam_is_issuer) = match flow {
        Flow::Load => (w.issuer_opts(), true),
        Flow::Pay => (w.terminal_opts(), false),
    };
    let (before, logs_before) = purse_state(&mut w.purses[0]);
    let journal_before = if sam_is_issuer {
        journal(&mut w.issuer)
    } else {
        journal(&mut w.terminal)
    };
    let World {
        issuer,
        terminal,
        purses,
        ..
    } = &mut w;
    let sam: &mut Card = if sam_is_issuer { issuer } else { terminal };
    let purse = &mut purses[0];
    let run = |p: &mut dyn tessera_host::transport::Transport,
               s: &mut dyn tessera_host::transport::Transport|
     -> Result<(u32, bool), FlowError> {
        match flow {
            Flow::Load => flows::load_with(
                p,
                s,
                LoadRequest {
                    amount,
                    terminal_time: T,
                },
                &opts,
            )
            .map(|r| (r.balance_after, r.sam_confirmed)),
            Flow::Pay => flows::pay_with(
                p,
                s,
                &PayRequest {
                    amount,
                    terminal_id: [0, 0, 0, 7],
                    terminal_time: T,
                    pin: None,
                },
                &opts,
            )
            .map(|r| (r.balance_after, r.sam_confirmed)),
        }
    };
    let (result, cut) = match side {
        Side::Purse => {
            let mut tap = Tap::new(purse).arm(tear_ins, plan);
            let r = run(&mut tap, sam);
            (r, tap.cut)
        }
        Side::Sam => {
            let mut tap = Tap::new(sam).arm(tear_ins, plan);
            let r = run(purse, &mut tap);
            (r, tap.cut)
        }
    };
    let ctx = format!("{flow:?} cut on {side:?} INS {tear_ins:02X} {plan:?}");
    let expected_after = match flow {
        Flow::Load => before.balance + amount,
        Flow::Pay => before.balance - amount,
    };
    let (after, logs_after) = purse_state(&mut w.purses[0]);
    assert!(
        w.purses[0].store_consistent(),
        "{ctx}: purse store inconsistent"
    );
    let sam: &mut Card = if sam_is_issuer {
        &mut w.issuer
    } else {
        &mut w.terminal
    };
    assert!(sam.store_consistent(), "{ctx}: SAM store inconsistent");
    let journal_after = journal(sam);
    let new_entries: Vec<&JournalEntry> = journal_after
        .iter()
        .filter(|e| !journal_before.contains(e))
        .collect();
    match result {
        Ok((balance_after, sam_confirmed)) => {
            // Applied exactly once, recorded once on both sides with the same proof.
            assert_eq!(balance_after, expected_after, "{ctx}");
            assert_eq!(after.balance, expected_after, "{ctx}");
            assert_eq!(after.counter, before.counter + 1, "{ctx}");
            assert_eq!(logs_after.len(), logs_before.len() + 1, "{ctx}");
            assert!(sam_confirmed, "{ctx}: SAM entry not confirmed");
            assert_eq!(new_entries.len(), 1, "{ctx}: {new_entries:?}");
            assert_eq!(new_entries[0].status, status::CONFIRMED, "{ctx}");
            assert_eq!(new_entries[0].proof, logs_after[0].proof, "{ctx}");
        }
        Err(FlowError::NotApplied { voided }) => {
            assert!(cut, "{ctx}: refused without a cut");
            // Nothing moved; any SAM entry made for it is VOID.
            assert_eq!(after.balance, before.balance, "{ctx}");
            assert_eq!(logs_after.len(), logs_before.len(), "{ctx}");
            assert!(
                new_entries.iter().all(|e| e.status == status::VOID),
                "{ctx}: {new_entries:?}"
            );
            assert_eq!(voided, !new_entries.is_empty(), "{ctx}");
        }
        Err(e) => panic!("{ctx}: flow failed: {e}"),
    }
    assert!(
        journal_after.iter().all(|e| e.status != status::PENDING),
        "{ctx}: PENDING left"
    );
    // The chips are usable afterwards: the next flow completes.
    let opts2 = opts.clone();
    let r = match flow {
        Flow::Load => flows::load_with(
            &mut w.purses[0],
            &mut w.issuer,
            LoadRequest {
                amount: 1,
                terminal_time: T,
            },
            &opts2,
        )
        .map(|_| ()),
        Flow::Pay => flows::pay_with(
            &mut w.purses[0],
            &mut w.terminal,
            &PayRequest {
                amount: 1,
                terminal_id: [0, 0, 0, 7],
                terminal_time: T,
                pin: None,
            },
            &opts2,
        )
        .map(|_| ()),
    };
    r.unwrap_or_else(|e| panic!("{ctx}: next flow failed: {e}"));
    cut
}

/// Cut at write index 0, 1, 2, ... until the command completes without a cut; then after
/// commit. Returns the number of write indexes walked.
fn walk(flow: Flow, side: Side, tear_ins: u8) -> u64 {
    let mut k = 0;
    while run_once(
        flow,
        side,
        tear_ins,
        TearPlan {
            after_bytes: Some(k),
            after_commit: false,
        },
    ) {
        k += 1;
        assert!(k < 100_000, "the command never completed");
    }
    eprintln!(
        "{flow:?}: cut on {side:?} at INS {tear_ins:02X}: {k} write indexes walked, plus after commit"
    );
    assert!(run_once(
        flow,
        side,
        tear_ins,
        TearPlan {
            after_bytes: None,
            after_commit: true,
        },
    ));
    k
}

#[test]
fn tearing_load_at_every_write_of_the_purse() {
    let n = walk(Flow::Load, Side::Purse, ins::LOAD);
    assert!(n > 10, "LOAD writes only {n} bytes?");
}

#[test]
fn tearing_purchase_at_every_write_of_the_purse() {
    let n = walk(Flow::Pay, Side::Purse, ins::PURCHASE);
    assert!(n > 10, "PURCHASE writes only {n} bytes?");
}

#[test]
fn tearing_authorize_and_confirm_at_every_write_of_the_sam() {
    walk(Flow::Load, Side::Sam, sw_::ins::AUTHORIZE_LOAD);
    walk(Flow::Load, Side::Sam, sw_::ins::CONFIRM_LOAD);
    walk(Flow::Pay, Side::Sam, sw_::ins::AUTHORIZE_PURCHASE);
    walk(Flow::Pay, Side::Sam, sw_::ins::CONFIRM_PURCHASE);
}

/// The purse's PURCHASE answer is lost (cut before its commit: not applied; after it:
/// applied), and then the SAM loses power at every write index of RESOLVE in the recovery
/// step: the recovery reopens the SAM, draws a new resolve challenge, asks the purse again
/// and converges to the same outcome, with no PENDING entry left.
#[test]
fn tearing_resolve_at_every_write_of_the_sam() {
    for purse_plan in [
        TearPlan {
            after_bytes: Some(0),
            after_commit: false,
        },
        TearPlan {
            after_bytes: None,
            after_commit: true,
        },
    ] {
        let applied = purse_plan.after_commit;
        let mut k = 0u64;
        loop {
            let mut w = images().restore().unwrap();
            let opts = w.terminal_opts();
            let (before, _) = purse_state(&mut w.purses[0]);
            let mut ptap = Tap::new(&mut w.purses[0]).arm(ins::PURCHASE, purse_plan);
            let mut stap = Tap::new(&mut w.terminal).arm(
                sw_::ins::RESOLVE,
                TearPlan {
                    after_bytes: Some(k),
                    after_commit: false,
                },
            );
            let r = flows::pay_with(
                &mut ptap,
                &mut stap,
                &PayRequest {
                    amount: 100,
                    terminal_id: [0, 0, 0, 7],
                    terminal_time: T,
                    pin: None,
                },
                &opts,
            );
            let (sam_cut, sam_fired) = (stap.cut, stap.fired);
            assert!(ptap.cut && sam_fired, "k {k}");
            let ctx = format!("purse {purse_plan:?}, RESOLVE cut at {k}");
            match r {
                Ok(rec) => {
                    assert!(applied, "{ctx}");
                    assert!(rec.recovered && rec.sam_confirmed, "{ctx}");
                }
                Err(FlowError::NotApplied { voided }) => {
                    assert!(!applied && voided, "{ctx}");
                }
                Err(e) => panic!("{ctx}: {e}"),
            }
            let (after, _) = purse_state(&mut w.purses[0]);
            let expected = if applied {
                before.balance - 100
            } else {
                before.balance
            };
            assert_eq!(after.balance, expected, "{ctx}");
            assert!(w.terminal.store_consistent(), "{ctx}");
            let j = journal(&mut w.terminal);
            let want = if applied {
                status::CONFIRMED
            } else {
                status::VOID
            };
            assert_eq!(j.last().map(|e| e.status), Some(want), "{ctx}: {j:?}");
            assert!(j.iter().all(|e| e.status != status::PENDING), "{ctx}");
            if !sam_cut {
                break;
            }
            k += 1;
            assert!(k < 10_000);
        }
        assert!(k > 5, "RESOLVE writes only {k} bytes?");
    }
}

/// A transport that loses the link (as a PC/SC reader reports a card removed or replaced)
/// right after the card processed one command: the command ran, its answer is lost, and the
/// card is reset. The flow treats [`TransportError::Lost`] like a power cut.
struct LoseLinkAfter<'a> {
    card: &'a mut Card,
    ins: u8,
    lost: bool,
}

impl tessera_host::transport::Transport for LoseLinkAfter<'_> {
    fn transmit_raw(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        let r = tessera_host::transport::Transport::transmit_raw(&mut *self.card, apdu)?;
        if !self.lost && apdu.get(1) == Some(&self.ins) {
            self.lost = true;
            tessera_host::transport::Transport::reset(&mut *self.card)?;
            return Err(TransportError::Lost("test reader: card replaced".into()));
        }
        Ok(r)
    }
    fn reset(&mut self) -> Result<Vec<u8>, TransportError> {
        tessera_host::transport::Transport::reset(&mut *self.card)
    }
    fn atr(&mut self) -> Result<Vec<u8>, TransportError> {
        tessera_host::transport::Transport::atr(&mut *self.card)
    }
}

#[test]
fn a_lost_link_after_purchase_is_recovered_like_a_power_cut() {
    let mut w = images().restore().unwrap();
    let opts = w.terminal_opts();
    let (before, _) = purse_state(&mut w.purses[0]);
    let World {
        terminal, purses, ..
    } = &mut w;
    let mut link = LoseLinkAfter {
        card: &mut purses[0],
        ins: ins::PURCHASE,
        lost: false,
    };
    let r = flows::pay_with(
        &mut link,
        terminal,
        &PayRequest {
            amount: 250,
            terminal_id: [0, 0, 0, 7],
            terminal_time: T,
            pin: None,
        },
        &opts,
    )
    .unwrap_or_else(|e| panic!("the flow did not recover: {e}"));
    assert!(link.lost, "the link was never lost");
    assert_eq!(r.balance_after, before.balance - 250);
    assert!(r.sam_confirmed);
    let (after, _) = purse_state(&mut w.purses[0]);
    assert_eq!(after.balance, before.balance - 250);
    assert_eq!(after.counter, before.counter + 1);
    assert!(
        journal(&mut w.terminal)
            .iter()
            .all(|e| e.status != status::PENDING)
    );
}
