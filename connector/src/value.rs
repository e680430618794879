//! Column values: PostgreSQL's text output (what both pgoutput and the
//! snapshot query deliver) parsed into typed [`Datum`]s, and those written as
//! Avro binary or JSON following the mapping in [`crate::schema`].

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use serde_json::Value as Json;

use crate::config::DecimalHandling;
use crate::error::{Error, Result};
use crate::schema::PgType;

/// Debezium's placeholder for a TOASTed value an update left unchanged.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Str(String),
    Bytes(Vec<u8>),
    /// Debezium's VariableScaleDecimal: unscaled two's-complement big-endian.
    VarDecimal {
        scale: i32,
        unscaled: Vec<u8>,
    },
    Array(Vec<Datum>),
    /// An Avro map of optional strings (hstore), in PostgreSQL's order.
    Map(Vec<(String, Option<String>)>),
    /// Debezium's `io.debezium.data.geometry.Point`: x, y and the point's
    /// WKB (srid null).
    Point {
        x: f64,
        y: f64,
    },
}

/// The value Debezium emits for an unchanged TOASTed column.
pub fn unavailable(ty: &PgType, decimals: DecimalHandling) -> Datum {
    match ty {
        PgType::Bytea | PgType::Bits { .. } => Datum::Bytes(UNAVAILABLE.as_bytes().to_vec()),
        PgType::Hstore { json: false } => {
            Datum::Map(vec![(UNAVAILABLE.into(), Some(UNAVAILABLE.into()))])
        }
        PgType::Numeric { .. } if decimals == DecimalHandling::String => {
            Datum::Str(UNAVAILABLE.into())
        }
        PgType::Array(elem) if elem.is_string_like() => {
            Datum::Array(vec![Datum::Str(UNAVAILABLE.into())])
        }
        t if t.is_string_like() => Datum::Str(UNAVAILABLE.into()),
        _ => Datum::Null,
    }
}

pub fn parse(column: &str, ty: &PgType, text: &str, decimals: DecimalHandling) -> Result<Datum> {
    let bad = |reason: &str| Error::Value {
        column: column.to_string(),
        value: text.chars().take(64).collect(),
        reason: reason.to_string(),
    };
    Ok(match ty {
        // bit(1) and varbit(1) print as `1`/`0`.
        PgType::Bool => Datum::Bool(matches!(text, "t" | "true" | "1")),
        PgType::Money { fraction_digits } => {
            parse_money(text, *fraction_digits, decimals).ok_or_else(|| bad("not money"))?
        }
        PgType::Hstore { json } => {
            let pairs = parse_hstore(text).ok_or_else(|| bad("not hstore"))?;
            if *json {
                Datum::Str(hstore_json(&pairs))
            } else {
                Datum::Map(pairs)
            }
        }
        PgType::Bits { .. } => {
            Datum::Bytes(parse_bits(text).ok_or_else(|| bad("not a bit string"))?)
        }
        PgType::Point => {
            let (x, y) = parse_point(text).ok_or_else(|| bad("not a point"))?;
            Datum::Point { x, y }
        }
        PgType::Int16 | PgType::Int32 => Datum::Int(text.parse().map_err(|_| bad("not an int"))?),
        PgType::Int64 => Datum::Long(text.parse().map_err(|_| bad("not a bigint"))?),
        PgType::Float32 => Datum::Float(text.parse().map_err(|_| bad("not a real"))?),
        PgType::Float64 => Datum::Double(text.parse().map_err(|_| bad("not a double"))?),
        PgType::Numeric { scale, .. } => match decimals {
            DecimalHandling::String => Datum::Str(text.to_string()),
            DecimalHandling::Double => Datum::Double(text.parse().map_err(|_| bad("not numeric"))?),
            DecimalHandling::Precise => match decimal_parts(text) {
                None => Datum::Null, // NaN / ±Infinity have no decimal form
                Some((neg, int, frac)) => match scale {
                    Some(s) => {
                        // A negative scale (numeric(3, -2)) holds integers: scale 0.
                        let s = (*s).max(0) as usize;
                        if frac.len() > s {
                            return Err(bad("more fraction digits than the column scale"));
                        }
                        let digits = format!("{int}{frac}{}", "0".repeat(s - frac.len()));
                        Datum::Bytes(twos_complement(neg, &digits))
                    }
                    None => Datum::VarDecimal {
                        scale: frac.len() as i32,
                        unscaled: twos_complement(neg, &format!("{int}{frac}")),
                    },
                },
            },
        },
        PgType::Text | PgType::Other | PgType::Uuid | PgType::Json => Datum::Str(text.to_string()),
        PgType::Date => Datum::Int(parse_date(text).ok_or_else(|| bad("not a date"))?),
        PgType::Time { micros } => {
            let us = parse_time(text).ok_or_else(|| bad("not a time"))?;
            if *micros {
                Datum::Long(us)
            } else {
                Datum::Int((us / 1000) as i32)
            }
        }
        PgType::Timestamp { micros } => {
            let us = parse_timestamp(text).ok_or_else(|| bad("not a timestamp"))?;
            if *micros || us == i64::MAX || us == i64::MIN {
                Datum::Long(us)
            } else {
                Datum::Long(us.div_euclid(1000))
            }
        }
        PgType::TimeTz => Datum::Str(parse_timetz(text).ok_or_else(|| bad("not a timetz"))?),
        PgType::Interval => {
            Datum::Long(parse_interval(text).ok_or_else(|| bad("not an interval"))?)
        }
        PgType::TimestampTz => {
            Datum::Str(parse_timestamptz(text).ok_or_else(|| bad("not a timestamptz"))?)
        }
        PgType::Bytea => Datum::Bytes(parse_bytea(text).ok_or_else(|| bad("not bytea hex"))?),
        PgType::Array(elem) => {
            let items = match parse_array(text) {
                Some(items) => items,
                // A column declared one-dimensional can still hold a
                // multi-dimensional value (PostgreSQL does not enforce the
                // declaration): its elements are kept, in row-major order.
                None => {
                    let flat = flatten_array(text).ok_or_else(|| bad("not an array"))?;
                    tracing::warn!(column, value = %text.chars().take(64).collect::<String>(),
                        "multi-dimensional value in a one-dimensional array column: elements flattened");
                    parse_array(&flat).ok_or_else(|| bad("not an array"))?
                }
            };
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(match item {
                    None => Datum::Null,
                    Some(s) => parse(column, elem, &s, decimals)?,
                });
            }
            Datum::Array(out)
        }
    })
}

/// `money` as PostgreSQL prints it with `lc_monetary=C` (pinned in the
/// session options): `-$1,234.50`.
fn parse_money(text: &str, digits: u32, decimals: DecimalHandling) -> Option<Datum> {
    let plain: String = text.chars().filter(|c| !matches!(c, '$' | ',')).collect();
    let (neg, int, frac) = decimal_parts(&plain)?;
    Some(match decimals {
        DecimalHandling::String => Datum::Str(plain),
        DecimalHandling::Double => Datum::Double(plain.parse().ok()?),
        DecimalHandling::Precise => {
            let digits = digits as usize;
            let unscaled = if frac.len() <= digits {
                format!("{int}{frac}{}", "0".repeat(digits - frac.len()))
            } else {
                // Fewer digits than PostgreSQL prints: HALF_UP, as Debezium's setScale.
                let kept = format!("{int}{}", &frac[..digits]);
                if frac.as_bytes()[digits] >= b'5' {
                    increment(&kept)
                } else {
                    kept
                }
            };
            Datum::Bytes(twos_complement(neg, &unscaled))
        }
    })
}

/// A decimal digit string plus one.
fn increment(digits: &str) -> String {
    let mut out: Vec<u8> = digits.bytes().collect();
    for b in out.iter_mut().rev() {
        if *b == b'9' {
            *b = b'0';
        } else {
            *b += 1;
            return String::from_utf8(out).expect("ASCII digits");
        }
    }
    out.insert(0, b'1');
    String::from_utf8(out).expect("ASCII digits")
}

/// hstore's output, `"a"=>"1", "b"=>NULL` (keys and values always quoted,
/// `\` and `\"` escaped).
fn parse_hstore(text: &str) -> Option<Vec<(String, Option<String>)>> {
    fn quoted(it: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
        if it.next()? != '"' {
            return None;
        }
        let mut s = String::new();
        loop {
            match it.next()? {
                '\\' => s.push(it.next()?),
                '"' => return Some(s),
                c => s.push(c),
            }
        }
    }
    let skip_ws = |it: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
    };
    let mut pairs = Vec::new();
    let mut it = text.chars().peekable();
    skip_ws(&mut it);
    if it.peek().is_none() {
        return Some(pairs);
    }
    loop {
        skip_ws(&mut it);
        let key = quoted(&mut it)?;
        skip_ws(&mut it);
        if (it.next()?, it.next()?) != ('=', '>') {
            return None;
        }
        skip_ws(&mut it);
        let value = if it.peek() == Some(&'"') {
            Some(quoted(&mut it)?)
        } else {
            let word: String = (0..4).filter_map(|_| it.next()).collect();
            if word != "NULL" {
                return None;
            }
            None
        };
        pairs.push((key, value));
        skip_ws(&mut it);
        match it.next() {
            None => return Some(pairs),
            Some(',') => continue,
            Some(_) => return None,
        }
    }
}

/// Debezium's `hstore.handling.mode=json`: `{"a":"1","b":null}`.
fn hstore_json(pairs: &[(String, Option<String>)]) -> String {
    let mut out = vec![b'{'];
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(&mut out, k);
        out.push(b':');
        match v {
            None => out.extend_from_slice(b"null"),
            Some(v) => json_str(&mut out, v),
        }
    }
    out.push(b'}');
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// A bit string (`0101`) as Debezium encodes it: the bits as a number,
/// little-endian, in as many bytes as the highest set bit needs (Java's
/// `BitSet.toByteArray`), so `101` is `[0x05]` and all zeros is empty.
fn parse_bits(text: &str) -> Option<Vec<u8>> {
    let bits = text.as_bytes();
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, b) in bits.iter().rev().enumerate() {
        match b {
            b'1' => out[i / 8] |= 1 << (i % 8),
            b'0' => {}
            _ => return None,
        }
    }
    while out.last() == Some(&0) {
        out.pop();
    }
    Some(out)
}

/// `(1.5,-2)` → (1.5, -2.0).
fn parse_point(text: &str) -> Option<(f64, f64)> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (x, y) = inner.split_once(',')?;
    Some((x.trim().parse().ok()?, y.trim().parse().ok()?))
}

/// The WKB of a point, as Debezium's `Point.createValue` builds it:
/// little-endian marker, type 1, x, y.
pub fn point_wkb(x: f64, y: f64) -> Vec<u8> {
    let mut wkb = Vec::with_capacity(21);
    wkb.push(1);
    wkb.extend_from_slice(&1u32.to_le_bytes());
    wkb.extend_from_slice(&x.to_le_bytes());
    wkb.extend_from_slice(&y.to_le_bytes());
    wkb
}

/// Splits PostgreSQL's numeric output into sign, integer and fraction digits;
/// `None` for NaN and the infinities.
fn decimal_parts(text: &str) -> Option<(bool, &str, &str)> {
    let (neg, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = rest.split_once('.').unwrap_or((rest, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    (!rest.is_empty() && digits(int) && digits(frac)).then_some((neg, int, frac))
}

/// Decimal digits → minimal big-endian two's complement, as Kafka Connect's
/// Decimal (Java BigInteger.toByteArray) encodes the unscaled value.
fn twos_complement(neg: bool, digits: &str) -> Vec<u8> {
    let mut mag: Vec<u8> = vec![0]; // little-endian base 256
    for d in digits.bytes() {
        let mut carry = (d - b'0') as u32;
        for byte in mag.iter_mut() {
            let v = *byte as u32 * 10 + carry;
            *byte = v as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            mag.push(carry as u8);
            carry >>= 8;
        }
    }
    while mag.len() > 1 && *mag.last().unwrap() == 0 {
        mag.pop();
    }
    let zero = mag.iter().all(|b| *b == 0);
    // Room for the sign bit.
    mag.push(0);
    if neg && !zero {
        let mut carry = 1u16;
        for byte in mag.iter_mut() {
            let v = (!*byte) as u16 + carry;
            *byte = v as u8;
            carry = v >> 8;
        }
    }
    // Drop redundant sign bytes.
    let sign = if neg && !zero { 0xff } else { 0 };
    while mag.len() > 1
        && mag[mag.len() - 1] == sign
        && (mag[mag.len() - 2] & 0x80) == (sign & 0x80)
    {
        mag.pop();
    }
    mag.reverse();
    mag
}

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date")
}

fn bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, c| {
        if !c.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add((c - b'0') as u32)
    })
}

/// `YYYY-MM-DD` (years up to PostgreSQL's 294276) without chrono's
/// format-string interpreter, which is slow and refuses 5-digit years.
fn fast_date(s: &str) -> Option<NaiveDate> {
    let (y, md) = s.split_once('-')?;
    let md = md.as_bytes();
    if y.len() < 4 || md.len() != 5 || md[2] != b'-' {
        return None;
    }
    let year = i32::try_from(digits(y.as_bytes())?).ok()?;
    NaiveDate::from_ymd_opt(year, digits(&md[..2])?, digits(&md[3..])?)
}

/// `HH:MM:SS[.f]` (hot path).
fn fast_time(s: &str) -> Option<NaiveTime> {
    let b = s.as_bytes();
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let mut nanos = 0;
    if b.len() > 8 {
        let frac = b[8..].strip_prefix(b".")?;
        if frac.is_empty() || frac.len() > 9 {
            return None;
        }
        nanos = digits(frac)? * 10u32.pow(9 - frac.len() as u32);
    }
    NaiveTime::from_hms_nano_opt(
        digits(&b[..2])?,
        digits(&b[3..5])?,
        digits(&b[6..8])?,
        nanos,
    )
}

fn parse_naive_date(text: &str) -> Option<NaiveDate> {
    let (t, is_bc) = bc(text);
    let d = match fast_date(t) {
        Some(d) => d,
        None => NaiveDate::parse_from_str(t, "%Y-%m-%d").ok()?,
    };
    if is_bc {
        use chrono::Datelike;
        d.with_year(1 - d.year())
    } else {
        Some(d)
    }
}

fn parse_date(text: &str) -> Option<i32> {
    match text {
        "infinity" => Some(i32::MAX),
        "-infinity" => Some(i32::MIN),
        _ => Some((parse_naive_date(text)? - epoch()).num_days() as i32),
    }
}

fn parse_time(text: &str) -> Option<i64> {
    if text == "24:00:00" {
        return Some(86_400_000_000);
    }
    let t = fast_time(text).or_else(|| NaiveTime::parse_from_str(text, "%H:%M:%S%.f").ok())?;
    (t - NaiveTime::MIN).num_microseconds()
}

fn naive_ts(text: &str) -> Option<NaiveDateTime> {
    let (t, is_bc) = bc(text);
    let (date, time) = t.split_once(' ')?;
    let date = if is_bc {
        parse_naive_date(&format!("{date} BC"))?
    } else {
        parse_naive_date(date)?
    };
    let time = fast_time(time).or_else(|| NaiveTime::parse_from_str(time, "%H:%M:%S%.f").ok())?;
    Some(date.and_time(time))
}

fn parse_timestamp(text: &str) -> Option<i64> {
    match text {
        "infinity" => Some(i64::MAX),
        "-infinity" => Some(i64::MIN),
        _ => naive_ts(text)?.and_utc().timestamp_micros().into(),
    }
}

/// `2024-01-02 03:04:05.5+05:30` → `2024-01-01T21:34:05.5Z`. PostgreSQL
/// prints the offset as ±hh[:mm[:ss]] in the session time zone.
fn parse_timestamptz(text: &str) -> Option<String> {
    match text {
        "infinity" | "-infinity" => return Some(text.to_string()),
        _ => {}
    }
    let (t, is_bc) = bc(text);
    let split = t.rfind(['+', '-']).filter(|i| *i > 10)?;
    let (local, offset) = t.split_at(split);
    let sign: i64 = if offset.starts_with('-') { -1 } else { 1 };
    let mut secs = 0i64;
    for (i, part) in offset[1..].split(':').enumerate() {
        let v: i64 = part.parse().ok()?;
        secs += v * [3600, 60, 1].get(i)?;
    }
    let local = if is_bc {
        naive_ts(&format!("{local} BC"))?
    } else {
        naive_ts(local)?
    };
    let utc = local - chrono::Duration::seconds(sign * secs);
    let utc: DateTime<Utc> = DateTime::from_naive_utc_and_offset(utc, Utc);
    // AutoSi prints 0, 3, 6 or 9 fraction digits, like Debezium's formatter.
    Some(utc.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

/// `04:05:06.789+02` → `02:05:06.789Z` (Debezium's ZonedTime, in UTC).
fn parse_timetz(text: &str) -> Option<String> {
    let split = text.rfind(['+', '-']).filter(|i| *i >= 8)?;
    let (local, offset) = text.split_at(split);
    let sign: i64 = if offset.starts_with('-') { -1 } else { 1 };
    let mut secs = 0i64;
    for (i, part) in offset[1..].split(':').enumerate() {
        let v: i64 = part.parse().ok()?;
        secs += v * [3600, 60, 1].get(i)?;
    }
    let us = parse_time(local)?;
    let utc = (us - sign * secs * 1_000_000).rem_euclid(86_400_000_000);
    let t = NaiveTime::MIN + chrono::Duration::microseconds(utc);
    // Fraction digits in groups of three, as for ZonedTimestamp.
    let frac = match utc % 1_000_000 {
        0 => "",
        f if f % 1000 == 0 => "%.3f",
        _ => "%.6f",
    };
    Some(format!("{}Z", t.format(&format!("%H:%M:%S{frac}"))))
}

/// PostgreSQL's `postgres` interval style (`1 year 2 mons -3 days +04:05:06.5`)
/// → microseconds, with Debezium's average month of 365.25 / 12 days.
fn parse_interval(text: &str) -> Option<i64> {
    const DAY: f64 = 86_400_000_000.0;
    let mut total: f64 = 0.0;
    let mut words = text.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if w.contains(':') {
            let (neg, hms) = match w.strip_prefix('-') {
                Some(r) => (true, r),
                None => (false, w.strip_prefix('+').unwrap_or(w)),
            };
            let mut parts = hms.split(':');
            let h: f64 = parts.next()?.parse().ok()?;
            let m: f64 = parts.next()?.parse().ok()?;
            let sec: f64 = parts.next().unwrap_or("0").parse().ok()?;
            let us = ((h * 3600.0 + m * 60.0) * 1e6) + (sec * 1e6).round();
            total += if neg { -us } else { us };
            continue;
        }
        let n: f64 = w.parse().ok()?;
        let unit = words.next()?;
        total += n * match unit.trim_end_matches('s') {
            "year" => 12.0 * 365.25 / 12.0 * DAY,
            "mon" => 365.25 / 12.0 * DAY,
            "day" => DAY,
            _ => return None,
        };
    }
    Some(total.round() as i64)
}

fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

/// `{{1,2},{3,4}}` → `{1,2,3,4}` (braces inside quoted elements kept).
fn flatten_array(text: &str) -> Option<String> {
    let text = match text.find("={") {
        Some(i) if text.starts_with('[') => &text[i + 1..],
        _ => text,
    };
    if !text.starts_with("{{") {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let (mut quoted, mut escaped) = (false, false);
    for c in text.chars() {
        match c {
            _ if escaped => {
                escaped = false;
                out.push(c);
            }
            '\\' if quoted => {
                escaped = true;
                out.push(c);
            }
            '"' => {
                quoted = !quoted;
                out.push(c);
            }
            '{' | '}' if !quoted => {}
            _ => out.push(c),
        }
    }
    Some(format!("{{{out}}}"))
}

/// One-dimensional array literal `{a,"b c",NULL}` → items (`None` = NULL).
fn parse_array(text: &str) -> Option<Vec<Option<String>>> {
    // Arrays with non-default bounds print as `[0:2]={...}`.
    let text = match text.find("={") {
        Some(i) if text.starts_with('[') => &text[i + 1..],
        _ => text,
    };
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut items = Vec::new();
    if inner.is_empty() {
        return Some(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => item.push(chars.next()?),
                    '"' => break,
                    c => item.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' {
                    return None; // multi-dimensional
                }
                item.push(c);
                chars.next();
            }
        }
        items.push(if !quoted && item == "NULL" {
            None
        } else {
            Some(item)
        });
        match chars.next() {
            None => return Some(items),
            Some(',') => continue,
            Some(_) => return None,
        }
    }
}

// ---- Avro binary encoding -------------------------------------------------

fn zigzag(out: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

pub fn avro_long(out: &mut Vec<u8>, v: i64) {
    zigzag(out, v);
}

pub fn avro_str(out: &mut Vec<u8>, s: &str) {
    zigzag(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

/// Writes `d` for a field whose Avro type is `["null", T]` when `optional`,
/// else `T`. A null in a required field is a bug upstream; it is written as
/// the type's zero rather than producing an undecodable record.
pub fn write_avro(out: &mut Vec<u8>, d: &Datum, optional: bool) {
    if optional {
        if matches!(d, Datum::Null) {
            out.push(0);
            return;
        }
        out.push(2); // zigzag(1): branch 1
    }
    match d {
        Datum::Null => out.push(0),
        Datum::Bool(b) => out.push(*b as u8),
        Datum::Int(v) => zigzag(out, *v as i64),
        Datum::Long(v) => zigzag(out, *v),
        Datum::Float(v) => out.extend_from_slice(&v.to_le_bytes()),
        Datum::Double(v) => out.extend_from_slice(&v.to_le_bytes()),
        Datum::Str(s) => avro_str(out, s),
        Datum::Bytes(b) => {
            zigzag(out, b.len() as i64);
            out.extend_from_slice(b);
        }
        Datum::VarDecimal { scale, unscaled } => {
            zigzag(out, *scale as i64);
            zigzag(out, unscaled.len() as i64);
            out.extend_from_slice(unscaled);
        }
        Datum::Array(items) => {
            if !items.is_empty() {
                zigzag(out, items.len() as i64);
                for item in items {
                    write_avro(out, item, true);
                }
            }
            out.push(0);
        }
        Datum::Map(pairs) => {
            if !pairs.is_empty() {
                zigzag(out, pairs.len() as i64);
                for (k, v) in pairs {
                    avro_str(out, k);
                    match v {
                        None => out.push(0),
                        Some(v) => {
                            out.push(2);
                            avro_str(out, v);
                        }
                    }
                }
            }
            out.push(0);
        }
        Datum::Point { x, y } => {
            out.extend_from_slice(&x.to_le_bytes());
            out.extend_from_slice(&y.to_le_bytes());
            let wkb = point_wkb(*x, *y);
            out.push(2);
            zigzag(out, wkb.len() as i64);
            out.extend_from_slice(&wkb);
            out.push(0); // srid: null
        }
    }
}

// ---- JSON ------------------------------------------------------------------

/// Appends `d` as JSON. Written directly (no `serde_json::Value` tree):
/// building maps per event dominated the connector's CPU profile.
pub fn write_json(out: &mut Vec<u8>, d: &Datum) {
    use std::io::Write as _;
    match d {
        Datum::Null => out.extend_from_slice(b"null"),
        Datum::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Datum::Int(v) => json_long(out, i64::from(*v)),
        Datum::Long(v) => json_long(out, *v),
        // JSON has no NaN/Infinity: Kafka Connect's JsonConverter writes them as strings too.
        Datum::Float(v) => write_float(out, *v as f64),
        Datum::Double(v) => write_float(out, *v),
        Datum::Str(s) => json_str(out, s),
        Datum::Bytes(b) => json_str(out, &base64(b)),
        Datum::VarDecimal { scale, unscaled } => {
            let _ = write!(out, "{{\"scale\":{scale},\"value\":");
            json_str(out, &base64(unscaled));
            out.push(b'}');
        }
        Datum::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(out, item);
            }
            out.push(b']');
        }
        Datum::Map(pairs) => out.extend_from_slice(hstore_json(pairs).as_bytes()),
        Datum::Point { x, y } => {
            out.extend_from_slice(b"{\"x\":");
            write_float(out, *x);
            out.extend_from_slice(b",\"y\":");
            write_float(out, *y);
            out.extend_from_slice(b",\"wkb\":");
            json_str(out, &base64(&point_wkb(*x, *y)));
            out.extend_from_slice(b",\"srid\":null}");
        }
    }
}

/// A JSON string literal, escaped. Most strings need no escape: they are
/// copied as they are (serde_json's escaping showed in the snapshot profile).
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
    }
}

/// An integer in decimal, without `fmt` machinery (it showed in the profile).
pub fn json_long(out: &mut Vec<u8>, v: i64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[i..]);
}

fn write_float(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        serde_json::to_writer(&mut *out, &v).expect("writing to a Vec cannot fail");
    } else {
        json_str(out, &v.to_string());
    }
}

/// `d` as a `serde_json::Value` (tests and diagnostics).
pub fn to_json(d: &Datum) -> Json {
    let mut out = Vec::new();
    write_json(&mut out, d);
    serde_json::from_slice(&out).expect("write_json emits valid JSON")
}

pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ty: PgType, text: &str) -> Datum {
        parse("c", &ty, text, DecimalHandling::Precise).unwrap()
    }

    #[test]
    fn twos_complement_matches_java_biginteger() {
        assert_eq!(twos_complement(false, "0"), vec![0]);
        assert_eq!(twos_complement(false, "127"), vec![0x7f]);
        assert_eq!(twos_complement(false, "128"), vec![0x00, 0x80]);
        assert_eq!(twos_complement(true, "1"), vec![0xff]);
        assert_eq!(twos_complement(true, "128"), vec![0x80]);
        assert_eq!(twos_complement(true, "129"), vec![0xff, 0x7f]);
        assert_eq!(twos_complement(false, "65536"), vec![0x01, 0x00, 0x00]);
    }

    #[test]
    fn numerics() {
        let fixed = PgType::Numeric {
            precision: Some(10),
            scale: Some(2),
        };
        assert_eq!(p(fixed.clone(), "-1.50"), Datum::Bytes(vec![0xff, 0x6a]));
        assert_eq!(p(fixed, "NaN"), Datum::Null);
        let var = PgType::Numeric {
            precision: None,
            scale: None,
        };
        assert_eq!(
            p(var.clone(), "12.345"),
            Datum::VarDecimal {
                scale: 3,
                unscaled: vec![0x30, 0x39]
            }
        );
        let huge = format!("1{}", "0".repeat(100));
        assert!(matches!(
            p(var.clone(), &huge),
            Datum::VarDecimal { scale: 0, .. }
        ));
        let s = parse("c", &var, "NaN", DecimalHandling::String).unwrap();
        assert_eq!(s, Datum::Str("NaN".into()));
        let s = parse("c", &var, &huge, DecimalHandling::String).unwrap();
        assert_eq!(s, Datum::Str(huge));
    }

    #[test]
    fn times() {
        assert_eq!(p(PgType::Date, "1970-01-02"), Datum::Int(1));
        assert_eq!(p(PgType::Date, "1969-12-31"), Datum::Int(-1));
        assert_eq!(
            p(PgType::Timestamp { micros: true }, "1970-01-01 00:00:01.5"),
            Datum::Long(1_500_000)
        );
        assert_eq!(
            p(PgType::Timestamp { micros: false }, "1970-01-01 00:00:01.5"),
            Datum::Long(1_500)
        );
        assert_eq!(
            p(PgType::TimestampTz, "2024-01-02 03:04:05.25+05:30"),
            Datum::Str("2024-01-01T21:34:05.250Z".into())
        );
        assert_eq!(
            p(PgType::TimestampTz, "2024-01-02 03:04:05-08"),
            Datum::Str("2024-01-02T11:04:05Z".into())
        );
        assert_eq!(
            p(PgType::Time { micros: true }, "00:00:01.000002"),
            Datum::Long(1_000_002)
        );
        assert_eq!(
            p(PgType::Date, "0044-03-15 BC"),
            p(PgType::Date, "-0043-03-15")
        );
        assert_eq!(
            p(PgType::Timestamp { micros: true }, "10000-01-01 00:00:00"),
            Datum::Long(253_402_300_800_000_000)
        );
        assert_eq!(
            p(PgType::TimestampTz, "2024-01-02 03:04:05.000001+00"),
            Datum::Str("2024-01-02T03:04:05.000001Z".into())
        );
    }

    #[test]
    fn arrays_bytea_floats() {
        assert_eq!(
            p(
                PgType::Array(Box::new(PgType::Text)),
                r#"{a,"b c",NULL,"x\"y"}"#
            ),
            Datum::Array(vec![
                Datum::Str("a".into()),
                Datum::Str("b c".into()),
                Datum::Null,
                Datum::Str("x\"y".into())
            ])
        );
        assert_eq!(
            p(PgType::Array(Box::new(PgType::Int32)), "{}"),
            Datum::Array(vec![])
        );
        assert_eq!(p(PgType::Bytea, "\\x00ff"), Datum::Bytes(vec![0, 255]));
        assert!(matches!(p(PgType::Float64, "NaN"), Datum::Double(v) if v.is_nan()));
        assert_eq!(
            p(PgType::Float64, "-Infinity"),
            Datum::Double(f64::NEG_INFINITY)
        );
    }

    #[test]
    fn unavailable_placeholder() {
        assert_eq!(
            unavailable(&PgType::Json, DecimalHandling::String),
            Datum::Str(UNAVAILABLE.into())
        );
        assert_eq!(
            unavailable(&PgType::Bytea, DecimalHandling::String),
            Datum::Bytes(UNAVAILABLE.as_bytes().to_vec())
        );
    }

    #[test]
    fn multi_dimensional_values_are_flattened_and_negative_scales_are_integers() {
        let t = PgType::Array(Box::new(PgType::Int32));
        assert_eq!(
            p(t, "{{1,2},{3,NULL}}"),
            Datum::Array(vec![
                Datum::Int(1),
                Datum::Int(2),
                Datum::Int(3),
                Datum::Null
            ])
        );
        let texts = PgType::Array(Box::new(PgType::Text));
        assert_eq!(
            p(texts, r#"{{"a}",b},{c,d}}"#),
            Datum::Array(["a}", "b", "c", "d"].map(|s| Datum::Str(s.into())).to_vec())
        );
        let hundreds = PgType::Numeric {
            precision: Some(3),
            scale: Some(-2),
        };
        assert_eq!(p(hundreds, "12300"), Datum::Bytes(vec![0x30, 0x0c]));
    }

    #[test]
    fn intervals_and_timetz_as_debezium_maps_them() {
        let day = 86_400_000_000i64;
        assert_eq!(p(PgType::Interval, "00:00:00"), Datum::Long(0));
        assert_eq!(
            p(PgType::Interval, "1 day 02:03:04.5"),
            Datum::Long(day + 7_384_500_000)
        );
        assert_eq!(
            p(PgType::Interval, "-1 days +01:00:00"),
            Datum::Long(-day + 3_600_000_000)
        );
        assert_eq!(p(PgType::Interval, "-00:00:01"), Datum::Long(-1_000_000));
        // Debezium: a month is 365.25 / 12 = 30.4375 days.
        assert_eq!(
            p(PgType::Interval, "1 year 1 mon"),
            Datum::Long(365 * day + day / 4 + 30 * day + day * 4375 / 10000)
        );
        assert_eq!(
            p(PgType::TimeTz, "04:05:06.789+02"),
            Datum::Str("02:05:06.789Z".into())
        );
        assert_eq!(
            p(PgType::TimeTz, "23:30:00-01:30"),
            Datum::Str("01:00:00Z".into())
        );
    }

    #[test]
    fn json_escapes_and_non_finite_floats() {
        let d = Datum::Array(vec![
            Datum::Str("a\"b\\c\n".into()),
            Datum::Double(f64::NAN),
            Datum::Float(1.5),
            Datum::Long(-7),
            Datum::Null,
            Datum::Bytes(vec![0xff]),
        ]);
        assert_eq!(
            to_json(&d),
            serde_json::json!(["a\"b\\c\n", "NaN", 1.5, -7, null, "/w=="])
        );
    }

    #[test]
    fn money_hstore_bits_and_point() {
        let money = PgType::Money { fraction_digits: 2 };
        // -1234.50 → unscaled -123450 = 0xfe1dc6.
        assert_eq!(
            p(money.clone(), "-$1,234.50"),
            Datum::Bytes(vec![0xfe, 0x1d, 0xc6])
        );
        assert_eq!(p(money.clone(), "$0.00"), Datum::Bytes(vec![0]));
        let s = parse("c", &money, "-$1,234.50", DecimalHandling::String).unwrap();
        assert_eq!(s, Datum::Str("-1234.50".into()));
        let d = parse(
            "c",
            &money,
            "$92,233,720,368,547,758.07",
            DecimalHandling::Double,
        )
        .unwrap();
        assert_eq!(d, Datum::Double(92_233_720_368_547_758.07));
        let one = PgType::Money { fraction_digits: 1 };
        assert_eq!(p(one, "$0.95"), Datum::Bytes(vec![10]));
        assert_eq!(increment("199"), "200");
        assert_eq!(increment("99"), "100");

        let h = PgType::Hstore { json: false };
        assert_eq!(
            p(h.clone(), r#""a"=>"1", "b"=>NULL, "c d"=>"x\"y\\z""#),
            Datum::Map(vec![
                ("a".into(), Some("1".into())),
                ("b".into(), None),
                ("c d".into(), Some("x\"y\\z".into())),
            ])
        );
        assert_eq!(p(h.clone(), ""), Datum::Map(vec![]));
        assert!(parse("c", &h, r#""a"->"1""#, DecimalHandling::Precise).is_err());
        assert_eq!(
            p(PgType::Hstore { json: true }, r#""a"=>"1", "b"=>NULL"#),
            Datum::Str(r#"{"a":"1","b":null}"#.into())
        );
        let mut avro = Vec::new();
        write_avro(&mut avro, &p(h, r#""k"=>"v", "n"=>NULL"#), false);
        assert_eq!(
            avro,
            [&[4, 2, b'k', 2, 2, b'v', 2, b'n', 0, 0][..]].concat()
        );

        let bits = PgType::Bits { length: 12 };
        assert_eq!(p(bits.clone(), "101"), Datum::Bytes(vec![0x05]));
        assert_eq!(p(bits.clone(), "100000001"), Datum::Bytes(vec![0x01, 0x01]));
        assert_eq!(p(bits.clone(), "000"), Datum::Bytes(vec![]));
        assert!(parse("c", &bits, "12", DecimalHandling::Precise).is_err());
        assert_eq!(p(PgType::Bool, "1"), Datum::Bool(true));
        assert_eq!(p(PgType::Bool, "0"), Datum::Bool(false));

        assert_eq!(
            p(PgType::Point, "(1.5,-2)"),
            Datum::Point { x: 1.5, y: -2.0 }
        );
        let wkb = point_wkb(1.5, -2.0);
        assert_eq!(wkb.len(), 21);
        assert_eq!(&wkb[..5], &[1, 1, 0, 0, 0]);
        assert_eq!(
            to_json(&Datum::Point { x: 1.5, y: -2.0 }),
            serde_json::json!({"x": 1.5, "y": -2.0, "wkb": base64(&wkb), "srid": null})
        );
    }

    #[test]
    fn json_integers_and_strings() {
        for v in [0, 7, -1, 10, 1234567890123, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            json_long(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
        for s in ["plain", "", "q\"uote", "back\\slash", "tab\tnl\n", "ünï"] {
            let mut out = Vec::new();
            json_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s}");
        }
    }

    #[test]
    fn base64_padding() {
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }
}
