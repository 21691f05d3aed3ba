//! Card images: a whole card (profile, OS state, instances and their memory) in one file.
//!
//! Layout (all integers big-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `TSRACARD` |
//! | 8 | 2 | format version (1) |
//! | 10 | 2 | flags (0) |
//! | 12 | 4 | profile length P |
//! | 16 | P | profile ([`CardProfile`], postcard) |
//! | 16+P | 8 | NVM length N |
//! | 24+P | N | NVM: the store log compacted to one batch |
//! | 24+P+N | 4 | CRC-32 (IEEE) of every preceding byte |
//!
//! Saving writes a temporary file beside the target, syncs it, renames it over the target
//! and syncs the directory: a cut at any byte leaves the old image or the new one. An
//! existing file at the target that is not a Tessera image is never overwritten.
//!
//! One process at a time: a program that keeps a card in memory and saves it back (a served
//! card, a flow on an image) holds an [`ImageLock`], an exclusive advisory lock on a file
//! `<image>.lock` beside the image. The image itself cannot carry the lock, since each save
//! replaces it with a new file. Without the lock, two processes working on one image would
//! each save their own copy of the card and the last save would erase the other's
//! committed value changes.

use crate::applet::LoadFile;
use crate::card::{Card, CardProfile};
use crate::store::Store;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"TSRACARD";
pub const VERSION: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a Tessera card image (bad magic)")]
    NotAnImage,
    #[error("card image format version {0} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion(u16),
    #[error("card image flags {0:04X} are not supported (this build knows none)")]
    UnsupportedFlags(u16),
    #[error("card image is damaged: {0}")]
    Damaged(&'static str),
    #[error("card image checksum mismatch: the file is damaged")]
    Checksum,
    #[error("card image names load files this program does not provide: {0}")]
    MissingLoadFiles(String),
    #[error(
        "refusing to overwrite {0}: it exists and is not an intact Tessera card image of a supported version"
    )]
    WouldOverwrite(PathBuf),
    #[error("power is on with a command in progress")]
    Busy,
    #[error(
        "card image {image} is in use by another process{holder} (lock file {lock}); stop that process first"
    )]
    Locked {
        image: PathBuf,
        lock: PathBuf,
        /// " (pid N)" when the lock file names its holder, else empty.
        holder: String,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Serialize a card to image bytes.
pub fn to_bytes(card: &Card) -> Vec<u8> {
    let profile = postcard::to_allocvec(card.profile()).unwrap_or_default();
    let nvm = card.store().snapshot_log();
    let mut out = Vec::with_capacity(28 + profile.len() + nvm.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(profile.len() as u32).to_be_bytes());
    out.extend_from_slice(&profile);
    out.extend_from_slice(&(nvm.len() as u64).to_be_bytes());
    out.extend_from_slice(&nvm);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn field<'a>(b: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], ImageError> {
    let end = at
        .checked_add(n)
        .ok_or(ImageError::Damaged("length overflow"))?;
    let s = b.get(*at..end).ok_or(ImageError::Damaged("truncated"))?;
    *at = end;
    Ok(s)
}

/// Parse image bytes into a card (powered off).
pub fn from_bytes(bytes: &[u8], load_files: Vec<LoadFile>) -> Result<Card, ImageError> {
    let (profile, store) = parse_frame(bytes)?;
    let card = Card::from_parts(profile, load_files, store);
    let missing = card.missing_load_files();
    if !missing.is_empty() {
        return Err(ImageError::MissingLoadFiles(missing.join(", ")));
    }
    Ok(card)
}

fn parse_frame(bytes: &[u8]) -> Result<(CardProfile, Store), ImageError> {
    if bytes.len() < MAGIC.len() {
        // A non-empty prefix of the magic is an image cut short, not a foreign file.
        return Err(if !bytes.is_empty() && MAGIC.starts_with(bytes) {
            ImageError::Damaged("truncated")
        } else {
            ImageError::NotAnImage
        });
    }
    if bytes.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(ImageError::NotAnImage);
    }
    let mut at = 8;
    let version = u16::from_be_bytes(
        field(bytes, &mut at, 2)?
            .try_into()
            .map_err(|_| ImageError::Damaged("version"))?,
    );
    if version != VERSION {
        return Err(ImageError::UnsupportedVersion(version));
    }
    if bytes.len() < 28 {
        return Err(ImageError::Damaged("truncated"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_be_bytes(crc.try_into().map_err(|_| ImageError::Damaged("crc"))?);
    if crc32fast::hash(body) != crc {
        return Err(ImageError::Checksum);
    }
    let flags = field(body, &mut at, 2)?;
    // No flag is defined in version 1: a set one means a writer this build does not know
    // (its image may not mean what this reader would make of it).
    if flags != [0, 0] {
        return Err(ImageError::UnsupportedFlags(u16::from_be_bytes(
            flags.try_into().map_err(|_| ImageError::Damaged("flags"))?,
        )));
    }
    let plen = u32::from_be_bytes(
        field(body, &mut at, 4)?
            .try_into()
            .map_err(|_| ImageError::Damaged("profile length"))?,
    ) as usize;
    let profile: CardProfile = postcard::from_bytes(field(body, &mut at, plen)?)
        .map_err(|_| ImageError::Damaged("profile"))?;
    let nlen = u64::from_be_bytes(
        field(body, &mut at, 8)?
            .try_into()
            .map_err(|_| ImageError::Damaged("nvm length"))?,
    );
    let nlen = usize::try_from(nlen).map_err(|_| ImageError::Damaged("nvm length"))?;
    let nvm = field(body, &mut at, nlen)?.to_vec();
    if at != body.len() {
        return Err(ImageError::Damaged("trailing bytes"));
    }
    if !crate::store::replays_fully(&nvm) {
        return Err(ImageError::Damaged("memory log does not replay"));
    }
    let store = Store::from_log(nvm, profile.memory_quota);
    Ok((profile, store))
}

/// Check the frame of image bytes (magic, version, checksum, field lengths, memory log)
/// without building a card. This is what `save` requires of a file it replaces.
pub fn validate(bytes: &[u8]) -> Result<(), ImageError> {
    parse_frame(bytes).map(|_| ())
}

/// Whether the file at `path` is an intact image that may be replaced.
fn is_image_file(path: &Path) -> Result<bool, ImageError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    Ok(validate(&bytes).is_ok())
}

static SAVE_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Save crash-safely. `cut_after` (tests) stops writing the temporary file after that many
/// bytes, as a crash would, and leaves the target untouched.
pub(crate) fn save(card: &Card, path: &Path, cut_after: Option<usize>) -> Result<(), ImageError> {
    if path.exists() && !is_image_file(path)? {
        return Err(ImageError::WouldOverwrite(path.to_path_buf()));
    }
    let bytes = to_bytes(card);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "card".into());
    // Unique per process and per save, so concurrent saves never share a temporary file.
    let seq = SAVE_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{seq}", std::process::id()));
    if let Some(k) = cut_after {
        // A crash after k bytes of the temporary file: the target is never touched.
        let mut f = create_private(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes.get(..k.min(bytes.len())).unwrap_or(&[]))
            .map_err(io(&tmp))?;
        return Err(ImageError::Io {
            path: tmp,
            source: std::io::Error::other("simulated crash while saving"),
        });
    }
    let written = (|| -> std::io::Result<()> {
        let mut f = create_private(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(ImageError::Io { path: tmp, source });
    }
    if let Err(source) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(ImageError::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Create a file readable and writable by its owner only (0600 on Unix). A card image is
/// the chip's memory, keys included: in emulation the file is the tamper boundary.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Open an image file.
pub fn open(path: &Path, load_files: Vec<LoadFile>) -> Result<Card, ImageError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    from_bytes(&bytes, load_files)
}

impl Card {
    /// The card as image bytes.
    pub fn to_image_bytes(&self) -> Vec<u8> {
        to_bytes(self)
    }

    /// A card from image bytes, with the load files this program provides.
    pub fn from_image_bytes(bytes: &[u8], load_files: Vec<LoadFile>) -> Result<Card, ImageError> {
        from_bytes(bytes, load_files)
    }

    /// Save to a file, crash-safely (see the module documentation).
    pub fn save_image(&self, path: impl AsRef<Path>) -> Result<(), ImageError> {
        save(self, path.as_ref(), None)
    }

    #[doc(hidden)]
    pub fn save_image_cut(
        &self,
        path: impl AsRef<Path>,
        cut_after: usize,
    ) -> Result<(), ImageError> {
        save(self, path.as_ref(), Some(cut_after))
    }

    /// Open an image file.
    pub fn open_image(
        path: impl AsRef<Path>,
        load_files: Vec<LoadFile>,
    ) -> Result<Card, ImageError> {
        open(path.as_ref(), load_files)
    }
}

/// An exclusive lock on a card image, held for as long as this value lives (see the module
/// documentation). The lock is advisory (`flock` on Unix, `LockFileEx` on Windows): every
/// Tessera tool takes it; other programs that write images directly do not.
#[derive(Debug)]
pub struct ImageLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl ImageLock {
    /// The lock file of `image`: `<image>.lock` in the same directory.
    pub fn lock_path(image: &Path) -> PathBuf {
        let mut name = image
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".lock");
        image.with_file_name(name)
    }

    /// Take the lock of `image`, without waiting: [`ImageError::Locked`] when another
    /// process (or another lock in this one) holds it. The lock file is created when
    /// missing and left in place afterwards (removing it would race with a new holder); it
    /// holds the holder's process ID, for the error message.
    pub fn acquire(image: &Path) -> Result<ImageLock, ImageError> {
        let path = Self::lock_path(image);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok())
                    .map(|pid| format!(" (pid {pid})"))
                    .unwrap_or_default();
                return Err(ImageError::Locked {
                    image: image.to_path_buf(),
                    lock: path,
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(ImageError::Io { path, source });
            }
        }
        // Best effort: the PID only improves the message of a later refusal.
        let _ = file.set_len(0);
        let _ = write!(file, "{}", std::process::id());
        let _ = file.flush();
        Ok(ImageLock { _file: file, path })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
