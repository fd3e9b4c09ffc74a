//! A model's matrices in a block-quantized format ([`BlockFormat`]): every projection, the token
//! embedding and an untied LM head whose input width is a whole number of blocks.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::RoutedTransformer;
use crate::block_weight::{BlockFormat, BlockWeight};

impl<B: Backend> RoutedTransformer<B> {
    /// This model with its matrices in `format` (see [`crate::Projection::into_blocks`]):
    /// blocks already in `format` are kept as they are, float matrices quantized, and a matrix
    /// whose rows are not whole blocks stays in floats. Norm gains, biases and rotary tables stay
    /// in floats. Where the backend multiplies blocks in place (burn-flex) the float weights are
    /// not kept; elsewhere they are rebuilt from the blocks at first use.
    pub fn with_block_weights(mut self, format: BlockFormat) -> crate::Result<Self> {
        self.embedding = self.embedding.into_blocks(format)?;
        self.lm_head = self.lm_head.map(|h| h.into_blocks(format)).transpose()?;
        for block in &mut self.blocks {
            for projection in block.projections_mut() {
                *projection = projection.clone().into_blocks(format)?;
            }
        }
        Ok(self)
    }

    /// This model with llama.cpp's arithmetic for a prompt's products with Q8_0 blocks switched
    /// on or off in every matrix ([`BlockWeight::with_int8_prompt_products`]: faster prompts,
    /// results moved by the rounding of the products' inputs). Float matrices are unaffected.
    pub fn with_int8_prompt_products(mut self, on: bool) -> Self {
        let switch = |blocks: &mut Option<BlockWeight>| {
            if let Some(weight) = blocks.take() {
                *blocks = Some(weight.with_int8_prompt_products(on));
            }
        };
        switch(&mut self.embedding.blocks);
        if let Some(head) = &mut self.lm_head {
            switch(&mut head.blocks);
        }
        for block in &mut self.blocks {
            for projection in block.projections_mut() {
                switch(&mut projection.blocks);
            }
        }
        self
    }

    /// Bytes the model's weights take: blocks at their size, float parameters at their type's
    /// (a float weight that stands for blocks counts only when it has been built).
    pub fn weight_bytes(&self) -> usize {
        let mut bytes = 0;
        let mut add_blocks = |blocks: Option<&crate::BlockWeight>| {
            bytes += blocks.map_or(0, |b| b.bytes().len());
        };
        add_blocks(self.embedding.blocks.as_ref());
        add_blocks(self.lm_head.as_ref().and_then(|h| h.blocks.as_ref()));
        for block in &self.blocks {
            for projection in block.projections() {
                add_blocks(projection.blocks.as_ref());
            }
        }
        let mut floats = BuiltFloatBytes(0);
        self.visit(&mut floats);
        bytes + floats.0
    }
}

/// Sums the bytes of the float parameters that hold a value (a lazy one not yet built holds
/// none).
struct BuiltFloatBytes(usize);

impl<B: Backend> ModuleVisitor<B> for BuiltFloatBytes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if param.is_initialized() {
            self.0 += param.shape().num_elements() * param.dtype().size();
        }
    }
}
