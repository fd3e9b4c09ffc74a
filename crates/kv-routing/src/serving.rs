//! [`RoutedTransformer::serve`]: a queue of requests, each with its own plan, served under a KV
//! memory budget by admission on exact bytes and continuous batching.
//!
//! # Contract
//! - **Admission by exact bytes.** A request's KV need is its route's bytes per token (in the
//!   model's KV dtype) times its slots (prompt + new tokens): what its cache will hold, by the
//!   cache manager's own formula. Requests are admitted in queue order while the admitted ones'
//!   needs fit the budget; the sum of the caches' [`KvCacheManager::bytes`] never exceeds it.
//! - **Continuous batching.** Every decode step runs all admitted, unfinished requests as one
//!   batch (attention per request, the rest of each block once: see
//!   [`crate::MixedPlanCache`]); a finished request's cache is released at once and the queue's
//!   head admitted as soon as it fits. A newly admitted request's prompt is run on its own
//!   before it joins the decode steps.
//! - **No starvation, no surprise.** Admission is first-in first-out (no later request overtakes
//!   one that waits for memory); a request that cannot fit the budget even alone is refused
//!   before anything runs.
//! - **Same tokens as alone.** With greedy sampling each request gets the tokens it gets from
//!   [`RoutedTransformer::generate`] alone under its route (float rounding aside).

use std::time::Instant;

use burn::tensor::backend::Backend;

use crate::error::{KvRoutingError, Result};
use crate::generation::greedy_tokens;
use crate::kv_cache::KvCacheManager;
use crate::route::Route;
use crate::RoutedTransformer;

/// One request of a [`RoutedTransformer::serve`] queue.
#[derive(Debug, Clone)]
pub struct ServeRequest {
    /// Prompt tokens (at least one).
    pub prompt: Vec<u32>,
    /// The route (plan) its KV cache serves.
    pub route: Route,
    /// New tokens at most.
    pub max_new_tokens: usize,
}

/// Limits of a [`RoutedTransformer::serve`] run.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// KV cache bytes the admitted requests may hold together.
    pub kv_budget: usize,
    /// A request that produces any of these tokens stops (the token is kept).
    pub stop_tokens: Vec<u32>,
}

/// What [`RoutedTransformer::serve`] did for one request.
#[derive(Debug, Clone)]
pub struct ServedRequest {
    /// Its new tokens (greedy).
    pub tokens: Vec<u32>,
    /// KV bytes its cache held.
    pub kv_bytes: usize,
    /// Seconds from the start of the run to its admission.
    pub queued_seconds: f64,
    /// Seconds from the start of the run to its last token.
    pub finished_seconds: f64,
}

/// What [`RoutedTransformer::serve`] did.
#[derive(Debug, Clone)]
pub struct ServeReport {
    /// Per request, in queue order.
    pub requests: Vec<ServedRequest>,
    /// Most requests held at once.
    pub peak_concurrent: usize,
    /// Most KV bytes held at once (summed [`KvCacheManager::bytes`]).
    pub peak_kv_bytes: usize,
    /// Batched decode steps run.
    pub decode_steps: usize,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
}

impl ServeReport {
    /// New tokens of every request per second of the run.
    pub fn tokens_per_second(&self) -> f64 {
        let tokens: usize = self.requests.iter().map(|r| r.tokens.len()).sum();
        tokens as f64 / self.seconds
    }
}

/// An admitted request.
struct Active<B: Backend> {
    request: usize,
    cache: KvCacheManager<B>,
    /// The token to feed next (its last pick).
    next: u32,
}

impl<B: Backend> RoutedTransformer<B> {
    /// Serves `requests` (greedy) under `config`'s KV budget. See the module docs.
    ///
    /// # Errors
    /// Before anything runs: an empty prompt, a request longer than the model's context, a
    /// route that does not fit the model, or a request whose cache alone exceeds the budget
    /// ([`KvRoutingError::MemoryBudgetExceeded`]).
    pub fn serve(&self, requests: &[ServeRequest], config: &ServeConfig) -> Result<ServeReport> {
        let mut needs = Vec::with_capacity(requests.len());
        for (index, request) in requests.iter().enumerate() {
            if request.prompt.is_empty() {
                return Err(KvRoutingError::InvalidLengths(format!(
                    "request {index} has an empty prompt"
                )));
            }
            let slots = request.prompt.len() + request.max_new_tokens;
            if slots.saturating_sub(1) > self.max_seq_len() {
                return Err(KvRoutingError::SequenceTooLong {
                    sequence: index,
                    position: slots - 2,
                    max_seq_len: self.max_seq_len(),
                });
            }
            let need = self.kv_bytes_per_token(&request.route)? * slots;
            if need > config.kv_budget {
                return Err(KvRoutingError::MemoryBudgetExceeded {
                    what: format!("the KV cache of request {index} ({slots} slots) alone"),
                    needed_bytes: Some(need as u128),
                    budget_bytes: Some(config.kv_budget as u64),
                });
            }
            needs.push(need);
        }
        let start = Instant::now();
        let mut served: Vec<Option<ServedRequest>> = vec![None; requests.len()];
        let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); requests.len()];
        let mut queued = vec![0.0; requests.len()];
        let mut active: Vec<Active<B>> = Vec::new();
        let (mut next_request, mut held) = (0, 0);
        let (mut peak_concurrent, mut peak_kv_bytes, mut decode_steps) = (0, 0, 0);
        let is_done = |request: usize, tokens: &[u32]| {
            tokens.len() >= requests[request].max_new_tokens
                || tokens
                    .last()
                    .is_some_and(|t| config.stop_tokens.contains(t))
        };
        loop {
            // Admit in queue order while the next one fits; prefill each on its own.
            while next_request < requests.len() && held + needs[next_request] <= config.kv_budget {
                let index = next_request;
                let request = &requests[index];
                next_request += 1;
                queued[index] = start.elapsed().as_secs_f64();
                let slots = request.prompt.len() + request.max_new_tokens;
                let mut cache = self.new_cache(1, slots, request.route.clone())?;
                if cache.bytes() != needs[index] {
                    return Err(KvRoutingError::Execution(format!(
                        "request {index}'s cache holds {} bytes, its admission counted {}",
                        cache.bytes(),
                        needs[index]
                    )));
                }
                held += cache.bytes();
                peak_kv_bytes = peak_kv_bytes.max(held);
                if request.max_new_tokens == 0 {
                    held -= cache.bytes();
                    served[index] = Some(finished(Vec::new(), &cache, queued[index], &start));
                    continue;
                }
                let logits =
                    self.forward_cached_last(std::slice::from_ref(&request.prompt), &mut cache)?;
                let pick = greedy_tokens(logits)?[0];
                tokens[index].push(pick);
                if is_done(index, &tokens[index]) {
                    held -= cache.bytes();
                    served[index] = Some(finished(
                        std::mem::take(&mut tokens[index]),
                        &cache,
                        queued[index],
                        &start,
                    ));
                } else {
                    active.push(Active {
                        request: index,
                        cache,
                        next: pick,
                    });
                }
                peak_concurrent = peak_concurrent.max(active.len());
            }
            if active.is_empty() {
                if next_request == requests.len() {
                    break;
                }
                // Unreachable: with nothing held every request fits (checked above).
                return Err(KvRoutingError::Execution(
                    "serving stalled with nothing admitted".into(),
                ));
            }
            // One batched decode step of every active request.
            let step: Vec<Vec<u32>> = active.iter().map(|a| vec![a.next]).collect();
            let mut groups: Vec<_> = active.iter_mut().map(|a| (1, &mut a.cache)).collect();
            let picks = greedy_tokens(self.forward_groups_last(&step, &mut groups)?)?;
            decode_steps += 1;
            let mut still = Vec::with_capacity(active.len());
            for (mut a, pick) in active.drain(..).zip(picks) {
                tokens[a.request].push(pick);
                if is_done(a.request, &tokens[a.request]) {
                    held -= a.cache.bytes();
                    served[a.request] = Some(finished(
                        std::mem::take(&mut tokens[a.request]),
                        &a.cache,
                        queued[a.request],
                        &start,
                    ));
                } else {
                    a.next = pick;
                    still.push(a);
                }
            }
            active = still;
        }
        Ok(ServeReport {
            requests: served
                .into_iter()
                .map(|s| s.expect("every request finished"))
                .collect(),
            peak_concurrent,
            peak_kv_bytes,
            decode_steps,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

fn finished<B: Backend>(
    tokens: Vec<u32>,
    cache: &KvCacheManager<B>,
    queued_seconds: f64,
    start: &Instant,
) -> ServedRequest {
    ServedRequest {
        tokens,
        kv_bytes: cache.bytes(),
        queued_seconds,
        finished_seconds: start.elapsed().as_secs_f64(),
    }
}
