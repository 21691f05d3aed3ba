//! A complete pay flow (SELECT, BEGIN PURCHASE, INIT PURCHASE, AUTHORIZE PURCHASE, PURCHASE,
//! CONFIRM PURCHASE) with the purse and the terminal SAM in-process; and the same with a
//! durable image save of both chips after every flow. See docs/perf-flows.md.

use criterion::{Criterion, criterion_group, criterion_main};
use std::time::{Duration, Instant};
use tessera_host::flows::kit::{PurseParams, World};
use tessera_host::flows::{self, FlowOptions, LoadRequest, PayRequest};

const T: u32 = 1_700_000_000;
/// Settle the terminal journal and power-cycle the purse (compacting its NVM log) every
/// this many flows, outside the timed section (env PAYFLOW_SETTLE_EVERY overrides; the
/// terminal SAM's journal holds at most about 1000 entries).
fn housekeeping_every() -> u64 {
    std::env::var("PAYFLOW_SETTLE_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=900).contains(n))
        .unwrap_or(500)
}

fn world() -> World {
    let mut w = World::new(
        1,
        &PurseParams {
            max_balance: u32::MAX,
            log_capacity: 16,
            ..Default::default()
        },
    )
    .expect("world");
    let opts = w.issuer_opts();
    flows::load_with(
        &mut w.purses[0],
        &mut w.issuer,
        LoadRequest {
            amount: 4_000_000_000,
            terminal_time: T,
        },
        &opts,
    )
    .expect("load");
    w
}

fn housekeeping(w: &mut World) {
    let r = flows::settle(&mut w.terminal, &mut w.issuer, |_| Ok(())).expect("settle");
    if std::env::var_os("PAYFLOW_DEBUG").is_some() {
        eprintln!("settled {r:?}");
    }
    w.purses[0].power_off();
    w.purses[0].power_on();
}

fn bench(c: &mut Criterion) {
    let req = PayRequest {
        amount: 1,
        terminal_id: [0, 0, 0, 1],
        terminal_time: T,
        pin: None,
    };
    let opts = FlowOptions::default();
    let every = housekeeping_every();
    let mut g = c.benchmark_group("payflow");
    g.throughput(criterion::Throughput::Elements(1));

    let mut w = world();
    let mut done = 0u64;
    g.bench_function("in_process", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                let r =
                    flows::pay_with(&mut w.purses[0], &mut w.terminal, &req, &opts).expect("pay");
                total += t0.elapsed();
                std::hint::black_box(r);
                done += 1;
                if done.is_multiple_of(every) {
                    housekeeping(&mut w);
                }
            }
            total
        })
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let card_path = dir.path().join("purse.card");
    let sam_path = dir.path().join("terminal.card");
    let mut w = world();
    let mut done = 0u64;
    g.bench_function("with_image_save", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                let r =
                    flows::pay_with(&mut w.purses[0], &mut w.terminal, &req, &opts).expect("pay");
                w.purses[0].save_image(&card_path).expect("save card");
                w.terminal.save_image(&sam_path).expect("save SAM");
                total += t0.elapsed();
                std::hint::black_box(r);
                done += 1;
                if done.is_multiple_of(every) {
                    housekeeping(&mut w);
                }
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
