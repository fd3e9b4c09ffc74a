//! Deliberate errors ("mutants") of the training kernels' backward passes, which the checks
//! must catch: proof that a comparison can see the errors it is there for.
//!
//! Each kernel declares its own mutations (an enum with an `ALL` list) and asks [`active`]
//! which one is in force:
//! - in this crate's unit tests, the one [`set_for_this_thread`] chose (the backward passes
//!   read it on the thread that runs `backward()`);
//! - with the `kernel-mutants` feature, the one named by the environment variable
//!   `KV_ROUTING_MUTANT=<kernel>:<Mutation>` (CI runs the conformance suite's gradient test once
//!   per mutant and requires every run to fail; see `.ci/mutants`);
//! - otherwise none: [`active`] is a constant `None` and the checks compile away.

/// The environment variable naming the mutant of a `kernel-mutants` build.
#[cfg(all(feature = "kernel-mutants", not(test)))]
const MUTANT_VARIABLE: &str = "KV_ROUTING_MUTANT";

/// The mutation of `kernel` in force, if any (see the module docs).
#[cfg(any(test, feature = "kernel-mutants"))]
pub(crate) fn active<M: Copy + std::fmt::Debug>(kernel: &str, all: &[M]) -> Option<M> {
    let name = current_name()?;
    let (named_kernel, mutation) = name.split_once(':')?;
    if named_kernel != kernel {
        return None;
    }
    all.iter().copied().find(|m| format!("{m:?}") == mutation)
}

/// The mutation of `kernel` in force: none in a build without mutants.
#[cfg(not(any(test, feature = "kernel-mutants")))]
#[inline(always)]
pub(crate) fn active<M>(_kernel: &str, _all: &[M]) -> Option<M> {
    None
}

#[cfg(test)]
thread_local! {
    static CHOSEN: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Chooses the mutant (`"kernel:Mutation"`) of backward passes run from this thread, or none.
#[cfg(test)]
pub(crate) fn set_for_this_thread(name: Option<String>) {
    CHOSEN.with(|chosen| *chosen.borrow_mut() = name);
}

#[cfg(test)]
fn current_name() -> Option<String> {
    CHOSEN.with(|chosen| chosen.borrow().clone())
}

#[cfg(all(feature = "kernel-mutants", not(test)))]
fn current_name() -> Option<String> {
    std::env::var(MUTANT_VARIABLE).ok()
}

/// Runs `check` with each of `all` in force in turn and returns the mutations it did not
/// catch (`check` returned `Ok`).
#[cfg(test)]
pub(crate) fn surviving<M: Copy + std::fmt::Debug>(
    kernel: &str,
    all: &[M],
    check: impl Fn() -> Result<(), String>,
) -> Vec<M> {
    let survivors = all
        .iter()
        .copied()
        .filter(|mutation| {
            set_for_this_thread(Some(format!("{kernel}:{mutation:?}")));
            check().is_ok()
        })
        .collect();
    set_for_this_thread(None);
    survivors
}
