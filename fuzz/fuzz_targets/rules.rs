#![no_main]
//! Fuzz target `rules`: see `gatewatch_fuzz::rules`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewatch_fuzz::rules(data));
