//! What the edge adds to a valid event: the time corrected for clock skew, the client's
//! address and classified user agent, the page and campaign fields, and the merged `context`.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::parse::BatchContext;
use super::validate::ValidEvent;
use super::Edge;
use crate::envelope::analytics::{Campaign, Client, DeviceClass, Page, SegmentFields, UserAgent};

/// The user agents classified for one request, by their text: each distinct agent is parsed
/// once however many events carry it. Bounded by the request's events; dropped with it.
#[derive(Default)]
pub(super) struct Agents(HashMap<String, UserAgent>);

impl Agents {
    fn classify(&mut self, user_agent: &str) -> UserAgent {
        if let Some(known) = self.0.get(user_agent) {
            return known.clone();
        }
        let agent = classify_user_agent(user_agent);
        self.0.insert(user_agent.to_owned(), agent.clone());
        agent
    }
}

#[cfg(test)]
thread_local! {
    /// How often this thread ran woothee: what [`Agents`] saves is counted in tests.
    static WOOTHEE_RUNS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
pub(super) fn woothee_runs() -> usize {
    WOOTHEE_RUNS.with(std::cell::Cell::get)
}

/// An event's `context` with its batch's merged under it, key by key (the event's win), read
/// without copying either.
struct Context<'c> {
    own: Option<&'c Map<String, Value>>,
    batch: Option<&'c BatchContext>,
}

impl Context<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.own
            .and_then(|own| own.get(name))
            .or_else(|| self.batch.and_then(|batch| batch.fields.get(name)))
    }

    /// The merged context as JSON text (keys in order), `None` when there is none.
    fn text(&self) -> Option<String> {
        let own = match (self.own, self.batch) {
            (None, None) => return None,
            (None, Some(batch)) => return Some(batch.text.clone()),
            (Some(own), None) => return Some(to_json(own)),
            (Some(own), Some(_)) => own,
        };
        let mut merged: BTreeMap<&str, &Value> = self
            .batch
            .iter()
            .flat_map(|batch| &batch.fields)
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        merged.extend(own.iter().map(|(k, v)| (k.as_str(), v)));
        Some(to_json(&merged))
    }
}

fn to_json(object: &impl serde::Serialize) -> String {
    serde_json::to_string(object).expect("a JSON object always serializes")
}

/// The promoted fields of a valid event.
pub(super) fn fields(
    event: ValidEvent,
    batch: Option<&BatchContext>,
    message_id: String,
    edge: &Edge<'_>,
    agents: &mut Agents,
) -> SegmentFields {
    let context = Context {
        own: event.context(),
        batch,
    };
    let mut page = page_of(context.get("page"));
    if event.call == super::CallType::Page {
        fill_page(&mut page, event.field("properties"));
    }
    let campaign = campaign_of(context.get("campaign"), &page);
    let ip = context
        .get("ip")
        .and_then(Value::as_str)
        .and_then(|ip| ip.trim().parse().ok())
        .or(edge.ip);
    let user_agent = context
        .get("userAgent")
        .and_then(Value::as_str)
        .or(edge.user_agent)
        .filter(|ua| !ua.is_empty());
    let agent = user_agent.map(|ua| agents.classify(ua)).unwrap_or_default();
    let user_agent = user_agent.map(str::to_owned);
    let context = context.text();
    SegmentFields {
        call: event.call,
        message_id,
        anonymous_id: event.anonymous_id,
        original_timestamp: event.original_timestamp,
        sent_at: event.sent_at,
        occurred_at: occurred_at(edge.received_at, event.original_timestamp, event.sent_at),
        context,
        group_id: event.group_id,
        previous_id: event.previous_id,
        page,
        campaign,
        client: Client {
            ip,
            user_agent,
            agent,
        },
    }
}

/// Classifies a user agent with woothee; what it cannot tell is `None`.
pub fn classify_user_agent(user_agent: &str) -> UserAgent {
    #[cfg(test)]
    WOOTHEE_RUNS.with(|runs| runs.set(runs.get() + 1));
    let Some(parsed) = woothee::parser::Parser::new().parse(user_agent) else {
        return UserAgent::default();
    };
    let known = |value: &str| (value != woothee::woothee::VALUE_UNKNOWN).then(|| value.to_owned());
    let device = match parsed.category {
        "pc" => Some(DeviceClass::Desktop),
        "smartphone" | "mobilephone" => Some(DeviceClass::Mobile),
        "appliance" => Some(DeviceClass::Appliance),
        "crawler" => Some(DeviceClass::Bot),
        "misc" => Some(DeviceClass::Other),
        _ => None,
    };
    UserAgent {
        browser: known(parsed.name),
        browser_version: known(parsed.version),
        os: known(parsed.os),
        os_version: known(&parsed.os_version),
        device,
        is_bot: device == Some(DeviceClass::Bot),
    }
}

/// Segment's clock-skew correction: the client's `timestamp` shifted by how far the client's
/// clock was off when it sent the event, `received_at − (sent_at − timestamp)`. Without
/// `sent_at` the timestamp is taken as is; without a timestamp it is `received_at`. The result
/// is clamped to `received_at`: nothing happens after the edge received it, so a timestamp in
/// the future (a fast clock, a bogus value) becomes `received_at`.
pub fn occurred_at(
    received_at: DateTime<Utc>,
    timestamp: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    let client_time = match (timestamp, sent_at) {
        (Some(timestamp), Some(sent_at)) => {
            received_at.checked_sub_signed(sent_at.signed_duration_since(timestamp))
        }
        (Some(timestamp), None) => Some(timestamp),
        (None, _) => None,
    };
    client_time.map_or(received_at, |time| time.min(received_at))
}

/// A string field of an object, when it is a non-empty string.
fn text_of(object: Option<&Value>, name: &str) -> Option<String> {
    object
        .and_then(|o| o.get(name))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn page_of(page: Option<&Value>) -> Page {
    Page {
        url: text_of(page, "url"),
        path: text_of(page, "path"),
        referrer: text_of(page, "referrer"),
        search: text_of(page, "search"),
        title: text_of(page, "title"),
    }
}

/// Fills the fields still missing from a `page` call's `properties` (analytics.js and the
/// server libraries put url, path, referrer, search and title there).
fn fill_page(page: &mut Page, properties: Option<&Value>) {
    let from = page_of(properties);
    page.url = page.url.take().or(from.url);
    page.path = page.path.take().or(from.path);
    page.referrer = page.referrer.take().or(from.referrer);
    page.search = page.search.take().or(from.search);
    page.title = page.title.take().or(from.title);
}

/// `context.campaign`, else the `utm_*` parameters of the page's search (or URL query).
fn campaign_of(campaign: Option<&Value>, page: &Page) -> Campaign {
    if campaign.is_some_and(Value::is_object) {
        return Campaign {
            source: text_of(campaign, "source"),
            medium: text_of(campaign, "medium"),
            name: text_of(campaign, "name"),
            term: text_of(campaign, "term"),
            content: text_of(campaign, "content"),
        };
    }
    let query = page.search.as_deref().or_else(|| {
        page.url
            .as_deref()
            .and_then(|url| url.split_once('?'))
            .map(|(_, query)| query)
    });
    let Some(query) = query else {
        return Campaign::default();
    };
    let query = query.trim_start_matches('?');
    let query = query.split_once('#').map_or(query, |(query, _)| query);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let utm = |name: &str| {
        pairs
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    Campaign {
        source: utm("utm_source"),
        medium: utm("utm_medium"),
        name: utm("utm_campaign"),
        term: utm("utm_term"),
        content: utm("utm_content"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{at, RECEIVED};
    use super::*;

    #[test]
    fn skew_correction_and_clamping() {
        let check = |timestamp: Option<&str>, sent_at: Option<&str>, expected: &str| {
            assert_eq!(
                occurred_at(at(RECEIVED), timestamp.map(at), sent_at.map(at)),
                at(expected),
                "{timestamp:?} {sent_at:?}"
            )
        };
        // Client clock 1 h behind: sent "10:59:30" for an event 30 s before sending.
        check(
            Some("2025-03-01T10:59:00Z"),
            Some("2025-03-01T10:59:30Z"),
            "2025-03-01T11:59:30Z",
        );
        // Client clock 1 day ahead: corrected back.
        check(
            Some("2025-03-02T11:58:00Z"),
            Some("2025-03-02T12:00:00Z"),
            "2025-03-01T11:58:00Z",
        );
        // No sentAt: the timestamp as is; a future one is clamped.
        check(Some("2025-02-01T00:00:00Z"), None, "2025-02-01T00:00:00Z");
        check(Some("2030-01-01T00:00:00Z"), None, RECEIVED);
        // Timestamp after sentAt (impossible): clamped.
        check(
            Some("2025-03-01T12:00:10Z"),
            Some("2025-03-01T12:00:00Z"),
            RECEIVED,
        );
        check(None, Some("2025-03-01T10:00:00Z"), RECEIVED);
        check(None, None, RECEIVED);
        // Offsets are honoured.
        check(
            Some("2025-03-01T13:00:00+02:00"),
            None,
            "2025-03-01T11:00:00Z",
        );
    }

    #[test]
    fn user_agents_are_classified() {
        let check = |ua: &str, browser: Option<&str>, os: Option<&str>, device, bot| {
            let agent = classify_user_agent(ua);
            assert_eq!(agent.browser.as_deref(), browser, "{ua}");
            assert_eq!(agent.os.as_deref(), os, "{ua}");
            assert_eq!(agent.device, device, "{ua}");
            assert_eq!(agent.is_bot, bot, "{ua}");
        };
        check(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            Some("Chrome"),
            Some("Windows 10"),
            Some(DeviceClass::Desktop),
            false,
        );
        check(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
            Some("Safari"),
            Some("iPhone"),
            Some(DeviceClass::Mobile),
            false,
        );
        check(
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            Some("Googlebot"),
            None,
            Some(DeviceClass::Bot),
            true,
        );
        check("", None, None, None, false);
        check("something nobody knows", None, None, None, false);
        let chrome = classify_user_agent(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.6045.105 Safari/537.36",
        );
        assert_eq!(chrome.browser_version.as_deref(), Some("119.0.6045.105"));
        assert_eq!(chrome.os.as_deref(), Some("Linux"));
    }

    #[test]
    fn agents_remember_what_they_classified() {
        let mut agents = Agents::default();
        let runs = woothee_runs();
        let bot = agents.classify("Googlebot/2.1 (+http://www.google.com/bot.html)");
        assert!(bot.is_bot);
        assert_eq!(
            agents.classify("Googlebot/2.1 (+http://www.google.com/bot.html)"),
            bot
        );
        assert!(!agents.classify("curl/8.0").is_bot);
        assert_eq!(woothee_runs() - runs, 2);
    }
}
