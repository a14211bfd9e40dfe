//! DDIM and Euler ancestral against diffusers 0.33.1 (fixture from
//! tools/reference/hidiffusion/make_fixtures.py): noise schedule, timesteps for every
//! spacing, initial sigma, input scaling, and single steps for epsilon and v
//! prediction with and without noise.

use crate::common::{Expected, assert_close, fixture, values};
use burn::tensor::Device;
use hidiffusion::scheduler::{SamplerKind, Scheduler, SchedulerConfig};
use serde_json::Value;

fn configs() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("schedulers.json")).unwrap()).unwrap()
}

fn config(name: &str, class: &str, prediction: Option<&str>) -> SchedulerConfig {
    let mut value = configs()["configs"][name].clone();
    value["_class_name"] = class.into();
    if let Some(p) = prediction {
        value["prediction_type"] = p.into();
    }
    serde_json::from_value(value).unwrap()
}

#[test]
fn noise_schedule_and_timesteps_match_diffusers() {
    let expected = Expected::open(&fixture("schedulers.safetensors"));
    let (want, _) = expected.floats("alphas_cumprod");
    let got = config("ddim_leading", "DDIMScheduler", None).alphas_cumprod();
    assert_close("alphas_cumprod", &got, &want, 1e-6);
    for spacing in ["leading", "trailing", "linspace"] {
        let cfg = config(&format!("ddim_{spacing}"), "DDIMScheduler", None);
        for n in [4, 7, 10, 50] {
            let s = Scheduler::new(&cfg, Some(SamplerKind::Ddim), n, 0.0).unwrap();
            let (want, _) = expected.ints(&format!("ddim_{spacing}_timesteps_{n}"));
            let got: Vec<i64> = s.timesteps().iter().map(|&t| t as i64).collect();
            assert_eq!(got, want, "DDIM {spacing} {n}");
        }
    }
    let all = configs();
    for name in ["euler_a_turbo", "euler_a_leading", "euler_a_linspace"] {
        let cfg = config(name, "EulerAncestralDiscreteScheduler", None);
        for n in [1usize, 2, 4, 10] {
            let s = Scheduler::new(&cfg, None, n, 0.0).unwrap();
            let (want, _) = expected.floats(&format!("{name}_timesteps_{n}"));
            let got: Vec<f32> = s.timesteps().iter().map(|&t| t as f32).collect();
            assert_eq!(got, want, "{name} timesteps {n}");
            let sigma = all["euler_a"][name][n.to_string()]["init_noise_sigma"]
                .as_f64()
                .unwrap();
            assert!(
                (s.init_noise_sigma() - sigma).abs() <= 1e-5 * sigma,
                "{name} {n}: init sigma {} vs {sigma}",
                s.init_noise_sigma()
            );
            // scale_model_input divides by sqrt(sigma^2 + 1).
            let (want, _) = expected.floats(&format!("{name}_scale_model_input_{n}"));
            let device = Device::flex();
            for (i, w) in want.iter().enumerate() {
                let one = burn::tensor::Tensor::<4>::ones([1, 1, 1, 1], &device);
                let got = values(s.scale_model_input(one, i))[0];
                assert!(
                    (got - w).abs() <= 1e-6 * w.abs(),
                    "{name} {n} scale {i}: {got} vs {w}"
                );
            }
        }
    }
}

#[test]
fn single_steps_match_diffusers() {
    let device = Device::flex();
    let expected = Expected::open(&fixture("schedulers.safetensors"));
    let output = expected.tensor::<4>("ddim_step_model_output", &device);
    let sample = expected.tensor::<4>("ddim_step_sample", &device);
    let variance_noise = expected.tensor::<4>("ddim_step_variance_noise", &device);
    for prediction in ["epsilon", "v_prediction"] {
        for eta in [0.0, 1.0] {
            let cfg = config("ddim_leading", "DDIMScheduler", Some(prediction));
            let s = Scheduler::new(&cfg, None, 10, eta).unwrap();
            for (t, index) in [(901, 0), (501, 4), (1, 9)] {
                assert_eq!(s.timesteps()[index], t as f64);
                let key = format!("ddim_{prediction}_eta{}_t{t}_prev_sample", eta as i32);
                let noise = s.needs_noise(index).then(|| variance_noise.clone());
                assert_eq!(noise.is_some(), eta > 0.0, "{key}: noise needed");
                let got = values(s.step(output.clone(), index, sample.clone(), noise));
                let (want, _) = expected.floats(&key);
                assert_close(&key, &got, &want, 1e-5);
            }
        }
    }
    let noise = expected.tensor::<4>("euler_a_step_noise", &device);
    for name in ["euler_a_turbo", "euler_a_leading", "euler_a_linspace"] {
        let cfg = config(name, "EulerAncestralDiscreteScheduler", None);
        let s = Scheduler::new(&cfg, None, 4, 0.0).unwrap();
        for index in [0, 3] {
            let key = format!("{name}_step4_i{index}_prev_sample");
            let n = s.needs_noise(index).then(|| noise.clone());
            let got = values(s.step(output.clone(), index, sample.clone(), n));
            let (want, _) = expected.floats(&key);
            assert_close(&key, &got, &want, 1e-5);
        }
    }
}

#[test]
fn bad_scheduler_configs_are_refused_by_name() {
    let mut value = configs()["configs"]["ddim_leading"].clone();
    value["_class_name"] = "DDIMScheduler".into();
    value["timestep_spacing"] = "karras".into();
    let cfg: SchedulerConfig = serde_json::from_value(value).unwrap();
    let err = Scheduler::new(&cfg, None, 4, 0.0).unwrap_err();
    assert!(err.contains("karras"), "{err}");
    let cfg = config("ddim_leading", "DDIMScheduler", None);
    assert!(
        Scheduler::new(&cfg, None, 0, 0.0)
            .unwrap_err()
            .contains("steps")
    );
}
