//! Training on `burn-train`'s engine ([`kv_routing_train::learner`]): Burn's `Learner` trains a
//! routed model on one device, on two devices (two instances of the flex CPU device: Burn's
//! multi-device strategy runs one worker thread per device), and with accumulated
//! micro-batches, with the semantics of the plain reference loop
//! ([`kv_routing_train::reference_loop`]); so does a whole run (`trainer::train_on`).

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset as _;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_autodiff::Autodiff;
use burn_flex::{Flex, FlexDevice};
use burn_train::TrainStep;
use kv_routing::{RoutedTransformer, SharingAdapterConfig, StochasticRouter};
use kv_routing_train::checkpoint::load_model;
use kv_routing_train::data::{Dataset, Split};
use kv_routing_train::learner::{
    LearnerSetup, RoutedLm, RoutedLmTraining, SilentRenderer, StepBatch, StepBatcher, StepDataset,
    StepLayout,
};
use kv_routing_train::reference_loop::reference_loop;
use kv_routing_train::train_config::TrainConfig;
use kv_routing_train::trainer::{checkpoint_dir, train_on, RunOptions, Start};
use kv_routing_train::TrainError;

type B = Autodiff<Flex>;

/// A route seed whose first `steps` routes all share at least one layer's KV, so that every
/// step of the tests below trains under routing.
fn routing_seed(config: &TrainConfig, steps: u64) -> u64 {
    (0..)
        .find(|&seed| {
            let router = StochasticRouter::new(config.model.n_layers, config.p, seed).unwrap();
            (0..steps).all(|step| {
                let route = router.route_for_step(step);
                (0..route.n_layers()).any(|layer| route.source_of(layer) != layer)
            })
        })
        .unwrap()
}

/// Three steps of a 3-layer model, routed every step, clipping active (the byte-level
/// synthetic corpus gives gradient norms far above 0.05).
fn tiny_run() -> TrainConfig {
    let mut config = TrainConfig::small(3, 32, 16);
    config.batch_size = 4;
    config.steps = 3;
    config.warmup_steps = 1;
    config.p = 0.7;
    config.grad_clip = 0.05;
    config.eval_every = 0;
    config.eval_batches = 1;
    config.checkpoint_every = 0;
    config.route_seed = routing_seed(&config, config.steps);
    config
}

/// Every float parameter, flattened in visiting order.
fn parameters<B: Backend, M: Module<B>>(module: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let values = param.val().into_data().convert::<f32>();
            self.0.extend(values.iter::<f32>());
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn model(config: &TrainConfig) -> RoutedTransformer<B> {
    config
        .model
        .init_seeded::<B>(config.init_seed, &FlexDevice)
        .unwrap()
}

/// The micro-batches of step 0 under `layout`, as Burn's split loaders deliver them (device
/// `d` reads the `d`-th share of the items).
fn step_zero_batches(config: &TrainConfig, layout: StepLayout) -> Vec<StepBatch> {
    let data = Arc::new(Dataset::open(&config.data, config.seq_len).unwrap());
    let dataset = StepDataset::new(data, Split::Train, 0, 1, layout).unwrap();
    let items: Vec<_> = (0..dataset.len())
        .map(|i| dataset.get(i).unwrap())
        .collect();
    items
        .chunks(layout.batch_per_device)
        .map(|chunk| Batcher::<B, _, _>::batch(&StepBatcher, chunk.to_vec(), &FlexDevice))
        .collect()
}

/// The weights after one SGD step of rate 1 from the summed gradients of `batches`: they
/// differ from the initial weights by exactly the gradient.
fn after_summed_gradients(lm: &RoutedLm<B>, batches: Vec<StepBatch>) -> Vec<f32> {
    let mut summed = burn::optim::GradientsAccumulator::new();
    for batch in batches {
        summed.accumulate::<B>(lm, TrainStep::step(lm, batch).grads);
    }
    let grads: GradientsParams = summed.grads();
    let mut sgd = SgdConfig::new().init::<B, RoutedLm<B>>();
    parameters(&sgd.step(1.0, lm.clone(), grads))
}

#[test]
fn gradients_of_two_devices_sum_to_those_of_one_device_with_twice_the_batch() {
    let config = tiny_run();
    let router = StochasticRouter::new(config.model.n_layers, config.p, config.route_seed).unwrap();
    let lm = RoutedLm::new(model(&config), router).unwrap();

    let one_device = step_zero_batches(&config, StepLayout::split(4, 1, 1).unwrap());
    let two_devices = step_zero_batches(&config, StepLayout::split(4, 2, 1).unwrap());
    let accumulated = step_zero_batches(&config, StepLayout::split(4, 2, 2).unwrap());
    assert_eq!(
        (one_device.len(), two_devices.len(), accumulated.len()),
        (1, 2, 4)
    );
    assert!(two_devices
        .iter()
        .all(|b| b.step == 0 && b.inputs.len() == 2));

    let reference = after_summed_gradients(&lm, one_device);
    let initial = parameters(&lm);
    let gradient_scale = max_difference(&reference, &initial);
    assert!(gradient_scale > 1e-3, "the step moved nothing");
    for (name, batches) in [
        ("2 devices", two_devices.clone()),
        ("2 x 2 micro-batches", accumulated),
    ] {
        let difference = max_difference(&after_summed_gradients(&lm, batches), &reference);
        assert!(
            difference < 1e-5 * gradient_scale.max(1.0),
            "{name}: gradients differ by {difference}"
        );
    }

    // The check can fail: a device that drew its own route (the next step's) sums to other
    // gradients.
    let mut wrong_route = two_devices;
    wrong_route[1].step = 1;
    let difference = max_difference(&after_summed_gradients(&lm, wrong_route), &reference);
    assert!(
        difference > 1e-4,
        "a second route went unnoticed ({difference})"
    );
}

/// Runs `config` on Burn's `Learner` on `devices` flex devices with `accumulation`.
fn learner_run(config: &TrainConfig, devices: usize, accumulation: usize) -> Vec<f32> {
    let directory = tempfile::tempdir().unwrap();
    let setup = LearnerSetup::new(vec![FlexDevice; devices]).with_accumulation(accumulation);
    let mut run = RoutedLmTraining::new(config, model(config), setup, directory.path()).unwrap();
    run.training = run.training.renderer(SilentRenderer);
    parameters(&run.launch())
}

#[test]
fn the_learner_trains_alike_on_one_device_two_devices_and_accumulated_micro_batches() {
    let config = tiny_run();
    let initial = parameters(&model(&config));
    let one = learner_run(&config, 1, 1);
    assert!(
        max_difference(&one, &initial) > 1e-3,
        "training moved nothing"
    );
    for (devices, accumulation) in [(2, 1), (1, 2), (2, 2)] {
        let difference = max_difference(&learner_run(&config, devices, accumulation), &one);
        assert!(
            difference < 1e-5,
            "{devices} devices x {accumulation} micro-batches: weights differ by {difference}"
        );
    }
}

#[test]
fn the_learner_and_a_whole_run_train_as_the_reference_loop_does() {
    let config = tiny_run();
    let reference = parameters(&reference_loop(&config, model(&config)).unwrap());
    let learned = learner_run(&config, 1, 1);
    let difference = max_difference(&learned, &reference);
    assert!(difference < 1e-5, "Learner and loop differ by {difference}");
    for devices in [1, 2] {
        let out = tempfile::tempdir().unwrap();
        let summary = train_on::<B>(
            config.clone(),
            Start::Fresh,
            out.path(),
            RunOptions::default(),
            &vec![FlexDevice; devices],
        )
        .unwrap();
        assert_eq!(summary.steps_run, 3);
        let (_, run) = load_model::<Flex>(&checkpoint_dir(out.path()), &FlexDevice).unwrap();
        let difference = max_difference(&parameters(&run), &reference);
        assert!(
            difference < 1e-5,
            "a run on {devices} device(s) and the loop differ by {difference}"
        );
    }
    // The check can fail: another route seed trains other weights.
    let other = TrainConfig {
        route_seed: config.route_seed + 1,
        ..config
    };
    assert!(max_difference(&learner_run(&other, 1, 1), &learned) > 1e-5);
}

/// LoRA+ through a whole run: the sharing adapters' `up` matrices at 16x the rate train the
/// weights the reference loop trains with the same ratio, and other weights than a run
/// without it.
#[test]
fn a_run_steps_the_adapters_up_matrices_at_their_ratio_as_the_loop_does() {
    let mut config = tiny_run();
    config.model.sharing_adapter = Some(SharingAdapterConfig::new(4));
    config.adapter_up_lr_ratio = Some(16.0);
    let start = |config: &TrainConfig| {
        model(config)
            .with_only_sharing_adapters_trainable()
            .unwrap()
    };
    let reference = parameters(&reference_loop(&config, start(&config)).unwrap());
    let out = tempfile::tempdir().unwrap();
    train_on::<B>(
        config.clone(),
        Start::Fresh,
        out.path(),
        RunOptions::default(),
        &[FlexDevice],
    )
    .unwrap();
    let (_, run) = load_model::<Flex>(&checkpoint_dir(out.path()), &FlexDevice).unwrap();
    let difference = max_difference(&parameters(&run), &reference);
    assert!(
        difference < 1e-5,
        "the run and the loop differ by {difference}"
    );
    let one_rate = TrainConfig {
        adapter_up_lr_ratio: None,
        ..config
    };
    let without = parameters(&reference_loop(&one_rate, start(&one_rate)).unwrap());
    assert!(max_difference(&without, &reference) > 1e-4);
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|entry| {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files_under(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

/// A Burn user's own assembly: the routed model, data and batcher of this crate with Burn's
/// AdamW and per-tensor clipping, Burn's cosine scheduler, Burn's file checkpointer and metric
/// logger; three epochs straight, and two then a third resumed from Burn's checkpoint of the
/// second, which end alike.
#[test]
fn burn_users_assemble_their_own_learner_from_the_parts() {
    use burn::grad_clipping::GradientClippingConfig;
    use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
    use burn::optim::AdamWConfig;
    use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
    use burn_train::metric::LossMetric;
    use burn_train::{Learner, SupervisedTraining};

    let config = tiny_run();
    let (straight_dir, split_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = Arc::new(Dataset::open(&config.data, config.seq_len).unwrap());
    let layout = StepLayout::split(4, 1, 1).unwrap();
    let training = |directory: &std::path::Path, epochs: usize, resume: Option<usize>| {
        let train = StepDataset::new(data.clone(), Split::Train, 0, 2, layout).unwrap();
        let valid = StepDataset::new(data.clone(), Split::Validation, 0, 1, layout).unwrap();
        let mut training = SupervisedTraining::new(
            directory,
            burn::data::dataloader::DataLoaderBuilder::<B, _, _>::new(StepBatcher)
                .batch_size(4)
                .build(train),
            burn::data::dataloader::DataLoaderBuilder::<Flex, _, _>::new(StepBatcher)
                .batch_size(4)
                .build(valid),
        )
        .metric_train_numeric(LossMetric::<Flex>::new())
        .metric_valid_numeric(LossMetric::<Flex>::new())
        .with_file_checkpointer(NamedMpkFileRecorder::<FullPrecisionSettings>::new())
        .with_application_logger(None)
        .renderer(SilentRenderer)
        .num_epochs(epochs);
        if let Some(epoch) = resume {
            training = training.checkpoint(epoch);
        }
        training
    };
    let learner = || {
        let router =
            StochasticRouter::new(config.model.n_layers, config.p, config.route_seed).unwrap();
        Learner::new(
            RoutedLm::new(model(&config), router).unwrap(),
            AdamWConfig::new()
                .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
                .init::<B, RoutedLm<B>>(),
            CosineAnnealingLrSchedulerConfig::new(1e-3, 10)
                .init()
                .unwrap(),
        )
    };
    let initial = parameters(&model(&config));
    let straight = training(straight_dir.path(), 3, None)
        .launch(learner())
        .model;
    assert!(max_difference(&parameters(&straight), &initial) > 1e-4);

    let two_epochs = training(split_dir.path(), 2, None).launch(learner()).model;
    let files = files_under(split_dir.path());
    let named = |name: &str| files.iter().any(|f| f.file_name().unwrap() == name);
    assert!(named("model-2.mpk") && named("optim-2.mpk"), "{files:?}");
    assert!(
        named("Loss.log"),
        "Burn's metric logger wrote nothing: {files:?}"
    );
    // Resumed from Burn's checkpoint of epoch 2 (the fresh learner's state is replaced).
    let resumed = training(split_dir.path(), 3, Some(2))
        .launch(learner())
        .model;
    assert!(max_difference(&parameters(&resumed), &parameters(&two_epochs)) > 1e-6);
    let difference = max_difference(&parameters(&resumed), &parameters(&straight));
    assert!(
        difference < 1e-6,
        "resumed and straight differ by {difference}"
    );
}

#[test]
fn tokens_outside_the_vocabulary_are_refused_before_any_step() {
    // A word-level tokenizer whose "b" is id 300, past the byte model's vocabulary.
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = dir.path().join("tokenizer.json");
    std::fs::write(
        &tokenizer,
        r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,
            "decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0,"a":1,"b":300},
            "unk_token":"[UNK]"}}"#,
    )
    .unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "a b ".repeat(400)).unwrap();
    let config = TrainConfig {
        data: kv_routing_train::data::DataSource::TextFile {
            path: text,
            seed: 0,
            tokenizer: Some(tokenizer),
        },
        ..tiny_run()
    };
    let out = dir.path().join("run");
    let error = train_on::<B>(
        config,
        Start::Fresh,
        &out,
        RunOptions::default(),
        &[FlexDevice],
    )
    .unwrap_err();
    assert!(
        matches!(&error, TrainError::Data(m) if m.contains("token id 300")),
        "{error}"
    );
}

#[test]
fn layouts_and_models_that_do_not_fit_are_refused() {
    let config = tiny_run();
    let directory = tempfile::tempdir().unwrap();
    let uneven = RoutedLmTraining::new(
        &config,
        model(&config),
        LearnerSetup::new(vec![FlexDevice; 3]),
        directory.path(),
    );
    assert!(matches!(uneven, Err(TrainError::Config(m)) if m.contains("does not split evenly")));
    let none = RoutedLmTraining::new(
        &config,
        model(&config),
        LearnerSetup::new(vec![]),
        directory.path(),
    );
    assert!(matches!(none, Err(TrainError::Config(_))));
    let deeper = TrainConfig::small(4, 32, 16);
    let mismatched = RoutedLmTraining::new(
        &config,
        model(&deeper),
        LearnerSetup::new(vec![FlexDevice]),
        directory.path(),
    );
    assert!(matches!(mismatched, Err(TrainError::Config(m)) if m.contains("layers")));
}

/// Why the optimizer clips the global norm (docs/training.md): on the first step of the tiny
/// run, Burn's `GradientClipping::Norm` (each tensor clipped to the norm on its own) turns the
/// gradient, global-norm clipping only scales it.
#[test]
fn per_tensor_clipping_turns_the_update_global_clipping_keeps_it() {
    use burn::grad_clipping::GradientClippingConfig;

    struct Clipped<'a> {
        grads: &'a GradientsParams,
        clipping: burn::grad_clipping::GradientClipping,
        raw: Vec<f32>,
        per_tensor: Vec<f32>,
    }
    impl ModuleVisitor<B> for Clipped<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = self.grads.get::<Flex, D>(param.id) {
                let clipped = self.clipping.clip_gradient(grad.clone());
                self.raw.extend(grad.into_data().iter::<f32>());
                self.per_tensor.extend(clipped.into_data().iter::<f32>());
            }
        }
    }
    let cosine = |a: &[f32], b: &[f32]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        dot / (norm(a) * norm(b))
    };

    let config = tiny_run();
    let router = StochasticRouter::new(config.model.n_layers, config.p, config.route_seed).unwrap();
    let lm = RoutedLm::new(model(&config), router).unwrap();
    let batch = step_zero_batches(&config, StepLayout::split(4, 1, 1).unwrap()).remove(0);
    let grads = TrainStep::step(&lm, batch).grads;
    let (raw, per_tensor) = {
        let mut visitor = Clipped {
            grads: &grads,
            clipping: GradientClippingConfig::Norm(config.grad_clip as f32).init(),
            raw: Vec::new(),
            per_tensor: Vec::new(),
        };
        lm.visit(&mut visitor);
        (visitor.raw, visitor.per_tensor)
    };
    let mut global = grads;
    kv_routing_train::grad_clip::clip_global_norm(&lm, &mut global, config.grad_clip);
    let global: Vec<f32> = {
        let mut visitor = Clipped {
            grads: &global,
            clipping: GradientClippingConfig::Value(f32::MAX).init(),
            raw: Vec::new(),
            per_tensor: Vec::new(),
        };
        lm.visit(&mut visitor);
        visitor.raw
    };
    let kept = cosine(&raw, &global);
    let turned = cosine(&raw, &per_tensor);
    println!("cosine to the raw gradient: global {kept:.6}, per tensor {turned:.6}");
    assert!(
        kept > 0.999_999,
        "global clipping turned the gradient ({kept})"
    );
    assert!(
        turned < 0.99,
        "per-tensor clipping kept the direction ({turned})"
    );
}
