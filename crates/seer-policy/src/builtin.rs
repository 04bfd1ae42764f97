//! Built-in architectures: CIFAR-style ResNet-20/56 and VGG-small, LeNet-5, and the ImageNet
//! ResNet-18, ResNet-50 and MobileNetV2 (width 1.0), with PyTorch-style layer names.

use crate::error::{Error, Result};
use crate::spec::{ConvOpts, InputShape, LayerKind, NetworkSpec, SpecBuilder};

const NAMES: &[&str] = &[
    "resnet20",
    "resnet56",
    "vgg-small",
    "lenet5",
    "resnet18",
    "resnet50",
    "mobilenetv2",
];

/// Names accepted by [`builtin`] (matching ignores case, `-` and `_`).
pub fn builtin_names() -> &'static [&'static str] {
    NAMES
}

fn norm(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// A built-in network.
///
/// `input` defaults to 32x32x3 (CIFAR nets), 28x28x1 (`lenet5`) or 224x224x3 (ImageNet nets);
/// `num_classes` to 10 or 1000. Any input size works as long as every spatial size stays ≥ 1.
/// Err(UnknownArch) listing the built-in names; Err(InvalidSpec) when the input is too small.
///
/// CIFAR ResNets use the parameter-free option-A shortcut ([`LayerKind::PadShortcut`]);
/// ImageNet ResNets use 1×1 conv + BN downsample shortcuts; ResNet-50 strides in its 3×3
/// conv (torchvision v1.5).
pub fn builtin(
    arch: &str,
    input: Option<InputShape>,
    num_classes: Option<usize>,
) -> Result<NetworkSpec> {
    let key = norm(arch);
    let Some(&name) = NAMES
        .iter()
        .find(|n| norm(n) == key || alias(&key) == Some(**n))
    else {
        return Err(Error::UnknownArch {
            name: arch.to_string(),
            known: NAMES.join(", "),
        });
    };
    let imagenet = matches!(name, "resnet18" | "resnet50" | "mobilenetv2");
    let input = input.unwrap_or(match name {
        "lenet5" => InputShape::new(28, 28, 1),
        _ if imagenet => InputShape::new(224, 224, 3),
        _ => InputShape::new(32, 32, 3),
    });
    if input.h == 0 || input.w == 0 || input.c == 0 {
        return Err(Error::InvalidInputShape {
            value: input.to_string(),
        });
    }
    let classes = num_classes.unwrap_or(if imagenet { 1000 } else { 10 });
    let mut b = SpecBuilder::new(name, input, classes);
    match name {
        "resnet20" => cifar_resnet(&mut b, 3)?,
        "resnet56" => cifar_resnet(&mut b, 9)?,
        "vgg-small" => vgg_small(&mut b)?,
        "lenet5" => lenet5(&mut b)?,
        "resnet18" => imagenet_resnet(&mut b, &[2, 2, 2, 2], false)?,
        "resnet50" => imagenet_resnet(&mut b, &[3, 4, 6, 3], true)?,
        "mobilenetv2" => mobilenet_v2(&mut b)?,
        _ => unreachable!("every name in NAMES is built"),
    }
    b.finish()
}

fn alias(key: &str) -> Option<&'static str> {
    match key {
        "vggsmall" | "vgg" => Some("vgg-small"),
        "lenet" => Some("lenet5"),
        "mobilenet" | "mbv2" => Some("mobilenetv2"),
        _ => None,
    }
}

/// A 3×3 conv with padding 1 (same size at stride 1), `out` channels.
fn conv3x3(out: usize, stride: usize) -> ConvOpts {
    ConvOpts::new(out, 3).stride(stride).pad(1)
}

fn conv_bn(
    b: &mut SpecBuilder,
    conv: &str,
    bn: &str,
    x: Option<usize>,
    o: ConvOpts,
) -> Result<usize> {
    let c = b.conv(conv, x, o)?;
    b.op(bn, Some(c), LayerKind::BatchNorm)
}

/// Where a block layer sits: `(prefix, index)`, as in torchvision's names `{prefix}conv{index}`,
/// `{prefix}bn{index}`, `{prefix}relu{index}` (`layer1.0.` and `2` give `layer1.0.conv2`).
type At<'a> = (&'a str, &'a str);

/// [`conv_bn_n`] followed by a ReLU `{p}relu{idx}`.
fn conv_bn_relu(b: &mut SpecBuilder, at: At, x: Option<usize>, o: ConvOpts) -> Result<usize> {
    let y = conv_bn_n(b, at, x, o)?;
    let (p, idx) = at;
    b.op(&format!("{p}relu{idx}"), Some(y), LayerKind::Relu)
}

/// [`conv_bn`] named `{p}conv{idx}`, `{p}bn{idx}` (torchvision's block layer names).
fn conv_bn_n(b: &mut SpecBuilder, (p, idx): At, x: Option<usize>, o: ConvOpts) -> Result<usize> {
    conv_bn(b, &format!("{p}conv{idx}"), &format!("{p}bn{idx}"), x, o)
}

/// CIFAR ResNet-(6n+2): 3 stages of n basic blocks (16, 32, 64 channels), option-A shortcuts.
fn cifar_resnet(b: &mut SpecBuilder, n: usize) -> Result<()> {
    let mut x = conv_bn_relu(b, ("", "1"), None, conv3x3(16, 1))?;
    for (stage, planes) in [16usize, 32, 64].into_iter().enumerate() {
        for blk in 0..n {
            let stride = if stage > 0 && blk == 0 { 2 } else { 1 };
            let p = format!("layer{}.{}.", stage + 1, blk);
            let y = conv_bn_relu(b, (&p, "1"), Some(x), conv3x3(planes, stride))?;
            let y = conv_bn_n(b, (&p, "2"), Some(y), conv3x3(planes, 1))?;
            let short = if stride != 1 || b.channels(Some(x)) != planes {
                b.op(
                    &format!("{p}shortcut"),
                    Some(x),
                    LayerKind::PadShortcut {
                        stride: [stride, stride],
                        out_ch: planes,
                    },
                )?
            } else {
                x
            };
            x = add_relu(b, &p, "relu2", y, short)?;
        }
    }
    pool_classifier(b, x, "fc")
}

/// The residual join of a block: `{p}add` of `y` and `short`, then the ReLU `{p}{relu}`.
fn add_relu(b: &mut SpecBuilder, p: &str, relu: &str, y: usize, short: usize) -> Result<usize> {
    let s = b.add(&format!("{p}add"), &[y, short])?;
    b.op(&format!("{p}{relu}"), Some(s), LayerKind::Relu)
}

/// Global average pooling (`avgpool`) of `x` and the linear classifier `fc` (with bias).
fn pool_classifier(b: &mut SpecBuilder, x: usize, fc: &str) -> Result<()> {
    let g = b.op("avgpool", Some(x), LayerKind::GlobalAvgPool)?;
    let k = b.num_classes();
    b.linear(fc, Some(g), k, true)?;
    Ok(())
}

/// VGG-small (LQ-Nets): 2×128, pool, 2×256, pool, 2×512, pool, linear classifier.
fn vgg_small(b: &mut SpecBuilder) -> Result<()> {
    let mut x = None;
    let mut i = 0;
    for (stage, ch) in [128usize, 256, 512].into_iter().enumerate() {
        for _ in 0..2 {
            let c = b.conv(&format!("features.conv{i}"), x, conv3x3(ch, 1))?;
            let n = b.op(&format!("features.bn{i}"), Some(c), LayerKind::BatchNorm)?;
            x = Some(b.op(&format!("features.relu{i}"), Some(n), LayerKind::Relu)?);
            i += 1;
        }
        x = Some(b.op(&format!("features.pool{stage}"), x, maxpool2())?);
    }
    let f = b.op("flatten", x, LayerKind::Flatten)?;
    let k = b.num_classes();
    b.linear("classifier", Some(f), k, true)?;
    Ok(())
}

/// LeNet-5 style: conv 5×5 (6, padding 2), max-pool, conv 5×5 (16), max-pool, 120, 84, classes.
fn lenet5(b: &mut SpecBuilder) -> Result<()> {
    let c = b.conv("conv1", None, ConvOpts::new(6, 5).pad(2).bias(true))?;
    let r = b.op("relu1", Some(c), LayerKind::Relu)?;
    let p = b.op("pool1", Some(r), maxpool2())?;
    let c = b.conv("conv2", Some(p), ConvOpts::new(16, 5).bias(true))?;
    let r = b.op("relu2", Some(c), LayerKind::Relu)?;
    let p = b.op("pool2", Some(r), maxpool2())?;
    let f = b.op("flatten", Some(p), LayerKind::Flatten)?;
    let l = b.linear("fc1", Some(f), 120, true)?;
    let r = b.op("relu3", Some(l), LayerKind::Relu)?;
    let l = b.linear("fc2", Some(r), 84, true)?;
    let r = b.op("relu4", Some(l), LayerKind::Relu)?;
    let k = b.num_classes();
    b.linear("fc3", Some(r), k, true)?;
    Ok(())
}

fn maxpool2() -> LayerKind {
    LayerKind::MaxPool {
        kernel: [2, 2],
        stride: [2, 2],
        padding: [0, 0],
        padding_end: None,
    }
}

/// torchvision ResNet-18 (basic blocks) / ResNet-50 (bottlenecks, stride in the 3×3 conv).
fn imagenet_resnet(b: &mut SpecBuilder, blocks: &[usize], bottleneck: bool) -> Result<()> {
    let x = conv_bn_relu(b, ("", "1"), None, ConvOpts::new(64, 7).stride(2).pad(3))?;
    let mut x = b.op(
        "maxpool",
        Some(x),
        LayerKind::MaxPool {
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
            padding_end: None,
        },
    )?;
    let expansion = if bottleneck { 4 } else { 1 };
    for (stage, &n) in blocks.iter().enumerate() {
        let planes = 64 << stage;
        for blk in 0..n {
            let stride = if stage > 0 && blk == 0 { 2 } else { 1 };
            let p = format!("layer{}.{}.", stage + 1, blk);
            let out = planes * expansion;
            let y = if bottleneck {
                let y = conv_bn_relu(b, (&p, "1"), Some(x), ConvOpts::new(planes, 1))?;
                let y = conv_bn_relu(b, (&p, "2"), Some(y), conv3x3(planes, stride))?;
                conv_bn_n(b, (&p, "3"), Some(y), ConvOpts::new(out, 1))?
            } else {
                let y = conv_bn_relu(b, (&p, "1"), Some(x), conv3x3(planes, stride))?;
                conv_bn_n(b, (&p, "2"), Some(y), conv3x3(out, 1))?
            };
            let short = if stride != 1 || b.channels(Some(x)) != out {
                conv_bn(
                    b,
                    &format!("{p}downsample.0"),
                    &format!("{p}downsample.1"),
                    Some(x),
                    ConvOpts::new(out, 1).stride(stride),
                )?
            } else {
                x
            };
            x = add_relu(b, &p, "relu", y, short)?;
        }
    }
    pool_classifier(b, x, "fc")
}

/// torchvision MobileNetV2, width 1.0: inverted residuals (expand 1×1, depthwise 3×3,
/// project 1×1), residual add when stride 1 and channels match, last 1×1 conv to 1280.
fn mobilenet_v2(b: &mut SpecBuilder) -> Result<()> {
    let settings: [(usize, usize, usize, usize); 7] = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    let mut x = cbr6(b, "features.0", None, conv3x3(32, 2))?;
    let mut i = 1;
    for (t, c, n, s) in settings {
        for r in 0..n {
            let stride = if r == 0 { s } else { 1 };
            let inp = b.channels(Some(x));
            let hidden = inp * t;
            let p = format!("features.{i}.conv");
            let mut y = x;
            let mut j = 0;
            if t != 1 {
                y = cbr6(b, &format!("{p}.{j}"), Some(y), ConvOpts::new(hidden, 1))?;
                j += 1;
            }
            y = cbr6(
                b,
                &format!("{p}.{j}"),
                Some(y),
                ConvOpts::new(hidden, 3)
                    .stride(stride)
                    .pad(1)
                    .groups(hidden),
            )?;
            j += 1;
            y = conv_bn(
                b,
                &format!("{p}.{j}"),
                &format!("{p}.{}", j + 1),
                Some(y),
                ConvOpts::new(c, 1),
            )?;
            if stride == 1 && inp == c {
                y = b.add(&format!("features.{i}.add"), &[x, y])?;
            }
            x = y;
            i += 1;
        }
    }
    x = cbr6(b, &format!("features.{i}"), Some(x), ConvOpts::new(1280, 1))?;
    pool_classifier(b, x, "classifier.1")
}

/// Conv + BN + ReLU6 named `{p}.0`, `{p}.1`, `{p}.2` (torchvision's Conv2dNormActivation).
fn cbr6(b: &mut SpecBuilder, p: &str, x: Option<usize>, o: ConvOpts) -> Result<usize> {
    let y = conv_bn(b, &format!("{p}.0"), &format!("{p}.1"), x, o)?;
    b.op(&format!("{p}.2"), Some(y), LayerKind::Relu6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SearchSpace, SpaceConfig};

    fn w8a8_macs(arch: &str, input: Option<&str>) -> (u64, u64) {
        let spec = builtin(arch, input.map(|s| s.parse().unwrap()), None).unwrap();
        let space = SearchSpace::new(spec, SpaceConfig::default()).unwrap();
        let c = space.cost(&space.uniform(8, 8, 0.0).unwrap()).unwrap();
        (c.total_macs, c.total_bops)
    }

    #[test]
    fn reference_macs_method_md_section_2() {
        for (arch, input, macs) in [
            ("resnet18", None, 1_814_073_344u64),
            ("resnet50", None, 4_089_184_256),
            ("mobilenetv2", None, 300_774_272),
            ("resnet20", Some("32x32x3"), 40_551_040),
            // Hand-computed: 3.5M + 151M + 75.5M + 151M + 75.5M + 151M + 82k (0.61 GMACs).
            ("vgg-small", Some("32x32x3"), 607_600_640),
            // 6·25·28² + 16·6·25·10² + 400·120 + 120·84 + 84·10.
            ("lenet5", Some("28x28x1"), 416_520),
        ] {
            let (m, b) = w8a8_macs(arch, input);
            assert_eq!(m, macs, "{arch}");
            assert_eq!(b, 64 * macs, "{arch}");
        }
    }

    #[test]
    fn every_builtin_builds_at_default_and_small_inputs() {
        for name in builtin_names() {
            builtin(name, None, None).unwrap();
        }
        for name in ["resnet20", "resnet56", "vgg-small", "lenet5"] {
            builtin(name, Some(InputShape::new(28, 28, 1)), Some(10)).unwrap();
        }
        assert_eq!(builtin("ResNet_20", None, None).unwrap().name, "resnet20");
        assert!(matches!(
            builtin("resnet21", None, None),
            Err(Error::UnknownArch { .. })
        ));
        let e = builtin("lenet5", Some(InputShape::new(8, 8, 1)), None).unwrap_err();
        assert!(e.to_string().contains("lenet5: layer 'conv2'"), "{e}");
    }

    #[test]
    fn parameter_counts_match_pytorch() {
        // torchvision / akamaster counts of conv + linear weights (biases excluded).
        let count = |a: &str| builtin(a, None, None).unwrap().weight_count();
        // Totals minus BN (2 per channel) and the classifier bias.
        assert_eq!(count("resnet20"), 269_722 - 1_376 - 10);
        assert_eq!(count("resnet18"), 11_689_512 - 9_600 - 1_000);
    }
}
