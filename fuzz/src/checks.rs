//! The property each fuzz target checks, one function per loader, shared with the hostile-input
//! tests (`tests/hostile`, which includes this file): every function parses `data` with one
//! loader, returns whether it loaded, and panics only when a property is broken (never on a
//! refused input).

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::{Device, Tensor};
use seer_int::IntModel;
use seer_label::store::parse_store;
use seer_label::{LabelRecord, LabelResult, Manifest};
use seer_nn::checkpoint as ckpt;
use seer_nn::data::{cifar, idx as idx_fmt};
use seer_policy::{NetworkSpec, Policy};
use seer_predictor::Predictor;

fn origin() -> &'static Path {
    Path::new("<fuzz input>")
}

/// A check: parses its input, returns whether it loaded, panics when a property is broken.
pub type Check = fn(&[u8]) -> bool;

/// Every target: its name (the cargo-fuzz target and seed folder) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("idx", idx),
    ("cifar10", cifar10),
    ("checkpoint", checkpoint),
    ("int_model", int_model),
    ("policy", policy),
    ("network_spec", network_spec),
    ("label_store", label_store),
    ("shard_manifest", shard_manifest),
    ("shard_result", shard_result),
    ("predictor", predictor),
];

/// IDX files (images and labels, plain or gzip): a parsed array re-encodes to the same
/// (decompressed) bytes and parses back equal.
pub fn idx(data: &[u8]) -> bool {
    let Ok(bytes) = idx_fmt::decode_maybe_gz(data.to_vec(), origin()) else {
        return false;
    };
    let Ok(a) = idx_fmt::parse_idx_u8(&bytes, origin()) else {
        return false;
    };
    let enc = idx_fmt::encode_idx_u8(&a.dims, &a.data).expect("a parsed IDX array re-encodes");
    assert_eq!(enc, bytes, "IDX encoding is not canonical");
    assert_eq!(idx_fmt::parse_idx_u8(&enc, origin()).expect("re-read"), a);
    true
}

/// CIFAR-10 binary batches: the records read are exactly the file's bytes (label, then
/// pixels), in order.
pub fn cifar10(data: &[u8]) -> bool {
    let Ok(entries) = cifar::parse_cifar10_batch(data, origin()) else {
        return false;
    };
    let mut back = Vec::with_capacity(data.len());
    for (pixels, label) in &entries {
        assert!(*label < 10 && pixels.len() == cifar::RECORD - 1);
        back.push(*label);
        back.extend_from_slice(pixels);
    }
    assert_eq!(back, data);
    true
}

/// Training checkpoints (safetensors + `seernet-model` metadata): a loaded model saved again
/// loads back with the same spec, compression state, policy, metadata and tensors (bitwise).
pub fn checkpoint(data: &[u8]) -> bool {
    let Ok((model, info)) = ckpt::load_bytes(data, origin(), None, &Device::Cpu) else {
        return false;
    };
    let bytes =
        ckpt::to_bytes(&model, info.dataset.as_deref(), &info.info).expect("a loaded model saves");
    let (back, info2) =
        ckpt::load_bytes(&bytes, origin(), None, &Device::Cpu).expect("a saved model loads");
    assert_eq!(back.spec(), model.spec());
    assert_eq!(back.comp(), model.comp());
    assert_eq!(back.is_slim(), model.is_slim());
    assert_eq!(back.policy(), model.policy());
    assert_eq!(info2, info);
    let bits = |t: &Tensor| -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    };
    let (a, b) = (model.named_tensors(), back.named_tensors());
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!(ta.dims(), tb.dims(), "{na}");
        assert_eq!(bits(ta), bits(tb), "{na}");
    }
    true
}

/// Exported integer models (`seernet-int-model`): a loaded model writes bytes that read back
/// equal and write the same bytes again.
pub fn int_model(data: &[u8]) -> bool {
    let Ok(m) = IntModel::from_bytes(data, "<fuzz input>") else {
        return false;
    };
    let bytes = m.to_bytes().expect("a loaded model serialises");
    let back = IntModel::from_bytes(&bytes, "<round trip>").expect("a written model loads");
    assert_eq!(back.meta(), m.meta());
    assert_eq!(back.weights(), m.weights());
    assert_eq!(back.to_bytes().expect("serialises"), bytes, "not canonical");
    true
}

/// Policy JSON (`seernet-policy`): a parsed policy written and read again is equal.
pub fn policy(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(p) = Policy::from_json_str(text, "<fuzz input>") else {
        return false;
    };
    let back = Policy::from_json_str(&p.to_json(), "<round trip>").expect("re-read");
    assert_eq!(back, p);
    true
}

/// Network-spec JSON (`seernet-network`): a parsed spec passes its own check, and written
/// and read again is equal.
pub fn network_spec(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(s) = NetworkSpec::from_json_str(text, "<fuzz input>") else {
        return false;
    };
    s.check().expect("a parsed spec passes its check");
    let back = NetworkSpec::from_json_str(&s.to_json(), "<round trip>").expect("re-read");
    assert_eq!(back, s);
    true
}

/// Label-store files (checksummed JSON lines). Every line after the first, given a correct
/// checksum (so that mutations reach the record parser behind it), parses to a record that
/// re-serialises to a line that parses back equal, or is refused. For a store that parses:
/// every record round-trips the same way; the store cut at three points after its header
/// (torn writes) still parses, to a prefix of its records; its record lines in reverse order
/// (the same labels appended in another order) parse to the same policies.
pub fn label_store(data: &[u8]) -> bool {
    for line in data.split(|&b| b == b'\n').skip(1) {
        if let Some(rec) = resigned(line).and_then(|l| LabelRecord::from_line(l.as_bytes()).ok()) {
            let again = rec.to_line();
            let back = LabelRecord::from_line(&again.as_bytes()[..again.len() - 1]);
            assert_eq!(back.as_ref(), Ok(&rec));
        }
    }
    let Ok(c) = parse_store(origin(), data) else {
        return false;
    };
    for r in &c.records {
        let line = r.to_line();
        let back = LabelRecord::from_line(&line.as_bytes()[..line.len() - 1]).expect("re-read");
        assert_eq!(&back, r);
    }
    let body = data
        .iter()
        .position(|&b| b == b'\n')
        .expect("a store has a header line")
        + 1;
    let span = data.len() - body;
    if span > 0 {
        let pick = data[data.len() - 1] as usize;
        for cut in [body + span / 2, data.len() - 1, body + pick % span] {
            let t = parse_store(origin(), &data[..cut]).expect("a torn store still parses");
            assert!(t.records.len() <= c.records.len());
            assert_eq!(t.records[..], c.records[..t.records.len()]);
        }
    }
    if c.report.dropped_tail.is_none() {
        let mut rev = data[..body].to_vec();
        for l in data[body..].split_inclusive(|&b| b == b'\n').rev() {
            rev.extend_from_slice(l);
        }
        let r = parse_store(origin(), &rev).expect("reordered records still parse");
        let set = |v: &[LabelRecord]| v.iter().map(|r| r.hash.clone()).collect::<BTreeSet<_>>();
        assert_eq!(set(&r.records), set(&c.records));
    }
    true
}

/// `line` (a JSON object, with or without a `"check"` field at its end) with the checksum
/// field a store writer would give its body, as [`LabelRecord::to_line`] does.
fn resigned(line: &[u8]) -> Option<String> {
    const TAIL: usize = ",\"check\":\"0000000000000000\"}".len();
    let s = std::str::from_utf8(line).ok()?;
    let body = match s.len().checked_sub(TAIL) {
        Some(at) if s.is_char_boundary(at) && s[at..].starts_with(",\"check\":\"") => {
            format!("{}}}", &s[..at])
        }
        _ => s.to_string(),
    };
    let open = body.strip_suffix('}')?;
    Some(format!(
        "{open},\"check\":\"{}\"}}",
        seer_label::short_digest(body.as_bytes())
    ))
}

/// Shard manifests (`seernet-manifest` JSON lines): a parsed manifest written and read
/// again is equal.
pub fn shard_manifest(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(m) = Manifest::from_jsonl(text, origin()) else {
        return false;
    };
    let back = Manifest::from_jsonl(&m.to_jsonl(), origin()).expect("re-read");
    assert_eq!(back, m);
    true
}

/// Per-policy shard result files (`seernet-label-result`): a parsed result written and read
/// again is equal.
pub fn shard_result(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(r) = LabelResult::from_json_str(text, origin()) else {
        return false;
    };
    let back = LabelResult::from_json_str(&r.to_json(), origin()).expect("re-read");
    assert_eq!(back, r);
    true
}

/// Predictor checkpoints (`seernet-predictor` safetensors): a loaded predictor written and
/// read again writes the same bytes (bitwise: NaN statistics compare equal).
pub fn predictor(data: &[u8]) -> bool {
    let Ok(p) = Predictor::from_bytes(data, origin()) else {
        return false;
    };
    let bytes = p.to_bytes().expect("a loaded predictor serialises");
    let back = Predictor::from_bytes(&bytes, origin()).expect("a written predictor loads");
    assert_eq!(back.to_bytes().expect("serialises"), bytes, "not canonical");
    true
}
