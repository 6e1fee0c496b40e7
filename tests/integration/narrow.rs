//! `narrow`: PyTorch's `x.narrow(dim, start, length)`, and each piece of `chunk` and `split`
//! (`fixtures/models/make_elementwise_cases.py`, `fixtures/onnx/make_split.py`).

use crate::common::*;
use wick::model::arch::Op;

/// A gated linear unit (two `narrow`s of the channels, a sigmoid, a product) and a narrow of the
/// steps counted from the end: the training oracle's case runs compiled (the float plan equal to
/// candle's forward within 1e-5 and to PyTorch's eval logits within 1e-4, the integer runtime to
/// its scalar reference bit for bit), and wick's ONNX export (`Slice`) reads back to PyTorch's
/// logits.
#[test]
fn narrow_runs_compiled_and_through_onnx() {
    let dir = tempfile::tempdir().unwrap();
    assert_case_runs_compiled_and_through_onnx("narrow", dir.path());
}

/// Both exporters' `chunk`, `F.glu`, `x[:, :, 1:7]` and `torch.split` (the legacy exporter's
/// `Slice`s and `Split`, the dynamo exporter's `Split`s and `Slice`) read as seven `narrow`s,
/// give PyTorch's logits within 1e-5 compiled with no candle step, read back from wick's own
/// export, and run in integers bit for bit as the scalar reference.
#[test]
fn pytorch_chunk_glu_slice_and_split_import() {
    let dir = tempfile::tempdir().unwrap();
    for (e, m) in assert_both_exports_import("split", dir.path()) {
        let cuts: Vec<(i64, i64, usize)> = m.arch.nodes.iter().filter_map(|n| if let Op::Narrow(c) = &n.op { Some((c.dim, c.start, c.length)) } else { None }).collect();
        assert_eq!(cuts, [(1, 0, 4), (1, 4, 4), (1, 0, 8), (1, 8, 8), (2, 1, 6), (1, 0, 3), (1, 3, 5)], "{e}");
        ptq_runs_bit_exact(&m, &fixture("onnx/split.data.safetensors"));
    }
}

/// A narrow whose positions leave its dim is exit 2 naming the node and the bounds.
#[test]
fn narrow_out_of_its_dim_is_refused_by_name() {
    let err = inspect_case_with_arch_edit("narrow", "\"start\": -4", "\"start\": -2");
    assert!(err.contains("steps") && err.contains("start -2 and length 3 do not lie in dim -1 of size 5"), "{err}");
}
