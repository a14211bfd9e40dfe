//! Stable Diffusion against diffusers 0.33.1 / transformers 4.46.3 on tiny random
//! models in the SD 1.5, SD 2.1-base and SDXL layouts (fixtures from
//! tools/reference/hidiffusion/make_fixtures.py): tokens exact, every stage (text
//! encoders, prompt encoding, UNet at a regular and an odd latent size, VAE decode and
//! encode, a 4-step DDIM run with guidance and a negative prompt, the decoded image)
//! within 1e-4 relative.

use crate::common::{Expected, assert_close, fixture, model_dir, openai_merges, values};
use burn::tensor::Device;
use hidiffusion::pipeline::{LoadOptions, Request, StableDiffusion};
use hidiffusion::tokenizer::ClipTokenizer;
use hidiffusion::unet::AddedConditions;
use serde_json::Value;

const TOL: f32 = 1e-4;

#[test]
fn clip_tokenizer_matches_transformers() {
    let merges = openai_merges();
    let desc: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("clip_tokenizer.json")).unwrap())
            .unwrap();
    let expected = Expected::open(&fixture("clip_tokenizer.safetensors"));
    for (key, pad) in [
        ("ids_pad_eos", "<|endoftext|>"),
        ("ids_pad_exclamation", "!"),
    ] {
        let tok = ClipTokenizer::from_openai_merges(&merges, pad).unwrap();
        let (ids, shape) = expected.ints(key);
        for (i, prompt) in desc["prompts"].as_array().unwrap().iter().enumerate() {
            let want = &ids[i * shape[1]..(i + 1) * shape[1]];
            let got = tok.encode(prompt.as_str().unwrap()).unwrap();
            assert_eq!(got, want, "{key}: {prompt}");
        }
    }
    // The same through a diffusers tokenizer folder (vocab.json + merges.txt).
    let dir = tempfile::tempdir().unwrap();
    ClipTokenizer::write_diffusers_folder(&merges, dir.path(), "!").unwrap();
    let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
    let (ids, shape) = expected.ints("ids_pad_exclamation");
    assert_eq!(
        tok.encode(desc["prompts"][2].as_str().unwrap()).unwrap(),
        &ids[2 * shape[1]..3 * shape[1]]
    );
}

fn load(name: &str) -> (tempfile::TempDir, StableDiffusion, Expected, Value) {
    let dir = model_dir(name);
    let sd =
        StableDiffusion::from_diffusers_dir(dir.path(), &Device::flex(), LoadOptions::default())
            .unwrap();
    let expected = Expected::open(&fixture(name).join("expected.safetensors"));
    let desc: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("expected.json")).unwrap(),
    )
    .unwrap();
    (dir, sd, expected, desc)
}

fn rows(ids: &[i64], width: usize) -> Vec<Vec<i64>> {
    ids.chunks(width).map(|r| r.to_vec()).collect()
}

/// Text encoders, prompt encoding, UNet, VAE and the 4-step pipeline of one model.
fn check(name: &str) {
    let (_dir, sd, expected, desc) = load(name);
    let device = Device::flex();
    let xl = sd.text_encoder_2.is_some();

    // Text encoders on their own.
    let encoders: Vec<(&str, &hidiffusion::clip::ClipTextModel)> = if xl {
        vec![
            ("te1", &sd.text_encoder),
            ("te2", sd.text_encoder_2.as_ref().unwrap()),
        ]
    } else {
        vec![("te", &sd.text_encoder)]
    };
    for (i, (prefix, encoder)) in encoders.iter().enumerate() {
        let (ids, shape) = expected.ints(&format!("{prefix}_ids"));
        let prompts = desc["te_prompts"].as_array().unwrap();
        for (row, prompt) in prompts.iter().enumerate() {
            let got = sd.tokenize(prompt.as_str().unwrap()).unwrap();
            assert_eq!(
                got[i],
                &ids[row * shape[1]..(row + 1) * shape[1]],
                "{name} {prefix} tokens"
            );
        }
        let out = encoder.forward(&rows(&ids, shape[1]));
        let check_key = |key: &str, got: Vec<f32>| {
            let (want, _) = expected.floats(&format!("{prefix}_{key}"));
            assert_close(&format!("{name} {prefix} {key}"), &got, &want, TOL);
        };
        check_key("last_hidden_state", values(out.last_hidden_state.clone()));
        let n = out.hidden_states.len();
        check_key("penultimate", values(out.hidden_states[n - 2].clone()));
        match &out.text_embeds {
            Some(e) => check_key("text_embeds", values(e.clone())),
            None => check_key("pooler_output", values(out.pooled.clone())),
        }
    }

    // The folder's own tokenizers (the current generation carries them) on prompts with
    // punctuation, the pad token and more than 77 tokens.
    for (i, key) in ["tokenizer_ids", "tokenizer_2_ids"].into_iter().enumerate() {
        if !expected.has(key) {
            continue;
        }
        let (ids, shape) = expected.ints(key);
        for (row, prompt) in desc["tokenizer_prompts"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let got = sd.tokenize(prompt.as_str().unwrap()).unwrap();
            assert_eq!(
                got[i],
                &ids[row * shape[1]..(row + 1) * shape[1]],
                "{name} {key}: {prompt}"
            );
        }
    }

    // Prompt encoding as the pipeline does it (negative rows first).
    let pipe = &desc["pipe"];
    let mut request = Request::new(pipe["prompt"].as_str().unwrap(), sd.kind);
    request.negative_prompt = Some(pipe["negative_prompt"].as_str().unwrap().to_string());
    request.width = pipe["width"].as_u64().unwrap() as usize;
    request.height = pipe["height"].as_u64().unwrap() as usize;
    request.steps = pipe["num_inference_steps"].as_u64().unwrap_or(4) as usize;
    request.guidance = 7.5;
    let embeddings = sd.encode_prompt(&request).unwrap();
    let (neg, _) = expected.floats("negative_prompt_embeds");
    let (pos, _) = expected.floats("prompt_embeds");
    let want: Vec<f32> = neg.iter().chain(&pos).copied().collect();
    assert_close(
        &format!("{name} prompt embeddings"),
        &values(embeddings.context.clone()),
        &want,
        TOL,
    );
    if xl {
        let (neg, _) = expected.floats("negative_pooled_prompt_embeds");
        let (pos, _) = expected.floats("pooled_prompt_embeds");
        let want: Vec<f32> = neg.iter().chain(&pos).copied().collect();
        let added = embeddings.added.as_ref().unwrap();
        assert_close(
            &format!("{name} pooled"),
            &values(added.text_embeds.clone()),
            &want,
            TOL,
        );
        let (ids, _) = expected.floats("unet_time_ids");
        assert_eq!(values(added.time_ids.clone()), ids, "{name} time ids");
        // No negative prompt: SDXL conditions the unguided half on zeros.
        let mut plain = request.clone();
        plain.negative_prompt = None;
        let zeros = sd.encode_prompt(&plain).unwrap();
        let context = values(zeros.context);
        assert!(context[..context.len() / 2].iter().all(|&x| x == 0.0));
        assert_eq!(desc["negative_prompt_none_gives_zeros"], Value::Bool(true));
    }

    // UNet at a regular and an odd latent size.
    let context = expected.tensor::<3>("unet_encoder_hidden_states", &device);
    let added = xl.then(|| AddedConditions {
        text_embeds: expected.tensor::<2>("unet_text_embeds", &device),
        time_ids: expected.tensor::<2>("unet_time_ids", &device),
    });
    for (sample, out, t) in [
        ("unet_sample", "unet_out", 981.0),
        ("unet_odd_sample", "unet_odd_out", 500.0),
    ]
    .into_iter()
    .filter(|(sample, _, _)| expected.has(sample))
    {
        let got = sd.unet.forward(
            expected.tensor::<4>(sample, &device),
            t,
            &context,
            added.as_ref(),
        );
        let (want, _) = expected.floats(out);
        assert_close(&format!("{name} {out}"), &values(got), &want, TOL);
    }

    // VAE.
    let got = sd
        .vae
        .decode(expected.tensor::<4>("vae_decode_latents", &device));
    let (want, _) = expected.floats("vae_decode_out");
    assert_close(&format!("{name} VAE decode"), &values(got), &want, TOL);
    let (mean, std) = sd
        .vae
        .encode(expected.tensor::<4>("vae_encode_image", &device));
    let (want, _) = expected.floats("vae_encode_mean");
    assert_close(
        &format!("{name} VAE encode mean"),
        &values(mean),
        &want,
        TOL,
    );
    let (want, _) = expected.floats("vae_encode_std");
    assert_close(&format!("{name} VAE encode std"), &values(std), &want, TOL);

    // The 4-step DDIM run from fixed latents, guidance 7.5, negative prompt.
    request.init_latents = Some(expected.tensor::<4>("pipe_latents_init", &device));
    let mut timesteps = Vec::new();
    let latents = sd
        .sample(&request, &mut hidiffusion::unet::NoHooks, &mut |info| {
            timesteps.push(info.timestep as i64)
        })
        .unwrap();
    let (want_t, _) = expected.ints("pipe_timesteps");
    assert_eq!(timesteps, want_t, "{name} timesteps");
    let (want, _) = expected.floats("pipe_final_latents");
    assert_close(
        &format!("{name} 4-step DDIM latents"),
        &values(latents.clone()),
        &want,
        TOL,
    );
    let image = sd.decode(latents);
    let (want, shape) = expected.floats("pipe_image");
    // diffusers returns NHWC; ours is NCHW.
    let (h, w) = (shape[1], shape[2]);
    let want_nchw: Vec<f32> = (0..3)
        .flat_map(|c| (0..h * w).map(move |p| (c, p)))
        .map(|(c, p)| want[p * 3 + c])
        .collect();
    assert_close(&format!("{name} image"), &values(image), &want_nchw, TOL);
}

#[test]
fn sd15_shaped_pipeline_matches_diffusers() {
    check("sd15-tiny");
}

#[test]
fn sd21_shaped_pipeline_matches_diffusers() {
    check("sd21-tiny");
}

#[test]
fn sdxl_shaped_pipeline_matches_diffusers() {
    check("sdxl-tiny");
}

/// Folders written by diffusers 0.42 / transformers 5 (fixtures from
/// tools/reference/hidiffusion/make_current_fixtures.py): CLIP weights without the
/// `text_model.` prefix, tokenizer folders with only `tokenizer.json`, and what those
/// releases compute on them.
#[test]
fn folders_written_by_diffusers_0_42_and_transformers_5_match_them() {
    for name in [
        "current/sd15-tiny",
        "current/sd21-tiny",
        "current/sdxl-tiny",
    ] {
        let dir = fixture(name);
        assert!(dir.join("tokenizer/tokenizer.json").is_file());
        assert!(!dir.join("tokenizer/vocab.json").exists());
        check(name);
    }
    let te = safetensors::SafeTensors::deserialize(
        &std::fs::read(fixture("current/sd15-tiny/text_encoder/model.safetensors")).unwrap(),
    )
    .unwrap()
    .names()
    .into_iter()
    .any(|k| k.starts_with("text_model."));
    assert!(!te, "the fixture must hold the unprefixed layout");
}

/// A VAE with another scale factor (3 levels: 4 px per latent) and 8 latent channels:
/// the latent shape, the native size and the run follow the VAE config, as diffusers'.
#[test]
fn the_vae_config_sets_the_latent_shape_and_the_native_size() {
    let name = "current/sd-vae4-tiny";
    check(name);
    let (_dir, sd, _, desc) = load(name);
    let defaults = &desc["defaults"];
    assert_eq!(
        sd.vae_scale_factor as u64,
        defaults["vae_scale_factor"].as_u64().unwrap()
    );
    let request = sd.request("a cat");
    assert_eq!(
        [request.height as u64, request.width as u64],
        [
            defaults["default_height"].as_u64().unwrap(),
            defaults["default_width"].as_u64().unwrap()
        ]
    );
    let want: Vec<usize> = defaults["latent_shape_without_height_width"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(sd.latent_shape(&request).to_vec(), want);
    // Initial latents of the SD shape are refused, naming the expected one.
    let mut wrong = request.clone();
    wrong.steps = 1;
    wrong.init_latents = Some(burn::tensor::Tensor::zeros([1, 4, 16, 16], sd.device()));
    let err = sd
        .sample(&wrong, &mut hidiffusion::unet::NoHooks, &mut |_| {})
        .unwrap_err();
    assert!(err.contains("[1, 8, 16, 16]"), "{err}");
}

/// SDXL pipelines default to the model's own size (1024 px for the real models), not
/// 512: `unet.sample_size * vae_scale_factor`.
#[test]
fn sdxl_defaults_to_its_native_size() {
    let (_dir, sd, _, desc) = load("current/sdxl-tiny");
    let request = sd.request("a cat");
    for (got, key) in [
        (request.width, "default_width"),
        (request.height, "default_height"),
    ] {
        assert_eq!(got as u64, desc["defaults"][key].as_u64().unwrap(), "{key}");
    }
}

#[test]
fn broken_folders_are_refused_naming_the_file_or_tensor() {
    let dir = model_dir("sd15-tiny");
    let device = Device::flex();
    let load = |p: &std::path::Path| {
        StableDiffusion::from_diffusers_dir(p, &device, LoadOptions::default())
            .unwrap_err()
            .to_string()
    };
    // A truncated UNet file.
    let unet = dir.path().join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&unet).unwrap();
    std::fs::write(&unet, &bytes[..bytes.len() / 3]).unwrap();
    let err = load(dir.path());
    assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");
    std::fs::write(&unet, &bytes).unwrap();
    // A missing tensor and an unexpected one, both named.
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, safetensors::tensor::TensorView)> = file
        .tensors()
        .into_iter()
        .filter(|(k, _)| k != "conv_in.weight")
        .collect();
    let extra = vec![0u8; 4];
    kept.push((
        "surprise.weight".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &extra).unwrap(),
    ));
    std::fs::write(&unet, safetensors::serialize(kept, None).unwrap()).unwrap();
    let err = load(dir.path());
    assert!(err.contains("missing tensor conv_in.weight"), "{err}");
    assert!(err.contains("unexpected tensor surprise.weight"), "{err}");
    std::fs::write(&unet, &bytes).unwrap();
    // A missing component folder and an unsupported config value.
    std::fs::rename(dir.path().join("vae"), dir.path().join("vae-gone")).unwrap();
    let err = load(dir.path());
    assert!(err.contains("vae"), "{err}");
    std::fs::rename(dir.path().join("vae-gone"), dir.path().join("vae")).unwrap();
    let config_path = dir.path().join("unet/config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["resnet_time_scale_shift"] = "scale_shift".into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = load(dir.path());
    assert!(
        err.contains("resnet_time_scale_shift") && err.contains("config.json"),
        "{err}"
    );
}

#[test]
fn fp16_variant_files_load_to_the_same_model() {
    let dir = model_dir("sd15-tiny");
    let device = Device::flex();
    // Replace the fp32 VAE by an fp16 variant file (diffusers' `variant="fp16"` name).
    let path = dir.path().join("vae/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let halves: Vec<(String, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(k, t)| {
            let data = t
                .data()
                .chunks_exact(4)
                .flat_map(|b| {
                    burn::tensor::f16::from_f32(f32::from_le_bytes(b.try_into().unwrap()))
                        .to_le_bytes()
                })
                .collect();
            (k, t.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = halves
        .iter()
        .map(|(k, s, d)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(
        dir.path()
            .join("vae/diffusion_pytorch_model.fp16.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    let sd =
        StableDiffusion::from_diffusers_dir(dir.path(), &device, LoadOptions::default()).unwrap();
    let expected = Expected::open(&fixture("sd15-tiny").join("expected.safetensors"));
    let got = sd
        .vae
        .decode(expected.tensor::<4>("vae_decode_latents", &device));
    let (want, _) = expected.floats("vae_decode_out");
    // f16 weights: agreement to half precision.
    assert_close("fp16 VAE decode", &values(got), &want, 1e-2);
}
