//! The card: power, APDU dispatch, selection, logical channels, chaining, GET RESPONSE,
//! life cycle, installation.

use crate::applet::{
    AppState, Applet, Context, Interface, InstanceSlot, LoadFile, OsRequests, Privileges,
    Transient, store_sw,
};
use crate::atr;
use crate::store::{MemoryUsage, Store, TearPlan};
use serde::{Deserialize, Serialize};
use std::panic::{AssertUnwindSafe, catch_unwind};
use tessera_apdu::{ClassByte, Command, Response, Sw, tlv::Tlv};
use tessera_crypto::rng::CardRng;

/// OS namespace in the store.
const OS_NS: u16 = 0;
const KEY_STATE: &[u8] = b"state";
const KEY_POWER: &[u8] = b"power";
const KEY_INST: &[u8] = b"inst/";

/// INS codes handled by the OS.
pub const INS_SELECT: u8 = 0xA4;
pub const INS_MANAGE_CHANNEL: u8 = 0x70;
pub const INS_GET_RESPONSE: u8 = 0xC0;

/// Largest command data the OS assembles from a chain.
pub const MAX_CHAIN_DATA: usize = 65_535;

/// Card life cycle (GlobalPlatform).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CardState {
    OpReady,
    Initialized,
    Secured,
    CardLocked,
    Terminated,
}

impl CardState {
    pub fn gp_byte(self) -> u8 {
        match self {
            CardState::OpReady => 0x01,
            CardState::Initialized => 0x07,
            CardState::Secured => 0x0F,
            CardState::CardLocked => 0x7F,
            CardState::Terminated => 0xFF,
        }
    }
    pub fn from_gp_byte(b: u8) -> Option<CardState> {
        Some(match b {
            0x01 => CardState::OpReady,
            0x07 => CardState::Initialized,
            0x0F => CardState::Secured,
            0x7F => CardState::CardLocked,
            0xFF => CardState::Terminated,
            _ => return None,
        })
    }
}

/// The persistent description of one applet instance (stored in the OS namespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub ns: u16,
    pub load_file: String,
    pub aid: Vec<u8>,
    pub privileges: Privileges,
    pub state: AppState,
}

/// Static properties of a card, chosen when it is created and kept in its image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardProfile {
    /// Unique card identifier (the diversification input for card keys).
    pub card_id: Vec<u8>,
    /// Interface the card is powered on through.
    pub interface: Interface,
    /// ATR historical bytes (contactless: the ATS historical bytes).
    pub historical_bytes: Vec<u8>,
    /// A complete ATR overriding the one built from the historical bytes.
    pub atr: Option<Vec<u8>>,
    /// Non-volatile memory quota in bytes.
    pub memory_quota: usize,
    /// Number of logical channels supported (1 to 20).
    pub max_channels: u8,
    /// Fixed randomness seed for reproducible traces (tests only).
    pub rng_seed: Option<[u8; 32]>,
    /// Answer 61xx instead of data when Le is absent (T=0 style).
    pub t0_get_response: bool,
}

impl Default for CardProfile {
    fn default() -> Self {
        CardProfile {
            card_id: vec![0x04, 0x54, 0x45, 0x53, 0x53, 0x52, 0x41],
            interface: Interface::Contact,
            historical_bytes: atr::DEFAULT_HISTORICAL.to_vec(),
            atr: None,
            memory_quota: 64 * 1024,
            max_channels: 20,
            rng_seed: None,
            t0_get_response: true,
        }
    }
}

/// Errors seen by a program that drives the card.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    #[error("the card is not powered")]
    NotPowered,
    #[error("power was cut (tearing); the card is off and answers nothing until power-on")]
    PowerLost,
}

/// Errors of administrative operations (installation, life cycle, images).
#[derive(Debug, thiserror::Error)]
pub enum OsError {
    #[error("no load file named {0:?} is compiled into this program")]
    UnknownLoadFile(String),
    #[error("AID {0} is already used by another instance")]
    AidInUse(String),
    #[error("AID must be 5 to 16 bytes, got {0}")]
    BadAid(usize),
    #[error("no instance with AID {0}")]
    NoSuchInstance(String),
    #[error("the applet refused installation with status {0}")]
    InstallRefused(Sw),
    #[error("not enough card memory")]
    NotEnoughMemory,
    #[error("too many instances")]
    TooManyInstances,
    #[error("life cycle transition {from:?} -> {to:?} is not allowed")]
    BadTransition { from: String, to: String },
    #[error("stored OS record is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Card(#[from] CardError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
}

#[derive(Debug, Default)]
struct OutBuf {
    data: Vec<u8>,
    pos: usize,
}

#[derive(Debug)]
struct Chain {
    header: [u8; 3],
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct Channel {
    selected: Option<usize>,
    out: Option<OutBuf>,
    chain: Option<Chain>,
}

/// One emulated smart card. Many independent cards can live in one process: a card has
/// no global state.
pub struct Card {
    profile: CardProfile,
    load_files: Vec<LoadFile>,
    store: Store,
    instances: Vec<InstanceSlot>,
    channels: Vec<Option<Channel>>,
    powered: bool,
    rng: CardRng,
    life: CardState,
    commands: u64,
}

/// Builder for [`Card`].
pub struct CardBuilder {
    profile: CardProfile,
    load_files: Vec<LoadFile>,
}

impl CardBuilder {
    pub fn profile(mut self, p: CardProfile) -> Self {
        self.profile = p;
        self
    }
    pub fn card_id(mut self, id: impl Into<Vec<u8>>) -> Self {
        self.profile.card_id = id.into();
        self
    }
    pub fn interface(mut self, i: Interface) -> Self {
        self.profile.interface = i;
        self
    }
    pub fn memory_quota(mut self, q: usize) -> Self {
        self.profile.memory_quota = q;
        self
    }
    pub fn seed(mut self, seed: [u8; 32]) -> Self {
        self.profile.rng_seed = Some(seed);
        self
    }
    pub fn historical_bytes(mut self, h: impl Into<Vec<u8>>) -> Self {
        self.profile.historical_bytes = h.into();
        self
    }
    pub fn load_file(mut self, lf: LoadFile) -> Self {
        self.load_files.push(lf);
        self
    }
    pub fn load_files(mut self, lfs: impl IntoIterator<Item = LoadFile>) -> Self {
        self.load_files.extend(lfs);
        self
    }
    pub fn build(self) -> Card {
        Card::from_parts(self.profile, self.load_files, Store::new(0))
    }
}

fn inst_key(ns: u16) -> Vec<u8> {
    let mut k = KEY_INST.to_vec();
    k.extend_from_slice(&ns.to_be_bytes());
    k
}

impl Card {
    pub fn builder() -> CardBuilder {
        CardBuilder {
            profile: CardProfile::default(),
            load_files: Vec::new(),
        }
    }

    pub(crate) fn from_parts(profile: CardProfile, load_files: Vec<LoadFile>, mut store: Store) -> Card {
        let quota = profile.memory_quota;
        if store.quota() != quota {
            store = Store::from_log(store.snapshot_log(), quota);
        }
        let rng = match profile.rng_seed {
            Some(seed) => CardRng::from_seed(seed),
            None => CardRng::from_entropy(),
        };
        let channels = (0..profile.max_channels.clamp(1, 20)).map(|_| None).collect();
        let mut card = Card {
            profile,
            load_files,
            store,
            instances: Vec::new(),
            channels,
            powered: false,
            rng,
            life: CardState::OpReady,
            commands: 0,
        };
        card.reload_os_state();
        card
    }

    /// Rebuild RAM state (life cycle, instances, applet objects) from the store.
    fn reload_os_state(&mut self) {
        self.life = self
            .store
            .get(OS_NS, KEY_STATE)
            .and_then(|v| v.first().copied())
            .and_then(CardState::from_gp_byte)
            .unwrap_or(CardState::OpReady);
        let mut slots = Vec::new();
        for k in self.store.keys_with_prefix(OS_NS, KEY_INST) {
            let Some(raw) = self.store.get(OS_NS, &k) else { continue };
            let Ok(rec) = postcard::from_bytes::<InstanceRecord>(raw) else {
                tracing::error!(key = %hex::encode(&k), "corrupt instance record skipped");
                continue;
            };
            let applet = self
                .load_files
                .iter()
                .find(|l| l.name == rec.load_file)
                .map(|l| (l.create)());
            if applet.is_none() {
                tracing::error!(load_file = %rec.load_file, "instance of unknown load file is not available");
            }
            slots.push(InstanceSlot {
                record: rec,
                applet,
                transient: Transient::default(),
                pins_validated: Default::default(),
            });
        }
        self.instances = slots;
    }

    /// Load files (applet types) known to this card.
    pub fn load_files(&self) -> &[LoadFile] {
        &self.load_files
    }

    /// Instances installed, in installation order.
    pub fn instances(&self) -> Vec<InstanceRecord> {
        self.instances.iter().map(|s| s.record.clone()).collect()
    }

    /// Load files named in this card's memory that this program does not provide.
    pub fn missing_load_files(&self) -> Vec<String> {
        self.instances
            .iter()
            .filter(|s| s.applet.is_none())
            .map(|s| s.record.load_file.clone())
            .collect()
    }

    pub fn profile(&self) -> &CardProfile {
        &self.profile
    }

    pub fn card_id(&self) -> &[u8] {
        &self.profile.card_id
    }

    pub fn life_cycle(&self) -> CardState {
        self.life
    }

    pub fn memory(&self) -> MemoryUsage {
        self.store.usage()
    }

    pub fn is_powered(&self) -> bool {
        self.powered
    }

    /// Number of APDUs processed since creation in this process.
    pub fn commands_processed(&self) -> u64 {
        self.commands
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The raw store, for tests that check memory against its log.
    pub fn store_consistent(&self) -> bool {
        self.store.consistent_with_log()
    }

    /// The ATR this card answers.
    pub fn atr(&self) -> Vec<u8> {
        match &self.profile.atr {
            Some(a) => a.clone(),
            None => atr::build(&self.profile.historical_bytes),
        }
    }

    /// Cold reset: power on, replay memory, reselect the default instance. Returns the ATR.
    pub fn power_on(&mut self) -> Vec<u8> {
        self.store.power_up();
        self.reload_os_state();
        if let Some(seed) = self.profile.rng_seed {
            // Deterministic, but a new stream for every power-on.
            let n = self
                .store
                .get(OS_NS, KEY_POWER)
                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0)
                .wrapping_add(1);
            let _ = self.store.put_immediate(OS_NS, KEY_POWER, &n.to_be_bytes());
            let mut s = seed;
            for (b, c) in s.iter_mut().rev().zip(n.to_le_bytes()) {
                *b ^= c;
            }
            self.rng = CardRng::from_seed(s);
        }
        self.powered = true;
        self.reset_channels();
        tracing::debug!(target: "tessera::apdu", atr = %hex::encode_upper(self.atr()), "power on");
        self.atr()
    }

    /// Warm reset: transient memory and selections cleared, memory kept. Returns the ATR.
    pub fn reset(&mut self) -> Vec<u8> {
        if !self.powered {
            return self.power_on();
        }
        self.store.rollback();
        for slot in &mut self.instances {
            slot.applet = self
                .load_files
                .iter()
                .find(|l| l.name == slot.record.load_file)
                .map(|l| (l.create)());
        }
        self.reset_channels();
        tracing::debug!(target: "tessera::apdu", "warm reset");
        self.atr()
    }

    /// Power off: everything in RAM is lost.
    pub fn power_off(&mut self) {
        self.powered = false;
        self.store.rollback();
        self.store.disarm_tear();
        for c in &mut self.channels {
            *c = None;
        }
        for slot in &mut self.instances {
            slot.transient = Transient::default();
            slot.pins_validated.clear();
        }
        tracing::debug!(target: "tessera::apdu", "power off");
    }

    fn reset_channels(&mut self) {
        for c in &mut self.channels {
            *c = None;
        }
        for slot in &mut self.instances {
            slot.transient = Transient::default();
            slot.pins_validated.clear();
        }
        if let Some(c) = self.channels.first_mut() {
            *c = Some(Channel::default());
        }
        // Implicit selection of the default instance on the basic channel.
        if self.life != CardState::Terminated
            && self.life != CardState::CardLocked
            && let Some(idx) = self
                .instances
                .iter()
                .position(|s| s.record.privileges.default_selected && s.record.state == AppState::Selectable)
        {
            let _ = self.run_select(idx, 0);
        }
    }

    /// Arm the tearing hook for the next commands (see [`TearPlan`]).
    pub fn arm_tear(&mut self, plan: TearPlan) {
        self.store.arm_tear(plan);
    }

    /// Total bytes written to the card's NVM so far (tearing tests walk 0..this delta).
    pub fn nvm_bytes_written(&self) -> u64 {
        self.store.nvm().bytes_written()
    }

    fn cut_power(&mut self) {
        self.power_off();
        tracing::warn!(target: "tessera::apdu", "power cut (tearing)");
    }

    /// Send a command APDU and get the response bytes (data + SW).
    pub fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, CardError> {
        self.process(apdu).map(|r| r.to_bytes())
    }

    /// Send a command given as hex text (a convenience for tests and examples).
    pub fn transmit_hex(&mut self, hex_apdu: &str) -> Result<Response, CardError> {
        match tessera_apdu::parse_hex(hex_apdu) {
            Ok(bytes) => self.process(&bytes),
            Err(_) => Ok(Response::status(Sw::WRONG_LENGTH)),
        }
    }

    /// Send a typed command.
    pub fn transmit_command(&mut self, cmd: &Command) -> Result<Response, CardError> {
        match cmd.to_bytes() {
            Ok(b) => self.process(&b),
            Err(_) => Ok(Response::status(Sw::WRONG_LENGTH)),
        }
    }

    /// Process one APDU.
    pub fn process(&mut self, apdu: &[u8]) -> Result<Response, CardError> {
        if !self.powered {
            return Err(CardError::NotPowered);
        }
        self.commands += 1;
        let result = self.dispatch(apdu);
        match &result {
            Ok(r) => tracing::debug!(
                target: "tessera::apdu",
                cla = apdu.first().copied().unwrap_or(0),
                ins = apdu.get(1).copied().unwrap_or(0),
                p1 = apdu.get(2).copied().unwrap_or(0),
                p2 = apdu.get(3).copied().unwrap_or(0),
                command = %hex::encode_upper(apdu),
                response = %hex::encode_upper(&r.data),
                sw = %r.sw,
                meaning = r.sw.description(),
                "apdu"
            ),
            Err(e) => tracing::debug!(target: "tessera::apdu", command = %hex::encode_upper(apdu), error = %e, "apdu"),
        }
        result
    }

    fn dispatch(&mut self, apdu: &[u8]) -> Result<Response, CardError> {
        let cmd = match Command::parse_sw(apdu) {
            Ok(c) => c,
            Err(sw) => return Ok(Response::status(sw)),
        };
        let class = match cmd.class() {
            Ok(c) => c,
            Err(sw) => return Ok(Response::status(sw)),
        };
        let ch = class.channel as usize;
        if self.channels.get(ch).is_none_or(|c| c.is_none()) {
            return Ok(Response::status(Sw::LOGICAL_CHANNEL_NOT_SUPPORTED));
        }
        if self.life == CardState::Terminated {
            return Ok(Response::status(Sw::CONDITIONS_NOT_SATISFIED));
        }

        // GET RESPONSE (interindustry class only).
        if cmd.ins == INS_GET_RESPONSE && !class.proprietary {
            return Ok(self.get_response(ch, &cmd));
        }
        if let Some(Some(c)) = self.channels.get_mut(ch) {
            c.out = None;
        }

        // Command chaining.
        let (cmd, header) = match self.chain(ch, &class, cmd) {
            ChainStep::Done(r) => return Ok(r),
            ChainStep::Process(cmd, header) => (cmd, header),
        };
        let _ = header;

        let interindustry = !class.proprietary;
        let result = if interindustry && cmd.ins == INS_MANAGE_CHANNEL {
            self.manage_channel(ch, &cmd)
        } else if interindustry && cmd.ins == INS_SELECT && cmd.p1 == 0x04 {
            self.select_by_name(ch, &cmd)
        } else {
            self.to_applet(ch, &cmd)
        };
        let resp = result?;
        Ok(self.shape_response(ch, &cmd, resp))
    }

    fn chain(&mut self, ch: usize, class: &ClassByte, mut cmd: Command) -> ChainStep {
        let Some(Some(channel)) = self.channels.get_mut(ch) else {
            return ChainStep::Done(Response::status(Sw::LOGICAL_CHANNEL_NOT_SUPPORTED));
        };
        let header = [cmd.ins, cmd.p1, cmd.p2];
        if class.chained {
            if cmd.le.is_some() && cmd.data.is_empty() {
                channel.chain = None;
                return ChainStep::Done(Response::status(Sw::WRONG_LENGTH));
            }
            match &mut channel.chain {
                Some(chain) if chain.header == header => {
                    if chain.data.len() + cmd.data.len() > MAX_CHAIN_DATA {
                        channel.chain = None;
                        return ChainStep::Done(Response::status(Sw::WRONG_LENGTH));
                    }
                    chain.data.extend_from_slice(&cmd.data);
                }
                Some(_) => {
                    channel.chain = None;
                    return ChainStep::Done(Response::status(Sw::LAST_COMMAND_EXPECTED));
                }
                None => {
                    channel.chain = Some(Chain {
                        header,
                        data: cmd.data,
                    });
                }
            }
            return ChainStep::Done(Response::status(Sw::OK));
        }
        if let Some(chain) = channel.chain.take() {
            if chain.header != header {
                return ChainStep::Done(Response::status(Sw::LAST_COMMAND_EXPECTED));
            }
            if chain.data.len() + cmd.data.len() > MAX_CHAIN_DATA {
                return ChainStep::Done(Response::status(Sw::WRONG_LENGTH));
            }
            let mut data = chain.data;
            data.extend_from_slice(&cmd.data);
            cmd.data = data;
        }
        cmd.cla = class.without_chaining();
        ChainStep::Process(cmd, header)
    }

    fn get_response(&mut self, ch: usize, cmd: &Command) -> Response {
        let Some(Some(channel)) = self.channels.get_mut(ch) else {
            return Response::status(Sw::LOGICAL_CHANNEL_NOT_SUPPORTED);
        };
        channel.chain = None;
        if cmd.p1 != 0 || cmd.p2 != 0 {
            return Response::status(Sw::INCORRECT_P1P2);
        }
        let Some(out) = channel.out.as_mut() else {
            return Response::status(Sw::CONDITIONS_NOT_SATISFIED);
        };
        let remaining = out.data.len().saturating_sub(out.pos);
        let le = cmd.le.unwrap_or(256);
        if remaining < le && !cmd.extended && le != 256 {
            return Response::status(Sw::wrong_le(remaining));
        }
        let n = le.min(remaining);
        let chunk = out.data.get(out.pos..out.pos + n).unwrap_or(&[]).to_vec();
        out.pos += n;
        let left = remaining - n;
        if left == 0 {
            channel.out = None;
            Response::ok(chunk)
        } else {
            Response {
                data: chunk,
                sw: Sw::bytes_remaining(left),
            }
        }
    }

    /// Apply Le to a successful response: 61xx when more data waits for GET RESPONSE,
    /// 6Cxx for a wrong short Le in case 2.
    fn shape_response(&mut self, ch: usize, cmd: &Command, resp: Response) -> Response {
        if resp.sw != Sw::OK || resp.data.is_empty() {
            return resp;
        }
        let len = resp.data.len();
        let buffer = |channel: &mut Option<Channel>, data: Vec<u8>, pos: usize| {
            if let Some(c) = channel.as_mut() {
                c.out = Some(OutBuf { data, pos });
            }
        };
        match cmd.le {
            None => {
                if self.profile.t0_get_response {
                    if let Some(c) = self.channels.get_mut(ch) {
                        buffer(c, resp.data, 0);
                    }
                    Response::status(Sw::bytes_remaining(len))
                } else {
                    resp
                }
            }
            Some(le) if len > le => {
                let first = resp.data.get(..le).unwrap_or(&[]).to_vec();
                let left = len - le;
                if let Some(c) = self.channels.get_mut(ch) {
                    buffer(c, resp.data, le);
                }
                Response {
                    data: first,
                    sw: Sw::bytes_remaining(left),
                }
            }
            Some(le) if len < le && cmd.case() == 2 && !cmd.extended && le != 256 => {
                // The card keeps nothing for a re-issued command: applets are expected to
                // be idempotent for case-2 reads, which the 6Cxx protocol requires.
                Response::status(Sw::wrong_le(len))
            }
            Some(_) => resp,
        }
    }

    fn selectable_on(&self, idx: usize, ch: usize) -> Result<(), Sw> {
        let slot = self.instances.get(idx).ok_or(Sw::FILE_NOT_FOUND)?;
        if slot.record.state != AppState::Selectable || slot.applet.is_none() {
            return Err(Sw::FILE_NOT_FOUND);
        }
        let multi = self
            .load_files
            .iter()
            .find(|l| l.name == slot.record.load_file)
            .is_some_and(|l| l.multi_selectable);
        if !multi {
            let elsewhere = self
                .channels
                .iter()
                .enumerate()
                .any(|(i, c)| i != ch && c.as_ref().is_some_and(|c| c.selected == Some(idx)));
            if elsewhere {
                return Err(Sw::CONDITIONS_NOT_SATISFIED);
            }
        }
        Ok(())
    }

    fn select_by_name(&mut self, ch: usize, cmd: &Command) -> Result<Response, CardError> {
        if self.life == CardState::CardLocked {
            return Ok(Response::status(Sw::FILE_NOT_FOUND));
        }
        if cmd.data.len() > 16 {
            return Ok(Response::status(Sw::WRONG_LENGTH));
        }
        // P2: b1-b2 occurrence (00 first, 02 next), b3-b4 response (00 FCI, 0C none).
        let occurrence = cmd.p2 & 0x03;
        let option = cmd.p2 & 0x0C;
        if cmd.p2 & 0xF0 != 0 || !(option == 0x00 || option == 0x0C) {
            return Ok(Response::status(Sw::INCORRECT_P1P2));
        }
        if occurrence == 0x01 || occurrence == 0x03 {
            return Ok(Response::status(Sw::FUNCTION_NOT_SUPPORTED));
        }
        let current = self.channels.get(ch).and_then(|c| c.as_ref()).and_then(|c| c.selected);
        let start = if occurrence == 0x02 {
            match current {
                Some(i) if self.instances.get(i).is_some_and(|s| s.record.aid.starts_with(&cmd.data)) => i + 1,
                _ => 0,
            }
        } else {
            0
        };
        let found = (start..self.instances.len()).find(|&i| {
            self.instances
                .get(i)
                .is_some_and(|s| s.record.aid.starts_with(&cmd.data) && s.record.state == AppState::Selectable && s.applet.is_some())
        });
        let Some(idx) = found else {
            return Ok(Response::status(Sw::FILE_NOT_FOUND));
        };
        if current != Some(idx)
            && let Err(sw) = self.selectable_on(idx, ch)
        {
            return Ok(Response::status(sw));
        }
        // Deselect the previous instance on this channel.
        if let Some(prev) = current {
            self.run_deselect(prev, ch);
        }
        match self.run_select(idx, ch)? {
            Ok(proprietary) => {
                if option == 0x0C {
                    return Ok(Response::ok(Vec::new()));
                }
                let aid = self.instances.get(idx).map(|s| s.record.aid.clone()).unwrap_or_default();
                let mut children = vec![Tlv::new(0x84, aid)];
                if !proprietary.is_empty() {
                    children.push(Tlv::new(0xA5, proprietary));
                }
                Ok(Response::ok(Tlv::constructed(0x6F, &children).to_bytes()))
            }
            Err(sw) => Ok(Response::status(sw)),
        }
    }

    /// Run an instance's `select` on a channel inside a transaction. On success the
    /// channel's selection is the instance; on refusal the channel has no selection.
    fn run_select(&mut self, idx: usize, ch: usize) -> Result<Result<Vec<u8>, Sw>, CardError> {
        if let Some(Some(c)) = self.channels.get_mut(ch) {
            c.selected = None;
        }
        let r = self.with_applet(idx, ch, |applet, ctx| applet.select(ctx))?;
        let r = match r {
            Err(sw) if sw == Sw::UNKNOWN => Err(Sw(0x6999)),
            other => other,
        };
        if r.is_ok()
            && let Some(Some(c)) = self.channels.get_mut(ch)
        {
            c.selected = Some(idx);
        }
        Ok(r)
    }

    fn run_deselect(&mut self, idx: usize, ch: usize) {
        if let Some(Some(c)) = self.channels.get_mut(ch) {
            c.selected = None;
        }
        let _ = self.with_applet(idx, ch, |applet, ctx| {
            applet.deselect(ctx);
            Ok(Vec::new())
        });
        let still = self
            .channels
            .iter()
            .any(|c| c.as_ref().is_some_and(|c| c.selected == Some(idx)));
        if !still && let Some(slot) = self.instances.get_mut(idx) {
            slot.transient.on_deselect.clear();
            slot.pins_validated.clear();
        }
    }

    fn manage_channel(&mut self, ch: usize, cmd: &Command) -> Result<Response, CardError> {
        if !cmd.data.is_empty() {
            return Ok(Response::status(Sw::WRONG_LENGTH));
        }
        match cmd.p1 {
            0x00 => {
                // Open.
                let target = if cmd.p2 == 0 {
                    match (1..self.channels.len()).find(|&i| self.channels.get(i).is_some_and(|c| c.is_none())) {
                        Some(t) => t,
                        None => return Ok(Response::status(Sw::LOGICAL_CHANNEL_NOT_SUPPORTED)),
                    }
                } else {
                    let t = cmd.p2 as usize;
                    match self.channels.get(t) {
                        None => return Ok(Response::status(Sw::INCORRECT_P1P2)),
                        Some(Some(_)) => return Ok(Response::status(Sw::CONDITIONS_NOT_SATISFIED)),
                        Some(None) => t,
                    }
                };
                if cmd.p2 == 0 && cmd.le != Some(1) && cmd.le.is_some() {
                    return Ok(Response::status(Sw::WRONG_LENGTH));
                }
                if let Some(c) = self.channels.get_mut(target) {
                    *c = Some(Channel::default());
                }
                // The new channel inherits the selection of the originating channel when
                // that is not the basic channel; from the basic channel it gets the
                // default instance.
                let inherit = if ch != 0 {
                    self.channels.get(ch).and_then(|c| c.as_ref()).and_then(|c| c.selected)
                } else {
                    self.instances
                        .iter()
                        .position(|s| s.record.privileges.default_selected && s.record.state == AppState::Selectable)
                };
                if let Some(idx) = inherit
                    && self.selectable_on(idx, target).is_ok()
                {
                    let _ = self.run_select(idx, target)?;
                }
                let data = if cmd.p2 == 0 { vec![target as u8] } else { Vec::new() };
                Ok(Response::ok(data))
            }
            0x80 => {
                let target = if cmd.p2 == 0 { ch } else { cmd.p2 as usize };
                if target == 0 {
                    return Ok(Response::status(Sw::INCORRECT_P1P2));
                }
                match self.channels.get(target) {
                    Some(Some(c)) => {
                        if let Some(idx) = c.selected {
                            self.run_deselect(idx, target);
                        }
                        if let Some(c) = self.channels.get_mut(target) {
                            *c = None;
                        }
                        Ok(Response::ok(Vec::new()))
                    }
                    _ => Ok(Response::status(Sw::INCORRECT_P1P2)),
                }
            }
            _ => Ok(Response::status(Sw::INCORRECT_P1P2)),
        }
    }

    fn to_applet(&mut self, ch: usize, cmd: &Command) -> Result<Response, CardError> {
        let Some(idx) = self.channels.get(ch).and_then(|c| c.as_ref()).and_then(|c| c.selected) else {
            return Ok(Response::status(Sw::COMMAND_NOT_ALLOWED));
        };
        match self.with_applet(idx, ch, |applet, ctx| applet.process(ctx, cmd))? {
            Ok(data) => Ok(Response::ok(data)),
            Err(sw) => Ok(Response::status(sw)),
        }
    }

    /// Run one applet entry point inside a store transaction: commit on success, roll back
    /// on an error status or a panic, cut power where the tearing hook says so.
    fn with_applet<F>(&mut self, idx: usize, ch: usize, f: F) -> Result<Result<Vec<u8>, Sw>, CardError>
    where
        F: FnOnce(&mut Box<dyn Applet>, &mut Context<'_>) -> Result<Vec<u8>, Sw>,
    {
        let Some(mut applet) = self.instances.get_mut(idx).and_then(|s| s.applet.take()) else {
            return Ok(Err(Sw::FILE_NOT_FOUND));
        };
        let mut torn = false;
        let mut requests = OsRequests::default();
        let interface = self.profile.interface;
        let result = {
            let mut ctx = Context {
                store: &mut self.store,
                instances: &mut self.instances,
                me: idx,
                rng: &mut self.rng,
                interface,
                channel: ch as u8,
                card_id: &self.profile.card_id,
                torn: &mut torn,
                requests: &mut requests,
            };
            catch_unwind(AssertUnwindSafe(|| f(&mut applet, &mut ctx)))
        };
        if let Some(slot) = self.instances.get_mut(idx) {
            slot.applet = Some(applet);
        }
        if torn {
            self.cut_power();
            return Err(CardError::PowerLost);
        }
        let result = match result {
            Ok(r) => r,
            Err(_) => {
                tracing::error!(target: "tessera::apdu", "applet panicked; command rolled back");
                Err(Sw::UNKNOWN)
            }
        };
        match result {
            Ok(data) => {
                if requests.terminate_card {
                    let _ = self.store.put(OS_NS, KEY_STATE, &[CardState::Terminated.gp_byte()]);
                } else if requests.lock_card {
                    let _ = self.store.put(OS_NS, KEY_STATE, &[CardState::CardLocked.gp_byte()]);
                }
                if self.store.commit().is_err() {
                    self.cut_power();
                    return Err(CardError::PowerLost);
                }
                if requests.terminate_card {
                    self.life = CardState::Terminated;
                } else if requests.lock_card {
                    self.life = CardState::CardLocked;
                }
                if self.store.take_after_commit_cut() {
                    self.cut_power();
                    return Err(CardError::PowerLost);
                }
                Ok(Ok(data))
            }
            Err(sw) => {
                self.store.rollback();
                Ok(Err(sw))
            }
        }
    }

    // ----- administration (the issuer's view; a card manager applet can build on it) -----

    /// Install an instance of a load file. Runs the applet's `install` in one transaction
    /// with the instance record: either both exist afterwards or neither.
    pub fn install(
        &mut self,
        load_file: &str,
        aid: &[u8],
        privileges: Privileges,
        params: &[u8],
    ) -> Result<(), OsError> {
        if !(5..=16).contains(&aid.len()) {
            return Err(OsError::BadAid(aid.len()));
        }
        if self.life == CardState::Terminated || self.life == CardState::CardLocked {
            return Err(OsError::BadTransition {
                from: format!("{:?}", self.life),
                to: "install".into(),
            });
        }
        let lf = self
            .load_files
            .iter()
            .find(|l| l.name == load_file)
            .cloned()
            .ok_or_else(|| OsError::UnknownLoadFile(load_file.into()))?;
        if self.instances.iter().any(|s| s.record.aid == aid) {
            return Err(OsError::AidInUse(hex::encode_upper(aid)));
        }
        let ns = self
            .instances
            .iter()
            .map(|s| s.record.ns)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or(OsError::TooManyInstances)?;
        let record = InstanceRecord {
            ns,
            load_file: load_file.into(),
            aid: aid.to_vec(),
            privileges,
            state: AppState::Selectable,
        };
        let bytes = postcard::to_allocvec(&record).map_err(|e| OsError::Corrupt(e.to_string()))?;
        self.store.rollback();
        self.store
            .put(OS_NS, &inst_key(ns), &bytes)
            .map_err(|_| OsError::NotEnoughMemory)?;
        self.instances.push(InstanceSlot {
            record,
            applet: Some((lf.create)()),
            transient: Transient::default(),
            pins_validated: Default::default(),
        });
        let idx = self.instances.len() - 1;
        // `with_applet` commits the instance record together with the applet's writes.
        let r = self.with_applet(idx, 0, |applet, ctx| applet.install(ctx, params).map(|_| Vec::new()));
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(sw)) => {
                self.instances.pop();
                self.store.rollback();
                if sw == Sw::NOT_ENOUGH_MEMORY {
                    Err(OsError::NotEnoughMemory)
                } else {
                    Err(OsError::InstallRefused(sw))
                }
            }
            Err(e) => {
                self.instances.pop();
                Err(OsError::Card(e))
            }
        }
    }

    /// Delete an instance and all its memory.
    pub fn delete_instance(&mut self, aid: &[u8]) -> Result<(), OsError> {
        let idx = self
            .instances
            .iter()
            .position(|s| s.record.aid == aid)
            .ok_or_else(|| OsError::NoSuchInstance(hex::encode_upper(aid)))?;
        let ns = self.instances.get(idx).map(|s| s.record.ns).unwrap_or(0);
        self.store.rollback();
        self.store.delete_namespace(ns);
        self.store.delete(OS_NS, &inst_key(ns));
        self.store.commit().map_err(|_| CardError::PowerLost)?;
        self.instances.remove(idx);
        for c in self.channels.iter_mut().flatten() {
            c.selected = match c.selected {
                Some(i) if i == idx => None,
                Some(i) if i > idx => Some(i - 1),
                other => other,
            };
        }
        Ok(())
    }

    /// Change an application's life cycle state (INSTALLED -> SELECTABLE <-> LOCKED).
    pub fn set_app_state(&mut self, aid: &[u8], state: AppState) -> Result<(), OsError> {
        let idx = self
            .instances
            .iter()
            .position(|s| s.record.aid == aid)
            .ok_or_else(|| OsError::NoSuchInstance(hex::encode_upper(aid)))?;
        let Some(slot) = self.instances.get(idx) else {
            return Err(OsError::NoSuchInstance(hex::encode_upper(aid)));
        };
        let from = slot.record.state;
        let ok = matches!(
            (from, state),
            (AppState::Installed, AppState::Selectable)
                | (AppState::Selectable, AppState::Locked)
                | (AppState::Locked, AppState::Selectable)
                | (AppState::Installed, AppState::Locked)
        ) || from == state;
        if !ok {
            return Err(OsError::BadTransition {
                from: format!("{from:?}"),
                to: format!("{state:?}"),
            });
        }
        let mut record = slot.record.clone();
        record.state = state;
        let bytes = postcard::to_allocvec(&record).map_err(|e| OsError::Corrupt(e.to_string()))?;
        self.store.rollback();
        self.store
            .put(OS_NS, &inst_key(record.ns), &bytes)
            .map_err(|_| OsError::NotEnoughMemory)?;
        self.store.commit().map_err(|_| CardError::PowerLost)?;
        if let Some(slot) = self.instances.get_mut(idx) {
            slot.record = record;
        }
        if state == AppState::Locked {
            for c in self.channels.iter_mut().flatten() {
                if c.selected == Some(idx) {
                    c.selected = None;
                }
            }
        }
        Ok(())
    }

    /// Move the card along its life cycle: OP_READY -> INITIALIZED -> SECURED <->
    /// CARD_LOCKED, and any state -> TERMINATED. Going back is refused.
    pub fn set_life_cycle(&mut self, to: CardState) -> Result<(), OsError> {
        use CardState::*;
        let from = self.life;
        let ok = matches!(
            (from, to),
            (OpReady, Initialized)
                | (OpReady, Secured)
                | (Initialized, Secured)
                | (Secured, CardLocked)
                | (CardLocked, Secured)
                | (_, Terminated)
        ) && from != Terminated;
        if !ok {
            return Err(OsError::BadTransition {
                from: format!("{from:?}"),
                to: format!("{to:?}"),
            });
        }
        self.store.rollback();
        self.store
            .put(OS_NS, KEY_STATE, &[to.gp_byte()])
            .map_err(store_err)?;
        self.store.commit().map_err(|_| CardError::PowerLost)?;
        self.life = to;
        if to == CardLocked || to == Terminated {
            for c in self.channels.iter_mut().flatten() {
                c.selected = None;
            }
        }
        Ok(())
    }
}

fn store_err(e: crate::store::StoreError) -> OsError {
    let _ = store_sw(e);
    OsError::NotEnoughMemory
}

enum ChainStep {
    Done(Response),
    Process(Command, [u8; 3]),
}
