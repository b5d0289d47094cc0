//! Shared helpers for tests that read `../shared/data`.

use std::path::PathBuf;

/// Path of a file under the shared data folder, or `None` (with a loud message) when it is absent outside
/// CI. In CI (`CI=true`) a missing file fails the test.
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(rel);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "required test data {} is missing (CI=true): shared/data must sit beside the project",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED: test data {} not found; this test did not run",
        path.display()
    );
    None
}
