//! Stochastic routing for training (R-CLA).
//!
//! At every training step each layer `l >= 1` independently, with probability `p`, reads the
//! keys/values of a layer drawn uniformly from `0..=l-1` instead of its own. One route per step
//! is shared by the whole batch.
//!
//! That is the paper's draw; [`RouteDraw`] also offers draws of whole serving plans (each
//! sharing step serves a [`CachePlan`](crate::CachePlan)'s route), set with
//! [`StochasticRouter::with_draw`].
//!
//! Routes are drawn on the host from a ChaCha8 stream keyed by `(seed, step)`, so the route of a
//! step is a pure function of the seed and the step index: bit-identical on every platform and
//! backend, and a resumed run needs only `(seed, step)` to draw exactly what it would have drawn.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Bernoulli, Distribution};
use serde::{Deserialize, Serialize};

use crate::error::{KvRoutingError, Result};
use crate::route::Route;
use crate::route_draw::RouteDraw;

/// Draws one [`Route`] per training step. `p = 0` is a standard transformer.
///
/// Serializes (with its step counter) as `{"n_layers":8,"p":0.5,"seed":7,"step":120}`, which is
/// all the state a checkpoint needs; a plan draw adds its `draw`
/// (`"draw":{"kind":"every_kth","max_k":4}`), and a router without one reads as the paper's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RouterRepr", into = "RouterRepr")]
pub struct StochasticRouter {
    n_layers: usize,
    p: f64,
    seed: u64,
    step: u64,
    draw: RouteDraw,
    bernoulli: Bernoulli,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterRepr {
    n_layers: usize,
    p: f64,
    seed: u64,
    #[serde(default)]
    step: u64,
    #[serde(default, skip_serializing_if = "RouteDraw::is_independent")]
    draw: RouteDraw,
}

impl TryFrom<RouterRepr> for StochasticRouter {
    type Error = KvRoutingError;

    fn try_from(repr: RouterRepr) -> Result<Self> {
        let mut router =
            StochasticRouter::new(repr.n_layers, repr.p, repr.seed)?.with_draw(repr.draw)?;
        router.step = repr.step;
        Ok(router)
    }
}

impl From<StochasticRouter> for RouterRepr {
    fn from(router: StochasticRouter) -> Self {
        RouterRepr {
            n_layers: router.n_layers,
            p: router.p,
            seed: router.seed,
            step: router.step,
            draw: router.draw,
        }
    }
}

impl StochasticRouter {
    /// A router for `n_layers` layers sharing with probability `p` in `[0, 1]`.
    pub fn new(n_layers: usize, p: f64, seed: u64) -> Result<Self> {
        if n_layers == 0 {
            return Err(KvRoutingError::InvalidConfig(
                "router needs at least one layer".into(),
            ));
        }
        let bernoulli = Bernoulli::new(p).map_err(|_| {
            KvRoutingError::InvalidConfig(format!(
                "routing probability p must be in [0, 1], got {p}"
            ))
        })?;
        Ok(Self {
            n_layers,
            p,
            seed,
            step: 0,
            draw: RouteDraw::IndependentLayers,
            bernoulli,
        })
    }

    /// The same router drawing its sharing steps' routes from `draw`.
    pub fn with_draw(mut self, draw: RouteDraw) -> Result<Self> {
        draw.validate_for(self.n_layers)?;
        self.draw = draw;
        Ok(self)
    }

    /// Where the sharing steps' routes come from.
    pub fn draw(&self) -> &RouteDraw {
        &self.draw
    }

    /// The sharing probability.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// The seed of the route stream.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Number of layers of the routes drawn.
    pub fn n_layers(&self) -> usize {
        self.n_layers
    }

    /// The step whose route [`StochasticRouter::next_route`] returns next.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Moves the step counter (for resuming a run).
    pub fn set_step(&mut self, step: u64) {
        self.step = step;
    }

    /// The route of the current step; advances the step counter.
    pub fn next_route(&mut self) -> Route {
        let route = self.route_for_step(self.step);
        self.step += 1;
        route
    }

    /// The route of any step, without touching the counter.
    pub fn route_for_step(&self, step: u64) -> Route {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(step);
        if self.draw.draws_plans() {
            let full = || crate::CachePlan::full(self.n_layers).expect("n_layers >= 1");
            let plan = match self.bernoulli.sample(&mut rng) {
                true => self.draw.draw_plan(self.n_layers, &mut rng),
                false => None,
            };
            return plan.unwrap_or_else(full).route();
        }
        let mut src = Vec::with_capacity(self.n_layers);
        src.push(0);
        for layer in 1..self.n_layers {
            let shared = self.bernoulli.sample(&mut rng);
            // u32 keeps the uniform draw identical on 32- and 64-bit targets.
            src.push(if shared {
                rng.random_range(0..layer as u32) as usize
            } else {
                layer
            });
        }
        Route::new(src).expect("drawn routes satisfy src[l] <= l by construction")
    }
}
