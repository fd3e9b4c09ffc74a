//! Cached generation with a routed KV cache: prefill, then one decode step per token.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{KvRoutingError, Result};
use crate::route::Route;
use crate::routed_transformer::RoutedTransformer;

/// How the next token is picked from the logits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Sampler {
    /// The most likely token (lowest id on ties).
    Greedy,
    /// Sample from the `k` most likely tokens after dividing the logits by `temperature`.
    TopK {
        /// Tokens kept, >= 1.
        k: usize,
        /// Softmax temperature, > 0.
        temperature: f64,
    },
}

impl Sampler {
    fn validate(&self) -> Result<()> {
        match *self {
            Sampler::Greedy => Ok(()),
            Sampler::TopK { k, temperature } => {
                if k == 0 || !(temperature > 0.0 && temperature.is_finite()) {
                    Err(KvRoutingError::InvalidConfig(format!(
                        "top-k sampling needs k >= 1 and a positive finite temperature (got k = {k}, temperature = {temperature})"
                    )))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Picks a token from one row of logits.
    pub fn sample(&self, logits: &[f32], rng: &mut ChaCha8Rng) -> u32 {
        let greedy = || {
            let mut best = 0;
            for (i, &l) in logits.iter().enumerate() {
                if l > logits[best] {
                    best = i;
                }
            }
            best as u32
        };
        match *self {
            Sampler::Greedy => greedy(),
            Sampler::TopK { k, temperature } => {
                let mut order: Vec<usize> = (0..logits.len()).collect();
                order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
                order.truncate(k.min(logits.len()));
                let top = logits[order[0]] as f64;
                let weights: Vec<f64> = order
                    .iter()
                    .map(|&i| ((logits[i] as f64 - top) / temperature).exp())
                    .collect();
                let mut threshold = rng.random::<f64>() * weights.iter().sum::<f64>();
                for (&token, &weight) in order.iter().zip(&weights) {
                    if threshold < weight {
                        return token as u32;
                    }
                    threshold -= weight;
                }
                order[order.len() - 1] as u32
            }
        }
    }
}

/// Settings of [`RoutedTransformer::generate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    /// New tokens per sequence at most.
    pub max_new_tokens: usize,
    /// Token picking rule.
    pub sampler: Sampler,
    /// Seed of the sampling RNG.
    pub seed: u64,
    /// A sequence that produces any of these tokens stops (the token is kept): a model's
    /// end-of-sequence ids (Llama 3 Instruct has three).
    pub stop_tokens: Vec<u32>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            sampler: Sampler::Greedy,
            seed: 0,
            stop_tokens: Vec::new(),
        }
    }
}

/// What [`RoutedTransformer::generate`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// New tokens of every sequence (prompt excluded).
    pub tokens: Vec<Vec<u32>>,
    /// Bytes the KV cache held, per layer (zero for layers reading a shared cache).
    pub kv_bytes_per_layer: Vec<usize>,
}

impl Generation {
    /// Bytes the KV cache held in total.
    pub fn kv_bytes(&self) -> usize {
        self.kv_bytes_per_layer.iter().sum()
    }
}

impl<B: Backend> RoutedTransformer<B> {
    /// Generates up to `config.max_new_tokens` tokens after each prompt, caching only the
    /// sources of `route`. Prompts may differ in length.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        route: &Route,
        config: &GenerationConfig,
    ) -> Result<Generation> {
        config.sampler.validate()?;
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let mut cache = self.new_cache(
            prompts.len(),
            longest + config.max_new_tokens,
            route.clone(),
        )?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut generated = vec![Vec::new(); prompts.len()];
        let mut done = vec![config.max_new_tokens == 0; prompts.len()];
        let mut logits = self.forward_cached_last(prompts, &mut cache)?;
        while !done.iter().all(|&d| d) {
            let rows = logits_rows(logits)?;
            let mut next = vec![Vec::new(); prompts.len()];
            for (sequence, row) in rows.iter().enumerate() {
                if done[sequence] {
                    continue;
                }
                let token = config.sampler.sample(row, &mut rng);
                generated[sequence].push(token);
                done[sequence] = generated[sequence].len() >= config.max_new_tokens
                    || config.stop_tokens.contains(&token);
                if !done[sequence] {
                    next[sequence].push(token);
                }
            }
            if done.iter().all(|&d| d) {
                break;
            }
            logits = self.forward_cached_last(&next, &mut cache)?;
        }
        Ok(Generation {
            tokens: generated,
            kv_bytes_per_layer: cache.bytes_per_layer(),
        })
    }
}

/// Logits `[batch, vocab]` to host rows.
pub fn logits_rows<B: Backend>(logits: Tensor<B, 2>) -> Result<Vec<Vec<f32>>> {
    let [batch, vocab] = logits.dims();
    let values: Vec<f32> = logits.into_data().iter::<f32>().collect();
    if values.len() != batch * vocab {
        return Err(KvRoutingError::ShapeMismatch {
            context: "logits read back from the device".into(),
            expected: vec![batch, vocab],
            actual: vec![values.len()],
        });
    }
    Ok(values.chunks(vocab).map(<[f32]>::to_vec).collect())
}
