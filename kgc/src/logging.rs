//! Logging of both daemons (`ibemail-kgc` and `ibemail-milter`): one line
//! per event on standard error, which systemd puts in the journal.
//!
//! Text lines carry ANSI colours only when standard error is a terminal and
//! `NO_COLOR` is unset (<https://no-color.org>), so the journal and log
//! files stay plain. JSON lines (`--log-format json`) hold one object per
//! event with the fields flattened (`timestamp`, `level`, `target`,
//! `message`, then the event's own fields such as `queue_id`), for log
//! shippers. The filter comes from `IBEMAIL_LOG` (tracing syntax).

use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?}: expected text or json")),
        }
    }
}

/// The environment variable holding the log filter.
pub const FILTER_VARIABLE: &str = "IBEMAIL_LOG";

/// True when log lines may be coloured: standard error is a terminal and
/// `NO_COLOR` is unset or empty.
pub fn colour_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// Installs the process's logger: `format` on standard error, filtered by
/// `IBEMAIL_LOG` or else `default_filter`, and never passing what
/// [`carries_mail`] names. A second call does nothing.
pub fn init(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = std::env::var(FILTER_VARIABLE)
        .ok()
        .and_then(|spec| tracing_subscriber::EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(colour_allowed())
            .finish()
            .with(no_mail())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_ansi(false)
            .finish()
            .with(no_mail())
            .try_init(),
    };
}

/// Events of the milter protocol library below `info`: at `debug` and
/// `trace` it logs every header field and body chunk it carries,
/// decrypted bodies included, and mail must never reach a log.
fn carries_mail(metadata: &tracing::Metadata<'_>) -> bool {
    let target = metadata.target();
    let library = target == "indymilter" || target.starts_with("indymilter::");
    library && *metadata.level() > tracing::Level::INFO
}

/// A filter in front of every other: whatever `IBEMAIL_LOG` says (a more
/// specific directive such as `indymilter::connection=trace` would win
/// over any directive added to it), nothing [`carries_mail`] passes.
fn no_mail() -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    tracing_subscriber::filter::filter_fn(|metadata| !carries_mail(metadata))
}

/// Characters of peer-supplied text shown in a log line.
const SHOWN_CHARS: usize = 256;

/// `text` that came from a peer (an identity or a domain in a request, a
/// reason naming what a message carried), as a log line may show it: line
/// breaks and other control characters escaped (`\n`, `\u{1b}`), as are
/// backslashes (so an escaped line break cannot be told from a sent `\n`),
/// the Unicode line separators and the invisible format characters
/// (reordering marks, zero-width ones), so that it can neither start a line
/// of its own (which an audit log's reader would take for another event)
/// nor drive a terminal or disguise the rest of its line; and cut at 256
/// characters.
pub fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(SHOWN_CHARS + 4));
    for (i, c) in text.chars().enumerate() {
        if i == SHOWN_CHARS {
            out.push_str("[…]");
            break;
        }
        if c == '\\' || c.is_control() || is_separator_or_format(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Unicode's line and paragraph separators (Zl, Zp) and format characters
/// (Cf: bidirectional marks and overrides, zero-width characters, the byte
/// order mark, tags), which a log viewer does not show as themselves.
fn is_separator_or_format(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{600}'..='\u{605}'
            | '\u{61c}'
            | '\u{6dd}'
            | '\u{70f}'
            | '\u{890}'..='\u{891}'
            | '\u{8e2}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0001}'
            | '\u{e0020}'..='\u{e007f}'
    )
}

/// Refusals logged per minute under one [`LogLimit::refusals`].
const REFUSALS_PER_MINUTE: u32 = 20;

/// Audit lines for events a peer can cause in a loop (a refused
/// connection: a failed TLS handshake, a peer without a grant; a request
/// beyond a peer's grant), at most a few per minute: past that a flood of
/// them would fill the journal and push out the lines that matter. The rest
/// are counted (the daemon's metrics count every refusal) and said in one
/// line when logging resumes.
#[derive(Debug)]
pub struct LogLimit {
    per_window: u32,
    window: Duration,
    state: Mutex<LimitState>,
}

#[derive(Debug, Default)]
struct LimitState {
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// What to do with one event under a [`LogLimit`].
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Log it, saying that `suppressed` earlier ones were not.
    Log { suppressed: u64 },
    /// The first one over the limit: say that logging pauses.
    Pause,
    /// Count it only.
    Quiet,
}

impl LogLimit {
    /// At most `per_window` lines each `window`.
    pub fn new(per_window: u32, window: Duration) -> LogLimit {
        LogLimit {
            per_window,
            window,
            state: Mutex::new(LimitState::default()),
        }
    }

    /// The limit for refusals: 20 a minute.
    pub fn refusals() -> LogLimit {
        LogLimit::new(REFUSALS_PER_MINUTE, Duration::from_secs(60))
    }

    /// Whether no window is running at `now` (none began, or it ended).
    fn window_over(&self, state: &LimitState, now: Instant) -> bool {
        state
            .start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window)
    }

    fn admit(&self, now: Instant) -> Admit {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut carried = 0;
        if self.window_over(&state, now) {
            carried = std::mem::take(&mut state.suppressed);
            state.start = Some(now);
            state.logged = 0;
        }
        if state.logged < self.per_window {
            state.logged = state.logged.saturating_add(1);
            return Admit::Log {
                suppressed: carried,
            };
        }
        if state.logged == self.per_window {
            // The pause line is logged: it is not among the suppressed.
            state.logged = state.logged.saturating_add(1);
            return Admit::Pause;
        }
        state.suppressed += 1;
        Admit::Quiet
    }

    /// Logs `line()` to the audit log as a warning, within the limit.
    pub fn warn(&self, line: impl FnOnce() -> String) {
        match self.admit(Instant::now()) {
            Admit::Log { suppressed: 0 } => warn!(target: "ibemail_kgc::audit", "{}", line()),
            Admit::Log { suppressed } => warn!(
                target: "ibemail_kgc::audit",
                "{} ({suppressed} more like it were not logged)",
                line()
            ),
            Admit::Pause => warn!(
                target: "ibemail_kgc::audit",
                "{} (over {} such lines in {} s: the next are not logged for up to {} s; \
                 the daemon's metrics count them)",
                line(),
                self.per_window,
                self.window.as_secs(),
                self.window.as_secs()
            ),
            Admit::Quiet => debug!("{}", line()),
        }
    }

    /// Takes the count of events not logged, if there is one to report:
    /// once their window is over (then a new one starts with the next
    /// event), or at once if `now_anyway`.
    fn unreported(&self, now: Instant, now_anyway: bool) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let over = self.window_over(&state, now);
        if state.suppressed == 0 || !(over || now_anyway) {
            return 0;
        }
        if over {
            state.start = None;
            state.logged = 0;
        }
        std::mem::take(&mut state.suppressed)
    }

    /// Says how many events (named by `what`, e.g. `refused connections`)
    /// were not logged, once their window is over (the daemon calls this
    /// every few seconds: without it the count waited for the next event,
    /// which may never come), or at once if `now_anyway` (at shutdown).
    pub fn report_unlogged(&self, now_anyway: bool, what: &str) {
        let count = self.unreported(Instant::now(), now_anyway);
        if count > 0 {
            warn!(
                target: "ibemail_kgc::audit",
                "{count} more {what} were not logged (the daemon's metrics count them)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether trace events of indymilter, and of our own code, pass a
    /// subscriber filtered by `spec` as [`init`] builds it.
    fn trace_passes(spec: &str) -> (bool, bool) {
        use tracing_subscriber::layer::SubscriberExt as _;
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new(spec))
            .with(no_mail());
        tracing::subscriber::with_default(subscriber, || {
            (
                tracing::enabled!(target: "indymilter::connection", tracing::Level::TRACE),
                tracing::enabled!(target: "ibemail_milter::engine", tracing::Level::TRACE),
            )
        })
    }

    #[test]
    fn the_milter_library_never_logs_mail_whatever_the_filter() {
        // indymilter at trace would log the messages it carries.
        assert_eq!(trace_passes("trace"), (false, true));
        assert_eq!(trace_passes("indymilter=trace,info"), (false, false));
        // A more specific directive than any we could add.
        assert_eq!(
            trace_passes("indymilter::connection=trace,ibemail_milter=trace"),
            (false, true)
        );
        // A directive with a field name ranks above any plain one too.
        assert_eq!(trace_passes("indymilter[{msg}]=trace,info"), (false, false));
        assert_eq!(trace_passes("info"), (false, false));
    }

    #[test]
    fn refusals_are_logged_up_to_the_limit_then_counted_and_reported() {
        let limit = LogLimit::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        for s in 0..3 {
            assert_eq!(limit.admit(at(s)), Admit::Log { suppressed: 0 });
        }
        assert_eq!(limit.admit(at(3)), Admit::Pause);
        for s in 4..50 {
            assert_eq!(limit.admit(at(s)), Admit::Quiet);
        }
        // A minute after the window began: logged again, with the count of
        // those that were not (46: the pause line was logged).
        assert_eq!(limit.admit(at(60)), Admit::Log { suppressed: 46 });
        assert_eq!(limit.admit(at(61)), Admit::Log { suppressed: 0 });
        // A quiet spell resets the window with nothing to report.
        assert_eq!(limit.admit(at(500)), Admit::Log { suppressed: 0 });

        // A flood that stops: its count is reported once its window is
        // over, without waiting for another refusal, and only once.
        let limit = LogLimit::new(2, Duration::from_secs(60));
        for s in 0..10 {
            limit.admit(at(s));
        }
        assert_eq!(limit.unreported(at(30), false), 0, "window not over");
        assert_eq!(limit.unreported(at(61), false), 7);
        assert_eq!(limit.unreported(at(62), false), 0);
        assert_eq!(limit.admit(at(63)), Admit::Log { suppressed: 0 });
        // At shutdown, at once.
        for s in 64..70 {
            limit.admit(at(s));
        }
        assert_eq!(limit.unreported(at(70), true), 4);
        assert_eq!(limit.unreported(at(71), true), 0);
    }

    #[test]
    fn peer_text_is_shown_on_one_line_and_cut() {
        assert_eq!(shown("bob@b.test"), "bob@b.test");
        assert_eq!(shown("jürgen@b.test"), "jürgen@b.test");
        assert_eq!(
            shown("x@b.test\nkey use: open\r\u{1b}[2K\u{2028}\u{202e}\u{200b}\u{feff}"),
            "x@b.test\\nkey use: open\\r\\u{1b}[2K\\u{2028}\\u{202e}\\u{200b}\\u{feff}"
        );
        // A backslash sent as such is not mistaken for an escape.
        assert_eq!(shown(r"x@b.test\nkey"), r"x@b.test\\nkey");
        assert_ne!(shown("a\nb"), shown(r"a\nb"));
        let long = "a".repeat(1000);
        assert_eq!(shown(&long), format!("{}[…]", "a".repeat(256)));
        assert_eq!(shown(&"a".repeat(256)), "a".repeat(256));
    }

    #[test]
    fn formats_parse_and_others_are_refused_with_the_choices() {
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!(
            "xml".parse::<LogFormat>(),
            Err("\"xml\": expected text or json".into())
        );
    }
}
