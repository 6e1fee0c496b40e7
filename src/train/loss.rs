//! Training losses. Each states its formula; all are means over the batch.

use crate::error::Result;
use candle_core::{Tensor, D};
use candle_nn::ops::log_softmax;

/// Cross-entropy with integer labels: `mean_i (logsumexp(z_i) − z_i[y_i])`.
pub fn cross_entropy(logits: &Tensor, y: &[u32]) -> Result<Tensor> {
    let t = Tensor::from_vec(y.to_vec(), y.len(), logits.device())?;
    Ok(candle_nn::loss::cross_entropy(logits, &t)?)
}

/// Knowledge distillation (Hinton et al.):
/// `α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE(s, y)`, where
/// `KL(p‖q) = mean_i Σ_j p_ij (log p_ij − log q_ij)`.
pub fn distillation(student: &Tensor, teacher: &Tensor, y: &[u32], temperature: f64, alpha: f64) -> Result<Tensor> {
    let log_q = log_softmax(&(student / temperature)?, D::Minus1)?;
    let log_p = log_softmax(&(teacher.detach() / temperature)?, D::Minus1)?;
    let p = log_p.exp()?;
    let kl = (p * (log_p - log_q)?)?.sum(D::Minus1)?.mean_all()?;
    let kd = (kl * (alpha * temperature * temperature))?;
    if alpha >= 1.0 {
        return Ok(kd);
    }
    Ok((kd + (cross_entropy(student, y)? * (1.0 - alpha))?)?)
}

/// Hint (feature) loss: `mean((t − s)²)` over every element.
pub fn hint_mse(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    Ok((student - teacher.detach())?.sqr()?.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_matches_hand_computation() {
        // logits [1, 2, 3], label 2: log(e + e² + e³) − 3 = 0.40760596
        let z = Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu).unwrap();
        let l: f32 = cross_entropy(&z, &[2]).unwrap().to_scalar().unwrap();
        assert!((l - 0.407_605_96).abs() < 1e-6, "{l}");
    }

    #[test]
    fn distillation_matches_hand_computation() {
        // s = [0, 0], t = [ln 3, 0], T = 1, α = 1: p = [0.75, 0.25], q = [0.5, 0.5]
        // KL = 0.75 ln 1.5 + 0.25 ln 0.5 = 0.13081204
        let s = Tensor::new(&[[0f32, 0.]], &Device::Cpu).unwrap();
        let t = Tensor::new(&[[3f32.ln(), 0.]], &Device::Cpu).unwrap();
        let l: f32 = distillation(&s, &t, &[0], 1.0, 1.0).unwrap().to_scalar().unwrap();
        assert!((l - 0.130_812_04).abs() < 1e-6, "{l}");
        // T = 2 scales logits by 1/2 and the loss by T² = 4:
        // p = softmax([ln3/2, 0]) = [√3, 1]/(1+√3); KL = Σ p ln(p/0.5) = 0.03634078; ×4 = 0.14536313
        let l2: f32 = distillation(&s, &t, &[0], 2.0, 1.0).unwrap().to_scalar().unwrap();
        assert!((l2 - 0.145_363_13).abs() < 1e-6, "{l2}");
        // α = 0.5 mixes in half the CE: CE(s=[0,0], y=0) = ln 2
        let l3: f32 = distillation(&s, &t, &[0], 1.0, 0.5).unwrap().to_scalar().unwrap();
        assert!((l3 - (0.5 * 0.130_812_04 + 0.5 * 2f32.ln())).abs() < 1e-6, "{l3}");
    }

    #[test]
    fn hint_mse_matches_hand_computation() {
        let s = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
        let t = Tensor::new(&[[1f32, 0.], [0., 4.]], &Device::Cpu).unwrap();
        let l: f32 = hint_mse(&s, &t).unwrap().to_scalar().unwrap();
        assert!((l - (4.0 + 9.0) / 4.0).abs() < 1e-6);
    }
}
