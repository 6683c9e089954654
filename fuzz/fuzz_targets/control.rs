//! Fuzz target: see `peerpool::fuzz::control` for the property it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peerpool::fuzz::control(data));
