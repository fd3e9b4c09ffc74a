//! A mutation fuzzer for file loaders, run as proptest properties so every case is seeded,
//! replayable and shrunk to a minimal list of mutations.
//!
//! A case takes a valid file and applies 1-4 mutations: byte-level ones (truncation, bit flips,
//! a byte or a 1/2/4/8-byte little-endian integer set to an interesting value such as 0,
//! `u32::MAX`, `u64::MAX` or the file's length, a run removed or duplicated) and, for JSON text
//! (a whole file, or the header of a safetensors file), structural ones (a value replaced by one
//! of another type or an absurd size, a key removed or duplicated). The loader then runs on the
//! damaged file, and the case fails when it
//! - panics (proptest catches it and shrinks),
//! - makes an allocation larger than [`allocation_limit`] of the input's size (the test binary
//!   installs [`PeakAllocator`] as its global allocator), or
//! - runs longer than [`HANG_SECONDS`] (a watchdog thread aborts the process, printing the case).
//!
//! Cases run one at a time ([`serial`]): the allocation peak is global to the process.
//!
//! Environment: `KV_FUZZ_SEED` (default [`DEFAULT_SEED`]), `KV_FUZZ_CASES` (overrides every
//! target's case count).

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::Value;

/// Seed of every fuzz run unless `KV_FUZZ_SEED` says otherwise.
pub const DEFAULT_SEED: u64 = 0x6b76_2d66_757a_7a31;

/// A case running longer than this is a hang.
pub const HANG_SECONDS: u64 = 60;

/// The global allocator of a fuzz test binary: the system allocator, recording the largest
/// single request since [`reset_peak`].
pub struct PeakAllocator;

static LARGEST_REQUEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for PeakAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST_REQUEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST_REQUEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST_REQUEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Forgets the largest request so far.
pub fn reset_peak() {
    LARGEST_REQUEST.store(0, Ordering::Relaxed);
}

/// The largest single allocation requested since [`reset_peak`].
pub fn peak() -> usize {
    LARGEST_REQUEST.load(Ordering::Relaxed)
}

/// The largest single allocation a loader may make for `input_bytes` of files: a small multiple
/// of the input (values widened to f32, a tokenizer's tables), plus a fixed allowance for the
/// runtime's own buffers.
pub fn allocation_limit(input_bytes: usize) -> usize {
    16 * input_bytes + (8 << 20)
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the process to one fuzz target at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Milliseconds since [`watchdog_epoch`] at which the running case started; 0 when none runs.
static CASE_STARTED_MS: AtomicU64 = AtomicU64::new(0);
static CASE_DESCRIPTION: Mutex<String> = Mutex::new(String::new());
static WATCHDOG: Once = Once::new();

fn watchdog_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn start_watchdog() {
    WATCHDOG.call_once(|| {
        watchdog_epoch();
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(250));
            let started = CASE_STARTED_MS.load(Ordering::Relaxed);
            let now = watchdog_epoch().elapsed().as_millis() as u64;
            if started != 0 && now.saturating_sub(started) > HANG_SECONDS * 1000 {
                let case = CASE_DESCRIPTION
                    .lock()
                    .map(|c| c.clone())
                    .unwrap_or_default();
                eprintln!("fuzz case ran longer than {HANG_SECONDS} s (a hang): {case}");
                std::process::abort();
            }
        });
    });
}

/// An integer worth writing over a field: boundaries, sign bits, and sizes near the file's.
#[derive(Debug, Clone, Copy)]
pub enum Interesting {
    Zero,
    One,
    I8Max,
    U8Max,
    I16Max,
    U16Max,
    I32Max,
    U32Max,
    TwoTo40,
    I64Max,
    U64Max,
    FileLength,
    FileLengthPlusOne,
}

impl Interesting {
    fn value(self, file_len: usize) -> u64 {
        match self {
            Self::Zero => 0,
            Self::One => 1,
            Self::I8Max => 0x7f,
            Self::U8Max => 0xff,
            Self::I16Max => 0x7fff,
            Self::U16Max => 0xffff,
            Self::I32Max => 0x7fff_ffff,
            Self::U32Max => 0xffff_ffff,
            Self::TwoTo40 => 1 << 40,
            Self::I64Max => i64::MAX as u64,
            Self::U64Max => u64::MAX,
            Self::FileLength => file_len as u64,
            Self::FileLengthPlusOne => file_len as u64 + 1,
        }
    }
}

fn interesting() -> impl Strategy<Value = Interesting> {
    prop::sample::select(vec![
        Interesting::Zero,
        Interesting::One,
        Interesting::I8Max,
        Interesting::U8Max,
        Interesting::I16Max,
        Interesting::U16Max,
        Interesting::I32Max,
        Interesting::U32Max,
        Interesting::TwoTo40,
        Interesting::I64Max,
        Interesting::U64Max,
        Interesting::FileLength,
        Interesting::FileLengthPlusOne,
    ])
}

/// A JSON value put in place of another.
#[derive(Debug, Clone, Copy)]
pub enum Replacement {
    Null,
    True,
    NegativeOne,
    Zero,
    Half,
    TwoTo53,
    U64Max,
    Huge,
    EmptyString,
    /// A dtype name other than the file's (safetensors headers).
    DtypeName(&'static str),
    EmptyArray,
    HugeShape,
    EmptyObject,
}

impl Replacement {
    fn value(self) -> Value {
        match self {
            Self::Null => Value::Null,
            Self::True => Value::Bool(true),
            Self::NegativeOne => Value::from(-1),
            Self::Zero => Value::from(0),
            Self::Half => Value::from(0.5),
            Self::TwoTo53 => Value::from(1u64 << 53),
            Self::U64Max => Value::from(u64::MAX),
            Self::Huge => Value::from(1e308),
            Self::EmptyString => Value::from(""),
            Self::DtypeName(name) => Value::from(name),
            Self::EmptyArray => Value::Array(Vec::new()),
            Self::HugeShape => Value::from(vec![1u64 << 32, 1u64 << 32]),
            Self::EmptyObject => Value::Object(Default::default()),
        }
    }
}

fn replacement() -> impl Strategy<Value = Replacement> {
    prop::sample::select(vec![
        Replacement::Null,
        Replacement::True,
        Replacement::NegativeOne,
        Replacement::Zero,
        Replacement::Half,
        Replacement::TwoTo53,
        Replacement::U64Max,
        Replacement::Huge,
        Replacement::EmptyString,
        Replacement::DtypeName("F16"),
        Replacement::DtypeName("BF16"),
        Replacement::DtypeName("I64"),
        Replacement::DtypeName("U8"),
        Replacement::DtypeName("F64"),
        Replacement::EmptyArray,
        Replacement::HugeShape,
        Replacement::EmptyObject,
    ])
}

/// One change to a file.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Cuts the file at a position.
    Truncate(Index),
    /// Flips one bit of a byte.
    FlipBit(Index, u8),
    /// Overwrites a little-endian integer of 1, 2, 4 or 8 bytes.
    SetInteger(Index, u8, Interesting),
    /// Removes up to 64 bytes.
    Remove(Index, u8),
    /// Repeats up to 64 bytes in place.
    Duplicate(Index, u8),
    /// Replaces a JSON value (any node of the document) by another.
    JsonReplace(Index, Replacement),
    /// Replaces a JSON value by a copy of another node of the document.
    JsonCopy(Index, Index),
    /// Removes a key from a JSON object.
    JsonRemove(Index),
    /// Writes a key of a JSON object a second time (with another node's value) in the text.
    JsonDuplicateKey(Index, Index),
}

/// Byte-level mutations only.
pub fn byte_mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(byte_mutation(), 1..=4)
}

/// Mostly structural mutations of JSON text, with some byte-level ones.
pub fn json_mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(
        prop_oneof![
            4 => json_mutation(),
            1 => byte_mutation(),
        ],
        1..=4,
    )
}

fn byte_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        (any::<Index>(), 0u8..4, interesting())
            .prop_map(|(at, width, value)| Mutation::SetInteger(at, width, value)),
        (any::<Index>(), 1u8..64).prop_map(|(at, len)| Mutation::Remove(at, len)),
        (any::<Index>(), 1u8..64).prop_map(|(at, len)| Mutation::Duplicate(at, len)),
    ]
}

fn json_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), replacement()).prop_map(|(at, with)| Mutation::JsonReplace(at, with)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(at, from)| Mutation::JsonCopy(at, from)),
        1 => any::<Index>().prop_map(Mutation::JsonRemove),
        1 => (any::<Index>(), any::<Index>())
            .prop_map(|(at, from)| Mutation::JsonDuplicateKey(at, from)),
    ]
}

/// The JSON pointers of every node of `value` (the root included).
fn pointers(value: &Value) -> Vec<String> {
    fn walk(value: &Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let key = key.replace('~', "~0").replace('/', "~1");
                    walk(child, format!("{at}/{key}"), out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, String::new(), &mut out);
    out
}

/// Applies one structural mutation to JSON text; text that is not JSON (an earlier byte-level
/// mutation broke it) is left as it is.
fn mutate_json(text: &[u8], mutation: &Mutation) -> Vec<u8> {
    let Ok(mut document) = serde_json::from_slice::<Value>(text) else {
        return text.to_vec();
    };
    let nodes = pointers(&document);
    let node = |at: &Index| nodes[at.index(nodes.len())].clone();
    match mutation {
        Mutation::JsonReplace(at, with) => {
            if let Some(target) = document.pointer_mut(&node(at)) {
                *target = with.value();
            }
        }
        Mutation::JsonCopy(at, from) => {
            let copy = document.pointer(&node(from)).cloned();
            if let (Some(copy), Some(target)) = (copy, document.pointer_mut(&node(at))) {
                *target = copy;
            }
        }
        Mutation::JsonRemove(at) => {
            let pointer = node(at);
            if let Some((parent, key)) = pointer.rsplit_once('/') {
                match document.pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.remove(&key.replace("~1", "/").replace("~0", "~"));
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(i) = key.parse::<usize>() {
                            if i < items.len() {
                                items.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Mutation::JsonDuplicateKey(at, from) => {
            // serde_json keeps one value per key, so the duplicate is written into the text:
            // `"key":` gets a second entry with another node's value in front of it.
            let pointer = node(at);
            let value = document
                .pointer(&node(from))
                .cloned()
                .unwrap_or(Value::Null);
            let text = serde_json::to_string(&document).unwrap();
            if let Some((_, key)) = pointer.rsplit_once('/') {
                let key = key.replace("~1", "/").replace("~0", "~");
                let quoted = format!("{}:", serde_json::to_string(&key).unwrap());
                if let Some(position) = text.find(&quoted) {
                    let entry = format!("{quoted}{},", serde_json::to_string(&value).unwrap());
                    return [&text[..position], &entry, &text[position..]]
                        .concat()
                        .into_bytes();
                }
            }
            return text.into_bytes();
        }
        _ => return text.to_vec(),
    }
    serde_json::to_vec(&document).unwrap()
}

fn is_json_mutation(mutation: &Mutation) -> bool {
    matches!(
        mutation,
        Mutation::JsonReplace(..)
            | Mutation::JsonCopy(..)
            | Mutation::JsonRemove(..)
            | Mutation::JsonDuplicateKey(..)
    )
}

fn mutate_bytes(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    if len == 0 {
        return;
    }
    match *mutation {
        Mutation::Truncate(at) => bytes.truncate(at.index(len)),
        Mutation::FlipBit(at, bit) => bytes[at.index(len)] ^= 1 << bit,
        Mutation::SetInteger(at, width, value) => {
            let width = 1usize << width;
            let at = at.index(len);
            let end = (at + width).min(len);
            let value = value.value(len).to_le_bytes();
            bytes[at..end].copy_from_slice(&value[..end - at]);
        }
        Mutation::Remove(at, n) => {
            let at = at.index(len);
            let end = (at + n as usize).min(len);
            bytes.drain(at..end);
        }
        Mutation::Duplicate(at, n) => {
            let at = at.index(len);
            let end = (at + n as usize).min(len);
            let run = bytes[at..end].to_vec();
            bytes.splice(at..at, run);
        }
        _ => {}
    }
}

/// How a file is laid out, for the structural mutations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Binary: byte-level mutations only.
    Binary,
    /// JSON text.
    Json,
    /// safetensors: an 8-byte header length, a JSON header, the data. Structural mutations
    /// change the header and rewrite its length.
    Safetensors,
}

/// `valid` with `mutations` applied in order.
pub fn apply(valid: &[u8], format: Format, mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    for mutation in mutations {
        if !is_json_mutation(mutation) {
            mutate_bytes(&mut bytes, mutation);
            continue;
        }
        match format {
            Format::Binary => {}
            Format::Json => bytes = mutate_json(&bytes, mutation),
            Format::Safetensors => {
                let Some(header_len) = bytes
                    .get(..8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
                    .filter(|&n| n <= bytes.len() - 8)
                else {
                    continue;
                };
                let header = mutate_json(&bytes[8..8 + header_len], mutation);
                let data = bytes[8 + header_len..].to_vec();
                bytes = (header.len() as u64).to_le_bytes().to_vec();
                bytes.extend(header);
                bytes.extend(data);
            }
        }
    }
    bytes
}

/// The files of `dir` and their bytes, sorted by path.
pub fn read_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}

/// The mutations for a file of `format`: byte-level ones for a binary file, mostly structural
/// ones for JSON text and safetensors headers.
pub fn mutations_for(format: Format) -> BoxedStrategy<Vec<Mutation>> {
    match format {
        Format::Binary => byte_mutations().boxed(),
        Format::Json | Format::Safetensors => json_mutations().boxed(),
    }
}

/// Writes `files` back in place, the one named `target` damaged by `mutations`; returns the
/// bytes written in all.
pub fn write_damaged(
    files: &[(PathBuf, Vec<u8>)],
    target: &str,
    format: Format,
    mutations: &[Mutation],
) -> usize {
    assert!(
        files
            .iter()
            .any(|(path, _)| path.file_name().unwrap() == target),
        "no {target} among {:?}",
        files.iter().map(|(path, _)| path).collect::<Vec<_>>()
    );
    files
        .iter()
        .map(|(path, valid)| {
            let bytes = if path.file_name().unwrap() == target {
                apply(valid, format, mutations)
            } else {
                valid.clone()
            };
            std::fs::write(path, &bytes).unwrap();
            bytes.len()
        })
        .sum()
}

/// What a fuzz case did.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Bytes of input the loader was given (all files).
    pub input_bytes: usize,
    /// Whether the damaged input loaded (else it was a typed error).
    pub loaded: bool,
}

/// Runs `cases` fuzz cases of one target (`KV_FUZZ_CASES` overrides the count): each draws
/// mutations from `strategy`, and `test` builds the damaged input and runs the loader. Fails on
/// a panic, a hang, or an allocation over the limit; prints how many cases loaded.
pub fn fuzz<S>(name: &str, cases: u32, strategy: S, test: impl Fn(&S::Value) -> Outcome)
where
    S: Strategy,
    S::Value: Debug,
{
    let _serial = serial();
    start_watchdog();
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let seed = env("KV_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let cases = env("KV_FUZZ_CASES").map_or(cases, |c| c as u32);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let started = Instant::now();
    let loaded = AtomicUsize::new(0);
    let result = runner.run(&strategy, |mutations| {
        *CASE_DESCRIPTION.lock().unwrap() = format!("{name}: {mutations:?}");
        CASE_STARTED_MS.store(
            watchdog_epoch().elapsed().as_millis().max(1) as u64,
            Ordering::Relaxed,
        );
        reset_peak();
        let outcome = test(&mutations);
        let largest = peak();
        let input_bytes = outcome.input_bytes;
        loaded.fetch_add(outcome.loaded as usize, Ordering::Relaxed);
        CASE_STARTED_MS.store(0, Ordering::Relaxed);
        prop_assert!(
            largest <= allocation_limit(input_bytes),
            "an allocation of {largest} bytes for {input_bytes} bytes of input"
        );
        Ok(())
    });
    // A case that panicked never cleared its start: no later case of the process is a hang.
    CASE_STARTED_MS.store(0, Ordering::Relaxed);
    if let Err(failure) = result {
        panic!("fuzz target `{name}` failed (replay with KV_FUZZ_SEED={seed}): {failure}");
    }
    eprintln!(
        "fuzz target `{name}`: {cases} cases in {:.1} s, {} loaded, the others typed errors",
        started.elapsed().as_secs_f64(),
        loaded.load(Ordering::Relaxed)
    );
}
