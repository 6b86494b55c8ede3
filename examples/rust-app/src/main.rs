//! Calls the model compiled by build.rs through its generated safe wrapper.

// The bindings cover the whole ABI; this app uses part of it.
#[allow(dead_code)]
mod model {
    include!(concat!(env!("OUT_DIR"), "/conv_relu.rs"));
}

fn main() {
    let x: Vec<f32> = (0..model::INPUT_0_LEN)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let mut y = vec![0f32; model::OUTPUT_0_LEN];
    let mut workspace = vec![0u8; model::WORKSPACE_SIZE + 64];
    // The workspace must be 64-byte aligned.
    let off = workspace.as_ptr().align_offset(64);
    model::run(&x, &mut y, &mut workspace[off..]).expect("the model runs");
    let sum: f64 = y.iter().map(|&v| v as f64).sum();
    let max = y.iter().copied().fold(f32::MIN, f32::max);
    // The same line as the C app prints for the same input.
    println!("{} values, sum {sum:.6}, max {:.6}", y.len(), max as f64);
}
