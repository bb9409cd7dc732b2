//! The console's request-type numbers: every [`SAMPLE_EVERY`] the host's own metrics (the
//! Prometheus text `/metrics` serves) are read once, and the last [`KEPT_SAMPLES`] readings
//! (15 minutes) are kept in memory. Rates, latencies and error counts are differences
//! between readings, so the request path does no work for the console at all, and ten open
//! consoles cost what one does.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Serialize;

use crate::metrics::{REQUESTS_TOTAL, REQUEST_DURATION, UNKNOWN_TYPE};

/// How often the metrics are read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// 15 minutes of readings, plus the one the first difference starts from.
pub const KEPT_SAMPLES: usize = 15 * 60 / 5 + 1;
/// The latencies shown now are over this many last intervals (one minute): one 5-second
/// interval holds too few requests of a quiet type to say anything.
const LATENCY_INTERVALS: usize = 12;

/// One request type's counters at one reading (cumulative since the process started).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeCounts {
    /// Outcome label (`ok`, a lowercased code, `disconnected`) → requests.
    pub outcomes: BTreeMap<String, f64>,
    /// The duration histogram's cumulative buckets: (upper bound in seconds, count), in
    /// ascending order, `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
}

impl TypeCounts {
    fn total(&self) -> f64 {
        self.outcomes.values().sum()
    }
}

/// One reading of the metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub types: BTreeMap<String, TypeCounts>,
}

/// Reads the request counters and duration buckets out of the Prometheus text exposition.
/// Lines it does not understand are skipped: the text is the host's own.
pub fn read(exposition: &str, at_ms: u64) -> Reading {
    let mut types: BTreeMap<String, TypeCounts> = BTreeMap::new();
    let bucket_name = format!("{REQUEST_DURATION}_bucket");
    for line in exposition.lines() {
        let Some((name, labels, value)) = parse_line(line) else {
            continue;
        };
        let label = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let Some(request_type) = label("request_type") else {
            continue;
        };
        if request_type == UNKNOWN_TYPE {
            continue;
        }
        if name == REQUESTS_TOTAL {
            if let Some(outcome) = label("outcome") {
                *types
                    .entry(request_type.to_owned())
                    .or_default()
                    .outcomes
                    .entry(outcome.to_owned())
                    .or_default() += value;
            }
        } else if name == bucket_name {
            let le = match label("le") {
                Some("+Inf") => f64::INFINITY,
                Some(le) => match le.parse() {
                    Ok(le) => le,
                    Err(_) => continue,
                },
                None => continue,
            };
            types
                .entry(request_type.to_owned())
                .or_default()
                .buckets
                .push((le, value));
        }
    }
    for counts in types.values_mut() {
        counts.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Reading { at_ms, types }
}

/// A sample line's labels, unescaped, in order.
type Labels = Vec<(String, String)>;

/// `name{k="v",...} value` → its parts; `None` for comments, blank and odd lines.
fn parse_line(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find('{') {
        Some(open) => (&line[..open], &line[open + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some((name, Vec::new(), value.trim().parse().ok()?));
        }
    };
    let mut labels = Vec::new();
    let mut chars = rest.char_indices();
    let mut key = String::new();
    loop {
        let (i, c) = chars.next()?;
        match c {
            '}' => {
                let value = rest[i + 1..].split_whitespace().next()?.parse().ok()?;
                return Some((name, labels, value));
            }
            ',' | ' ' => {}
            '=' => {
                if chars.next()?.1 != '"' {
                    return None;
                }
                let mut value = String::new();
                loop {
                    match chars.next()?.1 {
                        '"' => break,
                        '\\' => match chars.next()?.1 {
                            'n' => value.push('\n'),
                            other => value.push(other),
                        },
                        other => value.push(other),
                    }
                }
                labels.push((std::mem::take(&mut key), value));
            }
            other => key.push(other),
        }
    }
}

/// The last [`KEPT_SAMPLES`] readings.
#[derive(Debug, Default)]
pub struct History {
    readings: VecDeque<Reading>,
}

/// One point of a type's chart: the interval that ended at `at_ms`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    pub at_ms: u64,
    pub requests_per_second: f64,
    pub errors: f64,
    pub p99_ms: Option<f64>,
}

/// A request type as the console shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeStats {
    pub name: String,
    /// Over the last interval.
    pub requests_per_second: f64,
    /// Over the last minute; `None` without requests in it.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Over the readings kept (15 minutes): outcome label → requests, `ok` left out.
    pub errors: BTreeMap<String, u64>,
    /// One point per interval, oldest first.
    pub series: Vec<Point>,
}

impl History {
    pub fn push(&mut self, reading: Reading) {
        if self.readings.len() == KEPT_SAMPLES {
            self.readings.pop_front();
        }
        self.readings.push_back(reading);
    }

    pub fn len(&self) -> usize {
        self.readings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
    }

    /// Every type seen in the last reading, by name.
    pub fn stats(&self) -> Vec<TypeStats> {
        let Some(last) = self.readings.back() else {
            return Vec::new();
        };
        last.types.keys().map(|name| self.stats_of(name)).collect()
    }

    fn stats_of(&self, name: &str) -> TypeStats {
        let empty = TypeCounts::default();
        let counts = |r: &'_ Reading| -> TypeCounts {
            r.types.get(name).cloned().unwrap_or_else(|| empty.clone())
        };
        let series: Vec<Point> = self
            .readings
            .iter()
            .zip(self.readings.iter().skip(1))
            .map(|(before, after)| {
                let (b, a) = (counts(before), counts(after));
                let seconds = (after.at_ms.saturating_sub(before.at_ms) as f64 / 1000.0).max(0.001);
                let delta = difference(&b, &a);
                Point {
                    at_ms: after.at_ms,
                    requests_per_second: delta.total() / seconds,
                    errors: delta
                        .outcomes
                        .iter()
                        .filter(|(k, _)| k.as_str() != "ok")
                        .map(|(_, v)| v)
                        .sum(),
                    p99_ms: quantile(&delta.buckets, 0.99).map(|s| s * 1000.0),
                }
            })
            .collect();
        let last = self.readings.back().map(counts).unwrap_or_default();
        let first = self.readings.front().map(counts).unwrap_or_default();
        let minute_ago = self
            .readings
            .iter()
            .rev()
            .nth(LATENCY_INTERVALS)
            .or(self.readings.front())
            .map(counts)
            .unwrap_or_default();
        let minute = difference(&minute_ago, &last);
        let window = difference(&first, &last);
        TypeStats {
            name: name.to_owned(),
            requests_per_second: series.last().map_or(0.0, |p| p.requests_per_second),
            p50_ms: quantile(&minute.buckets, 0.5).map(|s| s * 1000.0),
            p99_ms: quantile(&minute.buckets, 0.99).map(|s| s * 1000.0),
            errors: window
                .outcomes
                .into_iter()
                .filter(|(k, v)| k != "ok" && *v > 0.0)
                .map(|(k, v)| (k, v.round() as u64))
                .collect(),
            series,
        }
    }
}

/// `after - before`, counter by counter (a counter that went down restarted: `after`).
fn difference(before: &TypeCounts, after: &TypeCounts) -> TypeCounts {
    let minus = |a: f64, b: Option<f64>| {
        let b = b.unwrap_or(0.0);
        if a >= b {
            a - b
        } else {
            a
        }
    };
    TypeCounts {
        outcomes: after
            .outcomes
            .iter()
            .map(|(k, v)| (k.clone(), minus(*v, before.outcomes.get(k).copied())))
            .collect(),
        buckets: after
            .buckets
            .iter()
            .map(|(le, v)| {
                let b = before
                    .buckets
                    .iter()
                    .find(|(l, _)| l == le)
                    .map(|(_, c)| *c);
                (*le, minus(*v, b))
            })
            .collect(),
    }
}

/// The `q` quantile of cumulative `buckets`, interpolated within its bucket as Prometheus'
/// `histogram_quantile` does; in the `+Inf` bucket, the largest finite bound. `None`: no
/// observations.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let share = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * share);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn exposition(ok: u64, timeouts: u64, fast: u64, slow: u64) -> String {
        let total = fast + slow;
        format!(
            "# HELP taskgate_requests_total Requests\n\
             # TYPE taskgate_requests_total counter\n\
             taskgate_requests_total{{request_type=\"text.echo\",outcome=\"ok\"}} {ok}\n\
             taskgate_requests_total{{request_type=\"text.echo\",outcome=\"timeout\"}} {timeouts}\n\
             taskgate_requests_total{{request_type=\"_unknown\",outcome=\"bad_request\"}} 7\n\
             taskgate_requests_total{{outcome=\"ok\",request_type=\"we\\\"ird\"}} 1\n\
             taskgate_request_duration_seconds_bucket{{request_type=\"text.echo\",le=\"0.01\"}} {fast}\n\
             taskgate_request_duration_seconds_bucket{{request_type=\"text.echo\",le=\"0.1\"}} {total}\n\
             taskgate_request_duration_seconds_bucket{{request_type=\"text.echo\",le=\"+Inf\"}} {total}\n\
             taskgate_request_duration_seconds_sum{{request_type=\"text.echo\"}} 1.5\n\
             taskgate_requests_in_flight 3\n"
        )
    }

    #[test]
    fn the_exposition_is_read_per_type_with_escaped_labels_and_unknown_types_left_out() {
        let reading = read(&exposition(10, 2, 9, 3), 1_000);
        assert_eq!(
            reading.types.keys().collect::<Vec<_>>(),
            ["text.echo", "we\"ird"]
        );
        let echo = &reading.types["text.echo"];
        assert_eq!(echo.outcomes["ok"], 10.0);
        assert_eq!(echo.outcomes["timeout"], 2.0);
        assert_eq!(
            echo.buckets,
            vec![(0.01, 9.0), (0.1, 12.0), (f64::INFINITY, 12.0)]
        );
    }

    #[test]
    fn rates_latencies_and_errors_are_differences_between_readings() {
        let mut history = History::default();
        history.push(read(&exposition(10, 2, 9, 3), 0));
        history.push(read(&exposition(60, 2, 9, 53), 5_000));
        history.push(read(&exposition(60, 7, 14, 53), 10_000));
        let stats = history.stats();
        let echo = stats.iter().find(|s| s.name == "text.echo").unwrap();
        assert_eq!(echo.series.len(), 2);
        assert_eq!(echo.series[0].requests_per_second, 10.0);
        assert_eq!(echo.series[0].errors, 0.0);
        assert_eq!(echo.series[1].requests_per_second, 1.0);
        assert_eq!(echo.series[1].errors, 5.0);
        assert_eq!(echo.requests_per_second, 1.0);
        // The minute holds 50 slow (10–100 ms) and 5 fast (< 10 ms) requests.
        let p99 = echo.p99_ms.unwrap();
        assert!(p99 > 90.0 && p99 <= 100.0, "{p99}");
        let p50 = echo.p50_ms.unwrap();
        assert!(p50 > 10.0 && p50 < 100.0, "{p50}");
        assert_eq!(echo.errors, BTreeMap::from([("timeout".to_owned(), 5)]));
    }

    #[test]
    fn only_fifteen_minutes_are_kept() {
        let mut history = History::default();
        for i in 0..(KEPT_SAMPLES as u64 + 10) {
            history.push(read(&exposition(i, 0, i, 0), i * 5_000));
        }
        assert_eq!(history.len(), KEPT_SAMPLES);
        assert_eq!(history.stats()[0].series.len(), KEPT_SAMPLES - 1);
    }

    #[test]
    fn quantiles_interpolate_within_buckets_and_stop_at_the_largest_bound() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(
            quantile(&[(1.0, 0.0), (2.0, 10.0), (f64::INFINITY, 10.0)], 0.5),
            Some(1.5)
        );
        assert_eq!(
            quantile(&[(1.0, 0.0), (2.0, 1.0), (f64::INFINITY, 10.0)], 0.99),
            Some(2.0)
        );
    }
}
