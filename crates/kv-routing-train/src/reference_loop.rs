//! [`reference_loop`]: the training semantics of [`crate::trainer`] written as a plain loop,
//! without Burn's `Learner`: the independent reference that the `Learner` path is tested
//! against (`tests/train/learner.rs`) and benchmarked against
//! (`benches/examples/learner_probe.rs`).
//!
//! Step `s` reads samples `s * batch_size ..` of the training split, runs under
//! `router.route_for_step(s)`, takes the gradient of the mean next-token loss, clips it to a
//! global norm of `grad_clip`, and steps AdamW at `schedule.at(s)` (the sharing adapters' `up`
//! matrices at `adapter_up_lr_ratio` times that, when set). Like the run, it reads the
//! step's loss back every step (a run checks it for divergence); nothing else is logged, saved
//! or validated.

use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use kv_routing::RoutedTransformer;

use crate::adapter_up_rate::AdapterUpRate;
use crate::data::{Dataset, Split};
use crate::error::{Result, TrainError};
use crate::grad_clip::clip_global_norm;
use crate::loss::mean_loss;
use crate::train_config::TrainConfig;

/// Trains `model` for `config.steps` steps as described in the module docs.
pub fn reference_loop<B: AutodiffBackend>(
    config: &TrainConfig,
    mut model: RoutedTransformer<B>,
) -> Result<RoutedTransformer<B>> {
    config.validate()?;
    if config.distill.is_some() {
        return Err(TrainError::Config(
            "the reference loop trains with cross-entropy only, not distillation".into(),
        ));
    }
    let dataset = Dataset::open(&config.data, config.seq_len)?;
    let router = config.router()?;
    let schedule = config.schedule();
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .init::<B, RoutedTransformer<B>>();
    let up_rate = config
        .adapter_up_lr_ratio
        .map(|ratio| AdapterUpRate::new(ratio, &model))
        .transpose()?;
    for step in 0..config.steps {
        let batch = dataset.batch(
            Split::Train,
            step * config.batch_size as u64,
            config.batch_size,
        );
        let route = router.route_for_step(step);
        let loss = mean_loss(model.forward_tokens(&batch.inputs, &route)?, &batch.targets)?;
        let loss_value = loss.clone().inner();
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        clip_global_norm(&model, &mut grads, config.grad_clip);
        model = match &up_rate {
            Some(up_rate) => up_rate.step(&mut optimizer, schedule.at(step), model, grads),
            None => optimizer.step(schedule.at(step), model, grads),
        };
        let loss = loss_value.into_data().convert::<f64>().to_vec::<f64>();
        let loss = loss.map_or(f64::NAN, |values| values[0]);
        if !loss.is_finite() {
            return Err(TrainError::Config(format!(
                "the reference loop diverged at step {step}"
            )));
        }
    }
    Ok(model)
}
