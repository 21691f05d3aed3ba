//! Transports: how the host reaches a card.
//!
//! * [`Transport`] is one trait for every link: the in-process [`tessera_os::Card`], a
//!   PC/SC reader ([`PcscTransport`], feature `pcsc`), and anything a test wants to mock.
//! * [`Transport::transmit_raw`] is one exchange, bytes in and bytes out, nothing added.
//! * [`Transport::transmit`] is what applet clients use: command chaining for long data,
//!   61xx answered with GET RESPONSE, 6Cxx re-issued with the corrected Le.

use tessera_apdu::{ApduError, ClassByte, Command, Response, Sw};

/// GET RESPONSE instruction.
const INS_GET_RESPONSE: u8 = 0xC0;
/// Most GET RESPONSE / 6Cxx rounds one [`Transport::transmit`] performs before it gives up
/// on a card that keeps asking for more (65536 bytes in 256-byte blocks, plus slack).
const MAX_ROUNDS: usize = 300;
/// Largest response data one [`Transport::transmit`] assembles.
const MAX_RESPONSE: usize = 1 << 20;
/// Data block size of command chaining.
const CHAIN_BLOCK: usize = 255;

/// Errors of a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The card lost power / gave no answer: the host does not know whether the command
    /// was applied (flows run their recovery step).
    #[error("no response from the card (power lost or card removed)")]
    NoResponse,
    /// The link to the card broke during an exchange (a reader reports the card removed,
    /// reset or replaced, or its driver failed): like [`TransportError::NoResponse`], the
    /// host does not know whether the command was applied. The text names the reader and
    /// what it reported.
    #[error("the link to the card was lost ({0}); the command may or may not have run")]
    Lost(String),
    /// The card is not powered.
    #[error("card is not powered")]
    NotPowered,
    /// A command could not be encoded, or a response was malformed.
    #[error(transparent)]
    Apdu(#[from] ApduError),
    /// The PC/SC layer reported an error.
    #[error("PC/SC: {0}")]
    Pcsc(String),
    /// An I/O error (sockets, files).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The named reader does not exist.
    #[error("reader {0:?} not found; readers: {1}")]
    ReaderNotFound(String, String),
    /// The card broke the transmission protocol (endless 61xx, chaining refused, ...).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The transport cannot do this.
    #[error("not supported by this transport: {0}")]
    Unsupported(&'static str),
}

/// A link to one card.
pub trait Transport {
    /// One raw exchange: command bytes in, response bytes (data + SW) out. No 61xx/6Cxx
    /// handling.
    fn transmit_raw(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError>;

    /// Warm reset (power on first if off); returns the ATR.
    fn reset(&mut self) -> Result<Vec<u8>, TransportError>;

    /// The current ATR.
    fn atr(&mut self) -> Result<Vec<u8>, TransportError>;

    /// Cut the card's power. Transports that cannot (a shared reader) answer
    /// [`TransportError::Unsupported`]; [`Transport::reset`] powers the card on again.
    fn power_off(&mut self) -> Result<(), TransportError> {
        Err(TransportError::Unsupported("power off"))
    }

    /// Full exchange: encodes `cmd`; data over 255 bytes is sent with command chaining
    /// (CLA|0x10) in 255-byte blocks unless `cmd.extended` is set; follows 61xx with GET
    /// RESPONSE (same channel CLA, concatenating data), re-issues on 6Cxx with the
    /// corrected Le.
    fn transmit(&mut self, cmd: &Command) -> Result<Response, TransportError> {
        transmit_with(self, cmd)
    }
}

/// The body of [`Transport::transmit`], usable by transports that override it.
pub fn transmit_with<T: Transport + ?Sized>(
    t: &mut T,
    cmd: &Command,
) -> Result<Response, TransportError> {
    // Command chaining: all blocks but the last carry the chaining bit and no Le.
    let mut last = cmd.clone();
    if !cmd.extended && cmd.data.len() > CHAIN_BLOCK {
        let class = ClassByte::decode(cmd.cla).map_err(|sw| {
            TransportError::Protocol(format!("CLA {:02X} cannot be chained ({sw})", cmd.cla))
        })?;
        let blocks: Vec<&[u8]> = cmd.data.chunks(CHAIN_BLOCK).collect();
        let (tail, head) = match blocks.split_last() {
            Some(x) => x,
            None => return Err(TransportError::Protocol("empty chain".into())),
        };
        for block in head {
            let part = Command {
                cla: class.raw | 0x10,
                ins: cmd.ins,
                p1: cmd.p1,
                p2: cmd.p2,
                data: block.to_vec(),
                le: None,
                extended: false,
            };
            let r = Response::parse(&t.transmit_raw(&part.to_bytes()?)?)?;
            if r.sw != Sw::OK {
                // The card refused the chain (6884, 6883, 6700 ...): that is its answer.
                return Ok(r);
            }
        }
        last = Command {
            cla: class.raw & !0x10,
            ins: cmd.ins,
            p1: cmd.p1,
            p2: cmd.p2,
            data: tail.to_vec(),
            le: cmd.le.map(|l| l.min(256)),
            extended: false,
        };
    }

    let channel_cla = match ClassByte::decode(cmd.cla) {
        Ok(c) => ClassByte::encode(false, false, c.channel).unwrap_or(0),
        Err(_) => 0,
    };
    let mut data = Vec::new();
    let mut current = last;
    let mut reissued = false;
    for _ in 0..MAX_ROUNDS {
        let r = Response::parse(&t.transmit_raw(&current.to_bytes()?)?)?;
        match r.sw.sw1() {
            0x61 => {
                data.extend_from_slice(&r.data);
                if data.len() > MAX_RESPONSE {
                    return Err(TransportError::Protocol(format!(
                        "response exceeds {MAX_RESPONSE} bytes of GET RESPONSE data"
                    )));
                }
                let n = match r.sw.sw2() {
                    0 => 256,
                    n => n as usize,
                };
                current = Command::new(channel_cla, INS_GET_RESPONSE, 0, 0).with_le(n);
            }
            0x6C if !reissued || current.ins == INS_GET_RESPONSE => {
                // Re-issue once with the exact length the card announced.
                reissued = true;
                data.extend_from_slice(&r.data);
                let n = match r.sw.sw2() {
                    0 => 256,
                    n => n as usize,
                };
                current.le = Some(n);
                current.extended = current.extended && n > 256;
            }
            _ => {
                data.extend_from_slice(&r.data);
                return Ok(Response { data, sw: r.sw });
            }
        }
    }
    Err(TransportError::Protocol(format!(
        "card still asked for more after {MAX_ROUNDS} GET RESPONSE / 6Cxx rounds"
    )))
}

impl Transport for tessera_os::Card {
    fn transmit_raw(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        tessera_os::Card::transmit(self, apdu).map_err(card_err)
    }
    fn reset(&mut self) -> Result<Vec<u8>, TransportError> {
        Ok(tessera_os::Card::reset(self))
    }
    fn atr(&mut self) -> Result<Vec<u8>, TransportError> {
        Ok(tessera_os::Card::atr(self))
    }
    fn power_off(&mut self) -> Result<(), TransportError> {
        tessera_os::Card::power_off(self);
        Ok(())
    }
}

fn card_err(e: tessera_os::CardError) -> TransportError {
    match e {
        tessera_os::CardError::PowerLost => TransportError::NoResponse,
        tessera_os::CardError::NotPowered => TransportError::NotPowered,
    }
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn transmit_raw(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        (**self).transmit_raw(apdu)
    }
    fn reset(&mut self) -> Result<Vec<u8>, TransportError> {
        (**self).reset()
    }
    fn atr(&mut self) -> Result<Vec<u8>, TransportError> {
        (**self).atr()
    }
    fn power_off(&mut self) -> Result<(), TransportError> {
        (**self).power_off()
    }
    fn transmit(&mut self, cmd: &Command) -> Result<Response, TransportError> {
        (**self).transmit(cmd)
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn transmit_raw(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        (**self).transmit_raw(apdu)
    }
    fn reset(&mut self) -> Result<Vec<u8>, TransportError> {
        (**self).reset()
    }
    fn atr(&mut self) -> Result<Vec<u8>, TransportError> {
        (**self).atr()
    }
    fn power_off(&mut self) -> Result<(), TransportError> {
        (**self).power_off()
    }
    fn transmit(&mut self, cmd: &Command) -> Result<Response, TransportError> {
        (**self).transmit(cmd)
    }
}

#[cfg(feature = "pcsc")]
pub use pcsc_impl::PcscTransport;

#[cfg(feature = "pcsc")]
mod pcsc_impl {
    use super::{Transport, TransportError};
    use std::ffi::CString;

    /// A card in a PC/SC reader, through the system's pcsc-lite (or WinSCard).
    pub struct PcscTransport {
        // Field order: the card handle is released before the context.
        card: pcsc::Card,
        _ctx: pcsc::Context,
        reader: String,
        buf: Vec<u8>,
    }

    /// Map a PC/SC error on an open connection. Errors that mean the card or the reader went
    /// away mid-exchange are [`TransportError::Lost`] (outcome unknown, so flows recover);
    /// pcscd answers `SCARD_E_NOT_TRANSACTED` when the driver could not complete the
    /// exchange, e.g. a virtual card replaced between connect and transmit.
    fn pcsc_err(reader: &str, e: pcsc::Error) -> TransportError {
        match e {
            pcsc::Error::RemovedCard
            | pcsc::Error::NoSmartcard
            | pcsc::Error::UnresponsiveCard
            | pcsc::Error::UnpoweredCard
            | pcsc::Error::ResetCard
            | pcsc::Error::NotTransacted
            | pcsc::Error::CommError
            | pcsc::Error::ReaderUnavailable
            | pcsc::Error::UnknownReader
            | pcsc::Error::Timeout
            | pcsc::Error::NoService
            | pcsc::Error::ServiceStopped => TransportError::Lost(format!(
                "reader {reader:?}: {e}; if the card was just inserted or replaced, run again"
            )),
            other => TransportError::Pcsc(format!("reader {reader:?}: {other}")),
        }
    }

    impl PcscTransport {
        /// Names of the PC/SC readers present.
        pub fn list_readers() -> Result<Vec<String>, TransportError> {
            let ctx = pcsc::Context::establish(pcsc::Scope::User).map_err(|e| {
                TransportError::Pcsc(format!(
                    "cannot reach the PC/SC service (is pcscd running?): {e}"
                ))
            })?;
            list(&ctx)
        }

        /// Connect (shared, T=0 or T=1) to the card in the reader named `reader`: the exact
        /// name, or else the one reader whose name contains it.
        pub fn connect(reader: &str) -> Result<PcscTransport, TransportError> {
            let ctx = pcsc::Context::establish(pcsc::Scope::User).map_err(|e| {
                TransportError::Pcsc(format!(
                    "cannot reach the PC/SC service (is pcscd running?): {e}"
                ))
            })?;
            let names = list(&ctx)?;
            let chosen = if names.iter().any(|n| n == reader) {
                reader.to_string()
            } else {
                let matching: Vec<&String> = names.iter().filter(|n| n.contains(reader)).collect();
                match matching.as_slice() {
                    [one] => (*one).clone(),
                    _ => {
                        return Err(TransportError::ReaderNotFound(
                            reader.into(),
                            readers_text(&names),
                        ));
                    }
                }
            };
            let cname = CString::new(chosen.clone())
                .map_err(|_| TransportError::ReaderNotFound(reader.into(), readers_text(&names)))?;
            let card = ctx
                .connect(&cname, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
                .map_err(|e| match e {
                    pcsc::Error::NoSmartcard | pcsc::Error::RemovedCard => {
                        TransportError::Pcsc(format!("no card in reader {chosen:?}"))
                    }
                    other => TransportError::Pcsc(format!("connect to {chosen:?}: {other}")),
                })?;
            Ok(PcscTransport {
                card,
                _ctx: ctx,
                reader: chosen,
                buf: vec![0; pcsc::MAX_BUFFER_SIZE_EXTENDED],
            })
        }

        /// The reader's name.
        pub fn reader(&self) -> &str {
            &self.reader
        }

        /// SCardReconnect: `cold` unpowers the card (power cycle), otherwise a warm reset.
        pub fn reconnect(&mut self, cold: bool) -> Result<Vec<u8>, TransportError> {
            let disposition = if cold {
                pcsc::Disposition::UnpowerCard
            } else {
                pcsc::Disposition::ResetCard
            };
            self.card
                .reconnect(pcsc::ShareMode::Shared, pcsc::Protocols::ANY, disposition)
                .map_err(|e| pcsc_err(&self.reader, e))?;
            self.atr()
        }
    }

    fn readers_text(names: &[String]) -> String {
        if names.is_empty() {
            "(none)".into()
        } else {
            names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    fn list(ctx: &pcsc::Context) -> Result<Vec<String>, TransportError> {
        match ctx.list_readers_owned() {
            Ok(v) => Ok(v
                .into_iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect()),
            Err(pcsc::Error::NoReadersAvailable) => Ok(Vec::new()),
            Err(e) => Err(TransportError::Pcsc(format!("list readers: {e}"))),
        }
    }

    impl Transport for PcscTransport {
        fn transmit_raw(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
            let r = self
                .card
                .transmit(apdu, &mut self.buf)
                .map_err(|e| pcsc_err(&self.reader, e))?;
            Ok(r.to_vec())
        }
        fn reset(&mut self) -> Result<Vec<u8>, TransportError> {
            self.reconnect(false)
        }
        fn atr(&mut self) -> Result<Vec<u8>, TransportError> {
            // SCardStatus: drivers need not support the ATR attribute (vpcd does not).
            let status = self
                .card
                .status2_owned()
                .map_err(|e| pcsc_err(&self.reader, e))?;
            Ok(status.atr().to_vec())
        }
        fn power_off(&mut self) -> Result<(), TransportError> {
            // PC/SC has no "stay off": unpower and let the reader power the card on again.
            self.reconnect(true).map(|_| ())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_broken_link_is_lost_and_names_the_reader() {
            for e in [
                pcsc::Error::NotTransacted,
                pcsc::Error::RemovedCard,
                pcsc::Error::ResetCard,
                pcsc::Error::CommError,
                pcsc::Error::ServiceStopped,
            ] {
                match pcsc_err("R 00", e) {
                    TransportError::Lost(t) => assert!(t.contains("\"R 00\""), "{t}"),
                    other => panic!("{e:?} -> {other:?}"),
                }
            }
        }

        #[test]
        fn a_caller_error_is_not_an_unknown_outcome() {
            match pcsc_err("R 00", pcsc::Error::InsufficientBuffer) {
                TransportError::Pcsc(t) => assert!(t.contains("\"R 00\""), "{t}"),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mock card that answers from a queue and records what it was sent.
    struct Mock {
        sent: Vec<Vec<u8>>,
        answers: Vec<Vec<u8>>,
    }
    impl Transport for Mock {
        fn transmit_raw(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
            self.sent.push(apdu.to_vec());
            if self.answers.is_empty() {
                return Err(TransportError::NoResponse);
            }
            Ok(self.answers.remove(0))
        }
        fn reset(&mut self) -> Result<Vec<u8>, TransportError> {
            Ok(vec![0x3B, 0x00])
        }
        fn atr(&mut self) -> Result<Vec<u8>, TransportError> {
            Ok(vec![0x3B, 0x00])
        }
    }

    #[test]
    fn get_response_uses_channel_cla() {
        let mut m = Mock {
            sent: vec![],
            answers: vec![vec![0x61, 0x02], vec![1, 2, 0x90, 0x00]],
        };
        let r = m.transmit(&Command::new(0x83, 0x10, 0, 0)).unwrap();
        assert_eq!(r.data, vec![1, 2]);
        assert_eq!(m.sent[1], vec![0x03, 0xC0, 0, 0, 2]);
    }

    #[test]
    fn endless_61xx_is_an_error() {
        let mut m = Mock {
            sent: vec![],
            answers: vec![vec![0x61, 0x01]; MAX_ROUNDS + 5],
        };
        assert!(matches!(
            m.transmit(&Command::new(0, 0xB0, 0, 0)),
            Err(TransportError::Protocol(_))
        ));
    }

    #[test]
    fn chain_refusal_is_returned() {
        let mut m = Mock {
            sent: vec![],
            answers: vec![vec![0x68, 0x84]],
        };
        let mut cmd = Command::new(0x80, 0x10, 0, 0).with_data(vec![0; 300]);
        cmd.extended = false;
        assert_eq!(m.transmit(&cmd).unwrap().sw, Sw(0x6884));
        assert_eq!(m.sent.len(), 1);
        assert_eq!(m.sent[0][0], 0x90);
    }
}
