//! Activations whose backward pass keeps a 1-bit mask instead of the activation input
//! (MobileTL, section 3.2).
//!
//! | activation | forward | backward kept | dx |
//! |---|---|---|---|
//! | ReLU | `max(0, x)` | `1[x > 0]` | exact |
//! | ReLU6 | `min(max(0, x), 6)` | `1[0 < x < 6]` | exact (its derivative is binary) |
//! | Hard-Swish | `x * relu6(x + 3) / 6` | `1[x >= 0]` | MobileTL's step approximation of `(2x + 3) / 6` on `(-3, 3)` |
//!
//! The mask is packed eight elements per byte on the CPU backend; burn's own bool tensors
//! take a byte per element on flex (four on wgpu), and burn's built-in activations keep the
//! whole f32 input for their backward. The ops are a burn backend extension
//! ([`MaskedActivationOps`]) with a hand-written autodiff implementation whose
//! [`Backward`] state is the packed mask alone. On a plain (non-autodiff) device they are
//! the ordinary activations.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, Device, Tensor, TensorData};

/// An activation with a 1-bit backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaskedActivation {
    /// ReLU, exact gradient.
    Relu,
    /// ReLU6, exact gradient.
    Relu6,
    /// Hard-Swish with MobileTL's `dx = dy * 1[x >= 0]`.
    HardSwishStep,
}

impl MaskedActivation {
    fn code(self) -> u32 {
        match self {
            MaskedActivation::Relu => 0,
            MaskedActivation::Relu6 => 1,
            MaskedActivation::HardSwishStep => 2,
        }
    }

    fn from_code(code: u32) -> Self {
        match code {
            0 => MaskedActivation::Relu,
            1 => MaskedActivation::Relu6,
            2 => MaskedActivation::HardSwishStep,
            _ => unreachable!("activation codes come from MaskedActivation::code"),
        }
    }

    /// The forward value of one element.
    pub fn value(self, x: f32) -> f32 {
        match self {
            MaskedActivation::Relu => x.max(0.0),
            MaskedActivation::Relu6 => x.clamp(0.0, 6.0),
            MaskedActivation::HardSwishStep => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        }
    }

    /// The bit the backward keeps for one element.
    pub fn mask_bit(self, x: f32) -> bool {
        match self {
            MaskedActivation::Relu => x > 0.0,
            MaskedActivation::Relu6 => x > 0.0 && x < 6.0,
            MaskedActivation::HardSwishStep => x >= 0.0,
        }
    }

    /// Applies the activation; on an autodiff device its backward keeps only the mask.
    ///
    /// # Panics
    /// On a device other than flex (the CPU backend): the packed-mask kernels exist for
    /// flex only so far, and a silent fallback to a full-width mask would defeat the
    /// method's memory claim.
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        let device = x.device();
        assert!(
            device.clone().inner() == Device::flex(),
            "MobileTL's 1-bit-mask activations run on the flex CPU backend only; got {device:?}"
        );
        Tensor::from_dispatch(<Dispatch as MaskedActivationOps>::masked_activation(
            x.into_dispatch(),
            self.code(),
        ))
    }
}

/// Bytes of a packed mask for `elements` values.
pub fn packed_mask_bytes(elements: usize) -> usize {
    elements.div_ceil(8)
}

/// Forward value and packed mask, and the masked product of the backward.
pub trait MaskKernels: Backend {
    /// The activation of `x` and its packed mask.
    fn activation_with_mask(
        x: FloatTensor<Self>,
        activation: u32,
    ) -> (FloatTensor<Self>, IntTensor<Self>);
    /// `dy * mask`, the mask unpacked to `dy`'s shape.
    fn apply_mask(dy: FloatTensor<Self>, mask: IntTensor<Self>) -> FloatTensor<Self>;
}

fn f32_values(t: &FlexTensor, what: &str) -> Vec<f32> {
    // Contiguous f32 is what every float layer of this crate produces; other dtypes go
    // through a conversion rather than a panic.
    let t = t.to_contiguous();
    match t.as_slice::<f32>() {
        Some(s) if t.dtype() == DType::F32 => s.to_vec(),
        _ => t
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_else(|e| panic!("{what}: cannot read the tensor as f32: {e:?}")),
    }
}

impl MaskKernels for Flex {
    fn activation_with_mask(x: FlexTensor, activation: u32) -> (FlexTensor, FlexTensor) {
        let act = MaskedActivation::from_code(activation);
        let shape = x.shape();
        let values = f32_values(&x, "masked activation input");
        drop(x);
        let mut mask = vec![0u8; packed_mask_bytes(values.len())];
        let mut out = values;
        for (i, v) in out.iter_mut().enumerate() {
            mask[i >> 3] |= (act.mask_bit(*v) as u8) << (i & 7);
            *v = act.value(*v);
        }
        let bytes = mask.len();
        (
            FlexTensor::from_data(TensorData::new(out, shape)),
            FlexTensor::from_data(TensorData::new(mask, [bytes])),
        )
    }

    fn apply_mask(dy: FlexTensor, mask: FlexTensor) -> FlexTensor {
        let shape = dy.shape();
        let mut grad = f32_values(&dy, "masked activation gradient");
        drop(dy);
        let mask = mask.to_contiguous();
        let bits = mask
            .as_slice::<u8>()
            .expect("the mask is the u8 tensor activation_with_mask wrote");
        for (i, g) in grad.iter_mut().enumerate() {
            if (bits[i >> 3] >> (i & 7)) & 1 == 0 {
                *g = 0.0;
            }
        }
        FlexTensor::from_data(TensorData::new(grad, shape))
    }
}

/// The backend extension: an activation whose autodiff version keeps a packed mask.
#[backend_extension(Flex, Autodiff)]
pub trait MaskedActivationOps: Backend {
    /// Applies activation `activation` (a [`MaskedActivation`] code).
    fn masked_activation(x: FloatTensor<Self>, activation: u32) -> FloatTensor<Self>;
}

impl MaskedActivationOps for Flex {
    fn masked_activation(x: FlexTensor, activation: u32) -> FlexTensor {
        // No gradient is wanted here: the mask is computed and dropped.
        Flex::activation_with_mask(x, activation).0
    }
}

#[derive(Debug)]
struct MaskBackward;

impl<B: Backend + MaskKernels> Backward<B, 1> for MaskBackward {
    // The packed mask: the only thing kept between forward and backward.
    type State = IntTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let mask = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| B::apply_mask(dy, mask));
    }
}

impl<B, C> MaskedActivationOps for Autodiff<B, C>
where
    B: Backend + MaskKernels + MaskedActivationOps,
    C: CheckpointStrategy,
{
    fn masked_activation(x: FloatTensor<Self>, activation: u32) -> FloatTensor<Self> {
        let (x, node) = x.into_parts();
        // Compute-bound and stateful: nothing of `x` is checkpointed, the state is the mask.
        match MaskBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, mask) = B::activation_with_mask(x, activation);
                prep.finish(mask, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::masked_activation(x, activation)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_saved_mask_is_one_bit_per_element() {
        let x = FlexTensor::from_data(TensorData::new(
            (0..21).map(|i| i as f32 - 10.0).collect::<Vec<_>>(),
            [3, 7],
        ));
        let (y, mask) = Flex::activation_with_mask(x, MaskedActivation::Relu6.code());
        assert_eq!(y.shape().dims::<2>(), [3, 7]);
        assert_eq!(mask.shape().dims::<1>(), [packed_mask_bytes(21)]);
        assert_eq!(mask.dtype(), DType::U8);
        // x = -10..=10: bits set for x in 1..=5, i.e. elements 11..=15.
        let bits = mask.into_data().try_to_vec::<u8>().unwrap();
        assert_eq!(bits, vec![0, 0b1111_1000, 0]);
    }
}
