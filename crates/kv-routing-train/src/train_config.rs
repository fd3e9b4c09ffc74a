//! [`TrainConfig`]: everything a training run depends on, saved with every checkpoint as
//! `config.json`.
//!
//! Readers of a checkpoint that only need its model (evaluation, generation, export) read that
//! file through kv-routing-hf as a [`TrainingRun`](kv_routing_hf::TrainingRun): the fields
//! `model`, `p`, `steps`, `route_seed` and `base` keep those names and types (tested below).

use kv_routing::{RouteDraw, RoutedTransformerConfig, StochasticRouter};
use kv_routing_hf::PretrainedBase;
use serde::{Deserialize, Serialize};

use crate::adapter_up_rate::{check_ratio, without_adapters};
use crate::data::DataSource;
use crate::distillation::Distillation;
use crate::error::{Result, TrainError};
use crate::schedule::WarmupCosine;
use crate::tokenizer::BYTE_VOCAB_SIZE;

/// The most validation batches a run may ask for: more than any evaluation needs, so a larger
/// value is taken for a damaged configuration rather than run for hours.
pub const MAX_EVAL_BATCHES: usize = 10_000;

/// A training run. Serialized as `config.json` in every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The model.
    pub model: RoutedTransformerConfig,
    /// Routing probability: each layer >= 1 reads a random earlier layer with probability `p`.
    pub p: f64,
    /// Seed of the route stream.
    pub route_seed: u64,
    /// Seed of the host-drawn initial weights.
    pub init_seed: u64,
    /// Training data.
    pub data: DataSource,
    /// Input tokens per sequence.
    pub seq_len: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Optimizer steps in total.
    pub steps: u64,
    /// Peak learning rate (AdamW).
    pub learning_rate: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_learning_rate: f64,
    /// Linear warmup steps.
    pub warmup_steps: u64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Maximum global gradient norm.
    pub grad_clip: f64,
    /// Validate every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Validation batches per evaluation.
    pub eval_batches: usize,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// The Hugging Face checkpoint the weights were initialized from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<PretrainedBase>,
    /// Where the sharing steps' routes come from (default: the paper's independent per-layer
    /// draw; absent from the configs of runs from before plan draws).
    #[serde(default, skip_serializing_if = "RouteDraw::is_independent")]
    pub route_draw: RouteDraw,
    /// Self-distillation from a frozen teacher instead of plain cross-entropy, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<Distillation>,
    /// LoRA+: the sharing adapters' `up` matrices learn at this multiple of the learning rate
    /// ([`crate::adapter_up_rate`]); absent: the same rate as everything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_up_lr_ratio: Option<f64>,
}

impl TrainConfig {
    /// A small byte-level run on the synthetic corpus: `n_layers` x `d_model`, context `seq_len`.
    pub fn small(n_layers: usize, d_model: usize, seq_len: usize) -> Self {
        let n_heads = (d_model / 32).max(1);
        Self {
            model: RoutedTransformerConfig::new(
                BYTE_VOCAB_SIZE,
                d_model,
                n_layers,
                n_heads,
                d_model * 8 / 3,
            )
            .with_n_kv_heads(Some((n_heads / 2).max(1)))
            .with_max_seq_len(seq_len.max(256)),
            p: 0.0,
            route_seed: 0,
            init_seed: 0,
            data: DataSource::Synthetic { seed: 0 },
            seq_len,
            batch_size: 16,
            steps: 1000,
            learning_rate: 3e-3,
            min_learning_rate: 3e-4,
            warmup_steps: 100,
            weight_decay: 0.1,
            grad_clip: 1.0,
            eval_every: 250,
            eval_batches: 8,
            checkpoint_every: 500,
            base: None,
            route_draw: RouteDraw::IndependentLayers,
            distill: None,
            adapter_up_lr_ratio: None,
        }
    }

    /// The run's route stream at step 0: its `p`, seed and draw.
    pub fn router(&self) -> Result<StochasticRouter> {
        Ok(
            StochasticRouter::new(self.model.n_layers, self.p, self.route_seed)?
                .with_draw(self.route_draw.clone())?,
        )
    }

    /// The learning-rate schedule of the run.
    pub fn schedule(&self) -> WarmupCosine {
        WarmupCosine {
            peak: self.learning_rate,
            floor: self.min_learning_rate,
            warmup: self.warmup_steps,
            total: self.steps,
        }
    }

    /// Checks every setting, naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.route_draw.validate()?;
        if let Some(distill) = &self.distill {
            distill.validate()?;
        }
        if let Some(ratio) = self.adapter_up_lr_ratio {
            check_ratio(ratio)?;
            if self.model.sharing_adapter.is_none() {
                return Err(without_adapters());
            }
        }
        if !(0.0..=1.0).contains(&self.p) {
            return Err(TrainError::Config(format!(
                "p must be in [0, 1], got {}",
                self.p
            )));
        }
        let byte_tokens = !matches!(
            self.data,
            DataSource::TextFile {
                tokenizer: Some(_),
                ..
            }
        );
        if byte_tokens && self.model.vocab_size < BYTE_VOCAB_SIZE {
            return Err(TrainError::Config(format!(
                "the byte tokenizer needs vocab_size >= {BYTE_VOCAB_SIZE}, got {}",
                self.model.vocab_size
            )));
        }
        if self.seq_len < 2 || self.seq_len > self.model.max_seq_len {
            return Err(TrainError::Config(format!(
                "seq_len must be in 2..={} (the model's max_seq_len), got {}",
                self.model.max_seq_len, self.seq_len
            )));
        }
        let positive = [
            ("batch_size", self.batch_size as f64),
            ("steps", self.steps as f64),
            ("learning_rate", self.learning_rate),
            ("grad_clip", self.grad_clip),
            ("eval_batches", self.eval_batches as f64),
        ];
        if let Some((name, value)) = positive.iter().find(|(_, v)| !(*v > 0.0 && v.is_finite())) {
            return Err(TrainError::Config(format!(
                "{name} must be positive, got {value}"
            )));
        }
        if self.eval_batches > MAX_EVAL_BATCHES {
            // Found by the checkpoint fuzz test: a damaged `eval_batches` of 2^32 stalled the
            // first validation of a resumed run for hours without a word.
            return Err(TrainError::Config(format!(
                "eval_batches must be at most {MAX_EVAL_BATCHES}, got {}",
                self.eval_batches
            )));
        }
        if !(self.min_learning_rate >= 0.0 && self.min_learning_rate <= self.learning_rate) {
            return Err(TrainError::Config(format!(
                "min_learning_rate must be in [0, learning_rate = {}], got {}",
                self.learning_rate, self.min_learning_rate
            )));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(TrainError::Config(format!(
                "weight_decay must be >= 0, got {}",
                self.weight_decay
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_routing_hf::{HfConfig, TrainingRun};

    /// kv-routing-hf reads the model half of `config.json` on its own: what it reads must be
    /// what this crate wrote.
    #[test]
    fn the_model_half_of_a_config_reads_back_as_a_training_run() {
        let hf_config: HfConfig = serde_json::from_value(serde_json::json!({
            "model_type": "llama", "vocab_size": 300, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2
        }))
        .unwrap();
        for base in [
            None,
            Some(PretrainedBase {
                source: "/models/base".into(),
                hf_config,
            }),
        ] {
            let mut config = TrainConfig::small(3, 64, 32);
            config.p = 0.25;
            config.steps = 77;
            config.route_seed = 9;
            config.base = base;
            let json = serde_json::to_string(&config).unwrap();
            let run: TrainingRun = serde_json::from_str(&json).unwrap();
            assert_eq!(
                run,
                TrainingRun {
                    model: config.model.clone(),
                    p: 0.25,
                    steps: 77,
                    route_seed: 9,
                    base: config.base.clone(),
                }
            );
        }
    }
}
