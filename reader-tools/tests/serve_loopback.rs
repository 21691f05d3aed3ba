//! `tessera serve` over TCP on 127.0.0.1 with this test playing the vpcd driver: power on,
//! ATR, APDUs, reset, 6F00 on card errors, and state kept across a crash and a restart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// Kills the child on drop so a failing test leaves nothing running.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn new_image(path: &Path) {
    let out = Command::new(BIN)
        .args(["image", "new", "--out"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn accept(l: &TcpListener) -> TcpStream {
    l.set_nonblocking(true).unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return s;
            }
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("tessera serve did not connect: {e}"),
        }
    }
}

fn send(s: &mut TcpStream, payload: &[u8]) {
    let mut m = (payload.len() as u16).to_be_bytes().to_vec();
    m.extend_from_slice(payload);
    s.write_all(&m).unwrap();
}

fn recv(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut p = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut p).unwrap();
    p
}

fn apdu(s: &mut TcpStream, hex_apdu: &str) -> String {
    send(s, &hex::decode(hex_apdu.replace(' ', "")).unwrap());
    hex::encode_upper(recv(s))
}

fn serve(image: &Path, port: u16) -> Proc {
    Proc(
        Command::new(BIN)
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--card",
            ])
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn connect_mode_state_survives_crash_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("card.tsr");
    new_image(&image);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();

    let mut p = serve(&image, port);
    let mut s = accept(&l);
    send(&mut s, &[0x01]); // power on
    send(&mut s, &[0x04]); // get ATR
    let atr = recv(&mut s);
    assert_eq!(atr[0], 0x3B);
    assert!(atr.len() <= 33);
    assert_eq!(
        apdu(&mut s, "00A4040007F054455353010100"),
        "6F098407F05445535301019000"
    );
    // Length and payload in separate writes (as Debian's vpcd sends them).
    s.write_all(&[0x00]).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    s.write_all(&[0x07, 0x80, 0x14, 0x05, 0x00, 0x02, 0xAB, 0xCD])
        .unwrap();
    assert_eq!(hex::encode_upper(recv(&mut s)), "9000");
    // Transient memory, cleared by reset (with the selection).
    assert_eq!(apdu(&mut s, "8024000002BEEF"), "9000");
    assert_eq!(apdu(&mut s, "8024000000"), "BEEF9000");
    send(&mut s, &[0x02]); // reset
    assert_eq!(
        apdu(&mut s, "8016000000"),
        "6986",
        "no selection after reset"
    );
    assert_eq!(
        apdu(&mut s, "00A4040007F054455353010100"),
        "6F098407F05445535301019000"
    );
    assert_eq!(apdu(&mut s, "8024000000"), "6A88");
    // A panicking applet answers 6F00 and the link stays up.
    assert_eq!(apdu(&mut s, "802A0000"), "6F00");
    // An unpowered card: 6F00, link stays up.
    send(&mut s, &[0x00]);
    assert_eq!(apdu(&mut s, "80100000"), "6F00");
    send(&mut s, &[0x01]);
    assert_eq!(
        apdu(&mut s, "00A4040007F054455353010100"),
        "6F098407F05445535301019000"
    );
    assert_eq!(apdu(&mut s, "8016050000"), "ABCD9000");

    // Crash (SIGKILL): the acknowledged write must be in the image.
    drop(p);
    drop(s);
    p = serve(&image, port);
    let mut s = accept(&l);
    send(&mut s, &[0x01]);
    assert_eq!(
        apdu(&mut s, "00A4040007F054455353010100"),
        "6F098407F05445535301019000"
    );
    assert_eq!(apdu(&mut s, "8016050000"), "ABCD9000");
    assert_eq!(
        apdu(&mut s, "8014060001 77".replace(' ', "").as_str()),
        "9000"
    );

    // Graceful stop with SIGTERM: exits 0, state kept.
    let pid = p.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = p.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < end, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    drop(s);
    let out = Command::new(BIN)
        .args(["image", "info", "--json"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(out.status.success());

    // The served image works in-process too: read both records back with a script.
    let script = dir.path().join("check.apdu");
    std::fs::write(
        &script,
        "00A4040007F0544553530101 => 61..\n8016050000 => ABCD 9000\n8016060000 => 77 9000\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["script", "run", "--card"])
        .arg(&image)
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn listen_mode_and_retry() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("card.tsr");
    new_image(&image);
    let mut p = Proc(
        Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--card",
            ])
            .arg(&image)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(p.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .strip_prefix("listening on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    for round in 0..2 {
        // vpcd connects, works, disconnects (pcscd restart); then connects again.
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        send(&mut s, &[0x01]);
        assert_eq!(
            apdu(&mut s, "00A4040007F054455353010100"),
            "6F098407F05445535301019000"
        );
        assert_eq!(
            apdu(&mut s, "8018000004"),
            format!("0000000{}9000", round + 1)
        );
    }
}

#[test]
fn connect_mode_waits_for_the_driver() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("card.tsr");
    new_image(&image);
    // Find a free port, start serve before anything listens there, then listen.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _p = serve(&image, port);
    std::thread::sleep(Duration::from_millis(800));
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut s = accept(&l);
    send(&mut s, &[0x04]);
    assert_eq!(recv(&mut s)[0], 0x3B);
    // The driver restarts: serve reconnects.
    drop(s);
    let mut s = accept(&l);
    send(&mut s, &[0x01]);
    assert_eq!(
        apdu(&mut s, "00A4040007F054455353010100"),
        "6F098407F05445535301019000"
    );
}

#[test]
fn echo_floor_answers_9000() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let _p = Proc(
        Command::new(BIN)
            .args([
                "serve",
                "--echo-floor",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut s = accept(&l);
    send(&mut s, &[0x01]);
    assert_eq!(apdu(&mut s, "00A4040000"), "9000");
}

#[test]
fn oversized_response_answers_6f00_and_keeps_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("card.tsr");
    new_image(&image);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let _p = serve(&image, port);
    let mut s = accept(&l);
    send(&mut s, &[0x01]);
    assert_eq!(
        apdu(&mut s, "00A4040007F054455353010100"),
        "6F098407F05445535301019000"
    );
    // diag INS 12 with P1P2 = FFFF and extended Le 65536: 65,535 data bytes + SW do not
    // fit one vpcd frame (at most 65,535 bytes).
    assert_eq!(apdu(&mut s, "8012FFFF000000"), "6F00");
    // The connection is still up and the card still answers.
    assert_eq!(apdu(&mut s, "8010000002CAFE00"), "CAFE9000");
}

#[test]
fn failed_save_does_not_let_memory_run_ahead_of_disk() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("cards");
    std::fs::create_dir(&sub).unwrap();
    let image = sub.join("card.tsr");
    new_image(&image);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let _p = serve(&image, port);
    let mut s = accept(&l);
    send(&mut s, &[0x01]);
    assert_eq!(
        apdu(&mut s, "00A4040007F054455353010100"),
        "6F098407F05445535301019000"
    );
    // The image's directory disappears: the write cannot be saved, so it is answered 6F00
    // and the card goes mute (even through a power cycle) rather than running ahead of
    // its image.
    std::fs::remove_dir_all(&sub).unwrap();
    assert_eq!(apdu(&mut s, "8014050002ABCD"), "6F00");
    assert_eq!(apdu(&mut s, "8016050000"), "6F00");
    send(&mut s, &[0x00]); // power off
    send(&mut s, &[0x01]); // power on
    assert_eq!(apdu(&mut s, "00A4040007F054455353010100"), "6F00");
}

#[test]
fn card_is_powered_when_the_driver_connects() {
    // After a restart of serve, pcscd may still consider the card powered and send APDUs
    // without a power-on message: the card must answer them.
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("card.tsr");
    new_image(&image);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let _p = serve(&image, port);
    let mut s = accept(&l);
    assert_eq!(
        apdu(&mut s, "00A4040007F054455353010100"),
        "6F098407F05445535301019000"
    );
}

/// While serve holds an image, no other tessera process opens it for writing (a second
/// serve, a script, a flow): each would save its own copy of the card and erase the other's
/// committed changes. After serve stops, the image opens again.
#[test]
fn a_served_image_is_locked_against_other_processes() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("card.tsr");
    new_image(&image);
    let script = dir.path().join("echo.apdu");
    std::fs::write(&script, "00A4040007F0544553530101 => 61..\n").unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let p = serve(&image, port);
    let _s = accept(&l); // serve has opened (and locked) the image by now

    let run = |args: &[&str]| Command::new(BIN).args(args).arg(&image).output().unwrap();
    let script_arg = script.display().to_string();
    for args in [
        vec!["script", "run", &script_arg, "--card"],
        vec!["serve", "--once", "--port", "1", "--card"],
        vec!["purse", "show", "--card"],
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} ran on a served image");
        assert!(
            err.contains("is in use by another process")
                && err.contains(&format!("pid {}", p.0.id())),
            "{args:?}: {err}"
        );
    }
    drop(p);
    let out = run(&["script", "run", &script_arg, "--card"]);
    assert!(
        out.status.success(),
        "after serve stopped: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
