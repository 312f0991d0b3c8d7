//! The CLIP BPE tokenizer as EmotionCLIP uses it (upstream `src/models/tokenizer.py`):
//! clean the text, lowercase, BPE with the CLIP vocabulary (bundled by the
//! `instant-clip-tokenizer` crate, never downloaded), bracket with start 49406 / end 49407,
//! zero-pad to 77. A text longer than the context is cut at 77 tokens and so loses its end
//! token, exactly as upstream `tokenize` does (the text encoder then pools at the largest id).
//!
//! Cleaning follows upstream `basic_clean` + `whitespace_clean`: HTML entities unescaped
//! (twice), curly quotes straightened, control characters dropped, runs of whitespace
//! collapsed, ends trimmed. Upstream also runs `ftfy.fix_text`, whose mojibake repair and
//! Unicode normalisation are not reproduced: texts written in clean UTF-8 (such as the class
//! descriptions in the config) tokenize identically.

use candle_core::{Device, Result, Tensor};
use instant_clip_tokenizer::{Token, Tokenizer};

/// CLIP's tokenizer with EmotionCLIP's framing and truncation.
pub struct ClipTokenizer {
    bpe: Tokenizer,
    context_length: usize,
}

impl Default for ClipTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl ClipTokenizer {
    /// `<start_of_text>`.
    pub const START: u32 = 49406;
    /// `<end_of_text>`.
    pub const END: u32 = 49407;
    /// Tokens per text in every CLIP model.
    pub const CONTEXT_LENGTH: usize = 77;

    /// Builds the BPE tables (tens of milliseconds: build once, reuse).
    pub fn new() -> Self {
        Self {
            bpe: Tokenizer::new(),
            context_length: Self::CONTEXT_LENGTH,
        }
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The ids of one text: start, BPE of the cleaned text, end; cut to the context length
    /// (dropping the end token when too long) and zero-padded to it.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut tokens: Vec<Token> = Vec::new();
        self.bpe.encode(&clean(text), &mut tokens);
        let mut ids = Vec::with_capacity(tokens.len() + 2);
        ids.push(Self::START);
        ids.extend(tokens.into_iter().map(|t| u32::from(t.to_u16())));
        ids.push(Self::END);
        ids.resize(self.context_length, 0);
        ids
    }

    /// Token ids [N, context_length] (i64, as upstream) for the text encoder.
    pub fn tokenize_batch<S: AsRef<str>>(&self, texts: &[S], device: &Device) -> Result<Tensor> {
        let ids: Vec<i64> = texts
            .iter()
            .flat_map(|t| self.encode(t.as_ref()).into_iter().map(i64::from))
            .collect();
        Tensor::from_vec(ids, (texts.len(), self.context_length), device)
    }
}

/// Upstream `whitespace_clean(basic_clean(text))`, less ftfy's mojibake repair.
fn clean(text: &str) -> String {
    let text = html_unescape(&html_unescape(text));
    let text: String = text
        .chars()
        .filter_map(|c| match c {
            '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{201b}' => Some('\''),
            '\u{201c}' | '\u{201d}' | '\u{201e}' | '\u{201f}' => Some('"'),
            c if c.is_control() && !c.is_whitespace() => None,
            c => Some(c),
        })
        .collect();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Python's `html.unescape` for numeric references and the common named entities.
fn html_unescape(s: &str) -> String {
    const NAMED: [(&str, &str); 7] = [
        ("amp", "&"),
        ("lt", "<"),
        ("gt", ">"),
        ("quot", "\""),
        ("apos", "'"),
        ("nbsp", "\u{a0}"),
        ("#39", "'"),
    ];
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let after = &rest[1..];
        if let Some((len, c)) = numeric_reference(after) {
            out.push(c);
            rest = &after[len..];
            continue;
        }
        let named = NAMED.iter().find_map(|(name, value)| {
            let semi = format!("{name};");
            if after.starts_with(&semi) {
                Some((semi.len(), *value))
            } else if after.starts_with(name) && !name.starts_with('#') && *name != "apos" {
                // html5 accepts these legacy names without the semicolon.
                Some((name.len(), *value))
            } else {
                None
            }
        });
        match named {
            Some((len, value)) => {
                out.push_str(value);
                rest = &after[len..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `#123;` or `#x7b;` at the start of `s`: (bytes consumed, character).
fn numeric_reference(s: &str) -> Option<(usize, char)> {
    let body = s.strip_prefix('#')?;
    let (digits, radix, skip) = match body.strip_prefix(['x', 'X']) {
        Some(hex) => (hex, 16, 2),
        None => (body, 10, 1),
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let code = u32::from_str_radix(&digits[..end], radix).ok()?;
    let c = char::from_u32(code).unwrap_or('\u{fffd}');
    let semi = usize::from(digits[end..].starts_with(';'));
    Some((skip + end + semi, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_unescapes_and_collapses_whitespace() {
        assert_eq!(clean("  a &amp;amp; b\t\n c  "), "a & b c");
        assert_eq!(clean("caf&#233; &#x41;&lt;"), "café A<");
        assert_eq!(clean("\u{201c}hi\u{201d} it\u{2019}s"), "\"hi\" it's");
        assert_eq!(clean("a & b &unknown;"), "a & b &unknown;");
    }

    #[test]
    fn framing_padding_and_truncation() {
        let tok = ClipTokenizer::new();
        let empty = tok.encode("");
        assert_eq!(&empty[..3], &[ClipTokenizer::START, ClipTokenizer::END, 0]);
        assert_eq!(empty.len(), 77);
        let long = tok.encode(&"word ".repeat(100));
        assert_eq!(long.len(), 77);
        assert_eq!(long[0], ClipTokenizer::START);
        assert!(
            !long.contains(&ClipTokenizer::END),
            "the end token is cut away"
        );
    }
}
