//! `pairs.jsonl`: text for captured windows, one `{"sample": "<capture id>", "text": "..."}`
//! per line (operator notes, transcripts, incident reports, descriptions); a window may have
//! several lines. Blank lines are skipped; a line repeating an earlier one exactly is counted
//! and left out. Errors name the file and the line.
//!
//! [`PairedWindows`] is the capture dataset seen through the pairs: the windows that have
//! text, each with the indices of its texts in one table of distinct texts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::preprocess::EncoderCrop;
use crate::train::data::{CapturedWindows, WindowSource};

/// One line of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// 1-based line in the file.
    pub line: usize,
    pub sample: String,
    pub text: String,
}

/// A problem with the pairs file, naming the line.
#[derive(Debug, thiserror::Error)]
pub enum PairsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {problem}")]
    Line {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("{path}: no pairs")]
    Empty { path: PathBuf },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    sample: String,
    text: String,
}

/// Reads and checks the pairs file: the pairs, and how many repeated lines were left out.
pub fn read(path: &Path) -> Result<(Vec<Pair>, usize), PairsError> {
    let text = std::fs::read_to_string(path).map_err(|source| PairsError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses pairs text; `origin` names it in errors.
pub fn parse(text: &str, origin: &Path) -> Result<(Vec<Pair>, usize), PairsError> {
    let err = |line: usize, problem: String| PairsError::Line {
        path: origin.to_owned(),
        line,
        problem,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut pairs = Vec::new();
    let mut seen = HashSet::new();
    let mut repeated = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(raw).map_err(|e| {
            err(
                line,
                format!("not a {{\"sample\": ..., \"text\": ...}} object: {e}"),
            )
        })?;
        let sample = parsed.sample.trim().to_owned();
        if sample.is_empty() {
            return Err(err(line, "`sample` is empty".into()));
        }
        if parsed.text.trim().is_empty() {
            return Err(err(line, "`text` is empty".into()));
        }
        if !seen.insert((sample.clone(), parsed.text.clone())) {
            repeated += 1;
            continue;
        }
        pairs.push(Pair {
            line,
            sample,
            text: parsed.text,
        });
    }
    if pairs.is_empty() {
        return Err(PairsError::Empty {
            path: origin.to_owned(),
        });
    }
    Ok((pairs, repeated))
}

/// The captured windows that have text, in dataset order.
pub struct PairedWindows {
    captured: CapturedWindows,
    /// Dataset index of each paired window.
    samples: Vec<usize>,
    /// Indices into `texts` of each paired window's texts, in file order.
    window_texts: Vec<Vec<usize>>,
    /// The distinct texts.
    pub texts: Vec<String>,
    /// The first line of each distinct text (for messages).
    pub text_lines: Vec<usize>,
    /// Window (paired index) by sample id.
    by_id: HashMap<String, usize>,
}

impl PairedWindows {
    /// The windows of `captured` named by `pairs`, and the pairs naming samples that are
    /// not in the dataset.
    pub fn new(captured: CapturedWindows, pairs: &[Pair]) -> (Self, Vec<Pair>) {
        let index: HashMap<&str, usize> =
            (0..captured.len()).map(|i| (captured.id(i), i)).collect();
        let mut texts = Vec::new();
        let mut text_lines = Vec::new();
        let mut text_index: HashMap<&str, usize> = HashMap::new();
        let mut per_sample: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut unknown = Vec::new();
        for pair in pairs {
            let Some(&sample) = index.get(pair.sample.as_str()) else {
                unknown.push(pair.clone());
                continue;
            };
            let t = *text_index.entry(pair.text.as_str()).or_insert_with(|| {
                texts.push(pair.text.clone());
                text_lines.push(pair.line);
                texts.len() - 1
            });
            per_sample.entry(sample).or_default().push(t);
        }
        let (samples, window_texts): (Vec<usize>, Vec<Vec<usize>>) = per_sample.into_iter().unzip();
        let by_id = samples
            .iter()
            .enumerate()
            .map(|(w, &s)| (captured.id(s).to_owned(), w))
            .collect();
        let paired = Self {
            captured,
            samples,
            window_texts,
            texts,
            text_lines,
            by_id,
        };
        (paired, unknown)
    }

    /// The dataset the windows come from.
    pub fn captured(&self) -> &CapturedWindows {
        &self.captured
    }

    /// Indices (into [`Self::texts`]) of the texts of the window `id`.
    pub fn texts_of(&self, id: &str) -> &[usize] {
        self.by_id
            .get(id)
            .map_or(&[], |&w| self.window_texts[w].as_slice())
    }

    /// Number of (window, text) pairs.
    pub fn pair_count(&self) -> usize {
        self.window_texts.iter().map(Vec::len).sum()
    }
}

impl WindowSource for PairedWindows {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn id(&self, i: usize) -> &str {
        self.captured.id(self.samples[i])
    }
    fn group(&self, i: usize) -> String {
        self.captured.group(self.samples[i])
    }
    fn load(&self, i: usize) -> anyhow::Result<Vec<EncoderCrop>> {
        self.captured.load(self.samples[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<(Vec<Pair>, usize), PairsError> {
        parse(text, Path::new("pairs.jsonl"))
    }

    #[test]
    fn lines_parse_and_repeats_are_left_out() {
        let text = "\u{feff}{\"sample\": \"00000001\", \"text\": \"a person walking left\"}\n\n\
                    {\"sample\": \"00000001\", \"text\": \"someone on the left\"}\n\
                    {\"sample\": \"00000002\", \"text\": \"a person walking left\"}\n\
                    {\"sample\": \"00000001\", \"text\": \"a person walking left\"}\n";
        let (pairs, repeated) = parse_str(text).unwrap();
        assert_eq!(repeated, 1);
        assert_eq!(pairs.len(), 3);
        assert_eq!(
            pairs[1],
            Pair {
                line: 3,
                sample: "00000001".into(),
                text: "someone on the left".into()
            }
        );
        assert_eq!(pairs[2].line, 4);
    }

    #[test]
    fn errors_name_the_line() {
        let ok = "{\"sample\": \"1\", \"text\": \"x\"}\n";
        let cases = [
            (
                format!("{ok}{ok}{{\"sample\": \"1\"}}\n"),
                "pairs.jsonl:3: ",
                "text",
            ),
            (format!("{ok}not json\n"), "pairs.jsonl:2: ", "not a"),
            (
                format!("{ok}\n{{\"sample\": \"2\", \"text\": \"  \"}}\n"),
                "pairs.jsonl:3: ",
                "`text` is empty",
            ),
            (
                "{\"sample\": \"\", \"text\": \"y\"}".to_owned(),
                "pairs.jsonl:1: ",
                "`sample` is empty",
            ),
            (
                format!("{ok}{{\"sample\": \"1\", \"text\": \"y\", \"label\": 3}}"),
                "pairs.jsonl:2: ",
                "label",
            ),
        ];
        for (text, at, what) in cases {
            let e = parse_str(&text).unwrap_err().to_string();
            assert!(e.starts_with(at) && e.contains(what), "{e}");
        }
        let e = parse_str("\n \n").unwrap_err().to_string();
        assert_eq!(e, "pairs.jsonl: no pairs");
    }
}
