//! The built-in synthetic corpus: associative recall mixed with structured text.
//!
//! A **recall block** lists key/value pairs, then queries them in another order:
//! `{ab:X7 cd:Q2 ef:K9} cd?Q2 ef?K9 ab?X7.` The two answer characters after each `?` can only be
//! predicted by attending back to the pair, so recall accuracy measures what attention (and
//! hence KV sharing) preserves. A **text block** is a sentence from a small grammar
//! (`the quick fox sees a red bird.`), which rewards local structure. Blocks are mixed half and
//! half and generated on the fly from `(seed, stream)`; nothing is stored.

use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::sample::Sample;

const ADJECTIVES: [&str; 8] = [
    "quick", "red", "small", "old", "bright", "quiet", "green", "lazy",
];
const NOUNS: [&str; 8] = [
    "fox", "bird", "river", "house", "cat", "tree", "stone", "boat",
];
const VERBS: [&str; 8] = [
    "sees", "finds", "follows", "hears", "likes", "passes", "keeps", "moves",
];
const DETERMINERS: [&str; 3] = ["the", "a", "every"];
const VALUE_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// `len` tokens of stream `stream` of the corpus `seed`, with recall-answer flags.
pub fn synthetic_sample(seed: u64, stream: u64, len: usize) -> Sample {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let mut bytes: Vec<u8> = Vec::with_capacity(len + 64);
    let mut answer: Vec<bool> = Vec::with_capacity(len + 64);
    while bytes.len() < len {
        if rng.random_bool(0.5) {
            recall_block(&mut rng, &mut bytes, &mut answer);
        } else {
            sentence(&mut rng, &mut bytes, &mut answer);
        }
    }
    bytes.truncate(len);
    Sample {
        tokens: bytes.iter().map(|&b| u32::from(b)).collect(),
        // The target of position i is token i + 1.
        recall: answer[1..len].to_vec(),
    }
}

fn push(bytes: &mut Vec<u8>, answer: &mut Vec<bool>, text: &[u8], is_answer: bool) {
    bytes.extend_from_slice(text);
    answer.extend(std::iter::repeat_n(is_answer, text.len()));
}

fn recall_block(rng: &mut ChaCha8Rng, bytes: &mut Vec<u8>, answer: &mut Vec<bool>) {
    let n_pairs = rng.random_range(3..=6);
    let mut keys: Vec<[u8; 2]> = Vec::with_capacity(n_pairs);
    while keys.len() < n_pairs {
        let key = [
            b'a' + rng.random_range(0..26u8),
            b'a' + rng.random_range(0..26u8),
        ];
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let values: Vec<[u8; 2]> = (0..n_pairs)
        .map(|_| {
            let mut pick = || VALUE_CHARS[rng.random_range(0..VALUE_CHARS.len())];
            [pick(), pick()]
        })
        .collect();
    push(bytes, answer, b"{", false);
    for (i, (key, value)) in keys.iter().zip(&values).enumerate() {
        if i > 0 {
            push(bytes, answer, b" ", false);
        }
        push(bytes, answer, key, false);
        push(bytes, answer, b":", false);
        push(bytes, answer, value, false);
    }
    push(bytes, answer, b"}", false);
    let mut order: Vec<usize> = (0..n_pairs).collect();
    order.shuffle(rng);
    for i in order {
        push(bytes, answer, b" ", false);
        push(bytes, answer, &keys[i], false);
        push(bytes, answer, b"?", false);
        push(bytes, answer, &values[i], true);
    }
    push(bytes, answer, b".\n", false);
}

fn sentence(rng: &mut ChaCha8Rng, bytes: &mut Vec<u8>, answer: &mut Vec<bool>) {
    let mut pick = |words: &[&str]| words[rng.random_range(0..words.len())].to_string();
    let text = format!(
        "{} {} {} {} {} {} {}.\n",
        pick(&DETERMINERS),
        pick(&ADJECTIVES),
        pick(&NOUNS),
        pick(&VERBS),
        pick(&DETERMINERS),
        pick(&ADJECTIVES),
        pick(&NOUNS)
    );
    push(bytes, answer, text.as_bytes(), false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_deterministic_and_flag_recall_answers() {
        let a = synthetic_sample(1, 0, 200);
        assert_eq!(a, synthetic_sample(1, 0, 200));
        assert_ne!(a.tokens, synthetic_sample(1, 1, 200).tokens);
        assert_eq!(a.tokens.len(), 200);
        assert_eq!(a.recall.len(), 199);
        assert!(
            a.recall.iter().any(|&r| r),
            "some recall answers in 200 bytes"
        );
        let text: Vec<u8> = a.tokens.iter().map(|&t| t as u8).collect();
        for (i, &is_answer) in a.recall.iter().enumerate() {
            if !is_answer {
                continue;
            }
            // The answer at i + 1 is preceded by "key?" or by the first answer character.
            let question = if text[i] == b'?' { i } else { i - 1 };
            assert_eq!(text[question], b'?');
            let key = &text[question - 2..question];
            let value_start = question + 1;
            let definition = [key, b":"].concat();
            let defined_at = text[..question]
                .windows(3)
                .rposition(|w| w == definition.as_slice())
                .expect("the queried key was defined earlier");
            // Blocks can be cut at the start of a window; when the definition is present it
            // carries the same value.
            if value_start + 2 <= text.len() {
                assert_eq!(
                    text[defined_at + 3..defined_at + 5],
                    text[value_start..value_start + 2]
                );
            }
        }
    }
}
