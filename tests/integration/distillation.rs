//! Distillation into small students, width-scaled students with hints, determinism,
//! and bad input.

use crate::common::*;
use std::path::Path;
use wick::tensor_file::TensorFile;

fn distill_json(args: &[&str]) -> serde_json::Value {
    let (tr, va, te) = (digits("train"), digits("val"), digits("test"));
    let mut a = vec!["distill", "--train", tr.to_str().unwrap(), "--val", va.to_str().unwrap(), "--test", te.to_str().unwrap(), "--json", "--quiet"];
    a.extend_from_slice(args);
    let (o, _) = run_expect(&a, 0);
    serde_json::from_str(&o).unwrap()
}

/// A randomly initialised student trained from scratch: 60 epochs of SGD at 0.05, batch 32 (the
/// teachers' own schedule; the `auto` budget is sized for fine-tuning from a trained start).
fn small_student(out: &Path, seed: &str, alpha: &str) -> serde_json::Value {
    let arch = fixture("arch/digits_mlp_small.arch.json");
    let schedule = ["--epochs", "60", "--optimizer", "sgd", "--lr", "0.05", "--batch-size", "32"];
    let teacher = mlp_path();
    let mut args = vec!["--teacher", teacher.to_str().unwrap(), "--student", arch.to_str().unwrap(), "--seed", seed, "--alpha", alpha, "--out", out.to_str().unwrap()];
    args.extend(schedule);
    distill_json(&args)
}

#[test]
fn small_mlp_student_beats_label_training_over_three_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.safetensors");
    let (mut kd, mut ce) = (vec![], vec![]);
    for seed in ["0", "1", "2"] {
        let j = small_student(&out, seed, "0.9");
        assert_eq!(j["student_params"], 2410);
        assert_eq!(j["teacher_params"], 85002);
        kd.push(j["student_test_accuracy"].as_f64().unwrap());
        ce.push(small_student(&out, seed, "0.0")["student_test_accuracy"].as_f64().unwrap());
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(kd.iter().all(|&a| a >= 0.970), "distilled students {kd:?}");
    assert!(mean(&kd) > mean(&ce), "distillation {kd:?} vs labels alone {ce:?}");
}

#[test]
fn width_scaled_resnet_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    // Two epochs keep the test short; ten reach the teacher's 0.9806 (see the issue note).
    let j =
        distill_json(&["--teacher", resnet_path().to_str().unwrap(), "--width", "0.5", "--widen", "false", "--hint", "layer2.0.relu2=layer2.0.relu2", "--epochs", "2", "--out", out.to_str().unwrap()]);
    assert_eq!(j["student_params"], 77754);
    assert!(j["student_test_accuracy"].as_f64().unwrap() >= 0.96, "{j}");
    let m = load(&out);
    assert_eq!(m.arch.node("layer3.0.conv2").unwrap().op.param_shape("weight"), vec![64, 64, 3, 3]);
}

#[test]
fn same_seed_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let arch = fixture("arch/digits_mlp_small.arch.json");
    let run = |name: &str, seed: &str| {
        let out = dir.path().join(name);
        distill_json(&["--teacher", mlp_path().to_str().unwrap(), "--student", arch.to_str().unwrap(), "--seed", seed, "--epochs", "3", "--out", out.to_str().unwrap()]);
        TensorFile::read(&out).unwrap().tensors
    };
    let (a, b, c) = (run("a.safetensors", "4"), run("b.safetensors", "4"), run("c.safetensors", "5"));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn bad_distillation_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let (tr, va, mlp) = (digits("train"), digits("val"), mlp_path());
    let base = |extra: &[&str]| -> String {
        let mut a = vec!["distill", "--teacher", mlp.to_str().unwrap(), "--train", tr.to_str().unwrap(), "--val", va.to_str().unwrap(), "--epochs", "1", "--out", out.to_str().unwrap(), "--quiet"];
        a.extend_from_slice(extra);
        run_expect(&a, 2).1
    };
    let small = fixture("arch/digits_mlp_small.arch.json");
    let e = base(&["--student", small.to_str().unwrap(), "--hint", "3=nope"]);
    assert!(e.contains("--hint") && e.contains("'nope'") && e.contains("student"), "{e}");
    let e = base(&["--student", small.to_str().unwrap(), "--hint", "zzz=fc1"]);
    assert!(e.contains("'zzz'") && e.contains("teacher"), "{e}");
    let five = dir.path().join("five.arch.json");
    std::fs::write(&five, std::fs::read_to_string(&small).unwrap().replace(r#""out_features": 10"#, r#""out_features": 5"#)).unwrap();
    let e = base(&["--student", five.to_str().unwrap()]);
    assert!(e.contains("5 output classes") && e.contains("10"), "{e}");
    // Data that fits neither model.
    let bad = dir.path().join("flat.safetensors");
    let mut t = std::collections::BTreeMap::new();
    t.insert("x".to_string(), wick::tensor_file::RawTensor::from_f32(vec![4, 64], &[0.5; 256]));
    t.insert("y".to_string(), wick::tensor_file::RawTensor::from_i64(vec![4], &[0, 1, 2, 3]));
    wick::tensor_file::write(&bad, &t, &Default::default()).unwrap();
    let mut a =
        vec!["distill", "--teacher", mlp.to_str().unwrap(), "--student", small.to_str().unwrap(), "--train", bad.to_str().unwrap(), "--val", va.to_str().unwrap(), "--out", out.to_str().unwrap()];
    a.push("--quiet");
    let e = run_expect(&a, 2).1;
    assert!(e.contains("flat.safetensors") && e.contains("[64]"), "{e}");
    assert!(!out.exists());
}

/// On a 1-d model: a student of `digits_seq_cnn` at a third of its width (2,290 parameters,
/// 10.7 % of the teacher's) trained by `wick distill` beats the same student trained on the
/// labels alone with the same budget, over three seeds (PyTorch's numbers for the same
/// students and schedule are in bench/README.md).
#[test]
fn distillation_beats_label_training_on_a_one_dimensional_student() {
    let dir = tempfile::tempdir().unwrap();
    let seq = &TEACHERS[2];
    let (arch, out) = (fixture("arch/digits_seq_cnn_small.arch.json"), dir.path().join("s.safetensors"));
    let teacher = seq.path();
    let student = |seed: &str, alpha: &str| -> f64 {
        let mut args: Vec<String> =
            ["distill", "--teacher", teacher.to_str().unwrap(), "--student", arch.to_str().unwrap(), "--seed", seed, "--alpha", alpha, "--out", out.to_str().unwrap(), "--json", "--quiet"]
                .map(String::from)
                .to_vec();
        args.extend(["--epochs", "40", "--optimizer", "sgd", "--lr", "0.05", "--batch-size", "32"].map(String::from));
        args.extend(seq.data_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let j: serde_json::Value = serde_json::from_str(&run_expect(&args, 0).0).unwrap();
        assert_eq!(j["student_params"], 2290);
        j["student_test_accuracy"].as_f64().unwrap()
    };
    let kd: Vec<f64> = ["0", "1", "2"].iter().map(|s| student(s, "0.9")).collect();
    let ce: Vec<f64> = ["0", "1", "2"].iter().map(|s| student(s, "0")).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(mean(&kd) > mean(&ce), "distillation {kd:?} vs labels alone {ce:?}");
    assert!(kd.iter().all(|&a| a >= 0.95), "distilled students {kd:?}");
}
