//! The two trained models that ship with the repository (`examples/models/`): the same 6-layer
//! byte-level transformer trained on the same data for the same steps, once with stochastic
//! routing (`p = 0.5`) and once without (`p = 0`). examples/models/README.md says how they were
//! trained and how to regenerate them.

use std::path::PathBuf;

/// One of the models in `examples/models/`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BundledModel {
    /// Short name used in tables.
    pub name: &'static str,
    /// Directory under `examples/models/` (Hugging Face layout: `config.json`, `model.safetensors`;
    /// the routing probability and steps it was trained with are in `config.json`).
    pub dir_name: &'static str,
}

impl BundledModel {
    /// Where the model lives in this checkout.
    pub fn dir(&self) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(self.dir_name)
    }
}

/// Trained with routing: each layer >= 1 read a random earlier layer's keys/values with
/// probability 0.5 at every step.
pub const ROUTED: BundledModel = BundledModel {
    name: "routed",
    dir_name: "routed-p0.5",
};

/// The control: the same training without routing.
pub const BASELINE: BundledModel = BundledModel {
    name: "baseline",
    dir_name: "baseline-p0",
};

/// Both, routed first.
pub const BUNDLED_MODELS: [BundledModel; 2] = [ROUTED, BASELINE];

/// Tokens per sequence the models were trained on (their held-out loss is measured at it).
pub const TRAINED_SEQ_LEN: usize = 128;
