//! Per-sample normalisations: `groupnorm` carries PyTorch's `nn.GroupNorm` and, with one channel
//! per group, `nn.InstanceNorm1d`/`2d` (`fixtures/models/make_elementwise_cases.py`,
//! `fixtures/onnx/make_norms.py`).

use crate::common::*;
use wick::model::arch::Op;

/// GroupNorm(2, 8) after a conv2d and InstanceNorm1d with its affine map after a conv1d: the
/// training oracle's cases run compiled (the float plan equal to candle's forward within 1e-5
/// and to PyTorch's eval logits within 1e-4, the integer runtime to its scalar reference bit for
/// bit), and wick's ONNX export of each (`InstanceNormalization`, between `Reshape`s for groups
/// of several channels) reads back to PyTorch's logits.
#[test]
fn group_and_instance_norms_run_compiled_and_through_onnx() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["groupnorm", "instancenorm"] {
        assert_case_runs_compiled_and_through_onnx(case, dir.path());
    }
}

/// Both exporters' GroupNorm (an `InstanceNormalization` of `[N, G, C/G·H·W]` between
/// `Reshape`s, then `Mul` and `Add`) and InstanceNorm2d with and without its affine map give
/// PyTorch's logits within 1e-5, compiled with no candle step, and read back from wick's own
/// export.
#[test]
fn pytorch_group_and_instance_norms_import() {
    let dir = tempfile::tempdir().unwrap();
    for (e, m) in assert_both_exports_import("norms", dir.path()) {
        let norms: Vec<(usize, usize)> = m.arch.nodes.iter().filter_map(|n| if let Op::GroupNorm(c) = &n.op { Some((c.num_groups, c.num_channels)) } else { None }).collect();
        assert_eq!(norms, [(4, 4), (8, 8), (8, 8)], "{e}");
    }
}

/// A group's channels are normalised together, so pruning keeps them all: the conv before a
/// GroupNorm of two groups is in no pruning group. A refused `num_groups` names the node.
#[test]
fn groupnorm_keeps_its_channels_whole_and_checks_its_groups() {
    let m = load(&fixture("reference/gradients/groupnorm.safetensors"));
    let deps = wick::passes::prune_channels::deps::analyse(&m);
    assert!(deps.groups.iter().all(|g| !g.producers.contains(&"conv".to_string())), "{:?}", deps.groups);
    let err = inspect_case_with_arch_edit("groupnorm", "\"num_groups\": 2", "\"num_groups\": 3");
    assert!(err.contains("norm") && err.contains("not a multiple of num_groups 3"), "{err}");
}
