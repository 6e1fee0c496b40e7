//! Text encoders (`fixtures/text/`): a Hugging Face BERT directory loads as wick's graph of
//! embedding, linear, attention, LayerNorm, GELU, masked-mean and L2-normalisation nodes; its
//! tokenisation and FP32 sentence embeddings match PyTorch's; `wick eval` reports fidelity.

use crate::common::*;
use std::path::PathBuf;
use wick::embedding::{cosine, embed, TextData};
use wick::tensor_file::{self, TensorFile};

fn tiny_bert() -> PathBuf {
    fixture("text/tiny_bert")
}

/// Copies `files` (paths inside the directory) of `from` into `to`.
fn copy_files(from: &std::path::Path, to: &std::path::Path, files: &[&str]) {
    for f in files {
        let dst = to.join(f);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(from.join(f), dst).unwrap();
    }
}

/// `tiny_bert`'s encoder in `to` under the sentence-transformers head of `modules` (a
/// `modules.json`, none when `None`) and `pooling` (`1_Pooling/config.json`).
fn encoder_with_head(to: &std::path::Path, modules: Option<&str>, pooling: &str) {
    copy_files(&tiny_bert(), to, &["config.json", "model.safetensors", "tokenizer.json", "sentence_bert_config.json"]);
    if let Some(m) = modules {
        std::fs::write(to.join("modules.json"), m).unwrap();
        std::fs::create_dir_all(to.join("1_Pooling")).unwrap();
        std::fs::write(to.join("1_Pooling/config.json"), pooling).unwrap();
    }
}

/// A `modules.json` of a Transformer, a Pooling and then `more` modules (`type` names).
fn modules_json(more: &[&str]) -> String {
    let mut m = vec![
        serde_json::json!({"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"}),
        serde_json::json!({"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    for (i, t) in more.iter().enumerate() {
        m.push(serde_json::json!({"idx": i + 2, "path": format!("{}_{t}", i + 2), "type": format!("sentence_transformers.models.{t}")}));
    }
    serde_json::Value::Array(m).to_string()
}

/// The directory's sentence-transformers head and `config.json`'s `hidden_act` decide the
/// embedding, as sentence-transformers' own `encode` (`tiny_bert_variants_reference.safetensors`)
/// does: no `modules.json` (the mean, not normalised), the first token's state (`[CLS]`) by the
/// legacy flags without Normalize, and by `pooling_mode: "cls"` with it; the max, the mean over
/// √length, the position-weighted mean and the last token; cls, max and mean joined (`[24]`) by
/// the legacy flags, in sentence-transformers' order; a Dense module (8 → 6,
/// Tanh) before Normalize, whose weights `save_dir` writes back to its folder; the tanh GELU,
/// ReLU and SiLU. Within 1e-5 on the compiled plan at batches of 1 and 7 (shorter sequences than the
/// plan's), on candle's executor, and through INT8 (`wick quantize`, whose fidelity is measured
/// against the same head). Heads and activations wick does not read exit 2 naming the file and
/// the field or module.
#[test]
fn sentence_transformers_heads_and_activations() {
    let r = TensorFile::read(&fixture("text/tiny_bert_variants_reference.safetensors")).unwrap();
    let data = TextData::read(&fixture("text/sentences.txt"), &tiny_bert(), 64).unwrap();
    let root = tempfile::tempdir().unwrap();
    let cls_flags = r#"{"word_embedding_dimension": 8, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false, "pooling_mode_max_tokens": false}"#;
    let own = (Some(modules_json(&["Normalize"])), r#"{"pooling_mode": "mean"}"#);
    let mut cases =
        vec![("plain", None, ""), ("cls", Some(modules_json(&[])), cls_flags), ("cls_normalize", Some(modules_json(&["Normalize"])), r#"{"embedding_dimension": 8, "pooling_mode": "cls"}"#)];
    cases.extend(["act_gelu_new", "act_relu", "act_silu"].map(|a| (a, own.0.clone(), own.1)));
    let modes = [
        ("max", r#"{"embedding_dimension": 8, "pooling_mode": "max"}"#),
        ("mean_sqrt_len", r#"{"embedding_dimension": 8, "pooling_mode": "mean_sqrt_len_tokens"}"#),
        ("weightedmean", r#"{"embedding_dimension": 8, "pooling_mode": "weightedmean"}"#),
        ("lasttoken", r#"{"embedding_dimension": 8, "pooling_mode": "lasttoken"}"#),
    ];
    cases.extend(modes.map(|(name, pooling)| (name, Some(modules_json(&[])), pooling)));
    // Legacy flags join cls, max and mean in that order, whatever order the file lists them in.
    let joined = r#"{"word_embedding_dimension": 8, "pooling_mode_mean_tokens": true, "pooling_mode_cls_token": true, "pooling_mode_max_tokens": true}"#;
    cases.push(("joined", Some(modules_json(&["Normalize"])), joined));
    cases.push(("dense", Some(modules_json(&["Dense", "Normalize"])), own.1));
    for (name, modules, pooling) in &cases {
        let dir = root.path().join(name);
        encoder_with_head(&dir, modules.as_deref(), pooling);
        if let Some(act) = name.strip_prefix("act_") {
            set_config(&dir, "hidden_act", act);
        }
        if *name == "dense" {
            copy_files(&fixture("text/tiny_bert_dense"), &dir, &["2_Dense/config.json", "2_Dense/model.safetensors"]);
        }
        let model = wick::hf::load(&dir, None).unwrap().model;
        let width = r.tensors[*name].shape[1];
        let want: Vec<Vec<f32>> = r.f32(name).unwrap().chunks(width).map(<[f32]>::to_vec).collect();
        for (batch, compiled) in [(1, true), (7, true), (7, false)] {
            let got = if compiled { embed(&model, &data, batch).unwrap() } else { wick::embedding::embed_reference(&model, &data, batch).unwrap() };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(max_abs_diff(g, w) <= 1e-5, "{name}, batch {batch}, sentence {i}: {}", max_abs_diff(g, w));
            }
        }
    }
    // A Dense module's weights are written back to its folder, not into the encoder's file.
    let (dense, saved) = (root.path().join("dense"), root.path().join("dense_saved"));
    let model = wick::hf::load(&dense, None).unwrap().model;
    wick::hf::save_dir(&model, &wick::hf::config(&dense).unwrap().json, &dense, &saved).unwrap();
    assert!(TensorFile::read(&saved.join("model.safetensors")).unwrap().tensors.keys().all(|k| !k.starts_with("2_Dense")));
    assert_eq!(TensorFile::read(&saved.join("2_Dense/model.safetensors")).unwrap().tensors.keys().collect::<Vec<_>>(), ["linear.bias", "linear.weight"]);
    assert_eq!(embed(&wick::hf::load(&saved, None).unwrap().model, &data, 7).unwrap(), embed(&model, &data, 7).unwrap());
    let cls = root.path().join("cls");
    let (sentences, out) = (fixture("text/sentences.txt"), root.path().join("q.safetensors"));
    let args = ["quantize", cls.to_str().unwrap(), "--calib", sentences.to_str().unwrap(), "--test", sentences.to_str().unwrap(), "--min-cosine", "0.999", "--out", out.to_str().unwrap(), "--quiet"];
    run_expect(&args, 0);
    let (o, _) = run_expect(&["eval", out.to_str().unwrap(), "--data", sentences.to_str().unwrap(), "--teacher", cls.to_str().unwrap(), "--json", "--quiet"], 0);
    let j: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert!(j["fidelity"]["cosine_mean"].as_f64().unwrap() >= 0.999, "{j}");
    // Heads wick does not read.
    let refused = [
        (modules_json(&[]), r#"{"pooling_mode": ["cls", "median"]}"#, &["1_Pooling", "'pooling_mode'", "\"median\"", "\"weightedmean\""][..]),
        (modules_json(&[]), r#"{"word_embedding_dimension": 384, "pooling_mode": "mean"}"#, &["word_embedding_dimension", "384", "hidden size is 8"][..]),
        (modules_json(&["CNN", "Normalize"]), r#"{"pooling_mode": "mean"}"#, &["modules.json", "module 2", "sentence_transformers.models.CNN"][..]),
        (modules_json(&["Normalize", "Normalize"]), r#"{"pooling_mode": "mean"}"#, &["modules.json", "module 3", "Normalize"][..]),
    ];
    for (i, (modules, pooling, words)) in refused.iter().enumerate() {
        let dir = root.path().join(format!("bad{i}"));
        encoder_with_head(&dir, Some(modules), pooling);
        let (_, e) = run_expect(&["inspect", dir.to_str().unwrap()], 2);
        assert!(words.iter().all(|w| e.contains(w)), "{i}: {e}");
    }
    let quick = root.path().join("act_quick_gelu");
    encoder_with_head(&quick, own.0.as_deref(), own.1);
    set_config(&quick, "hidden_act", "quick_gelu");
    let (_, e) = run_expect(&["inspect", quick.to_str().unwrap()], 2);
    assert!(e.contains("config.json") && e.contains("hidden_act") && e.contains("quick_gelu"), "{e}");
}

/// Sets `field` of `dir`'s `config.json` to `value`.
fn set_config(dir: &std::path::Path, field: &str, value: impl Into<serde_json::Value>) {
    let path = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    c[field] = value.into();
    std::fs::write(&path, c.to_string()).unwrap();
}

/// Token ids equal those of Hugging Face's tokenizers (for the BERT, the same as the reference
/// ids of all-MiniLM-L6-v2, whose tokenizer this is; for the RoBERTa, byte-level BPE with its
/// `<s> … </s>` template; for the DistilBERT, a lower-casing WordPiece; for the MPNet, a
/// lower-casing WordPiece with `<s> … </s>`); every sentence's embedding is within cosine 0.99999 and 1e-5 of
/// PyTorch's, for batches of 1, 7 and 200 sentences (each padded to its own longest: the masks
/// make padding change nothing), on the compiled float plan (one plan for every length) and on
/// candle's executor. The RoBERTa's and MPNet's positions start after the pad id, so their 66
/// positions hold 64 tokens; the MPNet adds a relative position bias to every layer's scores.
#[test]
fn text_encoder_matches_pytorch() {
    let encoders = ["tiny_bert", "tiny_roberta", "tiny_distilbert", "tiny_mpnet"].map(|d| (d, format!("text/{d}_reference.safetensors")));
    for (dir, reference) in encoders.map(|(d, r)| (fixture(&format!("text/{d}")), r)) {
        let (r, reference) = (TensorFile::read(&fixture(&reference)).unwrap(), reference.as_str());
        let model = wick::hf::load(&dir, None).unwrap().model;
        assert_eq!(model.input_shape(), &[64], "{reference}: sentence_bert_config.json's max_seq_length");
        let data = TextData::read(&fixture("text/sentences.txt"), &dir, 64).unwrap();
        let ids: Vec<i64> = data.ids.iter().flatten().map(|&v| v as i64).collect();
        assert_eq!(ids, tensor_file::to_i64(&r.tensors["token_ids"], "reference", "token_ids").unwrap(), "{reference}");
        let want: Vec<Vec<f32>> = r.f32("embeddings").unwrap().chunks(8).map(<[f32]>::to_vec).collect();
        for (batch, compiled) in [(1, true), (7, true), (200, true), (7, false)] {
            let got = if compiled { embed(&model, &data, batch).unwrap() } else { wick::embedding::embed_reference(&model, &data, batch).unwrap() };
            assert_eq!(got.len(), 200);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(cosine(g, w) >= 0.99999, "{reference}, batch {batch}, sentence {i}: cosine {}", cosine(g, w));
                assert!(max_abs_diff(g, w) <= 1e-5, "{reference}, batch {batch}, sentence {i}: {}", max_abs_diff(g, w));
            }
        }
    }
}

/// `do_lower_case` in `sentence_bert_config.json` lower-cases each sentence before the tokenizer
/// sees it, as sentence-transformers does: the cased BPE of the RoBERTa then gives the ids of the
/// lower-cased sentences, which differ from the sentences' own.
#[test]
fn do_lower_case_lowers_sentences() {
    let dir = tempfile::tempdir().unwrap();
    let roberta = fixture("text/tiny_roberta");
    copy_files(&roberta, dir.path(), &["config.json", "tokenizer.json"]);
    std::fs::write(dir.path().join("sentence_bert_config.json"), r#"{"max_seq_length": 64, "do_lower_case": true}"#).unwrap();
    let text = std::fs::read_to_string(fixture("text/sentences.txt")).unwrap();
    let lower = dir.path().join("lower.txt");
    std::fs::write(&lower, text.to_lowercase()).unwrap();
    let sentences = fixture("text/sentences.txt");
    let lowered = TextData::read(&sentences, dir.path(), 64).unwrap().ids;
    assert_eq!(lowered, TextData::read(&lower, &roberta, 64).unwrap().ids);
    assert_ne!(lowered, TextData::read(&sentences, &roberta, 64).unwrap().ids);
}

/// A directory with a WordPiece `vocab.txt` and no `tokenizer.json` tokenises as transformers'
/// fast tokenizer converted from it does (the fixtures' `tokenizer.json`, here the oracle): the
/// BERT with no `tokenizer_config.json` (BertTokenizer's defaults: lower-cased, `[CLS] … [SEP]`),
/// the DistilBERT and the MPNet with theirs (`<s> … </s>`), on the 200 sentences and on lines
/// with accents, Chinese characters, control characters and a special token written out. A
/// tokenizer class whose vocabulary is no `vocab.txt`, or a directory with neither file, exits 2
/// naming the culprit.
#[test]
fn wordpiece_vocab_without_tokenizer_json() {
    let root = tempfile::tempdir().unwrap();
    let mut text = std::fs::read_to_string(fixture("text/sentences.txt")).unwrap();
    text.push_str("Ünïcödé café naïve résumé\n北京是中国的首都。\nA [MASK] and <mask> and [SEP] written out.\nTabs\tand\u{7}bells, ÅNGSTRÖM.\n");
    let lines = root.path().join("lines.txt");
    std::fs::write(&lines, &text).unwrap();
    for (source, config) in [(tiny_bert(), None), (fixture("text/tiny_distilbert"), Some("tokenizer_config.json")), (fixture("text/tiny_mpnet"), Some("tokenizer_config.json"))] {
        let dir = root.path().join(source.file_name().unwrap());
        copy_files(&source, &dir, &["config.json", "model.safetensors", "sentence_bert_config.json", "modules.json", "1_Pooling/config.json"]);
        if let Some(c) = config {
            copy_files(&source, &dir, &[c]);
        }
        let tokenizer: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(source.join("tokenizer.json")).unwrap()).unwrap();
        let mut vocab: Vec<(&String, u64)> = tokenizer["model"]["vocab"].as_object().unwrap().iter().map(|(t, id)| (t, id.as_u64().unwrap())).collect();
        vocab.sort_by_key(|v| v.1);
        std::fs::write(dir.join("vocab.txt"), vocab.iter().map(|(t, _)| format!("{t}\n")).collect::<String>()).unwrap();
        let want = TextData::read(&lines, &source, 64).unwrap().ids;
        assert_eq!(TextData::read(&lines, &dir, 64).unwrap().ids, want, "{}", source.display());
        assert_eq!(want.len(), 204);
    }
    let mpnet = root.path().join("tiny_mpnet");
    let roberta_class = root.path().join("roberta_class");
    copy_files(&mpnet, &roberta_class, &["config.json", "model.safetensors", "vocab.txt"]);
    std::fs::write(roberta_class.join("tokenizer_config.json"), r#"{"tokenizer_class": "RobertaTokenizerFast"}"#).unwrap();
    let (_, e) = run_expect(&["eval", roberta_class.to_str().unwrap(), "--data", lines.to_str().unwrap()], 2);
    assert!(e.contains("tokenizer_config.json") && e.contains("tokenizer_class") && e.contains("RobertaTokenizer") && e.contains("tokenizer.json"), "{e}");
    std::fs::remove_file(roberta_class.join("vocab.txt")).unwrap();
    let (_, e) = run_expect(&["eval", roberta_class.to_str().unwrap(), "--data", lines.to_str().unwrap()], 2);
    assert!(e.contains("roberta_class") && e.contains("neither a tokenizer.json nor a WordPiece vocab.txt"), "{e}");
}

/// `wick inspect` and `wick eval` take the directory: eval against itself as the teacher gives
/// fidelity 1 and writes the embeddings; a `config.json` of another family, `--arch` with a
/// directory, text data for a model without a tokenizer, and the commands not built for text
/// encoders yet exit 2 naming the culprit.
#[test]
fn text_encoder_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = run_expect(&["inspect", tiny_bert().to_str().unwrap()], 0);
    assert!(o.contains("encoder.layer.1.attention.self") && o.contains("attention") && o.contains("masked_mean"), "{o}");
    let pred = dir.path().join("e.safetensors");
    let sentences = fixture("text/sentences.txt");
    let model = tiny_bert();
    let args = ["eval", model.to_str().unwrap(), "--data", sentences.to_str().unwrap(), "--teacher", model.to_str().unwrap(), "--json", "--predictions", pred.to_str().unwrap()];
    let (o, _) = run_expect(&args, 0);
    let j: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!((j["sentences"].as_u64(), j["embedding_dim"].as_u64()), (Some(200), Some(8)));
    assert!(j["fidelity"]["cosine_min"].as_f64().unwrap() > 0.999_999 && j["fidelity"]["nn_agreement"] == 1.0, "{j}");
    assert_eq!(TensorFile::read(&pred).unwrap().tensors["embeddings"].shape, vec![200, 8]);
    // Another model family.
    let other = dir.path().join("gpt");
    std::fs::create_dir(&other).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny_bert().join(f), other.join(f)).unwrap();
    }
    std::fs::copy(tiny_bert().join("config.json"), other.join("config.json")).unwrap();
    set_config(&other, "model_type", "gpt2");
    let (_, e) = run_expect(&["inspect", other.to_str().unwrap()], 2);
    assert!(e.contains("model_type") && e.contains("gpt2") && e.contains("config.json"), "{e}");
    let (_, e) = run_expect(&["inspect", tiny_bert().to_str().unwrap(), "--arch", "x.json"], 2);
    assert!(e.contains("--arch") && e.contains("config.json"), "{e}");
    let (_, e) = run_expect(&["eval", mlp_path().to_str().unwrap(), "--data", sentences.to_str().unwrap()], 2);
    assert!(e.contains("neither a model directory") && e.contains("--teacher") && e.contains("tokenizer"), "{e}");
    // Commands not built for text encoders yet say so.
    let d = digits("train");
    let (_, e) = run_expect(&["prune", model.to_str().unwrap(), "--ratio", "0.5", "--out", dir.path().join("p.safetensors").to_str().unwrap()], 2);
    assert!(e.contains("text encoder") && e.contains("wick prune"), "{e}");
    let (_, e) = run_expect(&["quantize", model.to_str().unwrap(), "--calib", d.to_str().unwrap(), "--out", dir.path().join("q.safetensors").to_str().unwrap()], 2);
    assert!(e.contains("--calib") && e.contains(".txt"), "{e}");
}

/// `wick quantize DIR --calib SENTENCES.txt`: the artifact holds per-token INT8 linears and
/// INT8 tables; the linears the target needed stay float, costliest first by the measured
/// sensitivity; `wick eval ARTIFACT --teacher DIR` (the teacher's tokenizer) reports the
/// fidelity the quantisation printed for the written file; a bad `--exclude` exits 2 naming it.
#[test]
fn quantize_text_encoder_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (model, sentences) = (tiny_bert(), fixture("text/sentences.txt"));
    let (out, report) = (dir.path().join("q.safetensors"), dir.path().join("r.json"));
    let base = ["quantize", model.to_str().unwrap(), "--calib", sentences.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"];
    let mut args = base.to_vec();
    args.extend(["--test", sentences.to_str().unwrap(), "--report", report.to_str().unwrap(), "--min-cosine", "0.9999", "--min-nn-agreement", "0.9"]);
    run_expect(&args, 0);
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let cal = &r["calibration"];
    let kept: Vec<&str> = cal["kept_float"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let ranked: Vec<&str> = cal["sensitivity"].as_array().unwrap().iter().map(|v| v["layer"].as_str().unwrap()).collect();
    assert_eq!(ranked.len(), 12);
    assert_eq!(kept, ranked[..kept.len()], "fallback follows the sensitivity ranking");
    assert!(cal["fidelity"]["cosine_mean"].as_f64().unwrap() >= 0.9999 && cal["fidelity"]["nn_agreement"].as_f64().unwrap() >= 0.9, "{cal}");
    let q = wick::artifact::Int8Model::read(&TensorFile::read(&out).unwrap()).unwrap().unwrap();
    assert_eq!(q.layers.len(), 12 - kept.len());
    assert!(q.layers.values().all(|l| l.input == wick::quant::InputQuant::PerToken(wick::quant::ActType::U8)));
    assert_eq!(q.tables.keys().collect::<Vec<_>>(), ["embeddings.position_embeddings", "embeddings.token_type_embeddings", "embeddings.word_embeddings"]);
    // Rows of 8 values: each row's f32 scale costs half its codes again.
    assert!(std::fs::metadata(&out).unwrap().len() * 2 < std::fs::metadata(model.join("model.safetensors")).unwrap().len(), "INT8 tables and linears");
    // Batches as `quantize` measures (padding changes float sums' order).
    let (o, _) = run_expect(&["eval", out.to_str().unwrap(), "--data", sentences.to_str().unwrap(), "--teacher", model.to_str().unwrap(), "--batch-size", "32", "--json", "--quiet"], 0);
    let j: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(j["fidelity"], r["test"], "{j}");
    let mut bad = base.to_vec();
    bad.extend(["--exclude", "encoder.layer.0.nope"]);
    let (_, e) = run_expect(&bad, 2);
    assert!(e.contains("--exclude") && e.contains("encoder.layer.0.nope"), "{e}");
}

/// A checkpoint saved from a task class (`BertForX`: every name under `bert.`; `RobertaForX`,
/// `DistilBertForX`, `MPNetForX`: under `roberta.`, `distilbert.`, `mpnet.`) loads to the same
/// embeddings; an id outside the vocabulary is an error naming the embedding node; an MPNet
/// config asking for other than 32 relative-position buckets exits 2 naming the field; a vector
/// model's plan refuses a shorter input as before.
#[test]
fn prefixed_checkpoints_and_bad_ids() {
    let root = tempfile::tempdir().unwrap();
    for (source, prefix) in [(tiny_bert(), "bert."), (fixture("text/tiny_roberta"), "roberta."), (fixture("text/tiny_distilbert"), "distilbert."), (fixture("text/tiny_mpnet"), "mpnet.")] {
        let dir = root.path().join(prefix);
        let file = TensorFile::read(&source.join("model.safetensors")).unwrap();
        let renamed: std::collections::BTreeMap<String, tensor_file::RawTensor> = file.tensors.iter().map(|(k, v)| (format!("{prefix}{k}"), v.clone())).collect();
        copy_files(&source, &dir, &["config.json", "tokenizer.json", "sentence_bert_config.json", "modules.json", "1_Pooling/config.json"]);
        tensor_file::write(&dir.join("model.safetensors"), &renamed, &Default::default()).unwrap();
        let data = TextData::read(&fixture("text/sentences.txt"), &source, 64).unwrap();
        let (a, b) = (wick::hf::load(&source, None).unwrap().model, wick::hf::load(&dir, None).unwrap().model);
        assert_eq!(embed(&a, &data, 50).unwrap(), embed(&b, &data, 50).unwrap(), "{prefix}");
    }
    let a = wick::hf::load(&tiny_bert(), None).unwrap().model;
    // A plan of a vector model keeps its one input shape.
    let mlp = wick::runtime::plan::Plan::float(&load(&mlp_path())).unwrap();
    let short = candle_core::Tensor::zeros((2, 32), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    assert!(mlp.predict(&short).unwrap_err().to_string().contains("does not fit the model input"));
    let bad = TextData { name: "ids".into(), ids: vec![vec![101, 40_000, 102]] };
    let e = embed(&a, &bad, 1).unwrap_err().to_string();
    assert!(e.contains("embeddings.word_embeddings") && e.contains("40000"), "{e}");
    // transformers' MPNet computes 32 relative-position buckets whatever its config says.
    let mpnet = root.path().join("mpnet_buckets");
    copy_files(&fixture("text/tiny_mpnet"), &mpnet, &["config.json", "model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json"]);
    set_config(&mpnet, "relative_attention_num_buckets", 64);
    let (_, e) = run_expect(&["inspect", mpnet.to_str().unwrap()], 2);
    assert!(e.contains("config.json") && e.contains("relative_attention_num_buckets") && e.contains("64") && e.contains("32 buckets"), "{e}");
}

/// Per-token INT8 linears (`InputQuant::PerToken`) over rows of tokens, with a GELU and a
/// residual add fused into their epilogues and widths that are no multiple of the kernels'
/// blocks: the compiled runtime equals the scalar reference executor bit for bit at any batch
/// (each row carries its own parameters), and the fake-quant simulation within float rounding.
#[test]
fn per_token_int8_runtime_matches_reference() {
    use wick::runtime::{kernels::Kernel, Exec, Executor};
    let json = r#"{"format": "wick-arch", "version": 1, "input": {"shape": [5, 13]}, "nodes": [
        {"name": "a", "op": "linear", "inputs": ["input"], "in_features": 13, "out_features": 7},
        {"name": "g", "op": "gelu", "inputs": ["a"]},
        {"name": "b", "op": "linear", "inputs": ["g"], "in_features": 7, "out_features": 13},
        {"name": "res", "op": "add", "inputs": ["b", "input"]},
        {"name": "c", "op": "linear", "inputs": ["res"], "in_features": 13, "out_features": 3, "bias": false},
        {"name": "f", "op": "flatten", "inputs": ["c"]},
        {"name": "head", "op": "linear", "inputs": ["f"], "in_features": 15, "out_features": 4}], "output": "head"}"#;
    let (model, data) = random_model(serde_json::from_str(json).unwrap(), 37);
    let q = wick::passes::text_ptq::quantise(&model, &["a".into(), "b".into(), "c".into(), "head".into()]).unwrap();
    let logits = |exec: Exec, x: &candle_core::Tensor| Executor::new(&q, exec).unwrap().predict(x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let reference = logits(Exec::Integer(Kernel::Reference), &data.x);
    assert_eq!(logits(Exec::Integer(Kernel::Fast), &data.x), reference);
    let one = logits(Exec::Integer(Kernel::Fast), &data.x.narrow(0, 3, 1).unwrap());
    assert_eq!(one, reference[12..16], "a batch of one gives that row's outputs");
    assert!(max_abs_diff(&logits(Exec::Simulate, &data.x), &reference) < 1e-4);
    let float = wick::runtime::plan::Plan::float(&model).unwrap().predict(&data.x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(max_abs_diff(&float, &reference) < 0.05, "{}", max_abs_diff(&float, &reference));
}

/// A text encoder with every linear per-token INT8: the artifact round-trips through its file;
/// the compiled runtime's embeddings agree with the reference executor's up to the float ops'
/// summation order (LayerNorm, attention), at any batch, and so do the simulation's.
#[test]
fn per_token_text_encoder_round_trips_and_runs() {
    use wick::runtime::{kernels::Kernel, Exec, Executor};
    let model = wick::hf::load(&tiny_bert(), None).unwrap().model;
    let data = TextData::read(&fixture("text/sentences.txt"), &tiny_bert(), 64).unwrap();
    let linears: Vec<String> = model.arch.nodes.iter().filter(|n| matches!(n.op, wick::model::arch::Op::Linear(_))).map(|n| n.name.clone()).collect();
    let q = wick::passes::text_ptq::quantise(&model, &linears).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.safetensors");
    q.save(&path).unwrap();
    let back = wick::artifact::Int8Model::read(&TensorFile::read(&path).unwrap()).unwrap().unwrap();
    assert!(back.same_as(&q).unwrap());
    let run = |exec: Exec, batch: usize| wick::embedding::embed_with_predict(&q.model, &data, batch, |x| Executor::new(&back, exec)?.predict(x)).unwrap();
    let reference = run(Exec::Integer(Kernel::Reference), 16);
    for (exec, batch) in [(Exec::Integer(Kernel::Fast), 1), (Exec::Integer(Kernel::Fast), 200), (Exec::Simulate, 16)] {
        for (i, (f, r)) in run(exec, batch).iter().zip(&reference).enumerate() {
            // A rounding difference upstream may move a code by one step, so not bit for bit.
            assert!(cosine(f, r) > 0.9999 && max_abs_diff(f, r) < 2e-3, "{exec:?} batch {batch}, sentence {i}: {}", max_abs_diff(f, r));
        }
    }
    let f = wick::embedding::fidelity(&reference, &embed(&model, &data, 16).unwrap()).unwrap();
    assert!(f.cosine_mean > 0.999, "{f:?}");
}

/// `wick distill --teacher DIR --layers K`, of the BERT and of the DistilBERT (other names,
/// `n_layers`, a `[CLS]` head): a 1-layer student of the 2-layer encoder, trained on other
/// sentences (WordNet's examples), closes a third of its gap to the teacher on the evaluation
/// sentences, is written as a model directory that loads and evaluates like the teacher's, and
/// is deterministic for a seed; a student as deep as the teacher and a non-empty output
/// directory exit 2 naming the culprit.
#[test]
fn distill_text_encoder_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (train, sentences) = (fixture("text/wordnet_train.txt"), fixture("text/sentences.txt"));
    let run = |model: &std::path::Path, out: &std::path::Path, layers: &str, code: i32| {
        let args = [
            "distill",
            "--teacher",
            model.to_str().unwrap(),
            "--layers",
            layers,
            "--train",
            train.to_str().unwrap(),
            "--val",
            sentences.to_str().unwrap(),
            "--epochs",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--json",
            "--quiet",
        ];
        run_expect(&args, code)
    };
    for (model, layers_field) in [(tiny_bert(), "num_hidden_layers"), (fixture("text/tiny_distilbert"), "n_layers"), (fixture("text/tiny_mpnet"), "num_hidden_layers")] {
        let name = model.file_name().unwrap().to_str().unwrap().to_string();
        let (a, b) = (dir.path().join(format!("{name}_a")), dir.path().join(format!("{name}_b")));
        let (o, _) = run(&model, &a, "1", 0);
        let j: serde_json::Value = serde_json::from_str(&o).unwrap();
        let val = j["training"]["val"].as_array().unwrap();
        let best = &val[j["training"]["best"].as_u64().unwrap() as usize];
        // Two epochs close at least a third of the untrained student's gap to the teacher.
        let (untrained, trained) = (val[0]["cosine_mean"].as_f64().unwrap(), best["cosine_mean"].as_f64().unwrap());
        assert!(1.0 - trained < (1.0 - untrained) * 2.0 / 3.0, "{name}: {j}");
        // The kept layer is the one whose 1-layer student starts closest to the teacher on --val.
        let teacher = wick::hf::load(&model, None).unwrap().model;
        let config = wick::hf::config(&model).unwrap();
        let val_data = TextData::read(&sentences, &model, teacher.input_shape()[0]).unwrap();
        let target = embed(&teacher, &val_data, 64).unwrap();
        let start: Vec<f64> = (0..wick::passes::text_distill::encoder_layers(&teacher))
            .map(|l| {
                let s = wick::passes::text_distill::student_of(&teacher, &config, &[l]).unwrap();
                wick::embedding::fidelity(&embed(&s, &val_data, 64).unwrap(), &target).unwrap().cosine_mean
            })
            .collect();
        let chosen = j["training"]["layer_map"][0].as_u64().unwrap() as usize;
        assert_eq!(j["training"]["layer_map"].as_array().unwrap().len(), 1, "{j}");
        assert!(start.iter().all(|&c| start[chosen] >= c), "{name}: kept layer {chosen}, untrained cosines {start:?}");
        assert!((val[0]["cosine_mean"].as_f64().unwrap() - start[chosen]).abs() < 1e-6, "{j} {start:?}");
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
        assert_eq!(config[layers_field], 1, "{name}");
        assert!(a.join("tokenizer.json").is_file() && a.join("sentence_bert_config.json").is_file() && a.join("1_Pooling/config.json").is_file());
        let student = wick::hf::load(&a, None).unwrap().model;
        assert_eq!(wick::passes::text_distill::encoder_layers(&student), 1);
        let (e, _) = run_expect(&["eval", a.to_str().unwrap(), "--data", sentences.to_str().unwrap(), "--teacher", model.to_str().unwrap(), "--json", "--quiet"], 0);
        let e: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert!((e["fidelity"]["cosine_mean"].as_f64().unwrap() - best["cosine_mean"].as_f64().unwrap()).abs() < 1e-6, "{name}: {e}");
        run(&model, &b, "1", 0);
        assert_eq!(std::fs::read(a.join("model.safetensors")).unwrap(), std::fs::read(b.join("model.safetensors")).unwrap(), "{name}: same seed, same student");
    }
    let (model, a) = (tiny_bert(), dir.path().join("tiny_bert_a"));
    let (_, err) = run(&model, &dir.path().join("c"), "2", 2);
    assert!(err.contains("--layers") && err.contains("teacher has 2"), "{err}");
    let (_, err) = run(&model, &a, "1", 2);
    assert!(err.contains("not empty"), "{err}");
}

/// `wick compress DIR --recipe text-distill-int8`: a 1-layer INT8 student of the 2-layer
/// encoder, its report (fidelity of the written file on --test, sizes, layers, latency at batch
/// 1 and 32, each step's record) in report.json and report.md, the --min-cosine gate (exit 1
/// when missed, the outputs still written); a classifier recipe on a text encoder, a text recipe
/// on a classifier and classifier gates on a text encoder exit 2 naming the culprit.
#[test]
fn compress_text_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let t = |f: &str| fixture(&format!("text/{f}")).to_str().unwrap().to_string();
    let (model, train, val, test) = (t("tiny_bert"), t("wordnet_train.txt"), t("wordnet_val.txt"), t("sentences.txt"));
    let out = dir.path().join("c");
    let args = |recipe: &str, out: &std::path::Path, extra: &[&str]| {
        let mut v: Vec<String> =
            ["compress", &model, "--recipe", recipe, "--train", &train, "--val", &val, "--test", &test, "--max-epochs", "1", "--quiet", "--out"].iter().map(|s| s.to_string()).collect();
        v.push(out.to_str().unwrap().into());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let a = args("text-distill-int8", &out, &["--min-cosine", "0.5"]);
    run_expect(&a.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!((r["teacher"]["layers"].as_u64(), r["compressed"]["layers"].as_u64()), (Some(2), Some(1)));
    assert_eq!(r["passes"].as_array().unwrap().iter().map(|p| p["pass"].as_str().unwrap()).collect::<Vec<_>>(), ["text_distill", "text_ptq"]);
    assert!(r["gate"]["passed"].as_bool().unwrap() && r["fidelity"]["sentences"] == 200, "{r}");
    assert!(r["size_ratio"].as_f64().unwrap() < 0.5 && r["compressed"]["batch32_ms_per_batch"].as_f64().unwrap() > 0.0, "{r}");
    let q = wick::artifact::Int8Model::read(&TensorFile::read(&out.join("model.int8.safetensors")).unwrap()).unwrap().unwrap();
    let (o, _) = run_expect(&["eval", out.join("model.int8.safetensors").to_str().unwrap(), "--data", &test, "--teacher", &model, "--batch-size", "32", "--json", "--quiet"], 0);
    let e: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(e["fidelity"], r["fidelity"], "the report measures the written file");
    assert_eq!(wick::passes::text_distill::encoder_layers(&q.model), 1);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("nearest-neighbour agreement") && md.contains("`text_distill`") && md.contains("batch 32"), "{md}");
    // The gate missed: exit 1, outputs written.
    let missed = dir.path().join("m");
    let a = args("text-int8", &missed, &["--min-cosine", "1.0"]);
    let (_, e) = run_expect(&a.iter().map(String::as_str).collect::<Vec<_>>(), 1);
    assert!(e.contains("fidelity gate failed") && missed.join("report.json").is_file(), "{e}");
    for (recipe, extra, culprit) in [("ptq-int8", vec![], "classifier recipe"), ("text-int8", vec!["--max-accuracy-drop", "1"], "--min-cosine")] {
        let a = args(recipe, &dir.path().join("x"), &extra);
        let (_, e) = run_expect(&a.iter().map(String::as_str).collect::<Vec<_>>(), 2);
        assert!(e.contains(culprit), "{recipe}: {e}");
    }
    let d = digits("train");
    let d = d.to_str().unwrap();
    let (_, e) = run_expect(&["compress", mlp_path().to_str().unwrap(), "--recipe", "text-int8", "--train", d, "--val", d, "--test", d, "--out", dir.path().join("y").to_str().unwrap()], 2);
    assert!(e.contains("text-encoder recipe"), "{e}");
}
