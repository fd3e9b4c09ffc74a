//! [`Sample`]: one training or validation sequence, whatever its source (the synthetic corpus
//! or a text file).

/// One sequence of `seq_len + 1` tokens and, per next-token target, whether it is the answer of
/// a recall query (which only attention to the earlier context can predict).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// `seq_len + 1` tokens.
    pub tokens: Vec<u32>,
    /// `recall[i]`: the target of position `i` (token `i + 1`) is a recall answer.
    pub recall: Vec<bool>,
}
