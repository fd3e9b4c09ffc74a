//! An independent scalar f64 implementation of the routed transformer (no Burn ops).
//!
//! Written from the semantics in `docs/routing.md`, not from the library code: plain loops over
//! `Vec<f64>`, rotate-half rotary embedding computed per position, a causal softmax over the
//! keys of the source layer. It also accepts a route per position, which describes a cache that
//! was retargeted mid-generation: the token at position `p` was processed under `route_at(p)`.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kv_routing::{Route, RoutedTransformer, RoutedTransformerConfig, StochasticKvAttention};

/// A row-major matrix `[rows, cols]`, applied as `y = x · W` (Burn's linear layout).
#[derive(Debug, Clone)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    values: Vec<f64>,
}

impl Matrix {
    fn from_tensor<B: Backend>(tensor: Tensor<B, 2>) -> Self {
        let [rows, cols] = tensor.dims();
        let values = tensor.into_data().iter::<f64>().collect();
        Self { rows, cols, values }
    }

    fn from_linear<B: Backend>(linear: &Linear<B>) -> Self {
        Self::from_tensor(linear.weight.val())
    }

    /// `x · W` for one row vector.
    fn apply(&self, x: &[f64]) -> Vec<f64> {
        assert_eq!(x.len(), self.rows, "oracle matrix input width");
        let mut y = vec![0.0; self.cols];
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

/// Attention weights of one layer.
#[derive(Debug, Clone)]
pub struct OracleAttention {
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    rope_theta: f64,
}

impl OracleAttention {
    /// Copies the weights of `attention`.
    pub fn from_module<B: Backend>(attention: &StochasticKvAttention<B>, rope_theta: f64) -> Self {
        Self {
            wq: Matrix::from_linear(&attention.query),
            wk: Matrix::from_linear(&attention.key),
            wv: Matrix::from_linear(&attention.value),
            wo: Matrix::from_linear(&attention.output),
            n_heads: attention.n_heads,
            n_kv_heads: attention.n_kv_heads,
            head_dim: attention.head_dim,
            rope_theta,
        }
    }

    /// Rotated key and value of input row `x` at `position`, `[n_kv_heads * head_dim]` each.
    pub fn key_value(&self, x: &[f64], position: usize) -> (Vec<f64>, Vec<f64>) {
        let key = self.rotate(self.wk.apply(x), self.n_kv_heads, position);
        (key, self.wv.apply(x))
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
        let query = self.rotate(self.wq.apply(x), self.n_heads, position);
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
                let angle = position as f64 * self.rope_theta.powf(-2.0 * i as f64 / hd as f64);
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
                attention: OracleAttention::from_module(&block.attention, config.rope_theta),
                mlp_norm: vector(&block.mlp_norm.gamma),
                gate: Matrix::from_linear(&block.mlp.gate),
                up: Matrix::from_linear(&block.mlp.up),
                down: Matrix::from_linear(&block.mlp.down),
            })
            .collect();
        Self {
            embedding: Matrix::from_tensor(model.embedding.weight.val()),
            blocks,
            norm: vector(&model.norm.gamma),
            lm_head: Matrix::from_linear(&model.lm_head),
            norm_eps: config.norm_eps,
        }
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
                .map(|(p, x)| block.attention.key_value(x, p))
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
