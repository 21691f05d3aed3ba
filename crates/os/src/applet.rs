//! The applet model, in the spirit of `javacard.framework.Applet`.

use crate::store::{ImmediateError, Store, StoreError};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use tessera_apdu::{Command, Sw};
use tessera_crypto::rng::CardRng;

/// The interface a command arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Interface {
    /// ISO/IEC 7816-3 contact interface.
    #[default]
    Contact,
    /// ISO/IEC 14443 contactless interface.
    Contactless,
}

/// Privileges granted to an instance at installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Privileges {
    /// Selected implicitly on the basic channel at power-up and reset.
    pub default_selected: bool,
    /// May lock the card (CARD_LOCKED) through [`Context::lock_card`].
    pub card_lock: bool,
    /// May terminate the card through [`Context::terminate_card`].
    pub card_terminate: bool,
}

/// Application life cycle (GlobalPlatform).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppState {
    /// Installed but not yet selectable.
    Installed,
    Selectable,
    /// Locked by the issuer: not selectable.
    Locked,
}

impl AppState {
    pub fn gp_byte(self) -> u8 {
        match self {
            AppState::Installed => 0x03,
            AppState::Selectable => 0x07,
            AppState::Locked => 0x83,
        }
    }
}

/// A Java Card-style applet. The struct itself lives in RAM from power-up (or reset) to
/// power-off, so its fields behave as CLEAR_ON_RESET memory; everything persistent goes
/// through [`Context`] into the card's transactional store.
pub trait Applet: Send {
    /// Called once, inside the installation transaction, with the install parameters.
    /// An error refuses the installation and nothing of it remains.
    fn install(&mut self, _ctx: &mut Context<'_>, _params: &[u8]) -> Result<(), Sw> {
        Ok(())
    }

    /// Called when the instance is selected. Returns proprietary FCI data (placed inside
    /// tag A5 of the FCI). An error refuses the selection (answered 6999 unless the applet
    /// gives its own status word).
    fn select(&mut self, _ctx: &mut Context<'_>) -> Result<Vec<u8>, Sw> {
        Ok(Vec::new())
    }

    /// Called when the instance is deselected on a channel.
    fn deselect(&mut self, _ctx: &mut Context<'_>) {}

    /// Process one command (chains already assembled). `Ok(data)` answers data + 9000 and
    /// commits the command's writes; `Err(sw)` answers `sw` and rolls them back.
    fn process(&mut self, ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, Sw>;

    /// A shareable interface offered to other instances, mediated by the OS. The callee's
    /// writes join the caller's transaction.
    fn service(
        &mut self,
        _ctx: &mut Context<'_>,
        _caller: &[u8],
        _request: &[u8],
    ) -> Result<Vec<u8>, Sw> {
        Err(Sw::FUNCTION_NOT_SUPPORTED)
    }
}

/// An applet type compiled into the program ("load file"). Instances are created from it.
#[derive(Clone)]
pub struct LoadFile {
    /// Unique name, stored in card images to re-create instances.
    pub name: &'static str,
    /// Package AID (informational, reported by GET STATUS-style listings).
    pub aid: Vec<u8>,
    /// Whether one instance may be selected on several logical channels at once.
    pub multi_selectable: bool,
    /// Constructor of a fresh applet object.
    pub create: fn() -> Box<dyn Applet>,
}

impl std::fmt::Debug for LoadFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LoadFile({}, {})",
            self.name,
            hex::encode_upper(&self.aid)
        )
    }
}

/// Transient memory of one instance: CLEAR_ON_DESELECT objects. Not subject to
/// transactions, as in Java Card.
#[derive(Debug, Default, Clone)]
pub struct Transient {
    pub(crate) on_deselect: BTreeMap<Vec<u8>, Vec<u8>>,
    pub(crate) on_reset: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// When transient memory is cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clear {
    OnReset,
    OnDeselect,
}

pub(crate) struct InstanceSlot {
    pub(crate) record: crate::card::InstanceRecord,
    pub(crate) applet: Option<Box<dyn Applet>>,
    pub(crate) transient: Transient,
    pub(crate) pins_validated: BTreeMap<u8, bool>,
}

/// Requests from an applet to the OS that take effect after the command.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct OsRequests {
    pub(crate) lock_card: bool,
    pub(crate) terminate_card: bool,
}

/// What an applet sees of the card while it runs: its own memory, its transient memory,
/// the card's randomness, the interface, and OS-mediated services.
pub struct Context<'a> {
    pub(crate) store: &'a mut Store,
    pub(crate) instances: &'a mut [InstanceSlot],
    pub(crate) me: usize,
    pub(crate) rng: &'a mut CardRng,
    pub(crate) interface: Interface,
    pub(crate) channel: u8,
    pub(crate) card_id: &'a [u8],
    pub(crate) torn: &'a mut bool,
    pub(crate) requests: &'a mut OsRequests,
    /// Scratch transient map for the (unreachable) case of a Context without a live
    /// instance; see [`Context::transient`].
    pub(crate) spare: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Context<'_> {
    fn ns(&self) -> u16 {
        self.instances
            .get(self.me)
            .map(|s| s.record.ns)
            .unwrap_or(u16::MAX)
    }

    /// The card's unique identifier (used for key diversification).
    pub fn card_id(&self) -> &[u8] {
        self.card_id
    }

    /// This instance's AID.
    pub fn aid(&self) -> &[u8] {
        self.instances
            .get(self.me)
            .map(|s| s.record.aid.as_slice())
            .unwrap_or(&[])
    }

    pub fn interface(&self) -> Interface {
        self.interface
    }

    pub fn channel(&self) -> u8 {
        self.channel
    }

    /// Fill `out` with random bytes from the card's generator.
    pub fn random(&mut self, out: &mut [u8]) {
        self.rng.fill(out);
    }

    /// Read a record of this instance (staged writes of this command included).
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.store.get(self.ns(), key).map(|v| v.to_vec())
    }

    /// Stage a write; it commits with the command or not at all. 6A84 when the card's
    /// memory quota would be exceeded.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Sw> {
        let ns = self.ns();
        self.store.put(ns, key, value).map_err(store_sw)
    }

    pub fn delete(&mut self, key: &[u8]) {
        let ns = self.ns();
        self.store.delete(ns, key);
    }

    /// Keys of this instance that start with `prefix`, in byte order.
    pub fn keys_with_prefix(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        self.store.keys_with_prefix(self.ns(), prefix)
    }

    /// Read a serde value stored with [`Context::save`]. A record that does not decode
    /// answers 6F00 (memory corrupt) rather than panicking.
    pub fn load<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, Sw> {
        match self.store.get(self.ns(), key) {
            None => Ok(None),
            Some(bytes) => postcard::from_bytes(bytes)
                .map(Some)
                .map_err(|_| Sw::UNKNOWN),
        }
    }

    /// Stage a serde value.
    pub fn save<T: Serialize>(&mut self, key: &[u8], value: &T) -> Result<(), Sw> {
        let bytes = postcard::to_allocvec(value).map_err(|_| Sw::UNKNOWN)?;
        self.put(key, &bytes)
    }

    /// Write a record durably now, outside this command's transaction (try counters).
    /// If power is cut during this write the command stops here: the OS discards the
    /// rest and the card is powered off.
    pub fn put_immediate(&mut self, key: &[u8], value: &[u8]) -> Result<(), Sw> {
        if *self.torn {
            return Err(Sw::UNKNOWN);
        }
        let ns = self.ns();
        match self.store.put_immediate(ns, key, value) {
            Ok(()) => Ok(()),
            Err(ImmediateError::Store(e)) => Err(store_sw(e)),
            Err(ImmediateError::Torn) => {
                *self.torn = true;
                Err(Sw::UNKNOWN)
            }
        }
    }

    /// CLEAR_ON_RESET / CLEAR_ON_DESELECT transient memory of this instance. Not subject
    /// to the command's transaction (as in Java Card): writes stay even when the command
    /// fails.
    pub fn transient(&mut self, kind: Clear) -> &mut BTreeMap<Vec<u8>, Vec<u8>> {
        match self.instances.get_mut(self.me) {
            Some(slot) => match kind {
                Clear::OnReset => &mut slot.transient.on_reset,
                Clear::OnDeselect => &mut slot.transient.on_deselect,
            },
            // Unreachable: the OS builds a Context only for a live instance. A scratch map
            // that lives as long as this Context keeps the signature panic-free.
            None => &mut self.spare,
        }
    }

    /// Mark a PIN of this instance as validated (or not) until reset or deselect.
    pub(crate) fn set_pin_validated(&mut self, pin: u8, ok: bool) {
        if let Some(s) = self.instances.get_mut(self.me) {
            s.pins_validated.insert(pin, ok);
        }
    }

    pub(crate) fn pin_validated(&self, pin: u8) -> bool {
        self.instances
            .get(self.me)
            .and_then(|s| s.pins_validated.get(&pin).copied())
            .unwrap_or(false)
    }

    /// The privileges this instance was installed with.
    pub fn privileges(&self) -> Privileges {
        self.instances
            .get(self.me)
            .map(|s| s.record.privileges)
            .unwrap_or_default()
    }

    /// Ask the OS to lock the card after this command (needs the card-lock privilege; the
    /// card must be SECURED, else the command is refused with 6985).
    pub fn lock_card(&mut self) -> Result<(), Sw> {
        let allowed = self
            .instances
            .get(self.me)
            .is_some_and(|s| s.record.privileges.card_lock);
        if !allowed {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        self.requests.lock_card = true;
        Ok(())
    }

    /// Ask the OS to terminate the card after this command (card-terminate privilege).
    pub fn terminate_card(&mut self) -> Result<(), Sw> {
        let allowed = self
            .instances
            .get(self.me)
            .is_some_and(|s| s.record.privileges.card_terminate);
        if !allowed {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        self.requests.terminate_card = true;
        Ok(())
    }

    /// Call the shareable interface of another instance (exact AID). The OS switches the
    /// firewall context to the callee for the duration of the call; the callee's writes
    /// join this command's transaction. 6A82 when no selectable instance has that AID,
    /// 6985 when the callee is already running (re-entrant call).
    pub fn call_service(&mut self, aid: &[u8], request: &[u8]) -> Result<Vec<u8>, Sw> {
        let target = self
            .instances
            .iter()
            .position(|s| s.record.aid == aid && s.record.state == AppState::Selectable)
            .ok_or(Sw::FILE_NOT_FOUND)?;
        let caller = self.aid().to_vec();
        let mut applet = self
            .instances
            .get_mut(target)
            .and_then(|s| s.applet.take())
            .ok_or(Sw::CONDITIONS_NOT_SATISFIED)?;
        let result = {
            let mut sub = Context {
                store: &mut *self.store,
                instances: &mut *self.instances,
                me: target,
                rng: &mut *self.rng,
                interface: self.interface,
                channel: self.channel,
                card_id: self.card_id,
                torn: &mut *self.torn,
                requests: &mut *self.requests,
                spare: BTreeMap::new(),
            };
            catch_unwind(AssertUnwindSafe(|| {
                applet.service(&mut sub, &caller, request)
            }))
        };
        // The callee goes back into its slot whatever happened, so that a panic in it
        // does not remove the instance; the panic then goes on to the command's own
        // handler, which rolls the whole command back (callee writes included) and
        // answers 6F00.
        if let Some(slot) = self.instances.get_mut(target) {
            slot.applet = Some(applet);
        }
        result.unwrap_or_else(|panic| resume_unwind(panic))
    }
}

pub(crate) fn store_sw(e: StoreError) -> Sw {
    match e {
        StoreError::NotEnoughMemory => Sw::NOT_ENOUGH_MEMORY,
        StoreError::KeyTooLong => Sw::WRONG_DATA,
    }
}
