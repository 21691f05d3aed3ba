//! Chip attestation at personalisation, through APDUs: the issuer SAM hands out card keys
//! (PERSONALISE PURSE) and master keys (EXPORT SAM KEYS) only for a key-transport request
//! signed by a chip whose attestation key the manufacturer CA certified for that subject.
//! A host holding the issuer SAM's PIN and its public key but no genuine chip gets nothing.

#[path = "../../purse/tests/common/mod.rs"]
mod common;

use common::*;
use std::sync::OnceLock;
use tessera_apdu::Sw;
use tessera_crypto::rng::CardRng;
use tessera_crypto::rsa::RsaPrivateKey;
use tessera_crypto::x509::{self, CardRole, CertificateParams};
use tessera_purse::keyblob;
use tessera_purse::wire::{self as pw, AttestedKeyRequest};
use tessera_sam::wire::{self as w, PersonaliseRequest, ins, sw};
use zeroize::Zeroizing;

/// A key the attacker controls (generated once per test binary).
fn rogue_key() -> &'static RsaPrivateKey {
    static K: OnceLock<RsaPrivateKey> = OnceLock::new();
    K.get_or_init(|| RsaPrivateKey::generate(2048, &mut CardRng::from_seed([0xEE; 32])).unwrap())
}

/// What the reviewer's attack builds on the host: a key-transport request for `subject`
/// with the host's OWN transport key, under the issuer SAM's public personalisation key.
fn host_made_ciphertext(issuer: &mut Chip, subject: &[u8]) -> (Vec<u8>, [u8; 16]) {
    let spki = issuer.ok(ins::GET_PERSO_PUBLIC_KEY, 0, 0, &[]);
    let kt = [0x4B; 16];
    let t = keyblob::request(
        &spki,
        Zeroizing::new(kt),
        [0x4E; 8],
        subject,
        &mut CardRng::from_seed([9; 32]),
    )
    .unwrap();
    (t.ciphertext, kt)
}

fn request(cert: &[u8], ciphertext: &[u8], signature: &[u8]) -> Vec<u8> {
    PersonaliseRequest {
        time: T0,
        chip_cert: cert.to_vec(),
        request: AttestedKeyRequest {
            ciphertext: ciphertext.to_vec(),
            signature: signature.to_vec(),
        },
    }
    .encode()
}

fn signed_by(key: &RsaPrivateKey, ciphertext: &[u8]) -> Vec<u8> {
    key.sign_pkcs1v15_sha256(&pw::key_request_signed_input(ciphertext))
        .unwrap()
}

fn terminal_data(perso: Vec<u8>) -> Vec<u8> {
    let mut d = vec![w::role::TERMINAL];
    d.extend_from_slice(&perso);
    d
}

/// Send and check: refused with `want`, and no byte of output.
fn refused(issuer: &mut Chip, ins: u8, data: &[u8], want: Sw, what: &str) {
    let r = issuer.send(0x80, ins, 0, 0, data);
    assert_eq!(r.sw, want, "{what}");
    assert!(r.data.is_empty(), "{what}: no output on refusal");
}

#[test]
fn host_built_purse_requests_get_no_card_keys() {
    let mut iss = issuer();
    let mut victim = blank_purse(&mut iss, &PurseOpts::id(0x31));
    let purse_id = purse_data(&mut victim).purse_id;
    let genuine_cert = purse_cert(&mut victim);
    let (ct, _kt) = host_made_ciphertext(&mut iss, &purse_id);
    let rogue = rogue_key();
    let pp = ins::PERSONALISE_PURSE;

    // The pre-attestation request (a bare OAEP ciphertext) does not even parse.
    let r = iss.send(0x80, pp, 0, 0, &ct);
    assert_ne!(r.sw, Sw::OK);
    assert!(r.data.is_empty());
    // No certificate, no signature.
    refused(
        &mut iss,
        pp,
        &request(&[], &ct, &[]),
        sw::CHIP_NOT_ATTESTED,
        "no cert",
    );
    // The victim's genuine certificate, but no valid signature by its attestation key.
    refused(
        &mut iss,
        pp,
        &request(&genuine_cert, &ct, &[]),
        sw::ATTESTATION_INVALID,
        "empty signature",
    );
    refused(
        &mut iss,
        pp,
        &request(&genuine_cert, &ct, &signed_by(rogue, &ct)),
        sw::ATTESTATION_INVALID,
        "signature by another key",
    );
    // The victim's genuine signature, made over its own ciphertext, moved to the host's.
    let genuine = AttestedKeyRequest::decode(&victim.ok(pw::ins::INIT_PERSO, 0, 0, &[])).unwrap();
    refused(
        &mut iss,
        pp,
        &request(&genuine_cert, &ct, &genuine.signature),
        sw::ATTESTATION_INVALID,
        "signature over another ciphertext",
    );
    // A certificate from another CA (the attacker's own), correctly signed.
    let rogue_ca = x509::issue_self_signed(
        rogue,
        &CertificateParams::ca(
            "Test Chip Manufacturer",
            1,
            at(1_600_000_000),
            at(2_000_000_000),
        ),
    )
    .unwrap();
    let rogue_cert = x509::issue_certificate(
        rogue,
        &rogue_ca,
        &rogue.public_key(),
        &CertificateParams::card(
            &hex::encode_upper(purse_id),
            7,
            CardRole::Purse,
            at(1_650_000_000),
            at(1_950_000_000),
        ),
    )
    .unwrap();
    refused(
        &mut iss,
        pp,
        &request(rogue_cert.to_der(), &ct, &signed_by(rogue, &ct)),
        sw::CHIP_NOT_ATTESTED,
        "certificate from another CA",
    );
    // The trust anchor itself is not a chip certificate.
    refused(
        &mut iss,
        pp,
        &request(manufacturer().cert.to_der(), &ct, &[]),
        sw::CHIP_NOT_ATTESTED,
        "CA certificate as chip certificate",
    );
    // A genuine certificate for ANOTHER purse (say an attestation key leaked from one
    // chip): a request for the victim's purse ID is refused.
    let other = manufacturer().certify(
        &rogue.public_key().to_spki_der().unwrap(),
        CardRole::Purse,
        &[0xAB; 8],
        0x77,
    );
    refused(
        &mut iss,
        pp,
        &request(&other, &ct, &signed_by(rogue, &ct)),
        sw::SUBJECT_MISMATCH,
        "certificate for another subject",
    );
    // A genuine SAM certificate is not a purse certificate.
    let sam_cert_rogue = manufacturer().certify(
        &rogue.public_key().to_spki_der().unwrap(),
        CardRole::Sam,
        &purse_id,
        0x78,
    );
    refused(
        &mut iss,
        pp,
        &request(&sam_cert_rogue, &ct, &signed_by(rogue, &ct)),
        sw::CHIP_NOT_ATTESTED,
        "SAM certificate for a purse",
    );
    // The victim's certificate outside its validity at the request time.
    let mut early = PersonaliseRequest::decode(&request(
        &genuine_cert,
        &genuine.ciphertext,
        &genuine.signature,
    ))
    .unwrap();
    early.time = 1_600_000_000;
    refused(
        &mut iss,
        pp,
        &early.encode(),
        sw::CHIP_NOT_ATTESTED,
        "not yet valid",
    );

    // None of that changed anything: the genuine purse is personalised now, once.
    let ct = victim.ok(pw::ins::INIT_PERSO, 0, 0, &[]);
    let blob = iss.ok(pp, 0, 0, &perso_request(&genuine_cert, &ct));
    victim.ok(pw::ins::PUT_KEYS, 0, 0, &blob);
    assert_eq!(
        purse_data(&mut victim).flags & pw::FLAG_PERSONALISED,
        pw::FLAG_PERSONALISED
    );
    load(&mut iss, &mut victim, 500);
    assert_eq!(balance(&mut victim), 500);
}

#[test]
fn host_built_sam_requests_get_no_master_key() {
    let mut iss = issuer();
    let opts = TerminalOpts {
        sam_id: [0, 0, 0, 0x41],
        ..TerminalOpts::default()
    };
    let mut new_sam = blank_terminal(&mut iss, &opts);
    let genuine_cert = sam_cert(&mut new_sam);
    let (ct, _kt) = host_made_ciphertext(&mut iss, &opts.sam_id);
    let rogue = rogue_key();
    let ex = ins::EXPORT_SAM_KEYS;

    let mut bare = vec![w::role::TERMINAL];
    bare.extend_from_slice(&ct);
    let r = iss.send(0x80, ex, 0, 0, &bare);
    assert_ne!(r.sw, Sw::OK, "bare OAEP ciphertext");
    assert!(r.data.is_empty());
    refused(
        &mut iss,
        ex,
        &terminal_data(request(&[], &ct, &[])),
        sw::CHIP_NOT_ATTESTED,
        "no cert",
    );
    refused(
        &mut iss,
        ex,
        &terminal_data(request(&genuine_cert, &ct, &signed_by(rogue, &ct))),
        sw::ATTESTATION_INVALID,
        "signature by another key",
    );
    let genuine = AttestedKeyRequest::decode(&new_sam.ok(ins::INIT_KEY_IMPORT, 0, 0, &[])).unwrap();
    refused(
        &mut iss,
        ex,
        &terminal_data(request(&genuine_cert, &ct, &genuine.signature)),
        sw::ATTESTATION_INVALID,
        "signature over another ciphertext",
    );
    // A purse certificate cannot fetch SAM keys, even for a matching-looking subject.
    let purse_cert_rogue = manufacturer().certify(
        &rogue.public_key().to_spki_der().unwrap(),
        CardRole::Purse,
        &opts.sam_id,
        0x79,
    );
    refused(
        &mut iss,
        ex,
        &terminal_data(request(&purse_cert_rogue, &ct, &signed_by(rogue, &ct))),
        sw::CHIP_NOT_ATTESTED,
        "purse certificate for a SAM",
    );
    // A genuine SAM certificate for another SAM ID.
    let other = manufacturer().certify(
        &rogue.public_key().to_spki_der().unwrap(),
        CardRole::Sam,
        &[0, 0, 0, 0x42],
        0x7A,
    );
    refused(
        &mut iss,
        ex,
        &terminal_data(request(&other, &ct, &signed_by(rogue, &ct))),
        sw::SUBJECT_MISMATCH,
        "certificate for another SAM",
    );

    // The genuine SAM is personalised end to end and does purchases.
    let blob = iss.ok(ex, 0, 0, &export_request(&genuine_cert, &genuine.encode()));
    new_sam.ok(ins::IMPORT_KEYS, 0, 0, &blob);
    assert_eq!(sam_data(&mut new_sam).keys.len(), 2);
    let mut p = purse(
        &mut iss,
        &PurseOpts {
            pin_threshold: u32::MAX,
            ..PurseOpts::id(0x32)
        },
    );
    load(&mut iss, &mut p, 1_000);
    assert_eq!(
        purchase(&mut new_sam, &mut p, 300, None)
            .unwrap()
            .balance_after,
        700
    );
}

#[test]
fn attestation_keys_are_made_inside_and_sign_the_requests() {
    let mut iss = issuer();
    // Every SAM, the issuer too, answers its attestation key without being unlocked.
    iss.card.reset();
    iss.select();
    let spki = attestation_spki(&mut iss);
    assert!(tessera_crypto::rsa::RsaPublicKey::from_spki_der(&spki).is_ok());
    assert_eq!(
        iss.sw(ins::GET_ATTESTATION_KEY, 1, 0, &[]),
        Sw::INCORRECT_P1P2
    );
    unlock(&mut iss);

    // The purse's INIT PERSO answer is signed by the key GET ATTESTATION KEY shows.
    let mut p = blank_purse(&mut iss, &PurseOpts::id(0x33));
    let pspki = attestation_spki(&mut p);
    assert_eq!(pspki, attestation_spki(&mut p), "stable");
    let req = AttestedKeyRequest::decode(&p.ok(pw::ins::INIT_PERSO, 0, 0, &[])).unwrap();
    let key = tessera_crypto::rsa::RsaPublicKey::from_spki_der(&pspki).unwrap();
    key.verify_pkcs1v15_sha256(
        &pw::key_request_signed_input(&req.ciphertext),
        &req.signature,
    )
    .unwrap();
    assert!(
        key.verify_pkcs1v15_sha256(&req.ciphertext, &req.signature)
            .is_err()
    );
    // Another purse has another key.
    let mut q = blank_purse(&mut iss, &PurseOpts::id(0x34));
    assert_ne!(attestation_spki(&mut q), pspki);
    assert_eq!(
        p.sw(pw::ins::GET_ATTESTATION_KEY, 0, 0, &[1]),
        Sw::WRONG_LENGTH
    );
}

#[test]
fn installation_checks_the_trust_anchor() {
    let install = |role: u8, ca: Vec<u8>| {
        let mut card = tessera_os::Card::builder()
            .card_id(vec![9, 9, 9, role])
            .seed([role; 32])
            .load_file(tessera_sam::load_file())
            .build();
        let params = w::SamInstall {
            sam_id: [0, 0, 0, 0x50 + role],
            role,
            pin: SAM_PIN.to_vec(),
            max_per_load: 0,
            max_per_day: 0,
            journal_capacity: 10,
            issuer_perso_spki: if role == w::role::TERMINAL {
                RsaPrivateKey::public_key(rogue_key())
                    .to_spki_der()
                    .unwrap()
            } else {
                Vec::new()
            },
            chip_ca_cert: ca,
        };
        card.install("sam", &w::SAM_AID, Default::default(), &params.encode())
    };
    let ca = manufacturer().cert.to_der().to_vec();
    // An issuer SAM needs a CA certificate as its anchor; a terminal SAM takes none.
    assert!(install(w::role::ISSUER, Vec::new()).is_err());
    assert!(install(w::role::ISSUER, vec![0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
    let leaf = manufacturer().certify(
        &rogue_key().public_key().to_spki_der().unwrap(),
        CardRole::Sam,
        &[0, 0, 0, 0x60],
        0x7B,
    );
    assert!(
        install(w::role::ISSUER, leaf).is_err(),
        "a leaf is no anchor"
    );
    assert!(install(w::role::TERMINAL, ca).is_err());
}

/// A lost PERSONALISE PURSE answer does not burn the purse ID: the identical request gets
/// the identical key blob again (at another host time too), which the purse accepts. A
/// different request for that purse ID is refused (6925) and writes nothing.
#[test]
fn personalise_purse_answers_the_identical_request_again() {
    let mut iss = issuer();
    let opts = PurseOpts::id(0x61);
    let mut p = blank_purse(&mut iss, &opts);
    let cert = purse_cert(&mut p);
    let ct = p.ok(pw::ins::INIT_PERSO, 0, 0, &[]);
    let data = perso_request(&cert, &ct);
    let blob = iss.ok(ins::PERSONALISE_PURSE, 0, 0, &data);
    // The answer was lost: the same request again, the same blob.
    assert_eq!(iss.ok(ins::PERSONALISE_PURSE, 0, 0, &data), blob);
    let mut later = PersonaliseRequest::decode(&data).unwrap();
    later.time += 3_600;
    assert_eq!(iss.ok(ins::PERSONALISE_PURSE, 0, 0, &later.encode()), blob);
    p.ok(pw::ins::PUT_KEYS, 0, 0, &blob);
    // Another genuine chip request for the same purse ID (a new INIT PERSO): refused.
    let mut twin = blank_purse(&mut iss, &opts);
    let cert2 = purse_cert(&mut twin);
    twin.ok(pw::ins::INIT_PERSO, 0, 0, &[]);
    let ct2 = twin.ok(pw::ins::INIT_PERSO, 0, 0, &[]);
    assert_ne!(ct2, ct);
    refused(
        &mut iss,
        ins::PERSONALISE_PURSE,
        &perso_request(&cert2, &ct2),
        sw::ALREADY_PERSONALISED,
        "another request for a personalised purse ID",
    );
    // The first request is still served identically.
    assert_eq!(iss.ok(ins::PERSONALISE_PURSE, 0, 0, &data), blob);
}

/// EXPORT SAM KEYS serves one key request per SAM ID: the identical request again gets the
/// identical blob (a lost answer), a different request for that SAM ID is refused with
/// 692C, so two SAMs never share an ID (their journals would collide at settlement).
#[test]
fn export_sam_keys_serves_one_request_per_sam_id() {
    let mut iss = issuer();
    let opts = TerminalOpts {
        sam_id: [0, 0, 0, 0x61],
        ..TerminalOpts::default()
    };
    let mut t = blank_terminal(&mut iss, &opts);
    let cert = sam_cert(&mut t);
    let ct = t.ok(ins::INIT_KEY_IMPORT, 0, 0, &[]);
    let data = export_request(&cert, &ct);
    let blob = iss.ok(ins::EXPORT_SAM_KEYS, 0, 0, &data);
    assert_eq!(iss.ok(ins::EXPORT_SAM_KEYS, 0, 0, &data), blob);
    t.ok(ins::IMPORT_KEYS, 0, 0, &blob);
    // A second SAM with that ID (another key request): refused, nothing written.
    let mut twin = blank_terminal(&mut iss, &opts);
    let cert2 = sam_cert(&mut twin);
    twin.ok(ins::INIT_KEY_IMPORT, 0, 0, &[]);
    let ct2 = twin.ok(ins::INIT_KEY_IMPORT, 0, 0, &[]);
    assert_ne!(ct2, ct);
    refused(
        &mut iss,
        ins::EXPORT_SAM_KEYS,
        &export_request(&cert2, &ct2),
        sw::SAM_ID_ALREADY_KEYED,
        "another request for a keyed SAM ID",
    );
    assert_eq!(sw::SAM_ID_ALREADY_KEYED, Sw(0x692C));
    assert_eq!(iss.ok(ins::EXPORT_SAM_KEYS, 0, 0, &data), blob);
    // Another SAM ID is served.
    let other = terminal(
        &mut iss,
        TerminalOpts {
            sam_id: [0, 0, 0, 0x62],
            ..TerminalOpts::default()
        },
    );
    assert_eq!(sam_data_of(other).keys.len(), 2);
}

fn sam_data_of(mut t: Chip) -> w::SamData {
    sam_data(&mut t)
}
