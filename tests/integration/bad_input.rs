//! Bad input to the foundation commands: exit code 2, a short error naming the file and the
//! tensor, node or field, and never a panic.

use crate::common::*;
use std::path::Path;
use wick::tensor_file::{self, RawTensor, TensorFile};

fn eval_err(model: &Path, data: &Path, extra: &[&str]) -> String {
    let mut args = vec!["eval", model.to_str().unwrap(), "--data", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (_, err) = run_expect(&args, 2);
    assert!(err.lines().count() <= 3, "short error, got: {err}");
    err
}

/// Copies the MLP fixture (and its sidecar) into `dir`, applying `edit` to the tensors.
fn mlp_copy(dir: &Path, edit: impl FnOnce(&mut TensorFile)) -> std::path::PathBuf {
    let mut f = TensorFile::read(&mlp_path()).unwrap();
    edit(&mut f);
    let p = dir.join("m.safetensors");
    tensor_file::write(&p, &f.tensors, &f.metadata).unwrap();
    std::fs::copy(fixture("models/digits_mlp.arch.json"), dir.join("m.arch.json")).unwrap();
    p
}

#[test]
fn truncated_safetensors_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(mlp_path()).unwrap();
    let p = dir.path().join("trunc.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = eval_err(&p, &digits("val"), &[]);
    assert!(err.contains("trunc.safetensors") && err.contains("truncated"), "{err}");
}

#[test]
fn file_that_is_not_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.safetensors");
    std::fs::write(&p, "this is a text file, not a model at all").unwrap();
    let err = eval_err(&p, &digits("val"), &[]);
    assert!(err.contains("notes.safetensors") && err.contains("not a valid safetensors"), "{err}");
    // An architecture file given as the model: named as what it is.
    let arch = fixture("models/digits_mlp.arch.json");
    let err = eval_err(&arch, &digits("val"), &[]);
    assert!(err.contains("digits_mlp.arch.json") && err.contains("JSON text") && err.contains("--arch"), "{err}");
}

#[test]
fn architecture_referencing_a_missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let p = mlp_copy(dir.path(), |f| {
        f.tensors.remove("3.bias");
    });
    let err = eval_err(&p, &digits("val"), &[]);
    assert!(err.contains("m.safetensors") && err.contains("'3.bias'") && err.contains("node '3'"), "{err}");
}

#[test]
fn tensor_of_the_wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let p = mlp_copy(dir.path(), |f| {
        let t = f.tensors.get_mut("5.bias").unwrap();
        *t = RawTensor::from_f32(vec![9], &[0.0; 9]);
    });
    let err = eval_err(&p, &digits("val"), &[]);
    assert!(err.contains("'5.bias'") && err.contains("[9]") && err.contains("[10]"), "{err}");
}

#[test]
fn nan_and_infinite_weights() {
    for (bad, word) in [(f32::NAN, "NaN"), (f32::INFINITY, "infinite")] {
        let dir = tempfile::tempdir().unwrap();
        let p = mlp_copy(dir.path(), |f| {
            let t = f.tensors.get_mut("3.weight").unwrap();
            t.data[40..44].copy_from_slice(&bad.to_le_bytes());
        });
        let err = eval_err(&p, &digits("val"), &[]);
        assert!(err.contains("'3.weight'") && err.contains(word), "{err}");
    }
}

fn write_data(dir: &Path, x: RawTensor, y: RawTensor) -> std::path::PathBuf {
    let p = dir.join("d.safetensors");
    let mut t = std::collections::BTreeMap::new();
    t.insert("x".to_string(), x);
    t.insert("y".to_string(), y);
    tensor_file::write(&p, &t, &Default::default()).unwrap();
    p
}

#[test]
fn data_that_does_not_fit_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_data(dir.path(), RawTensor::from_f32(vec![4, 64], &[0.5; 256]), RawTensor::from_i64(vec![4], &[0, 1, 2, 3]));
    let err = eval_err(&mlp_path(), &p, &[]);
    assert!(err.contains("d.safetensors") && err.contains("'x'") && err.contains("[64]") && err.contains("[1, 8, 8]"), "{err}");
}

#[test]
fn labels_outside_the_classes() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_data(dir.path(), RawTensor::from_f32(vec![2, 1, 8, 8], &[0.5; 128]), RawTensor::from_i64(vec![2], &[3, 10]));
    let err = eval_err(&mlp_path(), &p, &[]);
    assert!(err.contains("d.safetensors") && err.contains("y[1] = 10") && err.contains("10 classes"), "{err}");
}

#[test]
fn architecture_with_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("models/digits_mlp.arch.json")).unwrap();
    let cyclic = text.replace(r#""name": "3", "op": "linear", "inputs": ["2"]"#, r#""name": "3", "op": "linear", "inputs": ["4"]"#);
    assert_ne!(cyclic, text);
    let a = dir.path().join("cyc.arch.json");
    std::fs::write(&a, cyclic).unwrap();
    let err = eval_err(&mlp_path(), &digits("val"), &["--arch", a.to_str().unwrap()]);
    assert!(err.contains("cyc.arch.json") && err.contains("cycle: 4 -> 3 -> 4"), "{err}");
}

#[test]
fn unknown_op_and_unknown_field_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("models/digits_mlp.arch.json")).unwrap();
    let a = dir.path().join("a.arch.json");
    std::fs::write(&a, text.replace(r#""op": "relu", "inputs": ["1"]"#, r#""op": "swish", "inputs": ["1"]"#)).unwrap();
    let err = eval_err(&mlp_path(), &digits("val"), &["--arch", a.to_str().unwrap()]);
    assert!(err.contains("node '2'") && err.contains("unknown op 'swish'"), "{err}");
    std::fs::write(&a, text.replace(r#""out_features": 10"#, r#""out_features": 10, "bais": false"#)).unwrap();
    let err = eval_err(&mlp_path(), &digits("val"), &["--arch", a.to_str().unwrap()]);
    assert!(err.contains("node '5'") && err.contains("bais"), "{err}");
    std::fs::write(&a, text.replace(r#"["2"]"#, r#"["nope"]"#)).unwrap();
    let err = eval_err(&mlp_path(), &digits("val"), &["--arch", a.to_str().unwrap()]);
    assert!(err.contains("node '3'") && err.contains("'nope'"), "{err}");
}

#[test]
fn unused_tensors_warn_and_integer_buffers_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let p = mlp_copy(dir.path(), |f| {
        f.tensors.insert("extra.weight".into(), RawTensor::from_f32(vec![2], &[1.0, 2.0]));
        f.tensors.insert("bn.num_batches_tracked".into(), RawTensor::from_i64(vec![], &[800]));
    });
    let (_, err) = run_expect(&["eval", p.to_str().unwrap(), "--data", digits("val").to_str().unwrap()], 0);
    assert!(err.contains("warning") && err.contains("'extra.weight'"), "{err}");
    assert!(!err.contains("num_batches_tracked"), "{err}");
}

#[test]
fn half_precision_weights_load() {
    let dir = tempfile::tempdir().unwrap();
    let p = mlp_copy(dir.path(), |f| {
        for t in f.tensors.values_mut() {
            let v = tensor_file::to_f32(t, "", "").unwrap();
            t.data = v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect();
            t.dtype = safetensors::Dtype::F16;
        }
    });
    let (out, _) = run_expect(&["eval", p.to_str().unwrap(), "--data", digits("test").to_str().unwrap(), "--json"], 0);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    // f16 rounding of the weights moves logits a little; accuracy stays within a sample or two.
    assert!((j["accuracy"].as_f64().unwrap() - 0.975).abs() <= 2.0 / 360.0, "{j}");
}

/// An error prints its cause once: a missing file is named with the system's reason, not the
/// reason twice.
#[test]
fn an_error_prints_its_cause_once() {
    let (_, err) = run_expect(&["eval", "/no/such/model.safetensors", "--data", digits("test").to_str().unwrap()], 2);
    assert!(err.contains("/no/such/model.safetensors"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// `arch` (a teacher's architecture file) with `from` replaced by `to`, written into `dir`.
fn edited_arch(dir: &Path, arch: &str, from: &str, to: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(fixture(arch)).unwrap();
    assert!(text.contains(from), "{arch} has no {from}");
    let p = dir.join("edited.arch.json");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    p
}

/// Sizes and fields no model can have: a padding that would need absurd memory, a kernel,
/// dilation or output size of 0, a dropout probability or BatchNorm eps out of range. Each is an
/// error naming the node and the field, before anything is allocated.
#[test]
fn impossible_sizes_and_fields_name_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let resnet = "models/digits_resnet.arch.json";
    let seq = TEACHERS[2].path();
    let (crnn, crnn_arch) = (fixture("models/digits_crnn.safetensors"), "models/digits_crnn.arch.json");
    let (mbnet, mbnet_arch) = (fixture("models/digits_mbnet.safetensors"), "models/digits_mbnet.arch.json");
    for (model, arch, from, to, want) in [
        (resnet_path(), resnet, r#""padding": 1, "bias": false"#, r#""padding": 1000000000, "bias": false"#, ["'conv1'", "padding"]),
        (resnet_path(), resnet, r#""kernel_size": 3, "stride": 1"#, r#""kernel_size": 0, "stride": 1"#, ["'conv1'", "kernel_size"]),
        (resnet_path(), resnet, r#""kernel_size": 3, "stride": 1"#, r#""kernel_size": 3, "dilation": 0, "stride": 1"#, ["'conv1'", "dilation"]),
        (resnet_path(), resnet, r#""num_features": 32}"#, r#""num_features": 32, "eps": -1}"#, ["'bn1'", "eps"]),
        (resnet_path(), resnet, r#""out_features": 10"#, r#""out_features": 0"#, ["'fc'", "out_features"]),
        (seq.clone(), "models/digits_seq_cnn.arch.json", r#""p": 0.1"#, r#""p": 7"#, ["'drop'", "p is 7"]),
        (crnn.clone(), crnn_arch, r#""dim0": 1,"#, r#""dim0": 0,"#, ["'steps'", "batch dim"]),
        (crnn.clone(), crnn_arch, r#""dim1": 2"#, r#""dim1": 3"#, ["'steps'", "dim 3 is out of range"]),
        (crnn.clone(), crnn_arch, r#""dim": 1"#, r#""dim": 1, "keep_dim": true"#, ["'time_mean'", "keep_dim"]),
        (crnn.clone(), crnn_arch, r#""dim": 1"#, r#""dim": -3"#, ["'time_mean'", "dim -3"]),
        (mbnet.clone(), mbnet_arch, "\"b1_se.pool\"\n   ],\n   \"shape\": [\n    16,", "\"b1_se.pool\"\n   ],\n   \"shape\": [\n    15,", ["'b1_se.squeeze'", "16 per sample"]),
        (mbnet.clone(), mbnet_arch, "\"b1_se.pool\"\n   ],\n   \"shape\": [\n    16,", "\"b1_se.pool\"\n   ],\n   \"shape\": [\n    -1,\n    -1,", ["'b1_se.squeeze'", "at most one -1"]),
        (mbnet.clone(), mbnet_arch, "\"b1_act\",\n    \"b1_se.gate\"", "\"b1_act\",\n    \"b1_se.fc1\"", ["'b1_se'", "do not broadcast"]),
        (mbnet.clone(), mbnet_arch, r#""negative_slope": 0.1"#, r#""negative_slope": "0.1""#, ["'b1_act'", "invalid type"]),
    ] {
        let a = edited_arch(dir.path(), arch, from, to);
        let (_, err) = run_expect(&["inspect", model.to_str().unwrap(), "--arch", a.to_str().unwrap()], 2);
        assert!(want.iter().all(|w| err.contains(w)), "{to}: {err}");
    }
    // A student whose layer would hold 10^12 weights: refused before it is allocated.
    let a = edited_arch(dir.path(), "arch/digits_mlp_small.arch.json", r#""out_features": 10"#, r#""out_features": 1000000000000"#);
    let (tr, va) = (digits("train"), digits("val"));
    let out = dir.path().join("s.safetensors");
    let (_, err) = run_expect(
        &["distill", "--teacher", mlp_path().to_str().unwrap(), "--student", a.to_str().unwrap(), "--train", tr.to_str().unwrap(), "--val", va.to_str().unwrap(), "--out", out.to_str().unwrap()],
        2,
    );
    assert!(err.contains(".weight") && err.contains("more than"), "{err}");
}

/// A BatchNorm's negative running variance is named as such, not as a NaN in the conv weight it
/// folds into.
#[test]
fn a_negative_running_variance_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = TensorFile::read(&TEACHERS[3].path()).unwrap();
    let mut v = f.f32("stem.bn.running_var").unwrap();
    v[0] = -1.0;
    f.tensors.insert("stem.bn.running_var".into(), RawTensor::from_f32(vec![v.len()], &v));
    let p = dir.path().join("d.safetensors");
    tensor_file::write(&p, &f.tensors, &f.metadata).unwrap();
    std::fs::copy(fixture("models/digits_dsnet.arch.json"), dir.path().join("d.arch.json")).unwrap();
    let err = eval_err(&p, &digits("test"), &[]);
    assert!(err.contains("stem.bn.running_var") && err.contains("negative"), "{err}");
}

#[test]
fn absurd_thread_counts_and_misspelled_manifest_fields_are_errors() {
    let (_, err) = run_expect(&["--threads", "100000", "inspect", mlp_path().to_str().unwrap()], 2);
    assert!(err.contains("--threads"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let m = serde_json::json!({"jobs": [{"name": "j", "modle": mlp_path(), "recipe": "ptq-int8", "train": digits("train"), "val": digits("val"), "test": digits("test"), "out": "o"}]});
    let manifest = dir.path().join("m.json");
    std::fs::write(&manifest, m.to_string()).unwrap();
    let (_, err) = run_expect(&["batch", manifest.to_str().unwrap()], 2);
    assert!(err.contains("modle") && err.contains("job 'j'"), "{err}");
}

/// INT8 artifacts that break the format: an unknown version or kind, a zero point of two
/// values, a weight code of -128, a zero point's dtype that contradicts the metadata.
#[test]
fn malformed_int8_artifacts_name_the_field_or_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("q.int8.safetensors");
    run_expect(&["quantize", mlp_path().to_str().unwrap(), "--calib", digits("train").to_str().unwrap(), "--out", good.to_str().unwrap(), "--quiet"], 0);
    let variant = |name: &str, edit: &dyn Fn(&mut TensorFile, &mut serde_json::Value)| -> String {
        let mut f = TensorFile::read(&good).unwrap();
        let mut meta: serde_json::Value = serde_json::from_str(&f.metadata["wick"]).unwrap();
        edit(&mut f, &mut meta);
        f.metadata.insert("wick".into(), meta.to_string());
        let p = dir.path().join(name);
        tensor_file::write(&p, &f.tensors, &f.metadata).unwrap();
        eval_err(&p, &digits("test"), &[])
    };
    let err = variant("v.safetensors", &|_, m| m["format_version"] = 99.into());
    assert!(err.contains("format_version") && err.contains("99"), "{err}");
    let err = variant("k.safetensors", &|_, m| m["kind"] = "banana".into());
    assert!(err.contains("'kind'") && err.contains("banana"), "{err}");
    let err = variant("z.safetensors", &|f, _| _ = f.tensors.insert("1.input_zero_point".into(), RawTensor::from_u8(vec![2], &[0, 0])));
    assert!(err.contains("'1'") && err.contains("one value"), "{err}");
    let err = variant("w.safetensors", &|f, _| {
        let w = f.tensors.get_mut("1.weight").unwrap();
        w.data[5] = 0x80;
    });
    assert!(err.contains("1.weight") && err.contains("-128"), "{err}");
    let err = variant("t.safetensors", &|f, _| _ = f.tensors.insert("1.input_zero_point".into(), RawTensor::from_i8(vec![1], &[0])));
    assert!(err.contains("1.input_zero_point") && err.contains("u8"), "{err}");
}

/// `quantize --test` with a test set whose labels do not fit the model fails before writing:
/// no artifact is left behind for a run that reports an error.
#[test]
fn a_bad_test_set_leaves_no_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = TensorFile::read(&digits("test")).unwrap();
    let y: Vec<i64> = (0..360).map(|i| if i == 7 { 12 } else { i % 10 }).collect();
    f.tensors.insert("y".into(), RawTensor::from_i64(vec![360], &y));
    let bad = dir.path().join("bad_test.safetensors");
    tensor_file::write(&bad, &f.tensors, &f.metadata).unwrap();
    let out = dir.path().join("q.int8.safetensors");
    let (_, err) = run_expect(&["quantize", mlp_path().to_str().unwrap(), "--calib", digits("train").to_str().unwrap(), "--test", bad.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"], 2);
    assert!(err.contains("bad_test.safetensors") && err.contains("y[7] = 12"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 1, "only the bad test set: {left:?}");
}

/// Recipe fields out of range and gate flags that are not numbers in range are errors naming
/// the field or flag (exit 2), never an accuracy-gate failure (exit 1) or a silent default.
#[test]
fn recipe_fields_and_gate_flags_out_of_range_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let t = &TEACHERS[0];
    let compress = |recipe: &str, extra: &[&str]| -> String {
        let out = dir.path().join("out");
        let mut args: Vec<String> = vec!["compress".into(), t.path().display().to_string(), "--recipe".into(), recipe.into(), "--out".into(), out.display().to_string(), "--quiet".into()];
        args.extend(t.data_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        let (_, err) = run_expect(&args.iter().map(String::as_str).collect::<Vec<_>>(), 2);
        assert!(!out.exists(), "a refused job writes nothing");
        err
    };
    for (flag, value, want) in [("--max-accuracy-drop", "NaN", "NaN is not a number of points"), ("--max-accuracy-drop", "-1", "-1 is not"), ("--max-relative-drop", "NaN", "NaN is not a fraction")] {
        let err = compress("ptq-int8", &[flag, value]);
        assert!(err.contains(flag) && err.contains(want) && !err.contains("gate failed"), "{flag} {value}: {err}");
    }
    let head = r#"{"pass": "fold_batchnorm"}, {"pass": "calibrate"#;
    for (passes, want) in [
        (format!(r#"{head}", "method": "percentile", "percentile": 250}}, {{"pass": "convert_int8"}}"#), ["calibrate", "'percentile' is 250"]),
        (format!(r#"{head}"}}, {{"pass": "qat", "alpha": 2}}, {{"pass": "convert_int8"}}"#), ["qat", "'alpha' is 2"]),
        (format!(r#"{head}"}}, {{"pass": "qat", "temperature": 0}}, {{"pass": "convert_int8"}}"#), ["qat", "'temperature' is 0"]),
        (format!(r#"{head}"}}, {{"pass": "convert_int8"}}, {{"pass": "convert_int8"}}"#), ["passes[3]", "must be the last step"]),
    ] {
        let recipe = dir.path().join("r.json");
        std::fs::write(&recipe, format!(r#"{{"name": "r", "passes": [{passes}]}}"#)).unwrap();
        let err = compress(recipe.to_str().unwrap(), &[]);
        assert!(want.iter().all(|w| err.contains(w)) && err.contains("r.json"), "{passes}: {err}");
    }
    let (tr, va) = (digits("train"), digits("val"));
    let out = dir.path().join("p.safetensors");
    let (_, err) =
        run_expect(&["prune", mlp_path().to_str().unwrap(), "--ratio", "0.5", "--steps", "0", "--train", tr.to_str().unwrap(), "--val", va.to_str().unwrap(), "--out", out.to_str().unwrap()], 2);
    assert!(err.contains("--steps"), "{err}");
}

/// Two tensors whose data overlap: the error names the file and the tensor.
#[test]
fn overlapping_tensor_data_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}  "#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 12]);
    let p = dir.path().join("overlap.safetensors");
    std::fs::write(&p, bytes).unwrap();
    let (_, err) = run_expect(&["inspect", p.to_str().unwrap()], 2);
    assert!(err.contains("overlap.safetensors") && err.contains("`b`"), "{err}");
}
