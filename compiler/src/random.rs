//! A small fixed-seed generator (SplitMix64) for reproducible inputs and
//! test weights. Its output is fixed by the algorithm, not by a crate
//! version, so generated models and inputs never change under us.

use crate::ir::{DType, Tensor};

pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }

    /// A tensor of `dtype`: floats uniform in [-1, 1), integers and bools
    /// uniform in {0, 1} (valid as indices, token ids and masks).
    pub fn tensor(&mut self, dtype: DType, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let vals: Vec<f64> = if dtype.is_float() {
            (0..n).map(|_| self.uniform(-1.0, 1.0)).collect()
        } else {
            (0..n).map(|_| (self.next_u64() & 1) as f64).collect()
        };
        Tensor::from_f64s(dtype, shape, &vals).expect("length matches shape")
    }
}
