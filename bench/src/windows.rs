//! Accepted vs persisted over time, for `ingest --window-secs`: every window the tool reads how
//! many events it has had accepted and how many the server's worker has stored
//! (`switchboard_persisted_events_total`, counted after each commit), so a persisted rate that
//! does not keep up shows as a growing backlog (accepted − persisted) rather than only as a
//! late final count.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::stats::thousands;
use crate::Target;

const PERSISTED: &str = "switchboard_persisted_events_total";

/// One window's end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at_secs: f64,
    /// Events accepted since the start.
    pub accepted: u64,
    /// Events the server stored since the start.
    pub persisted: u64,
}

impl Sample {
    pub fn backlog(&self) -> u64 {
        self.accepted.saturating_sub(self.persisted)
    }
}

/// Samples every `window` from `started` until `stop` turns true (one last sample then).
pub async fn sample(
    target: &Target,
    window: Duration,
    started: Instant,
    accepted: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<Sample>> {
    let base = target.metric(PERSISTED).await?;
    let mut samples = Vec::new();
    let mut next = started + window;
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep_until(next) => false,
            _ = stop.wait_for(|stop| *stop) => true,
        };
        let persisted = target.metric(PERSISTED).await? - base;
        samples.push(Sample {
            at_secs: started.elapsed().as_secs_f64(),
            accepted: accepted.load(Ordering::Relaxed),
            persisted: persisted.max(0.0) as u64,
        });
        if stopping {
            return Ok(samples);
        }
        next += window;
    }
}

/// The windows as a table, and whether the backlog kept growing.
pub struct Windows(pub Vec<Sample>);

impl Windows {
    /// The backlog's growth over the second half of the windows in which events were still
    /// being accepted (the catch-up after the sending stopped does not count), in events per
    /// second: positive means the worker falls behind.
    pub fn backlog_growth(&self) -> Option<f64> {
        let sending = self
            .0
            .iter()
            .scan(0, |accepted, sample| {
                let more = sample.accepted > *accepted;
                *accepted = sample.accepted;
                Some(more)
            })
            .take_while(|more| *more)
            .count();
        let samples = &self.0[..sending];
        if samples.len() < 4 {
            return None;
        }
        let (mid, last) = (&samples[samples.len() / 2 - 1], samples.last()?);
        let seconds = last.at_secs - mid.at_secs;
        (seconds > 0.0).then(|| (last.backlog() as f64 - mid.backlog() as f64) / seconds)
    }
}

impl fmt::Display for Windows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut previous = Sample {
            at_secs: 0.0,
            accepted: 0,
            persisted: 0,
        };
        for sample in &self.0 {
            let seconds = (sample.at_secs - previous.at_secs).max(1e-9);
            writeln!(
                f,
                "    {:>6.1} s  accepted {:>8}/s  persisted {:>8}/s  backlog {:>9}",
                sample.at_secs,
                thousands(((sample.accepted - previous.accepted) as f64 / seconds) as u64),
                thousands(
                    (sample.persisted.saturating_sub(previous.persisted) as f64 / seconds) as u64
                ),
                thousands(sample.backlog()),
            )?;
            previous = *sample;
        }
        match self.backlog_growth() {
            Some(growth) => write!(
                f,
                "    backlog growth over the second half of the sending: {growth:+.0} events/s ({})",
                if growth > 0.02 * self.mean_accepted_rate() {
                    "GROWING: the worker does not keep up"
                } else {
                    "flat: the worker keeps up"
                }
            ),
            None => write!(f, "    (too few windows to judge the backlog)"),
        }
    }
}

impl Windows {
    fn mean_accepted_rate(&self) -> f64 {
        self.0
            .iter()
            .max_by_key(|sample| sample.accepted)
            .map_or(0.0, |last| last.accepted as f64 / last.at_secs.max(1e-9))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_secs: f64, accepted: u64, persisted: u64) -> Sample {
        Sample {
            at_secs,
            accepted,
            persisted,
        }
    }

    #[test]
    fn a_flat_backlog_keeps_up_and_a_growing_one_does_not() {
        let flat = Windows(vec![
            at(5.0, 100, 80),
            at(10.0, 200, 180),
            at(15.0, 300, 280),
            at(20.0, 400, 380),
        ]);
        assert_eq!(flat.backlog_growth(), Some(0.0));
        assert!(flat.to_string().contains("flat: the worker keeps up"));
        let growing = Windows(vec![
            at(5.0, 100, 80),
            at(10.0, 200, 150),
            at(15.0, 300, 200),
            at(20.0, 400, 250),
        ]);
        assert_eq!(growing.backlog_growth(), Some(10.0));
        assert!(growing.to_string().contains("GROWING"));
        // The catch-up once the sending stopped is not the worker keeping up.
        let mut caught_up = growing.0.clone();
        caught_up.extend([at(25.0, 400, 350), at(30.0, 400, 400)]);
        assert_eq!(Windows(caught_up).backlog_growth(), Some(10.0));
    }

    #[test]
    fn few_windows_are_not_judged() {
        let short = Windows(vec![at(5.0, 100, 100)]);
        assert_eq!(short.backlog_growth(), None);
        assert!(short.to_string().contains("too few windows"));
    }
}
