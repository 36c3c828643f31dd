#![no_main]
//! Fuzz target `ndjson`: see `gatewatch_fuzz::ndjson`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewatch_fuzz::ndjson(data));
