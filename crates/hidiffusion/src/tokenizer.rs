//! The CLIP BPE tokenizer of Stable Diffusion's text encoders, built with the Hugging
//! Face `tokenizers` crate the way transformers converts `CLIPTokenizer` to a fast
//! tokenizer: NFC, whitespace runs to one space, lower case; split into `'s 't 're 've
//! 'm 'll 'd`, letter runs, single digits and other-symbol runs; byte-level
//! alphabet; BPE with the `</w>` end-of-word suffix. Prompts become exactly 77 ids:
//! `<|startoftext|>`, at most 75 tokens, `<|endoftext|>`, then padding (`<|endoftext|>`
//! for SD 1.x, `!` for SD 2.x and SDXL's second tokenizer).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as Normalizers};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::weights::{LoadError, io_error};

/// CLIP's context length.
pub const CONTEXT_LENGTH: usize = 77;
/// `<|startoftext|>` in the OpenAI vocabulary.
const START_OF_TEXT: &str = "<|startoftext|>";
/// `<|endoftext|>`.
const END_OF_TEXT: &str = "<|endoftext|>";
/// transformers' CLIP pre-tokenizer pattern.
const SPLIT_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// A CLIP tokenizer with its padding convention.
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    start: i64,
    end: i64,
    pad: i64,
    source: PathBuf,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("source", &self.source)
            .field("pad", &self.pad)
            .finish_non_exhaustive()
    }
}

impl ClipTokenizer {
    /// Reads a diffusers `tokenizer/` folder: `tokenizer.json` when present (what
    /// transformers 5 writes, without `vocab.json` / `merges.txt`), otherwise
    /// `vocab.json` and `merges.txt`; the pad token comes from `special_tokens_map.json`
    /// or `tokenizer_config.json` (default `<|endoftext|>`).
    pub fn from_dir(dir: &Path) -> Result<Self, LoadError> {
        let pad = pad_token(dir)?;
        let json_path = dir.join("tokenizer.json");
        if json_path.is_file() {
            return Self::from_tokenizer_json(&json_path, &pad);
        }
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let vocab_text = std::fs::read_to_string(&vocab_path).map_err(io_error(&vocab_path))?;
        let vocab: HashMap<String, u32> =
            serde_json::from_str(&vocab_text).map_err(|e| LoadError::Config {
                path: vocab_path.clone(),
                message: e.to_string(),
            })?;
        let merges_text = std::fs::read_to_string(&merges_path).map_err(io_error(&merges_path))?;
        let merges = merges_text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.starts_with("#version") && !line.trim().is_empty())
            .map(|(i, line)| parse_merge(line, i + 1, &merges_path))
            .collect::<Result<Vec<_>, _>>()?;
        Self::build(vocab, merges, &pad, &vocab_path)
    }

    /// A `tokenizer.json` as the `tokenizers` library (and transformers' fast CLIP
    /// tokenizer) writes it, with its own normalizer, pre-tokenizer and added tokens.
    /// Padding and truncation settings stored in the file are dropped: prompts are
    /// framed and padded to 77 ids by [`encode`](Self::encode), as the pipelines do.
    pub fn from_tokenizer_json(path: &Path, pad_token: &str) -> Result<Self, LoadError> {
        let mut tokenizer = Tokenizer::from_file(path).map_err(|e| LoadError::Config {
            path: path.to_path_buf(),
            message: format!("not a tokenizer.json: {e}"),
        })?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| LoadError::Config {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .map(i64::from)
                .ok_or_else(|| LoadError::Config {
                    path: path.to_path_buf(),
                    message: format!("the vocabulary has no {token:?}"),
                })
        };
        let (start, end, pad) = (id(START_OF_TEXT)?, id(END_OF_TEXT)?, id(pad_token)?);
        Ok(ClipTokenizer {
            tokenizer,
            start,
            end,
            pad,
            source: path.to_path_buf(),
        })
    }

    /// Builds the tokenizer from OpenAI's `bpe_simple_vocab_16e6.txt` (the merges list
    /// CLIP ships); see [`openai_vocabulary`].
    pub fn from_openai_merges(path: &Path, pad: &str) -> Result<Self, LoadError> {
        let (vocab, merges) = openai_vocabulary(path)?;
        Self::build(vocab.into_iter().collect(), merges, pad, path)
    }

    /// Writes a diffusers `tokenizer/` folder (`vocab.json`, `merges.txt`,
    /// `special_tokens_map.json` with `pad`) from OpenAI's merges file, so a model
    /// folder without one can be completed from the file CLIP ships.
    pub fn write_diffusers_folder(
        openai_merges: &Path,
        dir: &Path,
        pad: &str,
    ) -> Result<(), LoadError> {
        let (vocab, merges) = openai_vocabulary(openai_merges)?;
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let vocab: serde_json::Map<String, serde_json::Value> = vocab
            .into_iter()
            .map(|(t, i)| (t, serde_json::Value::from(i)))
            .collect();
        let mut merges_text = String::from("#version: 0.2\n");
        for (a, b) in &merges {
            merges_text.push_str(&format!("{a} {b}\n"));
        }
        let special = serde_json::json!({
            "bos_token": START_OF_TEXT,
            "eos_token": END_OF_TEXT,
            "unk_token": END_OF_TEXT,
            "pad_token": pad,
        });
        for (name, text) in [
            ("vocab.json", serde_json::Value::Object(vocab).to_string()),
            ("merges.txt", merges_text),
            ("special_tokens_map.json", special.to_string()),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(io_error(&path))?;
        }
        Ok(())
    }

    fn build(
        vocab: HashMap<String, u32>,
        merges: Vec<(String, String)>,
        pad_token: &str,
        source: &Path,
    ) -> Result<Self, LoadError> {
        let bad = |message: String| LoadError::Config {
            path: source.to_path_buf(),
            message,
        };
        let id = |token: &str| {
            vocab
                .get(token)
                .map(|&i| i as i64)
                .ok_or_else(|| bad(format!("the vocabulary has no {token:?}")))
        };
        let (start, end, pad) = (id(START_OF_TEXT)?, id(END_OF_TEXT)?, id(pad_token)?);
        let bpe = BPE::builder()
            .vocab_and_merges(
                vocab
                    .into_iter()
                    .collect::<tokenizers::models::bpe::Vocab>(),
                merges,
            )
            .end_of_word_suffix("</w>".into())
            .continuing_subword_prefix(String::new())
            .unk_token(END_OF_TEXT.into())
            .build()
            .map_err(|e| bad(format!("invalid BPE vocabulary: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_normalizer(Some(Normalizers::new(vec![
            NFC.into(),
            Replace::new(
                tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
                " ",
            )
            .map_err(|e| bad(e.to_string()))?
            .into(),
            Lowercase.into(),
        ])));
        tokenizer.with_pre_tokenizer(Some(PreTokenizers::new(vec![
            Split::new(
                SplitPattern::Regex(SPLIT_PATTERN.into()),
                SplitDelimiterBehavior::Removed,
                true,
            )
            .map_err(|e| bad(e.to_string()))?
            .into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        // transformers treats the special tokens, the pad token among them, as added
        // tokens matched in the raw text before anything else: with SD 2.x's pad "!"
        // every "!" of a prompt becomes id 0 rather than the BPE token "!</w>".
        let mut special: Vec<AddedToken> = [START_OF_TEXT, END_OF_TEXT]
            .into_iter()
            .map(|t| AddedToken::from(t, true))
            .collect();
        if pad_token != START_OF_TEXT && pad_token != END_OF_TEXT {
            special.push(AddedToken::from(pad_token, true));
        }
        tokenizer.add_special_tokens(&special);
        Ok(ClipTokenizer {
            tokenizer,
            start,
            end,
            pad,
            source: source.to_path_buf(),
        })
    }

    /// The 77 ids of `prompt`: start, up to 75 tokens (longer prompts are truncated,
    /// as the pipelines do), end, padding.
    pub fn encode(&self, prompt: &str) -> Result<Vec<i64>, LoadError> {
        let encoding = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| LoadError::Config {
                path: self.source.clone(),
                message: format!("cannot tokenize {prompt:?}: {e}"),
            })?;
        let mut ids = Vec::with_capacity(CONTEXT_LENGTH);
        ids.push(self.start);
        ids.extend(
            encoding
                .get_ids()
                .iter()
                .take(CONTEXT_LENGTH - 2)
                .map(|&i| i as i64),
        );
        ids.push(self.end);
        ids.resize(CONTEXT_LENGTH, self.pad);
        Ok(ids)
    }

    /// The padding id.
    pub fn pad_id(&self) -> i64 {
        self.pad
    }
}

/// The pad token of a tokenizer folder: `pad_token` of `special_tokens_map.json`, else
/// of `tokenizer_config.json` (a string or an `AddedToken` object), else
/// `<|endoftext|>`.
fn pad_token(dir: &Path) -> Result<String, LoadError> {
    for file in ["special_tokens_map.json", "tokenizer_config.json"] {
        let path = dir.join(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(&path)(e)),
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| LoadError::Config {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let token = match value.get("pad_token") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Object(o)) => o
                .get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string),
            _ => None,
        };
        if let Some(token) = token {
            return Ok(token);
        }
    }
    Ok(END_OF_TEXT.to_string())
}

/// Tokens with their ids.
pub type Vocabulary = Vec<(String, u32)>;
/// BPE merge rules, in priority order.
pub type Merges = Vec<(String, String)>;

/// The vocabulary and merges CLIP derives from `bpe_simple_vocab_16e6.txt`: merges are
/// lines 1 ..= 48894 (line 0 is a header); the vocabulary is the 256 byte symbols, the
/// same with `</w>`, one token per merge, then `<|startoftext|>` and `<|endoftext|>`
/// (49408 in all). A path ending in `.gz` is read through gzip, as CLIP's own package
/// ships the file (`bpe_simple_vocab_16e6.txt.gz`).
pub fn openai_vocabulary(path: &Path) -> Result<(Vocabulary, Merges), LoadError> {
    let text = if path.extension().is_some_and(|e| e == "gz") {
        let file = std::fs::File::open(path).map_err(io_error(path))?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(file), &mut text).map_err(
            |e| LoadError::Config {
                path: path.to_path_buf(),
                message: format!("not a gzip-compressed UTF-8 text: {e}"),
            },
        )?;
        text
    } else {
        std::fs::read_to_string(path).map_err(io_error(path))?
    };
    let lines: Vec<&str> = text.split('\n').collect();
    let wanted = 49152 - 256 - 2;
    if lines.len() < wanted + 1 {
        return Err(LoadError::Config {
            path: path.to_path_buf(),
            message: format!(
                "expected at least {} lines, found {}",
                wanted + 1,
                lines.len()
            ),
        });
    }
    let merges = lines[1..=wanted]
        .iter()
        .enumerate()
        .map(|(i, line)| parse_merge(line, i + 2, path))
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = byte_symbols();
    let mut tokens: Vec<String> = bytes.clone();
    tokens.extend(bytes.iter().map(|s| format!("{s}</w>")));
    tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    tokens.push(START_OF_TEXT.into());
    tokens.push(END_OF_TEXT.into());
    let vocab = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    Ok((vocab, merges))
}

/// One merge rule, `a b`, of line `number` of `path`.
fn parse_merge(line: &str, number: usize, path: &Path) -> Result<(String, String), LoadError> {
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), None) => Ok((a.to_string(), b.to_string())),
        _ => Err(LoadError::Config {
            path: path.to_path_buf(),
            message: format!("line {number}: expected two symbols, got {line:?}"),
        }),
    }
}

/// GPT-2 / CLIP's reversible map from bytes to printable characters, in byte order.
fn byte_symbols() -> Vec<String> {
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    // CLIP orders the printable bytes first (as they are), then the others mapped to
    // 256, 257, ...
    let mut ordered: Vec<u32> = (0..256).filter(|&b| printable(b)).collect();
    let mut chars: Vec<u32> = ordered.clone();
    let mut next = 256;
    for b in 0..256u32 {
        if !printable(b) {
            ordered.push(b);
            chars.push(next);
            next += 1;
        }
    }
    chars
        .into_iter()
        .map(|c| char::from_u32(c).expect("valid code point").to_string())
        .collect()
}
