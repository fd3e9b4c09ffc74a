//! Which Hugging Face tensor is which parameter of a [`RoutedTransformer`], and how its layout
//! differs.
//!
//! Hugging Face stores a linear layer's weight as `[out, in]` (PyTorch's `y = x Wᵀ + b`); Burn
//! stores `[in, out]` (`y = x W + b`), so linear weights are transposed both ways. Embeddings
//! (`[vocab, d_model]`), biases and norm gains have the same layout in both. The rotary
//! convention needs no permutation: the model rotates halves, as `rotate_half` does.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kv_routing::{Projection, RoutedTransformer};

/// How a tensor is laid out in the checkpoint relative to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A linear layer's weight: transposed.
    LinearWeight,
    /// An embedding matrix: as is.
    Embedding,
    /// A bias or norm gain: as is.
    Vector,
}

/// A parameter of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Token embedding.
    Embedding,
    /// LM head (absent when tied).
    LmHead,
    /// Final norm.
    FinalNorm,
    /// A parameter of block `layer`.
    Block(usize, BlockParam),
}

/// A parameter of a decoder block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum BlockParam {
    AttentionNorm,
    Query,
    Key,
    Value,
    Output,
    QueryBias,
    KeyBias,
    ValueBias,
    OutputBias,
    QueryNorm,
    KeyNorm,
    MlpNorm,
    Gate,
    Up,
    Down,
}

impl Slot {
    /// The checkpoint's layout of this parameter.
    pub fn layout(self) -> Layout {
        use BlockParam::*;
        match self {
            Slot::Embedding => Layout::Embedding,
            Slot::LmHead => Layout::LinearWeight,
            Slot::FinalNorm => Layout::Vector,
            Slot::Block(_, param) => match param {
                Query | Key | Value | Output | Gate | Up | Down => Layout::LinearWeight,
                _ => Layout::Vector,
            },
        }
    }
}

/// Every parameter `model` has, with its Hugging Face name, in checkpoint order.
pub fn parameter_names<B: Backend>(model: &RoutedTransformer<B>) -> Vec<(String, Slot)> {
    use BlockParam::*;
    let mut names = vec![("model.embed_tokens.weight".to_string(), Slot::Embedding)];
    for (layer, block) in model.blocks.iter().enumerate() {
        let attention = &block.attention;
        let prefix = format!("model.layers.{layer}");
        let mut add = |suffix: &str, param: BlockParam| {
            names.push((format!("{prefix}.{suffix}"), Slot::Block(layer, param)));
        };
        add("input_layernorm.weight", AttentionNorm);
        add("self_attn.q_proj.weight", Query);
        add("self_attn.k_proj.weight", Key);
        add("self_attn.v_proj.weight", Value);
        add("self_attn.o_proj.weight", Output);
        for (linear, suffix, param) in [
            (&attention.query, "self_attn.q_proj.bias", QueryBias),
            (&attention.key, "self_attn.k_proj.bias", KeyBias),
            (&attention.value, "self_attn.v_proj.bias", ValueBias),
            (&attention.output, "self_attn.o_proj.bias", OutputBias),
        ] {
            if linear.bias.is_some() {
                add(suffix, param);
            }
        }
        if attention.query_norm.is_some() {
            add("self_attn.q_norm.weight", QueryNorm);
        }
        if attention.key_norm.is_some() {
            add("self_attn.k_norm.weight", KeyNorm);
        }
        add("post_attention_layernorm.weight", MlpNorm);
        add("mlp.gate_proj.weight", Gate);
        add("mlp.up_proj.weight", Up);
        add("mlp.down_proj.weight", Down);
    }
    names.push(("model.norm.weight".into(), Slot::FinalNorm));
    if model.lm_head.is_some() {
        names.push(("lm_head.weight".into(), Slot::LmHead));
    }
    names
}

/// The rank-2 parameter at `slot`. Panics on a rank-1 slot or one the model lacks (callers
/// take slots from [`parameter_names`] of the same model).
pub fn matrix<B: Backend>(
    model: &mut RoutedTransformer<B>,
    slot: Slot,
) -> &mut Param<Tensor<B, 2>> {
    match slot {
        Slot::Embedding => &mut model.embedding.weight,
        Slot::FinalNorm => unreachable!("the final norm is a vector"),
        _ => &mut projection(model, slot).weight,
    }
}

/// The projection at a linear-weight `slot` (see [`matrix`]; panics on any other slot).
pub fn projection<B: Backend>(model: &mut RoutedTransformer<B>, slot: Slot) -> &mut Projection<B> {
    use BlockParam::*;
    match slot {
        Slot::LmHead => model.lm_head.as_mut().expect("slot from parameter_names"),
        Slot::Block(layer, param) => {
            let block = &mut model.blocks[layer];
            match param {
                Query => &mut block.attention.query,
                Key => &mut block.attention.key,
                Value => &mut block.attention.value,
                Output => &mut block.attention.output,
                Gate => &mut block.mlp.gate,
                Up => &mut block.mlp.up,
                Down => &mut block.mlp.down,
                _ => unreachable!("{param:?} is a vector"),
            }
        }
        _ => unreachable!("{slot:?} is not a projection"),
    }
}

/// The rank-1 parameter at `slot` (see [`matrix`]).
pub fn vector<B: Backend>(
    model: &mut RoutedTransformer<B>,
    slot: Slot,
) -> &mut Param<Tensor<B, 1>> {
    use BlockParam::*;
    let missing = "slot from parameter_names";
    match slot {
        Slot::FinalNorm => &mut model.norm.gamma,
        Slot::Block(layer, param) => {
            let block = &mut model.blocks[layer];
            let attention = &mut block.attention;
            match param {
                AttentionNorm => &mut block.attention_norm.gamma,
                MlpNorm => &mut block.mlp_norm.gamma,
                QueryBias => attention.query.bias.as_mut().expect(missing),
                KeyBias => attention.key.bias.as_mut().expect(missing),
                ValueBias => attention.value.bias.as_mut().expect(missing),
                OutputBias => attention.output.bias.as_mut().expect(missing),
                QueryNorm => &mut attention.query_norm.as_mut().expect(missing).gamma,
                KeyNorm => &mut attention.key_norm.as_mut().expect(missing).gamma,
                _ => unreachable!("{param:?} is a matrix"),
            }
        }
        Slot::Embedding | Slot::LmHead => unreachable!("{slot:?} is a matrix"),
    }
}
