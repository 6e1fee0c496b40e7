//! PTQ and QAT accuracy, the artifact's size and format, integer execution versus the
//! simulation and the reference kernels, and bad input.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use wick::calibrate::Method;
use wick::passes::calibrate::{ptq, CalibrateSettings};
use wick::passes::fold_batchnorm::fold_batchnorm;
use wick::progress::Silent;
use wick::quant::ActType;
use wick::runtime::plan::Plan;
use wick::runtime::{kernels::Kernel, Exec, Executor};
use wick::tensor_file::{self, RawTensor, TensorFile};

fn quantize_cli(model: &Path, method: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let report = out.with_extension("report.json");
    let (train, test) = (digits("train"), digits("test"));
    let mut args = vec![
        "quantize",
        model.to_str().unwrap(),
        "--calib",
        train.to_str().unwrap(),
        "--method",
        method,
        "--samples",
        "256",
        "--test",
        test.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    run_expect(&args, 0);
    serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
}

#[test]
fn ptq_entropy_and_minmax_lose_at_most_three_tenths_of_a_point() {
    let dir = tempfile::tempdir().unwrap();
    for (model, name) in [(resnet_path(), "resnet"), (mlp_path(), "mlp")] {
        for method in ["entropy", "minmax"] {
            let out = dir.path().join(format!("{name}.{method}.int8.safetensors"));
            let r = quantize_cli(&model, method, &out, &[]);
            let c = &r["comparison"];
            let drop = c["drop_points"].as_f64().unwrap();
            assert!(drop <= 0.3, "{name} {method}: drop {drop} points");
            // The artifact is at most 27% of the FP32 file.
            let ratio = c["size_ratio"].as_f64().unwrap();
            assert!(ratio <= 0.27, "{name}: size ratio {ratio}");
            assert_eq!(c["bytes_after"].as_u64().unwrap(), std::fs::metadata(&out).unwrap().len());
            // The report's number is what `wick eval` says of the written file.
            let (o, _) = run_expect(&["eval", out.to_str().unwrap(), "--data", digits("test").to_str().unwrap(), "--json", "--quiet"], 0);
            let e: serde_json::Value = serde_json::from_str(&o).unwrap();
            assert_eq!(e["correct"], c["compressed"]["correct"]);
            assert_eq!(e["execution"], "int8 integer execution");
        }
    }
}

fn ptq_lib(model: &wick::model::Model, calib: &wick::data::Dataset, method: Method) -> wick::artifact::Int8Model {
    let settings = CalibrateSettings { method, samples: 256, activations: ActType::U8, ..Default::default() };
    ptq(model, calib, &settings, &Silent).unwrap().int8
}

/// On every teacher (dense, residual, 1-d and depthwise-separable: every op the fixtures have)
/// the compiled integer plan and the reference executor (scalar integer GEMMs, candle for the
/// float ops) give the same logits bit for bit.
#[test]
fn integer_execution_agrees_with_simulation_and_reference_bit_for_bit() {
    for t in &TEACHERS {
        let (path, test, calib) = (t.path(), t.dataset("test"), t.dataset("train"));
        for method in [Method::Percentile, Method::Mse] {
            let q = ptq_lib(&load(&path), &calib, method);
            let logits = |e: Exec| -> Vec<f32> { Executor::new(&q, e).unwrap().predict(&test.x).unwrap().flatten_all().unwrap().to_vec1().unwrap() };
            let fast = logits(Exec::Integer(Kernel::Fast));
            let reference = logits(Exec::Integer(Kernel::Reference));
            assert_eq!(fast, reference, "{path:?}: fast and reference integer paths must agree bit for bit");
            let sim = logits(Exec::Simulate);
            let argmax = |v: &[f32]| v.chunks(10).map(wick::eval::argmax).collect::<Vec<_>>();
            let agree = wick::eval::agreement(&argmax(&fast), &argmax(&sim));
            assert!(agree >= 0.997, "{path:?} {method:?}: integer vs simulation agreement {agree}");
            // They differ by float rounding of the accumulation, which can move a later layer's
            // input code by one step at a rounding boundary: small against logits of size ~10.
            assert!(max_abs_diff(&fast, &sim) < 0.1, "{}", max_abs_diff(&fast, &sim));
        }
    }
}

/// In the ResNet, each block's add (and the ReLU after it) runs in the output loop of the conv
/// before it, in the INT8 and the float plan alike. A non-finite value a layer computes is an
/// error naming the layer whose input quantisation met it, also where the layer writes that
/// reader's codes itself.
#[test]
fn residual_adds_fuse_into_output_loops() {
    let resnet = ptq_lib(&load(&resnet_path()), &data("train"), Method::Minmax);
    let names = |v: Vec<(&str, &str, bool)>| -> Vec<(String, String, bool)> { v.into_iter().map(|(a, b, k)| (a.to_string(), b.to_string(), k)).collect() };
    let t = |a: &str, b: &str, k: bool| (a.to_string(), b.to_string(), k);
    let adds = vec![t("layer1.0.conv2", "conv1", true), t("layer2.0.downsample.0", "layer2.0.conv2", true), t("layer3.0.downsample.0", "layer3.0.conv2", true)];
    assert_eq!(names(Plan::int8(&resnet).unwrap().residual_adds()), adds);
    assert_eq!(names(Plan::float(&load(&resnet_path())).unwrap().residual_adds()), adds);
    // Each block's first conv, whose only reader is the block's second, writes that conv's
    // input codes; a conv whose output a shortcut reads too writes f32.
    let coded: Vec<(String, String)> = Plan::int8(&resnet).unwrap().coded_outputs().into_iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    let blocks = ["layer1.0", "layer2.0", "layer3.0"].map(|b| (format!("{b}.conv1"), format!("{b}.conv2")));
    assert_eq!(coded, blocks.to_vec());
    let test = data("test");
    let bias = resnet.model.params.get("layer1.0.conv1.bias").expect("BatchNorm folded into a bias");
    bias.set(&candle_core::Tensor::full(f32::INFINITY, bias.as_tensor().dims(), bias.as_tensor().device()).unwrap()).unwrap();
    let err = Plan::int8(&resnet).unwrap().predict(&test.x.narrow(0, 0, 4).unwrap()).unwrap_err().to_string();
    assert!(err.contains("'layer1.0.conv2'") && err.contains("non-finite"), "{err}");
}

#[test]
fn any_safetensors_reader_sees_int8_weights_within_half_a_step_of_the_folded_weights() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = load(&resnet_path());
    let mut q = ptq_lib(&teacher, &data("train"), Method::Minmax);
    let out = dir.path().join("r.int8.safetensors");
    q.info.insert("note".into(), "test".into());
    q.save(&out).unwrap();
    let (folded, fold) = fold_batchnorm(&teacher).unwrap();
    assert_eq!(fold.folded.len(), 9, "every conv's BatchNorm folds");
    // Read with the safetensors crate directly, not wick's artifact reader.
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut checked = 0;
    for node in folded.arch.nodes.iter().filter(|n| wick::model::forward::is_weight_layer(&n.op)) {
        let w = st.tensor(&format!("{}.weight", node.name)).unwrap();
        assert_eq!(w.dtype(), safetensors::Dtype::I8);
        let s = st.tensor(&format!("{}.weight_scale", node.name)).unwrap();
        assert_eq!(s.dtype(), safetensors::Dtype::F32);
        assert_eq!(st.tensor(&format!("{}.input_zero_point", node.name)).unwrap().dtype(), safetensors::Dtype::U8);
        assert_eq!(st.tensor(&format!("{}.input_scale", node.name)).unwrap().shape(), &[1]);
        let scales: Vec<f32> = s.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let fw: Vec<f32> = folded.p(&node.param("weight")).flatten_all().unwrap().to_vec1().unwrap();
        let per = fw.len() / scales.len();
        for (i, (&b, &f)) in w.data().iter().zip(&fw).enumerate() {
            let s = scales[i / per];
            assert!(((b as i8) as f32 * s - f).abs() <= s / 2.0 + 1e-7, "{} [{i}]", node.name);
        }
        checked += 1;
    }
    assert_eq!(checked, 10);
    // The BatchNorm tensors are gone (folded), the biases are float.
    assert!(st.tensor("bn1.running_mean").is_err());
    assert_eq!(st.tensor("conv1.bias").unwrap().dtype(), safetensors::Dtype::F32);
    let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let wick_meta: serde_json::Value = serde_json::from_str(&m.metadata().as_ref().unwrap()["wick"]).unwrap();
    assert_eq!(wick_meta["kind"], "int8");
    assert_eq!(wick_meta["format_version"], 2);
    assert_eq!(wick_meta["quantization"]["weight"]["granularity"], "per_channel");
    assert_eq!(wick_meta["quantization"]["layers"]["conv1"], "u8");
    assert_eq!(wick_meta["note"], "test");
}

#[test]
fn qat_loses_at_most_three_tenths_of_a_point() {
    let dir = tempfile::tempdir().unwrap();
    for (model, epochs) in [(mlp_path(), "3"), (resnet_path(), "1")] {
        let out = dir.path().join("qat.int8.safetensors");
        let report = dir.path().join("qat.json");
        run_expect(
            &[
                "qat",
                model.to_str().unwrap(),
                "--train",
                digits("train").to_str().unwrap(),
                "--val",
                digits("val").to_str().unwrap(),
                "--test",
                digits("test").to_str().unwrap(),
                "--epochs",
                epochs,
                "--distill",
                "--out",
                out.to_str().unwrap(),
                "--report",
                report.to_str().unwrap(),
                "--quiet",
            ],
            0,
        );
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        let drop = r["comparison"]["drop_points"].as_f64().unwrap();
        assert!(drop <= 0.3, "{model:?}: QAT drop {drop}");
        assert_eq!(r["training"]["fit"]["epochs_run"].as_u64().unwrap().to_string(), epochs);
    }
}

fn write_data(dir: &Path, name: &str, x: RawTensor, n: usize) -> PathBuf {
    let p = dir.join(name);
    let mut t = BTreeMap::new();
    t.insert("x".to_string(), x);
    t.insert("y".to_string(), RawTensor::from_i64(vec![n], &vec![0; n]));
    tensor_file::write(&p, &t, &Default::default()).unwrap();
    p
}

fn quantize_err(model: &Path, calib: &Path, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let mut args = vec!["quantize", model.to_str().unwrap(), "--calib", calib.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"];
    args.extend_from_slice(extra);
    let (_, err) = run_expect(&args, 2);
    assert!(!out.exists(), "no artifact on error");
    err
}

#[test]
fn bad_calibration_input() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = write_data(dir.path(), "wrong.safetensors", RawTensor::from_f32(vec![3, 64], &[0.1; 192]), 3);
    let err = quantize_err(&mlp_path(), &wrong, &[]);
    assert!(err.contains("wrong.safetensors") && err.contains("[64]") && err.contains("[1, 8, 8]"), "{err}");
    let empty = write_data(dir.path(), "empty.safetensors", RawTensor::from_f32(vec![0, 1, 8, 8], &[]), 0);
    let err = quantize_err(&mlp_path(), &empty, &[]);
    assert!(err.contains("empty.safetensors") && err.contains("empty"), "{err}");
    // Finite inputs so large that the first layer's activations overflow to infinity.
    let huge = write_data(dir.path(), "huge.safetensors", RawTensor::from_f32(vec![2, 1, 8, 8], &[3e38; 128]), 2);
    let err = quantize_err(&mlp_path(), &huge, &[]);
    assert!(err.contains("non-finite") && err.contains("node '"), "{err}");
    let err = quantize_err(&mlp_path(), &digits("val"), &["--exclude", "nope"]);
    assert!(err.contains("--exclude") && err.contains("'nope'"), "{err}");
}

#[test]
fn a_channel_of_zero_weights_quantises_without_division_by_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = TensorFile::read(&mlp_path()).unwrap();
    let w = f.tensors.get_mut("3.weight").unwrap();
    for b in &mut w.data[..256 * 4] {
        *b = 0; // output channel 0 of layer 3: all zero
    }
    let p = dir.path().join("z.safetensors");
    tensor_file::write(&p, &f.tensors, &f.metadata).unwrap();
    std::fs::copy(fixture("models/digits_mlp.arch.json"), dir.path().join("z.arch.json")).unwrap();
    let q = ptq_lib(&load(&p), &data("train"), Method::Minmax);
    let l = &q.layers["3"];
    assert_eq!(l.weight.scales[0], 1.0);
    assert!(l.weight.values[..256].iter().all(|&v| v == 0));
    assert!(l.weight.scales.iter().all(|s| s.is_finite() && *s > 0.0));
    let r = wick::eval::evaluate_int8(&q, &data("test"), 128, Exec::Integer(Kernel::Fast), &Silent).unwrap();
    assert!(r.loss.is_finite() && r.accuracy > 0.9, "{r:?}");
}

#[test]
fn excluded_layers_stay_float() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("e.int8.safetensors");
    let r = quantize_cli(&mlp_path(), "minmax", &out, &["--exclude", "5"]);
    assert!(r["layers"].get("5").is_none() && r["layers"].get("3").is_some());
    let f = TensorFile::read(&out).unwrap();
    assert_eq!(f.tensors["5.weight"].dtype, safetensors::Dtype::F32);
    assert_eq!(f.tensors["3.weight"].dtype, safetensors::Dtype::I8);
    assert!(!f.tensors.contains_key("5.input_scale"));
}

/// A random-weight model of `arch` (BatchNorm statistics non-trivial) with random inputs.
/// The compiled runtime (channels-last buffers, fused activations, shared codes, float layers on
/// the f32 GEMM) against the reference hook executor, on graphs that exercise every layout case
/// and every op: nested adds, a depthwise conv (2-d, and 1-d dilated), concat along channels and
/// along the length, max and average pooling, every activation, flatten into a linear, odd patch
/// lengths, stride 2, a layer left in float, i8 and u7 activations (u7 runs AVX2's 7-bit kernel
/// where the CPU has no VNNI), a conv1d feeding a pointwise conv1d over an odd channel
/// count, then a linear over a 3-d tensor, a one-channel conv and a depthwise conv with channel
/// multiplier 2, BatchNorms after activations, LayerNorm and softmax, `transpose` and `mean`
/// between quantised layers, and `amax` and `sum` of a quantised conv's spatial axes. No step falls back to the candle executor.
#[test]
fn compiled_runtime_equals_the_reference_executor_on_every_layout_case() {
    let archs = [
        (wick::model::load::read_arch(&fixture("arch/branchy.arch.json")).unwrap(), ["q", "c1"]),
        (conv1d_arch(), ["t", "c"]),
        (ops_1d_arch(), ["d", "head"]),
        (norms_arch(), ["fc", "head"]),
        (one_channel_groups_arch(), ["stem", "head"]),
        (axes_1d_arch(), ["l", "c2"]),
        (axes_2d_arch(), ["c", "head"]),
        (spatial_reductions_arch(), ["c2", "head"]),
    ];
    for (arch, float_layers) in archs {
        let (m, d) = random_model(arch, 40);
        let float_layers: Vec<String> = float_layers.iter().map(|s| s.to_string()).collect();
        for (act, exclude) in [(ActType::U8, vec![]), (ActType::U7, vec![]), (ActType::I8, vec![]), (ActType::U8, float_layers)] {
            let settings = CalibrateSettings { method: Method::Minmax, samples: 40, activations: act, exclude: exclude.clone(), ..Default::default() };
            let q = ptq(&m, &d, &settings, &Silent).unwrap().int8;
            assert_eq!(Plan::int8(&q).unwrap().candle_steps(), Vec::<&str>::new(), "{act:?} {exclude:?}");
            let logits = |e: Exec| -> Vec<f32> { Executor::new(&q, e).unwrap().predict(&d.x).unwrap().flatten_all().unwrap().to_vec1().unwrap() };
            let (fast, reference) = (logits(Exec::Integer(Kernel::Fast)), logits(Exec::Integer(Kernel::Reference)));
            assert_eq!(fast.len(), reference.len());
            // Only float reductions outside the integer layers may sum in another order.
            let scale = reference.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!(max_abs_diff(&fast, &reference) <= 1e-5 * scale.max(1.0), "{act:?} {exclude:?}: {}", max_abs_diff(&fast, &reference));
            // A NaN in the input is an error naming the quantised layer that met it, not garbage
            // (with every layer quantised, the first layer meets it).
            if !exclude.is_empty() {
                continue;
            }
            let mut v: Vec<f32> = d.x.flatten_all().unwrap().to_vec1().unwrap();
            v[5] = f32::NAN;
            let bad = candle_core::Tensor::from_vec(v, d.x.dims(), d.x.device()).unwrap();
            for e in [Exec::Integer(Kernel::Fast), Exec::Integer(Kernel::Reference)] {
                let err = Executor::new(&q, e).unwrap().predict(&bad).unwrap_err().to_string();
                assert!(err.contains("non-finite") && err.contains("node '"), "{e:?}: {err}");
            }
        }
    }
}

/// `--activations u7` (7-bit activations, ONNX Runtime's `reduce_range`): the file declares
/// `u7` in each layer's scheme and stores u8 zero points within 0..=127, reads back as 7-bit,
/// keeps the teacher's accuracy within the 0.3-point PTQ bar, and `wick eval` of the file gives
/// the report's number. A `u7` scheme whose zero point is past 127 is refused, naming the tensor.
#[test]
fn seven_bit_activations_round_trip_and_keep_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.u7.int8.safetensors");
    let r = quantize_cli(&resnet_path(), "entropy", &out, &["--activations", "u7"]);
    let c = &r["comparison"];
    assert!(c["drop_points"].as_f64().unwrap() <= 0.3, "{c}");
    let q = wick::artifact::Int8Model::read(&TensorFile::read(&out).unwrap()).unwrap().unwrap();
    assert_eq!(q.layers.len(), 10);
    for (name, l) in &q.layers {
        let input = l.input.fixed().expect("static input");
        assert_eq!(input.act, ActType::U7, "{name}");
        assert!((0..=127).contains(&input.zero_point), "{name}: {}", input.zero_point);
    }
    let (o, _) = run_expect(&["eval", out.to_str().unwrap(), "--data", digits("test").to_str().unwrap(), "--json", "--quiet"], 0);
    let e: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(e["correct"], c["compressed"]["correct"]);

    let mut f = TensorFile::read(&out).unwrap();
    f.tensors.insert("conv1.input_zero_point".into(), RawTensor::from_u8(vec![1], &[200]));
    let bad = dir.path().join("bad.int8.safetensors");
    tensor_file::write(&bad, &f.tensors, &f.metadata).unwrap();
    let (_, err) = run_expect(&["eval", bad.to_str().unwrap(), "--data", digits("test").to_str().unwrap(), "--quiet"], 2);
    assert!(err.contains("conv1.input_zero_point") && err.contains("0..=127"), "{err}");
}

/// `--method auto` calibrates with min-max, percentile, entropy and MSE, keeps the one whose
/// INT8 model's predictions move least from the float model's (least KL divergence on the
/// calibration rows), reports each candidate's divergence, and its artifact is the chosen
/// observer's bit for bit.
#[test]
fn auto_calibration_keeps_the_observer_closest_to_the_float_model() {
    let dir = tempfile::tempdir().unwrap();
    for (model, name) in [(resnet_path(), "resnet"), (fixture("models/digits_seq_cnn.safetensors"), "seq_cnn")] {
        let calib = if name == "resnet" { digits("train") } else { fixture("data/digits_seq_train.safetensors") };
        let out = dir.path().join(format!("{name}.auto.int8.safetensors"));
        let report = out.with_extension("report.json");
        let args = [
            "quantize",
            model.to_str().unwrap(),
            "--calib",
            calib.to_str().unwrap(),
            "--method",
            "auto",
            "--samples",
            "256",
            "--out",
            out.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
            "--quiet",
        ];
        run_expect(&args, 0);
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        let errors = r["method_errors"].as_array().unwrap();
        let names: Vec<&str> = errors.iter().map(|e| e[0].as_str().unwrap()).collect();
        assert_eq!(names, ["minmax", "percentile", "entropy", "mse"], "{name}");
        let best = errors.iter().min_by(|a, b| a[1].as_f64().unwrap().total_cmp(&b[1].as_f64().unwrap())).unwrap();
        assert!(errors.iter().all(|e| e[1].as_f64().unwrap() >= 0.0), "{name}: {errors:?}");
        assert_eq!(r["settings"]["method"], best[0], "{name}: {errors:?}");
        // The same observer named outright gives the same file.
        let chosen = best[0].as_str().unwrap();
        let named = dir.path().join(format!("{name}.{chosen}.int8.safetensors"));
        run_expect(&["quantize", model.to_str().unwrap(), "--calib", calib.to_str().unwrap(), "--method", chosen, "--samples", "256", "--out", named.to_str().unwrap(), "--quiet"], 0);
        let (a, b) = (TensorFile::read(&out).unwrap(), TensorFile::read(&named).unwrap());
        assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>());
        for (k, t) in &a.tensors {
            assert_eq!(t.data, b.tensors[k].data, "{name}: {k}");
        }
    }
}
