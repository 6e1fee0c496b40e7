//! Classifiers over token ids (an embedding table, then convs: `fixtures/onnx/make_textcnn.py`):
//! both PyTorch exports import, integer id files load, the INT8 artifact stores the table INT8
//! per row, and it goes through ONNX and back bit for bit.

use crate::common::*;
use wick::artifact::AnyModel;
use wick::model::arch::Op;
use wick::tensor_file::TensorFile;

fn tokens(split: &str) -> std::path::PathBuf {
    fixture(&format!("data/digits_tokens_{split}.safetensors"))
}

/// Both exports read as an `embedding` node and give PyTorch's logits within 1e-4 and its exact
/// accuracy on int64 ids, on the compiled plan with no step left to candle; uint8 ids load too.
#[test]
fn token_classifier_imports_and_reads_integer_ids() {
    let dir = tempfile::tempdir().unwrap();
    let test = TensorFile::read(&tokens("test")).unwrap();
    let reference = test.f32("ref").unwrap();
    let labels = wick::tensor_file::to_i64(&test.tensors["y"], "test", "y").unwrap();
    let pytorch_correct = reference.chunks(10).zip(&labels).filter(|(row, &y)| wick::eval::argmax(row) as i64 == y).count();
    for e in ["legacy", "dynamo"] {
        let path = fixture(&format!("onnx/textcnn.{e}.onnx"));
        let m = load(&path);
        let Op::Embedding(c) = &m.arch.nodes[0].op else { panic!("{e}: {:?}", m.arch.nodes[0]) };
        assert_eq!((m.arch.nodes[0].name.as_str(), c.num_embeddings, c.embedding_dim), ("emb", 256, 8), "{e}");
        assert_eq!(wick::runtime::plan::Plan::float(&m).unwrap().candle_steps(), Vec::<&str>::new(), "{e}");
        let logits = predicted_logits(&path, &tokens("test"), dir.path());
        assert!(max_abs_diff(&logits, &reference) <= 1e-4, "{e}: {}", max_abs_diff(&logits, &reference));
        let train = wick::data::Dataset::read(&tokens("train")).unwrap();
        let r = wick::eval::evaluate(&m, &wick::data::Dataset::read(&tokens("test")).unwrap(), 64, &wick::progress::Silent).unwrap();
        assert_eq!(r.correct as usize, pytorch_correct, "{e}");
        assert!(wick::eval::evaluate(&m, &train, 64, &wick::progress::Silent).unwrap().accuracy > 0.8, "{e}: uint8 ids read as the same ids");
    }
    // Ids f32 cannot hold exactly are refused, naming the file and the value.
    let bad = dir.path().join("big_ids.safetensors");
    let x: Vec<i64> = vec![3, (1 << 24) + 1];
    let raw = |dtype, shape: Vec<usize>, data: Vec<u8>| wick::tensor_file::RawTensor { dtype, shape, data };
    let tensors = [
        ("x".to_string(), raw(safetensors::Dtype::I64, vec![1, 2], x.iter().flat_map(|v| v.to_le_bytes()).collect())),
        ("y".to_string(), raw(safetensors::Dtype::I64, vec![1], 0i64.to_le_bytes().to_vec())),
    ];
    wick::tensor_file::write(&bad, &tensors.into_iter().collect(), &Default::default()).unwrap();
    let err = wick::data::Dataset::read(&bad).unwrap_err().to_string();
    assert!(err.contains("big_ids.safetensors") && err.contains("16777217") && err.contains("2^24"), "{err}");
    // An id outside the table: exit 2, naming the embedding and the id.
    let outside = dir.path().join("outside.safetensors");
    let x: Vec<u8> = [1u16, 2, 3, 4, 5, 6, 7, 300].iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensors = [("x".to_string(), raw(safetensors::Dtype::U16, vec![1, 8], x)), ("y".to_string(), raw(safetensors::Dtype::I64, vec![1], 0i64.to_le_bytes().to_vec()))];
    wick::tensor_file::write(&outside, &tensors.into_iter().collect(), &Default::default()).unwrap();
    let (_, err) = run_expect(&["eval", fixture("onnx/textcnn.legacy.onnx").to_str().unwrap(), "--data", outside.to_str().unwrap()], 2);
    assert!(err.contains("'emb'") && err.contains("token id 300 is not an integer in 0..256"), "{err}");
}

/// `compress --recipe qat-int8` on the legacy export: within the 1-point gate, the table is
/// INT8 per row in the artifact (I8 codes, one scale per row) and counted as an INT8 layer in
/// the report; `wick export` writes it as `DequantizeLinear` → `Gather` at int64 ids, and
/// importing that graph gives back the same table codes and the same logits bit for bit.
#[test]
fn token_classifier_int8_table_round_trips_through_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let model = fixture("onnx/textcnn.legacy.onnx");
    let (train, val, test) = (tokens("train"), tokens("val"), tokens("test"));
    let args = ["compress", model.to_str().unwrap(), "--recipe", "qat-int8", "--train", train.to_str().unwrap(), "--val", val.to_str().unwrap()];
    run_expect(&[&args[..], &["--test", test.to_str().unwrap(), "--out", out.to_str().unwrap(), "--max-accuracy-drop", "1", "--quiet"]].concat(), 0);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let emb = report["layers"].as_array().unwrap().iter().find(|l| l["layer"] == "emb").unwrap();
    assert_eq!((emb["status"].as_str(), emb["weight_bits"].as_u64()), (Some("int8"), Some(8)), "{emb}");
    let artifact = out.join("model.int8.safetensors");
    let file = TensorFile::read(&artifact).unwrap();
    assert_eq!((file.tensors["emb.weight"].dtype, file.tensors["emb.weight_scale"].shape.clone()), (safetensors::Dtype::I8, vec![256]));
    let q = wick::compare::read_int8(&artifact).unwrap();
    let table = &q.tables["emb"];
    let held: Vec<f32> = q.model.params["emb.weight"].as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let dequantised: Vec<f32> = table.values.iter().enumerate().map(|(i, &c)| c as f32 * table.scales[i / 8]).collect();
    assert_eq!(held, dequantised, "the model holds the table's codes times their row's scale");

    let exported = dir.path().join("textcnn.int8.onnx");
    run_expect(&["export", artifact.to_str().unwrap(), "--out", exported.to_str().unwrap()], 0);
    let graph = crate::onnx::read_proto(&exported).graph.unwrap();
    assert_eq!(graph.input[0].r#type.as_ref().unwrap().tensor_type.as_ref().unwrap().elem_type, wick::onnx::proto::data_type::INT64);
    let gather = graph.node.iter().find(|n| n.op_type == "Gather").unwrap();
    assert_eq!(gather.input, ["emb.weight", "ids"]);
    let AnyModel::Int8(back) = wick::onnx::load(&exported).unwrap().0 else { panic!("the QDQ export reads back as an INT8 model") };
    assert_eq!((back.tables["emb"].values == table.values, back.tables["emb"].scales == table.scales), (true, true));
    let logits = |m: &std::path::Path| predicted_logits(m, &test, dir.path());
    assert_eq!(logits(&artifact), logits(&exported), "the exported graph, read back, runs the artifact's integers");
}
