//! Property tests over the loader and config parser: whatever bytes they are given, they return an
//! error or a value — never a panic.
mod common;

use forge_host::loader::{ModelConfig, WeightStore};
use proptest::prelude::*;

fn open_bytes(bytes: &[u8]) -> Result<WeightStore, forge_host::Error> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, bytes).unwrap();
    WeightStore::open_files(&[path])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn config_parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = ModelConfig::from_json(&bytes);
    }

    #[test]
    fn config_parser_never_panics_on_arbitrary_values(
        layers in any::<i64>(), heads in any::<u64>(), kv in any::<u64>(), hidden in any::<u64>(),
        head_dim in proptest::option::of(any::<u64>()), theta in any::<f64>(),
        rope_type in prop::sample::select(vec!["default", "linear", "llama3", "yarn", ""]),
    ) {
        let config = serde_json::json!({
            "architectures": ["Qwen3ForCausalLM"], "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "hidden_size": hidden, "head_dim": head_dim, "intermediate_size": 64,
            "vocab_size": 100, "rope_parameters": {"rope_theta": theta, "rope_type": rope_type, "factor": theta},
        });
        let _ = ModelConfig::from_json(config.to_string().as_bytes());
    }

    #[test]
    fn safetensors_loader_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = open_bytes(&bytes);
    }

    #[test]
    fn safetensors_loader_never_panics_on_a_damaged_header(header in "[ -~]{0,120}", tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&tail);
        let _ = open_bytes(&bytes);
    }

    #[test]
    fn a_truncated_or_flipped_real_file_fails_cleanly(cut in 0usize..4096, flip in 0usize..256, bit in 0u8..8) {
        let real = std::fs::read(common::fixture("tiny-llama/model.safetensors")).unwrap();
        // Damage within the header (the first bytes) and truncation anywhere near the start.
        let mut bytes = real[..real.len().min(4096 + cut)].to_vec();
        bytes[8 + flip] ^= 1 << bit;
        if let Ok(store) = open_bytes(&bytes) {
            // A header that still parses must then describe exactly the bytes present.
            prop_assert!(store.parameter_count() * 4 <= bytes.len());
        }
    }
}

#[test]
fn truncation_is_always_an_error() {
    let real = std::fs::read(common::fixture("tiny-llama/model.safetensors")).unwrap();
    for cut in [0, 7, 8, 100, real.len() / 2, real.len() - 1] {
        assert!(open_bytes(&real[..cut]).is_err(), "a file cut at {cut} bytes was accepted");
    }
    assert!(open_bytes(&real).is_ok());
}
