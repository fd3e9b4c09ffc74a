//! [`StochasticKvAttention`]: causal grouped-query attention whose keys/values may come from
//! another layer.
//!
//! [`StochasticKvAttention::forward`] is the whole layer, as a Burn module's `forward` is: given
//! the layer index and a [`KvStore`] carrying the route, it computes its own keys/values only
//! when the route makes it a *source*, then attends to those of its source layer. Its two halves
//! are public too, so that other wirings can be built: [`StochasticKvAttention::project_kv`]
//! computes this layer's keys/values, and [`StochasticKvAttention::attend`] attends with this
//! layer's own queries to keys/values handed to it, whichever layer computed them.

use burn::config::Config;
use burn::module::Param;
use burn::module::{Initializer, Module};
use burn::nn::{LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::Tensor;

use crate::attention_mask::{causal_hidden, AttentionMask};
use crate::error::KvRoutingError;
use crate::key_value::{Int8KeyValue, KeyValue, StoredKv};
use crate::kv_store::KvStore;
use crate::projection::{project_adapted, Projection};
use crate::rms_norm::rms_norm;
use crate::rope::RopeAngles;
use crate::sharing_adapter::AdapterRows;

/// Configuration of a [`StochasticKvAttention`].
#[derive(Config, Debug)]
pub struct StochasticKvAttentionConfig {
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads; must divide `n_heads`. `1` is multi-query attention.
    /// Default: `n_heads` (multi-head attention).
    #[config(default = "None")]
    pub n_kv_heads: Option<usize>,
    /// Size of one head. Default: `d_model / n_heads`.
    #[config(default = "None")]
    pub head_dim: Option<usize>,
    /// Initializer of the four projection matrices. Default: normal with std 0.02.
    #[config(default = "Initializer::Normal{mean:0.0, std:0.02}")]
    pub initializer: Initializer,
    /// Learned biases on the query, key and value projections (Qwen2), initialized to zero.
    /// Default: false.
    #[config(default = false)]
    pub qkv_bias: bool,
    /// A learned bias on the output projection, initialized to zero. Default: false.
    #[config(default = false)]
    pub output_bias: bool,
    /// RMSNorm over `head_dim` of every query and key head before the rotation (Qwen3).
    /// Default: false.
    #[config(default = false)]
    pub qk_norm: bool,
    /// Epsilon of the query/key norms. Default: 1e-6.
    #[config(default = 1e-6)]
    pub qk_norm_eps: f64,
}

impl StochasticKvAttentionConfig {
    /// Number of key/value heads after defaults.
    pub fn kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    /// Head size after defaults.
    pub fn resolved_head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.d_model / self.n_heads.max(1))
    }

    /// Checks head counts and sizes.
    pub fn validate(&self) -> crate::Result<()> {
        let kv_heads = self.kv_heads();
        let head_dim = self.resolved_head_dim();
        if self.d_model == 0 || self.n_heads == 0 || kv_heads == 0 {
            return Err(KvRoutingError::InvalidConfig(format!(
                "attention needs d_model, n_heads and n_kv_heads >= 1 (got {}, {}, {})",
                self.d_model, self.n_heads, kv_heads
            )));
        }
        if !self.n_heads.is_multiple_of(kv_heads) {
            return Err(KvRoutingError::InvalidConfig(format!(
                "n_kv_heads = {kv_heads} must divide n_heads = {}",
                self.n_heads
            )));
        }
        if self.head_dim.is_none() && !self.d_model.is_multiple_of(self.n_heads) {
            return Err(KvRoutingError::InvalidConfig(format!(
                "n_heads = {} must divide d_model = {} (or set head_dim)",
                self.n_heads, self.d_model
            )));
        }
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(KvRoutingError::InvalidConfig(format!(
                "head_dim must be even and non-zero for rotary embeddings, got {head_dim}"
            )));
        }
        if self.qk_norm && !(self.qk_norm_eps > 0.0 && self.qk_norm_eps.is_finite()) {
            return Err(KvRoutingError::InvalidConfig(format!(
                "qk_norm_eps must be positive, got {}",
                self.qk_norm_eps
            )));
        }
        Ok(())
    }

    /// Initializes the module on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> crate::Result<StochasticKvAttention<B>> {
        self.validate()?;
        let head_dim = self.resolved_head_dim();
        let kv_heads = self.kv_heads();
        let projection = |d_input, d_output, bias: bool| {
            let mut linear = LinearConfig::new(d_input, d_output)
                .with_bias(false)
                .with_initializer(self.initializer.clone())
                .init(device);
            // Zero biases, as checkpoints are initialized; drawing them from the backend's RNG
            // would also make seeded models differ across backends.
            linear.bias = bias.then(|| Param::from_tensor(Tensor::zeros([d_output], device)));
            Projection::from(linear)
        };
        let head_norm = || {
            self.qk_norm.then(|| {
                RmsNormConfig::new(head_dim)
                    .with_epsilon(self.qk_norm_eps)
                    .init(device)
            })
        };
        Ok(StochasticKvAttention {
            query: projection(self.d_model, self.n_heads * head_dim, self.qkv_bias),
            key: projection(self.d_model, kv_heads * head_dim, self.qkv_bias),
            value: projection(self.d_model, kv_heads * head_dim, self.qkv_bias),
            output: projection(self.n_heads * head_dim, self.d_model, self.output_bias),
            query_norm: head_norm(),
            key_norm: head_norm(),
            n_heads: self.n_heads,
            n_kv_heads: kv_heads,
            head_dim,
        })
    }
}

/// Grouped-query attention with rotary embeddings whose keys/values are supplied by the caller.
///
/// Query head `h` reads key/value head `h / (n_heads / n_kv_heads)`.
#[derive(Module, Debug)]
pub struct StochasticKvAttention<B: Backend> {
    /// Query projection, `[d_model, n_heads * head_dim]`.
    pub query: Projection<B>,
    /// Key projection, `[d_model, n_kv_heads * head_dim]`.
    pub key: Projection<B>,
    /// Value projection, `[d_model, n_kv_heads * head_dim]`.
    pub value: Projection<B>,
    /// Output projection, `[n_heads * head_dim, d_model]`.
    pub output: Projection<B>,
    /// RMSNorm of each query head before the rotation, `[head_dim]` (Qwen3), if any.
    pub query_norm: Option<RmsNorm<B>>,
    /// RMSNorm of each key head before the rotation, `[head_dim]` (Qwen3), if any.
    pub key_norm: Option<RmsNorm<B>>,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads.
    pub n_kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
}

impl<B: Backend> StochasticKvAttention<B> {
    /// Width of the residual stream.
    pub fn d_model(&self) -> usize {
        self.query.dims()[0]
    }

    /// This layer's keys (rotated) and values for `x`. Only a source layer needs to call it.
    ///
    /// # Shapes
    /// - x: `[batch, seq_len, d_model]`
    /// - output: keys and values `[batch, n_kv_heads, seq_len, head_dim]`
    pub fn project_kv(&self, x: Tensor<B, 3>, rope: &RopeAngles<B>) -> crate::Result<KeyValue<B>> {
        self.project_kv_on(x, rope, &AdapterRows::None)
    }

    /// [`StochasticKvAttention::project_kv`] with the sharing deltas on `rows`.
    fn project_kv_on(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        rows: &AdapterRows<B>,
    ) -> crate::Result<KeyValue<B>> {
        self.check_input(&x, rope)?;
        let key = self.rotated_keys(project_adapted(&self.key, x.clone(), rows), rope);
        let value = self.split_heads(project_adapted(&self.value, x, rows), self.n_kv_heads);
        Ok(KeyValue::new(key, value.swap_dims(1, 2)))
    }

    /// Attends with this layer's queries for `x` to `kv` (from this or an earlier layer), with
    /// the base weights (no sharing delta; [`StochasticKvAttention::forward`] adds them).
    ///
    /// The queries are the last `seq_len` of `kv`'s key slots (see [`AttentionMask`]).
    ///
    /// # Shapes
    /// - x: `[batch, seq_len, d_model]`
    /// - kv: `[batch, n_kv_heads, kv_len, head_dim]` with `kv_len >= seq_len`
    /// - mask (explicit): `[batch, 1, seq_len, kv_len]`
    /// - output: `[batch, seq_len, d_model]`
    pub fn attend(
        &self,
        x: Tensor<B, 3>,
        kv: &KeyValue<B>,
        rope: &RopeAngles<B>,
        mask: &AttentionMask<B>,
    ) -> crate::Result<Tensor<B, 3>> {
        self.attend_on(x, kv, rope, mask, &AdapterRows::None)
    }

    /// [`StochasticKvAttention::attend`] with the sharing deltas on `rows`.
    fn attend_on(
        &self,
        x: Tensor<B, 3>,
        kv: &KeyValue<B>,
        rope: &RopeAngles<B>,
        mask: &AttentionMask<B>,
        rows: &AdapterRows<B>,
    ) -> crate::Result<Tensor<B, 3>> {
        self.check_input(&x, rope)?;
        self.check_kv(&x, [kv.key.dims(), kv.value.dims()], mask)?;
        let [batch, seq_len, _] = x.dims();
        let query = self.scaled_queries(x, rope, rows);
        let context = self.context(query, kv, mask);
        Ok(self.output_of(context, batch, seq_len, rows))
    }

    /// [`StochasticKvAttention::attend`] to keys/values in the int8 format: read in place by
    /// the backend's kernel where it has one for the step (flex: decode steps and short
    /// chunks), widened to the model's float type first otherwise.
    ///
    /// # Shapes
    /// - x: `[batch, seq_len, d_model]`
    /// - kv: codes `[batch, n_kv_heads, kv_len, head_dim]` with `kv_len >= seq_len`
    /// - output: `[batch, seq_len, d_model]`
    pub fn attend_int8(
        &self,
        x: Tensor<B, 3>,
        kv: &Int8KeyValue<B>,
        rope: &RopeAngles<B>,
        mask: &AttentionMask<B>,
    ) -> crate::Result<Tensor<B, 3>> {
        self.attend_int8_on(x, kv, rope, mask, &AdapterRows::None)
    }

    /// [`StochasticKvAttention::attend_int8`] with the sharing deltas on `rows`.
    fn attend_int8_on(
        &self,
        x: Tensor<B, 3>,
        kv: &Int8KeyValue<B>,
        rope: &RopeAngles<B>,
        mask: &AttentionMask<B>,
        rows: &AdapterRows<B>,
    ) -> crate::Result<Tensor<B, 3>> {
        self.check_input(&x, rope)?;
        self.check_kv(&x, [kv.key.codes.dims(), kv.value.codes.dims()], mask)?;
        let [batch, seq_len, _] = x.dims();
        let query = self.scaled_queries(x, rope, rows);
        let context = self.int8_context(query, kv, mask);
        Ok(self.output_of(context, batch, seq_len, rows))
    }

    /// The context of scaled queries over int8 keys/values (checked): the backend's kernel
    /// where it has one for the step, the float path on widened rows otherwise.
    fn int8_context(
        &self,
        query: Tensor<B, 4>,
        kv: &Int8KeyValue<B>,
        mask: &AttentionMask<B>,
    ) -> Tensor<B, 4> {
        let key_valid = match mask {
            AttentionMask::Causal => Some(None),
            AttentionMask::CausalWithHoles(holes) => Some(Some(holes.key_valid())),
            AttentionMask::Explicit(_) => None,
        };
        if let Some(key_valid) = key_valid {
            if let Some(context) =
                crate::kernels::int8_causal_attention(&query, &kv.key, &kv.value, key_valid)
            {
                return context;
            }
        }
        self.context(query, &kv.dequantize(), mask)
    }

    /// [`StochasticKvAttention::forward`] for a batch whose consecutive row ranges are groups
    /// with stores (routes), rotary angles and masks of their own: the four projections run
    /// once on the whole batch, the attention proper once per group on its rows. (A layer that
    /// is a source for any group projects keys/values for every row; the other groups' rows
    /// are dropped.) `rows` says which rows add the sharing deltas
    /// ([`AdapterRows::for_groups`]).
    ///
    /// # Shapes
    /// - x: `[batch, seq_len, d_model]`, the groups' rows in order, covering the batch
    /// - output: `[batch, seq_len, d_model]`
    pub fn forward_grouped<S: KvStore<B>>(
        &self,
        layer: usize,
        x: Tensor<B, 3>,
        groups: &mut [BlockGroup<'_, B, S>],
        rows: &AdapterRows<B>,
    ) -> crate::Result<Tensor<B, 3>> {
        let [batch, seq_len, d_model] = x.dims();
        let covered: usize = groups.iter().map(|g| g.rows.len()).sum();
        if d_model != self.d_model() || covered != batch {
            return Err(KvRoutingError::ShapeMismatch {
                context: "grouped attention input (the groups' rows cover the batch)".into(),
                expected: vec![covered, seq_len, self.d_model()],
                actual: x.dims().to_vec(),
            });
        }
        let queries = project_adapted(&self.query, x.clone(), rows);
        let key_values = groups
            .iter()
            .any(|g| g.store.route().is_source(layer))
            .then(|| {
                (
                    project_adapted(&self.key, x.clone(), rows),
                    project_adapted(&self.value, x, rows),
                )
            });
        let mut contexts = Vec::with_capacity(groups.len());
        for group in groups.iter_mut() {
            let rows = |t: &Tensor<B, 3>| {
                let width = t.dims()[2];
                t.clone().slice([group.rows.clone(), 0..seq_len, 0..width])
            };
            let (count, rope, mask) = (group.rows.len(), group.rope, group.mask);
            if rope.batch_size() != count || rope.seq_len() != seq_len {
                return Err(KvRoutingError::ShapeMismatch {
                    context: "rotary angles of a group of the batch".into(),
                    expected: vec![count, seq_len],
                    actual: vec![rope.batch_size(), rope.seq_len()],
                });
            }
            if group.store.route().is_source(layer) {
                let (keys, values) = key_values.as_ref().expect("projected for a source");
                let key = self.rotated_keys(rows(keys), rope);
                let value = self.split_heads(rows(values), self.n_kv_heads);
                group
                    .store
                    .put(layer, KeyValue::new(key, value.swap_dims(1, 2)))?;
            }
            let query = self.rotated_queries(rows(&queries), rope);
            let group_input = [count, seq_len, d_model];
            let kv = group.store.get_stored(layer)?;
            self.check_kv_dims(group_input, kv.dims(), mask)?;
            let context = match &kv {
                StoredKv::Float(kv) => self.context(query, kv, mask),
                StoredKv::Int8(kv) => self.int8_context(query, kv, mask),
            };
            contexts.push(self.merged_heads(context, count, seq_len));
        }
        Ok(project_adapted(
            &self.output,
            Tensor::cat(contexts, 0),
            rows,
        ))
    }

    /// Checks keys/values (`[key dims, value dims]`) and an explicit mask against the input.
    fn check_kv(
        &self,
        x: &Tensor<B, 3>,
        kv: [[usize; 4]; 2],
        mask: &AttentionMask<B>,
    ) -> crate::Result<()> {
        self.check_kv_dims(x.dims(), kv, mask)
    }

    /// [`StochasticKvAttention::check_kv`] for an input of dims `[batch, seq_len, _]`.
    fn check_kv_dims(
        &self,
        [batch, seq_len, _]: [usize; 3],
        [key, value]: [[usize; 4]; 2],
        mask: &AttentionMask<B>,
    ) -> crate::Result<()> {
        let [kv_batch, kv_heads, kv_len, kv_head_dim] = key;
        if [kv_batch, kv_heads, kv_head_dim] != [batch, self.n_kv_heads, self.head_dim]
            || value != key
            || kv_len < seq_len
        {
            return Err(KvRoutingError::ShapeMismatch {
                context: format!("keys/values for attention (kv_len >= seq_len = {seq_len})"),
                expected: vec![batch, self.n_kv_heads, seq_len.max(kv_len), self.head_dim],
                actual: key.to_vec(),
            });
        }
        if let Some(mask) = mask.hidden_tensor() {
            if mask.dims() != [batch, 1, seq_len, kv_len] {
                return Err(KvRoutingError::ShapeMismatch {
                    context: "attention mask".into(),
                    expected: vec![batch, 1, seq_len, kv_len],
                    actual: mask.dims().to_vec(),
                });
            }
        }
        Ok(())
    }

    /// The rotated queries of `x`, scaled by `1 / sqrt(head_dim)`, `[batch, n_heads, seq_len,
    /// head_dim]`.
    fn scaled_queries(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        rows: &AdapterRows<B>,
    ) -> Tensor<B, 4> {
        // Scaling the few query values instead of the scores saves a pass over (and an
        // allocation of) one score per key slot, head and layer. It is done here, on the
        // rotated queries in their projection layout, for both paths below: on wgpu's fusion,
        // scaling the reshaped view of the swapped queries in the decode path read wrong
        // elements after a multi-token step (conformance `chunked_prefill_matches_uncached`).
        self.rotated_queries(project_adapted(&self.query, x, rows), rope)
    }

    /// Projected queries `[batch, seq_len, n_heads * head_dim]` normed, rotated and scaled,
    /// `[batch, n_heads, seq_len, head_dim]`.
    fn rotated_queries(&self, query: Tensor<B, 3>, rope: &RopeAngles<B>) -> Tensor<B, 4> {
        let query = self.split_heads(query, self.n_heads);
        let rotated = rope.apply(normalize_heads(&self.query_norm, query));
        crate::kernels::mul_scalar(rotated, (self.head_dim as f64).powf(-0.5)).swap_dims(1, 2)
    }

    /// Projected keys `[batch, seq_len, n_kv_heads * head_dim]` normed and rotated,
    /// `[batch, n_kv_heads, seq_len, head_dim]`.
    fn rotated_keys(&self, key: Tensor<B, 3>, rope: &RopeAngles<B>) -> Tensor<B, 4> {
        let key = self.split_heads(key, self.n_kv_heads);
        rope.apply(normalize_heads(&self.key_norm, key))
            .swap_dims(1, 2)
    }

    /// The context of scaled queries over `kv` (checked), in one of the layouts
    /// [`StochasticKvAttention::output_of`] takes.
    fn context(
        &self,
        query: Tensor<B, 4>,
        kv: &KeyValue<B>,
        mask: &AttentionMask<B>,
    ) -> Tensor<B, 4> {
        let [batch, _, seq_len, _] = query.dims();
        let kv_len = kv.key.dims()[2];
        let groups = self.n_heads / self.n_kv_heads;
        // A backend's own causal attention goes first (flex f32: one parallel pass that reads
        // the cache through its strides, skips the causal half and needs no mask tensor).
        // Otherwise, with Burn's ops: scores take `seq_len * kv_len` values per query head;
        // repeating the key/value heads for the fused op takes `2 * head_dim * kv_len`. Below
        // `2 * head_dim` queries — every decode step, and the short chunks of a conversation's
        // next turn — the scores are the smaller, so the query heads of a group are stacked as
        // rows against their shared key/value head and plain matmuls read the cache view in
        // place through its strides: nothing of the history is copied. (A fused attention op
        // may also copy the visible keys/values to contiguous buffers first, as flex's does.)
        if let Some(context) = fused_causal_attention(&query, kv, mask) {
            return context;
        }
        // Keys/values of another float type than the queries (a cache's own, which the
        // backend's kernel did not take for this step) are widened for Burn's ops.
        let widened;
        let kv = if kv.key.dtype() == query.dtype() && kv.value.dtype() == query.dtype() {
            kv
        } else {
            widened = KeyValue::new(
                crate::kernels::cast_float(kv.key.clone(), query.dtype()),
                crate::kernels::cast_float(kv.value.clone(), query.dtype()),
            );
            &widened
        };
        if seq_len < 2 * self.head_dim {
            let rows = groups * seq_len;
            let query = query.reshape([batch, self.n_kv_heads, rows, self.head_dim]);
            let scores = query.matmul(kv.key.clone().swap_dims(2, 3));
            let hidden = match mask {
                AttentionMask::Causal if seq_len == 1 => None,
                AttentionMask::Causal => {
                    Some(causal_hidden::<B>(seq_len, kv_len, &kv.key.device()))
                }
                AttentionMask::Explicit(mask) => Some(mask.clone()),
                AttentionMask::CausalWithHoles(holes) => Some(holes.hidden().clone()),
            };
            let scores = match hidden {
                None => scores,
                Some(hidden) => {
                    // `[b, 1, seq_len, kv_len]` -> one row per (query head of the group,
                    // query), as the stacked queries are laid out.
                    let mask_batch = hidden.dims()[0];
                    let hidden = hidden
                        .unsqueeze_dim::<5>(1)
                        .expand([mask_batch, 1, groups, seq_len, kv_len])
                        .reshape([mask_batch, 1, rows, kv_len])
                        .expand([batch, self.n_kv_heads, rows, kv_len]);
                    scores.mask_fill(hidden, f32::NEG_INFINITY)
                }
            };
            softmax(scores, 3).matmul(kv.value.clone())
        } else {
            let key = repeat_kv_heads(kv.key.clone(), groups);
            let value = repeat_kv_heads(kv.value.clone(), groups);
            let (mask, is_causal) = match mask.hidden_tensor() {
                None => (None, true),
                Some(mask) => (
                    Some(mask.clone().expand([batch, self.n_heads, seq_len, kv_len])),
                    false,
                ),
            };
            attention(
                query,
                key,
                value,
                mask,
                None,
                AttentionModuleOptions {
                    // The queries are already scaled (above).
                    scale: Some(1.0),
                    is_causal,
                    ..Default::default()
                },
            )
        }
    }

    /// The output projection of a context of `batch x n_heads x seq_len x head_dim` values
    /// (`[batch, n_heads, seq_len, head_dim]`, or the query heads of a group stacked as rows:
    /// `[batch, n_kv_heads, groups * seq_len, head_dim]`).
    fn output_of(
        &self,
        context: Tensor<B, 4>,
        batch: usize,
        seq_len: usize,
        rows: &AdapterRows<B>,
    ) -> Tensor<B, 3> {
        project_adapted(
            &self.output,
            self.merged_heads(context, batch, seq_len),
            rows,
        )
    }

    /// A context (either layout of [`StochasticKvAttention::output_of`]) as `[batch, seq_len,
    /// n_heads * head_dim]`, the output projection's input.
    fn merged_heads(&self, context: Tensor<B, 4>, batch: usize, seq_len: usize) -> Tensor<B, 3> {
        let swapped = context
            .reshape([batch, self.n_heads, seq_len, self.head_dim])
            .swap_dims(1, 2);
        // The swap is a view; the reshape below would copy it element by element on flex.
        crate::kernels::contiguous(swapped).reshape([batch, seq_len, self.n_heads * self.head_dim])
    }

    /// Runs this attention as layer `layer` of a routed stack: computes and hands its own
    /// keys/values to `store` only when the store's route makes it a source, then attends to
    /// those of its source layer. With a [`SequenceKv`](crate::SequenceKv) store this is a
    /// full-sequence pass; with a [`CacheStep`](crate::CacheStep) it is a cached step.
    ///
    /// # Shapes
    /// - x: `[batch, seq_len, d_model]`
    /// - output: `[batch, seq_len, d_model]`
    pub fn forward(
        &self,
        layer: usize,
        x: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        mask: &AttentionMask<B>,
        store: &mut impl KvStore<B>,
    ) -> crate::Result<Tensor<B, 3>> {
        let rows = AdapterRows::for_route(store.route());
        if store.route().is_source(layer) {
            store.put(layer, self.project_kv_on(x.clone(), rope, &rows)?)?;
        }
        match store.get_stored(layer)? {
            StoredKv::Float(kv) => self.attend_on(x, &kv, rope, mask, &rows),
            StoredKv::Int8(kv) => self.attend_int8_on(x, &kv, rope, mask, &rows),
        }
    }

    /// `[batch, seq_len, heads * head_dim]` -> `[batch, seq_len, heads, head_dim]` (no copy).
    fn split_heads(&self, x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
        let [batch, seq_len, _] = x.dims();
        x.reshape([batch, seq_len, heads, self.head_dim])
    }

    fn check_input(&self, x: &Tensor<B, 3>, rope: &RopeAngles<B>) -> crate::Result<()> {
        let [batch, seq_len, d_model] = x.dims();
        if d_model != self.d_model() || seq_len == 0 || batch == 0 {
            return Err(KvRoutingError::ShapeMismatch {
                context: "attention input (batch, seq_len >= 1)".into(),
                expected: vec![batch.max(1), seq_len.max(1), self.d_model()],
                actual: x.dims().to_vec(),
            });
        }
        if rope.batch_size() != batch || rope.seq_len() != seq_len {
            return Err(KvRoutingError::ShapeMismatch {
                context: "rotary angles for attention input".into(),
                expected: vec![batch, seq_len],
                actual: vec![rope.batch_size(), rope.seq_len()],
            });
        }
        Ok(())
    }
}

/// The backend's own causal attention of a step (prefill, chunk or decode), where one exists
/// ([`crate::kernels`]); `None` leaves the step to Burn's ops.
fn fused_causal_attention<B: Backend>(
    query: &Tensor<B, 4>,
    kv: &KeyValue<B>,
    mask: &AttentionMask<B>,
) -> Option<Tensor<B, 4>> {
    match mask {
        AttentionMask::Causal => crate::kernels::causal_attention(query, &kv.key, &kv.value, None),
        AttentionMask::CausalWithHoles(holes) => {
            crate::kernels::causal_attention(query, &kv.key, &kv.value, Some(holes.key_valid()))
        }
        AttentionMask::Explicit(_) => None,
    }
}

/// Applies a per-head norm over the last (head_dim) axis, when there is one.
fn normalize_heads<B: Backend>(norm: &Option<RmsNorm<B>>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    match norm {
        Some(norm) => rms_norm(norm, x),
        None => x,
    }
}

/// `[batch, kv_heads, len, head_dim]` -> `[batch, kv_heads * groups, len, head_dim]`, each
/// key/value head repeated for the `groups` query heads that read it.
fn repeat_kv_heads<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return x;
    }
    let [batch, heads, len, head_dim] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([batch, heads, groups, len, head_dim])
        .reshape([batch, heads * groups, len, head_dim])
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::tensor::Tensor;
    use burn_flex::Flex;

    use super::*;

    /// A batch with holes (a shorter prompt, a finished sequence) keeps the backend's own
    /// attention: it once fell back to Burn's masked ops for the rest of the generation.
    #[test]
    fn a_batch_with_holes_keeps_the_backend_kernel() {
        let device = Default::default();
        let query = Tensor::<Flex, 4>::ones([2, 2, 1, 8], &device);
        let kv = KeyValue::new(
            Tensor::ones([2, 1, 5, 8], &device),
            Tensor::ones([2, 1, 5, 8], &device),
        );
        let valid = [true, true, false, true, true, true, true, true, true, false];
        let mask =
            AttentionMask::<Flex>::causal_with_key_validity(&valid, 2, 1, 5, &device).unwrap();
        assert!(matches!(mask, AttentionMask::CausalWithHoles(_)));
        assert!(fused_causal_attention(&query, &kv, &mask).is_some());
        // An explicit mask tensor alone says nothing the kernel can read: Burn's ops.
        let explicit = AttentionMask::Explicit(mask.hidden_tensor().unwrap().clone());
        assert!(fused_causal_attention(&query, &kv, &explicit).is_none());
    }
}

/// One group of a batch's rows for [`StochasticKvAttention::forward_grouped`] (and
/// [`DecoderBlock::forward_grouped`](crate::DecoderBlock::forward_grouped)).
pub struct BlockGroup<'a, B: Backend, S> {
    /// The group's rows of the batch.
    pub rows: std::ops::Range<usize>,
    /// Rotary angles of the group's rows.
    pub rope: &'a RopeAngles<B>,
    /// Attention mask of the group's rows.
    pub mask: &'a AttentionMask<B>,
    /// Where the group's keys/values go and come from (its route).
    pub store: &'a mut S,
}
