//! Host-side transmission rules against the in-process card: GET RESPONSE after 61xx,
//! 6Cxx re-issue, command chaining, extended lengths, power errors.

use tessera_apdu::{Command, Sw};
use tessera_host::transport::{Transport, TransportError};
use tessera_os::diag::{INSTANCE_AID, conformance_card};

fn selected() -> tessera_os::Card {
    let mut card = conformance_card();
    let r = Transport::transmit(
        &mut card,
        &Command::new(0x00, 0xA4, 0x04, 0x00).with_data(INSTANCE_AID.to_vec()),
    )
    .unwrap();
    assert_eq!(r.sw, Sw::OK, "select: {r:?}");
    card
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| i as u8).collect()
}

#[test]
fn get_response_without_le() {
    let mut card = selected();
    // T=0 style: no Le -> 61xx; transmit follows with GET RESPONSE.
    let raw = card.transmit_raw(&[0x80, 0x12, 0x00, 0x20]).unwrap();
    assert_eq!(raw, vec![0x61, 0x20]);
    let r = Transport::transmit(&mut card, &Command::new(0x80, 0x12, 0x00, 0x20)).unwrap();
    assert_eq!((r.sw, r.data), (Sw::OK, pattern(0x20)));
}

#[test]
fn long_responses_through_get_response() {
    let mut card = selected();
    for n in [1usize, 255, 256, 257, 600, 1000, 4000] {
        let cmd = Command::new(0x80, 0x12, (n >> 8) as u8, n as u8).with_le(256);
        let r = Transport::transmit(&mut card, &cmd).unwrap();
        assert_eq!(r.sw, Sw::OK, "n={n}");
        assert_eq!(r.data, pattern(n), "n={n}");
    }
}

#[test]
fn extended_le_in_one_exchange() {
    let mut card = selected();
    let cmd = Command::new(0x80, 0x12, 0x0F, 0xA0).with_le(65536);
    assert!(cmd.extended);
    let raw = card.transmit_raw(&cmd.to_bytes().unwrap()).unwrap();
    assert_eq!(raw.len(), 4002);
    let r = Transport::transmit(&mut card, &cmd).unwrap();
    assert_eq!((r.sw, r.data.len()), (Sw::OK, 4000));
    assert_eq!(r.data, pattern(4000));
}

#[test]
fn wrong_le_is_reissued() {
    let mut card = selected();
    // Short Le 10 for 5 bytes in case 2: the card answers 6C05.
    let cmd = Command::new(0x80, 0x12, 0x00, 0x05).with_le(0x10);
    let raw = card.transmit_raw(&cmd.to_bytes().unwrap()).unwrap();
    assert_eq!(raw, vec![0x6C, 0x05]);
    let r = Transport::transmit(&mut card, &cmd).unwrap();
    assert_eq!((r.sw, r.data), (Sw::OK, pattern(5)));
}

#[test]
fn chaining_600_bytes_echo() {
    let mut card = selected();
    let data: Vec<u8> = (0..600).map(|i| (i * 7) as u8).collect();
    let mut cmd = Command::new(0x80, 0x10, 0, 0)
        .with_data(data.clone())
        .with_le(256);
    cmd.extended = false; // force chaining
    let r = Transport::transmit(&mut card, &cmd).unwrap();
    assert_eq!(r.sw, Sw::OK);
    assert_eq!(r.data, data);
    // The same through an extended command, no chaining.
    let cmd = Command::new(0x80, 0x10, 0, 0)
        .with_data(data.clone())
        .with_le(65536);
    let r = Transport::transmit(&mut card, &cmd).unwrap();
    assert_eq!((r.sw, r.data), (Sw::OK, data));
}

#[test]
fn chaining_on_a_logical_channel() {
    let mut card = conformance_card();
    let open =
        Transport::transmit(&mut card, &Command::new(0x00, 0x70, 0x00, 0x00).with_le(1)).unwrap();
    assert_eq!(open.sw, Sw::OK);
    let ch = open.data[0];
    let cla = tessera_apdu::ClassByte::encode(false, false, ch).unwrap();
    let sel = Command::new(cla, 0xA4, 0x04, 0x00)
        .with_data(tessera_os::diag::MULTI_INSTANCE_AID.to_vec());
    assert_eq!(Transport::transmit(&mut card, &sel).unwrap().sw, Sw::OK);
    let data = vec![0x5A; 700];
    let mut cmd = Command::new(0x80 | cla, 0x10, 0, 0).with_data(data.clone());
    cmd.extended = false;
    let r = Transport::transmit(&mut card, &cmd).unwrap();
    assert_eq!((r.sw, r.data), (Sw::OK, data));
}

#[test]
fn power_errors_map() {
    let mut card = selected();
    Transport::power_off(&mut card).unwrap();
    assert!(matches!(
        card.transmit_raw(&[0x80, 0x10, 0, 0]),
        Err(TransportError::NotPowered)
    ));
    // reset powers on.
    let atr = Transport::reset(&mut card).unwrap();
    assert_eq!(atr[0], 0x3B);
    assert_eq!(Transport::atr(&mut card).unwrap(), atr);
    // Tearing after commit: the host gets no response.
    Transport::transmit(
        &mut card,
        &Command::new(0x00, 0xA4, 0x04, 0x00).with_data(INSTANCE_AID.to_vec()),
    )
    .unwrap();
    card.arm_tear(tessera_os::TearPlan {
        after_bytes: None,
        after_commit: true,
    });
    let r = Transport::transmit(&mut card, &Command::new(0x80, 0x18, 0, 0).with_le(4));
    assert!(matches!(r, Err(TransportError::NoResponse)), "{r:?}");
}

#[test]
fn boxed_and_borrowed() {
    let mut card = selected();
    {
        let t: &mut dyn Transport = &mut card;
        let r = t.transmit(&Command::new(0x80, 0x12, 0x01, 0x00)).unwrap();
        assert_eq!(r.data.len(), 256);
    }
    let mut b: Box<dyn Transport> = Box::new(card);
    let r = b
        .transmit(&Command::new(0x80, 0x10, 0, 0).with_data(vec![1, 2, 3]))
        .unwrap();
    assert_eq!(r.data, vec![1, 2, 3]);
    fn generic<T: Transport>(mut t: T) -> Vec<u8> {
        t.atr().unwrap()
    }
    assert_eq!(generic(&mut b)[0], 0x3B);
}
