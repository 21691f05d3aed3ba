use proptest::prelude::*;
use tessera_apdu::{ClassByte, Command, Response, Sw, tlv};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Command::parse(&bytes);
        let _ = Response::parse(&bytes);
        let _ = tlv::parse_all(&bytes);
        let _ = tlv::find(&bytes, 0x9F7F);
        if let Some(c) = bytes.first() {
            let _ = ClassByte::decode(*c);
        }
    }

    /// Every byte string that parses is in canonical form: it re-encodes to itself. Those
    /// that do not parse are answered 6700 or 6E00.
    #[test]
    fn parse_is_canonical(header in any::<[u8; 4]>(),
                          body in prop_oneof![
                              proptest::collection::vec(any::<u8>(), 0..8),
                              proptest::collection::vec(any::<u8>(), 250..262),
                              (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(b, mut v)| {
                                  // Plausible extended bodies.
                                  let n = v.len().saturating_sub(2) as u16;
                                  let mut out = vec![0, (n >> 8) as u8, n as u8];
                                  if b & 1 == 0 { v.truncate(n as usize); }
                                  out.append(&mut v);
                                  out
                              }),
                          ]) {
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(&body);
        match Command::parse(&bytes) {
            Ok(c) => prop_assert_eq!(c.to_bytes().unwrap(), bytes),
            Err(_) => {
                let sw = Command::parse_sw(&bytes).unwrap_err();
                prop_assert!(sw == Sw::WRONG_LENGTH || sw == Sw::CLA_NOT_SUPPORTED, "{:?}", sw);
            }
        }
    }

    #[test]
    fn command_round_trip(
        cla in (0u8..0xFF).prop_filter("reserved", |c| !(0x20..0x40).contains(c)),
        ins: u8, p1: u8, p2: u8,
        data in proptest::collection::vec(any::<u8>(), 0..700),
        le in proptest::option::of(1usize..=65536),
        force_ext: bool,
    ) {
        let mut c = Command::new(cla, ins, p1, p2).with_data(data);
        if let Some(le) = le { c = c.with_le(le); }
        if force_ext { c = c.extended(); }
        let bytes = c.to_bytes().unwrap();
        let back = Command::parse(&bytes).unwrap();
        prop_assert_eq!(back.data, c.data.clone());
        prop_assert_eq!(back.le, c.le);
        prop_assert_eq!((back.cla, back.ins, back.p1, back.p2), (cla, ins, p1, p2));
        let again = Command::parse(&bytes).unwrap().to_bytes().unwrap();
        prop_assert_eq!(again, bytes);
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn tlv_round_trip(tag in prop_oneof![Just(0x84u32), Just(0x9F7F), Just(0xBF0C), Just(0x5F2D)],
                      value in proptest::collection::vec(any::<u8>(), 0..70000)) {
        let t = tlv::Tlv::new(tag, value);
        let b = t.to_bytes();
        let (back, used) = tlv::parse_one(&b).unwrap();
        prop_assert_eq!(used, b.len());
        prop_assert_eq!(back, t);
    }
}
