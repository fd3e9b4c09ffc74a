//! Forward passes that reuse the layers two routes share: run one route while recording each
//! block's input and each source layer's keys/values, then run any route that agrees with it
//! below some layer from that layer on.
//!
//! A plan search evaluates many routes that differ from one recorded route only from some layer
//! `c` upwards (the recorded plan with `c` no longer cached): layers below `c` compute exactly
//! what they computed before, so only the blocks from `c` on (and the LM head) run again.
//!
//! # Contract
//! - [`RecordedForward::logits`] equals [`RoutedTransformer::forward`] under the recorded route.
//! - [`RoutedTransformer::forward_from`] under a route that sends every layer below `start` to
//!   the same source as the recorded route equals [`RoutedTransformer::forward`] under that
//!   route on the recorded tokens (the layers from `start` on may read any source below them:
//!   those below `start` are sources of the recorded route too). Any other route is a typed
//!   error, checked before anything runs. On a model with sharing adapters
//!   ([`crate::sharing_adapter`]), a route that shares after a recorded one that does not (or
//!   the reverse) reruns every layer: the adapters change all of them.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::tokens::DeviceTokens;
use super::RoutedTransformer;
use crate::attention_mask::AttentionMask;
use crate::error::{KvRoutingError, Result};
use crate::kernels::on_compute_threads;
use crate::key_value::KeyValue;
use crate::kv_store::{KvStore, SequenceKv};
use crate::route::Route;

/// One forward pass kept layer by layer for [`RoutedTransformer::forward_from`].
///
/// Holds every block's input (`n_layers` hidden states of the batch) and the keys/values of
/// every source layer: about `n_layers * batch * seq_len * (d_model + 2 * kv_dim)` floats.
#[derive(Debug, Clone)]
pub struct RecordedForward<B: Backend> {
    route: Route,
    /// `[batch, seq_len]` token ids.
    tokens: Tensor<B, 2, Int>,
    /// The input of block `l`, `[batch, seq_len, d_model]`.
    block_inputs: Vec<Tensor<B, 3>>,
    /// The keys/values layer `l` computed (source layers only).
    source_kv: Vec<Option<KeyValue<B>>>,
    /// `[batch, seq_len, vocab_size]`.
    logits: Tensor<B, 3>,
}

impl<B: Backend> RecordedForward<B> {
    /// The route the pass ran under.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// The logits of the pass, `[batch, seq_len, vocab_size]`.
    pub fn logits(&self) -> Tensor<B, 3> {
        self.logits.clone()
    }

    /// The input of every block, `n_layers` tensors of `[batch, seq_len, d_model]`: block 0's
    /// is the embedding, block `l`'s the output of block `l - 1` (the hidden state between
    /// the two).
    pub fn block_inputs(&self) -> &[Tensor<B, 3>] {
        &self.block_inputs
    }
}

/// A [`SequenceKv`] that also keeps a copy of every source layer's keys/values.
struct RecordingKv<B: Backend> {
    inner: SequenceKv<B>,
    recorded: Vec<Option<KeyValue<B>>>,
}

impl<B: Backend> KvStore<B> for RecordingKv<B> {
    fn route(&self) -> &Route {
        self.inner.route()
    }

    fn put(&mut self, layer: usize, kv: KeyValue<B>) -> Result<()> {
        self.inner.put(layer, kv.clone())?;
        self.recorded[layer] = Some(kv);
        Ok(())
    }

    fn get(&mut self, layer: usize) -> Result<KeyValue<B>> {
        self.inner.get(layer)
    }
}

impl<B: Backend> RoutedTransformer<B> {
    /// [`RoutedTransformer::forward`] under `route`, keeping what
    /// [`RoutedTransformer::forward_from`] needs to rerun only the upper layers of another
    /// route. The ids are checked against the vocabulary on the host first.
    ///
    /// # Shapes
    /// - tokens: `batch` lists of `seq_len` ids each
    pub fn forward_recorded(
        &self,
        tokens: &[Vec<u32>],
        route: &Route,
    ) -> Result<RecordedForward<B>> {
        route.check_layers(self.n_layers())?;
        self.check_merged_route(route)?;
        let seq_len = tokens.first().map_or(0, Vec::len);
        if let Some(sequence) = tokens.iter().position(|t| t.len() != seq_len) {
            return Err(KvRoutingError::InvalidLengths(format!(
                "a recorded forward pass needs sequences of one length: sequence 0 has {seq_len} tokens, sequence {sequence} has {}",
                tokens[sequence].len()
            )));
        }
        let (ids, batch, seq_len) = self.token_tensor(tokens)?;
        let ids = match ids {
            DeviceTokens::Checked(ids) | DeviceTokens::Unchecked(ids) => ids,
        };
        let rope = self.full_sequence_angles(batch, seq_len)?;
        let mut store = RecordingKv {
            inner: self.sequence_kv(route)?,
            recorded: vec![None; self.n_layers()],
        };
        let (block_inputs, hidden) = on_compute_threads::<B, _>(|| {
            let mut x = self.embed(DeviceTokens::Checked(ids.clone()));
            let mut inputs = Vec::with_capacity(self.n_layers());
            for (layer, block) in self.blocks.iter().enumerate() {
                inputs.push(x.clone());
                x = block.forward(layer, x, &rope, &AttentionMask::Causal, &mut store)?;
            }
            Ok::<_, KvRoutingError>((inputs, x))
        })?;
        Ok(RecordedForward {
            route: route.clone(),
            tokens: ids,
            block_inputs,
            source_kv: store.recorded,
            logits: self.vocab_logits(hidden),
        })
    }

    /// The logits of [`RoutedTransformer::forward`] under `route` on the recorded tokens,
    /// computing only the blocks from `start` on: layers below it reuse the recorded pass
    /// (see the module contract for the routes this accepts).
    ///
    /// # Shapes
    /// - output: `[batch, seq_len, vocab_size]`
    pub fn forward_from(
        &self,
        recorded: &RecordedForward<B>,
        start: usize,
        route: &Route,
    ) -> Result<Tensor<B, 3>> {
        route.check_layers(self.n_layers())?;
        self.check_merged_route(route)?;
        let n_layers = self.n_layers();
        if start >= n_layers {
            return Err(KvRoutingError::InvalidConfig(format!(
                "a forward pass from layer {start}: the model has {n_layers} layers"
            )));
        }
        let mismatch = |why: String| {
            KvRoutingError::InvalidRoute(format!(
                "route {route} cannot reuse the pass recorded under {} from layer {start}: {why}",
                recorded.route
            ))
        };
        if let Some(layer) = (0..start).find(|&l| route.source_of(l) != recorded.route.source_of(l))
        {
            return Err(mismatch(format!("layer {layer} reads another source")));
        }
        // Sharing adapters are on in every layer of a sharing route and off in every layer of
        // one that shares nothing: when the two routes differ in that, no layer computed the
        // same thing, and the pass reruns from the embedding.
        let start =
            if self.sharing_adapter_rank().is_some() && route.shares() != recorded.route.shares() {
                0
            } else {
                start
            };
        let mut store = self.sequence_kv(route)?;
        for layer in start..n_layers {
            let source = route.source_of(layer);
            if source >= start {
                continue;
            }
            let kv = recorded.source_kv[source].clone().ok_or_else(|| {
                mismatch(format!(
                    "layer {layer} reads layer {source}, which computed no keys/values"
                ))
            })?;
            store.put(source, kv)?;
        }
        let [batch, seq_len] = recorded.tokens.dims();
        let rope = self.full_sequence_angles(batch, seq_len)?;
        let hidden = on_compute_threads::<B, _>(|| {
            let mut x = recorded.block_inputs[start].clone();
            for (layer, block) in self.blocks.iter().enumerate().skip(start) {
                x = block.forward(layer, x, &rope, &AttentionMask::Causal, &mut store)?;
            }
            Ok::<_, KvRoutingError>(x)
        })?;
        Ok(self.vocab_logits(hidden))
    }
}
