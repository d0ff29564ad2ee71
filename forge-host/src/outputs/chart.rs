//! A small line chart as standalone SVG (loss curves, per-cycle metrics): no plotting library, so
//! reports render anywhere an SVG does.
use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 320.0;
const PAD: f64 = 50.0;
const COLOURS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"];

/// The axes' ranges `(x0, x1, y0, y1)` over every finite point, never empty, with 5% room above and
/// below the data.
fn bounds(series: &[(String, Vec<(f64, f64)>)]) -> (f64, f64, f64, f64) {
    let points = series.iter().flat_map(|s| s.1.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) =
        (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let margin = (y1 - y0) * 0.05;
    (x0, x1, y0 - margin, y1 + margin)
}

/// `series` of (name, points) drawn on shared axes.
pub fn line_chart_svg(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let (x0, x1, y0, y1) = bounds(series);
    let px = |x: f64| PAD + (x - x0) / (x1 - x0) * (W - 2.0 * PAD);
    let py = |y: f64| H - PAD - (y - y0) / (y1 - y0) * (H - 2.0 * PAD);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{PAD}\" y=\"20\" font-size=\"14\">{title}</text>\n\
         <path d=\"M{PAD} {} L{PAD} {} L{} {}\" stroke=\"#333\" fill=\"none\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>\n<text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">{y_label}</text>\n",
        PAD,
        H - PAD,
        W - PAD,
        H - PAD,
        W / 2.0,
        H - 12.0,
        H / 2.0,
        H / 2.0
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{y:.3}</text>",
            PAD - 4.0,
            py(y) + 4.0
        );
        let x = x0 + (x1 - x0) * i as f64 / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x:.0}</text>",
            px(x),
            H - PAD + 14.0
        );
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = pts
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>",
            path.join(" ")
        );
        for &(x, y) in pts.iter().filter(|p| p.1.is_finite() && pts.len() <= 20) {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"><title>{y:.4}</title></circle>",
                px(x),
                py(y)
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" fill=\"{colour}\">{name}</text>",
            W - PAD - 120.0,
            PAD + 14.0 * i as f64
        );
    }
    svg + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_one_line_per_series_with_its_label() {
        let svg = line_chart_svg(
            "loss",
            "step",
            "nats",
            &[("cycle 1".into(), vec![(0.0, 2.0), (1.0, 1.5)]), ("cycle 2".into(), vec![(0.0, 1.8)])],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("cycle 1") && svg.contains("cycle 2") && svg.ends_with("</svg>\n"));
    }
}
