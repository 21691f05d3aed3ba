//! The vpcd socket protocol of vsmartcard (the `vsmartcard-vpcd` pcscd driver).
//!
//! Every message, both ways, is a 2-byte big-endian length and then the payload. A 1-byte
//! payload from the driver is a control message: `00` power off, `01` power on, `02`
//! reset (no reply to these three), `04` get ATR (reply: the ATR, at most 33 bytes).
//! Any longer payload is a command APDU, answered by the response APDU.
//!
//! By default the driver listens (127.0.0.1:35963 for slot 0, 35964 for slot 1) and the
//! virtual card connects; in reverse mode the card listens and the driver connects.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Port of slot 0 of the Debian vpcd driver (`CHANNELID 0x8C7B` in
/// `/etc/reader.conf.d/vpcd`); slot N listens on this port + N.
pub const DEFAULT_PORT: u16 = 35963;
/// Longest ATR (ISO 7816-3).
pub const MAX_ATR: usize = 33;
/// Longest payload a 2-byte length can carry.
pub const MAX_PAYLOAD: usize = 0xFFFF;

/// A message from the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    PowerOff,
    PowerOn,
    Reset,
    GetAtr,
    /// A control byte this implementation does not know (ignored, no reply).
    UnknownControl(u8),
    Apdu(Vec<u8>),
}

impl Msg {
    /// Classify a payload; `None` for an empty one (ignored).
    pub fn from_payload(p: Vec<u8>) -> Option<Msg> {
        match p.as_slice() {
            [] => None,
            [0x00] => Some(Msg::PowerOff),
            [0x01] => Some(Msg::PowerOn),
            [0x02] => Some(Msg::Reset),
            [0x04] => Some(Msg::GetAtr),
            [b] => Some(Msg::UnknownControl(*b)),
            _ => Some(Msg::Apdu(p)),
        }
    }
}

/// Reassembles length-prefixed messages from a byte stream that arrives in arbitrary
/// pieces (a length split across reads, several messages in one segment).
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    pub fn new() -> Framer {
        Framer::default()
    }

    /// Add received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete payload, if one has arrived.
    pub fn next_payload(&mut self) -> Option<Vec<u8>> {
        let len = match self.buf.as_slice() {
            [h, l, ..] => u16::from_be_bytes([*h, *l]) as usize,
            _ => return None,
        };
        let payload = self.buf.get(2..2 + len)?.to_vec();
        self.buf.drain(..2 + len);
        Some(payload)
    }

    /// Bytes received but not yet part of a complete message.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Length-prefix a payload.
pub fn encode(payload: &[u8]) -> io::Result<Vec<u8>> {
    let len = u16::try_from(payload.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "vpcd message of {} bytes exceeds {MAX_PAYLOAD}",
                payload.len()
            ),
        )
    })?;
    let mut out = Vec::with_capacity(2 + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// What sits behind a vpcd slot.
pub trait Responder {
    fn power_off(&mut self);
    fn power_on(&mut self);
    fn reset(&mut self);
    fn atr(&mut self) -> Vec<u8>;
    /// Answer a command APDU (never fails: a card failure is answered 6F00).
    fn apdu(&mut self, apdu: &[u8]) -> Vec<u8>;
    /// The link to the driver went away (pcscd stopped): the card is removed.
    fn disconnected(&mut self) {
        self.power_off();
    }
}

/// Handle one message; the reply payload, if the message has one.
pub fn handle(r: &mut dyn Responder, msg: Msg) -> Option<Vec<u8>> {
    match msg {
        Msg::PowerOff => {
            r.power_off();
            None
        }
        Msg::PowerOn => {
            r.power_on();
            None
        }
        Msg::Reset => {
            r.reset();
            None
        }
        Msg::GetAtr => {
            let mut atr = r.atr();
            atr.truncate(MAX_ATR);
            Some(atr)
        }
        Msg::UnknownControl(b) => {
            tracing::warn!(control = b, "unknown vpcd control byte ignored");
            None
        }
        Msg::Apdu(a) => Some(r.apdu(&a)),
    }
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The driver closed the connection.
    Closed,
    /// Shutdown was requested.
    Shutdown,
}

/// Set TCP_QUICKACK (Linux): acknowledge at once instead of delaying the ACK. Debian's
/// vpcd writes the length and the payload of a message in two `send` calls; with delayed
/// ACKs on our side and Nagle on its side every APDU would wait ~40 ms.
#[cfg(target_os = "linux")]
fn quickack(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_tcp_quickack(true);
}
#[cfg(not(target_os = "linux"))]
fn quickack(_s: &TcpStream) {}

/// Serve one connection until the driver closes it or `shutdown` is set.
pub fn serve_stream(
    mut stream: TcpStream,
    r: &mut dyn Responder,
    shutdown: &AtomicBool,
) -> io::Result<End> {
    stream.set_nodelay(true)?;
    quickack(&stream);
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    // A card is powered when the driver (re)connects. After a restart of `tessera serve`
    // pcscd may still consider the card in this slot powered and send APDUs without a
    // power-on first; the driver's own power events follow as usual.
    r.power_on();
    let mut framer = Framer::new();
    let mut buf = vec![0u8; 70_000];
    loop {
        if shutdown.load(Ordering::SeqCst) {
            return Ok(End::Shutdown);
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(End::Closed),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        quickack(&stream);
        framer.push(buf.get(..n).unwrap_or(&[]));
        while let Some(p) = framer.next_payload() {
            let Some(msg) = Msg::from_payload(p) else {
                continue;
            };
            if let Some(reply) = handle(r, msg) {
                // A response that a vpcd frame cannot carry (over 65,535 bytes, e.g. an
                // extended Le of 65,536 with 2 status bytes) is answered 6F00 rather than
                // dropping the connection, which pcscd would report as card removal.
                let frame = match encode(&reply) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(error = %e, "response too long for vpcd; answered 6F00");
                        encode(&[0x6F, 0x00])?
                    }
                };
                stream.write_all(&frame)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec {
        events: Vec<String>,
    }
    impl Responder for Rec {
        fn power_off(&mut self) {
            self.events.push("off".into());
        }
        fn power_on(&mut self) {
            self.events.push("on".into());
        }
        fn reset(&mut self) {
            self.events.push("reset".into());
        }
        fn atr(&mut self) -> Vec<u8> {
            vec![0x3B; 40]
        }
        fn apdu(&mut self, apdu: &[u8]) -> Vec<u8> {
            self.events.push(hex::encode_upper(apdu));
            vec![0x90, 0x00]
        }
    }

    #[test]
    fn partial_reads() {
        let mut f = Framer::new();
        let whole = encode(&[0x00, 0xA4, 0x04, 0x00]).unwrap();
        for (i, b) in whole.iter().enumerate() {
            assert_eq!(f.next_payload(), None, "at byte {i}");
            f.push(&[*b]);
        }
        assert_eq!(f.next_payload(), Some(vec![0x00, 0xA4, 0x04, 0x00]));
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn several_in_one_segment() {
        let mut f = Framer::new();
        let mut seg = encode(&[0x01]).unwrap();
        seg.extend(encode(&[0x04]).unwrap());
        seg.extend(encode(&[0x80, 0x10, 0, 0]).unwrap());
        seg.extend(&[0x00]); // half of a next length
        f.push(&seg);
        assert_eq!(f.next_payload(), Some(vec![0x01]));
        assert_eq!(f.next_payload(), Some(vec![0x04]));
        assert_eq!(f.next_payload(), Some(vec![0x80, 0x10, 0, 0]));
        assert_eq!(f.next_payload(), None);
        assert_eq!(f.pending(), 1);
        f.push(&[0x01, 0x02]);
        assert_eq!(f.next_payload(), Some(vec![0x02]));
    }

    #[test]
    fn control_bytes() {
        let mut r = Rec::default();
        assert_eq!(handle(&mut r, Msg::from_payload(vec![0]).unwrap()), None);
        assert_eq!(handle(&mut r, Msg::from_payload(vec![1]).unwrap()), None);
        assert_eq!(handle(&mut r, Msg::from_payload(vec![2]).unwrap()), None);
        assert_eq!(
            handle(&mut r, Msg::from_payload(vec![4]).unwrap()).map(|a| a.len()),
            Some(MAX_ATR)
        );
        assert_eq!(handle(&mut r, Msg::from_payload(vec![9]).unwrap()), None);
        assert_eq!(Msg::from_payload(vec![]), None);
        assert_eq!(
            handle(&mut r, Msg::from_payload(vec![0, 0xB0, 0, 0]).unwrap()),
            Some(vec![0x90, 0x00])
        );
        assert_eq!(r.events, vec!["off", "on", "reset", "00B00000"]);
    }

    #[test]
    fn large_payloads() {
        let big = vec![7u8; MAX_PAYLOAD];
        let e = encode(&big).unwrap();
        assert_eq!(&e[..2], &[0xFF, 0xFF]);
        assert!(encode(&vec![0u8; MAX_PAYLOAD + 1]).is_err());
        let mut f = Framer::new();
        f.push(&e);
        assert_eq!(f.next_payload().map(|p| p.len()), Some(MAX_PAYLOAD));
    }

    #[test]
    fn stream_over_loopback() {
        use std::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = Rec::default();
            let end = serve_stream(s, &mut r, &stop2).unwrap();
            (end, r.events)
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Length and payload in two writes, as Debian's vpcd does.
        c.write_all(&[0x00]).unwrap();
        c.write_all(&[0x01, 0x01]).unwrap();
        let mut m = encode(&[0x04]).unwrap();
        m.extend(encode(&[0x80, 0x10, 0x00, 0x00]).unwrap());
        c.write_all(&m).unwrap();
        let mut got = vec![0u8; 2 + MAX_ATR + 4];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got[..2], &[0x00, 33]);
        assert_eq!(&got[2 + MAX_ATR..], &[0x00, 0x02, 0x90, 0x00]);
        drop(c);
        let (end, events) = h.join().unwrap();
        assert_eq!(end, End::Closed);
        // The first "on" is the power-on at connection (the card is in the reader), the
        // second is the driver's own power-on message.
        assert_eq!(events, vec!["on", "on", "80100000"]);
        stop.store(true, Ordering::SeqCst);
    }
}
