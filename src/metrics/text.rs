//! The Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE` once
//! per family, then its samples, each family's samples together.

use std::fmt::Write;

use super::histogram::HistogramSnapshot;

/// The Content-Type of what [`Exposition`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A page of metrics being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn with_capacity(bytes: usize) -> Exposition {
        Exposition {
            out: String::with_capacity(bytes),
        }
    }

    /// Starts a family; its samples follow before the next family starts.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = write!(self.out, "# HELP {name} ");
        escape_into(&mut self.out, help, false);
        let _ = writeln!(self.out, "\n# TYPE {name} {}", kind.as_str());
    }

    /// One sample of an integer value.
    pub fn int(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.head(name, labels);
        let _ = writeln!(self.out, " {value}");
    }

    /// One sample of a signed integer value.
    pub fn signed(&mut self, name: &str, labels: &[(&str, &str)], value: i64) {
        self.head(name, labels);
        let _ = writeln!(self.out, " {value}");
    }

    /// One sample of a real value.
    pub fn real(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.head(name, labels);
        self.out.push(' ');
        push_float(&mut self.out, value);
        self.out.push('\n');
    }

    /// The `_bucket`, `_sum` and `_count` samples of one histogram series (its family
    /// was started with [`Kind::Histogram`] under `name`).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        let mut le = String::with_capacity(16);
        for &(bound, n) in &h.buckets {
            le.clear();
            push_float(&mut le, bound);
            self.bucket(&bucket, labels, &le, n);
        }
        self.bucket(&bucket, labels, "+Inf", h.count);
        self.real(&format!("{name}_sum"), labels, h.sum_seconds);
        self.int(&format!("{name}_count"), labels, h.count);
    }

    fn bucket(&mut self, name: &str, labels: &[(&str, &str)], le: &str, n: u64) {
        self.head(name, labels);
        if labels.is_empty() {
            self.out.push('{');
        } else {
            self.out.pop();
            self.out.push(',');
        }
        let _ = writeln!(self.out, "le=\"{le}\"}} {n}");
    }

    pub fn finish(self) -> String {
        self.out
    }

    fn head(&mut self, name: &str, labels: &[(&str, &str)]) {
        self.out.push_str(name);
        if labels.is_empty() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_into(&mut self.out, v, true);
            self.out.push('"');
        }
        self.out.push('}');
    }
}

/// Escapes as the format asks: backslash and newline everywhere, the double quote in
/// label values too.
fn escape_into(out: &mut String, s: &str, quote: bool) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// A float as Prometheus parses it (Go's spelling of the infinities and NaN).
fn push_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_has_help_type_and_escaped_labels() {
        let mut e = Exposition::default();
        e.family("twinlun_x_total", Kind::Counter, "Things.\nMore \\ here.");
        e.int("twinlun_x_total", &[("volume", "a\"b\\c\nd")], 3);
        e.real("twinlun_x_total", &[], f64::INFINITY);
        assert_eq!(
            e.finish(),
            "# HELP twinlun_x_total Things.\\nMore \\\\ here.\n\
             # TYPE twinlun_x_total counter\n\
             twinlun_x_total{volume=\"a\\\"b\\\\c\\nd\"} 3\n\
             twinlun_x_total +Inf\n"
        );
    }

    #[test]
    fn a_histogram_writes_cumulative_buckets_then_sum_and_count() {
        let h = HistogramSnapshot {
            buckets: vec![(0.001, 1), (0.5, 3)],
            count: 4,
            sum_seconds: 1.25,
        };
        let mut e = Exposition::default();
        e.histogram("t_seconds", &[("volume", "v")], &h);
        assert_eq!(
            e.finish(),
            "t_seconds_bucket{volume=\"v\",le=\"0.001\"} 1\n\
             t_seconds_bucket{volume=\"v\",le=\"0.5\"} 3\n\
             t_seconds_bucket{volume=\"v\",le=\"+Inf\"} 4\n\
             t_seconds_sum{volume=\"v\"} 1.25\n\
             t_seconds_count{volume=\"v\"} 4\n"
        );
    }
}
