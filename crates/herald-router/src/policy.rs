//! Per-user policy: opt-outs, critical overrides, quiet hours (deferral, not
//! dropping), frequency caps and staleness. Pure functions of the event, the
//! user's preferences and the time.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration, LocalResult, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use herald_model::wire::{NotificationRequested, Preferences, QuietHours};
use herald_model::Channel;

/// The decision for one channel of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send now.
    Send,
    /// The user opted out of this channel or category.
    OptedOut,
    /// Quiet hours: hold until this instant (ms).
    DeferUntil(i64),
    /// Over a frequency cap.
    Capped,
    /// Past `expires_at`.
    Stale,
}

impl Decision {
    /// Fixed reason label for metrics and the status event.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::Send => "sent",
            Self::OptedOut => "opted_out",
            Self::DeferUntil(_) => "quiet_hours",
            Self::Capped => "frequency_cap",
            Self::Stale => "expired",
        }
    }
}

/// Whether `prefs` opt the user out of `category` on `channel`.
pub fn opted_out(prefs: &Preferences, channel: Channel, category: &str) -> bool {
    prefs.opt_outs.iter().any(|o| {
        o.channel.is_none_or(|c| c == channel)
            && o.category.as_deref().is_none_or(|c| c == category)
    })
}

/// If `now_ms` falls in the user's quiet hours, the instant (ms) they end.
/// An unknown time zone is treated as UTC.
pub fn quiet_until(prefs: &Preferences, now_ms: i64) -> Option<i64> {
    let q = prefs.quiet_hours?;
    let tz: Tz = prefs.timezone.parse().unwrap_or(Tz::UTC);
    let now = DateTime::<Utc>::from_timestamp_millis(now_ms)?.with_timezone(&tz);
    let minute = i32::try_from(
        now.time()
            .signed_duration_since(NaiveTime::MIN)
            .num_minutes(),
    )
    .ok()?;
    let QuietHours {
        start_minute: start,
        end_minute: end,
    } = q;
    if start == end {
        return None;
    }
    let inside = if start < end {
        minute >= start && minute < end
    } else {
        minute >= start || minute < end
    };
    if !inside {
        return None;
    }
    // The end is today if it is still ahead, else tomorrow (window crosses midnight).
    let mut day = now.date_naive();
    if minute >= end {
        day = day.succ_opt()?;
    }
    let end_time = NaiveTime::MIN + Duration::minutes(i64::from(end));
    let local = day.and_time(end_time);
    let instant = match tz.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t,
        // The end falls in a DST gap: the first instant after it.
        LocalResult::None => tz
            .from_local_datetime(&(local + Duration::hours(1)))
            .earliest()?,
    };
    Some(instant.timestamp_millis())
}

/// Sliding-window counters for frequency caps, per (user, category).
#[derive(Debug, Default)]
pub struct CapCounter {
    sent: HashMap<(String, String), VecDeque<i64>>,
}

impl CapCounter {
    /// Admits one notification at `now_ms` if every matching cap allows it,
    /// and counts it when admitted.
    pub fn admit(&mut self, prefs: &Preferences, category: &str, now_ms: i64) -> bool {
        let caps: Vec<_> = prefs
            .caps
            .iter()
            .filter(|c| c.category.as_deref().is_none_or(|c| c == category))
            .collect();
        if caps.is_empty() {
            return true;
        }
        let key = (prefs.user_id.clone(), category.to_string());
        let longest = caps.iter().map(|c| c.window_seconds).max().unwrap_or(0) * 1000;
        let times = self.sent.entry(key).or_default();
        while times.front().is_some_and(|t| *t <= now_ms - longest) {
            times.pop_front();
        }
        let allowed = caps.iter().all(|c| {
            let since = now_ms - c.window_seconds * 1000;
            let n = times.iter().filter(|t| **t > since).count();
            n < usize::try_from(c.max_count.max(0)).unwrap_or(0)
        });
        if allowed {
            times.push_back(now_ms);
        }
        allowed
    }
}

/// Decides one channel of one event. `critical` categories bypass opt-outs
/// and quiet hours (never staleness).
pub fn decide(
    event: &NotificationRequested,
    channel: Channel,
    prefs: Option<&Preferences>,
    critical: bool,
    caps: &mut CapCounter,
    now_ms: i64,
) -> Decision {
    if event.expires_at.is_some_and(|e| e <= now_ms) {
        return Decision::Stale;
    }
    let Some(prefs) = prefs else {
        return Decision::Send;
    };
    if !critical {
        if opted_out(prefs, channel, &event.category) {
            return Decision::OptedOut;
        }
        if let Some(until) = quiet_until(prefs, now_ms) {
            return Decision::DeferUntil(until);
        }
        if !caps.admit(prefs, &event.category, now_ms) {
            return Decision::Capped;
        }
    }
    Decision::Send
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_model::sample;
    use herald_model::wire::{FrequencyCap, OptOut};

    fn at(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("time")
            .timestamp_millis()
    }

    fn prefs() -> Preferences {
        // Europe/Berlin, quiet 22:00-07:00, no SMS marketing, 10 per hour.
        sample::preferences(1, 0)
    }

    #[test]
    fn quiet_hours_defer_to_the_local_end_of_the_window() {
        let p = prefs();
        // 23:30 Berlin (CET, UTC+1) -> 07:00 Berlin next day = 06:00 UTC.
        assert_eq!(
            quiet_until(&p, at("2026-01-15T22:30:00Z")),
            Some(at("2026-01-16T06:00:00Z"))
        );
        // 03:00 Berlin -> 07:00 the same day.
        assert_eq!(
            quiet_until(&p, at("2026-01-16T02:00:00Z")),
            Some(at("2026-01-16T06:00:00Z"))
        );
        // Summer (CEST, UTC+2).
        assert_eq!(
            quiet_until(&p, at("2026-07-01T21:00:00Z")),
            Some(at("2026-07-02T05:00:00Z"))
        );
        // Daytime: not quiet.
        assert_eq!(quiet_until(&p, at("2026-01-16T12:00:00Z")), None);
        // A window inside one day.
        let mut day = p.clone();
        day.quiet_hours = Some(QuietHours {
            start_minute: 12 * 60,
            end_minute: 13 * 60,
        });
        day.timezone = "UTC".into();
        assert_eq!(
            quiet_until(&day, at("2026-01-16T12:15:00Z")),
            Some(at("2026-01-16T13:00:00Z"))
        );
        assert_eq!(quiet_until(&day, at("2026-01-16T13:00:00Z")), None);
    }

    #[test]
    fn opt_outs_match_channel_and_category_wildcards() {
        let mut p = prefs();
        assert!(opted_out(&p, Channel::Sms, "marketing"));
        assert!(!opted_out(&p, Channel::Sms, "receipt"));
        assert!(!opted_out(&p, Channel::Email, "marketing"));
        p.opt_outs.push(OptOut {
            channel: Some(Channel::Email),
            category: None,
        });
        assert!(opted_out(&p, Channel::Email, "receipt"));
    }

    #[test]
    fn critical_categories_override_opt_outs_and_quiet_hours_but_not_staleness() {
        let mut p = prefs();
        p.opt_outs.push(OptOut {
            channel: None,
            category: None,
        });
        let night = at("2026-01-15T23:00:00Z");
        let mut e = sample::notification(1, night);
        e.category = "password_reset".into();
        let mut caps = CapCounter::default();
        assert_eq!(
            decide(&e, Channel::Sms, Some(&p), true, &mut caps, night),
            Decision::Send
        );
        assert_eq!(
            decide(&e, Channel::Sms, Some(&p), false, &mut caps, night),
            Decision::OptedOut
        );
        p.opt_outs.clear();
        assert!(matches!(
            decide(&e, Channel::Sms, Some(&p), false, &mut caps, night),
            Decision::DeferUntil(_)
        ));
        e.expires_at = Some(night - 1);
        assert_eq!(
            decide(&e, Channel::Sms, Some(&p), true, &mut caps, night),
            Decision::Stale
        );
    }

    #[test]
    fn caps_count_a_sliding_window_per_user_and_category() {
        let mut p = prefs();
        p.quiet_hours = None;
        p.caps = vec![FrequencyCap {
            category: Some("digest".into()),
            max_count: 2,
            window_seconds: 3600,
        }];
        let mut caps = CapCounter::default();
        let t0 = at("2026-01-16T12:00:00Z");
        assert!(caps.admit(&p, "digest", t0));
        assert!(caps.admit(&p, "digest", t0 + 1000));
        assert!(
            !caps.admit(&p, "digest", t0 + 2000),
            "third within the hour"
        );
        assert!(
            caps.admit(&p, "receipt", t0 + 2000),
            "other categories are not capped"
        );
        assert!(
            caps.admit(&p, "digest", t0 + 3_600_001),
            "the window slid past the first"
        );
    }
}
