//! The bytes nodes exchange over TCP: a handshake, then one message per buffer summed.
//!
//! Every integer is a little-endian `u64`, every value a little-endian `f32` or `f64`, so
//! nodes of any byte order and word size agree. Messages:
//!
//! - hello (node → coordinator): the magic `KVRNODE1`, the node's rank, the node count, the
//!   run's fingerprint as a length-prefixed UTF-8 JSON text;
//! - answer (coordinator → node): `0` and an empty text to admit, `1` and the reason to refuse;
//! - values (both ways): the exchange number, the buffer index, a kind (absent, `f32`, `f64`,
//!   or abort with a reason), the element count, the elements.
//!
//! Values are written and read in chunks of [`CHUNK`] elements: a 540 MB gradient is never
//! copied whole into a byte buffer, and the coordinator adds a node's values into its sum as
//! they arrive.

use std::io::{self, Read, Write};

/// Bytes that open every hello: a protocol version mismatch is refused, not misread.
pub(crate) const MAGIC: [u8; 8] = *b"KVRNODE1";

/// Elements converted per chunk.
const CHUNK: usize = 16 * 1024;

/// The longest text (fingerprint, reason) a message may carry: a damaged or foreign stream
/// cannot make a node allocate more.
const MAX_TEXT: u64 = 1 << 20;

/// One buffer of an exchange: a gradient (or the loss), or nothing when this node has none.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Values {
    /// The parameter has no gradient this step (a layer whose K/V the route skipped).
    Absent,
    /// Single precision (what `f32`, `f16` and `bf16` runs send).
    F32(Vec<f32>),
    /// Double precision.
    F64(Vec<f64>),
}

impl Values {
    fn kind(&self) -> u64 {
        match self {
            Values::Absent => KIND_ABSENT,
            Values::F32(_) => KIND_F32,
            Values::F64(_) => KIND_F64,
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Values::Absent => 0,
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Values::Absent => "no gradient".into(),
            Values::F32(v) => format!("{} f32 values", v.len()),
            Values::F64(v) => format!("{} f64 values", v.len()),
        }
    }
}

const KIND_ABSENT: u64 = 0;
const KIND_F32: u64 = 1;
const KIND_F64: u64 = 2;
const KIND_ABORT: u64 = 255;

/// What precedes a message's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub exchange: u64,
    pub index: u64,
    kind: u64,
    len: u64,
}

impl Header {
    /// Whether `values` (this node's own) has the kind and length of this message.
    pub(crate) fn matches(&self, values: &Values) -> bool {
        self.kind == values.kind() && self.len == values.len() as u64
    }

    /// What the message holds, for an error message.
    pub(crate) fn describe(&self) -> String {
        match self.kind {
            KIND_ABSENT => "no gradient".into(),
            KIND_F32 => format!("{} f32 values", self.len),
            KIND_F64 => format!("{} f64 values", self.len),
            other => format!("values of unknown kind {other}"),
        }
    }
}

/// A message read: values follow, or the sender stopped the run.
pub(crate) enum Incoming {
    Values(Header),
    Abort(String),
}

pub(crate) fn write_u64(w: &mut impl Write, value: u64) -> io::Result<()> {
    w.write_all(&value.to_le_bytes())
}

pub(crate) fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut bytes = [0; 8];
    r.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

pub(crate) fn write_text(w: &mut impl Write, text: &str) -> io::Result<()> {
    write_u64(w, text.len() as u64)?;
    w.write_all(text.as_bytes())
}

pub(crate) fn read_text(r: &mut impl Read) -> io::Result<String> {
    let len = read_u64(r)?;
    if len > MAX_TEXT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a text of {len} bytes (at most {MAX_TEXT})"),
        ));
    }
    let mut bytes = vec![0; len as usize];
    r.read_exact(&mut bytes)?;
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes `values` as buffer `index` of exchange `exchange`.
pub(crate) fn write_values(
    w: &mut impl Write,
    exchange: u64,
    index: u64,
    values: &Values,
) -> io::Result<()> {
    write_u64(w, exchange)?;
    write_u64(w, index)?;
    write_u64(w, values.kind())?;
    write_u64(w, values.len() as u64)?;
    match values {
        Values::Absent => Ok(()),
        Values::F32(v) => write_floats(w, v),
        Values::F64(v) => write_floats(w, v),
    }
}

/// A float the wire carries, little-endian.
trait WireFloat: Copy + std::ops::Add<Output = Self> {
    const BYTES: usize;
    fn put(self, into: &mut Vec<u8>);
    fn take(bytes: &[u8]) -> Self;
}

impl WireFloat for f32 {
    const BYTES: usize = 4;
    fn put(self, into: &mut Vec<u8>) {
        into.extend(self.to_le_bytes());
    }
    fn take(bytes: &[u8]) -> Self {
        f32::from_le_bytes(bytes.try_into().expect("4 bytes"))
    }
}

impl WireFloat for f64 {
    const BYTES: usize = 8;
    fn put(self, into: &mut Vec<u8>) {
        into.extend(self.to_le_bytes());
    }
    fn take(bytes: &[u8]) -> Self {
        f64::from_le_bytes(bytes.try_into().expect("8 bytes"))
    }
}

fn write_floats<F: WireFloat>(w: &mut impl Write, values: &[F]) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(CHUNK * F::BYTES);
    for chunk in values.chunks(CHUNK) {
        bytes.clear();
        chunk.iter().for_each(|x| x.put(&mut bytes));
        w.write_all(&bytes)?;
    }
    Ok(())
}

/// Tells the other end that this node stopped the run, and why.
pub(crate) fn write_abort(w: &mut impl Write, reason: &str) -> io::Result<()> {
    for word in [0, 0, KIND_ABORT, 0] {
        write_u64(w, word)?;
    }
    write_text(w, reason)
}

/// Reads the next message's header (or its abort and reason).
pub(crate) fn read_header(r: &mut impl Read) -> io::Result<Incoming> {
    let exchange = read_u64(r)?;
    let index = read_u64(r)?;
    let kind = read_u64(r)?;
    let len = read_u64(r)?;
    if kind == KIND_ABORT {
        return Ok(Incoming::Abort(read_text(r)?));
    }
    Ok(Incoming::Values(Header {
        exchange,
        index,
        kind,
        len,
    }))
}

/// How a message's values combine with the buffer already held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Combine {
    /// Add them (the coordinator summing a node's gradient into its own).
    Add,
    /// Replace (a node receiving the sum).
    Replace,
}

/// Reads the values of a message whose header [`Header::matches`] `into`, adding them to it or
/// replacing it.
pub(crate) fn read_values(
    r: &mut impl Read,
    into: &mut Values,
    combine: Combine,
) -> io::Result<()> {
    match into {
        Values::Absent => Ok(()),
        Values::F32(v) => read_floats(r, v, combine),
        Values::F64(v) => read_floats(r, v, combine),
    }
}

fn read_floats<F: WireFloat>(
    r: &mut impl Read,
    into: &mut [F],
    combine: Combine,
) -> io::Result<()> {
    let mut bytes = vec![0; CHUNK * F::BYTES];
    for chunk in into.chunks_mut(CHUNK) {
        let bytes = &mut bytes[..chunk.len() * F::BYTES];
        r.read_exact(bytes)?;
        for (x, b) in chunk.iter_mut().zip(bytes.chunks_exact(F::BYTES)) {
            let value = F::take(b);
            *x = match combine {
                Combine::Add => *x + value,
                Combine::Replace => value,
            };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(values: Values) {
        let mut bytes = Vec::new();
        write_values(&mut bytes, 7, 3, &values).unwrap();
        let mut r = bytes.as_slice();
        let Incoming::Values(header) = read_header(&mut r).unwrap() else {
            panic!("values expected")
        };
        assert_eq!((header.exchange, header.index), (7, 3));
        assert!(header.matches(&values));
        let mut sum = values.clone();
        read_values(&mut r, &mut sum, Combine::Add).unwrap();
        let doubled = match &values {
            Values::Absent => Values::Absent,
            Values::F32(v) => Values::F32(v.iter().map(|x| x + x).collect()),
            Values::F64(v) => Values::F64(v.iter().map(|x| x + x).collect()),
        };
        assert_eq!(sum, doubled);
        assert!(r.is_empty(), "every byte read");
    }

    #[test]
    fn values_round_trip_across_chunks() {
        // Longer than a chunk, with a tail, so the chunking is exercised.
        let n = CHUNK * 2 + 5;
        round_trip(Values::F32((0..n).map(|i| i as f32 * 0.5 - 3.0).collect()));
        round_trip(Values::F64((0..n).map(|i| i as f64 * 1e-3 - 7.0).collect()));
        round_trip(Values::Absent);
        round_trip(Values::F32(Vec::new()));
    }

    #[test]
    fn an_abort_carries_its_reason_and_texts_are_bounded() {
        let mut bytes = Vec::new();
        write_abort(&mut bytes, "node 2 differs").unwrap();
        match read_header(&mut bytes.as_slice()).unwrap() {
            Incoming::Abort(reason) => assert_eq!(reason, "node 2 differs"),
            Incoming::Values(_) => panic!("an abort expected"),
        }
        let mut huge = Vec::new();
        write_u64(&mut huge, MAX_TEXT + 1).unwrap();
        assert!(read_text(&mut huge.as_slice()).is_err());
    }
}
