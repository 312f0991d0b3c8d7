//! `affectd detect`: run the configured detector (and optionally the tracker) on an image or a
//! video file and print what it finds, one line per frame.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::Config;
use crate::ingest::FileFrames;
use crate::track::{TrackConfig, Tracker};

use super::{DetectConfig, Detector, Error};

/// `affectd detect --config PATH --input FILE [--json] [--track]`
#[derive(Debug, Clone, clap::Args)]
pub struct DetectArgs {
    /// The daemon config; its `[detect]` and `[track]` sections are used. Without it the
    /// defaults apply (engine `engines/nanodet-g-416-dynamic.toml` under the current folder).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// An image (.png, .jpg) or a video file.
    #[arg(long)]
    pub input: PathBuf,
    /// One JSON object per frame: {"frame", "pts_ms", "persons": [{"box", "score", "track_id"}]}.
    #[arg(long)]
    pub json: bool,
    /// Track persons across frames and report their ids.
    #[arg(long)]
    pub track: bool,
}

#[derive(Serialize)]
struct FrameLine {
    frame: u64,
    pts_ms: Option<f64>,
    persons: Vec<Person>,
}

#[derive(Serialize)]
struct Person {
    #[serde(rename = "box")]
    bbox: [f32; 4],
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    track_id: Option<u64>,
}

/// Runs the command; output goes to stdout.
pub fn run(args: &DetectArgs) -> Result<(), Error> {
    let (detect, track) = match &args.config {
        Some(path) => {
            let c = Config::load(path)?;
            (c.detect.unwrap_or_default(), c.track)
        }
        None => (DetectConfig::default(), TrackConfig::default()),
    };
    let mut detector = Detector::new(&detect)?;
    let mut tracker = args.track.then(|| Tracker::new(track));
    let frames = FileFrames::open(&args.input, "cli")?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let io = |e| Error::io(std::path::Path::new("<stdout>"), e);
    for frame in frames {
        let frame = frame?;
        let dets = detector.run(&[&frame])?.pop().unwrap_or_default();
        let mut ids = vec![None; dets.len()];
        if let Some(t) = tracker.as_mut() {
            for track in t.update(&dets, frame.wall).active {
                if let Some(i) = track.detection {
                    ids[i] = Some(track.id);
                }
            }
        }
        let line = FrameLine {
            frame: frame.seq,
            pts_ms: frame.pts.map(|p| (p.as_secs_f64() * 1e4).round() / 10.0),
            persons: dets
                .iter()
                .zip(ids)
                .map(|(d, track_id)| Person {
                    bbox: [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2].map(round1),
                    score: (d.score * 1000.0).round() / 1000.0,
                    track_id,
                })
                .collect(),
        };
        if args.json {
            serde_json::to_writer(&mut out, &line).map_err(|e| io(std::io::Error::other(e)))?;
            writeln!(out).map_err(io)?;
        } else {
            write!(
                out,
                "frame {} ({} persons):",
                line.frame,
                line.persons.len()
            )
            .map_err(io)?;
            for p in &line.persons {
                let id = p.track_id.map(|i| format!("#{i} ")).unwrap_or_default();
                write!(
                    out,
                    " {id}[{:.0} {:.0} {:.0} {:.0}] {:.2};",
                    p.bbox[0], p.bbox[1], p.bbox[2], p.bbox[3], p.score
                )
                .map_err(io)?;
            }
            writeln!(out).map_err(io)?;
        }
    }
    out.flush().map_err(io)?;
    if detector.bad_frames() > 0 {
        tracing::warn!(
            dropped = detector.bad_frames(),
            "malformed frames were skipped"
        );
    }
    Ok(())
}

fn round1(v: f32) -> f32 {
    (v * 10.0).round() / 10.0
}
