#![no_main]
//! Fuzz target `model`: see `gatewatch_fuzz::model`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewatch_fuzz::model(data));
