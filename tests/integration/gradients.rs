//! The training oracle: every case in `fixtures/reference/gradients/` (made with PyTorch
//! autograd; see its README) is run through wick's train-mode forward, cross-entropy and
//! backward, and checked against PyTorch's logits, loss, parameter and input gradients, running
//! statistics after the step, and eval-mode logits. A new case is a new pair of files there.

use crate::common::fixture;
use candle_core::{Tensor, Var};
use std::collections::BTreeMap;
use std::path::Path;
use wick::model::forward::{Mode, Run};
use wick::model::load::load_model;
use wick::tensor_file::{self, TensorFile};

/// `max |a − b| ≤ 1e-4 · (1 + max |reference|)`, the tolerance.
pub(crate) fn check(case: &str, what: &str, ours: &Tensor, reference: &[f32], shape: &[usize], failures: &mut Vec<String>) {
    if ours.dims() != shape {
        failures.push(format!("{case}: {what}: shape {:?}, PyTorch {:?}", ours.dims(), shape));
        return;
    }
    let ours: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    // f32::max skips NaN, so a non-finite value is caught on its own.
    let diff = ours.iter().zip(reference).map(|(a, b)| if a.is_finite() { (a - b).abs() } else { f32::INFINITY }).fold(0f32, f32::max);
    let tol = 1e-4 * (1.0 + scale);
    if diff > tol {
        failures.push(format!("{case}: {what}: max |diff| {diff:.3e} > {tol:.3e}"));
    }
}

/// Runs one case; returns its failures (empty when every quantity matches).
fn run_case(path: &Path) -> Vec<String> {
    let case = path.file_stem().unwrap().to_string_lossy().to_string();
    let file = TensorFile::read(path).unwrap();
    let f32s = |name: &str| {
        let t = file.tensors.get(name).unwrap_or_else(|| panic!("{case}: no tensor {name}"));
        (tensor_file::to_f32(t, &case, name).unwrap(), t.shape.clone())
    };
    let teacher = load_model(path, None).unwrap_or_else(|e| panic!("{case}: {e}")).model;
    let mut failures = vec![];

    // Eval mode first, with the initial running statistics (a train step changes them).
    let (x, xs) = f32s("x");
    let x = Var::from_tensor(&Tensor::from_vec(x, xs.clone(), &candle_core::Device::Cpu).unwrap()).unwrap();
    let (eval_ref, eval_shape) = f32s("eval_logits");
    match teacher.forward(x.as_tensor(), Mode::Eval) {
        Ok(eval) => check(&case, "eval logits", &eval, &eval_ref, &eval_shape, &mut failures),
        Err(e) => failures.push(format!("{case}: eval forward: {e}")),
    }

    let y: Vec<u32> = tensor_file::to_i64(&file.tensors["y"], &case, "y").unwrap().into_iter().map(|v| v as u32).collect();
    let logits = match teacher.run(x.as_tensor(), &Run { mode: Mode::Train, taps: &[], hook: None, rng: None }) {
        Ok((logits, _)) => logits,
        Err(e) => {
            failures.push(format!("{case}: train forward: {e}"));
            return failures;
        }
    };
    let (lr, ls) = f32s("logits");
    check(&case, "train logits", &logits, &lr, &ls, &mut failures);
    let loss = wick::train::loss::cross_entropy(&logits, &y).unwrap();
    let (lossr, _) = f32s("loss");
    check(&case, "loss", &loss.reshape(1).unwrap(), &lossr, &[1], &mut failures);

    let grads = match loss.backward() {
        Ok(g) => g,
        Err(e) => {
            failures.push(format!("{case}: backward: {e}"));
            return failures;
        }
    };
    let mut expected: BTreeMap<String, (Vec<f32>, Vec<usize>)> = BTreeMap::new();
    for name in file.tensors.keys() {
        if let Some(p) = name.strip_prefix("grad.") {
            expected.insert(p.to_string(), f32s(name));
        }
    }
    let (gi, gis) = expected.remove("input").unwrap_or_else(|| panic!("{case}: no grad.input"));
    match grads.get(x.as_tensor()) {
        Some(g) => check(&case, "grad input", g, &gi, &gis, &mut failures),
        None => failures.push(format!("{case}: no gradient reaches the input")),
    }
    let trainable: Vec<String> = teacher.trainable_names();
    for name in &trainable {
        match expected.remove(name) {
            None => failures.push(format!("{case}: wick trains '{name}', PyTorch has no gradient for it")),
            Some((g, gs)) => match grads.get(teacher.params[name].as_tensor()) {
                Some(ours) => check(&case, &format!("grad {name}"), ours, &g, &gs, &mut failures),
                None => failures.push(format!("{case}: no gradient reaches '{name}'")),
            },
        }
    }
    for name in expected.keys() {
        failures.push(format!("{case}: PyTorch trains '{name}', wick does not"));
    }
    for name in file.tensors.keys() {
        if let Some(p) = name.strip_prefix("after.") {
            let (v, s) = f32s(name);
            match teacher.params.get(p) {
                Some(ours) => check(&case, name, ours.as_tensor(), &v, &s, &mut failures),
                None => failures.push(format!("{case}: no buffer '{p}'")),
            }
        }
    }
    failures
}

#[test]
fn every_op_matches_pytorch_autograd() {
    let dir = fixture("reference/gradients");
    let mut cases: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "safetensors") && crate::common::has_sidecar(p)).collect();
    cases.sort();
    assert!(cases.len() >= 40, "expected the 40 oracle cases in {}, found {}", dir.display(), cases.len());
    let failures: Vec<String> = cases.iter().flat_map(|p| run_case(p)).collect();
    assert!(failures.is_empty(), "{} of {} cases differ from PyTorch:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
