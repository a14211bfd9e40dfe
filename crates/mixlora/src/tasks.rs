//! The eight commonsense tasks of the MixLoRA paper, read from their public JSON / JSONL
//! files (`cargo xtask fetch arc boolq openbookqa piqa siqa hellaswag winogrande`), with
//! MoE-PEFT's prompt templates and label sets; and a synthetic multi-task suite over
//! token ids for models without a tokenizer or data.
//!
//! As MoE-PEFT (`tasks/qa_tasks.py`, `evaluator.py`): training text is the prompt, a
//! space and the answer label; evaluation reads the logits of the last prompt token,
//! keeps only the label tokens (`encode(" " + label)[-1]`) and takes the argmax. ARC
//! scores over all nine labels `1-4, A-E` (some answer keys are digits); ARC and
//! OpenBookQA evaluate on the test split, the others on validation. BoolQ's prompt has
//! no passage, as the official template.

use std::path::{Path, PathBuf};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::weights::ModelError;

/// A commonsense task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// ARC-Easy.
    ArcEasy,
    /// ARC-Challenge.
    ArcChallenge,
    /// BoolQ.
    BoolQ,
    /// OpenBookQA.
    OpenBookQa,
    /// PIQA.
    Piqa,
    /// Social IQa.
    Siqa,
    /// HellaSwag.
    HellaSwag,
    /// WinoGrande.
    WinoGrande,
}

/// Train or evaluation split (the split the paper evaluates on: test for ARC and OBQA,
/// validation for the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training data.
    Train,
    /// Evaluation data.
    Eval,
}

/// One example: its prompt and the index of its answer in the task's labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Prompt text (without the answer).
    pub prompt: String,
    /// Index into [`Task::labels`].
    pub answer: usize,
}

impl Task {
    /// All eight, in the paper's table order.
    pub const ALL: [Task; 8] = [
        Task::ArcEasy,
        Task::ArcChallenge,
        Task::BoolQ,
        Task::OpenBookQa,
        Task::Piqa,
        Task::Siqa,
        Task::HellaSwag,
        Task::WinoGrande,
    ];

    /// MoE-PEFT's task name.
    pub fn name(self) -> &'static str {
        match self {
            Task::ArcEasy => "arc-e",
            Task::ArcChallenge => "arc-c",
            Task::BoolQ => "boolq",
            Task::OpenBookQa => "obqa",
            Task::Piqa => "piqa",
            Task::Siqa => "siqa",
            Task::HellaSwag => "hellaswag",
            Task::WinoGrande => "winogrande",
        }
    }

    /// The task called `name`.
    pub fn from_name(name: &str) -> Result<Task, String> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| {
                format!(
                    "unknown task {name:?}; known: {}",
                    Task::ALL.map(|t| t.name()).join(", ")
                )
            })
    }

    /// The answer labels the evaluation restricts the logits to.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            Task::ArcEasy | Task::ArcChallenge => &["1", "2", "3", "4", "A", "B", "C", "D", "E"],
            Task::BoolQ => &["true", "false"],
            Task::OpenBookQa | Task::HellaSwag => &["A", "B", "C", "D"],
            Task::Piqa | Task::WinoGrande => &["A", "B"],
            Task::Siqa => &["A", "B", "C"],
        }
    }

    /// The `cargo xtask fetch` dataset holding the task.
    pub fn dataset(self) -> &'static str {
        match self {
            Task::ArcEasy | Task::ArcChallenge => "arc",
            Task::BoolQ => "boolq",
            Task::OpenBookQa => "openbookqa",
            Task::Piqa => "piqa",
            Task::Siqa => "siqa",
            Task::HellaSwag => "hellaswag",
            Task::WinoGrande => "winogrande",
        }
    }

    /// (data file, optional label file) names of `split`, found anywhere under the
    /// dataset folder (the archives unpack into version-named subfolders).
    fn files(self, split: Split) -> (&'static str, Option<&'static str>) {
        let train = split == Split::Train;
        match self {
            Task::ArcEasy => (
                if train {
                    "ARC-Easy-Train.jsonl"
                } else {
                    "ARC-Easy-Test.jsonl"
                },
                None,
            ),
            Task::ArcChallenge => (
                if train {
                    "ARC-Challenge-Train.jsonl"
                } else {
                    "ARC-Challenge-Test.jsonl"
                },
                None,
            ),
            Task::BoolQ => (if train { "train.jsonl" } else { "dev.jsonl" }, None),
            Task::OpenBookQa => (if train { "train.jsonl" } else { "test.jsonl" }, None),
            Task::Piqa | Task::Siqa => {
                if train {
                    ("train.jsonl", Some("train-labels.lst"))
                } else {
                    ("dev.jsonl", Some("dev-labels.lst"))
                }
            }
            Task::HellaSwag => (
                if train {
                    "hellaswag_train.jsonl"
                } else {
                    "hellaswag_val.jsonl"
                },
                None,
            ),
            Task::WinoGrande => (
                if train {
                    "train_debiased.jsonl"
                } else {
                    "dev.jsonl"
                },
                None,
            ),
        }
    }

    /// Reads `split` from `<data_dir>/<dataset>/...`.
    pub fn load(self, data_dir: &Path, split: Split) -> Result<Vec<Example>, ModelError> {
        let root = data_dir.join(self.dataset());
        let (data_name, labels_name) = self.files(split);
        // OpenBookQA keeps its main set under Data/Main (Data/Additional has another
        // train.jsonl).
        let prefer = if self == Task::OpenBookQa {
            Some("Main")
        } else {
            None
        };
        let data = find_file(&root, data_name, prefer).ok_or_else(|| ModelError::Io {
            path: root.join(data_name),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "not found under {}; run `cargo xtask fetch {}`",
                    root.display(),
                    self.dataset()
                ),
            ),
        })?;
        let labels: Option<Vec<String>> = match labels_name {
            Some(name) => {
                let dir = data.parent().unwrap_or(&root);
                let path = dir.join(name);
                let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
                    path: path.clone(),
                    source,
                })?;
                Some(
                    text.lines()
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty())
                        .collect(),
                )
            }
            None => None,
        };
        let text = std::fs::read_to_string(&data).map_err(|source| ModelError::Io {
            path: data.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let bad = |message: String| ModelError::Config {
                path: data.clone(),
                message: format!("line {}: {message}", i + 1),
            };
            let row: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
            let label = match &labels {
                Some(l) => Some(
                    l.get(out.len())
                        .ok_or_else(|| bad("no label for this row in the label file".into()))?
                        .clone(),
                ),
                None => None,
            };
            out.push(self.example(&row, label.as_deref()).map_err(bad)?);
        }
        Ok(out)
    }

    /// The prompt and answer of one JSON row (`label`: the separate label file's line).
    pub fn example(self, row: &Value, label: Option<&str>) -> Result<Example, String> {
        let s = |v: &Value, key: &str| -> Result<String, String> {
            v.get(key)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("missing string field {key:?}"))
        };
        let answer_index = |text: &str| -> Result<usize, String> {
            self.labels()
                .iter()
                .position(|l| *l == text)
                .ok_or_else(|| format!("answer {text:?} is not one of {:?}", self.labels()))
        };
        match self {
            Task::ArcEasy | Task::ArcChallenge | Task::OpenBookQa => {
                // The original files nest {stem, choices: [{text, label}]} in "question";
                // the Hugging Face exports flatten them.
                let (question, choices): (String, Vec<(String, String)>) = match row.get("question")
                {
                    Some(Value::Object(q)) => {
                        let stem = q
                            .get("stem")
                            .and_then(Value::as_str)
                            .ok_or("missing question.stem")?;
                        let choices = q
                            .get("choices")
                            .and_then(Value::as_array)
                            .ok_or("missing question.choices")?;
                        let pairs = choices
                            .iter()
                            .map(|c| Ok((s(c, "label")?, s(c, "text")?)))
                            .collect::<Result<Vec<_>, String>>()?;
                        (stem.to_string(), pairs)
                    }
                    _ => {
                        let question = s(row, "question").or_else(|_| s(row, "question_stem"))?;
                        let choices = row.get("choices").ok_or("missing choices")?;
                        let labels = choices
                            .get("label")
                            .and_then(Value::as_array)
                            .ok_or("missing choices.label")?;
                        let texts = choices
                            .get("text")
                            .and_then(Value::as_array)
                            .ok_or("missing choices.text")?;
                        let pairs = labels
                            .iter()
                            .zip(texts)
                            .map(|(l, t)| {
                                (
                                    l.as_str().unwrap_or_default().to_string(),
                                    t.as_str().unwrap_or_default().to_string(),
                                )
                            })
                            .collect();
                        (question, pairs)
                    }
                };
                let options: Vec<String> =
                    choices.iter().map(|(l, t)| format!("({l}) {t}")).collect();
                Ok(Example {
                    prompt: format!(
                        "Please choose the correct answer to the question: {question} {}\nAnswer:",
                        options.join(" ")
                    ),
                    answer: answer_index(&s(row, "answerKey")?)?,
                })
            }
            Task::BoolQ => {
                let answer = row
                    .get("answer")
                    .and_then(Value::as_bool)
                    .ok_or("missing boolean answer")?;
                Ok(Example {
                    prompt: format!(
                        "Please answer the following question with true or false: {}?\nAnswer:",
                        s(row, "question")?
                    ),
                    answer: if answer { 0 } else { 1 },
                })
            }
            Task::Piqa => {
                let label = label_number(row, label)?;
                Ok(Example {
                    prompt: format!(
                        "Below is a common task along with two possible solutions labeled (A) and (B). Please select the appropriate solution to achieve the task:\n{}\n\n(A) {}\n(B) {}\n\nCorrect solution:",
                        s(row, "goal")?,
                        s(row, "sol1")?,
                        s(row, "sol2")?
                    ),
                    answer: check(label, 2)?,
                })
            }
            Task::Siqa => {
                let label = label_number(row, label)?;
                Ok(Example {
                    prompt: format!(
                        "Please choose the correct answer to the question.\nQuestion: {} {}\n(A) {}\n(B) {}\n(C) {}\nAnswer:",
                        s(row, "context")?,
                        s(row, "question")?,
                        s(row, "answerA")?,
                        s(row, "answerB")?,
                        s(row, "answerC")?
                    ),
                    answer: check(label.checked_sub(1).ok_or("label 0 is not 1, 2 or 3")?, 3)?,
                })
            }
            Task::HellaSwag => {
                let endings = row
                    .get("endings")
                    .and_then(Value::as_array)
                    .ok_or("missing endings")?;
                if endings.len() != 4 {
                    return Err(format!("{} endings, expected 4", endings.len()));
                }
                let e = |i: usize| endings[i].as_str().unwrap_or_default();
                let label = label_number(row, None)?;
                Ok(Example {
                    prompt: format!(
                        "Please choose the correct ending to complete the given sentence.\nSentence: {}. {}\n(A) {}\n(B) {}\n(C) {}\n(D) {}\nAnswer:",
                        s(row, "activity_label")?,
                        s(row, "ctx")?,
                        e(0),
                        e(1),
                        e(2),
                        e(3)
                    ),
                    answer: check(label, 4)?,
                })
            }
            Task::WinoGrande => {
                let answer: usize = s(row, "answer")?
                    .parse()
                    .map_err(|_| "answer is not 1 or 2")?;
                Ok(Example {
                    prompt: format!(
                        "Please choose the correct answer to fill in the blank to complete the given sentence.\nSentence: {}\n(A) {}\n(B) {}\nAnswer:",
                        s(row, "sentence")?,
                        s(row, "option1")?,
                        s(row, "option2")?
                    ),
                    answer: check(answer.checked_sub(1).ok_or("answer 0 is not 1 or 2")?, 2)?,
                })
            }
        }
    }
}

/// The numeric label of a row: the label file's line when the task keeps labels apart
/// (PIQA, SIQA), else the row's `label` field (a number or a numeric string).
fn label_number(row: &Value, label: Option<&str>) -> Result<usize, String> {
    let text = match (label, row.get("label")) {
        (Some(l), _) => l.to_string(),
        (None, Some(Value::String(t))) => t.clone(),
        (None, Some(v)) => v.to_string(),
        (None, None) => return Err("missing label".into()),
    };
    text.trim()
        .parse()
        .map_err(|_| format!("label {text:?} is not a number"))
}

fn check(index: usize, n: usize) -> Result<usize, String> {
    if index < n {
        Ok(index)
    } else {
        Err(format!("answer index {index} is outside 0..{n}"))
    }
}

/// The first file called `name` under `root` (depth first, sorted), preferring a path
/// through a folder called `prefer`.
fn find_file(root: &Path, name: &str, prefer: Option<&str>) -> Option<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == name) {
                found.push(path);
            }
        }
    }
    found.sort();
    match prefer {
        Some(p) => found
            .iter()
            .find(|f| f.components().any(|c| c.as_os_str() == p))
            .cloned()
            .or_else(|| found.first().cloned()),
        None => found.into_iter().next(),
    }
}

/// A tokenised example: prompt ids and the answer's index into the label token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenExample {
    /// Prompt token ids (the model predicts the answer at the last one).
    pub prompt: Vec<i64>,
    /// Index into the task's label tokens.
    pub answer: usize,
    /// Which task it belongs to (index into the run's task list).
    pub task: usize,
}

/// A task over token ids with its label tokens.
#[derive(Debug, Clone)]
pub struct TokenTask {
    /// Name.
    pub name: String,
    /// Label token ids (the answer is one of them).
    pub label_tokens: Vec<i64>,
    /// Training examples.
    pub train: Vec<TokenExample>,
    /// Evaluation examples.
    pub eval: Vec<TokenExample>,
}

/// The synthetic suite: four tasks over the same inputs and the same four answer
/// tokens that ask for different answers, so one adapter has to tell them apart by the
/// task token: the multi-task setting of the paper in miniature. A prompt is
/// `[task token, 8 symbols, answer marker]`: three of the four key symbols appear once
/// each among distractors, and task `t` answers `(missing key + t) mod 4`. Vocabulary
/// ids 3..: 4 task tokens, the marker, 4 answer tokens, 4 keys, 4 distractors (ids below
/// 3 are left to BOS/EOS/pad).
pub fn synthetic_suite(train_per_task: usize, eval_per_task: usize, seed: u64) -> Vec<TokenTask> {
    const TASK_TOKENS: i64 = 3;
    const MARKER: i64 = 7;
    const ANSWERS: i64 = 8;
    const KEYS: i64 = 12;
    const DISTRACTORS: i64 = 16;
    const LENGTH: usize = 8;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..4)
        .map(|task| {
            let mut make = |n: usize| -> Vec<TokenExample> {
                (0..n)
                    .map(|_| {
                        let missing = rng.random_range(0..4usize);
                        let mut symbols: Vec<i64> = (0..4)
                            .filter(|&k| k != missing)
                            .map(|k| KEYS + k as i64)
                            .collect();
                        while symbols.len() < LENGTH {
                            symbols.push(DISTRACTORS + rng.random_range(0..4i64));
                        }
                        // Fisher-Yates, so the keys land anywhere.
                        for i in (1..symbols.len()).rev() {
                            symbols.swap(i, rng.random_range(0..=i));
                        }
                        let mut prompt = vec![TASK_TOKENS + task as i64];
                        prompt.extend(symbols);
                        prompt.push(MARKER);
                        TokenExample {
                            prompt,
                            answer: (missing + task) % 4,
                            task,
                        }
                    })
                    .collect()
            };
            TokenTask {
                name: format!("missing+{task}"),
                label_tokens: (0..4).map(|c| ANSWERS + c).collect(),
                train: make(train_per_task),
                eval: make(eval_per_task),
            }
        })
        .collect()
}

/// The vocabulary size the synthetic suite needs.
pub const SYNTHETIC_VOCAB: usize = 20;

/// Training and evaluation examples of `tasks` (training on the answer token only:
/// the synthetic prompts are random symbols with nothing to predict).
pub fn token_examples(
    tasks: &[TokenTask],
) -> (
    Vec<crate::train::TrainExample>,
    Vec<crate::train::EvalExample>,
) {
    let mut train = Vec::new();
    let mut eval = Vec::new();
    for task in tasks {
        for e in &task.train {
            let mut ids = e.prompt.clone();
            ids.push(task.label_tokens[e.answer]);
            train.push(crate::train::TrainExample {
                loss_from: ids.len() - 1,
                ids,
            });
        }
        for e in &task.eval {
            eval.push(crate::train::EvalExample {
                prompt: e.prompt.clone(),
                labels: task.label_tokens.clone(),
                answer: e.answer,
                task: e.task,
            });
        }
    }
    (train, eval)
}

/// The frozen base of the synthetic suite: a 2-layer LLaMA-style decoder (hidden 64,
/// 4 query / 2 key-value heads, SwiGLU 128) with seeded random weights, the same for
/// every method compared.
pub fn synthetic_base(device: &burn::tensor::Device, seed: u64) -> crate::model::Decoder {
    let config: crate::config::DecoderConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama", "vocab_size": SYNTHETIC_VOCAB, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "max_position_embeddings": 64
    }))
    .expect("a valid config");
    device.seed(seed);
    crate::weights::random_decoder(&config, 0.125, device).expect("a valid decoder")
}

/// Examples of text tasks tokenised with `tokenizer`: training sequences are the prompt,
/// a space and the label (BOS first, cut to `cutoff` tokens), the loss over the whole
/// sequence as MoE-PEFT trains; evaluation prompts with the label tokens
/// `encode(" " + label)[-1]`.
pub fn text_examples(
    tokenizer: &crate::text::TextTokenizer,
    per_task: &[(Task, Vec<Example>, Vec<Example>)],
    cutoff: usize,
) -> Result<
    (
        Vec<crate::train::TrainExample>,
        Vec<crate::train::EvalExample>,
    ),
    ModelError,
> {
    let mut train = Vec::new();
    let mut eval = Vec::new();
    for (index, (task, train_set, eval_set)) in per_task.iter().enumerate() {
        let labels: Vec<i64> = task
            .labels()
            .iter()
            .map(|l| {
                tokenizer
                    .encode(&format!(" {l}"), false)
                    .map(|ids| *ids.last().expect("a label encodes to a token"))
            })
            .collect::<Result<_, _>>()?;
        for e in train_set {
            let mut ids =
                tokenizer.encode(&format!("{} {}", e.prompt, task.labels()[e.answer]), true)?;
            ids.truncate(cutoff);
            train.push(crate::train::TrainExample { ids, loss_from: 1 });
        }
        for e in eval_set {
            let mut prompt = tokenizer.encode(&e.prompt, true)?;
            prompt.truncate(cutoff);
            eval.push(crate::train::EvalExample {
                prompt,
                labels: labels.clone(),
                answer: e.answer,
                task: index,
            });
        }
    }
    Ok((train, eval))
}
