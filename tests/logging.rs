//! What the library says through `tracing`, on every backend: in a test binary of its own, so
//! that no other test runs beside it. Its capture is a thread-local subscriber, and run beside
//! other tests on a loaded machine it lost events.

mod common;

use common::lifecycle::*;

use std::fs;

/// What the library decided, through the `tracing` facade: the backend chosen and why (for the
/// copy backend, why no faster one), what gc left alone, each operation's duration. Nothing is
/// said without a subscriber (the library never prints).
#[test]
fn the_library_says_what_it_decided() {
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<(tracing::Level, String, String)>>>);
    struct Text(String);
    impl Visit for Text {
        fn record_debug(&mut self, _: &Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!("{value:?}"));
        }
    }
    impl tracing::Subscriber for Capture {
        // Asked each time: other tests' threads run without a subscriber meanwhile, and a
        // callsite's cached interest must not be theirs.
        fn register_callsite(
            &self,
            _: &'static Metadata<'static>,
        ) -> tracing::subscriber::Interest {
            tracing::subscriber::Interest::sometimes()
        }
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, e: &Event<'_>) {
            let mut t = Text(String::new());
            e.record(&mut t);
            let m = e.metadata();
            self.0.lock().unwrap().push((*m.level(), m.target().to_string(), t.0));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    let src = scratch_tree("log", "1", 3);
    for (root, name) in roots("log") {
        let capture = Capture::default();
        tracing::subscriber::with_default(capture.clone(), || {
            tracing::callsite::rebuild_interest_cache();
            fs::create_dir(root.path.join("stray")).unwrap();
            let cache = open(&root);
            cache.import("proj", &src).unwrap();
            cache.setup("proj", "s1").unwrap();
            cache.gc().unwrap();
            cache.cleanup("proj", "s1").unwrap();
            fs::remove_dir(root.path.join("stray")).unwrap();
        });
        let lines = capture.0.lock().unwrap().clone();
        let has = |level: tracing::Level, target: &str, text: &str| {
            lines.iter().any(|(l, t, m)| *l == level && t == target && m.contains(text))
        };
        let backend = root.backend.name();
        assert!(
            has(tracing::Level::INFO, "goldclone::backend", &format!("{backend} backend")),
            "{name}: no word on the backend: {lines:?}"
        );
        match name {
            "copy-ext4" => assert!(
                has(tracing::Level::INFO, "goldclone::backend", "neither snapshots nor reflink"),
                "{name}: {lines:?}"
            ),
            "copy-xfs" => assert!(
                has(tracing::Level::INFO, "goldclone::backend", "reflink"),
                "{name}: {lines:?}"
            ),
            _ => {}
        }
        assert!(
            has(tracing::Level::WARN, "goldclone::gc", "stray"),
            "{name}: gc's kept item: {lines:?}"
        );
        assert!(has(tracing::Level::DEBUG, "goldclone::lifecycle", "Setup"), "{name}: {lines:?}");
    }
    let _ = fs::remove_dir_all(&src);
}
