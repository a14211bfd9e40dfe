//! `hidiffusion generate` end to end on a tiny diffusers folder: a PNG from given
//! latents equal to diffusers' image, latents saved and read back, seeded runs
//! reproducible, bad input named.

use crate::common;
use std::process::Command;

use crate::common::{Expected, fixture, model_dir};

fn hidiffusion(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hidiffusion"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn generate_writes_the_image_diffusers_computes() {
    let model = model_dir("sd15-tiny");
    let work = tempfile::tempdir().unwrap();
    let expected = Expected::open(&fixture("sd15-tiny").join("expected.safetensors"));
    // The fixture's initial latents as an --init-latents file.
    let (values, shape) = expected.floats("pipe_latents_init");
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes).unwrap();
    let init = work.path().join("init.safetensors");
    std::fs::write(
        &init,
        safetensors::serialize([("latents", view)], None).unwrap(),
    )
    .unwrap();
    let png = work.path().join("out.png");
    let saved = work.path().join("final.safetensors");
    let m = model.path().to_str().unwrap();
    let out = hidiffusion(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "a photo of an astronaut riding a horse on mars",
        "--negative-prompt",
        "blurry, low quality",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "4",
        "--guidance",
        "7.5",
        "--init-latents",
        init.to_str().unwrap(),
        "--save-latents",
        saved.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = image::open(&png).unwrap().to_rgb8();
    assert_eq!(image.dimensions(), (64, 64));
    // diffusers' image in [0, 1], rounded to 8 bits as numpy_to_pil does.
    let (want, _) = expected.floats("pipe_image");
    let worst = image
        .as_raw()
        .iter()
        .zip(&want)
        .map(|(&got, &w)| (got as i32 - (w * 255.0).round() as i32).abs())
        .max()
        .unwrap();
    assert!(worst <= 1, "pixel differs by {worst} levels");
    let saved = Expected::open(&saved);
    let (latents, _) = saved.floats("latents");
    let (want, _) = expected.floats("pipe_final_latents");
    common::assert_close("saved latents", &latents, &want, 1e-4);

    // Seeded noise: the same seed gives the same image.
    let seeded = |path: &std::path::Path| {
        let out = hidiffusion(&[
            "generate",
            "--model",
            m,
            "--prompt",
            "a cat",
            "--width",
            "64",
            "--height",
            "72",
            "--steps",
            "2",
            "--seed",
            "3",
            "--sampler",
            "euler-a",
            "--out",
            path.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(path).unwrap()
    };
    assert_eq!(
        seeded(&work.path().join("a.png")),
        seeded(&work.path().join("b.png"))
    );

    // Bad input is named.
    let out = hidiffusion(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "x",
        "--width",
        "60",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("multiples of 8"));
    let out = hidiffusion(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "x",
        "--init-latents",
        png.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("out.png"));
    let out = hidiffusion(&[
        "generate",
        "--model",
        work.path().to_str().unwrap(),
        "--prompt",
        "x",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("model_index.json"));
}

#[test]
fn hidiffusion_generates_and_compares_at_a_higher_resolution() {
    let model = model_dir("sd15-tiny");
    let work = tempfile::tempdir().unwrap();
    let m = model.path().to_str().unwrap();
    // 4x the tiny model's 64 px: RAD and MSW-MSA both run.
    let png = work.path().join("hi.png");
    let out = hidiffusion(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "a cat",
        "--width",
        "256",
        "--height",
        "256",
        "--steps",
        "3",
        "--hidiffusion",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("RAU-Net true, MSW-MSA true"));
    assert_eq!(
        image::open(&png).unwrap().to_rgb8().dimensions(),
        (256, 256)
    );
    let grid = work.path().join("grid.png");
    let out = hidiffusion(&[
        "compare",
        "--model",
        m,
        "--prompt",
        "a cat",
        "--width",
        "256",
        "--height",
        "192",
        "--steps",
        "2",
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let grid = image::open(&grid).unwrap().to_rgb8();
    assert_eq!(grid.dimensions(), (2 * 256 + 16, 192));
    // The two halves differ (HiDiffusion changes the computation).
    let differing = (0..192)
        .flat_map(|y| (0..256).map(move |x| (x, y)))
        .filter(|&(x, y)| grid.get_pixel(x, y) != grid.get_pixel(x + 256 + 16, y))
        .count();
    assert!(differing > 1000, "only {differing} pixels differ");
    // HiDiffusion options without the switch are refused.
    let out = hidiffusion(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "x",
        "--no-msw-msa",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("need --hidiffusion"));
}

#[test]
fn msw_shift_index_fixes_the_window_shift_of_every_call() {
    use burn::tensor::Device;
    use hidiffusion::msw_msa::CycledShifts;
    use hidiffusion::pipeline::{LoadOptions, StableDiffusion};
    use hidiffusion::{HiDiffusion, HiDiffusionConfig};

    let model = model_dir("sd15-tiny");
    let work = tempfile::tempdir().unwrap();
    let m = model.path().to_str().unwrap();
    // 2x the tiny model's 64 px: MSW-MSA runs in the first down and last up blocks.
    let run = |index: &str| {
        let latents = work.path().join(format!("shift{index}.safetensors"));
        let out = hidiffusion(&[
            "generate",
            "--model",
            m,
            "--prompt",
            "a cat",
            "--width",
            "128",
            "--height",
            "128",
            "--steps",
            "2",
            "--hidiffusion",
            "--no-rau-net",
            "--msw-shift-index",
            index,
            "--save-latents",
            latents.to_str().unwrap(),
            "--out",
            work.path().join("x.png").to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Expected::open(&latents).floats("latents").0
    };
    let (zero, two) = (run("0"), run("2"));
    // The same as the library with the shift fixed at 2 quarter windows on every call.
    let device = Device::flex();
    let sd =
        StableDiffusion::from_diffusers_dir(model.path(), &device, LoadOptions::default()).unwrap();
    let mut request = sd.request("a cat");
    request.width = 128;
    request.height = 128;
    request.steps = 2;
    let config = HiDiffusionConfig {
        rau_net: false,
        ..HiDiffusionConfig::for_model(sd.kind)
    };
    let mut hooks = HiDiffusion::with_shifts(
        config,
        Box::new(CycledShifts {
            cycle: vec![2],
            next: 0,
        }),
    );
    let want = common::values(sd.sample(&request, &mut hooks, &mut |_| {}).unwrap());
    common::assert_close("--msw-shift-index 2 vs the library", &two, &want, 1e-6);
    // A different shift is a different computation.
    assert!(common::max_rel(&zero, &two) > 1e-4);
    // Only 0..=3 quarter windows exist.
    let out = hidiffusion(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "x",
        "--msw-shift-index",
        "4",
        "--out",
        work.path().join("x.png").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("msw-shift-index"));
}

#[test]
fn images_default_to_the_model_native_size() {
    // The tiny SD 1.5 UNet has sample_size 8 and an 8x VAE: 64 px, as diffusers'
    // `unet.config.sample_size * vae_scale_factor`.
    let model = model_dir("sd15-tiny");
    let work = tempfile::tempdir().unwrap();
    let png = work.path().join("native.png");
    let out = hidiffusion(&[
        "generate",
        "--model",
        model.path().to_str().unwrap(),
        "--prompt",
        "a cat",
        "--steps",
        "1",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model.path().join("unet/config.json")).unwrap(),
    )
    .unwrap();
    let native = config["sample_size"].as_u64().unwrap() as u32 * 8;
    assert_eq!(
        image::open(&png).unwrap().to_rgb8().dimensions(),
        (native, native)
    );
}
