//! Exact execution of the PyTorch teachers, eval from the CLI, training through the
//! executor, and BatchNorm running statistics in train mode.

use crate::common::*;
use candle_core::Tensor;
use wick::model::arch::Arch;
use wick::model::forward::{Mode, Run};
use wick::model::init::init_model;
use wick::progress::Silent;
use wick::tensor_file::TensorFile;
use wick::train::{fit, OptimizerKind, TrainConfig};

/// Every teacher's eval-mode logits on val and test equal PyTorch's within 1e-4.
#[test]
fn every_teacher_matches_pytorch_logits() {
    for t in &TEACHERS {
        let model = load(&t.path());
        let refs = TensorFile::read(&t.reference()).unwrap();
        for split in ["val", "test"] {
            let d = t.dataset(split);
            let out: Vec<f32> = model.forward(&d.x, Mode::Eval).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let expected = refs.f32(&format!("{split}_logits")).unwrap();
            let diff = max_abs_diff(&out, &expected);
            assert!(diff <= 1e-4, "{} {split}: max |Δlogit| = {diff}", t.name);
        }
    }
}

fn eval_json(model: &std::path::Path, data: &std::path::Path) -> serde_json::Value {
    let (out, _) = run_expect(&["eval", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json"], 0);
    assert_eq!(out.lines().count(), 1, "exactly one JSON line: {out}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn eval_cli_reports_the_documented_accuracies() {
    // models/README.md: mlp val 174/180, test 351/360; resnet val 177/180, test 353/360;
    // seq_cnn val 172/180, test 351/360; dsnet val 175/180, test 355/360; mbnet val 174/180,
    // test 357/360; rectnet val 174/180, test 353/360; vit val 173/180, test 344/360
    let counts = [[(174, 180), (351, 360)], [(177, 180), (353, 360)], [(172, 180), (351, 360)], [(175, 180), (355, 360)], [(174, 180), (357, 360)], [(174, 180), (353, 360)], [(173, 180), (344, 360)]];
    for (t, c) in TEACHERS.iter().zip(counts) {
        for (split, (correct, n)) in ["val", "test"].into_iter().zip(c) {
            let j = eval_json(&t.path(), &t.split(split));
            assert_eq!(j["correct"], correct, "{} {split}", t.name);
            assert_eq!(j["samples"], n);
            assert!((j["accuracy"].as_f64().unwrap() - correct as f64 / n as f64).abs() < 1e-12);
            assert!(j["loss"].as_f64().unwrap() > 0.0 && j["loss"].as_f64().unwrap() < 0.5);
        }
    }
}

#[test]
fn inspect_lists_nodes_and_totals() {
    let (out, _) = run_expect(&["inspect", resnet_path().to_str().unwrap()], 0);
    let total = out.lines().last().unwrap();
    // 308,074 trained parameters (models/README.md); MACs: sum of conv/linear work = 3,034,368
    assert!(total.contains("308074"), "{total}");
    assert!(total.contains("3034368"), "{total}");
    let conv = out.lines().find(|l| l.starts_with("layer2.0.conv1 ")).unwrap();
    assert!(conv.contains("[64, 4, 4]") && conv.contains("18432") && conv.contains("294912"), "{conv}");
}

fn mlp_arch() -> Arch {
    wick::model::load::read_arch(&fixture("models/digits_mlp.arch.json")).unwrap()
}

#[test]
fn training_from_scratch_reaches_ninety_percent() {
    let mut model = init_model(mlp_arch(), 7).unwrap();
    let (train, val) = (data("train"), data("val"));
    let cfg = TrainConfig { epochs: 4, batch_size: 32, lr: wick::train::LearningRate::Fixed(3e-3), optimizer: OptimizerKind::Adamw, ..Default::default() };
    let val_eval = |m: &wick::model::Model| wick::eval::evaluate(m, &val, 256, &Silent);
    let val_acc = |m: &wick::model::Model| val_eval(m).unwrap().accuracy;
    let ce = |m: &wick::model::Model, x: &Tensor, y: &[u32], _: &[usize], _: &std::cell::RefCell<rand_chacha::ChaCha8Rng>| wick::train::loss::cross_entropy(&m.forward(x, Mode::Train)?, y);
    let before = val_acc(&model);
    let vars = model.trainable_vars();
    let r = fit(&mut model, vars, &train, &cfg, &ce, &val_eval, &|_| Ok(()), &Silent).unwrap();
    let after = val_acc(&model);
    assert!(before < 0.3, "random init should be near chance, got {before}");
    assert!(after > 0.90, "val accuracy after 4 epochs: {after} ({r:?})");
    assert_eq!(after, r.best_val_accuracy, "best checkpoint restored");
}

#[test]
fn resnet_train_mode_updates_running_statistics_like_pytorch() {
    let model = load(&resnet_path());
    let d = data("train");
    let x = d.x.narrow(0, 0, 16).unwrap();
    let old_mean: Vec<f32> = model.p("bn1.running_mean").to_vec1().unwrap();
    let old_var: Vec<f32> = model.p("bn1.running_var").to_vec1().unwrap();
    // conv1's output is the same in both modes: it is what bn1 normalises.
    let taps = vec!["conv1".to_string()];
    let (_, t) = model.run(&x, &Run { mode: Mode::Eval, taps: &taps, hook: None, rng: None }).unwrap();
    let (n, ch, h, w) = t["conv1"].dims4().unwrap();
    let flat: Vec<f32> = t["conv1"].flatten_all().unwrap().to_vec1().unwrap();
    let channel = |k: usize| -> Vec<f64> { (0..n).flat_map(|i| flat[(i * ch + k) * h * w..(i * ch + k + 1) * h * w].iter().map(|&v| v as f64)).collect() };
    model.forward(&x, Mode::Train).unwrap();
    let new_mean: Vec<f32> = model.p("bn1.running_mean").to_vec1().unwrap();
    let new_var: Vec<f32> = model.p("bn1.running_var").to_vec1().unwrap();
    for k in 0..32 {
        let vals = channel(k);
        let n = vals.len() as f64;
        let mean = vals.iter().sum::<f64>() / n;
        let unbiased = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let em = 0.9 * old_mean[k] as f64 + 0.1 * mean;
        let ev = 0.9 * old_var[k] as f64 + 0.1 * unbiased;
        assert!((new_mean[k] as f64 - em).abs() < 1e-5, "channel {k}: mean {} vs {em}", new_mean[k]);
        assert!((new_var[k] as f64 - ev).abs() < 1e-4 * ev.max(1.0), "channel {k}: var {} vs {ev}", new_var[k]);
    }
}

#[test]
fn train_mode_normalises_with_batch_statistics() {
    // In train mode each BatchNorm output channel has mean ≈ β and biased std ≈ |γ| over the batch.
    let model = load(&resnet_path());
    let x = data("train").x.narrow(0, 0, 32).unwrap();
    let taps = vec!["bn1".to_string()];
    let (_, t) = model.run(&x, &Run { mode: Mode::Train, taps: &taps, hook: None, rng: None }).unwrap();
    let y = t["bn1"].transpose(0, 1).unwrap().flatten_from(1).unwrap();
    let mean: Vec<f32> = y.mean(1).unwrap().to_vec1().unwrap();
    let beta: Vec<f32> = model.p("bn1.bias").to_vec1().unwrap();
    for k in 0..32 {
        assert!((mean[k] - beta[k]).abs() < 1e-4, "channel {k}: {} vs {}", mean[k], beta[k]);
    }
}

#[test]
fn fused_relus_train_like_separate_ones() {
    // Train mode fuses a ReLU into the BatchNorm or residual Add before it; tapping every node
    // keeps them apart. Same output, the same tapped ReLU value and the same gradient for every
    // parameter.
    let d = data("train");
    let (x, y) = d.batch(&(0..24).collect::<Vec<_>>()).unwrap();
    let grads = |taps: &[String]| {
        let model = load(&resnet_path());
        let (out, tapped) = model.run(&x, &Run { mode: Mode::Train, taps, hook: None, rng: None }).unwrap();
        let g = wick::train::loss::cross_entropy(&out, &y).unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // A fused ReLU's own value can still be tapped (distillation hints read block outputs).
        let mut all = vec![flat(&out), flat(&tapped["layer1.0.relu2"])];
        for v in model.trainable_vars() {
            all.push(flat(g.get(v.as_tensor()).expect("every parameter has a gradient")));
        }
        all
    };
    let every_node: Vec<String> = load(&resnet_path()).arch.nodes.iter().map(|n| n.name.clone()).collect();
    let (fused, apart) = (grads(&["layer1.0.relu2".to_string()]), grads(&every_node));
    assert_eq!(fused.len(), apart.len());
    for (i, (a, b)) in fused.iter().zip(&apart).enumerate() {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        assert!(max_abs_diff(a, b) <= 1e-6 * scale, "tensor {i}: {} (scale {scale})", max_abs_diff(a, b));
    }
}

#[test]
fn same_seed_same_initialisation() {
    let a = init_model(mlp_arch(), 3).unwrap();
    let b = init_model(mlp_arch(), 3).unwrap();
    let c = init_model(mlp_arch(), 4).unwrap();
    let w = |m: &wick::model::Model| m.p("1.weight").flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(w(&a), w(&b));
    assert_ne!(w(&a), w(&c));
}

/// `wick eval --predictions FILE` writes every row's logits (PyTorch's, within 1e-4, for a
/// teacher), the predicted classes (their argmax) and the labels.
#[test]
fn eval_writes_logits_predictions_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let t = &TEACHERS[2];
    let out = dir.path().join("p.safetensors");
    let (stdout, _) = run_expect(&["eval", t.path().to_str().unwrap(), "--data", t.split("test").to_str().unwrap(), "--predictions", out.to_str().unwrap(), "--json", "--quiet"], 0);
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let f = TensorFile::read(&out).unwrap();
    let logits = f.f32("logits").unwrap();
    assert_eq!(f.tensors["logits"].shape, vec![360, 10]);
    let reference = TensorFile::read(&t.reference()).unwrap().f32("test_logits").unwrap();
    assert!(max_abs_diff(&logits, &reference) <= 1e-4);
    let i64s = |name: &str| wick::tensor_file::to_i64(&f.tensors[name], "p", name).unwrap();
    let (pred, labels) = (i64s("predictions"), i64s("labels"));
    assert!(logits.chunks(10).zip(&pred).all(|(row, &p)| wick::eval::argmax(row) as i64 == p));
    assert_eq!(labels, t.dataset("test").y.iter().map(|&y| y as i64).collect::<Vec<_>>());
    assert_eq!(pred.iter().zip(&labels).filter(|(p, l)| p == l).count() as u64, j["correct"].as_u64().unwrap());
}
