//! What today's `torch.onnx.export` writes by default (the dynamo exporter, PyTorch ≥ 2.5):
//! weights in an external data file beside the model, `AdaptiveAvgPool2d(1)` as `ReduceMean`
//! over the spatial axes, and often a final `Softmax`. Each imports as the plain form does.

use prost::Message;

use crate::proto::{ModelProto, OperatorSetIdProto, StringStringEntryProto};
use crate::qdq::{int, ints};
use crate::tests::{good, node};
use crate::{Error, Imported, import_bytes, import_file};

fn plain() -> Imported {
    import_bytes(&good().encode_to_vec(), "tiny.onnx").unwrap()
}

/// `m` with every float initializer moved to `data` (the file `location`), back to back.
fn externalised(mut m: ModelProto, location: &str) -> (ModelProto, Vec<u8>) {
    let mut data = Vec::new();
    for t in &mut m.graph.as_mut().unwrap().initializer {
        let raw: Vec<u8> = t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let kv = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        t.external_data = vec![
            kv("location", location.into()),
            kv("offset", data.len().to_string()),
            kv("length", raw.len().to_string()),
        ];
        t.data_location = Some(1);
        t.float_data.clear();
        data.extend(raw);
    }
    (m, data)
}

#[test]
fn external_data_is_read_from_beside_the_model() {
    let td = tempfile::tempdir().unwrap();
    let (m, data) = externalised(good(), "tiny.onnx.data");
    let path = td.path().join("tiny.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    std::fs::write(td.path().join("tiny.onnx.data"), &data).unwrap();
    let imp = import_file(&path).unwrap();
    let want = plain();
    assert_eq!((&imp.spec, &imp.tensors), (&want.spec, &want.tensors));

    // From bytes alone the data file cannot be found: the error says what to do.
    let e = import_bytes(&m.encode_to_vec(), "tiny.onnx").unwrap_err();
    assert!(
        matches!(e, Error::Model { .. })
            && e.to_string().contains("import the model from its path"),
        "{e}"
    );
    // A truncated data file, a location outside the model's folder, a missing file.
    std::fs::write(td.path().join("tiny.onnx.data"), &data[..data.len() - 4]).unwrap();
    let e = import_file(&path).unwrap_err().to_string();
    assert!(
        e.contains("fc.bias") && e.contains("but the file has"),
        "{e}"
    );
    for (loc, want) in [
        ("../tiny.onnx.data", "not a path inside"),
        ("/etc/passwd", "not a path inside"),
        ("gone.data", "gone.data"),
    ] {
        let (m, _) = externalised(good(), loc);
        std::fs::write(&path, m.encode_to_vec()).unwrap();
        let e = import_file(&path).unwrap_err().to_string();
        assert!(e.contains("c1.weight") && e.contains(want), "{loc}: {e}");
    }
}

/// `good()` with its `GlobalAveragePool` node `gap` replaced by `ReduceMean`.
fn with_reduce_mean(
    axes_attr: Option<&[i64]>,
    axes_input: Option<Vec<i64>>,
    keepdims: i64,
    opset: i64,
) -> ModelProto {
    let mut m = good();
    m.opset_import = vec![OperatorSetIdProto {
        domain: Some(String::new()),
        version: Some(opset),
    }];
    let g = m.graph.as_mut().unwrap();
    let at = g
        .node
        .iter()
        .position(|n| n.name.as_deref() == Some("gap"))
        .unwrap();
    let mut attrs = vec![int("keepdims", keepdims)];
    if let Some(a) = axes_attr {
        attrs.push(ints("axes", a));
    }
    let mut ins = vec!["p"];
    if let Some(a) = axes_input {
        g.initializer.push(crate::proto::TensorProto {
            name: Some("axes".into()),
            dims: vec![a.len() as i64],
            data_type: Some(crate::proto::tensor_proto::DataType::Int64 as i32),
            int64_data: a,
            ..Default::default()
        });
        ins.push("axes");
    }
    g.node[at] = node("gap", "ReduceMean", &ins, &["gp"], attrs);
    m
}

#[test]
fn a_spatial_reduce_mean_is_a_global_average_pool() {
    let want = plain();
    for (m, what) in [
        (
            with_reduce_mean(Some(&[2, 3]), None, 1, 17),
            "axes attribute, keepdims",
        ),
        (
            with_reduce_mean(None, Some(vec![-1, -2]), 0, 18),
            "axes input (opset 18), no keepdims",
        ),
    ] {
        let imp = import_bytes(&m.encode_to_vec(), "tiny.onnx").unwrap();
        assert_eq!(
            (&imp.spec, &imp.tensors),
            (&want.spec, &want.tensors),
            "{what}"
        );
    }
    let e = import_bytes(
        &with_reduce_mean(Some(&[1]), None, 1, 17).encode_to_vec(),
        "t.onnx",
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::Unsupported { .. }) && e.to_string().contains("axes [1]"),
        "{e}"
    );
}

#[test]
fn a_final_softmax_is_dropped_and_an_inner_one_refused() {
    let want = plain();
    for op in ["Softmax", "LogSoftmax"] {
        let mut m = good();
        let g = m.graph.as_mut().unwrap();
        g.node.push(node(
            "sm",
            op,
            &["logits"],
            &["probs"],
            vec![int("axis", 1)],
        ));
        g.output[0].name = Some("probs".into());
        let imp = import_bytes(&m.encode_to_vec(), "tiny.onnx").unwrap();
        assert_eq!(
            (&imp.spec, &imp.tensors),
            (&want.spec, &want.tensors),
            "{op}"
        );
    }
    // Between the ReLU and the residual add, a softmax changes what the network computes.
    let mut m = good();
    let g = m.graph.as_mut().unwrap();
    let add = g
        .node
        .iter()
        .position(|n| n.name.as_deref() == Some("add"))
        .unwrap();
    g.node[add].input[0] = "soft".into();
    g.node
        .push(node("sm", "Softmax", &["r1"], &["soft"], vec![]));
    let e = import_bytes(&m.encode_to_vec(), "tiny.onnx").unwrap_err();
    assert!(
        matches!(e, Error::Unsupported { .. }) && e.to_string().contains("inside the network"),
        "{e}"
    );
}
