#![no_main]
//! Fuzz target `endpoint`: see `gatewatch_fuzz::endpoint`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewatch_fuzz::endpoint(data));
