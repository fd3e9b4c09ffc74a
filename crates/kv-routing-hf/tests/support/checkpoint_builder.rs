//! Writes small random checkpoints exactly as `transformers` lays them out: `config.json`, HF
//! tensor names, linear weights `[out, in]`, in F32/F16/BF16, single-file or sharded.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use half::{bf16, f16};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};

/// Shape and values of one tensor, as the reference reads them (already rounded to the
/// checkpoint's dtype).
pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

/// A family and its shape knobs.
#[derive(Debug, Clone)]
pub struct Spec {
    pub model_type: &'static str,
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub tie: bool,
    pub attention_bias: bool,
    pub rope_scaling: Value,
    pub dtype: Dtype,
}

impl Spec {
    pub fn llama() -> Self {
        Spec {
            model_type: "llama",
            vocab: 41,
            hidden: 32,
            intermediate: 56,
            layers: 4,
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            tie: false,
            attention_bias: false,
            rope_scaling: Value::Null,
            dtype: Dtype::F32,
        }
    }

    pub fn config_json(&self) -> Value {
        let class = match self.model_type {
            "llama" => "LlamaForCausalLM",
            "mistral" => "MistralForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            "qwen3" => "Qwen3ForCausalLM",
            other => other,
        };
        let mut config = json!({
            "architectures": [class],
            "model_type": self.model_type,
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500.0,
            "rope_scaling": self.rope_scaling,
            "tie_word_embeddings": self.tie,
            "attention_bias": self.attention_bias,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.46.0"
        });
        if self.model_type == "mistral" {
            config["sliding_window"] = Value::Null;
        }
        if self.model_type == "qwen2" {
            config["use_sliding_window"] = json!(false);
            config["sliding_window"] = json!(4096);
        }
        config
    }

    /// Every tensor this family stores, with HF shapes.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, q, kv, f) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        );
        let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, h])];
        let qkv_bias = self.model_type == "qwen2" || self.attention_bias;
        let o_bias = self.model_type != "qwen2" && self.attention_bias;
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            let mut add =
                |name: &str, shape: Vec<usize>| shapes.push((format!("{p}.{name}"), shape));
            add("input_layernorm.weight", vec![h]);
            add("self_attn.q_proj.weight", vec![q, h]);
            add("self_attn.k_proj.weight", vec![kv, h]);
            add("self_attn.v_proj.weight", vec![kv, h]);
            add("self_attn.o_proj.weight", vec![h, q]);
            if qkv_bias {
                add("self_attn.q_proj.bias", vec![q]);
                add("self_attn.k_proj.bias", vec![kv]);
                add("self_attn.v_proj.bias", vec![kv]);
            }
            if o_bias {
                add("self_attn.o_proj.bias", vec![h]);
            }
            if self.model_type == "qwen3" {
                add("self_attn.q_norm.weight", vec![self.head_dim]);
                add("self_attn.k_norm.weight", vec![self.head_dim]);
            }
            add("post_attention_layernorm.weight", vec![h]);
            add("mlp.gate_proj.weight", vec![f, h]);
            add("mlp.up_proj.weight", vec![f, h]);
            add("mlp.down_proj.weight", vec![h, f]);
        }
        shapes.push(("model.norm.weight".into(), vec![h]));
        if !self.tie {
            shapes.push(("lm_head.weight".into(), vec![self.vocab, h]));
        }
        shapes
    }

    /// Random tensors (matrices N-ish(0, 0.25²), norms and biases around 1 / 0), rounded to
    /// the dtype.
    pub fn random_tensors(&self, seed: u64) -> Tensors {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        self.tensor_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let values = (0..n)
                    .map(|_| {
                        let u: f64 = rng.random_range(-0.4..0.4);
                        let v = if name.contains("norm") { 1.0 + u } else { u };
                        round(v as f32, self.dtype)
                    })
                    .collect();
                (name, (shape, values))
            })
            .collect()
    }

    /// Writes `config.json` and the tensors into `dir`, in `shards` files (1: one
    /// `model.safetensors`; more: HF shard names and an index).
    pub fn write(&self, dir: &Path, tensors: &Tensors, shards: usize) {
        std::fs::create_dir_all(dir).unwrap();
        let config = serde_json::to_string_pretty(&self.config_json()).unwrap();
        std::fs::write(dir.join("config.json"), config).unwrap();
        write_tensors(dir, tensors, self.dtype, shards);
    }
}

/// Writes tensors as safetensors files (see [`Spec::write`]).
pub fn write_tensors(dir: &Path, tensors: &Tensors, dtype: Dtype, shards: usize) {
    let names: Vec<&String> = tensors.keys().collect();
    let per_shard = names.len().div_ceil(shards);
    let mut weight_map = BTreeMap::new();
    for (i, chunk) in names.chunks(per_shard).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", i + 1)
        };
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = chunk
            .iter()
            .map(|name| {
                let (shape, values) = &tensors[*name];
                ((*name).clone(), shape.clone(), encode(values, dtype))
            })
            .collect();
        let views: Vec<(String, TensorView)> = bytes
            .iter()
            .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
            .collect();
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(metadata), &dir.join(&file)).unwrap();
        for name in chunk {
            weight_map.insert((*name).clone(), file.clone());
        }
    }
    if shards > 1 {
        let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            serde_json::to_string(&index).unwrap(),
        )
        .unwrap();
    }
}

fn round(v: f32, dtype: Dtype) -> f64 {
    match dtype {
        Dtype::F32 => v as f64,
        Dtype::F16 => f16::from_f32(v).to_f64(),
        Dtype::BF16 => bf16::from_f32(v).to_f64(),
        other => panic!("test dtype {other:?}"),
    }
}

fn encode(values: &[f64], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f64(v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f64(v).to_le_bytes())
            .collect(),
        Dtype::I32 => values
            .iter()
            .flat_map(|&v| (v as i32).to_le_bytes())
            .collect(),
        other => panic!("test dtype {other:?}"),
    }
}
