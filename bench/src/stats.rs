//! Counting what arrived: latency percentiles, a set of sequence numbers seen, and the report
//! every scenario prints.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

/// The `p`th percentile (0 < p ≤ 100) of ascending `sorted` samples, by nearest rank; 0 when
/// there are none.
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    // The epsilon keeps 99.9% of 1000 at rank 999 despite floating-point rounding.
    let rank = (p * sorted.len() as f64 / 100.0 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    pub count: usize,
    pub p50: u32,
    pub p99: u32,
    pub p999: u32,
    pub max: u32,
}

impl Latency {
    pub fn of(mut samples: Vec<u32>) -> Latency {
        samples.sort_unstable();
        Latency {
            count: samples.len(),
            p50: percentile(&samples, 50.0),
            p99: percentile(&samples, 99.0),
            p999: percentile(&samples, 99.9),
            max: samples.last().copied().unwrap_or(0),
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {} / p99 {} / p99.9 {} / max {}",
            ms(self.p50),
            ms(self.p99),
            ms(self.p999),
            ms(self.max)
        )
    }
}

fn ms(us: u32) -> String {
    format!("{:.2} ms", f64::from(us) / 1000.0)
}

/// Which sequence numbers were seen; grows as needed.
#[derive(Debug, Default, Clone)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    pub fn with_capacity(bits: u64) -> SeqSet {
        SeqSet {
            words: Vec::with_capacity(bits.div_ceil(64) as usize),
            len: 0,
        }
    }

    /// Adds `seq`; false when it was there already.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let fresh = self.words[word] & (1 << bit) == 0;
        self.words[word] |= 1 << bit;
        self.len += u64::from(fresh);
        fresh
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.words
            .get((seq / 64) as usize)
            .is_some_and(|word| word & (1 << (seq % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.len
    }
}

/// Failures counted by kind (HTTP status, transport error, close code…).
#[derive(Debug, Default)]
pub struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    pub fn add(&self, kind: impl Into<String>, count: u64) {
        *self
            .0
            .lock()
            .expect("tally lock")
            .entry(kind.into())
            .or_default() += count;
    }

    pub fn total(&self) -> u64 {
        self.0.lock().expect("tally lock").values().sum()
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.0.lock().expect("tally lock");
        if map.is_empty() {
            return write!(f, "none");
        }
        let parts: Vec<String> = map.iter().map(|(k, v)| format!("{v} × {k}")).collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// What one scenario measured: a title and labelled values, printed as an aligned block.
pub struct Report {
    title: String,
    rows: Vec<(String, String)>,
}

impl Report {
    pub fn new(title: impl Into<String>) -> Report {
        Report {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, label: &str, value: impl fmt::Display) {
        self.rows.push((label.to_owned(), value.to_string()));
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "== {}", self.title)?;
        let width = self.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (label, value) in &self.rows {
            writeln!(f, "  {label:<width$}  {value}")?;
        }
        Ok(())
    }
}

/// `count / seconds` with a thousands separator, e.g. `12,345/s`.
pub fn rate(count: f64, seconds: f64) -> String {
    if seconds <= 0.0 {
        return "n/a".into();
    }
    format!("{}/s", thousands((count / seconds).round() as u64))
}

pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&samples, 50.0), 500);
        assert_eq!(percentile(&samples, 99.0), 990);
        assert_eq!(percentile(&samples, 99.9), 999);
        assert_eq!(percentile(&samples, 100.0), 1000);
        assert_eq!(percentile(&[7], 50.0), 7);
        assert_eq!(percentile(&[7], 99.9), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[1, 2], 50.0), 1);
        assert_eq!(percentile(&[1, 2], 50.1), 2);
    }

    #[test]
    fn latency_summary_sorts_its_samples() {
        let summary = Latency::of(vec![30, 10, 20, 40]);
        assert_eq!(
            summary,
            Latency {
                count: 4,
                p50: 20,
                p99: 40,
                p999: 40,
                max: 40
            }
        );
        assert_eq!(Latency::of(Vec::new()).max, 0);
        assert_eq!(
            Latency::of(vec![1500]).to_string(),
            "p50 1.50 ms / p99 1.50 ms / p99.9 1.50 ms / max 1.50 ms"
        );
    }

    #[test]
    fn seq_set_counts_first_sightings() {
        let mut set = SeqSet::with_capacity(10);
        assert!(set.insert(3));
        assert!(!set.insert(3));
        assert!(set.insert(64));
        assert!(set.insert(1000));
        assert!(set.contains(64) && !set.contains(65) && !set.contains(1_000_000));
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn rates_and_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(rate(30_000.0, 2.0), "15,000/s");
        assert_eq!(rate(1.0, 0.0), "n/a");
    }

    #[test]
    fn tally_and_report_render() {
        let tally = Tally::default();
        assert_eq!(tally.to_string(), "none");
        tally.add("503", 2);
        tally.add("503", 1);
        tally.add("close 4100", 1);
        assert_eq!(tally.total(), 4);
        assert_eq!(tally.to_string(), "3 × 503, 1 × close 4100");
        let mut report = Report::new("t");
        report.row("a", 1);
        report.row("long", "x");
        assert_eq!(report.to_string(), "== t\n  a     1\n  long  x\n");
    }
}
