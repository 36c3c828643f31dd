//! Replays every corpus file of every fuzz target (`fuzz/corpus/<target>/`: the seeds, the
//! inputs the fuzzers kept, and every crash found, fixed and kept as a regression).

use std::path::Path;

#[test]
fn every_corpus_file_runs_through_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut total = 0;
    for (name, body) in gatewatch_fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{name}: no seed corpus");
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let r = std::panic::catch_unwind(|| body(&data));
            assert!(r.is_ok(), "{name}: {} panics", f.display());
        }
        total += files.len();
    }
    assert!(total >= gatewatch_fuzz::TARGETS.len());
}

#[test]
fn fuzz_targets_match_the_cargo_fuzz_binaries() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/fuzz_targets");
    let mut bins: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    bins.sort();
    let mut names: Vec<String> = gatewatch_fuzz::TARGETS
        .iter()
        .map(|(n, _)| (*n).to_string())
        .collect();
    names.sort();
    assert_eq!(bins, names);
}
