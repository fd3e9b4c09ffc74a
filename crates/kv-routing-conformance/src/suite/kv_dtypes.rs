//! KV caches that store another type than the model computes in: the int8 block format
//! against its f64 definition, attention over an int8 cache against the oracle reading the
//! same stored values, and bytes that follow the dtype exactly.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use kv_routing::kv_quantization::quantize_rows;
use kv_routing::{CachePlan, KvCacheLayout, KvDtype, KvRoutingError, Precision, StochasticRouter};

use super::cached::{chunk_steps, feed_cached};
use crate::oracle::{int8_round_trip, OracleModel};
use crate::support::{
    assert_close, logits_to_host, max_abs_diff, random_tokens, tiny_config, tiny_model, to_host,
    tolerance,
};

/// Unit roundoff of the device's float type: the rounding the quantizer's own arithmetic
/// (`max|x| / 127`, `x / s`, `q s`) may add to the format's definition.
fn unit_roundoff<B: Backend>(device: &B::Device) -> f64 {
    match Tensor::<B, 1>::zeros([1], device).dtype() {
        DType::F64 => f64::EPSILON / 2.0,
        DType::F16 => 2f64.powi(-11),
        DType::BF16 => 2f64.powi(-8),
        _ => 2f64.powi(-24),
    }
}

/// Checks quantized rows against the format's definition in f64: per block, the scale is
/// `max|x| / 127` (0 for an all-zero block), the codes are integers in `-127..=127` with the
/// largest at ±127, the dequantized values are exactly `q s` and within `s (1/2 + 128 u)` of
/// the input.
fn check_int8(
    input: &[f64],
    (codes, scales): (&[f64], &[f64]),
    dequantized: &[f64],
    block: usize,
    roundoff: f64,
) -> Result<(), String> {
    for (b, ((x, q), (&scale, back))) in input
        .chunks(block)
        .zip(codes.chunks(block))
        .zip(scales.iter().zip(dequantized.chunks(block)))
        .enumerate()
    {
        let max = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let expected_scale = max / 127.0;
        if (scale - expected_scale).abs() > 4.0 * roundoff * expected_scale {
            return Err(format!(
                "block {b}: scale {scale}, expected max|x| / 127 = {expected_scale}"
            ));
        }
        if let Some(code) = q.iter().find(|c| c.fract() != 0.0 || c.abs() > 127.0) {
            return Err(format!(
                "block {b}: code {code} is not an integer in -127..=127"
            ));
        }
        let largest = q.iter().fold(0.0f64, |m, c| m.max(c.abs()));
        if max > 0.0 && largest != 127.0 {
            return Err(format!("block {b}: largest code {largest}, expected 127"));
        }
        for (i, ((&x, &q), &back)) in x.iter().zip(q).zip(back).enumerate() {
            if (back - q * scale).abs() > 2.0 * roundoff * (q * scale).abs() {
                return Err(format!(
                    "block {b} value {i}: read back as {back}, but code {q} x scale {scale} = {}",
                    q * scale
                ));
            }
            let bound = scale * (0.5 + 128.0 * roundoff);
            if (back - x).abs() > bound {
                return Err(format!(
                    "block {b} value {i}: {x} read back as {back}, error {:.3e} above the bound {bound:.3e}",
                    (back - x).abs()
                ));
            }
        }
    }
    Ok(())
}

/// Rows of every magnitude (1e-3 to 1e2 from head to head), an all-zero block, a block with
/// one outlier: quantized and read back within the format's bound on this backend, blocks of 32
/// for heads of 64. The check itself is shown to see a scale 1% off, a code off by one, and a
/// read-back that forgets the scale.
pub fn int8_rows_round_trip_within_their_bound<B: Backend>(device: &B::Device) {
    let format = KvDtype::Int8.row_format::<B>(device, 64).unwrap();
    let (_, block) = format.scale.expect("int8 rows have scales");
    assert_eq!((block, format.blocks()), (32, 2));
    let expected_codes = if B::supports_dtype(device, DType::I8) {
        DType::I8
    } else {
        DType::I32
    };
    assert_eq!(format.element, expected_codes);

    let shape = [2, 3, 5, 64];
    let mut values: Vec<f64> = random_tokens(7, 2 * 3 * 5 * 64, 2001)
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let magnitude = 10f64.powi((i / 64 % 6) as i32 - 3);
            (t as f64 - 1000.0) / 1000.0 * magnitude
        })
        .collect();
    values[64..96].fill(0.0);
    values[200] = 250.0;
    let rows = Tensor::<B, 4>::from_data(TensorData::new(values, shape), device);
    let input = to_host(rows.clone());
    let quantized = quantize_rows(rows, block, format.element);
    assert_eq!(quantized.codes.dtype(), format.element);
    assert_eq!(quantized.scales.dims(), [2, 3, 5, 2]);
    let codes: Vec<f64> = quantized.codes.clone().into_data().iter::<f64>().collect();
    let scales = to_host(quantized.scales.clone());
    let back = to_host(quantized.dequantize());
    let roundoff = unit_roundoff::<B>(device);
    check_int8(&input, (&codes, &scales), &back, block, roundoff).unwrap();

    let widened = |codes: &[f64], scales: &[f64]| -> Vec<f64> {
        codes
            .chunks(block)
            .zip(scales)
            .flat_map(|(q, s)| q.iter().map(move |q| q * s))
            .collect()
    };
    let off_scales: Vec<f64> = scales.iter().map(|s| s * 1.01).collect();
    let mut off_code = codes.clone();
    off_code[17] += 1.0;
    let mutants = [
        (
            "a scale 1% off",
            codes.clone(),
            off_scales.clone(),
            widened(&codes, &off_scales),
        ),
        (
            "a code off by one",
            off_code.clone(),
            scales.clone(),
            widened(&off_code, &scales),
        ),
        (
            "a read-back without the scale",
            codes.clone(),
            scales.clone(),
            codes.clone(),
        ),
    ];
    for (name, codes, scales, back) in mutants {
        assert!(
            check_int8(&input, (&codes, &scales), &back, block, roundoff).is_err(),
            "the int8 check does not see {name}"
        );
    }
}

/// A model serving from an int8 cache: cached prefill and decode steps, and the full-sequence
/// pass of the same model, equal the f64 oracle reading every key and value row through the
/// format's f64 definition, under a full, a shared and a sampled route; and they differ from
/// the native cache's logits (the format is in effect).
pub fn int8_cache_matches_the_oracle_on_its_stored_values<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let native = tiny_model::<B>(&config, device);
    let model = native.clone().with_kv_dtype(KvDtype::Int8).unwrap();
    let oracle = OracleModel::from_model(&native, &config);
    let (_, block) = model.kv_row_format().unwrap().scale.unwrap();
    let tolerance = tolerance::<B>(device);
    let sequences = vec![random_tokens(21, 9, 37), random_tokens(22, 9, 37)];
    let routes = [
        CachePlan::full(config.n_layers).unwrap().route(),
        CachePlan::every_kth(config.n_layers, 2).unwrap().route(),
        StochasticRouter::new(config.n_layers, 1.0, 5)
            .unwrap()
            .route_for_step(0),
    ];
    let steps = chunk_steps(&sequences, &[5, 1, 2, 1]);
    for route in routes {
        let mut cache = model.new_cache(2, 9, route.clone()).unwrap();
        let cached = feed_cached(&model, &mut cache, &steps);
        let mut native_cache = native.new_cache(2, 9, route.clone()).unwrap();
        let native_rows = feed_cached(&native, &mut native_cache, &steps);
        let uncached = logits_to_host(model.forward_tokens(&sequences, &route).unwrap());
        let mut largest_effect = 0.0f64;
        for (b, tokens) in sequences.iter().enumerate() {
            let expected = oracle.logits_stored_as(tokens, |_| route.clone(), &|row| {
                int8_round_trip(row, block)
            });
            for (p, row) in expected.iter().enumerate() {
                let context = format!("route {route}, sequence {b}, position {p}");
                assert_close(&cached[b][p], row, tolerance, &format!("cached, {context}"));
                assert_close(
                    &uncached[b][p],
                    row,
                    tolerance,
                    &format!("uncached, {context}"),
                );
                largest_effect = largest_effect.max(max_abs_diff(&native_rows[b][p], row));
            }
        }
        assert!(
            largest_effect > 100.0 * tolerance.abs,
            "route {route}: the int8 cache's logits equal the native cache's ({largest_effect:.2e})"
        );
    }
}

/// Every KV dtype the backend stores holds exactly `|sources| x 2 x batch x heads x capacity x
/// row bytes` (int8: one code a value and one scale a block; a float type: its size), as the
/// layout's formula and the model's per-token figure say, before and after appending; cached
/// steps of a float type of its own equal the full-sequence pass reading the same rounded
/// values. A float type the backend cannot store is refused by name.
pub fn cache_bytes_follow_the_kv_dtype<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let native = tiny_model::<B>(&config, device);
    let tolerance = tolerance::<B>(device);
    let float_bytes = Tensor::<B, 1>::zeros([1], device).dtype().size();
    let code_bytes = if B::supports_dtype(device, DType::I8) {
        1
    } else {
        4
    };
    let (batch, capacity) = (2, 10);
    let route = CachePlan::every_kth(config.n_layers, 2).unwrap().route();
    let sequences = vec![random_tokens(31, 7, 37), random_tokens(32, 7, 37)];
    let mut dtypes = vec![
        (KvDtype::Native, 8 * float_bytes),
        (KvDtype::Int8, 8 * code_bytes + float_bytes),
    ];
    for (precision, dtype) in [
        (Precision::F32, DType::F32),
        (Precision::F16, DType::F16),
        (Precision::BF16, DType::BF16),
    ] {
        let kv = KvDtype::Float(precision);
        if B::supports_dtype(device, dtype) {
            dtypes.push((kv, 8 * dtype.size()));
        } else {
            match native.clone().with_kv_dtype(kv) {
                Err(KvRoutingError::InvalidConfig(why)) => {
                    assert!(why.contains(precision.name()), "{why}")
                }
                other => panic!("{kv} on a backend without it: {:?}", other.map(|_| ())),
            }
        }
    }
    for (dtype, row_bytes) in dtypes {
        let model = native.clone().with_kv_dtype(dtype).unwrap();
        let row = model.kv_row_format().unwrap();
        assert_eq!(row.bytes(), row_bytes, "{dtype}: bytes of a row");
        let expected = route.sources().len() * 2 * batch * 2 * capacity * row_bytes;
        let layout = KvCacheLayout {
            batch_size: batch,
            n_layers: config.n_layers,
            n_kv_heads: 2,
            head_dim: 8,
            capacity,
        };
        assert_eq!(layout.bytes_for(&route, row), expected, "{dtype}: formula");
        assert_eq!(
            model.kv_bytes_per_token(&route).unwrap() * batch * capacity,
            expected,
            "{dtype}: per token"
        );
        let mut cache = model.new_cache(batch, capacity, route.clone()).unwrap();
        assert_eq!((cache.bytes(), cache.dtype()), (expected, dtype));
        let cached = feed_cached(&model, &mut cache, &chunk_steps(&sequences, &[4, 1, 2]));
        assert_eq!(cache.bytes(), expected, "{dtype}: after appending");
        assert_eq!(cache.copied_writes(), 0, "{dtype}: a view was kept");
        let uncached = logits_to_host(model.forward_tokens(&sequences, &route).unwrap());
        for (b, rows) in uncached.iter().enumerate() {
            for (p, row) in rows.iter().enumerate() {
                assert_close(
                    &cached[b][p],
                    row,
                    tolerance,
                    &format!("{dtype} cache, sequence {b}, position {p}"),
                );
            }
        }
    }
}
