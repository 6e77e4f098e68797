//! Every corpus file (the fuzzers' findings and seeds, `fuzz/corpus/<target>/`) through
//! its target: what a fuzzer once found stays fixed. Fast; CI runs it, it does not fuzz.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        if path.is_file() {
            let data = std::fs::read(&path).expect("read");
            let r = std::panic::catch_unwind(|| f(&data));
            assert!(r.is_ok(), "{target}: {} panics", path.display());
            n += 1;
        }
    }
    assert!(n > 0, "{target}: empty corpus");
    println!("{target}: {n} inputs");
}

#[test]
fn decoders_corpus() {
    replay("decoders", ibp_fuzz::decoders);
}

#[test]
fn signature_headers_corpus() {
    replay("signature_headers", ibp_fuzz::signature_headers);
}

#[test]
fn observation_body_corpus() {
    replay("observation_body", ibp_fuzz::observation_body);
}
