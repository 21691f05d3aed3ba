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
    vec![
        tessera_purse::applet::load_file(),
        tessera_sam::applet::load_file(),
    ]
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

/// NVM quota of a SAM: room for about 1000 journal entries (a purse keeps the OS default).
pub const SAM_MEMORY_QUOTA: usize = 256 * 1024;

fn chip(card_id: Vec<u8>, seed: Option<[u8; 32]>, quota: Option<usize>) -> Card {
    let mut b = Card::builder().card_id(card_id).load_files(load_files());
    if let Some(q) = quota {
        b = b.memory_quota(q);
    }
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
    let mut card = chip(
        sam_card_id(params.sam_id),
        params.seed,
        Some(SAM_MEMORY_QUOTA),
    );
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
pub fn issue_purse<S: Transport + ?Sized>(
    issuer: &mut S,
    params: &PurseParams,
) -> Result<(Card, PurseData), KitError> {
    let spki = SamClient::new(&mut *issuer)
        .perso_public_key()
        .map_err(|e| FlowError::Step {
            step: "GET PERSO PUBLIC KEY",
            source: e,
        })?;
    let mut card = chip(params.card_id.clone(), params.seed, None);
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
    card.install(
        "purse",
        &PURSE_AID,
        Privileges::default(),
        &install.encode(),
    )?;
    card.power_on();
    let data = personalise_purse(&mut card, issuer)?;
    Ok((card, data))
}

/// A SAM of `params.role` personalised through the issuer SAM (open). The returned SAM is
/// powered on and open (selected and unlocked).
pub fn issue_sam<S: Transport + ?Sized>(
    issuer: &mut S,
    params: &SamParams,
) -> Result<(Card, SamData), KitError> {
    let spki = SamClient::new(&mut *issuer)
        .perso_public_key()
        .map_err(|e| FlowError::Step {
            step: "GET PERSO PUBLIC KEY",
            source: e,
        })?;
    let mut card = chip(
        sam_card_id(params.sam_id),
        params.seed,
        Some(SAM_MEMORY_QUOTA),
    );
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

/// A complete in-process scheme for tests and benchmarks: an issuer SAM, a terminal SAM
/// and purse cards, all with fixed RNG seeds (reproducible), SAMs open.
pub struct World {
    pub issuer: Card,
    pub terminal: Card,
    pub purses: Vec<Card>,
    pub issuer_pin: Vec<u8>,
    pub terminal_pin: Vec<u8>,
}

/// Image bytes of a [`World`], to restore fresh copies cheaply (one personalisation, many
/// test cases).
#[derive(Clone)]
pub struct WorldImages {
    issuer: Vec<u8>,
    terminal: Vec<u8>,
    purses: Vec<Vec<u8>>,
    issuer_pin: Vec<u8>,
    terminal_pin: Vec<u8>,
}

fn seed(tag: u8, n: u8) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[0] = tag;
    s[1] = n;
    s[31] = 0x5A;
    s
}

impl World {
    /// An issuer SAM (ID 00000001), a terminal SAM (ID 00000002) and `n` purses made from
    /// `template` (card IDs 04 00 00 00 00 00 i+1), all personalised.
    pub fn new(n: usize, template: &PurseParams) -> Result<World, KitError> {
        let issuer_pin = b"4242".to_vec();
        let mut issuer = new_issuer_sam(&SamParams {
            sam_id: [0, 0, 0, 1],
            role: role::ISSUER,
            pin: issuer_pin.clone(),
            journal_capacity: 4000,
            seed: Some(seed(1, 0)),
            ..Default::default()
        })?;
        open_sam(&mut issuer, &issuer_pin)?;
        let terminal_pin = DEFAULT_SAM_PIN.to_vec();
        let (terminal, _) = issue_sam(
            &mut issuer,
            &SamParams {
                sam_id: [0, 0, 0, 2],
                role: role::TERMINAL,
                pin: terminal_pin.clone(),
                journal_capacity: 4000,
                seed: Some(seed(2, 0)),
                ..Default::default()
            },
        )?;
        let mut purses = Vec::with_capacity(n);
        for i in 0..n {
            let mut p = template.clone();
            let serial = u32::try_from(i + 1).unwrap_or(u32::MAX);
            p.card_id = vec![0x04, 0x00, 0x00];
            p.card_id.extend_from_slice(&serial.to_be_bytes());
            p.seed = Some(seed(3, u8::try_from(i % 256).unwrap_or(0)));
            purses.push(issue_purse(&mut issuer, &p)?.0);
        }
        Ok(World {
            issuer,
            terminal,
            purses,
            issuer_pin,
            terminal_pin,
        })
    }

    pub fn images(&self) -> WorldImages {
        WorldImages {
            issuer: self.issuer.to_image_bytes(),
            terminal: self.terminal.to_image_bytes(),
            purses: self.purses.iter().map(|c| c.to_image_bytes()).collect(),
            issuer_pin: self.issuer_pin.clone(),
            terminal_pin: self.terminal_pin.clone(),
        }
    }

    /// Flow options carrying the issuer SAM PIN (for lost-answer recovery at the SAM).
    pub fn issuer_opts(&self) -> super::FlowOptions {
        super::FlowOptions {
            sam_pin: Some(self.issuer_pin.clone()),
        }
    }

    /// Flow options carrying the terminal SAM PIN.
    pub fn terminal_opts(&self) -> super::FlowOptions {
        super::FlowOptions {
            sam_pin: Some(self.terminal_pin.clone()),
        }
    }
}

impl WorldImages {
    /// Fresh chips from the images: powered on, SAMs open.
    pub fn restore(&self) -> Result<World, KitError> {
        let open = |b: &[u8]| -> Result<Card, KitError> {
            let mut c = Card::from_image_bytes(b, load_files())
                .map_err(|e| KitError::Install(OsError::Image(e)))?;
            c.power_on();
            Ok(c)
        };
        let mut issuer = open(&self.issuer)?;
        open_sam(&mut issuer, &self.issuer_pin)?;
        let mut terminal = open(&self.terminal)?;
        open_sam(&mut terminal, &self.terminal_pin)?;
        let purses = self
            .purses
            .iter()
            .map(|b| open(b))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(World {
            issuer,
            terminal,
            purses,
            issuer_pin: self.issuer_pin.clone(),
            terminal_pin: self.terminal_pin.clone(),
        })
    }
}

/// A transport around an in-process card that records every command APDU and can cut the
/// card's power during the next command with a given INS (tearing tests).
pub struct Tap<'a> {
    pub card: &'a mut Card,
    /// Every command APDU sent, in order.
    pub sent: Vec<Vec<u8>>,
    arm: Option<(u8, tessera_os::TearPlan)>,
    /// Set when an armed command lost power.
    pub cut: bool,
    /// Set when the armed command was sent (whether or not it was cut).
    pub fired: bool,
}

impl<'a> Tap<'a> {
    pub fn new(card: &'a mut Card) -> Self {
        Tap {
            card,
            sent: Vec::new(),
            arm: None,
            cut: false,
            fired: false,
        }
    }

    /// Cut power during the next command whose INS is `ins`, as `plan` says.
    pub fn arm(mut self, ins: u8, plan: tessera_os::TearPlan) -> Self {
        self.arm = Some((ins, plan));
        self
    }

    /// The last command APDU sent with this INS.
    pub fn last_with_ins(&self, ins: u8) -> Option<&Vec<u8>> {
        self.sent.iter().rev().find(|a| a.get(1) == Some(&ins))
    }
}

impl Transport for Tap<'_> {
    fn transmit_raw(&mut self, apdu: &[u8]) -> Result<Vec<u8>, crate::transport::TransportError> {
        self.sent.push(apdu.to_vec());
        let armed = match self.arm {
            Some((ins, plan)) if apdu.get(1) == Some(&ins) => {
                self.arm = None;
                self.fired = true;
                self.card.arm_tear(plan);
                true
            }
            _ => false,
        };
        let r = Transport::transmit_raw(&mut *self.card, apdu);
        if armed {
            match &r {
                Err(crate::transport::TransportError::NoResponse) => self.cut = true,
                // Not cut: disarm what is left of the budget.
                _ => self.card.arm_tear(tessera_os::TearPlan::default()),
            }
        }
        r
    }
    fn reset(&mut self) -> Result<Vec<u8>, crate::transport::TransportError> {
        Transport::reset(&mut *self.card)
    }
    fn atr(&mut self) -> Result<Vec<u8>, crate::transport::TransportError> {
        Transport::atr(&mut *self.card)
    }
    fn power_off(&mut self) -> Result<(), crate::transport::TransportError> {
        Transport::power_off(&mut *self.card)
    }
}
