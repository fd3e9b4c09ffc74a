//! The Hugging Face models in plain f64, written from `transformers`' modeling code
//! (`modeling_llama.py`, `modeling_qwen2.py`, `modeling_qwen3.py`), reading tensors by their
//! HF names in HF layout (`y = x Wᵀ + b`, `rotate_half`). Shares nothing with the loader: a
//! name, transpose or rotation mistake there shows up as a mismatch here.
//!
//! `sources[l]` routes layer `l` to the keys/values of layer `sources[l]` (R-CLA); the identity
//! is the plain model.

use serde_json::Value;

use super::checkpoint_builder::Tensors;

pub struct HfReference<'a> {
    config: &'a Value,
    tensors: &'a Tensors,
}

impl<'a> HfReference<'a> {
    pub fn new(config: &'a Value, tensors: &'a Tensors) -> Self {
        Self { config, tensors }
    }

    fn usize(&self, key: &str) -> usize {
        self.config[key].as_u64().unwrap() as usize
    }

    fn tensor(&self, name: &str) -> &[f64] {
        &self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("reference needs {name}"))
            .1
    }

    /// `x Wᵀ + b` with `W` `[out, in]` stored under `name.weight`.
    fn linear(&self, name: &str, x: &[f64]) -> Vec<f64> {
        let (shape, w) = &self.tensors[&format!("{name}.weight")];
        let (out, inp) = (shape[0], shape[1]);
        assert_eq!(inp, x.len());
        let bias = self.tensors.get(&format!("{name}.bias")).map(|t| &t.1);
        (0..out)
            .map(|o| {
                let dot: f64 = (0..inp).map(|i| w[o * inp + i] * x[i]).sum();
                dot + bias.map_or(0.0, |b| b[o])
            })
            .collect()
    }

    fn rms_norm(&self, name: &str, x: &[f64]) -> Vec<f64> {
        let eps = self.config["rms_norm_eps"].as_f64().unwrap();
        let w = self.tensor(name);
        let variance = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (variance + eps).sqrt();
        x.iter().zip(w).map(|(v, g)| g * (v * inv)).collect()
    }

    /// `_compute_default_rope_parameters` / `_compute_llama3_parameters` / linear.
    fn inv_freq(&self, dim: usize) -> Vec<f64> {
        let base = self.config["rope_theta"].as_f64().unwrap();
        let inv: Vec<f64> = (0..dim)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f64 / dim as f64))
            .collect();
        let scaling = &self.config["rope_scaling"];
        // `transformers` renames the legacy `type` key to `rope_type` when it reads a config.
        let kind = scaling.get("rope_type").or_else(|| scaling.get("type"));
        match kind.and_then(Value::as_str) {
            None | Some("default") => inv,
            Some("linear") => {
                let factor = scaling["factor"].as_f64().unwrap();
                inv.iter().map(|f| f / factor).collect()
            }
            Some("llama3") => {
                let factor = scaling["factor"].as_f64().unwrap();
                let low = scaling["low_freq_factor"].as_f64().unwrap();
                let high = scaling["high_freq_factor"].as_f64().unwrap();
                let old = scaling["original_max_position_embeddings"]
                    .as_f64()
                    .unwrap();
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                inv.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let smooth = (old / wavelen - low) / (high - low);
                        let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            smoothed
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
            Some(other) => panic!("reference rope {other}"),
        }
    }

    /// `q * cos + rotate_half(q) * sin`, `cos = cat(freqs, freqs)`, per head.
    fn apply_rotary(&self, x: &mut [f64], head_dim: usize, position: usize) {
        let inv = self.inv_freq(head_dim);
        let half = head_dim / 2;
        for head in x.chunks_mut(head_dim) {
            let original = head.to_vec();
            for d in 0..head_dim {
                let angle = position as f64 * inv[d % half];
                let rotated = if d < half {
                    -original[d + half]
                } else {
                    original[d - half]
                };
                head[d] = original[d] * angle.cos() + rotated * angle.sin();
            }
        }
    }

    fn per_head_norm(&self, name: &str, x: &[f64], head_dim: usize) -> Vec<f64> {
        x.chunks(head_dim)
            .flat_map(|h| self.rms_norm(name, h))
            .collect()
    }

    /// Logits of every position of `tokens`, layer `l` reading the keys/values of layer
    /// `sources[l]`.
    pub fn logits(&self, tokens: &[u32], sources: &[usize]) -> Vec<Vec<f64>> {
        let n_layers = self.usize("num_hidden_layers");
        let hidden_size = self.usize("hidden_size");
        let heads = self.usize("num_attention_heads");
        let kv_heads = self.usize("num_key_value_heads");
        let head_dim = self.config["head_dim"]
            .as_u64()
            .map_or(hidden_size / heads, |d| d as usize);
        let qk_norm = self.config["model_type"] == "qwen3";
        let embed = self.tensor("model.embed_tokens.weight");
        let mut hidden: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| embed[t as usize * hidden_size..(t as usize + 1) * hidden_size].to_vec())
            .collect();
        let mut keys: Vec<Vec<Vec<f64>>> = Vec::new();
        let mut values: Vec<Vec<Vec<f64>>> = Vec::new();
        for (l, &source) in sources.iter().enumerate().take(n_layers) {
            let p = format!("model.layers.{l}");
            let normed: Vec<Vec<f64>> = hidden
                .iter()
                .map(|h| self.rms_norm(&format!("{p}.input_layernorm.weight"), h))
                .collect();
            let mut layer_keys = Vec::new();
            let mut layer_values = Vec::new();
            let mut queries = Vec::new();
            for (pos, x) in normed.iter().enumerate() {
                let mut q = self.linear(&format!("{p}.self_attn.q_proj"), x);
                let mut k = self.linear(&format!("{p}.self_attn.k_proj"), x);
                if qk_norm {
                    q = self.per_head_norm(&format!("{p}.self_attn.q_norm.weight"), &q, head_dim);
                    k = self.per_head_norm(&format!("{p}.self_attn.k_norm.weight"), &k, head_dim);
                }
                self.apply_rotary(&mut q, head_dim, pos);
                self.apply_rotary(&mut k, head_dim, pos);
                queries.push(q);
                layer_keys.push(k);
                layer_values.push(self.linear(&format!("{p}.self_attn.v_proj"), x));
            }
            keys.push(layer_keys);
            values.push(layer_values);

            for (pos, h) in hidden.iter_mut().enumerate() {
                let mut context = vec![0.0; heads * head_dim];
                for head in 0..heads {
                    let kv = head / (heads / kv_heads);
                    let q = &queries[pos][head * head_dim..(head + 1) * head_dim];
                    let scores: Vec<f64> = (0..=pos)
                        .map(|j| {
                            let k = &keys[source][j][kv * head_dim..(kv + 1) * head_dim];
                            q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>()
                                / (head_dim as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                    for (j, s) in scores.iter().enumerate() {
                        let weight = (s - max).exp() / total;
                        let v = &values[source][j][kv * head_dim..(kv + 1) * head_dim];
                        for d in 0..head_dim {
                            context[head * head_dim + d] += weight * v[d];
                        }
                    }
                }
                let attn = self.linear(&format!("{p}.self_attn.o_proj"), &context);
                h.iter_mut().zip(&attn).for_each(|(a, b)| *a += b);
                let x = self.rms_norm(&format!("{p}.post_attention_layernorm.weight"), h);
                let gate = self.linear(&format!("{p}.mlp.gate_proj"), &x);
                let up = self.linear(&format!("{p}.mlp.up_proj"), &x);
                let act: Vec<f64> = gate
                    .iter()
                    .zip(&up)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let down = self.linear(&format!("{p}.mlp.down_proj"), &act);
                h.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
            }
        }
        let tied = self.config["tie_word_embeddings"]
            .as_bool()
            .unwrap_or(false);
        let head_name = if tied {
            "model.embed_tokens"
        } else {
            "lm_head"
        };
        hidden
            .iter()
            .map(|h| self.linear(head_name, &self.rms_norm("model.norm.weight", h)))
            .collect()
    }
}
