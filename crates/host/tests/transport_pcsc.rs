//! Against a real PC/SC reader holding a card served by `tessera serve` (diag instances).
//! Runs only when TESSERA_PCSC_READER names the reader (set by `.ci/pcsc.sh`).
#![cfg(feature = "pcsc")]

use tessera_apdu::{Command, Sw};
use tessera_host::transport::{PcscTransport, Transport};

fn select(t: &mut PcscTransport) {
    let r = t
        .transmit(
            &Command::new(0x00, 0xA4, 0x04, 0x00)
                .with_data(tessera_os::diag::INSTANCE_AID.to_vec())
                .with_le(256),
        )
        .unwrap();
    assert_eq!(r.sw, Sw::OK, "{r:?}");
    assert_eq!(r.data[0], 0x6F);
}

#[test]
fn served_card_through_pcscd() {
    let Ok(reader) = std::env::var("TESSERA_PCSC_READER") else {
        println!("TESSERA_PCSC_READER not set: skipped");
        return;
    };
    let names = PcscTransport::list_readers().unwrap();
    assert!(names.iter().any(|n| n.contains(&reader)), "{names:?}");
    let mut t = PcscTransport::connect(&reader).unwrap();
    let atr = t.atr().unwrap();
    assert_eq!(atr[0], 0x3B, "{atr:02X?}");
    select(&mut t);

    // 4,000-byte response with an extended Le, in one exchange.
    let cmd = Command::new(0x80, 0x12, 0x0F, 0xA0).with_le(4000);
    let raw = t.transmit_raw(&cmd.to_bytes().unwrap()).unwrap();
    assert_eq!(raw.len(), 4002);
    let want: Vec<u8> = (0..4000).map(|i| i as u8).collect();
    assert_eq!(&raw[..4000], &want[..]);
    // 1,000 bytes through 61xx / GET RESPONSE with short APDUs.
    let r = t
        .transmit(&Command::new(0x80, 0x12, 0x03, 0xE8).with_le(256))
        .unwrap();
    assert_eq!((r.sw, r.data.len()), (Sw::OK, 1000));
    // Command chaining: 600 bytes echoed.
    let data: Vec<u8> = (0..600).map(|i| (i * 3) as u8).collect();
    let mut cmd = Command::new(0x80, 0x10, 0, 0)
        .with_data(data.clone())
        .with_le(256);
    cmd.extended = false;
    let r = t.transmit(&cmd).unwrap();
    assert_eq!((r.sw, r.data), (Sw::OK, data));

    // Transient memory is cleared by a warm reset and by a power cycle (SCardReconnect).
    for cold in [false, true] {
        let r = t
            .transmit(&Command::new(0x80, 0x24, 0, 0).with_data(vec![0xBE, 0xEF]))
            .unwrap();
        assert_eq!(r.sw, Sw::OK);
        let r = t
            .transmit(&Command::new(0x80, 0x24, 0, 0).with_le(256))
            .unwrap();
        assert_eq!(r.data, vec![0xBE, 0xEF]);
        let atr2 = t.reconnect(cold).unwrap();
        assert_eq!(atr2, atr);
        let r = t
            .transmit(&Command::new(0x80, 0x24, 0, 0).with_le(256))
            .unwrap();
        assert_eq!(
            r.sw,
            Sw::COMMAND_NOT_ALLOWED,
            "selection cleared (cold={cold})"
        );
        select(&mut t);
        let r = t
            .transmit(&Command::new(0x80, 0x24, 0, 0).with_le(256))
            .unwrap();
        assert_eq!(
            r.sw,
            Sw::REFERENCED_DATA_NOT_FOUND,
            "transient cleared (cold={cold})"
        );
    }
    // The persistent counter survives the power cycles and counts up.
    let a = t
        .transmit(&Command::new(0x80, 0x18, 0, 0).with_le(4))
        .unwrap();
    t.reconnect(true).unwrap();
    select(&mut t);
    let b = t
        .transmit(&Command::new(0x80, 0x18, 0, 0).with_le(4))
        .unwrap();
    let n = |d: &[u8]| u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
    assert_eq!(n(&b.data), n(&a.data) + 1);
}
