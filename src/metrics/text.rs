//! The Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE` once
//! per family, then its samples, each family's samples together.
//!
//! A node with 1,000 volumes writes some 40,000 lines per scrape, so the writer avoids
//! the formatting machinery on the hot path: a series' labels are escaped once into a
//! [`Labels`] and reused for every family, integers are written by hand, and bucket
//! bounds are formatted once per page.

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

/// A label set, escaped and rendered once: `{k="v",...}`, or nothing when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(String);

impl Labels {
    pub fn new(pairs: &[(&str, &str)]) -> Labels {
        let mut s = String::new();
        for (i, (k, v)) in pairs.iter().enumerate() {
            s.push(if i == 0 { '{' } else { ',' });
            s.push_str(k);
            s.push_str("=\"");
            escape_into(&mut s, v, true);
            s.push('"');
        }
        if !s.is_empty() {
            s.push('}');
        }
        Labels(s)
    }
}

/// A page of metrics being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    /// `le` values of the bucket bounds met so far, by their bounds slice.
    les: Vec<(&'static [f64], Vec<String>)>,
}

impl Exposition {
    pub fn with_capacity(bytes: usize) -> Exposition {
        Exposition {
            out: String::with_capacity(bytes),
            les: Vec::new(),
        }
    }

    /// Starts a family; its samples follow before the next family starts.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_into(&mut self.out, help, false);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
    }

    /// One sample of an integer value.
    pub fn int(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.int_at(name, &Labels::new(labels), value);
    }

    /// [`Exposition::int`] with labels rendered beforehand.
    pub fn int_at(&mut self, name: &str, labels: &Labels, value: u64) {
        self.out.push_str(name);
        self.out.push_str(&labels.0);
        self.out.push(' ');
        push_u64(&mut self.out, value);
        self.out.push('\n');
    }

    /// One sample of a signed integer value.
    pub fn signed(&mut self, name: &str, labels: &[(&str, &str)], value: i64) {
        self.out.push_str(name);
        self.out.push_str(&Labels::new(labels).0);
        let _ = writeln!(self.out, " {value}");
    }

    /// One sample of a real value.
    pub fn real(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.real_at(name, &Labels::new(labels), value);
    }

    /// [`Exposition::real`] with labels rendered beforehand.
    pub fn real_at(&mut self, name: &str, labels: &Labels, value: f64) {
        self.out.push_str(name);
        self.out.push_str(&labels.0);
        self.out.push(' ');
        push_float(&mut self.out, value);
        self.out.push('\n');
    }

    /// The `_bucket`, `_sum` and `_count` samples of one histogram series (its family
    /// was started with [`Kind::Histogram`] under `name`).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        self.histogram_at(name, &Labels::new(labels), h);
    }

    /// [`Exposition::histogram`] with labels rendered beforehand.
    pub fn histogram_at(&mut self, name: &str, labels: &Labels, h: &HistogramSnapshot) {
        let at = match self
            .les
            .iter()
            .position(|(b, _)| std::ptr::eq(*b, h.bounds))
        {
            Some(i) => i,
            None => {
                let les = h
                    .bounds
                    .iter()
                    .map(|b| {
                        let mut s = String::new();
                        push_float(&mut s, *b);
                        s
                    })
                    .collect();
                self.les.push((h.bounds, les));
                self.les.len() - 1
            }
        };
        // Labels end with '}': the bucket's `le` goes in before it.
        let open = labels.0.strip_suffix('}');
        let les = std::mem::take(&mut self.les[at].1);
        for (le, n) in les
            .iter()
            .map(String::as_str)
            .zip(h.cumulative.iter().copied())
            .chain(std::iter::once(("+Inf", h.count)))
        {
            self.out.push_str(name);
            self.out.push_str("_bucket");
            match open {
                Some(l) => {
                    self.out.push_str(l);
                    self.out.push(',');
                }
                None => self.out.push('{'),
            }
            self.out.push_str("le=\"");
            self.out.push_str(le);
            self.out.push_str("\"} ");
            push_u64(&mut self.out, n);
            self.out.push('\n');
        }
        self.les[at].1 = les;
        self.out.push_str(name);
        self.out.push_str("_sum");
        self.out.push_str(&labels.0);
        self.out.push(' ');
        push_float(&mut self.out, h.sum_seconds);
        self.out.push('\n');
        self.out.push_str(name);
        self.out.push_str("_count");
        self.out.push_str(&labels.0);
        self.out.push(' ');
        push_u64(&mut self.out, h.count);
        self.out.push('\n');
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Escapes as the format asks: backslash and newline everywhere, the double quote in
/// label values too.
fn escape_into(out: &mut String, s: &str, quote: bool) {
    if !s.contains(['\\', '\n', '"']) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

fn push_u64(out: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &d in &buf[i..] {
        out.push(d as char);
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
        e.int("twinlun_x_total", &[("a", "1"), ("b", "2")], u64::MAX);
        e.real("twinlun_x_total", &[], f64::INFINITY);
        e.int("twinlun_x_total", &[], 0);
        assert_eq!(
            e.finish(),
            "# HELP twinlun_x_total Things.\\nMore \\\\ here.\n\
             # TYPE twinlun_x_total counter\n\
             twinlun_x_total{volume=\"a\\\"b\\\\c\\nd\"} 3\n\
             twinlun_x_total{a=\"1\",b=\"2\"} 18446744073709551615\n\
             twinlun_x_total +Inf\n\
             twinlun_x_total 0\n"
        );
    }

    #[test]
    fn a_histogram_writes_cumulative_buckets_then_sum_and_count() {
        static B: &[f64] = &[0.001, 0.5];
        let h = HistogramSnapshot {
            bounds: B,
            cumulative: vec![1, 3],
            count: 4,
            sum_seconds: 1.25,
        };
        let mut e = Exposition::default();
        e.histogram("t_seconds", &[("volume", "v")], &h);
        e.histogram("u_seconds", &[], &h);
        assert_eq!(
            e.finish(),
            "t_seconds_bucket{volume=\"v\",le=\"0.001\"} 1\n\
             t_seconds_bucket{volume=\"v\",le=\"0.5\"} 3\n\
             t_seconds_bucket{volume=\"v\",le=\"+Inf\"} 4\n\
             t_seconds_sum{volume=\"v\"} 1.25\n\
             t_seconds_count{volume=\"v\"} 4\n\
             u_seconds_bucket{le=\"0.001\"} 1\n\
             u_seconds_bucket{le=\"0.5\"} 3\n\
             u_seconds_bucket{le=\"+Inf\"} 4\n\
             u_seconds_sum 1.25\n\
             u_seconds_count 4\n"
        );
    }
}
