//! Text-to-image pipelines over a diffusers folder: `StableDiffusionPipeline` (SD 1.x,
//! 2.x) and `StableDiffusionXLPipeline` (SDXL, SDXL-turbo), with classifier-free
//! guidance, negative prompts, seeded or given initial latents, and hooks that a method
//! such as HiDiffusion uses to change the UNet per step.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde_json::Value;

use crate::clip::ClipTextModel;
use crate::config::{ClipTextConfig, UNetConfig, VaeConfig};
use crate::scheduler::{SamplerKind, Scheduler, SchedulerConfig};
use crate::tokenizer::ClipTokenizer;
use crate::unet::{AddedConditions, NoHooks, UNet, UNetHooks};
use crate::vae::Vae;
use crate::weights::{LoadError, Weights, read_json, weight_file};

/// The model families the pipelines cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Stable Diffusion 1.x (CLIP ViT-L text encoder, 1x1 convolution projections).
    Sd1,
    /// Stable Diffusion 2.x (OpenCLIP ViT-H, linear projections).
    Sd2,
    /// SDXL base (two text encoders, `text_time` conditioning).
    Sdxl,
    /// SDXL-turbo (SDXL distilled for 1-4 Euler-ancestral steps without guidance).
    SdxlTurbo,
}

/// Changes the sampling loop and the UNet; the default does nothing.
pub trait SamplingHooks: UNetHooks {
    /// Called before the UNet call of step `index` of `total`.
    fn begin_step(&mut self, index: usize, total: usize) {
        let _ = (index, total);
    }
}
impl SamplingHooks for NoHooks {}

/// Text conditioning for a batch (negative rows first when guided, as diffusers
/// concatenates them).
#[derive(Debug, Clone)]
pub struct PromptEmbeddings {
    /// `[B, 77, D]`.
    pub context: Tensor<3>,
    /// SDXL: pooled text embeddings and time ids.
    pub added: Option<AddedConditions>,
}

/// One image request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Prompt.
    pub prompt: String,
    /// Negative prompt (`None`: empty, or zeros for SDXL's `force_zeros_for_empty_prompt`).
    pub negative_prompt: Option<String>,
    /// Image width in pixels (a multiple of 8 and of the VAE's scale factor).
    pub width: usize,
    /// Image height in pixels (a multiple of 8 and of the VAE's scale factor).
    pub height: usize,
    /// Sampling steps.
    pub steps: usize,
    /// Classifier-free guidance scale; at most 1 runs the conditional model alone.
    pub guidance: f64,
    /// DDIM eta.
    pub eta: f64,
    /// Seed of the initial latents and of any sampler noise.
    pub seed: u64,
    /// Initial latents `[1, C, H/f, W/f]` (C latent channels, f the VAE's scale factor)
    /// instead of seeded noise (scaled by the sampler's initial sigma, as diffusers does
    /// with given latents).
    pub init_latents: Option<Tensor<4>>,
    /// Sampler (`None`: the folder's scheduler class).
    pub sampler: Option<SamplerKind>,
    /// Use the hidden state `clip_skip` layers before the last (SD 1.x/2.x).
    pub clip_skip: Option<usize>,
}

impl Request {
    /// A request with diffusers' defaults for `kind`: 50 DDIM steps at guidance 7.5
    /// (SDXL-turbo: 4 steps, no guidance), at 512x512 px. A loaded pipeline's
    /// [`StableDiffusion::request`] starts at the model's native size instead.
    pub fn new(prompt: &str, kind: ModelKind) -> Self {
        let turbo = kind == ModelKind::SdxlTurbo;
        Request {
            prompt: prompt.to_string(),
            negative_prompt: None,
            width: 512,
            height: 512,
            steps: if turbo { 4 } else { 50 },
            guidance: if turbo { 0.0 } else { 7.5 },
            eta: 0.0,
            seed: 0,
            init_latents: None,
            sampler: None,
            clip_skip: None,
        }
    }
}

/// What a progress callback is told after each step.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// Steps done.
    pub done: usize,
    /// Steps in all.
    pub total: usize,
    /// The timestep just run.
    pub timestep: f64,
}

/// A loaded pipeline.
#[derive(Debug)]
pub struct StableDiffusion {
    /// Family.
    pub kind: ModelKind,
    /// The UNet.
    pub unet: UNet,
    /// Its config.
    pub unet_config: UNetConfig,
    /// The autoencoder.
    pub vae: Vae,
    /// First (or only) text encoder.
    pub text_encoder: ClipTextModel,
    /// SDXL's second text encoder (with projection).
    pub text_encoder_2: Option<ClipTextModel>,
    /// Tokenizers, as many as encoders (absent in models built without a folder).
    pub tokenizers: Vec<ClipTokenizer>,
    /// Scheduler config.
    pub scheduler: SchedulerConfig,
    /// SDXL: a missing negative prompt conditions on zeros.
    pub force_zeros_for_empty_prompt: bool,
    /// Pixels per latent per side (`2 ** (len(vae.block_out_channels) - 1)`).
    pub vae_scale_factor: usize,
    /// Channels of the latents (the VAE's `latent_channels`, the UNet's input).
    pub latent_channels: usize,
    /// The folder it came from.
    pub dir: PathBuf,
    device: Device,
}

/// Options for loading a folder.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Read `*.fp16.safetensors` where both variants exist.
    pub prefer_fp16: bool,
    /// Force the family instead of deriving it from the folder.
    pub kind: Option<ModelKind>,
}

fn load_component<T>(
    dir: &Path,
    sub: &str,
    weights: &str,
    prefer_fp16: bool,
    device: &Device,
    build: impl FnOnce(&mut Weights) -> T,
) -> Result<T, LoadError> {
    let path = weight_file(&dir.join(sub), weights, prefer_fp16)?;
    let mut w = Weights::open(&path, device)?;
    let model = build(&mut w);
    w.finish()?;
    Ok(model)
}

impl StableDiffusion {
    /// Loads a diffusers folder: `model_index.json`, `unet/`, `vae/`, `text_encoder/`,
    /// `tokenizer/`, `scheduler/`, and for SDXL `text_encoder_2/`, `tokenizer_2/`.
    pub fn from_diffusers_dir(
        dir: &Path,
        device: &Device,
        options: LoadOptions,
    ) -> Result<Self, LoadError> {
        let index_path = dir.join("model_index.json");
        let index: Value = read_json(&index_path)?;
        let class = index
            .get("_class_name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let xl = class.contains("XL") || index.get("text_encoder_2").is_some_and(|v| !v.is_null());
        for sub in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
            .into_iter()
            .chain(
                xl.then_some(["text_encoder_2", "tokenizer_2"])
                    .into_iter()
                    .flatten(),
            )
        {
            if !dir.join(sub).is_dir() {
                return Err(LoadError::Io {
                    path: dir.join(sub),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{class} needs the {sub}/ folder"),
                    ),
                });
            }
        }
        let unet_config = UNetConfig::from_file(&dir.join("unet/config.json"))?;
        let vae_config = VaeConfig::from_file(&dir.join("vae/config.json"))?;
        let te_config = ClipTextConfig::from_file(&dir.join("text_encoder/config.json"))?;
        let scheduler = SchedulerConfig::from_file(&dir.join("scheduler/scheduler_config.json"))?;
        if unet_config.in_channels != vae_config.latent_channels
            || unet_config.out_channels != vae_config.latent_channels
        {
            return Err(LoadError::Config {
                path: dir.join("unet/config.json"),
                message: format!(
                    "in_channels {} / out_channels {} do not match the VAE's latent_channels {}",
                    unet_config.in_channels, unet_config.out_channels, vae_config.latent_channels
                ),
            });
        }
        let fp16 = options.prefer_fp16;
        let unet = load_component(dir, "unet", "diffusion_pytorch_model", fp16, device, |w| {
            UNet::load(&unet_config, w)
        })?;
        let vae = load_component(dir, "vae", "diffusion_pytorch_model", fp16, device, |w| {
            Vae::load(&vae_config, w)
        })?;
        let text_encoder = load_component(dir, "text_encoder", "model", fp16, device, |w| {
            ClipTextModel::load(&te_config, w)
        })?;
        let mut tokenizers = vec![ClipTokenizer::from_dir(&dir.join("tokenizer"))?];
        let text_encoder_2 = if xl {
            let config = ClipTextConfig::from_file(&dir.join("text_encoder_2/config.json"))?;
            tokenizers.push(ClipTokenizer::from_dir(&dir.join("tokenizer_2"))?);
            Some(load_component(
                dir,
                "text_encoder_2",
                "model",
                fp16,
                device,
                |w| ClipTextModel::load(&config, w),
            )?)
        } else {
            None
        };
        let kind = options
            .kind
            .unwrap_or_else(|| detect_kind(dir, &unet_config, &scheduler, xl));
        let force_zeros_for_empty_prompt = index
            .get("force_zeros_for_empty_prompt")
            .and_then(Value::as_bool)
            .unwrap_or(xl);
        Ok(StableDiffusion {
            kind,
            unet,
            unet_config,
            vae,
            text_encoder,
            text_encoder_2,
            tokenizers,
            scheduler,
            force_zeros_for_empty_prompt,
            vae_scale_factor: vae_config.scale_factor(),
            latent_channels: vae_config.latent_channels,
            dir: dir.to_path_buf(),
            device: device.clone(),
        })
    }

    /// The device the models live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The image size diffusers' pipelines default to for this model:
    /// `unet.sample_size * vae_scale_factor` per side (512 px for SD 1.5, 1024 for SDXL);
    /// `None` when the UNet config has no `sample_size`.
    pub fn native_size(&self) -> Option<usize> {
        self.unet_config
            .sample_size
            .map(|s| s * self.vae_scale_factor)
    }

    /// [`Request::new`] for this model, at its [`native_size`](Self::native_size)
    /// (512 px when the config does not give one).
    pub fn request(&self, prompt: &str) -> Request {
        let size = self.native_size().unwrap_or(512);
        Request {
            width: size,
            height: size,
            ..Request::new(prompt, self.kind)
        }
    }

    /// The shape of the latents of a `width` x `height` image, `[1, C, H/f, W/f]`.
    pub fn latent_shape(&self, request: &Request) -> [usize; 4] {
        let f = self.vae_scale_factor;
        [
            1,
            self.latent_channels,
            request.height / f,
            request.width / f,
        ]
    }

    /// Token ids of `prompt` for each tokenizer.
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<Vec<i64>>, LoadError> {
        self.tokenizers.iter().map(|t| t.encode(prompt)).collect()
    }

    /// The conditioning of one prompt: SD 1.x/2.x, the last hidden state (or, with
    /// `clip_skip`, the normed hidden state that many layers earlier); SDXL, both
    /// encoders' penultimate hidden states side by side and the second's projected
    /// pooled output.
    fn embed(
        &self,
        prompt: &str,
        clip_skip: Option<usize>,
    ) -> Result<(Tensor<3>, Option<Tensor<2>>), LoadError> {
        let ids = self.tokenize(prompt)?;
        let first = self.text_encoder.forward(&ids[..1]);
        match &self.text_encoder_2 {
            None => {
                let context = match clip_skip {
                    Some(k) if k > 0 => {
                        let n = first.hidden_states.len();
                        let h = first.hidden_states[n.saturating_sub(k + 1)].clone();
                        self.text_encoder.final_layer_norm.forward(h)
                    }
                    _ => first.last_hidden_state,
                };
                Ok((context, None))
            }
            Some(second) => {
                let out2 = second.forward(&ids[1..2]);
                let skip = 2 + clip_skip.unwrap_or(0);
                let pick = |h: &Vec<Tensor<3>>| h[h.len() - skip].clone();
                let context = Tensor::cat(
                    vec![pick(&first.hidden_states), pick(&out2.hidden_states)],
                    2,
                );
                Ok((context, out2.text_embeds))
            }
        }
    }

    /// The batch conditioning of a request: `[negative, positive]` rows when guided.
    pub fn encode_prompt(&self, request: &Request) -> Result<PromptEmbeddings, LoadError> {
        let guided = request.guidance > 1.0;
        let (pos, pos_pooled) = self.embed(&request.prompt, request.clip_skip)?;
        let (context, pooled) = if guided {
            let zero_negative = self.text_encoder_2.is_some()
                && self.force_zeros_for_empty_prompt
                && request.negative_prompt.is_none();
            let (neg, neg_pooled) = if zero_negative {
                (
                    pos.zeros_like(),
                    pos_pooled.as_ref().map(|p| p.zeros_like()),
                )
            } else {
                self.embed(
                    request.negative_prompt.as_deref().unwrap_or(""),
                    request.clip_skip,
                )?
            };
            let pooled = match (neg_pooled, pos_pooled) {
                (Some(n), Some(p)) => Some(Tensor::cat(vec![n, p], 0)),
                _ => None,
            };
            (Tensor::cat(vec![neg, pos], 0), pooled)
        } else {
            (pos, pos_pooled)
        };
        let added = pooled.map(|text_embeds| {
            let rows = text_embeds.dims()[0];
            let (h, w) = (request.height as f32, request.width as f32);
            // original size, crop top-left, target size.
            let ids: Vec<f32> = (0..rows).flat_map(|_| [h, w, 0.0, 0.0, h, w]).collect();
            AddedConditions {
                text_embeds,
                time_ids: Tensor::from_data(TensorData::new(ids, [rows, 6]), &self.device),
            }
        });
        Ok(PromptEmbeddings { context, added })
    }

    /// Seeded standard-normal latents of [`latent_shape`](Self::latent_shape) (ChaCha8
    /// stream).
    pub fn seeded_latents(&self, request: &Request) -> Tensor<4> {
        let shape = self.latent_shape(request);
        let mut rng = ChaCha8Rng::seed_from_u64(request.seed);
        Tensor::from_data(
            TensorData::new(normal(&mut rng, shape.iter().product()), shape),
            &self.device,
        )
    }

    /// Runs the sampler for `request` and returns the final latents
    /// ([`latent_shape`](Self::latent_shape)).
    /// Sampler noise (DDIM with eta > 0, Euler ancestral) is drawn from the request's
    /// seed on a stream of its own, so it does not depend on whether the initial latents
    /// were given.
    pub fn sample(
        &self,
        request: &Request,
        hooks: &mut dyn SamplingHooks,
        on_step: &mut dyn FnMut(StepInfo),
    ) -> Result<Tensor<4>, String> {
        let mut rng = ChaCha8Rng::seed_from_u64(request.seed ^ 0x9e37_79b9_7f4a_7c15);
        let device = self.device.clone();
        let mut noise = |_: usize, dims: [usize; 4]| {
            Tensor::from_data(
                TensorData::new(normal(&mut rng, dims.iter().product()), dims),
                &device,
            )
        };
        self.sample_with_noise(request, hooks, &mut noise, on_step)
    }

    /// [`sample`](Self::sample) with the sampler noise of step `index` (of shape `dims`)
    /// taken from `noise`.
    pub fn sample_with_noise(
        &self,
        request: &Request,
        hooks: &mut dyn SamplingHooks,
        noise: &mut dyn FnMut(usize, [usize; 4]) -> Tensor<4>,
        on_step: &mut dyn FnMut(StepInfo),
    ) -> Result<Tensor<4>, String> {
        // diffusers requires multiples of 8; a VAE that downsamples more needs multiples
        // of its own factor too, or the latents would silently crop the image.
        let multiple = self.vae_scale_factor.max(8);
        if !request.width.is_multiple_of(multiple)
            || !request.height.is_multiple_of(multiple)
            || request.width == 0
            || request.height == 0
        {
            return Err(format!(
                "width and height must be positive multiples of {multiple}, got {}x{}",
                request.width, request.height
            ));
        }
        let scheduler =
            Scheduler::new(&self.scheduler, request.sampler, request.steps, request.eta)?;
        let embeddings = self.encode_prompt(request).map_err(|e| e.to_string())?;
        let latents = match &request.init_latents {
            Some(l) => {
                let want = self.latent_shape(request);
                if l.dims() != want {
                    return Err(format!(
                        "initial latents have shape {:?}, expected {want:?}",
                        l.dims()
                    ));
                }
                l.clone()
            }
            None => self.seeded_latents(request),
        };
        let mut latents = latents.mul_scalar(scheduler.init_noise_sigma());
        let guided = request.guidance > 1.0;
        let total = scheduler.timesteps().len();
        for (index, &t) in scheduler.timesteps().iter().enumerate() {
            hooks.begin_step(index, total);
            let input = if guided {
                Tensor::cat(vec![latents.clone(), latents.clone()], 0)
            } else {
                latents.clone()
            };
            let input = scheduler.scale_model_input(input, index);
            let pred = self.unet.forward_with(
                input,
                t,
                &embeddings.context,
                embeddings.added.as_ref(),
                hooks,
            );
            let pred = if guided {
                let uncond = pred.clone().narrow(0, 0, 1);
                let cond = pred.narrow(0, 1, 1);
                uncond.clone() + (cond - uncond).mul_scalar(request.guidance)
            } else {
                pred
            };
            let step_noise = scheduler
                .needs_noise(index)
                .then(|| noise(index, latents.dims()));
            latents = scheduler.step(pred, index, latents, step_noise);
            on_step(StepInfo {
                done: index + 1,
                total,
                timestep: t,
            });
        }
        Ok(latents)
    }

    /// The image of diffusion latents, `[B, 3, H, W]` in [0, 1].
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        let image = self.vae.decode(latents.div_scalar(self.vae.scaling_factor));
        (image.div_scalar(2.0) + 0.5).clamp(0.0, 1.0)
    }
}

/// SD 1.x vs 2.x from the UNet (linear projections and 1024-wide text), SDXL from the
/// second encoder, turbo from an Euler-ancestral scheduler with trailing spacing or the
/// folder's name.
fn detect_kind(dir: &Path, unet: &UNetConfig, scheduler: &SchedulerConfig, xl: bool) -> ModelKind {
    if xl {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let euler_trailing = scheduler.class_name == "EulerAncestralDiscreteScheduler"
            && scheduler.timestep_spacing == "trailing";
        if name.contains("turbo") || euler_trailing {
            ModelKind::SdxlTurbo
        } else {
            ModelKind::Sdxl
        }
    } else if unet.use_linear_projection {
        ModelKind::Sd2
    } else {
        ModelKind::Sd1
    }
}

/// `n` standard-normal f32 draws.
pub fn normal(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// `image [1, 3, H, W]` in [0, 1] as 8-bit RGB (`round(255 x)`, as diffusers'
/// `numpy_to_pil`).
pub fn to_rgb8(image: Tensor<4>) -> image::RgbImage {
    let [_, c, h, w] = image.dims();
    assert_eq!(c, 3, "an RGB image");
    let values: Vec<f32> = image
        .narrow(0, 0, 1)
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .expect("f32 image");
    image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let at = |ch: usize| {
            (values[ch * h * w + y as usize * w + x as usize] * 255.0)
                .round()
                .clamp(0.0, 255.0) as u8
        };
        image::Rgb([at(0), at(1), at(2)])
    })
}
