//! Writes GGUF files as llama.cpp's converter lays them out, from the Hugging Face tensors of
//! [`Spec`]: llama.cpp names, dims innermost first, the `llama` architecture's query/key rows in
//! llama.cpp's rotary order (`convert_hf_to_gguf.py`'s `permute`), matrices in any tensor type
//! (quantized ones as random valid blocks), and a small byte-level tokenizer.
//!
//! Written from the GGUF specification and the converter, sharing nothing with the loader but
//! the dequantizer (which `gguf.rs` checks against gguf-py separately): the Hugging Face values
//! the reference computes with are the dequantized blocks, rows in Hugging Face order.

use half::{bf16, f16};
use kv_routing_hf::gguf::{dequantize::dequantize, GgmlType};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::checkpoint_builder::{Spec, Tensors};

/// A metadata value.
#[derive(Debug, Clone)]
pub enum Meta {
    U32(u32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

/// A GGUF file being assembled.
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    pub metadata: Vec<(String, Meta)>,
    /// Name, dims (innermost first), type id, data.
    pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl GgufWriter {
    pub fn meta(&mut self, key: &str, value: Meta) -> &mut Self {
        self.metadata.push((key.into(), value));
        self
    }

    pub fn tensor(&mut self, name: &str, dims: Vec<u64>, ty: GgmlType, data: Vec<u8>) {
        self.tensors.push((name.into(), dims, ty.0, data));
    }

    /// The file: header, metadata, tensor directory, data aligned to 32 bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            string(&mut out, key);
            let array = |out: &mut Vec<u8>, ty: u32, n: usize| {
                out.extend(9u32.to_le_bytes());
                out.extend(ty.to_le_bytes());
                out.extend((n as u64).to_le_bytes());
            };
            match value {
                Meta::U32(v) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Meta::U64(v) => {
                    out.extend(10u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Meta::F32(v) => {
                    out.extend(6u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Meta::Bool(v) => {
                    out.extend(7u32.to_le_bytes());
                    out.push(*v as u8);
                }
                Meta::Str(v) => {
                    out.extend(8u32.to_le_bytes());
                    string(&mut out, v);
                }
                Meta::Strs(v) => {
                    array(&mut out, 8, v.len());
                    v.iter().for_each(|s| string(&mut out, s));
                }
                Meta::I32s(v) => {
                    array(&mut out, 5, v.len());
                    v.iter().for_each(|x| out.extend(x.to_le_bytes()));
                }
                Meta::F32s(v) => {
                    array(&mut out, 6, v.len());
                    v.iter().for_each(|x| out.extend(x.to_le_bytes()));
                }
            }
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in &self.tensors {
            string(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).next_multiple_of(32);
        }
        out.resize(out.len().next_multiple_of(32), 0);
        let data_start = out.len();
        for ((_, _, _, data), offset) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + offset as usize, 0);
            out.extend(data);
        }
        out
    }
}

/// GPT-2's map from bytes to printable characters (the alphabet of byte-level BPE vocabularies).
pub fn byte_level_char(byte: u8) -> char {
    let printable = |b: u8| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    if printable(byte) {
        return byte as char;
    }
    let rank = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + rank).unwrap()
}

/// Byte offsets of the f16 scale fields of one block, and a scale magnitude that keeps the
/// block's values within about ±0.5.
fn scale_fields(ty: GgmlType) -> (&'static [usize], f32) {
    match ty {
        GgmlType::Q8_0 => (&[0], 0.004),
        GgmlType::Q4_0 => (&[0], 0.06),
        GgmlType::Q4_1 => (&[0, 2], 0.05),
        GgmlType::Q5_0 => (&[0], 0.03),
        GgmlType::Q5_1 => (&[0, 2], 0.02),
        GgmlType::Q4_K => (&[0, 2], 0.0006),
        GgmlType::Q5_K => (&[0, 2], 0.0003),
        GgmlType::Q6_K => (&[208], 0.0001),
        other => panic!("{other} has no blocks"),
    }
}

/// Random data of `n` values of type `ty`: floats within ±0.4, or random blocks with sane
/// scales.
pub fn random_data(ty: GgmlType, n: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut value = || rng.random_range(-0.4f32..0.4);
    match ty {
        GgmlType::F32 => (0..n).flat_map(|_| value().to_le_bytes()).collect(),
        GgmlType::F16 => (0..n)
            .flat_map(|_| f16::from_f32(value()).to_le_bytes())
            .collect(),
        GgmlType::BF16 => (0..n)
            .flat_map(|_| bf16::from_f32(value()).to_le_bytes())
            .collect(),
        _ => {
            let (block_values, block_bytes) = ty.block_geometry().unwrap();
            let (fields, magnitude) = scale_fields(ty);
            let mut data: Vec<u8> = (0..n / block_values * block_bytes)
                .map(|_| rng.random::<u8>())
                .collect();
            for block in data.chunks_exact_mut(block_bytes) {
                for &at in fields {
                    let scale = f16::from_f32(rng.random_range(-magnitude..magnitude));
                    block[at..at + 2].copy_from_slice(&scale.to_le_bytes());
                }
            }
            data
        }
    }
}

/// The GGUF name of a Hugging Face tensor (the converter's table).
pub fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let (module, kind) = rest.rsplit_once('.').unwrap();
    let short = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{layer}.{short}.{kind}")
}

/// `convert_hf_to_gguf.py`'s `LlamaModel.permute` on rows of `row_bytes` bytes:
/// `w.reshape(heads, 2, rows / heads / 2, ...).swapaxes(1, 2)`.
fn permute_rows(data: &[u8], rows: usize, heads: usize) -> Vec<u8> {
    let row_bytes = data.len() / rows;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(data.len());
    for head in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let source = head * head_dim + j * half + i;
                out.extend_from_slice(&data[source * row_bytes..(source + 1) * row_bytes]);
            }
        }
    }
    out
}

/// GGUF `general.architecture` of a spec's family.
pub fn architecture(spec: &Spec) -> &'static str {
    match spec.model_type {
        "llama" | "mistral" => "llama",
        "qwen2" => "qwen2",
        "qwen3" => "qwen3",
        other => panic!("{other}"),
    }
}

/// A GGUF file of `spec` with its matrices stored as `matrix_type` (vectors as F32), and the
/// Hugging Face tensors (the values the file holds, in Hugging Face layout) for the reference.
pub fn gguf_model(spec: &Spec, matrix_type: GgmlType, seed: u64) -> (GgufWriter, Tensors) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let arch = architecture(spec);
    let mut writer = GgufWriter::default();
    let mut tensors = Tensors::new();
    for (name, shape) in spec.tensor_shapes() {
        let n: usize = shape.iter().product();
        let ty = if shape.len() == 1 {
            GgmlType::F32
        } else {
            matrix_type
        };
        let mut data = random_data(ty, n, &mut rng);
        let mut values: Vec<f64> = dequantize(ty, &data, n)
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        if name.contains("norm") {
            values.iter_mut().for_each(|v| *v += 1.0);
            data = values
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect();
        }
        let heads = if name.contains("q_proj") {
            Some(spec.heads)
        } else if name.contains("k_proj") {
            Some(spec.kv_heads)
        } else {
            None
        };
        if let (Some(heads), "llama") = (heads, arch) {
            data = permute_rows(&data, shape[0], heads);
        }
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        writer.tensor(&gguf_name(&name), dims, ty, data);
        tensors.insert(name, (shape, values));
    }
    let u32 = |v: usize| Meta::U32(v as u32);
    let key = |suffix: &str| format!("{arch}.{suffix}");
    writer
        .meta("general.architecture", Meta::Str(arch.into()))
        .meta(&key("block_count"), u32(spec.layers))
        .meta(&key("context_length"), u32(64))
        .meta(&key("embedding_length"), u32(spec.hidden))
        .meta(&key("feed_forward_length"), u32(spec.intermediate))
        .meta(&key("attention.head_count"), u32(spec.heads))
        .meta(&key("attention.head_count_kv"), u32(spec.kv_heads))
        .meta(&key("attention.key_length"), u32(spec.head_dim))
        .meta(&key("attention.value_length"), u32(spec.head_dim))
        .meta(&key("rope.dimension_count"), u32(spec.head_dim))
        .meta(&key("rope.freq_base"), Meta::F32(500.0))
        .meta(&key("attention.layer_norm_rms_epsilon"), Meta::F32(1e-5));
    add_byte_level_tokenizer(&mut writer, spec.vocab);
    (writer, tensors)
}

/// A byte-level BPE tokenizer of `vocab` tokens: `<|end|>` (control, id 0, also EOS), then
/// single byte-level characters.
pub fn add_byte_level_tokenizer(writer: &mut GgufWriter, vocab: usize) {
    let mut tokens = vec!["<|end|>".to_string()];
    tokens.extend(
        (0..vocab - 1)
            .map(|i| byte_level_char(b'a' + (i % 26) as u8).to_string() + &"~".repeat(i / 26)),
    );
    let mut types = vec![3];
    types.extend(std::iter::repeat_n(1, vocab - 1));
    writer
        .meta("tokenizer.ggml.model", Meta::Str("gpt2".into()))
        .meta("tokenizer.ggml.pre", Meta::Str("default".into()))
        .meta("tokenizer.ggml.tokens", Meta::Strs(tokens))
        .meta("tokenizer.ggml.token_type", Meta::I32s(types))
        .meta("tokenizer.ggml.merges", Meta::Strs(Vec::new()))
        .meta("tokenizer.ggml.eos_token_id", Meta::U32(0));
}
