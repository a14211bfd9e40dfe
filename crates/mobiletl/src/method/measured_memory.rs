//! Training memory measured on a real step: the heap bytes a forward pass leaves held for
//! its backward pass (the activations the autodiff graph keeps, plus the loss), read from
//! [`heap::CountingAllocator`](crate::heap::CountingAllocator).
//!
//! The weights are random: what a step keeps depends on shapes and on the method, not on
//! the values. Each measurement runs a warm-up step first so that one-time allocations
//! (thread pools, caches) are not counted.

use burn::tensor::{Device, Distribution, Tensor};
use irb_core::InvertedResidual;

use crate::heap;
use crate::method::finetune::{Method, MobileTlHooks, forward, prepare};
use crate::mobilenet::{MobileNetConfig, NetworkSpec};

/// Bytes held after `step` returns its loss, before the backward runs; the backward is then
/// run so the graph is released.
fn held_by(step: impl Fn() -> Tensor<1>, device: &Device) -> Result<usize, String> {
    if !heap::counting() {
        return Err(
            "measuring memory needs mobiletl::heap::CountingAllocator as the global allocator"
                .into(),
        );
    }
    let sync = || device.sync().map_err(|e| format!("device sync: {e:?}"));
    let run = || -> Result<usize, String> {
        sync()?;
        let before = heap::current();
        let loss = step();
        sync()?;
        let held = heap::current().saturating_sub(before);
        drop(loss.backward());
        sync()?;
        Ok(held)
    };
    run()?;
    run()
}

fn check_device(device: &Device) -> Result<(), String> {
    if !device.is_autodiff() {
        return Err(
            "measuring a training step needs an autodiff device (`device.autodiff()`)".into(),
        );
    }
    Ok(())
}

/// Bytes a training step of `method` (K = `blocks`) keeps between forward and backward on
/// a network built from `config`, for a batch of `batch` images of side `resolution`.
pub fn measure_network(
    config: &MobileNetConfig,
    method: Method,
    blocks: usize,
    batch: usize,
    resolution: usize,
    device: &Device,
) -> Result<usize, String> {
    check_device(device)?;
    let model = prepare(
        config.clone().with_dropout(0.0).init(device),
        method,
        blocks,
    )?;
    let x = Tensor::<4>::random(
        [batch, 3, resolution, resolution],
        Distribution::Default,
        device,
    );
    held_by(|| forward(&model, x.clone(), method).sum(), device)
}

/// Input side of block `index` of `spec` for images of side `resolution`.
pub fn block_input_side(spec: &NetworkSpec, index: usize, resolution: usize) -> usize {
    let conv_out = |side: usize, k: usize, s: usize| (side + 2 * (k / 2) - k) / s + 1;
    spec.blocks[..index]
        .iter()
        .fold(conv_out(resolution, 3, 2), |side, b| {
            conv_out(side, b.kernel, b.stride)
        })
}

/// Bytes one trainable block (block `index` of `config`'s network, at its place in a
/// network fed `resolution`-pixel images) keeps between forward and backward, under
/// MobileTL's rules when `mobiletl`, else vanilla's.
pub fn measure_block(
    config: &MobileNetConfig,
    index: usize,
    mobiletl: bool,
    batch: usize,
    resolution: usize,
    device: &Device,
) -> Result<usize, String> {
    check_device(device)?;
    let spec = config.spec();
    if index >= spec.blocks.len() {
        return Err(format!(
            "block {index} is out of range: the network has {} blocks",
            spec.blocks.len()
        ));
    }
    let method = if mobiletl {
        Method::Mobiletl
    } else {
        Method::Vanilla
    };
    let model = prepare(
        config.clone().init(device),
        method,
        spec.blocks.len() - index,
    )?;
    let block: &InvertedResidual = &model.blocks[index];
    let side = block_input_side(&spec, index, resolution);
    let c = spec.blocks[index].in_channels;
    let x = Tensor::<4>::random([batch, c, side, side], Distribution::Default, device);
    held_by(
        || {
            let y = if mobiletl {
                block.forward_with(x.clone(), &MobileTlHooks)
            } else {
                block.forward(x.clone())
            };
            y.sum()
        },
        device,
    )
}
