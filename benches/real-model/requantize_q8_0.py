#!/usr/bin/env python3
"""Writes a Q8_0 GGUF file from a Q4_1 one: every Q4_1 tensor dequantized and requantized to Q8_0
with the `gguf` package (`pip install gguf numpy`), metadata and the other tensors as they are.
The Q8_0 file of docs/benchmarks.md where llama.cpp's own quantizer is not at hand.

Usage: requantize_q8_0.py IN.Q4_1.gguf OUT.Q8_0.gguf
"""
import sys, numpy as np, gguf
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType as T
src, dst = sys.argv[1], sys.argv[2]
r = GGUFReader(src)
arch = r.fields["general.architecture"]
arch = bytes(arch.parts[arch.data[0]]).decode()
w = GGUFWriter(dst, arch, use_temp_file=False)
for name, field in r.fields.items():
    if name.startswith("GGUF.") or name == "general.architecture":
        continue
    vtype = field.types[0]
    if vtype == gguf.GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == gguf.GGUFValueType.STRING:
            val = [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data]
        else:
            val = [field.parts[i].tolist()[0] for i in field.data]
        w.add_key_value(name, val, vtype, sub_type=sub)
    elif vtype == gguf.GGUFValueType.STRING:
        w.add_key_value(name, bytes(field.parts[field.data[0]]).decode("utf-8", errors="surrogateescape"), vtype)
    else:
        w.add_key_value(name, field.parts[field.data[0]].tolist()[0], vtype)
for t in r.tensors:
    shape = [int(x) for x in reversed(t.shape.tolist())]  # numpy order
    if t.tensor_type == T.Q4_1:
        values = gguf.quants.dequantize(t.data, T.Q4_1).reshape(shape)
        data = gguf.quants.quantize(values.astype(np.float32), T.Q8_0)
        w.add_tensor(t.name, data, raw_dtype=T.Q8_0)
    else:
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print("wrote", dst)
