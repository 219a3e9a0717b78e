//! See `mesh::fuzzing::admission_review`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh::fuzzing::admission_review(data);
});
