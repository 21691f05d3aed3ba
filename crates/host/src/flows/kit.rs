//! Issuing chips in-process: a fresh issuer SAM, purse cards and terminal SAMs as
//! [`tessera_os::Card`] values, personalised through the issuer SAM with the flows of this
//! module. Used by `tessera scheme init` / `card issue` / `sam issue`, the demo, the tests
//! and the benchmark.

use super::{FlowError, open_sam, personalise_purse, personalise_sam};
use crate::clients::SamClient;
use crate::transport::Transport;
use tessera_os::{Card, LoadFile, OsError, Privileges};
use tessera_purse::wire::{PURSE_AID, PurseData, PurseInstall};
use tessera_sam::wire::{SAM_AID, SamData, SamInstall, role};

/// Default unlock PIN of SAMs issued without one (documented in docs/cli.md).
pub const DEFAULT_SAM_PIN: &[u8] = b"0000";

/// Errors issuing a chip.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error("installing the applet: {0}")]
    Install(#[from] OsError),
    #[error(transparent)]
    Flow(#[from] FlowError),
}

/// The load files of the value applets (purse and SAM).
pub fn load_files() -> Vec<LoadFile> {
    vec![tessera_purse::applet::load_file(), tessera_sam::applet::load_file()]
}

/// Parameters of a purse card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurseParams {
    /// Card ID (the purse ID is derived from it).
    pub card_id: Vec<u8>,
    /// ISO 4217 numeric currency (978: EUR).
    pub currency: u16,
    pub max_balance: u32,
    pub log_capacity: u8,
    pub counter_limit: u32,
    /// Debits above this need the PIN (u32::MAX: never).
    pub pin_threshold: u32,
    pub pin_try_limit: u8,
    /// Cardholder PIN; empty: none.
    pub pin: Vec<u8>,
    /// Fixed RNG seed (tests and benchmarks); `None`: OS entropy.
    pub seed: Option<[u8; 32]>,
}

impl Default for PurseParams {
    fn default() -> Self {
        PurseParams {
            card_id: vec![0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01],
            currency: 978,
            max_balance: 100_000,
            log_capacity: 16,
            counter_limit: u32::MAX,
            pin_threshold: u32::MAX,
            pin_try_limit: 3,
            pin: Vec::new(),
            seed: None,
        }
    }
}

/// Parameters of a SAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamParams {
    pub sam_id: [u8; 4],
    /// `tessera_sam::wire::role::ISSUER` or `TERMINAL`.
    pub role: u8,
    pub pin: Vec<u8>,
    /// 0: no ceiling.
    pub max_per_load: u32,
    /// 0: no ceiling.
    pub max_per_day: u32,
    pub journal_capacity: u16,
    pub seed: Option<[u8; 32]>,
}

impl Default for SamParams {
    fn default() -> Self {
        SamParams {
            sam_id: [0, 0, 0, 1],
            role: role::TERMINAL,
            pin: DEFAULT_SAM_PIN.to_vec(),
            max_per_load: 0,
            max_per_day: 0,
            journal_capacity: 1000,
            seed: None,
        }
    }
}

fn chip(card_id: Vec<u8>, seed: Option<[u8; 32]>) -> Card {
    let mut b = Card::builder().card_id(card_id).load_files(load_files());
    if let Some(s) = seed {
        b = b.seed(s);
    }
    b.build()
}

fn sam_card_id(sam_id: [u8; 4]) -> Vec<u8> {
    let mut id = vec![0x53, 0x41, 0x4D];
    id.extend_from_slice(&sam_id);
    id
}

/// A new issuer SAM: the SAM applet installed with role ISSUER (it generates its master keys
/// and its RSA personalisation key inside itself). Powered on, not unlocked.
pub fn new_issuer_sam(params: &SamParams) -> Result<Card, KitError> {
    let mut card = chip(sam_card_id(params.sam_id), params.seed);
    let install = SamInstall {
        sam_id: params.sam_id,
        role: role::ISSUER,
        pin: params.pin.clone(),
        max_per_load: params.max_per_load,
        max_per_day: params.max_per_day,
        journal_capacity: params.journal_capacity,
        issuer_perso_spki: Vec::new(),
    };
    card.install("sam", &SAM_AID, Privileges::default(), &install.encode())?;
    card.power_on();
    Ok(card)
}

/// A purse card personalised through the issuer SAM (open: selected and unlocked). The
/// returned card is powered on.
pub fn issue_purse<S: Transport + ?Sized>(issuer: &mut S, params: &PurseParams) -> Result<(Card, PurseData), KitError> {
    let spki = SamClient::new(&mut *issuer)
        .perso_public_key()
        .map_err(|e| FlowError::Step {
            step: "GET PERSO PUBLIC KEY",
            source: e,
        })?;
    let mut card = chip(params.card_id.clone(), params.seed);
    let install = PurseInstall {
        currency: params.currency,
        max_balance: params.max_balance,
        log_capacity: params.log_capacity,
        counter_limit: params.counter_limit,
        pin_threshold: params.pin_threshold,
        pin_try_limit: params.pin_try_limit,
        pin: params.pin.clone(),
        issuer_perso_spki: spki,
    };
    card.install("purse", &PURSE_AID, Privileges::default(), &install.encode())?;
    card.power_on();
    let data = personalise_purse(&mut card, issuer)?;
    Ok((card, data))
}

/// A SAM of `params.role` personalised through the issuer SAM (open). The returned SAM is
/// powered on and open (selected and unlocked).
pub fn issue_sam<S: Transport + ?Sized>(issuer: &mut S, params: &SamParams) -> Result<(Card, SamData), KitError> {
    let spki = SamClient::new(&mut *issuer)
        .perso_public_key()
        .map_err(|e| FlowError::Step {
            step: "GET PERSO PUBLIC KEY",
            source: e,
        })?;
    let mut card = chip(sam_card_id(params.sam_id), params.seed);
    let install = SamInstall {
        sam_id: params.sam_id,
        role: params.role,
        pin: params.pin.clone(),
        max_per_load: params.max_per_load,
        max_per_day: params.max_per_day,
        journal_capacity: params.journal_capacity,
        issuer_perso_spki: spki,
    };
    card.install("sam", &SAM_AID, Privileges::default(), &install.encode())?;
    card.power_on();
    open_sam(&mut card, &params.pin)?;
    let data = personalise_sam(&mut card, issuer, params.role)?;
    Ok((card, data))
}
