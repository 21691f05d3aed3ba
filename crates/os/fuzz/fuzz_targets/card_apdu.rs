//! Fuzz target `card_apdu`: a byte string becomes a stream of APDUs (and power events)
//! for `tessera_os::diag::conformance_card()`. The card must never panic, must answer
//! every APDU with a status word, and its memory must equal a replay of its NVM log after
//! every power-up.
//!
//! Input format, repeated until the input ends:
//!
//! * `n` (1 byte, 0x00-0xFB) then `n` bytes: one APDU (fewer if the input ends first).
//! * `FC`: warm reset.  `FD`: power off + on.  `FE k`: arm a tear after `k` NVM bytes.
//!   `FF k`: arm a tear after `k` bytes and after the next commit.
//!
//! diag's INS 2A (a deliberate applet panic, caught by the OS) is rewritten to 2B:
//! libFuzzer's panic hook aborts on any panic, caught or not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_os::diag::conformance_card;
use tessera_os::{CardError, TearPlan};

fuzz_target!(|data: &[u8]| {
    let mut card = conformance_card();
    let mut rest = data;
    while let Some((&tag, tail)) = rest.split_first() {
        rest = tail;
        match tag {
            0xFC => {
                card.reset();
            }
            0xFD => {
                card.power_off();
                card.power_on();
                assert!(card.store_consistent());
            }
            0xFE | 0xFF => {
                let Some((&k, tail)) = rest.split_first() else {
                    break;
                };
                rest = tail;
                card.arm_tear(TearPlan {
                    after_bytes: Some(u64::from(k)),
                    after_commit: tag == 0xFF,
                });
            }
            n => {
                let n = usize::from(n).min(rest.len());
                let (apdu, tail) = rest.split_at(n);
                rest = tail;
                let mut apdu = apdu.to_vec();
                if let Some(ins) = apdu.get_mut(1)
                    && *ins == 0x2A
                {
                    *ins = 0x2B;
                }
                match card.process(&apdu) {
                    Ok(r) => assert!(r.sw.sw1() >= 0x61),
                    Err(CardError::PowerLost) => {
                        card.power_on();
                        assert!(card.store_consistent());
                    }
                    Err(CardError::NotPowered) => unreachable!("the card is kept powered"),
                }
            }
        }
    }
});
