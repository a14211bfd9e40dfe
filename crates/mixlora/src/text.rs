//! Text in and out of a model folder: the `tokenizer.json` of the Hugging Face
//! `tokenizers` library (the same Rust code transformers' fast tokenizers run), the
//! chat template and special tokens of `tokenizer_config.json` (rendered with
//! minijinja, as transformers renders it with Jinja2), and streaming detokenisation.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::weights::ModelError;

/// A model folder's tokenizer.
pub struct TextTokenizer {
    tokenizer: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    config_path: PathBuf,
}

/// `tokenizer_config.json` writes special tokens either as a string or as an
/// `AddedToken` object with a `content` field.
fn token_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The chat template of a tokenizer folder, from wherever the writing tool put it:
/// `chat_template.jinja` (transformers 5 and current hub models), `chat_template.json`
/// (`{"chat_template": ...}`, processors), or the `chat_template` field of
/// `tokenizer_config.json` (transformers 4: a string, or a list of named templates of
/// which "default" is used), in that order of precedence, as transformers reads them.
pub fn chat_template(dir: &Path, config: &Value) -> Result<Option<String>, ModelError> {
    let read = |path: PathBuf| -> Result<Option<String>, ModelError> {
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ModelError::Io { path, source }),
        }
    };
    let from_config = |value: &Value| match value.get("chat_template") {
        Some(Value::String(t)) => Some(t.clone()),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    };
    let jinja_path = dir.join("chat_template.jinja");
    if let Some(t) = read(jinja_path)? {
        return Ok(Some(t));
    }
    let json_path = dir.join("chat_template.json");
    if let Some(text) = read(json_path.clone())? {
        let value: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: json_path.clone(),
            message: e.to_string(),
        })?;
        return from_config(&value)
            .map(Some)
            .ok_or_else(|| ModelError::Config {
                path: json_path,
                message: "has no chat_template string".into(),
            });
    }
    Ok(from_config(config))
}

impl TextTokenizer {
    /// Reads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json` and the
    /// chat template (see [`chat_template`]).
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no tokenizer.json"),
            });
        }
        let tokenizer =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| ModelError::Config {
                path: config_path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
            Err(source) => {
                return Err(ModelError::Io {
                    path: config_path,
                    source,
                });
            }
        };
        let chat_template = chat_template(dir, &config)?;
        Ok(TextTokenizer {
            tokenizer,
            chat_template,
            bos_token: token_text(config.get("bos_token")),
            eos_token: token_text(config.get("eos_token")),
            config_path,
        })
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor
    /// (a LLaMA tokenizer's BOS), as transformers' `encode` does by default.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>, ModelError> {
        let encoding = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| ModelError::Config {
                path: self.config_path.with_file_name("tokenizer.json"),
                message: format!("cannot encode {text:?}: {e}"),
            })?;
        Ok(encoding.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// The text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[i64]) -> String {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.tokenizer.decode(&ids, true).unwrap_or_default()
    }

    /// Whether `tokenizer_config.json` carries a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// The prompt text of one user message under the chat template, ending with the
    /// assistant's turn (`add_generation_prompt`). Encode it without special tokens:
    /// the template writes them, as in transformers' `apply_chat_template`.
    pub fn chat_prompt(&self, user_message: &str) -> Result<String, ModelError> {
        let bad = |message: String| ModelError::Config {
            path: self.config_path.clone(),
            message,
        };
        let template = self.chat_template.as_deref().ok_or_else(|| {
            bad(
                "has no chat_template, and the folder has no chat_template.jinja or \
                     chat_template.json"
                    .into(),
            )
        })?;
        let mut env = minijinja::Environment::new();
        // Python string methods (`strip`, `startswith`, ...) that templates call.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| bad(format!("chat_template does not parse: {e}")))?;
        let context = serde_json::json!({
            "messages": [{"role": "user", "content": user_message}],
            "add_generation_prompt": true,
            "bos_token": self.bos_token.clone().unwrap_or_default(),
            "eos_token": self.eos_token.clone().unwrap_or_default(),
        });
        env.get_template("chat")
            .and_then(|t| t.render(minijinja::value::Serde(&context)))
            .map_err(|e| bad(format!("chat_template failed: {e}")))
    }
}

/// Turns a stream of token ids into text pieces as soon as they are final: a piece is
/// released when decoding the tokens so far extends the text already released and does
/// not end in an incomplete UTF-8 sequence (U+FFFD), so multi-token characters and
/// merged spaces come out whole.
pub struct TextStream<'a> {
    tokenizer: &'a TextTokenizer,
    ids: Vec<i64>,
    released: String,
}

impl<'a> TextStream<'a> {
    /// An empty stream.
    pub fn new(tokenizer: &'a TextTokenizer) -> Self {
        TextStream {
            tokenizer,
            ids: Vec::new(),
            released: String::new(),
        }
    }

    /// Adds a token; returns the new text it completes, if any.
    pub fn push(&mut self, id: i64) -> Option<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids);
        if text.ends_with('\u{FFFD}') || !text.starts_with(&self.released) {
            return None;
        }
        let piece = text[self.released.len()..].to_string();
        self.released = text;
        (!piece.is_empty()).then_some(piece)
    }

    /// Whatever text is still held back (an incomplete character at the very end).
    pub fn finish(&mut self) -> Option<String> {
        let text = self.tokenizer.decode(&self.ids);
        let piece = text.strip_prefix(&self.released)?.to_string();
        self.released = text;
        (!piece.is_empty()).then_some(piece)
    }
}
