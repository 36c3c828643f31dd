#![no_main]
//! Fuzz target `config`: see `gatewatch_fuzz::config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewatch_fuzz::config(data));
