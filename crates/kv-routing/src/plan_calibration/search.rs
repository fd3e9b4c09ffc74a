//! The search itself: candidate plans scored on the calibration text with the prefix each
//! shares with its parent reused (see the module docs of [`super`]).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{
    CalibrationLevel, CalibrationMeasure, CalibrationProgress, PlanCalibration,
    PlanCalibrationConfig, PlanSearch,
};
use crate::cache_plan::CachePlan;
use crate::error::{KvRoutingError, Result};
use crate::routed_transformer::{RecordedForward, RoutedTransformer};
use crate::vocab_loss::{cross_entropy_per_token, distillation_per_token};

/// One batch of calibration sequences.
struct Chunk {
    inputs: Vec<Vec<u32>>,
    /// The next token of every input, row-major.
    targets: Vec<u32>,
}

/// The calibration text and what every candidate is scored against.
struct Scorer<'a, B: Backend> {
    model: &'a RoutedTransformer<B>,
    measure: CalibrationMeasure,
    chunks: Vec<Chunk>,
    /// The full cache's logits of each chunk (the KL's reference).
    full_logits: Vec<Tensor<B, 3>>,
    tokens: usize,
    candidates: usize,
    blocks: usize,
}

impl<B: Backend> Scorer<'_, B> {
    /// Sum over the chunk's tokens of the measure, from the plan's logits.
    fn chunk_damage(&self, chunk: usize, logits: Tensor<B, 3>) -> Result<f64> {
        let per_token = match self.measure {
            CalibrationMeasure::FullCacheKl => {
                distillation_per_token(logits, self.full_logits[chunk].clone(), 1.0)?
            }
            CalibrationMeasure::CrossEntropy => {
                cross_entropy_per_token(logits, &self.chunks[chunk].targets)?
            }
        };
        Ok(per_token.into_data().iter::<f64>().sum())
    }

    /// Every chunk run under `plan`, recorded for its children.
    fn record(&mut self, plan: &CachePlan) -> Result<Vec<RecordedForward<B>>> {
        self.blocks += self.model.n_layers() * self.chunks.len();
        self.chunks
            .iter()
            .map(|chunk| self.model.forward_recorded(&chunk.inputs, &plan.route()))
            .collect()
    }

    /// Mean damage of `recorded`'s own plan.
    fn recorded_damage(&self, recorded: &[RecordedForward<B>]) -> Result<f64> {
        let mut sum = 0.0;
        for (chunk, run) in recorded.iter().enumerate() {
            sum += self.chunk_damage(chunk, run.logits())?;
        }
        Ok(sum / self.tokens as f64)
    }

    /// Mean damage of `parent` without cached layer `removed`, rerunning only the blocks from
    /// `removed` on.
    fn child_damage(
        &mut self,
        parent: &[RecordedForward<B>],
        child: &CachePlan,
        removed: usize,
    ) -> Result<f64> {
        self.candidates += 1;
        self.blocks += (self.model.n_layers() - removed) * self.chunks.len();
        let route = child.route();
        let mut sum = 0.0;
        for (chunk, run) in parent.iter().enumerate() {
            sum += self.chunk_damage(chunk, self.model.forward_from(run, removed, &route)?)?;
        }
        Ok(sum / self.tokens as f64)
    }
}

/// `plan` without cached layer `layer`.
fn without(plan: &CachePlan, layer: usize) -> Result<CachePlan> {
    CachePlan::new(
        plan.n_layers(),
        plan.cached_layers().iter().copied().filter(|&l| l != layer),
    )
}

/// A damage for ordering: NaN (a plan whose logits are not finite) counts as the worst.
fn nan_last(damage: f64) -> f64 {
    if damage.is_nan() {
        f64::INFINITY
    } else {
        damage
    }
}

/// Orders candidates: lower damage first (NaN last), ties to the smaller list of layers.
fn better(a: &(CachePlan, f64), b: &(CachePlan, f64)) -> Ordering {
    nan_last(a.1)
        .total_cmp(&nan_last(b.1))
        .then_with(|| a.0.cached_layers().cmp(b.0.cached_layers()))
}

impl PlanCalibrationConfig {
    /// Chooses the plan for `model` that meets the budget with the least damage on
    /// `sequences` (each `n + 1` tokens: inputs and their next tokens), calling `progress`
    /// after each plan size searched.
    ///
    /// # Errors
    /// A budget no plan meets, a batch size or beam width of 0, no sequences, sequences of
    /// different lengths, shorter than 2 tokens or longer than the context, ids outside the
    /// vocabulary; all before any forward pass.
    pub fn calibrate<B: Backend>(
        &self,
        model: &RoutedTransformer<B>,
        sequences: &[Vec<u32>],
        mut progress: impl FnMut(&CalibrationProgress<'_>),
    ) -> Result<PlanCalibration> {
        let started = Instant::now();
        let target = self.budget.cached_layers(model)?;
        let chunks = self.chunks(model, sequences)?;
        if let PlanSearch::Beam { width: 0 } = self.search {
            return Err(KvRoutingError::InvalidConfig(
                "a beam search keeps at least one plan per size (width >= 1)".into(),
            ));
        }
        let n_layers = model.n_layers();
        let tokens = chunks.iter().map(|c| c.targets.len()).sum();
        let mut scorer = Scorer {
            model,
            measure: self.measure,
            chunks,
            full_logits: Vec::new(),
            tokens,
            candidates: 0,
            blocks: 0,
        };
        let full = CachePlan::full(n_layers)?;
        let full_run = scorer.record(&full)?;
        scorer.full_logits = full_run.iter().map(RecordedForward::logits).collect();
        let full_cache_value = scorer.recorded_damage(&full_run)?;

        // Every search starts by removing single layers from the full cache (none when the
        // budget is the full cache).
        let mut children = Vec::with_capacity(n_layers);
        for layer in (1..n_layers).filter(|_| target < n_layers) {
            let child = without(&full, layer)?;
            let damage = scorer.child_damage(&full_run, &child, layer)?;
            children.push((child, damage));
        }
        let mut single: Vec<Option<f64>> = std::iter::once(None)
            .chain(children.iter().map(|&(_, damage)| Some(damage)))
            .collect();
        single.resize(n_layers, None);
        drop(full_run);
        let mut report = |s: &Scorer<'_, B>, best: &(CachePlan, f64)| {
            progress(&CalibrationProgress {
                best: &best.0,
                damage: best.1,
                target_layers: target,
                candidates_evaluated: s.candidates,
                seconds: started.elapsed().as_secs_f64(),
            })
        };
        let mut levels = Vec::new();
        let searched = if target == n_layers {
            (full, full_cache_value)
        } else {
            match self.search {
                PlanSearch::OneShot => {
                    // Remove the layers whose removal alone hurt least (ties: the higher
                    // layer, as `better` orders their plans); keep layer 0 and the rest.
                    let mut ranked: Vec<(usize, f64)> = (1..n_layers)
                        .zip(single.iter().skip(1).flatten().copied())
                        .collect();
                    ranked.sort_by(|a, b| {
                        nan_last(a.1).total_cmp(&nan_last(b.1)).then(b.0.cmp(&a.0))
                    });
                    let dropped: Vec<usize> = ranked[..n_layers - target]
                        .iter()
                        .map(|&(layer, _)| layer)
                        .collect();
                    let plan =
                        CachePlan::new(n_layers, (0..n_layers).filter(|l| !dropped.contains(l)))?;
                    let run = scorer.record(&plan)?;
                    let best = (plan, scorer.recorded_damage(&run)?);
                    report(&scorer, &best);
                    levels.push(CalibrationLevel {
                        plan: best.0.clone(),
                        damage: best.1,
                    });
                    best
                }
                PlanSearch::Beam { width } => {
                    let mut beam = children;
                    loop {
                        beam.sort_by(better);
                        beam.truncate(width);
                        report(&scorer, &beam[0]);
                        levels.push(CalibrationLevel {
                            plan: beam[0].0.clone(),
                            damage: beam[0].1,
                        });
                        if beam[0].0.cached_layers().len() == target {
                            break beam.swap_remove(0);
                        }
                        // A child reached from two parents is scored once (same plan, same
                        // damage); the map also fixes the order candidates are kept in.
                        let mut next: BTreeMap<Vec<usize>, (CachePlan, f64)> = BTreeMap::new();
                        for (parent, _) in &beam {
                            let run = scorer.record(parent)?;
                            for &layer in &parent.cached_layers()[1..] {
                                let child = without(parent, layer)?;
                                if next.contains_key(child.cached_layers()) {
                                    continue;
                                }
                                let damage = scorer.child_damage(&run, &child, layer)?;
                                next.insert(child.cached_layers().to_vec(), (child, damage));
                            }
                        }
                        beam = next.into_values().collect();
                    }
                }
            }
        };
        // The rule-based plans of the same size (`retention:F`, and `every:K` where it caches as
        // many layers) are scored too, and one is kept if the search found nothing better: a
        // calibrated plan is never worse than the rules on the calibration text.
        let mut rules = vec![CachePlan::retention(
            n_layers,
            target as f64 / n_layers as f64,
        )?];
        for k in 1..=n_layers {
            let every = CachePlan::every_kth(n_layers, k)?;
            if every.cached_layers().len() == target && !rules.contains(&every) {
                rules.push(every);
            }
        }
        let mut best = searched;
        let mut rule_plans = Vec::with_capacity(rules.len());
        for rule in rules {
            let damage = if rule == best.0 {
                best.1
            } else {
                let run = scorer.record(&rule)?;
                scorer.recorded_damage(&run)?
            };
            rule_plans.push(CalibrationLevel {
                plan: rule.clone(),
                damage,
            });
            if better(&(rule.clone(), damage), &best) == Ordering::Less {
                best = (rule, damage);
            }
        }
        let (plan, damage) = best;
        Ok(PlanCalibration {
            plan,
            damage,
            rule_plans,
            full_cache_value,
            measure: self.measure,
            search: self.search,
            single_removal_damage: single,
            levels,
            candidates_evaluated: scorer.candidates,
            blocks_run: scorer.blocks,
            calibration_tokens: scorer.tokens,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The sequences checked, put in canonical order and cut into batches.
    fn chunks<B: Backend>(
        &self,
        model: &RoutedTransformer<B>,
        sequences: &[Vec<u32>],
    ) -> Result<Vec<Chunk>> {
        if self.batch_size == 0 {
            return Err(KvRoutingError::InvalidConfig(
                "the calibration batch size must be at least 1".into(),
            ));
        }
        let Some(first) = sequences.first() else {
            return Err(KvRoutingError::InvalidLengths(
                "calibration needs at least one sequence".into(),
            ));
        };
        let len = first.len();
        if let Some(i) = sequences.iter().position(|s| s.len() != len) {
            return Err(KvRoutingError::InvalidLengths(format!(
                "calibration sequences must be of one length: sequence 0 has {len} tokens, sequence {i} has {}",
                sequences[i].len()
            )));
        }
        if len < 2 || len - 1 > model.max_seq_len() {
            return Err(KvRoutingError::InvalidLengths(format!(
                "calibration sequences of {len} tokens: each needs 2 to {} (inputs within the model's context, plus the next token)",
                model.max_seq_len() + 1
            )));
        }
        model.check_tokens(sequences)?;
        let mut ordered = sequences.to_vec();
        ordered.sort_unstable();
        Ok(ordered
            .chunks(self.batch_size)
            .map(|batch| Chunk {
                inputs: batch.iter().map(|s| s[..len - 1].to_vec()).collect(),
                targets: batch.iter().flat_map(|s| s[1..].iter().copied()).collect(),
            })
            .collect())
    }
}
