//! Card-level behaviour: selection, channels, chaining limits, life cycle, firewall,
//! tearing, randomness, traces.

use tessera_apdu::{Command, Response, Sw};
use tessera_os::diag::{self, INSTANCE_AID, MULTI_INSTANCE_AID, conformance_card};
use tessera_os::{
    AppState, Applet, Card, CardError, CardState, Context, Interface, LoadFile, Privileges,
    TearPlan,
};

fn h(s: &str) -> Vec<u8> {
    tessera_apdu::parse_hex(s).unwrap()
}

fn tx(card: &mut Card, s: &str) -> Response {
    card.transmit_hex(s).unwrap()
}

fn select(card: &mut Card, ch: u8, aid: &[u8]) -> Sw {
    let cla = tessera_apdu::ClassByte::encode(false, false, ch).unwrap();
    let cmd = Command::new(cla, 0xA4, 0x04, 0x0C).with_data(aid.to_vec());
    card.transmit_command(&cmd).unwrap().sw
}

// ---------------------------------------------------------------- test applets

/// Records what the OS tells it; refuses selection when its install parameter says so.
struct Probe;

impl Applet for Probe {
    fn install(&mut self, ctx: &mut Context<'_>, params: &[u8]) -> Result<(), Sw> {
        if params == b"refuse-install" {
            return Err(Sw::WRONG_DATA);
        }
        ctx.put(b"params", params)
    }
    fn select(&mut self, ctx: &mut Context<'_>) -> Result<Vec<u8>, Sw> {
        if ctx.get(b"params").as_deref() == Some(b"refuse-select") {
            return Err(Sw::UNKNOWN);
        }
        let iface = match ctx.interface() {
            Interface::Contact => 0xC7,
            Interface::Contactless => 0xC1,
        };
        Ok(vec![iface, ctx.channel()])
    }
    fn process(&mut self, ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, Sw> {
        match cmd.ins {
            0x01 => Ok(ctx.get(b"params").unwrap_or_default()),
            0x02 => ctx.lock_card().map(|_| Vec::new()),
            0x03 => ctx.terminate_card().map(|_| Vec::new()),
            // Write, then call the service of the instance named by the data; the answer
            // is the callee's.
            0x04 => {
                ctx.put(b"called", b"yes")?;
                ctx.call_service(&cmd.data, b"panic")
            }
            0x05 => Ok(ctx.get(b"called").unwrap_or_default()),
            0x06 => ctx.put(b"data", &cmd.data).map(|_| Vec::new()),
            0x07 => {
                let p = ctx.privileges();
                Ok(vec![u8::from(p.card_lock), u8::from(p.card_terminate)])
            }
            _ => Err(Sw::INS_NOT_SUPPORTED),
        }
    }
    fn service(
        &mut self,
        ctx: &mut Context<'_>,
        _caller: &[u8],
        request: &[u8],
    ) -> Result<Vec<u8>, Sw> {
        ctx.put(b"called", b"callee")?;
        if request == b"panic" {
            panic!("callee fails mid-service");
        }
        Ok(b"pong".to_vec())
    }
}

fn probe_lf() -> LoadFile {
    LoadFile {
        name: "probe",
        aid: h("F0505242"),
        multi_selectable: false,
        create: || Box::new(Probe),
    }
}

fn probe_card(interface: Interface) -> Card {
    let mut card = Card::builder()
        .load_file(probe_lf())
        .load_file(diag::load_file())
        .interface(interface)
        .seed([7; 32])
        .build();
    card.install("probe", &h("F050524201"), Privileges::default(), b"one")
        .unwrap();
    card.install("probe", &h("F050524202"), Privileges::default(), b"two")
        .unwrap();
    card.install(
        "probe",
        &h("F050524203"),
        Privileges::default(),
        b"refuse-select",
    )
    .unwrap();
    card.install(
        "probe",
        &h("F050524204"),
        Privileges {
            card_lock: true,
            card_terminate: true,
            ..Default::default()
        },
        b"admin",
    )
    .unwrap();
    card.install(
        "diag",
        &INSTANCE_AID,
        Privileges {
            default_selected: true,
            ..Default::default()
        },
        &[],
    )
    .unwrap();
    card.power_on();
    card
}

// ---------------------------------------------------------------- applet model

#[test]
fn several_instances_of_one_type_with_install_params() {
    let mut card = probe_card(Interface::Contact);
    assert_eq!(select(&mut card, 0, &h("F050524201")), Sw::OK);
    assert_eq!(tx(&mut card, "8001000000").data, b"one");
    assert_eq!(select(&mut card, 0, &h("F050524202")), Sw::OK);
    assert_eq!(tx(&mut card, "8001000000").data, b"two");
    // Refused installation leaves nothing behind.
    let before = card.memory().used;
    assert!(
        card.install(
            "probe",
            &h("F050524209"),
            Privileges::default(),
            b"refuse-install"
        )
        .is_err()
    );
    assert_eq!(card.memory().used, before);
    assert_eq!(card.instances().len(), 5);
    assert_eq!(select(&mut card, 0, &h("F050524209")), Sw::FILE_NOT_FOUND);
    // Duplicate AID and bad AID lengths.
    assert!(
        card.install("probe", &h("F050524201"), Privileges::default(), b"")
            .is_err()
    );
    assert!(
        card.install("probe", &h("F050"), Privileges::default(), b"")
            .is_err()
    );
    assert!(
        card.install("nope", &h("F050524208"), Privileges::default(), b"")
            .is_err()
    );
}

#[test]
fn select_reports_interface_and_channel_in_fci() {
    for (iface, byte) in [(Interface::Contact, 0xC7), (Interface::Contactless, 0xC1)] {
        let mut card = probe_card(iface);
        let r = tx(&mut card, "00A4040005F05052420100");
        assert_eq!(r.sw, Sw::OK);
        assert_eq!(
            hex::encode_upper(&r.data),
            format!("6F0B8405F050524201A502{byte:02X}00")
        );
        assert_eq!(tx(&mut card, "0070000001").data, vec![1]);
        // Another instance of the same load file (not multi-selectable) on channel 1 while
        // channel 0 holds one: refused, as Java Card refuses a second applet of a package
        // that is not multiselectable.
        assert_eq!(
            tx(&mut card, "01A4040005F05052420200").sw,
            Sw::CONDITIONS_NOT_SATISFIED
        );
        // Channel 0 leaves the probe type: then channel 1 may select it.
        assert_eq!(tx(&mut card, "0070800100").sw, Sw::OK);
        assert_eq!(select(&mut card, 0, &INSTANCE_AID), Sw::OK);
        assert_eq!(tx(&mut card, "0070000001").data, vec![1]);
        let r = tx(&mut card, "01A4040005F05052420200");
        assert_eq!(r.sw, Sw::OK);
        assert!(hex::encode_upper(&r.data).ends_with(&format!("A502{byte:02X}01")));
    }
}

#[test]
fn default_instance_selected_on_power_up_and_reset() {
    let mut card = probe_card(Interface::Contact);
    assert_eq!(card.selected_aid(0), Some(INSTANCE_AID.to_vec()));
    assert_eq!(tx(&mut card, "8010000001AA00").data, vec![0xAA]);
    assert_eq!(select(&mut card, 0, &h("F050524201")), Sw::OK);
    card.reset();
    assert_eq!(card.selected_aid(0), Some(INSTANCE_AID.to_vec()));
    // SELECT without a DF name selects the default instance.
    assert_eq!(select(&mut card, 0, &h("F050524201")), Sw::OK);
    let r = tx(&mut card, "00A4040000");
    assert_eq!(r.sw, Sw::OK);
    assert_eq!(card.selected_aid(0), Some(INSTANCE_AID.to_vec()));
    // A channel opened from the basic channel gets the default instance when it can:
    // diag is not multi-selectable and is on channel 0, so channel 1 opens empty.
    assert_eq!(tx(&mut card, "0070000001").data, vec![1]);
    assert_eq!(card.selected_aid(1), None);
    assert_eq!(select(&mut card, 0, &h("F050524201")), Sw::OK);
    assert_eq!(tx(&mut card, "0070000001").data, vec![2]);
    assert_eq!(card.selected_aid(2), Some(INSTANCE_AID.to_vec()));
}

#[test]
fn refused_selection_is_6999_and_leaves_no_selection() {
    let mut card = probe_card(Interface::Contact);
    assert_eq!(select(&mut card, 0, &h("F050524201")), Sw::OK);
    assert_eq!(
        select(&mut card, 0, &h("F050524203")),
        Sw::APPLET_SELECT_FAILED
    );
    // The previous instance was deselected before the new one refused (Java Card).
    assert_eq!(card.selected_aid(0), None);
    assert_eq!(tx(&mut card, "8001000000").sw, Sw::COMMAND_NOT_ALLOWED);
    // Not found: the selection stays.
    assert_eq!(select(&mut card, 0, &h("F050524201")), Sw::OK);
    assert_eq!(select(&mut card, 0, &h("F0505242FF")), Sw::FILE_NOT_FOUND);
    assert_eq!(card.selected_aid(0), Some(h("F050524201")));
}

#[test]
fn application_life_cycle() {
    let mut card = probe_card(Interface::Contact);
    assert_eq!(select(&mut card, 0, &h("F050524201")), Sw::OK);
    card.set_app_state(&h("F050524201"), AppState::Locked)
        .unwrap();
    assert_eq!(card.selected_aid(0), None);
    assert_eq!(select(&mut card, 0, &h("F050524201")), Sw::FILE_NOT_FOUND);
    // A locked instance is skipped by partial selection.
    let r = tx(&mut card, "00A4040004F050524200");
    assert_eq!(r.sw, Sw::OK);
    assert_eq!(card.selected_aid(0), Some(h("F050524202")));
    assert!(
        card.set_app_state(&h("F050524201"), AppState::Installed)
            .is_err()
    );
    card.set_app_state(&h("F050524201"), AppState::Selectable)
        .unwrap();
    assert_eq!(select(&mut card, 0, &h("F050524201")), Sw::OK);
    // The state is persistent.
    card.set_app_state(&h("F050524202"), AppState::Locked)
        .unwrap();
    card.power_off();
    card.power_on();
    assert_eq!(select(&mut card, 0, &h("F050524202")), Sw::FILE_NOT_FOUND);
    // INSTALLED (GP INSTALL [for install] without [for make selectable]): present, not
    // selectable, until it is made SELECTABLE; it cannot be installed LOCKED.
    card.install_as(
        "probe",
        &h("F050524206"),
        Privileges::default(),
        b"six",
        AppState::Installed,
    )
    .unwrap();
    assert_eq!(select(&mut card, 0, &h("F050524206")), Sw::FILE_NOT_FOUND);
    assert!(
        card.install_as(
            "probe",
            &h("F050524207"),
            Privileges::default(),
            b"",
            AppState::Locked
        )
        .is_err()
    );
    card.power_off();
    card.power_on();
    assert_eq!(select(&mut card, 0, &h("F050524206")), Sw::FILE_NOT_FOUND);
    card.set_app_state(&h("F050524206"), AppState::Selectable)
        .unwrap();
    assert_eq!(select(&mut card, 0, &h("F050524206")), Sw::OK);
    assert_eq!(tx(&mut card, "8001000000").data, b"six");
}

#[test]
fn card_life_cycle() {
    let mut card = probe_card(Interface::Contact);
    assert_eq!(card.life_cycle(), CardState::OpReady);
    card.set_life_cycle(CardState::Secured).unwrap();
    assert!(card.set_life_cycle(CardState::OpReady).is_err());
    card.set_life_cycle(CardState::CardLocked).unwrap();
    // CARD_LOCKED: nothing can be selected; default selection does not happen.
    assert_eq!(card.selected_aid(0), None);
    assert_eq!(select(&mut card, 0, &INSTANCE_AID), Sw::FILE_NOT_FOUND);
    card.reset();
    assert_eq!(card.selected_aid(0), None);
    assert!(
        card.install("probe", &h("F050524207"), Privileges::default(), b"")
            .is_err()
    );
    card.set_life_cycle(CardState::Secured).unwrap();
    assert_eq!(select(&mut card, 0, &INSTANCE_AID), Sw::OK);
    card.set_life_cycle(CardState::Terminated).unwrap();
    assert_eq!(
        tx(&mut card, "8010000001AA00").sw,
        Sw::CONDITIONS_NOT_SATISFIED
    );
    assert_eq!(
        select(&mut card, 0, &INSTANCE_AID),
        Sw::CONDITIONS_NOT_SATISFIED
    );
    assert!(card.set_life_cycle(CardState::Secured).is_err());
    card.power_off();
    card.power_on();
    assert_eq!(card.life_cycle(), CardState::Terminated);
}

#[test]
fn applets_lock_and_terminate_with_privilege_only() {
    let mut card = probe_card(Interface::Contact);
    card.set_life_cycle(CardState::Secured).unwrap();
    assert_eq!(select(&mut card, 0, &h("F050524201")), Sw::OK);
    assert_eq!(
        tx(&mut card, "80020000").sw,
        Sw::SECURITY_STATUS_NOT_SATISFIED
    );
    assert_eq!(card.life_cycle(), CardState::Secured);
    assert_eq!(select(&mut card, 0, &h("F050524204")), Sw::OK);
    assert_eq!(tx(&mut card, "80020000").sw, Sw::OK);
    assert_eq!(card.life_cycle(), CardState::CardLocked);
    assert_eq!(card.selected_aid(0), None);
    card.power_off();
    card.power_on();
    assert_eq!(card.life_cycle(), CardState::CardLocked);
    card.set_life_cycle(CardState::Secured).unwrap();
    assert_eq!(select(&mut card, 0, &h("F050524204")), Sw::OK);
    assert_eq!(tx(&mut card, "80030000").sw, Sw::OK);
    assert_eq!(card.life_cycle(), CardState::Terminated);
}

/// A tear leaves garbage after the valid log; an install on the powered-off card before
/// the next power-up must land where a replay reads it, not after the garbage.
#[test]
fn an_install_after_a_tear_before_power_up_is_kept() {
    let mut card = probe_card(Interface::Contact);
    assert_eq!(select(&mut card, 0, &h("F050524201")), Sw::OK);
    card.arm_tear(TearPlan {
        after_bytes: Some(5),
        after_commit: false,
    });
    // INS 06 writes; the tear cuts its batch after 5 bytes.
    assert!(matches!(
        card.transmit_hex("8006000003AABBCC"),
        Err(CardError::PowerLost)
    ));
    let before = card.instances().len();
    card.install("probe", &h("F050524209"), Privileges::default(), b"late")
        .unwrap();
    card.power_on();
    assert_eq!(card.instances().len(), before + 1);
    assert_eq!(select(&mut card, 0, &h("F050524209")), Sw::OK);
    assert_eq!(tx(&mut card, "8001000000").data, b"late");
    assert!(card.store_consistent());
}

#[test]
fn an_applet_locks_the_card_only_from_secured() {
    let mut card = probe_card(Interface::Contact);
    assert_eq!(card.life_cycle(), CardState::OpReady);
    assert_eq!(select(&mut card, 0, &h("F050524204")), Sw::OK);
    // The applet sees the privileges it was installed with.
    assert_eq!(tx(&mut card, "8007000000").data, vec![1, 1]);
    assert_eq!(tx(&mut card, "80020000").sw, Sw::CONDITIONS_NOT_SATISFIED);
    assert_eq!(card.life_cycle(), CardState::OpReady);
    card.set_life_cycle(CardState::Initialized).unwrap();
    assert_eq!(tx(&mut card, "80020000").sw, Sw::CONDITIONS_NOT_SATISFIED);
    assert_eq!(card.life_cycle(), CardState::Initialized);
    // SECURED -> CARD_LOCKED, and OP_READY can no longer be reached from there.
    card.set_life_cycle(CardState::Secured).unwrap();
    assert_eq!(tx(&mut card, "80020000").sw, Sw::OK);
    assert_eq!(card.life_cycle(), CardState::CardLocked);
    assert!(card.set_life_cycle(CardState::OpReady).is_err());
}

#[test]
fn a_panic_in_a_service_rolls_back_and_keeps_the_callee() {
    let mut card = probe_card(Interface::Contact);
    let before = card.memory().used;
    assert_eq!(select(&mut card, 0, &h("F050524201")), Sw::OK);
    assert_eq!(tx(&mut card, "8007000000").data, vec![0, 0]);
    // 80 04: the caller writes, the callee writes then panics.
    assert_eq!(tx(&mut card, "8004000005F050524202").sw, Sw::UNKNOWN);
    // Nothing of either write stays, and the callee is still installed and works.
    assert_eq!(tx(&mut card, "8005000000").data, b"");
    assert_eq!(card.memory().used, before);
    assert!(card.missing_load_files().is_empty());
    assert_eq!(select(&mut card, 0, &h("F050524202")), Sw::OK);
    assert_eq!(tx(&mut card, "8001000000").data, b"two");
    assert_eq!(tx(&mut card, "8005000000").data, b"");
}

#[test]
fn firewall_keeps_instances_apart() {
    let mut card = conformance_card();
    assert_eq!(select(&mut card, 0, &INSTANCE_AID), Sw::OK);
    assert_eq!(tx(&mut card, "8014010003AABBCC").sw, Sw::OK);
    assert_eq!(select(&mut card, 0, &MULTI_INSTANCE_AID), Sw::OK);
    // Same applet code, same key: a different instance sees nothing.
    assert_eq!(tx(&mut card, "8016010000").sw, Sw::RECORD_NOT_FOUND);
    assert_eq!(tx(&mut card, "8014010001DD").sw, Sw::OK);
    assert_eq!(select(&mut card, 0, &INSTANCE_AID), Sw::OK);
    assert_eq!(tx(&mut card, "8016010000").data, h("AABBCC"));
    // Cross-instance calls only through the service interface, which names the caller.
    let r = tx(&mut card, "802C000007F054455353010200");
    assert_eq!(r.data, [b"ping".as_slice(), &INSTANCE_AID].concat());
    assert_eq!(
        tx(&mut card, "802C000007F054455353010900").sw,
        Sw::FILE_NOT_FOUND
    );
}

#[test]
fn deleting_an_instance_frees_its_memory() {
    let mut card = conformance_card();
    let empty = card.memory().used;
    assert_eq!(select(&mut card, 0, &MULTI_INSTANCE_AID), Sw::OK);
    assert_eq!(tx(&mut card, "8014010003AABBCC").sw, Sw::OK);
    assert!(card.memory().used > empty);
    card.delete_instance(&MULTI_INSTANCE_AID).unwrap();
    assert_eq!(card.selected_aid(0), None);
    assert!(card.memory().used < empty);
    assert!(card.memory().peak >= card.memory().used);
    assert_eq!(
        select(&mut card, 0, &MULTI_INSTANCE_AID),
        Sw::FILE_NOT_FOUND
    );
}

#[test]
fn memory_quota_is_enforced_per_card() {
    let mut card = Card::builder()
        .load_file(diag::load_file())
        .memory_quota(600)
        .build();
    card.install("diag", &INSTANCE_AID, Privileges::default(), &[])
        .unwrap();
    card.power_on();
    assert_eq!(select(&mut card, 0, &INSTANCE_AID), Sw::OK);
    let mut id = 0u8;
    let sw = loop {
        let cmd = Command::new(0x80, 0x14, id, 0).with_data(vec![0x55; 90]);
        let sw = card.transmit_command(&cmd).unwrap().sw;
        if sw != Sw::OK {
            break sw;
        }
        id += 1;
    };
    assert_eq!(sw, Sw::NOT_ENOUGH_MEMORY);
    let m = card.memory();
    assert!(m.used <= m.quota && m.free == m.quota - m.used, "{m:?}");
    // The failing command wrote nothing.
    let cmd = Command::new(0x80, 0x16, id, 0).with_le(256);
    assert_eq!(
        card.transmit_command(&cmd).unwrap().sw,
        Sw::RECORD_NOT_FOUND
    );
}

// ---------------------------------------------------------------- channels, chaining

#[test]
fn twenty_channels_and_no_more() {
    let mut card = conformance_card();
    for n in 1..20u8 {
        assert_eq!(tx(&mut card, "0070000001").data, vec![n]);
    }
    assert_eq!(card.open_channels().len(), 20);
    assert_eq!(
        tx(&mut card, "0070000001").sw,
        Sw::LOGICAL_CHANNEL_NOT_SUPPORTED
    );
    // Every channel in both class forms reaches the multi-selectable instance.
    for ch in 0..20u8 {
        assert_eq!(
            select(&mut card, ch, &MULTI_INSTANCE_AID),
            Sw::OK,
            "channel {ch}"
        );
        let cla = tessera_apdu::ClassByte::encode(true, false, ch).unwrap();
        let cmd = Command::new(cla, 0x10, 0, 0).with_data(vec![ch]).with_le(1);
        assert_eq!(card.transmit_command(&cmd).unwrap().data, vec![ch]);
    }
    // A card profile with fewer channels refuses the others with 6881.
    let profile = tessera_os::CardProfile {
        max_channels: 4,
        ..Default::default()
    };
    let mut small = Card::builder()
        .profile(profile)
        .load_file(diag::load_file())
        .build();
    small.power_on();
    for n in 1..4u8 {
        assert_eq!(tx(&mut small, "0070000001").data, vec![n]);
    }
    assert_eq!(
        tx(&mut small, "0070000001").sw,
        Sw::LOGICAL_CHANNEL_NOT_SUPPORTED
    );
    assert_eq!(
        tx(&mut small, "00700005").sw,
        Sw::LOGICAL_CHANNEL_NOT_SUPPORTED
    );
    assert_eq!(
        tx(&mut small, "4010000000").sw,
        Sw::LOGICAL_CHANNEL_NOT_SUPPORTED
    );
}

#[test]
fn oversize_chain_is_6700() {
    let mut card = conformance_card();
    assert_eq!(select(&mut card, 0, &INSTANCE_AID), Sw::OK);
    let part = Command::new(0x90, 0x10, 0, 0).with_data(vec![0xAB; 255]);
    // 257 parts of 255 bytes = 65535 bytes: accepted.
    for _ in 0..256 {
        assert_eq!(card.transmit_command(&part).unwrap().sw, Sw::OK);
    }
    let last = Command::new(0x80, 0x10, 0, 0)
        .with_data(vec![0xAB; 255])
        .with_le(65536);
    let r = card.transmit_command(&last).unwrap();
    assert_eq!((r.sw, r.data.len()), (Sw::OK, 65535));
    // One byte more: 6700 and the chain is dropped.
    for _ in 0..256 {
        assert_eq!(card.transmit_command(&part).unwrap().sw, Sw::OK);
    }
    let over = Command::new(0x80, 0x10, 0, 0)
        .with_data(vec![0xAB; 256])
        .with_le(65536);
    assert_eq!(card.transmit_command(&over).unwrap().sw, Sw::WRONG_LENGTH);
    assert_eq!(tx(&mut card, "8010000001CC00").data, vec![0xCC]);
}

#[test]
fn t1_profile_returns_data_without_le_and_no_6c() {
    let profile = tessera_os::CardProfile {
        t0_get_response: false,
        ..Default::default()
    };
    let mut card = Card::builder()
        .profile(profile)
        .load_file(diag::load_file())
        .build();
    card.install("diag", &INSTANCE_AID, Privileges::default(), &[])
        .unwrap();
    card.power_on();
    assert_eq!(select(&mut card, 0, &INSTANCE_AID), Sw::OK);
    // Le absent: the data comes back directly.
    let r = tx(&mut card, "80120004");
    assert_eq!((r.data, r.sw), (h("00010203"), Sw::OK));
    // Le longer than the data: the data and 9000 (no 6Cxx outside T=0).
    let r = tx(&mut card, "8012000410");
    assert_eq!((r.data, r.sw), (h("00010203"), Sw::OK));
    // Le shorter: still 61xx and GET RESPONSE.
    let r = tx(&mut card, "8012000402");
    assert_eq!((r.data, r.sw), (h("0001"), Sw(0x6102)));
    let r = tx(&mut card, "00C0000010");
    assert_eq!((r.data, r.sw), (h("0203"), Sw::OK));
}

// ---------------------------------------------------------------- tearing

/// A conformance card with diag selected and record 1 = 11 22 33 committed.
fn tear_setup() -> Card {
    let mut card = conformance_card();
    assert_eq!(select(&mut card, 0, &INSTANCE_AID), Sw::OK);
    assert_eq!(tx(&mut card, "8014010003112233").sw, Sw::OK);
    card
}

fn read_record(card: &mut Card) -> Vec<u8> {
    assert_eq!(select(card, 0, &INSTANCE_AID), Sw::OK);
    tx(card, "8016010000").data
}

#[test]
fn tearing_at_every_byte_of_a_multi_write_command() {
    // INS 14 writes three records in one batch.
    let cmd = h("8014010009AABBCCDDEEFF010203");
    let mut probe = tear_setup();
    let before = probe.nvm_bytes_written();
    assert_eq!(probe.process(&cmd).unwrap().sw, Sw::OK);
    let written = probe.nvm_bytes_written() - before;
    assert!(written > 20, "one batch of three records, got {written}");
    for k in 0..=written {
        let mut card = tear_setup();
        card.arm_tear(TearPlan {
            after_bytes: Some(k),
            after_commit: false,
        });
        let r = card.process(&cmd);
        if k < written {
            assert_eq!(r, Err(CardError::PowerLost), "cut at {k}");
            assert!(!card.is_powered());
            assert_eq!(card.process(&cmd), Err(CardError::NotPowered));
        } else {
            assert_eq!(r.unwrap().sw, Sw::OK);
        }
        card.power_on();
        assert!(card.store_consistent(), "cut at {k}");
        let value = read_record(&mut card);
        let expected = if k < written {
            h("112233")
        } else {
            h("AABBCCDDEEFF010203")
        };
        assert_eq!(value, expected, "cut at {k}");
    }
}

#[test]
fn tearing_after_commit_before_response() {
    let mut card = tear_setup();
    card.arm_tear(TearPlan {
        after_bytes: None,
        after_commit: true,
    });
    assert_eq!(
        card.transmit_hex("8014010002ABCD"),
        Err(CardError::PowerLost)
    );
    card.power_on();
    assert!(card.store_consistent());
    // The host never saw the answer, but the command took effect.
    assert_eq!(read_record(&mut card), h("ABCD"));
    // The plan is used up.
    assert_eq!(tx(&mut card, "8014010001EE").sw, Sw::OK);
}

#[test]
fn tearing_the_counter_never_leaves_halves() {
    let cmd = h("8018000004");
    let mut probe = conformance_card();
    assert_eq!(select(&mut probe, 0, &INSTANCE_AID), Sw::OK);
    let before = probe.nvm_bytes_written();
    probe.process(&cmd).unwrap();
    let written = probe.nvm_bytes_written() - before;
    for k in 0..=written {
        let mut card = conformance_card();
        assert_eq!(select(&mut card, 0, &INSTANCE_AID), Sw::OK);
        card.arm_tear(TearPlan {
            after_bytes: Some(k),
            after_commit: false,
        });
        let _ = card.process(&cmd);
        card.power_on();
        assert!(card.store_consistent());
        assert_eq!(select(&mut card, 0, &INSTANCE_AID), Sw::OK);
        // 6581 would mean the two halves disagree.
        let r = card.process(&cmd).unwrap();
        let expected = if k < written { 1u32 } else { 2 };
        assert_eq!(
            (r.sw, r.data),
            (Sw::OK, expected.to_be_bytes().to_vec()),
            "cut at {k}"
        );
    }
}

fn pin_card() -> Card {
    let mut card = conformance_card();
    assert_eq!(select(&mut card, 0, &INSTANCE_AID), Sw::OK);
    assert_eq!(tx(&mut card, "801A0000050331323334").sw, Sw::OK);
    card
}

#[test]
fn tearing_a_pin_verify_never_gives_a_free_try() {
    for (candidate, right) in [("31313131", false), ("31323334", true)] {
        let cmd = h(&format!("8020000004{candidate}"));
        let mut probe = pin_card();
        let before = probe.nvm_bytes_written();
        let sw = probe.process(&cmd).unwrap().sw;
        assert_eq!(sw, if right { Sw::OK } else { Sw(0x63C2) });
        let written = probe.nvm_bytes_written() - before;
        for k in 0..=written {
            let mut card = pin_card();
            card.arm_tear(TearPlan {
                after_bytes: Some(k),
                after_commit: false,
            });
            let r = card.process(&cmd);
            card.power_on();
            assert!(card.store_consistent());
            assert_eq!(select(&mut card, 0, &INSTANCE_AID), Sw::OK);
            // Probe the counter with a wrong PIN: 63Cx tells the tries left after it.
            let left = tx(&mut card, "802000000439393939").sw;
            if k == written {
                assert!(r.is_ok());
                assert_eq!(left, if right { Sw(0x63C2) } else { Sw(0x63C1) });
            } else {
                assert_eq!(r, Err(CardError::PowerLost), "cut at {k}");
                // Either the decrement was lost together with the comparison (counter
                // intact, nothing learnt), or it persisted: never a gain.
                assert!(
                    left == Sw(0x63C2) || left == Sw(0x63C1),
                    "cut at {k}: {left:?}"
                );
            }
        }
    }
}

#[test]
fn try_counter_is_durable_before_the_comparison() {
    // The decrement is written in its own batch before the comparison: the first bytes
    // written by a VERIFY belong to the decremented counter record.
    let mut card = pin_card();
    let before = card.nvm_bytes_written();
    assert_eq!(tx(&mut card, "802000000431313131").sw, Sw(0x63C2));
    let after_wrong = card.nvm_bytes_written() - before;
    let before = card.nvm_bytes_written();
    assert_eq!(tx(&mut card, "802000000431323334").sw, Sw::OK);
    let after_right = card.nvm_bytes_written() - before;
    // Right PIN: decrement then reset, two batches of the same size.
    assert_eq!(after_right, 2 * after_wrong);
    // A failing command still consumes the try (outside its transaction).
    card.power_off();
    card.power_on();
    assert_eq!(select(&mut card, 0, &INSTANCE_AID), Sw::OK);
    assert_eq!(tx(&mut card, "802000000431313131").sw, Sw(0x63C2));
}

// ---------------------------------------------------------------- power, ATR, randomness

#[test]
fn per_card_atr_and_power() {
    let mut a = Card::builder().historical_bytes(b"CARD-A".to_vec()).build();
    let mut b = Card::builder()
        .historical_bytes(b"CARD-B-LONGER".to_vec())
        .build();
    let atr_a = a.power_on();
    let atr_b = b.power_on();
    assert_ne!(atr_a, atr_b);
    assert!(tessera_os::atr::tck_ok(&atr_a) && tessera_os::atr::tck_ok(&atr_b));
    assert_eq!(a.reset(), atr_a);
    a.power_off();
    assert_eq!(a.transmit_hex("00A4040000"), Err(CardError::NotPowered));
    assert!(b.is_powered());
}

#[test]
fn seeded_cards_replay_and_entropy_cards_differ() {
    let random = |card: &mut Card| {
        assert_eq!(select(card, 0, &INSTANCE_AID), Sw::OK);
        tx(card, "80260000012000").data
    };
    let mut a = conformance_card();
    let mut b = conformance_card();
    let ra = random(&mut a);
    assert_eq!(ra.len(), 32);
    assert_eq!(ra, random(&mut b));
    // A new stream on each power-up, still reproducible.
    a.power_on();
    b.power_on();
    let ra2 = random(&mut a);
    assert_ne!(ra, ra2);
    assert_eq!(ra2, random(&mut b));
    // Without a seed: OS entropy.
    let fresh = || {
        let mut c = Card::builder().load_file(diag::load_file()).build();
        c.install("diag", &INSTANCE_AID, Privileges::default(), &[])
            .unwrap();
        c.power_on();
        c
    };
    let (mut c, mut d) = (fresh(), fresh());
    assert_ne!(random(&mut c), random(&mut d));
}

#[test]
fn panicking_applet_is_rolled_back() {
    let mut card = tear_setup();
    let before = card.memory();
    assert_eq!(tx(&mut card, "802A0000").sw, Sw::UNKNOWN);
    assert_eq!(tx(&mut card, "80280000").sw, Sw::UNKNOWN);
    assert_eq!(card.memory().used, before.used);
    assert_eq!(tx(&mut card, "8016010000").data, h("112233"));
    assert!(card.store_consistent());
}
