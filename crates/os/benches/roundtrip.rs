//! In-process APDU round trips through `Card::process`:
//!
//! * `echo_empty`: diag echo (`80 10 00 00`, case 1, no data): parse, channel and
//!   selection lookup, applet call inside a store transaction, empty commit, response.
//! * `echo_16`: the same with 16 bytes of data and Le (case 4).
//! * `select`: SELECT by full DF name with FCI (case 4): deselect, select, FCI encoding.
//! * `transmit_echo_empty`: `Card::transmit`, which also encodes the response bytes.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-os cargo bench -p tessera-os --bench roundtrip`.
//! Results are recorded in docs/perf-os.md.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tessera_apdu::Sw;
use tessera_os::diag::conformance_card;

fn roundtrip(c: &mut Criterion) {
    let mut card = conformance_card();
    let select = tessera_apdu::parse_hex("00A4040007F054455353010100").unwrap_or_default();
    assert_eq!(card.process(&select).map(|r| r.sw), Ok(Sw::OK));

    let echo = [0x80, 0x10, 0x00, 0x00];
    assert_eq!(card.process(&echo).map(|r| r.sw), Ok(Sw::OK));
    c.bench_function("echo_empty", |b| {
        b.iter(|| black_box(card.process(black_box(&echo))))
    });

    let mut echo16 = vec![0x80, 0x10, 0x00, 0x00, 0x10];
    echo16.extend_from_slice(&[0x5A; 16]);
    echo16.push(0x00);
    assert_eq!(card.process(&echo16).map(|r| r.data.len()), Ok(16));
    c.bench_function("echo_16", |b| {
        b.iter(|| black_box(card.process(black_box(&echo16))))
    });

    c.bench_function("transmit_echo_empty", |b| {
        b.iter(|| black_box(card.transmit(black_box(&echo))))
    });

    c.bench_function("select", |b| {
        b.iter(|| black_box(card.process(black_box(&select))))
    });
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
