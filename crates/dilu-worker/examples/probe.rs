//! Loads a model, prints how the worker would serve it, and times batches of 1, 2, 4 and 8 single-item
//! requests: `cargo run --release -p dilu-worker --example probe -- MODEL.onnx [D0,D1,...]`.

use std::time::Instant;

use dilu_worker::model::Sample;
use dilu_worker::{Datatype, TensorData};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: probe MODEL.onnx [INPUT_SHAPE]")?;
    let mut config = dilu_worker::WorkerConfig::new("probe", path);
    if let Some(shape) = args.next() {
        config.input_shape = Some(shape.split(',').map(str::parse).collect::<Result<_, _>>()?);
    }
    let start = Instant::now();
    let model = dilu_worker::Model::load(&config)?;
    println!("loaded in {:.2} s", start.elapsed().as_secs_f64());
    println!("inputs: {}", serde_json::to_string(model.inputs())?);
    println!("outputs: {}", serde_json::to_string(model.outputs())?);
    println!(
        "batchable: {}, symbolic batch: {}, concatenates: {} ({:?})",
        model.is_batchable(),
        model.has_symbolic_batch(),
        model.concatenates(),
        model.unbatched_reason()
    );
    let inputs = model
        .inputs()
        .iter()
        .enumerate()
        .map(|(ix, spec)| match spec.datatype {
            Datatype::Fp32 => Ok(TensorData::Fp32(vec![0.5; model.item_len(ix)])),
            other => Err(format!("probe feeds FP32 only, not {}", other.as_str())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sample = Sample { batch: 1, inputs };
    let sizes: &[usize] = if model.is_batchable() {
        &[1, 2, 4, 8]
    } else {
        &[1, 4]
    };
    for &k in sizes {
        let samples: Vec<&Sample> = (0..k).map(|_| &sample).collect();
        model.run_batch(&samples)?;
        let rounds = 10;
        let start = Instant::now();
        for _ in 0..rounds {
            model.run_batch(&samples)?;
        }
        let per_batch = start.elapsed().as_secs_f64() / f64::from(rounds);
        println!(
            "batch of {k}: {:.2} ms per batch, {:.2} ms per request",
            per_batch * 1e3,
            per_batch * 1e3 / k as f64
        );
    }
    Ok(())
}
