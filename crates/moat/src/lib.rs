//! MOAT (Yang et al., *MOAT: Alternating Mobile Convolution and Attention Brings Strong
//! Vision Models*, ICLR 2023) on burn: all nine official variants, global and window
//! attention, and loading of the official TensorFlow checkpoints.
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use moat::{MoatConfig, MoatVariant};
//!
//! let device = Device::flex();
//! assert_eq!(MoatVariant::TinyMoat0.config().init(&device).cost(256, 256).params(), 3_355_348);
//! // A small custom MOAT with 4x4 / 2x2 attention windows on a 128x128 input.
//! let model = MoatConfig::custom([16, 16], [1, 1, 2, 1], [16, 32, 32, 64])
//!     .with_windows([4, 4], [2, 2])
//!     .with_num_classes(Some(10))
//!     .init(&device);
//! let x = Tensor::<4>::random([1, 3, 128, 128], Distribution::Default, &device);
//! assert_eq!(model.forward(x).dims(), [1, 10]);
//! ```

pub mod attention;
pub mod config;
pub mod data;
pub mod imagenet;
pub mod model;
pub mod preprocess;
pub mod tf_checkpoint;
pub mod train;
pub mod weights;

pub use attention::Attention;
pub use config::{AttentionWindow, InputNormalization, MoatConfig, MoatVariant};
pub use model::{
    ELEMENTWISE, Endpoints, Head, Moat, MoatBlock, Stage, StageBlock, Stem, multiply_adds,
};
pub use tf_checkpoint::{TfCheckpoint, WeightCopy, convert_checkpoint};
pub use train::{RunDir, RunState, TrainOptions, Trainer};
pub use weights::{WeightError, load_tf_weights, save_tf_weights, tf_variable_table};

/// The ImageNet-1k class names in logit order (the released checkpoints' 1000 classes).
pub fn imagenet_class_names() -> Vec<&'static str> {
    include_str!("imagenet_classes.txt").lines().collect()
}
