//! HiDiffusion against the official code (hidiffusion 0.1.10 on diffusers 0.33.1,
//! fixtures from tools/reference/hidiffusion/make_hidiffusion_fixtures.py): the
//! official `apply_hidiffusion` on the tiny SD 1.5 and SDXL layouts at sizes that
//! trigger RAD, RAU, the T2 pooling, MSW-MSA (odd sizes included), SDXL's aggressive
//! schedule and SDXL-turbo, with the official random window shift patched to the cycle
//! 0, 1, 2, 3 quarter windows. Each recorded UNet call (inside and after T1) and the
//! final latents of each run match within 1e-4 relative.

use crate::common::{Expected, assert_close, fixture, model_dir, values};
use burn::tensor::{Device, Tensor};
use hidiffusion::msw_msa::CycledShifts;
use hidiffusion::pipeline::{LoadOptions, ModelKind, Request, StableDiffusion};
use hidiffusion::{HiDiffusion, HiDiffusionConfig};
use serde_json::Value;

const TOL: f32 = 1e-4;

struct Run {
    name: String,
    desc: Value,
}

fn runs() -> (Vec<Run>, Expected) {
    let all: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("hidiffusion.json")).unwrap())
            .unwrap();
    let runs = all["runs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| Run {
            name: k.clone(),
            desc: v.clone(),
        })
        .collect();
    (runs, Expected::open(&fixture("hidiffusion.safetensors")))
}

/// The HiDiffusion settings the official run used.
fn config(run: &Run, kind: ModelKind) -> HiDiffusionConfig {
    let d = &run.desc;
    let kwargs = &d["apply_hidiffusion_kwargs"];
    let mut config = HiDiffusionConfig::for_model(kind);
    config.rau_net = kwargs["apply_raunet"].as_bool().unwrap_or(true);
    config.msw_msa = kwargs["apply_window_attn"].as_bool().unwrap_or(true);
    if let Some(patch) = d["preset_patch"].as_object() {
        if let Some(presets) = patch
            .get("switching_threshold_ratio_dict")
            .and_then(Value::as_object)
        {
            for ratios in presets.values() {
                config.t1_ratio = ratios["T1_ratio"].as_f64();
                config.t2_ratio = ratios["T2_ratio"].as_f64();
            }
        }
        if let Some(aggressive) = patch.get("is_aggressive_raunet").and_then(Value::as_bool) {
            config.aggressive = Some(aggressive);
        }
    }
    config
}

fn check(run: &Run, expected: &Expected) {
    let d = &run.desc;
    let folder = d["pipeline_folder"].as_str().unwrap();
    let dir = model_dir(folder);
    let device = Device::flex();
    let turbo = d["name_or_path"].as_str().unwrap().contains("turbo");
    let mut options = LoadOptions::default();
    if turbo {
        options.kind = Some(ModelKind::SdxlTurbo);
        // The turbo run used SDXL-turbo's scheduler.
        let mut scheduler = d["scheduler"].clone();
        scheduler["_class_name"] = scheduler["class"].clone();
        std::fs::write(
            dir.path().join("scheduler/scheduler_config.json"),
            scheduler.to_string(),
        )
        .unwrap();
    }
    let sd = StableDiffusion::from_diffusers_dir(dir.path(), &device, options).unwrap();
    let config = config(run, sd.kind);
    let [h, w] = [
        d["latent_hw"][0].as_u64().unwrap() as usize,
        d["latent_hw"][1].as_u64().unwrap() as usize,
    ];
    let steps = d["num_inference_steps"].as_u64().unwrap() as usize;
    let per_call = d["shift_draws_per_unet_call"].as_u64().unwrap() as usize;
    let mut request = Request::new(d["prompt"].as_str().unwrap(), sd.kind);
    request.negative_prompt = d["negative_prompt"].as_str().map(str::to_string);
    request.guidance = d["guidance_scale"].as_f64().unwrap();
    request.steps = steps;
    request.width = w * 8;
    request.height = h * 8;
    let shifts = |start: usize| {
        Box::new(CycledShifts {
            cycle: vec![0, 1, 2, 3],
            next: start,
        })
    };
    let name = &run.name;

    // Single UNet calls inside and after the thresholds.
    let embeddings = sd.encode_prompt(&request).unwrap();
    let guided = request.guidance > 1.0;
    for step in d["recorded_steps"].as_array().unwrap() {
        let i = step.as_u64().unwrap() as usize;
        let mut hooks = HiDiffusion::with_shifts(config, shifts(i * per_call));
        hooks.set_step(i, steps);
        let x = expected.tensor::<4>(&format!("{name}_step{i}_unet_input"), &device);
        let x = if guided {
            Tensor::cat(vec![x.clone(), x], 0)
        } else {
            x
        };
        let t = d["timesteps"][i].as_f64().unwrap();
        let got = sd.unet.forward_with(
            x,
            t,
            &embeddings.context,
            embeddings.added.as_ref(),
            &mut hooks,
        );
        let (want, _) = expected.floats(&format!("{name}_step{i}_unet_out"));
        assert_close(
            &format!("{name} step {i} UNet ({:?})", hooks.active()),
            &values(got),
            &want,
            TOL,
        );
    }

    // The whole run from the recorded initial latents.
    request.init_latents = Some(expected.tensor::<4>(&format!("{name}_latents_init"), &device));
    let mut hooks = HiDiffusion::with_shifts(config, shifts(0));
    let latents = if turbo {
        let (noise, shape) = expected.floats("sdxl_turbo_ancestral_noise");
        let per_step: usize = shape[1..].iter().product();
        let mut source = |index: usize, dims: [usize; 4]| {
            let values = noise[index * per_step..(index + 1) * per_step].to_vec();
            Tensor::<4>::from_data(burn::tensor::TensorData::new(values, dims), &device)
        };
        sd.sample_with_noise(&request, &mut hooks, &mut source, &mut |_| {})
            .unwrap()
    } else {
        sd.sample(&request, &mut hooks, &mut |_| {}).unwrap()
    };
    let (want, _) = expected.floats(&format!("{name}_final_latents"));
    assert_close(
        &format!("{name} final latents"),
        &values(latents),
        &want,
        TOL,
    );
}

fn check_named(names: &[&str]) {
    let (runs, expected) = runs();
    for name in names {
        let run = runs
            .iter()
            .find(|r| r.name == *name)
            .unwrap_or_else(|| panic!("no run {name}"));
        check(run, &expected);
    }
}

#[test]
fn sd15_rau_net_and_msw_msa_match_the_official_code() {
    check_named(&["sd15_t1", "sd15_raunet_only", "sd15_mswmsa_only"]);
}

#[test]
fn sd15_t2_pooling_and_odd_sizes_match_the_official_code() {
    check_named(&["sd15_t2", "sd15_odd"]);
}

#[test]
fn sdxl_schedules_and_turbo_match_the_official_code() {
    check_named(&["sdxl_aggressive", "sdxl_4096", "sdxl_turbo"]);
}

#[test]
fn every_recorded_run_is_covered() {
    let (runs, _) = runs();
    let mut names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "sd15_mswmsa_only",
            "sd15_odd",
            "sd15_raunet_only",
            "sd15_t1",
            "sd15_t2",
            "sdxl_4096",
            "sdxl_aggressive",
            "sdxl_turbo"
        ]
    );
}

#[test]
fn schedules_follow_the_official_thresholds() {
    // N = 50 as the paper runs: SD 1.5 at 1024 px RADs 20 steps; at 2048 px 35 steps
    // with 15 pooled; SDXL below 4096 px RADs 8 then pools to 20; turbo at 4 steps pools 2.
    let count = |config: HiDiffusionConfig, n: usize, latent: [usize; 2]| {
        (0..n).fold((0, 0), |(r, p), i| {
            let a = config.active(i, n, latent);
            (r + a.rad as usize, p + a.pool as usize)
        })
    };
    assert_eq!(
        count(HiDiffusionConfig::for_model(ModelKind::Sd1), 50, [128, 128]),
        (20, 0)
    );
    assert_eq!(
        count(HiDiffusionConfig::for_model(ModelKind::Sd1), 50, [256, 256]),
        (35, 15)
    );
    // Both sides must reach 256 for the 2048 preset.
    assert_eq!(
        count(HiDiffusionConfig::for_model(ModelKind::Sd2), 50, [256, 128]),
        (20, 0)
    );
    let xl = HiDiffusionConfig::for_model(ModelKind::Sdxl);
    assert_eq!(count(xl, 50, [256, 256]), (8, 12));
    assert!(xl.active(7, 50, [256, 256]).rad && !xl.active(8, 50, [256, 256]).rad);
    assert_eq!(count(xl, 50, [512, 512]), (15, 35));
    assert_eq!(
        count(
            HiDiffusionConfig::for_model(ModelKind::SdxlTurbo),
            4,
            [128, 128]
        ),
        (0, 2)
    );
    // int(90 * 0.7) = 62 (the f64 product), not 63.
    assert_eq!(
        count(HiDiffusionConfig::for_model(ModelKind::Sd1), 90, [256, 256]).0,
        62
    );
}

#[test]
fn multiply_adds_follow_the_arithmetic_of_each_mechanism() {
    use hidiffusion::cost::{CountedMechanisms, unet_macs};
    let dir = model_dir("sd15-tiny");
    let sd =
        StableDiffusion::from_diffusers_dir(dir.path(), &Device::flex(), LoadOptions::default())
            .unwrap();
    let latent = [32, 32];
    let vanilla = unet_macs(&sd.unet, 1, latent, 77, CountedMechanisms::default());
    // Quadrupling the area quadruples every convolution.
    let double = unet_macs(&sd.unet, 1, [64, 64], 77, CountedMechanisms::default());
    assert_eq!(double.conv, 4.0 * vanilla.conv);
    // MSW-MSA on the 5 top self-attentions (1024 tokens, 16 channels): 4 windows of 256
    // tokens keep a quarter of the score pairs.
    let windows = unet_macs(
        &sd.unet,
        1,
        latent,
        77,
        CountedMechanisms {
            windows: Some((0, 3)),
            ..Default::default()
        },
    );
    let n = 1024.0;
    assert_eq!(
        vanilla.attention - windows.attention,
        5.0 * 0.75 * 2.0 * n * n * 16.0
    );
    assert_eq!(windows.conv, vanilla.conv);
    // RAD shrinks every level below the top 4x instead of 2x: fewer multiply-adds than
    // vanilla, more than the whole UNet at half the latent side (whose top level is also
    // halved).
    let rad = unet_macs(
        &sd.unet,
        1,
        latent,
        77,
        CountedMechanisms {
            rad: Some(0),
            ..Default::default()
        },
    );
    assert!(rad.total() < vanilla.total());
    let small = unet_macs(&sd.unet, 1, [16, 16], 77, CountedMechanisms::default());
    assert!(
        rad.total() > small.total(),
        "the top level still runs at full size"
    );
}
