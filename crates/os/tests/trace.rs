//! The APDU trace hook. In its own test binary: `tracing` caches per-callsite interest
//! process-wide, and tests running in parallel without a subscriber would race with the
//! scoped subscriber installed here.

use tessera_apdu::Response;
use tessera_os::Card;
use tessera_os::diag::conformance_card;

fn tx(card: &mut Card, s: &str) -> Response {
    card.transmit_hex(s).unwrap()
}

// ---------------------------------------------------------------- trace hook

mod capture {
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    /// Field name and value pairs of one event.
    pub type EventFields = Vec<(String, String)>;

    #[derive(Clone, Default)]
    pub struct Capture(pub Arc<Mutex<Vec<EventFields>>>);

    struct Fields(Vec<(String, String)>);
    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0
                .push((field.name().to_string(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.push((field.name().to_string(), value.to_string()));
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, m: &Metadata<'_>) -> bool {
            m.target() == "tessera::apdu"
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, e: &Event<'_>) {
            let mut f = Fields(Vec::new());
            e.record(&mut f);
            self.0.lock().unwrap().push(f.0);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}

#[test]
fn every_exchange_is_traced_with_header_and_sw() {
    let cap = capture::Capture::default();
    let events = cap.0.clone();
    tracing::subscriber::with_default(cap, || {
        let mut card = conformance_card();
        tx(&mut card, "00A4040007F054455353010100");
        tx(&mut card, "8012000A");
        tx(&mut card, "00C000000A");
        tx(&mut card, "FF");
        // VERIFY with a PIN (diag's PIN is 1234; 9999 is wrong): the trace hides it.
        tx(&mut card, "002000000439393939");
    });
    let events = events.lock().unwrap();
    let apdus: Vec<_> = events
        .iter()
        .filter(|f| f.iter().any(|(k, v)| k == "message" && v == "apdu"))
        .collect();
    assert_eq!(apdus.len(), 5);
    let get = |i: usize, key: &str| {
        apdus[i]
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(get(0, "ins"), "A4");
    assert_eq!(get(0, "sw"), "9000");
    assert_eq!(get(1, "sw"), "610A");
    assert_eq!(get(1, "meaning"), "more data available");
    assert_eq!(get(2, "response"), "00010203040506070809");
    assert_eq!(get(2, "channel"), "Some(0)");
    assert_eq!(get(3, "sw"), "6700");
    assert_eq!(get(4, "ins"), "20");
    assert_eq!(get(4, "command"), "0020000004<4 bytes hidden>");
    assert!(apdus[4].iter().all(|(_, v)| !v.contains("39393939")));
}
