//! The card: power, APDU dispatch, selection, logical channels, chaining, GET RESPONSE,
//! life cycle, installation.

use crate::applet::{
    AppState, Applet, Context, InstanceSlot, Interface, LoadFile, OsRequests, Privileges,
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
    /// CLA (chaining bit cleared), INS, P1, P2 of the first part.
    header: [u8; 4],
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

    pub(crate) fn from_parts(
        profile: CardProfile,
        load_files: Vec<LoadFile>,
        mut store: Store,
    ) -> Card {
        let quota = profile.memory_quota;
        if store.quota() != quota {
            store = Store::from_log(store.snapshot_log(), quota);
        }
        let rng = match profile.rng_seed {
            Some(seed) => CardRng::from_seed(seed),
            None => CardRng::from_entropy(),
        };
        let channels = (0..profile.max_channels.clamp(1, 20))
            .map(|_| None)
            .collect();
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
            let Some(raw) = self.store.get(OS_NS, &k) else {
                continue;
            };
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

    /// The ATR this card answers. With the default historical bytes, their card
    /// capabilities announce this card's number of logical channels.
    pub fn atr(&self) -> Vec<u8> {
        match &self.profile.atr {
            Some(a) => a.clone(),
            None if self.profile.historical_bytes == atr::DEFAULT_HISTORICAL => atr::build(
                &atr::default_historical(self.profile.max_channels.clamp(1, 20)),
            ),
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
            && let Some(idx) = self.instances.iter().position(|s| {
                s.record.privileges.default_selected && s.record.state == AppState::Selectable
            })
        {
            // A refusal leaves the basic channel with nothing selected; a power cut
            // leaves the card off, which the next command reports.
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
        // Formatting hex costs more than the whole dispatch: only do it when someone listens.
        if tracing::enabled!(target: "tessera::apdu", tracing::Level::DEBUG) {
            trace_exchange(apdu, &result);
        }
        result
    }

    /// The AID of the instance selected on a logical channel (`None` when the channel is
    /// closed or has no selection).
    pub fn selected_aid(&self, channel: u8) -> Option<Vec<u8>> {
        let idx = self.channels.get(channel as usize)?.as_ref()?.selected?;
        self.instances.get(idx).map(|s| s.record.aid.clone())
    }

    /// Logical channels currently open (0 is always open while the card is powered).
    pub fn open_channels(&self) -> Vec<u8> {
        self.channels
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some())
            .map(|(i, _)| i as u8)
            .collect()
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
        if !matches!(self.channels.get(ch), Some(Some(_))) {
            return Ok(Response::status(Sw::LOGICAL_CHANNEL_NOT_SUPPORTED));
        }
        if self.life == CardState::Terminated {
            return Ok(Response::status(Sw::CONDITIONS_NOT_SATISFIED));
        }
        let interindustry = !class.proprietary;

        // GET RESPONSE (interindustry class only; a proprietary C0 goes to the applet).
        if interindustry && cmd.ins == INS_GET_RESPONSE {
            return Ok(self.get_response(ch, &class, &cmd));
        }
        // Any other command discards a response still waiting for GET RESPONSE.
        if let Some(Some(c)) = self.channels.get_mut(ch) {
            c.out = None;
        }

        // Command chaining: the applet sees only the assembled command.
        let cmd = match self.chain(ch, &class, cmd) {
            Ok(cmd) => cmd,
            Err(resp) => return Ok(resp),
        };

        let manage = interindustry && cmd.ins == INS_MANAGE_CHANNEL;
        let select = interindustry && cmd.ins == INS_SELECT && cmd.p1 == 0x04;
        if (manage || select) && class.secure_messaging {
            return Ok(Response::status(Sw::SECURE_MESSAGING_NOT_SUPPORTED));
        }
        let resp = if manage {
            self.manage_channel(ch, &cmd)?
        } else if select {
            self.select_by_name(ch, &cmd)?
        } else {
            self.forward_to_applet(ch, &cmd)?
        };
        Ok(self.shape_response(ch, &cmd, resp))
    }

    /// Command chaining (ISO/IEC 7816-4 §5.3.3). A part with the chaining bit set is kept
    /// and answered 9000; the last part (bit clear) releases the assembled command. Parts
    /// must repeat the same CLA (chaining bit aside), INS, P1 and P2; anything else ends
    /// the chain with 6883 and is not executed. A part with Le but no data (case 2) is 6700;
    /// more than [`MAX_CHAIN_DATA`] bytes in total is 6700. Either error drops the chain.
    fn chain(
        &mut self,
        ch: usize,
        class: &ClassByte,
        mut cmd: Command,
    ) -> Result<Command, Response> {
        let Some(Some(channel)) = self.channels.get_mut(ch) else {
            return Err(Response::status(Sw::LOGICAL_CHANNEL_NOT_SUPPORTED));
        };
        let header = [class.without_chaining(), cmd.ins, cmd.p1, cmd.p2];
        if class.chained {
            if cmd.le.is_some() && cmd.data.is_empty() {
                channel.chain = None;
                return Err(Response::status(Sw::WRONG_LENGTH));
            }
            match &mut channel.chain {
                Some(chain) if chain.header == header => {
                    if chain.data.len() + cmd.data.len() > MAX_CHAIN_DATA {
                        channel.chain = None;
                        return Err(Response::status(Sw::WRONG_LENGTH));
                    }
                    chain.data.extend_from_slice(&cmd.data);
                }
                Some(_) => {
                    channel.chain = None;
                    return Err(Response::status(Sw::LAST_COMMAND_EXPECTED));
                }
                None => {
                    channel.chain = Some(Chain {
                        header,
                        data: cmd.data,
                    });
                }
            }
            return Err(Response::status(Sw::OK));
        }
        if let Some(chain) = channel.chain.take() {
            if chain.header != header {
                return Err(Response::status(Sw::LAST_COMMAND_EXPECTED));
            }
            if chain.data.len() + cmd.data.len() > MAX_CHAIN_DATA {
                return Err(Response::status(Sw::WRONG_LENGTH));
            }
            let mut data = chain.data;
            data.extend_from_slice(&cmd.data);
            cmd.data = data;
            if cmd.data.len() > tessera_apdu::MAX_SHORT_DATA {
                cmd.extended = true;
            }
        }
        cmd.cla = class.without_chaining();
        Ok(cmd)
    }

    /// GET RESPONSE (INS C0): serve the next part of a response left by the previous
    /// command on this channel.
    fn get_response(&mut self, ch: usize, class: &ClassByte, cmd: &Command) -> Response {
        let t0 = self.profile.t0_get_response;
        let Some(Some(channel)) = self.channels.get_mut(ch) else {
            return Response::status(Sw::LOGICAL_CHANNEL_NOT_SUPPORTED);
        };
        if channel.chain.take().is_some() {
            // A chain is open: the card expects its last part (and has nothing to serve).
            channel.out = None;
            return Response::status(Sw::LAST_COMMAND_EXPECTED);
        }
        if class.secure_messaging {
            return Response::status(Sw::SECURE_MESSAGING_NOT_SUPPORTED);
        }
        if class.chained || !cmd.data.is_empty() {
            return Response::status(Sw::WRONG_LENGTH);
        }
        if cmd.p1 != 0 || cmd.p2 != 0 {
            return Response::status(Sw::INCORRECT_P1P2);
        }
        let Some(out) = channel.out.as_mut() else {
            return Response::status(Sw::CONDITIONS_NOT_SATISFIED);
        };
        let remaining = out.data.len().saturating_sub(out.pos);
        // Le absent is read as a short Le of 00 (T=0 sends P3 = 00): up to 256 bytes.
        let le = cmd.le.unwrap_or(256);
        if t0 && !cmd.extended && le != 256 && le > remaining {
            // ISO/IEC 7816-3 T=0: wrong P3, the exact length is in SW2; data kept.
            return Response::status(Sw::wrong_le(remaining));
        }
        let n = le.min(remaining);
        let end = out.pos.saturating_add(n);
        let chunk = out.data.get(out.pos..end).unwrap_or(&[]).to_vec();
        out.pos = end;
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

    /// Apply Le to a successful response: when the data is longer than Le, or Le is absent
    /// on a T=0-style profile, send what fits (nothing when Le is absent), keep the rest for
    /// GET RESPONSE and answer 61xx. (6Cxx is decided before the commit, in
    /// [`Card::with_applet`], because it must leave the memory unchanged.)
    fn shape_response(&mut self, ch: usize, cmd: &Command, resp: Response) -> Response {
        if resp.sw != Sw::OK || resp.data.is_empty() {
            return resp;
        }
        let len = resp.data.len();
        let sent = match cmd.le {
            None if self.profile.t0_get_response => 0,
            Some(le) if len > le => le,
            _ => return resp,
        };
        let Some(Some(channel)) = self.channels.get_mut(ch) else {
            // The command closed its own channel: nothing can be fetched later.
            return resp;
        };
        let data = resp.data;
        let first = data.get(..sent).unwrap_or(&[]).to_vec();
        channel.out = Some(OutBuf { data, pos: sent });
        Response {
            data: first,
            sw: Sw::bytes_remaining(len - sent),
        }
    }

    fn multi_selectable(&self, idx: usize) -> bool {
        self.instances.get(idx).is_some_and(|slot| {
            self.load_files
                .iter()
                .find(|l| l.name == slot.record.load_file)
                .is_some_and(|l| l.multi_selectable)
        })
    }

    /// Whether instance `idx` may be selected on channel `ch`: 6A82 when it is not
    /// SELECTABLE (or its code is missing), 6985 when its load file is not
    /// multi-selectable and an instance of that load file (this one or another, as Java
    /// Card rules for a package) is already selected on another channel.
    fn selectable_on(&self, idx: usize, ch: usize) -> Result<(), Sw> {
        let slot = self.instances.get(idx).ok_or(Sw::FILE_NOT_FOUND)?;
        if slot.record.state != AppState::Selectable || slot.applet.is_none() {
            return Err(Sw::FILE_NOT_FOUND);
        }
        if !self.multi_selectable(idx) {
            let same_load_file = |j: usize| {
                self.instances
                    .get(j)
                    .is_some_and(|o| o.record.load_file == slot.record.load_file)
            };
            let elsewhere = self.channels.iter().enumerate().any(|(i, c)| {
                i != ch
                    && c.as_ref()
                        .and_then(|c| c.selected)
                        .is_some_and(same_load_file)
            });
            if elsewhere {
                return Err(Sw::CONDITIONS_NOT_SATISFIED);
            }
        }
        Ok(())
    }

    fn default_instance(&self) -> Option<usize> {
        self.instances.iter().position(|s| {
            s.record.privileges.default_selected && s.record.state == AppState::Selectable
        })
    }

    /// SELECT by DF name (P1 = 04).
    fn select_by_name(&mut self, ch: usize, cmd: &Command) -> Result<Response, CardError> {
        if cmd.data.len() > 16 {
            return Ok(Response::status(Sw::WRONG_LENGTH));
        }
        // P2: b2-b1 occurrence (00 first, 01 last, 10 next, 11 previous), b4-b3 response
        // (00 FCI, 01 FCP, 10 FMD, 11 none); b8-b5 must be zero.
        let occurrence = cmd.p2 & 0x03;
        let option = cmd.p2 & 0x0C;
        if cmd.p2 & 0xF0 != 0 {
            return Ok(Response::status(Sw::INCORRECT_P1P2));
        }
        if occurrence == 0x01 || occurrence == 0x03 || option == 0x04 || option == 0x08 {
            return Ok(Response::status(Sw::FUNCTION_NOT_SUPPORTED));
        }
        if self.life == CardState::CardLocked {
            return Ok(Response::status(Sw::FILE_NOT_FOUND));
        }
        let current = self
            .channels
            .get(ch)
            .and_then(|c| c.as_ref())
            .and_then(|c| c.selected);
        let found = if cmd.data.is_empty() {
            // No DF name: the default-selected instance (GlobalPlatform), if any.
            self.default_instance()
        } else {
            let name = cmd.data.as_slice();
            let start = match current {
                Some(i)
                    if occurrence == 0x02
                        && self
                            .instances
                            .get(i)
                            .is_some_and(|s| s.record.aid.starts_with(name)) =>
                {
                    i + 1
                }
                _ => 0,
            };
            (start..self.instances.len()).find(|&i| {
                self.instances.get(i).is_some_and(|s| {
                    s.record.aid.starts_with(name)
                        && s.record.state == AppState::Selectable
                        && s.applet.is_some()
                })
            })
        };
        // Failures before this point leave the current selection untouched (ISO 7816-4).
        let Some(idx) = found else {
            return Ok(Response::status(Sw::FILE_NOT_FOUND));
        };
        if let Err(sw) = self.selectable_on(idx, ch) {
            return Ok(Response::status(sw));
        }
        // Deselect the previous instance on this channel (also when it is reselected).
        if let Some(prev) = current {
            self.run_deselect(prev, ch)?;
        }
        match self.run_select(idx, ch)? {
            Ok(proprietary) => {
                if option == 0x0C {
                    return Ok(Response::ok(Vec::new()));
                }
                let aid = self
                    .instances
                    .get(idx)
                    .map(|s| s.record.aid.clone())
                    .unwrap_or_default();
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
    /// channel's selection is the instance; on refusal the channel has no selection (as in
    /// Java Card: the previous instance was already deselected). A refusal without a
    /// status word of the applet's own (6F00, or a panic) is answered 6999.
    fn run_select(&mut self, idx: usize, ch: usize) -> Result<Result<Vec<u8>, Sw>, CardError> {
        if let Some(Some(c)) = self.channels.get_mut(ch) {
            c.selected = None;
        }
        let r = self.with_applet(idx, ch, None, |applet, ctx| applet.select(ctx))?;
        let r = match r {
            Err(sw) if sw == Sw::UNKNOWN || sw == Sw::OK => Err(Sw::APPLET_SELECT_FAILED),
            other => other,
        };
        match &r {
            Ok(_) => {
                if let Some(Some(c)) = self.channels.get_mut(ch) {
                    c.selected = Some(idx);
                }
            }
            Err(_) => self.clear_if_unselected(idx),
        }
        Ok(r)
    }

    fn run_deselect(&mut self, idx: usize, ch: usize) -> Result<(), CardError> {
        if let Some(Some(c)) = self.channels.get_mut(ch) {
            c.selected = None;
        }
        let r = self.with_applet(idx, ch, None, |applet, ctx| {
            applet.deselect(ctx);
            Ok(Vec::new())
        });
        self.clear_if_unselected(idx);
        r.map(|_| ())
    }

    /// CLEAR_ON_DESELECT memory and PIN validation end when the instance is no longer
    /// selected on any channel.
    fn clear_if_unselected(&mut self, idx: usize) {
        let still = self
            .channels
            .iter()
            .any(|c| c.as_ref().is_some_and(|c| c.selected == Some(idx)));
        if !still && let Some(slot) = self.instances.get_mut(idx) {
            slot.transient.on_deselect.clear();
            slot.pins_validated.clear();
        }
    }

    /// Forget every selection without running `deselect` (card locked or terminated,
    /// application locked). Deselect-scoped state is cleared.
    fn drop_selections(&mut self, only: Option<usize>) {
        for c in self.channels.iter_mut().flatten() {
            if c.selected.is_some() && (only.is_none() || c.selected == only) {
                c.selected = None;
                c.out = None;
            }
        }
        for idx in 0..self.instances.len() {
            if only.is_none() || only == Some(idx) {
                self.clear_if_unselected(idx);
            }
        }
    }

    /// MANAGE CHANNEL (INS 70): P1 = 00 open (P2 = 00: the card chooses and returns the
    /// number; P2 = 01-13: that channel), P1 = 80 close (P2 = 00: the channel of CLA).
    fn manage_channel(&mut self, ch: usize, cmd: &Command) -> Result<Response, CardError> {
        if !cmd.data.is_empty() {
            return Ok(Response::status(Sw::WRONG_LENGTH));
        }
        if cmd.p2 > 19 {
            return Ok(Response::status(Sw::INCORRECT_P1P2));
        }
        match cmd.p1 {
            0x00 => self.open_channel(ch, cmd),
            0x80 => {
                let target = if cmd.p2 == 0 { ch } else { cmd.p2 as usize };
                if target == 0 {
                    // The basic channel is never closed.
                    return Ok(Response::status(Sw::INCORRECT_P1P2));
                }
                let selected = match self.channels.get(target) {
                    Some(Some(c)) => c.selected,
                    _ => return Ok(Response::status(Sw::INCORRECT_P1P2)),
                };
                if let Some(idx) = selected {
                    self.run_deselect(idx, target)?;
                }
                if let Some(c) = self.channels.get_mut(target) {
                    *c = None;
                }
                Ok(Response::ok(Vec::new()))
            }
            _ => Ok(Response::status(Sw::INCORRECT_P1P2)),
        }
    }

    fn open_channel(&mut self, ch: usize, cmd: &Command) -> Result<Response, CardError> {
        if cmd.p2 == 0
            && let Some(le) = cmd.le
            && !cmd.extended
            && le != 1
            && le != 256
        {
            // The answer is exactly one byte: ask for a re-issue before opening anything.
            return Ok(Response::status(Sw::wrong_le(1)));
        }
        let target = if cmd.p2 == 0 {
            match (1..self.channels.len()).find(|&i| matches!(self.channels.get(i), Some(None))) {
                Some(t) => t,
                None => return Ok(Response::status(Sw::LOGICAL_CHANNEL_NOT_SUPPORTED)),
            }
        } else {
            let t = cmd.p2 as usize;
            match self.channels.get(t) {
                None => return Ok(Response::status(Sw::LOGICAL_CHANNEL_NOT_SUPPORTED)),
                Some(Some(_)) => return Ok(Response::status(Sw::CONDITIONS_NOT_SATISFIED)),
                Some(None) => t,
            }
        };
        if let Some(c) = self.channels.get_mut(target) {
            *c = Some(Channel::default());
        }
        if ch != 0 {
            // Opened from another logical channel: the new channel selects the instance of
            // the originating channel. When that is impossible (not multi-selectable, or
            // the instance refuses), the channel is not opened.
            let origin = self
                .channels
                .get(ch)
                .and_then(|c| c.as_ref())
                .and_then(|c| c.selected);
            if let Some(idx) = origin {
                let refused = match self.selectable_on(idx, target) {
                    Err(sw) => Some(sw),
                    Ok(()) => self.run_select(idx, target)?.err(),
                };
                if let Some(sw) = refused {
                    if let Some(c) = self.channels.get_mut(target) {
                        *c = None;
                    }
                    return Ok(Response::status(sw));
                }
            }
        } else if let Some(idx) = self.default_instance()
            && self.selectable_on(idx, target).is_ok()
        {
            // Opened from the basic channel: the default instance, when it can be selected
            // there too; otherwise the channel opens with nothing selected.
            let _ = self.run_select(idx, target)?;
        }
        let data = if cmd.p2 == 0 {
            vec![target as u8]
        } else {
            Vec::new()
        };
        Ok(Response::ok(data))
    }

    fn forward_to_applet(&mut self, ch: usize, cmd: &Command) -> Result<Response, CardError> {
        let Some(idx) = self
            .channels
            .get(ch)
            .and_then(|c| c.as_ref())
            .and_then(|c| c.selected)
        else {
            let sw = if cmd.ins == INS_SELECT && cmd.cla & 0x80 == 0 {
                Sw::FILE_NOT_FOUND
            } else {
                Sw::COMMAND_NOT_ALLOWED
            };
            return Ok(Response::status(sw));
        };
        // Case 2 with a short Le other than 00 on a T=0-style profile: the response must be
        // exactly Le bytes long, else 6Cxx (and nothing of the command may persist).
        let exact_le = match cmd.le {
            Some(le)
                if self.profile.t0_get_response
                    && cmd.data.is_empty()
                    && !cmd.extended
                    && le != 256 =>
            {
                Some(le)
            }
            _ => None,
        };
        match self.with_applet(idx, ch, exact_le, |applet, ctx| applet.process(ctx, cmd))? {
            Ok(data) => Ok(Response::ok(data)),
            Err(sw) => Ok(Response::status(sw)),
        }
    }

    /// Run one applet entry point inside a store transaction: commit on success, roll back
    /// on an error status or a panic, cut power where the tearing hook says so.
    ///
    /// `exact_le`: when the applet answers fewer (non-zero) bytes than this, the command
    /// is rolled back and answered 6Cxx (ISO/IEC 7816-3 T=0 case 2).
    fn with_applet<F>(
        &mut self,
        idx: usize,
        ch: usize,
        exact_le: Option<usize>,
        f: F,
    ) -> Result<Result<Vec<u8>, Sw>, CardError>
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
                spare: Default::default(),
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
                if let Some(le) = exact_le
                    && !data.is_empty()
                    && data.len() < le
                {
                    self.store.rollback();
                    return Ok(Err(Sw::wrong_le(data.len())));
                }
                // An applet's request follows the card life cycle like
                // [`Card::set_life_cycle`]: CARD_LOCKED only from SECURED (already locked:
                // nothing to do); from another state the command is refused (6985) and
                // rolled back.
                let new_life = if requests.terminate_card {
                    Some(CardState::Terminated)
                } else if requests.lock_card {
                    match self.life {
                        CardState::Secured => Some(CardState::CardLocked),
                        CardState::CardLocked => None,
                        _ => {
                            self.store.rollback();
                            return Ok(Err(Sw::CONDITIONS_NOT_SATISFIED));
                        }
                    }
                } else {
                    None
                };
                if let Some(state) = new_life
                    && let Err(e) = self.store.put(OS_NS, KEY_STATE, &[state.gp_byte()])
                {
                    self.store.rollback();
                    return Ok(Err(store_sw(e)));
                }
                if self.store.commit().is_err() {
                    self.cut_power();
                    return Err(CardError::PowerLost);
                }
                if let Some(state) = new_life {
                    self.life = state;
                    self.drop_selections(None);
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
        self.install_as(load_file, aid, privileges, params, AppState::Selectable)
    }

    /// [`Card::install`] leaving the instance in `state`: `AppState::Installed` is
    /// GlobalPlatform's INSTALL [for install] without [for make selectable] (SELECT answers
    /// 6A82 until [`Card::set_app_state`] makes it SELECTABLE); `Locked` is refused.
    pub fn install_as(
        &mut self,
        load_file: &str,
        aid: &[u8],
        privileges: Privileges,
        params: &[u8],
        state: AppState,
    ) -> Result<(), OsError> {
        if state == AppState::Locked {
            return Err(OsError::BadTransition {
                from: "install".into(),
                to: format!("{state:?}"),
            });
        }
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
            state,
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
        let idx = self.instances.len().saturating_sub(1);
        // `with_applet` commits the instance record together with the applet's writes.
        let r = self.with_applet(idx, 0, None, |applet, ctx| {
            applet.install(ctx, params).map(|_| Vec::new())
        });
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
        if state != AppState::Selectable {
            self.drop_selections(Some(idx));
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
            self.drop_selections(None);
        }
        Ok(())
    }
}

fn store_err(e: crate::store::StoreError) -> OsError {
    let _ = store_sw(e);
    OsError::NotEnoughMemory
}

/// The command as traced: in hex, except the data of the ISO PIN commands (VERIFY 20 / 21,
/// CHANGE REFERENCE DATA 24, RESET RETRY COUNTER 2C), which is replaced by its length so
/// that a trace never shows a PIN.
fn trace_command(apdu: &[u8], ins: u8) -> String {
    if matches!(ins, 0x20 | 0x21 | 0x24 | 0x2C) && apdu.len() > 5 {
        let shown = apdu.get(..5).unwrap_or(apdu);
        format!(
            "{}<{} bytes hidden>",
            hex::encode_upper(shown),
            apdu.len() - shown.len()
        )
    } else {
        hex::encode_upper(apdu)
    }
}

/// One DEBUG event per exchange on target `tessera::apdu`: the decoded header (CLA, INS,
/// P1, P2, logical channel), the command and response in hex, and the status word with
/// its meaning. Callers check `tracing::enabled!` first.
fn trace_exchange(apdu: &[u8], result: &Result<Response, CardError>) {
    let (cla, ins, p1, p2) = match apdu {
        [a, b, c, d, ..] => (*a, *b, *c, *d),
        _ => (0, 0, 0, 0),
    };
    let channel = ClassByte::decode(cla).ok().map(|c| c.channel);
    let command = trace_command(apdu, ins);
    match result {
        Ok(r) => tracing::debug!(
            target: "tessera::apdu",
            cla = %format_args!("{cla:02X}"),
            ins = %format_args!("{ins:02X}"),
            p1 = %format_args!("{p1:02X}"),
            p2 = %format_args!("{p2:02X}"),
            channel = ?channel,
            command = %command,
            response = %hex::encode_upper(&r.data),
            sw = %r.sw,
            meaning = r.sw.description(),
            "apdu"
        ),
        Err(e) => tracing::debug!(
            target: "tessera::apdu",
            cla = %format_args!("{cla:02X}"),
            ins = %format_args!("{ins:02X}"),
            p1 = %format_args!("{p1:02X}"),
            p2 = %format_args!("{p2:02X}"),
            channel = ?channel,
            command = %command,
            error = %e,
            "apdu"
        ),
    }
}
