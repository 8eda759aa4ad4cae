//! Hand-written SVG line charts: axes, ticks, a legend, one colour per series.

use std::fmt::Write;

use crate::placer::Policy;

/// A colour per policy, stable across charts (Okabe–Ito, readable by colour-blind readers).
pub fn policy_color(policy: Policy) -> &'static str {
    match policy {
        Policy::Random => "#999999",
        Policy::DotProduct => "#E69F00",
        Policy::GpuClustering => "#56B4E9",
        Policy::GpuPacking => "#009E73",
        Policy::BestFit => "#0072B2",
        Policy::Fgd => "#D55E00",
    }
}

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    /// Base-10 logarithmic x axis; `x_range` must then be positive.
    pub x_log: bool,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 460.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// About `target` round tick values covering `lo..=hi`.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let span = (hi - lo).max(f64::EPSILON);
    let raw = span / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let mut ticks = Vec::new();
    let mut v = (lo / step).ceil() * step;
    while v <= hi + step * 1e-9 {
        ticks.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        v += step;
    }
    ticks
}

fn tick_label(v: f64) -> String {
    if v.abs() >= 1e4 || (v != 0.0 && v.abs() < 1e-2) {
        format!("{v:.0e}")
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.2}").trim_end_matches('0').to_string()
    }
}

impl LineChart {
    fn x_to_px(&self, x: f64) -> f64 {
        let (lo, hi) = self.x_range;
        let t = if self.x_log {
            (x.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10()).max(f64::EPSILON)
        } else {
            (x - lo) / (hi - lo).max(f64::EPSILON)
        };
        LEFT + t.clamp(0.0, 1.0) * (WIDTH - LEFT - RIGHT)
    }

    fn y_to_px(&self, y: f64) -> f64 {
        let (lo, hi) = self.y_range;
        let t = (y - lo) / (hi - lo).max(f64::EPSILON);
        HEIGHT - BOTTOM - t.clamp(0.0, 1.0) * (HEIGHT - TOP - BOTTOM)
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let plot_right = WIDTH - RIGHT;
        let plot_bottom = HEIGHT - BOTTOM;
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
            (LEFT + plot_right) / 2.0,
            escape(&self.title)
        );
        // Grid and ticks.
        let x_ticks: Vec<f64> = if self.x_log {
            let (lo, hi) = self.x_range;
            (lo.log10().ceil() as i32..=hi.log10().floor() as i32)
                .map(|e| 10f64.powi(e))
                .collect()
        } else {
            nice_ticks(self.x_range.0, self.x_range.1, 8)
        };
        for x in x_ticks {
            let px = self.x_to_px(x);
            let _ = writeln!(
                s,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{plot_bottom}" stroke="#e6e6e6"/><line x1="{px:.1}" y1="{plot_bottom}" x2="{px:.1}" y2="{:.1}" stroke="#333"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                plot_bottom + 5.0,
                plot_bottom + 19.0,
                tick_label(x)
            );
        }
        for y in nice_ticks(self.y_range.0, self.y_range.1, 6) {
            let py = self.y_to_px(y);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{py:.1}" x2="{plot_right}" y2="{py:.1}" stroke="#e6e6e6"/><line x1="{:.1}" y1="{py:.1}" x2="{LEFT}" y2="{py:.1}" stroke="#333"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT - 5.0,
                LEFT - 8.0,
                py + 4.0,
                tick_label(y)
            );
        }
        // Axes.
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{plot_bottom}" x2="{plot_right}" y2="{plot_bottom}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{plot_bottom}" stroke="#333"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (LEFT + plot_right) / 2.0,
            HEIGHT - 18.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
            (TOP + plot_bottom) / 2.0,
            (TOP + plot_bottom) / 2.0,
            escape(&self.y_label)
        );
        // Series.
        for series in &self.series {
            if series.points.is_empty() {
                continue;
            }
            let path: Vec<String> = series
                .points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", self.x_to_px(x), self.y_to_px(y)))
                .collect();
            let dash = if series.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
                escape(&series.color),
                path.join(" ")
            );
        }
        // Legend.
        for (i, series) in self.series.iter().enumerate() {
            let y = TOP + 10.0 + i as f64 * 20.0;
            let x = plot_right + 15.0;
            let dash = if series.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<line x1="{x}" y1="{y}" x2="{:.1}" y2="{y}" stroke="{}" stroke-width="3"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
                x + 24.0,
                escape(&series.color),
                x + 30.0,
                y + 4.0,
                escape(&series.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_axes_legend_and_one_line_per_series() {
        let chart = LineChart {
            title: "a < b".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x_range: (0.0, 130.0),
            y_range: (0.0, 100.0),
            x_log: false,
            series: vec![
                Series {
                    name: "fgd".into(),
                    color: "#D55E00".into(),
                    points: vec![(0.0, 0.0), (100.0, 95.0)],
                    dashed: false,
                },
                Series {
                    name: "ideal".into(),
                    color: "#000".into(),
                    points: vec![(0.0, 0.0), (100.0, 100.0)],
                    dashed: true,
                },
            ],
        };
        let svg = chart.render();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">fgd</text>") && svg.contains("a &lt; b"));
        assert!(svg.contains(">120</text>") && svg.contains(">100</text>"));
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(
            nice_ticks(0.0, 100.0, 5),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(nice_ticks(0.0, 1.0, 4), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }
}
