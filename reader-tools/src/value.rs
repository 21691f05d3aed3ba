//! Value commands: `scheme init`, `card issue`, `sam issue|show|journal`, `load`, `pay`,
//! `purse show|log`, and `demo`. Cards and SAMs are image files (or readers), saved
//! atomically after every flow. Amounts are in minor units. See docs/cli.md.

use crate::target::{Target, TargetArgs};
use crate::{CliResult, Global};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tessera_host::clients::{PurseClient, SamClient};
use tessera_host::flows::{self, FlowError, FlowOptions, LoadRequest, PayRequest, kit};
use tessera_host::transport::Transport;
use tessera_purse::wire::{self as pw, LogRecord, PurseData};
use tessera_sam::wire::{self as sw_, JournalBatch, JournalEntry, SamData};

/// File names inside a scheme directory.
const SCHEME_FILE: &str = "scheme.json";
const ISSUER_SAM_FILE: &str = "issuer-sam.card";
const ROOT_CERT_FILE: &str = "root-ca.der";
const ROOT_KEY_FILE: &str = "root-ca.key";
const ISSUER_CERT_FILE: &str = "issuer-sam-perso.der";
/// The chip manufacturer CA (certifies chips' attestation keys at the factory; the issuer
/// SAM trusts its certificate). A deployment keeps it at the chip factory, offline from the
/// issuance workstation; the demo scheme keeps it here.
const MANUFACTURER_KEY_FILE: &str = "manufacturer-ca.key";
const MANUFACTURER_CERT_FILE: &str = "manufacturer-ca.crt";
const ISSUER_ATTESTATION_FILE: &str = "issuer-sam-attestation.der";
const SETTLEMENT_DIR: &str = "settlement";

#[derive(clap::Subcommand)]
pub enum ValueCmd {
    /// Payment scheme set-up (root CA, issuer SAM).
    #[command(subcommand)]
    Scheme(SchemeCmd),
    /// Purse cards.
    #[command(subcommand)]
    Card(CardCmd),
    /// SAMs: issue, show, journal, settlement.
    #[command(subcommand)]
    Sam(SamCmd),
    /// Load value into a purse through an issuer SAM (default: the scheme's image).
    Load(LoadArgs),
    /// Pay from a purse at a terminal SAM.
    Pay(PayArgs),
    /// Purse views: data and balance, transaction log.
    #[command(subcommand)]
    Purse(PurseCmd),
    /// End-to-end demo: a scheme, two cards, a terminal, a load, payments, logs and settlement.
    Demo(DemoArgs),
}

#[derive(clap::Subcommand)]
pub enum SchemeCmd {
    /// Create a scheme in DIR: root CA (RSA-2048, self-signed X.509), issuer SAM image with
    /// master keys generated inside it, scheme.json.
    Init(SchemeInitArgs),
}

#[derive(clap::Args)]
pub struct SchemeInitArgs {
    /// Scheme directory (created; must not hold a scheme yet).
    pub dir: PathBuf,
    /// ISO 4217 numeric currency code (1-999).
    #[arg(long, default_value_t = 978)]
    pub currency: u16,
    /// Unlock PIN of the issuer SAM (default: random, stored in scheme.json).
    #[arg(long)]
    pub sam_pin: Option<String>,
    /// The issuer SAM's ceiling per load, in minor units (0: none).
    #[arg(long, default_value_t = 0)]
    pub max_per_load: u32,
    /// The issuer SAM's ceiling of loads per day, in minor units (0: none).
    #[arg(long, default_value_t = 0)]
    pub max_per_day: u32,
}

#[derive(clap::Subcommand)]
pub enum CardCmd {
    /// Create a purse card image personalised through the scheme's issuer SAM.
    Issue(CardIssueArgs),
}

#[derive(clap::Args)]
pub struct CardIssueArgs {
    #[arg(long, value_name = "DIR")]
    pub scheme: PathBuf,
    /// Card image to create.
    #[arg(long, value_name = "CARD")]
    pub out: PathBuf,
    /// Cardholder PIN (none by default).
    #[arg(long)]
    pub pin: Option<String>,
    /// Card ID in hex (default: the scheme's next serial).
    #[arg(long, value_name = "HEX")]
    pub card_id: Option<String>,
    /// Maximum balance in minor units.
    #[arg(long, default_value_t = 100_000)]
    pub max_balance: u32,
    /// Payments above this need the PIN (default: 2000 with a PIN, never without).
    #[arg(long)]
    pub pin_threshold: Option<u32>,
    /// Number of log records the purse keeps (1-255).
    #[arg(long, default_value_t = 32)]
    pub log_size: u8,
    /// Issuer SAM unlock PIN (default: the one in scheme.json).
    #[arg(long)]
    pub sam_pin: Option<String>,
    /// Overwrite an existing image.
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Subcommand)]
pub enum SamCmd {
    /// Create a terminal SAM image personalised through the scheme's issuer SAM.
    Issue(SamIssueArgs),
    /// Show a SAM's data (no PIN needed).
    Show(SamShowArgs),
    /// Show (export) the SAM journal; optionally write it to a file and settle it.
    Journal(SamJournalArgs),
    /// Check a SAM's settlement records against the issuer SAM's signed statement.
    Reconcile(SamReconcileArgs),
    /// Resolve a PENDING journal entry with its purse (the flows' recovery step, on its
    /// own): confirmed, voided, or found unresolvable (then open to a write-off).
    Resolve(SamResolveArgs),
    /// Write off a PENDING journal entry `sam resolve` found unresolvable, with the issuer
    /// SAM's authorisation (the issuer must have seen it PENDING in a settled batch).
    WriteOff(SamWriteOffArgs),
}

/// `--sam FILE | --sam-reader NAME`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SamTargetArgs {
    /// SAM image file.
    #[arg(long, value_name = "FILE")]
    pub sam: Option<PathBuf>,
    /// PC/SC reader holding the SAM.
    #[arg(long, value_name = "NAME")]
    pub sam_reader: Option<String>,
}

impl SamTargetArgs {
    fn open(&self) -> CliResult<Target> {
        if self.sam.is_none() && self.sam_reader.is_none() {
            return Err("no SAM: give --sam FILE (a SAM image) or --sam-reader NAME".into());
        }
        Target::open(self.sam.as_deref(), self.sam_reader.as_deref())
    }
}

#[derive(clap::Args)]
pub struct SamIssueArgs {
    #[arg(long, value_name = "DIR")]
    pub scheme: PathBuf,
    /// Role of the new SAM (only `terminal`; the issuer SAM is made by `scheme init`).
    #[arg(long, default_value = "terminal")]
    pub role: String,
    /// SAM image to create.
    #[arg(long, value_name = "SAM")]
    pub out: PathBuf,
    /// Unlock PIN of the new SAM (default 0000).
    #[arg(long)]
    pub pin: Option<String>,
    /// SAM ID in hex (4 bytes; default: the scheme's next SAM ID).
    #[arg(long, value_name = "HEX")]
    pub sam_id: Option<String>,
    /// Daily ceiling in minor units (0: none).
    #[arg(long, default_value_t = 0)]
    pub max_per_day: u32,
    /// Journal capacity (entries).
    #[arg(long, default_value_t = 1000)]
    pub journal_capacity: u16,
    /// Issuer SAM unlock PIN (default: the one in scheme.json).
    #[arg(long)]
    pub sam_pin: Option<String>,
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args)]
pub struct SamShowArgs {
    #[command(flatten)]
    pub target: SamTargetArgs,
}

#[derive(clap::Args)]
pub struct SamJournalArgs {
    #[command(flatten)]
    pub target: SamTargetArgs,
    /// Unlock PIN of this SAM (default 0000).
    #[arg(long)]
    pub sam_pin: Option<String>,
    /// Write the exported batch (JSON with the MACed bytes) to FILE.
    #[arg(long, value_name = "FILE")]
    pub export: Option<PathBuf>,
    /// Settle with the scheme's issuer SAM (needs --scheme).
    #[arg(long, requires = "scheme")]
    pub settle: bool,
    #[arg(long, value_name = "DIR")]
    pub scheme: Option<PathBuf>,
    /// Issuer SAM unlock PIN for --settle (default: the one in scheme.json).
    #[arg(long)]
    pub issuer_pin: Option<String>,
}

#[derive(clap::Args)]
pub struct SamResolveArgs {
    /// The SAM holding the entry (a terminal SAM, or the issuer SAM image for a load).
    #[command(flatten)]
    pub sam: SamTargetArgs,
    /// The purse the entry names.
    #[command(flatten)]
    pub card: TargetArgs,
    /// Sequence number (SAM transaction number) of the PENDING entry.
    #[arg(long, value_name = "N")]
    pub seq: u32,
    /// Unlock PIN of the SAM (default 0000).
    #[arg(long)]
    pub sam_pin: Option<String>,
}

#[derive(clap::Args)]
pub struct SamWriteOffArgs {
    #[arg(long, value_name = "DIR")]
    pub scheme: PathBuf,
    /// The SAM holding the entry (`--sam` = the issuer SAM image for its own journal).
    #[command(flatten)]
    pub target: SamTargetArgs,
    /// Sequence number (SAM transaction number) of the PENDING entry.
    #[arg(long, value_name = "N")]
    pub seq: u32,
    /// Unlock PIN of this SAM (default 0000).
    #[arg(long)]
    pub sam_pin: Option<String>,
    /// Issuer SAM unlock PIN (default: the one in scheme.json).
    #[arg(long)]
    pub issuer_pin: Option<String>,
}

#[derive(clap::Args)]
pub struct SamReconcileArgs {
    #[arg(long, value_name = "DIR")]
    pub scheme: PathBuf,
    /// The SAM whose records to check (8 hex digits; the issuer's own ID for its journal).
    #[arg(long, value_name = "HEX")]
    pub sam_id: String,
    /// Issuer SAM unlock PIN (default: the one in scheme.json).
    #[arg(long)]
    pub issuer_pin: Option<String>,
}

#[derive(clap::Args)]
pub struct LoadArgs {
    #[arg(long, value_name = "DIR")]
    pub scheme: PathBuf,
    #[command(flatten)]
    pub card: TargetArgs,
    /// The issuer SAM: `--sam FILE` or `--sam-reader NAME` (default: the scheme's issuer
    /// SAM image).
    #[command(flatten)]
    pub sam: SamTargetArgs,
    /// Amount in minor units.
    #[arg(long)]
    pub amount: u32,
    /// Issuer SAM unlock PIN (default: the one in scheme.json).
    #[arg(long)]
    pub sam_pin: Option<String>,
}

#[derive(clap::Args)]
pub struct PayArgs {
    #[command(flatten)]
    pub sam: SamTargetArgs,
    #[command(flatten)]
    pub card: TargetArgs,
    /// Amount in minor units.
    #[arg(long)]
    pub amount: u32,
    /// Cardholder PIN (needed above the purse's PIN threshold).
    #[arg(long)]
    pub pin: Option<String>,
    /// Terminal ID in hex (4 bytes; default: the SAM ID).
    #[arg(long, value_name = "HEX")]
    pub terminal_id: Option<String>,
    /// Terminal SAM unlock PIN (default 0000, the `sam issue` default).
    #[arg(long)]
    pub sam_pin: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum PurseCmd {
    /// Purse data: balance, currency, counter, limits.
    Show(PurseViewArgs),
    /// The purse's transaction log, newest first.
    Log(PurseViewArgs),
}

#[derive(clap::Args)]
pub struct PurseViewArgs {
    #[command(flatten)]
    pub card: TargetArgs,
}

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Directory for the demo's scheme, cards and SAM (default: a new temporary directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// What a command reports: JSON for `--json`, text otherwise.
struct Out {
    json: Value,
    text: String,
}

pub fn run(c: ValueCmd, g: Global) -> CliResult {
    let out = match c {
        ValueCmd::Scheme(SchemeCmd::Init(a)) => scheme_init(&a)?,
        ValueCmd::Card(CardCmd::Issue(a)) => card_issue(&a)?,
        ValueCmd::Sam(SamCmd::Issue(a)) => sam_issue(&a)?,
        ValueCmd::Sam(SamCmd::Show(a)) => sam_show(&a)?,
        ValueCmd::Sam(SamCmd::Journal(a)) => sam_journal(&a)?,
        ValueCmd::Sam(SamCmd::Reconcile(a)) => sam_reconcile(&a)?,
        ValueCmd::Sam(SamCmd::Resolve(a)) => sam_resolve(&a)?,
        ValueCmd::Sam(SamCmd::WriteOff(a)) => sam_write_off(&a)?,
        ValueCmd::Load(a) => load(&a)?,
        ValueCmd::Pay(a) => pay(&a)?,
        ValueCmd::Purse(PurseCmd::Show(a)) => purse_show(&a)?,
        ValueCmd::Purse(PurseCmd::Log(a)) => purse_log(&a)?,
        ValueCmd::Demo(a) => return demo(&a, g),
    };
    print_out(&out, g);
    Ok(())
}

fn print_out(out: &Out, g: Global) {
    if g.json {
        println!("{}", out.json);
    } else {
        print!("{}", out.text);
        if !out.text.ends_with('\n') {
            println!();
        }
    }
}

// ------------------------------------------------------------------ helpers

fn now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

fn currency_code(c: u16) -> String {
    match c {
        978 => "EUR".into(),
        840 => "USD".into(),
        826 => "GBP".into(),
        392 => "JPY".into(),
        756 => "CHF".into(),
        other => format!("{other:03}"),
    }
}

/// "12.50 EUR" (two minor digits, except JPY).
fn money(amount: u64, currency: u16) -> String {
    if currency == 392 {
        format!("{amount} JPY")
    } else {
        format!(
            "{}.{:02} {}",
            amount / 100,
            amount % 100,
            currency_code(currency)
        )
    }
}

/// Read the scheme files `names` in `dir`. An empty name is a file the scheme was made
/// without (before `made_before` existed): refused with a message asking to re-create it.
fn read_scheme_files<const N: usize>(
    dir: &Path,
    names: [&str; N],
    what: &str,
    made_before: &str,
) -> CliResult<[Vec<u8>; N]> {
    if names.iter().any(|n| n.is_empty()) {
        return Err(format!(
            "the scheme in {} has no {what} (made before {made_before}): re-create it with `tessera scheme init`",
            dir.display()
        )
        .into());
    }
    let mut out: [Vec<u8>; N] = std::array::from_fn(|_| Vec::new());
    for (slot, name) in out.iter_mut().zip(names) {
        let p = dir.join(name);
        *slot = std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    }
    Ok(out)
}

fn parse_hex_n<const N: usize>(what: &str, s: &str) -> CliResult<[u8; N]> {
    let v = hex::decode(s.trim()).map_err(|e| format!("{what}: invalid hex {s:?}: {e}"))?;
    <[u8; N]>::try_from(v.as_slice()).map_err(|_| {
        format!(
            "{what}: expected {N} bytes ({} hex digits), got {}",
            2 * N,
            v.len()
        )
        .into()
    })
}

fn flow_err(what: &str, e: FlowError) -> Box<dyn std::error::Error + Send + Sync> {
    // A broken link is not a refusal: say "failed" so that nobody reads it as the card's
    // or the SAM's decision.
    let verb = match &e {
        FlowError::Step {
            source: tessera_host::clients::ClientError::Transport(_),
            ..
        } => "failed",
        _ => "refused",
    };
    format!("{what} {verb}: {e}").into()
}

/// Write a file atomically (temp file in the same directory, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> CliResult {
    write_file(path, bytes, false)
}

/// [`write_atomic`] for a private key: the file is readable by its owner only (mode 0600
/// on Unix), set on the temporary file before the rename, so the key is never visible
/// to others, not even for a moment.
fn write_secret(path: &Path, bytes: &[u8]) -> CliResult {
    write_file(path, bytes, true)
}

fn write_file(path: &Path, bytes: &[u8], secret: bool) -> CliResult {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| format!("{}: not a file name", path.display()))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let r = (|| -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = secret;
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    r.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display()).into()
    })
}

// ------------------------------------------------------------------ scheme

/// `scheme.json`. The demo scheme stores the issuer SAM's unlock PIN here for convenience;
/// `--sam-pin` overrides it on every command.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Scheme {
    name: String,
    /// ISO 4217 numeric.
    currency: u16,
    issuer_sam: String,
    issuer_sam_id: String,
    issuer_sam_pin: String,
    root_ca_cert: String,
    root_ca_key: String,
    issuer_perso_cert: String,
    /// Chip manufacturer CA certificate (DER) and key (PKCS#8 DER); empty in a scheme made
    /// before chip attestation.
    #[serde(default)]
    manufacturer_ca_cert: String,
    #[serde(default)]
    manufacturer_ca_key: String,
    /// The issuer SAM's attestation certificate (DER, by the chip manufacturer CA): the
    /// key of its settlement statements. Empty in a scheme made before them.
    #[serde(default)]
    issuer_attestation_cert: String,
    next_card_serial: u32,
    next_sam_id: u32,
}

impl Scheme {
    fn load(dir: &Path) -> CliResult<Scheme> {
        let p = dir.join(SCHEME_FILE);
        let text = std::fs::read_to_string(&p).map_err(|e| {
            format!(
                "no scheme in {}: cannot read {}: {e} (run `tessera scheme init`)",
                dir.display(),
                p.display()
            )
        })?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a scheme file: {e}", p.display()).into())
    }
    fn save(&self, dir: &Path) -> CliResult {
        let text = serde_json::to_string_pretty(self)?;
        write_secret(&dir.join(SCHEME_FILE), text.as_bytes())
    }
    fn issuer_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.issuer_sam)
    }
    /// Open the issuer SAM image and unlock it.
    fn open_issuer(&self, dir: &Path, pin_override: Option<&str>) -> CliResult<(Target, Vec<u8>)> {
        let path = self.issuer_path(dir);
        let mut t = Target::open(Some(&path), None)?;
        let pin = pin_override
            .unwrap_or(&self.issuer_sam_pin)
            .as_bytes()
            .to_vec();
        unlock_sam(&mut t, "issuer SAM", &pin)
            .map_err(|e| format!("issuer SAM {}: {e}", path.display()))?;
        Ok((t, pin))
    }
    /// The chip manufacturer CA (the factory's signing key for chip certificates).
    fn manufacturer(&self, dir: &Path) -> CliResult<kit::ManufacturerCa> {
        let [key, cert] = read_scheme_files(
            dir,
            [&self.manufacturer_ca_key, &self.manufacturer_ca_cert],
            "chip manufacturer CA",
            "chip attestation",
        )?;
        let key = zeroize::Zeroizing::new(key);
        kit::ManufacturerCa::from_der(&key, &cert)
            .map_err(|e| format!("chip manufacturer CA in {}: {e}", dir.display()).into())
    }
}

fn scheme_init(a: &SchemeInitArgs) -> CliResult<Out> {
    use tessera_crypto::rng::CardRng;
    use tessera_crypto::rsa::{RsaPrivateKey, RsaPublicKey};
    use tessera_crypto::x509;

    let dir = &a.dir;
    if !(1..=999).contains(&a.currency) {
        return Err(format!(
            "--currency {}: an ISO 4217 numeric code is 001 to 999",
            a.currency
        )
        .into());
    }
    if dir.join(SCHEME_FILE).exists() {
        return Err(format!(
            "{} already holds a scheme ({SCHEME_FILE} exists)",
            dir.display()
        )
        .into());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut rng = CardRng::from_entropy();

    // Root CA: RSA-2048 and a self-signed certificate.
    let root_key = RsaPrivateKey::generate(2048, &mut rng)
        .map_err(|e| format!("root CA key generation: {e}"))?;
    let t0 = SystemTime::now();
    let t1 = t0 + Duration::from_secs(10 * 365 * 86_400);
    let root_cert = x509::issue_self_signed(
        &root_key,
        &x509::CertificateParams::ca("Tessera Demo Root", 1, t0, t1),
    )
    .map_err(|e| format!("root CA certificate: {e}"))?;
    let key_der = root_key
        .to_pkcs8_der()
        .map_err(|e| format!("root CA key encoding: {e}"))?;
    write_secret(&dir.join(ROOT_KEY_FILE), &key_der)?;
    write_atomic(&dir.join(ROOT_CERT_FILE), root_cert.to_der())?;

    // Chip manufacturer CA: certifies the attestation keys chips generate inside
    // themselves; the issuer SAM trusts its certificate. (A deployment keeps it at the chip
    // factory, offline from this workstation.)
    let manufacturer = kit::ManufacturerCa::generate(&mut rng, t0)
        .map_err(|e| format!("chip manufacturer CA: {e}"))?;
    let mkey = manufacturer
        .key_pkcs8_der()
        .map_err(|e| format!("chip manufacturer CA key encoding: {e}"))?;
    write_secret(&dir.join(MANUFACTURER_KEY_FILE), &mkey)?;
    write_atomic(&dir.join(MANUFACTURER_CERT_FILE), manufacturer.cert_der())?;

    // Issuer SAM: keys generated inside it at installation.
    let pin = match &a.sam_pin {
        Some(p) => p.clone(),
        None => {
            let mut b = [0u8; 8];
            rng.fill(&mut b);
            b.iter().map(|x| char::from(b'0' + x % 10)).collect()
        }
    };
    let sam_id = [0, 0, 0, 1];
    let mut issuer = kit::new_issuer_sam(
        &kit::SamParams {
            sam_id,
            role: sw_::role::ISSUER,
            pin: pin.as_bytes().to_vec(),
            journal_capacity: 1000,
            max_per_load: a.max_per_load,
            max_per_day: a.max_per_day,
            ..Default::default()
        },
        manufacturer.cert_der(),
    )
    .map_err(|e| format!("creating the issuer SAM: {e}"))?;
    let data =
        flows::open_sam(&mut issuer, pin.as_bytes()).map_err(|e| format!("issuer SAM: {e}"))?;
    let spki = SamClient::new(&mut issuer)
        .perso_public_key()
        .map_err(|e| format!("issuer SAM: {e}"))?;
    // The root CA certifies the issuer SAM's personalisation key.
    let perso_pub = RsaPublicKey::from_spki_der(&spki)
        .map_err(|e| format!("issuer SAM personalisation key: {e}"))?;
    let perso_cert = x509::issue_certificate(
        &root_key,
        &root_cert,
        &perso_pub,
        &x509::CertificateParams::card(
            &format!("SAM-{}", hex::encode_upper(sam_id)),
            2,
            x509::CardRole::Sam,
            t0,
            t1,
        ),
    )
    .map_err(|e| format!("issuer SAM certificate: {e}"))?;
    write_atomic(&dir.join(ISSUER_CERT_FILE), perso_cert.to_der())?;
    // Factory step for the issuer SAM too: the manufacturer CA certifies its attestation
    // key, which signs its settlement statements.
    let att_cert = kit::certify_sam(&mut issuer, &manufacturer, t0)
        .map_err(|e| format!("issuer SAM attestation certificate: {e}"))?;
    write_atomic(&dir.join(ISSUER_ATTESTATION_FILE), &att_cert)?;
    issuer
        .save_image(dir.join(ISSUER_SAM_FILE))
        .map_err(|e| format!("cannot save the issuer SAM image: {e}"))?;
    let scheme = Scheme {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scheme".into()),
        currency: a.currency,
        issuer_sam: ISSUER_SAM_FILE.into(),
        issuer_sam_id: hex::encode_upper(data.sam_id),
        issuer_sam_pin: pin,
        root_ca_cert: ROOT_CERT_FILE.into(),
        root_ca_key: ROOT_KEY_FILE.into(),
        issuer_perso_cert: ISSUER_CERT_FILE.into(),
        manufacturer_ca_cert: MANUFACTURER_CERT_FILE.into(),
        manufacturer_ca_key: MANUFACTURER_KEY_FILE.into(),
        issuer_attestation_cert: ISSUER_ATTESTATION_FILE.into(),
        next_card_serial: 1,
        next_sam_id: 2,
    };
    scheme.save(dir)?;
    let keys: Vec<Value> = data
        .keys
        .iter()
        .map(|k| json!({"usage": k.usage, "number": k.number, "version": k.version, "master": k.master}))
        .collect();
    Ok(Out {
        json: json!({
            "dir": dir.display().to_string(),
            "currency": a.currency,
            "issuer_sam": dir.join(ISSUER_SAM_FILE).display().to_string(),
            "issuer_sam_id": hex::encode_upper(data.sam_id),
            "issuer_keys": keys,
            "root_ca_cert": dir.join(ROOT_CERT_FILE).display().to_string(),
            "manufacturer_ca_cert": dir.join(MANUFACTURER_CERT_FILE).display().to_string(),
        }),
        text: format!(
            "scheme created in {}\n  currency       {} ({})\n  root CA        {} (RSA-2048, self-signed)\n  chip maker CA  {} (RSA-2048, self-signed; key {}: keep it offline at the factory)\n  issuer SAM     {} (ID {}, {} keys generated inside, trusts the chip maker CA)\n  SAM PIN        stored in {} (override with --sam-pin)\n",
            dir.display(),
            a.currency,
            currency_code(a.currency),
            dir.join(ROOT_CERT_FILE).display(),
            dir.join(MANUFACTURER_CERT_FILE).display(),
            dir.join(MANUFACTURER_KEY_FILE).display(),
            dir.join(ISSUER_SAM_FILE).display(),
            hex::encode_upper(data.sam_id),
            data.keys.len(),
            dir.join(SCHEME_FILE).display(),
        ),
    })
}

// ------------------------------------------------------------------ issuing

/// Claim the output image of an issue command: refuse an existing file without `--force`,
/// and lock the path (an image being served or used by a flow is never replaced).
/// Lock the `--out` image of an issue command. Called once the command's input has been
/// checked, so that refused input leaves no lock file. (A lock file is never removed:
/// removing it while another process waits to open it would let two processes hold
/// "the" lock; see [`tessera_os::ImageLock`].)
fn claim_out(path: &Path, force: bool) -> CliResult<tessera_os::ImageLock> {
    if path.exists() && !force {
        return Err(format!(
            "{} exists; refusing to overwrite it (use --force)",
            path.display()
        )
        .into());
    }
    Ok(tessera_os::ImageLock::acquire(path)?)
}

fn save_target(t: &mut Target, what: &str) -> CliResult {
    t.save().map_err(|e| format!("{what}: {e}").into())
}

fn card_issue(a: &CardIssueArgs) -> CliResult<Out> {
    if a.log_size == 0 {
        return Err("--log-size must be 1 to 255".into());
    }
    if a.max_balance == 0 {
        return Err("--max-balance must be greater than zero".into());
    }
    let mut scheme = Scheme::load(&a.scheme)?;
    let card_id = match &a.card_id {
        Some(h) => {
            let v =
                hex::decode(h.trim()).map_err(|e| format!("--card-id: invalid hex {h:?}: {e}"))?;
            if v.is_empty() || v.len() > 16 {
                return Err("--card-id: 1 to 16 bytes".into());
            }
            v
        }
        None => {
            let mut v = vec![0x04, 0x00, 0x00];
            v.extend_from_slice(&scheme.next_card_serial.to_be_bytes());
            v
        }
    };
    let pin = a.pin.clone().unwrap_or_default();
    if pin.len() > 16 {
        return Err("--pin: at most 16 digits".into());
    }
    let pin_threshold = a
        .pin_threshold
        .unwrap_or(if pin.is_empty() { u32::MAX } else { 2000 });
    let _out_lock = claim_out(&a.out, a.force)?;
    let manufacturer = scheme.manufacturer(&a.scheme)?;
    let (mut issuer, _) = scheme.open_issuer(&a.scheme, a.sam_pin.as_deref())?;
    let params = kit::PurseParams {
        card_id: card_id.clone(),
        currency: scheme.currency,
        max_balance: a.max_balance,
        log_capacity: a.log_size,
        pin_threshold,
        pin: pin.as_bytes().to_vec(),
        ..Default::default()
    };
    let (card, data) = kit::issue_purse(issuer.transport(), &manufacturer, &params)
        .map_err(|e| format!("card issue failed: {e}"))?;
    // The issuer SAM remembers the purse ID it personalised: save it before the card.
    save_target(&mut issuer, "issuer SAM")?;
    card.save_image(&a.out)
        .map_err(|e| format!("cannot save card image {}: {e}", a.out.display()))?;
    if a.card_id.is_none() {
        scheme.next_card_serial = scheme.next_card_serial.saturating_add(1);
        scheme.save(&a.scheme)?;
    }
    let mut j = purse_json(&data);
    j["card_id"] = json!(hex::encode_upper(&card_id));
    j["image"] = json!(a.out.display().to_string());
    Ok(Out {
        text: format!(
            "card issued: {} (card ID {}, purse ID {})\n  max balance {}, PIN {}, log {} records\n",
            a.out.display(),
            hex::encode_upper(&card_id),
            hex::encode_upper(data.purse_id),
            money(u64::from(data.max_balance), data.currency),
            if pin.is_empty() {
                "none".to_string()
            } else {
                format!(
                    "set (needed above {})",
                    money(u64::from(pin_threshold), data.currency)
                )
            },
            data.log_capacity
        ),
        json: j,
    })
}

fn sam_issue(a: &SamIssueArgs) -> CliResult<Out> {
    if a.role != "terminal" {
        return Err(format!(
            "--role {:?}: only `terminal` SAMs are issued here (the issuer SAM is made by `scheme init`)",
            a.role
        )
        .into());
    }
    let mut scheme = Scheme::load(&a.scheme)?;
    let sam_id = match &a.sam_id {
        Some(h) => parse_hex_n::<4>("--sam-id", h)?,
        None => scheme.next_sam_id.to_be_bytes(),
    };
    let pin = a
        .pin
        .clone()
        .unwrap_or_else(|| String::from_utf8_lossy(kit::DEFAULT_SAM_PIN).into_owned());
    let _out_lock = claim_out(&a.out, a.force)?;
    let manufacturer = scheme.manufacturer(&a.scheme)?;
    let (mut issuer, _) = scheme.open_issuer(&a.scheme, a.sam_pin.as_deref())?;
    let params = kit::SamParams {
        sam_id,
        role: sw_::role::TERMINAL,
        pin: pin.as_bytes().to_vec(),
        max_per_day: a.max_per_day,
        journal_capacity: a.journal_capacity,
        ..Default::default()
    };
    let (sam, data) = kit::issue_sam(issuer.transport(), &manufacturer, &params)
        .map_err(|e| format!("SAM issue failed: {e}"))?;
    save_target(&mut issuer, "issuer SAM")?;
    sam.save_image(&a.out)
        .map_err(|e| format!("cannot save SAM image {}: {e}", a.out.display()))?;
    if a.sam_id.is_none() {
        scheme.next_sam_id = scheme.next_sam_id.saturating_add(1);
        scheme.save(&a.scheme)?;
    }
    let mut j = sam_json(&data);
    j["image"] = json!(a.out.display().to_string());
    Ok(Out {
        text: format!(
            "terminal SAM issued: {} (SAM ID {}, unlock PIN {}, daily ceiling {})\n",
            a.out.display(),
            hex::encode_upper(sam_id),
            if a.pin.is_some() {
                "as given"
            } else {
                "0000 (default)"
            },
            if a.max_per_day == 0 {
                "none".to_string()
            } else {
                money(u64::from(a.max_per_day), scheme.currency)
            }
        ),
        json: j,
    })
}

// ------------------------------------------------------------------ flows

fn load(a: &LoadArgs) -> CliResult<Out> {
    let scheme = Scheme::load(&a.scheme)?;
    let (mut issuer, pin) = if a.sam.sam.is_none() && a.sam.sam_reader.is_none() {
        scheme.open_issuer(&a.scheme, a.sam_pin.as_deref())?
    } else {
        let mut t = a.sam.open()?;
        // The role first (GET SAM DATA needs no PIN): no PIN try spent on a wrong SAM.
        let mut c = SamClient::new(t.transport());
        c.select()?;
        if c.sam_data()?.role != sw_::role::ISSUER {
            return Err(format!(
                "the SAM given with --sam / --sam-reader ({}) is not an issuer SAM",
                t.describe()
            )
            .into());
        }
        let pin = a
            .sam_pin
            .as_deref()
            .unwrap_or(&scheme.issuer_sam_pin)
            .as_bytes()
            .to_vec();
        unlock_sam(&mut t, "issuer SAM", &pin)
            .map_err(|e| format!("issuer SAM ({}): {e}", t.describe()))?;
        (t, pin)
    };
    let mut card = a.card.open()?;
    let opts = FlowOptions { sam_pin: Some(pin) };
    let req = LoadRequest {
        amount: a.amount,
        terminal_time: now(),
    };
    // Each chip image is saved after every command it answers, as a chip commits each
    // one: a crash mid-flow leaves the images as two chips would be.
    let result = flows::load_with(
        &mut Durable::new(&mut card, "card"),
        &mut Durable::new(&mut issuer, "issuer SAM"),
        req,
        &opts,
    );
    let r = result.map_err(|e| flow_err("load", e))?;
    Ok(Out {
        text: format!(
            "loaded {} into purse {}: balance {} -> {} (counter {}, SAM {} txn {}{}{})\n",
            money(u64::from(r.amount), r.currency),
            hex::encode_upper(r.purse_id),
            money(u64::from(r.balance_before), r.currency),
            money(u64::from(r.balance_after), r.currency),
            r.counter,
            hex::encode_upper(r.sam_id),
            r.sam_txn,
            if r.recovered {
                ", recovered after a lost answer"
            } else {
                ""
            },
            if r.sam_confirmed {
                ""
            } else {
                ", SAM entry still PENDING"
            },
        ),
        json: serde_json::to_value(&r)?,
    })
}

fn pay(a: &PayArgs) -> CliResult<Out> {
    let mut sam = a.sam.open()?;
    let sam_pin = a
        .sam_pin
        .clone()
        .unwrap_or_else(|| String::from_utf8_lossy(kit::DEFAULT_SAM_PIN).into_owned());
    let data = unlock_sam(&mut sam, "terminal SAM", sam_pin.as_bytes())
        .map_err(|e| format!("terminal SAM: {e}"))?;
    if data.role != sw_::role::TERMINAL {
        return Err("the SAM given with --sam is not a terminal SAM".into());
    }
    let terminal_id = match &a.terminal_id {
        Some(h) => parse_hex_n::<4>("--terminal-id", h)?,
        None => data.sam_id,
    };
    let mut card = a.card.open()?;
    let opts = FlowOptions {
        sam_pin: Some(sam_pin.into_bytes()),
    };
    let req = PayRequest {
        amount: a.amount,
        terminal_id,
        terminal_time: now(),
        pin: a.pin.as_ref().map(|p| p.as_bytes().to_vec()),
    };
    // Each chip image is saved after every command it answers (see `load`).
    let result = flows::pay_with(
        &mut Durable::new(&mut card, "card"),
        &mut Durable::new(&mut sam, "terminal SAM"),
        &req,
        &opts,
    );
    let r = result.map_err(|e| flow_err("payment", e))?;
    Ok(Out {
        text: format!(
            "paid {} from purse {} at terminal {}: balance {} -> {} (counter {}, SAM txn {}{}{})\n",
            money(u64::from(r.amount), r.currency),
            hex::encode_upper(r.purse_id),
            hex::encode_upper(r.terminal_id),
            money(u64::from(r.balance_before), r.currency),
            money(u64::from(r.balance_after), r.currency),
            r.counter,
            r.sam_txn,
            if r.recovered {
                ", recovered after a lost answer"
            } else {
                ""
            },
            if r.sam_confirmed {
                ""
            } else {
                ", SAM entry still PENDING"
            },
        ),
        json: serde_json::to_value(&r)?,
    })
}

// ------------------------------------------------------------------ views

fn purse_json(d: &PurseData) -> Value {
    json!({
        "purse_id": hex::encode_upper(d.purse_id),
        "currency": d.currency,
        "currency_code": currency_code(d.currency),
        "balance": d.balance,
        "max_balance": d.max_balance,
        "counter": d.counter,
        "counter_limit": d.counter_limit,
        "load_key_version": d.load_key_version,
        "debit_key_version": d.debit_key_version,
        "personalised": d.flags & pw::FLAG_PERSONALISED != 0,
        "pin_set": d.flags & pw::FLAG_PIN_SET != 0,
        "pin_threshold": d.pin_threshold,
        "log_capacity": d.log_capacity,
        "log_count": d.log_count,
    })
}

fn read_purse(t: &mut Target) -> CliResult<PurseData> {
    let mut c = PurseClient::new(t.transport());
    c.select()?;
    Ok(c.read_purse_data()?)
}

fn purse_show(a: &PurseViewArgs) -> CliResult<Out> {
    let mut t = a.card.open()?;
    let d = read_purse(&mut t)?;
    Ok(Out {
        json: purse_json(&d),
        text: purse_text(&d),
    })
}

fn purse_text(d: &PurseData) -> String {
    format!(
        "purse {}\n  balance   {}\n  maximum   {}\n  counter   {}\n  PIN       {}\n  log       {}/{} records\n",
        hex::encode_upper(d.purse_id),
        money(u64::from(d.balance), d.currency),
        money(u64::from(d.max_balance), d.currency),
        d.counter,
        if d.flags & pw::FLAG_PIN_SET == 0 {
            "none".to_string()
        } else if d.pin_threshold == u32::MAX {
            "set".to_string()
        } else {
            format!(
                "needed above {}",
                money(u64::from(d.pin_threshold), d.currency)
            )
        },
        d.log_count,
        d.log_capacity
    )
}

fn kind_name(k: u8) -> &'static str {
    match k {
        pw::kind::LOAD => "load",
        pw::kind::PURCHASE => "purchase",
        _ => "unknown",
    }
}

fn log_json(r: &LogRecord) -> Value {
    json!({
        "kind": kind_name(r.kind),
        "amount": r.amount,
        "balance_after": r.balance_after,
        "counter": r.counter,
        "sam_id": hex::encode_upper(r.sam_id),
        "sam_txn": r.sam_txn,
        "terminal_id": hex::encode_upper(r.terminal_id),
        "terminal_time": r.terminal_time,
        "proof": hex::encode_upper(r.proof),
    })
}

fn log_text(records: &[LogRecord], currency: u16) -> String {
    let mut s = String::new();
    if records.is_empty() {
        s.push_str("  (no transactions)\n");
    }
    for r in records {
        let sign = if r.kind == pw::kind::LOAD { "+" } else { "-" };
        let _ = writeln!(
            s,
            "  #{:<4} {:<8} {}{:>14}  balance {:>14}  SAM {} txn {}",
            r.counter,
            kind_name(r.kind),
            sign,
            money(u64::from(r.amount), currency),
            money(u64::from(r.balance_after), currency),
            hex::encode_upper(r.sam_id),
            r.sam_txn
        );
    }
    s
}

fn purse_log(a: &PurseViewArgs) -> CliResult<Out> {
    let mut t = a.card.open()?;
    let d = read_purse(&mut t)?;
    let records = PurseClient::new(t.transport()).read_all_logs()?;
    Ok(Out {
        json: json!({
            "purse_id": hex::encode_upper(d.purse_id),
            "currency": d.currency,
            "balance": d.balance,
            "records": records.iter().map(log_json).collect::<Vec<_>>(),
        }),
        text: format!(
            "purse {} log (newest first):\n{}",
            hex::encode_upper(d.purse_id),
            log_text(&records, d.currency)
        ),
    })
}

fn role_name(r: u8) -> &'static str {
    match r {
        sw_::role::ISSUER => "issuer",
        sw_::role::TERMINAL => "terminal",
        _ => "unknown",
    }
}

fn sam_json(d: &SamData) -> Value {
    json!({
        "sam_id": hex::encode_upper(d.sam_id),
        "role": role_name(d.role),
        "unlocked": d.unlocked,
        "sam_txn": d.sam_txn,
        "journal_count": d.journal_count,
        "pending_count": d.pending_count,
        "journal_capacity": d.journal_capacity,
        "max_per_load": d.max_per_load,
        "max_per_day": d.max_per_day,
        "day": d.day,
        "day_total": d.day_total,
        "keys": d.keys.iter().map(|k| json!({"usage": k.usage, "number": k.number, "version": k.version, "master": k.master})).collect::<Vec<_>>(),
    })
}

fn sam_show(a: &SamShowArgs) -> CliResult<Out> {
    let mut t = a.target.open()?;
    let mut c = SamClient::new(t.transport());
    c.select()?;
    let d = c.sam_data()?;
    Ok(Out {
        json: sam_json(&d),
        text: format!(
            "SAM {} ({})\n  transactions  {}\n  journal       {}/{} entries, {} pending\n  keys          {}\n",
            hex::encode_upper(d.sam_id),
            role_name(d.role),
            d.sam_txn,
            d.journal_count,
            d.journal_capacity,
            d.pending_count,
            d.keys.len()
        ),
    })
}

fn status_name(s: u8) -> &'static str {
    match s {
        sw_::status::PENDING => "pending",
        sw_::status::CONFIRMED => "confirmed",
        sw_::status::VOID => "void",
        sw_::status::WRITTEN_OFF => "written_off",
        _ => "unknown",
    }
}

fn entry_json(e: &JournalEntry) -> Value {
    json!({
        "seq": e.seq,
        "kind": kind_name(e.kind),
        "status": status_name(e.status),
        "purse_id": hex::encode_upper(e.purse_id),
        "amount": e.amount,
        "counter": e.counter,
        "balance_after": e.balance_after,
        "terminal_id": hex::encode_upper(e.terminal_id),
        "terminal_time": e.terminal_time,
        "proof": hex::encode_upper(e.proof),
    })
}

fn batch_json(b: &JournalBatch) -> Value {
    json!({
        "sam_id": hex::encode_upper(b.sam_id),
        "entries": b.entries.iter().map(entry_json).collect::<Vec<_>>(),
        "mac": hex::encode_upper(b.mac),
        "batch_hex": hex::encode_upper(b.encode()),
    })
}

fn journal_text(entries: &[JournalEntry]) -> String {
    let mut s = String::new();
    if entries.is_empty() {
        s.push_str("  (journal empty)\n");
    }
    for e in entries {
        let _ = writeln!(
            s,
            "  seq {:<5} {:<8} {:<11} purse {} amount {:>10} counter {}",
            e.seq,
            kind_name(e.kind),
            status_name(e.status),
            hex::encode_upper(e.purse_id),
            e.amount,
            e.counter
        );
    }
    s
}

fn sam_journal(a: &SamJournalArgs) -> CliResult<Out> {
    let mut sam = a.target.open()?;
    let pin = a
        .sam_pin
        .clone()
        .unwrap_or_else(|| String::from_utf8_lossy(kit::DEFAULT_SAM_PIN).into_owned());
    unlock_sam(&mut sam, "SAM", pin.as_bytes()).map_err(|e| format!("SAM: {e}"))?;
    // `--export` writes the MACed batch (the one awaiting settlement); otherwise a peek
    // at the journal as it is now, which records nothing in the SAM.
    let batch = if a.export.is_some() {
        SamClient::new(sam.transport()).export_journal(0)?
    } else {
        SamClient::new(sam.transport()).peek_journal(0)?
    };
    let mut j = json!({ "journal": batch_json(&batch) });
    let mut text = format!(
        "SAM {} journal ({} entries in this batch):\n{}",
        hex::encode_upper(batch.sam_id),
        batch.entries.len(),
        journal_text(&batch.entries)
    );
    if let Some(path) = &a.export {
        write_atomic(
            path,
            serde_json::to_string_pretty(&batch_json(&batch))?.as_bytes(),
        )?;
        let _ = writeln!(text, "exported to {}", path.display());
        j["exported_to"] = json!(path.display().to_string());
    }
    if a.settle {
        let dir = a.scheme.as_deref().ok_or("--settle needs --scheme DIR")?;
        let scheme = Scheme::load(dir)?;
        let sdir = dir.join(SETTLEMENT_DIR);
        let mut files = Vec::new();
        // Each verified batch's record is durable (fsync, rename, directory fsync) before
        // its ack is sent; keyed by SAM ID, last seq and batch MAC, so the identical batch
        // seen again (a run cut after VERIFY JOURNAL) replaces its record.
        let store = |b: &flows::VerifiedBatch| -> Result<(), String> {
            let file = store_settlement(&sdir, b).map_err(|e| e.to_string())?;
            if !files.contains(&file) {
                files.push(file);
            }
            Ok(())
        };
        // Both SAMs commit each command, as chips do: images are saved after every command
        // of the settlement, so the batch frozen by EXPORT, the issuer's settled mark and
        // the dropped entries are on disk in that order.
        let result = with_issuer(&mut sam, &scheme, dir, a.issuer_pin.as_deref(), |t, i| {
            flows::settle(t, i, store)
        })?;
        let report = result.map_err(|e| flow_err("settlement", e))?;
        for file in &files {
            let _ = writeln!(text, "settlement record written to {}", file.display());
        }
        if let Some(last) = files.last() {
            j["settlement_file"] = json!(last.display().to_string());
        }
        j["settlement_files"] = json!(
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
        );
        let _ = writeln!(
            text,
            "settled {} entries in {} batch(es): purchases {}, loads {}, {} void{}, {} pending left",
            report.settled,
            report.batches,
            money(report.purchases_total, scheme.currency),
            money(report.loads_total, scheme.currency),
            report.voided,
            if report.written_off_loads + report.written_off_purchases == 0 {
                String::new()
            } else {
                format!(
                    ", written off: {} load(s) ({}) and {} purchase(s) ({})",
                    report.written_off_loads,
                    money(report.written_off_loads_total, scheme.currency),
                    report.written_off_purchases,
                    money(report.written_off_purchases_total, scheme.currency),
                )
            },
            report.pending_left
        );
        j["settlement"] = serde_json::to_value(&report)?;
    }
    Ok(Out { json: j, text })
}

fn read_sam_role(t: &mut Target) -> CliResult<u8> {
    Ok(SamClient::new(t.transport()).sam_data()?.role)
}

/// Run `f` with the open SAM `sam` and the scheme's issuer SAM, each saved after every
/// command (as a chip commits each one). When `sam` is the issuer SAM itself (its own
/// journal), one chip plays both parts.
fn with_issuer<R>(
    sam: &mut Target,
    scheme: &Scheme,
    dir: &Path,
    issuer_pin: Option<&str>,
    f: impl FnOnce(&mut dyn Transport, &mut dyn Transport) -> R,
) -> CliResult<R> {
    if read_sam_role(sam)? == sw_::role::ISSUER {
        let shared = std::rc::Rc::new(std::cell::RefCell::new(Durable {
            t: sam,
            what: "issuer SAM",
        }));
        return Ok(f(&mut Shared(shared.clone()), &mut Shared(shared)));
    }
    let (mut issuer, _) = scheme.open_issuer(dir, issuer_pin)?;
    Ok(f(
        &mut Durable {
            t: sam,
            what: "SAM",
        },
        &mut Durable::new(&mut issuer, "issuer SAM"),
    ))
}

fn sam_resolve(a: &SamResolveArgs) -> CliResult<Out> {
    let mut sam = a.sam.open()?;
    let sam_pin = a
        .sam_pin
        .clone()
        .unwrap_or_else(|| String::from_utf8_lossy(kit::DEFAULT_SAM_PIN).into_owned());
    let d = unlock_sam(&mut sam, "SAM", sam_pin.as_bytes()).map_err(|e| format!("SAM: {e}"))?;
    let mut card = a.card.open()?;
    let opts = FlowOptions {
        sam_pin: Some(sam_pin.into_bytes()),
    };
    let result = flows::resolve_entry(
        &mut Durable::new(&mut card, "card"),
        &mut Durable::new(&mut sam, "SAM"),
        &opts,
        a.seq,
    );
    let (entry, resolution) = result.map_err(|e| flow_err("resolve", e))?;
    let (name, outcome) = match &resolution {
        flows::Resolution::Applied(r) => (
            "confirmed",
            format!(
                "confirmed: the purse applied it (counter {}, balance after {})",
                r.counter, r.balance_after
            ),
        ),
        flows::Resolution::Voided => ("void", "voided: the purse never applied it".to_string()),
        flows::Resolution::Unresolvable => (
            "unresolvable",
            "unresolvable: the purse's log has moved past it; the entry stays PENDING, marked for the issuer's write-off (tessera sam write-off)".to_string(),
        ),
    };
    let text = format!(
        "SAM {}: entry seq {} ({} of {} minor units, purse {}, counter {}) {outcome}\n",
        hex::encode_upper(d.sam_id),
        entry.seq,
        kind_name(entry.kind),
        entry.amount,
        hex::encode_upper(entry.purse_id),
        entry.counter,
    );
    Ok(Out {
        json: json!({
            "sam_id": hex::encode_upper(d.sam_id),
            "entry": entry_json(&entry),
            "resolution": name,
        }),
        text,
    })
}

fn sam_write_off(a: &SamWriteOffArgs) -> CliResult<Out> {
    let dir = a.scheme.as_path();
    let scheme = Scheme::load(dir)?;
    let mut sam = a.target.open()?;
    let pin = a
        .sam_pin
        .clone()
        .unwrap_or_else(|| String::from_utf8_lossy(kit::DEFAULT_SAM_PIN).into_owned());
    let d = unlock_sam(&mut sam, "SAM", pin.as_bytes()).map_err(|e| format!("SAM: {e}"))?;
    let entry = with_issuer(&mut sam, &scheme, dir, a.issuer_pin.as_deref(), |t, i| {
        flows::write_off(t, i, a.seq)
    })?
    .map_err(|e| flow_err("write-off", e))?;
    let text = format!(
        "SAM {}: entry seq {} written off ({} {} purse {} counter {}); the next settlement settles it as written off
",
        hex::encode_upper(d.sam_id),
        entry.seq,
        kind_name(entry.kind),
        money(u64::from(entry.amount), scheme.currency),
        hex::encode_upper(entry.purse_id),
        entry.counter
    );
    let mut e = entry_json(&entry);
    e["status"] = json!(status_name(sw_::status::WRITTEN_OFF));
    Ok(Out {
        json: json!({ "sam_id": hex::encode_upper(d.sam_id), "written_off": e }),
        text,
    })
}

/// Write the settlement record of a verified batch to
/// `DIR/<sam_id>-<last seq>-<batch MAC>.json` durably: temporary file, fsync, rename, then
/// fsync of the directory. Returns the file.
fn store_settlement(sdir: &Path, b: &flows::VerifiedBatch) -> CliResult<PathBuf> {
    std::fs::create_dir_all(sdir).map_err(|e| format!("cannot create {}: {e}", sdir.display()))?;
    let file = sdir.join(format!(
        "{}-{:08}-{}.json",
        hex::encode_upper(b.batch.sam_id),
        b.ack.last_seq,
        hex::encode_upper(b.batch.mac)
    ));
    let record = json!({
        "sam_id": hex::encode_upper(b.batch.sam_id),
        "last_seq": b.ack.last_seq,
        "batch_mac": hex::encode_upper(b.batch.mac),
        "batch_hex": hex::encode_upper(b.batch.encode()),
        "ack_hex": hex::encode_upper(b.ack.encode()),
        "batch_no": b.statement.totals.sums.batches,
        "statement_hex": hex::encode_upper(b.statement.encode()),
        "entries": b.settled.iter().map(entry_json).collect::<Vec<_>>(),
    });
    write_atomic(&file, serde_json::to_string_pretty(&record)?.as_bytes())?;
    #[cfg(unix)]
    std::fs::File::open(sdir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", sdir.display()))?;
    Ok(file)
}

/// Read back the settlement records of `sam_id` in `sdir` (files `<SAM ID>-*.json`).
/// Records written before settlement statements (no `statement_hex`) are skipped and
/// counted: they are outside the chain (the chain still shows any record missing after
/// them). The readable fields of a record must agree with its MACed batch and signed
/// statement, so nobody reads amounts the reconciliation did not check.
fn read_settlement_records(
    sdir: &Path,
    sam_id: &[u8; 4],
) -> CliResult<(Vec<flows::VerifiedBatch>, usize)> {
    let prefix = format!("{}-", hex::encode_upper(sam_id));
    let mut files: Vec<PathBuf> = match std::fs::read_dir(sdir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", sdir.display()).into()),
    };
    files.sort();
    let mut out = Vec::with_capacity(files.len());
    let mut skipped = 0;
    for f in files {
        let bad = |why: String| format!("settlement record {}: {why}", f.display());
        let text = std::fs::read_to_string(&f).map_err(|e| bad(e.to_string()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let field = |name: &str| -> CliResult<Vec<u8>> {
            let h = v[name].as_str().ok_or_else(|| {
                bad(format!(
                    "no {name:?} (written by a version before settlement statements?)"
                ))
            })?;
            Ok(hex::decode(h).map_err(|e| bad(format!("{name}: invalid hex: {e}")))?)
        };
        if v.get("statement_hex").is_none() && v.get("batch_hex").is_some() {
            skipped += 1;
            continue;
        }
        let batch =
            JournalBatch::decode(&field("batch_hex")?).map_err(|e| bad(format!("batch: {e}")))?;
        let ack =
            sw_::JournalAck::decode(&field("ack_hex")?).map_err(|e| bad(format!("ack: {e}")))?;
        let statement = sw_::SettlementStatement::decode(&field("statement_hex")?)
            .map_err(|e| bad(format!("statement: {e}")))?;
        let settled = batch.final_entries();
        let record = flows::VerifiedBatch {
            batch,
            ack,
            settled,
            statement,
        };
        for (name, want) in [
            ("sam_id", json!(hex::encode_upper(record.batch.sam_id))),
            ("last_seq", json!(record.ack.last_seq)),
            ("batch_mac", json!(hex::encode_upper(record.batch.mac))),
            ("batch_no", json!(record.statement.totals.sums.batches)),
            (
                "entries",
                json!(record.settled.iter().map(entry_json).collect::<Vec<_>>()),
            ),
        ] {
            if v[name] != want {
                return Err(bad(format!(
                    "{name:?} disagrees with the record's MACed batch and signed statement"
                ))
                .into());
            }
        }
        out.push(record);
    }
    Ok((out, skipped))
}

fn sam_reconcile(a: &SamReconcileArgs) -> CliResult<Out> {
    use tessera_host::flows::reconcile;
    let dir = &a.scheme;
    let scheme = Scheme::load(dir)?;
    let sam_id: [u8; 4] = parse_hex_n("--sam-id", &a.sam_id)?;
    let issuer_id: [u8; 4] = parse_hex_n("scheme.json issuer_sam_id", &scheme.issuer_sam_id)?;
    let [cert, ca] = read_scheme_files(
        dir,
        [
            &scheme.issuer_attestation_cert,
            &scheme.manufacturer_ca_cert,
        ],
        "issuer SAM attestation certificate",
        "settlement statements",
    )?;
    let key = reconcile::issuer_statement_key(&cert, &ca, &issuer_id, SystemTime::now())?;
    let (records, skipped) = read_settlement_records(&dir.join(SETTLEMENT_DIR), &sam_id)?;
    let (mut issuer, _) = scheme.open_issuer(dir, a.issuer_pin.as_deref())?;
    let mut nonce = [0u8; 16];
    tessera_crypto::rng::CardRng::from_entropy().fill(&mut nonce);
    let statement = SamClient::new(issuer.transport())
        .settlement_statement(&sam_id, &nonce)
        .map_err(|e| format!("issuer SAM: GET SETTLEMENT STATEMENT: {e}"))?;
    let r = reconcile::reconcile(&records, &statement, &nonce, &key, &issuer_id, &sam_id).map_err(
        |e| {
            format!(
                "reconciliation of SAM {} failed: {e}",
                hex::encode_upper(sam_id)
            )
        },
    )?;
    let unchecked = usize::try_from(r.pre_statement).unwrap_or(usize::MAX) + skipped;
    let mut text = format!(
        "SAM {}: {} settlement record(s) reconcile with the issuer SAM's signed statement
  purchases {} ({}), loads {} ({}), {} void
  written off: {} load(s) ({}), {} purchase(s) ({})
  settled up to seq {}, {} open
",
        hex::encode_upper(sam_id),
        r.sums.batches,
        r.sums.purchases,
        money(r.sums.purchases_total, scheme.currency),
        r.sums.loads,
        money(r.sums.loads_total, scheme.currency),
        r.sums.voids,
        r.sums.written_off_loads,
        money(r.sums.written_off_loads_total, scheme.currency),
        r.sums.written_off_purchases,
        money(r.sums.written_off_purchases_total, scheme.currency),
        r.hwm,
        r.open
    );
    if unchecked > 0 {
        let _ = writeln!(
            text,
            "  {unchecked} record(s) from before settlement statements not checked"
        );
    }
    Ok(Out {
        json: json!({ "reconciled": serde_json::to_value(&r)?, "unchecked_records": unchecked }),
        text,
    })
}

/// Select and unlock a SAM (`flows::open_sam`), its image saved after each command: a
/// wrong PIN's try counter, decremented on the chip before the comparison, is kept.
fn unlock_sam(
    t: &mut Target,
    what: &'static str,
    pin: &[u8],
) -> Result<tessera_sam::wire::SamData, FlowError> {
    flows::open_sam(&mut Durable { t, what }, pin)
}

/// A chip whose every command is durable at once, as on a chip: an image is saved after
/// each command (a reader needs nothing).
struct Durable<'a> {
    t: &'a mut Target,
    what: &'static str,
}

impl<'a> Durable<'a> {
    fn new(t: &'a mut Target, what: &'static str) -> Self {
        Durable { t, what }
    }
}

impl tessera_host::transport::Transport for Durable<'_> {
    fn transmit_raw(
        &mut self,
        apdu: &[u8],
    ) -> Result<Vec<u8>, tessera_host::transport::TransportError> {
        let r = self.t.transport().transmit_raw(apdu)?;
        // The command has run; only its durability failed. For the flows that is an
        // answer whose fate is unknown, like a link lost after the command: they recover
        // (and never read it as the chip's refusal).
        self.t.save().map_err(|e| {
            tessera_host::transport::TransportError::Lost(format!(
                "saving the {} image: {e}",
                self.what
            ))
        })?;
        Ok(r)
    }
    fn reset(&mut self) -> Result<Vec<u8>, tessera_host::transport::TransportError> {
        self.t.transport().reset()
    }
    fn atr(&mut self) -> Result<Vec<u8>, tessera_host::transport::TransportError> {
        self.t.transport().atr()
    }
}

/// One chip used in two roles by a flow (the issuer SAM settling its own journal).
struct Shared<'a>(std::rc::Rc<std::cell::RefCell<Durable<'a>>>);

impl tessera_host::transport::Transport for Shared<'_> {
    fn transmit_raw(
        &mut self,
        apdu: &[u8],
    ) -> Result<Vec<u8>, tessera_host::transport::TransportError> {
        self.0.borrow_mut().transmit_raw(apdu)
    }
    fn reset(&mut self) -> Result<Vec<u8>, tessera_host::transport::TransportError> {
        self.0.borrow_mut().reset()
    }
    fn atr(&mut self) -> Result<Vec<u8>, tessera_host::transport::TransportError> {
        self.0.borrow_mut().atr()
    }
}

// ------------------------------------------------------------------ demo

struct Demo {
    g: Global,
    report: Vec<Value>,
    step: usize,
}

impl Demo {
    fn show(&mut self, title: &str, out: &Out) {
        self.step += 1;
        if !self.g.json {
            println!("\n== {}. {title}", self.step);
            print!("{}", out.text);
        }
        self.report
            .push(json!({"step": title, "ok": true, "result": out.json}));
    }
    fn run(&mut self, title: &str, r: CliResult<Out>) -> CliResult<Out> {
        match r {
            Ok(out) => {
                self.show(title, &out);
                Ok(out)
            }
            Err(e) => {
                self.step += 1;
                if !self.g.json {
                    println!("\n== {}. {title}\n  FAILED: {e}", self.step);
                }
                Err(format!("demo step {:?} failed: {e}", title).into())
            }
        }
    }
}

fn demo(a: &DemoArgs, g: Global) -> CliResult {
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("tessera-demo-{}-{}", std::process::id(), now())),
    };
    if dir.join(SCHEME_FILE).exists() {
        return Err(format!(
            "{} already holds a scheme; give an empty --dir",
            dir.display()
        )
        .into());
    }
    let mut d = Demo {
        g,
        report: Vec::new(),
        step: 0,
    };
    if !g.json {
        println!("Tessera demo in {}", dir.display());
    }
    let scheme_dir = dir.join("scheme");
    let alice = dir.join("alice.card");
    let bob = dir.join("bob.card");
    let shop = dir.join("shop-sam.card");
    let journal_file = dir.join("shop-journal.json");
    let card_of = |p: &Path| TargetArgs {
        card: Some(p.to_path_buf()),
        reader: None,
    };
    let sam_of = |p: &Path| SamTargetArgs {
        sam: Some(p.to_path_buf()),
        sam_reader: None,
    };

    d.run(
        "scheme init: root CA, chip manufacturer CA and issuer SAM",
        scheme_init(&SchemeInitArgs {
            dir: scheme_dir.clone(),
            currency: 978,
            sam_pin: None,
            max_per_load: 0,
            max_per_day: 0,
        }),
    )?;
    let issue = |out: &Path, pin: Option<&str>| CardIssueArgs {
        scheme: scheme_dir.clone(),
        out: out.to_path_buf(),
        pin: pin.map(String::from),
        card_id: None,
        max_balance: 100_000,
        pin_threshold: None,
        log_size: 32,
        sam_pin: None,
        force: false,
    };
    d.run(
        "issue Alice's card (PIN 1234, needed above 20.00)",
        card_issue(&issue(&alice, Some("1234"))),
    )?;
    d.run("issue Bob's card (no PIN)", card_issue(&issue(&bob, None)))?;
    let shop_issued = d.run(
        "issue the shop's terminal SAM",
        sam_issue(&SamIssueArgs {
            scheme: scheme_dir.clone(),
            role: "terminal".into(),
            out: shop.clone(),
            pin: None,
            sam_id: None,
            max_per_day: 0,
            journal_capacity: 1000,
            sam_pin: None,
            force: false,
        }),
    )?;
    d.run(
        "load 50.00 onto Alice's card",
        load(&LoadArgs {
            scheme: scheme_dir.clone(),
            card: card_of(&alice),
            sam: SamTargetArgs::default(),
            amount: 5000,
            sam_pin: None,
        }),
    )?;
    let pay_args = |card: &Path, amount: u32, pin: Option<&str>| PayArgs {
        sam: sam_of(&shop),
        card: card_of(card),
        amount,
        pin: pin.map(String::from),
        terminal_id: Some("00000042".into()),
        sam_pin: None,
    };
    d.run(
        "Alice pays 12.50 at the shop",
        pay(&pay_args(&alice, 1250, None)),
    )?;
    // A refusal the demo expects: over the PIN threshold without the PIN.
    expect_refusal(
        &mut d,
        "Alice pays 25.00 without her PIN (expected refusal)",
        pay(&pay_args(&alice, 2500, None)),
        "PIN required",
    )?;
    d.run(
        "Alice pays 25.00 with her PIN",
        pay(&pay_args(&alice, 2500, Some("1234"))),
    )?;
    expect_refusal(
        &mut d,
        "Bob pays 1.00 from an empty purse (expected refusal)",
        pay(&pay_args(&bob, 100, None)),
        "insufficient funds",
    )?;
    let a_show = d.run(
        "Alice's purse",
        purse_show(&PurseViewArgs {
            card: card_of(&alice),
        }),
    )?;
    let b_show = d.run(
        "Bob's purse",
        purse_show(&PurseViewArgs {
            card: card_of(&bob),
        }),
    )?;
    d.run(
        "Alice's log",
        purse_log(&PurseViewArgs {
            card: card_of(&alice),
        }),
    )?;
    let settled = d.run(
        "export and settle the shop's journal",
        sam_journal(&SamJournalArgs {
            target: sam_of(&shop),
            sam_pin: None,
            export: Some(journal_file.clone()),
            settle: true,
            scheme: Some(scheme_dir.clone()),
            issuer_pin: None,
        }),
    )?;
    let shop_id = shop_issued.json["sam_id"]
        .as_str()
        .ok_or("the shop SAM's ID is missing from `sam issue`")?
        .to_string();
    let reconciled = d.run(
        "reconcile the settlement records with the issuer SAM's signed statement",
        sam_reconcile(&SamReconcileArgs {
            scheme: scheme_dir.clone(),
            sam_id: shop_id,
            issuer_pin: None,
        }),
    )?;

    // The value rules, checked on what the chips say.
    let mut problems = Vec::new();
    if a_show.json["balance"] != json!(5000 - 1250 - 2500) {
        problems.push(format!(
            "Alice's balance is {}, expected 1250",
            a_show.json["balance"]
        ));
    }
    if b_show.json["balance"] != json!(0) {
        problems.push(format!(
            "Bob's balance is {}, expected 0",
            b_show.json["balance"]
        ));
    }
    if settled.json["settlement"]["purchases_total"] != json!(3750) {
        problems.push(format!(
            "settled purchases {} differ from the 37.50 paid",
            settled.json["settlement"]["purchases_total"]
        ));
    }
    if reconciled.json["reconciled"]["purchases_total"] != json!(3750) {
        problems.push(format!(
            "the issuer SAM's statement shows purchases of {}, not the 37.50 paid",
            reconciled.json["reconciled"]["purchases_total"]
        ));
    }
    let ok = problems.is_empty();
    if g.json {
        println!(
            "{}",
            json!({"dir": dir.display().to_string(), "ok": ok, "steps": d.report, "problems": problems})
        );
    } else {
        println!("\n== checks");
        println!(
            "  loads 50.00 - payments 37.50 = Alice's balance 12.50: {}",
            if ok { "ok" } else { "FAILED" }
        );
        println!(
            "  shop journal settled 37.50 of purchases: {}",
            if ok { "ok" } else { "FAILED" }
        );
        println!(
            "  settlement records = the issuer SAM's signed totals: {}",
            if ok { "ok" } else { "FAILED" }
        );
        for p in &problems {
            println!("  problem: {p}");
        }
        println!("\nfiles: {}", dir.display());
    }
    if ok {
        Ok(())
    } else {
        Err(format!("demo checks failed: {}", problems.join("; ")).into())
    }
}

fn expect_refusal(d: &mut Demo, title: &str, r: CliResult<Out>, reason: &str) -> CliResult {
    match r {
        Err(e) if e.to_string().contains(reason) => {
            let out = Out {
                json: json!({"refused": e.to_string()}),
                text: format!("  refused as expected: {e}\n"),
            };
            d.show(title, &out);
            Ok(())
        }
        Err(e) => Err(format!("demo step {title:?}: refused for the wrong reason: {e}").into()),
        Ok(_) => {
            Err(format!("demo step {title:?}: was accepted but should have been refused").into())
        }
    }
}
