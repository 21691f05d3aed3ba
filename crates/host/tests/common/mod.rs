//! Helpers shared by the settlement tests (reconcile, write-off).
#![allow(dead_code)] // each test crate uses a part

use tessera_host::flows::kit::World;
use tessera_host::flows::{self, LoadRequest, PayRequest, VerifiedBatch};

pub const T: u32 = 1_700_000_000;
pub const ISSUER: [u8; 4] = [0, 0, 0, 1];
pub const TERMINAL: [u8; 4] = [0, 0, 0, 2];

/// Load `amount` into purse 0 through the issuer SAM.
pub fn try_load(w: &mut World, amount: u32) -> Result<flows::LoadReceipt, flows::FlowError> {
    let opts = w.issuer_opts();
    flows::load_with(
        &mut w.purses[0],
        &mut w.issuer,
        LoadRequest {
            amount,
            terminal_time: T,
        },
        &opts,
    )
}

/// Load `amount` into purse 0 through the issuer SAM; must succeed.
pub fn load(w: &mut World, amount: u32) {
    try_load(w, amount).unwrap();
}

/// Pay `amount` from purse 0 at the terminal SAM (terminal ID 00000007); must succeed.
pub fn pay(w: &mut World, amount: u32) {
    let opts = w.terminal_opts();
    flows::pay_with(
        &mut w.purses[0],
        &mut w.terminal,
        &PayRequest {
            amount,
            terminal_id: [0, 0, 0, 7],
            terminal_time: T,
            pin: None,
        },
        &opts,
    )
    .unwrap();
}

/// Settle the terminal SAM's journal with the issuer SAM, keeping every verified batch.
pub fn settle(w: &mut World, records: &mut Vec<VerifiedBatch>) -> flows::SettleReport {
    flows::settle(&mut w.terminal, &mut w.issuer, |b| {
        records.push(b.clone());
        Ok(())
    })
    .unwrap()
}
