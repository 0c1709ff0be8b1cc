//! Reading criterion's estimates back, and writing the benches' JSON summaries.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// Cargo's target directory, as criterion finds it.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest.parent().unwrap_or(manifest).join("target")
        }
    }
}

fn criterion_dir() -> PathBuf {
    match std::env::var_os("CRITERION_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => target_dir().join("criterion"),
    }
}

/// Mean and 95% interval in ns per iteration of criterion's bench `group/name`, if
/// criterion wrote them since `since` (benches filtered out, or run with `--test`, leave
/// older files or none).
pub fn estimate(group: &str, name: &str, since: SystemTime) -> Option<(f64, f64, f64)> {
    let path = criterion_dir()
        .join(group)
        .join(name)
        .join("new")
        .join("estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < since {
        return None;
    }
    let estimates: Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
    let mean = &estimates["mean"];
    let interval = &mean["confidence_interval"];
    Some((
        mean["point_estimate"].as_f64()?,
        interval["lower_bound"].as_f64()?,
        interval["upper_bound"].as_f64()?,
    ))
}

fn command(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The machine the numbers come from: CPU, cores, rustc, date.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .filter(|line| line.starts_with("model name"))
                .find_map(|line| line.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        });
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    json!({
        "cpu": cpu,
        "logical_cores": std::thread::available_parallelism().ok().map(|n| n.get()),
        "rustc": command(&rustc, &["--version"]),
        "date": command("date", &["-u", "+%FT%TZ"]),
    })
}

/// `x` to three decimals, for the JSON.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Writes `summary` to `<target>/tilde-bench/<file>` and says where.
pub fn write(file: &str, summary: &Value) {
    let dir = target_dir().join("tilde-bench");
    let path = dir.join(file);
    let text = match serde_json::to_string_pretty(summary) {
        Ok(text) => text + "\n",
        Err(error) => {
            eprintln!("tilde-bench: cannot write {}: {error}", path.display());
            return;
        }
    };
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        Ok(()) => println!("tilde-bench: wrote {}", path.display()),
        Err(error) => eprintln!("tilde-bench: cannot write {}: {error}", path.display()),
    }
}

/// A measured value with its spread: the median and the low and high ends shown around it.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    /// The middle value.
    pub median: f64,
    /// The low end of the spread.
    pub low: f64,
    /// The high end of the spread.
    pub high: f64,
}

impl Spread {
    /// The median, minimum and maximum of `values`; `None` for none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let (&low, &high) = (sorted.first()?, sorted.last()?);
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        };
        Some(Self { median, low, high })
    }
}

/// One job of a side-by-side chart: tilde's time per operation, the C provider's, and the
/// per-pair ratio C / tilde.
pub struct Bar {
    /// The job's name.
    pub label: String,
    /// tilde's ns per operation.
    pub tilde: Spread,
    /// The C provider's, when it ran.
    pub c: Option<Spread>,
    /// C / tilde per interleaved pair, when both ran (above 1: tilde is faster).
    pub ratio: Option<Spread>,
}

/// An SVG bar chart of `bars`: per job, tilde's and C's ns per operation side by side, each
/// bar its median with a whisker from its low to its high end, and the ratio as text.
pub fn svg_chart(title: &str, note: &str, bars: &[Bar]) -> String {
    const LEFT: f64 = 190.0;
    const WIDTH: f64 = 420.0;
    const ROW: f64 = 46.0;
    const TOP: f64 = 44.0;
    let max = bars
        .iter()
        .flat_map(|b| [Some(b.tilde.high), b.c.map(|c| c.high)])
        .flatten()
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let x = |ns: f64| LEFT + ns / max * WIDTH;
    let height = TOP + ROW * bars.len() as f64 + 44.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"760\" height=\"{height:.0}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"14\">{}</text>\n",
        escape(title)
    );
    let bar = |svg: &mut String, y: f64, spread: Spread, colour: &str, name: &str| {
        svg.push_str(&format!(
            "<rect x=\"{LEFT}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"14\" fill=\"{colour}\"/>\n\
             <line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">{name} {:.2} ns</text>\n",
            x(spread.median) - LEFT,
            x(spread.low),
            y + 7.0,
            x(spread.high),
            y + 7.0,
            x(spread.high) + 6.0,
            y + 11.0,
            spread.median,
        ));
    };
    for (i, b) in bars.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        svg.push_str(&format!(
            "<text x=\"10\" y=\"{:.1}\">{}</text>\n",
            y + 16.0,
            escape(&b.label)
        ));
        if let Some(r) = b.ratio {
            svg.push_str(&format!(
                "<text x=\"10\" y=\"{:.1}\" fill=\"#555\">C / tilde {:.2} ({:.2}–{:.2})</text>\n",
                y + 31.0,
                r.median,
                r.low,
                r.high
            ));
        }
        bar(&mut svg, y + 2.0, b.tilde, "#3b6ea5", "tilde");
        if let Some(c) = b.c {
            bar(&mut svg, y + 20.0, c, "#b0b0b0", "C");
        }
    }
    svg.push_str(&format!(
        "<text x=\"10\" y=\"{:.1}\" font-size=\"11\" fill=\"#555\">{}</text>\n</svg>\n",
        height - 14.0,
        escape(note)
    ));
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes `text` to `<target>/tilde-bench/<file>`.
pub fn write_text(file: &str, text: &str) {
    let dir = target_dir().join("tilde-bench");
    let path = dir.join(file);
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        Ok(()) => println!("tilde-bench: wrote {}", path.display()),
        Err(error) => eprintln!("tilde-bench: cannot write {}: {error}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_min_max() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.low, s.high), (2.0, 1.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.median, s.low, s.high), (2.5, 1.0, 4.0));
        assert!(Spread::of(&[]).is_none());
        assert!(Spread::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn chart_has_a_bar_and_whisker_per_side_and_the_ratio() {
        let one = |v| Spread {
            median: v,
            low: v * 0.9,
            high: v * 1.1,
        };
        let svg = svg_chart(
            "t <&>",
            "n",
            &[Bar {
                label: "post_send".into(),
                tilde: one(10.0),
                c: Some(one(12.0)),
                ratio: Some(one(1.2)),
            }],
        );
        assert_eq!(svg.matches("<rect x=").count(), 2);
        assert_eq!(svg.matches("<line ").count(), 2);
        assert!(svg.contains("C / tilde 1.20 (1.08–1.32)"));
        assert!(svg.contains("t &lt;&amp;&gt;"));
        assert!(svg.contains("tilde 10.00 ns") && svg.contains("C 12.00 ns"));
    }
}
