//! Card images: round trip, refusal of damaged or foreign files, crash-safe saving.

use tessera_apdu::Sw;
use tessera_os::diag::{self, INSTANCE_AID, conformance_card};
use tessera_os::image::{MAGIC, VERSION};
use tessera_os::{Card, ImageError};

fn lfs() -> Vec<tessera_os::LoadFile> {
    vec![diag::load_file(), diag::load_file_multi()]
}

/// A conformance card with some memory content: record 1 and a PIN in diag.
fn populated() -> Card {
    let mut card = conformance_card();
    for apdu in [
        "00A4040C07F0544553530101",
        "8014010003AABBCC",
        "801A0000050331323334",
        "802000000439393939",
    ] {
        assert!(card.transmit_hex(apdu).unwrap().sw.sw1() != 0x6A);
    }
    card
}

fn read_back(card: &mut Card) -> (Vec<u8>, Sw) {
    card.power_on();
    assert_eq!(
        card.transmit_hex("00A4040C07F0544553530101").unwrap().sw,
        Sw::OK
    );
    let rec = card.transmit_hex("8016010000").unwrap().data;
    let pin = card.transmit_hex("802000000439393939").unwrap().sw;
    (rec, pin)
}

#[test]
fn round_trip_in_memory() {
    let card = populated();
    let bytes = card.to_image_bytes();
    assert_eq!(&bytes[..8], MAGIC);
    assert_eq!(u16::from_be_bytes([bytes[8], bytes[9]]), VERSION);
    let mut back = Card::from_image_bytes(&bytes, lfs()).unwrap();
    assert!(!back.is_powered());
    assert_eq!(back.instances(), card.instances());
    assert_eq!(back.profile(), card.profile());
    assert_eq!(back.memory().used, card.memory().used);
    // The PIN had 2 tries left: one more wrong try leaves 1.
    assert_eq!(read_back(&mut back), (vec![0xAA, 0xBB, 0xCC], Sw(0x63C1)));
    assert!(back.store_consistent());
}

#[test]
fn every_truncation_is_refused() {
    let bytes = populated().to_image_bytes();
    for k in 0..bytes.len() {
        match Card::from_image_bytes(&bytes[..k], lfs()) {
            Err(ImageError::NotAnImage) => assert_eq!(k, 0),
            Err(ImageError::Damaged(_)) | Err(ImageError::Checksum) => assert!(k > 0),
            Err(e) => panic!("cut at {k}: unexpected {e}"),
            Ok(_) => panic!("cut at {k} accepted"),
        }
    }
}

#[test]
fn every_garbled_byte_is_refused() {
    let bytes = populated().to_image_bytes();
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xFF] {
            let mut b = bytes.clone();
            b[i] ^= flip;
            let r = Card::from_image_bytes(&b, lfs());
            match (i, r) {
                (0..8, Err(ImageError::NotAnImage)) => {}
                (8..10, Err(ImageError::UnsupportedVersion(_))) => {}
                (10.., Err(ImageError::Checksum)) => {}
                (i, Err(e)) => panic!("byte {i} ^ {flip:02X}: unexpected {e}"),
                (i, Ok(_)) => panic!("byte {i} ^ {flip:02X} accepted"),
            }
        }
    }
}

fn with_crc(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_be_bytes());
    body
}

#[test]
fn structural_damage_with_a_valid_checksum_is_refused() {
    let bytes = populated().to_image_bytes();
    let body = bytes[..bytes.len() - 4].to_vec();
    // Another version.
    let mut v2 = body.clone();
    v2[8..10].copy_from_slice(&2u16.to_be_bytes());
    assert!(matches!(
        Card::from_image_bytes(&with_crc(v2), lfs()),
        Err(ImageError::UnsupportedVersion(2))
    ));
    // A flag this build does not know.
    let mut flagged = body.clone();
    flagged[10..12].copy_from_slice(&0x0001u16.to_be_bytes());
    assert!(matches!(
        Card::from_image_bytes(&with_crc(flagged), lfs()),
        Err(ImageError::UnsupportedFlags(1))
    ));
    // Trailing bytes.
    let mut trailing = body.clone();
    trailing.push(0);
    assert!(matches!(
        Card::from_image_bytes(&with_crc(trailing), lfs()),
        Err(ImageError::Damaged(_))
    ));
    // A profile length that runs past the end.
    let mut plen = body.clone();
    plen[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        Card::from_image_bytes(&with_crc(plen), lfs()),
        Err(ImageError::Damaged(_))
    ));
    // A memory log whose last batch is torn.
    let mut torn = body.clone();
    let last = torn.len() - 1;
    torn[last] ^= 0x55;
    assert!(matches!(
        Card::from_image_bytes(&with_crc(torn), lfs()),
        Err(ImageError::Damaged(_))
    ));
    // Load files this program does not have.
    assert!(matches!(
        Card::from_image_bytes(&bytes, vec![diag::load_file()]),
        Err(ImageError::MissingLoadFiles(_))
    ));
    assert!(matches!(
        Card::from_image_bytes(b"hello world, not a card", lfs()),
        Err(ImageError::NotAnImage)
    ));
}

#[test]
fn files_save_open_and_are_never_clobbered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.tsra");
    let card = populated();
    card.save_image(&path).unwrap();
    let mut back = Card::open_image(&path, lfs()).unwrap();
    assert_eq!(read_back(&mut back).0, vec![0xAA, 0xBB, 0xCC]);
    // Saving again over an intact image is fine.
    back.save_image(&path).unwrap();

    // A file that is not an image is never overwritten.
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, b"precious").unwrap();
    assert!(matches!(
        card.save_image(&other),
        Err(ImageError::WouldOverwrite(_))
    ));
    assert_eq!(std::fs::read(&other).unwrap(), b"precious");
    assert!(matches!(
        Card::open_image(&other, lfs()),
        Err(ImageError::NotAnImage)
    ));

    // A damaged image is refused on open and not overwritten on save.
    let damaged = dir.path().join("damaged.tsra");
    let mut bytes = card.to_image_bytes();
    let n = bytes.len();
    bytes[n / 2] ^= 0x10;
    std::fs::write(&damaged, &bytes).unwrap();
    assert!(matches!(
        Card::open_image(&damaged, lfs()),
        Err(ImageError::Checksum)
    ));
    assert!(matches!(
        card.save_image(&damaged),
        Err(ImageError::WouldOverwrite(_))
    ));
    assert_eq!(std::fs::read(&damaged).unwrap(), bytes);

    // A missing file is an I/O error naming the path.
    let missing = dir.path().join("missing.tsra");
    match Card::open_image(&missing, lfs()) {
        Err(e @ ImageError::Io { .. }) => assert!(e.to_string().contains("missing.tsra")),
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn a_crash_at_any_byte_of_a_save_leaves_the_old_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.tsra");
    let old = conformance_card();
    old.save_image(&path).unwrap();
    let old_bytes = std::fs::read(&path).unwrap();
    let new = populated();
    let new_len = new.to_image_bytes().len();
    for k in 0..=new_len {
        assert!(new.save_image_cut(&path, k).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), old_bytes, "cut at {k}");
        assert!(Card::open_image(&path, lfs()).is_ok());
    }
    new.save_image(&path).unwrap();
    let mut back = Card::open_image(&path, lfs()).unwrap();
    assert_eq!(read_back(&mut back).0, vec![0xAA, 0xBB, 0xCC]);
}

#[test]
fn many_cards_in_one_process_are_independent() {
    let mut a = populated();
    let mut b = Card::from_image_bytes(&a.to_image_bytes(), lfs()).unwrap();
    b.power_on();
    assert_eq!(
        b.transmit_hex("00A4040C07F0544553530101").unwrap().sw,
        Sw::OK
    );
    assert_eq!(b.transmit_hex("8014010001EE").unwrap().sw, Sw::OK);
    assert_eq!(
        a.transmit_hex("8016010000").unwrap().data,
        vec![0xAA, 0xBB, 0xCC]
    );
    assert_eq!(b.transmit_hex("8016010000").unwrap().data, vec![0xEE]);
    let _ = INSTANCE_AID;
}

#[cfg(unix)]
#[test]
fn saved_images_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.img");
    let card = tessera_os::diag::conformance_card();
    card.save_image(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "image mode {mode:o}");
}

#[test]
fn an_image_is_locked_by_one_holder_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("a.card");
    populated().save_image(&image).unwrap();
    let lock = tessera_os::ImageLock::acquire(&image).unwrap();
    assert_eq!(lock.path(), dir.path().join("a.card.lock"));
    // A second holder is refused, and the message names the image and the holder's PID.
    match tessera_os::ImageLock::acquire(&image) {
        Err(e @ ImageError::Locked { .. }) => {
            let text = e.to_string();
            assert!(text.contains("a.card"), "{text}");
            assert!(
                text.contains(&format!("pid {}", std::process::id())),
                "{text}"
            );
        }
        other => panic!("second lock: {other:?}"),
    }
    // A save by the holder replaces the image file; the lock still holds.
    populated().save_image(&image).unwrap();
    assert!(matches!(
        tessera_os::ImageLock::acquire(&image),
        Err(ImageError::Locked { .. })
    ));
    drop(lock);
    // Released with its holder; the lock file stays and is reused.
    let again = tessera_os::ImageLock::acquire(&image).unwrap();
    drop(again);
}
