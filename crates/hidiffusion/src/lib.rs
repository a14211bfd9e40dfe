//! Stable Diffusion on burn, loaded from diffusers folders (SD 1.5, SD 2.1-base, SDXL,
//! SDXL-turbo), and HiDiffusion (Zhang et al., ECCV 2024): tuning-free higher
//! resolutions through a resolution-aware UNet (RAU-Net) and modified shifted-window
//! self-attention (MSW-MSA).
//!
//! One file per component, named after diffusers' classes: [`unet`]
//! (`UNet2DConditionModel`), [`attention`] (`Transformer2DModel`), [`vae`]
//! (`AutoencoderKL`), [`clip`] (`CLIPTextModel`), [`tokenizer`] (`CLIPTokenizer`),
//! [`scheduler`] (DDIM, Euler ancestral) and [`pipeline`].
//!
//! ```no_run
//! use burn::tensor::Device;
//! use hidiffusion::pipeline::{LoadOptions, StableDiffusion, to_rgb8};
//! let device = Device::flex();
//! let sd = StableDiffusion::from_diffusers_dir("stable-diffusion-v1-5".as_ref(), &device, LoadOptions::default())?;
//! // At the model's native size (512 px for SD 1.5, 1024 px for SDXL), 50 DDIM steps.
//! let mut request = sd.request("a photo of an astronaut riding a horse");
//! request.seed = 1;
//! let latents = sd.sample(&request, &mut hidiffusion::unet::NoHooks, &mut |_| {}).unwrap();
//! to_rgb8(sd.decode(latents)).save("astronaut.png").unwrap();
//! # Ok::<(), hidiffusion::weights::LoadError>(())
//! ```

pub mod attention;
pub mod clip;
pub mod config;
pub mod cost;
pub mod layers;
pub mod msw_msa;
pub mod pipeline;
pub mod rau_net;
pub mod scheduler;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;

pub use pipeline::{LoadOptions, ModelKind, Request, StableDiffusion};
pub use rau_net::{HiDiffusion, HiDiffusionConfig};
pub use weights::LoadError;
