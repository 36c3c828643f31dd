#![no_main]
//! Fuzz target `combined`: see `gatewatch_fuzz::combined`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewatch_fuzz::combined(data));
