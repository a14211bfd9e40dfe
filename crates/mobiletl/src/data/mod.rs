//! Datasets for transfer learning.

pub mod cifar;
pub mod matfile;
pub mod source;

pub use cifar::{CifarError, CifarSet, CifarVariant, Split, load_cifar};
pub use source::{
    Batch, DataError, ImageList, ImageSource, Pipeline, SyntheticShapes, assemble_batch,
};
