//! Datasets for transfer learning.

pub mod cifar;

pub use cifar::{CifarError, CifarSet, CifarVariant, Split, load_cifar};
