//! Opening `--card FILE` / `--reader NAME` targets: a card image run in this process, or a
//! card in a PC/SC reader (feature `pcsc`).

use crate::CliResult;
use std::path::{Path, PathBuf};
use tessera_host::transport::Transport;

/// Where a command's card is.
#[allow(clippy::large_enum_variant)] // the API keeps the card inline; one per process
pub enum Target {
    /// A card image file, run in-process.
    Image {
        card: tessera_os::Card,
        path: PathBuf,
        /// Held while the card is in memory: no other process saves this image meanwhile
        /// (`None` for a card built in memory).
        _lock: Option<tessera_os::ImageLock>,
    },
    /// A card in a PC/SC reader.
    #[cfg(feature = "pcsc")]
    Reader(tessera_host::transport::PcscTransport),
}

/// The `--card FILE` / `--reader NAME` options, for subcommands to flatten.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TargetArgs {
    /// Card image file (run in-process).
    #[arg(long, value_name = "FILE")]
    pub card: Option<PathBuf>,
    /// PC/SC reader name (exact, or a unique part of it).
    #[arg(long, value_name = "NAME")]
    pub reader: Option<String>,
}

impl TargetArgs {
    pub fn open(&self) -> CliResult<Target> {
        Target::open(self.card.as_deref(), self.reader.as_deref())
    }
}

/// Message when `--reader` is used in a build without PC/SC.
#[cfg_attr(feature = "pcsc", allow(dead_code))]
pub const NO_PCSC: &str = "built without PC/SC support; rebuild with --features pcsc";

impl Target {
    /// Exactly one of card/reader must be given. Opens the image with
    /// [`crate::applets::load_files`] and powers the card on.
    pub fn open(card: Option<&Path>, reader: Option<&str>) -> CliResult<Target> {
        match (card, reader) {
            (Some(_), Some(_)) => Err("give either --card FILE or --reader NAME, not both".into()),
            (None, None) => Err(
                "no card: give --card FILE (a card image) or --reader NAME (a PC/SC reader)".into(),
            ),
            (Some(path), None) => {
                // No lock file for an image that does not exist (bad input changes nothing).
                if !path.exists() {
                    return Err(
                        format!("cannot open card image {}: no such file", path.display()).into(),
                    );
                }
                // Lock before reading, so that the card in memory is the latest save.
                let lock = tessera_os::ImageLock::acquire(path)?;
                let mut card = tessera_os::Card::open_image(path, crate::applets::load_files())
                    .map_err(|e| format!("cannot open card image {}: {e}", path.display()))?;
                card.power_on();
                Ok(Target::Image {
                    card,
                    path: path.to_path_buf(),
                    _lock: Some(lock),
                })
            }
            (None, Some(name)) => open_reader(name),
        }
    }

    /// The transport to the card.
    pub fn transport(&mut self) -> &mut dyn Transport {
        match self {
            Target::Image { card, .. } => card,
            #[cfg(feature = "pcsc")]
            Target::Reader(r) => r,
        }
    }

    /// For images: save atomically ([`tessera_os::Card::save_image`]); readers: no-op.
    pub fn save(&mut self) -> CliResult {
        match self {
            Target::Image { card, path, .. } => card
                .save_image(&*path)
                .map_err(|e| format!("cannot save card image {}: {e}", path.display()).into()),
            #[cfg(feature = "pcsc")]
            Target::Reader(_) => Ok(()),
        }
    }

    /// The in-process card, if this is an image.
    #[allow(dead_code)] // API for the flow commands
    pub fn card_mut(&mut self) -> Option<&mut tessera_os::Card> {
        match self {
            Target::Image { card, .. } => Some(card),
            #[cfg(feature = "pcsc")]
            Target::Reader(_) => None,
        }
    }

    /// A short description for messages ("image cards/a.card", "reader Virtual PCD 00 00").
    pub fn describe(&self) -> String {
        match self {
            Target::Image { path, .. } => format!("image {}", path.display()),
            #[cfg(feature = "pcsc")]
            Target::Reader(r) => format!("reader {}", r.reader()),
        }
    }
}

#[cfg(feature = "pcsc")]
fn open_reader(name: &str) -> CliResult<Target> {
    Ok(Target::Reader(
        tessera_host::transport::PcscTransport::connect(name)?,
    ))
}

#[cfg(not(feature = "pcsc"))]
fn open_reader(_name: &str) -> CliResult<Target> {
    Err(NO_PCSC.into())
}
