//! [`RunFingerprint`]: what every node of a run must agree on before the first step, compared in
//! the handshake so that a misconfigured node is refused by name instead of silently training
//! another run.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde_json::Value;

use crate::train_config::TrainConfig;

/// Named settings of a run, compared key by key between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunFingerprint(BTreeMap<String, String>);

/// Keys of a [`TrainConfig`] left out: paths, which differ from machine to machine for the same
/// files (the weights and data digests stand for their contents).
const MACHINE_LOCAL: [&str; 4] = [
    "base",
    "data.text_file.path",
    "data.text_file.tokenizer",
    "distill.teacher",
];

impl RunFingerprint {
    /// The run `config` from step `first_step`: every setting of the configuration but its
    /// paths, and the step.
    pub fn of_run(config: &TrainConfig, first_step: u64) -> Self {
        let mut entries = BTreeMap::new();
        let value = serde_json::to_value(config).expect("a configuration serializes");
        flatten("", &value, &mut entries);
        entries.retain(|key, _| {
            !MACHINE_LOCAL
                .iter()
                .any(|local| key == local || key.starts_with(&format!("{local}.")))
        });
        entries.insert("first_step".into(), first_step.to_string());
        Self(entries)
    }

    /// This fingerprint with `key` set to `value`.
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.0.insert(key.into(), value.to_string());
        self
    }

    /// The first setting in which `other` (node `other_rank`'s) differs from this one (node
    /// 0's), in words; `None` when they agree.
    pub fn first_difference(&self, other: &Self, other_rank: usize) -> Option<String> {
        let keys: std::collections::BTreeSet<&String> =
            self.0.keys().chain(other.0.keys()).collect();
        keys.into_iter().find_map(|key| {
            let (mine, theirs) = (self.0.get(key), other.0.get(key));
            (mine != theirs).then(|| {
                format!(
                    "{key} is {} on node {other_rank} and {} on node 0",
                    theirs.map_or("unset", String::as_str),
                    mine.map_or("unset", String::as_str)
                )
            })
        })
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(&self.0).expect("strings serialize")
    }

    pub(crate) fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok().map(Self)
    }
}

fn flatten(prefix: &str, value: &Value, into: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, into);
            }
        }
        other => {
            into.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// A 64-bit FNV-1a digest of `module`'s parameters (values and order): nodes that start from
/// different weights (another checkpoint, another step) are told apart before training.
pub fn weights_digest<B: Backend, M: Module<B>>(module: &M) -> u64 {
    let mut digest = Fnv::default();
    module.visit(&mut DigestVisitor(&mut digest));
    digest.0
}

/// A 64-bit FNV-1a digest of `tokens`.
pub fn tokens_digest(tokens: &[u32]) -> u64 {
    let mut digest = Fnv::default();
    for token in tokens {
        digest.write(&token.to_le_bytes());
    }
    digest.0
}

struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

struct DigestVisitor<'a>(&'a mut Fnv);

impl<B: Backend> ModuleVisitor<B> for DigestVisitor<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let data = param.val().into_data();
        for dim in data.shape.as_slice() {
            self.0.write(&(*dim as u64).to_le_bytes());
        }
        self.0.write(data.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_different_setting_is_named_and_paths_are_ignored() {
        let config = TrainConfig::small(2, 32, 16);
        let here = RunFingerprint::of_run(&config, 3);
        assert_eq!(here.first_difference(&here.clone(), 1), None);

        let mut other = config.clone();
        other.route_seed += 1;
        let there = RunFingerprint::of_run(&other, 3);
        let difference = here.first_difference(&there, 2).unwrap();
        assert!(difference.starts_with("route_seed is"), "{difference}");
        assert!(difference.contains("node 2"), "{difference}");

        let later = RunFingerprint::of_run(&config, 4);
        assert!(here
            .first_difference(&later, 1)
            .unwrap()
            .starts_with("first_step"));
        let weights = here.clone().with("weights", 1);
        assert!(here
            .first_difference(&weights, 1)
            .unwrap()
            .starts_with("weights"));

        let mut moved = config.clone();
        moved.data = crate::data::DataSource::TextFile {
            path: "/a/corpus.txt".into(),
            seed: 0,
            tokenizer: None,
        };
        let mut elsewhere = moved.clone();
        elsewhere.data = crate::data::DataSource::TextFile {
            path: "/b/corpus.txt".into(),
            seed: 0,
            tokenizer: None,
        };
        assert_eq!(
            RunFingerprint::of_run(&moved, 0)
                .first_difference(&RunFingerprint::of_run(&elsewhere, 0), 1),
            None
        );
        let json = here.to_json();
        assert_eq!(RunFingerprint::from_json(&json), Some(here));
    }

    #[test]
    fn digests_see_every_token() {
        assert_ne!(tokens_digest(&[1, 2, 3]), tokens_digest(&[1, 2, 4]));
        assert_ne!(tokens_digest(&[1, 2]), tokens_digest(&[2, 1]));
    }
}
