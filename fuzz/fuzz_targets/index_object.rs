//! See `mesh::fuzzing::index_object`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh::fuzzing::index_object(data));
