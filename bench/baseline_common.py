"""What the baselines share: reading a safetensors file into numpy arrays (the format is an 8-byte
header length, a JSON header, then raw little-endian data, so no extra package is needed), and
the median timing of a workload."""
import json, struct, time
import numpy as np

DT = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "U8": np.uint8, "I8": np.int8}

def read_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); data = b[8 + n:]
    out = {}
    for k, v in h.items():
        if k == "__metadata__" or v["dtype"] not in DT:
            continue
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(data[s:e], dtype=DT[v["dtype"]]).reshape(v["shape"])
    return out

def pair(v):
    return [v, v] if isinstance(v, int) else list(v)


def median_ms(f, reps):
    """Median milliseconds of `reps` calls of `f` after a tenth of a second of warm-up calls
    (3 at least), as wick's own measurement warms up."""
    start, n = time.perf_counter(), 0
    while n < 3 or time.perf_counter() - start < 0.1:
        f()
        n += 1
    t = []
    for _ in range(reps):
        s = time.perf_counter(); f(); t.append((time.perf_counter() - s) * 1e3)
    t.sort()
    return t[len(t) // 2]
