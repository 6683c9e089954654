//! Fuzz target: see `peerpool::fuzz::stream_header` for the property it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peerpool::fuzz::stream_header(data));
