//! The user JSON network format (`seernet-network`, version 1); see `docs/network-spec.md`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::policy::{parse_versioned, read_text};
use crate::spec::{InputShape, LayerKind, NetworkSpec, SpecBuilder};

/// Format tag of network files.
pub const NETWORK_FORMAT: &str = "seernet-network";
/// Version read by this build.
pub const NETWORK_VERSION: u64 = 1;

#[derive(Deserialize)]
#[serde(untagged)]
enum Size2 {
    One(usize),
    Two([usize; 2]),
}

impl Size2 {
    fn get(&self) -> [usize; 2] {
        match *self {
            Size2::One(v) => [v, v],
            Size2::Two(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Inputs {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserLayer {
    name: String,
    op: String,
    #[serde(alias = "inputs")]
    input: Option<Inputs>,
    in_ch: Option<usize>,
    out_ch: Option<usize>,
    kernel: Option<Size2>,
    stride: Option<Size2>,
    padding: Option<Size2>,
    padding_end: Option<Size2>,
    dilation: Option<Size2>,
    groups: Option<usize>,
    bias: Option<bool>,
    in_features: Option<usize>,
    out_features: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserNet {
    #[allow(dead_code)]
    format: String,
    #[allow(dead_code)]
    version: u64,
    name: String,
    input: InputShape,
    num_classes: usize,
    layers: Vec<UserLayer>,
}

impl NetworkSpec {
    /// Reads a network described in the user JSON format (`docs/network-spec.md`).
    /// Err(Io), Err(Json) (malformed, wrong format tag, unknown field),
    /// Err(UnsupportedVersion), or Err(InvalidSpec) naming the file and layer.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_json_str(&read_text(path)?, &path.display().to_string())
    }

    /// The spec in the user JSON format (pretty-printed), e.g. to start a custom network from
    /// a built-in one. [`from_json_str`](Self::from_json_str) reads it back to an equal spec.
    pub fn to_json(&self) -> String {
        use serde_json::{Value, json};
        let layers: Vec<Value> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut o = serde_json::Map::new();
                o.insert("name".into(), json!(l.name));
                let names: Vec<&str> = l
                    .inputs
                    .iter()
                    .map(|&p| self.layers[p].name.as_str())
                    .collect();
                match (l.inputs.as_slice(), &l.kind) {
                    (_, LayerKind::Add | LayerKind::Concat) => {
                        o.insert("inputs".into(), json!(names));
                    }
                    ([], _) if i > 0 => {
                        o.insert("input".into(), json!("image"));
                    }
                    ([p], _) if *p + 1 != i => {
                        o.insert("input".into(), json!(names[0]));
                    }
                    _ => {}
                }
                // `op` and the layer's own fields as serde writes them, less the input width, which is
                // inferred when the file is read back.
                o.extend(match serde_json::to_value(&l.kind) {
                    Ok(Value::Object(k)) => k,
                    _ => unreachable!("a layer kind serializes to an object"),
                });
                o.remove("in_ch");
                o.remove("in_features");
                Value::Object(o)
            })
            .collect();
        let mut s = String::from("{\n");
        s += &format!("  \"format\": \"{NETWORK_FORMAT}\",\n  \"version\": {NETWORK_VERSION},\n");
        s += &format!("  \"name\": {},\n", json!(self.name));
        s += &format!(
            "  \"input\": \"{}\",\n  \"num_classes\": {},\n  \"layers\": [\n",
            self.input, self.num_classes
        );
        let rows: Vec<String> = layers.iter().map(|l| format!("    {l}")).collect();
        s += &rows.join(",\n");
        s += "\n  ]\n}\n";
        s
    }

    /// Parses the user JSON format; `source` names the document in errors.
    pub fn from_json_str(s: &str, source: &str) -> Result<Self> {
        let net: UserNet = parse_versioned(s, NETWORK_FORMAT, NETWORK_VERSION, source)?;
        let mut b = SpecBuilder::new(&net.name, net.input, net.num_classes).with_source(source);
        for (i, l) in net.layers.iter().enumerate() {
            let lerr = |msg: String| Error::InvalidSpec {
                source_name: source.to_string(),
                layer: l.name.clone(),
                msg,
            };
            let lookup = |n: &str| -> Result<Option<usize>> {
                if n == "image" {
                    return Ok(None);
                }
                net.layers[..i]
                    .iter()
                    .position(|p| p.name == n)
                    .map(Some)
                    .ok_or_else(|| {
                        lerr(format!(
                            "input '{n}' is not an earlier layer (or \"image\")"
                        ))
                    })
            };
            let inputs: Vec<usize> = match &l.input {
                None => (i > 0).then(|| i - 1).into_iter().collect(),
                Some(Inputs::One(n)) => lookup(n)?.into_iter().collect(),
                Some(Inputs::Many(ns)) => {
                    let mut v = Vec::new();
                    for n in ns {
                        match lookup(n)? {
                            Some(p) => v.push(p),
                            None => {
                                return Err(lerr("an add cannot read the image directly".into()));
                            }
                        }
                    }
                    v
                }
            };
            let [c, _, _] = b.shape(inputs.first().copied());
            let need = |v: Option<usize>, what: &str| {
                v.ok_or_else(|| lerr(format!("{} needs \"{what}\"", l.op)))
            };
            let allowed: &[&str] = match l.op.as_str() {
                "conv2d" => &[
                    "in_ch",
                    "out_ch",
                    "kernel",
                    "stride",
                    "padding",
                    "padding_end",
                    "dilation",
                    "groups",
                    "bias",
                ],
                "linear" => &["in_features", "out_features", "bias"],
                "max_pool" | "avg_pool" => &["kernel", "stride", "padding", "padding_end"],
                "pad_shortcut" => &["out_ch", "stride"],
                _ => &[],
            };
            let present = [
                ("in_ch", l.in_ch.is_some()),
                ("out_ch", l.out_ch.is_some()),
                ("kernel", l.kernel.is_some()),
                ("stride", l.stride.is_some()),
                ("padding", l.padding.is_some()),
                ("padding_end", l.padding_end.is_some()),
                ("dilation", l.dilation.is_some()),
                ("groups", l.groups.is_some()),
                ("bias", l.bias.is_some()),
                ("in_features", l.in_features.is_some()),
                ("out_features", l.out_features.is_some()),
            ];
            if let Some((f, _)) = present.iter().find(|(f, p)| *p && !allowed.contains(f)) {
                return Err(lerr(format!("\"{f}\" does not apply to op '{}'", l.op)));
            }
            let s2 = |v: &Option<Size2>, d: [usize; 2]| v.as_ref().map_or(d, Size2::get);
            let kind = match l.op.as_str() {
                "conv2d" => {
                    let kernel = l
                        .kernel
                        .as_ref()
                        .map(Size2::get)
                        .ok_or_else(|| lerr("conv2d needs \"kernel\"".into()))?;
                    LayerKind::Conv2d {
                        in_ch: l.in_ch.unwrap_or(c),
                        out_ch: need(l.out_ch, "out_ch")?,
                        kernel,
                        stride: s2(&l.stride, [1, 1]),
                        padding: s2(&l.padding, [0, 0]),
                        dilation: s2(&l.dilation, [1, 1]),
                        groups: l.groups.unwrap_or(1),
                        bias: l.bias.unwrap_or(false),
                        padding_end: l.padding_end.as_ref().map(Size2::get),
                    }
                }
                "linear" => LayerKind::Linear {
                    in_features: l.in_features.unwrap_or(c),
                    out_features: need(l.out_features, "out_features")?,
                    bias: l.bias.unwrap_or(false),
                },
                "batch_norm" => LayerKind::BatchNorm,
                "relu" => LayerKind::Relu,
                "relu6" => LayerKind::Relu6,
                "add" => LayerKind::Add,
                "concat" => LayerKind::Concat,
                "flatten" => LayerKind::Flatten,
                "global_avg_pool" => LayerKind::GlobalAvgPool,
                "max_pool" | "avg_pool" => {
                    let kernel = l
                        .kernel
                        .as_ref()
                        .map(Size2::get)
                        .ok_or_else(|| lerr(format!("{} needs \"kernel\"", l.op)))?;
                    let stride = s2(&l.stride, kernel);
                    let padding = s2(&l.padding, [0, 0]);
                    let padding_end = l.padding_end.as_ref().map(Size2::get);
                    if l.op == "max_pool" {
                        LayerKind::MaxPool {
                            kernel,
                            stride,
                            padding,
                            padding_end,
                        }
                    } else {
                        LayerKind::AvgPool {
                            kernel,
                            stride,
                            padding,
                            padding_end,
                        }
                    }
                }
                "pad_shortcut" => LayerKind::PadShortcut {
                    stride: s2(&l.stride, [1, 1]),
                    out_ch: need(l.out_ch, "out_ch")?,
                },
                other => {
                    return Err(lerr(format!(
                        "unknown op '{other}' (known: conv2d, linear, batch_norm, relu, relu6, add, concat, flatten, max_pool, avg_pool, global_avg_pool, pad_shortcut)"
                    )));
                }
            };
            if !matches!(kind, LayerKind::Add | LayerKind::Concat) && inputs.len() > 1 {
                return Err(lerr(format!(
                    "{} takes one input, got {}",
                    l.op,
                    inputs.len()
                )));
            }
            b.push(&l.name, kind, &inputs)?;
        }
        b.finish()
    }
}
