//! `wick eval MODEL --data FILE`: top-1 accuracy, mean cross-entropy and the sample count. An
//! INT8 artifact runs with integer arithmetic, or as its fake-quant float simulation with
//! `--simulate`; a float model on the compiled float runtime. `--reference` runs the oracle.
//! A text encoder (a model directory) given sentences (`.txt`) reports its embeddings'
//! fidelity to `--teacher`'s.

use super::progress::CliProgress;
use super::Outcome;
use std::path::PathBuf;
use wick::artifact::{load_any, AnyModel};
use wick::data::Dataset;
use wick::eval::{evaluate, evaluate_int8, evaluate_reference, EvalResult};
use wick::runtime::{kernels::Kernel, Exec};
use wick::tensor_file::RawTensor;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    m: super::ModelArgs,
    /// Data set (safetensors with `x` and `y`), or for a text encoder (a model directory) a text
    /// file of one sentence per line.
    #[arg(long)]
    data: PathBuf,
    /// Text encoders: the model whose embeddings fidelity is measured against (cosine
    /// similarity per sentence, nearest-neighbour agreement).
    #[arg(long)]
    teacher: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// INT8 artifacts: evaluate the fake-quant float simulation instead of integer execution.
    #[arg(long)]
    simulate: bool,
    /// Run the reference executor (slow; the oracle): the scalar integer kernels for an INT8
    /// artifact, candle's executor for a float model.
    #[arg(long)]
    reference: bool,
    /// Also write every sample's logits, predicted class and label here (safetensors: `logits`
    /// F32 [N, classes], `predictions` and `labels` I64 [N]), to compare models row by row.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    if wick::hf::is_model_dir(&a.m.model) || a.data.extension().is_some_and(|e| e == "txt") {
        return run_text(&a);
    }
    if a.teacher.is_some() {
        anyhow::bail!(wick::WickError::invalid("--teacher", "applies to text encoders (a model directory with sentences in a .txt file)"));
    }
    let (model, warnings) = load_any(&a.m.model, a.m.arch.as_deref())?;
    super::warn_all(&warnings);
    let data = Dataset::read(&a.data)?;
    let progress = CliProgress::new(a.quiet);
    let (r, how) = match &model {
        AnyModel::Float(m) => {
            if a.simulate {
                anyhow::bail!("--simulate applies to INT8 artifacts; {} is a float model", a.m.model.display());
            }
            match a.reference {
                true => (evaluate_reference(m, &data, a.batch_size, &progress)?, "float32 (candle executor)"),
                false => (evaluate(m, &data, a.batch_size, &progress)?, "float32"),
            }
        }
        AnyModel::Int8(q) => {
            let exec = match (a.simulate, a.reference) {
                (true, _) => Exec::Simulate,
                (false, true) => Exec::Integer(Kernel::Reference),
                (false, false) => Exec::Integer(Kernel::Fast),
            };
            let how = if a.simulate { "int8 simulated (fake-quant float)" } else { "int8 integer execution" };
            (evaluate_int8(q, &data, a.batch_size, exec, &progress)?, how)
        }
    };
    if let Some(path) = &a.predictions {
        write_predictions(path, &r, &data, &a.m.model, how)?;
    }
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["execution"] = how.into();
        println!("{v}");
    } else {
        println!("accuracy {:.4} ({}/{})  loss {:.4}  [{how}]", r.accuracy, r.correct, r.samples, r.loss);
    }
    Ok(Outcome::Ok)
}

/// Writes `r`'s logits, predictions and the labels as a safetensors file (atomically), with
/// the model, data and execution in its metadata.
fn write_predictions(path: &std::path::Path, r: &EvalResult, data: &Dataset, model: &std::path::Path, how: &str) -> anyhow::Result<()> {
    let n = r.samples;
    let classes = r.logits.len() / n.max(1);
    let as_i64 = |v: &[u32]| v.iter().map(|&c| c as i64).collect::<Vec<_>>();
    let mut tensors = std::collections::BTreeMap::new();
    tensors.insert("logits".to_string(), RawTensor::from_f32(vec![n, classes], &r.logits));
    tensors.insert("predictions".to_string(), RawTensor::from_i64(vec![n], &as_i64(&r.predictions)));
    tensors.insert("labels".to_string(), RawTensor::from_i64(vec![n], &as_i64(&data.y)));
    let meta = serde_json::json!({"model": model.display().to_string(), "data": data.name, "execution": how, "accuracy": r.accuracy});
    let metadata = std::collections::BTreeMap::from([("wick".to_string(), meta.to_string())]);
    wick::tensor_file::write(path, &tensors, &metadata)?;
    Ok(())
}

/// A text encoder on sentences (a model directory, or the INT8 artifact of one with its
/// tokenizer from `--teacher`'s directory): the number of sentences and the embedding width,
/// and with `--teacher` the fidelity to the teacher's embeddings; `--predictions` writes
/// `embeddings` F32 `[N, D]`.
fn run_text(a: &Args) -> anyhow::Result<Outcome> {
    use wick::embedding::{embed, embed_on_plan, fidelity, TextData};
    let path = &a.m.model;
    if a.simulate || a.reference {
        anyhow::bail!(wick::WickError::invalid("--simulate/--reference", "apply to INT8 artifacts and float models on tensor data, not to a text encoder"));
    }
    let (model, tokenizer_dir, how) = match wick::hf::is_model_dir(path) {
        true => {
            let loaded = wick::model::load::load_model(path, a.m.arch.as_deref())?;
            super::warn_all(&loaded.warnings);
            (AnyModel::Float(loaded.model), path.as_path(), "float32 (compiled plan)")
        }
        false => match (load_any(path, a.m.arch.as_deref())?.0, &a.teacher) {
            (q @ AnyModel::Int8(_), Some(t)) if wick::hf::is_model_dir(t) => (q, t.as_path(), "int8 integer execution (compiled plan)"),
            _ => anyhow::bail!(wick::WickError::invalid(
                path.display().to_string(),
                format!(
                    "is neither a model directory (config.json, model.safetensors, tokenizer.json or vocab.txt) nor the INT8 artifact of one given with --teacher DIR, which text data ({}) needs for its tokenizer",
                    a.data.display()
                )
            )),
        },
    };
    let float = match &model {
        AnyModel::Float(m) => m,
        AnyModel::Int8(q) => &q.model,
    };
    let data = TextData::read(&a.data, tokenizer_dir, float.input_shape()[0])?;
    let started = std::time::Instant::now();
    let plan = match &model {
        AnyModel::Float(m) => wick::runtime::plan::Plan::float(m)?,
        AnyModel::Int8(q) => wick::runtime::plan::Plan::int8(q)?,
    };
    let compile_seconds = started.elapsed().as_secs_f64();
    let rows = embed_on_plan(&plan, float, &data, a.batch_size)?;
    // Embedding alone, without loading and compiling: what a latency comparison wants.
    let embed_seconds = started.elapsed().as_secs_f64() - compile_seconds;
    let width = rows.first().map_or(0, Vec::len);
    if let Some(path) = &a.predictions {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let mut t = std::collections::BTreeMap::new();
        t.insert("embeddings".to_string(), RawTensor::from_f32(vec![rows.len(), width], &flat));
        wick::tensor_file::write(path, &t, &Default::default())?;
    }
    let fid = match &a.teacher {
        Some(tdir) => {
            let teacher = wick::model::load::load_model(tdir, None)?;
            let tdata = TextData::read(&a.data, tdir, teacher.model.input_shape()[0])?;
            Some(fidelity(&rows, &embed(&teacher.model, &tdata, a.batch_size)?)?)
        }
        None => None,
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({"sentences": rows.len(), "embedding_dim": width, "fidelity": fid, "embed_seconds": embed_seconds, "compile_seconds": compile_seconds, "batch_size": a.batch_size, "execution": how})
        );
    } else {
        println!("{} sentences, embeddings of {width} values  [{how}]", rows.len());
        if let Some(f) = fid {
            println!("fidelity to the teacher: cosine mean {:.6}, min {:.6}; nearest-neighbour agreement {:.4}", f.cosine_mean, f.cosine_min, f.nn_agreement);
        }
    }
    Ok(Outcome::Ok)
}
