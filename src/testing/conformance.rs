//! Where Istio's unmodified Bookinfo samples are: the one reading of the
//! `MESH_CONFORMANCE_DIR` setting, for the unit tests (through
//! [`crate::api::samples`]) and the end-to-end tests, which include this
//! file as it is.

use std::path::PathBuf;

/// The setting naming the directory that holds `bookinfo/`.
const SETTING: &str = "MESH_CONFORMANCE_DIR";

/// The directory of Istio's Bookinfo samples (`<MESH_CONFORMANCE_DIR>/bookinfo`,
/// default `../shared/conformance/bookinfo`; a relative setting is taken
/// from the repository's root). Panics with where to put them when they
/// are not there: every caller is a test.
pub fn bookinfo_dir() -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let set = std::env::var_os(SETTING).filter(|v| !v.is_empty());
    let base = repo.join(set.as_deref().unwrap_or("../shared/conformance".as_ref()));
    let dir = base.join("bookinfo");
    assert!(
        dir.join("platform/bookinfo.yaml").is_file(),
        "Istio's Bookinfo samples are not in {}: put Istio 1.4.0's samples/bookinfo there, unmodified, as \
        bookinfo/platform/bookinfo.yaml (Istio's platform/kube/bookinfo.yaml), bookinfo/networking/ \
        and bookinfo/rbac/ (Istio's platform/kube/rbac/); or set {SETTING} to the directory that \
        holds bookinfo/ (default: ../shared/conformance beside the repository)",
        base.display()
    );
    dir
}
