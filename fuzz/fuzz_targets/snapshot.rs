#![no_main]
//! Fuzz target `snapshot`: see `gatewatch_fuzz::snapshot`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewatch_fuzz::snapshot(data));
