//! An independent scalar f64 implementation of the routed transformer (no Burn ops).
//!
//! Written from the semantics in `docs/routing.md`, not from the library code: plain loops over
//! `Vec<f64>`, rotate-half rotary embedding computed per position, a causal softmax over the
//! keys of the source layer; optional projection biases, per-head query/key norms (Qwen3), rotary
//! frequency scaling (Llama 3.1) and a tied LM head. It also accepts a route per position, which describes a cache that
//! was retargeted mid-generation: the token at position `p` was processed under `route_at(p)`.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kv_routing::Projection;
use kv_routing::{
    RopeScaling, Route, RoutedTransformer, RoutedTransformerConfig, StochasticKvAttention,
};

/// A row-major matrix `[rows, cols]` and optional bias, applied as `y = x · W + b` (Burn's linear
/// layout).
#[derive(Debug, Clone)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    values: Vec<f64>,
    bias: Option<Vec<f64>>,
}

impl Matrix {
    fn from_tensor<B: Backend>(tensor: Tensor<B, 2>) -> Self {
        let [rows, cols] = tensor.dims();
        let values = tensor.into_data().iter::<f64>().collect();
        Self {
            rows,
            cols,
            values,
            bias: None,
        }
    }

    fn from_linear<B: Backend>(linear: &Projection<B>) -> Self {
        let mut matrix = Self::from_tensor(linear.weight.val());
        matrix.bias = linear.bias.as_ref().map(vector);
        matrix
    }

    /// `W` transposed, without bias (a tied LM head from the embedding).
    fn transposed(&self) -> Self {
        let mut values = vec![0.0; self.values.len()];
        for r in 0..self.rows {
            for c in 0..self.cols {
                values[c * self.rows + r] = self.values[r * self.cols + c];
            }
        }
        Self {
            rows: self.cols,
            cols: self.rows,
            values,
            bias: None,
        }
    }

    /// `x · W (+ b)` for one row vector.
    fn apply(&self, x: &[f64]) -> Vec<f64> {
        assert_eq!(x.len(), self.rows, "oracle matrix input width");
        let mut y = self.bias.clone().unwrap_or_else(|| vec![0.0; self.cols]);
        for (i, &xi) in x.iter().enumerate() {
            let row = &self.values[i * self.cols..(i + 1) * self.cols];
            for (yj, &w) in y.iter_mut().zip(row) {
                *yj += xi * w;
            }
        }
        y
    }

    fn row(&self, index: usize) -> &[f64] {
        &self.values[index * self.cols..(index + 1) * self.cols]
    }
}

fn vector<B: Backend>(param: &Param<Tensor<B, 1>>) -> Vec<f64> {
    param.val().into_data().iter::<f64>().collect()
}

/// One of a layer's weights that the gradient tests nudge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerWeight {
    /// The query projection.
    Query,
    /// The key projection.
    Key,
    /// The value projection.
    Value,
    /// The attention's output projection.
    Output,
    /// The gain of the norm before attention.
    AttentionNorm,
    /// The gain of the norm before the MLP.
    MlpNorm,
}

/// Attention weights of one layer.
#[derive(Debug, Clone)]
pub struct OracleAttention {
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    /// `(gamma, eps)` of the per-head query and key norms.
    query_norm: Option<(Vec<f64>, f64)>,
    key_norm: Option<(Vec<f64>, f64)>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    /// Rotation frequency of each pair.
    frequencies: Vec<f64>,
}

impl OracleAttention {
    /// Copies the weights of `attention`, with unscaled rotary frequencies of base `rope_theta`.
    pub fn from_module<B: Backend>(attention: &StochasticKvAttention<B>, rope_theta: f64) -> Self {
        Self::with_scaling(attention, rope_theta, None)
    }

    fn with_scaling<B: Backend>(
        attention: &StochasticKvAttention<B>,
        rope_theta: f64,
        scaling: Option<&RopeScaling>,
    ) -> Self {
        let head_norm = |norm: &Option<burn::nn::RmsNorm<B>>| {
            norm.as_ref().map(|n| (vector(&n.gamma), n.epsilon))
        };
        Self {
            wq: Matrix::from_linear(&attention.query),
            wk: Matrix::from_linear(&attention.key),
            wv: Matrix::from_linear(&attention.value),
            wo: Matrix::from_linear(&attention.output),
            query_norm: head_norm(&attention.query_norm),
            key_norm: head_norm(&attention.key_norm),
            n_heads: attention.n_heads,
            n_kv_heads: attention.n_kv_heads,
            head_dim: attention.head_dim,
            frequencies: rotary_frequencies(attention.head_dim, rope_theta, scaling),
        }
    }

    /// Rotated key and value of input row `x` at `position`, `[n_kv_heads * head_dim]` each.
    pub fn key_value(&self, x: &[f64], position: usize) -> (Vec<f64>, Vec<f64>) {
        let key = self.head_norm(&self.key_norm, self.wk.apply(x));
        let key = self.rotate(key, self.n_kv_heads, position);
        (key, self.wv.apply(x))
    }

    fn head_norm(&self, norm: &Option<(Vec<f64>, f64)>, x: Vec<f64>) -> Vec<f64> {
        match norm {
            Some((gamma, eps)) => x
                .chunks(self.head_dim)
                .flat_map(|head| rms_norm(head, gamma, *eps))
                .collect(),
            None => x,
        }
    }

    /// Output for query input `x` at `position`, attending to `keys[..]`/`values[..]` (all
    /// visible).
    pub fn attend(
        &self,
        x: &[f64],
        position: usize,
        keys: &[&[f64]],
        values: &[&[f64]],
    ) -> Vec<f64> {
        let query = self.head_norm(&self.query_norm, self.wq.apply(x));
        let query = self.rotate(query, self.n_heads, position);
        let hd = self.head_dim;
        let group = self.n_heads / self.n_kv_heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut context = vec![0.0; self.n_heads * hd];
        for head in 0..self.n_heads {
            let kv_head = head / group;
            let q = &query[head * hd..(head + 1) * hd];
            let scores: Vec<f64> = keys
                .iter()
                .map(|k| {
                    let k = &k[kv_head * hd..(kv_head + 1) * hd];
                    q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() * scale
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for (w, v) in weights.iter().zip(values) {
                let v = &v[kv_head * hd..(kv_head + 1) * hd];
                for (c, vi) in context[head * hd..(head + 1) * hd].iter_mut().zip(v) {
                    *c += w / total * vi;
                }
            }
        }
        self.wo.apply(&context)
    }

    /// Rotate-half rotary embedding of every head of `x` at `position`.
    fn rotate(&self, mut x: Vec<f64>, heads: usize, position: usize) -> Vec<f64> {
        let hd = self.head_dim;
        let half = hd / 2;
        for head in 0..heads {
            let h = &mut x[head * hd..(head + 1) * hd];
            for i in 0..half {
                let angle = position as f64 * self.frequencies[i];
                let (sin, cos) = angle.sin_cos();
                let (a, b) = (h[i], h[i + half]);
                h[i] = a * cos - b * sin;
                h[i + half] = b * cos + a * sin;
            }
        }
        x
    }
}

#[derive(Debug, Clone)]
struct OracleBlock {
    attention_norm: Vec<f64>,
    attention: OracleAttention,
    mlp_norm: Vec<f64>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// The whole routed transformer in f64.
#[derive(Debug, Clone)]
pub struct OracleModel {
    embedding: Matrix,
    blocks: Vec<OracleBlock>,
    norm: Vec<f64>,
    lm_head: Matrix,
    norm_eps: f64,
}

impl OracleModel {
    /// Copies the weights of `model` (built from `config`).
    pub fn from_model<B: Backend>(
        model: &RoutedTransformer<B>,
        config: &RoutedTransformerConfig,
    ) -> Self {
        let blocks = model
            .blocks
            .iter()
            .map(|block| OracleBlock {
                attention_norm: vector(&block.attention_norm.gamma),
                attention: OracleAttention::with_scaling(
                    &block.attention,
                    config.rope_theta,
                    config.rope_scaling.as_ref(),
                ),
                mlp_norm: vector(&block.mlp_norm.gamma),
                gate: Matrix::from_linear(&block.mlp.gate),
                up: Matrix::from_linear(&block.mlp.up),
                down: Matrix::from_linear(&block.mlp.down),
            })
            .collect();
        let embedding = Matrix::from_tensor(model.embedding.weight.val());
        let lm_head = match &model.lm_head {
            Some(head) => Matrix::from_linear(head),
            None => embedding.transposed(),
        };
        Self {
            embedding,
            blocks,
            norm: vector(&model.norm.gamma),
            lm_head,
            norm_eps: config.norm_eps,
        }
    }

    /// The same model with element `index` (row-major; Burn's `[d_input, d_output]` layout for
    /// a projection) of one weight of layer `layer` moved by `delta`: the finite differences of
    /// the gradient tests.
    pub fn with_nudged_weight(
        &self,
        layer: usize,
        weight: LayerWeight,
        index: usize,
        delta: f64,
    ) -> Self {
        let mut nudged = self.clone();
        let block = &mut nudged.blocks[layer];
        let values = match weight {
            LayerWeight::Query => &mut block.attention.wq.values,
            LayerWeight::Key => &mut block.attention.wk.values,
            LayerWeight::Value => &mut block.attention.wv.values,
            LayerWeight::Output => &mut block.attention.wo.values,
            LayerWeight::AttentionNorm => &mut block.attention_norm,
            LayerWeight::MlpNorm => &mut block.mlp_norm,
        };
        values[index] += delta;
        nudged
    }

    /// Logits of every position of one sequence, every token under the same `route`.
    pub fn logits(&self, tokens: &[u32], route: &Route) -> Vec<Vec<f64>> {
        self.logits_per_position(tokens, |_| route.clone())
    }

    /// Logits of every position, the token at position `p` processed under `route_at(p)`.
    ///
    /// Layer `l` at position `p` attends to the keys/values that layer `route_at(p).src[l]`
    /// computed at positions `0..=p` (each from that layer's input at that position).
    pub fn logits_per_position(
        &self,
        tokens: &[u32],
        route_at: impl Fn(usize) -> Route,
    ) -> Vec<Vec<f64>> {
        self.logits_stored_as(tokens, route_at, &|row| row.to_vec())
    }

    /// [`OracleModel::logits_per_position`] with every key and value row (`[n_kv_heads *
    /// head_dim]` of one token) read back through `stored`: what a KV cache keeping rows in
    /// another format gives back (see [`int8_round_trip`]).
    pub fn logits_stored_as(
        &self,
        tokens: &[u32],
        route_at: impl Fn(usize) -> Route,
        stored: &dyn Fn(&[f64]) -> Vec<f64>,
    ) -> Vec<Vec<f64>> {
        let routes: Vec<Route> = (0..tokens.len()).map(route_at).collect();
        let mut hidden: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| self.embedding.row(t as usize).to_vec())
            .collect();
        // keys/values[layer][position]; every layer's are computed, only sources are read.
        let mut keys: Vec<Vec<Vec<f64>>> = Vec::new();
        let mut values: Vec<Vec<Vec<f64>>> = Vec::new();
        for (layer, block) in self.blocks.iter().enumerate() {
            let normed: Vec<Vec<f64>> = hidden
                .iter()
                .map(|h| rms_norm(h, &block.attention_norm, self.norm_eps))
                .collect();
            let (layer_keys, layer_values) = normed
                .iter()
                .enumerate()
                .map(|(p, x)| {
                    let (key, value) = block.attention.key_value(x, p);
                    (stored(&key), stored(&value))
                })
                .unzip();
            keys.push(layer_keys);
            values.push(layer_values);
            for (p, h) in hidden.iter_mut().enumerate() {
                let source = routes[p].source_of(layer);
                let visible_keys: Vec<&[f64]> =
                    keys[source][..=p].iter().map(Vec::as_slice).collect();
                let visible_values: Vec<&[f64]> =
                    values[source][..=p].iter().map(Vec::as_slice).collect();
                let attended =
                    block
                        .attention
                        .attend(&normed[p], p, &visible_keys, &visible_values);
                add_in_place(h, &attended);
                let x = rms_norm(h, &block.mlp_norm, self.norm_eps);
                let gate = block.gate.apply(&x);
                let up = block.up.apply(&x);
                let gated: Vec<f64> = gate
                    .iter()
                    .zip(&up)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                add_in_place(h, &block.down.apply(&gated));
            }
        }
        hidden
            .iter()
            .map(|h| self.lm_head.apply(&rms_norm(h, &self.norm, self.norm_eps)))
            .collect()
    }
}

/// `theta^(-2i / head_dim)` per pair, then the scaling's rule per frequency (Hugging Face's
/// `_compute_llama3_parameters` for Llama 3.1).
fn rotary_frequencies(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f64> {
    let base = (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64));
    match scaling {
        None => base.collect(),
        Some(RopeScaling::Linear { factor }) => base.map(|f| f / factor).collect(),
        Some(&RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let old_context = original_max_position_embeddings as f64;
            let low_freq_wavelen = old_context / low_freq_factor;
            let high_freq_wavelen = old_context / high_freq_factor;
            base.map(|f| {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen > low_freq_wavelen {
                    f / factor
                } else if wavelen < high_freq_wavelen {
                    f
                } else {
                    let smooth = (old_context / wavelen - low_freq_factor)
                        / (high_freq_factor - low_freq_factor);
                    (1.0 - smooth) * f / factor + smooth * f
                }
            })
            .collect()
        }
    }
}

fn rms_norm(x: &[f64], gamma: &[f64], eps: f64) -> Vec<f64> {
    let mean_square = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let scale = 1.0 / (mean_square + eps).sqrt();
    x.iter().zip(gamma).map(|(v, g)| v * scale * g).collect()
}

fn add_in_place(a: &mut [f64], b: &[f64]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// A key or value row (heads side by side) stored in the int8 format and read back, computed
/// in f64 from the format's definition: blocks of `block` values (`block` divides the head
/// size, so no block spans two heads), scale `max|x| / 127`, codes `round(x / scale)`.
pub fn int8_round_trip(row: &[f64], block: usize) -> Vec<f64> {
    row.chunks(block)
        .flat_map(|values| {
            let scale = values.iter().fold(0.0f64, |m, x| m.max(x.abs())) / 127.0;
            values.iter().map(move |&x| {
                if scale == 0.0 {
                    0.0
                } else {
                    (x / scale).round().clamp(-127.0, 127.0) * scale
                }
            })
        })
        .collect()
}
