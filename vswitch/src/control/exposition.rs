//! Which exposition format a scraper gets. prometheus-client writes OpenMetrics only; Prometheus
//! asks for it by name, but promtool, curl and older scrapers read the classic text format
//! (0.0.4), where a counter's HELP and TYPE name the sample itself (`x_total`, not the family
//! `x`) and there is no `# EOF`. So the classic form is derived from the OpenMetrics text.

/// A metrics exposition format, chosen from the request's `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    OpenMetrics,
    ClassicText,
}

impl Exposition {
    /// OpenMetrics only for a client that names it with a non-zero weight, as Prometheus does;
    /// everyone else (no header, `*/*`, `text/plain`) gets the classic format.
    pub fn negotiate(accept: Option<&str>) -> Exposition {
        let wants_openmetrics = accept.into_iter().flat_map(|a| a.split(',')).any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let weight = parts.find_map(|p| p.strip_prefix("q=")).and_then(|q| q.parse::<f32>().ok());
            media.eq_ignore_ascii_case("application/openmetrics-text") && weight.is_none_or(|q| q > 0.0)
        });
        if wants_openmetrics {
            Exposition::OpenMetrics
        } else {
            Exposition::ClassicText
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::ClassicText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// `openmetrics` (prometheus-client's output) in this format.
    pub fn render(self, openmetrics: String) -> String {
        match self {
            Exposition::OpenMetrics => openmetrics,
            Exposition::ClassicText => classic_from_openmetrics(&openmetrics),
        }
    }
}

/// The classic text format of an OpenMetrics text with counters, gauges and no exemplars (what
/// our collector writes): counter families renamed to their `_total` samples in HELP and TYPE,
/// `# UNIT` and `# EOF` left out, HELP unescaped of `\"` (an escape the classic format lacks).
fn classic_from_openmetrics(text: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("# TYPE ").and_then(|rest| rest.strip_suffix(" counter")) {
            counters.insert(name.to_string());
        }
    }
    let sample_name = |family: &str| {
        if counters.contains(family) {
            format!("{family}_total")
        } else {
            family.to_string()
        }
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (family, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {}\n", sample_name(family), help.replace("\\\"", "\"")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            out.push_str(&format!("# TYPE {} {kind}\n", sample_name(family)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "# HELP vswitch_drops Frames dropped, by reason.\n# TYPE vswitch_drops counter\n\
        vswitch_drops_total{reason=\"no_route\"} 3\n# HELP vswitch_ports Ports \\\"attached\\\".\n\
        # TYPE vswitch_ports gauge\n# UNIT vswitch_ports ports\nvswitch_ports 2\n# EOF\n";

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_the_classic_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;\
                          version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(Exposition::negotiate(Some(prometheus)), Exposition::OpenMetrics);
        assert_eq!(Exposition::negotiate(Some("application/openmetrics-text")), Exposition::OpenMetrics);
        assert_eq!(Exposition::negotiate(None), Exposition::ClassicText);
        assert_eq!(Exposition::negotiate(Some("*/*")), Exposition::ClassicText);
        assert_eq!(Exposition::negotiate(Some("text/plain;version=0.0.4")), Exposition::ClassicText);
        assert_eq!(Exposition::negotiate(Some("application/openmetrics-text;q=0")), Exposition::ClassicText);
    }

    #[test]
    fn the_classic_format_names_counter_samples_in_help_and_type_and_has_no_eof() {
        let classic = Exposition::ClassicText.render(OPENMETRICS.to_string());
        assert_eq!(
            classic,
            "# HELP vswitch_drops_total Frames dropped, by reason.\n# TYPE vswitch_drops_total counter\n\
             vswitch_drops_total{reason=\"no_route\"} 3\n# HELP vswitch_ports Ports \"attached\".\n\
             # TYPE vswitch_ports gauge\nvswitch_ports 2\n"
        );
        assert_eq!(Exposition::OpenMetrics.render(OPENMETRICS.to_string()), OPENMETRICS);
    }
}
