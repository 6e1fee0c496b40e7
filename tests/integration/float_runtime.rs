//! The compiled float runtime (`Plan::float`: BatchNorm folded, channels-last packed
//! f32 GEMMs, fused ReLU, the candle executor for ops without a kernel) against the candle
//! executor it replaces for inference.

use crate::common::*;
use wick::model::forward::Mode;
use wick::model::Model;
use wick::runtime::plan::Plan;

fn logits(m: &Model, x: &candle_core::Tensor) -> (Vec<f32>, Vec<f32>) {
    let plan = Plan::float(m).unwrap();
    let fast: Vec<f32> = plan.predict(x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<f32> = m.forward(x, Mode::Eval).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    (fast, want)
}

/// Within float rounding of the candle executor on graphs covering every layout case: nested
/// adds, a depthwise conv (2-d, and 1-d dilated), concat along channels and along the length,
/// max and average pooling, every activation, flatten into a linear, BatchNorm after a conv with
/// and without bias, stride 2, conv1d, a one-channel conv and a depthwise conv with channel
/// multiplier 2, a pointwise conv over an odd channel count and a linear
/// over a 3-d tensor, BatchNorm 1-d and 2-d after activations (channels last and not),
/// LayerNorm and softmax, `transpose` (of a channels-last conv output and of logical values),
/// `mean` (with and without its dim kept), and `amax` and `sum` of a conv's spatial axes. Every op runs compiled: no step falls back to the candle executor. Sums run in another order and BatchNorm is
/// folded, so the logits differ by rounding only: relative 1e-5 of the largest logit. In the
/// branchy graph two adds fuse into the conv before them (one with the ReLU after it); the
/// third reads an add already fused and stays a step.
#[test]
fn float_plan_equals_the_candle_executor_on_every_layout_case() {
    let branchy = wick::model::load::read_arch(&fixture("arch/branchy.arch.json")).unwrap();
    let adds: Vec<(String, String, bool)> = Plan::float(&random_model(branchy.clone(), 40).0).unwrap().residual_adds().into_iter().map(|(a, b, r)| (a.into(), b.into(), r)).collect();
    assert_eq!(adds, vec![("b2".into(), "stem".into(), true), ("c1".into(), "b2".into(), false)]);
    for arch in [branchy, conv1d_arch(), ops_1d_arch(), norms_arch(), one_channel_groups_arch(), axes_1d_arch(), axes_2d_arch(), spatial_reductions_arch()] {
        let (m, d) = random_model(arch, 40);
        assert_eq!(Plan::float(&m).unwrap().candle_steps(), Vec::<&str>::new(), "{}", m.source);
        let (fast, want) = logits(&m, &d.x);
        assert_eq!(fast.len(), want.len());
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        assert!(max_abs_diff(&fast, &want) <= 1e-5 * scale.max(1.0), "{}: {} (scale {scale})", m.source, max_abs_diff(&fast, &want));
    }
}

/// On every trained teacher and its whole test split: the same predictions as the candle
/// executor (so the same accuracy), logits within 1e-4. `digits_dsnet`'s flatten of its pooled
/// conv output reaches its linear as stored, channels last (the linear's columns permuted).
#[test]
fn float_plan_gives_the_teachers_their_accuracy() {
    let dsnet = Teacher { name: "digits_dsnet", data: "digits" };
    assert_eq!(Plan::float(&load(&dsnet.path())).unwrap().stored_order_flattens(), vec!["flat"]);
    for t in &TEACHERS {
        let test = t.dataset("test");
        let m = load(&t.path());
        assert_eq!(Plan::float(&m).unwrap().candle_steps(), Vec::<&str>::new(), "{}", t.name);
        let (fast, want) = logits(&m, &test.x);
        assert!(max_abs_diff(&fast, &want) < 1e-4, "{}: {}", t.name, max_abs_diff(&fast, &want));
        let argmax = |v: &[f32]| v.chunks(10).map(wick::eval::argmax).collect::<Vec<_>>();
        assert_eq!(argmax(&fast), argmax(&want), "{}", t.name);
    }
}

/// A batch cut across threads (one part per thread, here 3 uneven parts of 120 samples, or of
/// 5), and each part run in chunks of samples (1, or 7 with a shorter last one), gives
/// bit-identical logits to one pass, for the float and the integer plan; so do batches of 1
/// and 3, whose layers' products are split over 2 or 3 threads instead: every row depends on
/// its own sample and the batch's size only (the ResNet's 3×3 convs take their Winograd form by
/// the whole batch of 120, also in chunks of one sample). On the ResNet, a ConvNeXt block and
/// a TextCNN.
#[test]
fn batch_split_across_threads_and_chunks_is_bit_identical() {
    let block = fixture("onnx/convnext_block.data.safetensors");
    let block_x = candle_core::Tensor::from_vec(wick::tensor_file::TensorFile::read(&block).unwrap().f32("x").unwrap(), (5, 4, 6, 6), &candle_core::Device::Cpu).unwrap();
    let tokens = wick::data::Dataset::read(&fixture("data/digits_tokens_test.safetensors")).unwrap();
    // The ResNet; a ConvNeXt block (permutes, linears over every pixel, layer scale); a TextCNN
    // (an embedding, the maximum over time of channels-last convs).
    let cases = [
        (load(&resnet_path()), data("test").x.narrow(0, 0, 120).unwrap(), data("train")),
        (load(&fixture("onnx/convnext_block.legacy.onnx")), block_x.clone(), wick::data::Dataset { name: "block".into(), x: block_x, y: vec![0; 5], sha256: String::new() }),
        (load(&fixture("onnx/textcnn.legacy.onnx")), tokens.x.narrow(0, 0, 120).unwrap(), wick::data::Dataset::read(&fixture("data/digits_tokens_train.safetensors")).unwrap()),
    ];
    for (m, x, calib) in cases {
        let settings = wick::passes::calibrate::CalibrateSettings { method: wick::calibrate::Method::Minmax, samples: 256, ..Default::default() };
        let q = wick::passes::calibrate::ptq(&m, &calib, &settings, &wick::progress::Silent).unwrap().int8;
        let on_samples = |threads: usize, plan: &Plan, x: &candle_core::Tensor| -> Vec<f32> {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| plan.predict(x)).unwrap().flatten_all().unwrap().to_vec1().unwrap()
        };
        let on = |threads: usize, plan: &Plan| on_samples(threads, plan, &x);
        for mut plan in [Plan::float(&m).unwrap(), Plan::int8(&q).unwrap()] {
            plan.set_chunk_samples(usize::MAX);
            let one = on(1, &plan);
            // Too few samples to share out: the layers' products split over the threads instead.
            for n in [1, 3] {
                let few = x.narrow(0, 0, n).unwrap();
                assert_eq!(on_samples(2, &plan, &few), on_samples(1, &plan, &few), "{}: {n} samples on 2 threads", m.source);
                assert_eq!(on_samples(3, &plan, &few), on_samples(1, &plan, &few), "{}: {n} samples on 3 threads", m.source);
            }
            assert_eq!(one.len(), 10 * x.dim(0).unwrap(), "{}", m.source);
            assert_eq!(on(3, &plan), one, "{}", m.source);
            for chunk in [1, 7] {
                plan.set_chunk_samples(chunk);
                assert_eq!(on(1, &plan), one, "{}: chunks of {chunk}", m.source);
                assert_eq!(on(3, &plan), one, "{}: chunks of {chunk}, 3 threads", m.source);
            }
        }
    }
}

/// A ShuffleNet unit: the channels split in two (`narrow`), one half through a conv branch,
/// joined (`concat`) and shuffled as PyTorch writes it, `view(n, 2, c/2, h, w)`,
/// `transpose(1, 2)`, `reshape(n, c, h, w)`. The three shuffle nodes are one step that permutes
/// whole channels (output `j` is input `(j mod 2)·c/2 + j/2`), in the channels-last layout the
/// convs keep, and agree with the candle executor; in INT8 the integer runtime equals the
/// scalar reference. A run of the same three ops that moves positions within channels (a
/// transpose of the two spatial axes of a square map) is no channel permutation and stays
/// three steps, also exact.
#[test]
fn channel_shuffle_is_one_permutation_step() {
    let node = |name: &str, op: &str, inputs: &[&str], more: serde_json::Value| {
        let mut n = serde_json::json!({"name": name, "op": op, "inputs": inputs});
        n.as_object_mut().unwrap().extend(more.as_object().unwrap().clone());
        n
    };
    let arch = |reshaped: [usize; 4], swap: (i64, i64)| -> wick::model::arch::Arch {
        let j = serde_json::json!({"format": "wick-arch", "version": 1, "input": {"shape": [3, 6, 6]}, "nodes": [
            node("stem", "conv2d", &["input"], serde_json::json!({"in_channels": 3, "out_channels": 12, "kernel_size": 3, "padding": 1})),
            node("stem_act", "relu", &["stem"], serde_json::json!({})),
            node("a", "narrow", &["stem_act"], serde_json::json!({"dim": 1, "start": 0, "length": 6})),
            node("b", "narrow", &["stem_act"], serde_json::json!({"dim": 1, "start": 6, "length": 6})),
            node("branch", "conv2d", &["b"], serde_json::json!({"in_channels": 6, "out_channels": 6, "kernel_size": 1})),
            node("branch_act", "relu", &["branch"], serde_json::json!({})),
            node("joined", "concat", &["a", "branch_act"], serde_json::json!({"dim": 1})),
            node("view", "reshape", &["joined"], serde_json::json!({"shape": reshaped})),
            node("swap", "transpose", &["view"], serde_json::json!({"dim0": swap.0, "dim1": swap.1})),
            node("shuffled", "reshape", &["swap"], serde_json::json!({"shape": [12, 6, 6]})),
            node("mix", "conv2d", &["shuffled"], serde_json::json!({"in_channels": 12, "out_channels": 8, "kernel_size": 3, "groups": 2})),
            node("pool", "global_avg_pool", &["mix"], serde_json::json!({})),
            node("head", "linear", &["pool"], serde_json::json!({"in_features": 8, "out_features": 4}))
        ], "output": "head"});
        serde_json::from_value(j).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    for (reshaped, swap, perm) in [([2, 6, 6, 6], (1, 2)), ([12, 6, 6, 1], (2, 3))].into_iter().zip([Some(vec![0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]), None]).map(|((r, s), p)| (r, s, p)) {
        let (m, d) = random_model(arch(reshaped, swap), 40);
        let plan = Plan::float(&m).unwrap();
        let found: Vec<(String, Vec<usize>)> = plan.channel_permutations().into_iter().map(|(n, p)| (n.to_string(), p.to_vec())).collect();
        assert_eq!(found, perm.iter().map(|p| ("shuffled".to_string(), p.clone())).collect::<Vec<_>>(), "{reshaped:?}");
        assert_eq!(plan.candle_steps(), Vec::<&str>::new());
        let (fast, want) = logits(&m, &d.x);
        assert!(max_abs_diff(&fast, &want) <= 1e-5, "{reshaped:?}: {}", max_abs_diff(&fast, &want));
        let data = dir.path().join("x.safetensors");
        d.x.save_safetensors("x", &data).unwrap();
        ptq_runs_bit_exact(&m, &data);
    }
}
