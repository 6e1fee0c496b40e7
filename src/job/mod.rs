//! One compression job, from teacher to `DIR/model.int8.safetensors`, `DIR/report.json`,
//! `DIR/report.md` and `DIR/accuracy_vs_size.svg`: run the recipe, execute the INT8 model with
//! integer arithmetic on the test set, apply the gate (with optional per-layer sensitivity and
//! float fallback), write the artifact once and check the file read back bit for bit against the
//! model evaluated, measure latency and write the report. Outputs are built in a staging folder
//! inside DIR (`crate::staging`) and renamed into place at the end, so an interrupted run leaves no
//! partial files (the CLI removes the staging folder on SIGINT/SIGTERM and SIGHUP).

mod inputs;
pub mod manifest;
pub mod text;

use crate::staging::Staging;
pub use inputs::{already_done, input_fingerprint};
use inputs::{info, input_files};

use crate::artifact::Int8Model;
use crate::compare::{drop_points, drop_relative, file_bytes, model_bytes, Comparison};
use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::eval::{evaluate, evaluate_plan};
use crate::model::load::load_model;
use crate::passes::{Allowance, Ctx, Data};
use crate::pipeline::{self, Outcome};
use crate::progress::{Progress, Silent};
use crate::provenance::tool_version;
use crate::report::{self, latency, Ratios, Report, Sensitivity};
use crate::runtime::plan::Plan;
use crate::runtime::{kernels::Kernel, Exec};
use crate::tensor_file::write_atomic;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What to compress and how.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub model: PathBuf,
    #[serde(default)]
    pub arch: Option<PathBuf>,
    pub recipe: String,
    pub train: PathBuf,
    pub val: PathBuf,
    pub test: PathBuf,
    #[serde(default)]
    pub calib: Option<PathBuf>,
    pub out: PathBuf,
    #[serde(default)]
    pub max_accuracy_drop: Option<f64>,
    #[serde(default)]
    pub max_relative_drop: Option<f64>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub max_epochs: Option<usize>,
    #[serde(default)]
    pub sensitivity: bool,
    #[serde(default)]
    pub fallback: bool,
}

impl JobSpec {
    /// The gate's allowance, checked: points in [0, 100], a relative drop in [0, 1], not both.
    pub fn allowance(&self) -> Result<Option<Allowance>> {
        match (self.max_accuracy_drop, self.max_relative_drop) {
            (Some(_), Some(_)) => Err(WickError::invalid("--max-accuracy-drop/--max-relative-drop", "give one gate, not both")),
            (Some(p), None) if !(0.0..=100.0).contains(&p) => Err(WickError::invalid("--max-accuracy-drop", format!("{p} is not a number of points in [0, 100]"))),
            (None, Some(r)) if !(0.0..=1.0).contains(&r) => Err(WickError::invalid("--max-relative-drop", format!("{r} is not a fraction in [0, 1]"))),
            (Some(p), None) => Ok(Some(Allowance::Points(p))),
            (None, Some(r)) => Ok(Some(Allowance::Relative(r))),
            (None, None) => Ok(None),
        }
    }
}

/// The file names a job writes.
pub const ARTIFACT: &str = "model.int8.safetensors";
pub const REPORT_JSON: &str = "report.json";
pub const REPORT_MD: &str = "report.md";
pub const CHART: &str = "accuracy_vs_size.svg";

/// Runs the job; returns the report (whose gate says whether it passed).
pub fn run(spec: &JobSpec, progress: &dyn Progress) -> Result<Report> {
    let recipe_path = crate::recipe::resolve(&spec.recipe)?;
    let recipe = crate::recipe::read(&recipe_path)?;
    let allowance = spec.allowance()?;
    crate::hf::refuse_for(&spec.model, "compress")?;
    if recipe.passes.iter().any(crate::passes::PassSpec::is_text) {
        return Err(WickError::invalid("--recipe", format!("'{}' is a text-encoder recipe; {} is not a text encoder's directory", recipe.name, spec.model.display())));
    }
    let loaded = load_model(&spec.model, spec.arch.as_deref())?;
    let teacher = loaded.model;
    let read = |p: &Path| Dataset::read_fitting(p, teacher.input_shape(), teacher.num_classes());
    let (train, val, test) = (read(&spec.train)?, read(&spec.val)?, read(&spec.test)?);
    let calib = match &spec.calib {
        Some(p) => read(p)?,
        None => train.clone(),
    };
    // The teacher, compiled once: its validation and training predictions steer the recipe,
    // its test accuracy is the report's baseline, and the same plan is timed for latency.
    let t_plan = Plan::float(&teacher)?;
    let t_val = evaluate_plan(&t_plan, &val, 256, &Silent)?;
    let t_train = evaluate_plan(&t_plan, &train, 256, &Silent)?;
    let teacher_eval = evaluate_plan(&t_plan, &test, 256, progress)?;
    let ctx = Ctx::with_teacher_results(&teacher, Data { train: &train, val: &val, calib: &calib }, spec.seed, spec.max_epochs, allowance, t_val, t_train, progress);
    let Outcome { folded, int8: mut q, mut stages, final_stages, mut final_measure, mut final_plan } = pipeline::run(&recipe, &ctx, &test)?;
    let staging = Staging::new(&spec.out)?;
    let staged = staging.dir.join(ARTIFACT);
    let inputs = input_files(spec, &loaded.sha256, [("train", &train), ("val", &val), ("test", &test)], spec.calib.as_ref().map(|_| &calib))?;
    // The data files' hashes are in report.json; the artifact names its teacher.
    q.info.insert("provenance".into(), json!({"recipe": recipe.name, "tool": tool_version(), "seed": spec.seed, "teacher": inputs["teacher"]}));

    let mut sensitivity = vec![];
    if spec.sensitivity || spec.fallback {
        let folded_val = evaluate(&folded, &val, 256, progress)?.accuracy;
        for (name, layer) in &q.layers {
            let mut one = BTreeMap::new();
            one.insert(name.clone(), layer.input);
            let single = Int8Model::quantize(&folded, &one)?;
            let acc = crate::eval::evaluate_int8(&single, &val, 256, Exec::Integer(Kernel::Fast), &crate::progress::Silent)?.accuracy;
            sensitivity.push(Sensitivity { layer: name.clone(), drop_points: drop_points(folded_val, acc) });
        }
        sensitivity.sort_by(|a, b| b.drop_points.total_cmp(&a.drop_points).then(a.layer.cmp(&b.layer)));
    }
    // Evaluate with integer arithmetic (the plan is kept for latency); with --fallback keep the
    // most sensitive layers in float one at a time until the gate passes or none is left.
    let mut fallback = vec![];
    let (int8_eval, gate, q_plan) = loop {
        let (e, plan) = match final_measure.take() {
            Some(m) => m,
            None => {
                let plan = match final_plan.take() {
                    Some(p) => p,
                    None => Plan::int8(&q)?,
                };
                (evaluate_plan(&plan, &test, 256, progress)?, plan)
            }
        };
        if fallback.is_empty() {
            // The recipe's own model: the stages that ended with it get its accuracy.
            final_stages.iter().for_each(|&i| stages[i].test_accuracy = e.accuracy);
        }
        let (dp, dr) = (drop_points(teacher_eval.accuracy, e.accuracy), drop_relative(teacher_eval.accuracy, e.accuracy));
        let g = report::gate(dp, dr, spec.max_accuracy_drop, spec.max_relative_drop);
        let next = sensitivity.iter().map(|s| &s.layer).find(|l| !fallback.contains(*l)).cloned();
        match (g.passed || !spec.fallback, next) {
            (false, Some(l)) => {
                fallback.push(l);
                let keep: BTreeMap<_, _> = q.layers.iter().filter(|(k, _)| !fallback.contains(k)).map(|(k, v)| (k.clone(), v.input)).collect();
                let info = q.info.clone();
                q = Int8Model::quantize(&folded, &keep)?;
                q.info = info;
            }
            _ => break (e, g, plan),
        }
    };
    q.info.insert(
        "metrics".into(),
        json!({"teacher_accuracy": teacher_eval.accuracy, "int8_accuracy": int8_eval.accuracy,
        "drop_points": drop_points(teacher_eval.accuracy, int8_eval.accuracy), "test_samples": int8_eval.samples}),
    );
    // Written once, then read back and checked bit for bit against the model evaluated above,
    // so that the accuracy reported is the file's.
    let int8_model = crate::compare::write_int8(&q, &staged)?;

    progress.start("latency", 2);
    let t_lat = latency::measure(&test, 64, &|x| t_plan.predict(x))?;
    progress.inc(1);
    let q_lat = latency::measure(&test, 64, &|x| q_plan.predict(x))?;
    progress.inc(1);
    progress.finish("");

    let cmp = Comparison::of(teacher_eval, int8_eval, model_bytes(&spec.model)?, file_bytes(&staged)?);
    let final_path = spec.out.join(ARTIFACT);
    let t_side = report::side(&spec.model.display().to_string(), &cmp.teacher, cmp.bytes_before, &teacher, t_lat, "float32 (compiled float runtime, BatchNorm folded)");
    let c_side = report::side(
        &final_path.display().to_string(),
        &cmp.compressed,
        cmp.bytes_after,
        &int8_model.model,
        q_lat,
        &format!("integer arithmetic: u8 x i8 -> i32 ({} kernel), the written file (read back and checked bit for bit)", crate::runtime::kernel_names(&int8_model)),
    );
    let rep = Report {
        tool: tool_version(),
        recipe: info(&recipe_path)?,
        recipe_name: recipe.name.clone(),
        seed: spec.seed,
        inputs,
        agreement: cmp.agreement,
        flipped: cmp.flipped,
        accuracy_drop_points: cmp.drop_points,
        accuracy_drop_relative: cmp.drop_relative(),
        gate,
        ratios: Ratios {
            size: cmp.size_ratio,
            params: c_side.params as f64 / t_side.params.max(1) as f64,
            macs: c_side.macs as f64 / t_side.macs.max(1) as f64,
            latency_batch1_speedup: t_lat.batch1_ms / q_lat.batch1_ms.max(1e-9),
            latency_large_batch_speedup: t_lat.large_batch_ms / q_lat.large_batch_ms.max(1e-9),
        },
        layers: report::layer_rows(&teacher, &int8_model),
        passes: stages,
        sensitivity,
        float_fallback: fallback,
        teacher: t_side,
        compressed: c_side,
    };
    let mut points = vec![("teacher".to_string(), crate::model::stats::total_params(&teacher) as f64 * 4.0 / 1024.0, 100.0 * cmp.teacher.accuracy)];
    points.extend(rep.passes.iter().map(|s| (s.pass.clone(), s.weight_bytes as f64 / 1024.0, 100.0 * s.test_accuracy)));
    let t = 100.0 * cmp.teacher.accuracy;
    let floor = allowance.map(|a| match a {
        Allowance::Points(p) => t - p,
        Allowance::Relative(r) => t * (1.0 - r),
    });
    let svg = report::chart::accuracy_vs_size(&points, floor)?;
    write_atomic(&staging.dir.join(CHART), svg.as_bytes())?;
    write_atomic(&staging.dir.join(REPORT_MD), report::markdown::render(&rep, CHART).as_bytes())?;
    let mut json_text = serde_json::to_string_pretty(&rep).expect("report serialises");
    json_text.push('\n');
    write_atomic(&staging.dir.join(REPORT_JSON), json_text.as_bytes())?;
    // All outputs exist; move them into place (the report last, so a report implies an artifact).
    staging.commit(&[ARTIFACT, CHART, REPORT_MD, REPORT_JSON])?;
    Ok(rep)
}
