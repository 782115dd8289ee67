//! Manifests, indexes and image configs as a registry (or an OCI layout) sends them:
//! parsing never panics; what parses yields checked digests or a clear error.
#![no_main]

use image::fuzzing::{
    Fetched, LayoutIndex, chain_ids, parse_config, parse_manifest, select_platform,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    match parse_manifest(bytes, "fuzz") {
        Ok(Fetched::Index(entries)) => {
            if let Ok(chosen) = select_platform(&entries, "fuzz") {
                let _ = chosen.digest();
                let _ = chosen.size();
            }
        }
        Ok(Fetched::Image(manifest)) => {
            let _ = manifest.config.digest();
            for layer in &manifest.layers {
                let _ = layer.digest();
                let _ = layer.size();
            }
        }
        Err(_) => {}
    }
    for layers in 0..4 {
        if let Ok(facts) = parse_config(bytes, layers, "fuzz") {
            assert_eq!(facts.diff_ids.len(), layers);
            assert_eq!(chain_ids(&facts.diff_ids).len(), layers);
        }
    }
    let _ = serde_json::from_slice::<LayoutIndex>(bytes);
});
