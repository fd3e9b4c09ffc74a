//! Loading Hugging Face checkpoints of every supported family, written in the test itself, and
//! checking logits against an independent f64 reference; export round trips; clear errors.

use crate::support;

use std::path::Path;

use kv_routing::{CachePlan, GenerationConfig, Sampler};
use kv_routing_hf::{
    load_pretrained, save_pretrained, ExportDtype, ExportOptions, HfConfig, HfError, LoadOptions,
    RoutingMetadata, SafetensorsFiles,
};
use safetensors::tensor::Dtype;
use serde_json::json;
use support::checkpoint_builder::{write_tensors, Spec, Tensors};
use support::comparison::{assert_close, host_logits, routes, sources, tokens};
use support::hf_reference::HfReference;

type F64 = burn_ndarray::NdArray<f64>;

/// Agreement required on the f64 backend. Burn's `RmsNorm` takes the mean square in f32 even on
/// f64 tensors (about 2e-8 relative per norm), which grows to about 2e-6 at the logits of these
/// 4-layer models; a mapping or rotation mistake is off by O(1).
const F64_TOLERANCE: f64 = 2e-5;
type Flex = burn_flex::Flex;

fn families() -> Vec<(&'static str, Spec, usize)> {
    let llama3 = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16});
    vec![
        (
            "llama GQA, llama3 rope, bf16, 3 shards",
            Spec {
                rope_scaling: llama3,
                dtype: Dtype::BF16,
                ..Spec::llama()
            },
            3,
        ),
        (
            "llama with attention_bias, f32",
            Spec {
                attention_bias: true,
                ..Spec::llama()
            },
            1,
        ),
        (
            "mistral MQA, linear rope, f16",
            Spec {
                model_type: "mistral",
                kv_heads: 1,
                rope_scaling: json!({"type": "linear", "factor": 2.0}),
                dtype: Dtype::F16,
                ..Spec::llama()
            },
            1,
        ),
        (
            "qwen2 (q/k/v bias), tied embeddings, bf16",
            Spec {
                model_type: "qwen2",
                tie: true,
                dtype: Dtype::BF16,
                ..Spec::llama()
            },
            2,
        ),
        (
            "qwen3 (q/k norm), head_dim 12 != hidden/heads, f32",
            Spec {
                model_type: "qwen3",
                head_dim: 12,
                ..Spec::llama()
            },
            1,
        ),
    ]
}

fn write_family(dir: &Path, spec: &Spec, shards: usize) -> Tensors {
    let tensors = spec.random_tensors(7);
    spec.write(dir, &tensors, shards);
    tensors
}

#[test]
fn every_family_matches_the_f64_reference_under_every_route() {
    for (name, spec, shards) in families() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = write_family(dir.path(), &spec, shards);
        let config = spec.config_json();
        let reference = HfReference::new(&config, &tensors);
        let loaded =
            load_pretrained::<F64>(dir.path(), &LoadOptions::default(), &Default::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(loaded.model_config.tie_embeddings, spec.tie, "{name}");
        for route in routes(spec.layers, 5) {
            let expected = reference.logits(&tokens(), &sources(&route, spec.layers));
            let actual = host_logits(&loaded.model, &tokens(), &route);
            assert_close(
                &actual,
                &expected,
                F64_TOLERANCE,
                &format!("{name}, route {route}"),
            );
        }
        // The cached path (prefill + decode under a plan) agrees with the reference too.
        let plan = CachePlan::every_kth(spec.layers, 2).unwrap();
        let expected = reference.logits(&tokens(), &sources(&plan.route(), spec.layers));
        let mut cache = loaded.model.new_cache(1, 16, plan.route()).unwrap();
        let prefill = loaded
            .model
            .forward_cached(&[tokens()[..7].to_vec()], &mut cache)
            .unwrap();
        let prefill: Vec<f64> = prefill.into_data().iter::<f64>().collect();
        let vocab = spec.vocab;
        for p in 0..7 {
            assert_close(
                &[prefill[p * vocab..(p + 1) * vocab].to_vec()],
                &[expected[p].clone()],
                F64_TOLERANCE,
                &format!("{name}, cached prefill"),
            );
        }
        for (p, (&token, expected)) in tokens().iter().zip(&expected).enumerate().skip(7) {
            let step = loaded
                .model
                .forward_cached(&[vec![token]], &mut cache)
                .unwrap();
            let step: Vec<f64> = step.into_data().iter::<f64>().collect();
            assert_close(
                &[step],
                std::slice::from_ref(expected),
                F64_TOLERANCE,
                &format!("{name}, cached decode position {p}"),
            );
        }
    }
}

#[test]
fn f32_backend_matches_the_reference() {
    let (name, spec, shards) = families().swap_remove(0);
    let dir = tempfile::tempdir().unwrap();
    let tensors = write_family(dir.path(), &spec, shards);
    let config = spec.config_json();
    let loaded =
        load_pretrained::<Flex>(dir.path(), &LoadOptions::default(), &Default::default()).unwrap();
    let route = CachePlan::every_kth(spec.layers, 3).unwrap().route();
    let expected =
        HfReference::new(&config, &tensors).logits(&tokens(), &sources(&route, spec.layers));
    assert_close(
        &host_logits(&loaded.model, &tokens(), &route),
        &expected,
        5e-5,
        name,
    );
}

#[test]
fn export_round_trips_with_identical_logits_and_hf_names() {
    for (name, spec, shards) in families() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        let tensors = write_family(&source, &spec, shards);
        let device = Default::default();
        let loaded = load_pretrained::<F64>(&source, &LoadOptions::default(), &device).unwrap();
        let routing = RoutingMetadata {
            version: 1,
            routing_p: 0.5,
            routed_steps: 100,
            route_seed: 3,
            serve_cached_layers: Some(vec![0, 2]),
        };
        let exported = dir.path().join("exported");
        // Small shards: the export is sharded with an index whenever the model has > 1 KB.
        let options = ExportOptions {
            max_shard_bytes: 4096,
            routing: Some(routing.clone()),
            ..ExportOptions::default()
        };
        save_pretrained(
            &loaded.model,
            &loaded.model_config,
            Some(&loaded.hf_config),
            &exported,
            &options,
        )
        .unwrap();
        assert!(
            exported.join("model.safetensors.index.json").is_file(),
            "{name}: sharded"
        );

        // Same tensor names and values (exact: f32 holds every bf16/f16 value).
        let files = SafetensorsFiles::open(&exported).unwrap();
        let names: Vec<&str> = files.names().collect();
        let expected_names: Vec<&str> = tensors.keys().map(String::as_str).collect();
        assert_eq!(names, expected_names, "{name}");
        for (tensor, (shape, values)) in &tensors {
            let data = files.read(tensor).unwrap();
            assert_eq!(&data.shape.to_vec(), shape, "{name}: {tensor}");
            let read = data.convert::<f32>().to_vec::<f32>().unwrap();
            assert!(
                read.iter().zip(values).all(|(a, b)| *a as f64 == *b),
                "{name}: {tensor} values"
            );
        }

        // config.json keeps the family, the unknown fields and carries the routing block.
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(exported.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(written["model_type"], spec.model_type, "{name}");
        assert_eq!(written["eos_token_id"], 2, "{name}");
        assert_eq!(written["torch_dtype"], "float32", "{name}");
        assert_eq!(written["kv_routing"]["routing_p"], 0.5, "{name}");
        assert_eq!(written["tie_word_embeddings"], spec.tie, "{name}");

        let reloaded = load_pretrained::<F64>(&exported, &LoadOptions::default(), &device).unwrap();
        assert_eq!(
            reloaded.hf_config.kv_routing,
            Some(routing.clone()),
            "{name}"
        );
        assert_eq!(reloaded.model_config, loaded.model_config, "{name}");
        for route in routes(spec.layers, 5) {
            assert_eq!(
                host_logits(&reloaded.model, &tokens(), &route),
                host_logits(&loaded.model, &tokens(), &route),
                "{name}: logits after export -> load, route {route}"
            );
        }
        let plan = routing.serve_plan(spec.layers).unwrap();
        assert_eq!(plan.cached_layers(), &[0, 2]);
    }
}

#[test]
fn bf16_export_rounds_to_bfloat16_and_loads() {
    let (_, spec, shards) = families().swap_remove(1);
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    let tensors = write_family(&source, &spec, shards);
    let device = Default::default();
    let loaded = load_pretrained::<F64>(&source, &LoadOptions::default(), &device).unwrap();
    let exported = dir.path().join("bf16");
    let options = ExportOptions {
        dtype: ExportDtype::BF16,
        ..ExportOptions::default()
    };
    save_pretrained(
        &loaded.model,
        &loaded.model_config,
        Some(&loaded.hf_config),
        &exported,
        &options,
    )
    .unwrap();
    assert!(exported.join("model.safetensors").is_file());
    let files = SafetensorsFiles::open(&exported).unwrap();
    let data = files
        .read("model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    // Read in the stored type: nothing is widened on the host.
    assert_eq!(data.dtype, burn::tensor::DType::BF16);
    let read = data.convert::<f32>().to_vec::<f32>().unwrap();
    let original = &tensors["model.layers.0.self_attn.q_proj.weight"].1;
    for (a, b) in read.iter().zip(original) {
        assert_eq!(*a, half::bf16::from_f64(*b).to_f32());
    }
    load_pretrained::<F64>(&exported, &LoadOptions::default(), &device).unwrap();
}

#[test]
fn a_model_of_our_own_exports_as_llama_and_generates_identically() {
    let config = kv_routing::RoutedTransformerConfig::new(50, 32, 3, 4, 40)
        .with_n_kv_heads(Some(2))
        .with_max_seq_len(32);
    let device = Default::default();
    let model = config.init_seeded::<F64>(9, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let written =
        save_pretrained(&model, &config, None, dir.path(), &ExportOptions::default()).unwrap();
    assert_eq!(written.model_type, "llama");
    assert_eq!(written.architectures, vec!["LlamaForCausalLM".to_string()]);
    let loaded = load_pretrained::<F64>(dir.path(), &LoadOptions::default(), &device).unwrap();
    let plan = CachePlan::every_kth(3, 2).unwrap();
    let settings = GenerationConfig {
        max_new_tokens: 6,
        sampler: Sampler::Greedy,
        seed: 0,
        stop_tokens: Vec::new(),
        ..Default::default()
    };
    let a = model
        .generate(&[vec![1, 2, 3]], &plan.route(), &settings)
        .unwrap();
    let b = loaded
        .model
        .generate(&[vec![1, 2, 3]], &plan.route(), &settings)
        .unwrap();
    assert_eq!(a.tokens, b.tokens);
}

#[test]
fn models_with_sharing_adapters_are_refused_merged_or_not() {
    let config = kv_routing::RoutedTransformerConfig::new(50, 32, 3, 4, 40).with_max_seq_len(32);
    let device = Default::default();
    let adapters = kv_routing::SharingAdapterConfig::new(2);
    let with_adapters = config
        .init_seeded::<F64>(9, &device)
        .unwrap()
        .with_sharing_adapters(&adapters)
        .unwrap();
    let merged = with_adapters
        .clone()
        .with_sharing_adapters_merged()
        .unwrap();
    // The merged model has no adapters left to see, and its config (the base's) names none:
    // only the merge marker stops its sharing weights from being written as the full model.
    for (model, what) in [(&with_adapters, "sharing adapters"), (&merged, "merged")] {
        let dir = tempfile::tempdir().unwrap();
        let error = save_pretrained(model, &config, None, dir.path(), &ExportOptions::default())
            .unwrap_err();
        assert!(
            matches!(&error, HfError::Unsupported(m) if m.contains(what)),
            "{error}"
        );
    }
}

/// Writes the llama family, lets `edit` damage it, and returns the load error.
fn load_error(edit: impl FnOnce(&Path, &mut Tensors, &mut serde_json::Value)) -> HfError {
    let spec = Spec::llama();
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = spec.random_tensors(1);
    let mut config = spec.config_json();
    edit(dir.path(), &mut tensors, &mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    if !dir.path().join("model.safetensors").exists() {
        write_tensors(dir.path(), &tensors, Dtype::F32, 1);
    }
    load_pretrained::<F64>(dir.path(), &LoadOptions::default(), &Default::default()).unwrap_err()
}

#[test]
fn damaged_checkpoints_give_errors_naming_the_tensor_or_field() {
    let cases: Vec<(&str, HfError, &str)> = vec![
        (
            "missing tensor",
            load_error(|_, t, _| {
                t.remove("model.layers.2.mlp.up_proj.weight");
            }),
            "model.layers.2.mlp.up_proj.weight",
        ),
        (
            "wrong shape",
            load_error(|_, t, _| {
                let entry = t.get_mut("model.layers.1.self_attn.k_proj.weight").unwrap();
                entry.0 = vec![32, 16];
            }),
            "model.layers.1.self_attn.k_proj.weight` has shape [32, 16], the config needs [16, 32]",
        ),
        (
            "unexpected tensor",
            load_error(|_, t, _| {
                t.insert(
                    "model.layers.0.mlp.up_proj.bias".into(),
                    (vec![56], vec![0.0; 56]),
                );
            }),
            "model.layers.0.mlp.up_proj.bias",
        ),
        (
            "unsupported architecture",
            load_error(|_, _, c| c["model_type"] = json!("gpt2")),
            "model_type `gpt2`",
        ),
        (
            "missing field",
            load_error(|_, _, c| {
                c.as_object_mut().unwrap().remove("hidden_size");
            }),
            "hidden_size",
        ),
        (
            "unsupported activation",
            load_error(|_, _, c| c["hidden_act"] = json!("gelu")),
            "hidden_act `gelu`",
        ),
        (
            "unsupported rope scaling",
            load_error(|_, _, c| c["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0})),
            "rope_scaling type `yarn`",
        ),
        (
            "sliding window smaller than the context",
            load_error(|_, _, c| {
                c["model_type"] = json!("mistral");
                c["sliding_window"] = json!(16);
            }),
            "sliding_window = 16",
        ),
        (
            "integer tensor",
            load_error(|dir, t, _| {
                let mut ints = t.clone();
                let only: Tensors = [(
                    "model.norm.weight".to_string(),
                    ints.remove("model.norm.weight").unwrap(),
                )]
                .into();
                write_tensors(dir, &only, Dtype::I32, 1);
                // Keep the rest in f32 next to it through an index.
                let rest_dir = dir.join("rest");
                std::fs::create_dir_all(&rest_dir).unwrap();
                write_tensors(&rest_dir, &ints, Dtype::F32, 1);
                std::fs::rename(
                    rest_dir.join("model.safetensors"),
                    dir.join("rest.safetensors"),
                )
                .unwrap();
                let mut map = serde_json::Map::new();
                for name in ints.keys() {
                    map.insert(name.clone(), json!("rest.safetensors"));
                }
                map.insert("model.norm.weight".into(), json!("model.safetensors"));
                std::fs::write(
                    dir.join("model.safetensors.index.json"),
                    json!({"weight_map": map}).to_string(),
                )
                .unwrap();
            }),
            "tensor `model.norm.weight` is stored as I32",
        ),
        (
            "not a safetensors file",
            load_error(|dir, _, _| {
                std::fs::write(dir.join("model.safetensors"), b"garbage").unwrap()
            }),
            "model.safetensors: not a valid safetensors file",
        ),
    ];
    for (case, error, needle) in cases {
        let message = error.to_string();
        assert!(
            message.contains(needle),
            "{case}: `{message}` should mention `{needle}`"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let error = load_pretrained::<F64>(dir.path(), &LoadOptions::default(), &Default::default())
        .unwrap_err();
    assert!(error.to_string().contains("config.json"), "{error}");
}

#[test]
fn config_round_trips_through_serde_with_unknown_fields() {
    let config: HfConfig = serde_json::from_value(Spec::llama().config_json()).unwrap();
    assert_eq!(config.extra["transformers_version"], "4.46.0");
    let again: HfConfig = serde_json::from_value(serde_json::to_value(&config).unwrap()).unwrap();
    assert_eq!(again, config);
}

#[test]
fn transformers_5_rope_parameters_are_read() {
    let mut json = Spec::llama().config_json();
    let object = json.as_object_mut().unwrap();
    object.remove("rope_theta");
    object.remove("rope_scaling");
    object.insert(
        "rope_parameters".into(),
        json!({"rope_theta": 1e6, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    );
    let config: HfConfig = serde_json::from_value(json).unwrap();
    let model = config.model_config(None).unwrap();
    assert_eq!(model.rope_theta, 1e6);
    assert!(matches!(
        model.rope_scaling,
        Some(kv_routing::RopeScaling::Llama3 { factor, .. }) if factor == 8.0
    ));
}
