//! Checks systemd `OnCalendar` expressions without running systemd, so that a schedule systemd
//! would reject is reported with the rest of the inventory instead of when the timer is installed.
//!
//! Accepted (a subset of systemd.time(7), listed in docs/inventory.md):
//! - the shorthands `minutely`, `hourly`, `daily`, `weekly`, `monthly`, `quarterly`,
//!   `semiannually`, `yearly`, `annually`;
//! - `[WEEKDAYS] [DATE] [TIME] [TIMEZONE]`, at least one of WEEKDAYS, DATE and TIME, where
//!   WEEKDAYS is a comma list of day names (`Mon`, `monday`) and ranges (`Mon..Fri`);
//!   DATE is `[YEAR-]MONTH-DAY` (`~` instead of the last `-` counts days from the month's end);
//!   TIME is `HOUR:MINUTE[:SECOND]`; TIMEZONE is `UTC` or an `Area/Location` name.
//! - Each date and time component is `*` or a comma list of values, ranges `A..B` and
//!   repetitions `A/STEP` or `A..B/STEP`, within the component's range.

use crate::values::show;

const SHORTHANDS: &[&str] = &[
    "minutely",
    "hourly",
    "daily",
    "weekly",
    "monthly",
    "quarterly",
    "semiannually",
    "yearly",
    "annually",
];

const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// `Ok` when systemd would accept `text` as an `OnCalendar` expression (within the subset above).
pub fn check_calendar(text: &str) -> Result<(), String> {
    let expected = "expected a systemd OnCalendar expression such as `daily`, `*-*-* 02:00:00` or `Mon..Fri 22:30`";
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return Err(format!("{expected}, found nothing"));
    }
    if let [word] = words.as_slice() {
        if SHORTHANDS.contains(&word.to_ascii_lowercase().as_str()) {
            return Ok(());
        }
    }
    let fail = |why: String| Err(format!("{expected}; `{}`: {why}", show(text)));
    let mut rest = words.as_slice();
    let mut parts = 0;
    if let Some(first) = rest.first() {
        if first.starts_with(|c: char| c.is_ascii_alphabetic()) && !is_timezone(first) {
            if let Err(why) = weekdays(first) {
                return fail(why);
            }
            rest = &rest[1..];
            parts += 1;
        }
    }
    if let Some(word) = rest.first() {
        if !word.contains(':') && (word.contains('-') || word.contains('~')) {
            if let Err(why) = date(word) {
                return fail(why);
            }
            rest = &rest[1..];
            parts += 1;
        }
    }
    if let Some(word) = rest.first() {
        if word.contains(':') {
            if let Err(why) = time(word) {
                return fail(why);
            }
            rest = &rest[1..];
            parts += 1;
        }
    }
    if let Some(word) = rest.first() {
        if parts > 0 && is_timezone(word) {
            rest = &rest[1..];
        }
    }
    match rest.first() {
        _ if parts == 0 => fail("no weekday, date or time found".into()),
        Some(word) => fail(format!(
            "unexpected `{}` (the order is weekdays, date, time, time zone)",
            show(word)
        )),
        None => Ok(()),
    }
}

fn is_timezone(word: &str) -> bool {
    let named = word.contains('/')
        && word.split('/').all(|part| {
            part.starts_with(|c: char| c.is_ascii_uppercase())
                && part.chars().all(|c| c.is_ascii_alphanumeric() || "_+-".contains(c))
        });
    matches!(word, "UTC" | "GMT") || named
}

fn weekdays(word: &str) -> Result<(), String> {
    for item in word.split(',') {
        let days: Vec<&str> = item.split("..").collect();
        if days.len() > 2 {
            return Err(format!("`{}` is not a weekday range", show(item)));
        }
        for day in &days {
            let lower = day.to_ascii_lowercase();
            let known = DAYS
                .iter()
                .any(|name| lower == *name || (lower.len() == 3 && name.starts_with(&lower)));
            if !known {
                return Err(format!(
                    "`{}` is not a weekday (expected Mon, Tue, ..., Sun or full names)",
                    show(day)
                ));
            }
        }
    }
    Ok(())
}

fn date(word: &str) -> Result<(), String> {
    // The day is separated by `-` or by `~` (counting from the month's end).
    let (head, day) = match word.rfind(['-', '~']) {
        Some(index) => (&word[..index], &word[index + 1..]),
        None => return Err(format!("`{}` is not a date", show(word))),
    };
    let fields: Vec<&str> = if head.is_empty() {
        vec![]
    } else {
        head.split('-').collect()
    };
    let (year, month) = match fields.as_slice() {
        [month] => (None, *month),
        [year, month] => (Some(*year), *month),
        _ => return Err(format!("`{}` is not a date (expected [YEAR-]MONTH-DAY)", show(word))),
    };
    if let Some(year) = year {
        component(year, "year", 1970, 2199, false)?;
    }
    component(month, "month", 1, 12, false)?;
    component(day, "day", 1, 31, false)
}

fn time(word: &str) -> Result<(), String> {
    let fields: Vec<&str> = word.split(':').collect();
    match fields.as_slice() {
        [hour, minute] => {
            component(hour, "hour", 0, 23, false)?;
            component(minute, "minute", 0, 59, false)
        }
        [hour, minute, second] => {
            component(hour, "hour", 0, 23, false)?;
            component(minute, "minute", 0, 59, false)?;
            component(second, "second", 0, 59, true)
        }
        _ => Err(format!(
            "`{}` is not a time (expected HOUR:MINUTE[:SECOND])",
            show(word)
        )),
    }
}

/// `*`, or a comma list of `A`, `A..B`, `A/STEP`, `A..B/STEP`.
fn component(text: &str, what: &str, min: u32, max: u32, fraction: bool) -> Result<(), String> {
    if text == "*" {
        return Ok(());
    }
    let bad = |why: &str| Err(format!("{what} `{}` {why}", show(text)));
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        let bounds: Vec<&str> = range.split("..").collect();
        if bounds.len() > 2 {
            return bad("has more than one `..`");
        }
        let mut values = Vec::new();
        for bound in &bounds {
            match number(bound, fraction && step.is_none()) {
                Some(value) if (min..=max).contains(&value) => values.push(value),
                Some(_) => return bad(&format!("is out of range (expected {min} to {max})")),
                None => return bad("is not a number, `*`, a list, a range `A..B` or a repetition `A/STEP`"),
            }
        }
        if let [low, high] = values.as_slice() {
            if low > high {
                return bad("has a range that ends before it starts");
            }
        }
        if let Some(step) = step {
            match number(step, false) {
                Some(step) if step > 0 => {}
                _ => return bad("has a repetition that is not a positive number"),
            }
        }
    }
    Ok(())
}

/// The integer part of a decimal number, allowing `.123456` when `fraction`.
fn number(text: &str, fraction: bool) -> Option<u32> {
    let (whole, fraction_digits) = match text.split_once('.') {
        Some((whole, digits)) if fraction => (whole, Some(digits)),
        Some(_) => return None,
        None => (text, None),
    };
    let digits_ok = |s: &str, max: usize| !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_ok(whole, 4) || fraction_digits.is_some_and(|d| !digits_ok(d, 6)) {
        return None;
    }
    whole.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::check_calendar;

    #[test]
    fn accepts_what_systemd_accepts() {
        for good in [
            "daily",
            "Weekly",
            "*-*-* 02:00:00",
            "*-*-* 02:00",
            "Mon..Fri 22:30",
            "Sat,Sun *-*-* 03:15:00 UTC",
            "2030-01-01 00:00:00",
            "*-*-1/2 4:00",
            "*-02~03 00:00:00",
            "*:0/15",
            "*-*-* 00,12:00:00",
            "Mon *-*-* 00:00:00 Europe/Berlin",
            "*-*-* 01:02:03.5",
            "monday",
        ] {
            assert!(check_calendar(good).is_ok(), "{good}: {:?}", check_calendar(good));
        }
    }

    #[test]
    fn rejects_what_systemd_rejects() {
        for bad in [
            "",
            "nightly",
            "*-*-* 25:00:00",
            "*-13-01 00:00",
            "Mon..Fry 22:30",
            "02:00 Mon",
            "*-*-* 02:00:00 extra",
            "*-*-* 02:60",
            "every day at 2",
            "*-*-* 5..3:00",
            "*-*-* */0:00",
            "1-2-3-4 00:00",
        ] {
            assert!(check_calendar(bad).is_err(), "{bad} was accepted");
        }
    }
}
