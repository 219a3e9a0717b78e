//! The broken files of `testdata/`, one per finding, for the unit tests
//! and the end-to-end test of `mesh analyze`.

use std::path::PathBuf;

/// Each broken file with the findings its `# finding:` lines announce
/// (each the start of a line `mesh analyze` prints), in name order.
pub fn broken_files() -> Vec<(PathBuf, Vec<String>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/analyze/testdata");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("testdata").map(|e| e.expect("an entry").path()).collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).expect("a file");
            let expected =
                text.lines().filter_map(|l| l.strip_prefix("# finding: ")).map(str::to_string).collect();
            (file, expected)
        })
        .collect()
}
