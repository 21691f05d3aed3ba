//! The transactional record store: the card's non-volatile memory.
//!
//! Records are `(namespace, key) -> value` byte strings. Namespace 0 belongs to the OS;
//! each applet instance gets its own namespace and can reach nothing else (the firewall).
//!
//! Durability is modelled by an append-only NVM log of checksummed batches:
//!
//! ```text
//! batch  = A5 | len:u32 BE | payload | crc32(len | payload):u32 BE
//! payload = op*
//! op     = 01 | ns:u16 | klen:u16 | key | vlen:u32 | value      (put)
//!        | 02 | ns:u16 | klen:u16 | key                         (delete)
//! ```
//!
//! A command's writes are staged in a pending overlay and appended as one batch when the
//! command succeeds. On power-up the log is replayed; a torn last batch fails its length or
//! checksum and is dropped, so the card is in the state before the command or after it.
//! The tearing hook counts every byte appended to the log and can cut power after any
//! byte.

use std::collections::BTreeMap;
use std::ops::Bound;

const BATCH_MAGIC: u8 = 0xA5;
const OP_PUT: u8 = 0x01;
const OP_DEL: u8 = 0x02;
/// Accounting overhead per record (index entry, lengths), counted against the quota.
pub const RECORD_OVERHEAD: usize = 8;

/// Power was cut while writing the NVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Torn;

/// Where the tearing hook cuts power.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TearPlan {
    /// Cut power once this many further bytes have been written to the NVM (0: before
    /// the first byte of the next write).
    pub after_bytes: Option<u64>,
    /// Cut power after the command committed but before the response leaves the card.
    pub after_commit: bool,
}

/// Memory usage figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MemoryUsage {
    pub quota: usize,
    pub used: usize,
    pub free: usize,
    pub peak: usize,
    pub records: usize,
    /// Bytes of NVM log (before compaction).
    pub log_bytes: usize,
}

fn full_key(ns: u16, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.len());
    k.extend_from_slice(&ns.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn record_cost(full_key_len: usize, value_len: usize) -> usize {
    full_key_len + value_len + RECORD_OVERHEAD
}

/// The NVM: an append-only byte log with a tearing hook.
#[derive(Debug, Default, Clone)]
pub struct Nvm {
    log: Vec<u8>,
    budget: Option<u64>,
    written: u64,
    /// Where the valid log ended when a write was torn: the torn bytes after it are
    /// garbage, overwritten by the next write (or dropped at power-up), never followed.
    torn_at: Option<usize>,
}

impl Nvm {
    /// Append bytes; on a cut only the prefix that fits the budget is written.
    fn append(&mut self, bytes: &[u8]) -> Result<(), Torn> {
        // A write after a tear (with no power-up between, e.g. an administrative install
        // on the powered-off card) goes where the valid log ends: appending after the
        // torn bytes would put it beyond what a replay reads.
        if let Some(at) = self.torn_at.take() {
            self.log.truncate(at);
        }
        if let Some(budget) = self.budget {
            let n = bytes.len() as u64;
            if budget < n {
                let keep = usize::try_from(budget).unwrap_or(0).min(bytes.len());
                self.torn_at = Some(self.log.len());
                self.log.extend_from_slice(bytes.get(..keep).unwrap_or(&[]));
                self.written += keep as u64;
                self.budget = Some(0);
                return Err(Torn);
            }
            self.budget = Some(budget - n);
        }
        self.log.extend_from_slice(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.log
    }

    /// Total bytes written since the card was created in this process.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }
}

/// Decode the NVM log. Returns the records and the length of the valid prefix.
fn replay(log: &[u8]) -> (BTreeMap<Vec<u8>, Vec<u8>>, usize) {
    let mut map = BTreeMap::new();
    let mut at = 0usize;
    while let Some(rest) = log.get(at..).filter(|r| !r.is_empty()) {
        let Some((ops, used)) = decode_batch(rest) else {
            break;
        };
        for op in ops {
            match op {
                (k, Some(v)) => {
                    map.insert(k, v);
                }
                (k, None) => {
                    map.remove(&k);
                }
            }
        }
        at += used;
    }
    (map, at)
}

/// Whether every byte of `log` belongs to a valid batch (no torn or garbled tail).
pub(crate) fn replays_fully(log: &[u8]) -> bool {
    replay(log).1 == log.len()
}

type Op = (Vec<u8>, Option<Vec<u8>>);

fn take<'a>(b: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
    let s = b.get(*at..at.checked_add(n)?)?;
    *at += n;
    Some(s)
}

fn decode_batch(b: &[u8]) -> Option<(Vec<Op>, usize)> {
    let mut at = 0usize;
    if *take(b, &mut at, 1)?.first()? != BATCH_MAGIC {
        return None;
    }
    let len_bytes = take(b, &mut at, 4)?;
    let len = u32::from_be_bytes(len_bytes.try_into().ok()?) as usize;
    let payload = take(b, &mut at, len)?;
    let crc_bytes = take(b, &mut at, 4)?;
    let crc = u32::from_be_bytes(crc_bytes.try_into().ok()?);
    let mut h = crc32fast::Hasher::new();
    h.update(len_bytes);
    h.update(payload);
    if h.finalize() != crc {
        return None;
    }
    let mut ops = Vec::new();
    let mut p = 0usize;
    while p < payload.len() {
        let op = *take(payload, &mut p, 1)?.first()?;
        let ns = take(payload, &mut p, 2)?;
        let klen = u16::from_be_bytes(take(payload, &mut p, 2)?.try_into().ok()?) as usize;
        let key = take(payload, &mut p, klen)?;
        let mut fk = ns.to_vec();
        fk.extend_from_slice(key);
        match op {
            OP_PUT => {
                let vlen = u32::from_be_bytes(take(payload, &mut p, 4)?.try_into().ok()?) as usize;
                let v = take(payload, &mut p, vlen)?;
                ops.push((fk, Some(v.to_vec())));
            }
            OP_DEL => ops.push((fk, None)),
            _ => return None,
        }
    }
    Some((ops, at))
}

fn encode_batch<'a>(ops: impl Iterator<Item = (&'a Vec<u8>, Option<&'a Vec<u8>>)>) -> Vec<u8> {
    let mut payload = Vec::new();
    for (fk, v) in ops {
        let (ns, key) = fk.split_at(2.min(fk.len()));
        match v {
            Some(v) => {
                payload.push(OP_PUT);
                payload.extend_from_slice(ns);
                payload.extend_from_slice(&(key.len() as u16).to_be_bytes());
                payload.extend_from_slice(key);
                payload.extend_from_slice(&(v.len() as u32).to_be_bytes());
                payload.extend_from_slice(v);
            }
            None => {
                payload.push(OP_DEL);
                payload.extend_from_slice(ns);
                payload.extend_from_slice(&(key.len() as u16).to_be_bytes());
                payload.extend_from_slice(key);
            }
        }
    }
    let len = (payload.len() as u32).to_be_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(&payload);
    let crc = h.finalize();
    let mut out = Vec::with_capacity(payload.len() + 9);
    out.push(BATCH_MAGIC);
    out.extend_from_slice(&len);
    out.extend_from_slice(&payload);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// The record store with one open transaction at a time.
#[derive(Debug, Clone)]
pub struct Store {
    committed: BTreeMap<Vec<u8>, Vec<u8>>,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pending_delta: isize,
    nvm: Nvm,
    quota: usize,
    used: usize,
    peak: usize,
    after_commit_cut: bool,
}

/// Keys longer than this are refused (they must fit the u16 length of the log format).
pub const MAX_KEY: usize = 1024;
/// Values longer than this are refused.
pub const MAX_VALUE: usize = 1 << 24;

impl Store {
    pub fn new(quota: usize) -> Store {
        Store {
            committed: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_delta: 0,
            nvm: Nvm::default(),
            quota,
            used: 0,
            peak: 0,
            after_commit_cut: false,
        }
    }

    /// Rebuild a store from an NVM log (power-up or image open). A torn tail is dropped.
    pub fn from_log(log: Vec<u8>, quota: usize) -> Store {
        let mut s = Store::new(quota);
        s.nvm.log = log;
        s.power_up();
        s
    }

    /// Power-up: replay the log, drop a torn tail, forget any open transaction, compact
    /// when the log has grown to more than twice the live data.
    pub fn power_up(&mut self) {
        let (map, valid) = replay(&self.nvm.log);
        self.nvm.log.truncate(valid);
        self.nvm.torn_at = None;
        self.committed = map;
        self.pending.clear();
        self.pending_delta = 0;
        self.nvm.budget = None;
        self.after_commit_cut = false;
        self.used = self
            .committed
            .iter()
            .map(|(k, v)| record_cost(k.len(), v.len()))
            .sum();
        self.peak = self.peak.max(self.used);
        if self.nvm.log.len() > 2 * self.used + 4096 {
            self.compact();
        }
    }

    /// Rewrite the log as one snapshot batch. Modelled as atomic: a real card writes the
    /// snapshot into the spare bank, then flips a one-byte bank selector.
    pub fn compact(&mut self) {
        self.nvm.torn_at = None;
        self.nvm.log = if self.committed.is_empty() {
            Vec::new()
        } else {
            encode_batch(self.committed.iter().map(|(k, v)| (k, Some(v))))
        };
    }

    /// A compacted copy of the log (for card images).
    pub fn snapshot_log(&self) -> Vec<u8> {
        if self.committed.is_empty() {
            Vec::new()
        } else {
            encode_batch(self.committed.iter().map(|(k, v)| (k, Some(v))))
        }
    }

    pub fn arm_tear(&mut self, plan: TearPlan) {
        self.nvm.budget = plan.after_bytes;
        self.after_commit_cut = plan.after_commit;
    }

    pub fn disarm_tear(&mut self) {
        self.nvm.budget = None;
        self.after_commit_cut = false;
    }

    /// Whether the after-commit cut is armed (consumed by the OS).
    pub fn take_after_commit_cut(&mut self) -> bool {
        std::mem::take(&mut self.after_commit_cut)
    }

    pub fn get(&self, ns: u16, key: &[u8]) -> Option<&[u8]> {
        let fk = full_key(ns, key);
        match self.pending.get(&fk) {
            Some(Some(v)) => Some(v.as_slice()),
            Some(None) => None,
            None => self.committed.get(&fk).map(|v| v.as_slice()),
        }
    }

    fn current_cost(&self, fk: &[u8]) -> usize {
        match self.pending.get(fk) {
            Some(Some(v)) => record_cost(fk.len(), v.len()),
            Some(None) => 0,
            None => self
                .committed
                .get(fk)
                .map(|v| record_cost(fk.len(), v.len()))
                .unwrap_or(0),
        }
    }

    /// Stage a write. Fails with `NotEnoughMemory` when the quota would be exceeded.
    pub fn put(&mut self, ns: u16, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if key.len() > MAX_KEY {
            return Err(StoreError::KeyTooLong);
        }
        if value.len() > MAX_VALUE {
            return Err(StoreError::NotEnoughMemory);
        }
        let fk = full_key(ns, key);
        let old = self.current_cost(&fk) as isize;
        let new = record_cost(fk.len(), value.len()) as isize;
        let projected = self.used as isize + self.pending_delta - old + new;
        if projected > self.quota as isize {
            return Err(StoreError::NotEnoughMemory);
        }
        self.pending_delta += new - old;
        self.pending.insert(fk, Some(value.to_vec()));
        Ok(())
    }

    pub fn delete(&mut self, ns: u16, key: &[u8]) {
        let fk = full_key(ns, key);
        let old = self.current_cost(&fk) as isize;
        self.pending_delta -= old;
        if self.committed.contains_key(&fk) {
            self.pending.insert(fk, None);
        } else {
            self.pending.remove(&fk);
        }
    }

    /// Keys (without namespace) in `ns` starting with `prefix`, in order, including staged
    /// writes.
    pub fn keys_with_prefix(&self, ns: u16, prefix: &[u8]) -> Vec<Vec<u8>> {
        let start = full_key(ns, prefix);
        let in_range = |k: &Vec<u8>| k.starts_with(&start);
        let mut out: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        for (k, _) in self
            .committed
            .range::<Vec<u8>, _>((Bound::Included(&start), Bound::Unbounded))
            .take_while(|(k, _)| in_range(k))
        {
            out.insert(k.clone(), true);
        }
        for (k, v) in self
            .pending
            .range::<Vec<u8>, _>((Bound::Included(&start), Bound::Unbounded))
            .take_while(|(k, _)| in_range(k))
        {
            out.insert(k.clone(), v.is_some());
        }
        out.into_iter()
            .filter(|(_, live)| *live)
            .map(|(k, _)| k.get(2..).unwrap_or(&[]).to_vec())
            .collect()
    }

    /// Delete every record of a namespace (instance deletion).
    pub fn delete_namespace(&mut self, ns: u16) {
        for k in self.keys_with_prefix(ns, &[]) {
            self.delete(ns, &k);
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Write the staged batch to the NVM and apply it. On a cut the batch is torn in the
    /// log, nothing is applied in RAM and the caller must treat the card as powered off.
    pub fn commit(&mut self) -> Result<(), Torn> {
        if self.pending.is_empty() {
            self.pending_delta = 0;
            return Ok(());
        }
        let batch = encode_batch(self.pending.iter().map(|(k, v)| (k, v.as_ref())));
        if let Err(t) = self.nvm.append(&batch) {
            self.pending.clear();
            self.pending_delta = 0;
            return Err(t);
        }
        for (k, v) in std::mem::take(&mut self.pending) {
            match v {
                Some(v) => {
                    self.committed.insert(k, v);
                }
                None => {
                    self.committed.remove(&k);
                }
            }
        }
        self.used = (self.used as isize + self.pending_delta).max(0) as usize;
        self.pending_delta = 0;
        self.peak = self.peak.max(self.used);
        Ok(())
    }

    pub fn rollback(&mut self) {
        self.pending.clear();
        self.pending_delta = 0;
    }

    /// Write one record durably right now, in its own batch, outside the open transaction
    /// (PIN and key try counters). The open transaction keeps its other staged writes.
    pub fn put_immediate(
        &mut self,
        ns: u16,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), ImmediateError> {
        let fk = full_key(ns, key);
        let old = self
            .committed
            .get(&fk)
            .map(|v| record_cost(fk.len(), v.len()))
            .unwrap_or(0);
        let new = record_cost(fk.len(), value.len());
        if self.used + new > self.quota + old {
            return Err(ImmediateError::Store(StoreError::NotEnoughMemory));
        }
        let v = value.to_vec();
        let batch = encode_batch(std::iter::once((&fk, Some(&v))));
        self.nvm.append(&batch).map_err(|_| ImmediateError::Torn)?;
        self.used = self.used + new - old;
        self.peak = self.peak.max(self.used);
        // A staged write of the same key in the open transaction is superseded.
        if let Some(p) = self.pending.remove(&fk) {
            let staged = p.map(|pv| record_cost(fk.len(), pv.len())).unwrap_or(0) as isize;
            self.pending_delta -= staged - old as isize;
        }
        self.committed.insert(fk, v);
        Ok(())
    }

    pub fn usage(&self) -> MemoryUsage {
        MemoryUsage {
            quota: self.quota,
            used: self.used,
            free: self.quota.saturating_sub(self.used),
            peak: self.peak,
            records: self.committed.len(),
            log_bytes: self.nvm.log.len(),
        }
    }

    pub fn quota(&self) -> usize {
        self.quota
    }

    pub fn nvm(&self) -> &Nvm {
        &self.nvm
    }

    /// All committed records (for tests and diagnostics).
    pub fn committed_records(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.committed
    }

    /// Whether the RAM view equals a fresh replay of the NVM log (used by tests).
    pub fn consistent_with_log(&self) -> bool {
        replay(&self.nvm.log).0 == self.committed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("not enough memory")]
    NotEnoughMemory,
    #[error("key too long")]
    KeyTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImmediateError {
    Store(StoreError),
    Torn,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_and_rollback() {
        let mut s = Store::new(10_000);
        s.put(1, b"a", b"1").unwrap();
        assert_eq!(s.get(1, b"a"), Some(&b"1"[..]));
        s.rollback();
        assert_eq!(s.get(1, b"a"), None);
        s.put(1, b"a", b"1").unwrap();
        s.put(2, b"a", b"2").unwrap();
        s.commit().unwrap();
        assert_eq!(s.get(2, b"a"), Some(&b"2"[..]));
        assert_eq!(s.get(1, b"a"), Some(&b"1"[..]));
        s.delete(1, b"a");
        s.commit().unwrap();
        assert_eq!(s.get(1, b"a"), None);
        assert!(s.consistent_with_log());
    }

    #[test]
    fn quota_enforced() {
        let mut s = Store::new(100);
        assert_eq!(
            s.put(1, b"k", &[0u8; 200]),
            Err(StoreError::NotEnoughMemory)
        );
        s.put(1, b"k", &[0u8; 50]).unwrap();
        s.commit().unwrap();
        assert_eq!(s.usage().used, 2 + 1 + 50 + RECORD_OVERHEAD);
        // Overwriting the same key only counts the difference.
        s.put(1, b"k", &[0u8; 80]).unwrap();
        s.commit().unwrap();
        assert_eq!(s.put(1, b"j", &[0u8; 30]), Err(StoreError::NotEnoughMemory));
        s.delete(1, b"k");
        s.commit().unwrap();
        assert_eq!(s.usage().used, 0);
        assert_eq!(s.usage().peak, 2 + 1 + 80 + RECORD_OVERHEAD);
    }

    #[test]
    fn torn_batch_is_dropped_at_every_byte() {
        let mut base = Store::new(100_000);
        base.put(1, b"balance", &[0, 0, 0, 10]).unwrap();
        base.commit().unwrap();
        let mut probe = base.clone();
        probe.put(1, b"balance", &[0, 0, 0, 20]).unwrap();
        probe.put(1, b"log1", b"record").unwrap();
        let before_len = probe.nvm().bytes().len();
        probe.commit().unwrap();
        let batch_len = probe.nvm().bytes().len() - before_len;
        for k in 0..=batch_len as u64 {
            let mut s = base.clone();
            s.arm_tear(TearPlan {
                after_bytes: Some(k),
                after_commit: false,
            });
            s.put(1, b"balance", &[0, 0, 0, 20]).unwrap();
            s.put(1, b"log1", b"record").unwrap();
            let r = s.commit();
            s.power_up();
            let bal = s.get(1, b"balance").unwrap().to_vec();
            if (k as usize) < batch_len {
                assert_eq!(r, Err(Torn));
                assert_eq!(bal, vec![0, 0, 0, 10], "cut at {k}");
                assert_eq!(s.get(1, b"log1"), None);
            } else {
                assert_eq!(r, Ok(()));
                assert_eq!(bal, vec![0, 0, 0, 20]);
                assert_eq!(s.get(1, b"log1"), Some(&b"record"[..]));
            }
            assert!(s.consistent_with_log());
        }
    }

    #[test]
    fn immediate_write_survives_rollback() {
        let mut s = Store::new(10_000);
        s.put(1, b"x", b"staged").unwrap();
        s.put_immediate(1, b"ptc", &[2]).unwrap();
        s.rollback();
        s.power_up();
        assert_eq!(s.get(1, b"ptc"), Some(&[2u8][..]));
        assert_eq!(s.get(1, b"x"), None);
    }

    #[test]
    fn prefix_scan_sees_pending() {
        let mut s = Store::new(10_000);
        s.put(3, b"log/01", b"a").unwrap();
        s.put(3, b"log/02", b"b").unwrap();
        s.put(4, b"log/01", b"c").unwrap();
        s.commit().unwrap();
        s.delete(3, b"log/01");
        s.put(3, b"log/03", b"d").unwrap();
        assert_eq!(
            s.keys_with_prefix(3, b"log/"),
            vec![b"log/02".to_vec(), b"log/03".to_vec()]
        );
    }

    #[test]
    fn compaction_keeps_content() {
        let mut s = Store::new(1 << 20);
        for i in 0..2000u32 {
            s.put(1, b"counter", &i.to_be_bytes()).unwrap();
            s.commit().unwrap();
        }
        let before = s.nvm().bytes().len();
        s.power_up();
        assert!(s.nvm().bytes().len() < before);
        assert_eq!(s.get(1, b"counter"), Some(&1999u32.to_be_bytes()[..]));
        assert!(s.consistent_with_log());
    }
}
