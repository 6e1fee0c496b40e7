//! Convs and pools that step and dilate each axis differently (stride `(2, 1)`, dilation
//! `(1, 2)`, kernels `(3, 1)` and `(1, 3)`), as speech and text-recognition CNNs write them, and
//! ceil-mode pools; on the `digits_rectnet` teacher and the oracle cases made by
//! `fixtures/models/make_digits_rectnet.py`.
//! The recipes, the ONNX round trips and the INT8 runtime run on the teacher with the others
//! (`common::TEACHERS`).

use crate::common::*;
use wick::model::arch::{Op, Pair};
use wick::model::forward::Mode;
use wick::runtime::plan::Plan;

const RECTNET: Teacher = Teacher { name: "digits_rectnet", data: "digits" };

/// Two `(height, width)` pairs.
type Pairs = ((usize, usize), (usize, usize));

/// `(stride, dilation)` of every conv of `m` in graph order, `((kernel, stride), ceil_mode)` of
/// every pool.
fn geometry(m: &wick::model::Model) -> (Vec<Pairs>, Vec<(Pairs, bool)>) {
    let convs = m.arch.nodes.iter().filter_map(|n| if let Op::Conv2d(c) = &n.op { Some((c.stride.hw(), c.dilation.hw())) } else { None }).collect();
    let pools = m
        .arch
        .nodes
        .iter()
        .filter_map(|n| if let Op::MaxPool2d(c) | Op::AvgPool2d(c) = &n.op { Some(((c.kernel_size.hw(), c.stride.unwrap_or(c.kernel_size).hw()), c.ceil_mode)) } else { None })
        .collect();
    (convs, pools)
}

/// The teacher from its safetensors, from both PyTorch exporters' ONNX and from wick's own ONNX
/// export keeps each axis's stride and dilation and its ceil-mode average pool, evaluates to
/// PyTorch's logits within 1e-4 with its accuracy (353/360), and runs on the compiled float
/// runtime with no step left to candle;
/// its INT8 model's integer runtime equals the scalar reference bit for bit.
#[test]
fn a_net_striding_each_axis_its_own_way_matches_pytorch_from_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("rectnet.onnx");
    run_expect(&["export", RECTNET.path().to_str().unwrap(), "--out", exported.to_str().unwrap()], 0);
    let sources = [RECTNET.path(), fixture("onnx/digits_rectnet.legacy.onnx"), fixture("onnx/digits_rectnet.dynamo.onnx"), exported];
    for model in &sources {
        RECTNET.assert_evals_as_pytorch(model, 353, dir.path());
        let m = load(model);
        let (convs, pools) = geometry(&m);
        assert_eq!(convs, [((1, 1), (1, 1)), ((2, 1), (1, 1)), ((1, 2), (1, 2)), ((1, 1), (1, 1)), ((1, 2), (1, 1))], "{}", model.display());
        assert_eq!(pools, [(((1, 2), (1, 2)), false), (((2, 1), (2, 1)), false), (((3, 3), (2, 2)), true)], "{}", model.display());
        assert_eq!(Plan::float(&m).unwrap().candle_steps(), Vec::<&str>::new(), "{}", model.display());
    }
    ptq_runs_bit_exact(&load(&RECTNET.path()), &RECTNET.split("test"));
}

/// The oracle cases run compiled: a GEMM conv with stride `(2, 1)` and dilation `(1, 2)`, a
/// depthwise conv (channel multiplier 2) with stride `(1, 2)` and dilation `(2, 1)`, a grouped
/// conv with stride `(1, 3)`, a `(2, 1)` max pool, and ceil-mode pools (max 1-d and 2-d; average
/// with windows past the padding, and without the padding counted). Each float plan equals
/// candle's forward within 1e-5 and PyTorch's eval logits within 1e-4; each INT8 model's integer
/// runtime equals its scalar reference bit for bit.
#[test]
fn every_per_axis_conv_and_ceil_mode_pool_runs_compiled() {
    let cases = [
        "conv2d_k3x2_s2x1_dil1x2",
        "conv2d_depthwise_s1x2_dil2x1",
        "conv2d_groups2_k2x3_s1x3",
        "maxpool2d_k2x1_s2x1",
        "maxpool2d_k3_s2_ceil",
        "maxpool1d_k3_s2_p1_ceil",
        "avgpool2d_k3_s2_p1_ceil",
        "avgpool2d_k2_ceil_exclpad",
    ];
    for case in cases {
        assert_case_runs_compiled(case);
    }
}

/// Pruning follows channels through convs and pools of any per-axis geometry: the block's input
/// conv and the 1×1 conv added to its `(1, 2)`-pooled output are one group, whose channels the
/// depthwise conv between them carries through; the pruned net keeps each axis's stride and
/// dilation and still maps a batch to 10 logits.
#[test]
fn pruning_keeps_each_axis_geometry() {
    use wick::passes::prune_channels::{deps::analyse, plan, PruneConfig};
    let teacher = load(&RECTNET.path());
    let groups: Vec<Vec<String>> = analyse(&teacher).groups.iter().map(|g| g.producers.clone()).collect();
    assert!(groups.iter().any(|g| g == &["c2", "pw"]), "{groups:?}");
    for conv in ["c1", "c3"] {
        assert!(groups.iter().any(|g| g.iter().any(|p| p == conv)), "{conv} in no group of {groups:?}");
    }
    let cfg = PruneConfig { ratio: 0.5, criterion: wick::passes::prune_channels::importance::Criterion::L1, global: false, round_to: 1, min_channels: 1, ignore: vec![], heads: false, seed: 0 };
    let pruned = wick::passes::prune_channels::apply(&teacher, &plan(&teacher, &cfg, None).unwrap()).unwrap();
    assert_eq!(geometry(&pruned), geometry(&teacher));
    let Some(Op::Conv2d(dw)) = pruned.arch.node("dw").map(|n| n.op.clone()) else { panic!("dw is a conv2d") };
    assert_eq!((dw.in_channels, dw.out_channels, dw.groups, dw.stride, dw.dilation), (16, 16, 16, Pair::Two([1, 2]), Pair::Two([1, 2])));
    let x = RECTNET.dataset("test").x.narrow(0, 0, 16).unwrap();
    assert_eq!(pruned.forward(&x, Mode::Eval).unwrap().dims(), [16, 10]);
}
