//! Route, plan and router semantics: golden route streams and validation errors.

use burn::tensor::backend::Backend;
use kv_routing::{CachePlan, KvRoutingError, Route, RouteDraw, StochasticRouter};

/// Routes of steps 0..4 for 8 layers at p = 0.5, pinned for two seeds. A change here changes
/// every training run: it must be deliberate.
pub fn golden_routes_for_two_seeds<B: Backend>(_device: &B::Device) {
    let golden: [(u64, [[usize; 8]; 4]); 2] =
        [(7, GOLDEN_SEED_7), (20260428, GOLDEN_SEED_20260428)];
    for (seed, expected) in golden {
        let mut router = StochasticRouter::new(8, 0.5, seed).unwrap();
        for (step, expected_src) in expected.iter().enumerate() {
            let route = router.next_route();
            assert_eq!(route.src(), expected_src, "seed {seed}, step {step}");
            assert_eq!(route, router.route_for_step(step as u64), "random access");
        }
        assert_eq!(router.step(), 4);
    }
}

const GOLDEN_SEED_7: [[usize; 8]; 4] = [
    [0, 0, 1, 3, 4, 1, 5, 3],
    [0, 1, 1, 1, 1, 5, 6, 7],
    [0, 0, 0, 1, 4, 5, 5, 0],
    [0, 0, 2, 1, 0, 4, 3, 7],
];
const GOLDEN_SEED_20260428: [[usize; 8]; 4] = [
    [0, 0, 1, 1, 4, 5, 6, 7],
    [0, 1, 2, 2, 4, 2, 1, 6],
    [0, 1, 1, 2, 4, 1, 3, 7],
    [0, 0, 2, 1, 4, 2, 6, 7],
];

/// `p = 0` never shares, `p = 1` always shares, and every drawn route is valid; the share rate
/// at `p = 0.5` is about one half.
pub fn router_probability_extremes_and_rate<B: Backend>(_device: &B::Device) {
    let never = StochasticRouter::new(12, 0.0, 1).unwrap();
    let always = StochasticRouter::new(12, 1.0, 1).unwrap();
    let half = StochasticRouter::new(12, 0.5, 1).unwrap();
    let mut shared = 0;
    for step in 0..200 {
        assert_eq!(never.route_for_step(step), Route::identity(12).unwrap());
        let route = always.route_for_step(step);
        assert!((1..12).all(|l| route.source_of(l) < l), "p = 1: {route}");
        shared += (1..12)
            .filter(|&l| half.route_for_step(step).source_of(l) != l)
            .count();
    }
    let rate = shared as f64 / (200.0 * 11.0);
    assert!(
        (0.44..0.56).contains(&rate),
        "share rate at p = 0.5 was {rate}"
    );
}

/// The router's state round-trips through JSON and resumes the same stream.
pub fn router_state_round_trips<B: Backend>(_device: &B::Device) {
    let mut router = StochasticRouter::new(6, 0.75, 99).unwrap();
    for _ in 0..5 {
        router.next_route();
    }
    let json = serde_json::to_string(&router).unwrap();
    let mut resumed: StochasticRouter = serde_json::from_str(&json).unwrap();
    for _ in 0..5 {
        assert_eq!(resumed.next_route(), router.next_route());
    }
    let bad = serde_json::from_str::<StochasticRouter>(r#"{"n_layers":6,"p":1.5,"seed":1}"#);
    assert!(bad.unwrap_err().to_string().contains("p must be in [0, 1]"));
}

/// Bad routes, plans and probabilities are typed errors whose message names the layer or value.
pub fn invalid_routes_plans_and_probabilities_are_rejected<B: Backend>(_device: &B::Device) {
    let message = |e: KvRoutingError| e.to_string();
    assert!(message(Route::new(vec![]).unwrap_err()).contains("at least one layer"));
    assert!(message(Route::new(vec![1, 1]).unwrap_err()).contains("src[0] = 1"));
    let forward_read = message(Route::new(vec![0, 0, 3, 3]).unwrap_err());
    assert!(
        forward_read.contains("layer 2 cannot read layer 3"),
        "{forward_read}"
    );
    assert!(matches!(
        Route::from_json(r#"{"src":[0,2]}"#),
        Err(KvRoutingError::Serde(m)) if m.contains("layer 1 cannot read layer 2")
    ));
    assert!(Route::from_json(r#"{"src":[0,0],"extra":1}"#).is_err());

    assert!(message(CachePlan::new(4, []).unwrap_err()).contains("empty"));
    assert!(
        message(CachePlan::new(4, [1, 2]).unwrap_err()).contains("layer 0 must always be cached")
    );
    assert!(message(CachePlan::new(4, [0, 4]).unwrap_err()).contains("layer 4 does not exist"));
    assert!(message(CachePlan::new(4, [0, 2, 2]).unwrap_err()).contains("layer 2 is listed twice"));
    assert!(CachePlan::every_kth(4, 0).is_err());
    assert!(CachePlan::retention(4, 0.0).is_err());
    assert!(CachePlan::retention(4, 1.5).is_err());
    assert!(CachePlan::retention(4, f64::NAN).is_err());
    assert!(matches!(
        CachePlan::from_json(r#"{"n_layers":4,"cached":[1,3]}"#),
        Err(KvRoutingError::Serde(m)) if m.contains("layer 0 must always be cached")
    ));

    for p in [-0.1, 1.01, f64::NAN] {
        let error = StochasticRouter::new(4, p, 0).unwrap_err();
        assert!(matches!(error, KvRoutingError::InvalidConfig(_)), "p = {p}");
    }
}

/// Plans induce `src[l] = max{j in S : j <= l}`; the builders keep the right layers.
pub fn plans_induce_nearest_cached_layer_below<B: Backend>(_device: &B::Device) {
    let plan = CachePlan::new(7, [0, 3, 4]).unwrap();
    assert_eq!(plan.route().src(), &[0, 0, 0, 3, 4, 4, 4]);
    assert_eq!(plan.route().sources(), vec![0, 3, 4]);
    assert_eq!(
        CachePlan::full(4).unwrap().route(),
        Route::identity(4).unwrap()
    );
    assert_eq!(
        CachePlan::every_kth(12, 2).unwrap().cached_layers(),
        &[0, 2, 4, 6, 8, 10]
    );
    assert_eq!(
        CachePlan::every_kth(12, 3).unwrap().cached_layers(),
        &[0, 3, 6, 9]
    );
    assert_eq!(
        CachePlan::every_kth(12, 4).unwrap().cached_layers(),
        &[0, 4, 8]
    );
    assert_eq!(
        CachePlan::every_kth(7, 3).unwrap().route().src(),
        &[0, 0, 0, 3, 3, 3, 6]
    );
    for k in 1..=4 {
        assert_eq!(
            CachePlan::retention(12, 1.0 / k as f64).unwrap(),
            CachePlan::every_kth(12, k).unwrap()
        );
    }
    let plan = CachePlan::every_kth(8, 2).unwrap();
    assert_eq!(CachePlan::from_json(&plan.to_json()).unwrap(), plan);
    assert_eq!(plan.to_json(), r#"{"n_layers":8,"cached":[0,2,4,6]}"#);
    let route = plan.route();
    assert_eq!(Route::from_json(&route.to_json()).unwrap(), route);
}

/// Plan draws: every drawn route is a route some `CachePlan` produces (so the model trains on
/// exactly what it serves), the draw is a pure function of seed and step (resume and every
/// device draw the same), every member of the family is drawn, the share rate is `p`, and the
/// router's JSON keeps the draw. A draw that breaks any of these fails here.
pub fn plan_draws_are_serving_plans_reproducibly<B: Backend>(_device: &B::Device) {
    let n_layers = 12;
    let full = CachePlan::full(n_layers).unwrap().route();
    for draw in [
        RouteDraw::EveryKth { max_k: 4 },
        RouteDraw::RandomPlans {
            min_retention: 0.25,
        },
        RouteDraw::FixedPlan {
            layers: vec![0, 1, 2, 5, 8],
        },
    ] {
        let router = StochasticRouter::new(n_layers, 0.75, 5)
            .unwrap()
            .with_draw(draw.clone())
            .unwrap();
        let mut resumed: StochasticRouter =
            serde_json::from_str(&serde_json::to_string(&router).unwrap()).unwrap();
        assert_eq!(resumed.draw(), &draw);
        resumed.set_step(100);
        let mut sharing = 0;
        let mut spacings = std::collections::BTreeSet::new();
        for step in 0..400 {
            let route = router.route_for_step(step);
            // The plan a route serves is its set of sources; its route must be this route.
            let plan = CachePlan::new(n_layers, route.sources()).unwrap();
            assert_eq!(
                plan.route(),
                route,
                "{draw}, step {step}: not a plan's route"
            );
            assert_eq!(
                route,
                router.clone().route_for_step(step),
                "{draw}: not reproducible"
            );
            if (100..110).contains(&step) {
                assert_eq!(
                    resumed.next_route(),
                    route,
                    "{draw}: resumed at step {step}"
                );
            }
            if route != full {
                sharing += 1;
                match &draw {
                    RouteDraw::EveryKth { .. } => {
                        let k = plan.cached_layers()[1];
                        assert_eq!(plan, CachePlan::every_kth(n_layers, k).unwrap(), "{draw}");
                        spacings.insert(k);
                    }
                    RouteDraw::FixedPlan { layers } => {
                        assert_eq!(plan.cached_layers(), layers.as_slice(), "{draw}");
                        spacings.insert(layers.len());
                    }
                    _ => {
                        assert!(
                            plan.cached_layers().len() >= 3,
                            "{draw}: below 25% of 12 layers"
                        );
                        spacings.insert(plan.cached_layers().len());
                    }
                }
            }
        }
        let rate = sharing as f64 / 400.0;
        assert!(
            (0.68..0.82).contains(&rate),
            "{draw}: share rate {rate} at p = 0.75"
        );
        let expected: Vec<usize> = match &draw {
            RouteDraw::EveryKth { .. } => vec![2, 3, 4],
            RouteDraw::FixedPlan { layers } => vec![layers.len()],
            _ => (3..12).collect(),
        };
        assert_eq!(
            spacings.into_iter().collect::<Vec<_>>(),
            expected,
            "{draw}: family not covered"
        );
    }
    // Another seed draws another stream; p = 0 never shares.
    let every = RouteDraw::EveryKth { max_k: 4 };
    let a = StochasticRouter::new(n_layers, 0.75, 5)
        .unwrap()
        .with_draw(every.clone())
        .unwrap();
    let b = StochasticRouter::new(n_layers, 0.75, 6)
        .unwrap()
        .with_draw(every.clone())
        .unwrap();
    assert!((0..50).any(|s| a.route_for_step(s) != b.route_for_step(s)));
    let never = StochasticRouter::new(n_layers, 0.0, 5)
        .unwrap()
        .with_draw(every)
        .unwrap();
    assert!((0..50).all(|s| never.route_for_step(s) == full));
    assert!(StochasticRouter::new(4, 0.5, 0)
        .unwrap()
        .with_draw(RouteDraw::EveryKth { max_k: 1 })
        .is_err());
    // A fixed plan must fit the model.
    assert!(StochasticRouter::new(4, 0.5, 0)
        .unwrap()
        .with_draw(RouteDraw::FixedPlan { layers: vec![0, 4] })
        .is_err());
}
