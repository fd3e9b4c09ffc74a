//! [`TokenEmbedding`]: the token embedding table, as floats (a `burn::nn::Embedding`'s) or as a
//! [`BlockWeight`] kept as a GGUF file stores it.
//!
//! With blocks, the float `weight` is lazy (built only if something asks for it, see
//! [`crate::Projection`]): where the backend reads blocks in place (burn-flex) a lookup widens
//! just the rows of the tokens it embeds, and a tied LM head multiplies the blocks
//! ([`crate::kernels::block_product`]); on other backends the first lookup widens the table once.
//! The record is that of a `burn::nn::Embedding` (`weight`).

use burn::module::{Module, Param};
use burn::nn::Embedding;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::block_weight::{BlockFormat, BlockWeight, BLOCK_VALUES};
use crate::projection::{lazy_dequantized, quantized_rows};

/// Token embedding table `[vocab_size, d_model]` (see the module docs).
#[derive(Module, Debug)]
pub struct TokenEmbedding<B: Backend> {
    /// `[vocab_size, d_model]`; with `blocks`, their dequantized form, built only when asked for.
    pub weight: Param<Tensor<B, 2>>,
    /// The table as blocks, one row per token.
    #[module(skip)]
    pub blocks: Option<BlockWeight>,
}

impl<B: Backend> From<Embedding<B>> for TokenEmbedding<B> {
    fn from(embedding: Embedding<B>) -> Self {
        Self {
            weight: embedding.weight,
            blocks: None,
        }
    }
}

impl<B: Backend> TokenEmbedding<B> {
    /// A table whose rows are `blocks` (`[vocab_size, d_model]`), on `device`.
    pub fn from_blocks(blocks: BlockWeight, device: &B::Device) -> Self {
        Self {
            weight: lazy_dequantized(&blocks, device, false),
            blocks: Some(blocks),
        }
    }

    /// This table in `format` (see [`crate::Projection::into_blocks`]; a `d_model` that is not a
    /// multiple of [`BLOCK_VALUES`](crate::BLOCK_VALUES) leaves it as it is).
    pub fn into_blocks(self, format: BlockFormat) -> crate::Result<Self> {
        let [_, d_model] = self.dims();
        if self.blocks.as_ref().is_some_and(|b| b.format() == format)
            || !d_model.is_multiple_of(BLOCK_VALUES)
        {
            return Ok(self);
        }
        let device = self.weight.lazy_device();
        let blocks = quantized_rows(self.weight.val(), format)?;
        Ok(Self::from_blocks(blocks, &device))
    }

    /// `[vocab_size, d_model]`, without building a lazy table.
    pub fn dims(&self) -> [usize; 2] {
        self.weight.lazy_shape().dims()
    }

    /// The embeddings of `ids`, which must all be below `vocab_size`.
    ///
    /// # Shapes
    /// - ids: `[batch, seq_len]`
    /// - output: `[batch, seq_len, d_model]`
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        match &self.blocks {
            Some(blocks) if crate::kernels::multiplies_blocks::<B>() => {
                let [batch, seq_len] = ids.dims();
                let d_model = blocks.dims()[1];
                let device = ids.device();
                // The host holds these ids on a CPU backend: reading them is a copy, not a sync.
                let ids = ids.into_data().convert::<i64>();
                let ids = ids.as_slice::<i64>().expect("converted to i64");
                let mut values = vec![0f32; ids.len() * d_model];
                for (&id, row) in ids.iter().zip(values.chunks_exact_mut(d_model)) {
                    let id = id as usize;
                    blocks.dequantize_rows(id..id + 1, row);
                }
                Tensor::from_data(TensorData::new(values, [batch, seq_len, d_model]), &device)
            }
            _ => burn::tensor::module::embedding(self.weight.val(), ids),
        }
    }
}
