//! The report's chart: one SVG bar chart per figure, one bar per same-node path.

use super::figures::{Metric, LATENCY, THROUGHPUT};
use crate::e2e::{median, Results};

/// One bar chart per metric, one bar per same-node path, as SVG.
pub fn chart(results: &Results) -> String {
    let results = &results.paths;
    let metrics: Vec<&Metric> = THROUGHPUT.into_iter().chain(LATENCY).collect();
    let row = 26;
    let panel_height = 30 + row * results.len();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n",
        metrics.len() * panel_height + 10
    );
    for (p, metric) in metrics.iter().enumerate() {
        let top = p * panel_height;
        svg.push_str(&format!(
            "<text x=\"10\" y=\"{}\" font-weight=\"bold\">{}, median</text>\n",
            top + 18,
            metric.panel
        ));
        let max = results
            .iter()
            .map(|(_, r)| median(&metric.scaled(r)))
            .filter(|v| v.is_finite())
            .fold(f64::MIN_POSITIVE, f64::max);
        for (i, (name, r)) in results.iter().enumerate() {
            let v = median(&metric.scaled(r));
            let w = if v.is_finite() { 400.0 * v / max } else { 0.0 };
            let y = top + 28 + i * row;
            let fill = match name.as_str() {
                "vswitchd" => "#d9822b",
                "tap_bounce" => "#999999",
                _ => "#4a7ebb",
            };
            svg.push_str(&format!(
                "<text x=\"10\" y=\"{}\">{name}</text><rect x=\"120\" y=\"{y}\" width=\"{w:.0}\" height=\"20\" fill=\"{fill}\"/><text x=\"{:.0}\" y=\"{}\">{v:.2}</text>\n",
                y + 15,
                126.0 + w,
                y + 15
            ));
        }
    }
    svg.push_str("</svg>\n");
    svg
}
