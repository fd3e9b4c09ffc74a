//! Serving a queue under a KV budget: admission on exact bytes, continuous batching, each
//! request's tokens those it gets alone.

use burn::tensor::backend::Backend;
use kv_routing::{
    CachePlan, GenerationConfig, KvDtype, KvRoutingError, ServeConfig, ServeRequest,
    StochasticRouter,
};

use crate::support::{random_tokens, tiny_config, tiny_model};

/// Five requests with four different routes, prompts of 2 to 6 tokens and 1 to 5 new tokens,
/// under a budget that holds about two at once (native and int8 caches): the KV bytes held
/// never exceed the budget, more than one request runs at once but never all, every request is
/// served with its route's exact bytes and the greedy tokens `generate` gives it alone; a
/// request that cannot fit alone is refused before anything runs.
pub fn serving_admits_by_exact_bytes_and_matches_each_request_alone<B: Backend>(
    device: &B::Device,
) {
    let config = tiny_config(2);
    let native = tiny_model::<B>(&config, device);
    let n = config.n_layers;
    let routes = [
        CachePlan::full(n).unwrap().route(),
        CachePlan::every_kth(n, 2).unwrap().route(),
        CachePlan::every_kth(n, 3).unwrap().route(),
        StochasticRouter::new(n, 1.0, 4).unwrap().route_for_step(0),
        CachePlan::full(n).unwrap().route(),
    ];
    for dtype in [KvDtype::Native, KvDtype::Int8] {
        let model = native.clone().with_kv_dtype(dtype).unwrap();
        let requests: Vec<ServeRequest> = routes
            .iter()
            .enumerate()
            .map(|(i, route)| ServeRequest {
                prompt: random_tokens(200 + i as u64, 2 + i, 37),
                route: route.clone(),
                max_new_tokens: 1 + (i * 3) % 5,
            })
            .collect();
        let need = |r: &ServeRequest| {
            model.kv_bytes_per_token(&r.route).unwrap() * (r.prompt.len() + r.max_new_tokens)
        };
        // The largest request and a small one at once, never all five.
        let budget = need(&requests[4]) + need(&requests[1]);
        let report = model
            .serve(
                &requests,
                &ServeConfig {
                    kv_budget: budget,
                    stop_tokens: Vec::new(),
                },
            )
            .unwrap();
        assert!(
            report.peak_kv_bytes <= budget,
            "{dtype}: {} > {budget}",
            report.peak_kv_bytes
        );
        assert!(
            (2..requests.len()).contains(&report.peak_concurrent),
            "{dtype}: {} at once",
            report.peak_concurrent
        );
        for (i, (request, served)) in requests.iter().zip(&report.requests).enumerate() {
            let alone = model
                .generate(
                    std::slice::from_ref(&request.prompt),
                    &request.route,
                    &GenerationConfig {
                        max_new_tokens: request.max_new_tokens,
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_eq!(served.tokens, alone.tokens[0], "{dtype}, request {i}");
            assert_eq!(
                served.kv_bytes,
                need(request),
                "{dtype}, request {i}: bytes"
            );
            assert!(served.queued_seconds <= served.finished_seconds);
        }
        let too_big = ServeConfig {
            kv_budget: need(&requests[0]) - 1,
            stop_tokens: Vec::new(),
        };
        assert!(matches!(
            model.serve(&requests[..1], &too_big),
            Err(KvRoutingError::MemoryBudgetExceeded { .. })
        ));
    }
}
