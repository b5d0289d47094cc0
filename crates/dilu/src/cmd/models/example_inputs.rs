//! Example inference requests for the example models, so that a worker can be checked against real weights
//! from the command line (`dilu models inputs`, `dilu models fetch`).
//!
//! - `text-upright.json` and `text-flipped.json`: a line of text ([`TEXT`]) rendered black on white with
//!   DejaVu Sans (the TTF bundled in `assets/`, through `ab_glyph`), cropped to its ink with a margin like a
//!   text detector's box, and preprocessed as PaddleOCR prepares a text-direction classifier's input (resize
//!   to height 48 keeping the aspect ratio with the width capped at 192, RGB, `v / 255`, `(v − 0.5) / 0.5`,
//!   right-padded with 0 to width 192): `x` of shape [1,3,48,192]. The flipped request is the same image
//!   rotated by 180°. PaddleOCR's classifier (`ch_ppocr_mobile_v2.0_cls_infer.onnx`, labels `["0", "180"]`)
//!   answers class 0 for the first and class 1 for the second.
//! - `squeezenet.json`: a deterministic smooth colour pattern as `data_0` of shape [1,3,224,224] for the
//!   SqueezeNet example (whose weights are synthetic: the answer only shows the model runs).

use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// DejaVu Sans, the font the plots use too.
static DEJAVU_SANS: &[u8] = include_bytes!("../../../../../assets/DejaVuSans.ttf");

/// The line of text the text-direction requests show.
pub const TEXT: &str = "Serverless deep learning";

/// The height of the rendered glyphs' em square, in pixels (before the classifier's resize).
pub const FONT_PX: f32 = 40.0;

/// The white margin around the text's ink, as a fraction of the ink's height.
pub const MARGIN: f32 = 0.15;

/// The classifier's input height.
pub const CLS_HEIGHT: usize = 48;

/// The classifier's input width (narrower images are right-padded, wider ones squeezed).
pub const CLS_WIDTH: usize = 192;

/// SqueezeNet's input side.
pub const SQUEEZENET_SIDE: usize = 224;

/// A grayscale image: `width × height` values from 0 (black) to 255 (white), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Gray {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `pixels[y * width + x]`.
    pub pixels: Vec<f32>,
}

impl Gray {
    fn at(&self, x: usize, y: usize) -> f32 {
        self.pixels[y * self.width + x]
    }
}

/// Renders `text` black on white at `px` pixels per em, cropped to its ink plus a margin of `margin` times
/// the ink's height on every side.
pub fn render_text(text: &str, px: f32, margin: f32) -> Result<Gray> {
    let font = FontRef::try_from_slice(DEJAVU_SANS).context("the bundled DejaVuSans.ttf")?;
    let scale = PxScale::from(px);
    let scaled = font.as_scaled(scale);
    let mut caret = 0.0f32;
    let mut previous = None;
    let mut glyphs = Vec::new();
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(previous) = previous {
            caret += scaled.kern(previous, id);
        }
        glyphs.push(id.with_scale_and_position(scale, point(caret, scaled.ascent())));
        caret += scaled.h_advance(id);
        previous = Some(id);
    }
    let width = caret.ceil().max(1.0) as usize + 2;
    let height = (scaled.ascent() - scaled.descent()).ceil().max(1.0) as usize + 2;
    let mut canvas = Gray {
        width,
        height,
        pixels: vec![255.0; width * height],
    };
    for glyph in glyphs {
        let Some(outline) = font.outline_glyph(glyph) else {
            continue; // a space
        };
        let bounds = outline.px_bounds();
        outline.draw(|x, y, coverage| {
            let px = bounds.min.x as i64 + i64::from(x);
            let py = bounds.min.y as i64 + i64::from(y);
            if (0..width as i64).contains(&px) && (0..height as i64).contains(&py) {
                let slot = &mut canvas.pixels[py as usize * width + px as usize];
                *slot = slot.min(255.0 * (1.0 - coverage.clamp(0.0, 1.0)));
            }
        });
    }
    crop_to_ink(&canvas, margin)
}

/// The part of `image` with ink (pixels darker than 250), with a white margin of `margin` × the ink's
/// height on every side.
fn crop_to_ink(image: &Gray, margin: f32) -> Result<Gray> {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..image.height {
        for x in 0..image.width {
            if image.at(x, y) < 250.0 {
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x + 1);
                y1 = y1.max(y + 1);
            }
        }
    }
    if x0 >= x1 || y0 >= y1 {
        bail!("the text left no ink to crop to");
    }
    let pad = ((y1 - y0) as f32 * margin).round() as usize;
    let width = x1 - x0 + 2 * pad;
    let height = y1 - y0 + 2 * pad;
    let mut out = Gray {
        width,
        height,
        pixels: vec![255.0; width * height],
    };
    for y in y0..y1 {
        let row = &image.pixels[y * image.width + x0..y * image.width + x1];
        let start = (y - y0 + pad) * width + pad;
        out.pixels[start..start + row.len()].copy_from_slice(row);
    }
    Ok(out)
}

/// `image` rotated by 180°.
pub fn rotate_180(image: &Gray) -> Gray {
    let mut pixels = image.pixels.clone();
    pixels.reverse();
    Gray {
        width: image.width,
        height: image.height,
        pixels,
    }
}

/// Resampling weights from `from` samples to `to`: for each output sample, `(first input, weights)`. A
/// triangle (linear) filter widened by the downscale factor, so that shrinking averages instead of aliasing
/// (what PIL's bilinear resize does).
fn weights(from: usize, to: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = from as f32 / to as f32;
    let support = scale.max(1.0);
    (0..to)
        .map(|i| {
            let centre = (i as f32 + 0.5) * scale;
            let first = (centre - support).floor().max(0.0) as usize;
            let last = ((centre + support).ceil() as usize).min(from);
            let mut w: Vec<f32> = (first..last)
                .map(|j| (1.0 - ((j as f32 + 0.5 - centre) / support).abs()).max(0.0))
                .collect();
            let sum: f32 = w.iter().sum();
            if sum > 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            }
            (first, w)
        })
        .collect()
}

/// `image` resized to `width × height` (separable, filtered as [`weights`] describes).
pub fn resize(image: &Gray, width: usize, height: usize) -> Gray {
    let horizontal = weights(image.width, width);
    let mut rows = vec![0.0f32; width * image.height];
    for y in 0..image.height {
        for (x, (first, w)) in horizontal.iter().enumerate() {
            rows[y * width + x] = w
                .iter()
                .enumerate()
                .map(|(k, wk)| wk * image.at(first + k, y))
                .sum();
        }
    }
    let vertical = weights(image.height, height);
    let mut pixels = vec![0.0f32; width * height];
    for (y, (first, w)) in vertical.iter().enumerate() {
        for x in 0..width {
            pixels[y * width + x] = w
                .iter()
                .enumerate()
                .map(|(k, wk)| wk * rows[(first + k) * width + x])
                .sum();
        }
    }
    Gray {
        width,
        height,
        pixels,
    }
}

/// PaddleOCR's text-direction classifier input for a grayscale text crop: `[3, 48, 192]` channel-major,
/// each channel `(v / 255 − 0.5) / 0.5` over the resized image and 0 in the right padding.
pub fn ppocr_cls_tensor(image: &Gray) -> Vec<f32> {
    let ratio = image.width as f32 / image.height.max(1) as f32;
    let resized_width = ((CLS_HEIGHT as f32 * ratio).ceil() as usize).clamp(1, CLS_WIDTH);
    let resized = resize(image, resized_width, CLS_HEIGHT);
    let mut plane = vec![0.0f32; CLS_HEIGHT * CLS_WIDTH];
    for y in 0..CLS_HEIGHT {
        for x in 0..resized_width {
            plane[y * CLS_WIDTH + x] = (resized.at(x, y).clamp(0.0, 255.0) / 255.0 - 0.5) / 0.5;
        }
    }
    // Gray text: the three colour planes are the same.
    plane.repeat(3)
}

/// A deterministic smooth colour pattern, `[3, 224, 224]` channel-major, ImageNet-normalised values.
pub fn squeezenet_tensor() -> Vec<f32> {
    let side = SQUEEZENET_SIDE;
    let mean = [0.485f32, 0.456, 0.406];
    let std = [0.229f32, 0.224, 0.225];
    let mut data = Vec::with_capacity(3 * side * side);
    for c in 0..3 {
        for y in 0..side {
            for x in 0..side {
                let (fx, fy) = (x as f32 / side as f32, y as f32 / side as f32);
                let phase = c as f32 * 2.1;
                let v = 0.5
                    + 0.25 * (std::f32::consts::TAU * (2.0 * fx + fy) + phase).sin()
                    + 0.2 * (std::f32::consts::TAU * 3.0 * fy * fx - phase).cos();
                data.push((v.clamp(0.0, 1.0) - mean[c]) / std[c]);
            }
        }
    }
    data
}

/// An Open Inference Protocol v2 request with one FP32 input.
pub fn request(id: &str, input: &str, shape: &[usize], data: &[f32]) -> Value {
    json!({
        "id": id,
        "inputs": [{"name": input, "shape": shape, "datatype": "FP32", "data": data}],
    })
}

/// The example requests by file name.
pub fn requests() -> Result<Vec<(&'static str, Value)>> {
    let upright = render_text(TEXT, FONT_PX, MARGIN)?;
    let flipped = rotate_180(&upright);
    let cls_shape = [1, 3, CLS_HEIGHT, CLS_WIDTH];
    let side = SQUEEZENET_SIDE;
    Ok(vec![
        (
            "text-upright.json",
            request("text-upright", "x", &cls_shape, &ppocr_cls_tensor(&upright)),
        ),
        (
            "text-flipped.json",
            request("text-flipped", "x", &cls_shape, &ppocr_cls_tensor(&flipped)),
        ),
        (
            "squeezenet.json",
            request(
                "squeezenet",
                "data_0",
                &[1, 3, side, side],
                &squeezenet_tensor(),
            ),
        ),
    ])
}

/// Writes every example request into `dir` (created if needed); returns the files written.
pub fn write_all(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (name, body) in requests()? {
        let path = dir.join(name);
        let partial = dir.join(format!(".{name}.part"));
        let text = serde_json::to_string(&body).context("encoding a request")?;
        std::fs::write(&partial, text).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path)
            .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_renders_dark_on_light_and_fills_the_classifier_input() {
        let image = render_text(TEXT, FONT_PX, MARGIN).unwrap();
        assert!(
            image.width > 5 * image.height,
            "{}x{}",
            image.width,
            image.height
        );
        let dark = image.pixels.iter().filter(|&&v| v < 128.0).count();
        let fraction = dark as f64 / image.pixels.len() as f64;
        assert!((0.05..0.5).contains(&fraction), "dark fraction {fraction}");
        let tensor = ppocr_cls_tensor(&image);
        assert_eq!(tensor.len(), 3 * CLS_HEIGHT * CLS_WIDTH);
        assert!(tensor.iter().all(|v| (-1.0..=1.0).contains(v)));
        // A long line is squeezed to the full width: the last column is background (white = 1), not padding.
        assert!(
            (tensor[CLS_WIDTH - 1] - 1.0).abs() < 0.05,
            "{}",
            tensor[CLS_WIDTH - 1]
        );
        let flipped = ppocr_cls_tensor(&rotate_180(&image));
        assert_ne!(tensor, flipped);
    }

    #[test]
    fn resize_preserves_constant_images_and_averages_when_shrinking() {
        let flat = Gray {
            width: 10,
            height: 4,
            pixels: vec![100.0; 40],
        };
        let small = resize(&flat, 3, 2);
        assert!(small.pixels.iter().all(|v| (v - 100.0).abs() < 1e-3));
        let stripes = Gray {
            width: 8,
            height: 1,
            pixels: (0..8)
                .map(|i| if i % 2 == 0 { 0.0 } else { 255.0 })
                .collect(),
        };
        let half = resize(&stripes, 2, 1);
        assert!(
            half.pixels.iter().all(|v| (v - 127.5).abs() < 40.0),
            "{:?}",
            half.pixels
        );
    }

    #[test]
    fn rotating_twice_is_the_identity() {
        let image = render_text("ab", 20.0, 0.1).unwrap();
        assert_eq!(rotate_180(&rotate_180(&image)), image);
        assert_ne!(rotate_180(&image), image);
    }

    #[test]
    fn requests_are_v2_bodies_with_the_right_sizes() {
        for (name, body) in requests().unwrap() {
            let input = &body["inputs"][0];
            let shape: Vec<usize> = serde_json::from_value(input["shape"].clone()).unwrap();
            let n: usize = shape.iter().product();
            assert_eq!(input["data"].as_array().unwrap().len(), n, "{name}");
            assert_eq!(input["datatype"], "FP32");
        }
    }
}
