//! Criterion benchmarks for the operations the card OS does per APDU or per
//! session. Run: `cargo bench -p tessera-crypto -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::time::{Duration, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use tessera_crypto::cmac::aes_cmac;
use tessera_crypto::kdf::an10922_aes128;
use tessera_crypto::mac::retail_mac;
use tessera_crypto::padding::Padding;
use tessera_crypto::rng::CardRng;
use tessera_crypto::rsa::RsaPrivateKey;
use tessera_crypto::x509::{
    CardRole, CertificateParams, RevocationList, issue_certificate, issue_self_signed, verify_chain,
};

fn symmetric(c: &mut Criterion) {
    let key = [0x2Bu8; 16];
    let data = [0x6Bu8; 32];
    c.bench_function("aes128_cmac_32B", |b| {
        b.iter(|| aes_cmac(black_box(&key), black_box(&data)).unwrap())
    });
    let m = hex::decode("04782E21801D803042F54E585020416275").unwrap();
    c.bench_function("an10922_aes128", |b| {
        b.iter(|| an10922_aes128(black_box(&key), black_box(&m)).unwrap())
    });
    let k16 = [
        0x01u8, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, 0xFE, 0xDC, 0xBA, 0x98, 0x76, 0x54, 0x32,
        0x10,
    ];
    c.bench_function("retail_mac_3des_32B", |b| {
        b.iter(|| retail_mac(black_box(&k16), black_box(&data), Padding::Iso9797M2).unwrap())
    });
}

fn rsa_and_x509(c: &mut Criterion) {
    let mut rng = CardRng::from_seed([7; 32]);
    let key = RsaPrivateKey::generate(2048, &mut rng).unwrap();
    let public = key.public_key();
    let msg = b"tessera purse debit 0001";
    let sig = key.sign_pkcs1v15_sha256(msg).unwrap();
    let ct = public.encrypt_oaep_sha256(&[0x42; 32], &mut rng).unwrap();
    c.bench_function("rsa2048_sign_pkcs1v15_sha256", |b| {
        b.iter(|| key.sign_pkcs1v15_sha256(black_box(msg)).unwrap())
    });
    c.bench_function("rsa2048_sign_pss_sha256", |b| {
        b.iter(|| key.sign_pss_sha256(black_box(msg), &mut rng).unwrap())
    });
    c.bench_function("rsa2048_verify_pkcs1v15_sha256", |b| {
        b.iter(|| {
            public
                .verify_pkcs1v15_sha256(black_box(msg), black_box(&sig))
                .unwrap()
        })
    });
    c.bench_function("rsa2048_decrypt_oaep_sha256", |b| {
        b.iter(|| key.decrypt_oaep_sha256(black_box(&ct)).unwrap())
    });

    let t0 = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let day = Duration::from_secs(86_400);
    let root_key = RsaPrivateKey::generate(2048, &mut rng).unwrap();
    let sub_key = RsaPrivateKey::generate(2048, &mut rng).unwrap();
    let root = issue_self_signed(
        &root_key,
        &CertificateParams::ca("Bench Root", 1, t0, t0 + day * 3650),
    )
    .unwrap();
    let sub = issue_certificate(
        &root_key,
        &root,
        &sub_key.public_key(),
        &CertificateParams::ca("Bench Issuer", 2, t0, t0 + day * 1000),
    )
    .unwrap();
    let card = issue_certificate(
        &sub_key,
        &sub,
        &public,
        &CertificateParams::card("04782E21801D80", 3, CardRole::Purse, t0, t0 + day * 400),
    )
    .unwrap();
    let chain = [card, sub];
    let crl: RevocationList = [99u64, 100].into_iter().collect();
    let now = t0 + day * 10;
    c.bench_function("x509_verify_chain_2_level", |b| {
        b.iter(|| verify_chain(black_box(&chain), black_box(&root), now, &crl).unwrap())
    });
}

criterion_group!(benches, symmetric, rsa_and_x509);
criterion_main!(benches);
