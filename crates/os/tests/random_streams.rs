//! Random command streams never panic the card, and every answer keeps the basic ISO rules
//! (a status word, no more data than Le, no data without Le on a T=0-style card).

use proptest::prelude::*;
use tessera_apdu::{Command, Sw};
use tessera_os::diag::conformance_card;
use tessera_os::{CardError, TearPlan};

#[derive(Debug, Clone)]
enum Step {
    Apdu(Vec<u8>),
    Reset,
    PowerCycle,
    Tear(u64),
}

fn apdu() -> impl Strategy<Value = Vec<u8>> {
    let cla = prop_oneof![
        Just(0x00u8),
        Just(0x01),
        Just(0x02),
        Just(0x03),
        Just(0x10),
        Just(0x11),
        Just(0x40),
        Just(0x4F),
        Just(0x80),
        Just(0x81),
        Just(0x90),
        Just(0xC0),
        Just(0xC3),
        Just(0x04),
        Just(0xFF),
        Just(0x20),
        any::<u8>()
    ];
    // 2A (deliberate panic) is left out: it is covered elsewhere and only adds noise.
    let ins = prop_oneof![
        Just(0xA4u8),
        Just(0x70),
        Just(0xC0),
        Just(0x10),
        Just(0x12),
        Just(0x14),
        Just(0x16),
        Just(0x18),
        Just(0x1A),
        Just(0x20),
        Just(0x22),
        Just(0x24),
        Just(0x26),
        Just(0x28),
        Just(0x2C),
        any::<u8>().prop_filter("no 2A", |i| *i != 0x2A)
    ];
    let p = prop_oneof![
        Just(0u8),
        Just(1),
        Just(2),
        Just(4),
        Just(0x0C),
        Just(0x80),
        any::<u8>()
    ];
    let aid = prop_oneof![
        Just(vec![0xF0, 0x54, 0x45, 0x53, 0x53, 0x01, 0x01]),
        Just(vec![0xF0, 0x54, 0x45, 0x53, 0x53, 0x01, 0x02]),
        Just(vec![0xF0, 0x54, 0x45, 0x53, 0x53]),
        proptest::collection::vec(any::<u8>(), 0..20),
    ];
    let le = proptest::option::of(prop_oneof![Just(1usize), Just(4), Just(256), 1usize..300]);
    let structured = (cla, ins, p.clone(), p, aid, le, any::<bool>()).prop_map(
        |(cla, ins, p1, p2, data, le, ext)| {
            let mut c = Command::new(cla, ins, p1, p2).with_data(data);
            if let Some(le) = le {
                c = c.with_le(le);
            }
            if ext {
                c = c.extended();
            }
            c.to_bytes().unwrap_or_default()
        },
    );
    prop_oneof![
        6 => structured,
        1 => proptest::collection::vec(any::<u8>(), 0..12),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        30 => apdu().prop_map(Step::Apdu),
        1 => Just(Step::Reset),
        1 => Just(Step::PowerCycle),
        1 => (0u64..120).prop_map(Step::Tear),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_streams_never_panic(steps in proptest::collection::vec(step(), 1..60)) {
        let mut card = conformance_card();
        let mut armed = false;
        for s in steps {
            match s {
                Step::Reset => {
                    card.reset();
                }
                Step::PowerCycle => {
                    card.power_off();
                    card.power_on();
                    armed = false;
                    prop_assert!(card.store_consistent());
                }
                Step::Tear(k) => {
                    card.arm_tear(TearPlan { after_bytes: Some(k), after_commit: k % 7 == 0 });
                    armed = true;
                }
                Step::Apdu(bytes) => match card.process(&bytes) {
                    Ok(r) => {
                        prop_assert!(r.sw != Sw(0) && r.sw.sw1() >= 0x61, "{:?}", r.sw);
                        if let Ok(cmd) = Command::parse(&bytes) {
                            match cmd.le {
                                Some(le) => prop_assert!(r.data.len() <= le),
                                None if cmd.ins != 0xC0 || cmd.cla & 0x80 != 0 => prop_assert!(r.data.is_empty()),
                                None => prop_assert!(r.data.len() <= 256),
                            }
                        } else {
                            prop_assert!(r.data.is_empty());
                        }
                    }
                    Err(CardError::PowerLost) => {
                        prop_assert!(armed);
                        card.power_on();
                        armed = false;
                        prop_assert!(card.store_consistent());
                    }
                    Err(CardError::NotPowered) => prop_assert!(false, "card was powered"),
                },
            }
        }
    }
}
