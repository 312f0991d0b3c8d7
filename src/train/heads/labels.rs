//! `labels.csv`: `sample,emotion,valence,arousal`, one captured sample per row.
//!
//! `sample` is the capture sample id. `emotion` is a class name or blank; `valence` and
//! `arousal` are numbers in [-1, 1], both given or both blank. Fields may be double-quoted
//! (a quote inside is doubled). Blank lines are skipped.

use std::path::{Path, PathBuf};

/// The header the file must start with.
pub const HEADER: [&str; 4] = ["sample", "emotion", "valence", "arousal"];

/// One labelled sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// 1-based line in the file.
    pub line: usize,
    pub sample: String,
    pub emotion: Option<String>,
    /// Valence and arousal.
    pub va: Option<[f64; 2]>,
}

/// A problem with the labels file, naming the line and column.
#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {column}: {problem}")]
    Row {
        path: PathBuf,
        line: usize,
        /// The column name, or `row` for problems of the whole line.
        column: &'static str,
        problem: String,
    },
}

/// Reads and checks the labels file.
pub fn read(path: &Path) -> Result<Vec<Label>, LabelsError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabelsError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses labels text; `origin` labels errors.
pub fn parse(text: &str, origin: &Path) -> Result<Vec<Label>, LabelsError> {
    let err = |line: usize, column: &'static str, problem: String| LabelsError::Row {
        path: origin.to_owned(),
        line,
        column,
        problem,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let header = lines
        .by_ref()
        .find(|(_, l)| !l.trim().is_empty())
        .ok_or_else(|| {
            err(
                1,
                "row",
                "empty file: expected the header `sample,emotion,valence,arousal`".into(),
            )
        })?;
    let names = fields(header.1).map_err(|p| err(header.0, "row", p))?;
    if names.iter().map(|s| s.trim()).ne(HEADER) {
        return Err(err(
            header.0,
            "row",
            format!(
                "header is `{}`, expected `sample,emotion,valence,arousal`",
                header.1.trim()
            ),
        ));
    }
    let mut labels: Vec<Label> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (line, text) in lines {
        if text.trim().is_empty() {
            continue;
        }
        let row = fields(text).map_err(|p| err(line, "row", p))?;
        if row.len() != HEADER.len() {
            return Err(err(
                line,
                "row",
                format!(
                    "{} fields, expected 4 (sample,emotion,valence,arousal)",
                    row.len()
                ),
            ));
        }
        let sample = row[0].trim().to_owned();
        if sample.is_empty() {
            return Err(err(line, "sample", "is empty".into()));
        }
        if let Some(first) = seen.insert(sample.clone(), line) {
            return Err(err(
                line,
                "sample",
                format!("\"{sample}\" is already labelled on line {first}"),
            ));
        }
        let emotion = Some(row[1].trim().to_owned()).filter(|e| !e.is_empty());
        let number = |i: usize, column: &'static str| -> Result<Option<f64>, LabelsError> {
            let s = row[i].trim();
            if s.is_empty() {
                return Ok(None);
            }
            match s.parse::<f64>() {
                Ok(v) if (-1.0..=1.0).contains(&v) => Ok(Some(v)),
                Ok(v) => Err(err(line, column, format!("{v} is outside [-1, 1]"))),
                Err(_) => Err(err(line, column, format!("\"{s}\" is not a number"))),
            }
        };
        let va = match (number(2, "valence")?, number(3, "arousal")?) {
            (Some(v), Some(a)) => Some([v, a]),
            (None, None) => None,
            (Some(_), None) => {
                return Err(err(
                    line,
                    "arousal",
                    "is blank but valence is given; give both or neither".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(err(
                    line,
                    "valence",
                    "is blank but arousal is given; give both or neither".into(),
                ));
            }
        };
        if emotion.is_none() && va.is_none() {
            return Err(err(
                line,
                "row",
                format!("sample \"{sample}\" has no emotion and no valence/arousal"),
            ));
        }
        labels.push(Label {
            line,
            sample,
            emotion,
            va,
        });
    }
    Ok(labels)
}

/// Splits one CSV line into fields, honouring double quotes.
fn fields(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.trim().is_empty() && !was_quoted => {
                field.clear();
                quoted = true;
                was_quoted = true;
            }
            (false, '"') => return Err("stray double quote inside a field".into()),
            (false, ',') => {
                out.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            (false, c) if was_quoted && !c.is_whitespace() => {
                return Err("text after a closing double quote".into());
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err("unterminated double quote".into());
    }
    out.push(field);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Vec<Label>, LabelsError> {
        parse(text, Path::new("labels.csv"))
    }

    #[test]
    fn parses_optional_columns_and_quotes() {
        let l = p("sample,emotion,valence,arousal\n\
                   a,happiness,0.5,-0.25\n\
                   \n\
                   b,,0,1\n\
                   \"c,1\",\"happily \"\"surprised\"\"\",,\n")
        .unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].va, Some([0.5, -0.25]));
        assert_eq!(l[1].emotion, None);
        assert_eq!(l[1].line, 4);
        assert_eq!(l[2].sample, "c,1");
        assert_eq!(l[2].emotion.as_deref(), Some("happily \"surprised\""));
        assert_eq!(l[2].va, None);
    }

    #[test]
    fn bad_rows_name_line_and_column() {
        let cases = [
            ("sample,emotion\n", "labels.csv:1: row: header"),
            (
                "sample,emotion,valence,arousal\na,x,0.1,0.2\na,y,,\n",
                "labels.csv:3: sample: \"a\" is already labelled on line 2",
            ),
            (
                "sample,emotion,valence,arousal\na,x,1.5,0\n",
                "labels.csv:2: valence: 1.5 is outside",
            ),
            (
                "sample,emotion,valence,arousal\na,x,0,high\n",
                "labels.csv:2: arousal: \"high\" is not a number",
            ),
            (
                "sample,emotion,valence,arousal\na,x,0.1,\n",
                "labels.csv:2: arousal: is blank",
            ),
            (
                "sample,emotion,valence,arousal\na,x,0\n",
                "labels.csv:2: row: 3 fields",
            ),
            (
                "sample,emotion,valence,arousal\n,x,,\n",
                "labels.csv:2: sample: is empty",
            ),
            (
                "sample,emotion,valence,arousal\na,,,\n",
                "labels.csv:2: row: sample \"a\" has no emotion",
            ),
            (
                "sample,emotion,valence,arousal\n\"a,x,,\n",
                "labels.csv:2: row: unterminated",
            ),
        ];
        for (text, want) in cases {
            let e = p(text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        }
    }
}
