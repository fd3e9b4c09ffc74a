//! The full-sequence forward passes of a [`RoutedTransformer`], the block loop every forward
//! pass shares, and the LM head.
//!
//! # Contract
//! - A forward pass under a route gives the logits of every position; a route that does not
//!   fit the model, and an empty batch or sequence, are typed errors before anything runs.
//! - [`RoutedTransformer::forward`] takes ids already on the device and does not read them
//!   back (no synchronization with the device); [`RoutedTransformer::forward_tokens`] takes
//!   host lists and checks them on the host (see `tokens` for both).
//! - Every path, cached or not, runs the same block loop on the backend's compute threads, so
//!   a route shares keys/values the same way in all of them.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::tokens::DeviceTokens;
use super::RoutedTransformer;
use crate::attention_mask::AttentionMask;
use crate::error::KvRoutingError;
use crate::kernels::on_compute_threads;
use crate::kv_store::KvStore;
use crate::projection::{blocks_last_axis, matmul_last_axis, project};
use crate::rms_norm::rms_norm;
use crate::rope::RopeAngles;
use crate::route::Route;

impl<B: Backend> RoutedTransformer<B> {
    /// Full-sequence forward under `route` of a batch of equal-length sequences already on the
    /// device: training, evaluation, uncached prefill. (Host token lists, or sequences of
    /// different lengths: [`RoutedTransformer::forward_tokens`].)
    ///
    /// The ids are not read back to be checked against the vocabulary: that would synchronize
    /// with the device on every call. Check them where they are built
    /// ([`RoutedTransformer::check_tokens`]). An id outside `0..vocab_size` is never gathered
    /// out of bounds: every logit of its sequence is NaN, and the other sequences' logits are
    /// what they would be without it.
    ///
    /// # Shapes
    /// - tokens: `[batch, seq_len]`, ids in `0..vocab_size`
    /// - output: `[batch, seq_len, vocab_size]`
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, route: &Route) -> crate::Result<Tensor<B, 3>> {
        route.check_layers(self.n_layers())?;
        let [batch, seq_len] = tokens.dims();
        if batch == 0 || seq_len == 0 {
            return Err(KvRoutingError::InvalidLengths(format!(
                "need at least one sequence and one token (got a [{batch}, {seq_len}] tensor)"
            )));
        }
        let rope = self.full_sequence_angles(batch, seq_len)?;
        let hidden = self.run_blocks(
            DeviceTokens::Unchecked(tokens),
            &rope,
            &AttentionMask::Causal,
            &mut self.sequence_kv(route)?,
        )?;
        Ok(self.vocab_logits(hidden))
    }

    /// Full-sequence forward under `route` of host token lists, which may differ in length:
    /// shorter ones are padded internally and the padding is hidden from attention. Logits at
    /// positions beyond a sequence's length are meaningless. Ids are checked on the host
    /// ([`KvRoutingError::TokenOutOfRange`]).
    ///
    /// # Shapes
    /// - tokens: `batch` lists of up to `max_len` ids
    /// - output: `[batch, max_len, vocab_size]`
    pub fn forward_tokens(
        &self,
        tokens: &[Vec<u32>],
        route: &Route,
    ) -> crate::Result<Tensor<B, 3>> {
        route.check_layers(self.n_layers())?;
        let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
        if let Some(sequence) = lengths.iter().position(|&n| n == 0) {
            return Err(KvRoutingError::InvalidLengths(format!(
                "sequence {sequence} is empty"
            )));
        }
        let (ids, batch, seq_len) = self.token_tensor(tokens)?;
        let rope = self.full_sequence_angles(batch, seq_len)?;
        let key_valid: Vec<bool> = lengths
            .iter()
            .flat_map(|&n| (0..seq_len).map(move |j| j < n))
            .collect();
        let mask = AttentionMask::causal_with_key_validity(
            &key_valid,
            batch,
            seq_len,
            seq_len,
            &self.device(),
        )?;
        let hidden = self.run_blocks(ids, &rope, &mask, &mut self.sequence_kv(route)?)?;
        Ok(self.vocab_logits(hidden))
    }

    /// Final norm and projection onto the vocabulary (the LM head, or the transposed embedding
    /// when tied) of the last blocks' output.
    ///
    /// # Shapes
    /// - hidden: `[..., d_model]`
    /// - output: `[..., vocab_size]`
    pub fn vocab_logits<const D: usize>(&self, hidden: Tensor<B, D>) -> Tensor<B, D> {
        let normed = rms_norm(&self.norm, hidden);
        match &self.lm_head {
            Some(head) => project(head, normed),
            // A rank-2 product with the transposed embedding *view*: backends multiply by its
            // strides as they are. Raising the view's rank instead (`unsqueeze`) made flex copy
            // the whole `[vocab, d_model]` matrix on every call.
            None => match &self.embedding.blocks {
                Some(blocks) => {
                    blocks_last_axis(normed, blocks, || self.embedding.weight.val().transpose())
                }
                None => matmul_last_axis(normed, self.embedding.weight.val().transpose()),
            },
        }
    }

    /// The rotary angles of one step, widened for the query and key/value head counts.
    pub(super) fn angles(
        &self,
        positions: &[usize],
        batch: usize,
        seq_len: usize,
    ) -> crate::Result<RopeAngles<B>> {
        let heads = [self.blocks[0].attention.n_heads, self.n_kv_heads()];
        Ok(self
            .rope
            .angles(positions, batch, seq_len)?
            .for_heads(&heads))
    }

    /// The rotary angles of a full-sequence pass: `batch` sequences at positions `0..seq_len`.
    pub(super) fn full_sequence_angles(
        &self,
        batch: usize,
        seq_len: usize,
    ) -> crate::Result<RopeAngles<B>> {
        let positions: Vec<usize> = (0..batch).flat_map(|_| 0..seq_len).collect();
        self.angles(&positions, batch, seq_len)
    }

    /// The block loop shared by every path (embedding, then every block in order), on the
    /// backend's compute threads ([`on_compute_threads`]).
    pub(super) fn run_blocks(
        &self,
        tokens: DeviceTokens<B>,
        rope: &RopeAngles<B>,
        mask: &AttentionMask<B>,
        store: &mut (impl KvStore<B> + Send),
    ) -> crate::Result<Tensor<B, 3>> {
        self.check_merged_route(store.route())?;
        on_compute_threads::<B, _>(|| {
            let mut x = self.embed(tokens);
            for (layer, block) in self.blocks.iter().enumerate() {
                x = block.forward(layer, x, rope, mask, store)?;
            }
            Ok(x)
        })
    }
}
