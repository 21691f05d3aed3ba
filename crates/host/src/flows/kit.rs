//! Issuing chips in-process: a fresh issuer SAM, purse cards and terminal SAMs as
//! [`tessera_os::Card`] values, personalised through the issuer SAM with the flows of this
//! module. Used by `tessera scheme init` / `card issue` / `sam issue`, the demo, the tests
//! and the benchmark.
//!
//! Chip attestation: every chip generates an RSA-2048 attestation key pair inside itself
//! when its applet is installed. The factory step ([`certify_purse`], [`certify_sam`])
//! reads the public key (GET ATTESTATION KEY) and has the chip manufacturer CA
//! ([`ManufacturerCa`]) certify it for the chip's subject ID; the issuer SAM, which trusts
//! that CA (its installation anchor), personalises only chips that present such a
//! certificate and sign their key request with the certified key. In a deployment the
//! manufacturer CA lives at the chip factory, offline from the issuance workstation; the
//! kit holds it in-process for the demo and the tests.

use super::{FlowError, open_sam, personalise_purse, personalise_sam};
use crate::clients::{ClientError, PurseClient, SamClient};
use crate::transport::Transport;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tessera_crypto::CryptoError;
use tessera_crypto::rng::CardRng;
use tessera_crypto::rsa::{RsaPrivateKey, RsaPublicKey};
use tessera_crypto::x509::{self, CardCertificate, CardRole, CertificateParams, X509Error};
use tessera_os::{Card, LoadFile, OsError, Privileges};
use tessera_purse::wire::{AuthorizePurchase, PURSE_AID, PurseData, PurseInstall};
use tessera_sam::wire::{SAM_AID, SamData, SamInstall, role};
use zeroize::Zeroizing;

/// Default unlock PIN of SAMs issued without one (documented in docs/cli.md).
pub const DEFAULT_SAM_PIN: &[u8] = b"0000";

/// Errors issuing a chip.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error("installing the applet: {0}")]
    Install(#[from] OsError),
    #[error(transparent)]
    Flow(#[from] FlowError),
    #[error("manufacturer CA: {0}")]
    Certificate(#[from] X509Error),
    #[error("manufacturer CA key: {0}")]
    Crypto(#[from] CryptoError),
}

// ------------------------------------------------------------------ manufacturer CA

/// Validity of a chip certificate: from a day before issuance (clock skew) for 20 years.
const CHIP_CERT_YEARS: u64 = 20;
/// Validity of the manufacturer CA certificate.
const CA_CERT_YEARS: u64 = 30;
const YEAR: u64 = 365 * 86_400;

/// The chip manufacturer CA: an RSA-2048 key and its self-signed X.509 certificate. It
/// certifies the attestation keys of new chips ([`certify_purse`], [`certify_sam`]); the
/// issuer SAM receives its certificate as trust anchor at installation. In a deployment
/// it lives at the chip factory, offline from the issuance workstation.
#[derive(Clone)]
pub struct ManufacturerCa {
    key: RsaPrivateKey,
    cert: CardCertificate,
}

impl std::fmt::Debug for ManufacturerCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ManufacturerCa({})", self.cert.subject())
    }
}

/// Seconds since the Unix epoch as a u32 (the time field of the personalisation request).
pub fn unix_time(t: SystemTime) -> u32 {
    let s = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    u32::try_from(s).unwrap_or(u32::MAX)
}

impl ManufacturerCa {
    /// Common name of the CA made by [`ManufacturerCa::generate`].
    pub const NAME: &'static str = "Tessera Chip Manufacturer CA";

    /// A new CA: RSA-2048 key from `rng`, self-signed certificate valid from a day before
    /// `now` for 30 years.
    pub fn generate(rng: &mut CardRng, now: SystemTime) -> Result<Self, KitError> {
        let key = RsaPrivateKey::generate(2048, rng)?;
        let from = now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now);
        let cert = x509::issue_self_signed(
            &key,
            &CertificateParams::ca(
                Self::NAME,
                1,
                from,
                now + Duration::from_secs(CA_CERT_YEARS * YEAR),
            ),
        )?;
        Ok(ManufacturerCa { key, cert })
    }

    /// A CA from its PKCS#8 key and DER certificate (checks that they match and that the
    /// certificate is a CA).
    pub fn from_der(key_pkcs8: &[u8], cert_der: &[u8]) -> Result<Self, KitError> {
        let key = RsaPrivateKey::from_pkcs8_der(key_pkcs8)?;
        let cert = CardCertificate::from_der(cert_der)?;
        if !cert.is_ca() {
            return Err(X509Error::InvalidParams("manufacturer certificate is not a CA").into());
        }
        if cert.public_key()? != key.public_key() {
            return Err(X509Error::InvalidParams("CA key does not match CA certificate").into());
        }
        Ok(ManufacturerCa { key, cert })
    }

    /// The private key as unencrypted PKCS#8 DER.
    pub fn key_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, KitError> {
        Ok(self.key.to_pkcs8_der()?)
    }

    /// The CA certificate (DER): the issuer SAM's trust anchor.
    pub fn cert_der(&self) -> &[u8] {
        self.cert.to_der()
    }

    /// Certify a chip's attestation key (`spki`, DER) for `subject` (the purse ID or SAM
    /// ID; the certificate's CN is its upper-case hex) with the card-role extension
    /// `role` ([`CardRole::Purse`] or [`CardRole::Sam`]). Valid from a day before `now`
    /// for 20 years; random 63-bit serial.
    pub fn certify(
        &self,
        spki: &[u8],
        role: CardRole,
        subject: &[u8],
        now: SystemTime,
    ) -> Result<CardCertificate, KitError> {
        let key = RsaPublicKey::from_spki_der(spki)?;
        let mut serial = [0u8; 8];
        CardRng::from_entropy().fill(&mut serial);
        let serial = (u64::from_be_bytes(serial) >> 1).max(1);
        let from = now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now);
        Ok(x509::issue_certificate(
            &self.key,
            &self.cert,
            &key,
            &CertificateParams::card(
                &hex::encode_upper(subject),
                serial,
                role,
                from,
                now + Duration::from_secs(CHIP_CERT_YEARS * YEAR),
            ),
        )?)
    }
}

/// Report a failed command of `step` as a flow error.
fn step(step: &'static str) -> impl Fn(ClientError) -> FlowError {
    move |source| FlowError::Step { step, source }
}

/// Factory step for a purse: SELECT it, read its attestation key (GET ATTESTATION KEY)
/// and purse ID, and have `ca` certify the key for that purse ID. Returns the DER
/// certificate.
pub fn certify_purse<P: Transport + ?Sized>(
    card: &mut P,
    ca: &ManufacturerCa,
    now: SystemTime,
) -> Result<Vec<u8>, KitError> {
    let mut pc = PurseClient::new(card);
    pc.select().map_err(step("SELECT PURSE"))?;
    let spki = pc.attestation_key().map_err(step("GET ATTESTATION KEY"))?;
    let purse_id = pc
        .read_purse_data()
        .map_err(step("READ PURSE DATA"))?
        .purse_id;
    Ok(ca
        .certify(&spki, CardRole::Purse, &purse_id, now)?
        .to_der()
        .to_vec())
}

/// Factory step for a SAM (selected): read its attestation key (GET ATTESTATION KEY) and
/// SAM ID, and have `ca` certify the key for that SAM ID. Returns the DER certificate.
pub fn certify_sam<S: Transport + ?Sized>(
    sam: &mut S,
    ca: &ManufacturerCa,
    now: SystemTime,
) -> Result<Vec<u8>, KitError> {
    let mut sc = SamClient::new(sam);
    let spki = sc.attestation_key().map_err(step("GET ATTESTATION KEY"))?;
    let sam_id = sc.sam_data().map_err(step("GET SAM DATA"))?.sam_id;
    Ok(ca
        .certify(&spki, CardRole::Sam, &sam_id, now)?
        .to_der()
        .to_vec())
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
            log_capacity: 32,
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

/// A new issuer SAM: the SAM applet installed with role ISSUER (it generates its master keys,
/// its RSA personalisation key and its attestation key inside itself) trusting the chip
/// manufacturer CA certificate `chip_ca_cert` (DER). Powered on, not unlocked.
pub fn new_issuer_sam(params: &SamParams, chip_ca_cert: &[u8]) -> Result<Card, KitError> {
    sam_chip(params, role::ISSUER, Vec::new(), chip_ca_cert.to_vec())
}

/// A SAM chip from `params` with the SAM applet installed as `role`, trusting
/// `issuer_perso_spki` (new SAMs) or `chip_ca_cert` (the issuer SAM). Powered on.
fn sam_chip(
    params: &SamParams,
    role: u8,
    issuer_perso_spki: Vec<u8>,
    chip_ca_cert: Vec<u8>,
) -> Result<Card, KitError> {
    let mut card = chip(
        sam_card_id(params.sam_id),
        params.seed,
        Some(SAM_MEMORY_QUOTA),
    );
    let install = SamInstall {
        sam_id: params.sam_id,
        role,
        pin: params.pin.clone(),
        max_per_load: params.max_per_load,
        max_per_day: params.max_per_day,
        journal_capacity: params.journal_capacity,
        issuer_perso_spki,
        chip_ca_cert,
    };
    card.install("sam", &SAM_AID, Privileges::default(), &install.encode())?;
    card.power_on();
    Ok(card)
}

/// A purse card made at the factory (applet installed, attestation key certified by `ca`)
/// and personalised through the issuer SAM (open: selected and unlocked). The returned
/// card is powered on.
pub fn issue_purse<S: Transport + ?Sized>(
    issuer: &mut S,
    ca: &ManufacturerCa,
    params: &PurseParams,
) -> Result<(Card, PurseData), KitError> {
    let spki = SamClient::new(&mut *issuer)
        .perso_public_key()
        .map_err(step("GET PERSO PUBLIC KEY"))?;
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
    let now = SystemTime::now();
    let cert = certify_purse(&mut card, ca, now)?;
    let data = personalise_purse(&mut card, issuer, &cert, unix_time(now))?;
    Ok((card, data))
}

/// A SAM of `params.role` made at the factory (applet installed, attestation key certified
/// by `ca`) and personalised through the issuer SAM (open). The returned SAM is powered on
/// and open (selected and unlocked).
pub fn issue_sam<S: Transport + ?Sized>(
    issuer: &mut S,
    ca: &ManufacturerCa,
    params: &SamParams,
) -> Result<(Card, SamData), KitError> {
    let spki = SamClient::new(&mut *issuer)
        .perso_public_key()
        .map_err(step("GET PERSO PUBLIC KEY"))?;
    let mut card = sam_chip(params, params.role, spki, Vec::new())?;
    open_sam(&mut card, &params.pin)?;
    let now = SystemTime::now();
    let cert = certify_sam(&mut card, ca, now)?;
    let data = personalise_sam(&mut card, issuer, params.role, &cert, unix_time(now))?;
    Ok((card, data))
}

/// A complete in-process scheme for tests and benchmarks: an issuer SAM, a terminal SAM
/// and purse cards, all with fixed RNG seeds (reproducible), SAMs open.
pub struct World {
    /// The chip manufacturer CA the issuer SAM trusts (fixed seed).
    pub manufacturer: ManufacturerCa,
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
    manufacturer: ManufacturerCa,
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
        let manufacturer =
            ManufacturerCa::generate(&mut CardRng::from_seed(seed(4, 0)), SystemTime::now())?;
        let mut issuer = new_issuer_sam(
            &SamParams {
                sam_id: [0, 0, 0, 1],
                role: role::ISSUER,
                pin: issuer_pin.clone(),
                journal_capacity: 4000,
                seed: Some(seed(1, 0)),
                ..Default::default()
            },
            manufacturer.cert_der(),
        )?;
        open_sam(&mut issuer, &issuer_pin)?;
        let terminal_pin = DEFAULT_SAM_PIN.to_vec();
        let (terminal, _) = issue_sam(
            &mut issuer,
            &manufacturer,
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
            purses.push(issue_purse(&mut issuer, &manufacturer, &p)?.0);
        }
        Ok(World {
            manufacturer,
            issuer,
            terminal,
            purses,
            issuer_pin,
            terminal_pin,
        })
    }

    pub fn images(&self) -> WorldImages {
        WorldImages {
            manufacturer: self.manufacturer.clone(),
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
            manufacturer: self.manufacturer.clone(),
            issuer,
            terminal,
            purses,
            issuer_pin: self.issuer_pin.clone(),
            terminal_pin: self.terminal_pin.clone(),
        })
    }
}

/// A purchase the SAM authorises and the purse never receives (the card was pulled after
/// AUTHORIZE PURCHASE): BEGIN PURCHASE, SELECT and INIT PURCHASE, AUTHORIZE PURCHASE, and
/// nothing more. `sam` is open. Leaves a PENDING journal entry; returns its sequence
/// number. For tests and drills of the recovery and write-off paths.
pub fn abandon_purchase<P, S>(
    purse: &mut P,
    sam: &mut S,
    amount: u32,
    terminal_id: [u8; 4],
    terminal_time: u32,
) -> Result<u32, ClientError>
where
    P: Transport + ?Sized,
    S: Transport + ?Sized,
{
    let begin = SamClient::new(&mut *sam).begin_purchase()?;
    let mut p = PurseClient::new(purse);
    p.select()?;
    let init = p.init_purchase(&begin.init_purchase())?;
    let req = AuthorizePurchase::new(&init, amount, terminal_id, terminal_time);
    Ok(SamClient::new(sam).authorize_purchase(&req)?.sam_txn)
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
