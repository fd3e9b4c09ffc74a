//! Passkey retrieval: a task that only the KV cache can answer.
//!
//! A five-digit key is planted at a random depth in lines of repeated filler, and the model is
//! asked for it at the end (the task of Mohtashami & Jaggi, "Landmark Attention", 2023, used to
//! probe long-context retrieval). The filler says nothing about the key, so a model answers
//! only by attending back to the one place that holds it: exactly what sharing a layer's
//! keys/values with another layer can break. A prompt is answered correctly when the greedy
//! continuation contains the key.
//!
//! Prompts are a pure function of `(seed, index)`; the same task evaluates every model and plan.

use burn::tensor::backend::Backend;
use kv_routing::{GenerationConfig, Route, RoutedTransformer, Sampler};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::tokenizer::TextCodec;

const INTRO: &str = "There is an important piece of information hidden inside a lot of \
    irrelevant text. Find it and memorize it. I will quiz you about it.\n\n";
const FILLER: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
const QUESTION: &str = "\n\nWhat is the pass key? The pass key is";

/// Tokens generated after each prompt (the key and its surroundings).
const ANSWER_TOKENS: usize = 8;

/// The passkey task: how many prompts, how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasskeyTask {
    /// Prompts evaluated.
    pub prompts: usize,
    /// Filler lines around the key (about 23 tokens each with a Llama-family tokenizer).
    pub filler_lines: usize,
    /// Seed of the keys and their depths.
    pub seed: u64,
}

/// One prompt and the key it hides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyPrompt {
    /// The prompt text.
    pub text: String,
    /// The five-digit key.
    pub key: String,
}

impl PasskeyTask {
    /// Prompt `index`: the key after a uniformly drawn number of filler lines.
    pub fn prompt(&self, index: usize) -> PasskeyPrompt {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(index as u64);
        let key = rng.random_range(10_000..100_000u32).to_string();
        let depth = rng.random_range(0..=self.filler_lines);
        let mut text = String::from(INTRO);
        for line in 0..=self.filler_lines {
            if line == depth {
                text.push_str(&format!(
                    "The pass key is {key}. Remember it. {key} is the pass key. "
                ));
            }
            if line < self.filler_lines {
                text.push_str(FILLER);
            }
        }
        text.push_str(QUESTION);
        PasskeyPrompt { text, key }
    }
}

/// How a model did on the task under one route.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PasskeyScore {
    /// Fraction of prompts whose continuation contains the key.
    pub accuracy: f64,
    /// Prompts evaluated.
    pub prompts: usize,
    /// Mean prompt length in tokens.
    pub mean_prompt_tokens: f64,
}

/// The prompts of a [`PasskeyTask`] as one model's tokens, checked against its context: made
/// once per model and scored under every route.
#[derive(Debug, Clone, PartialEq)]
pub struct PasskeyTokens {
    /// Token ids of each prompt, and the key it hides.
    prompts: Vec<(Vec<u32>, String)>,
}

impl PasskeyTask {
    /// Tokenizes every prompt with `codec`; fails when there are none, or when a prompt and its
    /// answer would not fit in `max_seq_len` positions (fewer filler lines fit).
    pub fn tokenize(&self, codec: &TextCodec, max_seq_len: usize) -> Result<PasskeyTokens> {
        if self.prompts == 0 {
            return Err(TrainError::Config(
                "the passkey task needs at least one prompt".into(),
            ));
        }
        let prompts = (0..self.prompts)
            .map(|i| {
                let prompt = self.prompt(i);
                Ok((codec.encode(&prompt.text)?, prompt.key))
            })
            .collect::<Result<Vec<_>>>()?;
        let longest = prompts.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        if longest + ANSWER_TOKENS > max_seq_len {
            return Err(TrainError::Config(format!(
                "passkey prompts of {} filler lines reach {longest} tokens (+{ANSWER_TOKENS} for the answer), past the model's context of {max_seq_len}; use fewer filler lines",
                self.filler_lines
            )));
        }
        Ok(PasskeyTokens { prompts })
    }
}

/// Runs the tokenized task on `model` under `route`, `batch_size` prompts at a time, greedy.
pub fn passkey_score<B: Backend>(
    model: &RoutedTransformer<B>,
    codec: &TextCodec,
    route: &Route,
    task: &PasskeyTokens,
    batch_size: usize,
) -> Result<PasskeyScore> {
    if batch_size == 0 {
        return Err(TrainError::Config(
            "the passkey task needs a batch of at least one".into(),
        ));
    }
    let mut correct = 0usize;
    for batch in task.prompts.chunks(batch_size) {
        let ids: Vec<Vec<u32>> = batch.iter().map(|(ids, _)| ids.clone()).collect();
        let generation = model.generate(
            &ids,
            route,
            &GenerationConfig {
                max_new_tokens: ANSWER_TOKENS,
                sampler: Sampler::Greedy,
                ..GenerationConfig::default()
            },
        )?;
        for ((_, key), answer) in batch.iter().zip(&generation.tokens) {
            correct += usize::from(codec.decode(answer)?.contains(key.as_str()));
        }
    }
    let prompts = task.prompts.len();
    let tokens: usize = task.prompts.iter().map(|(ids, _)| ids.len()).sum();
    Ok(PasskeyScore {
        accuracy: correct as f64 / prompts as f64,
        prompts,
        mean_prompt_tokens: tokens as f64 / prompts as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_plant_one_key_at_a_seeded_depth() {
        let task = PasskeyTask {
            prompts: 50,
            filler_lines: 10,
            seed: 3,
        };
        let depths: Vec<usize> = (0..50)
            .map(|i| {
                let prompt = task.prompt(i);
                assert_eq!(prompt, task.prompt(i), "a pure function of the index");
                assert_eq!(prompt.key.len(), 5);
                assert_eq!(prompt.text.matches(&prompt.key).count(), 2);
                assert_eq!(prompt.text.matches(FILLER).count(), 10);
                assert!(prompt.text.ends_with("The pass key is"));
                prompt.text[..prompt.text.find(&prompt.key).unwrap()]
                    .matches(FILLER)
                    .count()
            })
            .collect();
        assert!(depths.contains(&0) && depths.contains(&10), "{depths:?}");
        assert_ne!(task.prompt(0).key, task.prompt(1).key);
    }

    #[test]
    fn prompts_are_checked_against_the_context_then_scored_once_each() {
        use burn_flex::{Flex, FlexDevice};
        use kv_routing::{CachePlan, RoutedTransformerConfig};

        let task = PasskeyTask {
            prompts: 3,
            filler_lines: 0,
            seed: 1,
        };
        let error = task.tokenize(&TextCodec::Bytes, 64).unwrap_err();
        assert!(error.to_string().contains("context of 64"), "{error}");

        let model = RoutedTransformerConfig::new(256, 32, 2, 4, 48)
            .with_max_seq_len(512)
            .init::<Flex>(&FlexDevice)
            .unwrap();
        let tokens = task
            .tokenize(&TextCodec::Bytes, model.max_seq_len())
            .unwrap();
        let route = CachePlan::full(2).unwrap().route();
        let score = passkey_score(&model, &TextCodec::Bytes, &route, &tokens, 2).unwrap();
        assert_eq!(score.prompts, 3);
        let bytes: usize = (0..3).map(|i| task.prompt(i).text.len()).sum();
        assert_eq!(score.mean_prompt_tokens, bytes as f64 / 3.0);
        assert!((0.0..=1.0).contains(&score.accuracy));
    }
}
