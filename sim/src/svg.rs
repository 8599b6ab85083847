//! A small SVG line-plot writer for `easel report`: axes with round ticks, one polyline per
//! series, a legend. Coordinates are printed with fixed decimals, so the same data give the
//! same bytes.

use std::fmt::Write;

/// One line of a plot: its name and its `(x, y)` points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// What to draw.
#[derive(Clone, Debug, PartialEq)]
pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 52.0;
/// Colour-blind-safe colours (Okabe and Ito).
const COLORS: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
];

/// Escapes text for XML.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A tick step of 1, 2 or 5 times a power of ten giving about `count` ticks over `span`.
fn tick_step(span: f64, count: f64) -> f64 {
    if !(span.is_finite() && span > 0.0) {
        return 1.0;
    }
    let raw = span / count;
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

/// The range `[lo, hi]` of finite values widened to whole tick steps.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    let step = tick_step(hi - lo, 6.0);
    ((lo / step).floor() * step, (hi / step).ceil() * step, step)
}

/// Writes the plot as a standalone SVG document.
pub fn render(plot: &Plot) -> String {
    let all = || plot.series.iter().flat_map(|s| s.points.iter());
    let (x0, x1, xs) = range(all().map(|p| p.0));
    let (y0, y1, ys) = range(all().map(|p| p.1));
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| TOP + ph - (y - y0) / (y1 - y0) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/><text x="{:.1}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        LEFT + pw / 2.0,
        escape(&plot.title)
    );
    let ticks = |lo: f64, hi: f64, step: f64| {
        let n = ((hi - lo) / step).round() as i64;
        (0..=n).map(move |i| lo + i as f64 * step)
    };
    let decimals = |step: f64| (-step.log10().floor()).max(0.0) as usize;
    for x in ticks(x0, x1, xs) {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#ddd"/><text x="{0:.1}" y="{3:.1}" text-anchor="middle">{4:.5$}</text>"##,
            px(x),
            TOP,
            TOP + ph,
            TOP + ph + 16.0,
            x,
            decimals(xs)
        );
    }
    for y in ticks(y0, y1, ys) {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="#ddd"/><text x="{3:.1}" y="{4:.1}" text-anchor="end">{5:.6$}</text>"##,
            LEFT,
            py(y),
            LEFT + pw,
            LEFT - 6.0,
            py(y) + 4.0,
            y,
            decimals(ys)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 12.0,
        escape(&plot.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{0:.1}" text-anchor="middle" transform="rotate(-90 16 {0:.1})">{1}</text>"#,
        TOP + ph / 2.0,
        escape(&plot.y_label)
    );
    for (i, series) in plot.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = series
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="{color}" stroke-width="2"/><text x="{3:.1}" y="{4:.1}">{5}</text>"#,
            LEFT + pw + 12.0,
            ly,
            LEFT + pw + 32.0,
            LEFT + pw + 38.0,
            ly + 4.0,
            escape(&series.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_point_lands_inside_the_plot_area(
            series in prop::collection::vec(
                prop::collection::vec((0.0f64..1e4, -1e3f64..1e3), 1..20), 1..5)
        ) {
            let plot = Plot {
                title: "t".into(),
                x_label: "x".into(),
                y_label: "y".into(),
                series: series
                    .into_iter()
                    .enumerate()
                    .map(|(i, points)| Series { name: format!("s{i}"), points })
                    .collect(),
            };
            let svg = render(&plot);
            prop_assert_eq!(svg.matches("<polyline").count(), plot.series.len());
            for line in svg.lines().filter(|l| l.starts_with("<polyline")) {
                let pts = line.split("points=\"").nth(1).unwrap().trim_end_matches("\"/>");
                for p in pts.split(' ') {
                    let (x, y) = p.split_once(',').unwrap();
                    let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                    prop_assert!((LEFT - 0.1..=WIDTH - RIGHT + 0.1).contains(&x), "{}", x);
                    prop_assert!((TOP - 0.1..=HEIGHT - BOTTOM + 0.1).contains(&y), "{}", y);
                }
            }
        }
    }

    #[test]
    fn names_are_escaped_and_ticks_are_round() {
        let plot = Plot {
            title: "a < b & c".into(),
            x_label: "virtual time (s)".into(),
            y_label: "accuracy".into(),
            series: vec![Series {
                name: "\"q\"".into(),
                points: vec![(0.0, 0.1), (30.0, 0.97)],
            }],
        };
        let svg = render(&plot);
        assert!(svg.contains("a &lt; b &amp; c") && svg.contains("&quot;q&quot;"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(
            svg.contains(">30</text>") && svg.contains(">0.2</text>"),
            "{svg}"
        );
        assert_eq!(tick_step(1.0, 6.0), 0.2);
        assert_eq!(tick_step(30.0, 6.0), 5.0);
    }
}
