//! A report request's query parameters, validated: every refusal names the parameter and why.

use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};

/// The widest range a report covers.
pub const MAX_RANGE_DAYS: i64 = 366;
/// The widest range of an hourly report.
pub const MAX_HOURLY_RANGE_DAYS: i64 = 31;
/// The longest funnel window.
pub const MAX_FUNNEL_WINDOW_DAYS: i64 = 90;
/// The most rows a top-N report returns.
pub const MAX_LIMIT: i32 = 100;
const MAX_EVENT_NAME_CHARS: usize = 200;
const DEFAULT_RANGE_DAYS: i64 = 7;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{parameter}: {reason}")]
pub struct InvalidParameter {
    pub parameter: &'static str,
    pub reason: String,
}

fn invalid(parameter: &'static str, reason: impl Into<String>) -> InvalidParameter {
    InvalidParameter {
        parameter,
        reason: reason.into(),
    }
}

/// The query of one report request, read parameter by parameter.
pub struct Query<'a> {
    values: &'a HashMap<String, String>,
}

impl<'a> Query<'a> {
    /// Refuses a parameter the report does not take (a typo would otherwise be ignored).
    pub fn new(
        values: &'a HashMap<String, String>,
        known: &[&str],
    ) -> Result<Query<'a>, InvalidParameter> {
        if let Some(unknown) = values.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(InvalidParameter {
                parameter: "query",
                reason: format!("unknown parameter `{unknown}` (this report takes {known:?})"),
            });
        }
        Ok(Query { values })
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.values.get(name).map(String::as_str)
    }

    /// `app_id`, one of `apps`.
    pub fn app_id(&self, apps: &[String]) -> Result<String, InvalidParameter> {
        let app_id = self
            .get("app_id")
            .ok_or_else(|| invalid("app_id", "is required"))?;
        if !apps.iter().any(|a| a == app_id) {
            return Err(invalid("app_id", "is not a configured app"));
        }
        Ok(app_id.to_owned())
    }

    /// `from` and `to` (RFC 3339 or `YYYY-MM-DD`, UTC midnight), the half-open range
    /// `[from, to)`; by default the 7 days up to `now`. At most `max_days` wide.
    pub fn range(
        &self,
        now: DateTime<Utc>,
        max_days: i64,
    ) -> Result<(DateTime<Utc>, DateTime<Utc>), InvalidParameter> {
        let to = match self.get("to") {
            Some(text) => instant("to", text)?,
            None => now,
        };
        let from = match self.get("from") {
            Some(text) => instant("from", text)?,
            None => to - Duration::days(DEFAULT_RANGE_DAYS),
        };
        if from >= to {
            return Err(invalid("from", "must be before `to`"));
        }
        if to - from > Duration::days(max_days) {
            return Err(invalid(
                "to",
                format!("the range may span at most {max_days} days"),
            ));
        }
        Ok((from, to))
    }

    /// `bucket`: `hour`, `day` (the default) or `week`.
    pub fn bucket(&self) -> Result<&'static str, InvalidParameter> {
        match self.get("bucket").unwrap_or("day") {
            "hour" => Ok("hour"),
            "day" => Ok("day"),
            "week" => Ok("week"),
            _ => Err(invalid("bucket", "must be hour, day or week")),
        }
    }

    /// `limit`: 1 to [`MAX_LIMIT`], 10 by default.
    pub fn limit(&self) -> Result<i32, InvalidParameter> {
        let Some(text) = self.get("limit") else {
            return Ok(10);
        };
        match text.parse::<i32>() {
            Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
            _ => Err(invalid(
                "limit",
                format!("must be a whole number from 1 to {MAX_LIMIT}"),
            )),
        }
    }

    /// `dimension`: `browser`, `os` or `device_class`.
    pub fn dimension(&self) -> Result<&'static str, InvalidParameter> {
        match self.get("dimension") {
            Some("browser") => Ok("browser"),
            Some("os") => Ok("os"),
            Some("device_class") => Ok("device_class"),
            Some(_) => Err(invalid("dimension", "must be browser, os or device_class")),
            None => Err(invalid("dimension", "is required")),
        }
    }

    /// `steps`: 2 to 5 event names, comma-separated.
    pub fn steps(&self) -> Result<Vec<String>, InvalidParameter> {
        let text = self
            .get("steps")
            .ok_or_else(|| invalid("steps", "is required"))?;
        let steps: Vec<String> = text.split(',').map(|s| s.trim().to_owned()).collect();
        if !(2..=5).contains(&steps.len()) {
            return Err(invalid("steps", "must list 2 to 5 event names"));
        }
        if steps
            .iter()
            .any(|s| s.is_empty() || s.chars().count() > MAX_EVENT_NAME_CHARS)
        {
            return Err(invalid(
                "steps",
                format!("each event name must have 1 to {MAX_EVENT_NAME_CHARS} characters"),
            ));
        }
        Ok(steps)
    }

    /// `window`: a number of minutes (`30m`), hours (`12h`) or days (`7d`); 1 day by default;
    /// at most [`MAX_FUNNEL_WINDOW_DAYS`].
    pub fn window(&self) -> Result<Duration, InvalidParameter> {
        let text = self.get("window").unwrap_or("1d");
        let reason = || {
            invalid(
                "window",
                format!("must be like 30m, 12h or 7d, at most {MAX_FUNNEL_WINDOW_DAYS}d"),
            )
        };
        let (number, unit) = text.split_at(text.len().saturating_sub(1));
        let number: i64 = number.parse().map_err(|_| reason())?;
        let window = match unit {
            "m" => Duration::try_minutes(number),
            "h" => Duration::try_hours(number),
            "d" => Duration::try_days(number),
            _ => None,
        }
        .ok_or_else(reason)?;
        if window <= Duration::zero() || window > Duration::days(MAX_FUNNEL_WINDOW_DAYS) {
            return Err(reason());
        }
        Ok(window)
    }

    /// `format`: `json` (the default) or `csv`.
    pub fn csv(&self) -> Result<bool, InvalidParameter> {
        match self.get("format").unwrap_or("json") {
            "json" => Ok(false),
            "csv" => Ok(true),
            _ => Err(invalid("format", "must be json or csv")),
        }
    }
}

fn instant(parameter: &'static str, text: &str) -> Result<DateTime<Utc>, InvalidParameter> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .map(|midnight| Utc.from_utc_datetime(&midnight))
        .ok_or_else(|| invalid(parameter, "must be an RFC 3339 time or a YYYY-MM-DD date"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
    }

    #[test]
    fn ranges_default_to_a_week_and_are_bounded() {
        let values = query(&[]);
        let q = Query::new(&values, &["from", "to"]).unwrap();
        assert_eq!(q.range(now(), 366), Ok((now() - Duration::days(7), now())));

        let check = |from: &str, to: &str, max: i64| {
            let values = query(&[("from", from), ("to", to)]);
            Query::new(&values, &["from", "to"])
                .unwrap()
                .range(now(), max)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            check("2026-01-01", "2026-01-02T00:00:00Z", 366),
            Ok((
                Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap()
            ))
        );
        assert_eq!(
            check("2026-01-02", "2026-01-01", 366),
            Err("from: must be before `to`".into())
        );
        assert_eq!(
            check("2024-01-01", "2026-01-01", 366),
            Err("to: the range may span at most 366 days".into())
        );
        assert_eq!(
            check("2026-01-01", "2026-03-01", 31),
            Err("to: the range may span at most 31 days".into())
        );
        assert_eq!(
            check("yesterday", "2026-01-01", 366),
            Err("from: must be an RFC 3339 time or a YYYY-MM-DD date".into())
        );
    }

    #[test]
    fn every_parameter_names_its_refusal() {
        let refused = |pairs: &[(&str, &str)], read: fn(&Query) -> Option<InvalidParameter>| {
            let values = query(pairs);
            let known: Vec<&str> = pairs.iter().map(|(k, _)| *k).collect();
            read(&Query::new(&values, &known).unwrap()).map(|e| e.parameter)
        };
        assert_eq!(
            refused(&[("bucket", "minute")], |q| q.bucket().err()),
            Some("bucket")
        );
        for limit in ["0", "101", "ten", "-1"] {
            assert_eq!(
                refused(&[("limit", limit)], |q| q.limit().err()),
                Some("limit")
            );
        }
        assert_eq!(
            refused(&[("dimension", "cpu")], |q| q.dimension().err()),
            Some("dimension")
        );
        for steps in ["one", "a,b,c,d,e,f", "a,,b"] {
            assert_eq!(
                refused(&[("steps", steps)], |q| q.steps().err()),
                Some("steps")
            );
        }
        for window in ["0d", "91d", "5", "d", "1y", "-1h", "99999999999999d"] {
            assert_eq!(
                refused(&[("window", window)], |q| q.window().err()),
                Some("window"),
                "{window}"
            );
        }
        assert_eq!(
            refused(&[("format", "xml")], |q| q.csv().err()),
            Some("format")
        );
        let values = query(&[("limt", "5")]);
        assert_eq!(
            Query::new(&values, &["limit"]).err().map(|e| e.parameter),
            Some("query")
        );
    }

    #[test]
    fn accepted_values() {
        let values = query(&[
            ("steps", "signup, activate ,pay"),
            ("window", "12h"),
            ("limit", "25"),
            ("app_id", "a"),
        ]);
        let q = Query::new(&values, &["steps", "window", "limit", "app_id"]).unwrap();
        assert_eq!(q.steps().unwrap(), ["signup", "activate", "pay"]);
        assert_eq!(q.window().unwrap(), Duration::hours(12));
        assert_eq!(q.limit().unwrap(), 25);
        assert_eq!(q.app_id(&["a".into()]).unwrap(), "a");
        assert_eq!(
            q.app_id(&["b".into()]).unwrap_err().reason,
            "is not a configured app"
        );
    }
}
