//! `wick distill --teacher DIR --layers K --train TRAIN.txt --val VAL.txt --out STUDENT_DIR`:
//! a text encoder distilled into a `K`-layer student on unlabeled sentences
//! (`text_distill`), written as a model directory like the teacher's.

use super::distill::Args;
use super::progress::CliProgress;
use super::Outcome;
use serde_json::json;
use wick::embedding::{embed, fidelity, TextData};
use wick::model::stats::total_params;
use wick::passes::text_distill::{check_layers, distill, student, TextDistillSettings};

pub fn run(a: &Args) -> anyhow::Result<Outcome> {
    let Some(k) = a.layers else { anyhow::bail!(wick::WickError::invalid("--layers", "is required for a text encoder (a model directory as --teacher): the student's number of layers")) };
    if a.student.is_some() || a.width.is_some() {
        anyhow::bail!(wick::WickError::invalid("--student/--width", "apply to classifiers; a text encoder's student is given by --layers"));
    }
    for (flag, p) in [("--train", &a.train), ("--val", &a.val)] {
        if p.extension().is_none_or(|e| e != "txt") {
            anyhow::bail!(wick::WickError::invalid(flag, format!("{} is not a .txt file; a text encoder learns from sentences, one per line", p.display())));
        }
    }
    if std::fs::read_dir(&a.out).is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!(wick::WickError::invalid("--out", format!("{} exists and is not empty; give a new directory for the student", a.out.display())));
    }
    let loaded = wick::model::load::load_model(&a.teacher, None)?;
    super::warn_all(&loaded.warnings);
    let teacher = loaded.model;
    // Checked before the sentences are read and tokenised.
    check_layers(&teacher, k)?;
    let config = wick::hf::config(&a.teacher)?;
    let len = teacher.input_shape()[0];
    let train = TextData::read(&a.train, &a.teacher, len)?;
    let val = TextData::read(&a.val, &a.teacher, len)?;
    let test = a.test.as_ref().map(|p| TextData::read(p, &a.teacher, len)).transpose()?;
    let settings = TextDistillSettings { epochs: a.epochs, lr: a.lr, batch_size: a.batch_size, hidden_weight: a.hint_weight, ..Default::default() };
    settings.validate().map_err(|e| super::as_flags(&e))?;
    let cfg = settings.config(train.len(), a.seed, None);
    let batch_size = cfg.batch_size;
    let progress = CliProgress::new(a.quiet);
    let (mut s, map) = student(&teacher, &config, k, &val, batch_size, &progress)?;
    let rep = distill(&teacher, &mut s, &map, &train, &val, &cfg, &progress)?;
    wick::hf::save_dir(&s, &config.with_layers(k).json, &a.teacher, &a.out)?;
    let test_fid = match &test {
        Some(d) => Some(fidelity(&embed(&s, d, batch_size)?, &embed(&teacher, d, batch_size)?)?),
        None => None,
    };
    let (tp, sp) = (total_params(&teacher), total_params(&s));
    let best = &rep.val[rep.best];
    if a.json {
        println!("{}", json!({"teacher_params": tp, "student_params": sp, "settings": cfg, "training": rep, "test": test_fid}));
    } else {
        println!("teacher {tp} params; student {sp} params ({:.1}%), layers {:?} of the teacher's", 100.0 * sp as f64 / tp as f64, map);
        println!("validation cosine mean {:.5} (untrained student {:.5}) after {} steps", best.cosine_mean, rep.val[0].cosine_mean, rep.steps);
        if let Some(f) = test_fid {
            println!("test: cosine mean {:.6}, min {:.6}; nearest-neighbour agreement {:.4}", f.cosine_mean, f.cosine_min, f.nn_agreement);
        }
        println!("wrote {}", a.out.display());
    }
    Ok(Outcome::Ok)
}
