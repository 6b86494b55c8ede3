//! Malformed models never crash the importer, and the shipped example model
//! is exactly what its builder makes.

use cpucc::Error;
use cpucc::import::{ImportOptions, onnx::load_bytes};
use cpucc_tests::models;
use prost::Message;

fn example_bytes() -> Vec<u8> {
    (models::example().build)().encode_to_vec()
}

#[test]
fn shipped_example_matches_its_builder() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let shipped = std::fs::read(root.join(models::EXAMPLE_PATH)).unwrap();
    assert!(shipped == example_bytes(), "run `cargo xtask models` to refresh {}", models::EXAMPLE_PATH);
}

#[test]
fn every_truncation_is_an_error_not_a_crash() {
    let full = example_bytes();
    assert!(load_bytes(&full, None, &ImportOptions::default()).is_ok());
    for len in 0..full.len() {
        let r = std::panic::catch_unwind(|| load_bytes(&full[..len], None, &ImportOptions::default()));
        match r {
            Err(_) => panic!("import panicked on the first {len} bytes"),
            Ok(Err(Error::Internal(m))) => panic!("internal error on the first {len} bytes: {m}"),
            Ok(Ok(_)) => panic!("the first {len} of {} bytes imported as a whole model", full.len()),
            Ok(Err(_)) => {}
        }
    }
}

#[test]
fn corrupted_bytes_are_errors_not_crashes() {
    let full = example_bytes();
    let mut rng = cpucc::random::SplitMix64::new(11);
    for _ in 0..300 {
        let mut b = full.clone();
        for _ in 0..4 {
            let i = (rng.next_u64() as usize) % b.len();
            b[i] = rng.next_u64() as u8;
        }
        let r = std::panic::catch_unwind(|| load_bytes(&b, None, &ImportOptions::default()));
        assert!(r.is_ok(), "import panicked on a corrupted model");
    }
}
