//! Syntax checks for everything an admin types: sizes, volume and group names, iSCSI
//! names, LUN numbers, CHAP credentials, tracking page sizes. Pure functions, no state.

use crate::catalog::{MAX_PAGE_SIZE, MIN_PAGE_SIZE};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("invalid size '{input}': {why}")]
    Size { input: String, why: &'static str },
    #[error("size {size} is not a multiple of the block size {block_size}")]
    SizeNotMultiple { size: u64, block_size: u32 },
    #[error("size must be at least one block")]
    SizeZero,
    #[error("block size {0} is not supported (use 512 or 4096)")]
    BlockSize(u32),
    #[error("invalid volume name '{name}': {why}")]
    VolumeName { name: String, why: &'static str },
    #[error("invalid group name '{name}': {why}")]
    GroupName { name: String, why: &'static str },
    #[error("target port group 0 does not exist: portals are groups 1, 2, ... in `serve --listen` order")]
    PortGroup,
    #[error("page size {0} is not supported (a power of two from 4K to 1M)")]
    PageSize(u64),
    #[error("invalid snapshot name '{name}': {why}")]
    SnapshotName { name: String, why: &'static str },
    #[error(
        "a snapshot is of one volume or of one group: give exactly one of --volume and --group"
    )]
    SnapshotSource,
    #[error("invalid peer name '{name}': {why}")]
    PeerName { name: String, why: &'static str },
    #[error("invalid peer address '{addr}': {why}")]
    PeerAddr { addr: String, why: &'static str },
    #[error("invalid peer secret: {0}")]
    PeerSecret(&'static str),
    #[error("invalid key fingerprint '{0}': expected sha256: and 64 lowercase hex digits, as `peer show` prints it")]
    KeyFingerprint(String),
    #[error("invalid replication set name '{name}': {why}")]
    SetName { name: String, why: &'static str },
    #[error("a replication set is of one volume or of one group: give exactly one of --volume and --group")]
    SetSource,
    #[error("invalid duration '{input}': {why}")]
    Duration { input: String, why: &'static str },
    #[error("invalid task name '{name}': {why}")]
    TaskName { name: String, why: &'static str },
    #[error("invalid start time '{0}': use RFC 3339 in UTC (2026-11-22T04:00:00Z) or 'now'")]
    StartTime(String),
    #[error("--keep must be at least 1")]
    Keep,
    #[error("invalid --max-rate '{input}': {why}")]
    Rate { input: String, why: String },
    #[error("invalid target prefix '{prefix}': {why}")]
    TargetPrefix { prefix: String, why: &'static str },
    #[error("a group needs at least one volume")]
    GroupEmpty,
    #[error("volume '{0}' is listed twice")]
    VolumeTwice(String),
    #[error("invalid iSCSI name '{name}': {why}")]
    IscsiName { name: String, why: &'static str },
    #[error("LUN {0} is out of range (0..={max})", max = MAX_LUN)]
    Lun(u64),
    #[error("invalid CHAP credentials: {0}")]
    Chap(&'static str),
}

/// Highest LUN number: SAM flat space addressing carries 14 bits.
pub const MAX_LUN: u64 = 16383;

/// Parses "512", "4K", "512M", "10G", "1T", "2P" (binary units, case-insensitive,
/// optional "B"/"iB" suffix: "10GiB", "10GB" both mean 10 * 2^30).
pub fn parse_size(input: &str) -> Result<u64, ValidationError> {
    let err = |why| ValidationError::Size {
        input: input.to_string(),
        why,
    };
    let s = input.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, rest) = s.split_at(digits_end);
    if num.is_empty() {
        return Err(err(
            "expected a number of bytes, optionally followed by K, M, G, T or P",
        ));
    }
    // A decimal fraction ("1.5G") is taken when it comes to a whole number of bytes.
    let (fraction, unit) = match rest.strip_prefix('.') {
        Some(after) => {
            let end = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            if end == 0 {
                return Err(err("expected digits after the decimal point"));
            }
            after.split_at(end)
        }
        None => ("", rest),
    };
    let n: u64 = num.parse().map_err(|_| err("number too large"))?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        _ => return Err(err("unknown unit (use K, M, G, T or P)")),
    };
    if fraction.is_empty() {
        return n.checked_mul(1u64 << shift).ok_or_else(|| err("too large"));
    }
    // Exact arithmetic: (n + fraction / 10^k) * 2^shift must be an integer.
    if fraction.len() > 18 {
        return Err(err("too many decimal places"));
    }
    let scale = 10u128.pow(fraction.len() as u32);
    let frac: u128 = fraction.parse().map_err(|_| err("number too large"))?;
    let scaled = (u128::from(n) * scale + frac) << shift;
    if !scaled.is_multiple_of(scale) {
        return Err(err("not a whole number of bytes"));
    }
    u64::try_from(scaled / scale).map_err(|_| err("too large"))
}

/// The lowest `--max-rate`: an extent (up to 1 MiB) then waits at most 4 s for its
/// tokens, well within the time a peer waits for the next frame.
pub const MIN_RATE: u64 = 256 << 10;

/// Parses a `--max-rate` in bytes per second, with the units of [`parse_size`]
/// ("50M" is 50 MiB/s); at least [`MIN_RATE`]. "No cap" is said otherwise
/// (`--no-max-rate`), so 0 is refused.
pub fn parse_rate(input: &str) -> Result<u64, ValidationError> {
    let err = |why: String| ValidationError::Rate {
        input: input.to_string(),
        why,
    };
    let n = parse_size(input).map_err(|e| match e {
        ValidationError::Size { why, .. } => {
            err(format!("{why} (a rate is bytes per second, e.g. 50M)"))
        }
        other => err(other.to_string()),
    })?;
    if n < MIN_RATE {
        return Err(err(format!(
            "the lowest rate is {} bytes/s (256K); --no-max-rate removes the cap",
            MIN_RATE
        )));
    }
    Ok(n)
}

/// A rate as [`parse_rate`] reads it back to the same number: "50M" where a unit
/// divides it, else bytes.
pub fn format_rate(n: u64) -> String {
    let s = format_size(n);
    if parse_size(&s) == Ok(n) {
        s
    } else {
        n.to_string()
    }
}

/// Checks a block size and that `size` is a whole, non-zero number of blocks.
pub fn check_geometry(size: u64, block_size: u32) -> Result<(), ValidationError> {
    if block_size != 512 && block_size != 4096 {
        return Err(ValidationError::BlockSize(block_size));
    }
    if size == 0 {
        return Err(ValidationError::SizeZero);
    }
    if !size.is_multiple_of(u64::from(block_size)) {
        return Err(ValidationError::SizeNotMultiple { size, block_size });
    }
    Ok(())
}

/// Formats a byte count the way `parse_size` reads it back, exactly when it can
/// ("10G"), else with one decimal ("1.5G") or as bytes.
pub fn format_size(n: u64) -> String {
    const UNITS: [(u32, &str); 5] = [(50, "P"), (40, "T"), (30, "G"), (20, "M"), (10, "K")];
    for (shift, u) in UNITS {
        let unit = 1u64 << shift;
        if n >= unit {
            if n.is_multiple_of(unit) {
                return format!("{}{u}", n >> shift);
            }
            return format!("{:.1}{u}", n as f64 / unit as f64);
        }
    }
    format!("{n}")
}

/// Volume names: 1..=64 characters from `[A-Za-z0-9._-]`, not starting with `.`.
/// Names are data, never paths (files are named by ids, `datadir`), but a name is
/// still kept to what reads well in a shell and a log.
pub fn check_volume_name(name: &str) -> Result<(), ValidationError> {
    check_name(name).map_err(|why| ValidationError::VolumeName {
        name: shown(name),
        why,
    })
}

/// Group names follow the volume name rules.
pub fn check_group_name(name: &str) -> Result<(), ValidationError> {
    check_name(name).map_err(|why| ValidationError::GroupName {
        name: shown(name),
        why,
    })
}

/// Peer names follow the volume name rules.
pub fn check_peer_name(name: &str) -> Result<(), ValidationError> {
    check_name(name).map_err(|why| ValidationError::PeerName {
        name: shown(name),
        why,
    })
}

/// Replication set names follow the volume name rules.
pub fn check_set_name(name: &str) -> Result<(), ValidationError> {
    check_name(name).map_err(|why| ValidationError::SetName {
        name: shown(name),
        why,
    })
}

/// `HOST:PORT` (an IPv6 host in brackets), port 1..=65535.
pub fn check_peer_addr(addr: &str) -> Result<(), ValidationError> {
    let err = |why| ValidationError::PeerAddr {
        addr: addr.to_string(),
        why,
    };
    let (host, port) = addr.rsplit_once(':').ok_or(err("expected HOST:PORT"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(err("the port must be a number from 1 to 65535")),
    }
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err("the host is empty or has spaces"));
    }
    Ok(())
}

/// Peer secrets: 12 to 256 bytes without control characters (HMAC key).
pub fn check_peer_secret(secret: &str) -> Result<(), ValidationError> {
    if secret.len() < 12 {
        return Err(ValidationError::PeerSecret("it must be at least 12 bytes"));
    }
    if secret.len() > 256 || secret.chars().any(char::is_control) {
        return Err(ValidationError::PeerSecret(
            "it is longer than 256 bytes or has control characters",
        ));
    }
    Ok(())
}

/// A pinned key's fingerprint as `peer show` prints it: `sha256:` and 64 lowercase hex.
pub fn check_key_fingerprint(fp: &str) -> Result<(), ValidationError> {
    match fp.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(ValidationError::KeyFingerprint(fp.to_string())),
    }
}

/// "90" or "90s", "5m", "2h", "1d": a whole number of seconds, at least 1.
pub fn parse_duration(input: &str) -> Result<u64, ValidationError> {
    let err = |why| ValidationError::Duration {
        input: input.to_string(),
        why,
    };
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| err("expected a number and s, m, h or d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(err("the unit must be s, m, h or d")),
    };
    match n.checked_mul(mult) {
        Some(0) => Err(err("it must be at least 1 second")),
        Some(secs) => Ok(secs),
        None => Err(err("too large")),
    }
}

/// Schedule task names: 1 to 32 bytes, case-sensitive, none of `"` `,` `<` `\\`.
pub fn check_task_name(name: &str) -> Result<(), ValidationError> {
    let err = |why| ValidationError::TaskName {
        name: name.to_string(),
        why,
    };
    if name.is_empty() {
        return Err(err("it is empty"));
    }
    if name.len() > 32 {
        return Err(err("it is longer than 32 bytes"));
    }
    for (c, why) in [
        ('"', "it must not contain '\"'"),
        (',', "it must not contain ','"),
        ('<', "it must not contain '<'"),
        ('\\', "it must not contain '\\'"),
    ] {
        if name.contains(c) {
            return Err(err(why));
        }
    }
    if name.chars().any(char::is_control) {
        return Err(err("it must not contain control characters"));
    }
    Ok(())
}

/// A schedule's start: RFC 3339 in UTC, or `now` (given as `now_unix`).
pub fn parse_start(input: &str, now_unix: u64) -> Result<u64, ValidationError> {
    if input == "now" {
        return Ok(now_unix);
    }
    super::time::parse_rfc3339_utc(input).ok_or_else(|| ValidationError::StartTime(input.into()))
}

/// A prefix for secondary volume names: what may start a volume name.
pub fn check_target_prefix(prefix: &str) -> Result<(), ValidationError> {
    if prefix.len() > 32 {
        return Err(ValidationError::TargetPrefix {
            prefix: prefix.to_string(),
            why: "longer than 32 characters",
        });
    }
    check_name(prefix).map_err(|why| ValidationError::TargetPrefix {
        prefix: shown(prefix),
        why,
    })
}

/// Snapshot names follow the volume name rules (so `VOLUME@SNAPSHOT` is unambiguous).
pub fn check_snapshot_name(name: &str) -> Result<(), ValidationError> {
    check_name(name).map_err(|why| ValidationError::SnapshotName {
        name: shown(name),
        why,
    })
}

/// The volume list of a group: at least one volume, none twice.
pub fn check_group_volumes(volumes: &[String]) -> Result<(), ValidationError> {
    if volumes.is_empty() {
        return Err(ValidationError::GroupEmpty);
    }
    for (i, v) in volumes.iter().enumerate() {
        if volumes[..i].contains(v) {
            return Err(ValidationError::VolumeTwice(v.clone()));
        }
    }
    Ok(())
}

/// Tracking page sizes: a power of two from 4 KiB to 1 MiB.
pub fn check_page_size(page_size: u64) -> Result<(), ValidationError> {
    if !page_size.is_power_of_two()
        || page_size < u64::from(MIN_PAGE_SIZE)
        || page_size > u64::from(MAX_PAGE_SIZE)
    {
        return Err(ValidationError::PageSize(page_size));
    }
    Ok(())
}

/// A name as an error message shows it: control characters escaped.
fn shown(name: &str) -> String {
    name.escape_debug().to_string()
}

/// The one rule for the names of volumes, groups, snapshots, peers and replication
/// sets, whether an admin (`ctl`, the config file) or a peer (the replication
/// protocol) sends them: 1..=64 bytes from `[A-Za-z0-9._-]`, not starting with `.`
/// (so never `.` or `..`), hence no `/`, NUL or control characters either.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 64 {
        return Err("longer than 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err("only letters, digits, '.', '_' and '-' are allowed");
    }
    if name.starts_with('.') {
        return Err("it must not start with '.' (such as '.' or '..')");
    }
    Ok(())
}

/// iSCSI names, RFC 7143 §4.2.7 (formerly RFC 3720 §3.2.6):
/// - `iqn.YYYY-MM.reversed.domain[:anything]`
/// - `eui.` + 16 hex digits (EUI-64)
/// - `naa.` + 16 or 32 hex digits (RFC 3980)
///
/// At most 223 bytes (§4.2.7.1). Names are compared after stringprep (RFC 3722), which
/// lowercases, so an `iqn.` name must already be lowercase.
pub fn check_iscsi_name(name: &str) -> Result<(), ValidationError> {
    let err = |why| ValidationError::IscsiName {
        name: name.to_string(),
        why,
    };
    if name.len() > 223 {
        return Err(err("longer than 223 bytes (RFC 7143 4.2.7.1)"));
    }
    if let Some(rest) = name.strip_prefix("iqn.") {
        check_iqn(rest).map_err(err)
    } else if let Some(hex) = name.strip_prefix("eui.") {
        if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err(err("an eui. name has exactly 16 hex digits"))
        }
    } else if let Some(hex) = name.strip_prefix("naa.") {
        if (hex.len() == 16 || hex.len() == 32) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err(err("a naa. name has 16 or 32 hex digits"))
        }
    } else {
        Err(err(
            "must start with iqn., eui. or naa. (e.g. iqn.2026-11.com.example:disk1)",
        ))
    }
}

fn check_iqn(rest: &str) -> Result<(), &'static str> {
    const DATE: &str =
        "an iqn. name continues with a date yyyy-mm and a dot (iqn.2026-11.com.example)";
    let b = rest.as_bytes();
    if b.len() < 8 || b[4] != b'-' || b[7] != b'.' {
        return Err(DATE);
    }
    if !b[..4].iter().chain(&b[5..7]).all(u8::is_ascii_digit) {
        return Err(DATE);
    }
    let month = (b[5] - b'0') * 10 + (b[6] - b'0');
    if !(1..=12).contains(&month) {
        return Err("the month of an iqn. date is 01..12");
    }
    let after = &rest[8..];
    let (domain, unique) = match after.split_once(':') {
        Some((d, u)) => (d, Some(u)),
        None => (after, None),
    };
    if domain.is_empty()
        || domain.split('.').any(|label| {
            label.is_empty()
                || !label
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        })
    {
        return Err(
            "the naming authority must be a reversed domain name in lowercase (com.example)",
        );
    }
    if let Some(u) = unique {
        if u.is_empty() {
            return Err("nothing after ':'");
        }
        // RFC 3722: after stringprep only these ASCII characters remain; non-ASCII is
        // allowed as long as it is not uppercase or a control or space character.
        for c in u.chars() {
            let ok = if c.is_ascii() {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | ':')
            } else {
                !c.is_uppercase() && !c.is_control() && !c.is_whitespace()
            };
            if !ok {
                return Err(if c.is_ascii_uppercase() {
                    "uppercase letters are not allowed (iSCSI names are lowercase, RFC 3722)"
                } else {
                    "only lowercase letters, digits, '-', '.' and ':' are allowed"
                });
            }
        }
    }
    Ok(())
}

/// A CHAP name or secret as carried in a text key: 1..=255 bytes, no control characters.
fn check_chap_text(s: &str, empty: &'static str, bad: &'static str) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::Chap(empty));
    }
    if s.len() > 255 || s.chars().any(char::is_control) {
        return Err(ValidationError::Chap(bad));
    }
    Ok(())
}

/// Checks CHAP credentials (RFC 7143 §12.1.3). Returns advice that is not an error:
/// the RFC wants secrets of at least 96 bits when the channel is not encrypted, and
/// many initiators (Microsoft's among them) only take 12..=16 bytes.
pub fn check_chap(
    user: &str,
    secret: &str,
    mutual: Option<(&str, &str)>,
) -> Result<Vec<String>, ValidationError> {
    check_chap_text(
        user,
        "the user name is empty",
        "the user name is too long or has control characters",
    )?;
    check_chap_text(
        secret,
        "the secret is empty",
        "the secret is too long or has control characters",
    )?;
    let mut notes = Vec::new();
    let mut advise = |what: &str, s: &str| {
        if !(12..=16).contains(&s.len()) {
            notes.push(format!(
                "the {what} is {} bytes; 12 to 16 bytes is what RFC 7143 and most initiators expect",
                s.len()
            ));
        }
    };
    advise("secret", secret);
    if let Some((mu, ms)) = mutual {
        check_chap_text(
            mu,
            "the mutual user name is empty",
            "the mutual user name is too long or has control characters",
        )?;
        check_chap_text(
            ms,
            "the mutual secret is empty",
            "the mutual secret is too long or has control characters",
        )?;
        // RFC 7143 §12.1.3: a secret for authenticating the initiator MUST NOT be used
        // to authenticate the target.
        if ms == secret {
            return Err(ValidationError::Chap(
                "the mutual secret must differ from the secret (RFC 7143 12.1.3)",
            ));
        }
        advise("mutual secret", ms);
    }
    Ok(notes)
}

pub fn check_lun(lun: u64) -> Result<(), ValidationError> {
    if lun > MAX_LUN {
        return Err(ValidationError::Lun(lun));
    }
    Ok(())
}

/// The block size a volume gets when none is given.
pub fn default_block_size() -> u32 {
    512
}

/// A size given as a number of bytes or as a string with a binary unit ("512M", "10G").
pub fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match <Raw as serde::Deserialize>::deserialize(d)? {
        Raw::Bytes(n) => Ok(n),
        Raw::Text(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_take_size_units_and_refuse_zero_and_crumbs() {
        assert_eq!(parse_rate("50M").unwrap(), 50 << 20);
        assert_eq!(parse_rate("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_rate("262144").unwrap(), MIN_RATE);
        for bad in ["0", "100K", "fast", "12Q", "-5M", ""] {
            let e = parse_rate(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid --max-rate '{bad}'")), "{e}");
        }
        for n in [50 << 20, 3 << 29, (50 << 20) + 1, MIN_RATE] {
            assert_eq!(
                parse_rate(&format_rate(n)).unwrap(),
                n,
                "{}",
                format_rate(n)
            );
        }
        assert_eq!(format_rate(50 << 20), "50M");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("10GB").unwrap(), 10 << 30);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(parse_size(" 2P ").unwrap(), 2 << 50);
        for bad in [
            "",
            "G",
            "10X",
            "1.3K",
            "-1",
            "10 G G",
            "99999999999999999999",
            "16384P",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn geometry() {
        assert!(check_geometry(1 << 30, 512).is_ok());
        assert!(check_geometry(1 << 30, 4096).is_ok());
        assert_eq!(check_geometry(0, 512), Err(ValidationError::SizeZero));
        assert_eq!(
            check_geometry(1024, 1024),
            Err(ValidationError::BlockSize(1024))
        );
        assert_eq!(
            check_geometry(6144, 4096),
            Err(ValidationError::SizeNotMultiple {
                size: 6144,
                block_size: 4096
            })
        );
    }

    #[test]
    fn size_format_roundtrips() {
        for n in [512u64, 4096, 512 << 20, 10 << 30, 1 << 40] {
            assert_eq!(parse_size(&format_size(n)).unwrap(), n);
        }
        assert_eq!(format_size(1536 << 20), "1.5G");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn decimal_sizes_are_whole_bytes_or_refused() {
        assert_eq!(parse_size("1.5G").unwrap(), 1536 << 20);
        assert_eq!(parse_size("0.5K").unwrap(), 512);
        assert_eq!(parse_size("2.25M").unwrap(), (9 << 20) / 4);
        let e = parse_size("1.3K").unwrap_err().to_string();
        assert!(e.contains("not a whole number of bytes"), "{e}");
        let e = parse_size("1.5").unwrap_err().to_string();
        assert!(e.contains("not a whole number of bytes"), "{e}");
        let e = parse_size("1.G").unwrap_err().to_string();
        assert!(e.contains("digits after the decimal point"), "{e}");
        assert!(parse_size("1.5Q").unwrap_err().to_string().contains("unit"));
    }

    #[test]
    fn volume_names() {
        for ok in ["demo", "a", "db-01.data_x", &"x".repeat(64)] {
            assert!(check_volume_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a b", "é", "x:y", &"x".repeat(65)] {
            assert!(check_volume_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn no_name_is_a_path() {
        for bad in [
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "a\0b",
            "a\nb",
            &"n".repeat(300),
        ] {
            for check in [
                check_volume_name,
                check_group_name,
                check_snapshot_name,
                check_peer_name,
                check_set_name,
                check_target_prefix,
            ] {
                assert!(check(bad).is_err(), "{bad:?}");
            }
        }
        assert_eq!(
            check_volume_name("..").unwrap_err().to_string(),
            "invalid volume name '..': it must not start with '.' (such as '.' or '..')"
        );
        assert!(check_volume_name("a..b").is_ok());
    }

    #[test]
    fn group_names_follow_volume_names() {
        assert!(check_group_name("db-group.1").is_ok());
        for bad in ["", "a/b", "a b", &"g".repeat(65)] {
            let e = check_group_name(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid group name"), "{e}");
        }
    }

    #[test]
    fn group_volume_lists() {
        assert!(check_group_volumes(&["a".into(), "b".into()]).is_ok());
        assert_eq!(check_group_volumes(&[]), Err(ValidationError::GroupEmpty));
        assert_eq!(
            check_group_volumes(&["a".into(), "b".into(), "a".into()]),
            Err(ValidationError::VolumeTwice("a".into()))
        );
    }

    #[test]
    fn page_sizes() {
        for ok in [4096u64, 8192, 65536, 1 << 20] {
            assert!(check_page_size(ok).is_ok(), "{ok}");
        }
        for bad in [0u64, 512, 2048, 6144, 12288, 2 << 20, 1 << 40] {
            assert_eq!(check_page_size(bad), Err(ValidationError::PageSize(bad)));
        }
    }

    #[test]
    fn iscsi_names() {
        for ok in [
            "iqn.2026-11.io.twinlun:demo",
            "iqn.1994-05.com.redhat:5f1c2a9b8e",
            "iqn.2001-04.com.example",
            "iqn.2001-04.com.example:storage:diskarrays-sn-a8675309",
            "iqn.1991-05.com.microsoft:host.example.com",
            "eui.02004567A425678D",
            "naa.52004567BA64678D",
            "naa.62004567BA64678D0123456789ABCDEF",
        ] {
            assert!(check_iscsi_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "demo",
            "iqn.",
            "iqn.2026-13.io.x",
            "iqn.26-11.io.x",
            "iqn.2026-11",
            "iqn.2026-11.",
            "iqn.2026-11.io..x",
            "iqn.2026-11.io.x:",
            "iqn.2026-11.io.x:Upper",
            "iqn.2026-11.io.x:sp ace",
            "iqn.2026-11.IO.x",
            "eui.0200",
            "eui.02004567A425678G",
            "naa.123",
            "IQN.2026-11.io.x",
        ] {
            assert!(check_iscsi_name(bad).is_err(), "{bad:?} should be refused");
        }
        let long = format!("iqn.2026-11.io.x:{}", "a".repeat(223));
        assert!(check_iscsi_name(&long).is_err());
    }

    #[test]
    fn chap() {
        assert_eq!(
            check_chap("u", "0123456789ab", None).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(check_chap("u", "short", None).unwrap().len(), 1);
        assert!(check_chap("", "0123456789ab", None).is_err());
        assert!(check_chap("u", "", None).is_err());
        assert!(check_chap("u", "0123456789ab", Some(("m", "0123456789ab"))).is_err());
        assert!(check_chap("u", "0123456789ab", Some(("m", ""))).is_err());
        assert!(check_chap("u", "0123456789ab", Some(("", "ba9876543210"))).is_err());
        assert!(check_chap("u", "0123456789ab", Some(("m", "ba9876543210"))).is_ok());
        assert!(check_chap("u\n", "0123456789ab", None).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,40}") {
            let _ = parse_size(&s);
            let _ = check_iscsi_name(&s);
            let _ = check_volume_name(&s);
            let _ = check_group_name(&s);
            let _ = check_chap(&s, &s, Some((&s, &s)));
        }

        #[test]
        fn iqn_prefixed_junk_never_panics(s in "iqn\\.[0-9é-]{0,8}\\PC{0,20}") {
            let _ = check_iscsi_name(&s);
        }

        #[test]
        fn sizes_roundtrip(blocks in 1u64..(1 << 40), shift in 0u32..4) {
            let n = blocks << (9 + shift);
            let text = format_size(n);
            if !text.contains('.') {
                proptest::prop_assert_eq!(parse_size(&text).unwrap(), n);
            }
        }
    }

    #[test]
    fn luns() {
        assert!(check_lun(0).is_ok());
        assert!(check_lun(MAX_LUN).is_ok());
        assert!(check_lun(MAX_LUN + 1).is_err());
    }
}
