//! Batched ONNX inference speed: `onnx_bench MODEL_DIR` (a folder written by
//! `scripts/onnx_bench.py`: manifest, model.onnx and rows.f32). Times
//! [`OnnxModel::score_batch`] with one thread at several batch sizes (median of five passes)
//! and prints `rust <batch> <rows/s>` lines.

use std::path::PathBuf;
use std::time::Instant;

use gatewatch_models::{Manifest, OnnxModel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: onnx_bench MODEL_DIR")?,
    );
    let manifest = Manifest::load(&dir)?;
    let mut model = OnnxModel::from_manifest(manifest, &dir, None)?;
    let width = model.n_inputs();
    let bytes = std::fs::read(dir.join("rows.f32"))?;
    let rows: Vec<f64> = bytes
        .chunks_exact(4)
        .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect();
    let total = rows.len() / width;
    let mut out = Vec::with_capacity(total);
    for b in [1usize, 16, 64, 256, 1024, 4096] {
        let n = total.min((b * 64).max(16384));
        let mut times = Vec::new();
        for _ in 0..5 {
            out.clear();
            let t = Instant::now();
            for chunk in rows[..n * width].chunks(b * width) {
                model.score_batch(chunk, width, &mut out)?;
            }
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        println!("rust {b} {:.0}", n as f64 / times[2]);
    }
    Ok(())
}
