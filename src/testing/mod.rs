//! What unit tests share: typed builders for the objects they feed the
//! index ([`objects`]), the Bookinfo fixture ([`bookinfo`]), and the helpers of tests that run real programs
//! (Envoy).

pub mod bookinfo;
pub mod conformance;
#[cfg(test)]
pub mod jwt;
#[cfg(test)]
pub mod objects;
#[cfg(test)]
pub mod random_config;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Where `make tools` installs Envoy, or `MESH_ENVOY`, or the PATH. A test
/// that needs Envoy fails, rather than passes, when it is missing.
pub fn envoy_binary() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("MESH_ENVOY") {
        candidates.push(PathBuf::from(path));
    }
    let cache = std::env::var_os("MESH_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("mesh")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mesh")));
    if let Some(cache) = cache {
        candidates.push(cache.join("bin/envoy"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("envoy")));
    }
    candidates.into_iter().find(|c| c.is_file()).unwrap_or_else(|| {
        panic!(
            "Envoy 1.40 is needed for this test and was not found: run `make tools` \
             (installs it into ~/.cache/mesh/bin), or set MESH_ENVOY to an envoy binary"
        )
    })
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mesh-test-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    pub fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).expect("write");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
