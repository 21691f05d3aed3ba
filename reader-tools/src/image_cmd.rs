//! `tessera image new|info`: create and inspect card images.

use crate::{CliResult, Global};
use std::path::PathBuf;
use tessera_os::{Card, CardProfile, Interface, Privileges};

#[derive(clap::Subcommand, Debug)]
pub enum ImageCmd {
    /// Create a card image with diagnostic applet instances, for tests and `serve`.
    New(NewArgs),
    /// Show a card image: profile, ATR, instances, life cycle, memory.
    Info(InfoArgs),
}

#[derive(clap::Args, Debug)]
pub struct NewArgs {
    /// The image file to create.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Contactless card (the ATR is the PC/SC part 3 ATR built from the ATS historical
    /// bytes).
    #[arg(long)]
    pub contactless: bool,
    /// Card identifier, hex.
    #[arg(long, value_name = "HEX")]
    pub card_id: Option<String>,
    /// ATR (or ATS) historical bytes, hex, at most 15 bytes.
    #[arg(long, value_name = "HEX")]
    pub historical: Option<String>,
    /// A complete ATR overriding the built one, hex.
    #[arg(long, value_name = "HEX")]
    pub atr: Option<String>,
    /// Applet instances to install: `diag` (AID F054455353 0101), `diag-multi` (…0102).
    /// Default: both.
    #[arg(long, value_name = "NAME")]
    pub applet: Vec<String>,
    /// Make the first instance default-selected.
    #[arg(long)]
    pub default_selected: bool,
    /// Memory quota in bytes.
    #[arg(long)]
    pub memory: Option<usize>,
    /// Replace an existing image.
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// The image file.
    pub file: PathBuf,
}

fn hex_arg(name: &str, v: &str) -> CliResult<Vec<u8>> {
    tessera_apdu::parse_hex(v).map_err(|e| format!("--{name}: {e}").into())
}

pub fn run(c: ImageCmd, g: Global) -> CliResult {
    match c {
        ImageCmd::New(a) => new(a, g),
        ImageCmd::Info(a) => info(a, g),
    }
}

fn new(a: NewArgs, g: Global) -> CliResult {
    if a.out.exists() && !a.force {
        return Err(format!("{} exists; use --force to replace it", a.out.display()).into());
    }
    let mut profile = CardProfile::default();
    if a.contactless {
        profile.interface = Interface::Contactless;
    }
    if let Some(id) = &a.card_id {
        let id = hex_arg("card-id", id)?;
        if id.is_empty() || id.len() > 16 {
            return Err("--card-id must be 1 to 16 bytes".into());
        }
        profile.card_id = id;
    }
    if let Some(h) = &a.historical {
        let h = hex_arg("historical", h)?;
        if h.len() > 15 {
            return Err(
                format!("--historical: {} bytes, at most 15 fit in an ATR", h.len()).into(),
            );
        }
        profile.historical_bytes = h;
    }
    if let Some(atr) = &a.atr {
        let atr = hex_arg("atr", atr)?;
        if atr.len() < 2 || atr.len() > 33 {
            return Err("--atr must be 2 to 33 bytes".into());
        }
        profile.atr = Some(atr);
    }
    if let Some(m) = a.memory {
        profile.memory_quota = m;
    }
    let mut card = Card::builder()
        .profile(profile)
        .load_files(crate::applets::load_files())
        .build();
    let applets = if a.applet.is_empty() {
        vec!["diag".to_string(), "diag-multi".to_string()]
    } else {
        a.applet.clone()
    };
    let mut installed = Vec::new();
    for (i, name) in applets.iter().enumerate() {
        let aid = match name.as_str() {
            "diag" => tessera_os::diag::INSTANCE_AID,
            "diag-multi" => tessera_os::diag::MULTI_INSTANCE_AID,
            other => {
                return Err(format!(
                    "unknown applet {other:?}: this command installs diag, diag-multi"
                )
                .into());
            }
        };
        let privileges = Privileges {
            default_selected: a.default_selected && i == 0,
            ..Default::default()
        };
        card.install(name, &aid, privileges, &[])
            .map_err(|e| format!("install {name}: {e}"))?;
        installed.push(hex::encode_upper(aid));
    }
    if a.force && a.out.exists() {
        std::fs::remove_file(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    }
    card.save_image(&a.out)
        .map_err(|e| format!("cannot write {}: {e}", a.out.display()))?;
    if g.json {
        println!(
            "{}",
            serde_json::json!({ "image": a.out.display().to_string(), "atr": hex::encode_upper(card.atr()), "instances": installed })
        );
    } else {
        println!(
            "created {} (ATR {})",
            a.out.display(),
            hex::encode_upper(card.atr())
        );
        for aid in installed {
            println!("  instance {aid}");
        }
    }
    Ok(())
}

fn info(a: InfoArgs, g: Global) -> CliResult {
    let card = Card::open_image(&a.file, crate::applets::load_files())
        .map_err(|e| format!("cannot open card image {}: {e}", a.file.display()))?;
    let p = card.profile();
    let mem = card.memory();
    let instances: Vec<serde_json::Value> = card
        .instances()
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "aid": hex::encode_upper(&r.aid),
                "load_file": r.load_file,
                "state": format!("{:?}", r.state),
                "default_selected": r.privileges.default_selected,
                "card_lock": r.privileges.card_lock,
                "card_terminate": r.privileges.card_terminate,
            })
        })
        .collect();
    let v = serde_json::json!({
        "file": a.file.display().to_string(),
        "card_id": hex::encode_upper(&p.card_id),
        "interface": format!("{:?}", p.interface),
        "historical_bytes": hex::encode_upper(&p.historical_bytes),
        "atr": hex::encode_upper(card.atr()),
        "atr_override": p.atr.is_some(),
        "life_cycle": format!("{:?}", card.life_cycle()),
        "max_channels": p.max_channels,
        "t0_get_response": p.t0_get_response,
        "memory": mem,
        "instances": instances,
    });
    if g.json {
        println!("{v}");
        return Ok(());
    }
    println!("image       {}", a.file.display());
    println!("card id     {}", hex::encode_upper(&p.card_id));
    println!("interface   {:?}", p.interface);
    println!(
        "ATR         {}{}",
        hex::encode_upper(card.atr()),
        if p.atr.is_some() { " (fixed)" } else { "" }
    );
    println!("historical  {}", hex::encode_upper(&p.historical_bytes));
    println!("life cycle  {:?}", card.life_cycle());
    println!("channels    {}", p.max_channels);
    println!(
        "memory      {} of {} bytes used ({} free, peak {}), {} records, log {} bytes",
        mem.used, mem.quota, mem.free, mem.peak, mem.records, mem.log_bytes
    );
    println!("instances   {}", card.instances().len());
    for r in card.instances() {
        println!(
            "  {}  {}  {:?}{}",
            hex::encode_upper(&r.aid),
            r.load_file,
            r.state,
            if r.privileges.default_selected {
                "  default-selected"
            } else {
                ""
            }
        );
    }
    Ok(())
}
