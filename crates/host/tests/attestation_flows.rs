//! Chip attestation through the host flows and clients: honest issuance works end to end;
//! chips from another factory, and host-built key requests, get no keys from the issuer SAM.

use std::sync::OnceLock;
use std::time::SystemTime;
use tessera_crypto::rng::CardRng;
use tessera_host::clients::{PurseClient, SamClient};
use tessera_host::flows::kit::{
    self, ManufacturerCa, PurseParams, SamParams, World, WorldImages, unix_time,
};
use tessera_host::flows::{self, FlowError, LoadRequest};
use tessera_purse::keyblob;
use tessera_purse::wire::AttestedKeyRequest;
use tessera_sam::wire::{self as sw_, PersonaliseRequest};
use zeroize::Zeroizing;

fn images() -> &'static WorldImages {
    static W: OnceLock<WorldImages> = OnceLock::new();
    W.get_or_init(|| World::new(0, &PurseParams::default()).unwrap().images())
}

/// Another factory's CA, which the issuer SAM does not trust.
fn rogue_factory() -> &'static ManufacturerCa {
    static M: OnceLock<ManufacturerCa> = OnceLock::new();
    M.get_or_init(|| {
        ManufacturerCa::generate(&mut CardRng::from_seed([0x66; 32]), SystemTime::now()).unwrap()
    })
}

fn not_attested(e: kit::KitError) -> String {
    match e {
        kit::KitError::Flow(FlowError::NotAttested(m)) => m,
        other => panic!("expected NotAttested, got {other}"),
    }
}

#[test]
fn honest_issuance_and_a_load() {
    let mut w = images().restore().unwrap();
    let (mut card, data) = kit::issue_purse(
        &mut w.issuer,
        &w.manufacturer,
        &PurseParams {
            card_id: vec![0x04, 0xAA, 0, 0, 0, 0, 1],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(data.flags & tessera_purse::wire::FLAG_PERSONALISED, 1);
    let opts = w.issuer_opts();
    let r = flows::load_with(
        &mut card,
        &mut w.issuer,
        LoadRequest {
            amount: 700,
            terminal_time: unix_time(SystemTime::now()),
        },
        &opts,
    )
    .unwrap();
    assert_eq!(r.balance_after, 700);
    let (_sam, d) = kit::issue_sam(
        &mut w.issuer,
        &w.manufacturer,
        &SamParams {
            sam_id: [0, 0, 0, 9],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(d.keys.len(), 2);
}

#[test]
fn chips_from_another_factory_get_no_keys() {
    let mut w = images().restore().unwrap();
    let e = kit::issue_purse(
        &mut w.issuer,
        rogue_factory(),
        &PurseParams {
            card_id: vec![0x04, 0xBB, 0, 0, 0, 0, 1],
            ..Default::default()
        },
    )
    .err()
    .expect("refused");
    assert!(not_attested(e).contains("not attested"));
    let e = kit::issue_sam(
        &mut w.issuer,
        rogue_factory(),
        &SamParams {
            sam_id: [0, 0, 0, 0x0A],
            ..Default::default()
        },
    )
    .err()
    .expect("refused");
    assert!(not_attested(e).contains("not attested"));
}

/// The reviewer's attack through the typed clients: the issuance workstation has the issuer
/// SAM unlocked and a genuine new SAM's certificate, and builds the key request with its own
/// transport key. EXPORT SAM KEYS (which would wrap M_debit under that key) is refused.
#[test]
fn host_built_request_gets_no_master_key() {
    let mut w = images().restore().unwrap();
    let spki = SamClient::new(&mut w.issuer).perso_public_key().unwrap();
    // A genuine SAM and its genuine certificate (the factory step run again).
    let now = SystemTime::now();
    let cert = kit::certify_sam(&mut w.terminal, &w.manufacturer, now).unwrap();
    let sam_id = SamClient::new(&mut w.terminal).sam_data().unwrap().sam_id;
    let t = keyblob::request(
        &spki,
        Zeroizing::new([0x11; 16]),
        [0x22; 8],
        &sam_id,
        &mut CardRng::from_seed([3; 32]),
    )
    .unwrap();
    let req = PersonaliseRequest {
        time: unix_time(now),
        chip_cert: cert,
        request: AttestedKeyRequest {
            ciphertext: t.ciphertext,
            signature: vec![0; 256],
        },
    };
    let e = SamClient::new(&mut w.issuer)
        .export_sam_keys(sw_::role::TERMINAL, &req)
        .unwrap_err();
    assert_eq!(e.sw(), Some(sw_::sw::ATTESTATION_INVALID));
    let e = SamClient::new(&mut w.issuer)
        .personalise_purse(&req)
        .unwrap_err();
    assert_eq!(
        e.sw(),
        Some(sw_::sw::CHIP_NOT_ATTESTED),
        "a SAM cert is no purse cert"
    );
    // The genuine SAM's own request is accepted (its keys were already imported, so only
    // the issuer's side is shown: a blob wrapped under the SAM's transport key).
    let fresh = SamClient::new(&mut w.terminal).init_key_import();
    assert!(
        fresh.is_err(),
        "a personalised SAM makes no new key request"
    );
}

#[test]
fn purse_attestation_key_is_readable_through_the_client() {
    let mut w = images().restore().unwrap();
    let (mut card, _) = kit::issue_purse(
        &mut w.issuer,
        &w.manufacturer,
        &PurseParams {
            card_id: vec![0x04, 0xCC, 0, 0, 0, 0, 1],
            ..Default::default()
        },
    )
    .unwrap();
    let mut pc = PurseClient::new(&mut card);
    pc.select().unwrap();
    let spki = pc.attestation_key().unwrap();
    assert!(tessera_crypto::rsa::RsaPublicKey::from_spki_der(&spki).is_ok());
    // Personalised: INIT PERSO is refused, so no further key request can be signed.
    assert_eq!(
        pc.init_perso().unwrap_err().sw(),
        Some(tessera_purse::wire::sw::NOT_PERSONALISED)
    );
}
