//! The tokenizer of a model directory that has a WordPiece `vocab.txt` but no `tokenizer.json`
//! (older Hub repositories), built as transformers' `BertConverter` builds the fast tokenizer
//! from the slow one: `BertNormalizer` (clean text, Chinese characters split off when
//! `tokenize_chinese_chars`, accents stripped as `strip_accents` says or else when lower-casing,
//! lower-cased when `do_lower_case`), `BertPreTokenizer`, WordPiece over `vocab.txt` (`##`
//! continuations, words over 100 characters unknown) and `cls … sep` around each sentence, with
//! the special tokens kept whole. Settings come from `tokenizer_config.json`, special tokens also
//! from `special_tokens_map.json`, each with the defaults of the tokenizer class.

use crate::error::{Result, WickError};
use serde_json::Value;
use std::path::Path;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Tokenizer};

/// The tokenizer classes whose slow form is this WordPiece tokenizer (each also as `…Fast`).
const WORDPIECE_CLASSES: [&str; 6] = ["BertTokenizer", "DistilBertTokenizer", "MPNetTokenizer", "ElectraTokenizer", "MobileBertTokenizer", "LayoutLMTokenizer"];

/// The special tokens `[unk, sep, cls, pad, mask]` a class uses when its configs do not say.
fn default_specials(class: &str) -> [&'static str; 5] {
    match class {
        "MPNetTokenizer" => ["[UNK]", "</s>", "<s>", "<pad>", "<mask>"],
        _ => ["[UNK]", "[SEP]", "[CLS]", "[PAD]", "[MASK]"],
    }
}

/// The config fields of the special tokens, in [`default_specials`]' order.
const SPECIAL_FIELDS: [&str; 5] = ["unk_token", "sep_token", "cls_token", "pad_token", "mask_token"];

/// A token given as a string or as a serialised `AddedToken` (`{"content": …}`).
fn token_text(v: &Value) -> Option<String> {
    v.as_str().or_else(|| v.get("content").and_then(Value::as_str)).map(str::to_string)
}

/// The tokenizer of `dir` from its `vocab.txt` (see the module docs).
pub fn from_vocab(dir: &Path) -> Result<Tokenizer> {
    let vocab = dir.join("vocab.txt");
    let config_path = dir.join("tokenizer_config.json");
    // An absent file is null: every field of it is missing.
    let config = super::read_json_if_present(&config_path)?.unwrap_or_default();
    let specials_map = super::read_json_if_present(&dir.join("special_tokens_map.json"))?.unwrap_or_default();
    let field = |f: &str, msg: String| WickError::invalid(format!("{}: field '{f}'", config_path.display()), msg);
    let class = config.get("tokenizer_class").and_then(Value::as_str).unwrap_or("BertTokenizer");
    let class = class.strip_suffix("Fast").unwrap_or(class);
    if !WORDPIECE_CLASSES.contains(&class) {
        return Err(field(
            "tokenizer_class",
            format!("is \"{class}\", whose vocabulary is not a WordPiece vocab.txt; give the directory its tokenizer.json (wick reads vocab.txt for {})", WORDPIECE_CLASSES.join(", ")),
        ));
    }
    let flag = |f: &str, default: bool| -> Result<bool> {
        match config.get(f) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| field(f, format!("is {v}; true or false is expected"))),
        }
    };
    let lowercase = flag("do_lower_case", true)?;
    let chinese = flag("tokenize_chinese_chars", true)?;
    let strip_accents = match config.get("strip_accents") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_bool().ok_or_else(|| field("strip_accents", format!("is {v}; true, false or null is expected")))?),
    };
    let defaults = default_specials(class);
    let [unk, sep, cls, pad, mask] = std::array::from_fn(|i| {
        let f = SPECIAL_FIELDS[i];
        config.get(f).and_then(token_text).or_else(|| specials_map.get(f).and_then(token_text)).unwrap_or_else(|| defaults[i].to_string())
    });
    let bad_vocab = |msg: String| WickError::invalid(vocab.display().to_string(), msg);
    let model = WordPiece::from_file(&vocab.to_string_lossy())
        .unk_token(unk.clone())
        .continuing_subword_prefix("##".into())
        .max_input_chars_per_word(100)
        .build()
        .map_err(|e| bad_vocab(format!("cannot be read as a WordPiece vocabulary: {e}")))?;
    let mut t = Tokenizer::new(model);
    let id = |token: &str, f: &str| t.token_to_id(token).ok_or_else(|| bad_vocab(format!("has no '{token}', the {f} of {}", config_path.display())));
    let (sep_id, cls_id) = (id(&sep, "sep_token")?, id(&cls, "cls_token")?);
    id(&unk, "unk_token")?;
    t.with_normalizer(Some(BertNormalizer::new(true, chinese, strip_accents, lowercase))).map_err(|e| bad_vocab(e.to_string()))?;
    t.with_pre_tokenizer(Some(BertPreTokenizer));
    t.with_post_processor(Some(BertProcessing::new((sep.clone(), sep_id), (cls.clone(), cls_id))));
    // The special tokens the vocabulary holds stay whole wherever they appear in a sentence.
    let specials: Vec<AddedToken> = [unk, sep, cls, pad, mask].into_iter().filter(|s| t.token_to_id(s).is_some()).map(|s| AddedToken::from(s, true)).collect();
    t.add_special_tokens(specials).map_err(|e| bad_vocab(e.to_string()))?;
    Ok(t)
}
