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
