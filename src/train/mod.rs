//! The training loop shared by fine-tuning, distillation and quantisation-aware training, with
//! its optimisers, schedule and losses. Uses `model`, `data`, `eval`, `progress`.

pub mod budget;
pub mod distill;
pub mod fit;
pub mod loss;
pub mod optim;
pub mod student;

pub use budget::{Epochs, LearningRate};
pub use fit::{fit, FitReport, TrainConfig};
pub use optim::OptimizerKind;
