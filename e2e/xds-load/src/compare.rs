//! The side-by-side table (`COMPARE=istiod make bench-xds`): each run
//! writes its figures as numbers (`--figures FILE`), and `--compare MESH
//! ISTIOD` prints them in two columns with their ratio, row by row in the
//! order the first run measured them.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::report::quantile;

/// One figure of one run; `value` is `None` when the run could not
/// measure it (`note` says why).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Figure {
    pub name: String,
    pub unit: String,
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The figures of one run, in the order measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Figures {
    pub target: String,
    pub rows: Vec<Figure>,
}

impl Figures {
    pub fn new(target: &str) -> Self {
        Self { target: target.to_string(), rows: Vec::new() }
    }

    pub fn add(&mut self, name: impl Into<String>, unit: &str, value: Option<f64>) {
        self.rows.push(Figure { name: name.into(), unit: unit.into(), value, note: None });
    }

    /// A figure this run cannot give, and why.
    pub fn missing(&mut self, name: impl Into<String>, unit: &str, why: impl Into<String>) {
        self.rows.push(Figure { name: name.into(), unit: unit.into(), value: None, note: Some(why.into()) });
    }

    pub fn seconds(&mut self, name: impl Into<String>, d: Option<Duration>) {
        self.add(name, "s", d.map(|d| d.as_secs_f64()));
    }

    pub fn mib(&mut self, name: impl Into<String>, kib: Option<u64>) {
        self.add(name, "MiB", kib.map(|k| k as f64 / 1024.0));
    }

    /// p50 and p99 (in ms) of `values`, as two rows.
    pub fn latencies(&mut self, name: &str, values: &[Duration]) {
        let mut sorted = values.to_vec();
        sorted.sort();
        let ms = |q| quantile(&sorted, q).map(|d| d.as_secs_f64() * 1000.0);
        self.add(format!("{name} p50"), "ms", ms(0.5));
        self.add(format!("{name} p99"), "ms", ms(0.99));
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a figures file", path.display()))
    }
}

fn find<'a>(figures: &'a Figures, name: &str) -> Option<&'a Figure> {
    figures.rows.iter().find(|f| f.name == name)
}

fn cell(f: Option<&Figure>) -> String {
    match f {
        // A count: whole, with no unit.
        Some(Figure { value: Some(v), unit, .. }) if unit.is_empty() => format!("{v:.0}"),
        Some(Figure { value: Some(v), unit, .. }) => {
            let digits = if v.abs() >= 100.0 {
                0
            } else if v.abs() >= 10.0 {
                1
            } else {
                2
            };
            format!("{v:.digits$} {unit}")
        }
        Some(Figure { note: Some(note), .. }) => format!("n/a ({note})"),
        Some(_) => "n/a".into(),
        None => "not measured".into(),
    }
}

/// `a ÷ b`, when both are measured and `b` is not zero.
fn ratio(a: Option<&Figure>, b: Option<&Figure>) -> String {
    let (Some(a), Some(b)) = (a.and_then(|f| f.value), b.and_then(|f| f.value)) else {
        return "–".into();
    };
    if b != 0.0 {
        format!("{:.2}", a / b)
    } else if a == 0.0 {
        "1.00".into()
    } else {
        "∞".into()
    }
}

/// The two runs side by side: every figure of `left`, then any only
/// `right` has, with `left ÷ right`.
pub fn table(left: &Figures, right: &Figures) -> String {
    let mut names: Vec<&str> = left.rows.iter().map(|f| f.name.as_str()).collect();
    for f in &right.rows {
        if !names.contains(&f.name.as_str()) {
            names.push(&f.name);
        }
    }
    let header = [
        "figure".to_string(),
        left.target.clone(),
        right.target.clone(),
        format!("{} ÷ {}", left.target, right.target),
    ];
    let mut rows = vec![header];
    for name in names {
        let (a, b) = (find(left, name), find(right, name));
        rows.push([name.to_string(), cell(a), cell(b), ratio(a, b)]);
    }
    let widths: Vec<usize> =
        (0..4).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(text, &w)| format!("{text}{}", " ".repeat(w - text.chars().count())))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_columns_and_their_ratio_are_printed() {
        let mut mesh = Figures::new("mesh");
        mesh.seconds("initial push", Some(Duration::from_secs(2)));
        mesh.mib("RSS", Some(100 * 1024));
        mesh.add("idle CPU", "%", Some(0.0));
        let mut istiod = Figures::new("istiod");
        istiod.seconds("initial push", Some(Duration::from_secs(8)));
        istiod.missing("RSS", "MiB", "no pid");
        istiod.add("idle CPU", "%", Some(0.0));
        mesh.add("clusters", "", Some(1006.0));
        istiod.add("clusters", "", Some(56.0));
        istiod.add("only here", "ms", Some(3.0));
        let text = table(&mesh, &istiod);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(lines[0].starts_with("figure") && lines[0].ends_with("mesh ÷ istiod"), "{text}");
        assert!(
            lines[1].contains("2.00 s") && lines[1].contains("8.00 s") && lines[1].ends_with("0.25"),
            "{text}"
        );
        assert!(lines[2].contains("100 MiB") && lines[2].contains("n/a (no pid)") && lines[2].ends_with('–'));
        assert!(lines[3].ends_with("1.00"), "0 against 0 is even: {text}");
        assert!(
            lines[4].contains("1006 ") && lines[4].contains("56 ") && lines[4].ends_with("17.96"),
            "{text}"
        );
        assert!(lines[5].contains("not measured") && lines[5].contains("3.00 ms"), "{text}");
    }

    #[test]
    fn latencies_are_two_rows_in_milliseconds() {
        let mut f = Figures::new("mesh");
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        f.latencies("convergence", &values);
        assert_eq!(f.rows[0].name, "convergence p50");
        assert_eq!(f.rows[0].value, Some(50.0));
        assert_eq!(f.rows[1].value, Some(99.0));
        f.latencies("none", &[]);
        assert_eq!(f.rows[2].value, None);
    }

    #[test]
    fn figures_survive_the_file() {
        let mut f = Figures::new("istiod");
        f.missing("restart", "s", "why");
        f.add("x", "s", Some(1.5));
        let dir = std::env::temp_dir().join(format!("xds-load-figures-{}", std::process::id()));
        f.write(&dir).expect("write");
        let back = Figures::read(&dir).expect("read");
        std::fs::remove_file(&dir).ok();
        assert_eq!(back.target, "istiod");
        assert_eq!(back.rows, f.rows);
    }
}
