//! A bounds check of MessagePack files before Burn's recorder decodes them.
//!
//! Burn's `NamedMpkFileRecorder` hands the file to `rmp_serde`, which sizes buffers by the
//! lengths the file declares: a damaged length prefix (found by the checkpoint fuzz test,
//! `crates/kv-routing-train/tests/fuzz_checkpoints.rs`) made it request 2^56 bytes and abort
//! the process. Walking the encoding first, and refusing any string, binary, extension, array
//! or map that declares more than the bytes left in the file, bounds every such allocation by
//! the file's size.

use rmp::Marker;

/// Checks that `bytes` is one complete MessagePack value whose every declared length fits in
/// the file. Returns what is wrong and where.
pub(crate) fn check_msgpack_bounds(bytes: &[u8]) -> Result<(), String> {
    let mut at = 0usize;
    // Values still to read: the root, then the items of every container met.
    let mut pending: usize = 1;
    while pending > 0 {
        pending -= 1;
        let marker_at = at;
        let marker = Marker::from_u8(*bytes.get(at).ok_or_else(|| ended(marker_at))?);
        at += 1;
        let read_len = |at: &mut usize, width: usize| -> Result<usize, String> {
            let field = bytes
                .get(*at..*at + width)
                .ok_or_else(|| ended(marker_at))?;
            *at += width;
            Ok(field.iter().fold(0usize, |n, &b| (n << 8) | b as usize))
        };
        // (payload bytes to skip, items that follow)
        let (payload, items) = match marker {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                (0, 0)
            }
            Marker::U8 | Marker::I8 => (1, 0),
            Marker::U16 | Marker::I16 => (2, 0),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
            Marker::FixStr(n) => (n as usize, 0),
            Marker::Str8 | Marker::Bin8 => (read_len(&mut at, 1)?, 0),
            Marker::Str16 | Marker::Bin16 => (read_len(&mut at, 2)?, 0),
            Marker::Str32 | Marker::Bin32 => (read_len(&mut at, 4)?, 0),
            Marker::FixExt1 => (2, 0),
            Marker::FixExt2 => (3, 0),
            Marker::FixExt4 => (5, 0),
            Marker::FixExt8 => (9, 0),
            Marker::FixExt16 => (17, 0),
            Marker::Ext8 => (read_len(&mut at, 1)? + 1, 0),
            Marker::Ext16 => (read_len(&mut at, 2)? + 1, 0),
            Marker::Ext32 => (read_len(&mut at, 4)? + 1, 0),
            Marker::FixArray(n) => (0, n as usize),
            Marker::Array16 => (0, read_len(&mut at, 2)?),
            Marker::Array32 => (0, read_len(&mut at, 4)?),
            Marker::FixMap(n) => (0, 2 * n as usize),
            Marker::Map16 => (0, 2 * read_len(&mut at, 2)?),
            Marker::Map32 => (0, 2 * read_len(&mut at, 4)?),
            Marker::Reserved => {
                return Err(format!(
                    "byte {marker_at}: 0xc1 is not a MessagePack marker"
                ))
            }
        };
        let left = bytes.len() - at;
        if payload > left {
            return Err(format!(
                "byte {marker_at}: a value of {payload} bytes, but {left} bytes are left"
            ));
        }
        at += payload;
        // Every item takes at least one byte.
        if items > left.saturating_sub(pending) {
            return Err(format!(
                "byte {marker_at}: a container of {items} items, but {left} bytes are left"
            ));
        }
        pending += items;
    }
    Ok(())
}

fn ended(at: usize) -> String {
    format!("the file ends inside the value at byte {at}")
}

#[cfg(test)]
mod tests {
    use super::check_msgpack_bounds;

    #[test]
    fn complete_values_pass_and_overlong_lengths_fail() {
        // {"a": [1, 2.0f32], "b": bin8 of 2 bytes}
        let valid = [
            0x82, 0xa1, b'a', 0x92, 0x01, 0xca, 0, 0, 0, 0x40, 0xa1, b'b', 0xc4, 2, 7, 7,
        ];
        assert_eq!(check_msgpack_bounds(&valid), Ok(()));
        for cut in 0..valid.len() {
            assert!(check_msgpack_bounds(&valid[..cut]).is_err(), "cut at {cut}");
        }
        // bin32 declaring 2^32 - 1 bytes; array32 declaring 2^32 - 1 items.
        assert!(check_msgpack_bounds(&[0xc6, 0xff, 0xff, 0xff, 0xff, 0]).is_err());
        assert!(check_msgpack_bounds(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0]).is_err());
        assert!(check_msgpack_bounds(&[0xc1]).is_err());
    }
}
