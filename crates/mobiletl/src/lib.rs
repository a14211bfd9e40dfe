//! MobileNetV2/V3 on burn, with torchvision and timm weights, and the MobileTL
//! memory-efficient transfer-learning method (Chiang et al.).
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use mobiletl::mobilenet::{MobileNetArch, MobileNetConfig};
//!
//! let device = Device::flex();
//! let model = MobileNetConfig::new(MobileNetArch::V3Small)
//!     .with_num_classes(10)
//!     .init(&device);
//! let images = Tensor::<4>::random([1, 3, 64, 64], Distribution::Default, &device);
//! assert_eq!(model.forward(images).dims(), [1, 10]);
//! ```

pub mod checkpoint;
pub mod data;
pub mod heap;
pub mod imagenet;
pub mod method;
pub mod mobilenet;
pub mod preprocess;
pub mod tensor_file;
pub mod train;
