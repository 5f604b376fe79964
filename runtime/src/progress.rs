//! Progress of a long, bounded job (`capture snapshot`, `apply replay`) for
//! the person or the log collector watching it.
//!
//! On a terminal it is an `indicatif` bar; otherwise (a container, CI, a
//! pipe) a structured log line every `log_every`, with the count, the total
//! when known and the rate. The count only moves forward.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

/// How progress is shown.
enum Display {
    Bar(ProgressBar),
    Log {
        every: Duration,
        last_logged: Instant,
    },
}

/// One job's progress: a label (`"snapshot public.users"`), a count of
/// items done and, when known, the expected total.
pub struct Progress {
    label: String,
    done: u64,
    total: Option<u64>,
    started: Instant,
    display: Display,
}

impl Progress {
    /// A bar when stderr is a terminal, log lines every `log_every` otherwise.
    pub fn new(label: &str, total: Option<u64>, log_every: Duration) -> Progress {
        let display = if std::io::stderr().is_terminal() {
            let bar = match total {
                Some(total) => ProgressBar::new(total),
                None => ProgressBar::new_spinner(),
            };
            let template = if total.is_some() {
                "{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})"
            } else {
                "{msg} {spinner} {pos} ({per_sec})"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_owned());
            Display::Bar(bar)
        } else {
            Display::Log {
                every: log_every,
                last_logged: Instant::now(),
            }
        };
        Progress {
            label: label.to_owned(),
            done: 0,
            total,
            started: Instant::now(),
            display,
        }
    }

    /// Items done so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// `n` more items are done.
    pub fn advance(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        match &mut self.display {
            Display::Bar(bar) => {
                // The estimate can be short (table statistics): grow the bar.
                if self.total.is_some_and(|total| self.done > total) {
                    self.total = Some(self.done);
                    bar.set_length(self.done);
                }
                bar.set_position(self.done);
            }
            Display::Log { every, last_logged } => {
                if last_logged.elapsed() >= *every {
                    *last_logged = Instant::now();
                    log_line(&self.label, self.done, self.total, self.started, false);
                }
            }
        }
    }

    /// The job ended: the bar is completed, or a last log line is written.
    pub fn finish(self) {
        match self.display {
            Display::Bar(bar) => bar.finish(),
            Display::Log { .. } => log_line(&self.label, self.done, self.total, self.started, true),
        }
    }
}

fn log_line(label: &str, done: u64, total: Option<u64>, started: Instant, finished: bool) {
    let seconds = started.elapsed().as_secs_f64();
    let per_second = if seconds > 0.0 {
        (done as f64 / seconds).round() as u64
    } else {
        0
    };
    info!(
        job = label,
        done,
        total = total.unwrap_or(0),
        per_second,
        finished,
        "progress"
    );
}
