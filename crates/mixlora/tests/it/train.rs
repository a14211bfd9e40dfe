//! Fine-tuning: the synthetic multi-task suite is learnt by LoRA and MixLoRA, an
//! interrupted run resumes to the same adapter, runs are refused when they would
//! overwrite or mismatch, and the eight commonsense tasks read their public files into
//! MoE-PEFT's prompts.

use burn::module::Module;
use burn::tensor::Device;
use mixlora::finetune::{AdapterSpec, fine_tune, trainable_parameters};
use mixlora::tasks::{Split, Task, synthetic_base, synthetic_suite, token_examples};
use mixlora::train::{TrainOptions, evaluate};
use serde_json::json;

fn options(epochs: usize) -> TrainOptions {
    TrainOptions {
        lr: 3e-3,
        batch: 16,
        micro_batch: 8,
        epochs,
        weight_decay: 0.0,
        seed: 1,
        ..TrainOptions::default()
    }
}

#[test]
fn lora_and_mixlora_learn_the_synthetic_suite() {
    let device = Device::flex().autodiff();
    let suite = synthetic_suite(256, 128, 7);
    let (train, eval) = token_examples(&suite);
    let chance = 0.25;
    for (method, r) in [("lora", 11), ("mixlora", 4)] {
        let spec = AdapterSpec::for_method(method, r, 2 * r, 4, 2, 0.0).unwrap();
        let base = synthetic_base(&device, 3);
        let out = tempfile::tempdir().unwrap();
        let (model, state) = fine_tune(
            base,
            &spec,
            &train,
            &options(4),
            out.path(),
            1000,
            false,
            None,
            json!({"method": method}),
            &mut |_, _| {},
        )
        .unwrap();
        let (per_task, accuracy) = evaluate(&model.valid(), &eval, 64, 0);
        eprintln!(
            "{method}: {} trainable, accuracy {accuracy:.3} {per_task:?}, final loss {:.3}",
            trainable_parameters(&model),
            state.history.last().unwrap().loss
        );
        assert!(
            accuracy > chance + 0.15,
            "{method}: {accuracy} vs chance {chance}"
        );
    }
}

#[test]
fn fused_adapters_train_as_if_alone() {
    use mixlora::fused::{FusedAdapters, slot_view};
    use mixlora::train::{optimizer, train_steps};
    let device = Device::flex().autodiff();
    let suite = synthetic_suite(48, 0, 11);
    let (train, _) = token_examples(&suite);
    let specs = vec![
        AdapterSpec::for_method("lora", 4, 8, 4, 2, 0.0).unwrap(),
        AdapterSpec::for_method("mixlora", 2, 4, 4, 2, 0.0).unwrap(),
    ];
    let mut opts = options(1);
    opts.batch = 8;
    opts.micro_batch = 8;
    let base = synthetic_base(&device, 5);
    let mut fused = FusedAdapters::new(base, specs, vec![opts, opts], &device).unwrap();
    let alone: Vec<_> = (0..2).map(|s| slot_view(&fused.model, s)).collect();
    // Adapter 0 sees examples 0.., adapter 1 examples 100.. (different data).
    let data = [&train[..24], &train[100..124]];
    for step in 0..3 {
        let batches: Vec<Vec<&mixlora::train::TrainExample>> = data
            .iter()
            .map(|d| d[step * 8..(step + 1) * 8].iter().collect())
            .collect();
        fused.step(&batches);
    }
    for (slot, model) in alone.into_iter().enumerate() {
        let order: Vec<usize> = (0..24).collect();
        let mut optim = optimizer(&opts);
        let trained = train_steps(
            model,
            &mut optim,
            data[slot],
            &order,
            0..3,
            &opts,
            &mut |_, _| {},
        );
        let want = mixlora::finetune::trainable_parameters(&trained);
        let view = slot_view(&fused.model, slot);
        assert_eq!(mixlora::finetune::trainable_parameters(&view), want);
        let flat = |m: &mixlora::Decoder| -> Vec<f32> {
            struct Collect(Vec<f32>);
            impl burn::module::ModuleVisitor for Collect {
                fn visit_float<const D: usize>(
                    &mut self,
                    p: &burn::module::Param<burn::tensor::Tensor<D>>,
                ) {
                    if p.is_require_grad() {
                        self.0.extend(
                            p.val()
                                .inner()
                                .into_data()
                                .convert::<f32>()
                                .try_into_vec::<f32>()
                                .unwrap(),
                        );
                    }
                }
            }
            let mut c = Collect(Vec::new());
            burn::module::Module::visit(m, &mut c);
            c.0
        };
        let (a, b) = (flat(&view), flat(&trained));
        let worst = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst < 1e-5,
            "slot {slot}: fused and alone differ by {worst}"
        );
    }
}

#[test]
fn interrupted_runs_resume_exactly_and_mismatches_are_refused() {
    let device = Device::flex().autodiff();
    let suite = synthetic_suite(32, 0, 5);
    let (train, _) = token_examples(&suite);
    let spec = AdapterSpec::for_method("mixlora", 2, 4, 4, 2, 0.0).unwrap();
    let mut opts = options(1);
    opts.batch = 8;
    let run = |dir: &std::path::Path,
               stop: Option<usize>,
               resume: bool,
               description: serde_json::Value| {
        let base = synthetic_base(&device, 9);
        device.seed(4);
        fine_tune(
            base,
            &spec,
            &train,
            &opts,
            dir,
            2,
            resume,
            stop,
            description,
            &mut |_, _| {},
        )
    };
    let whole = tempfile::tempdir().unwrap();
    run(whole.path(), None, false, json!("a")).unwrap();
    let parts = tempfile::tempdir().unwrap();
    let (_, state) = run(parts.path(), Some(6), false, json!("a")).unwrap();
    assert_eq!(state.step, 6);
    assert!(
        run(parts.path(), None, false, json!("a"))
            .unwrap_err()
            .contains("--resume")
    );
    assert!(
        run(parts.path(), None, true, json!("b"))
            .unwrap_err()
            .contains("another run")
    );
    let (_, state) = run(parts.path(), None, true, json!("a")).unwrap();
    assert_eq!(state.step, state.total_steps);
    let read =
        |dir: &std::path::Path| std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let (a, b) = (read(whole.path()), read(parts.path()));
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    for (name, t) in a.tensors() {
        let u = b.tensor(&name).unwrap();
        let f = |d: &[u8]| {
            d.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<f32>>()
        };
        let worst = f(t.data())
            .iter()
            .zip(f(u.data()))
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(worst < 1e-6, "{name}: resumed differs by {worst}");
    }
    // A truncated optimizer file is named.
    let opt = parts.path().join("optimizer.bpk");
    let bytes = std::fs::read(&opt).unwrap();
    std::fs::write(&opt, &bytes[..bytes.len() / 2]).unwrap();
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(parts.path().join("state.json")).unwrap())
            .unwrap();
    state["step"] = 4.into();
    std::fs::write(parts.path().join("state.json"), state.to_string()).unwrap();
    assert!(
        run(parts.path(), None, true, json!("a"))
            .unwrap_err()
            .contains("optimizer.bpk")
    );
}

#[test]
fn commonsense_rows_become_the_official_prompts() {
    let cases = [
        (
            Task::ArcEasy,
            json!({"question": {"stem": "Which is a gas?", "choices": [{"text": "ice", "label": "A"}, {"text": "steam", "label": "B"}]}, "answerKey": "B"}),
            None,
            "Please choose the correct answer to the question: Which is a gas? (A) ice (B) steam\nAnswer:",
            5,
        ),
        (
            Task::BoolQ,
            json!({"question": "is the sky blue", "answer": true, "passage": "ignored"}),
            None,
            "Please answer the following question with true or false: is the sky blue?\nAnswer:",
            0,
        ),
        (
            Task::OpenBookQa,
            json!({"question": {"stem": "Q", "choices": [{"text": "a", "label": "A"}, {"text": "b", "label": "B"}, {"text": "c", "label": "C"}, {"text": "d", "label": "D"}]}, "answerKey": "D"}),
            None,
            "Please choose the correct answer to the question: Q (A) a (B) b (C) c (D) d\nAnswer:",
            3,
        ),
        (
            Task::Piqa,
            json!({"goal": "open a jar", "sol1": "twist", "sol2": "pull"}),
            Some("1"),
            "Below is a common task along with two possible solutions labeled (A) and (B). Please select the appropriate solution to achieve the task:\nopen a jar\n\n(A) twist\n(B) pull\n\nCorrect solution:",
            1,
        ),
        (
            Task::Siqa,
            json!({"context": "Kai ran.", "question": "Why?", "answerA": "late", "answerB": "bored", "answerC": "fun"}),
            Some("1"),
            "Please choose the correct answer to the question.\nQuestion: Kai ran. Why?\n(A) late\n(B) bored\n(C) fun\nAnswer:",
            0,
        ),
        (
            Task::HellaSwag,
            json!({"activity_label": "Cooking", "ctx": "He cracks an egg", "endings": ["e0", "e1", "e2", "e3"], "label": 2}),
            None,
            "Please choose the correct ending to complete the given sentence.\nSentence: Cooking. He cracks an egg\n(A) e0\n(B) e1\n(C) e2\n(D) e3\nAnswer:",
            2,
        ),
        (
            Task::WinoGrande,
            json!({"sentence": "The _ was big.", "option1": "cat", "option2": "car", "answer": "2"}),
            None,
            "Please choose the correct answer to fill in the blank to complete the given sentence.\nSentence: The _ was big.\n(A) cat\n(B) car\nAnswer:",
            1,
        ),
    ];
    for (task, row, label, prompt, answer) in cases {
        let e = task.example(&row, label).unwrap();
        assert_eq!(e.prompt, prompt, "{}", task.name());
        assert_eq!(e.answer, answer, "{}", task.name());
    }
    // ARC's nine labels include digits; an answer outside them is an error.
    assert_eq!(Task::ArcChallenge.labels().len(), 9);
    assert!(
        Task::Piqa
            .example(&json!({"goal": "g", "sol1": "a", "sol2": "b"}), Some("2"))
            .is_err()
    );

    // Files: PIQA's label file beside its data, a malformed line named with its number.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("piqa/physicaliqa-train-dev");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("dev.jsonl"), "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\"}\n{\"goal\": \"h\", \"sol1\": \"c\", \"sol2\": \"d\"}\n").unwrap();
    std::fs::write(root.join("dev-labels.lst"), "0\n1\n").unwrap();
    let examples = Task::Piqa.load(dir.path(), Split::Eval).unwrap();
    assert_eq!(
        examples.iter().map(|e| e.answer).collect::<Vec<_>>(),
        [0, 1]
    );
    std::fs::write(
        root.join("dev.jsonl"),
        "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\"}\n{not json\n",
    )
    .unwrap();
    let err = Task::Piqa
        .load(dir.path(), Split::Eval)
        .unwrap_err()
        .to_string();
    assert!(err.contains("dev.jsonl") && err.contains("line 2"), "{err}");
    let err = Task::BoolQ
        .load(dir.path(), Split::Eval)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cargo xtask fetch boolq"), "{err}");
}
