//! See `mesh::fuzzing::xds_requests`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh::fuzzing::xds_requests(data);
});
