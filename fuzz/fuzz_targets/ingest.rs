#![no_main]
//! Fuzz target `ingest`: see `gatewatch_fuzz::ingest`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewatch_fuzz::ingest(data));
