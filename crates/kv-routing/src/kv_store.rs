//! [`KvStore`]: the hand-off of keys/values between layers during one forward step.
//!
//! The decoder runs one block loop for every path. What differs is where keys/values live:
//! [`SequenceKv`] keeps them in memory for a full-sequence forward (training, evaluation), and a
//! [`CacheStep`](crate::kv_cache::CacheStep) writes them into a [`KvCacheManager`]
//! (crate::kv_cache::KvCacheManager) for generation. Because both go through the same loop and
//! the same route queries, the training path cannot route differently from the generation path.

use burn::tensor::backend::Backend;

use crate::error::{KvRoutingError, Result};
use crate::key_value::{KeyValue, StoredKv};
use crate::kv_dtype::KvRowFormat;
use crate::route::Route;

/// Where a forward step puts and finds keys/values.
pub trait KvStore<B: Backend> {
    /// The route this step runs under.
    fn route(&self) -> &Route;

    /// Takes `layer`'s keys/values for the step's tokens. Only source layers call it.
    fn put(&mut self, layer: usize, kv: KeyValue<B>) -> Result<()>;

    /// The keys/values `layer` attends to: those of `route().source_of(layer)`, covering every
    /// key slot visible in this step.
    fn get(&mut self, layer: usize) -> Result<KeyValue<B>>;

    /// [`KvStore::get`]'s keys/values in the form the store holds them, when that form is one
    /// the backend's attention reads in place (an int8 cache on flex); [`KvStore::get`]'s
    /// floats otherwise (the default).
    fn get_stored(&mut self, layer: usize) -> Result<StoredKv<B>> {
        self.get(layer).map(StoredKv::Float)
    }
}

/// In-memory keys/values of one full-sequence forward pass.
///
/// A source's keys/values are released as soon as their last reader has taken them, so peak
/// memory is bounded by the sources still awaiting a reader.
#[derive(Debug)]
pub struct SequenceKv<B: Backend> {
    route: Route,
    layers: Vec<Option<KeyValue<B>>>,
    /// The cache format whose reads this pass reproduces (`None`: the model's own values).
    stored_as: Option<KvRowFormat>,
}

impl<B: Backend> SequenceKv<B> {
    /// An empty store for one forward pass under `route`.
    pub fn new(route: Route) -> Self {
        let layers = (0..route.n_layers()).map(|_| None).collect();
        Self {
            route,
            layers,
            stored_as: None,
        }
    }

    /// An empty store whose layers read keys/values as a cache storing rows as `format` would
    /// give them back ([`KvRowFormat::round_trip`]): a full-sequence pass that computes what a
    /// cached generation in that format computes (an int8 cache's perplexity, for instance).
    pub fn stored_as(route: Route, format: KvRowFormat) -> Self {
        Self {
            stored_as: Some(format),
            ..Self::new(route)
        }
    }
}

impl<B: Backend> KvStore<B> for SequenceKv<B> {
    fn route(&self) -> &Route {
        &self.route
    }

    fn put(&mut self, layer: usize, kv: KeyValue<B>) -> Result<()> {
        check_layer(&self.route, layer)?;
        if !self.route.is_source(layer) {
            return Err(KvRoutingError::MissingKv {
                layer,
                reason: format!(
                    "is not a source under route {}, so it must not compute keys/values",
                    self.route
                ),
            });
        }
        let kv = match &self.stored_as {
            Some(format) => KeyValue::new(format.round_trip(kv.key), format.round_trip(kv.value)),
            None => kv,
        };
        self.layers[layer] = Some(kv);
        Ok(())
    }

    fn get(&mut self, layer: usize) -> Result<KeyValue<B>> {
        check_layer(&self.route, layer)?;
        let source = self.route.source_of(layer);
        let missing = || KvRoutingError::MissingKv {
            layer,
            reason: format!("its source layer {source} has not produced keys/values yet"),
        };
        if self.route.last_reader(source) == Some(layer) {
            self.layers[source].take().ok_or_else(missing)
        } else {
            self.layers[source].clone().ok_or_else(missing)
        }
    }
}

pub(crate) fn check_layer(route: &Route, layer: usize) -> Result<()> {
    if layer < route.n_layers() {
        Ok(())
    } else {
        Err(KvRoutingError::MissingKv {
            layer,
            reason: format!(
                "does not exist under a route of {} layers",
                route.n_layers()
            ),
        })
    }
}
