//! Recipes, `wick compress` end to end (artifact, report, gate, exit codes,
//! interruption) and `wick batch`.

use crate::common::*;
use std::path::{Path, PathBuf};

fn data_args() -> Vec<String> {
    vec!["--train".into(), digits("train").display().to_string(), "--val".into(), digits("val").display().to_string(), "--test".into(), digits("test").display().to_string()]
}

fn compress(model: &Path, recipe: &str, out: &Path, extra: &[&str], code: i32) -> (String, String) {
    let mut a: Vec<String> = vec!["compress".into(), model.display().to_string(), "--recipe".into(), recipe.into(), "--out".into(), out.display().to_string(), "--quiet".into()];
    a.extend(data_args());
    a.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    run_expect(&refs, code)
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

fn passes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("passes")
}

#[test]
fn every_shipped_recipe_parses_and_validates() {
    let mut n = 0;
    for e in std::fs::read_dir(passes_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let r = wick::recipe::read(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
            assert_eq!(format!("{}.json", r.name), p.file_name().unwrap().to_string_lossy(), "a recipe's name is its file name");
            n += 1;
        }
    }
    assert!(n >= 4);
}

#[test]
fn every_shipped_recipe_runs_on_a_fixture() {
    let dir = tempfile::tempdir().unwrap();
    for recipe in ["ptq-int8", "qat-int8", "distill-int8", "edge-int8"] {
        let out = dir.path().join(recipe);
        compress(&mlp_path(), recipe, &out, &["--max-epochs", "1"], 0);
        let r = report(&out);
        assert_eq!(r["recipe_name"], recipe);
        assert!(r["compressed"]["accuracy"].as_f64().unwrap() > 0.85, "{recipe}: {}", r["compressed"]["accuracy"]);
        assert_eq!(r["passes"].as_array().unwrap().last().unwrap()["pass"], "convert_int8");
        for f in ["model.int8.safetensors", "report.md", "accuracy_vs_size.svg"] {
            assert!(out.join(f).is_file(), "{recipe}: {f}");
        }
    }
}

#[test]
fn the_report_matches_wick_eval_of_the_written_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ptq");
    compress(&resnet_path(), "ptq-int8", &out, &["--max-accuracy-drop", "0.3"], 0);
    let r = report(&out);
    let (o, _) = run_expect(&["eval", out.join("model.int8.safetensors").to_str().unwrap(), "--data", digits("test").to_str().unwrap(), "--json", "--quiet"], 0);
    let e: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(e["correct"], r["compressed"]["correct"]);
    assert_eq!(e["accuracy"], r["compressed"]["accuracy"]);
    assert_eq!(r["compressed"]["bytes_on_disk"].as_u64().unwrap(), std::fs::metadata(out.join("model.int8.safetensors")).unwrap().len());
    assert!(r["accuracy_drop_points"].as_f64().unwrap() <= 0.3);
    assert_eq!(r["gate"]["passed"], true);
    assert!((r["teacher"]["accuracy"].as_f64().unwrap() - 353.0 / 360.0).abs() < 1e-12);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("PASSED") && md.contains("accuracy_vs_size.svg"));
    let svg = std::fs::read_to_string(out.join("accuracy_vs_size.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("calibrate"));
}

/// A recipe that loses accuracy for certain: 90 % of the channels pruned with no recovery.
fn lossy_recipe(dir: &Path) -> PathBuf {
    let p = dir.join("lossy.json");
    let text = r#"{"name": "lossy", "passes": [{"pass": "prune_channels", "ratio": 0.9, "epochs": 0}, {"pass": "fold_batchnorm"}, {"pass": "calibrate"}, {"pass": "convert_int8"}]}"#;
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn gate_failure_exits_one_and_errors_exit_two() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g");
    // A gate the lossy recipe cannot meet: no accuracy may be lost.
    let (_, err) = compress(&mlp_path(), lossy_recipe(dir.path()).to_str().unwrap(), &out, &["--max-accuracy-drop", "0"], 1);
    assert!(err.contains("gate failed"), "{err}");
    let r = report(&out);
    assert_eq!(r["gate"]["passed"], false);
    assert!(r["gate"]["reason"].as_str().unwrap().contains("more than the allowed 0"));
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("FAILED"));
    // A relative gate that passes.
    compress(&mlp_path(), "ptq-int8", &dir.path().join("rel"), &["--max-relative-drop", "0.01"], 0);
    // Errors: an unknown recipe, a bad recipe field.
    let (_, err) = compress(&mlp_path(), "no-such-recipe", &dir.path().join("e"), &[], 2);
    assert!(err.contains("no-such-recipe"), "{err}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"name": "bad", "passes": [{"pass": "calibrate", "metod": "entropy"}, {"pass": "convert_int8"}]}"#).unwrap();
    let (_, err) = compress(&mlp_path(), bad.to_str().unwrap(), &dir.path().join("e"), &[], 2);
    assert!(err.contains("bad.json") && err.contains("passes[0]") && err.contains("metod"), "{err}");
    std::fs::write(&bad, r#"{"name": "bad", "passes": [{"pass": "calibrate"}, {"pass": "prune_channels", "ratio": 0.5}, {"pass": "convert_int8"}]}"#).unwrap();
    let (_, err) = compress(&mlp_path(), bad.to_str().unwrap(), &dir.path().join("e"), &[], 2);
    assert!(err.contains("passes[1]") && err.contains("before 'calibrate'"), "{err}");
    assert!(!dir.path().join("e").join("report.json").exists());
}

#[test]
fn sensitivity_and_fallback_keep_layers_in_float() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    // An unmeetable gate with --fallback ends with every layer in float, most sensitive first.
    compress(&mlp_path(), lossy_recipe(dir.path()).to_str().unwrap(), &out, &["--max-accuracy-drop", "0", "--fallback"], 1);
    let r = report(&out);
    assert_eq!(r["sensitivity"].as_array().unwrap().len(), 3);
    let fb: Vec<&str> = r["float_fallback"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let order: Vec<&str> = r["sensitivity"].as_array().unwrap().iter().map(|v| v["layer"].as_str().unwrap()).collect();
    assert_eq!(fb, order);
    assert!(r["layers"].as_array().unwrap().iter().all(|l| l["status"] == "float"));
}

#[test]
fn a_batch_reports_every_job_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let m = serde_json::json!({"jobs": [
        {"name": "good", "model": mlp_path(), "recipe": "ptq-int8", "train": digits("train"), "val": digits("val"), "test": digits("test"), "out": "good", "max_accuracy_drop": 1.0},
        {"name": "strict", "model": mlp_path(), "recipe": lossy_recipe(dir.path()), "train": digits("train"), "val": digits("val"), "test": digits("test"), "out": "strict", "max_accuracy_drop": 0.0},
        {"name": "broken", "model": dir.path().join("missing.safetensors"), "recipe": "ptq-int8", "train": digits("train"), "val": digits("val"), "test": digits("test"), "out": "broken"}
    ]});
    let manifest = dir.path().join("batch.json");
    std::fs::write(&manifest, m.to_string()).unwrap();
    let (o, e) = run_expect(&["batch", manifest.to_str().unwrap(), "--jobs", "2", "--json"], 2);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&o).unwrap();
    let verdict = |n: &str| rows.iter().find(|r| r["job"] == n).unwrap()["verdict"].as_str().unwrap().to_string();
    assert_eq!(verdict("good"), "passed");
    assert_eq!(verdict("strict"), "gate failed");
    assert_eq!(verdict("broken"), "error");
    assert!(e.contains("1 of 3 jobs errored"), "{e}");
    assert!(rows.iter().find(|r| r["job"] == "broken").unwrap()["error"].as_str().unwrap().contains("missing.safetensors"));
    assert!(dir.path().join("good/report.json").is_file());
    // Without the broken job: exit 1 (a gate failed); the finished jobs are skipped.
    let mut m2 = m.clone();
    m2["jobs"].as_array_mut().unwrap().pop();
    std::fs::write(&manifest, m2.to_string()).unwrap();
    let (o, _) = run_expect(&["batch", manifest.to_str().unwrap(), "--json"], 1);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&o).unwrap();
    assert_eq!(rows[0]["verdict"], "passed (up to date)");
    assert_eq!(rows[1]["verdict"], "gate failed (up to date)");
    let (o, _) = run_expect(&["batch", manifest.to_str().unwrap(), "--json", "--force"], 1);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&o).unwrap();
    assert_eq!(rows[0]["verdict"], "passed");
}

/// One `compress` run evaluates each distinct model on each split at most once, compiles the
/// teacher's plan once (its validation, training and test results and its latency come from
/// it) and the final INT8 plan once (its check on validation, its test accuracy and latency),
/// and writes the artifact once (a file the run reads back and checks). The recipe is
/// `edge-int8` with one calibration method: `auto` compiles every candidate's INT8 plan to
/// choose among them, the final model's among them when QAT keeps the calibrated model.
#[test]
fn one_compress_run_compiles_and_evaluates_each_model_once() {
    use wick::audit::{fingerprint, fingerprint_int8, take, Event};
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("edge-entropy.json");
    let edge = std::fs::read_to_string(passes_dir().join("edge-int8.json")).unwrap();
    assert!(edge.contains(r#""method": "auto""#), "{edge}");
    std::fs::write(&recipe, edge.replace(r#""method": "auto""#, r#""method": "entropy""#)).unwrap();
    let spec = wick::job::JobSpec {
        model: mlp_path(),
        arch: None,
        recipe: recipe.to_str().unwrap().into(),
        train: digits("train"),
        val: digits("val"),
        test: digits("test"),
        calib: None,
        out: dir.path().join("edge"),
        max_accuracy_drop: Some(1.0),
        max_relative_drop: None,
        seed: 0,
        max_epochs: Some(2),
        sensitivity: false,
        fallback: false,
    };
    take();
    wick::job::run(&spec, &wick::progress::Silent).unwrap();
    let events = take();
    assert!(events.len() > 10, "the record is kept in test builds: {events:?}");
    let mut seen = std::collections::BTreeSet::new();
    for e in events.iter().filter(|e| matches!(e, Event::Evaluated { .. })) {
        assert!(seen.insert(e.clone()), "evaluated twice: {e:?}");
    }
    let compiled = |model: u64, int8: bool| events.iter().filter(|e| **e == Event::Compiled { model, int8 }).count();
    assert_eq!(compiled(fingerprint(&load(&mlp_path())), false), 1, "the teacher's plan");
    let artifact = wick::compare::read_int8(&spec.out.join("model.int8.safetensors")).unwrap();
    assert_eq!(compiled(fingerprint_int8(&artifact), true), 1, "the final INT8 plan");
}

/// Every step a shipped recipe names is a file (or folder) of that name under `src/passes/`,
/// which holds its code, and a step `PassSpec` knows; the pipeline only sequences them.
#[test]
fn every_recipe_step_is_a_file_of_its_name() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/passes");
    for entry in std::fs::read_dir(passes_dir()).unwrap().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "json")) {
        let recipe = wick::recipe::read(&entry.path()).unwrap();
        for step in &recipe.passes {
            let name = step.name();
            assert!(wick::passes::STEP_NAMES.contains(&name), "{name}");
            let file = src.join(format!("{name}.rs"));
            let folder = src.join(name).join("mod.rs");
            let code = std::fs::read_to_string(&file).or_else(|_| std::fs::read_to_string(&folder)).unwrap_or_else(|_| panic!("{}: step '{name}' has no src/passes/{name}.rs", entry.path().display()));
            assert!(
                code.contains("impl Pass for") || std::fs::read_dir(src.join(name)).is_ok_and(|d| d.flatten().any(|f| std::fs::read_to_string(f.path()).unwrap_or_default().contains("impl Pass for"))),
                "src/passes/{name} implements its step"
            );
        }
    }
    let pipeline = std::fs::read_to_string(src.parent().unwrap().join("pipeline.rs")).unwrap();
    assert!(wick::passes::STEP_NAMES.iter().all(|s| !pipeline.contains(&format!("\"{s}\""))), "pipeline.rs names no step");
}
