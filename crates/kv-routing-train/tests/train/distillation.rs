//! Self-distillation ([`kv_routing_train::distillation`]) and plan-drawn routes in training: the
//! loss's gradient against finite differences on a tiny model, the teacher frozen through a
//! step, zero loss and gradient when the student is the teacher, and a distilled plan-drawn run
//! that resumes bit-exactly with its teacher read back from disk.

use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use burn_autodiff::Autodiff;
use burn_flex::{Flex, FlexDevice};
use burn_ndarray::NdArray;
use burn_train::TrainStep;
use kv_routing::{CachePlan, Route, RouteDraw, RoutedTransformer, RoutedTransformerConfig};
use kv_routing_train::checkpoint::{load_model, save_checkpoint, TrainState};
use kv_routing_train::distillation::{distillation_losses, hidden_state_distances, Distillation};
use kv_routing_train::learner::{RoutedLm, StepBatch};
use kv_routing_train::train_config::TrainConfig;
use kv_routing_train::trainer::{checkpoint_dir, train, RunOptions, Start, TrainSummary};

type F64 = Autodiff<NdArray<f64>>;

fn tiny_model() -> RoutedTransformerConfig {
    RoutedTransformerConfig::new(13, 16, 3, 2, 24)
        .with_n_kv_heads(Some(1))
        .with_max_seq_len(16)
}

fn tokens(rows: usize, len: usize, salt: u32) -> Vec<Vec<u32>> {
    (0..rows)
        .map(|r| {
            (0..len)
                .map(|i| (i as u32 * 7 + r as u32 * 3 + salt) % 13)
                .collect()
        })
        .collect()
}

/// Every float parameter: `(id, values)`.
fn parameters<B: Backend, M: Module<B>>(module: &M) -> Vec<(ParamId, Vec<f64>)> {
    struct Collect(Vec<(ParamId, Vec<f64>)>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let values = param.val().into_data().convert::<f64>();
            self.0.push((param.id, values.iter::<f64>().collect()));
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}

/// The gradient of every float parameter of `module`, flattened, in visiting order.
fn gradients<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &B::Gradients,
) -> Vec<(ParamId, Vec<f64>)> {
    struct Collect<'a, B: AutodiffBackend>(&'a B::Gradients, Vec<(ParamId, Vec<f64>)>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let grad = param.val().grad(self.0).map(|g| {
                let data = g.into_data().convert::<f64>();
                data.iter::<f64>().collect()
            });
            self.1.push((param.id, grad.unwrap_or_default()));
        }
    }
    let mut collect = Collect::<B>(grads, Vec::new());
    module.visit(&mut collect);
    collect.1
}

/// Adds `delta` to entry `index` of the parameter `id`.
struct Nudge {
    id: ParamId,
    index: usize,
    delta: f64,
}

impl<B: Backend> ModuleMapper<B> for Nudge {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = if id == self.id {
            let shape = tensor.shape();
            let device = tensor.device();
            let mut values: Vec<f64> = tensor.into_data().convert::<f64>().to_vec().unwrap();
            values[self.index] += self.delta;
            Tensor::from_data(TensorData::new(values, shape), &device)
        } else {
            tensor
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// The gradient of `loss` in the parameters of `student` (a tiny f64 model) agrees with central
/// finite differences in a few entries of every parameter tensor the loss reads, the largest
/// gradient among them; the tensors that get no gradient are `unread` in number.
fn assert_gradient_matches_finite_differences(
    student: &RoutedTransformer<F64>,
    loss: impl Fn(&RoutedTransformer<F64>) -> Tensor<F64, 1>,
    unread: usize,
) {
    let grads = loss(student).backward();
    let analytic = gradients(student, &grads);
    let mut checked = 0;
    for (id, grad) in &analytic {
        if grad.is_empty() {
            continue;
        }
        let mut entries: Vec<usize> = vec![0, grad.len() / 2, grad.len() - 1];
        let largest = (0..grad.len())
            .max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs()))
            .unwrap();
        entries.push(largest);
        for index in entries {
            let h = 1e-3;
            let at = |delta: f64| -> f64 {
                let nudged = student.clone().map(&mut Nudge {
                    id: *id,
                    index,
                    delta,
                });
                loss(&nudged).into_scalar()
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            // Burn's RmsNorm computes its mean square in f32 even in an f64 model, which bounds
            // the agreement near 1e-4 relative; a wrong gradient (a sign, the T² factor, a
            // missing term) is off by far more. The logits-level check below is exact.
            let tolerance = 1e-5 + 1e-3 * numeric.abs().max(grad[index].abs());
            assert!(
                (numeric - grad[index]).abs() <= tolerance,
                "parameter {id} entry {index}: autodiff {} against finite differences {numeric}",
                grad[index]
            );
            checked += 1;
        }
    }
    let read = analytic.len() - unread;
    assert!(checked >= 4 * read, "checked only {checked} entries");
    let without = analytic.iter().filter(|(_, g)| g.is_empty()).count();
    assert_eq!(without, unread, "parameter tensors without a gradient");
}

/// The distillation loss of a tiny f64 model against a teacher, summed, alone and with the
/// hidden-state term added (weight 3): its autodiff gradient agrees with central finite
/// differences in entries of every kind of parameter, under a route that shares.
#[test]
fn the_distillation_gradient_matches_finite_differences() {
    let device = Default::default();
    let student = tiny_model().init_seeded::<F64>(1, &device).unwrap();
    let teacher = tiny_model()
        .init_seeded::<NdArray<f64>>(2, &device)
        .unwrap();
    let inputs = tokens(2, 6, 1);
    let route = Route::new(vec![0, 0, 1]).unwrap();
    let recorded = teacher
        .forward_recorded(&inputs, &CachePlan::full(3).unwrap().route())
        .unwrap();
    for hidden_weight in [0.0, 3.0] {
        let loss = |model: &RoutedTransformer<F64>| -> Tensor<F64, 1> {
            let pass = model.forward_recorded(&inputs, &route).unwrap();
            let targets = Tensor::from_inner(recorded.logits());
            let kl = distillation_losses(pass.logits(), targets, 2.0).unwrap();
            if hidden_weight == 0.0 {
                return kl.sum();
            }
            let teacher_states: Vec<Tensor<F64, 3>> = recorded.block_inputs()[1..]
                .iter()
                .map(|state| Tensor::from_inner(state.clone()))
                .collect();
            let hidden =
                hidden_state_distances(&pass.block_inputs()[1..], &teacher_states).unwrap();
            kl.add(hidden.mul_scalar(hidden_weight)).sum()
        };
        // Layer 2's key/value projections: no layer reads them under this route.
        assert_gradient_matches_finite_differences(&student, loss, 2);
    }
}

/// The same check on the logits themselves, where everything is f64: agreement to 1e-9.
#[test]
fn the_distillation_gradient_in_the_logits_matches_finite_differences() {
    let device = Default::default();
    let values = |salt: f64| -> Vec<f64> {
        (0..2 * 3 * 5)
            .map(|i| (i as f64 * 0.37 + salt).sin() * 3.0)
            .collect()
    };
    let tensor = |v: Vec<f64>| Tensor::<F64, 3>::from_data(TensorData::new(v, [2, 3, 5]), &device);
    let teacher = values(1.0);
    let student = values(2.0);
    for temperature in [0.5, 1.0, 2.0] {
        let loss = |s: Vec<f64>| -> f64 {
            distillation_losses(tensor(s), tensor(teacher.clone()), temperature)
                .unwrap()
                .sum()
                .into_scalar()
        };
        let logits = tensor(student.clone()).require_grad();
        let grads = distillation_losses(logits.clone(), tensor(teacher.clone()), temperature)
            .unwrap()
            .sum()
            .backward();
        let analytic: Vec<f64> = logits.grad(&grads).unwrap().into_data().to_vec().unwrap();
        for (index, &grad) in analytic.iter().enumerate() {
            let h = 1e-6;
            let mut up = student.clone();
            up[index] += h;
            let mut down = student.clone();
            down[index] -= h;
            let numeric = (loss(up) - loss(down)) / (2.0 * h);
            assert!(
                (numeric - grad).abs() < 1e-8,
                "T = {temperature}, logit {index}: autodiff {grad} against {numeric}"
            );
        }
    }
}

fn step_batch(rows: usize, len: usize, step: u64) -> StepBatch {
    let sequences = tokens(rows, len + 1, step as u32);
    StepBatch {
        step,
        inputs: sequences.iter().map(|s| s[..len].to_vec()).collect(),
        targets: sequences.iter().map(|s| s[1..].to_vec()).collect(),
        targets_per_step: rows * len,
    }
}

fn distilled<B: AutodiffBackend>(
    student: RoutedTransformer<B>,
    teacher: RoutedTransformer<B>,
    p: f64,
) -> RoutedLm<B> {
    let router = kv_routing::StochasticRouter::new(3, p, 0)
        .unwrap()
        .with_draw(RouteDraw::EveryKth { max_k: 2 })
        .unwrap();
    RoutedLm::new(student, router)
        .unwrap()
        .distilled_from(teacher, Distillation::from_teacher("/unused".into()))
        .unwrap()
}

/// A step and an optimizer update change the student and leave the teacher bit-identical;
/// the teacher's parameters require no gradient and get none.
#[test]
fn the_teacher_is_frozen_through_a_step() {
    type B = Autodiff<Flex>;
    let device = FlexDevice;
    let student = tiny_model().init_seeded::<B>(1, &device).unwrap();
    let teacher = tiny_model().init_seeded::<B>(2, &device).unwrap();
    let lm = distilled(student, teacher, 1.0);
    let teacher_before = parameters(lm.teacher().unwrap());
    let student_before = parameters(&lm.transformer);
    let output = TrainStep::step(&lm, step_batch(2, 8, 0));
    let loss: f32 = output.item.loss.clone().into_scalar();
    assert!(
        loss > 1e-3,
        "a teacher other than the student gives a loss, got {loss}"
    );
    let teacher_ids: Vec<ParamId> = teacher_before.iter().map(|(id, _)| *id).collect();
    let grads: GradientsParams = output.grads;
    for id in &teacher_ids {
        assert!(grads.get::<Flex, 2>(*id).is_none() && grads.get::<Flex, 1>(*id).is_none());
    }
    let mut optimizer = SgdConfig::new().init::<B, RoutedLm<B>>();
    let lm = optimizer.step(0.1, lm, grads);
    let teacher = lm.teacher().unwrap();
    assert_eq!(parameters(teacher), teacher_before, "the teacher moved");
    assert_ne!(
        parameters(&lm.transformer),
        student_before,
        "the student did not learn"
    );
    struct RequiresGrad(bool);
    impl<B: Backend> ModuleVisitor<B> for RequiresGrad {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0 |= param.is_require_grad();
        }
    }
    let mut any = RequiresGrad(false);
    teacher.visit(&mut any);
    assert!(!any.0, "a teacher parameter requires a gradient");
}

/// With p = 0 (full routes) and the student equal to the teacher, the distillation loss and
/// its gradient vanish: the full-cache path has nothing to unlearn. (Under a shared route they
/// do not: the same model routed differs from itself.)
#[test]
fn the_teacher_as_student_under_full_routes_has_zero_loss_and_gradient() {
    type B = Autodiff<NdArray<f64>>;
    let device = Default::default();
    let model = tiny_model().init_seeded::<B>(3, &device).unwrap();
    for (p, vanishes) in [(0.0, true), (1.0, false)] {
        let lm = distilled(model.clone(), model.clone(), p);
        let output = TrainStep::step(&lm, step_batch(2, 8, 1));
        let loss: f64 = output.item.loss.into_scalar();
        let norm = grad_norm(&lm, output.grads);
        if vanishes {
            assert!(loss.abs() < 1e-12, "p = 0: loss {loss}");
            assert!(norm < 1e-9, "p = 0: gradient norm {norm}");
        } else {
            assert!(
                loss > 1e-6 && norm > 1e-4,
                "p = 1: loss {loss}, gradient norm {norm}"
            );
        }
    }
}

/// Every float parameter's gradient in `grads` (empty where it has none), in visiting order.
fn step_gradients<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &GradientsParams,
) -> Vec<(ParamId, Vec<f64>)> {
    struct Collect<'a>(&'a GradientsParams, Vec<(ParamId, Vec<f64>)>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let grad = self.0.get::<B::InnerBackend, D>(param.id).map(|g| {
                let data = g.into_data().convert::<f64>();
                data.iter::<f64>().collect()
            });
            self.1.push((param.id, grad.unwrap_or_default()));
        }
    }
    let mut collect = Collect(grads, Vec::new());
    module.visit(&mut collect);
    collect.1
}

fn grad_norm<B: AutodiffBackend>(lm: &RoutedLm<B>, grads: GradientsParams) -> f64 {
    struct Norm<'a>(&'a GradientsParams, f64);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Norm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.0.get::<B::InnerBackend, D>(param.id) {
                let g: f64 = g.powi_scalar(2).sum().into_scalar().elem();
                self.1 += g;
            }
        }
    }
    use burn::tensor::ElementConversion;
    let mut norm = Norm(&grads, 0.0);
    lm.transformer.visit(&mut norm);
    norm.1.sqrt()
}

fn tiny_run(steps: u64, teacher: Option<&Path>) -> TrainConfig {
    let mut config = TrainConfig::small(3, 32, 16);
    config.model = RoutedTransformerConfig::new(256, 32, 3, 2, 64)
        .with_n_kv_heads(Some(1))
        .with_max_seq_len(32);
    config.steps = steps;
    config.batch_size = 4;
    config.learning_rate = 1e-2;
    config.warmup_steps = 1;
    config.eval_every = 0;
    config.eval_batches = 1;
    config.checkpoint_every = 0;
    if let Some(teacher) = teacher {
        config.p = 0.75;
        config.route_draw = RouteDraw::RandomPlans { min_retention: 0.3 };
        config.distill = Some(Distillation {
            temperature: 2.0,
            ce_weight: 0.25,
            ..Distillation::from_teacher(checkpoint_dir(teacher))
        });
    }
    config
}

fn run(config: TrainConfig, start: Start, out: &Path, stop_at: Option<u64>) -> TrainSummary {
    let options = RunOptions {
        show_progress: false,
        stop_at,
        ..Default::default()
    };
    train::<Autodiff<Flex>>(config, start, out, options, &FlexDevice).unwrap()
}

/// A distilled run with plan-drawn routes, fine-tuned from a checkpoint: stopped and resumed
/// (its teacher read again from disk, its draw from its config) it ends bit-identical to the
/// uninterrupted run; its config keeps both settings.
#[test]
fn a_distilled_plan_drawn_run_resumes_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = dir.path().join("teacher");
    run(tiny_run(3, None), Start::Fresh, &teacher, None);
    let start = || Start::InitFrom(checkpoint_dir(&teacher));
    let whole = dir.path().join("whole");
    let whole_summary = run(tiny_run(4, Some(&teacher)), start(), &whole, None);
    assert_eq!(whole_summary.config.route_draw.to_string(), "plans:0.3");
    let cut = dir.path().join("cut");
    run(tiny_run(4, Some(&teacher)), start(), &cut, Some(2));
    let resumed = run(
        tiny_run(4, None),
        Start::Resume { extend_to: None },
        &cut,
        None,
    );
    assert_eq!(resumed.config, whole_summary.config);
    let note = std::fs::read_to_string(cut.join("RESUME.md")).unwrap();
    let out = std::path::absolute(&cut).unwrap();
    assert!(
        note.contains(&format!(
            "kv-routing train --resume --out {}",
            out.display()
        )) && note.contains("plans:0.3")
            && note.contains("the teacher must still be there"),
        "{note}"
    );
    let (_, a) = load_model::<Flex>(&checkpoint_dir(&whole), &FlexDevice).unwrap();
    let (_, b) = load_model::<Flex>(&checkpoint_dir(&cut), &FlexDevice).unwrap();
    assert_eq!(parameters(&a), parameters(&b), "the resumed run differs");
    let (_, teacher_model) = load_model::<Flex>(&checkpoint_dir(&teacher), &FlexDevice).unwrap();
    assert_ne!(
        parameters(&a),
        parameters(&teacher_model),
        "the run did not train"
    );
}

/// A tiny f64 model that records gradients.
type Tiny = RoutedTransformer<Autodiff<NdArray<f64>>>;

/// A tiny f64 student and teacher (seeds 4 and 5), a batch of 2 x 8 tokens at step 3, and the
/// full plan's route.
fn step_fixture() -> (Tiny, Tiny, StepBatch, Route) {
    let device = Default::default();
    (
        tiny_model().init_seeded(4, &device).unwrap(),
        tiny_model().init_seeded(5, &device).unwrap(),
        step_batch(2, 8, 3),
        CachePlan::full(3).unwrap().route(),
    )
}

/// The route that a router sharing with probability `p` (every:2 plan draws, seed 0) gives
/// `batch`'s step, and the loss of that training step of `student` distilled from `teacher`
/// with `settings`.
fn distilled_step_loss(
    student: &Tiny,
    teacher: &Tiny,
    batch: &StepBatch,
    p: f64,
    settings: Distillation,
) -> (Route, f64) {
    let router = kv_routing::StochasticRouter::new(3, p, 0)
        .unwrap()
        .with_draw(RouteDraw::EveryKth { max_k: 2 })
        .unwrap();
    let route = router.route_for_step(batch.step);
    let lm = RoutedLm::new(student.clone(), router)
        .unwrap()
        .distilled_from(teacher.clone(), settings)
        .unwrap();
    let loss = TrainStep::step(&lm, batch.clone()).item.loss.into_scalar();
    (route, loss)
}

/// With a full-plan weight `a`, a sharing step's loss is the distillation of its own route plus
/// `a` times that of the student's full-cache pass (computed here from the two passes); a step
/// that draws the full plan is unchanged.
#[test]
fn the_full_plan_weight_adds_the_full_cache_distillation_on_sharing_steps() {
    let (student, teacher, batch, full) = step_fixture();
    let mean_kl = |route: &Route| -> f64 {
        let student_logits = student.forward_tokens(&batch.inputs, route).unwrap();
        let teacher_logits = teacher.forward_tokens(&batch.inputs, &full).unwrap();
        distillation_losses(student_logits, teacher_logits, 2.0)
            .unwrap()
            .mean()
            .into_scalar()
    };
    for (p, weight) in [(1.0, 0.0), (1.0, 0.5), (0.0, 0.5)] {
        let settings = Distillation {
            full_plan_weight: weight,
            ..Distillation::from_teacher("/unused".into())
        };
        let (route, loss) = distilled_step_loss(&student, &teacher, &batch, p, settings);
        assert_eq!(route == full, p == 0.0);
        let anchor = if route == full {
            0.0
        } else {
            weight * mean_kl(&full)
        };
        let expected = mean_kl(&route) + anchor;
        assert!(
            (loss - expected).abs() < 1e-10 * expected.abs().max(1.0),
            "p = {p}, weight = {weight}: {loss} against {expected}"
        );
    }
    let invalid = Distillation {
        full_plan_weight: -1.0,
        ..Distillation::from_teacher("/unused".into())
    };
    assert!(invalid.validate().is_err());
}

/// With a position focus `γ`, a sharing step's loss is `mean(l^(γ+1)) / mean(l^γ)` for the
/// per-position KL `l` of its route (computed here from the two passes): each position weighted
/// by `l_i^γ / mean(l^γ)`. `γ = 0` and a step that draws the full plan are the plain mean. The
/// weights are constants of the step: its gradient is that of `mean(w l)` with `w` computed
/// here and fixed, not that of the ratio.
#[test]
fn the_position_focus_leans_the_loss_towards_its_largest_positions() {
    let (student, teacher, batch, full) = step_fixture();
    let kl = |model: &Tiny, route: &Route| {
        let logits = model.forward_tokens(&batch.inputs, route).unwrap();
        let teacher_logits = teacher.forward_tokens(&batch.inputs, &full).unwrap();
        distillation_losses(logits, teacher_logits, 2.0).unwrap()
    };
    for (p, focus) in [(1.0, 0.0), (1.0, 1.0), (1.0, 2.5), (0.0, 1.0)] {
        let settings = Distillation {
            position_focus: focus,
            ..Distillation::from_teacher("/unused".into())
        };
        let (route, loss) = distilled_step_loss(&student, &teacher, &batch, p, settings.clone());
        assert_eq!(route == full, p == 0.0);
        let l: Vec<f64> = kl(&student, &route).into_data().iter::<f64>().collect();
        let mean =
            |power: f64| l.iter().map(|x| x.max(0.0).powf(power)).sum::<f64>() / l.len() as f64;
        let expected = if route == full || focus == 0.0 {
            l.iter().sum::<f64>() / l.len() as f64
        } else {
            mean(focus + 1.0) / mean(focus)
        };
        assert!(
            (loss - expected).abs() < 1e-10 * expected.abs().max(1.0),
            "p = {p}, focus = {focus}: {loss} against {expected}"
        );
        if route == full || focus == 0.0 {
            continue;
        }
        assert!(
            (loss - l.iter().sum::<f64>() / l.len() as f64).abs() > 1e-6,
            "the focus changes the loss"
        );
        // The gradient: the step's against `mean(w l)` with the weights fixed.
        let router = kv_routing::StochasticRouter::new(3, p, 0)
            .unwrap()
            .with_draw(RouteDraw::EveryKth { max_k: 2 })
            .unwrap();
        let lm = RoutedLm::new(student.clone(), router)
            .unwrap()
            .distilled_from(teacher.clone(), settings)
            .unwrap();
        let step_grads = TrainStep::step(&lm, batch.clone()).grads;
        let weights: Vec<f64> = l
            .iter()
            .map(|x| x.max(0.0).powf(focus) / mean(focus))
            .collect();
        let [rows, seq_len] = [batch.inputs.len(), batch.inputs[0].len()];
        let fixed = Tensor::<Autodiff<NdArray<f64>>, 2>::from_data(
            TensorData::new(weights, [rows, seq_len]),
            &Default::default(),
        );
        let manual = kl(&student, &route).mul(fixed).mean().backward();
        let manual = GradientsParams::from_grads(manual, &student);
        let (got, want) = (
            step_gradients(&student, &step_grads),
            step_gradients(&student, &manual),
        );
        assert!(got.iter().any(|(_, g)| g.iter().any(|&x| x != 0.0)));
        for ((id, got), (_, want)) in got.iter().zip(&want) {
            assert_eq!(got.len(), want.len(), "{id:?}");
            for (a, b) in got.iter().zip(want) {
                assert!(
                    (a - b).abs() < 1e-9 * b.abs().max(1e-3),
                    "{id:?}: {a} against {b}"
                );
            }
        }
    }
    for invalid in [-1.0, 4.5, f64::NAN] {
        let settings = Distillation {
            position_focus: invalid,
            ..Distillation::from_teacher("/unused".into())
        };
        assert!(settings.validate().is_err(), "{invalid}");
    }
}

/// With a hidden-state weight `h`, a sharing step's loss is its distillation plus `h` times the
/// mean hidden-state distance of its pass to the teacher's full-cache pass (computed here from
/// the two recorded passes); a step that draws the full plan is unchanged.
#[test]
fn the_hidden_weight_adds_the_hidden_state_distances_on_sharing_steps() {
    let (student, teacher, batch, full) = step_fixture();
    let terms = |route: &Route| -> (f64, f64) {
        let pass = student.forward_recorded(&batch.inputs, route).unwrap();
        let reference = teacher.forward_recorded(&batch.inputs, &full).unwrap();
        let kl = distillation_losses(pass.logits(), reference.logits(), 2.0)
            .unwrap()
            .mean()
            .into_scalar();
        let hidden =
            hidden_state_distances(&pass.block_inputs()[1..], &reference.block_inputs()[1..])
                .unwrap()
                .mean()
                .into_scalar();
        (kl, hidden)
    };
    for (p, weight) in [(1.0, 0.0), (1.0, 2.5), (0.0, 2.5)] {
        let settings = Distillation {
            hidden_weight: weight,
            ..Distillation::from_teacher("/unused".into())
        };
        let (route, loss) = distilled_step_loss(&student, &teacher, &batch, p, settings);
        assert_eq!(route == full, p == 0.0);
        let (kl, hidden) = terms(&route);
        let expected = if route == full {
            kl
        } else {
            assert!(hidden > 1e-3, "the shared pass's states differ: {hidden}");
            kl + weight * hidden
        };
        assert!(
            (loss - expected).abs() < 1e-10 * expected.abs().max(1.0),
            "p = {p}, weight = {weight}: {loss} against {expected}"
        );
    }
}

/// A run that trains sharing adapters (fine-tuned from a checkpoint, distilled from it, every
/// step sharing): the base weights are bit-identical to the starting model's, so its full-plan
/// logits are too, while its every:2 logits moved; stopped and resumed it ends bit-identical to
/// the uninterrupted run; its config keeps the adapters and asking a model that has them for
/// others is an error.
#[test]
fn a_sharing_adapter_run_trains_only_the_adapters_and_resumes_bit_exactly() {
    use kv_routing::SharingAdapterConfig;
    let dir = tempfile::tempdir().unwrap();
    let teacher = dir.path().join("teacher");
    run(tiny_run(3, None), Start::Fresh, &teacher, None);
    let adapter = SharingAdapterConfig::new(4).with_alpha(Some(8.0));
    let config = || {
        let mut config = tiny_run(4, Some(&teacher));
        config.p = 1.0;
        config.route_draw = RouteDraw::EveryKth { max_k: 2 };
        config.model.sharing_adapter = Some(adapter.clone());
        config
    };
    let start = || Start::InitFrom(checkpoint_dir(&teacher));
    let whole = dir.path().join("whole");
    let summary = run(config(), start(), &whole, None);
    assert_eq!(summary.config.model.sharing_adapter, Some(adapter.clone()));
    let cut = dir.path().join("cut");
    run(config(), start(), &cut, Some(2));
    run(
        tiny_run(4, None),
        Start::Resume { extend_to: None },
        &cut,
        None,
    );
    let (_, trained) = load_model::<Flex>(&checkpoint_dir(&whole), &FlexDevice).unwrap();
    let (_, resumed) = load_model::<Flex>(&checkpoint_dir(&cut), &FlexDevice).unwrap();
    // Values only: each run draws its adapters' parameter ids afresh.
    let values = |model: &RoutedTransformer<Flex>| -> Vec<Vec<f64>> {
        parameters(model).into_iter().map(|(_, v)| v).collect()
    };
    assert_eq!(
        values(&trained),
        values(&resumed),
        "the resumed run differs"
    );
    let (_, starting) = load_model::<Flex>(&checkpoint_dir(&teacher), &FlexDevice).unwrap();
    assert_eq!(trained.sharing_adapter_rank(), Some(4));
    let mut base = trained.clone();
    for block in &mut base.blocks {
        for projection in block.projections_mut() {
            assert!(projection.sharing.take().is_some());
        }
    }
    assert_eq!(values(&base), values(&starting), "a base weight changed");
    let batch = tokens(2, 12, 1);
    let logits = |model: &RoutedTransformer<Flex>, route: &Route| -> Vec<f32> {
        model
            .forward_tokens(&batch, route)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap()
    };
    let full = CachePlan::full(3).unwrap().route();
    let every2 = CachePlan::every_kth(3, 2).unwrap().route();
    assert_eq!(logits(&trained, &full), logits(&starting, &full));
    assert_ne!(logits(&trained, &every2), logits(&starting, &every2));

    // A merged model cannot become a checkpoint: nothing in its record would say that its
    // weights serve only the sharing plans.
    let merged = load_model::<Autodiff<Flex>>(&checkpoint_dir(&whole), &FlexDevice)
        .unwrap()
        .1
        .with_sharing_adapters_merged()
        .unwrap();
    let state = TrainState {
        step: 4,
        router: kv_routing::StochasticRouter::new(3, 1.0, 0).unwrap(),
        elapsed_seconds: 0.0,
    };
    let optimizer = burn::optim::AdamWConfig::new()
        .init::<Autodiff<Flex>, RoutedTransformer<Autodiff<Flex>>>()
        .to_record();
    let refused = dir.path().join("merged");
    let error = save_checkpoint(&refused, &config(), &state, &merged, optimizer).unwrap_err();
    assert!(error.to_string().contains("merged"), "{error}");
    assert!(!refused.exists(), "a refused checkpoint left a directory");

    let mut other = config();
    other.model.sharing_adapter = Some(SharingAdapterConfig::new(2));
    let options = RunOptions::default();
    let again = dir.path().join("again");
    assert!(train::<Autodiff<Flex>>(
        other,
        Start::InitFrom(checkpoint_dir(&whole)),
        &again,
        options,
        &FlexDevice
    )
    .is_err());
}
