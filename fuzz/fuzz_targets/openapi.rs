#![no_main]
//! Fuzz target `openapi`: see `gatewatch_fuzz::openapi`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewatch_fuzz::openapi(data));
