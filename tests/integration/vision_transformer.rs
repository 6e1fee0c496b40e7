//! Vision-transformer blocks from ONNX: attention as `nn.MultiheadAttention`, Hugging Face and
//! timm write it, each exported by both PyTorch exporters (`fixtures/onnx/make_vit_blocks.py`),
//! read as wick's `attention` op, with a class token as `prepend_rows` and a learned position
//! table as `position_embedding`.

use crate::common::*;
use candle_core::Tensor;
use prost::Message;
use wick::model::arch::Op;
use wick::runtime::{kernels::Kernel, Exec, Executor};
use wick::tensor_file::TensorFile;

/// Both exports give PyTorch's logits within 1e-4 on the compiled float runtime with no candle
/// step, and through wick's own ONNX export (`assert_both_exports_import`); the class token's
/// `Expand` to the batch and `Concat` before the patches are one `prepend_rows` node. Each attention
/// block is one `attention` node of its heads, reading its q, k and v whole or as `narrow`s of
/// one packed projection; every head-splitting reshape and transpose is gone. In INT8 the
/// integer runtime equals the scalar reference, and the QDQ export reads back bit for bit, its
/// int8 position table included.
#[test]
fn attention_in_three_pytorch_forms_imports_as_one_op() {
    let dir = tempfile::tempdir().unwrap();
    let data = fixture("onnx/vit_blocks.data.safetensors");
    for (e, m) in assert_both_exports_import("vit_blocks", dir.path()) {
        let heads: Vec<usize> = m.arch.nodes.iter().filter_map(|n| if let Op::Attention(c) = &n.op { Some(c.num_heads) } else { None }).collect();
        assert_eq!(heads, [4, 4, 2], "{e}: nn.MultiheadAttention, Hugging Face's and timm's forms");
        let attention_inputs: Vec<usize> = m.arch.nodes.iter().filter(|n| matches!(n.op, Op::Attention(_))).map(|n| n.inputs.len()).collect();
        assert_eq!(attention_inputs, [3, 3, 3], "{e}: q, k and v, no mask");
        let scales: Vec<Option<f64>> = m.arch.nodes.iter().filter_map(|n| if let Op::Attention(c) = &n.op { Some(c.scale.map(|s| (s * 1e6).round() / 1e6)) } else { None }).collect();
        assert_eq!(scales, [None, None, Some(0.2)], "{e}: 1/√d twice, then timm's block's own scale");
        let positions: Vec<(usize, usize)> = m.arch.nodes.iter().filter_map(|n| if let Op::PositionEmbedding(c) = &n.op { Some((c.num_positions, c.embedding_dim)) } else { None }).collect();
        assert_eq!(positions, [(9, 32)], "{e}: 8 patches and the class token");
        let tokens: Vec<(usize, usize)> = m.arch.nodes.iter().filter_map(|n| if let Op::PrependRows(c) = &n.op { Some((c.num_rows, c.embedding_dim)) } else { None }).collect();
        assert_eq!(tokens, [(1, 32)], "{e}: the class token");
        let ops: Vec<String> = m.arch.nodes.iter().map(|n| n.op.name()).collect();
        assert!(!ops.iter().any(|o| o == "reshape" || o == "transpose" || o == "flatten"), "{e}: {ops:?}");
        assert_eq!(ops.iter().filter(|o| *o == "narrow").count(), 6, "{e}: q, k and v of the two packed projections");
        let q = ptq_runs_bit_exact(&m, &data);
        let exported = dir.path().join(format!("vit_blocks.{e}.int8.onnx"));
        wick::onnx::export::write(&wick::onnx::export::int8_model(&q).unwrap(), &exported).unwrap();
        let wick::artifact::AnyModel::Int8(back) = wick::onnx::load(&exported).unwrap().0 else { panic!("{e}: the QDQ export reads back as an INT8 model") };
        let x = Tensor::from_vec(TensorFile::read(&data).unwrap().f32("x").unwrap(), (5, 8, 8), &candle_core::Device::Cpu).unwrap();
        let run = |q: &wick::artifact::Int8Model| -> Vec<f32> { Executor::new(q, Exec::Integer(Kernel::Fast)).unwrap().predict(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap() };
        assert_eq!(run(&back), run(&q), "{e}: the read-back INT8 model computes the same bits");
        assert_eq!(back.tables.keys().collect::<Vec<_>>(), q.tables.keys().collect::<Vec<_>>(), "{e}: the position table stays int8");
    }
}

/// Scores left unscaled (the `/ √8` removed from the Hugging Face form) are attention with a
/// scale of 1; a product of q with a value that is no kᵀ (the timm form's `MatMul` fed q twice)
/// is refused with the node and the reason (exit 2).
#[test]
fn attention_scales_and_products_that_are_not_attention() {
    let dir = tempfile::tempdir().unwrap();
    let data = fixture("onnx/vit_blocks.data.safetensors");
    let edited = |name: &str, edit: &dyn Fn(&mut Vec<wick::onnx::proto::NodeProto>)| {
        let mut p = wick::onnx::proto::ModelProto::decode(std::fs::read(fixture("onnx/vit_blocks.legacy.onnx")).unwrap().as_slice()).unwrap();
        edit(&mut p.graph.as_mut().unwrap().node);
        let path = dir.path().join(name);
        std::fs::write(&path, p.encode_to_vec()).unwrap();
        path
    };
    let unscaled = edited("unscaled.onnx", &|nodes| {
        let div = nodes.iter().find(|n| n.name == "/bert/Div_1").unwrap().clone();
        nodes.iter_mut().find(|n| n.op_type == "Softmax" && n.input == div.output).unwrap().input = vec![div.input[0].clone()];
    });
    let scales: Vec<Option<f64>> = load(&unscaled).arch.nodes.iter().filter_map(|n| if let Op::Attention(c) = &n.op { Some(c.scale.map(|s| (s * 1e6).round() / 1e6)) } else { None }).collect();
    assert_eq!(scales, [None, Some(1.0), Some(0.2)]);
    let no_key = edited("no_key.onnx", &|nodes| {
        let scores = nodes.iter_mut().find(|n| n.name == "/timm/MatMul").unwrap();
        scores.input[1] = scores.input[0].clone();
    });
    let (_, stderr) = run_expect(&["eval", no_key.to_str().unwrap(), "--data", data.to_str().unwrap()], 2);
    assert!(stderr.contains("no_key.onnx") && stderr.contains("'/timm/MatMul' (MatMul)") && stderr.contains("attention reads q, k and v"), "{stderr}");
}
