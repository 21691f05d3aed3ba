//! `tessera serve`: card images as virtual cards in pcscd, through vsmartcard's vpcd.
//!
//! Each card runs on its own thread and slot. After every command (or power event) that
//! wrote card memory the image is saved (atomic rename, fsync) before the response goes
//! out, so a crash never loses a change the terminal saw acknowledged. Ctrl-C and SIGTERM
//! finish the command in progress and exit.

use crate::vpcd::{self, End, Responder};
use crate::{CliResult, Global};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tessera_os::Card;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Card image to serve; repeat for several cards on consecutive slots.
    #[arg(long, value_name = "FILE")]
    pub card: Vec<PathBuf>,
    /// vpcd slot of the first card (port 35963 + slot).
    #[arg(long, default_value_t = 0)]
    pub slot: u16,
    /// TCP port of the first card (overrides --slot); further cards use the next ports.
    #[arg(long)]
    pub port: Option<u16>,
    /// Host of the vpcd driver (or the address to listen on with --listen).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Reverse mode: listen and let vpcd connect to us (port 0 picks a free port; the
    /// address is printed as "listening on ADDR").
    #[arg(long)]
    pub listen: bool,
    /// Serve no card: answer 9000 to every APDU, to measure the pcscd+vpcd floor.
    #[arg(long)]
    pub echo_floor: bool,
    /// Exit after the first connection ends (tests).
    #[arg(long, hide = true)]
    pub once: bool,
}

/// A card image behind a vpcd slot.
struct CardSlot {
    card: Card,
    path: PathBuf,
    /// Held while serving: no other process saves this image meanwhile.
    _lock: tessera_os::ImageLock,
    written: u64,
    /// Set after a failed save: the card answers 6F00 until serve restarts.
    mute: bool,
}

impl CardSlot {
    /// Save the image if card memory changed since the last save. `Err` when saving failed.
    fn persist(&mut self) -> Result<(), ()> {
        let now = self.card.nvm_bytes_written();
        if now == self.written {
            return Ok(());
        }
        match self.card.save_image(&self.path) {
            Ok(()) => {
                self.written = now;
                Ok(())
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot save the card image");
                eprintln!("tessera serve: cannot save {}: {e}", self.path.display());
                self.fall_back_to_saved();
                Err(())
            }
        }
    }
}

impl CardSlot {
    /// After a failed save the card in memory is ahead of its image: a restart would lose
    /// what the card has already committed (and perhaps proved to a SAM), and a PIN try
    /// counter decremented in memory only could be undone. The card therefore goes mute
    /// (powered off; every APDU and power-on answers 6F00) until `tessera serve` is
    /// restarted, which reads the last saved image: memory and disk agree again, and the
    /// host's recovery step (GET TRANSACTION STATUS) sees what the restarted card has.
    fn fall_back_to_saved(&mut self) {
        self.card.power_off();
        self.mute = true;
        eprintln!(
            "tessera serve: {} is mute until serve restarts (last saved state kept on disk)",
            self.path.display()
        );
    }
}

impl Responder for CardSlot {
    fn power_off(&mut self) {
        self.card.power_off();
        tracing::info!(path = %self.path.display(), "power off");
    }
    fn power_on(&mut self) {
        if self.mute {
            return;
        }
        self.card.power_on();
        let _ = self.persist();
        tracing::info!(path = %self.path.display(), "power on");
    }
    fn reset(&mut self) {
        if self.mute {
            return;
        }
        self.card.reset();
        let _ = self.persist();
        tracing::info!(path = %self.path.display(), "reset");
    }
    fn atr(&mut self) -> Vec<u8> {
        self.card.atr()
    }
    fn apdu(&mut self, apdu: &[u8]) -> Vec<u8> {
        if self.mute {
            return vec![0x6F, 0x00];
        }
        let r = match self.card.process(apdu) {
            Ok(r) => r.to_bytes(),
            Err(e) => {
                tracing::warn!(error = %e, "card error answered 6F00");
                vec![0x6F, 0x00]
            }
        };
        match self.persist() {
            Ok(()) => r,
            Err(()) => vec![0x6F, 0x00],
        }
    }
}

/// The floor: no card, 9000 to everything.
struct EchoFloor;

impl Responder for EchoFloor {
    fn power_off(&mut self) {}
    fn power_on(&mut self) {}
    fn reset(&mut self) {}
    fn atr(&mut self) -> Vec<u8> {
        tessera_os::atr::build(&tessera_os::atr::DEFAULT_HISTORICAL)
    }
    fn apdu(&mut self, _apdu: &[u8]) -> Vec<u8> {
        vec![0x90, 0x00]
    }
}

fn resolve(host: &str, port: u16) -> CliResult<SocketAddr> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}:{port} resolves to no address").into())
}

fn sleep_unless(shutdown: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !shutdown.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connect mode: keep (re)connecting to the driver; serve each connection.
fn serve_connect(
    addr: SocketAddr,
    label: &str,
    r: &mut dyn Responder,
    shutdown: &AtomicBool,
    once: bool,
) {
    let mut waiting_logged = false;
    while !shutdown.load(Ordering::SeqCst) {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => {
                eprintln!("{label}: connected to vpcd at {addr}");
                waiting_logged = false;
                let end = vpcd::serve_stream(s, r, shutdown);
                r.disconnected();
                match end {
                    Ok(End::Shutdown) => break,
                    Ok(End::Closed) => {
                        eprintln!("{label}: vpcd closed the connection; reconnecting")
                    }
                    Err(e) => eprintln!("{label}: connection error: {e}; reconnecting"),
                }
                if once {
                    break;
                }
                sleep_unless(shutdown, Duration::from_millis(200));
            }
            Err(e) => {
                if !waiting_logged {
                    eprintln!(
                        "{label}: waiting for vpcd at {addr} ({e}); is pcscd running with vsmartcard-vpcd?"
                    );
                    waiting_logged = true;
                }
                sleep_unless(shutdown, Duration::from_millis(500));
            }
        }
    }
}

/// Listen mode: vpcd connects to us.
fn serve_listen(
    listener: TcpListener,
    label: &str,
    r: &mut dyn Responder,
    shutdown: &AtomicBool,
    once: bool,
) {
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("{label}: {e}");
        return;
    }
    while !shutdown.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, peer)) => {
                if let Err(e) = s.set_nonblocking(false) {
                    eprintln!("{label}: {e}");
                    continue;
                }
                eprintln!("{label}: vpcd connected from {peer}");
                let end = vpcd::serve_stream(s, r, shutdown);
                r.disconnected();
                match end {
                    Ok(End::Shutdown) => break,
                    Ok(End::Closed) => eprintln!("{label}: vpcd disconnected"),
                    Err(e) => eprintln!("{label}: connection error: {e}"),
                }
                if once {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                eprintln!("{label}: accept: {e}");
                sleep_unless(shutdown, Duration::from_millis(200));
            }
        }
    }
}

pub fn run(a: ServeArgs, g: Global) -> CliResult {
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while the first is being handled exits at once.
        signal_hook::flag::register_conditional_shutdown(sig, 1, shutdown.clone())?;
        signal_hook::flag::register(sig, shutdown.clone())?;
    }

    let mut responders: Vec<(String, Box<dyn Responder + Send>)> = Vec::new();
    if a.echo_floor {
        if !a.card.is_empty() {
            return Err("--echo-floor serves no card; drop --card".into());
        }
        responders.push(("echo-floor".into(), Box::new(EchoFloor)));
    } else {
        if a.card.is_empty() {
            return Err("give --card FILE (a card image; create one with `tessera image new`) or --echo-floor".into());
        }
        for path in &a.card {
            let lock = tessera_os::ImageLock::acquire(path)?;
            let card = Card::open_image(path, crate::applets::load_files())
                .map_err(|e| format!("cannot open card image {}: {e}", path.display()))?;
            let written = card.nvm_bytes_written();
            responders.push((
                path.display().to_string(),
                Box::new(CardSlot {
                    card,
                    path: path.clone(),
                    _lock: lock,
                    written,
                    mute: false,
                }),
            ));
        }
    }

    let base = match a.port {
        Some(p) => p,
        None => vpcd::DEFAULT_PORT
            .checked_add(a.slot)
            .ok_or("--slot is too large")?,
    };
    let mut handles = Vec::new();
    let mut announced = Vec::new();
    for (i, (name, mut r)) in responders.into_iter().enumerate() {
        let i16 = u16::try_from(i).map_err(|_| "too many cards")?;
        let port = if base == 0 {
            0
        } else {
            base.checked_add(i16).ok_or("port out of range")?
        };
        let addr = resolve(&a.host, port)?;
        let atr = hex::encode_upper(r.atr());
        let label = format!("slot {} [{name}]", a.slot as usize + i);
        let stop = shutdown.clone();
        let once = a.once;
        if a.listen {
            let listener =
                TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let local = listener.local_addr()?;
            announced
                .push(serde_json::json!({ "card": name, "listen": local.to_string(), "atr": atr }));
            if !g.json {
                println!("listening on {local} for {name} (ATR {atr})");
            }
            handles.push(std::thread::spawn(move || {
                serve_listen(listener, &label, r.as_mut(), &stop, once)
            }));
        } else {
            announced
                .push(serde_json::json!({ "card": name, "vpcd": addr.to_string(), "atr": atr }));
            if !g.json {
                println!("serving {name} to vpcd at {addr} (ATR {atr})");
            }
            handles.push(std::thread::spawn(move || {
                serve_connect(addr, &label, r.as_mut(), &stop, once)
            }));
        }
    }
    if g.json {
        println!("{}", serde_json::json!({ "serving": announced }));
    }
    let _ = std::io::stdout().flush();
    for h in handles {
        if h.join().is_err() {
            return Err("a slot thread panicked".into());
        }
    }
    if shutdown.load(Ordering::SeqCst) {
        eprintln!("tessera serve: stopped; card images are saved");
    }
    Ok(())
}
