//! Cached generation with a routed KV cache: prefill, then one decode step per token.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::Instant;

use crate::error::{KvRoutingError, Result};
use crate::memory_budget::MemoryBudget;
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

    /// Picks the next token of each row of `logits` (`[batch, vocab]`) whose entry of `skip`
    /// is false; skipped rows (finished sequences) get 0 and draw no randomness, so a sequence's
    /// samples do not depend on when the others finish. Greedy picks on the device and reads
    /// back only the ids; top-k reads the logits back and samples on the host.
    pub fn pick<B: Backend>(
        &self,
        logits: Tensor<B, 2>,
        skip: &[bool],
        rng: &mut impl Rng,
    ) -> Result<Vec<u32>> {
        let [batch, _] = logits.dims();
        if skip.len() != batch {
            return Err(KvRoutingError::ShapeMismatch {
                context: "rows to skip when picking tokens".into(),
                expected: vec![batch],
                actual: vec![skip.len()],
            });
        }
        match self {
            Sampler::Greedy => greedy_tokens(logits),
            Sampler::TopK { .. } => logits_rows(logits)?
                .iter()
                .zip(skip)
                .map(|(row, &skip)| if skip { Ok(0) } else { self.sample(row, rng) })
                .collect(),
        }
    }

    /// Picks a token from one row of logits (any RNG: generation uses a seeded `ChaCha8Rng`).
    ///
    /// An empty row is an error: there is no token to pick.
    pub fn sample(&self, logits: &[f32], rng: &mut impl Rng) -> Result<u32> {
        self.validate()?;
        if logits.is_empty() {
            return Err(KvRoutingError::InvalidLengths(
                "cannot pick a token from an empty row of logits".into(),
            ));
        }
        let greedy = || {
            let mut best = 0;
            for (i, &l) in logits.iter().enumerate() {
                if l > logits[best] {
                    best = i;
                }
            }
            best as u32
        };
        Ok(match *self {
            Sampler::Greedy => greedy(),
            Sampler::TopK { k, temperature } => {
                // Most likely first, lower id first on ties: a total order, so partitioning
                // around the k-th element (linear in the vocabulary) and sorting only the k
                // kept gives exactly what sorting the whole vocabulary gave.
                let by_likelihood =
                    |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
                let mut order: Vec<usize> = (0..logits.len()).collect();
                let k = k.min(logits.len());
                if k < order.len() {
                    order.select_nth_unstable_by(k, by_likelihood);
                    order.truncate(k);
                }
                order.sort_unstable_by(by_likelihood);
                let top = logits[order[0]] as f64;
                let weights: Vec<f64> = order
                    .iter()
                    .map(|&i| ((logits[i] as f64 - top) / temperature).exp())
                    .collect();
                let mut threshold = rng.random::<f64>() * weights.iter().sum::<f64>();
                for (&token, &weight) in order.iter().zip(&weights) {
                    if threshold < weight {
                        return Ok(token as u32);
                    }
                    threshold -= weight;
                }
                order[order.len() - 1] as u32
            }
        })
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
    /// Limit on what generation allocates for the batch (the KV cache and the prompts'
    /// activations), checked before anything is allocated. Default: unlimited.
    #[serde(default)]
    pub memory_budget: MemoryBudget,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            sampler: Sampler::Greedy,
            seed: 0,
            stop_tokens: Vec::new(),
            memory_budget: MemoryBudget::UNLIMITED,
        }
    }
}

/// What [`RoutedTransformer::generate`] produced. (Not `PartialEq`: it holds wall-clock times;
/// compare `tokens` and `kv_bytes_per_layer`.)
#[derive(Debug, Clone)]
pub struct Generation {
    /// New tokens of every sequence (prompt excluded).
    pub tokens: Vec<Vec<u32>>,
    /// Bytes the KV cache held, per layer (zero for layers reading a shared cache).
    pub kv_bytes_per_layer: Vec<usize>,
    /// Bytes the KV cache held for each sequence (its route's layers and its slots).
    pub kv_bytes_per_sequence: Vec<usize>,
    /// Wall-clock seconds to the first new token of every sequence: the prompts' forward and
    /// the first pick (time to first token).
    pub prefill_seconds: f64,
    /// Wall-clock seconds of the decode steps after the first pick, each ending with its pick
    /// read back (so queued device work is included).
    pub decode_seconds: f64,
    /// Decode steps run after the first pick (one cached forward of one token per unfinished
    /// sequence each).
    pub decode_steps: usize,
}

impl Generation {
    /// Bytes the KV cache held in total.
    pub fn kv_bytes(&self) -> usize {
        self.kv_bytes_per_layer.iter().sum()
    }
}

impl<B: Backend> RoutedTransformer<B> {
    /// Refuses, before anything is allocated, a generation whose KV cache and prefill
    /// activations exceed `config.memory_budget`.
    fn check_generation_memory(
        &self,
        longest: usize,
        capacity: usize,
        routes: &[&Route],
        config: &GenerationConfig,
    ) -> Result<()> {
        let batch = routes.len();
        let mut kv = Some(0u128);
        for route in routes {
            let bytes = (self.kv_bytes_per_token(route)? as u128).checked_mul(capacity as u128);
            kv = kv
                .zip(bytes)
                .and_then(|(sum, bytes)| sum.checked_add(bytes));
        }
        let needed = kv
            .zip(self.min_forward_bytes(batch, longest, false))
            .and_then(|(kv, prefill)| kv.checked_add(prefill));
        config.memory_budget.check(
            &format!(
                "generating for a batch of {batch} (longest prompt {longest} tokens, {} new tokens; KV cache and prefill activations)",
                config.max_new_tokens
            ),
            needed,
        )
    }

    /// Generates up to `config.max_new_tokens` tokens after each prompt, caching only the
    /// sources of `route`. Prompts may differ in length.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        route: &Route,
        config: &GenerationConfig,
    ) -> Result<Generation> {
        let capacity = self.check_generation(prompts, &vec![route; prompts.len()], config)?;
        let mut cache = self.new_cache(prompts.len(), capacity, route.clone())?;
        let mut generation = run_generation(prompts, config, |tokens| {
            self.forward_cached_last(tokens, &mut cache)
        })?;
        generation.kv_bytes_per_layer = cache.bytes_per_layer();
        generation.kv_bytes_per_sequence =
            vec![cache.bytes() / prompts.len().max(1); prompts.len()];
        Ok(generation)
    }

    /// [`RoutedTransformer::generate`] with a route per prompt (`routes[b]` for `prompts[b]`):
    /// one batch whose sequences each cache only their own route's layers
    /// ([`MixedPlanCache`](crate::MixedPlanCache)); each sequence's tokens are those it gets
    /// alone under its route.
    pub fn generate_mixed(
        &self,
        prompts: &[Vec<u32>],
        routes: &[Route],
        config: &GenerationConfig,
    ) -> Result<Generation> {
        if routes.len() != prompts.len() {
            return Err(KvRoutingError::ShapeMismatch {
                context: "routes for a mixed-plan generation (one per prompt)".into(),
                expected: vec![prompts.len()],
                actual: vec![routes.len()],
            });
        }
        let capacity =
            self.check_generation(prompts, &routes.iter().collect::<Vec<_>>(), config)?;
        let mut cache = self.new_mixed_cache(routes, capacity, &MemoryBudget::UNLIMITED)?;
        let mut generation = run_generation(prompts, config, |tokens| {
            self.forward_mixed_last(tokens, &mut cache)
        })?;
        generation.kv_bytes_per_layer = cache.bytes_per_layer();
        generation.kv_bytes_per_sequence = cache.bytes_per_sequence();
        Ok(generation)
    }

    /// Checks a generation's positions, sampler and memory before anything is allocated and
    /// returns the cache capacity it needs.
    fn check_generation(
        &self,
        prompts: &[Vec<u32>],
        routes: &[&Route],
        config: &GenerationConfig,
    ) -> Result<usize> {
        config.sampler.validate()?;
        // Every position the generation can reach is checked before the prefill, so that a
        // request that cannot finish fails at once instead of after its tokens were generated.
        // A sequence feeds back all its new tokens but the last: `len + max_new_tokens - 1`
        // positions.
        for (sequence, prompt) in prompts.iter().enumerate() {
            let positions = prompt
                .len()
                .saturating_add(config.max_new_tokens)
                .saturating_sub(1);
            if positions > self.max_seq_len() {
                return Err(KvRoutingError::SequenceTooLong {
                    sequence,
                    position: positions - 1,
                    max_seq_len: self.max_seq_len(),
                });
            }
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let capacity = longest.saturating_add(config.max_new_tokens);
        self.check_generation_memory(longest, capacity, routes, config)?;
        Ok(capacity)
    }
}

/// The prefill and decode loop of a generation, one cached step (`step`: the new tokens of
/// every sequence in, the logits of each sequence's last one out) at a time; the KV byte
/// fields are left for the caller.
fn run_generation<B: Backend>(
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    mut step: impl FnMut(&[Vec<u32>]) -> Result<Tensor<B, 2>>,
) -> Result<Generation> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut generated = vec![Vec::new(); prompts.len()];
    let mut done = vec![config.max_new_tokens == 0; prompts.len()];
    let start = Instant::now();
    let mut first_pick: Option<Instant> = None;
    let mut decode_steps = 0;
    let mut logits = step(prompts)?;
    while !done.iter().all(|&d| d) {
        let picks = config.sampler.pick(logits, &done, &mut rng)?;
        first_pick.get_or_insert_with(Instant::now);
        let mut next = vec![Vec::new(); prompts.len()];
        for (sequence, &token) in picks.iter().enumerate() {
            if done[sequence] {
                continue;
            }
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
        logits = step(&next)?;
        decode_steps += 1;
    }
    let end = Instant::now();
    let first_pick = first_pick.unwrap_or(end);
    Ok(Generation {
        tokens: generated,
        kv_bytes_per_layer: Vec::new(),
        kv_bytes_per_sequence: Vec::new(),
        prefill_seconds: (first_pick - start).as_secs_f64(),
        decode_seconds: (end - first_pick).as_secs_f64(),
        decode_steps,
    })
}

/// The most likely token of each row of `logits` (`[batch, vocab]`), chosen on the device:
/// only `batch` ids are read back, not `batch x vocab` logits. Ties go to the lowest id on the
/// CPU backends; a GPU reduction may break an exact tie differently.
pub fn greedy_tokens<B: Backend>(logits: Tensor<B, 2>) -> Result<Vec<u32>> {
    let [batch, _] = logits.dims();
    let ids: Vec<u32> = logits
        .argmax(1)
        .into_data()
        .iter::<i64>()
        .map(|id| u32::try_from(id).unwrap_or(u32::MAX))
        .collect();
    if ids.len() != batch {
        return Err(KvRoutingError::ShapeMismatch {
            context: "greedy token ids read back from the device".into(),
            expected: vec![batch],
            actual: vec![ids.len()],
        });
    }
    Ok(ids)
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

#[cfg(test)]
mod tests {
    use crate::KvRoutingError;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::Sampler;

    /// Top-k as it was first written: sort the whole vocabulary.
    fn top_k_by_full_sort(logits: &[f32], k: usize, temperature: f64, rng: &mut ChaCha8Rng) -> u32 {
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

    #[test]
    fn partial_selection_samples_exactly_as_a_full_sort() {
        let mut values = ChaCha8Rng::seed_from_u64(9);
        for (vocab, k) in [(1, 1), (5, 5), (5, 9), (300, 1), (300, 40), (1000, 999)] {
            // Coarse values: many exact ties, which the lower id must win both ways.
            let logits: Vec<f32> = (0..vocab)
                .map(|_| (values.random::<f32>() * 8.0).round())
                .collect();
            let sampler = Sampler::TopK {
                k,
                temperature: 0.7,
            };
            let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(1), ChaCha8Rng::seed_from_u64(1));
            for draw in 0..200 {
                assert_eq!(
                    sampler.sample(&logits, &mut a).unwrap(),
                    top_k_by_full_sort(&logits, k, 0.7, &mut b),
                    "vocabulary {vocab}, k {k}, draw {draw}"
                );
            }
        }
    }

    #[test]
    fn an_empty_row_or_a_bad_sampler_is_an_error_not_a_panic() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert!(matches!(
            Sampler::Greedy.sample(&[], &mut rng),
            Err(KvRoutingError::InvalidLengths(_))
        ));
        let zero_k = Sampler::TopK {
            k: 0,
            temperature: 1.0,
        };
        assert!(matches!(
            zero_k.sample(&[1.0, 2.0], &mut rng),
            Err(KvRoutingError::InvalidConfig(_))
        ));
    }
}
