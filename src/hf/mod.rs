//! A Hugging Face BERT-family model directory (`config.json`, `model.safetensors`,
//! `tokenizer.json` or a WordPiece `vocab.txt`; BERT, RoBERTa, XLM-RoBERTa, CamemBERT,
//! DistilBERT, MPNet) as a wick model: the architecture built from `config.json` out of wick's
//! ops (embeddings, MPNet's relative position bias, per layer the q/k/v linears, attention,
//! output linear, residual add and LayerNorm, the feed-forward linears and their activation;
//! then the sentence-transformers pooling and normalisation `modules.json` asks for, see
//! `head`), the weights under their own names (`family`; with or without a task class's
//! prefix), and the tokenizer through the `tokenizers` crate (`wordpiece` for a bare
//! `vocab.txt`). Uses `model`, `tensor_file`.

pub mod family;
pub mod head;
pub mod wordpiece;

use crate::error::{Result, WickError};
use crate::model::arch::Arch;
use crate::model::load::{model_from_file, Loaded};
use crate::model::Model;
use crate::tensor_file::TensorFile;
use family::Family;
use head::{Head, Pooling};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Sequence length when the directory does not say (`sentence_bert_config.json`'s
/// `max_seq_length`): sentence-transformers' default for these encoders.
pub const DEFAULT_MAX_SEQ_LEN: usize = 256;

/// Whether `path` is a model directory (it holds a `config.json`).
pub fn is_model_dir(path: &Path) -> bool {
    path.is_dir() && path.join("config.json").is_file()
}

/// Text encoders run in `wick inspect`, `eval`, `quantize`, `distill` and `compress` so far:
/// `command` refuses a model directory, naming it.
pub fn refuse_for(path: &Path, command: &str) -> Result<()> {
    if is_model_dir(path) {
        return Err(WickError::invalid(
            path.display().to_string(),
            format!("is a text encoder (a model directory); `wick {command}` does not take text encoders yet (inspect, eval, quantize, distill and compress do)"),
        ));
    }
    Ok(())
}

/// A model directory's `config.json` (parsed, and its path), the family it names and its
/// sentence-transformers head.
#[derive(Debug, Clone)]
pub struct Config {
    pub json: Value,
    pub path: PathBuf,
    pub family: Family,
    pub head: Head,
}

impl Config {
    /// The config of a `k`-layer encoder otherwise like this one.
    pub fn with_layers(&self, k: usize) -> Config {
        let mut c = self.clone();
        c.json[self.family.layers_field()] = k.into();
        c
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| WickError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| WickError::invalid(path.display().to_string(), format!("is not valid JSON: {e}")))
}

/// The token sequences' length limit: `max_seq_length` of `sentence_bert_config.json`, else
/// [`DEFAULT_MAX_SEQ_LEN`], at most the model's positions (from its first, `c` being the
/// directory's config).
fn max_seq_len(dir: &Path, c: &Config) -> Result<usize> {
    let positions = config_usize(&c.json, "max_position_embeddings", &c.path)?;
    let offset = c.family.position_offset(&c.json);
    let want = sentence_bert_config(dir)?.and_then(|c| c.get("max_seq_length").and_then(Value::as_u64)).map(|v| v as usize);
    Ok(want.unwrap_or(DEFAULT_MAX_SEQ_LEN).min(positions.saturating_sub(offset)))
}

/// The JSON file at `path`, if there is one.
fn read_json_if_present(path: &Path) -> Result<Option<Value>> {
    path.is_file().then(|| read_json(path)).transpose()
}

/// The directory's `sentence_bert_config.json`, if it has one.
fn sentence_bert_config(dir: &Path) -> Result<Option<Value>> {
    read_json_if_present(&dir.join("sentence_bert_config.json"))
}

/// Whether sentences are lower-cased before the tokenizer sees them (`do_lower_case` of
/// `sentence_bert_config.json`, as sentence-transformers' Transformer module does).
pub fn lower_cases(dir: &Path) -> Result<bool> {
    Ok(sentence_bert_config(dir)?.and_then(|c| c.get("do_lower_case").and_then(Value::as_bool)).unwrap_or(false))
}

fn config_usize(c: &Value, field: &str, path: &Path) -> Result<usize> {
    c.get(field).and_then(Value::as_u64).map(|v| v as usize).ok_or_else(|| WickError::invalid(format!("{}: field '{field}'", path.display()), "is missing or not a non-negative integer"))
}

/// The node (op and its fields) of `hidden_act` (DistilBERT's `activation`), Hugging Face's
/// name of the feed-forward activation: "gelu" (and "gelu_python") is exact, `x·Φ(x)`;
/// "gelu_new", "gelu_pytorch_tanh" and "gelu_fast" are the tanh form,
/// `x/2·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`; "relu" and "silu" (or "swish") are themselves.
fn activation(hidden_act: Option<&str>) -> std::result::Result<Value, String> {
    match hidden_act {
        Some("gelu" | "gelu_python") => Ok(json!({"op": "gelu"})),
        Some("gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") => Ok(json!({"op": "gelu", "approximate": "tanh"})),
        Some("relu") => Ok(json!({"op": "relu"})),
        Some("silu" | "swish") => Ok(json!({"op": "silu"})),
        other => Err(format!("is {other:?}; wick reads \"gelu\", \"gelu_new\", \"gelu_pytorch_tanh\", \"gelu_fast\", \"relu\" and \"silu\"")),
    }
}

/// The node `name` applying `act` (an op and its fields, see [`activation`]) to `input`.
fn activation_node(act: &Value, name: &str, input: &str) -> Value {
    let mut node = act.clone();
    node["name"] = name.into();
    node["inputs"] = json!([input]);
    node
}

/// The architecture of a BERT-family encoder and its head, from `config.json` (absolute
/// positions).
pub fn arch_from_config(c: &Config, seq_len: usize) -> Result<Arch> {
    let (config, path) = (&c.json, c.path.as_path());
    let bad = |field: &str, msg: String| WickError::invalid(format!("{}: field '{field}'", path.display()), msg);
    let get = |f: &str| config_usize(config, f, path);
    let family = c.family;
    let [d_field, heads_field, ffn_field, act_field] = family.fields();
    let act = activation(config.get(act_field).and_then(Value::as_str)).map_err(|m| bad(act_field, m))?;
    if let Some(p) = config.get("position_embedding_type").and_then(Value::as_str).filter(|p| *p != "absolute") {
        return Err(bad("position_embedding_type", format!("is \"{p}\"; wick reads \"absolute\"")));
    }
    let (layers, d, heads, ffn) = (get(family.layers_field())?, get(d_field)?, get(heads_field)?, get(ffn_field)?);
    let (vocab, positions) = (get("vocab_size")?, get("max_position_embeddings")?);
    let eps = family.eps(config);
    let pad = family.pad_id(config);
    let linear = |name: &str, input: &str, i: usize, o: usize| json!({"name": name, "op": "linear", "inputs": [input], "in_features": i, "out_features": o});
    let norm = |name: &str, input: &str| json!({"name": name, "op": "layernorm", "inputs": [input], "normalized_shape": [d], "eps": eps});
    let mut nodes = vec![
        json!({"name": "embeddings.word_embeddings", "op": "embedding", "inputs": ["input_ids"], "num_embeddings": vocab, "embedding_dim": d}),
        json!({"name": "embeddings.position_embeddings", "op": "position_embedding", "inputs": ["embeddings.word_embeddings"], "num_positions": positions, "embedding_dim": d, "offset": family.position_offset(config)}),
    ];
    let mut x = "embeddings.position_embeddings".to_string();
    if family.token_types() {
        nodes.push(json!({"name": "embeddings.token_type_embeddings", "op": "embedding_row", "inputs": [x], "num_embeddings": get("type_vocab_size")?, "embedding_dim": d, "index": 0}));
        x = "embeddings.token_type_embeddings".into();
    }
    nodes.push(norm("embeddings.LayerNorm", &x));
    x = "embeddings.LayerNorm".into();
    let mut attention_inputs = vec!["input_ids".to_string()];
    if family == Family::Mpnet {
        let buckets = config.get("relative_attention_num_buckets").map_or(Some(family::MPNET_BUCKETS), |v| v.as_u64().map(|b| b as usize));
        if buckets != Some(family::MPNET_BUCKETS) {
            return Err(bad(
                "relative_attention_num_buckets",
                format!("is {}; transformers' MPNet computes {} buckets whatever this says, so wick reads only that", config["relative_attention_num_buckets"], family::MPNET_BUCKETS),
            ));
        }
        let bias = family::MPNET_BIAS_NODE;
        nodes
            .push(json!({"name": bias, "op": "relative_position_bias", "inputs": ["input_ids"], "num_buckets": family::MPNET_BUCKETS, "max_distance": family::MPNET_MAX_DISTANCE, "num_heads": heads}));
        attention_inputs.push(bias.into());
    }
    for l in 0..layers {
        let n = family.layer(l);
        for part in [&n.q, &n.k, &n.v] {
            nodes.push(linear(part, &x, d, d));
        }
        let inputs: Vec<&str> = [n.q.as_str(), &n.k, &n.v].into_iter().chain(attention_inputs.iter().map(String::as_str)).collect();
        nodes.push(json!({"name": n.attention, "op": "attention", "inputs": inputs, "num_heads": heads, "pad_id": pad}));
        nodes.push(linear(&n.attn_out, &n.attention, d, d));
        nodes.push(json!({"name": n.attn_residual, "op": "add", "inputs": [n.attn_out, x]}));
        nodes.push(norm(&n.attn_norm, &n.attn_residual));
        nodes.push(linear(&n.ffn_in, &n.attn_norm, d, ffn));
        nodes.push(activation_node(&act, &n.act, &n.ffn_in));
        nodes.push(linear(&n.ffn_out, &n.act, ffn, d));
        nodes.push(json!({"name": n.ffn_residual, "op": "add", "inputs": [n.ffn_out, n.attn_norm]}));
        nodes.push(norm(&n.ffn_norm, &n.ffn_residual));
        x = n.ffn_norm;
    }
    // One node per pooling mode, joined side by side when there are several.
    let joined = c.head.pooling.len() > 1;
    let pools: Vec<String> = (0..c.head.pooling.len()).map(|i| if joined { format!("pooling.{i}") } else { "pooling".into() }).collect();
    for (pooling, name) in c.head.pooling.iter().zip(&pools) {
        nodes.push(match pooling {
            Pooling::Mean => json!({"name": name, "op": "masked_mean", "inputs": [x, "input_ids"], "pad_id": pad}),
            // Padding is appended, so the first token is every sentence's `[CLS]`.
            Pooling::Cls => json!({"name": name, "op": "select", "inputs": [x], "dim": 1, "index": 0}),
            Pooling::Masked(mode) => json!({"name": name, "op": "masked_pool", "inputs": [x, "input_ids"], "mode": mode, "pad_id": pad}),
        });
    }
    if joined {
        nodes.push(json!({"name": "pooling", "op": "concat", "inputs": pools, "dim": -1}));
    }
    let mut output = "pooling".to_string();
    for dense in &c.head.dense {
        let linear = format!("{}.linear", dense.folder);
        nodes.push(json!({"name": linear, "op": "linear", "inputs": [output], "in_features": dense.in_features, "out_features": dense.out_features, "bias": dense.bias}));
        output = linear;
        if let Some(act) = &dense.act {
            let name = format!("{}.activation", dense.folder);
            nodes.push(activation_node(act, &name, &output));
            output = name;
        }
    }
    if c.head.normalize {
        nodes.push(json!({"name": "normalize", "op": "l2_normalize", "inputs": [output]}));
        output = "normalize".into();
    }
    let arch = json!({"format": "wick-arch", "version": 1, "input": {"name": "input_ids", "shape": [seq_len], "preprocessing": "token ids of tokenizer.json, padded with pad_token_id"}, "nodes": nodes, "output": output});
    Arch::from_json(&arch.to_string(), &path.display().to_string())
}

/// Loads the model of directory `dir` for sequences of up to `seq_len` tokens (when `None`,
/// `max_seq_length` of `sentence_bert_config.json`, else [`DEFAULT_MAX_SEQ_LEN`], at most the
/// model's positions). Tensors the encoder does not use (the pooler) are reported as
/// warnings.
pub fn load(dir: &Path, seq_len: Option<usize>) -> Result<Loaded> {
    let c = config(dir)?;
    let seq_len = match seq_len {
        Some(l) => l,
        None => max_seq_len(dir, &c)?,
    };
    let arch = arch_from_config(&c, seq_len)?;
    let weights = weights_path(dir)?;
    let mut file = TensorFile::read(&weights)?;
    // Checkpoints of task classes (`BertForX`) prefix the encoder's names with the family's.
    let prefix = c.family.prefix();
    if file.tensors.keys().any(|k| k.starts_with(prefix)) {
        file.tensors = std::mem::take(&mut file.tensors).into_iter().map(|(k, v)| (k.strip_prefix(prefix).map(str::to_string).unwrap_or(k), v)).collect();
    }
    // A Dense module's weights are its folder's, named as the module names them.
    for dense in &c.head.dense {
        let folder = dir.join(&dense.folder);
        for (k, v) in TensorFile::read(&weights_path(&folder)?)?.tensors {
            file.tensors.insert(format!("{}.{k}", dense.folder), v);
        }
    }
    let mut loaded = model_from_file(&file, arch)?;
    loaded.model.source = dir.display().to_string();
    Ok(loaded)
}

/// The `config.json` and the head of model directory `dir`.
pub fn config(dir: &Path) -> Result<Config> {
    let path = dir.join("config.json");
    let json = read_json(&path)?;
    let family = Family::of(&json, &path)?;
    let head = head::read(dir, config_usize(&json, family.fields()[0], &path)?)?;
    Ok(Config { json, path, family, head })
}

/// Writes `model` (a BERT encoder whose `config.json` is `config`) as a model directory `out`
/// beside `source`, the directory it was derived from: `config.json`, `model.safetensors` (the
/// weights under their own names, with the `format: pt` metadata Hugging Face's loader asks
/// for), and `source`'s tokenizer and sentence-transformers files (every other file and the
/// numbered module folders such as `1_Pooling`, but its README, which describes the source). A
/// module's own weights (`2_Dense.linear.weight`) go to its folder's `model.safetensors`.
/// Written into a staging folder renamed into place, so a failure leaves no half directory.
pub fn save_dir(model: &Model, config: &Value, source: &Path, out: &Path) -> Result<()> {
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(WickError::invalid(out.display().to_string(), "exists and is not empty; give a new directory for the model"));
    }
    let stage = crate::staging::Staging::new(out)?;
    let io = |p: &Path, e: std::io::Error| WickError::io(p, e);
    let mut tensors = std::collections::BTreeMap::new();
    for (k, t) in model.tensors() {
        tensors.insert(k, crate::tensor_file::RawTensor::from_f32(t.dims().to_vec(), &t.flatten_all()?.to_vec1::<f32>()?));
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(source).map_err(|e| io(source, e))?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>().map_err(|e| io(source, e))?;
    entries.sort();
    let md = std::collections::BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut names = vec!["model.safetensors".to_string(), "config.json".to_string()];
    for from in entries {
        let name = from.file_name().expect("a directory entry").to_string_lossy().to_string();
        let module = from.is_dir() && name.split('_').next().is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let copied = from.is_file() && !matches!(name.as_str(), "model.safetensors" | "config.json" | "README.md") && ![".bin", ".onnx", ".h5", ".msgpack", ".ot"].iter().any(|x| name.ends_with(x));
        if module {
            let to = stage.dir.join(&name);
            std::fs::create_dir(&to).map_err(|e| io(&to, e))?;
            // A module's own weights (a Dense layer's, `2_Dense.linear.weight`) go back to its folder.
            let prefix = format!("{name}.");
            let keys: Vec<String> = tensors.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
            let own: std::collections::BTreeMap<String, _> = keys.into_iter().map(|k| (k[prefix.len()..].to_string(), tensors.remove(&k).expect("listed"))).collect();
            for f in std::fs::read_dir(&from).map_err(|e| io(&from, e))? {
                let f = f.map_err(|e| io(&from, e))?.path();
                if f.is_file() && (own.is_empty() || f.extension().is_none_or(|x| x != "safetensors" && x != "bin")) {
                    std::fs::copy(&f, to.join(f.file_name().expect("a file"))).map_err(|e| io(&f, e))?;
                }
            }
            if !own.is_empty() {
                crate::tensor_file::write(&to.join("model.safetensors"), &own, &md)?;
            }
        } else if copied {
            std::fs::copy(&from, stage.dir.join(&name)).map_err(|e| io(&from, e))?;
        } else {
            continue;
        }
        names.push(name);
    }
    crate::tensor_file::write(&stage.dir.join("model.safetensors"), &tensors, &md)?;
    let text = serde_json::to_string_pretty(config).expect("JSON serialises") + "\n";
    std::fs::write(stage.dir.join("config.json"), text).map_err(|e| io(&stage.dir.join("config.json"), e))?;
    stage.commit(&names.iter().map(String::as_str).collect::<Vec<_>>())
}

fn weights_path(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("model.safetensors");
    if p.is_file() {
        Ok(p)
    } else {
        Err(WickError::invalid(dir.display().to_string(), "holds no model.safetensors (wick reads the safetensors weights of a model directory)"))
    }
}

/// The directory's tokenizer (`tokenizer.json`, else one built from a WordPiece `vocab.txt`,
/// see `wordpiece`), truncating to `max_len` tokens (keeping the final `[SEP]`-like token) and
/// without its own padding: wick pads each batch itself.
pub fn tokenizer(dir: &Path, max_len: usize) -> Result<tokenizers::Tokenizer> {
    let path = dir.join("tokenizer.json");
    let bad = |e: String| WickError::invalid(path.display().to_string(), e);
    let mut t = match (path.is_file(), dir.join("vocab.txt").is_file()) {
        (false, true) => wordpiece::from_vocab(dir)?,
        (false, false) => return Err(WickError::invalid(dir.display().to_string(), "holds neither a tokenizer.json nor a WordPiece vocab.txt to tokenise sentences with")),
        (true, _) => tokenizers::Tokenizer::from_file(&path).map_err(|e| bad(format!("cannot be read as a tokenizer: {e}")))?,
    };
    t.with_padding(None);
    t.with_truncation(Some(tokenizers::TruncationParams { max_length: max_len, ..Default::default() })).map_err(|e| bad(e.to_string()))?;
    Ok(t)
}

/// The token ids of each line (special tokens added), with `t`'s truncation.
pub fn tokenize(t: &tokenizers::Tokenizer, lines: &[String], source: &str) -> Result<Vec<Vec<u32>>> {
    let enc = t.encode_batch(lines.to_vec(), true).map_err(|e| WickError::data(source, format!("cannot be tokenised: {e}")))?;
    Ok(enc.iter().map(|e| e.get_ids().to_vec()).collect())
}
