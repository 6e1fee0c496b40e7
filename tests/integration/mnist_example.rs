//! PyTorch's own MNIST example net (`github.com/pytorch/examples`, `mnist/main.py`), the first
//! model many users bring: its head ends in `log_softmax`, so its outputs are log-probabilities.
//! On the `digits_mnist_example` teacher and the `log_softmax` oracle cases made by
//! `fixtures/models/make_digits_mnist_example.py`.

use crate::common::*;
use wick::runtime::plan::Plan;

const EXAMPLE: Teacher = Teacher { name: "digits_mnist_example", data: "digits" };

/// The teacher from its safetensors, from both PyTorch exporters' ONNX (`LogSoftmax`) and from
/// wick's own ONNX export evaluates to PyTorch's log-probabilities within 1e-4 with its accuracy
/// (354/360), on the compiled float runtime with no step left to candle; its INT8 model's
/// integer runtime equals the scalar reference bit for bit. In both plans the flatten hands
/// `fc1` the pooled conv output as it is stored (channels last), `fc1`'s columns permuted to
/// match, with no transpose.
#[test]
fn the_pytorch_mnist_example_matches_pytorch_from_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("example.onnx");
    run_expect(&["export", EXAMPLE.path().to_str().unwrap(), "--out", exported.to_str().unwrap()], 0);
    let ops: Vec<String> = crate::onnx::read_proto(&exported).graph.unwrap().node.iter().map(|n| n.op_type.clone()).collect();
    assert_eq!(ops.last().map(String::as_str), Some("LogSoftmax"), "{ops:?}");
    for model in [EXAMPLE.path(), fixture("onnx/digits_mnist_example.legacy.onnx"), fixture("onnx/digits_mnist_example.dynamo.onnx"), exported] {
        EXAMPLE.assert_evals_as_pytorch(&model, 354, dir.path());
        let m = load(&model);
        assert_eq!(m.arch.nodes.last().unwrap().op.name(), "log_softmax", "{}", model.display());
        assert_eq!(Plan::float(&m).unwrap().candle_steps(), Vec::<&str>::new(), "{}", model.display());
    }
    let q = ptq_runs_bit_exact(&load(&EXAMPLE.path()), &EXAMPLE.split("test"));
    assert_eq!(Plan::int8(&q).unwrap().stored_order_flattens(), vec!["flatten"]);
    assert_eq!(Plan::float(&load(&EXAMPLE.path())).unwrap().stored_order_flattens(), vec!["flatten"]);
}

/// The oracle cases run compiled: log_softmax over a linear's features, and over a conv's
/// channels (channels-last in the plan). Each float plan equals candle's forward within 1e-5 and
/// PyTorch's eval outputs within 1e-4; each INT8 model's integer runtime equals its scalar
/// reference bit for bit.
#[test]
fn every_log_softmax_runs_compiled() {
    for case in ["log_softmax_features", "log_softmax_channels"] {
        assert_case_runs_compiled(case);
    }
}

/// `ptq-int8` loses at most 0.3 point on the example net, and `qat-int8` and `distill-int8`
/// (one epoch per pass) pass their 1-point gates: training and distillation read its
/// log-probabilities as logits (a shift of each row, which changes neither the softmax nor the
/// cross-entropy), and the artifact keeps the head's log_softmax.
#[test]
fn the_pytorch_mnist_example_compresses() {
    let dir = tempfile::tempdir().unwrap();
    for recipe in ["ptq-int8", "qat-int8", "distill-int8"] {
        let (_, q) = EXAMPLE.compress_within_gate(recipe, &dir.path().join(recipe));
        assert_eq!(q.model.arch.nodes.last().unwrap().op.name(), "log_softmax", "{recipe}");
    }
}
