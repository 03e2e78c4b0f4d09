//! A gzip Segment body: inflated by the gateway's own `decoded` (capped at
//! `MAX_REQUEST_BYTES`), then parsed as a batch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::segment::{Endpoint, Request, MAX_REQUEST_BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = ingest::segment::decoded(Some("gzip"), data) else {
        return;
    };
    assert!(body.len() <= MAX_REQUEST_BYTES, "{}", body.len());
    let _ = Request::parse(Endpoint::Batch, &body);
});
