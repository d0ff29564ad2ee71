//! A layer × head heat map of importance scores as a standalone SVG, pruned heads crossed out.
use std::fmt::Write;

use forge_api::{HeadMask, HeadScores};

const CELL: usize = 28;
const LEFT: usize = 70;
const TOP: usize = 50;

/// Interpolates a perceptually ordered ramp (viridis end points and middle) at `t` in [0, 1].
fn colour(t: f32) -> String {
    const STOPS: [(f32, [f32; 3]); 3] =
        [(0.0, [68.0, 1.0, 84.0]), (0.5, [33.0, 145.0, 140.0]), (1.0, [253.0, 231.0, 37.0])];
    let t = t.clamp(0.0, 1.0);
    let (a, b) = if t <= 0.5 { (STOPS[0], STOPS[1]) } else { (STOPS[1], STOPS[2]) };
    let u = (t - a.0) / (b.0 - a.0);
    let c: Vec<u8> = (0..3).map(|i| (a.1[i] + (b.1[i] - a.1[i]) * u).round() as u8).collect();
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// The heat map: one row per layer, one cell per query head, colour by score (normalised over the
/// model), an ✕ on heads the mask removes.
pub fn heatmap_svg(scores: &HeadScores, mask: Option<&HeadMask>, title: &str) -> String {
    let values = scores.scores.iter().flatten().copied();
    let (lo, hi) = values.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let cols = scores.scores.iter().map(Vec::len).max().unwrap_or(0);
    let (width, height) = (LEFT + cols * CELL + 20, TOP + scores.scores.len() * CELL + 40);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"20\" font-size=\"14\">{}</text>\n<text x=\"{LEFT}\" y=\"{}\">head →</text>\n",
        escape(title),
        TOP - 8
    );
    for (layer, row) in scores.scores.iter().enumerate() {
        let y = TOP + layer * CELL;
        let _ = writeln!(svg, "<text x=\"8\" y=\"{}\">layer {layer}</text>", y + CELL / 2 + 4);
        for (head, &score) in row.iter().enumerate() {
            let x = LEFT + head * CELL;
            let _ = writeln!(
                svg,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{CELL}\" height=\"{CELL}\" fill=\"{}\" stroke=\"white\"><title>layer {layer} head {head}: {score:.4}</title></rect>",
                colour((score - lo) / span)
            );
            if mask.is_some_and(|m| m.pruned_in(layer).contains(&head)) {
                let (x2, y2) = (x + CELL - 6, y + CELL - 6);
                let _ = writeln!(
                    svg,
                    "<path d=\"M{} {} L{x2} {y2} M{x2} {} L{} {y2}\" stroke=\"#e8112d\" stroke-width=\"3\"/>",
                    x + 6,
                    y + 6,
                    y + 6,
                    x + 6
                );
            }
        }
    }
    let _ = writeln!(
        svg,
        "<text x=\"{LEFT}\" y=\"{}\">dark = least important ({lo:.3}), yellow = most ({hi:.3}){}</text>\n</svg>",
        height - 14,
        if mask.is_some() { "; ✕ = removed" } else { "" }
    );
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_cell_per_head_and_crosses_out_pruned_ones() {
        let scores = HeadScores::attention(vec![vec![0.0, 1.0], vec![0.5, 0.25]]);
        let mask = HeadMask::from_json(r#"{"pruned": {"1": [1]}}"#).unwrap();
        let svg = heatmap_svg(&scores, Some(&mask), "a < b");
        assert_eq!(svg.matches("<rect x=").count(), 4);
        assert_eq!(svg.matches("<path").count(), 1);
        assert!(svg.contains("a &lt; b") && svg.contains("layer 1 head 1: 0.2500"));
        assert_eq!(colour(0.0), "#440154");
        assert_eq!(colour(1.0), "#fde725");
    }
}
