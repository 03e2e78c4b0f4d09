//! Property tests of the codecs that take client bytes: they never panic, refuse only with
//! their documented errors, and what one side encodes the other parses back. The `cargo fuzz`
//! targets in `fuzz/` run the same parsers coverage-guided (RELIABILITY.md).

mod envelope;
mod frame;
mod presence;
mod segment;
mod signature;

use proptest::prelude::*;
use serde_json::{Map, Value};

/// Cases per property: enough to matter in `cargo test`, small enough that the whole run stays
/// in seconds (the fuzzers go deep).
const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        // Fractions exact in binary and short in decimal: the same value after any round trip.
        any::<i32>().prop_map(|i| Value::from(f64::from(i) / 64.0)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..4)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}
