use proptest::prelude::*;
use tessera_apdu::{Command, Response, tlv};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Command::parse(&bytes);
        let _ = Response::parse(&bytes);
        let _ = tlv::parse_all(&bytes);
        let _ = tlv::find(&bytes, 0x9F7F);
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
