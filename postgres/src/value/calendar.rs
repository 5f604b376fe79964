//! Proleptic Gregorian dates as days since 1970-01-01, and the limits of
//! Postgres's date and timestamp types.

/// Microseconds in a day.
pub(super) const DAY_MICROS: i64 = 86_400_000_000;
/// The first date Postgres accepts, 4714-11-24 BC, in days since 1970-01-01.
pub const MIN_DATE_DAYS: i32 = days_from_civil(-4713, 11, 24) as i32;
/// The last date Postgres accepts, 5874897-12-31, in days since 1970-01-01.
pub const MAX_DATE_DAYS: i32 = days_from_civil(5_874_897, 12, 31) as i32;
/// The first timestamp Postgres accepts, 4714-11-24 00:00:00 BC, in
/// microseconds since the Unix epoch. The last one representable here is
/// `i64::MAX - 1` (`i64::MAX` is `infinity`).
pub const MIN_TIMESTAMP_MICROS: i64 = MIN_DATE_DAYS as i64 * DAY_MICROS;

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical years:
/// 1 BC is year 0). Counts from March so the leap day ends the counted year.
pub(super) const fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date (astronomical year, month, day) of a day
/// count since 1970-01-01: the inverse of [`days_from_civil`].
pub(super) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub(super) fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

pub(super) fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}
