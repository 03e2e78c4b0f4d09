//! A bus message body (`decode_batch`): what the dispatcher and the worker read off RabbitMQ.
//! What decodes, encodes and decodes back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::envelope::{decode_batch, encode_batch};

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = decode_batch(data) {
        assert_eq!(decode_batch(&encode_batch(&batch)).unwrap(), batch);
    }
});
