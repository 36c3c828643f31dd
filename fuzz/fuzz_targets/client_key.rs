#![no_main]
//! Fuzz target `client_key`: see `gatewatch_fuzz::client_key`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewatch_fuzz::client_key(data));
