//! Model test: the record store against a plain BTreeMap under random put / delete /
//! commit / rollback / torn commit / immediate write / power-up sequences.

use proptest::prelude::*;
use std::collections::BTreeMap;
use tessera_os::TearPlan;
use tessera_os::store::{RECORD_OVERHEAD, Store};

#[derive(Debug, Clone)]
enum Op {
    Put(u16, u8, Vec<u8>),
    Delete(u16, u8),
    Commit,
    Rollback,
    /// Arm a cut after this many bytes, then commit.
    TornCommit(u64),
    PutImmediate(u16, u8, Vec<u8>),
    PowerUp,
}

fn op() -> impl Strategy<Value = Op> {
    let ns = 0u16..3;
    let key = 0u8..6;
    let value = proptest::collection::vec(any::<u8>(), 0..12);
    prop_oneof![
        4 => (ns.clone(), key.clone(), value.clone()).prop_map(|(n, k, v)| Op::Put(n, k, v)),
        2 => (ns.clone(), key.clone()).prop_map(|(n, k)| Op::Delete(n, k)),
        2 => Just(Op::Commit),
        1 => Just(Op::Rollback),
        1 => (0u64..80).prop_map(Op::TornCommit),
        1 => (ns, key, value).prop_map(|(n, k, v)| Op::PutImmediate(n, k, v)),
        1 => Just(Op::PowerUp),
    ]
}

type Key = (u16, Vec<u8>);

#[derive(Default)]
struct Model {
    committed: BTreeMap<Key, Vec<u8>>,
    pending: BTreeMap<Key, Option<Vec<u8>>>,
}

impl Model {
    fn get(&self, k: &Key) -> Option<&Vec<u8>> {
        match self.pending.get(k) {
            Some(v) => v.as_ref(),
            None => self.committed.get(k),
        }
    }
    fn apply(&mut self) {
        for (k, v) in std::mem::take(&mut self.pending) {
            match v {
                Some(v) => self.committed.insert(k, v),
                None => self.committed.remove(&k),
            };
        }
    }
    fn used(&self) -> usize {
        self.committed
            .iter()
            .map(|((_, k), v)| 2 + k.len() + v.len() + RECORD_OVERHEAD)
            .sum()
    }
}

fn check(store: &Store, model: &Model, quiescent: bool) -> Result<(), TestCaseError> {
    for ns in 0..3u16 {
        let mut keys = Vec::new();
        for k in 0..6u8 {
            let key = (ns, vec![b'k', k]);
            prop_assert_eq!(store.get(ns, &key.1), model.get(&key).map(|v| v.as_slice()));
            if model.get(&key).is_some() {
                keys.push(key.1.clone());
            }
        }
        prop_assert_eq!(store.keys_with_prefix(ns, b"k"), keys);
    }
    if quiescent {
        prop_assert!(store.consistent_with_log());
        prop_assert_eq!(store.usage().used, model.used());
        prop_assert_eq!(store.committed_records().len(), model.committed.len());
    }
    let u = store.usage();
    prop_assert!(u.peak >= u.used);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut store = Store::new(1 << 20);
        let mut model = Model::default();
        for op in ops {
            let quiescent = match op {
                Op::Put(ns, k, v) => {
                    store.put(ns, &[b'k', k], &v).unwrap();
                    model.pending.insert((ns, vec![b'k', k]), Some(v));
                    false
                }
                Op::Delete(ns, k) => {
                    store.delete(ns, &[b'k', k]);
                    model.pending.insert((ns, vec![b'k', k]), None);
                    false
                }
                Op::Commit => {
                    store.commit().unwrap();
                    model.apply();
                    true
                }
                Op::Rollback => {
                    store.rollback();
                    model.pending.clear();
                    true
                }
                Op::TornCommit(k) => {
                    store.arm_tear(TearPlan { after_bytes: Some(k), after_commit: false });
                    let real_change = model.pending.iter().any(|(key, v)| model.committed.get(key) != v.as_ref())
                        || !model.pending.is_empty();
                    match store.commit() {
                        Ok(()) => {
                            model.apply();
                            store.disarm_tear();
                        }
                        Err(_) => {
                            prop_assert!(real_change);
                            // Power is gone: RAM is lost, the log is replayed.
                            model.pending.clear();
                            store.power_up();
                        }
                    }
                    true
                }
                Op::PutImmediate(ns, k, v) => {
                    store.put_immediate(ns, &[b'k', k], &v).unwrap();
                    let key = (ns, vec![b'k', k]);
                    model.pending.remove(&key);
                    model.committed.insert(key, v);
                    model.pending.is_empty()
                }
                Op::PowerUp => {
                    store.power_up();
                    model.pending.clear();
                    true
                }
            };
            check(&store, &model, quiescent)?;
        }
        // Whatever happened, a power cycle gives back exactly the committed model.
        store.power_up();
        model.pending.clear();
        check(&store, &model, true)?;
    }
}
