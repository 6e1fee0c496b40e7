//! Dependency groups, exact surgery, ratios, round trips and bad input.

use crate::common::*;
use candle_core::{Device, Tensor};
use rand::{RngExt, SeedableRng};
use std::collections::BTreeSet;
use wick::model::forward::Mode;
use wick::model::init::init_model;
use wick::model::Model;
use wick::passes::prune_channels::deps::analyse;
use wick::passes::prune_channels::importance::Criterion;
use wick::passes::prune_channels::surgery::{remove_units, zero_units};
use wick::passes::prune_channels::{apply, plan, PruneConfig};

fn branchy() -> Model {
    let arch = wick::model::load::read_arch(&fixture("arch/branchy.arch.json")).unwrap();
    let m = init_model(arch, 11).unwrap();
    // Non-trivial BatchNorm statistics, so zeroed channels are zeroed by γ and β, not by luck.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    for (k, v) in &m.params {
        if k.ends_with("running_mean") || k.ends_with("running_var") || k.ends_with("_bn.weight") || k.ends_with("_bn.bias") {
            let n = v.as_tensor().elem_count();
            let vals: Vec<f32> = (0..n).map(|_| if k.ends_with("running_var") { rng.random_range(0.5..2.0) } else { rng.random_range(-0.5..0.5) }).collect();
            v.set(&Tensor::from_vec(vals, n, &Device::Cpu).unwrap()).unwrap();
        }
    }
    m
}

fn random_input(shape: &[usize], n: usize) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mut s = vec![n];
    s.extend_from_slice(shape);
    let count: usize = s.iter().product();
    Tensor::from_vec((0..count).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), s, &Device::Cpu).unwrap()
}

fn out(m: &Model, x: &Tensor) -> Vec<f32> {
    m.forward(x, Mode::Eval).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Zero every third unit of every group, check pruning exactly those changes nothing.
fn exact_surgery(model: &Model, x: &Tensor) -> Model {
    let deps = analyse(model);
    assert!(!deps.groups.is_empty());
    let chosen: BTreeSet<usize> = deps.groups.iter().flat_map(|g| g.units.iter().copied().step_by(3)).collect();
    zero_units(model, &deps, &chosen).unwrap();
    let before = out(model, x);
    let pruned = remove_units(model, &deps, &chosen).unwrap();
    let after = out(&pruned, x);
    let d = max_abs_diff(&before, &after);
    assert!(d <= 1e-5, "outputs moved by {d}");
    assert!(wick::model::stats::total_params(&pruned) < wick::model::stats::total_params(model));
    pruned
}

#[test]
fn exact_surgery_on_the_fixtures() {
    let test = data("test");
    let r = exact_surgery(&load(&resnet_path()).deep_clone().unwrap(), &test.x);
    // The residual group ties layer1's convs to the stem: all lose the same channels.
    let c = |n: &str| r.arch.node(n).unwrap().op.param_shape("weight")[0];
    assert_eq!(c("conv1"), c("layer1.0.conv2"));
    assert_eq!(c("layer2.0.conv2"), c("layer2.0.downsample.0"));
    assert_eq!(c("conv1"), 32 - 11);
    exact_surgery(&load(&mlp_path()).deep_clone().unwrap(), &test.x);
}

#[test]
fn exact_surgery_on_nested_residuals_concat_and_depthwise() {
    let m = branchy();
    let x = random_input(&[3, 8, 8], 4);
    let deps = analyse(&m);
    // One group ties stem, b2, c1 (nested adds) and, through the depthwise conv, nothing else.
    let g = deps.groups.iter().find(|g| g.producers.contains(&"stem".to_string())).unwrap();
    assert_eq!(g.producers, vec!["b2", "c1", "stem"]);
    let p = exact_surgery(&m, &x);
    let dw = p.arch.node("dw").unwrap().op.clone();
    let wick::model::arch::Op::Conv2d(c) = dw else { panic!() };
    assert_eq!((c.in_channels, c.out_channels, c.groups), (5, 5, 5), "depthwise conv follows its input");
    let wick::model::arch::Op::Conv2d(d) = p.arch.node("down").unwrap().op.clone() else { panic!() };
    assert_eq!(d.in_channels, 8 + 4, "concat joins the pruned widths of p (12→8) and q (6→4)");
    let wick::model::arch::Op::Linear(h) = p.arch.node("head").unwrap().op.clone() else { panic!() };
    assert_eq!(h.in_features, d.out_channels * 4, "flatten maps each channel to its 2x2 features");
    assert_eq!(h.out_features, 10, "the classifier's output is never pruned");
}

fn cfg(ratio: f64) -> PruneConfig {
    PruneConfig { ratio, criterion: Criterion::L1, global: false, round_to: 1, min_channels: 0, ignore: vec![], heads: false, seed: 0 }
}

#[test]
fn ratio_zero_changes_nothing_and_pruned_models_round_trip() {
    let m = load(&resnet_path());
    let x = data("val").x;
    let same = apply(&m, &plan(&m, &cfg(0.0), None).unwrap()).unwrap();
    assert_eq!(out(&m, &x), out(&same, &x));
    assert_eq!(same.arch, m.arch);
    let p = apply(&m, &plan(&m, &cfg(0.5), None).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.safetensors");
    wick::model::load::save_model(&p, &f, Default::default()).unwrap();
    let back = load(&f);
    assert_eq!(out(&p, &x), out(&back, &x));
    // The CLI reads it as is.
    let (o, _) = run_expect(&["eval", f.to_str().unwrap(), "--data", digits("val").to_str().unwrap(), "--json", "--quiet"], 0);
    let j: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(j["samples"], 180);
}

#[test]
fn resnet_parameter_and_mac_budgets() {
    for (ratio, budget) in [("0.5", 0.30), ("0.75", 0.08)] {
        let (o, _) = run_expect(&["prune", resnet_path().to_str().unwrap(), "--ratio", ratio, "--dry-run", "--json"], 0);
        let j: serde_json::Value = serde_json::from_str(&o).unwrap();
        assert!(j["params_ratio"].as_f64().unwrap() <= budget, "{ratio}: {}", j["params_ratio"]);
        assert!(j["macs_ratio"].as_f64().unwrap() <= budget, "{ratio}: {}", j["macs_ratio"]);
        assert_eq!(j["dry_run"], true);
    }
}

#[test]
fn global_ranking_with_rounding_and_minimum() {
    let m = load(&resnet_path());
    let c = PruneConfig { global: true, round_to: 8, min_channels: 8, criterion: Criterion::L2, ..cfg(0.6) };
    let p = plan(&m, &c, None).unwrap();
    let (before, after): (usize, usize) = p.groups.iter().fold((0, 0), |(a, b), g| (a + g.channels_before, b + g.channels_after));
    for g in &p.groups {
        assert_eq!(g.channels_after % 8, 0, "{g:?}");
        assert!(g.channels_after >= 8);
    }
    let removed = 1.0 - after as f64 / before as f64;
    assert!((removed - 0.6).abs() < 0.08, "removed {removed}");
    // Global ranking need not remove the same fraction everywhere.
    let fr: Vec<f64> = p.groups.iter().map(|g| g.channels_after as f64 / g.channels_before as f64).collect();
    assert!(fr.iter().any(|&f| (f - fr[0]).abs() > 1e-9), "{fr:?}");
    apply(&m, &p).unwrap();
    for crit in [Criterion::BnScale, Criterion::Random] {
        apply(&m, &plan(&m, &PruneConfig { criterion: crit, ..cfg(0.5) }, None).unwrap()).unwrap();
    }
    let d = data("train");
    apply(&m, &plan(&m, &PruneConfig { criterion: Criterion::Taylor, ..cfg(0.5) }, Some(&d)).unwrap()).unwrap();
}

#[test]
fn pruning_with_distillation_recovers_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mlp.pruned.safetensors");
    let (o, _) = run_expect(
        &[
            "prune",
            mlp_path().to_str().unwrap(),
            "--ratio",
            "0.5",
            "--steps",
            "2",
            "--train",
            digits("train").to_str().unwrap(),
            "--val",
            digits("val").to_str().unwrap(),
            "--epochs",
            "4",
            "--distill",
            "--test",
            digits("test").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--json",
            "--quiet",
        ],
        0,
    );
    let j: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert!(j["test_accuracy_after"].as_f64().unwrap() >= 0.96, "{j}");
    // Input features are never pruned: 64·128 + 128·128 + 128·10 weights of 85,002 ≈ 0.31.
    assert!(j["params_ratio"].as_f64().unwrap() < 0.32, "{}", j["params_ratio"]);
    assert!(out.exists());
}

#[test]
fn bad_pruning_input() {
    let r = resnet_path();
    for bad in ["--ratio=1.0", "--ratio=-0.1", "--ratio=1.5"] {
        let (_, e) = run_expect(&["prune", r.to_str().unwrap(), bad, "--dry-run"], 2);
        assert!(e.contains("--ratio") && e.contains("[0, 1)"), "{e}");
    }
    let (_, e) = run_expect(&["prune", r.to_str().unwrap(), "--ratio", "0.99", "--dry-run"], 2);
    assert!(e.contains("no channels") && e.contains("--min-channels"), "{e}");
    let (_, e) = run_expect(&["prune", r.to_str().unwrap(), "--ratio", "0.5", "--ignore", "nope", "--dry-run"], 2);
    assert!(e.contains("--ignore") && e.contains("'nope'"), "{e}");
}

/// Units cross `transpose` and `mean`: on the CRNN teacher (`digits_crnn`: convs, then their
/// channels read as the GRU's input features through `transpose(1, 2)`, the mean over time into
/// the head), zeroing every third unit and pruning exactly those changes no output, and the GRU's
/// input columns follow the last conv's channels. A transpose back to channels first carries
/// hidden units into a conv's input channels, and a mean over another axis passes them on. A
/// transpose that moves the channels to a middle axis, or a mean across the channels, keeps them
/// whole. A conv reading steps-first input turned channels-first keeps its input and prunes its
/// output channels.
#[test]
fn exact_surgery_through_transpose_and_mean() {
    use wick::model::arch::{Arch, Op};
    let seq = wick::data::Dataset::read(&fixture("data/digits_seq_test.safetensors")).unwrap();
    let p = exact_surgery(&load(&fixture("models/digits_crnn.safetensors")).deep_clone().unwrap(), &seq.x.narrow(0, 0, 64).unwrap());
    let (Op::Conv1d(conv), Op::Gru(gru), Op::Linear(fc)) = (&p.arch.node("conv2").unwrap().op, &p.arch.node("gru").unwrap().op, &p.arch.node("fc").unwrap().op) else { panic!() };
    assert_eq!((gru.input_size, fc.in_features), (conv.out_channels, 2 * gru.hidden_size));
    assert!(conv.out_channels < 32 && gru.hidden_size < 32);
    let arch = |shape: &str, body: &str| -> Arch {
        let json = format!(r#"{{"format": "wick-arch", "version": 1, "input": {{"shape": {shape}}}, "nodes": [{body}], "output": "head"}}"#);
        Arch::from_json(&json, "axes.json").unwrap()
    };
    let round_trip = r#"{"name": "c", "op": "conv1d", "inputs": ["input"], "in_channels": 3, "out_channels": 6, "kernel_size": 3, "padding": 1},
        {"name": "steps", "op": "transpose", "inputs": ["c"], "dim0": 1, "dim1": 2},
        {"name": "g", "op": "gru", "inputs": ["steps"], "input_size": 6, "hidden_size": 5},
        {"name": "back", "op": "transpose", "inputs": ["g"], "dim0": 2, "dim1": 1},
        {"name": "c2", "op": "conv1d", "inputs": ["back"], "in_channels": 5, "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"name": "m", "op": "mean", "inputs": ["c2"], "dim": -1},
        {"name": "head", "op": "linear", "inputs": ["m"], "in_features": 4, "out_features": 3}"#;
    let p = exact_surgery(&init_model(arch("[3, 7]", round_trip), 2).unwrap(), &random_input(&[3, 7], 5));
    let (Op::Gru(g), Op::Conv1d(c2), Op::Linear(head)) = (&p.arch.node("g").unwrap().op, &p.arch.node("c2").unwrap().op, &p.arch.node("head").unwrap().op) else { panic!() };
    assert_eq!((g.input_size, g.hidden_size, c2.in_channels, c2.out_channels, head.in_features), (4, 3, 3, 2, 2));
    // Steps-first input turned channels-first for a conv: the conv keeps its input features and
    // prunes its own channels, which reach the GRU's input columns.
    let steps_first = r#"{"name": "t", "op": "transpose", "inputs": ["input"], "dim0": 1, "dim1": 2},
        {"name": "c", "op": "conv1d", "inputs": ["t"], "in_channels": 3, "out_channels": 6, "kernel_size": 3, "padding": 1},
        {"name": "steps", "op": "transpose", "inputs": ["c"], "dim0": 1, "dim1": 2},
        {"name": "g", "op": "gru", "inputs": ["steps"], "input_size": 6, "hidden_size": 5},
        {"name": "last", "op": "select", "inputs": ["g"], "dim": 1, "index": -1},
        {"name": "head", "op": "linear", "inputs": ["last"], "in_features": 5, "out_features": 3}"#;
    let p = exact_surgery(&init_model(arch("[7, 3]", steps_first), 2).unwrap(), &random_input(&[7, 3], 5));
    let (Op::Conv1d(c), Op::Gru(g)) = (&p.arch.node("c").unwrap().op, &p.arch.node("g").unwrap().op) else { panic!() };
    assert_eq!((c.in_channels, c.out_channels, g.input_size, g.hidden_size), (3, 4, 4, 3));
    for (shape, body) in [
        (
            "[3, 4, 5]",
            r#"{"name": "a", "op": "conv2d", "inputs": ["input"], "in_channels": 3, "out_channels": 4, "kernel_size": 1},
            {"name": "t", "op": "transpose", "inputs": ["a"], "dim0": 1, "dim1": 2},
            {"name": "f", "op": "flatten", "inputs": ["t"]}, {"name": "head", "op": "linear", "inputs": ["f"], "in_features": 80, "out_features": 3}"#,
        ),
        (
            "[3, 7]",
            r#"{"name": "a", "op": "conv1d", "inputs": ["input"], "in_channels": 3, "out_channels": 4, "kernel_size": 1},
            {"name": "m", "op": "mean", "inputs": ["a"], "dim": 1}, {"name": "head", "op": "linear", "inputs": ["m"], "in_features": 7, "out_features": 3}"#,
        ),
    ] {
        let deps = analyse(&init_model(arch(shape, body), 2).unwrap());
        assert!(deps.groups.iter().all(|g| !g.producers.contains(&"a".to_string())), "{body}: {:?}", deps.groups);
    }
}

/// Recurrent hidden units: unit j ties every gate's rows of `W_ih`, `W_hh` and the biases in
/// every layer and direction, column j of `W_hh`, the next layer's input columns and, through
/// `select`, the head's columns; a GRU feeding an LSTM (through a tanh) passes its units into
/// the LSTM's input columns. Zeroing every third unit and pruning exactly those changes no
/// output, on both teachers and on stacked bidirectional nets with and without biases; a
/// `select` along the hidden axis, or a linear over every step, keeps the units whole.
#[test]
fn exact_surgery_on_recurrent_hidden_units() {
    use wick::model::arch::{Arch, Op};
    let rows = wick::data::Dataset::read(&fixture("data/digits_rows_test.safetensors")).unwrap();
    for name in ["digits_gru", "digits_lstm"] {
        let m = load(&fixture(&format!("models/{name}.safetensors"))).deep_clone().unwrap();
        let p = exact_surgery(&m, &rows.x);
        let (Op::Gru(c) | Op::Lstm(c)) = &p.arch.nodes[0].op else { panic!("{name}") };
        let Op::Linear(fc) = &p.arch.node("fc").unwrap().op else { panic!() };
        assert_eq!(fc.in_features, c.hidden_size, "{name}: the head's columns follow the hidden units");
    }
    let arch = |body: &str| -> Arch {
        let json = format!(r#"{{"format": "wick-arch", "version": 1, "input": {{"shape": [6, 5]}}, "nodes": [{body}], "output": "head"}}"#);
        Arch::from_json(&json, "rnn.json").unwrap()
    };
    let chain = r#"{"name": "a", "op": "gru", "inputs": ["input"], "input_size": 5, "hidden_size": 9, "num_layers": 2, "bidirectional": true},
        {"name": "t", "op": "tanh", "inputs": ["a"]},
        {"name": "b", "op": "lstm", "inputs": ["t"], "input_size": 18, "hidden_size": 7, "bidirectional": true, "bias": false},
        {"name": "last", "op": "select", "inputs": ["b"], "dim": 1, "index": 0},
        {"name": "head", "op": "linear", "inputs": ["last"], "in_features": 14, "out_features": 3}"#;
    let x = random_input(&[6, 5], 5);
    let p = exact_surgery(&init_model(arch(chain), 2).unwrap(), &x);
    let (Op::Gru(a), Op::Lstm(b)) = (&p.arch.node("a").unwrap().op, &p.arch.node("b").unwrap().op) else { panic!() };
    assert_eq!((a.hidden_size, b.input_size, b.hidden_size), (6, 12, 4), "9 → 6 units, both directions into the LSTM; 7 → 4");
    // A select along the hidden axis reads it as something else: the units stay whole.
    let body = r#"{"name": "a", "op": "gru", "inputs": ["input"], "input_size": 5, "hidden_size": 4},
        {"name": "last", "op": "select", "inputs": ["a"], "dim": 2, "index": 0}, {"name": "head", "op": "linear", "inputs": ["last"], "in_features": 6, "out_features": 3}"#;
    let deps = analyse(&init_model(arch(body), 2).unwrap());
    assert!(deps.groups.iter().all(|g| !g.producers.contains(&"a".to_string())), "{:?}", deps.groups);
    // A linear over every step reads the units as its columns; its own features, flattened with
    // the steps, stay whole.
    let per_step = r#"{"name": "a", "op": "gru", "inputs": ["input"], "input_size": 5, "hidden_size": 9},
        {"name": "per_step", "op": "linear", "inputs": ["a"], "in_features": 9, "out_features": 2}, {"name": "f", "op": "flatten", "inputs": ["per_step"]}, {"name": "head", "op": "linear", "inputs": ["f"], "in_features": 12, "out_features": 3}"#;
    let p = exact_surgery(&init_model(arch(per_step), 2).unwrap(), &x);
    let (Op::Gru(a), Op::Linear(l)) = (&p.arch.node("a").unwrap().op, &p.arch.node("per_step").unwrap().op) else { panic!() };
    assert_eq!((a.hidden_size, l.in_features, l.out_features), (6, 6, 2));
    // Attention pooling: a linear scores each step from the units (its columns), the weights
    // (softmax over time, or a sigmoid gate) scale every unit of their step, and a sum over time
    // pools them into the head's columns.
    for weights in [r#""op": "softmax", "inputs": ["score"], "dim": 1"#, r#""op": "sigmoid", "inputs": ["score"]"#] {
        let body = format!(
            r#"{{"name": "a", "op": "gru", "inputs": ["input"], "input_size": 5, "hidden_size": 9, "bidirectional": true}},
            {{"name": "score", "op": "linear", "inputs": ["a"], "in_features": 18, "out_features": 1}}, {{"name": "w", {weights}}},
            {{"name": "weighted", "op": "mul", "inputs": ["a", "w"]}}, {{"name": "pooled", "op": "sum", "inputs": ["weighted"], "dim": 1}},
            {{"name": "head", "op": "linear", "inputs": ["pooled"], "in_features": 18, "out_features": 3}}"#
        );
        let p = exact_surgery(&init_model(arch(&body), 2).unwrap(), &x);
        let (Op::Gru(a), Op::Linear(score), Op::Linear(head)) = (&p.arch.node("a").unwrap().op, &p.arch.node("score").unwrap().op, &p.arch.node("head").unwrap().op) else { panic!() };
        assert_eq!((a.hidden_size, score.in_features, score.out_features, head.in_features), (6, 12, 1, 12), "{weights}");
    }
}

/// Linears over every step or token (an MLP-Mixer's or a transformer's feed-forward block, a
/// per-step head) own features on their output's last axis: the hidden features of
/// `linear → activation → linear` are a group, cut from the first's rows and the second's
/// columns. Features normalised together by a LayerNorm, added to a residual stream that one
/// reaches, or mixed across tokens after a transpose stay whole. Pruning every third unit
/// changes no output.
#[test]
fn exact_surgery_on_linears_over_every_step() {
    use wick::model::arch::{Arch, Op};
    let mixer = r#"{"format": "wick-arch", "version": 1, "input": {"shape": [6, 5]}, "nodes": [
        {"name": "embed", "op": "linear", "inputs": ["input"], "in_features": 5, "out_features": 8},
        {"name": "ln1", "op": "layernorm", "inputs": ["embed"], "normalized_shape": [8]},
        {"name": "t1", "op": "transpose", "inputs": ["ln1"], "dim0": 1, "dim1": 2},
        {"name": "tok", "op": "linear", "inputs": ["t1"], "in_features": 6, "out_features": 6},
        {"name": "t2", "op": "transpose", "inputs": ["tok"], "dim0": 1, "dim1": 2},
        {"name": "res1", "op": "add", "inputs": ["embed", "t2"]},
        {"name": "ln2", "op": "layernorm", "inputs": ["res1"], "normalized_shape": [8]},
        {"name": "up", "op": "linear", "inputs": ["ln2"], "in_features": 8, "out_features": 12},
        {"name": "act", "op": "gelu", "inputs": ["up"]},
        {"name": "down", "op": "linear", "inputs": ["act"], "in_features": 12, "out_features": 8},
        {"name": "res2", "op": "add", "inputs": ["res1", "down"]},
        {"name": "proj", "op": "linear", "inputs": ["res2"], "in_features": 8, "out_features": 7},
        {"name": "act2", "op": "relu", "inputs": ["proj"]},
        {"name": "pool", "op": "mean", "inputs": ["act2"], "dim": 1},
        {"name": "head", "op": "linear", "inputs": ["pool"], "in_features": 7, "out_features": 3}
    ], "output": "head"}"#;
    let m = init_model(Arch::from_json(mixer, "mixer.json").unwrap(), 3).unwrap();
    let deps = analyse(&m);
    let mut prunable: Vec<&str> = deps.groups.iter().flat_map(|g| g.producers.iter().map(String::as_str)).collect();
    prunable.sort();
    assert_eq!(prunable, ["proj", "up"]);
    let p = exact_surgery(&m, &random_input(&[6, 5], 5));
    let width = |n: &str| match &p.arch.node(n).unwrap().op {
        Op::Linear(c) => (c.in_features, c.out_features),
        _ => panic!("{n} is a linear"),
    };
    assert_eq!((width("up"), width("down"), width("proj"), width("head")), ((8, 8), (8, 8), (8, 4), (4, 3)));
    // A ConvNeXt block (onnx/make_convnext_block.py): its linears over every pixel of a
    // channels-last value, then a layer scale on the last axis; the hidden features are pruned.
    let block = load(&fixture("onnx/convnext_block.legacy.onnx"));
    let p = exact_surgery(&block.deep_clone().unwrap(), &random_input(block.input_shape(), 5));
    let (Op::Linear(pw1), Op::Linear(pw2)) = (&p.arch.node("pw1").unwrap().op, &p.arch.node("pw2").unwrap().op) else { panic!() };
    assert_eq!((pw1.in_features, pw1.out_features, pw2.in_features, pw2.out_features), (8, 10, 10, 8));
    // A token table's columns are features too (onnx/make_textcnn.py): pruned with the input
    // channels of the convs that read them, transposed.
    let textcnn = load(&fixture("onnx/textcnn.legacy.onnx"));
    let ids = wick::data::Dataset::read(&fixture("data/digits_tokens_test.safetensors")).unwrap().x.narrow(0, 0, 64).unwrap();
    let p = exact_surgery(&textcnn.deep_clone().unwrap(), &ids);
    let (Op::Embedding(emb), Op::Conv1d(c3), Op::Conv1d(c5)) = (&p.arch.node("emb").unwrap().op, &p.arch.node("c3").unwrap().op, &p.arch.node("c5").unwrap().op) else { panic!() };
    assert_eq!((emb.embedding_dim, c3.in_channels, c5.in_channels, p.params["emb.weight"].as_tensor().dims()), (5, 5, 5, &[256, 5][..]));
}

/// A squeeze-and-excitation gate ties the channels it scales to its second conv's outputs (or
/// its second linear's, through a `reshape`), and its squeezed channels are a group of their
/// own; a one-channel spatial map broadcast over the channels stays whole; a `narrow` of the
/// channels keeps its run of them. Pruning every third unit of each group changes no output.
#[test]
fn exact_surgery_through_squeeze_excitation_and_products() {
    use wick::model::arch::Op;
    let test = data("test");
    let p = exact_surgery(&load(&fixture("models/digits_mbnet.safetensors")).deep_clone().unwrap(), &test.x.narrow(0, 0, 64).unwrap());
    let node = |n: &str| p.arch.node(n).unwrap().op.clone();
    let (Op::Conv2d(dw), Op::Conv2d(fc1), Op::Conv2d(fc2), Op::Reshape(r)) = (node("b2_dw"), node("b2_se.fc1"), node("b2_se.fc2"), node("b2_se.squeeze")) else { panic!() };
    assert_eq!((fc2.out_channels, fc1.in_channels, r.shape[0]), (dw.out_channels, dw.out_channels, dw.out_channels as i64));
    assert!(dw.out_channels < 48 && fc1.out_channels < 16, "{dw:?} {fc1:?}");
    // A reshape that splits each channel in two carries the channels on (onnx/make_se_reshape.py).
    let se = load(&fixture("onnx/se_reshape.onnx"));
    let p = exact_surgery(&se.deep_clone().unwrap(), &random_input(se.input_shape(), 5));
    let reshape = p.arch.nodes.iter().find_map(|n| match &n.op {
        Op::Reshape(r) if r.shape.len() == 2 => Some(r.shape[0]),
        _ => None,
    });
    let Op::Conv2d(conv) = &p.arch.nodes[0].op else { panic!() };
    assert_eq!((reshape, conv.out_channels < 8), (Some(2 * conv.out_channels as i64), true));
    // A narrow of the channels carries its run of them (onnx/make_split.py): the two halves of
    // c1's chunk are ranked apart (4 + 4 channels, every third of each removed: 2 + 2 kept), the
    // GLU ties c2's value and gate channels (16 = 2 × 8), whose runs the split cuts into 3 + 5
    // (2 + 3 kept each way: 10), and c3 keeps 3 of 5; the narrows' bounds follow.
    let split = load(&fixture("onnx/split.legacy.onnx"));
    let p = exact_surgery(&split.deep_clone().unwrap(), &random_input(split.input_shape(), 5));
    let width = |n: &str| match &p.arch.node(n).unwrap().op {
        Op::Conv2d(c) => c.out_channels,
        _ => panic!("{n} is a conv2d"),
    };
    assert_eq!((width("c1"), width("c2"), width("c3")), (4, 10, 3));
    let cuts: Vec<(i64, usize)> = p.arch.nodes.iter().filter_map(|n| if let Op::Narrow(c) = &n.op { Some((c.start, c.length)) } else { None }).collect();
    assert_eq!(cuts, [(0, 2), (2, 2), (0, 5), (5, 5), (1, 6), (0, 2), (2, 3)]);
    for case in ["se_linear_gate", "mul_same_shape", "mul_spatial_gate", "prelu", "instancenorm"] {
        let m = load(&fixture(&format!("reference/gradients/{case}.safetensors")));
        let deps = analyse(&m);
        let p = exact_surgery(&m.deep_clone().unwrap(), &random_input(m.input_shape(), 5));
        if case == "prelu" {
            // A slope per channel goes with its channel; one shared slope stays.
            let (Op::Conv2d(conv), Op::Prelu(act), Op::Prelu(act2)) = (p.arch.node("conv").unwrap().op.clone(), p.arch.node("act").unwrap().op.clone(), p.arch.node("act2").unwrap().op.clone()) else {
                panic!()
            };
            assert_eq!((act.num_parameters, act2.num_parameters), (conv.out_channels, 1));
            assert!(conv.out_channels < 4);
        }
        if case == "instancenorm" {
            // InstanceNorm's channels are its own: pruned with the conv's.
            let (Op::Conv1d(conv), Op::GroupNorm(norm)) = (p.arch.node("conv").unwrap().op.clone(), p.arch.node("norm").unwrap().op.clone()) else { panic!() };
            assert_eq!((norm.num_groups, norm.num_channels, p.params["norm.weight"].as_tensor().dims()[0]), (conv.out_channels, conv.out_channels, conv.out_channels));
            assert!(conv.out_channels < 4);
        }
        if case == "mul_spatial_gate" {
            assert!(deps.groups.iter().all(|g| !g.producers.contains(&"att".to_string())), "{:?}", deps.groups);
            let Op::Conv2d(att) = &p.arch.node("att").unwrap().op else { panic!() };
            assert_eq!(att.out_channels, 1);
        }
    }
}

/// The heads of each attention (and of each mask-reading one) form a group of units, each head
/// its q, k and v features whole: of a packed projection through its three `narrow`s, or of
/// three linears. Removing every third head changes no output; the attention keeps its head
/// width (and so its scale) and counts fewer heads.
#[test]
fn exact_surgery_on_attention_heads() {
    let heads = |m: &Model| -> Vec<(usize, Option<f64>)> {
        m.arch.nodes.iter().filter_map(|n| if let wick::model::arch::Op::Attention(c) = &n.op { Some((c.num_heads, c.scale.map(|s| (s * 1e6).round() / 1e6))) } else { None }).collect()
    };
    let head_groups = |m: &Model| -> Vec<(Vec<String>, usize)> { analyse(m).groups.iter().filter(|g| g.heads).map(|g| (g.producers.clone(), g.units.len())).collect() };
    let vit = load(&fixture("models/digits_vit.safetensors"));
    assert_eq!(head_groups(&vit), [(vec!["qkv".to_string()], 4)]);
    let rows = wick::data::Dataset::read(&fixture("data/digits_rows_test.safetensors")).unwrap().x.narrow(0, 0, 64).unwrap();
    let p = exact_surgery(&vit.deep_clone().unwrap(), &rows);
    assert_eq!(heads(&p), [(2, None)]);
    let runs: Vec<(i64, usize)> =
        ["q", "k", "v"].iter().map(|n| if let wick::model::arch::Op::Narrow(c) = &p.arch.node(n).unwrap().op { (c.start, c.length) } else { panic!("{n} is a narrow") }).collect();
    assert_eq!(runs, [(0, 16), (16, 16), (32, 16)]);
    assert_eq!(p.params["proj.weight"].as_tensor().dims(), [32, 16]);
    // nn.MultiheadAttention (packed), Hugging Face's form (three linears) and timm's (packed,
    // its own scale): 4, 4 and 2 heads.
    let blocks = load(&fixture("onnx/vit_blocks.legacy.onnx"));
    assert_eq!(head_groups(&blocks).iter().map(|g| g.1).collect::<Vec<_>>(), [4, 4, 2]);
    let x = Tensor::from_vec(wick::tensor_file::TensorFile::read(&fixture("onnx/vit_blocks.data.safetensors")).unwrap().f32("x").unwrap(), (5, 8, 8), &Device::Cpu).unwrap();
    let p = exact_surgery(&blocks.deep_clone().unwrap(), &x);
    assert_eq!(heads(&p), [(2, None), (2, None), (1, Some(0.2))]);
    // A text encoder's attention reads the token ids as its padding mask: its heads are pruned
    // the same way, and the sentences' embeddings stay.
    let dir = fixture("text/tiny_bert");
    let bert = wick::hf::load(&dir, None).unwrap().model;
    let text = wick::embedding::TextData::read(&fixture("text/sentences.txt"), &dir, 64).unwrap();
    let deps = analyse(&bert);
    let chosen: BTreeSet<usize> = deps.groups.iter().filter(|g| g.heads).flat_map(|g| g.units.iter().copied().step_by(3)).collect();
    assert!(!chosen.is_empty());
    zero_units(&bert, &deps, &chosen).unwrap();
    let before = wick::embedding::embed(&bert, &text, 16).unwrap();
    let pruned = remove_units(&bert, &deps, &chosen).unwrap();
    let after = wick::embedding::embed(&pruned, &text, 16).unwrap();
    let d = before.iter().zip(&after).map(|(a, b)| max_abs_diff(a, b)).fold(0.0, f32::max);
    assert!(d <= 1e-5, "embeddings moved by {d}");
    assert!(heads(&pruned).iter().zip(heads(&bert)).all(|(a, b)| a.0 < b.0), "{:?} from {:?}", heads(&pruned), heads(&bert));
    // `wick prune` takes heads only when asked (`--heads`); the summary counts them as heads.
    let dir = tempfile::tempdir().unwrap();
    let vit_path = fixture("models/digits_vit.safetensors");
    for (flag, want_heads, want_qkv) in [(None, 4, 96), (Some("--heads"), 2, 48)] {
        let out = dir.path().join("p.safetensors");
        let mut args = vec!["prune", vit_path.to_str().unwrap(), "--ratio", "0.5", "--epochs", "0", "--json", "--out", out.to_str().unwrap()];
        args.extend(flag);
        let (stdout, _) = run_expect(&args, 0);
        let p = load(&out);
        assert_eq!((heads(&p)[0].0, p.params["qkv.weight"].as_tensor().dims()[0]), (want_heads, want_qkv), "{flag:?}");
        assert_eq!(stdout.contains("\"heads\":true"), flag.is_some(), "{flag:?}: {stdout}");
    }
}
