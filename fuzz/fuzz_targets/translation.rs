//! See `mesh::fuzzing::translation`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh::fuzzing::translation(data);
});
